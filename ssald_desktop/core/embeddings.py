"""Encode image sets with an exported encoder, and the embedding store that keeps the vectors.

Encoding (:func:`encode`, :func:`encode_set`) is a generator: it yields an
:class:`EncodeProgress` after every batch, so a GUI worker can show progress and cancel by
closing the generator (``gen.close()``); every batch is committed before its progress is
yielded, so a cancelled run keeps what it finished and the next run carries on from there.
TensorFlow is imported inside the functions that encode, never at module import.

Image sets
----------
- :class:`ImageFolder`: PNG/JPEG files under a folder (recursive, sorted, dot-files skipped).
  The object id is the path relative to the folder without its extension (with it where two
  files would share an id). Pixels are decoded with PIL (8-bit only), centre-cropped to a square
  (as :func:`model.data.load_dataset` does), row 0 at the top.
- :class:`H5Shards`: the miner's HDF5 shards (``h5/*/shard-*.h5``): the ``rgb`` Lupton
  composites for an 8-bit encoder, the ``images`` band cubes (nanomaggies) for a band-cube
  encoder; ids, RA and Dec from the shards, the NormSpec from their ``normspec`` attribute;
  row 0 is the south edge (FITS order), as the shards store it.
- :class:`TFRecordShards`: the miner's TFRecord shards (``tfrecord/*/shard-*.tfrecord``), the
  same cutouts as its HDF5 shards (features ``rgb``, ``image``, ``shape``, ``normspec_digest``);
  ids, RA and Dec from the miner's ``manifest.sqlite`` where it records the shard (else one
  pass over the records), the NormSpec from ``normspec.json`` near the shards. TensorFlow
  (which decodes the records) is imported only when pixels are read. Local files only; at
  survey scale (``gs://``, TPUs, several workers) the distributed job :mod:`model.encode`
  encodes them into embedding shards that :func:`import_shards` merges into a store.
- :class:`ArraySet`: images already in memory (e.g. the cutouts of a field's galaxies).

Preprocessing (:func:`prepare_images`) is the one used for training and evaluation: the
encoder card's pixel scaling (:func:`model.data.apply_scaling`), then a resize of the whole
image to the encoder's input size with :func:`tf.image.resize` (bilinear, antialiased). Query
images go through the same function (:mod:`ssald_desktop.core.query`).

Store layout (one folder, :class:`EmbeddingStore`)
--------------------------------------------------
- ``store.json``: the identity of the vectors: dimension, the encoder id (the SHA-256 of the
  ``.keras`` file, from its model card), the encoder path, the NormSpec (JSON or null) and its
  digest (``"none"`` for plain images), the preprocessing (scaling, input size, bands, row
  order, shard key). Written once when the first vectors arrive.
- ``vectors.f32``: float32, little-endian, row-major ``(count, dim)``, read through
  :class:`numpy.memmap` (a raw file appends without rewriting; the JSON header describes it).
- ``objects.sqlite``: the object table ``objects(row, id, ra, dec, source, item, signature,
  normspec, encoder)`` (RA/Dec NaN when unknown, e.g. GZ2) and ``meta`` (``count``,
  ``rewrites``). The count in SQLite is authoritative: vectors are written and synced first,
  then one transaction adds the rows and the new count, so a crash loses at most the batch in
  flight and never leaves a row without its vector.

Embedding shards (:func:`import_shards`, ``ssald-cli embed --from-shards``) from
:mod:`model.encode` are merged into a store with the same rules: one encoder and one NormSpec
per store, objects already stored with the same source signature skipped, changed ones
overwritten; the shards' coverage (every input row in exactly one shard, no id twice) and every
``.npy`` (size, SHA-256, shape) are checked first.

"Re-encode only what changed": an object already stored with the same encoder and the same
source signature (file size and modification time; the content hash for in-memory arrays) is
skipped; a changed one is encoded again and its vector overwritten in place (``rewrites``
counts these, so an index knows it must be rebuilt rather than extended). Vectors of another
encoder or another NormSpec are refused: one store, one similarity space.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.pixels import centre_square
from ssald_desktop.core.errors import DataFileError, SsaldError
from ssald_desktop.core.progress import run_to_end

__all__ = [
    "ArraySet",
    "EmbeddingStore",
    "EncodeProgress",
    "EncoderInfo",
    "H5Shards",
    "ImageFolder",
    "ItemRef",
    "ReadOnlyStoreError",
    "TFRecordShards",
    "encode",
    "encode_set",
    "encoder_info",
    "import_shards",
    "load_encoder_checked",
    "normspec_digest",
    "open_image_set",
    "prepare_images",
    "read_image",
    "run_encode",
]

STORE_FILE = "store.json"
VECTORS_FILE = "vectors.f32"
TABLE_FILE = "objects.sqlite"
STORE_FORMAT = "ssald-embeddings"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrec", ".tfrecords")
TOP_DOWN = "top-down"  # row 0 is the top of the picture (PNG/JPEG)
BOTTOM_UP = "bottom-up"  # row 0 is the bottom / south (FITS arrays, the miner's shards)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Identity helpers
# --------------------------------------------------------------------------------------------


def normspec_digest(spec: Any) -> str:
    """The digest of a NormSpec (a :class:`NormSpec`, its dict or JSON), ``"none"`` for None.

    Parameters
    ----------
    spec : NormSpec, dict, str or None
        The preprocessing of the cutouts.

    Returns
    -------
    str
        :meth:`NormSpec.digest` (16 hex digits); for a dict that is not a valid NormSpec, the
        first 16 hex digits of the SHA-256 of its canonical JSON.
    """
    if spec is None:
        return "none"
    from ssald_desktop.core.cutouts import NormSpec

    if isinstance(spec, NormSpec):
        return spec.digest()
    if isinstance(spec, (str, bytes)):
        spec = json.loads(spec)
    try:
        return NormSpec.from_dict(spec).digest()
    except (TypeError, ValueError):
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scaling_dict(scaling: Any, where: str) -> dict[str, Any]:
    if isinstance(scaling, dict) and scaling.get("kind") in ("uint8", "asinh"):
        return dict(scaling)
    if isinstance(scaling, str) and "255" in scaling:
        return {"kind": "uint8", "divide": 255.0}
    raise DataFileError(f"{where}: unknown pixel scaling {scaling!r} in the model card")


@dataclass(frozen=True)
class EncoderInfo:
    """What the store needs to know about an exported encoder (from its model card).

    Attributes
    ----------
    path : str
        The ``.keras`` file.
    encoder_id : str
        Its SHA-256 (``card["encoder_sha256"]``).
    bands, input_size : int
        Input channels and side in pixels.
    scaling : dict
        Pixel scaling (see :func:`model.data.apply_scaling`).
    normspec : dict or None
        NormSpec of the training data (None when trained on plain images).
    card : dict
        The whole model card.
    """

    path: str
    encoder_id: str
    bands: int
    input_size: int
    scaling: dict[str, Any]
    normspec: dict[str, Any] | None
    card: dict[str, Any] = field(repr=False, compare=False)


def encoder_info(path: str | Path, verify: bool = True) -> EncoderInfo:
    """Read an exported encoder's card (without TensorFlow) and check the file against it.

    Parameters
    ----------
    path : path-like
        ``encoder.keras``; ``encoder.card.json`` must lie beside it.
    verify : bool
        Compare the file's SHA-256 with the card's ``encoder_sha256``.

    Raises
    ------
    DataFileError
        Missing file or card, a card that is not an SSALD encoder card, a file that is not the
        one the card describes.
    """
    from model.export import file_sha256, load_card

    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: no such encoder file")
    try:
        card = load_card(p)
    except (FileNotFoundError, ValueError) as exc:
        raise DataFileError(str(exc)) from exc
    sha = card.get("encoder_sha256")
    if not sha:
        raise DataFileError(f"{p}: its model card has no encoder_sha256")
    if verify and file_sha256(p) != sha:
        raise DataFileError(f"{p}: the file is not the encoder its model card describes "
                            "(SHA-256 differs); export it again")
    arch = card.get("architecture", {})
    shape = card.get("input", {}).get("shape") or [None, None, None]
    bands = int(arch.get("bands") or shape[2] or 3)
    size = int(arch.get("input_size") or shape[0])
    scaling = _scaling_dict(card.get("input", {}).get("scaling"), str(p))
    return EncoderInfo(str(p.resolve()), sha, bands, size, scaling, card.get("normspec"), card)


def load_encoder_checked(info: EncoderInfo) -> Any:
    """Load the Keras encoder (``safe_mode=True``) on the TensorFlow thread."""
    from model.export import load_encoder

    try:
        enc, _card = on_tf_thread(load_encoder, info.path)
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{info.path}: cannot load the encoder ({exc})") from exc
    return enc


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def read_image(path: str | Path, bands: int = 3) -> np.ndarray:
    """Read an 8-bit PNG/JPEG as ``(H, W, bands)`` uint8, centre-cropped to a square.

    RGBA loses its alpha channel and grayscale is repeated to three channels (as TensorFlow's
    ``decode_image(channels=3)`` does for the training data); ``bands=1`` reads luminance.

    Raises
    ------
    DataFileError
        Unreadable, truncated or empty file, a 16-bit or floating-point image, an image
        smaller than 2 x 2 pixels; the message names the file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise DataFileError(f"{p}: empty file (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(26)
        # PNG: the IHDR bit depth is byte 24 (Pillow reads 16-bit colour PNGs as 8-bit RGB).
        depth = head[24] if head[:8] == _PNG_SIGNATURE and len(head) > 24 else 8
        with Image.open(p) as im:
            mode = im.mode
            if depth > 8 or mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                what = ("16-bit" if depth > 8 or mode.startswith("I;16")
                        else f"32-bit ({mode} mode)")
                raise DataFileError(
                    f"{p}: a {what} {im.format or ''} image; images must be 8-bit RGB, RGBA "
                    "or grayscale renders (use a FITS file for linear pixel values)")
            w, h = im.size
            if w < 2 or h < 2:
                raise DataFileError(f"{p}: the image is {w}x{h} pixels, too small to search "
                                    "with (empty or 1-pixel image)")
            im.load()
            arr = np.asarray(im.convert("L" if bands == 1 else "RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataFileError(f"{p}: no such file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataFileError(f"{p}: not a readable PNG/JPEG image ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return centre_square(arr)


def prepare_images(raw: Sequence[np.ndarray], scaling: dict[str, Any],
                   input_size: int) -> np.ndarray:
    """Scale and resize raw images exactly as the encoder's training data were.

    :func:`model.pixels.prepare_raw_images`, run on the TensorFlow thread
    (:func:`on_tf_thread`).
    """
    return on_tf_thread(_prepare_images, raw, scaling, input_size)


def _prepare_images(raw: Sequence[np.ndarray], scaling: dict[str, Any],
                    input_size: int) -> np.ndarray:
    from model.pixels import prepare_raw_images

    return prepare_raw_images(raw, scaling, input_size)


_TF_THREAD: Any = None


def on_tf_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` on the one long-lived thread that runs this process's TensorFlow work.

    The GUI runs encoding and queries in Qt's pooled worker threads, which come and go; a Keras
    model loaded on one of them and called from others crashed TensorFlow (a segmentation
    fault in the eager call) in the GUI tests. Keeping model loading, preprocessing and
    inference on a single thread avoids it; callers simply block until it is done.
    """
    global _TF_THREAD
    import threading

    if threading.current_thread().name.startswith("ssald-tf"):
        return func(*args, **kwargs)
    if _TF_THREAD is None:
        from concurrent.futures import ThreadPoolExecutor

        _TF_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssald-tf")
    return _TF_THREAD.submit(func, *args, **kwargs).result()


def embed_prepared(encoder: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run the encoder on prepared images; float32 ``(N, dim)`` (on the TensorFlow thread)."""
    return on_tf_thread(_embed_prepared, encoder, x, batch_size)


def _embed_prepared(encoder: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    import tensorflow as tf

    out = []
    for s in range(0, len(x), batch_size):
        out.append(np.asarray(encoder(tf.convert_to_tensor(x[s:s + batch_size]),
                                      training=False), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRef:
    """One object of an image set, before its pixels are read."""

    id: str
    ra: float
    dec: float
    source: str
    item: int
    signature: str


class ImageSet(Protocol):
    """What :func:`encode_set` needs from a set of images."""

    kind: str
    normspec: dict[str, Any] | None
    row_order: str
    image_key: str | None

    def refs(self) -> list[ItemRef]:
        """Every object, in a fixed order."""
        ...

    def read(self, refs: Sequence[ItemRef]) -> list[np.ndarray]:
        """Raw pixels ``(H, W, C)`` of some objects."""
        ...


def _stat_signature(path: str | Path) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


class ImageFolder:
    """PNG/JPEG files under a folder (see the module docstring).

    Parameters
    ----------
    folder : path-like
        Searched recursively.
    bands : int
        3 (RGB) or 1 (luminance).
    files : sequence of path-like, optional
        Use these files (under ``folder``) instead of listing it.
    """

    kind = "images"
    normspec: dict[str, Any] | None = None
    row_order = TOP_DOWN
    image_key: str | None = None

    def __init__(self, folder: str | Path, bands: int = 3,
                 files: Sequence[str | Path] | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataFileError(f"{self.folder}: no such folder")
        self.bands = bands
        if files is None:
            found = []
            for root, dirs, names in os.walk(self.folder):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / n for n in names
                          if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
            self.files = sorted(found)
        else:
            self.files = [Path(f) for f in files]
        if not self.files:
            raise DataFileError(f"{self.folder}: no PNG or JPEG images found")

    def refs(self) -> list[ItemRef]:
        """One :class:`ItemRef` per file; the id is the relative path without extension."""
        rel = [f.relative_to(self.folder).as_posix() if f.is_relative_to(self.folder)
               else f.name for f in self.files]
        stems = [r.rsplit(".", 1)[0] for r in rel]
        seen: dict[str, int] = {}
        for s in stems:
            seen[s] = seen.get(s, 0) + 1
        out = []
        for i, (f, r, s) in enumerate(zip(self.files, rel, stems, strict=True)):
            try:
                sig = _stat_signature(f)
            except OSError as exc:
                raise DataFileError(f"{f}: cannot read ({exc})") from exc
            out.append(ItemRef(s if seen[s] == 1 else r, math.nan, math.nan, str(f), i, sig))
        return out

    def read(self, refs: Sequence[ItemRef]) -> list[np.ndarray]:
        """Decode the files (8-bit, centre-cropped)."""
        return [read_image(r.source, self.bands) for r in refs]


def _h5_files(source: str | Path) -> list[Path]:
    p = Path(source)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataFileError(f"{p}: no such folder or shard file")
    for pattern in ("h5/*/shard-*.h5", "*/shard-*.h5", "*.h5", "*.hdf5"):
        found = sorted(p.glob(pattern))
        if found:
            return found
    raise DataFileError(f"{p}: no HDF5 shards (h5/*/shard-*.h5 or *.h5) found")


class H5Shards:
    """The miner's HDF5 shards (see the module docstring).

    Parameters
    ----------
    source : path-like
        The miner's output folder, its ``h5`` folder, a folder of ``*.h5`` or one shard.
    image_key : {"rgb", "images"}
        The Lupton composites (8-bit) or the band cubes (nanomaggies).
    """

    kind = "h5"
    row_order = BOTTOM_UP
    image_key: str | None

    def __init__(self, source: str | Path, image_key: str = "rgb"):
        import h5py

        if image_key not in ("rgb", "images"):
            raise DataFileError(f"image_key must be 'rgb' or 'images', got {image_key!r}")
        self.image_key = image_key
        self.files = _h5_files(source)
        self.normspec: dict[str, Any] | None = None
        self._refs: list[ItemRef] = []
        first_spec: str | None = None
        for f in self.files:
            sig = _stat_signature(f)
            try:
                with h5py.File(f, "r") as h:
                    if image_key not in h:
                        raise DataFileError(f"{f}: no dataset {image_key!r} (has {', '.join(h)})")
                    n = int(h[image_key].shape[0])
                    ids = ([x.decode() if isinstance(x, bytes) else str(x) for x in h["id"][...]]
                           if "id" in h else [f"{f.stem}#{i}" for i in range(n)])
                    ra = h["ra"][...] if "ra" in h else np.full(n, np.nan)
                    dec = h["dec"][...] if "dec" in h else np.full(n, np.nan)
                    spec = h.attrs.get("normspec")
            except OSError as exc:
                raise DataFileError(f"{f}: not a readable HDF5 shard ({exc})") from exc
            if isinstance(spec, bytes):
                spec = spec.decode()
            if first_spec is None:
                first_spec = spec
                self.normspec = json.loads(spec) if spec else None
            elif spec != first_spec and normspec_digest(spec) != normspec_digest(first_spec):
                raise DataFileError(f"{f}: its NormSpec differs from that of {self.files[0]}; "
                                    "shards made with different preprocessing cannot share a "
                                    "store")
            self._refs += [ItemRef(ids[i], float(ra[i]), float(dec[i]), str(f), i, sig)
                           for i in range(n)]

    def refs(self) -> list[ItemRef]:
        """Every object of every shard, in shard order."""
        return list(self._refs)

    def read(self, refs: Sequence[ItemRef]) -> list[np.ndarray]:
        """Read the rows (grouped by shard, ascending), as ``(H, W, C)``."""
        import h5py

        out: list[np.ndarray | None] = [None] * len(refs)
        by_file: dict[str, list[int]] = {}
        for j, r in enumerate(refs):
            by_file.setdefault(r.source, []).append(j)
        for f, js in by_file.items():
            js = sorted(js, key=lambda j: refs[j].item)
            rows = [refs[j].item for j in js]
            try:
                with h5py.File(f, "r") as h:
                    block = h[self.image_key][rows]
            except OSError as exc:
                raise DataFileError(f"{f}: cannot read {self.image_key!r} ({exc})") from exc
            for j, x in zip(js, block, strict=True):
                out[j] = (np.asarray(x) if self.image_key == "rgb"
                          else np.transpose(np.asarray(x, np.float32), (1, 2, 0)))
        return [x for x in out if x is not None]


def _tfrecord_files(source: str | Path) -> list[Path]:
    text = str(source)
    if "://" in text:
        raise DataFileError(f"{text}: shards on a remote file system are encoded by the "
                            "distributed job (python -m model.encode --data ...); the desktop "
                            "reads local shards")
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() in TFRECORD_EXTENSIONS:
            return [p]
        raise DataFileError(f"{p}: not a TFRecord shard (extension {p.suffix!r})")
    if not p.is_dir():
        raise DataFileError(f"{p}: no such folder or shard file")
    for pattern in ("tfrecord/*/shard-*.tfrecord", "*/shard-*.tfrecord", "*.tfrecord",
                    "*.tfrec", "*.tfrecords"):
        found = sorted(p.glob(pattern))
        if found:
            return found
    raise DataFileError(f"{p}: no TFRecord shards (tfrecord/*/shard-*.tfrecord or *.tfrecord) "
                        "found")


def _read_tfrecord_images(path: str, image_key: str, digest: str | None) -> np.ndarray:
    """Every record's image of one TFRecord shard, ``(N, H, W, C)`` (on the TF thread).

    ``rgb``: uint8 ``(n, n, 3)`` as stored; ``images``: the ``(bands, n, n)`` float16/float32
    cube as float32 with bands last (as :class:`H5Shards` reads it). Each record's
    ``normspec_digest`` must be ``digest`` (when both are known).
    """
    import tensorflow as tf

    feature = "rgb" if image_key == "rgb" else "image"
    spec = {feature: tf.io.FixedLenFeature([], tf.string),
            "shape": tf.io.FixedLenFeature([3], tf.int64),
            "normspec_digest": tf.io.FixedLenFeature([], tf.string, default_value="")}
    out: list[np.ndarray] = []
    try:
        for batch in tf.data.TFRecordDataset(str(path)).batch(256):
            parsed = tf.io.parse_example(batch, spec)
            for raw, shape, dig in zip(parsed[feature].numpy(), parsed["shape"].numpy(),
                                       parsed["normspec_digest"].numpy(), strict=True):
                if digest and dig and dig.decode() != digest:
                    raise DataFileError(f"{path}: record {len(out)} is a cutout of NormSpec "
                                        f"{dig.decode()}, the shards' NormSpec is {digest}")
                nb, h, w = (int(v) for v in shape)
                if image_key == "rgb":
                    if len(raw) != h * w * 3:
                        raise DataFileError(f"{path}: record {len(out)}: 'rgb' holds {len(raw)} "
                                            f"bytes, not {h}x{w}x3")
                    out.append(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
                    continue
                itemsize = len(raw) // max(1, nb * h * w)
                if itemsize not in (2, 4) or len(raw) != itemsize * nb * h * w:
                    raise DataFileError(f"{path}: record {len(out)}: 'image' holds {len(raw)} "
                                        f"bytes for shape {(nb, h, w)}: neither float16 nor "
                                        "float32")
                x = np.frombuffer(raw, np.float16 if itemsize == 2 else np.float32)
                out.append(np.transpose(x.reshape(nb, h, w).astype(np.float32), (1, 2, 0)))
    except tf.errors.OpError as exc:
        raise DataFileError(f"{path}: not a readable TFRecord shard ({exc.message})") from exc
    if not out:
        return np.zeros((0, 0, 0, 0), np.uint8 if image_key == "rgb" else np.float32)
    try:
        return np.stack(out)
    except ValueError as exc:
        raise DataFileError(f"{path}: its records have images of different shapes") from exc


class TFRecordShards:
    """The miner's TFRecord shards (see the module docstring).

    The same objects, pixels and identity as :class:`H5Shards` of the same mining run, so a
    store may take either; the source signature is the shard file's size and modification
    time, so only changed shards are encoded again.

    Parameters
    ----------
    source : path-like
        The miner's output folder, its ``tfrecord`` folder, a folder of ``*.tfrecord`` or one
        shard (local).
    image_key : {"rgb", "images"}
        The Lupton composites (8-bit) or the band cubes (nanomaggies).

    Raises
    ------
    DataFileError
        No shards, no NormSpec (``normspec.json``) near them, an unreadable shard (named).
    """

    kind = "tfrecord"
    row_order = BOTTOM_UP
    image_key: str | None

    def __init__(self, source: str | Path, image_key: str = "rgb"):
        from model.encode import ShardError, find_normspec, shard_objects

        if image_key not in ("rgb", "images"):
            raise DataFileError(f"image_key must be 'rgb' or 'images', got {image_key!r}")
        self.image_key = image_key
        self.files = _tfrecord_files(source)
        names = [str(f) for f in self.files]
        try:
            self.normspec: dict[str, Any] | None = find_normspec(names, "tfrecord", str(source))
            objects = on_tf_thread(shard_objects, names, "tfrecord", str(source))
        except ShardError as exc:
            raise DataFileError(str(exc)) from exc
        self._digest = normspec_digest(self.normspec) if self.normspec is not None else None
        self._refs: list[ItemRef] = []
        for obj in objects:
            self._refs += [ItemRef(obj.ids[i], float(obj.ra[i]), float(obj.dec[i]), obj.path, i,
                                   obj.signature) for i in range(obj.count)]
        self._cache: tuple[tuple[str, str], np.ndarray] | None = None

    def refs(self) -> list[ItemRef]:
        """Every object of every shard, in shard order."""
        return list(self._refs)

    def _images(self, path: str) -> np.ndarray:
        key = (path, _stat_signature(path))
        if self._cache is None or self._cache[0] != key:
            assert self.image_key is not None
            arr = on_tf_thread(_read_tfrecord_images, path, self.image_key, self._digest)
            self._cache = (key, arr)
        return self._cache[1]

    def read(self, refs: Sequence[ItemRef]) -> list[np.ndarray]:
        """Decode the rows (one shard at a time, the last one kept), as ``(H, W, C)``."""
        out: list[np.ndarray | None] = [None] * len(refs)
        by_file: dict[str, list[int]] = {}
        for j, r in enumerate(refs):
            by_file.setdefault(r.source, []).append(j)
        for f, js in by_file.items():
            try:
                arr = self._images(f)
            except OSError as exc:
                raise DataFileError(f"{f}: cannot read ({exc})") from exc
            for j in js:
                if refs[j].item >= len(arr):
                    raise DataFileError(f"{f}: holds {len(arr)} records, but object "
                                        f"{refs[j].id!r} is row {refs[j].item} (the miner's "
                                        "manifest does not describe this file)")
                out[j] = np.array(arr[refs[j].item])
        return [x for x in out if x is not None]


class ArraySet:
    """Images already in memory, e.g. the cutouts of one field's galaxies.

    Parameters
    ----------
    ids : sequence of str
        Object ids.
    images : ndarray or sequence of ndarray
        ``(H, W, C)`` each: 8-bit RGB or band cubes in nanomaggies (bands last).
    ra, dec : sequence of float, optional
        Positions in degrees (NaN when unknown).
    normspec : NormSpec, dict or None
        How the cutouts were made.
    source : str
        Recorded as the source of every object.
    row_order : str
        ``"bottom-up"`` (FITS/cutout arrays) or ``"top-down"`` (pictures).
    image_key : {"rgb", "images"} or None
        What the arrays are.
    """

    kind = "arrays"

    def __init__(self, ids: Sequence[str], images: Any, ra: Sequence[float] | None = None,
                 dec: Sequence[float] | None = None, normspec: Any = None,
                 source: str = "memory", row_order: str = BOTTOM_UP,
                 image_key: str | None = "rgb"):
        if len(ids) != len(images):
            raise SsaldError(f"{len(ids)} ids for {len(images)} images")
        n = len(ids)
        self.images = images
        if normspec is not None and not isinstance(normspec, dict):
            normspec = json.loads(normspec) if isinstance(normspec, str) else normspec.to_dict()
        self.normspec = normspec
        self.row_order = row_order
        self.image_key = image_key
        ras = np.full(n, np.nan) if ra is None else np.asarray(ra, float)
        decs = np.full(n, np.nan) if dec is None else np.asarray(dec, float)
        self._refs = [ItemRef(str(ids[i]), float(ras[i]), float(decs[i]), source, i,
                              "sha256:" + hashlib.sha256(
                                  np.ascontiguousarray(images[i]).tobytes()).hexdigest()[:32])
                      for i in range(n)]

    def refs(self) -> list[ItemRef]:
        """Every object."""
        return list(self._refs)

    def read(self, refs: Sequence[ItemRef]) -> list[np.ndarray]:
        """The arrays themselves."""
        return [np.asarray(self.images[r.item]) for r in refs]


def open_image_set(source: str | Path, info: EncoderInfo, fmt: str = "auto") -> ImageSet:
    """An image folder, HDF5 or TFRecord shards, with the shard key the encoder needs.

    Parameters
    ----------
    source : path-like
        A folder of images, the miner's output folder (or its shards).
    info : EncoderInfo
        The encoder (its scaling decides ``rgb`` or ``images``).
    fmt : {"auto", "images", "h5", "tfrecord", "shards"}
        ``auto``: HDF5 if the folder holds HDF5 shards (the miner may write both), else
        TFRecord if it holds TFRecord shards, else images. ``shards``: the same choice between
        the two shard kinds, and an error when there is neither.
    """
    p = Path(source)
    if fmt in ("auto", "shards"):
        if p.is_file() and p.suffix.lower() in (".h5", ".hdf5"):
            kind = "h5"
        elif p.is_file() and p.suffix.lower() in TFRECORD_EXTENSIONS:
            kind = "tfrecord"
        elif p.is_dir() and any(next(p.glob(g), None) is not None for g in (
                "h5/*/shard-*.h5", "*/shard-*.h5", "*.h5", "*.hdf5")):
            kind = "h5"
        elif p.is_dir() and any(next(p.glob(g), None) is not None for g in (
                "tfrecord/*/shard-*.tfrecord", "*/shard-*.tfrecord", "*.tfrecord", "*.tfrec",
                "*.tfrecords")):
            kind = "tfrecord"
        elif fmt == "shards":
            raise DataFileError(f"{p}: no HDF5 or TFRecord shards here (the miner writes "
                                "h5/NNN/shard-*.h5 and tfrecord/NNN/shard-*.tfrecord)")
        else:
            kind = "images"
        fmt = kind
    if fmt == "images":
        if info.scaling["kind"] != "uint8":
            raise DataFileError(f"{p}: the encoder {Path(info.path).name} takes band cubes in "
                                "nanomaggies; a folder of 8-bit images cannot be encoded with it")
        return ImageFolder(p, bands=info.bands)
    key = "rgb" if info.scaling["kind"] == "uint8" else "images"
    if fmt == "h5":
        return H5Shards(p, key)
    if fmt == "tfrecord":
        return TFRecordShards(source, key)
    raise DataFileError(f"fmt must be auto, images, h5 or tfrecord, got {fmt!r}")


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@functools.lru_cache(maxsize=2)
def _tfrecord_rgb(path: str, signature: str) -> np.ndarray:
    """The ``rgb`` composites of one TFRecord shard (for thumbnails; the last two kept)."""
    return on_tf_thread(_read_tfrecord_images, path, "rgb", None)


class ReadOnlyStoreError(DataFileError):
    """A change was asked of an embedding store that is open read-only."""


def _writable(folder: Path) -> bool:
    """Whether the store folder and its existing files can be written by this process.

    :func:`os.access` asks the kernel with this process's credentials, so a read-only mount
    (``EROFS``) and missing write permission count even for root without
    ``CAP_DAC_OVERRIDE``; root with it may write anywhere but on a read-only mount.
    """
    if not os.access(folder, os.W_OK):
        return False
    for name in (TABLE_FILE, STORE_FILE, VECTORS_FILE):
        f = folder / name
        if f.exists() and not os.access(f, os.W_OK):
            return False
    return True


def _is_read_only_error(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _connect_read_only(table: Path) -> sqlite3.Connection:
    """Open the object table for reading only: ``mode=ro``, else ``immutable=1``.

    ``immutable`` is the fallback where SQLite cannot take its locks or make its shared-memory
    file (a read-only file system); it is safe there because nothing can change the file.
    """
    uri = table.resolve().as_uri()
    last: sqlite3.Error | None = None
    for query in ("mode=ro", "mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(f"{uri}?{query}", uri=True, check_same_thread=False)
            names = {r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as exc:
            last = exc
            continue
        if not {"objects", "meta"} <= names:
            db.close()
            raise DataFileError(f"{table}: not an embedding store's object table (its tables: "
                                f"{', '.join(sorted(names)) or 'none'})")
        return db
    raise DataFileError(f"{table}: cannot open the object table for reading ({last})")


class EmbeddingStore:
    """Float32 vectors (memory-mapped) and their object table, in one folder.

    Parameters
    ----------
    path : path-like
        The store folder; created when ``create`` and missing.
    create : bool
        Create an empty store if the folder holds none (else a missing store is an error).
    read_only : bool or None
        Open for reading only (SQLite ``mode=ro``; nothing is created or written, and a change
        raises :class:`ReadOnlyStoreError`). None (the default) decides by itself: an existing
        store whose folder or files this process cannot write (a bundle installed read-only, a
        read-only mount) is opened read-only, so that it can still be searched.

    Notes
    -----
    See the module docstring for the layout. One process writes at a time; a store object
    may move between threads (a GUI worker) but is not for two threads at once.
    """

    def __init__(self, path: str | Path, create: bool = True, read_only: bool | None = None):
        self.path = Path(path)
        table = self.path / TABLE_FILE
        if not table.exists() and not create:
            raise DataFileError(f"{self.path}: not an embedding store (no {TABLE_FILE})")
        if self.path.exists() and not self.path.is_dir():
            raise DataFileError(f"{self.path}: not a folder")
        auto = read_only is None
        if read_only is None:
            read_only = table.exists() and not _writable(self.path)
        #: True when the store was opened for reading only (explicitly, or because its folder
        #: or table cannot be written: a bundle installed read-only, a read-only mount).
        self.read_only = bool(read_only)
        if self.read_only and not table.exists():
            raise DataFileError(f"{self.path}: not an embedding store (no {TABLE_FILE}); a "
                                "store opened read-only must exist")
        if not self.read_only:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataFileError(f"{self.path}: cannot create the embedding store folder "
                                    f"({exc.strerror or exc})") from exc
        self.header: dict[str, Any] = {}
        hp = self.path / STORE_FILE
        if hp.exists():
            try:
                self.header = json.loads(hp.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataFileError(f"{hp}: unreadable store header ({exc})") from exc
            if self.header.get("format") != STORE_FORMAT:
                raise DataFileError(f"{hp}: not an SSALD embedding store header")
        if self.read_only:
            self._db = _connect_read_only(table)
        else:
            try:
                self._db = self._connect_for_writing(table)
            except sqlite3.OperationalError as exc:
                # a file system that refuses writes although access() allowed them (e.g. a
                # protected install folder): an existing store opened with the automatic
                # choice is still readable
                if not (auto and table.exists()):
                    raise DataFileError(f"{table}: cannot open the object table for writing "
                                        f"({exc})") from exc
                self.read_only = True
                self._db = _connect_read_only(table)
        self._map: np.ndarray | None = None
        self._map_count = -1

    def _connect_for_writing(self, table: Path) -> sqlite3.Connection:
        # usable from a worker thread (one thread at a time: the GUI's worker pattern)
        db = sqlite3.connect(table, check_same_thread=False)
        try:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS objects(row INTEGER PRIMARY KEY, id TEXT UNIQUE "
                "NOT NULL, ra REAL, dec REAL, source TEXT, item INTEGER, signature TEXT, "
                "normspec TEXT, encoder TEXT);"
                "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);"
                "INSERT OR IGNORE INTO meta VALUES ('count', '0'), ('rewrites', '0');")
            db.commit()
        except sqlite3.OperationalError as exc:
            db.close()
            if _is_read_only_error(exc):
                raise
            raise DataFileError(f"{table}: not a readable object table ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            db.close()
            raise DataFileError(f"{table}: not a readable object table ({exc})") from exc
        return db

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"{self.path}: the embedding store is opened read-only (its folder or files "
                f"cannot be written), so it cannot {what}; copy it to a writable folder "
                "to add to it")

    # -- identity ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, count={self.count}, dim={self.dim})"

    def close(self) -> None:
        """Close the object table."""
        self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else "0"

    @property
    def count(self) -> int:
        """Number of stored vectors."""
        return int(self._meta("count"))

    @property
    def rewrites(self) -> int:
        """How many vectors were overwritten in place since the store began."""
        return int(self._meta("rewrites"))

    @property
    def dim(self) -> int | None:
        """Vector dimension (None while empty)."""
        d = self.header.get("dim")
        return int(d) if d is not None else None

    @property
    def encoder_id(self) -> str | None:
        """SHA-256 of the encoder that made every vector."""
        return self.header.get("encoder_id")

    @property
    def normspec(self) -> dict[str, Any] | None:
        """NormSpec of the encoded cutouts (None for plain images)."""
        return self.header.get("normspec")

    @property
    def normspec_digest(self) -> str | None:
        """Digest of :attr:`normspec` (``"none"`` for plain images)."""
        return self.header.get("normspec_digest")

    def bind(self, identity: dict[str, Any]) -> None:
        """Set the store's identity, or check that ``identity`` matches it.

        Parameters
        ----------
        identity : dict
            ``encoder_id``, ``normspec``, ``normspec_digest``, ``dim`` and the preprocessing
            (``encoder_path``, ``scaling``, ``input_size``, ``bands``, ``row_order``,
            ``image_key``).

        Raises
        ------
        DataFileError
            The store holds vectors of another encoder, another NormSpec or dimension.
        """
        h = self.header
        if h.get("encoder_id"):
            if h["encoder_id"] != identity["encoder_id"]:
                raise DataFileError(
                    f"{self.path}: the store holds vectors of encoder {h['encoder_id'][:12]} "
                    f"({h.get('encoder_path')}); encoder {identity['encoder_id'][:12]} "
                    f"({identity.get('encoder_path')}) is another one, and vectors of two "
                    "encoders cannot be compared: use a new store folder")
            if h["normspec_digest"] != identity["normspec_digest"]:
                raise DataFileError(
                    f"{self.path}: the store holds cutouts of NormSpec {h['normspec_digest']}; "
                    f"these have NormSpec {identity['normspec_digest']}, made with other "
                    "preprocessing: use a new store folder")
            if int(h["dim"]) != int(identity["dim"]):
                raise DataFileError(f"{self.path}: the store holds {h['dim']}-d vectors, not "
                                    f"{identity['dim']}-d")
            if (h.get("row_order"), h.get("image_key")) != (identity.get("row_order"),
                                                            identity.get("image_key")):
                raise DataFileError(
                    f"{self.path}: the store holds {h.get('image_key') or 'picture'} images "
                    f"({h.get('row_order')}); these are {identity.get('image_key') or 'pictures'}"
                    f" ({identity.get('row_order')}): use a new store folder")
            if h.get("encoder_path") != identity.get("encoder_path") and not self.read_only:
                h["encoder_path"] = identity.get("encoder_path")
                self._write_header()
            return
        self._check_writable("take vectors")
        self.header = {"format": STORE_FORMAT, "version": 1, "dtype": "<f4",
                       "vectors": VECTORS_FILE, "objects": TABLE_FILE,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **identity}
        self._write_header()

    def _write_header(self) -> None:
        self._check_writable("record its header")
        _atomic_write_text(self.path / STORE_FILE, json.dumps(self.header, indent=2) + "\n")

    # -- vectors -----------------------------------------------------------------------------
    def vectors(self) -> np.ndarray:
        """All vectors, ``(count, dim)`` float32, memory-mapped read-only (no copy)."""
        n, d = self.count, self.dim
        if d is None or n == 0:
            return np.zeros((0, d or 0), np.float32)
        if self._map is None or self._map_count != n:
            vp = self.path / VECTORS_FILE
            need = n * d * 4
            size = vp.stat().st_size if vp.exists() else 0
            if size < need:
                raise DataFileError(f"{vp}: truncated ({size} bytes, the table records {n} "
                                    f"vectors of {d} float32 = {need} bytes)")
            self._map = np.memmap(vp, dtype="<f4", mode="r", shape=(n, d))
            self._map_count = n
        return self._map

    def vector(self, object_id: str) -> np.ndarray:
        """The stored vector of one object (a copy).

        Raises
        ------
        InvalidQueryError
            No object with that id.
        """
        from ssald_desktop.core.errors import InvalidQueryError

        row = self.row_of(object_id)
        if row is None:
            raise InvalidQueryError(f"no object {object_id!r} in the embedding store {self.path}")
        return np.array(self.vectors()[row])

    def row_of(self, object_id: str) -> int | None:
        """Row of an object id, or None."""
        r = self._db.execute("SELECT row FROM objects WHERE id = ?", (str(object_id),)).fetchone()
        return None if r is None or r[0] >= self.count else int(r[0])

    def nearest_object(self, ra: float, dec: float, radius_arcsec: float = 1.0) -> str | None:
        """Id of the stored object nearest to (RA, Dec) within a radius, or None.

        A box query on the object table, then the exact angular separation (haversine) of the
        few rows inside it.
        """
        if not (math.isfinite(ra) and math.isfinite(dec)) or radius_arcsec <= 0:
            return None
        r = radius_arcsec / 3600.0
        dra = r / max(math.cos(math.radians(dec)), 1e-6)
        recs = self._db.execute(
            "SELECT id, ra, dec FROM objects WHERE row < ? AND dec BETWEEN ? AND ? AND "
            "((ra BETWEEN ? AND ?) OR (ra BETWEEN ? AND ?) OR (ra BETWEEN ? AND ?))",
            (self.count, dec - r, dec + r, ra - dra, ra + dra, ra - dra + 360, ra + dra + 360,
             ra - dra - 360, ra + dra - 360)).fetchall()
        best, best_sep = None, math.inf
        for object_id, ra2, dec2 in recs:
            d1, d2 = math.radians(dec), math.radians(dec2)
            h = (math.sin((d2 - d1) / 2) ** 2
                 + math.cos(d1) * math.cos(d2) * math.sin(math.radians(ra2 - ra) / 2) ** 2)
            sep = math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600
            if sep <= radius_arcsec and sep < best_sep:
                best, best_sep = str(object_id), sep
        return best

    def source_path(self, source: str) -> Path:
        """A stored source as a path: relative sources are relative to the store folder.

        A bundled store (e.g. the sample survey's) records its sources relative to itself, so
        that it works wherever it is installed.
        """
        p = Path(source)
        return p if p.is_absolute() else self.path / p

    def object_images(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        """The stored objects' pictures as 8-bit RGB, row 0 at the top (for thumbnails).

        Read from their sources: image files are decoded, HDF5 shard rows give their ``rgb``
        composite (flipped from FITS order). ``None`` for an object whose source is gone, is
        in memory only (an :class:`ArraySet`) or has no colour picture; unknown ids too.
        """
        out: list[np.ndarray | None] = []
        for object_id in ids:
            row = self.row_of(object_id)
            obj = self.objects([row])[0] if row is not None else None
            out.append(None if obj is None else self._object_image(obj))
        return out

    def _object_image(self, obj: dict[str, Any]) -> np.ndarray | None:
        if not obj.get("source"):
            return None
        path = self.source_path(str(obj["source"]))
        try:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                img = read_image(path, 3)
                return np.ascontiguousarray(img.astype(np.uint8))
            if path.suffix.lower() in (".h5", ".hdf5"):
                import h5py

                with h5py.File(path, "r") as h:
                    if "rgb" not in h:
                        return None
                    img = np.asarray(h["rgb"][int(obj["item"])])
                return np.ascontiguousarray(img[::-1])  # FITS order -> top-down
            if path.suffix.lower() in TFRECORD_EXTENSIONS:
                arr = _tfrecord_rgb(str(path), _stat_signature(path))
                return np.ascontiguousarray(arr[int(obj["item"])][::-1])
        except (OSError, DataFileError, KeyError, IndexError, ValueError):
            return None
        return None

    def objects(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        """Table rows (id, ra, dec, source, item, signature, normspec, encoder) in order."""
        rows = [int(r) for r in rows]
        found: dict[int, dict[str, Any]] = {}
        cols = ("row", "id", "ra", "dec", "source", "item", "signature", "normspec", "encoder")
        for s in range(0, len(rows), 900):
            chunk = rows[s:s + 900]
            q = (f"SELECT {', '.join(cols)} FROM objects WHERE row IN "
                 f"({', '.join('?' * len(chunk))})")
            for rec in self._db.execute(q, chunk):
                d = dict(zip(cols, rec, strict=True))
                d["ra"] = math.nan if d["ra"] is None else float(d["ra"])
                d["dec"] = math.nan if d["dec"] is None else float(d["dec"])
                found[d["row"]] = d
        return [found[r] for r in rows if r in found]

    def ids(self, rows: Iterable[int] | None = None) -> list[str]:
        """Object ids of some rows (all rows by default), in order."""
        if rows is None:
            n = self.count
            return [r[0] for r in self._db.execute(
                "SELECT id FROM objects WHERE row < ? ORDER BY row", (n,))]
        return [o["id"] for o in self.objects(rows)]

    def table(self) -> dict[str, np.ndarray]:
        """The whole object table as arrays (``id``, ``ra``, ``dec``, ``source``, ...)."""
        cur = self._db.execute("SELECT row, id, ra, dec, source, item, signature, normspec, "
                               "encoder FROM objects WHERE row < ? ORDER BY row", (self.count,))
        recs = cur.fetchall()
        cols = ("row", "id", "ra", "dec", "source", "item", "signature", "normspec", "encoder")
        out = {c: [r[i] for r in recs] for i, c in enumerate(cols)}
        t: dict[str, np.ndarray] = {c: np.asarray(v, dtype=object) for c, v in out.items()}
        for c in ("ra", "dec"):
            t[c] = np.array([math.nan if v is None else v for v in out[c]], float)
        t["row"] = np.asarray(out["row"], np.int64)
        return t

    def signatures(self) -> dict[str, tuple[int, str, str]]:
        """``id -> (row, signature, encoder id)`` for every stored object."""
        return {i: (r, s, e) for r, i, s, e in self._db.execute(
            "SELECT row, id, signature, encoder FROM objects WHERE row < ?", (self.count,))}

    def append(self, refs: Sequence[ItemRef], vectors: np.ndarray) -> None:
        """Append new objects (ids not yet stored) with their vectors; atomic per call."""
        self._check_writable("take new vectors")
        v = np.ascontiguousarray(vectors, dtype="<f4")
        d = self.dim
        if d is None or v.ndim != 2 or v.shape[1] != d or len(v) != len(refs):
            raise SsaldError(f"{self.path}: {v.shape} vectors for {len(refs)} objects of "
                             f"dimension {d}")
        n = self.count
        vp = self.path / VECTORS_FILE
        with open(vp, "r+b" if vp.exists() else "w+b") as fh:
            fh.seek(n * d * 4)
            fh.write(v.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        enc, spec = self.encoder_id, self.normspec_digest
        try:
            with self._db:
                self._db.execute("DELETE FROM objects WHERE row >= ?", (n,))  # crash leftovers
                self._db.executemany(
                    "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(n + i, r.id, None if math.isnan(r.ra) else r.ra,
                      None if math.isnan(r.dec) else r.dec, r.source, r.item, r.signature,
                      spec, enc) for i, r in enumerate(refs)])
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'count'",
                                 (str(n + len(refs)),))
        except sqlite3.IntegrityError as exc:
            raise SsaldError(f"{self.path}: duplicate object id in one batch ({exc})") from exc

    def import_shards(self, folder: str | Path, encoder: str | Path | None = None,
                      callback: Any = None) -> dict[str, Any]:
        """Merge a folder of embedding shards (:mod:`model.encode`) into this store.

        See :func:`import_shards`; ``callback(progress)`` after every step. Returns its
        summary.
        """
        return run_to_end(import_shards(folder, self, encoder=encoder), callback)

    def rewrite(self, rows: Sequence[int], refs: Sequence[ItemRef], vectors: np.ndarray) -> None:
        """Overwrite the vectors of changed objects in place and record their new source."""
        self._check_writable("overwrite vectors")
        v = np.ascontiguousarray(vectors, dtype="<f4")
        d = self.dim
        assert d is not None
        with open(self.path / VECTORS_FILE, "r+b") as fh:
            for row, vec in zip(rows, v, strict=True):
                fh.seek(int(row) * d * 4)
                fh.write(vec.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with self._db:
            self._db.executemany(
                "UPDATE objects SET ra = ?, dec = ?, source = ?, item = ?, signature = ? "
                "WHERE row = ?",
                [(None if math.isnan(r.ra) else r.ra, None if math.isnan(r.dec) else r.dec,
                  r.source, r.item, r.signature, int(row)) for row, r in zip(rows, refs,
                                                                             strict=True)])
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'rewrites'",
                             (str(self.rewrites + len(rows)),))
        self._map = None  # the mapping sees the new bytes anyway; drop it to be safe


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeProgress:
    """Progress of an encoding run.

    Attributes
    ----------
    done, total : int
        Objects handled so far (encoded or skipped) and in the set.
    encoded, skipped : int
        Encoded in this run (new or changed) and skipped as unchanged.
    """

    done: int
    total: int
    encoded: int = 0
    skipped: int = 0

    @property
    def fraction(self) -> float:
        """``done / total`` (1 for an empty set)."""
        return self.done / self.total if self.total else 1.0

    def __iter__(self) -> Any:
        """Unpack as ``done, total``."""
        return iter((self.done, self.total))


def _identity(info: EncoderInfo, image_set: ImageSet, dim: int) -> dict[str, Any]:
    return {"dim": int(dim), "encoder_id": info.encoder_id, "encoder_path": info.path,
            "normspec": image_set.normspec, "normspec_digest": normspec_digest(image_set.normspec),
            "scaling": info.scaling, "input_size": info.input_size, "bands": info.bands,
            "row_order": image_set.row_order, "image_key": image_set.image_key,
            "embedding": "encoder output (raw; the index L2-normalises)"}


def encode_set(image_set: ImageSet, store: EmbeddingStore | str | Path,
               encoder: str | Path | EncoderInfo, *, batch_size: int = 64,
               encoder_model: Any = None) -> Generator[EncodeProgress, None, dict[str, Any]]:
    """Encode an image set into a store, yielding progress after every committed batch.

    Parameters
    ----------
    image_set : ImageSet
        :class:`ImageFolder`, :class:`H5Shards` or :class:`ArraySet`.
    store : EmbeddingStore or path-like
        Where the vectors go (created if missing).
    encoder : path-like or EncoderInfo
        The exported encoder (``.keras`` with its card).
    batch_size : int
        Images per batch.
    encoder_model : keras.Model, optional
        The already loaded encoder (skips loading it again).

    Yields
    ------
    EncodeProgress
        After the unchanged objects are skipped, then after every batch.

    Returns
    -------
    dict
        ``encoded``, ``rewritten``, ``skipped``, ``total``, ``count`` (in the store),
        ``seconds`` (the generator's return value, ``StopIteration.value``).

    Raises
    ------
    DataFileError
        The store holds another encoder's or NormSpec's vectors; the data's NormSpec is not
        the encoder's; an unreadable image (named).
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise SsaldError(f"batch_size must be positive, got {batch_size}")
    info = encoder if isinstance(encoder, EncoderInfo) else encoder_info(encoder)
    st = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    if info.normspec is not None and image_set.normspec is not None and normspec_digest(
            info.normspec) != normspec_digest(image_set.normspec):
        raise DataFileError(
            f"{getattr(image_set, 'files', ['the images'])[0]}: cutouts of NormSpec "
            f"{normspec_digest(image_set.normspec)}, but encoder {Path(info.path).name} was "
            f"trained on NormSpec {normspec_digest(info.normspec)}: cut them again with the "
            "encoder's NormSpec")
    if st.encoder_id:  # refuse before any work
        st.bind(_identity(info, image_set, st.dim or 0))
    refs = image_set.refs()
    seen: set[str] = set()
    for r in refs:
        if r.id in seen:
            raise DataFileError(f"{r.source}: object id {r.id!r} occurs twice in the set")
        seen.add(r.id)
    known = st.signatures()
    todo: list[tuple[ItemRef, int | None]] = []
    for r in refs:
        k = known.get(r.id)
        if k is None:
            todo.append((r, None))
        elif k[1] != r.signature or k[2] != info.encoder_id:
            todo.append((r, k[0]))
    total = len(refs)
    skipped = total - len(todo)
    yield EncodeProgress(skipped, total, 0, skipped)
    encoded = rewritten = 0
    if todo:
        model = encoder_model if encoder_model is not None else load_encoder_checked(info)
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            raw = image_set.read([r for r, _ in chunk])
            for (r, _), x in zip(chunk, raw, strict=True):
                if x.ndim != 3 or x.shape[2] != info.bands:
                    raise DataFileError(f"{r.source}: image {r.id!r} has shape {x.shape}; the "
                                        f"encoder takes {info.bands} bands")
            vec = embed_prepared(model, prepare_images(raw, info.scaling, info.input_size),
                                 batch_size)
            if not st.encoder_id:
                st.bind(_identity(info, image_set, vec.shape[1]))
            new = [(r, v) for (r, row), v in zip(chunk, vec, strict=True) if row is None]
            old = [(r, row, v) for (r, row), v in zip(chunk, vec, strict=True) if row is not None]
            if new:
                st.append([r for r, _ in new], np.stack([v for _, v in new]))
            if old:
                st.rewrite([row for _, row, _ in old], [r for r, _, _ in old],
                           np.stack([v for _, _, v in old]))
            encoded += len(new)
            rewritten += len(old)
            yield EncodeProgress(skipped + encoded + rewritten, total, encoded + rewritten,
                                 skipped)
    return {"encoded": encoded, "rewritten": rewritten, "skipped": skipped, "total": total,
            "count": st.count, "store": str(st.path), "encoder_id": info.encoder_id,
            "normspec_digest": normspec_digest(image_set.normspec),
            "seconds": time.perf_counter() - t0}


def encode(source: str | Path, store: EmbeddingStore | str | Path, encoder: str | Path, *,
           fmt: str = "auto", batch_size: int = 64) -> Generator[EncodeProgress, None,
                                                                 dict[str, Any]]:
    """Encode a folder of images or the miner's HDF5/TFRecord shards (see :func:`encode_set`).

    Parameters
    ----------
    source : path-like
        An image folder, the miner's output folder, its shards or one shard.
    store : EmbeddingStore or path-like
        The embedding store.
    encoder : path-like
        The exported encoder.
    fmt : {"auto", "images", "h5", "tfrecord", "shards"}
        Format of ``source`` (:func:`open_image_set`).
    batch_size : int
        Images per batch.
    """
    info = encoder_info(encoder)
    return (yield from encode_set(open_image_set(source, info, fmt), store, info,
                                  batch_size=batch_size))


def run_encode(gen: Generator[EncodeProgress, None, dict[str, Any]],
               callback: Any = None) -> dict[str, Any]:
    """Drive an encoding generator to the end; ``callback(progress)`` after each step."""
    return run_to_end(gen, callback)


# --------------------------------------------------------------------------------------------
# Merging embedding shards of the distributed job
# --------------------------------------------------------------------------------------------


def _shard_refs(side: dict[str, Any]) -> list[ItemRef]:
    from model.encode import ShardError, shard_rows

    try:
        rows = shard_rows(side)
    except ShardError as exc:
        raise DataFileError(str(exc)) from exc
    out = []
    for oid, ra, dec, source, item, signature, _spec, _enc in rows:
        out.append(ItemRef(str(oid), math.nan if ra is None else float(ra),
                           math.nan if dec is None else float(dec), str(source), int(item),
                           str(signature)))
    return out


def import_shards(folder: str | Path, store: EmbeddingStore | str | Path, *,
                  encoder: str | Path | None = None,
                  ) -> Generator[EncodeProgress, None, dict[str, Any]]:
    """Merge the embedding shards of :mod:`model.encode` into a store, yielding progress.

    First every shard is checked (sidecar, the job's encoder and NormSpec) and so is the
    coverage (every row of every input file in exactly one shard, no id in two shards); then
    the store is bound to the job's identity, which refuses vectors of another encoder or
    NormSpec with the same errors as :func:`encode_set`. Objects already stored with the same
    source signature and encoder are skipped, changed ones overwritten in place, new ones
    appended; each shard's ``.npy`` is checked (size, SHA-256, shape) as it is read, and each
    shard is committed before its progress is yielded, so an interrupted merge carries on.

    Parameters
    ----------
    folder : path-like
        The job's ``--out`` folder (``job.json``, ``shards/*.npy`` and ``*.json``).
    store : EmbeddingStore or path-like
        The store (created if missing).
    encoder : path-like, optional
        The job's encoder on this machine (its SHA-256 must be the job's); recorded as the
        store's encoder, which embeds query images. By default the path the job recorded.

    Returns
    -------
    dict
        ``imported``, ``rewritten``, ``skipped``, ``total``, ``shards``, ``count`` (in the
        store), ``seconds``.

    Raises
    ------
    DataFileError
        An unfinished job (objects in no shard), an id in two shards, a corrupt or truncated
        shard (named), a store of another encoder or NormSpec.
    """
    from model.encode import ShardError, check_coverage, load_shard_vectors, read_shard_folder

    t0 = time.perf_counter()
    src = str(folder)
    try:
        job, sides = read_shard_folder(src)
        total = check_coverage(job, sides)
    except ShardError as exc:
        raise DataFileError(str(exc)) from exc
    digest = normspec_digest(job.get("normspec"))
    if digest != job["normspec_digest"]:
        raise DataFileError(f"{Path(src) / 'job.json'}: it records NormSpec digest "
                            f"{job['normspec_digest']}, but its NormSpec has digest {digest}")
    encoder_path = job.get("encoder_path")
    if encoder is not None:
        info = encoder_info(encoder)
        if info.encoder_id != job["encoder_id"]:
            raise DataFileError(f"{encoder}: not the encoder of the shards in {src} (SHA-256 "
                                f"{info.encoder_id[:12]}, the shards' {job['encoder_id'][:12]})")
        encoder_path = info.path
    st = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    st.bind({"dim": int(job["dim"]), "encoder_id": job["encoder_id"],
             "encoder_path": encoder_path, "normspec": job.get("normspec"),
             "normspec_digest": digest, "scaling": job["scaling"],
             "input_size": int(job["input_size"]), "bands": int(job["bands"]),
             "row_order": job["row_order"], "image_key": job["image_key"],
             "embedding": "encoder output (raw; the index L2-normalises)"})
    known = st.signatures()
    imported = rewritten = skipped = done = 0
    yield EncodeProgress(0, total)
    for side in sides:
        refs = _shard_refs(side)
        todo = []
        for k, r in enumerate(refs):
            kn = known.get(r.id)
            if kn is not None and kn[1] == r.signature and kn[2] == job["encoder_id"]:
                skipped += 1
            else:
                todo.append((k, r, None if kn is None else kn[0]))
        if todo:
            try:
                vec = load_shard_vectors(src, side)
            except ShardError as exc:
                raise DataFileError(str(exc)) from exc
            new = [(r, vec[k]) for k, r, row in todo if row is None]
            old = [(row, r, vec[k]) for k, r, row in todo if row is not None]
            if new:
                st.append([r for r, _ in new], np.stack([v for _, v in new]))
                for i, (r, _) in enumerate(new):
                    known[r.id] = (st.count - len(new) + i, r.signature, job["encoder_id"])
            if old:
                st.rewrite([row for row, _, _ in old], [r for _, r, _ in old],
                           np.stack([v for _, _, v in old]))
            imported += len(new)
            rewritten += len(old)
        done += len(refs)
        yield EncodeProgress(done, total, imported + rewritten, skipped)
    return {"imported": imported, "rewritten": rewritten, "skipped": skipped, "total": total,
            "shards": len(sides), "count": st.count, "store": str(st.path),
            "encoder_id": job["encoder_id"], "normspec_digest": digest,
            "seconds": time.perf_counter() - t0}
