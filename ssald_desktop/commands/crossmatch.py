"""``ssald-cli crossmatch``: known dual AGN near a position or near every row of a table.

- ``crossmatch --ra DEG --dec DEG [--radius ARCSEC]``: the known systems with a component
  within the radius (default 5"), nearest first.
- ``crossmatch --table FILE [--ra-col C --dec-col C --id-col C] [--radius ARCSEC]
  [--out FILE]``: every (row, system) pair within the radius; ``--out`` writes them as CSV,
  VOTable or FITS.
- ``--catalog FILE`` uses another ECSV table with the same columns; ``--json OUT`` writes the
  matches as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _write_json(data: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _run(args: argparse.Namespace) -> int:
    from ssald_desktop.core.catalogs import (
        KnownDualAGN,
        crossmatch,
        crossmatch_table,
        default_catalog,
    )
    from ssald_desktop.core.errors import SsaldError

    catalog = KnownDualAGN(args.catalog) if args.catalog else default_catalog()
    if args.table:
        t = crossmatch_table(args.table, args.radius, ra_col=args.ra_col, dec_col=args.dec_col,
                             id_col=args.id_col, catalog=catalog)
        n_in = t.meta["inputs"]
        rows_hit = len(set(t["input_row"].tolist()))
        print(f"crossmatch: {rows_hit} of {n_in} rows of {args.table} lie within "
              f"{args.radius:g}\" of {len(t)} known system match(es)"
              + (f"; {t.meta['skipped']} rows without a valid position skipped"
                 if t.meta["skipped"] else ""))
        show = "input_id" if "input_id" in t.colnames else "input_row"
        for r in t[: args.limit]:
            print(f"  {str(r[show]):<22} {r['name']:<30} {r['catalog']:<12} {r['status']:<19} "
                  f"comp {r['component']} {r['distance_arcsec']:6.2f}\"")
        if len(t) > args.limit:
            print(f"  ... {len(t) - args.limit} more (--limit, --out or --json for all)")
        if args.out:
            from ssald_desktop.core.labels import write_table

            write_table(t, args.out)
            print(f"wrote {args.out}")
        rows = [{k: _clean(v.item() if hasattr(v, "item") else v) for k, v in zip(
            t.colnames, r, strict=True)} for r in t.filled(float("nan"))] if len(t) else []
        _write_json({"table": args.table, "radius_arcsec": args.radius, "inputs": n_in,
                     "skipped": t.meta["skipped"], "matches": rows}, args.json)
        return 0
    if args.ra is None or args.dec is None:
        raise SsaldError("give --ra and --dec (degrees), or --table FILE")
    if args.out:
        raise SsaldError("--out applies to --table; use --json for a single position")
    matches = crossmatch(args.ra, args.dec, args.radius, catalog=catalog)
    print(f"crossmatch: {len(matches)} known system(s) within {args.radius:g}\" of "
          f"RA {args.ra:.6f}, Dec {args.dec:+.6f}")
    for m in matches:
        print(f"  {m.summary()}")
        print(f"      {m.reference}")
    _write_json({"ra": args.ra, "dec": args.dec, "radius_arcsec": args.radius,
                 "matches": [m.to_dict() for m in matches]}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``crossmatch``."""
    from ssald_desktop.core.catalogs import DEFAULT_RADIUS_ARCSEC

    p = sub.add_parser("crossmatch", help="known dual AGN near a position or a table's rows")
    p.add_argument("--ra", type=float, help="RA in degrees (ICRS)")
    p.add_argument("--dec", type=float, help="Dec in degrees (ICRS)")
    p.add_argument("--table", metavar="FILE",
                   help="CSV, ECSV, VOTable or FITS table of positions (degrees)")
    p.add_argument("--ra-col", help="RA column of --table (default: found by name)")
    p.add_argument("--dec-col", help="Dec column of --table (default: found by name)")
    p.add_argument("--id-col", help="id column of --table (default: found by name)")
    p.add_argument("--radius", type=float, default=DEFAULT_RADIUS_ARCSEC,
                   help=f"match radius in arcsec (default {DEFAULT_RADIUS_ARCSEC:g})")
    p.add_argument("--catalog", metavar="ECSV",
                   help="known dual-AGN table (default resources/catalogs/known_dagn.ecsv)")
    p.add_argument("--limit", type=int, default=50, help="table matches to print")
    p.add_argument("--out", metavar="FILE", help="write table matches (.csv, .vot, .fits)")
    p.add_argument("--json", metavar="OUT", help="write the matches as JSON")
    p.set_defaults(func=_run)
