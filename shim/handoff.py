"""Handing a tracee a descriptor of its emulator, for execs from another root or mount namespace.

A tracee that chrooted (``chroot /sub prog``, debootstrap, ``dpkg --root`` scripts) or mounted
over the emulator's directory cannot reach the emulator by its path, and binfmt_misc's F flag
(the emulator opened once, at registration) makes exactly those execs work under the kernel. So
the tracee is given a descriptor of the emulator, and its exec becomes
``execveat(fd, "", argv, envp, AT_EMPTY_PATH)`` (close-on-exec is fine for an ELF).

Descriptors cross processes only over a unix socket: the supervisor listens on an abstract one
(abstract names belong to the network namespace, not to any root or mount), and the tracee is
made to connect, receive the descriptor (SCM_RIGHTS, close-on-exec) and close the socket by
injected calls. Only the connection whose peer is the tracee gets it. (Plain libc calls rather
than the socket module, which the frozen shim leaves out to start faster.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from . import inject as ij
from . import ptrace as pt
from .blind import Refusal
from .libc import LIBC as _libc
from .libc import check

NR_CLOSE = 3
NR_SOCKET = 41
NR_CONNECT = 42
NR_RECVMSG = 47
_SOCK_CLOEXEC = 0o2000000
_MSG_CMSG_CLOEXEC = 0x40000000
_SCRATCH = 4096
AF_UNIX = 1
SOCK_STREAM = 1
_SOCK_NONBLOCK = 0o4000
SOL_SOCKET = 1
SCM_RIGHTS = 1
_SO_PEERCRED = 17


class Handoff:
    def __init__(self, inj: ij.Injector, mem: pt.TraceeMemory, root: str) -> None:
        self.inj = inj
        self.mem = mem
        self.root = root  # where the emulator paths are, as we see them
        self.listener: int | None = None  # our listening socket
        self.address = b"\0xshim-emulator-%d-%s" % (os.getpid(), os.urandom(8).hex().encode())
        self.files: dict[bytes, int] = {}  # emulator path -> our descriptor of it

    def _file(self, emulator: bytes) -> int:
        fd = self.files.get(emulator)
        if fd is None:
            root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = self.files[emulator] = pt.open_in_root(root_fd, emulator, os.O_RDONLY)
            finally:
                os.close(root_fd)
        return fd

    def _listen(self) -> int:
        if self.listener is None:
            fd = check(_libc.socket(AF_UNIX, SOCK_STREAM | _SOCK_CLOEXEC | _SOCK_NONBLOCK, 0),
                        "socket")
            sun = struct.pack("<H", AF_UNIX) + self.address
            try:
                check(_libc.bind(fd, sun, len(sun)), "bind")
                check(_libc.listen(fd, 16), "listen")
            except OSError:
                os.close(fd)
                raise
            self.listener = fd
        return self.listener

    def fetch(self, pid: int, at: pt.UserRegs, emulator: bytes, *, entry: bool) -> int:
        """Give the stopped tracee a close-on-exec descriptor of ``emulator``; return its number
        there. The tracee is left at the syscall-exit stop of the last injected call. Raises
        Refusal when it cannot be done (the tracee is in another network namespace, ...)."""
        try:
            ours = self._file(emulator)
            listener = self._listen()
        except OSError as e:
            raise Refusal(e.errno or errno.EIO, f"cannot open its emulator: {e.strerror}") from None
        addr = self.inj.call(pid, at, ij.NR_MMAP, 0, _SCRATCH, ij.PROT_READ | ij.PROT_WRITE,
                             ij.MAP_PRIVATE | ij.MAP_ANONYMOUS, (-1) & 0xFFFFFFFFFFFFFFFF, 0,
                             at_entry=entry)
        if addr < 0:
            raise Refusal(-addr, f"mmap in the tracee failed: {os.strerror(-addr)}")
        try:
            return self._fetch(pid, at, addr, ours, listener)
        finally:
            self.inj.call(pid, at, ij.NR_MUNMAP, addr, _SCRATCH, at_entry=False)

    def _fetch(
        self, pid: int, at: pt.UserRegs, addr: int, ours: int, listener: int
    ) -> int:
        sun = struct.pack("<H", AF_UNIX) + self.address
        msg, iov, control, data = addr + 256, addr + 320, addr + 352, addr + 400
        self.mem.write(pid, addr, sun)
        # struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
        self.mem.write(pid, msg, struct.pack("<QQQQQQQ", 0, 0, iov, 1, control, 24, 0))
        self.mem.write(pid, iov, struct.pack("<QQ", data, 1))
        s = self.inj.call(pid, at, NR_SOCKET, AF_UNIX, SOCK_STREAM | _SOCK_CLOEXEC, 0,
                          at_entry=False)
        if s < 0:
            raise Refusal(-s, f"socket() in the tracee failed: {os.strerror(-s)}")
        try:
            r = self.inj.call(pid, at, NR_CONNECT, s, addr, len(sun), at_entry=False)
            if r < 0:
                raise Refusal(-r, "it cannot reach the supervisor's socket to receive its "
                              f"emulator (another network namespace?): {os.strerror(-r)}")
            self._send(pid, listener, ours)
            n = self.inj.call(pid, at, NR_RECVMSG, s, msg, _MSG_CMSG_CLOEXEC, at_entry=False)
            if n < 0:
                raise Refusal(-n, f"recvmsg() in the tracee failed: {os.strerror(-n)}")
            _, level, kind, fd = struct.unpack("<QiiI", self.mem.read(pid, control, 20))
            if (level, kind) != (SOL_SOCKET, SCM_RIGHTS):
                raise Refusal(errno.EIO, "its emulator's descriptor did not arrive")
            return int(fd)
        finally:
            self.inj.call(pid, at, NR_CLOSE, s, at_entry=False)

    def _send(self, pid: int, listener: int, ours: int) -> None:
        """Send the descriptor on the connection the tracee made (its connect() has returned,
        so it is queued); anyone else's is closed unanswered."""
        tgid = _tgid(pid)
        cred = ctypes.create_string_buffer(12)
        size = ctypes.c_uint32(12)
        while True:
            conn = _libc.accept4(listener, None, None, _SOCK_CLOEXEC)
            if conn < 0:
                raise Refusal(errno.EIO, "its connection to the supervisor was lost")
            try:
                size.value = 12
                check(_libc.getsockopt(conn, SOL_SOCKET, _SO_PEERCRED, cred,
                                        ctypes.byref(size)), "getsockopt")
                if struct.unpack("<iII", cred.raw)[0] == tgid:
                    _send_fd(conn, ours)
                    return
            except OSError as e:
                raise Refusal(e.errno or errno.EIO, f"cannot send its emulator: {e}") from None
            finally:
                os.close(conn)


def _send_fd(conn: int, fd: int) -> None:
    """sendmsg(conn, one byte, SCM_RIGHTS [fd])."""
    data = ctypes.create_string_buffer(b"x", 1)
    iov = ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(data), 1), 16)
    control = ctypes.create_string_buffer(
        struct.pack("<QiiI", 20, SOL_SOCKET, SCM_RIGHTS, fd) + bytes(4), 24)
    msg = ctypes.create_string_buffer(struct.pack(
        "<QQQQQQQ", 0, 0, ctypes.addressof(iov), 1, ctypes.addressof(control), 24, 0), 56)
    check(_libc.sendmsg(conn, msg, 0), "sendmsg")


def _tgid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid
