"""The Dockerfile rewriter behind ``xshim patch``: text in, text out, plus findings.

Which stages are foreign is decided in builder/dockerfile_stages.py. Each foreign stage that has
a RUN is routed through the shim bundle (see the bundle contract), changing as little as it can:

* ``copy`` mode (any builder, the legacy Docker builder included): right after FROM the bundle
  is copied in and ``xshim-install`` swaps ``/bin/sh`` for the shim, so shell-form RUN under the
  default shell stays as written. At the end of the stage ``xshim-restore --remove-bundle``
  puts ``/bin/sh`` back and deletes the bundle (as ``USER 0``, with the stage's USER set back
  after; as ``0:0``, by number, as the legacy builder cannot find ``root`` in an image without
  passwd and BuildKit cannot find the group of a bare ``0`` there).
* ``mount`` mode (BuildKit, buildah, podman): each RUN bind-mounts the bundle (from the build
  context, or from a named build context with ``mount_from``), so no bundle byte lands in a
  layer. The same swap is made by ``xshim-install --mounted`` in a RUN of its own right after
  FROM, which keeps the image's shell beside the bundle (the bundle is read-only, and only there
  during a RUN), and undone by ``xshim-restore`` at the end of the stage: shell-form RUNs only
  gain their ``--mount``, on their first line.

Where the stage's SHELL is known and is not ``/bin/sh -c`` (a SHELL instruction in the stage or
in a parent stage), the SHELL is what routes: it becomes ``["<prefix>/bin/xshim-exec", <the
user's shell>...]``, so every shell-form RUN (heredocs included) stays byte-identical in copy
mode and only gains its ``--mount`` in mount mode, and the builder builds from it exactly what it
would have built. The user's SHELL is set back before a shell-form CMD or ENTRYPOINT (the builder
bakes the SHELL in force into them) and at the end of the stage, so the image config is the
unpatched build's. A SHELL that only the base image's config sets is not known and is left
alone: its RUNs are taken to use ``/bin/sh``, which is the shim. Exec-form RUN always becomes
exec form through ``xshim-exec``.

Every byte that is not part of a changed instruction comes back unchanged; inserted lines use the
file's line ending and instruction casing. Patching a patched file changes nothing.

Known limits (no image is pulled, so an image's config cannot be seen): ONBUILD triggers of a base
image run before anything inserted after FROM, so a base image's ``ONBUILD RUN`` still needs
binfmt; a base image whose config sets a non-root USER makes ``xshim-install`` fail (add
``USER root`` at the top of the stage); a SHELL that only the base image's config sets is not
known, so its shell-form RUNs are treated as using ``/bin/sh -c``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..shim import layout
from .dockerfile_lex import (
    Instruction,
    Lexed,
    LexError,
    close_continuation,
    lex,
    parse_words,
    split_lines,
)
from .dockerfile_options import Finding, Level, Mode, Options, check_options
from .dockerfile_stages import Stage
from .dockerfile_stages import analyse as analyse_stages
from .errors import SourceError

DEFAULT_SHELL = ("/bin/sh", "-c")
TRACE_ARG = "XSHIM_TRACE"


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


def _is_root(user: str | None) -> bool:
    if user is None:
        return True
    name = user.strip().split(":", 1)[0]
    return name in ("root", "0")


def analyse(lexed: Lexed, options: Options, filename: str = "Dockerfile") -> list[Stage]:
    """Split into stages and decide each stage's platform(s). Raises SourceError on bad input."""
    return analyse_stages(lexed, options.platforms, options.host, filename)


# --- rewriting ----------------------------------------------------------------------------------


@dataclass
class _Style:
    eol: str
    lower: bool

    def kw(self, word: str) -> str:
        return word.lower() if self.lower else word.upper()


def _mount_flag(options: Options) -> str:
    if options.mount_from:
        return f"--mount=type=bind,from={options.mount_from},target={options.prefix}"
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


def _routed(shell: tuple[str, ...], prefix: str) -> bool:
    """Whether a SHELL value is one this rewriter wrote (the user's shell behind xshim-exec)."""
    return len(shell) > 1 and shell[0] == layout.Layout(prefix).exec


def _render(keyword: str, flags: list[str], argv: list[str] | tuple[str, ...]) -> str:
    text = json.dumps(list(argv), ensure_ascii=False)
    return " ".join([keyword, *[f for f in flags if f], text])


def _with_flag(line: str, keyword: str, flag: str) -> str:
    """The first physical line of an instruction with ``flag`` put right after its keyword; every
    other byte of the line stays."""
    lead = len(line) - len(line.lstrip(" \t\v\f\r"))
    at = lead + len(keyword)
    rest = line[at:]
    return line[:at] + " " + flag + (rest if rest[:1] in (" ", "\t") else " " + rest)


@dataclass
class _Edits:
    """The line edits a rewrite makes, applied in one pass at the end (_apply_edits)."""

    replace: dict[int, str] = field(default_factory=dict)  # instruction index -> new line
    first: dict[int, str] = field(default_factory=dict)  # instruction index -> new first line
    after: dict[int, list[str]] = field(default_factory=dict)  # instruction index -> new lines


@dataclass
class _Shell:
    """The SHELL a stage's instructions see while the rewrite walks it.

    ``user`` is the user's shell (None: the base image's, unknown); ``routed`` says whether the
    builder's SHELL is the routed one at this point; ``pending`` is the user's SHELL instruction
    that can itself become the routed one, as nothing since has used the shell."""

    user: tuple[str, ...] | None
    routed: bool = False
    pending: int | None = None


def _plan_stage(lexed: Lexed, stage: Stage, options: Options, plan: _Edits,
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
            findings.append(Finding(m.line, 1, Level.WARNING, "XS010",
                                    f"{stage.label}: ONBUILD RUN runs in a later build, "
                                    "without xshim; that build needs patching too"))
    if not runs:
        findings.append(Finding(frm.line, 1, Level.INFO, "XS011",
                                f"{stage.label} runs on {stage.platform} but has no RUN: "
                                "nothing to do"))
        return False
    bundle = layout.Layout(prefix)
    mount = options.mode is Mode.MOUNT
    installed = any(r.json and r.json[0] == bundle.install for r in runs)
    restored = any(r.json and r.json[0] == bundle.restore for r in runs)
    mounted = any(_has_our_mount(r, prefix) for r in runs)
    copied = any((r.json and r.json[0] in (bundle.install, bundle.restore))
                 and not _has_our_mount(r, prefix) for r in runs)
    if mount and copied:
        raise SourceError(filename, frm.line, f"{stage.label} is already patched in copy mode",
                          "patch the original Dockerfile, or use --mode copy")
    if options.mode is Mode.COPY and mounted:
        raise SourceError(filename, frm.line, f"{stage.label} is already patched in mount mode",
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
    flags = [_mount_flag(options)] if mount else []
    if not installed:
        if not _is_root(parent_user):
            head.append(f"{style.kw('USER')} 0:0")  # by number: no passwd needed
        if not mount:
            head.append(f"{style.kw('COPY')} {options.bundle} {prefix}")
        head.append(_render(style.kw("RUN"), flags,
                            [bundle.install, *(["--mounted"] if mount else [])]))
        if not _is_root(parent_user):
            head.append(f"{style.kw('USER')} {parent_user}")
    if head:
        plan.after.setdefault(stage.from_index, []).extend(head)

    shell = _Shell(stage.parent.shell_at_end if stage.parent else None)
    user = parent_user
    for i in stage.members:
        m = ins_list[i]
        if m.cmd == "shell":
            _see_shell(i, m, shell, prefix, filename)
        elif m.cmd == "user" and m.args:
            user = m.args
        elif m.cmd in ("cmd", "entrypoint") and m.json is None:
            # The builder bakes the SHELL in force into a shell-form CMD/ENTRYPOINT: it must be
            # the user's here, so the SHELL before it can no longer become the routed one.
            if shell.routed:
                assert shell.user is not None
                plan.after.setdefault(i - 1, []).append(
                    _render(style.kw("SHELL"), [], shell.user))
                shell.routed = False
            shell.pending = None
        elif m.cmd == "run" and not _is_ours(m, prefix):
            changes += _plan_run(lexed, i, m, shell, options, prefix, style, plan, findings, stage)
    tail: list[str] = []
    if not restored:
        if not _is_root(user):
            tail.append(f"{style.kw('USER')} 0:0")
        tail.append(_render(style.kw("RUN"), flags,
                            [bundle.restore, *([] if mount else ["--remove-bundle"])]))
        if not _is_root(user):
            tail.append(f"{style.kw('USER')} {user}")
    if shell.routed:
        assert shell.user is not None
        tail.append(_render(style.kw("SHELL"), [], shell.user))
    if tail:
        last = stage.members[-1] if stage.members else stage.from_index
        plan.after.setdefault(last, []).extend(tail)
    if head or changes or tail:
        findings.append(Finding(frm.line, 1, Level.WARNING, "XS001",
                                f"{stage.label} runs on {stage.platform}, foreign to this host: "
                                f"its RUN steps need the xshim bundle ({options.mode.value} mode)"))
        if stage.native_for:
            findings.append(Finding(frm.line, 1, Level.INFO, "XS012",
                                    f"{stage.label} runs natively for "
                                    f"{', '.join(stage.native_for)}: there the shim runs "
                                    "every command directly"))
        return True
    return False


def _see_shell(index: int, ins: Instruction, shell: _Shell, prefix: str, filename: str) -> None:
    if not ins.json:
        raise SourceError(filename, ins.line, "SHELL needs the JSON form",
                          'write it as SHELL ["executable", "parameters"...], e.g. '
                          'SHELL ["/bin/bash", "-c"]')
    if _routed(ins.json, prefix):
        shell.user, shell.routed, shell.pending = ins.json[1:], True, None
    else:
        shell.user, shell.routed, shell.pending = ins.json, False, index


def _plan_run(lexed: Lexed, i: int, ins: Instruction, shell: _Shell, options: Options, prefix: str,
              style: _Style, plan: _Edits, findings: list[Finding], stage: Stage) -> int:
    """Plan one RUN of a foreign stage that does not go through the bundle yet; 1 if it or the
    SHELL it runs under changes."""
    mount = options.mode is Mode.MOUNT
    flags = [_mount_flag(options)] if mount else []
    exec_ = layout.Layout(prefix).exec
    if ins.json is not None:
        if not ins.json:
            return 0  # RUN [] runs nothing
        plan.replace[i] = _render(ins.keyword, [*flags, ins.flags_raw], [exec_, *ins.json])
        findings.append(Finding(ins.line, 1, Level.INFO, "XS002",
                                f"{stage.label}: exec-form RUN rewritten to run through the shim"))
        return 1
    if not ins.args and not ins.heredocs:
        return 0  # no command: the builder rejects it, with or without the shim
    if shell.user is None or shell.user == DEFAULT_SHELL:
        # /bin/sh is the shim now: the RUN stays as written, and gains its mount.
        if mount:
            plan.first[i] = _with_flag(lexed.lines[ins.start], ins.keyword, flags[0])
            return 1
        return 0
    changed = 0
    if not shell.routed:
        if shell.pending is not None:
            own = lexed.instructions[shell.pending]
            plan.replace[shell.pending] = _render(own.keyword, [], [exec_, *shell.user])
            line = own.line
        else:
            plan.after.setdefault(i - 1, []).append(
                _render(style.kw("SHELL"), [], [exec_, *shell.user]))
            line = ins.line
        findings.append(Finding(line, 1, Level.INFO, "XS003",
                                f"{stage.label}: SHELL routed through the shim (the user's "
                                "SHELL is set back where the image config takes it)"))
        shell.routed, shell.pending = True, None
        changed = 1
    if mount:
        plan.first[i] = _with_flag(lexed.lines[ins.start], ins.keyword, flags[0])
        changed = 1
    return changed


def _apply_edits(lexed: Lexed, plan: _Edits) -> str:
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
            if k in plan.first:
                span = [plan.first[k], *span[1:]]
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


def patch(text: str, options: Options, filename: str = "Dockerfile") -> PatchResult:
    """Patch a Dockerfile's text. Raises SourceError (bad Dockerfile) or InputError (options)."""
    check_options(options)
    try:
        lexed = lex(text)
    except LexError as e:
        raise SourceError(filename, e.line, e.message,
                          "fix the Dockerfile so that `docker build` accepts it") from None
    stages = analyse(lexed, options, filename)
    plan = _Edits()
    findings: list[Finding] = []
    for stage in stages:
        if stage.foreign:
            stage.needs_patch = _plan_stage(lexed, stage, options, plan, findings, filename)
    findings.sort(key=lambda f: (f.line, f.code))
    new_text = _apply_edits(lexed, plan) if (plan.replace or plan.first or plan.after) else text
    return PatchResult(new_text, stages, findings, lexed)


__all__ = [
    "DEFAULT_SHELL",
    "Finding",
    "Level",
    "Mode",
    "Options",
    "PatchResult",
    "Stage",
    "analyse",
    "check_options",
    "patch",
    "split_lines",
]
