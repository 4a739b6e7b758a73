"""The discovery benchmark (``ssald-cli bench active-learning``) on a small real GZ2 subset."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from ssald_desktop.core.active import ActiveLearningError, Pool
from ssald_desktop.core.bench_active import (
    EVIDENCE_FEATURES,
    EvidencePool,
    active_summary,
    bench_active_learning,
    curve_metrics,
    evidence_features,
)
from ssald_desktop.core.errors import DataFileError
from tests.conftest import DATA

GZ2 = DATA / "gz2"


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """60 spirals, 300 non-spirals and 20 unlabelled GZ2 images, copied, with their labels."""
    with open(GZ2 / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pick = ([r for r in rows if r["label"] == "spiral"][:60]
            + [r for r in rows if r["label"] == "non_spiral"][:300]
            + [r for r in rows if r["label"] == "unlabeled"][:20])
    base = tmp_path_factory.mktemp("bench-active")
    images = base / "images"
    images.mkdir()
    for r in pick:
        shutil.copy2(GZ2 / "images" / f"{r['galaxy_id']}.jpg", images)
    labels = base / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["galaxy_id", "label"])
        w.writeheader()
        w.writerows(pick)
    return images, labels, base / "store"


def test_curve_metrics_by_hand():
    hits = np.array([0, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    m = curve_metrics(hits, n_positive=5, prevalence=0.05)
    assert m["found"] == 4 and m["labels_used"] == 10
    assert m["recall"] == pytest.approx(0.8) and m["le"] == pytest.approx(0.4)
    assert m["enrichment"] == pytest.approx(8.0)
    assert m["gm"] == pytest.approx(math.sqrt(0.4 * 0.8))
    assert m["labels_to_50"] == 5  # 3 of 5 positives (ceil 2.5) after the 5th label
    assert m["labels_to_90"] is None  # 5 of 5 (ceil 4.5) never reached
    assert m["recall_curve"][-1] == pytest.approx(0.8)


def test_bench_on_real_labels(subset, tmp_path):
    images, labels, store = subset
    r = bench_active_learning(images, labels, "spiral", prevalence=0.05, budget=40, batch=10,
                              seeds=2, policies=("default", "exploit"), store_dir=store)
    # pool: all 300 non-spirals + round(0.05 * 300 / 0.95) = 16 spirals; unlabelled left out
    assert r["pool_size"] == 316 and r["positives_in_pool"] == 16
    assert r["policies"] == ["random", "nearest", "default", "exploit"]
    for p in r["policies"]:
        runs = r["runs"][p]
        assert len(runs) == 2 and [x["seed"] for x in runs] == [0, 1]
        for x in runs:
            assert x["labels_used"] == 40 and 0 <= x["found"] <= 16
            assert x["recall"] == pytest.approx(x["found"] / 16)
            assert x["le"] == pytest.approx(x["found"] / 40)
        m = r["mean"][p]
        assert m["found"] == pytest.approx(np.mean([x["found"] for x in runs]))
        assert m["gm"] == pytest.approx(np.mean([x["gm"] for x in runs]))
    # the query is one positive outside the pool, different per seed
    assert r["runs"]["default"][0]["query"] != r["runs"]["default"][1]["query"]
    assert r["runs"]["default"][0]["samplers"]
    assert 0 < r["ceiling"]["recall_in_budget"] <= 1 and 0.5 < r["ceiling"]["auc"] <= 1
    text = active_summary(r)
    assert "default" in text and "nearest" in text and "ceiling" in text
    json.dumps(r)  # JSON-ready


def test_bench_cli_writes_json(subset, tmp_path, capsys, monkeypatch):
    from ssald_desktop.cli import main

    images, labels, _ = subset
    out = tmp_path / "al.json"
    monkeypatch.setenv("SSALD_CACHE_DIR", str(tmp_path / "cache"))
    status = main(["bench", "active-learning", "--images", str(images), "--labels",
                   str(labels), "--positive", "spiral", "--prevalence", "0.05", "--budget",
                   "20", "--batch", "10", "--seeds", "1", "--no-ceiling", "--quiet", "--json",
                   str(out)])
    assert status == 0
    r = json.loads(out.read_text())
    assert r["benchmark"] == "active-learning" and r["budget"] == 20 and r["seeds"] == 1
    assert "random" in r["mean"] and "default" in r["mean"]
    assert "active learning: 'spiral'" in capsys.readouterr().out
    assert main(["bench", "active-learning", "--images", str(images), "--labels", str(labels),
                 "--positive", "spiral", "--budget", "20", "--seeds", "1",
                 "--policies", "greedy"]) == 2


def test_bench_bad_input(subset):
    images, labels, store = subset
    with pytest.raises(ActiveLearningError, match="prevalence"):
        bench_active_learning(images, labels, "spiral", prevalence=0.9, store_dir=store)
    with pytest.raises(ActiveLearningError, match="needs 75 positives plus a query, but only 60"):
        bench_active_learning(images, labels, "spiral", prevalence=0.2, store_dir=store)
    with pytest.raises(ActiveLearningError, match="budget 5000 is larger than the pool"):
        bench_active_learning(images, labels, "spiral", prevalence=0.05, budget=5000,
                              store_dir=store)
    with pytest.raises(ActiveLearningError, match="batch must be a positive integer"):
        bench_active_learning(images, labels, "spiral", batch=0, store_dir=store)
    with pytest.raises(DataFileError, match="labelled 'elliptical'"):
        bench_active_learning(images, labels, "elliptical", store_dir=store)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """4 spirals and 12 non-spirals of GZ2, copied, with their labels (evidence features)."""
    with open(GZ2 / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pick = ([r for r in rows if r["label"] == "spiral"][:4]
            + [r for r in rows if r["label"] == "non_spiral"][:12])
    base = tmp_path_factory.mktemp("bench-evidence")
    images = base / "images"
    images.mkdir()
    for r in pick:
        shutil.copy2(GZ2 / "images" / f"{r['galaxy_id']}.jpg", images)
    labels = base / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["galaxy_id", "label"])
        w.writeheader()
        w.writerows(pick)
    return images, labels, base


def test_evidence_pool_appends_weighted_features():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    feats = np.c_[rng.integers(0, 3, 30), rng.uniform(size=30), rng.uniform(0, 5, 30),
                  np.zeros(30)]  # a constant column must not divide by zero
    ids = [str(i) for i in range(30)]
    plain = Pool(ids, emb, whiten=0.001)
    off = EvidencePool(ids, emb, feats, whiten=0.001, weight=0.0)
    assert off.unit.shape == (30, 12)
    np.testing.assert_allclose(off.unit[:, :8], plain.unit, atol=1e-5)
    assert np.all(off.unit[:, 8:] == 0)
    on = EvidencePool(ids, emb, feats, whiten=0.001, weight=2.0)
    np.testing.assert_allclose(np.linalg.norm(on.unit, axis=1), 1.0, atol=1e-5)
    z = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1.0)
    part = np.linalg.norm(z, axis=1) * 2.0 / 2.0  # weight / sqrt(4 features)
    ratio = np.linalg.norm(on.unit[:, 8:], axis=1) / np.linalg.norm(on.unit[:, :8], axis=1)
    np.testing.assert_allclose(ratio, part, rtol=1e-4)
    # a query with its features maps like a pool row
    np.testing.assert_allclose(on.transform(np.c_[emb[:2], feats[:2]]), on.unit[:2], atol=1e-5)
    with pytest.raises(ActiveLearningError, match="feature rows"):
        EvidencePool(ids, emb, feats[:5])


def test_evidence_features_are_cached(tiny):
    images, _, base = tiny
    ids = sorted(p.stem for p in images.iterdir())[:3]
    cache = base / "ev.json"
    f = evidence_features(images, ids, cache)
    assert f.shape == (3, 4)
    assert set(np.unique(f[:, 0])) <= {0.0, 1.0, 2.0}
    assert np.all((f[:, 1] >= 0) & (f[:, 1] <= 1))
    saved = json.loads(cache.read_text())
    assert sorted(saved) == ids
    before = cache.stat().st_mtime_ns
    np.testing.assert_array_equal(evidence_features(images, ids, cache), f)
    assert cache.stat().st_mtime_ns == before  # read from the cache, not measured again
    with pytest.raises(DataFileError, match="no image file"):
        evidence_features(images, ["no-such-galaxy"], cache)


def test_bench_with_evidence_features(tiny, monkeypatch):
    images, labels, base = tiny
    monkeypatch.setenv("SSALD_CACHE_DIR", str(base / "cache"))
    r = bench_active_learning(images, labels, "spiral", prevalence=0.2, budget=6, batch=3,
                              seeds=1, policies=("default",), store_dir=base / "store",
                              evidence_weight=1.0)
    # pool: 12 non-spirals + round(0.2 * 12 / 0.8) = 3 spirals, plus the query
    assert r["pool_size"] == 15 and r["evidence"]["images"] == 16
    assert r["evidence"]["features"] == list(EVIDENCE_FEATURES)
    assert Path(r["evidence"]["cache"]).is_file()
    assert r["runs"]["default"][0]["labels_used"] == 6
    assert "ceiling_embedding_only" in r and "evidence features" in active_summary(r)
    json.dumps(r)
    with pytest.raises(ActiveLearningError, match="evidence weight"):
        bench_active_learning(images, labels, "spiral", prevalence=0.2, budget=6, batch=3,
                              seeds=1, store_dir=base / "store", evidence_weight=-1.0)
