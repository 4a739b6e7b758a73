"""ThumbnailGrid with real images: GZ2 galaxies and Lupton cutouts of field 2820-3-122."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QContextMenuEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from ssald_desktop.core.cutouts import CutoutEngine
from ssald_desktop.core.query import Hit
from ssald_desktop.ui.thumbnail_grid import (
    FRAME,
    NEGATIVE,
    NEGATIVE_COLOUR,
    POSITIVE,
    POSITIVE_COLOUR,
    ThumbnailGrid,
    ThumbnailItem,
    rgb_to_qimage,
)
from tests.conftest import DATA

GZ2 = DATA / "gz2"


@pytest.fixture(scope="module")
def gz2_images():
    with open(GZ2 / "labels.csv", newline="") as fh:
        ids = [row["galaxy_id"] for row in csv.DictReader(fh)][:500]
    return [
        (gid, np.asarray(Image.open(GZ2 / "images" / f"{gid}.jpg").convert("RGB"))) for gid in ids
    ]


def _gz2_items(images, n):
    return [
        ThumbnailItem(gid, img, score=1.0 - 0.001 * k, rank=k + 1, bottom_up=False)
        for k, (gid, img) in enumerate(images[:n])
    ]


@pytest.fixture
def grid(qtbot):
    g = ThumbnailGrid()
    qtbot.addWidget(g)
    g.resize(900, 600)
    g.show()
    qtbot.waitExposed(g)
    return g


def _centre(grid, object_id):
    return grid.item_rect(object_id).center()


def _context_menu(grid, object_id):
    pos = _centre(grid, object_id)
    event = QContextMenuEvent(
        QContextMenuEvent.Reason.Mouse, pos, grid.view.viewport().mapToGlobal(pos)
    )
    QApplication.sendEvent(grid.view.viewport(), event)
    menu = grid.last_menu
    assert menu is not None
    return {a.text(): a for a in menu.actions() if a.text()}


def test_real_cutouts_with_captions(grid, quiet_field, qtbot):
    engine = CutoutEngine(quiet_field)
    # The F star with three SDSS spectra, and points of the quiet field around it.
    ra = np.array([38.3018, 38.28, 38.33, 38.36, 38.30, 38.38])
    dec = np.array([-0.1339, -0.05, -0.10, -0.15, -0.18, -0.02])
    data, _, _ = engine.cut_arrays(ra, dec)
    rgb = engine.rgb_batch(data)
    hits = [
        Hit(rank=i + 1, id=f"2820-3-122:{i}", similarity=0.9 - 0.1 * i, cosine=0.9, row=i,
            ra=float(ra[i]), dec=float(dec[i]), source="2820-3-122")
        for i in range(len(ra))
    ]  # fmt: skip
    grid.set_results([ThumbnailItem.from_hit(h, rgb[i]) for i, h in enumerate(hits)])
    assert grid.object_ids() == [h.id for h in hits]
    first = grid.model.caption(0)
    assert first[0] == "#1  sim 0.900" and first[1] == "2820-3-122:0"
    tip = grid.model.data(grid.model.index(0), Qt.ItemDataRole.ToolTipRole)
    assert "RA 38.30180" in tip
    qtbot.waitUntil(lambda: grid.model.cached_pixmaps() == len(hits), timeout=5000)
    # The shown thumbnail is the cutout with FITS row 0 at the bottom (north up).
    image = grid.model.pixmap(0).toImage()
    expected = rgb[0][::-1]
    scale = image.width() // expected.shape[1]
    for r, c in ((0, 0), (20, 40), (63, 63)):
        colour = image.pixelColor(c * scale, r * scale)
        assert (colour.red(), colour.green(), colour.blue()) == tuple(
            int(v) for v in expected[r, c]
        )


def test_500_results_are_quick_and_pixmaps_lazy(grid, gz2_images, qtbot):
    items = _gz2_items(gz2_images, 500)
    start = time.perf_counter()
    grid.set_results(items)
    grid.repaint()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"set_results + paint of 500 took {elapsed:.3f} s"
    assert grid.model.rowCount() == 500
    assert 0 < grid.model.cached_pixmaps() < 100  # only what is on screen
    last = items[-1].object_id
    viewport = grid.view.viewport().rect()

    def at_bottom() -> bool:
        grid.view.scrollToBottom()  # the layout runs in batches: scroll until it is done
        return viewport.intersects(grid.item_rect(last))

    qtbot.waitUntil(at_bottom, timeout=5000)
    before = grid.model.cached_pixmaps()
    grid.repaint()
    assert grid.model.cached_pixmaps() > before  # the last rows are made when shown
    assert "500" in grid.summary.text()


def test_double_click_and_enter_activate(grid, gz2_images, qtbot):
    items = _gz2_items(gz2_images, 30)
    grid.set_results(items)
    target = items[7].object_id
    viewport, pos = grid.view.viewport(), _centre(grid, target)
    with qtbot.waitSignal(grid.activated, timeout=2000) as blocker:
        # A real double click: press and release, then the double-click event.
        QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=pos)
        QTest.mouseDClick(viewport, Qt.MouseButton.LeftButton, pos=pos)
    assert blocker.args == [target]
    grid.select([items[3].object_id])
    grid.view.setFocus()
    with qtbot.waitSignal(grid.activated, timeout=2000) as blocker:
        QTest.keyClick(grid.view, Qt.Key.Key_Return)
    assert blocker.args == [items[3].object_id]


def test_clicks_change_the_selection(grid, gz2_images, qtbot):
    items = _gz2_items(gz2_images, 30)
    grid.set_results(items)
    a, b = items[5].object_id, items[2].object_id
    with qtbot.waitSignal(grid.selectionChanged, timeout=2000) as blocker:
        QTest.mouseClick(grid.view.viewport(), Qt.MouseButton.LeftButton, pos=_centre(grid, a))
    assert blocker.args == [[a]]
    with qtbot.waitSignal(grid.selectionChanged, timeout=2000) as blocker:
        QTest.mouseClick(
            grid.view.viewport(),
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.ControlModifier,
            _centre(grid, b),
        )
    assert blocker.args == [[b, a]]  # rank order
    assert grid.selected_ids() == [b, a]


def test_context_menu_more_like_this_and_marks(grid, gz2_images, qtbot):
    items = _gz2_items(gz2_images, 30)
    grid.set_results(items)
    target = items[4].object_id
    actions = _context_menu(grid, target)
    assert grid.selected_ids() == [target]  # right-click selects the result
    with qtbot.waitSignal(grid.moreLikeThis, timeout=2000) as blocker:
        actions["More like this"].trigger()
    assert blocker.args == [target]

    actions = _context_menu(grid, target)
    with qtbot.waitSignal(grid.markPositive, timeout=2000) as blocker:
        actions["Mark as positive"].trigger()
    assert blocker.args == [target]
    assert grid.label_of(target) == POSITIVE
    assert "1 positive" in grid.summary.text()

    # The mark is visible: a green frame around the thumbnail.
    grid.repaint()
    shot = grid.view.viewport().grab().toImage()
    ratio = shot.width() / grid.view.viewport().width()
    rect = grid.item_rect(target)
    thumb = grid.thumbnail_size()
    left = rect.x() + (rect.width() - thumb) // 2 - 2
    y = rect.y() + FRAME + 3 + thumb // 2
    colour = shot.pixelColor(int(left * ratio), int(y * ratio))
    assert (colour.red(), colour.green(), colour.blue()) == (
        POSITIVE_COLOUR.red(), POSITIVE_COLOUR.green(), POSITIVE_COLOUR.blue(),
    )  # fmt: skip
    other = items[9].object_id
    rect = grid.item_rect(other)
    left = rect.x() + (rect.width() - thumb) // 2 - 2
    colour = shot.pixelColor(int(left * ratio), int((rect.y() + FRAME + 3 + thumb // 2) * ratio))
    assert colour.green() != POSITIVE_COLOUR.green() or colour.red() != POSITIVE_COLOUR.red()

    with qtbot.waitSignal(grid.clearMark, timeout=2000) as blocker:
        _context_menu(grid, target)["Clear mark"].trigger()
    assert blocker.args == [target] and grid.label_of(target) is None


def test_marking_several_selected_results_negative(grid, gz2_images, qtbot):
    items = _gz2_items(gz2_images, 30)
    grid.set_results(items)
    chosen = [items[1].object_id, items[6].object_id, items[8].object_id]
    grid.select(chosen)
    got: list[str] = []
    grid.markNegative.connect(got.append)
    actions = _context_menu(grid, items[6].object_id)
    actions["Mark 3 results as negative"].trigger()
    assert got == chosen
    assert [grid.label_of(oid) for oid in chosen] == [NEGATIVE] * 3
    grid.repaint()
    shot = grid.view.viewport().grab().toImage()
    ratio = shot.width() / grid.view.viewport().width()
    rect = grid.item_rect(chosen[1])
    left = rect.x() + (rect.width() - grid.thumbnail_size()) // 2 - 2
    y = rect.y() + FRAME + 3 + grid.thumbnail_size() // 2
    assert shot.pixelColor(int(left * ratio), int(y * ratio)) == NEGATIVE_COLOUR
    # A right-click outside the selection acts on that result alone.
    actions = _context_menu(grid, items[0].object_id)
    assert "Mark as positive" in actions
    assert grid.selected_ids() == [items[0].object_id]


def test_set_labels_from_a_store_and_bad_input(grid, gz2_images):
    items = _gz2_items(gz2_images, 10)
    grid.set_results(items)
    grid.set_labels(
        {items[0].object_id: POSITIVE, items[2].object_id: NEGATIVE, "absent": POSITIVE}
    )
    assert [grid.label_of(i.object_id) for i in items[:3]] == [POSITIVE, None, NEGATIVE]
    grid.set_labels({})
    assert grid.label_of(items[0].object_id) is None
    with pytest.raises(ValueError, match="appears twice"):
        grid.set_results([items[0], items[0]])
    with pytest.raises(ValueError, match="bad-shape"):
        grid.set_results([ThumbnailItem("bad-shape", np.zeros((4, 4, 2), np.uint8))])
    with pytest.raises(ValueError, match="mark must be"):
        grid.mark([items[0].object_id], "maybe")
    grid.set_results([ThumbnailItem("no-image", None, rank=1)])
    grid.repaint()  # a placeholder, not a crash
    assert grid.model.pixmap(0) is None


def test_rgb_to_qimage_orientation():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0] = (255, 0, 0)  # FITS row 0: the bottom
    img[1] = (0, 0, 255)
    bottom_up = rgb_to_qimage(img, bottom_up=True)
    assert bottom_up.pixelColor(0, 1).red() == 255 and bottom_up.pixelColor(0, 0).blue() == 255
    top_down = rgb_to_qimage(img, bottom_up=False)
    assert top_down.pixelColor(0, 0).red() == 255
    with pytest.raises(ValueError, match="shape"):
        rgb_to_qimage(np.zeros((3,), np.uint8))
