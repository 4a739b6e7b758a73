"""What every launcher shares: the run record, the run registry, the Run handle, status rules.

A *run* is one ``python -m model.train`` process (see ``model/train.py``) with its run folder
(``config.json``, ``run.json``, ``metrics.jsonl``, ``checkpoints/``, ``encoder.keras``). A
*launcher* starts it somewhere (this machine, an SSH host, a Cloud TPU VM) and can later poll,
stop, resume and fetch it. The *registry* keeps one folder per run on this machine,
``<data dir>/runs/<run id>/`` with ``launch.json`` (where the run is and how to reach it), so a
closed GUI or CLI reattaches by run id. For a local run that folder *is* the run folder; for a
remote run it holds a mirror of the run's ``metrics.jsonl`` and ``train.log``, extended
incrementally by byte offsets, and the fetched encoder and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.launch.helper import read_from

DATA_ENV = "SSALD_DATA_DIR"
RECORD_FILE = "launch.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
#: Files and folders fetched back from a run folder.
RESULT_NAMES = ("encoder.keras", "encoder.card.json", "checkpoints", "run.json", "config.json")
#: Run states. ``stopped``: stopped on request (resumable); ``failed``: crashed or killed.
ACTIVE_STATES = ("starting", "running")
FINAL_STATES = ("finished", "failed", "stopped")


class LaunchError(SsaldError):
    """A run that cannot be started, reached, stopped or fetched, or a run that crashed."""


def default_data_dir() -> Path:
    """``$SSALD_DATA_DIR`` or the platform's user data folder for ``ssald-desktop``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("ssald-desktop"))


def _slug(text: str, limit: int = 32) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug[:limit] or "run"


def new_run_id(name: str | None = None) -> str:
    """A unique, file-name-safe run id: ``YYYYmmdd-HHMMSS-<name>-<4 hex>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{_slug(name or 'run')}-{secrets.token_hex(2)}"


@dataclass
class RunRecord:
    """Everything needed to reach a run again (saved as ``launch.json``)."""

    id: str
    target: str
    settings: dict[str, Any]
    name: str = ""
    created: float = field(default_factory=time.time)
    data: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    strategy: str = "default"
    remote_dir: str = ""
    pid: int | None = None
    stop_requested: bool = False
    offsets: dict[str, int] = field(default_factory=lambda: {"metrics": 0, "log": 0})
    last: dict[str, Any] = field(default_factory=dict)
    launches: list[dict[str, Any]] = field(default_factory=list)
    fetched: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """Build from ``launch.json`` content, ignoring unknown keys (newer versions)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RunStatus:
    """A snapshot of a run.

    Attributes
    ----------
    state : str
        ``starting``, ``running``, ``finished``, ``failed``, ``stopped`` or ``unknown`` (the host
        could not be reached; ``message`` says why).
    step, total_steps : int or None
        Training progress from ``run.json`` and the newest metrics line.
    alive : bool
        Whether the process group is running.
    message : str
        A one-line explanation (the error of a failed run, the reason for ``unknown``).
    log_tail : str
        The last lines of the run's log (shown for a failed run).
    encoder : str
        Where the exported encoder is (on the run's host) once finished.
    """

    run_id: str
    state: str
    step: int | None = None
    total_steps: int | None = None
    alive: bool = False
    message: str = ""
    log_tail: str = ""
    encoder: str = ""
    pid: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        """Fraction of the total steps done (None before it is known)."""
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def done(self) -> bool:
        """Whether the run has ended (finished, failed or stopped)."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "progress": self.progress}


@dataclass
class RunUpdate:
    """What one poll brought: the status and the metrics lines and log text new since the last."""

    status: RunStatus
    metrics: list[dict[str, Any]]
    log: str


def tail_lines(text: str, n: int = 20) -> str:
    """The last ``n`` non-empty lines of ``text``."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:])


def derive_state(
    poll: dict[str, Any], stop_requested: bool, log_tail: str
) -> tuple[str, str]:
    """Decide a run's state and message from a helper poll (see :mod:`.helper`).

    The process is the truth while it lives; after it ends, ``run.json`` (written by
    ``model.train``) says finished or failed; a run killed on request is ``stopped``; any
    other end (a non-zero exit before ``run.json`` existed, a kill by the OS) is ``failed``,
    with the last log lines as the message. A log that mentions a full disk says so first.
    """
    run = poll.get("run") or {}
    model_state = run.get("state", "")
    if poll.get("alive"):  # (run.json may say finished while the process exits)
        return ("starting" if model_state in ("", "starting") else "running"), ""
    if model_state == "finished":
        return "finished", ""
    if stop_requested:
        return "stopped", "stopped on request"
    exit_status = poll.get("exit_status")
    if "No space left" in log_tail:
        reason = "the disk of the run folder is full (No space left on device)"
    elif model_state == "failed":
        reason = str(run.get("error", "model.train failed"))
    elif exit_status not in (None, 0):
        reason = f"model.train exited with status {exit_status}"
    else:
        reason = "the training process ended without finishing (killed?)"
    last = tail_lines(log_tail, 8)
    return "failed", f"{reason}; last log lines:\n{last}" if last else reason


def check_overrides(config: dict[str, Any], overrides: list[str], where: str) -> None:
    """Apply ``section.key=value`` overrides to a configuration to check them (no TensorFlow)."""
    from model.config import Config, ConfigError

    try:
        Config.from_dict(config).override(list(overrides))
    except ConfigError as exc:
        raise LaunchError(f"{where}: {exc}") from None


class Launcher:
    """Starts, polls, stops, resumes and fetches ``model.train`` runs on one kind of target.

    Subclasses implement :meth:`start`, :meth:`poll_raw`, :meth:`stop_raw` and
    :meth:`fetch_raw`; :meth:`settings` and :meth:`from_settings` let the registry rebuild a
    launcher for a saved run. ``remote`` is True when the run folder is not the registry folder
    (the metrics and log are then mirrored here).
    """

    kind = "base"
    remote = False

    def target(self) -> str:
        """The target string (``local``, ``ssh://user@host:port``, ``tpu-vm://p/z/n``)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings that :meth:`from_settings` turns back into this launcher."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Launcher:
        """Rebuild a launcher from :meth:`settings`."""
        raise NotImplementedError

    def start(self, record: RunRecord, folder: Path, resume: bool = False) -> None:
        """Start (or resume) the run of ``record``; sets ``record.pid`` / ``remote_dir``."""
        raise NotImplementedError

    def poll_raw(self, record: RunRecord, folder: Path) -> dict[str, Any]:
        """The helper's poll answer for the run (see :func:`.helper.poll`)."""
        raise NotImplementedError

    def stop_raw(self, record: RunRecord, folder: Path, timeout: float) -> dict[str, Any]:
        """Stop the run's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        raise NotImplementedError

    def fetch_raw(self, record: RunRecord, folder: Path, dest: Path) -> None:
        """Copy the encoder, its card and the checkpoints of the run into ``dest``."""
        raise NotImplementedError


class RunRegistry:
    """The runs known on this machine: one folder each under ``<root>/runs``, surviving restarts.

    Parameters
    ----------
    root : path-like, optional
        The data folder; default :func:`default_data_dir` (``$SSALD_DATA_DIR`` or the user
        data folder from platformdirs).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_data_dir()
        self.runs_dir = self.root / "runs"

    def folder(self, run_id: str) -> Path:
        """The local folder of a run (checked to be a plain run id, not a path)."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run_id) or run_id in (".", ".."):
            raise LaunchError(f"{run_id!r} is not a run id (see `ssald-cli runs list`)")
        return self.runs_dir / run_id

    def create(self, record: RunRecord) -> Path:
        """Make the folder of a new run and save its record."""
        folder = self.folder(record.id)
        folder.mkdir(parents=True, exist_ok=False)
        self.save(record)
        return folder

    def save(self, record: RunRecord) -> None:
        """Write ``launch.json`` atomically (a crash never leaves half a record)."""
        path = self.folder(record.id) / RECORD_FILE
        # A temporary name per process and thread: the GUI and `ssald-cli runs` (or two GUI
        # workers) may save the same run at once.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2, default=str) + "\n")
        tmp.replace(path)

    def load(self, run_id: str) -> RunRecord:
        """The saved record of a run."""
        path = self.folder(run_id) / RECORD_FILE
        try:
            return RunRecord.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise LaunchError(
                f"no run {run_id!r} in {self.runs_dir} (see `ssald-cli runs list`)"
            ) from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise LaunchError(f"{path}: not a readable run record ({exc})") from None

    def ids(self) -> list[str]:
        """Run ids, oldest first."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if (p / RECORD_FILE).exists())

    def records(self) -> list[RunRecord]:
        """All readable run records, oldest first (unreadable ones are skipped)."""
        out = []
        for run_id in self.ids():
            try:
                out.append(self.load(run_id))
            except LaunchError:
                continue
        return sorted(out, key=lambda r: r.created)

    def remove(self, run_id: str) -> None:
        """Forget a run: delete its folder here (for a local run, its results too).

        A run that is still going is refused (stop it first); a remote run's folder on its
        host is left alone.
        """
        run = self.open(run_id)
        status = run.status()
        if status.alive or status.state in ACTIVE_STATES:
            raise LaunchError(f"run {run_id} is still {status.state}; stop it first")
        shutil.rmtree(self.folder(run_id))

    def open(self, run_id: str) -> Run:
        """Reattach to a saved run."""
        from ssald_desktop.core.launch import launcher_from_record

        record = self.load(run_id)
        return Run(record, launcher_from_record(record), self)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a run's folder between processes (POSIX ``flock``; none elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Run:
    """A handle on one run: status, progress, metrics, log, stop, resume, fetch.

    Obtain one from :func:`ssald_desktop.core.launch.launch` or :meth:`RunRegistry.open`. All
    methods are blocking and quick (one local read or one ssh round trip), so a GUI calls them
    from a worker thread; :meth:`follow` is a generator for such a worker.
    """

    def __init__(self, record: RunRecord, launcher: Launcher, registry: RunRegistry):
        self.record = record
        self.launcher = launcher
        self.registry = registry
        #: Bytes of this machine's metrics.jsonl and train.log already handed out by this handle.
        self._seen = {"metrics": 0, "log": 0}

    @property
    def id(self) -> str:
        """The run id."""
        return self.record.id

    @property
    def folder(self) -> Path:
        """The folder of the run on this machine (the run folder itself for a local run)."""
        return self.registry.folder(self.record.id)

    def _save(self) -> None:
        self.registry.save(self.record)

    def _reload(self) -> RunRecord:
        """Re-read the record: another process (GUI, CLI) may have stopped or resumed the run."""
        try:
            self.record = self.registry.load(self.record.id)
        except LaunchError:
            pass
        return self.record

    def poll(self) -> RunUpdate:
        """What is new since this handle's last poll (metrics lines, log text), and the status.

        The first poll of a handle hands out the whole history, later polls only what was
        appended. A remote run's new bytes are first appended to this machine's mirror
        (``metrics.jsonl``, ``train.log`` in :attr:`folder`), asking the host only for the
        bytes after the mirror's size, so every byte crosses the network once, however many
        handles or processes follow the run. An unreachable host gives the state ``unknown``
        with the reason, not an exception: the run may well be running.
        """
        rec = self._reload()
        try:
            with _folder_lock(self.folder):
                rec.offsets = {"metrics": _size(self.folder / METRICS_FILE),
                               "log": _size(self.folder / LOG_FILE)}
                raw = self.launcher.poll_raw(rec, self.folder)
                if self.launcher.remote and raw.get("exists", False):
                    self._append(METRICS_FILE, raw.get("metrics", ""),
                                 raw.get("metrics_restarted", False))
                    self._append(LOG_FILE, raw.get("log", ""), raw.get("log_restarted", False))
        except LaunchError as exc:
            last = rec.last or {}
            status = RunStatus(rec.id, "unknown", step=last.get("step"),
                               total_steps=last.get("total_steps"), message=str(exc),
                               pid=rec.pid)
            return RunUpdate(status, [], "")
        if not raw.get("exists", False):
            status = RunStatus(rec.id, "failed", message=(
                f"the run folder {rec.remote_dir or self.folder} no longer exists"))
            return RunUpdate(status, [], "")
        if self.launcher.remote:
            rec.offsets = {"metrics": int(raw.get("metrics_offset", 0)),
                           "log": int(raw.get("log_offset", 0))}
        metrics_text = self._read_new("metrics", METRICS_FILE, whole_lines=True)
        log_text = self._read_new("log", LOG_FILE, whole_lines=False)
        new_metrics = []
        for line in metrics_text.splitlines():
            try:
                new_metrics.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        log_tail = self.log_tail(40)
        state, message = derive_state(raw, rec.stop_requested, log_tail)
        run = raw.get("run") or {}
        step = run.get("step")
        train_lines = [m for m in new_metrics if m.get("event") in ("train", "checkpoint")]
        latest = train_lines[-1] if train_lines else dict(rec.last.get("metrics") or {})
        if latest.get("step") is not None and (step is None or latest["step"] > step):
            step = latest["step"]
        status = RunStatus(
            rec.id, state, step=step, total_steps=run.get("total_steps"),
            alive=bool(raw.get("alive")), message=message,
            log_tail=tail_lines(log_tail, 20) if state == "failed" else "",
            encoder=str(run.get("encoder", "")), pid=raw.get("pid"), metrics=latest,
        )
        rec.last = {"state": state, "step": step, "total_steps": status.total_steps,
                    "message": message, "time": time.time(), "metrics": latest,
                    "encoder": status.encoder}
        self._save()
        return RunUpdate(status, new_metrics, log_text)

    def _read_new(self, key: str, name: str, whole_lines: bool) -> str:
        """The bytes of the local ``name`` that this handle has not handed out yet."""
        data, start = read_from(str(self.folder / name), self._seen[key], 1 << 22, whole_lines)
        self._seen[key] = start + len(data)
        return data.decode("utf-8", "replace")

    def _append(self, name: str, text: str, restarted: bool) -> None:
        path = self.folder / name
        if restarted:
            path.write_text("")
        if text:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(text)

    def status(self) -> RunStatus:
        """The current status (polls once)."""
        return self.poll().status

    def metrics(self) -> list[dict[str, Any]]:
        """Every metrics line received so far (from this machine's copy)."""
        path = self.folder / METRICS_FILE
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log received so far (reads at most the last 64 KiB)."""
        path = self.folder / LOG_FILE
        if not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            text = fh.read().decode("utf-8", "replace")
        return tail_lines(text, lines)

    def stop(self, timeout: float = 20.0) -> RunStatus:
        """Stop the run (SIGTERM to its process group, SIGKILL after ``timeout`` s)."""
        self._reload().stop_requested = True
        self._save()
        self.launcher.stop_raw(self.record, self.folder, timeout)
        return self.status()

    def resume(self, overrides: list[str] | tuple[str, ...] = ()) -> Run:
        """Start the run again in the same run folder; it continues from its last checkpoint.

        ``overrides`` (``section.key=value``) are added to the run's own, e.g.
        ``train.epochs=60`` to train longer or shorter than first planned (the learning-rate
        schedule then follows the new total). The architecture cannot change: ``model.train``
        refuses a checkpoint of another one.
        """
        status = self.status()
        if status.state == "unknown":
            raise LaunchError(f"run {self.id}: cannot resume, {status.message}")
        if status.alive:
            raise LaunchError(f"run {self.id} is still running (pid {status.pid}); stop it first")
        if status.state == "finished":
            raise LaunchError(f"run {self.id} has finished: nothing to resume")
        self.record.stop_requested = False
        if overrides:
            check_overrides(self.record.config, [*self.record.overrides, *overrides],
                            f"run {self.id}")
            self.record.overrides = [*self.record.overrides, *overrides]
        self.launcher.start(self.record, self.folder, resume=True)
        self.record.launches.append({"time": time.time(), "kind": "resume",
                                     "pid": self.record.pid})
        self._save()
        return self

    def fetch(self, dest: str | Path | None = None) -> dict[str, str]:
        """Copy the exported encoder (with its card) and the checkpoints into ``dest``.

        ``dest`` defaults to the run's folder on this machine. Returns the local paths of what
        arrived (``encoder``, ``card``, ``checkpoints``); a run without an exported encoder
        yet gives only its checkpoints.
        """
        target = Path(dest) if dest is not None else self.folder
        target.mkdir(parents=True, exist_ok=True)
        local_same = not self.launcher.remote and target.resolve() == self.folder.resolve()
        if not local_same:
            self.launcher.fetch_raw(self.record, self.folder, target)
        found = {}
        for key, name in (("encoder", "encoder.keras"), ("card", "encoder.card.json"),
                          ("checkpoints", "checkpoints")):
            if (target / name).exists():
                found[key] = str(target / name)
        if not found:
            raise LaunchError(
                f"run {self.id}: nothing to fetch yet (no encoder.keras or checkpoints in "
                f"{self.record.remote_dir or self.folder})"
            )
        self.record.fetched = found
        self._save()
        return found

    def follow(self, interval: float = 2.0, timeout: float | None = None
               ) -> Generator[RunUpdate, None, RunStatus]:
        """Poll every ``interval`` s, yielding each update, until the run ends.

        Returns the final status (a generator's return value; see
        :func:`ssald_desktop.core.progress.run_to_end`). ``timeout`` bounds the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            update = self.poll()
            yield update
            if update.status.done:
                return update.status
            if deadline is not None and time.monotonic() > deadline:
                raise LaunchError(f"run {self.id}: still {update.status.state} after "
                                  f"{timeout:.0f} s")
            time.sleep(interval)

    def wait(self, interval: float = 2.0, timeout: float | None = None,
             callback: Callable[[RunUpdate], Any] | None = None) -> RunStatus:
        """Wait for the run to end; raises :class:`LaunchError` (with the log) if it failed."""
        gen = self.follow(interval, timeout)
        while True:
            try:
                update = next(gen)
            except StopIteration as stop:
                status: RunStatus = stop.value
                break
            if callback is not None:
                callback(update)
        if status.state == "failed":
            raise LaunchError(f"run {self.id} failed: {status.message}")
        return status
