"""The review panel: the active-learning queue as large cards, keyboard labelling and a grid.

The astronomer reviews the candidates that :class:`ssald_desktop.core.active.ActiveLearner`
proposes over an embedding store, one large card at a time (the RGB cutout, pixel-exact; the
five bands with an asinh stretch, Lupton, Gunn & Szalay 1999; the nuclei found in the r band
marked on the cutout with their separation; the spectrum with its [OIII] 5007 fit, one or two
Gaussian components, and the BPT point on a small BPT diagram; known dual AGN within 5 arcsec;
the score, the sampler, its reason and the model version that proposed it), and labels them
from the keyboard:

=============  ================================================================
1 / 2 / 3      "DAGN candidate" / "not DAGN" / "unsure" (the card advances)
Shift+4        "confirmed DAGN" (deliberately not a single key; also a button)
Backspace      undo the last label (an undo event in the label store)
Left / Right   previous / next candidate; Space: next
G              card / grid mode (grid: multi-select, right-click marks)
=============  ================================================================

The queue can be ordered (as proposed; two nuclei first; by the [OIII] double-peak ΔBIC; by
how AGN-like the BPT point is) and filtered (two nuclei, AGN-like, double-peaked [OIII], known
system, with a spectrum), with the count of each filter shown. A filter only hides candidates
from the card's navigation and the grid: their labels stay in the label store and count in the
progress. The evidence a batch is ordered by is measured in the worker that proposes it.

Every label goes through :meth:`ssald_desktop.core.labels.LabelStore.add`, which returns only
after the commit is durable (WAL, ``synchronous=FULL``); the panel says "saved" only then. The
writes run one after another in a worker (so a slow disk or another process holding the
store's lock never stalls the GUI), in the order they were asked for; an error (read-only
store, full disk) is shown and the label is not shown as saved.

With no query image and no positive label the queue is an *exploration* batch (k-center greedy
over the pool, Sener & Savarese 2018), and the panel says so. After ``finetune_every`` new
labels (with both classes present) the classifier head is fine-tuned in a background process
(:func:`ssald_desktop.core.active.launch_finetune`, polled every second from a timer); its
version is shown and carried by the candidates proposed after it.

Pool building, proposing, card contents (images, bands, cross-match, spectrum lookup), label
writes, the fine-tune launch and SAMP all run in worker tasks (:mod:`ssald_desktop.ui.workers`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QFont, QKeySequence, QPainter, QPen, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.ui.cutout_panel import array_to_pixmap
from ssald_desktop.ui.evidence_view import (
    BptPlot,
    OiiiPlot,
    bpt_text,
    chosen_bpt,
    oiii_text,
)
from ssald_desktop.ui.galaxy_table import format_dec, format_ra
from ssald_desktop.ui.spectrum_view import SpectrumView
from ssald_desktop.ui.thumbnail_grid import (
    NEGATIVE,
    POSITIVE,
    ThumbnailGrid,
    ThumbnailItem,
    rgb_to_qimage,
)
from ssald_desktop.ui.workers import Task, TaskRunner

__all__ = [
    "CONFIRMED",
    "FILTERS",
    "KEY_LABELS",
    "ORDERS",
    "Batch",
    "CardContent",
    "QueueItem",
    "ReviewError",
    "ReviewPanel",
    "batch_evidence",
    "card_content",
    "grid_mark",
    "propose_batch",
    "read_bands",
    "spectral_evidence",
]

#: Labels given by the keys 1, 2 and 3.
KEY_LABELS: dict[str, str] = {"1": "DAGN candidate", "2": "not DAGN", "3": "unsure"}
#: Given by Shift+4 or its button only.
CONFIRMED = "confirmed DAGN"
#: Labels that count as positive (the rare class) and that are left out of training.
POSITIVE_LABELS = ("DAGN candidate", "confirmed DAGN")
IGNORED_LABELS = ("unsure",)
#: Cross-match radius of the card (arcsec).
MATCH_RADIUS_ARCSEC = 5.0
#: Target display sizes (pixels); the cutouts are enlarged by an integer factor.
RGB_TARGET = 256
BAND_TARGET = 128
DEFAULT_BATCH = 20
#: Height of the card's [OIII] and BPT plots (pixels).
EVIDENCE_HEIGHT = 210
STATE_FILE = "review_state.json"
POLL_MS = 1000

LABEL_COLOURS = {"DAGN candidate": "#1f8a3b", "confirmed DAGN": "#0b5d1e",
                 "not DAGN": "#b3261e", "unsure": "#8a6d00"}
#: BPT classes counted as AGN-like by the filter (composites included: Kauffmann et al. 2003).
AGN_LIKE = ("Seyfert", "LINER", "AGN", "composite")
#: Rank of a BPT class for "most AGN-like first": Seyferts are unambiguous AGN; an AGN that
#: could not be split comes next; LINERs may be ionised by old stars (Cid Fernandes et al.
#: 2011); composites lie between the Kauffmann 2003 and Kewley 2001 lines.
BPT_RANK = {"Seyfert": 4, "AGN": 3, "LINER": 2, "composite": 1, "star-forming": 0}
#: Queue orders: (key, text, tooltip).
ORDERS: tuple[tuple[str, str, str], ...] = (
    ("proposed", "as proposed", "The learner's ranking"),
    ("nuclei", "two nuclei first", "Candidates whose r band shows two nuclei first, by "
     "confidence; then the rest as proposed"),
    ("oiii", "[O III] double peak first (ΔBIC)",
     "By the [OIII] 5007 single- vs double-Gaussian ΔBIC (BIC_1 - BIC_2), largest first: "
     "the more the second component is needed, the higher; candidates without a measured "
     "[OIII] last, as proposed"),
    ("bpt", "most AGN-like first (BPT)",
     "By the BPT class (Seyfert, AGN, LINER, composite, star-forming), then farther up and "
     "right on the diagram; candidates without a BPT point last, as proposed"),
)
#: Queue filters: (key, text, tooltip).
FILTERS: tuple[tuple[str, str, str], ...] = (
    ("all", "all", "Every candidate of the batch"),
    ("pair", "two nuclei", "Two nuclei found in the r band"),
    ("agn", "AGN-like (Seyfert/LINER/composite)",
     "BPT class Seyfert, LINER, AGN or composite (line fit, else SDSS SPZLINE)"),
    ("double", "double-peaked [O III]", "[OIII] 5007 double-peaked (two resolved Gaussian "
     "components, ΔBIC > 10)"),
    ("known", "known system", "A known dual AGN or AGN pair within 5″ (Big MAC DR1, "
     "Liu+2011, GOTHIC)"),
    ("spectrum", "with a spectrum", "A local SDSS spectrum within 2″"),
)


class ReviewError(SsaldError):
    """Bad input to the review panel (unknown query ids, an unreadable state file...)."""


@dataclass
class QueueItem:
    """One candidate of the review queue.

    ``source`` is where it came from for the label store (``"sampler"`` or ``"query"``);
    ``image`` is its RGB picture (top-down ``uint8``) for the grid, or None.
    """

    object_id: str
    ra: float
    dec: float
    score: float
    sampler: str
    reason: str
    model_version: str
    source: str = "sampler"
    round: int = 0
    probability: float = math.nan
    image: np.ndarray | None = field(default=None, repr=False)
    #: Two-nuclei test of the r band (core.nuclei): "pair", "single", ... or "" if not run.
    nuclei: str = ""
    #: Confidence of a pair (0..1), NaN when not a pair; separation in arcsec of a pair.
    pair_confidence: float = math.nan
    pair_separation: float = math.nan
    #: Position in the learner's proposed order.
    rank: int = 0
    #: Spectral evidence (core.lines): "" not yet measured, "none" no spectrum, "measured",
    #: or "failed: <reason>".
    evidence: str = ""
    spectrum_name: str = ""
    #: [OIII] 5007 test: status ("single", "two components", "double-peaked",
    #: "not measurable"), BIC_1 - BIC_2 and the velocity split (km/s); NaN when not measured.
    oiii_status: str = ""
    oiii_dbic: float = math.nan
    oiii_split: float = math.nan
    #: BPT class ("" when not classified) and its point (log [NII]/Ha, log [OIII]/Hb).
    bpt_class: str = ""
    bpt_x: float = math.nan
    bpt_y: float = math.nan
    #: A known dual AGN within the match radius (None: not checked).
    known: bool | None = None

    def set_spectral(self, path: Path | None, spec: Any, failure: str = "") -> None:
        """Record a :class:`~ssald_desktop.core.lines.SpectralEvidence` (None: no spectrum)."""
        if path is None:
            self.evidence, self.spectrum_name = "none", ""
            return
        self.spectrum_name = Path(path).name
        if spec is None:
            self.evidence = f"failed: {failure}" if failure else "failed"
            return
        self.evidence = "measured"
        test = spec.oiii
        self.oiii_status = test.status if test is not None else "not measurable"
        dbic = None if test is None else test.delta_bic
        split = None if test is None else test.velocity_split_kms
        self.oiii_dbic = math.nan if dbic is None else float(dbic)
        self.oiii_split = math.nan if split is None else float(split)
        bpt = chosen_bpt(spec)
        if bpt is not None and bpt.status == "classified":
            self.bpt_class = str(bpt.bpt_class or "")
            if bpt.log_nii_ha is not None and bpt.log_oiii_hb is not None:
                self.bpt_x, self.bpt_y = float(bpt.log_nii_ha), float(bpt.log_oiii_hb)

    def evidence_summary(self) -> str:
        """A few words on the spectral evidence, for the grid and tooltips."""
        if not self.evidence:
            return "spectrum: not yet measured"
        if self.evidence == "none":
            return "no spectrum"
        if self.evidence != "measured":
            return f"spectrum {self.spectrum_name}: {self.evidence}"
        parts = [self.bpt_class or "BPT not measurable"]
        if self.oiii_status == "double-peaked":
            parts.append("[OIII] double")
        elif math.isfinite(self.oiii_dbic):
            parts.append(f"[OIII] ΔBIC {self.oiii_dbic:.0f}")
        return ", ".join(parts)

    def to_candidate(self, label: str | None = None) -> dict[str, Any]:
        """A mapping for :func:`ssald_desktop.core.labels.candidates_table` (SAMP, export)."""
        return {"object_id": self.object_id, "ra": self.ra, "dec": self.dec,
                "score": self.score, "label": label, "source": self.source,
                "encoder_id": self.model_version, "round": self.round, "reason": self.reason,
                "sampler": self.sampler}


@dataclass
class Batch:
    """A proposed batch: the items, whether it is exploration, and a note for the screen."""

    items: list[QueueItem]
    exploring: bool
    note: str
    seconds: float = 0.0


@dataclass
class CardContent:
    """What a card shows beyond its queue item (made in a worker by :func:`card_content`)."""

    object_id: str
    ra: float
    dec: float
    rgb: np.ndarray | None = field(default=None, repr=False)  # top-down uint8
    bands: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # FITS order, 0..1
    band_note: str = ""
    matches: list[str] = field(default_factory=list)
    match_note: str = ""
    spectrum: Path | None = None
    spectrum_note: str = ""
    history: list[Any] = field(default_factory=list, repr=False)
    nuclei: Any = field(default=None, repr=False)  # core.nuclei.NucleiResult (band-cube grid)
    nuclei_note: str = ""
    #: core.lines.SpectralEvidence of the spectrum (None: no spectrum, or ``lines_note``).
    lines: Any = field(default=None, repr=False)
    lines_note: str = ""
    #: Known systems matched (core.catalogs.Match), for their SDSS spectrum identifiers.
    match_objects: list[Any] = field(default_factory=list, repr=False)
    #: Whether the cross-match and the spectrum lookup ran (a failure is not an answer).
    match_ok: bool = False
    spectrum_ok: bool = False


@lru_cache(maxsize=512)
def _spectral_cached(path: str, mtime_ns: int, size: int) -> Any:
    from ssald_desktop.core.evidence import gather_evidence

    return gather_evidence(spectrum=path).spectrum


def spectral_evidence(path: str | Path) -> Any:
    """The line evidence of a spectrum file (call it in a worker; ~0.5-2 s, then cached).

    :func:`ssald_desktop.core.evidence.gather_evidence` on the spectrum alone, i.e.
    :func:`ssald_desktop.core.lines.analyze_spectrum`: the [OIII] 5007 single- vs
    double-Gaussian test (BIC, Schwarz 1978) and the BPT class (Kauffmann et al. 2003; Kewley
    et al. 2001, 2006). Results are kept per file (path, modification time, size), so the
    batch and the card measure a spectrum once.

    Raises
    ------
    SsaldError
        An unreadable spectrum file (the message names it).
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ReviewError(f"{p}: cannot read the spectrum ({exc.strerror or exc})") from exc
    return _spectral_cached(str(p), st.st_mtime_ns, st.st_size)


#: Typical SDSS r-band seeing when the shard does not record the field's PSF (arcsec).
TYPICAL_SEEING_ARCSEC = 1.4


def card_nuclei(store: Any, object_id: str, pixel_scale: float | None,
                z: float | None = None) -> tuple[Any, str]:
    """Two-nuclei test on a stored object's r band (HDF5 shards only): ``(result, note)``.

    :func:`ssald_desktop.core.nuclei.find_nuclei` on the cutout's r-band image in nanomaggies
    (masked pixels excluded), with the typical SDSS seeing as the PSF (the shards keep no
    psField) and the cutout's pixel scale; kpc when ``z`` is known.
    """
    from ssald_desktop.core.nuclei import find_nuclei

    row = store.row_of(object_id)
    obj = store.objects([row])[0] if row is not None else None
    if obj is None or not obj.get("source"):
        return None, "nuclei: no source image"
    path = store.source_path(str(obj["source"]))
    if path.suffix.lower() not in (".h5", ".hdf5"):
        return None, "nuclei: not measured on a colour picture without flux calibration"
    import h5py

    try:
        with h5py.File(path, "r") as h:
            names = str(h.attrs.get("bands", "ugriz"))
            if "images" not in h or "r" not in names:
                return None, f"nuclei: {path.name} holds no r-band image"
            k = names.index("r")
            image = np.asarray(h["images"][int(obj["item"])][k], np.float64)
            mask = (np.asarray(h["masks"][int(obj["item"])][k], bool) if "masks" in h
                    else None)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return None, f"nuclei: cannot read {path} ({exc})"
    scale = pixel_scale or 0.396
    try:
        result = find_nuclei(image, psf_fwhm_px=TYPICAL_SEEING_ARCSEC / scale,
                             pixel_scale=scale, z=z, mask=mask,
                             psf_source=f"typical SDSS seeing {TYPICAL_SEEING_ARCSEC}\u2033")
    except SsaldError as exc:
        return None, f"nuclei: not measurable: {exc}"
    return result, ""


def _nuclei_line(content: CardContent) -> str:
    """One line for the card: the two-nuclei verdict with separation, ratio and confidence."""
    r = content.nuclei
    if r is None:
        return f"<b>nuclei</b> <span style='color:#666'>{_esc(content.nuclei_note)}</span>"
    if r.status == "pair":
        sep = (f"{r.separation_arcsec:.2f}\u2033" if r.separation_arcsec is not None
               else f"{r.separation_px:.1f} px")
        kpc = f" ({r.separation_kpc:.1f} kpc)" if r.separation_kpc is not None else ""
        ratio = f", flux ratio {r.flux_ratio:.2f}" if r.flux_ratio is not None else ""
        conf = getattr(r, "confidence", None)
        conf_text = f", confidence {conf:.2f}" if conf is not None else ""
        return (f"<b>nuclei</b> <span style='color:#b03060'><b>two</b></span>, {sep}{kpc}"
                f"{ratio}{conf_text}")
    return f"<b>nuclei</b> {_esc(r.status)} <span style='color:#666'>({_esc(r.message)})</span>"


def _spectral_lines(content: CardContent) -> list[str]:
    """Card lines on the spectrum: the file, the [OIII] 5007 test and the BPT class."""
    if content.spectrum is None:
        note = content.spectrum_note or "No spectrum."
        return [f"<b>spectrum</b> <span style='color:#666'>{_esc(note)}</span>",
                f"<b>[O III] 5007, BPT</b> <span style='color:#666'>"
                f"{_esc(content.lines_note or 'not measurable: no spectrum')}</span>"]
    spec = content.lines
    name = Path(content.spectrum).name
    if spec is None:
        return [f"<b>spectrum</b> {_esc(name)}",
                f"<b>[O III] 5007, BPT</b> <span style='color:#666'>"
                f"{_esc(content.lines_note)}</span>"]
    z = f", z = {spec.z:.4f}" if spec.z is not None else ""
    cls = f", SDSS class {_esc(spec.spec_class)}" if spec.spec_class else ""
    sub = f" {_esc(spec.subclass)}" if spec.subclass and spec.subclass.strip() else ""
    return [f"<b>spectrum</b> {_esc(name)}{z}{cls}{sub}", oiii_text(spec), bpt_text(spec)]


def _store_pixel_scale(store: Any) -> float | None:
    """Arcsec per pixel of a store's cutouts (from its NormSpec), None for plain pictures."""
    spec = getattr(store, "normspec", None)
    if not spec:
        return None
    if spec.get("size_unit", "pixel") != "pixel":
        return None  # sized in Petrosian radii: no fixed scale
    return (float(spec.get("pixel_scale", 0.396)) * float(spec.get("size", 64))
            / float(spec.get("output_size", spec.get("size", 64))))


@dataclass
class _Setup:
    pool: Any
    positions: dict[str, tuple[float, float]]
    labels: dict[str, str]
    counts: dict[str, int]
    last_event: int
    round_no: int
    state: dict[str, Any]
    new_since: int
    pixel_scale: float | None = None  # arcsec per cutout pixel (None: a picture without one)


@dataclass
class _Outcome:
    """A durable write: what was written and the store's state right after it."""

    kind: str  # "label" or "undo"
    object_ids: list[str]
    label: str | None
    event_ids: list[int]
    labels: dict[str, str]
    counts: dict[str, int]
    last_event: int
    new_since: int


# -- headless helpers (run in worker threads) -------------------------------------------------
def grid_mark(label: str | None) -> str | None:
    """The grid's mark for a store label: positives green, "not DAGN" red, others as text."""
    if label is None:
        return None
    if label in POSITIVE_LABELS:
        return POSITIVE
    if label == "not DAGN":
        return NEGATIVE
    return label


def read_bands(store: Any, object_id: str) -> tuple[dict[str, np.ndarray], str]:
    """The five bands of a stored object as asinh views (0..1, FITS row order).

    Only objects of the miner's HDF5 shards have bands (their ``images`` dataset, in
    nanomaggies, with ``masks``); each band is stretched with
    :func:`ssald_desktop.core.cutouts.asinh_view` (Lupton, Gunn & Szalay 1999), as in the
    cutout panel. Returns ``({}, reason)`` when there are none.
    """
    from ssald_desktop.core.cutouts import asinh_view

    row = store.row_of(object_id)
    if row is None:
        return {}, f"object {object_id} is not in the embedding store"
    obj = store.objects([row])[0]
    if not obj.get("source"):
        return {}, "no source file recorded"
    path = store.source_path(str(obj["source"]))
    if path.suffix.lower() not in (".h5", ".hdf5"):
        return {}, f"bands: none ({path.suffix or 'no suffix'} picture, colour only)"
    import h5py

    try:
        with h5py.File(path, "r") as h:
            if "images" not in h:
                return {}, f"{path.name} holds no band images"
            cube = np.asarray(h["images"][int(obj["item"])], np.float32)
            masks = np.asarray(h["masks"][int(obj["item"])], bool) if "masks" in h else None
            names = str(h.attrs.get("bands", "ugriz"))
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return {}, f"{path}: cannot read the bands ({exc})"
    if len(names) != len(cube):
        names = "".join(str(i) for i in range(len(cube)))
    out = {}
    for i, band in enumerate(names):
        out[band] = asinh_view(cube[i], None if masks is None else masks[i])
    return out, ""


def card_content(store: Any, object_id: str, ra: float | None = None, dec: float | None = None,
                 *, spectrum_for: Callable[[float, float], Path | None] | None = None,
                 labels: Any = None, radius_arcsec: float = MATCH_RADIUS_ARCSEC
                 ) -> CardContent:
    """Everything a card shows about one object (call it in a worker).

    Parameters
    ----------
    store : EmbeddingStore or path-like
        The embedding store (a path is opened and closed here).
    object_id : str
        The object.
    ra, dec : float, optional
        Its position (default: the store's); used for the cross-match and the spectrum.
    spectrum_for : callable, optional
        ``(ra, dec) -> Path | None``: the object's spectrum file.
    labels : LabelStore, optional
        For the object's label history.
    radius_arcsec : float
        Cross-match radius.
    """
    from ssald_desktop.core.embeddings import EmbeddingStore

    own = not isinstance(store, EmbeddingStore)
    st = EmbeddingStore(store, create=False) if own else store
    try:
        row = st.row_of(object_id)
        if row is None:
            raise ReviewError(f"object {object_id!r} is not in the embedding store {st.path}")
        obj = st.objects([row])[0]
        ra = float(obj["ra"]) if ra is None else float(ra)
        dec = float(obj["dec"]) if dec is None else float(dec)
        out = CardContent(object_id, ra, dec)
        out.rgb = st.object_images([object_id])[0]
        out.bands, out.band_note = read_bands(st, object_id)
    finally:
        if own:
            st.close()
    if math.isfinite(ra) and math.isfinite(dec):
        try:
            from ssald_desktop.core.catalogs import crossmatch

            out.match_objects = list(crossmatch(ra, dec, radius_arcsec))
            out.matches = [m.summary() for m in out.match_objects]
            out.match_ok = True
            if not out.matches:
                out.match_note = f"no known dual AGN within {radius_arcsec:g}\u2033"
        except SsaldError as exc:
            out.match_note = f"cross-match unavailable: {exc}"
        if spectrum_for is None:
            out.spectrum_note = "No spectrum source is configured."
        else:
            try:
                out.spectrum = spectrum_for(ra, dec)
            except SsaldError as exc:
                out.spectrum_note = f"Spectrum lookup failed: {exc}"
            else:
                out.spectrum_ok = True
                if out.spectrum is None:
                    out.spectrum_note = (f"No spectrum of this object in the local spectra "
                                         f"(RA {ra:.5f}, Dec {dec:+.5f}).")
    else:
        out.match_note = "no position: no cross-match"
        out.spectrum_note = "No position, so no spectrum lookup."
    if out.spectrum is not None:
        try:
            out.lines = spectral_evidence(out.spectrum)
        except SsaldError as exc:
            out.lines_note = f"not measurable: {exc}"
    else:
        out.lines_note = "not measurable: no spectrum"
    from ssald_desktop.core.spectra import spectrum_redshift

    z = spectrum_redshift(out.spectrum) if out.spectrum is not None else None
    st = EmbeddingStore(store, create=False) if own else store
    try:
        out.nuclei, out.nuclei_note = card_nuclei(st, object_id, _store_pixel_scale(st), z)
    finally:
        if own:
            st.close()
    if labels is not None:
        try:
            out.history = labels.history(object_id)
        except SsaldError as exc:
            out.match_note += f" (label history unavailable: {exc})"
    return out


def _positions(store: Any) -> dict[str, tuple[float, float]]:
    t = store.table()
    return {str(i): (float(r), float(d)) for i, r, d in zip(t["id"], t["ra"], t["dec"],
                                                           strict=True)}


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path}: unreadable review state ({exc})") from exc
    return state if isinstance(state, dict) else {}


def _write_state(folder: Path, state: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(dict(state), indent=2) + "\n")
    os.replace(tmp, folder / STATE_FILE)


def _setup(store_folder: str, labels: Any, finetune_dir: Path) -> _Setup:
    """Open the pool (whitened embeddings) and read the label store (worker)."""
    import sklearn.linear_model  # noqa: F401  (imported now, not on the first proposal)

    from ssald_desktop.core.active import Pool
    from ssald_desktop.core.embeddings import EmbeddingStore

    with EmbeddingStore(store_folder, create=False) as st:
        pool = Pool.from_store(st)
        positions = _positions(st)
        scale = None
        if st.normspec and st.normspec.get("size_unit", "pixel") == "pixel":
            from ssald_desktop.core.cutouts import NormSpec

            spec = NormSpec.from_dict(st.normspec)  # arcsec per output pixel
            scale = float(spec.width_arcsec()) / spec.output_size
    state = _read_state(finetune_dir)
    events = labels.current_events()
    rounds = [e.round for e in events if e.round is not None]
    last_ft = int(state.get("last_finetune_event", 0))
    return _Setup(pool, positions, labels.current(), labels.counts(), labels.last_event_id(),
                  (max(rounds) + 1) if rounds else 0, state, labels.new_labels_since(last_ft),
                  None if scale is None else float(scale))


def propose_batch(pool: Any, labels: Mapping[str, str], n: int, *,
                  queries: Sequence[str] = (), round_no: int = 0,
                  positions: Mapping[str, tuple[float, float]] | None = None,
                  store: Any = None, finetuned: str = "",
                  query_vectors: Any = None,
                  spectrum_for: Callable[[float, float], Path | None] | None = None,
                  finetuned_dir: str = "") -> Batch:
    """The next batch of the queue (call it in a worker).

    With a query object or a positive label among the pool's objects, the learner's mixed
    default policy (:class:`ssald_desktop.core.active.ActiveLearner`); otherwise an
    exploration batch by k-center greedy (Sener & Savarese 2018). Unlabelled query objects
    come first (source ``"query"``), so the astronomer confirms them too.

    Parameters
    ----------
    pool : Pool
        The pool.
    labels : mapping
        Current labels (objects outside the pool are ignored).
    n : int
        Batch size (capped at the unlabelled objects left).
    queries : sequence of str
        Pool ids of the query objects.
    round_no : int
        The round (varies the random choices; recorded on every item).
    positions : mapping, optional
        ``id -> (ra, dec)``.
    store : EmbeddingStore or path-like, optional
        Where the items' pictures come from (for the grid).
    finetuned : str
        Version of the latest fine-tuned head, appended to the items' model version.
    query_vectors : ndarray, optional
        Embeddings of query images from outside the pool (e.g. a dropped PNG), positives for
        the cold start.
    spectrum_for : callable, optional
        ``(ra, dec) -> Path | None``: with it, each item's spectrum is measured
        (:func:`batch_evidence`), so that the queue can be ordered and filtered by it.
    finetuned_dir : str
        The latest finished fine-tune's folder: its head joins the ranking while the labels it
        learnt still stand (:func:`ssald_desktop.core.active.load_finetuned`).
    """
    from ssald_desktop.core.active import ActiveLearner, load_finetuned

    t0 = time.perf_counter()
    ids = set(pool.ids)
    in_pool = {k: v for k, v in labels.items() if k in ids}
    queries = [q for q in queries if q in ids]
    free = len(pool) - len(set(in_pool) | set(queries))
    open_queries = [q for q in queries if q not in in_pool]
    n = int(n)
    n_qvec = 0 if query_vectors is None else len(query_vectors)
    has_positive = (bool(queries) or n_qvec > 0
                    or any(v in POSITIVE_LABELS for v in in_pool.values()))
    items: list[QueueItem] = []
    pos = positions or {}
    cands = []
    ft, ft_note = None, ""
    if has_positive and finetuned_dir and store is not None:
        from ssald_desktop.core.embeddings import EmbeddingStore

        try:
            if isinstance(store, EmbeddingStore):
                ft = load_finetuned(finetuned_dir, store)
            else:
                with EmbeddingStore(store, create=False) as opened:
                    ft = load_finetuned(finetuned_dir, opened)
        except SsaldError as exc:  # e.g. a head of the encoder before an encoder fine-tune
            ft_note = f" The fine-tuned head is not used: {exc}."
    if has_positive:
        learner = ActiveLearner(pool, positive=POSITIVE_LABELS, ignore=IGNORED_LABELS,
                                seed=0, finetuned=ft)
        m = min(max(0, n - len(open_queries)), free)
        if m > 0:
            cands = learner.suggest(in_pool, m, queries=queries, round_no=round_no,
                                    query_vectors=query_vectors if n_qvec else None)
        version = cands[0].model_version if cands else f"enc:{pool.encoder_id[:12]}"
        note = (f"Round {round_no} was proposed by a head trained on {len(queries)} query "
                f"object(s), {n_qvec} query image(s) and "
                f"{sum(v in POSITIVE_LABELS for v in in_pool.values())} positive / "
                f"{sum(v not in POSITIVE_LABELS and v not in IGNORED_LABELS for v in in_pool.values())}"  # noqa: E501
                " negative label(s).")
        if learner.last_finetuned:
            note += f" The {learner.last_finetuned}."
        note += ft_note
        exploring = False
    else:
        learner = ActiveLearner(pool, positive=POSITIVE_LABELS, ignore=IGNORED_LABELS,
                                policy="diversity", seed=0)
        m = min(n, free)
        if m > 0:
            cands = learner.suggest(in_pool, m, round_no=round_no)
        version = f"enc:{pool.encoder_id[:12]}/head:none"
        note = ("Exploration: no query image and no positive label yet, so this batch is a "
                "diverse sample of the pool (k-center greedy). Label a DAGN candidate, or "
                "send a query from the query panel, to start the search.")
        exploring = True
    def tagged(version: str) -> str:  # the latest fine-tune, unless it scored this one
        return (version + f" \u00b7 fine-tuned {finetuned}"
                if finetuned and "/ft:" not in version else version)

    for q in open_queries[:n]:
        ra, dec = pos.get(q, (math.nan, math.nan))
        items.append(QueueItem(q, ra, dec, math.nan, "query", "your query object (query "
                               "panel / more like this): confirm it", tagged(version),
                               "query", round_no))
    for k, c in enumerate(cands):
        ra, dec = pos.get(c.object_id, (math.nan, math.nan))
        score, reason = float(c.score), c.reason
        if exploring and not in_pool:  # nothing labelled: no distance to anything yet
            score = math.nan
            reason = (f"exploration pick {k + 1} of {len(cands)}: k-center greedy, each pick "
                      "the farthest from those before it (Sener & Savarese 2018)")
        items.append(QueueItem(c.object_id, ra, dec, score, c.sampler, reason,
                               tagged(c.model_version), "sampler", round_no,
                               float(c.probability)))
    if store is not None and items:
        from ssald_desktop.core.embeddings import EmbeddingStore

        own = not isinstance(store, EmbeddingStore)
        st = EmbeddingStore(store, create=False) if own else store
        try:
            for item, img in zip(items, st.object_images([i.object_id for i in items]),
                                 strict=True):
                item.image = img
            scale = _store_pixel_scale(st)
            for item in items:  # ~0.1 s each: the evidence the queue can be ordered by
                result, _note = card_nuclei(st, item.object_id, scale)
                if result is not None:
                    item.nuclei = result.status
                    if result.status == "pair":
                        item.pair_confidence = float(getattr(result, "confidence", math.nan))
                        sep = result.separation_arcsec
                        item.pair_separation = math.nan if sep is None else float(sep)
        finally:
            if own:
                st.close()
    batch_evidence(items, spectrum_for)
    if not items:
        note = "Every object of the pool is labelled: nothing left to propose."
    return Batch(items, exploring, note, time.perf_counter() - t0)


def batch_evidence(items: Sequence[QueueItem],
                   spectrum_for: Callable[[float, float], Path | None] | None,
                   radius_arcsec: float = MATCH_RADIUS_ARCSEC) -> None:
    """Fill the items' spectral evidence and known-system flag in place (call in a worker).

    Each item's spectrum (``spectrum_for``) is measured with :func:`spectral_evidence`
    (~0.5-2 s per spectrum the first time); the known dual-AGN table is cross-matched once for
    the whole batch (:meth:`ssald_desktop.core.catalogs.KnownDualAGN.match_coords`). Items
    without a position keep "not measured"; a lookup or read failure is recorded in words.
    """
    placed = [it for it in items if math.isfinite(it.ra) and math.isfinite(it.dec)]
    if placed:
        try:
            from ssald_desktop.core.catalogs import default_catalog

            hits = default_catalog().match_coords([it.ra for it in placed],
                                                  [it.dec for it in placed], radius_arcsec)
            matched = {m.input_row for m in hits}
            for k, it in enumerate(placed):
                it.known = k in matched
        except SsaldError:
            pass  # the card says why when it is shown
    if spectrum_for is None:
        return
    for it in placed:
        try:
            path = spectrum_for(it.ra, it.dec)
        except SsaldError as exc:
            it.evidence = f"failed: spectrum lookup ({exc})"
            continue
        if path is None:
            it.set_spectral(None, None)
            continue
        try:
            it.set_spectral(path, spectral_evidence(path))
        except SsaldError as exc:
            it.set_spectral(path, None, str(exc))


def _outcome(labels: Any, kind: str, oids: list[str], label: str | None, ids: list[int],
             last_ft: int) -> _Outcome:
    return _Outcome(kind, oids, label, ids, labels.current(), labels.counts(),
                    labels.last_event_id(), labels.new_labels_since(last_ft))


def _write_labels(labels: Any, items: list[dict[str, Any]], last_ft: int) -> _Outcome:
    """Add label events (one durable commit) and read the store's state (worker)."""
    if len(items) == 1:
        ids = [labels.add(**items[0])]
    else:
        ids = labels.add_many(items)
    return _outcome(labels, "label", [i["object_id"] for i in items], items[0]["label"], ids,
                    last_ft)


def _write_undo(labels: Any, event_id: int | None, object_id: str | None, user: str | None,
                last_ft: int) -> _Outcome:
    """Append an undo event (durable) and read the store's state (worker)."""
    uid = labels.undo(object_id, user=user, event_id=event_id)
    oids: list[str] = []
    if uid is not None:
        oids = [e.object_id for e in labels.events_since(uid - 1) if e.id == uid]
    return _outcome(labels, "undo", oids, None, [] if uid is None else [uid], last_ft)


def _send_samp(candidates: list[dict[str, Any]]) -> str:
    from ssald_desktop.core.samp import send_candidates

    return str(send_candidates(candidates, name="SSALD labelled candidates").summary())


def _scale(n: int, target: int) -> int:
    """Display size: ``n`` enlarged by the largest integer factor that fits ``target``."""
    return n * max(1, target // max(1, n))


# -- the widget -------------------------------------------------------------------------------
class ReviewPanel(QWidget):
    """The active-learning review queue: large cards, keyboard labels, grid, fine-tuning.

    Parameters
    ----------
    tasks : TaskRunner
        Runs the background work (results arrive in the GUI thread).
    store_folder : str
        The embedding store (index folder) whose objects are the pool.
    label_db : path-like
        The label store file (:class:`ssald_desktop.core.labels.LabelStore`).
    spectrum_for : callable, optional
        ``(ra, dec) -> Path | None``: a candidate's spectrum file.
    finetune_every : int
        Fine-tune the head after this many new labels (0: never).
    finetune_dir : Path, optional
        Where fine-tunes and the panel's state go (default: beside the label store).
    user : str, optional
        Recorded with every label (default: the login name).

    Signals
    -------
    moreLikeThis(str)
        "More like this" on the current card (or a grid cell).
    objectActivated(str, float, float)
        A candidate is shown (id, RA, Dec in degrees).
    labelsChanged()
        After each durable label or undo.
    batchReady(int)
        A new batch is in the queue (its size).
    cardShown(str)
        The card's images, matches and spectrum lookup are filled in.
    finetuneFinished(str)
        A fine-tune ended: its head version, or "" if it failed.
    messageShown(str)
        An error or notice was shown.
    """

    moreLikeThis = Signal(str)
    objectActivated = Signal(str, float, float)
    labelsChanged = Signal()
    batchReady = Signal(int)
    cardShown = Signal(str)
    finetuneFinished = Signal(str)
    messageShown = Signal(str)
    #: An encoder fine-tune finished: the path of the new encoder (the window re-embeds).
    encoderFinetuned = Signal(str)

    def __init__(self, tasks: TaskRunner, store_folder: str, label_db: str | Path, *,
                 spectrum_for: Callable[[float, float], Path | None] | None = None,
                 finetune_every: int = 50, finetune_dir: Path | None = None,
                 user: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.tasks = tasks
        self.store_folder = str(store_folder)
        self.label_db = Path(label_db)
        self.spectrum_for = spectrum_for
        self.finetune_every = int(finetune_every)
        self.finetune_dir = (Path(finetune_dir) if finetune_dir is not None else
                             self.label_db.with_name(self.label_db.stem + "-finetune"))
        self.finetune_epochs: int | None = None
        self.user = user
        self.store: Any = None  # LabelStore
        self.pool: Any = None
        self.positions: dict[str, tuple[float, float]] = {}
        self.pixel_scale: float | None = None
        self.batch_items: list[QueueItem] = []  # the whole batch, in the proposed order
        self.queue: list[QueueItem] = []  # what the card and grid show: filtered, ordered
        self.index = -1
        self.labels: dict[str, str] = {}  # durable current labels
        self.counts: dict[str, int] = {}
        self.pending: dict[str, str] = {}  # object id -> label being written
        self.queries: list[str] = []
        self.query_vectors: Any = None  # embeddings of query images outside the pool
        self.round_no = 0
        self.exploring = False
        self.new_since = 0
        self.last_event = 0
        self.finetune_version = ""
        self.finetune_folder = ""  # the latest finished fine-tune (its head joins the ranking)
        self.finetune_mode = "head"
        self.last_finetune_event = 0
        self.n_finetunes = 0
        self.finetune_job: Any = None
        self._finetune_from = 0
        self._finetune_launching = False
        self._my_events: list[tuple[int, str]] = []
        self._writes: collections.deque[tuple[str, Callable[[], Any], Callable[[Any], None],
                                              Callable[[BaseException], None]]]
        self._writes = collections.deque()
        self._write_task: Task | None = None
        self._batch_task: Task | None = None
        self._batch_again = False  # a request came while a proposal was running
        self._card_task: Task | None = None
        self._card_request = 0
        self._grid_pending: dict[str, list[str]] = {}
        self.last_saved = ""
        self.last_message = ""
        self.content: CardContent | None = None
        self._build()
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._poll_finetune)
        self._open()

    # -- construction --------------------------------------------------------------------
    def _build(self) -> None:
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(4)

        bar = QHBoxLayout()
        bar.setSpacing(4)
        self.prev_button = self._button("\u25c0", "Previous candidate (Left)", self.previous)
        self.next_button = self._button("\u25b6", "Next candidate (Right or Space)", self.next)
        self.mode_button = self._button("Grid (G)", "Switch between the card and a grid of the "
                                        "whole queue (G)", self.toggle_mode)
        self.batch_button = self._button("Next batch", "Ask the learner for the next batch "
                                         "with the labels so far", self.request_batch)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 500)
        self.batch_spin.setValue(DEFAULT_BATCH)
        self.batch_spin.setToolTip("Candidates per batch")
        self.batch_spin.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.samp_button = self._button("Send to TOPCAT/Aladin (SAMP)", "Send the labelled "
                                        "candidates as a VOTable to the SAMP hub's "
                                        "applications", self.send_to_samp)
        self.export_button = self._button("Export labels\u2026", "Write the current labels "
                                          "with RA/Dec and provenance as CSV, VOTable or FITS",
                                          self.export_dialog)
        for w in (self.prev_button, self.next_button, self.mode_button):
            bar.addWidget(w)
        bar.addSpacing(10)
        bar.addWidget(self.batch_button)
        bar.addWidget(QLabel("batch"))
        bar.addWidget(self.batch_spin)
        self.encoder_check = QCheckBox("fine-tune the encoder too")
        self.encoder_check.setToolTip(
            "After every N labels, fine-tune the encoder's top blocks with the head (slower); "
            "the images are then embedded again with the new encoder")
        self.encoder_check.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        bar.addWidget(self.encoder_check)
        bar.addStretch(1)
        bar.addWidget(self.samp_button)
        bar.addWidget(self.export_button)
        layout.addLayout(bar)

        view_bar = QHBoxLayout()
        view_bar.setSpacing(4)
        self.order_combo = QComboBox()
        for key, text, tip in ORDERS:
            self.order_combo.addItem(text, key)
            self.order_combo.setItemData(self.order_combo.count() - 1, tip,
                                         Qt.ItemDataRole.ToolTipRole)
        self.order_combo.setToolTip("Order of the queue (the evidence is measured when the "
                                    "batch is proposed)")
        self.order_combo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.order_combo.currentIndexChanged.connect(self._order_changed)
        self.filter_combo = QComboBox()
        for key, text, tip in FILTERS:
            self.filter_combo.addItem(text, key)
            self.filter_combo.setItemData(self.filter_combo.count() - 1, tip,
                                          Qt.ItemDataRole.ToolTipRole)
        self.filter_combo.setToolTip("Show only some candidates of the batch (their labels are "
                                     "kept; the count of each filter is in brackets)")
        self.filter_combo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.filter_combo.currentIndexChanged.connect(self._filter_changed)
        view_bar.addWidget(QLabel("order"))
        view_bar.addWidget(self.order_combo)
        view_bar.addSpacing(10)
        view_bar.addWidget(QLabel("show"))
        view_bar.addWidget(self.filter_combo)
        view_bar.addSpacing(10)
        self.filter_label = QLabel()
        self.filter_label.setStyleSheet("QLabel { color: #444; }")
        view_bar.addWidget(self.filter_label, 1)
        layout.addLayout(view_bar)

        self.progress_label = QLabel()
        self.progress_label.setTextFormat(Qt.TextFormat.RichText)
        self.progress_label.setWordWrap(True)
        layout.addWidget(self.progress_label)
        self.note_label = QLabel()
        self.note_label.setWordWrap(True)
        self.note_label.setStyleSheet("QLabel { color: #444; }")
        layout.addWidget(self.note_label)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setStyleSheet(
            "QLabel { background: #fde7e5; color: #7a1a12; border: 1px solid #e4a49c; "
            "padding: 4px; }")
        self.message_label.hide()
        layout.addWidget(self.message_label)

        self.stack = QStackedWidget()
        self.card_page = self._build_card()
        self.stack.addWidget(self.card_page)
        self.grid = ThumbnailGrid()
        self.grid.set_thumbnail_size(96)
        self.grid.markPositive.connect(lambda oid: self._grid_mark(oid, "DAGN candidate"))
        self.grid.markNegative.connect(lambda oid: self._grid_mark(oid, "not DAGN"))
        self.grid.clearMark.connect(self._grid_clear)
        self.grid.activated.connect(self._grid_activated)
        self.grid.moreLikeThis.connect(self.moreLikeThis.emit)
        self.stack.addWidget(self.grid)
        layout.addWidget(self.stack, 1)

        keys = QHBoxLayout()
        keys.setSpacing(4)
        self.label_buttons: dict[str, QPushButton] = {}
        for key, label in KEY_LABELS.items():
            b = self._button(f"{key}  {label}", f"Label as \u201c{label}\u201d (key {key})",
                             lambda _=False, lb=label: self.label_selection(lb))
            b.setStyleSheet(f"QPushButton {{ color: {LABEL_COLOURS[label]}; "
                            "font-weight: bold; }")
            self.label_buttons[label] = b
            keys.addWidget(b)
        b = self._button("Confirmed DAGN\u2026 (Shift+4)", "Label as \u201cconfirmed DAGN\u201d:"
                         " only for a system confirmed in the literature (Shift+4)",
                         lambda: self.label_selection(CONFIRMED))
        b.setStyleSheet(f"QPushButton {{ color: {LABEL_COLOURS[CONFIRMED]}; }}")
        self.label_buttons[CONFIRMED] = b
        keys.addWidget(b)
        keys.addSpacing(10)
        self.undo_button = self._button("\u232b Undo", "Undo the last label (Backspace)",
                                        self.undo)
        keys.addWidget(self.undo_button)
        keys.addStretch(1)
        self.saved_label = QLabel()
        self.saved_label.setTextFormat(Qt.TextFormat.RichText)
        keys.addWidget(self.saved_label)
        self.more_button = self._button("More like this", "Search the index for galaxies "
                                        "like this candidate (query panel)",
                                        self._more_like_current)
        keys.addWidget(self.more_button)
        layout.addLayout(keys)

        self.shortcuts: dict[str, QShortcut] = {}
        bindings: list[tuple[str, QKeySequence, Callable[[], Any]]] = [
            (k, QKeySequence(k), (lambda lb=lb: self.label_selection(lb)))
            for k, lb in KEY_LABELS.items()]
        bindings += [
            ("Shift+4", QKeySequence(Qt.Modifier.SHIFT | Qt.Key.Key_4),
             lambda: self.label_selection(CONFIRMED)),
            ("Backspace", QKeySequence(Qt.Key.Key_Backspace), self.undo),
            ("Left", QKeySequence(Qt.Key.Key_Left), self.previous),
            ("Right", QKeySequence(Qt.Key.Key_Right), self.next),
            ("Space", QKeySequence(Qt.Key.Key_Space), self.next),
            ("G", QKeySequence(Qt.Key.Key_G), self.toggle_mode),
        ]
        for name, seq, slot in bindings:
            sc = QShortcut(seq, self)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(slot)
            self.shortcuts[name] = sc
        self._update_progress()

    def _button(self, text: str, tip: str, slot: Callable[..., Any]) -> QPushButton:
        b = QPushButton(text)
        b.setToolTip(tip)
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep going to the panel
        b.clicked.connect(slot)
        return b

    def _build_card(self) -> QWidget:
        page = QWidget()
        v = QVBoxLayout(page)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(3)
        self.heading = QLabel()
        self.heading.setTextFormat(Qt.TextFormat.RichText)
        self.heading.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.heading.setWordWrap(True)
        v.addWidget(self.heading)

        top = QWidget()
        grid = QGridLayout(top)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(4)
        left = QVBoxLayout()
        left.setSpacing(2)
        self.rgb_label = QLabel("no candidate")
        self.rgb_label.setFixedSize(RGB_TARGET, RGB_TARGET)
        self.rgb_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.rgb_label.setStyleSheet("background: #181818; color: #aaa;")
        left.addWidget(self.rgb_label)
        self.rgb_caption = QLabel()
        self.rgb_caption.setWordWrap(True)
        self.rgb_caption.setFixedWidth(RGB_TARGET)
        self.rgb_caption.setStyleSheet("color: #555;")
        left.addWidget(self.rgb_caption)
        left.addStretch(1)
        grid.addLayout(left, 0, 0)
        right = QVBoxLayout()
        right.setSpacing(4)
        self.info = QLabel()
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setWordWrap(True)
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.info.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.info.setMinimumWidth(260)
        right.addWidget(self.info)
        bands = QHBoxLayout()
        bands.setSpacing(6)
        self.band_labels: dict[str, QLabel] = {}
        for band in "ugriz":
            col = QVBoxLayout()
            col.setSpacing(1)
            lab = QLabel()
            lab.setFixedSize(BAND_TARGET, BAND_TARGET)
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lab.setStyleSheet("background: #181818; color: #aaa;")
            cap = QLabel(band)
            cap.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            col.addWidget(lab)
            col.addWidget(cap)
            bands.addLayout(col)
            self.band_labels[band] = lab
        bands.addStretch(1)
        right.addLayout(bands)
        self.band_note = QLabel()
        self.band_note.setStyleSheet("color: #666;")
        self.band_note.setWordWrap(True)
        right.addWidget(self.band_note)
        right.addStretch(1)
        grid.addLayout(right, 0, 1)
        grid.setColumnStretch(1, 1)
        scroll = QScrollArea()
        scroll.setWidget(top)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)

        self.spectrum_view = SpectrumView(runner=self.tasks)
        self.spectrum_view.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.evidence_row = self._build_evidence_row()
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(self.evidence_row)
        self.splitter.addWidget(self.spectrum_view)
        scroll.setMinimumHeight(RGB_TARGET + 100)
        self.splitter.setStretchFactor(0, 0)  # the images and the line plots keep their
        self.splitter.setStretchFactor(1, 0)  # height; the spectrum gets the rest
        self.splitter.setStretchFactor(2, 1)
        self.splitter.setSizes([RGB_TARGET + 100, EVIDENCE_HEIGHT, 10_000])
        self.splitter.setChildrenCollapsible(False)
        v.addWidget(self.splitter, 1)
        return page

    def _build_evidence_row(self) -> QWidget:
        """The [OIII] fit and the BPT diagram of the card (shared with the evidence dock)."""
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        h.setSpacing(6)
        self.oiii_plot = OiiiPlot()
        self.oiii_plot.setMinimumSize(360, EVIDENCE_HEIGHT)
        self.oiii_plot.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.bpt_plot = BptPlot()
        self.bpt_plot.setFixedSize(int(EVIDENCE_HEIGHT * 1.2), EVIDENCE_HEIGHT)
        self.bpt_plot.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        h.addWidget(self.oiii_plot, 1)
        h.addWidget(self.bpt_plot, 0)
        row.setMinimumHeight(EVIDENCE_HEIGHT)
        return row

    def _show_lines(self, content: CardContent | None) -> None:
        """Draw the card's [OIII] fit and BPT point, or say in words why there are none."""
        if content is None:
            self.oiii_plot.clear_fit("measuring the spectrum\u2026")
            self.bpt_plot.show_point(None, "measuring\u2026")
            return
        # without a spectrum the plots would be empty boxes: the info text says why, and the
        # card's images get the room
        self.evidence_row.setVisible(content.spectrum is not None)
        self.spectrum_view.setVisible(content.spectrum is not None)
        spec = content.lines
        if spec is None:
            why = content.lines_note or "not measurable: no spectrum"
            self.oiii_plot.clear_fit(why)
            self.bpt_plot.show_point(None, why)
            return
        self.oiii_plot.show_fit(spec)
        bpt = chosen_bpt(spec)
        self.bpt_plot.show_point(bpt, "" if bpt is not None else spec.message)

    # -- opening ---------------------------------------------------------------------------
    def set_store(self, folder: str) -> None:
        """Review another embedding store's pool, e.g. the index re-embedded with a new encoder.

        Labels are kept by object id, so they carry over; the queue is proposed anew.
        """
        if str(folder) == self.store_folder:
            return
        self.store_folder = str(folder)
        self.pool = None
        self.batch_items, self.queue, self.index = [], [], -1
        self.queries, self.query_vectors = [], None
        self._card_request += 1  # a card still loading from the old store is dropped
        if self._batch_task is not None and self._batch_task.running:
            self._batch_again = True  # and so is a batch proposed from the old pool
        self._show_empty()
        self._open()

    def _open(self) -> None:
        from ssald_desktop.core.labels import LabelStore

        try:
            if self.store is None:
                self.store = LabelStore(self.label_db)
        except SsaldError as exc:
            self.show_message(f"Cannot open the label store: {exc}")
            self._set_enabled(False)
            return
        self.note_label.setText(f"Opening the pool {self.store_folder}\u2026")
        self._set_enabled(False)
        self._open_generation = getattr(self, "_open_generation", 0) + 1
        generation, folder = self._open_generation, self.store_folder

        def opened(setup: _Setup) -> None:  # only the latest opening counts
            if generation == self._open_generation and folder == self.store_folder:
                self._opened(setup)

        self.tasks.run("review: open the pool", _setup, self.store_folder, self.store,
                       self.finetune_dir, on_result=opened, on_error=self._open_failed)

    def _set_enabled(self, on: bool) -> None:
        for w in (self.batch_button, self.samp_button, self.export_button, self.undo_button,
                  *self.label_buttons.values(), self.more_button, self.prev_button,
                  self.next_button):
            w.setEnabled(on)

    def _opened(self, setup: _Setup) -> None:
        self.pool = setup.pool
        self.positions = setup.positions
        self.labels = setup.labels
        self.counts = setup.counts
        self.last_event = setup.last_event
        self.round_no = setup.round_no
        self.finetune_version = str(setup.state.get("version", ""))
        self.finetune_folder = str(setup.state.get("folder", ""))
        self.last_finetune_event = int(setup.state.get("last_finetune_event", 0))
        self.n_finetunes = int(setup.state.get("finetunes", 0))
        self.new_since = setup.new_since
        self.pixel_scale = setup.pixel_scale
        self._set_enabled(True)
        self.note_label.setText("")
        self.request_batch()

    def _open_failed(self, exc: BaseException) -> None:
        self.show_message(f"Cannot open the pool {self.store_folder}: {exc}")
        self.note_label.setText("")

    # -- queue -----------------------------------------------------------------------------
    def set_queries(self, object_ids: Iterable[str]) -> None:
        """Use these pool objects as the query (cold start) and ask for a new batch.

        Ids that are not in the pool are reported and left out.
        """
        ids = [str(i) for i in object_ids]
        if self.pool is not None:
            known = set(self.pool.ids)
            missing = [i for i in ids if i not in known]
            if missing:
                self.show_message(f"{len(missing)} query object(s) are not in the pool "
                                  f"{self.store_folder}: {', '.join(missing[:5])}")
            ids = [i for i in ids if i in known]
        self.queries = ids
        if self.pool is not None:
            self.request_batch()

    def set_query_vectors(self, vectors: Any) -> None:
        """Seed the queue with embeddings of query images from outside the pool.

        A dropped PNG/FITS or a cutout is a positive for the cold start; a new batch is asked
        for. None forgets them.
        """
        self.query_vectors = (None if vectors is None or len(vectors) == 0
                              else np.atleast_2d(np.asarray(vectors, np.float32)))
        if self.pool is not None:
            self.request_batch()

    def request_batch(self) -> Task | None:
        """Ask the learner for the next batch (in a worker); replaces the queue when done."""
        if self.pool is None:
            return None
        if self._batch_task is not None and self._batch_task.running:
            # the running proposal predates what changed (queries, labels, pool): propose
            # again when it ends, and drop its batch
            self._batch_again = True
            return self._batch_task
        if self.batch_items:
            self.round_no += 1
        labels = {**self.labels}
        self.note_label.setText(f"Proposing round {self.round_no}\u2026")
        self.batch_button.setEnabled(False)
        self._batch_task = self.tasks.run(
            "review: propose a batch", propose_batch, self.pool, labels,
            int(self.batch_spin.value()), queries=list(self.queries), round_no=self.round_no,
            positions=self.positions, store=self.store_folder, finetuned=self.finetune_version,
            query_vectors=self.query_vectors, spectrum_for=self.spectrum_for,
            finetuned_dir=self.finetune_folder,
            on_result=self._batch_ready, on_error=self._batch_failed)
        return self._batch_task

    def _batch_ready(self, batch: Batch) -> None:
        self.batch_button.setEnabled(True)
        if self._batch_again:
            self._batch_again = False
            QTimer.singleShot(0, self.request_batch)
            return
        self.batch_items = list(batch.items)
        for i, it in enumerate(self.batch_items):
            it.rank = i
        self.exploring = batch.exploring
        self.note_label.setText(batch.note)
        self._order_queue()
        self.index = -1
        first = self._next_unlabelled(-1)
        self.go_to(first if first is not None else 0)
        self._update_progress()
        self.batchReady.emit(len(self.batch_items))

    @staticmethod
    def matches_filter(item: QueueItem, key: str) -> bool:
        """Whether a candidate passes a filter of :data:`FILTERS`."""
        if key == "pair":
            return item.nuclei == "pair"
        if key == "agn":
            return item.bpt_class in AGN_LIKE
        if key == "double":
            return item.oiii_status == "double-peaked"
        if key == "known":
            return bool(item.known)
        if key == "spectrum":
            return bool(item.spectrum_name)
        return True

    @staticmethod
    def order_key(key: str) -> Callable[[QueueItem], Any]:
        """Sort key of an order of :data:`ORDERS` (sorted ascending; ties keep the rank)."""
        if key == "nuclei":  # pairs by confidence, then the rest
            return lambda it: (-(it.pair_confidence if math.isfinite(it.pair_confidence)
                                 else -1.0), it.rank)
        if key == "oiii":  # largest delta BIC first; unmeasured last
            return lambda it: ((0, -it.oiii_dbic, it.rank) if math.isfinite(it.oiii_dbic)
                               else (1, 0.0, it.rank))
        if key == "bpt":  # class rank, then up and right on the diagram; unclassified last
            def bpt(it: QueueItem) -> tuple[int, float, int]:
                if it.bpt_class not in BPT_RANK:
                    return (1, 0.0, it.rank)
                far = it.bpt_x + it.bpt_y if math.isfinite(it.bpt_x + it.bpt_y) else -99.0
                return (0, -(BPT_RANK[it.bpt_class] * 100.0 + far), it.rank)
            return bpt
        return lambda it: it.rank

    def filter_counts(self) -> dict[str, int]:
        """How many candidates of the batch pass each filter."""
        return {key: sum(self.matches_filter(it, key) for it in self.batch_items)
                for key, _, _ in FILTERS}

    def set_filter(self, key: str) -> None:
        """Show only the candidates passing filter ``key`` (see :data:`FILTERS`)."""
        k = self.filter_combo.findData(key)
        if k < 0:
            raise ReviewError(f"unknown filter {key!r}; choose one of "
                              f"{', '.join(f[0] for f in FILTERS)}")
        self.filter_combo.setCurrentIndex(k)

    def set_order(self, key: str) -> None:
        """Order the queue by ``key`` (see :data:`ORDERS`)."""
        k = self.order_combo.findData(key)
        if k < 0:
            raise ReviewError(f"unknown order {key!r}; choose one of "
                              f"{', '.join(o[0] for o in ORDERS)}")
        self.order_combo.setCurrentIndex(k)

    def _order_queue(self) -> None:
        """Filter and order the batch into the queue, update the counts and fill the grid."""
        key = str(self.filter_combo.currentData() or "all")
        order = str(self.order_combo.currentData() or "proposed")
        shown = [it for it in self.batch_items if self.matches_filter(it, key)]
        self.queue = sorted(shown, key=self.order_key(order))
        counts = self.filter_counts()
        for k, (fkey, text, _) in enumerate(FILTERS):
            self.filter_combo.setItemText(k, f"{text} ({counts[fkey]})")
        unmeasured = sum(1 for it in self.batch_items if not it.evidence)
        note = f"showing {len(self.queue)} of {len(self.batch_items)} candidates"
        if unmeasured:
            note += (f"; spectra of {unmeasured} not yet measured (no spectrum source, or no "
                     "position)")
        self.filter_label.setText(note)
        self.grid.set_results(
            [ThumbnailItem(it.object_id, it.image,
                           None if not math.isfinite(it.score) else it.score, i + 1,
                           extra=self._grid_extra(it),
                           label=grid_mark(self.labels.get(it.object_id)),
                           bottom_up=False, tooltip=self._tooltip(it))
             for i, it in enumerate(self.queue)], score_name="score")

    @staticmethod
    def _grid_extra(it: QueueItem) -> str:
        parts = [it.sampler]
        if it.nuclei == "pair":
            parts.append(f"2 nuclei {it.pair_separation:.1f}\u2033")
        if it.bpt_class:
            parts.append(it.bpt_class)
        elif it.evidence == "measured":
            parts.append("BPT n/m")
        if it.oiii_status == "double-peaked":
            parts.append("[OIII] double")
        if it.known:
            parts.append("\u2605 known")
        return " \u00b7 ".join(parts)

    def _order_queue_counts(self) -> None:
        """Refresh the filters' counts (evidence measured by a card), keeping the queue."""
        counts = self.filter_counts()
        for k, (fkey, text, _) in enumerate(FILTERS):
            self.filter_combo.setItemText(k, f"{text} ({counts[fkey]})")

    def _reshow(self) -> None:
        """Rebuild the queue after a change of order or filter; keep the card if shown."""
        current = self.current_item()
        self._order_queue()
        ids = [it.object_id for it in self.queue]
        if not ids:
            self.index = -1
            self._show_empty()
            return
        if current is not None and current.object_id in ids:
            self.index = -1  # redraw: the position in the queue changed
            self.go_to(ids.index(current.object_id))
        else:
            self.index = -1
            first = self._next_unlabelled(-1)
            self.go_to(first if first is not None else 0)
        self._update_progress()

    @Slot()
    def _order_changed(self, *args: object) -> None:
        if self.batch_items:
            self._reshow()

    @Slot()
    def _filter_changed(self, *args: object) -> None:
        if self.batch_items:
            self._reshow()

    def _batch_failed(self, exc: BaseException) -> None:
        self.batch_button.setEnabled(True)
        if self._batch_again:  # it failed on what has changed since (e.g. the old pool)
            self._batch_again = False
            QTimer.singleShot(0, self.request_batch)
            return
        self.note_label.setText("")
        self.show_message(f"Cannot propose candidates: {exc}")

    @staticmethod
    def _tooltip(it: QueueItem) -> str:
        pos = (f"RA {it.ra:.5f}  Dec {it.dec:+.5f} (deg)\n" if math.isfinite(it.ra) else "")
        return (f"{pos}{it.sampler}: {it.reason}\nmodel {it.model_version}\n"
                f"{it.evidence_summary()}")

    def current_item(self) -> QueueItem | None:
        """The candidate on the card."""
        return self.queue[self.index] if 0 <= self.index < len(self.queue) else None

    def label_shown(self, object_id: str) -> str | None:
        """The durable label of an object (what the panel shows as saved)."""
        return self.labels.get(object_id)

    def _next_unlabelled(self, after: int) -> int | None:
        for i in range(after + 1, len(self.queue)):
            oid = self.queue[i].object_id
            if oid not in self.labels and oid not in self.pending:
                return i
        return None

    def go_to(self, index: int) -> None:
        """Show the queue's candidate ``index`` on the card."""
        if not self.queue:
            self.index = -1
            self._show_empty()
            return
        index = max(0, min(int(index), len(self.queue) - 1))
        changed = index != self.index
        self.index = index
        item = self.queue[index]
        self._show_item(item)
        if self.stack.currentWidget() is self.grid:
            self.grid.select([item.object_id])
        if changed:
            self.objectActivated.emit(item.object_id, item.ra, item.dec)

    @Slot()
    def next(self) -> None:
        """The next candidate."""
        if self.index < len(self.queue) - 1:
            self.go_to(self.index + 1)

    @Slot()
    def previous(self) -> None:
        """The previous candidate."""
        if self.index > 0:
            self.go_to(self.index - 1)

    # -- card ------------------------------------------------------------------------------
    def _show_empty(self) -> None:
        key = str(self.filter_combo.currentData() or "all")
        if self.batch_items and key != "all":
            text = self.filter_combo.currentText()
            self.heading.setText(f"<i>No candidate of this batch is \u201c{_esc(text)}\u201d: "
                                 f"choose \u201call\u201d to see all {len(self.batch_items)}."
                                 "</i>")
        else:
            self.heading.setText("<i>No candidates</i>")
        self.content = None
        self.rgb_caption.setText("")
        self.band_note.setText("")
        self._show_lines(CardContent("", math.nan, math.nan, lines_note="no candidate"))
        self.rgb_label.clear()
        self.rgb_label.setText("no candidate")
        self.info.setText("")
        for lab in self.band_labels.values():
            lab.clear()
        self.spectrum_view.show_message("No candidate.")
        self._update_progress()

    def _show_item(self, item: QueueItem) -> None:
        self.content = None
        key = str(self.filter_combo.currentData() or "all")
        name = {f[0]: f[1] for f in FILTERS}.get(key, key)
        shown = ("" if key == "all" else
                 f" <span style='color:#555'>(shown: {_esc(name)}, {len(self.queue)} of "
                 f"{len(self.batch_items)})</span>")
        self.heading.setText(
            f"<b style='font-size:12pt'>Candidate {self.index + 1} / {len(self.queue)}</b>"
            f"{shown} &nbsp;\u00b7&nbsp; object <b>{item.object_id}</b>")
        if item.image is not None:
            self._set_rgb(item.image)
        else:
            self.rgb_label.clear()
            self.rgb_label.setText("loading\u2026")
        for lab in self.band_labels.values():
            lab.clear()
        self.band_note.setText("")
        self._show_lines(None)
        self._render_info(item, None)
        self._card_request += 1
        request = self._card_request
        self._card_task = self.tasks.run(
            f"review: card {item.object_id}", card_content, self.store_folder, item.object_id,
            item.ra, item.dec, spectrum_for=self.spectrum_for, labels=self.store,
            on_result=lambda c: self._card_ready(request, c),
            on_error=lambda e: self._card_failed(request, e))

    def _set_rgb(self, rgb: np.ndarray) -> None:
        """The colour picture, enlarged by an integer factor, with a scale bar when known."""
        from ssald_desktop.ui.cutout_panel import scale_bar_arcsec

        rows, cols = rgb.shape[:2]
        size = _scale(max(rows, cols), RGB_TARGET)
        factor = size // max(rows, cols)
        pix = QPixmap.fromImage(rgb_to_qimage(rgb, bottom_up=False)).scaled(
            size, size, Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.FastTransformation)
        width = ""
        if self.pixel_scale:
            arcsec = cols * self.pixel_scale
            bar = scale_bar_arcsec(arcsec)
            bar_px = bar / self.pixel_scale * factor
            painter = QPainter(pix)
            painter.setPen(QPen(QColor("white"), 2))
            y = pix.height() - 10
            painter.drawLine(QPointF(8, y), QPointF(8 + bar_px, y))
            font = QFont(painter.font())
            font.setPointSizeF(8)
            painter.setFont(font)
            painter.drawText(QPointF(8, y - 4), f"{bar:g}\u2033")
            painter.end()
            width = f", {arcsec:.1f}\u2033 wide"
        nuclei = self.content.nuclei if self.content is not None else None
        if nuclei is not None and nuclei.nuclei:
            painter = QPainter(pix)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            colours = ("#40e0ff", "#ff60c0", "#ffd040")
            centres = []
            for i, n in enumerate(nuclei.nuclei):
                # band-cube pixels (row 0 south) onto the top-down picture
                cx = (n.x + 0.5) * factor
                cy = (rows - 0.5 - n.y) * factor
                centres.append(QPointF(cx, cy))
                painter.setPen(QPen(QColor(colours[i % 3]), 2))
                painter.drawEllipse(QPointF(cx, cy), 2.2 * factor, 2.2 * factor)
            if nuclei.status == "pair" and len(centres) >= 2:
                # the separation: a dashed line between the two nuclei, labelled in arcsec
                a, b = centres[0], centres[1]
                pen = QPen(QColor("#ffffff"), 1, Qt.PenStyle.DashLine)
                painter.setPen(pen)
                painter.drawLine(a, b)
                sep = nuclei.separation_arcsec
                text = (f"{sep:.2f}\u2033" if sep is not None
                        else f"{nuclei.separation_px:.1f} px")
                font = QFont(painter.font())
                font.setPointSizeF(9)
                font.setBold(True)
                painter.setFont(font)
                mid = QPointF((a.x() + b.x()) / 2 + 6, (a.y() + b.y()) / 2 - 6)
                painter.setPen(QPen(QColor("#000000"), 1))
                painter.drawText(mid + QPointF(1, 1), text)
                painter.setPen(QPen(QColor("#ffffff"), 1))
                painter.drawText(mid, text)
            painter.end()
        self.rgb_label.setPixmap(pix)
        self.rgb_caption.setText(
            f"colour composite as encoded: {cols}\u00d7{rows} px{width}, shown \u00d7{factor} "
            "without smoothing; N\u2191 E\u2190")

    def _card_ready(self, request: int, content: CardContent) -> None:
        if request != self._card_request:
            return
        self.content = content
        if content.rgb is not None:
            self._set_rgb(content.rgb)
        elif (cur := self.current_item()) is not None and cur.image is None:
            self.rgb_label.setText("no picture")
        for band, lab in self.band_labels.items():
            img = content.bands.get(band)
            if img is None:
                lab.clear()
                lab.setText("\u2014")
                lab.setToolTip("")
            else:
                size = _scale(max(img.shape), BAND_TARGET)
                lab.setPixmap(array_to_pixmap(img, size))
                lab.setToolTip(f"{band} band, asinh stretch (Lupton et al. 1999)")
        self.band_note.setText(content.band_note or "ugriz, asinh stretch per band; "
                               "masked pixels black")
        if content.spectrum is not None:
            self.spectrum_view.load_file(content.spectrum)
        else:
            self.spectrum_view.show_message(content.spectrum_note or "No spectrum.")
        self._show_lines(content)
        item = self.current_item()
        if item is not None:
            if not item.evidence and math.isfinite(item.ra):  # measured now, by the card
                if content.spectrum_ok:  # a failed lookup is not "no spectrum"
                    item.set_spectral(content.spectrum, content.lines, content.lines_note)
                if content.match_ok:
                    item.known = bool(content.match_objects)
                self._order_queue_counts()
            self._render_info(item, content)
        self.cardShown.emit(content.object_id)

    def _card_failed(self, request: int, exc: BaseException) -> None:
        if request != self._card_request:
            return
        self.show_message(f"Cannot show the card: {exc}")

    def _render_info(self, item: QueueItem, content: CardContent | None) -> None:
        lines = []
        if math.isfinite(item.ra) and math.isfinite(item.dec):
            lines.append(f"<b>RA</b> {format_ra(item.ra)} &nbsp; <b>Dec</b> "
                         f"{format_dec(item.dec)}<br><span style='color:#666'>"
                         f"({item.ra:.6f}, {item.dec:+.6f}) deg ICRS</span>")
        else:
            lines.append("<i>no position</i>")
        score = f"{item.score:.3f}" if math.isfinite(item.score) else "\u2014"
        prob = (f" &nbsp; P(positive) {item.probability:.3f}"
                if math.isfinite(item.probability) else "")
        lines.append(f"<b>score</b> {score}{prob} &nbsp; <b>sampler</b> {item.sampler}")
        lines.append(f"<b>why</b> {_esc(item.reason)}")
        lines.append(f"<b>model</b> <span style='font-family:monospace'>"
                     f"{_esc(item.model_version)}</span> &nbsp; round {item.round}")
        if content is not None:
            lines.append(_nuclei_line(content))
            lines += _spectral_lines(content)
        if content is None:
            lines.append("<span style='color:#666'>spectrum and known dual AGN: "
                         "looking\u2026</span>")
        elif content.matches:
            rows = "<br>".join(f"\u2605 {_esc(m)}" for m in content.matches)
            lines.append(f"<b style='color:#0b5d1e'>known dual AGN within "
                         f"{MATCH_RADIUS_ARCSEC:g}\u2033:</b><br>{rows}")
        else:
            lines.append(f"<span style='color:#555'>{_esc(content.match_note)}</span>")
        label = self.labels.get(item.object_id)
        pend = self.pending.get(item.object_id)
        if pend is not None:
            lines.append(f"<b>label</b> <i>saving \u201c{_esc(pend)}\u201d\u2026</i>")
        elif label is not None:
            colour = LABEL_COLOURS.get(label, "#333")
            lines.append(f"<b>label</b> <b style='color:{colour}'>{_esc(label)}</b> "
                         "(saved)")
        else:
            lines.append("<b>label</b> <span style='color:#666'>none yet \u2014 1, 2, 3 or "
                         "Shift+4</span>")
        if content is not None and content.history:
            hist = []
            for e in content.history[-6:]:
                when = str(e.time)[:19].replace("T", " ")
                what = (f"undo of \u201c{e.label}\u201d" if e.kind == "undo"
                        else f"\u201c{e.label}\u201d")
                hist.append(f"{when} {_esc(e.user)}: {_esc(what)}")
            more = len(content.history) - len(hist)
            lines.append("<span style='color:#555'>history: " + "; ".join(hist)
                         + (f" (+{more} earlier)" if more > 0 else "") + "</span>")
        self.info.setText("<br>".join(lines))

    def _more_like_current(self) -> None:
        item = self.current_item()
        if item is not None:
            self.moreLikeThis.emit(item.object_id)

    # -- labelling -------------------------------------------------------------------------
    def label_selection(self, label: str) -> None:
        """Label the grid's selection (grid mode) or the current candidate (card mode)."""
        if self.stack.currentWidget() is self.grid:
            ids = self.grid.selected_ids()
            if ids:
                self.label_objects(ids, label)
                return
        item = self.current_item()
        if item is not None:
            self.label_objects([item.object_id], label, advance=True)

    def label_objects(self, object_ids: Sequence[str], label: str, *,
                      advance: bool = False) -> None:
        """Write a label for objects (queued, durable in order); the card may advance.

        Objects of the queue carry their provenance (source, round, model, position); others
        are labelled as ``source="manual"``.
        """
        if self.store is None or self.pool is None:
            self.show_message("The label store is not open: nothing was labelled.")
            return
        by_id = {it.object_id: it for it in self.batch_items}
        items = []
        for oid in object_ids:
            it = by_id.get(oid)
            ra, dec = (it.ra, it.dec) if it else self.positions.get(oid, (math.nan, math.nan))
            items.append({"object_id": oid, "label": label, "user": self.user,
                          "encoder_id": self.pool.encoder_id,
                          "round": it.round if it else self.round_no,
                          "source": it.source if it else "manual",
                          "ra": ra if math.isfinite(ra) else None,
                          "dec": dec if math.isfinite(dec) else None})
        if not items:
            return
        for oid in object_ids:
            self.pending[oid] = label
        what = object_ids[0] if len(object_ids) == 1 else f"{len(object_ids)} objects"
        self.saved_label.setText(f"<i>saving {what} \u2192 {label}\u2026</i>")
        last_ft = self.last_finetune_event
        self._enqueue(f"review: label {what}", lambda: _write_labels(self.store, items, last_ft),
                      self._written, lambda exc, ids=list(object_ids): self._write_failed(
                          exc, ids))
        self.grid.set_labels(self._grid_marks())
        if advance and self.stack.currentWidget() is not self.grid:
            nxt = self._next_unlabelled(self.index)
            if nxt is None:
                nxt = self._next_unlabelled(-1)
            if nxt is not None:
                self.go_to(nxt)
            else:
                self._render_current()
        self._update_progress()

    @Slot()
    def undo(self) -> None:
        """Undo the last label of this panel (else the store's latest label)."""
        if self.store is None:
            return
        event_id, oid = self._my_events.pop() if self._my_events else (None, None)
        user = self.user
        last_ft = self.last_finetune_event
        self.saved_label.setText("<i>undoing\u2026</i>")
        self._enqueue("review: undo", lambda: _write_undo(self.store, event_id, None, user,
                                                          last_ft),
                      self._written, lambda exc: self._write_failed(
                          exc, [] if oid is None else [oid], "The undo"))

    def _enqueue(self, name: str, func: Callable[[], Any], done: Callable[[Any], None],
                 failed: Callable[[BaseException], None]) -> None:
        self._writes.append((name, func, done, failed))
        self._pump()

    def _pump(self) -> None:
        if (self._write_task is not None and self._write_task.running) or not self._writes:
            return
        name, func, done, failed = self._writes.popleft()

        def ok(value: Any) -> None:
            self._write_task = None
            done(value)
            self._pump()

        def bad(exc: BaseException) -> None:
            self._write_task = None
            failed(exc)
            self._pump()

        self._write_task = self.tasks.run(name, func, on_result=ok, on_error=bad)

    def writes_pending(self) -> bool:
        """Whether label writes are queued or running."""
        return bool(self._writes) or (self._write_task is not None and self._write_task.running)

    def _written(self, out: _Outcome) -> None:
        for oid in out.object_ids:
            self.pending.pop(oid, None)
        self.labels = out.labels
        self.counts = out.counts
        self.last_event = out.last_event
        self.new_since = out.new_since
        if out.kind == "label":
            self._my_events += list(zip(out.event_ids, out.object_ids, strict=False))
            what = out.object_ids[0] if len(out.object_ids) == 1 else \
                f"{len(out.object_ids)} objects"
            self.last_saved = f"saved {what} \u2192 {out.label}"
            self.saved_label.setText(f"<span style='color:#1f6b2c'>\u2714 {_esc(self.last_saved)}"
                                     "</span>")
        elif out.object_ids:
            oid = out.object_ids[0]
            now = self.labels.get(oid)
            self.last_saved = f"undone: {oid} is now {now or 'unlabelled'}"
            self.saved_label.setText(f"<span style='color:#1f6b2c'>\u21b6 {_esc(self.last_saved)}"
                                     "</span>")
            idx = next((i for i, it in enumerate(self.queue) if it.object_id == oid), None)
            if idx is not None and self.stack.currentWidget() is not self.grid:
                self.go_to(idx)
        else:
            self.last_saved = "nothing to undo"
            self.saved_label.setText("nothing to undo")
        self.grid.set_labels(self._grid_marks())
        self._render_current()
        self._update_progress()
        self.labelsChanged.emit()
        self._maybe_finetune()
        if (out.kind == "label" and self.batch_items and not self.pending
                and all(it.object_id in self.labels for it in self.batch_items)):
            self.request_batch()  # the queue is exhausted

    def _write_failed(self, exc: BaseException, object_ids: list[str],
                      what: str = "The label") -> None:
        for oid in object_ids:
            self.pending.pop(oid, None)
        self.last_saved = ""
        self.saved_label.setText("<b style='color:#b3261e'>\u2716 NOT saved</b>")
        self.show_message(f"{what} was NOT saved: {exc}")
        self.grid.set_labels(self._grid_marks())
        if object_ids and self.stack.currentWidget() is not self.grid:
            idx = next((i for i, it in enumerate(self.queue)
                        if it.object_id == object_ids[0]), None)
            if idx is not None and idx != self.index:
                self.go_to(idx)
        self._render_current()
        self._update_progress()

    def _render_current(self) -> None:
        item = self.current_item()
        if item is not None:
            content = self.content if (self.content is not None and
                                       self.content.object_id == item.object_id) else None
            if content is not None and self.store is not None and not self.writes_pending():
                # refresh the history after a write (a small read; the store is idle)
                try:
                    content.history = self.store.history(item.object_id)
                except SsaldError:
                    pass
            self._render_info(item, content)

    def _grid_marks(self) -> dict[str, str]:
        marks = {oid: grid_mark(lb) for oid, lb in self.labels.items()}
        return {k: v for k, v in marks.items() if v is not None}

    def _grid_mark(self, object_id: str, label: str) -> None:
        # The grid emits once per selected object: gather them into one write.
        batch = self._grid_pending.setdefault(label, [])
        if not batch:
            QTimer.singleShot(0, lambda lb=label: self._flush_grid(lb))
        batch.append(object_id)

    def _flush_grid(self, label: str) -> None:
        ids = self._grid_pending.pop(label, [])
        if ids:
            self.label_objects(ids, label)

    def _grid_clear(self, object_id: str) -> None:
        if self.store is None or object_id not in self.labels:
            return
        user, last_ft = self.user, self.last_finetune_event
        mine = [k for k, (_, o) in enumerate(self._my_events) if o == object_id]
        if mine:
            del self._my_events[mine[-1]]
        self._enqueue(f"review: undo {object_id}",
                      lambda: _write_undo(self.store, None, object_id, user, last_ft),
                      self._written, lambda exc: self._write_failed(exc, [object_id],
                                                                    "The undo"))

    def _grid_activated(self, object_id: str) -> None:
        idx = next((i for i, it in enumerate(self.queue) if it.object_id == object_id), None)
        if idx is not None:
            self.set_grid_mode(False)
            self.go_to(idx)

    # -- modes -----------------------------------------------------------------------------
    def is_grid_mode(self) -> bool:
        """Whether the grid is shown."""
        return self.stack.currentWidget() is self.grid

    def set_grid_mode(self, grid: bool) -> None:
        """Show the grid (True) or the card (False)."""
        self.stack.setCurrentWidget(self.grid if grid else self.card_page)
        self.mode_button.setText("Card (G)" if grid else "Grid (G)")
        for name in ("Left", "Right", "Space"):  # the grid's own keys move its selection
            self.shortcuts[name].setEnabled(not grid)
        item = self.current_item()
        if grid:
            self.grid.set_labels(self._grid_marks())
            if item is not None:
                self.grid.select([item.object_id])
            self.grid.view.setFocus()
        else:
            sel = self.grid.selected_ids()
            if sel:
                idx = next((i for i, it in enumerate(self.queue) if it.object_id == sel[0]),
                           None)
                if idx is not None:
                    self.go_to(idx)
            self.setFocus()

    @Slot()
    def toggle_mode(self) -> None:
        """Switch between card and grid."""
        self.set_grid_mode(not self.is_grid_mode())

    # -- progress and messages ---------------------------------------------------------------
    def progress_text(self) -> str:
        """The progress line (plain text)."""
        done = sum(1 for it in self.batch_items if it.object_id in self.labels)
        parts = [f"Round {self.round_no}",
                 f"labelled {done}/{len(self.batch_items)} of this batch"]
        totals = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        if totals:
            parts.append(totals)
        if self.finetune_every > 0:
            parts.append(f"{self.new_since}/{self.finetune_every} new labels since the last "
                         "fine-tune")
        else:
            parts.append(f"{self.new_since} new labels (fine-tuning off)")
        if self.finetune_version:
            parts.append(f"head {self.finetune_version}")
        return " \u00b7 ".join(parts)

    def _update_progress(self) -> None:
        done = sum(1 for it in self.batch_items if it.object_id in self.labels)
        totals = " &nbsp;".join(
            f"<span style='color:{LABEL_COLOURS.get(k, '#333')}'>{_esc(k)}</span> <b>{v}</b>"
            for k, v in self.counts.items())
        ft = (f"{self.new_since}/{self.finetune_every} new since fine-tune"
              if self.finetune_every > 0 else f"{self.new_since} new (fine-tuning off)")
        if self.finetune_job is not None or self._finetune_launching:
            ft += " \u00b7 <b>fine-tuning\u2026</b>"
        elif self.finetune_version:
            ft += f" \u00b7 head <span style='font-family:monospace'>{self.finetune_version}</span>"
        mode = " \u00b7 <i>exploration</i>" if self.exploring else ""
        self.progress_label.setText(
            f"<b>Round {self.round_no}</b>{mode} \u00b7 labelled <b>{done}</b>/"
            f"{len(self.batch_items)} of this batch &nbsp;|&nbsp; {totals} &nbsp;|&nbsp; {ft}")

    def show_message(self, text: str) -> None:
        """Show an error or notice above the card (and emit :attr:`messageShown`)."""
        text = " ".join(str(text).split())
        self.last_message = text
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))
        if text:
            self.messageShown.emit(text)

    def clear_message(self) -> None:
        """Hide the message."""
        self.show_message("")

    # -- fine-tuning -----------------------------------------------------------------------
    def _maybe_finetune(self) -> None:
        from ssald_desktop.core.active import should_finetune

        if (self.finetune_job is not None or self._finetune_launching or self.pool is None
                or self.finetune_every <= 0):
            return
        ids = set(self.pool.ids)
        in_pool = {k: v for k, v in self.labels.items() if k in ids}
        if not should_finetune(in_pool, self.new_since, self.finetune_every,
                               positive=POSITIVE_LABELS, ignore=IGNORED_LABELS):
            return
        self.start_finetune(in_pool)

    def start_finetune(self, labels: Mapping[str, str] | None = None) -> Task:
        """Fine-tune the head on the current labels in a background process (head only)."""
        from ssald_desktop.core.active import launch_finetune

        labels = dict(labels if labels is not None else self.labels)
        self._finetune_launching = True
        self._finetune_from = self.last_event
        out = self.finetune_dir / f"ft-{self.n_finetunes + 1:03d}"
        self.finetune_mode = "encoder" if self.encoder_check.isChecked() else "head"
        self._update_progress()
        return self.tasks.run(
            "review: start fine-tuning", launch_finetune, labels, self.store_folder, out,
            positive=POSITIVE_LABELS, ignore=IGNORED_LABELS,
            mode=self.finetune_mode,
            epochs=self.finetune_epochs, on_result=self._finetune_started,
            on_error=self._finetune_failed)

    def _finetune_started(self, job: Any) -> None:
        self._finetune_launching = False
        self.finetune_job = job
        self.note_label.setText(f"Fine-tuning the {self.finetune_mode} in the background "
                                f"({job.out_dir})\u2026")
        self._poll.start()
        self._update_progress()

    def _finetune_failed(self, exc: BaseException) -> None:
        self._finetune_launching = False
        self.finetune_job = None
        self._poll.stop()
        self.show_message(f"Fine-tuning failed: {exc}")
        self._update_progress()
        self.finetuneFinished.emit("")

    @Slot()
    def _poll_finetune(self) -> None:
        job = self.finetune_job
        if job is None:
            self._poll.stop()
            return
        status = job.poll()
        if status is None:
            self.note_label.setText(f"Fine-tuning the {self.finetune_mode}\u2026 "
                                    f"{time.time() - job.started:.0f} s")
            return
        self._poll.stop()
        self.finetune_job = None
        try:
            card = job.card()
        except SsaldError as exc:
            self._finetune_failed(exc)
            return
        self.finetune_version = str(card.get("version", ""))
        self.finetune_folder = str(job.out_dir)
        self.last_finetune_event = self._finetune_from
        self.n_finetunes += 1
        state = {"version": self.finetune_version, "last_finetune_event":
                 self.last_finetune_event, "finetunes": self.n_finetunes,
                 "folder": str(job.out_dir), "card": card}
        try:
            _write_state(self.finetune_dir, state)
        except OSError as exc:
            self.show_message(f"{self.finetune_dir / STATE_FILE}: cannot save the fine-tune "
                              f"state ({exc})")
        if self.store is not None:
            try:
                self.new_since = self.store.new_labels_since(self.last_finetune_event)
            except SsaldError:
                pass
        self.note_label.setText(
            f"Fine-tuned head {self.finetune_version} on {card.get('n_labels', '?')} labels "
            f"in {card.get('seconds', '?')} s; the next candidates carry it.")
        self._update_progress()
        self.finetuneFinished.emit(self.finetune_version)
        encoder = Path(job.out_dir) / "encoder.keras"
        if card.get("reembed") and encoder.exists():
            self.encoderFinetuned.emit(str(encoder))

    def cancel_finetune(self) -> None:
        """Stop a running fine-tune process."""
        job = self.finetune_job
        self._poll.stop()
        self.finetune_job = None
        if job is not None and job.poll() is None:
            job.process.terminate()
            try:
                job.process.wait(10)
            except Exception:  # noqa: BLE001 - still running: kill it
                job.process.kill()
        self._update_progress()

    # -- SAMP and export ---------------------------------------------------------------------
    def labelled_candidates(self) -> list[dict[str, Any]]:
        """Every labelled object with its position, label and, for queue items, provenance."""
        by_id = {it.object_id: it for it in self.batch_items}
        out = []
        for oid, label in self.labels.items():
            it = by_id.get(oid)
            if it is not None:
                out.append(it.to_candidate(label))
            else:
                ra, dec = self.positions.get(oid, (math.nan, math.nan))
                out.append({"object_id": oid, "ra": ra, "dec": dec, "label": label})
        return out

    def send_to_samp(self) -> Task | None:
        """Send the labelled candidates to TOPCAT/Aladin over SAMP (in a worker)."""
        cands = self.labelled_candidates()
        if not cands:
            self.show_message("Nothing to send: no object is labelled yet.")
            return None
        self.samp_button.setEnabled(False)

        def done(summary: str) -> None:
            self.samp_button.setEnabled(True)
            self.clear_message()
            self.note_label.setText(f"SAMP: {summary}")

        def failed(exc: BaseException) -> None:
            self.samp_button.setEnabled(True)
            self.show_message(f"SAMP: {exc}")

        return self.tasks.run("review: send over SAMP", _send_samp, cands, on_result=done,
                              on_error=failed)

    def export_labels(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write the current labels (RA/Dec, provenance) as CSV, VOTable or FITS."""
        if self.store is None:
            raise ReviewError("the label store is not open")
        return Path(self.store.export(path, fmt=fmt))

    def export_dialog(self) -> None:
        """Ask for a file and export the labels to it."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Export labels", str(self.label_db.with_suffix(".csv")),
            "CSV (*.csv);;VOTable (*.vot *.xml);;FITS (*.fits)")
        if not path:
            return
        try:
            out = self.export_labels(path)
        except SsaldError as exc:
            self.show_message(f"Export failed: {exc}")
            return
        self.note_label.setText(f"Exported {len(self.labels)} labels to {out}")

    # -- closing -----------------------------------------------------------------------------
    def shutdown(self, stop_finetune: bool = True) -> None:
        """Stop the timer (and the fine-tune process) and close the label store.

        Writes still queued are dropped; a running one completes durably first (closing waits
        for the store's lock).
        """
        self._writes.clear()
        if stop_finetune:
            self.cancel_finetune()
        self._poll.stop()
        if self.store is not None:
            self.store.close()
            self.store = None


def _esc(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
