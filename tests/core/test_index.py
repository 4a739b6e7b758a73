"""The faiss index over real GZ2 embeddings: exact results, the choice by recall, files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.core.test_embeddings import (
    image_folder,
    tiny_encoder,
)


@pytest.fixture(scope="module")
def vectors(store_dir):
    from ssald_desktop.core.embeddings import EmbeddingStore

    return np.array(EmbeddingStore(store_dir, create=False).vectors())


@pytest.fixture(scope="module")
def tiled(vectors):
    """2,000 vectors shaped like the real embeddings: the GZ2 ones tiled with small noise."""
    rng = np.random.default_rng(0)
    reps = -(-2000 // len(vectors))
    v = np.tile(vectors, (reps, 1))[:2000]
    scale = vectors.std(axis=0, keepdims=True)
    return (v + 0.3 * scale * rng.standard_normal(v.shape)).astype(np.float32)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_whitening(vectors, shrink=1e-3):
    """PCA whitening with shrinkage, written independently of the index (float64)."""
    u = unit(vectors.astype(np.float64))
    mean = u.mean(axis=0)
    val, vec = np.linalg.eigh(np.cov(u - mean, rowvar=False))
    val = np.maximum(val, 0.0)
    proj = vec / np.sqrt(val + shrink * val.max())
    return lambda x: unit((unit(x.astype(np.float64)) - mean) @ proj)


def brute_force(vectors, queries, k, transform=unit):
    sims = transform(queries.astype(np.float64)) @ transform(vectors.astype(np.float64)).T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, 1), rows


def test_exact_index_equals_brute_force(vectors):
    from ssald_desktop.core.index import build_index, run_build

    si = run_build(build_index(vectors, "auto", whiten="none"))
    assert si.kind == "flat" and si.count == len(vectors) and "below the threshold" in \
        si.meta["choice"]
    assert not si.whitened
    q = vectors[::15] + 0.01
    sims, rows = si.search(q, 10)
    ref_s, ref_r = brute_force(vectors, q, 10)
    np.testing.assert_allclose(sims, ref_s, atol=2e-6)
    # the same rows wherever the brute-force similarities are not tied at float32 precision
    gaps = np.abs(np.diff(ref_s, axis=1))
    clear = np.ones_like(rows, bool)
    clear[:, :-1] &= gaps > 1e-6
    clear[:, 1:] &= gaps > 1e-6
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(rows[clear], ref_r[clear])
    # and on vectors without near-ties, every row
    g = np.random.default_rng(3).standard_normal((1000, 16)).astype(np.float32)
    si = run_build(build_index(g, "flat", whiten="none"))
    sims, rows = si.search(g[:50] + 0.1, 20)
    ref_s, ref_r = brute_force(g, g[:50] + 0.1, 20)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_allclose(sims, ref_s, atol=2e-6)


@pytest.mark.parametrize("kind", ["auto", "ivf", "hnsw", "ivfpq"])
def test_approximate_index_reaches_target_recall(tiled, kind):
    from ssald_desktop.core.index import build_index, recall_at_k, run_build

    steps = []
    si = run_build(build_index(tiled, kind, threshold=500, k=20, n_queries=200), steps.append)
    if kind == "auto":
        assert si.kind in ("ivf", "hnsw")
        assert si.meta["tried"][0]["kind"] == "ivf" and "recall@20" in si.meta["choice"]
    else:
        assert si.kind == kind
    assert si.meta["recall"] >= 0.95, si.meta
    assert {s.stage.split()[0] for s in steps} >= {"ground", "add", "tune"}
    # an independent check on other queries (perturbed vectors, not in the index)
    rng = np.random.default_rng(5)
    q = tiled[rng.choice(len(tiled), 100, replace=False)]
    q = q + 0.1 * tiled.std(axis=0) * rng.standard_normal(q.shape).astype(np.float32)
    _, found = si.search(q, 20)
    assert si.whitened  # 2,000 vectors: the index compares whitened vectors
    _, truth = brute_force(tiled, q, 20, transform=numpy_whitening(tiled))
    assert recall_at_k(found, truth, 20) >= 0.9


def test_whitened_exact_index_equals_independent_whitening(tiled, vectors, tmp_path):
    """The index's PCA whitening (faiss) against one written here with numpy."""
    from ssald_desktop.core.index import SimilarityIndex, build_index, run_build

    si = run_build(build_index(tiled, "flat"))
    assert si.whitened and si.meta["whitening"]["kind"] == "pca"
    assert si.meta["whitening"]["fitted_on"] == len(tiled)
    rng = np.random.default_rng(11)
    q = tiled[::40] + 0.05 * tiled.std(axis=0) * rng.standard_normal(
        tiled[::40].shape).astype(np.float32)
    sims, rows = si.search(q, 10)
    ref_s, ref_r = brute_force(tiled, q, 10, transform=numpy_whitening(tiled))
    np.testing.assert_allclose(sims, ref_s, atol=2e-3)
    clear = np.ones_like(rows, bool)
    gaps = np.abs(np.diff(ref_s, axis=1))
    clear[:, :-1] &= gaps > 5e-3
    clear[:, 1:] &= gaps > 5e-3
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(rows[clear], ref_r[clear])
    # whitening changes the neighbours (otherwise this test could not fail)
    _, plain = brute_force(tiled, q, 10)
    assert (plain != ref_r).mean() > 0.2
    # it is saved with the index and applied to additions and queries after loading
    si.save(tmp_path)
    back = SimilarityIndex.load(tmp_path)
    assert back.whitened
    np.testing.assert_array_equal(back.search(q, 10)[1], rows)
    back.add(q[:3])
    s3, r3 = back.search(q[:3], 1)
    np.testing.assert_array_equal(r3[:, 0], len(tiled) + np.arange(3))
    np.testing.assert_allclose(s3[:, 0], 1.0, atol=1e-5)


def test_whitening_needs_enough_vectors(vectors):
    from ssald_desktop.core.errors import SsaldError
    from ssald_desktop.core.index import WHITEN_MIN, build_index, run_build

    small = vectors[: min(len(vectors), WHITEN_MIN - 1)]
    si = run_build(build_index(small, "auto"))
    assert not si.whitened and "too few" in si.meta["whitening"]["kind"]
    with pytest.raises(SsaldError, match="needs more than"):
        run_build(build_index(small[: small.shape[1]], "flat", whiten="pca"))
    with pytest.raises(SsaldError, match="whiten must be one of"):
        run_build(build_index(small, "flat", whiten="zca"))


def test_exact_search_joins_when_no_approximate_index_meets_the_goal():
    from ssald_desktop.core.index import build_index, run_build

    g = np.random.default_rng(4).standard_normal((1500, 32)).astype(np.float32)
    si = run_build(build_index(g, "auto", threshold=500, k=10, n_queries=50,
                               latency_goal_ms=0.0, candidates=("ivf",)))
    kinds = [t["kind"] for t in si.meta["tried"]]
    assert kinds == ["ivf", "flat"] and si.kind in kinds
    assert si.meta["recall"] >= 0.95 and si.meta["p50_ms"] == min(
        t["p50_ms"] for t in si.meta["tried"] if t["recall"] >= 0.95)


def test_memory_budget_selects_ivfpq(tiled):
    from ssald_desktop.core.index import build_index, run_build

    si = run_build(build_index(tiled, "auto", threshold=500, k=20, n_queries=100,
                               memory_budget=100_000))
    assert si.kind == "ivfpq" and si.params["pq_m"] == 4
    assert si.meta["recall"] >= 0.95


def test_save_load_round_trip(store_dir, vectors, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore
    from ssald_desktop.core.index import (
        INDEX_FILE,
        SIDECAR_FILE,
        SimilarityIndex,
        build_store_index,
        open_index,
        run_build,
    )

    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    si = run_build(build_store_index(copy, "hnsw", k=10, n_queries=100))
    side = json.loads((copy / SIDECAR_FILE).read_text())
    st = EmbeddingStore(copy)
    assert side["kind"] == "hnsw" and side["count"] == len(vectors) == si.count
    assert side["encoder_id"] == st.encoder_id and side["normspec_digest"] == "none"
    assert side["bytes"] == (copy / INDEX_FILE).stat().st_size and len(side["sha256"]) == 64
    loaded = open_index(copy)
    assert loaded.kind == "hnsw" and loaded.params == si.params
    q = vectors[:7]
    a, b = si.search(q, 5), loaded.search(q, 5)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0])
    assert SimilarityIndex.load(copy / INDEX_FILE).count == si.count


def test_truncated_and_corrupt_index_files(store_dir, tmp_path):
    from ssald_desktop.core.errors import DataFileError
    from ssald_desktop.core.index import INDEX_FILE, SIDECAR_FILE, SimilarityIndex, open_index

    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    path = copy / INDEX_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=rf"{INDEX_FILE}: truncated"):
        open_index(copy)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(DataFileError, match=rf"{INDEX_FILE}: corrupt"):
        open_index(copy)
    # without the sidecar's checks, faiss itself fails on a truncated file: still named
    path.write_bytes(data[: len(data) // 2])
    side = json.loads((copy / SIDECAR_FILE).read_text())
    side["bytes"] = len(data) // 2
    (copy / SIDECAR_FILE).write_text(json.dumps(side))
    with pytest.raises(DataFileError, match=rf"{INDEX_FILE}: not a readable faiss index"):
        SimilarityIndex.load(copy, verify=False)
    path.unlink()
    with pytest.raises(DataFileError, match="no index here"):
        open_index(copy)


def test_k_larger_than_the_index(store_dir, vectors):
    from ssald_desktop.core.errors import InvalidQueryError
    from ssald_desktop.core.index import open_index

    si = open_index(store_dir)
    assert si.search(vectors[:1], len(vectors))[1].shape == (1, len(vectors))
    with pytest.raises(InvalidQueryError, match=rf"k=151 is larger than the index at .*index\."
                       rf"faiss, which holds {len(vectors)} vectors"):
        si.search(vectors[:1], 151)
    with pytest.raises(InvalidQueryError, match="positive integer"):
        si.search(vectors[:1], 0)


def test_incremental_add_and_rebuild_when_stale(base, tmp_path):
    from ssald_desktop.core.embeddings import ImageFolder, encode_set, run_encode
    from ssald_desktop.core.errors import DataFileError
    from ssald_desktop.core.index import (
        build_index,
        build_store_index,
        open_index,
        run_build,
        update_index,
    )

    enc = tiny_encoder(base)
    folder = tmp_path / "imgs"
    shutil.copytree(image_folder(base, 40), folder)
    files = sorted(folder.glob("*.jpg"))
    run_encode(encode_set(ImageFolder(folder, files=files[:30]), tmp_path / "s", enc))
    run_build(build_store_index(tmp_path / "s"))
    run_encode(encode_set(ImageFolder(folder, files=files), tmp_path / "s", enc))
    assert open_index(tmp_path / "s").count == 30  # behind the store, but consistent
    si, added = update_index(tmp_path / "s")
    assert added == 10 and si.count == 40
    reloaded = open_index(tmp_path / "s")
    from ssald_desktop.core.embeddings import EmbeddingStore

    v = np.array(EmbeddingStore(tmp_path / "s").vectors())
    fresh = run_build(build_index(v, "flat"))
    np.testing.assert_array_equal(reloaded.search(v[:5], 8)[1], fresh.search(v[:5], 8)[1])
    # a rewritten vector makes the saved index stale: open refuses, update rebuilds
    shutil.copyfile(files[1], files[2])
    os.utime(files[2], ns=(1, 1))
    run_encode(encode_set(ImageFolder(folder, files=files), tmp_path / "s", enc))
    with pytest.raises(DataFileError, match="out of date"):
        open_index(tmp_path / "s")
    si, added = update_index(tmp_path / "s")
    assert added == 40 and open_index(tmp_path / "s").count == 40


def test_bench_search_at_2000(store_dir):
    from ssald_desktop.core.bench_search import bench_search, search_summary

    r = bench_search(2000, 16, 20, "gz2", embeddings=store_dir, threshold=500, n_queries=100)
    assert r["kind"] in ("ivf", "hnsw") and r["recall_at_k"] >= 0.9
    assert r["data"]["source"] == "tiled real embeddings" and r["data"]["base_count"] == 150
    assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and r["index_bytes"] > 2000 * 16 * 4
    assert r["build_seconds"] > 0 and r["tried"] and "recall@20" in search_summary(r)
    g = bench_search(2000, 24, 10, "gaussian", n_queries=50)
    assert g["kind"] == "flat" and g["recall_at_k"] == 1.0 and g["data"]["source"] == "gaussian"
    big = bench_search(10**12, 128, 50, "gaussian")
    assert big["skipped"] and "GiB" in big["reason"]


def test_ivf_on_too_few_vectors_is_a_clear_error():
    import numpy as np

    from ssald_desktop.core.errors import DataFileError
    from ssald_desktop.core.index import build_index, run_build

    vectors = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    with pytest.raises(DataFileError, match="at least .* vectors to train"):
        run_build(build_index(vectors, kind="ivf"))
