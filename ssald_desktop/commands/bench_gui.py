"""``ssald-cli bench gui``: the longest GUI event-loop stall while background work runs."""

from __future__ import annotations

import argparse

from ssald_desktop.commands.bench import write_json


def _gui(args: argparse.Namespace) -> int:
    from ssald_desktop.ui.bench_gui import bench_gui, summary  # Qt only for this benchmark

    r = bench_gui(encode_images=args.images_n, images=args.images, query=args.query)
    print(summary(r))
    write_json(r, args.json)
    return 0


def register_bench(bsub: argparse._SubParsersAction) -> None:
    """Add ``bench gui``."""
    g = bsub.add_parser("gui", help="longest event-loop stall while loading, encoding, searching")
    g.add_argument("--images", help="folder of JPEGs to encode (default: the gz2 test images)")
    g.add_argument("--images-n", type=int, default=1000, help="how many to encode")
    g.add_argument("--query", help="query image (default: the NGC 3758 render)")
    g.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    g.set_defaults(func=_gui)
