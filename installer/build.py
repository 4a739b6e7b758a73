"""Build the SSALD desktop one-folder bundle with PyInstaller.

``python installer/build.py [--out DIR] [--clean] [--json OUT]`` runs PyInstaller on
``installer/ssald.spec`` with the Python that runs this script (use the project's venv, with
``pip install -e '.[installer]'``), and writes the bundle to ``DIR/dist/ssald`` (work files in
``DIR/work``). The default ``DIR`` is ``$SSALD_BUILD_DIR`` or ``<temp>/ssald-build``: the build
needs about 2 GB, so it stays out of the repository. It prints the build time and the bundle's
size, and writes them as JSON with ``--json``.

Every command is run as an argument list; nothing is passed through a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPEC = HERE / "ssald.spec"
BUNDLE_NAME = "ssald"


def default_out() -> Path:
    """``$SSALD_BUILD_DIR`` or ``<temp>/ssald-build``."""
    env = os.environ.get("SSALD_BUILD_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "ssald-build"


def tree_size(folder: Path) -> int:
    """Bytes of every regular file under ``folder`` (links not followed, as ``du``)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def pyinstaller_command(out: Path, clean: bool = False, python: str = sys.executable) -> list[str]:
    """The PyInstaller command line (an argument list) for the spec."""
    cmd = [python, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(out / "dist"), "--workpath", str(out / "work"), str(SPEC)]
    if clean:
        cmd.insert(3, "--clean")
    return cmd


def executables(bundle: Path) -> dict[str, Path]:
    """The bundle's executables by program name (``ssald``, ``ssald-cli``)."""
    suffix = ".exe" if sys.platform == "win32" else ""
    return {name: bundle / f"{name}{suffix}" for name in ("ssald", "ssald-cli")}


def build(out: Path | None = None, clean: bool = False) -> dict[str, Any]:
    """Build the bundle; returns ``bundle``, ``seconds``, ``bytes`` and the executables.

    Raises
    ------
    RuntimeError
        PyInstaller is not installed, failed, or did not produce both executables.
    """
    out = (out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import PyInstaller; print(PyInstaller.__version__)"],
        capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"PyInstaller is not installed in {sys.executable}: "
                           "pip install -e '.[installer]' (or pip install pyinstaller)")
    t0 = time.perf_counter()
    r = subprocess.run(pyinstaller_command(out, clean), cwd=str(HERE.parent), check=False)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"PyInstaller failed (exit status {r.returncode}) building {SPEC}")
    bundle = out / "dist" / BUNDLE_NAME
    exes = executables(bundle)
    missing = [str(p) for p in exes.values() if not p.is_file()]
    if missing:
        raise RuntimeError(f"{bundle}: the build did not produce {', '.join(missing)}")
    return {"bundle": str(bundle), "seconds": round(seconds, 1), "bytes": tree_size(bundle),
            "pyinstaller": probe.stdout.strip(), "python": sys.version.split()[0],
            "platform": sys.platform, "executables": {k: str(v) for k, v in exes.items()}}


def main(argv: list[str] | None = None) -> int:
    """Command line of the build script."""
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help=f"build folder (default {default_out()})")
    parser.add_argument("--clean", action="store_true", help="clear PyInstaller's caches first")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        info = build(args.out, args.clean)
    except RuntimeError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle: {info['bundle']}")
    print(f"built in {info['seconds']:.0f} s with PyInstaller {info['pyinstaller']}; "
          f"size {int(info['bytes']) / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
