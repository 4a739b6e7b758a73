"""Shared fixtures: the real SDSS data in ../shared/data, opened once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SSALD_TEST_DATA", REPO.parent / "shared" / "data"))
FRAMES = DATA / "sdss" / "frames"
QUIET_FIELD = FRAMES / "2820-3-122"
M2_FIELD = FRAMES / "2583-2-136"


def pytest_collection_modifyitems(config, items):
    if not DATA.exists():
        skip = pytest.mark.skip(reason=f"real data not found at {DATA} (set SSALD_TEST_DATA)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def quiet_field():
    from ssald_desktop.core.frames import open_frame_set

    return open_frame_set(QUIET_FIELD)


@pytest.fixture(scope="session")
def m2_field():
    from ssald_desktop.core.frames import open_frame_set

    return open_frame_set(M2_FIELD)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and settings folders; nothing touches the user's."""
    monkeypatch.setenv("SSALD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SSALD_CONFIG_DIR", str(tmp_path / "config"))
