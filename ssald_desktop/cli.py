"""``ssald-cli``: the headless commands of SSALD desktop.

Each sub-command lives in its own module under :mod:`ssald_desktop.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit status). Errors caused by input or environment
(:class:`~ssald_desktop.core.errors.SsaldError`) are printed as one line, without a traceback,
and the process exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ssald_desktop import __version__
from ssald_desktop.core.errors import SsaldError

#: Modules under ssald_desktop.commands, one per sub-command group, in help order.
COMMAND_MODULES = (
    "fetch",
    "cutouts",
    "spectrum",
    "sources",
    "mine",
    "search",
    "evidence",
    "crossmatch",
    "labels",
    "active",
    "train",
    "runs",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="ssald-cli",
        description="SSALD desktop headless commands: SDSS fields, cutouts, spectra, mining.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ssald_desktop.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ssald_desktop.commands.{name}":
                continue  # command not written yet in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ssald-cli`` and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except SsaldError as exc:
        print(f"ssald-cli {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssald-cli {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
