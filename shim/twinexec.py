"""A trapped exec carried out by the program's native twin (shim/twins.py) instead of qemu.

The exec becomes ``execve(<twin>, <the caller's argv>, <the caller's envp>)``: the twin's path
is written into the tracee, below its stack pointer, with the arguments and environment entries
a compiler's twin needs to search the guest compiler's directories (shim/twins.py), and only
when the caller's own arguments and environment leave those directories as they are. The twin
runs natively and stays traced, so its own execs (dpkg-deb's tar) are decided like any other.
Should the kernel refuse it, the exec is sent round again and emulated.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import abi, twins
from . import inject as ij
from . import ptrace as pt
from .newargv import STACK_WRITE_MAX, below_stack
from .plan import Plan
from .tracelog import Decision, errname

if TYPE_CHECKING:
    from .execs import Execs
    from .pidstate import PidState

_STRING_MAX = 1 << 16  # an argument or environment entry checked against the twin's limits


def exec_twin(ex: Execs, pid: int, state: PidState, plan: Plan, argv_p: int, envp_p: int,
              shown: bytes) -> str | None:
    """Rewrite the exec into an execve of the twin: None when done, else why it is emulated
    instead (the twin would not search where the guest program does, or its new argv does not
    fit below the stack pointer)."""
    assert plan.twin is not None
    regs = ex.regs
    t = plan.twin.twin
    extra = [a.encode() for a in t.args]
    try:
        if extra or t.env or t.unless or t.pinned:
            ptrs = ex.mem.read_pointers(pid, argv_p)
            if not ptrs:
                return "it has no argv[0]"
            envs = ex.mem.read_pointers(pid, envp_p) if (
                t.env or any(u.endswith("=") for u in t.unless)) else []
            argv, env = _read(ex, pid, ptrs), _read(ex, pid, envs)
            if argv is None or env is None:
                return "an argument or environment entry is too long to check"
            why = twins.refusal(t, argv, env)
            if why:
                return why
            changed = twins.environment(t, env)
            path, argv_p, envp_p = _write_tables(ex, pid, regs, plan.twin.path, extra, ptrs,
                                                 argv_p, envs, envp_p, changed)
            if path == 0:
                return "its new argv and environment do not fit below the stack pointer"
        else:
            blob = plan.twin.path + b"\0"
            path = below_stack(regs, len(blob))
            ex.mem.write(pid, path, blob)
    except OSError as e:
        return f"the tracee's argv could not be read or written ({errname(e.errno or 0)})"
    state.saved = abi.save_call(regs)
    abi.set_execve(regs, path, argv_p, envp_p)
    pt.setregs(pid, regs)
    state.twinning = True
    if ex.trace is not None:
        try:
            shown_argv = ex._strings(pid, ex.mem.read_pointers(pid, argv_p))
        except OSError:
            shown_argv = []
        ex.trace.exec(pid, ex.traced_parent(pid), shown, shown_argv, Decision.TWIN,
                      twin=plan.twin.path.decode(errors="replace"), arch=plan.arch.name,
                      package=f"{t.package}={t.version}",
                      host_package=f"{t.host_package}={t.host_version}")
        state.emulating = shown
    pt.cont_syscall(pid)
    return None


def _read(ex: Execs, pid: int, ptrs: list[int]) -> list[bytes] | None:
    out = []
    for p in ptrs:
        s = ex.mem.read_cstring(pid, p, limit=_STRING_MAX, partial=True)
        if len(s) >= _STRING_MAX:
            return None
        out.append(s)
    return out


def _write_tables(ex: Execs, pid: int, regs: pt.UserRegs, path: bytes, extra: list[bytes],
                  ptrs: list[int], argv_p: int, envs: list[int], envp_p: int,
                  changed: list[tuple[int, bytes]]) -> tuple[int, int, int]:
    """Below the stack pointer: the twin's path, a new argv when there are arguments to put
    before the caller's (argv[0], them, the caller's argv[1:]) and a new envp when entries
    change; (path, argv, envp) as the exec is to use them, path 0 when they do not fit."""
    strings = [path, *extra, *(e for _, e in changed)]
    offsets, blob = [], b""
    for s in strings:
        offsets.append(len(blob))
        blob += s + b"\0"
    argv_n = len(ptrs) + len(extra) + 1 if extra else 0
    env_n = len(envs) + sum(1 for at, _ in changed if at < 0) + 1 if changed else 0
    size = 8 * (argv_n + env_n) + len(blob)
    if size > STACK_WRITE_MAX:  # emulated instead: not worth a mapping of its own
        return 0, 0, 0
    base = below_stack(regs, size)
    strs = base + 8 * (argv_n + env_n)
    table: list[int] = []
    if extra:
        argv_p = base
        table += [ptrs[0], *(strs + o for o in offsets[1:1 + len(extra)]), *ptrs[1:], 0]
    if changed:
        envp_p = base + 8 * argv_n
        env = list(envs)
        for (at, _), o in zip(changed, offsets[1 + len(extra):], strict=True):
            if at >= 0:
                env[at] = strs + o
            else:
                env.append(strs + o)
        table += [*env, 0]
    ex.mem.write(pid, base, struct.pack(f"<{len(table)}Q", *table) + blob)
    return strs, argv_p, envp_p


def twin_failed(ex: Execs, pid: int, state: PidState, regs: pt.UserRegs, saved: tuple[int, ...],
                prior: int | None) -> None:
    """At the syscall-exit stop of a twin's failed exec: the exec again, emulated this time."""
    state.twinning = False
    errno = -abi.return_value(regs)
    state.no_twin = f"its twin's exec failed with {errname(errno)}"
    if ex.trace is not None:
        shown = state.emulating
        ex.trace.exec(pid, ex.traced_parent(pid), b"" if shown is None else shown, [],
                      Decision.FAILED, err=errno)
    at = ij.copy_regs(regs)
    abi.restore_call(at, saved)
    if prior is not None:
        state.undump = prior
    state.emulating = None
    ex.inj.rerun(pid, at, at_entry=False)
