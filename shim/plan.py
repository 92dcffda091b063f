"""Deciding one exec: what the tracee is about to run, seen from inside its root and cwd.

The planner does no I/O of its own: it is handed an opener (shim/tracee.py) that resolves the
tracee's paths and opens its files as the tracee would, from /proc or from what the tracee told
us through injected calls (``blind.View``); the plan says what it needs to be told where /proc
will not show it. Anything the kernel would refuse is left to the kernel, so the tracee sees the
true errno.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from . import ptrace as pt
from .arch import Arch, host_arch
from .blind import View
from .decide import (
    MAX_FOREIGN_SCRIPT_DEPTH,
    MAX_SCRIPT_DEPTH,
    Foreign,
    Kind,
    Native,
    Script,
    UnknownElf,
    classify,
    emulated_argv,
)
from .tracee import Denied, Hidden, Opener
from .tracelog import Decision
from .twins import Match, TwinTable


class Plan(NamedTuple):
    emulator: bytes
    arch: Arch
    program: bytes  # what qemu loads
    head: list[bytes]  # new argv up to the caller's argv[1:]
    path_override: bytes | None  # the script/program path when the caller's cannot be reused
    scripts: list[Script]
    elsewhere: bool = False  # the tracee's root is not the command's: the emulator's path fails
    # The program's native twin (shim/twins.py): used instead of the emulator when it has a
    # path; without one, its reason says why the listed file is emulated after all.
    twin: Match | None = None
    lead: int = 0  # qemu options in head between the emulator and -0


class Leave(NamedTuple):
    """An exec that is not rewritten: run natively, left to the kernel, or refused."""

    decision: Decision  # NATIVE, KERNEL or REFUSED
    # What the exec ends with: 0 when it runs; for KERNEL the errno the kernel answers with.
    errno: int
    reason: str  # for people: the trace's "reason" and the refusal message
    arch: Arch | None = None
    # The exec fails with ``errno`` without reaching the kernel (KERNEL: the kernel's own answer
    # under binfmt_misc, which it cannot give here; REFUSED: our limit, said aloud).
    answer: bool = False


class NeedView(NamedTuple):
    """/proc will not show us this tracee: ask it (blind.probe), then plan again."""

    root: bool  # whether its root must be checked
    cwd: bool
    fd: int | None


def _kernel(reason: str, err: int = errno.ENOEXEC, arch: Arch | None = None) -> Leave:
    """Left to the kernel, which answers ``err``."""
    return Leave(Decision.KERNEL, err, reason, arch)


def fd_of(pid: int, dirfd: int, path: bytes) -> int | None:
    """The descriptor an exec goes through: execveat's dirfd for a relative path, or N of
    /proc/self/fd/N (glibc's fexecve fallback)."""
    if dirfd != pt.AT_FDCWD and not path.startswith(b"/"):
        return dirfd
    for prefix in (b"/proc/self/fd/", b"/proc/thread-self/fd/", b"/proc/%d/fd/" % pid):
        if path.startswith(prefix) and path[len(prefix):].isdigit():
            return int(path[len(prefix):])
    return None


class Planner:
    def __init__(
        self, emulators: dict[str, bytes], self_ids: frozenset[tuple[int, int]],
        guest_shell: bytes | None, guest_shell_arch: Arch | None, opener: Opener,
        twins: TwinTable | None = None, options: dict[str, tuple[bytes, ...]] | None = None,
    ) -> None:
        self.emulators = emulators
        self.options = options or {}  # Arch.name -> qemu options (shim/twins.py cpu_options)
        self.self_ids = self_ids
        self.guest_shell = guest_shell
        self.guest_shell_arch = guest_shell_arch
        self.fs = opener
        self.own_root = opener.own_root  # the root the command was started in, as we see it
        self.host = host_arch()
        # classify() memoised on the header bytes: the same few programs are exec'd over and over.
        self.kinds: dict[bytes, Kind] = {}
        self.notes = opener.notes  # limits met while planning, for the caller to say once
        self.twins = twins

    def needs(self, pid: int, dirfd: int, path: bytes, root_known: bool) -> NeedView | None:
        """What a tracee whose /proc entries we cannot open must tell us before this exec."""
        fd = fd_of(pid, dirfd, path)
        cwd = dirfd == pt.AT_FDCWD and not path.startswith(b"/")
        if root_known and not cwd and fd is None:
            return None
        return NeedView(not root_known, cwd, fd)

    def root_ident(self) -> tuple[int, int]:
        return self.fs.root_ident()

    def plan(
        self, pid: int, dirfd: int, path: bytes, flags: int, view: View | None = None,
        root_known: bool = False, no_twin: str | None = None,
    ) -> Plan | Leave | NeedView:
        """``view``: what the tracee told us for this exec; ``root_known``: its root is ours;
        ``no_twin``: why a twin is not to be used (its exec failed in this tracee)."""
        fs = self.fs
        fs.begin()
        try:
            root_fd = fs.open_root(pid)
        except PermissionError:
            if view is None:
                need = self.needs(pid, dirfd, path, root_known)
                if need is not None:
                    return need
            fs.view = view or View(None, None)
            root_fd = fs.open_own_root()
        except OSError as e:
            return _kernel(f"cannot see the tracee's root: {e.strerror}")
        try:
            out = self._plan_in(pid, root_fd, dirfd, path, flags, no_twin)
            if isinstance(out, Plan) and fs.view is None and not fs.is_own_root(root_fd):
                if out.twin is not None and out.twin.path:
                    out = out._replace(twin=out.twin._replace(
                        path=b"", reason="the tracee's root is not the command's"))
                return out._replace(elsewhere=True)
            return out
        except Hidden as e:
            return Leave(Decision.REFUSED, errno.EACCES, str(e), answer=True)
        finally:
            fs.close(root_fd)

    def _plan_in(
        self, pid: int, root_fd: int, dirfd: int, path: bytes, flags: int, no_twin: str | None
    ) -> Plan | Leave:
        fs = self.fs
        path_override: bytes | None = None
        if dirfd != pt.AT_FDCWD and not path.startswith(b"/"):
            located = fs.locate_at(pid, dirfd, path, flags)
            if isinstance(located, Denied):
                return _kernel(located.reason, located.errno)
            lookup, path_override = located
        else:
            lookup = fs.absolute(pid, path)
            fd_link = lookup.split(b"/fd/", 1) if lookup.startswith(b"/proc/") else []
            if len(fd_link) == 2 and fd_link[1].isdigit():
                # execve("/proc/self/fd/N") (glibc's fexecve fallback): qemu opens the path only
                # after the exec, when a close-on-exec N is gone, so hand it a real name.
                owner = fd_link[0].removeprefix(b"/proc/")
                if owner.isdigit() and int(owner) == pid:
                    located = fs.locate_at(pid, int(fd_link[1]), b"", pt.AT_EMPTY_PATH)
                    if isinstance(located, Denied):
                        return _kernel(located.reason, located.errno)
                    lookup, path_override = located
        opened = fs.open_exec(pid, root_fd, lookup, flags & pt.AT_SYMLINK_NOFOLLOW != 0)
        if isinstance(opened, Denied):
            return _kernel(opened.reason, opened.errno)
        header, ident = opened
        if ident in self.self_ids and self.guest_shell is not None:
            return self._plan_shell([], None)
        kind = self._classify(header)
        scripts: list[Script] = []
        program = path_override if path_override is not None else path
        script_path = path
        if isinstance(kind, Script) and dirfd != pt.AT_FDCWD and not path.startswith(b"/"):
            # The kernel names a script run through a descriptor /dev/fd/N[/path], and refuses
            # it (ENOENT) when N is close-on-exec: the interpreter could not open that name.
            script_path = b"/dev/fd/%d" % dirfd + (b"/" + path if path else b"")
            if fs.cloexec(pid, dirfd):
                return Leave(Decision.KERNEL, errno.ENOENT,
                             "ENOENT: script through a close-on-exec descriptor", answer=True)
        while isinstance(kind, Script):
            scripts.append(kind)
            if len(scripts) > MAX_SCRIPT_DEPTH:
                return _kernel("ELOOP: too many levels of #! interpreters", errno.ELOOP)
            interp = kind.interpreter
            opened = fs.open_exec(pid, root_fd, fs.absolute(pid, interp), False)
            if isinstance(opened, Denied):
                return _kernel(f"interpreter {interp.decode(errors='replace')}: {opened.reason}",
                               opened.errno)
            header, ident = opened
            if ident in self.self_ids and self.guest_shell is not None:
                return self._plan_shell(scripts, script_path, script_path is not path)
            kind = self._classify(header)
            program = interp
        if isinstance(kind, Native):
            return Leave(Decision.NATIVE, 0, kind.arch.name, kind.arch)
        if isinstance(kind, UnknownElf):
            return _kernel(f"ELF machine {kind.machine} is not in the architecture table")
        if not isinstance(kind, Foreign):
            return _kernel("not an executable format")
        emulator = self.emulators.get(kind.arch.name)
        if emulator is None:
            return Leave(Decision.REFUSED, errno.ENOEXEC, f"no emulator for {kind.arch.name}",
                         kind.arch)
        if fs.busy:  # exec's deny_write_access() would fail
            return Leave(Decision.KERNEL, errno.ETXTBSY, "ETXTBSY: open for writing", kind.arch,
                         answer=True)
        opts = self.options.get(kind.arch.name, ())
        if not scripts:
            head = emulated_argv(emulator, b"", program, [], None, opts)
            twin = (self._twin(root_fd, lookup, ident, no_twin) if self.twins is not None
                    else None)
            return Plan(emulator, kind.arch, program, head, path_override, [], twin=twin,
                        lead=len(opts))
        if len(scripts) > MAX_FOREIGN_SCRIPT_DEPTH:  # binfmt_misc would take the sixth round
            return Leave(Decision.KERNEL, errno.ELOOP, "ELOOP: too many levels of #! interpreters",
                         kind.arch, answer=True)
        head = emulated_argv(emulator, b"", program, scripts, script_path, opts)
        override = None if script_path is path else script_path
        return Plan(emulator, kind.arch, program, head, override, scripts, lead=len(opts))

    def _twin(self, root_fd: int, lookup: bytes, ident: tuple[int, int], no_twin: str | None
              ) -> Match | None:
        fs = self.fs
        assert self.twins is not None and fs.opened is not None
        if lookup.startswith(b"/proc/"):
            return None
        found = self.twins.match(ident, fs.opened, lookup,
                                 lambda: fs.open_in_root(root_fd, lookup))
        if found is not None and found.path and no_twin is not None:
            return found._replace(path=b"", reason=no_twin)
        if found is not None and found.path and fs.view is not None:
            # A tracee /proc hides may have a root of its own, where the twin's path fails.
            return found._replace(path=b"", reason="the tracee's root cannot be seen")
        if found is not None and found.path:
            for d in found.twin.empty_dirs:
                if fs.holds_anything(root_fd, d.encode()):
                    return found._replace(path=b"", reason=f"{d} is not empty, and only one "
                                          "of the program and its twin searches it there")
            # Directories named in its environment: the guest compiler names its own by their
            # canonical paths.
            for item in found.twin.env:
                for d in item.split("=", 1)[1].split(":"):
                    if fs.through_symlink(root_fd, d.encode()):
                        return found._replace(path=b"", reason=f"{d} is reached through a "
                                              "symlink")
        return found

    def _classify(self, header: bytes) -> Kind:
        kind = self.kinds.get(header)
        if kind is None:
            if len(self.kinds) >= 1024:
                self.kinds.clear()
            kind = self.kinds[header] = classify(header, self.host)
        return kind

    def _plan_shell(
        self, scripts: list[Script], script_path: bytes | None, renamed: bool = False
    ) -> Plan | Leave:
        """The shim was exec'd (as /bin/sh, or as a #! interpreter): run the image's shell.

        ``script_path`` is the script being run when the shim is its interpreter; the caller's
        own path pointer is reused for it unless it was ``renamed`` (an exec through a
        descriptor).
        """
        shell = self.guest_shell
        assert shell is not None
        arch = self.guest_shell_arch
        emulator = self.emulators.get(arch.name) if arch else None
        if arch is None or emulator is None:
            return Leave(Decision.REFUSED, errno.ENOEXEC, "no emulator for the image's shell", arch)
        opts = self.options.get(arch.name, ())
        if scripts:
            head = emulated_argv(emulator, b"", shell, scripts, script_path, opts)
            return Plan(emulator, arch, shell, head, script_path if renamed else None, scripts,
                        lead=len(opts))
        # Plain exec of the shim: qemu -0 <caller's argv0> <guest shell> args...
        return Plan(emulator, arch, shell, emulated_argv(emulator, b"", shell, [], None, opts),
                    shell, [], lead=len(opts))
