"""Cutout shards and the resumable miner.

The miner turns a galaxy list (a CSV of positions/objIDs, or an SDSS selection built from
validated numbers) into shards of WCS-aligned cutouts:

1. **Locate**: every galaxy is assigned to one SDSS field (from the list's run/camcol/field
   columns when present, else by footprint: a local mirror's WCS, or SDSS field lookup).
2. **Group**: galaxies are grouped by field, so each field is downloaded and opened once.
3. **Cut**: a small pool of worker threads (the concurrency limit, which is also how polite the
   miner is to the SDSS server) opens one field each and cuts its galaxies in batches.
4. **Write**: one writer fills fixed-size shards (HDF5 for the desktop, TFRecord for training
   on TPUs) with the NormSpec stored in every shard. A shard is written to a temporary name,
   flushed and renamed; only then are its objects recorded, in one SQLite transaction, in the
   manifest. After a crash the orphan shard (renamed but not recorded) is removed and its
   objects are cut again, so a resumed run never duplicates or loses an object.

Memory is bounded by the shard size plus one batch per worker (a bounded queue gives the
workers back-pressure), whatever the number of galaxies; shards are spread over sub-folders of
1000 so that 10M cutouts (10,000 shards of 1024) stay manageable on disk. In float32 a
five-band 64x64 cutout is 80 KiB, so 1M cutouts take ~80 GB and 10M ~800 GB; ``float16``
halves that (SDSS pixel values in nanomaggies keep 3 significant digits, below the noise).
"""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from ssald_desktop.core.cutouts import CutoutEngine, NormSpec
from ssald_desktop.core.errors import DataFileError, InvalidQueryError, SsaldError
from ssald_desktop.core.frames import FieldId, FrameSet, open_frame_set, parse_frame_name

FORMATS = ("h5", "tfrecord")
MANIFEST = "manifest.sqlite"


# --------------------------------------------------------------------------------------------
# Galaxy lists
# --------------------------------------------------------------------------------------------

_ID_COLUMNS = ("objid", "obj_id", "id", "name", "specobjid")
_RA_COLUMNS = ("ra", "raj2000", "ra_deg")
_DEC_COLUMNS = ("dec", "dej2000", "decj2000", "dec_deg")
_PETRO_COLUMNS = ("petrorad_r", "petro_r", "petror", "petro_radius")


def _pick(names: Sequence[str], options: Sequence[str]) -> str | None:
    lower = {n.lower(): n for n in names}
    for o in options:
        if o in lower:
            return lower[o]
    return None


def position_id(ra: float, dec: float) -> str:
    """An IAU-style identifier ``Jddd.ddddd+dd.ddddd`` for a position without an objID."""
    return f"J{ra:09.5f}{dec:+09.5f}"


def read_galaxy_list(path: str | Path) -> Table:
    """Read a CSV of galaxies into a table with ``id``, ``ra``, ``dec`` (+ optional columns).

    Recognised columns (any case): an id (``objID``, ``id``, ``name``...), ``ra``/``dec`` in
    degrees or sexagesimal (hours for RA), ``petroRad_r`` (arcsec) and ``run``, ``camcol``,
    ``field`` (which save the field lookup).

    Raises
    ------
    DataFileError
        The file is missing, not a CSV, or lacks RA/Dec columns.
    InvalidQueryError
        A row's position is not a valid sky position (names the row and value).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"{path}: not a readable CSV file ({exc})") from exc
    if not rows:
        raise DataFileError(f"{path}: no rows")
    names = list(rows[0].keys())
    ra_col, dec_col = _pick(names, _RA_COLUMNS), _pick(names, _DEC_COLUMNS)
    if ra_col is None or dec_col is None:
        raise DataFileError(f"{path}: needs 'ra' and 'dec' columns, found {', '.join(names)}")
    id_col = _pick(names, _ID_COLUMNS)
    petro_col = _pick(names, _PETRO_COLUMNS)
    field_cols = [_pick(names, (c,)) for c in ("run", "camcol", "field")]
    ras, decs = [], []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        ra_s, dec_s = (row[ra_col] or "").strip(), (row[dec_col] or "").strip()
        try:
            ra, dec = float(ra_s), float(dec_s)
        except ValueError:
            try:
                c = SkyCoord(ra_s, dec_s, unit=("hourangle", "deg"))
                ra, dec = float(c.ra.deg), float(c.dec.deg)
            except ValueError as exc:
                raise InvalidQueryError(
                    f"{path}, line {i}: not a sky position: RA={ra_s!r} Dec={dec_s!r}"
                ) from exc
        if not (math.isfinite(ra) and math.isfinite(dec) and 0 <= ra < 360 and -90 <= dec <= 90):
            raise InvalidQueryError(f"{path}, line {i}: position out of range: RA={ra} Dec={dec}")
        ras.append(ra)
        decs.append(dec)
    ids = [(row[id_col] or "").strip() if id_col else "" for row in rows]
    ids = [i or position_id(r, d) for i, r, d in zip(ids, ras, decs, strict=True)]
    t = Table({"id": ids, "ra": np.array(ras), "dec": np.array(decs)})
    if petro_col is not None:
        t["petro_r"] = [float(row[petro_col]) if row[petro_col] else np.nan for row in rows]
    if all(field_cols):
        try:
            t["run"] = [int(row[field_cols[0]]) for row in rows]  # type: ignore[index]
            t["camcol"] = [int(row[field_cols[1]]) for row in rows]  # type: ignore[index]
            t["field"] = [int(row[field_cols[2]]) for row in rows]  # type: ignore[index]
        except ValueError as exc:
            raise InvalidQueryError(f"{path}: run/camcol/field must be integers ({exc})") from exc
    return t


def _finite(name: str, value: Any, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidQueryError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise InvalidQueryError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return v


def galaxy_selection_sql(
    ra_min: float,
    ra_max: float,
    dec_min: float,
    dec_max: float,
    r_max: float = 17.77,
    r_min: float = 10.0,
    limit: int = 10000,
    spectroscopic: bool = False,
) -> str:
    """SQL for SDSS galaxies in an RA/Dec box, built only from validated numbers.

    Selects ``PhotoPrimary`` galaxies (``type = 3``) with ``petroMag_r`` in
    ``[r_min, r_max]`` (17.77 is the SDSS main galaxy sample limit, Strauss et al. 2002),
    with run/camcol/field so the miner needs no field lookup, and the spectroscopic redshift
    where one exists (``spectroscopic`` keeps only those).
    """
    ra0 = _finite("ra_min", ra_min, 0, 360)
    ra1 = _finite("ra_max", ra_max, 0, 360)
    d0 = _finite("dec_min", dec_min, -90, 90)
    d1 = _finite("dec_max", dec_max, -90, 90)
    m0 = _finite("r_min", r_min, 0, 30)
    m1 = _finite("r_max", r_max, 0, 30)
    if not (ra0 < ra1 and d0 < d1 and m0 < m1):
        raise InvalidQueryError("need ra_min < ra_max, dec_min < dec_max and r_min < r_max")
    if (
        isinstance(limit, bool)
        or not isinstance(limit, (int, np.integer))
        or not 0 < limit <= 10**7
    ):
        raise InvalidQueryError(f"limit must be an integer in 1..1e7, got {limit!r}")
    join = "JOIN" if spectroscopic else "LEFT JOIN"
    return (
        f"SELECT TOP {int(limit)} p.objID AS objid, p.ra, p.dec, p.run, p.camcol, p.field, "
        "p.petroMag_r, p.petroRad_r, s.z "
        f"FROM PhotoPrimary AS p {join} SpecObj AS s ON s.bestObjID = p.objID "
        f"WHERE p.type = 3 AND p.ra BETWEEN {ra0!r} AND {ra1!r} "
        f"AND p.dec BETWEEN {d0!r} AND {d1!r} "
        f"AND p.petroMag_r BETWEEN {m0!r} AND {m1!r} "
        "ORDER BY p.objID"
    )


def query_galaxy_selection(sql: str, timeout: float = 15.0, data_release: int = 17) -> Table:
    """Run an SQL built by :func:`galaxy_selection_sql` on SkyServer (astroquery)."""
    from astroquery.sdss import SDSS  # lazy: keeps astroquery out of the GUI start-up

    SDSS.TIMEOUT = timeout
    try:
        result = SDSS.query_sql(sql, timeout=timeout, data_release=data_release)
    except Exception as exc:  # requests/astroquery raise many types
        raise SsaldError(f"SDSS SkyServer query failed within {timeout:g} s: {exc}") from exc
    if result is None or len(result) == 0:
        raise InvalidQueryError("the SDSS selection returned no galaxies")
    out = Table({"id": [str(v) for v in result["objid"]], "ra": result["ra"], "dec": result["dec"]})
    for c in ("run", "camcol", "field"):
        out[c] = np.asarray(result[c], dtype=int)
    out["petro_r"] = np.asarray(result["petroRad_r"], dtype=float)
    return out


# --------------------------------------------------------------------------------------------
# Where the frames come from
# --------------------------------------------------------------------------------------------


class FieldSource(Protocol):
    """Locates galaxies in SDSS fields and opens those fields."""

    def locate(self, ra: np.ndarray, dec: np.ndarray, margin_px: float) -> list[FieldId | None]:
        """The field of each position (None when no field covers it)."""
        ...

    def open(self, field_id: FieldId) -> FrameSet:
        """Open (downloading if needed) one field."""
        ...


@dataclass
class _MirrorField:
    field_id: FieldId
    folder: Path
    wcs: Any
    shape: tuple[int, int]


class LocalMirror:
    """Frame sets on local disk: a folder of field folders (e.g. the SDSS cache or a copy).

    Only the r-band headers are read to locate galaxies; a field is opened when it is cut.
    """

    def __init__(self, root: str | Path, bands: Sequence[str] | None = None):
        from astropy.io import fits
        from astropy.wcs import WCS

        self.root = Path(root)
        self.bands = tuple(bands) if bands else None
        if not self.root.is_dir():
            raise DataFileError(f"{self.root}: no such folder")
        self.fields: dict[FieldId, _MirrorField] = {}
        for path in sorted(self.root.rglob("frame-r-*.fits*")):
            parsed = parse_frame_name(path.name)
            if parsed is None:
                continue
            try:
                header = fits.getheader(path, 0)
            except (OSError, ValueError) as exc:
                raise DataFileError(f"{path}: not a readable FITS file ({exc})") from exc
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            self.fields[parsed[1]] = _MirrorField(parsed[1], path.parent, WCS(header), shape)
        if not self.fields:
            raise DataFileError(f"{self.root}: no SDSS frame sets (frame-r-*.fits*) found")

    def locate(self, ra: np.ndarray, dec: np.ndarray, margin_px: float) -> list[FieldId | None]:
        """Assign each position to the field where it lies deepest inside."""
        ra = np.asarray(ra, float)
        dec = np.asarray(dec, float)
        best = np.full(len(ra), -np.inf)
        out: list[FieldId | None] = [None] * len(ra)
        for f in self.fields.values():
            x, y = f.wcs.all_world2pix(ra, dec, 0)
            rows, cols = f.shape
            depth = np.minimum.reduce([x + 0.5, cols - 0.5 - x, y + 0.5, rows - 0.5 - y])
            # Bands are offset by up to ~11 px: keep 12 px in hand beyond the margin.
            ok = (depth >= margin_px + 12) & (depth > best)
            for i in np.nonzero(ok)[0]:
                out[i] = f.field_id
            best = np.where(ok, depth, best)
        return out

    def open(self, field_id: FieldId) -> FrameSet:
        """Open one field of the mirror."""
        if field_id not in self.fields:
            raise DataFileError(f"field {field_id} is not in the local mirror {self.root}")
        return open_frame_set(self.fields[field_id].folder, bands=self.bands)


class SDSSSource:
    """Fields from the SDSS Science Archive Server through :mod:`ssald_desktop.core.sky`.

    Downloads are cached (a field fetched once opens offline) and limited by the miner's
    worker count. Positions without run/camcol/field are looked up one by one.
    """

    def __init__(self, client: Any = None, bands: Sequence[str] = ("u", "g", "r", "i", "z")):
        from ssald_desktop.core import sky

        self.client = client if client is not None else sky.SDSSClient()
        self.bands = "".join(bands)

    def locate(self, ra: np.ndarray, dec: np.ndarray, margin_px: float) -> list[FieldId | None]:
        """Look up the fields of positions (one SDSS query each)."""
        out: list[FieldId | None] = []
        for r, d in zip(ra, dec, strict=True):
            fields = self.client.find_fields(SkyCoord(r, d, unit="deg"))
            out.append(fields[0] if fields else None)
        return out

    def open(self, field_id: FieldId) -> FrameSet:
        """Fetch (or take from the cache) and open one field."""
        folder = self.client.fetch_field(field_id, bands=self.bands)
        return open_frame_set(folder)


# --------------------------------------------------------------------------------------------
# Manifest and shard writers
# --------------------------------------------------------------------------------------------


class Manifest:
    """The miner's durable record: which objects are done, skipped or failed, and where.

    SQLite in WAL mode with ``synchronous=FULL``; a shard and its objects are recorded in one
    transaction, after the shard file is complete on disk.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, ra REAL, dec REAL, "
                "field TEXT, status TEXT, shard INTEGER, row INTEGER, message TEXT)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, count INTEGER, "
                "files TEXT, created REAL)"
            )

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def get_meta(self, key: str) -> str | None:
        """One metadata value."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set one metadata value."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def finished_ids(self) -> set[str]:
        """Objects that need no more work (cut, or skipped for a lasting reason)."""
        rows = self.db.execute("SELECT id FROM objects WHERE status != 'error'")
        return {r[0] for r in rows}

    def next_shard(self) -> int:
        """The number of the next shard."""
        row = self.db.execute("SELECT MAX(shard) FROM shards").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def recorded_shards(self) -> set[int]:
        """Shards whose objects are recorded."""
        return {int(r[0]) for r in self.db.execute("SELECT shard FROM shards")}

    def record_shard(
        self,
        shard: int,
        files: Sequence[str],
        ids: Sequence[str],
        ra: np.ndarray,
        dec: np.ndarray,
        fields: Sequence[str],
    ) -> None:
        """Record a complete shard and its objects atomically."""
        with self.db:
            self.db.execute(
                "INSERT INTO shards VALUES (?, ?, ?, ?)",
                (shard, len(ids), json.dumps(list(files)), time.time()),
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, 'done', ?, ?, NULL)",
                [
                    (i, float(r), float(d), f, shard, k)
                    for k, (i, r, d, f) in enumerate(zip(ids, ra, dec, fields, strict=True))
                ],
            )

    def record_skipped(
        self,
        status: str,
        ids: Sequence[str],
        ra: Sequence[float] | np.ndarray,
        dec: Sequence[float] | np.ndarray,
        field_name: str | None,
        message: str,
    ) -> None:
        """Record objects that were not cut (``outside``, ``masked`` or ``error``)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, NULL, NULL, ?)",
                [
                    (i, float(r), float(d), field_name, status, message)
                    for i, r, d in zip(ids, ra, dec, strict=True)
                ],
            )

    def counts(self) -> dict[str, int]:
        """Number of objects by status."""
        return {
            s: int(n)
            for s, n in self.db.execute("SELECT status, COUNT(*) FROM objects GROUP BY status")
        }


def shard_path(out_dir: Path, fmt: str, shard: int) -> Path:
    """``OUT/h5/000/shard-000000.h5``: 1000 shards a folder."""
    ext = "h5" if fmt == "h5" else "tfrecord"
    return out_dir / fmt / f"{shard // 1000:03d}" / f"shard-{shard:06d}.{ext}"


def _fsync_rename(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


@dataclass
class ShardBuffer:
    """Cutouts gathered for one shard."""

    ids: list[str] = field(default_factory=list)
    ra: list[float] = field(default_factory=list)
    dec: list[float] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    petro: list[float] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    rgb: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int) -> ShardBuffer:
        """Remove and return the first ``n`` cutouts."""
        out = ShardBuffer(
            self.ids[:n],
            self.ra[:n],
            self.dec[:n],
            self.fields[:n],
            self.petro[:n],
            self.images[:n],
            self.masks[:n],
            self.rgb[:n],
        )
        for name in ("ids", "ra", "dec", "fields", "petro", "images", "masks", "rgb"):
            setattr(self, name, getattr(self, name)[n:])
        return out


def write_h5_shard(path: Path, buf: ShardBuffer, spec: NormSpec, dtype: str = "float32") -> None:
    """Write one HDF5 shard (atomically: temporary name, fsync, rename).

    Datasets: ``images`` (N, bands, n, n) in nanomaggies, ``masks`` (N, bands, n, n) bool,
    ``rgb`` (N, n, n, 3) uint8 Lupton composites, ``id``, ``ra``, ``dec``, ``field``,
    ``petro_r``; attributes ``normspec`` (JSON), ``normspec_digest``, ``bands``.
    """
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = spec.output_size
    with h5py.File(tmp, "w") as h:
        h.attrs["normspec"] = spec.to_json()
        h.attrs["normspec_digest"] = spec.digest()
        h.attrs["bands"] = "".join(spec.bands)
        h.attrs["format_version"] = 1
        h.create_dataset(
            "images",
            data=np.stack(buf.images).astype(dtype),
            chunks=(1, len(spec.bands), n, n),
            compression="lzf",
        )
        h.create_dataset(
            "masks", data=np.stack(buf.masks), chunks=(1, len(spec.bands), n, n), compression="lzf"
        )
        h.create_dataset("rgb", data=np.stack(buf.rgb), chunks=(1, n, n, 3), compression="lzf")
        str_t = h5py.string_dtype()
        h.create_dataset("id", data=np.array(buf.ids, dtype=object), dtype=str_t)
        h.create_dataset("field", data=np.array(buf.fields, dtype=object), dtype=str_t)
        h.create_dataset("ra", data=np.array(buf.ra))
        h.create_dataset("dec", data=np.array(buf.dec))
        h.create_dataset("petro_r", data=np.array(buf.petro))
    _fsync_rename(tmp, path)


def write_tfrecord_shard(
    path: Path, buf: ShardBuffer, spec: NormSpec, dtype: str = "float32"
) -> None:
    """Write one TFRecord shard of ``tf.train.Example`` records (atomically).

    Features: ``image`` (raw bytes of a (bands, n, n) array of ``dtype``), ``mask`` (raw
    uint8), ``rgb`` (raw uint8 (n, n, 3)), ``id``, ``field`` (bytes), ``ra``, ``dec``,
    ``petro_r`` (float), ``shape`` (int64 [bands, n, n]) and ``normspec_digest`` (bytes). The
    full NormSpec is in the manifest and in ``normspec.json`` beside the shards.
    """
    import tensorflow as tf  # lazy: only the TFRecord writer needs TensorFlow

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    digest = spec.digest().encode()

    def b(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def f(v: float) -> Any:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[v]))

    with tf.io.TFRecordWriter(str(tmp)) as w:
        for k in range(len(buf)):
            img = np.ascontiguousarray(buf.images[k].astype(dtype))
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": b(img.tobytes()),
                        "mask": b(np.ascontiguousarray(buf.masks[k], dtype=np.uint8).tobytes()),
                        "rgb": b(np.ascontiguousarray(buf.rgb[k]).tobytes()),
                        "shape": tf.train.Feature(
                            int64_list=tf.train.Int64List(value=list(img.shape))
                        ),
                        "id": b(buf.ids[k].encode()),
                        "field": b(buf.fields[k].encode()),
                        "ra": f(buf.ra[k]),
                        "dec": f(buf.dec[k]),
                        "petro_r": f(buf.petro[k]),
                        "normspec_digest": b(digest),
                    }
                )
            )
            w.write(ex.SerializeToString())
    _fsync_rename(tmp, path)


def read_h5_shards(out_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the contents of every HDF5 shard of a mined dataset, in shard order."""
    import h5py

    for p in sorted(Path(out_dir).glob("h5/*/shard-*.h5")):
        with h5py.File(p, "r") as h:
            yield {
                "path": p,
                "normspec": NormSpec.from_json(h.attrs["normspec"]),
                "images": h["images"][...],
                "masks": h["masks"][...],
                "rgb": h["rgb"][...],
                "id": [x.decode() if isinstance(x, bytes) else str(x) for x in h["id"][...]],
                "ra": h["ra"][...],
                "dec": h["dec"][...],
                "field": [x.decode() if isinstance(x, bytes) else str(x) for x in h["field"][...]],
            }


# --------------------------------------------------------------------------------------------
# The miner
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MineProgress:
    """Progress of a mining run, yielded after every batch."""

    done: int
    total: int
    fields_done: int
    fields_total: int
    skipped: int
    shards: int
    message: str = ""

    @property
    def fraction(self) -> float:
        """Done fraction in 0..1."""
        return 1.0 if self.total == 0 else self.done / self.total


@dataclass
class _Batch:
    field: str
    ids: list[str]
    ra: np.ndarray
    dec: np.ndarray
    petro: np.ndarray
    data: np.ndarray | None = None
    mask: np.ndarray | None = None
    rgb: np.ndarray | None = None
    status: str = "done"
    message: str = ""
    last: bool = False


class Miner:
    """Mine a galaxy list into cutout shards. See the module docstring.

    Parameters
    ----------
    out_dir : path-like
        Output folder: ``manifest.sqlite``, ``normspec.json``, ``h5/``, ``tfrecord/``.
    source : FieldSource
        Where frames come from (:class:`LocalMirror` or :class:`SDSSSource`).
    spec : NormSpec
        Cut and normalisation; a resumed run must use the same spec.
    formats : sequence of {"h5", "tfrecord"}
        Shard formats to write.
    shard_size : int
        Cutouts per shard.
    workers : int
        Fields processed at once (also the limit on concurrent downloads).
    max_masked_fraction : float
        Cutouts with more masked pixels than this are skipped (status ``masked``).
    dtype : {"float32", "float16"}
        Pixel type of the stored images.
    """

    def __init__(
        self,
        out_dir: str | Path,
        source: FieldSource,
        spec: NormSpec | None = None,
        formats: Sequence[str] = ("h5",),
        shard_size: int = 1024,
        workers: int = 2,
        max_masked_fraction: float = 0.2,
        dtype: str = "float32",
        batch: int = 128,
    ):
        self.out_dir = Path(out_dir)
        self.source = source
        self.spec = spec or NormSpec()
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ValueError(f"formats must be among {FORMATS}, got {list(formats)}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        if shard_size < 1 or workers < 1 or batch < 1:
            raise ValueError("shard_size, workers and batch must be positive")
        self.formats = tuple(formats)
        self.shard_size = int(shard_size)
        self.workers = int(workers)
        self.max_masked_fraction = float(max_masked_fraction)
        self.dtype = dtype
        self.batch = int(batch)
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Ask a running :meth:`run` to stop after the batches in flight (resumable)."""
        self._stop.set()

    # -- set-up --------------------------------------------------------------------------
    def _open_manifest(self) -> Manifest:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(self.out_dir / MANIFEST)
        stored = manifest.get_meta("normspec")
        if stored is None:
            manifest.set_meta("normspec", self.spec.to_json())
            manifest.set_meta("formats", json.dumps(self.formats))
            manifest.set_meta("dtype", self.dtype)
            (self.out_dir / "normspec.json").write_text(self.spec.to_json() + "\n")
        elif NormSpec.from_json(stored) != self.spec:
            manifest.close()
            raise SsaldError(
                f"{self.out_dir}: this dataset was mined with another NormSpec "
                f"({NormSpec.from_json(stored).digest()}, now {self.spec.digest()}); "
                "use a new output folder"
            )
        self._remove_orphans(manifest)
        return manifest

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Delete shard files a crash left behind (complete or not, but not recorded)."""
        recorded = manifest.recorded_shards()
        for fmt in FORMATS:
            for p in self.out_dir.glob(f"{fmt}/*/shard-*"):
                stem = p.name.split(".")[0]
                number = int(stem.split("-")[1])
                if p.name.endswith(".tmp") or number not in recorded:
                    p.unlink()

    def _locate(self, galaxies: Table) -> dict[FieldId | None, list[int]]:
        groups: dict[FieldId | None, list[int]] = defaultdict(list)
        has_fields = all(c in galaxies.colnames for c in ("run", "camcol", "field"))
        if has_fields:
            for i, row in enumerate(galaxies):
                groups[FieldId(int(row["run"]), int(row["camcol"]), int(row["field"]))].append(i)
            return groups
        margin = self.spec.output_size / 2.0 if self.spec.size_unit == "pixel" else 0.0
        located = self.source.locate(
            np.asarray(galaxies["ra"]), np.asarray(galaxies["dec"]), margin
        )
        for i, fid in enumerate(located):
            groups[fid].append(i)
        return groups

    # -- work ----------------------------------------------------------------------------
    def _cut_field(self, fid: FieldId, rows: Table, out: queue.Queue) -> None:
        """Worker: open one field and put its cut batches on the queue."""
        ids = [str(x) for x in rows["id"]]
        ra = np.asarray(rows["ra"], float)
        dec = np.asarray(rows["dec"], float)
        petro = (
            np.asarray(rows["petro_r"], float)
            if "petro_r" in rows.colnames
            else np.full(len(rows), np.nan)
        )
        name = str(fid)
        sent = 0  # objects of (the inside part of) this field already on the queue
        try:
            if self._stop.is_set():
                return
            frame_set = self.source.open(fid)
            engine = CutoutEngine(frame_set, self.spec)
            inside = frame_set.contains(SkyCoord(ra, dec, unit="deg"))
            if not inside.all():
                o = ~inside
                outside = _Batch(
                    name,
                    [i for i, k in zip(ids, o, strict=True) if k],
                    ra[o],
                    dec[o],
                    petro[o],
                    status="outside",
                    message=f"outside field {name}",
                )
                ids = [i for i, k in zip(ids, inside, strict=True) if k]
                ra, dec, petro = ra[inside], dec[inside], petro[inside]
                out.put(outside)
            pr = petro if self.spec.size_unit == "petrosian" else None
            for sl, data, mask, rgb in engine.iter_cutouts(ra, dec, pr, batch=self.batch):
                if self._stop.is_set():
                    return
                out.put(_Batch(name, ids[sl], ra[sl], dec[sl], petro[sl], data, mask, rgb))
                sent = sl.stop
        except Exception as exc:  # noqa: BLE001 - any failure of one field is recorded, not lost
            # Only the objects not yet sent: those already cut may sit in a recorded shard.
            message = str(exc) if isinstance(exc, SsaldError) else f"{type(exc).__name__}: {exc}"
            out.put(
                _Batch(
                    name,
                    ids[sent:],
                    ra[sent:],
                    dec[sent:],
                    petro[sent:],
                    status="error",
                    message=message,
                )
            )
        finally:
            out.put(_Batch(name, [], np.zeros(0), np.zeros(0), np.zeros(0), last=True))

    def _flush(self, manifest: Manifest, buf: ShardBuffer, shard: int) -> None:
        files = []
        for fmt in self.formats:
            path = shard_path(self.out_dir, fmt, shard)
            if fmt == "h5":
                write_h5_shard(path, buf, self.spec, self.dtype)
            else:
                write_tfrecord_shard(path, buf, self.spec, self.dtype)
            files.append(str(path.relative_to(self.out_dir)))
        manifest.record_shard(
            shard, files, buf.ids, np.array(buf.ra), np.array(buf.dec), buf.fields
        )

    def run(self, galaxies: Table) -> Iterator[MineProgress]:
        """Mine ``galaxies`` (columns id, ra, dec[, petro_r, run, camcol, field]).

        A generator: it yields a :class:`MineProgress` after every batch and can be stopped
        (``close()`` or :meth:`cancel`); what was written stays valid and a later run with the
        same output folder resumes where this one stopped.
        """
        self._stop.clear()
        manifest = self._open_manifest()
        try:
            yield from self._run(manifest, galaxies)
        finally:
            self._stop.set()
            manifest.close()

    def _run(self, manifest: Manifest, galaxies: Table) -> Iterator[MineProgress]:
        _, first = np.unique(np.asarray(galaxies["id"], dtype=str), return_index=True)
        galaxies = galaxies[np.sort(first)]  # one entry per id, in input order
        finished = manifest.finished_ids()
        todo = galaxies[[str(i) not in finished for i in galaxies["id"]]]
        total = len(galaxies)
        done = total - len(todo)
        skipped = 0
        shard = manifest.next_shard()
        located = self._locate(todo) if len(todo) else {}
        outside = located.pop(None, [])
        groups = {fid: idx for fid, idx in located.items() if fid is not None}
        if outside:
            rows = todo[outside]
            manifest.record_skipped(
                "outside",
                [str(i) for i in rows["id"]],
                rows["ra"],
                rows["dec"],
                None,
                "no field covers this position with the cutout inside it",
            )
            done += len(outside)
            skipped += len(outside)
        fields_total = len(groups)
        fields_done = 0

        def progress(message: str) -> MineProgress:
            return MineProgress(done, total, fields_done, fields_total, skipped, shard, message)

        yield progress(f"{len(todo)} galaxies to cut in {fields_total} fields")
        buf = ShardBuffer()
        # Each worker may have one batch waiting: memory stays bounded.
        q: queue.Queue[_Batch] = queue.Queue(maxsize=2 * self.workers)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ssald-miner")
        pending = [pool.submit(self._cut_field, fid, todo[idx], q) for fid, idx in groups.items()]
        try:
            while fields_done < len(pending):
                item = q.get()
                if item.last:
                    fields_done += 1
                    yield progress(f"field {item.field} finished")
                    continue
                if item.status != "done":
                    manifest.record_skipped(
                        item.status, item.ids, item.ra, item.dec, item.field, item.message
                    )
                    if item.status != "error":
                        done += len(item.ids)
                    skipped += len(item.ids)
                    yield progress(
                        f"{item.status}: {len(item.ids)} in field {item.field}: {item.message}"
                    )
                    continue
                assert item.data is not None and item.mask is not None and item.rgb is not None
                frac = item.mask.reshape(len(item.ids), -1).mean(axis=1)
                keep = frac <= self.max_masked_fraction
                if not keep.all():
                    bad = ~keep
                    manifest.record_skipped(
                        "masked",
                        [i for i, k in zip(item.ids, bad, strict=True) if k],
                        item.ra[bad],
                        item.dec[bad],
                        item.field,
                        f"more than {self.max_masked_fraction:.0%} of the cutout is masked",
                    )
                    skipped += int(bad.sum())
                    done += int(bad.sum())
                for k in np.nonzero(keep)[0]:
                    buf.ids.append(item.ids[k])
                    buf.ra.append(float(item.ra[k]))
                    buf.dec.append(float(item.dec[k]))
                    buf.fields.append(item.field)
                    buf.petro.append(float(item.petro[k]))
                    buf.images.append(item.data[k])
                    buf.masks.append(item.mask[k])
                    buf.rgb.append(item.rgb[k])
                while len(buf) >= self.shard_size:
                    part = buf.take(self.shard_size)
                    self._flush(manifest, part, shard)
                    shard += 1
                    done += len(part)
                yield progress(f"cut {len(item.ids)} in field {item.field}")
            if len(buf):
                n = len(buf)
                self._flush(manifest, buf.take(n), shard)
                shard += 1
                done += n
            yield progress("finished")
        finally:
            self._stop.set()
            # Unblock workers waiting on a full queue, then wait for them.
            while any(not p.done() for p in pending):
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            pool.shutdown(wait=True)
            if len(buf) and fields_done < len(pending):
                # Cancelled: keep what was cut; the rest is redone on resume.
                self._flush(manifest, buf, shard)


def mine(
    galaxies: Table,
    out_dir: str | Path,
    source: FieldSource,
    spec: NormSpec | None = None,
    **kwargs: Any,
) -> dict[str, int]:
    """Run a :class:`Miner` to the end and return the manifest's counts by status."""
    miner = Miner(out_dir, source, spec, **kwargs)
    for _ in miner.run(galaxies):
        pass
    m = Manifest(Path(out_dir) / MANIFEST)
    try:
        return m.counts()
    finally:
        m.close()


def iter_progress_lines(
    progress: Iterable[MineProgress], emit: Callable[[str], None]
) -> MineProgress | None:
    """Drive a mining run, emitting a one-line text progress bar; returns the last progress."""
    last = None
    for p in progress:
        last = p
        width = 30
        filled = int(round(width * p.fraction))
        emit(
            f"[{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} galaxies, "
            f"{p.fields_done}/{p.fields_total} fields, {p.shards} shards  {p.message}"
        )
    return last
