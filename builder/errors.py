"""The builder's errors: each names what went wrong and what to do about it.

Every error the builder raises on purpose is an ``XshimError``, which has the shape of the shim's
``shim.errors.ShimError`` (a message and a hint) and derives from it. The three kinds of failure
are its subclasses here: ``InputError`` (bad input or usage, nothing written; with a place in a
file: ``SourceError``; a ``--qemu`` file that is no emulator: ``NotAnEmulatorError``),
``Unavailable`` (something this host lacks: ``MissingToolError``, ``PrivilegeError``,
``qemu.MissingEmulatorError``) and the work itself failing (``ToolFailedError``, ``BuildFailed``,
``ImageIndexError``, ``BundleError``, ``FreezeError``, ...). The Debian archive client's kinds
(``ArchiveError`` and its subclasses) are here too, shared by ``debian.py`` and ``deb.py``;
``qemu.MissingEmulatorError`` stays beside the code that raises it, as its message and hint are
made from qemu.py's package names. All derive from these. The Dockerfile lexer's
``LexError`` and ``ShellError`` stay internal to the pure rewriter, which turns them into
``SourceError`` with the file and line.

``cli.main`` is the one boundary: it prints ``xshim: error: <message>`` and, on the next line,
``hint: <hint>``, then exits with the status ``cli.exit_status`` gives the kind (2 bad input, 3
unavailable, 1 otherwise). Anything else that escapes (an ``OSError``, a bug) is reported the same
way with exit 1, and its traceback only with ``-v``.
"""

from __future__ import annotations

from ..shim.arch import ARCHES, UnknownPlatformError
from ..shim.errors import ShimError


class XshimError(ShimError):
    """Base class of the builder's errors. ``hint`` says how to fix it."""


class InputError(XshimError):
    """Bad input: a file, option or value the user gave. Nothing was written."""


class SourceError(InputError):
    """Bad input at a place in a file: ``file:line[:column]: message``."""

    def __init__(
        self, file: str, line: int, message: str, hint: str | None = None, column: int = 0
    ) -> None:
        where = f"{file}:{line}" + (f":{column}" if column else "")
        super().__init__(f"{where}: {message}", hint)
        self.file = file
        self.line = line
        self.column = column
        self.detail = message


class Unavailable(XshimError):
    """Something this host lacks: a program, a privilege, an emulator."""


class MissingToolError(Unavailable):
    """A program xshim needs is not installed."""

    def __init__(self, program: str, package: str, why: str = "") -> None:
        msg = f"couldn't find {program!r}" + (f" ({why})" if why else "")
        super().__init__(msg, f"is {package!r} installed? On Debian: apt-get install {package}")
        self.program = program
        self.package = package


class PrivilegeError(Unavailable):
    """The operation needs privileges this process does not have."""


class ToolFailedError(XshimError):
    """An external program ran and failed."""

    def __init__(self, argv: list[str], returncode: int, output: str = "") -> None:
        tail = output.strip().splitlines()[-5:]
        msg = f"{argv[0]} exited with status {returncode}"
        if tail:
            msg += ":\n  " + "\n  ".join(tail)
        super().__init__(msg)
        self.argv = argv
        self.returncode = returncode


class BuildFailed(XshimError):
    """A platform's ``xshim build`` failed; the message names the platform, the step and its
    status."""


class ImageIndexError(XshimError):
    """Assembling or pushing an image index failed (the tool's own words are in the message)."""


class NotAnEmulatorError(InputError):
    """A --qemu path that can't serve as an emulator."""


class BundleError(XshimError):
    """The bundle could not be assembled."""


class FreezeError(XshimError):
    """PyInstaller could not freeze the shim."""


class ElfFormatError(XshimError):
    """A file that claims to be ELF but can't be read as one."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: not a readable ELF file ({why})",
                         "replace the file with an intact copy")
        self.name = name


class SecondStageError(XshimError):
    """debootstrap's second stage failed."""

    def __init__(self, rc: int, detail: str) -> None:
        msg = f"debootstrap --second-stage exited with status {rc}"
        if detail:
            msg += ":\n  " + detail.replace("\n", "\n  ")
        super().__init__(msg, "rerun with -v (and XSHIM_TRACE=stderr) to see which step failed")
        self.returncode = rc


def bad_platform(e: UnknownPlatformError, option: str = "--platform") -> InputError:
    """The one way a platform the table lacks becomes bad input."""
    examples = ", ".join(a.platform for a in ARCHES[:3])
    return InputError(f"{option}: {e}",
                      f"give a Docker platform string such as {examples} (os/arch[/variant])")


# --- the Debian archive client (debian.py, deb.py) ------------------------------------------------


class ArchiveError(XshimError):
    """The archive answered, but not with what we need (missing file, missing package)."""


class ArchiveUnreachableError(ArchiveError):
    """The archive could not be reached at all (network down, DNS, refused)."""


class SignatureError(ArchiveError):
    """``InRelease`` did not verify against the keyring: nothing from it is trusted."""


class ChecksumError(ArchiveError):
    """Downloaded bytes differ from the digest the signed archive publishes for them."""

    def __init__(self, what: str, expected: str, got: str) -> None:
        super().__init__(
            f"checksum mismatch for {what}: expected sha256 {expected}, got {got}; "
            "the bytes were discarded",
            "retry; if it persists the mirror is serving corrupt or tampered files: "
            "pick another with --mirror or $XSHIM_MIRROR",
        )
        self.what = what
        self.expected = expected
        self.got = got


class DebFormatError(ArchiveError):
    """A .deb that is not an ar archive with a data.tar member."""
