"""The local launcher: ``python -m model.train`` as a detached process on this machine."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ssald_desktop.core.launch import helper
from ssald_desktop.core.launch.base import LOG_FILE, Launcher, LaunchError, RunRecord

#: The configuration file written into the run folder and given to ``model.train --config``.
CONFIG_FILE = "launch-config.json"
LOCAL_STRATEGIES = ("default", "mirrored")


def model_root() -> Path:
    """The folder that holds the ``model`` package (put first on the run's PYTHONPATH)."""
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError("the training package 'model' cannot be found by this Python "
                          f"({sys.executable}); install ssald-desktop with its model package")
    return Path(list(spec.submodule_search_locations)[0]).resolve().parent


def train_argv(python: str, config: str, out: str, data: str, strategy: str,
               overrides: list[str], tpu: str = "") -> list[str]:
    """The argument list of ``python -m model.train`` for a run folder (never a shell string).

    Parameters
    ----------
    python : str
        The Python executable.
    config, out, data : str
        The configuration file, the run folder (``--out``; the same folder resumes) and the
        data source (folder, shards or ``gs://`` URI).
    strategy : str
        ``default``, ``mirrored`` or ``tpu``.
    overrides : list of str
        ``section.key=value`` assignments (``--set``).
    tpu : str
        ``--tpu`` (``local`` on a TPU VM).
    """
    argv = [python, "-m", "model.train", "--config", config, "--out", out, "--data", data,
            "--strategy", strategy]
    if tpu:
        argv += ["--tpu", tpu]
    for assignment in overrides:
        argv += ["--set", assignment]
    return argv


class LocalLauncher(Launcher):
    """Runs ``model.train`` on this machine, detached in its own session.

    The process gets its own session and process group (so closing the GUI or the terminal
    leaves it running, and a stop reaches its whole group), stdin from ``/dev/null`` and stdout
    plus stderr appended to ``train.log`` in the run folder.

    Parameters
    ----------
    python : str
        The Python that runs ``model.train`` (default: this one, ``sys.executable``).
    strategy : {"default", "mirrored"}
        The tf.distribute strategy.
    """

    kind = "local"
    remote = False
    #: Child processes started by this Python, reaped when polled (run id -> Popen).
    _children: dict[str, subprocess.Popen] = {}
    _lock = threading.Lock()

    def __init__(self, python: str | None = None, strategy: str = "default"):
        if strategy not in LOCAL_STRATEGIES:
            raise LaunchError(
                f"strategy {strategy!r} cannot run locally; choose one of {LOCAL_STRATEGIES}"
            )
        self.python = python or sys.executable
        self.strategy = strategy

    def target(self) -> str:
        """``local``."""
        return "local"

    def settings(self) -> dict[str, Any]:
        """The Python and the strategy."""
        return {"python": self.python, "strategy": self.strategy}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> LocalLauncher:
        """Rebuild from :meth:`settings`."""
        return cls(python=settings.get("python"), strategy=settings.get("strategy", "default"))

    def start(self, record: RunRecord, folder: Path, resume: bool = False) -> None:
        """Spawn (or respawn, for a resume) the training process of ``record``."""
        if not Path(self.python).exists():
            raise LaunchError(f"{self.python}: no such Python executable")
        data = record.data
        if not data.startswith("gs://") and not Path(data).exists():
            raise LaunchError(f"{data}: no such data folder or file")
        config = folder / CONFIG_FILE
        if not resume:
            import json

            config.write_text(json.dumps(record.config, indent=2) + "\n")
        for name in (helper.PID_FILE, helper.EXIT_FILE):
            (folder / name).unlink(missing_ok=True)
        argv = train_argv(self.python, str(config), str(folder), data, self.strategy,
                          record.overrides)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(model_root())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with (folder / LOG_FILE).open("ab") as log:
            try:
                proc = subprocess.Popen(
                    argv, cwd=folder, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {self.python}: {exc}") from exc
        (folder / helper.PID_FILE).write_text(f"{proc.pid}\n")
        with self._lock:
            self._children[record.id] = proc
        record.pid = proc.pid
        record.remote_dir = str(folder)

    def _reap(self, record: RunRecord, folder: Path) -> None:
        """Collect the exit status of a child of this process (so it is no zombie)."""
        with self._lock:
            proc = self._children.get(record.id)
        if proc is None or proc.poll() is None:
            return
        exit_file = folder / helper.EXIT_FILE
        if not exit_file.exists():
            code = proc.returncode
            exit_file.write_text(f"{128 - code if code < 0 else code}\n")
        with self._lock:
            self._children.pop(record.id, None)

    def poll_raw(self, record: RunRecord, folder: Path) -> dict[str, Any]:
        """Read the run folder directly (the metrics and log are already here)."""
        self._reap(record, folder)
        result = helper.poll(str(folder), record.offsets.get("metrics", 0),
                             record.offsets.get("log", 0))
        if not result.get("alive") and result.get("exit_status") is None:
            # It may have ended between the reap and the poll: reap again, read its status.
            self._reap(record, folder)
            try:
                result["exit_status"] = int((folder / helper.EXIT_FILE).read_text().strip())
            except (OSError, ValueError):
                pass
        return result

    def stop_raw(self, record: RunRecord, folder: Path, timeout: float) -> dict[str, Any]:
        """SIGTERM the process group, SIGKILL after ``timeout`` seconds."""
        with self._lock:
            proc = self._children.get(record.id)
        if proc is not None:
            # Our own child: stop its group and reap it here, so it is never left a zombie.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        result = helper.stop(str(folder), timeout)
        self._reap(record, folder)
        return result

    def fetch_raw(self, record: RunRecord, folder: Path, dest: Path) -> None:
        """Copy the results of the run folder into ``dest``."""
        import shutil

        for name in ("encoder.keras", "encoder.card.json"):
            if (folder / name).exists():
                shutil.copy2(folder / name, dest / name)
        if (folder / "checkpoints").is_dir():
            shutil.copytree(folder / "checkpoints", dest / "checkpoints", dirs_exist_ok=True)
