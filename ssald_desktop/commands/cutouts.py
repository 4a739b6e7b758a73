"""``ssald-cli cutouts``: WCS-aligned cutouts of one position or a CSV of them, PNG or FITS."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from astropy.coordinates import SkyCoord

    from ssald_desktop.core.cutouts import CutoutEngine, NormSpec
    from ssald_desktop.core.dataset import position_id, read_galaxy_list
    from ssald_desktop.core.errors import InvalidQueryError, SsaldError
    from ssald_desktop.core.frames import open_frame_set

    fs = open_frame_set(args.field)
    spec = (
        NormSpec.from_json(Path(args.normspec).read_text())
        if args.normspec
        else NormSpec(size=args.size, output_size=args.output_size or args.size)
    )
    engine = CutoutEngine(fs, spec)
    if args.csv:
        t = read_galaxy_list(args.csv)
        targets = [(str(r["id"]), float(r["ra"]), float(r["dec"])) for r in t]
    elif args.position:
        text = " ".join(args.position)
        try:
            parts = text.replace(",", " ").split()
            try:
                c = SkyCoord(float(parts[0]), float(parts[1]), unit="deg")
            except ValueError:
                c = SkyCoord(text, unit=("hourangle", "deg"))
        except (ValueError, IndexError) as exc:
            raise InvalidQueryError(f"not a sky position: {text!r}") from exc
        targets = [(position_id(c.ra.deg, c.dec.deg), float(c.ra.deg), float(c.dec.deg))]
    else:
        raise SsaldError("give a POSITION or --csv FILE")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, ra, dec in targets:
        cut = engine.cut(SkyCoord(ra, dec, unit="deg"))
        safe = "".join(ch if ch.isalnum() or ch in "+-._" else "_" for ch in name)
        if args.format in ("png", "both"):
            cut.write_png(out / f"{safe}.png")
        if args.format in ("fits", "both"):
            cut.write_fits(out / f"{safe}.fits", overwrite=True)
        written += 1
        print(f"{name}: RA {ra:.6f} Dec {dec:+.6f}, masked {cut.masked_fraction:.1%}")
    print(f"wrote {written} cutout(s) to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cutouts``."""
    p = sub.add_parser("cutouts", help="cut WCS-aligned multi-band cutouts from a local field")
    p.add_argument("position", nargs="*", help="RA Dec in degrees or sexagesimal")
    p.add_argument("--csv", help="CSV of positions (ra, dec, optional objid)")
    p.add_argument("--field", required=True, help="folder (or files) of the field's frames")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["png", "fits", "both"], default="png")
    p.add_argument("--size", type=int, default=64, help="cutout width in SDSS pixels")
    p.add_argument("--output-size", type=int, help="output pixels (default: --size)")
    p.add_argument("--normspec", help="NormSpec JSON file (overrides the size options)")
    p.set_defaults(func=_run)
