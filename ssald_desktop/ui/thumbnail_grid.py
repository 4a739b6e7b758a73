"""Query results as a scrollable grid of thumbnails with captions and labels.

:class:`ThumbnailGrid` shows :class:`ThumbnailItem` s (an RGB cutout, its rank, object id,
score and an optional note) in a ``QListView`` in icon mode backed by a list model. Thumbnails
are turned into pixmaps only when a cell is first painted and cached, and the view lays items
out in batches, so 500 results appear at once and scrolling stays smooth.

The astronomer opens a result with a double click or Enter, and labels results from the context
menu: "More like this" (a new query from that object), "Mark as positive", "Mark as negative",
"Clear mark". Marked results get a green (positive) or red (negative) frame and a badge. The
grid shows the marks and emits signals; storing them (the label store) is the caller's job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    Qt,
    Signal,
    Slot,
)
from PySide6.QtGui import (
    QAction,
    QColor,
    QFont,
    QFontMetrics,
    QGuiApplication,
    QImage,
    QPainter,
    QPalette,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QSizePolicy,
    QSlider,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "ThumbnailGrid",
    "ThumbnailItem",
    "ThumbnailModel",
    "rgb_to_qimage",
]

#: Label values that get a coloured frame.
POSITIVE = "positive"
NEGATIVE = "negative"

POSITIVE_COLOUR = QColor(40, 170, 70)
NEGATIVE_COLOUR = QColor(210, 45, 45)

#: Roles of :class:`ThumbnailModel` beyond Qt's.
OBJECT_ID_ROLE = Qt.ItemDataRole.UserRole
LABEL_ROLE = Qt.ItemDataRole.UserRole + 1
ITEM_ROLE = Qt.ItemDataRole.UserRole + 2

DEFAULT_THUMB = 128
MIN_THUMB, MAX_THUMB = 48, 256
CAPTION_LINES = 3
FRAME = 3  # width of the label frame, pixels


@dataclass
class ThumbnailItem:
    """One result shown in the grid.

    Attributes
    ----------
    object_id : str
        Identifier (SDSS objID, index id...); what the signals carry.
    image : numpy.ndarray or None
        RGB ``uint8`` array of shape ``(H, W, 3)`` (grey ``(H, W)`` is accepted); None shows
        a placeholder.
    score : float or None
        Similarity or distance shown in the caption (the grid's ``score_name`` says which).
    rank : int or None
        1-based rank shown in the caption.
    extra : str
        A short note for the caption (catalogue match, redshift...).
    label : str or None
        ``"positive"``, ``"negative"``, another label (shown as text) or None.
    bottom_up : bool
        True when row 0 of ``image`` is its bottom (FITS orientation, as
        :meth:`ssald_desktop.core.cutouts.Cutout.rgb` returns); False for a picture read
        from a PNG/JPEG file (row 0 at the top).
    tooltip : str
        Extra text for the tooltip (RA/Dec...).
    """

    object_id: str
    image: np.ndarray | None
    score: float | None = None
    rank: int | None = None
    extra: str = ""
    label: str | None = None
    bottom_up: bool = True
    tooltip: str = field(default="", repr=False)

    @classmethod
    def from_hit(
        cls, hit: Any, image: np.ndarray | None, bottom_up: bool = True, extra: str = ""
    ) -> ThumbnailItem:
        """An item from a :class:`ssald_desktop.core.query.Hit` (rank, id, similarity, RA/Dec)."""
        tip = ""
        ra, dec = getattr(hit, "ra", math.nan), getattr(hit, "dec", math.nan)
        if ra is not None and dec is not None and math.isfinite(ra) and math.isfinite(dec):
            tip = f"RA {ra:.5f}  Dec {dec:+.5f} (deg)"
        return cls(
            object_id=str(hit.id),
            image=image,
            score=float(hit.similarity),
            rank=int(hit.rank),
            extra=extra,
            bottom_up=bottom_up,
            tooltip=tip,
        )


def rgb_to_qimage(image: np.ndarray, bottom_up: bool = True) -> QImage:
    """A QImage (RGB888, own copy of the pixels) of an RGB ``uint8`` or grey array.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` or ``(H, W, 4)`` uint8 (alpha dropped) or ``(H, W)`` uint8 grey.
    bottom_up : bool
        Row 0 is the bottom of the picture (FITS); it is flipped so north-up cutouts show
        north up, as in ds9.

    Raises
    ------
    ValueError
        Not a 2-D or 3-D array with 1, 3 or 4 channels, or empty.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"thumbnail must be an (H, W, 3) RGB array, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img.astype(np.float64)), 0, 255).astype(np.uint8)
    if bottom_up:
        img = img[::-1]
    img = np.ascontiguousarray(img)
    rows, cols = img.shape[:2]
    return QImage(img.data, cols, rows, 3 * cols, QImage.Format.Format_RGB888).copy()


def _scaled_pixmap(image: QImage, size: int) -> QPixmap:
    """Fit ``image`` in a ``size`` square: pixel-exact when enlarging, smooth when shrinking."""
    shrink = image.width() > size or image.height() > size
    mode = (
        Qt.TransformationMode.SmoothTransformation
        if shrink
        else Qt.TransformationMode.FastTransformation
    )
    return QPixmap.fromImage(image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, mode))


class ThumbnailModel(QAbstractListModel):
    """List model of :class:`ThumbnailItem` s; pixmaps are made on first use and cached."""

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self._items: list[ThumbnailItem] = []
        self._row_of: dict[str, int] = {}
        self._pixmaps: dict[int, QPixmap] = {}
        self._thumb = DEFAULT_THUMB
        self._longest_id = 0
        self.score_name = "sim"

    # -- content -------------------------------------------------------------------------
    def set_items(self, items: Sequence[ThumbnailItem]) -> None:
        """Replace the items (object ids must be unique)."""
        items = list(items)
        rows: dict[str, int] = {}
        for row, item in enumerate(items):
            if not isinstance(item, ThumbnailItem):
                raise TypeError(f"result {row} is a {type(item).__name__}, not a ThumbnailItem")
            if item.object_id in rows:
                raise ValueError(f"object id {item.object_id!r} appears twice in the results")
            if item.image is not None:
                shape = np.shape(item.image)
                if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
                    raise ValueError(
                        f"result {item.object_id!r}: image must be (H, W, 3) RGB, got {shape}"
                    )
            rows[item.object_id] = row
        self.beginResetModel()
        self._items = items
        self._row_of = rows
        self._longest_id = max((len(oid) for oid in rows), default=0)
        self._pixmaps.clear()
        self.endResetModel()

    def longest_id(self) -> int:
        """Length of the longest object id (characters)."""
        return self._longest_id

    def items(self) -> list[ThumbnailItem]:
        """The items, in rank order."""
        return list(self._items)

    def item(self, row: int) -> ThumbnailItem:
        """The item of a row."""
        return self._items[row]

    def row_of(self, object_id: str) -> int | None:
        """Row of an object id, or None."""
        return self._row_of.get(object_id)

    def set_label(self, object_id: str, label: str | None) -> bool:
        """Change the label shown for an object; False if it is not in the results."""
        row = self._row_of.get(object_id)
        if row is None:
            return False
        if self._items[row].label != label:
            self._items[row].label = label
            index = self.index(row)
            self.dataChanged.emit(index, index, [LABEL_ROLE, Qt.ItemDataRole.DisplayRole])
        return True

    def thumb_size(self) -> int:
        """Thumbnail edge in pixels."""
        return self._thumb

    def set_thumb_size(self, size: int) -> None:
        """Change the thumbnail edge (pixmaps are remade when next painted)."""
        size = int(np.clip(size, MIN_THUMB, MAX_THUMB))
        if size != self._thumb:
            self._thumb = size
            self._pixmaps.clear()
            if self._items:
                self.dataChanged.emit(self.index(0), self.index(len(self._items) - 1))

    def cached_pixmaps(self) -> int:
        """Number of pixmaps made so far (the rest are made when painted)."""
        return len(self._pixmaps)

    def pixmap(self, row: int) -> QPixmap | None:
        """The thumbnail of a row at the current size (made now if needed)."""
        pix = self._pixmaps.get(row)
        if pix is None:
            image = self._items[row].image
            if image is None:
                return None
            try:
                qimage = rgb_to_qimage(image, self._items[row].bottom_up)
            except ValueError:
                return None
            pix = _scaled_pixmap(qimage, self._thumb)
            self._pixmaps[row] = pix
        return pix

    def caption(self, row: int) -> list[str]:
        """Caption lines: rank and score; object id; label and note."""
        item = self._items[row]
        first = f"#{item.rank}" if item.rank is not None else ""
        if item.score is not None and math.isfinite(item.score):
            first = f"{first}  {self.score_name} {item.score:.3f}".strip()
        third = " \u00b7 ".join(p for p in (item.label or "", item.extra) if p)
        return [first, item.object_id, third]

    # -- Qt model API --------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else len(self._items)

    def data(  # noqa: D102
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        row = index.row()
        item = self._items[row]
        if role == Qt.ItemDataRole.DisplayRole:
            return "\n".join(line for line in self.caption(row) if line)
        if role == Qt.ItemDataRole.DecorationRole:
            return self.pixmap(row)
        if role == OBJECT_ID_ROLE:
            return item.object_id
        if role == LABEL_ROLE:
            return item.label
        if role == ITEM_ROLE:
            return item
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [item.object_id]
            if item.rank is not None:
                lines.append(f"rank {item.rank}")
            if item.score is not None:
                lines.append(f"{self.score_name} {item.score:.4f}")
            if item.label:
                lines.append(f"marked {item.label}")
            for extra in (item.extra, item.tooltip):
                if extra:
                    lines.append(extra)
            lines.append("Double-click to open; right-click for more like this / marks")
            return "\n".join(lines)
        return None


class ThumbnailDelegate(QStyledItemDelegate):
    """Paints a cell: the thumbnail (framed green/red when marked), a badge, the caption."""

    def __init__(self, model: ThumbnailModel, parent: Any = None):
        super().__init__(parent)
        self._model = model

    def _fonts(self, option: QStyleOptionViewItem) -> tuple[QFont, QFont]:
        font = QFont(option.font)
        small = QFont(font)
        small.setPointSizeF(max(font.pointSizeF() * 0.85, 7.0))
        return font, small

    def cell_size(self, font: QFont) -> QSize:
        """Size of one cell at the model's thumbnail size."""
        thumb = self._model.thumb_size()
        small = QFont(font)
        small.setPointSizeF(max(font.pointSizeF() * 0.85, 7.0))
        line = QFontMetrics(small).height()
        # Wide enough for the longest object id (a 19-digit SDSS objID), but never more than
        # 48 px wider than the thumbnail: longer ids are elided in the middle.
        id_width = QFontMetrics(small).horizontalAdvance("0" * self._model.longest_id())
        width = max(thumb, min(id_width, thumb + 48)) + 2 * FRAME + 8
        return QSize(width, thumb + 2 * FRAME + 6 + CAPTION_LINES * line + 4)

    def sizeHint(  # noqa: D102
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QSize:
        return self.cell_size(option.font)

    def paint(  # noqa: D102
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        row = index.row()
        model = self._model
        item = model.item(row)
        rect: QRect = option.rect
        palette = option.palette
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.fillRect(
                rect.adjusted(1, 1, -1, -1), palette.color(QPalette.ColorRole.Highlight)
            )
        elif option.state & QStyle.StateFlag.State_MouseOver:
            hover = QColor(palette.color(QPalette.ColorRole.Highlight))
            hover.setAlpha(50)
            painter.fillRect(rect.adjusted(1, 1, -1, -1), hover)

        thumb = model.thumb_size()
        box = QRect(rect.x() + (rect.width() - thumb) // 2, rect.y() + FRAME + 3, thumb, thumb)
        painter.fillRect(box, QColor(24, 24, 24))
        pix = model.pixmap(row)
        if pix is not None:
            x = box.x() + (thumb - pix.width()) // 2
            y = box.y() + (thumb - pix.height()) // 2
            painter.drawPixmap(x, y, pix)
        else:
            painter.setPen(QColor(170, 170, 170))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "no image")

        colour = {POSITIVE: POSITIVE_COLOUR, NEGATIVE: NEGATIVE_COLOUR}.get(item.label or "")
        if colour is not None:
            pen = QPen(colour, FRAME)
            pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
            painter.setPen(pen)
            half = FRAME // 2 + 1
            painter.drawRect(box.adjusted(-half, -half, half - 1, half - 1))
            self._badge(painter, box, colour, "+" if item.label == POSITIVE else "\u2212")

        font, small = self._fonts(option)
        text_colour = palette.color(
            QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        )
        line_h = QFontMetrics(small).height()
        y = box.bottom() + FRAME + 4
        text_rect_w = rect.width() - 6
        first, oid, third = model.caption(row)
        for i, text in enumerate((first, oid, third)):
            if not text:
                y += line_h
                continue
            f = QFont(small)
            if i == 0:
                f.setBold(True)
            painter.setFont(f)
            pen_colour = text_colour
            if i == 2 and colour is not None and not selected:
                pen_colour = colour
            painter.setPen(pen_colour)
            elided = QFontMetrics(f).elidedText(
                text,
                Qt.TextElideMode.ElideMiddle if i == 1 else Qt.TextElideMode.ElideRight,
                text_rect_w,
            )
            painter.drawText(
                QRect(rect.x() + 3, y, text_rect_w, line_h),
                Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                elided,
            )
            y += line_h
        painter.restore()

    @staticmethod
    def _badge(painter: QPainter, box: QRect, colour: QColor, sign: str) -> None:
        size = max(14, box.width() // 7)
        badge = QRect(box.right() - size - 2, box.top() + 2, size, size)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor(255, 255, 255), 1.5))
        painter.setBrush(colour)
        painter.drawEllipse(badge)
        font = QFont()
        font.setBold(True)
        font.setPixelSize(int(size * 0.8))
        painter.setFont(font)
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, sign)


class ThumbnailGrid(QWidget):
    """Scrollable grid of query results with captions, marks and a context menu.

    Signals
    -------
    activated(str)
        A result was opened (double click or Enter).
    selectionChanged(list)
        Object ids of the selected results, in rank order.
    moreLikeThis(str)
        "More like this" on a result.
    markPositive(str), markNegative(str)
        A result was marked (once per object when several are selected).
    clearMark(str)
        A result's mark was removed.
    """

    activated = Signal(str)
    selectionChanged = Signal(list)
    moreLikeThis = Signal(str)
    markPositive = Signal(str)
    markNegative = Signal(str)
    clearMark = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = ThumbnailModel(self)
        self.last_menu: QMenu | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)
        top = QHBoxLayout()
        self.summary = QLabel()
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top.addWidget(self.summary, 1)
        top.addWidget(QLabel("Size"))
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(MIN_THUMB, MAX_THUMB)
        self.size_slider.setSingleStep(16)
        self.size_slider.setPageStep(32)
        self.size_slider.setValue(DEFAULT_THUMB)
        self.size_slider.setFixedWidth(110)
        self.size_slider.setToolTip("Thumbnail size (pixels)")
        self.size_slider.valueChanged.connect(self.set_thumbnail_size)
        top.addWidget(self.size_slider)
        layout.addLayout(top)

        self.view = QListView()
        self.view.setModel(self.model)
        self.delegate = ThumbnailDelegate(self.model, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setFlow(QListView.Flow.LeftToRight)
        self.view.setWrapping(True)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(100)
        self.view.setSpacing(4)
        self.view.setMouseTracking(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.verticalScrollBar().setSingleStep(24)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._on_context_menu)
        self.view.activated.connect(self._on_activated)
        self.view.selectionModel().selectionChanged.connect(self._on_selection_changed)
        self._apply_grid_size()
        layout.addWidget(self.view, 1)
        self._update_summary()

    # -- content -------------------------------------------------------------------------
    def set_results(self, items: Iterable[ThumbnailItem], score_name: str = "sim") -> None:
        """Show these results (replaces the old ones); ``score_name`` labels the score."""
        self.model.score_name = score_name
        self.model.set_items(list(items))
        self._apply_grid_size()
        self.view.scrollToTop()
        self._update_summary()
        self.selectionChanged.emit([])

    def clear(self) -> None:
        """Show no results."""
        self.set_results([])

    def items(self) -> list[ThumbnailItem]:
        """The results shown, in rank order."""
        return self.model.items()

    def object_ids(self) -> list[str]:
        """Object ids shown, in rank order."""
        return [item.object_id for item in self.model.items()]

    def selected_ids(self) -> list[str]:
        """Object ids selected, in rank order."""
        rows = sorted(i.row() for i in self.view.selectionModel().selectedIndexes())
        return [self.model.item(r).object_id for r in rows]

    def select(self, object_ids: Iterable[str]) -> None:
        """Select these results (others are deselected); the first one is scrolled to."""
        selection = QItemSelection()
        first: QModelIndex | None = None
        for oid in object_ids:
            row = self.model.row_of(oid)
            if row is None:
                continue
            index = self.model.index(row)
            selection.select(index, index)
            if first is None:
                first = index
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect
        self.view.selectionModel().select(selection, flags)
        if first is not None:
            self.view.selectionModel().setCurrentIndex(
                first, QItemSelectionModel.SelectionFlag.NoUpdate
            )
            self.view.scrollTo(first)

    def index_of(self, object_id: str) -> QModelIndex:
        """Model index of an object id (invalid if absent)."""
        row = self.model.row_of(object_id)
        return QModelIndex() if row is None else self.model.index(row)

    def item_rect(self, object_id: str) -> QRect:
        """Cell rectangle of a result in viewport coordinates (for tests and tooltips)."""
        return self.view.visualRect(self.index_of(object_id))

    # -- marks ---------------------------------------------------------------------------
    def set_label(self, object_id: str, label: str | None) -> bool:
        """Show a mark (``"positive"``, ``"negative"``, another label, None to clear).

        Returns False when the object is not among the results. Emits nothing.
        """
        done = self.model.set_label(object_id, label)
        if done:
            self._update_summary()
        return done

    def set_labels(self, labels: Mapping[str, str]) -> None:
        """Show the marks of a label store (``object id -> label``); others are cleared."""
        for item in self.model.items():
            self.model.set_label(item.object_id, labels.get(item.object_id))
        self._update_summary()

    def label_of(self, object_id: str) -> str | None:
        """The mark shown for an object."""
        row = self.model.row_of(object_id)
        return None if row is None else self.model.item(row).label

    def mark(self, object_ids: Iterable[str], label: str | None) -> None:
        """Mark results positive/negative (or clear) and emit the matching signal for each."""
        signal = {POSITIVE: self.markPositive, NEGATIVE: self.markNegative}.get(label or "")
        if label is not None and signal is None:
            raise ValueError(f"mark must be {POSITIVE!r}, {NEGATIVE!r} or None, not {label!r}")
        for oid in list(object_ids):
            if not self.set_label(oid, label):
                continue
            if signal is None:
                self.clearMark.emit(oid)
            else:
                signal.emit(oid)

    # -- size ----------------------------------------------------------------------------
    def set_thumbnail_size(self, size: int) -> None:
        """Thumbnail edge in pixels (48-256)."""
        self.model.set_thumb_size(size)
        if self.size_slider.value() != self.model.thumb_size():
            self.size_slider.blockSignals(True)
            self.size_slider.setValue(self.model.thumb_size())
            self.size_slider.blockSignals(False)
        self._apply_grid_size()

    def thumbnail_size(self) -> int:
        """Thumbnail edge in pixels."""
        return self.model.thumb_size()

    def _apply_grid_size(self) -> None:
        cell = self.delegate.cell_size(self.view.font())
        self.view.setGridSize(cell + QSize(4, 4))
        self.view.doItemsLayout()

    # -- context menu --------------------------------------------------------------------
    def build_context_menu(self, object_id: str) -> QMenu:
        """The context menu of a result (its marks apply to the selection if it is in it)."""
        targets = self.selected_ids()
        if object_id not in targets:
            targets = [object_id]
        n = len(targets)
        what = "" if n == 1 else f" {n} results"
        menu = QMenu(self)
        more = QAction("More like this", menu)
        more.setToolTip(f"A new query with {object_id} as the example")
        more.triggered.connect(lambda: self.moreLikeThis.emit(object_id))
        menu.addAction(more)
        open_action = QAction("Open cutout and spectrum", menu)
        open_action.triggered.connect(lambda: self.activated.emit(object_id))
        menu.addAction(open_action)
        menu.addSeparator()
        for text, label in (
            (f"Mark{what} as positive", POSITIVE),
            (f"Mark{what} as negative", NEGATIVE),
            (f"Clear mark{'' if n == 1 else 's'}", None),
        ):
            action = QAction(text, menu)
            action.setData(label)
            action.triggered.connect(lambda _=False, lb=label: self.mark(targets, lb))
            menu.addAction(action)
        menu.addSeparator()
        copy = QAction("Copy object id" + ("" if n == 1 else "s"), menu)
        copy.triggered.connect(lambda: QGuiApplication.clipboard().setText("\n".join(targets)))
        menu.addAction(copy)
        return menu

    @Slot(QPoint)
    def _on_context_menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        if not index.isValid():
            return
        object_id = str(index.data(OBJECT_ID_ROLE))
        if object_id not in self.selected_ids():
            self.select([object_id])
        if self.last_menu is not None:
            self.last_menu.deleteLater()
        self.last_menu = self.build_context_menu(object_id)
        self.last_menu.popup(self.view.viewport().mapToGlobal(pos))

    # -- slots ---------------------------------------------------------------------------
    @Slot(QModelIndex)
    def _on_activated(self, index: QModelIndex) -> None:
        if index.isValid():
            self.activated.emit(str(index.data(OBJECT_ID_ROLE)))

    @Slot()
    def _on_selection_changed(self, *args: object) -> None:
        self.selectionChanged.emit(self.selected_ids())

    def _update_summary(self) -> None:
        items = self.model.items()
        if not items:
            self.summary.setText("<i>No results</i>")
            return
        pos = sum(1 for i in items if i.label == POSITIVE)
        neg = sum(1 for i in items if i.label == NEGATIVE)
        text = f"<b>{len(items)}</b> results"
        if pos or neg:
            text += (
                f" \u00b7 <span style='color:{POSITIVE_COLOUR.name()}'>{pos} positive</span>"
                f" \u00b7 <span style='color:{NEGATIVE_COLOUR.name()}'>{neg} negative</span>"
            )
        text += " \u00b7 <span style='color:#777'>double-click opens, right-click marks</span>"
        self.summary.setText(text)
