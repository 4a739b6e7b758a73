"""The label store: events, derived labels, undo, classes, export/import, two processes, CLI.

Objects are real: GOTHIC's double-nucleus systems (SDSS objIDs with RA/Dec) from the shared
data, labelled as an astronomer would.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from ssald_desktop.cli import main as cli
from ssald_desktop.core.errors import SsaldError
from ssald_desktop.core.labels import (
    BUILTIN_LABELS,
    LabelStore,
    LabelStoreError,
    UnknownLabelError,
    candidates_table,
    write_table,
)
from tests.conftest import DATA

REPO = Path(__file__).resolve().parents[2]
GOTHIC = DATA / "catalogs" / "gothic" / "DERIVED_gothic_159_dual_agn_components.csv"


@pytest.fixture(scope="module")
def gothic():
    t = Table.read(GOTHIC, format="ascii.csv")
    t = t[~t["ra"].mask] if hasattr(t["ra"], "mask") else t
    return [(str(r["obj ID"]), float(r["ra"]), float(r["dec"]), str(r["Class (From BPT)"]))
            for r in t]


@pytest.fixture
def store(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as s:
        yield s


def test_wal_full_sync_and_schema(store):
    con = store._c
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.labels() == list(BUILTIN_LABELS)
    assert store.current() == {} and store.last_event_id() == 0
    assert store.counts() == dict.fromkeys(BUILTIN_LABELS, 0)
    assert store.integrity_check() == "ok"


def test_add_current_history_counts(store, gothic):
    ids = []
    for oid, ra, dec, bpt in gothic[:40]:
        label = "DAGN candidate" if bpt in ("seyfert", "LINER") else "unsure"
        ids.append(store.add(oid, label, "alice", ra=ra, dec=dec, source="query",
                             encoder_id="enc-1", round=0, note=f"BPT {bpt}"))
    assert ids == list(range(1, 41))
    cur = store.current()
    assert len(cur) == 40 and all(isinstance(v, str) for v in cur.values())
    first = gothic[0][0]
    assert store.add(first, "Confirmed  dagn", user="bob") == 41  # case/space-insensitive
    assert store.current()[first] == "confirmed DAGN" == store.label_of(first)
    hist = store.history(first)
    assert [e.label for e in hist][-1] == "confirmed DAGN" and hist[-1].user == "bob"
    assert hist[0].ra == pytest.approx(gothic[0][1]) and hist[0].encoder_id == "enc-1"
    assert hist[0].time.endswith("Z") and hist[0].source == "query"
    counts = store.counts()
    assert sum(counts.values()) == 40 and counts["confirmed DAGN"] == 1
    assert store.new_labels_since(40) == 1 and len(store.events_since(38)) == 3
    assert store.add(12345678901234567, "not DAGN") and "12345678901234567" in store.current()


def test_undo_appends_reversals(store, gothic):
    a, b = gothic[0][0], gothic[1][0]
    e1 = store.add(a, "DAGN candidate")
    e2 = store.add(a, "not DAGN")
    e3 = store.add(b, "unsure")
    u1 = store.undo()  # the latest label of the store: b's
    assert store.current() == {a: "not DAGN"}
    u2 = store.undo(a)  # a's latest: back to DAGN candidate
    assert store.current() == {a: "DAGN candidate"}
    assert [e.kind for e in store.events_since(0)] == ["label"] * 3 + ["undo"] * 2
    assert [e.reverts for e in store.events_since(e3)] == [e3, e2]
    assert (u1, u2) == (4, 5)
    with pytest.raises(LabelStoreError, match="already undone"):
        store.undo(event_id=e2)
    with pytest.raises(LabelStoreError, match="is an undo"):
        store.undo(event_id=u1)
    with pytest.raises(LabelStoreError, match="no event 99"):
        store.undo(event_id=99)
    assert store.undo(event_id=e1) == 6 and store.current() == {}
    assert store.undo() is None and store.undo(a) is None
    assert store.new_labels_since(0) == 0
    assert store.add(a, "unsure") == 7 and store.current() == {a: "unsure"}
    # nothing was ever deleted or rewritten
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 7
    con.close()


def test_user_defined_classes_persist(tmp_path):
    path = tmp_path / "l.sqlite"
    with LabelStore(path) as s:
        with pytest.raises(UnknownLabelError, match="unknown label 'double nucleus'.*known"):
            s.add("x", "double nucleus")
        assert s.add_class("Double  Nucleus") == "Double Nucleus"
        assert s.add_class("double nucleus") == "Double Nucleus"  # exists: no duplicate
        s.add("x", "double nucleus")
    with LabelStore(path) as s:
        assert s.labels() == [*BUILTIN_LABELS, "Double Nucleus"]
        assert s.current() == {"x": "Double Nucleus"}
        assert s.counts()["Double Nucleus"] == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"object_id": "", "label": "unsure"}, "empty object id"),
    ({"object_id": "a\nb", "label": "unsure"}, "control characters"),
    ({"object_id": 1.5, "label": "unsure"}, "not a string or an integer"),
    ({"object_id": "a", "label": ""}, "unknown label"),
    ({"object_id": "a", "label": "unsure", "ra": 361}, "RA 361 is outside"),
    ({"object_id": "a", "label": "unsure", "dec": "north"}, "Dec 'north' is not a number"),
    ({"object_id": "a", "label": "unsure", "source": "oracle"}, "source 'oracle'"),
    ({"object_id": "a", "label": "unsure", "round": -1}, "round -1"),
    ({"object_id": "a", "label": "unsure", "round": 1.5}, "round 1.5"),
])
def test_bad_values_are_clear_errors(store, kwargs, match):
    with pytest.raises(LabelStoreError, match=match):
        store.add(**kwargs)
    assert store.last_event_id() == 0


def test_not_a_label_store(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("this is not a database\n" * 100)
    with pytest.raises(LabelStoreError, match=f"{text}: not a readable label store"):
        LabelStore(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE objects(id TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LabelStoreError, match="not a label store.*objects"):
        LabelStore(other)
    with pytest.raises(LabelStoreError, match="is a folder"):
        LabelStore(tmp_path)
    newer = tmp_path / "newer.sqlite"
    LabelStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(LabelStoreError, match="newer SSALD desktop"):
        LabelStore(newer)
    s = LabelStore(tmp_path / "closed.sqlite")
    s.close()
    with pytest.raises(LabelStoreError, match="closed"):
        s.current()


def test_export_csv_votable_fits_and_import_round_trip(tmp_path, store, gothic):
    for k, (oid, ra, dec, _) in enumerate(gothic[:25]):
        store.add(oid, BUILTIN_LABELS[k % 4], "carol", ra=ra if k != 3 else None,
                  dec=dec if k != 3 else None, round=k % 3 if k != 5 else None,
                  source="sampler", encoder_id="enc-7")
    store.add(gothic[3][0], "unsure", ra=None)  # no position on the effective event...
    t = store.to_table()
    row = t[list(t["object_id"]).index(gothic[3][0])]
    assert np.ma.is_masked(row["ra"])  # ...nor on any earlier one: masked
    store.add(gothic[3][0], "unsure", ra=gothic[3][1], dec=gothic[3][2])
    store.add(gothic[4][0], "unsure")  # latest event has no position: an earlier one's is used
    t = store.to_table()
    assert len(t) == 25 and t["ra"].unit == "deg"
    row = t[list(t["object_id"]).index(gothic[4][0])]
    assert row["ra"] == pytest.approx(gothic[4][1]) and row["label"] == "unsure"
    for suffix in (".csv", ".vot", ".fits"):
        out = store.export(tmp_path / f"labels{suffix}")
        back = Table.read(out, format={"csv": "ascii.csv", "vot": "votable",
                                       "fits": "fits"}[suffix[1:]])
        assert [str(x) for x in back["object_id"]] == list(t["object_id"])
        assert [str(x).strip() for x in back["label"]] == list(t["label"])
        np.testing.assert_allclose(np.asarray(back["ra"], float), np.asarray(t["ra"], float))
        assert {"user", "time", "encoder_id", "round", "source", "event_id"} <= set(
            back.colnames)
    only = store.to_table(["DAGN CANDIDATE"])
    assert set(only["label"]) == {"DAGN candidate"} and 0 < len(only) < 25
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file, then moved
    # import the CSV export into a fresh store: the same current labels and positions
    with LabelStore(tmp_path / "copy.sqlite") as copy:
        assert copy.import_csv(tmp_path / "labels.csv") == (25, 0)
        assert copy.current() == store.current()
        assert copy.import_csv(tmp_path / "labels.csv") == (0, 25)  # nothing twice
        ct = copy.to_table()
        np.testing.assert_allclose(np.asarray(ct["ra"], float), np.asarray(t["ra"], float))
        assert list(ct["user"]) == list(t["user"])  # users come from the file


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ("name,class\na,unsure\n", "line 1: the header needs an object_id"),
    ("object_id,label\na,unsure\nb,maybe\n", "line 3: unknown label 'maybe'"),
    ("id,label,ra,dec\na,unsure,10,0\nb,unsure,1000,0\n", "line 3: RA 1000"),
    ("id,label\na,unsure,extra\n", "line 2: 3 fields where the header has 2"),
    ("id,label,round\na,unsure,first\n", "line 2: round 'first'"),
    ("id,label\n,unsure\n", "line 2: empty object id"),
])
def test_import_errors_name_file_and_line(tmp_path, store, text, match):
    path = tmp_path / "in.csv"
    path.write_text(text)
    with pytest.raises(LabelStoreError, match=match) as info:
        store.import_csv(path)
    assert str(path) in str(info.value)
    assert store.last_event_id() == 0  # all or nothing


def test_import_non_utf8_and_missing(tmp_path, store):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("id,label\nM\xe9nagerie,unsure\n".encode("latin-1"))
    with pytest.raises(LabelStoreError, match="not a UTF-8 text file"):
        store.import_csv(bad)
    with pytest.raises(LabelStoreError, match="no such file"):
        store.import_csv(tmp_path / "nope.csv")
    ok = tmp_path / "ok.csv"
    ok.write_text("\ufeffObjID,Label,Note\n1237657190370247192,dagn candidate,by eye\n\n")
    assert store.import_csv(ok, user="dave") == (1, 0)
    assert store.history("1237657190370247192")[0].note == "by eye"


def test_candidates_table_and_write_formats(tmp_path, gothic):
    rows = [{"id": oid, "ra": ra, "dec": dec, "score": 0.9 - 0.01 * k, "rank": k + 1,
             "reason": "uncertainty" if k % 2 else None}
            for k, (oid, ra, dec, _) in enumerate(gothic[:10])]
    rows.append({"object_id": "no-position", "score": 0.1})
    t = candidates_table(rows, labels={gothic[0][0]: "unsure"})
    assert t.colnames[:4] == ["object_id", "ra", "dec", "score"]
    assert t["label"][0] == "unsure" and np.ma.is_masked(t["label"][1])
    assert np.ma.is_masked(t["ra"][-1]) and t["rank"].dtype.kind == "i"
    for name in ("c.csv", "c.xml", "c.fits"):
        write_table(t, tmp_path / name)
        assert len(Table.read(tmp_path / name)) == 11
    with pytest.raises(LabelStoreError, match="cannot tell the format"):
        write_table(t, tmp_path / "c.txt")
    with pytest.raises(LabelStoreError, match="candidate 0 has no object_id"):
        candidates_table([{"ra": 1.0}])


WRITER = r"""
import sys
from ssald_desktop.core.labels import LabelStore
with LabelStore(sys.argv[1]) as s:
    for i in range(int(sys.argv[2])):
        s.add(f"child-{i}", "not DAGN", user="child")
"""


def test_two_processes_write_one_store(tmp_path):
    path = tmp_path / "shared.sqlite"
    LabelStore(path).close()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "150"], env=env,
                             stderr=subprocess.PIPE, text=True)
    with LabelStore(path) as mine, LabelStore(path) as reader:
        for i in range(150):
            mine.add(f"parent-{i}", "unsure", user="parent")
            if i % 50 == 0:
                reader.current()  # a reader alongside the two writers
        assert child.wait(60) == 0, child.stderr.read()
        cur = reader.current()
    child.stderr.close()
    assert len(cur) == 300
    assert sum(v == "not DAGN" for v in cur.values()) == 150
    with LabelStore(path) as s:
        ids = [e.id for e in s.events_since(0)]
        assert ids == list(range(1, 301)) and s.integrity_check() == "ok"


def test_cli_add_undo_show_export_import(tmp_path, capsys, monkeypatch, gothic):
    db = str(tmp_path / "cli.sqlite")
    oid, ra, dec, _ = gothic[0]
    assert cli(["labels", "add", "--db", db, oid, "DAGN candidate", "--ra", str(ra), "--dec",
                str(dec), "--source", "query", "--round", "2", "--user", "erin"]) == 0
    assert cli(["labels", "add", "--db", db, oid, "not dagn"]) == 0
    assert cli(["labels", "undo", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "event 1:" in out and "undid event 2" in out and "current label: DAGN candidate" in out
    assert cli(["labels", "show", "--db", db, "--json", str(tmp_path / "s.json")]) == 0
    shown = json.loads((tmp_path / "s.json").read_text())
    assert shown["current"] == {oid: "DAGN candidate"} and shown["last_event"] == 3
    assert cli(["labels", "show", "--db", db, "--object", oid]) == 0
    assert "undo of 2" in capsys.readouterr().out
    assert cli(["labels", "classes", "--db", db, "--add", "double nucleus"]) == 0
    assert cli(["labels", "export", "--db", db, "--out", str(tmp_path / "e.vot")]) == 0
    assert Table.read(tmp_path / "e.vot")["ra"][0] == pytest.approx(ra)
    csv_in = tmp_path / "in.csv"
    csv_in.write_text(f"object_id,label\n{gothic[1][0]},double nucleus\n")
    monkeypatch.setenv("SSALD_LABELS_DB", db)  # --db from the environment
    assert cli(["labels", "import", str(csv_in)]) == 0
    assert "imported 1 label" in capsys.readouterr().out
    assert cli(["labels", "add", oid, "maybe"]) == 2
    err = capsys.readouterr().err
    assert "unknown label 'maybe'" in err and err.count("\n") == 1
    monkeypatch.delenv("SSALD_LABELS_DB")
    assert cli(["labels", "show"]) == 2
    with pytest.raises(SsaldError):
        LabelStore(tmp_path / "cli.sqlite").add("x", "nope")


def test_read_only_open(tmp_path, gothic):
    path = tmp_path / "ro.sqlite"
    with LabelStore(path) as s:
        s.add(gothic[0][0], "DAGN candidate", ra=gothic[0][1], dec=gothic[0][2])
    with LabelStore(path, read_only=True) as ro, LabelStore(path) as rw:
        assert ro.current() == {gothic[0][0]: "DAGN candidate"}
        rw.add(gothic[1][0], "unsure")  # a writer alongside: the reader sees it
        assert len(ro.current()) == 2 and len(ro.to_table()) == 2
        for call in (lambda: ro.add("x", "unsure"), ro.undo, lambda: ro.add_class("new")):
            with pytest.raises(LabelStoreError, match=f"{path}: cannot .* opened read-only"):
                call()
    assert not (tmp_path / "none.sqlite").exists()
    with pytest.raises(LabelStoreError, match="no such label store"):
        LabelStore(tmp_path / "none.sqlite", read_only=True)
    assert not (tmp_path / "none.sqlite").exists()  # nothing created
