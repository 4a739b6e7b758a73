"""Galaxies of an SDSS field: offline photutils detection or the SDSS photoObj catalogue.

Two ways to list the sources of a field:

- :func:`detect_galaxies` works offline on a local :class:`~ssald_desktop.core.frames.FrameSet`:
  background and noise maps (``Background2D``), matched-filter detection, deblending and
  ``SourceCatalog`` measurements (photutils; Bradley et al., Zenodo
  doi:10.5281/zenodo.596036, after SExtractor, Bertin & Arnouts 1996, A&AS 117, 393), then a
  star/galaxy separation that compares every source's light profile with the point-spread
  function measured on the stars of the same frame.
- :func:`query_galaxies` asks the SDSS SkyServer (DR17) for the photoObj galaxies of a field or
  of a cone, with spectroscopic redshifts where they exist. Its SQL is built by
  :func:`photoobj_sql` from validated numbers only.

Star/galaxy separation
----------------------
SDSS calls an object extended when ``psfMag - cModelMag > 0.145`` (Stoughton et al. 2002, AJ
123, 485; Strauss et al. 2002, AJ 124, 1810): a star's light is all in the PSF, a galaxy's is
spread beyond it. Offline we measure the same thing with a concentration index, the magnitude
difference between a small and a large circular aperture centred on the source,
``C = m(r_in) - m(r_out)`` with ``r_in ~ 0.75 FWHM`` and ``r_out = 3 FWHM``. All point sources of
a frame share one PSF, so they share one C (the *stellar locus*; a tight horizontal sequence in
C against magnitude); galaxies lie above it. The locus and its scatter are measured on bright,
isolated, unsaturated sources of the same frame (with a plane fit across the frame when there
are enough stars, for a PSF that varies over the field), and a source is called a galaxy when
it lies above the locus by more than a noise-aware margin: ``max(min_offset, k *
sqrt(sigma_locus**2 + sigma_C**2))``, where ``sigma_C`` propagates the aperture flux errors
(sky, confusion and the source's own photons) and ``min_offset`` defaults to SDSS's 0.145, and
only when its signal-to-noise ratio is at least ``min_snr``. This is the aperture version of
the SExtractor/HSC "extendedness" cuts (e.g. Bosch et al. 2018, PASJ 70, S5).

Crowding (e.g. the globular cluster M2 in field 2583-2-136): stars blended with their
neighbours and with the unresolved light of fainter stars look extended, so a source is not
called a galaxy when it is *crowded*: the density of significant peaks of the filtered image
around it exceeds ``crowd_density`` per arcmin^2 (about six times a high-latitude field at
this depth), or the background noise exceeds what the sky alone would give by
``crowd_noise_excess`` (confusion noise). Nor when it is saturated (fpM SATUR), in the halo of
a saturated or very bright star, bright and compact enough to be a saturated star whose mask
is missing, next to a much brighter source, or at the frame edge. Those sources keep their
measurements and ``star_galaxy_score``; only ``is_galaxy`` is withheld, and ``flags`` says
why.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from ssald_desktop.core.errors import InvalidQueryError, RemoteError, SsaldError
from ssald_desktop.core.frames import SDSS_PIXEL_SCALE, BandFrame, FieldId, FrameSet

#: Zero point of SDSS nanomaggies: ``m = 22.5 - 2.5 log10(flux / nmgy)`` (AB, asinh-free).
NMGY_ZEROPOINT = 22.5

#: FWHM (arcsec) used when psField is absent and the frame has too few stars to measure it.
DEFAULT_FWHM_ARCSEC = 1.4

#: SDSS photometric CCD gains (electrons per DN) by band and camcol, from the SDSS ``frame``
#: data model (u camcol 2 changed to 1.825 after run 1100). Used only for the Poisson part of
#: the flux errors, so a field-to-field spread of a few percent does not matter.
SDSS_GAIN: dict[str, tuple[float, ...]] = {
    "u": (1.62, 1.825, 1.59, 1.6, 1.47, 2.17),
    "g": (3.32, 3.855, 3.845, 3.995, 4.05, 4.035),
    "r": (4.71, 4.6, 4.72, 4.76, 4.725, 4.895),
    "i": (5.165, 6.565, 4.86, 4.885, 4.64, 4.76),
    "z": (4.745, 5.155, 4.885, 4.775, 3.48, 4.69),
}

#: SDSS's own star/galaxy cut, psfMag - cModelMag (Stoughton et al. 2002); used as the
#: smallest concentration excess over the stellar locus that can make a galaxy.
SDSS_EXTENDED_CUT = 0.145

#: Raw counts (DN, sky included) at which an SDSS CCD pixel saturates (photoField's
#: SATURATION_LEVEL is 50,000-63,000 DN depending on the chip).
SATURATION_DN = 50_000.0

#: A source is *bright* when a point source of its flux would peak above this fraction of
#: SATURATION_DN: photo interpolates over saturated pixels, so a saturated star loses flux
#: and looks fainter (and more extended) than it is.
BRIGHT_FRACTION = 0.4

#: Flag bits of the ``flags`` column.
FLAG_SATURATED = 1  # a saturated pixel (fpM SATUR) in the segment
FLAG_MASKED = 2  # more than 5 % of the segment's pixels are masked
FLAG_NEAR_SATURATED = 4  # within the halo of a saturated or bright star
FLAG_EDGE = 8  # the outer aperture leaves the frame
FLAG_DEBLENDED = 16  # one of several children of one detection
FLAG_CROWDED = 32  # dense peaks around it, or confusion noise from unresolved stars
FLAG_LOW_SNR = 64  # signal-to-noise below min_snr: too faint to classify
FLAG_BRIGHT_NEIGHBOUR = 128  # a much brighter source inside the outer aperture
FLAG_NOT_DEBLENDED = 256  # a detection too large to deblend (left whole)
FLAG_BRIGHT = 512  # so bright that a point source would saturate (compact ones are vetoed)

FLAG_NAMES: dict[int, str] = {
    FLAG_SATURATED: "saturated",
    FLAG_MASKED: "masked",
    FLAG_NEAR_SATURATED: "near_saturated",
    FLAG_EDGE: "edge",
    FLAG_DEBLENDED: "deblended",
    FLAG_CROWDED: "crowded",
    FLAG_LOW_SNR: "low_snr",
    FLAG_BRIGHT_NEIGHBOUR: "bright_neighbour",
    FLAG_NOT_DEBLENDED: "not_deblended",
    FLAG_BRIGHT: "bright",
}

#: Flags that keep a source from being called a galaxy (deblended children still can be).
_VETO_FLAGS = (
    FLAG_SATURATED
    | FLAG_MASKED
    | FLAG_NEAR_SATURATED
    | FLAG_EDGE
    | FLAG_CROWDED
    | FLAG_LOW_SNR
    | FLAG_BRIGHT_NEIGHBOUR
)


# ---------------------------------------------------------------------------------------------
# offline detection
# ---------------------------------------------------------------------------------------------


def flux_to_mag(flux: Any) -> np.ndarray:
    """AB magnitude of a flux in nanomaggies, ``22.5 - 2.5 log10(flux)``; NaN where flux <= 0."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, NMGY_ZEROPOINT - 2.5 * np.log10(flux), np.nan)


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in one value of the ``flags`` column."""
    return [name for bit, name in FLAG_NAMES.items() if int(flags) & bit]


def galaxies(table: Table) -> Table:
    """The rows of a :func:`detect_galaxies` or :func:`query_galaxies` table that are galaxies."""
    if "is_galaxy" not in table.colnames:
        raise SsaldError("this table has no is_galaxy column: not a source table")
    return table[np.asarray(table["is_galaxy"], dtype=bool)]


def _robust_std(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _shortest_interval_centre(values: np.ndarray, fraction: float) -> float:
    """Centre of the shortest interval that holds ``fraction`` of the values (a mode estimate)."""
    v = np.sort(values[np.isfinite(values)])
    n = v.size
    k = max(2, int(math.ceil(fraction * n)))
    if n <= k:
        return float(np.median(v))
    widths = v[k - 1 :] - v[: n - k + 1]
    i = int(np.argmin(widths))
    return float(np.median(v[i : i + k]))


def _stellar_locus(
    conc: np.ndarray, x: np.ndarray, y: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, tuple[float, float, float]]:
    """Measure the stellar locus in concentration on the reference sources.

    Stars form the lowest tight clump of the concentration distribution of bright sources:
    its mode is found with a shortest-interval estimator, the clump is iteratively clipped,
    and, with 30 or more stars, a plane ``c0 + cx * x + cy * y`` is fitted to follow a PSF
    that changes across the frame.

    Returns
    -------
    locus : ndarray
        The locus concentration at every source's position.
    sigma : float
        Robust scatter of the stars about the locus.
    stars : ndarray of bool
        The reference sources that define it.
    plane : tuple of float
        ``(c0, cx, cy)`` with x and y in pixels of the measured band.
    """
    ok = reference & np.isfinite(conc)
    c = conc[ok]
    if c.size < 5:
        return np.full(conc.shape, np.nan), float("nan"), ok, (np.nan, 0.0, 0.0)
    # The stars are the densest low-concentration clump; galaxies spread above it.
    centre = _shortest_interval_centre(c, 0.3)
    below = c[c <= centre]
    centre = _shortest_interval_centre(c[c <= centre + 3 * max(_robust_std(below), 0.02)], 0.5)
    sigma = max(_robust_std(c[np.abs(c - centre) < 0.15]), 0.01)
    plane = (centre, 0.0, 0.0)
    star = ok & (np.abs(conc - centre) < 3 * sigma)
    for _ in range(5):
        xs, ys, cs = x[star], y[star], conc[star]
        if cs.size >= 30:
            a = np.column_stack([np.ones_like(xs), xs, ys])
            coef, *_ = np.linalg.lstsq(a, cs, rcond=None)
            plane = (float(coef[0]), float(coef[1]), float(coef[2]))
        else:
            plane = (float(np.median(cs)), 0.0, 0.0)
        model = plane[0] + plane[1] * x + plane[2] * y
        resid = conc - model
        sigma = max(_robust_std(resid[star]), 0.01)
        new = ok & (np.abs(resid) < 3 * sigma)
        if np.array_equal(new, star) or new.sum() < 5:
            break
        star = new
    locus = plane[0] + plane[1] * x + plane[2] * y
    return locus, float(sigma), star, plane


def _measure_fwhm_pixels(
    r_half: np.ndarray, ellipticity: np.ndarray, snr: np.ndarray, usable: np.ndarray
) -> tuple[float, int]:
    """PSF FWHM (pixels) as twice the half-light radius of the frame's stars.

    For a Gaussian the half-light radius is exactly half the FWHM; with the wings of a real
    SDSS PSF, twice the half-light radius is close to psField's effective width (checked on
    field 2583-2-136: 1.00 against 1.05 arcsec). The stars are the tight clump of the smallest
    half-light radii among bright, round, unflagged sources.
    """
    ok = usable & np.isfinite(r_half) & (snr > 30) & (ellipticity < 0.2) & (r_half > 0.5)
    if ok.sum() < 5:
        return float("nan"), int(ok.sum())
    v = r_half[ok]
    mode = _shortest_interval_centre(v[v <= np.median(v)], 0.5)
    stars = v[np.abs(v - mode) < 0.1 * mode]
    if stars.size < 5:
        return float("nan"), int(stars.size)
    return float(2.0 * np.median(stars)), int(stars.size)


def _peak_density(
    conv: np.ndarray,
    noise: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius_px: float,
    pixscale: float,
    nsigma: float = 5.0,
) -> np.ndarray:
    """Local maxima of the filtered image per square arcmin within ``radius_px`` of each source.

    A local maximum counts when it stands ``nsigma`` times the expected noise of the filtered
    image above the background. Unlike a count of detections, it does not depend on the
    adaptive detection threshold (which rises in a crowded field and hides its stars), nor on
    the segmentation (which merges a cluster core into one blob).
    """
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    if x.size == 0:
        return np.zeros(0)
    peaks = (conv == ndi.maximum_filter(conv, size=5, mode="nearest")) & (conv > nsigma * noise)
    py, px = np.nonzero(peaks)
    area = math.pi * (radius_px * pixscale / 60.0) ** 2
    if px.size == 0:
        return np.zeros(x.shape)
    tree = cKDTree(np.column_stack([px, py]))
    counts = tree.query_ball_point(np.column_stack([x, y]), r=radius_px, return_length=True)
    return np.asarray(counts, dtype=float) / area


def _petrosian_radius(
    data: np.ndarray,
    segm: np.ndarray,
    label: int,
    x: float,
    y: float,
    rmax: float,
    eta: float = 0.2,
) -> float:
    """Petrosian radius (pixels) from the azimuthally averaged profile, SDSS style.

    The Petrosian ratio ``R_P(r)`` is the mean surface brightness in the annulus
    ``0.8 r .. 1.25 r`` over the mean surface brightness inside ``r``; the Petrosian radius
    is where it falls to ``eta = 0.2`` (Petrosian 1976, ApJ 209, L1; Blanton et al. 2001, AJ
    121, 2358). Pixels of other sources are left out.
    """
    rows, cols = data.shape
    r_cut = 1.25 * rmax + 1.0
    x0, x1 = max(int(x - r_cut), 0), min(int(x + r_cut) + 2, cols)
    y0, y1 = max(int(y - r_cut), 0), min(int(y + r_cut) + 2, rows)
    seg = segm[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    rr = np.hypot(xx - x, yy - y)
    good = ((seg == 0) | (seg == label)) & (rr < r_cut)
    step = 0.25  # radial bins of a quarter pixel; cumulative sums give F(<r) and A(<r)
    nb = int(math.ceil(r_cut / step))
    idx = (rr[good] / step).astype(int)
    cflux = np.cumsum(np.bincount(idx, weights=data[y0:y1, x0:x1][good], minlength=nb)[:nb])
    carea = np.cumsum(np.bincount(idx, minlength=nb)[:nb]).astype(float)

    def within(r: float) -> tuple[float, float]:
        k = min(max(int(round(r / step)) - 1, 0), nb - 1)
        return float(cflux[k]), float(carea[k])

    for r in np.arange(1.0, rmax + 1e-9, step):
        f_in, a_in = within(r)
        f_lo, a_lo = within(0.8 * r)
        f_hi, a_hi = within(1.25 * r)
        if a_in <= 0 or f_in <= 0 or a_hi <= a_lo:
            continue
        if (f_hi - f_lo) / (a_hi - a_lo) < eta * f_in / a_in:
            return float(r)
    return float("nan")


def _band_gain(frame: BandFrame, band: str) -> float:
    camcol = frame.field_id.camcol if frame.field_id is not None else 3
    return SDSS_GAIN.get(band, SDSS_GAIN["r"])[camcol - 1]


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SsaldError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise SsaldError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _expected_noise(
    frame: BandFrame, band: str, background: np.ndarray, sky_dn: np.ndarray | None
) -> np.ndarray | None:
    """Noise per pixel (nanomaggies) expected from the sky and the smooth background alone.

    ``sqrt(counts / gain + dark_variance) * calib`` with the frame's sky (HDU2) plus the
    smooth light of the background map, following the SDSS frame recipe. None when the
    frame has no calibration vector or sky grid (then the quiet part of the frame is used).
    """
    if frame.calib is None or sky_dn is None:
        return None
    calib = np.asarray(frame.calib, dtype=float)[np.newaxis, :]
    counts = sky_dn + np.clip(background, 0, None) / calib
    gain = _band_gain(frame, band)
    expected = np.sqrt(np.clip(counts, 0, None) / gain + 1.0) * calib
    if not np.all(np.isfinite(expected)) or np.any(expected <= 0):
        return None
    return expected


def _near_saturation(satur: np.ndarray, x: np.ndarray, y: np.ndarray, fwhm_px: float) -> np.ndarray:
    """True for positions in the halo of a saturated star.

    Each saturated region (fpM SATUR) gets a disc of radius ``3 sqrt(area / pi) + 4 FWHM``
    (its bleed trail, diffraction spikes and scattered light), painted on a map.
    """
    from scipy import ndimage as ndi

    rows, cols = satur.shape
    lab, n = ndi.label(satur)
    halo = np.zeros(satur.shape, dtype=bool)
    if n == 0:
        return np.zeros(x.shape, dtype=bool)
    areas = np.bincount(lab.ravel())[1:]
    for sl, area in zip(ndi.find_objects(lab), areas, strict=True):
        reach = 3.0 * math.sqrt(area / math.pi) + 4.0 * fwhm_px
        cy = 0.5 * (sl[0].start + sl[0].stop - 1)
        cx = 0.5 * (sl[1].start + sl[1].stop - 1)
        ry = reach + 0.5 * (sl[0].stop - sl[0].start)
        rx = reach + 0.5 * (sl[1].stop - sl[1].start)
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, rows)
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, cols)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        halo[y0:y1, x0:x1] |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    xi = np.clip(np.round(x).astype(int), 0, cols - 1)
    yi = np.clip(np.round(y).astype(int), 0, rows - 1)
    return halo[yi, xi]


def _in_halo(x: np.ndarray, y: np.ndarray, centres: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """True for sources within ``reach`` of one of the ``centres`` sources (not themselves)."""
    out = np.zeros(x.shape, dtype=bool)
    for i in np.flatnonzero(centres):
        near = np.hypot(x - x[i], y - y[i]) < reach[i]
        near[i] = False
        out |= near
    return out


def _bright_neighbour(x: np.ndarray, y: np.ndarray, flux: np.ndarray, radius: float) -> np.ndarray:
    """True where a source at least 4 times brighter lies within ``radius`` pixels.

    Such a faint source is often a fragment of the bright one's wings or spikes, and its
    outer aperture is dominated by the bright one's light.
    """
    from scipy.spatial import cKDTree

    out = np.zeros(x.shape, dtype=bool)
    if x.size < 2:
        return out
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(r=radius, output_type="ndarray")
    if pairs.size:
        fi, fj = flux[pairs[:, 0]], flux[pairs[:, 1]]
        out[pairs[:, 0][fj > 4 * fi]] = True
        out[pairs[:, 1][fi > 4 * fj]] = True
    return out


def detect_sources_iter(
    frame_set: FrameSet,
    band: str = "r",
    *,
    nsigma: float = 4.0,
    npixels: int = 10,
    deblend: bool = True,
    n_levels: int = 16,
    contrast: float = 0.005,
    deblend_npixels: int = 10,
    max_deblend_area: int = 10_000,
    box_size: int = 64,
    fwhm_arcsec: float | None = None,
    min_snr: float = 15.0,
    n_sigma_galaxy: float = 3.0,
    min_offset: float = SDSS_EXTENDED_CUT,
    crowd_noise_excess: float = 1.2,
    crowd_radius_arcsec: float = 30.0,
    crowd_density: float = 30.0,
    petrosian: bool = True,
) -> Generator[tuple[int, int, str], None, Table]:
    """Detect, measure and classify the sources of one band; a generator that reports progress.

    Yields ``(step, n_steps, message)`` before each stage and returns the source table (the
    ``value`` of ``StopIteration``), so a GUI worker (superqt ``thread_worker``) can show
    progress and receive the table through its ``returned`` signal. :func:`detect_galaxies`
    runs it to the end; see there for the parameters and the table.
    """
    t_start = time.perf_counter()
    n_steps = 6
    if band not in frame_set:
        raise SsaldError(
            f"band {band!r} is not in this frame set (has {', '.join(frame_set.bands)})"
        )
    nsigma = _check_positive("nsigma", nsigma)
    min_snr = _check_positive("min_snr", min_snr)
    if isinstance(npixels, bool) or not isinstance(npixels, numbers.Integral) or npixels < 1:
        raise SsaldError(f"npixels must be a positive integer, got {npixels!r}")

    from astropy.convolution import convolve
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import (
        SourceCatalog,
        deblend_sources,
        detect_sources,
        make_2dgaussian_kernel,
    )
    from photutils.utils import calc_total_error
    from scipy import ndimage as ndi

    timings: dict[str, float] = {}
    t_stage = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t_stage
        now = time.perf_counter()
        timings[name] = round(now - t_stage, 3)
        t_stage = now

    frame = frame_set[band]
    pixscale = frame_set.pixel_scale_arcsec or SDSS_PIXEL_SCALE
    data = np.asarray(frame.data, dtype=np.float64)
    finite = np.isfinite(data)
    mask = np.asarray(frame.mask, dtype=bool) | ~finite
    data = np.where(finite, data, 0.0)
    rows, cols = data.shape
    satur = frame.mask_planes.get("SATUR")

    # PSF width: an explicit value, else psField, else measured below on the stars.
    if fwhm_arcsec is not None:
        fwhm_source = "given"
        fwhm_arcsec = _check_positive("fwhm_arcsec", fwhm_arcsec)
    elif band in frame_set.psf and np.isfinite(frame_set.psf[band].fwhm_arcsec):
        fwhm_source = "psField"
        fwhm_arcsec = float(frame_set.psf[band].fwhm_arcsec)
    else:
        fwhm_source = "default"
        fwhm_arcsec = DEFAULT_FWHM_ARCSEC
    fwhm_px = fwhm_arcsec / pixscale

    # 1. Background and noise (sigma-clipped medians on a mesh, bad pixels left out).
    yield (0, n_steps, "background")
    box = int(min(box_size, rows // 4, cols // 4)) or 16
    sigma_clip = SigmaClip(sigma=3.0, maxiters=10)

    def background(image: np.ndarray) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Background2D(
                image,
                (box, box),
                mask=mask,
                filter_size=(3, 3),
                sigma_clip=sigma_clip,
                bkg_estimator=MedianBackground(),
            )

    bkg = background(data)
    sub = data - bkg.background
    rms = np.asarray(bkg.background_rms, dtype=float)
    # Confusion: the measured noise over what the sky and smooth light alone would give.
    sky_dn = frame.sky_counts().astype(float) if frame.sky_grid is not None else None
    expected = _expected_noise(frame, band, np.asarray(bkg.background, dtype=float), sky_dn)
    if expected is None:
        expected = np.full(rms.shape, float(np.nanpercentile(rms, 10)))
    noise_excess_map = rms / expected
    lap("background")

    # 2. Matched-filter detection: convolve with the PSF and threshold in units of the
    #    filtered image's own noise (as SDSS photo and SExtractor do).
    yield (1, n_steps, "detection")
    ksize = int(2 * round(1.5 * fwhm_px) + 1)
    kernel = make_2dgaussian_kernel(fwhm_px, size=max(ksize, 3))
    conv = convolve(sub, kernel, normalize_kernel=True, boundary="extend")
    conv_rms = np.asarray(background(conv).background_rms, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoDetectionsWarning: an empty table says it
        segm0 = detect_sources(conv, nsigma * conv_rms, int(npixels))
    lap("detection")
    if segm0 is None:
        return _empty_table(frame_set, band, fwhm_arcsec, fwhm_source)

    # 3. Deblending (multi-threshold + watershed). A detection larger than
    #    max_deblend_area (the merged core of a star cluster) is left whole: its watershed
    #    would take minutes and no split of it would be trustworthy.
    yield (2, n_steps, f"deblending {segm0.n_labels} detections")
    segm = segm0
    deblend_used = False
    areas0 = np.asarray(segm0.areas)
    too_big = np.asarray(segm0.labels)[areas0 > max_deblend_area]
    if deblend:
        try:
            import skimage  # noqa: F401  (photutils' deblender needs scikit-image)
        except ImportError:
            warnings.warn("scikit-image is not installed: sources are not deblended", stacklevel=2)
        else:
            to_split = np.asarray(segm0.labels)[areas0 <= max_deblend_area]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                segm = deblend_sources(
                    conv,
                    segm0,
                    int(deblend_npixels),
                    labels=to_split,
                    n_levels=n_levels,
                    contrast=contrast,
                    progress_bar=False,
                )
            deblend_used = True
    labels = np.asarray(segm.labels)
    seg = segm.data
    parent = np.asarray(ndi.maximum(segm0.data, labels=seg, index=labels), dtype=int)
    n_children = np.bincount(parent, minlength=int(parent.max()) + 1)[parent]
    lap("deblending")

    # 4. Measurements. Flux errors include the sources' Poisson noise (gain / calib).
    yield (3, n_steps, f"measuring {labels.size} sources")
    if frame.calib is not None:
        eff_gain = _band_gain(frame, band) / np.broadcast_to(
            np.asarray(frame.calib, dtype=float)[np.newaxis, :], data.shape
        )
        error = calc_total_error(sub, rms, eff_gain)
        poisson_var_per_nmgy: Any = 1.0 / eff_gain
    else:
        error = rms
        poisson_var_per_nmgy = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = SourceCatalog(
            sub,
            segm,
            convolved_data=conv,
            error=error,
            mask=mask,
            wcs=frame.wcs,
            aperture_mask_method="correct",
        )
        x = np.asarray(cat.x_centroid, dtype=float)
        y = np.asarray(cat.y_centroid, dtype=float)
        # A source whose pixels are all masked has no centroid: use its box centre.
        no_centroid = ~(np.isfinite(x) & np.isfinite(y))
        if no_centroid.any():
            bbox = segm.bbox
            for i in np.flatnonzero(no_centroid):
                x[i] = 0.5 * (bbox[i].ixmin + bbox[i].ixmax - 1)
                y[i] = 0.5 * (bbox[i].iymin + bbox[i].iymax - 1)
        kron_flux = np.asarray(cat.kron_flux, dtype=float)
        kron_err = np.asarray(cat.kron_flux_err, dtype=float)
        seg_flux = np.asarray(cat.segment_flux, dtype=float)
        seg_err = np.asarray(cat.segment_flux_err, dtype=float)
        r_half = np.asarray(cat.flux_radius(0.5), dtype=float)
        kron_radius = np.asarray(cat.kron_radius, dtype=float)
        a_ax = np.asarray(cat.semimajor_axis.value, dtype=float)
        b_ax = np.asarray(cat.semiminor_axis.value, dtype=float)
        ellipticity = np.asarray(cat.ellipticity.value, dtype=float)
        orientation = np.asarray(cat.orientation.value, dtype=float)
        area = np.asarray(cat.area.value, dtype=float)
        peak = np.asarray(cat.max_value, dtype=float)
    use_kron = np.isfinite(kron_flux) & (kron_flux > 0)
    flux = np.where(use_kron, kron_flux, seg_flux)
    flux_err = np.where(use_kron, kron_err, seg_err)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, np.nan)

    # 5. Flags: saturation, masks, edges, deblending, crowding.
    flags = np.zeros(labels.size, dtype=np.int32)
    xi = np.clip(np.round(x).astype(int), 0, cols - 1)
    yi = np.clip(np.round(y).astype(int), 0, rows - 1)
    if satur is not None and satur.any():
        sat_in = np.asarray(ndi.maximum(satur, labels=seg, index=labels), dtype=bool)
        flags[sat_in] |= FLAG_SATURATED
        flags[_near_saturation(satur, x, y, fwhm_px) & ~sat_in] |= FLAG_NEAR_SATURATED
    masked_frac = np.asarray(ndi.mean(mask, labels=seg, index=labels), dtype=float)
    flags[masked_frac > 0.05] |= FLAG_MASKED
    flags[n_children > 1] |= FLAG_DEBLENDED
    flags[np.isin(parent, too_big)] |= FLAG_NOT_DEBLENDED
    noise_excess = noise_excess_map[yi, xi]
    # Expected noise of the filtered image: sky, smooth light and the sources' own photons.
    conv_noise = np.sqrt(expected**2 + np.clip(conv, 0, None) * poisson_var_per_nmgy)
    conv_noise *= float(np.sqrt(np.sum(kernel.array**2)))
    density = _peak_density(conv, conv_noise, x, y, crowd_radius_arcsec / pixscale, pixscale)
    crowded = (noise_excess > crowd_noise_excess) | (density > crowd_density)
    flags[crowded] |= FLAG_CROWDED
    flags[~(snr >= min_snr)] |= FLAG_LOW_SNR

    if fwhm_source == "default":
        usable = (flags & (_VETO_FLAGS & ~FLAG_LOW_SNR | FLAG_DEBLENDED)) == 0
        measured, n_fwhm = _measure_fwhm_pixels(r_half, ellipticity, snr, usable)
        if np.isfinite(measured):
            fwhm_px = measured
            fwhm_arcsec = measured * pixscale
            fwhm_source = "measured"

    r_in = max(0.75 * fwhm_px, 1.5)
    r_out = 3.0 * fwhm_px
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f_in, e_in = (np.asarray(v, dtype=float) for v in cat.circular_photometry(r_in))
        f_out, e_out = (np.asarray(v, dtype=float) for v in cat.circular_photometry(r_out))
        sky = frame.wcs.pixel_to_world(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok_ap = (f_in > 0) & (f_out > 0)
        conc = np.where(ok_ap, -2.5 * np.log10(f_in / f_out), np.nan)
        conc_err = np.where(
            ok_ap, 1.0857 * np.sqrt((e_in / f_in) ** 2 + (e_out / f_out) ** 2), np.nan
        )
    edge = (x < r_out) | (y < r_out) | (x > cols - 1 - r_out) | (y > rows - 1 - r_out)
    flags[edge] |= FLAG_EDGE
    flags[_bright_neighbour(x, y, flux, r_out + fwhm_px)] |= FLAG_BRIGHT_NEIGHBOUR
    lap("measurement")

    # 6. Star/galaxy separation against the stellar locus of this frame.
    yield (4, n_steps, "star/galaxy separation")
    clean = (flags & (_VETO_FLAGS | FLAG_DEBLENDED)) == 0
    reference = clean & (snr > max(50.0, 2 * min_snr)) & (ellipticity < 0.3)
    if reference.sum() < 15:
        reference = clean & (snr > min_snr)
    locus, sigma_locus, locus_stars, plane = _stellar_locus(conc, x, y, reference)
    n_locus = int(np.count_nonzero(locus_stars))
    # Saturation without trusting the mask: a source whose flux would put a point source's
    # peak above BRIGHT_FRACTION * SATURATION_DN. Its core may be interpolated, which mimics
    # an extended profile, so a compact one is never called a galaxy, and its halo and
    # diffraction spikes are treated like a saturated star's.
    bright_compact = np.zeros(labels.size, dtype=bool)
    if frame.calib is not None and n_locus >= 3:
        with np.errstate(divide="ignore", invalid="ignore"):
            peak_fraction = float(np.nanmedian(peak[locus_stars] / flux[locus_stars]))
        calib_x = np.asarray(frame.calib, dtype=float)[xi]
        sky_at = sky_dn[yi, xi] if sky_dn is not None else 0.0
        flux_bright = (BRIGHT_FRACTION * SATURATION_DN - sky_at) * calib_x / peak_fraction
        bright = flux > flux_bright
        flags[bright] |= FLAG_BRIGHT
        bright_compact = bright & ~(r_half > 2.5 * fwhm_px)
        if bright_compact.any():
            reach = 4.0 * fwhm_px + 40.0 * np.sqrt(flux / flux_bright)
            flags[_in_halo(x, y, bright_compact, reach)] |= FLAG_NEAR_SATURATED
    with np.errstate(invalid="ignore"):
        sigma_tot = np.sqrt(sigma_locus**2 + conc_err**2)
        offset = conc - locus
        score = offset / sigma_tot
        margin = np.maximum(min_offset, n_sigma_galaxy * sigma_tot)
        extended = offset > margin
    classified = np.isfinite(score) & (snr >= min_snr)
    is_galaxy = extended & classified & ((flags & _VETO_FLAGS) == 0) & ~bright_compact
    is_star = ~extended & classified
    lap("classification")

    yield (5, n_steps, "sizes")
    r_petro = np.full(labels.size, np.nan)
    if petrosian:
        todo = np.flatnonzero(
            (snr >= min_snr) & ((flags & (FLAG_SATURATED | FLAG_EDGE | FLAG_CROWDED)) == 0)
        )
        rmax = max(12.0 * fwhm_px, 30.0)
        for i in todo:
            r_petro[i] = _petrosian_radius(sub, seg, int(labels[i]), x[i], y[i], rmax)
    lap("petrosian")

    mag = flux_to_mag(flux)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag_err = np.where(flux > 0, 1.0857 * flux_err / flux, np.nan)

    table = Table()
    table["id"] = labels.astype(np.int64)
    table["ra"] = np.asarray(sky.ra.deg, dtype=float)
    table["dec"] = np.asarray(sky.dec.deg, dtype=float)
    table["x"] = x
    table["y"] = y
    table[f"mag_{band}"] = mag
    table[f"mag_{band}_err"] = mag_err
    table["flux"] = flux
    table["flux_err"] = flux_err
    table["snr"] = snr
    table["r_half_arcsec"] = r_half * pixscale
    table["r_kron_arcsec"] = kron_radius * np.sqrt(np.clip(a_ax * b_ax, 0, None)) * pixscale
    table["r_petro_arcsec"] = r_petro * pixscale
    table["ellipticity"] = ellipticity
    table["orientation"] = orientation
    table["area_pix"] = area
    table["peak"] = peak
    table["concentration"] = conc
    table["concentration_err"] = conc_err
    table["locus_offset"] = offset
    table["star_galaxy_score"] = score
    table["is_galaxy"] = np.asarray(is_galaxy, dtype=bool)
    table["is_star"] = np.asarray(is_star, dtype=bool)
    table["flags"] = flags
    table["saturated"] = (flags & FLAG_SATURATED) != 0
    table["near_saturated"] = (flags & FLAG_NEAR_SATURATED) != 0
    table["masked_fraction"] = masked_frac
    table["near_edge"] = (flags & FLAG_EDGE) != 0
    table["deblended"] = (flags & FLAG_DEBLENDED) != 0
    table["crowded"] = (flags & FLAG_CROWDED) != 0
    table["density_arcmin2"] = density
    table["noise_excess"] = noise_excess
    _describe_columns(table, band)
    n_gal = int(np.count_nonzero(is_galaxy))
    table.meta.update(
        {
            "field": str(frame_set.field_id) if frame_set.field_id is not None else "",
            "band": band,
            "pixel_scale_arcsec": pixscale,
            "fwhm_arcsec": float(fwhm_arcsec),
            "fwhm_source": fwhm_source,
            "r_in_pix": float(r_in),
            "r_out_pix": float(r_out),
            "nsigma": nsigma,
            "npixels": int(npixels),
            "deblended": deblend_used,
            "n_detections": int(segm0.n_labels),
            "n_sources": int(labels.size),
            "n_galaxies": n_gal,
            "n_stars": int(np.count_nonzero(is_star)),
            "n_crowded": int(np.count_nonzero(crowded)),
            "locus_c0": plane[0],
            "locus_cx": plane[1],
            "locus_cy": plane[2],
            "locus_sigma": sigma_locus,
            "locus_n_stars": n_locus,
            "min_snr": min_snr,
            "timings_s": timings,
            "elapsed_s": round(time.perf_counter() - t_start, 3),
        }
    )
    yield (n_steps, n_steps, f"{labels.size} sources, {n_gal} galaxies")
    return table


_DESCRIPTIONS = {
    "id": "source label in the segmentation image",
    "ra": "right ascension of the centroid (deg, ICRS, from the band's WCS)",
    "dec": "declination of the centroid (deg, ICRS, from the band's WCS)",
    "x": "centroid column (pixels, 0-based, in the measured band)",
    "y": "centroid row (pixels, 0-based, in the measured band)",
    "flux": "Kron flux (nanomaggies)",
    "flux_err": "Kron flux error (nanomaggies)",
    "snr": "Kron flux signal-to-noise ratio",
    "r_half_arcsec": "circular radius holding half the Kron flux (arcsec)",
    "r_kron_arcsec": "unscaled first-moment Kron radius, circularised (arcsec)",
    "r_petro_arcsec": "Petrosian radius, eta = 0.2 (arcsec); NaN when faint or not reached",
    "ellipticity": "1 - b/a from the second moments",
    "orientation": "position angle of the major axis from the +x axis (deg, counter-clockwise)",
    "area_pix": "segment area (pixels)",
    "peak": "peak of the background-subtracted segment (nanomaggies per pixel)",
    "concentration": "m(r_in) - m(r_out), r_in = 0.75 FWHM, r_out = 3 FWHM",
    "concentration_err": "error of the concentration from the aperture flux errors",
    "locus_offset": "concentration above the stellar locus at this position",
    "star_galaxy_score": "locus_offset in units of its error (< ~3: point-like; > 3: extended)",
    "is_galaxy": "extended beyond the PSF, bright enough and not vetoed by a flag",
    "is_star": "consistent with the PSF and bright enough to tell",
    "flags": "bit mask: 1 saturated, 2 masked, 4 near_saturated, 8 edge, 16 deblended, "
    "32 crowded, 64 low_snr",
    "masked_fraction": "fraction of the segment's pixels that are masked",
    "density_arcmin2": "peaks (5 sigma) per square arcmin within crowd_radius_arcsec",
    "noise_excess": "background noise over the noise the sky alone would give (confusion)",
}


def _describe_columns(table: Table, band: str) -> None:
    for name, text in _DESCRIPTIONS.items():
        if name in table.colnames:
            table[name].description = text
    table[f"mag_{band}"].description = f"{band} AB magnitude, 22.5 - 2.5 log10(flux)"
    table[f"mag_{band}_err"].description = f"{band} magnitude error"
    for name in ("ra", "dec", "orientation"):
        table[name].unit = "deg"
    for name in ("r_half_arcsec", "r_kron_arcsec", "r_petro_arcsec"):
        table[name].unit = "arcsec"
    for name in ("x", "y"):
        table[name].unit = "pix"
    for name in (f"mag_{band}", f"mag_{band}_err", "concentration", "locus_offset"):
        table[name].unit = "mag"


def _empty_table(frame_set: FrameSet, band: str, fwhm: float, source: str) -> Table:
    names = [
        "id", "ra", "dec", "x", "y", f"mag_{band}", f"mag_{band}_err", "flux", "flux_err",
        "snr", "r_half_arcsec", "r_kron_arcsec", "r_petro_arcsec", "ellipticity",
        "orientation", "area_pix", "peak", "concentration", "concentration_err",
        "locus_offset", "star_galaxy_score", "is_galaxy", "is_star", "flags", "saturated",
        "near_saturated", "masked_fraction", "near_edge", "deblended", "crowded",
        "density_arcmin2", "noise_excess",
    ]  # fmt: skip
    dtypes = [int] + [float] * 20 + [bool, bool, np.int32, bool, bool, float, bool, bool, bool]
    dtypes += [float, float]
    table = Table(names=names, dtype=dtypes)
    table.meta.update(
        {
            "field": str(frame_set.field_id) if frame_set.field_id is not None else "",
            "band": band,
            "fwhm_arcsec": fwhm,
            "fwhm_source": source,
            "n_sources": 0,
            "n_galaxies": 0,
            "n_stars": 0,
        }
    )
    return table


def detect_galaxies(
    frame_set: FrameSet,
    band: str = "r",
    *,
    nsigma: float = 4.0,
    npixels: int = 10,
    deblend: bool = True,
    n_levels: int = 16,
    contrast: float = 0.005,
    deblend_npixels: int = 10,
    max_deblend_area: int = 10_000,
    box_size: int = 64,
    fwhm_arcsec: float | None = None,
    min_snr: float = 15.0,
    n_sigma_galaxy: float = 3.0,
    min_offset: float = SDSS_EXTENDED_CUT,
    crowd_noise_excess: float = 1.2,
    crowd_radius_arcsec: float = 30.0,
    crowd_density: float = 30.0,
    petrosian: bool = True,
) -> Table:
    """Detect every source of one band of a field and tell galaxies from stars, offline.

    Method (photutils, after SExtractor): the background and its RMS are sigma-clipped
    medians on a ``box_size`` mesh (``Background2D``, masked pixels left out); the
    background-subtracted image is convolved with a Gaussian of the PSF FWHM (a matched
    filter) and thresholded at ``nsigma`` times the RMS of the *filtered* image with at least
    ``npixels`` connected pixels (``detect_sources``); blended detections are split by
    multi-threshold deblending (``deblend_sources``, ``n_levels``, ``contrast``); every
    source is measured by ``SourceCatalog`` (centroid, Kron flux, half-light radius, moments,
    circular apertures with neighbours' pixels replaced by their mirror image). Stars and
    galaxies are separated by the concentration ``m(0.75 FWHM) - m(3 FWHM)`` against the stellar
    locus of the same frame (see the module docstring; the offline analogue of SDSS's
    ``psfMag - cModelMag > 0.145``).

    Parameters
    ----------
    frame_set : FrameSet
        A field opened with :func:`~ssald_desktop.core.frames.open_frame_set`.
    band : str
        Band to detect and measure in (default r). Positions come from this band's WCS.
    nsigma : float
        Detection threshold in units of the matched-filtered image's noise.
    npixels : int
        Minimum number of connected pixels above the threshold.
    deblend : bool
        Deblend blended detections (needs scikit-image; skipped with a warning without it).
    n_levels, contrast, deblend_npixels : int, float, int
        Deblending levels, the minimum flux fraction and the minimum area of a child.
    max_deblend_area : int
        Detections larger than this (pixels; the merged core of a star cluster) are left
        whole: a watershed of them takes minutes and no split would be trustworthy.
    box_size : int
        Background mesh size in pixels.
    fwhm_arcsec : float, optional
        PSF FWHM. By default psField's when present, else measured on the frame's stars,
        else 1.4 arcsec.
    min_snr : float
        Minimum Kron signal-to-noise ratio to classify a source at all.
    n_sigma_galaxy : float
        A galaxy lies this many standard deviations (locus scatter and the source's own
        concentration error, in quadrature) above the stellar locus...
    min_offset : float
        ...and at least this many magnitudes above it.
    crowd_noise_excess : float
        A source where the background noise is this many times the noise of the sky and
        smooth light alone is *crowded* (confusion from unresolved stars).
    crowd_radius_arcsec, crowd_density : float
        A source with more than ``crowd_density`` significant peaks per square arcmin within
        ``crowd_radius_arcsec`` is *crowded*. Crowded sources are never called galaxies.
    petrosian : bool
        Measure Petrosian radii (uncrowded sources with ``snr >= min_snr`` only).

    Returns
    -------
    astropy.table.Table
        One row per source with ``id, ra, dec, x, y, mag_<band>, mag_<band>_err, flux,
        flux_err, snr, r_half_arcsec, r_kron_arcsec, r_petro_arcsec, ellipticity,
        orientation, area_pix, peak, concentration, concentration_err, locus_offset,
        star_galaxy_score, is_galaxy, is_star, flags, saturated, near_saturated,
        masked_fraction, near_edge, deblended, crowded, density_arcmin2, noise_excess``;
        fluxes in nanomaggies (see ``table[name].description``; :func:`flag_names` decodes
        ``flags``). ``meta`` records the FWHM and its origin (``psField``, ``measured`` or
        ``default``), the stellar locus, the counts and the run time of each stage. Use
        :func:`galaxies` (or ``table[table["is_galaxy"]]``) for the galaxies.

    Raises
    ------
    SsaldError
        The band is not in the frame set, or a parameter is not a positive number.

    References
    ----------
    Bertin & Arnouts 1996, A&AS 117, 393 (SExtractor); Bradley et al., photutils,
    doi:10.5281/zenodo.596036; Stoughton et al. 2002, AJ 123, 485 (SDSS star/galaxy
    separation); Lupton et al. 2001, ASP Conf. 238, 269 (SDSS photo).
    """
    gen = detect_sources_iter(
        frame_set,
        band,
        nsigma=nsigma,
        npixels=npixels,
        deblend=deblend,
        n_levels=n_levels,
        contrast=contrast,
        deblend_npixels=deblend_npixels,
        max_deblend_area=max_deblend_area,
        box_size=box_size,
        fwhm_arcsec=fwhm_arcsec,
        min_snr=min_snr,
        n_sigma_galaxy=n_sigma_galaxy,
        min_offset=min_offset,
        crowd_noise_excess=crowd_noise_excess,
        crowd_radius_arcsec=crowd_radius_arcsec,
        crowd_density=crowd_density,
        petrosian=petrosian,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# ---------------------------------------------------------------------------------------------
# SDSS photoObj (online)
# ---------------------------------------------------------------------------------------------

#: SDSS data release queried by :func:`query_galaxies`.
DATA_RELEASE = 17

#: Largest cone radius accepted by :func:`photoobj_sql` (arcmin).
MAX_RADIUS_ARCMIN = 30.0

#: Largest row limit accepted by :func:`photoobj_sql`.
MAX_ROWS = 100_000

_PHOTO_COLUMNS: tuple[str, ...] = (
    "p.objID",
    "p.ra",
    "p.dec",
    "p.run",
    "p.rerun",
    "p.camcol",
    "p.field",
    "p.type",
    *(f"p.modelMag_{b}" for b in "ugriz"),
    *(f"p.modelMagErr_{b}" for b in "ugriz"),
    *(f"p.petroMag_{b}" for b in "ugriz"),
    "p.petroRad_r",
    "p.petroR50_r",
)


def _as_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidQueryError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise InvalidQueryError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _as_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidQueryError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidQueryError(f"{name} must be finite, got {value!r}")
    if value < lo or value > hi or (lo_open and value <= lo):
        raise InvalidQueryError(f"{name} must be in {lo}..{hi}, got {value!r}")
    return value


def _as_field_id(value: Any) -> FieldId:
    if isinstance(value, FieldId):
        parts: Sequence[Any] = (value.run, value.camcol, value.field)
    elif isinstance(value, str):
        try:
            fid = FieldId.parse(value)
        except (ValueError, TypeError) as exc:
            raise InvalidQueryError(f"not an SDSS field id RUN-CAMCOL-FIELD: {value!r}") from exc
        parts = (fid.run, fid.camcol, fid.field)
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        parts = value
    else:
        raise InvalidQueryError(f"not an SDSS field id: {value!r}")
    run = _as_int("run", parts[0], 1, 999_999)
    camcol = _as_int("camcol", parts[1], 1, 6)
    field = _as_int("field", parts[2], 0, 9_999)
    return FieldId(run, camcol, field)


def _as_coord(coord: Any) -> tuple[float, float]:
    from astropy.coordinates import SkyCoord

    if isinstance(coord, SkyCoord):
        icrs = coord.icrs
        if not icrs.isscalar:
            raise InvalidQueryError("give one sky position, not an array of them")
        ra, dec = icrs.ra.deg, icrs.dec.deg
    elif isinstance(coord, (tuple, list)) and len(coord) == 2:
        ra, dec = coord
    else:
        raise InvalidQueryError(f"not a sky position (SkyCoord or (ra, dec) in deg): {coord!r}")
    ra = _as_float("ra", ra, 0.0, 360.0)
    dec = _as_float("dec", dec, -90.0, 90.0)
    return ra % 360.0, dec


def _as_radius_arcmin(radius: Any) -> float:
    if hasattr(radius, "unit") and hasattr(radius, "to_value"):
        try:
            value = radius.to_value("arcmin")
        except Exception as exc:  # astropy raises UnitConversionError
            raise InvalidQueryError(f"radius must be an angle, got {radius!r}") from exc
        if np.ndim(value) != 0:
            raise InvalidQueryError("radius must be a single angle")
        value = float(value)
    else:
        value = _as_float("radius (arcsec)", radius, 0.0, MAX_RADIUS_ARCMIN * 60, lo_open=True)
        value /= 60.0
    return _as_float("radius (arcmin)", value, 0.0, MAX_RADIUS_ARCMIN, lo_open=True)


def photoobj_sql(
    field_id: FieldId | str | Sequence[int] | None = None,
    coord: Any = None,
    radius: Any = None,
    *,
    galaxies_only: bool = True,
    limit: int = 10_000,
) -> str:
    """SQL for the SDSS photoObj objects of a field or a cone, with their spectroscopic z.

    Only validated numbers are written into the query: the run, camcol and field as integers
    (through :class:`~ssald_desktop.core.frames.FieldId`), RA, Dec and radius as finite floats
    in range, formatted by Python; nothing the user typed is pasted in.

    Parameters
    ----------
    field_id : FieldId, str or (run, camcol, field), optional
        An imaging field: all its photoObj detections (``PhotoObj``, primary or not).
    coord : SkyCoord or (ra, dec) in degrees, optional
        Centre of a cone (``dbo.fGetNearbyObjEq`` on ``PhotoPrimary``). Exactly one of
        ``field_id`` and ``coord`` must be given.
    radius : Quantity (angle) or float (arcsec), optional
        Cone radius, above 0 and at most 30 arcmin (default 1 arcmin).
    galaxies_only : bool
        Keep only ``type = 3`` (GALAXY).
    limit : int
        ``TOP`` row limit, 1..100000.

    Returns
    -------
    str
        The SQL statement (SkyServer T-SQL). The spectroscopic columns come from a LEFT JOIN
        on ``SpecObj.bestObjID``; objects without a spectrum get ``specObjID = 0`` and
        ``z = -9999`` so the CSV never carries NULLs.

    Raises
    ------
    InvalidQueryError
        A value that is not a finite number in range, or a wrong combination of arguments.
    """
    if (field_id is None) == (coord is None):
        raise InvalidQueryError("give exactly one of a field id or a sky position")
    limit = _as_int("limit", limit, 1, MAX_ROWS)
    if not isinstance(galaxies_only, bool):
        raise InvalidQueryError(f"galaxies_only must be True or False, got {galaxies_only!r}")
    columns = ",\n  ".join(
        [
            *_PHOTO_COLUMNS,
            "COALESCE(s.specObjID, 0) AS specObjID",
            "COALESCE(s.z, -9999) AS z",
            "COALESCE(s.zErr, -9999) AS zErr",
            "COALESCE(s.zWarning, -1) AS zWarning",
            "COALESCE(s.class, '') AS class",
        ]
    )
    where: list[str] = []
    if field_id is not None:
        if radius is not None:
            raise InvalidQueryError("a radius goes with a sky position, not with a field id")
        fid = _as_field_id(field_id)
        source = "PhotoObj AS p"
        where += [f"p.run = {fid.run:d}", f"p.camcol = {fid.camcol:d}", f"p.field = {fid.field:d}"]
        order = "p.objID"
    else:
        ra, dec = _as_coord(coord)
        r_arcmin = 1.0 if radius is None else _as_radius_arcmin(radius)
        source = (
            f"dbo.fGetNearbyObjEq({ra:.8f}, {dec:.8f}, {r_arcmin:.6f}) AS n\n"
            "JOIN PhotoPrimary AS p ON p.objID = n.objID"
        )
        order = "n.distance"
    if galaxies_only:
        where.append("p.type = 3")
    sql = f"SELECT TOP {limit:d}\n  {columns}\nFROM {source}\n"
    sql += "LEFT JOIN SpecObj AS s ON s.bestObjID = p.objID\n"
    if where:
        sql += "WHERE " + "\n  AND ".join(where) + "\n"
    sql += f"ORDER BY {order}"
    return sql


def query_galaxies(
    field_id: FieldId | str | Sequence[int] | None = None,
    coord: Any = None,
    radius: Any = None,
    timeout: float = 15,
    *,
    galaxies_only: bool = True,
    limit: int = 10_000,
    cache: bool = True,
) -> Table:
    """Galaxies of an SDSS field or cone from the SkyServer photoObj catalogue (DR17).

    Parameters
    ----------
    field_id, coord, radius, galaxies_only, limit
        As in :func:`photoobj_sql`.
    timeout : float
        Seconds to wait for the server (also set as ``SDSS.TIMEOUT``).
    cache : bool
        Let astroquery cache the answer.

    Returns
    -------
    astropy.table.Table
        ``objID, ra, dec, run, rerun, camcol, field, type, modelMag_[ugriz],
        modelMagErr_[ugriz], petroMag_[ugriz], petroRad_r, petroR50_r`` (arcsec), ``specObjID``,
        ``z``, ``zErr``, ``zWarning``, ``class`` (masked where there is no spectrum), and
        ``has_spec`` and ``is_galaxy`` (``type == 3``). Empty (with these columns) when nothing
        matched.

    Raises
    ------
    InvalidQueryError
        Bad arguments (see :func:`photoobj_sql`), before anything is sent.
    RemoteError
        The server could not be reached, timed out, or answered with an error.
    """
    sql = photoobj_sql(field_id, coord, radius, galaxies_only=galaxies_only, limit=limit)
    timeout = _as_float("timeout", timeout, 0.0, 3600.0, lo_open=True)
    try:
        from astroquery.sdss import SDSS
    except ImportError as exc:  # pragma: no cover - astroquery is a dependency
        raise RemoteError(f"astroquery is not available: {exc}") from exc
    SDSS.TIMEOUT = timeout
    try:
        result = SDSS.query_sql(sql, timeout=timeout, data_release=DATA_RELEASE, cache=cache)
    except Exception as exc:  # requests, astroquery and parse errors alike
        what = f"field {_as_field_id(field_id)}" if field_id is not None else "cone"
        raise RemoteError(
            f"SDSS DR{DATA_RELEASE} photoObj query for the {what} failed "
            f"({type(exc).__name__}: {str(exc).strip()[:300] or 'no message'})"
        ) from exc
    return _finish_photoobj(result)


def _photoobj_names() -> list[str]:
    names = [c.split(".", 1)[1] for c in _PHOTO_COLUMNS]
    return names + ["specObjID", "z", "zErr", "zWarning", "class"]


def _finish_photoobj(result: Table | None) -> Table:
    names = _photoobj_names()
    if result is None or len(result) == 0:
        dtypes: list[Any] = [np.uint64] + [float] * 2 + [int] * 5 + [float] * 17
        dtypes += [np.uint64, float, float, int, str]
        table = Table(names=names, dtype=dtypes)
    else:
        table = Table(result, masked=False)
        missing = [n for n in names if n not in table.colnames]
        if missing:
            raise RemoteError(
                f"SDSS DR{DATA_RELEASE} answered without {len(missing)} expected columns "
                f"({', '.join(missing[:5])}...): not a photoObj result"
            )
    spec_id = np.asarray(table["specObjID"]).astype(np.uint64) if len(table) else np.zeros(0)
    has_spec = spec_id != 0
    table["has_spec"] = has_spec
    table["is_galaxy"] = np.asarray(table["type"]) == 3
    table = Table(table, masked=True)
    for name in ("z", "zErr", "zWarning", "class"):
        table[name].mask = ~has_spec
    for name in ("ra", "dec"):
        table[name].unit = "deg"
    for name in ("petroRad_r", "petroR50_r"):
        table[name].unit = "arcsec"
    table.meta["data_release"] = DATA_RELEASE
    return table
