"""The SSH launcher against a real OpenSSH server on 127.0.0.1 (see conftest.py).

One real training run on GZ2 galaxies goes through everything in order (module-scoped): a
start with hostile names, metrics streamed back by byte offsets, the connection cut mid-run
(the ssh client killed and the server stopped) without losing the run, a reattach from a fresh
registry, a stop, a resume to the end, and a fetch of the encoder and checkpoints. The failure
cases (refused, timeout, wrong key, no Python, no TensorFlow, full disk, a crash) are cheap and
separate.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ssald_desktop.core.launch import (
    LaunchError,
    RunRegistry,
    SshLauncher,
    launch,
    make_launcher,
    open_run,
)
from ssald_desktop.core.launch.remote import helper_command, quote_command, start_command
from tests.launch.conftest import REMOTE_PYTHON, ssh_options, tiny_config, wait_for

#: A name that runs ``touch MARKER`` if any part of the remote command is left unquoted.
HOSTILE = "a b'c;$(touch {marker})`touch {marker}`\""
MARKER = f"ssald-pwned-{os.getpid()}"
#: Planned steps: more than any test waits for, so the run is surely still going when stopped
#: however fast the machine; the resume then shortens it with train.epochs.
STEPS = 100_000


def _executed(*roots: Path) -> list[Path]:
    """Marker files created by an injected command (relative: in home or any run folder)."""
    found = [p for root in roots for p in root.rglob(MARKER)]
    return found + [p for p in (Path.home() / MARKER,) if p.exists()]


# -- pure builders -----------------------------------------------------------------------------
def test_remote_command_quotes_every_part(tmp_path):
    evil = HOSTILE.format(marker=MARKER)
    cmd = start_command(f"/w/{evil}", ["python", "-m", "model.train", "--data", evil])
    # Through a real shell (what sshd runs), the parts arrive as single, intact arguments.
    probe = quote_command(["printf", "%s\\n", f"/w/{evil}", evil])
    out = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.splitlines() == [f"/w/{evil}", evil]
    assert not _executed(tmp_path)
    assert "setsid nohup sh -c" in cmd and "< /dev/null &" in cmd and ">> train.log 2>&1" in cmd
    assert "'" in cmd and cmd.count("$(touch") == 2  # present only inside quotes


# -- the real run -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def remote_run(sshd, gz2_subset, tmp_path_factory):
    """A long run on 256 GZ2 galaxies through ssh, with hostile folder and data names."""
    tmp = tmp_path_factory.mktemp("sshrun")
    evil = HOSTILE.format(marker=MARKER)
    data = tmp / f"data {evil}"
    data.mkdir()
    os.symlink(gz2_subset, data / "images")
    registry = RunRegistry(tmp / "registry")
    opts = ssh_options(sshd, tmp, workdir=str(tmp / f"remote {evil}"), ship_model="always")
    cfg = tiny_config(steps=STEPS, log_every=5, checkpoint_every=10, batch_size=16)
    run = launch(sshd.target, cfg, str(data / "images"), name=f"run {evil}",
                 registry=registry, **opts)
    yield {"run": run, "registry": registry, "evil": evil, "tmp": tmp,
           "data": data}
    try:  # never leave a training process behind
        run.launcher.stop_raw(run.record, run.folder, 5)
    except LaunchError:
        pass


def test_start_with_hostile_names(remote_run):
    run, evil = remote_run["run"], remote_run["evil"]
    remote_dir = Path(run.record.remote_dir)
    assert remote_dir.parent.name == f"remote {evil}"  # the folder arrived intact
    assert (remote_dir / "launch-config.json").exists()
    assert (remote_dir / "model" / "train.py").exists()  # the package was shipped
    assert run.record.name == f"run {evil}"
    # started detached: its own session, parented to init, not to the ssh session
    pid = run.record.pid
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    status = wait_for(lambda: (s := run.status()).state == "running" and s, 90,
                      what="the run to start")
    assert status.alive and status.total_steps == STEPS
    assert not _executed(remote_run["tmp"])  # nothing in the names was executed


def test_metrics_stream_back_incrementally(remote_run):
    run = remote_run["run"]
    remote_metrics = Path(run.record.remote_dir) / "metrics.jsonl"
    seen: list[dict] = []
    offsets = []

    def enough():
        update = run.poll()
        seen.extend(update.metrics)
        offsets.append(run.record.offsets["metrics"])
        return [m for m in seen if m.get("event") == "checkpoint"]

    wait_for(enough, 120, interval=1.0, what="a checkpoint line")
    train = [m for m in seen if m.get("event") == "train"]
    assert train, seen
    for key in ("loss", "invariance", "variance", "covariance", "rankme", "images_per_s", "step"):
        assert key in train[-1]
    assert offsets == sorted(offsets)  # byte offsets only grow
    # a second handle (another process following the same run) polls in between
    other = open_run(run.id, RunRegistry(remote_run["registry"].root))
    for handle in (other, run, other):
        handle.poll()
    # every byte arrived exactly once: the mirror is a prefix of the remote file
    mirror = (run.folder / "metrics.jsonl").read_bytes()
    assert mirror and remote_metrics.read_bytes().startswith(mirror)
    assert len(mirror) == other.record.offsets["metrics"]  # (the last to poll)
    log = (run.folder / "train.log").read_bytes()
    assert len(log) == other.record.offsets["log"]
    assert (Path(run.record.remote_dir) / "train.log").read_bytes().startswith(log)


def test_connection_cut_keeps_the_run(remote_run, sshd):
    run, registry = remote_run["run"], remote_run["registry"]
    step_before = run.status().step or 0
    # A long-lived connection (like a GUI's) is cut: its ssh client killed, sshd stopped.
    client = subprocess.Popen(run.launcher.transport.argv("sleep 10"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    client.send_signal(signal.SIGKILL)
    client.wait()
    sshd.stop()
    try:
        down = run.status()
        assert down.state == "unknown" and "connection refused" in down.message
        time.sleep(3)
        assert os.path.exists(f"/proc/{run.record.pid}")  # the run goes on, unconnected
    finally:
        sshd.start()
    # Reattach as a new process would: a fresh registry object, the run found by id.
    again = open_run(run.id, RunRegistry(registry.root))
    status = wait_for(lambda: (s := again.status()).step and s.step > step_before and s, 60,
                      what="progress after reattaching")
    assert status.state == "running" and status.alive
    remote = (Path(again.record.remote_dir) / "metrics.jsonl").read_bytes()
    assert remote.startswith((again.folder / "metrics.jsonl").read_bytes())
    remote_run["run"] = again


def test_stop_resume_fetch(remote_run, tmp_path):
    run = remote_run["run"]
    stopped = run.stop(timeout=10)
    assert stopped.state == "stopped" and not stopped.alive
    assert not os.path.exists(f"/proc/{run.record.pid}") or _is_zombie(run.record.pid)
    ckpt = json.loads((Path(run.record.remote_dir) / "checkpoints" / "latest.json").read_text())
    end = ckpt["step"] + 20  # two more checkpoint intervals, then the end
    run.resume([f"train.epochs={end // 10}"])
    assert run.record.launches[-1]["kind"] == "resume"
    final = run.wait(interval=1.0, timeout=150)
    assert final.state == "finished" and final.step == end
    lines = [m for m in run.metrics() if m.get("event") == "start"]
    assert [m["step"] for m in lines] == [0, ckpt["step"]]  # resumed from the checkpoint
    got = run.fetch(tmp_path / "fetched")
    assert Path(got["encoder"]).stat().st_size > 10_000
    card = json.loads(Path(got["card"]).read_text())
    assert card  # the model card came along
    assert sorted(p.name for p in Path(got["checkpoints"]).glob("ckpt-*.weights.h5"))
    assert not _executed(remote_run["tmp"])
    # the fetched file is, byte for byte, the encoder its card describes (SHA-256 checked)
    from ssald_desktop.core.embeddings import encoder_info

    info = encoder_info(got["encoder"], verify=True)
    assert info.input_size == 32 and info.bands == 3


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- failures: each a clear LaunchError ---------------------------------------------------------
def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = make_launcher(f"ssh://someone@127.0.0.1:{port}", host_keys="off",
                             connect_timeout=2)
    with pytest.raises(LaunchError, match=f"127.0.0.1:{port}: connection refused"):
        launcher.probe()


def test_connection_timeout(tmp_path):
    with socket.socket() as s:  # accepts TCP, never speaks SSH
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        port = s.getsockname()[1]
        launcher = make_launcher(f"ssh://someone@127.0.0.1:{port}", host_keys="off",
                                 connect_timeout=1)
        t0 = time.monotonic()
        with pytest.raises(LaunchError, match="timed out after 1 s"):
            launcher.probe()
        assert time.monotonic() - t0 < 10


def test_wrong_key(sshd, tmp_path):
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path,
                                                        identity=str(sshd.wrong_key)))
    with pytest.raises(LaunchError, match="key was refused.*wrong_key"):
        launcher.probe()


def test_missing_key_file(sshd, tmp_path):
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path,
                                                        identity=str(tmp_path / "nokey")))
    with pytest.raises(LaunchError, match="nokey: no such identity"):
        launcher.probe()


def test_no_python_on_remote(sshd, tmp_path):
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path,
                                                        python="/nonexistent/python3"))
    with pytest.raises(LaunchError, match="remote Python '/nonexistent/python3' was not found"):
        launcher.probe()


def test_no_tensorflow_on_remote(sshd, tmp_path):
    # Debian's system Python has no TensorFlow; a virtualenv without it stands in elsewhere.
    bare = "/usr/bin/python3"
    has_tf = subprocess.run([bare, "-c", "import importlib.util as u, sys; "
                             "sys.exit(u.find_spec('tensorflow') is None)"]).returncode == 0
    if has_tf or not Path(bare).exists():
        pytest.skip(f"{bare} is missing or has TensorFlow: no TensorFlow-less Python here")
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path, python=bare))
    with pytest.raises(LaunchError, match="TensorFlow is not installed"):
        launcher.probe()


def test_full_disk_is_refused_before_starting(sshd, tmp_path, tiny_config_file, gz2_subset):
    opts = ssh_options(sshd, tmp_path, min_free_bytes=10**18)
    registry = RunRegistry(tmp_path / "reg")
    with pytest.raises(LaunchError, match="not enough free disk.*No space left"):
        launch(sshd.target, tiny_config_file, str(gz2_subset), registry=registry, **opts)
    assert registry.ids() == []  # a run that never started is not listed


def _fake_python(tmp_path: Path, body: str) -> Path:
    """A 'python' that answers the probe with the real one and runs ``body`` for training."""
    script = tmp_path / "fakepy"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then exec ' + quote_command([REMOTE_PYTHON]) + ' "$@"; fi\n'
        + body + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_crash_shows_last_log_lines(sshd, tmp_path, tiny_config_file, gz2_subset):
    fake = _fake_python(tmp_path, 'echo "loading shards"; '
                        'echo "OSError: [Errno 28] No space left on device" >&2; exit 1')
    registry = RunRegistry(tmp_path / "reg")
    run = launch(sshd.target, tiny_config_file, str(gz2_subset), registry=registry,
                 **ssh_options(sshd, tmp_path, python=str(fake)))
    with pytest.raises(LaunchError, match="disk of the run folder is full") as info:
        run.wait(interval=0.3, timeout=30)
    assert "No space left on device" in str(info.value)
    status = run.status()
    assert status.state == "failed" and "loading shards" in status.log_tail


def test_known_hosts_policy(sshd, tmp_path):
    # a per-launcher file, in a folder whose name ssh would otherwise split or expand
    folder = tmp_path / 'Application Support "x" 100%d'
    known = folder / "known_hosts"
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path, known_hosts=str(known)))
    assert launcher.probe()["tensorflow"]
    recorded = known.read_text().split()
    assert recorded[1] == "ssh-ed25519"  # accept-new recorded the host's key
    # The host now presents another key than the recorded one (a changed host, or an attack).
    other = sshd.wrong_key.with_suffix(".pub").read_text().split()[1]
    known.write_text(f"{recorded[0]} ssh-ed25519 {other}\n")
    with pytest.raises(LaunchError, match="host key verification failed"):
        make_launcher(sshd.target, **ssh_options(sshd, tmp_path, known_hosts=str(known))).probe()
    strict = make_launcher(sshd.target, **ssh_options(
        sshd, tmp_path, host_keys="strict", known_hosts=str(tmp_path / "empty_known_hosts")))
    with pytest.raises(LaunchError, match="host key verification failed"):
        strict.probe()


def test_ship_model_auto_detects_an_installed_package(sshd, tmp_path):
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path))
    assert isinstance(launcher, SshLauncher)
    info = launcher.probe()
    assert info["module"] is True  # the venv has the model package: nothing to ship
    assert Path(info["workdir"]) == tmp_path / "remote"


def test_unusable_work_folder(sshd, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path,
                                                        workdir=str(blocker / "runs")))
    with pytest.raises(LaunchError, match="remote helper failed.*(NotADirectory|FileExists)"):
        launcher.probe()


def test_helper_command_runs_remotely_with_hostile_args(sshd, tmp_path):
    folder = tmp_path / HOSTILE.format(marker=MARKER)
    launcher = make_launcher(sshd.target, **ssh_options(sshd, tmp_path, workdir=str(folder)))
    info = launcher.helper("probe", str(folder), "model.train")
    assert info["workdir"] == str(folder) and folder.is_dir()
    assert not _executed(tmp_path)
    assert helper_command("python3", "x").startswith("python3 -c '")
