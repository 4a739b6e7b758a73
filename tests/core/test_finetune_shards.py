"""Encoder fine-tuning from any source kind the store holds (issue 6 item 3).

The bundled sample index (resources/sample/index: the sample field's galaxies, encoded from the
miner's HDF5 shards with the bundled default encoder) is copied with its shards and encoder
into tmp_path; a few of its galaxies are labelled, the encoder's top layers are fine-tuned in
the background process, and the store is re-embedded with the result through the path the
GUI's "use this encoder" takes. Image-file stores are checked on real GZ2 JPEGs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ssald_desktop.core.active import (
    ActiveLearningError,
    FinetuneMismatchError,
    SourceReader,
    export_pixels,
    launch_finetune,
    load_finetuned,
)
from tests.conftest import DATA, REPO

SAMPLE = REPO / "resources" / "sample"
DEFAULT_ENCODER = REPO / "resources" / "encoders" / "default" / "encoder.keras"


def _copy_sample(root: Path) -> Path:
    """The sample index with what it references (shards, encoder), laid out as in the repo."""
    shutil.copytree(SAMPLE / "index", root / "sample" / "index")
    shutil.copytree(SAMPLE / "cutouts", root / "sample" / "cutouts",
                    ignore=shutil.ignore_patterns("manifest.sqlite*"))
    shutil.copytree(DEFAULT_ENCODER.parent, root / "encoders" / "default")
    return root / "sample" / "index"


def _labels(ids: list[str]) -> dict[str, str]:
    labels = {i: "DAGN candidate" for i in ids[:6]}
    labels.update({i: "not DAGN" for i in ids[6:20]})
    labels[ids[20]] = "unsure"  # left out of training
    return labels


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One encoder-mode fine-tune of the copied sample index (2 epochs, top 4 layers)."""
    from ssald_desktop.core.embeddings import EmbeddingStore

    root = tmp_path_factory.mktemp("ftshards")
    index = _copy_sample(root)
    ids = EmbeddingStore(index, create=False).ids()
    labels = _labels(ids)
    job = launch_finetune(labels, index, root / "ft", mode="encoder", epochs=2, top_layers=4)
    assert job.wait(timeout=300) == 0, job.log.read_text()[-3000:]
    return root, index, ids, labels, job


def test_encoder_finetune_of_shard_store_writes_a_new_encoder(finetuned):
    from model.export import load_card
    from ssald_desktop.core.embeddings import encoder_info

    root, index, ids, labels, job = finetuned
    card = job.card()
    assert card["mode"] == "encoder" and card["reembed"] is True
    assert card["counts"] == {"positive": 6, "negative": 14}  # "unsure" left out
    # The exported pixels are the labelled galaxies, and re-encoded with the store's encoder
    # they give back the stored vectors: the very pixels the store was embedded from.
    from model.finetune import read_pixels

    pix_ids, raw = read_pixels(root / "ft" / "pixels.h5")
    assert pix_ids == [i for i, v in labels.items() if v != "unsure"]
    assert all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in raw)
    assert card["min_cosine_to_store"] >= 0.999
    new = root / "ft" / "encoder.keras"
    old_info, new_info = encoder_info(DEFAULT_ENCODER), encoder_info(new)
    assert new_info.encoder_id != old_info.encoder_id == card["parent_encoder_id"]
    assert card["encoder_id"] == new_info.encoder_id
    assert (new_info.normspec, new_info.scaling, new_info.input_size, new_info.bands) == (
        old_info.normspec, old_info.scaling, old_info.input_size, old_info.bands)
    ft = load_card(new)["training_config"]["finetune"]
    assert ft["parent_encoder_sha256"] == old_info.encoder_id and ft["top_layers"] == 4
    assert ft["store_normspec"]["output_size"] == 64  # the shards' NormSpec, for the record


def test_reembedding_with_the_finetuned_encoder_changes_vectors_and_searches(finetuned):
    from ssald_desktop.core.embeddings import EmbeddingStore
    from ssald_desktop.core.query import Searcher
    from ssald_desktop.ui.main_window import reembed_index  # the "use this encoder" path

    root, index, ids, labels, job = finetuned
    out = root / "reembedded"
    gen = reembed_index(str(index), str(root / "ft" / "encoder.keras"), out, None)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        assert stop.value == str(out)
    old, new = EmbeddingStore(index, create=False), EmbeddingStore(out, create=False)
    assert new.encoder_id == job.card()["encoder_id"] != old.encoder_id
    assert sorted(new.ids()) == sorted(ids)
    a = np.asarray(old.vectors())[[old.row_of(i) for i in ids]]
    b = np.asarray(new.vectors())[[new.row_of(i) for i in ids]]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() < 0.9999 and np.isfinite(b).all()
    hits = Searcher(out).search(objects=[ids[0]], k=5).hits
    # The new index answers with the new space's nearest neighbours (the query excluded).
    unit = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = unit[1:] @ unit[0]
    order = np.argsort(-sims)[:5]
    assert [h.id for h in hits] == [ids[1:][j] for j in order]
    np.testing.assert_allclose([h.similarity for h in hits], sims[order], atol=1e-5)
    # The head of the encoder fine-tune scores the new space only (computed once, cached).
    with pytest.raises(FinetuneMismatchError, match="re-embed"):
        load_finetuned(root / "ft", index)
    with pytest.raises(FinetuneMismatchError, match="compute=True"):
        load_finetuned(root / "ft", out)
    head = load_finetuned(root / "ft", out, compute=True)
    assert head.version == job.card()["version"] and len(head.proba) == len(ids)
    assert np.all((head.proba >= 0) & (head.proba <= 1))
    again = load_finetuned(root / "ft", out)  # from the cache, without TensorFlow work
    np.testing.assert_array_equal(again.proba, head.proba)


def test_missing_shard_is_named_before_anything_starts(tmp_path):
    index = _copy_sample(tmp_path)
    from ssald_desktop.core.embeddings import EmbeddingStore

    ids = EmbeddingStore(index, create=False).ids()
    shard = next((tmp_path / "sample" / "cutouts").rglob("shard-*.h5"))
    shard.rename(shard.with_suffix(".gone"))
    with pytest.raises(ActiveLearningError, match=rf"{shard.name}: the source of object .* is "
                                                  "missing"):
        launch_finetune(_labels(ids), index, tmp_path / "ft", mode="encoder", epochs=1)
    assert not (tmp_path / "ft" / "train.npz").exists()
    # head mode needs no pixels: it starts without the shards
    job = launch_finetune(_labels(ids), index, tmp_path / "ft-head", epochs=5)
    job.process.terminate()
    job.wait(timeout=60)
    assert not (tmp_path / "ft-head" / "pixels.h5").exists()


def test_image_file_store_pixels_are_the_encoded_ones(tmp_path):
    """GZ2 JPEGs (424 px, resized to the encoder's 64): export, prepare, re-encode."""
    from model.finetune import check_reproduces, prepare_pixels, read_pixels
    from ssald_desktop.core.embeddings import (
        EmbeddingStore,
        ImageFolder,
        embed_prepared,
        encode_set,
        encoder_info,
        load_encoder_checked,
        read_image,
        run_encode,
    )

    files = sorted((DATA / "gz2" / "images").glob("*.jpg"))[:6]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in files:
        shutil.copy2(f, folder / f.name)
    store = tmp_path / "store"
    run_encode(encode_set(ImageFolder(folder), store, DEFAULT_ENCODER))
    st = EmbeddingStore(store, create=False)
    rows = [3, 0, 5]
    assert export_pixels(st, rows, tmp_path / "pixels.h5", batch_size=2) == 3
    ids, raw = read_pixels(tmp_path / "pixels.h5")
    assert ids == st.ids(rows)
    for i, x in zip(ids, raw, strict=True):
        np.testing.assert_array_equal(x, read_image(folder / f"{i}.jpg"))
    info = encoder_info(DEFAULT_ENCODER)
    prepared = prepare_pixels(raw, info.scaling, info.input_size)
    z = embed_prepared(load_encoder_checked(info), prepared)
    assert check_reproduces(z, np.asarray(st.vectors())[rows], ids, "test") > 0.9999
    # a changed image no longer gives back its vector, and the check names it
    z[1] = -z[1]
    with pytest.raises(ValueError, match=repr(ids[1])):
        check_reproduces(z, np.asarray(st.vectors())[rows], ids, "test")
    # in-memory objects cannot be fine-tuned on, and say why
    with pytest.raises(ActiveLearningError, match="in memory"):
        SourceReader(st).read([{"id": "x", "source": "memory", "item": 0}])


def test_exporting_pixels_needs_no_tensorflow(tmp_path):
    """The export runs in the GUI's process (a worker thread), which never imports TensorFlow."""
    import subprocess
    import sys

    index = _copy_sample(tmp_path)
    code = ("import sys\n"
            "from ssald_desktop.core.active import export_pixels\n"
            "from ssald_desktop.core.embeddings import EmbeddingStore\n"
            f"st = EmbeddingStore({str(index)!r}, create=False)\n"
            f"n = export_pixels(st, [4, 1, 2], {str(tmp_path / 'p.h5')!r}, batch_size=2)\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'PySide6') if m in sys.modules]\n"
            "print(n, heavy)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(REPO), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[0] == "3 []"


@pytest.mark.parametrize("fmt", ["tfrecord", "h5-cubes"])
def test_other_shard_kinds_export_the_encoded_pixels(tmp_path_factory, tmp_path, fmt):
    """TFRecord shards (8-bit composites) and HDF5 band cubes (asinh, resized 32 -> 16 px).

    The miner's shards of the quiet field and the tiny encoders are the embeddings tests'
    (made once per session).
    """
    from model.finetune import check_reproduces, prepare_pixels, read_pixels
    from ssald_desktop.core.embeddings import (
        EmbeddingStore,
        embed_prepared,
        encode,
        encoder_info,
        load_encoder_checked,
        run_encode,
    )
    from tests.core.test_embeddings import tiny_encoder
    from tests.core.test_embeddings_shards import cube_encoder, mined_shards

    base = tmp_path_factory.getbasetemp()
    mined = mined_shards(base)
    enc = tiny_encoder(base) if fmt == "tfrecord" else cube_encoder(base)
    run_encode(encode(mined, tmp_path / "store", enc, fmt=fmt.split("-")[0]))
    st = EmbeddingStore(tmp_path / "store", create=False)
    rows = [9, 0, 17, 3]  # across shards, out of order
    assert export_pixels(st, rows, tmp_path / "pixels.h5", batch_size=3) == 4
    ids, raw = read_pixels(tmp_path / "pixels.h5")
    assert ids == st.ids(rows)
    assert raw[0].dtype == (np.uint8 if fmt == "tfrecord" else np.float32)
    info = encoder_info(enc)
    z = embed_prepared(load_encoder_checked(info),
                       prepare_pixels(raw, info.scaling, info.input_size))
    assert check_reproduces(z, np.asarray(st.vectors())[rows], ids, "test") > 0.9999
