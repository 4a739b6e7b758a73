"""Architecture checks: the headless core and model stay free of Qt, and of TensorFlow at import."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test dependency"
    r = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" in r.stdout and "0 broken" in r.stdout


def test_core_import_is_light():
    code = (
        "import sys\n"
        "import ssald_desktop.core.frames, ssald_desktop.core.cutouts, ssald_desktop.core.dataset\n"
        "import ssald_desktop.core.spectra, ssald_desktop.core.sky, ssald_desktop.cli\n"
        "import ssald_desktop.core.sources, ssald_desktop.core.embeddings\n"
        "import ssald_desktop.core.index, ssald_desktop.core.query\n"
        "names = ('tensorflow', 'keras', 'PySide6', 'astroquery')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
