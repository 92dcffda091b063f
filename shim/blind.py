"""The tracee's view of the file system when /proc will not show it to us.

Without CAP_SYS_PTRACE (inside any build container) the kernel refuses us /proc/PID/root, cwd
and fd/N of a tracee whose uids differ from ours (__ptrace_may_access), while still letting us
run system calls in it (we are its tracer). So the tracee is asked, by injected calls:

- its root: ``stat("/")`` compared with the root we gave the command. Only a tracee with
  CAP_SYS_CHROOT or CAP_SYS_ADMIN can have changed it, so for one without them the answer is
  remembered for the rest of its life (capabilities cannot come back: NO_NEW_PRIVS). A tracee
  that chrooted elsewhere before dropping privileges cannot be followed: its foreign execs fail.
- its working directory: ``getcwd``, for a relative path (the result is already relative to the
  tracee's root, as our lookups want).
- a descriptor: ``readlink("/proc/self/fd/N")``, ``fstat`` and ``fcntl(F_GETFD)``, for execveat.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

from . import inject as ij
from . import ptrace as pt

_SCRATCH = 8192
_F_GETFD = 1
_NR_FCNTL = 72
_CAP_SYS_CHROOT = 18
_CAP_SYS_ADMIN = 21


class FdView(NamedTuple):
    name: bytes | None  # readlink of /proc/self/fd/N inside the tracee (None: unreadable)
    ident: tuple[int, int] | None  # its (st_dev, st_ino)
    cloexec: bool


class View(NamedTuple):
    """What the tracee told us, for one exec."""

    cwd: bytes | None
    fd: FdView | None


class Refusal(Exception):
    """The tracee's view cannot be established: the exec must fail (errno, cause)."""

    def __init__(self, err: int, cause: str) -> None:
        super().__init__(cause)
        self.errno = err
        self.cause = cause


def may_change_root(pid: int) -> bool:
    """Whether the tracee holds a capability that could move its root (or has no status)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapPrm:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << _CAP_SYS_CHROOT | 1 << _CAP_SYS_ADMIN))
    except (OSError, ValueError, IndexError):
        pass
    return True


def _ident(raw: bytes) -> tuple[int, int]:
    dev, ino = struct.unpack_from("<QQ", raw)  # struct stat on x86_64: st_dev, st_ino first
    return dev, ino


def probe(
    inj: ij.Injector, mem: pt.TraceeMemory, pid: int, at: pt.UserRegs, *, entry: bool,
    root: tuple[int, int] | None, cwd: bool, fd: int | None,
) -> View:
    """Ask the stopped tracee; raises Refusal when its root is not ``root`` (our (dev, ino) of
    the root we gave it; None: do not check) or a call fails unexpectedly.

    ``entry`` says whether ``at`` is the state at the seccomp stop (no call injected yet)."""
    addr = inj.call(pid, at, ij.NR_MMAP, 0, _SCRATCH, ij.PROT_READ | ij.PROT_WRITE,
                    ij.MAP_PRIVATE | ij.MAP_ANONYMOUS, (-1) & 0xFFFFFFFFFFFFFFFF, 0,
                    at_entry=entry)
    if addr < 0:
        raise Refusal(-addr, f"mmap in the tracee failed: {os.strerror(-addr)}")
    try:
        return _ask(inj, mem, pid, at, addr, root, cwd, fd)
    finally:
        inj.call(pid, at, ij.NR_MUNMAP, addr, _SCRATCH, at_entry=False)


def _ask(
    inj: ij.Injector, mem: pt.TraceeMemory, pid: int, at: pt.UserRegs, addr: int,
    root: tuple[int, int] | None, cwd: bool, fd: int | None,
) -> View:
    name_at, buf = addr, addr + 256  # a path we write; a buffer the call fills
    if root is not None:
        mem.write(pid, name_at, b"/\0")
        r = inj.call(pid, at, ij.NR_NEWFSTATAT, pt.AT_FDCWD & 0xFFFFFFFFFFFFFFFF, name_at, buf,
                     0, at_entry=False)
        if r < 0:
            raise Refusal(errno.EACCES, f"stat(\"/\") in the tracee failed: {os.strerror(-r)}")
        if _ident(mem.read(pid, buf, 16)) != root:
            raise Refusal(errno.EACCES, "it changed its root and then its credentials, and "
                          "without CAP_SYS_PTRACE its root cannot be opened")
    seen_cwd = None
    if cwd:
        r = inj.call(pid, at, ij.NR_GETCWD, buf, _SCRATCH - 256, at_entry=False)
        if r < 0:
            raise Refusal(-r, f"getcwd in the tracee failed: {os.strerror(-r)}")
        seen_cwd = mem.read_cstring(pid, buf)
    fd_view = None
    if fd is not None:
        mem.write(pid, name_at, b"/proc/self/fd/%d\0" % fd)
        n = inj.call(pid, at, ij.NR_READLINKAT, pt.AT_FDCWD & 0xFFFFFFFFFFFFFFFF, name_at, buf,
                     _SCRATCH - 512, at_entry=False)
        name = mem.read(pid, buf, n) if n > 0 else None
        mem.write(pid, name_at, b"\0")
        r = inj.call(pid, at, ij.NR_NEWFSTATAT, fd, name_at, buf, pt.AT_EMPTY_PATH,
                     at_entry=False)
        ident = _ident(mem.read(pid, buf, 16)) if r == 0 else None
        flags = inj.call(pid, at, _NR_FCNTL, fd, _F_GETFD, at_entry=False)
        fd_view = FdView(name, ident, flags >= 0 and bool(flags & 1))
    return View(seen_cwd, fd_view)
