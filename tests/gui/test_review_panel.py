"""The review panel (issue 6 item 4) on the bundled sample index and a real label store.

The pool is the sample survey's 45 galaxies (field 2820-3-122, the default encoder); labels go
into an SQLite label store in tmp_path and are checked by reopening it. The fine-tune test runs
the real ``python -m model.finetune`` head process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtTest import QTest

from ssald_desktop.app import SAMPLE_INDEX_DIR, SAMPLE_SPECTRA_DIR
from ssald_desktop.core.labels import LabelStore
from ssald_desktop.ui.review_panel import (
    CONFIRMED,
    ReviewPanel,
    card_content,
    grid_mark,
)
from ssald_desktop.ui.thumbnail_grid import NEGATIVE, POSITIVE
from ssald_desktop.ui.workers import TaskRunner


def _spectra_finder():
    from ssald_desktop.ui.main_window import LocalSpectra

    return LocalSpectra([SAMPLE_SPECTRA_DIR]).find


def _make(qtbot, tmp_path, **kwargs) -> ReviewPanel:
    runner = TaskRunner()
    kwargs.setdefault("spectrum_for", _spectra_finder())
    kwargs.setdefault("finetune_dir", tmp_path / "ft")
    panel = ReviewPanel(runner, str(SAMPLE_INDEX_DIR), tmp_path / "labels.sqlite", **kwargs)
    panel._runner = runner  # keep it alive with the panel
    qtbot.addWidget(panel)
    panel.resize(1000, 900)
    panel.show()
    qtbot.waitExposed(panel)
    qtbot.waitUntil(lambda: len(panel.queue) > 0, timeout=30_000)
    qtbot.waitUntil(lambda: panel.content is not None, timeout=30_000)
    panel.activateWindow()
    panel.setFocus()
    return panel


@pytest.fixture
def panel(qtbot, tmp_path):
    p = _make(qtbot, tmp_path)
    yield p
    p.shutdown()
    QThreadPool.globalInstance().waitForDone(30_000)


def _key(qtbot, panel, key, modifier=Qt.KeyboardModifier.NoModifier):
    with qtbot.waitSignal(panel.labelsChanged, timeout=10_000):
        QTest.keyClick(panel, key, modifier)
    qtbot.waitUntil(lambda: not panel.writes_pending(), timeout=10_000)


def _stored(tmp_path) -> dict[str, str]:
    with LabelStore(tmp_path / "labels.sqlite", read_only=True) as s:
        return s.current()


def test_queue_fills_with_an_exploration_batch_and_a_full_card(panel):
    ids = set(panel.pool.ids)
    assert len(ids) == 45
    assert len(panel.queue) == 20 and len({i.object_id for i in panel.queue}) == 20
    assert {i.object_id for i in panel.queue} <= ids
    # No query and no label: exploration, and the screen says so.
    assert panel.exploring and "Exploration" in panel.note_label.text()
    assert all(i.sampler == "diversity" and i.source == "sampler" for i in panel.queue)
    item = panel.current_item()
    assert panel.index == 0 and item is panel.queue[0]
    c = panel.content
    assert c.object_id == item.object_id
    assert c.rgb is not None and c.rgb.shape == (64, 64, 3)
    # The five bands of the HDF5 shard, asinh-stretched to 0..1, shown 2x pixel-exact.
    assert sorted(c.bands) == sorted("ugriz")
    assert all(b.shape == (64, 64) and 0 <= b.min() and b.max() <= 1 for b in c.bands.values())
    assert panel.rgb_label.pixmap().width() == 256
    assert panel.band_labels["r"].pixmap().width() == 128
    # No sample galaxy has a local spectrum or a known dual AGN within 5".
    assert "No spectrum of this object" in panel.spectrum_view.message()
    info = panel.info.text()
    assert "no known dual AGN within 5" in info and "diversity" in info
    assert item.model_version.startswith("enc:d64d47748ce4") and "enc:d64d47748ce4" in info
    assert "Round 0" in panel.progress_text() and "0/20" in panel.progress_text()


def test_keys_write_durable_labels_undo_and_move(panel, qtbot, tmp_path):
    q = [i.object_id for i in panel.queue]
    _key(qtbot, panel, Qt.Key.Key_1)
    assert _stored(tmp_path) == {q[0]: "DAGN candidate"}
    assert panel.label_shown(q[0]) == "DAGN candidate" and "saved" in panel.last_saved
    assert panel.index == 1  # the card advanced
    _key(qtbot, panel, Qt.Key.Key_2)
    _key(qtbot, panel, Qt.Key.Key_3)
    assert _stored(tmp_path) == {q[0]: "DAGN candidate", q[1]: "not DAGN", q[2]: "unsure"}
    with LabelStore(tmp_path / "labels.sqlite", read_only=True) as s:
        e = s.history(q[1])[-1]
    assert (e.source, e.round, e.encoder_id) == ("sampler", 0, panel.pool.encoder_id)
    assert (e.ra, e.dec) == pytest.approx((panel.queue[1].ra, panel.queue[1].dec))
    # A plain 4 does nothing; Shift+4 confirms.
    QTest.keyClick(panel, Qt.Key.Key_4)
    qtbot.wait(100)
    assert not panel.writes_pending() and q[3] not in _stored(tmp_path)
    _key(qtbot, panel, Qt.Key.Key_4, Qt.KeyboardModifier.ShiftModifier)
    assert _stored(tmp_path)[q[3]] == CONFIRMED
    counts = panel.counts
    assert counts["DAGN candidate"] == counts["not DAGN"] == counts["unsure"] == 1
    assert counts[CONFIRMED] == 1 and "4/20" in panel.progress_text()
    # Backspace undoes the last label (an undo event) and shows that object again.
    _key(qtbot, panel, Qt.Key.Key_Backspace)
    assert q[3] not in _stored(tmp_path) and panel.index == 3
    _key(qtbot, panel, Qt.Key.Key_Backspace)
    assert q[2] not in _stored(tmp_path) and panel.label_shown(q[2]) is None
    # Arrows and Space move in the queue.
    i = panel.index
    QTest.keyClick(panel, Qt.Key.Key_Right)
    assert panel.index == i + 1
    QTest.keyClick(panel, Qt.Key.Key_Left)
    QTest.keyClick(panel, Qt.Key.Key_Left)
    assert panel.index == i - 1
    with qtbot.waitSignal(panel.objectActivated) as blocker:
        QTest.keyClick(panel, Qt.Key.Key_Space)
    assert blocker.args[0] == q[i] and panel.index == i
    with qtbot.waitSignal(panel.moreLikeThis) as blocker:
        panel.more_button.click()
    assert blocker.args == [q[i]]


def test_grid_mode_shows_the_queue_and_marks_go_to_the_store(panel, qtbot, tmp_path):
    q = [i.object_id for i in panel.queue]
    _key(qtbot, panel, Qt.Key.Key_2)
    QTest.keyClick(panel, Qt.Key.Key_G)
    assert panel.is_grid_mode() and panel.grid.object_ids() == q
    assert panel.grid.label_of(q[0]) == NEGATIVE
    # Multi-select + context-menu marks: one durable write for the selection.
    panel.grid.select([q[4], q[5]])
    with qtbot.waitSignal(panel.labelsChanged, timeout=10_000):
        panel.grid.mark(panel.grid.selected_ids(), POSITIVE)
    qtbot.waitUntil(lambda: not panel.writes_pending())
    stored = _stored(tmp_path)
    assert stored[q[4]] == stored[q[5]] == "DAGN candidate"
    assert panel.grid.label_of(q[4]) == panel.grid.label_of(q[5]) == POSITIVE
    # A key labels the grid's selection too.
    panel.grid.select([q[6]])
    with qtbot.waitSignal(panel.labelsChanged, timeout=10_000):
        panel.label_selection("unsure")
    qtbot.waitUntil(lambda: not panel.writes_pending())
    assert _stored(tmp_path)[q[6]] == "unsure" and panel.grid.label_of(q[6]) == "unsure"
    # Clearing a mark undoes that object's label.
    with qtbot.waitSignal(panel.labelsChanged, timeout=10_000):
        panel.grid.mark([q[5]], None)
    qtbot.waitUntil(lambda: not panel.writes_pending())
    assert q[5] not in _stored(tmp_path) and panel.grid.label_of(q[5]) is None
    # Back to the card on the grid's selection.
    panel.grid.select([q[7]])
    QTest.keyClick(panel.grid.view, Qt.Key.Key_G)
    assert not panel.is_grid_mode() and panel.current_item().object_id == q[7]


def test_read_only_store_shows_an_error_and_marks_nothing_saved(panel, qtbot, tmp_path):
    q = [i.object_id for i in panel.queue]
    _key(qtbot, panel, Qt.Key.Key_2)
    panel.store.close()
    panel.store = LabelStore(tmp_path / "labels.sqlite", read_only=True)
    with qtbot.waitSignal(panel.messageShown, timeout=10_000) as blocker:
        QTest.keyClick(panel, Qt.Key.Key_1)
    qtbot.waitUntil(lambda: not panel.writes_pending())
    text = blocker.args[0]
    assert "NOT saved" in text and "read-only" in text and "labels.sqlite" in text
    assert panel.label_shown(q[1]) is None and q[1] not in panel.pending
    assert "NOT saved" in panel.saved_label.text() and panel.message_label.isVisible()
    assert panel.current_item().object_id == q[1]  # back on the unsaved candidate
    panel.set_grid_mode(True)
    assert panel.grid.label_of(q[1]) is None and panel.grid.label_of(q[0]) == NEGATIVE
    assert _stored(tmp_path) == {q[0]: "not DAGN"}


def test_query_cold_start_and_labels_from_queries(panel, qtbot, tmp_path):
    query = panel.pool.ids[10]
    with qtbot.waitSignal(panel.batchReady, timeout=30_000):
        panel.set_queries([query, "no-such-object"])
    assert "not in the pool" in panel.last_message and "no-such-object" in panel.last_message
    assert not panel.exploring and "Exploration" not in panel.note_label.text()
    first = panel.queue[0]
    assert (first.object_id, first.source, first.sampler) == (query, "query", "query")
    rest = panel.queue[1:]
    assert query not in {i.object_id for i in rest}
    assert all("/head:" in i.model_version and i.source == "sampler" for i in rest)
    assert all(np.isfinite(i.score) for i in rest) and rest[0].reason
    qtbot.waitUntil(lambda: panel.content is not None and panel.content.object_id == query)
    _key(qtbot, panel, Qt.Key.Key_1)
    with LabelStore(tmp_path / "labels.sqlite", read_only=True) as s:
        assert s.history(query)[-1].source == "query"
    # The next batch is trained on the label and leaves labelled objects out.
    before = panel.round_no
    with qtbot.waitSignal(panel.batchReady, timeout=30_000):
        panel.batch_button.click()
    assert panel.round_no == before + 1 and query not in {i.object_id for i in panel.queue}


def test_crossmatch_on_a_card_shows_a_known_dual_agn(panel, qtbot):
    # NGC 3758 = Mrk 739 (Big MAC DR1, confirmed dual AGN): the card content at its position.
    oid = panel.current_item().object_id
    content = card_content(SAMPLE_INDEX_DIR, oid, 174.122, 21.596)
    assert any("Mrk 739" in m and "confirmed dual AGN" in m for m in content.matches)
    assert content.match_note == ""
    panel._card_ready(panel._card_request, content)
    assert "Mrk 739" in panel.info.text() and "known dual AGN within 5" in panel.info.text()
    assert grid_mark("confirmed DAGN") == POSITIVE and grid_mark("unsure") == "unsure"


def test_spectrum_samp_and_export(qtbot, tmp_path, monkeypatch):
    spec = SAMPLE_SPECTRA_DIR / "spec-4238-55455-0037.fits"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:{(tmp_path / 'no-hub.lock').as_uri()}")
    p = _make(qtbot, tmp_path, spectrum_for=lambda ra, dec: spec)
    try:
        qtbot.waitUntil(lambda: p.spectrum_view.spectrum is not None, timeout=30_000)
        assert p.spectrum_view.spectrum.z == pytest.approx(0.607, abs=0.01)
        q = [i.object_id for i in p.queue]
        _key(qtbot, p, Qt.Key.Key_1)
        _key(qtbot, p, Qt.Key.Key_2)
        with qtbot.waitSignal(p.messageShown, timeout=30_000) as blocker:
            p.send_to_samp()
        assert "SAMP" in blocker.args[0] and "hub" in blocker.args[0].lower()
        from astropy.table import Table

        for name in ("labels.csv", "labels.vot", "labels.fits"):
            out = p.export_labels(tmp_path / name)
            t = Table.read(out)
            assert sorted(t["object_id"].astype(str)) == sorted(q[:2])
            assert {str(x) for x in t["label"]} == {"DAGN candidate", "not DAGN"}
            assert np.isfinite(np.asarray(t["ra"], float)).all()
    finally:
        p.shutdown()
        QThreadPool.globalInstance().waitForDone(30_000)


def test_finetune_trigger_runs_a_head_finetune_and_the_version_changes(qtbot, tmp_path):
    p = _make(qtbot, tmp_path, finetune_every=3)
    p.finetune_epochs = 30
    try:
        assert not p.finetune_version
        before = p.queue[0].model_version
        _key(qtbot, p, Qt.Key.Key_1)
        _key(qtbot, p, Qt.Key.Key_2)
        with qtbot.waitSignal(p.finetuneFinished, timeout=180_000) as blocker:
            _key(qtbot, p, Qt.Key.Key_2)
            qtbot.waitUntil(lambda: p.finetune_job is not None or bool(p.finetune_version),
                            timeout=30_000)
            assert "fine-tuning" in p.progress_label.text() or p.finetune_version
        version = blocker.args[0]
        assert version.startswith("head-"), p.last_message
        assert p.finetune_version == version and version in p.progress_text()
        assert "0/3 new labels since the last fine-tune" in p.progress_text()
        state = json.loads((tmp_path / "ft" / "review_state.json").read_text())
        assert state["version"] == version and state["card"]["n_labels"] == 3
        assert (tmp_path / "ft" / "ft-001" / "head.keras").is_file()
        # The next candidates carry the new model version.
        with qtbot.waitSignal(p.batchReady, timeout=30_000):
            p.request_batch()
        assert all(version in i.model_version for i in p.queue)
        assert all(i.model_version != before for i in p.queue)
    finally:
        p.shutdown()
        QThreadPool.globalInstance().waitForDone(30_000)


def test_card_and_queue_carry_the_two_nuclei_test(tmp_path):
    """Issue 9: the r-band two-nuclei test runs on the stored cutouts (real sample shards)."""
    from ssald_desktop.app import SAMPLE_INDEX_DIR
    from ssald_desktop.core.active import Pool
    from ssald_desktop.core.embeddings import EmbeddingStore
    from ssald_desktop.ui.review_panel import card_content, propose_batch

    store = EmbeddingStore(SAMPLE_INDEX_DIR, create=False)
    ids = store.ids()
    statuses = {card_content(SAMPLE_INDEX_DIR, oid).nuclei.status for oid in ids[:12]}
    assert statuses <= {"pair", "single", "point source", "not measurable"}
    assert "single" in statuses
    # Galaxy 646 of the sample has a neighbour 5.6 arcsec away: found as a pair.
    c = card_content(SAMPLE_INDEX_DIR, "646")
    assert c.nuclei.status == "pair" and abs(c.nuclei.separation_arcsec - 5.6) < 0.5
    pool = Pool.from_store(store)
    batch = propose_batch(pool, {}, 10, store=store)
    assert all(it.nuclei in ("pair", "single", "point source", "not measurable")
               for it in batch.items)
    pairs = [it for it in batch.items if it.nuclei == "pair"]
    assert all(0 <= it.pair_confidence <= 1 and it.pair_separation > 0 for it in pairs)


def test_sample_cards_say_no_spectrum_and_the_two_nuclei_filter(panel, qtbot):
    """Issue 9: no sample galaxy has a spectrum, so no line evidence; the filters count."""
    info = panel.info.text()
    assert "not measurable: no spectrum" in info
    assert panel.oiii_plot.curve is None and panel.oiii_plot.message.startswith("not measur")
    assert panel.bpt_plot.point_xy() is None
    assert all(it.evidence == "none" for it in panel.batch_items)
    counts = panel.filter_counts()
    pairs = [it.object_id for it in panel.batch_items if it.nuclei == "pair"]
    assert counts["all"] == 20 and counts["pair"] == len(pairs)
    assert counts["spectrum"] == counts["agn"] == counts["double"] == counts["known"] == 0
    panel.set_order("nuclei")
    panel.set_filter("pair")
    assert sorted(it.object_id for it in panel.queue) == sorted(pairs)
    conf = [it.pair_confidence for it in panel.queue]
    assert conf == sorted(conf, reverse=True)
    panel.set_filter("all")
    assert len(panel.queue) == 20
