"""The miner on the real frames: shards, manifest, resume after a crash, bad input."""

import csv
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from photutils.detection import find_peaks

from ssald_desktop.cli import main as cli_main
from ssald_desktop.core.cutouts import CutoutEngine, NormSpec
from ssald_desktop.core.dataset import (
    LocalMirror,
    Manifest,
    Miner,
    galaxy_selection_sql,
    mine,
    read_galaxy_list,
    read_h5_shards,
    shard_path,
)
from ssald_desktop.core.errors import DataFileError, InvalidQueryError, SsaldError
from ssald_desktop.core.frames import FieldId
from tests.conftest import FRAMES, QUIET_FIELD

SPEC = NormSpec(size=32, output_size=32)


@pytest.fixture(scope="module")
def galaxy_csv(tmp_path_factory):
    """Bright sources of both real fields (r-band peaks), plus one position in no field."""
    from ssald_desktop.core.frames import open_frame_set

    rows = []
    for name in ("2820-3-122", "2583-2-136"):
        r = open_frame_set(FRAMES / name, bands=["r"])["r"]
        peaks = find_peaks(
            np.where(r.mask, 0, r.data), threshold=1.0, box_size=41, border_width=60
        )[:40]
        sky = r.wcs.pixel_to_world(peaks["x_peak"], peaks["y_peak"])
        rows += [(f"{name}-{k}", c.ra.deg, c.dec.deg) for k, c in enumerate(sky)]
    rows.append(("nowhere", 10.0, 10.0))
    rows.append(rows[0])  # a duplicate line: mined once
    path = tmp_path_factory.mktemp("lists") / "galaxies.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["objID", "RA", "DEC"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def mirror():
    return LocalMirror(FRAMES)


def _all_ids(out):
    ids = []
    for shard in read_h5_shards(out):
        ids += shard["id"]
    return ids


def test_mirror_locates_fields(mirror):
    assert set(mirror.fields) == {FieldId(2820, 3, 122), FieldId(2583, 2, 136)}
    located = mirror.locate(np.array([38.33, 323.34, 10.0]), np.array([-0.107, -0.73, 10.0]), 16)
    assert located == [FieldId(2820, 3, 122), FieldId(2583, 2, 136), None]


def test_mine_writes_h5_shards_with_normspec(galaxy_csv, mirror, tmp_path, quiet_field):
    galaxies = read_galaxy_list(galaxy_csv)
    assert len(galaxies) == 82
    counts = mine(galaxies, tmp_path, mirror, SPEC, shard_size=16, workers=2)
    assert counts["outside"] == 1
    assert counts["done"] + counts.get("masked", 0) + counts["outside"] == 81
    ids = _all_ids(tmp_path)
    assert len(ids) == counts["done"] == len(set(ids))
    shards = list(read_h5_shards(tmp_path))
    assert all(s["normspec"] == SPEC for s in shards)
    assert all(len(s["id"]) <= 16 for s in shards)
    # the stored cutout equals a direct cut of the same position
    # (two workers: which field fills the first shard depends on timing)
    s, k = next((s, i) for s in shards for i, f in enumerate(s["field"]) if f == "2820-3-122")
    direct, _, _ = CutoutEngine(quiet_field, SPEC).cut_arrays([s["ra"][k]], [s["dec"][k]])
    np.testing.assert_array_equal(s["images"][k], direct[0])
    assert s["rgb"].shape[1:] == (32, 32, 3) and s["rgb"].dtype == np.uint8
    with h5py.File(shard_path(tmp_path, "h5", 0)) as h:
        assert h.attrs["normspec_digest"] == SPEC.digest()


def test_resume_skips_finished_work(galaxy_csv, mirror, tmp_path):
    galaxies = read_galaxy_list(galaxy_csv)
    mine(galaxies, tmp_path, mirror, SPEC, shard_size=16)
    before = sorted(p.name for p in tmp_path.glob("h5/*/*"))
    progress = list(Miner(tmp_path, mirror, SPEC, shard_size=16).run(galaxies))
    assert progress[0].done == progress[0].total  # nothing left to do
    assert sorted(p.name for p in tmp_path.glob("h5/*/*")) == before


def test_crash_between_shard_and_manifest_loses_and_duplicates_nothing(
    galaxy_csv, mirror, tmp_path, monkeypatch
):
    galaxies = read_galaxy_list(galaxy_csv)
    calls = {"n": 0}
    real = Manifest.record_shard

    def crash_on_third(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash after the shard file was renamed")
        return real(self, *a, **kw)

    monkeypatch.setattr(Manifest, "record_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        for _ in Miner(tmp_path, mirror, SPEC, shard_size=8, workers=1).run(galaxies):
            pass
    monkeypatch.setattr(Manifest, "record_shard", real)
    assert len(list(tmp_path.glob("h5/*/*.h5"))) >= 3  # the orphan is on disk
    counts = mine(galaxies, tmp_path, mirror, SPEC, shard_size=8, workers=1)
    ids = _all_ids(tmp_path)
    assert len(ids) == len(set(ids)) == counts["done"]
    assert counts["done"] + counts.get("masked", 0) + counts["outside"] == 81


def test_killed_process_resumes_without_duplicates(galaxy_csv, tmp_path):
    """SIGKILL a real `ssald-cli mine` mid-run, then resume it."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ssald_desktop.cli",
        "mine",
        "--csv",
        str(galaxy_csv),
        "--out",
        str(out),
        "--mirror",
        str(FRAMES),
        "--shard-size",
        "4",
        "--size",
        "32",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.sqlite").exists():
            m = Manifest(out / "manifest.sqlite")
            n = len(m.recorded_shards())
            m.close()
            if n >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the miner finished before it could be killed; make the run longer"
    assert cli_main(cmd[3:]) == 0
    ids = _all_ids(out)
    assert len(ids) == len(set(ids))
    m = Manifest(out / "manifest.sqlite")
    counts = m.counts()
    m.close()
    assert counts["done"] == len(ids)
    assert counts["done"] + counts.get("masked", 0) + counts["outside"] == 81


def test_tfrecord_shards_read_back(galaxy_csv, mirror, tmp_path):
    import tensorflow as tf

    galaxies = read_galaxy_list(galaxy_csv)[:10]
    mine(galaxies, tmp_path, mirror, SPEC, shard_size=100, formats=("h5", "tfrecord"))
    path = shard_path(tmp_path, "tfrecord", 0)
    records = list(tf.data.TFRecordDataset(str(path)))
    h5 = next(read_h5_shards(tmp_path))
    assert len(records) == len(h5["id"])
    ex = tf.train.Example.FromString(records[0].numpy())
    f = ex.features.feature
    shape = list(f["shape"].int64_list.value)
    img = np.frombuffer(f["image"].bytes_list.value[0], np.float32).reshape(shape)
    np.testing.assert_array_equal(img, h5["images"][0])
    assert f["id"].bytes_list.value[0].decode() == h5["id"][0]
    assert f["normspec_digest"].bytes_list.value[0].decode() == SPEC.digest()


def test_other_normspec_refused(galaxy_csv, mirror, tmp_path):
    galaxies = read_galaxy_list(galaxy_csv)[:3]
    mine(galaxies, tmp_path, mirror, SPEC)
    with pytest.raises(SsaldError, match="another NormSpec"):
        mine(galaxies, tmp_path, mirror, SPEC.replace(q=3))


def test_bad_galaxy_lists(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("objid,ra,dec\n1,38.3,-0.1\n2,abc,-0.1\n")
    with pytest.raises(InvalidQueryError, match="line 3"):
        read_galaxy_list(p)
    p.write_text("objid,ra,dec\n1,380,-0.1\n")
    with pytest.raises(InvalidQueryError, match="out of range"):
        read_galaxy_list(p)
    p.write_text("name,x,y\n1,2,3\n")
    with pytest.raises(DataFileError, match="needs 'ra' and 'dec'"):
        read_galaxy_list(p)
    with pytest.raises(DataFileError, match="no such file"):
        read_galaxy_list(tmp_path / "missing.csv")
    p.write_text("objid,ra,dec\n1,02:33:12.0,-00:06:00\n")
    t = read_galaxy_list(p)
    assert t["ra"][0] == pytest.approx(38.3, abs=1e-6)


def test_selection_sql_only_from_numbers():
    sql = galaxy_selection_sql(38.2, 38.4, -0.2, 0.0, r_max=17.77, limit=500)
    assert "TOP 500" in sql and "BETWEEN 38.2 AND 38.4" in sql and "p.type = 3" in sql
    for bad in [
        ("38; DROP TABLE PhotoObj", 38.4, -0.2, 0.0),
        (float("nan"), 38.4, -0.2, 0.0),
        (38.4, 38.2, -0.2, 0.0),
        (38.2, 38.4, -95, 0.0),
    ]:
        with pytest.raises(InvalidQueryError):
            galaxy_selection_sql(*bad)
    with pytest.raises(InvalidQueryError):
        galaxy_selection_sql(38.2, 38.4, -0.2, 0.0, limit="10; --")


def test_cli_mine_and_errors(galaxy_csv, tmp_path, capsys):
    assert (
        cli_main(
            [
                "mine",
                "--csv",
                str(galaxy_csv),
                "--out",
                str(tmp_path / "o"),
                "--mirror",
                str(QUIET_FIELD),
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert "galaxies handled" in capsys.readouterr().out
    rc = cli_main(
        [
            "mine",
            "--csv",
            str(tmp_path / "none.csv"),
            "--out",
            str(tmp_path / "p"),
            "--mirror",
            str(QUIET_FIELD),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "none.csv" in err and "Traceback" not in err


def test_cli_cutouts(tmp_path, capsys):
    from PIL import Image

    assert (
        cli_main(
            [
                "cutouts",
                "38.3018",
                "-0.1339",
                "--field",
                str(QUIET_FIELD),
                "--out",
                str(tmp_path),
                "--format",
                "both",
            ]
        )
        == 0
    )
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (64, 64)
    assert len(list(tmp_path.glob("*.fits"))) == 1
    # sexagesimal with a negative declination: "--" ends the options
    assert (
        cli_main(
            [
                "cutouts",
                "--field",
                str(QUIET_FIELD),
                "--out",
                str(tmp_path),
                "--",
                "02:33:12.43",
                "-00:08:02.0",
            ]
        )
        == 0
    )
    rc = cli_main(["cutouts", "40", "0", "--field", str(QUIET_FIELD), "--out", str(tmp_path)])
    assert rc == 2 and "outside field 2820-3-122" in capsys.readouterr().err


def test_mine_through_sdss_with_recorded_frames(galaxy_csv, tmp_path, monkeypatch):
    """The online path: frames come through astroquery's (mocked) request with real files,
    are cached once, and the galaxies are cut from them."""
    from astroquery.sdss import SDSS

    from ssald_desktop.core import sky
    from ssald_desktop.core.dataset import SDSSSource
    from tests.core.test_sky import FakeSDSS, frame_files

    server = FakeSDSS(files=frame_files())
    monkeypatch.setattr(SDSS, "_request", server)
    galaxies = read_galaxy_list(galaxy_csv)
    galaxies = galaxies[[str(i).startswith("2820-3-122") for i in galaxies["id"]]][:12]
    galaxies["run"], galaxies["camcol"], galaxies["field"] = 2820, 3, 122
    client = sky.SDSSClient(tmp_path / "cache", timeout=5, retries=0)
    counts = mine(galaxies, tmp_path / "out", SDSSSource(client), SPEC)
    assert counts == {"done": 12}
    assert len(server.downloads) == 5  # one download per band, the field fetched once
    assert len(_all_ids(tmp_path / "out")) == 12


def test_field_failing_midway_keeps_cut_objects_and_duplicates_none(galaxy_csv, mirror, tmp_path):
    """A bad Petrosian radius in the second batch fails the field after a shard was recorded:
    only the objects not yet cut are marked as errors, and resuming duplicates nothing."""
    galaxies = read_galaxy_list(galaxy_csv)
    galaxies = galaxies[[str(i).startswith("2820-3-122") for i in galaxies["id"]]][:8]
    galaxies["petro_r"] = [3.0] * 4 + [-9999.0] * 4  # SDSS's missing-value sentinel
    spec = NormSpec(size=4, size_unit="petrosian", output_size=32)
    for _ in range(2):  # the second run resumes (and fails again on the same objects)
        counts = mine(galaxies, tmp_path, mirror, spec, shard_size=4, batch=4, workers=1)
        assert counts == {"done": 4, "error": 4}
        ids = _all_ids(tmp_path)
        assert sorted(ids) == sorted(str(i) for i in galaxies["id"][:4])
    m = Manifest(tmp_path / "manifest.sqlite")
    (msg,) = {r[0] for r in m.db.execute("SELECT message FROM objects WHERE status='error'")}
    m.close()
    assert "Petrosian radius" in msg
