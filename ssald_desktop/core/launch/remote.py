"""Remote runs: the remote-command builder and the launcher logic shared by SSH and TPU VMs.

The command that ``ssh`` (or ``gcloud compute tpus tpu-vm ssh --command``) hands to the remote
host is one string, interpreted by the remote user's shell. Every part of it that comes from a
setting or a user field (paths, the data source, the run name, overrides) is quoted with
:func:`shlex.quote` here, in one place; the fixed shell around them is constant text. The run
is started detached, as measured in FACTS.md: ``cd DIR || exit; setsid nohup CMD >>log 2>&1
</dev/null &`` (all three streams redirected, so the connection closes at once and dropping it
later does not touch the run).
"""

from __future__ import annotations

import io
import json
import posixpath
import shlex
import subprocess
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssald_desktop.core.launch import helper
from ssald_desktop.core.launch.base import (
    LOG_FILE,
    RESULT_NAMES,
    Launcher,
    LaunchError,
    RunRecord,
)
from ssald_desktop.core.launch.local import CONFIG_FILE, model_root, train_argv

#: The helper's source, sent with ``python -c`` (see :mod:`.helper`).
HELPER_SOURCE = Path(helper.__file__).read_text()
#: The shell run by ``setsid nohup sh -c WRAPPER sh ARGV...`` on the remote host: it records
#: its pid (the process-group id, as the session leader) and the exit status of the training.
WRAPPER = 'echo $$ > launch.pid; "$@"; echo $? > exit_status'
#: Exit status of a start command whose ``cd`` failed.
CD_FAILED = 97
DEFAULT_MIN_FREE_BYTES = 2 * 1024**3


def quote_command(argv: Sequence[str]) -> str:
    """One remote shell command from an argument list, every argument quoted."""
    return shlex.join([str(a) for a in argv])


def helper_command(python: str, *args: str | int | float) -> str:
    """The remote command that runs one :mod:`.helper` command with ``python``."""
    return quote_command([python, "-c", HELPER_SOURCE, *[str(a) for a in args]])


def start_command(run_dir: str, argv: Sequence[str], wrapper: str = WRAPPER,
                  wrapper_args: Sequence[str] = (), wait_s: float = 10.0) -> str:
    """The remote command that starts ``argv`` detached in ``run_dir`` and prints its pid.

    The process runs in a new session (``setsid``), immune to the hang-up of the connection
    (``nohup``), with stdin from ``/dev/null`` and stdout/stderr appended to ``train.log``;
    the command then waits (at most ``wait_s``) for the wrapper to write ``launch.pid`` and
    prints it.
    """
    tries = max(1, int(wait_s / 0.1))
    inner = quote_command(["setsid", "nohup", "sh", "-c", wrapper, "sh", *wrapper_args, *argv])
    return (
        f"cd {shlex.quote(run_dir)} || exit {CD_FAILED}; rm -f launch.pid exit_status; "
        f"{inner} >> {LOG_FILE} 2>&1 < /dev/null & "
        f"i=0; while [ ! -s launch.pid ] && [ $i -lt {tries} ]; do sleep 0.1; i=$((i+1)); done; "
        "cat launch.pid"
    )


def upload_command(run_dir: str) -> str:
    """The remote command that unpacks a gzipped tar from stdin into ``run_dir``."""
    q = shlex.quote(run_dir)
    return f"mkdir -p -- {q} && tar -xzf - -C {q}"


def model_tarball(config: dict[str, Any], include_model: bool) -> bytes:
    """A gzipped tar with the run's configuration and, optionally, the ``model`` package."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = (json.dumps(config, indent=2) + "\n").encode()
        info = tarfile.TarInfo(CONFIG_FILE)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
        if include_model:
            root = model_root() / "model"
            for path in sorted(root.rglob("*.py")):
                if "__pycache__" not in path.parts:
                    tar.add(path, arcname=f"model/{path.relative_to(root).as_posix()}")
    return buf.getvalue()


def safe_extract(stream: Any, dest: Path) -> None:
    """Extract a gzipped tar stream into ``dest``, refusing links and paths outside it."""
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        try:
            tar.extractall(dest, filter="data")
        except tarfile.TarError as exc:
            raise LaunchError(f"the results could not be unpacked into {dest}: {exc}") from exc


class Transport:
    """How commands reach a remote host (``ssh`` or ``gcloud ... ssh``)."""

    def argv(self, command: str) -> list[str]:
        """The local argument list that runs the remote ``command``."""
        raise NotImplementedError

    def describe(self) -> str:
        """The host, for messages."""
        raise NotImplementedError

    def explain(self, stderr: str, returncode: int) -> str | None:
        """A clear message for a connection-level failure, or None if the command failed."""
        raise NotImplementedError

    def run(self, command: str, *, input: bytes | None = None, timeout: float = 120.0
            ) -> subprocess.CompletedProcess:
        """Run ``command`` remotely; connection failures raise :class:`LaunchError`."""
        argv = self.argv(command)
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise LaunchError(f"{argv[0]}: not installed or not on PATH") from exc
        except subprocess.TimeoutExpired:
            raise LaunchError(f"{self.describe()}: no answer within {timeout:.0f} s") from None
        reason = self.explain(proc.stderr.decode("utf-8", "replace"), proc.returncode)
        if reason:
            raise LaunchError(reason)
        return proc

    def open_stream(self, command: str) -> subprocess.Popen:
        """Start ``command`` remotely with its stdout as a pipe (for large downloads)."""
        try:
            return subprocess.Popen(self.argv(command), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise LaunchError(f"{self.argv('')[0]}: not installed or not on PATH") from exc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class RemoteLauncher(Launcher):
    """Runs ``model.train`` on another host through a :class:`Transport`.

    Parameters
    ----------
    python : str
        The remote Python executable (default ``python3``).
    workdir : str
        The remote folder that holds one sub-folder per run (``~`` is the remote home).
    min_free_bytes : int
        Refuse to start when the remote work folder has less free space.
    ship_model : {"auto", "always", "never"}
        Copy the ``model`` package into the run folder when the remote Python cannot import it
        (``auto``), always, or never.
    strategy : str
        The tf.distribute strategy of the run.
    """

    remote = True

    def __init__(self, python: str = "python3", workdir: str = "~/ssald-runs",
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES, ship_model: str = "auto",
                 strategy: str = "default", command_timeout: float = 120.0):
        if ship_model not in ("auto", "always", "never"):
            raise LaunchError(f"ship_model must be auto, always or never, got {ship_model!r}")
        if not python:
            raise LaunchError("the remote Python executable is empty")
        self.python = python
        self.workdir = workdir
        self.min_free_bytes = int(min_free_bytes)
        self.ship_model = ship_model
        self.strategy = strategy
        self.command_timeout = float(command_timeout)

    # -- settings ---------------------------------------------------------------------------
    def common_settings(self) -> dict[str, Any]:
        """The settings shared by every remote launcher."""
        return {"python": self.python, "workdir": self.workdir,
                "min_free_bytes": self.min_free_bytes, "ship_model": self.ship_model,
                "strategy": self.strategy, "command_timeout": self.command_timeout}

    @property
    def transport(self) -> Transport:
        """The transport to the host."""
        raise NotImplementedError

    # -- checks -----------------------------------------------------------------------------
    def helper(self, *args: str | int | float, timeout: float | None = None) -> dict[str, Any]:
        """Run one helper command remotely and return its JSON answer."""
        proc = self.transport.run(helper_command(self.python, *args),
                                  timeout=timeout or self.command_timeout)
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == 127:  # the remote shell's "command not found"
            raise LaunchError(
                f"{self.transport.describe()}: the remote Python {self.python!r} was not found "
                f"({_last_line(stderr) or 'exit status 127'}); install Python 3 there or set the "
                "remote python executable"
            )
        try:
            return json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise LaunchError(
                f"{self.transport.describe()}: the remote helper failed (exit status "
                f"{proc.returncode}): {_last_line(stderr) or 'no output'}"
            ) from None

    def probe(self) -> dict[str, Any]:
        """Check the host: Python present, TensorFlow installed, enough free disk.

        Returns the probe answer (``workdir`` made absolute, ``free_bytes``, ``module``:
        whether ``model.train`` is importable there).
        """
        info = self.helper("probe", self.workdir, "model.train")
        host = self.transport.describe()
        if not info.get("tensorflow"):
            raise LaunchError(
                f"{host}: TensorFlow is not installed for the remote Python {info.get('python')} "
                f"(Python {info.get('version')}); install it there (pip install tensorflow) or "
                "set the remote python executable to one that has it"
            )
        free = int(info.get("free_bytes", 0))
        if free < self.min_free_bytes:
            raise LaunchError(
                f"{host}: not enough free disk in {info.get('workdir')}: {free / 1e9:.2f} GB "
                f"free, {self.min_free_bytes / 1e9:.2f} GB needed (No space left for a run); "
                "free some space or choose another remote work folder"
            )
        return info

    # -- the run ----------------------------------------------------------------------------
    def remote_train_argv(self, record: RunRecord, run_dir: str) -> list[str]:
        """The remote ``model.train`` argument list of a run."""
        return ["env", "PYTHONUNBUFFERED=1", *train_argv(
            self.python, posixpath.join(run_dir, CONFIG_FILE), run_dir, record.data,
            self.strategy, record.overrides)]

    def wrapper(self, record: RunRecord) -> tuple[str, list[str]]:
        """The wrapper shell script and its leading arguments."""
        return WRAPPER, []

    def start(self, record: RunRecord, folder: Path, resume: bool = False) -> None:
        """Check the host, copy the configuration (and the package), start the run detached."""
        info = self.probe()
        if not resume:
            run_dir = posixpath.join(info["workdir"], record.id)
            include_model = self.ship_model == "always" or (
                self.ship_model == "auto" and not info.get("module"))
            proc = self.transport.run(upload_command(run_dir),
                                      input=model_tarball(record.config, include_model),
                                      timeout=self.command_timeout)
            if proc.returncode != 0:
                raise LaunchError(
                    f"{self.transport.describe()}: cannot copy the configuration to {run_dir}: "
                    f"{_last_line(proc.stderr.decode('utf-8', 'replace'))}"
                )
            record.remote_dir = run_dir
            record.settings = {**record.settings, "model_shipped": include_model}
        run_dir = record.remote_dir
        wrapper, wrapper_args = self.wrapper(record)
        command = start_command(run_dir, self.remote_train_argv(record, run_dir), wrapper,
                                wrapper_args)
        proc = self.transport.run(command, timeout=self.command_timeout)
        out = proc.stdout.decode("utf-8", "replace").strip()
        if proc.returncode == CD_FAILED:
            raise LaunchError(f"{self.transport.describe()}: the run folder {run_dir} is missing")
        try:
            record.pid = int(out.splitlines()[-1])
        except (ValueError, IndexError):
            raise LaunchError(
                f"{self.transport.describe()}: the run did not start in {run_dir} (exit status "
                f"{proc.returncode}): {_last_line(proc.stderr.decode('utf-8', 'replace'))}"
            ) from None

    def poll_raw(self, record: RunRecord, folder: Path) -> dict[str, Any]:
        """Poll the remote run folder; only bytes after the saved offsets travel."""
        return self.helper("poll", record.remote_dir, record.offsets.get("metrics", 0),
                           record.offsets.get("log", 0), 1 << 20)

    def stop_raw(self, record: RunRecord, folder: Path, timeout: float) -> dict[str, Any]:
        """SIGTERM the remote process group, SIGKILL after ``timeout`` seconds."""
        return self.helper("stop", record.remote_dir, timeout,
                           timeout=self.command_timeout + timeout)

    def fetch_raw(self, record: RunRecord, folder: Path, dest: Path) -> None:
        """Stream a tar of the encoder, card, checkpoints and state back and unpack it."""
        command = helper_command(self.python, "pack", record.remote_dir, *RESULT_NAMES)
        proc = self.transport.open_stream(command)
        assert proc.stdout is not None and proc.stderr is not None
        unpack_error: LaunchError | None = None
        try:
            safe_extract(proc.stdout, dest)
        except LaunchError as exc:
            unpack_error = exc
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode("utf-8", "replace")
            proc.stderr.close()
            code = proc.wait()
        reason = self.transport.explain(stderr, code)
        if reason:
            raise LaunchError(reason)
        if code != 0 or unpack_error is not None:
            raise LaunchError(f"{self.transport.describe()}: fetching {record.remote_dir} "
                              f"failed: {_last_line(stderr) or unpack_error}")
