"""Bright compact nuclei inside a galaxy image: one nucleus or a resolved pair.

Method
------
The image is one band in nanomaggies (the r band of a frame set, cut around the position with
original pixels, :func:`field_image`) or the luminance of a colour render (Rec. 709 weights of
the RGB values, display units). Steps:

1. Sky level and noise: the sigma-clipped median of the image
   (:func:`astropy.stats.sigma_clipped_stats`) and the per-pixel noise, the sigma-clipped
   standard deviation of a field cutout or, for an image, the DER_SNR second-difference
   estimate (Stoehr et al. 2008); for SDSS frames the photon noise of the source is added
   (``flux * calib / gain`` per pixel, in nanomaggies).
2. Detection: the image is convolved with a Gaussian of the PSF FWHM (a matched filter), the
   galaxy is the segment (:func:`photutils.segmentation.detect_sources`, 3 sigma) at or nearest
   to the image centre, together with the segments whose peaks lie within the largest pair
   separation (a second nucleus may be a separate segment), and its peaks
   (:func:`photutils.detection.find_peaks`, 5 sigma of the filtered noise, a box of about one
   FWHM) are the candidate nuclei. A galaxy whose brightest peak is below 10 sigma is "not
   measurable: no galaxy".
3. Deblending by model comparison: in a window around the brightest peak, two models are
   fitted by least squares (:class:`astropy.modeling.fitting.LevMarLSQFitter`) with the pixel
   noise as weights: *one nucleus* = constant + an elliptical Gaussian host + one PSF, and *two
   nuclei* = the same plus a second PSF, started at the nearest peaks found and at the maximum
   of the matched-filtered residual of the first model (for pairs closer than the FWHM, which
   ``find_peaks`` cannot split). The PSF has the SDSS double-Gaussian form (core plus a wing
   of twice its width; Stoughton et al. 2002) with a fixed shape and free flux and position.
   Other segments get no weight.
4. Confidence: the chi-square improvement of the second PSF, divided by the largest of one,
   the reduced chi-square of the two-nucleus fit and the reduced chi-square within 2 FWHM of
   the nuclei (so that structure the smooth host cannot follow, a cuspy bulge, spiral arms or
   HII regions, does not count as significance), gives a significance
   ``S = sqrt(delta_chi2 / scale)`` in sigma. ``confidence = Phi(S - 6) * R`` where
   ``Phi`` is the normal CDF and ``R = clip((sep / FWHM - 0.6) / 0.6, 0, 1)`` is the
   resolution factor (0 below 0.6 PSF FWHM, where a pair is indistinguishable from one
   elongated source, a bar or an edge-on bulge, 1 from 1.2 FWHM; chosen on the injection
   benchmark, where the ramp from 0.75 to 1.5 FWHM recovered no 1-FWHM pair and found the same
   false pairs). A pair is reported when
   the confidence is at least 0.5 and the fainter nucleus is detected at 5 sigma or more.
   The second nucleus must lie on the galaxy (within 3 sigma of the fitted host and on its
   light) unless it is within a factor 2.5 of the brighter one's flux (a companion's nucleus),
   and within 10 projected kpc (7.5 arcsec when z is unknown); fainter compact sources off
   the galaxy are neighbours.
5. Point-source test of the second nucleus (:func:`_shape_test`): a nucleus is unresolved at
   SDSS seeing, an HII region, an arm or disk knot or half of a split elongated bulge is not.
   The second component (the one farther from the host's centre; or the one off the host) is
   refitted as the PSF convolved with a free elliptical Gaussian; when that nested model is
   better by ``dchi2 >= 14.2`` (3 sigma for 3 parameters, after the reduced chi-square scaling
   of step 4) and its intrinsic sigma reaches half the PSF core sigma, an on-host second
   component is a clump, not a nucleus, and the answer is "single". On field 2820-3-122
   (33 galaxies with S/N >= 20, PSF measured on 40 stars) this turned down 4 of the 8 pairs
   of the uninjected galaxies, all four disk structure by inspection of gri cutouts (a split
   elongated bulge, knots at the tip of a disk and of a faint tail, a knot beside a red core),
   and lowered the recovery of injected nuclei on the same 17 galaxies by at most 0.09 in any
   cell of the separation x flux-ratio grid (flux ratio 1 at 1.5-4 arcsec: 0.74-0.97 without
   the test, 0.74-0.94 with it). The
   test needs a PSF known apart from the galaxy (psField, the field's stars, or given): it is
   skipped for renders whose FWHM is estimated from their own compact sources, which may be
   the nuclei themselves (GOTHIC renders show two resolved bulges), and for an assumed
   default seeing.

The PSF comes from psField (SDSS ``psf_width``) when the frame set has one, else from the
field's stars (:func:`measure_psf`, which ``ssald-cli evidence --field`` and the benchmark
use), else the typical SDSS r-band seeing of 1.4 arcsec (:data:`DEFAULT_SEEING_ARCSEC`), or is
given. For a render with no pixel scale and no FWHM, the FWHM is the median Gaussian width of
the narrowest third of its eight brightest peaks (stars and nuclei are the most compact
sources; every source is at least as wide as the PSF), and a render zoomed beyond the seeing
is summed in blocks that keep the FWHM at about 3 pixels.

Separations are given in pixels, in arcsec when the pixel scale is known (SDSS cutouts:
0.396"/px; a render only when its scale is given) and in projected kpc when the redshift is
known too, with the angular-diameter distance of :data:`DEFAULT_COSMOLOGY` (Planck 2018,
Planck Collaboration 2020, A&A 641, A6, as :data:`astropy.cosmology.Planck18`).

Comparison with GOTHIC
----------------------
GOTHIC (Bhattacharya et al. 2023, MNRAS 524, 4482) finds dual nuclei in SDSS colour JPEGs
with a graph of the image's intensity: it smooths the image, climbs to local maxima and keeps
peaks that pass intensity and distance thresholds, then uses the SDSS spectra and BPT classes
of the nuclei to call dual AGN. This module differs in three ways: (i) it works on the
calibrated r-band frame (nanomaggies with the noise of the sky and the source) when a frame set
is available, so fluxes and flux ratios are physical, and on render luminance only as a
fallback; (ii) a pair is a model comparison of one against two PSF-shaped nuclei on a smooth
host, which resolves pairs closer than the PSF FWHM that peak climbing merges, and separates
compact nuclei from extended clumps; (iii) every answer carries a confidence from the noise
and the PSF width (psField seeing), and separations in kpc. Unlike GOTHIC it does not take
spectra of each nucleus: the spectral evidence is in :mod:`ssald_desktop.core.lines`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssald_desktop.core.errors import SsaldError

__all__ = [
    "DEFAULT_COSMOLOGY",
    "DEFAULT_SEEING_ARCSEC",
    "NOT_MEASURABLE",
    "NucleiError",
    "NucleiResult",
    "Nucleus",
    "find_nuclei",
    "find_nuclei_in_field",
    "FieldImage",
    "default_psf",
    "field_image",
    "find_in_field_image",
    "load_image",
    "luminance",
    "PsfShape",
    "measure_psf",
    "pixel_noise",
    "projected_kpc",
]

#: Typical SDSS r-band seeing (FWHM, arcsec) used when no psField is at hand.
DEFAULT_SEEING_ARCSEC = 1.4

SDSS_PIXEL_SCALE_DEFAULT = 0.396

#: Cosmology for projected separations (astropy.cosmology.Planck18).
DEFAULT_COSMOLOGY = "Planck18"

#: Status of a result that could not be measured; its message starts with "not measurable: ".
NOT_MEASURABLE = "not measurable"

#: Largest projected separation of a dual AGN (kpc), the usual definition (e.g. Comerford et
#: al. 2012; Pfeifle et al. 2024 use < 10 kpc for "dual" against wider "pairs").
MAX_SEPARATION_KPC = 10.0

#: Largest separation (arcsec) when the redshift is unknown (10 kpc at z = 0.07).
MAX_SEPARATION_ARCSEC = 7.5

#: Significance (sigma) at which the noise part of the confidence is one half.
SIGNIFICANCE_CENTRE = 6.0

#: Separations (in PSF FWHM) where the resolution factor starts to rise and reaches one.
RESOLUTION_RAMP = (0.6, 1.2)


def _resolution(sep: float, fwhm: float) -> float:
    """0 below 0.6 FWHM (one elongated source and a pair look alike), 1 from 1.2 FWHM."""
    lo, hi = RESOLUTION_RAMP
    return min(1.0, max(0.0, (sep / fwhm - lo) / (hi - lo)))


#: Minimum confidence for reporting two nuclei.
PAIR_CONFIDENCE = 0.5

#: Minimum matched-filter signal-to-noise ratio of the galaxy's brightest peak.
MIN_GALAXY_SNR = 10.0

#: Minimum signal-to-noise ratio of the fainter nucleus of a reported pair.
MIN_NUCLEUS_SNR = 5.0

#: A source whose fitted host holds less than this fraction of the PSF's flux is point-like.
POINT_SOURCE_HOST = 0.25

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


class NucleiError(SsaldError):
    """An image that cannot be searched for nuclei (unreadable, wrong shape, bad scale)."""


@dataclass(frozen=True)
class Nucleus:
    """One compact nucleus: a PSF-shaped component of the fit.

    Attributes
    ----------
    x, y : float
        Pixel position in the image array (x = column, y = row, 0-based, pixel centres at
        integers; row 0 is the first row of the array).
    flux, flux_err : float
        Integrated flux of the PSF component, in the image's units (nanomaggies for SDSS
        cutouts, luminance x pixels for renders).
    snr : float
        ``flux / flux_err``.
    ra, dec : float or None
        Sky position (deg) when the image has a WCS.
    """

    x: float
    y: float
    flux: float
    flux_err: float
    snr: float
    ra: float | None = None
    dec: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary (NaN written as None)."""
        keys = ("x", "y", "flux", "flux_err", "snr", "ra", "dec")
        return {k: _jf(getattr(self, k)) for k in keys}


@dataclass
class NucleiResult:
    """What :func:`find_nuclei` found.

    Attributes
    ----------
    status : str
        ``"pair"`` (two nuclei), ``"single"`` (one nucleus; a second one is not significant),
        ``"point source"`` (one PSF and no resolved host: a star or an unresolved quasar) or
        ``"not measurable"``.
    message : str
        One line for the astronomer; starts with ``"not measurable: "`` for that status.
    nuclei : list of Nucleus
        Brightest first. For ``"single"`` the best second candidate is in ``candidate``.
    candidate : Nucleus or None
        The second PSF of the two-nucleus fit even when it is not significant.
    separation_px, separation_arcsec, separation_kpc : float or None
        Between the two nuclei (or the candidate); arcsec needs the pixel scale, kpc also z.
    flux_ratio : float or None
        Brighter over fainter nucleus flux (>= 1).
    confidence : float
        0..1, see the module documentation; 0 when not measurable.
    significance : float or None
        ``S`` in sigma.
    delta_chi2, chi2_red : float or None
        Chi-square improvement of the second PSF and reduced chi-square of the pair fit.
    psf_fwhm_px, psf_fwhm_arcsec : float or None
        PSF FWHM used; ``psf_source`` says where it came from (``"psField"``, ``"default"``,
        ``"given"``, ``"measured"``).
    pixel_scale : float or None
        Arcsec per pixel (None for a render without a given scale).
    z : float or None
        Redshift used for kpc; ``cosmology`` names the cosmology.
    shape : tuple of int
        Image shape (rows, cols), for drawing.
    noise : float or None
        Sky noise per pixel.
    second_extent : dict or None
        The point-source test of the second component (see :func:`_shape_test`) when a pair
        was considered: ``component``, ``dchi2``, ``size_px``, ``resolved``, ``rejected``.
    """

    status: str
    message: str
    nuclei: list[Nucleus] = field(default_factory=list)
    candidate: Nucleus | None = None
    separation_px: float | None = None
    separation_arcsec: float | None = None
    separation_kpc: float | None = None
    flux_ratio: float | None = None
    confidence: float = 0.0
    significance: float | None = None
    delta_chi2: float | None = None
    chi2_red: float | None = None
    psf_fwhm_px: float | None = None
    psf_fwhm_arcsec: float | None = None
    psf_source: str | None = None
    pixel_scale: float | None = None
    z: float | None = None
    cosmology: str = DEFAULT_COSMOLOGY
    shape: tuple[int, int] = (0, 0)
    noise: float | None = None
    second_extent: dict[str, Any] | None = None

    @property
    def is_pair(self) -> bool:
        """True when two nuclei are reported."""
        return self.status == "pair"

    @property
    def measurable(self) -> bool:
        """False when the image could not be measured."""
        return self.status != NOT_MEASURABLE

    def positions_in(self, wcs: Any) -> list[tuple[float, float]]:
        """Pixel (x, y) of the nuclei in another image with a WCS (e.g. a north-up card cutout).

        Field results carry each nucleus's RA/Dec; a render without WCS cannot be mapped and
        gives its own pixel positions unchanged.
        """
        from astropy.coordinates import SkyCoord

        out = []
        for n in self.nuclei:
            if n.ra is None or n.dec is None:
                out.append((n.x, n.y))
                continue
            x, y = wcs.world_to_pixel(SkyCoord(n.ra, n.dec, unit="deg"))
            out.append((float(x), float(y)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary for JSON and for drawing the nuclei on the cutout."""
        out: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "is_pair": self.is_pair,
            "nuclei": [n.to_dict() for n in self.nuclei],
            "candidate": None if self.candidate is None else self.candidate.to_dict(),
        }
        for key in (
            "separation_px", "separation_arcsec", "separation_kpc", "flux_ratio", "confidence",
            "significance", "delta_chi2", "chi2_red", "psf_fwhm_px", "psf_fwhm_arcsec",
            "pixel_scale", "z", "noise",
        ):  # fmt: skip
            out[key] = _jf(getattr(self, key))
        out["psf_source"] = self.psf_source
        out["cosmology"] = self.cosmology
        out["shape"] = list(self.shape)
        ext = self.second_extent
        out["second_extent"] = None if ext is None else {
            k: (_jf(v) if isinstance(v, float) else v) for k, v in ext.items()
        }
        return out


def _jf(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _not_measurable(reason: str, **kw: Any) -> NucleiResult:
    return NucleiResult(status=NOT_MEASURABLE, message=f"{NOT_MEASURABLE}: {reason}", **kw)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance of an RGB image, ``0.2126 R + 0.7152 G + 0.0722 B`` (ITU-R BT.709).

    Parameters
    ----------
    rgb : numpy.ndarray
        (rows, cols, 3 or 4) array; an alpha channel is ignored.

    Returns
    -------
    numpy.ndarray
        (rows, cols) float64, in the input's units.
    """
    rgb = np.asarray(rgb, dtype=float)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise NucleiError(f"expected an RGB image (rows, cols, 3), got shape {rgb.shape}")
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]


def load_image(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG render (as luminance) or a FITS image (first 2-D HDU) as float64.

    Raises
    ------
    NucleiError
        The file does not exist or is not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise NucleiError(f"{path}: no such image file")
    if path.suffix.lower() in (".fits", ".fit", ".fz") or path.name.lower().endswith(".fits.gz"):
        from astropy.io import fits

        try:
            with fits.open(path) as hdul:
                for hdu in hdul:
                    if hdu.data is not None and np.ndim(hdu.data) == 2:
                        return np.asarray(hdu.data, dtype=float)
        except OSError as exc:
            raise NucleiError(f"{path}: not a readable FITS file ({exc})") from exc
        raise NucleiError(f"{path}: no 2-D image HDU")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "I", "F", "I;16"):
                return np.asarray(im, dtype=float)
            return luminance(np.asarray(im.convert("RGB"), dtype=float))
    except (UnidentifiedImageError, OSError) as exc:
        raise NucleiError(f"{path}: not a readable image ({exc})") from exc


def projected_kpc(separation_arcsec: float, z: float, cosmology: str = DEFAULT_COSMOLOGY) -> float:
    """Projected separation in kpc at redshift ``z`` (angular-diameter distance).

    Uses ``cosmology.kpc_proper_per_arcmin(z)`` of the named astropy realisation
    (default Planck18; Planck Collaboration 2020, A&A 641, A6).
    """
    from astropy import cosmology as cosmo_mod

    if not (math.isfinite(z) and z > 0):
        raise NucleiError(f"redshift must be a positive number for kpc, got {z!r}")
    try:
        cosmo = getattr(cosmo_mod, cosmology)
    except AttributeError:
        raise NucleiError(f"unknown astropy cosmology {cosmology!r}") from None
    per_arcsec = cosmo.kpc_proper_per_arcmin(z).to_value("kpc / arcmin") / 60.0
    return float(separation_arcsec * per_arcsec)


# ---------------------------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------------------------


def _psf_class() -> Any:
    """The PSF model class (built lazily so that importing this module stays light)."""
    global _PSF_CLASS
    if _PSF_CLASS is not None:
        return _PSF_CLASS
    from astropy.modeling import Fittable2DModel, Parameter

    class DoubleGaussianPSF(Fittable2DModel):
        """A PSF of total ``flux``: core Gaussian plus a wider wing Gaussian (fixed shape).

        ``(1 - wing) N(sigma) + wing N(ratio * sigma)``, the SDSS double-Gaussian PSF
        (psField ``psf_sigma1``, ``psf_sigma2``, ``psf_b``; Stoughton et al. 2002, AJ 123,
        485); ``wing = 0`` is a single Gaussian.
        """

        flux = Parameter(default=1.0, bounds=(0.0, None))
        x_0 = Parameter(default=0.0)
        y_0 = Parameter(default=0.0)
        sigma = Parameter(default=1.0, fixed=True)
        ratio = Parameter(default=2.0, fixed=True)
        wing = Parameter(default=0.0, fixed=True)

        @staticmethod
        def evaluate(x, y, flux, x_0, y_0, sigma, ratio, wing):  # type: ignore[override]
            """Evaluate the PSF at (x, y)."""
            r2 = (x - x_0) ** 2 + (y - y_0) ** 2
            s1 = sigma * sigma
            s2 = s1 * ratio * ratio
            core = np.exp(-0.5 * r2 / s1) / (2.0 * np.pi * s1)
            outer = np.exp(-0.5 * r2 / s2) / (2.0 * np.pi * s2)
            return flux * ((1.0 - wing) * core + wing * outer)

    _PSF_CLASS = DoubleGaussianPSF
    return _PSF_CLASS


_PSF_CLASS: Any = None


def _resolved_class() -> Any:
    """The PSF convolved with an elliptical Gaussian (a resolved clump), built lazily."""
    global _RESOLVED_CLASS
    if _RESOLVED_CLASS is not None:
        return _RESOLVED_CLASS
    from astropy.modeling import Fittable2DModel, Parameter

    class ResolvedPSF(Fittable2DModel):
        """The double-Gaussian PSF convolved with an elliptical Gaussian of free shape.

        Each PSF Gaussian of variance ``s_k^2`` becomes one of covariance
        ``s_k^2 I + R(theta) diag(sx^2, sy^2) R(theta)^T`` (the convolution of Gaussians adds
        covariances); ``sx = sy = 0`` is the point source of :func:`_psf_class`.
        """

        flux = Parameter(default=1.0, bounds=(0.0, None))
        x_0 = Parameter(default=0.0)
        y_0 = Parameter(default=0.0)
        sx = Parameter(default=1.0, bounds=(0.0, None))
        sy = Parameter(default=1.0, bounds=(0.0, None))
        theta = Parameter(default=0.0)
        sigma = Parameter(default=1.0, fixed=True)
        ratio = Parameter(default=2.0, fixed=True)
        wing = Parameter(default=0.0, fixed=True)

        @staticmethod
        def evaluate(x, y, flux, x_0, y_0, sx, sy, theta, sigma, ratio,  # type: ignore[override]
                     wing):
            """Evaluate the resolved profile at (x, y)."""
            c, s = np.cos(theta), np.sin(theta)
            ex, ey = sx * sx, sy * sy
            cxx = ex * c * c + ey * s * s
            cyy = ex * s * s + ey * c * c
            cxy = (ex - ey) * c * s
            dx, dy = x - x_0, y - y_0
            out = 0.0
            for frac, var in ((1.0 - wing, sigma * sigma), (wing, (sigma * ratio) ** 2)):
                a, b, d = cxx + var, cxy, cyy + var
                det = a * d - b * b
                q = (d * dx * dx - 2.0 * b * dx * dy + a * dy * dy) / det
                out = out + frac * np.exp(-0.5 * q) / (2.0 * np.pi * np.sqrt(det))
            return flux * out

    _RESOLVED_CLASS = ResolvedPSF
    return _RESOLVED_CLASS


_RESOLVED_CLASS: Any = None


def core_sigma(fwhm: float, ratio: float, wing: float) -> float:
    """Core sigma (px) of the double-Gaussian PSF whose profile has the given FWHM."""
    from scipy.optimize import brentq

    if wing <= 0:
        return fwhm * _FWHM_TO_SIGMA

    def profile(r: float, s: float) -> float:
        s2 = s * ratio
        return (1 - wing) * math.exp(-0.5 * r * r / (s * s)) / (s * s) + wing * math.exp(
            -0.5 * r * r / (s2 * s2)
        ) / (s2 * s2)

    def half(s: float) -> float:
        return profile(0.5 * fwhm, s) - 0.5 * profile(0.0, s)

    return float(brentq(half, 0.05 * fwhm, 2.0 * fwhm * _FWHM_TO_SIGMA))


def _psf(flux: float, x: float, y: float, shape: tuple[float, float, float]) -> Any:
    sigma, ratio, wing = shape
    return _psf_class()(flux=max(flux, 0.0), x_0=x, y_0=y, sigma=sigma, ratio=ratio, wing=wing)


def _model(
    peak: float, x1: float, y1: float, shape: tuple[float, float, float],
    box: tuple[float, float, float, float], second: tuple[float, float, float] | None,
) -> Any:
    """Constant + elliptical Gaussian host + one or two fixed-width Gaussian PSFs."""
    from astropy.modeling.models import Const2D, Gaussian2D

    x0, x1b, y0, y1b = box
    sigma = shape[0]
    psf_area = 4.0 * math.pi * sigma * sigma
    host = Gaussian2D(0.3 * peak, x1, y1, 2.5 * sigma, 2.5 * sigma, 0.0)
    host.amplitude.bounds = (0.0, None)
    size = float(max(x1b - x0, y1b - y0))
    host.x_stddev.bounds = (1.2 * sigma, 3.0 * size)
    host.y_stddev.bounds = (1.2 * sigma, 3.0 * size)
    host.x_mean.bounds = (x0, x1b)
    host.y_mean.bounds = (y0, y1b)
    p1 = _psf(0.7 * peak * psf_area, x1, y1, shape)
    p1.x_0.bounds = (x0, x1b)
    p1.y_0.bounds = (y0, y1b)
    model = Const2D(0.0) + host + p1
    if second is not None:
        p2 = _psf(second[2] * psf_area, second[0], second[1], shape)
        p2.x_0.bounds = (x0, x1b)
        p2.y_0.bounds = (y0, y1b)
        model = model + p2
    return model


def _fit(model: Any, xx: np.ndarray, yy: np.ndarray, data: np.ndarray, weights: np.ndarray) -> Any:
    from astropy.modeling.fitting import LevMarLSQFitter
    from astropy.utils.exceptions import AstropyUserWarning

    fitter = LevMarLSQFitter(calc_uncertainties=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted = fitter(model, xx, yy, data, weights=weights, maxiter=200)
    chi2 = float(np.sum(((fitted(xx, yy) - data) * weights) ** 2))
    return fitted, chi2


def _psf_flux(
    component: Any, stds: dict[str, float] | None, name: str, scale: float, noise: float
) -> tuple[float, float]:
    """Flux of a PSF component and its error.

    The error is the fit's (covariance, scaled by the reduced chi-square ``scale``), never
    below the background-limited PSF-photometry error ``noise * sqrt(4 pi sigma^2)`` (a
    Gaussian PSF of core sigma ``sigma``), which also stands in when the covariance is not
    available (a parameter at its bound).
    """
    flux = float(component.flux.value)
    sigma = float(component.sigma.value)
    floor = noise * math.sqrt(4.0 * math.pi * sigma * sigma) * math.sqrt(scale)
    err = floor
    if stds is not None and stds.get(name) is not None and math.isfinite(stds[name]):
        err = max(floor, float(stds[name]) * math.sqrt(scale))
    return flux, err


def _stds(fitted: Any) -> dict[str, float] | None:
    try:
        stds = fitted.stds
        if stds is None:
            return None
        return {n: float(s) for n, s in zip(stds.param_names, stds.stds, strict=False)}
    except (AttributeError, ValueError, TypeError):
        return None


def _estimate_fwhm(image: np.ndarray, x: float, y: float, noise: float) -> float:
    """FWHM (px) of a Gaussian fitted to the peak at (x, y) over a local constant."""
    from astropy.modeling.fitting import TRFLSQFitter
    from astropy.modeling.models import Const2D, Gaussian2D

    r = 12
    rows, cols = image.shape
    x0, x1 = max(0, int(x) - r), min(cols, int(x) + r + 1)
    y0, y1 = max(0, int(y) - r), min(rows, int(y) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    data = image[y0:y1, x0:x1]
    base = float(np.percentile(data, 10))
    g = Gaussian2D(float(image[int(round(y)), int(round(x))]) - base, x, y, 2.0, 2.0)
    g.x_stddev.bounds = (0.5, 3.0 * r)
    g.y_stddev.bounds = (0.5, 3.0 * r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = TRFLSQFitter()(Const2D(base) + g, xx, yy, data, maxiter=200)
    sig = min(float(fitted.x_stddev_1.value), float(fitted.y_stddev_1.value))
    return sig / _FWHM_TO_SIGMA


def pixel_noise(image: np.ndarray, bad: np.ndarray | None = None) -> float:
    """Per-pixel noise from second differences, robust to sources and smooth light.

    The DER_SNR estimator (Stoehr et al. 2008, ASP Conf. 394, 505),
    ``1.482602 / sqrt(6) * median(|2 f_i - f_(i-2) - f_(i+2)|)``, applied along rows and
    columns; smooth galaxy light cancels in the second difference, white noise does not.
    Noise correlated between neighbouring pixels (a resampled or zoomed render) is
    underestimated; the fit's reduced chi-square then scales the significance back.
    """
    img = np.asarray(image, dtype=float)
    ok = np.ones(img.shape, bool) if bad is None else ~np.asarray(bad, bool)
    parts = []
    for axis in (0, 1):
        a = np.moveaxis(img, axis, 0)
        m = np.moveaxis(ok, axis, 0)
        d = np.abs(2.0 * a[2:-2] - a[:-4] - a[4:])
        good = m[2:-2] & m[:-4] & m[4:]
        parts.append(d[good])
    values = np.concatenate(parts)
    if values.size == 0:
        return math.nan
    return float(1.482602 / math.sqrt(6.0) * np.median(values))


def _choose_second(
    fits: list[tuple[Any, float]], chi1: float, dof: int, fwhm: float,
    inside: Callable[[float, float], bool],
) -> tuple[Any, float]:
    """The two-nucleus fit to keep: the brightest confident second nucleus, else the best chi2.

    Beside a second nucleus a galaxy may hold fainter clumps (HII regions, arm knots) that a
    PSF also fits significantly; the brightest compact second source is the dual-AGN
    candidate.
    """
    from scipy.stats import norm

    confident = []
    for m2, chi2 in fits:
        sig = math.sqrt(max(0.0, chi1 - chi2) / max(1.0, chi2 / dof))
        sep = math.hypot(float(m2[3].x_0.value) - float(m2[2].x_0.value),
                         float(m2[3].y_0.value) - float(m2[2].y_0.value))
        res = _resolution(sep, fwhm)
        x2, y2 = float(m2[3].x_0.value), float(m2[3].y_0.value)
        conf = norm.cdf(sig - SIGNIFICANCE_CENTRE) * res
        f1, f2 = float(m2[2].flux.value), float(m2[3].flux.value)
        bright = f2 > 0 and max(f1, f2) / min(f1, f2) <= COMPANION_RATIO if f1 > 0 else False
        ok = inside(x2, y2) and (_within_host(m2, x2, y2) or bright)
        if conf >= PAIR_CONFIDENCE and float(m2[3].flux.value) > 0 and ok:
            confident.append((-float(m2[3].flux.value), m2, chi2))
    if confident:
        confident.sort(key=lambda t: t[0])
        return confident[0][1], confident[0][2]
    return min(fits, key=lambda t: t[1])


def find_nuclei(
    image: np.ndarray,
    *,
    psf_fwhm_px: float | None = None,
    pixel_scale: float | None = None,
    z: float | None = None,
    mask: np.ndarray | None = None,
    noise: float | None = None,
    gain_factor: float = 0.0,
    centre: tuple[float, float] | None = None,
    search_radius_px: float | None = None,
    max_separation_px: float | None = None,
    psf_source: str | None = None,
    cosmology: str = DEFAULT_COSMOLOGY,
    wcs: Any = None,
    psf_wing_ratio: float = 2.0,
    psf_wing_fraction: float = 0.0,
    shape_test: bool = True,
) -> NucleiResult:
    """Find one or two compact nuclei in a galaxy image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image: one band (nanomaggies) or the :func:`luminance` of a render.
    psf_fwhm_px : float, optional
        PSF FWHM in pixels. Default: :data:`DEFAULT_SEEING_ARCSEC` / ``pixel_scale`` when the
        scale is known, else measured on the image's most compact sources (see the module
        documentation).
    pixel_scale : float, optional
        Arcsec per pixel; without it separations are in pixels only.
    z : float, optional
        Redshift for the projected separation in kpc.
    mask : numpy.ndarray, optional
        True where pixels are bad; they get no weight.
    noise : float, optional
        Sky noise per pixel; default the sigma-clipped standard deviation of the image.
    gain_factor : float
        Photon-noise variance per unit of signal (``calib / gain`` for SDSS nanomaggies);
        0 for renders.
    centre : (x, y), optional
        Where the galaxy is (default the image centre).
    search_radius_px : float, optional
        The galaxy's segment must reach within this distance of ``centre`` (default a quarter
        of the smaller image side).
    max_separation_px : float, optional
        Largest separation of a pair (default :data:`MAX_SEPARATION_KPC` at ``z``, else
        :data:`MAX_SEPARATION_ARCSEC`; 0.3 of the smaller side without a scale).
    psf_source : str, optional
        Recorded in the result (default ``"given"`` or ``"default"``/``"measured"``).
    cosmology : str
        astropy cosmology name for kpc.
    wcs : astropy.wcs.WCS, optional
        The image's WCS, to give the nuclei's RA/Dec.
    psf_wing_ratio, psf_wing_fraction : float
        Shape of the double-Gaussian PSF: wing/core sigma ratio and the wing's share of the
        flux (0, the default, is a single Gaussian; SDSS frames: see :func:`default_psf`).
    shape_test : bool
        Test that a second nucleus on the host is a point source, not a resolved clump
        (:func:`_shape_test`). It needs a PSF known apart from the galaxy (given, psField or
        measured on the field's stars) and is skipped when the FWHM is only assumed (the
        default seeing) or estimated from the image's own compact sources (a render without
        scale), which may be the nuclei themselves. False gives the plain one-vs-two-PSF
        answer.

    Returns
    -------
    NucleiResult
        Never raises for an image without a galaxy: the status says "not measurable".

    Raises
    ------
    NucleiError
        The image is not 2-D, or a scale/FWHM/redshift is not a positive number.
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2 or min(img.shape) < 8:
        raise NucleiError(f"expected a 2-D image of at least 8x8 pixels, got shape {img.shape}")
    kw: dict[str, Any] = dict(
        pixel_scale=pixel_scale, z=z, mask=mask, noise=noise, gain_factor=gain_factor,
        centre=centre, search_radius_px=search_radius_px, max_separation_px=max_separation_px,
        psf_source=psf_source, cosmology=cosmology, wcs=wcs, psf_wing_ratio=psf_wing_ratio,
        psf_wing_fraction=psf_wing_fraction, shape_test=shape_test,
    )  # fmt: skip
    fwhm = psf_fwhm_px
    if fwhm is None and pixel_scale is None:
        fwhm = _prepass_fwhm(img, mask, centre)
        # The width of the image's own most compact sources may be the nuclei's: no PSF to
        # test the second nucleus against.
        kw["shape_test"] = False
        if fwhm is not None:
            kw["psf_source"] = psf_source or "measured"
    elif fwhm is None and pixel_scale is not None:
        fwhm = DEFAULT_SEEING_ARCSEC / pixel_scale
        kw["psf_source"] = psf_source or "default"
        kw["shape_test"] = False  # an assumed seeing, not a measured PSF
    elif psf_source is None:
        kw["psf_source"] = "given"
    if fwhm is None or not math.isfinite(fwhm) or int(fwhm // 3.0) <= 1:
        return _find_nuclei_core(img, psf_fwhm_px=fwhm, **kw)
    return _binned(img, fwhm, int(fwhm // 3.0), kw)


def _prepass_fwhm(
    img: np.ndarray, mask: np.ndarray | None, centre: tuple[float, float] | None
) -> float | None:
    """PSF FWHM (px) of an image of unknown scale: the width of its most compact sources.

    Gaussians are fitted to the eight brightest peaks of the lightly smoothed image (stars,
    nuclei, clumps); every source is at least as wide as the PSF, so the median of the
    narrowest third of the fitted FWHMs is the estimate.
    """
    from photutils.detection import find_peaks
    from scipy.ndimage import gaussian_filter

    rows, cols = img.shape
    work = np.where(np.isfinite(img), img, 0.0)
    if mask is not None:
        work = np.where(np.asarray(mask, bool), 0.0, work)
    work = work - np.median(work)
    smooth = gaussian_filter(work, max(1.0, 0.01 * min(rows, cols)))
    top = float(np.percentile(smooth, 99.5))
    if not top > 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peaks = find_peaks(smooth, 0.1 * top, box_size=9, border_width=4)
    if peaks is None or len(peaks) == 0:
        return None
    peaks.sort("peak_value", reverse=True)
    widths = []
    for row in peaks[:8]:
        try:
            w = _estimate_fwhm(work, float(row["x_peak"]), float(row["y_peak"]), 0.0)
        except (ValueError, RuntimeError):
            continue
        if math.isfinite(w) and w > 1.0:
            widths.append(w)
    if not widths:
        return None
    widths.sort()
    return float(np.median(widths[: max(1, len(widths) // 3)]))


def _binned(img: np.ndarray, fwhm: float, factor: int, kw: dict[str, Any]) -> NucleiResult:
    """Run on the image summed in ``factor`` x ``factor`` blocks and map the result back.

    A render zoomed far beyond the seeing holds no information at its full resolution; blocks
    that keep the FWHM at 3 pixels or more make the fit many times faster.
    """
    from astropy.nddata import block_reduce

    rows, cols = img.shape
    cut = img[: rows - rows % factor, : cols - cols % factor]
    binned = block_reduce(np.where(np.isfinite(cut), cut, 0.0), factor, func=np.sum)
    mask = kw.pop("mask")
    bmask = None
    bad = ~np.isfinite(cut)
    if mask is not None:
        bad |= np.asarray(mask, bool)[: cut.shape[0], : cut.shape[1]]
    if bad.any():
        bmask = block_reduce(bad.astype(float), factor, func=np.mean) > 0.5
    wcs = kw.pop("wcs")

    def down(v: float) -> float:
        return (v + 0.5) / factor - 0.5

    def up(v: float) -> float:
        return (v + 0.5) * factor - 0.5

    centre = kw.pop("centre")
    bkw = dict(kw)
    bkw["centre"] = None if centre is None else (down(centre[0]), down(centre[1]))
    for key in ("search_radius_px", "max_separation_px"):
        if bkw[key] is not None:
            bkw[key] = bkw[key] / factor
    if bkw["noise"] is not None:
        bkw["noise"] = bkw["noise"] * factor
    if bkw["pixel_scale"] is not None:
        bkw["pixel_scale"] = bkw["pixel_scale"] * factor
    res = _find_nuclei_core(binned, psf_fwhm_px=fwhm / factor, mask=bmask, wcs=None, **bkw)

    def back(n: Nucleus | None) -> Nucleus | None:
        if n is None:
            return None
        x, y = up(n.x), up(n.y)
        ra = dec = None
        if wcs is not None:
            sky = wcs.pixel_to_world(x, y)
            ra, dec = float(sky.ra.deg), float(sky.dec.deg)
        return Nucleus(x, y, n.flux, n.flux_err, n.snr, ra, dec)

    res.nuclei = [n for n in (back(n) for n in res.nuclei) if n is not None]
    res.candidate = back(res.candidate)
    res.shape = (rows, cols)
    res.pixel_scale = kw["pixel_scale"]
    if res.separation_px is not None:
        res.separation_px *= factor
    if res.psf_fwhm_px is not None:
        res.psf_fwhm_px *= factor
    if res.noise is not None:
        res.noise /= factor
    if res.status == "pair":
        res.message = _pair_message(
            res.separation_px, res.separation_arcsec, res.separation_kpc, res.flux_ratio,
            res.significance, res.confidence,
        )  # fmt: skip
    return res


#: A nucleus lies within this many host-Gaussian sigmas (elliptical distance) of its centre.
HOST_EXTENT_SIGMA = 3.0


#: A faint second nucleus must sit on host light at least this fraction of its own peak.
HOST_CONTRAST = 0.25


def _within_host(model: Any, x: float, y: float, k: float = HOST_EXTENT_SIGMA) -> bool:
    """True when (x, y) lies inside the fitted host's ``k``-sigma ellipse and on its light.

    A compact source outside the galaxy's body (a faint background object or star a few
    arcsec away) is a neighbour, not a second nucleus of this galaxy: the host's surface
    brightness there must reach :data:`HOST_CONTRAST` of the fainter PSF's peak.
    """
    host = model[1]
    if len(model) > 3:
        faint = min((model[2], model[3]), key=lambda c: float(c.flux.value))
        if float(host(x, y)) < HOST_CONTRAST * float(faint(faint.x_0.value, faint.y_0.value)):
            return False
    dx, dy = x - float(host.x_mean.value), y - float(host.y_mean.value)
    th = float(host.theta.value)
    u = (dx * math.cos(th) + dy * math.sin(th)) / float(host.x_stddev.value)
    v = (-dx * math.sin(th) + dy * math.cos(th)) / float(host.y_stddev.value)
    return bool(u * u + v * v <= k * k)


def _in_segment(in_group: np.ndarray, n: Nucleus) -> bool:
    """True when the nucleus lies on the galaxy's segments (not on faint sky nearby)."""
    row, col = int(round(n.y)), int(round(n.x))
    if not (0 <= row < in_group.shape[0] and 0 <= col < in_group.shape[1]):
        return False
    return bool(in_group[row, col])


#: A compact source outside the host's ellipse still counts as a second nucleus when it is
#: within this factor of the brighter nucleus's flux (a companion's nucleus, not a faint
#: background object).
COMPANION_RATIO = 2.5


def _nucleus_of_host(model: Any, n: Nucleus, ratio: float) -> bool:
    """Inside the host's 3-sigma ellipse, or bright enough to be a companion nucleus."""
    return _within_host(model, n.x, n.y) or ratio <= COMPANION_RATIO


#: Chi-square improvement (after dividing by the fit's reduced chi-square) from letting the
#: second component be resolved, above which it is: 14.2 is the 3-sigma point (p = 0.0027) of
#: a chi-square with 3 degrees of freedom (the clump's two axes and angle; Wilks 1938).
RESOLVED_DCHI2 = 14.2

#: ...and its intrinsic Gaussian sigma (major axis) must reach this fraction of the PSF core
#: sigma: a point source fitted with a slightly wrong PSF at high S/N is not "resolved".
RESOLVED_SIZE = 0.5


def _shape_test(
    m2: Any, xx: np.ndarray, yy: np.ndarray, data: np.ndarray, weights: np.ndarray,
    chi2: float, scale: float,
) -> dict[str, Any]:
    """Test whether the second component of a pair is a point source, as a nucleus must be.

    The component to test is the one that is not the host's main nucleus: the one farther
    from the fitted host's centre when both lie on the host (:func:`_within_host`; the
    brighter nucleus of a galaxy is often a partly resolved bulge, so "the fainter one" would
    test the wrong component at flux ratios near one), else the one off the host. It
    is refitted as the PSF convolved with an elliptical Gaussian (:func:`_resolved_class`,
    every other parameter free again); the two models are nested (zero width is the PSF), so
    ``dchi2 = (chi2_point - chi2_resolved) / scale`` is a likelihood-ratio statistic with 3
    degrees of freedom (Wilks 1938, Ann. Math. Stat. 9, 60), the same star/galaxy logic as
    SDSS's PSF against model magnitudes (Stoughton et al. 2002, AJ 123, 485). The component
    is *resolved* when ``dchi2 >= RESOLVED_DCHI2`` and its intrinsic sigma is at least
    :data:`RESOLVED_SIZE` of the PSF core sigma.

    On the host, the second nucleus must be a point source: a resolved one is an HII region,
    a knot of a spiral arm or disk, or a bar or elongated bulge split in two, and the pair is
    turned down. Off the host (a companion's nucleus admitted by :data:`COMPANION_RATIO`) the
    result is only recorded: a point source there may be a star in projection, but in one band
    it cannot be told from a bare companion nucleus (turning such sources down, with the
    fainter component tested, cut the recovery of injected nuclei at 3-4 arcsec and flux
    ratio 1 from 1.0 to 0.3-0.6 on 12 galaxies of field 2820-3-122); the source catalogue's
    star/galaxy class or the colours must decide.

    Returns
    -------
    dict
        ``component`` (``"on host"``/``"off host"``), ``dchi2``, ``size_px`` (intrinsic sigma,
        major axis), ``resolved`` and ``rejected`` (None or the reason).
    """
    comps = [m2[2], m2[3]]
    on = [_within_host(m2, float(c.x_0.value), float(c.y_0.value)) for c in comps]
    hx, hy = float(m2[1].x_mean.value), float(m2[1].y_mean.value)
    off_centre = [math.hypot(float(c.x_0.value) - hx, float(c.y_0.value) - hy) for c in comps]
    if on[0] == on[1]:
        k = int(np.argmax(off_centre))
    else:
        k = 0 if not on[0] else 1
    test, other = comps[k], comps[1 - k]
    sig = float(test.sigma.value)
    res = _resolved_class()(
        flux=float(test.flux.value), x_0=float(test.x_0.value), y_0=float(test.y_0.value),
        sx=0.7 * sig, sy=0.7 * sig, theta=0.0, sigma=sig, ratio=float(test.ratio.value),
        wing=float(test.wing.value),
    )
    res.x_0.bounds = test.x_0.bounds
    res.y_0.bounds = test.y_0.bounds
    res.sx.bounds = (0.0, 6.0 * sig)
    res.sy.bounds = (0.0, 6.0 * sig)
    model = m2[0].copy() + m2[1].copy() + other.copy() + res
    fitted, chi2_res = _fit(model, xx, yy, data, weights)
    dchi2 = max(0.0, chi2 - chi2_res) / scale
    size = max(float(fitted[3].sx.value), float(fitted[3].sy.value))
    resolved = bool(dchi2 >= RESOLVED_DCHI2 and size >= RESOLVED_SIZE * sig)
    where = "on host" if on[k] else "off host"
    rejected = None
    if where == "on host" and resolved:
        rejected = (f"resolved (intrinsic sigma {size:.1f} px, {math.sqrt(dchi2):.1f} sigma "
                    "better than a point source): a clump, a disk or arm knot or a bar, "
                    "not a nucleus")
    return {"component": where, "dchi2": dchi2, "size_px": size, "resolved": resolved,
            "rejected": rejected}


def _pair_message(
    sep: Any, sep_arcsec: Any, sep_kpc: Any, ratio: Any, signif: Any, confidence: float
) -> str:
    where = f"{sep:.1f} px"
    if sep_arcsec is not None:
        where += f" = {sep_arcsec:.2f} arcsec"
    if sep_kpc is not None:
        where += f" = {sep_kpc:.2f} kpc"
    return (
        f"two nuclei {where} apart, flux ratio {ratio:.2f}, {signif:.1f} sigma, "
        f"confidence {confidence:.2f}"
    )


def _find_nuclei_core(
    image: np.ndarray,
    *,
    psf_fwhm_px: float | None = None,
    pixel_scale: float | None = None,
    z: float | None = None,
    mask: np.ndarray | None = None,
    noise: float | None = None,
    gain_factor: float = 0.0,
    centre: tuple[float, float] | None = None,
    search_radius_px: float | None = None,
    max_separation_px: float | None = None,
    psf_source: str | None = None,
    cosmology: str = DEFAULT_COSMOLOGY,
    wcs: Any = None,
    psf_wing_ratio: float = 2.0,
    psf_wing_fraction: float = 0.0,
    shape_test: bool = True,
) -> NucleiResult:
    """Find nuclei; the FWHM is known or measured here (see :func:`find_nuclei`)."""
    from astropy.stats import sigma_clipped_stats
    from photutils.detection import find_peaks
    from photutils.segmentation import detect_sources
    from scipy.ndimage import gaussian_filter, maximum_position
    from scipy.stats import norm

    img = np.array(image, dtype=float)
    if img.ndim != 2 or min(img.shape) < 8:
        raise NucleiError(f"expected a 2-D image of at least 8x8 pixels, got shape {img.shape}")
    for name, value in (("pixel_scale", pixel_scale), ("psf_fwhm_px", psf_fwhm_px)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise NucleiError(f"{name} must be a positive number, got {value!r}")
    if z is not None and not (math.isfinite(z) and z >= 0):
        raise NucleiError(f"redshift must be a non-negative number, got {z!r}")
    rows, cols = img.shape
    bad = ~np.isfinite(img)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    img[bad] = 0.0
    base = dict(shape=(rows, cols), pixel_scale=pixel_scale, z=z, cosmology=cosmology)
    if bad.mean() > 0.5:
        return _not_measurable(f"{bad.mean():.0%} of the pixels are masked", **base)

    median = float(sigma_clipped_stats(img[~bad], sigma=3.0, maxiters=10)[1])
    sky_noise = float(noise) if noise is not None else pixel_noise(img, bad)
    if not (math.isfinite(sky_noise) and sky_noise > 0):
        return _not_measurable("the image is flat (no noise, no source)", **base)
    img = img - median
    img[bad] = 0.0

    cx, cy = centre if centre is not None else ((cols - 1) / 2.0, (rows - 1) / 2.0)
    radius = search_radius_px if search_radius_px is not None else 0.25 * min(rows, cols)

    source = "given" if psf_fwhm_px is not None else psf_source
    if psf_fwhm_px is None and pixel_scale is not None:
        psf_fwhm_px = DEFAULT_SEEING_ARCSEC / pixel_scale
        source = psf_source or "default"
        shape_test = False
    # Detection with a provisional filter when the PSF is still unknown (a render).
    det_fwhm = psf_fwhm_px if psf_fwhm_px is not None else max(2.0, 0.02 * min(rows, cols))
    det_sigma = det_fwhm * _FWHM_TO_SIGMA
    smooth = gaussian_filter(img, det_sigma)
    s_noise = sky_noise / (2.0 * math.sqrt(math.pi) * det_sigma)
    seg = detect_sources(smooth, 3.0 * s_noise, n_pixels=max(5, int(det_fwhm**2)), mask=bad)
    if seg is None:
        return _not_measurable("no source above 3 sigma of the sky in the image", **base)
    yy_all, xx_all = np.mgrid[0:rows, 0:cols]
    dist = np.hypot(xx_all - cx, yy_all - cy)
    labels = seg.data
    near = (labels > 0) & (dist <= radius)
    if not near.any():
        return _not_measurable(
            f"no galaxy: no source within {radius:.0f} px of the centre ({cx:.0f}, {cy:.0f})",
            **base,
        )
    own = int(labels[int(round(cy)), int(round(cx))])
    if own == 0:  # the segment with the most flux near the centre
        ids = labels[near]
        weights = smooth[near]
        own = int(np.bincount(ids, weights=np.clip(weights, 0, None)).argmax())
    # Sources within the largest pair separation of the galaxy's peak are candidates too (a
    # second nucleus may be a separate segment); farther segments are other objects.
    if max_separation_px is not None:
        sep_limit = max_separation_px
    elif pixel_scale is not None:
        limit_arcsec = MAX_SEPARATION_ARCSEC
        if z is not None and z > 0:
            limit_arcsec = MAX_SEPARATION_KPC / projected_kpc(1.0, z, cosmology)
        sep_limit = limit_arcsec / pixel_scale
    else:
        sep_limit = 0.3 * min(rows, cols)
    n_lab = int(labels.max())
    tops = maximum_position(smooth, labels, np.arange(1, n_lab + 1))
    oy, ox = tops[own - 1]
    group = np.array(
        [0]
        + [k + 1 for k, (ty, tx) in enumerate(tops) if math.hypot(tx - ox, ty - oy) <= sep_limit]
    )
    in_group = np.isin(labels, group) & (labels > 0)
    region = in_group & (dist <= radius + sep_limit)

    box_size = max(3, int(round(det_fwhm * 0.8)) | 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peaks = find_peaks(smooth, 5.0 * s_noise, box_size=box_size, mask=~region | bad)
    if peaks is None or len(peaks) == 0:
        return _not_measurable("no significant peak (5 sigma) in the galaxy", **base)
    peaks.sort("peak_value", reverse=True)
    px = np.asarray(peaks["x_peak"], dtype=float)
    py = np.asarray(peaks["y_peak"], dtype=float)
    # The primary nucleus: the brightest peak within the search radius of the centre.
    inside = np.hypot(px - cx, py - cy) <= radius
    if not inside.any():
        return _not_measurable(
            f"no galaxy peak within {radius:.0f} px of the centre ({cx:.0f}, {cy:.0f})", **base
        )
    i1 = int(np.flatnonzero(inside)[0])
    x1, y1 = px[i1], py[i1]
    primary_snr = float(peaks["peak_value"][i1]) / s_noise
    if primary_snr < MIN_GALAXY_SNR:
        return _not_measurable(
            f"no galaxy: the brightest source near the centre is only {primary_snr:.1f} sigma "
            f"(matched filter; at least {MIN_GALAXY_SNR:g} needed)", **base
        )

    if psf_fwhm_px is None:
        psf_fwhm_px = _estimate_fwhm(img, x1, y1, sky_noise)
        source = psf_source or "measured"
        shape_test = False  # the "PSF" is the nucleus's own width
    sigma = core_sigma(psf_fwhm_px, psf_wing_ratio, psf_wing_fraction)
    shape = (sigma, psf_wing_ratio, psf_wing_fraction)
    max_sep = sep_limit
    base.update(
        psf_fwhm_px=psf_fwhm_px,
        psf_fwhm_arcsec=None if pixel_scale is None else psf_fwhm_px * pixel_scale,
        psf_source=source,
        noise=sky_noise,
    )

    # Second-peak candidates within the largest separation, nearest first.
    others = [
        (px[i], py[i]) for i in range(len(px))
        if i != i1 and 0 < math.hypot(px[i] - x1, py[i] - y1) <= max_sep
    ]  # fmt: skip
    others.sort(key=lambda p: math.hypot(p[0] - x1, p[1] - y1))
    others = others[:3]
    reach = max([math.hypot(x - x1, y - y1) for x, y in others] + [0.0])
    half = int(math.ceil(max(3.0 * psf_fwhm_px, reach + 2.5 * psf_fwhm_px, 8.0)))
    xa, xb = max(0, int(x1) - half), min(cols, int(x1) + half + 1)
    ya, yb = max(0, int(y1) - half), min(rows, int(y1) + half + 1)
    yy, xx = np.mgrid[ya:yb, xa:xb]
    data = img[ya:yb, xa:xb]
    var = sky_noise**2 + gain_factor * np.clip(data, 0, None)
    # Pixels of other sources (other segments) get no weight: they are not this galaxy.
    foreign = (labels[ya:yb, xa:xb] > 0) & ~in_group[ya:yb, xa:xb]
    weights = np.where(bad[ya:yb, xa:xb] | foreign, 0.0, 1.0 / np.sqrt(var))
    bounds = (xa - 0.5, xb - 0.5, ya - 0.5, yb - 0.5)
    peak = max(float(data[int(y1) - ya, int(x1) - xa]), 5.0 * sky_noise)
    n_used = int(np.count_nonzero(weights))

    m1, chi1 = _fit(_model(peak, x1, y1, shape, bounds, None), xx, yy, data, weights)
    host_flux = float(m1[1].amplitude.value) * 2 * math.pi * float(m1[1].x_stddev.value) * float(
        m1[1].y_stddev.value
    )
    psf1_flux = float(m1[2].flux.value)

    # Starting points of the second PSF: the next peak, and the residual's maximum.
    resid = gaussian_filter((data - m1(xx, yy)) * (weights > 0), sigma)
    ry, rx = np.unravel_index(int(np.argmax(resid)), resid.shape)
    starts = [(float(xa + rx), float(ya + ry))]
    starts += others
    fits: list[tuple[Any, float]] = []
    for sx, sy in starts:
        amp = max(float(img[int(round(sy)), int(round(sx))]) * 0.5, sky_noise)
        model = _model(peak, float(m1[2].x_0.value), float(m1[2].y_0.value), shape,
                       bounds, (sx, sy, amp))
        for name in ("amplitude_0",):
            getattr(model, name).value = float(m1[0].amplitude.value)
        fits.append(_fit(model, xx, yy, data, weights))
    dof = max(1, n_used - 11)
    m2, chi2 = _choose_second(
        fits, chi1, dof, psf_fwhm_px,
        lambda x, y: _in_segment(in_group, Nucleus(x, y, 0.0, 0.0, 0.0)),
    )  # fmt: skip
    chi2_red = chi2 / dof
    # Model inadequacy is largest at the centre (a cuspy bulge or a bar is not a Gaussian):
    # the reduced chi-square within 2 FWHM of the nuclei scales the significance too.
    near_nuclei = np.zeros(data.shape, bool)
    for comp in (m2[2], m2[3]):
        near_nuclei |= np.hypot(xx - float(comp.x_0.value), yy - float(comp.y_0.value)) <= (
            2.0 * psf_fwhm_px
        )
    near_nuclei &= weights > 0
    local = float(np.sum(((m2(xx, yy) - data) * weights)[near_nuclei] ** 2))
    local_red = local / max(1, int(near_nuclei.sum()) - 7)
    scale = max(1.0, chi2_red, local_red)
    delta = max(0.0, chi1 - chi2)
    signif = math.sqrt(delta / scale)
    stds = _stds(m2)

    comps = [(m2[2], "flux_2"), (m2[3], "flux_3")]
    found: list[Nucleus] = []
    for comp, pname in comps:
        flux, err = _psf_flux(comp, stds, pname, scale, sky_noise)
        xn, yn = float(comp.x_0.value), float(comp.y_0.value)
        ra = dec = None
        if wcs is not None:
            sky = wcs.pixel_to_world(xn, yn)
            ra, dec = float(sky.ra.deg), float(sky.dec.deg)
        snr = flux / err if err and math.isfinite(err) and err > 0 else math.nan
        found.append(Nucleus(xn, yn, flux, err, snr, ra, dec))
    found.sort(key=lambda n: n.flux, reverse=True)
    sep = math.hypot(found[0].x - found[1].x, found[0].y - found[1].y)
    ratio = found[0].flux / found[1].flux if found[1].flux > 0 else math.inf
    resolution = _resolution(sep, psf_fwhm_px)
    confidence = float(norm.cdf(signif - SIGNIFICANCE_CENTRE)) * resolution
    sep_arcsec = None if pixel_scale is None else sep * pixel_scale
    sep_kpc = None
    if sep_arcsec is not None and z is not None and z > 0:
        sep_kpc = projected_kpc(sep_arcsec, z, cosmology)
    common = dict(
        separation_px=sep,
        separation_arcsec=sep_arcsec,
        separation_kpc=sep_kpc,
        flux_ratio=ratio,
        significance=signif,
        delta_chi2=delta,
        chi2_red=chi2_red,
        **base,
    )

    # A point source: the PSF carries nearly all the light and the host is not resolved.
    if psf1_flux > 0 and host_flux < POINT_SOURCE_HOST * psf1_flux and confidence < PAIR_CONFIDENCE:
        n1_flux, n1_err = _psf_flux(m1[2], _stds(m1), "flux_2", max(1.0, chi1 / dof), sky_noise)
        only = Nucleus(float(m1[2].x_0.value), float(m1[2].y_0.value), n1_flux, n1_err,
                       n1_flux / n1_err if n1_err > 0 else math.nan)
        return NucleiResult(
            status="point source",
            message="a point source with no resolved host (a star or an unresolved quasar): "
            "no galaxy nuclei to compare",
            nuclei=[only],
            **{**common, "separation_px": None, "separation_arcsec": None,
               "separation_kpc": None, "flux_ratio": None, "confidence": 0.0},
        )

    faint_snr = found[1].snr if math.isfinite(found[1].snr) else 0.0
    passes = (
        _in_segment(in_group, found[0]) and _in_segment(in_group, found[1])
        and _nucleus_of_host(m2, found[0], ratio) and _nucleus_of_host(m2, found[1], ratio)
        and confidence >= PAIR_CONFIDENCE
        and faint_snr >= MIN_NUCLEUS_SNR
        and found[1].flux > 0
        and sep <= max_sep
    )  # fmt: skip
    shape_why = None
    if passes and shape_test:
        ext = _shape_test(m2, xx, yy, data, weights, chi2, scale)
        common.update(second_extent=ext)
        shape_why = ext["rejected"]
    if passes and shape_why is None:
        return NucleiResult(
            status="pair",
            message=_pair_message(sep, sep_arcsec, sep_kpc, ratio, signif, confidence),
            nuclei=found,
            candidate=found[1],
            confidence=confidence,
            **common,
        )
    n1_flux, n1_err = _psf_flux(m1[2], _stds(m1), "flux_2", max(1.0, chi1 / dof), sky_noise)
    primary = Nucleus(
        float(m1[2].x_0.value), float(m1[2].y_0.value), n1_flux, n1_err,
        n1_flux / n1_err if n1_err and n1_err > 0 else math.nan,
    )
    if wcs is not None:
        sky = wcs.pixel_to_world(primary.x, primary.y)
        primary = Nucleus(primary.x, primary.y, primary.flux, primary.flux_err, primary.snr,
                          float(sky.ra.deg), float(sky.dec.deg))
    why = []
    if resolution < 1 and sep < psf_fwhm_px:
        why.append(f"candidate {sep / psf_fwhm_px:.2f} FWHM away")
    why.append(f"{signif:.1f} sigma")
    head = "one nucleus; a second one is not significant ("
    if shape_why is not None:
        head, why = f"one nucleus; the second component is {shape_why} (", [f"{signif:.1f} sigma"]
    return NucleiResult(
        status="single",
        message=head + ", ".join(why) + ")",
        nuclei=[primary],
        candidate=found[1] if found[0].x == primary.x else found[0],
        confidence=confidence,
        **common,
    )


@dataclass(frozen=True)
class PsfShape:
    """A double-Gaussian PSF: profile FWHM (arcsec), wing/core sigma ratio, wing flux fraction."""

    fwhm_arcsec: float
    ratio: float = 2.0
    wing: float = 0.0
    source: str = "default"
    n_stars: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary."""
        return {"fwhm_arcsec": self.fwhm_arcsec, "ratio": self.ratio, "wing": self.wing,
                "source": self.source, "n_stars": self.n_stars}  # fmt: skip


def measure_psf(
    frame_set: Any, band: str = "r", sources: Any = None, max_stars: int = 40
) -> PsfShape:
    """Double-Gaussian PSF measured on the field's bright isolated stars.

    The nuclei fit uses the PSF model of :func:`find_nuclei` (core Gaussian plus a wing
    Gaussian, the SDSS PSF form), so its shape is measured the same way on the stars of the
    frame (``is_star``, S/N > 30, no flags, from
    :func:`~ssald_desktop.core.sources.detect_galaxies`, run here when ``sources`` is None):
    core sigma, wing/core ratio and wing flux fraction are fitted to each star (with a
    constant) and the medians are returned with the profile FWHM.

    Raises
    ------
    NucleiError
        Fewer than 3 usable stars.
    """
    from astropy.modeling.models import Const2D

    if sources is None:
        from ssald_desktop.core.sources import detect_galaxies

        sources = detect_galaxies(frame_set, band)
    ok = np.asarray(sources["is_star"], bool) & (np.asarray(sources["snr"]) > 30)
    ok &= np.asarray(sources["flags"]) == 0
    stars = sources[ok]
    fits = []
    scale = SDSS_PIXEL_SCALE_DEFAULT
    for row in stars[:max_stars]:
        try:
            fi = field_image(frame_set, float(row["ra"]), float(row["dec"]), band=band, size=25,
                             psf=PsfShape(DEFAULT_SEEING_ARCSEC))  # fmt: skip
        except SsaldError:
            continue
        scale = fi.pixel_scale
        yy, xx = np.mgrid[0:25, 0:25]
        w = np.where(fi.mask, 0.0, 1.0 / np.sqrt(fi.noise**2 + fi.gain_factor
                                                 * np.clip(fi.image, 0, None)))
        psf = _psf(float(np.sum(np.clip(fi.image, 0, None))), 12.0, 12.0, (1.2, 2.0, 0.2))
        for name, lo, hi in (("sigma", 0.4, 4.0), ("ratio", 1.2, 5.0), ("wing", 0.0, 0.9)):
            getattr(psf, name).fixed = False
            getattr(psf, name).bounds = (lo, hi)
        fit, _ = _fit(Const2D(0.0) + psf, xx, yy, np.where(fi.mask, 0.0, fi.image), w)
        fits.append((float(fit.sigma_1.value), float(fit.ratio_1.value), float(fit.wing_1.value)))
    if len(fits) < 3:
        raise NucleiError(
            f"field {getattr(frame_set, 'field_id', '?')}: only {len(fits)} usable star(s) "
            f"to measure the {band}-band PSF; give the seeing instead"
        )
    sigma, ratio, wing = (float(np.median([f[k] for f in fits])) for k in range(3))
    fwhm = _profile_fwhm(sigma, ratio, wing) * scale
    return PsfShape(fwhm, ratio, wing, "measured", len(fits))


def _profile_fwhm(sigma: float, ratio: float, wing: float) -> float:
    """FWHM (px) of the double-Gaussian profile."""
    from scipy.optimize import brentq

    def profile(r: float) -> float:
        s2 = sigma * ratio
        return (1 - wing) * math.exp(-0.5 * r * r / sigma**2) / sigma**2 + wing * math.exp(
            -0.5 * r * r / s2**2
        ) / s2**2

    top = profile(0.0)
    return 2.0 * float(brentq(lambda r: profile(r) - 0.5 * top, 0.0, 10.0 * sigma * ratio))


@dataclass
class FieldImage:
    """One band around a position of a frame set, ready for :func:`find_nuclei`.

    Attributes
    ----------
    image, mask : numpy.ndarray
        The band (nanomaggies) and its bad-pixel mask, in the frame's own pixel orientation.
    wcs : astropy.wcs.WCS
        WCS of ``image``.
    pixel_scale : float
        Arcsec per pixel.
    psf : PsfShape
        The PSF used.
    noise : float
        Sky noise per pixel (sigma-clipped standard deviation of the cutout).
    gain_factor : float
        Photon-noise variance per nanomaggy of signal (``calib / gain``).
    """

    image: np.ndarray
    mask: np.ndarray
    wcs: Any
    pixel_scale: float
    psf: PsfShape
    noise: float
    gain_factor: float

    @property
    def psf_fwhm_px(self) -> float:
        """Seeing in pixels."""
        return self.psf.fwhm_arcsec / self.pixel_scale


#: Shape of the SDSS double-Gaussian PSF used when it is not measured: wing sigma twice the
#: core's and a quarter of the flux in the wing (close to the median measured on the stars of
#: field 2820-3-122 and to typical psField ``psf_sigma2/psf_sigma1`` and ``psf_b``).
SDSS_PSF_RATIO = 2.0
SDSS_PSF_WING = 0.25


def default_psf(frame_set: Any, band: str = "r", fwhm_arcsec: float | None = None) -> PsfShape:
    """The PSF for a frame set: ``fwhm_arcsec`` if given, else psField's, else 1.4 arcsec.

    The shape (wing ratio and fraction) is :data:`SDSS_PSF_RATIO`, :data:`SDSS_PSF_WING`;
    :func:`measure_psf` measures all three on the field's stars instead.
    """
    if fwhm_arcsec is not None:
        if not (math.isfinite(fwhm_arcsec) and fwhm_arcsec > 0):
            raise NucleiError(f"seeing must be a positive number of arcsec, got {fwhm_arcsec!r}")
        return PsfShape(float(fwhm_arcsec), SDSS_PSF_RATIO, SDSS_PSF_WING, "given")
    psf = getattr(frame_set, "psf", {}) or {}
    if band in psf:
        return PsfShape(float(psf[band].fwhm_arcsec), SDSS_PSF_RATIO, SDSS_PSF_WING, "psField")
    return PsfShape(DEFAULT_SEEING_ARCSEC, SDSS_PSF_RATIO, SDSS_PSF_WING, "default")


def field_image(
    frame_set: Any,
    ra: float,
    dec: float,
    *,
    band: str = "r",
    size: int = 64,
    psf: PsfShape | None = None,
) -> FieldImage:
    """Cut ``size`` x ``size`` pixels of one band at (ra, dec), without resampling the noise.

    The cutout keeps the reference band's pixel axes and uses nearest-pixel sampling
    (:class:`~ssald_desktop.core.cutouts.CutoutEngine` with ``orientation="native"``,
    ``interpolation=0``), so every pixel is an original frame pixel with independent noise,
    which the chi-square of the fit assumes. ``psf`` defaults to :func:`default_psf`.

    Raises
    ------
    OutsideFieldError
        The position is outside the field.
    """
    from astropy.coordinates import SkyCoord
    from astropy.stats import sigma_clipped_stats

    from ssald_desktop.core.cutouts import CutoutEngine, NormSpec
    from ssald_desktop.core.sources import _band_gain

    # NormSpec needs three bands for its colour mapping; only ``band`` is measured.
    b1, b2, b3 = tuple(dict.fromkeys((band, "r", "g", "i")))[:3]
    spec = NormSpec(bands=(b1, b2, b3), rgb=(b1, b2, b3), size=size, output_size=size,
                    orientation="native", interpolation=0)  # fmt: skip
    cut = CutoutEngine(frame_set, spec).cut(SkyCoord(ra, dec, unit="deg"))
    image = np.array(cut.band(band), dtype=float)
    mask = np.array(cut.band_mask(band), dtype=bool)
    psf = psf if psf is not None else default_psf(frame_set, band)
    frame = frame_set[band]
    gain_factor = 0.0
    if frame.calib is not None:
        gain_factor = float(np.median(frame.calib)) / _band_gain(frame, band)
    good = ~mask & np.isfinite(image)
    noise = 0.0
    if good.any():
        noise = float(sigma_clipped_stats(image[good], sigma=3.0, maxiters=10)[2])
    return FieldImage(image, mask, cut.wcs, cut.pixel_scale, psf, noise, gain_factor)


def find_nuclei_in_field(
    frame_set: Any,
    ra: float,
    dec: float,
    *,
    z: float | None = None,
    band: str = "r",
    size: int = 64,
    psf: PsfShape | None = None,
    cosmology: str = DEFAULT_COSMOLOGY,
    shape_test: bool = True,
) -> NucleiResult:
    """Find the nuclei of the galaxy at (ra, dec) of a frame set (see :func:`field_image`).

    Positions are pixels of the cutout (:attr:`NucleiResult.shape`), with RA/Dec for each
    nucleus. The noise is the sky's plus the photon noise of the source.

    Raises
    ------
    OutsideFieldError
        The position is outside the field.
    """
    fi = field_image(frame_set, ra, dec, band=band, size=size, psf=psf)
    return find_in_field_image(fi, z=z, cosmology=cosmology, shape_test=shape_test)


def find_in_field_image(
    fi: FieldImage, *, z: float | None = None, cosmology: str = DEFAULT_COSMOLOGY,
    image: np.ndarray | None = None, shape_test: bool = True,
) -> NucleiResult:
    """:func:`find_nuclei` on a :class:`FieldImage` (``image`` replaces its pixels if given)."""
    return find_nuclei(
        fi.image if image is None else image,
        psf_fwhm_px=fi.psf_fwhm_px,
        pixel_scale=fi.pixel_scale,
        z=z,
        mask=fi.mask,
        noise=fi.noise if fi.noise > 0 else None,
        gain_factor=fi.gain_factor,
        psf_source=fi.psf.source,
        cosmology=cosmology,
        wcs=fi.wcs,
        psf_wing_ratio=fi.psf.ratio,
        psf_wing_fraction=fi.psf.wing,
        shape_test=shape_test and fi.psf.source != "default",
    )
