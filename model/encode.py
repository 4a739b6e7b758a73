"""``python -m model.encode``: encode survey-scale shards with an exported encoder, distributed.

The desktop encodes thousands of cutouts in a worker thread (``ssald_desktop.core.embeddings``);
at survey scale (10M+ cutouts) the same encoding runs here, as a job under a ``tf.distribute``
strategy (:mod:`model.distribute`: one device, local GPUs, several workers from ``TF_CONFIG``, or
a TPU) over the miner's TFRecord (or HDF5) shards, locally or on ``gs://`` through
:mod:`tf.io.gfile`. It writes **embedding shards** that ``ssald-cli embed --from-shards`` merges
into an embedding store, whose index ``ssald-cli index`` then builds.

Method
------
1. The encoder is loaded with ``safe_mode=True`` (:func:`model.export.load_encoder`), and its
   file is checked against its model card (SHA-256), whose preprocessing is the only one used:
   the 8-bit Lupton ``rgb`` composites scaled ``x / 255``, or the band cubes (nanomaggies)
   asinh-stretched (Lupton, Gunn & Szalay 1999), with :func:`model.data.apply_scaling`, then a
   resize of the whole image to the encoder's input side (:func:`tf.image.resize`, bilinear,
   antialiased): exactly what the desktop does. Shards of another NormSpec than the encoder's
   are refused.
2. The input is cut into **units**: up to ``--shard-size`` consecutive rows of one input file
   (a unit never spans two files). Input files are dealt to input pipelines round-robin
   (``file index % num_input_pipelines``): under ``multiworker`` every worker reads, encodes
   and writes only its own files; a single-client TPU calls the pipeline function once per host.
3. Each pipeline yields ``(index, image)`` batches of the per-replica batch size (int32 row
   indices), padded with ``index = -1`` rows so that every pipeline runs the same number of
   full steps (the count is agreed by one all-reduce under ``multiworker``): shapes are static,
   as TPUs need, no replica ever gets an empty or partial batch, and the workers' collectives
   stay in step. ``strategy.distribute_datasets_from_function`` spreads the batches over the
   replicas and a ``tf.function`` runs ``strategy.run(encoder, training=False)``; inference
   itself needs no cross-replica communication. Each process gathers its local replicas'
   results (``experimental_local_results``) and writes a unit as soon as all its rows are in.
   The strategy is created before any other TensorFlow work (collective ops and a TPU system
   must be configured at program start-up).
4. An embedding shard is ``shards/NAME.npy`` (float32 ``(n, dim)``) and its sidecar
   ``shards/NAME.json`` (the object table rows: id, ra, dec, source, item, signature,
   normspec digest, encoder id; and the ``.npy``'s size and SHA-256). Each file is written to a
   temporary name, flushed, fsynced and renamed; the sidecar is written last and is the
   shard's manifest entry: a unit is finished exactly when its sidecar is there. A killed job
   run again with the same arguments skips finished units and redoes the others (overwriting
   any vectors a crash left without a sidecar), so nothing is lost or duplicated.
5. At the end (after a barrier under ``multiworker``) the chief checks coverage: every row of
   every input file in exactly one shard and no id twice, else a :class:`ShardError` names the
   file, rows or id; it then writes ``manifest.json`` (the finished job's summary).

``job.json`` holds the job's identity (encoder id and path, NormSpec and digest, scaling, input
size, bands, shard key, dimension, the input files); a resumed job must match it.

This module imports TensorFlow only inside functions, so that the desktop can use its readers
(:func:`shard_objects`, :func:`read_shard_folder`) without it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = [
    "JOB_FILE",
    "MANIFEST_FILE",
    "SHARDS_DIR",
    "EncodeJobError",
    "FileObjects",
    "ShardError",
    "build_arg_parser",
    "check_coverage",
    "file_signature",
    "main",
    "read_shard_folder",
    "run_job",
    "shard_objects",
    "shard_rows",
]

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
JOB_FORMAT = "ssald-embedding-shards"
SHARD_FORMAT = "ssald-embedding-shard"
COLUMNS = ("id", "ra", "dec", "source", "item", "signature", "normspec", "encoder")
BOTTOM_UP = "bottom-up"  # the miner's shards store row 0 at the south edge (FITS order)


class ShardError(ValueError):
    """Embedding shards that cannot be used: corrupt, truncated, mixed, or not covering."""


class EncodeJobError(RuntimeError):
    """A job that cannot start: bad arguments, another job's output folder, no data."""


# --------------------------------------------------------------------------------------------
# Paths (local or gs:// through tf.io.gfile)
# --------------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in str(path)


def _join(*parts: str) -> str:
    if _is_uri(parts[0]):
        return "/".join([parts[0].rstrip("/"), *parts[1:]])
    return os.path.join(*parts)


def _exists(path: str) -> bool:
    if _is_uri(path):
        import tensorflow as tf

        return bool(tf.io.gfile.exists(path))
    return os.path.exists(path)


def _read_bytes(path: str) -> bytes:
    if _is_uri(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as fh:
            return bytes(fh.read())
    with open(path, "rb") as fh:
        return fh.read()


def _listdir(path: str) -> list[str]:
    if _is_uri(path):
        import tensorflow as tf

        return [p.rstrip("/") for p in tf.io.gfile.listdir(path)] if _exists(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary name, flush, fsync and rename it to ``path``.

    On ``gs://`` an object appears whole when its upload closes; the rename there is a copy.
    """
    tmp = path + ".tmp"
    if _is_uri(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(tmp, "wb") as fh:
            fh.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _makedirs(path: str) -> None:
    if _is_uri(path):
        import tensorflow as tf

        tf.io.gfile.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def file_signature(path: str) -> str:
    """``size:mtime_ns`` of a file, the desktop's "has it changed" signature of a shard."""
    if _is_uri(path):
        import tensorflow as tf

        st = tf.io.gfile.stat(path)
        return f"{int(st.length)}:{int(st.mtime_nsec)}"
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _absolute(path: str) -> str:
    return path if _is_uri(path) else os.path.abspath(path)


# --------------------------------------------------------------------------------------------
# Input shards: files, NormSpec, objects
# --------------------------------------------------------------------------------------------


@dataclass
class FileObjects:
    """The objects of one input shard, in row order.

    Attributes
    ----------
    path : str
        The shard (absolute local path or URI).
    ids : list of str
        Object ids (``STEM#ROW`` where the shard has none).
    ra, dec : ndarray
        Degrees (NaN when unknown).
    signature : str
        :func:`file_signature` of the shard.
    """

    path: str
    ids: list[str]
    ra: np.ndarray
    dec: np.ndarray
    signature: str

    @property
    def count(self) -> int:
        """Rows in the shard."""
        return len(self.ids)


def find_shards(source: str, fmt: str = "auto") -> tuple[str, list[str]]:
    """The shard files of a source and their format (``"tfrecord"`` or ``"h5"``).

    Parameters
    ----------
    source : str
        The miner's output folder, its ``tfrecord``/``h5`` folder, a folder of shards, one
        shard, a glob, or a ``gs://`` URI of any of them.
    fmt : {"auto", "tfrecord", "h5"}
        ``auto``: :func:`model.data.detect_format` (HDF5 wins where the miner wrote both).

    Raises
    ------
    EncodeJobError
        No shards, or a folder of images (encode those on the desktop).
    """
    from model.data import (
        H5_EXTENSIONS,
        TFRECORD_EXTENSIONS,
        DataError,
        _shard_files,
        detect_format,
    )

    if fmt not in ("auto", "tfrecord", "h5"):
        raise EncodeJobError(f"format must be auto, tfrecord or h5, got {fmt!r}")
    if fmt == "auto":
        try:
            fmt = detect_format(source)
        except DataError as exc:
            raise EncodeJobError(str(exc)) from exc
        if fmt == "images":
            raise EncodeJobError(f"{source}: a folder of PNG/JPEG images; encode it with "
                                 "`ssald-cli embed --images` (this job reads TFRecord or HDF5 "
                                 "shards)")
    if fmt == "h5" and _is_uri(source):
        raise EncodeJobError(f"{source}: HDF5 shards must be on local disk (use TFRecord on "
                             "gs://)")
    exts = TFRECORD_EXTENSIONS if fmt == "tfrecord" else H5_EXTENSIONS
    files = _shard_files(source, fmt, exts)
    if not files:
        raise EncodeJobError(f"{source}: no {fmt} shards found")
    return fmt, sorted(_absolute(f) for f in files)


def _parent(path: str) -> str:
    if _is_uri(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _near(files: Sequence[str], source: str, name: str) -> str | None:
    """``name`` in the source folder, beside the first shard or up to two folders above it."""
    places = []
    if not any(c in source for c in "*?[") and not source.endswith(tuple(
            (".tfrecord", ".tfrec", ".tfrecords", ".h5", ".hdf5"))):
        places.append(source)
    d = _parent(files[0])
    for _ in range(3):
        places.append(d)
        d = _parent(d)
    for p in places:
        candidate = _join(p, name)
        if _exists(candidate):
            return candidate
    return None


def find_normspec(files: Sequence[str], fmt: str, source: str) -> dict[str, Any] | None:
    """The NormSpec of the shards: ``normspec.json`` near TFRecords, the HDF5 attribute.

    Raises
    ------
    ShardError
        An unreadable NormSpec, HDF5 shards with different NormSpecs.
    """
    if fmt == "h5":
        import h5py

        spec_text, first = None, None
        for f in files:
            try:
                with h5py.File(f, "r") as h:
                    text = h.attrs.get("normspec")
            except OSError as exc:
                raise ShardError(f"{f}: not a readable HDF5 shard ({exc})") from exc
            if isinstance(text, bytes):
                text = text.decode()
            if first is None:
                spec_text, first = text, f
            elif _canonical(text) != _canonical(spec_text):
                raise ShardError(f"{f}: its NormSpec differs from that of {first}; shards made "
                                 "with different preprocessing cannot be encoded together")
        return json.loads(spec_text) if spec_text else None
    path = _near(files, source, "normspec.json")
    if path is None:
        raise ShardError(f"{files[0]}: no normspec.json beside the TFRecord shards or up to two "
                         "folders above them; the miner writes it, and the cutouts' NormSpec "
                         "must be known to encode them")
    try:
        spec = json.loads(_read_bytes(path))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: not a readable NormSpec ({exc})") from exc
    if not isinstance(spec, dict):
        raise ShardError(f"{path}: the NormSpec is not a JSON object")
    return spec


def _canonical(spec: Any) -> str | None:
    if spec is None or spec == "":
        return None
    if isinstance(spec, (str, bytes)):
        spec = json.loads(spec)
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


_SHARD_NUMBER = re.compile(r"shard-(\d+)")


def _miner_rows(manifest: str, files: Sequence[str]) -> dict[str, FileObjects] | None:
    """Objects of TFRecord shards from the miner's ``manifest.sqlite`` (float64 RA/Dec).

    Only shards the manifest records with this very file (path relative to the manifest's
    folder) and a complete list of rows; None when it has none of them.
    """
    tmp = None
    root = _parent(manifest)
    try:
        if _is_uri(manifest):
            import tensorflow as tf

            fd, tmp = tempfile.mkstemp(suffix=".sqlite")
            os.close(fd)
            tf.io.gfile.copy(manifest, tmp, overwrite=True)
            manifest = tmp
        db = sqlite3.connect(f"file:{manifest}?mode=ro", uri=True)
        try:
            shards = {int(s): (int(n), json.loads(fl)) for s, n, fl in db.execute(
                "SELECT shard, count, files FROM shards")}
            rows = db.execute("SELECT shard, id, ra, dec FROM objects WHERE status = 'done' "
                              "ORDER BY shard, row").fetchall()
        finally:
            db.close()
    except (sqlite3.Error, OSError, ValueError):
        return None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    by_shard: dict[int, list[tuple[str, float, float]]] = {}
    for shard, oid, ra, dec in rows:
        by_shard.setdefault(int(shard), []).append(
            (str(oid), math.nan if ra is None else float(ra), math.nan if dec is None else
             float(dec)))
    out: dict[str, FileObjects] = {}
    for f in files:
        m = _SHARD_NUMBER.search(os.path.basename(f))
        if m is None or int(m.group(1)) not in shards:
            continue
        n = int(m.group(1))
        count, listed = shards[n]
        rel = f[len(root):].lstrip("/\\").replace("\\", "/") if f.startswith(root) else None
        recs = by_shard.get(n, [])
        if rel not in listed or len(recs) != count:
            continue
        out[f] = FileObjects(f, [r[0] for r in recs], np.array([r[1] for r in recs]),
                             np.array([r[2] for r in recs]), file_signature(f))
    return out


def _tfrecord_pass(f: str) -> FileObjects:
    """Objects of one TFRecord shard from one pass over its records (``id``, ``ra``, ``dec``)."""
    import tensorflow as tf

    spec = {"id": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "ra": tf.io.FixedLenFeature([], tf.float32, default_value=math.nan),
            "dec": tf.io.FixedLenFeature([], tf.float32, default_value=math.nan)}
    ids: list[str] = []
    ra: list[float] = []
    dec: list[float] = []
    try:
        for batch in tf.data.TFRecordDataset(f).batch(1024):
            p = tf.io.parse_example(batch, spec)
            ids += [v.decode() for v in p["id"].numpy()]
            ra += [float(v) for v in p["ra"].numpy()]
            dec += [float(v) for v in p["dec"].numpy()]
    except tf.errors.OpError as exc:
        raise ShardError(f"{f}: not a readable TFRecord shard ({exc.message})") from exc
    stem = os.path.basename(f).split(".")[0]
    ids = [i or f"{stem}#{k}" for k, i in enumerate(ids)]
    return FileObjects(f, ids, np.array(ra, float), np.array(dec, float), file_signature(f))


def _h5_objects(f: str) -> FileObjects:
    import h5py

    try:
        with h5py.File(f, "r") as h:
            key = "rgb" if "rgb" in h else "images"
            n = int(h[key].shape[0])
            ids = ([x.decode() if isinstance(x, bytes) else str(x) for x in h["id"][...]]
                   if "id" in h else [f"{Path(f).stem}#{i}" for i in range(n)])
            ra = np.asarray(h["ra"][...], float) if "ra" in h else np.full(n, np.nan)
            dec = np.asarray(h["dec"][...], float) if "dec" in h else np.full(n, np.nan)
    except (OSError, KeyError) as exc:
        raise ShardError(f"{f}: not a readable HDF5 shard ({exc})") from exc
    return FileObjects(f, ids, ra, dec, file_signature(f))


def shard_objects(files: Sequence[str], fmt: str, source: str) -> list[FileObjects]:
    """The objects (ids, RA, Dec) of every input shard, in file order.

    TFRecord shards take them from the miner's ``manifest.sqlite`` (near the shards) where it
    records the shard completely, else from one pass over the records; HDF5 shards from their
    ``id``, ``ra``, ``dec`` datasets.
    """
    if fmt == "h5":
        return [_h5_objects(f) for f in files]
    known: dict[str, FileObjects] = {}
    manifest = _near(files, source, "manifest.sqlite")
    if manifest is not None:
        known = _miner_rows(manifest, files) or {}
    return [known[f] if f in known else _tfrecord_pass(f) for f in files]


# --------------------------------------------------------------------------------------------
# The encoder and its card
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderCard:
    """What the job needs from an exported encoder's card."""

    path: str
    encoder_id: str
    bands: int
    input_size: int
    scaling: dict[str, Any]
    normspec: dict[str, Any] | None

    @property
    def image_key(self) -> str:
        """``rgb`` for an 8-bit encoder, ``images`` (band cubes) for an asinh one."""
        return "rgb" if self.scaling["kind"] == "uint8" else "images"


def _scaling(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict) and value.get("kind") in ("uint8", "asinh"):
        return dict(value)
    if isinstance(value, str) and "255" in value:
        return {"kind": "uint8", "divide": 255.0}
    raise EncodeJobError(f"{where}: unknown pixel scaling {value!r} in the model card")


def check_encoder(path: str) -> tuple[str, EncoderCard]:
    """Check an exported encoder against its model card; returns a local path and the card.

    A ``gs://`` encoder is copied (with its card) to a temporary folder first.

    Raises
    ------
    EncodeJobError
        Missing file or card, not an SSALD card, a file that is not the one its card
        describes (SHA-256).
    """
    from model.export import CARD_SUFFIX, card_path, file_sha256, load_card

    local = path
    if _is_uri(path):
        import tensorflow as tf

        tmpdir = tempfile.mkdtemp(prefix="ssald-encoder-")
        local = os.path.join(tmpdir, os.path.basename(path))
        card_uri = path[: -len(".keras")] + CARD_SUFFIX if path.endswith(".keras") else ""
        try:
            tf.io.gfile.copy(path, local, overwrite=True)
            tf.io.gfile.copy(card_uri, str(card_path(local)), overwrite=True)
        except tf.errors.OpError as exc:
            raise EncodeJobError(f"{path}: cannot fetch the encoder or its card "
                                 f"({exc.message})") from exc
    if not os.path.isfile(local):
        raise EncodeJobError(f"{path}: no such encoder file")
    try:
        card = load_card(local)
    except (FileNotFoundError, ValueError) as exc:
        raise EncodeJobError(str(exc)) from exc
    sha = card.get("encoder_sha256")
    if not sha:
        raise EncodeJobError(f"{path}: its model card has no encoder_sha256")
    if file_sha256(local) != sha:
        raise EncodeJobError(f"{path}: the file is not the encoder its model card describes "
                             "(SHA-256 differs); export it again")
    arch = card.get("architecture", {})
    shape = card.get("input", {}).get("shape") or [None, None, None]
    bands = int(arch.get("bands") or shape[2] or 3)
    size = int(arch.get("input_size") or shape[0])
    scaling = _scaling(card.get("input", {}).get("scaling"), path)
    return local, EncoderCard(path, sha, bands, size, scaling, card.get("normspec"))


# --------------------------------------------------------------------------------------------
# Embedding shards: writing, reading, coverage
# --------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """Up to ``shard_size`` consecutive rows of one input file: one embedding shard."""

    name: str
    file_index: int
    start: int
    count: int
    base: int = -1  # index of its first row in the job's flat row table (pending units only)
    vectors: np.ndarray | None = field(default=None, repr=False)
    filled: int = 0


def unit_name(rel: str, start: int) -> str:
    """The embedding shard of rows ``start...`` of an input file (relative path ``rel``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", rel.replace("\\", "/").replace("/", "_"))
    return f"{safe}.rows{start:08d}"


def _relative_names(files: Sequence[str]) -> list[str]:
    if len(files) == 1:
        return [os.path.basename(files[0])]
    if _is_uri(files[0]):
        parts = [f.split("/") for f in files]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        return ["/".join(p[common:]) for p in parts]
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    return [os.path.relpath(f, root) for f in files]


def make_units(objects: Sequence[FileObjects | None], files: Sequence[str],
               shard_size: int) -> list[Unit]:
    """Cut every (planned) input file into units of at most ``shard_size`` rows."""
    rel = _relative_names(files)
    units = []
    for i, obj in enumerate(objects):
        if obj is None:
            continue
        for start in range(0, obj.count, shard_size):
            units.append(Unit(unit_name(rel[i], start), i, start, min(shard_size,
                                                                       obj.count - start)))
    return units


def _npy_bytes(vectors: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vectors, dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


def write_shard(out: str, unit: Unit, obj: FileObjects, vectors: np.ndarray, *,
                encoder_id: str, normspec_digest: str, worker: int) -> dict[str, Any]:
    """Write one embedding shard: the ``.npy`` first, then its sidecar (the record)."""
    data = _npy_bytes(vectors)
    folder = _join(out, SHARDS_DIR)
    _write_atomic(_join(folder, unit.name + ".npy"), data)
    sl = slice(unit.start, unit.start + unit.count)
    rows = [[i, None if not math.isfinite(r) else float(r),
             None if not math.isfinite(d) else float(d), obj.path, unit.start + k,
             obj.signature, normspec_digest, encoder_id]
            for k, (i, r, d) in enumerate(zip(obj.ids[sl], obj.ra[sl], obj.dec[sl],
                                              strict=True))]
    side = {"format": SHARD_FORMAT, "version": 1, "vectors": unit.name + ".npy",
            "count": unit.count, "dim": int(vectors.shape[1]), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "input": obj.path,
            "input_rows": obj.count, "start": unit.start, "encoder_id": encoder_id,
            "normspec_digest": normspec_digest, "worker": worker,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "columns": list(COLUMNS), "rows": rows}
    _write_atomic(_join(folder, unit.name + ".json"),
                  (json.dumps(side, separators=(",", ":")) + "\n").encode())
    return side


def _read_sidecar(path: str) -> dict[str, Any]:
    try:
        side = json.loads(_read_bytes(path))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: not a readable embedding shard sidecar ({exc})") from exc
    if not isinstance(side, dict) or side.get("format") != SHARD_FORMAT:
        raise ShardError(f"{path}: not an SSALD embedding shard sidecar")
    need = ("vectors", "count", "dim", "bytes", "sha256", "input", "input_rows", "start",
            "encoder_id", "normspec_digest", "columns", "rows")
    missing = [k for k in need if k not in side]
    if missing:
        raise ShardError(f"{path}: the sidecar lacks {', '.join(missing)}")
    if list(side["columns"]) != list(COLUMNS) or len(side["rows"]) != side["count"]:
        raise ShardError(f"{path}: {len(side['rows'])} object rows for count {side['count']}, "
                         f"or columns other than {', '.join(COLUMNS)}")
    return side


def load_shard_vectors(folder: str, side: dict[str, Any], verify: bool = True) -> np.ndarray:
    """The vectors of one embedding shard, checked against its sidecar.

    Raises
    ------
    ShardError
        A missing, truncated or corrupt ``.npy`` (size, SHA-256, shape or dtype), named.
    """
    path = _join(folder, SHARDS_DIR, side["vectors"])
    try:
        data = _read_bytes(path)
    except OSError as exc:
        raise ShardError(f"{path}: the embedding shard's vectors are missing ({exc}); run the "
                         "job again to redo it") from exc
    if len(data) != int(side["bytes"]):
        raise ShardError(f"{path}: truncated or overwritten ({len(data)} bytes, its sidecar "
                         f"records {side['bytes']}); run the job again to redo it")
    if verify and hashlib.sha256(data).hexdigest() != side["sha256"]:
        raise ShardError(f"{path}: corrupt (its SHA-256 is not the one its sidecar records); "
                         "delete it and its .json, then run the job again")
    try:
        v = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShardError(f"{path}: not a readable .npy file ({exc})") from exc
    if v.dtype != np.dtype("<f4") or v.shape != (int(side["count"]), int(side["dim"])):
        raise ShardError(f"{path}: {v.dtype} {v.shape} vectors, its sidecar records float32 "
                         f"({side['count']}, {side['dim']})")
    return v


def read_job(folder: str) -> dict[str, Any]:
    """The ``job.json`` of an embedding-shard folder.

    Raises
    ------
    ShardError
        No or an unreadable ``job.json``.
    """
    path = _join(folder, JOB_FILE)
    if not _exists(path):
        raise ShardError(f"{folder}: not a folder of embedding shards (no {JOB_FILE}); "
                         "`python -m model.encode --out` makes one")
    try:
        job = json.loads(_read_bytes(path))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(job, dict) or job.get("format") != JOB_FORMAT:
        raise ShardError(f"{path}: not an SSALD embedding-shards job file")
    return job


def read_shard_folder(folder: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``job.json`` and every shard's sidecar (sorted by name), each checked.

    Every sidecar must carry the job's encoder and NormSpec and its vectors' dimension. The
    object rows are not kept (10M rows would not fit in memory as Python objects): each
    sidecar keeps ``_path`` and ``_id_hashes`` (64-bit BLAKE2b of its ids, for
    :func:`check_coverage`); :func:`shard_rows` reads the rows again when they are merged.

    Raises
    ------
    ShardError
        Unreadable files, a shard of another encoder or NormSpec (mixed in one folder).
    """
    job = read_job(folder)
    names = sorted(n for n in _listdir(_join(folder, SHARDS_DIR)) if n.endswith(".json"))
    sides = []
    for n in names:
        p = _join(folder, SHARDS_DIR, n)
        side = _read_sidecar(p)
        side["_path"] = p
        if side["encoder_id"] != job["encoder_id"]:
            raise ShardError(f"{p}: a shard of encoder {side['encoder_id'][:12]}, but the job "
                             f"is encoder {job['encoder_id'][:12]}; shards of two encoders "
                             "cannot be merged")
        if side["normspec_digest"] != job["normspec_digest"]:
            raise ShardError(f"{p}: a shard of NormSpec {side['normspec_digest']}, but the job "
                             f"is NormSpec {job['normspec_digest']}")
        if int(side["dim"]) != int(job["dim"]):
            raise ShardError(f"{p}: {side['dim']}-d vectors in a job of {job['dim']}-d ones")
        side["_id_hashes"] = _id_hashes(str(r[0]) for r in side.pop("rows"))
        sides.append(side)
    return job, sides


def _id_hashes(ids: Any) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(),
                                    "little") for i in ids], dtype=np.uint64)


def shard_rows(side: dict[str, Any]) -> list[list[Any]]:
    """The object table rows of one shard (:data:`COLUMNS`), read from its sidecar."""
    return list(_read_sidecar(side["_path"])["rows"])


def check_coverage(job: dict[str, Any], sides: Sequence[dict[str, Any]]) -> int:
    """Check that every row of every input file is in exactly one shard and no id is twice.

    Returns
    -------
    int
        The number of objects.

    Raises
    ------
    ShardError
        Naming the input file with no shard or the rows missing or covered twice (a job not
        finished: run it again to resume), or an id found in two shards.
    """
    by_file: dict[str, list[dict[str, Any]]] = {}
    for s in sides:
        by_file.setdefault(s["input"], []).append(s)
    files = list(job["data"]["files"])
    unknown = sorted(set(by_file) - set(files))
    if unknown:
        s = by_file[unknown[0]][0]
        raise ShardError(f"{s['_path']}: a shard of {unknown[0]}, which is not an input of this "
                         "job")
    missing = [f for f in files if f not in by_file]
    if missing:
        raise ShardError(
            f"{len(missing)} of {len(files)} input file(s) have no embedding shard, e.g. "
            f"{missing[0]}: their objects are in no shard (the job has not finished: run it "
            "again with the same arguments to resume)")
    total = 0
    for f in files:
        parts = sorted(by_file[f], key=lambda s: int(s["start"]))
        rows = {int(s["input_rows"]) for s in parts}
        if len(rows) != 1:
            raise ShardError(f"{f}: its shards disagree on its number of rows ({sorted(rows)}); "
                             "was it rewritten during the job?")
        n = rows.pop()
        at = 0
        for s in parts:
            start = int(s["start"])
            if start > at:
                raise ShardError(f"{f}: rows {at}..{start - 1} are in no embedding shard (the "
                                 "job has not finished: run it again to resume)")
            if start < at:
                raise ShardError(f"{f}: rows {start}..{at - 1} are in two embedding shards "
                                 f"({s['_path']} and the one before it)")
            at = start + int(s["count"])
        if at != n:
            raise ShardError(f"{f}: rows {at}..{n - 1} are in no embedding shard (the job has "
                             "not finished: run it again to resume)")
        total += n
    _check_unique_ids(sides)
    return total


def _check_unique_ids(sides: Sequence[dict[str, Any]]) -> None:
    """No id in two rows: sort the 64-bit id hashes (8 bytes a row), then look closer.

    Equal hashes are resolved on the ids themselves (a hash collision is not an error).
    """
    if not sides:
        return
    hashes = np.concatenate([s["_id_hashes"] for s in sides])
    owner = np.repeat(np.arange(len(sides)), [len(s["_id_hashes"]) for s in sides])
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    same = np.nonzero(sorted_h[1:] == sorted_h[:-1])[0]
    if not len(same):
        return
    suspects = set(sorted_h[same].tolist())
    seen: dict[str, str] = {}
    for k in sorted({int(owner[order[j]]) for j in same} | {int(owner[order[j + 1]])
                                                             for j in same}):
        s = sides[k]
        for row, h in zip(shard_rows(s), s["_id_hashes"], strict=True):
            if int(h) not in suspects:
                continue
            oid = str(row[0])
            if oid in seen:
                where = (f"{seen[oid]} and {s['_path']}" if seen[oid] != s["_path"]
                         else f"{s['_path']} (twice)")
                raise ShardError(f"object id {oid!r} is in two embedding shards: {where} (the "
                                 "input shards hold it twice)")
            seen[oid] = s["_path"]


def _finished_units(out: str, units: Sequence[Unit], job: dict[str, Any],
                    planned: Sequence[FileObjects | None] = ()) -> set[str]:
    """Units whose sidecar is there, readable, of this job, with vectors of the right size.

    With ``planned`` (the input files as read now), a unit also needs its input file to be
    unchanged (the same :func:`file_signature`): a shard rewritten by the miner since is
    encoded again, not merged in two versions.
    """
    present = set(_listdir(_join(out, SHARDS_DIR)))
    done = set()
    for u in units:
        if u.name + ".json" not in present or u.name + ".npy" not in present:
            continue
        try:
            side = _read_sidecar(_join(out, SHARDS_DIR, u.name + ".json"))
        except ShardError:
            continue  # redone
        now = planned[u.file_index] if u.file_index < len(planned) else None
        sig = COLUMNS.index("signature")
        if now is not None and side["rows"] and str(side["rows"][0][sig]) != now.signature:
            continue  # the input file changed since: redone
        if (side["encoder_id"] == job["encoder_id"] and int(side["count"]) == u.count
                and int(side["start"]) == u.start):
            npy = _join(out, SHARDS_DIR, u.name + ".npy")
            size = (os.path.getsize(npy) if not _is_uri(npy) else None)
            if size is None or size == int(side["bytes"]):
                done.add(u.name)
    return done


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _worker_position(strategy: Any) -> tuple[int, int, bool]:
    """Where this process stands: ``(worker index, number of workers, is chief)``."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        workers = len(resolver.cluster_spec().as_dict().get("worker", [])) or 1
        task = int(resolver.task_id or 0)
        chief = (resolver.task_type == "chief") or (
            resolver.task_type == "worker" and task == 0
            and "chief" not in resolver.cluster_spec().as_dict())
        return task, workers, chief
    return 0, 1, True


def _all_sum(strategy: Any, value: np.ndarray) -> np.ndarray:
    """Sum a host array over every replica of every worker (a collective: also a barrier)."""
    import tensorflow as tf

    @tf.function
    def reduce() -> Any:
        per_replica = strategy.run(lambda: tf.constant(value))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return np.asarray(reduce())


def _pipeline_dataset(fmt: str, files: Sequence[str], units: Sequence[Unit], card: EncoderCard,
                      side: int, bands: int, image_dtype: str) -> Any:
    """Unbatched ``(index, image)`` of the given units, preprocessed as the card says."""
    import tensorflow as tf

    from model.data import apply_scaling

    key, size = card.image_key, card.input_size

    def finish(idx: Any, x: Any) -> Any:
        # int32 row indices: TPUs have no native int64 (2**31 rows per job is plenty)
        y = apply_scaling(x, card.scaling)
        if side != size:
            y = tf.image.resize(y, [size, size], antialias=True)
        y.set_shape([size, size, bands])
        return tf.cast(idx, tf.int32), y

    if not units:
        return tf.data.Dataset.from_tensor_slices(
            (tf.zeros([0], tf.int32), tf.zeros([0, size, size, bands], tf.float32)))
    if fmt == "tfrecord":
        feature = "rgb" if key == "rgb" else "image"
        spec = {feature: tf.io.FixedLenFeature([], tf.string)}
        raw_dtype = tf.float16 if image_dtype == "float16" else tf.float32
        table = tf.data.Dataset.from_tensor_slices((
            tf.constant([files[u.file_index] for u in units]),
            tf.constant([u.start for u in units], tf.int64),
            tf.constant([u.count for u in units], tf.int64),
            tf.constant([u.base for u in units], tf.int64)))

        def records(f: Any, start: Any, count: Any, base: Any) -> Any:
            recs = tf.data.TFRecordDataset(f).skip(start).take(count)
            idx = tf.data.Dataset.range(count).map(lambda i: i + base)
            return tf.data.Dataset.zip((idx, recs))

        def parse(idx: Any, rec: Any) -> Any:
            raw = tf.io.parse_single_example(rec, spec)[feature]
            if key == "rgb":
                x = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [side, side, 3])
            else:
                x = tf.reshape(tf.io.decode_raw(raw, raw_dtype), [bands, side, side])
                x = tf.transpose(tf.cast(x, tf.float32), [1, 2, 0])
            return finish(idx, x)

        ds = table.flat_map(records)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    import h5py

    plan = [(files[u.file_index], u.start, u.count, u.base) for u in units]
    shape = (side, side, 3) if key == "rgb" else (bands, side, side)

    def blocks() -> Any:
        for f, start, count, base in plan:
            with h5py.File(f, "r") as h:
                for s in range(start, start + count, 256):
                    e = min(start + count, s + 256)
                    block = h[key][s:e]
                    if key != "rgb":
                        block = block.astype(np.float32)
                    yield np.arange(base + s - start, base + e - start, dtype=np.int64), block

    ds = tf.data.Dataset.from_generator(blocks, output_signature=(
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([None, *shape], tf.uint8 if key == "rgb" else tf.float32))).unbatch()

    def to_image(idx: Any, x: Any) -> Any:
        if key != "rgb":
            x = tf.transpose(x, [1, 2, 0])
        return finish(idx, x)

    return ds.map(to_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _probe(fmt: str, files: Sequence[str], key: str) -> tuple[int, int, str]:
    """``(side, bands, image dtype)`` of the shards' images (from the first record/file)."""
    if fmt == "h5":
        import h5py

        with h5py.File(files[0], "r") as h:
            if key not in h:
                raise ShardError(f"{files[0]}: no dataset {key!r} (has {', '.join(h)})")
            shape = h[key].shape
        if key == "rgb":
            return int(shape[1]), 3, "uint8"
        return int(shape[2]), int(shape[1]), "float32"
    import tensorflow as tf

    probe = {"image": tf.io.FixedLenFeature([], tf.string),
             "shape": tf.io.FixedLenFeature([3], tf.int64)}
    try:
        first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
        if first is None:
            raise ShardError(f"{files[0]}: an empty TFRecord shard")
        ex = tf.io.parse_single_example(first, probe)
    except tf.errors.OpError as exc:
        raise ShardError(f"{files[0]}: not a readable shard of the miner ({exc.message})") from exc
    nb, rows, cols = (int(v) for v in ex["shape"].numpy())
    if rows != cols:
        raise ShardError(f"{files[0]}: images are {rows}x{cols}, expected square")
    itemsize = len(ex["image"].numpy()) // max(1, nb * rows * cols)
    if key == "rgb":
        return rows, 3, "uint8"
    return rows, nb, "float16" if itemsize == 2 else "float32"


def run_job(encoder: str, data: str, out: str, *, strategy_name: str = "default",
            tpu: str = "", zone: str = "", project: str = "", devices: Sequence[str] | None = None,
            batch_size: int = 256, shard_size: int = 4096, fmt: str = "auto",
            command: str | None = None) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Encode shards into embedding shards under a strategy (see the module docstring).

    A generator: it yields a progress dict (``done``, ``total``, ``shards_written``) after
    every step and returns a summary. A job run again with the same arguments resumes.

    Parameters
    ----------
    encoder : str
        The exported ``.keras`` (with its card), local or ``gs://``.
    data : str
        Input shards (folder, glob, file; local or ``gs://``).
    out : str
        Output folder (local or ``gs://``).
    strategy_name : {"default", "mirrored", "multiworker", "tpu"}
        :func:`model.distribute.get_strategy`.
    tpu, zone, project : str
        The TPU (for ``tpu``).
    devices : sequence of str, optional
        Explicit devices for ``mirrored``.
    batch_size : int
        The global batch (divided among the replicas).
    shard_size : int
        Rows per embedding shard at most (a shard never spans two input files).
    fmt : {"auto", "tfrecord", "h5"}
        Input format.
    command : str, optional
        The command line, recorded in ``job.json``.

    Raises
    ------
    EncodeJobError, ShardError, model.distribute.HardwareError
        Bad arguments or data, another job's folder, a strategy without its hardware.
    """
    if batch_size < 1 or shard_size < 1:
        raise EncodeJobError(f"batch size and shard size must be positive, got {batch_size} "
                             f"and {shard_size}")
    t0 = time.perf_counter()
    local_encoder, card = check_encoder(encoder)

    import tensorflow as tf

    from model.distribute import get_strategy
    from model.export import load_encoder

    # First of all TensorFlow work: collective ops (multiworker) and a TPU system must be
    # configured before the first operation runs.
    strategy = get_strategy(strategy_name, tpu=tpu, zone=zone, project=project, devices=devices)
    fmt, files = find_shards(data, fmt)
    normspec = find_normspec(files, fmt, data)
    if card.normspec is not None and normspec is not None and _canonical(
            card.normspec) != _canonical(normspec):
        raise EncodeJobError(f"{data}: cutouts of another NormSpec than the one encoder "
                             f"{os.path.basename(encoder)} was trained on: cut them again with "
                             "the encoder's NormSpec")
    side, bands, image_dtype = _probe(fmt, files, card.image_key)
    if bands != card.bands:
        raise EncodeJobError(f"{data}: {card.image_key!r} images have {bands} bands; the "
                             f"encoder takes {card.bands}")
    digest = _data_digest(fmt, files, normspec)
    replicas = int(strategy.num_replicas_in_sync)
    if batch_size % replicas:
        raise EncodeJobError(f"batch size {batch_size} is not a multiple of the {replicas} "
                             "replicas")
    worker, n_workers, chief = _worker_position(strategy)
    # Files are dealt to input pipelines round-robin; a multi-client job plans only its own.
    mine = [i for i in range(len(files)) if n_workers == 1 or i % n_workers == worker]
    planned: list[FileObjects | None] = [None] * len(files)
    for i, found in zip(mine, shard_objects([files[i] for i in mine], fmt, data), strict=True):
        planned[i] = found
    units = make_units(planned, files, shard_size)

    with strategy.scope():
        model, _ = load_encoder(local_encoder)
    dim = int(model.output_shape[-1])
    job = {"format": JOB_FORMAT, "version": 1, "encoder_id": card.encoder_id,
           "encoder_path": encoder, "dim": dim, "normspec": normspec,
           "normspec_digest": digest, "scaling": card.scaling, "input_size": card.input_size,
           "bands": card.bands, "image_key": card.image_key, "row_order": BOTTOM_UP,
           "data": {"source": data, "format": fmt, "files": files}, "shard_size": shard_size}
    _makedirs(_join(out, SHARDS_DIR))
    _bind_job(out, job, command, write=chief)
    finished = _finished_units(out, units, job, planned)
    pending = [u for u in units if u.name not in finished]
    base = 0
    for u in pending:
        u.base = base
        base += u.count
    flat_unit = np.repeat(np.arange(len(pending)), [u.count for u in pending]).astype(np.int64)
    total = sum(u.count for u in units)
    done = total - base
    yield {"done": done, "total": total, "shards_written": 0, "skipped_shards": len(finished),
           "worker": worker}

    per_replica = batch_size // replicas

    def pipeline_units(n: int, k: int) -> list[Unit]:
        return [u for u in pending if n == 1 or u.file_index % n == k]

    # Every pipeline runs the same number of full steps (padded with index -1): no replica
    # ever gets an empty batch, and multiworker collectives stay in step.
    steps = None
    if n_workers > 1:
        local_replicas = max(1, replicas // n_workers)
        mine_steps = -(-base // (per_replica * local_replicas))
        vec = np.zeros(n_workers, np.float32)
        vec[worker] = mine_steps
        steps = int(round(float(np.max(_all_sum(strategy, vec))) / local_replicas))

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        n, k = ctx.num_input_pipelines, ctx.input_pipeline_id
        rows_per_step = per_replica * max(1, ctx.num_replicas_in_sync // n)
        want = steps if steps is not None else max(
            -(-sum(u.count for u in pipeline_units(n, j)) // rows_per_step) for j in range(n))
        mine_units = pipeline_units(n, k)
        pad = want * rows_per_step - sum(u.count for u in mine_units)
        ds = _pipeline_dataset(fmt, files, mine_units, card, side, bands, image_dtype)
        if pad:
            filler = tf.data.Dataset.from_tensors(
                (tf.constant(-1, tf.int32), tf.zeros([card.input_size, card.input_size, bands],
                                                     tf.float32))).repeat(pad)
            ds = ds.concatenate(filler)
        return ds.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    @tf.function
    def encode_step(idx: Any, x: Any) -> Any:
        return strategy.run(lambda i, xx: (i, model(xx, training=False)), args=(idx, x))

    written = 0
    t_loop = t_first = time.perf_counter()
    first_rows = 0
    if (steps if steps is not None else base) > 0:
        dist = strategy.distribute_datasets_from_function(dataset_fn)
        for idx, x in dist:
            out_idx, out_vec = encode_step(idx, x)
            for i_t, v_t in zip(strategy.experimental_local_results(out_idx),
                                strategy.experimental_local_results(out_vec), strict=True):
                ii = np.asarray(i_t)
                vv = np.asarray(v_t, np.float32)
                keep = ii >= 0
                for g, v in zip(ii[keep], vv[keep], strict=True):
                    u = pending[int(flat_unit[g])]
                    if u.vectors is None:
                        u.vectors = np.zeros((u.count, dim), np.float32)
                    u.vectors[g - u.base] = v
                    u.filled += 1
                    if u.filled == u.count:
                        obj = planned[u.file_index]
                        assert obj is not None
                        write_shard(out, u, obj, u.vectors, encoder_id=card.encoder_id,
                                    normspec_digest=digest, worker=worker)
                        u.vectors = None
                        written += 1
                done += int(keep.sum())
            if not first_rows:  # the first step includes tracing the function
                first_rows, t_first = done - (total - base), time.perf_counter()
            yield {"done": done, "total": total, "shards_written": written,
                   "skipped_shards": len(finished), "worker": worker}
    unfinished = [u.name for u in pending if u.filled != u.count]
    if unfinished:
        raise ShardError(f"{out}: the input ended before {len(unfinished)} shard(s) were full, "
                         f"e.g. {unfinished[0]}: an input file has fewer records than planned")
    if n_workers > 1:  # a barrier: every worker has written its shards
        _all_sum(strategy, np.ones(1, np.float32))
    t_end = time.perf_counter()
    steady = base - first_rows
    summary: dict[str, Any] = {
        "out": out, "worker": worker, "workers": n_workers, "replicas": replicas,
        "encoded": base, "shards_written": written, "shards_skipped": len(finished),
        "seconds": t_end - t0, "encode_seconds": t_end - t_loop,
        "images_per_second": base / (t_end - t_loop) if base else None,
        "steady_images_per_second": steady / (t_end - t_first) if steady > 0 else None}
    if chief:
        job_now, sides = read_shard_folder(out)
        count = check_coverage(job_now, sides)
        manifest = {"complete": True, "count": count, "shards": len(sides), "dim": dim,
                    "encoder_id": card.encoder_id, "normspec_digest": digest,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomic(_join(out, MANIFEST_FILE), (json.dumps(manifest, indent=2) + "\n").encode())
        summary.update(count=count, shards=len(sides))
    return summary


def _data_digest(fmt: str, files: Sequence[str], normspec: dict[str, Any] | None) -> str:
    """The NormSpec digest the shards record (HDF5 attribute, TFRecord feature)."""
    if normspec is None:
        return "none"
    if fmt == "h5":
        import h5py

        with h5py.File(files[0], "r") as h:
            d = h.attrs.get("normspec_digest")
        if d:
            return d.decode() if isinstance(d, bytes) else str(d)
    else:
        import tensorflow as tf

        spec = {"normspec_digest": tf.io.FixedLenFeature([], tf.string, default_value="")}
        first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
        if first is not None:
            d = tf.io.parse_single_example(first, spec)["normspec_digest"].numpy().decode()
            if d:
                return str(d)
    text = json.dumps(normspec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bind_job(out: str, job: dict[str, Any], command: str | None, write: bool) -> None:
    """Write ``job.json`` (the chief), or check that an existing one is this job."""
    path = _join(out, JOB_FILE)
    if _exists(path):
        old = read_job(out)
        for key, what in (("encoder_id", "encoder"), ("normspec_digest", "NormSpec"),
                          ("dim", "dimension")):
            if old.get(key) != job[key]:
                raise EncodeJobError(
                    f"{out}: holds embedding shards of another {what} ({old.get(key)}, now "
                    f"{job[key]}); use a new --out folder")
        if old["data"]["files"] != job["data"]["files"]:
            raise EncodeJobError(
                f"{out}: the job began on other input files ({len(old['data']['files'])} "
                f"then, {len(job['data']['files'])} now); use a new --out folder")
        if old.get("shard_size") != job["shard_size"]:
            raise EncodeJobError(f"{out}: the job began with --shard-size "
                                 f"{old.get('shard_size')}; resume it with the same size")
        return
    if write:
        rec = {**job, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": command}
        _write_atomic(path, (json.dumps(rec, indent=2) + "\n").encode())


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m model.encode``."""
    p = argparse.ArgumentParser(
        prog="python -m model.encode",
        description="Encode TFRecord/HDF5 shards into embedding shards under a tf.distribute "
                    "strategy (resumes an unfinished job in the same --out folder).")
    p.add_argument("--encoder", required=True, help="exported encoder .keras (card beside it)")
    p.add_argument("--data", required=True,
                   help="shards: folder, glob or file, TFRecord or HDF5 (gs:// for TFRecord)")
    p.add_argument("--out", required=True, help="output folder of embedding shards")
    p.add_argument("--format", choices=["auto", "tfrecord", "h5"], default="auto",
                   help="input format (auto: HDF5 where the miner wrote both)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker", "tpu"],
                   default="default")
    p.add_argument("--tpu", default="", help="TPU name, grpc://host:port, or 'local' on a TPU VM")
    p.add_argument("--zone", default="", help="the TPU's zone")
    p.add_argument("--project", default="", help="the TPU's project")
    p.add_argument("--batch-size", type=int, default=256, help="global batch (default 256)")
    p.add_argument("--shard-size", type=int, default=4096,
                   help="vectors per embedding shard at most (default 4096)")
    p.add_argument("--logical-cpus", type=int, default=0, metavar="N",
                   help="split the CPU into N logical devices and mirror over them (tests and "
                        "benchmarks of the distributed path on a machine without GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _split_cpu(n: int) -> list[str]:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    return [f"/cpu:{i}" for i in range(n)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for errors of input, data or hardware)."""
    args = build_arg_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "model.encode",
                          *(sys.argv[1:] if argv is None else argv)])
    from model.distribute import HardwareError

    try:
        devices = None
        if args.logical_cpus:
            if args.logical_cpus < 1 or args.strategy != "mirrored":
                raise EncodeJobError("--logical-cpus N (N >= 1) goes with --strategy mirrored")
            devices = _split_cpu(args.logical_cpus)
        gen = run_job(args.encoder, args.data, args.out, strategy_name=args.strategy,
                      tpu=args.tpu, zone=args.zone, project=args.project, devices=devices,
                      batch_size=args.batch_size, shard_size=args.shard_size, fmt=args.format,
                      command=command)
        last = 0.0
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                summary = stop.value
                break
            now = time.monotonic()
            if not args.quiet and (now - last > 2 or p["done"] == p["total"]):
                last = now
                print(f"worker {p['worker']}: {p['done']}/{p['total']} objects, "
                      f"{p['shards_written']} shard(s) written, {p['skipped_shards']} already "
                      "done", flush=True)
    except (EncodeJobError, ShardError, HardwareError, FileNotFoundError) as exc:
        print(f"model.encode: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        from model.data import DataError

        if isinstance(exc, DataError):
            print(f"model.encode: error: {exc}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
