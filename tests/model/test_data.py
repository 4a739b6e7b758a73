"""Input pipelines on real data: GZ2 JPEG folders and shards cut from the real SDSS frames."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import shutil

import h5py
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from model.augment import Augmenter
from model.config import AugmentConfig
from model.data import (
    DataError,
    apply_scaling,
    detect_format,
    load_dataset,
    make_training_dataset,
    split_validation,
)
from ssald_desktop.core.cutouts import CutoutEngine, NormSpec
from ssald_desktop.core.dataset import (
    Manifest,
    ShardBuffer,
    shard_path,
    write_h5_shard,
    write_tfrecord_shard,
)
from tests.conftest import DATA

GZ2 = DATA / "gz2" / "images"
SPEC = NormSpec(size=32, output_size=32)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """50 real GZ2 JPEGs copied to a temporary folder."""
    folder = tmp_path_factory.mktemp("gz2")
    for f in sorted(GZ2.glob("*.jpg"))[:50]:
        shutil.copy(f, folder / f.name)
    return folder


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def cutouts(quiet_field):
    """24 real five-band cutouts (32x32) of the quiet SDSS field, on a grid of positions."""
    r = quiet_field["r"]
    ys, xs = np.meshgrid(np.linspace(250, 1250, 4), np.linspace(250, 1800, 6), indexing="ij")
    sky = r.wcs.pixel_to_world(xs.ravel(), ys.ravel())
    ra, dec = np.asarray(sky.ra.deg), np.asarray(sky.dec.deg)
    engine = CutoutEngine(quiet_field, SPEC)
    data, mask, _ = engine.cut_arrays(ra, dec)
    rgb = engine.rgb_batch(data)
    ids = [f"J{a:09.5f}{d:+09.5f}" for a, d in zip(ra, dec, strict=True)]
    return ids, ra, dec, data, mask, rgb


def buffer(cutouts, sl):
    ids, ra, dec, data, mask, rgb = cutouts
    return ShardBuffer(ids=ids[sl], ra=list(ra[sl]), dec=list(dec[sl]),
                       fields=["2820-3-122"] * len(ids[sl]), petro=[np.nan] * len(ids[sl]),
                       images=list(data[sl]), masks=list(mask[sl]), rgb=list(rgb[sl]))


@pytest.fixture(scope="module")
def shards(cutouts, tmp_path_factory):
    """The miner's layout: h5/ and tfrecord/ shards (16 + 8), normspec.json, manifest."""
    out = tmp_path_factory.mktemp("mined")
    manifest = Manifest(out / "manifest.sqlite")
    for shard, sl in enumerate((slice(0, 16), slice(16, 24))):
        buf = buffer(cutouts, sl)
        write_h5_shard(shard_path(out, "h5", shard), buf, SPEC)
        write_tfrecord_shard(shard_path(out, "tfrecord", shard), buf, SPEC)
        manifest.record_shard(shard, [f"h5/000/shard-{shard:06d}.h5",
                                      f"tfrecord/000/shard-{shard:06d}.tfrecord"],
                              buf.ids, np.array(buf.ra), np.array(buf.dec), buf.fields)
    manifest.close()
    (out / "normspec.json").write_text(SPEC.to_json() + "\n")
    return out


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def test_jpeg_folder_loads(jpeg_folder):
    assert detect_format(str(jpeg_folder)) == "images"
    ds, info = load_dataset(str(jpeg_folder))
    assert (info.count, info.bands, info.image_size, info.format) == (50, 3, 128, "images")
    assert info.normspec is None and info.scaling == {"kind": "uint8", "divide": 255.0}
    assert ds.element_spec.shape == (128, 128, 3) and ds.element_spec.dtype == tf.float32
    images = np.stack(list(ds.as_numpy_iterator()))
    assert images.shape == (50, 128, 128, 3)
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
    # Sorted file order; pixels exactly as PIL decodes them (accurate IDCT), divided by 255.
    files = sorted(jpeg_folder.glob("*.jpg"))
    assert info.ids == [f.name for f in files]
    for k in (0, 49):
        ref = np.asarray(Image.open(files[k]), dtype=np.float32) / 255
        np.testing.assert_array_equal(images[k], ref)
    ds64, info64 = load_dataset(str(jpeg_folder), image_size=64)
    assert info64.image_size == 64 and next(iter(ds64)).shape == (64, 64, 3)
    dsg, infog = load_dataset(str(jpeg_folder), bands=1)
    assert infog.bands == 1 and next(iter(dsg)).shape == (128, 128, 1)


def test_truncated_jpeg_is_named(jpeg_folder, tmp_path):
    folder = copy_folder(jpeg_folder, tmp_path / "imgs")
    good = sorted(folder.glob("*.jpg"))[10].read_bytes()
    (folder / "broken.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"broken\.jpg.*truncated"):
        load_dataset(str(folder))
    # check="full" decodes every file with PIL and names it too.
    with pytest.raises(DataError, match=r"broken\.jpg"):
        load_dataset(str(folder), check="full")


def test_text_file_named_png_is_named(jpeg_folder, tmp_path):
    folder = copy_folder(jpeg_folder, tmp_path / "imgs")
    (folder / "notes.png").write_text("this is not an image\n")
    with pytest.raises(DataError, match=r"notes\.png.*not a readable PNG/JPEG"):
        load_dataset(str(folder))


def test_bad_sources(jpeg_folder, tmp_path):
    with pytest.raises(DataError, match=r"5 bands were requested") as err:
        load_dataset(str(jpeg_folder), bands=5)
    assert "3 bands" in str(err.value) and str(jpeg_folder) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG/JPEG images, HDF5 shards"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no PNG/JPEG images found"):
        load_dataset(str(tmp_path / "empty"), fmt="images")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(str(tmp_path / "missing"))
    mixed = copy_folder(jpeg_folder, tmp_path / "mixed")
    Image.open(sorted(mixed.glob("*.jpg"))[0]).resize((64, 64)).save(mixed / "small.png")
    with pytest.raises(DataError, match=r"small\.png is 64x64.*image_size"):
        load_dataset(str(mixed))
    ds, info = load_dataset(str(mixed), image_size=96)
    assert info.count == 51 and ds.element_spec.shape == (96, 96, 3)
    assert len(list(ds)) == 51


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def test_detect_format(shards, tmp_path):
    assert detect_format(str(shards)) == "h5"  # HDF5 wins when the miner wrote both
    assert detect_format(str(shards / "tfrecord")) == "tfrecord"
    assert detect_format(str(shards / "h5" / "000" / "shard-000000.h5")) == "h5"
    assert detect_format(str(shards / "tfrecord" / "*" / "*.tfrecord")) == "tfrecord"
    assert detect_format("gs://some-bucket/ssald/tfrecord") == "tfrecord"  # not listed
    with pytest.raises(DataError, match="no such file"):
        detect_format(str(tmp_path / "nothing-here"))


def test_h5_shards_rgb(shards, cutouts):
    ids, _, _, data, _, rgb = cutouts
    ds, info = load_dataset(str(shards))
    assert (info.format, info.count, info.bands, info.image_size) == ("h5", 24, 3, 32)
    assert info.normspec == json.loads(SPEC.to_json()) == SPEC.to_dict()
    with h5py.File(shards / "h5" / "000" / "shard-000000.h5", "r") as h:
        assert info.normspec == json.loads(h.attrs["normspec"])
    assert info.ids == ids
    assert len(info.files) == 2
    got = np.stack(list(ds.as_numpy_iterator()))
    np.testing.assert_array_equal(got, rgb.astype(np.float32) / 255)
    assert ds.cardinality().numpy() == 24
    with pytest.raises(DataError, match=r"have 3 bands .* but 5 bands were requested"):
        load_dataset(str(shards), bands=5)


def test_h5_shards_band_cube(shards, cutouts):
    _, _, _, data, _, _ = cutouts
    ds, info = load_dataset(str(shards), image_key="images", bands=5)
    assert info.bands == 5 and info.scaling["kind"] == "asinh"
    got = np.stack(list(ds.as_numpy_iterator()))
    assert got.shape == (24, 32, 32, 5) and got.dtype == np.float32
    want = apply_scaling(data.transpose(0, 2, 3, 1), info.scaling)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert -1 <= got.min() and got.max() <= 1 and got.max() > 0.3
    with pytest.raises(DataError, match=r"have 5 bands .* but 3 bands were requested"):
        load_dataset(str(shards), image_key="images", bands=3)


def test_tfrecord_shards(shards, cutouts, tmp_path):
    ids, _, _, data, _, rgb = cutouts
    ds, info = load_dataset(str(shards / "tfrecord"))
    assert (info.format, info.count, info.bands, info.image_size) == ("tfrecord", 24, 3, 32)
    assert info.normspec == SPEC.to_dict()
    assert info.ids == ids  # from the manifest
    np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())),
                                  rgb.astype(np.float32) / 255)
    cube, cinfo = load_dataset(str(shards), fmt="tfrecord", image_key="images")
    assert cinfo.bands == 5
    np.testing.assert_allclose(np.stack(list(cube.as_numpy_iterator())),
                               apply_scaling(data.transpose(0, 2, 3, 1), cinfo.scaling),
                               atol=2e-6)
    # Shards copied without the manifest: counted and read by one pass over the records.
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in sorted((shards / "tfrecord").glob("*/*.tfrecord")):
        shutil.copy(p, loose / p.name)
    shutil.copy(shards / "normspec.json", loose / "normspec.json")
    ds2, info2 = load_dataset(str(loose / "*.tfrecord"))
    assert info2.count == 24 and info2.ids == ids and info2.normspec == SPEC.to_dict()
    with pytest.raises(DataError, match=r"have 3 bands .* but 5"):
        load_dataset(str(loose), bands=5)


def test_training_batches_and_pairs(shards):
    ds, info = load_dataset(str(shards))
    batches = make_training_dataset(ds, batch_size=8, shuffle_buffer=64, seed=1, repeat=False)
    again = make_training_dataset(ds, batch_size=8, shuffle_buffer=64, seed=1, repeat=False)
    # The same seed, the same order (first pass of each).
    np.testing.assert_array_equal(next(iter(batches)).numpy(), next(iter(again)).numpy())
    assert batches.element_spec.shape == (8, 32, 32, 3)
    assert len(list(batches)) == 3
    loose = make_training_dataset(ds, batch_size=10, shuffle_buffer=0, seed=1, repeat=False,
                                  drop_remainder=False, cache=False)
    assert [b.shape[0] for b in loose] == [10, 10, 4]
    aug = Augmenter(AugmentConfig(), 32, 3)
    pairs = make_training_dataset(ds, batch_size=5, shuffle_buffer=64, seed=2, augmenter=aug)
    spec = pairs.element_spec
    assert isinstance(spec, tuple) and len(spec) == 2
    assert spec[0].shape == spec[1].shape == (5, 32, 32, 3)
    it = iter(pairs)
    for _ in range(6):  # repeats past the end of the 24 images
        v1, v2 = next(it)
        assert not np.allclose(v1.numpy(), v2.numpy())
    (tr, tinfo), (va, vinfo) = split_validation(ds, info, 0.25, seed=0)
    assert (tinfo.count, vinfo.count) == (18, 6)
    assert len(list(tr)) == 18 and len(list(va)) == 6
    assert set(tinfo.ids).isdisjoint(vinfo.ids) and set(tinfo.ids) | set(vinfo.ids) == set(
        info.ids)
