"""Command-line text made into typed values, once, at the edge (argparse ``type=`` converters).

The library below the CLI takes only the typed values: an ``Arch`` row, a list of them, a ``Mode``.
A platform the architecture table lacks is bad input with the same message and hint wherever it
is given (``errors.bad_platform``); it is raised as an ``InputError``, which argparse lets through
to the CLI's one error boundary (it turns only ``ValueError``/``TypeError`` into usage errors).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ..shim import arch as archmod
from ..shim.arch import Arch
from .dockerfile import Mode
from .errors import InputError, bad_platform


def parse_arch(text: str) -> Arch:
    """``linux/arm64``, ``arm64``, ``aarch64``, ``linux/arm/v7`` -> its table row."""
    try:
        return archmod.from_platform(text)
    except archmod.UnknownPlatformError as e:
        raise bad_platform(e) from None


def parse_arch_list(text: str) -> list[Arch]:
    """``linux/arm64,linux/arm/v7`` -> table rows in order; empty entries are skipped."""
    return [parse_arch(item) for item in text.split(",") if item.strip()]


def parse_arches(values: Iterable[str | list[Arch]]) -> list[Arch]:
    """A repeatable, comma-separated option -> its rows, in order, each once; none is bad input."""
    out: list[Arch] = []
    for value in values:
        for a in parse_arch_list(value) if isinstance(value, str) else value:
            if a not in out:
                out.append(a)
    if not out:
        raise InputError("no platform given", "use e.g. --platform linux/arm64")
    return out


MODE_CHOICES = tuple(m.value for m in Mode)


def parse_mode(text: str) -> Mode:
    """``--mode copy|mount``, refused in argparse's own words for a choice it does not know."""
    try:
        return Mode(text)
    except ValueError:
        choices = ", ".join(repr(c) for c in MODE_CHOICES)
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {choices})") from None
