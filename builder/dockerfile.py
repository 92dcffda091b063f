"""The Dockerfile rewriter behind ``xshim patch``: text in, text out, plus findings.

A stage is *foreign* when its platform is known and the host cannot run it natively: a constant
``FROM --platform=linux/arm64``, ``--platform`` given to ``xshim patch`` (the build's target
platform, used by stages without their own), or a Docker Hub architecture namespace
(``arm64v8/debian``). Stages on ``$BUILDPLATFORM``, ``FROM scratch`` and Windows stages are left
alone; ``FROM <stage>`` inherits its parent's platform, SHELL and USER.

Each foreign stage that has a RUN is routed through the shim bundle (see the bundle contract):

* ``copy`` mode (any builder, the legacy Docker builder included): right after FROM the bundle
  is copied in and ``xshim-install`` swaps ``/bin/sh`` for the shim, so shell-form RUN under the
  default shell stays as written. Exec-form RUN, and shell-form RUN under a stage SHELL, become
  exec form through ``xshim-exec``. At the end of the stage ``xshim-restore --remove-bundle``
  puts ``/bin/sh`` back and deletes the bundle (as root, with the stage's USER set back after).
* ``mount`` mode (BuildKit, buildah, podman): nothing is installed; every RUN bind-mounts the
  bundle and runs through ``<prefix>/bin/sh -c`` (or ``xshim-exec``), so no bundle byte lands in
  a layer.

Heredoc RUNs that must change are turned into the exact argv BuildKit would have run (see
``_heredoc_argv``). Every byte that is not part of a changed instruction comes back unchanged;
inserted lines use the file's line ending and instruction casing. Patching a patched file changes
nothing.

Known limits (no image is pulled, so an image's config cannot be seen): ONBUILD triggers of a base
image run before anything inserted after FROM, so a base image's ``ONBUILD RUN`` still needs
binfmt; a base image whose config sets a non-root USER makes ``xshim-install`` fail (add
``USER root`` at the top of the stage); a SHELL that only the base image's config sets is not
known, so its shell-form RUNs are treated as using ``/bin/sh -c``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum

from ..shim import arch as archmod
from ..shim import layout
from .dockerfile_lex import (
    Instruction,
    Lexed,
    LexError,
    chomp_heredoc,
    close_continuation,
    lex,
    parse_heredoc,
    parse_words,
    split_lines,
)
from .dockerfile_shell import ShellError, ShellLex
from .errors import InputError, SourceError

DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PREFIX = layout.DEFAULT_PREFIX
DEFAULT_BUNDLE = layout.DEFAULT_DIR
TRACE_ARG = "XSHIM_TRACE"
# Where BuildKit mounts the script of a ``RUN <<EOF`` whose body starts with ``#!``.
HEREDOC_PIPES = "/dev/pipes"
# Writes "$1" to the file "$2", then runs the rest of the arguments: the stage's shell on it.
_HEREDOC_WRITER = 'printf \'%s\' "$1" >"$2" && chmod 0755 "$2" && shift 2 && exec "$@"'

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
_SAFE_PATH = re.compile(r"[A-Za-z0-9._+@/-]+")


class Mode(Enum):
    COPY = "copy"
    MOUNT = "mount"


@dataclass(frozen=True)
class Options:
    """What to patch for. ``bundle`` is the bundle directory relative to the build context."""

    platform: str | None = None
    mode: Mode = Mode.COPY
    bundle: str = DEFAULT_BUNDLE
    prefix: str = DEFAULT_PREFIX
    host: archmod.Arch | None = None  # default: the machine this runs on


@dataclass(frozen=True)
class Finding:
    """A hadolint-style record (the file name is added at the edge)."""

    line: int
    column: int
    level: str  # "error", "warning", "info"
    code: str
    message: str


@dataclass
class Stage:
    index: int
    name: str | None  # lower-cased, as BuildKit compares stage names
    from_index: int  # index of the FROM instruction in Lexed.instructions
    members: list[int]  # instruction indexes after FROM, up to the next FROM
    image: str  # base image after ARG expansion
    platform: str | None  # the platform the stage runs on, when known
    kind: str  # "foreign", "native", "build-platform", "scratch", "windows", "unknown"
    parent: Stage | None = None
    shell_at_end: tuple[str, ...] | None = None  # None: the base image's (taken as /bin/sh -c)
    user_at_end: str | None = None  # the USER args text in force at the end; None: base image's
    runs: list[int] = field(default_factory=list)
    needs_patch: bool = False

    @property
    def foreign(self) -> bool:
        return self.kind == "foreign"

    @property
    def label(self) -> str:
        return f"stage {self.index}" + (f" ({self.name!r})" if self.name else "")


@dataclass
class PatchResult:
    text: str
    stages: list[Stage]
    findings: list[Finding]
    lexed: Lexed

    @property
    def changed(self) -> bool:
        return self.text != self.lexed.text

    @property
    def stages_to_patch(self) -> list[Stage]:
        return [s for s in self.stages if s.needs_patch]


# --- platform resolution ------------------------------------------------------------------------


def _split_platform(text: str) -> tuple[str, str, str]:
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        return "linux", parts[0], ""
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def resolve_platform(text: str) -> archmod.Arch:
    """The table row for a platform string; a variant the table lacks falls back to os/arch."""
    try:
        return archmod.from_platform(text)
    except archmod.UnknownPlatformError:
        os_, arch_, variant = _split_platform(text)
        if variant:
            return archmod.from_platform(f"{os_}/{arch_}")
        raise


def _platform_args(prefix: str, platform: str) -> dict[str, str]:
    os_, arch_, variant = _split_platform(platform)
    return {
        f"{prefix}PLATFORM": platform,
        f"{prefix}OS": os_,
        f"{prefix}ARCH": arch_,
        f"{prefix}VARIANT": variant,
    }


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


def _is_root(user: str | None) -> bool:
    if user is None:
        return True
    name = user.strip().split(":", 1)[0]
    return name in ("root", "0")


# --- stage analysis -----------------------------------------------------------------------------


def _source_error(filename: str, ins_line: int, message: str, hint: str | None) -> SourceError:
    return SourceError(filename, ins_line, message, hint)


def analyse(lexed: Lexed, options: Options, filename: str = "Dockerfile") -> list[Stage]:
    """Split into stages and decide each stage's platform. Raises SourceError on bad input."""
    host = options.host or archmod.host_arch()
    host_platform = host.platform
    target = options.platform or host_platform
    env: dict[str, str] = {}
    env.update(_platform_args("BUILD", host_platform))
    env.update(_platform_args("TARGET", target))
    automatic = set(env)
    stages: list[Stage] = []
    by_name: dict[str, Stage] = {}
    current: Stage | None = None
    instructions = lexed.instructions
    for idx, ins in enumerate(instructions):
        if ins.cmd == "from":
            current = _stage_from(lexed, idx, ins, env, by_name, len(stages), options, host,
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
        raise _source_error(filename, ins.line, f"cannot expand {text!r}: {e}",
                            "fix the variable reference in this FROM line") from None


def _stage_from(
    lexed: Lexed,
    idx: int,
    ins: Instruction,
    env: dict[str, str],
    by_name: dict[str, Stage],
    index: int,
    options: Options,
    host: archmod.Arch,
    filename: str,
) -> Stage:
    words = [w for w in ins.values if isinstance(w, str)]
    if not words or not words[0]:
        raise _source_error(filename, ins.line, "FROM names no image",
                            "write FROM <image> [AS <name>]")
    image = _expand(lexed, words[0], env, filename, ins)
    name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None
    flag_platform = ""
    for flag in ins.flags:
        if flag.startswith("--platform="):
            flag_platform = _expand(lexed, flag.split("=", 1)[1], env, filename, ins).strip()

    stage = Stage(index=index, name=name, from_index=idx, members=[], image=image,
                  platform=None, kind="unknown")
    parent = by_name.get(image.lower())
    if parent is not None:
        stage.parent = parent
        stage.platform = parent.platform
        stage.kind = parent.kind
        stage.shell_at_end = parent.shell_at_end
        stage.user_at_end = parent.user_at_end
        return stage
    if image.lower() == "scratch":
        stage.kind = "scratch"
        return stage
    platform = flag_platform or _image_namespace_platform(image) or options.platform
    if not platform:
        stage.platform = host.platform
        stage.kind = "native"
        return stage
    if _split_platform(platform)[0] == "windows" or _WINDOWS_IMAGE.search(image):
        stage.platform = platform
        stage.kind = "windows"
        return stage
    if flag_platform and _BUILD_PLATFORM_REF.search(ins.flags_raw):
        stage.platform = platform
        stage.kind = "build-platform"
        return stage
    try:
        target = resolve_platform(platform)
    except archmod.UnknownPlatformError:
        known = ", ".join(a.platform for a in archmod.ARCHES)
        raise _source_error(filename, ins.line, f"unknown platform {platform!r} in FROM",
                            f"use one of: {known}") from None
    stage.platform = target.platform
    stage.kind = "native" if archmod.natively_runs(host, target) else "foreign"
    return stage


# --- rewriting ----------------------------------------------------------------------------------


@dataclass
class _Style:
    eol: str
    lower: bool

    def kw(self, word: str) -> str:
        return word.lower() if self.lower else word.upper()


def _mount_flag(options: Options) -> str:
    return f"--mount=type=bind,source={options.bundle},target={options.prefix}"


def _has_our_mount(ins: Instruction, prefix: str) -> bool:
    for flag in ins.flags:
        if not flag.startswith("--mount="):
            continue
        fields = dict(kv.partition("=")[::2] for kv in flag[len("--mount="):].split(","))
        target = fields.get("target") or fields.get("dst") or fields.get("destination")
        if target and target.rstrip("/") == prefix.rstrip("/"):
            return True
    return False


def _is_ours(ins: Instruction, prefix: str) -> bool:
    """Whether a RUN already goes through the bundle."""
    if ins.json and ins.json[0].startswith(layout.Layout(prefix).bin_dir + "/"):
        return True
    return _has_our_mount(ins, prefix)


def _effective_shell(shell: tuple[str, ...] | None) -> tuple[str, ...]:
    return shell if shell else DEFAULT_SHELL


def _heredoc_argv(ins: Instruction, shell: tuple[str, ...]) -> tuple[list[str], bool]:
    """What BuildKit runs for a shell-form RUN with heredocs: (argv, needs /dev/pipes).

    Mirrors dockerfile2llb's dispatchRun: a RUN whose whole command is one heredoc runs the
    (chomped) body with the shell, or, when the body starts with ``#!``, mounts it as an
    executable file under /dev/pipes and runs that; any other command gets the heredoc bodies
    appended back, as a shell script, and the shell handles them.
    """
    first = ins.heredocs[0]
    if parse_heredoc(ins.args) is not None:
        data = chomp_heredoc(first.content) if first.chomp else first.content
        if data.startswith("#!"):
            path = f"{HEREDOC_PIPES}/{first.name}"
            return ["-c", _HEREDOC_WRITER, "sh", data, path, *shell, path], True
        return [*shell, data], False
    script = ins.args + "".join("\n" + h.content + h.name for h in ins.heredocs)
    return [*shell, script], False


def _render_run(keyword: str, flags: list[str], argv: list[str]) -> str:
    text = json.dumps(argv, ensure_ascii=False)
    return " ".join([keyword, *[f for f in flags if f], text])


@dataclass
class _Plan:
    replace: dict[int, str] = field(default_factory=dict)  # instruction index -> new line
    after: dict[int, list[str]] = field(default_factory=dict)  # instruction index -> new lines


def _plan_stage(lexed: Lexed, stage: Stage, options: Options, plan: _Plan,
                findings: list[Finding], filename: str) -> bool:
    ins_list = lexed.instructions
    frm = ins_list[stage.from_index]
    style = _Style(eol="\r\n" if lexed.lines[frm.start].endswith("\r\n") else "\n",
                   lower=frm.keyword.islower())
    prefix = options.prefix.rstrip("/") or "/"
    members = [ins_list[i] for i in stage.members]
    runs = [ins_list[i] for i in stage.runs]
    for m in members:
        if m.cmd == "onbuild" and m.sub is not None and m.sub.cmd == "run":
            findings.append(Finding(m.line, 1, "warning", "XS010",
                                    f"{stage.label}: ONBUILD RUN runs in a later build, "
                                    "without xshim; that build needs patching too"))
    if not runs:
        findings.append(Finding(frm.line, 1, "info", "XS011",
                                f"{stage.label} runs on {stage.platform} but has no RUN: "
                                "nothing to do"))
        return False
    bundle = layout.Layout(prefix)
    installed = any(r.json and r.json[0] == bundle.install for r in runs)
    restored = any(r.json and r.json[0] == bundle.restore for r in runs)
    mounted = any(_has_our_mount(r, prefix) for r in runs)
    if options.mode is Mode.MOUNT and (installed or restored):
        raise _source_error(filename, frm.line, f"{stage.label} is already patched in copy mode",
                            "patch the original Dockerfile, or use --mode copy")
    if options.mode is Mode.COPY and mounted:
        raise _source_error(filename, frm.line, f"{stage.label} is already patched in mount mode",
                            "patch the original Dockerfile, or use --mode mount")
    has_trace_arg = any(
        m.cmd == "arg" and any(w.partition("=")[0] == TRACE_ARG
                               for w in parse_words(m.args, lexed.escape))
        for m in members)

    changes = 0
    head: list[str] = []
    if not has_trace_arg:
        head.append(f"{style.kw('ARG')} {TRACE_ARG}")
    parent_user = stage.parent.user_at_end if stage.parent else None
    if options.mode is Mode.COPY and not installed:
        if not _is_root(parent_user):
            head.append(f"{style.kw('USER')} root")
        head.append(f"{style.kw('COPY')} {options.bundle} {prefix}")
        head.append(_render_run(style.kw("RUN"), [], [bundle.install]))
        if not _is_root(parent_user):
            head.append(f"{style.kw('USER')} {parent_user}")
    if head:
        plan.after.setdefault(stage.from_index, []).extend(head)

    shell: tuple[str, ...] | None = stage.parent.shell_at_end if stage.parent else None
    user = parent_user
    for i in stage.members:
        m = ins_list[i]
        if m.cmd == "shell" and m.json:
            shell = m.json
        elif m.cmd == "user" and m.args:
            user = m.args
        if m.cmd != "run" or _is_ours(m, prefix):
            continue
        new = _rewrite_run(m, shell, options, prefix)
        if new is not None:
            plan.replace[i] = new
            changes += 1
            findings.append(Finding(m.line, 1, "info", "XS002",
                                    f"{stage.label}: RUN rewritten to run through the shim"))
    if options.mode is Mode.COPY and not restored:
        tail: list[str] = []
        if not _is_root(user):
            tail.append(f"{style.kw('USER')} root")
        tail.append(_render_run(style.kw("RUN"), [],
                                [bundle.restore, "--remove-bundle"]))
        if not _is_root(user):
            tail.append(f"{style.kw('USER')} {user}")
        last = stage.members[-1] if stage.members else stage.from_index
        plan.after.setdefault(last, []).extend(tail)
    if head or changes or (options.mode is Mode.COPY and not restored):
        findings.append(Finding(frm.line, 1, "warning", "XS001",
                                f"{stage.label} runs on {stage.platform}, foreign to this host: "
                                f"its RUN steps need the xshim bundle ({options.mode.value} mode)"))
        return True
    return False


def _rewrite_run(ins: Instruction, shell: tuple[str, ...] | None, options: Options,
                 prefix: str) -> str | None:
    """The replacement for one RUN of a foreign stage, or None to keep it as written."""
    exec_ = layout.Layout(prefix).exec
    sh = layout.Layout(prefix).shim
    custom = shell is not None and tuple(shell) != DEFAULT_SHELL
    mount = options.mode is Mode.MOUNT
    flags = [_mount_flag(options)] if mount else []
    if ins.json is not None:
        if not ins.json:
            return None  # RUN [] runs nothing
        return _render_run(ins.keyword, [*flags, ins.flags_raw], [exec_, *ins.json])
    if not mount and not custom:
        return None  # /bin/sh is the shim now
    eff = _effective_shell(shell)
    runner = [exec_, *eff] if custom else [sh, *eff[1:]]
    if ins.heredocs:
        argv, pipes = _heredoc_argv(ins, eff)
        if pipes:
            flags.append(f"--mount=type=tmpfs,target={HEREDOC_PIPES}")
            return _render_run(ins.keyword, [*flags, ins.flags_raw], [sh, *argv])
        return _render_run(ins.keyword, [*flags, ins.flags_raw], [*runner, argv[-1]])
    return _render_run(ins.keyword, [*flags, ins.flags_raw], [*runner, ins.args])


def _assemble(lexed: Lexed, plan: _Plan) -> str:
    lines = lexed.lines
    out: list[str] = []
    last_new = False
    default_eol = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"

    def emit_new(text: str, eol: str) -> None:
        nonlocal last_new
        if out and not out[-1].endswith("\n"):
            out[-1] += eol
        out.append(text + eol)
        last_new = True

    def emit_old(text: str) -> None:
        nonlocal last_new
        out.append(text)
        last_new = False

    starts = {ins.start: (k, ins) for k, ins in enumerate(lexed.instructions)}
    i = 0
    while i < len(lines):
        if i not in starts:
            emit_old(lines[i])
            i += 1
            continue
        k, ins = starts[i]
        eol = "\r\n" if lines[ins.start].endswith("\r\n") else (
            "\n" if lines[ins.start].endswith("\n") else default_eol)
        if k in plan.replace:
            body_end = ins.body_start
            for j in range(ins.start + 1, body_end):
                if lines[j].lstrip(" \t\v\f\r").startswith("#"):
                    emit_old(lines[j] if lines[j].endswith("\n") else lines[j] + eol)
            emit_new(plan.replace[k], eol)
        else:
            span = lines[ins.start:ins.end]
            if ins.unterminated and k in plan.after:
                span = close_continuation(span, lexed.escape)
            for line in span:
                emit_old(line)
        for text in plan.after.get(k, []):
            emit_new(text, eol)
        i = ins.end
    if last_new and not lines[-1].endswith("\n"):
        out[-1] = out[-1].rstrip("\r\n")  # the input had no final newline: neither has this
    return "".join(out)


def check_options(options: Options) -> None:
    """Reject option values that would not survive being written into a Dockerfile."""
    for what, value in (("bundle directory", options.bundle), ("prefix", options.prefix)):
        if not _SAFE_PATH.fullmatch(value):
            raise InputError(
                f"the {what} {value!r} cannot be written into a Dockerfile as is",
                "use a path of letters, digits and . _ + @ / - only")
    if not options.prefix.startswith("/"):
        raise InputError(f"the prefix {options.prefix!r} is not absolute",
                         f"use an absolute path such as {DEFAULT_PREFIX}")
    if options.bundle.startswith("/") or options.bundle.split("/")[0] == "..":
        raise InputError(f"the bundle directory {options.bundle!r} is outside the build context",
                         "put the bundle inside the build context (xshim bundle -o .xshim)")


def patch(text: str, options: Options, filename: str = "Dockerfile") -> PatchResult:
    """Patch a Dockerfile's text. Raises SourceError (bad Dockerfile) or InputError (options)."""
    check_options(options)
    try:
        lexed = lex(text)
    except LexError as e:
        raise SourceError(filename, e.line, e.message,
                          "fix the Dockerfile so that `docker build` accepts it") from None
    stages = analyse(lexed, options, filename)
    plan = _Plan()
    findings: list[Finding] = []
    for stage in stages:
        if stage.foreign:
            stage.needs_patch = _plan_stage(lexed, stage, options, plan, findings, filename)
    findings.sort(key=lambda f: (f.line, f.code))
    new_text = _assemble(lexed, plan) if (plan.replace or plan.after) else text
    return PatchResult(new_text, stages, findings, lexed)


__all__ = [
    "DEFAULT_BUNDLE",
    "DEFAULT_PREFIX",
    "DEFAULT_SHELL",
    "Finding",
    "Mode",
    "Options",
    "PatchResult",
    "Stage",
    "analyse",
    "check_options",
    "patch",
    "resolve_platform",
    "split_lines",
]
