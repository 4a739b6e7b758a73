"""WCS-aligned multi-band cutouts, the NormSpec, Lupton RGB and asinh views.

The five SDSS bands of a field are not pixel-aligned (offsets up to ~11 px). A cutout is
therefore defined on the sky, not in pixels: an output grid (north up, east left by default)
centred on the target, and every band is resampled onto that grid through its own WCS. Across
a 64 px cutout the band-to-grid mapping is affine to far better than 0.01 px (SDSS frames are
TAN projections of 0.396"/px), so each band is resampled with one affine transform
(``scipy.ndimage.affine_transform``) whose coefficients come from the band's WCS at three points
of the cutout. The sky positions of all cutouts of a batch go through each WCS in one
vectorised call, which is what makes thousands of cutouts per second possible.

Colour composites follow Lupton et al. (2004, PASP 116, 133) through
:func:`astropy.visualization.make_lupton_rgb`; the per-band views use an asinh stretch
(Lupton, Gunn & Szalay 1999, AJ 118, 1406).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.visualization import make_lupton_rgb
from astropy.wcs import WCS
from scipy.ndimage import affine_transform

from ssald_desktop.core.errors import OutsideFieldError
from ssald_desktop.core.frames import BANDS, SDSS_PIXEL_SCALE, FrameSet

SIZE_UNITS = ("pixel", "petrosian")

#: Largest departure (px) from a pure shift that the fast resampling path accepts.
SHIFT_TOLERANCE_PX = 0.02
ORIENTATIONS = ("north_up", "native")


@dataclass(frozen=True)
class NormSpec:
    """How a cutout is cut and normalised; saved with every dataset and model.

    Training and query must use identical preprocessing: the spec is frozen, hashable and
    serialisable (:meth:`to_json`), and :meth:`digest` gives a short stable identifier that
    datasets, embeddings and models record.

    Parameters
    ----------
    bands : tuple of str
        Bands stored in the cutout cube, in order (default all five, ugriz).
    rgb : tuple of 3 str
        Bands mapped to red, green and blue in the colour composite (default i, r, g as in the
        seed paper and SDSS SkyServer).
    q, stretch, minimum : float
        Lupton et al. (2004) asinh softening ``Q``, linear ``stretch`` (nanomaggies) and black
        level ``minimum`` (nanomaggies), as in :func:`astropy.visualization.make_lupton_rgb`.
    size : float
        Angular width of the cutout, in reference pixels of ``pixel_scale`` (``size_unit``
        "pixel") or in Petrosian radii of the galaxy (``size_unit`` "petrosian").
    size_unit : {"pixel", "petrosian"}
        Unit of ``size``.
    output_size : int
        Output image size in pixels (square).
    pixel_scale : float
        Arcsec per pixel that ``size`` counts in when ``size_unit`` is "pixel" (SDSS: 0.396).
    orientation : {"north_up", "native"}
        "north_up" gives north up, east left (as SkyServer cutouts and most query images);
        "native" keeps the reference band's pixel axes.
    interpolation : int
        Spline order of the resampling (0 nearest, 1 bilinear, 3 bicubic).
    """

    bands: tuple[str, ...] = BANDS
    rgb: tuple[str, str, str] = ("i", "r", "g")
    q: float = 8.0
    stretch: float = 0.3
    minimum: float = 0.0
    size: float = 64.0
    size_unit: str = "pixel"
    output_size: int = 64
    pixel_scale: float = SDSS_PIXEL_SCALE
    orientation: str = "north_up"
    interpolation: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "rgb", tuple(self.rgb))
        if not self.bands or any(b not in BANDS for b in self.bands):
            raise ValueError(f"bands must be a non-empty subset of {BANDS}, got {self.bands}")
        if len(set(self.bands)) != len(self.bands):
            raise ValueError(f"bands repeat: {self.bands}")
        if len(self.rgb) != 3 or any(b not in self.bands for b in self.rgb):
            raise ValueError(
                f"rgb must be three of the cutout's bands {self.bands}, got {self.rgb}"
            )
        for name in ("q", "stretch", "size", "pixel_scale"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not np.isfinite(self.minimum):
            raise ValueError(f"minimum must be finite, got {self.minimum!r}")
        if self.size_unit not in SIZE_UNITS:
            raise ValueError(f"size_unit must be one of {SIZE_UNITS}, got {self.size_unit!r}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if int(self.output_size) != self.output_size or not 4 <= self.output_size <= 4096:
            raise ValueError(f"output_size must be an integer in 4..4096, got {self.output_size!r}")
        object.__setattr__(self, "output_size", int(self.output_size))
        if self.interpolation not in (0, 1, 3):
            raise ValueError(f"interpolation must be 0, 1 or 3, got {self.interpolation!r}")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["bands"] = list(self.bands)
        d["rgb"] = list(self.rgb)
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same spec always gives the same text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NormSpec:
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown NormSpec field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        for key in ("bands", "rgb"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> NormSpec:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """A 16-hex-digit SHA-256 digest of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> NormSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- geometry ------------------------------------------------------------------------
    def width_arcsec(self, petro_radius_arcsec: float | np.ndarray | None = None) -> Any:
        """Angular width of the cutout in arcsec (needs the Petrosian radius for that unit)."""
        if self.size_unit == "pixel":
            return self.size * self.pixel_scale
        if petro_radius_arcsec is None:
            raise ValueError("this NormSpec sizes cutouts in Petrosian radii: give petro_radius")
        r = np.asarray(petro_radius_arcsec, dtype=float)
        if np.any(~np.isfinite(r) | (r <= 0)):
            raise ValueError(f"Petrosian radius must be positive, got {petro_radius_arcsec!r}")
        return self.size * r


def lupton_rgb(
    red: np.ndarray, green: np.ndarray, blue: np.ndarray, spec: NormSpec | None = None
) -> np.ndarray:
    """Lupton et al. (2004) colour composite of three images, as 8-bit RGB.

    A thin wrapper of :func:`astropy.visualization.make_lupton_rgb` with the NormSpec's
    ``minimum``, ``stretch`` and ``Q``; the result is identical to calling it directly.
    """
    spec = spec or NormSpec()
    # astropy divides f(I) by I before masking I <= 0; silence that harmless 0/0.
    with np.errstate(invalid="ignore", divide="ignore"):
        return make_lupton_rgb(
            red, green, blue, minimum=spec.minimum, stretch=spec.stretch, Q=spec.q
        )


def asinh_view(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    softening: float | None = None,
    percentile: float = 99.5,
) -> np.ndarray:
    """An asinh-stretched view of one band scaled to 0..1 (Lupton, Gunn & Szalay 1999).

    The softening defaults to twice the robust noise (MAD) of the valid pixels, so the sky
    noise sits in the linear part and bright structure is compressed; the upper limit is the
    ``percentile`` of the valid pixels. Masked pixels come out as 0.
    """
    img = np.asarray(image, dtype=np.float32)
    valid = np.isfinite(img) if mask is None else (~np.asarray(mask, bool) & np.isfinite(img))
    if not valid.any():
        return np.zeros_like(img)
    vals = img[valid]
    med = float(np.median(vals))
    if softening is None:
        mad = float(np.median(np.abs(vals - med))) * 1.4826
        softening = 2.0 * mad if mad > 0 else max(float(np.std(vals)), 1e-6)
    lo = med - softening
    hi = float(np.percentile(vals, percentile))
    top = np.arcsinh((hi - lo) / softening) if hi > lo else 1.0
    out = np.arcsinh(np.clip(img - lo, 0, None) / softening) / top
    out = np.clip(out, 0.0, 1.0)
    out[~valid] = 0.0
    return out.astype(np.float32)


@dataclass
class Cutout:
    """One WCS-aligned multi-band cutout.

    Attributes
    ----------
    data : numpy.ndarray
        Shape (bands, rows, cols), nanomaggies, float32. Pixels outside the field are 0.
    mask : numpy.ndarray
        Shape (bands, rows, cols), True where a pixel is outside the field, non-finite, or
        touches a bad pixel of the frame (fpM INTERP/SATUR/CR by default).
    ra, dec : float
        Centre of the cutout (deg, ICRS).
    pixel_scale : float
        Output pixel scale (arcsec).
    spec : NormSpec
        How it was made.
    wcs : astropy.wcs.WCS
        WCS of the output grid (same for every band).
    """

    data: np.ndarray
    mask: np.ndarray
    ra: float
    dec: float
    pixel_scale: float
    spec: NormSpec
    wcs: WCS

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands of the cube, in order."""
        return self.spec.bands

    def band(self, name: str) -> np.ndarray:
        """One band's image."""
        return self.data[self.spec.bands.index(name)]

    def band_mask(self, name: str) -> np.ndarray:
        """One band's mask."""
        return self.mask[self.spec.bands.index(name)]

    def rgb(self) -> np.ndarray:
        """Lupton RGB composite (rows, cols, 3) uint8 with the spec's band mapping."""
        r, g, b = (self.band(x) for x in self.spec.rgb)
        return lupton_rgb(r, g, b, self.spec)

    def asinh(self, name: str) -> np.ndarray:
        """Asinh view (0..1) of one band with its mask."""
        return asinh_view(self.band(name), self.band_mask(name))

    @property
    def masked_fraction(self) -> float:
        """Fraction of masked pixels over all bands."""
        return float(self.mask.mean())

    def write_png(self, path: str | Path) -> Path:
        """Write the Lupton RGB as PNG, north up (FITS row 0 at the bottom)."""
        from PIL import Image

        path = Path(path)
        Image.fromarray(np.ascontiguousarray(self.rgb()[::-1])).save(path)
        return path

    def write_fits(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write one image HDU per band (with the output WCS) and one mask HDU per band.

        The NormSpec is stored as JSON in the primary header (``NORMSPEC``, continued cards).
        """
        path = Path(path)
        header = self.wcs.to_header()
        primary = fits.PrimaryHDU()
        primary.header["RA"] = (self.ra, "cutout centre, deg ICRS")
        primary.header["DEC"] = (self.dec, "cutout centre, deg ICRS")
        primary.header["PIXSCALE"] = (self.pixel_scale, "arcsec per pixel")
        primary.header["BUNIT"] = "nanomaggy"
        primary.header["NORMSPEC"] = self.spec.to_json()
        primary.header["NSDIGEST"] = self.spec.digest()
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [primary]
        for i, b in enumerate(self.spec.bands):
            hdus.append(fits.ImageHDU(self.data[i], header=header, name=b.upper()))
        for i, b in enumerate(self.spec.bands):
            hdus.append(
                fits.ImageHDU(
                    self.mask[i].astype(np.uint8), header=header, name=f"{b.upper()}_MASK"
                )
            )
        fits.HDUList(hdus).writeto(path, overwrite=overwrite)
        return path


def _gnomonic_inverse(
    ra0: np.ndarray, dec0: np.ndarray, xi: np.ndarray, eta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sky position of standard coordinates (xi, eta) in radians about (ra0, dec0) in radians.

    The inverse gnomonic (TAN) projection (Calabretta & Greisen 2002, A&A 395, 1077).
    """
    cos_d0, sin_d0 = np.cos(dec0), np.sin(dec0)
    denom = cos_d0 - eta * sin_d0
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(sin_d0 + eta * cos_d0, np.hypot(xi, denom))
    return np.mod(ra, 2 * np.pi), dec


def _output_wcs(ra: float, dec: float, n: int, scale_arcsec: float, cd: np.ndarray | None) -> WCS:
    """TAN WCS of an n x n output grid centred on (ra, dec)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
    if cd is None:
        s = scale_arcsec / 3600.0
        w.wcs.cd = np.array([[-s, 0.0], [0.0, s]])
    else:
        w.wcs.cd = cd
    return w


class CutoutEngine:
    """Cut WCS-aligned multi-band cutouts from one frame set.

    Parameters
    ----------
    frame_set : FrameSet
        The field; every band in ``spec.bands`` must be present.
    spec : NormSpec
        Geometry and normalisation.
    """

    def __init__(self, frame_set: FrameSet, spec: NormSpec | None = None):
        self.frame_set = frame_set
        self.spec = spec or NormSpec()
        missing = [b for b in self.spec.bands if b not in frame_set]
        if missing:
            raise OutsideFieldError(
                f"field {frame_set.field_id} has no {', '.join(missing)} band(s) "
                f"(has {''.join(frame_set.bands)}); the NormSpec needs {''.join(self.spec.bands)}"
            )
        ref = frame_set.reference
        # The reference band's sky-to-pixel Jacobian gives the "native" orientation.
        self._ref_cd = ref.wcs.pixel_scale_matrix
        self._flat: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _flat_band(self, band: str) -> tuple[np.ndarray, np.ndarray]:
        """Flattened image (non-finite set to 0) and its 2x2-block bad-pixel flags.

        ``block[r, c]`` is True when any of the four pixels that bilinear interpolation reads
        from (r..r+1, c..c+1) is bad, so one look-up decides the mask of an output pixel.
        """
        if band not in self._flat:
            frame = self.frame_set[band]
            img = np.where(np.isfinite(frame.data), frame.data, 0.0).astype(np.float32)
            bad = frame.mask
            block = bad.copy()
            block[:, :-1] |= bad[:, 1:]
            block[:-1, :] |= block[1:, :].copy()
            block[-1, :] = True  # the last row/column have no right/lower neighbour
            block[:, -1] = True
            self._flat[band] = (img.ravel(), block.ravel())
        return self._flat[band]

    def _shift_resample(
        self,
        band: str,
        matrix: np.ndarray,
        centre: np.ndarray,
        out: np.ndarray,
        out_mask: np.ndarray,
    ) -> bool:
        """Fast path: resample by a sub-pixel shift when the map is a signed axis permutation.

        When the output grid has the band's pixel scale and its axes are parallel to the
        band's (up to a transpose and flips), the affine map differs from a pure translation by
        less than ``SHIFT_TOLERANCE_PX`` over the cutout; the band is then read through a
        transposed/flipped view and interpolated bilinearly with one pair of fractional
        offsets. Returns False (doing nothing) when the map is not of that kind or the cutout
        touches the field's edge; the general path then handles it.
        """
        perm = np.rint(matrix)
        if not (np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1)):
            return False
        n = self.spec.output_size
        half = (n - 1) / 2.0
        if np.abs(matrix - perm).sum(axis=1).max() * half > SHIFT_TOLERANCE_PX:
            return False
        frame = self.frame_set[band]
        img, _ = self._flat_band(band)
        rows, cols = frame.shape
        image = img.reshape(rows, cols)
        bad = frame.mask
        swap = perm[0, 0] == 0
        if swap:
            image, bad = image.T, bad.T
            perm = perm[::-1]
            centre = centre[::-1]
        base = np.empty(2)
        for axis in range(2):
            sign = perm[axis, axis]
            extent = image.shape[axis]
            if sign < 0:
                image = np.flip(image, axis)
                bad = np.flip(bad, axis)
                base[axis] = extent - 1 - centre[axis]
            else:
                base[axis] = centre[axis]
        # Output pixel (u, v) sits at view position base + (u, v) - half.
        start = base - half
        i0 = np.floor(start).astype(int)
        frac = (start - i0).astype(np.float32)
        if i0.min() < 0 or i0[0] + n + 1 > image.shape[0] or i0[1] + n + 1 > image.shape[1]:
            return False
        win = image[i0[0] : i0[0] + n + 1, i0[1] : i0[1] + n + 1]
        fr, fc = frac
        top = win[:-1, :-1] * (1 - fc) + win[:-1, 1:] * fc
        bottom = win[1:, :-1] * (1 - fc) + win[1:, 1:] * fc
        np.add(top * (1 - fr), bottom * fr, out=out)
        # An output pixel is bad when any of the four pixels it interpolates is bad.
        bwin = bad[i0[0] : i0[0] + n + 1, i0[1] : i0[1] + n + 1]
        if bwin.any():
            np.logical_or(bwin[:-1, :-1], bwin[1:, 1:], out=out_mask)
            out_mask |= bwin[:-1, 1:]
            out_mask |= bwin[1:, :-1]
        else:
            out_mask[:] = False
        return True

    def _bilinear_batch(
        self,
        band: str,
        matrices: np.ndarray,
        centres: np.ndarray,
        out: np.ndarray,
        out_mask: np.ndarray,
    ) -> None:
        """Vectorised bilinear (or nearest) resampling of one band for a whole batch.

        ``out`` and ``out_mask`` are (N, n, n) views that receive the result.
        """
        rows, cols = self.frame_set[band].shape
        img, block = self._flat_band(band)
        n = self.spec.output_size
        o = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        m = matrices[:, :, :, None, None]
        rr = (
            centres[:, 0, None, None]
            + m[:, 0, 0] * o[None, :, None]
            + m[:, 0, 1] * o[None, None, :]
        )
        cc = (
            centres[:, 1, None, None]
            + m[:, 1, 0] * o[None, :, None]
            + m[:, 1, 1] * o[None, None, :]
        )
        if self.spec.interpolation == 0:
            ri = np.rint(rr).astype(np.int64)
            ci = np.rint(cc).astype(np.int64)
            inside = (ri >= 0) & (ri < rows) & (ci >= 0) & (ci < cols)
            flat = np.clip(ri, 0, rows - 1) * cols + np.clip(ci, 0, cols - 1)
            np.copyto(out, np.where(inside, img[flat], 0.0))
            np.copyto(out_mask, ~inside | self.frame_set[band].mask.ravel()[flat])
            return
        r0 = np.floor(rr)
        c0 = np.floor(cc)
        fr = (rr - r0).astype(np.float32)
        fc = (cc - c0).astype(np.float32)
        r0 = r0.astype(np.int64)
        c0 = c0.astype(np.int64)
        inside = (r0 >= 0) & (r0 < rows - 1) & (c0 >= 0) & (c0 < cols - 1)
        flat = np.clip(r0, 0, rows - 2) * cols + np.clip(c0, 0, cols - 2)
        top = img[flat] * (1 - fc) + img[flat + 1] * fc
        bottom = img[flat + cols] * (1 - fc) + img[flat + cols + 1] * fc
        value = top * (1 - fr) + bottom * fr
        value[~inside] = 0.0
        out[...] = value
        np.logical_or(~inside, block[flat], out=out_mask)

    # -- geometry ------------------------------------------------------------------------
    def _sky_points(
        self, ra: np.ndarray, dec: np.ndarray, width_arcsec: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sky positions of the centre and of +x/+y unit steps of every output grid.

        Returns ra, dec arrays of shape (3, N) in degrees and the output pixel scales (N,).
        """
        n = self.spec.output_size
        scale = width_arcsec / n  # arcsec per output pixel
        step = scale / 3600.0  # deg per output pixel
        if self.spec.orientation == "north_up":
            # +x = west (xi decreases), +y = north.
            dxi = np.stack([np.zeros_like(step), -step, np.zeros_like(step)])
            deta = np.stack([np.zeros_like(step), np.zeros_like(step), step])
        else:
            # Axes parallel to the reference band's pixel axes: one output pixel is the
            # reference pixel's CD matrix scaled to the output pixel scale.
            ref_scale = np.sqrt(abs(np.linalg.det(self._ref_cd)))
            cd = self._ref_cd / ref_scale
            dxi = np.stack([np.zeros_like(step), cd[0, 0] * step, cd[0, 1] * step])
            deta = np.stack([np.zeros_like(step), cd[1, 0] * step, cd[1, 1] * step])
        ra_r, dec_r = _gnomonic_inverse(
            np.deg2rad(ra)[None, :], np.deg2rad(dec)[None, :], np.deg2rad(dxi), np.deg2rad(deta)
        )
        return np.rad2deg(ra_r), np.rad2deg(dec_r), scale

    def _band_affines(
        self, band: str, ra_pts: np.ndarray, dec_pts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-cutout affine maps from output (row, col) to the band's (row, col).

        Returns (N, 2, 2) matrices and (N, 2) band positions of the output centre.
        """
        wcs = self.frame_set[band].wcs
        x, y = wcs.all_world2pix(ra_pts.ravel(), dec_pts.ravel(), 0)
        x = x.reshape(ra_pts.shape)
        y = y.reshape(ra_pts.shape)
        # Columns: derivative of band (row, col) w.r.t. output col (+x) and output row (+y).
        d_dx = np.stack([y[1] - y[0], x[1] - x[0]], axis=-1)  # (N, 2)
        d_dy = np.stack([y[2] - y[0], x[2] - x[0]], axis=-1)
        matrices = np.stack([d_dy, d_dx], axis=-1)  # (N, 2, 2): [[dr/drow, dr/dcol], [dc/..]]
        centres = np.stack([y[0], x[0]], axis=-1)
        return matrices, centres

    def _resample(
        self,
        band: str,
        matrix: np.ndarray,
        centre: np.ndarray,
        out: np.ndarray,
        out_mask: np.ndarray,
    ) -> None:
        """Spline-resample (order 3) one band of one cutout into ``out`` / ``out_mask``."""
        frame = self.frame_set[band]
        n = self.spec.output_size
        c = (n - 1) / 2.0
        rows, cols = frame.shape
        # Band pixel positions of the four output corners give the slab to read.
        corners = np.array([[-c, -c], [-c, c], [c, -c], [c, c]]) @ matrix.T + centre
        margin = self.spec.interpolation + 2
        r0 = int(np.floor(corners[:, 0].min())) - margin
        r1 = int(np.ceil(corners[:, 0].max())) + margin + 1
        c0 = int(np.floor(corners[:, 1].min())) - margin
        c1 = int(np.ceil(corners[:, 1].max())) + margin + 1
        sr0, sr1 = max(r0, 0), min(r1, rows)
        sc0, sc1 = max(c0, 0), min(c1, cols)
        if sr1 <= sr0 or sc1 <= sc0:
            out[:] = 0.0
            out_mask[:] = True
            return
        slab = frame.data[sr0:sr1, sc0:sc1]
        bad = frame.mask[sr0:sr1, sc0:sc1]
        offset = centre - matrix @ np.array([c, c]) - np.array([sr0, sc0])
        partial = (sr0, sr1, sc0, sc1) != (r0, r1, c0, c1)
        has_bad = bool(bad.any())
        if has_bad:
            slab = np.where(np.isfinite(slab), slab, 0.0).astype(np.float32)
        affine_transform(
            slab,
            matrix,
            offset=offset,
            output_shape=(n, n),
            output=out,
            order=self.spec.interpolation,
            mode="constant",
            cval=0.0,
            prefilter=True,
        )
        if has_bad or partial:
            m = affine_transform(
                bad.astype(np.float32),
                matrix,
                offset=offset,
                output_shape=(n, n),
                order=1,
                mode="constant",
                cval=1.0,
                prefilter=False,
            )
            np.greater(m, 1e-3, out=out_mask)
        else:
            out_mask[:] = False

    # -- public API ----------------------------------------------------------------------
    def cut_arrays(
        self,
        ra: Sequence[float] | np.ndarray,
        dec: Sequence[float] | np.ndarray,
        petro_radius_arcsec: Sequence[float] | np.ndarray | None = None,
        check_inside: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut a batch of cutouts as arrays.

        Parameters
        ----------
        ra, dec : array-like
            Centres in degrees (ICRS).
        petro_radius_arcsec : array-like, optional
            Petrosian radii, needed when the spec's size unit is "petrosian".
        check_inside : bool
            Raise :class:`OutsideFieldError` when a centre lies outside any band.

        Returns
        -------
        data : (N, bands, n, n) float32
        mask : (N, bands, n, n) bool
        scale : (N,) output pixel scale in arcsec
        """
        ra = np.atleast_1d(np.asarray(ra, dtype=float))
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        if ra.shape != dec.shape:
            raise ValueError(f"ra and dec differ in shape: {ra.shape} vs {dec.shape}")
        bad = ~np.isfinite(ra) | ~np.isfinite(dec) | (np.abs(dec) > 90)
        if bad.any():
            i = int(np.argmax(bad))
            raise OutsideFieldError(f"invalid position RA={ra[i]!r} Dec={dec[i]!r}")
        if check_inside:
            inside = self.frame_set.contains(SkyCoord(ra, dec, unit="deg"))
            if not inside.all():
                i = int(np.argmax(~inside))
                raise OutsideFieldError(
                    f"position RA={ra[i]:.6f} Dec={dec[i]:+.6f} is outside field "
                    f"{self.frame_set.field_id} (bands {''.join(self.frame_set.bands)})"
                )
        petro = None if petro_radius_arcsec is None else np.asarray(petro_radius_arcsec, float)
        width = np.broadcast_to(np.asarray(self.spec.width_arcsec(petro)), ra.shape)
        ra_pts, dec_pts, scale = self._sky_points(ra, dec, np.asarray(width, dtype=float))
        n = self.spec.output_size
        nb = len(self.spec.bands)
        data = np.zeros((len(ra), nb, n, n), dtype=np.float32)
        mask = np.zeros((len(ra), nb, n, n), dtype=bool)
        for j, band in enumerate(self.spec.bands):
            matrices, centres = self._band_affines(band, ra_pts, dec_pts)
            if self.spec.interpolation > 1:
                for k in range(len(ra)):
                    self._resample(band, matrices[k], centres[k], data[k, j], mask[k, j])
                continue
            slow = [
                k
                for k in range(len(ra))
                if not self._shift_resample(band, matrices[k], centres[k], data[k, j], mask[k, j])
            ]
            if slow:
                sub_d = np.empty((len(slow), n, n), np.float32)
                sub_m = np.empty((len(slow), n, n), bool)
                self._bilinear_batch(band, matrices[slow], centres[slow], sub_d, sub_m)
                data[slow, j] = sub_d
                mask[slow, j] = sub_m
        return data, mask, np.asarray(scale, dtype=float)

    def cut(self, coord: SkyCoord, petro_radius_arcsec: float | None = None) -> Cutout:
        """Cut one cutout centred on ``coord``."""
        icrs = coord.icrs
        ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
        data, mask, scale = self.cut_arrays(
            [ra], [dec], None if petro_radius_arcsec is None else [petro_radius_arcsec]
        )
        return Cutout(
            data=data[0],
            mask=mask[0],
            ra=ra,
            dec=dec,
            pixel_scale=float(scale[0]),
            spec=self.spec,
            wcs=self.output_wcs(ra, dec, float(scale[0])),
        )

    def iter_cutouts(
        self,
        ra: Sequence[float] | np.ndarray,
        dec: Sequence[float] | np.ndarray,
        petro_radius_arcsec: Sequence[float] | np.ndarray | None = None,
        batch: int = 256,
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(slice, data, mask, rgb)`` batches; memory stays bounded by ``batch``."""
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        for start in range(0, len(ra), batch):
            sl = slice(start, min(start + batch, len(ra)))
            pr = None if petro_radius_arcsec is None else np.asarray(petro_radius_arcsec)[sl]
            data, mask, _ = self.cut_arrays(ra[sl], dec[sl], pr, check_inside=False)
            yield sl, data, mask, self.rgb_batch(data)

    def rgb_batch(self, data: np.ndarray) -> np.ndarray:
        """Lupton RGB of a batch of cubes (N, bands, n, n) -> (N, n, n, 3) uint8."""
        idx = [self.spec.bands.index(b) for b in self.spec.rgb]
        nb, rows, cols = data.shape[0], data.shape[2], data.shape[3]
        # The Lupton mapping is per pixel (with a fixed minimum), so one call on the batch
        # stacked into a tall image gives exactly the per-cutout results.
        r, g, b = (data[:, i].reshape(nb * rows, cols) for i in idx)
        return lupton_rgb(r, g, b, self.spec).reshape(nb, rows, cols, 3)

    def output_wcs(self, ra: float, dec: float, scale_arcsec: float) -> WCS:
        """The TAN WCS of a cutout's output grid."""
        n = self.spec.output_size
        if self.spec.orientation == "north_up":
            return _output_wcs(ra, dec, n, scale_arcsec, None)
        ref_scale = np.sqrt(abs(np.linalg.det(self._ref_cd)))
        cd = self._ref_cd / ref_scale * (scale_arcsec / 3600.0)
        return _output_wcs(ra, dec, n, scale_arcsec, cd)


def cutout(
    frame_set: FrameSet,
    coord: SkyCoord,
    spec: NormSpec | None = None,
    petro_radius_arcsec: float | None = None,
) -> Cutout:
    """Cut one WCS-aligned multi-band cutout (see :class:`CutoutEngine`)."""
    return CutoutEngine(frame_set, spec).cut(coord, petro_radius_arcsec)
