"""The C library, bound once through ctypes: the handle every binding in the project calls
through, the errno-to-OSError step, and the mount-namespace calls ``xshim run`` makes.

The shim's own bindings build on this (``ptrace.py``: ptrace, seccomp, process_vm_*, openat2;
``handoff.py``: the socket calls); the builder imports it, never a CDLL of its own.
"""

from __future__ import annotations

import ctypes
import os
from typing import NoReturn

LIBC = ctypes.CDLL(None, use_errno=True)

# unshare(2) and mount(2) flags (linux/sched.h, linux/mount.h).
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2


def raise_errno(what: str) -> NoReturn:
    """Raise the errno the last call left as an OSError that names ``what`` failed."""
    e = ctypes.get_errno()
    raise OSError(e, f"{what}: {os.strerror(e)}")


def check(r: int, what: str) -> int:
    """``r`` if the call succeeded (not negative), else its errno raised."""
    if r < 0:
        raise_errno(what)
    return r


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    r = LIBC.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
        data.encode() if data else None,
    )
    if r != 0:
        raise_errno(f"mount {source} on {target}")


def umount2(target: str, flags: int) -> None:
    check(LIBC.umount2(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    check(LIBC.unshare(flags), "unshare")
