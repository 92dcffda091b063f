"""Stage analysis for the Dockerfile rewriter: which stage runs on which platform.

A stage is *foreign* when its platform is known and the host cannot run it natively: a constant
``FROM --platform=linux/arm64``, a target platform of the build (used by stages without their
own), or a Docker Hub architecture namespace (``arm64v8/debian``). Stages on ``$BUILDPLATFORM``,
``FROM scratch`` and Windows stages are left alone; ``FROM <stage>`` inherits its parent's
platform, SHELL and USER.

A build for several platforms (``--platform linux/amd64,linux/arm64``) runs the same Dockerfile
once per platform, so a stage is analysed once per target and is foreign when it is foreign for
any of them; the targets it runs natively for are kept in ``native_for`` (there the shim hands
every exec straight to the kernel).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ..shim import arch as archmod
from .dockerfile_lex import Instruction, Lexed, parse_words
from .dockerfile_shell import ShellError, ShellLex
from .errors import SourceError
from .platform import Platform, split_platform

# Docker Hub's per-architecture namespaces (https://github.com/docker-library/official-images).
ARCH_NAMESPACES: dict[str, str] = {
    "amd64": "linux/amd64",
    "arm32v5": "linux/arm/v5",
    "arm32v6": "linux/arm/v6",
    "arm32v7": "linux/arm/v7",
    "arm64v8": "linux/arm64",
    "i386": "linux/386",
    "mips64le": "linux/mips64le",
    "ppc64le": "linux/ppc64le",
    "riscv64": "linux/riscv64",
    "s390x": "linux/s390x",
}
_WINDOWS_IMAGE = re.compile(r"(^|/)(windows(/servercore|/nanoserver|/server)?|nanoserver|"
                            r"servercore)([:@]|$)", re.IGNORECASE)
_BUILD_PLATFORM_REF = re.compile(r"\$\{?BUILD(PLATFORM|OS|ARCH|VARIANT)\b")


class StageKind(StrEnum):
    """What a stage's platform is to this host."""

    FOREIGN = "foreign"
    NATIVE = "native"
    BUILD_PLATFORM = "build-platform"  # FROM --platform=$BUILDPLATFORM: wherever the build runs
    SCRATCH = "scratch"
    WINDOWS = "windows"
    UNKNOWN = "unknown"


@dataclass
class Stage:
    index: int
    name: str | None  # lower-cased, as BuildKit compares stage names
    from_index: int  # index of the FROM instruction in Lexed.instructions
    members: list[int]  # instruction indexes after FROM, up to the next FROM
    image: str  # base image after ARG expansion
    platform: str | None  # the platform the stage runs on, when known
    kind: StageKind
    parent: Stage | None = None
    shell_at_end: tuple[str, ...] | None = None  # None: the base image's (taken as /bin/sh -c)
    user_at_end: str | None = None  # the USER args text in force at the end; None: base image's
    runs: list[int] = field(default_factory=list)
    needs_patch: bool = False
    native_for: tuple[str, ...] = ()  # target platforms the stage runs natively for
    arches: tuple[archmod.Arch, ...] = ()  # a foreign stage's rows: the emulators it needs

    @property
    def foreign(self) -> bool:
        return self.kind is StageKind.FOREIGN

    @property
    def label(self) -> str:
        return f"stage {self.index}" + (f" ({self.name!r})" if self.name else "")


# --- platform resolution ------------------------------------------------------------------------


def _image_namespace_platform(image: str) -> str | None:
    parts = image.split("/")
    if len(parts) < 2:
        return None
    first = parts[0]
    # A first component with a dot or colon (or "localhost") names a registry; a mirror of Docker
    # Hub keeps its namespaces after the host.
    if ("." in first or ":" in first or first == "localhost") and len(parts) >= 3:
        first = parts[1]
    return ARCH_NAMESPACES.get(first.lower())


# --- stage analysis -----------------------------------------------------------------------------


def analyse(lexed: Lexed, targets: Sequence[Platform], host: archmod.Arch | None = None,
            filename: str = "Dockerfile") -> list[Stage]:
    """Split into stages and decide each stage's platform, for every target platform (none: the
    stages without a platform of their own are native).

    Raises SourceError on bad input.
    """
    host = host or archmod.host_arch()
    each: Sequence[Platform | None] = targets or [None]
    per_target = [_analyse_one(lexed, target, host, filename) for target in each]
    if len(per_target) == 1:
        return per_target[0]
    merged: list[Stage] = []
    for group in zip(*per_target, strict=True):
        foreign = [s for s in group if s.foreign]
        stage = foreign[0] if foreign else group[0]
        if foreign:
            stage.platform = ",".join(dict.fromkeys(s.platform or "" for s in foreign))
            stage.arches = tuple(dict.fromkeys(a for s in foreign for a in s.arches))
            stage.native_for = tuple(dict.fromkeys(
                s.platform or "" for s in group if s.kind is StageKind.NATIVE))
        merged.append(stage)
    for stage in merged:
        if stage.parent is not None:
            stage.parent = merged[stage.parent.index]
    return merged


def _analyse_one(lexed: Lexed, platform: Platform | None, host: archmod.Arch,
                 filename: str) -> list[Stage]:
    env: dict[str, str] = {}
    env.update(Platform.of(host).build_args("BUILD"))
    env.update((platform or Platform.of(host)).build_args("TARGET"))
    automatic = set(env)
    stages: list[Stage] = []
    by_name: dict[str, Stage] = {}
    current: Stage | None = None
    instructions = lexed.instructions
    for idx, ins in enumerate(instructions):
        if ins.cmd == "from":
            current = _stage_from(lexed, idx, ins, env, by_name, len(stages), platform, host,
                                  filename)
            stages.append(current)
            if current.name:
                by_name[current.name] = current
            continue
        if current is None:
            if ins.cmd == "arg":
                _meta_arg(lexed, ins, env, automatic)
            continue
        current.members.append(idx)
        if ins.cmd == "run":
            current.runs.append(idx)
        elif ins.cmd == "shell" and ins.json:
            current.shell_at_end = ins.json
        elif ins.cmd == "user" and ins.args:
            current.user_at_end = ins.args
    return stages


def _meta_arg(lexed: Lexed, ins: Instruction, env: dict[str, str], automatic: set[str]) -> None:
    for word in parse_words(ins.args, lexed.escape):
        key, eq, value = word.partition("=")
        if key in automatic:
            continue  # the builder sets these itself
        if eq:
            try:
                env[key] = ShellLex(lexed.escape, env=env).process_word(value)
            except ShellError:
                env[key] = value
        else:
            env.setdefault(key, "")


def _expand(lexed: Lexed, text: str, env: dict[str, str], filename: str,
            ins: Instruction) -> str:
    try:
        return ShellLex(lexed.escape, env=env).process_word(text)
    except ShellError as e:
        raise SourceError(filename, ins.line, f"cannot expand {text!r}: {e}",
                            "fix the variable reference in this FROM line") from None


def _stage_from(
    lexed: Lexed,
    idx: int,
    ins: Instruction,
    env: dict[str, str],
    by_name: dict[str, Stage],
    index: int,
    default_platform: Platform | None,
    host: archmod.Arch,
    filename: str,
) -> Stage:
    words = [w for w in ins.values if isinstance(w, str)]
    if not words or not words[0]:
        raise SourceError(filename, ins.line, "FROM names no image",
                            "write FROM <image> [AS <name>]")
    image = _expand(lexed, words[0], env, filename, ins)
    name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None
    flag_platform = ""
    for flag in ins.flags:
        if flag.startswith("--platform="):
            flag_platform = _expand(lexed, flag.split("=", 1)[1], env, filename, ins).strip()

    stage = Stage(index=index, name=name, from_index=idx, members=[], image=image,
                  platform=None, kind=StageKind.UNKNOWN)
    parent = by_name.get(image.lower())
    if parent is not None:
        stage.parent = parent
        stage.platform = parent.platform
        stage.kind = parent.kind
        stage.arches = parent.arches
        stage.shell_at_end = parent.shell_at_end
        stage.user_at_end = parent.user_at_end
        return stage
    if image.lower() == "scratch":
        stage.kind = StageKind.SCRATCH
        return stage
    own = flag_platform or _image_namespace_platform(image)
    if not own and default_platform is None:
        stage.platform = host.platform
        stage.kind = StageKind.NATIVE
        return stage
    platform = own or (default_platform.name if default_platform else "")
    if split_platform(platform)[0] == "windows" or _WINDOWS_IMAGE.search(image):
        stage.platform = platform
        stage.kind = StageKind.WINDOWS
        return stage
    if flag_platform and _BUILD_PLATFORM_REF.search(ins.flags_raw):
        stage.platform = platform
        stage.kind = StageKind.BUILD_PLATFORM
        return stage
    if own:
        try:
            target = Platform.parse(own).arch
        except archmod.UnknownPlatformError:
            known = ", ".join(a.platform for a in archmod.ARCHES)
            raise SourceError(filename, ins.line, f"unknown platform {own!r} in FROM",
                              f"use one of: {known}") from None
    else:
        assert default_platform is not None
        target = default_platform.arch
    stage.platform = target.platform
    if archmod.natively_runs(host, target):
        stage.kind = StageKind.NATIVE
    else:
        stage.kind = StageKind.FOREIGN
        stage.arches = (target,)
    return stage
