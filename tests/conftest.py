"""Shared fixtures: the real SDSS data in ../shared/data, opened once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]


def _find_data() -> Path:
    """The real SDSS test data: $SSALD_TEST_DATA, ../shared/data, or the workplace's copy."""
    if os.environ.get("SSALD_TEST_DATA"):
        return Path(os.environ["SSALD_TEST_DATA"])
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (candidate / "sdss").is_dir():
            return candidate
    return REPO.parent / "shared" / "data"


DATA = _find_data()
FRAMES = DATA / "sdss" / "frames"
QUIET_FIELD = FRAMES / "2820-3-122"
M2_FIELD = FRAMES / "2583-2-136"


def pytest_configure(config):
    # The suite tests on the real data; without it every test would be skipped and a run would
    # look green while testing nothing. Fail instead, saying where the data was looked for.
    if not (DATA / "sdss").is_dir():
        pytest.exit(
            f"the real test data was not found at {DATA} (nor ../shared/data or "
            "/work/shared/data); set SSALD_TEST_DATA to its folder",
            returncode=4,
        )
    os.environ["SSALD_TEST_DATA"] = str(DATA)  # for subprocesses and modules that read it


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
    monkeypatch.setenv("SSALD_DATA_DIR", str(tmp_path / "data"))  # training-run registry
