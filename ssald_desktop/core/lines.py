"""Spectral evidence for an AGN: narrow-line fits, double peaks and the BPT class.

From one SDSS spectrum (:class:`~ssald_desktop.core.spectra.Spectrum`) at its redshift:

Line fits
    Two windows are fitted by least squares (:mod:`astropy.modeling`,
    :class:`~astropy.modeling.fitting.LevMarLSQFitter`, weighted by ``sqrt(ivar)``), each with a
    linear continuum (a local continuum subtraction done in the same fit) and Gaussian lines
    that share one velocity and one velocity width within a kinematic component:
    H-beta + [OIII] 4959, 5007 (rest 4800-5060 A) and H-alpha + [NII] 6548, 6584 + [SII]
    6716, 6731 (rest 6490-6760 A). The doublet ratios are fixed by atomic physics,
    [OIII] 5007/4959 = 2.98 and [NII] 6584/6548 = 3.05 (Storey & Zeippen 2000, MNRAS 312,
    813). The stellar Balmer absorption under H-beta and H-alpha is modelled as a broad
    negative Gaussian (800-2000 km/s) at the line, a simple stand-in for a stellar-population
    continuum fit.
Single vs double
    The [OIII] doublet (and H-alpha + [NII]) is fitted with one and with two kinematic
    components. The Bayesian information criterion ``BIC = chi2 + k ln n`` (Schwarz 1978)
    decides: two components when ``BIC_1 - BIC_2 > 10`` ("very strong", Kass & Raftery 1995).
    They are *double-peaked* when the peaks are resolved, ``|v_1 - v_2| > sigma_1 + sigma_2``,
    and each component has S/N >= 3 with flux ratio <= 10 (after the double-peaked [OIII]
    selections of Wang et al. 2009, ApJ 705, L76, Liu et al. 2010, ApJ 708, 427 and Smith et
    al. 2010, ApJ 716, 866); otherwise the second component is a wing or a broad base. The
    velocity splitting ``v_2 - v_1`` (km/s) is reported.
BPT class
    ``log([OIII]5007/H-beta)`` against ``log([NII]6584/H-alpha)`` (Baldwin, Phillips &
    Terlevich 1981): below Kauffmann et al. (2003, MNRAS 346, 1055),
    ``y = 0.61 / (x - 0.05) + 1.3``, star-forming; between it and Kewley et al. (2001, ApJ 556,
    121), ``y = 0.61 / (x - 0.47) + 1.19``, composite; above, AGN. AGN are split into Seyfert
    and LINER with Kewley et al. (2006, MNRAS 372, 961) on the [SII] diagram,
    ``y = 1.89 log([SII]/H-alpha) + 0.76``, when [SII] 6716+6731 is detected, otherwise with
    Schawinski et al. (2007, MNRAS 382, 1415) on the [NII] diagram, ``y = 1.05 x + 0.45``; the
    result says which. A line needs S/N >= 3 (Brinchmann et al. 2004); an undetected
    H-beta or [OIII] gives a 3-sigma limit, and the class is given only when the limit
    decides it. The same classifier runs on the SDSS ``SPZLINE`` fluxes when the file has them.

Every answer that cannot be measured says why, starting "not measurable: " (no redshift, the
lines outside the spectrum at this redshift, masked pixels over a line, a star, no detected
line): never a number made up.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssald_desktop.core.errors import SsaldError

__all__ = [
    "BAD_PIXEL_BITS",
    "BptResult",
    "ComponentTest",
    "LineFlux",
    "ModelCurve",
    "NII_RATIO",
    "OIII_RATIO",
    "SpectralEvidence",
    "analyze_spectrum",
    "bpt_class",
    "bpt_from_fluxes",
    "bpt_from_spzline",
]

#: Speed of light (km/s).
C_KMS = 299_792.458

#: [OIII] 5007 / 4959 flux ratio (Storey & Zeippen 2000, MNRAS 312, 813).
OIII_RATIO = 2.98
#: [NII] 6584 / 6548 flux ratio (Storey & Zeippen 2000).
NII_RATIO = 3.05

#: Vacuum rest wavelengths (Angstrom), as in :data:`ssald_desktop.core.spectra.EMISSION_LINES`.
REST = {
    "H-beta": 4862.68,
    "[OIII] 4959": 4960.30,
    "[OIII] 5007": 5008.24,
    "[NII] 6548": 6549.86,
    "H-alpha": 6564.61,
    "[NII] 6584": 6585.27,
    "[SII] 6716": 6718.29,
    "[SII] 6731": 6732.67,
}

#: SPPIXMASK bits that make a pixel unusable (SDSS data model): NOPLUG, BADTRACE, BADFLAT,
#: BADARC, FULLREJECT, NOSKY, NODATA, COMBINEREJ, BADFLUXFACTOR. Informational bits such as
#: MANYBADCOLUMNS, NEARBADPIXEL or BRIGHTSKY are kept.
BAD_PIXEL_BITS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 18) | (1 << 22) | (1 << 24) | (
    1 << 25
) | (1 << 26)

#: Minimum S/N of a detected line.
MIN_SNR = 3.0
#: BIC improvement that selects two components (Kass & Raftery 1995, "very strong").
DELTA_BIC = 10.0
#: Largest fraction of masked pixels within +-500 km/s of a line.
MAX_MASKED = 0.2

_WINDOWS = {
    "blue": (4800.0, 5060.0, ("H-beta", "[OIII] 4959", "[OIII] 5007")),
    "red": (6490.0, 6760.0, ("[NII] 6548", "H-alpha", "[NII] 6584", "[SII] 6716", "[SII] 6731")),
}

NOT_MEASURABLE = "not measurable"


class LinesError(SsaldError):
    """A spectrum or value that the line fit cannot take (e.g. a negative redshift)."""


# =============================================================================== results
def _jf(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LineFlux:
    """One fitted emission line (sum of its kinematic components).

    Attributes
    ----------
    name : str
        e.g. ``"[OIII] 5007"``.
    flux, flux_err : float
        Line flux and its 1-sigma error (1e-17 erg/s/cm2).
    velocity, sigma_kms : float
        Velocity offset from the systemic redshift and Gaussian width (km/s, of the first
        component; the instrumental ~65 km/s is included).
    """

    name: str
    flux: float
    flux_err: float
    velocity: float
    sigma_kms: float

    @property
    def snr(self) -> float:
        """Flux over its error."""
        return self.flux / self.flux_err if self.flux_err > 0 else math.nan

    @property
    def detected(self) -> bool:
        """S/N >= 3."""
        return bool(self.flux_err > 0 and self.snr >= MIN_SNR)

    @property
    def upper_limit(self) -> float:
        """3-sigma upper limit (flux if positive, plus 3 sigma)."""
        return max(self.flux, 0.0) + MIN_SNR * self.flux_err

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary (NaN written as None)."""
        return {
            "name": self.name,
            "flux": _jf(self.flux),
            "flux_err": _jf(self.flux_err),
            "snr": _jf(self.snr),
            "detected": self.detected,
            "velocity_kms": _jf(self.velocity),
            "sigma_kms": _jf(self.sigma_kms),
        }


@dataclass
class ModelCurve:
    """A fitted window, for drawing: observed wavelength, data and each model component.

    ``components`` maps a label (``"[OIII] comp 1"``, ``"[OIII] comp 2"``, ``"H-beta"``) to the
    line flux density of that component alone (continuum excluded).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    continuum: np.ndarray
    total: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Lists for JSON."""

        def lst(a: np.ndarray) -> list[float | None]:
            return [_jf(v) for v in np.asarray(a, float)]

        return {
            "wavelength": lst(self.wavelength),
            "flux": lst(self.flux),
            "continuum": lst(self.continuum),
            "total": lst(self.total),
            "components": {k: lst(v) for k, v in self.components.items()},
        }


@dataclass
class ComponentTest:
    """Single against double Gaussian for one line group.

    Attributes
    ----------
    group : str
        ``"[OIII] 5007"`` or ``"H-alpha+[NII]"``.
    status : str
        ``"double-peaked"``, ``"two components"`` (a wing or broad base, peaks not resolved),
        ``"single"`` or ``"not measurable"``.
    message : str
        One line; starts ``"not measurable: "`` for that status.
    delta_bic : float or None
        ``BIC_single - BIC_double`` (positive favours two components).
    velocity_split_kms : float or None
        ``v_2 - v_1`` of the two components (km/s).
    components : list of dict
        ``velocity_kms``, ``sigma_kms``, ``flux``, ``flux_err`` of each component of the chosen
        model.
    """

    group: str
    status: str
    message: str
    delta_bic: float | None = None
    velocity_split_kms: float | None = None
    components: list[dict[str, Any]] = field(default_factory=list)

    @property
    def double_peaked(self) -> bool:
        """True for a resolved double peak."""
        return self.status == "double-peaked"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary."""
        return {
            "group": self.group,
            "status": self.status,
            "message": self.message,
            "double_peaked": self.double_peaked,
            "delta_bic": _jf(self.delta_bic),
            "velocity_split_kms": _jf(self.velocity_split_kms),
            "components": [{k: _jf(v) for k, v in c.items()} for c in self.components],
        }


@dataclass
class BptResult:
    """A BPT classification.

    Attributes
    ----------
    status : str
        ``"classified"`` or ``"not measurable"``.
    bpt_class : str or None
        ``"star-forming"``, ``"composite"``, ``"Seyfert"``, ``"LINER"`` or ``"AGN"`` (AGN when
        the Seyfert/LINER split is not possible).
    message : str
        One line; says which diagram split Seyfert from LINER, or why not measurable.
    log_nii_ha, log_oiii_hb, log_sii_ha : float or None
        The point (log10 ratios); ``oiii_hb_limit`` says when ``log_oiii_hb`` is a limit
        (``"lower"`` or ``"upper"``).
    source : str
        ``"fit"`` or ``"SPZLINE"``.
    seyfert_liner : str or None
        ``"Kewley 2006 [SII]"`` or ``"Schawinski 2007 [NII]"``.
    """

    status: str
    bpt_class: str | None
    message: str
    log_nii_ha: float | None = None
    log_oiii_hb: float | None = None
    log_sii_ha: float | None = None
    oiii_hb_limit: str | None = None
    source: str = "fit"
    seyfert_liner: str | None = None

    @property
    def is_agn(self) -> bool:
        """Seyfert, LINER or AGN (composite is not counted)."""
        return self.bpt_class in ("Seyfert", "LINER", "AGN")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary."""
        return {
            "status": self.status,
            "class": self.bpt_class,
            "message": self.message,
            "is_agn": self.is_agn,
            "log_nii_ha": _jf(self.log_nii_ha),
            "log_oiii_hb": _jf(self.log_oiii_hb),
            "log_sii_ha": _jf(self.log_sii_ha),
            "oiii_hb_limit": self.oiii_hb_limit,
            "source": self.source,
            "seyfert_liner": self.seyfert_liner,
        }


@dataclass
class SpectralEvidence:
    """Everything :func:`analyze_spectrum` measured on one spectrum."""

    name: str
    z: float | None
    status: str
    message: str
    lines: dict[str, LineFlux] = field(default_factory=dict)
    oiii: ComponentTest | None = None
    halpha: ComponentTest | None = None
    bpt: BptResult | None = None
    bpt_spzline: BptResult | None = None
    oiii_curve: ModelCurve | None = None
    halpha_curve: ModelCurve | None = None
    spec_class: str | None = None
    subclass: str | None = None

    @property
    def measurable(self) -> bool:
        """False when nothing could be measured."""
        return self.status != NOT_MEASURABLE

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """Plain-Python dictionary; ``curves`` adds the fitted model curves for drawing."""
        out: dict[str, Any] = {
            "name": self.name,
            "z": _jf(self.z),
            "spec_class": self.spec_class,
            "subclass": self.subclass,
            "status": self.status,
            "message": self.message,
            "lines": {k: v.to_dict() for k, v in self.lines.items()},
            "oiii_test": None if self.oiii is None else self.oiii.to_dict(),
            "halpha_test": None if self.halpha is None else self.halpha.to_dict(),
            "bpt": None if self.bpt is None else self.bpt.to_dict(),
            "bpt_spzline": None if self.bpt_spzline is None else self.bpt_spzline.to_dict(),
        }
        if curves:
            out["oiii_curve"] = None if self.oiii_curve is None else self.oiii_curve.to_dict()
            out["halpha_curve"] = (
                None if self.halpha_curve is None else self.halpha_curve.to_dict()
            )
        return out


# =============================================================================== BPT
def kauffmann03(x: float) -> float:
    """Kauffmann et al. (2003) star-forming limit, ``0.61 / (x - 0.05) + 1.3`` (x < 0.05)."""
    return 0.61 / (x - 0.05) + 1.3


def kewley01(x: float) -> float:
    """Kewley et al. (2001) maximum starburst line, ``0.61 / (x - 0.47) + 1.19`` (x < 0.47)."""
    return 0.61 / (x - 0.47) + 1.19


def kewley01_sii(x: float) -> float:
    """Kewley et al. (2001) line on the [SII] diagram, ``0.72 / (x - 0.32) + 1.30``."""
    return 0.72 / (x - 0.32) + 1.30


def bpt_class(
    x: float, y: float, sii: float | None = None, y_limit: str | None = None
) -> tuple[str | None, str, str | None]:
    """Classify one BPT point.

    Parameters
    ----------
    x, y : float
        ``log([NII]6584/H-alpha)``, ``log([OIII]5007/H-beta)``.
    sii : float, optional
        ``log([SII]6716+6731 / H-alpha)`` for the Kewley 2006 Seyfert/LINER split.
    y_limit : {None, "lower", "upper"}
        ``y`` is only a limit; a class is returned only when the limit decides it.

    Returns
    -------
    (class or None, message, Seyfert/LINER method or None)
    """
    if x >= 0.47:
        region = "agn"
    else:
        above_k01 = y > kewley01(x)
        above_ka03 = x >= 0.05 or y > kauffmann03(x)
        region = "agn" if above_k01 else ("composite" if above_ka03 else "sf")
        if y_limit == "lower" and region != "agn":
            return None, "undecided: H-beta undetected and the [OIII]/H-beta lower limit lies "\
                "below the Kewley 2001 line", None
        if y_limit == "upper" and region != "sf":
            if x >= 0.05 and region == "composite":
                pass
            else:
                return None, "undecided: [OIII] undetected and its upper limit lies above the "\
                    "Kauffmann 2003 line", None
    if region == "sf":
        return "star-forming", "below the Kauffmann 2003 line", None
    if region == "composite":
        return "composite", "between the Kauffmann 2003 and Kewley 2001 lines", None
    if y_limit == "upper":
        return "AGN", "beyond Kewley 2001 on [NII]/H-alpha; [OIII] undetected, so Seyfert "\
            "and LINER cannot be told apart", None
    if sii is not None:
        cls = "Seyfert" if y > 1.89 * sii + 0.76 else "LINER"
        if y_limit == "lower" and cls == "LINER":
            return "AGN", "above Kewley 2001; the H-beta limit cannot split Seyfert/LINER", None
        return cls, f"above Kewley 2001; {cls} by Kewley 2006 on [SII]/H-alpha", \
            "Kewley 2006 [SII]"
    cls = "Seyfert" if y > 1.05 * x + 0.45 else "LINER"
    if y_limit == "lower" and cls == "LINER":
        return "AGN", "above Kewley 2001; the H-beta limit cannot split Seyfert/LINER", None
    return cls, f"above Kewley 2001; {cls} by Schawinski 2007 on [NII]/H-alpha", \
        "Schawinski 2007 [NII]"


def bpt_from_fluxes(
    hb: tuple[float, float],
    oiii: tuple[float, float],
    ha: tuple[float, float],
    nii: tuple[float, float],
    sii: tuple[float, float] | None = None,
    source: str = "fit",
) -> BptResult:
    """BPT class from (flux, error) pairs of H-beta, [OIII]5007, H-alpha, [NII]6584, [SII].

    H-alpha and [NII] must be detected (S/N >= 3); an undetected H-beta or [OIII] gives a
    3-sigma limit on ``[OIII]/H-beta`` (both undetected: not measurable).
    """

    def det(pair: tuple[float, float]) -> bool:
        f, e = pair
        return bool(math.isfinite(f) and math.isfinite(e) and e > 0 and f / e >= MIN_SNR)

    def lim(pair: tuple[float, float]) -> float:
        f, e = pair
        return max(f, 0.0) + MIN_SNR * e

    missing = [n for n, p in (("H-alpha", ha), ("[NII] 6584", nii)) if not det(p)]
    if missing:
        return BptResult(NOT_MEASURABLE, None, f"{NOT_MEASURABLE}: {' and '.join(missing)} "
                         f"not detected at S/N >= {MIN_SNR:g}", source=source)  # fmt: skip
    x = math.log10(nii[0] / ha[0])
    hb_ok, o3_ok = det(hb), det(oiii)
    limit = None
    if hb_ok and o3_ok:
        y = math.log10(oiii[0] / hb[0])
    elif o3_ok and hb[1] > 0:
        y, limit = math.log10(oiii[0] / lim(hb)), "lower"
    elif hb_ok and oiii[1] > 0:
        y, limit = math.log10(lim(oiii) / hb[0]), "upper"
    else:
        return BptResult(NOT_MEASURABLE, None, f"{NOT_MEASURABLE}: neither H-beta nor [OIII] "
                         f"5007 detected at S/N >= {MIN_SNR:g}", log_nii_ha=x,
                         source=source)  # fmt: skip
    s = None
    if sii is not None and det(sii):
        s = math.log10(sii[0] / ha[0])
    cls, why, method = bpt_class(x, y, s, limit)
    if cls is None:
        return BptResult(NOT_MEASURABLE, None, f"{NOT_MEASURABLE}: {why}", x, y, s, limit,
                         source)  # fmt: skip
    return BptResult("classified", cls, f"{cls}: {why}", x, y, s, limit, source, method)


def bpt_from_spzline(spectrum: Any) -> BptResult:
    """The BPT class implied by the SDSS ``SPZLINE`` fluxes (same rules as the fit)."""
    if spectrum.lines is None:
        return BptResult(NOT_MEASURABLE, None, f"{NOT_MEASURABLE}: no SPZLINE table in "
                         f"{spectrum.path.name}", source="SPZLINE")  # fmt: skip

    def get(name: str) -> tuple[float, float]:
        try:
            m = spectrum.line(name)
        except KeyError:
            return (math.nan, math.nan)
        return (m.flux, m.flux_err) if m.measured else (math.nan, math.nan)

    s1, s2 = get("[S_II] 6716"), get("[S_II] 6730")
    sii = (s1[0] + s2[0], math.hypot(s1[1], s2[1]))
    return bpt_from_fluxes(
        get("H_beta"), get("[O_III] 5007"), get("H_alpha"), get("[N_II] 6583"), sii, "SPZLINE"
    )


# =============================================================================== fitting
def _usable(spectrum: Any) -> np.ndarray:
    ok = np.asarray(spectrum.good, bool).copy()
    if spectrum.and_mask is not None:
        ok &= (np.asarray(spectrum.and_mask) & BAD_PIXEL_BITS) == 0
    return ok


def _coverage(spectrum: Any, z: float, names: tuple[str, ...], ok: np.ndarray) -> str | None:
    """Why the lines cannot be measured (outside the spectrum, masked), or None."""
    wl = spectrum.wavelength
    lo, hi = float(wl[0]), float(wl[-1])
    for name in names:
        obs = REST[name] * (1 + z)
        if not (lo + 10 <= obs <= hi - 10):
            return (f"{name} falls at {obs:.0f} A at z={z:.4f}, outside the spectrum "
                    f"({lo:.0f}-{hi:.0f} A)")  # fmt: skip
        near = np.abs(wl - obs) <= obs * 500.0 / C_KMS
        if near.sum() == 0 or 1.0 - ok[near].mean() > MAX_MASKED:
            bad = 1.0 - (ok[near].mean() if near.any() else 0.0)
            return (f"{bad:.0%} of the pixels within 500 km/s of {name} ({obs:.0f} A) are "
                    "masked (ivar = 0 or bad and_mask bits)")  # fmt: skip
    return None


def _gauss(amp: float, mean: float, sigma: float) -> Any:
    from astropy.modeling.models import Gaussian1D

    return Gaussian1D(amp, mean, sigma)


def _build(z: float, names: tuple[str, ...], main: str, n_comp: int, cont: tuple[float, float],
           peaks: dict[str, float], v0: float = 0.0, sig0: float = 150.0, split: float = 200.0,
           absorb: dict[str, tuple[float, float]] | None = None,
           ) -> tuple[Any, dict[str, list[int]]]:
    """Linear continuum + Gaussians; per component all lines share velocity and width.

    Returns the compound model and, per line name, the indices of its Gaussians.
    """
    from astropy.modeling.models import Linear1D

    leader = "[OIII] 5007" if "[OIII] 5007" in names else "[NII] 6584"
    lin = Linear1D(cont[0], cont[1])
    parts: list[Any] = [lin]
    index: dict[str, list[int]] = {n: [] for n in names}
    for c in range(n_comp):
        dv = v0 + (0.0 if n_comp == 1 else (-split if c == 0 else split))
        for name in names:
            if c > 0 and name.startswith("[SII]") or c > 0 and name == "H-beta":
                continue  # weak lines: one component
            obs = REST[name] * (1 + z) * (1 + dv / C_KMS)
            # Two components start as a split of the one-component profile: same total flux,
            # widths sqrt(sigma^2 - split^2), so that the start is close to the single fit.
            sig_c = sig0 if n_comp == 1 else math.sqrt(max(sig0**2 - split**2, (0.4 * sig0) ** 2))
            sig = obs * sig_c / C_KMS
            amp = max(peaks.get(name, 0.0), 0.0) / n_comp * (sig0 / sig_c)
            g = _gauss(amp, obs, sig)
            g.amplitude.bounds = (0.0, None)
            g.stddev.bounds = (obs * 30.0 / C_KMS, obs * (700.0 if n_comp == 1 or c == 0 else
                                                        1500.0) / C_KMS)
            width = 800.0 if n_comp == 1 else 1500.0
            g.mean.bounds = (REST[name] * (1 + z) * (1 - width / C_KMS),
                             REST[name] * (1 + z) * (1 + width / C_KMS))
            index[name].append(len(parts))
            parts.append(g)
    # Stellar Balmer absorption under H-beta and H-alpha: a broad Gaussian of negative
    # amplitude at the line, its width free within 800-2000 km/s (broader than any narrow
    # line, so that it does not trade flux with the emission).
    for name in ("H-beta", "H-alpha"):
        if name not in names:
            continue
        obs = REST[name] * (1 + z)
        a0, s0 = (absorb or {}).get(name, (-0.1 * abs(max(peaks.get(name, 0.0), 1e-3)),
                                           obs * 1000.0 / C_KMS))  # fmt: skip
        g = _gauss(min(a0, 0.0), obs, min(max(s0, obs * 800.0 / C_KMS), obs * 2000.0 / C_KMS))
        g.amplitude.bounds = (None, 0.0)
        g.stddev.bounds = (obs * 800.0 / C_KMS, obs * 2000.0 / C_KMS)
        index[f"{name} absorption"] = [len(parts)]
        parts.append(g)
    model = parts[0]
    for p in parts[1:]:
        model = model + p
    for name in ("H-beta", "H-alpha"):
        if f"{name} absorption" in index:
            k = index[f"{name} absorption"][0]
            ratio = REST[name] / REST[leader]
            getattr(model, f"mean_{k}").tied = _tie_scaled(f"mean_{index[leader][0]}", ratio)
    # Ties (as the SDSS zline fits): within a component the forbidden lines share one velocity
    # and one width, led by [OIII] 5007 or [NII] 6584; the Balmer line shares the velocity and
    # has its own width.
    for c in range(n_comp):
        lead = index[leader][c]
        for name in names:
            if name == leader or len(index[name]) <= c:
                continue
            k = index[name][c]
            ratio = REST[name] / REST[leader]
            getattr(model, f"mean_{k}").tied = _tie_scaled(f"mean_{lead}", ratio)
            if not name.startswith("H-"):
                getattr(model, f"stddev_{k}").tied = _tie_scaled(f"stddev_{lead}", ratio)
        # doublet ratios: flux = amp * sigma * sqrt(2 pi); sigma scales with wavelength
        for weak, strong, r in (("[OIII] 4959", "[OIII] 5007", OIII_RATIO),
                                ("[NII] 6548", "[NII] 6584", NII_RATIO)):  # fmt: skip
            if weak in index and len(index[weak]) > c and len(index[strong]) > c:
                kw, ks = index[weak][c], index[strong][c]
                scale = REST[strong] / REST[weak] / r
                getattr(model, f"amplitude_{kw}").tied = _tie_scaled(f"amplitude_{ks}", scale)
    return model, index


def _clip_to_bounds(model: Any) -> None:
    """Move every free starting value inside its bounds (a fitter refuses one outside)."""
    for name in model.param_names:
        lo, hi = model.bounds[name]
        par = getattr(model, name)
        value = float(par.value)
        if lo is not None and value < lo:
            par.value = lo
        if hi is not None and value > hi:
            par.value = hi


def _tie_scaled(param: str, factor: float) -> Any:
    def tie(m: Any) -> float:
        return float(getattr(m, param).value) * factor

    return tie


def _fit_window(
    spectrum: Any, z: float, window: str, n_comp: int, ok: np.ndarray,
    start: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Fit one window with ``n_comp`` kinematic components.

    With ``start`` (the one-component fit) the two components start around it, split by 0.5
    and 1.5 times its width, and the better fit is kept.
    """
    if start is None or n_comp == 1:
        return _fit_window_once(spectrum, z, window, n_comp, ok, None, 0.0)
    best = None
    for factor in (0.5, 1.5):
        fit = _fit_window_once(spectrum, z, window, n_comp, ok, start, factor)
        if fit is not None and (best is None or fit["chi2"] < best["chi2"]):
            best = fit
    return best


def _fit_window_once(
    spectrum: Any, z: float, window: str, n_comp: int, ok: np.ndarray,
    start: dict[str, Any] | None, factor: float,
) -> dict[str, Any] | None:
    from astropy.modeling.fitting import LevMarLSQFitter

    lo, hi, names = _WINDOWS[window]
    main = "[OIII] 5007" if window == "blue" else "H-alpha"
    wl = spectrum.wavelength
    sel = (wl >= lo * (1 + z)) & (wl <= hi * (1 + z)) & ok
    if sel.sum() < 30:
        return None
    x = wl[sel]
    y = spectrum.flux[sel]
    w = np.sqrt(spectrum.ivar[sel])
    # Initial continuum: a line through the medians of the window's two ends.
    n = len(x)
    x1, x2 = float(np.median(x[: n // 5])), float(np.median(x[-n // 5:]))
    y1, y2 = float(np.median(y[: n // 5])), float(np.median(y[-n // 5:]))
    slope = (y2 - y1) / (x2 - x1) if x2 > x1 else 0.0
    cont = (slope, y1 - slope * x1)
    base = slope * x + cont[1]
    peaks = {}
    for name in names:
        obs = REST[name] * (1 + z)
        near = np.abs(x - obs) <= obs * 300 / C_KMS
        peaks[name] = float(np.max(y[near] - base[near])) if near.any() else 0.0
    v0, sig0 = 0.0, 150.0
    absorb: dict[str, tuple[float, float]] = {}
    if start is not None:
        sm = start["model"]
        lead = "[OIII] 5007" if "[OIII] 5007" in names else "[NII] 6584"
        k = start["index"][lead][0]
        mean, sd = float(getattr(sm, f"mean_{k}").value), float(getattr(sm, f"stddev_{k}").value)
        v0 = (mean / (REST[lead] * (1 + z)) - 1) * C_KMS
        sig0 = sd / mean * C_KMS
        cont = (float(sm[0].slope.value), float(sm[0].intercept.value))
        for name in names:
            kk = start["index"][name][0]
            peaks[name] = float(getattr(sm, f"amplitude_{kk}").value)
        for name in ("H-beta", "H-alpha"):
            if f"{name} absorption" in start["index"]:
                kk = start["index"][f"{name} absorption"][0]
                absorb[name] = (float(getattr(sm, f"amplitude_{kk}").value),
                                float(getattr(sm, f"stddev_{kk}").value))  # fmt: skip
    model, index = _build(z, names, main, n_comp, cont, peaks, v0, sig0,
                          max(60.0, factor * sig0), absorb)  # fmt: skip
    _clip_to_bounds(model)
    fitter = LevMarLSQFitter(calc_uncertainties=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = fitter(model, x, y, weights=w, maxiter=2000)
    except (ValueError, np.linalg.LinAlgError):
        return None
    resid = (fitted(x) - y) * w
    chi2 = float(np.sum(resid**2))
    k = int(sum(1 for p in fitted.param_names
                if not fitted.fixed[p] and not fitted.tied[p]))  # fmt: skip
    bic = chi2 + k * math.log(len(x))
    red = max(1.0, chi2 / max(1, len(x) - k))
    stds = {}
    if getattr(fitted, "stds", None) is not None:
        try:
            stds = dict(zip(fitted.stds.param_names, fitted.stds.stds, strict=False))
        except (TypeError, ValueError):
            stds = {}
    noise = float(np.median(1.0 / w))
    return {"model": fitted, "index": index, "x": x, "y": y, "chi2": chi2, "bic": bic,
            "k": k, "n": len(x), "stds": stds, "red": red, "noise": noise,
            "dlam": float(np.median(np.diff(x))), "main": main, "names": names}  # fmt: skip


def _component(fit: dict[str, Any], k: int) -> tuple[float, float, float, float]:
    """(flux, error, mean, stddev) of Gaussian k of a fit."""
    m = fit["model"]
    amp = float(getattr(m, f"amplitude_{k}").value)
    mean = float(getattr(m, f"mean_{k}").value)
    sd = float(getattr(m, f"stddev_{k}").value)
    flux = amp * sd * math.sqrt(2 * math.pi)
    # Error: the fitter's when the amplitude is free; else (tied or at its bound) the noise of
    # an optimally weighted Gaussian of that width, sigma_F = noise * sqrt(2 sqrt(pi) sd dlam).
    analytic = fit["noise"] * math.sqrt(2 * math.sqrt(math.pi) * max(sd, fit["dlam"]) * fit["dlam"])
    err = analytic * math.sqrt(fit["red"])
    s = fit["stds"].get(f"amplitude_{k}")
    if s is not None and math.isfinite(s) and s > 0 and amp > 0:
        err = max(err, float(s) * sd * math.sqrt(2 * math.pi) * math.sqrt(fit["red"]))
    return flux, err, mean, sd


def _line_fluxes(fit: dict[str, Any], z: float) -> dict[str, LineFlux]:
    out = {}
    for name in fit["names"]:
        comps = [_component(fit, k) for k in fit["index"][name]]
        flux = sum(c[0] for c in comps)
        err = math.sqrt(sum(c[1] ** 2 for c in comps))
        first = comps[0]
        rest_obs = REST[name] * (1 + z)
        out[name] = LineFlux(name, flux, err, (first[2] / rest_obs - 1) * C_KMS,
                             first[3] / first[2] * C_KMS)  # fmt: skip
    return out


def _test(single: dict[str, Any], double: dict[str, Any] | None, z: float, group: str
          ) -> tuple[ComponentTest, dict[str, Any]]:
    """Choose one or two components and say whether the line is double-peaked."""
    main = single["main"]

    def comps(fit: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for k in fit["index"][main]:
            f, e, mean, sd = _component(fit, k)
            rest_obs = REST[main] * (1 + z)
            out.append({"velocity_kms": (mean / rest_obs - 1) * C_KMS,
                        "sigma_kms": sd / mean * C_KMS, "flux": f, "flux_err": e})  # fmt: skip
        return out

    one = comps(single)
    if one[0]["flux_err"] <= 0 or one[0]["flux"] / one[0]["flux_err"] < MIN_SNR:
        return ComponentTest(group, NOT_MEASURABLE, f"{NOT_MEASURABLE}: {main} not detected at "
                             f"S/N >= {MIN_SNR:g}", components=one), single  # fmt: skip
    if double is None:
        return ComponentTest(group, "single", "one component (two-component fit failed)",
                             components=one), single  # fmt: skip
    # The two-component model contains the one-component model (a second component of zero
    # flux), so its chi2 can only be lower; a higher one means the optimiser stopped in a
    # local minimum, and the double is scored as no improvement at its extra parameters.
    chi2_double = min(double["chi2"], single["chi2"])
    dbic = single["bic"] - (chi2_double + double["k"] * math.log(double["n"]))
    two = sorted(comps(double), key=lambda c: c["velocity_kms"])
    split = two[1]["velocity_kms"] - two[0]["velocity_kms"]
    if dbic <= DELTA_BIC:
        return ComponentTest(group, "single", f"one component (delta BIC {dbic:.1f} <= "
                             f"{DELTA_BIC:g})", dbic, None, one), single  # fmt: skip
    snr_ok = all(c["flux_err"] > 0 and c["flux"] / c["flux_err"] >= MIN_SNR for c in two)
    fl = sorted(c["flux"] for c in two)
    ratio_ok = fl[0] > 0 and fl[1] / fl[0] <= 10.0
    resolved = abs(split) > two[0]["sigma_kms"] + two[1]["sigma_kms"]
    if snr_ok and ratio_ok and resolved:
        return ComponentTest(group, "double-peaked", f"double-peaked: two components "
                             f"{split:.0f} km/s apart (delta BIC {dbic:.1f})", dbic, split,
                             two), double  # fmt: skip
    why = "peaks not resolved" if not resolved else (
        "a component below S/N 3" if not snr_ok else "flux ratio above 10")
    return ComponentTest(group, "two components", f"two components {split:.0f} km/s apart "
                         f"(delta BIC {dbic:.1f}) but not double-peaked: {why}", dbic, split,
                         two), double  # fmt: skip


def _curve(fit: dict[str, Any], labels: dict[str, str]) -> ModelCurve:
    m = fit["model"]
    x = fit["x"]
    cont = m[0](x)
    comps: dict[str, np.ndarray] = {}
    for name, ks in fit["index"].items():
        for c, k in enumerate(ks):
            label = labels.get(name, name)
            key = f"{label} comp {c + 1}" if len(fit["index"][fit["main"]]) > 1 else label
            comps[key] = comps.get(key, np.zeros_like(x)) + m[k](x)
    return ModelCurve(x, fit["y"], cont, m(x), comps)


def analyze_spectrum(spectrum: Any, z: float | None = None) -> SpectralEvidence:
    """Fit the narrow lines of one spectrum and classify it (see the module documentation).

    Parameters
    ----------
    spectrum : Spectrum
        From :func:`~ssald_desktop.core.spectra.read_spectrum`.
    z : float, optional
        Redshift; default the pipeline's ``spectrum.z``.

    Returns
    -------
    SpectralEvidence
        Never raises for a spectrum that cannot be measured: ``status`` is
        ``"not measurable"`` and ``message`` says why; parts that can be measured (e.g. the
        [OIII] test when H-alpha is outside the spectrum) are kept.
    """
    z = spectrum.z if z is None else z
    ev = SpectralEvidence(spectrum.name, z, NOT_MEASURABLE, "", spec_class=spectrum.spec_class,
                          subclass=spectrum.subclass)  # fmt: skip
    ev.bpt_spzline = bpt_from_spzline(spectrum) if spectrum.lines is not None else None
    if z is None or not math.isfinite(z):
        ev.message = f"{NOT_MEASURABLE}: no redshift for {spectrum.name} (give z)"
        return ev
    if z < -0.01:
        raise LinesError(f"redshift must be >= 0, got {z!r}")
    if (spectrum.spec_class or "").upper() == "STAR":
        ev.message = (f"{NOT_MEASURABLE}: {spectrum.name} is a star ({spectrum.spec_class} "
                      f"{spectrum.subclass or ''}".rstrip() + "): no galaxy emission lines")
        return ev
    if spectrum.ivar is None:
        ev.message = f"{NOT_MEASURABLE}: {spectrum.name} has no inverse variance"
        return ev
    ok = _usable(spectrum)
    reasons = []
    fits: dict[str, dict[str, Any]] = {}
    for window, group in (("blue", "[OIII] 5007"), ("red", "H-alpha+[NII]")):
        core = (("[OIII] 5007", "[OIII] 4959") if window == "blue"
                else ("H-alpha", "[NII] 6584", "[NII] 6548"))  # fmt: skip
        why = _coverage(spectrum, z, core, ok)
        if why is not None:
            reasons.append(why)
            test = ComponentTest(group, NOT_MEASURABLE, f"{NOT_MEASURABLE}: {why}")
            if window == "blue":
                ev.oiii = test
            else:
                ev.halpha = test
            continue
        single = _fit_window(spectrum, z, window, 1, ok)
        if single is None:
            reasons.append(f"too few usable pixels around {group}")
            continue
        double = _fit_window(spectrum, z, window, 2, ok, single)
        test, chosen = _test(single, double, z, group)
        ev.lines.update(_line_fluxes(single, z))
        if window == "blue":
            ev.oiii = test
            ev.oiii_curve = _curve(chosen, {"[OIII] 5007": "[OIII]", "[OIII] 4959": "[OIII]"})
        else:
            ev.halpha = test
            ev.halpha_curve = _curve(chosen, {})
        fits[window] = single
        if window == "red":
            sii_why = _coverage(spectrum, z, ("[SII] 6716", "[SII] 6731"), ok)
            if sii_why is not None:
                ev.lines.pop("[SII] 6716", None)
                ev.lines.pop("[SII] 6731", None)

    if not ev.lines:
        ev.message = f"{NOT_MEASURABLE}: " + "; ".join(reasons)
        ev.bpt = BptResult(NOT_MEASURABLE, None, ev.message)
        return ev

    def pair(name: str) -> tuple[float, float]:
        lf = ev.lines.get(name)
        return (lf.flux, lf.flux_err) if lf is not None else (math.nan, math.nan)

    if "blue" in fits and "red" in fits:
        sii = None
        if "[SII] 6716" in ev.lines:
            a, b = pair("[SII] 6716"), pair("[SII] 6731")
            sii = (a[0] + b[0], math.hypot(a[1], b[1]))
        ev.bpt = bpt_from_fluxes(pair("H-beta"), pair("[OIII] 5007"), pair("H-alpha"),
                                 pair("[NII] 6584"), sii, "fit")  # fmt: skip
    else:
        ev.bpt = BptResult(NOT_MEASURABLE, None, f"{NOT_MEASURABLE}: " + "; ".join(reasons))
    detected = [n for n, lf in ev.lines.items() if lf.detected]
    if not detected:
        ev.message = f"{NOT_MEASURABLE}: no emission line detected at S/N >= {MIN_SNR:g}"
        return ev
    ev.status = "measured"
    parts = [t.message for t in (ev.oiii, ev.halpha) if t is not None]
    if ev.bpt is not None:
        parts.append(f"BPT {ev.bpt.message}")
    ev.message = "; ".join(parts)
    return ev
