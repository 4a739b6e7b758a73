"""The run-folder helper: probe a host, poll a run, stop it, pack its results.

This module is self-contained (standard library only, Python >= 3.7, no package import) because
it runs in two ways: imported by the local launcher, and sent *as source* to a remote host,
where ``PYTHON -c SOURCE COMMAND ARG...`` runs it with the arguments quoted one by one. Every
answer is one JSON object on stdout (``pack`` writes a gzipped tar instead), so the launcher
never parses free text from the remote shell.

Commands
--------
``probe WORKDIR MODULE``
    Create ``WORKDIR`` (``~`` expanded) and report its absolute path, its free bytes, the
    Python version, and whether ``tensorflow`` and ``MODULE`` can be imported (checked with
    :func:`importlib.util.find_spec`, without importing TensorFlow, which takes seconds).
``poll RUNDIR METRICS_OFFSET LOG_OFFSET MAX_BYTES``
    Whether the run's process (its process-group leader) is alive, its ``run.json`` and
    exit status, and the bytes of ``metrics.jsonl`` (whole lines only) and ``train.log``
    after the given byte offsets.
``stop RUNDIR TIMEOUT``
    SIGTERM to the run's process group, then SIGKILL after ``TIMEOUT`` seconds.
``pack RUNDIR NAME...``
    A gzipped tar of the named files/folders of ``RUNDIR`` that exist, on stdout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import tarfile
import time

PID_FILE = "launch.pid"
EXIT_FILE = "exit_status"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"


def probe(workdir: str, module: str = "model.train") -> dict:
    """Create the work folder and describe this host's Python, TensorFlow and free disk."""
    path = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(path, exist_ok=True)
    st = os.statvfs(path)
    # The run starts with its run folder as working directory: the package must be importable
    # without the current folder on sys.path.
    sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
    try:
        has_module = importlib.util.find_spec(module) is not None
    except ImportError:
        has_module = False
    return {
        "workdir": path,
        "free_bytes": st.f_bavail * st.f_frsize,
        "python": sys.executable,
        "version": ".".join(str(v) for v in sys.version_info[:3]),
        "tensorflow": importlib.util.find_spec("tensorflow") is not None,
        "module": has_module,
    }


def read_pid(rundir: str) -> int | None:
    """The process-group id written when the run started (None if not started)."""
    try:
        with open(os.path.join(rundir, PID_FILE)) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def group_alive(pgid: int | None) -> bool:
    """Whether any process of the process group ``pgid`` is alive."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid_alive(pgid) or _group_members_alive(pgid)


def _group_members_alive(pgid: int) -> bool:
    """Whether a non-zombie process other than the leader is in the group (Linux /proc)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def read_from(path: str, offset: int, max_bytes: int, whole_lines: bool) -> tuple[bytes, int]:
    """Bytes of ``path`` after ``offset`` (at most ``max_bytes``) and the offset they start at.

    An offset past the end means the file was replaced: reading starts again at 0.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if offset > size:
                offset = 0
            fh.seek(offset)
            data = fh.read(max_bytes)
    except OSError:
        return b"", 0
    if whole_lines:
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut >= 0 else b""
    return data, offset


def poll(rundir: str, metrics_offset: int = 0, log_offset: int = 0,
         max_bytes: int = 1 << 20) -> dict:
    """Describe a run folder and return what was appended to its metrics and log."""
    if not os.path.isdir(rundir):
        return {"exists": False}
    pgid = read_pid(rundir)
    run = None
    try:
        with open(os.path.join(rundir, RUN_FILE)) as fh:
            run = json.load(fh)
    except (OSError, ValueError):
        pass
    exit_status = None
    try:
        with open(os.path.join(rundir, EXIT_FILE)) as fh:
            exit_status = int(fh.read().strip())
    except (OSError, ValueError):
        pass
    metrics, m_start = read_from(os.path.join(rundir, METRICS_FILE), metrics_offset, max_bytes,
                                  True)
    log, l_start = read_from(os.path.join(rundir, LOG_FILE), log_offset, max_bytes, False)
    return {
        "exists": True,
        "pid": pgid,
        "alive": pid_alive(pgid),
        "run": run,
        "exit_status": exit_status,
        "metrics": metrics.decode("utf-8", "replace"),
        "metrics_offset": m_start + len(metrics),
        "metrics_restarted": m_start < metrics_offset,
        "log": log.decode("utf-8", "replace"),
        "log_offset": l_start + len(log),
        "log_restarted": l_start < log_offset,
        "time": time.time(),
    }


def stop(rundir: str, timeout: float = 20.0) -> dict:
    """SIGTERM the run's process group, wait up to ``timeout`` s, then SIGKILL it."""
    pgid = read_pid(rundir)
    if not group_alive(pgid):
        return {"pid": pgid, "was_alive": False, "killed": False}
    assert pgid is not None
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return {"pid": pgid, "was_alive": True, "killed": False}
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not group_alive(pgid):
            return {"pid": pgid, "was_alive": True, "killed": False}
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(50):
        if not group_alive(pgid):
            break
        time.sleep(0.1)
    return {"pid": pgid, "was_alive": True, "killed": True}


def pack(rundir: str, names: list[str], out=None) -> None:  # noqa: ANN001
    """Write a gzipped tar of the existing ``names`` of ``rundir`` to ``out`` (stdout)."""
    out = out if out is not None else sys.stdout.buffer
    with tarfile.open(fileobj=out, mode="w|gz") as tar:
        for name in names:
            path = os.path.join(rundir, name)
            if os.path.exists(path):
                tar.add(path, arcname=name)


def main(argv: list[str]) -> int:
    """Run one helper command; prints JSON (or a tar for ``pack``)."""
    cmd, args = argv[0], argv[1:]
    if cmd == "probe":
        result = probe(args[0], args[1] if len(args) > 1 else "model.train")
    elif cmd == "poll":
        result = poll(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "stop":
        result = stop(args[0], float(args[1]))
    elif cmd == "pack":
        pack(args[0], args[1:])
        return 0
    else:
        print(f"unknown helper command {cmd!r}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
