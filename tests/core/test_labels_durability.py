"""Reliability of the label store (issue 6, item 7): crashes, read-only stores, full disks.

Every scenario runs the writer in a real subprocess and checks, from a fresh connection, that
every label the writer acknowledged (printed, flushed, after ``add()`` returned) is in the store
and that SQLite's integrity check passes.

The tests run as root here, and root ignores file permissions; the read-only cases therefore
drop CAP_DAC_OVERRIDE (and friends) from the writer's capability bounding set before it execs,
or mount the store's folder read-only in a private mount namespace. The full-disk cases use a
file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG) and, where the
kernel allows a private mount namespace, a real tmpfs that fills up (ENOSPC).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ssald_desktop.core.labels import BUILTIN_LABELS, LabelStore
from tests._sandbox import can, drop_dac_capabilities, libc, private_mounts, readonly_mount

REPO = Path(__file__).resolve().parents[2]

# The writer: adds labels (and undoes every fifth) in a loop, printing each acknowledged event.
WRITER = r"""
import sys
from ssald_desktop.core.labels import BUILTIN_LABELS, LabelStore, LabelStoreError
path, run = sys.argv[1], int(sys.argv[2])
limit = int(sys.argv[3]) if len(sys.argv) > 3 else -1
try:
    store = LabelStore(path)
    i = 0
    while limit < 0 or i < limit:
        oid = f"run{run}-obj{i}"
        label = BUILTIN_LABELS[i % len(BUILTIN_LABELS)]
        eid = store.add(oid, label, user="crash-test", round=run, source="sampler",
                        ra=(run * 7.3 + i * 0.01) % 360, dec=(i % 180) - 89.5,
                        note="x" * (i % 50))
        sys.stdout.write(f"A {eid} {oid} {BUILTIN_LABELS.index(label)}\n")
        sys.stdout.flush()
        if i % 5 == 4:
            uid = store.undo(oid)
            sys.stdout.write(f"U {uid} {oid} {eid}\n")
            sys.stdout.flush()
        i += 1
except LabelStoreError as exc:
    sys.stdout.write("E " + str(exc).replace("\n", " ") + "\n")
    sys.stdout.flush()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _parse(lines: list[str]) -> tuple[dict[int, tuple[str, str]], dict[int, tuple[str, int]],
                                      list[str]]:
    """Acknowledged adds {id: (object, label)}, undos {id: (object, reverted id)}, errors."""
    adds, undos, errors = {}, {}, []
    for line in lines:
        if not line.endswith("\n"):
            continue  # cut short by the kill: never acknowledged
        parts = line.split()
        if parts[0] == "A":
            adds[int(parts[1])] = (parts[2], BUILTIN_LABELS[int(parts[3])])
        elif parts[0] == "U":
            undos[int(parts[1])] = (parts[2], int(parts[3]))
        elif parts[0] == "E":
            errors.append(line[2:].strip())
    return adds, undos, errors


def _check_survived(path: Path, adds: dict, undos: dict) -> None:
    """Every acknowledged event is in the store, with its object and label; file is sound."""
    with LabelStore(path) as store:
        assert store.integrity_check() == "ok"
        events = {e.id: e for e in store.events_since(0)}
        current = store.current()
    for eid, (oid, label) in adds.items():
        assert eid in events, f"acknowledged event {eid} ({oid}) was lost"
        assert (events[eid].object_id, events[eid].label, events[eid].kind) == (oid, label,
                                                                                 "label")
    reverted = {e.reverts for e in events.values() if e.kind == "undo"}
    for eid, (_oid, target) in undos.items():
        assert eid in events and events[eid].kind == "undo" and events[eid].reverts == target
    for eid, (oid, label) in adds.items():
        if eid in reverted:
            assert oid not in current
        else:
            assert current[oid] == label
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def _read_lines(stream, sink: list[str], first: threading.Event) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        first.set()
    first.set()


@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_loses_no_acknowledged_label(tmp_path):
    path = tmp_path / "labels.sqlite"
    rng = random.Random(20260611)
    all_adds: dict[int, tuple[str, str]] = {}
    all_undos: dict[int, tuple[str, int]] = {}
    kills = 0
    t0 = time.monotonic()
    while kills < 30:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(kills)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(), bufsize=1)
        lines: list[str] = []
        first = threading.Event()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines, first),
                                  daemon=True)
        reader.start()
        if kills % 5 == 0:  # anywhere from start-up and opening (schema, WAL) onwards
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            assert first.wait(20), "the writer acknowledged nothing within 20 s"
            time.sleep(rng.uniform(0.0, 0.12))  # somewhere inside the add/commit loop
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        proc.stderr.close()
        kills += 1
        adds, undos, errors = _parse(lines)
        assert not errors, errors
        all_adds.update(adds)
        all_undos.update(undos)
        _check_survived(path, all_adds, all_undos)  # reopen after every kill
    assert time.monotonic() - t0 < 100
    assert len(all_adds) > 100 and all_undos
    with LabelStore(path) as store:
        assert store.new_labels_since(0) == len(
            {e.id for e in store.events_since(0) if e.kind == "label"}) - len(
            [e for e in store.events_since(0) if e.kind == "undo"])


# -- read-only ----------------------------------------------------------------------------------
def _seed(path: Path, n: int = 40) -> dict[int, tuple[str, str]]:
    with LabelStore(path) as store:
        return {store.add(f"seed{i}", BUILTIN_LABELS[i % 4], user="seed", ra=10.0 + i,
                          dec=-1.0): (f"seed{i}", BUILTIN_LABELS[i % 4]) for i in range(n)}


READER = r"""
import json, sys
from ssald_desktop.core.labels import LabelStore, LabelStoreError
with LabelStore(sys.argv[1], read_only=True) as s:
    try:
        s.add("x", "unsure")
        refused = None
    except LabelStoreError as exc:
        refused = str(exc)
    print(json.dumps({"current": s.current(), "refused": refused}))
"""


def _read_only_view(path: Path, preexec) -> dict:
    """What a read-only opener sees of the store (under the same restrictions)."""
    r = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                       text=True, env=_env(), preexec_fn=preexec, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _run_writer(path: Path, preexec=None, limit: int = 5, timeout: float = 30):
    r = subprocess.run([sys.executable, "-c", WRITER, str(path), "99", str(limit)],
                       capture_output=True, text=True, env=_env(), preexec_fn=preexec,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr
    return _parse(r.stdout.splitlines(keepends=True))


@pytest.mark.parametrize("mode_file, mode_dir, words", [
    (0o444, 0o755, "the file is read-only"),
    (0o644, 0o555, "its folder"),
    (0o444, 0o555, "read-only"),
])
def test_readonly_file_or_folder_gives_a_clear_error(tmp_path, mode_file, mode_dir, words):
    folder = tmp_path / "store"
    path = folder / "labels.sqlite"
    acked = _seed(path)
    assert sorted(p.name for p in folder.iterdir()) == ["labels.sqlite"]  # closed cleanly
    preexec = drop_dac_capabilities if os.geteuid() == 0 else None
    if preexec is not None and not can(preexec):
        pytest.skip("running as root without CAP_SETPCAP: cannot make a file read-only to root")
    path.chmod(mode_file)
    folder.chmod(mode_dir)
    try:
        adds, _, errors = _run_writer(path, preexec)
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert not adds and len(errors) == 1, (adds, errors)
    assert str(path) in errors[0] and words in errors[0], errors[0]
    assert "labels saved before are kept" in errors[0]
    path.chmod(mode_file)
    folder.chmod(mode_dir)
    try:  # the store can still be opened for reading, and refuses writes clearly
        view = _read_only_view(path, preexec)
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert view["current"] == {oid: label for oid, label in acked.values()}
    assert "opened read-only" in view["refused"]
    for side in folder.glob("labels.sqlite-*"):
        side.chmod(0o644)  # a read-only opener may leave an empty -shm with the file's mode
    _check_survived(path, acked, {})


def test_readonly_file_system_gives_a_clear_error(tmp_path):
    folder = tmp_path / "store"
    path = folder / "labels.sqlite"
    acked = _seed(path)
    preexec = readonly_mount(folder)
    if not can(preexec):
        pytest.skip("no private mount namespace here (needs CAP_SYS_ADMIN)")
    adds, _, errors = _run_writer(path, preexec)
    assert not adds and len(errors) == 1, (adds, errors)
    assert str(path) in errors[0] and "mounted read-only" in errors[0], errors[0]
    view = _read_only_view(path, preexec)
    assert view["current"] == {oid: label for oid, label in acked.values()}
    _check_survived(path, acked, {})


# -- full disk ----------------------------------------------------------------------------------
def _file_size_limit(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_file_size_limit_gives_a_clear_error_and_keeps_acknowledged_labels(tmp_path):
    path = tmp_path / "labels.sqlite"
    acked = _seed(path)
    # Above the 32 KiB shared-memory index and the current file, below what 2000 labels need.
    limit = max(path.stat().st_size, 32768) + 150_000
    adds, undos, errors = _run_writer(path, _file_size_limit(limit), limit=2000)
    assert len(errors) == 1, errors
    assert adds, "the writer should have saved some labels before the limit"
    msg = errors[0]
    assert str(path) in msg and "file-size limit" in msg and str(limit) in msg, msg
    _check_survived(path, {**acked, **adds}, undos)
    with LabelStore(path) as store:  # the store keeps working once the limit is gone
        store.add("after", "unsure")
        assert store.current()["after"] == "unsure"


FULL_DISK = r"""
import json, os, sys
from ssald_desktop.core.labels import LabelStore, LabelStoreError
mnt = sys.argv[1]
path = os.path.join(mnt, "labels.sqlite")
filler = os.path.join(mnt, "filler")
acked, error = {}, None
store = LabelStore(path)
with open(filler, "wb") as f:  # leave only a little room
    f.write(b"\0" * (int(sys.argv[2])))
try:
    for i in range(100000):
        eid = store.add(f"obj{i}", "not DAGN", note="n" * 200)
        acked[eid] = f"obj{i}"
except LabelStoreError as exc:
    error = str(exc)
before = (store.current(), store.integrity_check())
store.close()
os.remove(filler)  # free the space, reopen: everything acknowledged must be there
with LabelStore(path) as again:
    cur, check = again.current(), again.integrity_check()
    events = {e.id: e.object_id for e in again.events_since(0)}
print(json.dumps({"error": error, "acked": len(acked), "path": path,
                  "lost": [e for e, o in acked.items() if events.get(e) != o or o not in cur],
                  "check": check, "check_while_full": before[1],
                  "while_full_lost": [o for o in acked.values() if o not in before[0]]}))
"""


def test_full_disk_gives_a_clear_error_and_keeps_acknowledged_labels(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()

    def preexec() -> None:
        private_mounts()
        if libc().mount(b"tmpfs", os.fsencode(mnt), b"tmpfs", 0, b"size=512k") != 0:
            raise OSError(ctypes.get_errno(), "mount tmpfs")

    if not can(preexec):
        pytest.skip("no private mount namespace here (needs CAP_SYS_ADMIN)")
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(mnt), str(300_000)],
                       capture_output=True, text=True, env=_env(), preexec_fn=preexec,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["acked"] > 0 and out["error"], out
    assert out["path"] in out["error"] and "disk is full" in out["error"], out["error"]
    assert out["lost"] == [] and out["while_full_lost"] == []
    assert out["check"] == "ok" and out["check_while_full"] == "ok"
