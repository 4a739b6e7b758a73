"""The local launcher: real ``python -m model.train`` processes on GZ2 galaxies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ssald_desktop.core.launch import (
    LaunchError,
    LocalLauncher,
    RunRegistry,
    launch,
    make_launcher,
    open_run,
)
from ssald_desktop.core.launch.base import derive_state
from ssald_desktop.core.launch.local import train_argv
from tests.launch.conftest import tiny_config, wait_for


def test_train_argv_is_an_argument_list():
    argv = train_argv("/py", "/r/c.json", "/r", "/d; rm -rf ~", "mirrored", ["train.seed=3"])
    assert argv == ["/py", "-m", "model.train", "--config", "/r/c.json", "--out", "/r",
                    "--data", "/d; rm -rf ~", "--strategy", "mirrored", "--set", "train.seed=3"]


def test_stop_resume_finish(gz2_subset, tmp_path):
    registry = RunRegistry(tmp_path / "reg")
    # planned far longer than the test waits (so it is surely running when stopped); the
    # resume shortens it with train.epochs
    cfg = tiny_config(steps=100_000, log_every=5, checkpoint_every=10, batch_size=16)
    run = launch("local", cfg, str(gz2_subset), name="local stop", registry=registry)
    assert isinstance(run.launcher, LocalLauncher)
    assert run.folder == registry.folder(run.id)
    pid = run.record.pid
    assert os.getsid(pid) == pid  # its own session: outlives the terminal and the GUI
    wait_for(lambda: (run.folder / "checkpoints" / "latest.json").exists()
             and run.status().state == "running", 90, what="the first checkpoint")
    stopped = run.stop(timeout=10)
    assert stopped.state == "stopped" and not stopped.alive
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    step = json.loads((run.folder / "checkpoints" / "latest.json").read_text())["step"]
    assert step >= 10
    # Reattach from a fresh registry object (as after a restart), then resume there.
    again = open_run(run.id, RunRegistry(registry.root))
    assert again.status().state == "stopped"
    with pytest.raises(LaunchError, match="unknown key.*epoch"):
        again.resume(["train.epoch=3"])
    end = step + 20
    again.resume([f"train.epochs={end // 10}"])
    assert again.record.pid != pid
    final = again.wait(interval=0.5, timeout=150)
    assert final.state == "finished" and final.step == end and final.progress == 1.0
    starts = [m["step"] for m in again.metrics() if m.get("event") == "start"]
    assert starts == [0, step]
    assert Path(final.encoder) == again.folder / "encoder.keras"
    with pytest.raises(LaunchError, match="has finished"):
        again.resume()
    got = again.fetch(tmp_path / "copy")
    assert Path(got["encoder"]).stat().st_size > 10_000
    from ssald_desktop.core.embeddings import encoder_info

    assert encoder_info(got["encoder"], verify=True).input_size == 32
    # A new handle's first poll hands out the whole history; the next only what is new.
    fresh = open_run(run.id, RunRegistry(registry.root))
    first = fresh.poll()
    assert len(first.metrics) > 5 and first.metrics == fresh.metrics()
    assert first.log and first.log == (fresh.folder / "train.log").read_text(errors="replace")
    assert fresh.poll().metrics == [] and fresh.poll().log == ""
    assert [r.id for r in RunRegistry(registry.root).records()] == [run.id]
    registry.remove(run.id)
    assert registry.ids() == [] and not again.folder.exists()


def test_bad_inputs(tmp_path, gz2_subset):
    registry = RunRegistry(tmp_path / "reg")
    with pytest.raises(LaunchError, match="no such data folder"):
        launch("local", tiny_config(), str(tmp_path / "missing"), registry=registry)
    with pytest.raises(LaunchError, match="unknown key.*epoch"):
        launch("local", {"train": {"epoch": 3}}, str(gz2_subset), registry=registry)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LaunchError, match="bad.json: not valid JSON"):
        launch("local", bad, str(gz2_subset), registry=registry)
    with pytest.raises(LaunchError, match="cannot run locally"):
        make_launcher("local", strategy="tpu")
    with pytest.raises(LaunchError, match="not a training target"):
        make_launcher("ftp://x")
    with pytest.raises(LaunchError, match="no run 'nope'"):
        open_run("nope", registry)
    with pytest.raises(LaunchError, match="not a run id"):
        open_run("../etc", registry)
    assert registry.ids() == []


def test_status_rules():
    tail = "step 3\nOSError: [Errno 28] No space left on device"
    assert derive_state({"alive": True, "run": {"state": "running"}}, False, "") == (
        "running", "")
    assert derive_state({"alive": False, "run": {"state": "finished"}}, False, "")[0] == (
        "finished")
    assert derive_state({"alive": False, "run": {"state": "running"}}, True, "")[0] == "stopped"
    state, msg = derive_state({"alive": False, "run": None, "exit_status": 1}, False, tail)
    assert state == "failed" and "disk of the run folder is full" in msg and "Errno 28" in msg
    state, msg = derive_state({"alive": False, "run": None, "exit_status": 2}, False, "boom")
    assert state == "failed" and "exited with status 2" in msg and msg.endswith("boom")
