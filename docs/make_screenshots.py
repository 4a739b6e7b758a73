"""Take the README's screenshots of the real application on the bundled sample survey.

Run it on an X display (a virtual one is fine), from the repository root::

    ../shared/tools/screenshot /tmp/last.png 400 -- .venv/bin/python docs/make_screenshots.py

It starts the app with fresh settings, drives it through the main workflow (open the sample
field, select a galaxy, query by image, review candidates, the training panel) and saves the
whole screen after each step into ``docs/screenshots/``; then it quits.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "screenshots"
DATA = Path(os.environ.get("SSALD_TEST_DATA", REPO.parent / "shared" / "data"))


def main() -> int:
    """Drive the app and save the screenshots."""
    sys.path.insert(0, str(REPO))
    tmp = Path(tempfile.mkdtemp(prefix="ssald-shots-"))
    os.environ["SSALD_CONFIG_DIR"] = str(tmp / "config")
    os.environ["SSALD_DATA_DIR"] = str(tmp / "data")
    from PySide6.QtCore import QEventLoop

    from ssald_desktop.app import create_app

    app, window = create_app([])
    OUT.mkdir(parents=True, exist_ok=True)

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.02)

    def wait(predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            pump(0.1)

    def shot(name: str) -> None:
        pump(1.0)
        screen = app.primaryScreen()
        pixmap = screen.grabWindow(0)
        pixmap.save(str(OUT / f"{name}.png"))
        print(f"saved {OUT / name}.png", flush=True)

    wait(lambda: len(window.galaxies) > 0, 300, "the sample field and its galaxies")
    shot("1-field")

    # Select a bright galaxy: cutout, bands, scale bar, evidence.
    order = sorted(range(len(window.galaxies)), key=lambda i: window.galaxies.mag[i])
    window.select_galaxy(order[1])
    wait(lambda: window.evidence_view.evidence is not None, 120, "the evidence")
    window.evidence_dock.raise_()
    shot("2-galaxy-evidence")

    # Query by image: the NGC 3758 (Mrk 739) render dropped on the window.
    window.table_dock.raise_()
    window.query_panel.clear_examples()
    window.open_paths([DATA / "renders" / "gothic" / "ngc-3758.png"])
    wait(lambda: bool(window.query_panel.hits), 300, "query results")
    shot("3-query")

    # Review candidates.
    window.central_tabs.setCurrentIndex(1)
    wait(lambda: bool(window.review_panel.queue), 120, "a review batch")
    pump(3)
    shot("4-review")

    if hasattr(window, "training_dock"):
        from PySide6.QtCore import Qt

        window.central_tabs.setCurrentIndex(0)
        window.training_dock.show()
        window.training_dock.raise_()
        window.resizeDocks([window.training_dock], [520], Qt.Orientation.Vertical)
        shot("5-training")
    window.close()
    pump(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
