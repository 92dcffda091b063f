"""ELF inspection (pyelftools) and patching (LIEF): what the bundle builder and verifier need.

Readers take a binary stream and return plain data: the architecture row, the program
interpreter (PT_INTERP), the DT_NEEDED names, DT_SONAME, DT_RUNPATH / DT_RPATH. Corrupt input
raises ElfFormatError, never a pyelftools exception. The patcher takes bytes and returns bytes
(PT_INTERP, DT_RPATH / DT_RUNPATH rewritten); only the ``*_file`` helpers touch the file system.

Library resolution follows what glibc's loader does, minus the parts the bundle must not rely
on (LD_LIBRARY_PATH, the image's ld.so.cache): the object's own DT_RUNPATH (or DT_RPATH when it
has no DT_RUNPATH), with ``$ORIGIN`` expanded, then, on the host only, the ld.so.conf
directories and the built-in system directories.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from ..shim import arch as archmod
from ..shim.arch import Arch, ElfIdent, NotElfError
from .errors import ElfFormatError
from .fsutil import write_atomic

# glibc's built-in trusted directories (after ld.so.conf) for the 64-bit and 32-bit layouts.
SYSTEM_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")
LD_SO_CONF = Path("/etc/ld.so.conf")
_ORIGIN = re.compile(r"\$(ORIGIN\b|\{ORIGIN\})")


@dataclass(frozen=True)
class ElfInfo:
    """What the loader and the kernel look at in one ELF file."""

    ident: ElfIdent
    arch: Arch | None  # None for a machine the architecture table does not describe
    interp: str | None  # PT_INTERP
    needed: tuple[str, ...]  # DT_NEEDED, in order
    soname: str | None
    runpath: tuple[str, ...] | None  # DT_RUNPATH split on ':'; None when absent
    rpath: tuple[str, ...] | None  # DT_RPATH split on ':'; None when absent
    dynamic: bool  # has a PT_DYNAMIC segment

    @property
    def search_path(self) -> tuple[str, ...]:
        """The directories this object's own DT_NEEDED are looked up in (RUNPATH beats RPATH)."""
        if self.runpath is not None:
            return self.runpath
        return self.rpath or ()

    @property
    def is_program(self) -> bool:
        """A program the kernel starts through a loader: PT_INTERP and no DT_SONAME.

        (libc.so.6 has a PT_INTERP too, so that running it prints its version; it is still a
        library.)
        """
        return self.interp is not None and self.soname is None


def is_elf(stream: BinaryIO) -> bool:
    """Whether the stream starts with the ELF magic; the position is restored."""
    pos = stream.tell()
    try:
        return stream.read(4) == archmod.ELFMAG
    finally:
        stream.seek(pos)


def is_elf_file(path: str | os.PathLike[str]) -> bool:
    """A regular file (not a symlink) that starts with the ELF magic."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return is_elf(f)


def _split(value: str) -> tuple[str, ...]:
    return tuple(p for p in value.split(":") if p)


def read_elf(stream: BinaryIO, name: str = "<stream>") -> ElfInfo:
    """Read the loader-relevant fields of an ELF file from a seekable binary stream."""
    stream.seek(0)
    header = stream.read(64)
    try:
        ident = archmod.parse_ident(header)
    except NotElfError as e:
        raise ElfFormatError(name, str(e)) from None
    stream.seek(0)
    interp: str | None = None
    needed: list[str] = []
    soname: str | None = None
    runpath: tuple[str, ...] | None = None
    rpath: tuple[str, ...] | None = None
    dynamic = False
    try:
        elf = ELFFile(stream)
        for seg in elf.iter_segments():
            if isinstance(seg, InterpSegment):
                interp = seg.get_interp_name()
            elif isinstance(seg, DynamicSegment):
                dynamic = True
                for dyn_tag in seg.iter_tags():
                    # pyelftools sets .needed/.soname/... per tag type, out of the stubs' sight.
                    tag: Any = dyn_tag
                    t = tag.entry.d_tag
                    if t == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif t == "DT_SONAME":
                        soname = tag.soname
                    elif t == "DT_RUNPATH":
                        runpath = _split(tag.runpath)
                    elif t == "DT_RPATH":
                        rpath = _split(tag.rpath)
    except OSError:
        raise
    except (ELFError, Exception) as e:
        # pyelftools lets corrupt fields surface as whatever construct or Python raises
        # (ValueError, OverflowError, KeyError, ...): all of them mean "not a sane ELF".
        raise ElfFormatError(name, str(e) or type(e).__name__) from None
    return ElfInfo(ident, archmod.arch_of(ident), interp, tuple(needed), soname, runpath, rpath,
                   dynamic)


def read_elf_file(path: str | os.PathLike[str]) -> ElfInfo:
    with open(path, "rb") as f:
        return read_elf(f, os.fspath(path))


def same_abi(a: ElfIdent, b: ElfIdent) -> bool:
    """Whether the loader would accept ``b`` as a dependency of ``a`` (class, order, machine)."""
    return (a.elf_class, a.endian, a.machine) == (b.elf_class, b.endian, b.machine)


# --- patching --------------------------------------------------------------------------------


def patch_elf(data: bytes, *, interp: str | None = None, rpath: str | None = None,
              drop_search_path: bool = False, name: str = "<bytes>") -> bytes:
    """Return ``data`` with PT_INTERP and the library search path rewritten.

    ``interp`` sets PT_INTERP. ``rpath`` sets DT_RPATH and drops DT_RUNPATH: on a program, a
    DT_RPATH (unlike DT_RUNPATH) also serves every library it loads that has no DT_RUNPATH of
    its own, dlopen()ed ones included. ``drop_search_path`` removes DT_RUNPATH and DT_RPATH
    (a library's stale host paths), so the program's DT_RPATH applies to it.

    Removal only shrinks the dynamic section, so it is written with LIEF's rebuilding limited
    to that section: growing the string table of a large shared library makes LIEF shift every
    segment, which has been seen to corrupt libpython.
    """
    import lief

    lief.logging.disable()
    binary = lief.ELF.parse(data)
    if binary is None:
        raise ElfFormatError(name, "LIEF could not parse it")
    tags = lief.ELF.DynamicEntry.TAG
    if interp is not None:
        if not binary.has_interpreter:
            raise ElfFormatError(name, "it has no PT_INTERP to point at the bundled loader")
        binary.interpreter = interp
    if rpath is not None or drop_search_path:
        binary.remove(tags.RPATH)
        binary.remove(tags.RUNPATH)
    if rpath is not None:
        binary.add(lief.ELF.DynamicEntryRpath(rpath))
    if interp is None and rpath is None:
        config = lief.ELF.Builder.config_t()
        for field in dir(config):
            if not field.startswith("_") and isinstance(getattr(config, field), bool):
                setattr(config, field, field == "dynamic_section")
        out = bytes(binary.write_to_bytes(config))
    else:
        out = bytes(binary.write_to_bytes())
    if not out:
        raise ElfFormatError(name, "LIEF could not rebuild it")
    return out


def patch_elf_file(path: str | os.PathLike[str], *, interp: str | None = None,
                   rpath: str | None = None, drop_search_path: bool = False) -> None:
    """Patch a file in place (atomically, keeping its mode)."""
    p = Path(path)
    data = patch_elf(p.read_bytes(), interp=interp, rpath=rpath,
                     drop_search_path=drop_search_path, name=str(p))
    write_atomic(p, data, mode=p.stat().st_mode & 0o7777)


# --- library resolution ---------------------------------------------------------------------


def expand_origin(entries: Iterable[str], origin: str) -> list[str]:
    """Substitute ``$ORIGIN`` / ``${ORIGIN}`` (the directory of the object) in search entries."""
    return [_ORIGIN.sub(lambda _m: origin, e) for e in entries]


def read_ld_so_conf(path: Path = LD_SO_CONF, _seen: set[Path] | None = None) -> list[str]:
    """The directories listed in ld.so.conf, following ``include`` globs (relative to the file)."""
    seen = set() if _seen is None else _seen
    if path in seen:
        return []
    seen.add(path)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    dirs: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include"):
            for pattern in line.split()[1:]:
                full = pattern if os.path.isabs(pattern) else str(path.parent / pattern)
                for inc in sorted(glob.glob(full)):
                    dirs.extend(read_ld_so_conf(Path(inc), seen))
        elif line.startswith("hwcap"):
            continue
        else:
            dirs.extend(d for d in line.replace(",", " ").split() if d.startswith("/"))
    return dirs


def host_library_dirs(conf: Path = LD_SO_CONF) -> list[str]:
    """The host loader's default search directories: ld.so.conf, then the built-in ones."""
    return list(dict.fromkeys([*read_ld_so_conf(conf), *SYSTEM_DIRS]))


def find_library(name: str, dirs: Sequence[str], want: ElfIdent) -> Path | None:
    """The first ``dir/name`` that is an ELF the loader would accept for ``want``; else None.

    Like the loader, files of another class or machine are skipped rather than taken.
    """
    for d in dirs:
        candidate = Path(d) / name
        try:
            if not candidate.is_file():
                continue
            with open(candidate, "rb") as f:
                ident = archmod.parse_ident(f.read(64))
        except (OSError, NotElfError):
            continue
        if same_abi(ident, want):
            return candidate
    return None
