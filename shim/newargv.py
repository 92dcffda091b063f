"""The new argv of a rewritten exec, written into the tracee: below its stack pointer when it
fits within a page of it, else in a mapping made for it (the caller makes one on NeedMemory and
sends the exec round again).
"""

from __future__ import annotations

import errno
import struct

from . import abi
from . import ptrace as pt
from .plan import Plan

_RED_ZONE = 128
# A new argv is written below the stack pointer only if it stays within one page of it: a guard
# page is at least that big, so a write that misses the stack faults instead of landing in the
# mapping below. Bigger ones, and any that fault, go to a mapping made for them.
STACK_WRITE_MAX = 4096 - _RED_ZONE


def below_stack(regs: pt.UserRegs, size: int) -> int:
    """Where ``size`` bytes go below the tracee's stack pointer, past its red zone, aligned."""
    return (abi.stack_pointer(regs) - _RED_ZONE - size) & ~15


class NeedMemory(Exception):
    """The new argv (this many bytes) needs memory other than the tracee's stack."""


def write(
    mem: pt.TraceeMemory, pid: int, regs: pt.UserRegs, plan: Plan, path_p: int,
    argv_ptrs: list[int], envp_p: int, fd: int | None, area: tuple[int, int] | None,
    link: bytes | None = None,
) -> None:
    """Write the new argv below the tracee's stack pointer (or in ``area``, a mapping made for
    it) and point the exec in ``regs`` at it: execve of the emulator, or execveat of ``fd``.

    The caller's own strings (argv[1:], and the path when it can be reused) stay where they
    are; only new strings and the new pointer array are written, so a huge argv costs one
    small write. NeedMemory: the argv needs a mapping of that many bytes (``regs`` unchanged).
    ``link``: the path to execve instead of the emulator's (argv[0] stays the emulator's).
    """
    strings = list(plan.head)
    argv0 = argv_ptrs[0] if argv_ptrs else 0
    # Which head entries can point at memory the caller already has.
    reuse: dict[int, int] = {}
    if not plan.scripts:
        if argv0:
            reuse[2 + plan.lead] = argv0
        if plan.path_override is None:
            reuse[3 + plan.lead] = path_p
    elif plan.path_override is None:
        reuse[len(strings) - 1] = path_p
    blob = bytearray()
    offsets: list[int] = []
    for i, s in enumerate(strings):
        if i in reuse:
            offsets.append(-1)
            continue
        offsets.append(len(blob))
        blob += s + b"\0"
    empty = len(blob)  # execveat's "" when the emulator is run through a descriptor
    if fd is not None:
        blob += b"\0"
    elif link is not None:
        blob += link + b"\0"  # at ``empty`` too
    tail = argv_ptrs[1:]
    nptrs = len(strings) + len(tail) + 1
    size = nptrs * 8 + len(blob)
    if area is not None and area[1] >= size:
        base = area[0]
    elif size > STACK_WRITE_MAX:
        raise NeedMemory(size)
    else:
        base = below_stack(regs, size)
    str_base = base + nptrs * 8
    ptrs = [reuse[i] if off < 0 else str_base + off for i, off in enumerate(offsets)]
    ptrs.extend(tail)
    ptrs.append(0)
    try:
        mem.write(pid, base, struct.pack(f"<{nptrs}Q", *ptrs) + bytes(blob))
    except OSError as e:
        if e.errno in (errno.EFAULT, errno.EIO) and area is None:
            raise NeedMemory(size) from None  # the stack ends within a page below sp
        raise
    if fd is None:
        abi.set_execve(regs, ptrs[0] if link is None else str_base + empty, base, envp_p)
    else:
        abi.set_execveat(regs, fd, str_base + empty, base, envp_p, pt.AT_EMPTY_PATH)
