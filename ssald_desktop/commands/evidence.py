"""``ssald-cli evidence``: the dual-AGN evidence of one object, printed as JSON.

``ssald-cli evidence [FILE] [--spectrum SPEC] [--field DIR --ra RA --dec DEC] [--z Z]
[--scale ARCSEC_PER_PX] [--seeing ARCSEC] [--curves] [--json OUT]``

FILE is an image (PNG/JPEG render or FITS image) or an SDSS spectrum file (recognised by its
content). With ``--field`` the r band of that frame set at (RA, Dec) is searched for nuclei
instead of the image; RA/Dec default to the spectrum's fibre position. The result (nuclei,
line fits, double-peak tests, BPT class) is printed as JSON and written to OUT when given.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ssald_desktop.core.errors import SpectrumFormatError, SsaldError


def register(subparsers: Any) -> None:
    """Add the ``evidence`` sub-command to ``ssald-cli``."""
    p = subparsers.add_parser(
        "evidence",
        help="nuclei in the image and AGN signs in the spectrum of one object, as JSON",
        description=(
            "Find one or two nuclei in an image (a render, or the r band of a field at a "
            "position) and fit the narrow lines of a spectrum ([OIII] single vs double "
            "Gaussian, BPT class); print everything as JSON."
        ),
    )
    p.add_argument("file", nargs="?", type=Path, metavar="FILE",
                   help="an image (PNG/JPEG/FITS) or an SDSS spectrum file")  # fmt: skip
    p.add_argument("--spectrum", type=Path, metavar="SPEC", help="an SDSS spectrum file")
    p.add_argument("--field", type=Path, metavar="DIR", help="folder of one field's frames")
    p.add_argument("--ra", type=float, help="right ascension (deg) in the field")
    p.add_argument("--dec", type=float, help="declination (deg) in the field")
    p.add_argument("--z", type=float, help="redshift (default the spectrum's)")
    p.add_argument("--scale", type=float, metavar="ARCSEC",
                   help="pixel scale of the image (arcsec/px); renders have no WCS")  # fmt: skip
    p.add_argument("--seeing", type=float, metavar="ARCSEC",
                   help="PSF FWHM for the field (default psField's, else measured on stars)")
    p.add_argument("--curves", action="store_true",
                   help="include the fitted line-model curves in the JSON")  # fmt: skip
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the JSON to OUT")
    p.set_defaults(func=run)


def _is_spectrum(path: Path) -> bool:
    """True when FILE reads as an SDSS spectrum (FITS with COADD or an spPlate)."""
    if path.suffix.lower() not in (".fits", ".fit", ".gz"):
        return False
    from ssald_desktop.core.spectra import read_spectrum

    try:
        read_spectrum(path)
    except SpectrumFormatError as exc:
        return "fibre number" in str(exc)  # an spPlate needs --fiber; still a spectrum
    except SsaldError:
        return False
    return True


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Gather and print the evidence."""
    from ssald_desktop.core.evidence import gather_evidence

    image = spectrum = None
    if args.file is not None:
        if not args.file.exists():
            raise SsaldError(f"{args.file}: no such file")
        if _is_spectrum(args.file):
            spectrum = args.file
        else:
            image = args.file
    if args.spectrum is not None:
        if spectrum is not None:
            raise SsaldError(f"two spectra given: {spectrum} and {args.spectrum}")
        spectrum = args.spectrum
    if (args.ra is None) != (args.dec is None):
        raise SsaldError("give both --ra and --dec")
    frame_set = psf = None
    if args.field is not None:
        from ssald_desktop.core.evidence import field_sources
        from ssald_desktop.core.frames import open_frame_set
        from ssald_desktop.core.nuclei import NucleiError, default_psf, measure_psf

        frame_set = open_frame_set(args.field)
        if args.seeing is not None or "r" in frame_set.psf:
            psf = default_psf(frame_set, "r", args.seeing)
        else:
            try:
                psf = measure_psf(frame_set, "r", field_sources(frame_set))
            except NucleiError:
                psf = default_psf(frame_set, "r")
    elif args.ra is not None:
        raise SsaldError("--ra/--dec need --field DIR (the frames to search)")
    if image is None and spectrum is None and frame_set is None:
        raise SsaldError("give an image or spectrum FILE, --spectrum, or --field with --ra/--dec")
    ev = gather_evidence(
        image=image,
        spectrum=spectrum,
        frame_set=frame_set,
        ra=args.ra,
        dec=args.dec,
        z=args.z,
        pixel_scale=args.scale,
        psf=psf,
    )
    out = _clean(ev.to_dict(curves=args.curves))
    if psf is not None:
        out["psf"] = psf.to_dict()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        try:
            args.json.write_text(text + "\n")
        except OSError as exc:
            raise SsaldError(f"cannot write {args.json}: {exc}") from exc
    return 0
