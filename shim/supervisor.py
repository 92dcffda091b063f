"""The exec supervisor: runs a command so that every foreign exec, at any depth, re-enters qemu.

The child installs a seccomp filter that traps only execve/execveat and is traced with ptrace,
following every fork, vfork and clone. At each trapped exec the target is examined as the tracee
sees it (its root, cwd, dirfd); a foreign ELF, or a script whose interpreter is one, gets the
syscall rewritten to ``execve(<emulator>, [emulator, "-0", argv0, path, args...], envp)``.
Everything else is left to the kernel, whose answer the tracee gets unchanged.

This module starts the command and runs the event loop, which hands each stop the record of
the stopped thread (shim/pidstate.py). The layers below it: shim/execs.py handles one trapped
exec, shim/plan.py decides it (shim/decide.py is its pure core), shim/blind.py and
shim/inject.py get at tracees /proc hides, shim/ptrace.py binds the syscalls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from . import comm, sigstate
from . import inject as ij
from . import ptrace as pt
from .arch import Arch, host_arch
from .decide import HEADER_SIZE, Foreign, Native, classify
from .errors import ShimError
from .execs import Execs
from .pidstate import PidTable
from .plan import Planner
from .tracee import Opener
from .tracelog import TraceSink
from .twins import TwinTable

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
    twins: TwinTable | None = None  # native twins (shim/twins.py), when accelerated
    # A directory of the command's root, ours to fill, for links that name emulated processes
    # (shim/comm.py NameLinks); None: they are renamed by an injected prctl instead.
    names_dir: str | None = None
    # qemu options by Arch.name, put before -0 in every emulated exec (shim/twins.py cpu_options)
    emulator_options: dict[str, tuple[bytes, ...]] | None = None


class SupervisorError(ShimError):
    """The supervisor could not start the command (ptrace or seccomp refused, ...)."""


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.host = host_arch()
        self.pids = PidTable()  # all that is kept about each tracee (shim/pidstate.py)
        self.main = -1
        planner = Planner(
            config.emulators, config.self_ids, config.guest_shell,
            guest_arch(config.guest_shell, config.chroot) if config.guest_shell else None,
            Opener(config.chroot or "/"), config.twins, config.emulator_options,
        )
        links = None
        if config.names_dir is not None:
            host = os.path.join(config.chroot or "/", config.names_dir.lstrip("/"))
            links = comm.NameLinks(host, config.names_dir.encode())
        self.execs = Execs(config.emulators, planner, config.trace, self._traced_parent, links)

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
        self.pids[pid].started = True  # seized, not auto-attached: no first stop of its own
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
        _warn_left_running({p for p, t in self.pids.items() if t.started and p != pid})
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
        tracing = self.cfg.trace is not None
        usage: resource.struct_rusage | None = None
        execs = self.execs
        pids = self.pids
        deaths = execs.inj.deaths  # tracees that died while running an injected call
        while True:
            try:
                if deaths:
                    (pid, status), usage = deaths.pop(0), None
                elif tracing:
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
                    t = pids[pid]
                    if tracing:
                        t.exec_time = time.monotonic()
                    execs.on_exec(pid, t)
                elif event == 0:
                    if sig == _SYSCALL_STOP:
                        execs.on_syscall_exit(pid, pids[pid])
                    else:
                        pt.cont(pid, sig)  # signal-delivery stop: deliver it
                elif event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE):
                    if tracing:
                        pids[pt.geteventmsg(pid)].parent = pid
                    execs.on_fork(pid, pids[pid])
                elif event == pt.PTRACE_EVENT_EXEC:
                    t = pids[pid]
                    name = pids.exec_done(t)  # success: nothing to restore
                    former = pt.geteventmsg(pid)
                    if former != pid:  # a non-leader thread exec'd and took the leader's pid
                        name = pids.thread_exec(t, former)
                    execs.exec_event(pid, name)
                elif event == pt.PTRACE_EVENT_STOP:
                    self._on_stop(pid, sig)
                else:
                    pt.cont(pid)
            except (ProcessLookupError, ij.TraceeGone):
                pass  # killed while stopped (SIGKILL, or its thread group exec'd)

    def _on_stop(self, pid: int, sig: int) -> None:
        t = self.pids[pid]
        if not t.started:
            # Its first stop, from being attached: let it run. A new tracee's first stop can
            # reach us before or after its parent's fork event, so that stop alone marks it.
            t.started = True
            if self.cfg.trace is not None and not t.parent:
                # Its parent's fork event may come later than its own exec: ask the kernel now.
                t.parent = _real_parent(pid)
            pt.cont(pid)
        elif sig in _GROUP_STOP_SIGNALS:
            pt.listen(pid)  # a real group-stop: stay stopped until SIGCONT, as without us
        else:
            pt.cont(pid)

    def _exited(self, pid: int, status: int, usage: resource.struct_rusage | None) -> None:
        t = self.pids.drop(pid)
        if self.cfg.trace is not None and t is not None and t.exec_time is not None:
            self.cfg.trace.exit(pid, status, time.monotonic() - t.exec_time, usage)

    def _traced_parent(self, pid: int) -> int:
        """The nearest ancestor that has exec'd (0: none): a subshell that never execs has no
        record of its own, so its children hang from its parent in the trace. A parent that
        has exited is no longer known: its children hang from the root."""
        get = self.pids.get
        t = get(pid)
        p = t.parent if t is not None else 0
        for _ in range(64):
            if p == 0:
                break
            t = get(p)
            if t is None:
                return 0
            if t.exec_time is not None:
                break
            p = t.parent
        return p


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
