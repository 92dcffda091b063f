"""What to do with one exec, decided from the target's first bytes alone (pure: no I/O).

The supervisor reads the first ``HEADER_SIZE`` bytes of the file the tracee is about to execute
and asks ``classify``. Anything we do not positively recognise as foreign is left to the kernel,
so the tracee gets the kernel's own answer (a shell's PATH search depends on that).
"""

from __future__ import annotations

from typing import NamedTuple

from .arch import ET_DYN, ET_EXEC, Arch, NotElfError, arch_of, natively_runs, parse_ident

# The kernel reads this much of a file to pick a binary format (BINPRM_BUF_SIZE) and follows at
# most this many levels of #! interpreters (BINPRM_MAX_RECURSION, counting the first exec).
HEADER_SIZE = 256
MAX_SCRIPT_DEPTH = 4


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


def parse_shebang(header: bytes) -> Script | None:
    """Split a ``#!`` line the way Linux's binfmt_script does.

    The interpreter runs up to the first blank; everything after it, trimmed, is one argument.
    A line longer than the header with no end in sight is not a script the kernel would run.
    """
    if not header.startswith(b"#!"):
        return None
    line = header[2:]
    end = line.find(b"\n")
    if end < 0:
        if len(header) >= HEADER_SIZE:
            # binfmt_script accepts a truncated line only if the interpreter ends inside it.
            stripped = line.lstrip(b" \t")
            if not any(c in stripped for c in (b" ", b"\t")):
                return None
        end = len(line)
    line = line[:end].replace(b"\0", b" ").strip(b" \t\r")
    if not line:
        return None
    for i, c in enumerate(line):
        if c in (0x20, 0x09):
            interp, rest = line[:i], line[i:].strip(b" \t")
            return Script(interp, rest or None)
    return Script(line, None)


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
    emulator: bytes, argv0: bytes, program: bytes, interpreters: list[Script], script: bytes | None
) -> list[bytes]:
    """The argv qemu-user needs to run what the kernel would have run.

    For an ELF: ``qemu -0 argv0 program args...``. For a chain of scripts (the outermost script's
    interpreter first), the kernel drops the caller's argv[0] and prepends each interpreter and its
    argument; qemu gets the innermost ELF as program and that interpreter path as argv[0].
    Returned list excludes the caller's argv[1:], which the supervisor appends by pointer.
    """
    if not interpreters:
        return [emulator, b"-0", argv0, program]
    # The kernel builds argv innermost-first: interp_n [arg_n] interp_n-1 [arg_n-1] ... script.
    prefix: list[bytes] = []
    for s in reversed(interpreters):
        prefix.append(s.interpreter)
        if s.argument is not None:
            prefix.append(s.argument)
    assert script is not None
    return [emulator, b"-0", prefix[0], program, *prefix[1:], script]
