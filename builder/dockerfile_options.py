"""What the Dockerfile rewriter is asked (``Options``, checked by ``check_options`` before any
text is read) and what it reports (``Finding``, hadolint-style)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, StrEnum

from ..shim import arch as archmod
from ..shim import layout
from .errors import InputError
from .platform import Platform

_SAFE_PATH = re.compile(r"[A-Za-z0-9._+@/-]+")
_CONTEXT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


class Mode(Enum):
    COPY = "copy"
    MOUNT = "mount"


@dataclass(frozen=True)
class Options:
    """What to patch for. ``platforms`` are the build's target platforms (none: stages without a
    platform of their own are native); ``bundle`` is the bundle directory relative to the build
    context."""

    platforms: tuple[Platform, ...] = ()
    mode: Mode = Mode.COPY
    bundle: str = layout.DEFAULT_DIR
    prefix: str = layout.DEFAULT_PREFIX
    host: archmod.Arch | None = None  # default: the machine this runs on
    # mount mode: bind-mount the bundle from this named build context (BuildKit's
    # ``--build-context NAME=DIR``) instead of from ``bundle`` inside the build context
    mount_from: str | None = None


class Level(StrEnum):
    """How much a finding matters (hadolint's levels)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """A hadolint-style record (the file name is added at the edge)."""

    line: int
    column: int
    level: Level
    code: str
    message: str


def check_options(options: Options) -> None:
    """Reject option values that would not survive being written into a Dockerfile."""
    for what, value in (("bundle directory", options.bundle), ("prefix", options.prefix)):
        if not _SAFE_PATH.fullmatch(value):
            raise InputError(
                f"the {what} {value!r} cannot be written into a Dockerfile as is",
                "use a path of letters, digits and . _ + @ / - only")
    if not options.prefix.startswith("/"):
        raise InputError(f"the prefix {options.prefix!r} is not absolute",
                         f"use an absolute path such as {layout.DEFAULT_PREFIX}")
    if options.mount_from is not None:
        if options.mode is not Mode.MOUNT:
            raise InputError("a named build context for the bundle only serves mount mode",
                             "add --mode mount, or drop --mount-from")
        if not _CONTEXT_NAME.fullmatch(options.mount_from):
            raise InputError(f"{options.mount_from!r} is not a build context name",
                             "use lower-case letters, digits and . _ - (e.g. xshim), as in "
                             "--build-context xshim=DIR")
    elif options.bundle.startswith("/") or options.bundle.split("/")[0] == "..":
        raise InputError(f"the bundle directory {options.bundle!r} is outside the build context",
                         "put the bundle inside the build context (xshim bundle -o .xshim), or "
                         "give it as a named build context (--mode mount --mount-from xshim)")
