"""First-run robustness (issue 8, item 4): the app starts whatever state it finds, and says so.

Runs on a copy of the real bundled resources. The read-only resources cases run in a
subprocess, because the tests run as root and root ignores file permissions: either the copied
folder is bind-mounted read-only in a private mount namespace (as an installed bundle on a
read-only file system), or the process drops the capabilities that let root bypass file
permissions and the folder is made read-only with chmod (as a bundle installed by another
user). This is the approach of tests/core/test_labels_durability.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssald_desktop.core.embeddings import EmbeddingStore, ReadOnlyStoreError
from ssald_desktop.core.errors import DataFileError
from ssald_desktop.firstrun import FIRST_RUN_MESSAGE, check_environment, is_first_run
from ssald_desktop.settings import Settings, default_cache_dir
from tests._sandbox import can, drop_dac_capabilities, readonly_mount

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "resources"


@pytest.fixture(scope="module")
def resources_copy(tmp_path_factory) -> Path:
    """The bundled sample field, index, its shards (thumbnails) and its encoder (a copy)."""
    dst = tmp_path_factory.mktemp("bundle") / "resources"
    for rel in ("sample/frames/2820-3-122", "sample/index", "sample/cutouts", "encoders/default"):
        shutil.copytree(RESOURCES / rel, dst / rel)
    return dst


def _ini(tmp_path: Path) -> Path:
    return tmp_path / "config" / "ssald-desktop.ini"


# -- settings -----------------------------------------------------------------------------------
def test_fresh_install_is_a_first_run_and_only_that(tmp_path, resources_copy):
    settings = Settings()
    assert is_first_run(settings)
    messages = check_environment(settings, resources_copy)
    assert messages == [FIRST_RUN_MESSAGE]
    assert default_cache_dir().is_dir()  # the default cache was created silently
    settings.set_search_k(30)
    settings.sync()
    assert check_environment(Settings(), resources_copy) == []


def test_settings_of_a_newer_version_are_reported_and_left_alone(tmp_path, resources_copy):
    ini = _ini(tmp_path)
    ini.parent.mkdir(parents=True)
    ini.write_text(f"[meta]\nversion=99\n[paths]\ncache_dir={tmp_path / 'newer-cache'}\n")
    before = ini.read_bytes()
    settings = Settings()
    messages = check_environment(settings, resources_copy)
    assert len(messages) == 1, messages
    assert "newer SSALD desktop" in messages[0] and str(ini) in messages[0]
    assert FIRST_RUN_MESSAGE not in messages
    assert settings.cache_dir() == default_cache_dir()  # defaults, not the newer file's
    assert ini.read_bytes() == before


def test_unreadable_settings_are_moved_aside_not_called_a_first_run(tmp_path, resources_copy):
    ini = _ini(tmp_path)
    ini.parent.mkdir(parents=True)
    ini.write_text("[meta]\nversion=abc\n")
    messages = check_environment(Settings(), resources_copy)
    assert FIRST_RUN_MESSAGE not in messages
    assert any("moved to ssald-desktop.ini.corrupt" in m for m in messages), messages
    assert (ini.parent / "ssald-desktop.ini.corrupt").exists()


def test_settings_folder_that_cannot_be_written_is_reported(tmp_path, resources_copy):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the settings folder should go")
    from PySide6.QtCore import QSettings

    settings = Settings()
    # the settings folder's place is taken by a file: nothing can be saved there
    settings._qs = QSettings(str(blocker / "ssald-desktop.ini"), QSettings.Format.IniFormat)
    messages = check_environment(settings, resources_copy)
    assert any("Settings cannot be saved" in m and str(blocker) in m for m in messages)


# -- cache --------------------------------------------------------------------------------------
def test_deleted_cache_folder_is_created_again(tmp_path, resources_copy):
    chosen = tmp_path / "disk" / "ssald-cache"
    chosen.mkdir(parents=True)
    settings = Settings()
    settings.set_cache_dir(chosen)
    settings.sync()
    shutil.rmtree(chosen)
    settings = Settings()
    messages = check_environment(settings, resources_copy)
    assert messages == [f"The cache folder {chosen} was missing: created it again (empty)"]
    assert chosen.is_dir() and settings.cache_dir() == chosen


def test_moved_cache_folder_falls_back_to_the_default(tmp_path, resources_copy):
    chosen = tmp_path / "usb-disk" / "ssald-cache"
    chosen.mkdir(parents=True)
    settings = Settings()
    settings.set_cache_dir(chosen)
    settings.sync()
    shutil.move(tmp_path / "usb-disk", tmp_path / "usb-disk-renamed")
    settings = Settings()
    messages = check_environment(settings, resources_copy)
    assert len(messages) == 1 and str(chosen) in messages[0], messages
    assert "moved or unmounted" in messages[0] and str(default_cache_dir()) in messages[0]
    assert not chosen.exists()  # not recreated where a disk used to be
    assert Settings().cache_dir() == default_cache_dir()  # stored: said once
    assert check_environment(Settings(), resources_copy) == []


def test_cache_path_that_is_a_file_falls_back(tmp_path, resources_copy):
    chosen = tmp_path / "cache-file"
    chosen.write_text("not a folder")
    settings = Settings()
    settings.set_cache_dir(chosen)
    settings.sync()
    messages = check_environment(settings, resources_copy)
    assert len(messages) == 1 and "it is a file, not a folder" in messages[0]
    assert settings.cache_dir() == default_cache_dir() and default_cache_dir().is_dir()


def test_missing_search_index_goes_back_to_the_sample(tmp_path, resources_copy):
    settings = Settings()
    settings.set_search_index(tmp_path / "gone-index")
    messages = check_environment(settings, resources_copy)
    assert any(str(tmp_path / "gone-index") in m and "bundled sample" in m for m in messages)
    assert settings.search_index() is None


# -- resources ----------------------------------------------------------------------------------
def test_missing_or_broken_resources_are_reported_not_raised(tmp_path, resources_copy):
    Settings().set_search_k(10)  # not a first run
    missing = check_environment(Settings(), tmp_path / "nowhere")
    assert len(missing) == 1 and "resources folder" in missing[0] and "missing" in missing[0]
    broken = tmp_path / "broken"
    shutil.copytree(resources_copy / "sample" / "index", broken / "sample" / "index")
    (broken / "sample" / "index" / "objects.sqlite").write_bytes(b"not a database" * 100)
    messages = check_environment(Settings(), broken)
    assert any("sample field" in m for m in messages)
    assert any("index cannot be opened" in m and "objects.sqlite" in m for m in messages)


def test_read_only_store_refuses_changes_clearly(resources_copy, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(resources_copy / "sample" / "index", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with EmbeddingStore(folder, create=False, read_only=True) as store:
        assert store.read_only and store.count == 45
        vec = store.vector(store.ids()[0])
        with pytest.raises(ReadOnlyStoreError, match="opened read-only"):
            store.append([], vec[None, :0])
        with pytest.raises(ReadOnlyStoreError, match=str(folder)):
            store.rewrite([0], [], vec[None])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # not even a journal
    with EmbeddingStore(folder, create=False) as store:  # writable folder: auto = read-write
        assert not store.read_only
    with pytest.raises(DataFileError, match="must exist"):
        EmbeddingStore(tmp_path / "none", read_only=True)


# -- read-only resources, for real: a read-only mount, and root without its privileges -----------


# In the restricted process: the start-up check, a "more like this" search of the sample index
# (faiss, no TensorFlow), a thumbnail from the HDF5 shards, and a refused new store.
PROBE = r"""
import json, os, sys
from pathlib import Path
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from ssald_desktop.settings import Settings
from ssald_desktop.firstrun import check_environment
from ssald_desktop.core.query import Searcher
from ssald_desktop.core.embeddings import EmbeddingStore
from ssald_desktop.core.errors import DataFileError
res = Path(sys.argv[1])
messages = check_environment(Settings(), res)
s = Searcher(res / "sample" / "index")
first = s.store.ids()[0]
hits = s.search(objects=[first], k=5).to_dict()
thumb = s.store.object_images([first])[0]
try:
    EmbeddingStore(res / "new-store")
    refused = None
except DataFileError as exc:
    refused = str(exc)
hits = [(h["id"], round(h["similarity"], 6)) for h in hits["results"]]
print(json.dumps({"messages": messages, "read_only": s.store.read_only, "query": first,
                  "hits": hits, "thumb": None if thumb is None else list(thumb.shape),
                  "refused": refused}))
"""


def _probe(resources: Path, preexec, tmp_path: Path) -> dict:
    env = {**os.environ, "SSALD_CONFIG_DIR": str(tmp_path / "config"),
           "SSALD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", PROBE, str(resources)], capture_output=True,
                       text=True, env=env, preexec_fn=preexec, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_view(view: dict, resources: Path) -> None:
    assert view["messages"][0] == FIRST_RUN_MESSAGE
    ro = [m for m in view["messages"] if "read-only" in m]
    assert len(ro) == 1 and str(resources) in ro[0] and "45 galaxies" in ro[0], view["messages"]
    assert view["read_only"] is True
    ids = [i for i, _ in view["hits"]]
    assert len(ids) == 5 and view["query"] not in ids  # the query object is excluded
    # the same search of the writable copy (in this process) gives the same answer
    from ssald_desktop.core.query import Searcher

    with_write = Searcher(resources / "sample" / "index").search(objects=[view["query"]], k=5)
    assert [[h.id, round(h.similarity, 6)] for h in with_write.hits] == view["hits"]
    assert view["thumb"] == [64, 64, 3]
    assert view["refused"] and str(resources / "new-store") in view["refused"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_mounted_resources_still_search(tmp_path, resources_copy):
    res = tmp_path / "ro" / "resources"
    shutil.copytree(resources_copy / "sample" / "index", res / "sample" / "index")
    shutil.copytree(resources_copy / "sample" / "cutouts", res / "sample" / "cutouts")
    shutil.copytree(resources_copy / "sample" / "frames", res / "sample" / "frames")
    shutil.copytree(resources_copy / "encoders", res / "encoders")
    preexec = readonly_mount(res)
    if not can(preexec):
        pytest.skip("no private mount namespace here (needs CAP_SYS_ADMIN)")
    before = _snapshot(res)
    view = _probe(res, preexec, tmp_path)
    assert _snapshot(res) == before  # nothing written, not even a journal
    _check_view(view, res)


def test_resources_installed_read_only_for_the_user_still_search(tmp_path, resources_copy):
    res = tmp_path / "opt" / "resources"
    shutil.copytree(resources_copy / "sample" / "index", res / "sample" / "index")
    shutil.copytree(resources_copy / "sample" / "cutouts", res / "sample" / "cutouts")
    shutil.copytree(resources_copy / "sample" / "frames", res / "sample" / "frames")
    shutil.copytree(resources_copy / "encoders", res / "encoders")
    preexec = drop_dac_capabilities if os.geteuid() == 0 else None
    if preexec is not None and not can(preexec):
        pytest.skip("running as root without CAP_SETPCAP: cannot make files read-only to root")
    dirs = [p for p in [res, *res.rglob("*")] if p.is_dir()]
    files = [p for p in res.rglob("*") if p.is_file()]
    before = _snapshot(res)
    for p in files:
        p.chmod(0o444)
    for p in dirs:
        p.chmod(0o555)
    try:
        view = _probe(res, preexec, tmp_path)
    finally:
        for p in dirs:
            p.chmod(0o755)
        for p in files:
            p.chmod(0o644)
    assert _snapshot(res) == before  # nothing written, not even a journal
    _check_view(view, res)
