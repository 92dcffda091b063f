"""Command-line text made into typed values, once, at the edge (argparse ``type=`` converters).

The library below the CLI takes only the typed values: an ``Arch`` row, a list of them, a
``Platform`` (builder/platform.py) or a list of them, a ``Mode``.
A platform the architecture table lacks is bad input with the same message and hint wherever it
is given (``errors.bad_platform``); it is raised as an ``InputError``, which argparse lets through
to the CLI's one error boundary (it turns only ``ValueError``/``TypeError`` into usage errors).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from ..shim import arch as archmod
from ..shim.arch import Arch
from .dockerfile import Mode
from .errors import InputError, bad_platform
from .platform import Platform


def parse_platform(text: str) -> Platform:
    """``linux/arm64``, ``arm64``, ``linux/arm/v7`` -> Platform."""
    try:
        return Platform.parse(text)
    except archmod.UnknownPlatformError as e:
        raise bad_platform(e) from None


def parse_arch(text: str) -> Arch:
    """``linux/arm64``, ``arm64``, ``aarch64``, ``linux/arm/v7`` -> its table row."""
    return parse_platform(text).arch


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


def parse_optional_arch(text: str) -> Arch | None:
    """``--platform P`` where an empty value means "not given" (``xshim run`` reads the tree)."""
    return parse_arch(text) if text else None


def parse_platform_list(text: str) -> tuple[Platform, ...]:
    """A build's target platforms as ``docker buildx build --platform`` takes them:
    ``linux/amd64,linux/arm64`` -> Platforms in order; an empty value gives none (the option's
    default). An empty entry in a list is bad input."""
    if not text.strip():
        return ()
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise InputError(f"--platform {text!r} has an empty entry",
                         "give one platform or a comma-separated list, e.g. "
                         "linux/amd64,linux/arm64")
    return tuple(parse_platform(item) for item in items)


def parse_target_platforms(values: Iterable[str | Sequence[Platform]], host: Arch
                           ) -> tuple[Platform, ...]:
    """A repeatable ``--platform`` of ``xshim build`` -> each target once, in order; none given
    means the host's platform. A platform given twice is bad input (buildx refuses it too)."""
    out: list[Platform] = []
    for value in values:
        for p in parse_platform_list(value) if isinstance(value, str) else value:
            if p.name in (q.name for q in out):
                raise InputError(f"--platform: {p.name} is given twice", "list each platform once")
            out.append(p)
    return tuple(out) or (Platform.of(host),)


def parse_positive(text: str) -> int:
    """``-n N``: a whole number from 1 up, refused in argparse's words otherwise."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


MODE_CHOICES = tuple(m.value for m in Mode)


def parse_mode(text: str) -> Mode:
    """``--mode copy|mount``, refused in argparse's own words for a choice it does not know."""
    try:
        return Mode(text)
    except ValueError:
        raise _invalid_choice(text, MODE_CHOICES) from None


BUILD_MODE_CHOICES = ("auto", *MODE_CHOICES)


def parse_build_mode(text: str) -> Mode | None:
    """``xshim build --mode auto|copy|mount``: auto is None (build.resolve_mode picks the mode
    the builder can do)."""
    if text == "auto":
        return None
    try:
        return Mode(text)
    except ValueError:
        raise _invalid_choice(text, BUILD_MODE_CHOICES) from None


def _invalid_choice(text: str, choices: tuple[str, ...]) -> argparse.ArgumentTypeError:
    listed = ", ".join(repr(c) for c in choices)
    return argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {listed})")
