"""The installer (issue 8, item 3): spec, resources, entry point, desktop entry, icons.

The quick checks run in the normal suite. The full build (several minutes, about 2 GB under
the temporary folder) runs only with ``SSALD_BUILD_BUNDLE=1``; it builds the bundle with
PyInstaller and runs ``installer/check_bundle.py``'s checks on it (GUI offscreen, the
bundled index searched by object and by image, the frozen ``-m model.train``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALLER = REPO / "installer"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"ssald_installer_{name}",
                                                  INSTALLER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(INSTALLER))  # check_bundle imports build
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(INSTALLER))
    return module


layout = _load("bundle_layout")
entry = _load("ssald_entry")
install_linux = _load("install_linux")


# -- spec and bundle layout ---------------------------------------------------------------------
def test_spec_parses_and_uses_the_shared_layout():
    tree = ast.parse((INSTALLER / "ssald.spec").read_text(), filename="ssald.spec")
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name)}
    assert {"Analysis", "PYZ", "EXE", "COLLECT"} <= calls
    text = (INSTALLER / "ssald.spec").read_text()
    assert "L.resource_datas()" in text and "ssald_entry.py" in text
    assert [name for name, _ in layout.EXECUTABLES] == ["ssald", "ssald-cli"]
    assert dict(layout.EXECUTABLES) == {"ssald": False, "ssald-cli": True}


def test_resources_listing_covers_the_sample_and_mirrors_the_tree():
    datas = layout.resource_datas()
    dests = {(Path(dst) / Path(src).name).as_posix() for src, dst in datas}
    for rel in layout.REQUIRED_RESOURCES:
        want = f"resources/{rel}"
        assert any(d == want or d.startswith(want + "/") for d in dests), rel
    for src, dst in datas:
        rel = Path(src).relative_to(layout.RESOURCES)
        assert Path(dst) == Path("resources") / rel.parent
        assert "__pycache__" not in rel.parts and rel.suffix != ".pyc"
    # every file of the sample index and the encoder is bundled, byte for byte the same files
    for folder in ("sample/index", "encoders/default"):
        here = sorted(p for p in (layout.RESOURCES / folder).iterdir() if p.is_file())
        assert {str(p) for p in here} <= {src for src, _ in datas}


def test_sources_read_as_text_are_bundled_beside_their_modules():
    import importlib

    for src, dst in layout.source_datas():
        rel = Path(src).relative_to(layout.ROOT)
        assert Path(dst) == rel.parent
        module = importlib.import_module(".".join(rel.with_suffix("").parts))
        assert Path(module.__file__).resolve() == Path(src).resolve()
    text = (INSTALLER / "ssald.spec").read_text()
    assert "L.source_datas()" in text


def test_resources_land_where_the_code_looks_for_them():
    # frozen, ssald_desktop/__init__ lives in the contents folder; resources go beside it
    import ssald_desktop
    from ssald_desktop.core.catalogs import resources_dir

    contents = Path(ssald_desktop.__file__).resolve().parents[1]
    assert contents / layout.RESOURCES_DEST == layout.RESOURCES
    assert os.environ.get("SSALD_RESOURCES") or resources_dir() == layout.RESOURCES


def test_sqlite_side_files_are_left_out_and_a_pending_log_refused(tmp_path):
    import sqlite3

    res = tmp_path / "resources"
    shutil.copytree(layout.RESOURCES, res, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    db_path = res / "sample" / "cutouts" / "manifest.sqlite"
    reader = sqlite3.connect(db_path)  # a reader of a WAL database leaves -wal and -shm files
    reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
    assert (res / "sample" / "cutouts" / "manifest.sqlite-shm").exists()
    names = {Path(src).name for src, _ in layout.resource_datas(res)}
    assert "manifest.sqlite" in names and not any(n.endswith(("-wal", "-shm")) for n in names)
    reader.execute("CREATE TABLE pending(x)")  # a write not yet checkpointed into the file
    reader.commit()
    try:
        with pytest.raises(ValueError, match="manifest.sqlite-wal"):
            layout.resource_datas(res)
    finally:
        reader.close()
    layout.resource_datas(res)  # closing checkpointed it


def test_missing_resources_are_named(tmp_path):
    shutil.copytree(layout.RESOURCES / "catalogs", tmp_path / "catalogs")
    with pytest.raises(FileNotFoundError, match="sample/index/index.faiss"):
        layout.resource_datas(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        layout.resource_datas(tmp_path / "nowhere")


# -- the frozen entry point ---------------------------------------------------------------------
@pytest.mark.parametrize("exe, program", [
    ("/opt/ssald/ssald", "gui"), ("/opt/ssald/ssald-cli", "cli"),
    (r"C:\Program Files\SSALD\ssald-cli.exe", "cli"), ("SSALD-CLI.EXE", "cli"),
    ("/Applications/SSALD desktop.app/Contents/MacOS/ssald", "gui"),
])
def test_entry_point_picks_the_program_by_executable_name(exe, program):
    assert entry.program_for(exe.replace("\\", "/")) == program


def test_entry_point_runs_only_the_listed_modules():
    assert entry.module_to_run(["ssald", "field-dir"]) is None
    assert entry.module_to_run(["ssald", "-m", "model.train", "--help"]) == "model.train"
    assert entry.module_to_run(["ssald-cli", "-m", "model.finetune"]) == "model.finetune"
    with pytest.raises(SystemExit, match="runs only model.train"):
        entry.module_to_run(["ssald", "-m", "os"])
    with pytest.raises(SystemExit, match="-m \\(none\\)"):
        entry.module_to_run(["ssald", "-m"])


def _run_entry(argv: list[str]) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.path.insert(0, {str(INSTALLER)!r}); import ssald_entry; "
            f"sys.exit(ssald_entry.run({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_entry_point_dispatches_for_real():
    """Not frozen, the same script runs the CLI and the -m module (as the bundle does)."""
    cli = _run_entry(["/opt/ssald/ssald-cli", "--version"])
    assert cli.returncode == 0 and cli.stdout.strip() == "ssald-cli 0.1.0", cli.stderr
    gui = _run_entry(["/opt/ssald/ssald", "--version"])
    assert gui.returncode == 0 and gui.stdout.strip() == "ssald 0.1.0", gui.stderr
    train = _run_entry(["/opt/ssald/ssald", "-m", "model.train", "--help"])
    assert train.returncode == 0 and "usage" in train.stdout.lower(), train.stderr
    refused = _run_entry(["/opt/ssald/ssald", "-m", "http.server"])
    assert refused.returncode == 1 and "runs only model.train" in refused.stderr


# -- desktop entry and icons --------------------------------------------------------------------
MAIN_CATEGORIES = {"AudioVideo", "Audio", "Video", "Development", "Education", "Game",
                   "Graphics", "Network", "Office", "Science", "Settings", "System", "Utility"}


def test_desktop_entry_is_valid(tmp_path):
    e = install_linux.read_desktop_entry()
    for key in ("Type", "Name", "Exec", "Icon", "Categories"):
        assert e.get(key), key
    assert e["Type"] == "Application" and e["Terminal"] == "false"
    cats = [c for c in e["Categories"].split(";") if c]
    assert MAIN_CATEGORIES & set(cats) and e["Categories"].endswith(";")
    assert e["Exec"].split()[0] == "ssald" and e["Exec"].split()[1:] == ["%F"]
    assert e["Icon"] == install_linux.ICON_NAME and "/" not in e["Icon"]
    for key in ("Keywords", "MimeType"):
        assert e[key].endswith(";")
    validator = shutil.which("desktop-file-validate")
    if validator:
        r = subprocess.run([validator, str(install_linux.DESKTOP_FILE)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_icons_are_valid_images():
    import numpy as np
    from PIL import Image

    icons = layout.RESOURCES / "icons"
    for n in (48, 128, 256):
        with Image.open(icons / f"ssald-{n}.png") as im:
            im.load()
            assert im.format == "PNG" and im.size == (n, n) and im.mode == "RGBA"
            alpha = im.getchannel("A")
            assert alpha.getextrema() == (0, 255)  # transparent corners, opaque inside
            colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
            assert len(colours) > 50  # a picture, not a flat square
    from PySide6.QtSvg import QSvgRenderer

    svg = QSvgRenderer(str(icons / "ssald.svg"))
    assert svg.isValid() and svg.defaultSize().width() == 256


def test_icon_pngs_are_renders_of_the_svg(tmp_path):
    import numpy as np
    from PIL import Image

    render = _load("render_icons")
    out = render.render(out_dir=tmp_path, sizes=(48,))
    fresh = np.asarray(Image.open(out[0]).convert("RGBA"), float)
    shipped = np.asarray(Image.open(layout.RESOURCES / "icons" / "ssald-48.png").convert(
        "RGBA"), float)
    assert np.abs(fresh - shipped).mean() < 2.0


def test_install_linux_writes_entry_and_icons(tmp_path):
    bundle = tmp_path / "opt" / "ssald"
    bundle.mkdir(parents=True)
    (bundle / "ssald").write_bytes(b"")
    prefix = tmp_path / "local"
    files = install_linux.install(bundle, prefix)
    assert len(files) == 5 and all(f.is_file() for f in files)
    desktop = prefix / "share" / "applications" / "ssald-desktop.desktop"
    e = install_linux.read_desktop_entry(desktop)
    assert e["Exec"] == f"{bundle / 'ssald'} %F" and e["TryExec"] == str(bundle / "ssald")
    assert (prefix / "share/icons/hicolor/128x128/apps/ssald-desktop.png").is_file()
    assert sorted(install_linux.uninstall(prefix)) == sorted(files)
    with pytest.raises(FileNotFoundError, match="no ssald executable"):
        install_linux.install(tmp_path / "nothing", prefix)
    with pytest.raises(ValueError, match="quoted"):
        spaced = tmp_path / "my apps" / "ssald"
        spaced.mkdir(parents=True)
        (spaced / "ssald").write_bytes(b"")
        install_linux.install(spaced, prefix)


# -- the full build (minutes; opt-in) -----------------------------------------------------------
@pytest.mark.skipif(not os.environ.get("SSALD_BUILD_BUNDLE"),
                    reason="builds the PyInstaller bundle (minutes, ~2 GB): set "
                    "SSALD_BUILD_BUNDLE=1")
def test_full_build_starts_and_searches(tmp_path):
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.fail("PyInstaller is not installed: pip install -e '.[installer]'")
    check = _load("check_bundle")
    built = _load("build").build(Path(os.environ.get("SSALD_BUILD_DIR", tmp_path / "build")))
    summary = check.check(Path(str(built["bundle"])), quit_after_ms=15000)
    assert summary["search"]["top_cosine"] >= 0.999
    assert summary["gui"]["helpers_seen"] >= 1
