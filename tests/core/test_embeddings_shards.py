"""TFRecord shards as an image set, and merging the distributed job's embedding shards.

Real data: galaxies (r-band peaks) of the quiet SDSS field 2820-3-122, mined into HDF5 and
TFRecord shards by the real miner. The helpers at the top are shared with
tests/model/test_encode.py through the session's base temporary folder (made once per run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUIET_FIELD
from tests.core.test_embeddings import tiny_encoder

N_GALAXIES = 26  # shards of 8, 8, 8, 2
ASINH = {"kind": "asinh", "unit": "nanomaggies", "softening": 0.05, "maximum": 10.0,
         "clip": [-1.0, 1.0]}


def spec():
    from ssald_desktop.core.cutouts import NormSpec

    return NormSpec(bands=("g", "r", "i"), size=32, output_size=32)


def mined_shards(base: Path) -> Path:
    """The quiet field's brightest galaxies mined into HDF5 + TFRecord shards of 8; cached."""
    out = base / "mined-2820-3-122"
    if (out / "done").exists():
        return out
    from astropy.table import Table
    from photutils.detection import find_peaks

    from ssald_desktop.core.dataset import LocalMirror, mine
    from ssald_desktop.core.frames import open_frame_set

    r = open_frame_set(QUIET_FIELD, bands=["r"])["r"]
    peaks = find_peaks(np.where(r.mask, 0, r.data), threshold=0.5, box_size=21,
                       border_width=40)
    peaks.sort("peak_value", reverse=True)
    sky = r.wcs.pixel_to_world(peaks["x_peak"][:N_GALAXIES], peaks["y_peak"][:N_GALAXIES])
    galaxies = Table({"id": [f"2820-3-122-{k:02d}" for k in range(N_GALAXIES)],
                      "ra": sky.ra.deg, "dec": sky.dec.deg})
    tmp = base / "mined-2820-3-122.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    bands = ["g", "r", "i"]  # three frames to decompress, not five: a faster fixture
    counts = mine(galaxies, tmp, LocalMirror(QUIET_FIELD, bands=bands), spec(), shard_size=8,
                  workers=1,
                  formats=("h5", "tfrecord"))
    assert counts == {"done": N_GALAXIES}, counts
    tmp.rename(out)
    (out / "done").write_text("")
    return out


def cube_encoder(base: Path) -> Path:
    """A tiny band-cube encoder (g, r, i; asinh scaling, 16 px input), exported; cached."""
    out = base / "tiny-cube-encoder" / "encoder.keras"
    if not out.exists():
        import keras

        from model.encoder import Encoder
        from model.export import export_encoder

        keras.utils.set_random_seed(3)
        enc = Encoder(bands=3, input_size=16, width=8, depths=[1, 1], embedding_dim=8)
        export_encoder(enc, out, normspec=spec().to_dict(), scaling=ASINH,
                       notes="test encoder, random weights")
    return out


def embedding_job(base: Path, encoder: Path, name: str, **kw) -> Path:
    """Run the distributed job in this process (default strategy) on the TFRecords; cached."""
    from model.encode import run_job
    from ssald_desktop.core.progress import run_to_end

    out = base / name
    if not (out / "manifest.json").exists():
        run_to_end(run_job(str(encoder), str(mined_shards(base) / "tfrecord"), str(out),
                           batch_size=kw.pop("batch_size", 4),
                           shard_size=kw.pop("shard_size", 5), **kw))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def mined(base) -> Path:
    return mined_shards(base)


# --------------------------------------------------------------------------------------------
# TFRecord shards as an image set
# --------------------------------------------------------------------------------------------


def test_import_leaves_tensorflow_out():
    import subprocess
    import sys

    code = ("import sys\n"
            "from ssald_desktop.core.embeddings import TFRecordShards, import_shards\n"
            "import model.encode\n"
            "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["rgb", "cube"])
def test_tfrecord_set_gives_the_pixels_and_vectors_of_the_hdf5_set(base, mined, tmp_path, kind):
    from ssald_desktop.core.embeddings import (
        EmbeddingStore,
        H5Shards,
        TFRecordShards,
        encode,
        encoder_info,
        open_image_set,
        prepare_images,
        run_encode,
    )

    enc = tiny_encoder(base) if kind == "rgb" else cube_encoder(base)
    info = encoder_info(enc)
    h5 = open_image_set(mined, info, "h5")
    tf_set = open_image_set(mined / "tfrecord", info)  # auto: a folder of TFRecords only
    assert isinstance(h5, H5Shards) and isinstance(tf_set, TFRecordShards)
    assert tf_set.image_key == h5.image_key == ("rgb" if kind == "rgb" else "images")
    assert tf_set.normspec == h5.normspec == spec().to_dict()
    hr, tr = h5.refs(), tf_set.refs()
    assert [r.id for r in tr] == [r.id for r in hr] and len(tr) == N_GALAXIES
    # positions from the miner's manifest: the float64 values the HDF5 shards hold
    assert [(r.ra, r.dec, r.item) for r in tr] == [(r.ra, r.dec, r.item) for r in hr]
    assert tr[9].source.endswith("shard-000001.tfrecord") and tr[9].item == 1
    # read in a scrambled order, across shards
    order = [13, 0, 25, 7, 8, 1]
    a, b = h5.read([hr[i] for i in order]), tf_set.read([tr[i] for i in order])
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(prepare_images(a, info.scaling, info.input_size),
                                  prepare_images(b, info.scaling, info.input_size))

    r1 = run_encode(encode(mined, tmp_path / "h5", enc, fmt="h5", batch_size=10))
    r2 = run_encode(encode(mined, tmp_path / "tf", enc, fmt="tfrecord", batch_size=10))
    assert r1["encoded"] == r2["encoded"] == N_GALAXIES
    s1, s2 = EmbeddingStore(tmp_path / "h5"), EmbeddingStore(tmp_path / "tf")
    assert s1.ids() == s2.ids()
    np.testing.assert_allclose(s2.vectors(), s1.vectors(), rtol=0, atol=1e-6)
    same = ("encoder_id", "normspec", "normspec_digest", "row_order", "image_key", "dim")
    assert {k: s1.header[k] for k in same} == {k: s2.header[k] for k in same}
    assert s2.normspec_digest == spec().digest()
    # re-encode only what changed: nothing
    r3 = run_encode(encode(mined, tmp_path / "tf", enc, fmt="tfrecord"))
    assert (r3["encoded"], r3["rewritten"], r3["skipped"]) == (0, 0, N_GALAXIES)
    if kind == "rgb":  # thumbnails come from the TFRecord's composites, flipped to top-down
        img = s2.object_images([s2.ids()[3]])[0]
        np.testing.assert_array_equal(img, h5.read([hr[3]])[0][::-1])


def test_tfrecord_without_manifest_reads_ids_from_the_records(base, mined, tmp_path):
    from ssald_desktop.core.embeddings import H5Shards, TFRecordShards

    folder = tmp_path / "loose"
    folder.mkdir()
    for f in sorted((mined / "tfrecord").glob("*/*.tfrecord")):
        shutil.copy2(f, folder / f.name)
    shutil.copy2(mined / "normspec.json", folder / "normspec.json")
    t = TFRecordShards(folder)
    h = H5Shards(mined).refs()
    refs = t.refs()
    assert [r.id for r in refs] == [r.id for r in h]
    # the records hold float32 positions: within 1e-5 deg (0.04")
    np.testing.assert_allclose([r.ra for r in refs], [r.ra for r in h], rtol=0, atol=1e-5)
    np.testing.assert_allclose([r.dec for r in refs], [r.dec for r in h], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(t.read([refs[-1]])[0], H5Shards(mined).read([h[-1]])[0])


def test_tfrecord_errors_name_the_problem(base, mined, tmp_path):
    from ssald_desktop.core.embeddings import TFRecordShards
    from ssald_desktop.core.errors import DataFileError

    folder = tmp_path / "t"
    shutil.copytree(mined / "tfrecord", folder / "tfrecord")
    with pytest.raises(DataFileError, match="no normspec.json"):
        TFRecordShards(folder)
    shutil.copy2(mined / "normspec.json", folder / "normspec.json")
    shard = folder / "tfrecord" / "000" / "shard-000001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-300])  # truncated
    with pytest.raises(DataFileError, match=r"shard-000001\.tfrecord: not a readable TFRecord"):
        TFRecordShards(folder)
    with pytest.raises(DataFileError, match="remote file system"):
        TFRecordShards("gs://no-such-bucket/tfrecord")
    with pytest.raises(DataFileError, match="no TFRecord shards"):
        TFRecordShards(tmp_path)


# --------------------------------------------------------------------------------------------
# Merging embedding shards
# --------------------------------------------------------------------------------------------


def test_import_shards_then_index_and_search_from_the_cli(base, mined, tmp_path, capsys):
    from ssald_desktop.cli import main as cli_main
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode

    enc = tiny_encoder(base)
    shards = embedding_job(base, enc, "emb-rgb")
    store = tmp_path / "store"
    assert cli_main(["embed", "--from-shards", str(shards), "--store", str(store),
                     "--encoder", str(enc), "--quiet"]) == 0
    assert f"holds {N_GALAXIES} vectors" in capsys.readouterr().out
    st = EmbeddingStore(store, create=False)
    ids = st.ids()
    assert len(ids) == len(set(ids)) == N_GALAXIES
    t = st.table()
    assert set(t["encoder"]) == {st.encoder_id} and set(t["normspec"]) == {spec().digest()}
    assert str(t["source"][0]).endswith(".tfrecord") and np.isfinite(t["ra"]).all()
    # the same vectors as the desktop's own encoding of the same shards
    run_encode(encode(mined, tmp_path / "desk", enc, fmt="tfrecord"))
    desk = EmbeddingStore(tmp_path / "desk")
    rows = [desk.row_of(i) for i in ids]
    np.testing.assert_allclose(st.vectors(), np.asarray(desk.vectors())[rows], rtol=0,
                               atol=1e-5)
    # merging again changes nothing; the index builds and answers
    r = st.import_shards(shards)
    assert (r["imported"], r["rewritten"], r["skipped"]) == (0, 0, N_GALAXIES)
    assert cli_main(["index", "--store", str(store), "--kind", "flat", "--quiet"]) == 0
    assert cli_main(["search", "--index", str(store), "--object", ids[4], "--k", "3"]) == 0
    hits = [line.split()[1] for line in capsys.readouterr().out.splitlines()[-3:]]
    assert len(hits) == 3 and ids[4] not in hits and set(hits) <= set(ids)  # more like this


def test_mixed_encoders_are_refused(base, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore, import_shards, run_encode
    from ssald_desktop.core.errors import DataFileError

    a = embedding_job(base, tiny_encoder(base), "emb-rgb")
    b = embedding_job(base, tiny_encoder(base, seed=1), "emb-rgb-seed1")
    st = EmbeddingStore(tmp_path / "s")
    st.import_shards(a)
    with pytest.raises(DataFileError, match="another one.*new store"):
        st.import_shards(b)
    assert st.count == N_GALAXIES
    # a shard of another encoder inside one job's folder
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    other = sorted((b / "shards").glob("*.json"))[0]
    shutil.copy2(other, mixed / "shards" / ("zz-" + other.name))
    with pytest.raises(DataFileError, match=r"zz-.*two encoders"):
        run_encode(import_shards(mixed, tmp_path / "s2"))
    # the job's encoder given on this machine must be that encoder
    with pytest.raises(DataFileError, match="not the encoder of the shards"):
        run_encode(import_shards(a, tmp_path / "s3", encoder=tiny_encoder(base, seed=1)))


def test_corrupt_truncated_missing_and_duplicate_shards_are_named(base, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore, import_shards, run_encode
    from ssald_desktop.core.errors import DataFileError

    good = embedding_job(base, tiny_encoder(base), "emb-rgb")

    def copy(name):
        d = tmp_path / name
        shutil.copytree(good, d)
        return d, sorted((d / "shards").glob("*.npy"))

    d, npys = copy("truncated")
    npys[2].write_bytes(npys[2].read_bytes()[:-10])
    with pytest.raises(DataFileError, match=rf"{npys[2].name}: truncated"):
        run_encode(import_shards(d, tmp_path / "s1"))

    d, npys = copy("corrupt")
    data = bytearray(npys[1].read_bytes())
    data[-1] ^= 0xFF
    npys[1].write_bytes(bytes(data))
    with pytest.raises(DataFileError, match=rf"{npys[1].name}: corrupt"):
        run_encode(import_shards(d, tmp_path / "s2"))
    first = json.loads(npys[0].with_suffix(".json").read_text())["count"]
    assert EmbeddingStore(tmp_path / "s2").count == first  # the shard before it is merged

    d, npys = copy("sidecar")
    npys[0].with_suffix(".json").write_text('{"format": "ssald-embedding-shard", "cou')
    with pytest.raises(DataFileError, match=rf"{npys[0].stem}\.json: not a readable"):
        run_encode(import_shards(d, tmp_path / "s3"))

    d, npys = copy("missing")
    npys[1].with_suffix(".json").unlink()  # rows 5..7 of the first input file
    with pytest.raises(DataFileError, match=r"shard-000000\.tfrecord: rows 5\.\.7 are in no "
                                            "embedding shard"):
        run_encode(import_shards(d, tmp_path / "s4"))
    npys[-1].with_suffix(".json").unlink()  # the only shard of the last input file
    with pytest.raises(DataFileError, match=r"1 of 4 input file\(s\) have no embedding shard"):
        run_encode(import_shards(d, tmp_path / "s4"))

    d, npys = copy("twice")
    for suffix in (".npy", ".json"):
        shutil.copy2(npys[0].with_suffix(suffix), d / "shards" / f"copy{suffix}")
    side = json.loads((d / "shards" / "copy.json").read_text())
    side["vectors"] = "copy.npy"
    (d / "shards" / "copy.json").write_text(json.dumps(side))
    with pytest.raises(DataFileError, match="in two embedding shards"):
        run_encode(import_shards(d, tmp_path / "s5"))
    assert not (tmp_path / "s5" / "vectors.f32").exists()  # refused before any merge
