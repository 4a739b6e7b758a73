"""The SSALD desktop GUI: ``ssald [FIELD_DIR_OR_FRAME_FILES...]``.

:func:`create_app` builds the application and a shown main window without entering the event
loop (tests and embedding use it); :func:`main` runs it. With no paths the bundled sample field
(``resources/sample/frames/2820-3-122``) is opened.

Start-up imports Qt, pyqtgraph and the headless core only: TensorFlow (and anything that
imports it) and astroquery are imported later, inside the features that need them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ssald_desktop import __version__

#: The bundled resources (sample survey, catalogues, icons), found relative to the package.
RESOURCES_DIR = Path(__file__).resolve().parents[1] / "resources"
#: The bundled sample field opened when no paths are given.
SAMPLE_FIELD_DIR = RESOURCES_DIR / "sample" / "frames" / "2820-3-122"
#: The bundled sample survey's similarity index (its galaxies, the default encoder).
SAMPLE_INDEX_DIR = RESOURCES_DIR / "sample" / "index"
#: Spectra of objects in the sample field.
SAMPLE_SPECTRA_DIR = RESOURCES_DIR / "sample" / "spectra"

#: Environment variable: quit this many milliseconds after start (start-up tests, demos).
QUIT_AFTER_ENV = "SSALD_QUIT_AFTER_MS"

log = logging.getLogger("ssald_desktop")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``ssald``."""
    parser = argparse.ArgumentParser(
        prog="ssald",
        description="SSALD desktop: find dual AGN in SDSS imaging. Opens a field folder or the "
        "frame files of one field (default: the bundled sample field 2820-3-122).",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="FIELD_DIR_OR_FRAME_FILES",
        help="a folder of frame-[ugriz]-RUN-CAMCOL-FIELD.fits[.bz2] files, or such files",
    )
    parser.add_argument(
        "--quit-after-ms",
        type=int,
        default=None,
        metavar="MS",
        help=f"quit after MS milliseconds (for start-up tests; also ${QUIT_AFTER_ENV})",
    )
    parser.add_argument(
        "--no-sample",
        action="store_true",
        help="start with no field open (default: open the bundled sample field)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _quit_after(args: argparse.Namespace) -> int | None:
    if args.quit_after_ms is not None:
        return args.quit_after_ms
    env = os.environ.get(QUIT_AFTER_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            log.warning("%s=%r is not a number of milliseconds; ignored", QUIT_AFTER_ENV, env)
    return None


def _register_exit_wait(window) -> None:
    """At interpreter exit, stop the window's background work and wait for the thread pool.

    Without it, a script that calls :func:`create_app` and ends (as the start-up checks do)
    would tear the interpreter down under a worker thread. The hook goes through
    ``threading._register_atexit`` where it exists so that it runs before
    :mod:`concurrent.futures` refuses new work at shutdown (frames are read with a pool).
    """
    import threading
    import weakref

    ref = weakref.ref(window)

    def wait() -> None:
        from PySide6.QtCore import QThreadPool

        win = ref()
        if win is not None:
            try:
                win.tasks.cancel_all()
            except RuntimeError:  # the C++ window is already gone
                pass
        QThreadPool.globalInstance().waitForDone(60_000)

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(wait)
            return
        except RuntimeError:  # the interpreter is already shutting down
            return
    import atexit

    atexit.register(wait)


def create_app(argv: Sequence[str] | None = None):
    """Create (or reuse) the QApplication and a shown main window; do not run the event loop.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments without the program name (default: none, which opens the
        bundled sample field). Qt's own options (e.g. ``-platform``) are passed to Qt.

    Returns
    -------
    (QApplication, MainWindow)
    """
    argv = list(argv or [])
    args, qt_args = build_parser().parse_known_args(argv)

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(["ssald", *qt_args])
    elif qt_args:
        log.warning("ignoring arguments %s: the QApplication exists already", qt_args)
    app.setOrganizationName("SSALD")
    app.setApplicationName("SSALD desktop")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("ssald-desktop")
    icon = RESOURCES_DIR / "icons" / "ssald-256.png"
    if icon.exists():
        from PySide6.QtGui import QIcon

        app.setWindowIcon(QIcon(str(icon)))

    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major")
    from ssald_desktop.ui.workers import collect_garbage_in_gui_thread

    collect_garbage_in_gui_thread(app)

    from ssald_desktop.firstrun import check_environment
    from ssald_desktop.settings import Settings
    from ssald_desktop.ui.main_window import MainWindow

    settings = Settings()
    startup_messages = check_environment(settings, RESOURCES_DIR)
    window = MainWindow(
        settings,
        sample_field=SAMPLE_FIELD_DIR,
        sample_index=SAMPLE_INDEX_DIR,
        spectra_dirs=[SAMPLE_SPECTRA_DIR],
    )
    window.show()
    if startup_messages:
        for message in startup_messages:
            log.info("start-up: %s", message)
        window.statusBar().showMessage("  \u2022  ".join(startup_messages), 30_000)
    if args.paths:
        window.open_field(args.paths[0] if len(args.paths) == 1 else args.paths)
    elif not args.no_sample:
        window.open_field(SAMPLE_FIELD_DIR)
    _register_exit_wait(window)
    quit_ms = _quit_after(args)
    if quit_ms is not None:
        QTimer.singleShot(max(quit_ms, 0), window.close)
    return app, window


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GUI; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app, window = create_app(sys.argv[1:] if argv is None else argv)
    status = app.exec()
    # Background tasks were cancelled when the window closed; a task that cannot be
    # interrupted (reading frames) is waited for so the interpreter does not exit under it.
    from ssald_desktop.ui.workers import TaskRunner

    window.tasks.cancel_all()
    if not TaskRunner.wait_for_threads(60_000):
        log.warning("background work still running at exit")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
