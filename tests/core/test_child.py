"""The reusable helper process: results, errors, progress streaming, cancel and death."""

from __future__ import annotations

import os

import pytest

from ssald_desktop.core.child import ChildProcess
from ssald_desktop.core.errors import DataFileError
from tests.conftest import QUIET_FIELD


def _drain(gen):
    """Run a child generator to its result, collecting what it yields (not the polls)."""
    seen = []
    while True:
        try:
            value = next(gen)
        except StopIteration as stop:
            return stop.value, seen
        if value is not None:
            seen.append(value)


@pytest.fixture()
def child():
    c = ChildProcess(poll_s=0.01)
    yield c
    c.close()


def test_result_comes_back_and_the_process_is_reused(child):
    value, _ = _drain(child.call(os.getpid))
    assert value != os.getpid()
    again, _ = _drain(child.call(os.getpid))
    assert again == value  # the same process serves the next call


def test_real_detection_in_the_child(child, quiet_field):
    from ssald_desktop.core.frames import FrameSet
    from ssald_desktop.core.sources import detect_galaxies

    one_band = FrameSet({"r": quiet_field["r"]}, psf=quiet_field.psf)
    table, _ = _drain(child.call(detect_galaxies, one_band, "r"))
    assert len(table) > 500 and int(table["is_galaxy"].sum()) > 30


def test_errors_are_raised_again_in_the_caller(child):
    from ssald_desktop.core.frames import open_frame_set

    with pytest.raises(DataFileError, match="nowhere"):
        _drain(child.call(open_frame_set, str(QUIET_FIELD.parent / "nowhere")))
    assert child.alive  # an error does not kill the helper


def test_streamed_progress_and_return_value(child):
    from ssald_desktop.core.frames import open_frame_set
    from ssald_desktop.core.sources import detect_sources_iter

    fs = open_frame_set(QUIET_FIELD, bands=["r"])
    table, seen = _drain(child.call_iter(detect_sources_iter, fs, "r"))
    assert len(seen) >= 3 and all(len(v) == 3 for v in seen)  # (step, n_steps, message)
    assert len(table) > 500


def test_closing_the_call_kills_the_child(child):
    import time

    gen = child.call(time.sleep, 30)
    assert next(gen) is None  # waiting
    pid = child._proc.pid
    gen.close()
    assert not child.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    value, _ = _drain(child.call(os.getpid))  # started again on demand
    assert value != pid


def test_a_dying_child_is_a_clear_error(child):
    import signal

    gen = child.call(os.kill, os.getpid(), 0)  # harmless call first: start the child
    _drain(gen)
    gen = child.call(os.kill, child._proc.pid, signal.SIGKILL)
    with pytest.raises(ChildProcessError, match="died"):
        _drain(gen)
    assert not child.alive
