"""The exec supervisor: runs a command so that every foreign exec, at any depth, re-enters qemu.

The child installs a seccomp filter that traps only execve/execveat and is traced with ptrace,
following every fork, vfork and clone. At each trapped exec the target is examined as the tracee
sees it (its root, cwd, dirfd); a foreign ELF, or a script whose interpreter is one, gets the
syscall rewritten to ``execve(<emulator>, [emulator, "-0", argv0, path, args...], envp)``.
Everything else is left to the kernel, whose answer the tracee gets unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import struct
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from . import ptrace as pt
from . import sigstate
from .arch import Arch, host_arch
from .decide import (
    HEADER_SIZE,
    MAX_SCRIPT_DEPTH,
    Foreign,
    Kind,
    Native,
    Script,
    UnknownElf,
    classify,
    emulated_argv,
)
from .errors import ShimError
from .tracelog import TraceSink

if TYPE_CHECKING:
    import resource

OPTIONS = (
    pt.PTRACE_O_TRACESECCOMP
    | pt.PTRACE_O_TRACEFORK
    | pt.PTRACE_O_TRACEVFORK
    | pt.PTRACE_O_TRACECLONE
    | pt.PTRACE_O_TRACEEXEC
    | pt.PTRACE_O_TRACESYSGOOD
    | pt.PTRACE_O_EXITKILL
)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
_GROUP_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_SYSCALL_STOP = signal.SIGTRAP | 0x80
_RED_ZONE = 128


class Config(NamedTuple):
    """What the supervisor needs to know, all of it as seen from inside the tracee's root."""

    emulators: dict[str, bytes]  # Arch.name -> emulator path inside the tracee's root
    # Execs of these files (st_dev, st_ino) are the shim itself standing in for /bin/sh: they run
    # ``guest_shell`` (the image's own shell) through qemu instead of starting a nested supervisor.
    self_ids: frozenset[tuple[int, int]] = frozenset()
    guest_shell: bytes | None = None
    trace: TraceSink | None = None
    chroot: str | None = None  # the child chroots here before its first exec (``xshim run``)
    cwd: str | None = None  # and changes to this directory (inside the new root)
    search_path: bool = False  # look argv[0] up in PATH, like execvp


class SupervisorError(ShimError):
    """The supervisor could not start the command (ptrace or seccomp refused, ...)."""


class _Plan(NamedTuple):
    emulator: bytes
    arch: Arch
    program: bytes  # what qemu loads
    head: list[bytes]  # new argv up to the caller's argv[1:]
    path_override: bytes | None  # the script/program path when the caller's cannot be reused
    scripts: list[Script]


class _Leave(NamedTuple):
    decision: str  # "native", "kernel" or "refused"
    reason: str
    arch: Arch | None = None


def _errname(e: int) -> str:
    return errno.errorcode.get(e, str(e))


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.host = host_arch()
        self.mem = pt.TraceeMemory()
        self.regs = pt.UserRegs()
        self.saved: dict[int, tuple[int, int, int]] = {}  # pid -> rdi, rsi, rdx before a rewrite
        # Tracees whose first stop has been seen. A new tracee's first stop can reach us before
        # or after its parent's fork event, so that stop alone marks it.
        self.started: set[int] = set()
        self.parent: dict[int, int] = {}  # child -> parent, kept only when tracing
        self.exec_time: dict[int, float] = {}
        self.warned: set[str] = set()
        # classify() memoised on the header bytes: the same few programs are exec'd over and over.
        self.kinds: dict[bytes, Kind] = {}
        self.main = -1
        self.guest_shell_arch = (
            guest_arch(config.guest_shell, config.chroot) if config.guest_shell else None
        )

    # -- start -------------------------------------------------------------------------------

    def run(self, argv: list[bytes], env: dict[bytes, bytes], program: bytes | None = None) -> int:
        """Run argv (from ``program``, default argv[0]); return its raw wait status."""
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            self._child(program or argv[0], argv, env, go_r, go_w, err_r, err_w)
        os.close(go_r)
        os.close(err_w)
        self.main = pid
        self.started.add(pid)  # seized, not auto-attached: it has no first stop of its own
        try:
            pt.seize(pid, OPTIONS)
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise SupervisorError(
                f"ptrace(PTRACE_SEIZE) refused: {os.strerror(e.errno or 0)} — the container's "
                "seccomp profile or a security module forbids ptrace (gVisor and some hardened "
                "runtimes do)"
            ) from None
        for sig in FORWARDED_SIGNALS:
            if sig not in sigstate.original().ignored:  # what the caller ignored stays ignored
                signal.signal(sig, self._forward)
        if self.cfg.trace is not None:
            self.cfg.trace.start(pid, argv)
        os.write(go_w, b"g")
        os.close(go_w)
        status = self._loop()
        _warn_left_running(self.started - {pid})
        detail = os.read(err_r, 4096).decode(errors="replace")
        os.close(err_r)
        if detail:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 125:
                raise SupervisorError(detail)
            sys.stderr.write(f"xshim: {detail}\n")
        return status

    def _child(
        self, program: bytes, argv: list[bytes], env: dict[bytes, bytes], go_r: int, go_w: int,
        err_r: int, err_w: int,
    ) -> None:  # pragma: no cover - runs in the child
        step = "start"
        try:
            os.close(go_w)
            os.close(err_r)
            # The guest starts with the caller's dispositions and mask, not ours.
            sigstate.restore(sigstate.original())
            os.read(go_r, 1)  # the parent has seized us: trapped execs now have a tracer
            os.close(go_r)
            if self.cfg.chroot:
                step = f"chroot({self.cfg.chroot})"
                os.chroot(self.cfg.chroot)
                os.chdir("/")
            if self.cfg.cwd:
                step = f"chdir({self.cfg.cwd})"
                os.chdir(self.cfg.cwd)
            step = "prctl(PR_SET_NO_NEW_PRIVS)"
            pt.set_no_new_privs()
            step = "seccomp filter (prctl(PR_SET_SECCOMP))"
            pt.install_exec_filter()
            step = "exec"
            if self.cfg.search_path:
                os.execvpe(program, argv, env)
            os.execve(program, argv, env)
        except OSError as e:
            if step == "exec":
                name = program.decode(errors="replace")
                msg = f"{name}: {os.strerror(e.errno or 0)}"
                code = 127 if e.errno == errno.ENOENT else 126
            else:
                msg = f"{step} refused: {os.strerror(e.errno or 0)}"
                if "seccomp" in step or "PRIVS" in step:
                    msg += " — the runtime forbids seccomp filters (gVisor, a restrictive profile)"
                code = 125
            os.write(err_w, msg.encode())
            os._exit(code)
        os._exit(125)

    def _forward(self, sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.main, sig)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> int:
        # wait4 only when tracing: the same syscall, but the rusage object it builds on every
        # stop is only worth making when an exit record will carry its CPU time.
        with_usage = self.cfg.trace is not None
        usage: resource.struct_rusage | None = None
        while True:
            try:
                if with_usage:
                    pid, status, usage = os.wait4(-1, pt.WALL)
                else:
                    pid, status = os.waitpid(-1, pt.WALL)
            except ChildProcessError:
                return 0
            if not os.WIFSTOPPED(status):
                self._exited(pid, status, usage)
                if pid == self.main:
                    return status
                continue
            sig = os.WSTOPSIG(status)
            event = status >> 16
            try:
                if event == pt.PTRACE_EVENT_SECCOMP:
                    self._on_exec(pid)
                elif event == 0:
                    if sig == _SYSCALL_STOP:
                        self._on_syscall_exit(pid)
                    else:
                        pt.cont(pid, sig)  # signal-delivery stop: deliver it
                elif event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE):
                    if self.cfg.trace is not None:
                        self.parent[pt.geteventmsg(pid)] = pid
                    pt.cont(pid)
                elif event == pt.PTRACE_EVENT_EXEC:
                    # Success: nothing to restore. Resuming with CONT (not SYSCALL) also skips
                    # this exec's syscall-exit stop.
                    self.saved.pop(pid, None)
                    former = pt.geteventmsg(pid)
                    if former != pid:  # a non-leader thread exec'd and took the leader's pid
                        self.saved.pop(former, None)
                        self.started.discard(former)
                        if former in self.exec_time:
                            self.exec_time[pid] = self.exec_time.pop(former)
                    pt.cont(pid)
                elif event == pt.PTRACE_EVENT_STOP:
                    self._on_stop(pid, sig)
                else:
                    pt.cont(pid)
            except ProcessLookupError:
                pass  # killed while stopped (SIGKILL, or its thread group exec'd)

    def _on_stop(self, pid: int, sig: int) -> None:
        if pid not in self.started:
            self.started.add(pid)  # its first stop, from being attached: let it run
            if self.cfg.trace is not None and pid not in self.parent:
                # Its parent's fork event may come later than its own exec: ask the kernel now.
                self.parent[pid] = _real_parent(pid)
            pt.cont(pid)
        elif sig in _GROUP_STOP_SIGNALS:
            pt.listen(pid)  # a real group-stop: stay stopped until SIGCONT, as without us
        else:
            pt.cont(pid)

    def _exited(self, pid: int, status: int, usage: resource.struct_rusage | None) -> None:
        self.started.discard(pid)
        self.saved.pop(pid, None)
        self.parent.pop(pid, None)
        started = self.exec_time.pop(pid, None)
        if self.cfg.trace is not None and started is not None:
            self.cfg.trace.exit(pid, status, time.monotonic() - started, usage)

    def _traced_parent(self, pid: int) -> int:
        """The nearest ancestor that has exec'd (0: none): a subshell that never execs has no
        record of its own, so its children hang from its parent in the trace."""
        p = self.parent.get(pid, 0)
        for _ in range(64):
            if p == 0 or p in self.exec_time:
                break
            p = self.parent.get(p, 0)
        return p

    def _on_syscall_exit(self, pid: int) -> None:
        saved = self.saved.pop(pid, None)
        if saved is not None:
            regs = self.regs
            pt.getregs(pid, regs)
            if regs.rax >= 1 << 63:  # the rewritten exec failed: give back the caller's registers
                regs.rdi, regs.rsi, regs.rdx = saved
                pt.setregs(pid, regs)
        pt.cont(pid)

    # -- one exec ----------------------------------------------------------------------------

    def _on_exec(self, pid: int) -> None:
        regs = self.regs
        pt.getregs(pid, regs)
        nr = regs.orig_rax
        if nr == pt.NR_EXECVE:
            dirfd, path_p, argv_p, envp_p, flags = pt.AT_FDCWD, regs.rdi, regs.rsi, regs.rdx, 0
        elif nr == pt.NR_EXECVEAT:
            dirfd = struct.unpack("i", struct.pack("I", regs.rdi & 0xFFFFFFFF))[0]
            path_p, argv_p, envp_p, flags = regs.rsi, regs.rdx, regs.r10, regs.r8
        else:
            pt.cont(pid)
            return
        if self.cfg.trace is not None:
            self.exec_time[pid] = time.monotonic()
        # The path and the start of argv in one read; argv is wasted on a native exec, but
        # almost every exec under the supervisor is a foreign one.
        path_head, argv_head = self.mem.read_pair(pid, path_p, argv_p)
        try:
            path = self.mem.read_cstring(pid, path_p, first=path_head) if path_p else b""
        except OSError:
            pt.cont(pid)  # the kernel will answer EFAULT
            return
        outcome = self._plan(pid, dirfd, path, flags)
        trace = self.cfg.trace
        if isinstance(outcome, _Leave):
            if outcome.decision == "refused":
                self._warn_refused(path, outcome)
            if trace is not None:
                self._trace_leave(pid, path, argv_p, outcome)
            pt.cont(pid)
            return
        try:
            argv_ptrs = self.mem.read_pointers(pid, argv_p, first=argv_head)
            self._rewrite(pid, outcome, path_p, argv_ptrs, envp_p)
        except OSError as e:
            self._leave_after_error(pid, path, argv_p, e)
            return
        if trace is not None:
            argv = self._strings(pid, argv_ptrs)
            extra: dict[str, object] = {"emulator": os.path.basename(outcome.emulator).decode(),
                                        "arch": outcome.arch.name}
            if outcome.scripts:
                extra["script"] = [s.interpreter.decode(errors="replace") for s in outcome.scripts]
            trace.exec(pid, self._traced_parent(pid), path, argv, "emulate", **extra)
        pt.cont_syscall(pid)

    def _leave_after_error(self, pid: int, path: bytes, argv_p: int, e: OSError) -> None:
        out = _Leave("kernel", f"could not rewrite the exec: {e.strerror}")
        if self.cfg.trace is not None:
            self._trace_leave(pid, path, argv_p, out)
        pt.cont(pid)

    def _rewrite(
        self, pid: int, plan: _Plan, path_p: int, argv_ptrs: list[int], envp_p: int
    ) -> None:
        """Write the new argv below the tracee's stack pointer and point execve at it.

        The caller's own strings (argv[1:], and the path when it can be reused) stay where they
        are; only new strings and the new pointer array are written, so a huge argv costs one
        small write.
        """
        regs = self.regs
        strings = list(plan.head)
        argv0 = argv_ptrs[0] if argv_ptrs else 0
        # Which head entries can point at memory the caller already has.
        reuse: dict[int, int] = {}
        if not plan.scripts:
            if argv0:
                reuse[2] = argv0
            if plan.path_override is None:
                reuse[3] = path_p
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
        tail = argv_ptrs[1:]
        nptrs = len(strings) + len(tail) + 1
        size = nptrs * 8 + len(blob)
        base = (regs.rsp - _RED_ZONE - size) & ~15
        str_base = base + nptrs * 8
        ptrs = [reuse[i] if off < 0 else str_base + off for i, off in enumerate(offsets)]
        ptrs.extend(tail)
        ptrs.append(0)
        self.mem.write(pid, base, struct.pack(f"<{nptrs}Q", *ptrs) + bytes(blob))
        self.saved[pid] = (regs.rdi, regs.rsi, regs.rdx)
        regs.orig_rax = pt.NR_EXECVE
        regs.rdi = ptrs[0]
        regs.rsi = base
        regs.rdx = envp_p
        pt.setregs(pid, regs)

    # -- deciding ----------------------------------------------------------------------------

    def _plan(self, pid: int, dirfd: int, path: bytes, flags: int) -> _Plan | _Leave:
        try:
            root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return _Leave("kernel", f"cannot see the tracee's root: {e.strerror}")
        try:
            return self._plan_in(pid, root_fd, dirfd, path, flags)
        finally:
            os.close(root_fd)

    def _plan_in(
        self, pid: int, root_fd: int, dirfd: int, path: bytes, flags: int
    ) -> _Plan | _Leave:
        path_override: bytes | None = None
        if dirfd != pt.AT_FDCWD and not path.startswith(b"/"):
            located = self._locate_at(pid, dirfd, path, flags)
            if isinstance(located, _Leave):
                return located
            lookup, path_override = located
        else:
            lookup = self._absolute(pid, path)
            fd_link = lookup.split(b"/fd/", 1) if lookup.startswith(b"/proc/") else []
            if len(fd_link) == 2 and fd_link[1].isdigit():
                # execve("/proc/self/fd/N") (glibc's fexecve fallback): qemu opens the path only
                # after the exec, when a close-on-exec N is gone, so hand it a real name.
                owner = fd_link[0].removeprefix(b"/proc/")
                if owner.isdigit() and int(owner) == pid:
                    located = self._locate_at(pid, int(fd_link[1]), b"", pt.AT_EMPTY_PATH)
                    if isinstance(located, _Leave):
                        return located
                    lookup, path_override = located
        opened = self._open_exec(pid, root_fd, lookup, flags & pt.AT_SYMLINK_NOFOLLOW != 0)
        if isinstance(opened, _Leave):
            return opened
        header, ident = opened
        if ident in self.cfg.self_ids and self.cfg.guest_shell is not None:
            return self._plan_shell([], None)
        kind = self._classify(header)
        scripts: list[Script] = []
        program = path_override if path_override is not None else path
        while isinstance(kind, Script):
            scripts.append(kind)
            if len(scripts) >= MAX_SCRIPT_DEPTH:
                return _Leave("kernel", "too many levels of #! interpreters")
            interp = kind.interpreter
            opened = self._open_exec(pid, root_fd, self._absolute(pid, interp), False)
            if isinstance(opened, _Leave):
                return _Leave(opened.decision, f"interpreter {interp.decode(errors='replace')}: "
                              f"{opened.reason}")
            header, ident = opened
            if ident in self.cfg.self_ids and self.cfg.guest_shell is not None:
                return self._plan_shell(scripts, path_override or path)
            kind = self._classify(header)
            program = interp
        if isinstance(kind, Native):
            return _Leave("native", kind.arch.name, kind.arch)
        if isinstance(kind, UnknownElf):
            return _Leave("kernel", f"ELF machine {kind.machine} is not in the architecture table")
        if not isinstance(kind, Foreign):
            return _Leave("kernel", "not an executable format")
        emulator = self.cfg.emulators.get(kind.arch.name)
        if emulator is None:
            return _Leave("refused", f"no emulator for {kind.arch.name}", kind.arch)
        script_path = (path_override or path) if scripts else None
        head = emulated_argv(emulator, b"", program, scripts, script_path)
        return _Plan(emulator, kind.arch, program, head, path_override, scripts)

    def _classify(self, header: bytes) -> Kind:
        kind = self.kinds.get(header)
        if kind is None:
            if len(self.kinds) >= 1024:
                self.kinds.clear()
            kind = self.kinds[header] = classify(header, self.host)
        return kind

    def _plan_shell(self, scripts: list[Script], script_path: bytes | None) -> _Plan | _Leave:
        """The shim was exec'd (as /bin/sh, or as a #! interpreter): run the image's shell.

        ``script_path`` is the script being run when the shim is its interpreter; the caller's
        own path pointer is reused for it unless the exec went through a descriptor.
        """
        shell = self.cfg.guest_shell
        assert shell is not None
        arch = self.guest_shell_arch
        emulator = self.cfg.emulators.get(arch.name) if arch else None
        if arch is None or emulator is None:
            return _Leave("refused", "no emulator for the image's shell", arch)
        if scripts:
            head = emulated_argv(emulator, b"", shell, scripts, script_path)
            return _Plan(emulator, arch, shell, head, None, scripts)
        # Plain exec of the shim: qemu -0 <caller's argv0> <guest shell> args...
        return _Plan(emulator, arch, shell, [emulator, b"-0", b"", shell], shell, [])

    def _absolute(self, pid: int, path: bytes) -> bytes:
        """``path`` made absolute inside the tracee's root (relative paths start at its cwd)."""
        if path.startswith(b"/"):
            if path.startswith((b"/proc/self/", b"/proc/thread-self/")):
                return b"/proc/%d/" % pid + path.split(b"/", 3)[3]
            return path
        return self._inside_root(pid, os.readlink(f"/proc/{pid}/cwd").encode()) + b"/" + path

    def _inside_root(self, pid: int, seen: bytes) -> bytes:
        """A path from a /proc magic link, which the kernel prints relative to *our* root, made
        relative to the tracee's root."""
        root = os.readlink(f"/proc/{pid}/root").encode()
        if root != b"/" and (seen == root or seen.startswith(root + b"/")):
            return seen[len(root):] or b"/"
        return seen

    def _locate_at(
        self, pid: int, dirfd: int, path: bytes, flags: int
    ) -> tuple[bytes, bytes] | _Leave:
        """execveat(dirfd, path): the file's path in the tracee's root, and a path qemu can open.

        With AT_EMPTY_PATH the file is the descriptor itself (fexecve). qemu gets the file's own
        path when it still names the same file, else /proc/self/fd/N when that descriptor
        survives the exec; a close-on-exec descriptor to an unnamed file cannot be handed over.
        """
        try:
            target = os.readlink(f"/proc/{pid}/fd/{dirfd}").encode()
        except OSError:
            return _Leave("kernel", f"bad descriptor {dirfd}")
        if path:
            base = self._inside_root(pid, target)
            full = base.rstrip(b"/") + b"/" + path
            return full, full
        if flags & pt.AT_EMPTY_PATH == 0:
            return _Leave("kernel", "empty path without AT_EMPTY_PATH")
        named = self._inside_root(pid, target)
        if named.startswith(b"/") and not named.endswith(b" (deleted)"):
            try:
                a = os.stat(f"/proc/{pid}/fd/{dirfd}")
                b = os.stat(b"/proc/%d/root" % pid + named)
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                    return named, named
            except OSError:
                pass
        try:
            with open(f"/proc/{pid}/fdinfo/{dirfd}", "rb") as f:
                info = f.read()
            fl = int(info.split(b"flags:", 1)[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            return _Leave("kernel", f"cannot inspect descriptor {dirfd}")
        if fl & os.O_CLOEXEC:
            return _Leave("kernel", "fexecve of an unnamed close-on-exec descriptor")
        via = b"/proc/self/fd/%d" % dirfd
        return b"/proc/%d/fd/%d" % (pid, dirfd), via

    def _open_exec(
        self, pid: int, root_fd: int, lookup: bytes, nofollow: bool
    ) -> tuple[bytes, tuple[int, int]] | _Leave:
        """Open a file the tracee wants to execute; read its header if the kernel would run it.

        Anything the kernel would refuse (missing, not a regular file, no execute permission for
        the tracee, a noexec mount) is left to the kernel so the tracee sees the true errno.
        """
        try:
            if lookup.startswith(b"/proc/%d/" % pid):
                fd = os.open(lookup, os.O_RDONLY | os.O_CLOEXEC)
            else:
                fl = os.O_RDONLY | (os.O_NOFOLLOW if nofollow else 0)
                fd = pt.open_in_root(root_fd, lookup, fl)
        except OSError as e:
            return _Leave("kernel", _errname(e.errno or 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _Leave("kernel", "EACCES: not a regular file")
            if not self._may_execute(pid, st):
                return _Leave("kernel", "EACCES: no execute permission")
            if os.fstatvfs(fd).f_flag & os.ST_NOEXEC:
                return _Leave("kernel", "EACCES: noexec mount")
            return os.pread(fd, HEADER_SIZE, 0), (st.st_dev, st.st_ino)
        except OSError as e:
            return _Leave("kernel", _errname(e.errno or 0))
        finally:
            os.close(fd)

    def _may_execute(self, pid: int, st: os.stat_result) -> bool:
        mode = st.st_mode
        if not mode & 0o111:
            return False
        if mode & 0o001 == 0o001 and mode & 0o111 == 0o111:
            return True
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read()
        except OSError:
            return True  # let the kernel decide
        fields = {}
        for line in status.splitlines():
            key, _, value = line.partition(b":")
            if key in (b"Uid", b"Gid", b"Groups"):
                fields[key] = value.split()
        uid = int(fields[b"Uid"][3]) if len(fields.get(b"Uid", [])) > 3 else 0
        if uid == 0:
            return True  # root may execute anything with at least one x bit
        if st.st_uid == uid:
            return bool(mode & 0o100)
        gids = {int(g) for g in fields.get(b"Groups", [])}
        if len(fields.get(b"Gid", [])) > 3:
            gids.add(int(fields[b"Gid"][3]))
        if st.st_gid in gids:
            return bool(mode & 0o010)
        return bool(mode & 0o001)

    # -- reporting ---------------------------------------------------------------------------

    def _strings(self, pid: int, ptrs: list[int]) -> list[bytes]:
        out = []
        for p in ptrs:
            try:
                out.append(self.mem.read_cstring(pid, p))
            except OSError:
                out.append(b"?")
        return out

    def _trace_leave(self, pid: int, path: bytes, argv_p: int, out: _Leave) -> None:
        assert self.cfg.trace is not None
        try:
            argv = self._strings(pid, self.mem.read_pointers(pid, argv_p))
        except OSError:
            argv = []
        extra: dict[str, object] = {"reason": out.reason}
        if out.decision == "kernel":
            extra["errno"] = out.reason.split(":")[0] if out.reason[:1] == "E" else "ENOEXEC"
        if out.arch is not None:
            extra["arch"] = out.arch.name
        if out.decision == "refused":
            extra["available"] = sorted(self.cfg.emulators)
        self.cfg.trace.exec(pid, self._traced_parent(pid), path, argv, out.decision, **extra)

    def _warn_refused(self, path: bytes, out: _Leave) -> None:
        need = out.arch.name if out.arch else "unknown"
        if need in self.warned:
            return
        self.warned.add(need)
        have = ", ".join(sorted(self.cfg.emulators)) or "none"
        sys.stderr.write(
            f"xshim: {path.decode(errors='replace')} is a {need} program but there is no "
            f"emulator for {need} (have: {have}); its exec fails with ENOEXEC\n"
        )
        sys.stderr.flush()


def supervise(
    argv: list[bytes], env: dict[bytes, bytes], config: Config, program: bytes | None = None
) -> int:
    """Run ``argv`` under the supervisor and return its raw wait status."""
    return Supervisor(config).run(argv, env, program)


def guest_arch(path: bytes, root: str | None = None) -> Arch | None:
    """The architecture of an ELF file (following symlinks inside ``root``)."""
    try:
        fd = os.open(root or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            f = pt.open_in_root(fd, path, os.O_RDONLY)
        finally:
            os.close(fd)
        try:
            header = os.pread(f, HEADER_SIZE, 0)
        finally:
            os.close(f)
    except OSError:
        return None
    kind = classify(header, host_arch())
    if isinstance(kind, Foreign | Native):
        return kind.arch
    return None


def _real_parent(pid: int) -> int:
    """The parent pid /proc reports (field 4 of stat, after the parenthesised command), 0 if
    unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def original_environ() -> dict[bytes, bytes] | None:
    """The environment this process was started with, before anything changed it.

    Python's locale coercion (PEP 538) adds LC_CTYPE and a frozen program's bootloader adds
    variables of its own; /proc/self/environ still holds exactly what our caller passed, which is
    what guests must get. None where /proc cannot tell.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env: dict[bytes, bytes] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key not in env:
            env[key] = value
    return env


def _warn_left_running(tracees: set[int]) -> None:
    """Say so when the command leaves processes running: they are traced, and a tracee dies
    with its tracer (PTRACE_O_EXITKILL), so they end with the command. Not said as a container's
    first process, whose end ends every other process there anyway."""
    if os.getpid() == 1:
        return
    left = []
    for tid in sorted(tracees):
        try:
            with open(f"/proc/{tid}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        except OSError:
            continue
        if fields.get(b"Tgid", b"").strip() == str(tid).encode() and not fields.get(
                b"State", b"").strip().startswith(b"Z"):
            left.append(tid)
    if left:
        sys.stderr.write(f"xshim: the command has ended; {len(left)} process(es) it left running "
                         f"(pid {', '.join(map(str, left))}) end with it, as traced processes "
                         "cannot outlive the supervisor\n")
        sys.stderr.flush()


def exit_code(status: int) -> int:
    """The shell convention: the exit status, or 128+N for death by signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1
