r"""``ssald-cli bench active-learning``: the discovery benchmark of issue 6 on labelled images.

Example::

    ssald-cli bench active-learning --images ../shared/data/gz2/images \
        --labels ../shared/data/gz2/labels.csv --positive spiral --prevalence 0.02 \
        --budget 200 --batch 20 --seeds 5 --json al.json

Add ``--evidence-features`` to append the two-nuclei evidence of each image to the vectors.
"""

from __future__ import annotations

import argparse

from ssald_desktop.commands.bench import write_json


def _run(args: argparse.Namespace) -> int:
    from ssald_desktop.core.active import POLICIES, ActiveLearningError
    from ssald_desktop.core.bench_active import active_summary, bench_active_learning

    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    bad = [p for p in policies if p not in (*POLICIES, "nearest")]
    if bad:
        raise ActiveLearningError(f"unknown policy {bad[0]!r}; choose among "
                                  f"{', '.join(POLICIES)}")
    try:
        whiten = None if args.whiten.lower() == "none" else float(args.whiten)
    except ValueError:
        raise ActiveLearningError(f"--whiten must be a number or 'none', got {args.whiten!r}"
                                  ) from None
    quiet = args.quiet

    def show(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    r = bench_active_learning(args.images, args.labels, args.positive, args.prevalence,
                              args.budget, args.batch, args.seeds, args.encoder,
                              policies=policies, ceiling=not args.no_ceiling, progress=show,
                              first_seed=args.first_seed,
                              whiten=whiten,
                              evidence_weight=args.evidence_weight if args.evidence_features
                              else None)
    print(active_summary(r))
    write_json(r, args.json)
    return 0


def register_bench(bsub: argparse._SubParsersAction) -> None:
    """Add ``bench active-learning``."""
    a = bsub.add_parser("active-learning",
                        help="discovery of a rare class with a simulated oracle: recall, "
                             "labelling efficiency, enrichment and GM vs random and "
                             "nearest neighbours")
    a.add_argument("--images", required=True, help="folder of images (file stem = id)")
    a.add_argument("--labels", required=True, help="CSV with galaxy_id (or id) and label")
    a.add_argument("--positive", required=True, help="the label of the class to discover")
    a.add_argument("--prevalence", type=float, default=0.02,
                   help="fraction of positives in the pool (default 0.02)")
    a.add_argument("--budget", type=int, default=200, help="labels per run (default 200)")
    a.add_argument("--batch", type=int, default=20, help="labels per round (default 20)")
    a.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    a.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    a.add_argument("--encoder", help="exported encoder (default: the bundled one)")
    a.add_argument("--policies", default="default",
                   help="comma-separated policies besides random and nearest (default: "
                        "default; e.g. default,exploit,similarity,propagation,naive)")
    a.add_argument("--whiten", default="0.001",
                   help="shrinkage of the pool's PCA whitening, or 'none' (default 0.001)")
    a.add_argument("--evidence-features", action="store_true",
                   help="append the two-nuclei evidence of each image (number of nuclei, pair "
                        "confidence, separation, flux ratio; cached) to the pool's vectors")
    a.add_argument("--evidence-weight", type=float, default=1.0,
                   help="weight of the evidence features against the unit embedding "
                        "(default 1)")
    a.add_argument("--no-ceiling", action="store_true",
                   help="skip the fully supervised ceiling")
    a.add_argument("--quiet", action="store_true", help="no per-run lines")
    a.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    a.set_defaults(func=_run)
