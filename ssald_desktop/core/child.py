"""A long-lived helper process for CPU-bound work that holds Python's GIL.

Work such as photutils source detection spends long stretches in Python and in C code that
keeps the GIL; run in a worker thread it starves the GUI thread (the event loop stalled 130 to
250 ms while field 2820-3-122 was being detected). :class:`ChildProcess` runs such functions in
a separate interpreter (``spawn``, so no Qt state or threads are inherited), started once and
reused, so that only the first call pays the interpreter's start-up and imports.

:meth:`ChildProcess.call` is a generator (the core's worker convention): it sends the call,
then yields ``None`` every ``poll_s`` while the child works, so that a GUI worker can cancel it
between polls. Closing the generator early (a cancelled task) kills the child, which is
started again on the next call. An exception raised in the child is raised again in the
caller; a child that dies (killed, out of memory) gives a :class:`ChildProcessError`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any


def _serve(conn: Any, warm: Sequence[str]) -> None:  # pragma: no cover - runs in the child
    """The child's loop: import the warm modules, then run calls until told to stop."""
    for name in warm:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - warming is an optimisation only
            pass
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        func, args, kwargs, stream = message
        try:
            if stream:
                gen = func(*args, **kwargs)
                while True:
                    try:
                        value = next(gen)
                    except StopIteration as stop:
                        conn.send(("ok", stop.value))
                        break
                    conn.send(("progress", value))
            else:
                conn.send(("ok", func(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
            try:
                conn.send(("error", exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class ChildProcess:
    """One reusable helper process (see the module docstring).

    Parameters
    ----------
    warm : sequence of str
        Modules the child imports as soon as it starts (e.g. ``photutils.segmentation``), so
        that the first call does not wait for them.
    poll_s : float
        How often :meth:`call` yields while waiting.
    """

    def __init__(self, warm: Sequence[str] = (), poll_s: float = 0.05):
        self.warm = tuple(warm)
        self.poll_s = poll_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """Whether the child is running."""
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        """Start the child now (it warms its imports in the background)."""
        if self.alive:
            return
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.warm), daemon=True,
                                 name="ssald-child")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def kill(self) -> None:
        """Stop the child at once (work in progress is lost)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Ask the child to finish and wait briefly; kill it if it does not."""
        if self.alive and self._conn is not None:
            try:
                self._conn.send(None)
                self._proc.join(2)
            except (OSError, ValueError):
                pass
        self.kill()

    def call(self, func: Callable[..., Any], *args: Any,
             **kwargs: Any) -> Generator[None, None, Any]:
        """Run ``func(*args, **kwargs)`` in the child; a generator returning its result.

        ``func`` must be importable by name (a module-level function) and its arguments and
        result picklable. One call at a time: a second caller waits for the first.
        """
        return (yield from self._call(func, args, kwargs, False))

    def call_iter(self, func: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Generator[Any, None, Any]:
        """Run a generator function in the child: its yields come back as this one's.

        Between the child's progress values this yields ``None`` every ``poll_s``; the
        generator's return value is returned. Closing this generator kills the child.
        """
        return (yield from self._call(func, args, kwargs, True))

    def _call(self, func: Callable[..., Any], args: tuple, kwargs: dict,
              stream: bool) -> Generator[Any, None, Any]:
        with self._lock:
            self.start()
            conn = self._conn
            finished = False
            try:
                conn.send((func, args, kwargs, stream))
                start = time.monotonic()
                while True:
                    while not conn.poll(self.poll_s):
                        if not self._proc.is_alive():
                            code = self._proc.exitcode
                            self.kill()
                            raise ChildProcessError(
                                f"the helper process running {func.__name__} died (exit code "
                                f"{code}) after {time.monotonic() - start:.1f} s")
                        yield None
                    try:
                        status, value = conn.recv()
                    except EOFError as exc:
                        self.kill()
                        raise ChildProcessError(
                            f"the helper process running {func.__name__} died (its pipe "
                            "closed)") from exc
                    if status != "progress":
                        break
                    yield value
                finished = True
            finally:
                if not finished:
                    self.kill()  # cancelled, or failed mid-way: do not leave it busy
        if status == "error":
            raise value
        return value
