import bz2
import shutil

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from ssald_desktop.core.errors import DataFileError, FieldMismatchError
from ssald_desktop.core.frames import BANDS, FieldId, open_frame_set, read_fpm, read_frame
from tests.conftest import M2_FIELD, QUIET_FIELD


def test_quiet_field_opens_with_five_bands(quiet_field):
    fs = quiet_field
    assert fs.bands == BANDS
    assert fs.field_id == FieldId(2820, 3, 122)
    assert fs.shape == (1489, 2048)
    assert fs.pixel_scale_arcsec == pytest.approx(0.396, abs=0.002)
    # footprint from the data README: RA 38.249..38.412, Dec -0.220..+0.006
    fp = fs.footprint()
    assert fp.ra.deg.min() == pytest.approx(38.249, abs=0.002)
    assert fp.ra.deg.max() == pytest.approx(38.412, abs=0.002)
    assert fp.dec.deg.min() == pytest.approx(-0.220, abs=0.002)
    assert fp.dec.deg.max() == pytest.approx(0.006, abs=0.002)
    r = fs["r"]
    assert r.data.dtype == np.float32
    assert r.calib is not None and r.calib.shape == (2048,)
    assert r.sky_grid is not None
    # no fpM files for this field: the mask is only non-finite pixels
    assert not r.mask_planes


def test_bands_are_not_pixel_aligned(quiet_field):
    offsets = quiet_field.band_offsets()
    assert offsets["r"] == (0.0, 0.0)
    worst = max(np.hypot(*o) for o in offsets.values())
    assert 5 < worst < 15  # the README: up to ~11 px


def test_m2_field_reads_masks_and_psf(m2_field):
    fs = m2_field
    assert fs.field_id == FieldId(2583, 2, 136)
    r = fs["r"]
    assert set(r.mask_planes) >= {"INTERP", "SATUR", "CR"}
    # the saturated bright star is flagged
    assert r.mask_planes["SATUR"].sum() > 1000
    assert r.mask.sum() >= r.mask_planes["SATUR"].sum()
    assert fs.psf["r"].fwhm_arcsec == pytest.approx(1.05, abs=0.1)


def test_fpm_spans_are_exact():
    planes = read_fpm(M2_FIELD / "fpM-002583-r2-0136.fits", (1489, 2048))
    with fits.open(M2_FIELD / "fpM-002583-r2-0136.fits") as h:
        row = h[2].data[0]  # SATUR plane, first object mask
        # spans: big-endian int16 (y, x1, x2) triples packed in a byte array
        spans = np.frombuffer(bytes(np.asarray(row["s"], np.uint8)), ">i2").reshape(-1, 3)
        assert len(spans) == row["nspan"]
        y, x1, x2 = spans[0] + [row["row0"], row["col0"], row["col0"]]
        assert row["rmin"] <= y <= row["rmax"] and row["cmin"] <= x1 <= x2 <= row["cmax"]
    assert planes["SATUR"][y, x1 : x2 + 1].all()


def test_saturation_mask_sits_on_bright_pixels(m2_field):
    r = m2_field["r"]
    sat = r.mask_planes["SATUR"]
    assert np.median(r.data[sat]) > 100 * np.median(r.data)
    # one saturated region per bright star, not one region per mask row
    from scipy.ndimage import label

    _, n = label(sat)
    assert 20 < n < 1000


def test_counts_and_ivar(m2_field):
    r = m2_field["r"]
    sky = r.sky_counts()
    assert sky.shape == r.shape and np.all(sky > 0)
    ivar = r.ivar(gain=4.7, dark_variance=1.2)
    assert np.all(ivar[r.mask] == 0)
    good = ivar[~r.mask]
    assert np.all(np.isfinite(good)) and np.median(good) > 0


def test_subset_of_bands(tmp_path):
    fs = open_frame_set(QUIET_FIELD, bands=["g", "r", "i"])
    assert fs.bands == ("g", "r", "i")
    with pytest.raises(DataFileError, match="no frame for band"):
        open_frame_set([QUIET_FIELD / "frame-r-002820-3-0122.fits.bz2"], bands=["g"])


def test_bands_from_different_fields_refused(tmp_path):
    files = [
        QUIET_FIELD / "frame-r-002820-3-0122.fits.bz2",
        M2_FIELD / "frame-g-002583-2-0136.fits.bz2",
    ]
    with pytest.raises(FieldMismatchError, match="different fields"):
        open_frame_set(files)


def test_renamed_frames_of_another_field_refused(tmp_path):
    # A g frame of M2 renamed as if it belonged to 2820-3-122: names agree, the sky does not.
    shutil.copy(QUIET_FIELD / "frame-r-002820-3-0122.fits.bz2", tmp_path)
    shutil.copy(
        M2_FIELD / "frame-g-002583-2-0136.fits.bz2", tmp_path / "frame-g-002820-3-0122.fits.bz2"
    )
    with pytest.raises(FieldMismatchError, match="different fields|not frames of one field"):
        open_frame_set(tmp_path)


def test_truncated_frame_names_the_file(tmp_path):
    raw = bz2.decompress((QUIET_FIELD / "frame-r-002820-3-0122.fits.bz2").read_bytes())
    bad = tmp_path / "frame-r-002820-3-0122.fits"
    bad.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataFileError) as err:
        read_frame(bad)
    assert bad.name in str(err.value)


def test_non_fits_file(tmp_path):
    bad = tmp_path / "frame-r-002820-3-0122.fits"
    bad.write_text("this is not FITS\n" * 200)
    with pytest.raises(DataFileError, match="frame-r-002820-3-0122.fits"):
        read_frame(bad)


def test_fits_without_wcs(tmp_path):
    bad = tmp_path / "frame-r-002820-3-0122.fits"
    fits.PrimaryHDU(np.zeros((20, 30), np.float32)).writeto(bad)
    with pytest.raises(DataFileError, match="no celestial WCS"):
        read_frame(bad)


def test_empty_folder(tmp_path):
    with pytest.raises(DataFileError, match="no SDSS frame files"):
        open_frame_set(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        open_frame_set(tmp_path / "nowhere")


def test_contains(quiet_field):
    inside = SkyCoord(38.33, -0.107, unit="deg")
    outside = SkyCoord(38.6, -0.107, unit="deg")
    assert quiet_field.contains(inside)
    assert not quiet_field.contains(outside)


def test_field_id_parse_and_validate():
    assert FieldId.parse("2820-3-122") == FieldId(2820, 3, 122)
    assert str(FieldId(2583, 2, 136)) == "2583-2-136"
    for bad in ("2820-7-122", "a-b-c", "1; DROP TABLE", "2820-3"):
        with pytest.raises(ValueError):
            FieldId.parse(bad)
