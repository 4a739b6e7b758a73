"""Read and plot SDSS optical spectra (headless: no Qt, matplotlib only when plotting).

Three layouts of the SDSS spectroscopic pipeline (idlspec2d) are understood; the layout is
detected from the HDU names and headers, never from the file name:

``"specobj"``
    SDSS-I/II ``spec-PLATE-MJD-FIBER.fits`` files, full or lite: ``PRIMARY`` header, ``COADD``
    binary table (``flux``, ``loglam``, ``ivar``, ``and_mask``, ``or_mask``, ``wdisp``, ``sky``,
    ``model``), ``SPECOBJ`` one-row table (plate, MJD, fibre, class, redshift...), ``SPZLINE``
    emission-line fits and, in full files only, one table per exposure and camera (``B1-...``,
    ``R1-...``).
``"spall"``
    BOSS/eBOSS ``spec`` files: the same, but the one-row object table is called ``SPALL``
    (spAll columns plus photometry).
``"spplate"``
    ``spPlate-PLATE-MJD.fits``: HDU0 is an image of flux, one row per fibre (row ``fiber - 1``),
    with a log-linear wavelength solution in the header (``COEFF0`` = log10 of the first pixel's
    wavelength, ``COEFF1`` = log10 step). HDU1 (inverse variance), HDU2 (AND mask), HDU3 (OR mask)
    and HDU5 (plug map) are used when present. A fibre number (1-based, as in SDSS) is required.

A spec file whose ``SPECOBJ``/``SPALL`` table is missing is still read (layout ``"specobj"``):
wavelength, flux and ivar come from ``COADD``, plate/MJD/fibre and the plug position from the
primary header, and ``z``, ``z_err``, ``spec_class`` and ``subclass`` are ``None``.

References
----------
SDSS data model, spec file:
https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html

SDSS data model, spPlate file:
https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/PLATE4/spPlate.html
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table

from ssald_desktop.core.errors import DataFileError, SpectrumFormatError, SsaldError

__all__ = [
    "EMISSION_LINES",
    "FLUX_UNIT",
    "LAYOUTS",
    "EmissionLine",
    "LineMeasurement",
    "Spectrum",
    "plot_spectrum",
    "read_spectrum",
]

#: Unit of ``flux`` and ``model`` (and ``1/sqrt(ivar)``) in every SDSS spectrum.
FLUX_UNIT = "1e-17 erg/s/cm2/Angstrom"

#: Layout names returned in :attr:`Spectrum.layout`.
LAYOUTS = ("specobj", "spall", "spplate")

_DATAMODEL_URL = (
    "https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html"
)

# Units of the SPZLINE columns (SDSS data model, spZline).
_LINE_UNITS = {
    "LINEWAVE": "Angstrom",
    "LINESIGMA": "km / s",
    "LINESIGMA_ERR": "km / s",
    "LINEAREA": "1e-17 erg / (s cm2)",
    "LINEAREA_ERR": "1e-17 erg / (s cm2)",
    "LINEEW": "Angstrom",
    "LINEEW_ERR": "Angstrom",
    "LINECONTLEVEL": "1e-17 erg / (s cm2 Angstrom)",
    "LINECONTLEVEL_ERR": "1e-17 erg / (s cm2 Angstrom)",
}


@dataclass(frozen=True)
class EmissionLine:
    """One optical emission line used for markers and diagnostics.

    Attributes
    ----------
    name : str
        ASCII name, e.g. ``"[OIII] 5007"`` (air-wavelength naming convention).
    wavelength : float
        Vacuum rest wavelength in Angstrom (the SDSS pipeline works in vacuum).
    spzline : str
        The ``LINENAME`` of this line in the SDSS ``SPZLINE`` table.
    label : str
        Short plot label shared by blended lines (e.g. H-alpha and the [NII] doublet).
    """

    name: str
    wavelength: float
    spzline: str
    label: str


#: Main optical emission lines (vacuum rest wavelengths, Angstrom), in wavelength order.
EMISSION_LINES: tuple[EmissionLine, ...] = (
    EmissionLine("H-beta", 4862.68, "H_beta", "H\u03b2"),
    EmissionLine("[OIII] 4959", 4960.30, "[O_III] 4959", "[O III]"),
    EmissionLine("[OIII] 5007", 5008.24, "[O_III] 5007", "[O III]"),
    EmissionLine("[OI] 6300", 6302.05, "[O_I] 6300", "[O I]"),
    EmissionLine("[NII] 6548", 6549.86, "[N_II] 6548", "H\u03b1+[N II]"),
    EmissionLine("H-alpha", 6564.61, "H_alpha", "H\u03b1+[N II]"),
    EmissionLine("[NII] 6583", 6585.27, "[N_II] 6583", "H\u03b1+[N II]"),
    EmissionLine("[SII] 6716", 6718.29, "[S_II] 6716", "[S II]"),
    EmissionLine("[SII] 6731", 6732.67, "[S_II] 6730", "[S II]"),
)


def _norm_line_name(name: str) -> str:
    """Lower-case a line name and keep letters and digits only ("[O_III] 5007" -> "oiii5007")."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


# Extra spellings accepted by Spectrum.line(), mapped to SPZLINE names.
_LINE_ALIASES = {_norm_line_name(line.name): line.spzline for line in EMISSION_LINES}


@dataclass(frozen=True)
class LineMeasurement:
    """One row of the ``SPZLINE`` table: a Gaussian fit of one emission line.

    Attributes
    ----------
    name : str
        ``LINENAME`` (e.g. ``"H_alpha"``, ``"[O_III] 5007"``).
    rest_wavelength : float
        ``LINEWAVE``, vacuum rest wavelength (Angstrom).
    z, z_err : float
        ``LINEZ``, ``LINEZ_ERR``: redshift of the line.
    sigma, sigma_err : float
        ``LINESIGMA``, ``LINESIGMA_ERR``: Gaussian width (km/s).
    flux, flux_err : float
        ``LINEAREA``, ``LINEAREA_ERR``: line flux (1e-17 erg/s/cm2).
    ew, ew_err : float
        ``LINEEW``, ``LINEEW_ERR``: equivalent width (Angstrom, positive for emission).
    continuum, continuum_err : float
        ``LINECONTLEVEL``, ``LINECONTLEVEL_ERR``: continuum under the line
        (1e-17 erg/s/cm2/Angstrom).
    """

    name: str
    rest_wavelength: float
    z: float
    z_err: float
    sigma: float
    sigma_err: float
    flux: float
    flux_err: float
    ew: float
    ew_err: float
    continuum: float
    continuum_err: float

    @property
    def measured(self) -> bool:
        """True if the pipeline fitted the line (negative errors mean "not measured")."""
        return self.flux_err > 0

    @property
    def snr(self) -> float:
        """Flux over its error; NaN when the line was not measured."""
        return self.flux / self.flux_err if self.measured else math.nan

    @property
    def observed_wavelength(self) -> float:
        """Observed (vacuum) wavelength ``rest_wavelength * (1 + z)`` in Angstrom."""
        return self.rest_wavelength * (1.0 + self.z)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary of the measurement (NaN written as None)."""
        out: dict[str, Any] = {"name": self.name}
        for key in _MEASUREMENT_FIELDS:
            out[key] = _json_float(getattr(self, key))
        out["measured"] = self.measured
        return out


_MEASUREMENT_FIELDS = (
    "rest_wavelength", "z", "z_err", "sigma", "sigma_err", "flux", "flux_err",
    "ew", "ew_err", "continuum", "continuum_err",
)  # fmt: skip

# Columns used from the one-row SPECOBJ / SPALL object table.
_OBJECT_COLUMNS = frozenset(
    (
        "PLATE",
        "MJD",
        "FIBERID",
        "Z",
        "Z_ERR",
        "ZWARNING",
        "CLASS",
        "SUBCLASS",
        "PLUG_RA",
        "PLUG_DEC",
    )
)


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One SDSS spectrum, as read by :func:`read_spectrum`.

    Arrays are float64 (masks int32), in native byte order and read-only.

    Attributes
    ----------
    path : Path
        The file read.
    layout : str
        ``"specobj"``, ``"spall"`` or ``"spplate"`` (see the module documentation).
    wavelength : numpy.ndarray
        Vacuum wavelength in Angstrom, ``10**loglam`` (increasing); the float32 ``loglam``
        of spec files is first snapped to the exact grid ``COEFF0 + k * COEFF1`` of the
        primary header when it lies on it.
    flux : numpy.ndarray
        Flux density in :data:`FLUX_UNIT`.
    ivar : numpy.ndarray or None
        Inverse variance of ``flux``; 0 marks bad pixels. None when the file has none (an
        spPlate file without its HDU1).
    model : numpy.ndarray or None
        Best-fit pipeline model (``COADD`` column ``model``); None for spPlate files.
    and_mask, or_mask : numpy.ndarray or None
        Pixel mask bits (SPPIXMASK) set in all / any exposures; None when absent.
    z, z_err : float or None
        Pipeline redshift ``Z`` and error ``Z_ERR``; None without an object table.
    z_warning : int or None
        ``ZWARNING`` bits (0 means a confident redshift).
    spec_class : str or None
        ``CLASS``: ``"GALAXY"``, ``"QSO"`` or ``"STAR"``.
    subclass : str or None
        ``SUBCLASS`` (e.g. ``"STARFORMING"``, ``"BROADLINE"``, ``"F5"``); ``""`` if none given.
    plate, mjd, fiber : int or None
        Plate number, MJD of the (last) observation, fibre number (1-based).
    ra, dec : float or None
        Fibre position ``PLUG_RA``, ``PLUG_DEC`` (degrees, ICRS), from the object table, the
        primary header or the spPlate plug map.
    lines : astropy.table.Table or None
        The ``SPZLINE`` table (``LINENAME`` stripped, units attached), None when absent.
    header : astropy.io.fits.Header
        Copy of the primary header.
    flux_unit : str
        Always :data:`FLUX_UNIT`.
    """

    path: Path
    layout: str
    wavelength: np.ndarray = field(repr=False)
    flux: np.ndarray = field(repr=False)
    ivar: np.ndarray | None = field(repr=False)
    model: np.ndarray | None = field(default=None, repr=False)
    and_mask: np.ndarray | None = field(default=None, repr=False)
    or_mask: np.ndarray | None = field(default=None, repr=False)
    z: float | None = None
    z_err: float | None = None
    z_warning: int | None = None
    spec_class: str | None = None
    subclass: str | None = None
    plate: int | None = None
    mjd: int | None = None
    fiber: int | None = None
    ra: float | None = None
    dec: float | None = None
    lines: Table | None = field(default=None, repr=False)
    header: fits.Header = field(default_factory=fits.Header, repr=False)
    flux_unit: str = FLUX_UNIT

    # ----------------------------------------------------------------- derived values
    @property
    def npix(self) -> int:
        """Number of pixels."""
        return int(self.wavelength.size)

    @property
    def good(self) -> np.ndarray:
        """Boolean mask of usable pixels: finite flux and ``ivar > 0`` (all finite without ivar)."""
        ok = np.isfinite(self.flux)
        if self.ivar is not None:
            ok &= np.isfinite(self.ivar) & (self.ivar > 0)
        return ok

    @property
    def sigma(self) -> np.ndarray | None:
        """1-sigma flux error ``1/sqrt(ivar)``, NaN where ``ivar <= 0``; None without ivar."""
        if self.ivar is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            err = 1.0 / np.sqrt(self.ivar)
        err[~(self.ivar > 0)] = np.nan
        return err

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """First and last wavelength (Angstrom)."""
        return float(self.wavelength[0]), float(self.wavelength[-1])

    @property
    def name(self) -> str:
        """SDSS identifier ``PLATE-MJD-FIBER`` (zero padded), or the file stem if unknown."""
        if self.plate is None or self.mjd is None or self.fiber is None:
            return self.path.stem
        return f"{self.plate:04d}-{self.mjd:05d}-{self.fiber:04d}"

    # ----------------------------------------------------------------- emission lines
    @property
    def line_names(self) -> list[str]:
        """``LINENAME`` values of the SPZLINE table (empty list without one)."""
        if self.lines is None:
            return []
        return [str(n) for n in self.lines["LINENAME"]]

    def line(self, name: str) -> LineMeasurement:
        """Return the SPZLINE measurement of one emission line.

        Parameters
        ----------
        name : str
            A ``LINENAME`` as in the file (``"H_alpha"``, ``"[O_III] 5007"``, ``"[N_II] 6583"``)
            or a looser spelling: case, spaces, underscores and brackets are ignored
            (``"Halpha"``, ``"[OIII] 5007"``), and the names of :data:`EMISSION_LINES`
            (``"H-alpha"``, ``"[SII] 6731"``) are accepted.

        Returns
        -------
        LineMeasurement
            Check :attr:`LineMeasurement.measured` before using the numbers.

        Raises
        ------
        KeyError
            If the spectrum has no SPZLINE table or no line of that name.
        """
        if self.lines is None:
            raise KeyError(f"{self.path.name}: no SPZLINE emission-line table in this spectrum")
        key = _norm_line_name(name)
        key = _norm_line_name(_LINE_ALIASES.get(key, key))
        for row in self.lines:
            if _norm_line_name(str(row["LINENAME"])) == key:
                return _row_to_measurement(row)
        raise KeyError(
            f"{self.path.name}: no emission line {name!r}; known: {', '.join(self.line_names)}"
        )

    def strongest_lines(self, n: int = 5, min_snr: float = 3.0) -> list[LineMeasurement]:
        """Return the ``n`` measured lines of largest flux detected at ``>= min_snr`` sigma."""
        if self.lines is None:
            return []
        found = [_row_to_measurement(row) for row in self.lines]
        found = [m for m in found if m.measured and m.flux > 0 and m.snr >= min_snr]
        found.sort(key=lambda m: m.flux, reverse=True)
        return found[:n]

    # ----------------------------------------------------------------- export
    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        """Plain-Python dictionary for JSON export (NaN written as None).

        Parameters
        ----------
        arrays : bool
            Also include ``wavelength``, ``flux``, ``ivar``, ``model`` and ``and_mask`` lists.
        """
        lo, hi = self.wavelength_range
        out: dict[str, Any] = {
            "path": str(self.path),
            "layout": self.layout,
            "name": self.name,
            "plate": self.plate,
            "mjd": self.mjd,
            "fiber": self.fiber,
            "ra": _json_float(self.ra),
            "dec": _json_float(self.dec),
            "spec_class": self.spec_class,
            "subclass": self.subclass,
            "z": _json_float(self.z),
            "z_err": _json_float(self.z_err),
            "z_warning": self.z_warning,
            "npix": self.npix,
            "n_good": int(self.good.sum()),
            "wavelength_min": lo,
            "wavelength_max": hi,
            "wavelength_unit": "Angstrom (vacuum)",
            "flux_unit": self.flux_unit,
            "lines": None
            if self.lines is None
            else [_row_to_measurement(r).to_dict() for r in self.lines],
        }
        if arrays:
            for key in ("wavelength", "flux", "ivar", "model", "and_mask"):
                value = getattr(self, key)
                if value is None:
                    out[key] = None
                elif value.dtype.kind == "f":
                    out[key] = [_json_float(v) for v in value.tolist()]
                else:
                    out[key] = value.tolist()
        return out


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _row_to_measurement(row: Any) -> LineMeasurement:
    def get(col: str) -> float:
        try:
            return float(row[col])
        except KeyError:
            return math.nan

    return LineMeasurement(
        name=str(row["LINENAME"]).strip(),
        rest_wavelength=get("LINEWAVE"),
        z=get("LINEZ"),
        z_err=get("LINEZ_ERR"),
        sigma=get("LINESIGMA"),
        sigma_err=get("LINESIGMA_ERR"),
        flux=get("LINEAREA"),
        flux_err=get("LINEAREA_ERR"),
        ew=get("LINEEW"),
        ew_err=get("LINEEW_ERR"),
        continuum=get("LINECONTLEVEL"),
        continuum_err=get("LINECONTLEVEL_ERR"),
    )


# ===================================================================== reading
def spectrum_redshift(path: str | Path) -> float | None:
    """The pipeline redshift ``Z`` of an SDSS spec file (its SPECOBJ or SPALL row), or None.

    Reads only that table (no arrays), for quick lookups such as a table's z column; None for a
    file that cannot be read or has no finite redshift.
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            for name in ("SPECOBJ", "SPALL"):
                if name in hdul and "Z" in hdul[name].columns.names:
                    z = float(hdul[name].data["Z"][0])
                    return z if math.isfinite(z) else None
    except (OSError, KeyError, ValueError, TypeError, IndexError):
        return None
    return None


def read_spectrum(path: str | Path, fiber: int | None = None) -> Spectrum:
    """Read one SDSS spectrum from a spec (full or lite, SDSS or BOSS) or spPlate file.

    Parameters
    ----------
    path : str or Path
        The FITS file. Its layout is detected from HDU names and headers (a ``COADD`` table
        means a spec file; a 2-D primary image with ``COEFF0``/``COEFF1`` means an spPlate).
    fiber : int, optional
        Fibre number, 1-based as in SDSS. Required for spPlate files. For a spec file it is
        optional and, if given, must equal the file's own fibre.

    Returns
    -------
    Spectrum
        Wavelength (vacuum Angstrom, ``10**loglam``), flux, ivar, model and metadata. See
        the SDSS data model of the spec file for the meaning of each column:
        https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html

    Raises
    ------
    DataFileError
        The file does not exist or is not a regular file.
    SpectrumFormatError
        Not FITS, truncated, a layout this reader does not know (no ``COADD`` table and no
        spPlate image), a missing/invalid column, or an spPlate read without a fibre number
        or with a fibre out of range.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():
            # Truncation is checked explicitly by _check_complete; silence astropy's version.
            warnings.filterwarnings("ignore", message=".*may have been truncated.*")
            warnings.filterwarnings("ignore", category=VerifyWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                _check_complete(hdul, path)
                names = [hdu.name.upper() for hdu in hdul]
                if "COADD" in names:
                    return _read_spec_file(hdul, names, path, fiber)
                if _is_spplate(hdul[0]):
                    return _read_spplate(hdul, path, fiber)
                raise SpectrumFormatError(
                    f"{path}: unknown spectrum layout (no COADD table and no spPlate image; "
                    f"HDUs: {', '.join(names)})"
                )
    except SsaldError:
        raise
    except FileNotFoundError as exc:
        raise DataFileError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise DataFileError(f"{path}: permission denied") from exc
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        raise SpectrumFormatError(
            f"{path}: not a readable FITS spectrum (truncated or corrupt): {_one_line(exc)}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_complete(hdul: fits.HDUList, path: Path) -> None:
    """Raise if the file is shorter than its headers say, or has unparsed bytes at its end."""
    size = path.stat().st_size
    if len(hdul) == 0:
        raise SpectrumFormatError(f"{path}: empty FITS file")
    end = 0
    for i, hdu in enumerate(hdul):
        info = hdul.fileinfo(i)
        if info is None:
            continue
        data_end = info["datLoc"] + hdu.size
        if data_end > size:
            raise SpectrumFormatError(
                f"{path}: truncated FITS file (HDU {i} {hdu.name or ''} needs {data_end} bytes, "
                f"file has {size})"
            )
        end = info["datLoc"] + info["datSpan"]
    if size > end:
        with open(path, "rb") as fh:
            fh.seek(end)
            tail = fh.read(min(size - end, 1 << 20))
        if tail.strip(b"\0 "):
            raise SpectrumFormatError(
                f"{path}: truncated or corrupt FITS file ({size - end} unreadable bytes after "
                f"HDU {len(hdul) - 1})"
            )


def _is_spplate(primary: fits.PrimaryHDU) -> bool:
    header = primary.header
    if header.get("NAXIS", 0) != 2:
        return False
    has_coeff = "COEFF0" in header and "COEFF1" in header
    has_loglin = header.get("DC-FLAG") == 1 and "CRVAL1" in header and "CD1_1" in header
    return has_coeff or has_loglin


def _float_array(values: Any) -> np.ndarray:
    out = np.array(values, dtype=np.float64)
    out.flags.writeable = False
    return out


def _int_array(values: Any) -> np.ndarray:
    out = np.array(values, dtype=np.int32)
    out.flags.writeable = False
    return out


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def _check_fiber_number(fiber: Any, path: Path) -> int:
    try:
        if isinstance(fiber, bool):
            raise TypeError
        return operator.index(fiber)
    except TypeError:
        raise SpectrumFormatError(
            f"{path}: fibre number must be an integer, got {fiber!r}"
        ) from None


def _check_wavelength(wavelength: np.ndarray, path: Path) -> None:
    if wavelength.size == 0:
        raise SpectrumFormatError(f"{path}: spectrum has no pixels")
    if not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0):
        raise SpectrumFormatError(f"{path}: wavelengths are not finite and increasing")


def _snap_loglam(loglam: np.ndarray, header: fits.Header) -> np.ndarray:
    """Put float32 ``loglam`` values back on the exact grid ``COEFF0 + k * COEFF1``.

    ``loglam`` is stored as float32 (1 ulp = 2.4e-7 dex near 3.6), while the coadd grid is
    exactly log-linear with the primary header's ``COEFF0``/``COEFF1``. When every value is
    within 1e-6 dex of that grid the exact float64 grid is returned (a change of < 0.003
    Angstrom); otherwise ``loglam`` is returned unchanged.
    """
    try:
        coeff0, coeff1 = float(header["COEFF0"]), float(header["COEFF1"])
    except (KeyError, TypeError, ValueError):
        return loglam
    if not (math.isfinite(coeff0) and math.isfinite(coeff1) and coeff1 > 0):
        return loglam
    steps = (loglam - coeff0) / coeff1
    index = np.round(steps)
    if not np.all(np.abs(steps - index) * coeff1 <= 1e-6):
        return loglam
    return coeff0 + index * coeff1


def _read_spec_file(
    hdul: fits.HDUList, names: list[str], path: Path, fiber: int | None
) -> Spectrum:
    coadd_hdu = hdul[names.index("COADD")]
    if not isinstance(coadd_hdu, fits.BinTableHDU) or coadd_hdu.data is None:
        raise SpectrumFormatError(f"{path}: COADD HDU is not a binary table")
    coadd = coadd_hdu.data
    columns = {c.lower() for c in coadd.columns.names}
    missing = [c for c in ("flux", "loglam", "ivar") if c not in columns]
    if missing:
        raise SpectrumFormatError(f"{path}: COADD table lacks column(s) {', '.join(missing)}")

    loglam = _snap_loglam(np.asarray(coadd["loglam"], dtype=np.float64), hdul[0].header)
    wavelength = _float_array(10.0**loglam)
    _check_wavelength(wavelength, path)
    flux = _float_array(coadd["flux"])
    ivar = _float_array(coadd["ivar"])
    model = _float_array(coadd["model"]) if "model" in columns else None
    and_mask = _int_array(coadd["and_mask"]) if "and_mask" in columns else None
    or_mask = _int_array(coadd["or_mask"]) if "or_mask" in columns else None

    header = hdul[0].header.copy()
    layout = "spall" if "SPALL" in names and "SPECOBJ" not in names else "specobj"
    table_name = "SPECOBJ" if "SPECOBJ" in names else ("SPALL" if "SPALL" in names else None)
    obj: dict[str, Any] = {}
    if table_name is not None:
        table = hdul[names.index(table_name)].data
        if table is not None and len(table) > 0:
            row = table[0]
            for col in table.columns.names:
                if col.upper() in _OBJECT_COLUMNS:
                    obj[col.upper()] = row[col]

    plate = _opt_int(obj.get("PLATE", header.get("PLATEID")))
    mjd = _opt_int(obj.get("MJD", header.get("MJD")))
    file_fiber = _opt_int(obj.get("FIBERID", header.get("FIBERID")))
    ra = _opt_float(obj.get("PLUG_RA", header.get("PLUG_RA")))
    dec = _opt_float(obj.get("PLUG_DEC", header.get("PLUG_DEC")))

    if fiber is not None:
        fiber = _check_fiber_number(fiber, path)
        if file_fiber is not None and fiber != file_fiber:
            raise SpectrumFormatError(
                f"{path}: single-fibre spec file of fibre {file_fiber}, not fibre {fiber}"
            )

    lines = None
    if "SPZLINE" in names:
        lines = _read_lines(hdul[names.index("SPZLINE")], path)

    return Spectrum(
        path=path,
        layout=layout,
        wavelength=wavelength,
        flux=flux,
        ivar=ivar,
        model=model,
        and_mask=and_mask,
        or_mask=or_mask,
        z=_opt_float(obj.get("Z")),
        z_err=_opt_float(obj.get("Z_ERR")),
        z_warning=_opt_int(obj.get("ZWARNING")),
        spec_class=_opt_str(obj.get("CLASS")),
        subclass=_opt_str(obj.get("SUBCLASS")),
        plate=plate,
        mjd=mjd,
        fiber=file_fiber,
        ra=ra,
        dec=dec,
        lines=lines,
        header=header,
    )


def _read_lines(hdu: fits.hdu.base.ExtensionHDU, path: Path) -> Table | None:
    if not isinstance(hdu, fits.BinTableHDU) or hdu.data is None:
        return None
    if "LINENAME" not in [c.upper() for c in hdu.columns.names]:
        raise SpectrumFormatError(f"{path}: SPZLINE table has no LINENAME column")
    table = Table()
    for col in hdu.columns.names:
        values = np.asarray(hdu.data[col])
        if values.dtype.kind in "SU":
            values = np.char.strip(values.astype(str))
        else:
            values = values.astype(values.dtype.newbyteorder("="))
        table[col.upper()] = values
        if col.upper() in _LINE_UNITS:
            table[col.upper()].unit = _LINE_UNITS[col.upper()]
    table.meta["EXTNAME"] = "SPZLINE"
    table.meta["DATAMODEL"] = _DATAMODEL_URL
    return table


def _read_spplate(hdul: fits.HDUList, path: Path, fiber: int | None) -> Spectrum:
    primary = hdul[0]
    header = primary.header
    if "FIBERID" in header:
        raise SpectrumFormatError(
            f"{path}: single-fibre image spectrum (old spSpec layout) is not supported"
        )
    image = primary.data
    if image is None or image.ndim != 2:
        raise SpectrumFormatError(f"{path}: spPlate primary HDU is not a 2-D image")
    nfiber, npix = image.shape
    if fiber is None:
        raise SpectrumFormatError(
            f"{path}: spPlate file of {nfiber} fibres: a fibre number (1..{nfiber}) is required"
        )
    fiber = _check_fiber_number(fiber, path)
    if not 1 <= fiber <= nfiber:
        raise SpectrumFormatError(
            f"{path}: fibre {fiber} out of range: this spPlate holds fibres 1..{nfiber}"
        )
    row = fiber - 1

    if "COEFF0" in header and "COEFF1" in header:
        coeff0, coeff1 = float(header["COEFF0"]), float(header["COEFF1"])
    else:  # log-linear WCS (DC-FLAG = 1): CRVAL1 at CRPIX1 (1-based)
        coeff1 = float(header["CD1_1"])
        coeff0 = float(header["CRVAL1"]) - (float(header.get("CRPIX1", 1.0)) - 1.0) * coeff1
    wavelength = _float_array(10.0 ** (coeff0 + coeff1 * np.arange(npix, dtype=np.float64)))
    _check_wavelength(wavelength, path)
    flux = _float_array(image[row])

    def same_shape_image(index: int) -> np.ndarray | None:
        if len(hdul) <= index or not isinstance(hdul[index], fits.ImageHDU | fits.PrimaryHDU):
            return None
        data = hdul[index].data
        if data is None or data.shape != image.shape:
            return None
        return data[row]

    ivar_row = same_shape_image(1)
    and_row = same_shape_image(2)
    or_row = same_shape_image(3)

    ra = dec = None
    if len(hdul) > 5 and isinstance(hdul[5], fits.BinTableHDU) and hdul[5].data is not None:
        plug = hdul[5].data
        cols = [c.upper() for c in plug.columns.names]
        if "RA" in cols and "DEC" in cols:
            index = row
            if "FIBERID" in cols:
                match = np.flatnonzero(np.asarray(plug["FIBERID"]) == fiber)
                index = int(match[0]) if match.size else -1
            if 0 <= index < len(plug):
                ra = _opt_float(plug["RA"][index])
                dec = _opt_float(plug["DEC"][index])

    return Spectrum(
        path=path,
        layout="spplate",
        wavelength=wavelength,
        flux=flux,
        ivar=None if ivar_row is None else _float_array(ivar_row),
        model=None,
        and_mask=None if and_row is None else _int_array(and_row),
        or_mask=None if or_row is None else _int_array(or_row),
        plate=_opt_int(header.get("PLATEID")),
        mjd=_opt_int(header.get("MJD")),
        fiber=fiber,
        ra=ra,
        dec=dec,
        lines=None,
        header=header.copy(),
    )


# ===================================================================== plotting
def _robust_top(values: np.ndarray) -> float:
    """Largest value that is not a one-pixel spike (a neighbour reaches half its height).

    Emission lines, resolved over several pixels, keep their peak; cosmic-ray or sky
    residual spikes of a single pixel do not set the y range.
    """
    if values.size < 3:
        return float(np.max(values))
    neighbours = np.maximum(
        np.concatenate([values[:1], values[:-1]]), np.concatenate([values[1:], values[-1:]])
    )
    keep = (values <= 0) | (neighbours >= 0.5 * values)
    return float(np.max(values[keep])) if keep.any() else float(np.median(values))


def _draw_line_labels(
    ax: Any, groups: dict[str, list[float]], x_min: float, x_max: float, fig_width: float
) -> int:
    """Write line labels above the axes, on a second row where they would overlap.

    Returns the number of label rows used (0, 1 or 2).
    """
    fontsize = 9.0
    # Approximate label width in data units (axes about 1.3 inch narrower than the figure).
    per_inch = (x_max - x_min) / max(fig_width - 1.3, 1.0)
    row_ends = [-math.inf, -math.inf]  # right edge of the last label on each row
    rows_used = 0
    for label, positions in sorted(groups.items(), key=lambda item: min(item[1])):
        x = float(np.mean(positions))
        half = 0.5 * (len(label) * 0.62 * fontsize / 72.0 + 0.08) * per_inch
        free = [r for r, end in enumerate(row_ends) if end < x - half]
        row = free[0] if free else int(np.argmin(row_ends))
        row_ends[row] = x + half
        rows_used = max(rows_used, row + 1)
        ax.annotate(
            label,
            xy=(x, 1.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(0, 2 + 12 * row),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=fontsize,
            color="tab:blue",
        )
    return rows_used


def plot_spectrum(spectrum: Spectrum, out_path: str | Path, lines: bool = True) -> Path:
    """Save a plot of a spectrum (matplotlib, Agg backend; PNG, PDF or SVG by extension).

    The flux is drawn with a +-1 sigma band from ``ivar`` (pixels with ``ivar == 0`` are
    left out), the pipeline model when present, and, if ``lines`` and the redshift is known,
    dashed markers of :data:`EMISSION_LINES` at their observed wavelengths
    ``lambda_rest * (1 + z)`` inside the wavelength range.

    Parameters
    ----------
    spectrum : Spectrum
        As returned by :func:`read_spectrum`.
    out_path : str or Path
        Output image file; its suffix picks the format.
    lines : bool
        Draw the emission-line markers.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    SsaldError
        The image cannot be written (missing directory, no permission, unknown format).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_path = Path(out_path)
    wl = spectrum.wavelength
    good = spectrum.good
    flux = np.where(good, spectrum.flux, np.nan)

    fig = Figure(figsize=(12, 5.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    sigma = spectrum.sigma
    if sigma is not None:
        ax.fill_between(
            wl,
            flux - sigma,
            flux + sigma,
            where=good,
            color="0.6",
            alpha=0.5,
            lw=0,
            label="\u00b11\u03c3",
            step="mid",
        )
    ax.plot(wl, flux, color="k", lw=0.6, label="flux", drawstyle="steps-mid")
    if spectrum.model is not None:
        ax.plot(wl, spectrum.model, color="tab:red", lw=0.9, alpha=0.85, label="pipeline model")

    # Robust y range: one-pixel spikes and very noisy pixels (spectrum ends, bad sky
    # residuals: error above 5x the median error) are drawn but do not set the range.
    ranged = good.copy()
    if sigma is not None and ranged.any():
        ranged &= sigma <= 5.0 * np.nanmedian(sigma[good])
    finite = flux[ranged]
    if finite.size:
        top = _robust_top(finite)
        if spectrum.model is not None and np.isfinite(spectrum.model[ranged]).any():
            top = max(top, float(np.nanmax(spectrum.model[ranged])))
        bottom = min(0.0, float(np.percentile(finite, 0.5)))
        pad = 0.06 * (top - bottom) if top > bottom else 1.0
        ax.set_ylim(bottom - pad, top + pad)
    ax.set_xlim(wl[0], wl[-1])

    n_label_rows = 0
    if lines and spectrum.z is not None:
        groups: dict[str, list[float]] = {}
        for line in EMISSION_LINES:
            observed = line.wavelength * (1.0 + spectrum.z)
            if wl[0] <= observed <= wl[-1]:
                ax.axvline(observed, color="tab:blue", ls="--", lw=0.8, alpha=0.45, zorder=0)
                groups.setdefault(line.label, []).append(observed)
        n_label_rows = _draw_line_labels(ax, groups, wl[0], wl[-1], fig.get_figwidth())

    what = " ".join(p for p in (spectrum.spec_class, spectrum.subclass) if p) or "class unknown"
    z_text = "z unknown" if spectrum.z is None else f"z = {spectrum.z:.5f}"
    if spectrum.z_warning:
        z_text += f" (ZWARNING {spectrum.z_warning})"
    ax.set_title(f"SDSS {spectrum.name}   {what}   {z_text}", pad=6 + 13 * n_label_rows)
    ax.set_xlabel("Observed vacuum wavelength [\u00c5]")
    ax.set_ylabel("F$_\\lambda$ [10$^{-17}$ erg s$^{-1}$ cm$^{-2}$ \u00c5$^{-1}$]")
    ax.axhline(0.0, color="0.5", lw=0.5)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.grid(alpha=0.2)

    try:
        fig.savefig(out_path)
    except (OSError, ValueError) as exc:
        raise SsaldError(f"cannot write plot {out_path}: {_one_line(exc)}") from exc
    return out_path
