"""Typed errors: each names what went wrong and what to do about it.

The CLI prints ``xshim: error: <message>`` and, on the next line, ``hint: <hint>``, then exits
with the error's ``exit_code``: 2 for bad input or usage (nothing was written), 1 for a failure of
the work itself, 3 for a missing tool or privilege.
"""

from __future__ import annotations


class XshimError(Exception):
    """Base class. ``hint`` says how to fix it; ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(XshimError):
    """Bad input: a file, option or value the user gave. Nothing was written."""

    exit_code = 2


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


class MissingToolError(XshimError):
    """A program xshim needs is not installed."""

    exit_code = 3

    def __init__(self, program: str, package: str, why: str = "") -> None:
        msg = f"couldn't find {program!r}" + (f" ({why})" if why else "")
        super().__init__(msg, f"is {package!r} installed? On Debian: apt-get install {package}")
        self.program = program
        self.package = package


class PrivilegeError(XshimError):
    """The operation needs privileges this process does not have."""

    exit_code = 3


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
