"""The galaxies of a field as a sortable Qt table model.

:class:`GalaxyList` adapts a source table (:func:`ssald_desktop.core.sources.detect_galaxies`)
to plain arrays with the columns the GUI shows; :class:`GalaxyTableModel` presents them to a
``QTableView`` through a ``QSortFilterProxyModel`` (sorting by the numbers, not the text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.coordinates import Angle
from astropy.wcs import WCS
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

#: Role that returns the raw number of a cell (the proxy model sorts by it).
SORT_ROLE = Qt.ItemDataRole.UserRole


def _column(table: Any, *names: str) -> np.ndarray | None:
    for name in names:
        if name in table.colnames:
            return np.asarray(table[name], dtype=float)
    return None


@dataclass
class GalaxyList:
    """Galaxies of a field: identifiers, positions and the measurements shown in the table.

    ``x``, ``y`` are 0-based pixels of the reference band; ``mag`` the band magnitude;
    ``r50`` the half-light radius and ``rpetro`` the Petrosian radius (arcsec, NaN if unknown).
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    x: np.ndarray
    y: np.ndarray
    mag: np.ndarray
    r50: np.ndarray
    rpetro: np.ndarray
    band: str = "r"
    #: Spectroscopic redshift where known (NaN elsewhere), e.g. from the local spectra.
    z: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.z is None:
            self.z = np.full(len(self.ra), np.nan)

    def __len__(self) -> int:
        return len(self.ra)

    @classmethod
    def empty(cls) -> GalaxyList:
        """No galaxies."""
        z = np.empty(0)
        return cls(np.empty(0, dtype=np.int64), z, z, z, z, z, z, z)

    @classmethod
    def from_table(cls, table: Any, wcs: WCS | None = None) -> GalaxyList:
        """The ``is_galaxy`` rows of a source table (all rows if it has no such column).

        Pixel positions come from the ``x``/``y`` columns, or from ``wcs`` when they are absent.
        """
        if "is_galaxy" in table.colnames:
            table = table[np.asarray(table["is_galaxy"], dtype=bool)]
        n = len(table)
        band = str(table.meta.get("band", "r")) if hasattr(table, "meta") else "r"
        ra = _column(table, "ra")
        dec = _column(table, "dec")
        if ra is None or dec is None:
            raise ValueError("the source table has no ra/dec columns")
        x = _column(table, "x")
        y = _column(table, "y")
        if (x is None or y is None) and wcs is not None:
            x, y = (np.asarray(v, dtype=float) for v in wcs.all_world2pix(ra, dec, 0))
        if x is None or y is None:
            raise ValueError("the source table has no x/y columns and no WCS was given")
        nan = np.full(n, np.nan)
        ids = (
            np.asarray(table["id"], dtype=np.int64)
            if "id" in table.colnames
            else np.arange(1, n + 1, dtype=np.int64)
        )
        mag = _column(table, f"mag_{band}", f"modelMag_{band}", "mag")
        r50 = _column(table, "r_half_arcsec", f"petroR50_{band}", "size")
        rpetro = _column(table, "r_petro_arcsec", f"petroRad_{band}")
        z = _column(table, "z_spec", "z")
        return cls(
            ids=ids,
            ra=ra,
            dec=dec,
            x=x,
            y=y,
            mag=nan if mag is None else mag,
            r50=nan if r50 is None else r50,
            rpetro=nan if rpetro is None else rpetro,
            z=nan if z is None else z,
            band=band,
        )


def format_ra(ra_deg: float) -> str:
    """RA as ``hh:mm:ss.ss``."""
    return Angle(ra_deg, unit="deg").to_string(unit="hourangle", sep=":", precision=2, pad=True)


def format_dec(dec_deg: float) -> str:
    """Dec as ``+dd:mm:ss.s``."""
    return Angle(dec_deg, unit="deg").to_string(
        unit="deg", sep=":", precision=1, pad=True, alwayssign=True
    )


class GalaxyTableModel(QAbstractTableModel):
    """Table model of a :class:`GalaxyList`: id, RA, Dec, magnitude, R50, R_P and z."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._gal = GalaxyList.empty()

    @property
    def galaxies(self) -> GalaxyList:
        """The galaxies shown."""
        return self._gal

    def set_galaxies(self, galaxies: GalaxyList) -> None:
        """Replace the rows."""
        self.beginResetModel()
        self._gal = galaxies
        self.endResetModel()

    def headers(self) -> list[str]:
        """Column titles."""
        b = self._gal.band
        return ["id", "RA (deg)", "Dec (deg)", f"{b} (mag)", "R50 (\u2033)", "R_P (\u2033)", "z"]

    def _values(self, column: int) -> np.ndarray:
        g = self._gal
        return (g.ids, g.ra, g.dec, g.mag, g.r50, g.rpetro, g.z)[column]

    # -- Qt model API --------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else len(self._gal)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else 7

    def headerData(self, section: int, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: D102
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return self.headers()[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return [
                    "source id in the detection table",
                    "right ascension, ICRS",
                    "declination, ICRS",
                    f"{self._gal.band}-band Kron magnitude (AB)",
                    "half-light radius (arcsec)",
                    "Petrosian radius (arcsec); empty when faint",
                    "spectroscopic redshift, where a spectrum of the galaxy is known",
                ][section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role=Qt.ItemDataRole.DisplayRole):  # noqa: D102
        if not index.isValid():
            return None
        row, col = index.row(), index.column()
        value = self._values(col)[row]
        if role == SORT_ROLE:
            v = float(value)
            return v if np.isfinite(v) else float("inf")
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                return str(int(value))
            if not np.isfinite(value):
                return ""
            return (None, "{:.5f}", "{:+.5f}", "{:.2f}", "{:.2f}", "{:.2f}", "{:.4f}")[col].format(
                value)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole and col in (1, 2):
            return f"{format_ra(self._gal.ra[row])}  {format_dec(self._gal.dec[row])}"
        return None
