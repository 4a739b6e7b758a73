"""The training panel on real ``model.train`` runs of GZ2 galaxies (pytest-qt, offscreen)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QThreadPool

from ssald_desktop.ui import training_panel
from ssald_desktop.ui.training_panel import (
    PLOTS,
    TrainingPanel,
    _effective_config,
    config_summary,
    quiet_log,
    run_outcome,
)
from ssald_desktop.ui.workers import TaskRunner
from tests.launch.conftest import REMOTE_PYTHON, SSHD, SshServer, copy_gz2, tiny_config


@pytest.fixture(scope="module")
def gz2_images(tmp_path_factory) -> Path:
    """128 real GZ2 galaxy JPEGs copied into a temporary folder."""
    return copy_gz2(tmp_path_factory, 128)


def _panel(qtbot, data: str | None = None) -> tuple[TrainingPanel, TaskRunner]:
    tasks = TaskRunner()
    panel = TrainingPanel(tasks, default_data=data)
    qtbot.addWidget(panel)
    panel.resize(1200, 760)
    panel.show()
    return panel, tasks


@pytest.fixture()
def no_runs_left(tmp_path):
    """Stops any run a failed test left going (the registry is in tmp_path)."""
    yield
    from ssald_desktop.core.launch import RunRegistry

    registry = RunRegistry(tmp_path / "data")
    for run_id in registry.ids():
        run = registry.open(run_id)
        if run.status().alive:
            run.stop(timeout=5)


def _close(panel: TrainingPanel) -> None:
    panel.close()
    assert QThreadPool.globalInstance().waitForDone(60_000)


def test_local_run_plot_close_reattach_stop_resume_use(qtbot, tmp_path, gz2_images, no_runs_left):
    config = tmp_path / "tiny.json"
    # planned far longer than the test waits, so it is surely running when stopped
    config.write_text(json.dumps(tiny_config(steps=100_000, log_every=2, checkpoint_every=10,
                                             batch_size=16)))
    panel, _ = _panel(qtbot, str(gz2_images))
    assert panel.load_config_file(config)
    assert panel.preset_combo.currentText() == "as in the loaded file"
    assert panel.size_combo.currentText() == "32" and panel.batch_spin.value() == 16
    assert panel.config_dict()["encoder"]["width"] == 8
    assert not panel.stop_button.isEnabled() and panel.start_button.isEnabled()

    started: list[str] = []
    ended: list[tuple[str, str]] = []
    panel.runStarted.connect(started.append)
    panel.runFinished.connect(lambda rid, state: ended.append((rid, state)))
    panel.start_button.click()
    qtbot.waitUntil(lambda: bool(started), timeout=30_000)
    run_id = started[0]
    assert panel.run_id == run_id
    folder = tmp_path / "data" / "runs" / run_id
    assert (folder / "launch.json").exists()  # registered under $SSALD_DATA_DIR

    metrics = [m for _, curves in PLOTS.values() for m, _, _ in curves]
    qtbot.waitUntil(lambda: all(panel.curve_points(m) >= 2 for m in metrics)
                    and (folder / "checkpoints" / "latest.json").exists(), timeout=120_000)
    assert panel.state == "running" and panel.stop_button.isEnabled()
    assert not panel.use_button.isEnabled() and not panel.resume_button.isEnabled()
    assert panel.log_view.toPlainText().strip()  # the log shows lines
    assert run_id in panel.run_ids()
    panel.grab().save(str(tmp_path / "train_running.png"))

    pid = json.loads((folder / "launch.json").read_text())["pid"]
    _close(panel)  # closing the panel (the app) never stops or forgets a run
    assert Path(f"/proc/{pid}").exists()

    # "Restart": a new panel lists the run, reattaches (plotting its history) and stops it.
    again, _ = _panel(qtbot, str(gz2_images))
    qtbot.waitUntil(lambda: run_id in again.run_ids(), timeout=20_000)
    item = again._find_item(run_id)
    assert item is not None and item.text(2) == "running" and "small/w8 32 px" in item.text(4)
    again_ended: list[tuple[str, str]] = []
    again.runFinished.connect(lambda rid, state: again_ended.append((rid, state)))
    item.setSelected(True)
    qtbot.waitUntil(lambda: again.state == "running" and again.curve_points("loss") >= 2,
                    timeout=20_000)
    assert again.run_id == run_id and again.stop_button.isEnabled()
    assert again.curve_points("loss") >= panel.curve_points("loss")
    again.grab().save(str(tmp_path / "train_reattached.png"))
    again.stop_button.click()
    qtbot.waitUntil(lambda: again.state == "stopped", timeout=60_000)
    assert again_ended == [(run_id, "stopped")] and ended == []
    assert again.resume_button.isEnabled() and not again.stop_button.isEnabled()
    assert again.error_text() == "" and not Path(f"/proc/{pid}").exists()
    step = json.loads((folder / "checkpoints" / "latest.json").read_text())["step"]

    # Resume, planned to end 10 steps after the checkpoint, then use the exported encoder.
    finished: list[tuple[str, str]] = []
    chosen: list[str] = []
    again.runFinished.connect(lambda rid, state: finished.append((rid, state)))
    again.encoderChosen.connect(chosen.append)
    again.resume_epochs.setValue(step // 10 + 1)
    again.resume_button.click()
    qtbot.waitUntil(lambda: bool(finished), timeout=150_000)
    assert finished == [(run_id, "finished")], again.error_text()
    assert again.use_button.isEnabled()
    steps, losses = again.curve_data("loss")
    # the steps logged after the checkpoint by the stopped process are replaced, not doubled
    assert steps == sorted(set(steps)) and steps[-1] == step + 10 and len(losses) == len(steps)
    again.grab().save(str(tmp_path / "train_finished.png"))
    again.use_button.click()
    qtbot.waitUntil(lambda: bool(chosen), timeout=30_000)
    encoder = Path(chosen[0])
    assert encoder.name == "encoder.keras" and encoder.is_file()
    assert encoder.stat().st_size > 10_000
    _close(again)


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (as in tests/launch), skipped where absent."""
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client not installed (/usr/sbin/sshd, ssh, ssh-keygen)")
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    except OSError as exc:
        pytest.skip(f"sshd needs /run/sshd, which cannot be created here ({exc})")
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


def test_ssh_run_followed_reattached_and_fetched(qtbot, tmp_path, gz2_images, ssh_server,
                                                 monkeypatch, no_runs_left):
    monkeypatch.setattr(training_panel, "REMOTE_POLL_MS", 1000)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(steps=8, log_every=2, checkpoint_every=4)))
    panel, _ = _panel(qtbot, str(gz2_images))
    assert panel.load_config_file(config)
    panel.target_combo.setCurrentText("SSH host")
    panel.ssh_host_edit.setText(f"{ssh_server.user}@127.0.0.1:{ssh_server.port}")
    panel.ssh_key_edit.setText(str(ssh_server.key))
    panel.ssh_python_edit.setText(REMOTE_PYTHON)
    panel.ssh_workdir_edit.setText(str(tmp_path / "remote runs"))
    started: list[str] = []
    ended: list[tuple[str, str]] = []
    panel.runStarted.connect(started.append)
    panel.runFinished.connect(lambda rid, state: ended.append((rid, state)))
    panel.start_button.click()
    qtbot.waitUntil(lambda: bool(started), timeout=60_000)
    run_id = started[0]
    qtbot.waitUntil(lambda: bool(ended), timeout=150_000)
    assert ended == [(run_id, "finished")], panel.error_text()
    assert panel.curve_points("loss") >= 3 and panel.log_view.toPlainText().strip()
    # the run folder is on the "remote" side; this machine holds the mirror only
    assert list((tmp_path / "remote runs").glob(f"{run_id}*/encoder.keras"))
    local = tmp_path / "data" / "runs" / run_id
    assert not (local / "encoder.keras").exists()
    _close(panel)

    again, _ = _panel(qtbot, str(gz2_images))
    qtbot.waitUntil(lambda: run_id in again.run_ids(), timeout=20_000)
    item = again._find_item(run_id)
    assert item.text(1).startswith("ssh://") and item.text(2) == "finished"
    item.setSelected(True)
    qtbot.waitUntil(lambda: again.state == "finished" and again.use_button.isEnabled(),
                    timeout=30_000)
    assert again.curve_points("loss") >= 3  # the history, from the mirror
    chosen: list[str] = []
    again.encoderChosen.connect(chosen.append)
    again.use_button.click()
    qtbot.waitUntil(lambda: bool(chosen), timeout=60_000)
    assert Path(chosen[0]) == local / "encoder.keras" and Path(chosen[0]).stat().st_size > 10_000
    _close(again)

    # The host goes away: reattaching says so, shows the history received before, retries,
    # and recovers when the host is back.
    ssh_server.stop()
    try:
        third, _ = _panel(qtbot, str(gz2_images))
        qtbot.waitUntil(lambda: run_id in third.run_ids(), timeout=20_000)
        third.attach(run_id)
        qtbot.waitUntil(lambda: third.state == "unknown", timeout=30_000)
        text = third.error_text()
        assert "Cannot reach the run's host" in text and "last seen finished" in text
        assert "127.0.0.1" in text and third.curve_points("loss") >= 3
        third.grab().save(str(tmp_path / "train_unreachable.png"))
    finally:
        ssh_server.start()
    qtbot.waitUntil(lambda: third.state == "finished", timeout=30_000)
    assert third.error_text() == "" and third.curve_points("loss") == again.curve_points("loss")
    _close(third)


def test_unreachable_ssh_host_is_a_message(qtbot, tmp_path, gz2_images):
    panel, _ = _panel(qtbot, str(gz2_images))
    panel.target_combo.setCurrentText("SSH host")
    panel.ssh_host_edit.setText("nobody@127.0.0.1:1")
    assert panel.target_and_options()[0] == "ssh://nobody@127.0.0.1:1"
    panel.start_button.click()
    qtbot.waitUntil(lambda: bool(panel.error_text()), timeout=60_000)
    text = panel.error_text()
    assert "127.0.0.1" in text and "connection refused" in text
    panel.grab().save(str(tmp_path / "train_ssh_refused.png"))
    assert panel.start_button.isEnabled()  # the panel keeps working
    assert panel.run_id == ""  # nothing followed, nothing left registered
    assert not list((tmp_path / "data" / "runs").glob("*/launch.json"))
    _close(panel)


def test_tpu_vm_without_gcloud_says_how_to_install(qtbot, tmp_path, monkeypatch, gz2_images):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud there
    panel, _ = _panel(qtbot, "gs://bucket/gz2")
    panel.target_combo.setCurrentText("TPU VM")
    assert panel.target_note.isVisibleTo(panel)
    note = panel.target_note.text()
    assert "gcloud" in note and "https://cloud.google.com/sdk/docs/install" in note
    assert not panel.start_button.isEnabled()
    panel.target_combo.setCurrentText("Local")
    assert not panel.target_note.isVisibleTo(panel) and panel.start_button.isEnabled()
    _close(panel)


def test_bad_form_input_is_shown(qtbot, tmp_path, gz2_images):
    panel, _ = _panel(qtbot, "")
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"train": {"epoch": 3}}))
    assert not panel.load_config_file(bad)
    assert "typo.json" in panel.error_text() and "epoch" in panel.error_text()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert not panel.load_config_file(broken)
    assert "broken.json" in panel.error_text()
    assert not panel.start_button.isEnabled()  # no data yet
    panel.data_edit.setText(str(gz2_images))
    panel.target_combo.setCurrentText("TPU VM")
    panel.tpu_project_edit.setText("my-project")
    if panel.start_button.isEnabled():  # gcloud installed: the missing fields are named
        panel.start_button.click()
        assert "zone" in panel.error_text() and "TPU name" in panel.error_text()
    _close(panel)


def test_summaries():
    cfg = {"encoder": {"preset": "small", "input_size": 64, "width": 24},
           "train": {"epochs": 35, "batch_size": 128, "learning_rate": 0.002},
           "augment": {"strength": 0.5}}
    assert config_summary(cfg) == "small 64 px, 35 ep x bs 128, lr 0.002, aug 0.5"
    assert "small/w8" in config_summary({**cfg, "encoder": {"preset": "small", "width": 8}})
    assert run_outcome({"state": "stopped", "step": 40, "total_steps": 100}) == (
        "stopped at step 40/100")
    failed = {"state": "failed", "step": 3, "message": "model.train exited with status 1; "
              "last log lines:\nMemoryError"}
    assert run_outcome(failed) == "step 3: model.train exited with status 1; last log lines:"
    done = {"state": "finished", "metrics": {"loss": 15.71, "rankme": 4.25},
            "encoder": "/r/encoder.keras"}
    assert run_outcome(done) == "loss 15.7, RankMe 4.25; encoder encoder.keras"
    resumed = _effective_config(tiny_config(steps=100), ["train.epochs=3"])
    assert "3 ep x bs 32" in config_summary(resumed)
    log = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
           "STDERR\nI0000 00:00:1795866270.048895    8297 port.cc:153] oneDNN custom\n"
           "Traceback (most recent call last):\nMemoryError\n")
    assert quiet_log(log) == "Traceback (most recent call last):\nMemoryError"
