"""Build the SSALD desktop bundle (or take a built one) and prove that it works.

``python installer/check_bundle.py [--bundle DIR | --out DIR] [--json OUT]``

Checks, each run from the bundle's own executables with a fresh settings and cache folder
(no network is used):

1. ``ssald --version`` and ``ssald-cli --version`` print this version;
2. ``ssald-cli search --object ID`` on the bundled sample index (faiss in the bundle);
3. ``ssald-cli search --query PNG`` with one sample galaxy's picture written as a PNG: the
   bundled Keras encoder runs under the bundled TensorFlow and finds that galaxy first, with a
   cosine of at least 0.999 to its stored vector;
4. ``ssald-cli -m model.train --help`` and ``-m model.finetune --help``: the training and
   fine-tuning entries that launches run with ``sys.executable`` work in the frozen app;
5. ``ssald --quit-after-ms MS`` with ``QT_QPA_PLATFORM=offscreen``: the GUI opens the sample
   field, starts its helper process (a ``spawn`` child of the frozen executable, seen in
   ``/proc``), and exits with status 0 and no traceback.

Where the kernel allows a private mount namespace (Linux, root or a user namespace), checks 2
to 5 run with the bundle mounted read-only, as an installed bundle is. Every command is an
argument list; nothing goes through a shell. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build as build_mod  # noqa: E402

from ssald_desktop import __version__  # noqa: E402

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


class CheckFailed(Exception):
    """One check of the bundle failed (the message says which and why)."""


def readonly_mount(folder: Path):
    """A ``preexec_fn`` that bind-mounts ``folder`` read-only in a private mount namespace."""
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        src = os.fsencode(folder)
        if libc.mount(src, src, None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "bind mount")
        if libc.mount(src, src, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) != 0:
            raise OSError(ctypes.get_errno(), "remount read-only")
    return preexec


def _can(preexec) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return subprocess.run([sys.executable, "-c", "pass"], preexec_fn=preexec,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_resources(bundle: Path) -> Path:
    """The ``resources`` folder inside a bundle (``_internal/resources`` on Linux/Windows)."""
    found = sorted(p.parents[2] for p in bundle.rglob("resources/sample/index/store.json"))
    if not found:
        raise CheckFailed(f"{bundle}: no resources/sample/index in the bundle")
    return found[0]


def sample_galaxy_png(resources: Path, out: Path) -> str:
    """Write the first indexed sample galaxy's colour picture as a PNG; return its id.

    The index stores the ``rgb`` composite of the galaxy's shard row in FITS order (row 0 at
    the south edge); a PNG is top-down, so the rows are flipped, as a user's screenshot is.
    """
    import h5py
    from PIL import Image

    index = resources / "sample" / "index"
    db = sqlite3.connect(f"{(index / 'objects.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        oid, source, item = db.execute(
            "SELECT id, source, item FROM objects ORDER BY row LIMIT 1").fetchone()
    finally:
        db.close()
    with h5py.File(index / source, "r") as h:
        rgb = h["rgb"][int(item)][::-1]
    Image.fromarray(rgb).save(out)
    return str(oid)


class Runner:
    """Runs the bundle's executables with an isolated environment and records the checks."""

    def __init__(self, bundle: Path, work: Path, preexec=None):
        self.bundle = bundle
        self.exes = build_mod.executables(bundle)
        self.work = work
        self.preexec = preexec
        self.env = {**os.environ, "QT_QPA_PLATFORM": "offscreen",
                    "SSALD_CONFIG_DIR": str(work / "config"),
                    "SSALD_CACHE_DIR": str(work / "cache"),
                    "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.env.pop("SSALD_RESOURCES", None)  # the bundle must find its own
        self.env.pop("PYTHONPATH", None)
        self.results: list[dict[str, object]] = []

    def run(self, name: str, argv: list[str],
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run one command of the bundle; record its time; a non-zero status fails."""
        t0 = time.perf_counter()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                               timeout=timeout, preexec_fn=self.preexec, cwd=str(self.work))
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"{name}: no answer within {timeout:.0f} s") from exc
        seconds = time.perf_counter() - t0
        self.results.append({"check": name, "seconds": round(seconds, 2), "status": r.returncode})
        if r.returncode != 0:
            raise CheckFailed(f"{name}: exit status {r.returncode}\n{r.stdout[-2000:]}\n"
                              f"{r.stderr[-4000:]}")
        return r

    def versions(self) -> None:
        """Both executables print ``NAME VERSION``."""
        for prog, exe in self.exes.items():
            out = self.run(f"{prog} --version", [str(exe), "--version"], 120)
            text = (out.stdout + out.stderr).strip()
            if text != f"{prog} {__version__}":
                raise CheckFailed(f"{prog} --version printed {text!r}, not "
                                  f"'{prog} {__version__}'")

    def search(self, resources: Path) -> dict[str, object]:
        """Search the bundled sample index by object id and by a PNG picture."""
        index = resources / "sample" / "index"
        png = self.work / "query.png"
        oid = sample_galaxy_png(resources, png)
        by_object = self.work / "by-object.json"
        self.run("ssald-cli search --object", [str(self.exes["ssald-cli"]), "search", "--index",
                                                str(index), "--object", oid, "--k", "5",
                                                "--json", str(by_object)])
        hits = json.loads(by_object.read_text())["results"]
        if len(hits) != 5 or oid in [h["id"] for h in hits]:
            raise CheckFailed(f"search --object {oid}: expected 5 other galaxies, got {hits}")
        by_image = self.work / "by-image.json"
        self.run("ssald-cli search --query PNG", [str(self.exes["ssald-cli"]), "search",
                                                  "--index", str(index), "--query", str(png),
                                                  "--k", "3", "--json", str(by_image)])
        top = json.loads(by_image.read_text())["results"][0]
        if top["id"] != oid or top["cosine"] < 0.999:
            raise CheckFailed(f"search --query {png.name}: galaxy {oid} should come first with "
                              f"cosine >= 0.999, got {top}")
        return {"object": oid, "top_cosine": top["cosine"],
                "neighbours": [h["id"] for h in hits]}

    def train_entry(self) -> None:
        """``EXE -m model.train --help`` (and ``model.finetune``) run as local launches do."""
        for module in ("model.train", "model.finetune"):
            out = self.run(f"ssald-cli -m {module} --help",
                           [str(self.exes["ssald-cli"]), "-m", module, "--help"], 300)
            if "usage" not in out.stdout.lower():
                raise CheckFailed(f"-m {module} --help printed no usage: {out.stdout[-500:]}")

    def gui(self, quit_after_ms: int) -> dict[str, object]:
        """Start the GUI offscreen on the sample; it must spawn its helper and exit cleanly."""
        exe = self.exes["ssald"]
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(exe), "--quit-after-ms", str(quit_after_ms)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env, preexec_fn=self.preexec, cwd=str(self.work))
        helpers: set[int] = set()
        deadline = time.monotonic() + quit_after_ms / 1000 + 120
        while proc.poll() is None and time.monotonic() < deadline:
            helpers |= _spawned_helpers(proc.pid)
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            raise CheckFailed(f"ssald --quit-after-ms {quit_after_ms}: still running after "
                              f"{quit_after_ms / 1000 + 120:.0f} s")
        log = proc.communicate()[0]
        seconds = time.perf_counter() - t0
        self.results.append({"check": "ssald (GUI, offscreen)", "seconds": round(seconds, 2),
                             "status": proc.returncode})
        problems = [w for w in ("Traceback", "galaxy detection unavailable",
                                "helper process") if w in log]
        if proc.returncode != 0 or problems:
            raise CheckFailed(f"ssald: exit status {proc.returncode}, {problems}\n{log[-4000:]}")
        if not helpers:
            raise CheckFailed("ssald: no spawned helper process (--multiprocessing-fork) was "
                              f"seen while the GUI ran\n{log[-2000:]}")
        return {"seconds": round(seconds, 1), "helpers_seen": len(helpers),
                "log_tail": log.strip().splitlines()[-5:]}


def _spawned_helpers(pid: int) -> set[int]:
    """Processes below ``pid`` started as multiprocessing ``spawn`` children."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"--multiprocessing-fork" in cmd:
            found.add(int(entry.name))
    return found


def check(bundle: Path, quit_after_ms: int = 20000, read_only: bool = True) -> dict[str, Any]:
    """Run every check on a built bundle; returns the figures. Raises CheckFailed."""
    bundle = bundle.resolve()
    resources = find_resources(bundle)
    with tempfile.TemporaryDirectory(prefix="ssald-check-") as tmp:
        work = Path(tmp)
        preexec = readonly_mount(bundle) if read_only else None
        if preexec is not None and not _can(preexec):
            preexec = None
        r = Runner(bundle, work, preexec)
        r.versions()
        search = r.search(resources)
        r.train_entry()
        gui = r.gui(quit_after_ms)
        return {"bundle": str(bundle), "resources": str(resources),
                "bundle_read_only": preexec is not None, "search": search, "gui": gui,
                "checks": r.results}


def main(argv: list[str] | None = None) -> int:
    """Command line: build (unless --bundle) and check."""
    parser = argparse.ArgumentParser(prog="check_bundle.py", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="check this built bundle (skip the build)")
    parser.add_argument("--out", type=Path, help="build folder (see build.py)")
    parser.add_argument("--quit-after-ms", type=int, default=20000,
                        help="how long the GUI runs before it quits (default 20000)")
    parser.add_argument("--writable", action="store_true",
                        help="do not mount the bundle read-only for the checks")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {}
    try:
        if args.bundle is None:
            built = build_mod.build(args.out)
            summary["build"] = built
            bundle = Path(str(built["bundle"]))
            print(f"built {bundle} in {built['seconds']} s, {int(built['bytes']) / 2**20:.0f} MiB")
        else:
            bundle = args.bundle
        summary.update(check(bundle, args.quit_after_ms, not args.writable))
    except (CheckFailed, RuntimeError) as exc:
        print(f"check_bundle.py: FAILED: {exc}", file=sys.stderr)
        return 1
    for c in summary["checks"]:
        print(f"ok  {c['check']:<36} {c['seconds']:7.2f} s")
    print(f"bundle read-only during the checks: {summary['bundle_read_only']}")
    print(f"query by image: galaxy {summary['search']['object']} found first, cosine "
          f"{summary['search']['top_cosine']:.5f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
