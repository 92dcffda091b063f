"""The shim's errors: one base, standard library only.

Every error the shim raises on purpose derives from ``ShimError``: a message that names what went
wrong and, where there is one, a hint that says what to do. The builder's errors
(builder/errors.py) derive from it too (the builder may import the shim, never the reverse), so
the ``xshim`` command line reports both the same way.
"""

from __future__ import annotations


class ShimError(Exception):
    """Base class of the shim's errors. ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
