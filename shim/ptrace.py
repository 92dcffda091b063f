"""Thin ctypes bindings for the syscalls the supervisor needs (x86_64 Linux).

Constants at the top, one wrapper per syscall, every failure raised as OSError with the errno.
It imports only the C library handle (``libc.py``), so it can be read and audited alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from .libc import LIBC as _libc
from .libc import raise_errno as _raise

# ptrace requests and options (linux/ptrace.h).
PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for threads too

# x86_64 syscall numbers.
NR_PTRACE = 101
NR_CLONE = 56
NR_EXECVE = 59
NR_EXECVEAT = 322
NR_OPENAT2 = 437

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000

RESOLVE_IN_ROOT = 0x10

# seccomp / BPF (linux/seccomp.h, linux/filter.h, linux/audit.h).
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000
AUDIT_ARCH_X86_64 = 0xC000003E
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
CLONE_UNTRACED = 0x00800000
_BPF_RET_K = 0x06


class UserRegs(ctypes.Structure):
    """struct user_regs_struct for x86_64."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags "
            "rsp ss fs_base gs_base ds es fs gs"
        ).split()
    ]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

_vm_readv = _libc.process_vm_readv
_vm_readv.restype = ctypes.c_ssize_t
_vm_readv.argtypes = [
    ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
    ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong,
]
_vm_writev = _libc.process_vm_writev
_vm_writev.restype = ctypes.c_ssize_t
_vm_writev.argtypes = _vm_readv.argtypes

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    # No request sent through here returns data in its return value (PEEKDATA has its own
    # wrapper), so -1 always means failure and errno need not be cleared first: this runs
    # several times per exec.
    r: int = _ptrace(request, pid, addr, data)
    if r == -1:
        _raise("ptrace")
    return r


def peek(pid: int, addr: int) -> int:
    """One word of the tracee's memory (PTRACE_PEEKDATA), as an unsigned integer."""
    ctypes.set_errno(0)
    r: int = _ptrace(PTRACE_PEEKDATA, pid, addr, 0)
    if r == -1 and ctypes.get_errno():
        _raise("ptrace(PTRACE_PEEKDATA)")
    return r & 0xFFFFFFFFFFFFFFFF


def poke(pid: int, addr: int, word: int) -> None:
    ptrace(PTRACE_POKEDATA, pid, addr, word)


def interrupt(pid: int) -> None:
    ptrace(PTRACE_INTERRUPT, pid, 0, 0)


def seize(pid: int, options: int) -> None:
    ptrace(PTRACE_SEIZE, pid, 0, options)


def cont(pid: int, sig: int = 0) -> None:
    ptrace(PTRACE_CONT, pid, 0, sig)


def cont_syscall(pid: int, sig: int = 0) -> None:
    ptrace(PTRACE_SYSCALL, pid, 0, sig)


def listen(pid: int) -> None:
    ptrace(PTRACE_LISTEN, pid, 0, 0)


def getregs(pid: int, regs: UserRegs) -> None:
    ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))


def setregs(pid: int, regs: UserRegs) -> None:
    ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(regs))


_event_msg = ctypes.c_ulong(0)
_event_msg_p = ctypes.addressof(_event_msg)


def geteventmsg(pid: int) -> int:
    ptrace(PTRACE_GETEVENTMSG, pid, 0, _event_msg_p)
    return _event_msg.value


def _chunk(addr: int, first: bool) -> int:
    """How much to read at ``addr``: never past its page (the next may be unmapped), and only
    256 bytes the first time, since most strings and argv arrays are short."""
    rest = 4096 - (addr & 4095)
    return min(rest, 256) if first else rest


class Unreadable(OSError):
    """Even PTRACE_PEEKDATA/POKEDATA failed: the address is unmapped, or the tracee is not
    dumpable (it changed its credentials) and we lack CAP_SYS_PTRACE. The caller tells the two
    apart by making the tracee dumpable and trying again."""


class TraceeMemory:
    """Reads and writes a stopped tracee's memory, by the cheapest means the kernel allows.

    1. process_vm_readv/writev: one syscall per transfer. Docker's default seccomp profile
       refuses them to containers without CAP_SYS_PTRACE; a probe on our own pid at start tells
       that refusal apart from a refusal for one tracee, and selects /proc/PID/mem for the run.
    2. /proc/PID/mem, which like process_vm_* is subject to __ptrace_may_access(): without
       CAP_SYS_PTRACE it is refused for a tracee whose uids differ from ours (apt's ``_apt``
       methods, setpriv, runuser, su) or that is not dumpable.
    3. PTRACE_PEEKDATA/POKEDATA, one word per syscall, which only check that we are the tracer
       and that the tracee is dumpable (ptrace_access_vm): any uid will do.
    """

    _BUF = 4096  # reads never cross a page (see read_cstring), so one page-sized buffer will do

    def __init__(self) -> None:
        self.use_proc_mem = not _vm_readv_allowed()
        # One buffer and iovec pair reused for every read: this runs on every exec.
        self._buf = ctypes.create_string_buffer(self._BUF)
        self._buf_addr = ctypes.addressof(self._buf)
        self._local = _Iovec(self._buf_addr, self._BUF)
        self._remote = _Iovec(0, 0)
        self._local_p = ctypes.byref(self._local)
        self._remote_p = ctypes.byref(self._remote)
        # Two of each for read_pair(): the halves of the buffer, and two places in the tracee.
        self._local2 = (_Iovec * 2)()
        self._remote2 = (_Iovec * 2)()
        self._wbuf = ctypes.create_string_buffer(self._BUF)
        self._wlocal = _Iovec(ctypes.addressof(self._wbuf), 0)
        self._wremote = _Iovec(0, 0)

    def read(self, pid: int, addr: int, size: int) -> bytes:
        if not self.use_proc_mem and size <= self._BUF:
            self._local.len = size
            self._remote.base = addr
            self._remote.len = size
            n = _vm_readv(pid, self._local_p, 1, self._remote_p, 1, 0)
            if n >= 0:
                return ctypes.string_at(self._buf_addr, n)
            e = ctypes.get_errno()
            if e != errno.EPERM:
                raise OSError(e, f"process_vm_readv: {os.strerror(e)}")
            return self._peek(pid, addr, size)
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            return self._peek(pid, addr, size)
        try:
            return os.pread(fd, size, addr)
        finally:
            os.close(fd)

    def _peek(self, pid: int, addr: int, size: int) -> bytes:
        """Word by word; like a process_vm_readv, short where the memory ends."""
        start = addr & ~7
        out = bytearray()
        try:
            for at in range(start, addr + size, 8):
                out += peek(pid, at).to_bytes(8, "little")
        except OSError as e:
            if not out:
                raise Unreadable(e.errno or errno.EIO, f"tracee memory: {e.strerror}") from None
        return bytes(out[addr - start:addr - start + size])

    def _poke(self, pid: int, addr: int, data: bytes) -> None:
        start = addr & ~7
        end = addr + len(data)
        head = addr - start
        try:
            buf = bytearray()
            if head:
                buf += peek(pid, start).to_bytes(8, "little")[:head]
            buf += data
            if end & 7:
                buf += peek(pid, end & ~7).to_bytes(8, "little")[end & 7:]
            for i in range(0, len(buf), 8):
                poke(pid, start + i, int.from_bytes(buf[i:i + 8], "little"))
        except OSError as e:
            raise Unreadable(e.errno or errno.EIO, f"tracee memory: {e.strerror}") from None

    def write(self, pid: int, addr: int, data: bytes) -> None:
        if not self.use_proc_mem:
            if len(data) <= self._BUF:
                ctypes.memmove(self._wbuf, data, len(data))
                local = self._wlocal
            else:
                buf = ctypes.create_string_buffer(data, len(data))
                local = _Iovec(ctypes.addressof(buf), 0)
            local.len = len(data)
            remote = self._wremote
            remote.base, remote.len = addr, len(data)
            n = _vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n == len(data):
                return
            if n >= 0:
                raise OSError(errno.EFAULT, "process_vm_writev: short write")
            e = ctypes.get_errno()
            if e != errno.EPERM:
                raise OSError(e, f"process_vm_writev: {os.strerror(e)}")
            self._poke(pid, addr, data)
            return
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
        except PermissionError:
            self._poke(pid, addr, data)
            return
        try:
            if os.pwrite(fd, data, addr) != len(data):
                raise OSError(errno.EFAULT, "/proc/PID/mem: short write")
        finally:
            os.close(fd)

    def read_pair(self, pid: int, a: int, b: int) -> tuple[bytes, bytes]:
        """The first chunks (see _chunk) at ``a`` and at ``b``, in one syscall where possible.

        An exec needs the path and the argv array; reading both at once saves a syscall on
        every exec. Each result may be short or empty where the tracee's memory ends.
        """
        size_a, size_b = _chunk(a, True), _chunk(b, True)
        if not self.use_proc_mem:
            half = self._BUF // 2  # _chunk's first reads are at most 256 bytes
            loc, rem = self._local2, self._remote2
            loc[0].base, loc[0].len = self._buf_addr, size_a
            loc[1].base, loc[1].len = self._buf_addr + half, size_b
            rem[0].base, rem[0].len = a, size_a
            rem[1].base, rem[1].len = b, size_b
            n = _vm_readv(pid, loc, 2, rem, 2, 0)
            if n == size_a + size_b:
                return (ctypes.string_at(self._buf_addr, size_a),
                        ctypes.string_at(self._buf_addr + half, size_b))
        # A partial transfer stops at the first unreadable iovec: read each on its own.
        return self._read_or_empty(pid, a, size_a), self._read_or_empty(pid, b, size_b)

    def _read_or_empty(self, pid: int, addr: int, size: int) -> bytes:
        try:
            return self.read(pid, addr, size)
        except OSError:
            return b""

    def read_cstring(
        self, pid: int, addr: int, limit: int = 1 << 16, first: bytes | None = None,
        partial: bool = False,
    ) -> bytes:
        """A NUL-terminated string; reads page by page so an unmapped next page is no error.

        ``first`` is the first chunk when the caller has read it already (read_pair). A string
        of ``limit`` bytes or more is an error (E2BIG), or with ``partial`` returned as far as
        read (at least ``limit`` bytes, so the caller can tell).
        """
        out = b""
        while len(out) < limit:
            if first:  # an empty first chunk failed to read: read again, to raise the cause
                chunk, first = first, None
            else:
                chunk = self.read(pid, addr, _chunk(addr, not out))
            if not chunk:
                raise OSError(errno.EFAULT, "unreadable string in tracee")
            nul = chunk.find(b"\0")
            if nul >= 0:
                return out + chunk[:nul]
            out += chunk
            addr += len(chunk)
        if partial:
            return out
        raise OSError(errno.E2BIG, "string in tracee too long")

    def read_pointers(
        self, pid: int, addr: int, limit: int = 1 << 18, first: bytes | None = None
    ) -> list[int]:
        """A NULL-terminated array of pointers (argv, envp). A NULL array reads as empty.

        ``first`` is the first chunk when the caller has read it already (read_pair).
        """
        out: list[int] = []
        if addr == 0:
            return out
        while len(out) < limit:
            if first:  # an empty first chunk failed to read: read again, to raise the cause
                chunk, first = first, None
            else:
                chunk = self.read(pid, addr, _chunk(addr, not out))
            if len(chunk) < 8:
                raise OSError(errno.EFAULT, "unreadable pointer array in tracee")
            n = len(chunk) // 8
            for p in struct.unpack_from(f"<{n}Q", chunk):
                if p == 0:
                    return out
                out.append(p)
            addr += n * 8
        raise OSError(errno.E2BIG, "pointer array in tracee too long")


def _vm_readv_allowed() -> bool:
    """Whether process_vm_readv works at all here: reading our own memory is always permitted by
    the kernel, so an EPERM or ENOSYS can only come from a seccomp profile."""
    buf = ctypes.create_string_buffer(8)
    local = _Iovec(ctypes.addressof(buf), 8)
    remote = _Iovec(ctypes.addressof(buf), 8)
    n: int = _vm_readv(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return n == 8


NR_KCMP = 312
KCMP_VM = 1


def same_memory(a: int, b: int) -> bool:
    """Whether two processes share one address space (kcmp KCMP_VM); False where refused."""
    r: int = _syscall(NR_KCMP, ctypes.c_int(a), ctypes.c_int(b), ctypes.c_int(KCMP_VM),
                      ctypes.c_ulong(0), ctypes.c_ulong(0))
    return r == 0


def parent_sharing_memory(pid: int) -> int:
    """The parent of ``pid`` if the two share their memory (a vfork or posix_spawn child), else
    0, also where the kernel will not compare them for us."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"PPid:"):
                    ppid = int(line.split()[1])
                    return ppid if ppid and same_memory(pid, ppid) else 0
    except (OSError, ValueError, IndexError):
        pass
    return 0


def set_no_new_privs() -> None:
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise("prctl(PR_SET_NO_NEW_PRIVS)")


def install_exec_filter() -> None:
    """Install a seccomp filter that hands execve/execveat to the tracer and allows the rest.

    Only x86_64-ABI calls are trapped: i386 (int 0x80) and x32 execs reach the kernel untouched,
    so a 32-bit x86 program that itself execs a foreign binary gets the kernel's ENOEXEC.
    A clone() with CLONE_UNTRACED is trapped too, for the tracer to clear the flag: an untraced
    child's execs would meet this filter's RET_TRACE with no tracer, which fails them (ENOSYS).
    clone3() keeps its flags in memory the filter cannot see; it is let through.
    ptrace() is trapped (it is rare) only so that the tracer can say why it fails: the process
    already has a tracer.
    """
    prog = [
        (_BPF_LD_W_ABS, 0, 0, 4),  # A = seccomp_data.arch
        (_BPF_JEQ_K, 0, 7, AUDIT_ARCH_X86_64),
        (_BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
        (_BPF_JEQ_K, 6, 0, NR_EXECVE),
        (_BPF_JEQ_K, 5, 0, NR_EXECVEAT),
        (_BPF_JEQ_K, 4, 0, NR_PTRACE),
        (_BPF_JEQ_K, 0, 2, NR_CLONE),
        (_BPF_LD_W_ABS, 0, 0, 16),  # A = low half of seccomp_data.args[0], clone's flags
        (_BPF_JSET_K, 1, 0, CLONE_UNTRACED),
        (_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (_BPF_RET_K, 0, 0, SECCOMP_RET_TRACE),
    ]
    filters = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), filters)
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        _raise("prctl(PR_SET_SECCOMP)")


_openat2_works = True


def open_in_root(root_fd: int, path: bytes, flags: int) -> int:
    """Open ``path`` with every absolute path and symlink resolved inside ``root_fd``.

    openat2(RESOLVE_IN_ROOT) is what makes a chrooted tracee's absolute symlinks resolve in its
    own tree. Where openat2 is missing or refused (old kernels, older seccomp profiles), fall back
    to a plain open below /proc/PID/root, which is exact whenever tracer and tracee share a root.
    """
    global _openat2_works
    if _openat2_works:
        how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT)
        fd: int = _syscall(
            NR_OPENAT2, ctypes.c_int(root_fd), ctypes.c_char_p(path), ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        if e not in (errno.ENOSYS, errno.EPERM):
            raise OSError(e, os.strerror(e))
        _openat2_works = False
    return os.open(path.lstrip(b"/") or b".", flags | os.O_CLOEXEC, dir_fd=root_fd)
