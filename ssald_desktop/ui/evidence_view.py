"""Dual-AGN evidence for one object: nuclei on the cutout, the [OIII] fit, the BPT diagram.

Shows an :class:`ssald_desktop.core.evidence.Evidence`:

- the colour cutout with each nucleus found (:mod:`ssald_desktop.core.nuclei`) marked, and the
  separation (arcsec, kpc), flux ratio and confidence of a pair;
- the [OIII] 4959/5007 window with the data, the continuum, the total model and each Gaussian
  component (two for a double-peaked fit), with the single- vs double-Gaussian verdict;
- a small BPT diagram ([NII]/Halpha against [OIII]/Hbeta) with the Kauffmann et al. (2003) and
  Kewley et al. (2001) demarcations and the object's point and class;
- known dual-AGN systems matched within a few arcsec (:mod:`ssald_desktop.core.catalogs`).

Computing the evidence (line fits, PSF fits) is done elsewhere in a helper process; this widget
only draws. A quantity that cannot be measured is shown with its reason, never as a number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

CUTOUT_PX = 200
NUCLEUS_COLOURS = ("#40e0ff", "#ff60c0", "#ffd040")


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "\u2014"
    return f"{value:.{digits}f}{unit}"


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

        self.oiii_plot = pg.PlotWidget(background="w")
        self.oiii_plot.setMinimumHeight(170)
        self.oiii_plot.setLabel("bottom", "observed \u03bb [\u00c5]")
        self.oiii_plot.setTitle("[O III] 4959, 5007", size="9pt")
        self.oiii_plot.addLegend(offset=(5, 5), labelTextSize="7pt")
        grid.addWidget(self.oiii_plot, 1, 0, 1, 2)

        self.bpt_plot = pg.PlotWidget(background="w")
        self.bpt_plot.setMinimumHeight(170)
        self.bpt_plot.setLabel("bottom", "log [N II]/H\u03b1")
        self.bpt_plot.setLabel("left", "log [O III]/H\u03b2")
        self.bpt_plot.setXRange(-1.6, 0.6)
        self.bpt_plot.setYRange(-1.3, 1.5)
        self._draw_bpt_lines()
        self.bpt_point = pg.ScatterPlotItem(size=11, brush=pg.mkBrush("#d62728"), pen=None)
        self.bpt_plot.addItem(self.bpt_point)
        grid.addWidget(self.bpt_plot, 2, 0, 1, 2)
        self.spectrum_label = QLabel()
        self.spectrum_label.setWordWrap(True)
        grid.addWidget(self.spectrum_label, 3, 0, 1, 2)
        self.catalog_label = QLabel()
        self.catalog_label.setWordWrap(True)
        self.catalog_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grid.addWidget(self.catalog_label, 4, 0, 1, 2)
        layout.addLayout(grid)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.evidence: Any = None

    def _draw_bpt_lines(self) -> None:
        from ssald_desktop.core.lines import kauffmann03, kewley01

        x = np.linspace(-1.6, 0.0, 120)
        self.bpt_plot.plot(x, [kauffmann03(v) for v in x],
                           pen=pg.mkPen("#555", width=1.5, style=Qt.PenStyle.DashLine),
                           name="Kauffmann+03")
        x = np.linspace(-1.6, 0.4, 140)
        self.bpt_plot.plot(x, [kewley01(v) for v in x], pen=pg.mkPen("#222", width=1.5),
                           name="Kewley+01")
        for text, (tx, ty) in (("SF", (-1.2, -0.6)), ("AGN", (0.15, 1.1)), ("comp.", (-0.1, -0.8))):
            label = pg.TextItem(text, color="#666", anchor=(0.5, 0.5))
            label.setPos(tx, ty)
            self.bpt_plot.addItem(label)

    def clear(self, message: str = "No evidence yet: select a galaxy.") -> None:
        """Show nothing."""
        self.evidence = None
        self.summary.setText(message)
        self.image_item.clear()
        self.nuclei_item.setData([], [])
        self.nuclei_label.setText("")
        self.oiii_plot.clear()
        self.bpt_point.setData([], [])
        self.spectrum_label.setText("")
        self.catalog_label.setText("")

    def show_evidence(self, evidence: Any, cutout: Any = None) -> None:
        """Draw an :class:`Evidence`; ``cutout`` (a :class:`Cutout`) is the image to mark."""
        self.evidence = evidence
        self.summary.setText(f"<b>{evidence.summary}</b>")
        self._show_nuclei(evidence, cutout)
        self._show_spectrum(evidence)
        matches = evidence.catalog_matches
        if matches:
            lines = [m.get("summary") or str(m) for m in matches]
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
            text = f"<b>{result.status}</b>"
        text += f"<br><small>{result.message}</small>"
        self.nuclei_label.setText(text)

    def _show_spectrum(self, evidence: Any) -> None:
        self.oiii_plot.clear()
        self.bpt_point.setData([], [])
        spec = evidence.spectrum
        if spec is None:
            self.spectrum_label.setText("Spectrum: none for this object, so no line evidence.")
            return
        curve = spec.oiii_curve
        if curve is not None:
            self.oiii_plot.plot(curve.wavelength, curve.flux, stepMode=None,
                                pen=pg.mkPen("#333", width=1), name="data")
            self.oiii_plot.plot(curve.wavelength, curve.continuum,
                                pen=pg.mkPen("#999", width=1, style=Qt.PenStyle.DotLine),
                                name="continuum")
            self.oiii_plot.plot(curve.wavelength, curve.total,
                                pen=pg.mkPen("#d62728", width=1.5), name="model")
            colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
            for i, (label, comp) in enumerate(curve.components.items()):
                self.oiii_plot.plot(curve.wavelength, curve.continuum + comp,
                                    pen=pg.mkPen(colours[i % 4], width=1,
                                                 style=Qt.PenStyle.DashLine), name=label)
        parts = []
        if spec.oiii is not None:
            test = spec.oiii
            parts.append(f"[O III]: {test.status}"
                         + (f", \u0394BIC {test.delta_bic:.1f}" if test.delta_bic is not None
                            else "")
                         + (f", split {test.velocity_split_kms:.0f} km/s"
                            if test.velocity_split_kms is not None else ""))
        else:
            parts.append(f"[O III]: {spec.message}")
        bpt = spec.bpt if spec.bpt is not None else spec.bpt_spzline
        if bpt is not None:
            parts.append(f"BPT ({bpt.source}): {bpt.bpt_class or bpt.status} \u2014 {bpt.message}")
            if bpt.log_nii_ha is not None and bpt.log_oiii_hb is not None:
                self.bpt_point.setData([bpt.log_nii_ha], [bpt.log_oiii_hb])
        self.spectrum_label.setText("<br>".join(parts))
