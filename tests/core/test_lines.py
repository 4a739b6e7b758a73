"""Narrow-line fits, double-peak test and BPT class on the real SDSS spectra."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from ssald_desktop.core.lines import (
    C_KMS,
    REST,
    analyze_spectrum,
    bpt_class,
    bpt_from_fluxes,
    bpt_from_spzline,
)
from ssald_desktop.core.spectra import read_spectrum
from tests.conftest import DATA

SPECTRA = DATA / "sdss" / "spectra"
SPEC0266 = sorted(p.name for p in SPECTRA.glob("spec-0266-*.fits"))
AGN = {"Seyfert", "LINER", "AGN"}


def test_bpt_lines_classify_known_points():
    assert bpt_class(-0.6, -0.2)[0] == "star-forming"
    assert bpt_class(-0.2, 0.0)[0] == "composite"  # between Kauffmann 2003 and Kewley 2001
    cls, _, method = bpt_class(0.0, 1.0)
    assert cls == "Seyfert" and method.startswith("Schawinski")
    assert bpt_class(0.0, 0.2)[0] == "LINER"
    assert bpt_class(0.6, -0.5)[0] in AGN  # beyond the Kewley 2001 asymptote
    cls, _, method = bpt_class(-0.1, 0.8, sii=-0.3)
    assert cls == "Seyfert" and method.startswith("Kewley 2006")
    assert bpt_class(-0.1, 0.4, sii=0.0)[0] == "LINER"
    # a lower limit below the Kewley line decides nothing
    assert bpt_class(-0.5, 0.0, y_limit="lower")[0] is None


def test_bpt_from_fluxes_needs_detections():
    r = bpt_from_fluxes((10, 1), (10, 1), (5, 3), (3, 1))
    assert r.status == "not measurable" and "H-alpha" in r.message
    r = bpt_from_fluxes((100, 5), (50, 5), (400, 10), (100, 8))
    assert r.status == "classified" and r.bpt_class == "star-forming"
    assert r.log_nii_ha == pytest.approx(math.log10(0.25))


@pytest.mark.parametrize("name", ["spec-0411-51817-0119.fits", "spec-0412-51871-0308.fits",
                                  "spec-0412-52254-0320.fits"])
def test_star_forming_galaxies_agree_with_spzline(name):
    spec = read_spectrum(SPECTRA / name)
    ev = analyze_spectrum(spec)
    assert ev.status == "measured"
    assert ev.bpt.bpt_class == "star-forming" == ev.bpt_spzline.bpt_class
    # line ratios close to the pipeline's (different continuum treatment: 0.1 dex)
    assert ev.bpt.log_nii_ha == pytest.approx(ev.bpt_spzline.log_nii_ha, abs=0.1)
    for line in ("H-alpha", "[NII] 6584", "[OIII] 5007"):
        assert ev.lines[line].detected
        assert abs(ev.lines[line].velocity) < 150  # at the pipeline redshift
    assert not ev.oiii.double_peaked
    json.dumps(ev.to_dict())


@pytest.mark.parametrize("name", SPEC0266)
def test_spec0266_class_agrees_with_spzline(name):
    spec = read_spectrum(SPECTRA / name)
    ev = analyze_spectrum(spec)
    fit, spz = ev.bpt, ev.bpt_spzline
    assert fit is not None and spz is not None
    if spz.status == "classified" and fit.status == "classified":
        same = fit.bpt_class == spz.bpt_class
        both_agn = fit.bpt_class in AGN and spz.bpt_class in AGN and "AGN" in (
            fit.bpt_class, spz.bpt_class)
        assert same or both_agn, (fit.message, spz.message)
    else:
        # when one side cannot classify, the other must not claim a definite class either,
        # except an AGN call that a limit leaves open on the other side
        assert fit.status == spz.status or "undecided" in (fit.message + spz.message), (
            fit.message, spz.message)
    for lf in ev.lines.values():
        assert math.isfinite(lf.flux) and lf.flux_err > 0


def test_agn_found_in_spec0266_0001():
    ev = analyze_spectrum(read_spectrum(SPECTRA / "spec-0266-51602-0001.fits"))
    assert ev.bpt.bpt_class in AGN
    assert ev.bpt_spzline.bpt_class in AGN


@pytest.mark.parametrize("name", ["spec-3126-54804-0211.fits", "spec-3127-54835-0622.fits",
                                  "spec-7330-56684-0434.fits"])
def test_f_stars_are_not_measurable(name):
    ev = analyze_spectrum(read_spectrum(SPECTRA / name))
    assert ev.status == "not measurable"
    assert ev.message.startswith("not measurable: ") and "star" in ev.message
    assert ev.lines == {} and ev.bpt is None
    assert not ev.to_dict()["lines"]


def test_qso_without_oiii_coverage_is_not_measurable():
    ev = analyze_spectrum(read_spectrum(SPECTRA / "spec-5290-55862-0984.fits"))
    assert ev.status == "not measurable"
    assert ev.oiii.status == "not measurable"
    assert "[OIII] 5007" in ev.oiii.message and "outside the spectrum" in ev.oiii.message
    assert ev.bpt.status == "not measurable" and ev.bpt.bpt_class is None
    assert ev.lines == {}


def test_masked_pixels_over_oiii_are_not_measurable():
    spec = read_spectrum(SPECTRA / "spec-0412-51871-0308.fits")
    obs = REST["[OIII] 5007"] * (1 + spec.z)
    ivar = np.array(spec.ivar)
    ivar[np.abs(spec.wavelength - obs) < obs * 700 / C_KMS] = 0.0
    masked = dataclasses.replace(spec, ivar=ivar)
    ev = analyze_spectrum(masked)
    assert ev.oiii.status == "not measurable" and "masked" in ev.oiii.message
    assert ev.bpt.status == "not measurable"
    assert "[OIII] 5007" not in ev.lines
    # and_mask bits count as masked too (FULLREJECT = bit 18)
    and_mask = np.array(spec.and_mask)
    and_mask[np.abs(spec.wavelength - obs) < obs * 700 / C_KMS] |= 1 << 18
    ev = analyze_spectrum(dataclasses.replace(spec, and_mask=and_mask))
    assert ev.oiii.status == "not measurable"


def test_injected_double_peak_is_found():
    """A second [OIII] system 450 km/s redward, added to a real spectrum, is detected."""
    spec = read_spectrum(SPECTRA / "spec-0412-51871-0308.fits")
    base = analyze_spectrum(spec)
    assert not base.oiii.double_peaked
    o3 = base.lines["[OIII] 5007"]
    flux = np.array(spec.flux)
    dv = 450.0
    for name, scale in (("[OIII] 5007", 1.0), ("[OIII] 4959", 1 / 2.98)):
        centre = REST[name] * (1 + spec.z) * (1 + (o3.velocity + dv) / C_KMS)
        sd = centre * o3.sigma_kms / C_KMS
        flux += (o3.flux * scale / (sd * math.sqrt(2 * math.pi))
                 * np.exp(-0.5 * ((spec.wavelength - centre) / sd) ** 2))  # fmt: skip
    ev = analyze_spectrum(dataclasses.replace(spec, flux=flux))
    assert ev.oiii.double_peaked, ev.oiii.message
    assert ev.oiii.velocity_split_kms == pytest.approx(dv, abs=100)
    assert ev.oiii.delta_bic > 10
    curve = ev.oiii_curve.to_dict()
    assert {"[OIII] comp 1", "[OIII] comp 2"} <= set(curve["components"])
    assert len(curve["wavelength"]) == len(curve["total"])


def test_spzline_missing_is_reported():
    spec = read_spectrum(SPECTRA / "spec-0412-51871-0308.fits")
    r = bpt_from_spzline(dataclasses.replace(spec, lines=None))
    assert r.status == "not measurable" and "SPZLINE" in r.message
