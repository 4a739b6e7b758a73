"""Known dual AGN and the cross-match of any position or table against them.

The catalogue is the compact table ``resources/catalogs/known_dagn.ecsv`` (one row per system,
both components' positions), derived by ``resources/catalogs/derive_known_dagn.py`` from
Big MAC DR1 (Pfeifle et al. 2024), the SDSS DR7 AGN pairs of Liu et al. (2011, ApJ 737, 101)
and GOTHIC's 159 dual AGN (Bhattacharya et al. 2023, MNRAS 524, 4482); its README gives the
columns and citations.

Cross-matching uses :mod:`astropy.coordinates`: a single position against every component with
:meth:`~astropy.coordinates.SkyCoord.separation`, a table of positions with
:func:`~astropy.coordinates.search_around_sky`. A system matches when either component lies
within the radius; each system is reported once, by its nearest component.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import ssald_desktop
from ssald_desktop.core.errors import DataFileError, SsaldError

if TYPE_CHECKING:  # pragma: no cover
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

__all__ = [
    "DEFAULT_RADIUS_ARCSEC",
    "REQUIRED_COLUMNS",
    "CatalogError",
    "KnownDualAGN",
    "Match",
    "crossmatch",
    "crossmatch_table",
    "default_catalog",
    "known_dagn_path",
    "read_positions",
    "resources_dir",
]

#: Default cross-match radius (arcsec): a few SDSS seeing discs.
DEFAULT_RADIUS_ARCSEC = 5.0
#: Largest radius accepted (arcsec).
MAX_RADIUS_ARCSEC = 3600.0
REQUIRED_COLUMNS = ("name", "catalog", "status", "ra1", "dec1", "ra2", "dec2", "z1", "z2",
                    "sep_arcsec", "sep_kpc", "reference")
_RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "radeg", "alpha", "ra1")
_DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "decdeg",
              "delta", "dec1")
_ID_NAMES = ("object_id", "id", "objid", "obj_id", "obj id", "name", "specobjid")


class CatalogError(SsaldError):
    """A catalogue or position table that cannot be used, or a bad position or radius."""


def resources_dir() -> Path:
    """The ``resources/`` folder at the repository (or bundle) root.

    ``resources/`` sits beside the ``ssald_desktop`` package: ``Path(ssald_desktop.__file__)
    .parents[1] / "resources"``. ``$SSALD_RESOURCES`` overrides it (installers, tests).
    """
    env = os.environ.get("SSALD_RESOURCES")
    if env:
        return Path(env)
    return Path(ssald_desktop.__file__).resolve().parents[1] / "resources"


def known_dagn_path() -> Path:
    """The shipped known dual-AGN table, ``resources/catalogs/known_dagn.ecsv``."""
    return resources_dir() / "catalogs" / "known_dagn.ecsv"


def _check_radius(radius_arcsec: Any) -> float:
    try:
        r = float(radius_arcsec)
    except (TypeError, ValueError):
        raise CatalogError(f"radius {radius_arcsec!r} is not a number of arcseconds") from None
    if not (math.isfinite(r) and 0 < r <= MAX_RADIUS_ARCSEC):
        raise CatalogError(f"radius {radius_arcsec!r} arcsec is not in (0, "
                           f"{MAX_RADIUS_ARCSEC:g}]")
    return r


def _check_position(ra: Any, dec: Any) -> tuple[float, float]:
    try:
        r, d = float(ra), float(dec)
    except (TypeError, ValueError):
        raise CatalogError(f"position ({ra!r}, {dec!r}) is not two numbers in degrees") from None
    if not (math.isfinite(r) and 0.0 <= r <= 360.0):
        raise CatalogError(f"RA {ra!r} is not in 0..360 degrees")
    if not (math.isfinite(d) and -90.0 <= d <= 90.0):
        raise CatalogError(f"Dec {dec!r} is not in -90..90 degrees")
    return r, d


def _filled(col: Any, fill: Any) -> np.ndarray:
    return np.asarray(col.filled(fill) if hasattr(col, "filled") else col)


@dataclass(frozen=True)
class Match:
    """A known system near a position.

    ``component`` is the matched nucleus (1 or 2) and ``distance_arcsec`` its distance from
    the position; the rest describes the system (see ``resources/catalogs/README.md``).
    ``input_row`` is the row of the input table for table cross-matches (else None).
    """

    row: int
    name: str
    catalog: str
    status: str
    component: int
    distance_arcsec: float
    ra: float
    dec: float
    z: float | None
    sep_arcsec: float | None
    sep_kpc: float | None
    reference: str
    input_row: int | None = None
    #: SDSS spectra of the system's components as ``"plate-mjd-fiber"`` (where the source
    #: catalogue gives them), so the card can open them.
    spectra: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The match as a JSON-ready dict."""
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line for a card or a terminal."""
        z = f" z={self.z:.4f}" if self.z is not None else ""
        sep = (f", pair sep {self.sep_arcsec:.1f}\"" if self.sep_arcsec is not None else "")
        kpc = f" ({self.sep_kpc:.1f} kpc)" if self.sep_kpc is not None and sep else ""
        spec = f"; SDSS spectra {', '.join(self.spectra)}" if self.spectra else ""
        return (f"{self.name} [{self.catalog}, {self.status}] component {self.component} at "
                f"{self.distance_arcsec:.2f}\"{z}{sep}{kpc}{spec}")


def _opt(value: Any) -> float | None:
    if value is None or np.ma.is_masked(value):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


class KnownDualAGN:
    """The known dual-AGN table with its component coordinates, ready to cross-match.

    Parameters
    ----------
    table : astropy.table.Table or path-like, optional
        The catalogue (default: :func:`known_dagn_path`). A table needs the columns of
        :data:`REQUIRED_COLUMNS`; a component without a position (masked) never matches.
    """

    def __init__(self, table: Table | str | os.PathLike[str] | None = None):
        from astropy.table import Table

        if table is None or isinstance(table, (str, os.PathLike)):
            path = Path(table) if table is not None else known_dagn_path()
            self.path: Path | None = path
            table = _read_catalog(path)
        else:
            self.path = None
            missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
            if missing:
                raise CatalogError(f"catalogue table lacks the columns {', '.join(missing)}")
        assert isinstance(table, Table)
        self.table = table
        ra = np.concatenate([_filled(table["ra1"], np.nan), _filled(table["ra2"], np.nan)])
        dec = np.concatenate([_filled(table["dec1"], np.nan), _filled(table["dec2"], np.nan)])
        rows = np.concatenate([np.arange(len(table)), np.arange(len(table))])
        comp = np.concatenate([np.ones(len(table), int), np.full(len(table), 2)])
        ok = np.isfinite(ra.astype(float)) & np.isfinite(dec.astype(float))
        self._ra, self._dec = ra[ok].astype(float), dec[ok].astype(float)
        self._row, self._component = rows[ok], comp[ok]
        self._coord: SkyCoord | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def components(self) -> SkyCoord:
        """Every component with a position, as one SkyCoord (ICRS)."""
        if self._coord is None:
            import astropy.units as u
            from astropy.coordinates import SkyCoord

            self._coord = SkyCoord(self._ra * u.deg, self._dec * u.deg, frame="icrs")
        return self._coord

    def _match(self, row: int, component: int, distance: float,
               input_row: int | None = None) -> Match:
        r = self.table[row]
        z = _opt(r[f"z{component}"])
        if z is None:
            z = _opt(r["z2" if component == 1 else "z1"])
        return Match(row=int(row), name=str(r["name"]), catalog=str(r["catalog"]),
                     status=str(r["status"]), component=int(component),
                     distance_arcsec=float(distance), ra=float(r[f"ra{component}"]),
                     dec=float(r[f"dec{component}"]), z=z, sep_arcsec=_opt(r["sep_arcsec"]),
                     sep_kpc=_opt(r["sep_kpc"]), reference=str(r["reference"]),
                     input_row=input_row, spectra=self._spectra(r))

    def _spectra(self, r: Any) -> tuple[str, ...]:
        """``plate-mjd-fiber`` of each component with a spectrum in the table."""
        out = []
        for k in (1, 2):
            cols = (f"plate{k}", f"mjd{k}", f"fiber{k}")
            if not all(c in self.table.colnames for c in cols):
                continue
            vals = [_opt(r[c]) for c in cols]
            if all(v is not None and v > 0 for v in vals):
                out.append("-".join(str(int(v)) for v in vals))  # type: ignore[arg-type]
        return tuple(out)

    def match(self, ra: float, dec: float,
              radius_arcsec: float = DEFAULT_RADIUS_ARCSEC) -> list[Match]:
        """Known systems with a component within ``radius_arcsec`` of (``ra``, ``dec``) in deg.

        Nearest first; each system once (by its nearest component).
        """
        r = _check_radius(radius_arcsec)
        ra, dec = _check_position(ra, dec)
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        here = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
        dist = here.separation(self.components).to_value(u.arcsec)
        hits = np.where(dist <= r)[0]
        best: dict[int, tuple[float, int]] = {}
        for k in hits[np.argsort(dist[hits], kind="stable")]:
            best.setdefault(int(self._row[k]), (float(dist[k]), int(self._component[k])))
        return [self._match(row, comp, d) for row, (d, comp) in
                sorted(best.items(), key=lambda item: item[1][0])]

    def match_coords(self, ra: Sequence[float] | np.ndarray, dec: Sequence[float] | np.ndarray,
                     radius_arcsec: float = DEFAULT_RADIUS_ARCSEC) -> list[Match]:
        """Cross-match many positions (deg); ``Match.input_row`` gives the position's index.

        Sorted by input row, then distance; each (position, system) pair once.
        """
        import astropy.units as u
        from astropy.coordinates import SkyCoord, search_around_sky

        r = _check_radius(radius_arcsec)
        ra_a = np.asarray(ra, dtype=float)
        dec_a = np.asarray(dec, dtype=float)
        if ra_a.shape != dec_a.shape or ra_a.ndim != 1:
            raise CatalogError("RA and Dec must be two 1-D sequences of the same length")
        bad = ~(np.isfinite(ra_a) & np.isfinite(dec_a) & (ra_a >= 0) & (ra_a <= 360)
                & (np.abs(dec_a) <= 90))
        if bad.any():
            k = int(np.where(bad)[0][0])
            raise CatalogError(f"position {k} ({ra_a[k]!r}, {dec_a[k]!r}) is not a valid RA/Dec "
                               "in degrees")
        if not len(ra_a):
            return []
        here = SkyCoord(ra_a * u.deg, dec_a * u.deg, frame="icrs")
        i, j, d, _ = search_around_sky(here, self.components, r * u.arcsec)
        dist = d.to_value(u.arcsec)
        best: dict[tuple[int, int], tuple[float, int]] = {}
        for k in np.lexsort((dist, i)):
            key = (int(i[k]), int(self._row[j[k]]))
            best.setdefault(key, (float(dist[k]), int(self._component[j[k]])))
        out = [self._match(row, comp, dd, input_row=inp)
               for (inp, row), (dd, comp) in best.items()]
        out.sort(key=lambda m: (m.input_row, m.distance_arcsec))
        return out


def _read_catalog(path: Path) -> Table:
    from astropy.table import Table

    if not path.is_file():
        raise DataFileError(f"{path}: no known dual-AGN table there (run "
                            "resources/catalogs/derive_known_dagn.py to derive it)")
    try:
        table = Table.read(path, format="ascii.ecsv")
    except Exception as exc:
        raise DataFileError(f"{path}: not a readable ECSV catalogue ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise DataFileError(f"{path}: the catalogue lacks the columns {', '.join(missing)}")
    return table


@lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int) -> KnownDualAGN:
    return KnownDualAGN(Path(path))


def default_catalog(path: str | os.PathLike[str] | None = None) -> KnownDualAGN:
    """The known dual-AGN catalogue, read once per process (re-read if the file changes)."""
    p = Path(path) if path is not None else known_dagn_path()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        raise DataFileError(f"{p}: no known dual-AGN table there (run "
                            "resources/catalogs/derive_known_dagn.py to derive it)") from None
    return _cached(str(p), mtime)


def crossmatch(ra: float, dec: float, radius_arcsec: float = DEFAULT_RADIUS_ARCSEC, *,
               catalog: KnownDualAGN | None = None) -> list[Match]:
    """Known dual AGN within ``radius_arcsec`` of a position (see :meth:`KnownDualAGN.match`)."""
    return (catalog or default_catalog()).match(ra, dec, radius_arcsec)


def _find_column(table: Table, names: Sequence[str], given: str | None, what: str,
                 source: str) -> str | None:
    if given is not None:
        if given not in table.colnames:
            raise CatalogError(f"{source}: no column {given!r} (columns: "
                               f"{', '.join(table.colnames)})")
        return given
    lower = {c.lower(): c for c in table.colnames}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def read_positions(source: Table | str | os.PathLike[str], *, ra_col: str | None = None,
                   dec_col: str | None = None,
                   id_col: str | None = None) -> tuple[Table, str, str, str | None]:
    """A table of positions and the names of its RA, Dec and id columns.

    ``source`` is a Table or a CSV, ECSV, VOTable or FITS file (astropy's readers). Columns are
    found by name (``ra``/``dec``, ``RAJ2000``/``DEJ2000``...) unless given; values are
    degrees.
    """
    from astropy.table import Table

    if isinstance(source, Table):
        table, label = source, "table"
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise CatalogError(f"{path}: no such file")
        suffix = "".join(path.suffixes[-2:]).lower()
        fmt = None
        if path.suffix.lower() == ".csv":
            fmt = "ascii.csv"
        elif path.suffix.lower() == ".ecsv":
            fmt = "ascii.ecsv"
        elif path.suffix.lower() in (".vot", ".xml", ".votable"):
            fmt = "votable"
        elif path.suffix.lower() in (".fits", ".fit", ".fts") or suffix.endswith(".fits.gz"):
            fmt = "fits"
        try:
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except Exception as exc:
            raise CatalogError(f"{path}: not a table astropy can read ({exc})") from exc
    ra = _find_column(table, _RA_NAMES, ra_col, "RA", label)
    dec = _find_column(table, _DEC_NAMES, dec_col, "Dec", label)
    if ra is None or dec is None:
        raise CatalogError(f"{label}: no RA/Dec columns found (columns: "
                           f"{', '.join(table.colnames)}); name them with ra_col/dec_col")
    ident = _find_column(table, _ID_NAMES, id_col, "id", label)
    return table, ra, dec, ident


def crossmatch_table(source: Table | str | os.PathLike[str],
                     radius_arcsec: float = DEFAULT_RADIUS_ARCSEC, *,
                     ra_col: str | None = None, dec_col: str | None = None,
                     id_col: str | None = None,
                     catalog: KnownDualAGN | None = None) -> Table:
    """Cross-match a table of positions; one output row per (input row, known system) pair.

    Columns: ``input_row``, ``input_id`` (when the input has an id column), ``input_ra``,
    ``input_dec``, then the match (``name``, ``catalog``, ``status``, ``component``,
    ``distance_arcsec``, ``ra``, ``dec``, ``z``, ``sep_arcsec``, ``sep_kpc``,
    ``reference``). Rows without a valid position are skipped (``meta["skipped"]`` counts
    them).
    """
    from astropy.table import MaskedColumn, Table

    table, ra_name, dec_name, ident = read_positions(source, ra_col=ra_col, dec_col=dec_col,
                                                     id_col=id_col)
    ra = _filled(table[ra_name], np.nan).astype(float)
    dec = _filled(table[dec_name], np.nan).astype(float)
    ok = np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90)
    index = np.where(ok)[0]
    matches = (catalog or default_catalog()).match_coords(ra[ok], dec[ok], radius_arcsec)
    out = Table()
    out["input_row"] = np.array([int(index[m.input_row or 0]) for m in matches], dtype="i8")
    if ident is not None:
        ids = table[ident]
        out["input_id"] = np.array([str(ids[int(index[m.input_row or 0])]) for m in matches],
                                   dtype=str)
    out["input_ra"] = np.array([ra[index[m.input_row or 0]] for m in matches], dtype=float)
    out["input_dec"] = np.array([dec[index[m.input_row or 0]] for m in matches], dtype=float)
    for name in ("name", "catalog", "status", "reference"):
        out[name] = np.array([getattr(m, name) for m in matches], dtype=str)
    out["component"] = np.array([m.component for m in matches], dtype="i8")
    out["distance_arcsec"] = np.array([m.distance_arcsec for m in matches], dtype=float)
    out["ra"] = np.array([m.ra for m in matches], dtype=float)
    out["dec"] = np.array([m.dec for m in matches], dtype=float)
    for name in ("z", "sep_arcsec", "sep_kpc"):
        values = [getattr(m, name) for m in matches]
        out[name] = MaskedColumn([np.nan if v is None else v for v in values],
                                 mask=[v is None for v in values], dtype=float)
    out = out[["input_row", *(["input_id"] if ident is not None else []), "input_ra",
               "input_dec", "name", "catalog", "status", "component", "distance_arcsec",
               "ra", "dec", "z", "sep_arcsec", "sep_kpc", "reference"]]
    out.meta["radius_arcsec"] = _check_radius(radius_arcsec)
    out.meta["skipped"] = int((~ok).sum())
    out.meta["inputs"] = int(len(table))
    return out
