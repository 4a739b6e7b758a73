"""``ssald-cli spectrum``: summarise, plot and export one SDSS spectrum file."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.spectra import Spectrum, plot_spectrum, read_spectrum

_LAYOUT_TEXT = {
    "specobj": "spec file, SDSS object table SPECOBJ",
    "spall": "BOSS spec file, object table SPALL",
    "spplate": "spPlate image, one fibre",
}


def register(subparsers: Any) -> None:
    """Add the ``spectrum`` sub-command to ``ssald-cli``."""
    parser = subparsers.add_parser(
        "spectrum",
        help="summarise, plot or export one SDSS spectrum (spec or spPlate file)",
        description=(
            "Read an SDSS spec file (SDSS-I/II or BOSS, full or lite) or an spPlate file and "
            "print its plate-MJD-fibre, class, redshift, position, wavelength range and "
            "strongest SPZLINE emission lines."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="spec-*.fits or spPlate-*.fits")
    parser.add_argument(
        "--fiber", type=int, metavar="N", help="fibre number, 1-based (required for spPlate)"
    )
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write a plot of the flux")
    parser.add_argument(
        "--no-lines", action="store_true", help="plot without emission-line markers"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="OUT.json",
        help="write metadata, SPZLINE measurements and the pixel arrays as JSON",
    )
    parser.set_defaults(func=run)


def _fmt(value: float | None, spec: str) -> str:
    if value is None or not math.isfinite(value):
        return "unknown"
    return format(value, spec)


def summary(spectrum: Spectrum, n_lines: int = 5) -> str:
    """Return the human-readable summary printed by ``ssald-cli spectrum``."""
    lo, hi = spectrum.wavelength_range
    what = " ".join(p for p in (spectrum.spec_class, spectrum.subclass) if p) or "unknown"
    z = _fmt(spectrum.z, ".6f")
    if spectrum.z is not None and spectrum.z_err is not None:
        z += f" +- {spectrum.z_err:.6f}"
    if spectrum.z_warning:
        z += f"  (ZWARNING {spectrum.z_warning}: unreliable)"
    if spectrum.ra is None or spectrum.dec is None:
        position = "unknown"
    else:
        position = f"{spectrum.ra:.5f} {spectrum.dec:+.5f} deg"
    out = [
        f"{spectrum.path.name}",
        f"  layout           {spectrum.layout} ({_LAYOUT_TEXT.get(spectrum.layout, '')})",
        f"  plate-mjd-fiber  {spectrum.name}",
        f"  class            {what}",
        f"  z                {z}",
        f"  RA Dec (plug)    {position}",
        f"  pixels           {spectrum.npix} ({int(spectrum.good.sum())} good)",
        f"  wavelength       {lo:.1f} - {hi:.1f} A (vacuum)",
    ]
    if spectrum.lines is None:
        out.append("  emission lines   no SPZLINE table")
    elif spectrum.spec_class == "STAR":
        out.append("  emission lines   SPZLINE fits not listed for a STAR (not meaningful)")
    else:
        strongest = spectrum.strongest_lines(n_lines)
        if not strongest:
            out.append("  emission lines   none detected at >= 3 sigma (SPZLINE)")
        else:
            out.append("  strongest emission lines (SPZLINE; flux in 1e-17 erg/s/cm2):")
            for m in strongest:
                out.append(
                    f"    {m.name:<14} {m.observed_wavelength:8.1f} A  "
                    f"flux {m.flux:9.1f} +- {m.flux_err:6.1f}  EW {m.ew:7.1f} A  "
                    f"sigma {m.sigma:6.0f} km/s"
                )
    return "\n".join(out)


def _write_json(spectrum: Spectrum, out_path: Path) -> None:
    payload = spectrum.to_dict(arrays=True)
    try:
        with open(out_path, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, allow_nan=False)
            fh.write("\n")
    except OSError as exc:
        raise SsaldError(f"cannot write JSON {out_path}: {exc.strerror or exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Run ``ssald-cli spectrum``; return the exit status."""
    spectrum = read_spectrum(args.file, fiber=args.fiber)
    print(summary(spectrum))
    if args.plot is not None:
        plot_spectrum(spectrum, args.plot, lines=not args.no_lines)
        print(f"plot written to {args.plot}")
    if args.json is not None:
        _write_json(spectrum, args.json)
        print(f"JSON written to {args.json}")
    return 0
