"""Spectral evidence on the review card, and ordering/filtering the queue by it (issue 9).

The sample survey's galaxies have no spectra, so this module builds a small embedding store
whose objects sit at the fibre positions of real SDSS spectra in ``sdss/spectra`` (their
``PLUG_RA``/``PLUG_DEC``), plus a known dual-AGN system of the bundled table that lists SDSS
spectrum identifiers and a few sample galaxies at their own positions (no spectrum; galaxy 646
shows two nuclei). The pictures, bands and vectors of every object are real rows of the sample
survey's shards and store (the spectrum objects borrow other galaxies' cutouts: this store
tests the spectral evidence, not the images). ``spectrum_for`` finds spectra by position in
the real ``sdss/spectra`` folder, and the expected fits come from
:func:`ssald_desktop.core.lines.analyze_spectrum` run here on the same files.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtTest import QTest

from ssald_desktop.app import SAMPLE_INDEX_DIR
from ssald_desktop.core.labels import LabelStore
from ssald_desktop.ui.review_panel import AGN_LIKE, ReviewError, ReviewPanel
from ssald_desktop.ui.thumbnail_grid import NEGATIVE, POSITIVE
from ssald_desktop.ui.workers import TaskRunner
from tests.conftest import DATA

SPECTRA = DATA / "sdss" / "spectra"
#: Spectra with measurable lines (a Seyfert; the broad-line object, whose [OIII] is measured
#: but whose BPT point is not; two star-forming galaxies) and two without (no line above S/N 3
#: at z=0.063; a BOSS galaxy at z=0.224). Spectrum 0266-51602-0166 has the same fibre position
#: as 0266-51630-0174; the position lookup gives the latter.
WITH_SPECTRA = ("spec-0266-51602-0001", "spec-0266-51630-0174", "spec-0411-51817-0119",
                "spec-0412-51871-0308", "spec-0266-51602-0162", "spec-4500-55543-0331")
SAMPLE_OWN = ("646", "23", "34")  # sample galaxies at their own positions


def _known_with_spectra() -> tuple[str, float, float, tuple[str, ...]]:
    from ssald_desktop.core.catalogs import default_catalog

    cat = default_catalog()
    for r in cat.table:
        spectra = cat._spectra(r)
        if spectra:
            return str(r["name"]), float(r["ra1"]), float(r["dec1"]), spectra
    raise AssertionError("the bundled dual-AGN table lists no SDSS spectrum")


def build_store(folder: Path) -> dict[str, str]:
    """The test store (see the module docstring); returns ``id -> what it is``."""
    from ssald_desktop.core.embeddings import EmbeddingStore, ItemRef

    sample = EmbeddingStore(SAMPLE_INDEX_DIR, create=False)
    table = sample.table()
    row_of = {str(i): k for k, i in enumerate(table["id"])}
    donors = [k for k, i in enumerate(table["id"]) if str(i) not in SAMPLE_OWN]
    skip = {"format", "version", "dtype", "vectors", "objects", "created"}
    identity = {k: v for k, v in sample.header.items() if k not in skip}
    store = EmbeddingStore(folder)
    store.bind(identity)
    refs, rows, kinds = [], [], {}

    def add(oid: str, ra: float, dec: float, row: int, kind: str) -> None:
        source = str(sample.source_path(str(table["source"][row])).resolve())
        refs.append(ItemRef(oid, ra, dec, source, int(table["item"][row]),
                            str(table["signature"][row])))
        rows.append(row)
        kinds[oid] = kind

    for k, name in enumerate(WITH_SPECTRA):
        h = fits.getheader(SPECTRA / f"{name}.fits", 0)
        add(name, float(h["PLUG_RA"]), float(h["PLUG_DEC"]), donors[k], "spectrum")
    name, ra, dec, _ = _known_with_spectra()
    add("known", ra, dec, donors[len(WITH_SPECTRA)], f"known {name}")
    for oid in SAMPLE_OWN:
        r = row_of[oid]
        add(oid, float(table["ra"][r]), float(table["dec"][r]), r, "sample")
    store.append(refs, sample.vectors()[rows])
    store.close()
    sample.close()
    return kinds


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evidence-store") / "store"
    build_store(folder)
    return folder


@pytest.fixture(scope="module")
def expected() -> dict[str, object]:
    """analyze_spectrum on the files, independently of the panel."""
    from ssald_desktop.core.lines import analyze_spectrum
    from ssald_desktop.core.spectra import read_spectrum

    return {n: analyze_spectrum(read_spectrum(SPECTRA / f"{n}.fits"))
            for n in ("spec-0266-51602-0001", "spec-4500-55543-0331")}


def _finder():
    from ssald_desktop.ui.main_window import LocalSpectra

    return LocalSpectra([SPECTRA]).find


@pytest.fixture
def panel(qtbot, tmp_path, store_dir):
    runner = TaskRunner()
    p = ReviewPanel(runner, str(store_dir), tmp_path / "labels.sqlite",
                    spectrum_for=_finder(), finetune_every=0, finetune_dir=tmp_path / "ft")
    p._runner = runner  # closed below, after its tasks (not by qtbot, which deletes it first)
    p.resize(1100, 950)
    p.show()
    qtbot.waitExposed(p)
    qtbot.waitUntil(lambda: len(p.queue) > 0, timeout=60_000)
    qtbot.waitUntil(lambda: p.content is not None, timeout=30_000)
    p.activateWindow()
    p.setFocus()
    yield p
    # Let the card's last tasks deliver before the panel goes (no result for a deleted panel).
    qtbot.waitUntil(lambda: not p.tasks.is_busy(), timeout=60_000)
    p.shutdown()
    QThreadPool.globalInstance().waitForDone(30_000)
    p.close()
    p.deleteLater()


def _show(panel, qtbot, object_id: str) -> None:
    ids = [it.object_id for it in panel.queue]
    panel.go_to(ids.index(object_id))
    qtbot.waitUntil(lambda: panel.content is not None
                    and panel.content.object_id == object_id, timeout=30_000)


def _item(panel, object_id: str):
    return next(it for it in panel.batch_items if it.object_id == object_id)


def test_card_shows_the_oiii_fit_and_bpt_point_of_a_real_spectrum(panel, qtbot, expected):
    assert len(panel.batch_items) == len(WITH_SPECTRA) + 1 + len(SAMPLE_OWN)
    _show(panel, qtbot, "spec-0266-51602-0001")
    exp = expected["spec-0266-51602-0001"]
    lines = panel.content.lines
    assert panel.content.spectrum.name == "spec-0266-51602-0001.fits"
    # The card's fit is core.lines' fit of that file.
    assert exp.bpt.bpt_class == "Seyfert" and lines.bpt.bpt_class == "Seyfert"
    assert lines.oiii.status == exp.oiii.status == "single"
    assert lines.oiii.delta_bic == pytest.approx(exp.oiii.delta_bic, abs=0.05)
    # [OIII] plot: data, continuum (with the stellar H-beta absorption), model and one
    # dashed curve per emission-line Gaussian component.
    plot = panel.oiii_plot
    assert plot.curve is not None and not plot.message
    comps = exp.oiii_curve.components
    emission = [k for k in comps if "absorption" not in k]
    assert emission == ["H-beta", "[OIII]"]
    assert len(plot.component_items) == len(emission)
    base = exp.oiii_curve.continuum + sum(v for k, v in comps.items() if "absorption" in k)
    _, drawn = plot.component_items[1].getData()
    assert np.nanmax(drawn) == pytest.approx(np.max(base + comps["[OIII]"]))
    xs, ys = plot.listDataItems()[0].getData()
    assert xs == pytest.approx(exp.oiii_curve.wavelength) and ys == pytest.approx(
        exp.oiii_curve.flux)
    assert f"\u0394BIC {exp.oiii.delta_bic:.1f}" in plot.plotItem.titleLabel.text
    # BPT diagram: the point where core.lines puts it (a lower limit: H-beta undetected).
    x, y = panel.bpt_plot.point_xy()
    assert (x, y) == pytest.approx((exp.bpt.log_nii_ha, exp.bpt.log_oiii_hb))
    assert "Seyfert" in panel.bpt_plot.title and "lower limit" in panel.bpt_plot.title
    info = html.unescape(panel.info.text())
    assert "Seyfert" in info and f"\u0394BIC = {exp.oiii.delta_bic:.1f}" in info
    assert "spec-0266-51602-0001.fits" in info and "z = 0.0213" in info
    # The queue item carries the same numbers (what the queue is ordered by).
    item = _item(panel, "spec-0266-51602-0001")
    assert item.bpt_class == "Seyfert" and item.evidence == "measured"
    assert item.oiii_dbic == pytest.approx(exp.oiii.delta_bic, abs=0.05)


def test_cards_without_spectrum_or_lines_say_not_measurable(panel, qtbot, expected):
    _show(panel, qtbot, "646")
    info = html.unescape(panel.info.text())
    assert "No spectrum of this object" in info and "not measurable: no spectrum" in info
    assert panel.oiii_plot.curve is None
    assert panel.oiii_plot.message.startswith("not measurable")
    assert panel.bpt_plot.point_xy() is None
    assert _item(panel, "646").evidence == "none"
    assert _item(panel, "646").bpt_class == "" and math.isnan(_item(panel, "646").oiii_dbic)
    # A spectrum whose lines are below S/N 3: the reasons, no numbers.
    _show(panel, qtbot, "spec-4500-55543-0331")
    exp = expected["spec-4500-55543-0331"]
    assert exp.oiii.status == "not measurable"
    info = html.unescape(panel.info.text())
    assert exp.oiii.message in info and "not measurable" in info and "\u0394BIC" not in info
    # The data is drawn, but no model components of an undetected line.
    assert panel.oiii_plot.message == exp.oiii.message
    assert panel.oiii_plot.component_items == []
    assert panel.bpt_plot.point_xy() is None
    assert "not measurable" in panel.bpt_plot.note.textItem.toPlainText()
    # A known system of the bundled table shows its SDSS spectrum identifiers.
    name, _, _, spectra = _known_with_spectra()
    _show(panel, qtbot, "known")
    info = html.unescape(panel.info.text())
    assert name in info and all(s in info for s in spectra)


def test_filter_hides_and_shows_and_keys_label_the_filtered_queue(panel, qtbot, tmp_path):
    proposed = [it.object_id for it in panel.batch_items]
    counts = panel.filter_counts()
    classes = {it.object_id: it.bpt_class for it in panel.batch_items}
    agn = [oid for oid in proposed if classes[oid] in AGN_LIKE]
    assert agn == ["spec-0266-51602-0001"]  # the Seyfert
    assert counts == {"all": 10, "pair": sum(it.nuclei == "pair" for it in panel.batch_items),
                      "agn": 1, "double": 0, "known": 1, "spectrum": 6}
    assert counts["pair"] >= 1 and _item(panel, "646").nuclei == "pair"
    assert panel.filter_combo.itemText(2) == "AGN-like (Seyfert/LINER/composite) (1)"
    assert panel.filter_combo.itemText(5) == "with a spectrum (6)"
    panel.set_filter("agn")
    assert [it.object_id for it in panel.queue] == agn
    assert panel.current_item().object_id == agn[0]
    assert "showing 1 of 10" in panel.filter_label.text()

    panel.set_filter("spectrum")
    shown = [it.object_id for it in panel.queue]
    assert shown == [oid for oid in proposed if oid in WITH_SPECTRA]  # in the proposed order
    assert panel.current_item().object_id == shown[0]
    # Keys label the filtered queue and the card advances within it.
    with qtbot.waitSignal(panel.labelsChanged, timeout=10_000):
        QTest.keyClick(panel, Qt.Key.Key_2)
    qtbot.waitUntil(lambda: not panel.writes_pending(), timeout=10_000)
    assert panel.current_item().object_id == shown[1]
    with qtbot.waitSignal(panel.labelsChanged, timeout=10_000):
        QTest.keyClick(panel, Qt.Key.Key_1)
    qtbot.waitUntil(lambda: not panel.writes_pending(), timeout=10_000)
    assert panel.current_item().object_id == shown[2]
    with LabelStore(tmp_path / "labels.sqlite", read_only=True) as s:
        assert s.current() == {shown[0]: "not DAGN", shown[1]: "DAGN candidate"}
    # The grid shows only the filtered candidates, with their marks.
    panel.set_grid_mode(True)
    assert panel.grid.object_ids() == shown
    assert panel.grid.label_of(shown[0]) == NEGATIVE
    assert panel.grid.label_of(shown[1]) == POSITIVE
    panel.set_grid_mode(False)
    # Nothing is double-peaked: an empty queue that says so.
    panel.set_filter("double")
    assert panel.queue == [] and panel.current_item() is None
    assert "No candidate of this batch" in panel.heading.text()
    panel.set_filter("known")
    assert [it.object_id for it in panel.queue] == ["known"]
    # Back to all: every candidate, the labels kept, the progress counts the whole batch.
    panel.set_filter("all")
    assert [it.object_id for it in panel.queue] == proposed
    assert panel.label_shown(shown[0]) == "not DAGN" and "labelled 2/10" in panel.progress_text()
    panel.set_grid_mode(True)
    assert panel.grid.object_ids() == proposed and panel.grid.label_of(shown[1]) == POSITIVE
    panel.set_grid_mode(False)
    with pytest.raises(ReviewError, match="unknown filter"):
        panel.set_filter("spiral")


def test_ordering_by_oiii_delta_bic_and_by_bpt(panel):
    items = panel.batch_items
    panel.set_order("oiii")
    q = panel.queue
    measured = [it for it in q if math.isfinite(it.oiii_dbic)]
    assert [it.object_id for it in q[:len(measured)]] == [it.object_id for it in measured]
    dbic = [it.oiii_dbic for it in measured]
    assert dbic == sorted(dbic, reverse=True) and len(measured) == 4
    assert q[0].object_id == "spec-0266-51602-0001"  # delta BIC -6.1: the least single
    rest = [it.rank for it in q[len(measured):]]
    assert rest == sorted(rest)  # unmeasured: as proposed
    panel.set_order("bpt")
    order = [it.object_id for it in panel.queue]
    assert order[0] == "spec-0266-51602-0001"  # the Seyfert
    assert [it.bpt_class for it in panel.queue[1:3]] == ["star-forming"] * 2
    assert all(it.bpt_class == "" for it in panel.queue[3:])
    rest = [it.rank for it in panel.queue[3:]]
    assert rest == sorted(rest)
    assert panel.current_item() is not None
    panel.set_order("proposed")
    assert [it.object_id for it in panel.queue] == [it.object_id for it in items]
