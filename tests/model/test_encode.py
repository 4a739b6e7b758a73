"""``python -m model.encode``: the distributed encoding job on the miner's real shards.

The shards are galaxies of the quiet SDSS field 2820-3-122 mined by the real miner (shared with
tests/core/test_embeddings_shards.py). Two logical CPU devices must be configured before
TensorFlow initialises, so the mirrored run is a subprocess (``--logical-cpus 2``).
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
from tests.core.test_embeddings import tiny_encoder
from tests.core.test_embeddings_shards import (
    N_GALAXIES,
    cube_encoder,
    embedding_job,
    mined_shards,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def mined(base) -> Path:
    return mined_shards(base)


def _job(encoder, data, out, **kw):
    from model.encode import run_job
    from ssald_desktop.core.progress import run_to_end

    kw.setdefault("batch_size", 4)
    kw.setdefault("shard_size", 5)
    return run_to_end(run_job(str(encoder), str(data), str(out), **kw))


def test_mirrored_on_two_logical_cpus_matches_the_desktop(base, mined, tmp_path):
    from ssald_desktop.core.embeddings import EmbeddingStore, encode, run_encode

    enc = tiny_encoder(base)
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "model.encode", "--encoder", str(enc), "--data",
           str(mined / "tfrecord"), "--out", str(out), "--strategy", "mirrored",
           "--logical-cpus", "2", "--batch-size", "4", "--shard-size", "5", "--quiet"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # 26 objects in steps of 2 replicas x 2: the last step is padded, nothing is dropped
    assert summary["replicas"] == 2 and summary["count"] == N_GALAXIES
    assert summary["shards"] == 7  # files of 8, 8, 8, 2 rows in units of at most 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == N_GALAXIES

    st = EmbeddingStore(tmp_path / "merged")
    res = st.import_shards(out)
    assert res["imported"] == N_GALAXIES
    run_encode(encode(mined, tmp_path / "desk", enc, fmt="tfrecord"))
    desk = EmbeddingStore(tmp_path / "desk")
    ids = st.ids()
    assert len(ids) == len(set(ids)) == N_GALAXIES and sorted(ids) == sorted(desk.ids())
    rows = [desk.row_of(i) for i in ids]
    np.testing.assert_allclose(st.vectors(), np.asarray(desk.vectors())[rows], rtol=0,
                               atol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_each_worker_encodes_and_writes_its_own_files(base, mined, tmp_path):
    """Two worker processes on this machine (TF_CONFIG on loopback ports): ~20-40 s."""
    import os

    from ssald_desktop.core.embeddings import EmbeddingStore

    enc = tiny_encoder(base)
    reference = embedding_job(base, enc, "emb-rgb")
    out = tmp_path / "emb"
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "model.encode", "--encoder", str(enc), "--data",
             str(mined / "tfrecord"), "--out", str(out), "--strategy", "multiworker",
             "--batch-size", "4", "--shard-size", "5", "--quiet"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    summaries = [json.loads(o.strip().splitlines()[-1]) for o, _ in results]
    assert [s["workers"] for s in summaries] == [2, 2]
    # files 0 and 2 (8 + 8 rows) for worker 0, files 1 and 3 (8 + 2) for worker 1
    assert [s["encoded"] for s in summaries] == [16, 10]
    assert summaries[0]["count"] == N_GALAXIES and "count" not in summaries[1]  # the chief
    by_worker = {}
    for f in (out / "shards").glob("*.json"):
        side = json.loads(f.read_text())
        by_worker.setdefault(side["worker"], set()).add(Path(side["input"]).name)
    assert by_worker == {0: {"shard-000000.tfrecord", "shard-000002.tfrecord"},
                         1: {"shard-000001.tfrecord", "shard-000003.tfrecord"}}
    st = EmbeddingStore(tmp_path / "s")
    st.import_shards(out)
    ref = EmbeddingStore(tmp_path / "ref")
    ref.import_shards(reference)
    assert st.ids() == ref.ids() and len(set(st.ids())) == N_GALAXIES
    np.testing.assert_allclose(st.vectors(), ref.vectors(), rtol=0, atol=1e-5)


def test_crash_between_write_and_record_resumes_without_duplicates(base, mined, tmp_path,
                                                                     monkeypatch):
    import model.encode as me
    from ssald_desktop.core.embeddings import EmbeddingStore

    enc = tiny_encoder(base)
    reference = embedding_job(base, enc, "emb-rgb")  # the same job, never interrupted
    out = tmp_path / "emb"
    real = me.write_shard
    calls = {"n": 0}

    def crash_on_third(out_dir, unit, obj, vectors, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # the vectors reach the disk, the sidecar (the record) does not
            me._write_atomic(me._join(out_dir, me.SHARDS_DIR, unit.name + ".npy"),
                             me._npy_bytes(vectors))
            raise KeyboardInterrupt("simulated crash between write and record")
        return real(out_dir, unit, obj, vectors, **kw)

    monkeypatch.setattr(me, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _job(enc, mined / "tfrecord", out)
    monkeypatch.setattr(me, "write_shard", real)
    assert len(list((out / "shards").glob("*.json"))) == 2
    assert len(list((out / "shards").glob("*.npy"))) == 3  # an orphan without its record
    assert not (out / "manifest.json").exists()
    from ssald_desktop.core.embeddings import import_shards, run_encode
    from ssald_desktop.core.errors import DataFileError

    with pytest.raises(DataFileError, match="no embedding shard"):  # unfinished: refused
        run_encode(import_shards(out, tmp_path / "early"))

    summary = _job(enc, mined / "tfrecord", out)  # resume
    assert (summary["shards_skipped"], summary["shards_written"]) == (2, 5)
    assert summary["encoded"] == N_GALAXIES - 8 and summary["count"] == N_GALAXIES

    # a lost record (the last shard's sidecar) is redone, and only it
    last = sorted((out / "shards").glob("*.json"))[-1]
    last.unlink()
    summary = _job(enc, mined / "tfrecord", out)
    assert (summary["shards_skipped"], summary["shards_written"]) == (6, 1)

    st = EmbeddingStore(tmp_path / "s")
    st.import_shards(out)
    ref = EmbeddingStore(tmp_path / "ref")
    ref.import_shards(reference)
    assert st.ids() == ref.ids() and len(set(st.ids())) == N_GALAXIES
    np.testing.assert_array_equal(st.vectors(), ref.vectors())


def test_a_job_folder_is_one_job(base, mined, tmp_path):
    from model.encode import EncodeJobError

    out = tmp_path / "emb"
    _job(cube_encoder(base), mined / "tfrecord", out)
    with pytest.raises(EncodeJobError, match="another encoder.*new --out"):
        _job(tiny_encoder(base), mined / "tfrecord", out)
    with pytest.raises(EncodeJobError, match="--shard-size 5"):
        _job(cube_encoder(base), mined / "tfrecord", out, shard_size=8)
    # the band-cube encoder's card has the shards' NormSpec; other cutouts are refused
    other = tmp_path / "other"
    shutil.copytree(mined / "tfrecord", other / "tfrecord")
    spec = json.loads((mined / "normspec.json").read_text())
    (other / "normspec.json").write_text(json.dumps({**spec, "q": 3.0}))
    with pytest.raises(EncodeJobError, match="another NormSpec"):
        _job(cube_encoder(base), other, tmp_path / "emb2")


def test_ids_twice_in_the_input_are_reported(base, mined, tmp_path):
    from model.encode import ShardError

    data = tmp_path / "dup"
    data.mkdir()
    first = mined / "tfrecord" / "000" / "shard-000000.tfrecord"
    shutil.copy2(first, data / "a.tfrecord")
    shutil.copy2(first, data / "b.tfrecord")  # the same galaxies again
    shutil.copy2(mined / "normspec.json", data / "normspec.json")
    with pytest.raises(ShardError, match="'2820-3-122-00' is in two embedding shards"):
        _job(tiny_encoder(base), data, tmp_path / "emb")


def test_clear_errors_from_the_command_line(base, mined, tmp_path, capsys):
    from model.encode import main

    enc = str(tiny_encoder(base))
    common = ["--encoder", enc, "--data", str(mined / "tfrecord"), "--out", str(tmp_path / "o")]
    # TPU strategy without a TPU: the existing HardwareError, as one line
    assert main([*common, "--strategy", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "strategy 'tpu' needs a TPU" in err and "Traceback" not in err
    assert main([*common, "--logical-cpus", "2"]) == 2
    assert "goes with --strategy mirrored" in capsys.readouterr().err
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy2(sorted((DATA / "gz2" / "images").glob("*.jpg"))[0], images)
    assert main(["--encoder", enc, "--data", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "ssald-cli embed --images" in capsys.readouterr().err
    assert main(["--encoder", str(tmp_path / "none.keras"), *common[2:]]) == 2
    assert "none.keras: no such encoder" in capsys.readouterr().err


def test_a_changed_input_file_is_encoded_again(base, mined, tmp_path):
    """A resumed job redoes the shards of an input file rewritten since (new signature)."""
    enc = tiny_encoder(base)
    shutil.copytree(mined, tmp_path / "m")
    data, out = tmp_path / "m" / "tfrecord", tmp_path / "emb"
    _job(enc, data, out)
    again = _job(enc, data, out)
    assert (again["shards_skipped"], again["shards_written"]) == (7, 0)
    first = sorted(data.rglob("*.tfrecord"))[0]  # 8 rows: two shards of 5 and 3
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    redo = _job(enc, data, out)
    assert (redo["shards_skipped"], redo["shards_written"]) == (5, 2)
