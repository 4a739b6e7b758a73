"""Benchmarks of the similarity search behind ``ssald-cli bench retrieval`` and ``bench search``.

- :func:`bench_retrieval`: retrieval quality on labelled images (Galaxy Zoo 2): every image of a
  folder is encoded into an embedding store (re-encoding only what changed, so a second run
  costs nothing), each image of the positive class queries the labelled images, and precision@k
  (the fraction of its k nearest *other* labelled images that share its label) is averaged;
  the same for a raw-pixel baseline (32 x 32 x 3 pixels, cosine) and the positive class's base
  rate among the labelled images.
- :func:`bench_search`: speed, memory and recall of the index the product would choose
  (:func:`ssald_desktop.core.index.build_index`, ``kind="auto"``) on ``n`` vectors shaped like
  real embeddings: real embeddings (e.g. the GZ2 ones) tiled with small Gaussian noise, whose
  scale is a fraction of the real vectors' median nearest-neighbour distance, so the copies
  spread on the scale of real neighbourhoods (random Gaussian vectors, on which graph indexes
  look misleadingly poor, are available as ``source="gaussian"``).
"""

from __future__ import annotations

import csv
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.errors import DataFileError, SsaldError

__all__ = [
    "DEFAULT_ENCODER",
    "bench_retrieval",
    "bench_search",
    "estimate_search_memory",
    "load_embeddings",
    "retrieval_summary",
    "search_summary",
    "synthetic_embeddings",
]

DEFAULT_ENCODER = (Path(__file__).resolve().parents[2] / "resources" / "encoders" / "default"
                   / "encoder.keras")
GOAL_RECALL = 0.95
GOAL_P50_MS = 5.0
GOAL_N = 1_000_000


def _cache_dir() -> Path:
    env = os.environ.get("SSALD_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ssald-desktop"))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


# --------------------------------------------------------------------------------------------
# Retrieval quality on labels
# --------------------------------------------------------------------------------------------


def _read_labels(labels_csv: str | Path) -> dict[str, str]:
    p = Path(labels_csv)
    try:
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataFileError(f"{p}: cannot read the labels ({exc})") from exc
    if not rows:
        raise DataFileError(f"{p}: no labels")
    cols = list(rows[0])
    id_col = next((c for c in ("galaxy_id", "id", "object_id", "objid", "name") if c in cols),
                  cols[0])
    if "label" not in cols:
        raise DataFileError(f"{p}: no 'label' column (has {', '.join(cols)})")
    return {str(r[id_col]).strip(): str(r["label"]).strip() for r in rows}


def _precision(vectors: np.ndarray, labels: np.ndarray, positive: str, k: int,
               whiten: str = "auto") -> tuple[float, np.ndarray]:
    """Mean precision@k of the positive class's queries among ``vectors`` (self excluded).

    The index is the one the product builds (``kind="auto"``), whitened as ``whiten`` says.
    """
    from ssald_desktop.core.index import build_index, run_build

    si = run_build(build_index(vectors, "auto", whiten=whiten))
    q = np.flatnonzero(labels == positive)
    _, rows = si.search(vectors[q], k + 1)
    per = np.empty(len(q))
    for j, (i, r) in enumerate(zip(q, rows, strict=True)):
        nn = [x for x in r if x >= 0 and x != i][:k]
        per[j] = float(np.mean(labels[nn] == positive))
    return float(per.mean()), per


def bench_retrieval(images_dir: str | Path, labels_csv: str | Path, positive: str = "spiral",
                    k: int = 10, encoder_path: str | Path | None = None, *,
                    store_dir: str | Path | None = None, batch_size: int = 128,
                    unlabelled: tuple[str, ...] = ("unlabeled", "unlabelled", ""),
                    raw_size: int = 32) -> dict[str, Any]:
    """Precision@k of similarity search on labelled images, against raw pixels and base rate.

    Parameters
    ----------
    images_dir : path-like
        A folder of PNG/JPEG images; each file's stem is its id in ``labels_csv``.
    labels_csv : path-like
        CSV with an id column (``galaxy_id``, ``id``...) and ``label``.
    positive : str
        The label to query with (e.g. ``"spiral"``).
    k : int
        Neighbours per query.
    encoder_path : path-like, optional
        The exported encoder (default: the bundled one).
    store_dir : path-like, optional
        Where to keep the embeddings (default: a cache folder per encoder and image folder,
        so that a second run only re-encodes what changed).
    batch_size : int
        Encoding batch.
    unlabelled : tuple of str
        Labels that mean "no label": those images are indexed but are not neighbours.
    raw_size : int
        Side of the raw-pixel baseline.

    Returns
    -------
    dict
        ``precision_at_k``, ``raw_pixels_precision_at_k``, ``base_rate``, ``lift`` (precision
        over base rate), ``precision_at_k_all_neighbours`` (unlabelled images counted as
        misses), counts, the encoder's id and card summary, timings.
    """
    from PIL import Image

    from ssald_desktop.core.embeddings import EmbeddingStore, encode, encoder_info, run_encode

    t0 = time.perf_counter()
    images_dir = Path(images_dir)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise SsaldError(f"k must be a positive integer, got {k!r}")
    enc = Path(encoder_path) if encoder_path else DEFAULT_ENCODER
    if not enc.exists():
        raise DataFileError(f"{enc}: no such encoder (give --encoder PATH)")
    info = encoder_info(enc)
    labels_all = _read_labels(labels_csv)
    if store_dir is None:
        import hashlib

        key = hashlib.sha256(str(images_dir.resolve()).encode()).hexdigest()[:10]
        store_dir = _cache_dir() / "bench-retrieval" / f"{info.encoder_id[:12]}-{key}"
    t1 = time.perf_counter()
    summary = run_encode(encode(images_dir, store_dir, enc, fmt="images", batch_size=batch_size))
    encode_s = time.perf_counter() - t1
    st = EmbeddingStore(store_dir, create=False)
    ids = st.ids()
    labels = np.array([labels_all.get(i, "") for i in ids], dtype=object)
    keep = np.array([lab not in unlabelled for lab in labels])
    if not (labels[keep] == positive).any():
        raise DataFileError(f"{labels_csv}: no image of {images_dir} is labelled {positive!r}")
    n_lab = int(keep.sum())
    if k >= n_lab:
        raise SsaldError(f"k={k} is not below the number of labelled images ({n_lab})")
    vectors = np.asarray(st.vectors())
    p_model, per = _precision(vectors[keep], labels[keep], positive, k)
    p_plain, _ = _precision(vectors[keep], labels[keep], positive, k, whiten="none")
    p_all, _ = _precision(vectors, labels, positive, k)
    # raw pixels of the labelled images, 32 x 32 x 3, cosine (as model.evaluate.raw_pixels)
    from model.evaluate import raw_pixels

    sources = st.table()["source"][keep]
    raw = []
    for s in range(0, len(sources), 512):
        imgs = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0
                         for f in sources[s:s + 512]])
        raw.append(raw_pixels(imgs, raw_size))
    p_raw, _ = _precision(np.concatenate(raw).astype(np.float32), labels[keep], positive, k,
                          whiten="none")
    n_pos = int((labels[keep] == positive).sum())
    base = n_pos / n_lab
    card = info.card
    return {
        "benchmark": "retrieval", "images_dir": str(images_dir), "labels": str(labels_csv),
        "positive": positive, "k": int(k), "n_images": len(ids), "n_labelled": n_lab,
        "n_positive": n_pos, "base_rate": base, "precision_at_k": p_model,
        "precision_at_k_median": float(np.median(per)),
        "precision_at_k_unwhitened": p_plain,
        "raw_pixels_precision_at_k": p_raw, "lift": p_model / base if base else math.nan,
        "precision_at_k_all_neighbours": p_all,
        "neighbours": "the k nearest other labelled images (unlabelled ones are indexed but "
                      "skipped); cosine similarity of PCA-whitened embeddings as the product's "
                      "index (precision_at_k_unwhitened: plain cosine); exact search",
        "raw_pixels": f"{raw_size}x{raw_size}x3 pixels, antialiased resize, cosine",
        "encoder": str(enc), "encoder_id": info.encoder_id,
        "encoder_card": {"parameters": card.get("parameters"),
                         "architecture": card.get("architecture"),
                         "data": card.get("data"), "metrics": card.get("metrics"),
                         "created": card.get("created")},
        "store": str(store_dir), "encoded_now": summary["encoded"] + summary["rewritten"],
        "encode_seconds": encode_s, "seconds": time.perf_counter() - t0,
        "goal_precision": 0.85, "machine": _machine(),
    }


def retrieval_summary(r: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    return (f"retrieval: precision@{r['k']} for {r['positive']!r} = {r['precision_at_k']:.3f} "
            f"(unwhitened {r.get('precision_at_k_unwhitened', float('nan')):.3f}, "
            f"raw pixels {r['raw_pixels_precision_at_k']:.3f}, base rate {r['base_rate']:.3f}, "
            f"lift {r['lift']:.2f}x) over {r['n_positive']} queries among {r['n_labelled']} "
            f"labelled of {r['n_images']} images; encoder {Path(r['encoder']).name} "
            f"({str(r['encoder_id'])[:12]}); goal {r['goal_precision']}")


# --------------------------------------------------------------------------------------------
# Index speed, memory and recall
# --------------------------------------------------------------------------------------------


def load_embeddings(source: Any) -> np.ndarray:
    """Real embeddings from an array, a ``.npy`` file or an embedding store folder."""
    if isinstance(source, np.ndarray):
        return np.asarray(source, np.float32)
    p = Path(source)
    if p.suffix == ".npy":
        return np.load(p).astype(np.float32)
    from ssald_desktop.core.embeddings import EmbeddingStore

    return np.array(EmbeddingStore(p, create=False).vectors(), np.float32)


def synthetic_embeddings(n: int, dim: int, base: np.ndarray | None = None, *,
                         noise: float = 0.5, seed: int = 0, mode: str = "tile"
                         ) -> tuple[np.ndarray, dict[str, Any]]:
    """``n`` vectors shaped like real embeddings (or Gaussian when ``base`` is None).

    Parameters
    ----------
    n, dim : int
        Shape of the result.
    base : ndarray, optional
        Real embeddings ``(m, d)``, used as directions (unit length). If ``d != dim`` they are
        first mapped by a random Gaussian projection (which keeps their cosine geometry,
        Johnson & Lindenstrauss 1984).
    noise : float
        Isotropic Gaussian noise per vector, as a fraction of the base set's median
        nearest-neighbour distance.
    seed : int
        Random seed.
    mode : {"tile", "interpolate"}
        ``tile``: row ``i`` is ``base[i % m]`` plus noise; every copy of one galaxy is nearer to
        the other copies than to any other galaxy, so the k nearest neighbours of a copy are
        mostly copies of the same galaxy (an easy case for cell-based indexes).
        ``interpolate``: a point on the segment from a random base vector towards one of its
        10 nearest base neighbours (a uniform fraction up to one half) plus noise, which fills
        the real neighbourhoods: the neighbours of a point come from many galaxies.

    Returns
    -------
    vectors : ndarray
        float32 ``(n, dim)``.
    info : dict
        How they were made.
    """
    rng = np.random.default_rng(seed)
    if base is None:
        return rng.standard_normal((n, dim), dtype=np.float32), {"source": "gaussian"}
    if mode not in ("tile", "interpolate"):
        raise SsaldError(f"mode must be 'tile' or 'interpolate', got {mode!r}")
    b = np.asarray(base, np.float32)
    what = ("tiled real embeddings" if mode == "tile"
            else "real embeddings interpolated between neighbours")
    info: dict[str, Any] = {"source": what, "mode": mode, "base_count": int(len(b)),
                            "base_dim": int(b.shape[1])}
    if b.shape[1] != dim:
        proj = rng.standard_normal((b.shape[1], dim)).astype(np.float32) / math.sqrt(dim)
        b = b @ proj
        info["projection"] = f"random Gaussian {base.shape[1]} -> {dim}"
    from ssald_desktop.core.index import exact_neighbours

    # nearest-neighbour distances on the unit sphere (the index compares directions)
    u = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    kk = min(11, len(u))
    s, nbr = exact_neighbours(u, u, kk)
    nn = float(np.median(np.sqrt(np.maximum(0.0, 2 - 2 * s[:, 1]))))
    sigma = noise * nn / math.sqrt(dim)
    out = np.empty((n, dim), np.float32)
    for s0 in range(0, n, 100_000):
        m = min(n, s0 + 100_000) - s0
        if mode == "tile":
            x = u[np.arange(s0, s0 + m) % len(u)]
        else:
            i = rng.integers(0, len(u), m)
            j = nbr[i, rng.integers(1, kk, m)]
            t = rng.uniform(0.0, 0.5, (m, 1)).astype(np.float32)
            x = u[i] + t * (u[j] - u[i])
        out[s0:s0 + m] = x + rng.standard_normal((m, dim), dtype=np.float32) * sigma
    info.update({"noise_fraction_of_nn_distance": noise, "median_nn_distance": nn,
                 "sigma_per_dim": sigma})
    return out, info


def estimate_search_memory(n: int, dim: int, threshold: int | None = None) -> dict[str, int]:
    """Bytes ``bench_search`` needs at most: the vectors, the largest candidate index, search.

    Auto builds IVF first, then HNSW if IVF misses the goal: both can be alive at once.
    """
    from ssald_desktop.core.index import DEFAULT_THRESHOLD, HNSW_M

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    vectors = n * dim * 4
    if n < threshold:
        index = vectors
    else:
        index = int(n * (dim * 4 + 8) + n * (dim * 4 + HNSW_M * 2 * 4 * 1.1 + 8))
    work = 200 * 50_000 * 4 + 50_000 * dim * 4 * 3  # ground truth chunks
    return {"vectors": vectors, "index": index, "work": work,
            "total": vectors + index + work}


def bench_search(n: int, dim: int, k: int = 50, source: str = "gz2",
                 embeddings: Any = None, *, kind: str = "auto", n_queries: int = 200,
                 threshold: int | None = None, target_recall: float = GOAL_RECALL,
                 noise: float = 0.5, mode: str = "tile", seed: int = 0,
                 force: bool = False, whiten: str = "auto") -> dict[str, Any]:
    """Build time, memory, query latency and recall@k of the index the product would choose.

    Parameters
    ----------
    n, dim, k : int
        Number and dimension of the vectors; neighbours per query.
    source : {"gz2", "gaussian"}
        ``gz2``: real embeddings tiled with noise (:func:`synthetic_embeddings`);
        ``gaussian``: random Gaussian vectors.
    embeddings : ndarray or path-like, optional
        The real embeddings for ``gz2`` (an array, ``.npy`` or an embedding store folder).
        Default: the bundled encoder's embeddings of ``../shared/data/gz2/images``, encoded
        once into the cache (:func:`bench_retrieval`'s store).
    kind : str
        ``auto`` (the product's choice) or a fixed kind.
    n_queries : int
        Held-out queries (fresh noisy copies, not in the index) for latency and recall.
    threshold : int, optional
        Exact-search threshold (default the product's).
    target_recall : float
        Recall the chosen index is tuned to.
    noise, mode
        See :func:`synthetic_embeddings`.
    seed : int
        Random seed.
    force : bool
        Run even when the memory estimate exceeds the available memory.
    whiten : {"auto", "pca", "none"}
        The index's PCA whitening (:func:`ssald_desktop.core.index.build_index`); recall is
        measured against exact search in the same (whitened) space.

    Returns
    -------
    dict
        ``kind``, ``params``, ``choice``, ``build_seconds``, ``index_bytes``,
        ``rss_delta_bytes``, ``p50_ms``, ``p95_ms``, ``recall_at_k``, ``exact_p50_ms`` (when
        memory allows), ``tried`` (every candidate's tuning), ``estimate`` and ``meets_goal``
        (recall >= 0.95 and p50 <= 5 ms); ``skipped`` with the estimate when memory is short.
    """
    from ssald_desktop.core.index import (
        DEFAULT_THRESHOLD,
        SimilarityIndex,
        build_index,
        exact_neighbours,
        l2_normalise,
        recall_at_k,
        run_build,
    )

    if source not in ("gz2", "gaussian"):
        raise SsaldError(f"source must be 'gz2' or 'gaussian', got {source!r}")
    for name, v in (("n", n), ("dim", dim), ("k", k)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise SsaldError(f"{name} must be a positive integer, got {v!r}")
    if k >= n:
        raise SsaldError(f"k={k} must be below n={n}")
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    est = estimate_search_memory(n, dim, threshold)
    avail = _available_bytes()
    result: dict[str, Any] = {"benchmark": "search", "n": int(n), "dim": int(dim), "k": int(k),
                              "source": source, "estimate": est, "available_bytes": avail,
                              "machine": _machine(),
                              "goal": {"recall_at_k": GOAL_RECALL, "p50_ms": GOAL_P50_MS,
                                       "at_n": GOAL_N}}
    if est["total"] > 0.9 * avail and not force:
        result.update({"skipped": True, "reason": f"needs about {est['total'] / 2**30:.1f} GiB, "
                       f"{avail / 2**30:.1f} GiB available"})
        return result
    base = None
    if source == "gz2":
        if embeddings is None:
            gz2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "gz2"
            r = bench_retrieval(gz2 / "images", gz2 / "labels.csv", "spiral", 10)
            embeddings = r["store"]
        base = load_embeddings(embeddings)
        if len(base) < 2:
            raise SsaldError("need at least 2 real embeddings to tile")
    t0 = time.perf_counter()
    # the held-out queries are further noisy copies (the last rows), not in the index
    everything, made = synthetic_embeddings(n + n_queries, dim, base, noise=noise, seed=seed,
                                            mode=mode)
    vectors, queries = everything[:n], everything[n:]
    result.update({"data": made, "data_seconds": time.perf_counter() - t0})
    rss0 = _rss_bytes()
    tb = time.perf_counter()
    si = run_build(build_index(vectors, kind, threshold=threshold, target_recall=target_recall,
                               k=k, seed=seed, whiten=whiten))
    build_s = time.perf_counter() - tb
    rss1 = _rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        import faiss

        faiss.write_index(si.index, str(Path(tmp) / "i.faiss"))
        index_bytes = (Path(tmp) / "i.faiss").stat().st_size
    # held-out queries: latency one at a time, recall against exact search
    times = []
    found = np.empty((len(queries), k), np.int64)
    for i in range(len(queries)):
        t = time.perf_counter()
        _, rows = si.search(queries[i:i + 1], k)
        times.append((time.perf_counter() - t) * 1e3)
        found[i] = rows[0]
    _, truth = exact_neighbours(vectors, queries, k, transform=si.transform)
    recall = recall_at_k(found, truth, k)
    p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
    exact_p50 = None
    if si.kind != "flat" and n * dim * 4 < 0.25 * _available_bytes():
        import faiss

        flat = faiss.IndexFlatIP(dim)
        for s in range(0, n, 100_000):
            flat.add(l2_normalise(vectors[s:s + 100_000]))
        exact = SimilarityIndex(flat, "flat", {})
        et = []
        for i in range(min(50, len(queries))):
            t = time.perf_counter()
            exact.search(queries[i:i + 1], k)
            et.append((time.perf_counter() - t) * 1e3)
        exact_p50 = float(np.percentile(et, 50))
        del exact, flat
    elif si.kind == "flat":
        exact_p50 = p50
    result.update({
        "kind": si.kind, "params": si.params, "choice": si.meta.get("choice"),
        "build_seconds": build_s, "index_bytes": int(index_bytes),
        "rss_delta_bytes": int(rss1 - rss0), "p50_ms": p50, "p95_ms": p95,
        "recall_at_k": recall, "n_queries": int(len(queries)),
        "tuning_recall": si.meta.get("recall"), "exact_p50_ms": exact_p50,
        "tried": si.meta.get("tried", []), "target_recall": target_recall,
        "whitening": si.meta.get("whitening"),
        "threshold": threshold, "faiss_threads": _faiss_threads(),
        "meets_goal": bool(recall >= GOAL_RECALL and p50 <= GOAL_P50_MS),
    })
    return result


def _faiss_threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def search_summary(r: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    if r.get("skipped"):
        return f"search: {r['n']} x {r['dim']} skipped: {r['reason']}"
    ex = f", exact p50 {r['exact_p50_ms']:.2f} ms" if r.get("exact_p50_ms") is not None else ""
    return (f"search: {r['n']} x {r['dim']} ({r['source']}) -> {r['kind']} {r['params']}; "
            f"build {r['build_seconds']:.1f} s, index {r['index_bytes'] / 2**20:.0f} MiB "
            f"(RSS +{r['rss_delta_bytes'] / 2**20:.0f} MiB); p50 {r['p50_ms']:.2f} ms, p95 "
            f"{r['p95_ms']:.2f} ms{ex}; recall@{r['k']} {r['recall_at_k']:.3f}; goal (recall "
            f">= {GOAL_RECALL}, p50 <= {GOAL_P50_MS} ms) {'met' if r['meets_goal'] else 'NOT met'}")
