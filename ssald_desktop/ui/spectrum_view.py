"""The spectrum view: one SDSS spectrum with its error band, model and emission lines.

:class:`SpectrumView` plots a :class:`~ssald_desktop.core.spectra.Spectrum` with pyqtgraph:
the flux (pixels with ``ivar == 0`` or non-finite flux are gaps, never interpolated), a
+-1 sigma band from the inverse variance, the pipeline model, and the main optical emission
lines (:data:`~ssald_desktop.core.spectra.EMISSION_LINES`) at the pipeline redshift. The lines
that diagnose an AGN (Baldwin, Phillips & Terlevich 1981; Kewley et al. 2006: H-beta,
[O III] 5007, [O I] 6300, H-alpha, [N II] 6584, [S II] 6717/6731) can be zoomed to one by one.

Noisy spectra can be smoothed with a boxcar that ignores masked pixels (the mean of the good
pixels in the window, with its propagated error), as specutils' ``box_smooth`` does with an
astropy ``Box1DKernel``. The x axis can show observed or rest-frame wavelength
``lambda_rest = lambda_obs / (1 + z)``; the flux density is shown as observed.

Files are read in a worker thread (:mod:`ssald_desktop.ui.workers`): reading a full SDSS-I
spec file takes 0.1-0.2 s, more than the GUI may stall. A file that cannot be read shows its
error in the view instead of the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal, Slot
from PySide6.QtGui import (
    QAction,
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QFont,
    QFontMetrics,
    QKeySequence,
    QPainter,
    QPainterPath,
    QStandardItemModel,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsPathItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)
from scipy.ndimage import uniform_filter1d

from ssald_desktop.core.spectra import EMISSION_LINES, EmissionLine, Spectrum, read_spectrum
from ssald_desktop.ui.galaxy_table import format_dec, format_ra
from ssald_desktop.ui.workers import Task, TaskRunner

__all__ = [
    "LINE_TEXT",
    "SMOOTHING_WIDTHS",
    "SpectrumView",
    "band_envelope",
    "band_path",
    "boxcar_smooth",
    "layout_label_rows",
    "robust_limits",
]

#: Display names of the marked lines (Unicode Greek; SDSS vacuum wavelengths rounded as
#: the lines are usually named).
LINE_TEXT: dict[str, str] = {
    "H-beta": "H\u03b2",
    "[OIII] 4959": "[O III] 4959",
    "[OIII] 5007": "[O III] 5007",
    "[OI] 6300": "[O I] 6300",
    "[NII] 6548": "[N II] 6548",
    "H-alpha": "H\u03b1",
    "[NII] 6583": "[N II] 6584",
    "[SII] 6716": "[S II] 6717",
    "[SII] 6731": "[S II] 6731",
}

#: Boxcar widths offered (pixels; 1 means no smoothing). SDSS pixels are 69 km/s wide.
SMOOTHING_WIDTHS = (1, 3, 5, 9, 15)

#: Half width of the "zoom to line" window, rest-frame Angstrom: wide enough for a broad
#: (5000 km/s) H-alpha with the [N II] doublet and some continuum on each side.
ZOOM_HALF_WIDTH_REST = 75.0

#: Label rows kept free above the data for the line names.
LABEL_ROWS = 2

FLUX_COLOUR = QColor(20, 20, 20)
BAND_COLOUR = QColor(150, 150, 150, 110)
MODEL_COLOUR = QColor(214, 39, 40)
LINE_COLOUR = QColor(31, 100, 200)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")


# ---------------------------------------------------------------------------------------------
# numerical helpers (vectorised, no Qt)
# ---------------------------------------------------------------------------------------------


def boxcar_smooth(
    flux: np.ndarray, good: np.ndarray, sigma: np.ndarray | None, width: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxcar-smooth a spectrum over its good pixels, propagating the errors.

    Each output pixel is the plain mean of the good pixels in a window of ``width`` pixels
    (the same as specutils' ``box_smooth``, an astropy ``Box1DKernel`` convolution that skips
    masked pixels); its error is ``sqrt(sum sigma_i**2) / n_good``. Bad pixels stay NaN, so
    gaps remain gaps.

    Parameters
    ----------
    flux : numpy.ndarray
        Flux density.
    good : numpy.ndarray
        Boolean mask of usable pixels (:attr:`Spectrum.good`).
    sigma : numpy.ndarray or None
        1-sigma errors (NaN where unknown), or None.
    width : int
        Window in pixels (odd; 1 or less returns the input with bad pixels set to NaN).

    Returns
    -------
    tuple of numpy.ndarray
        Smoothed flux and its error (None when ``sigma`` is None).
    """
    good = np.asarray(good, dtype=bool)
    flux_in = np.where(good, flux, np.nan)
    sig_in = None if sigma is None else np.where(good, sigma, np.nan)
    if width <= 1:
        return flux_in, sig_in
    weight = uniform_filter1d(good.astype(np.float64), width, mode="constant", cval=0.0)
    total = uniform_filter1d(np.where(good, flux, 0.0), width, mode="constant", cval=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(good & (weight > 0), total / weight, np.nan)
        if sigma is None:
            return out, None
        var = np.where(good & np.isfinite(sigma), np.asarray(sigma, dtype=float) ** 2, 0.0)
        mean_var = uniform_filter1d(var, width, mode="constant", cval=0.0)
        err = np.sqrt(mean_var / (weight**2 * width))
    return out, np.where(good & (weight > 0), err, np.nan)


def robust_limits(
    values: np.ndarray, sigma: np.ndarray | None = None, include_zero: bool = True
) -> tuple[float, float] | None:
    """A y range that one-pixel spikes and very noisy pixels do not set.

    Pixels whose error exceeds 5 times the median error (spectrum ends, bright sky-line
    residuals) are left out; the top is the largest value that a neighbour reaches at least
    half of (a resolved emission line keeps its peak, a cosmic ray does not); the bottom is
    the 0.5th percentile and at most 0 for a whole spectrum (``include_zero``), the lowest
    value for a zoomed part.

    Parameters
    ----------
    values : numpy.ndarray
        Flux (NaN for gaps).
    sigma : numpy.ndarray, optional
        Errors of ``values``.
    include_zero : bool
        Keep zero flux inside the range (whole-spectrum view).

    Returns
    -------
    tuple of float or None
        ``(bottom, top)``, or None when no pixel is finite.
    """
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    if sigma is not None and ok.any():
        sig = np.asarray(sigma, dtype=float)
        finite_sig = np.isfinite(sig) & ok
        if finite_sig.any():
            ok &= ~(sig > 5.0 * np.median(sig[finite_sig]))
    if not ok.any():
        return None
    v = values[ok]
    if v.size >= 3:
        left = np.concatenate([v[:1], v[:-1]])
        right = np.concatenate([v[1:], v[-1:]])
        keep = (v <= 0) | (np.maximum(left, right) >= 0.5 * v)
        top = float(v[keep].max()) if keep.any() else float(np.median(v))
    else:
        top = float(v.max())
    if include_zero:
        bottom = min(float(np.percentile(v, 0.5)), 0.0)
    else:
        bottom = float(v.min())
    if top <= bottom:
        top = bottom + max(abs(bottom), 1.0)
    return bottom, top


def layout_label_rows(
    centres: np.ndarray, widths: np.ndarray, n_rows: int, gap: float = 4.0
) -> np.ndarray:
    """Give each label a row so that labels on one row do not overlap (greedy, left to right).

    The same placement as :func:`ssald_desktop.core.spectra.plot_spectrum` uses: a label goes
    on the first row whose last label ends before it starts; when no row is free it goes on
    the row that ends first (an overlap, kept as small as possible).

    Parameters
    ----------
    centres, widths : numpy.ndarray
        Label centres and widths in pixels.
    n_rows : int
        Rows available.
    gap : float
        Minimum free pixels between two labels on a row.

    Returns
    -------
    numpy.ndarray
        Row (0 = top) of each label, in input order.
    """
    centres = np.asarray(centres, dtype=float)
    widths = np.asarray(widths, dtype=float)
    rows = np.zeros(centres.size, dtype=int)
    ends = np.full(max(n_rows, 1), -np.inf)
    for i in np.argsort(centres, kind="stable"):  # a handful of labels, not pixels
        start = centres[i] - widths[i] / 2
        free = np.flatnonzero(ends + gap <= start)
        row = int(free[0]) if free.size else int(np.argmin(ends))
        rows[i] = row
        ends[row] = centres[i] + widths[i] / 2
    return rows


def band_path(x: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None) -> QPainterPath:
    """The error band as one path: a closed polygon per run of good pixels.

    Each run of pixels where both limits are finite becomes the polygon ``upper`` left to
    right then ``lower`` right to left, so masked pixels leave gaps in the band as they do in
    the flux. Built with :func:`pyqtgraph.arrayToQPath` (vectorised).
    """
    if lower is None or upper is None or x.size == 0:
        return QPainterPath()
    ok = np.isfinite(lower) & np.isfinite(upper)
    if not ok.any():
        return QPainterPath()
    edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    xs, ys, connect = [], [], []
    for a, b in zip(starts, stops, strict=True):  # one polygon per run, not per pixel
        xs += [x[a:b], x[a:b][::-1]]
        ys += [upper[a:b], lower[a:b][::-1]]
        link = np.ones(2 * (b - a), dtype=np.int8)
        link[-1] = 0  # the next run starts a new polygon
        connect.append(link)
    return pg.arrayToQPath(np.concatenate(xs), np.concatenate(ys), connect=np.concatenate(connect))


def band_envelope(
    x: np.ndarray, lower: np.ndarray, upper: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce a band to ``n_bins`` columns: the lowest ``lower`` and highest ``upper`` of each.

    What a screen column would show anyway (the "peak" downsampling of pyqtgraph curves);
    a column whose pixels are all masked stays NaN, so long gaps stay gaps.

    Returns
    -------
    tuple of numpy.ndarray
        Column centres, lower and upper envelopes.
    """
    n = x.size
    if n_bins <= 0 or n <= n_bins:
        return x, lower, upper
    starts = np.unique(np.linspace(0, n, n_bins + 1).astype(np.int64)[:-1])
    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduceat(lower, starts)
        hi = np.fmax.reduceat(upper, starts)
    ends = np.append(starts[1:], n) - 1
    return 0.5 * (x[starts] + x[ends]), lo, hi


class _BandItem(QGraphicsPathItem):
    """The error band, filled without antialiasing.

    Filling a jagged polygon costs time in proportion to its edges times their height on
    screen: the band is therefore rebuilt at screen resolution (:func:`band_envelope`) when
    the view shows more spectrum pixels than screen pixels, and filled without antialiasing.
    """

    def paint(self, painter: QPainter, option: Any, widget: Any = None) -> None:  # noqa: D102
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        super().paint(painter, option, widget)


@dataclass
class _LineLabel:
    """A placed label: text, x in data units, and the lines it names."""

    text: str
    x: float
    names: tuple[str, ...]


def _group_lines(lines: list[EmissionLine]) -> dict[str, list[EmissionLine]]:
    groups: dict[str, list[EmissionLine]] = {}
    for line in lines:
        groups.setdefault(line.label, []).append(line)
    return groups


def _read_spectrum_task(path: str) -> Spectrum:
    """Worker body: read a spectrum file (no widgets touched)."""
    return read_spectrum(path)


# ---------------------------------------------------------------------------------------------
# the widget
# ---------------------------------------------------------------------------------------------


class SpectrumView(QWidget):
    """An SDSS spectrum: flux, +-1 sigma band, model, emission lines, zoom, smoothing.

    Signals
    -------
    loaded(object)
        A :class:`Spectrum` read by :meth:`load_file` (or a drop) is shown.
    loadFailed(str)
        :meth:`load_file` could not read the file; the message (naming the file) is shown.
    spectrumChanged(object)
        The spectrum shown changed (a :class:`Spectrum`, or None when cleared).
    """

    loaded = Signal(object)
    loadFailed = Signal(str)
    spectrumChanged = Signal(object)

    def __init__(self, parent: QWidget | None = None, runner: TaskRunner | None = None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.runner = runner if runner is not None else TaskRunner(self)
        self.spectrum: Spectrum | None = None
        self._request = 0
        self._task: Task | None = None
        self._rest = False
        self._width = 1
        self._lines: list[EmissionLine] = []
        self._line_items: list[pg.InfiniteLine] = []
        self._label_items: list[pg.TextItem] = []
        self._labels_shown: list[_LineLabel] = []
        self._flux_shown = np.empty(0)
        self._sigma_shown: np.ndarray | None = None
        self._x = np.empty(0)
        self._band_limits: tuple[np.ndarray, np.ndarray] | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.title)

        self.stack = QStackedWidget()
        self.plot_widget = pg.PlotWidget(background="w")
        # Drops go to this widget, not to the graphics view inside it.
        self.plot_widget.setAcceptDrops(False)
        self.plot_widget.viewport().setAcceptDrops(False)
        self.plot_widget.setMinimumHeight(160)
        self.plot: pg.PlotItem = self.plot_widget.getPlotItem()
        self.view: pg.ViewBox = self.plot.getViewBox()
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        for side in ("left", "bottom"):
            axis = self.plot.getAxis(side)
            axis.setPen(pg.mkPen(60, 60, 60))
            axis.setTextPen(pg.mkPen(30, 30, 30))
        self.plot.setLabel(
            "left",
            "F<sub>\u03bb</sub> [10<sup>-17</sup> erg s<sup>-1</sup> cm<sup>-2</sup> "
            "\u00c5<sup>-1</sup>]",
        )
        self.zero_line = pg.InfiniteLine(0.0, angle=0, pen=pg.mkPen(160, 160, 160, width=1))
        self.zero_line.setZValue(-20)
        self.plot.addItem(self.zero_line, ignoreBounds=True)
        self.band = _BandItem()
        self.band.setBrush(pg.mkBrush(BAND_COLOUR))
        self.band.setPen(pg.mkPen(None))
        self.band.setZValue(-5)
        self.plot.addItem(self.band, ignoreBounds=True)
        self.flux_curve = pg.PlotCurveItem(
            connect="finite", pen=pg.mkPen(FLUX_COLOUR, width=1), antialias=False
        )
        self.plot.addItem(self.flux_curve)
        self.model_curve = pg.PlotCurveItem(
            connect="finite", pen=pg.mkPen(MODEL_COLOUR, width=1.3), antialias=True
        )
        self.model_curve.setZValue(5)
        self.plot.addItem(self.model_curve)
        self.stack.addWidget(self.plot_widget)
        self.message_label = QLabel()
        self.message_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setStyleSheet(
            "QLabel { background: white; color: #444; padding: 24px; font-size: 11pt; }"
        )
        self.stack.addWidget(self.message_label)
        layout.addLayout(self._build_controls())
        layout.addWidget(self.stack, 1)
        self.readout = QLabel(" ")
        self.readout.setStyleSheet("color: #555;")
        layout.addWidget(self.readout)

        self.view.sigRangeChanged.connect(self._place_labels)
        self.view.sigResized.connect(self._place_labels)
        self.view.sigXRangeChanged.connect(self._update_band)
        self.view.sigResized.connect(self._update_band)
        self.plot_widget.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.clear()

    def _build_controls(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(6)
        row.addWidget(QLabel("Zoom to"))
        self.line_combo = QComboBox()
        self.line_combo.setToolTip(
            "Zoom the wavelength axis to an emission line at the pipeline redshift"
        )
        self.line_combo.addItem("whole spectrum", None)
        for line in EMISSION_LINES:
            self.line_combo.addItem(LINE_TEXT.get(line.name, line.name), line.name)
        self.line_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.line_combo.activated.connect(self._on_line_chosen)
        row.addWidget(self.line_combo)
        self.reset_action = QAction("Reset view", self)
        self.reset_action.setShortcut(QKeySequence("Ctrl+0"))
        self.reset_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.reset_action.setToolTip("Show the whole spectrum (Ctrl+0)")
        self.reset_action.triggered.connect(self.reset_view)
        self.addAction(self.reset_action)
        self.reset_button = QPushButton("Reset view")
        self.reset_button.setToolTip(self.reset_action.toolTip())
        self.reset_button.clicked.connect(self.reset_action.trigger)
        row.addWidget(self.reset_button)
        row.addSpacing(8)
        row.addWidget(QLabel("Smooth"))
        self.smooth_combo = QComboBox()
        self.smooth_combo.setToolTip(
            "Boxcar mean over good pixels (masked pixels stay gaps); 1 pixel = 69 km/s"
        )
        for width in SMOOTHING_WIDTHS:
            self.smooth_combo.addItem("none" if width == 1 else f"boxcar {width} px", width)
        self.smooth_combo.currentIndexChanged.connect(
            lambda i: self.set_smoothing(int(self.smooth_combo.itemData(i)))
        )
        row.addWidget(self.smooth_combo)
        row.addSpacing(8)
        self.rest_check = QCheckBox("Rest frame")
        self.rest_check.setToolTip("Wavelength divided by (1 + z)")
        self.rest_check.toggled.connect(self.set_rest_frame)
        row.addWidget(self.rest_check)
        self.band_check = QCheckBox("\u00b11\u03c3")
        self.band_check.setChecked(True)
        self.band_check.setToolTip("Error band from the inverse variance")
        self.band_check.setStyleSheet("QCheckBox:enabled { color: #777; }")
        self.band_check.toggled.connect(self.band.setVisible)
        row.addWidget(self.band_check)
        self.model_check = QCheckBox("model")
        self.model_check.setChecked(True)
        self.model_check.setToolTip("Best-fit SDSS pipeline model")
        self.model_check.setStyleSheet(f"QCheckBox:enabled {{ color: {MODEL_COLOUR.name()}; }}")
        self.model_check.toggled.connect(self.model_curve.setVisible)
        row.addWidget(self.model_check)
        self.lines_check = QCheckBox("lines")
        self.lines_check.setChecked(True)
        self.lines_check.setToolTip("Emission-line markers at the pipeline redshift")
        self.lines_check.setStyleSheet(f"QCheckBox:enabled {{ color: {LINE_COLOUR.name()}; }}")
        self.lines_check.toggled.connect(self._set_lines_visible)
        row.addWidget(self.lines_check)
        row.addStretch(1)
        self._controls = [
            self.line_combo, self.reset_button, self.smooth_combo, self.rest_check,
            self.band_check, self.model_check, self.lines_check,
        ]  # fmt: skip
        return row

    # -- public API ----------------------------------------------------------------------
    def set_spectrum(self, spectrum: Spectrum) -> None:
        """Show a spectrum (replaces what is shown; view reset to the whole spectrum)."""
        self._request += 1  # a file still loading must not replace this one
        self.spectrum = spectrum
        self._set_title(spectrum)
        has_z = spectrum.z is not None
        self.rest_check.blockSignals(True)
        self.rest_check.setChecked(self._rest and has_z)
        self.rest_check.blockSignals(False)
        self._rest = self._rest and has_z
        for widget in self._controls:
            widget.setEnabled(True)
        self.rest_check.setEnabled(has_z)
        self.model_check.setEnabled(spectrum.model is not None)
        self.band_check.setEnabled(spectrum.ivar is not None)
        self._make_lines()
        self._update_curves()
        self.stack.setCurrentWidget(self.plot_widget)
        self.line_combo.setCurrentIndex(0)
        self.reset_view()
        self.spectrumChanged.emit(spectrum)

    def clear(self) -> None:
        """Show no spectrum (with a hint that a spec file can be dropped here)."""
        self.show_message(
            "No spectrum.\nDrop an SDSS spec-PLATE-MJD-FIBER.fits file here, or select a "
            "galaxy that has one."
        )

    def show_message(self, text: str) -> None:
        """Show ``text`` instead of a spectrum (no spectrum, loading, an error)."""
        had = self.spectrum is not None
        self.spectrum = None
        self.title.setText("<i>No spectrum</i>")
        self.title.setToolTip("")
        self.message_label.setText(text)
        self.stack.setCurrentWidget(self.message_label)
        for widget in self._controls:
            widget.setEnabled(False)
        self._remove_lines()
        for curve in (self.flux_curve, self.model_curve):
            curve.setData([], [])
        self.band.setPath(QPainterPath())
        self._x = np.empty(0)
        self.readout.setText(" ")
        if had:
            self.spectrumChanged.emit(None)

    def message(self) -> str | None:
        """The message shown instead of a spectrum, or None when a spectrum is shown."""
        if self.stack.currentWidget() is self.message_label:
            return self.message_label.text()
        return None

    def load_file(self, path: str | Path) -> Task:
        """Read a spectrum file in a worker thread and show it (or its error).

        Emits :attr:`loaded` or :attr:`loadFailed` in the GUI thread; a later call (or
        :meth:`set_spectrum`) makes the result of an earlier one be ignored.
        """
        path = Path(path)
        self._request += 1
        request = self._request
        if self._task is not None and self._task.running:
            self._task.cancel()
        self.show_message(f"Reading {path.name}\u2026")
        self._task = self.runner.run(
            f"read spectrum {path.name}",
            _read_spectrum_task,
            str(path),
            on_result=lambda spec: self._loaded(request, spec),
            on_error=lambda exc: self._load_failed(request, path, exc),
        )
        return self._task

    def is_loading(self) -> bool:
        """Whether a file is being read."""
        return self._task is not None and self._task.running

    def zoom_to_line(self, name: str) -> None:
        """Zoom x to an emission line (name as in :data:`EMISSION_LINES`) and y to its range.

        Raises
        ------
        ValueError
            No spectrum, no redshift, an unknown line, or a line outside the spectrum.
        """
        spec = self.spectrum
        if spec is None:
            raise ValueError("no spectrum shown")
        if spec.z is None:
            raise ValueError(f"{spec.name}: redshift unknown, cannot place {name}")
        line = next((ln for ln in EMISSION_LINES if ln.name == name), None)
        if line is None:
            known = ", ".join(ln.name for ln in EMISSION_LINES)
            raise ValueError(f"unknown emission line {name!r}; known: {known}")
        centre = self._line_x(line)
        half = ZOOM_HALF_WIDTH_REST * (1.0 if self._rest else 1.0 + spec.z)
        if not self._x[0] <= centre <= self._x[-1]:
            raise ValueError(
                f"{spec.name}: {name} at {line.wavelength * (1 + spec.z):.0f} \u00c5 (observed) "
                f"is outside the spectrum ({spec.wavelength[0]:.0f}-{spec.wavelength[-1]:.0f})"
            )
        self._set_view(centre - half, centre + half, local=True)
        index = self.line_combo.findData(name)
        if index >= 0:
            self.line_combo.setCurrentIndex(index)

    def reset_view(self) -> None:
        """Show the whole spectrum with a y range that spikes do not set."""
        if self.spectrum is None or self._x.size == 0:
            return
        self.line_combo.setCurrentIndex(0)
        self._set_view(float(self._x[0]), float(self._x[-1]), local=False)

    def set_smoothing(self, width: int) -> None:
        """Boxcar width in pixels (1 = none); keeps the current x range."""
        width = max(1, int(width))
        if width == self._width:
            return
        self._width = width
        index = self.smooth_combo.findData(width)
        if index < 0:
            self.smooth_combo.addItem(f"boxcar {width} px", width)
            index = self.smooth_combo.count() - 1
        self.smooth_combo.blockSignals(True)
        self.smooth_combo.setCurrentIndex(index)
        self.smooth_combo.blockSignals(False)
        if self.spectrum is not None:
            x0, x1 = self.x_range()
            self._update_curves()
            self._set_view(x0, x1, local=self.line_combo.currentIndex() > 0)

    def smoothing(self) -> int:
        """Boxcar width in pixels (1 = none)."""
        return self._width

    def set_rest_frame(self, rest: bool) -> None:
        """Show rest-frame (True) or observed (False) wavelength; keeps the part shown."""
        spec = self.spectrum
        rest = bool(rest) and (spec is None or spec.z is not None)
        if self.rest_check.isChecked() != rest:
            self.rest_check.blockSignals(True)
            self.rest_check.setChecked(rest)
            self.rest_check.blockSignals(False)
        if rest == self._rest:
            return
        if spec is None or spec.z is None:
            self._rest = rest
            return
        x0, x1 = self.x_range()
        factor = (1.0 + spec.z) if rest else 1.0 / (1.0 + spec.z)
        self._rest = rest
        self._update_curves()
        self._move_lines()
        self._set_view(x0 / factor, x1 / factor, local=self.line_combo.currentIndex() > 0)

    def rest_frame(self) -> bool:
        """Whether the x axis shows rest-frame wavelength."""
        return self._rest

    def x_range(self) -> tuple[float, float]:
        """Wavelength range shown (Angstrom, in the frame of the x axis)."""
        (x0, x1), _ = self.view.viewRange()
        return float(x0), float(x1)

    def y_range(self) -> tuple[float, float]:
        """Flux range shown."""
        _, (y0, y1) = self.view.viewRange()
        return float(y0), float(y1)

    def marked_lines(self) -> list[tuple[str, float]]:
        """Lines marked: ``(name, x position)`` in the frame of the x axis."""
        return [(ln.name, self._line_x(ln)) for ln in self._lines]

    def visible_labels(self) -> list[tuple[str, float, float, int]]:
        """Line labels placed: ``(text, x pixel centre, width in pixels, row)``."""
        out = []
        for item in self._label_items:
            if item.isVisible():
                out.append((item.textItem.toPlainText(), *item.ssald_layout))
        return out

    # -- drag and drop -------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: D102
        if self._dropped_path(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: D102
        if self._dropped_path(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: D102
        path = self._dropped_path(event)
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        self.load_file(path)

    @staticmethod
    def _dropped_path(event) -> Path | None:
        mime = event.mimeData()
        if mime is None or not mime.hasUrls():
            return None
        urls = [u for u in mime.urls() if u.isLocalFile()]
        if len(urls) != 1:
            return None
        return Path(urls[0].toLocalFile())

    # -- loading callbacks (GUI thread) ---------------------------------------------------
    def _loaded(self, request: int, spectrum: Spectrum) -> None:
        if request != self._request:
            return
        self.set_spectrum(spectrum)
        self.loaded.emit(spectrum)

    def _load_failed(self, request: int, path: Path, exc: BaseException) -> None:
        if request != self._request:
            return
        text = " ".join(str(exc).split()) or type(exc).__name__
        if str(path) not in text and path.name not in text:
            text = f"{path}: {text}"
        self.show_message(f"Cannot show this spectrum.\n\n{text}")
        self.loadFailed.emit(text)

    # -- drawing -------------------------------------------------------------------------
    def _set_title(self, spec: Spectrum) -> None:
        what = " ".join(p for p in (spec.spec_class, spec.subclass) if p) or "class unknown"
        if spec.z is None:
            z_text = "z unknown"
        else:
            z_text = f"z = {spec.z:.5f}"
            if spec.z_err is not None and spec.z_err > 0:
                z_text += f" \u00b1 {spec.z_err:.5f}"
        if spec.z_warning:
            z_text += (
                f' <span style="color:#c00000">ZWARNING {spec.z_warning}'
                " (redshift not confident)</span>"
            )
        pos = ""
        if spec.ra is not None and spec.dec is not None:
            pos = f"&nbsp;&nbsp; RA {format_ra(spec.ra)} Dec {format_dec(spec.dec)}"
        self.title.setText(f"<b>SDSS {spec.name}</b>&nbsp;&nbsp; {what}&nbsp;&nbsp; {z_text}{pos}")
        self.title.setToolTip(f"{spec.path} ({spec.layout} layout, {spec.npix} pixels)")

    def _frame_x(self, wavelength: np.ndarray) -> np.ndarray:
        spec = self.spectrum
        if self._rest and spec is not None and spec.z is not None:
            return wavelength / (1.0 + spec.z)
        return wavelength

    def _line_x(self, line: EmissionLine) -> float:
        spec = self.spectrum
        z = 0.0 if spec is None or spec.z is None else spec.z
        return line.wavelength if self._rest else line.wavelength * (1.0 + z)

    def _update_curves(self) -> None:
        spec = self.spectrum
        if spec is None:
            return
        self._x = self._frame_x(spec.wavelength)
        flux, sigma = boxcar_smooth(spec.flux, spec.good, spec.sigma, self._width)
        self._flux_shown, self._sigma_shown = flux, sigma
        self.flux_curve.setData(self._x, flux)
        if sigma is None:
            self._band_limits = None
        else:
            self._band_limits = (flux - sigma, flux + sigma)
        self._update_band()
        if spec.model is not None:
            self.model_curve.setData(self._x, np.where(np.isfinite(spec.model), spec.model, np.nan))
        else:
            self.model_curve.setData([], [])
        self.flux_curve.setToolTip(None)
        self.plot.setLabel(
            "bottom",
            ("Rest-frame" if self._rest else "Observed") + " vacuum wavelength [\u00c5]",
        )

    @Slot()
    def _update_band(self, *args: object) -> None:
        """Rebuild the band path for the part shown, at most two vertices per screen pixel."""
        if self._band_limits is None or self._x.size == 0:
            self.band.setPath(QPainterPath())
            return
        lower, upper = self._band_limits
        (x0, x1), _ = self.view.viewRange()
        i0 = max(int(np.searchsorted(self._x, x0)) - 2, 0)
        i1 = min(int(np.searchsorted(self._x, x1)) + 2, self._x.size)
        if i1 - i0 < 2:
            self.band.setPath(QPainterPath())
            return
        x, lo, hi = self._x[i0:i1], lower[i0:i1], upper[i0:i1]
        columns = int(max(self.view.width(), 100.0))
        if x.size > 2 * columns:
            x, lo, hi = band_envelope(x, lo, hi, columns)
        self.band.setPath(band_path(x, lo, hi))

    def _set_view(self, x0: float, x1: float, local: bool) -> None:
        """Show x0..x1 with a y range fitted to the flux (and model) inside it."""
        x0, x1 = min(x0, x1), max(x0, x1)
        inside = (self._x >= x0) & (self._x <= x1)
        values = self._flux_shown[inside]
        sigma = None if self._sigma_shown is None else self._sigma_shown[inside]
        limits = robust_limits(values, sigma, include_zero=not local)
        spec = self.spectrum
        if spec is not None and spec.model is not None:
            model = spec.model[inside]
            model = model[np.isfinite(model)]
            if model.size:
                low, high = float(model.min()), float(model.max())
                if limits is not None:
                    low, high = min(limits[0], low), max(limits[1], high)
                elif not local:
                    low = min(low, 0.0)
                limits = (low, high) if high > low else (low - 1.0, high + 1.0)
        if limits is None:
            limits = (-1.0, 1.0)
        n_inside = int(inside.sum())
        self.readout.setText(" ")
        if n_inside and not np.isfinite(values).any():
            self.readout.setText(
                f"All {n_inside} pixels shown are masked (ivar = 0): no flux to plot here"
            )
        bottom, top = limits
        span = top - bottom
        bottom -= 0.05 * span
        top += 0.05 * span
        # Keep room above the data for the line labels.
        height = max(self.view.height(), 120.0)
        label_px = LABEL_ROWS * (QFontMetrics(self._label_font()).height() + 2) + 6
        frac = min(label_px / height, 0.4) if self._lines and self.lines_check.isChecked() else 0
        top += (top - bottom) * frac / (1.0 - frac)
        self.view.setRange(xRange=(x0, x1), yRange=(bottom, top), padding=0)

    def _label_font(self) -> QFont:
        font = QFont(self.font())
        font.setPointSizeF(max(font.pointSizeF() * 0.9, 7.0))
        return font

    def _remove_lines(self) -> None:
        for item in self._line_items:
            self.plot.removeItem(item)
        for label in self._label_items:
            self.plot.removeItem(label)
        self._line_items = []
        self._label_items = []
        self._labels_shown = []
        self._lines = []

    def _make_lines(self) -> None:
        """Markers of the emission lines that fall inside the spectrum at its redshift."""
        self._remove_lines()
        spec = self.spectrum
        for i in range(1, self.line_combo.count()):
            self._set_line_enabled(i, False)
        if spec is None or spec.z is None:
            self.lines_check.setEnabled(False)
            self.lines_check.setToolTip("Redshift unknown: no emission lines to mark")
            return
        lo, hi = spec.wavelength_range
        pen = pg.mkPen(LINE_COLOUR, width=1, style=Qt.PenStyle.DashLine)
        pen.setColor(QColor(LINE_COLOUR.red(), LINE_COLOUR.green(), LINE_COLOUR.blue(), 150))
        for line in EMISSION_LINES:
            observed = line.wavelength * (1.0 + spec.z)
            if not lo <= observed <= hi:
                continue
            self._lines.append(line)
            item = pg.InfiniteLine(observed, angle=90, movable=False, pen=pen)
            item.setZValue(-10)
            item.setToolTip(
                f"{LINE_TEXT.get(line.name, line.name)}: rest {line.wavelength:.2f} \u00c5, "
                f"observed {observed:.1f} \u00c5 (vacuum)"
            )
            self.plot.addItem(item, ignoreBounds=True)
            self._line_items.append(item)
            index = self.line_combo.findData(line.name)
            if index > 0:
                self._set_line_enabled(index, True)
        if not self._lines:
            self.lines_check.setToolTip(
                f"None of the marked lines (H\u03b2 to [S II]) falls inside {lo:.0f}-{hi:.0f} "
                f"\u00c5 at z = {spec.z:.4f}"
            )
            self.lines_check.setEnabled(False)
        else:
            self.lines_check.setToolTip("Emission-line markers at the pipeline redshift")
        self._move_lines()

    def _set_line_enabled(self, index: int, enabled: bool) -> None:
        """Enable or grey out one entry of the "zoom to" combo box."""
        model = self.line_combo.model()
        if isinstance(model, QStandardItemModel):
            item = model.item(index)
            if item is not None:
                item.setEnabled(enabled)

    def line_enabled(self, name: str) -> bool:
        """Whether "zoom to" offers a line (False when it is outside the spectrum)."""
        index = self.line_combo.findData(name)
        model = self.line_combo.model()
        if index < 0 or not isinstance(model, QStandardItemModel):
            return False
        item = model.item(index)
        return item is not None and item.isEnabled()

    def _move_lines(self) -> None:
        for line, item in zip(self._lines, self._line_items, strict=True):
            item.setValue(self._line_x(line))
        self._place_labels()

    def _set_lines_visible(self, visible: bool) -> None:
        for item in self._line_items:
            item.setVisible(visible)
        self._place_labels()

    @Slot()
    def _place_labels(self, *args: object) -> None:
        """Name the marked lines above the data without overlaps.

        Lines of one blend (H-alpha with [N II], the [S II] and [O III] doublets) are named
        one by one when the zoom separates them, otherwise by one group label.
        """
        for item in self._label_items:
            self.plot.removeItem(item)
        self._label_items = []
        self._labels_shown = []
        if not self._lines or not self.lines_check.isChecked() or self._x.size == 0:
            return
        (x0, x1), (y0, y1) = self.view.viewRange()
        width_px = max(self.view.width(), 1.0)
        height_px = max(self.view.height(), 1.0)
        if x1 <= x0 or y1 <= y0:
            return
        per_px = (x1 - x0) / width_px
        font = self._label_font()
        metrics = QFontMetrics(font)

        def text_width(text: str) -> float:
            return float(metrics.horizontalAdvance(text) + 6)

        labels: list[_LineLabel] = []
        for group_label, members in _group_lines(self._lines).items():
            xs = np.array([self._line_x(m) for m in members])
            texts = [LINE_TEXT.get(m.name, m.name) for m in members]
            widths = np.array([text_width(t) for t in texts])
            apart = np.diff(xs) / per_px >= (widths[:-1] + widths[1:]) / 2 + 4
            if apart.all():
                labels.extend(
                    _LineLabel(t, float(x), (m.name,))
                    for t, x, m in zip(texts, xs, members, strict=True)
                )
            else:
                names = tuple(m.name for m in members)
                labels.append(_LineLabel(group_label, float(xs.mean()), names))
        labels = [lab for lab in labels if x0 <= lab.x <= x1]
        if not labels:
            return
        widths = np.array([text_width(lab.text) for lab in labels])
        # A label near an edge slides inwards so that it is not cut (its line stays put).
        centres = np.array([(lab.x - x0) / per_px for lab in labels])
        centres = np.clip(centres, widths / 2, np.maximum(width_px - widths / 2, widths / 2))
        rows = layout_label_rows(centres, widths, LABEL_ROWS)
        row_h = metrics.height() + 2
        per_py = (y1 - y0) / height_px
        for lab, centre, width, row in zip(labels, centres, widths, rows, strict=True):
            item = pg.TextItem(
                lab.text, color=LINE_COLOUR, anchor=(0.5, 0.0), fill=pg.mkBrush(255, 255, 255, 200)
            )
            item.setFont(font)
            item.setPos(QPointF(x0 + centre * per_px, y1 - (2 + row * row_h) * per_py))
            item.setZValue(30)
            item.ssald_layout = (float(centre), float(width), int(row))
            self.plot.addItem(item, ignoreBounds=True)
            self._label_items.append(item)
        self._labels_shown = labels

    @Slot(object)
    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        spec = self.spectrum
        if (
            spec is None
            or self._x.size == 0
            or not self.view.sceneBoundingRect().contains(scene_pos)
        ):
            self.readout.setText(" ")
            return
        p = self.view.mapSceneToView(scene_pos)
        i = int(np.clip(np.searchsorted(self._x, p.x()), 0, self._x.size - 1))
        obs = spec.wavelength[i]
        text = f"\u03bb = {obs:.1f} \u00c5 observed"
        if spec.z is not None:
            text += f", {obs / (1 + spec.z):.1f} \u00c5 rest"
        value = self._flux_shown[i]
        text += "   F = " + (f"{value:.3g}" if math.isfinite(value) else "masked")
        if self._sigma_shown is not None and math.isfinite(self._sigma_shown[i]):
            text += f" \u00b1 {self._sigma_shown[i]:.2g}"
        self.readout.setText(text)

    @Slot(int)
    def _on_line_chosen(self, index: int) -> None:
        name = self.line_combo.itemData(index)
        if name is None:
            self.reset_view()
            return
        try:
            self.zoom_to_line(str(name))
        except ValueError as exc:
            self.readout.setText(str(exc))
