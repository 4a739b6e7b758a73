"""Side panel with the selected galaxy's cutout: Lupton RGB, the five bands, and its position."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ssald_desktop.core.cutouts import Cutout
from ssald_desktop.ui.galaxy_table import format_dec, format_ra

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
    """The selected object's 64 x 64 RGB cutout, its five bands (asinh) and RA/Dec."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
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
        self.rgb_label = QLabel()
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
        self.info = QLabel()
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setWordWrap(True)
        self.info.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        layout.addWidget(self.info)
        layout.addStretch(1)
        self.cutout: Cutout | None = None
        self.clear()

    def clear(self, message: str = "Click a galaxy marker or a table row.") -> None:
        """Show nothing selected."""
        self.cutout = None
        self.heading.setText("<i>Nothing selected</i>")
        self.rgb_label.clear()
        self.rgb_label.setText("no selection")
        self.rgb_caption.setText("")
        for lab in self.band_labels.values():
            lab.clear()
        self.info.setText(message)

    def show_cutout(self, cutout: Cutout, title: str, details: str = "") -> None:
        """Show a cutout (any NormSpec; bands the spec lacks stay empty)."""
        self.cutout = cutout
        spec = cutout.spec
        self.heading.setText(f"<b>{title}</b>")
        self.rgb_label.setPixmap(array_to_pixmap(cutout.rgb(), RGB_DISPLAY))
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

    def show_message(self, title: str, message: str) -> None:
        """Show a selection that has no cutout (e.g. too close to the frame edge)."""
        self.clear(message)
        self.heading.setText(f"<b>{title}</b>")
