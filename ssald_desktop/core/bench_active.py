"""The discovery benchmark behind ``ssald-cli bench active-learning`` (issue 6, "Show").

On labelled images (Galaxy Zoo 2), a rare class is simulated: for each seed the pool is every
negative plus enough randomly drawn positives that positives are a fraction ``P`` of the pool.
One further positive, not in the pool, is the query image. A policy labels ``budget`` pool
images in batches of ``batch`` with a simulated oracle (the catalogue label). Reported per
seed and on average:

- positives found, recall = found / positives in the pool,
- labelling efficiency ``LE = found / labels used``, enrichment ``LE / P``,
- ``GM = sqrt(LE * recall)`` (the geometric mean used by Walmsley et al. / Stein et al. for
  active search; the seed paper's authors later published 0.31-0.33 on ImageNet classes),
- the labels needed to reach 50% and 90% recall (``None``, printed "not reached").

Baselines: ``random`` (label random pool images) and ``nearest`` (label the pool in order of
cosine similarity to the query, no learning). ``ceiling`` is not a policy but a yardstick for
the representation: a class-balanced logistic regression trained on *all* labels (about 4,000
for GZ2; 5-fold cross-validated out-of-fold scores) on the features the loop sees, and its
recall within its top ``budget`` images of each pool. A loop that starts from one image and
sees only ``budget`` labels cannot be expected to beat it.

Embeddings come from the encoder (default: the bundled one) through
:func:`ssald_desktop.core.embeddings.encode` into a cache folder, so a rerun encodes nothing.

Evidence features (``evidence_weight``, ``--evidence-features``): the two-nuclei test of
:func:`ssald_desktop.core.nuclei.find_nuclei` runs on the luminance of each image (colour
JPEGs have no calibrated band; the PSF width is measured on the image) and gives
:data:`EVIDENCE_FEATURES`: the number of nuclei (0 not measurable, 1, 2), the pair confidence
(of the best second-nucleus candidate), its separation in PSF FWHM and ``log10`` of the flux
ratio (0 where there is no candidate). They are cached per image in a JSON file of the cache
folder (keyed by file size and modification time), computed only for the images the seeds
use, standardised over those images, multiplied by ``evidence_weight / sqrt(4)`` and appended
to the pool's whitened unit vectors before normalising again (:class:`EvidencePool`), so the
head, the similarity and the diversity terms of every policy see them. Whitening is left to
the embedding part: whitening the concatenation would give the four features the weight of
four embedding directions whatever ``evidence_weight`` says.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.active import DEFAULT_WHITEN, ActiveLearner, ActiveLearningError, Pool
from ssald_desktop.core.bench_search import DEFAULT_ENCODER, _cache_dir, _machine, _read_labels
from ssald_desktop.core.errors import DataFileError

__all__ = [
    "BASELINES",
    "EVIDENCE_FEATURES",
    "EvidencePool",
    "evidence_features",
    "active_summary",
    "bench_active_learning",
    "curve_metrics",
    "simulate",
]

BASELINES = ("random", "nearest")
UNLABELLED = ("unlabeled", "unlabelled", "")


def curve_metrics(hits: np.ndarray, n_positive: int, prevalence: float) -> dict[str, Any]:
    """Figures of one run from its hit sequence (1 where the i-th label was a positive).

    Parameters
    ----------
    hits : ndarray
        0/1 per label, in labelling order.
    n_positive : int
        Positives in the pool.
    prevalence : float
        Their fraction of the pool.
    """
    hits = np.asarray(hits, np.int64)
    used = len(hits)
    cum = np.cumsum(hits)
    found = int(cum[-1]) if used else 0
    recall = found / n_positive if n_positive else math.nan
    le = found / used if used else 0.0

    def reach(frac: float) -> int | None:
        need = math.ceil(frac * n_positive - 1e-9)
        idx = np.flatnonzero(cum >= need)
        return int(idx[0] + 1) if len(idx) else None

    return {"labels_used": used, "found": found, "recall": recall, "le": le,
            "enrichment": le / prevalence if prevalence else math.nan,
            "gm": math.sqrt(le * recall), "labels_to_50": reach(0.5), "labels_to_90": reach(0.9),
            "recall_curve": [round(float(c) / n_positive, 4) for c in cum]}


def simulate(pool: Pool, truth: np.ndarray, query: np.ndarray, policy: str, budget: int,
             batch: int, seed: int, raw: np.ndarray | None = None, **learner_kwargs: Any
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """Label ``budget`` pool objects with a policy and the oracle ``truth``; the hit sequence.

    Parameters
    ----------
    pool : Pool
        The pool.
    truth : ndarray of bool
        The oracle: True where a pool object is a positive.
    query : ndarray
        The query image's embedding (not in the pool).
    policy : str
        ``random``, ``nearest`` or an :data:`~ssald_desktop.core.active.POLICIES` entry.
    budget, batch : int
        Labels in all and per round.
    seed : int
        Random seed.
    raw : ndarray, optional
        The pool's raw embeddings, for ``nearest`` (plain cosine, as the product's search);
        default: the pool's own unit vectors.
    **learner_kwargs
        Passed to :class:`~ssald_desktop.core.active.ActiveLearner`.

    Returns
    -------
    hits : ndarray
        0/1 per label in labelling order.
    info : dict
        Seconds per round (mean, max), samplers used and how many positives each found.
    """
    if budget > len(pool):
        raise ActiveLearningError(f"budget {budget} is larger than the pool ({len(pool)})")
    if policy == "nearest":
        if raw is None:
            order = np.argsort(-(pool.unit @ pool.transform(query)[0]), kind="stable")
        else:
            u = raw / np.linalg.norm(raw, axis=1, keepdims=True)
            q = query[:raw.shape[1]]  # the embedding part (a query may carry features too)
            order = np.argsort(-(u @ (q / np.linalg.norm(q))), kind="stable")
        return truth[order[:budget]].astype(np.int64), {}
    learner = ActiveLearner(pool, positive=("positive",), policy=policy, seed=seed,
                            **learner_kwargs)
    labels: dict[str, str] = {}
    hits: list[int] = []
    times: list[float] = []
    by_sampler: dict[str, list[int]] = {}
    rnd = 0
    while len(hits) < budget:
        n = min(batch, budget - len(hits))
        t0 = time.perf_counter()
        cands = learner.suggest(labels, n, query_vectors=query[None, :], round_no=rnd)
        times.append(time.perf_counter() - t0)
        for c in cands:
            hit = bool(truth[c.row])
            labels[c.object_id] = "positive" if hit else "negative"
            hits.append(int(hit))
            s = by_sampler.setdefault(c.sampler, [0, 0])
            s[0] += 1
            s[1] += int(hit)
        rnd += 1
    return np.asarray(hits, np.int64), {
        "round_seconds_mean": float(np.mean(times)), "round_seconds_max": float(np.max(times)),
        "samplers": {k: {"picked": v[0], "positives": v[1]} for k, v in by_sampler.items()}}


#: Names of the evidence features, in column order.
EVIDENCE_FEATURES = ("n_nuclei", "pair_confidence", "separation_fwhm", "log_flux_ratio")


def _nuclei_features(path: Path) -> list[float]:
    """The :data:`EVIDENCE_FEATURES` of one image (luminance; PSF measured on the image)."""
    from ssald_desktop.core.errors import SsaldError
    from ssald_desktop.core.nuclei import find_nuclei, load_image

    try:
        res = find_nuclei(load_image(path))
    except SsaldError:
        return [0.0, 0.0, 0.0, 0.0]
    n = {"pair": 2.0, "single": 1.0, "point source": 1.0}.get(res.status, 0.0)
    sep = 0.0
    if res.separation_px is not None and res.psf_fwhm_px:
        sep = float(res.separation_px) / float(res.psf_fwhm_px)
    ratio = res.flux_ratio
    log_ratio = 0.0
    if ratio is not None and math.isfinite(ratio) and ratio > 0:
        log_ratio = min(3.0, math.log10(ratio))
    return [n, float(res.confidence), min(sep, 50.0), log_ratio]


def evidence_features(images_dir: str | Path, ids: list[str], cache_file: str | Path,
                      progress: Any = None) -> np.ndarray:
    """The :data:`EVIDENCE_FEATURES` of the images ``ids`` (file stems) of a folder, cached.

    Parameters
    ----------
    images_dir : path-like
        The image folder.
    ids : list of str
        Images to describe (file stem = id).
    cache_file : path-like
        JSON cache (id -> size, mtime, features); missing or changed images are computed and
        the cache is rewritten every 100 images, so an interrupted run resumes.
    progress : callable, optional
        ``progress(message)`` every 100 images computed.

    Returns
    -------
    ndarray
        ``(len(ids), 4)`` float64.

    Raises
    ------
    DataFileError
        An id with no image file in the folder.
    """
    import json
    import os

    images_dir, cache_file = Path(images_dir), Path(cache_file)
    by_stem = {q.stem: q for q in images_dir.iterdir() if q.is_file()}
    missing = [i for i in ids if i not in by_stem]
    if missing:
        raise DataFileError(f"{images_dir}: no image file for id(s) {missing[:5]}")
    cache: dict[str, Any] = {}
    if cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}

    def save() -> None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)

    out = np.zeros((len(ids), len(EVIDENCE_FEATURES)), np.float64)
    done = 0
    t0 = time.perf_counter()
    for k, i in enumerate(ids):
        st = by_stem[i].stat()
        key = [st.st_size, st.st_mtime_ns]
        hit = cache.get(i)
        if hit is None or hit.get("key") != key:
            hit = {"key": key, "features": _nuclei_features(by_stem[i])}
            cache[i] = hit
            done += 1
            if done % 100 == 0:
                save()
                if progress is not None:
                    progress(f"evidence features: {done} images computed "
                             f"({(time.perf_counter() - t0) / done:.2f} s each)")
        out[k] = hit["features"]
    if done:
        save()
    return out


class EvidencePool(Pool):
    """A pool whose unit vectors carry evidence features beside the (whitened) embedding.

    Vectors given to :meth:`transform` are ``[embedding, features]`` rows; the embedding part
    goes through :meth:`Pool.transform` (normalised, whitened), the features are standardised
    with the pool's mean and standard deviation, multiplied by ``weight / sqrt(k)`` and
    appended, and the row is normalised again.

    Parameters
    ----------
    ids, embeddings, encoder_id, whiten
        As :class:`~ssald_desktop.core.active.Pool`.
    features : ndarray
        ``(N, k)`` evidence features of the pool's objects.
    weight : float
        Length of the feature part relative to the unit embedding part (for a row one
        standard deviation from the mean in every feature).
    """

    def __init__(self, ids: list[str], embeddings: np.ndarray, features: np.ndarray,
                 encoder_id: str = "unknown", whiten: float | None = None,
                 weight: float = 1.0):
        f = np.asarray(features, np.float64)
        e = np.asarray(embeddings, np.float32)
        if f.ndim != 2 or len(f) != len(e):
            raise ActiveLearningError(f"{len(f)} feature rows for {len(e)} pool vectors")
        if not (math.isfinite(weight) and weight >= 0):
            raise ActiveLearningError(f"evidence weight must be >= 0, got {weight!r}")
        self.n_embed = e.shape[1]
        self.f_mean = f.mean(axis=0)
        sd = f.std(axis=0)
        self.f_scale = np.where(sd > 0, sd, 1.0)
        self.weight = float(weight)
        super().__init__(ids, e, encoder_id, whiten=whiten)
        self.unit = self.transform(np.concatenate([e, f.astype(np.float32)], axis=1))

    def transform(self, vectors: Any) -> np.ndarray:
        """``[embedding, features]`` rows to the pool's unit vectors (see the class)."""
        v = np.atleast_2d(np.asarray(vectors, np.float32))
        emb = super().transform(v[:, :self.n_embed])
        if v.shape[1] == self.n_embed:  # called by Pool.__init__ on the embeddings alone
            return emb
        z = (v[:, self.n_embed:].astype(np.float64) - self.f_mean) / self.f_scale
        z *= self.weight / math.sqrt(z.shape[1])
        u = np.concatenate([emb, z.astype(np.float32)], axis=1)
        n = np.linalg.norm(u, axis=1, keepdims=True)
        return np.divide(u, n, out=np.zeros_like(u), where=n > 0)


def _ceiling(vectors: np.ndarray, y: np.ndarray, pools: list[np.ndarray], budget: int,
             whiten: float | None, unit: np.ndarray | None = None) -> dict[str, Any]:
    """Recall in the top ``budget`` of a head trained on all labels (out-of-fold, 5 folds).

    The head sees the features the loop sees (whitened the same way, over all labelled images).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    u = Pool([str(i) for i in range(len(vectors))], vectors, whiten=whiten).unit if unit is None \
        else unit
    p = cross_val_predict(LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced"),
                          u, y, cv=5, method="predict_proba")[:, 1]
    rec = [float(y[idx][np.argsort(-p[idx])[:budget]].sum() / y[idx].sum()) for idx in pools]
    from sklearn.metrics import roc_auc_score

    return {"recall_in_budget": float(np.mean(rec)), "per_seed": rec,
            "auc": float(roc_auc_score(y, p)),
            "what": "class-balanced logistic regression (C=10) on all labelled images (the "
                    "loop's features), 5-fold out-of-fold scores; recall of its top-budget "
                    "images in each seed's pool"}


def bench_active_learning(images_dir: str | Path, labels_csv: str | Path, positive: str,
                          prevalence: float = 0.02, budget: int = 200, batch: int = 20,
                          seeds: int = 5, encoder_path: str | Path | None = None, *,
                          policies: tuple[str, ...] = ("default",),
                          store_dir: str | Path | None = None, ceiling: bool = True,
                          progress: Any = None, first_seed: int = 0,
                          whiten: float | None = DEFAULT_WHITEN,
                          evidence_weight: float | None = None,
                          **learner_kwargs: Any) -> dict[str, Any]:
    """Run the discovery benchmark (see the module docstring).

    Parameters
    ----------
    images_dir, labels_csv : path-like
        Images (file stem = id) and a CSV with an id column and ``label``.
    positive : str
        The class to discover; every other label except "unlabeled" is a negative.
    prevalence : float
        Fraction of positives in the pool, in (0, 0.5].
    budget, batch : int
        Labels per run and per round.
    seeds : int
        Number of seeds (0, 1, ... ``seeds - 1``): pool draw, query and policy randomness.
    encoder_path : path-like, optional
        The exported encoder (default: the bundled one).
    policies : tuple of str
        Policies to run besides the baselines ``random`` and ``nearest``.
    store_dir : path-like, optional
        Embedding store (default: a cache folder per encoder and image folder).
    ceiling : bool
        Also compute the fully supervised ceiling.
    progress : callable, optional
        ``progress(message)`` after each run.
    first_seed : int
        Seeds run from ``first_seed`` (policies were designed on seeds 100-104, reported on
        0-4).
    whiten : float, optional
        Whiten the pool's embeddings (see :class:`~ssald_desktop.core.active.Pool`; None:
        plain L2-normalised embeddings).
    evidence_weight : float, optional
        Append the evidence features with this weight (see the module documentation and
        :class:`EvidencePool`); None (default) runs on the embeddings alone. The features are
        computed for the images of the seeds' pools and queries only; the ceiling is then
        computed over those images, with and without the features.
    **learner_kwargs
        Passed to :class:`~ssald_desktop.core.active.ActiveLearner`.

    Raises
    ------
    ActiveLearningError
        A prevalence, budget or batch out of range; too few positives or negatives.
    DataFileError
        Unreadable labels, no image of the positive class, a missing encoder.
    """
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, encoder_info, run_encode

    t_start = time.perf_counter()
    if not (isinstance(prevalence, float | int) and 0 < prevalence <= 0.5):
        raise ActiveLearningError(f"prevalence must be in (0, 0.5], got {prevalence!r}")
    for name, v in (("budget", budget), ("batch", batch), ("seeds", seeds)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ActiveLearningError(f"{name} must be a positive integer, got {v!r}")
    images_dir = Path(images_dir)
    enc = Path(encoder_path) if encoder_path else DEFAULT_ENCODER
    if not enc.exists():
        raise DataFileError(f"{enc}: no such encoder (give --encoder PATH)")
    info = encoder_info(enc)
    labels_all = _read_labels(labels_csv)
    if store_dir is None:  # the same cache folder as bench retrieval: one encoding for both
        key = hashlib.sha256(str(images_dir.resolve()).encode()).hexdigest()[:10]
        store_dir = _cache_dir() / "bench-retrieval" / f"{info.encoder_id[:12]}-{key}"
    t1 = time.perf_counter()
    summary = run_encode(encode(images_dir, store_dir, enc, fmt="images", batch_size=128))
    encode_s = time.perf_counter() - t1
    st = EmbeddingStore(store_dir, create=False)
    ids = np.array(st.ids(), dtype=object)
    lab = np.array([labels_all.get(i, "") for i in ids], dtype=object)
    keep = np.array([v not in UNLABELLED for v in lab])
    ids, lab = ids[keep], lab[keep]
    vectors = np.asarray(st.vectors())[keep]
    is_pos = lab == positive
    pos_rows, neg_rows = np.flatnonzero(is_pos), np.flatnonzero(~is_pos)
    if len(pos_rows) < 2:
        raise DataFileError(f"{labels_csv}: fewer than two images of {images_dir} are labelled "
                            f"{positive!r}")
    if len(neg_rows) == 0:
        raise DataFileError(f"{labels_csv}: no labelled image other than {positive!r}")
    n_pos = max(1, round(prevalence * len(neg_rows) / (1 - prevalence)))
    if n_pos + 1 > len(pos_rows):
        raise ActiveLearningError(
            f"prevalence {prevalence} needs {n_pos} positives plus a query, but only "
            f"{len(pos_rows)} images are labelled {positive!r}")
    if budget > len(neg_rows) + n_pos:
        raise ActiveLearningError(f"budget {budget} is larger than the pool "
                                  f"({len(neg_rows) + n_pos} images)")
    all_policies = [*BASELINES, *[p for p in policies if p not in BASELINES]]
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in all_policies}
    draws = []
    for seed in range(int(first_seed), int(first_seed) + int(seeds)):
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(pos_rows)
        draws.append((seed, chosen[0], np.sort(np.r_[neg_rows, chosen[1:n_pos + 1]])))
    pools = [rows for _, _, rows in draws]
    feats: np.ndarray | None = None
    used = np.unique(np.concatenate([np.r_[rows, q] for _, q, rows in draws]))
    evidence_info: dict[str, Any] | None = None
    if evidence_weight is not None:
        if not (math.isfinite(evidence_weight) and evidence_weight >= 0):
            raise ActiveLearningError(f"evidence weight must be >= 0, got {evidence_weight!r}")
        key = hashlib.sha256(str(images_dir.resolve()).encode()).hexdigest()[:10]
        cache_file = _cache_dir() / "bench-evidence" / f"nuclei-{key}.json"
        t2 = time.perf_counter()
        feats = np.zeros((len(ids), len(EVIDENCE_FEATURES)))
        feats[used] = evidence_features(images_dir, [str(i) for i in ids[used]], cache_file,
                                        progress)
        evidence_info = {"features": list(EVIDENCE_FEATURES), "weight": evidence_weight,
                         "images": int(len(used)), "cache": str(cache_file),
                         "seconds": time.perf_counter() - t2,
                         "mean_positive": feats[used][is_pos[used]].mean(axis=0).tolist(),
                         "mean_negative": feats[used][~is_pos[used]].mean(axis=0).tolist()}
    for seed, query_row, rows in draws:
        if feats is None:
            pool: Pool = Pool(list(ids[rows]), vectors[rows], info.encoder_id, whiten=whiten)
            query = vectors[query_row].astype(np.float32)
        else:
            pool = EvidencePool(list(ids[rows]), vectors[rows], feats[rows], info.encoder_id,
                                whiten=whiten, weight=float(evidence_weight or 0.0))
            query = np.r_[vectors[query_row], feats[query_row]].astype(np.float32)
        truth = is_pos[rows]
        p_actual = n_pos / len(rows)
        for policy in all_policies:
            t0 = time.perf_counter()
            if policy == "random":
                order = np.random.default_rng(10_000 + seed).permutation(len(rows))[:budget]
                hits = truth[order].astype(np.int64)
                extra: dict[str, Any] = {}
            else:
                hits, extra = simulate(pool, truth, query, policy, budget, batch, seed,
                                       raw=vectors[rows], **learner_kwargs)
            m = curve_metrics(hits, n_pos, p_actual)
            m.update({"seed": seed, "query": str(ids[query_row]),
                      "seconds": time.perf_counter() - t0, **extra})
            runs[policy].append(m)
            if progress is not None:
                progress(f"seed {seed} {policy}: found {m['found']}/{n_pos} "
                         f"(recall {m['recall']:.3f}) in {m['seconds']:.1f} s")
    table = {p: _mean(r) for p, r in runs.items()}
    out: dict[str, Any] = {
        "benchmark": "active-learning", "images_dir": str(images_dir),
        "labels": str(labels_csv), "positive": positive, "prevalence_requested": prevalence,
        "pool_size": int(len(neg_rows) + n_pos), "positives_in_pool": int(n_pos),
        "prevalence": n_pos / (len(neg_rows) + n_pos), "budget": int(budget),
        "batch": int(batch), "seeds": int(seeds),
        "query": "one further positive, not in the pool, drawn per seed",
        "policies": all_policies, "mean": table, "runs": runs,
        "learner": {k: v for k, v in learner_kwargs.items()}, "whiten": whiten,
        "encoder": str(enc), "encoder_id": info.encoder_id, "store": str(store_dir),
        "encoded_now": summary["encoded"] + summary["rewritten"], "encode_seconds": encode_s,
        "machine": _machine(),
    }
    if evidence_info is not None:
        out["evidence"] = evidence_info
    if ceiling and feats is None:
        y = is_pos.astype(np.int64)
        out["ceiling"] = _ceiling(vectors, y, pools, int(budget), whiten)
    elif ceiling and feats is not None:  # over the images that have features
        where = {int(r): k for k, r in enumerate(used)}
        sub_pools = [np.array([where[int(r)] for r in rows]) for rows in pools]
        y = is_pos[used].astype(np.int64)
        ep = EvidencePool([str(i) for i in range(len(used))], vectors[used], feats[used],
                          whiten=whiten, weight=float(evidence_weight or 0.0))
        out["ceiling"] = _ceiling(vectors[used], y, sub_pools, int(budget), whiten, ep.unit)
        out["ceiling"]["what"] += f" (over the {len(used)} images with evidence features)"
        out["ceiling_embedding_only"] = _ceiling(vectors[used], y, sub_pools, int(budget), whiten)
    out["seconds"] = time.perf_counter() - t_start
    return out


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("found", "recall", "le", "enrichment", "gm"):
        vals = [r[key] for r in runs]
        out[key] = float(np.mean(vals))
        out[key + "_std"] = float(np.std(vals))
    for key in ("labels_to_50", "labels_to_90"):
        vals = [r[key] for r in runs]
        reached = [v for v in vals if v is not None]
        out[key] = float(np.mean(reached)) if len(reached) == len(vals) else None
        out[key + "_reached"] = f"{len(reached)}/{len(vals)}"
    if runs and "round_seconds_mean" in runs[0]:
        out["round_seconds_mean"] = float(np.mean([r["round_seconds_mean"] for r in runs]))
        out["round_seconds_max"] = float(np.max([r["round_seconds_max"] for r in runs]))
    return out


def _fmt_reach(v: float | None, reached: str) -> str:
    return f"{v:.0f}" if v is not None else f"not reached ({reached})"


def active_summary(r: dict[str, Any]) -> str:
    """A table for the terminal: one line per policy (means over seeds)."""
    lines = [f"active learning: {r['positive']!r} at prevalence {r['prevalence']:.4f} "
             f"({r['positives_in_pool']} positives in a pool of {r['pool_size']}); budget "
             f"{r['budget']} in batches of {r['batch']}; {r['seeds']} seeds; encoder "
             f"{Path(r['encoder']).name} ({str(r['encoder_id'])[:12]})",
             f"{'policy':<12} {'found':>7} {'recall':>7} {'LE':>6} {'enrich':>7} {'GM':>6} "
             f"{'to 50%':>18} {'to 90%':>18}"]
    for p in r["policies"]:
        m = r["mean"][p]
        lines.append(
            f"{p:<12} {m['found']:>7.1f} {m['recall']:>7.3f} {m['le']:>6.3f} "
            f"{m['enrichment']:>7.2f} {m['gm']:>6.3f} "
            f"{_fmt_reach(m['labels_to_50'], m['labels_to_50_reached']):>18} "
            f"{_fmt_reach(m['labels_to_90'], m['labels_to_90_reached']):>18}")
    if "evidence" in r:
        e = r["evidence"]
        lines.insert(1, f"with evidence features {', '.join(e['features'])} (weight "
                        f"{e['weight']:g}) on {e['images']} images")
    if "ceiling" in r:
        c = r["ceiling"]
        lines.append(f"ceiling (head trained on all labels, out-of-fold): recall "
                     f"{c['recall_in_budget']:.3f} within {r['budget']} labels (AUC "
                     f"{c['auc']:.3f})")
    if "ceiling_embedding_only" in r:
        c = r["ceiling_embedding_only"]
        lines.append(f"ceiling without the evidence features, same images: recall "
                     f"{c['recall_in_budget']:.3f} (AUC {c['auc']:.3f})")
    return "\n".join(lines)
