"""Active learning on real GZ2 embeddings (bundled encoder): samplers, loop, fine-tune trigger.

One session pool: 500 labelled GZ2 galaxies (the first 100 spirals and 400 non-spirals by id)
encoded once with the bundled default encoder; spirals play the rare class.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from ssald_desktop.core.active import (
    POLICIES,
    ActiveLearner,
    ActiveLearningError,
    Pool,
    committee_scores,
    fit_head,
    kcenter_greedy,
    launch_finetune,
    propagation_scores,
    should_finetune,
    similarity_scores,
    split_labels,
    uncertainty_scores,
)
from ssald_desktop.core.bench_search import DEFAULT_ENCODER
from tests.conftest import DATA

GZ2 = DATA / "gz2"


def _gz2_labels() -> dict[str, str]:
    with open(GZ2 / "labels.csv", newline="") as fh:
        return {r["galaxy_id"]: r["label"] for r in csv.DictReader(fh)}


@pytest.fixture(scope="session")
def gz2_store(tmp_path_factory):
    """An embedding store of 100 spirals + 400 non-spirals, and their labels."""
    from ssald_desktop.core.embeddings import ImageFolder, encode_set, run_encode

    labels = _gz2_labels()
    spirals = sorted(i for i, v in labels.items() if v == "spiral")[:100]
    others = sorted(i for i, v in labels.items() if v == "non_spiral")[:400]
    files = [GZ2 / "images" / f"{i}.jpg" for i in sorted(spirals + others)]
    store = tmp_path_factory.mktemp("active") / "store"
    run_encode(encode_set(ImageFolder(GZ2 / "images", files=files), store, DEFAULT_ENCODER,
                          batch_size=128))
    return store, {i: labels[i] for i in spirals + others}


@pytest.fixture(scope="session")
def pool(gz2_store):
    return Pool.from_store(gz2_store[0])


def _truth(pool, labels):
    return np.array([labels[i] == "spiral" for i in pool.ids])


def test_pool_from_store_and_ids(pool, gz2_store):
    assert len(pool) == 500
    assert np.allclose(np.linalg.norm(pool.unit, axis=1), 1.0, atol=1e-5)
    assert pool.encoder_id and pool.encoder_id != "unknown"
    rows = pool.rows(pool.ids[:3])
    assert list(rows) == [0, 1, 2]
    with pytest.raises(ActiveLearningError, match="not in the pool.*nope"):
        pool.rows(["nope"])


def test_cold_start_from_one_positive(pool, gz2_store):
    _, labels = gz2_store
    query = next(i for i in pool.ids if labels[i] == "spiral")
    learner = ActiveLearner(pool, positive=("spiral",), seed=0)
    cands = learner.suggest({}, 10, queries=[query])
    assert len(cands) == 10 and len({c.object_id for c in cands}) == 10
    assert query not in {c.object_id for c in cands}
    for c in cands:
        assert c.sampler == "exploit" and c.reason and "nearest positive" in c.reason
        assert c.model_version.startswith(f"enc:{pool.encoder_id[:12]}/head:")
        assert np.isfinite(c.score) and 0.0 <= c.probability <= 1.0
        assert set(c.to_dict()) >= {"object_id", "score", "sampler", "reason", "model_version"}
    # scores come best first
    assert all(a.score >= b.score for a, b in zip(cands, cands[1:], strict=False))
    # the same from an outside query vector (raw, as the encoder gives it; whitened here)
    from ssald_desktop.core.embeddings import EmbeddingStore

    vec = EmbeddingStore(gz2_store[0], create=False).vector(query)[None, :]
    out = ActiveLearner(pool, positive=("spiral",), policy="similarity").suggest(
        {}, 5, query_vectors=vec)
    assert out[0].object_id == query  # the image itself is its own nearest neighbour
    assert "query image 1" in out[1].reason


def _run(pool, truth, policy, seed, budget=60, batch=10):
    from ssald_desktop.core.bench_active import simulate

    positives = np.flatnonzero(truth)
    rng = np.random.default_rng(seed)
    q = rng.choice(positives)
    keep = np.setdiff1d(np.arange(len(pool)), [q])
    sub = Pool([pool.ids[i] for i in keep], pool.unit[keep], pool.encoder_id)
    hits, _ = simulate(sub, truth[keep], pool.unit[q], policy, budget, batch, seed)
    return int(hits.sum())


def test_exploitation_beats_random_on_real_labels(pool, gz2_store):
    truth = _truth(pool, gz2_store[1])  # 100 spirals in 500: base rate 0.2
    found = {p: sum(_run(pool, truth, p, s) for s in range(3)) for p in ("exploit", "random")}
    expected_random = 3 * 60 * 99 / 499
    assert found["exploit"] > 1.3 * expected_random, found
    assert found["exploit"] > found["random"], found


def test_every_policy_gives_distinct_unlabelled_candidates(pool, gz2_store):
    _, labels = gz2_store
    ids = pool.ids
    known = {i: labels[i] for i in ids[:40]}
    assert "spiral" in known.values()
    for policy in POLICIES:
        learner = ActiveLearner(pool, positive=("spiral",), policy=policy, seed=1,
                                committee=3)
        cands = learner.suggest(known, 8)
        got = [c.object_id for c in cands]
        assert len(got) == 8 and len(set(got)) == 8, policy
        assert not set(got) & set(known), policy
        assert all(c.reason for c in cands), policy
    mixed = ActiveLearner(pool, positive=("spiral",), explore=0.25).suggest(known, 8)
    assert [c.sampler for c in mixed].count("uncertainty") == 2
    mixed = ActiveLearner(pool, positive=("spiral",), explore=0.25, explore_sampler="committee",
                          committee=3, weights=(1.0, 0.5, 0.5)).suggest(known, 8)
    assert [c.sampler for c in mixed].count("committee") == 2
    assert "label spreading" in mixed[0].reason and "cosine to positives" in mixed[0].reason


def test_diversity_avoids_near_duplicates(pool):
    rng = np.random.default_rng(0)
    # five near-copies (cosine > 0.9999) of each of 20 real galaxies, plus the real pool
    base = pool.unit[:20]
    copies = np.repeat(base, 5, axis=0) + rng.normal(0, 1e-3, (100, base.shape[1]))
    ids = [*pool.ids, *[f"copy{i}" for i in range(100)]]
    dup = Pool(ids, np.concatenate([pool.unit, copies]), pool.encoder_id)
    # a positive right on one of the copied galaxies: exploitation would fill the batch with
    # its copies, the near-duplicate filter keeps one per galaxy
    learner = ActiveLearner(dup, positive=("p",), policy="exploit", dup_threshold=0.99)
    cands = learner.suggest({"copy0": "p", pool.ids[300]: "n"}, 10)
    u = dup.unit[[c.row for c in cands]]
    sims = u @ u.T
    np.fill_diagonal(sims, 0)
    assert sims.max() <= 0.99
    # k-center greedy never picks two copies of one galaxy
    picks = kcenter_greedy(dup.unit, np.arange(500, 600), 20)
    assert len(set((picks - 500) // 5)) == 20
    # diversity sampler: away from what is labelled
    div = ActiveLearner(dup, positive=("p",), policy="diversity").suggest({"copy0": "p"}, 5)
    assert all(c.sampler == "diversity" for c in div)
    assert all(c.object_id not in {f"copy{i}" for i in range(5)} for c in div)


def test_scores_on_real_embeddings(pool, gz2_store):
    truth = _truth(pool, gz2_store[1])
    pos = np.flatnonzero(truth)[:10]
    neg = np.flatnonzero(~truth)[:40]
    head = fit_head(pool, pos, neg)
    p = head.proba(pool.unit)
    assert p.shape == (500,) and ((p >= 0) & (p <= 1)).all()
    assert p[truth].mean() > p[~truth].mean()  # the head separates spirals a little
    u = uncertainty_scores(np.array([0.0, 0.5, 1.0, 0.25]))
    assert np.allclose(u, [0.0, 1.0, 0.0, 0.5])
    c = committee_scores(pool, pos, neg, members=3)
    assert c.shape == (500,) and (c >= 0).all() and c.max() > 0
    s = similarity_scores(pool, pool.unit[pos])
    assert np.allclose(s[pos], 1.0, atol=1e-5)
    f = propagation_scores(pool, pos, neg)
    assert f[pos].mean() > f[neg].mean()
    assert f[truth].mean() > f[~truth].mean()


def test_split_labels_and_unsure(pool):
    ids = pool.ids
    labels = {ids[0]: "DAGN candidate", ids[1]: "confirmed DAGN", ids[2]: "not DAGN",
              ids[3]: "unsure", ids[4]: "merger"}
    pos, neg, ign = split_labels(pool, labels, ("DAGN candidate", "confirmed DAGN"))
    assert list(pos) == [0, 1] and sorted(neg) == [2, 4] and list(ign) == [3]
    cands = ActiveLearner(pool).suggest(labels, 5)
    assert not {c.object_id for c in cands} & set(labels)  # unsure is not proposed again
    pos, neg, _ = split_labels(pool, {"elsewhere": "not DAGN", ids[0]: "DAGN candidate"},
                               ("DAGN candidate",), strict=False)
    assert list(pos) == [0] and len(neg) == 0


def test_bad_input_is_a_clear_error(pool):
    with pytest.raises(ActiveLearningError, match="empty"):
        Pool([], np.zeros((0, 8)))
    with pytest.raises(ActiveLearningError, match="3 ids for 2"):
        Pool(["a", "b", "c"], np.ones((2, 4)))
    with pytest.raises(ActiveLearningError, match="'a' occurs twice"):
        Pool(["a", "a"], np.ones((2, 4)))
    with pytest.raises(ActiveLearningError, match="not finite"):
        Pool(["a", "b"], np.array([[1.0, np.nan], [1.0, 0.0]]))
    learner = ActiveLearner(pool, positive=("spiral",))
    with pytest.raises(ActiveLearningError, match="labelled id.*ghost-42"):
        learner.suggest({"ghost-42": "spiral"}, 5)
    with pytest.raises(ActiveLearningError, match="query id.*ghost-7"):
        learner.suggest({}, 5, queries=["ghost-7"])
    with pytest.raises(ActiveLearningError, match="asked for 600 candidates but only 499"):
        learner.suggest({}, 600, queries=[pool.ids[0]])
    with pytest.raises(ActiveLearningError, match="positive integer"):
        learner.suggest({}, 0, queries=[pool.ids[0]])
    with pytest.raises(ActiveLearningError, match="at least one positive"):
        learner.suggest({pool.ids[0]: "non_spiral"}, 5)
    with pytest.raises(ActiveLearningError, match="unknown policy 'greedy'"):
        ActiveLearner(pool, policy="greedy")
    with pytest.raises(ActiveLearningError, match="dimension 3"):
        learner.suggest({}, 5, query_vectors=np.ones((1, 3)))


def test_should_finetune():
    labels = {"a": "DAGN candidate", "b": "not DAGN", "c": "unsure"}
    assert should_finetune(labels, 50, 50)
    assert not should_finetune(labels, 49, 50)
    assert not should_finetune(labels, 50, 0)  # 0 disables
    assert not should_finetune({"b": "not DAGN", "c": "unsure"}, 50, 50)  # no positive
    assert not should_finetune(labels, 50, 50, min_per_class=2)
    with pytest.raises(ActiveLearningError, match=">= 0"):
        should_finetune(labels, -1, 50)


def test_background_head_finetune_loads_safely_and_predicts(pool, gz2_store, tmp_path):
    import keras

    store, labels = gz2_store
    some = {i: ("DAGN candidate" if labels[i] == "spiral" else "not DAGN")
            for i in pool.ids[::5]}
    some[pool.ids[5]] = "unsure"
    env_before = dict(os.environ)
    job = launch_finetune(some, store, tmp_path / "ft", epochs=50)
    assert job.args[1:3] == ["-m", "model.finetune"] and "--mode" in job.args
    assert job.wait(timeout=240) == 0, job.log.read_text()[-2000:]
    card = job.card()
    assert card["format"] == "ssald-head-card" and card["mode"] == "head"
    assert card["classes"] == ["positive", "negative"]
    n_pos = sum(v == "DAGN candidate" for v in some.values())
    assert card["counts"] == {"positive": n_pos, "negative": 99 - n_pos}  # "unsure" left out
    assert card["label_counts"]["not DAGN"] == 99 - n_pos
    assert card["encoder_id"] == pool.encoder_id and card["version"].startswith("head-")
    import model.finetune  # noqa: F401  (registers ClassifierHead, as the GUI does)

    head = keras.saving.load_model(tmp_path / "ft" / "head.keras", safe_mode=True)
    assert head.classes == ["positive", "negative"]
    vec = np.load(tmp_path / "ft" / "train.npz")["vectors"]
    p = head.predict_proba(vec)
    assert p.shape == (len(vec), 2) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    y = np.load(tmp_path / "ft" / "train.npz")["labels"]
    assert p[y == "positive", 0].mean() > p[y == "negative", 0].mean()
    assert json.loads((tmp_path / "ft" / "head.card.json").read_text()) == card
    assert dict(os.environ) == env_before
    with pytest.raises(ActiveLearningError, match="both classes"):
        launch_finetune({pool.ids[0]: "not DAGN"}, store, tmp_path / "ft2")
    with pytest.raises(ActiveLearningError, match="mode"):
        launch_finetune(some, store, tmp_path / "ft3", mode="everything")


def test_cli_active_suggest(pool, gz2_store, tmp_path, capsys):
    from ssald_desktop.cli import main

    store, labels = gz2_store
    csv_path = tmp_path / "labels.csv"
    chosen = pool.ids[:30]
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object_id", "label"])
        for i in chosen:
            w.writerow([i, "DAGN candidate" if labels[i] == "spiral" else "not DAGN"])
    out = tmp_path / "next.json"
    assert main(["active", "suggest", "--store", str(store), "--labels", str(csv_path),
                 "--n", "7", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert len(r["candidates"]) == 7 and r["model_version"].startswith("enc:")
    assert not {c["object_id"] for c in r["candidates"]} & set(chosen)
    assert r["candidates"][0]["object_id"] in text and "rank" in text
    # cold start from a query id and no labels, and a clear error for an unknown id
    assert main(["active", "suggest", "--store", str(store), "--query", pool.ids[0],
                 "--policy", "similarity", "--n", "3"]) == 0
    assert main(["active", "suggest", "--store", str(store), "--query", "ghost",
                 "--n", "3"]) == 2
    assert "ghost" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A finished fine-tune's head in the loop
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_finetune(pool, gz2_store, tmp_path_factory):
    """A head-mode background fine-tune on every 4th object's label (spirals positive)."""
    store, labels = gz2_store
    some = {i: ("DAGN candidate" if labels[i] == "spiral" else "not DAGN")
            for i in pool.ids[::4]}
    out = tmp_path_factory.mktemp("ft-head") / "ft"
    job = launch_finetune(some, store, out, epochs=100)
    assert job.wait(timeout=300) == 0, job.log.read_text()[-2000:]
    return out, some, job.card()


def test_finetuned_head_scores_are_the_keras_heads(pool, gz2_store, head_finetune):
    import keras

    import model.finetune  # noqa: F401  (registers ClassifierHead)
    from ssald_desktop.core.active import load_finetuned
    from ssald_desktop.core.embeddings import EmbeddingStore

    out, some, card = head_finetune
    assert card["pool_scores"] == "pool_scores.npy" and card["pool"]["count"] == len(pool)
    ft = load_finetuned(out, gz2_store[0])
    assert ft.version == card["version"] and ft.ids == pool.ids
    assert ft.trained == {i: v == "DAGN candidate" for i, v in some.items()}
    head = keras.saving.load_model(out / "head.keras", safe_mode=True)
    vec = np.asarray(EmbeddingStore(gz2_store[0], create=False).vectors())
    np.testing.assert_allclose(ft.proba, head.predict_proba(vec)[:, 0], atol=1e-5)
    truth = _truth(pool, gz2_store[1])
    assert ft.proba[truth].mean() > ft.proba[~truth].mean()


def test_learner_uses_a_matching_finetuned_head(pool, gz2_store, head_finetune):
    from ssald_desktop.core.active import load_finetuned

    out, some, card = head_finetune
    ft = load_finetuned(out, gz2_store[0])
    labelled = set(some)
    free = np.array([r for r, i in enumerate(pool.ids) if i not in labelled])
    # With the fine-tuned head weighing (almost) alone, exploitation follows its ranking.
    learner = ActiveLearner(pool, positive=DAGN_POSITIVE, policy="exploit", finetuned=ft,
                            finetuned_weight=1e6, dup_threshold=1.01)
    cands = learner.suggest(some, 10)
    top = free[np.argsort(-ft.proba[free], kind="stable")[:10]]
    assert [c.row for c in cands] == list(top)
    assert all(c.model_version.endswith(f"/ft:{card['version']}") for c in cands)
    assert "fine-tuned head" in cands[0].reason and "used with weight" in learner.last_finetuned
    # The default policy mixes it in with the refitted head, equally while it saw every label.
    mixed = ActiveLearner(pool, positive=DAGN_POSITIVE, finetuned=ft)
    got = mixed.suggest(some, 10)
    plain = ActiveLearner(pool, positive=DAGN_POSITIVE).suggest(some, 10)
    assert "weight 1.00" in mixed.last_finetuned
    assert [c.object_id for c in got] != [c.object_id for c in plain]
    exploit = [c for c in got if c.sampler == "exploit"]
    assert exploit and all(f"/ft:{card['version']}" in c.model_version for c in exploit)
    assert all("/ft:" not in c.model_version for c in plain)
    # Labels it has not seen lower its weight; a label it learnt that changed class drops it.
    more = {**some, **{i: "not DAGN" for i in pool.ids[1::4] if gz2_store[1][i] != "spiral"}}
    mixed.suggest(more, 5)
    n = sum(v != "unsure" for v in more.values())
    assert f"({len(some)} of {n} labels seen)" in mixed.last_finetuned
    flipped = next(i for i, v in some.items() if v == "DAGN candidate")
    stale = mixed.suggest({**some, flipped: "not DAGN"}, 10)
    assert all("/ft:" not in c.model_version for c in stale)
    assert f"{flipped!r}" in mixed.last_finetuned and "not used" in mixed.last_finetuned


DAGN_POSITIVE = ("DAGN candidate", "confirmed DAGN")


def test_cli_active_suggest_with_a_finetuned_head(pool, gz2_store, head_finetune, tmp_path,
                                                  capsys):
    from ssald_desktop.cli import main

    out, some, card = head_finetune
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object_id", "label"])
        w.writerows(some.items())
    js = tmp_path / "next.json"
    assert main(["active", "suggest", "--store", str(gz2_store[0]), "--labels", str(csv_path),
                 "--n", "6", "--finetuned", str(out), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "used with weight 1.00" in text
    r = json.loads(js.read_text())
    assert any(c["model_version"].endswith(f"/ft:{card['version']}") for c in r["candidates"])
    # a folder without a finished fine-tune is a one-line error, exit 2
    assert main(["active", "suggest", "--store", str(gz2_store[0]), "--labels", str(csv_path),
                 "--finetuned", str(tmp_path)]) == 2
    assert "no finished fine-tune" in capsys.readouterr().err
