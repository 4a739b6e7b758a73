"""The query panel: query by image and "more like this", with positives, negatives and results.

The astronomer drops FITS/PNG/JPEG images onto the panel (or the window), or asks for galaxies
like a selected one; each example goes into the positives (or, dropped on the negatives list,
the negatives), and the search runs in a background task through
:class:`ssald_desktop.core.query.Searcher` with exactly the preprocessing of the indexed data.
Results come back as thumbnails with their similarity; activating one asks the window to show
that object.

The searcher (its index, and the encoder with TensorFlow) lives in the window's TensorFlow
helper process (:mod:`ssald_desktop.core.tf_work`), loaded on first use and kept warm, so
that TensorFlow never runs in, or stalls, the GUI process.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ssald_desktop.core.child import ChildProcess
from ssald_desktop.core.errors import SsaldError
from ssald_desktop.ui.cutout_panel import array_to_pixmap
from ssald_desktop.ui.thumbnail_grid import ThumbnailGrid, ThumbnailItem
from ssald_desktop.ui.workers import TaskRunner

QUERY_SUFFIXES = (".png", ".jpg", ".jpeg", ".fits", ".fit", ".fts", ".fits.gz", ".fits.bz2")
EXAMPLE_ICON = 56


def is_query_file(path: str | Path) -> bool:
    """Whether a dropped file can be a query image (by its name)."""
    return str(path).lower().endswith(QUERY_SUFFIXES)


@dataclass
class QueryExample:
    """One positive or negative example.

    ``kind`` is ``"file"`` (``value`` is its path), ``"object"`` (an indexed object id) or
    ``"position"`` (a galaxy of the open field: ``ra``/``dec`` and ``frame_set``; it becomes
    the indexed object there when the index holds one within 1 arcsec, else a cutout made with
    the index's NormSpec).
    """

    kind: str
    value: str
    label: str
    thumb: np.ndarray | None = field(default=None, repr=False)  # top-down uint8 RGB
    ra: float = math.nan
    dec: float = math.nan
    frame_set: Any = field(default=None, repr=False)


@dataclass
class QueryOutcome:
    """What a search task returns."""

    result: Any
    images: list[np.ndarray | None]
    folder: str


def open_store(cache: dict[str, Any], folder: str) -> Any:
    """The embedding store of an index folder (object table only), opened once per folder."""
    from ssald_desktop.core.embeddings import EmbeddingStore

    store = cache.get(folder)
    if store is None:
        store = EmbeddingStore(folder, create=False)
        cache.clear()
        cache[folder] = store
    return store


def _split(store: Any, examples: list[QueryExample]) -> tuple[list, list, list]:
    """Files, object ids and cutouts of a list of examples (positions resolved).

    A position is the indexed object within 1 arcsec when the index holds one, else a cutout
    made with the index's NormSpec (what its vectors were made from).
    """
    from astropy.coordinates import SkyCoord

    from ssald_desktop.core.cutouts import CutoutEngine, NormSpec

    files, objects, cutouts = [], [], []
    engines: dict[int, Any] = {}
    spec = (NormSpec.from_dict(store.normspec) if store.normspec else NormSpec())
    for ex in examples:
        if ex.kind == "file":
            files.append(ex.value)
        elif ex.kind == "object":
            objects.append(ex.value)
        else:
            found = store.nearest_object(ex.ra, ex.dec, 1.0)
            if found is not None:
                objects.append(found)
                continue
            key = id(ex.frame_set)
            if key not in engines:
                engines[key] = CutoutEngine(ex.frame_set, spec)
            cutouts.append(engines[key].cut(SkyCoord(ex.ra, ex.dec, unit="deg")))
    return files, objects, cutouts


def search_task(cache: dict[str, Any], folder: str, positives: list[QueryExample],
                negatives: list[QueryExample], k: int, combine: str,
                child: ChildProcess | None = None) -> Generator[Any, None, QueryOutcome]:
    """Run one search (a worker generator yielding progress).

    Positions are resolved here; the encoding and the search run in ``child`` (the window's
    TensorFlow helper process), or in this thread when no child is given.
    """
    from ssald_desktop.core import tf_work

    yield (0, 3, f"Opening the index {folder}\u2026")
    store = open_store(cache, folder)
    pf, po, pc = _split(store, positives)
    nf, no, nc = _split(store, negatives)
    k = min(int(k), max(1, store.count - len(po) - len(no)))
    yield (1, 3, "Encoding the query and searching\u2026")
    args = (folder, pf, po, pc, nf, no, nc, k, combine)
    if child is None:
        result, images = tf_work.search(*args)
    else:
        result, images = yield from child.call(tf_work.search, *args)
    yield (2, 3, "Showing the results\u2026")
    return QueryOutcome(result, images, folder)


def describe_index(folder: str | Path) -> str:
    """One line about an index folder (read without loading faiss or TensorFlow)."""
    import json
    import sqlite3

    p = Path(folder)
    try:
        header = json.loads((p / "store.json").read_text())
        db = sqlite3.connect(f"file:{p / 'objects.sqlite'}?mode=ro", uri=True)
        try:
            count = db.execute("SELECT value FROM meta WHERE key='count'").fetchone()[0]
        finally:
            db.close()
    except (OSError, ValueError, sqlite3.Error, TypeError) as exc:
        return f"{p}: not a usable index ({exc})"
    has_index = (p / "index.faiss").exists()
    name = header.get("title") or p.name
    return (f"{name}: {count} objects, encoder {str(header.get('encoder_id', '?'))[:8]}"
            + ("" if has_index else " (no index built)"))


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class ExampleList(QListWidget):
    """Positive or negative examples as small thumbnails; accepts dropped image files."""

    files_dropped = Signal(list)

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.examples: list[QueryExample] = []
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setIconSize(QSize(EXAMPLE_ICON, EXAMPLE_ICON))
        self.setFixedHeight(EXAMPLE_ICON + 30)
        self.setMovement(QListWidget.Movement.Static)
        self.setAcceptDrops(True)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.setToolTip(f"{title}: drop FITS/PNG/JPEG images here; right-click to remove")

    def add(self, example: QueryExample) -> None:
        """Append an example."""
        self.examples.append(example)
        item = QListWidgetItem(example.label[:18])
        item.setToolTip(example.label)
        if example.thumb is not None:
            img = np.ascontiguousarray(example.thumb[::-1])  # array_to_pixmap flips back
            item.setIcon(QIcon(array_to_pixmap(img, EXAMPLE_ICON)))
        else:
            item.setIcon(QIcon(QPixmap(EXAMPLE_ICON, EXAMPLE_ICON)))
        self.addItem(item)

    def remove_at(self, row: int) -> None:
        """Remove one example."""
        if 0 <= row < len(self.examples):
            del self.examples[row]
            self.takeItem(row)

    def clear_examples(self) -> None:
        """Remove every example."""
        self.examples.clear()
        self.clear()

    def _menu(self, pos: Any) -> None:
        item = self.itemAt(pos)
        menu = QMenu(self)
        if item is not None:
            row = self.row(item)
            menu.addAction("Remove", lambda: self.remove_at(row))
        menu.addAction("Remove all", self.clear_examples)
        menu.exec(self.mapToGlobal(pos))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: D102
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: Any) -> None:  # noqa: D102
        event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: D102
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.files_dropped.emit(paths)


class QueryPanel(QWidget):
    """Query by image and "more like this" (see the module docstring).

    Parameters
    ----------
    tasks : TaskRunner
        Where searches run (the window's, so they share its progress bar and Cancel).
    index_folder : str
        The embedding store searched.

    Signals
    -------
    result_activated(object)
        A result was opened (a :class:`ssald_desktop.core.query.Hit`).
    error(str, str)
        Title and message of a failure, for the window to show.
    searched(int)
        A search finished with this many results.
    """

    result_activated = Signal(object)
    error = Signal(str, str)
    searched = Signal(int)
    index_changed = Signal(str)

    def __init__(self, tasks: TaskRunner, index_folder: str, k: int = 20,
                 child: ChildProcess | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.tasks = tasks
        self.child = child
        self.index_folder = str(index_folder)
        self._cache: dict[str, Any] = {}
        self._generation = 0
        self.hits: list[Any] = []
        self._items: list[ThumbnailItem] = []
        self.last_result: Any = None
        self.searching = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(4)
        top = QHBoxLayout()
        self.index_label = QLabel()
        self.index_label.setWordWrap(True)
        top.addWidget(self.index_label, 1)
        choose = QPushButton("Index\u2026")
        choose.setToolTip("Search another embedding store (made with ssald-cli embed/index)")
        choose.clicked.connect(self.choose_index)
        top.addWidget(choose)
        layout.addLayout(top)

        layout.addWidget(_wrapped("<b>Positives</b> \u2014 drop FITS/PNG/JPEG images here, or "
                                  "right-click a galaxy \u25b8 More like this"))
        self.positives = ExampleList("Positives")
        self.positives.files_dropped.connect(lambda paths: self.add_files(paths, False))
        layout.addWidget(self.positives)
        layout.addWidget(_wrapped("<b>Negatives</b> \u2014 drop images unlike what you seek"))
        self.negatives = ExampleList("Negatives")
        self.negatives.files_dropped.connect(lambda paths: self.add_files(paths, True))
        layout.addWidget(self.negatives)

        row = QHBoxLayout()
        row.addWidget(QLabel("Results"))
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 1000)
        self.k_spin.setValue(k)
        row.addWidget(self.k_spin)
        row.addWidget(QLabel("combine"))
        self.combine = QComboBox()
        self.combine.addItem("mean embedding", "mean")
        self.combine.addItem("best match", "max")
        self.combine.setToolTip("Several positives: search with their mean embedding, or rank "
                                "each candidate by its best match to any positive")
        row.addWidget(self.combine)
        row.addStretch(1)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addStretch(1)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear_examples)
        row.addWidget(self.clear_button)
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.search_button.clicked.connect(self.search)
        row.addWidget(self.search_button)
        layout.addLayout(row)

        self.status = QLabel("No query yet.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.grid = ThumbnailGrid()
        self.grid.set_thumbnail_size(80)  # three columns in a narrow dock
        self.grid.activated.connect(self._activated)
        self.grid.moreLikeThis.connect(self.more_like_object)
        self.grid.markPositive.connect(lambda oid: self._mark(oid, False))
        self.grid.markNegative.connect(lambda oid: self._mark(oid, True))
        layout.addWidget(self.grid, 1)
        self.set_index(self.index_folder, emit=False)

    # -- index ---------------------------------------------------------------------------
    def set_index(self, folder: str | Path, emit: bool = True) -> None:
        """Search this embedding store from now on."""
        self.index_folder = str(folder)
        self.index_label.setText(f"Index: {describe_index(folder)}")
        self.index_label.setToolTip(str(folder))
        if emit:
            self.index_changed.emit(self.index_folder)

    @Slot()
    def choose_index(self) -> None:
        """Ask for an embedding store folder."""
        folder = QFileDialog.getExistingDirectory(self, "Choose an embedding store",
                                                  self.index_folder)
        if folder:
            self.set_index(folder)

    # -- examples ------------------------------------------------------------------------
    def add_files(self, paths: list[str], negative: bool = False, search: bool = True) -> None:
        """Add image files as examples (unreadable ones are reported, the rest kept)."""
        from ssald_desktop.core.embeddings import read_image

        target = self.negatives if negative else self.positives
        added = 0
        for path in paths:
            p = Path(path)
            if not is_query_file(p):
                self.error.emit("Not a query image", f"{p}: not a FITS, PNG or JPEG file")
                continue
            thumb = None
            if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                try:
                    thumb = read_image(p, 3).astype(np.uint8)
                except SsaldError as exc:
                    self.error.emit("Cannot use this image", str(exc))
                    continue
            target.add(QueryExample("file", str(p), p.name, thumb))
            added += 1
        if added and search and self.positives.examples:
            self.search()

    def add_position(self, ra: float, dec: float, frame_set: Any, label: str,
                     thumb: np.ndarray | None, negative: bool = False,
                     search: bool = True) -> None:
        """Add a galaxy of the open field ("more like this" / "less like this")."""
        target = self.negatives if negative else self.positives
        target.add(QueryExample("position", label, label, thumb, ra, dec, frame_set))
        if search and self.positives.examples:
            self.search()

    @Slot(str)
    def more_like_object(self, object_id: str) -> None:
        """Search again with an indexed object as the only positive."""
        self.positives.clear_examples()
        self.negatives.clear_examples()
        self._mark(object_id, False)

    def _mark(self, object_id: str, negative: bool) -> None:
        thumb = None
        for hit, item in zip(self.hits, self._items, strict=False):
            if hit.id == object_id:
                thumb = item.image
        target = self.negatives if negative else self.positives
        target.add(QueryExample("object", object_id, f"#{object_id}", thumb))
        if self.positives.examples:
            self.search()

    @Slot()
    def clear_examples(self) -> None:
        """Forget every example and result."""
        self.positives.clear_examples()
        self.negatives.clear_examples()
        self.hits = []
        self._items = []
        self.grid.set_results([])
        self.status.setText("No query yet.")

    # -- searching -----------------------------------------------------------------------
    @Slot()
    def search(self) -> None:
        """Search with the current examples (in the background)."""
        if not self.positives.examples:
            self.error.emit("Nothing to search for",
                            "Add a positive example first: drop an image on the Positives "
                            "list, or right-click a galaxy and choose More like this.")
            return
        self._generation += 1
        generation = self._generation
        self.searching = True
        self.status.setText("Searching\u2026")
        self.tasks.run(
            "search",
            search_task,
            self._cache,
            self.index_folder,
            list(self.positives.examples),
            list(self.negatives.examples),
            self.k_spin.value(),
            self.combine.currentData(),
            self.child,
            on_result=lambda out: self._done(out, generation),
            on_error=lambda exc: self._failed(exc, generation),
        )

    def _done(self, outcome: QueryOutcome, generation: int) -> None:
        if generation != self._generation:
            return
        self.searching = False
        result = outcome.result
        self.last_result = result
        self.hits = list(result.hits)
        self._items = [ThumbnailItem.from_hit(h, img, bottom_up=False)
                       for h, img in zip(result.hits, outcome.images, strict=True)]
        self.grid.set_results(self._items)
        for e in self.positives.examples:
            if e.kind == "object":
                self.grid.set_label(e.value, "positive")
        for e in self.negatives.examples:
            if e.kind == "object":
                self.grid.set_label(e.value, "negative")
        info = result.index
        cosine = "cosine of whitened embeddings" if info.get("whitened") else "cosine"
        text = (f"{len(result.hits)} results from {info.get('count')} objects "
                f"({info.get('kind')} index); similarity = {cosine}"
                + (" \u2212 0.5 \u00d7 best cosine to a negative" if result.negatives else ""))
        if result.warnings:
            text += "<br><i>" + "<br>".join(result.warnings) + "</i>"
        self.status.setText(text)
        window = self.window()
        if hasattr(window, "statusBar"):
            window.statusBar().showMessage(f"{len(result.hits)} results", 5000)
        self.searched.emit(len(result.hits))

    def _failed(self, exc: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        self.searching = False
        self.status.setText("The search failed.")
        message = str(exc) if isinstance(exc, SsaldError) else f"{type(exc).__name__}: {exc}"
        self.error.emit("Search failed", message)
        self.searched.emit(-1)

    @Slot(str)
    def _activated(self, object_id: str) -> None:
        for h in self.hits:
            if h.id == object_id:
                self.result_activated.emit(h)
                return
