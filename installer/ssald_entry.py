"""Entry point of the frozen SSALD desktop bundle: ``ssald`` (GUI) and ``ssald-cli``.

PyInstaller builds both executables from this one script; which program runs is decided by
the executable's name (:func:`program_for`). Before anything else it calls
:func:`multiprocessing.freeze_support`: the GUI runs photutils and TensorFlow work in helper
processes started with the ``spawn`` method (:mod:`ssald_desktop.core.child`), and a frozen
``spawn`` child is this executable started again with ``--multiprocessing-fork`` (PyInstaller's
runtime hook makes ``freeze_support`` divert such a start, and the resource tracker's, to the
multiprocessing machinery on every platform).

A frozen app has no ``python`` to run ``python -m model.train`` (local training,
:mod:`ssald_desktop.core.launch.local`) or ``python -m model.finetune`` (active learning):
those commands use ``sys.executable``, which here is the bundle's executable, so
``EXE -m MODULE ARGS...`` runs MODULE as ``__main__`` for the few modules in
:data:`RUNNABLE_MODULES`, and nothing else.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence
from pathlib import Path

#: Modules the frozen executable runs for ``-m MODULE`` (what ``sys.executable -m`` starts).
RUNNABLE_MODULES = ("model.train", "model.finetune")


def program_for(executable: str) -> str:
    """``"cli"`` for an executable named ``ssald-cli`` (any suffix), else ``"gui"``."""
    name = Path(executable).name.lower()
    for suffix in (".exe",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return "cli" if name in ("ssald-cli", "ssald_cli") else "gui"


def module_to_run(argv: Sequence[str]) -> str | None:
    """The module of ``EXE -m MODULE ...`` when it is one of :data:`RUNNABLE_MODULES`.

    Raises
    ------
    SystemExit
        ``-m`` with a module that the bundle does not run (status 2, with a message).
    """
    if len(argv) >= 2 and argv[1] == "-m":
        if len(argv) >= 3 and argv[2] in RUNNABLE_MODULES:
            return argv[2]
        wanted = argv[2] if len(argv) >= 3 else "(none)"
        raise SystemExit(f"{Path(argv[0]).name}: -m {wanted}: this bundle runs only "
                         f"{', '.join(RUNNABLE_MODULES)} with -m")
    return None


def run(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the GUI, the CLI or a ``-m`` module; returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    module = module_to_run(argv)
    if module is not None:
        import runpy

        sys.argv = [module, *argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    # frozen, sys.executable is the executable itself (argv[0] may be a link to it)
    if program_for(sys.executable if getattr(sys, "frozen", False) else argv[0]) == "cli":
        from ssald_desktop.cli import main as cli_main

        return cli_main(argv[1:])
    from ssald_desktop.app import main as gui_main

    return gui_main(argv[1:])


if __name__ == "__main__":
    multiprocessing.freeze_support()  # must come first: a spawned helper stops here
    sys.exit(run())
