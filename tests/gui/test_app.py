"""The desktop app: start-up, the field view, galaxy table, cutout panel, errors, settings.

One main window on the bundled sample field is shared by the tests of this module (loading and
detecting takes ~10-20 s); the tests that change it (errors, cancel, missing sources module)
come last and leave it usable. Start-up is also checked in fresh interpreters (subprocesses),
which is the only way to check what start-up imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QThread, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtTest import QTest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "sample" / "frames" / "2820-3-122"
FIELD = "2820-3-122"
LOAD_TIMEOUT_S = 240  # reading, rendering and detecting on a busy 2-core machine


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        SSALD_CONFIG_DIR=str(tmp_path / "config"),
        SSALD_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# start-up in a fresh interpreter
# ---------------------------------------------------------------------------------------------


def test_create_app_shows_window_without_tensorflow(tmp_path):
    code = (
        "import sys; from ssald_desktop.app import create_app; app, w = create_app([]); "
        "assert w.isVisible(); assert '2820-3-122' in w.windowTitle(), w.windowTitle(); "
        "assert 'tensorflow' not in sys.modules; assert 'keras' not in sys.modules; "
        "assert 'astroquery' not in sys.modules; print('OK')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert "RuntimeError" not in proc.stderr


def test_startup_subprocess_quits_cleanly(tmp_path):
    """MNELAB-style start-up test: launch the real entry point, let it quit by itself."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ssald_desktop.app", "--quit-after-ms", "3000"],
        env=_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start >= 3.0
    # The window saved its geometry into the test's settings folder, not the user's.
    ini = tmp_path / "config" / "ssald-desktop.ini"
    assert ini.exists()
    assert "geometry" in ini.read_text()


def test_startup_env_var_quit_and_bad_path(tmp_path):
    """A missing path is reported in the window (not a crash); SSALD_QUIT_AFTER_MS works."""
    proc = subprocess.run(
        [sys.executable, "-m", "ssald_desktop.app", str(tmp_path / "nowhere")],
        env=_env(tmp_path, SSALD_QUIT_AFTER_MS="1500"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nowhere" in proc.stderr  # the error is logged as well as shown
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# the main window on the sample field (shared)
# ---------------------------------------------------------------------------------------------


def test_window_title_and_field_image(window):
    assert window.windowTitle() == f"SSALD desktop - {FIELD}"
    assert window.field_name() == FIELD
    assert window.field_view.has_image()
    img = window.field_view.image.image
    assert img.shape == (1489, 2048, 3) and img.dtype == np.uint8
    # A real colour image: not empty, not saturated, the three channels differ.
    assert 0.5 < img.mean() < 128
    assert not np.array_equal(img[..., 0], img[..., 2])
    # Row-major, no flip: pixel (x, y) of the view is column x, row y of the r frame.
    rect = window.field_view.image.mapRectToParent(window.field_view.image.boundingRect())
    assert (rect.left(), rect.bottom(), rect.width(), rect.height()) == (-0.5, 1488.5, 2048, 1489)
    assert not window.field_view.view.yInverted()


def test_compass_agrees_with_wcs(window):
    """In 2820-3-122 the r-band WCS has RA growing with the row and Dec with the column."""
    wcs = window.field.frame_set.reference.wcs
    (ra0, dec0), (ra_x, dec_x), (ra_y, dec_y) = wcs.all_pix2world(
        [[1000, 700], [1100, 700], [1000, 800]], 0
    )
    assert dec_x - dec0 > 0.01 and abs(ra_x - ra0) < 1e-4  # +x is north
    assert ra_y - ra0 > 0.01 and abs(dec_y - dec0) < 1e-4  # +y (up on screen) is east
    north, east = window.field_view.compass.directions()
    assert north[0] > 0.99 and east[1] > 0.99


def test_field_rgb_matches_astropy_lupton(window):
    """The strip-wise render equals make_lupton_rgb on the resampled bands."""
    from astropy.visualization import make_lupton_rgb

    from ssald_desktop.core.render import band_affine, field_rgb, resample_to_reference

    fs = window.field.frame_set
    spec = window.spec
    for band in spec.rgb:
        _, _, residual = band_affine(fs, band)
        assert residual < 0.01  # the affine model of the band-to-r mapping holds
    planes = []
    for band in spec.rgb:
        gen = resample_to_reference(fs, band, strip_rows=4096)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            planes.append(stop.value)
    with np.errstate(invalid="ignore", divide="ignore"):
        direct = make_lupton_rgb(*planes, minimum=spec.minimum, stretch=spec.stretch, Q=spec.q)
    assert np.array_equal(window.field.rgb, direct)
    assert np.array_equal(field_rgb(fs, spec), direct)


def test_galaxy_table_and_markers_filled(window):
    n = len(window.galaxies)
    assert n > 0
    assert window.table_model.rowCount() == n == window.proxy.rowCount()
    assert window.field_view.marker_count() == n
    assert window.table_dock.windowTitle() == f"Galaxies ({n})"
    # Markers sit on the source positions of the r-band pixel grid.
    np.testing.assert_allclose(window.field_view.markers.data["x"], window.galaxies.x)
    # Sorting is numeric (by the sort role), both ways.
    for column in (1, 3, 4):
        for order in (Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder):
            window.table.sortByColumn(column, order)
            values = [
                window.proxy.index(r, column).data(Qt.ItemDataRole.UserRole) for r in range(n)
            ]
            finite = [v for v in values if np.isfinite(v)]
            expected = sorted(finite, reverse=order == Qt.SortOrder.DescendingOrder)
            assert finite == expected
    window.table.sortByColumn(3, Qt.SortOrder.AscendingOrder)
    headers = [window.proxy.headerData(c, Qt.Orientation.Horizontal) for c in range(7)]
    assert headers[:4] == ["id", "RA (deg)", "Dec (deg)", "r (mag)"]


def test_row_selection_selects_marker_and_updates_cutout(window, qtbot):
    row = 2
    window.table.selectRow(row)
    index = window.proxy.mapToSource(window.proxy.index(row, 0)).row()
    qtbot.waitUntil(lambda: window.selected_galaxy() == index)
    assert window.field_view.selected() == index
    sel = window.field_view.selection.data
    assert len(sel) == 1
    assert (sel["x"][0], sel["y"][0]) == (window.galaxies.x[index], window.galaxies.y[index])
    cut = window.cutout_panel.cutout
    assert cut is not None
    assert cut.ra == pytest.approx(window.galaxies.ra[index], abs=1e-9)
    assert cut.dec == pytest.approx(window.galaxies.dec[index], abs=1e-9)
    assert cut.rgb().shape == (64, 64, 3)
    assert not window.cutout_panel.rgb_label.pixmap().isNull()
    for band in "ugriz":
        assert not window.cutout_panel.band_labels[band].pixmap().isNull()
    assert f"Galaxy {int(window.galaxies.ids[index])}" in window.cutout_panel.heading.text()
    assert "RA " in window.cutout_panel.info.text()


def test_marker_click_selects_table_row(window, qtbot):
    # Pick a galaxy away from the current selection and make sure it is on screen.
    index = (window.selected_galaxy() or 0) + 1
    window.field_view.reset_zoom()
    qtbot.wait(50)
    scene = window.field_view.marker_scene_pos(index)
    pos = window.field_view.mapFromScene(scene)
    QTest.mouseClick(window.field_view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.waitUntil(lambda: window.selected_galaxy() == index)
    rows = window.table.selectionModel().selectedRows()
    assert len(rows) == 1
    assert window.proxy.mapToSource(rows[0]).row() == index
    assert window.cutout_panel.cutout.ra == pytest.approx(window.galaxies.ra[index])


def test_select_galaxy_api_keeps_both_views_in_step(window):
    for index in (0, len(window.galaxies) - 1, 3):
        window.select_galaxy(index)
        assert window.selected_galaxy() == index
        assert window.field_view.selected() == index
        row = window.table.selectionModel().selectedRows()[0]
        assert window.proxy.mapToSource(row).row() == index


def test_status_bar_shows_radec_under_cursor(window, qtbot):
    from astropy.coordinates import Angle

    view = window.field_view
    view.reset_zoom()
    qtbot.wait(50)
    x, y = 1000.0, 700.0
    scene = view.view.mapViewToScene(QPointF(x, y))
    view._on_mouse_moved(scene)  # what the scene's sigMouseMoved delivers
    text = window.cursor_label.text()
    ra, dec = window.field.frame_set.reference.wcs.all_pix2world([[x, y]], 0)[0]
    # The pointer lands within a pixel of the asked position: compare to 2 arcsec.
    shown_ra = float(text.split("(")[1].split(",")[0])
    shown_dec = float(text.split(",")[1].split(")")[0])
    assert abs(shown_ra - ra) * 3600 < 2 and abs(shown_dec - dec) * 3600 < 2
    assert Angle(ra, unit="deg").to_string(unit="hourangle", sep=":", precision=0)[:5] in text
    view.cursor_left.emit()
    assert window.cursor_label.text() == ""


def test_workers_call_back_in_the_gui_thread(qtbot):
    from ssald_desktop.ui.workers import TaskRunner

    runner = TaskRunner()
    seen: dict[str, object] = {}
    gui = QThread.currentThread()

    def gen(n):
        seen["worker"] = threading.current_thread().name
        for i in range(n):
            yield (i, n, f"step {i}")
        return n * 10

    def on_progress(value):
        seen.setdefault("progress_in_gui", QThread.currentThread() is gui)

    def on_result(value):
        seen["result"] = value
        seen["result_in_gui"] = QThread.currentThread() is gui

    with qtbot.waitSignal(runner.busy_changed, timeout=10_000) as blocker:
        runner.run("t", gen, 3, on_result=on_result, on_progress=on_progress)
    assert blocker.args == [True]
    qtbot.waitUntil(lambda: "result" in seen and not runner.is_busy(), timeout=10_000)
    assert seen["result"] == 30
    assert seen["result_in_gui"] is True and seen["progress_in_gui"] is True
    assert seen["worker"] != threading.current_thread().name

    errors = []

    def boom():
        raise ValueError("bad value 42")

    runner.run("e", boom, on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
    assert isinstance(errors[0], ValueError) and "42" in str(errors[0])

    # Cancelled: the result of a function that cannot be interrupted is dropped.
    results = []
    release = threading.Event()
    task = runner.run("slow", lambda: release.wait(10) and "late", on_result=results.append)
    task.cancel()
    assert not runner.is_busy()
    release.set()
    qtbot.wait(300)
    assert results == []


# ---------------------------------------------------------------------------------------------
# errors, drops and cancelling (they leave the shared window usable)
# ---------------------------------------------------------------------------------------------


def test_corrupt_fits_shows_error_and_window_stays_usable(window, qtbot, tmp_path, monkeypatch):
    bad = tmp_path / "frame-r-002820-3-0122.fits"
    bad.write_bytes(b"this is not a FITS file\x00\xff" * 200)
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(window, "show_error", lambda title, msg: shown.append((title, msg)))
    window.open_field(bad)
    assert "(opening" in window.windowTitle()
    qtbot.waitUntil(lambda: bool(shown), timeout=60_000)
    title, message = shown[0]
    assert bad.name in message
    assert "2820-3-122" in title
    qtbot.waitUntil(lambda: not window.tasks.is_busy(), timeout=60_000)
    # The sample field is still shown and still works.
    assert window.windowTitle() == f"SSALD desktop - {FIELD}"
    assert window.field_view.has_image() and window.field_name() == FIELD
    assert window.field_view.marker_count() == len(window.galaxies) > 0
    window.select_galaxy(1)
    assert window.cutout_panel.cutout is not None
    # Selecting starts the galaxy's evidence measurement; the busy indicator goes when it ends.
    qtbot.waitUntil(lambda: not window.tasks.is_busy(), timeout=120_000)
    assert not window.progress_bar.isVisible()


def test_real_error_dialog_is_non_blocking(window, qtbot, tmp_path):
    """The unpatched show_error opens a window-modal box and returns at once."""
    from PySide6.QtWidgets import QMessageBox

    with qtbot.waitSignal(window.error_shown, timeout=60_000) as blocker:
        window.open_field(tmp_path / "missing-folder")
    assert "missing-folder" in blocker.args[0]
    boxes = [w for w in window.findChildren(QMessageBox) if w.isVisible()]
    assert boxes and "missing-folder" in boxes[-1].text()
    for box in boxes:
        box.close()
    assert "missing-folder" in window.last_error


def test_drop_corrupt_frame_file(window, qtbot, tmp_path, monkeypatch):
    bad = tmp_path / "frame-g-002820-3-0122.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b"\x00" * 50)
    shown: list[str] = []
    monkeypatch.setattr(window, "show_error", lambda title, msg: shown.append(msg))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(bad))])
    event = QDropEvent(
        QPointF(100, 100),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    qtbot.waitUntil(lambda: bool(shown), timeout=60_000)
    assert bad.name in shown[0]
    qtbot.waitUntil(lambda: not window.tasks.is_busy(), timeout=60_000)
    assert window.field_name() == FIELD


def test_cancel_keeps_the_shown_field(window, qtbot):
    window.open_field(SAMPLE)
    assert window.tasks.is_busy()
    qtbot.wait(20)
    assert window.progress_bar.isVisibleTo(window) and window.cancel_button.isVisibleTo(window)
    QTest.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    assert not window.tasks.is_busy()
    assert not window.cancel_button.isVisibleTo(window)
    assert window.windowTitle() == f"SSALD desktop - {FIELD}"
    assert window.field_view.marker_count() == len(window.galaxies) > 0
    # Nothing from the cancelled request arrives later.
    n_loaded = len(window.loaded_names)
    qtbot.wait(500)
    assert len(window.loaded_names) == n_loaded


def test_without_sources_module_no_markers(window, qtbot, monkeypatch):
    """Galaxy detection that cannot be imported leaves the field without markers, no error."""
    from PySide6.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(120_000)  # the cancelled read above
    import ssald_desktop.core

    # As if sources.py were absent: the import fails (the package attribute would satisfy it).
    monkeypatch.setitem(sys.modules, "ssald_desktop.core.sources", None)
    monkeypatch.delattr(ssald_desktop.core, "sources", raising=False)
    shown: list[str] = []
    monkeypatch.setattr(window, "show_error", lambda title, msg: shown.append(msg))
    with qtbot.waitSignal(window.galaxies_loaded, timeout=LOAD_TIMEOUT_S * 1000) as blocker:
        window.open_field(SAMPLE)
    assert blocker.args == [-1]
    assert shown == []
    assert window.field_name() == FIELD and window.field_view.has_image()
    assert window.field_view.marker_count() == 0 and window.table_model.rowCount() == 0
    assert "unavailable" in window.table_dock.windowTitle()


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------


def test_settings_defaults_and_round_trip(tmp_path):
    from ssald_desktop.core.cutouts import NormSpec
    from ssald_desktop.settings import DEFAULT_SDSS_TIMEOUT_S, Settings

    s = Settings()
    assert Path(s.file_name) == tmp_path / "config" / "ssald-desktop.ini"
    assert s.sdss_timeout() == DEFAULT_SDSS_TIMEOUT_S == 15.0
    assert s.norm_spec() == NormSpec()
    assert s.cache_dir() == tmp_path / "cache"  # $SSALD_CACHE_DIR from conftest
    assert s.last_field() == []
    assert s.window_geometry() is None
    spec = NormSpec(q=10.0, stretch=0.5, output_size=96)
    s.set_norm_spec(spec)
    s.set_sdss_timeout(30)
    s.set_last_field(["/a/b"])
    s.set_cache_dir(tmp_path / "elsewhere")
    s.sync()
    t = Settings()
    assert t.norm_spec() == spec
    assert t.sdss_timeout() == 30.0
    assert t.last_field() == ["/a/b"]
    assert t.cache_dir() == tmp_path / "elsewhere"
    with pytest.raises(ValueError):
        t.set_sdss_timeout(0)


def test_settings_bad_values_fall_back_to_defaults(tmp_path):
    from ssald_desktop.core.cutouts import NormSpec
    from ssald_desktop.settings import Settings

    ini = tmp_path / "config" / "ssald-desktop.ini"
    ini.parent.mkdir(parents=True)
    qs = QSettings(str(ini), QSettings.Format.IniFormat)
    qs.setValue("meta/version", 1)
    qs.setValue("sdss/timeout_s", "soon")
    qs.setValue("cutouts/norm_spec", '{"q": -1}')
    qs.setValue("window/geometry", "not bytes")
    qs.sync()
    s = Settings()
    assert s.sdss_timeout() == 15.0
    assert s.norm_spec() == NormSpec()
    assert s.window_geometry() is None


def test_settings_corrupt_or_newer_file_does_not_stop_the_app(tmp_path, qtbot):
    from ssald_desktop.settings import Settings
    from ssald_desktop.ui.main_window import MainWindow

    ini = tmp_path / "config" / "ssald-desktop.ini"
    ini.parent.mkdir(parents=True)

    # Written by a newer app: read as defaults, never written over.
    ini.write_bytes(b"[meta]\nversion=99\n[sdss]\ntimeout_s=42\n")
    newer = Settings()
    assert not newer.writable and "newer" in newer.problem
    assert newer.sdss_timeout() == 15.0
    newer.set_sdss_timeout(20)
    newer.sync()
    assert "version=99" in ini.read_text() and "timeout_s=42" in ini.read_text()

    # An unreadable version: the file is moved aside and the app starts from defaults.
    ini.write_bytes(b"[meta]\nversion=abc\n")
    moved = Settings()
    assert moved.writable and "abc" in moved.problem
    assert (ini.parent / "ssald-desktop.ini.corrupt").exists()

    # Garbage bytes and a junk window geometry: Qt reads what it can, the window ignores the
    # junk geometry, starts, and saves a good one on close.
    ini.write_bytes(
        b"\x00\xff\xfe[[[ garbage \n=\n\x00" * 20
        + b"\n[meta]\nversion=1\n[window]\ngeometry=@ByteArray(\\xff\\0junk)\n"
        + b"state=@ByteArray(junk)\n[cutouts]\nnorm_spec={oops\n"
    )
    junk = Settings()
    assert junk.window_geometry() is not None  # junk bytes, to be refused by Qt
    win = MainWindow(junk)
    qtbot.addWidget(win)
    win.show()
    assert win.spec == Settings().norm_spec()  # the default NormSpec
    win.close()
    good = Settings().window_geometry()
    assert good is not None and b"junk" not in bytes(good)
