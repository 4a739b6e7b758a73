"""The main window: a field's colour image with its galaxies, a galaxy table and a cutout panel.

Everything slow runs in background tasks (:mod:`ssald_desktop.ui.workers`): reading the frames
and rendering the colour image (one task), then detecting the galaxies (a second task). Their
results come back to this window in the GUI thread; a counter of opened fields makes results of
an older request harmless when the astronomer has opened another field in the meantime.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QItemSelectionModel, QSortFilterProxyModel, Qt, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QFileDialog,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableView,
    QTabWidget,
)

from ssald_desktop import __version__
from ssald_desktop.core.child import ChildProcess
from ssald_desktop.core.cutouts import CutoutEngine, NormSpec
from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.frames import FrameSet, open_frame_set, parse_frame_name
from ssald_desktop.core.launch.base import default_data_dir
from ssald_desktop.core.render import field_rgb_iter
from ssald_desktop.core.tf_work import WARM_MODULES as TF_WARM_MODULES
from ssald_desktop.settings import Settings
from ssald_desktop.ui.cutout_panel import CutoutPanel
from ssald_desktop.ui.evidence_view import EvidenceView
from ssald_desktop.ui.field_view import FieldView
from ssald_desktop.ui.galaxy_table import (
    SORT_ROLE,
    GalaxyList,
    GalaxyTableModel,
    format_dec,
    format_ra,
)
from ssald_desktop.ui.query_panel import QueryPanel, is_query_file
from ssald_desktop.ui.review_panel import ReviewPanel
from ssald_desktop.ui.spectrum_view import SpectrumView
from ssald_desktop.ui.training_panel import TrainingPanel
from ssald_desktop.ui.workers import Task, TaskRunner

log = logging.getLogger(__name__)

APP_NAME = "SSALD desktop"
FRAME_FILTER = (
    "SDSS frames (frame-*.fits frame-*.fits.bz2 frame-*.fits.gz);;"
    "FITS files (*.fits *.fit *.fts *.fits.bz2 *.fits.gz);;All files (*)"
)

Source = str | Path | Sequence[str | Path]

#: Modules the detection helper process imports at start.
DETECTION_MODULES = ("ssald_desktop.core.sources", "photutils.segmentation",
                     "photutils.background", "astropy.convolution")
#: Background tasks that belong to the field shown (cancelled when another field opens).
FIELD_TASKS = ("open field", "open field at position", "detect galaxies", "evidence",
               "cutout size")
SPECTRUM_FILTER = "SDSS spectra (spec-*.fits spPlate-*.fits *.fits);;All files (*)"
QUERY_FILTER = "Query images (*.png *.jpg *.jpeg *.fits *.fit *.fits.gz);;All files (*)"


# ---------------------------------------------------------------------------------------------
# work done in worker threads (no widgets here)
# ---------------------------------------------------------------------------------------------


@dataclass
class FieldData:
    """A field ready to show: frames, colour image on the r grid, a warm cutout engine."""

    name: str
    source: list[str]
    frame_set: FrameSet
    rgb: np.ndarray
    engine: CutoutEngine


def normalise_source(source: Source) -> str | Path | list[Path]:
    """One folder or file as a Path, several files as a list (what open_frame_set takes)."""
    if isinstance(source, (str, Path)):
        return Path(source)
    paths = [Path(p) for p in source]
    if len(paths) == 1:
        return paths[0]
    return paths


def describe_source(source: Source) -> str:
    """A short name for what is being opened: the field id when the file names tell it."""
    src = normalise_source(source)
    paths: list[Path]
    if isinstance(src, Path):
        try:
            paths = sorted(src.iterdir()) if src.is_dir() else [src]
        except OSError:
            paths = [src]
    else:
        paths = list(src)
    for p in paths:
        parsed = parse_frame_name(p.name)
        if parsed is not None:
            return str(parsed[1])
    if isinstance(src, Path):
        return src.name or str(src)
    return paths[0].name if paths else "?"


def load_field(source: Source, spec: NormSpec) -> Generator[Any, None, FieldData]:
    """Open a frame set, render its colour image and warm a cutout engine (a worker generator).

    Yields ``(step, n_steps, message)`` between stages (and ``None`` between strips of the
    colour image, so that a cancel request is honoured quickly).
    """
    src = normalise_source(source)
    name = describe_source(src)
    yield (0, 3, f"Reading the frames of {name}\u2026")
    frame_set = open_frame_set(src)
    yield (1, 3, f"Rendering the {','.join(spec.rgb)} colour image\u2026")
    rgb = yield from field_rgb_iter(frame_set, spec)
    yield (2, 3, "Preparing cutouts\u2026")
    engine = CutoutEngine(frame_set, spec)
    engine.cut(frame_set.centre())  # fills the per-band caches once, here and not in the GUI
    if frame_set.field_id is not None:
        name = str(frame_set.field_id)
    paths = [str(src)] if isinstance(src, Path) else [str(p) for p in src]
    return FieldData(name=name, source=paths, frame_set=frame_set, rgb=rgb, engine=engine)


def load_field_at(position: str, spec: NormSpec, cache_dir: Path,
                  timeout: float) -> Generator[Any, None, FieldData]:
    """Find, download (or take from the cache) and open the SDSS field at a position or name.

    A worker generator: names are resolved online (Sesame through astropy), the field is
    looked up and fetched by :class:`ssald_desktop.core.sky.SDSSClient` with the settings'
    timeout; then it is rendered as :func:`load_field` does.
    """
    from ssald_desktop.core.sky import SDSSClient, parse_position

    yield (0, 4, f"Looking up {position}\u2026")
    coord = parse_position(position, allow_names=True, timeout=timeout)
    yield (1, 4, f"Fetching the SDSS field at {coord.to_string('hmsdms', precision=1)}\u2026")
    frame_set = SDSSClient(cache_dir, timeout=timeout).fetch_field_at(coord)
    paths = [frame_set[b].path for b in frame_set.bands]
    return (yield from load_field(paths, spec))


def fetch_spectrum(text: str, cache_dir: Path, timeout: float) -> Generator[Any, None, Path]:
    """Download an SDSS spectrum by ``plate-mjd-fiber`` or by position/name (worker)."""
    import re

    from ssald_desktop.core.sky import SDSSClient

    client = SDSSClient(cache_dir, timeout=timeout)
    m = re.fullmatch(r"\s*(\d+)\s*[-/ ]\s*(\d+)\s*[-/ ]\s*(\d+)\s*", text)
    if m:
        plate, mjd, fiber = (int(g) for g in m.groups())
        yield (0, 1, f"Fetching spectrum {plate}-{mjd}-{fiber}\u2026")
        return client.fetch_spectrum(plate, mjd, fiber)
    yield (0, 1, f"Fetching the spectrum at {text}\u2026")
    return client.fetch_spectrum_at(text)


def object_evidence(frame_set: FrameSet, ra: float, dec: float, spectrum: Path | None,
                    child: ChildProcess | None = None, sources: Any = None
                    ) -> Generator[Any, None, Any]:
    """Nuclei, spectral evidence and catalogue matches of one object (a worker generator).

    The fits run in ``child`` (the detection helper process) when given, with only the g, r
    and i bands of the field sent to it (r for the nuclei, g/r/i for the colour cutout).
    ``sources`` is the field's source catalogue (the detection's table): a second nucleus on
    a catalogued star is a star, not a nucleus.
    """
    from ssald_desktop.core.catalogs import crossmatch
    from ssald_desktop.core.evidence import gather_evidence

    yield (0, 2, "Cross-matching the known dual AGN\u2026")
    matches = [{"summary": m.summary(), "name": m.name, "catalog": m.catalog,
                "distance_arcsec": m.distance_arcsec} for m in crossmatch(ra, dec, 5.0)]
    yield (1, 2, "Measuring nuclei and emission lines\u2026")
    # The nuclei are searched in r; the cutout needs its colour bands too (not u, z).
    bands = [b for b in ("g", "r", "i") if b in frame_set] or list(frame_set.bands)
    some = FrameSet({b: frame_set[b] for b in bands},
                    psf={b: frame_set.psf[b] for b in bands if b in frame_set.psf})
    kwargs = {"frame_set": some, "ra": ra, "dec": dec, "catalog_matches": matches,
              "spectrum": str(spectrum) if spectrum is not None else None,
              "sources": sources}
    if child is None:
        return gather_evidence(**kwargs)
    return (yield from child.call(gather_evidence, **kwargs))


def reembed_index(index: str, encoder: str, out: Path,
                  child: ChildProcess | None) -> Generator[Any, None, str]:
    """Encode the images of an index again with another encoder and index them (worker).

    The images are the store's sources: the miner's HDF5 shards or image files (their common
    folder). Encoding runs in ``child`` (the TensorFlow helper process); the faiss index is
    built here. Returns the new store's folder.
    """
    import os

    from ssald_desktop.core import tf_work
    from ssald_desktop.core.embeddings import EmbeddingStore
    from ssald_desktop.core.index import build_store_index

    store = EmbeddingStore(index, create=False)
    sources = sorted({str(store.source_path(s)) for s in store.table()["source"] if s})
    if not sources:
        raise SsaldError(f"{index}: the store records no image sources to encode again")
    suffixes = {Path(s).suffix.lower() for s in sources}
    fmt = "h5" if suffixes <= {".h5", ".hdf5"} else "images"
    root = os.path.commonpath([str(Path(s).parent) for s in sources])
    yield (0, 2, f"Encoding {len(store.ids())} objects of {root} with {Path(encoder).name}\u2026")
    if child is None:
        yield from tf_work.encode_images(root, str(out), encoder, fmt)
    else:
        yield from child.call_iter(tf_work.encode_images, root, str(out), encoder, fmt)
    yield (1, 2, "Building the index\u2026")
    yield from build_store_index(EmbeddingStore(out, create=False), "auto")
    return str(out)


def detect_field_galaxies(frame_set: FrameSet, band: str, child: ChildProcess | None = None,
                          spectra: LocalSpectra | None = None) -> Generator[Any, None, Any]:
    """Offline galaxy detection of one band (a worker generator yielding progress).

    With ``child``, the detection runs in that helper process (photutils holds the GIL for
    long stretches; in a thread it would stall the GUI), given only the one band it needs.
    With ``spectra``, each source gets the redshift of a local spectrum at its position
    (column ``z_spec``, NaN elsewhere).
    """
    from ssald_desktop.core import sources

    if child is None:
        table = yield from sources.detect_sources_iter(frame_set, band)
    else:
        yield (0, 1, f"Detecting the sources of the {band} band (helper process)\u2026")
        one_band = FrameSet({band: frame_set[band]},
                            psf={band: frame_set.psf[band]} if band in frame_set.psf else None)
        table = yield from child.call(sources.detect_galaxies, one_band, band)
    if spectra is not None:  # z where a local spectrum is known (file reads: not in the GUI)
        table["z_spec"] = spectra.redshifts(np.asarray(table["ra"]), np.asarray(table["dec"]))
    return table


def sources_unavailable() -> str | None:
    """None when galaxy detection can be imported, else the reason it cannot."""
    try:
        from ssald_desktop.core import sources
    except Exception as exc:  # a missing or half-written module must not stop the GUI
        return f"{type(exc).__name__}: {exc}"
    if not hasattr(sources, "detect_galaxies"):
        return "ssald_desktop.core.sources has no detect_galaxies()"
    return None


def fibre_of(path: Path) -> tuple[float, float, float] | None:
    """(RA, Dec, diameter in arcsec) of a spectrum's fibre: 3\u2033 SDSS, 2\u2033 BOSS."""
    from astropy.io import fits

    try:
        header = fits.getheader(path, 0)
        ra, dec = float(header["PLUG_RA"]), float(header["PLUG_DEC"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    boss = int(header.get("PLATEID", header.get("PLATE", 0)) or 0) >= 3509
    return ra, dec, 2.0 if boss else 3.0


class LocalSpectra:
    """SDSS spectrum files in local folders, found by position (their plug RA/Dec).

    Folders are scanned on first use (primary headers only; a few ms per file). spPlate files
    hold many fibres and are not matched by position.
    """

    def __init__(self, folders: Sequence[str | Path]):
        self.folders = [Path(f) for f in folders]
        self._entries: list[tuple[float, float, Path]] | None = None
        self._z: dict[Path, float | None] = {}

    def redshift(self, path: Path) -> float | None:
        """The pipeline redshift of a spectrum file (SPECOBJ or SPALL), None if unreadable."""
        if path not in self._z:
            from ssald_desktop.core.spectra import spectrum_redshift

            self._z[path] = spectrum_redshift(path)
        return self._z[path]

    def redshifts(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Redshift of each position's spectrum within 2 arcsec (NaN where there is none)."""
        out = np.full(len(ra), np.nan)
        for i, (r, d) in enumerate(zip(ra, dec, strict=True)):
            path = self.find(float(r), float(d))
            if path is not None:
                z = self.redshift(path)
                out[i] = np.nan if z is None else z
        return out

    def _scan(self) -> list[tuple[float, float, Path]]:
        from astropy.io import fits

        entries = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("spec-*.fits")):
                try:
                    header = fits.getheader(path, 0)
                    ra, dec = float(header["PLUG_RA"]), float(header["PLUG_DEC"])
                except (OSError, KeyError, ValueError, TypeError) as exc:
                    log.warning("spectrum %s has no usable plug position: %s", path, exc)
                    continue
                entries.append((ra, dec, path))
        return entries

    def find(self, ra: float, dec: float, radius_arcsec: float = 2.0) -> Path | None:
        """The spectrum whose fibre lies nearest (RA, Dec) within ``radius_arcsec``."""
        if self._entries is None:
            self._entries = self._scan()
        best, best_sep = None, radius_arcsec
        cosd = np.cos(np.radians(dec))
        for ra2, dec2, path in self._entries:
            dra = (ra2 - ra + 180.0) % 360.0 - 180.0  # across RA 0/360 too
            sep = 3600.0 * float(np.hypot(dra * cosd, dec2 - dec))
            if sep <= best_sep:
                best, best_sep = path, sep
        return best


def classify_drop(paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """Sort dropped paths into (field, spectra, query images, unknown) by name and kind."""
    field, spectra, queries, unknown = [], [], [], []
    for p in paths:
        name = p.name.lower()
        if p.is_dir() or parse_frame_name(p.name) is not None:
            field.append(p)
        elif name.startswith(("fpm-", "psfield-")):
            field.append(p)
        elif name.startswith(("spec-", "spplate-")) and ".fit" in name:
            spectra.append(p)
        elif is_query_file(p):
            queries.append(p)
        else:
            unknown.append(p)
    return field, spectra, queries, unknown


# ---------------------------------------------------------------------------------------------
# the window
# ---------------------------------------------------------------------------------------------


class MainWindow(QMainWindow):
    """SSALD desktop's main window.

    Parameters
    ----------
    settings : Settings, optional
        Where to read and keep the user's settings (default: a new :class:`Settings`).
    sample_field : path-like, optional
        The bundled sample field offered in the File menu.

    Signals
    -------
    field_loaded(str)
        A field is shown (its name).
    galaxies_loaded(int)
        The galaxy table and markers are filled (number of galaxies; -1 when detection is
        unavailable or failed).
    error_shown(str)
        An error message was shown to the user.
    """

    field_loaded = Signal(str)
    galaxies_loaded = Signal(int)
    error_shown = Signal(str)

    def __init__(
        self,
        settings: Settings | None = None,
        sample_field: str | Path | None = None,
        sample_index: str | Path | None = None,
        spectra_dirs: Sequence[str | Path] = (),
    ):
        super().__init__()
        self.settings = settings or Settings()
        self.sample_field = Path(sample_field) if sample_field is not None else None
        self.sample_index = Path(sample_index) if sample_index is not None else None
        self.default_training_data: str | None = None
        self.chosen_encoder: str | None = None
        self.spectra = LocalSpectra(spectra_dirs)
        # photutils detection runs in a helper process; start it now so that its imports
        # are warm by the time the first field is read.
        self.child = ChildProcess(warm=DETECTION_MODULES)
        self.child.start()
        # TensorFlow work (queries, encoding) runs in a second helper, started on first use.
        self.tf_child = ChildProcess(warm=TF_WARM_MODULES)
        self.spec = self.settings.norm_spec()
        self.tasks = TaskRunner(self)
        self.field: FieldData | None = None
        self.galaxies = GalaxyList.empty()
        self._field_sources: Any = None
        self._generation = 0
        self._pending_name: str | None = None
        self._selected: int | None = None
        self.last_error: str | None = None

        self.setObjectName("MainWindow")
        self.setAcceptDrops(True)
        self._build_central()
        self._build_docks()
        self._build_review()
        self._build_status_bar()
        self._build_menus()
        self._update_title()
        self._default_size()
        self._restore_window()

    # -- construction --------------------------------------------------------------------
    def _build_central(self) -> None:
        self.field_view = FieldView(self)
        self.field_view.plot.setTitle("No field open: File \u25b8 Open, or drop frame files here")
        self.field_view.marker_clicked.connect(self.select_galaxy)
        self.field_view.cursor_moved.connect(self._on_cursor_moved)
        self.field_view.cursor_left.connect(self._on_cursor_left)
        # The centre holds the sky field and, in a second tab, the candidate review (both
        # want the most room).
        self.central_tabs = QTabWidget()
        self.central_tabs.setDocumentMode(True)
        self.central_tabs.addTab(self.field_view, "Sky field")
        self.setCentralWidget(self.central_tabs)

    def _build_review(self) -> None:
        """The review panel (second central tab) on the searched index and the label store."""
        data_dir = default_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.labels_path = data_dir / "labels.sqlite"
        index = self.query_panel.index_folder
        self.review_panel = ReviewPanel(self.tasks, index, self.labels_path,
                                        spectrum_for=self.spectra.find,
                                        finetune_dir=data_dir / "finetune")
        self.review_panel.moreLikeThis.connect(self._more_like_object)
        # An encoder fine-tuned on the labels: offer to re-embed and search with it.
        self.review_panel.encoderFinetuned.connect(self.use_encoder)
        self.review_panel.objectActivated.connect(self._review_object_activated)
        self.review_panel.messageShown.connect(
            lambda text: self.statusBar().showMessage(text, 8000))
        scroll_rv = QScrollArea()  # small screens scroll the card rather than clip it
        scroll_rv.setWidgetResizable(True)
        scroll_rv.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll_rv.setWidget(self.review_panel)
        self.central_tabs.addTab(scroll_rv, "Review candidates")
        self.query_panel.searched.connect(self._search_done)

        self.training_panel = TrainingPanel(self.tasks, default_data=self.default_training_data)
        self.training_panel.encoderChosen.connect(self.use_encoder)
        self.training_dock = QDockWidget("Train the encoder", self)
        self.training_dock.setObjectName("TrainingDock")
        scroll_tr = QScrollArea()  # its form is tall: scroll rather than grow the window
        scroll_tr.setWidgetResizable(True)
        scroll_tr.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll_tr.setWidget(self.training_panel)
        self.training_dock.setWidget(scroll_tr)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.training_dock)
        self.tabifyDockWidget(self.spectrum_dock, self.training_dock)
        self.spectrum_dock.raise_()
        # The cutout panel needs ~430 px; the rest of the right column goes to the table.
        self.resizeDocks([self.cutout_dock, self.table_dock], [430, 520],
                         Qt.Orientation.Vertical)

    def _build_docks(self) -> None:
        self.cutout_panel = CutoutPanel(spec=self.spec)
        self.cutout_panel.spec_changed.connect(self._display_spec_changed)
        self.cutout_dock = QDockWidget("Selected object", self)
        self.cutout_dock.setObjectName("CutoutDock")
        self.cutout_dock.setWidget(self.cutout_panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.cutout_dock)

        self.table_model = GalaxyTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.table_model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(3, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setMinimumSectionSize(48)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection)
        self.table_dock = QDockWidget("Galaxies", self)
        self.table_dock.setObjectName("GalaxyDock")
        self.table_dock.setWidget(self.table)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.table_dock)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._table_menu)

        index = self.settings.search_index() or (
            str(self.sample_index) if self.sample_index is not None else "")
        self.query_panel = QueryPanel(self.tasks, index, k=self.settings.search_k(),
                                      child=self.tf_child)
        self.query_panel.error.connect(self.show_error)
        self.query_panel.result_activated.connect(self.show_hit)
        self.query_panel.index_changed.connect(self.settings.set_search_index)
        self.query_dock = QDockWidget("Query by image", self)
        self.query_dock.setObjectName("QueryDock")
        self.query_dock.setWidget(self.query_panel)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.query_dock)

        self.spectrum_view = SpectrumView()
        self.spectrum_view.loadFailed.connect(lambda msg: self.show_error("Spectrum", msg))
        self.spectrum_view.loaded.connect(self._spectrum_loaded)
        self.spectrum_dock = QDockWidget("Spectrum", self)
        self.spectrum_dock.setObjectName("SpectrumDock")
        # The spectrum's controls need ~740 px: narrower docks scroll rather than widen the
        # window past the screen.
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.spectrum_view)
        self.spectrum_dock.setWidget(scroll)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.spectrum_dock)

        self.cutout_panel.more_like_this.connect(self.more_like_selected)

        self.evidence_view = EvidenceView()
        self.evidence_dock = QDockWidget("Dual-AGN evidence", self)
        self.evidence_dock.setObjectName("EvidenceDock")
        scroll_ev = QScrollArea()
        scroll_ev.setWidgetResizable(True)
        scroll_ev.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll_ev.setWidget(self.evidence_view)
        self.evidence_dock.setWidget(scroll_ev)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.evidence_dock)
        self.tabifyDockWidget(self.table_dock, self.evidence_dock)
        self.table_dock.raise_()
        self.cutout_dock.setMinimumWidth(400)
        self.resizeDocks([self.cutout_dock, self.query_dock], [470, 340],
                         Qt.Orientation.Horizontal)
        self.resizeDocks([self.cutout_dock, self.table_dock], [330, 520], Qt.Orientation.Vertical)
        self.resizeDocks([self.spectrum_dock], [260], Qt.Orientation.Vertical)
        # The query panel runs the window's full height; the spectrum spans the rest.
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.cursor_label = QLabel()
        self.cursor_label.setMinimumWidth(470)
        bar.addPermanentWidget(self.cursor_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(180)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        bar.addPermanentWidget(self.progress_bar)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the background work (the field shown stays)")
        self.cancel_button.clicked.connect(self.cancel_tasks)
        self.cancel_button.hide()
        bar.addPermanentWidget(self.cancel_button)
        self.tasks.busy_changed.connect(self._on_busy_changed)
        self.tasks.progress.connect(self._on_progress)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_folder_action = QAction("Open field &folder\u2026", self)
        self.open_folder_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_folder_action.triggered.connect(self.open_folder_dialog)
        file_menu.addAction(self.open_folder_action)
        self.open_files_action = QAction("Open frame fi&les\u2026", self)
        self.open_files_action.setShortcut(QKeySequence("Ctrl+Shift+O"))
        self.open_files_action.triggered.connect(self.open_files_dialog)
        file_menu.addAction(self.open_files_action)
        self.open_sample_action = QAction("Open the &sample field", self)
        self.open_sample_action.triggered.connect(self.open_sample)
        self.open_sample_action.setEnabled(self.sample_field is not None)
        file_menu.addAction(self.open_sample_action)
        self.reopen_action = QAction("&Reopen the last field", self)
        self.reopen_action.triggered.connect(self.reopen_last_field)
        file_menu.addAction(self.reopen_action)
        file_menu.addSeparator()
        self.open_position_action = QAction("Open the SDSS field &at a position or name\u2026",
                                            self)
        self.open_position_action.setShortcut(QKeySequence("Ctrl+L"))
        self.open_position_action.triggered.connect(self.open_position_dialog)
        file_menu.addAction(self.open_position_action)
        self.fetch_spectrum_action = QAction("Fetch an SDSS spectrum\u2026", self)
        self.fetch_spectrum_action.triggered.connect(self.fetch_spectrum_dialog)
        file_menu.addAction(self.fetch_spectrum_action)
        self.open_spectrum_action = QAction("Open a s&pectrum\u2026", self)
        self.open_spectrum_action.triggered.connect(self.open_spectrum_dialog)
        file_menu.addAction(self.open_spectrum_action)
        self.query_action = QAction("&Query by image\u2026", self)
        self.query_action.setShortcut(QKeySequence("Ctrl+F"))
        self.query_action.triggered.connect(self.query_dialog)
        file_menu.addAction(self.query_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        view_menu = self.menuBar().addMenu("&View")
        zoom_action = QAction("&Whole field", self)
        zoom_action.setShortcut(QKeySequence("Ctrl+0"))
        zoom_action.triggered.connect(self.field_view.reset_zoom)
        view_menu.addAction(zoom_action)
        self.markers_action = QAction("Galaxy &markers", self)
        self.markers_action.setCheckable(True)
        self.markers_action.setChecked(True)
        self.markers_action.setShortcut(QKeySequence("M"))
        self.markers_action.toggled.connect(self.field_view.set_markers_visible)
        view_menu.addAction(self.markers_action)
        view_menu.addSeparator()
        view_menu.addAction(self.cutout_dock.toggleViewAction())
        view_menu.addAction(self.table_dock.toggleViewAction())
        view_menu.addAction(self.query_dock.toggleViewAction())
        view_menu.addAction(self.spectrum_dock.toggleViewAction())
        view_menu.addAction(self.evidence_dock.toggleViewAction())
        view_menu.addAction(self.training_dock.toggleViewAction())

        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About SSALD desktop", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def _default_size(self) -> None:
        """Most of the screen (up to 1600 x 1000), so the docks are not cramped."""
        screen = self.screen()
        if screen is None:
            self.resize(1440, 900)
            return
        area = screen.availableGeometry()
        self.resize(min(1600, int(area.width() * 0.95)), min(1000, int(area.height() * 0.92)))

    def _restore_window(self) -> None:
        geometry = self.settings.window_geometry()
        if geometry is not None and not self.restoreGeometry(geometry):
            log.warning("settings: saved window geometry not usable; using the default")
        state = self.settings.window_state()
        if state is not None and not self.restoreState(state):
            log.warning("settings: saved window state not usable; using the default")

    # -- opening fields ------------------------------------------------------------------
    def open_field(self, source: Source) -> Task:
        """Open a field folder or a list of frame files in the background.

        The field shown stays until the new one is ready; work for an earlier request is
        cancelled. Errors (an unreadable file, frames of different fields) are shown with
        :meth:`show_error` and leave the window as it was.
        """
        self.tasks.cancel_all(FIELD_TASKS)  # a search or a review batch may go on
        self._generation += 1
        generation = self._generation
        try:
            self._pending_name = describe_source(source)
        except (TypeError, ValueError):
            self._pending_name = str(source)
        self._update_title()
        self.statusBar().showMessage(f"Opening {self._pending_name}\u2026")
        return self.tasks.run(
            "open field",
            load_field,
            source,
            self.spec,
            on_result=lambda data: self._field_ready(data, generation),
            on_error=lambda exc: self._field_failed(exc, source, generation),
        )

    def _field_ready(self, data: FieldData, generation: int) -> None:
        if generation != self._generation:
            return
        self._pending_name = None
        self.field = data
        self.set_galaxies(GalaxyList.empty())
        wcs = data.frame_set.reference.wcs
        self.field_view.set_image(data.rgb, wcs)
        spec = self.spec
        self.field_view.plot.setTitle(
            f"{data.name} \u00b7 {','.join(spec.rgb)} \u2192 R,G,B Lupton (Q={spec.q:g}, "
            f"stretch={spec.stretch:g}) on the {data.frame_set.reference_band}-band pixel grid"
        )
        self._update_title()
        self.settings.set_last_field(data.source)
        self.statusBar().showMessage(
            f"{data.name}: bands {''.join(data.frame_set.bands)}, "
            f"{data.frame_set.shape[1]} \u00d7 {data.frame_set.shape[0]} px",
            8000,
        )
        self.field_loaded.emit(data.name)
        self._start_detection(data, generation)

    def _field_failed(self, exc: BaseException, source: Source, generation: int) -> None:
        if generation != self._generation:
            return
        self._pending_name = None
        self._update_title()
        what = describe_source(source) if source else "the field"
        self.show_error(f"Could not open {what}", self._describe_error(exc))

    def _start_detection(self, data: FieldData, generation: int) -> None:
        why = sources_unavailable()
        if why is not None:
            self.table_dock.setWindowTitle("Galaxies (detection unavailable)")
            self.statusBar().showMessage(f"Galaxy detection unavailable ({why})", 15000)
            log.warning("galaxy detection unavailable: %s", why)
            self.galaxies_loaded.emit(-1)
            return
        band = data.frame_set.reference_band
        self.table_dock.setWindowTitle("Galaxies (detecting\u2026)")
        self.tasks.run(
            "detect galaxies",
            detect_field_galaxies,
            data.frame_set,
            band,
            self.child,
            self.spectra,
            on_result=lambda table: self._galaxies_ready(table, generation),
            on_error=lambda exc: self._detection_failed(exc, generation),
        )

    def _galaxies_ready(self, table: Any, generation: int) -> None:
        if generation != self._generation or self.field is None:
            return
        try:
            galaxies = GalaxyList.from_table(table, self.field.frame_set.reference.wcs)
        except (ValueError, KeyError) as exc:
            self._detection_failed(exc, generation)
            return
        self.set_galaxies(galaxies)
        self._field_sources = table
        n_sources = len(table)
        self.statusBar().showMessage(
            f"{len(galaxies)} galaxies among {n_sources} sources "
            f"(offline detection in {galaxies.band})",
            15000,
        )
        self.galaxies_loaded.emit(len(galaxies))

    def _detection_failed(self, exc: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        self.table_dock.setWindowTitle("Galaxies (detection failed)")
        self.galaxies_loaded.emit(-1)
        self.show_error("Galaxy detection failed", self._describe_error(exc))

    @staticmethod
    def _describe_error(exc: BaseException) -> str:
        if isinstance(exc, SsaldError):
            return str(exc)
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("unexpected error:\n%s", detail)
        return f"{type(exc).__name__}: {exc}\n\n(This looks like a bug; the log has details.)"

    # -- galaxies and selection ----------------------------------------------------------
    def set_galaxies(self, galaxies: GalaxyList) -> None:
        """Show these galaxies in the table and as markers (clears the selection)."""
        self._selected = None
        self.galaxies = galaxies
        self.table.clearSelection()
        self.table_model.set_galaxies(galaxies)
        self.field_view.set_markers(galaxies.x, galaxies.y)
        self.cutout_panel.clear()
        self.table_dock.setWindowTitle(f"Galaxies ({len(galaxies)})")

    def proxy_row(self, index: int) -> int:
        """Row of galaxy ``index`` in the (sorted) table view."""
        return self.proxy.mapFromSource(self.table_model.index(index, 0)).row()

    @Slot(int)
    def select_galaxy(self, index: int) -> None:
        """Select galaxy ``index`` (position in :attr:`galaxies`) in the table and the image."""
        if not 0 <= index < len(self.galaxies):
            return
        row = self.proxy_row(index)
        selection = self.table.selectionModel()
        selection.select(
            self.proxy.index(row, 0),
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.table.scrollTo(self.proxy.index(row, 0), QAbstractItemView.ScrollHint.EnsureVisible)
        # selectionChanged does the rest (and nothing when the row was already selected).
        if self._selected != index:
            self._show_selected(index)

    def selected_galaxy(self) -> int | None:
        """Index in :attr:`galaxies` of the selected galaxy, or None."""
        return self._selected

    @Slot()
    def _on_table_selection(self, *args: object) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        index = self.proxy.mapToSource(rows[0]).row()
        if index != self._selected:
            self._show_selected(index)

    def _show_selected(self, index: int) -> None:
        self._selected = index
        self.field_view.select(index, centre=True)
        g = self.galaxies
        title = f"Galaxy {int(g.ids[index])}"
        details = []
        if np.isfinite(g.mag[index]):
            details.append(f"{g.band} = {g.mag[index]:.2f} mag")
        if np.isfinite(g.r50[index]):
            details.append(f"R50 = {g.r50[index]:.2f}\u2033")
        if np.isfinite(g.rpetro[index]):
            details.append(f"R_P = {g.rpetro[index]:.2f}\u2033")
        details.append(f"pixel ({g.x[index]:.1f}, {g.y[index]:.1f})")
        if self.field is None:
            return
        from astropy.coordinates import SkyCoord

        coord = SkyCoord(g.ra[index], g.dec[index], unit="deg")
        try:
            # ~20 ms with the engine's caches warm (filled in the loading task).
            cut = self.field.engine.cut(coord)
        except SsaldError as exc:
            self.cutout_panel.show_message(
                title,
                f"No cutout: {exc}<br>RA {format_ra(g.ra[index])} Dec {format_dec(g.dec[index])}",
            )
            return
        spec_path = self._show_spectrum_for(float(g.ra[index]), float(g.dec[index]))
        fibre = None
        if spec_path is not None:
            fibre = fibre_of(spec_path)
            details.append(f"spectrum {spec_path.name}")
        self.cutout_panel.show_cutout(cut, title, ", ".join(details), fibre=fibre)
        self._start_evidence(index, cut, spec_path)

    def _start_evidence(self, index: int, cut: Any, spectrum: Path | None) -> None:
        """Measure the selected galaxy's dual-AGN evidence in the background."""
        if self.field is None:
            return
        self._evidence_request = getattr(self, "_evidence_request", 0) + 1
        request = self._evidence_request
        g = self.galaxies
        self.evidence_view.clear(f"Measuring the evidence of galaxy {int(g.ids[index])}\u2026")

        def done(evidence: Any) -> None:
            if request == self._evidence_request:
                self.evidence_view.show_evidence(evidence, cut)

        def failed(exc: BaseException) -> None:
            if request == self._evidence_request:
                self.evidence_view.clear(f"No evidence: {self._describe_error(exc)}")

        self.tasks.run("evidence", object_evidence, self.field.frame_set, float(g.ra[index]),
                       float(g.dec[index]), spectrum, self.child, self._field_sources,
                       on_result=done, on_error=failed)

    # -- query, spectra and drops -------------------------------------------------------
    def open_paths(self, paths: Sequence[str | Path]) -> None:
        """Open dropped or given paths, each where it belongs.

        Frames (or a field folder) open a field, spec files the spectrum view, images
        (FITS/PNG/JPEG) become query examples; anything else is reported.
        """
        field, spectra, queries, unknown = classify_drop([Path(p) for p in paths])
        if unknown:
            names = ", ".join(str(p) for p in unknown[:3])
            self.show_error("Cannot open", f"{names}: not a field folder, frame, spectrum or "
                            "query image (FITS, PNG or JPEG)")
        if field:
            self.open_field(field[0] if len(field) == 1 else field)
        if spectra:
            self.spectrum_dock.show()
            self.spectrum_view.load_file(spectra[0])
        if queries:
            self.query_dock.show()
            self.query_dock.raise_()
            self.query_panel.add_files([str(p) for p in queries])

    def open_position(self, position: str) -> Task:
        """Open the SDSS field at a position or object name (online; cached fields offline)."""
        self.tasks.cancel_all(FIELD_TASKS)  # a search or a review batch may go on
        self._generation += 1
        generation = self._generation
        self._pending_name = position
        self._update_title()
        return self.tasks.run(
            "open field at position",
            load_field_at,
            position,
            self.spec,
            self.settings.cache_dir(),
            self.settings.sdss_timeout(),
            on_result=lambda data: self._field_ready(data, generation),
            on_error=lambda exc: self._field_failed(exc, position, generation),
        )

    @Slot()
    def open_position_dialog(self) -> None:
        """Ask for a position or name and open the SDSS field there."""
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(
            self, "Open the SDSS field at",
            "Position (degrees or sexagesimal, e.g. 174.1222 +21.5961 or 11:36:29.3 "
            "+21:35:46) or an object name (online):")
        if ok and text.strip():
            self.open_position(text.strip())

    def fetch_spectrum(self, text: str) -> Task:
        """Download a spectrum (plate-mjd-fiber, or a position/name) and show it."""
        self.spectrum_dock.show()
        self.spectrum_view.show_message(f"Fetching {text}\u2026")
        return self.tasks.run(
            "fetch spectrum", fetch_spectrum, text, self.settings.cache_dir(),
            self.settings.sdss_timeout(),
            on_result=lambda path: self.spectrum_view.load_file(path),
            on_error=lambda exc: (self.spectrum_view.show_message("No spectrum."),
                                  self.show_error("Could not fetch the spectrum",
                                                  self._describe_error(exc))),
        )

    @Slot()
    def fetch_spectrum_dialog(self) -> None:
        """Ask for plate-mjd-fiber or a position and fetch that SDSS spectrum."""
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(
            self, "Fetch an SDSS spectrum",
            "plate-mjd-fiber (e.g. 266-51602-3), or a position / object name:")
        if ok and text.strip():
            self.fetch_spectrum(text.strip())

    @Slot()
    def open_spectrum_dialog(self) -> None:
        """Ask for a spectrum file and show it."""
        path, _ = QFileDialog.getOpenFileName(self, "Open an SDSS spectrum", self._start_dir(),
                                              SPECTRUM_FILTER)
        if path:
            self.spectrum_dock.show()
            self.spectrum_view.load_file(path)

    @Slot()
    def query_dialog(self) -> None:
        """Ask for query images and search with them."""
        files, _ = QFileDialog.getOpenFileNames(self, "Query by image", self._start_dir(),
                                                QUERY_FILTER)
        if files:
            self.query_dock.show()
            self.query_panel.add_files(files)

    def _table_menu(self, pos: Any) -> None:
        from PySide6.QtWidgets import QMenu

        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        galaxy = self.proxy.mapToSource(index).row()
        self.select_galaxy(galaxy)
        menu = QMenu(self)
        menu.addAction("More like this", lambda: self.more_like_selected(False))
        menu.addAction("Less like this (add as negative)", lambda: self.more_like_selected(True))
        menu.exec(self.table.viewport().mapToGlobal(pos))

    @Slot()
    @Slot(bool)
    def more_like_selected(self, negative: bool = False) -> None:
        """Add the selected galaxy to the query's positives (or negatives) and search."""
        index = self._selected
        if index is None or self.field is None:
            self.show_error("More like this", "Select a galaxy first (click a marker or a row).")
            return
        g = self.galaxies
        cut = self.cutout_panel.cutout
        thumb = np.ascontiguousarray(cut.rgb()[::-1]) if cut is not None else None
        self.query_dock.show()
        self.query_dock.raise_()
        if not negative:
            self.query_panel.positives.clear_examples()
            self.query_panel.negatives.clear_examples()
        self.query_panel.add_position(
            float(g.ra[index]), float(g.dec[index]), self.field.frame_set,
            f"{self.field.name} #{int(g.ids[index])}", thumb, negative=negative)

    @Slot(object)
    def _spectrum_loaded(self, spectrum: Any) -> None:
        """A spectrum is shown: its redshift gives the cutout's scale bar kpc."""
        cut = self.cutout_panel.cutout
        if cut is None or spectrum.ra is None or spectrum.z is None:
            return
        cosd = np.cos(np.radians(cut.dec))
        sep = 3600.0 * np.hypot((spectrum.ra - cut.ra) * cosd, spectrum.dec - cut.dec)
        if sep < 3.0 and spectrum.z > 0:
            self.cutout_panel.set_redshift(float(spectrum.z))

    @Slot(object)
    def _display_spec_changed(self, spec: NormSpec) -> None:
        """The cutout panel's NormSpec changed: keep it, and re-cut when the size changed."""
        resized = spec.output_size != self.spec.output_size or spec.size != self.spec.size
        self.spec = spec
        self.settings.set_norm_spec(spec)
        if not resized or self.field is None:
            return
        field = self.field

        def new_engine() -> CutoutEngine:
            engine = CutoutEngine(field.frame_set, spec)
            engine.cut(field.frame_set.centre())  # fill the caches here, not in the GUI
            return engine

        def ready(engine: CutoutEngine) -> None:
            if self.field is field and self.spec == spec:
                field.engine = engine
                if self._selected is not None:
                    self._show_selected(self._selected)

        self.tasks.run("cutout size", new_engine, on_result=ready,
                       on_error=lambda exc: self.show_error("Cutout", self._describe_error(exc)))

    @Slot(str)
    def use_encoder(self, path: str, ask: bool = True) -> Task | None:
        """Switch the search to a trained encoder: re-embed the current index's images with it.

        The similarity space is one encoder's: the images of the index searched now (image
        files or the miner's shards) are encoded again with the new encoder into a new store
        under the user data folder, indexed, and searched from then on. With ``ask`` the user
        confirms first.
        """
        from PySide6.QtWidgets import QMessageBox

        self.chosen_encoder = path
        index = self.query_panel.index_folder
        if ask:
            answer = QMessageBox.question(
                self, "Use this encoder",
                f"<p>Search with the encoder<br><code>{path}</code>?</p><p>The images of the "
                f"current index ({Path(index).name}) will be encoded again with it and indexed "
                "in the background; the query panel then searches the new index.</p>")
            if answer != QMessageBox.StandardButton.Yes:
                return None
        out = default_data_dir() / "indexes" / f"{Path(path).parent.name}-{Path(path).stem}"
        return self.tasks.run(
            "re-embed", reembed_index, index, path, out, self.tf_child,
            on_result=self._reembedded,
            on_error=lambda exc: self.show_error("Could not re-embed with the new encoder",
                                                 self._describe_error(exc)))

    def _reembedded(self, folder: str) -> None:
        self.query_panel.set_index(folder)
        self.review_panel.set_store(folder)  # one similarity space for search and review
        self.statusBar().showMessage(f"The query panel and the review now use {folder}", 15000)

    @Slot(str)
    def _more_like_object(self, object_id: str) -> None:
        self.query_dock.show()
        self.query_dock.raise_()
        self.query_panel.more_like_object(object_id)

    @Slot(str, float, float)
    def _review_object_activated(self, object_id: str, ra: float, dec: float) -> None:
        from types import SimpleNamespace

        self.show_hit(SimpleNamespace(id=object_id, ra=ra, dec=dec, source="review"))

    @Slot(int)
    def _search_done(self, n: int) -> None:
        """A search finished: its indexed positives seed the review queue (cold start)."""
        if n <= 0:
            return
        result = self.query_panel.last_result
        if self.review_panel.store_folder != self.query_panel.index_folder:
            return  # another similarity space than the review pool's
        ids = [q.name for q in result.positives if q.kind == "object"]
        images = [q.vector for q in result.positives if q.kind != "object"]
        self.review_panel.query_vectors = np.stack(images) if images else None
        self.review_panel.set_queries(ids)  # asks for a batch with both

    @Slot(object)
    def show_hit(self, hit: Any) -> None:
        """Show a search result: select it when it is a galaxy of the open field."""
        if self.field is not None and np.isfinite(hit.ra) and len(self.galaxies):
            g = self.galaxies
            cosd = np.cos(np.radians(hit.dec))
            sep = 3600.0 * np.hypot((g.ra - hit.ra) * cosd, g.dec - hit.dec)
            best = int(np.argmin(sep))
            if sep[best] < 2.0:
                self.select_galaxy(best)
                return
        where = (f"RA {format_ra(hit.ra)} Dec {format_dec(hit.dec)}" if np.isfinite(hit.ra)
                 else "no sky position recorded")
        self.statusBar().showMessage(
            f"Result {hit.id} ({where}) is not in the open field; source {hit.source}", 15000)

    def _show_spectrum_for(self, ra: float, dec: float) -> Path | None:
        path = self.spectra.find(ra, dec)
        if path is not None:
            if self.spectrum_view.property("ssald_path") != str(path):
                self.spectrum_view.setProperty("ssald_path", str(path))
                self.spectrum_view.load_file(path)
        else:
            self.spectrum_view.setProperty("ssald_path", "")
            self.spectrum_view.show_message(
                "No spectrum of this object in the local spectra (File \u25b8 Open a spectrum, "
                "or drop an SDSS spec file here).")
        return path

    # -- status bar ----------------------------------------------------------------------
    @Slot(float, float)
    def _on_cursor_moved(self, x: float, y: float) -> None:
        if self.field is None:
            return
        ref = self.field.frame_set.reference
        ra, dec = ref.wcs.all_pix2world([[x, y]], 0)[0]
        col, row = int(round(x)), int(round(y))
        value = ""
        if 0 <= row < ref.shape[0] and 0 <= col < ref.shape[1]:
            v = float(ref.data[row, col])
            value = f"   {ref.band} {v:.3f} nmgy" if np.isfinite(v) else f"   {ref.band} masked"
        self.cursor_label.setText(
            f"RA {format_ra(ra)}  Dec {format_dec(dec)}  ({ra:.5f}, {dec:+.5f})"
            f"   x {x:.0f} y {y:.0f}{value}"
        )

    @Slot()
    def _on_cursor_left(self) -> None:
        self.cursor_label.setText("")

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if busy:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1)

    @Slot(object)
    def _on_progress(self, report: object) -> None:
        name, step, total, message = report  # type: ignore[misc]
        if step <= 0 or total <= 0:
            self.progress_bar.setRange(0, 0)  # busy indicator until the first stage ends
        else:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(step)
        self.statusBar().showMessage(str(message))

    @Slot()
    def cancel_tasks(self) -> None:
        """Cancel the background work; the field shown stays."""
        if not self.tasks.is_busy():
            return
        self.tasks.cancel_all()
        self._generation += 1
        self._pending_name = None
        self._update_title()
        if self.field is not None and self.table_dock.windowTitle().endswith("\u2026)"):
            self.table_dock.setWindowTitle("Galaxies (detection cancelled)")
        self.statusBar().showMessage("Cancelled", 5000)

    # -- dialogs -------------------------------------------------------------------------
    def show_error(self, title: str, message: str) -> None:
        """Tell the user about an error without blocking (a window-modal message box)."""
        self.last_error = f"{title}: {message}"
        log.warning("%s", self.last_error)
        self.statusBar().showMessage(title, 10000)
        box = QMessageBox(
            QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Ok, self
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self.error_shown.emit(message)

    def _start_dir(self) -> str:
        last = self.settings.last_field()
        if last:
            p = Path(last[0])
            return str(p if p.is_dir() else p.parent)
        return str(Path.home())

    @Slot()
    def open_folder_dialog(self) -> None:
        """Ask for a field folder and open it."""
        folder = QFileDialog.getExistingDirectory(self, "Open a field folder", self._start_dir())
        if folder:
            self.open_field(folder)

    @Slot()
    def open_files_dialog(self) -> None:
        """Ask for frame files (one field) and open them."""
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open the frame files of one field", self._start_dir(), FRAME_FILTER
        )
        if files:
            self.open_field(files)

    @Slot()
    def open_sample(self) -> None:
        """Open the bundled sample field."""
        if self.sample_field is not None:
            self.open_field(self.sample_field)

    @Slot()
    def reopen_last_field(self) -> None:
        """Open the field opened last (from the settings)."""
        last = self.settings.last_field()
        if not last:
            self.show_error("No field to reopen", "No field has been opened yet.")
            return
        self.open_field(last)

    @Slot()
    def show_about(self) -> None:
        """The About box: version, settings file, NormSpec."""
        text = (
            f"<b>{APP_NAME}</b> {__version__}<br>Search SDSS imaging for dual AGN.<br><br>"
            f"Settings: {self.settings.file_name}<br>"
            f"Cache: {self.settings.cache_dir()}<br>"
            f"NormSpec {self.spec.digest()}: <code>{self.spec.to_json()}</code>"
        )
        if self.settings.problem:
            text += f"<br><br>Note: {self.settings.problem}"
        box = QMessageBox(
            QMessageBox.Icon.Information,
            f"About {APP_NAME}",
            text,
            QMessageBox.StandardButton.Ok,
            self,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    # -- drag and drop -------------------------------------------------------------------
    @staticmethod
    def _dropped_paths(event: QDragEnterEvent | QDropEvent) -> list[Path]:
        mime = event.mimeData()
        if not mime.hasUrls():
            return []
        return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: D102
        if self._dropped_paths(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: D102
        event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: D102
        paths = self._dropped_paths(event)
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_paths(paths)

    # -- window --------------------------------------------------------------------------
    def field_name(self) -> str | None:
        """Name of the field shown."""
        return None if self.field is None else self.field.name

    def _update_title(self) -> None:
        if self._pending_name is not None:
            shown = f" ({self.field.name} shown)" if self.field is not None else ""
            self.setWindowTitle(f"{APP_NAME} - {self._pending_name} (opening\u2026){shown}")
        elif self.field is not None:
            self.setWindowTitle(f"{APP_NAME} - {self.field.name}")
        else:
            self.setWindowTitle(APP_NAME)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: D102
        self.tasks.cancel_all()
        self.child.close()
        self.tf_child.close()
        self.review_panel.shutdown()
        self.training_panel.shutdown()  # stops polling; training runs go on
        self.settings.set_window(self.saveGeometry(), self.saveState())
        self.settings.sync()
        super().closeEvent(event)
