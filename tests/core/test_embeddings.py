"""Embeddings: encoding real GZ2 galaxies with a tiny exported encoder, and the store.

The helpers at the top (a tiny encoder, a folder of GZ2 images, a store with its index) are
shared with test_index.py and test_query.py through the session's base temporary folder, so
each is made once per run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA

GZ2 = DATA / "gz2"
GZ2_IMAGES = GZ2 / "images"


# --------------------------------------------------------------------------------------------
# Shared helpers (imported by the other similarity-search tests)
# --------------------------------------------------------------------------------------------


def gz2_files(n: int, offset: int = 0) -> list[Path]:
    """The first ``n`` GZ2 images (sorted by name) after ``offset``."""
    return sorted(GZ2_IMAGES.glob("*.jpg"))[offset:offset + n]


def tiny_encoder(base: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised encoder (32 px, 16-d), exported with its card; cached."""
    out = base / f"tiny-encoder-{seed}" / "encoder.keras"
    if not out.exists():
        import keras

        from model.encoder import Encoder
        from model.export import export_encoder

        keras.utils.set_random_seed(seed)
        enc = Encoder(bands=3, input_size=32, width=8, depths=[1, 1], embedding_dim=16)
        export_encoder(enc, out, normspec=None, scaling={"kind": "uint8", "divide": 255.0},
                       notes="test encoder, random weights")
    return out


def image_folder(base: Path, n: int, offset: int = 0) -> Path:
    """A folder with copies of ``n`` GZ2 JPEGs; cached."""
    folder = base / f"gz2-{offset}-{n}"
    if not folder.exists():
        tmp = base / f"gz2-{offset}-{n}.tmp"
        tmp.mkdir()
        for f in gz2_files(n, offset):
            shutil.copy2(f, tmp / f.name)
        tmp.rename(folder)
    return folder


def indexed_store(base: Path, n: int = 150) -> Path:
    """An embedding store of ``n`` GZ2 images (tiny encoder) with a saved exact index; cached.

    Read-only for the tests: copy it before changing anything.
    """
    from ssald_desktop.core.embeddings import encode, run_encode
    from ssald_desktop.core.index import build_store_index, run_build

    store = base / f"store-{n}"
    if not (store / "index.json").exists():
        run_encode(encode(image_folder(base, n), store, tiny_encoder(base)))
        run_build(build_store_index(store, "flat"))
    return store


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def encoder_path(base) -> Path:
    return tiny_encoder(base)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_import_leaves_tensorflow_out():
    code = ("import sys\n"
            "import ssald_desktop.core.embeddings, ssald_desktop.core.index\n"
            "import ssald_desktop.core.query, ssald_desktop.commands.search\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'PySide6') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_store_round_trip_memmap_and_identical_preprocessing(base, encoder_path, tmp_path):
    from model.evaluate import encode as reference_encode
    from model.export import load_card, load_encoder
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode

    folder = image_folder(base, 40)
    steps = []
    r = run_encode(encode(folder, tmp_path / "store", encoder_path, batch_size=16), steps.append)
    assert r["encoded"] == 40 and r["skipped"] == 0 and r["count"] == 40
    assert [tuple(p) for p in steps] == [(0, 40), (16, 40), (32, 40), (40, 40)]

    st = EmbeddingStore(tmp_path / "store", create=False)
    v = st.vectors()
    assert isinstance(v, np.memmap) and v.dtype == np.float32 and v.shape == (40, 16)
    assert st.encoder_id == load_card(encoder_path)["encoder_sha256"]
    assert st.normspec_digest == "none" and st.normspec is None
    t = st.table()
    names = [f.stem for f in gz2_files(40)]
    assert list(t["id"]) == names == st.ids()
    assert np.isnan(t["ra"]).all() and np.isnan(t["dec"]).all()
    assert Path(t["source"][0]).name == f"{names[0]}.jpg"
    assert set(t["normspec"]) == {"none"} and set(t["encoder"]) == {st.encoder_id}
    header = json.loads((tmp_path / "store" / "store.json").read_text())
    assert header["input_size"] == 32 and header["scaling"]["kind"] == "uint8"

    # the stored vectors are those of model.evaluate's reference encoding of the same pixels
    from PIL import Image

    enc, _ = load_encoder(encoder_path)
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0
                     for f in gz2_files(40)])
    np.testing.assert_allclose(v, reference_encode(enc, imgs), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(st.vector(names[3]), v[3])
    st.close()


def test_cancel_keeps_finished_batches_and_resumes(base, encoder_path, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode

    folder = image_folder(base, 40)
    gen = encode(folder, tmp_path / "s", encoder_path, batch_size=16)
    assert tuple(next(gen)) == (0, 40)
    assert tuple(next(gen)) == (16, 40)
    gen.close()  # the GUI's Cancel
    assert EmbeddingStore(tmp_path / "s").count == 16
    r = run_encode(encode(folder, tmp_path / "s", encoder_path, batch_size=16))
    assert (r["encoded"], r["skipped"], r["count"]) == (24, 16, 40)


def test_reencode_only_what_changed(base, encoder_path, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode

    folder = tmp_path / "imgs"
    shutil.copytree(image_folder(base, 20), folder)
    run_encode(encode(folder, tmp_path / "s", encoder_path))
    r = run_encode(encode(folder, tmp_path / "s", encoder_path))
    assert (r["encoded"], r["rewritten"], r["skipped"]) == (0, 0, 20)

    st = EmbeddingStore(tmp_path / "s")
    files = sorted(folder.glob("*.jpg"))
    before = np.array(st.vectors())
    shutil.copyfile(files[0], files[5])  # object 5 now shows another galaxy
    os.utime(files[5], ns=(1, 1))
    shutil.copy2(gz2_files(1, 100)[0], folder / gz2_files(1, 100)[0].name)  # a new one
    r = run_encode(encode(folder, tmp_path / "s", encoder_path))
    assert (r["encoded"], r["rewritten"], r["skipped"], r["count"]) == (1, 1, 19, 21)
    st = EmbeddingStore(tmp_path / "s")
    after = st.vectors()
    assert st.rewrites == 1
    np.testing.assert_allclose(after[5], before[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.delete(after[:20], 5, 0), np.delete(before, 5, 0))


def test_vectors_of_another_encoder_are_refused(base, encoder_path, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode
    from ssald_desktop.core.errors import DataFileError

    folder = image_folder(base, 20)
    run_encode(encode(folder, tmp_path / "s", encoder_path))
    other = tiny_encoder(base, seed=1)
    with pytest.raises(DataFileError, match="another one.*new store"):
        run_encode(encode(folder, tmp_path / "s", other))
    assert EmbeddingStore(tmp_path / "s").count == 20


def test_vectors_of_another_normspec_are_refused(base, encoder_path, tmp_path):
    from PIL import Image

    from ssald_desktop.core.cutouts import NormSpec
    from ssald_desktop.core.embeddings import ArraySet, encode, encode_set, run_encode
    from ssald_desktop.core.errors import DataFileError

    run_encode(encode(image_folder(base, 20), tmp_path / "s", encoder_path))
    files = gz2_files(4, 200)
    imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    cut = ArraySet([f.stem for f in files], imgs, normspec=NormSpec(size=128, output_size=128),
                   row_order="top-down")
    with pytest.raises(DataFileError, match="NormSpec"):
        run_encode(encode_set(cut, tmp_path / "s", encoder_path))
    # into a store of its own it works, and records the digest
    r = run_encode(encode_set(cut, tmp_path / "s2", encoder_path))
    assert r["normspec_digest"] == NormSpec(size=128, output_size=128).digest()
    # an encoder trained on one NormSpec refuses cutouts of another
    from ssald_desktop.core.embeddings import EncoderInfo, encoder_info

    info = encoder_info(encoder_path)
    strict = EncoderInfo(info.path, info.encoder_id, info.bands, info.input_size, info.scaling,
                         NormSpec(q=9.0).to_dict(), info.card)
    with pytest.raises(DataFileError, match="trained on NormSpec"):
        run_encode(encode_set(cut, tmp_path / "s3", strict))


def test_hdf5_shards_of_real_galaxies(base, encoder_path, tmp_path):
    from PIL import Image

    from ssald_desktop.core.cutouts import NormSpec
    from ssald_desktop.core.dataset import ShardBuffer, shard_path, write_h5_shard
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode

    spec = NormSpec(size=128, output_size=128)
    files = gz2_files(12, 300)
    for shard in range(2):
        buf = ShardBuffer()
        for j, f in enumerate(files[shard * 6:(shard + 1) * 6]):
            rgb = np.asarray(Image.open(f).convert("RGB"))[::-1]  # stored bottom-up
            buf.ids.append(f"gz2-{f.stem}")
            buf.ra.append(10.0 + j)
            buf.dec.append(-1.0 - j)
            buf.fields.append("none")
            buf.petro.append(np.nan)
            buf.images.append(np.zeros((5, 128, 128), np.float32))
            buf.masks.append(np.zeros((5, 128, 128), bool))
            buf.rgb.append(np.ascontiguousarray(rgb))
        write_h5_shard(shard_path(tmp_path / "mined", "h5", shard), buf, spec)
    r = run_encode(encode(tmp_path / "mined", tmp_path / "s", encoder_path))
    assert r["encoded"] == 12
    st = EmbeddingStore(tmp_path / "s")
    assert st.normspec_digest == spec.digest() and st.header["row_order"] == "bottom-up"
    t = st.table()
    assert t["id"][0] == f"gz2-{files[0].stem}" and t["ra"][1] == 11.0 and t["dec"][1] == -2.0
    assert str(t["source"][7]).endswith("shard-000001.h5") and t["item"][7] == 1
    r = run_encode(encode(tmp_path / "mined", tmp_path / "s", encoder_path))
    assert r["skipped"] == 12


def test_bad_image_in_folder_is_named(base, encoder_path, tmp_path):
    from PIL import Image

    from ssald_desktop.core.embeddings import encode, run_encode
    from ssald_desktop.core.errors import DataFileError

    folder = tmp_path / "imgs"
    shutil.copytree(image_folder(base, 5), folder)
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).convert("I;16").save(folder / "deep.png")
    with pytest.raises(DataFileError, match=r"deep\.png: a 16-bit"):
        run_encode(encode(folder, tmp_path / "s", encoder_path))
    with pytest.raises(DataFileError, match="no PNG or JPEG"):
        run_encode(encode(tmp_path / "s", tmp_path / "s2", encoder_path, fmt="images"))


def test_bench_retrieval_on_labelled_gz2(base, encoder_path, tmp_path):
    from ssald_desktop.core.bench_search import bench_retrieval, retrieval_summary

    labels = {}
    for line in (GZ2 / "labels.csv").read_text().splitlines()[1:]:
        gid, lab = line.split(",")[:2]
        labels[gid] = lab
    chosen = {lab: sorted(g for g, x in labels.items() if x == lab)[:n]
              for lab, n in (("spiral", 30), ("non_spiral", 70), ("unlabeled", 20))}
    folder = tmp_path / "labelled"
    folder.mkdir()
    for ids in chosen.values():
        for g in ids:
            shutil.copy2(GZ2_IMAGES / f"{g}.jpg", folder / f"{g}.jpg")
    r = bench_retrieval(folder, GZ2 / "labels.csv", "spiral", 5, encoder_path,
                        store_dir=tmp_path / "s")
    assert r["n_images"] == 120 and r["n_labelled"] == 100 and r["n_positive"] == 30
    assert r["base_rate"] == pytest.approx(0.3)
    for key in ("precision_at_k", "raw_pixels_precision_at_k", "precision_at_k_all_neighbours"):
        assert 0 <= r[key] <= 1
    assert r["encoded_now"] == 120 and "precision@5" in retrieval_summary(r)
    again = bench_retrieval(folder, GZ2 / "labels.csv", "spiral", 5, encoder_path,
                            store_dir=tmp_path / "s")
    assert again["encoded_now"] == 0 and again["precision_at_k"] == r["precision_at_k"]
