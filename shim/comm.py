"""The process name (/proc/PID/comm) of an emulated program: the kernel's, not qemu's.

Under binfmt_misc the kernel names the process after the path that was executed (the basename,
15 bytes; for a script the script's), so ``ps``, ``pgrep``, ``killall`` and
``start-stop-daemon --name`` find it. Our rewritten exec runs the emulator by its own path, so
the kernel names it ``qemu-aarch64-st``. At the emulated exec's syscall-exit stop the new image
has not run an instruction yet: we make it call ``prctl(PR_SET_NAME, name)`` from a ``syscall``
instruction inside the emulator's own code and put its registers back. Only a process may rename
itself (/proc/PID/comm of another process is read-only), hence the injected call.

The instruction's place is found once per emulator file: its offset from the entry point, which
is where a static(-pie) emulator stands at that stop whatever its load address.
"""

from __future__ import annotations

import os
import struct

from . import abi
from . import inject as ij
from . import ptrace as pt

COMM_LEN = 15  # TASK_COMM_LEN - 1
PR_SET_NAME = 15
_PT_LOAD, _PT_INTERP, _PF_X = 1, 3, 1
_SCAN_MAX = 1 << 20  # a syscall instruction is near the start of any emulator's code


def kernel_name(path: bytes) -> bytes:
    """What the kernel sets as comm for an exec of ``path`` (kbasename, truncated)."""
    return path.rsplit(b"/", 1)[-1][:COMM_LEN]


def syscall_offset(fd: int) -> int | None:
    """The offset from the entry point of a ``syscall`` (0f 05) in the executable segment of
    the x86_64 ELF open at ``fd``; None for a dynamically linked emulator (it stands in its
    loader at the stop) or where none is found."""
    try:
        ehdr = os.pread(fd, 64, 0)
        if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2:
            return None
        entry, phoff = struct.unpack_from("<QQ", ehdr, 24)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        table = os.pread(fd, phentsize * phnum, phoff)
        segments = []
        for i in range(phnum):
            p_type, p_flags, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize)
            if p_type == _PT_INTERP:
                return None
            if p_type == _PT_LOAD and p_flags & _PF_X:
                segments.append((p_offset, p_vaddr, p_filesz))
        for p_offset, p_vaddr, p_filesz in segments:
            code = os.pread(fd, min(p_filesz, _SCAN_MAX), p_offset)
            at = code.find(b"\x0f\x05")
            if at >= 0:
                offset: int = p_vaddr + at - entry
                return offset
    except (OSError, struct.error):
        return None
    return None


class NameLinks:
    """Symlinks named after programs, each to an emulator, for a rewritten exec to run: the
    kernel names a process after the basename of the path it was given, not of the file the
    path resolves to, so an exec of ``<dir>/<arch>/dpkg`` runs qemu already named ``dpkg``.
    That saves the injected prctl and its three stops on every emulated exec.

    ``host_dir`` is the directory as the supervisor sees it, ``inside_dir`` the same directory in
    the command's root (where the tracees resolve the links); only ever used for tracees in that
    root. A link that cannot be made leaves the exec to the injected rename.
    """

    def __init__(self, host_dir: str, inside_dir: bytes) -> None:
        self.host_dir = host_dir.encode()
        self.inside_dir = inside_dir.rstrip(b"/")
        self.made: dict[tuple[bytes, bytes], bytes | None] = {}
        self.targets: dict[bytes, bytes] = {}  # link path inside -> its emulator

    def link(self, emulator: bytes, arch: str, name: bytes) -> bytes | None:
        """The path (inside the command's root) of a link named ``name`` to ``emulator``."""
        key = (emulator, name)
        if key in self.made:
            return self.made[key]
        inside = None
        if name not in (b"", b".", b"..") and len(self.made) < 4096:
            sub = arch.encode()
            try:
                os.makedirs(self.host_dir + b"/" + sub, mode=0o755, exist_ok=True)
                os.symlink(emulator, self.host_dir + b"/" + sub + b"/" + name)
                inside = self.inside_dir + b"/" + sub + b"/" + name
            except FileExistsError:
                inside = self.inside_dir + b"/" + sub + b"/" + name
            except OSError:
                inside = None
        self.made[key] = inside
        if inside is not None:
            self.targets[inside] = emulator
        return inside


class Namer:
    """Renames emulated processes at their exec; ``offsets`` per emulator path."""

    def __init__(self, inj: ij.Injector, mem: pt.TraceeMemory, root: str) -> None:
        self.inj = inj
        self.mem = mem
        self.root = root  # where the emulator paths are, as we see them
        self.offsets: dict[bytes, int | None] = {}

    def offset(self, emulator: bytes) -> int | None:
        if emulator not in self.offsets:
            off = None
            try:
                root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    fd = pt.open_in_root(root_fd, emulator, os.O_RDONLY)
                finally:
                    os.close(root_fd)
                try:
                    off = syscall_offset(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
            self.offsets[emulator] = off
        return self.offsets[emulator]

    def rename(self, pid: int, name: bytes, offset: int) -> None:
        """``pid`` is at the exec event of its emulated exec: run it to the exec's
        syscall-exit stop, have it call prctl(PR_SET_NAME) there and let it go on."""
        regs = pt.UserRegs()
        pt.cont_syscall(pid)
        self.inj.wait_syscall_stop(pid)
        pt.getregs(pid, regs)
        at = ij.copy_regs(regs)
        # The name goes where sp points (argc and argv[0], the only memory sure to be mapped:
        # the stack may end right below sp) and what was there is put back afterwards.
        name_at = abi.stack_pointer(regs)
        try:
            under = self.mem.read(pid, name_at, len(name) + 1)
            self.mem.write(pid, name_at, name + b"\0")
        except OSError:
            self.inj.cont(pid)  # cannot write to it: it keeps the emulator's name
            return
        # call() runs a syscall instruction 2 bytes before rip: point it at the emulator's.
        abi.set_pc(at, abi.pc(regs) + offset + abi.SYSCALL_INSN_LEN)
        self.inj.call(pid, at, ij.NR_PRCTL, PR_SET_NAME, name_at, at_entry=False)
        self.mem.write(pid, name_at, under)
        pt.setregs(pid, regs)
        self.inj.cont(pid)
