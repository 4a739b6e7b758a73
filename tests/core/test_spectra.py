"""Tests of ssald_desktop.core.spectra and ``ssald-cli spectrum`` on the real SDSS spectra."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from ssald_desktop.cli import main as cli_main
from ssald_desktop.core.errors import DataFileError, SpectrumFormatError
from ssald_desktop.core.spectra import (
    EMISSION_LINES,
    FLUX_UNIT,
    Spectrum,
    plot_spectrum,
    read_spectrum,
)
from tests.conftest import DATA  # noqa: E402

SPECTRA = DATA / "sdss" / "spectra"
SPPLATE = SPECTRA / "spPlate-4055-55359-0020.fits"
N_PLATE_FIBRES = 20

pytestmark = pytest.mark.skipif(not SPECTRA.is_dir(), reason=f"no test data in {SPECTRA}")

SPEC_FILES = sorted(p.name for p in SPECTRA.glob("*.fits") if not p.name.startswith("spPlate"))
SPALL_FILES = {
    "spec-4238-55455-0037.fits",
    "spec-4500-55543-0331.fits",
    "spec-5290-55862-0984.fits",
    "spec-7330-56684-0434.fits",
}
FULL_SPEC_0266 = sorted(n for n in SPEC_FILES if n.startswith("spec-0266-"))
STARFORMING = sorted(n for n in SPEC_FILES if n.startswith(("spec-0411-", "spec-0412-")))


def spec(name: str) -> Spectrum:
    return read_spectrum(SPECTRA / name)


def check_sane(s: Spectrum) -> None:
    wl = s.wavelength
    assert wl.dtype == np.float64
    assert wl.ndim == 1 and wl.size > 3000
    assert np.all(np.diff(wl) > 0)
    assert 3500 < wl[0] < wl[-1] < 10500
    # Constant log-lambda step of 1e-4 dex (69 km/s) in every SDSS layout.
    np.testing.assert_allclose(np.diff(np.log10(wl)), 1e-4, rtol=1e-9)
    assert s.flux.shape == wl.shape
    assert s.good.sum() > 0.8 * wl.size
    assert np.all(np.isfinite(s.flux[s.good]))
    if s.ivar is not None:
        assert s.ivar.shape == wl.shape
        assert np.all(s.ivar >= 0)
    if s.model is not None:
        assert s.model.shape == wl.shape
        assert np.all(np.isfinite(s.model))
    assert s.flux_unit == FLUX_UNIT == "1e-17 erg/s/cm2/Angstrom"
    assert s.layout in ("specobj", "spall", "spplate")
    assert s.plate is not None and s.plate > 0
    assert s.mjd is not None and 50000 < s.mjd < 60000
    assert s.fiber is not None and s.fiber >= 1
    # Median flux of a real object is positive and of sane amplitude.
    assert 0 < np.median(s.flux[s.good]) < 1e4


# ----------------------------------------------------------------------------- every file
def test_data_set_is_complete() -> None:
    assert len(SPEC_FILES) == 26
    assert SPPLATE.is_file()


@pytest.mark.parametrize("name", SPEC_FILES)
def test_every_spec_file_loads(name: str) -> None:
    s = spec(name)
    check_sane(s)
    assert s.path == SPECTRA / name
    assert s.layout == ("spall" if name in SPALL_FILES else "specobj")
    assert s.ivar is not None and s.model is not None and s.and_mask is not None
    assert s.z is not None and s.z_err is not None and s.z_err > 0
    assert s.spec_class in ("GALAXY", "QSO", "STAR")
    assert s.subclass is not None
    assert s.ra is not None and 0 <= s.ra < 360
    assert s.dec is not None and -90 <= s.dec <= 90
    assert s.lines is not None and len(s.lines) in (29, 32)
    for col in ("LINENAME", "LINEWAVE", "LINEZ", "LINEAREA", "LINEAREA_ERR", "LINEEW", "LINESIGMA"):
        assert col in s.lines.colnames
    if name != "blue_star.fits":  # the file name carries plate-mjd-fiber
        assert name == f"spec-{s.name}.fits"


@pytest.mark.parametrize("fiber", range(1, N_PLATE_FIBRES + 1))
def test_every_spplate_fibre_loads(fiber: int) -> None:
    s = read_spectrum(SPPLATE, fiber=fiber)
    check_sane(s)
    assert s.layout == "spplate"
    assert (s.plate, s.mjd, s.fiber) == (4055, 55359, fiber)
    assert s.name == f"4055-55359-{fiber:04d}"
    assert s.model is None and s.lines is None and s.z is None and s.spec_class is None
    # This partial spPlate keeps only HDU0 (no ivar, masks or plug map).
    assert s.ivar is None and s.and_mask is None and s.ra is None


def test_spplate_wavelength_solution() -> None:
    s = read_spectrum(SPPLATE, fiber=1)
    header = fits.getheader(SPPLATE)
    assert s.npix == header["NAXIS1"] == 4637
    assert s.wavelength[0] == pytest.approx(10 ** header["COEFF0"])
    assert s.wavelength[10] == pytest.approx(10 ** (header["COEFF0"] + 10 * header["COEFF1"]))
    np.testing.assert_array_equal(s.flux, fits.getdata(SPPLATE)[0].astype(np.float64))
    # Fibre 20 is the last row of the image.
    np.testing.assert_array_equal(
        read_spectrum(SPPLATE, fiber=20).flux, fits.getdata(SPPLATE)[19].astype(np.float64)
    )


def test_wavelength_is_vacuum_10_pow_loglam() -> None:
    path = SPECTRA / "spec-0412-51871-0308.fits"
    loglam = fits.getdata(path, "COADD")["loglam"].astype(np.float64)
    wavelength = spec(path.name).wavelength
    # loglam is float32: equal to within its precision, and snapped to the exact header grid.
    np.testing.assert_allclose(wavelength, 10**loglam, rtol=1e-6)
    header = fits.getheader(path)
    k = np.round((np.log10(wavelength) - header["COEFF0"]) / header["COEFF1"])
    np.testing.assert_allclose(
        wavelength, 10 ** (header["COEFF0"] + k * header["COEFF1"]), rtol=1e-13
    )


# ----------------------------------------------------------------------------- known values
def test_boss_qso() -> None:
    s = spec("spec-5290-55862-0984.fits")
    assert s.layout == "spall"
    assert s.spec_class == "QSO"
    assert s.z == pytest.approx(2.5623, abs=1e-3)
    assert s.z_warning == 4  # SMALL_DELTA_CHI2 in the file's own SPALL row
    assert (s.plate, s.mjd, s.fiber) == (5290, 55862, 984)
    lya = s.line("Ly_alpha")
    assert lya.measured and lya.flux > 0
    assert lya.observed_wavelength == pytest.approx(1215.67 * (1 + s.z), rel=2e-3)


def test_broadline_object() -> None:
    s = spec("spec-0266-51630-0174.fits")
    assert s.layout == "specobj"
    assert (s.spec_class, s.subclass) == ("GALAXY", "BROADLINE")
    assert s.z == pytest.approx(0.02161, abs=1e-4)
    # The H-alpha region of this exposure is masked (ivar == 0), so SPZLINE has no fit there.
    assert not s.line("H_alpha").measured
    assert s.line("[O_III] 5007").measured


def test_boss_galaxy_at_z_0_607() -> None:
    s = spec("spec-4238-55455-0037.fits")
    assert s.layout == "spall"
    assert s.spec_class == "GALAXY"
    assert s.z == pytest.approx(0.6065, abs=1e-3)
    assert s.ra == pytest.approx(38.2654, abs=1e-3)


@pytest.mark.parametrize(
    ("name", "layout", "subclass"),
    [
        ("spec-3126-54804-0211.fits", "specobj", "F5"),
        ("spec-3127-54835-0622.fits", "specobj", "F2"),
        ("spec-7330-56684-0434.fits", "spall", "F3/F5V (30743)"),
    ],
)
def test_f_star_observed_three_times(name: str, layout: str, subclass: str) -> None:
    s = spec(name)
    assert s.layout == layout
    assert s.spec_class == "STAR" and s.subclass == subclass
    assert abs(s.z) < 1e-3
    assert s.ra == pytest.approx(38.3018, abs=1e-4)
    assert s.dec == pytest.approx(-0.1339, abs=1e-4)


def test_renamed_lite_file_detected_from_content() -> None:
    s = spec("blue_star.fits")
    assert s.layout == "specobj"
    assert (s.plate, s.mjd, s.fiber) == (2377, 53991, 440)
    assert s.spec_class == "STAR" and s.subclass == "A0"
    # A hot star: strong H-alpha absorption, so the SPZLINE "line flux" is negative.
    assert s.line("H_alpha").flux < 0


@pytest.mark.parametrize("name", FULL_SPEC_0266)
def test_spzline_read_for_sdss_full_spec_files(name: str) -> None:
    s = spec(name)
    assert len(FULL_SPEC_0266) == 8
    assert s.lines is not None
    names = s.line_names
    for expected in ("H_beta", "[O_III] 5007", "[O_I] 6300", "[N_II] 6583", "H_alpha"):
        assert expected in names
    oiii = s.line("[O_III] 5007")
    assert oiii.rest_wavelength == pytest.approx(5008.24, abs=0.01)
    assert oiii.z == pytest.approx(s.z, abs=1e-3)
    assert s.lines["LINEAREA"].unit is not None
    # The same object as its full-spec file: LINENAMEs are already stripped.
    assert all(n == n.strip() for n in names)


@pytest.mark.parametrize("name", STARFORMING)
def test_halpha_positive_for_star_forming_galaxy(name: str) -> None:
    s = spec(name)
    assert s.spec_class == "GALAXY" and s.subclass in ("STARFORMING", "STARBURST")
    ha = s.line("H_alpha")
    assert ha.measured and ha.flux > 0 and ha.snr > 5
    hb = s.line("H_beta")
    # Balmer decrement of a star-forming galaxy: H-alpha/H-beta >= ~2.86 (case B).
    assert ha.flux / hb.flux > 2.5
    assert ha.observed_wavelength == pytest.approx(6564.61 * (1 + s.z), abs=2.0)


def test_line_lookup_spellings() -> None:
    s = spec("spec-0412-51871-0308.fits")
    ha = s.line("H_alpha")
    assert s.line("Halpha") == ha == s.line("H-alpha") == s.line("h alpha")
    assert s.line("[OIII] 5007") == s.line("[O_III] 5007") == s.line("OIII 5007")
    assert s.line("[SII] 6731") == s.line("[S_II] 6730")
    assert ha.flux == pytest.approx(2619.78, rel=1e-4)
    with pytest.raises(KeyError, match="no emission line"):
        s.line("[Fe_X] 6374")
    plate = read_spectrum(SPPLATE, fiber=1)
    with pytest.raises(KeyError, match="no SPZLINE"):
        plate.line("H_alpha")
    strongest = s.strongest_lines(3)
    assert [m.name for m in strongest][0] == "H_alpha"
    assert all(m.snr >= 3 for m in strongest)


def test_emission_line_table() -> None:
    waves = {line.name: line.wavelength for line in EMISSION_LINES}
    assert waves["H-alpha"] == 6564.61 and waves["H-beta"] == 4862.68
    assert waves["[OIII] 5007"] == 5008.24 and waves["[NII] 6583"] == 6585.27
    assert len(EMISSION_LINES) == 9
    # Every line of the table is an SPZLINE line, with the same vacuum wavelength.
    s = spec("spec-0412-51871-0308.fits")
    for line in EMISSION_LINES:
        assert s.line(line.spzline).rest_wavelength == pytest.approx(line.wavelength, abs=0.01)


def test_spectrum_is_read_only() -> None:
    s = spec("spec-0412-51871-0308.fits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.z = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        s.flux[0] = 0.0
    assert s.flux.dtype == np.float64 and s.flux.dtype.isnative


def test_to_dict_is_json() -> None:
    d = spec("spec-0266-51630-0174.fits").to_dict(arrays=True)
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["subclass"] == "BROADLINE" and back["layout"] == "specobj"
    assert len(back["flux"]) == back["npix"] == len(back["wavelength"])


def test_fibre_argument_for_spec_file() -> None:
    path = SPECTRA / "spec-0412-51871-0308.fits"
    assert read_spectrum(path, fiber=308).fiber == 308
    with pytest.raises(SpectrumFormatError, match="spec-0412-51871-0308.fits.*fibre 308"):
        read_spectrum(path, fiber=12)


# ----------------------------------------------------------------------------- errors
def _truncate(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


@pytest.mark.parametrize("keep", [100, 8000, 20000, 90000, -1500, -3000])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    src = SPECTRA / "spec-0412-51871-0308.fits"
    size = src.stat().st_size
    bad = _truncate(src, tmp_path / "cut-spec.fits", keep if keep > 0 else size + keep)
    with pytest.raises(SpectrumFormatError, match="cut-spec.fits") as info:
        read_spectrum(bad)
    assert "\n" not in str(info.value)


def test_truncated_spplate(tmp_path: Path) -> None:
    bad = _truncate(SPPLATE, tmp_path / "cut-plate.fits", SPPLATE.stat().st_size // 2)
    with pytest.raises(SpectrumFormatError, match="cut-plate.fits"):
        read_spectrum(bad, fiber=1)


def test_text_file_named_fits(tmp_path: Path) -> None:
    bad = tmp_path / "notes.fits"
    bad.write_text("plate,mjd,fiber\n266,51630,174\n")
    with pytest.raises(SpectrumFormatError, match="notes.fits"):
        read_spectrum(bad)


def test_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "empty.fits"
    bad.write_bytes(b"")
    with pytest.raises(SpectrumFormatError, match="empty.fits"):
        read_spectrum(bad)


def test_primary_only_fits(tmp_path: Path) -> None:
    bad = tmp_path / "primary-only.fits"
    fits.PrimaryHDU().writeto(bad)
    with pytest.raises(SpectrumFormatError, match="primary-only.fits.*unknown spectrum layout"):
        read_spectrum(bad)


def test_image_without_wavelength_solution(tmp_path: Path) -> None:
    bad = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((5, 100), dtype=np.float32)).writeto(bad)
    with pytest.raises(SpectrumFormatError, match="image.fits.*unknown spectrum layout"):
        read_spectrum(bad, fiber=1)


def test_spplate_needs_fibre() -> None:
    with pytest.raises(SpectrumFormatError, match="spPlate-4055-55359-0020.fits.*fibre number"):
        read_spectrum(SPPLATE)


@pytest.mark.parametrize("fiber", [0, 21, -1, 1000])
def test_spplate_fibre_out_of_range(fiber: int) -> None:
    with pytest.raises(SpectrumFormatError, match="spPlate-4055-55359-0020.fits.*out of range"):
        read_spectrum(SPPLATE, fiber=fiber)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "spec-9999-55555-0001.fits"
    with pytest.raises(DataFileError, match="spec-9999-55555-0001.fits"):
        read_spectrum(missing)
    with pytest.raises(DataFileError, match="not a regular file"):
        read_spectrum(tmp_path)


def test_spec_file_without_object_table_is_readable(tmp_path: Path) -> None:
    src = SPECTRA / "spec-0411-51817-0119.fits"
    out = tmp_path / "no-specobj.fits"
    with fits.open(src) as hdul:
        fits.HDUList([hdul[0].copy(), hdul["COADD"].copy()]).writeto(out)
    s = read_spectrum(out)
    check_sane(s)
    assert s.layout == "specobj"
    assert s.z is None and s.spec_class is None and s.lines is None
    assert (s.plate, s.mjd, s.fiber) == (411, 51817, 119)  # from the primary header
    assert s.ra == pytest.approx(46.5574, abs=1e-3)
    np.testing.assert_array_equal(s.flux, spec(src.name).flux)


def test_coadd_without_flux_column(tmp_path: Path) -> None:
    out = tmp_path / "no-flux.fits"
    cols = fits.ColDefs([fits.Column(name="loglam", format="E", array=np.linspace(3.6, 3.9, 10))])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(
        out
    )
    with pytest.raises(SpectrumFormatError, match="no-flux.fits.*flux"):
        read_spectrum(out)


# ----------------------------------------------------------------------------- plotting
def _check_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 10_000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        # Not a blank canvas.
        extrema = img.convert("L").getextrema()
        assert extrema[0] < 100 < extrema[1]
    return width, height


@pytest.mark.parametrize(
    "name", ["spec-0412-51871-0308.fits", "spec-5290-55862-0984.fits", "blue_star.fits"]
)
def test_plot_spectrum(tmp_path: Path, name: str) -> None:
    out = plot_spectrum(spec(name), tmp_path / "plot.png")
    width, height = _check_png(out)
    assert width > 1000 and height > 400


def test_plot_spplate_without_ivar_and_lines(tmp_path: Path) -> None:
    out = plot_spectrum(read_spectrum(SPPLATE, fiber=7), tmp_path / "plate.png", lines=False)
    _check_png(out)


def test_plot_unwritable(tmp_path: Path) -> None:
    from ssald_desktop.core.errors import SsaldError

    with pytest.raises(SsaldError, match="missing-dir"):
        plot_spectrum(spec("blue_star.fits"), tmp_path / "missing-dir" / "x.png")


def test_core_module_is_headless() -> None:
    code = (
        "import sys; import ssald_desktop.core.spectra as m; "
        "bad = [n for n in ('PySide6', 'matplotlib', 'tensorflow', 'pyqtgraph') "
        "if n in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- CLI
def test_cli_summary_plot_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "galaxy.png"
    js = tmp_path / "galaxy.json"
    path = SPECTRA / "spec-0412-51871-0308.fits"
    status = cli_main(["spectrum", str(path), "--plot", str(png), "--json", str(js)])
    out = capsys.readouterr().out
    assert status == 0
    assert "0412-51871-0308" in out and "GALAXY STARFORMING" in out and "specobj" in out
    assert "H_alpha" in out
    _check_png(png)
    data = json.loads(js.read_text())
    assert data["z"] == pytest.approx(0.02859, abs=1e-4)
    assert data["plate"] == 412 and data["fiber"] == 308
    assert len(data["wavelength"]) == data["npix"]


def test_cli_spplate_fibre(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "fibre.png"
    assert cli_main(["spectrum", str(SPPLATE), "--fiber", "3", "--plot", str(png)]) == 0
    assert "4055-55359-0003" in capsys.readouterr().out
    _check_png(png)


def test_cli_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "garbage.fits"
    bad.write_text("this is not FITS\n")
    assert cli_main(["spectrum", str(bad)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "garbage.fits" in lines[0] and "Traceback" not in err


def test_cli_spplate_without_fibre(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["spectrum", str(SPPLATE)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fibre number" in err


def test_spectrum_redshift_reads_specobj_and_spall():
    """The quick z lookup: SDSS-I SPECOBJ, BOSS SPALL, and None for a non-spectrum."""
    from ssald_desktop.core.spectra import read_spectrum, spectrum_redshift

    spectra = DATA / "sdss" / "spectra"
    for name in ("spec-0266-51602-0166.fits", "spec-4238-55455-0037.fits"):
        assert spectrum_redshift(spectra / name) == pytest.approx(
            read_spectrum(spectra / name).z, abs=1e-6)
    frame = DATA / "sdss" / "frames" / "2583-2-136" / "fpM-002583-r2-0136.fits"
    assert spectrum_redshift(frame) is None
