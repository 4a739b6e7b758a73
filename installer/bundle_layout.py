"""What goes into the SSALD desktop bundle, shared by ``ssald.spec`` and the tests.

The code finds its resources as ``Path(ssald_desktop.__file__).parents[1] / "resources"``
(:data:`ssald_desktop.app.RESOURCES_DIR`, :func:`ssald_desktop.core.catalogs.resources_dir`).
In a PyInstaller one-folder bundle the package lives in the contents folder
(``dist/ssald/_internal/ssald_desktop``), so the resources go to ``_internal/resources``:
:data:`RESOURCES_DEST` is ``"resources"``, relative to that folder. No code change is needed.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (this file is ``installer/bundle_layout.py``).
ROOT = Path(__file__).resolve().parents[1]
#: The ``resources/`` folder that is bundled.
RESOURCES = ROOT / "resources"
#: Where the resources land, relative to the bundle's contents folder.
RESOURCES_DEST = "resources"
#: Sub-folders of ``resources/`` that the app needs at run time (checked by the tests).
REQUIRED_RESOURCES = (
    "sample/frames/2820-3-122",
    "sample/spectra",
    "sample/index/index.faiss",
    "sample/index/objects.sqlite",
    "sample/index/store.json",
    "sample/index/vectors.f32",
    "sample/cutouts",
    "encoders/default/encoder.keras",
    "encoders/default/encoder.card.json",
    "catalogs/known_dagn.ecsv",
    "icons/ssald.svg",
    "icons/ssald-256.png",
)
#: Names never bundled (build caches, editor files).
SKIP_NAMES = ("__pycache__", ".DS_Store", ".ipynb_checkpoints")
SKIP_SUFFIXES = (".pyc", ".pyo", ".swp")
#: SQLite's side files of a database in use: never bundled (an empty write-ahead log or a
#: shared-memory index is left by a reader); a non-empty log holds data the database lacks.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

#: Python sources the code reads as text at run time (bundled as data beside their compiled
#: module): the remote launcher sends its helper's source to the remote Python.
SOURCE_FILES = ("ssald_desktop/core/launch/helper.py",)

#: The executables: (name, console).  The GUI has no console window on Windows.
EXECUTABLES = (("ssald", False), ("ssald-cli", True))
#: The app icon per platform (PyInstaller converts the PNG with Pillow where it must).
ICON_PNG = RESOURCES / "icons" / "ssald-256.png"

#: Packages imported by name at run time (command modules, faiss' CPU-specific builds,
#: qtpy's binding choice), collected whole.
COLLECT_SUBMODULES = ("ssald_desktop", "model", "faiss", "astroquery.sdss", "photutils",
                      "pyvo")
#: Packages whose data files the code reads (configuration, citation and table files).
COLLECT_DATA = ("astroquery", "photutils", "pyvo", "pyqtgraph", "superqt")
#: Distributions whose metadata is read with importlib.metadata at import time.
COPY_METADATA = ("ssald-desktop", "astropy", "astroquery", "photutils", "pyvo", "keras",
                 "tensorflow-cpu", "scikit-learn", "h5py", "faiss-cpu", "PySide6-Essentials",
                 "numpy", "requests", "superqt", "pyqtgraph", "platformdirs")
#: Imported dynamically (not seen by the import analysis).
HIDDEN_IMPORTS = ("qtpy", "PySide6.QtSvg", "keras.src.backend.tensorflow",
                  "sklearn.utils._typedefs", "h5py.defs")
#: Never bundled: other Qt bindings (superqt/qtpy and pyqtgraph probe for them), GUI and
#: test tool kits the app does not use, and the other Keras backends.
EXCLUDES = ("PyQt5", "PyQt6", "PySide2", "tkinter", "_tkinter", "IPython", "jupyter_client",
            "ipykernel", "notebook", "pytest", "pytestqt", "torch", "jax", "jaxlib",
            "openvino", "matplotlib.backends.backend_tkagg", "matplotlib.backends._backend_tk")


def _skipped(path: Path) -> bool:
    return (any(part in SKIP_NAMES for part in path.parts) or path.suffix in SKIP_SUFFIXES
            or path.name.endswith(SQLITE_SIDE_FILES))


def resource_datas(resources: Path = RESOURCES) -> list[tuple[str, str]]:
    """Every bundled resource file as PyInstaller's ``(source file, destination folder)``.

    Parameters
    ----------
    resources : Path
        The ``resources/`` folder.

    Returns
    -------
    list of (str, str)
        Sorted; destinations are below :data:`RESOURCES_DEST`, mirroring ``resources/``.

    Raises
    ------
    FileNotFoundError
        ``resources`` is missing or a required resource is not in it (named).
    ValueError
        A database with a non-empty write-ahead log (``*-wal``): its data are not all in the
        database file yet; close whatever holds it (SQLite checkpoints on close).
    """
    if not resources.is_dir():
        raise FileNotFoundError(f"{resources}: the resources folder is missing")
    missing = [r for r in REQUIRED_RESOURCES if not (resources / r).exists()]
    if missing:
        raise FileNotFoundError(f"{resources}: required resources missing: {', '.join(missing)}")
    pending = [f for f in resources.rglob("*-wal") if f.is_file() and f.stat().st_size > 0]
    if pending:
        raise ValueError(f"{pending[0]}: a non-empty SQLite write-ahead log; the database is in "
                         "use or was not closed: close it (or run PRAGMA wal_checkpoint) first")
    out = []
    for f in sorted(resources.rglob("*")):
        rel = f.relative_to(resources)
        if f.is_file() and not _skipped(rel):
            out.append((str(f), str(Path(RESOURCES_DEST) / rel.parent)))
    return out


def source_datas(root: Path = ROOT) -> list[tuple[str, str]]:
    """:data:`SOURCE_FILES` that exist in this checkout, as ``(file, destination folder)``."""
    return [(str(root / rel), str(Path(rel).parent)) for rel in SOURCE_FILES
            if (root / rel).is_file()]
