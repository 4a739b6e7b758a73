"""Query by image (PNG/JPEG, FITS, indexed objects) and the embed/index/search commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA
from tests.core.test_embeddings import (
    gz2_files,
    image_folder,
    indexed_store,
    tiny_encoder,
)

RENDERS = DATA / "renders" / "gothic"


@pytest.fixture(scope="module")
def searcher(store_dir):
    from ssald_desktop.core.query import Searcher

    return Searcher(store_dir)


def test_query_by_a_jpeg_of_an_indexed_galaxy_finds_it_first(searcher):
    target = gz2_files(150)[37]
    r = searcher.search(files=[target], k=5)
    assert [h.rank for h in r.hits] == [1, 2, 3, 4, 5]
    assert r.hits[0].id == target.stem and r.hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert all(a.similarity >= b.similarity for a, b in zip(r.hits, r.hits[1:], strict=False))
    assert r.positives[0].kind == "png/jpeg" and not r.warnings


def test_query_by_png_and_by_flipped_8bit_fits_of_the_same_pixels(searcher, tmp_path):
    from astropy.io import fits

    target = gz2_files(150)[90]
    pixels = np.asarray(Image.open(target).convert("RGB"))
    Image.fromarray(pixels).save(tmp_path / "q.png")
    assert searcher.search(files=[tmp_path / "q.png"], k=1).hits[0].id == target.stem
    # RGBA with alpha: alpha dropped, same pixels
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "qa.png")
    assert searcher.search(files=[tmp_path / "qa.png"], k=1).hits[0].id == target.stem
    # an 8-bit FITS cube (R, G, B planes) in FITS row order (row 0 at the bottom)
    fits.PrimaryHDU(np.ascontiguousarray(np.transpose(pixels[::-1], (2, 0, 1)))).writeto(
        tmp_path / "q.fits")
    hit = searcher.search(files=[tmp_path / "q.fits"], k=1).hits[0]
    assert hit.id == target.stem and hit.similarity == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["ngc-3758.png", "discovery1.png", "ngc-3758_background.jpg"])
def test_query_by_a_gothic_render(searcher, name):
    r = searcher.search(files=[RENDERS / name], k=10)
    assert len(r.hits) == 10 and len({h.id for h in r.hits}) == 10
    assert all(np.isfinite(h.similarity) and -1 <= h.similarity <= 1 for h in r.hits)


def test_fits_one_band_and_cube_and_four_bands(searcher, tmp_path):
    from astropy.io import fits

    from ssald_desktop.core.errors import DataFileError

    rng = np.random.default_rng(1)
    galaxy = rng.normal(0, 0.02, (64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    galaxy += 3.0 * np.exp(-((xx - 32) ** 2 + (yy - 30) ** 2) / 40.0)
    fits.PrimaryHDU(galaxy).writeto(tmp_path / "one.fits")
    r = searcher.search(files=[tmp_path / "one.fits"], k=3)
    assert len(r.hits) == 3 and any("grey composite" in w for w in r.warnings)
    fits.PrimaryHDU(np.stack([galaxy, 0.8 * galaxy, 0.5 * galaxy])).writeto(tmp_path / "c3.fits")
    assert len(searcher.search(files=[tmp_path / "c3.fits"], k=3).hits) == 3
    fits.PrimaryHDU(np.stack([galaxy] * 5)).writeto(tmp_path / "c5.fits")
    assert len(searcher.search(files=[tmp_path / "c5.fits"], k=3).hits) == 3
    fits.PrimaryHDU(np.stack([galaxy] * 4)).writeto(tmp_path / "c4.fits")
    with pytest.raises(DataFileError, match=r"c4\.fits: 4 bands"):
        searcher.search(files=[tmp_path / "c4.fits"], k=3)
    fits.PrimaryHDU(np.ones((1, 5), np.float32)).writeto(tmp_path / "thin.fits")
    with pytest.raises(DataFileError, match=r"thin\.fits: .*1-pixel"):
        searcher.search(files=[tmp_path / "thin.fits"], k=3)
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    with pytest.raises(DataFileError, match=r"bad\.fits"):
        searcher.search(files=[tmp_path / "bad.fits"], k=3)


def test_bad_picture_files(searcher, tmp_path):
    from ssald_desktop.core.errors import DataFileError

    Image.fromarray(np.full((32, 32), 30000, np.uint16)).convert("I;16").save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    with pytest.raises(DataFileError, match=r"d\.png: a 16-bit PNG image"):
        searcher.search(files=[tmp_path / "d.png"], k=3)
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(DataFileError, match=r"dot\.png: the image is 1x1 pixels"):
        searcher.search(files=[tmp_path / "dot.png"], k=3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataFileError, match=r"empty\.jpg: empty file"):
        searcher.search(files=[tmp_path / "empty.jpg"], k=3)
    data = gz2_files(1)[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:200])
    with pytest.raises(DataFileError, match=r"cut\.jpg: not a readable"):
        searcher.search(files=[tmp_path / "cut.jpg"], k=3)


def test_more_like_this_negatives_and_combining(searcher):
    from ssald_desktop.core.errors import InvalidQueryError

    ids = searcher.store.ids()
    r = searcher.search(objects=[ids[10]], k=10)
    assert ids[10] not in [h.id for h in r.hits] and r.positives[0].kind == "object"
    v = np.array(searcher.store.vectors())
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = u @ u[10]
    cos[10] = -np.inf
    assert [h.id for h in r.hits] == [ids[i] for i in np.argsort(-cos, kind="stable")[:10]]
    # a negative: its look-alikes drop, the negative itself never appears
    neg = r.hits[0].id
    rn = searcher.search(objects=[ids[10]], negative_objects=[neg], k=10, negative_weight=0.5)
    assert neg not in [h.id for h in rn.hits]
    jn = ids.index(neg)
    for h in rn.hits:
        expect = float(u[h.row] @ u[10] - 0.5 * (u[h.row] @ u[jn]))
        assert h.similarity == pytest.approx(expect, abs=1e-5)
    # two positives: best match puts both of their files first
    files = [gz2_files(150)[3], gz2_files(150)[120]]
    rm = searcher.search(files=files, k=2, combine="max")
    assert {h.id for h in rm.hits} == {f.stem for f in files}
    rmean = searcher.search(files=files, k=5, combine="mean")
    assert len(rmean.hits) == 5
    with pytest.raises(InvalidQueryError, match="no object 'nope'"):
        searcher.search(objects=["nope"], k=3)
    with pytest.raises(InvalidQueryError, match=r"k=150 is larger than the index .*150 vectors, 1"):
        searcher.search(objects=[ids[0]], k=150)
    with pytest.raises(InvalidQueryError, match="at least one"):
        searcher.search(k=3)


@pytest.fixture(scope="module")
def normspec_store(base):
    """A store of gz2 images recorded as cutouts of one NormSpec, with its index."""
    from ssald_desktop.core.cutouts import NormSpec
    from ssald_desktop.core.embeddings import ArraySet, encode_set, run_encode
    from ssald_desktop.core.index import build_store_index, run_build

    spec = NormSpec(size=64, output_size=64)
    files = gz2_files(30, 500)
    imgs = [np.asarray(Image.open(f).convert("RGB"))[::-1] for f in files]
    out = base / "store-normspec"
    run_encode(encode_set(ArraySet([f.stem for f in files], imgs, normspec=spec,
                                   row_order="bottom-up"), out, tiny_encoder(base)))
    run_build(build_store_index(out))
    return out, spec


def test_normspec_of_a_real_cutout_is_checked(normspec_store, quiet_field, tmp_path):
    from astropy.coordinates import SkyCoord

    from ssald_desktop.core.cutouts import CutoutEngine
    from ssald_desktop.core.errors import InvalidQueryError
    from ssald_desktop.core.query import Searcher

    folder, spec = normspec_store
    star = SkyCoord(38.3018, -0.1339, unit="deg")  # the F star of spec-3126-54804-0211
    CutoutEngine(quiet_field, spec).cut(star).write_fits(tmp_path / "same.fits")
    other = spec.replace(q=10.0)
    CutoutEngine(quiet_field, other).cut(star).write_fits(tmp_path / "other.fits")
    s = Searcher(folder)
    r = s.search(files=[tmp_path / "same.fits"], k=5)
    assert len(r.hits) == 5 and r.positives[0].normspec_digest == spec.digest()
    assert r.index["normspec_digest"] == spec.digest()
    with pytest.raises(InvalidQueryError, match=rf"other\.fits: cut with NormSpec "
                       rf"{other.digest()}, but the index .* NormSpec {spec.digest()}"):
        s.search(files=[tmp_path / "other.fits"], k=5)
    # the same cutout straight from the frame set at that position gives the same results
    c = CutoutEngine(quiet_field, s.cutout_spec()).cut(star)
    rc = s.search(cutouts=[c], k=5)
    assert [h.id for h in rc.hits] == [h.id for h in r.hits]
    assert [h.similarity for h in rc.hits] == pytest.approx([h.similarity for h in r.hits],
                                                            abs=1e-5)
    assert rc.positives[0].kind == "cutout"
    # a cutout against an index of plain images: accepted with a warning
    r = Searcher(indexed_store(folder.parent)).search(files=[tmp_path / "same.fits"], k=2)
    assert any("unknown" in w for w in r.warnings)


def test_truncated_index_and_wrong_encoder(store_dir, base, tmp_path):
    from ssald_desktop.core.errors import DataFileError
    from ssald_desktop.core.query import Searcher

    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    with pytest.raises(DataFileError, match="did not make the index"):
        Searcher(copy, encoder=tiny_encoder(base, seed=1)).search(files=[gz2_files(1)[0]], k=2)
    idx = copy / "index.faiss"
    idx.write_bytes(idx.read_bytes()[:100])
    with pytest.raises(DataFileError, match=r"index\.faiss: truncated"):
        Searcher(copy)


def _cli(argv, capsys):
    from ssald_desktop.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_embed_index_search(base, tmp_path, capsys):
    enc = tiny_encoder(base)
    images = image_folder(base, 40)
    store = tmp_path / "store"
    code, out, _ = _cli(["embed", "--encoder", enc, "--images", images, "--out", store,
                         "--batch", "16", "--json", tmp_path / "e.json"], capsys)
    assert code == 0 and "40 new" in out and "[" in out
    assert json.loads((tmp_path / "e.json").read_text())["count"] == 40
    code, out, _ = _cli(["embed", "--encoder", enc, "--images", images, "--out", store, "--quiet"],
                        capsys)
    assert code == 0 and "40 unchanged" in out
    code, out, _ = _cli(["index", "--store", store, "--json", tmp_path / "i.json", "--quiet"],
                        capsys)
    assert code == 0 and "flat" in out and "whitening: none: 40 vectors are too few" in out
    assert json.loads((tmp_path / "i.json").read_text())["kind"] == "flat"
    code, out, _ = _cli(["index", "--store", store, "--kind", "hnsw", "--recall-k", "10",
                         "--quiet"], capsys)
    assert code == 0 and "hnsw" in out
    code, out, _ = _cli(["index", "--store", store, "--kind", "hnsw", "--recall-k", "10",
                         "--whiten", "pca", "--quiet"], capsys)
    assert code == 0 and "whitening: pca" in out  # the search below runs on this one

    target = gz2_files(40)[7]
    code, out, err = _cli(["search", "--index", store, "--query", target, "--k", "5", "--json",
                           tmp_path / "r.json"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "id", "similarity"]
    assert lines[1].split()[:2] == ["1", target.stem]
    r = json.loads((tmp_path / "r.json").read_text())
    assert [h["rank"] for h in r["results"]] == [1, 2, 3, 4, 5]
    assert r["results"][0]["id"] == target.stem and r["results"][0]["ra"] is None
    assert r["index"]["kind"] == "hnsw" and r["positives"][0]["name"] == str(target)

    code, out, err = _cli(["search", "--index", store, "--object", gz2_files(40)[2].stem,
                           "--negative", gz2_files(40)[3].stem, str(RENDERS / "discovery2.png"),
                           "--k", "3"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 4

    # bad input: one line on stderr, exit status 2
    Image.fromarray(np.zeros((8, 8), np.uint16)).convert("I;16").save(tmp_path / "d.png")
    for argv, what in [
        (["search", "--index", store, "--query", tmp_path / "d.png"], "16-bit"),
        (["search", "--index", store, "--object", target.stem, "--k", "40"], "k=40 is larger"),
        (["search", "--index", tmp_path / "nowhere", "--object", "x"], "not an embedding store"),
        (["index", "--store", tmp_path / "nowhere"], "not an embedding store"),
        (["embed", "--encoder", tmp_path / "no.keras", "--images", images, "--out", store],
         "no such encoder"),
        (["embed", "--encoder", tiny_encoder(base, 1), "--images", images, "--out", store],
         "another one"),
        (["embed", "--encoder", enc, "--shards", images, "--out", tmp_path / "s2"],
         "no HDF5 or TFRecord shards here"),
    ]:
        code, out, err = _cli(argv, capsys)
        assert code == 2, (argv, out, err)
        assert what in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------------------------
# The bundled sample index (resources/sample/index), relocatable
# --------------------------------------------------------------------------------------------

SAMPLE_INDEX = Path(__file__).resolve().parents[2] / "resources" / "sample" / "index"


def test_bundled_sample_index_is_relocatable_and_complete(tmp_path):
    """Sources and the encoder are stored relative to the store, so a copy works elsewhere."""
    import csv

    from ssald_desktop.core.embeddings import EmbeddingStore, encoder_info

    root = tmp_path / "moved"
    shutil.copytree(SAMPLE_INDEX.parents[1], root, ignore=shutil.ignore_patterns("frames"))
    store = EmbeddingStore(root / "sample" / "index", create=False)
    header = json.loads((SAMPLE_INDEX / "store.json").read_text())
    assert not Path(header["encoder_path"]).is_absolute()
    default = SAMPLE_INDEX.parents[1] / "encoders" / "default" / "encoder.keras"
    assert store.encoder_id == encoder_info(default).encoder_id
    with open(SAMPLE_INDEX.parent / "galaxies.csv") as f:
        galaxies = {r["id"]: r for r in csv.DictReader(f)}
    ids = store.ids()
    # Every detected galaxy but the one the miner skipped (too masked / at the edge).
    assert set(ids) <= set(galaxies) and len(ids) >= len(galaxies) - 2
    table = store.table()
    assert all(not Path(s).is_absolute() for s in table["source"])
    # Thumbnails come from the moved shards, top-down 8-bit RGB.
    images = store.object_images(ids[:3] + ["no such id"])
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images[:3])
    assert images[3] is None
    # Position lookup: the object itself, within 1 arcsec; nothing 3 arcsec away.
    g = galaxies[ids[0]]
    ra, dec = float(g["ra"]), float(g["dec"])
    assert store.nearest_object(ra, dec, 1.0) == ids[0]
    assert store.nearest_object(ra + 0.5 / 3600, dec, 1.0) == ids[0]
    assert store.nearest_object(ra, dec + 3 / 3600, 1.0) is None
    assert store.nearest_object(float("nan"), dec) is None


def test_bundled_sample_index_answers_a_query():
    from ssald_desktop.core.query import Searcher

    s = Searcher(SAMPLE_INDEX)
    r = s.search(files=[DATA / "renders" / "gothic" / "ngc-3758.png"], k=10)
    assert len(r.hits) == 10 and r.hits[0].similarity >= r.hits[-1].similarity
    assert all(np.isfinite(h.ra) for h in r.hits)
