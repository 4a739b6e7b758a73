"""Active learning for a rare class: samplers, the in-loop classifier head, the fine-tune trigger.

The astronomer labels a batch, the head is refitted (well under a second on 10^4-10^5
embeddings), and the samplers propose the next batch. Every proposal is a :class:`Candidate`
that carries its score, the sampler that picked it, a short reason and the model version (the
encoder id plus a digest of the labels the head saw), so the review panel can say why a galaxy
is on screen.

Samplers (each scores every pool row; labelled rows are never proposed)
---------------------------------------------------------------------------
- ``exploit``: the head's probability of the positive class, i.e. greedy active search
  (Garnett et al. 2012; Jiang et al. 2017 show that greedy exploitation is hard to beat when
  the goal is to *find* positives, not to learn a classifier).
- ``uncertainty``: the margin ``1 - |2p - 1|`` of the head (Lewis & Gale 1994; Scheffer et al.
  2001).
- ``committee``: disagreement (standard deviation of the positive probability) of heads fitted
  on bootstrap resamples of the labels (query by committee, Seung et al. 1992; bagging as in
  Abe & Mamitsuka 1998).
- ``similarity``: the largest cosine similarity to any known positive (query images included).
- ``propagation``: label spreading on the pool's k-nearest-neighbour graph (Zhou et al. 2004),
  seeded with the known positives (+1) and the known negatives (-1).
- ``diversity``: k-center greedy (Sener & Savarese 2018) over the pool, away from everything
  already labelled.

The in-loop head is a class-balanced logistic regression (scikit-learn) on the pool's
L2-normalised, PCA-whitened embeddings. At a prevalence of 1e-4 an unlabelled galaxy is a
negative with probability 0.9999, so the head also sees a random sample of the unlabelled pool
as *presumed negatives* with a small weight (positive-unlabelled learning, Elkan & Noto 2008).
That is what makes a cold start from one query image possible: one positive against a few
thousand presumed negatives.

The default policy (``"default"``) is designed for a class at ~1e-4, where the goal is to
*find* positives: each batch is mostly exploitation of the PU head, whose score is the rank of
its positive probability among the unlabelled pool, on PCA-whitened embeddings (the pool's own
label-free statistics, :class:`Pool`), with a near-duplicate filter (a candidate whose cosine
to one already in the batch exceeds ``dup_threshold`` waits for a later batch), and a small
share (``explore``, 10%) of uncertainty sampling once negatives exist, so a greedy head that has
locked onto one kind of positive still sees its boundary. With only query images (no labels
yet) the head is positives versus presumed negatives, i.e. a cold start. Similarity to the
positives and label spreading can be mixed in (``weights``); on the GZ2 benchmark (tuning
seeds 100-119, not the reported seeds 0-4) they lowered recall, as did diversity as the
exploration sampler, while whitening raised it from 0.136 to 0.198 (see
:mod:`ssald_desktop.core.bench_active`).

Fine-tuning trigger
-------------------
:func:`should_finetune` decides from plain inputs (the current labels and the number of labels
added since the last fine-tune); :func:`launch_finetune` starts ``python -m model.finetune`` in
a background process (argument list, no shell) that writes a head ``.keras`` and a JSON card
to a folder (see :mod:`model.finetune`). Head mode (the default) also scores every stored
object with the new head. Encoder mode fine-tunes the encoder's top layers too, on the
labelled objects' pixels, read back from the store's sources of whatever kind (the miner's HDF5
shards, image files; :class:`SourceReader`) by the readers that encoded the store and exported
to the process (:func:`export_pixels`); the new encoder means the store must be re-embedded.

A finished fine-tune takes part in ranking (:func:`load_finetuned`, :class:`FinetunedHead`):
while every label it learnt still stands, its P(positive) is rank-averaged with the refitted
head's in the exploitation score and joins the committee, weighted by the share of the current
labels it saw, and the candidates it helped pick carry its version (``.../ft:head-<hex>``).
The refitted head stays: it sees every label at once, and the presumed negatives of the
unlabelled pool, which the fine-tuned head (labelled objects only) does not. A label it learnt
that was undone or changed class makes it stale, and the refitted head ranks alone until the
next fine-tune.

TensorFlow is never imported at module import: the head in the loop is scikit-learn; Keras runs
in the fine-tuning process, and in :func:`load_finetuned` only with ``compute=True``.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.index import WHITEN_SHRINK

__all__ = [
    "DEFAULT_IGNORE",
    "DEFAULT_NEGATIVE",
    "DEFAULT_POSITIVE",
    "DEFAULT_WHITEN",
    "POLICIES",
    "SAMPLERS",
    "ActiveLearner",
    "ActiveLearningError",
    "Candidate",
    "FinetuneJob",
    "FinetuneMismatchError",
    "FinetunedHead",
    "Head",
    "Pool",
    "SourceReader",
    "committee_probabilities",
    "committee_scores",
    "fit_head",
    "kcenter_greedy",
    "export_pixels",
    "launch_finetune",
    "load_finetuned",
    "propagation_scores",
    "should_finetune",
    "similarity_scores",
    "split_labels",
    "uncertainty_scores",
]

#: Shrinkage of the pool's PCA whitening (a fraction of the largest variance), see :class:`Pool`.
DEFAULT_WHITEN = WHITEN_SHRINK  # the same whitening as the search index's

#: Labels of the label store that count as positives, negatives, or are left out of training.
DEFAULT_POSITIVE = ("DAGN candidate", "confirmed DAGN")
DEFAULT_NEGATIVE = ("not DAGN",)
DEFAULT_IGNORE = ("unsure",)

SAMPLERS = ("exploit", "uncertainty", "committee", "similarity", "propagation", "diversity",
            "random")
#: Policies: one sampler alone, the ``naive`` baseline of the issue, or the mixed default.
POLICIES = (*SAMPLERS, "naive", "default")


class ActiveLearningError(SsaldError):
    """Bad input to the samplers: an empty pool, unknown object ids, an impossible budget."""


@dataclass(frozen=True)
class Candidate:
    """One proposed object, with why it was proposed.

    Attributes
    ----------
    object_id : str
        The object's id in the pool (embedding store).
    row : int
        Its row in the pool.
    score : float
        The picking sampler's score (higher is more wanted by that sampler).
    sampler : str
        Which sampler picked it (``exploit``, ``similarity``, ...).
    reason : str
        A short human reason for the review card.
    model_version : str
        The head/encoder that proposed it (``enc:<12 hex>/head:<8 hex>``).
    probability : float
        The head's positive probability (NaN when no head was fitted).
    """

    object_id: str
    row: int
    score: float
    sampler: str
    reason: str
    model_version: str
    probability: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    y = np.array(x, dtype=np.float32, copy=True)
    n = np.linalg.norm(y, axis=1, keepdims=True)
    np.divide(y, n, out=y, where=n > 0)
    return y


class Pool:
    """The objects a sampler may propose: ids and L2-normalised embeddings.

    Parameters
    ----------
    ids : sequence of str
        Object ids, one per row, unique.
    vectors : array-like
        ``(N, d)`` embeddings (raw; normalised here).
    encoder_id : str
        Identity of the encoder that made them (part of every model version).
    whiten : float, optional
        If given, PCA-whiten the normalised embeddings of the pool before normalising them
        again (label-free, from the pool itself): every principal direction gets unit variance,
        with ``whiten`` times the largest variance added as shrinkage so that noise directions
        are not blown up (Kessy, Lewin & Strimmer 2018). Cosine similarity then no longer
        follows the few directions that carry most of the variance.

    Raises
    ------
    ActiveLearningError
        An empty pool, a shape mismatch, duplicate ids or non-finite vectors.
    """

    def __init__(self, ids: Sequence[str], vectors: Any, encoder_id: str = "unknown",
                 whiten: float | None = None):
        v = np.asarray(vectors, dtype=np.float32)
        ids = [str(i) for i in ids]
        if v.ndim != 2 or len(v) == 0 or v.shape[1] == 0:
            raise ActiveLearningError(f"the pool is empty or not (N, d): shape {v.shape}")
        if len(ids) != len(v):
            raise ActiveLearningError(f"{len(ids)} ids for {len(v)} pool vectors")
        if not np.isfinite(v).all():
            bad = ids[int(np.flatnonzero(~np.isfinite(v).all(axis=1))[0])]
            raise ActiveLearningError(f"pool vector of object {bad!r} is not finite")
        self.ids = ids
        self._row = {i: r for r, i in enumerate(ids)}
        if len(self._row) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ActiveLearningError(f"object id {dup!r} occurs twice in the pool")
        self.whiten = whiten
        self._mean: np.ndarray | None = None
        self._proj: np.ndarray | None = None
        if whiten is not None:
            u = _unit(v).astype(np.float64)
            self._mean = u.mean(axis=0)
            cov = np.cov(u - self._mean, rowvar=False)
            val, vec = np.linalg.eigh(cov)
            val = np.maximum(val, 0.0)
            self._proj = (vec / np.sqrt(val + float(whiten) * val.max())).astype(np.float32)
        self.unit = self.transform(v)
        self.encoder_id = str(encoder_id)
        self._knn: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def transform(self, vectors: Any) -> np.ndarray:
        """Raw embeddings to the pool's unit vectors (whitened first when the pool is)."""
        u = _unit(np.atleast_2d(np.asarray(vectors, np.float32)))
        if self._proj is None or self._mean is None:
            return u
        return _unit((u - self._mean.astype(np.float32)) @ self._proj)

    def __len__(self) -> int:
        """Number of objects."""
        return len(self.ids)

    @classmethod
    def from_store(cls, store: Any, ids: Sequence[str] | None = None,
                   whiten: float | None = DEFAULT_WHITEN) -> Pool:
        """The pool of an embedding store (all its objects, or only ``ids``), whitened.

        Raises
        ------
        ActiveLearningError
            An id that the store does not hold.
        """
        from ssald_desktop.core.embeddings import EmbeddingStore

        st = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, create=False)
        all_ids = st.ids()
        vec = np.asarray(st.vectors())
        if ids is not None:
            where = {i: r for r, i in enumerate(all_ids)}
            missing = [i for i in ids if i not in where]
            if missing:
                raise ActiveLearningError(f"{len(missing)} id(s) not in the embedding store "
                                          f"{st.path}: {missing[:5]}")
            rows = np.array([where[i] for i in ids], np.int64)
            return cls([str(i) for i in ids], vec[rows], st.encoder_id or "unknown", whiten)
        return cls(all_ids, vec, st.encoder_id or "unknown", whiten)

    def rows(self, ids: Iterable[str], what: str = "object") -> np.ndarray:
        """Rows of ids; unknown ids are an error that names them."""
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise ActiveLearningError(f"{len(missing)} {what} id(s) not in the pool: "
                                      f"{missing[:5]}")
        return np.array([self._row[i] for i in ids], np.int64)

    def knn(self, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The exact k-nearest-neighbour graph (cosine), self excluded: ``(sims, rows)``.

        Computed once per ``k`` with faiss (:func:`ssald_desktop.core.index.exact_neighbours`);
        O(N^2 d), about a second for 10^4 objects.
        """
        k = max(1, min(int(k), len(self) - 1))
        if k not in self._knn:
            from ssald_desktop.core.index import exact_neighbours

            s, r = exact_neighbours(self.unit, self.unit, k + 1)
            # drop self (the first column, or wherever an exact duplicate put it)
            keep = r != np.arange(len(self))[:, None]
            s2 = np.empty((len(self), k), np.float32)
            r2 = np.empty((len(self), k), np.int64)
            for i in range(len(self)):
                ri, si = r[i][keep[i]][:k], s[i][keep[i]][:k]
                r2[i], s2[i] = ri, si
            self._knn[k] = (s2, r2)
        return self._knn[k]


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def split_labels(pool: Pool, labels: Mapping[str, str], positive: Iterable[str],
                 ignore: Iterable[str] = DEFAULT_IGNORE, *, strict: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the positives, the negatives and the ignored (e.g. "unsure") labelled objects.

    Every label that is neither positive nor ignored counts as a negative.

    Parameters
    ----------
    pool : Pool
        The pool.
    labels : mapping
        ``object_id -> label`` (the label store's ``current()``).
    positive, ignore : iterable of str
        Labels meaning positive, and labels left out of training (but never proposed again).
    strict : bool
        Unknown ids are an error; with False they are skipped (labels of objects outside the
        pool, e.g. from another survey).

    Raises
    ------
    ActiveLearningError
        With ``strict``, ids not in the pool.
    """
    pos_set, ign_set = {str(p) for p in positive}, {str(i) for i in ignore}
    items = [(str(k), str(v)) for k, v in labels.items()]
    if strict:
        pool.rows([k for k, _ in items], "labelled")
    else:
        items = [(k, v) for k, v in items if k in pool._row]
    pos = pool.rows([k for k, v in items if v in pos_set])
    ign = pool.rows([k for k, v in items if v in ign_set and v not in pos_set])
    neg = pool.rows([k for k, v in items if v not in pos_set and v not in ign_set])
    return pos, neg, ign


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray)
                 else str(p).encode())
        h.update(b"|")
    return h.hexdigest()[:8]


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------


@dataclass
class Head:
    """A fitted in-loop head: scikit-learn logistic regression on normalised embeddings.

    Attributes
    ----------
    model : sklearn.linear_model.LogisticRegression
        The fitted model (class 1 = positive).
    version : str
        ``enc:<encoder id>/head:<digest of the training rows and labels>``.
    n_positive, n_negative, n_presumed : int
        What it was trained on.
    """

    model: Any
    version: str
    n_positive: int
    n_negative: int
    n_presumed: int
    info: dict[str, Any] = field(default_factory=dict)

    def proba(self, unit: np.ndarray) -> np.ndarray:
        """Positive-class probability of normalised embeddings."""
        return np.asarray(self.model.predict_proba(unit)[:, 1], np.float64)


def fit_head(pool: Pool, pos: np.ndarray, neg: np.ndarray, *, presumed_negatives: int = 2000,
             presumed_weight: float = 0.2, exclude: np.ndarray | None = None, c: float = 1.0,
             extra_positive: np.ndarray | None = None, seed: int = 0) -> Head:
    """Fit the class-balanced logistic head, with presumed negatives (PU learning).

    Positives and negatives weigh as two equal halves (class balancing); presumed negatives
    (a random sample of unlabelled rows, Elkan & Noto 2008) are negatives whose weight is
    ``presumed_weight`` times a labelled negative's, so true labels dominate as they arrive.

    Parameters
    ----------
    pool : Pool
        The pool.
    pos, neg : ndarray of int
        Labelled positive and negative rows.
    presumed_negatives : int
        How many unlabelled rows to sample as presumed negatives (0: none; then labelled
        negatives are required).
    presumed_weight : float
        Their relative weight.
    exclude : ndarray of int, optional
        Rows never used as presumed negatives (e.g. "unsure").
    c : float
        Inverse L2 regularisation strength.
    extra_positive : ndarray, optional
        Normalised positive vectors from outside the pool (query images).
    seed : int
        Random seed of the presumed-negative sample.

    Raises
    ------
    ActiveLearningError
        No positive, or no negative and no presumed negatives.
    """
    from sklearn.linear_model import LogisticRegression

    extra = (np.zeros((0, pool.unit.shape[1]), np.float32) if extra_positive is None
             else np.asarray(extra_positive, np.float32))
    n_pos = len(pos) + len(extra)
    if n_pos == 0:
        raise ActiveLearningError("the head needs at least one positive (a query image or a "
                                  "positive label)")
    taken = np.zeros(len(pool), bool)
    taken[pos] = taken[neg] = True
    if exclude is not None:
        taken[exclude] = True
    free = np.flatnonzero(~taken)
    rng = np.random.default_rng(seed)
    presumed = (rng.choice(free, min(presumed_negatives, len(free)), replace=False)
                if presumed_negatives > 0 and len(free) else np.zeros(0, np.int64))
    if len(neg) + len(presumed) == 0:
        raise ActiveLearningError("the head needs negatives: label some, or allow presumed "
                                  "negatives")
    x = np.concatenate([pool.unit[pos], extra, pool.unit[neg], pool.unit[presumed]])
    y = np.r_[np.ones(n_pos), np.zeros(len(neg) + len(presumed))]
    w_neg = np.r_[np.ones(len(neg)), np.full(len(presumed), presumed_weight)]
    # the two classes weigh the same in total
    w = np.r_[np.full(n_pos, 1.0 / n_pos), w_neg / w_neg.sum()] * len(y) / 2
    model = LogisticRegression(C=c, max_iter=1000)
    model.fit(x, y, sample_weight=w)
    version = (f"enc:{pool.encoder_id[:12]}/head:"
               f"{_digest(np.sort(pos), np.sort(neg), len(extra), presumed_negatives, c, seed)}")
    return Head(model, version, n_pos, len(neg), len(presumed),
                {"c": c, "presumed_weight": presumed_weight})


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def uncertainty_scores(p: np.ndarray) -> np.ndarray:
    """Margin uncertainty ``1 - |2p - 1|`` of a binary head (1 at p = 0.5; Scheffer et al. 2001)."""
    return 1.0 - np.abs(2.0 * np.asarray(p, np.float64) - 1.0)


def committee_probabilities(pool: Pool, pos: np.ndarray, neg: np.ndarray, *,
                            members: int = 5, seed: int = 0, **head_kwargs: Any) -> np.ndarray:
    """Positive probabilities ``(members, N)`` of heads fitted on bootstrap resamples (bagging).

    Each member is fitted on a bootstrap resample of the labelled rows and its own sample of
    presumed negatives (Breiman 1996).
    """
    rng = np.random.default_rng(seed)
    probs = []
    for m in range(members):
        bp = rng.choice(pos, len(pos)) if len(pos) else pos
        bn = rng.choice(neg, len(neg)) if len(neg) else neg
        if len(bp) == 0 and head_kwargs.get("extra_positive") is None:
            bp = pos
        head = fit_head(pool, np.unique(bp), np.unique(bn), seed=seed + 1000 + m,
                        **head_kwargs)
        probs.append(head.proba(pool.unit))
    return np.stack(probs)


def committee_scores(pool: Pool, pos: np.ndarray, neg: np.ndarray, *, members: int = 5,
                     seed: int = 0, **head_kwargs: Any) -> np.ndarray:
    """Query-by-committee disagreement: std of the positive probability over bootstrap heads.

    See :func:`committee_probabilities` (Seung et al. 1992; Abe & Mamitsuka 1998).
    """
    return np.std(committee_probabilities(pool, pos, neg, members=members, seed=seed,
                                          **head_kwargs), axis=0)


def similarity_scores(pool: Pool, positives: np.ndarray) -> np.ndarray:
    """Largest cosine similarity of every pool row to any of ``positives`` (unit vectors)."""
    q = np.asarray(positives, np.float32)
    if q.ndim != 2 or len(q) == 0:
        raise ActiveLearningError("similarity needs at least one positive vector")
    best = np.full(len(pool), -np.inf, np.float32)
    for s in range(0, len(q), 256):
        best = np.maximum(best, (pool.unit @ q[s:s + 256].T).max(axis=1))
    return best.astype(np.float64)


def propagation_scores(pool: Pool, pos: np.ndarray, neg: np.ndarray, *, k: int = 10,
                       alpha: float = 0.9, iterations: int = 30,
                       extra_seed_rows: np.ndarray | None = None) -> np.ndarray:
    """Label spreading on the pool's kNN graph (Zhou et al. 2004, "local and global consistency").

    ``F <- alpha S F + (1 - alpha) Y`` with ``S = D^-1/2 W D^-1/2``, ``W`` the symmetrised kNN
    graph with cosine weights (clipped at 0), ``Y`` +1 on positives and -1 on negatives (each
    class normalised to unit total so that many negatives do not drown a few positives).

    Returns
    -------
    ndarray
        ``F`` per row (higher: closer in the graph to positives than to negatives).
    """
    from scipy import sparse

    n = len(pool)
    sims, nbr = pool.knn(k)
    w = sparse.csr_matrix((np.clip(sims.ravel(), 0.0, None).astype(np.float64),
                           (np.repeat(np.arange(n), nbr.shape[1]), nbr.ravel())), shape=(n, n))
    w = w.maximum(w.T)
    d = np.asarray(w.sum(axis=1)).ravel()
    dinv = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    s = sparse.diags(dinv) @ w @ sparse.diags(dinv)
    y = np.zeros(n)
    seeds = pos if extra_seed_rows is None else np.r_[pos, extra_seed_rows]
    if len(seeds):
        y[seeds] += 1.0 / len(seeds)
    if len(neg):
        y[neg] -= 1.0 / len(neg)
    f = y.copy()
    for _ in range(iterations):
        f = alpha * (s @ f) + (1 - alpha) * y
    return f


def kcenter_greedy(unit: np.ndarray, candidates: np.ndarray, n: int,
                   anchors: np.ndarray | None = None) -> np.ndarray:
    """Pick ``n`` candidates, each the farthest from the anchors and the picks so far.

    The k-center greedy core-set selection of Sener & Savarese (2018), with cosine distance.

    Parameters
    ----------
    unit : ndarray
        Normalised embeddings of the pool.
    candidates : ndarray of int
        Rows allowed to be picked.
    n : int
        How many.
    anchors : ndarray of int, optional
        Rows already covered (labelled).
    """
    cand = np.asarray(candidates, np.int64)
    n = min(int(n), len(cand))
    if n <= 0:
        return np.zeros(0, np.int64)
    x = unit[cand]
    if anchors is not None and len(anchors):
        dist = np.full(len(cand), np.inf)
        for s in range(0, len(anchors), 1024):
            a = unit[anchors[s:s + 1024]]
            dist = np.minimum(dist, 1.0 - (x @ a.T).max(axis=1))
        first = int(np.argmax(dist))
    else:
        first = 0
        dist = np.full(len(cand), np.inf)
    picks = [first]
    dist = np.minimum(dist, 1.0 - x @ x[first])
    for _ in range(n - 1):
        j = int(np.argmax(dist))
        picks.append(j)
        dist = np.minimum(dist, 1.0 - x @ x[j])
    return cand[np.array(picks)]


def _ranknorm(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ranks of ``x[rows]`` scaled to (0, 1], as a full-length array (0 elsewhere)."""
    out = np.zeros(len(x))
    order = np.argsort(np.argsort(x[rows], kind="stable"), kind="stable")
    out[rows] = (order + 1) / max(1, len(rows))
    return out


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class ActiveLearner:
    """Proposes the next batch of candidates from the current labels.

    Parameters
    ----------
    pool : Pool
        The objects to choose from.
    positive : sequence of str
        Labels that mean positive (the rare class).
    ignore : sequence of str
        Labels left out of training ("unsure"); such objects are not proposed again.
    policy : str
        One of :data:`POLICIES`.
    explore : float
        Share of a ``default`` batch given to ``explore_sampler`` (the rest exploits).
    explore_sampler : str
        ``uncertainty`` (default), ``committee``, ``diversity`` or ``random``.
    weights : tuple of float
        Weights of the head probability, the similarity to the positives and label
        spreading in the ``default`` policy's exploitation score (each rank-normalised over
        the unlabelled pool).
    dup_threshold : float
        Cosine similarity above which a candidate counts as a near-duplicate of one already in
        the batch and is skipped (``default`` and ``exploit`` style policies).
    bagging : int
        If above 1, the head's probability is the mean of this many bootstrap heads
        (bagging, Breiman 1996) instead of one head.
    presumed_negatives, presumed_weight, c : see :func:`fit_head`.
    k : int
        Neighbours of the propagation graph.
    committee : int
        Members of the ``committee`` sampler.
    seed : int
        Random seed.
    finetuned : FinetunedHead, optional
        A finished background fine-tune (:func:`load_finetuned`). While it matches the labels
        (same encoder, every label it learnt unchanged: :meth:`FinetunedHead.stale_reason`),
        its scores join the exploitation score (rank-averaged with the refitted head's) and
        the committee (one more member), and the candidates so picked carry its version
        (``.../ft:head-<12 hex>``); otherwise the refitted head works alone.
    finetuned_weight : float
        Its weight relative to the refitted head, scaled by the share of the current labels
        it was trained on (it fades as labels it has not seen arrive, until the next one).
    """

    pool: Pool
    positive: Sequence[str] = DEFAULT_POSITIVE
    ignore: Sequence[str] = DEFAULT_IGNORE
    policy: str = "default"
    explore: float = 0.1
    explore_sampler: str = "uncertainty"
    weights: tuple[float, float, float] = (1.0, 0.0, 0.0)
    bagging: int = 0
    dup_threshold: float = 0.995
    presumed_negatives: int = 2000
    presumed_weight: float = 0.2
    c: float = 1.0
    k: int = 10
    committee: int = 5
    seed: int = 0
    finetuned: FinetunedHead | None = None
    finetuned_weight: float = 1.0
    last_head: Head | None = field(default=None, init=False, repr=False)
    #: What became of :attr:`finetuned` in the last :meth:`suggest` (used, with which weight,
    #: or why not).
    last_finetuned: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ActiveLearningError(f"unknown policy {self.policy!r}; choose one of "
                                      f"{', '.join(POLICIES)}")
        if not 0.0 <= self.explore <= 1.0:
            raise ActiveLearningError(f"explore must be in [0, 1], got {self.explore}")
        if self.explore_sampler not in ("committee", "uncertainty", "diversity", "random"):
            raise ActiveLearningError(f"unknown exploration sampler {self.explore_sampler!r}")
        if len(self.weights) != 3 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ActiveLearningError(f"weights must be three non-negative numbers, not all 0: "
                                      f"{self.weights}")
        if not self.finetuned_weight >= 0:
            raise ActiveLearningError(f"finetuned_weight must be >= 0, got "
                                      f"{self.finetuned_weight}")

    # -- public -----------------------------------------------------------------------------
    def suggest(self, labels: Mapping[str, str], n: int, *, queries: Sequence[str] = (),
                query_vectors: np.ndarray | None = None, round_no: int = 0
                ) -> list[Candidate]:
        """The next ``n`` candidates, best first.

        Parameters
        ----------
        labels : mapping
            ``object_id -> label`` for every labelled pool object.
        n : int
            Batch size.
        queries : sequence of str
            Pool ids of the query images (positives even if not labelled).
        query_vectors : ndarray, optional
            Embeddings of query images from outside the pool.
        round_no : int
            Round number (varies the random choices between rounds).

        Raises
        ------
        ActiveLearningError
            ``n`` not positive or larger than the unlabelled pool; unknown ids; no positive at
            all for a policy that needs one.
        """
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ActiveLearningError(f"batch size must be a positive integer, got {n!r}")
        pos, neg, ign = split_labels(self.pool, labels, self.positive, self.ignore)
        qrows = self.pool.rows(queries, "query")
        qvec = (np.zeros((0, self.pool.unit.shape[1]), np.float32) if query_vectors is None
                else np.atleast_2d(np.asarray(query_vectors, np.float32)))
        if qvec.shape[1] != self.pool.unit.shape[1]:
            raise ActiveLearningError(f"query vectors of dimension {qvec.shape[1]}, the pool's "
                                      f"are {self.pool.unit.shape[1]}")
        qvec = self.pool.transform(qvec) if len(qvec) else qvec
        labelled = np.zeros(len(self.pool), bool)
        labelled[pos] = labelled[neg] = labelled[ign] = True
        labelled[qrows] = True
        free = np.flatnonzero(~labelled)
        if n > len(free):
            raise ActiveLearningError(f"asked for {n} candidates but only {len(free)} pool "
                                      "objects are unlabelled")
        pos_all = np.unique(np.r_[pos, qrows]).astype(np.int64)
        ctx = _Context(self, pos_all, neg, ign, qvec, free, round_no)
        ctx.ft_p, ctx.ft_w, self.last_finetuned = self._finetuned_scores(labels, len(pos)
                                                                         + len(neg))
        if ctx.ft_p is not None and self.finetuned is not None:
            ctx.ft_version = self.finetuned.version
        picks = ctx.run(self.policy, int(n))
        self.last_head = ctx.head
        return picks

    def _finetuned_scores(self, labels: Mapping[str, str], n_labelled: int
                          ) -> tuple[np.ndarray | None, float, str]:
        """The fine-tuned head's P(positive) per pool row, its weight, and a note."""
        ft = self.finetuned
        if ft is None:
            return None, 0.0, ""
        name = f"fine-tuned head {ft.version}"
        if ft.encoder_id != self.pool.encoder_id:
            return None, 0.0, (f"{name} not used: it scores encoder {ft.encoder_id[:12]}'s "
                               f"embeddings, the pool is encoder {self.pool.encoder_id[:12]}'s")
        why = ft.stale_reason(labels, self.positive, self.ignore)
        if why:
            return None, 0.0, f"{name} not used: {why}"
        if ft.ids == self.pool.ids:
            q = np.asarray(ft.proba, np.float64)
        else:
            where = {i: r for r, i in enumerate(ft.ids)}
            q = np.array([ft.proba[where[i]] if i in where else np.nan for i in self.pool.ids],
                         np.float64)
        seen = sum(1 for i in ft.trained if i in self.pool._row)
        w = self.finetuned_weight * min(1.0, seen / max(1, n_labelled))
        if w <= 0:
            return None, 0.0, f"{name} not used: weight 0"
        return q, w, f"{name} used with weight {w:.2f} ({seen} of {n_labelled} labels seen)"


@dataclass
class _Context:
    """One call of :meth:`ActiveLearner.suggest`: scores computed once, shared by samplers."""

    al: ActiveLearner
    pos: np.ndarray
    neg: np.ndarray
    ign: np.ndarray
    qvec: np.ndarray
    free: np.ndarray
    round_no: int
    head: Head | None = None
    _p: np.ndarray | None = None
    _version: str = ""
    ft_p: np.ndarray | None = None
    ft_w: float = 0.0
    ft_version: str = ""

    @property
    def has_positive(self) -> bool:
        return len(self.pos) + len(self.qvec) > 0

    def _need_positive(self, what: str) -> None:
        if not self.has_positive:
            raise ActiveLearningError(f"{what} needs at least one positive: give a query image "
                                      "or label a positive")

    @property
    def seed(self) -> int:
        return self.al.seed * 1009 + self.round_no

    def head_kwargs(self) -> dict[str, Any]:
        return {"presumed_negatives": self.al.presumed_negatives,
                "presumed_weight": self.al.presumed_weight, "c": self.al.c,
                "exclude": self.ign, "extra_positive": self.qvec if len(self.qvec) else None}

    def proba(self) -> np.ndarray:
        if self._p is None:
            self._need_positive("the classifier head")
            self.head = fit_head(self.al.pool, self.pos, self.neg, seed=self.seed,
                                 **self.head_kwargs())
            self._p = self.head.proba(self.al.pool.unit)
            if self.al.bagging > 1 and len(self.pos) + len(self.neg) > 1:
                self._p = committee_probabilities(
                    self.al.pool, self.pos, self.neg, members=self.al.bagging,
                    seed=self.seed + 7, **self.head_kwargs()).mean(axis=0)
            self._version = self.head.version
        return self._p

    @property
    def version(self) -> str:
        if not self._version:
            self._version = (f"enc:{self.al.pool.encoder_id[:12]}/head:none-"
                             f"{_digest(np.sort(self.pos), np.sort(self.neg))}")
        return self._version

    @property
    def version_ft(self) -> str:
        """The version of candidates whose score the fine-tuned head took part in."""
        return f"{self.version}/ft:{self.ft_version}" if self.ft_p is not None else self.version

    def ft_rank(self) -> np.ndarray:
        """The fine-tuned head's P(positive), rank-normalised over the free rows."""
        assert self.ft_p is not None
        return _ranknorm(np.where(np.isnan(self.ft_p), -np.inf, self.ft_p), self.free)

    def positive_vectors(self) -> np.ndarray:
        return np.concatenate([self.al.pool.unit[self.pos], self.qvec])

    def propagation(self) -> np.ndarray:
        self._need_positive("label propagation")
        f = propagation_scores(self.al.pool, self.pos, self.neg, k=self.al.k)
        if len(self.qvec):  # outside queries seed through their nearest pool rows
            near = np.argsort(-similarity_scores(self.al.pool, self.qvec))[:self.al.k]
            f = f + propagation_scores(self.al.pool, near, np.zeros(0, np.int64), k=self.al.k)
        return f

    # -- selection --------------------------------------------------------------------------
    def _take(self, scores: np.ndarray, n: int, taken: list[int], dedup: bool) -> list[int]:
        """Best-scoring free rows not yet taken, skipping near-duplicates of the batch."""
        order = self.free[np.argsort(-scores[self.free], kind="stable")]
        chosen: list[int] = []
        unit = self.al.pool.unit
        have = set(taken)
        batch = [*taken]
        for r in order:
            if len(chosen) >= n:
                break
            r = int(r)
            if r in have:
                continue
            if dedup and batch and float((unit[batch] @ unit[r]).max()) > self.al.dup_threshold:
                continue
            chosen.append(r)
            batch.append(r)
            have.add(r)
        if len(chosen) < n:  # everything left was a near-duplicate: fill anyway
            for r in order:
                if len(chosen) >= n:
                    break
                if int(r) not in have:
                    chosen.append(int(r))
                    have.add(int(r))
        return chosen

    def _cands(self, rows: list[int], scores: np.ndarray, sampler: str, reason: Any,
               version: str | None = None) -> list[Candidate]:
        p = self._p
        v = self.version if version is None else version
        return [Candidate(self.al.pool.ids[r], r, float(scores[r]), sampler,
                          reason(r) if callable(reason) else str(reason), v,
                          math.nan if p is None else float(p[r])) for r in rows]

    def _nearest_positive(self, r: int) -> str:
        pv = self.positive_vectors()
        if len(pv) == 0:
            return ""
        sims = pv @ self.al.pool.unit[r]
        j = int(np.argmax(sims))
        name = (self.al.pool.ids[int(self.pos[j])] if j < len(self.pos)
                else f"query image {j - len(self.pos) + 1}")
        return f"; nearest positive {name} (cos {float(sims[j]):.2f})"

    def single(self, sampler: str, n: int, taken: list[int]) -> list[Candidate]:
        al = self.al
        if sampler == "random":
            rng = np.random.default_rng(self.seed)
            avail = np.setdiff1d(self.free, np.asarray(taken, np.int64))
            rows = [int(r) for r in rng.choice(avail, n, replace=False)]
            return self._cands(rows, np.zeros(len(al.pool)), "random", "random draw")
        if sampler == "exploit":
            p = self.proba()
            if self.ft_p is not None:  # rank average of the refitted and fine-tuned heads
                q = self.ft_p
                e = (_ranknorm(p, self.free) + self.ft_w * self.ft_rank()) / (1 + self.ft_w)
                rows = self._take(e, n, taken, True)
                return self._cands(rows, e, "exploit", lambda r: (
                    f"rank score {e[r]:.3f}: head P(positive) {p[r]:.3f}, fine-tuned head "
                    f"{self.ft_version} P(positive) {q[r]:.3f}{self._nearest_positive(r)}"),
                    self.version_ft)
            rows = self._take(p, n, taken, True)
            return self._cands(rows, p, "exploit", lambda r: (
                f"head P(positive) = {p[r]:.3f}{self._nearest_positive(r)}"))
        if sampler == "uncertainty":
            p = self.proba()
            u = uncertainty_scores(p)
            rows = self._take(u, n, taken, True)
            return self._cands(rows, u, "uncertainty",
                               lambda r: f"head undecided: P(positive) = {p[r]:.3f}")
        if sampler == "committee":
            self.proba()
            members = committee_probabilities(al.pool, self.pos, self.neg,
                                              members=al.committee, seed=self.seed,
                                              **self.head_kwargs())
            what = f"{al.committee} bootstrap heads"
            if self.ft_p is not None:  # the fine-tuned head is one more member
                members = np.vstack([members, np.where(np.isnan(self.ft_p),
                                                       members.mean(axis=0), self.ft_p)])
                what += f" and the fine-tuned head {self.ft_version}"
            c = np.std(members, axis=0)
            rows = self._take(c, n, taken, True)
            return self._cands(rows, c, "committee", lambda r: (
                f"{what} disagree (std {c[r]:.3f})"), self.version_ft)
        if sampler == "similarity":
            self._need_positive("similarity")
            s = similarity_scores(al.pool, self.positive_vectors())
            rows = self._take(s, n, taken, True)
            return self._cands(rows, s, "similarity", lambda r: (
                f"cosine {s[r]:.3f} to a known positive{self._nearest_positive(r)}"))
        if sampler == "propagation":
            f = self.propagation()
            rows = self._take(f, n, taken, True)
            return self._cands(rows, f, "propagation", lambda r: (
                f"label spreading score {f[r]:.4f} on the {al.k}-NN graph"))
        if sampler == "diversity":
            labelled = np.r_[self.pos, self.neg, self.ign, np.asarray(taken, np.int64)]
            avail = np.setdiff1d(self.free, np.asarray(taken, np.int64))
            rows = [int(r) for r in kcenter_greedy(al.pool.unit, avail, n,
                                                   labelled.astype(np.int64))]
            d = np.zeros(len(al.pool))
            if len(labelled):
                d[rows] = 1.0 - (al.pool.unit[rows] @ al.pool.unit[labelled].T).max(axis=1)
            return self._cands(rows, d, "diversity", lambda r: (
                f"far from everything labelled (cosine distance {d[r]:.3f})"))
        raise ActiveLearningError(f"unknown sampler {sampler!r}")  # pragma: no cover

    def run(self, policy: str, n: int) -> list[Candidate]:
        if policy in SAMPLERS:
            return self.single(policy, n, [])
        if policy == "naive":  # the calibration loop: head top + neighbours of positives
            half = n // 2
            out = self.single("exploit", n - half, [])
            out += self.single("similarity", half, [c.row for c in out])
            return out
        return self._default(n)

    def _default(self, n: int) -> list[Candidate]:
        """The mixed policy for a rare class (see the module docstring)."""
        al = self.al
        self._need_positive("the default policy")
        w_head, w_sim, w_prop = al.weights
        p = self.proba()
        cons = np.zeros(len(al.pool))
        parts = []
        if w_head:
            cons += w_head * _ranknorm(p, self.free)
            parts.append(lambda r: f"head P(positive) {p[r]:.3f}")
        if w_sim:
            s = similarity_scores(al.pool, self.positive_vectors())
            cons += w_sim * _ranknorm(s, self.free)
            parts.append(lambda r: f"cosine to positives {s[r]:.3f}")
        if w_prop:
            f = self.propagation()
            cons += w_prop * _ranknorm(f, self.free)
            parts.append(lambda r: f"label spreading {f[r]:.4f}")
        w_ft = self.ft_w if self.ft_p is not None else 0.0
        if w_ft:
            q = self.ft_p
            assert q is not None
            cons += w_ft * self.ft_rank()
            parts.append(lambda r: f"fine-tuned head {self.ft_version} P(positive) {q[r]:.3f}")
        cons /= max(1e-12, w_head + w_sim + w_prop + w_ft)
        n_explore = int(math.floor(al.explore * n)) if len(self.neg) else 0
        rows = self._take(cons, n - n_explore, [], True)
        out = self._cands(rows, cons, "exploit", lambda r: (
            f"rank score {cons[r]:.3f}: " + ", ".join(part(r) for part in parts)
            + self._nearest_positive(r)), self.version_ft)
        if n_explore:
            out += self.single(al.explore_sampler, n_explore, rows)
        return out


# --------------------------------------------------------------------------------------------
# Fine-tuning trigger
# --------------------------------------------------------------------------------------------


def should_finetune(labels: Mapping[str, str], new_since_last: int, every: int, *,
                    positive: Iterable[str] = DEFAULT_POSITIVE,
                    ignore: Iterable[str] = DEFAULT_IGNORE, min_per_class: int = 1) -> bool:
    """Whether to start a fine-tune: ``every`` new labels since the last one and both classes.

    Parameters
    ----------
    labels : mapping
        ``object_id -> label`` (current labels).
    new_since_last : int
        Labels added since the last fine-tune.
    every : int
        The setting N ("fine-tune after N new labels"); 0 disables.
    positive, ignore : iterable of str
        As in :func:`split_labels`.
    min_per_class : int
        At least this many positives and negatives must exist.
    """
    if every < 0 or new_since_last < 0:
        raise ActiveLearningError(f"label counts must be >= 0 (every={every}, "
                                  f"new={new_since_last})")
    if every == 0 or new_since_last < every:
        return False
    pos_set, ign_set = set(positive), set(ignore)
    n_pos = sum(1 for v in labels.values() if v in pos_set)
    n_neg = sum(1 for v in labels.values() if v not in pos_set and v not in ign_set)
    return n_pos >= min_per_class and n_neg >= min_per_class


@dataclass
class FinetuneJob:
    """A running (or finished) background fine-tune."""

    process: subprocess.Popen[bytes]
    out_dir: Path
    args: list[str]
    log: Path
    started: float

    def poll(self) -> int | None:
        """Exit status, or None while running."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; returns the exit status."""
        return self.process.wait(timeout)

    def card(self) -> dict[str, Any]:
        """The JSON card the process wrote (after a successful end).

        Raises
        ------
        ActiveLearningError
            The process failed or wrote no card (the log's tail is in the message).
        """
        path = self.out_dir / "head.card.json"
        if self.process.poll() not in (0, None) or not path.exists():
            tail = self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""
            raise ActiveLearningError(f"fine-tune in {self.out_dir} failed (status "
                                      f"{self.process.poll()}): {tail}")
        return dict(json.loads(path.read_text()))


class SourceReader:
    """Reads stored objects' raw pixels back from their sources, as the store's encoding did.

    The store records, for every object, its ``source`` (a file, relative to the store folder
    for a bundled store) and ``item`` (its row in an HDF5 shard). The pixels are read by the
    very readers that encoded the store (:class:`~ssald_desktop.core.embeddings.H5Shards` with
    the store's ``image_key``; :func:`~ssald_desktop.core.embeddings.read_image` with its
    bands; :class:`~ssald_desktop.core.embeddings.TFRecordShards`, which decodes with
    TensorFlow), so they are the pixels its vectors were made from. One reader per source
    kind, chosen by the file's suffix (:attr:`KINDS`); another kind fits in as one more entry
    and method.

    Parameters
    ----------
    store : EmbeddingStore
        The store.
    """

    #: Source file suffix -> the method that reads such objects.
    KINDS: dict[str, str] = {".h5": "_read_h5", ".hdf5": "_read_h5", ".png": "_read_files",
                             ".jpg": "_read_files", ".jpeg": "_read_files",
                             ".tfrecord": "_read_tfrecord", ".tfrec": "_read_tfrecord",
                             ".tfrecords": "_read_tfrecord"}

    def __init__(self, store: Any):
        self.store = store
        self._shards: dict[str, Any] = {}

    def path_of(self, obj: Mapping[str, Any]) -> Path:
        """The object's source file, checked to exist and to be of a kind that can be read.

        Raises
        ------
        ActiveLearningError
            No source on disk (in-memory arrays), a missing file, or an unknown kind (all
            named).
        """
        source = str(obj.get("source") or "")
        if not source or source == "memory":
            raise ActiveLearningError(
                f"object {obj['id']!r} of {self.store.path} was encoded from images in memory "
                "(no source file), so the encoder cannot be fine-tuned on it")
        path = self.store.source_path(source)
        if path.suffix.lower() not in self.KINDS:
            raise ActiveLearningError(
                f"{path}: source of object {obj['id']!r} is a {path.suffix or 'suffix-less'} "
                f"file; the encoder can be fine-tuned on {', '.join(sorted(self.KINDS))} sources")
        if not path.is_file():
            raise ActiveLearningError(
                f"{path}: the source of object {obj['id']!r} is missing (the store "
                f"{self.store.path} was encoded from it); put it back, or re-embed the store "
                "from where the images are now")
        return path

    def read(self, objs: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
        """Raw ``(H, W, C)`` pixels of store objects (table rows), in order."""
        out: list[np.ndarray | None] = [None] * len(objs)
        groups: dict[str, list[int]] = {}
        paths = [self.path_of(o) for o in objs]
        for j, p in enumerate(paths):
            groups.setdefault(self.KINDS[p.suffix.lower()], []).append(j)
        for method, js in groups.items():
            got = getattr(self, method)([objs[j] for j in js], [paths[j] for j in js])
            for j, x in zip(js, got, strict=True):
                out[j] = x
        return [x for x in out if x is not None]

    def _read_files(self, objs: Sequence[Mapping[str, Any]], paths: Sequence[Path]
                    ) -> list[np.ndarray]:
        from ssald_desktop.core.embeddings import read_image

        bands = int(self.store.header.get("bands") or 3)
        return [read_image(p, bands) for p in paths]

    def _read_h5(self, objs: Sequence[Mapping[str, Any]], paths: Sequence[Path]
                 ) -> list[np.ndarray]:
        from ssald_desktop.core.embeddings import H5Shards

        return self._read_shards(objs, paths, H5Shards)

    def _read_tfrecord(self, objs: Sequence[Mapping[str, Any]], paths: Sequence[Path]
                       ) -> list[np.ndarray]:
        # decoded with TensorFlow (on embeddings' TF thread): in the GUI, export such a store
        # from the TensorFlow helper process
        from ssald_desktop.core.embeddings import TFRecordShards

        return self._read_shards(objs, paths, TFRecordShards)

    def _read_shards(self, objs: Sequence[Mapping[str, Any]], paths: Sequence[Path],
                     shard_class: Any) -> list[np.ndarray]:
        """Rows of the miner's shards, with the store's image key, checked to be the objects."""
        from ssald_desktop.core.embeddings import ItemRef, normspec_digest

        key = str(self.store.header.get("image_key") or "rgb")
        refs = []
        for o, p in zip(objs, paths, strict=True):
            shards = self._shards.get(str(p))
            if shards is None:
                shards = self._shards[str(p)] = shard_class(p, key)
                want = self.store.normspec_digest
                if want and want != "none" and normspec_digest(shards.normspec) != want:
                    raise ActiveLearningError(
                        f"{p}: its cutouts have NormSpec {normspec_digest(shards.normspec)}, "
                        f"the store {self.store.path} was encoded from NormSpec {want}")
            item = int(o["item"])
            have = shards.refs()
            if not 0 <= item < len(have) or have[item].id != str(o["id"]):
                found = have[item].id if 0 <= item < len(have) else "nothing"
                raise ActiveLearningError(
                    f"{p}: row {item} holds {found!r}, but the store {self.store.path} read "
                    f"object {o['id']!r} there; the shard changed since: re-embed the store")
            refs.append(ItemRef(str(o["id"]), math.nan, math.nan, have[item].source, item, ""))
        # one reader serves every shard of its kind: it opens each ref's own file
        return list(self._shards[str(paths[0])].read(refs)) if refs else []


def export_pixels(store: Any, rows: Sequence[int], path: str | Path,
                  batch_size: int = 256) -> int:
    """Write the raw pixels of some store objects to ``path`` for the fine-tuning process.

    The objects are read back from their sources with :class:`SourceReader` (the readers the
    store was encoded with), ``batch_size`` at a time, and appended to an HDF5 file in the
    layout :func:`model.finetune.read_pixels` reads (one dataset per distinct raw shape), so
    that memory holds one batch, never the store.

    Parameters
    ----------
    store : EmbeddingStore
        The store.
    rows : sequence of int
        Its rows to export, in the order of the training data.
    path : path-like
        The ``.h5`` file (replaced).
    batch_size : int
        Objects read per step.

    Returns
    -------
    int
        Objects written.

    Raises
    ------
    ActiveLearningError, DataFileError
        A missing or changed source, an unreadable image (named).
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    reader = SourceReader(store)
    shapes: dict[tuple[tuple[int, ...], str], int] = {}
    which = np.zeros(len(rows), np.int32)
    slot = np.zeros(len(rows), np.int32)
    ids: list[str] = []
    with h5py.File(tmp, "w") as h:
        h.attrs["format"] = "ssald-finetune-pixels"
        h.attrs["version"] = 1
        h.attrs["store"] = str(store.path)
        h.attrs["image_key"] = str(store.header.get("image_key") or "")
        h.attrs["row_order"] = str(store.header.get("row_order") or "")
        grp = h.create_group("shapes")
        for s in range(0, len(rows), batch_size):
            objs = store.objects(rows[s:s + batch_size])
            raw = reader.read(objs)
            ids += [str(o["id"]) for o in objs]
            by_key: dict[tuple[tuple[int, ...], str], list[int]] = {}
            for k, x in enumerate(raw):
                by_key.setdefault((tuple(x.shape), x.dtype.str), []).append(k)
            for key, ks in by_key.items():
                if key not in shapes:
                    shapes[key] = len(shapes)
                    grp.create_dataset(str(shapes[key]), shape=(0, *key[0]),
                                       maxshape=(None, *key[0]), dtype=np.dtype(key[1]),
                                       chunks=(1, *key[0]))
                ds = grp[str(shapes[key])]
                n0 = ds.shape[0]
                ds.resize(n0 + len(ks), axis=0)
                ds[n0:] = np.stack([raw[k] for k in ks])
                for j, k in enumerate(ks):
                    which[s + k], slot[s + k] = shapes[key], n0 + j
        h.create_dataset("ids", data=np.array(ids, dtype=h5py.string_dtype()))
        h.create_dataset("which", data=which)
        h.create_dataset("slot", data=slot)
    tmp.replace(path)
    return len(ids)


def _store_encoder(st: Any, encoder: str | Path | None) -> Any:
    """The encoder to fine-tune (default: the store's own, relative to the store), checked."""
    from ssald_desktop.core.embeddings import encoder_info
    from ssald_desktop.core.errors import DataFileError

    path = Path(str(encoder)) if encoder else None
    if path is None:
        recorded = st.header.get("encoder_path")
        if not recorded:
            raise ActiveLearningError(f"{st.path}: the store records no encoder; give one")
        path = st.source_path(str(recorded))
    if not path.is_file():
        raise ActiveLearningError(f"{path}: encoder not found (needed to fine-tune the encoder "
                                  f"of {st.path})")
    try:
        info = encoder_info(path)
    except DataFileError as exc:
        raise ActiveLearningError(str(exc)) from exc
    kind = (st.header.get("scaling") or {}).get("kind")
    if kind and info.scaling.get("kind") != kind or int(st.header.get("bands") or
                                                        info.bands) != info.bands:
        raise ActiveLearningError(
            f"{path}: the encoder takes {info.bands}-band {info.scaling.get('kind')} input, the "
            f"store {st.path} holds {st.header.get('bands')}-band {kind} images")
    return info


def launch_finetune(labels: Mapping[str, str], store: Any, out_dir: str | Path, *,
                    positive: Sequence[str] = DEFAULT_POSITIVE,
                    ignore: Sequence[str] = DEFAULT_IGNORE, mode: str = "head",
                    encoder: str | Path | None = None, epochs: int | None = None,
                    top_layers: int = 10, python: str | None = None) -> FinetuneJob:
    """Start ``python -m model.finetune`` in the background (argument list, no shell).

    The embeddings of the labelled objects are read from the embedding store and written with
    their labels to ``out_dir/train.npz``; the process fits the head on them (``mode="head"``,
    the default; it then also scores every stored object, ``pool_scores.npy``, for
    :func:`load_finetuned`) or fine-tunes the encoder's top ``top_layers`` weight layers with
    the head on the objects' pixels (``mode="encoder"``). For that the labelled objects' raw
    pixels are read back from the store's sources, whatever their kind (the miner's HDF5
    shards or image files; :class:`SourceReader`), and exported to ``out_dir/pixels.h5``
    (:func:`export_pixels`) one batch at a time; the process prepares them as the encoder's
    card says and checks that they give back the stored vectors before training. It writes
    ``head.keras`` and ``head.card.json`` (classes, counts, version; written last, so its
    presence means done), in encoder mode also ``encoder.keras`` with its model card, to
    ``out_dir``; its output goes to ``out_dir/finetune.log``.

    Parameters
    ----------
    labels : mapping
        ``object_id -> label`` (current labels); ids missing from the store are skipped.
    store : EmbeddingStore or path-like
        The embedding store of the pool.
    out_dir : path-like
        Output folder (created).
    positive, ignore : sequence of str
        Labels meaning positive, and labels left out.
    mode : {"head", "encoder"}
        What to train.
    encoder : path-like, optional
        The exported encoder (encoder mode; default the store's encoder, a relative path
        being relative to the store folder).
    epochs, top_layers : int
        Training settings.
    python : str, optional
        The interpreter (default: this one).

    Raises
    ------
    ActiveLearningError
        An unknown mode, no labels of one of the two classes among the store's objects; in
        encoder mode a missing encoder, or a labelled object whose source is missing, changed
        or not on disk (the message names the file).
    """
    from ssald_desktop.core.embeddings import VECTORS_FILE, EmbeddingStore

    if mode not in ("head", "encoder"):
        raise ActiveLearningError(f"fine-tune mode must be 'head' or 'encoder', got {mode!r}")
    st = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, create=False)
    pos_set, ign_set = {str(p) for p in positive}, {str(i) for i in ignore}
    rows, ids, orig = [], [], []
    for k, v in labels.items():
        if str(v) in ign_set:
            continue
        r = st.row_of(str(k))
        if r is not None:
            rows.append(r)
            ids.append(str(k))
            orig.append(str(v))
    y = ["positive" if v in pos_set else "negative" for v in orig]
    if "positive" not in y or "negative" not in y:
        raise ActiveLearningError(f"fine-tuning needs labels of both classes among the objects "
                                  f"of {st.path} (have {y.count('positive')} positive, "
                                  f"{y.count('negative')} other)")
    objs = st.objects(rows)
    sources = [str(st.source_path(o["source"])) if o["source"] else "" for o in objs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("head.card.json", "head.keras", "pool_scores.npy", "pixels.h5",
                  "encoder.keras", "encoder.card.json"):
        (out / stale).unlink(missing_ok=True)
    for stale_scores in out.glob("pool_scores-*.npy"):
        stale_scores.unlink()
    meta: dict[str, Any] = {
        "encoder_id": st.encoder_id, "positive": list(positive), "ignore": list(ignore),
        "store": str(st.path), "normspec": st.normspec,
        "pool": {"vectors": str((st.path / VECTORS_FILE).resolve()), "count": st.count,
                 "dim": st.dim, "rewrites": st.rewrites, "encoder_id": st.encoder_id}}
    if mode == "encoder":
        info = _store_encoder(st, encoder)
        encoder = info.path
        reader = SourceReader(st)
        for o in objs:  # every source first: a missing one fails now, before any reading
            reader.path_of(o)
        export_pixels(st, rows, out / "pixels.h5")
        meta["pixels"] = "pixels.h5"
        meta["encoder_path"] = info.path
    vec = np.asarray(st.vectors())[np.asarray(rows, np.int64)]
    np.savez(out / "train.npz", ids=np.array(ids), vectors=vec.astype(np.float32),
             labels=np.array(y), original=np.array(orig), sources=np.array(sources, dtype=str),
             meta=np.array(json.dumps(meta)))
    args = [python or sys.executable, "-m", "model.finetune", "--data", str(out / "train.npz"),
            "--out", str(out), "--mode", mode, "--top-layers", str(int(top_layers))]
    if epochs is not None:
        args += ["--epochs", str(int(epochs))]
    if mode == "encoder":
        args += ["--encoder", str(encoder)]
    log = out / "finetune.log"
    root = Path(__file__).resolve().parents[2]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(root))
    return FinetuneJob(proc, out, args, log, time.time())


# --------------------------------------------------------------------------------------------
# Using a finished fine-tune
# --------------------------------------------------------------------------------------------


class FinetuneMismatchError(ActiveLearningError):
    """A finished fine-tune does not apply to this pool (another encoder, no scores, stale)."""


@dataclass(frozen=True)
class FinetunedHead:
    """A finished background fine-tune's head, with its scores of the pool's objects.

    Attributes
    ----------
    version : str
        The head's version from its card (``head-<12 hex>``).
    encoder_id : str
        The encoder whose embeddings it scores.
    ids : list of str
        Object ids, one per score.
    proba : ndarray
        Its P(positive) of each object (the Keras head applied once to the stored vectors).
    trained : dict
        ``object_id -> True/False`` (positive/negative): the labels it was trained on.
    folder : str
        The fine-tune's folder.
    card : dict
        Its ``head.card.json``.
    """

    version: str
    encoder_id: str
    ids: list[str]
    proba: np.ndarray = field(repr=False)
    trained: dict[str, bool] = field(repr=False)
    folder: str = ""
    card: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def stale_reason(self, labels: Mapping[str, str], positive: Iterable[str],
                     ignore: Iterable[str] = DEFAULT_IGNORE) -> str:
        """Why it no longer matches the labels ("" when it does).

        It matches while every label it learnt from still stands with the same class: labels
        added since are the refitted head's to use, but a label it learnt that was undone or
        changed class makes its scores wrong.
        """
        pos_set, ign_set = {str(p) for p in positive}, {str(i) for i in ignore}
        for object_id, was_positive in self.trained.items():
            now = labels.get(object_id)
            if now is None or str(now) in ign_set:
                return (f"object {object_id!r} it learnt as "
                        f"{'positive' if was_positive else 'negative'} is no longer labelled so")
            if (str(now) in pos_set) != was_positive:
                return (f"object {object_id!r} it learnt as "
                        f"{'positive' if was_positive else 'negative'} is now {now!r}")
        return ""


def load_finetuned(folder: str | Path, store: Any, *, compute: bool = False,
                   batch_size: int = 65536) -> FinetunedHead:
    """The head of a finished fine-tune, with its P(positive) of every object of the store.

    A head-mode fine-tune has scored the store already (``pool_scores.npy``; reading it needs
    no TensorFlow). Otherwise, e.g. after an encoder fine-tune once the store has been
    re-embedded with the new encoder, ``compute=True`` loads ``head.keras`` with
    ``safe_mode=True`` and applies it once to the stored vectors (run that in the TensorFlow
    helper process); the scores are then cached beside it.

    Parameters
    ----------
    folder : path-like
        The fine-tune's output folder (``head.card.json``, ``head.keras``, ``train.npz``).
    store : EmbeddingStore or path-like
        The embedding store of the pool.
    compute : bool
        Apply the Keras head when no matching scores exist.
    batch_size : int
        Vectors per prediction batch.

    Raises
    ------
    FinetuneMismatchError
        No finished fine-tune there, a head of another encoder's embeddings (an encoder
        fine-tune before re-embedding), or no scores of this store and ``compute`` False.
    """
    from ssald_desktop.core.embeddings import EmbeddingStore

    st = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, create=False)
    folder = Path(folder)
    card_path = folder / "head.card.json"
    if not card_path.is_file():
        raise FinetuneMismatchError(f"{folder}: no finished fine-tune (no head.card.json)")
    try:
        card = json.loads(card_path.read_text())
        train = np.load(folder / "train.npz", allow_pickle=False)
        t_ids, t_labels = [str(i) for i in train["ids"]], [str(v) for v in train["labels"]]
    except (OSError, ValueError, KeyError) as exc:
        raise FinetuneMismatchError(f"{folder}: unreadable fine-tune ({exc})") from exc
    if card.get("encoder_id") != st.encoder_id:
        raise FinetuneMismatchError(
            f"{folder}: its head scores embeddings of encoder {str(card.get('encoder_id'))[:12]}"
            f", the store {st.path} holds encoder {str(st.encoder_id)[:12]}'s"
            + (" (re-embed the store with the fine-tuned encoder first)"
               if card.get("reembed") else ""))
    n = st.count
    key = f"{st.encoder_id}:{n}:{st.rewrites}"
    p: np.ndarray | None = None
    recorded = card.get("pool") or {}
    if card.get("pool_scores") and (f"{recorded.get('encoder_id')}:{recorded.get('count')}:"
                                    f"{recorded.get('rewrites')}") == key:
        p = np.load(folder / str(card["pool_scores"]), allow_pickle=False)
    tag = f"{card.get('head_sha256')}:{key}"  # this head on this store's vectors
    cache = folder / f"pool_scores-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.npy"
    if p is None and cache.is_file():
        p = np.load(cache, allow_pickle=False)
    if p is None:
        if not compute:
            raise FinetuneMismatchError(f"{folder}: no scores of the {n} objects of {st.path} "
                                        "yet (apply its head with compute=True)")
        p = _apply_head(folder / str(card.get("head_file", "head.keras")), st, batch_size)
        tmp = cache.with_name(cache.stem + ".tmp.npy")
        np.save(tmp, p)
        tmp.replace(cache)
    if len(p) != n:
        raise FinetuneMismatchError(f"{folder}: {len(p)} scores for the {n} objects of "
                                    f"{st.path}")
    return FinetunedHead(str(card.get("version", "")), str(st.encoder_id), st.ids(),
                         np.asarray(p, np.float64),
                         {i: v == "positive" for i, v in zip(t_ids, t_labels, strict=True)},
                         str(folder), card)


def _apply_head(path: Path, st: Any, batch_size: int) -> np.ndarray:
    """P(positive) of every stored vector under a saved Keras head (``safe_mode=True``)."""
    import keras

    import model.finetune  # noqa: F401  (registers ClassifierHead)

    head = keras.saving.load_model(path, safe_mode=True)
    vec = st.vectors()
    p = np.empty(len(vec), np.float32)
    for s in range(0, len(vec), batch_size):
        p[s:s + batch_size] = head.predict_proba(np.asarray(vec[s:s + batch_size]))[:, 0]
    return p
