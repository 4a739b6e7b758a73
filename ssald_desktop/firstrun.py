"""Start-up checks of the desktop app: what is missing or unusable, what was fixed, said once.

:func:`check_environment` runs before the main window is built. It never raises for a problem
the user's machine can have; it repairs what it safely can and returns one message per finding,
for the status bar or a start-up dialog (each is also logged):

- **no settings yet** (a first run): the bundled sample survey is opened;
- **settings the app could not use** (written by a newer version, or unreadable and moved
  aside): :class:`~ssald_desktop.settings.Settings` already fell back to the defaults; the
  message says so and why;
- **a settings folder that cannot be written**: changes will not be kept;
- **the cache folder deleted** (its parent still exists): made again; **moved or unusable**
  (its parent is gone, e.g. an unplugged disk, or it is a file or read-only): the default
  cache folder is used instead and stored, the message naming the old one;
- **the searched index folder moved or deleted**: back to the bundled sample index;
- **a read-only resources folder** (an installed bundle, a read-only mount): the bundled
  sample index is opened read-only (:class:`~ssald_desktop.core.embeddings.EmbeddingStore`
  decides this by itself), and the check proves that it still opens; a missing or broken
  sample is reported, and the app starts without it.

Nothing here imports TensorFlow or faiss (start-up stays fast).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ssald_desktop.core.errors import SsaldError

if TYPE_CHECKING:  # pragma: no cover
    from ssald_desktop.settings import Settings

log = logging.getLogger(__name__)

#: The sample field and index, relative to the resources folder (as in :mod:`ssald_desktop.app`).
SAMPLE_FIELD = Path("sample") / "frames" / "2820-3-122"
SAMPLE_INDEX = Path("sample") / "index"

FIRST_RUN_MESSAGE = "First run: opening the sample survey (SDSS field 2820-3-122)"


def default_resources_dir() -> Path:
    """The bundled ``resources/`` folder (``$SSALD_RESOURCES`` overrides it)."""
    from ssald_desktop.core.catalogs import resources_dir

    return resources_dir()


def check_environment(settings: Settings, resources_dir: str | Path | None = None) -> list[str]:
    """Check (and where safe, repair) what the app needs at start; return what to tell the user.

    Parameters
    ----------
    settings : Settings
        The app's settings, just opened (before anything was written to them).
    resources_dir : path-like, optional
        The bundled resources (default: :func:`default_resources_dir`).

    Returns
    -------
    list of str
        One message per finding, in the order above; empty when all is well.
    """
    resources = Path(resources_dir) if resources_dir is not None else default_resources_dir()
    messages: list[str] = []
    checks = (("settings", lambda: _check_settings(settings)),
              ("cache folder", lambda: _check_cache(settings)),
              ("search index", lambda: _check_search_index(settings)),
              ("resources", lambda: _check_resources(resources)))
    for what, run in checks:
        try:
            messages += run()
        except OSError as exc:  # an unreadable path, a vanished mount: report, start anyway
            messages.append(f"The start-up check of the {what} failed ({exc})")
    for m in messages:
        log.info("start-up: %s", m)
    return messages


# -- settings ---------------------------------------------------------------------------------


def is_first_run(settings: Settings) -> bool:
    """True when no settings file exists yet and none was moved aside (a fresh install)."""
    return settings.problem is None and not Path(settings.file_name).exists()


def _check_settings(settings: Settings) -> list[str]:
    out = []
    if is_first_run(settings):
        out.append(FIRST_RUN_MESSAGE)
    if settings.problem:
        out.append(f"Settings: {settings.problem}")
    folder = Path(settings.file_name).parent
    if settings.writable and not _can_write_into(folder):
        out.append(f"Settings cannot be saved: the folder {folder} is not writable; changes "
                   "made now will be lost at exit")
    return out


# -- cache ------------------------------------------------------------------------------------


def _can_write_into(folder: Path) -> bool:
    """Whether ``folder`` exists (or can be made) and this process can create files in it."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _usable_cache(path: Path) -> str | None:
    """None when ``path`` is a writable folder, else why not (it is not created here)."""
    if path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def _make_folder(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"it could not be created ({exc.strerror or exc})"
    return None


def _check_cache(settings: Settings) -> list[str]:
    from ssald_desktop.settings import default_cache_dir

    cache = settings.cache_dir()
    default = default_cache_dir()
    if cache.is_dir() and _usable_cache(cache) is None:
        return []
    if cache == default:
        why = _usable_cache(cache) or _make_folder(cache)
        return [] if why is None else [
            f"The cache folder {cache} is not usable ({why}): downloads from SDSS will fail "
            "until it is fixed (set $SSALD_CACHE_DIR or choose another in the settings)"]
    # a folder the user chose: make it again only where it was simply deleted (its parent is
    # still there); a missing parent means a moved folder or an unplugged disk
    why = _usable_cache(cache)
    if why is None and cache.parent.is_dir():
        why = _make_folder(cache)
        if why is None:
            return [f"The cache folder {cache} was missing: created it again (empty)"]
    elif why is None:
        why = f"it is missing, and so is its parent folder {cache.parent} (moved or unmounted)"
    fallback = _usable_cache(default) or _make_folder(default)
    if fallback is not None:
        return [f"The cache folder {cache} is not usable ({why}), nor is the default "
                f"{default} ({fallback}): downloads from SDSS will fail"]
    settings.set_cache_dir(default)
    return [f"The cache folder {cache} is not usable ({why}): using the default {default} "
            "instead (choose another in the settings)"]


# -- the searched index -----------------------------------------------------------------------


def _check_search_index(settings: Settings) -> list[str]:
    chosen = settings.search_index()
    if chosen is None:
        return []
    folder = Path(chosen).expanduser()
    if (folder / "objects.sqlite").is_file() and (folder / "store.json").is_file():
        return []
    settings.set_search_index(None)
    return [f"The search index {folder} is missing (moved or deleted): searching the bundled "
            "sample survey instead"]


# -- resources --------------------------------------------------------------------------------


def _check_resources(resources: Path) -> list[str]:
    field = resources / SAMPLE_FIELD
    index = resources / SAMPLE_INDEX
    if not resources.is_dir():
        return [f"The bundled resources folder {resources} is missing: the sample survey and "
                "the default encoder are unavailable; open a field with File > Open"]
    out = []
    if not field.is_dir() or not any(field.glob("frame-*.fits*")):
        out.append(f"The sample field {field} is missing: open a field with File > Open")
    try:
        count, read_only = _probe_store(index)
    except SsaldError as exc:
        out.append(f"The sample survey's index cannot be opened ({exc}): searching it is "
                   "unavailable")
        return out
    if read_only:
        out.append(f"The resources folder {resources} is read-only: the sample index "
                   f"({count} galaxies) is opened read-only; it can be searched, and new "
                   "indexes go to folders you choose")
    return out


def _probe_store(folder: Path) -> tuple[int, bool]:
    """Open the embedding store read-only-if-needed; return ``(count, read_only)``.

    Raises
    ------
    DataFileError
        No store, an unreadable one, or one without its index file (named).
    """
    from ssald_desktop.core.embeddings import EmbeddingStore
    from ssald_desktop.core.errors import DataFileError

    with EmbeddingStore(folder, create=False) as store:
        count, read_only = store.count, store.read_only
        if count and store.dim:
            store.vectors()  # the vectors file is there and long enough
    if not (folder / "index.faiss").is_file():
        raise DataFileError(f"{folder}: no index.faiss beside the store")
    return count, read_only
