"""Multi-band SDSS frame sets: per-band data, WCS, masks and calibration.

An SDSS imaging field (run, camcol, field) is observed in five bands, u, g, r, i and z, each a
"corrected frame" (``frame-[ugriz]-RUN-CAMCOL-FIELD.fits[.bz2]``, DR8 and later) in
nanomaggies with its own TAN WCS. The five frames are **not** pixel-aligned: one sky position
falls on pixels up to ~11 px apart between bands, so every band keeps its own WCS.

File layout (SDSS data model, ``frame`` and ``fpM`` files,
https://data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html):

- HDU0: the calibrated image (nanomaggies), 2048 x 1489, with the WCS.
- HDU1: the calibration vector, nanomaggies per count, one value per column.
- HDU2: the sky, a coarse grid ``ALLSKY`` (counts) with ``XINTERP``/``YINTERP`` giving the
  position of every frame column/row on that grid.
- HDU3: the astrometric solution (asTrans).

``fpM-RUN-BANDCAMCOL-FIELD.fits`` holds the photo mask planes (INTERP, SATUR, NOTCHECKED,
OBJECT, ..., CR) as lists of pixel spans, one binary table per plane.
"""

from __future__ import annotations

import bz2
import io
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ssald_desktop.core.errors import DataFileError, FieldMismatchError

#: SDSS imaging bands in wavelength order.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z")

#: The photo mask planes of an fpM file, in HDU order (HDU 1 is plane 0).
MASK_PLANES: tuple[str, ...] = (
    "INTERP",
    "SATUR",
    "NOTCHECKED",
    "OBJECT",
    "BRIGHTOBJECT",
    "BINOBJECT",
    "CATOBJECT",
    "SUBTRACTED",
    "GHOST",
    "CR",
)

#: Mask planes that mark pixels whose values should not be trusted. OBJECT and its kin only
#: say where objects were detected and are not defects.
DEFAULT_BAD_PLANES: tuple[str, ...] = ("INTERP", "SATUR", "CR")

#: SDSS imaging pixel scale in arcsec.
SDSS_PIXEL_SCALE = 0.396

_FRAME_RE = re.compile(
    r"^frame-(?P<band>[ugriz])-(?P<run>\d{6})-(?P<camcol>[1-6])-(?P<field>\d{4})\.fits(\.bz2|\.gz)?$"
)
_FPM_RE = re.compile(
    r"^fpM-(?P<run>\d{6})-(?P<band>[ugriz])(?P<camcol>[1-6])-(?P<field>\d{4})\.fits(\.gz)?$"
)
_PSFIELD_RE = re.compile(
    r"^psField-(?P<run>\d{6})-(?P<camcol>[1-6])-(?P<field>\d{4})\.fits(\.gz)?$"
)


@dataclass(frozen=True, order=True)
class FieldId:
    """An SDSS imaging field: run, camera column and field number (rerun 301 for DR8+)."""

    run: int
    camcol: int
    field: int
    rerun: int = 301

    def __post_init__(self) -> None:
        if not (0 < self.run < 1_000_000):
            raise ValueError(f"run must be a positive integer below 1e6, got {self.run!r}")
        if self.camcol not in range(1, 7):
            raise ValueError(f"camcol must be 1..6, got {self.camcol!r}")
        if not (0 <= self.field < 10_000):
            raise ValueError(f"field must be 0..9999, got {self.field!r}")

    def __str__(self) -> str:
        return f"{self.run}-{self.camcol}-{self.field}"

    @classmethod
    def parse(cls, text: str) -> FieldId:
        """Parse ``"RUN-CAMCOL-FIELD"`` (e.g. ``"2820-3-122"``)."""
        parts = str(text).strip().split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not a field id RUN-CAMCOL-FIELD: {text!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))

    def frame_name(self, band: str) -> str:
        """File name of this field's corrected frame in ``band``."""
        return f"frame-{band}-{self.run:06d}-{self.camcol}-{self.field:04d}.fits.bz2"


@dataclass
class BandFrame:
    """One band of a field: image, WCS, bad-pixel mask and calibration.

    Attributes
    ----------
    band : str
        One of ``u g r i z``.
    data : numpy.ndarray
        Calibrated, sky-subtracted image in nanomaggies, shape (rows, cols), float32.
    wcs : astropy.wcs.WCS
        The band's own celestial WCS.
    mask : numpy.ndarray
        Boolean, True where the pixel is bad (non-finite, or in a bad fpM plane).
    calib : numpy.ndarray or None
        Nanomaggies per count for every column (HDU1).
    sky_grid, sky_x, sky_y : numpy.ndarray or None
        The coarse sky (counts) and the grid position of every column/row (HDU2).
    mask_planes : dict
        Each fpM plane that was read, as a boolean image.
    """

    band: str
    data: np.ndarray
    wcs: WCS
    mask: np.ndarray
    header: fits.Header
    path: Path | None = None
    calib: np.ndarray | None = None
    sky_grid: np.ndarray | None = None
    sky_x: np.ndarray | None = None
    sky_y: np.ndarray | None = None
    mask_planes: dict[str, np.ndarray] = field(default_factory=dict)
    field_id: FieldId | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (rows, cols)."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def sky_counts(self) -> np.ndarray:
        """The sky level in counts at every pixel, bilinearly interpolated from HDU2.

        Follows the SDSS recipe: ``ALLSKY`` sampled at ``(YINTERP, XINTERP)``.
        """
        if self.sky_grid is None or self.sky_x is None or self.sky_y is None:
            raise DataFileError(f"{self.path}: no sky grid (HDU2) in this frame")
        from scipy.ndimage import map_coordinates

        yy, xx = np.meshgrid(self.sky_y, self.sky_x, indexing="ij")
        return map_coordinates(self.sky_grid, [yy, xx], order=1, mode="nearest").astype(np.float32)

    def counts(self) -> np.ndarray:
        """The image in data numbers (counts) with the sky added back: ``data / calib + sky``."""
        if self.calib is None:
            raise DataFileError(f"{self.path}: no calibration vector (HDU1) in this frame")
        return self.data / self.calib[np.newaxis, :] + self.sky_counts()

    def ivar(self, gain: float, dark_variance: float) -> np.ndarray:
        """Inverse variance in nanomaggies^-2 from Poisson and dark noise (SDSS frame recipe).

        ``dn_err = sqrt(dn / gain + dark_variance)``, ``img_err = dn_err * calib``.
        ``gain`` and ``dark_variance`` come from photoField (per camcol and band).
        """
        if self.calib is None:
            raise DataFileError(f"{self.path}: no calibration vector (HDU1) in this frame")
        dn = np.clip(self.counts(), 0, None)
        err = np.sqrt(dn / gain + dark_variance) * self.calib[np.newaxis, :]
        with np.errstate(divide="ignore"):
            out = np.where(self.mask, 0.0, 1.0 / err**2)
        return out.astype(np.float32)


def parse_frame_name(name: str) -> tuple[str, FieldId] | None:
    """Band and field of an SDSS frame file name, or None when the name is not one."""
    m = _FRAME_RE.match(Path(name).name)
    if not m:
        return None
    fid = FieldId(int(m["run"]), int(m["camcol"]), int(m["field"]))
    return m["band"], fid


def _open_fits(path: Path) -> fits.HDUList:
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    try:
        if path.suffix == ".bz2":
            # astropy re-decompresses a bz2 stream on every backward seek; decompress once.
            with bz2.open(path, "rb") as fh:
                hdul = fits.open(io.BytesIO(fh.read()), memmap=False)
        else:
            hdul = fits.open(path, memmap=False)
        # Touch the primary data now so that a truncated file fails here, with its name.
        _ = hdul[0].data
    except (OSError, ValueError, EOFError, TypeError) as exc:
        raise DataFileError(f"{path}: not a readable FITS file ({exc})") from exc
    return hdul


def read_fpm(path: str | Path, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Read an SDSS ``fpM`` mask file into one boolean image per mask plane.

    Each plane's HDU lists object masks, each a set of spans ``(y, x1, x2)`` stored in the
    ``s`` column as big-endian 16-bit integers packed in a byte array (``1PB``), offset by
    ``row0``/``col0`` (photo's OBJMASK structure).
    """
    path = Path(path)
    hdul = _open_fits(path)
    planes: dict[str, np.ndarray] = {}
    rows, cols = shape
    try:
        for i, name in enumerate(MASK_PLANES, start=1):
            if i >= len(hdul):
                break
            table = hdul[i].data
            if table is None or not len(table):
                planes[name] = np.zeros(shape, dtype=bool)
                continue
            # ``s`` is a variable-length byte array holding big-endian int16 (y, x1, x2) spans.
            spans = [
                np.asarray(s, dtype=np.uint8).view(">i2").astype(np.int64).reshape(-1, 3)
                for s in table["s"]
            ]
            counts = [len(sp) for sp in spans]
            allspans = np.concatenate(spans) if spans else np.zeros((0, 3), np.int64)
            y = allspans[:, 0] + np.repeat(np.asarray(table["row0"], np.int64), counts)
            col0 = np.repeat(np.asarray(table["col0"], np.int64), counts)
            x1 = np.clip(allspans[:, 1] + col0, 0, cols)
            x2 = np.clip(allspans[:, 2] + col0 + 1, 0, cols)
            keep = (y >= 0) & (y < rows) & (x2 > x1)
            # Mark span starts +1 and ends -1 and integrate along rows.
            edges = np.zeros((rows, cols + 1), dtype=np.int32)
            np.add.at(edges, (y[keep], x1[keep]), 1)
            np.add.at(edges, (y[keep], x2[keep]), -1)
            planes[name] = np.cumsum(edges, axis=1)[:, :cols] > 0
    except (KeyError, ValueError) as exc:
        raise DataFileError(f"{path}: not an SDSS fpM mask file ({exc})") from exc
    finally:
        hdul.close()
    return planes


def read_frame(
    path: str | Path,
    fpm_path: str | Path | None = None,
    bad_planes: Sequence[str] = DEFAULT_BAD_PLANES,
    band: str | None = None,
) -> BandFrame:
    """Read one SDSS corrected frame (optionally with its fpM mask file).

    Parameters
    ----------
    path : path-like
        ``frame-[ugriz]-RUN-CAMCOL-FIELD.fits`` (``.bz2`` and ``.gz`` are read directly), or any
        2-D FITS image with a celestial WCS (then ``band`` names its band).
    fpm_path : path-like, optional
        The matching ``fpM`` file; its ``bad_planes`` are OR-ed into the mask.
    bad_planes : sequence of str
        fpM planes that mark bad pixels.
    band : str, optional
        Band of a file whose name does not say it.

    Raises
    ------
    DataFileError
        The file is missing, truncated, not FITS, not 2-D, or has no celestial WCS.
    """
    path = Path(path)
    parsed = parse_frame_name(path.name)
    if parsed is not None:
        band = band or parsed[0]
        field_id: FieldId | None = parsed[1]
    else:
        field_id = None
    hdul = _open_fits(path)
    try:
        primary = hdul[0]
        data = primary.data
        if data is None or data.ndim != 2:
            shape = None if data is None else data.shape
            raise DataFileError(f"{path}: expected a 2-D image in the primary HDU, found {shape}")
        header = primary.header
        band = band or str(header.get("FILTER", "")).strip() or None
        if band not in BANDS:
            raise DataFileError(f"{path}: cannot tell the band (got {band!r}); name it explicitly")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        if not wcs.has_celestial or wcs.celestial.naxis != 2:
            raise DataFileError(f"{path}: no celestial WCS in the header")
        data = np.asarray(data, dtype=np.float32)
        calib = sky_grid = sky_x = sky_y = None
        if len(hdul) > 1 and hdul[1].data is not None and hdul[1].data.ndim == 1:
            calib = np.asarray(hdul[1].data, dtype=np.float32)
        if len(hdul) > 2 and isinstance(hdul[2], fits.BinTableHDU):
            names = hdul[2].columns.names
            if {"ALLSKY", "XINTERP", "YINTERP"} <= set(names):
                row = hdul[2].data[0]
                sky_grid = np.asarray(row["ALLSKY"], dtype=np.float32)
                sky_x = np.asarray(row["XINTERP"], dtype=np.float32)
                sky_y = np.asarray(row["YINTERP"], dtype=np.float32)
        if field_id is None and {"RUN", "CAMCOL", "FRAME"} <= set(header):
            try:
                field_id = FieldId(int(header["RUN"]), int(header["CAMCOL"]), int(header["FRAME"]))
            except (TypeError, ValueError):
                field_id = None
    finally:
        hdul.close()
    mask = ~np.isfinite(data)
    planes: dict[str, np.ndarray] = {}
    if fpm_path is not None:
        planes = read_fpm(fpm_path, data.shape)
        for name in bad_planes:
            if name in planes:
                mask |= planes[name]
    return BandFrame(
        band=band,
        data=data,
        wcs=wcs.celestial,
        mask=mask,
        header=header,
        path=path,
        calib=calib,
        sky_grid=sky_grid,
        sky_x=sky_x,
        sky_y=sky_y,
        mask_planes=planes,
        field_id=field_id,
    )


@dataclass(frozen=True)
class PsfInfo:
    """Seeing of one band from psField: FWHM in arcsec and the sky noise per pixel."""

    band: str
    fwhm_arcsec: float
    sky_sigma: float | None = None


def read_psfield(path: str | Path) -> dict[str, PsfInfo]:
    """Read the per-band PSF FWHM (``psf_width``, arcsec) from an SDSS psField file (HDU6)."""
    path = Path(path)
    hdul = _open_fits(path)
    try:
        if len(hdul) < 7 or "psf_width" not in hdul[6].columns.names:
            raise DataFileError(f"{path}: not an SDSS psField file (no psf_width in HDU6)")
        row = hdul[6].data[0]
        widths = np.asarray(row["psf_width"], dtype=float)
        skysig = (
            np.asarray(row["skysig"], dtype=float) if "skysig" in hdul[6].columns.names else None
        )
    finally:
        hdul.close()
    return {
        b: PsfInfo(b, float(widths[i]), None if skysig is None else float(skysig[i]))
        for i, b in enumerate(BANDS)
    }


class FrameSet:
    """The bands of one SDSS field, each with its own WCS, mask and calibration.

    Parameters
    ----------
    frames : mapping of band to BandFrame
        At least one band; all must belong to the same field.
    psf : dict, optional
        Per-band seeing from psField.
    """

    def __init__(self, frames: Mapping[str, BandFrame], psf: Mapping[str, PsfInfo] | None = None):
        if not frames:
            raise DataFileError("a frame set needs at least one band")
        ordered = {b: frames[b] for b in BANDS if b in frames}
        fields = {f.field_id for f in ordered.values() if f.field_id is not None}
        if len(fields) > 1:
            detail = ", ".join(f"{b}: {f.field_id} ({f.path})" for b, f in ordered.items())
            raise FieldMismatchError(f"the bands come from different fields: {detail}")
        shapes = {f.shape for f in ordered.values()}
        if len(shapes) > 1:
            detail = ", ".join(f"{b}: {f.shape}" for b, f in ordered.items())
            raise FieldMismatchError(f"the bands have different shapes: {detail}")
        self.frames: dict[str, BandFrame] = ordered
        self.field_id: FieldId | None = next(iter(fields)) if fields else None
        self.psf: dict[str, PsfInfo] = dict(psf or {})
        self._check_overlap()

    def _check_overlap(self) -> None:
        """Refuse bands whose footprints do not overlap (different fields without names)."""
        ref = self.reference
        cy, cx = (np.asarray(ref.shape) - 1) / 2.0
        centre = ref.wcs.pixel_to_world(cx, cy)
        for band, frame in self.frames.items():
            x, y = frame.wcs.world_to_pixel(centre)
            rows, cols = frame.shape
            if not (-0.5 * cols <= x <= 1.5 * cols and -0.5 * rows <= y <= 1.5 * rows):
                raise FieldMismatchError(
                    f"band {band} ({frame.path}) does not cover the centre of band "
                    f"{ref.band} ({ref.path}): they are not frames of one field"
                )

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands present, in wavelength order."""
        return tuple(self.frames)

    @property
    def reference_band(self) -> str:
        """The band that defines the field's pixel grid: r when present."""
        return "r" if "r" in self.frames else next(iter(self.frames))

    @property
    def reference(self) -> BandFrame:
        """The reference band's frame."""
        return self.frames[self.reference_band]

    @property
    def shape(self) -> tuple[int, int]:
        """Pixel shape (rows, cols) shared by all bands."""
        return self.reference.shape

    def __getitem__(self, band: str) -> BandFrame:
        try:
            return self.frames[band]
        except KeyError:
            raise KeyError(
                f"band {band!r} not in this frame set (has {', '.join(self.bands)})"
            ) from None

    def __contains__(self, band: object) -> bool:
        return band in self.frames

    def __repr__(self) -> str:
        return f"FrameSet(field={self.field_id}, bands={''.join(self.bands)}, shape={self.shape})"

    @property
    def pixel_scale_arcsec(self) -> float:
        """Pixel scale of the reference band in arcsec per pixel."""
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(self.reference.wcs)) * 3600.0)

    def footprint(self) -> SkyCoord:
        """The four corners of the reference band on the sky."""
        rows, cols = self.shape
        x = np.array([-0.5, cols - 0.5, cols - 0.5, -0.5])
        y = np.array([-0.5, -0.5, rows - 0.5, rows - 0.5])
        return self.reference.wcs.pixel_to_world(x, y)

    def centre(self) -> SkyCoord:
        """The sky position of the centre of the reference band."""
        rows, cols = self.shape
        return self.reference.wcs.pixel_to_world((cols - 1) / 2.0, (rows - 1) / 2.0)

    def contains(self, coord: SkyCoord, margin: float = 0.0, all_bands: bool = True) -> np.ndarray:
        """True where ``coord`` lies at least ``margin`` pixels inside the field.

        With ``all_bands`` the position must be inside every band (they are offset by up to
        ~11 px), otherwise inside the reference band.
        """
        inside = np.ones(np.shape(coord.ra), dtype=bool)
        frames = self.frames.values() if all_bands else [self.reference]
        for frame in frames:
            x, y = frame.wcs.world_to_pixel(coord)
            rows, cols = frame.shape
            inside &= (x >= margin - 0.5) & (x <= cols - 0.5 - margin)
            inside &= (y >= margin - 0.5) & (y <= rows - 0.5 - margin)
        return inside

    def band_offsets(self, coord: SkyCoord | None = None) -> dict[str, tuple[float, float]]:
        """Pixel offset (dx, dy) of each band from the reference band at ``coord``."""
        coord = self.centre() if coord is None else coord
        rx, ry = self.reference.wcs.world_to_pixel(coord)
        out = {}
        for band, frame in self.frames.items():
            x, y = frame.wcs.world_to_pixel(coord)
            out[band] = (float(x - rx), float(y - ry))
        return out


def _group_files(paths: Iterable[Path]) -> tuple[dict[str, Path], dict[str, Path], Path | None]:
    frames: dict[str, Path] = {}
    fpms: dict[str, Path] = {}
    psfield = None
    for p in paths:
        name = p.name
        if (parsed := parse_frame_name(name)) is not None:
            band = parsed[0]
            if band in frames:
                raise FieldMismatchError(
                    f"two frames for band {band}: {frames[band]} and {p}; open one field at a time"
                )
            frames[band] = p
        elif (m := _FPM_RE.match(name)) is not None:
            fpms[m["band"]] = p
        elif _PSFIELD_RE.match(name) is not None:
            psfield = p
    return frames, fpms, psfield


def open_frame_set(
    source: str | Path | Sequence[str | Path],
    bands: Sequence[str] | None = None,
    bad_planes: Sequence[str] = DEFAULT_BAD_PLANES,
) -> FrameSet:
    """Open a local SDSS frame set.

    Parameters
    ----------
    source : path-like or sequence of path-like
        A folder holding ``frame-[ugriz]-RUN-CAMCOL-FIELD.fits[.bz2]`` files (one field), or a
        list of frame files. ``fpM`` mask files and a ``psField`` file beside them are used when
        present.
    bands : sequence of str, optional
        Bands to read (default: all present).
    bad_planes : sequence of str
        fpM planes that mark bad pixels.

    Raises
    ------
    DataFileError
        No frame files found, or a file cannot be read.
    FieldMismatchError
        The files belong to different fields.
    """
    if isinstance(source, (str, Path)):
        src = Path(source)
        if src.is_dir():
            candidates = sorted(src.iterdir())
        elif src.exists():
            candidates = [src]
        else:
            raise DataFileError(f"{src}: no such file or folder")
        folder = src if src.is_dir() else src.parent
    else:
        candidates = [Path(p) for p in source]
        if not candidates:
            raise DataFileError("no frame files given")
        missing = [str(p) for p in candidates if not p.exists()]
        if missing:
            raise DataFileError(f"{missing[0]}: no such file")
        folder = candidates[0].parent
    frame_paths, fpm_paths, psfield = _group_files(candidates)
    if not isinstance(source, (str, Path)):
        # Masks and psField beside explicitly listed frames are picked up too.
        _, more_fpm, more_ps = _group_files(sorted(folder.iterdir()))
        fpm_paths = {**more_fpm, **fpm_paths}
        psfield = psfield or more_ps
    if not frame_paths:
        names = ", ".join(p.name for p in candidates[:5])
        raise DataFileError(
            f"{source}: no SDSS frame files (frame-[ugriz]-RUN-CAMCOL-FIELD.fits[.bz2]) found"
            + (f" among {names}" if names else "")
        )
    fields = {b: parse_frame_name(p.name)[1] for b, p in frame_paths.items()}  # type: ignore[index]
    if len(set(fields.values())) > 1:
        detail = ", ".join(f"{b}: {f}" for b, f in fields.items())
        raise FieldMismatchError(f"frames of different fields given together ({detail})")
    if bands is not None:
        unknown = [b for b in bands if b not in BANDS]
        if unknown:
            raise ValueError(f"unknown band(s) {unknown}; SDSS bands are {', '.join(BANDS)}")
        absent = [b for b in bands if b not in frame_paths]
        if absent:
            raise DataFileError(f"{folder}: no frame for band(s) {', '.join(absent)}")
        frame_paths = {b: frame_paths[b] for b in bands}
    field_id = next(iter(fields.values()))

    def read_band(band: str) -> BandFrame:
        p = frame_paths[band]
        fpm = fpm_paths.get(band)
        if fpm is not None and (m := _FPM_RE.match(fpm.name)) is not None:
            if (int(m["run"]), int(m["camcol"]), int(m["field"])) != (
                field_id.run,
                field_id.camcol,
                field_id.field,
            ):
                fpm = None  # a mask of another field is not this frame's mask
        return read_frame(p, fpm, bad_planes=bad_planes, band=band)

    # bz2 decompression releases the GIL: read the bands in parallel.
    with ThreadPoolExecutor(max_workers=min(len(frame_paths), os.cpu_count() or 1)) as pool:
        frames = dict(zip(frame_paths, pool.map(read_band, frame_paths), strict=True))
    psf = None
    if psfield is not None:
        m = _PSFIELD_RE.match(psfield.name)
        if m and (int(m["run"]), int(m["camcol"]), int(m["field"])) == (
            field_id.run,
            field_id.camcol,
            field_id.field,
        ):
            psf = read_psfield(psfield)
    return FrameSet(frames, psf=psf)
