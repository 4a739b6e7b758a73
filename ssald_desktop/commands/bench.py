"""``ssald-cli bench``: benchmarks that print a summary and optionally write JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _write(result: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


def _cutouts(args: argparse.Namespace) -> int:
    from ssald_desktop.core.bench import bench_cutouts
    from ssald_desktop.core.cutouts import NormSpec

    spec = NormSpec(size=args.size, output_size=args.size)
    r = bench_cutouts(args.field, n=args.n, batch=args.batch, repeats=args.repeats, spec=spec)
    print(
        f"cutouts: {r['cutouts_per_s']:.0f} five-band {r['output_size']}x{r['output_size']} "
        f"cutouts + Lupton RGB per second (field {r['field']}, {r['n_cutouts']} positions); "
        f"baseline {r['baseline_cutouts_per_s']:.0f}/s, ratio {r['ratio_vs_baseline']:.1f}x; "
        f"goal {r['goal_cutouts_per_s']}/s {'met' if r['meets_goal'] else 'NOT met'}"
    )
    _write(r, args.json)
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.bench import bench_train, summary  # lazy: TensorFlow only for this benchmark

    r = bench_train(args.preset, args.size, args.batch, args.steps)
    print(summary(r))
    _write(r, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its sub-commands."""
    p = sub.add_parser("bench", help="benchmarks (print a summary; --json writes the figures)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    bsub.required = True
    c = bsub.add_parser("cutouts", help="five-band cutouts + Lupton RGB per second")
    c.add_argument("--field", required=True, help="folder of one field's frame files")
    c.add_argument("--n", type=int, default=2000, help="number of positions")
    c.add_argument("--batch", type=int, default=256)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--size", type=int, default=64, help="cutout size in pixels")
    c.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    c.set_defaults(func=_cutouts)
    t = bsub.add_parser("train", help="VICReg training vs a bare GradientTape loop; encoding")
    t.add_argument("--preset", default="small", help="encoder preset (small, resnet18, resnet50)")
    t.add_argument("--size", type=int, default=64, help="image size")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    t.set_defaults(func=_train)
