"""Running system calls inside a tracee stopped at a system call (x86_64).

Some things only the tracee itself can do or see once it has changed its credentials and we lack
CAP_SYS_PTRACE: make itself dumpable again (so PTRACE_PEEKDATA works), name its working
directory, stat its root. And some memory only it can create: a mapping for an argv that does
not fit below its stack pointer. This module makes the stopped tracee run such a call and hands
back the result.

The tracee must be stopped at a system-call entry (our seccomp stop) or exit (a syscall-exit
stop). From an entry the pending call is replaced; from an exit the instruction pointer is moved
back over the two-byte ``syscall`` instruction so that it runs again with the numbers we set.
Afterwards the caller either re-runs the original call (``rerun``: it traps into seccomp again and
is handled from scratch), or ends it with a result (``finish``).
"""

from __future__ import annotations

import ctypes
import os
import signal

from . import abi
from . import ptrace as pt

_SYSCALL_STOP = signal.SIGTRAP | 0x80

NR_MMAP = 9
NR_MUNMAP = 11
NR_NEWFSTATAT = 262
NR_GETCWD = 79
NR_READLINKAT = 267
NR_PRCTL = 157
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20


class TraceeGone(Exception):
    """The tracee died (or exec'd away) while running an injected call."""


def copy_regs(src: pt.UserRegs) -> pt.UserRegs:
    dst = pt.UserRegs()
    ctypes.memmove(ctypes.addressof(dst), ctypes.addressof(src), ctypes.sizeof(dst))
    return dst


class Injector:
    """Runs calls in stopped tracees; wait statuses of tracees that died meanwhile are kept in
    ``deaths`` for the supervisor's loop, which would otherwise never see them."""

    def __init__(self) -> None:
        self.regs = pt.UserRegs()
        self.deaths: list[tuple[int, int]] = []
        self.signals: dict[int, int] = {}  # a signal stop seen meanwhile, to deliver afterwards

    def call(
        self, pid: int, at: pt.UserRegs, nr: int, *args: int, at_entry: bool
    ) -> int:
        """Run ``nr(args)`` in ``pid``, stopped with registers ``at``; return the raw result
        (a negative errno on failure). The tracee is left at the call's syscall-exit stop."""
        r = self.regs
        ctypes.memmove(ctypes.addressof(r), ctypes.addressof(at), ctypes.sizeof(r))
        abi.set_call(r, nr, args)
        if at_entry:
            pt.setregs(pid, r)
        else:
            abi.set_pc(r, abi.pc(at) - abi.SYSCALL_INSN_LEN)
            pt.setregs(pid, r)
            self._step(pid)  # to the syscall-entry stop of the call
        self._step(pid)  # to its syscall-exit stop
        pt.getregs(pid, r)
        return abi.return_value(r)

    def _step(self, pid: int) -> None:
        """Resume to the next syscall stop, keeping aside anything else that happens."""
        pt.cont_syscall(pid)
        self.wait_syscall_stop(pid)

    def wait_syscall_stop(self, pid: int) -> None:
        """Wait for ``pid``, resumed with PTRACE_SYSCALL, to reach its next syscall stop."""
        while True:
            try:
                _, status = os.waitpid(pid, pt.WALL)
            except ChildProcessError:
                raise TraceeGone(pid) from None
            if not os.WIFSTOPPED(status):
                self.deaths.append((pid, status))
                raise TraceeGone(pid)
            sig = os.WSTOPSIG(status)
            event = status >> 16
            if event == 0 and sig == _SYSCALL_STOP:
                return
            if event == 0:
                # A signal stop cannot come before the call's exit stop (signals are delivered on
                # the way back to user mode), but if one does, deliver it once we are done.
                self.signals.setdefault(pid, sig)
            pt.cont_syscall(pid)

    def rerun(self, pid: int, at: pt.UserRegs, *, at_entry: bool) -> None:
        """Back to the state before the injected calls, the original call about to run again
        (it traps into seccomp again); ``at`` are the registers of its seccomp stop.
        ``at_entry``: the tracee is still at that stop (nothing was injected), so the call is
        skipped there rather than let through."""
        r = copy_regs(at)
        abi.restart_call(r, at)
        if at_entry:
            abi.skip_call(r)
        pt.setregs(pid, r)
        pt.cont(pid, self.signals.pop(pid, 0))

    def finish(self, pid: int, at: pt.UserRegs, result: int) -> None:
        """End the original call with ``result`` (a negative errno) instead of running it."""
        r = copy_regs(at)
        abi.set_return(r, result)
        pt.setregs(pid, r)  # at a syscall-exit stop: rax is what the call returns
        pt.cont(pid, self.signals.pop(pid, 0))

    def cont(self, pid: int) -> None:
        pt.cont(pid, self.signals.pop(pid, 0))


def fail_at_entry(pid: int, regs: pt.UserRegs, err: int, to_exit: bool = False) -> None:
    """Skip the call stopped at its seccomp stop and make it return ``-err``; ``to_exit``: stop
    again at its syscall-exit stop."""
    abi.skip_call(regs)
    abi.set_return(regs, -err)
    pt.setregs(pid, regs)
    if to_exit:
        pt.cont_syscall(pid)
    else:
        pt.cont(pid)
