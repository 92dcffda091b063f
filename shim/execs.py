"""One trapped exec: read it, plan it, rewrite it into an exec of qemu, or answer it.

Also the rounds that prepare an exec we cannot carry out at once: calls injected into the
tracee (shim/inject.py) to make its memory readable, to learn its root and cwd (shim/blind.py),
or to map memory for an argv too big for its stack; the exec then traps again and is handled
afresh. And the record of it all in the trace.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from . import abi, blind, comm, handoff, limits, newargv, twinexec
from . import inject as ij
from . import ptrace as pt
from .pidstate import PidState, Retry
from .plan import Leave, NeedView, Plan, Planner
from .tracelog import Decision, TraceSink, errname

_TRACE_ARG_MAX = 1 << 16  # longer arguments are shown cut off, with a marker


class Execs:
    """The exec handling of one supervisor; its loop calls on_exec at each seccomp stop,
    on_syscall_exit at each syscall-exit stop, on_fork at a fork event and exec_event at an
    exec event, each with the stopped thread's record (shim/pidstate.py), which holds all that
    is kept about it between stops."""

    def __init__(
        self, emulators: dict[str, bytes], planner: Planner, trace: TraceSink | None,
        traced_parent: Callable[[int], int], links: comm.NameLinks | None = None,
    ) -> None:
        self.emulators = emulators
        self.planner = planner
        self.trace = trace
        self.traced_parent = traced_parent  # the ppid of a trace record
        self.mem = pt.TraceeMemory()
        self.regs = pt.UserRegs()
        self.inj = ij.Injector()
        self.warned: set[str] = set()
        self.namer = comm.Namer(self.inj, self.mem, planner.own_root)
        self.links = links
        self.handoff = handoff.Handoff(self.inj, self.mem, planner.own_root)

    def exec_event(self, pid: int, name: tuple[bytes, int] | None) -> None:
        """Let ``pid`` go on from the exec event of a successful exec: renamed first if it was
        emulated (``name``: what PidTable.exec_done returned)."""
        if name is None:
            pt.cont(pid)  # CONT, not SYSCALL: this exec's syscall-exit stop is not needed
            return
        self.namer.rename(pid, *name)

    def on_syscall_exit(self, pid: int, t: PidState) -> None:
        saved = t.saved
        prior = t.undump
        if saved is not None or prior is not None:
            t.saved = t.undump = None
            regs = self.regs
            pt.getregs(pid, regs)
            if abi.failed(regs):  # the exec failed: give back the caller's registers
                area = None
                t.name = None
                fd = t.emu_fd
                t.emu_fd = None
                if saved is not None and t.twinning:
                    twinexec.twin_failed(self, pid, t, regs, saved, prior)
                    return
                if (saved is not None and fd is None and abi.return_value(regs) == -errno.ENOENT
                        and self._hand_over_late(pid, t, regs, saved, prior)):
                    return
                if saved is not None:
                    abi.restore_args(regs, saved)
                    if self.trace is not None:
                        shown = t.emulating
                        t.emulating = None
                        self.trace.exec(pid, self.traced_parent(pid),
                                        b"" if shown is None else shown, [], Decision.FAILED,
                                        err=-abi.return_value(regs))
                    area = t.scratch
                    t.scratch = None
                if area is not None or prior is not None or fd is not None:
                    at = ij.copy_regs(regs)
                    if fd is not None:
                        self.inj.call(pid, at, handoff.NR_CLOSE, fd, at_entry=False)
                    if area is not None:
                        self.inj.call(pid, at, ij.NR_MUNMAP, *area, at_entry=False)
                    if prior is not None:  # as not dumpable as before we made it so
                        self.inj.call(pid, at, ij.NR_PRCTL, ij.PR_SET_DUMPABLE, prior,
                                      at_entry=False)
                    self.inj.finish(pid, at, abi.return_value(at))
                    return
                pt.setregs(pid, regs)
        elif t.unmap_later is not None:  # see on_fork
            area = t.unmap_later
            t.unmap_later = None
            at = ij.copy_regs(self.regs)
            pt.getregs(pid, at)
            self.inj.call(pid, at, ij.NR_MUNMAP, *area, at_entry=False)
            self.inj.finish(pid, at, abi.return_value(at))
            return
        pt.cont(pid)

    def _resume(self, pid: int, t: PidState) -> None:
        """Let the exec go on to the kernel, to its syscall-exit stop if it was made dumpable
        for this exec: that stop sets it back should the exec fail."""
        if t.undump is not None:
            pt.cont_syscall(pid)
        else:
            pt.cont(pid)

    def on_fork(self, pid: int, t: PidState) -> None:
        """``pid`` forked: resume it, to its syscall-exit stop if it has a mapping to remove
        (the only stop of a vfork parent we can count on where a call can be injected)."""
        if t.unmap_later is not None:
            pt.cont_syscall(pid)
        else:
            pt.cont(pid)

    def on_exec(self, pid: int, t: PidState) -> None:
        regs = self.regs
        pt.getregs(pid, regs)
        call = abi.exec_args(regs)
        if call is None:
            nr = abi.syscall_nr(regs)
            if nr == pt.NR_CLONE:  # with CLONE_UNTRACED (the filter's test): keep it traced
                abi.clear_clone_flag(regs, pt.CLONE_UNTRACED)
                pt.setregs(pid, regs)
            elif nr == pt.NR_PTRACE:  # trapped only to say why it fails (EPERM, one tracer)
                self._say(limits.ptrace_note(_comm(pid)))
            pt.cont(pid)
            return
        nr, dirfd, path_p, argv_p, envp_p, flags = call
        retry = t.retry
        if retry is not None:
            t.retry = None
        # The path and the start of argv in one read; argv is wasted on a native exec, but
        # almost every exec under the supervisor is a foreign one.
        path_head, argv_head = self.mem.read_pair(pid, path_p, argv_p)
        try:
            path = self.mem.read_cstring(pid, path_p, first=path_head) if path_p else b""
        except pt.Unreadable:
            if retry is None:  # not dumpable, or a bad address: make it dumpable and see
                self._prepare(pid, t, regs, dirfd, path_p, flags, None)
            else:
                self._resume(pid, t)  # dumpable, so the address is bad: the kernel answers EFAULT
            return
        except OSError:
            self._resume(pid, t)  # the kernel will answer EFAULT
            return
        trace = self.trace
        shown = path  # for the trace: the name the kernel gives the program (bprm->filename)
        if nr == pt.NR_EXECVEAT and dirfd != pt.AT_FDCWD and not path.startswith(b"/"):
            shown = b"/dev/fd/%d" % dirfd + (b"/" + path if path else b"")
        outcome = self.planner.plan(pid, dirfd, path, flags, retry.view if retry else None,
                                    t.root_known, t.no_twin)
        if self.planner.notes:
            for note in self.planner.notes:
                self._say(note)
            self.planner.notes.clear()
        if isinstance(outcome, Plan) or (isinstance(outcome, Leave) and
                                         outcome.decision is Decision.NATIVE):
            tracer = limits.tracer_note(path, isinstance(outcome, Plan))
            if tracer:
                self._say(tracer)
        if isinstance(outcome, NeedView):
            if retry is None:
                self._prepare(pid, t, regs, dirfd, path_p, flags, path)
            else:
                self._refuse(pid, t, regs, shown, errno.EACCES, "its root cannot be seen", True)
            return
        if isinstance(outcome, Leave):
            if t.scratch is not None:  # made for an earlier round of this exec: give it back
                self._unmap_and_rerun(pid, t, regs)
                return
            if outcome.answer and outcome.decision is Decision.REFUSED:
                self._refuse(pid, t, regs, shown, outcome.errno, outcome.reason, True)
                return
            if outcome.answer:  # the kernel's answer under binfmt_misc, given in its place
                if trace is not None:
                    self._trace_leave(pid, shown, argv_p, outcome)
                ij.fail_at_entry(pid, regs, outcome.errno, t.undump is not None)
                return
            if outcome.decision is Decision.REFUSED:
                self._warn_refused(shown, outcome)
            if trace is not None:
                self._trace_leave(pid, shown, argv_p, outcome)
            self._resume(pid, t)
            return
        # Taken for this round only: a descriptor not used now (the exec was left to the
        # kernel after all) is never used later, when its number may name another file.
        fd = t.emu_fd
        if fd is not None:
            t.emu_fd = None
        if outcome.twin is not None and outcome.twin.path and fd is None:
            why = twinexec.exec_twin(self, pid, t, outcome, argv_p, envp_p, shown)
            if why is None:
                return
            outcome = outcome._replace(twin=outcome.twin._replace(path=b"", reason=why))
        if outcome.elsewhere and fd is None:
            self._hand_over(pid, t, regs, shown, outcome.emulator)
            return
        # Run the emulator through a link named after the program (the process gets its name
        # from the exec itself), where it needs a name and the tracee is in our root.
        link = None
        if path and fd is None and self.links is not None:
            name = comm.kernel_name(shown)
            if name != comm.kernel_name(outcome.emulator):
                link = self.links.link(outcome.emulator, outcome.arch.name, name)
        try:
            argv_ptrs = self.mem.read_pointers(pid, argv_p, first=argv_head)
            self._rewrite(pid, t, outcome, path_p, argv_ptrs, envp_p, fd, link)
        except newargv.NeedMemory as need:
            if fd is not None:
                t.emu_fd = fd
            self._map_and_rerun(pid, t, regs, shown, need.args[0])
            return
        except OSError as e:
            self._leave_after_error(pid, t, shown, argv_p, e)
            return
        if trace is not None:
            argv = self._strings(pid, argv_ptrs)
            extra: dict[str, Any] = {"emulator": os.path.basename(outcome.emulator).decode(),
                                        "arch": outcome.arch.name}
            if outcome.scripts:
                extra["script"] = [s.interpreter.decode(errors="replace") for s in outcome.scripts]
            if outcome.twin is not None:  # listed in the twin map, and emulated after all
                extra["twin_skipped"] = outcome.twin.reason or "its twin could not be exec'd"
                extra["package"] = f"{outcome.twin.twin.package}={outcome.twin.twin.version}"
            trace.exec(pid, self.traced_parent(pid), shown, argv, Decision.EMULATE, **extra)
            t.emulating = shown
        if path and link is None:  # fexecve (an empty path): the kernel names it after the
            self._name(t, shown, outcome.emulator)  # file, qemu's too
        pt.cont_syscall(pid)

    def _name(self, t: PidState, path: bytes, emulator: bytes) -> None:
        name = comm.kernel_name(path)
        if name == comm.kernel_name(emulator):
            return
        offset = self.namer.offset(emulator)
        if offset is not None:
            t.name = (name, offset)

    def _prepare(
        self, pid: int, t: PidState, regs: pt.UserRegs, dirfd: int, path_p: int, flags: int,
        path: bytes | None,
    ) -> None:
        """Make an exec we cannot see into one we can, by calls injected into the tracee, and
        send it round again. ``path`` is None when its memory could not be read: the tracee is
        made dumpable (a process that changed its credentials is not, and without
        CAP_SYS_PTRACE only PTRACE_PEEKDATA can read it then, which needs that). Then, if /proc
        hides its root, cwd or descriptors, it is asked about them (blind.probe)."""
        at = ij.copy_regs(regs)
        entry = True
        try:
            if path is None:
                prior = self.inj.call(pid, at, ij.NR_PRCTL, ij.PR_GET_DUMPABLE, at_entry=True)
                entry = False
                self.inj.call(pid, at, ij.NR_PRCTL, ij.PR_SET_DUMPABLE, 1, at_entry=False)
                if prior >= 0 and prior != 1:
                    t.undump = prior
                try:
                    path = self.mem.read_cstring(pid, path_p) if path_p else b""
                except OSError:
                    path = None  # a bad address after all: the next round lets it through
            view = None
            need = None
            if path is not None:
                try:
                    os.close(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_CLOEXEC))
                except PermissionError:
                    need = self.planner.needs(pid, dirfd, path, t.root_known)
                except OSError:
                    pass
            if need is not None:
                root = self.planner.root_ident() if need.root else None
                view = blind.probe(self.inj, self.mem, pid, at, entry=entry, root=root,
                                   cwd=need.cwd, fd=need.fd)
                entry = False
                if need.root and not blind.may_change_root(pid):
                    t.root_known = True
            t.retry = Retry(view)
            self.inj.rerun(pid, at, at_entry=entry)
        except blind.Refusal as r:
            self._refuse(pid, t, at, path or b"?", r.errno, r.cause, entry)
        except pt.Unreadable as e:
            self._refuse(pid, t, at, path or b"?", errno.EPERM,
                         f"its memory cannot be read ({e.strerror})", entry)

    def _hand_over(
        self, pid: int, t: PidState, regs: pt.UserRegs, path: bytes, emulator: bytes
    ) -> None:
        """Give a tracee that cannot reach its emulator by path a descriptor of it
        (shim/handoff.py), and send the exec round again to run it through that."""
        at = ij.copy_regs(regs)
        try:
            t.emu_fd = self.handoff.fetch(pid, at, emulator, entry=True)
        except blind.Refusal as r:
            self._refuse(pid, t, at, path, r.errno, r.cause, False)
            return
        self.inj.rerun(pid, at, at_entry=False)

    def _hand_over_late(
        self, pid: int, t: PidState, regs: pt.UserRegs, saved: tuple[int, ...],
        prior: int | None,
    ) -> bool:
        """The rewritten exec found no emulator at its path (a mount namespace of the tracee's
        own hides it): hand it a descriptor and run the exec again through that. False: the
        failure stands."""
        try:
            emulator = self.mem.read_cstring(pid, abi.execve_path(regs))
        except OSError:
            return False
        if self.links is not None:
            emulator = self.links.targets.get(emulator, emulator)
        if emulator not in self.emulators.values():
            return False
        at = ij.copy_regs(regs)
        abi.restore_call(at, saved)
        try:
            t.emu_fd = self.handoff.fetch(pid, at, emulator, entry=False)
        except blind.Refusal:
            return False
        if prior is not None:
            t.undump = prior
        t.emulating = None
        self.inj.rerun(pid, at, at_entry=False)
        return True

    def _map_and_rerun(
        self, pid: int, t: PidState, regs: pt.UserRegs, path: bytes, size: int
    ) -> None:
        """Make a mapping in the tracee for a new argv that will not fit below its stack
        pointer, and send the exec round again to use it (unmapped if the exec fails)."""
        at = ij.copy_regs(regs)
        length = (size + 4095) & ~4095
        addr = self.inj.call(pid, at, ij.NR_MMAP, 0, length, ij.PROT_READ | ij.PROT_WRITE,
                             ij.MAP_PRIVATE | ij.MAP_ANONYMOUS, (-1) & 0xFFFFFFFFFFFFFFFF, 0,
                             at_entry=True)
        if addr < 0:
            self._refuse(pid, t, at, path, -addr, "no memory for its argument list", False)
            return
        t.scratch = (addr, length)
        # In a vfork child the mapping is in its parent's memory too, and outlives its exec
        # there: PidTable.exec_done hands it to the parent to unmap.
        t.sharer = pt.parent_sharing_memory(pid)
        self.inj.rerun(pid, at, at_entry=False)

    def _unmap_and_rerun(self, pid: int, t: PidState, regs: pt.UserRegs) -> None:
        at = ij.copy_regs(regs)
        assert t.scratch is not None
        addr, length = t.scratch
        t.scratch = None
        self.inj.call(pid, at, ij.NR_MUNMAP, addr, length, at_entry=True)
        self.inj.rerun(pid, at, at_entry=False)

    def _refuse(
        self, pid: int, t: PidState, regs: pt.UserRegs, path: bytes, err: int, cause: str,
        entry: bool,
    ) -> None:
        """Fail an exec we cannot carry out, with ``err`` and a line saying why: never let a
        foreign exec through to the kernel unchanged, where it would fail without a word."""
        sys.stderr.write(f"xshim: cannot emulate the exec of {path.decode(errors='replace')} by "
                         f"process {pid}: {cause}; it fails with {errname(err)}\n")
        sys.stderr.flush()
        if self.trace is not None:
            self.trace.exec(pid, self.traced_parent(pid), path, [], Decision.REFUSED,
                            reason=cause, err=err)
        if entry:
            ij.fail_at_entry(pid, regs, err, t.undump is not None)
            return
        prior = t.undump
        t.undump = None
        if prior is not None:
            self.inj.call(pid, regs, ij.NR_PRCTL, ij.PR_SET_DUMPABLE, prior, at_entry=False)
        self.inj.finish(pid, regs, -err)

    def _leave_after_error(
        self, pid: int, t: PidState, path: bytes, argv_p: int, e: OSError
    ) -> None:
        out = Leave(Decision.KERNEL, errno.ENOEXEC, f"could not rewrite the exec: {e.strerror}")
        if self.trace is not None:
            self._trace_leave(pid, path, argv_p, out)
        self._resume(pid, t)

    def _rewrite(
        self, pid: int, t: PidState, plan: Plan, path_p: int, argv_ptrs: list[int],
        envp_p: int, fd: int | None = None, link: bytes | None = None,
    ) -> None:
        """Point the exec at the emulator with its new argv (newargv.write), remembering the
        caller's registers for a failed exec."""
        regs = self.regs
        saved = abi.save_call(regs)
        newargv.write(self.mem, pid, regs, plan, path_p, argv_ptrs, envp_p, fd, t.scratch, link)
        t.saved = saved
        pt.setregs(pid, regs)
        if fd is not None:
            t.emu_fd = fd  # closed by the exec, or by us if it fails

    def _strings(self, pid: int, ptrs: list[int]) -> list[bytes]:
        out = []
        for p in ptrs:
            try:
                s = self.mem.read_cstring(pid, p, limit=_TRACE_ARG_MAX, partial=True)
            except OSError:
                s = b"?"  # unreadable: the kernel will answer EFAULT
            if len(s) >= _TRACE_ARG_MAX:
                s = s[:_TRACE_ARG_MAX] + b"...[truncated at %d bytes]" % _TRACE_ARG_MAX
            out.append(s)
        return out

    def _trace_leave(self, pid: int, path: bytes, argv_p: int, out: Leave) -> None:
        assert self.trace is not None
        try:
            argv = self._strings(pid, self.mem.read_pointers(pid, argv_p))
        except OSError:
            argv = []
        extra: dict[str, object] = {}
        if out.arch is not None:
            extra["arch"] = out.arch.name
        if out.decision is Decision.REFUSED:
            extra["available"] = sorted(self.emulators)
        # A refusal the kernel answers (no emulator: ENOEXEC) names no errno, as the format says.
        err = out.errno if out.decision is Decision.KERNEL else 0
        self.trace.exec(pid, self.traced_parent(pid), path, argv, out.decision, out.reason, err,
                        **extra)

    def _say(self, note: str) -> None:
        """A limit met, said once per run."""
        if note in self.warned:
            return
        self.warned.add(note)
        sys.stderr.write(f"xshim: {note}\n")
        sys.stderr.flush()

    def _warn_refused(self, path: bytes, out: Leave) -> None:
        need = out.arch.name if out.arch else "unknown"
        if need in self.warned:
            return
        self.warned.add(need)
        have = ", ".join(sorted(self.emulators)) or "none"
        sys.stderr.write(
            f"xshim: {path.decode(errors='replace')} is a {need} program but there is no "
            f"emulator for {need} (have: {have}); its exec fails with {errname(out.errno)}\n"
        )
        sys.stderr.flush()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode(errors="replace") or f"process {pid}"
    except OSError:
        return f"process {pid}"
