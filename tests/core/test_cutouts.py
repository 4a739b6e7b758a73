import bz2
import dataclasses
import io

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.visualization import make_lupton_rgb
from photutils.centroids import centroid_2dg
from photutils.detection import find_peaks

from ssald_desktop.core.cutouts import CutoutEngine, NormSpec, cutout, lupton_rgb
from ssald_desktop.core.errors import OutsideFieldError
from tests.conftest import DATA

F_STAR = SkyCoord(38.3018, -0.1339, unit="deg")  # SDSS spectra: an F star (data README)


def _bright_compact_sources(fs, n=8):
    """Bright, unsaturated, isolated peaks of the r band, well inside the field."""
    r = fs["r"]
    peaks = find_peaks(np.where(r.mask, 0, r.data), threshold=3.0, box_size=25, border_width=60)
    peaks = peaks[(peaks["peak_value"] < 60)]
    peaks.sort("peak_value", reverse=True)
    coords = r.wcs.pixel_to_world(peaks["x_peak"], peaks["y_peak"])
    return coords[:n]


def _clean(cut, bands="ugriz", min_peak=1.0):
    """Bands where the source is a bright, clean, isolated point source in the centroid box.

    Left out: a faint band; a peak that is not at the centre; a cosmic ray on the star (this
    field has no fpM masks; a PSF of FWHM ~2.6 px has its 8 neighbours at ~0.55 of the peak,
    a cosmic ray far below); a neighbour in the box (M2 is crowded).
    """
    c = cut.data.shape[-1] // 2
    yy, xx = np.mgrid[-6:7, -6:7]
    outer = np.hypot(yy, xx) > 3.5
    ok = []
    for b in bands:
        box = cut.band(b)[c - 6 : c + 7, c - 6 : c + 7] - np.median(cut.band(b))
        peak = np.unravel_index(np.argmax(box), box.shape)
        top = box.max()
        if top < min_peak or abs(peak[0] - 6) > 1.5 or abs(peak[1] - 6) > 1.5:
            continue
        ring = box[peak[0] - 1 : peak[0] + 2, peak[1] - 1 : peak[1] + 2].sum() - top
        if top / (ring / 8) > 2.5 or box[outer].max() > 0.3 * top:
            continue
        ok.append(b)
    return ok


def _centroid(img):
    c = img.shape[0] // 2
    box = img[c - 6 : c + 7, c - 6 : c + 7]
    x, y = centroid_2dg(box - np.median(img))
    return np.array([x, y])


@pytest.mark.parametrize("orientation", ["north_up", "native"])
def test_star_centroids_agree_across_bands(quiet_field, orientation):
    eng = CutoutEngine(quiet_field, NormSpec(orientation=orientation))
    positions = [F_STAR, *_bright_compact_sources(quiet_field)]
    worst = 0.0
    measured = 0
    for coord in positions:
        cut = eng.cut(coord)
        clean = _clean(cut)
        if "r" not in clean:
            continue
        ref = _centroid(cut.band("r"))
        for band in set(clean) - {"r"}:
            worst = max(worst, np.hypot(*(_centroid(cut.band(band)) - ref)))
            measured += 1
    assert measured >= 20
    assert worst < 0.5


def test_same_pixel_slicing_would_misalign(quiet_field):
    """The check above can fail: naive same-pixel slices put the star several px apart."""
    x, y = quiet_field["r"].wcs.world_to_pixel(F_STAR)
    x, y = int(round(float(x))), int(round(float(y)))
    cents = {b: _centroid(quiet_field[b].data[y - 32 : y + 32, x - 32 : x + 32]) for b in "gr"}
    assert np.hypot(*(cents["g"] - cents["r"])) > 3


def test_star_centroids_m2(m2_field):
    eng = CutoutEngine(m2_field)
    worst = 0.0
    measured = 0
    for coord in _bright_compact_sources(m2_field, n=12):
        cut = eng.cut(coord)
        if cut.mask[:, 26:39, 26:39].any():  # a flagged pixel in the centroid box
            continue
        clean = _clean(cut, "griz")
        if "r" not in clean:
            continue
        ref = _centroid(cut.band("r"))
        for band in set(clean) - {"r"}:
            worst = max(worst, np.hypot(*(_centroid(cut.band(band)) - ref)))
            measured += 1
    assert measured >= 6
    assert worst < 0.5


def test_north_up_wcs(quiet_field):
    spec = NormSpec(output_size=48, size=48)
    cut = cutout(quiet_field, F_STAR, spec)
    assert cut.data.shape == (5, 48, 48)
    # The output WCS puts the centre at the grid centre and north up (+y = +Dec).
    x, y = cut.wcs.world_to_pixel(F_STAR)
    assert (float(x), float(y)) == pytest.approx((23.5, 23.5), abs=1e-6)
    up = cut.wcs.pixel_to_world(23.5, 33.5)
    assert up.dec.deg > F_STAR.dec.deg
    left = cut.wcs.pixel_to_world(13.5, 23.5)
    assert left.ra.deg > F_STAR.ra.deg  # east is left
    # and the star's peak is at the centre in every band
    for b in "griz":
        peak = np.unravel_index(np.argmax(cut.band(b)), (48, 48))
        assert abs(peak[0] - 23.5) <= 1.5 and abs(peak[1] - 23.5) <= 1.5


def test_edge_is_masked_not_garbage(quiet_field):
    fp = quiet_field.footprint()
    # 10 px inside the first corner of the r band, so the 64 px cutout hangs over the edge
    r = quiet_field["r"]
    corner = r.wcs.pixel_to_world(10, 10)
    eng = CutoutEngine(quiet_field)
    data, mask, _ = eng.cut_arrays([corner.ra.deg], [corner.dec.deg], check_inside=False)
    assert 0.3 < mask[0].mean() < 0.9
    assert np.all(data[0][mask[0]] == 0)
    assert np.all(np.isfinite(data))
    assert fp is not None


def test_outside_field_raises(quiet_field):
    with pytest.raises(OutsideFieldError, match="outside field 2820-3-122"):
        cutout(quiet_field, SkyCoord(40.0, 0.0, unit="deg"))
    with pytest.raises(OutsideFieldError, match="invalid position"):
        CutoutEngine(quiet_field).cut_arrays([np.nan], [0.0])


def test_saturated_star_is_masked(m2_field):
    from scipy.ndimage import center_of_mass, label

    r = m2_field["r"]
    regions, n = label(r.mask_planes["SATUR"])
    sizes = np.bincount(regions.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    y, x = center_of_mass(regions == biggest)
    centre = r.wcs.pixel_to_world(x, y)
    cut = cutout(m2_field, centre)
    assert cut.band_mask("r").any()
    assert np.all(np.isfinite(cut.data))


def test_petrosian_size(quiet_field):
    spec = NormSpec(size=4, size_unit="petrosian", output_size=32)
    cut = cutout(quiet_field, F_STAR, spec, petro_radius_arcsec=3.0)
    assert cut.pixel_scale == pytest.approx(4 * 3.0 / 32)
    with pytest.raises(ValueError, match="Petrosian"):
        cutout(quiet_field, F_STAR, spec)


def test_bicubic_agrees_with_bilinear(quiet_field):
    a = cutout(quiet_field, F_STAR, NormSpec(interpolation=1)).band("r")
    b = cutout(quiet_field, F_STAR, NormSpec(interpolation=3)).band("r")
    assert np.hypot(*(_centroid(a) - _centroid(b))) < 0.1


def test_fast_path_matches_general_path(quiet_field):
    """The shift fast path and the general gather give the same pixels."""
    eng = CutoutEngine(quiet_field)
    ra_pts, dec_pts, _ = eng._sky_points(
        np.array([F_STAR.ra.deg]), np.array([F_STAR.dec.deg]), np.array([64 * 0.396])
    )
    m, c = eng._band_affines("g", ra_pts, dec_pts)
    fast = np.empty((64, 64), np.float32)
    fmask = np.empty((64, 64), bool)
    assert eng._shift_resample("g", m[0], c[0], fast, fmask)
    slow = np.empty((1, 64, 64), np.float32)
    smask = np.empty((1, 64, 64), bool)
    eng._bilinear_batch("g", m, c, slow, smask)
    assert np.abs(fast - slow[0]).max() < 0.02 * np.abs(fast).max()


def test_normspec_frozen_hashable_serialisable():
    spec = NormSpec()
    assert spec.rgb == ("i", "r", "g")
    assert hash(spec) == hash(NormSpec())
    assert NormSpec.from_json(spec.to_json()) == spec
    assert spec.digest() == NormSpec().digest()
    assert spec.replace(q=10).digest() != spec.digest()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.q = 3  # frozen
    for bad in (
        dict(rgb=("i", "r", "x")),
        dict(q=0),
        dict(size_unit="parsec"),
        dict(output_size=2),
        dict(bands=("g", "r")),
        dict(stretch=float("nan")),
    ):
        with pytest.raises(ValueError):
            NormSpec(**bad)
    with pytest.raises(ValueError, match="unknown NormSpec"):
        NormSpec.from_dict({"q": 8, "colour": 1})


def _read_bz2(path):
    with fits.open(io.BytesIO(bz2.decompress(path.read_bytes()))) as h:
        return h[0].data.astype(float)


def test_lupton_equals_astropy_on_ngc6976():
    d = DATA / "sdss" / "ngc6976-gri"
    g, r, i = (_read_bz2(d / f"reprojected_sdss_{b}.fits.bz2") for b in "gri")
    spec = NormSpec(q=10, stretch=0.5, minimum=0.0)
    ours = lupton_rgb(i, r, g, spec)
    theirs = make_lupton_rgb(i, r, g, minimum=0.0, stretch=0.5, Q=10)
    assert ours.dtype == np.uint8 and ours.shape == (496, 682, 3)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.std() > 5  # a real image, not a flat one


def test_rgb_batch_equals_single(quiet_field):
    eng = CutoutEngine(quiet_field)
    coords = _bright_compact_sources(quiet_field, n=4)
    data, _, _ = eng.cut_arrays(coords.ra.deg, coords.dec.deg)
    batch = eng.rgb_batch(data)
    for k in range(len(coords)):
        np.testing.assert_array_equal(
            batch[k], lupton_rgb(data[k, 3], data[k, 2], data[k, 1], eng.spec)
        )


def test_asinh_view_range(quiet_field):
    cut = cutout(quiet_field, F_STAR)
    v = cut.asinh("r")
    assert v.min() >= 0 and v.max() <= 1 and v.max() > 0.9


def test_write_fits_and_png(quiet_field, tmp_path):
    cut = cutout(quiet_field, F_STAR)
    p = cut.write_fits(tmp_path / "c.fits")
    with fits.open(p) as h:
        assert [x.name for x in h[1:6]] == ["U", "G", "R", "I", "Z"]
        assert NormSpec.from_json(h[0].header["NORMSPEC"]) == cut.spec
        np.testing.assert_array_equal(h["R"].data, cut.band("r"))
    from PIL import Image

    png = cut.write_png(tmp_path / "c.png")
    assert Image.open(png).size == (64, 64)
