"""SpectrumView on real SDSS spectra: lines, zoom, gaps, smoothing, rest frame, loading, drops."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from astropy.convolution import Box1DKernel, convolve
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

from ssald_desktop.core.spectra import EMISSION_LINES, read_spectrum
from ssald_desktop.ui.spectrum_view import (
    SpectrumView,
    band_envelope,
    band_path,
    boxcar_smooth,
    layout_label_rows,
    robust_limits,
)
from tests.conftest import DATA

SPECTRA = DATA / "sdss" / "spectra"
STRONG = SPECTRA / "spec-0266-51602-0166.fits"  # Halpha, [NII], [OIII] 5007 at S/N > 15
BROADLINE = SPECTRA / "spec-0266-51630-0174.fits"  # 547 masked pixels
BOSS_GALAXY = SPECTRA / "spec-4500-55543-0331.fits"  # lite, SPALL, z = 0.224
BOSS_QSO = SPECTRA / "spec-5290-55862-0984.fits"  # lite, SPALL, z = 2.56, ZWARNING 4
NOISY = SPECTRA / "spec-4238-55455-0037.fits"  # faint z = 0.607 galaxy


@pytest.fixture(scope="module")
def spectra():
    return {p.stem: read_spectrum(p) for p in (STRONG, BROADLINE, BOSS_GALAXY, BOSS_QSO, NOISY)}


@pytest.fixture
def view(qtbot):
    v = SpectrumView()
    qtbot.addWidget(v)
    v.resize(1000, 420)
    v.show()
    qtbot.waitExposed(v)
    return v


def _rows_do_not_overlap(labels):
    for row in {lab[3] for lab in labels}:
        spans = sorted((c - w / 2, c + w / 2) for _, c, w, r in labels if r == row)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"labels overlap on row {row}: {spans}"


def test_strong_line_galaxy_is_drawn_with_band_model_title_and_lines(view, spectra):
    spec = spectra[STRONG.stem]
    view.set_spectrum(spec)
    title = view.title.text()
    assert "0266-51602-0166" in title and "GALAXY" in title and "z = 0.02159" in title
    assert all(view.line_enabled(ln.name) for ln in EMISSION_LINES)
    x, y = view.flux_curve.getData()
    assert x.size == spec.npix
    np.testing.assert_allclose(x, spec.wavelength)
    np.testing.assert_array_equal(np.isnan(y), ~spec.good)
    _, model = view.model_curve.getData()
    np.testing.assert_allclose(model, spec.model)
    assert not view.band.path().isEmpty()
    # The band spans flux +- sigma: its bounding box reaches above the highest good flux.
    top = view.band.path().boundingRect().bottom()
    assert top >= np.nanmax(spec.flux[spec.good])
    assert [name for name, _ in view.marked_lines()] == [ln.name for ln in EMISSION_LINES]
    x0, x1 = view.x_range()
    assert x0 == pytest.approx(spec.wavelength[0]) and x1 == pytest.approx(spec.wavelength[-1])
    assert view.message() is None


def test_zoom_to_oiii_5007_puts_the_observed_line_in_view(view, spectra, qtbot):
    spec = spectra[STRONG.stem]
    view.set_spectrum(spec)
    observed = 5008.24 * (1 + spec.z)
    index = view.line_combo.findData("[OIII] 5007")
    view.line_combo.setCurrentIndex(index)
    view.line_combo.activated.emit(index)  # what a choice in the combo box sends
    x0, x1 = view.x_range()
    assert x0 < observed < x1
    assert x1 - x0 < 200
    # y fitted to the local flux: the line peak inside, the range well above zero.
    inside = (spec.wavelength > x0) & (spec.wavelength < x1) & spec.good
    y0, y1 = view.y_range()
    assert y0 <= spec.flux[inside].min() and y1 >= spec.flux[inside].max()
    assert y0 > 0.5 * spec.flux[inside].min()
    texts = [lab[0] for lab in view.visible_labels()]
    assert "[O III] 5007" in texts and "[O III] 4959" in texts
    view.reset_action.trigger()
    assert view.x_range()[1] - view.x_range()[0] > 5000
    assert view.line_combo.currentIndex() == 0


def test_labels_do_not_overlap_and_split_blends_when_zoomed(view, spectra):
    view.set_spectrum(spectra[STRONG.stem])
    whole = view.visible_labels()
    texts = [lab[0] for lab in whole]
    assert "H\u03b1+[N II]" in texts  # blended at this zoom: one label for three lines
    _rows_do_not_overlap(whole)
    view.zoom_to_line("H-alpha")
    texts = [lab[0] for lab in view.visible_labels()]
    assert {"[N II] 6548", "H\u03b1", "[N II] 6584"} <= set(texts)
    _rows_do_not_overlap(view.visible_labels())


def test_band_envelope_keeps_extremes_and_gaps():
    x = np.arange(1000.0)
    lower = np.sin(x) - 1
    upper = np.sin(x) + 1
    lower[400:600] = upper[400:600] = np.nan
    xb, lo, hi = band_envelope(x, lower, upper, 100)
    assert xb.size == 100
    assert np.nanmin(lo) == np.nanmin(lower) and np.nanmax(hi) == np.nanmax(upper)
    assert np.isnan(lo[(xb > 410) & (xb < 590)]).all()


def test_layout_rows_and_robust_limits():
    rows = layout_label_rows(np.array([10.0, 30.0, 50.0, 200.0]), np.full(4, 30.0), 2)
    assert list(rows) == [0, 1, 0, 0]
    flux = np.ones(100)
    flux[50] = 1000.0  # a one-pixel spike does not set the range
    flux[20:25] = [2, 5, 9, 5, 2]  # a resolved line does
    bottom, top = robust_limits(flux)
    assert top == 9 and bottom == 0
    assert robust_limits(np.full(5, np.nan)) is None


def test_masked_pixels_are_gaps_in_flux_and_band(view, spectra):
    spec = spectra[BROADLINE.stem]
    view.set_spectrum(spec)
    _, y = view.flux_curve.getData()
    assert int(np.isnan(y).sum()) == int((~spec.good).sum()) == 547
    runs = np.count_nonzero(np.diff(np.concatenate([[0], spec.good.astype(int), [0]])) == 1)
    sigma = spec.sigma
    lower, upper = spec.flux - sigma, spec.flux + sigma
    assert len(band_path(spec.wavelength, lower, upper).toSubpathPolygons()) == runs > 1
    assert band_path(spec.wavelength, None, None).isEmpty()
    # Zoomed out the band is drawn at screen resolution; the long masked run stays a gap.
    width = int(view.view.width())
    polygons = view.band.path().toSubpathPolygons()
    assert sum(p.size() for p in polygons) <= 2 * width + 4 * len(polygons)
    starts = np.flatnonzero(np.diff(spec.good.astype(int)) == -1)
    stops = np.flatnonzero(np.diff(spec.good.astype(int)) == 1)
    longest = max(zip(starts, stops, strict=False), key=lambda ab: ab[1] - ab[0])
    gap_lo, gap_hi = spec.wavelength[longest[0] + 1], spec.wavelength[longest[1]]
    assert gap_hi - gap_lo > 100
    xs = np.concatenate([[pt.x() for pt in p] for p in polygons])
    mid = 0.5 * (gap_lo + gap_hi)
    assert not np.any(np.abs(xs - mid) < 0.25 * (gap_hi - gap_lo))
    # Zoomed in, every pixel is a vertex again.
    view.zoom_to_line("[OIII] 5007")
    x0, x1 = view.x_range()
    n_in = int(((spec.wavelength >= x0) & (spec.wavelength <= x1) & spec.good).sum())
    assert sum(p.size() for p in view.band.path().toSubpathPolygons()) >= 2 * n_in


def test_boxcar_matches_astropy_box_kernel_and_propagates_errors(spectra):
    spec = spectra[NOISY.stem]
    flux, sigma = boxcar_smooth(spec.flux, spec.good, spec.sigma, 5)
    reference = convolve(
        np.where(spec.good, spec.flux, np.nan),
        Box1DKernel(5),
        boundary="fill",
        fill_value=np.nan,
        nan_treatment="interpolate",
        preserve_nan=True,
    )
    inner = spec.good.copy()
    inner[:3] = inner[-3:] = False
    np.testing.assert_allclose(flux[inner], reference[inner], rtol=1e-9, atol=1e-9)
    assert np.isnan(flux[~spec.good]).all()
    # Five good pixels of similar error: the error of the mean is ~ sigma / sqrt(5).
    all_good = np.convolve(spec.good.astype(int), np.ones(5, int), "same") == 5
    ratio = np.nanmedian(sigma[all_good] / spec.sigma[all_good])
    assert ratio == pytest.approx(1 / np.sqrt(5), rel=0.05)


def test_smoothing_control_reduces_pixel_noise_and_keeps_the_range(view, spectra):
    spec = spectra[NOISY.stem]
    view.set_spectrum(spec)
    view.zoom_to_line("[OIII] 5007")
    before = view.x_range()
    _, raw = view.flux_curve.getData()
    view.smooth_combo.setCurrentIndex(view.smooth_combo.findData(9))
    assert view.smoothing() == 9
    _, smooth = view.flux_curve.getData()
    assert np.nanstd(np.diff(smooth)) < 0.3 * np.nanstd(np.diff(raw))
    assert view.x_range() == pytest.approx(before)
    view.set_smoothing(1)
    np.testing.assert_array_equal(view.flux_curve.getData()[1], raw)


def test_rest_frame_toggle(view, spectra):
    spec = spectra[BOSS_GALAXY.stem]
    view.set_spectrum(spec)
    view.zoom_to_line("H-alpha")
    obs0, obs1 = view.x_range()
    view.rest_check.setChecked(True)
    assert view.rest_frame()
    x, _ = view.flux_curve.getData()
    np.testing.assert_allclose(x, spec.wavelength / (1 + spec.z))
    assert dict(view.marked_lines())["H-alpha"] == pytest.approx(6564.61)
    r0, r1 = view.x_range()
    assert r0 == pytest.approx(obs0 / (1 + spec.z)) and r1 == pytest.approx(obs1 / (1 + spec.z))
    assert "Rest-frame" in view.plot.getAxis("bottom").labelText
    view.set_rest_frame(False)
    assert not view.rest_check.isChecked()
    assert dict(view.marked_lines())["H-alpha"] == pytest.approx(6564.61 * (1 + spec.z))


def test_boss_lite_spall_files(view, spectra):
    spec = spectra[BOSS_GALAXY.stem]
    assert spec.layout == "spall"
    view.set_spectrum(spec)
    assert "4500-55543-0331" in view.title.text() and "z = 0.22435" in view.title.text()
    view.zoom_to_line("[OIII] 5007")
    assert view.x_range()[0] < 5008.24 * (1 + spec.z) < view.x_range()[1]

    qso = spectra[BOSS_QSO.stem]
    view.set_spectrum(qso)
    assert "QSO" in view.title.text() and "ZWARNING 4" in view.title.text()
    assert view.marked_lines() == []  # no optical line of the list inside 3600-10400 at z=2.56
    assert not view.lines_check.isEnabled()
    assert not view.line_enabled("H-alpha") and not view.line_enabled("[OIII] 5007")
    with pytest.raises(ValueError, match="outside the spectrum"):
        view.zoom_to_line("H-alpha")


def test_corrupt_file_shows_a_message(view, qtbot, tmp_path):
    bad = tmp_path / "spec-0266-51602-0166.fits"
    data = STRONG.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with qtbot.waitSignal(view.loadFailed, timeout=20_000) as blocker:
        view.load_file(bad)
    assert bad.name in blocker.args[0] and "truncated" in blocker.args[0]
    assert view.spectrum is None
    assert bad.name in view.message()
    assert not view.reset_button.isEnabled()

    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file\n")
    with qtbot.waitSignal(view.loadFailed, timeout=20_000) as blocker:
        view.load_file(text)
    assert "notes.fits" in view.message()


@pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning")
def test_drop_a_spec_file_loads_it(view, qtbot, tmp_path):
    copy = tmp_path / BOSS_GALAXY.name
    shutil.copy(BOSS_GALAXY, copy)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(copy))])
    enter = QDragEnterEvent(
        view.rect().center(),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    view.dragEnterEvent(enter)
    assert enter.isAccepted()
    drop = QDropEvent(
        QPointF(view.rect().center()),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(view.loaded, timeout=20_000) as blocker:
        view.dropEvent(drop)
    assert blocker.args[0].name == "4500-55543-0331"
    assert view.spectrum is blocker.args[0] and view.message() is None
    empty = QMimeData()
    enter = QDragEnterEvent(
        view.rect().center(),
        Qt.DropAction.CopyAction,
        empty,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    view.dragEnterEvent(enter)
    assert not enter.isAccepted()


def test_a_late_failure_does_not_replace_a_newer_spectrum(view, qtbot, tmp_path, spectra):
    bad = tmp_path / "spec-bad.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    failed = []
    view.loadFailed.connect(failed.append)
    task = view.load_file(bad)
    view.set_spectrum(spectra[STRONG.stem])
    qtbot.waitUntil(lambda: not task.running, timeout=20_000)
    qtbot.wait(50)
    assert not failed
    assert view.spectrum is spectra[STRONG.stem] and view.message() is None


def test_clear_and_message_states(view, spectra):
    view.set_spectrum(spectra[STRONG.stem])
    view.show_message("No spectrum for this galaxy")
    assert view.message() == "No spectrum for this galaxy"
    assert view.spectrum is None and view.visible_labels() == []
    assert not view.line_combo.isEnabled()
    view.clear()
    assert "Drop" in view.message()


def test_set_spectrum_is_fast(view, spectra, qtbot):
    spec = spectra[BOSS_GALAXY.stem]  # 4620 pixels
    view.set_spectrum(spectra[STRONG.stem])
    qtbot.wait(10)
    start = time.perf_counter()
    view.set_spectrum(spec)
    view.zoom_to_line("H-alpha")
    view.reset_view()
    view.repaint()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"showing a 4620-pixel spectrum took {elapsed:.3f} s"


def test_fully_masked_window_uses_the_model_and_says_so(view, spectra):
    spec = spectra[BROADLINE.stem]  # H-alpha of this BROADLINE spectrum has ivar = 0
    view.set_spectrum(spec)
    view.zoom_to_line("H-alpha")
    x0, x1 = view.x_range()
    inside = (spec.wavelength >= x0) & (spec.wavelength <= x1)
    assert not spec.good[inside].any()
    y0, y1 = view.y_range()
    assert y0 <= spec.model[inside].min() and y1 >= spec.model[inside].max()
    assert "masked" in view.readout.text()


def test_cursor_readout(view, spectra):
    spec = spectra[STRONG.stem]
    view.set_spectrum(spec)
    view.zoom_to_line("H-alpha")
    ha = 6564.61 * (1 + spec.z)
    scene = view.view.mapViewToScene(QPointF(ha, sum(view.y_range()) / 2))
    view._on_mouse_moved(scene)
    text = view.readout.text()
    assert "observed" in text and "rest" in text and "F = " in text
    observed = float(text.split("=")[1].split()[0])
    assert abs(observed - ha) < 2.0
