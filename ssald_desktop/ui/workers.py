"""Background tasks for the GUI: superqt workers whose results arrive in the GUI thread.

A :class:`TaskRunner` starts a function or generator in Qt's global thread pool with
:func:`superqt.utils.create_worker` (as napari does) and hands its progress, result and error to
plain Python callbacks. The callbacks never run in the worker thread: every worker signal is
connected to a slot of a :class:`Task`, a QObject created in the GUI thread, so Qt queues the
call into the GUI thread's event loop (a signal connected to a lambda or a plain function would
run in the worker thread and must not touch widgets).

Cancelling: a generator task stops at its next ``yield`` (superqt's ``quit()``) and is then
closed, so its ``finally`` clauses run at once; a plain function
cannot be interrupted from outside, so its result is simply discarded when it arrives. Either
way no callback of a cancelled task is called again.

Progress convention: a generator yields ``(step, n_steps, message)`` (the core's convention, e.g.
:func:`ssald_desktop.core.sources.detect_sources_iter`); other yielded values are passed on
unchanged.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal, Slot
from superqt.utils import create_worker

log = logging.getLogger(__name__)

Callback = Callable[[Any], None]


#: Workers of recently ended tasks (see TaskRunner._task_ended).
_RECENT_WORKERS: collections.deque[Any] = collections.deque(maxlen=256)


def collect_garbage_in_gui_thread(app: Any) -> Any:
    """Run Python's cyclic garbage collector only in the GUI thread, on a timer (once per app).

    With automatic collection, a collection triggered by an allocation in a worker thread can
    free a cycle holding Qt objects there: PySide then destroys them in that thread while the
    GUI thread deletes widgets, and the two deadlock on Qt's connection lock (seen in the test
    suite: a worker in ``QObject::~QObject`` waiting for the GIL, the GUI thread holding the
    GIL in ``QObject::~QObject`` waiting for the lock). :class:`pyqtgraph.util.
    garbage_collector.GarbageCollector` disables automatic collection and collects on a GUI
    timer with the same thresholds. Returns it (kept on ``app``).
    """
    gc_timer = getattr(app, "_ssald_gc", None)
    if gc_timer is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        gc_timer = GarbageCollector(interval=1.0)
        app._ssald_gc = gc_timer
    return gc_timer


def _close_generator(gen: Any) -> None:
    try:
        gen.close()
    except (ValueError, RuntimeError) as exc:  # still running, or ignored GeneratorExit
        log.warning("could not close a cancelled task's generator: %s", exc)


class Task(QObject):
    """One background job; lives in the GUI thread and relays the worker's signals.

    Not made directly: use :meth:`TaskRunner.run`.
    """

    #: Emitted once, in the GUI thread, when the task is over (done, failed or cancelled).
    ended = Signal(object)

    def __init__(
        self,
        name: str,
        on_result: Callback | None,
        on_error: Callback | None,
        on_progress: Callback | None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.name = name
        self.cancelled = False
        self.done = False
        self.error: BaseException | None = None
        self.progress: tuple[int, int, str] | None = None
        self._on_result = on_result
        self._on_error = on_error
        self._on_progress = on_progress
        self.worker: Any = None

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "done" if self.done else "running"
        return f"<Task {self.name!r} {state}>"

    @property
    def running(self) -> bool:
        """True until the task has ended (cancelled counts as ended)."""
        return not (self.done or self.cancelled)

    def cancel(self) -> None:
        """Ask the worker to stop and drop whatever it delivers from now on."""
        if not self.running:
            return
        self.cancelled = True
        if self.worker is not None:
            self.worker.quit()
        self.ended.emit(self)

    @Slot(object)
    def _yielded(self, value: object) -> None:
        if self.cancelled:
            return
        if isinstance(value, tuple) and len(value) == 3:
            step, total, message = value
            self.progress = (int(step), int(total), str(message))
        if self._on_progress is not None:
            self._deliver(self._on_progress, value)

    def _deliver(self, callback: Callback, value: object) -> None:
        """Call back, unless the widget it updates was closed while the task ran."""
        try:
            callback(value)
        except RuntimeError as exc:
            if "already deleted" not in str(exc):
                raise
            log.debug("task %s: its widget is gone; result dropped (%s)", self.name, exc)

    @Slot(object)
    def _returned(self, value: object) -> None:
        if self.cancelled or self.done:
            return
        self.done = True
        if self._on_result is not None:
            self._deliver(self._on_result, value)

    @Slot(object)
    def _errored(self, exc: object) -> None:
        if self.cancelled or self.done:
            return
        self.done = True
        self.error = exc if isinstance(exc, BaseException) else RuntimeError(str(exc))
        if self._on_error is not None:
            self._deliver(self._on_error, self.error)
        else:
            log.error("task %s failed: %s", self.name, exc)

    @Slot()
    def _finished(self) -> None:
        if self.cancelled:
            return
        if not self.done:
            # A generator stopped by quit() before the task was marked cancelled.
            self.cancelled = True
        self.ended.emit(self)


class TaskRunner(QObject):
    """Starts background tasks and keeps track of those still running.

    Signals
    -------
    busy_changed(bool)
        True when the first task starts, False when the last one ends.
    progress(object)
        ``(task name, step, n_steps, message)`` for every progress report of any task.
    """

    busy_changed = Signal(bool)
    progress = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._tasks: list[Task] = []

    @property
    def tasks(self) -> list[Task]:
        """Tasks still running."""
        return list(self._tasks)

    def is_busy(self) -> bool:
        """Whether any task is running."""
        return bool(self._tasks)

    def run(
        self,
        name: str,
        func: Callable[..., Any],
        *args: Any,
        on_result: Callback | None = None,
        on_error: Callback | None = None,
        on_progress: Callback | None = None,
        **kwargs: Any,
    ) -> Task:
        """Run ``func(*args, **kwargs)`` in a worker thread.

        ``func`` may be a generator function (progress through its yields, result through its
        return value) or a plain function. The callbacks are called in the GUI thread.
        """
        task = Task(name, on_result, on_error, on_progress, parent=self)

        def report(value: object) -> None:  # called by the Task in the GUI thread
            if isinstance(value, tuple) and len(value) == 3:
                self.progress.emit((name, *value))
            if on_progress is not None:
                on_progress(value)

        task._on_progress = report
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        task.worker = worker
        worker.returned.connect(task._returned)
        worker.errored.connect(task._errored)
        worker.finished.connect(task._finished)
        if hasattr(worker, "yielded"):
            worker.yielded.connect(task._yielded)
            # superqt emits `aborted` in the worker thread when quit() stops the loop, with the
            # generator suspended: closing it there runs its cleanup (e.g. stopping a helper
            # process) at once rather than whenever it is collected. The callable holds the
            # generator, not the worker, so no reference cycle keeps the worker for the GC to
            # delete later from another thread.
            gen = getattr(worker, "_gen", None)
            if gen is not None:
                worker.aborted.connect(functools.partial(_close_generator, gen))
        task.ended.connect(self._task_ended)
        was_busy = self.is_busy()
        self._tasks.append(task)
        if not was_busy:
            self.busy_changed.emit(True)
        worker.start()
        return task

    @Slot(object)
    def _task_ended(self, task: Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
            # The worker may still be returning from its run() in the pool thread when this
            # arrives: keep it referenced a while, so that it is never deleted (by refcount or
            # by the cyclic GC in this thread) under a running thread.
            _RECENT_WORKERS.append(task.worker)
            # Hand it to Python: freed once the caller drops it (a late worker signal to a
            # freed Task is simply not delivered).
            task.setParent(None)
            if not self._tasks:
                self.busy_changed.emit(False)

    def cancel_all(self, names: Collection[str] | None = None) -> None:
        """Cancel every running task, or only those with one of these names."""
        for task in list(self._tasks):
            if names is None or task.name in names:
                task.cancel()

    @staticmethod
    def wait_for_threads(timeout_ms: int = 30_000) -> bool:
        """Block until the thread pool is idle (call only when quitting); True if it is."""
        return bool(QThreadPool.globalInstance().waitForDone(timeout_ms))
