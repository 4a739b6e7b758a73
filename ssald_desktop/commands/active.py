"""``ssald-cli active``: the active-learning samplers and the fine-tuning trigger, headless.

- ``active suggest --store STORE --labels CSV [--query ID ...] [--query-image FILE ...]
  [--positive LABEL ...] [--policy default] [--n 20] [--finetuned DIR] [--json OUT]``: print
  the next batch (rank, id, score, sampler, reason, model version).
- ``active finetune --store STORE --labels CSV --out DIR [--mode head|encoder]
  [--top-layers N] [--wait]``: start the background fine-tune (``python -m model.finetune``)
  on the labelled embeddings.

The labels CSV has an id column (``object_id``, ``id``, ``galaxy_id``...) and ``label``, as the
label store exports it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _labels(path: str) -> dict[str, str]:
    from ssald_desktop.core.bench_search import _read_labels

    return _read_labels(path)


def _suggest(args: argparse.Namespace) -> int:
    from ssald_desktop.core.active import ActiveLearner, Pool, load_finetuned

    pool = Pool.from_store(args.store)
    labels = _labels(args.labels) if args.labels else {}
    qvec = None
    if args.query_image:
        from ssald_desktop.core.query import Searcher

        qvec = [q.vector for q in Searcher(args.store).embed_files(args.query_image)]
    ft = load_finetuned(args.finetuned, args.store, compute=True) if args.finetuned else None
    learner = ActiveLearner(pool, positive=tuple(args.positive), ignore=tuple(args.ignore),
                            policy=args.policy, seed=args.seed, finetuned=ft)
    import numpy as np

    cands = learner.suggest(labels, args.n, queries=args.query,
                            query_vectors=None if qvec is None else np.stack(qvec))
    print(f"{'rank':>4}  {'object':<24} {'score':>8}  {'sampler':<12} reason")
    for i, c in enumerate(cands, 1):
        print(f"{i:>4}  {c.object_id:<24} {c.score:>8.4f}  {c.sampler:<12} {c.reason}")
    version = cands[0].model_version if cands else ""
    print(f"model version {version}; {len(labels)} labels; pool {len(pool)}")
    if learner.last_finetuned:
        print(learner.last_finetuned)
    if args.json:
        Path(args.json).write_text(json.dumps({"policy": args.policy, "model_version": version,
                                               "candidates": [c.to_dict() for c in cands]},
                                              indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from ssald_desktop.core.active import launch_finetune

    job = launch_finetune(_labels(args.labels), args.store, args.out,
                          positive=tuple(args.positive), ignore=tuple(args.ignore),
                          mode=args.mode, encoder=args.encoder, epochs=args.epochs,
                          top_layers=args.top_layers)
    print(f"fine-tune started (pid {job.process.pid}); log {job.log}")
    if args.wait:
        status = job.wait()
        card = job.card()
        print(f"fine-tune finished (status {status}): {card['version']} "
              f"{card['counts']} in {card['seconds']} s -> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``active suggest`` and ``active finetune``."""
    from ssald_desktop.core.active import DEFAULT_IGNORE, DEFAULT_POSITIVE, POLICIES

    p = sub.add_parser("active", help="active learning: next candidates, fine-tuning")
    asub = p.add_subparsers(dest="active", metavar="ACTION")
    asub.required = True

    def common(a: argparse.ArgumentParser) -> None:
        a.add_argument("--store", required=True, help="embedding store folder (the pool)")
        a.add_argument("--positive", action="append", default=None, metavar="LABEL",
                       help=f"label meaning positive (repeat; default {list(DEFAULT_POSITIVE)})")
        a.add_argument("--ignore", action="append", default=None, metavar="LABEL",
                       help=f"label left out of training (default {list(DEFAULT_IGNORE)})")

    s = asub.add_parser("suggest", help="print the next batch of candidates")
    common(s)
    s.add_argument("--labels", help="CSV of current labels (id, label)")
    s.add_argument("--query", action="append", default=[], metavar="ID",
                   help="pool object id of a query image (repeat)")
    s.add_argument("--query-image", action="append", default=[], metavar="FILE",
                   help="a query image file (needs the store's index, ssald-cli index)")
    s.add_argument("--policy", default="default", choices=list(POLICIES))
    s.add_argument("--n", type=int, default=20, help="batch size (default 20)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--finetuned", metavar="DIR",
                   help="a finished fine-tune's folder: its head joins the ranking while the "
                        "labels it learnt still stand")
    s.add_argument("--json", metavar="OUT", help="write the candidates as JSON")
    s.set_defaults(func=_suggest)
    f = asub.add_parser("finetune", help="fine-tune the head in a background process")
    common(f)
    f.add_argument("--labels", required=True, help="CSV of current labels (id, label)")
    f.add_argument("--out", required=True, help="output folder (head.keras, head.card.json)")
    f.add_argument("--mode", choices=["head", "encoder"], default="head")
    f.add_argument("--encoder", help="encoder for --mode encoder (default: the store's)")
    f.add_argument("--epochs", type=int)
    f.add_argument("--top-layers", type=int, default=10,
                   help="encoder mode: how many of the encoder's top weight layers to train")
    f.add_argument("--wait", action="store_true", help="wait for the end and print the card")
    f.set_defaults(func=_finetune)

    def fix(args: argparse.Namespace) -> None:
        args.positive = args.positive or list(DEFAULT_POSITIVE)
        args.ignore = args.ignore or list(DEFAULT_IGNORE)

    for a, fn in ((s, _suggest), (f, _finetune)):
        a.set_defaults(func=lambda args, fn=fn: (fix(args), fn(args))[1])
