"""Render ``resources/icons/ssald.svg`` to the PNG sizes the installers use (48, 128, 256 px).

Uses Qt's :class:`~PySide6.QtSvg.QSvgRenderer` (no extra dependency):
``python installer/render_icons.py`` writes ``resources/icons/ssald-{48,128,256}.png``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
SIZES = (48, 128, 256)


def render(svg: Path = ICONS / "ssald.svg", out_dir: Path = ICONS,
           sizes: tuple[int, ...] = SIZES) -> list[Path]:
    """Render ``svg`` to ``out_dir/ssald-{size}.png`` for every size; returns the files.

    Raises
    ------
    ValueError
        ``svg`` is not a valid SVG file (named).
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(["render_icons"])  # noqa: F841
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg}: not a valid SVG file")
    written = []
    for size in sizes:
        img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        img.fill(Qt.GlobalColor.transparent)
        painter = QPainter(img)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        path = out_dir / f"{svg.stem}-{size}.png"
        if not img.save(str(path), "PNG"):  # type: ignore[call-overload]
            raise OSError(f"{path}: could not be written")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in render():
        print(p)
    sys.exit(0)
