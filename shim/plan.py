"""Deciding one exec: what the tracee is about to run, seen from inside its root and cwd.

The tracee's root, cwd and descriptors come from /proc/PID/{root,cwd,fd}; where the kernel will
not show them to us (a tracee with other uids, and no CAP_SYS_PTRACE), from what the tracee
told us through injected calls (``blind.View``), or the plan says what it needs to be told.
Anything the kernel would refuse is left to the kernel, so the tracee sees the true errno.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import NamedTuple

from . import limits
from . import ptrace as pt
from .arch import Arch, host_arch
from .blind import View
from .decide import (
    HEADER_SIZE,
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
from .tracelog import Decision, errname
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


_CAP_DAC_OVERRIDE = 1


class _Hidden(Exception):
    """The tracee's view lacks what this exec needs (the cause, for the refusal message)."""


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


def _open_for_writing(fd: int) -> bool:
    """Whether anyone has the file open for writing, which makes the kernel refuse to execute
    it (ETXTBSY). A read lease is refused (EAGAIN) exactly then; it is released at once. Taking
    it needs the file to be ours or CAP_LEASE: where it is refused otherwise, we cannot tell."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return e.errno == errno.EAGAIN
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


class Planner:
    def __init__(
        self, emulators: dict[str, bytes], self_ids: frozenset[tuple[int, int]],
        guest_shell: bytes | None, guest_shell_arch: Arch | None, own_root: str,
        twins: TwinTable | None = None,
    ) -> None:
        self.emulators = emulators
        self.self_ids = self_ids
        self.guest_shell = guest_shell
        self.guest_shell_arch = guest_shell_arch
        self.own_root = own_root  # the root the command was started in, as we see it
        self.host = host_arch()
        # classify() memoised on the header bytes: the same few programs are exec'd over and over.
        self.kinds: dict[bytes, Kind] = {}
        self.view: View | None = None  # set while planning the exec of a tracee /proc hides
        self.busy = False  # a file of the exec being planned is open for writing somewhere
        self.own_ident: tuple[int, int] | None = None
        self.notes: list[str] = []  # limits met while planning, for the caller to say once
        self.twins = twins
        self.no_twin: dict[int, str] = {}  # tracees whose twin's exec failed, and how
        self.opened: os.stat_result | None = None  # the file _open_exec last opened

    def needs(self, pid: int, dirfd: int, path: bytes, root_known: bool) -> NeedView | None:
        """What a tracee whose /proc entries we cannot open must tell us before this exec."""
        fd = fd_of(pid, dirfd, path)
        cwd = dirfd == pt.AT_FDCWD and not path.startswith(b"/")
        if root_known and not cwd and fd is None:
            return None
        return NeedView(not root_known, cwd, fd)

    def root_ident(self) -> tuple[int, int]:
        st = os.stat(self.own_root)
        return st.st_dev, st.st_ino

    def plan(
        self, pid: int, dirfd: int, path: bytes, flags: int, view: View | None = None,
        root_known: bool = False,
    ) -> Plan | Leave | NeedView:
        """``view``: what the tracee told us for this exec; ``root_known``: its root is ours."""
        self.view = None
        self.busy = False
        try:
            root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            if view is None:
                need = self.needs(pid, dirfd, path, root_known)
                if need is not None:
                    return need
            self.view = view or View(None, None)
            root_fd = os.open(self.own_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return _kernel(f"cannot see the tracee's root: {e.strerror}")
        try:
            out = self._plan_in(pid, root_fd, dirfd, path, flags)
            if isinstance(out, Plan) and self.view is None:
                st = os.fstat(root_fd)
                if self.own_ident is None:
                    self.own_ident = self.root_ident()
                if (st.st_dev, st.st_ino) != self.own_ident:
                    if out.twin is not None and out.twin.path:
                        out = out._replace(twin=out.twin._replace(
                            path=b"", reason="the tracee's root is not the command's"))
                    return out._replace(elsewhere=True)
            return out
        except _Hidden as e:
            return Leave(Decision.REFUSED, errno.EACCES, str(e), answer=True)
        finally:
            os.close(root_fd)

    def _plan_in(
        self, pid: int, root_fd: int, dirfd: int, path: bytes, flags: int
    ) -> Plan | Leave:
        path_override: bytes | None = None
        if dirfd != pt.AT_FDCWD and not path.startswith(b"/"):
            located = self._locate_at(pid, dirfd, path, flags)
            if isinstance(located, Leave):
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
                    if isinstance(located, Leave):
                        return located
                    lookup, path_override = located
        opened = self._open_exec(pid, root_fd, lookup, flags & pt.AT_SYMLINK_NOFOLLOW != 0)
        if isinstance(opened, Leave):
            return opened
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
            if self._cloexec(pid, dirfd):
                return Leave(Decision.KERNEL, errno.ENOENT,
                             "ENOENT: script through a close-on-exec descriptor", answer=True)
        while isinstance(kind, Script):
            scripts.append(kind)
            if len(scripts) > MAX_SCRIPT_DEPTH:
                return _kernel("ELOOP: too many levels of #! interpreters", errno.ELOOP)
            interp = kind.interpreter
            opened = self._open_exec(pid, root_fd, self._absolute(pid, interp), False)
            if isinstance(opened, Leave):
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
        if self.busy:  # exec's deny_write_access() would fail
            return Leave(Decision.KERNEL, errno.ETXTBSY, "ETXTBSY: open for writing", kind.arch,
                         answer=True)
        if not scripts:
            head = emulated_argv(emulator, b"", program, [], None)
            twin = self._twin(pid, root_fd, lookup, ident) if self.twins is not None else None
            return Plan(emulator, kind.arch, program, head, path_override, [], twin=twin)
        if len(scripts) > MAX_FOREIGN_SCRIPT_DEPTH:  # binfmt_misc would take the sixth round
            return Leave(Decision.KERNEL, errno.ELOOP, "ELOOP: too many levels of #! interpreters",
                         kind.arch, answer=True)
        head = emulated_argv(emulator, b"", program, scripts, script_path)
        override = None if script_path is path else script_path
        return Plan(emulator, kind.arch, program, head, override, scripts)

    def _twin(self, pid: int, root_fd: int, lookup: bytes, ident: tuple[int, int]
              ) -> Match | None:
        assert self.twins is not None and self.opened is not None
        if lookup.startswith(b"/proc/"):
            return None
        found = self.twins.match(ident, self.opened, lookup,
                                 lambda: pt.open_in_root(root_fd, lookup, os.O_RDONLY))
        if found is not None and found.path and pid in self.no_twin:
            return found._replace(path=b"", reason=self.no_twin[pid])
        if found is not None and found.path and self.view is not None:
            # A tracee /proc hides may have a root of its own, where the twin's path fails.
            return found._replace(path=b"", reason="the tracee's root cannot be seen")
        return found

    def _cloexec(self, pid: int, fd: int) -> bool:
        if self.view is not None:
            return self.view.fd is not None and self.view.fd.cloexec
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                info = f.read()
            return bool(int(info.split(b"flags:", 1)[1].split()[0], 8) & os.O_CLOEXEC)
        except (OSError, IndexError, ValueError):
            return False

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
        if scripts:
            head = emulated_argv(emulator, b"", shell, scripts, script_path)
            return Plan(emulator, arch, shell, head, script_path if renamed else None, scripts)
        # Plain exec of the shim: qemu -0 <caller's argv0> <guest shell> args...
        return Plan(emulator, arch, shell, [emulator, b"-0", b"", shell], shell, [])

    def _absolute(self, pid: int, path: bytes) -> bytes:
        """``path`` made absolute inside the tracee's root (relative paths start at its cwd)."""
        if path.startswith(b"/"):
            if path.startswith((b"/proc/self/", b"/proc/thread-self/")):
                return b"/proc/%d/" % pid + path.split(b"/", 3)[3]
            return path
        if self.view is not None:
            if self.view.cwd is None:
                raise _Hidden("its working directory cannot be seen")
            return self.view.cwd.rstrip(b"/") + b"/" + path
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
    ) -> tuple[bytes, bytes] | Leave:
        """execveat(dirfd, path): the file's path in the tracee's root, and a path qemu can open.

        With AT_EMPTY_PATH the file is the descriptor itself (fexecve). qemu gets the file's own
        path when it still names the same file, else /proc/self/fd/N when that descriptor
        survives the exec; a close-on-exec descriptor to an unnamed file cannot be handed over.
        """
        if self.view is not None:
            return self._locate_blind(pid, dirfd, path, flags)
        try:
            target = os.readlink(f"/proc/{pid}/fd/{dirfd}").encode()
        except OSError:
            return _kernel(f"bad descriptor {dirfd}", errno.EBADF)
        if path:
            base = self._inside_root(pid, target)
            full = base.rstrip(b"/") + b"/" + path
            return full, full
        if flags & pt.AT_EMPTY_PATH == 0:
            return _kernel("empty path without AT_EMPTY_PATH", errno.ENOENT)
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
            return _kernel(f"cannot inspect descriptor {dirfd}")
        if fl & os.O_CLOEXEC:
            return _kernel("fexecve of an unnamed close-on-exec descriptor")
        via = b"/proc/self/fd/%d" % dirfd
        return b"/proc/%d/fd/%d" % (pid, dirfd), via

    def _locate_blind(
        self, pid: int, dirfd: int, path: bytes, flags: int
    ) -> tuple[bytes, bytes] | Leave:
        """_locate_at from what the tracee said of its descriptor (names relative to its root)."""
        fdv = self.view.fd if self.view is not None else None
        if fdv is None or fdv.name is None or fdv.ident is None:
            return _kernel(f"bad descriptor {dirfd}", errno.EBADF)
        if path:
            full = fdv.name.rstrip(b"/") + b"/" + path
            return full, full
        if flags & pt.AT_EMPTY_PATH == 0:
            return _kernel("empty path without AT_EMPTY_PATH", errno.ENOENT)
        named = fdv.name
        if named.startswith(b"/") and not named.endswith(b" (deleted)"):
            try:
                b = os.stat(self.own_root.rstrip("/").encode() + named)
                if fdv.ident == (b.st_dev, b.st_ino):
                    return named, named
            except OSError:
                pass
        if fdv.cloexec:
            return _kernel("fexecve of an unnamed close-on-exec descriptor")
        raise _Hidden(f"descriptor {dirfd} names no file we can open")

    def _open_exec(
        self, pid: int, root_fd: int, lookup: bytes, nofollow: bool
    ) -> tuple[bytes, tuple[int, int]] | Leave:
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
            return _kernel(errname(e.errno or 0), e.errno or errno.ENOEXEC)
        try:
            st = self.opened = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _kernel("EACCES: not a regular file", errno.EACCES)
            if not self._may_execute(pid, st):
                return _kernel("EACCES: no execute permission", errno.EACCES)
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                note = limits.setid_note(pid, lookup, st)
                if note:
                    self.notes.append(note)
            if os.fstatvfs(fd).f_flag & os.ST_NOEXEC:
                return _kernel("EACCES: noexec mount", errno.EACCES)
            header = os.pread(fd, HEADER_SIZE, 0)
            if not self.busy:
                self.busy = _open_for_writing(fd)
            return header, (st.st_dev, st.st_ino)
        except OSError as e:
            return _kernel(errname(e.errno or 0), e.errno or errno.ENOEXEC)
        finally:
            os.close(fd)

    def _may_execute(self, pid: int, st: os.stat_result) -> bool:
        """The kernel's exec permission check (generic_permission, without ACLs): the owner's,
        group's or others' x bit for the tracee's fsuid and groups, or any x bit with
        CAP_DAC_OVERRIDE in its effective set (root, or a program that kept it)."""
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
            if key in (b"Uid", b"Gid", b"Groups", b"CapEff"):
                fields[key] = value.split()
        uid = int(fields[b"Uid"][3]) if len(fields.get(b"Uid", [])) > 3 else 0
        gids = {int(g) for g in fields.get(b"Groups", [])}
        if len(fields.get(b"Gid", [])) > 3:
            gids.add(int(fields[b"Gid"][3]))
        if st.st_uid == uid:
            allowed = mode & 0o100
        elif st.st_gid in gids:
            allowed = mode & 0o010
        else:
            allowed = mode & 0o001
        if allowed:
            return True
        caps = int(fields[b"CapEff"][0], 16) if fields.get(b"CapEff") else 0
        return bool(caps & 1 << _CAP_DAC_OVERRIDE)

