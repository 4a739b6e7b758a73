"""The similarity index: faiss inner product on L2-normalised embeddings (cosine similarity).

Kinds
-----
- ``flat``: exact search (:class:`faiss.IndexFlatIP`). Used below ``threshold`` vectors
  (default 200,000: exact search costs ~17 ms a query at 1M x 128 on two cores, ~3 ms at 200k,
  inside the 5 ms goal).
- ``ivf``: :class:`faiss.IndexIVFFlat` with ``nlist = 2 sqrt(n)`` k-means cells (Jegou, Douze &
  Schmid 2011), ``nprobe`` tuned.
- ``hnsw``: :class:`faiss.IndexHNSWFlat` (Malkov & Yashunin 2018), ``M = 32``, inner-product
  metric, ``efSearch`` tuned.
- ``ivfpq``: :class:`faiss.IndexIVFPQ` (product quantisation, 4 dimensions a byte) when the full
  vectors would not fit the memory budget; the candidates (``rerank`` x k of them) are
  re-ranked exactly with the store's memory-mapped vectors.

Whitening
---------
Above ``WHITEN_MIN`` vectors (and 8 per dimension) the index searches PCA-whitened vectors: the
normalised embeddings are centred, rotated onto their principal axes and each axis divided by
the square root of its variance plus a shrinkage of ``WHITEN_SHRINK`` times the largest one,
then normalised again (the same transform as the active-learning pool,
:class:`ssald_desktop.core.active.Pool`). A few high-variance directions of a self-supervised
embedding (size, brightness, orientation) otherwise dominate cosine similarity. On the GZ2
retrieval benchmark (bundled encoder, precision@10 for the "spiral" class) it raised 0.353 to
0.379 (0.386 keeping half the axes, 0.390 a quarter: not worth a second setting). The transform
is fitted once at build time on up to ``WHITEN_SAMPLE`` vectors and stored in ``index.faiss``
(a :class:`faiss.IndexPreTransform` with a :class:`faiss.PCAMatrix` and a
:class:`faiss.NormalizationTransform`), so queries and incremental additions go through the
same one; recall is measured in the whitened space.

Choosing (``kind="auto"``)
--------------------------
Below the threshold: ``flat``. Above it, by *measured recall*: a random sample of the index's
own vectors is searched exactly (ground truth) and with each candidate; recall@k (default k =
50) is the overlap of the two top-k lists with the query itself left out of both. Candidates are
tried from the cheapest to build (IVF, then HNSW; only IVF-PQ when the flat vectors exceed the
memory budget); for each, the search parameter grows until recall reaches the target (default
0.95, plus ``TUNE_MARGIN``). The first candidate meeting the target within the latency goal (p50
of single queries, default 5 ms) is kept. If none does, exact search joins the candidates (when
it fits the memory budget) and the fastest index that meets the target is kept, else the one
with the best recall (with a warning in :attr:`SimilarityIndex.meta`). On random Gaussian
vectors (1M x 128) IVF needs every cell for recall 0.95 and HNSW reaches 0.56: exact search is
then chosen.

Files (beside the embeddings)
-----------------------------
``index.faiss`` (:func:`faiss.write_index`) and ``index.json``: kind, parameters, count,
dimension, the encoder id and NormSpec digest of the store, the store's rewrite counter, the
measured recall and latency, and the size and SHA-256 of ``index.faiss``. A missing, truncated or
corrupt file is a :class:`DataFileError` naming it. New vectors of the store are added
incrementally (:func:`update_index`); vectors rewritten in place force a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.errors import DataFileError, InvalidQueryError, SsaldError
from ssald_desktop.core.progress import run_to_end

__all__ = [
    "DEFAULT_K",
    "DEFAULT_TARGET_RECALL",
    "DEFAULT_THRESHOLD",
    "INDEX_FILE",
    "KINDS",
    "SIDECAR_FILE",
    "WHITEN_MIN",
    "IndexProgress",
    "SimilarityIndex",
    "build_index",
    "build_store_index",
    "exact_neighbours",
    "l2_normalise",
    "open_index",
    "recall_at_k",
    "run_build",
    "update_index",
]

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index.json"
KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
DEFAULT_THRESHOLD = 200_000
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_K = 50
DEFAULT_LATENCY_GOAL_MS = 5.0
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
EF_SEARCH: tuple[int, ...] = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
RERANK = 8
#: Tuning stops at recall >= target + this: the tuning sample's recall is an estimate (500
#: queries), and held-out queries came out 0.01 lower at 1M whitened vectors (0.956 -> 0.946).
TUNE_MARGIN = 0.01
CHUNK = 50_000
SMALL_BATCH = 8  # up to this many queries search on one thread (see _faiss_search)
WHITEN_MIN = 1000  # fewer vectors than this (or than 8 per dimension): no whitening
WHITEN_SHRINK = 1e-3  # shrinkage, a fraction of the largest variance (as active.DEFAULT_WHITEN)
WHITEN_SAMPLE = 100_000
WHITEN_CHOICES = ("auto", "pca", "none")


def _faiss() -> Any:
    import faiss  # lazy: keeps the CLI and core imports light

    return faiss


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """A float32 copy of ``x`` with every row scaled to unit length (zero rows stay zero)."""
    y = np.array(x, dtype=np.float32, copy=True, order="C")
    if y.ndim == 1:
        y = y[None, :]
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    np.divide(y, norms, out=y, where=norms > 0)
    return y


def _chunks(n: int, size: int = CHUNK) -> range:
    return range(0, n, size)


@dataclass(frozen=True)
class IndexProgress:
    """Progress of an index build: ``stage`` ("ground truth", "train", "add", "tune"...)."""

    stage: str
    done: int
    total: int

    def __iter__(self) -> Any:
        """Unpack as ``done, total``."""
        return iter((self.done, self.total))


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int,
                     chunk: int = CHUNK, transform: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of normalised ``queries`` against (raw) ``vectors``.

    ``vectors`` may be a memory map: they are normalised chunk by chunk. ``transform`` (raw
    vectors to unit vectors, e.g. :meth:`SimilarityIndex.transform` of a whitened index)
    replaces the plain normalisation of both sides.

    Returns
    -------
    sims, rows : ndarray
        ``(m, k)``, best first.
    """
    faiss = _faiss()
    unit = transform or l2_normalise
    q = unit(queries)
    n = len(vectors)
    k = min(k, n)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in _chunks(n, chunk):
        block = unit(vectors[s:s + chunk])
        flat = faiss.IndexFlatIP(block.shape[1])
        flat.add(block)
        d, i = flat.search(q, min(k, len(block)))
        best_s = np.concatenate([best_s, d], axis=1)
        best_i = np.concatenate([best_i, i + s], axis=1)
        if best_s.shape[1] > k:
            order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(best_s, order, 1)
            best_i = np.take_along_axis(best_i, order, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int,
                exclude: np.ndarray | None = None) -> float:
    """Mean recall@k of result rows against exact rows, leaving ``exclude[i]`` out of row i."""
    total = 0.0
    for i in range(len(truth)):
        skip = -1 if exclude is None else int(exclude[i])
        t = [int(x) for x in truth[i] if x >= 0 and x != skip][:k]
        f = [int(x) for x in found[i] if x >= 0 and x != skip][:k]
        total += len(set(f).intersection(t)) / max(1, len(t))
    return total / max(1, len(truth))


class SimilarityIndex:
    """A faiss index of L2-normalised vectors searched by inner product (cosine similarity).

    Parameters
    ----------
    index : faiss.Index
        Built over normalised vectors (row ``i`` is the store's row ``i``).
    kind : str
        ``flat``, ``ivf``, ``hnsw`` or ``ivfpq``.
    params : dict
        Search parameters (``nprobe``, ``efSearch``, ``rerank``) and build parameters.
    meta : dict, optional
        Identity and measurements (encoder id, NormSpec digest, recall...).
    vectors : ndarray, optional
        The raw stored vectors (memory map), needed by ``ivfpq`` to re-rank.
    """

    def __init__(self, index: Any, kind: str, params: dict[str, Any],
                 meta: dict[str, Any] | None = None, vectors: np.ndarray | None = None):
        self.index = index
        self.kind = kind
        self.params = dict(params)
        self.meta = dict(meta or {})
        self.vectors = vectors
        self.path: Path | None = None
        self._chain = _chain_of(index)
        self._apply_params()

    def __repr__(self) -> str:
        return f"SimilarityIndex(kind={self.kind!r}, count={self.count}, params={self.params})"

    @property
    def count(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.index.d)

    @property
    def whitened(self) -> bool:
        """Whether the index searches PCA-whitened vectors (see the module docstring)."""
        return bool(self._chain)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Raw vectors as the index compares them: unit length, whitened first if it is."""
        return _apply_chain(self._chain, vectors)

    def _apply_params(self) -> None:
        faiss = _faiss()
        if self.kind == "hnsw":
            inner = faiss.downcast_index(self.index)
            if isinstance(inner, faiss.IndexPreTransform):
                inner = faiss.downcast_index(inner.index)
            inner.hnsw.efSearch = int(self.params.get("efSearch", 64))
        elif self.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self.index).nprobe = int(self.params.get("nprobe", 8))

    def set_params(self, **params: Any) -> None:
        """Change search parameters (``efSearch``, ``nprobe``, ``rerank``)."""
        self.params.update(params)
        self._apply_params()

    def add(self, vectors: np.ndarray) -> None:
        """Add raw vectors (normalised here) as the next rows."""
        v = l2_normalise(vectors)
        if v.shape[1] != self.dim:
            raise SsaldError(f"{v.shape[1]}-d vectors cannot go into a {self.dim}-d index")
        for s in _chunks(len(v)):
            self.index.add(v[s:s + CHUNK])

    def _check_k(self, k: Any, extra: int = 0) -> int:
        where = f" at {self.path}" if self.path else ""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
        if k + extra > self.count:
            more = f" (plus {extra} excluded)" if extra else ""
            raise InvalidQueryError(f"k={k}{more} is larger than the index{where}, which holds "
                                    f"{self.count} vectors")
        return int(k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar indexed vectors of each query.

        Parameters
        ----------
        queries : ndarray
            ``(m, dim)`` or ``(dim,)``, raw (normalised here).
        k : int
            Neighbours per query, at most :attr:`count`.

        Returns
        -------
        sims : ndarray
            ``(m, k)`` cosine similarities, best first.
        rows : ndarray
            ``(m, k)`` store rows (-1 where an approximate index found fewer).

        Raises
        ------
        InvalidQueryError
            ``k`` not a positive integer or larger than the index; a query of another
            dimension.
        """
        k = self._check_k(k)
        q = l2_normalise(queries)
        if q.shape[1] != self.dim:
            raise InvalidQueryError(f"a {q.shape[1]}-d query cannot search a {self.dim}-d index")
        if self.kind != "ivfpq":
            return self._faiss_search(q, k)
        if self.vectors is None:
            raise SsaldError("an IVF-PQ index needs the store's vectors to re-rank")
        kk = min(self.count, k * int(self.params.get("rerank", RERANK)))
        _, cand = self._faiss_search(q, kk)
        q = self.transform(q)
        sims = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i in range(len(q)):
            c = cand[i][cand[i] >= 0]
            if not len(c):
                continue
            order_rows = np.sort(c)
            exact = self.transform(np.asarray(self.vectors[order_rows])) @ q[i]
            top = np.argsort(-exact, kind="stable")[:k]
            sims[i, :len(top)] = exact[top]
            rows[i, :len(top)] = order_rows[top]
        return sims, rows

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search with faiss; a few queries run on one OpenMP thread.

        Measured on two cores: one query of exact search over 100k x 128 takes 24 ms with two
        OpenMP threads and 2.2 ms with one (IVF and HNSW gain nothing from a second thread on
        one query). ``omp_set_num_threads`` acts on the calling thread only.
        """
        if len(q) > SMALL_BATCH:
            return self.index.search(q, k)
        faiss = _faiss()
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(q, k)
        finally:
            faiss.omp_set_num_threads(before)

    # -- files -------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss`` and ``index.json`` into ``folder`` (atomically each).

        Returns
        -------
        Path
            The ``index.faiss`` path.
        """
        faiss = _faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / INDEX_FILE
        tmp = folder / (INDEX_FILE + ".tmp")
        faiss.write_index(self.index, str(tmp))
        h = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        side = {"format": "ssald-index", "version": 1, "kind": self.kind,
                "metric": "inner product on L2-normalised vectors (cosine)" + (
                    ", PCA-whitened and renormalised first" if self.whitened else ""),
                "params": self.params, "count": self.count, "dim": self.dim,
                "file": INDEX_FILE, "bytes": path.stat().st_size, "sha256": h.hexdigest(),
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **{
                    k: v for k, v in self.meta.items() if k not in (
                        "format", "version", "kind", "params", "count", "dim", "file", "bytes",
                        "sha256", "saved")}}
        stmp = folder / (SIDECAR_FILE + ".tmp")
        stmp.write_text(json.dumps(side, indent=2, default=float) + "\n")
        os.replace(stmp, folder / SIDECAR_FILE)
        self.path = path
        return path

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True,
             vectors: np.ndarray | None = None) -> SimilarityIndex:
        """Read an index saved by :meth:`save`.

        Parameters
        ----------
        folder : path-like
            The folder with ``index.faiss`` and ``index.json`` (or the ``.faiss`` file).
        verify : bool
            Check the file's SHA-256 against the sidecar (its size is always checked).
        vectors : ndarray, optional
            The store's vectors (needed by ``ivfpq``).

        Raises
        ------
        DataFileError
            A missing, truncated or corrupt file, named.
        """
        faiss = _faiss()
        folder = Path(folder)
        if folder.suffix == ".faiss":
            folder = folder.parent
        path, side_path = folder / INDEX_FILE, folder / SIDECAR_FILE
        if not path.exists():
            raise DataFileError(f"{path}: no index here (build one with `ssald-cli index`)")
        if not side_path.exists():
            raise DataFileError(f"{side_path}: the index's sidecar is missing")
        try:
            side = json.loads(side_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataFileError(f"{side_path}: unreadable index sidecar ({exc})") from exc
        if side.get("format") != "ssald-index":
            raise DataFileError(f"{side_path}: not an SSALD index sidecar")
        size = path.stat().st_size
        if size != side.get("bytes"):
            raise DataFileError(f"{path}: truncated or overwritten index file ({size} bytes, "
                                f"{side.get('bytes')} were written); rebuild it with "
                                "`ssald-cli index`")
        if verify:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            if h.hexdigest() != side.get("sha256"):
                raise DataFileError(f"{path}: corrupt index file (SHA-256 differs from "
                                    f"{side_path.name}); rebuild it with `ssald-cli index`")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise DataFileError(f"{path}: not a readable faiss index "
                                f"({str(exc).splitlines()[0][:200]})") from exc
        if int(index.ntotal) != int(side.get("count", -1)):
            raise DataFileError(f"{path}: holds {index.ntotal} vectors, {side_path.name} "
                                f"records {side.get('count')}")
        meta = {k: v for k, v in side.items() if k not in ("kind", "params")}
        out = cls(index, side["kind"], side.get("params", {}), meta, vectors)
        out.path = path
        return out


# --------------------------------------------------------------------------------------------
# Building and choosing
# --------------------------------------------------------------------------------------------


def _memory_total() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 << 30


def _nlist(n: int) -> int:
    return int(min(65536, max(4, round(2 * math.sqrt(n)))))


def _pq_m(d: int) -> int:
    m = max(1, d // 4)
    while d % m:
        m -= 1
    return m


def _chain_of(index: Any) -> list[Any]:
    """The vector transforms an :class:`faiss.IndexPreTransform` applies (empty otherwise)."""
    faiss = _faiss()
    if index is None:
        return []
    idx = faiss.downcast_index(index)
    if not isinstance(idx, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(idx.chain.at(i)) for i in range(idx.chain.size())]


def _apply_chain(chain: list[Any], vectors: np.ndarray) -> np.ndarray:
    """Normalise raw vectors, then apply the transforms of ``chain`` in order."""
    x = l2_normalise(vectors)
    for t in chain:
        x = np.ascontiguousarray(t.apply(x), dtype=np.float32)
    return x


def _want_whitening(whiten: str, n: int, d: int) -> tuple[bool, str]:
    if whiten not in WHITEN_CHOICES:
        raise SsaldError(f"whiten must be one of {', '.join(WHITEN_CHOICES)}, got {whiten!r}")
    if whiten == "none":
        return False, "none (asked for)"
    enough = n >= max(WHITEN_MIN, 8 * d)
    if whiten == "auto" and not enough:
        return False, (f"none: {n} vectors are too few to estimate a {d}-d covariance "
                       f"(whitening from {max(WHITEN_MIN, 8 * d)})")
    if n < d + 1:
        raise SsaldError(f"whitening {d}-d vectors needs more than {d} of them, got {n}")
    return True, ""


def _fit_whitening(vectors: np.ndarray, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """PCA whitening with shrinkage then renormalisation, fitted on a sample of ``vectors``.

    Returns the trained transforms (:class:`faiss.PCAMatrix` with eigen power -1/2 and an
    absolute epsilon of ``WHITEN_SHRINK`` times the largest eigenvalue, then
    :class:`faiss.NormalizationTransform`) and a description for the sidecar.
    """
    faiss = _faiss()
    n, d = vectors.shape
    rows = np.arange(n)
    if n > WHITEN_SAMPLE:
        rows = np.sort(np.random.default_rng(seed + 2).choice(n, WHITEN_SAMPLE, replace=False))
    sample = l2_normalise(np.asarray(vectors[rows]))
    pca = faiss.PCAMatrix(d, d, -0.5)
    pca.train(sample)
    eig = faiss.vector_to_array(pca.eigenvalues)
    pca.epsilon = float(WHITEN_SHRINK * max(float(eig.max()), 1e-12))
    pca.prepare_Ab()
    norm = faiss.NormalizationTransform(d, 2.0)
    return [pca, norm], {"kind": "pca", "shrinkage": WHITEN_SHRINK, "fitted_on": int(len(rows))}


def _new_index(kind: str, d: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(params.get("M", HNSW_M)), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(params.get("efConstruction", HNSW_EF_CONSTRUCTION))
        return idx
    quantizer = faiss.IndexFlatIP(d)
    nlist = int(params["nlist"])
    if kind == "ivf":
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        idx = faiss.IndexIVFPQ(quantizer, d, nlist, int(params["pq_m"]), int(params["pq_bits"]),
                               faiss.METRIC_INNER_PRODUCT)
    idx.cp.min_points_per_centroid = 5
    idx.cp.niter = 20
    return idx


def _default_params(kind: str, n: int, d: int) -> dict[str, Any]:
    if kind == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": 64}
    if kind == "ivf":
        return {"nlist": _nlist(n), "nprobe": 8}
    if kind == "ivfpq":
        return {"nlist": _nlist(n), "nprobe": 8, "pq_m": _pq_m(d),
                "pq_bits": 8 if n >= 256 * 39 else 4, "rerank": RERANK}
    return {}


def _build_kind(kind: str, vectors: np.ndarray, params: dict[str, Any], seed: int,
                chain: list[Any] | None = None) -> Generator[IndexProgress, None, Any]:
    """Build one faiss index over (raw) vectors, normalising chunk by chunk.

    With ``chain`` (trained transforms) the index is an :class:`faiss.IndexPreTransform` that
    applies them to everything added and searched.
    """
    n, d = vectors.shape
    if kind in ("ivf", "ivfpq"):
        need = max(int(params["nlist"]), 2 ** int(params.get("pq_bits", 0)))
        if n < need:
            raise DataFileError(
                f"a {kind} index needs at least {need} vectors to train (nlist "
                f"{params['nlist']}), the store has {n}; use kind 'flat' (exact) for so few"
            )
    idx = _new_index(kind, d, n, params)
    if chain:
        faiss = _faiss()
        inner = idx
        idx = faiss.IndexPreTransform(inner)
        for t in reversed(chain):
            idx.prepend_transform(t)
        idx.referenced_objects = [inner, *chain]  # keep the Python owners alive
    if kind in ("ivf", "ivfpq"):
        ntrain = min(n, max(64 * int(params["nlist"]), 256 * 39 if kind == "ivfpq" else 0))
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, ntrain, replace=False))
        yield IndexProgress(f"train {kind}", 0, ntrain)
        idx.train(l2_normalise(np.asarray(vectors[sample])))
    for s in _chunks(n):
        idx.add(l2_normalise(vectors[s:s + CHUNK]))
        yield IndexProgress(f"add {kind}", min(n, s + CHUNK), n)
    return idx


def _latency_ms(index: SimilarityIndex, queries: np.ndarray, k: int,
                n: int = 50) -> tuple[float, float]:
    """p50 and p95 of single-query search latency in milliseconds."""
    times = []
    for i in range(min(n, len(queries))):
        t0 = time.perf_counter()
        index.search(queries[i:i + 1], k)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def _tune(index: SimilarityIndex, queries: np.ndarray, rows: np.ndarray, truth: np.ndarray,
          k: int, target: float) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Grow the search parameter until recall@k reaches the target; returns the setting.

    HNSW grows ``efSearch``, IVF ``nprobe``; IVF-PQ grows ``nprobe`` at each re-rank depth
    (8, 16, 32, 64 x k candidates) in turn.
    """
    name, values = (("efSearch", tuple(EF_SEARCH)) if index.kind == "hnsw"
                    else ("nprobe", tuple(NPROBE)))
    values = tuple(int(v) for v in values)
    if name == "nprobe":
        values = tuple(v for v in values if v < index.params["nlist"]) + (index.params["nlist"],)
    else:
        values = tuple(v for v in values if v >= min(k, 16)) or (k,)
    outer = [{"rerank": r} for r in (RERANK, 16, 32, 64)] if index.kind == "ivfpq" else [{}]
    sweep = []
    best: tuple[float, dict[str, Any]] = (-1.0, {name: values[0], **outer[0]})
    for extra in outer:
        for v in values:
            setting = {name: v, **extra}
            index.set_params(**setting)
            _, found = index.search(queries, k + 1)
            r = recall_at_k(found, truth, k, exclude=rows)
            sweep.append({**setting, "recall": r})
            if r > best[0] + 1e-9:
                best = (r, setting)
            if r >= target:
                return setting, r, sweep
    return best[1], best[0], sweep


def build_index(vectors: np.ndarray, kind: str = "auto", *,
                threshold: int = DEFAULT_THRESHOLD, target_recall: float = DEFAULT_TARGET_RECALL,
                k: int = DEFAULT_K, n_queries: int = 500,
                latency_goal_ms: float = DEFAULT_LATENCY_GOAL_MS,
                memory_budget: int | None = None, seed: int = 0,
                candidates: tuple[str, ...] | None = None, whiten: str = "auto",
                ) -> Generator[IndexProgress, None, SimilarityIndex]:
    """Build the index for a set of vectors, choosing its kind by measured recall.

    Parameters
    ----------
    vectors : ndarray
        ``(n, dim)`` raw vectors (a memory map is fine; normalised chunk by chunk).
    kind : {"auto", "flat", "ivf", "hnsw", "ivfpq"}
        ``auto`` chooses as the module docstring says; any other is built and (if approximate)
        tuned to the target recall.
    threshold : int
        Below this many vectors ``auto`` is exact (``flat``).
    target_recall : float
        Recall@k against exact search that the approximate index must reach.
    k : int
        The k of the recall measurement (clamped below the count).
    n_queries : int
        Size of the held-out sample of the vectors used as queries.
    latency_goal_ms : float
        A candidate meeting the target within this p50 latency ends the search.
    memory_budget : int, optional
        Bytes the index may take (default half the physical memory); above it ``ivfpq``.
    seed : int
        Seed of the sample and of k-means.
    candidates : tuple of str, optional
        Approximate kinds to try (default ``("ivf", "hnsw")``).
    whiten : {"auto", "pca", "none"}
        PCA whitening (module docstring): ``auto`` from ``WHITEN_MIN`` vectors and 8 per
        dimension.

    Yields
    ------
    IndexProgress

    Returns
    -------
    SimilarityIndex
        With ``meta``: ``recall``, ``k``, ``p50_ms``, ``p95_ms``, ``tried`` (each candidate's
        sweep), ``build_seconds``.
    """
    if kind not in KINDS:
        raise SsaldError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0 < target_recall <= 1:
        raise SsaldError(f"target recall must be in (0, 1], got {target_recall}")
    t0 = time.perf_counter()
    n, d = int(vectors.shape[0]), int(vectors.shape[1])
    if n == 0:
        raise SsaldError("no vectors to index")
    if kind == "auto" and n < threshold:
        kind = "flat"
    use, why_not = _want_whitening(whiten, n, d)
    chain: list[Any] | None = None
    whitening: dict[str, Any] = {"kind": why_not}
    if use:
        yield IndexProgress("whitening", 0, 1)
        chain, whitening = _fit_whitening(vectors, seed)
        yield IndexProgress("whitening", 1, 1)
    if kind == "flat":
        idx = yield from _build_kind("flat", vectors, {}, seed, chain)
        out = SimilarityIndex(idx, "flat", {})
        out.meta.update({"recall": 1.0, "k": min(k, n), "threshold": threshold,
                         "whitening": whitening,
                         "choice": f"exact: {n} vectors, below the threshold {threshold}"
                         if n < threshold else "exact (asked for)",
                         "build_seconds": time.perf_counter() - t0})
        return out
    if n < 2:
        raise SsaldError(f"an approximate index needs at least 2 vectors, got {n}")
    kq = max(1, min(k, n - 1))
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    queries = l2_normalise(np.asarray(vectors[rows]))
    yield IndexProgress("ground truth", 0, n)
    _, truth = exact_neighbours(vectors, queries, kq + 1,
                                transform=lambda x: _apply_chain(chain or [], x))
    budget = memory_budget if memory_budget is not None else _memory_total() // 2
    if kind == "auto":
        order = list(candidates or ("ivf", "hnsw"))
        need = {"ivf": n * (d * 4 + 8), "hnsw": n * (d * 4 + HNSW_M * 2 * 4 * 1.1 + 8),
                "ivfpq": n * (_pq_m(d) + 8)}
        order = [c for c in order if need.get(c, 0) <= budget] or ["ivfpq"]
    else:
        order = [kind]
    tried: list[dict[str, Any]] = []
    built: list[tuple[SimilarityIndex, float, float, float]] = []
    for cand in order:
        tb = time.perf_counter()
        params = _default_params(cand, n, d)
        faiss_index = yield from _build_kind(cand, vectors, params, seed, chain)
        si = SimilarityIndex(faiss_index, cand, params, vectors=vectors if cand == "ivfpq"
                             else None)
        yield IndexProgress(f"tune {cand}", 0, 1)
        best, recall, sweep = _tune(si, queries, rows, truth, kq,
                                    min(1.0, target_recall + TUNE_MARGIN))
        si.set_params(**best)
        p50, p95 = _latency_ms(si, queries, kq)
        tried.append({"kind": cand, "params": dict(si.params), "recall": recall, "p50_ms": p50,
                      "p95_ms": p95, "build_seconds": time.perf_counter() - tb, "sweep": sweep})
        yield IndexProgress(f"tune {cand}", 1, 1)
        built.append((si, recall, p50, p95))
        if recall >= target_recall and p50 <= latency_goal_ms:
            break
    if kind == "auto" and not any(b[1] >= target_recall and b[2] <= latency_goal_ms
                                  for b in built) and n * d * 4 <= budget:
        # no approximate index meets the goal (e.g. random Gaussian data): exact search
        # is a candidate too, and wins if it is faster than an approximate index at the target
        tb = time.perf_counter()
        flat_index = yield from _build_kind("flat", vectors, {}, seed, chain)
        flat = SimilarityIndex(flat_index, "flat", {})
        p50, p95 = _latency_ms(flat, queries, kq)
        tried.append({"kind": "flat", "params": {}, "recall": 1.0, "p50_ms": p50, "p95_ms": p95,
                      "build_seconds": time.perf_counter() - tb, "sweep": []})
        built.append((flat, 1.0, p50, p95))
    meeting = [b for b in built if b[1] >= target_recall]
    if meeting:
        chosen = min(meeting, key=lambda b: b[2])
        why = (f"{chosen[0].kind}: recall@{kq} {chosen[1]:.3f} >= {target_recall} at p50 "
               f"{chosen[2]:.2f} ms")
    else:
        chosen = max(built, key=lambda b: b[1])
        why = (f"{chosen[0].kind}: the best recall@{kq} {chosen[1]:.3f}, BELOW the target "
               f"{target_recall}")
    si, recall, p50, p95 = chosen
    for other in built:  # free the losers
        if other[0] is not si:
            other[0].index = None
    si.meta.update({"recall": recall, "k": kq, "p50_ms": p50, "p95_ms": p95,
                    "target_recall": target_recall, "threshold": threshold, "choice": why,
                    "n_queries": int(len(rows)), "tried": tried, "whitening": whitening,
                    "build_seconds": time.perf_counter() - t0})
    if recall < target_recall:
        si.meta["warning"] = why
    return si


def run_build(gen: Generator[IndexProgress, None, SimilarityIndex],
              callback: Any = None) -> SimilarityIndex:
    """Drive a build generator to the end; ``callback(progress)`` after each step."""
    return run_to_end(gen, callback)


# --------------------------------------------------------------------------------------------
# Beside an embedding store
# --------------------------------------------------------------------------------------------


def _store(store: Any) -> Any:
    from ssald_desktop.core.embeddings import EmbeddingStore

    return store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, create=False)


def build_store_index(store: Any, kind: str = "auto", **kwargs: Any
                      ) -> Generator[IndexProgress, None, SimilarityIndex]:
    """Build the index of an embedding store and save it in the store's folder.

    Parameters
    ----------
    store : EmbeddingStore or path-like
        The store.
    kind : str
        See :func:`build_index`.
    **kwargs
        Passed to :func:`build_index`.

    Returns
    -------
    SimilarityIndex
        Saved as ``STORE/index.faiss`` + ``STORE/index.json``.
    """
    st = _store(store)
    if st.count == 0:
        raise DataFileError(f"{st.path}: the embedding store is empty; encode images first")
    vectors = st.vectors()
    si = yield from build_index(vectors, kind, **kwargs)
    si.meta.update({"encoder_id": st.encoder_id, "normspec_digest": st.normspec_digest,
                    "store_rewrites": st.rewrites, "store": str(st.path)})
    si.save(st.path)
    return si


def open_index(store: Any, verify: bool = True) -> SimilarityIndex:
    """Load the index saved beside a store and check that it belongs to it.

    Raises
    ------
    DataFileError
        No index, a truncated/corrupt file, an index of another encoder or NormSpec, or one
        that is stale (the store has fewer vectors or rewrote some since).
    """
    st = _store(store)
    si = SimilarityIndex.load(st.path, verify=verify, vectors=st.vectors())
    where = si.path
    if si.meta.get("encoder_id") != st.encoder_id or si.meta.get(
            "normspec_digest") != st.normspec_digest:
        raise DataFileError(f"{where}: built from vectors of encoder "
                            f"{str(si.meta.get('encoder_id'))[:12]} / NormSpec "
                            f"{si.meta.get('normspec_digest')}, but the store holds encoder "
                            f"{str(st.encoder_id)[:12]} / NormSpec {st.normspec_digest}; rebuild "
                            "it with `ssald-cli index`")
    if si.count > st.count or si.meta.get("store_rewrites", 0) != st.rewrites:
        raise DataFileError(f"{where}: out of date with the store ({si.count} indexed, "
                            f"{st.count} stored, vectors rewritten since); rebuild it with "
                            "`ssald-cli index`")
    return si


def update_index(store: Any, index: SimilarityIndex | None = None,
                 save: bool = True) -> tuple[SimilarityIndex, int]:
    """Add the store's new vectors to its index (incremental), or rebuild when it must.

    A rebuild (``kind="auto"``) happens when there is no usable index, when vectors were
    rewritten in place, or when an exact index has grown past its threshold.

    Returns
    -------
    (SimilarityIndex, int)
        The index and how many vectors were added (or indexed by a rebuild).
    """
    st = _store(store)
    if index is None:
        try:
            index = SimilarityIndex.load(st.path, vectors=st.vectors())
        except DataFileError:
            index = None
    stale = (index is None or index.meta.get("store_rewrites", 0) != st.rewrites
             or index.meta.get("encoder_id") != st.encoder_id or index.count > st.count
             or (index.kind == "flat" and st.count >= index.meta.get("threshold",
                                                                     DEFAULT_THRESHOLD)))
    if stale:
        si = run_build(build_store_index(st, "auto"))
        return si, si.count
    assert index is not None
    added = st.count - index.count
    if added:
        vectors = st.vectors()
        index.add(np.asarray(vectors[index.count:]))
        index.vectors = vectors
        if save:
            index.save(st.path)
    return index, added
