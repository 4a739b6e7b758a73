"""The field image: a pan/zoom pyqtgraph view of the Lupton RGB with clickable galaxy markers.

Coordinates are the reference (r) band's 0-based FITS pixels: x is the column, y the row, and
pixel (x, y) is centred on integer values, so marker positions from the source table and the
WCS go in unchanged. The view's y axis points up (pyqtgraph's default; ImageView would invert
it), so FITS row 0 is at the bottom as in ds9 and no array flip is needed. SDSS frames are
scanned along great circles, so north and east are not up and left: a compass computed from the
WCS is drawn in the corner (for field 2820-3-122 north points right, east up).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from astropy.wcs import WCS
from PySide6.QtCore import QPointF, QRectF, Signal, Slot
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsObject, QWidget

MARKER_COLOUR = QColor(80, 220, 120)
SELECTED_COLOUR = QColor(255, 220, 40)


def sky_directions(wcs: WCS, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (dx, dy) in pixel space pointing north and east at pixel (x, y)."""
    ra, dec = wcs.all_pix2world([[x, y]], 0)[0]
    step = 10.0 / 3600.0  # 10 arcsec
    cosd = max(np.cos(np.radians(dec)), 1e-6)
    pts = wcs.all_world2pix([[ra, dec], [ra, dec + step], [ra + step / cosd, dec]], 0)
    north = pts[1] - pts[0]
    east = pts[2] - pts[0]
    return north / np.hypot(*north), east / np.hypot(*east)


class CompassItem(QGraphicsObject):
    """North and east arrows fixed in a corner of the view (they do not pan or zoom)."""

    LENGTH = 34.0

    def __init__(self, parent=None):
        super().__init__(parent)
        self._north: np.ndarray | None = None
        self._east: np.ndarray | None = None
        self.setZValue(1000)

    def set_directions(self, north: np.ndarray | None, east: np.ndarray | None) -> None:
        """Pixel-space unit vectors of north and east (None hides the compass)."""
        self._north, self._east = north, east
        self.setVisible(north is not None)
        self.update()

    def directions(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The pixel-space unit vectors shown."""
        return self._north, self._east

    def boundingRect(self) -> QRectF:  # noqa: D102
        r = self.LENGTH + 16
        return QRectF(-r, -r, 2 * r, 2 * r)

    def paint(self, painter: QPainter, option, widget=None) -> None:  # noqa: D102
        if self._north is None or self._east is None:
            return
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont()
        font.setBold(True)
        painter.setFont(font)
        for vec, label in ((self._north, "N"), (self._east, "E")):
            # View y points up, screen y down.
            dx, dy = float(vec[0]), -float(vec[1])
            tip = QPointF(dx * self.LENGTH, dy * self.LENGTH)
            path = QPainterPath(QPointF(0, 0))
            path.lineTo(tip)
            # Arrow head.
            back = QPointF(-dx * 8, -dy * 8)
            side = QPointF(-dy * 4, dx * 4)
            path.moveTo(tip)
            path.lineTo(tip + back + side)
            path.moveTo(tip)
            path.lineTo(tip + back - side)
            painter.setPen(QPen(QColor(0, 0, 0, 200), 4))
            painter.drawPath(path)
            painter.setPen(QPen(QColor(255, 255, 255), 2))
            painter.drawPath(path)
            text_at = QPointF(dx * (self.LENGTH + 10) - 5, dy * (self.LENGTH + 10) + 5)
            painter.drawText(text_at, label)


class FieldView(pg.GraphicsLayoutWidget):
    """Pan/zoom view of a field's colour image with galaxy markers.

    Signals
    -------
    marker_clicked(int)
        Index (row of the marker arrays) of a clicked galaxy marker.
    cursor_moved(float, float)
        Reference-band pixel (x, y) under the mouse pointer.
    cursor_left()
        The pointer left the image.
    """

    marker_clicked = Signal(int)
    cursor_moved = Signal(float, float)
    cursor_left = Signal()

    def __init__(self, parent: QWidget | None = None):
        pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
        super().__init__(parent)
        self.setBackground(QColor(24, 24, 24))
        self.plot = self.addPlot()
        self.plot.setLabel("bottom", "x (r-band column, pix)")
        self.plot.setLabel("left", "y (r-band row, pix)")
        self.plot.showGrid(x=False, y=False)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.view: pg.ViewBox = self.plot.getViewBox()
        self.view.setAspectLocked(True)
        self.view.invertY(False)  # FITS row 0 at the bottom: no flip needed
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setZValue(-10)
        self.plot.addItem(self.image)
        self.markers = pg.ScatterPlotItem(
            pxMode=True,
            size=16,
            symbol="o",
            pen=pg.mkPen(MARKER_COLOUR, width=1.5),
            brush=pg.mkBrush(None),
            hoverable=True,
            hoverPen=pg.mkPen(SELECTED_COLOUR, width=2),
            hoverSize=20,
            tip=None,
        )
        self.markers.setZValue(10)
        self.markers.sigClicked.connect(self._on_points_clicked)
        self.plot.addItem(self.markers)
        self.selection = pg.ScatterPlotItem(
            pxMode=True,
            size=30,
            symbol="s",
            pen=pg.mkPen(SELECTED_COLOUR, width=2.5),
            brush=pg.mkBrush(None),
        )
        self.selection.setZValue(20)
        self.plot.addItem(self.selection)
        self.compass = CompassItem()
        self.compass.setParentItem(self.view)  # a child of the ViewBox itself stays put
        self.compass.setPos(60, 60)
        self.compass.set_directions(None, None)
        self.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self._shape: tuple[int, int] | None = None
        self._selected: int | None = None
        self._n_markers = 0

    # -- content -------------------------------------------------------------------------
    def set_image(self, rgb: np.ndarray, wcs: WCS | None = None) -> None:
        """Show an RGB uint8 image (rows, cols, 3) in FITS orientation (row 0 at the bottom)."""
        rows, cols = rgb.shape[:2]
        # uint8 RGB without levels goes straight into a QImage (no per-paint rescaling).
        self.image.setImage(
            np.ascontiguousarray(rgb, dtype=np.uint8), autoLevels=False, levels=None
        )
        # Pixel centres at integer coordinates, as in FITS (0-based) and the source table.
        self.image.setRect(QRectF(-0.5, -0.5, cols, rows))
        self._shape = (rows, cols)
        if wcs is not None:
            north, east = sky_directions(wcs, (cols - 1) / 2.0, (rows - 1) / 2.0)
            self.compass.set_directions(north, east)
        else:
            self.compass.set_directions(None, None)
        self.reset_zoom()

    def clear_field(self) -> None:
        """Remove the image, markers and selection."""
        self.image.clear()
        self._shape = None
        self.set_markers(np.empty(0), np.empty(0))
        self.compass.set_directions(None, None)

    def has_image(self) -> bool:
        """Whether an image is shown."""
        return self._shape is not None

    def reset_zoom(self) -> None:
        """Show the whole field."""
        if self._shape is not None:
            rows, cols = self._shape
            self.view.setRange(QRectF(-0.5, -0.5, cols, rows), padding=0.01)

    def set_markers(self, x: np.ndarray, y: np.ndarray) -> None:
        """Place one clickable marker per galaxy at pixel (x, y); replaces the old markers."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self._n_markers = len(x)
        self.markers.setData(x=x, y=y, data=np.arange(len(x)))
        self.select(None)

    def marker_count(self) -> int:
        """Number of markers shown."""
        return self._n_markers

    def set_markers_visible(self, visible: bool) -> None:
        """Show or hide the galaxy markers (the selection box stays)."""
        self.markers.setVisible(visible)

    def select(self, index: int | None, centre: bool = False) -> None:
        """Highlight marker ``index`` (None clears); ``centre`` pans to it if it is off view."""
        self._selected = index
        if index is None or not 0 <= index < self._n_markers:
            self._selected = None
            self.selection.setData(x=[], y=[])
            return
        x, y = self.markers.data["x"][index], self.markers.data["y"][index]
        self.selection.setData(x=[x], y=[y])
        if centre:
            (x0, x1), (y0, y1) = self.view.viewRange()
            if not (x0 <= x <= x1 and y0 <= y <= y1):
                self.view.translateBy(x=x - (x0 + x1) / 2, y=y - (y0 + y1) / 2)

    def selected(self) -> int | None:
        """Index of the highlighted marker."""
        return self._selected

    def marker_scene_pos(self, index: int) -> QPointF:
        """Scene position of a marker (for tests that click it)."""
        x, y = self.markers.data["x"][index], self.markers.data["y"][index]
        return self.view.mapViewToScene(QPointF(float(x), float(y)))

    # -- events --------------------------------------------------------------------------
    @Slot(object, object, object)
    def _on_points_clicked(self, item, points, ev) -> None:
        if len(points):
            # Several overlapping markers: take the one nearest the click.
            pos = ev.pos() if ev is not None else None
            best = points[0]
            if pos is not None and len(points) > 1:
                best = min(
                    points,
                    key=lambda p: (p.pos().x() - pos.x()) ** 2 + (p.pos().y() - pos.y()) ** 2,
                )
            self.marker_clicked.emit(int(best.data()))

    @Slot(object)
    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        if self._shape is None or not self.view.sceneBoundingRect().contains(scene_pos):
            self.cursor_left.emit()
            return
        p = self.view.mapSceneToView(scene_pos)
        rows, cols = self._shape
        if -0.5 <= p.x() < cols - 0.5 and -0.5 <= p.y() < rows - 0.5:
            self.cursor_moved.emit(float(p.x()), float(p.y()))
        else:
            self.cursor_left.emit()

    def leaveEvent(self, ev) -> None:  # noqa: D102
        self.cursor_left.emit()
        super().leaveEvent(ev)
