"""The colour image of a whole field on the reference band's pixel grid (no Qt here).

The SDSS bands of a field are offset from each other by up to ~11 px, so the three bands of the
colour composite are first resampled onto the reference (r) band's pixel grid. Over one
2048 x 1489 frame the band-to-band mapping of two TAN WCSs is affine to ~1e-5 px, so each band is
resampled with one affine transform fitted by least squares to a 9 x 9 grid of positions mapped
through both WCSs (the fit residual is returned, so a caller can tell when it would not hold).
The composite is Lupton et al. (2004, PASP 116, 133) via
:func:`ssald_desktop.core.cutouts.lupton_rgb` (``astropy.visualization.make_lupton_rgb``).

The work is split in strips of rows so that no single C call holds the GIL for long: this runs
in a worker thread while the GUI thread must keep answering within 100 ms.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from scipy.ndimage import affine_transform

from ssald_desktop.core.cutouts import NormSpec, lupton_rgb
from ssald_desktop.core.frames import FrameSet

#: Rows per strip: ~30 ms of resampling or Lupton scaling per strip on a 2048-px-wide frame.
STRIP_ROWS = 128


def band_affine(frame_set: FrameSet, band: str, n: int = 9) -> tuple[np.ndarray, np.ndarray, float]:
    """Affine map from reference-band pixels (row, col) to ``band`` pixels (row, col).

    Returns
    -------
    matrix : (2, 2) ndarray
    offset : (2,) ndarray
        ``band_rc = matrix @ ref_rc + offset``, as :func:`scipy.ndimage.affine_transform` wants.
    residual : float
        Largest deviation (pixels) of the fit from the exact WCS mapping at the fit points.
    """
    ref = frame_set.reference
    rows, cols = ref.shape
    yy, xx = np.mgrid[0 : rows - 1 : complex(n), 0 : cols - 1 : complex(n)]
    world = ref.wcs.pixel_to_world(xx.ravel(), yy.ravel())
    bx, by = frame_set[band].wcs.world_to_pixel(world)
    design = np.column_stack([yy.ravel(), xx.ravel(), np.ones(yy.size)])
    coef_r, *_ = np.linalg.lstsq(design, by, rcond=None)
    coef_c, *_ = np.linalg.lstsq(design, bx, rcond=None)
    residual = float(max(np.abs(design @ coef_r - by).max(), np.abs(design @ coef_c - bx).max()))
    matrix = np.array([coef_r[:2], coef_c[:2]])
    offset = np.array([coef_r[2], coef_c[2]])
    return matrix, offset, residual


def resample_to_reference(
    frame_set: FrameSet, band: str, strip_rows: int = STRIP_ROWS
) -> Generator[None, None, np.ndarray]:
    """Resample one band onto the reference grid (bilinear); yields between strips.

    Non-finite pixels count as 0; pixels the band does not cover are 0.
    """
    rows, cols = frame_set.shape
    frame = frame_set[band]
    data = np.asarray(frame.data, dtype=np.float32)
    if not np.isfinite(data).all():
        data = np.where(np.isfinite(data), data, np.float32(0.0))
    if band == frame_set.reference_band:
        return data
    matrix, offset, _ = band_affine(frame_set, band)
    out = np.empty((rows, cols), dtype=np.float32)
    for r0 in range(0, rows, strip_rows):
        r1 = min(r0 + strip_rows, rows)
        # Output row r of the strip is reference row r0 + r.
        strip_offset = offset + matrix @ np.array([r0, 0.0])
        affine_transform(
            data,
            matrix,
            offset=strip_offset,
            output_shape=(r1 - r0, cols),
            output=out[r0:r1],
            order=1,
            mode="constant",
            cval=0.0,
        )
        yield
    return out


def field_rgb_iter(
    frame_set: FrameSet, spec: NormSpec | None = None, strip_rows: int = STRIP_ROWS
) -> Generator[None, None, np.ndarray]:
    """Lupton RGB of the whole field on the reference grid; a generator that yields often.

    Parameters
    ----------
    frame_set : FrameSet
        The field; must have the spec's three ``rgb`` bands.
    spec : NormSpec, optional
        Band mapping (``rgb``, default i, r, g) and Lupton ``q``, ``stretch``, ``minimum``.
    strip_rows : int
        Rows per strip between yields.

    Returns
    -------
    numpy.ndarray
        (rows, cols, 3) uint8 with FITS orientation: row 0 is the bottom row of the frame.
    """
    spec = spec or NormSpec()
    planes = []
    for band in spec.rgb:
        planes.append((yield from resample_to_reference(frame_set, band, strip_rows)))
    rows, cols = frame_set.shape
    rgb = np.empty((rows, cols, 3), dtype=np.uint8)
    # The Lupton mapping is per pixel (fixed minimum, stretch and Q): strips give the same result.
    for r0 in range(0, rows, strip_rows):
        r1 = min(r0 + strip_rows, rows)
        red, green, blue = (p[r0:r1] for p in planes)
        rgb[r0:r1] = lupton_rgb(red, green, blue, spec)
        yield
    return rgb


def field_rgb(frame_set: FrameSet, spec: NormSpec | None = None) -> np.ndarray:
    """:func:`field_rgb_iter` run to the end."""
    gen = field_rgb_iter(frame_set, spec)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
