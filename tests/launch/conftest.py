"""Fixtures of the launcher tests: a real OpenSSH server on 127.0.0.1, keys, tiny configs, data.

The SSH server is Debian's ``/usr/sbin/sshd`` started by the tests (FACTS.md, "OpenSSH on
loopback") with its own host key, authorized key and config in a temporary folder. Its
"remote" Python is this project's venv Python, so a run through it is a real training run on
real GZ2 galaxies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATA

SSHD = Path("/usr/sbin/sshd")
GZ2_IMAGES = DATA / "gz2" / "images"
#: A remote Python with TensorFlow and the model package: this project's own.
REMOTE_PYTHON = sys.executable


def tiny_config(steps: int = 8, log_every: int = 2, checkpoint_every: int = 4,
                batch_size: int = 32) -> dict:
    """A configuration that trains in seconds on 2 CPU cores (32 px, a 2-stage narrow net)."""
    return {
        "encoder": {"preset": "small", "input_size": 32, "width": 8, "depths": [1, 1],
                    "embedding_dim": 16},
        "vicreg": {"projector": [32, 32]},
        "data": {"shuffle_buffer": 256},
        "train": {"epochs": steps // checkpoint_every, "batch_size": batch_size,
                  "steps_per_epoch": checkpoint_every, "checkpoint_every": checkpoint_every,
                  "log_every": log_every, "warmup_epochs": 0.5},
    }


# The run registry and known_hosts of every test live in its tmp folder: tests/conftest.py
# points SSALD_DATA_DIR there.


def copy_gz2(tmp_path_factory, n: int) -> Path:
    """The first ``n`` real GZ2 galaxy JPEGs (by name), copied into a temporary folder."""
    folder = tmp_path_factory.mktemp("gz2") / "images"
    folder.mkdir()
    for path in sorted(GZ2_IMAGES.glob("*.jpg"))[:n]:
        shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def gz2_subset(tmp_path_factory) -> Path:
    """256 real GZ2 galaxy JPEGs, copied into a temporary folder."""
    return copy_gz2(tmp_path_factory, 256)


@pytest.fixture()
def tiny_config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config()))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ssald-test", "-f",
                    str(path)], check=True, capture_output=True)
    return path


class SshServer:
    """A throwaway sshd on 127.0.0.1 (started and stopped by PID)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.user = os.environ.get("USER") or subprocess.run(
            ["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.key = _keygen(folder / "client_key")
        self.wrong_key = _keygen(folder / "wrong_key")
        host_key = _keygen(folder / "host_key")
        (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {host_key}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "LogLevel ERROR", "MaxStartups 50", "",
        ]))
        check = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t rejected the test config: {check.stderr}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.folder / "sshd.log").open("ab")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    @property
    def target(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A running OpenSSH server on loopback; skipped (with the reason) where sshd is absent."""
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client not installed (/usr/sbin/sshd, ssh, ssh-keygen); "
                    "install openssh-server and openssh-client to run the SSH launcher tests")
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    except OSError as exc:
        pytest.skip(f"sshd needs /run/sshd, which cannot be created here ({exc})")
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


def ssh_options(server: SshServer, tmp: Path, **extra) -> dict:
    """Launcher options for the test server (its key, a private known_hosts file)."""
    opts = {"identity": str(server.key), "python": REMOTE_PYTHON, "host_keys": "accept-new",
            "known_hosts": str(tmp / "known_hosts"), "connect_timeout": 5,
            "workdir": str(tmp / "remote"), "min_free_bytes": 1024**2}
    opts.update(extra)
    return opts


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
