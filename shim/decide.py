"""What to do with one exec, decided from the target's first bytes alone (pure: no I/O).

The supervisor reads the first ``HEADER_SIZE`` bytes of the file the tracee is about to execute
and asks ``classify``. Anything we do not positively recognise as foreign is left to the kernel,
so the tracee gets the kernel's own answer (a shell's PATH search depends on that).
"""

from __future__ import annotations

from typing import NamedTuple

from .arch import ET_DYN, ET_EXEC, Arch, NotElfError, arch_of, natively_runs, parse_ident

# The kernel reads this much of a file to pick a binary format (BINPRM_BUF_SIZE). exec_binprm()
# allows six rounds of binary handlers: up to five #! scripts before a native program, and four
# before a foreign one, whose binfmt_misc handler takes a round of its own; one more is ELOOP.
HEADER_SIZE = 256
MAX_SCRIPT_DEPTH = 5
MAX_FOREIGN_SCRIPT_DEPTH = 4


class Native(NamedTuple):
    """A host-native executable: the kernel runs it."""

    arch: Arch


class Foreign(NamedTuple):
    """An ELF executable for an architecture the host cannot run."""

    arch: Arch


class UnknownElf(NamedTuple):
    """An ELF file that is not in the architecture table (or not an executable)."""

    machine: int
    elf_class: int


class Script(NamedTuple):
    """A ``#!`` script: the interpreter path and its optional single argument, as the kernel sees
    them."""

    interpreter: bytes
    argument: bytes | None


class Unknown(NamedTuple):
    """Neither ELF nor script: the kernel will answer ENOEXEC."""


Kind = Native | Foreign | UnknownElf | Script | Unknown


def _spacetab(c: int) -> bool:
    return c in (0x20, 0x09)


def _next_non_spacetab(buf: bytes, first: int, last: int) -> int | None:
    for i in range(first, last + 1):
        if not _spacetab(buf[i]):
            return i
    return None


def _next_terminator(buf: bytes, first: int, last: int) -> int | None:
    for i in range(first, last + 1):
        if _spacetab(buf[i]) or buf[i] == 0:
            return i
    return None


def _cstring(buf: bytes, at: int) -> bytes:
    nul = buf.find(b"\0", at)
    return buf[at:nul if nul >= 0 else len(buf)]


def parse_shebang(header: bytes) -> Script | None:
    """Split a ``#!`` line exactly as Linux's fs/binfmt_script.c does (load_script).

    The kernel sees the first HEADER_SIZE bytes, NUL-padded. The line ends at the first newline
    before any NUL; without one, the interpreter must end (blank or NUL) inside the buffer, whose
    last byte is then cut off. Trailing blanks (not ``\\r``) are trimmed; the interpreter runs to
    the first blank or NUL, and everything after the blanks that follow it, up to the end of the
    line or a NUL, is one argument (possibly empty).
    """
    if not header.startswith(b"#!"):
        return None
    buf = header[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0")
    last = HEADER_SIZE - 1
    nul = buf.find(b"\0")
    end = buf.find(b"\n", 0, nul if nul >= 0 else HEADER_SIZE)
    if end < 0:
        first = _next_non_spacetab(buf, 2, last)
        if first is None or _next_terminator(buf, first, last) is None:
            return None  # all blanks, or an interpreter path that may be truncated
        end = last
    while _spacetab(buf[end - 1]):
        end -= 1
    name = _next_non_spacetab(buf, 2, end)
    if name is None or name == end:
        return None
    sep = _next_terminator(buf, name, end)
    arg = None
    if sep is not None and buf[sep] != 0:
        arg = _next_non_spacetab(buf, sep, end)
    line = bytearray(buf)
    line[end] = 0  # the kernel writes NULs at the end of the line and after the interpreter
    if arg is not None:
        assert sep is not None
        line[sep] = 0
        return Script(_cstring(bytes(line), name), _cstring(bytes(line), arg))
    return Script(_cstring(bytes(line), name), None)


def classify(header: bytes, host: Arch) -> Kind:
    script = parse_shebang(header)
    if script is not None:
        return script
    try:
        ident = parse_ident(header)
    except NotElfError:
        return Unknown()
    if ident.elf_type not in (ET_EXEC, ET_DYN):
        return UnknownElf(ident.machine, ident.elf_class)
    arch = arch_of(ident)
    if arch is None:
        return UnknownElf(ident.machine, ident.elf_class)
    if natively_runs(host, arch):
        return Native(arch)
    return Foreign(arch)


def emulated_argv(
    emulator: bytes, argv0: bytes, program: bytes, interpreters: list[Script], script: bytes | None,
    options: tuple[bytes, ...] = (),
) -> list[bytes]:
    """The argv qemu-user needs to run what the kernel would have run.

    For an ELF: ``qemu -0 argv0 program args...``. For a chain of scripts (the outermost script's
    interpreter first), the kernel drops the caller's argv[0] and prepends each interpreter and its
    argument; qemu gets the innermost ELF as program and that interpreter path as argv[0].
    Returned list excludes the caller's argv[1:], which the supervisor appends by pointer.
    ``options`` (qemu's own, such as ``-cpu``) go between the emulator and ``-0``.
    """
    if not interpreters:
        return [emulator, *options, b"-0", argv0, program]
    # The kernel builds argv innermost-first: interp_n [arg_n] interp_n-1 [arg_n-1] ... script.
    prefix: list[bytes] = []
    for s in reversed(interpreters):
        prefix.append(s.interpreter)
        if s.argument is not None:
            prefix.append(s.argument)
    assert script is not None
    return [emulator, *options, b"-0", prefix[0], program, *prefix[1:], script]
