"""Shared GUI fixtures: one main window on the bundled sample field per test module."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QEventLoop

FIELD = "2820-3-122"
LOAD_TIMEOUT_S = 240  # reading, rendering and detecting on a busy 2-core machine


def _wait(app, predicate, timeout_s: float, what: str) -> None:
    """Process events until ``predicate()`` (no qtbot in module-scoped fixtures)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.005)


@pytest.fixture(scope="package", autouse=True)
def gc_in_gui_thread(qapp):
    """Collect garbage only in the GUI thread while GUI tests run, as the app does.

    A collection in a worker thread can free Qt objects there and deadlock with the GUI thread
    (see ``workers.collect_garbage_in_gui_thread``); afterwards the other tests get Python's
    automatic collection back.
    """
    import gc

    from ssald_desktop.ui.workers import collect_garbage_in_gui_thread

    collector = collect_garbage_in_gui_thread(qapp)
    assert not gc.isenabled()
    yield collector
    collector.timer.stop()
    del qapp._ssald_gc
    gc.enable()
    gc.collect()


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    from PySide6.QtCore import QThreadPool

    from ssald_desktop.app import create_app

    config = tmp_path_factory.mktemp("gui-config")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSALD_CONFIG_DIR", str(config))
        mp.setenv("SSALD_CACHE_DIR", str(config / "cache"))
        app, win = create_app([])
        assert app is qapp  # an existing QApplication is reused
        loaded: list[str] = []
        galaxies: list[int] = []
        win.field_loaded.connect(loaded.append)
        win.galaxies_loaded.connect(galaxies.append)
        assert win.isVisible()
        assert FIELD in win.windowTitle()
        _wait(app, lambda: bool(loaded) and bool(galaxies), LOAD_TIMEOUT_S, "field + galaxies")
        win.loaded_names = loaded  # type: ignore[attr-defined]
        yield win
        win.close()
        QThreadPool.globalInstance().waitForDone(120_000)
        win.deleteLater()
        app.processEvents()
