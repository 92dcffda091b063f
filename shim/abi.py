"""The x86_64 system-call ABI: which register holds what at a system-call stop.

The only module above the binding that names registers: the supervisor, the exec handling and
the injected calls speak of a call's number, its arguments and its return value. Every exec goes
through here, so these are plain functions on the one ``UserRegs`` buffer, allocating nothing
but the tuples they hand back.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import ptrace as pt

Regs = pt.UserRegs

_U64 = (1 << 64) - 1
SYSCALL_INSN_LEN = 2  # "syscall" (0f 05): the instruction pointer at a stop is just past it


class ExecCall(NamedTuple):
    """An execve or execveat as the tracee made it (execve: dirfd AT_FDCWD, flags 0)."""

    nr: int
    dirfd: int
    path_p: int
    argv_p: int
    envp_p: int
    flags: int


# The argument registers a rewrite changes, and the call: what a failed exec gets back.
Saved = tuple[int, int, int, int, int, int]


def syscall_nr(regs: Regs) -> int:
    return int(regs.orig_rax)


def exec_args(regs: Regs) -> ExecCall | None:
    """The arguments of the execve or execveat stopped at, or None for any other call."""
    nr = regs.orig_rax
    if nr == pt.NR_EXECVE:
        return ExecCall(nr, pt.AT_FDCWD, regs.rdi, regs.rsi, regs.rdx, 0)
    if nr == pt.NR_EXECVEAT:
        dirfd = struct.unpack("i", struct.pack("I", regs.rdi & 0xFFFFFFFF))[0]
        return ExecCall(nr, dirfd, regs.rsi, regs.rdx, regs.r10, regs.r8)
    return None


def set_execve(regs: Regs, path_p: int, argv_p: int, envp_p: int) -> None:
    """Make the call stopped at execve(path_p, argv_p, envp_p)."""
    regs.orig_rax = pt.NR_EXECVE
    regs.rdi, regs.rsi, regs.rdx = path_p, argv_p, envp_p


def set_execveat(
    regs: Regs, dirfd: int, path_p: int, argv_p: int, envp_p: int, flags: int
) -> None:
    """Make the call stopped at execveat(dirfd, path_p, argv_p, envp_p, flags)."""
    regs.orig_rax = pt.NR_EXECVEAT
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8 = dirfd, path_p, argv_p, envp_p, flags


def execve_path(regs: Regs) -> int:
    """The path pointer of an execve (the first argument)."""
    return int(regs.rdi)


def save_call(regs: Regs) -> Saved:
    return regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.orig_rax


def restore_args(regs: Regs, saved: Saved | tuple[int, ...]) -> None:
    """Give back the caller's argument registers (at a syscall-exit stop: the call is done)."""
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, _ = saved


def restore_call(regs: Regs, saved: Saved | tuple[int, ...]) -> None:
    """Give back the caller's arguments and call, to run it again."""
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.orig_rax = saved


def set_call(regs: Regs, nr: int, args: tuple[int, ...]) -> None:
    """Make the call stopped at ``nr(args)`` (up to six arguments; the rest are zero)."""
    full = (*args, 0, 0, 0, 0, 0, 0)
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = full[:6]
    regs.orig_rax = nr
    regs.rax = nr


def skip_call(regs: Regs) -> None:
    """At a syscall-entry stop: run no call (the kernel skips call number -1)."""
    regs.orig_rax = _U64


def restart_call(regs: Regs, at: Regs) -> None:
    """Back over the syscall instruction of the call stopped at in ``at``, to run it again."""
    regs.rip = at.rip - SYSCALL_INSN_LEN
    regs.rax = at.orig_rax


def clear_clone_flag(regs: Regs, flag: int) -> None:
    """Take ``flag`` out of a clone's flags (its first argument)."""
    regs.rdi &= ~flag


def raw_return(regs: Regs) -> int:
    """The return register as the kernel left it (unsigned)."""
    return int(regs.rax)


def return_value(regs: Regs) -> int:
    """What the call returned, a negative errno on failure."""
    rax = regs.rax
    return int(rax - (1 << 64) if rax >= 1 << 63 else rax)


def failed(regs: Regs) -> bool:
    """Whether the call returned an error."""
    return bool(regs.rax >= 1 << 63)


def set_return(regs: Regs, value: int) -> None:
    """Make the call return ``value`` (a negative errno for a failure)."""
    regs.rax = value & _U64


def stack_pointer(regs: Regs) -> int:
    return int(regs.rsp)


def pc(regs: Regs) -> int:
    return int(regs.rip)


def set_pc(regs: Regs, value: int) -> None:
    regs.rip = value
