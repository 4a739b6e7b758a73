"""``ssald-cli embed``, ``ssald-cli index`` and ``ssald-cli search``: the similarity search.

- ``embed --encoder PATH (--images DIR | --shards DIR) --out STORE``: encode a folder of
  PNG/JPEG images or the miner's HDF5 or TFRecord shards into an embedding store (only what
  changed).
- ``embed --from-shards DIR --store STORE [--encoder PATH]``: merge the embedding shards of the
  distributed job (``python -m model.encode --out DIR``) into a store (``--store`` is another
  name for ``--out``); ``--encoder`` records this machine's copy of the job's encoder.
- ``index --store STORE [--kind auto|flat|ivf|hnsw|ivfpq] [--whiten auto|pca|none]``: build
  the faiss index beside the vectors (``auto`` chooses by measured recall; whitening from
  1,000 vectors), or ``--update`` to add new vectors.
- ``search --index STORE (--query FILE... | --object ID...) [--negative FILE|ID ...] --k 20
  [--json OUT]``: print the results (rank, id, similarity) and write them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_ENCODER = (Path(__file__).resolve().parents[2] / "resources" / "encoders" / "default"
                   / "encoder.keras")


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(round(width * (done / total if total else 1.0)))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def _write_json(data: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=float) + "\n")
        print(f"wrote {path}")


def _embed(args: argparse.Namespace) -> int:
    from ssald_desktop.core.embeddings import encode, run_encode
    from ssald_desktop.core.errors import SsaldError

    quiet = args.quiet
    if args.from_shards:
        return _embed_from_shards(args)
    encoder = args.encoder or str(DEFAULT_ENCODER)
    if not Path(encoder).exists():
        raise SsaldError(f"{encoder}: no such encoder (give --encoder PATH)")
    source, fmt = (args.images, "images") if args.images else (args.shards, "shards")

    def show(p):
        if not quiet:
            print(f"{_bar(p.done, p.total)} {p.done}/{p.total} ({p.encoded} encoded, "
                  f"{p.skipped} unchanged)", flush=True)

    r = run_encode(encode(source, args.out, encoder, fmt=fmt, batch_size=args.batch), show)
    print(f"embed: {r['encoded']} new and {r['rewritten']} changed object(s) encoded, "
          f"{r['skipped']} unchanged; the store {r['store']} holds {r['count']} vectors "
          f"({r['seconds']:.1f} s)")
    _write_json(r, args.json)
    return 0


def _embed_from_shards(args: argparse.Namespace) -> int:
    from ssald_desktop.core.embeddings import import_shards, run_encode

    quiet = args.quiet

    def show(p):
        if not quiet:
            print(f"{_bar(p.done, p.total)} {p.done}/{p.total} ({p.encoded} imported, "
                  f"{p.skipped} unchanged)", flush=True)

    r = run_encode(import_shards(args.from_shards, args.out, encoder=args.encoder), show)
    print(f"embed: {r['imported']} new and {r['rewritten']} changed vector(s) merged from "
          f"{r['shards']} embedding shard(s), {r['skipped']} unchanged; the store {r['store']} "
          f"holds {r['count']} vectors ({r['seconds']:.1f} s)")
    _write_json(r, args.json)
    return 0


def _index(args: argparse.Namespace) -> int:
    from ssald_desktop.core.embeddings import EmbeddingStore
    from ssald_desktop.core.index import build_store_index, run_build, update_index

    store = EmbeddingStore(args.store, create=False)
    if args.update:
        si, added = update_index(store)
        print(f"index: {added} vector(s) added; {si.kind} index of {si.count} vectors at "
              f"{si.path}")
    else:
        quiet = args.quiet

        def show(p):
            if not quiet:
                print(f"{p.stage}: {p.done}/{p.total}", flush=True)

        kw = {"target_recall": args.recall, "k": args.recall_k, "whiten": args.whiten}
        if args.threshold is not None:
            kw["threshold"] = args.threshold
        si = run_build(build_store_index(store, args.kind, **kw), show)
        print(f"index: {si.kind} {si.params} over {si.count} vectors at {si.path}; "
              f"{si.meta.get('choice')}; whitening: {si.meta['whitening']['kind']}")
        if si.meta.get("warning"):
            print(f"warning: {si.meta['warning']}", file=sys.stderr)
    _write_json({"kind": si.kind, "params": si.params, "count": si.count,
                 "path": str(si.path), **{k: v for k, v in si.meta.items() if k != "tried"},
                 "tried": si.meta.get("tried", [])}, args.json)
    return 0


def _search(args: argparse.Namespace) -> int:
    from ssald_desktop.core.query import Searcher

    searcher = Searcher(args.index, encoder=args.encoder)
    neg_files, neg_objects = [], []
    for item in args.negative or []:
        if Path(item).exists():
            neg_files.append(item)
        else:
            neg_objects.append(item)
    r = searcher.search(files=args.query or [], objects=args.object or [],
                        negative_files=neg_files, negative_objects=neg_objects, k=args.k,
                        combine=args.combine, negative_weight=args.negative_weight)
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{'rank':>4}  {'id':<24} {'similarity':>10}")
    for h in r.hits:
        print(f"{h.rank:>4}  {h.id:<24} {h.similarity:>10.4f}")
    _write_json(r.to_dict(), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``embed``, ``index`` and ``search``."""
    e = sub.add_parser("embed", help="encode images or shards into an embedding store")
    e.add_argument("--encoder", help=f"exported encoder .keras (default {DEFAULT_ENCODER})")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder of PNG/JPEG images")
    src.add_argument("--shards", metavar="DIR",
                     help="the miner's output folder (HDF5 or TFRecord shards)")
    src.add_argument("--from-shards", metavar="DIR",
                     help="merge embedding shards of `python -m model.encode --out DIR`")
    e.add_argument("--out", "--store", dest="out", required=True, metavar="STORE",
                   help="embedding store folder")
    e.add_argument("--batch", type=int, default=64, help="images per batch")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    e.add_argument("--json", metavar="OUT", help="write the summary as JSON")
    e.set_defaults(func=_embed)

    i = sub.add_parser("index", help="build the similarity index beside an embedding store")
    i.add_argument("--store", required=True, metavar="STORE")
    i.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"], default="auto",
                   help="auto: exact below the threshold, else chosen by measured recall")
    i.add_argument("--threshold", type=int, help="exact search below this many vectors")
    i.add_argument("--recall", type=float, default=0.95, help="target recall@k vs exact")
    i.add_argument("--recall-k", type=int, default=50, help="k of the recall measurement")
    i.add_argument("--whiten", choices=["auto", "pca", "none"], default="auto",
                   help="PCA whitening of the embeddings (default auto: from 1,000 vectors)")
    i.add_argument("--update", action="store_true",
                   help="add the store's new vectors to the saved index (rebuild if needed)")
    i.add_argument("--quiet", action="store_true", help="no progress lines")
    i.add_argument("--json", metavar="OUT", help="write the index description as JSON")
    i.set_defaults(func=_index)

    s = sub.add_parser("search", help="query the index by image file or by object id")
    s.add_argument("--index", required=True, metavar="DIR", help="embedding store with its index")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", nargs="+", metavar="FILE", help="FITS, PNG or JPEG query images")
    q.add_argument("--object", nargs="+", metavar="ID", help="indexed object ids (more like this)")
    s.add_argument("--negative", nargs="+", metavar="FILE|ID",
                   help="negative examples: files, or object ids of the index")
    s.add_argument("--k", type=int, default=20, help="number of results")
    s.add_argument("--combine", choices=["mean", "max"], default="mean",
                   help="several positives: mean embedding or best match")
    s.add_argument("--negative-weight", type=float, default=0.5,
                   help="weight w of the negative term (score = cos - w * max cos to negatives)")
    s.add_argument("--encoder", help="encoder for query files (default: the store's)")
    s.add_argument("--json", metavar="OUT", help="write the results as JSON")
    s.set_defaults(func=_search)
