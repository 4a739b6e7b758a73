"""Install a built bundle's desktop entry and icons for one user on Linux (freedesktop.org).

``python installer/install_linux.py BUNDLE [--prefix ~/.local]`` writes

- ``PREFIX/share/applications/ssald-desktop.desktop``: ``installer/ssald-desktop.desktop`` with
  ``Exec``/``TryExec`` pointing at ``BUNDLE/ssald`` (absolute, so no ``PATH`` change is needed);
- ``PREFIX/share/icons/hicolor/{48x48,128x128,256x256}/apps/ssald-desktop.png`` and
  ``.../scalable/apps/ssald-desktop.svg`` (the icon theme specification's layout).

The bundle itself stays where it is (e.g. unpacked to ``/opt/ssald`` or ``~/.local/opt``).
``--uninstall`` removes these files again. Nothing is run through a shell.
"""

from __future__ import annotations

import argparse
import configparser
import io
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DESKTOP_FILE = HERE / "ssald-desktop.desktop"
ICONS = HERE.parent / "resources" / "icons"
ICON_NAME = "ssald-desktop"
PNG_SIZES = (48, 128, 256)


def read_desktop_entry(path: Path = DESKTOP_FILE) -> dict[str, str]:
    """The ``[Desktop Entry]`` group of a desktop file as a dict (keys case-sensitive)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return dict(parser["Desktop Entry"])


def desktop_entry_for(bundle: Path, template: Path = DESKTOP_FILE) -> str:
    """The desktop file text with ``Exec``/``TryExec`` set to the bundle's ``ssald``."""
    exe = (bundle / "ssald").resolve()
    if any(c in str(exe) for c in ' \t\n"\'\\$`%'):
        raise ValueError(f"{exe}: the bundle's path has characters a desktop entry's Exec key "
                         "would need quoted; install it under a plain path such as /opt/ssald")
    out = io.StringIO()
    for line in template.read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = f"Exec={exe} %F"
        elif line.startswith("TryExec="):
            line = f"TryExec={exe}"
        out.write(line + "\n")
    return out.getvalue()


def targets(prefix: Path) -> dict[Path, Path]:
    """``source -> destination`` of every icon, and the desktop file's destination (key None)."""
    share = prefix / "share"
    out = {ICONS / f"ssald-{n}.png": share / "icons" / "hicolor" / f"{n}x{n}" / "apps" /
           f"{ICON_NAME}.png" for n in PNG_SIZES}
    out[ICONS / "ssald.svg"] = share / "icons" / "hicolor" / "scalable" / "apps" / \
        f"{ICON_NAME}.svg"
    out[DESKTOP_FILE] = share / "applications" / DESKTOP_FILE.name
    return out


def install(bundle: Path, prefix: Path) -> list[Path]:
    """Install the desktop entry and icons; returns the files written.

    Raises
    ------
    FileNotFoundError
        ``bundle`` has no ``ssald`` executable.
    """
    if not (bundle / "ssald").is_file():
        raise FileNotFoundError(f"{bundle}: no ssald executable here (build it with "
                                "installer/build.py; the bundle is dist/ssald)")
    written = []
    for src, dst in targets(prefix).items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src == DESKTOP_FILE:
            dst.write_text(desktop_entry_for(bundle), encoding="utf-8")
        else:
            shutil.copyfile(src, dst)
        written.append(dst)
    return written


def uninstall(prefix: Path) -> list[Path]:
    """Remove what :func:`install` wrote; returns the files removed."""
    removed = []
    for dst in targets(prefix).values():
        if dst.is_file():
            dst.unlink()
            removed.append(dst)
    return removed


def main(argv: list[str] | None = None) -> int:
    """Command line of the per-user installer."""
    parser = argparse.ArgumentParser(prog="install_linux.py", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?", help="the built bundle (dist/ssald)")
    parser.add_argument("--prefix", type=Path, default=Path.home() / ".local",
                        help="installation prefix (default ~/.local)")
    parser.add_argument("--uninstall", action="store_true", help="remove the entry and icons")
    args = parser.parse_args(argv)
    try:
        if args.uninstall:
            files = uninstall(args.prefix)
        elif args.bundle is None:
            parser.error("give the bundle folder (dist/ssald)")
        else:
            files = install(args.bundle, args.prefix)
    except (OSError, ValueError) as exc:
        print(f"install_linux.py: error: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
