"""Input pipelines: folders of PNG/JPEG, the miner's HDF5 shards and TFRecord shards.

:func:`load_dataset` gives an *unbatched* :class:`tf.data.Dataset` of float32 images
``(H, W, C)`` scaled to roughly [0, 1], and a :class:`DataInfo` that describes them: count,
bands, size, the NormSpec of the cutouts (a plain dict, so this package needs nothing from
``ssald_desktop``) and the pixel scaling, which the trainer saves with the model so that
query images get exactly the same preprocessing (:func:`apply_scaling`).

Pixel scaling
-------------
- 8-bit images (PNG/JPEG, and the shards' Lupton ``rgb`` composites): ``x / 255``.
- The shards' band cubes (``image_key="images"``, nanomaggies): an asinh stretch
  (Lupton, Gunn & Szalay 1999) ``asinh(x / softening) / asinh(maximum / softening)`` with
  ``softening = 0.05`` nMgy (a few times the SDSS sky noise, which stays in the linear part)
  and ``maximum = 10`` nMgy per pixel (mapped to 1), clipped to [-1, 1] (the lower limit
  only guards against artefacts: the sky noise stays symmetric about 0). Non-finite pixels
  become 0.

Formats (:func:`detect_format`)
-------------------------------
- ``images``: a folder searched recursively for ``.png``, ``.jpg``, ``.jpeg`` (any case;
  names starting with a dot are skipped), read in sorted path order. Every file is checked
  up front (:func:`check_images`): by default a quick check (PIL reads the header and, for
  PNG, verifies every chunk's CRC; a JPEG must end with the end-of-image marker, which
  catches truncated files), about 0.1 ms a file, so ~10 s for 10^5 files; ``check="full"``
  decodes every image with PIL (several times slower); ``check="none"`` skips it. A bad
  file raises :class:`DataError` naming it. Images are decoded with ``channels=3`` (RGB; a
  grayscale file is expanded) or ``channels=1`` when ``bands=1`` is requested; JPEGs with
  the accurate integer IDCT, so the pixels equal PIL's (the query side); non-square
  images are centre-cropped to a square; sizes that differ need ``image_size``.
- ``h5``: the miner's ``h5/*/shard-*.h5`` (or ``*/shard-*.h5`` when given the ``h5``
  folder itself, ``*.h5`` in the folder, a file, or a glob):
  datasets ``rgb`` (N, n, n, 3) uint8 and ``images`` (N, bands, n, n) nanomaggies, ``id``,
  and the attribute ``normspec`` (JSON). Local disk only (h5py); streamed shard by shard.
- ``tfrecord``: the miner's ``tfrecord/*/shard-*.tfrecord`` (or ``*/shard-*.tfrecord``,
  ``*.tfrecord``/``*.tfrec`` in the folder, a file, a glob), locally or on ``gs://``
  (through :mod:`tf.io.gfile`).
  Features ``image`` (raw (bands, n, n) float32 or float16), ``rgb`` (raw uint8 (n, n, 3)),
  ``shape``, ``id``. The NormSpec comes from ``normspec.json`` beside the shards or up to
  two folders above them; counts and ids from the miner's ``manifest.sqlite`` there when it
  covers every shard, else from one pass over the records.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "ASINH_MAXIMUM",
    "ASINH_SOFTENING",
    "DataError",
    "DataInfo",
    "apply_scaling",
    "check_images",
    "detect_format",
    "load_dataset",
    "make_training_dataset",
    "split_validation",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
H5_EXTENSIONS = (".h5", ".hdf5")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrec", ".tfrecords")
ASINH_SOFTENING = 0.05  # nanomaggies
ASINH_MAXIMUM = 10.0  # nanomaggies per pixel -> 1
_JPEG_EOI = b"\xff\xd9"


class DataError(ValueError):
    """Data that cannot be used: missing, empty, corrupt, or not what was asked for."""


@dataclass
class DataInfo:
    """What :func:`load_dataset` read.

    Attributes
    ----------
    count : int
        Number of images.
    bands : int
        Channels of every image.
    image_size : int
        Side of the (square) images in pixels, after any resize.
    format : str
        ``"images"``, ``"h5"`` or ``"tfrecord"``.
    normspec : dict or None
        The cutouts' NormSpec as stored with the shards; None for image folders.
    ids : list of str or None
        Object ids in dataset order (shards), or file paths relative to the folder (images).
    files : list of str
        Files read (images or shards).
    scaling : dict
        The pixel scaling applied (see :func:`apply_scaling`).
    source : str
        The source as given.
    image_key : str or None
        Which shard array was read (``"rgb"`` or ``"images"``).
    """

    count: int
    bands: int
    image_size: int
    format: str
    normspec: dict[str, Any] | None
    ids: list[str] | None
    files: list[str]
    scaling: dict[str, Any]
    source: str = ""
    image_key: str | None = None

    def to_dict(self, with_lists: bool = False) -> dict[str, Any]:
        """A JSON-ready dictionary; ``ids`` and ``files`` only with ``with_lists``."""
        d = asdict(self)
        if not with_lists:
            d.pop("ids")
            d.pop("files")
        return d

    def describe(self) -> str:
        """A one-line summary."""
        s = self.scaling
        how = ("x/255" if s["kind"] == "uint8" else
               f"asinh(x/{s['softening']:g})/asinh({s['maximum']:g}/{s['softening']:g})")
        return (f"{self.count} images {self.image_size}x{self.image_size}x{self.bands} from "
                f"{self.format} {self.source} ({len(self.files)} files, scaling {how})")


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def _uint8_scaling() -> dict[str, Any]:
    return {"kind": "uint8", "divide": 255.0}


def _asinh_scaling(softening: float, maximum: float) -> dict[str, Any]:
    return {"kind": "asinh", "unit": "nanomaggies", "softening": float(softening),
            "maximum": float(maximum), "clip": [-1.0, 1.0]}


def apply_scaling(x: Any, scaling: dict[str, Any]) -> Any:
    """Apply a :attr:`DataInfo.scaling` to raw pixels (numpy or TensorFlow).

    Parameters
    ----------
    x : array-like or tf.Tensor
        Raw pixels: 8-bit values for ``"uint8"``, nanomaggies for ``"asinh"``.
    scaling : dict
        ``{"kind": "uint8", "divide": 255}`` or ``{"kind": "asinh", "softening": s,
        "maximum": m, "clip": [lo, hi]}``.

    Returns
    -------
    numpy.ndarray or tf.Tensor
        float32, of the same kind as ``x``.
    """
    kind = scaling.get("kind")
    if isinstance(x, tf.Tensor):
        xf = tf.cast(x, tf.float32)
        if kind == "uint8":
            return xf / float(scaling["divide"])
        if kind == "asinh":
            soft, top = float(scaling["softening"]), float(scaling["maximum"])
            xf = tf.where(tf.math.is_finite(xf), xf, 0.0)
            y = tf.math.asinh(xf / soft) / math.asinh(top / soft)
            return tf.clip_by_value(y, *(float(c) for c in scaling["clip"]))
    else:
        xf = np.asarray(x, dtype=np.float32)
        if kind == "uint8":
            return xf / np.float32(scaling["divide"])
        if kind == "asinh":
            soft, top = float(scaling["softening"]), float(scaling["maximum"])
            xf = np.where(np.isfinite(xf), xf, 0.0).astype(np.float32)
            y = np.arcsinh(xf / np.float32(soft)) / np.float32(math.asinh(top / soft))
            return np.clip(y, *scaling["clip"]).astype(np.float32)
    raise DataError(f"unknown scaling {scaling!r}")


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _glob(pattern: str) -> list[str]:
    if _is_uri(pattern):
        return sorted(tf.io.gfile.glob(pattern))
    import glob

    return sorted(glob.glob(pattern))


def _isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path) if _is_uri(path) else os.path.isdir(path)


def _exists(path: str) -> bool:
    return tf.io.gfile.exists(path) if _is_uri(path) else os.path.exists(path)


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *parts[1:]]) if _is_uri(parts[0]) else os.path.join(
        *parts)


def _dirname(path: str) -> str:
    if _is_uri(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _shard_files(source: str, sub: str, exts: tuple[str, ...]) -> list[str]:
    """Shard files of one format in ``source`` (folder, file or glob)."""
    if _has_glob(source):
        return [p for p in _glob(source) if _ext(p) in exts]
    if not _isdir(source):
        return [source] if _ext(source) in exts and _exists(source) else []
    patterns = ([f"{sub}/*/shard-*{e}" for e in exts] + [f"*/shard-*{e}" for e in exts]
                + [f"*{e}" for e in exts])
    for pattern in patterns:
        found = _glob(_join(source, pattern))
        if found:
            return found
    return []


def _image_files(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive), sorted by path; dot-files skipped."""
    out = []
    if _is_uri(folder):
        for root, _dirs, files in tf.io.gfile.walk(folder):
            out += [_join(root, f) for f in files
                    if not f.startswith(".") and _ext(f) in IMAGE_EXTENSIONS]
        return sorted(out)
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [os.path.join(root, f) for f in files
                if not f.startswith(".") and _ext(f) in IMAGE_EXTENSIONS]
    return sorted(out)


def detect_format(source: str) -> str:
    """Guess the format of a data source.

    Parameters
    ----------
    source : str
        A folder, a file, a glob pattern, or a ``gs://`` URI.

    Returns
    -------
    {"images", "h5", "tfrecord"}
        ``gs://`` (and other URIs) are TFRecord unless the name ends in an image or HDF5
        extension, and are not listed (no network access here). A local folder is ``h5`` if
        it holds ``h5/*/shard-*.h5`` or ``*.h5`` (HDF5 wins when the miner wrote both),
        ``tfrecord`` if it holds TFRecord shards, ``images`` if it holds PNG/JPEG files
        (searched recursively).

    Raises
    ------
    DataError
        The source does not exist or holds none of these.
    """
    source = str(source)
    if _is_uri(source):
        ext = _ext(source)
        if ext in H5_EXTENSIONS:
            return "h5"
        return "images" if ext in IMAGE_EXTENSIONS else "tfrecord"
    if _has_glob(source):
        exts = {_ext(p) for p in _glob(source)}
        for fmt, known in (("h5", H5_EXTENSIONS), ("tfrecord", TFRECORD_EXTENSIONS),
                           ("images", IMAGE_EXTENSIONS)):
            if exts & set(known):
                return fmt
        raise DataError(f"{source}: the pattern matches no image, HDF5 or TFRecord files")
    if not os.path.exists(source):
        raise DataError(f"{source}: no such file or folder")
    if os.path.isfile(source):
        ext = _ext(source)
        for fmt, known in (("h5", H5_EXTENSIONS), ("tfrecord", TFRECORD_EXTENSIONS),
                           ("images", IMAGE_EXTENSIONS)):
            if ext in known:
                return fmt
        raise DataError(f"{source}: not an image, HDF5 or TFRecord file (extension {ext!r})")
    if _shard_files(source, "h5", H5_EXTENSIONS):
        return "h5"
    if _shard_files(source, "tfrecord", TFRECORD_EXTENSIONS):
        return "tfrecord"
    if _image_files(source):
        return "images"
    raise DataError(
        f"{source}: no PNG/JPEG images, HDF5 shards (h5/*/shard-*.h5, *.h5) or TFRecord "
        "shards (tfrecord/*/shard-*.tfrecord, *.tfrecord) found"
    )


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
    if _is_uri(path):
        with tf.io.gfile.GFile(path, "rb") as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


def check_images(files: list[str], check: str = "quick") -> list[tuple[int, int, str]]:
    """Check image files up front and return their ``(width, height, mode)``.

    Parameters
    ----------
    files : list of str
        Paths (local or ``gs://``).
    check : {"quick", "full", "none"}
        ``quick``: PIL parses the header and ``verify()`` (every PNG chunk's CRC); a JPEG
        must end with the end-of-image marker (a truncated file does not). ``full``: also
        decode every image with PIL. ``none``: only read the header for the size.

    Raises
    ------
    DataError
        Naming the first file that cannot be read, and why.
    """
    from PIL import Image, UnidentifiedImageError

    if check not in ("quick", "full", "none"):
        raise DataError(f"check must be 'quick', 'full' or 'none', got {check!r}")
    out = []
    for path in files:
        try:
            data = _read_bytes(path)
            if not data:
                raise DataError(f"{path}: empty file")
            with Image.open(io.BytesIO(data)) as im:
                size, mode, fmt = im.size, im.mode, im.format
                if check != "none":
                    im.verify()
            if check != "none" and fmt == "JPEG" and not data.rstrip(b"\0\r\n\t ").endswith(
                    _JPEG_EOI):
                raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
            if fmt not in ("PNG", "JPEG", "MPO"):
                raise DataError(f"{path}: a {fmt} image, not PNG or JPEG")
            if check == "full":
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: not a readable PNG/JPEG image ({exc})") from exc
        out.append((int(size[0]), int(size[1]), str(mode)))
    return out


def _load_images(source: str, bands: int | None, image_size: int | None,
                 check: str) -> tuple[tf.data.Dataset, DataInfo]:
    if _has_glob(source):
        files = [p for p in _glob(source) if _ext(p) in IMAGE_EXTENSIONS]
        root = _dirname(files[0]) if files else source
    elif _isdir(source):
        files = _image_files(source)
        root = source
    elif _exists(source):
        files = [source]
        root = _dirname(source)
    else:
        raise DataError(f"{source}: no such file or folder")
    if not files:
        raise DataError(f"{source}: no PNG/JPEG images found")
    channels = 3 if bands is None else int(bands)
    if channels not in (1, 3):
        raise DataError(
            f"{source}: PNG/JPEG images give 3 bands (RGB, or 1 as grayscale), but {bands} "
            "bands were requested"
        )
    meta = check_images(files, check)
    sides = {min(w, h) for w, h, _ in meta}
    if image_size is None and len(sides) > 1:
        first = meta[0]
        k = next(i for i, m in enumerate(meta) if min(m[0], m[1]) != min(first[0], first[1]))
        raise DataError(
            f"{source}: images differ in size ({files[0]} is {first[0]}x{first[1]}, "
            f"{files[k]} is {meta[k][0]}x{meta[k][1]}); give image_size to resize them"
        )
    side = int(image_size) if image_size is not None else sides.pop()

    def decode(path: tf.Tensor) -> tf.Tensor:
        contents = tf.io.read_file(path)
        # JPEG with the accurate integer IDCT: the same pixels as PIL/libjpeg's default.
        raw = tf.cond(
            tf.io.is_jpeg(contents),
            lambda: tf.io.decode_jpeg(contents, channels=channels,
                                      dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(contents, channels=channels, dtype=tf.uint8,
                                       expand_animations=False),
        )
        shape = tf.shape(raw)
        short = tf.minimum(shape[0], shape[1])
        raw = tf.image.crop_to_bounding_box(raw, (shape[0] - short) // 2,
                                            (shape[1] - short) // 2, short, short)
        x = tf.cast(raw, tf.float32) / 255.0
        if image_size is not None:
            x = tf.cond(tf.equal(short, side), lambda: x,
                        lambda: tf.image.resize(x, [side, side], antialias=True))
        x.set_shape([side, side, channels])
        return x

    ds = tf.data.Dataset.from_tensor_slices(files).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    rel = [p[len(root):].lstrip("/\\") if p.startswith(root) else p for p in files]
    info = DataInfo(count=len(files), bands=channels, image_size=side, format="images",
                    normspec=None, ids=rel, files=files, scaling=_uint8_scaling(),
                    source=source, image_key=None)
    return ds, info


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def _parse_normspec(text: Any, where: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode()
    try:
        spec = json.loads(str(text))
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: the normspec is not valid JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise DataError(f"{where}: the normspec is not a JSON object")
    return spec


def _check_key(image_key: str) -> None:
    if image_key not in ("rgb", "images"):
        raise DataError(f"image_key must be 'rgb' or 'images', got {image_key!r}")


def _scaling_for(image_key: str, softening: float, maximum: float) -> dict[str, Any]:
    return _uint8_scaling() if image_key == "rgb" else _asinh_scaling(softening, maximum)


def _check_bands(source: str, have: int, want: int | None, what: str) -> None:
    if want is not None and int(want) != have:
        raise DataError(
            f"{source}: the data have {have} bands ({what}) but {want} bands were requested"
        )


def _maybe_resize(ds: tf.data.Dataset, side: int, image_size: int | None,
                  bands: int) -> tuple[tf.data.Dataset, int]:
    if image_size is None or int(image_size) == side:
        return ds, side
    size = int(image_size)

    def resize(x: tf.Tensor) -> tf.Tensor:
        y = tf.image.resize(x, [size, size], antialias=True)
        y.set_shape([size, size, bands])
        return y

    return ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE), size


def _load_h5(source: str, image_key: str, bands: int | None, image_size: int | None,
             softening: float, maximum: float) -> tuple[tf.data.Dataset, DataInfo]:
    import h5py

    if _is_uri(source):
        raise DataError(f"{source}: HDF5 shards must be on local disk (use TFRecord for gs://)")
    files = _shard_files(source, "h5", H5_EXTENSIONS)
    if not files:
        raise DataError(f"{source}: no HDF5 shards (h5/*/shard-*.h5 or *.h5) found")
    counts, ids, normspec, spec_file, shape = [], [], None, None, None
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                if image_key not in h:
                    raise DataError(f"{f}: no dataset {image_key!r} (has {', '.join(h)})")
                dset = h[image_key]
                if image_key == "rgb" and (dset.ndim != 4 or dset.shape[-1] != 3):
                    raise DataError(f"{f}: 'rgb' has shape {dset.shape}, expected (N, n, n, 3)")
                if image_key == "images" and dset.ndim != 4:
                    raise DataError(f"{f}: 'images' has shape {dset.shape}, "
                                    "expected (N, bands, n, n)")
                this = tuple(dset.shape[1:])
                if shape is None:
                    shape = this
                elif this != shape:
                    raise DataError(f"{f}: {image_key} images are {this}, but {files[0]} has "
                                    f"{shape}")
                counts.append(int(dset.shape[0]))
                if "id" in h:
                    ids += [x.decode() if isinstance(x, bytes) else str(x) for x in h["id"][...]]
                spec = (_parse_normspec(h.attrs["normspec"], f) if "normspec" in h.attrs
                        else None)
        except OSError as exc:
            raise DataError(f"{f}: not a readable HDF5 file ({exc})") from exc
        if spec_file is None:
            normspec, spec_file = spec, f
        elif spec != normspec:
            raise DataError(f"{f}: its normspec differs from that of {spec_file}; shards made "
                            "with different preprocessing cannot be mixed")
    assert shape is not None
    if image_key == "rgb":
        side, nb = int(shape[0]), 3
    else:
        nb, side = int(shape[0]), int(shape[1])
    _check_bands(source, nb, bands, f"HDF5 {image_key!r}")
    scaling = _scaling_for(image_key, softening, maximum)
    raw_dtype = tf.uint8 if image_key == "rgb" else tf.float32
    raw_shape = (None, *shape)
    chunk = 256

    def blocks():
        for f in files:
            with h5py.File(f, "r") as h:
                dset = h[image_key]
                for start in range(0, dset.shape[0], chunk):
                    block = dset[start:start + chunk]
                    yield block if image_key == "rgb" else block.astype(np.float32)

    def to_image(x: tf.Tensor) -> tf.Tensor:
        if image_key == "images":
            x = tf.transpose(x, [1, 2, 0])
        y = apply_scaling(x, scaling)
        y.set_shape([side, side, nb])
        return y

    ds = tf.data.Dataset.from_generator(
        blocks, output_signature=tf.TensorSpec(raw_shape, raw_dtype)).unbatch()
    ds = ds.map(to_image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.apply(tf.data.experimental.assert_cardinality(sum(counts)))
    ds, side = _maybe_resize(ds, side, image_size, nb)
    info = DataInfo(count=sum(counts), bands=nb, image_size=side, format="h5",
                    normspec=normspec, ids=ids if len(ids) == sum(counts) else None,
                    files=files, scaling=scaling, source=source, image_key=image_key)
    return ds, info


def _near(files: list[str], source: str, name: str) -> str | None:
    """``name`` beside the shards, up to two folders above them, or in the source folder."""
    places = []
    if not _has_glob(source) and _isdir(source):
        places.append(source)
    d = _dirname(files[0])
    for _ in range(3):
        places.append(d)
        d = _dirname(d)
    for p in places:
        candidate = _join(p, name)
        if _exists(candidate):
            return candidate
    return None


_SHARD_NUMBER = re.compile(r"shard-(\d+)")


def _manifest_counts(manifest: str, files: list[str]) -> tuple[list[int], list[str]] | None:
    """Counts and ids of ``files`` from the miner's manifest, or None if it lacks any."""
    tmp = None
    try:
        if _is_uri(manifest):
            fd, tmp = tempfile.mkstemp(suffix=".sqlite")
            os.close(fd)
            tf.io.gfile.copy(manifest, tmp, overwrite=True)
            manifest = tmp
        db = sqlite3.connect(f"file:{manifest}?mode=ro", uri=True)
        try:
            shard_counts = dict(db.execute("SELECT shard, count FROM shards").fetchall())
            rows = db.execute("SELECT shard, id FROM objects WHERE status = 'done' "
                              "ORDER BY shard, row").fetchall()
        finally:
            db.close()
    except (sqlite3.Error, OSError, tf.errors.OpError):
        return None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    by_shard: dict[int, list[str]] = {}
    for shard, oid in rows:
        by_shard.setdefault(int(shard), []).append(str(oid))
    counts, ids = [], []
    for f in files:
        m = _SHARD_NUMBER.search(os.path.basename(f))
        if m is None or int(m.group(1)) not in shard_counts:
            return None
        n = int(m.group(1))
        if len(by_shard.get(n, [])) != shard_counts[n]:
            return None
        counts.append(int(shard_counts[n]))
        ids += by_shard[n]
    return counts, ids


def _load_tfrecord(source: str, image_key: str, bands: int | None, image_size: int | None,
                   softening: float, maximum: float) -> tuple[tf.data.Dataset, DataInfo]:
    files = _shard_files(source, "tfrecord", TFRECORD_EXTENSIONS)
    if not files:
        raise DataError(
            f"{source}: no TFRecord shards (tfrecord/*/shard-*.tfrecord or *.tfrecord) found"
        )
    normspec = None
    spec_path = _near(files, source, "normspec.json")
    if spec_path is not None:
        normspec = _parse_normspec(_read_bytes(spec_path), spec_path)
    probe = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "rgb": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    try:
        first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
        if first is None:
            raise DataError(f"{files[0]}: an empty TFRecord shard")
        ex = tf.io.parse_single_example(first, probe)
    except tf.errors.OpError as exc:
        raise DataError(f"{files[0]}: not a readable shard of the miner ({exc.message})") from exc
    nb, rows, cols = (int(v) for v in ex["shape"].numpy())
    if rows != cols:
        raise DataError(f"{files[0]}: images are {rows}x{cols}, expected square")
    side = rows
    itemsize = len(ex["image"].numpy()) // max(1, nb * rows * cols)
    if itemsize not in (2, 4):
        raise DataError(f"{files[0]}: 'image' holds {len(ex['image'].numpy())} bytes for shape "
                        f"{(nb, rows, cols)}: neither float16 nor float32")
    image_dtype = tf.float16 if itemsize == 2 else tf.float32
    have = 3 if image_key == "rgb" else nb
    _check_bands(source, have, bands, f"TFRecord {image_key!r}")
    scaling = _scaling_for(image_key, softening, maximum)

    known = None
    manifest = _near(files, source, "manifest.sqlite")
    if manifest is not None:
        known = _manifest_counts(manifest, files)
    if known is not None:
        counts, ids = known
    else:  # one pass over the records
        counts, ids = [], []
        id_only = {"id": tf.io.FixedLenFeature([], tf.string, default_value="")}
        for f in files:
            n = 0
            try:
                for batch in tf.data.TFRecordDataset(f).batch(1024):
                    parsed = tf.io.parse_example(batch, id_only)
                    ids += [v.decode() for v in parsed["id"].numpy()]
                    n += int(batch.shape[0])
            except tf.errors.OpError as exc:
                raise DataError(f"{f}: not a readable TFRecord shard ({exc.message})") from exc
            counts.append(n)
    count = sum(counts)
    feature = "rgb" if image_key == "rgb" else "image"
    spec = {feature: tf.io.FixedLenFeature([], tf.string)}

    def parse(record: tf.Tensor) -> tf.Tensor:
        raw = tf.io.parse_single_example(record, spec)[feature]
        if image_key == "rgb":
            x = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [side, side, 3])
        else:
            x = tf.reshape(tf.io.decode_raw(raw, image_dtype), [nb, side, side])
            x = tf.transpose(tf.cast(x, tf.float32), [1, 2, 0])
        y = apply_scaling(x, scaling)
        y.set_shape([side, side, have])
        return y

    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    ds, side = _maybe_resize(ds, side, image_size, have)
    info = DataInfo(count=count, bands=have, image_size=side, format="tfrecord",
                    normspec=normspec, ids=ids if len(ids) == count else None, files=files,
                    scaling=scaling, source=source, image_key=image_key)
    return ds, info


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_dataset(source: str, fmt: str = "auto", image_key: str = "rgb",
                 bands: int | None = None, image_size: int | None = None, *,
                 check: str = "quick", softening: float = ASINH_SOFTENING,
                 maximum: float = ASINH_MAXIMUM) -> tuple[tf.data.Dataset, DataInfo]:
    """Open a data source as an unbatched dataset of float32 images ``(H, W, C)``.

    Parameters
    ----------
    source : str
        Folder, file, glob pattern or ``gs://`` URI (see the module docstring).
    fmt : {"auto", "images", "h5", "tfrecord"}
        Format; ``auto`` uses :func:`detect_format`.
    image_key : {"rgb", "images"}
        For shards: the 8-bit Lupton composite (3 bands, ``/255``) or the band cube
        (nanomaggies, asinh-scaled; see :func:`apply_scaling`).
    bands : int, optional
        Bands expected; a different count in the data is an error. For image folders,
        ``1`` reads grayscale.
    image_size : int, optional
        Resize (bilinear, antialiased) to ``image_size`` x ``image_size``.
    check : {"quick", "full", "none"}
        Up-front check of image files (see :func:`check_images`).
    softening, maximum : float
        Asinh scaling of band cubes, in nanomaggies.

    Returns
    -------
    tf.data.Dataset
        Images in a fixed order (files sorted; shards in order), static shape.
    DataInfo
        What was read, with the NormSpec and the scaling.

    Raises
    ------
    DataError
        Missing or empty source, a corrupt image (named), a band count that does not match,
        shards with different NormSpecs or shapes.
    """
    source = str(source)
    if fmt not in ("auto", "images", "h5", "tfrecord"):
        raise DataError(f"fmt must be auto, images, h5 or tfrecord, got {fmt!r}")
    _check_key(image_key)
    if bands is not None and (isinstance(bands, bool) or int(bands) != bands or bands < 1):
        raise DataError(f"bands must be a positive integer, got {bands!r}")
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) != image_size
                                   or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if not softening > 0 or not maximum > 0:
        raise DataError("softening and maximum must be positive")
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "images":
        return _load_images(source, bands, image_size, check)
    if fmt == "h5":
        return _load_h5(source, image_key, bands, image_size, softening, maximum)
    return _load_tfrecord(source, image_key, bands, image_size, softening, maximum)


def make_training_dataset(ds: tf.data.Dataset, batch_size: int, shuffle_buffer: int,
                          seed: int | None, drop_remainder: bool = True, cache: bool = True,
                          augmenter: Any = None, repeat: bool = True) -> tf.data.Dataset:
    """Batch an image dataset for training: cache, shuffle, repeat, batch, augment, prefetch.

    Parameters
    ----------
    ds : tf.data.Dataset
        Unbatched images (from :func:`load_dataset`).
    batch_size : int
        Images per batch (the global batch under a strategy).
    shuffle_buffer : int
        Shuffle buffer; below 2 no shuffling.
    seed : int or None
        Seed of the shuffle and of the augmentations (None: different every run).
    drop_remainder : bool
        Drop the last partial batch, so batches have a static shape (TPUs need it).
    cache : bool
        Cache the decoded images in memory after the first pass.
    augmenter : model.augment.Augmenter, optional
        If given, each batch becomes a pair of views ``(v1, v2)``; the augmentation seeds
        come from :meth:`tf.data.Dataset.random` (no generator variable in the pipeline).
    repeat : bool
        Repeat forever (set ``steps_per_epoch``) or make one pass.

    Returns
    -------
    tf.data.Dataset
        Batches ``(B, H, W, C)``, or pairs of them with an augmenter.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if cache:
        ds = ds.cache()
    if shuffle_buffer and shuffle_buffer > 1:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder,
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augmenter is not None:
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        two_views: Callable[..., Any] = augmenter.two_views
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda x, s: two_views(x, seed=s), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def split_validation(ds: tf.data.Dataset, info: DataInfo, fraction: float,
                     seed: int = 0) -> tuple[tuple[tf.data.Dataset, DataInfo],
                                             tuple[tf.data.Dataset, DataInfo]]:
    """Split off a random validation subset, reproducibly for a given seed.

    ``round(fraction * count)`` images (at least 1 when ``fraction > 0``) are chosen with
    :func:`numpy.random.default_rng` and picked out by position, so the split is exact and
    costs one pass-through filter; the datasets must keep :func:`load_dataset`'s order.

    Returns
    -------
    (train_ds, train_info), (val_ds, val_info)
    """
    if not 0 <= fraction < 1:
        raise DataError(f"fraction must be in [0, 1), got {fraction!r}")
    n_val = 0 if fraction == 0 else max(1, int(round(fraction * info.count)))
    if n_val >= info.count:
        raise DataError(f"a validation fraction of {fraction} leaves no training images "
                        f"out of {info.count}")
    is_val = np.zeros(info.count, dtype=bool)
    is_val[np.random.default_rng(seed).choice(info.count, n_val, replace=False)] = True
    table = tf.constant(is_val)

    def part(keep_val: bool) -> tf.data.Dataset:
        sub = ds.enumerate().filter(lambda i, x: tf.equal(table[i], keep_val))
        sub = sub.map(lambda i, x: x)
        return sub.apply(tf.data.experimental.assert_cardinality(
            n_val if keep_val else info.count - n_val))

    def sub_info(mask: np.ndarray) -> DataInfo:
        ids = None if info.ids is None else [i for i, k in zip(info.ids, mask, strict=True)
                                               if k]
        return replace(info, count=int(mask.sum()), ids=ids)

    return (part(False), sub_info(~is_val)), (part(True), sub_info(is_val))
