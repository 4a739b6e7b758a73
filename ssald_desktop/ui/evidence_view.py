"""Dual-AGN evidence for one object: nuclei on the cutout, the [OIII] fit, the BPT diagram.

Shows an :class:`ssald_desktop.core.evidence.Evidence`:

- the colour cutout with each nucleus found (:mod:`ssald_desktop.core.nuclei`) marked, and the
  separation (arcsec, kpc), flux ratio and confidence of a pair;
- the [OIII] 4959/5007 window with the data, the continuum, the total model and each Gaussian
  component (two for a double-peaked fit), with the single- vs double-Gaussian verdict
  (:class:`OiiiPlot`);
- a small BPT diagram ([NII]/Halpha against [OIII]/Hbeta) with the Kauffmann et al. (2003) and
  Kewley et al. (2001) demarcations and the object's point and class (:class:`BptPlot`);
- known dual-AGN systems matched within a few arcsec (:mod:`ssald_desktop.core.catalogs`).

:class:`OiiiPlot`, :class:`BptPlot`, :func:`oiii_text`, :func:`bpt_text` and
:func:`chosen_bpt` are shared with the review card (:mod:`ssald_desktop.ui.review_panel`), so
the dock and the card draw the same evidence the same way.

Computing the evidence (line fits, PSF fits) is done elsewhere in a helper process or worker;
these widgets only draw. A quantity that cannot be measured is shown with its reason
("not measurable: ..."), never as a number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

__all__ = ["BptPlot", "EvidenceView", "OiiiPlot", "bpt_text", "chosen_bpt", "oiii_text"]

CUTOUT_PX = 200
NUCLEUS_COLOURS = ("#40e0ff", "#ff60c0", "#ffd040")
#: Colours of the fitted Gaussian components (tab10, colour-blind safer than red/green).
COMPONENT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
#: Default BPT ranges (dex), as in Kewley et al. (2006), Fig. 4.
BPT_X = (-1.6, 0.6)
BPT_Y = (-1.3, 1.5)
#: Colour of the BPT point by class.
BPT_COLOURS = {"star-forming": "#1f77b4", "composite": "#2ca02c", "Seyfert": "#d62728",
               "LINER": "#ff7f0e", "AGN": "#d62728"}


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "\u2014"
    return f"{value:.{digits}f}{unit}"


def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chosen_bpt(spec: Any) -> Any:
    """The BPT result to show: the line fit's when classified, else SPZLINE's, else the fit's.

    Mirrors :attr:`ssald_desktop.core.evidence.Evidence.agn_bpt` (fit first, the SDSS
    pipeline's ``SPZLINE`` fluxes as the fallback).
    """
    if spec is None:
        return None
    for bpt in (spec.bpt, spec.bpt_spzline):
        if bpt is not None and bpt.status == "classified":
            return bpt
    return spec.bpt if spec.bpt is not None else spec.bpt_spzline


def oiii_text(spec: Any) -> str:
    """One line on the [OIII] 5007 test (rich text): verdict, ΔBIC and velocity split.

    Single against double Gaussian by the BIC (Schwarz 1978; ``ΔBIC > 10`` selects two
    components, Kass & Raftery 1995), see :mod:`ssald_desktop.core.lines`.
    """
    if spec is None:
        return "<b>[O III] 5007</b> not measurable: no spectrum"
    test = spec.oiii
    if test is None:
        return f"<b>[O III] 5007</b> {_esc(spec.message or 'not measurable')}"
    if test.status == "not measurable":
        return f"<b>[O III] 5007</b> <span style='color:#666'>{_esc(test.message)}</span>"
    colour = "#b03060" if test.double_peaked else "#333"
    text = f"<b>[O III] 5007</b> <b style='color:{colour}'>{_esc(test.status)}</b>"
    if test.delta_bic is not None:
        text += (f", \u0394BIC = {test.delta_bic:.1f} <span style='color:#666'>(two "
                 "components need &gt; 10)</span>")
    if test.velocity_split_kms is not None:
        text += f", split {test.velocity_split_kms:.0f} km/s"
    comps = test.components
    if len(comps) == 1 and comps[0].get("sigma_kms") is not None:
        text += f", \u03c3 = {comps[0]['sigma_kms']:.0f} km/s"
    return text


def bpt_text(spec: Any) -> str:
    """One line on the BPT class (rich text): class, the diagram used, and the source."""
    if spec is None:
        return "<b>BPT</b> not measurable: no spectrum"
    bpt = chosen_bpt(spec)
    if bpt is None:
        return f"<b>BPT</b> {_esc(spec.message or 'not measurable')}"
    if bpt.status != "classified":
        return f"<b>BPT</b> <span style='color:#666'>{_esc(bpt.message)}</span>"
    colour = BPT_COLOURS.get(bpt.bpt_class or "", "#333")
    source = "line fit" if bpt.source == "fit" else f"SDSS {bpt.source}"
    text = (f"<b>BPT</b> <b style='color:{colour}'>{_esc(bpt.bpt_class)}</b> "
            f"<span style='color:#555'>({_esc(source)}: {_esc(bpt.message)})</span>")
    other = spec.bpt_spzline if bpt is spec.bpt else None
    if (other is not None and other.status == "classified"
            and other.bpt_class != bpt.bpt_class):
        text += (f" <span style='color:#555'>\u2014 SDSS SPZLINE fluxes give "
                 f"{_esc(other.bpt_class)}</span>")
    return text


class OiiiPlot(pg.PlotWidget):
    """The [OIII] 4959/5007 (and H-beta) window: data, continuum, model and each component.

    The components are the emission-line Gaussians of
    :class:`ssald_desktop.core.lines.ModelCurve` (two kinematic components, "comp 1" and
    "comp 2", when the double-Gaussian fit is kept), each drawn on the continuum; the stellar
    H-beta absorption of the fit is drawn as part of the continuum. A colour key is in the
    title. With no fit the axes are hidden and the plot says why in words; with an undetected
    [OIII] only the data and the continuum are drawn.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, background="w")
        self.setLabel("bottom", "observed \u03bb [\u00c5]", color="#333")
        self.setLabel("left", "f\u03bb [10\u207b\u00b9\u2077 erg/s/cm\u00b2/\u00c5]",
                      color="#333")
        self.getAxis("left").setWidth(48)
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.curve: Any = None
        self.component_items: list[Any] = []
        self.message = ""
        self.title = ""
        self._note: Any = None
        self._set_title("[O III] 4959, 5007")

    def _set_title(self, html: str) -> None:
        self.title = html
        self.setTitle(f"<span style='color:#222'>{html}</span>", size="8pt")

    def _axes(self, on: bool) -> None:
        for name in ("left", "bottom"):
            self.showAxis(name, on)

    def clear_fit(self, message: str = "") -> None:
        """Empty the plot; ``message`` (e.g. "not measurable: ...") is written in it."""
        self.clear()
        self.curve = None
        self.component_items = []
        self.message = message
        self._set_title("[O III] 4959, 5007")
        self._axes(not message)
        if message:
            self._note = pg.TextItem(_wrap(message, 70), color="#444", anchor=(0.5, 0.5))
            self.addItem(self._note)
            self.setXRange(0, 1, padding=0)
            self.setYRange(0, 1, padding=0)
            self._note.setPos(0.5, 0.5)

    def show_fit(self, spec: Any) -> None:
        """Draw the [OIII] fit of a :class:`~ssald_desktop.core.lines.SpectralEvidence`."""
        if spec is None:
            self.clear_fit("not measurable: no spectrum")
            return
        curve = spec.oiii_curve
        if curve is None:
            why = spec.oiii.message if spec.oiii is not None else spec.message
            self.clear_fit(why or "not measurable")
            return
        self.clear_fit()
        self.curve = curve
        x = np.asarray(curve.wavelength, float)
        continuum = np.asarray(curve.continuum, float).copy()
        lines = {}
        for label, comp in curve.components.items():
            if "absorption" in label:  # stellar Balmer absorption: part of the continuum
                continuum = continuum + comp
            else:
                lines[label] = comp
        key = ["<span style='color:#444'>\u2014 data</span>",
               "<span style='color:#888'>\u00b7\u00b7 continuum</span>"]
        self.plot(x, curve.flux, pen=pg.mkPen("#444", width=1))
        self.plot(x, continuum, pen=pg.mkPen("#888", width=1.2, style=Qt.PenStyle.DotLine))
        test = spec.oiii
        z = f" (z = {spec.z:.4f})" if spec.z is not None else ""
        if test is not None and test.status == "not measurable":
            # The data and the continuum only: a model of an undetected line is not evidence.
            self.message = test.message
            self._set_title(f"[O III] 4959, 5007{z}: <span style='color:#8a1c1c'>"
                            f"{_esc(test.message)}</span><br>{' '.join(key)}")
            self.enableAutoRange()
            return
        self.plot(x, curve.total, pen=pg.mkPen("#d62728", width=1.6))
        key.append("<span style='color:#d62728'>\u2014 model</span>")
        peak = max((float(np.nanmax(np.abs(c))) for c in lines.values()), default=0.0)
        for i, (label, comp) in enumerate(lines.items()):
            colour = COMPONENT_COLOURS[i % len(COMPONENT_COLOURS)]
            pen = pg.mkPen(colour, width=1.5, style=Qt.PenStyle.DashLine)
            # each Gaussian only where it rises above 2% of the strongest line (elsewhere it
            # lies on the continuum and would hide it)
            y = np.where(np.abs(comp) >= 0.02 * peak, continuum + comp, np.nan)
            self.component_items.append(self.plot(x, y, pen=pen, connect="finite"))
            key.append(f"<span style='color:{colour}'>- - {_esc(label)}</span>")
        title = "[O III] 4959, 5007" + z
        if test is not None:
            n = len(test.components) or 1
            title += f": <b>{_esc(test.status)}</b>" + (f" ({n} Gaussians)" if n > 1 else "")
            if test.delta_bic is not None:
                title += f", \u0394BIC {test.delta_bic:.1f}"
            if test.velocity_split_kms is not None:
                title += f", split {test.velocity_split_kms:.0f} km/s"
        self._set_title(f"{title}<br>{' &nbsp;'.join(key)}")
        self.enableAutoRange()


class BptPlot(pg.PlotWidget):
    """A small BPT diagram (Baldwin, Phillips & Terlevich 1981) with one object's point.

    ``log [OIII]5007/H-beta`` against ``log [NII]6584/H-alpha`` with the Kauffmann et al.
    (2003) star-forming limit (dashed) and the Kewley et al. (2001) maximum starburst line
    (solid). A point whose [OIII]/H-beta is only a limit is drawn as a triangle pointing the
    way the true value may lie. The class is in the title; with no point the diagram says why.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, background="w")
        self.setLabel("bottom", "log [N II]/H\u03b1", color="#333")
        self.setLabel("left", "log [O III]/H\u03b2", color="#333")
        self.getAxis("left").setWidth(40)
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self._draw_lines()
        self.point = pg.ScatterPlotItem(size=12, brush=pg.mkBrush("#d62728"),
                                        pen=pg.mkPen("k", width=1))
        self.addItem(self.point)
        self.note = pg.TextItem("", color="#333", anchor=(0.5, 0.5),
                                fill=pg.mkBrush(255, 255, 255, 225))
        self.note.setPos(-0.5, 0.1)
        self.addItem(self.note)
        self.bpt: Any = None
        self.title = ""
        self._set_title("BPT")
        self._reset_range()

    def _set_title(self, html: str) -> None:
        self.title = html
        self.setTitle(f"<span style='color:#222'>{html}</span>", size="8pt")

    def _reset_range(self) -> None:
        self.setXRange(*BPT_X, padding=0)
        self.setYRange(*BPT_Y, padding=0)

    def _draw_lines(self) -> None:
        from ssald_desktop.core.lines import kauffmann03, kewley01

        x = np.linspace(BPT_X[0], 0.0, 120)
        self.plot(x, [kauffmann03(v) for v in x],
                  pen=pg.mkPen("#555", width=1.5, style=Qt.PenStyle.DashLine))
        x = np.linspace(BPT_X[0], 0.4, 140)
        self.plot(x, [kewley01(v) for v in x], pen=pg.mkPen("#222", width=1.5))
        for text, (tx, ty) in (("SF", (-1.0, -0.45)), ("AGN", (0.3, 1.25)),
                               ("comp.", (-0.05, -1.1))):
            label = pg.TextItem(text, color="#777", anchor=(0.5, 0.5))
            label.setPos(tx, ty)
            self.addItem(label)
        key = pg.TextItem(html="<span style='color:#555; font-size:7pt'>- - Kauffmann+03"
                          "<br>\u2014 Kewley+01</span>", anchor=(0, 1))
        key.setPos(BPT_X[0] + 0.03, BPT_Y[0] + 0.03)
        self.addItem(key)

    def show_point(self, bpt: Any, why: str = "") -> None:
        """Draw a :class:`~ssald_desktop.core.lines.BptResult` (None: no point; ``why``)."""
        self.bpt = bpt
        self.point.setData([], [])
        self._reset_range()
        if bpt is None or bpt.log_nii_ha is None or bpt.log_oiii_hb is None:
            reason = why or (bpt.message if bpt is not None else "not measurable")
            self.note.setText(_wrap(reason, 30))
            self.note.setVisible(bool(reason.strip()))
            self._set_title("BPT: <span style='color:#8a1c1c'>not measurable</span>"
                            if reason.strip() else "BPT")
            return
        self.note.setText("")
        self.note.setVisible(False)
        x, y = float(bpt.log_nii_ha), float(bpt.log_oiii_hb)
        symbol = {"lower": "t1", "upper": "t"}.get(bpt.oiii_hb_limit or "", "o")
        colour = BPT_COLOURS.get(bpt.bpt_class or "", "#777")
        self.point.setData([x], [y], symbol=symbol, brush=pg.mkBrush(colour))
        limit = {"lower": " (\u25b2 lower limit)", "upper": " (\u25bc upper limit)"}.get(
            bpt.oiii_hb_limit or "", "")
        source = "" if bpt.source == "fit" else f", {_esc(bpt.source)}"
        self._set_title(f"BPT: <b style='color:{colour}'>{_esc(bpt.bpt_class or 'undecided')}"
                        f"</b>{limit}{source}")
        if not (BPT_X[0] <= x <= BPT_X[1] and BPT_Y[0] <= y <= BPT_Y[1]):
            self.setXRange(min(BPT_X[0], x - 0.2), max(BPT_X[1], x + 0.2), padding=0)
            self.setYRange(min(BPT_Y[0], y - 0.2), max(BPT_Y[1], y + 0.2), padding=0)

    def point_xy(self) -> tuple[float, float] | None:
        """The drawn point, or None."""
        xs, ys = self.point.getData()
        return (float(xs[0]), float(ys[0])) if len(xs) else None


def _wrap(text: str, width: int) -> str:
    """Break a message into lines of about ``width`` characters (for a plot label)."""
    words, lines, line = str(text).split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return "\n".join(lines)


class EvidenceView(QWidget):
    """Nuclei, [OIII] fit and BPT point of one object (see the module docstring)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(4)
        self.summary = QLabel("No evidence yet: select a galaxy.")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.summary)
        grid = QGridLayout()
        grid.setSpacing(6)

        self.image_plot = pg.PlotWidget()
        self.image_plot.setFixedSize(CUTOUT_PX, CUTOUT_PX)
        self.image_plot.hideAxis("left")
        self.image_plot.hideAxis("bottom")
        self.image_plot.setAspectLocked(True)
        self.image_plot.setMouseEnabled(False, False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_plot.addItem(self.image_item)
        self.nuclei_item = pg.ScatterPlotItem(size=14, pen=pg.mkPen("#40e0ff", width=2),
                                              brush=None, symbol="o")
        self.image_plot.addItem(self.nuclei_item)
        grid.addWidget(self.image_plot, 0, 0)
        self.nuclei_label = QLabel()
        self.nuclei_label.setWordWrap(True)
        self.nuclei_label.setAlignment(Qt.AlignmentFlag.AlignTop)
        grid.addWidget(self.nuclei_label, 0, 1)

        self.oiii_plot = OiiiPlot()
        self.oiii_plot.setMinimumHeight(170)
        grid.addWidget(self.oiii_plot, 1, 0, 1, 2)

        self.bpt_plot = BptPlot()
        self.bpt_plot.setMinimumHeight(170)
        grid.addWidget(self.bpt_plot, 2, 0, 1, 2)
        self.spectrum_label = QLabel()
        self.spectrum_label.setWordWrap(True)
        self.spectrum_label.setTextFormat(Qt.TextFormat.RichText)
        grid.addWidget(self.spectrum_label, 3, 0, 1, 2)
        self.catalog_label = QLabel()
        self.catalog_label.setWordWrap(True)
        self.catalog_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grid.addWidget(self.catalog_label, 4, 0, 1, 2)
        layout.addLayout(grid)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.evidence: Any = None

    def clear(self, message: str = "No evidence yet: select a galaxy.") -> None:
        """Show nothing."""
        self.evidence = None
        self.summary.setText(message)
        self.image_item.clear()
        self.nuclei_item.setData([], [])
        self.nuclei_label.setText("")
        self.oiii_plot.clear_fit()
        self.bpt_plot.show_point(None, " ")
        self.spectrum_label.setText("")
        self.catalog_label.setText("")

    def show_evidence(self, evidence: Any, cutout: Any = None) -> None:
        """Draw an :class:`Evidence`; ``cutout`` (a :class:`Cutout`) is the image to mark."""
        self.evidence = evidence
        self.summary.setText(f"<b>{_esc(evidence.summary)}</b>")
        self._show_nuclei(evidence, cutout)
        self._show_spectrum(evidence)
        matches = evidence.catalog_matches
        if matches:
            lines = [_esc(m.get("summary") or str(m)) for m in matches]
            self.catalog_label.setText("<b>Known systems:</b><br>" + "<br>".join(lines))
        else:
            self.catalog_label.setText("No known dual AGN or AGN pair within 5\u2033.")

    def _show_nuclei(self, evidence: Any, cutout: Any) -> None:
        result = evidence.nuclei
        self.nuclei_item.setData([], [])
        if cutout is not None:
            rgb = cutout.rgb()
            self.image_item.setImage(rgb, levels=(0, 255))
            self.image_item.setRect(-0.5, -0.5, rgb.shape[1], rgb.shape[0])
            self.image_plot.setRange(xRange=(-0.5, rgb.shape[1] - 0.5),
                                     yRange=(-0.5, rgb.shape[0] - 0.5), padding=0)
        else:
            self.image_item.clear()
        if result is None:
            self.nuclei_label.setText("Nuclei: not searched (no image of this object).")
            return
        if cutout is not None and result.nuclei:
            pts = result.positions_in(cutout.wcs)
            brushes = [pg.mkPen(NUCLEUS_COLOURS[i % 3], width=2) for i in range(len(pts))]
            self.nuclei_item.setData([p[0] for p in pts], [p[1] for p in pts], pen=brushes)
        if result.status == "pair":
            sep = _fmt(result.separation_arcsec, "\u2033")
            text = f"<b>Two nuclei</b><br>separation {sep} ({_fmt(result.separation_px, ' px', 1)})"
            if result.separation_kpc is not None:
                text += f", {_fmt(result.separation_kpc, ' kpc', 1)}"
            text += (f"<br>flux ratio {_fmt(result.flux_ratio)}<br>"
                     f"confidence {_fmt(getattr(result, 'confidence', None))}")
        else:
            text = f"<b>{_esc(result.status)}</b>"
        text += f"<br><small>{_esc(result.message)}</small>"
        self.nuclei_label.setText(text)

    def _show_spectrum(self, evidence: Any) -> None:
        spec = evidence.spectrum
        if spec is None:
            self.oiii_plot.clear_fit("not measurable: no spectrum of this object")
            self.bpt_plot.show_point(None, "not measurable: no spectrum")
            self.spectrum_label.setText("Spectrum: none for this object, so no line evidence.")
            return
        self.oiii_plot.show_fit(spec)
        bpt = chosen_bpt(spec)
        self.bpt_plot.show_point(bpt, "" if bpt is not None else spec.message)
        self.spectrum_label.setText(f"{oiii_text(spec)}<br>{bpt_text(spec)}")
