"""The architecture table: one row per emulated target, shared by the shim and the builder.

Each row ties together the names the outside world uses for one CPU architecture: the ELF header
fields that identify its executables, the Docker/OCI platform string, the qemu-user target name,
the Debian architecture and what ``uname -m`` prints. Everything else in xshim looks things up
here; nothing keeps a copy.
"""

from __future__ import annotations

import struct
from enum import Enum
from typing import NamedTuple

from .errors import ShimError

# ELF constants (elf.h).
ELFMAG = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
ET_EXEC = 2
ET_DYN = 3

EM_386 = 3
EM_MIPS = 8
EM_PPC = 20
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
EM_LOONGARCH = 258

# ARM EABI float ABI flags in e_flags: Debian armhf sets HARD, armel sets SOFT (or neither, for
# pre-EABI5 objects). qemu-arm runs both; the distinction only matters for the platform string.
EF_ARM_ABI_FLOAT_SOFT = 0x200
EF_ARM_ABI_FLOAT_HARD = 0x400
# MIPS n32 marks itself with EF_MIPS_ABI2 and needs the qemu-*n32 targets.
EF_MIPS_ABI2 = 0x20


class Endian(Enum):
    LITTLE = ELFDATA2LSB
    BIG = ELFDATA2MSB


class Arch(NamedTuple):
    """One architecture as ELF headers, Docker, qemu, Debian and uname name it.

    A NamedTuple rather than a dataclass: the shim imports this at every start, and dataclasses
    pulls in inspect, which costs more start-up time than the whole exec decision.
    """

    name: str  # our canonical name; also the qemu target unless ``qemu`` says otherwise
    elf_class: int
    endian: Endian
    machine: int
    platforms: tuple[str, ...]  # Docker/OCI platform strings; the first one is the canonical one
    debian: str  # Debian architecture ("" where Debian has no port)
    uname: str
    qemu: str  # qemu-user target: qemu-<qemu>, qemu-<qemu>-static
    # e_flags refinement: the row applies when (e_flags & flags_mask) == flags_value.
    flags_mask: int = 0
    flags_value: int = 0

    @property
    def platform(self) -> str:
        return self.platforms[0]

    @property
    def qemu_binary(self) -> str:
        return f"qemu-{self.qemu}"

    @property
    def qemu_static(self) -> str:
        return f"qemu-{self.qemu}-static"


_L, _B = Endian.LITTLE, Endian.BIG
_ARM_FLOAT = EF_ARM_ABI_FLOAT_HARD | EF_ARM_ABI_FLOAT_SOFT

# Order matters only among rows with the same (class, byte order, machine): the first whose flag
# test matches wins, so the more specific rows come first.
ARCHES: tuple[Arch, ...] = (
    Arch("x86_64", ELFCLASS64, _L, EM_X86_64, ("linux/amd64",), "amd64", "x86_64", "x86_64"),
    Arch("i386", ELFCLASS32, _L, EM_386, ("linux/386",), "i386", "i686", "i386"),
    Arch("aarch64", ELFCLASS64, _L, EM_AARCH64, ("linux/arm64", "linux/arm64/v8"), "arm64",
         "aarch64", "aarch64"),
    Arch("aarch64_be", ELFCLASS64, _B, EM_AARCH64, ("linux/arm64be",), "", "aarch64_be",
         "aarch64_be"),
    Arch("armhf", ELFCLASS32, _L, EM_ARM, ("linux/arm/v7", "linux/arm"), "armhf", "armv7l", "arm",
         flags_mask=_ARM_FLOAT, flags_value=EF_ARM_ABI_FLOAT_HARD),
    Arch("armel", ELFCLASS32, _L, EM_ARM, ("linux/arm/v5", "linux/arm/v6"), "armel", "armv5tel",
         "arm"),
    Arch("armeb", ELFCLASS32, _B, EM_ARM, ("linux/armbe",), "", "armv7b", "armeb"),
    Arch("riscv64", ELFCLASS64, _L, EM_RISCV, ("linux/riscv64",), "riscv64", "riscv64", "riscv64"),
    Arch("riscv32", ELFCLASS32, _L, EM_RISCV, ("linux/riscv32",), "", "riscv32", "riscv32"),
    Arch("ppc64le", ELFCLASS64, _L, EM_PPC64, ("linux/ppc64le",), "ppc64el", "ppc64le", "ppc64le"),
    Arch("ppc64", ELFCLASS64, _B, EM_PPC64, ("linux/ppc64",), "ppc64", "ppc64", "ppc64"),
    Arch("ppc", ELFCLASS32, _B, EM_PPC, ("linux/ppc",), "powerpc", "ppc", "ppc"),
    Arch("s390x", ELFCLASS64, _B, EM_S390, ("linux/s390x",), "s390x", "s390x", "s390x"),
    Arch("mips64el", ELFCLASS64, _L, EM_MIPS, ("linux/mips64le",), "mips64el", "mips64",
         "mips64el"),
    Arch("mips64", ELFCLASS64, _B, EM_MIPS, ("linux/mips64",), "", "mips64", "mips64"),
    Arch("mipsn32el", ELFCLASS32, _L, EM_MIPS, ("linux/mipsn32le",), "", "mips64", "mipsn32el",
         flags_mask=EF_MIPS_ABI2, flags_value=EF_MIPS_ABI2),
    Arch("mipsel", ELFCLASS32, _L, EM_MIPS, ("linux/mipsle",), "mipsel", "mips", "mipsel"),
    Arch("mips", ELFCLASS32, _B, EM_MIPS, ("linux/mips",), "", "mips", "mips"),
    Arch("loongarch64", ELFCLASS64, _L, EM_LOONGARCH, ("linux/loong64",), "loong64",
         "loongarch64", "loongarch64"),
)

_BY_NAME = {a.name: a for a in ARCHES}


class UnknownPlatformError(ShimError, ValueError):
    """A platform string or architecture name that is not in the table."""

    def __init__(self, text: str) -> None:
        self.text = text
        known = ", ".join(a.platform for a in ARCHES)
        super().__init__(f"unknown platform {text!r}; known platforms: {known}")


def by_name(name: str) -> Arch:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownPlatformError(name) from None


def _normalise_platform(text: str) -> str:
    p = text.strip().lower()
    if "/" not in p:
        p = f"linux/{p}"
    return p


def from_platform(text: str) -> Arch:
    """Map a Docker platform string (``linux/arm64``, ``arm64``, ``linux/arm/v7``) to its row.

    Also accepts canonical names (``aarch64``), Debian names (``armhf``) and qemu target names.
    """
    p = _normalise_platform(text)
    for a in ARCHES:
        if p in a.platforms:
            return a
    bare = text.strip().lower()
    for a in ARCHES:
        if bare in (a.name, a.debian, a.qemu, a.uname) and bare:
            return a
    raise UnknownPlatformError(text)


def host_arch() -> Arch:
    import os

    machine = os.uname().machine
    for a in ARCHES:
        if a.uname == machine or a.name == machine:
            return a
    raise UnknownPlatformError(machine)


class ElfIdent(NamedTuple):
    """The fields of an ELF header that pick an emulator."""

    elf_class: int
    endian: Endian
    machine: int
    flags: int
    elf_type: int


class NotElfError(ShimError, ValueError):
    pass


def parse_ident(header: bytes) -> ElfIdent:
    """Parse the identifying fields from the first 64 bytes of an ELF file.

    Raises NotElfError for anything that is not a well-formed ELF header prefix.
    """
    if len(header) < 52 or header[:4] != ELFMAG:
        raise NotElfError("not an ELF header")
    cls, data = header[4], header[5]
    if cls not in (ELFCLASS32, ELFCLASS64) or data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise NotElfError("bad ELF class or byte order")
    bo = "<" if data == ELFDATA2LSB else ">"
    e_type, e_machine = struct.unpack_from(bo + "HH", header, 16)
    if cls == ELFCLASS64:
        if len(header) < 64:
            raise NotElfError("truncated ELF64 header")
        (flags,) = struct.unpack_from(bo + "I", header, 48)
    else:
        (flags,) = struct.unpack_from(bo + "I", header, 36)
    return ElfIdent(cls, Endian(data), e_machine, flags, e_type)


def arch_of(ident: ElfIdent) -> Arch | None:
    """The table row for an ELF header, or None when no row describes it."""
    for a in ARCHES:
        if (a.elf_class, a.endian, a.machine) != (ident.elf_class, ident.endian, ident.machine):
            continue
        if ident.flags & a.flags_mask == a.flags_value:
            return a
    return None


def natively_runs(host: Arch, target: Arch) -> bool:
    """Whether the host kernel runs ``target`` executables itself (no emulator needed).

    x86_64 kernels run i386 code through their ia32 compatibility layer; Debian's and nearly every
    distribution's kernels enable it.
    """
    if host == target:
        return True
    return host.name == "x86_64" and target.name == "i386"
