"""Side panel with the selected galaxy's cutout: Lupton RGB, the five bands, and its position.

The colour image carries a scale bar in arcsec (and projected kpc once a redshift is known, with
astropy's Planck18 cosmology), the spectroscopic fibre when a spectrum of the object exists,
and the sky position under the cursor. NormSpec controls (Q, stretch, band mapping, size) change
the display live: Q, stretch and bands re-render the same cutout at once; a new size asks the
window for a new cut (:attr:`CutoutPanel.spec_changed`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PySide6.QtCore import QPointF, Qt, Signal, Slot
from PySide6.QtGui import QColor, QFont, QImage, QMouseEvent, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ssald_desktop.core.cutouts import Cutout, NormSpec
from ssald_desktop.ui.galaxy_table import format_dec, format_ra

#: Band mappings offered (R, G, B), reddest first as in SDSS colour images.
BAND_MAPPINGS = (("i", "r", "g"), ("z", "i", "r"), ("r", "g", "u"), ("z", "r", "g"))
#: Cutout sizes offered, in pixels (0.396" each).
SIZES = (32, 48, 64, 96, 128)
#: Scale-bar lengths tried, in arcsec (the longest under 40 % of the width is used).
SCALE_BARS = (1, 2, 5, 10, 20, 30, 60)


def scale_bar_arcsec(width_arcsec: float) -> float:
    """A round scale-bar length for an image ``width_arcsec`` wide."""
    fits = [b for b in SCALE_BARS if b <= 0.4 * width_arcsec]
    return float(fits[-1] if fits else SCALE_BARS[0])


def kpc_per_arcsec(z: float) -> float | None:
    """Projected kpc per arcsec at redshift ``z`` (Planck18); None when z is unusable."""
    if not (isinstance(z, (int, float)) and math.isfinite(z) and 0 < z < 20):
        return None
    from astropy.cosmology import Planck18

    return float(Planck18.kpc_proper_per_arcmin(z).value / 60.0)


class CutoutImage(QLabel):
    """The colour image; reports the cutout pixel under the cursor."""

    hovered = Signal(float, float)
    left = Signal()

    def __init__(self, size: int, parent: QWidget | None = None):
        super().__init__(parent)
        self.display = size
        self.rows = self.cols = 0
        self.setMouseTracking(True)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: D102
        if self.rows and self.cols:
            scale = self.display / max(self.rows, self.cols)
            x = event.position().x() / scale - 0.5
            y = self.rows - event.position().y() / scale - 0.5  # FITS row 0 at the bottom
            if -0.5 <= x < self.cols - 0.5 and -0.5 <= y < self.rows - 0.5:
                self.hovered.emit(x, y)
        super().mouseMoveEvent(event)

    def leaveEvent(self, event) -> None:  # noqa: D102
        self.left.emit()
        super().leaveEvent(event)

RGB_DISPLAY = 192
BAND_DISPLAY = 64


def array_to_pixmap(image: np.ndarray, size: int) -> QPixmap:
    """A QPixmap of an image in FITS orientation (row 0 at the bottom), scaled to ``size``.

    ``image`` is (rows, cols, 3) uint8 RGB or (rows, cols) float in 0..1 (grey). Pixels are
    scaled without smoothing so that what is shown is what the encoder sees.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        grey = np.clip(np.nan_to_num(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = np.repeat(grey[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[::-1])  # FITS row 0 (south) goes to the bottom
    rows, cols = img.shape[:2]
    qimage = QImage(img.data, cols, rows, 3 * cols, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(
        size,
        size,
        Qt.AspectRatioMode.KeepAspectRatio,
        Qt.TransformationMode.FastTransformation,
    )


class CutoutPanel(QWidget):
    """The selected object's RGB cutout, its five bands (asinh), RA/Dec and NormSpec controls.

    Signals
    -------
    spec_changed(object)
        The user changed the display NormSpec (a :class:`NormSpec`).
    more_like_this(bool)
        "More like this" (False) or "Less like this" (True) was asked for.
    """

    spec_changed = Signal(object)
    more_like_this = Signal(bool)

    def __init__(self, parent: QWidget | None = None, spec: NormSpec | None = None):
        super().__init__(parent)
        self.spec = spec or NormSpec()
        self.fibre: tuple[float, float, float] | None = None
        self.redshift: float | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(4)
        self.heading = QLabel()
        self.heading.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.heading)
        images = QHBoxLayout()
        images.setSpacing(8)
        left = QVBoxLayout()
        left.setSpacing(2)
        self.rgb_label = CutoutImage(RGB_DISPLAY)
        self.rgb_label.hovered.connect(self._hovered)
        self.rgb_label.left.connect(lambda: self.cursor_label.setText(""))
        self.rgb_label.setFixedSize(RGB_DISPLAY, RGB_DISPLAY)
        self.rgb_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.rgb_label.setStyleSheet("background: #181818; color: #aaa;")
        left.addWidget(self.rgb_label)
        self.rgb_caption = QLabel()
        self.rgb_caption.setWordWrap(True)
        self.rgb_caption.setFixedWidth(RGB_DISPLAY)
        self.rgb_caption.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        left.addWidget(self.rgb_caption)
        left.addStretch(1)
        images.addLayout(left)
        grid = QGridLayout()
        grid.setSpacing(2)
        self.band_labels: dict[str, QLabel] = {}
        for i, band in enumerate("ugriz"):
            lab = QLabel()
            lab.setFixedSize(BAND_DISPLAY, BAND_DISPLAY)
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lab.setStyleSheet("background: #181818; color: #aaa;")
            cap = QLabel(band)
            cap.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            row, col = divmod(i, 2)
            grid.addWidget(lab, 2 * row, col)
            grid.addWidget(cap, 2 * row + 1, col)
            self.band_labels[band] = lab
        images.addLayout(grid)
        images.addStretch(1)
        layout.addLayout(images)
        self.cursor_label = QLabel()
        self.cursor_label.setMinimumHeight(16)
        layout.addWidget(self.cursor_label)
        layout.addLayout(self._build_controls())
        self.info = QLabel()
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setWordWrap(True)
        self.info.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        layout.addWidget(self.info)
        layout.addStretch(1)
        self.cutout: Cutout | None = None
        self.clear()

    def _build_controls(self) -> QGridLayout:
        grid = QGridLayout()
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(2)
        self.q_spin = QDoubleSpinBox()
        self.q_spin.setRange(0.1, 100.0)
        self.q_spin.setDecimals(1)
        self.q_spin.setSingleStep(1.0)
        self.q_spin.setToolTip("Lupton Q: the asinh softening (Lupton et al. 2004)")
        self.stretch_spin = QDoubleSpinBox()
        self.stretch_spin.setRange(0.01, 10.0)
        self.stretch_spin.setDecimals(2)
        self.stretch_spin.setSingleStep(0.05)
        self.stretch_spin.setToolTip("Lupton stretch: the linear range, in nanomaggies")
        self.bands_combo = QComboBox()
        for mapping in BAND_MAPPINGS:
            self.bands_combo.addItem(",".join(mapping) + " \u2192 RGB", mapping)
        self.size_combo = QComboBox()
        for size in SIZES:
            self.size_combo.addItem(f"{size} px ({size * 0.396:.0f}\u2033)", size)
        grid.addWidget(QLabel("Q"), 0, 0)
        grid.addWidget(self.q_spin, 0, 1)
        grid.addWidget(QLabel("stretch"), 0, 2)
        grid.addWidget(self.stretch_spin, 0, 3)
        grid.addWidget(QLabel("bands"), 1, 0)
        grid.addWidget(self.bands_combo, 1, 1)
        grid.addWidget(QLabel("size"), 1, 2)
        grid.addWidget(self.size_combo, 1, 3)
        buttons = QHBoxLayout()
        self.more_button = QPushButton("More like this")
        self.more_button.setToolTip("Search the index for galaxies that look like this one")
        self.more_button.clicked.connect(lambda: self.more_like_this.emit(False))
        self.less_button = QPushButton("Less like this")
        self.less_button.setToolTip("Add this galaxy to the query's negatives")
        self.less_button.clicked.connect(lambda: self.more_like_this.emit(True))
        buttons.addWidget(self.more_button)
        buttons.addWidget(self.less_button)
        buttons.addStretch(1)
        grid.addLayout(buttons, 2, 0, 1, 4)
        self.set_spec(self.spec, emit=False)
        self.q_spin.valueChanged.connect(self._controls_changed)
        self.stretch_spin.valueChanged.connect(self._controls_changed)
        self.bands_combo.currentIndexChanged.connect(self._controls_changed)
        self.size_combo.currentIndexChanged.connect(self._controls_changed)
        return grid

    def set_spec(self, spec: NormSpec, emit: bool = True) -> None:
        """Show these NormSpec values in the controls."""
        self.spec = spec
        widgets = (self.q_spin, self.stretch_spin, self.bands_combo, self.size_combo)
        for w in widgets:
            w.blockSignals(True)
        self.q_spin.setValue(spec.q)
        self.stretch_spin.setValue(spec.stretch)
        i = self.bands_combo.findData(tuple(spec.rgb))
        if i < 0:
            self.bands_combo.addItem(",".join(spec.rgb) + " \u2192 RGB", tuple(spec.rgb))
            i = self.bands_combo.count() - 1
        self.bands_combo.setCurrentIndex(i)
        j = self.size_combo.findData(int(spec.output_size))
        if j < 0:
            self.size_combo.addItem(f"{spec.output_size} px", int(spec.output_size))
            j = self.size_combo.count() - 1
        self.size_combo.setCurrentIndex(j)
        for w in widgets:
            w.blockSignals(False)
        if emit:
            self.spec_changed.emit(spec)

    @Slot()
    def _controls_changed(self, *args: object) -> None:
        size = int(self.size_combo.currentData())
        spec = self.spec.replace(q=float(self.q_spin.value()),
                                 stretch=float(self.stretch_spin.value()),
                                 rgb=tuple(self.bands_combo.currentData()),
                                 size=float(size), output_size=size)
        if spec == self.spec:
            return
        resized = spec.output_size != self.spec.output_size or spec.size != self.spec.size
        self.spec = spec
        if self.cutout is not None and not resized:
            # Same pixels, another rendering: no new cut needed.
            self.show_cutout(dataclasses.replace(self.cutout, spec=spec), self._title,
                             self._details, fibre=self.fibre)
        self.spec_changed.emit(spec)

    def set_redshift(self, z: float | None) -> None:
        """Redshift of the object shown (adds kpc to the scale bar), None if unknown."""
        self.redshift = z
        if self.cutout is not None:
            self._draw_rgb()

    def clear(self, message: str = "Click a galaxy marker or a table row.") -> None:
        """Show nothing selected."""
        self.cutout = None
        self.fibre = None
        self.redshift = None
        self._title = ""
        self._details = ""
        self.heading.setText("<i>Nothing selected</i>")
        self.rgb_label.clear()
        self.rgb_label.setText("no selection")
        self.rgb_caption.setText("")
        for lab in self.band_labels.values():
            lab.clear()
        self.info.setText(message)

    def show_cutout(self, cutout: Cutout, title: str, details: str = "",
                    fibre: tuple[float, float, float] | None = None) -> None:
        """Show a cutout (any NormSpec; bands the spec lacks stay empty).

        ``fibre`` is (RA, Dec, diameter in arcsec) of a spectroscopic fibre to draw.
        """
        if self.cutout is None or (cutout.ra, cutout.dec) != (self.cutout.ra, self.cutout.dec):
            self.redshift = None
        self.cutout = cutout
        self.fibre = fibre
        self._title, self._details = title, details
        spec = cutout.spec
        self.heading.setText(f"<b>{title}</b>")
        self._draw_rgb()
        width = spec.output_size * cutout.pixel_scale
        orient = "N\u2191 E\u2190" if spec.orientation == "north_up" else "r-band pixel axes"
        self.rgb_caption.setText(
            f"{','.join(spec.rgb)} \u2192 R,G,B, Lupton Q={spec.q:g}, stretch={spec.stretch:g}; "
            f"{orient}, {width:.1f}\u2033 wide"
        )
        for band, lab in self.band_labels.items():
            if band in cutout.bands:
                lab.setPixmap(array_to_pixmap(cutout.asinh(band), BAND_DISPLAY))
                lab.setToolTip(f"{band} band, asinh stretch")
            else:
                lab.clear()
                lab.setText("\u2014")
        text = (
            f"RA {format_ra(cutout.ra)}  Dec {format_dec(cutout.dec)}<br>"
            f"({cutout.ra:.6f}, {cutout.dec:+.6f}) deg ICRS"
        )
        if details:
            text += f"<br>{details}"
        if cutout.masked_fraction > 0:
            text += f"<br>masked pixels: {100 * cutout.masked_fraction:.1f} %"
        self.info.setText(text)

    def _draw_rgb(self) -> None:
        """The colour image with its scale bar and fibre."""
        cutout = self.cutout
        if cutout is None:
            return
        rgb = cutout.rgb()
        rows, cols = rgb.shape[:2]
        self.rgb_label.rows, self.rgb_label.cols = rows, cols
        pixmap = array_to_pixmap(rgb, RGB_DISPLAY)
        scale = pixmap.width() / cols  # display pixels per cutout pixel
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        arcsec_px = cutout.pixel_scale  # arcsec per cutout pixel
        width = cols * arcsec_px
        bar = scale_bar_arcsec(width)
        bar_px = bar / arcsec_px * scale
        y = pixmap.height() - 10
        painter.setPen(QPen(QColor("white"), 2))
        painter.drawLine(QPointF(8, y), QPointF(8 + bar_px, y))
        font = QFont(painter.font())
        font.setPointSizeF(8)
        painter.setFont(font)
        text = f"{bar:g}\u2033"
        kpc = kpc_per_arcsec(self.redshift) if self.redshift is not None else None
        if kpc is not None:
            text += f" = {bar * kpc:.1f} kpc"
        painter.drawText(QPointF(8, y - 4), text)
        if self.fibre is not None:
            ra, dec, diameter = self.fibre
            try:
                from astropy.coordinates import SkyCoord

                fx, fy = cutout.wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg"))
                fx, fy = float(fx), float(fy)
            except Exception:  # noqa: BLE001 - a WCS that cannot map it: no circle
                fx = fy = math.nan
            if math.isfinite(fx) and math.isfinite(fy):
                cx = (fx + 0.5) * scale
                cy = (rows - 0.5 - fy) * scale
                r = diameter / 2 / arcsec_px * scale
                painter.setPen(QPen(QColor(80, 220, 255), 1.5))
                painter.drawEllipse(QPointF(cx, cy), r, r)
        painter.end()
        self.rgb_label.setPixmap(pixmap)

    @Slot(float, float)
    def _hovered(self, x: float, y: float) -> None:
        cutout = self.cutout
        if cutout is None:
            return
        sky = cutout.wcs.pixel_to_world(x, y)
        self.cursor_label.setText(
            f"cursor: RA {format_ra(sky.ra.deg)}  Dec {format_dec(sky.dec.deg)}")

    def show_message(self, title: str, message: str) -> None:
        """Show a selection that has no cutout (e.g. too close to the frame edge)."""
        self.clear(message)
        self.heading.setText(f"<b>{title}</b>")
