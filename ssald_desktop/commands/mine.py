"""``ssald-cli mine``: cut a galaxy list into HDF5/TFRecord shards, resumably."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    from ssald_desktop.core.cutouts import NormSpec
    from ssald_desktop.core.dataset import (
        LocalMirror,
        Miner,
        SDSSSource,
        galaxy_selection_sql,
        iter_progress_lines,
        query_galaxy_selection,
        read_galaxy_list,
    )
    from ssald_desktop.core.errors import SsaldError

    if args.csv:
        galaxies = read_galaxy_list(args.csv)
    else:
        try:
            ra0, ra1, d0, d1 = args.box
        except (TypeError, ValueError):
            raise SsaldError("give --csv FILE or --box RA_MIN RA_MAX DEC_MIN DEC_MAX") from None
        sql = galaxy_selection_sql(ra0, ra1, d0, d1, r_max=args.r_max, limit=args.limit)
        galaxies = query_galaxy_selection(sql, timeout=args.timeout)
    if args.mirror:
        source = LocalMirror(args.mirror)
    else:
        from ssald_desktop.core import sky

        source = SDSSSource(sky.SDSSClient(timeout=args.timeout, cache_dir=args.cache))
    spec = (
        NormSpec.from_json(open(args.normspec).read())
        if args.normspec
        else NormSpec(size=args.size, output_size=args.size)
    )
    miner = Miner(
        args.out,
        source,
        spec,
        formats=args.format,
        shard_size=args.shard_size,
        workers=args.workers,
        dtype=args.dtype,
        max_masked_fraction=args.max_masked,
    )
    tty = sys.stderr.isatty()

    def emit(line: str) -> None:
        print(
            ("\r" + line[:150].ljust(150)) if tty else line,
            end="" if tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    last = iter_progress_lines(miner.run(galaxies), emit)
    if tty:
        print(file=sys.stderr)
    if last is not None:
        print(
            f"{last.done}/{last.total} galaxies handled ({last.skipped} skipped), "
            f"{last.shards} shards in {args.out}"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mine``."""
    p = sub.add_parser("mine", help="cut a galaxy list into shards (resumable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV with ra, dec (and objid, petroRad_r, run/camcol/field)")
    src.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("RA_MIN", "RA_MAX", "DEC_MIN", "DEC_MAX"),
        help="select SDSS galaxies in this box (online)",
    )
    p.add_argument("--r-max", type=float, default=17.77, help="faintest petroMag_r (--box)")
    p.add_argument("--limit", type=int, default=10000, help="most galaxies to select (--box)")
    p.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    p.add_argument("--mirror", help="folder of local frame sets instead of downloading")
    p.add_argument("--cache", help="download cache folder (default: the user cache)")
    p.add_argument("--format", nargs="+", default=["h5"], choices=["h5", "tfrecord"])
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2, help="fields at once (download politeness)")
    p.add_argument("--size", type=int, default=64, help="cutout size in pixels")
    p.add_argument("--normspec", help="NormSpec JSON file (overrides --size)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument(
        "--max-masked", type=float, default=0.2, help="skip cutouts more masked than this"
    )
    p.add_argument("--timeout", type=float, default=15.0, help="SDSS timeout in seconds")
    p.set_defaults(func=_run)
