"""``ssald-cli sources``: detect the sources of a local field and write its galaxies (or all)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

#: Bands accepted by ``--band``.
_BANDS = ("u", "g", "r", "i", "z")


def _check_out(path: str | None, option: str) -> Path | None:
    from ssald_desktop.core.errors import SsaldError

    if path is None:
        return None
    out = Path(path)
    if out.is_dir():
        raise SsaldError(f"{option} {out}: is a folder; give a file name")
    if not out.parent.exists():
        raise SsaldError(f"{option} {out}: folder {out.parent} does not exist")
    return out


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(table: Any, path: Path) -> None:
    """Write a source table as JSON: ``{"meta": {...}, "columns": [...], "rows": [{...}]}``.

    NaN becomes ``null`` so the file is strict JSON.
    """
    rows = [{name: _json_value(row[name]) for name in table.colnames} for row in table]
    meta = {k: _json_value(v) if not isinstance(v, dict) else v for k, v in table.meta.items()}
    doc = {"meta": meta, "columns": list(table.colnames), "rows": rows}
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


def _run(args: argparse.Namespace) -> int:
    from ssald_desktop.core.errors import SsaldError
    from ssald_desktop.core.frames import open_frame_set
    from ssald_desktop.core.sources import detect_galaxies, galaxies

    csv_out = _check_out(args.csv, "--csv")
    json_out = _check_out(args.json, "--json")
    if not Path(args.field).exists():
        raise SsaldError(f"--field {args.field}: no such file or folder")
    fs = open_frame_set(args.field)
    if args.band not in fs:
        raise SsaldError(
            f"--band {args.band}: not in the field {args.field} (has {', '.join(fs.bands)})"
        )
    table = detect_galaxies(fs, band=args.band, nsigma=args.nsigma, min_snr=args.min_snr)
    meta = table.meta
    n_gal = int(meta.get("n_galaxies", 0))
    n_star = int(meta.get("n_stars", 0))
    print(
        f"{meta.get('field') or args.field} band {args.band}: {len(table)} sources, "
        f"{n_gal} galaxies, {n_star} stars, {len(table) - n_gal - n_star} unclassified "
        f'(PSF FWHM {meta.get("fwhm_arcsec", float("nan")):.2f}" from '
        f"{meta.get('fwhm_source', '?')}, {meta.get('elapsed_s', float('nan')):.1f} s)"
    )
    out = table if args.all else galaxies(table)
    what = "sources" if args.all else "galaxies"
    if csv_out is not None:
        try:
            out.write(csv_out, format="ascii.csv", overwrite=True)
        except OSError as exc:
            raise SsaldError(f"--csv {csv_out}: cannot write ({exc})") from exc
        print(f"wrote {len(out)} {what} to {csv_out}")
    if json_out is not None:
        try:
            write_json(out, json_out)
        except OSError as exc:
            raise SsaldError(f"--json {json_out}: cannot write ({exc})") from exc
        print(f"wrote {len(out)} {what} to {json_out}")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sources``."""
    p = sub.add_parser(
        "sources",
        help="detect the sources of a local field and tell galaxies from stars (photutils)",
        description="Detect the sources of one band of a local SDSS field, separate stars "
        "from galaxies against the frame's stellar locus, print the counts and write the "
        "galaxies (or, with --all, every source) as CSV and/or JSON.",
    )
    p.add_argument("--field", required=True, help="folder (or files) of the field's frames")
    p.add_argument("--band", choices=_BANDS, default="r", help="band to detect in (default r)")
    p.add_argument("--all", action="store_true", help="write every source, not just galaxies")
    p.add_argument("--csv", metavar="OUT", help="write the table as CSV")
    p.add_argument("--json", metavar="OUT", help="write the table as JSON")
    p.add_argument(
        "--nsigma",
        type=_positive_float,
        default=4.0,
        help="detection threshold in sigma of the filtered image (default 4)",
    )
    p.add_argument(
        "--min-snr",
        type=_positive_float,
        default=15.0,
        help="minimum S/N to classify a source (default 15)",
    )
    p.set_defaults(func=_run)
