"""A trapped exec carried out by the program's native twin (shim/twins.py) instead of qemu.

The exec becomes ``execve(<twin>, <the caller's argv>, <the caller's envp>)``: only the twin's
path is written into the tracee, below its stack pointer. The twin runs natively and stays
traced, so its own execs (dpkg-deb's tar) are decided like any other. Should the kernel refuse
it, the exec is sent round again and emulated.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import abi
from . import inject as ij
from . import ptrace as pt
from .plan import Plan
from .tracelog import Decision, errname

if TYPE_CHECKING:
    from .execs import Execs

_RED_ZONE = 128
_STACK_WRITE_MAX = 4096 - _RED_ZONE  # as shim/execs.py: within the page below sp


def exec_twin(ex: Execs, pid: int, plan: Plan, argv_p: int, envp_p: int, shown: bytes) -> bool:
    """Rewrite the exec into an execve of the twin; False when its path cannot be written into
    the tracee (then it is emulated)."""
    assert plan.twin is not None
    regs = ex.regs
    extra = [a.encode() for a in plan.twin.twin.args]
    try:
        if extra:  # a new pointer array: argv[0], the extra arguments, the caller's argv[1:]
            ptrs = ex.mem.read_pointers(pid, argv_p)
            if not ptrs:
                return False
            strings = [plan.twin.path, *extra]
            offsets, blob = [], b""
            for s in strings:
                offsets.append(len(blob))
                blob += s + b"\0"
            table = 8 * (len(ptrs) + len(extra) + 1)
            if table + len(blob) > _STACK_WRITE_MAX:
                return False  # emulated: not worth a mapping of its own
            base = (abi.stack_pointer(regs) - _RED_ZONE - table - len(blob)) & ~15
            strs = base + table
            new = [ptrs[0], *(strs + o for o in offsets[1:]), *ptrs[1:], 0]
            ex.mem.write(pid, base, struct.pack(f"<{len(new)}Q", *new) + blob)
            path, argv_p = strs, base
        else:
            blob = plan.twin.path + b"\0"
            path = (abi.stack_pointer(regs) - _RED_ZONE - len(blob)) & ~15
            ex.mem.write(pid, path, blob)
    except OSError:
        return False
    ex.saved[pid] = abi.save_call(regs)
    abi.set_execve(regs, path, argv_p, envp_p)
    pt.setregs(pid, regs)
    ex.twinning.add(pid)
    if ex.trace is not None:
        t = plan.twin.twin
        try:
            argv = ex._strings(pid, ex.mem.read_pointers(pid, argv_p))
        except OSError:
            argv = []
        ex.trace.exec(pid, ex.traced_parent(pid), shown, argv, Decision.TWIN,
                      twin=plan.twin.path.decode(errors="replace"), arch=plan.arch.name,
                      package=f"{t.package}={t.version}",
                      host_package=f"{t.host_package}={t.host_version}")
        ex.emulating[pid] = shown
    pt.cont_syscall(pid)
    return True


def twin_failed(ex: Execs, pid: int, regs: pt.UserRegs, saved: tuple[int, ...],
                prior: int | None) -> None:
    """At the syscall-exit stop of a twin's failed exec: the exec again, emulated this time."""
    ex.twinning.discard(pid)
    errno = -abi.return_value(regs)
    ex.planner.no_twin[pid] = f"its twin's exec failed with {errname(errno)}"
    if ex.trace is not None:
        ex.trace.exec(pid, ex.traced_parent(pid), ex.emulating.get(pid, b""), [],
                      Decision.FAILED, err=errno)
    at = ij.copy_regs(regs)
    abi.restore_call(at, saved)
    if prior is not None:
        ex.undump[pid] = prior
    if ex.emulating:
        ex.emulating.pop(pid, None)
    ex.inj.rerun(pid, at, at_entry=False)
