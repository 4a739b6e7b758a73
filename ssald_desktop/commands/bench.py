"""``ssald-cli bench``: benchmarks that print a summary and optionally write JSON."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

#: Further benchmarks, each a module ``ssald_desktop.commands.bench_<name>`` exposing
#: ``register_bench(bench_subparsers)``; a module not written yet in a checkout is skipped.
EXTRA_BENCH_MODULES = ("nuclei", "active_learning", "gui", "launch")


def write_json(result: dict, path: str | None) -> None:
    """Write a benchmark's figures to PATH as JSON when PATH is given."""
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
    write_json(r, args.json)
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.bench import bench_train, summary  # lazy: TensorFlow only for this benchmark

    r = bench_train(args.preset, args.size, args.batch, args.steps)
    print(summary(r))
    write_json(r, args.json)
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from ssald_desktop.core.bench_search import bench_retrieval, retrieval_summary

    r = bench_retrieval(
        args.images, args.labels, positive=args.positive, k=args.k, encoder_path=args.encoder
    )
    print(retrieval_summary(r))
    write_json(r, args.json)
    return 0


def _search(args: argparse.Namespace) -> int:
    from ssald_desktop.core.bench_search import bench_search, search_summary

    r = bench_search(
        args.n,
        args.dim,
        k=args.k,
        source=args.source,
        embeddings=args.embeddings,
        kind=args.kind,
        mode=args.mode,
        force=args.force,
        whiten=args.whiten,
    )
    print(search_summary(r))
    write_json(r, args.json)
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
    r = bsub.add_parser("retrieval", help="precision@k of query by image on labelled images")
    r.add_argument("--images", required=True, help="folder of images")
    r.add_argument("--labels", required=True, help="CSV with galaxy_id,label")
    r.add_argument("--positive", default="spiral", help="the class to query with")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--encoder", help="exported encoder (default: the bundled one)")
    r.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    r.set_defaults(func=_retrieval)
    q = bsub.add_parser("search", help="index build time, memory, latency and recall@k")
    q.add_argument("--n", type=int, required=True, help="number of vectors")
    q.add_argument("--dim", type=int, default=128)
    q.add_argument("--k", type=int, default=50)
    q.add_argument(
        "--source",
        choices=["gz2", "gaussian"],
        default="gz2",
        help="vectors shaped like the gz2 embeddings (default) or random Gaussians",
    )
    q.add_argument("--embeddings", help="real embeddings to tile (.npy or a store folder)")
    q.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"])
    q.add_argument("--mode", default="tile", choices=["tile", "interpolate"])
    q.add_argument("--force", action="store_true", help="run even past the memory estimate")
    q.add_argument("--whiten", default="auto", choices=["auto", "pca", "none"],
                   help="PCA whitening of the index (default auto: from 1,000 vectors)")
    q.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    q.set_defaults(func=_search)
    for name in EXTRA_BENCH_MODULES:
        try:
            module = importlib.import_module(f"ssald_desktop.commands.bench_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ssald_desktop.commands.bench_{name}":
                continue
            raise
        module.register_bench(bsub)
