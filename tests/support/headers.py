"""ELF headers made from the architecture table, for the pure exec-decision tests."""

from __future__ import annotations

import struct

from xshim.shim import arch as A


def elf_header(a: A.Arch, e_type: int = A.ET_DYN, flags: int | None = None) -> bytes:
    bo = "<" if a.endian is A.Endian.LITTLE else ">"
    flags = a.flags_value if flags is None else flags
    ident = A.ELFMAG + bytes([a.elf_class, a.endian.value, 1]) + bytes(9)
    if a.elf_class == A.ELFCLASS64:
        rest = struct.pack(bo + "HHIQQQIHHHHHH", e_type, a.machine, 1, 0, 64, 0, flags,
                           64, 56, 0, 64, 0, 0)
    else:
        rest = struct.pack(bo + "HHIIIIIHHHHHH", e_type, a.machine, 1, 0, 52, 0, flags,
                           52, 32, 0, 40, 0, 0)
    return (ident + rest).ljust(256, b"\0")
