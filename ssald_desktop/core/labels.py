"""The label store: an append-only, durable log of the astronomer's labelling actions.

Every labelling action is an *event* appended to an SQLite table; nothing is ever updated or
deleted. The current label of an object is derived: it is the label of the object's latest
label event that has not been reversed. Undo appends a reversal event (``kind = "undo"``,
``reverts`` = the reversed event's id), so the full history stays readable and an undo of the
latest label brings the previous one back.

Durability
----------
The database runs in write-ahead-log mode with ``synchronous = FULL`` (SQLite's "WAL" and
"PRAGMA synchronous" documentation): a transaction's commit returns only after its WAL frames
have been written and fsync'ed, so a label acknowledged by :meth:`LabelStore.add` (which returns
only after its commit) survives the process being killed at any moment, and the OS or machine
crashing after the return. Several processes may open one store at once (WAL allows readers
alongside one writer; writers take the lock with ``BEGIN IMMEDIATE`` and wait up to ``timeout``
seconds for it). Event ids come from ``AUTOINCREMENT`` and only ever grow, so "events since id
N" is the way to ask what changed (e.g. how many new labels arrived since the last fine-tune).

A store that cannot be written (read-only file system, no permission on the file or on its
folder, a full disk, a file-size limit) raises :class:`LabelStoreError` naming the path and the
reason; the failed transaction is rolled back and everything acknowledged before is kept.

Labels
------
The built-in classes are :data:`BUILTIN_LABELS` ("DAGN candidate", "confirmed DAGN",
"not DAGN", "unsure"); user-defined classes are added with :meth:`LabelStore.add_class` and are
stored in the database. Labels match case-insensitively and are stored in their canonical
spelling; an unknown label is an :class:`UnknownLabelError` listing the known ones.

Export and import
-----------------
:meth:`LabelStore.to_table` gives the current labels with RA/Dec and provenance (user, time,
encoder, round, source, event id) as an :class:`astropy.table.Table`; :func:`write_table` writes
any table as CSV, VOTable or FITS by the file's suffix; :func:`candidates_table` makes a table of
a candidate list. :meth:`LabelStore.import_csv` reads labels from a CSV file (validated as a
whole before anything is written; errors name the file and line).
"""

from __future__ import annotations

import csv
import getpass
import math
import os
import resource
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssald_desktop.core.errors import SsaldError

if TYPE_CHECKING:  # pragma: no cover
    from astropy.table import Table

__all__ = [
    "BUILTIN_LABELS",
    "SOURCES",
    "LabelEvent",
    "LabelStore",
    "LabelStoreError",
    "UnknownLabelError",
    "candidates_table",
    "table_format",
    "write_table",
]

#: The built-in label classes, in display order.
BUILTIN_LABELS: tuple[str, ...] = ("DAGN candidate", "confirmed DAGN", "not DAGN", "unsure")
#: Where a labelled candidate came from.
SOURCES: tuple[str, ...] = ("query", "sampler", "manual")
#: Schema version written in the ``meta`` table; a newer store is refused.
SCHEMA_VERSION = 1
APPLICATION = "ssald-desktop label store"
MAX_LABEL_LENGTH = 64
MAX_ID_LENGTH = 256
#: Columns of :meth:`LabelStore.to_table` (and of exported label files).
EXPORT_COLUMNS: tuple[str, ...] = (
    "object_id", "label", "ra", "dec", "user", "time", "encoder_id", "round", "source",
    "note", "event_id",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes(
    name TEXT PRIMARY KEY,
    builtin INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('label', 'undo')),
    object_id TEXT NOT NULL,
    label TEXT NOT NULL,
    reverts INTEGER UNIQUE REFERENCES events(id),
    user TEXT NOT NULL,
    time TEXT NOT NULL,
    encoder_id TEXT,
    round INTEGER,
    source TEXT NOT NULL CHECK (source IN ('query', 'sampler', 'manual')),
    ra REAL,
    dec REAL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS events_object ON events(object_id, id);
"""

_EVENT_COLUMNS = (
    "id, kind, object_id, label, reverts, user, time, encoder_id, round, source, ra, dec, note"
)
# The effective label events: the latest not-reversed label event of each object.
_EFFECTIVE = """
SELECT {cols} FROM events WHERE id IN (
    SELECT MAX(l.id) FROM events AS l
    WHERE l.kind = 'label' AND NOT EXISTS (SELECT 1 FROM events AS u WHERE u.reverts = l.id)
    GROUP BY l.object_id)
ORDER BY id
"""


class LabelStoreError(SsaldError):
    """A label store that cannot be opened, read or written (the message names the path)."""


class UnknownLabelError(LabelStoreError):
    """A label that is neither built in nor a user-defined class of the store."""


@dataclass(frozen=True)
class LabelEvent:
    """One appended event of the store.

    ``kind`` is ``"label"`` or ``"undo"``; an undo event carries the reversed event's id in
    ``reverts`` and its object and label. ``time`` is UTC, ISO 8601 with a ``Z`` suffix.
    """

    id: int
    kind: str
    object_id: str
    label: str
    reverts: int | None
    user: str
    time: str
    encoder_id: str | None
    round: int | None
    source: str
    ra: float | None
    dec: float | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict."""
        return dict(self.__dict__)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (e.g. a uid without a passwd entry)
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


# -- error reporting ----------------------------------------------------------------------------
def _unwritable_reason(path: Path) -> str | None:
    """Why ``path`` (a store file, existing or not) cannot be written, or None if it can."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"the file system holding {folder} is mounted read-only"
    except (OSError, AttributeError):
        pass
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only (no write permission)"
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if side.exists() and not os.access(side, os.W_OK):
            return f"its write-ahead log {side.name} is read-only (no write permission)"
    if folder.exists() and not os.access(folder, os.W_OK):
        return (f"its folder {folder} is read-only (SQLite must create {path.name}-wal and "
                f"{path.name}-shm beside the store)")
    return None


def _space_note(path: Path) -> str:
    parts = []
    try:
        free = shutil.disk_usage(path.parent).free
        parts.append(f"{free / 1e6:.1f} MB free on that disk")
    except OSError:
        pass
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            parts.append(f"the process's file-size limit (RLIMIT_FSIZE) is {soft} bytes")
    except (OSError, ValueError):
        pass
    return "; ".join(parts)


def _describe(path: Path, exc: BaseException, action: str) -> LabelStoreError:
    """Turn an SQLite or OS error into a :class:`LabelStoreError` that names ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    kept = "labels saved before are kept"
    msg = str(exc)
    if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM) or (
        isinstance(exc, PermissionError)
    ):
        reason = _unwritable_reason(path)
        if reason is not None:
            return LabelStoreError(f"{path}: cannot {action}: {reason}; {kept}")
        if primary == sqlite3.SQLITE_CANTOPEN:
            return LabelStoreError(f"{path}: cannot {action}: SQLite cannot open the file "
                                   f"({msg}); is the folder there and writable?")
        return LabelStoreError(f"{path}: cannot {action}: the store is read-only ({msg}); {kept}")
    if primary == sqlite3.SQLITE_FULL:
        note = _space_note(path)
        return LabelStoreError(f"{path}: cannot {action}: the disk is full"
                               f"{' (' + note + ')' if note else ''}; {kept}")
    if primary == sqlite3.SQLITE_IOERR or isinstance(exc, OSError):
        reason = _unwritable_reason(path)
        if reason is not None:
            return LabelStoreError(f"{path}: cannot {action}: {reason}; {kept}")
        note = _space_note(path)
        return LabelStoreError(
            f"{path}: cannot {action}: a write failed ({msg}): the disk may be full or a "
            f"file-size limit reached{' (' + note + ')' if note else ''}; {kept}")
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return LabelStoreError(f"{path}: not a readable label store ({msg})")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return LabelStoreError(f"{path}: cannot {action}: another process holds the store's "
                               f"lock ({msg}); try again")
    return LabelStoreError(f"{path}: cannot {action}: {msg}")


# -- value checks ---------------------------------------------------------------------------------
def _check_object_id(object_id: Any) -> str:
    if isinstance(object_id, bool) or not isinstance(object_id, (str, int)):
        raise LabelStoreError(f"object id {object_id!r} is not a string or an integer")
    oid = str(object_id).strip()
    if not oid:
        raise LabelStoreError("empty object id")
    if len(oid) > MAX_ID_LENGTH or any(ord(c) < 32 for c in oid):
        raise LabelStoreError(f"object id {oid[:40]!r}... is too long or holds control "
                              "characters" if len(oid) > 40 else
                              f"object id {oid!r} holds control characters")
    return oid


def _check_class_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise LabelStoreError(f"label class {name!r} is not a non-empty string")
    name = " ".join(name.split())
    if len(name) > MAX_LABEL_LENGTH or any(ord(c) < 32 for c in name):
        raise LabelStoreError(f"label class {name[:80]!r} is longer than {MAX_LABEL_LENGTH} "
                              "characters or holds control characters")
    return name


def _check_coord(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LabelStoreError(f"{name} {value!r} is not a number") from None
    if math.isnan(v):
        return None
    if not (low <= v <= high):
        raise LabelStoreError(f"{name} {value} is outside {low:g}..{high:g} degrees")
    return v


def _check_round(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise LabelStoreError(f"round {value!r} is not an integer")
    try:
        r = int(value)
    except (TypeError, ValueError):
        raise LabelStoreError(f"round {value!r} is not an integer") from None
    if r != value and not isinstance(value, str) or r < 0:
        raise LabelStoreError(f"round {value!r} is not a non-negative integer")
    return r


def _check_source(value: Any) -> str:
    if value not in SOURCES:
        raise LabelStoreError(f"source {value!r} is not one of {', '.join(SOURCES)}")
    return str(value)


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LabelStoreError(f"{name} {value!r} is not a string")
    return value if value.strip() else None


class LabelStore:
    """The append-only label store in one SQLite file (see the module docstring).

    Parameters
    ----------
    path : path-like
        The store file (created with its folder if missing).
    timeout : float
        Seconds to wait for another process's write lock before a :class:`LabelStoreError`.
    read_only : bool
        Open an existing store for reading only (e.g. a colleague's store on a read-only
        share): nothing is created, and writing raises :class:`LabelStoreError`.

    Examples
    --------
    >>> with LabelStore(tmp / "labels.sqlite") as store:  # doctest: +SKIP
    ...     event = store.add("1237657190370247192", "DAGN candidate", source="query")
    ...     store.current()
    {'1237657190370247192': 'DAGN candidate'}
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0,
                 read_only: bool = False):
        self.path = Path(path).expanduser().absolute()
        self.read_only = bool(read_only)
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise LabelStoreError(f"{self.path}: is a folder, not a label store file")
        if self.read_only:
            self._con = self._open_read_only(timeout)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _describe(self.path, exc, "create the label store's folder") from exc
        try:
            con = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                  check_same_thread=False)
        except sqlite3.Error as exc:
            raise _describe(self.path, exc, "open the label store") from exc
        try:
            self._setup(con)
        except sqlite3.Error as exc:
            con.close()
            raise _describe(self.path, exc, "open the label store for writing") from exc
        except LabelStoreError:
            con.close()
            raise
        self._con = con

    def _open_read_only(self, timeout: float) -> sqlite3.Connection:
        """Open with ``mode=ro``, else with ``immutable=1``.

        ``immutable`` is the fallback where SQLite cannot create the WAL index (a read-only
        folder); it takes no locks, so the file must not change meanwhile.
        """
        if not self.path.is_file():
            raise LabelStoreError(f"{self.path}: no such label store")
        uri = self.path.as_uri()
        last: BaseException | None = None
        for query in ("mode=ro", "mode=ro&immutable=1"):
            try:
                con = sqlite3.connect(f"{uri}?{query}", uri=True, timeout=timeout,
                                      isolation_level=None, check_same_thread=False)
                tables = {r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.Error as exc:
                last = exc
                continue
            if "events" not in tables or "meta" not in tables:
                con.close()
                raise LabelStoreError(f"{self.path}: not a label store (its tables: "
                                      f"{', '.join(sorted(tables)) or 'none'})")
            return con
        assert last is not None
        raise _describe(self.path, last, "open the label store for reading")

    # -- opening ------------------------------------------------------------------------------
    def _setup(self, con: sqlite3.Connection) -> None:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "events" not in tables:
            raise LabelStoreError(f"{self.path}: an SQLite database, but not a label store "
                                  f"(its tables: {', '.join(sorted(tables))})")
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LabelStoreError(f"{self.path}: the file system does not allow SQLite's "
                                  f"write-ahead log (journal mode stays {mode!r})")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                con.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("application", APPLICATION), ("schema", str(SCHEMA_VERSION)),
                    ("created", _utc_now())])
            elif meta.get("application") != APPLICATION:
                raise LabelStoreError(f"{self.path}: not a label store (application "
                                      f"{meta.get('application')!r})")
            elif int(meta.get("schema", "0")) > SCHEMA_VERSION:
                raise LabelStoreError(
                    f"{self.path}: written by a newer SSALD desktop (label store schema "
                    f"{meta['schema']} > {SCHEMA_VERSION}); update the app to open it")
            now = _utc_now()
            con.executemany("INSERT OR IGNORE INTO classes(name, builtin, created) "
                            "VALUES (?, 1, ?)", [(name, now) for name in BUILTIN_LABELS])
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (idempotent). Everything acknowledged is already on disk."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    @property
    def _c(self) -> sqlite3.Connection:
        if self._con is None:
            raise LabelStoreError(f"{self.path}: the label store is closed")
        return self._con

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._c.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _describe(self.path, exc, "read the label store") from exc

    def _write(self, action: str, fn: Any) -> Any:
        """Run ``fn(connection)`` in one ``BEGIN IMMEDIATE`` transaction; commit durably."""
        if self.read_only:
            raise LabelStoreError(f"{self.path}: cannot {action}: the store was opened "
                                  "read-only")
        with self._lock:
            con = self._c
            try:
                con.execute("BEGIN IMMEDIATE")
                result = fn(con)
                con.execute("COMMIT")
                return result
            except BaseException as exc:
                if con.in_transaction:
                    try:
                        con.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, (sqlite3.Error, OSError)):
                    raise _describe(self.path, exc, action) from exc
                raise

    # -- classes ------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """Every label class: the built-in ones first, then user-defined ones by creation."""
        rows = self._read("SELECT name, builtin FROM classes ORDER BY builtin DESC, created, "
                          "rowid")
        builtin = [r[0] for r in rows if r[1]]
        order = {name: i for i, name in enumerate(BUILTIN_LABELS)}
        builtin.sort(key=lambda n: order.get(n, len(order)))
        return builtin + [r[0] for r in rows if not r[1]]

    def add_class(self, name: str) -> str:
        """Add a user-defined label class (kept in the store); returns its canonical name.

        Adding a class that exists (in any letter case) returns the existing name.
        """
        name = _check_class_name(name)
        existing = self._canonical(name)
        if existing is not None:
            return existing

        def insert(con: sqlite3.Connection) -> str:
            con.execute("INSERT OR IGNORE INTO classes(name, builtin, created) VALUES (?, 0, ?)",
                        (name, _utc_now()))
            return name

        return str(self._write(f"add the label class {name!r}", insert))

    def _canonical(self, label: str) -> str | None:
        key = " ".join(label.split()).casefold()
        for name in self.labels():
            if name.casefold() == key:
                return name
        return None

    def canonical_label(self, label: Any) -> str:
        """The stored spelling of ``label``; :class:`UnknownLabelError` if it is no class."""
        if not isinstance(label, str) or not label.strip():
            raise UnknownLabelError(f"label {label!r} is not a non-empty string")
        name = self._canonical(label)
        if name is None:
            raise UnknownLabelError(
                f"unknown label {label!r} in {self.path.name} (known: "
                f"{', '.join(repr(n) for n in self.labels())}; add it as a user-defined class "
                "first)")
        return name

    # -- writing ------------------------------------------------------------------------------
    def _event_row(self, object_id: Any, label: Any, user: str | None, encoder_id: Any,
                   round: Any, source: Any, ra: Any, dec: Any, note: Any,
                   classes: dict[str, str]) -> tuple[Any, ...]:
        oid = _check_object_id(object_id)
        if not isinstance(label, str) or " ".join(label.split()).casefold() not in classes:
            raise UnknownLabelError(
                f"unknown label {label!r} in {self.path.name} (known: "
                f"{', '.join(repr(n) for n in classes.values())}; add it as a user-defined "
                "class first)")
        canon = classes[" ".join(label.split()).casefold()]
        who = _optional_text(user, "user") or _default_user()
        return ("label", oid, canon, None, who, _utc_now(),
                _optional_text(encoder_id, "encoder id"), _check_round(round),
                _check_source(source), _check_coord(ra, "RA", 0.0, 360.0),
                _check_coord(dec, "Dec", -90.0, 90.0), _optional_text(note, "note"))

    def _classes(self) -> dict[str, str]:
        return {name.casefold(): name for name in self.labels()}

    def add(self, object_id: str | int, label: str, user: str | None = None, *,
            encoder_id: str | None = None, round: int | None = None, source: str = "manual",
            ra: float | None = None, dec: float | None = None, note: str | None = None) -> int:
        """Append a label event; return its id once it is durable.

        Parameters
        ----------
        object_id : str or int
            The object (an SDSS objID, a shard id, an image id...).
        label : str
            A class of :meth:`labels` (case-insensitive).
        user : str, optional
            Who labelled it (default: the login name).
        encoder_id, round, source
            Provenance: the encoder that proposed the candidate, the active-learning round,
            and where it came from (``"query"``, ``"sampler"`` or ``"manual"``).
        ra, dec : float, optional
            Position in degrees (J2000/ICRS), kept for exports and cross-matching.
        note : str, optional
            Free text.

        Returns
        -------
        int
            The event id. The commit has completed with ``synchronous = FULL`` in WAL mode
            before this returns, so the event survives a crash from then on.
        """
        row = self._event_row(object_id, label, user, encoder_id, round, source, ra, dec, note,
                              self._classes())
        return int(self._write(f"save the label of {row[1]!r}",
                               lambda con: self._insert(con, [row])[0]))

    def add_many(self, items: Iterable[Mapping[str, Any]], user: str | None = None) -> list[int]:
        """Append several label events in one durable transaction; return their ids.

        Each item is a mapping with ``object_id`` and ``label`` and optionally the keyword
        arguments of :meth:`add`. All items are checked before anything is written.
        """
        classes = self._classes()
        rows = []
        for item in items:
            rows.append(self._event_row(
                item.get("object_id"), item.get("label"), item.get("user", user),
                item.get("encoder_id"), item.get("round"), item.get("source", "manual"),
                item.get("ra"), item.get("dec"), item.get("note"), classes))
        if not rows:
            return []
        return list(self._write(f"save {len(rows)} labels", lambda con: self._insert(con, rows)))

    @staticmethod
    def _insert(con: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        ids = []
        for row in rows:
            cur = con.execute(
                "INSERT INTO events(kind, object_id, label, reverts, user, time, encoder_id, "
                "round, source, ra, dec, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            ids.append(int(cur.lastrowid or 0))
        return ids

    def undo(self, object_id: str | int | None = None, *, user: str | None = None,
             event_id: int | None = None, note: str | None = None) -> int | None:
        """Reverse a label event by appending an undo event; return the undo event's id.

        Without arguments the latest effective label event of the store is reversed (the
        previous label of that object, if any, becomes current again); with ``object_id`` the
        latest effective label of that object; with ``event_id`` that event. Returns None when
        there is nothing to undo. Reversing an event twice, or an undo event, is an error.
        """
        oid = _check_object_id(object_id) if object_id is not None else None
        who = _optional_text(user, "user") or _default_user()

        def do(con: sqlite3.Connection) -> int | None:
            if event_id is not None:
                row = con.execute("SELECT id, kind, object_id, label FROM events WHERE id = ?",
                                  (int(event_id),)).fetchone()
                if row is None:
                    raise LabelStoreError(f"{self.path}: no event {event_id} to undo")
                if row[1] != "label":
                    raise LabelStoreError(f"{self.path}: event {event_id} is an undo, not a "
                                          "label")
                if con.execute("SELECT 1 FROM events WHERE reverts = ?", (row[0],)).fetchone():
                    raise LabelStoreError(f"{self.path}: event {event_id} was already undone")
            else:
                sql = ("SELECT l.id, l.kind, l.object_id, l.label FROM events AS l "
                       "WHERE l.kind = 'label' AND NOT EXISTS (SELECT 1 FROM events AS u "
                       "WHERE u.reverts = l.id)")
                params: tuple[Any, ...] = ()
                if oid is not None:
                    sql += " AND l.object_id = ?"
                    params = (oid,)
                row = con.execute(sql + " ORDER BY l.id DESC LIMIT 1", params).fetchone()
                if row is None:
                    return None
            cur = con.execute(
                "INSERT INTO events(kind, object_id, label, reverts, user, time, source, note) "
                "VALUES ('undo', ?, ?, ?, ?, ?, 'manual', ?)",
                (row[2], row[3], row[0], who, _utc_now(), _optional_text(note, "note")))
            return int(cur.lastrowid or 0)

        result = self._write("save the undo", do)
        return None if result is None else int(result)

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def _event(row: Sequence[Any]) -> LabelEvent:
        return LabelEvent(*row)

    def current(self) -> dict[str, str]:
        """The current label of every labelled object: ``{object_id: label}``."""
        rows = self._read(_EFFECTIVE.format(cols="object_id, label"))
        return {r[0]: r[1] for r in rows}

    def label_of(self, object_id: str | int) -> str | None:
        """The current label of one object, or None."""
        oid = _check_object_id(object_id)
        rows = self._read(
            "SELECT label FROM events AS l WHERE l.object_id = ? AND l.kind = 'label' AND NOT "
            "EXISTS (SELECT 1 FROM events AS u WHERE u.reverts = l.id) ORDER BY l.id DESC "
            "LIMIT 1", (oid,))
        return rows[0][0] if rows else None

    def current_events(self) -> list[LabelEvent]:
        """The effective label event of every labelled object, oldest first."""
        return [self._event(r) for r in self._read(_EFFECTIVE.format(cols=_EVENT_COLUMNS))]

    def history(self, object_id: str | int) -> list[LabelEvent]:
        """Every event of one object (labels and undos), oldest first."""
        oid = _check_object_id(object_id)
        rows = self._read(f"SELECT {_EVENT_COLUMNS} FROM events WHERE object_id = ? ORDER BY id",
                          (oid,))
        return [self._event(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of objects currently holding each label (every class, zeros included)."""
        out = dict.fromkeys(self.labels(), 0)
        for label in self.current().values():
            out[label] = out.get(label, 0) + 1
        return out

    def events_since(self, event_id: int = 0) -> list[LabelEvent]:
        """Every event with an id greater than ``event_id``, oldest first."""
        rows = self._read(f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id",
                          (int(event_id),))
        return [self._event(r) for r in rows]

    def new_labels_since(self, event_id: int = 0) -> int:
        """Label events after ``event_id`` that have not been undone.

        This is the count an active-learning trigger compares with its setting ("fine-tune
        after N new labels"), with ``event_id`` = :meth:`last_event_id` at the last fine-tune.
        """
        rows = self._read(
            "SELECT COUNT(*) FROM events AS l WHERE l.id > ? AND l.kind = 'label' AND NOT "
            "EXISTS (SELECT 1 FROM events AS u WHERE u.reverts = l.id)", (int(event_id),))
        return int(rows[0][0])

    def last_event_id(self) -> int:
        """The id of the latest event (0 for an empty store)."""
        rows = self._read("SELECT COALESCE(MAX(id), 0) FROM events")
        return int(rows[0][0])

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok" for a sound file)."""
        rows = self._read("PRAGMA integrity_check")
        return "; ".join(str(r[0]) for r in rows)

    # -- export / import ----------------------------------------------------------------------
    def to_table(self, labels: Iterable[str] | None = None) -> Table:
        """The current labels with RA/Dec and provenance as an astropy Table.

        Columns are :data:`EXPORT_COLUMNS`. RA/Dec come from the effective event or, when it
        has none, from the latest event of the object that had a position; missing values are
        masked. ``labels`` keeps only those classes.
        """
        from astropy.table import Column, MaskedColumn, Table

        keep = None if labels is None else {self.canonical_label(x) for x in labels}
        events = [e for e in self.current_events() if keep is None or e.label in keep]
        positions: dict[str, tuple[float, float]] = {}
        for oid, ra, dec in self._read("SELECT object_id, ra, dec FROM events WHERE ra IS NOT "
                                       "NULL AND dec IS NOT NULL ORDER BY id"):
            positions[oid] = (ra, dec)
        ras, decs = [], []
        for e in events:
            pos = (e.ra, e.dec) if e.ra is not None and e.dec is not None else positions.get(
                e.object_id)
            ras.append(pos[0] if pos else math.nan)
            decs.append(pos[1] if pos else math.nan)

        def masked(values: list[Any], dtype: str, fill: Any) -> MaskedColumn:
            mask = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
            data = [fill if m else v for v, m in zip(values, mask, strict=True)]
            return MaskedColumn(data, mask=mask, dtype=dtype)

        t = Table()
        t["object_id"] = Column([e.object_id for e in events], dtype=str)
        t["label"] = Column([e.label for e in events], dtype=str)
        t["ra"] = masked(ras, "f8", math.nan)
        t["ra"].unit = "deg"
        t["dec"] = masked(decs, "f8", math.nan)
        t["dec"].unit = "deg"
        t["user"] = Column([e.user for e in events], dtype=str)
        t["time"] = Column([e.time for e in events], dtype=str)
        t["encoder_id"] = Column([e.encoder_id or "" for e in events], dtype=str)
        t["round"] = masked([e.round for e in events], "i8", -1)
        t["source"] = Column([e.source for e in events], dtype=str)
        t["note"] = Column([e.note or "" for e in events], dtype=str)
        t["event_id"] = Column([e.id for e in events], dtype="i8")
        t.meta["origin"] = "SSALD desktop label store"
        t.meta["store"] = str(self.path)
        t.meta["exported"] = _utc_now()
        t.meta["last_event"] = self.last_event_id()
        return t

    def export(self, path: str | os.PathLike[str], *, fmt: str | None = None,
               labels: Iterable[str] | None = None) -> Path:
        """Write :meth:`to_table` as CSV, VOTable or FITS (see :func:`write_table`)."""
        return write_table(self.to_table(labels), path, fmt=fmt)

    def import_csv(self, path: str | os.PathLike[str], *, user: str | None = None,
                   source: str = "manual", skip_unchanged: bool = True) -> tuple[int, int]:
        """Append the labels of a CSV file; return ``(added, skipped)``.

        The file needs a header with ``object_id`` (or ``id``/``objid``) and ``label``;
        ``ra``, ``dec``, ``user``, ``encoder_id``, ``round``, ``source`` and ``note`` are
        optional (an exported label file imports as is). Every line is checked before anything
        is written (one transaction); an error names the file and line. With
        ``skip_unchanged`` a row whose label is already the object's current label is skipped,
        so importing a file twice adds nothing the second time.
        """
        p = Path(path)
        items = _read_label_csv(p, self._classes(), user=user, source=source)
        current = self.current() if skip_unchanged else {}
        todo = []
        seen: dict[str, str] = {}
        for item in items:
            oid = item["object_id"]
            if skip_unchanged and seen.get(oid, current.get(oid)) == item["label"]:
                continue
            seen[oid] = item["label"]
            todo.append(item)
        self.add_many(todo)
        return len(todo), len(items) - len(todo)


# -- CSV import -----------------------------------------------------------------------------------
_ID_NAMES = ("object_id", "id", "objid", "obj_id")


def _read_label_csv(path: Path, classes: dict[str, str], *, user: str | None,
                    source: str) -> list[dict[str, Any]]:
    """Read and check every row of a label CSV file (see :meth:`LabelStore.import_csv`)."""
    _check_source(source)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelStoreError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise LabelStoreError(f"{path}: not a UTF-8 text file ({exc.reason} at byte "
                              f"{exc.start})") from None
    except OSError as exc:
        raise LabelStoreError(f"{path}: cannot read the file ({exc.strerror})") from None
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise LabelStoreError(f"{path}: empty file (expected a header with object_id and "
                              "label)") from None
    except csv.Error as exc:
        raise LabelStoreError(f"{path}, line 1: {exc}") from None
    cols = [h.strip().lower() for h in header]
    id_col = next((cols.index(n) for n in _ID_NAMES if n in cols), None)
    if id_col is None or "label" not in cols:
        raise LabelStoreError(f"{path}, line 1: the header needs an object_id (or id) column "
                              f"and a label column; found {', '.join(header) or 'nothing'}")
    index: dict[str, int] = {name: cols.index(name) for name in
             ("label", "ra", "dec", "user", "encoder_id", "round", "source", "note")
             if name in cols}
    items: list[dict[str, Any]] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise LabelStoreError(f"{path}, line {line}: {len(row)} fields where the header "
                                      f"has {len(header)}")

            def get(name: str, row: list[str] = row) -> str | None:
                i: int | None = index.get(name)
                value = row[i].strip() if i is not None else ""
                return value if value and value.lower() not in ("nan", "--", "null") else None

            try:
                label = get("label")
                key = " ".join((label or "").split()).casefold()
                if key not in classes:
                    raise UnknownLabelError(
                        f"unknown label {label!r} (known: "
                        f"{', '.join(repr(n) for n in classes.values())})")
                items.append({
                    "object_id": _check_object_id(row[id_col]),
                    "label": classes[key],
                    "user": get("user") or user,
                    "encoder_id": get("encoder_id"),
                    "round": _check_round(get("round")),
                    "source": _check_source(get("source") or source),
                    "ra": _check_coord(get("ra"), "RA", 0.0, 360.0),
                    "dec": _check_coord(get("dec"), "Dec", -90.0, 90.0),
                    "note": get("note"),
                })
            except LabelStoreError as exc:
                raise type(exc)(f"{path}, line {line}: {exc}") from None
    except csv.Error as exc:
        raise LabelStoreError(f"{path}, line {reader.line_num}: {exc}") from None
    return items


# -- tables -------------------------------------------------------------------------------------
_FORMATS = {".csv": "ascii.csv", ".vot": "votable", ".votable": "votable", ".xml": "votable",
            ".fits": "fits", ".fit": "fits", ".fts": "fits"}


def table_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The astropy writer for ``path``: ``csv``, ``votable`` or ``fits`` by name or suffix."""
    if fmt is not None:
        key = fmt.lower()
        aliases = {"csv": "ascii.csv", "votable": "votable", "vot": "votable", "xml": "votable",
                   "fits": "fits"}
        if key not in aliases:
            raise LabelStoreError(f"export format {fmt!r} is not csv, votable or fits")
        return aliases[key]
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise LabelStoreError(f"{path}: cannot tell the format from the suffix {suffix!r} "
                              "(use .csv, .vot/.xml or .fits, or give the format)")
    return _FORMATS[suffix]


def write_table(table: Table, path: str | os.PathLike[str], *, fmt: str | None = None) -> Path:
    """Write an astropy table as CSV, VOTable or FITS (astropy.io.ascii/votable/fits).

    The file is written beside its destination and moved into place, so a failed write never
    leaves a half-written export. Long metadata keys are shortened for FITS headers.
    """
    import warnings

    out = Path(path)
    writer = table_format(out, fmt)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    t = table.copy(copy_data=False)
    if writer == "fits":
        t.meta = {k.upper()[:8]: v for k, v in table.meta.items()
                  if isinstance(v, (str, int, float))}
    elif writer == "ascii.csv":
        t.meta = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # VOTable/FITS notes about masked or long keys
            t.write(tmp, format=writer, overwrite=True)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LabelStoreError(f"{out}: cannot write the export ({exc.strerror or exc})") from exc
    return out


#: Preferred column order of :func:`candidates_table`.
CANDIDATE_COLUMNS: tuple[str, ...] = ("object_id", "ra", "dec", "score", "label", "source",
                                      "encoder_id", "round", "reason")


def candidates_table(candidates: Iterable[Mapping[str, Any]],
                     labels: Mapping[str, str] | None = None) -> Table:
    """A candidate list as an astropy Table (for export and SAMP).

    Parameters
    ----------
    candidates : iterable of mappings
        Each with ``object_id`` (or ``id``) and any of ``ra``, ``dec`` (deg), ``score``,
        ``label``, ``source``, ``encoder_id``, ``round``, ``reason`` and further keys (kept as
        extra columns). Missing values are masked.
    labels : mapping, optional
        Current labels (:meth:`LabelStore.current`), used where a candidate has no ``label``.
    """
    from astropy.table import MaskedColumn, Table

    rows = [dict(c) for c in candidates]
    for i, r in enumerate(rows):
        if "object_id" not in r:
            if "id" not in r:
                raise LabelStoreError(f"candidate {i} has no object_id")
            r["object_id"] = r.pop("id")
        r["object_id"] = _check_object_id(r["object_id"])
        if labels is not None and not r.get("label"):
            r["label"] = labels.get(r["object_id"])
    extra = sorted({k for r in rows for k in r} - set(CANDIDATE_COLUMNS))
    t = Table()
    for name in (*CANDIDATE_COLUMNS, *extra):
        values = [r.get(name) for r in rows]
        if name != "object_id" and all(v is None for v in values):
            continue
        present = [v for v in values if v is not None]
        mask = [v is None for v in values]
        if name in ("ra", "dec", "score") or (present and all(
                isinstance(v, float) for v in present)):
            data = [math.nan if v is None else float(v) for v in values]
            nan_mask = [m or math.isnan(d) for m, d in zip(mask, data, strict=True)]
            col = MaskedColumn(data, mask=nan_mask, dtype="f8", name=name)
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            col = MaskedColumn([-1 if v is None else v for v in values], mask=mask, dtype="i8",
                               name=name)
        else:
            col = MaskedColumn(["" if v is None else str(v) for v in values], mask=mask,
                               dtype=str, name=name)
        t.add_column(col)
    if "ra" in t.colnames:
        t["ra"].unit = "deg"
    if "dec" in t.colnames:
        t["dec"].unit = "deg"
    t.meta["origin"] = "SSALD desktop candidates"
    t.meta["exported"] = _utc_now()
    return t
