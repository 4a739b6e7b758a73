"""User settings of the desktop app: one module, one place for every default (as in MNELAB).

Settings live in a :class:`~PySide6.QtCore.QSettings` INI file, organisation ``SSALD``,
application ``SSALD desktop`` (on Linux ``~/.config/SSALD/SSALD desktop.ini``). When the
environment variable ``SSALD_CONFIG_DIR`` is set (the tests set it to a temporary folder), the
file is ``$SSALD_CONFIG_DIR/ssald-desktop.ini`` instead, so nothing touches the user's settings.

Reading never fails: a value of the wrong type, a NormSpec that does not parse, a file Qt cannot
parse or a file written by a newer version of the app all fall back to the defaults, with a
warning in the log. A corrupt file is kept beside the new one as ``*.ini.corrupt``; a newer
version's file is read as defaults and never written over.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from ssald_desktop.core.cutouts import NormSpec

log = logging.getLogger(__name__)

ORGANISATION = "SSALD"
APPLICATION = "SSALD desktop"

#: Environment variable naming a folder for the settings file (tests, portable installs).
CONFIG_ENV = "SSALD_CONFIG_DIR"
#: Environment variable naming the cache folder (shared with :mod:`ssald_desktop.core.sky`).
CACHE_ENV = "SSALD_CACHE_DIR"
#: File name of the settings file inside ``$SSALD_CONFIG_DIR``.
CONFIG_FILE_NAME = "ssald-desktop.ini"

#: Version of the settings layout; a file with a higher version came from a newer app.
SETTINGS_VERSION = 1

KEY_VERSION = "meta/version"
KEY_CACHE_DIR = "paths/cache_dir"
KEY_SDSS_TIMEOUT = "sdss/timeout_s"
KEY_NORM_SPEC = "cutouts/norm_spec"
KEY_LAST_FIELD = "session/last_field"
KEY_SEARCH_INDEX = "search/index"
KEY_SEARCH_K = "search/k"
KEY_GEOMETRY = "window/geometry"
KEY_STATE = "window/state"

#: Results shown for a query.
DEFAULT_SEARCH_K = 20

#: SDSS request timeout in seconds.
DEFAULT_SDSS_TIMEOUT_S = 15.0


def default_cache_dir() -> Path:
    """``$SSALD_CACHE_DIR`` or the platform's user cache folder for ``ssald-desktop``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ssald-desktop"))


def default_norm_spec() -> NormSpec:
    """The NormSpec of the seed paper: ugriz cutouts, 64 px, Lupton i/r/g, Q=8, stretch 0.3."""
    return NormSpec()


def settings_path() -> Path | None:
    """The settings file under ``$SSALD_CONFIG_DIR``, or None for Qt's per-user location."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) / CONFIG_FILE_NAME if env else None


@dataclass(frozen=True)
class Defaults:
    """Every default in one place (see the module docstring)."""

    sdss_timeout_s: float = DEFAULT_SDSS_TIMEOUT_S
    last_field: tuple[str, ...] = ()

    @property
    def cache_dir(self) -> Path:
        """Default cache folder (evaluated now: it follows ``$SSALD_CACHE_DIR``)."""
        return default_cache_dir()

    @property
    def norm_spec(self) -> NormSpec:
        """Default NormSpec."""
        return default_norm_spec()


DEFAULTS = Defaults()


class Settings:
    """Typed, validated access to the app's QSettings.

    Parameters
    ----------
    path : path-like, optional
        INI file to use. Default: ``$SSALD_CONFIG_DIR/ssald-desktop.ini`` when the variable is
        set, otherwise Qt's per-user INI file for organisation ``SSALD``, app ``SSALD desktop``.
        The location is fixed when the object is made.
    """

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path is not None else settings_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._qs = QSettings(str(path), QSettings.Format.IniFormat)
        else:
            self._qs = QSettings(
                QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION, APPLICATION
            )
        #: False when the file belongs to a newer version of the app: read defaults only.
        self.writable = True
        #: Why the stored settings were not used, if they were not (for the log / About box).
        self.problem: str | None = None
        self._check_file()

    # -- file health ---------------------------------------------------------------------
    @property
    def file_name(self) -> str:
        """Path of the settings file."""
        return self._qs.fileName()

    def _check_file(self) -> None:
        if self._qs.status() == QSettings.Status.FormatError:
            self._quarantine("the file could not be parsed")
            return
        raw = self._qs.value(KEY_VERSION)
        if raw is None:
            return
        try:
            version = int(str(raw))
        except ValueError:
            self._quarantine(f"its version {raw!r} is not a number")
            return
        if version > SETTINGS_VERSION:
            self.writable = False
            self.problem = (
                f"{self.file_name} was written by a newer SSALD desktop (settings version "
                f"{version} > {SETTINGS_VERSION}); using defaults and leaving it unchanged"
            )
            log.warning(self.problem)

    def _quarantine(self, why: str) -> None:
        """Move an unreadable settings file aside and start from defaults."""
        name = Path(self.file_name)
        fmt = self._qs.format()
        backup = name.with_name(name.name + ".corrupt")
        try:
            os.replace(name, backup)
            self.problem = f"{name}: {why}; moved to {backup.name}, using defaults"
        except OSError as exc:
            self.writable = False
            self.problem = f"{name}: {why}, and it could not be moved aside ({exc}); using defaults"
        log.warning(self.problem)
        self._qs = QSettings(str(name), fmt)

    # -- low level -----------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        if not self.writable:
            return None
        return self._qs.value(key)

    def _set(self, key: str, value: Any) -> None:
        if not self.writable:
            return
        self._qs.setValue(KEY_VERSION, SETTINGS_VERSION)
        self._qs.setValue(key, value)

    def sync(self) -> None:
        """Write pending changes to disk."""
        if self.writable:
            self._qs.sync()

    def reset(self) -> None:
        """Forget every stored value (back to the defaults)."""
        if self.writable:
            self._qs.clear()
            self._qs.sync()

    # -- typed keys ----------------------------------------------------------------------
    def cache_dir(self) -> Path:
        """Folder for downloaded frames and other caches."""
        raw = self._get(KEY_CACHE_DIR)
        if isinstance(raw, str) and raw.strip():
            return Path(raw).expanduser()
        return DEFAULTS.cache_dir

    def set_cache_dir(self, path: str | Path) -> None:
        """Store the cache folder."""
        self._set(KEY_CACHE_DIR, str(path))

    def sdss_timeout(self) -> float:
        """Timeout of one SDSS request in seconds (1..600; default 15)."""
        raw = self._get(KEY_SDSS_TIMEOUT)
        if raw is None:
            return DEFAULTS.sdss_timeout_s
        try:
            value = float(raw)
        except (TypeError, ValueError):
            log.warning("settings: SDSS timeout %r is not a number; using the default", raw)
            return DEFAULTS.sdss_timeout_s
        if not 1.0 <= value <= 600.0:
            log.warning("settings: SDSS timeout %r s out of 1..600; using the default", raw)
            return DEFAULTS.sdss_timeout_s
        return value

    def set_sdss_timeout(self, seconds: float) -> None:
        """Store the SDSS timeout (seconds, 1..600)."""
        seconds = float(seconds)
        if not 1.0 <= seconds <= 600.0:
            raise ValueError(f"SDSS timeout must be 1..600 s, got {seconds}")
        self._set(KEY_SDSS_TIMEOUT, seconds)

    def norm_spec(self) -> NormSpec:
        """The default NormSpec for cutouts and colour images."""
        raw = self._get(KEY_NORM_SPEC)
        if raw is None:
            return DEFAULTS.norm_spec
        try:
            return NormSpec.from_json(str(raw))
        except (ValueError, TypeError) as exc:
            log.warning("settings: stored NormSpec unusable (%s); using the default", exc)
            return DEFAULTS.norm_spec

    def set_norm_spec(self, spec: NormSpec) -> None:
        """Store the default NormSpec (as canonical JSON)."""
        self._set(KEY_NORM_SPEC, spec.to_json())

    def last_field(self) -> list[str]:
        """Paths of the last field opened (a folder, or its frame files); [] if none."""
        raw = self._get(KEY_LAST_FIELD)
        if raw is None or raw == "":
            return list(DEFAULTS.last_field)
        if isinstance(raw, str):
            return [raw]
        if isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
            return list(raw)
        log.warning("settings: last field %r is not a list of paths; ignored", raw)
        return list(DEFAULTS.last_field)

    def set_last_field(self, paths: list[str] | tuple[str, ...]) -> None:
        """Store the last field opened."""
        self._set(KEY_LAST_FIELD, [str(p) for p in paths])

    def search_index(self) -> str | None:
        """The embedding store folder searched by the query panel (None: the bundled one)."""
        raw = self._get(KEY_SEARCH_INDEX)
        return raw if isinstance(raw, str) and raw else None

    def set_search_index(self, folder: str | Path | None) -> None:
        """Store the searched index folder (None goes back to the bundled sample index)."""
        self._set(KEY_SEARCH_INDEX, "" if folder is None else str(folder))

    def search_k(self) -> int:
        """How many results a query shows (1 to 1000)."""
        raw = self._get(KEY_SEARCH_K)
        try:
            k = int(raw) if raw is not None else DEFAULT_SEARCH_K
        except (TypeError, ValueError):
            log.warning("settings: results per query %r is not a number; using %d", raw,
                        DEFAULT_SEARCH_K)
            return DEFAULT_SEARCH_K
        return k if 1 <= k <= 1000 else DEFAULT_SEARCH_K

    def set_search_k(self, k: int) -> None:
        """Store how many results a query shows."""
        self._set(KEY_SEARCH_K, int(k))

    def _bytes(self, key: str) -> QByteArray | None:
        raw = self._get(key)
        if isinstance(raw, QByteArray) and not raw.isEmpty():
            return raw
        if isinstance(raw, (bytes, bytearray)) and raw:
            return QByteArray(bytes(raw))
        return None

    def window_geometry(self) -> QByteArray | None:
        """Saved ``QMainWindow.saveGeometry()``, or None."""
        return self._bytes(KEY_GEOMETRY)

    def window_state(self) -> QByteArray | None:
        """Saved ``QMainWindow.saveState()``, or None."""
        return self._bytes(KEY_STATE)

    def set_window(self, geometry: QByteArray, state: QByteArray) -> None:
        """Store the main window's geometry and dock/toolbar state."""
        self._set(KEY_GEOMETRY, geometry)
        self._set(KEY_STATE, state)
