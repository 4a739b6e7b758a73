"""``ssald-cli fetch-field``: download (or find in the cache) one SDSS imaging field.

Examples
--------
::

    ssald-cli fetch-field 38.33 -0.107
    ssald-cli fetch-field "02h33m19.3s -00d06m25s" --bands gri
    ssald-cli fetch-field --field 2820-3-122 --cache /data/sdss --timeout 30 --retries 5
"""

from __future__ import annotations

import argparse
from typing import Any

from ssald_desktop.core.errors import InvalidQueryError


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fetch-field`` sub-command to ``ssald-cli``."""
    from ssald_desktop.core import sky

    parser = subparsers.add_parser(
        "fetch-field",
        help="download an SDSS imaging field (ugriz frames) into the cache",
        description=(
            "Find the SDSS imaging field at a sky position (or take one by RUN-CAMCOL-FIELD), "
            "download its frames into the cache unless they are there already, and print "
            "the folder and a summary."
        ),
    )
    parser.add_argument(
        "position",
        nargs="*",
        metavar="POSITION",
        help=(
            "sky position: '38.33 -0.107' (degrees), '02h33m19.3s -00d06m25s' or "
            "'02:33:19.3 -00:06:25', or an object name such as 'NGC 6976' (resolved online)"
        ),
    )
    parser.add_argument(
        "--field", metavar="RUN-CAMCOL-FIELD", help="the field itself, e.g. 2820-3-122"
    )
    parser.add_argument("--bands", default="ugriz", help="bands to fetch (default: ugriz)")
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help=f"cache folder (default: ${sky.CACHE_ENV} or the user cache folder)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help=f"seconds to wait for the server per attempt (default: {sky.DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help=f"retries after a failed attempt (default: {sky.DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--radius",
        default=sky.DEFAULT_FIELD_RADIUS,
        metavar="ARCSEC",
        help=f"search radius for the field lookup (default: {sky.DEFAULT_FIELD_RADIUS:g})",
    )
    parser.add_argument(
        "--data-release",
        type=int,
        metavar="DR",
        help=f"SDSS data release (default: {sky.DEFAULT_DATA_RELEASE})",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Fetch the field and print its folder and a summary; return the exit status."""
    from ssald_desktop.core import sky
    from ssald_desktop.core.frames import open_frame_set

    position = " ".join(args.position).strip()
    if bool(position) == bool(args.field):
        raise InvalidQueryError("give either a POSITION or --field RUN-CAMCOL-FIELD (one of them)")
    client = sky.SDSSClient(
        args.cache,
        timeout=args.timeout,
        retries=args.retries,
        data_release=args.data_release,
    )
    bands = sky.normalize_bands(args.bands)
    if args.field:
        frames = open_frame_set(client.fetch_field(args.field, bands), bands=bands)
    else:
        frames = client.fetch_field_at(position, bands, radius=args.radius)
    folder = frames.reference.path.parent if frames.reference.path else None
    print(folder)
    print(summary(frames))
    return 0


def summary(frames: Any) -> str:
    """Human summary of a frame set: field, bands, shape, pixel scale, footprint."""
    import numpy as np

    rows, cols = frames.shape
    corners = frames.footprint()
    centre = frames.centre()
    ra0 = float(centre.ra.deg)
    # RA relative to the centre, so that a field across RA 0 reads 359.9..0.1 correctly.
    ra = (np.asarray(corners.ra.deg) - ra0 + 180.0) % 360.0 - 180.0 + ra0
    dec = np.asarray(corners.dec.deg)
    lo, hi = float(ra.min()) % 360.0, float(ra.max()) % 360.0
    return "\n".join(
        [
            f"field {frames.field_id} (rerun {frames.field_id.rerun if frames.field_id else '?'}), "
            f"bands {''.join(frames.bands)}",
            f'shape {rows} x {cols} px (rows x cols), {frames.pixel_scale_arcsec:.3f}"/px',
            f"footprint RA {lo:.3f}..{hi:.3f}, Dec {dec.min():+.3f}..{dec.max():+.3f} "
            f"(centre RA {ra0:.4f}, Dec {float(centre.dec.deg):+.4f})",
        ]
    )
