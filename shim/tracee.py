"""The tracee's view of the filesystem: its paths resolved inside its root and cwd, the file it
wants to execute opened as it would be, and the kernel's permission checks for it.

The tracee's root, cwd and descriptors come from /proc/PID/{root,cwd,fd}; where the kernel will
not show them to us (a tracee with other uids, and no CAP_SYS_PTRACE), from what the tracee
told us through injected calls (``blind.View``). The planner (shim/plan.py) is handed an
``Opener`` and does no I/O of its own. Anything the kernel would refuse comes back as a
``Denied`` with the errno it answers, so the tracee sees the true errno.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import NamedTuple

from . import limits
from . import ptrace as pt
from .blind import View
from .decide import HEADER_SIZE
from .tracelog import errname

_CAP_DAC_OVERRIDE = 1


class Denied(NamedTuple):
    """What the kernel would answer the exec with, and why (for the trace)."""

    reason: str
    errno: int = errno.ENOEXEC


class Hidden(Exception):
    """The tracee's view lacks what this exec needs (the cause, for the refusal message)."""


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


class Opener:
    """Opens what tracees exec, as they see it. One exec is planned at a time: ``begin`` resets
    what the last one left (``view``, ``busy``, ``opened``)."""

    def __init__(self, own_root: str) -> None:
        self.own_root = own_root  # the root the command was started in, as we see it
        self.view: View | None = None  # set while planning the exec of a tracee /proc hides
        self.busy = False  # a file of the exec being planned is open for writing somewhere
        self.opened: os.stat_result | None = None  # the file open_exec last opened
        self.notes: list[str] = []  # limits met while opening, for the caller to say once
        self.own_ident: tuple[int, int] | None = None

    def begin(self) -> None:
        self.view = None
        self.busy = False

    def open_root(self, pid: int) -> int:
        """A descriptor of the tracee's root (PermissionError: /proc hides it)."""
        return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def open_own_root(self) -> int:
        return os.open(self.own_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def root_ident(self) -> tuple[int, int]:
        st = os.stat(self.own_root)
        return st.st_dev, st.st_ino

    def is_own_root(self, root_fd: int) -> bool:
        """Whether the root ``root_fd`` is the command's."""
        st = os.fstat(root_fd)
        if self.own_ident is None:
            self.own_ident = self.root_ident()
        return (st.st_dev, st.st_ino) == self.own_ident

    def open_in_root(self, root_fd: int, path: bytes) -> int:
        return pt.open_in_root(root_fd, path, os.O_RDONLY)

    def holds_anything(self, root_fd: int, path: bytes) -> bool:
        """Whether the directory ``path`` inside ``root_fd`` has entries. A missing path, or one
        that is not a directory, holds nothing; one that cannot be read counts as holding some."""
        try:
            fd = pt.open_in_root(root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True
        try:
            return bool(os.listdir(fd))
        except OSError:
            return True
        finally:
            os.close(fd)

    def through_symlink(self, root_fd: int, path: bytes) -> bool:
        """Whether ``path`` inside ``root_fd``, as far as it exists, passes through a symlink
        (so that its canonical name is another)."""
        at = b""
        for part in path.strip(b"/").split(b"/"):
            at += b"/" + part
            try:
                fd = pt.open_in_root(root_fd, at, os.O_PATH | os.O_NOFOLLOW)
            except FileNotFoundError:
                return False
            except OSError:
                return True
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    return True
            finally:
                os.close(fd)
        return False

    def cloexec(self, pid: int, fd: int) -> bool:
        """Whether the tracee's descriptor ``fd`` is close-on-exec."""
        if self.view is not None:
            return self.view.fd is not None and self.view.fd.cloexec
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                info = f.read()
            return bool(int(info.split(b"flags:", 1)[1].split()[0], 8) & os.O_CLOEXEC)
        except (OSError, IndexError, ValueError):
            return False

    def absolute(self, pid: int, path: bytes) -> bytes:
        """``path`` made absolute inside the tracee's root (relative paths start at its cwd)."""
        if path.startswith(b"/"):
            if path.startswith((b"/proc/self/", b"/proc/thread-self/")):
                return b"/proc/%d/" % pid + path.split(b"/", 3)[3]
            return path
        if self.view is not None:
            if self.view.cwd is None:
                raise Hidden("its working directory cannot be seen")
            return self.view.cwd.rstrip(b"/") + b"/" + path
        return self.inside_root(pid, os.readlink(f"/proc/{pid}/cwd").encode()) + b"/" + path

    def inside_root(self, pid: int, seen: bytes) -> bytes:
        """A path from a /proc magic link, which the kernel prints relative to *our* root, made
        relative to the tracee's root."""
        root = os.readlink(f"/proc/{pid}/root").encode()
        if root != b"/" and (seen == root or seen.startswith(root + b"/")):
            return seen[len(root):] or b"/"
        return seen

    def locate_at(
        self, pid: int, dirfd: int, path: bytes, flags: int
    ) -> tuple[bytes, bytes] | Denied:
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
            return Denied(f"bad descriptor {dirfd}", errno.EBADF)
        if path:
            base = self.inside_root(pid, target)
            full = base.rstrip(b"/") + b"/" + path
            return full, full
        if flags & pt.AT_EMPTY_PATH == 0:
            return Denied("empty path without AT_EMPTY_PATH", errno.ENOENT)
        named = self.inside_root(pid, target)
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
            return Denied(f"cannot inspect descriptor {dirfd}")
        if fl & os.O_CLOEXEC:
            return Denied("fexecve of an unnamed close-on-exec descriptor")
        via = b"/proc/self/fd/%d" % dirfd
        return b"/proc/%d/fd/%d" % (pid, dirfd), via

    def _locate_blind(
        self, pid: int, dirfd: int, path: bytes, flags: int
    ) -> tuple[bytes, bytes] | Denied:
        """locate_at from what the tracee said of its descriptor (names relative to its root)."""
        fdv = self.view.fd if self.view is not None else None
        if fdv is None or fdv.name is None or fdv.ident is None:
            return Denied(f"bad descriptor {dirfd}", errno.EBADF)
        if path:
            full = fdv.name.rstrip(b"/") + b"/" + path
            return full, full
        if flags & pt.AT_EMPTY_PATH == 0:
            return Denied("empty path without AT_EMPTY_PATH", errno.ENOENT)
        named = fdv.name
        if named.startswith(b"/") and not named.endswith(b" (deleted)"):
            try:
                b = os.stat(self.own_root.rstrip("/").encode() + named)
                if fdv.ident == (b.st_dev, b.st_ino):
                    return named, named
            except OSError:
                pass
        if fdv.cloexec:
            return Denied("fexecve of an unnamed close-on-exec descriptor")
        raise Hidden(f"descriptor {dirfd} names no file we can open")

    def open_exec(
        self, pid: int, root_fd: int, lookup: bytes, nofollow: bool
    ) -> tuple[bytes, tuple[int, int]] | Denied:
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
            return Denied(errname(e.errno or 0), e.errno or errno.ENOEXEC)
        try:
            st = self.opened = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Denied("EACCES: not a regular file", errno.EACCES)
            if not self.may_execute(pid, st):
                return Denied("EACCES: no execute permission", errno.EACCES)
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                note = limits.setid_note(pid, lookup, st)
                if note:
                    self.notes.append(note)
            if os.fstatvfs(fd).f_flag & os.ST_NOEXEC:
                return Denied("EACCES: noexec mount", errno.EACCES)
            header = os.pread(fd, HEADER_SIZE, 0)
            if not self.busy:
                self.busy = _open_for_writing(fd)
            return header, (st.st_dev, st.st_ino)
        except OSError as e:
            return Denied(errname(e.errno or 0), e.errno or errno.ENOEXEC)
        finally:
            os.close(fd)

    def may_execute(self, pid: int, st: os.stat_result) -> bool:
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

