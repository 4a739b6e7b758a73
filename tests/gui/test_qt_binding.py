"""The Qt binding must not corrupt Python's reference counts.

PySide6 6.12.0 (with Python 3.11, where None is not immortal) drops a reference to None on every
call of a void C++ method: ``label.setText()``, ``timer.start()``, ``app.processEvents()``... A
GUI makes thousands of such calls a minute, so the interpreter aborts with "Fatal Python error:
none_dealloc" within minutes of use. pyproject excludes that release; this test catches a
binding with the same defect.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QLabel


def test_void_calls_keep_none_refcount(qapp):
    label = QLabel()
    timer = QTimer()
    before = sys.getrefcount(None)
    for _ in range(500):
        label.setText("x")
        timer.setInterval(5)
        QApplication.processEvents()
    after = sys.getrefcount(None)
    # Unrelated code may hold a few more or fewer references; the defect loses 1500.
    assert abs(after - before) < 100, f"None lost {before - after} references in 1500 calls"
