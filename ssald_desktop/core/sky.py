"""Sky positions and the SDSS archive: parse positions, find, download and cache fields and spectra.

Everything that talks to the SDSS goes through :class:`SDSSClient`, which wraps astroquery's
``astroquery.sdss.SDSS`` with

- a timeout (default 15 s) set both on ``SDSS.TIMEOUT`` (astroquery uses it for its own
  field-name look-ups) and on every call (astroquery's default is 60 s),
- retries with exponential backoff on transient failures (connection refused, no answer within
  the timeout, HTTP 5xx, a truncated or unreadable answer); not on answers that will not
  change (HTTP 404, a SkyServer error message),
- a file cache: ``CACHE/frames/RUN-CAMCOL-FIELD/frame-[ugriz]-RRRRRR-C-FFFF.fits.bz2`` (the
  layout :func:`ssald_desktop.core.frames.open_frame_set` reads), a JSON index of the cached
  fields' footprints (``CACHE/frames/index.json``) so that a position can be found in the cache
  without any network, and ``CACHE/spectra/spec-PPPP-MMMMM-FFFF.fits``. Files are written to a
  temporary name and renamed only once complete and checked (the whole bzip2 stream is
  decompressed, the FITS signature is checked), so an interrupted download is never taken
  for a cached file.

Data files are downloaded from the same Science Archive Server URLs that astroquery's
``SDSS.get_images``/``SDSS.get_spectra`` build (``SDSS.IMAGING_URL_SUFFIX`` and
``SDSS.SPECTRA_URL_SUFFIX`` with ``astroquery.sdss.conf.sas_baseurl``), but through
``SDSS._request`` rather than astropy's download cache: the compressed frame is kept as
served (``.fits.bz2``), the transfer honours the timeout and retries, and the file goes to
this cache atomically.

Errors (all :class:`~ssald_desktop.core.errors.SsaldError`):

- :class:`~ssald_desktop.core.errors.InvalidQueryError`: a value that cannot be a query
  (unparseable or out-of-range position, bad radius, plate, band...).
- :class:`~ssald_desktop.core.errors.RemoteError`: the server could not be reached, did not
  answer within the timeout (after all retries), answered with an error or with no record for
  a plate/MJD/fiber. The message names the server or URL, the timeout and the attempts.
- :class:`~ssald_desktop.core.errors.OutsideFieldError`: the SDSS answered, but nothing
  covers the position (no imaging object near it: outside the SDSS footprint; no spectrum
  within the radius). Retrying will not help, which is why this is not a RemoteError.

astroquery is imported inside the functions that need it, never at module import, so that the
GUI starts fast.
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle, SkyCoord

from ssald_desktop.core.errors import (
    DataFileError,
    InvalidQueryError,
    OutsideFieldError,
    RemoteError,
    SsaldError,
)
from ssald_desktop.core.frames import BANDS, FieldId, FrameSet, open_frame_set, parse_frame_name

__all__ = [
    "CACHE_ENV",
    "DEFAULT_BACKOFF",
    "DEFAULT_DATA_RELEASE",
    "DEFAULT_FIELD_RADIUS",
    "DEFAULT_RETRIES",
    "DEFAULT_SPECTRUM_RADIUS",
    "DEFAULT_TIMEOUT",
    "FetchProgress",
    "SDSSClient",
    "default_cache_dir",
    "format_position",
    "normalize_bands",
    "parse_position",
    "parse_radius",
]

#: Seconds to wait for the server (connect, and between bytes of the answer).
DEFAULT_TIMEOUT = 15.0
#: Retries after the first attempt on a transient failure.
DEFAULT_RETRIES = 3
#: Wait before the first retry in seconds; doubles for every further retry (1, 2, 4 s).
DEFAULT_BACKOFF = 1.0
#: SDSS data release queried and downloaded from.
DEFAULT_DATA_RELEASE = 17
#: Search radius in arcsec for :meth:`SDSSClient.find_fields`.
DEFAULT_FIELD_RADIUS = 60.0
#: Search radius in arcsec for :meth:`SDSSClient.fetch_spectrum_at`.
DEFAULT_SPECTRUM_RADIUS = 2.0
#: Environment variable that overrides the cache folder (it is the SDSS cache folder itself).
CACHE_ENV = "SSALD_CACHE_DIR"

#: SkyServer's limit on a cone-search radius (arcsec).
_MAX_RADIUS_ARCSEC = 180.0
#: A position must lie this many pixels inside the reference band to count as covered by a
#: cached field without asking the server (bands are offset from r by up to ~11 px).
_EDGE_MARGIN_PX = 16.0
#: Shape (rows, cols) of an SDSS corrected frame.
_FRAME_ROWS, _FRAME_COLS = 1489, 2048
_INDEX_VERSION = 1
_INDEX_LOCK = threading.RLock()
_FITS_SIGNATURE = b"SIMPLE  ="

_T = TypeVar("_T")


class FetchProgress(NamedTuple):
    """Progress of a download: ``done`` of ``total`` steps, and what just happened."""

    done: int
    total: int
    message: str


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


def format_position(coord: SkyCoord) -> str:
    """``RA 38.33000, Dec -0.10700`` (degrees, ICRS), for messages."""
    return f"RA {coord.ra.deg:.5f}, Dec {coord.dec.deg:+.5f}"


def _position_help(allow_names: bool) -> str:
    text = "give RA and Dec in degrees ('38.33 -0.107') or sexagesimal ('02h33m19.3s -00d06m25s')"
    if allow_names:
        return text + ", or an object name ('NGC 6976')"
    return text + " (object names are resolved only when online)"


def _checked_coord(ra: float, dec: float, source: object) -> SkyCoord:
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise InvalidQueryError(f"position {source!r}: RA and Dec must be finite numbers")
    if not 0.0 <= ra <= 360.0:
        raise InvalidQueryError(f"position {source!r}: RA {ra:g} deg is outside 0..360 deg")
    if not -90.0 <= dec <= 90.0:
        raise InvalidQueryError(f"position {source!r}: Dec {dec:g} deg is outside -90..+90 deg")
    return SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _to_degrees(value: object, source: object) -> float:
    if isinstance(value, bool):
        raise InvalidQueryError(f"position {source!r}: {value!r} is not a number")
    if isinstance(value, u.Quantity):
        try:
            return float(value.to_value(u.deg))
        except (u.UnitsError, TypeError) as exc:
            raise InvalidQueryError(f"position {source!r}: {value} is not an angle") from exc
    if isinstance(value, str):
        number = _float_or_none(value.strip())
        if number is None:
            raise InvalidQueryError(f"position {source!r}: {value!r} is not a number of degrees")
        return number
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InvalidQueryError(f"position {source!r}: {value!r} is not a number") from exc


def _parse_pair(ra_text: str, dec_text: str, source: str) -> SkyCoord | None:
    """RA and Dec from their texts, or None when the texts are not angles at all."""
    from astropy.coordinates import RangeError

    ra_number, dec_number = _float_or_none(ra_text), _float_or_none(dec_text)
    if ra_number is not None and dec_number is not None:
        return _checked_coord(ra_number, dec_number, source)
    try:
        # Plain numbers are degrees; sexagesimal RA without unit letters is in hours.
        ra = (
            Angle(ra_number, unit=u.deg)
            if ra_number is not None
            else Angle(ra_text, unit=u.hourangle)
        )
        dec = Angle(dec_number if dec_number is not None else dec_text, unit=u.deg)
    except RangeError as exc:  # e.g. 25h, 61 minutes: a position, but an impossible one
        raise InvalidQueryError(f"position {source!r}: {exc}") from exc
    except (ValueError, TypeError, u.UnitsError):
        return None
    return _checked_coord(float(ra.deg), float(dec.deg), source)


def _resolve_name(name: str, timeout: float) -> SkyCoord:
    from astropy.coordinates.name_resolve import NameResolveError
    from astropy.utils import data as astropy_data

    try:
        with astropy_data.conf.set_temp("remote_timeout", timeout):
            coord = SkyCoord.from_name(name, frame="icrs")
    except NameResolveError as exc:
        detail = " ".join(str(exc).split())
        if "Unable to find coordinates" in detail:
            raise InvalidQueryError(
                f"{name!r} is neither a sky position nor an object name known to the Sesame "
                f"name resolver (CDS); {_position_help(True)}"
            ) from exc
        raise RemoteError(
            f"cannot resolve the name {name!r}: the Sesame name resolver (CDS) could not be "
            f"reached or did not answer within {timeout:g} s ({_short(detail)})"
        ) from exc
    except OSError as exc:
        raise RemoteError(
            f"cannot resolve the name {name!r}: the Sesame name resolver (CDS) could not be "
            f"reached within {timeout:g} s ({_short(str(exc))})"
        ) from exc
    return _checked_coord(float(coord.ra.deg), float(coord.dec.deg), name)


def parse_position(
    value: str | SkyCoord | Sequence[Any] | np.ndarray,
    allow_names: bool = False,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> SkyCoord:
    """Read one sky position (ICRS).

    Parameters
    ----------
    value : str, SkyCoord or (ra, dec)
        Degrees (``"38.33 -0.107"``, ``"38.33, -0.107"``), sexagesimal with unit letters
        (``"02h33m19.3s -00d06m25s"``) or colons/spaces (``"02:33:19.3 -00:06:25"``, RA in
        hours), a pair of numbers in degrees or of angle quantities, or a scalar
        `~astropy.coordinates.SkyCoord` (transformed to ICRS). Two plain decimal numbers are
        always degrees, never hours.
    allow_names : bool
        Resolve anything that is not a position as an object name (``"NGC 6976"``,
        ``"Mrk 739"``) with `~astropy.coordinates.SkyCoord.from_name` (Sesame, needs the
        network). Off by default: offline, a name is an error.
    timeout : float
        Seconds to wait for the name resolver.

    Returns
    -------
    astropy.coordinates.SkyCoord
        A scalar ICRS position.

    Raises
    ------
    InvalidQueryError
        The value is not a position (the message names it), is not finite, or lies outside
        RA 0..360 deg, Dec -90..+90 deg; or the name is unknown to Sesame.
    RemoteError
        The name resolver could not be reached or did not answer within ``timeout``.
    """
    if isinstance(value, SkyCoord):
        if not value.isscalar:
            raise InvalidQueryError(f"expected one sky position, got {value.size} positions")
        icrs = value.icrs
        return _checked_coord(float(icrs.ra.deg), float(icrs.dec.deg), value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidQueryError(f"empty position: {_position_help(allow_names)}")
        tokens = text.replace(",", " ").split()
        if len(tokens) in (2, 4, 6):
            half = len(tokens) // 2
            coord = _parse_pair(" ".join(tokens[:half]), " ".join(tokens[half:]), text)
            if coord is not None:
                return coord
        if allow_names:
            return _resolve_name(text, timeout)
        raise InvalidQueryError(f"cannot read {text!r} as a sky position: {_position_help(False)}")
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != 2:
            raise InvalidQueryError(f"position {value!r}: expected two values, RA and Dec")
        return _checked_coord(_to_degrees(value[0], value), _to_degrees(value[1], value), value)
    raise InvalidQueryError(f"cannot read {value!r} as a sky position: {_position_help(False)}")


def parse_radius(value: float | str | u.Quantity, *, maximum: float = _MAX_RADIUS_ARCSEC) -> float:
    """A search radius in arcsec.

    Parameters
    ----------
    value : float, str or Quantity
        A number (arcsec), an angle string (``"1 arcmin"``, ``"30s"``) or an angle quantity.
    maximum : float
        Largest radius accepted, arcsec (the SkyServer cone search stops at 3 arcmin).

    Raises
    ------
    InvalidQueryError
        Not an angle, not finite, not positive or above ``maximum``.
    """
    try:
        if isinstance(value, u.Quantity):
            arcsec = float(value.to_value(u.arcsec))
        elif isinstance(value, str):
            number = _float_or_none(value.strip())
            arcsec = number if number is not None else float(Angle(value).to_value(u.arcsec))
        elif isinstance(value, bool):
            raise TypeError(value)
        else:
            arcsec = float(value)
    except (TypeError, ValueError, u.UnitsError) as exc:
        raise InvalidQueryError(f"radius {value!r} is not an angle") from exc
    if not math.isfinite(arcsec) or arcsec <= 0:
        raise InvalidQueryError(f"radius {value!r} must be a positive finite angle")
    if arcsec > maximum:
        raise InvalidQueryError(f"radius {value!r} is above the limit of {maximum:g} arcsec")
    return arcsec


def normalize_bands(bands: str | Iterable[str]) -> tuple[str, ...]:
    """Bands in wavelength order without repeats (``"rgu"`` -> ``('u', 'g', 'r')``).

    Raises
    ------
    InvalidQueryError
        No band, or a letter that is not one of ``ugriz``.
    """
    wanted = list(bands) if not isinstance(bands, str) else list(bands.replace(",", ""))
    wanted = [str(b).strip() for b in wanted if str(b).strip()]
    unknown = [b for b in wanted if b not in BANDS]
    if unknown:
        raise InvalidQueryError(f"unknown band(s) {', '.join(unknown)}: SDSS bands are ugriz")
    if not wanted:
        raise InvalidQueryError("no band given: choose among ugriz")
    return tuple(b for b in BANDS if b in wanted)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise InvalidQueryError(f"{name} {value!r} is not a positive integer")
    try:
        number = int(value.strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise InvalidQueryError(f"{name} {value!r} is not a positive integer") from exc
    if isinstance(value, float) and (not math.isfinite(value) or value != number):
        raise InvalidQueryError(f"{name} {value!r} is not a positive integer")
    if number <= 0:
        raise InvalidQueryError(f"{name} {value!r} is not a positive integer")
    return number


def _as_field_id(value: FieldId | str) -> FieldId:
    if isinstance(value, FieldId):
        return value
    try:
        return FieldId.parse(str(value))
    except ValueError as exc:
        raise InvalidQueryError(f"{value!r} is not a field id RUN-CAMCOL-FIELD: {exc}") from exc


def default_cache_dir() -> Path:
    """The SDSS cache folder: ``$SSALD_CACHE_DIR`` or ``<user cache dir>/ssald-desktop/sdss``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ssald-desktop")) / "sdss"


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------


class _BadAnswer(Exception):
    """The server answered, but not with what was asked (truncated, not FITS, not a table)."""


class _HttpStatus(Exception):
    def __init__(self, status: int, url: str | None) -> None:
        super().__init__(f"HTTP {status}" + (f" for {url}" if url else ""))
        self.status = status


class _CacheWriteError(Exception):
    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write the cache file {path}: {exc}")


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_failure(exc: BaseException, timeout: float) -> tuple[str, bool] | None:
    """What a remote failure means, and whether a retry may help; None for anything else."""
    import requests
    from astroquery.exceptions import RemoteServiceError
    from astroquery.exceptions import TimeoutError as AstroqueryTimeout

    if isinstance(exc, _HttpStatus):
        retry = exc.status >= 500 or exc.status in (408, 429)
        note = " (no such file or record)" if exc.status == 404 else ""
        return f"answered HTTP {exc.status}{note}", retry
    if isinstance(exc, _BadAnswer):
        return f"sent an unusable answer ({exc})", True
    if isinstance(exc, (requests.exceptions.Timeout, AstroqueryTimeout, TimeoutError)):
        return f"did not answer within {timeout:g} s", True
    if isinstance(exc, requests.exceptions.ConnectionError):
        if "timed out" in str(exc).lower():  # a read timeout while streaming the body
            return f"did not answer within {timeout:g} s", True
        return "could not be reached", True
    if isinstance(exc, requests.exceptions.RequestException):
        return "broke off the transfer", True
    if isinstance(exc, RemoteServiceError):
        return "answered with an error", False
    if isinstance(exc, OSError):  # socket-level errors below requests
        return "could not be reached", True
    return None


def _check_status(response: Any) -> None:
    status = getattr(response, "status_code", 200)
    if isinstance(status, int) and status >= 400:
        raise _HttpStatus(status, getattr(response, "url", None))


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None) or {}
    if headers.get("Content-Encoding") or headers.get("content-encoding"):
        return None  # requests decodes the body: its length is not the header's
    value = headers.get("Content-Length") or headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Bz2FitsCheck:
    """Decompress a bzip2 stream as it arrives: complete, and FITS inside."""

    def __init__(self) -> None:
        self._dec = bz2.BZ2Decompressor()
        self._head = b""

    def feed(self, chunk: bytes) -> None:
        try:
            while chunk:
                if self._dec.eof:  # a multi-stream file (pbzip2): start the next stream
                    chunk = self._dec.unused_data + chunk
                    self._dec = bz2.BZ2Decompressor()
                out = self._dec.decompress(chunk)
                chunk = b""
                if len(self._head) < len(_FITS_SIGNATURE):
                    self._head += out[: len(_FITS_SIGNATURE) - len(self._head)]
                if self._dec.eof and self._dec.unused_data:
                    chunk, self._dec = self._dec.unused_data, bz2.BZ2Decompressor()
        except (OSError, EOFError, ValueError) as exc:
            raise _BadAnswer(f"not a valid bzip2 stream: {exc}") from exc

    def finish(self, size: int) -> None:
        if not self._dec.eof:
            raise _BadAnswer(f"the bzip2 stream is truncated after {size} bytes")
        if not self._head.startswith(_FITS_SIGNATURE):
            raise _BadAnswer("the file is not a compressed FITS file")


class _FitsCheck:
    """A plain FITS file: the signature, and a length that is a whole number of blocks."""

    def __init__(self) -> None:
        self._head = b""

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < len(_FITS_SIGNATURE):
            self._head += chunk[: len(_FITS_SIGNATURE) - len(self._head)]

    def finish(self, size: int) -> None:
        if not self._head.startswith(_FITS_SIGNATURE):
            raise _BadAnswer("the file is not a FITS file")
        if size % 2880:
            raise _BadAnswer(f"the FITS file is truncated ({size} bytes, not a multiple of 2880)")


def _stream_to(response: Any, dest: Path, check: _Bz2FitsCheck | _FitsCheck) -> None:
    """Write the response body to ``dest`` through a temporary file, checked, then renamed."""
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.part"
    size = 0
    try:
        try:
            fh = open(tmp, "wb")
        except OSError as exc:
            raise _CacheWriteError(tmp, exc) from exc
        with fh:
            for chunk in response.iter_content(chunk_size=1 << 16):
                if not chunk:
                    continue
                check.feed(chunk)
                size += len(chunk)
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise _CacheWriteError(tmp, exc) from exc
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise _CacheWriteError(tmp, exc) from exc
        expected = _content_length(response)
        if expected is not None and expected != size:
            raise _BadAnswer(f"received {size} of {expected} bytes")
        check.finish(size)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise _CacheWriteError(dest, exc) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The field index
# --------------------------------------------------------------------------------------------


def _frame_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for p in entries:
        parsed = parse_frame_name(p.name)
        if parsed is not None:
            out.setdefault(parsed[0], p)
    return out


def _field_entry(folder: Path) -> dict[str, Any] | None:
    """Footprint record of a cached field from one frame header, or None if unreadable."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    files = _frame_files(folder)
    if not files:
        return None
    band = "r" if "r" in files else next(iter(files))
    path = files[band]
    try:
        # Read only the primary header: decompress the start of the stream, not the file.
        if path.suffix == ".bz2":
            with bz2.open(path, "rb") as fh:
                header = fits.Header.fromfile(fh)
        elif path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                header = fits.Header.fromfile(fh)
        else:
            header = fits.getheader(path, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
        rows, cols = int(header["NAXIS2"]), int(header["NAXIS1"])
        x = np.array([-0.5, cols - 0.5, cols - 0.5, -0.5, (cols - 1) / 2.0])
        y = np.array([-0.5, -0.5, rows - 0.5, rows - 0.5, (rows - 1) / 2.0])
        sky = wcs.pixel_to_world(x, y)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return {
        "band": band,
        "shape": [rows, cols],
        "wcs": wcs.to_header_string(relax=True),
        "centre": [float(sky.ra.deg[4]), float(sky.dec.deg[4])],
        "corners": [
            [float(r), float(d)] for r, d in zip(sky.ra.deg[:4], sky.dec.deg[:4], strict=True)
        ],
    }


def _entry_margin(entry: dict[str, Any], coord: SkyCoord) -> float:
    """Pixels from ``coord`` to the nearest edge of an indexed field (negative: outside)."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(fits.Header.fromstring(entry["wcs"]))
        rows, cols = entry["shape"]
        x, y = (float(v) for v in wcs.world_to_pixel(coord))
    except (KeyError, ValueError, TypeError):
        return -math.inf
    if not (math.isfinite(x) and math.isfinite(y)):
        return -math.inf
    return min(x + 0.5, cols - 0.5 - x, y + 0.5, rows - 0.5 - y)


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class SDSSClient:
    """Find, download and cache SDSS imaging fields and spectra, with timeouts and retries.

    Parameters
    ----------
    cache_dir : path-like, optional
        The SDSS cache folder; default :func:`default_cache_dir` (``$SSALD_CACHE_DIR`` or the
        user cache folder).
    timeout : float, optional
        Seconds to wait for the server, per attempt (connect, and between bytes of the answer).
        Set on ``astroquery.sdss.SDSS.TIMEOUT`` and passed to every call. Default
        :data:`DEFAULT_TIMEOUT` (15 s).
    retries : int, optional
        Retries after the first attempt on a transient failure: ``retries + 1`` attempts in all.
        Default :data:`DEFAULT_RETRIES` (3).
    backoff : float, optional
        Seconds before the first retry; doubled for each further retry. Default
        :data:`DEFAULT_BACKOFF` (1 s: waits of 1, 2, 4 s).
    data_release : int, optional
        SDSS data release, 8 or later (the corrected-frame layout). Default
        :data:`DEFAULT_DATA_RELEASE` (17).

    Notes
    -----
    A failing call gives up after about ``(retries + 1) * timeout`` plus
    ``backoff * (2**retries - 1)`` seconds.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        data_release: int | None = None,
    ) -> None:
        # None takes the module default at construction (a settings module may change them).
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        retries = DEFAULT_RETRIES if retries is None else retries
        backoff = DEFAULT_BACKOFF if backoff is None else backoff
        data_release = DEFAULT_DATA_RELEASE if data_release is None else data_release
        try:
            timeout = float(timeout)
            backoff = float(backoff)
        except (TypeError, ValueError) as exc:
            raise InvalidQueryError(f"timeout and backoff must be numbers: {exc}") from exc
        if not (math.isfinite(timeout) and timeout > 0):
            raise InvalidQueryError(f"timeout must be a positive number of seconds, got {timeout}")
        if not (math.isfinite(backoff) and backoff >= 0):
            raise InvalidQueryError(f"backoff must be >= 0 seconds, got {backoff}")
        if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
            raise InvalidQueryError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(data_release, bool) or not isinstance(data_release, (int, np.integer)):
            raise InvalidQueryError(f"data_release must be an integer, got {data_release!r}")
        if not 8 <= int(data_release) <= 99:
            raise InvalidQueryError(
                f"data release {data_release} is not supported: SDSS corrected frames start at DR8"
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = backoff
        self.data_release = int(data_release)

    def __repr__(self) -> str:
        return (
            f"SDSSClient(cache_dir={str(self.cache_dir)!r}, timeout={self.timeout:g}, "
            f"retries={self.retries}, data_release={self.data_release})"
        )

    # ---- paths -----------------------------------------------------------------------------

    @property
    def frames_dir(self) -> Path:
        """Folder holding one sub-folder ``RUN-CAMCOL-FIELD`` per cached field."""
        return self.cache_dir / "frames"

    @property
    def spectra_dir(self) -> Path:
        """Folder holding the cached ``spec-PPPP-MMMMM-FFFF.fits`` files."""
        return self.cache_dir / "spectra"

    def field_folder(self, field_id: FieldId | str) -> Path:
        """The cache folder of a field (it may not exist yet)."""
        return self.frames_dir / str(_as_field_id(field_id))

    def spectrum_path(self, plate: int, mjd: int, fiber: int) -> Path:
        """The cache path of a spectrum (it may not exist yet)."""
        plate = _positive_int(plate, "plate")
        mjd = _positive_int(mjd, "MJD")
        fiber = _positive_int(fiber, "fiber")
        return self.spectra_dir / f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits"

    def cached_bands(self, field_id: FieldId | str) -> tuple[str, ...]:
        """Bands of a field already in the cache, in wavelength order."""
        files = _frame_files(self.field_folder(field_id))
        return tuple(b for b in BANDS if b in files)

    # ---- URLs ------------------------------------------------------------------------------

    def frame_url(self, field_id: FieldId | str, band: str) -> str:
        """URL of a corrected frame on the SDSS Science Archive Server, as astroquery builds it."""
        from astroquery.sdss import SDSS, conf

        fid = _as_field_id(field_id)
        if len(normalize_bands(band)) != 1 or len(band) != 1:
            raise InvalidQueryError(f"one band expected, got {band!r}")
        dr = self.data_release
        if dr <= 12:
            instrument = "boss"
        elif dr <= 17:
            instrument = "eboss"
        else:
            instrument = "prior-surveys/sdss4-dr17-eboss"
        return SDSS.IMAGING_URL_SUFFIX.format(
            base=conf.sas_baseurl,
            dr=dr,
            instrument=instrument,
            rerun=fid.rerun,
            run=fid.run,
            camcol=fid.camcol,
            field=fid.field,
            band=band,
        )

    def spectrum_url(self, plate: int, mjd: int, fiber: int, run2d: str) -> str:
        """URL of a spec file on the SDSS Science Archive Server, as astroquery builds it."""
        from astroquery.sdss import SDSS, conf

        plate = _positive_int(plate, "plate")
        mjd = _positive_int(mjd, "MJD")
        fiber = _positive_int(fiber, "fiber")
        run2d = str(run2d).strip()
        if not re.fullmatch(r"[A-Za-z0-9_.]+", run2d):
            raise RemoteError(f"the SkyServer gave an unusable run2d {run2d!r} for plate {plate}")
        dr = self.data_release
        spectra_path = (
            "spectra/full" if dr > 15 and run2d not in ("26", "103", "104") else "spectra"
        )
        redux_path = "sdss/spectro/redux"
        if dr > 17:
            redux_path = "spectro/sdss/redux"
            match = SDSS.PARSE_BOSS_RUN2D.match(run2d)
            if match is not None and int(match.group("major")) > 5:
                raise RemoteError(
                    f"spectrum plate {plate} MJD {mjd} fiber {fiber} is an SDSS-V spectrum "
                    f"(run2d {run2d}), which this client does not download"
                )
        return SDSS.SPECTRA_URL_SUFFIX.format(
            base=conf.sas_baseurl,
            dr=dr,
            redux_path=redux_path,
            run2d=run2d,
            spectra_path=spectra_path,
            plate=plate,
            mjd=mjd,
            fiber=fiber,
        )

    # ---- remote calls ----------------------------------------------------------------------

    def _sdss(self) -> Any:
        from astroquery.sdss import SDSS

        SDSS.TIMEOUT = self.timeout  # astroquery's field-name look-up reads it
        return SDSS

    def _skyserver(self) -> str:
        from astroquery.sdss import conf

        return f"the SDSS SkyServer ({conf.skyserver_baseurl}, DR{self.data_release})"

    def _with_retries(self, server: str, what: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` until it succeeds, retrying transient failures with backoff."""
        attempts = self.retries + 1
        last: BaseException | None = None
        last_text = ""
        for number in range(attempts):
            if number:
                time.sleep(self.backoff * 2 ** (number - 1))
            try:
                return attempt()
            except SsaldError:
                raise
            except _CacheWriteError as exc:
                raise DataFileError(str(exc)) from exc
            except Exception as exc:
                described = _describe_failure(exc, self.timeout)
                if described is None:
                    raise
                text, retry = described
                if not retry:
                    raise RemoteError(
                        f"{server} {text} while {what}: {_short(str(exc)) or type(exc).__name__}"
                    ) from exc
                last, last_text = exc, text
        assert last is not None
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        raise RemoteError(
            f"{server} {last_text} while {what} (timeout {self.timeout:g} s, {tries}): "
            f"{_short(str(last)) or type(last).__name__}"
        ) from last

    def _query(self, what: str, call: Callable[[Any], Any]) -> Any:
        """Run an astroquery ``*_async`` query and parse its table (None when no rows)."""

        def attempt() -> Any:
            sdss = self._sdss()
            response = call(sdss)
            _check_status(response)
            from astroquery.exceptions import RemoteServiceError

            try:
                return sdss._parse_result(response)
            except RemoteServiceError:
                raise
            except Exception as exc:  # an HTML error page, a half table...
                raise _BadAnswer(f"not a result table: {_short(str(exc), 120)}") from exc

        return self._with_retries(self._skyserver(), what, attempt)

    def _download(
        self, url: str, dest: Path, check: Callable[[], _Bz2FitsCheck | _FitsCheck]
    ) -> None:
        def attempt() -> None:
            sdss = self._sdss()
            response = sdss._request("GET", url, timeout=self.timeout, cache=False, stream=True)
            try:
                _check_status(response)
                _stream_to(response, dest, check())
            finally:
                close = getattr(response, "close", None)
                if callable(close):
                    close()

        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataFileError(f"cannot create the cache folder {dest.parent}: {exc}") from exc
        self._with_retries(url, f"downloading {dest.name}", attempt)

    # ---- fields ----------------------------------------------------------------------------

    def find_fields(
        self,
        position: str | SkyCoord | Sequence[Any],
        radius: float | str | u.Quantity = DEFAULT_FIELD_RADIUS,
    ) -> list[FieldId]:
        """The SDSS imaging fields that hold objects within ``radius`` of a position.

        A cone search of PhotoObjAll (all detections, primary or not) through astroquery's
        ``SDSS.query_region``; the position is sent as validated floats, never as text.

        Parameters
        ----------
        position : str, SkyCoord or (ra, dec)
            Anything :func:`parse_position` reads (names are resolved).
        radius : float, str or Quantity
            Search radius (float: arcsec), at most 3 arcmin.

        Returns
        -------
        list of FieldId
            One per field, rerun 301 first, then the field in which the object nearest to the
            position lies closest to the frame centre (``rowc``/``colc``), then the field with
            the most objects in the cone.

        Raises
        ------
        InvalidQueryError
            Bad position or radius.
        RemoteError
            The SkyServer failed (after the retries).
        OutsideFieldError
            No SDSS imaging object in the cone: the position is outside the SDSS footprint.
        """
        coord = parse_position(position, allow_names=True, timeout=self.timeout)
        arcsec = parse_radius(radius)
        what = f'looking for SDSS imaging fields within {arcsec:g}" of {format_position(coord)}'
        table = self._query(
            what,
            lambda sdss: sdss.query_region_async(
                coord,
                radius=arcsec * u.arcsec,
                photoobj_fields=["ra", "dec", "run", "rerun", "camcol", "field", "rowc", "colc"],
                data_release=self.data_release,
                timeout=self.timeout,
                cache=False,
            ),
        )
        if table is None or len(table) == 0:
            raise OutsideFieldError(
                f'no SDSS imaging within {arcsec:g}" of {format_position(coord)} '
                f"(DR{self.data_release}): the position is outside the SDSS imaging footprint"
                + (f' (or try a radius up to {_MAX_RADIUS_ARCSEC:g}")' if arcsec < 60 else "")
            )
        return _fields_from_table(table, coord, self._skyserver())

    def iter_fetch_field(
        self, field_id: FieldId | str, bands: str | Iterable[str] = "ugriz"
    ) -> Generator[FetchProgress, None, Path]:
        """Download the missing bands of a field into the cache, yielding progress.

        The generator's return value is the field's cache folder (superqt's generator
        workers emit it as ``returned``). A field whose bands are all cached makes no network
        access at all.

        Raises
        ------
        InvalidQueryError
            Bad field id or band.
        RemoteError
            A download failed (after the retries); the bands downloaded before stay cached.
        DataFileError
            The cache folder cannot be written.
        """
        fid = _as_field_id(field_id)
        wanted = normalize_bands(bands)
        folder = self.field_folder(fid)
        present = _frame_files(folder)
        missing = [b for b in wanted if b not in present]
        total = len(wanted)
        done = total - len(missing)
        yield FetchProgress(done, total, f"field {fid}: {done} of {total} bands in the cache")
        for band in missing:
            dest = folder / fid.frame_name(band)
            try:
                self._download(self.frame_url(fid, band), dest, _Bz2FitsCheck)
            except BaseException:
                try:
                    folder.rmdir()  # only when empty: leave no empty field folder behind
                except OSError:
                    pass
                raise
            done += 1
            yield FetchProgress(done, total, f"field {fid}: band {band} downloaded")
        if missing or str(fid) not in self._read_index():
            self._index_field(fid)
        return folder

    def fetch_field(self, field_id: FieldId | str, bands: str | Iterable[str] = "ugriz") -> Path:
        """Download a field's frames into the cache (only the missing bands) and return its folder.

        Parameters
        ----------
        field_id : FieldId or str
            The field, or ``"RUN-CAMCOL-FIELD"``.
        bands : str or iterable of str
            Bands to fetch.

        Returns
        -------
        pathlib.Path
            ``CACHE/frames/RUN-CAMCOL-FIELD``, which
            :func:`~ssald_desktop.core.frames.open_frame_set` opens.

        Raises
        ------
        InvalidQueryError, RemoteError, DataFileError
            See :meth:`iter_fetch_field`.
        """
        steps = self.iter_fetch_field(field_id, bands)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    def cached_field_containing(
        self, position: str | SkyCoord | Sequence[Any], margin: float = _EDGE_MARGIN_PX
    ) -> FieldId | None:
        """The cached field that covers a position best, found offline from the index.

        Parameters
        ----------
        position : str, SkyCoord or (ra, dec)
            The position (names are not resolved here: this works offline).
        margin : float
            Pixels the position must lie inside the field's reference band.

        Returns
        -------
        FieldId or None
            The field where the position is farthest from the edges, or None.
        """
        coord = parse_position(position)
        best: tuple[float, str, int] | None = None
        for key, entry in self._read_index(refresh=True).items():
            m = _entry_margin(entry, coord)
            if m >= margin and (best is None or m > best[0]):
                best = (m, key, int(entry.get("rerun", 301)))
        if best is None:
            return None
        fid = FieldId.parse(best[1])
        return FieldId(fid.run, fid.camcol, fid.field, best[2])

    def fetch_field_at(
        self,
        position: str | SkyCoord | Sequence[Any],
        bands: str | Iterable[str] = "ugriz",
        radius: float | str | u.Quantity = DEFAULT_FIELD_RADIUS,
        max_candidates: int = 3,
    ) -> FrameSet:
        """Open the field that covers a position, from the cache or downloaded.

        A cached field that holds the position at least 16 px inside its edges is used
        without asking the server (the bands it lacks are downloaded). Otherwise the fields
        near the position are looked up (:meth:`find_fields`) and fetched, best first, until
        one covers the position.

        Parameters
        ----------
        position : str, SkyCoord or (ra, dec)
            Anything :func:`parse_position` reads; names are resolved online.
        bands : str or iterable of str
            Bands to open.
        radius : float, str or Quantity
            Search radius for the field lookup (float: arcsec).
        max_candidates : int
            Fields downloaded at most while looking for one that covers the position.

        Returns
        -------
        FrameSet

        Raises
        ------
        InvalidQueryError, RemoteError, DataFileError
            As :func:`parse_position`, :meth:`find_fields` and :meth:`fetch_field`.
        OutsideFieldError
            No SDSS field covers the position.
        """
        coord = parse_position(position, allow_names=True, timeout=self.timeout)
        wanted = normalize_bands(bands)
        cached = self.cached_field_containing(coord)
        if cached is not None:
            return open_frame_set(self.fetch_field(cached, wanted), bands=wanted)
        try:
            candidates = self.find_fields(coord, radius)
        except RemoteError:
            fallback = self.cached_field_containing(coord, margin=0.0)
            if fallback is None:
                raise
            return open_frame_set(self.fetch_field(fallback, wanted), bands=wanted)
        best: tuple[float, FieldId] | None = None
        for fid in candidates[: max(1, int(max_candidates))]:
            self.fetch_field(fid, wanted)
            entry = self._read_index().get(str(fid))
            m = _entry_margin(entry, coord) if entry else -math.inf
            if m >= _EDGE_MARGIN_PX:
                best = (m, fid)
                break
            if m >= 0 and (best is None or m > best[0]):
                best = (m, fid)
        if best is None:
            names = ", ".join(str(f) for f in candidates[: max(1, int(max_candidates))])
            raise OutsideFieldError(
                f"{format_position(coord)} lies in none of the SDSS fields found near it ({names})"
            )
        return open_frame_set(self.field_folder(best[1]), bands=wanted)

    # ---- index -----------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        """The JSON index of the cached fields' footprints."""
        return self.frames_dir / "index.json"

    def _read_index(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Index entries by field id; with ``refresh``, add cached folders missing from it."""
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
            fields = data["fields"] if data.get("version") == _INDEX_VERSION else {}
            if not isinstance(fields, dict):
                fields = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            fields = {}
        if not refresh or not self.frames_dir.is_dir():
            return fields
        changed = False
        present = set()
        for folder in sorted(self.frames_dir.iterdir()):
            try:
                fid = FieldId.parse(folder.name)
            except ValueError:
                continue
            if not folder.is_dir() or not _frame_files(folder):
                continue
            present.add(str(fid))
            if str(fid) not in fields:
                entry = _field_entry(folder)
                if entry is not None:
                    entry["rerun"] = fid.rerun
                    fields[str(fid)] = entry
                    changed = True
        for key in [k for k in fields if k not in present]:
            del fields[key]
            changed = True
        if changed:
            self._write_index(fields)
        return fields

    def _write_index(self, fields: dict[str, dict[str, Any]]) -> None:
        with _INDEX_LOCK:
            tmp = self.index_path.with_name(f".index.{uuid.uuid4().hex[:12]}.part")
            try:
                self.frames_dir.mkdir(parents=True, exist_ok=True)
                tmp.write_text(
                    json.dumps({"version": _INDEX_VERSION, "fields": fields}, indent=1),
                    encoding="utf-8",
                )
                os.replace(tmp, self.index_path)
            except OSError:
                pass  # the index only speeds up offline lookups; the frames are the truth
            finally:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass

    def _index_field(self, fid: FieldId) -> None:
        entry = _field_entry(self.field_folder(fid))
        if entry is None:
            return
        entry["rerun"] = fid.rerun
        with _INDEX_LOCK:  # read-modify-write under one lock (re-entrant for _write_index)
            fields = self._read_index()
            fields[str(fid)] = entry
            self._write_index(fields)

    # ---- spectra ---------------------------------------------------------------------------

    def fetch_spectrum(self, plate: int, mjd: int, fiber: int) -> Path:
        """Download one SDSS spectrum (spec file) into the cache and return its path.

        The run2d needed for the URL comes from a SpecObjAll query (astroquery's
        ``SDSS.query_specobj``); a cached spectrum makes no network access.

        Parameters
        ----------
        plate, mjd, fiber : int
            Positive integers.

        Returns
        -------
        pathlib.Path
            ``CACHE/spectra/spec-PPPP-MMMMM-FFFF.fits``.

        Raises
        ------
        InvalidQueryError
            plate, mjd or fiber not a positive integer.
        RemoteError
            The SkyServer or the archive failed, or has no such spectrum.
        DataFileError
            The cache folder cannot be written.
        """
        plate = _positive_int(plate, "plate")
        mjd = _positive_int(mjd, "MJD")
        fiber = _positive_int(fiber, "fiber")
        dest = self.spectrum_path(plate, mjd, fiber)
        if dest.is_file():
            return dest
        what = f"looking up the spectrum plate {plate} MJD {mjd} fiber {fiber}"
        table = self._query(
            what,
            lambda sdss: sdss.query_specobj_async(
                plate=plate,
                mjd=mjd,
                fiberID=fiber,
                fields=["run2d", "plate", "mjd", "fiberID"],
                data_release=self.data_release,
                timeout=self.timeout,
                cache=False,
            ),
        )
        rows = _spec_rows(table, self._skyserver())
        rows = [r for r in rows if (r[0], r[1], r[2]) == (plate, mjd, fiber)] or rows
        if not rows:
            raise RemoteError(
                f"{self._skyserver()} has no spectrum plate {plate} MJD {mjd} fiber {fiber}"
            )
        self._download(self.spectrum_url(plate, mjd, fiber, rows[0][3]), dest, _FitsCheck)
        return dest

    def fetch_spectrum_at(
        self,
        position: str | SkyCoord | Sequence[Any],
        radius: float | str | u.Quantity = DEFAULT_SPECTRUM_RADIUS,
    ) -> Path:
        """Download the SDSS spectrum of the object at a position and return its path.

        Among the spectra of objects within ``radius`` (astroquery's
        ``SDSS.query_region(spectro=True)``), the science-primary one of the nearest object
        is chosen.

        Parameters
        ----------
        position : str, SkyCoord or (ra, dec)
            Anything :func:`parse_position` reads; names are resolved online.
        radius : float, str or Quantity
            Search radius (float: arcsec), at most 3 arcmin.

        Returns
        -------
        pathlib.Path
            ``CACHE/spectra/spec-PPPP-MMMMM-FFFF.fits``.

        Raises
        ------
        OutsideFieldError
            No SDSS spectrum within ``radius``.
        InvalidQueryError, RemoteError, DataFileError
            As :meth:`fetch_spectrum`.
        """
        coord = parse_position(position, allow_names=True, timeout=self.timeout)
        arcsec = parse_radius(radius)
        what = f'looking for SDSS spectra within {arcsec:g}" of {format_position(coord)}'
        table = self._query(
            what,
            lambda sdss: sdss.query_region_async(
                coord,
                radius=arcsec * u.arcsec,
                spectro=True,
                photoobj_fields=["ra", "dec"],
                specobj_fields=["plate", "mjd", "fiberID", "run2d", "sciencePrimary"],
                data_release=self.data_release,
                timeout=self.timeout,
                cache=False,
            ),
        )
        rows = _spec_rows(table, self._skyserver(), coord)
        if not rows:
            raise OutsideFieldError(
                f'no SDSS spectrum within {arcsec:g}" of {format_position(coord)} '
                f"(DR{self.data_release})"
            )
        plate, mjd, fiber, run2d = rows[0][:4]
        dest = self.spectrum_path(plate, mjd, fiber)
        if not dest.is_file():
            self._download(self.spectrum_url(plate, mjd, fiber, run2d), dest, _FitsCheck)
        return dest


# --------------------------------------------------------------------------------------------
# Result tables
# --------------------------------------------------------------------------------------------


def _column(table: Any, name: str) -> str | None:
    lowered = {c.lower(): c for c in table.colnames}
    return lowered.get(name.lower())


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip()
    return str(value).strip()


def _separations(table: Any, coord: SkyCoord | None) -> np.ndarray:
    ra_col, dec_col = _column(table, "ra"), _column(table, "dec")
    if coord is None or ra_col is None or dec_col is None:
        return np.zeros(len(table))
    try:
        ra = np.asarray(table[ra_col], dtype=float)
        dec = np.asarray(table[dec_col], dtype=float)
        sep = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").separation(coord).arcsec
    except (ValueError, TypeError):
        return np.zeros(len(table))
    return np.where(np.isfinite(sep), sep, np.inf)


def _fields_from_table(table: Any, coord: SkyCoord, server: str) -> list[FieldId]:
    """Distinct fields of a PhotoObj result, best first (see :meth:`SDSSClient.find_fields`)."""
    cols = {name: _column(table, name) for name in ("run", "camcol", "field", "rerun")}
    absent = [name for name in ("run", "camcol", "field") if cols[name] is None]
    if absent:
        raise RemoteError(f"{server} answered a table without the column(s) {', '.join(absent)}")
    rowc_col, colc_col = _column(table, "rowc"), _column(table, "colc")
    sep = _separations(table, coord)
    groups: dict[FieldId, dict[str, float]] = {}
    for i, row in enumerate(table):
        try:
            rerun = int(row[cols["rerun"]]) if cols["rerun"] is not None else 301
            fid = FieldId(
                int(row[cols["run"]]), int(row[cols["camcol"]]), int(row[cols["field"]]), rerun
            )
        except (ValueError, TypeError):
            continue
        edge = math.inf
        if rowc_col is not None and colc_col is not None:
            try:
                rowc, colc = float(row[rowc_col]), float(row[colc_col])
                half_r, half_c = (_FRAME_ROWS - 1) / 2.0, (_FRAME_COLS - 1) / 2.0
                edge = max(abs(rowc - half_r) / (half_r + 0.5), abs(colc - half_c) / (half_c + 0.5))
            except (ValueError, TypeError):
                edge = math.inf
            if not math.isfinite(edge):
                edge = math.inf
        group = groups.setdefault(fid, {"count": 0.0, "sep": math.inf, "edge": math.inf})
        group["count"] += 1
        if sep[i] < group["sep"]:
            group["sep"], group["edge"] = float(sep[i]), edge
    ordered = sorted(
        groups.items(),
        key=lambda item: (
            item[0].rerun != 301,
            item[1]["edge"],
            -item[1]["count"],
            item[1]["sep"],
            item[0],
        ),
    )
    return [fid for fid, _ in ordered]


def _spec_rows(
    table: Any, server: str, coord: SkyCoord | None = None
) -> list[tuple[int, int, int, str]]:
    """(plate, mjd, fiber, run2d) of a SpecObj result: science-primary and nearest first."""
    if table is None or len(table) == 0:
        return []
    cols = {name: _column(table, name) for name in ("plate", "mjd", "fiberID", "run2d")}
    absent = [name for name, col in cols.items() if col is None]
    if absent:
        raise RemoteError(f"{server} answered a table without the column(s) {', '.join(absent)}")
    primary_col = _column(table, "sciencePrimary")
    sep = _separations(table, coord)
    rows = []
    for i, row in enumerate(table):
        try:
            key = (
                int(row[cols["plate"]]),
                int(row[cols["mjd"]]),
                int(row[cols["fiberID"]]),
                _as_text(row[cols["run2d"]]),
            )
            primary = int(row[primary_col]) if primary_col is not None else 1
        except (ValueError, TypeError):
            continue
        rows.append((primary != 1, float(sep[i]), i, key))
    rows.sort()
    return [r[3] for r in rows]
