"""Nuclei finder on real images: GOTHIC renders, real SDSS galaxies with injected nuclei."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ssald_desktop.core.bench_nuclei import _matched
from ssald_desktop.core.nuclei import (
    NucleiError,
    _psf,
    core_sigma,
    field_image,
    find_in_field_image,
    find_nuclei,
    load_image,
    luminance,
    measure_psf,
    projected_kpc,
)
from tests.conftest import DATA

RENDERS = DATA / "renders" / "gothic"


@pytest.fixture(scope="module")
def field_sources(quiet_field):
    from ssald_desktop.core.sources import detect_galaxies

    table = detect_galaxies(quiet_field, "r")
    return table, measure_psf(quiet_field, "r", table)


@pytest.fixture(scope="module")
def singles(quiet_field, field_sources):
    """The brightest galaxies of the quiet field that the finder calls single, with images."""
    table, psf = field_sources
    gal = table[np.asarray(table["is_galaxy"]) & (np.asarray(table["snr"]) >= 30)]
    gal.sort("snr", reverse=True)
    out = []
    for row in gal:
        fi = field_image(quiet_field, float(row["ra"]), float(row["dec"]), psf=psf)
        res = find_in_field_image(fi)
        if res.status == "single" and res.nuclei[0].snr >= 10:
            out.append((fi, res.nuclei[0]))
        if len(out) == 4:
            break
    return out


@pytest.mark.parametrize("name", ["ngc-3758.png", "discovery1.png", "discovery2.png",
                                  "discovery3.png"])
def test_gothic_renders_show_two_nuclei(name):
    res = find_nuclei(load_image(RENDERS / name))
    assert res.is_pair, res.message
    assert len(res.nuclei) == 2
    assert res.confidence >= 0.5
    assert res.separation_px > res.psf_fwhm_px  # resolved
    assert res.separation_arcsec is None  # a render has no scale unless given
    rows, cols = res.shape
    for n in res.nuclei:  # near the middle, where the target is
        assert abs(n.x - cols / 2) < 0.3 * cols and abs(n.y - rows / 2) < 0.3 * rows
    json.dumps(res.to_dict())


def test_ngc3758_nuclei_positions_and_kpc():
    # Mrk 739: the two nuclei are the bright knots left and right of the centre.
    res = find_nuclei(load_image(RENDERS / "ngc-3758.png"), pixel_scale=0.15, z=0.0297)
    assert res.is_pair
    xs = sorted(n.x for n in res.nuclei)
    assert 85 < xs[0] < 102 and 125 < xs[1] < 140
    assert res.separation_arcsec == pytest.approx(res.separation_px * 0.15)
    assert res.separation_kpc == pytest.approx(projected_kpc(res.separation_arcsec, 0.0297))
    assert "kpc" in res.message
    # Planck18: 0.6 kpc per arcsec at z = 0.0297
    assert res.separation_kpc / res.separation_arcsec == pytest.approx(0.61, abs=0.02)


def test_measured_psf_is_sdss_like(field_sources):
    _, psf = field_sources
    assert 0.8 < psf.fwhm_arcsec < 1.8
    assert psf.n_stars >= 10 and psf.source == "measured"


@pytest.mark.parametrize("sep, ratio", [(3.0, 1.0)])
def test_injected_second_nucleus_is_recovered(singles, sep, ratio):
    assert len(singles) >= 3
    rng = np.random.default_rng(1)
    found = 0
    for fi, nucleus in singles:
        shape = (core_sigma(fi.psf_fwhm_px, fi.psf.ratio, fi.psf.wing), fi.psf.ratio, fi.psf.wing)
        theta = rng.uniform(0, 2 * math.pi)
        sep_px = sep / fi.pixel_scale
        x2 = nucleus.x + sep_px * math.cos(theta)
        y2 = nucleus.y + sep_px * math.sin(theta)
        yy, xx = np.mgrid[0 : fi.image.shape[0], 0 : fi.image.shape[1]]
        injected = fi.image + _psf(nucleus.flux / ratio, x2, y2, shape)(xx, yy)
        res = find_in_field_image(fi, image=injected)
        if _matched(res, (nucleus.x, nucleus.y), (x2, y2), 1.5):
            found += 1
            assert res.separation_arcsec == pytest.approx(sep, abs=0.4)
            assert res.flux_ratio == pytest.approx(ratio, rel=0.5)
    assert found >= len(singles) - 1


def test_unresolved_injection_is_not_claimed(singles):
    # 0.5 arcsec is a third of the seeing: a pair there cannot be told from one source.
    fi, nucleus = singles[0]
    shape = (core_sigma(fi.psf_fwhm_px, fi.psf.ratio, fi.psf.wing), fi.psf.ratio, fi.psf.wing)
    yy, xx = np.mgrid[0 : fi.image.shape[0], 0 : fi.image.shape[1]]
    x2 = nucleus.x + 0.5 / fi.pixel_scale
    res = find_in_field_image(fi, image=fi.image + _psf(nucleus.flux, x2, nucleus.y, shape)(xx, yy))
    assert not res.is_pair


# Galaxies of 2820-3-122 (positions of detect_galaxies) that the plain one-vs-two-PSF fit
# calls pairs, inspected by eye on gri cutouts: a split elongated bulge (1.2"), a knot at the
# tip of an inclined disk (5.6"), a faint clump 2.8" out; and a star 7.3" beyond a disk.
# The cutout is centred on the catalogue position (as in the benchmark): a cutout one pixel
# off can change the fit (the split bulge is a marginal case).
DISK_STRUCTURE = [(38.33519, -0.14772), (38.31949, -0.00704), (38.37968, -0.01636)]
STAR_NEIGHBOUR = (38.35940, -0.08646)


def _catalogue_position(table, ra, dec):
    d = np.hypot(np.asarray(table["ra"]) - ra, np.asarray(table["dec"]) - dec)
    row = table[int(np.argmin(d))]
    assert d.min() < 1e-4
    return float(row["ra"]), float(row["dec"])


def test_resolved_second_components_are_turned_down(quiet_field, field_sources):
    table, psf = field_sources
    for ra, dec in DISK_STRUCTURE:
        fi = field_image(quiet_field, *_catalogue_position(table, ra, dec), psf=psf)
        plain = find_in_field_image(fi, shape_test=False)
        assert plain.is_pair and plain.second_extent is None
        res = find_in_field_image(fi)
        assert not res.is_pair, res.message
        ext = res.second_extent
        assert ext["component"] == "on host" and ext["resolved"]
        assert ext["dchi2"] >= 14.2 and "resolved" in res.message
        json.dumps(res.to_dict())
    # a point source beyond the host is recorded, not turned down (one band cannot tell a
    # star from a bare companion nucleus)
    star = _catalogue_position(table, *STAR_NEIGHBOUR)
    res = find_in_field_image(field_image(quiet_field, *star, psf=psf))
    assert res.is_pair and res.second_extent["component"] == "off host"
    assert not res.second_extent["resolved"]


def test_injected_clump_is_not_a_nucleus_but_a_point_source_is(singles):
    """The same flux 2 arcsec away: as a PSF it is a second nucleus, as a resolved clump not."""
    from ssald_desktop.core.nuclei import _resolved_class

    fi, nucleus = singles[1]
    sigma = core_sigma(fi.psf_fwhm_px, fi.psf.ratio, fi.psf.wing)
    yy, xx = np.mgrid[0 : fi.image.shape[0], 0 : fi.image.shape[1]]
    x2, y2 = nucleus.x + 2.0 / fi.pixel_scale, nucleus.y
    flux = nucleus.flux / 1.5
    point = _psf(flux, x2, y2, (sigma, fi.psf.ratio, fi.psf.wing))(xx, yy)
    clump = _resolved_class()(flux=flux, x_0=x2, y_0=y2, sx=2.0 * sigma, sy=1.5 * sigma,
                              theta=0.3, sigma=sigma, ratio=fi.psf.ratio,
                              wing=fi.psf.wing)(xx, yy)  # fmt: skip
    assert clump.sum() == pytest.approx(point.sum(), rel=0.05)
    res = find_in_field_image(fi, image=fi.image + point)
    assert _matched(res, (nucleus.x, nucleus.y), (x2, y2), 1.5), res.message
    assert not res.second_extent["resolved"]
    res = find_in_field_image(fi, image=fi.image + clump)
    assert not res.is_pair, res.message


def test_false_pair_rate_is_low(quiet_field, field_sources):
    table, psf = field_sources
    gal = table[np.asarray(table["is_galaxy"]) & (np.asarray(table["snr"]) >= 25)]
    statuses, close = [], 0
    for row in gal:
        res = find_in_field_image(field_image(quiet_field, float(row["ra"]), float(row["dec"]),
                                              psf=psf))
        statuses.append(res.status)
        close += res.is_pair and res.separation_arcsec <= 4.5
    measurable = [s for s in statuses if s != "not measurable"]
    assert len(measurable) >= 12
    # pairs at the injected separations (<= 4 arcsec) are rare on real single galaxies; all
    # pairs include real companions up to 10 kpc
    # (the plain one-vs-two-PSF fit: 4 of 33 within 4.5 arcsec, 8 in all, S/N >= 20)
    assert close / len(measurable) <= 0.06
    assert statuses.count("pair") / len(measurable) <= 0.2


def test_empty_sky_is_not_measurable(quiet_field, field_sources):
    table, psf = field_sources
    frame = quiet_field["r"]
    rows, cols = frame.shape
    x = np.asarray(table["x"])
    y = np.asarray(table["y"])
    # a 64 px block of the frame with no detected source within 45 px of its centre
    for cy in range(100, rows - 100, 37):
        for cx in range(100, cols - 100, 37):
            if np.min(np.hypot(x - cx, y - cy)) > 45:
                sky = frame.wcs.pixel_to_world(cx, cy)
                fi = field_image(quiet_field, float(sky.ra.deg), float(sky.dec.deg), psf=psf)
                res = find_in_field_image(fi)
                assert res.status == "not measurable", res.message
                assert res.message.startswith("not measurable: ")
                assert res.nuclei == [] and res.separation_px is None
                return
    pytest.fail("no empty block found in the quiet field")


def test_star_is_not_a_pair(quiet_field, field_sources):
    table, psf = field_sources
    stars = table[np.asarray(table["is_star"]) & (np.asarray(table["snr"]) > 50)
                  & (np.asarray(table["flags"]) == 0)]
    assert len(stars) >= 5
    statuses = []
    for row in stars[:5]:
        res = find_in_field_image(field_image(quiet_field, float(row["ra"]), float(row["dec"]),
                                              psf=psf))
        assert not res.is_pair, res.message
        statuses.append(res.status)
    assert statuses.count("point source") >= 3, statuses


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(NucleiError, match="2-D image"):
        find_nuclei(np.zeros(100))
    with pytest.raises(NucleiError, match="pixel_scale"):
        find_nuclei(np.zeros((32, 32)), pixel_scale=-1.0)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(NucleiError, match="notes.png"):
        load_image(bad)
    with pytest.raises(NucleiError, match="no such image"):
        load_image(tmp_path / "missing.png")
    flat = find_nuclei(np.ones((40, 40)))
    assert flat.status == "not measurable"
    with pytest.raises(NucleiError):
        luminance(np.zeros((4, 4)))


def test_bench_nuclei_figures(quiet_field, field_sources):
    from ssald_desktop.core.bench_nuclei import bench_nuclei, nuclei_summary

    table, psf = field_sources
    r = bench_nuclei(quiet_field, separations=(0.5, 3.0), ratios=(1.0,), max_galaxies=4,
                     min_snr=40, psf=psf, sources=table)  # fmt: skip
    assert r["field"] == "2820-3-122"
    assert set(r["recovery"]) == {"0.5", "3"}
    assert r["n_injections"] == 2 * r["n_injection_galaxies"] >= 4
    assert r["recovery"]["3"]["1"] >= 0.5
    assert r["recovery"]["0.5"]["1"] <= 0.5
    assert 0.0 <= r["false_pair_rate"] <= 1.0
    json.dumps(r)
    assert "recovery of" in nuclei_summary(r)


def test_bench_nuclei_command_checks_its_field(tmp_path, capsys):
    from ssald_desktop.cli import main

    status = main(["bench", "nuclei", "--field", str(tmp_path / "nowhere"), "--json",
                   str(tmp_path / "out.json")])  # fmt: skip
    assert status == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
