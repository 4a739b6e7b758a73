"""Sandboxes for tests that need a read-only or full file system while running as root.

Root ignores file permissions, so ``chmod`` cannot make a file read-only for a test. These
``preexec_fn`` helpers give a child process a real restriction instead: root without the
capabilities that bypass permissions, or a private mount namespace with a read-only bind mount
(or a tiny tmpfs). :func:`can` says whether this machine allows one (tests skip otherwise).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def libc() -> ctypes.CDLL:
    """The C library, with errno."""
    return ctypes.CDLL(None, use_errno=True)


def drop_dac_capabilities() -> None:
    """preexec: root without the capabilities that bypass file permissions (after exec)."""
    lib = libc()
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if lib.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def private_mounts() -> None:
    """preexec step: a private mount namespace (mounts made here stay in the child)."""
    lib = libc()
    if lib.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if lib.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")


def readonly_mount(folder: Path) -> Callable[[], None]:
    """preexec: ``folder`` bind-mounted read-only in a private mount namespace."""
    def preexec() -> None:
        private_mounts()
        lib = libc()
        src = os.fsencode(folder)
        if lib.mount(src, src, None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "bind mount")
        if lib.mount(src, src, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) != 0:
            raise OSError(ctypes.get_errno(), "remount read-only")
    return preexec


def can(preexec: Callable[[], None]) -> bool:
    """Whether a child process can start with this preexec here."""
    try:
        r = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=preexec, timeout=20)
    except (subprocess.SubprocessError, OSError):
        return False
    return r.returncode == 0
