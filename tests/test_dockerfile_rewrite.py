"""The rewriter: which stages are foreign, what each rule writes, and that nothing else moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xshim.builder.cli import exit_status
from xshim.builder.dockerfile import Mode, Options, patch
from xshim.builder.dockerfile_lex import Instruction, Lexed, LexError, lex
from xshim.builder.errors import InputError, SourceError
from xshim.builder.values import parse_platform_list
from xshim.shim import arch

CORPUS = Path(__file__).parent / "corpus" / "dockerfile"
HOST = arch.by_name("x86_64")
P = "/.xshim"
EXEC = f"{P}/bin/xshim-exec"
SH = f"{P}/bin/sh"
MOUNT = "--mount=type=bind,source=.xshim,target=/.xshim"


def opts(mode: str = "copy", platform: str | None = None, **kw: str) -> Options:
    return Options(platforms=parse_platform_list(platform or ""), mode=Mode(mode), host=HOST,
                   **kw)  # type: ignore[arg-type]


def rewrite(text: str, mode: str = "copy", platform: str | None = None) -> str:
    return patch(text, opts(mode, platform)).text


def kinds(text: str, platform: str | None = None) -> list[tuple[str, str | None]]:
    return [(s.kind, s.platform) for s in patch(text, opts("copy", platform)).stages]


# --- the exact output, one example per mode (integration tests rely on this shape) --------------

EXAMPLE = """\
FROM --platform=linux/arm64 debian:bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN echo hi | cat
RUN ["dpkg", "--print-architecture"]
USER nobody

FROM build
RUN id -u
"""

EXAMPLE_COPY = """\
FROM --platform=linux/arm64 debian:bookworm AS build
ARG XSHIM_TRACE
COPY .xshim /.xshim
RUN ["/.xshim/bin/xshim-install"]
SHELL ["/.xshim/bin/xshim-exec", "/bin/bash", "-o", "pipefail", "-c"]
RUN echo hi | cat
RUN ["/.xshim/bin/xshim-exec", "dpkg", "--print-architecture"]
USER nobody
USER 0:0
RUN ["/.xshim/bin/xshim-restore", "--remove-bundle"]
USER nobody
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

FROM build
ARG XSHIM_TRACE
USER 0:0
COPY .xshim /.xshim
RUN ["/.xshim/bin/xshim-install"]
USER nobody
SHELL ["/.xshim/bin/xshim-exec", "/bin/bash", "-o", "pipefail", "-c"]
RUN id -u
USER 0:0
RUN ["/.xshim/bin/xshim-restore", "--remove-bundle"]
USER nobody
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
"""

EXAMPLE_MOUNT = """\
FROM --platform=linux/arm64 debian:bookworm AS build
ARG XSHIM_TRACE
RUN --mount=type=bind,source=.xshim,target=/.xshim ["/.xshim/bin/xshim-install", "--mounted"]
SHELL ["/.xshim/bin/xshim-exec", "/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=bind,source=.xshim,target=/.xshim echo hi | cat
RUN --mount=type=bind,source=.xshim,target=/.xshim \
["/.xshim/bin/xshim-exec", "dpkg", "--print-architecture"]
USER nobody
USER 0:0
RUN --mount=type=bind,source=.xshim,target=/.xshim ["/.xshim/bin/xshim-restore"]
USER nobody
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

FROM build
ARG XSHIM_TRACE
USER 0:0
RUN --mount=type=bind,source=.xshim,target=/.xshim ["/.xshim/bin/xshim-install", "--mounted"]
USER nobody
SHELL ["/.xshim/bin/xshim-exec", "/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=bind,source=.xshim,target=/.xshim id -u
USER 0:0
RUN --mount=type=bind,source=.xshim,target=/.xshim ["/.xshim/bin/xshim-restore"]
USER nobody
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
"""


def test_copy_mode_example() -> None:
    assert rewrite(EXAMPLE) == EXAMPLE_COPY


def test_mount_mode_example() -> None:
    assert rewrite(EXAMPLE, "mount") == EXAMPLE_MOUNT


def test_default_shell() -> None:
    text = "FROM --platform=linux/arm64 debian\nRUN apt-get update\n"
    assert rewrite(text) == (
        "FROM --platform=linux/arm64 debian\nARG XSHIM_TRACE\nCOPY .xshim /.xshim\n"
        'RUN ["/.xshim/bin/xshim-install"]\nRUN apt-get update\n'
        'RUN ["/.xshim/bin/xshim-restore", "--remove-bundle"]\n')
    assert rewrite(text, "mount") == (
        "FROM --platform=linux/arm64 debian\nARG XSHIM_TRACE\n"
        f'RUN {MOUNT} ["/.xshim/bin/xshim-install", "--mounted"]\nRUN {MOUNT} apt-get update\n'
        f'RUN {MOUNT} ["/.xshim/bin/xshim-restore"]\n')


# --- which stages are foreign ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "platform", "expected"),
    [
        ("FROM debian\nRUN x\n", None, [("native", "linux/amd64")]),
        ("FROM debian\nRUN x\n", "linux/arm64", [("foreign", "linux/arm64")]),
        ("FROM --platform=linux/arm64 debian\nRUN x\n", None, [("foreign", "linux/arm64")]),
        ("FROM --platform=linux/arm/v7 debian\nRUN x\n", None, [("foreign", "linux/arm/v7")]),
        ("FROM --platform=linux/amd64 debian\nRUN x\n", "linux/arm64", [("native", "linux/amd64")]),
        ("FROM arm64v8/debian\nRUN x\n", None, [("foreign", "linux/arm64")]),
        ("FROM arm32v7/debian\nRUN x\n", None, [("foreign", "linux/arm/v7")]),
        ("FROM arm32v6/alpine\nRUN x\n", None, [("foreign", "linux/arm/v5")]),
        ("FROM ppc64le/debian\nRUN x\n", None, [("foreign", "linux/ppc64le")]),
        ("FROM s390x/debian\nRUN x\n", None, [("foreign", "linux/s390x")]),
        ("FROM riscv64/debian\nRUN x\n", None, [("foreign", "linux/riscv64")]),
        ("FROM registry.example:5000/arm64v8/debian\nRUN x\n", None, [("foreign", "linux/arm64")]),
        ("FROM myorg/arm64v8\nRUN x\n", None, [("native", "linux/amd64")]),
        # i386 runs natively on x86_64 kernels.
        ("FROM i386/debian\nRUN x\n", None, [("native", "linux/386")]),
        ("FROM --platform=$BUILDPLATFORM golang\nRUN x\n", "linux/arm64",
         [("build-platform", "linux/amd64")]),
        ("FROM --platform=${BUILDPLATFORM} golang\nRUN x\n", "linux/arm64",
         [("build-platform", "linux/amd64")]),
        ("FROM --platform=$BUILDOS/$BUILDARCH golang\nRUN x\n", "linux/arm64",
         [("build-platform", "linux/amd64")]),
        ("FROM --platform=$TARGETPLATFORM debian\nRUN x\n", "linux/riscv64",
         [("foreign", "linux/riscv64")]),
        ("FROM --platform=$TARGETPLATFORM debian\nRUN x\n", None, [("native", "linux/amd64")]),
        ("ARG P=linux/s390x\nFROM --platform=$P debian\nRUN x\n", None,
         [("foreign", "linux/s390x")]),
        ("ARG IMG=arm64v8/debian\nFROM ${IMG}:bookworm\nRUN x\n", None,
         [("foreign", "linux/arm64")]),
        ("FROM scratch\nCOPY a /\n", "linux/arm64", [("scratch", None)]),
        ("FROM --platform=windows/amd64 servercore\nRUN x\n", None,
         [("windows", "windows/amd64")]),
        ("FROM registry.example/windows/servercore:ltsc2022\nRUN x\n", "linux/arm64",
         [("windows", "linux/arm64")]),
        # FROM <stage> inherits the parent's platform; stage names are case-insensitive.
        ("FROM --platform=linux/arm64 debian AS Base\nRUN x\nFROM base\nRUN y\n", None,
         [("foreign", "linux/arm64"), ("foreign", "linux/arm64")]),
        ("FROM --platform=$BUILDPLATFORM debian AS b\nRUN x\nFROM B\nRUN y\n", "linux/arm64",
         [("build-platform", "linux/amd64"), ("build-platform", "linux/amd64")]),
    ],
)
def test_stage_platforms(text: str, platform: str | None,
                         expected: list[tuple[str, str | None]]) -> None:
    assert kinds(text, platform) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # One Dockerfile built for two platforms: foreign when foreign for either.
        ("FROM debian\nRUN x\n", [("foreign", "linux/arm64", ("linux/amd64",))]),
        ("FROM --platform=$TARGETPLATFORM debian\nRUN x\n",
         [("foreign", "linux/arm64", ("linux/amd64",))]),
        ("FROM --platform=linux/amd64 debian\nRUN x\n", [("native", "linux/amd64", ())]),
        ("FROM --platform=$BUILDPLATFORM golang AS b\nRUN x\nFROM debian\nCOPY --from=b / /\n"
         "RUN y\nFROM b\nRUN z\n",
         [("build-platform", "linux/amd64", ()), ("foreign", "linux/arm64", ("linux/amd64",)),
          ("build-platform", "linux/amd64", ())]),
        ("FROM debian AS a\nRUN x\nFROM a\nRUN y\n",
         [("foreign", "linux/arm64", ("linux/amd64",))] * 2),
    ],
)
def test_platform_lists(text: str, expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    stages = patch(text, opts("copy", "linux/amd64,linux/arm64")).stages
    assert [(s.kind, s.platform, s.native_for) for s in stages] == expected
    for s in stages:  # a parent is the merged stage itself, not one target's copy of it
        assert s.parent is None or s.parent is stages[s.parent.index]
    three = patch("FROM debian\nRUN x\n", opts("copy", "linux/arm64,linux/riscv64,linux/amd64"))
    assert [(s.platform, s.native_for) for s in three.stages] == [
        ("linux/arm64,linux/riscv64", ("linux/amd64",))]
    assert patch("FROM debian\nRUN x\n", opts("copy", "linux/amd64,linux/386")).text == (
        "FROM debian\nRUN x\n")


@pytest.mark.parametrize(
    "text",
    [
        "FROM debian\nRUN x\n",
        "FROM --platform=$BUILDPLATFORM golang\nRUN go build\n",
        "FROM scratch\nCOPY a /\n",
        "FROM --platform=linux/arm64 debian\nCOPY a /\nENV X=1\n",  # no RUN: nothing to do
        "FROM --platform=windows/amd64 registry.example/windows/servercore\nRUN dir\n",
        "FROM i386/debian\nRUN true\n",
    ],
)
def test_left_alone(text: str) -> None:
    assert rewrite(text, "copy", "linux/arm64" if "golang" in text else None) == text
    assert rewrite(text, "mount", "linux/arm64" if "golang" in text else None) == text


def test_unknown_platform_is_a_source_error() -> None:
    with pytest.raises(SourceError) as e:
        patch("FROM a\n\nFROM --platform=linux/vax debian\nRUN x\n", opts())
    assert e.value.line == 3 and e.value.file == "Dockerfile"
    assert "linux/vax" in e.value.message and e.value.hint


def test_unparseable_dockerfile_is_a_source_error() -> None:
    with pytest.raises(SourceError) as e:
        patch("FROM a\nENV PATH\n", opts(), filename="x/Dockerfile")
    assert e.value.file == "x/Dockerfile" and e.value.line == 2 and exit_status(e.value) == 2


@pytest.mark.parametrize("bundle", ["/abs", "../out", "a b", "a,b", "$X", "a`b"])
def test_bad_bundle_paths_are_refused(bundle: str) -> None:
    with pytest.raises(InputError):
        patch("FROM a\n", Options(bundle=bundle, host=HOST))


# --- RUN rules ---------------------------------------------------------------------------------

FOREIGN = "FROM --platform=linux/arm64 debian\n"


def runs_of(text: str) -> list[Instruction]:
    return [i for i in lex(text).instructions if i.cmd == "run"]


def wrapped(body: str, mode: str = "copy") -> list[Instruction]:
    """The RUN instructions the rewrite produces for a stage body, without the inserted ones."""
    out = runs_of(rewrite(FOREIGN + body, mode))
    return [r for r in out if not (r.json and r.json[0] in (f"{P}/bin/xshim-install",
                                                             f"{P}/bin/xshim-restore"))]


@pytest.mark.parametrize(
    ("body", "copy_argv", "mount_argv"),
    [
        # Under the base image's SHELL both modes keep it (the shim is /bin/sh); mount mode only
        # adds the mount.
        ("RUN a && b\n", None, None),
        ('RUN ["apt-get", "update"]\n', [EXEC, "apt-get", "update"],
         [EXEC, "apt-get", "update"]),
        # Invalid JSON is shell form.
        ("RUN ['x']\n", None, None),
    ],
)
def test_run_rules(body: str, copy_argv: list[str] | None,
                   mount_argv: list[str] | None) -> None:
    original = runs_of(FOREIGN + body)[0]
    (copy_run,) = wrapped(body)
    if copy_argv is None:
        assert copy_run.logical == original.logical
    else:
        assert list(copy_run.json or ()) == copy_argv
    (mount_run,) = wrapped(body, "mount")
    if mount_argv is None:
        assert (mount_run.json, mount_run.args) == (None, original.args)
    else:
        assert list(mount_run.json or ()) == mount_argv
    assert mount_run.flags == (MOUNT,)


def test_run_flags_are_kept() -> None:
    body = 'RUN --mount=type=cache,target=/var/cache/apt --network=none ["apt-get", "update"]\n'
    (c,) = wrapped(body)
    assert c.flags == ("--mount=type=cache,target=/var/cache/apt", "--network=none")
    assert list(c.json or ()) == [EXEC, "apt-get", "update"]
    (m,) = wrapped(body, "mount")
    assert m.flags == (MOUNT, "--mount=type=cache,target=/var/cache/apt", "--network=none")
    body = 'SHELL ["/bin/bash", "-c"]\nRUN --network=host apt-get update\n'
    (c,) = wrapped(body)
    assert c.flags == ("--network=host",) and c.json is None and c.args == "apt-get update"
    (m,) = wrapped(body, "mount")
    assert m.flags == (MOUNT, "--network=host") and m.args == "apt-get update"


# --- SHELL routing: shell-form RUN lines stay as written ---------------------------------------

BASH = ["/bin/bash", "-o", "pipefail", "-c"]
ROUTED = f'SHELL {json.dumps([EXEC, *BASH])}'
USER_SHELL = f"SHELL {json.dumps(BASH)}"
LONG_RUN = """\
RUN set -x; \\
    # install what the build needs
    apt-get update && \\
\t  apt-get install -y --no-install-recommends \\
        gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
"""


def shells_of(text: str) -> list[list[str]]:
    return [list(i.json or ()) for i in lex(text).instructions if i.cmd == "shell"]


def test_shell_form_runs_stay_byte_identical_in_copy_mode() -> None:
    body = f"{USER_SHELL}\n{LONG_RUN}RUN echo hi | cat\n"
    out = rewrite(FOREIGN + body)
    assert LONG_RUN + "RUN echo hi | cat\n" in out  # every byte of both RUNs
    # The SHELL instruction itself is what changed, once, and comes back at the end.
    assert out.count(ROUTED) == 1 and out.index(ROUTED) < out.index("RUN set -x")
    assert shells_of(out) == [[EXEC, *BASH], BASH]
    assert out.endswith(f'RUN ["{P}/bin/xshim-restore", "--remove-bundle"]\n{USER_SHELL}\n')


def test_mount_mode_changes_only_the_first_line_of_a_run() -> None:
    body = f"{USER_SHELL}\n{LONG_RUN}"
    out = rewrite(FOREIGN + body, "mount")
    _, *rest = LONG_RUN.splitlines(keepends=True)
    assert f"RUN {MOUNT} set -x; \\\n" + "".join(rest) in out
    assert shells_of(out) == [[EXEC, *BASH], BASH]
    (run,) = wrapped(body, "mount")
    assert run.flags == (MOUNT,) and run.logical.endswith(runs_of(FOREIGN + body)[0].args)


@pytest.mark.parametrize(("run", "expected"), [
    ("  run a\n", f"  run {MOUNT} a\n"),
    ("RUN\t--network=none a\n", f"RUN {MOUNT}\t--network=none a\n"),
    ("RUN \\\n  a\n", f"RUN {MOUNT} \\\n  a\n"),
    ("RUN\\\n  a\n", f"RUN {MOUNT} \\\n  a\n"),
])
def test_mount_flag_goes_right_after_the_keyword(run: str, expected: str) -> None:
    out = rewrite(FOREIGN + 'SHELL ["/bin/bash", "-c"]\n' + run, "mount")
    assert expected in out
    (r,) = wrapped('SHELL ["/bin/bash", "-c"]\n' + run, "mount")
    (o,) = runs_of(FOREIGN + run)
    assert r.flags == (MOUNT, *o.flags) and r.args == o.args


def test_mount_mode_swaps_bin_sh_around_the_stage() -> None:
    # The same swap as copy mode, made from the mounted bundle: the image's shell is kept beside
    # it (xshim-install --mounted) and put back at the end; the config's SHELL is never touched.
    text = FOREIGN + "RUN a\nUSER app\nRUN b\n"
    runs = runs_of(rewrite(text, "mount"))
    assert [(r.flags, r.json or r.args) for r in runs] == [
        ((MOUNT,), (f"{P}/bin/xshim-install", "--mounted")), ((MOUNT,), "a"), ((MOUNT,), "b"),
        ((MOUNT,), (f"{P}/bin/xshim-restore",))]
    assert shells_of(rewrite(text, "mount")) == []
    assert rewrite(text, "mount").endswith(
        f'RUN {MOUNT} b\nUSER 0:0\nRUN {MOUNT} ["{P}/bin/xshim-restore"]\nUSER app\n')
    assert not [f for f in patch(text, opts("mount")).findings if f.code == "XS014"]


def test_mount_from_a_named_context() -> None:
    o = Options(mode=Mode.MOUNT, mount_from="xshim", host=HOST)
    out = patch(FOREIGN + f"{USER_SHELL}\nRUN a\nRUN [\"b\"]\nRUN c\n", o).text
    flag = "--mount=type=bind,from=xshim,target=/.xshim"
    assert f"RUN {flag} a\n" in out and f"RUN {flag} c\n" in out
    assert f'RUN {flag} ["{EXEC}", "b"]\n' in out
    assert ".xshim /" not in out and "source=" not in out
    # Under the base image's SHELL the RUN, and the install and restore steps, mount it too.
    runs = runs_of(patch(FOREIGN + "RUN a\n", o).text)
    assert [r.flags for r in runs] == [(flag,)] * 3 and (runs[1].json, runs[1].args) == (None, "a")


@pytest.mark.parametrize("bad", [
    Options(mount_from="xshim", host=HOST),  # copy mode
    Options(mode=Mode.MOUNT, mount_from="Bad Name", host=HOST),
    Options(mode=Mode.MOUNT, mount_from="a,b", host=HOST),
])
def test_mount_from_bad_values(bad: Options) -> None:
    with pytest.raises(InputError) as e:
        patch(FOREIGN + "RUN a\n", bad)
    assert e.value.hint and exit_status(e.value) == 2


@pytest.mark.parametrize("mode", ["copy", "mount"])
def test_explicit_default_shell(mode: str) -> None:
    body = 'SHELL ["/bin/sh", "-c"]\nRUN a\n'
    out = rewrite(FOREIGN + body, mode)
    # /bin/sh is the shim in both modes: nothing to route.
    assert shells_of(out) == [["/bin/sh", "-c"]]
    assert ("\nRUN a\n" if mode == "copy" else f"\nRUN {MOUNT} a\n") in out


def test_shell_inherited_from_parent_stage() -> None:
    text = (FOREIGN[:-1] + f" AS a\n{USER_SHELL}\nRUN x\nFROM a\nRUN y\n")
    out = rewrite(text)
    assert "\nRUN x\n" in out and "\nRUN y\n" in out
    # The parent's SHELL is rewritten in place; the child, which has none of its own, routes the
    # inherited one right before its first shell-form RUN. Both stages end with the user's.
    assert shells_of(out) == [[EXEC, *BASH], BASH, [EXEC, *BASH], BASH]
    child = out[out.index("FROM a"):]
    assert child.index(ROUTED) < child.index("RUN y") < child.rindex(USER_SHELL)


def test_shell_not_used_by_a_shell_form_run_is_left_alone() -> None:
    body = f'{USER_SHELL}\nRUN ["make"]\nSHELL ["/bin/dash", "-c"]\nRUN x\n'
    out = rewrite(FOREIGN + body)
    assert shells_of(out) == [BASH, [EXEC, "/bin/dash", "-c"], ["/bin/dash", "-c"]]


@pytest.mark.parametrize("form", ["CMD", "ENTRYPOINT", "cmd"])
@pytest.mark.parametrize("mode", ["copy", "mount"])
def test_shell_form_cmd_sees_the_users_shell(form: str, mode: str) -> None:
    # The builder stores [SHELL..., "serve"] for a shell-form CMD/ENTRYPOINT: the user's SHELL
    # must be in force there, and routing resumes for the next RUN.
    body = f"{USER_SHELL}\nRUN a\n{form} serve --port 80\nRUN b\n{form} [\"x\"]\nRUN c\n"
    out = rewrite(FOREIGN + body, mode)
    ins = [i for i in lex(out).instructions if i.cmd in ("shell", "run", form.lower())
           and not (i.json and i.json[0] in (f"{P}/bin/xshim-install", f"{P}/bin/xshim-restore"))]
    seq = [(i.cmd, list(i.json) if i.cmd == "shell" else i.args) for i in ins]
    flag = f"{MOUNT} " if mode == "mount" else ""
    assert [(c, a if c == "shell" else a.removeprefix(flag)) for c, a in seq] == [
        ("shell", [EXEC, *BASH]), ("run", "a"), ("shell", BASH), (form.lower(), "serve --port 80"),
        ("shell", [EXEC, *BASH]), ("run", "b"), (form.lower(), '["x"]'), ("run", "c"),
        ("shell", BASH)]


@pytest.mark.parametrize("mode", ["copy", "mount"])
def test_cmd_between_shell_and_first_run_keeps_the_users_shell(mode: str) -> None:
    body = f"{USER_SHELL}\nCMD serve\nRUN a\n"
    out = rewrite(FOREIGN + body, mode)
    assert f"\n{USER_SHELL}\nCMD serve\n{ROUTED}\nRUN " in out
    assert config_shells(out) == config_shells(FOREIGN + body)


def test_shell_needs_json_form() -> None:
    with pytest.raises(SourceError) as e:
        patch(FOREIGN + "RUN a\nSHELL /bin/bash -c\nRUN b\n", opts(), filename="Df")
    assert e.value.file == "Df" and e.value.line == 3 and "JSON" in e.value.message
    assert e.value.hint and "SHELL [" in e.value.hint


def test_shell_routing_keeps_crlf_casing_and_missing_final_newline() -> None:
    text = 'from --platform=linux/arm64 debian\r\nshell ["/bin/bash", "-c"]\r\nrun a'
    out = rewrite(text, "mount")
    assert out == ('from --platform=linux/arm64 debian\r\narg XSHIM_TRACE\r\n'
                   f'run {MOUNT} ["{P}/bin/xshim-install", "--mounted"]\r\n'
                   f'shell ["{EXEC}", "/bin/bash", "-c"]\r\nrun {MOUNT} a\r\n'
                   f'run {MOUNT} ["{P}/bin/xshim-restore"]\r\nshell ["/bin/bash", "-c"]')


def test_shell_with_comment_lines_inside_keeps_them() -> None:
    body = 'SHELL ["/bin/bash", \\\n# why bash\n  "-c"]\nRUN a\n'
    out = rewrite(FOREIGN + body)
    assert "# why bash\n" in out and shells_of(out) == [[EXEC, "/bin/bash", "-c"],
                                                       ["/bin/bash", "-c"]]


# --- heredocs: left to the builder, which runs them with /bin/sh (the shim) or the SHELL ------


@pytest.mark.parametrize("heredoc", [
    "RUN <<EOF\necho one\necho two\nEOF\n",
    "RUN <<-EOF\n\techo one\n\t\techo two\n\tEOF\n",
    "RUN python3 <<A 3<<B > /out\nprint(1)\nA\nthree\nB\n",
    "RUN <<-EOF\n\t#!/usr/bin/python3\n\tprint(1)\nEOF\n",  # BuildKit runs /dev/pipes/EOF
])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_heredocs_under_the_default_shell_are_left_to_the_builder(heredoc: str, eol: str) -> None:
    heredoc = heredoc.replace("\n", eol)
    text = FOREIGN.replace("\n", eol) + heredoc
    assert eol + heredoc in rewrite(text)
    first, *rest = heredoc.splitlines(keepends=True)
    out = rewrite(text, "mount")
    assert eol + first.replace("RUN ", f"RUN {MOUNT} ", 1) + "".join(rest) in out
    assert "/dev/pipes" not in out and shells_of(out) == []
    assert out.count("\r\n") == (out.count("\n") if eol == "\r\n" else 0)


@pytest.mark.parametrize("heredoc", [
    "RUN <<EOF\nset -o pipefail\nEOF\n",
    "RUN <<EOF\nEOF\n",  # an empty body: whatever the builder does with it, it still does
    "RUN <<-EOT sh -e\n\techo a\n\tEOT\n",
    "RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n",  # BuildKit runs /dev/pipes/EOF
    "RUN python3 <<A 3<<B > /out\nprint(1)\nA\nthree\nB\n",
])
def test_heredocs_under_a_routed_shell_are_left_to_the_builder(heredoc: str) -> None:
    body = 'SHELL ["/bin/bash", "-eu", "-c"]\n' + heredoc
    out = rewrite(FOREIGN + body)
    assert "\n" + heredoc in out
    assert shells_of(out) == [[EXEC, "/bin/bash", "-eu", "-c"], ["/bin/bash", "-eu", "-c"]]
    first, *rest = heredoc.splitlines(keepends=True)
    out = rewrite(FOREIGN + body, "mount")
    assert "\n" + first.replace("RUN ", f"RUN {MOUNT} ", 1) + "".join(rest) in out
    assert "/dev/pipes" not in out


# --- USER, ONBUILD, casing, line endings, idempotency -----------------------------------------


def test_user_sandwich_only_for_non_root() -> None:
    for user, sandwich in [("root", False), ("0:0", False), ("app", True), ("1000", True)]:
        out = rewrite(FOREIGN + f"RUN x\nUSER {user}\n")
        assert out.endswith(f"USER {user}\nUSER 0:0\nRUN [\"{P}/bin/xshim-restore\", "
                            f"\"--remove-bundle\"]\nUSER {user}\n") == sandwich


def test_onbuild_run_is_reported_not_rewritten() -> None:
    text = FOREIGN + "ONBUILD RUN make\nRUN x\n"
    result = patch(text, opts())
    assert "ONBUILD RUN make\n" in result.text
    assert any(f.code == "XS010" and f.line == 2 for f in result.findings)


def test_inserted_lines_follow_casing_and_crlf() -> None:
    text = "from --platform=linux/arm64 debian\r\nrun x\r\nuser app\r\n"
    out = rewrite(text)
    assert out == (
        "from --platform=linux/arm64 debian\r\narg XSHIM_TRACE\r\ncopy .xshim /.xshim\r\n"
        'run ["/.xshim/bin/xshim-install"]\r\nrun x\r\nuser app\r\nuser 0:0\r\n'
        'run ["/.xshim/bin/xshim-restore", "--remove-bundle"]\r\nuser app\r\n')


def test_missing_final_newline_stays_missing() -> None:
    out = rewrite(FOREIGN + "RUN x")
    assert out.endswith('RUN x\nRUN ["/.xshim/bin/xshim-restore", "--remove-bundle"]')
    out = rewrite(FOREIGN + "RUN x", "mount")
    assert out.endswith(f'RUN {MOUNT} x\nRUN {MOUNT} ["{P}/bin/xshim-restore"]')


def test_trace_arg_not_duplicated() -> None:
    out = rewrite(FOREIGN + "ARG XSHIM_TRACE=1\nRUN x\n", "mount")
    assert out.count("XSHIM_TRACE") == 1


@pytest.mark.parametrize("mode", ["copy", "mount"])
def test_idempotent(mode: str) -> None:
    once = rewrite(EXAMPLE, mode)
    assert rewrite(once, mode) == once


def test_mixing_modes_is_refused() -> None:
    with pytest.raises(SourceError, match="already patched in copy mode"):
        rewrite(rewrite(EXAMPLE), "mount")
    with pytest.raises(SourceError, match="already patched in mount mode"):
        rewrite(rewrite(EXAMPLE, "mount"), "copy")


def test_bundle_and_prefix_options() -> None:
    out = patch(FOREIGN + "RUN x\n", Options(mode=Mode.MOUNT, bundle="build/xs", prefix="/opt/xs",
                                             host=HOST)).text
    install, run, restore = runs_of(out)
    flags = ("--mount=type=bind,source=build/xs,target=/opt/xs",)
    assert (run.flags, run.json, run.args) == (flags, None, "x")
    assert (install.flags, install.json) == (flags, ("/opt/xs/bin/xshim-install", "--mounted"))
    assert (restore.flags, restore.json) == (flags, ("/opt/xs/bin/xshim-restore",))


# --- preservation: every original instruction is still there, in order -------------------------


def _span_text(lexed: Lexed, ins: Instruction) -> str:
    return "".join(lexed.lines[ins.start:ins.end]).rstrip("\r\n")


def _is_inserted(ins: Instruction, users: set[str], shells: set[tuple[str, ...]]) -> bool:
    if ins.cmd == "shell":  # the routed SHELL, or the user's set back
        return ins.json in shells or (ins.json is not None and ins.json[0] == EXEC
                                      and ins.json[1:] in shells)
    if ins.cmd == "arg":
        return ins.args == "XSHIM_TRACE"
    if ins.cmd == "copy":
        return ins.args == f".xshim {P}"
    if ins.cmd == "user":
        return ins.args == "0:0" or ins.args in users
    if ins.cmd == "run":
        return ((ins.flags == () and ins.json in ((f"{P}/bin/xshim-install",),
                                                   (f"{P}/bin/xshim-restore", "--remove-bundle")))
                or (ins.flags == (MOUNT,) and ins.json in ((f"{P}/bin/xshim-install", "--mounted"),
                                                          (f"{P}/bin/xshim-restore",))))
    return False


def _wraps(orig: Instruction, new: Instruction, mode: str) -> bool:
    """Whether ``new`` runs what ``orig`` ran, through the shim, with the same flags."""
    if new.cmd == orig.cmd == "shell":
        return orig.json is not None and new.json == (EXEC, *orig.json)
    if (mode == "mount" and new.cmd == orig.cmd == "run" and new.json is None
            and orig.json is None):  # a shell-form RUN: its first line gains the mount
        return (new.flags == (MOUNT, *orig.flags) and new.args == orig.args
                and new.heredocs == orig.heredocs and new.end - new.start == orig.end - orig.start)
    if new.cmd != "run" or orig.cmd != "run" or new.json is None:
        return False
    flags = list(new.flags)
    if mode == "mount":
        if not flags or flags[0] != MOUNT:
            return False
        flags = flags[1:]
    # Only an exec-form RUN becomes another exec form: through xshim-exec, same flags.
    return tuple(flags) == orig.flags and orig.json is not None and new.json == (EXEC, *orig.json)


def assert_preserved(original: str, patched: str, mode: str) -> None:
    a, b = lex(original), lex(patched)
    users = {i.args for i in a.instructions if i.cmd == "user"}
    shells = {i.json for i in a.instructions if i.cmd == "shell" and i.json}
    j = 0
    for ins in b.instructions:
        if j < len(a.instructions):
            orig = a.instructions[j]
            same = _span_text(b, ins) == _span_text(a, orig)
            # An instruction the file ended inside of loses its dangling escape characters when
            # something is appended after it; what the builder reads stays the same.
            if not same and orig.unterminated:
                same = (ins.keyword, ins.logical.rstrip()) == (orig.keyword, orig.logical.rstrip())
            if same or _wraps(orig, ins, mode):
                j += 1
                continue
        assert _is_inserted(ins, users, shells), f"unexpected instruction {_span_text(b, ins)!r}"
    assert j == len(a.instructions), "an original instruction went missing"


def corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("buildkit/testfiles/*/Dockerfile"))
    files += sorted(CORPUS.glob("buildkit-heredoc/*.Dockerfile"))
    files += sorted(p for p in (CORPUS / "real").iterdir() if p.name != "SOURCES.txt")
    return files


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_round_trip(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    assert rewrite(text) == text  # no foreign stage: byte-identical
    for mode in ("copy", "mount"):
        result = patch(text, opts(mode, "linux/arm64"))
        assert_preserved(text, result.text, mode)
        assert patch(result.text, opts(mode, "linux/arm64")).text == result.text
        lexed = lex(text)
        foreign_runs = any(s.foreign and s.runs for s in result.stages)
        assert (result.text != text) == foreign_runs, lexed.escape


def test_windows_dockerfile_untouched_for_any_platform() -> None:
    text = (CORPUS / "real" / "moby.Dockerfile.windows").read_text()
    assert rewrite(text, "copy", "linux/arm64") == text


# --- property: generated Dockerfiles never lose or reorder an instruction ----------------------

_word = st.text(alphabet="abcxyz019_-./$'\" |&;", min_size=1, max_size=12).filter(
    lambda s: s.strip() and "<<" not in s)
_body = st.lists(_word, min_size=1, max_size=4).map(" ".join)
_run_shell = _body.map(lambda s: f"RUN {s}")
_run_exec = st.lists(_word, min_size=1, max_size=3).map(lambda w: "RUN " + json.dumps(w))
_run_cont = st.tuples(_body, _body).map(lambda t: f"RUN {t[0]} \\\n  # c\n\n  {t[1]}")
_run_flag = _body.map(lambda s: f"RUN --network=none --mount=type=cache,target=/c {s}")
_run_heredoc = st.tuples(st.sampled_from(["", "-", "'"]), _body, st.booleans()).map(
    lambda t: (f"RUN <<{t[0]}EOF" + ("'" if t[0] == "'" else "") + "\n"
               + ("#!/bin/sh\n" if t[2] else "") + f"\t{t[1]}\nEOF"))
_other = st.sampled_from([
    "ENV A=1", "WORKDIR /w", "COPY . /src", "USER app", "USER root", "LABEL a=b", "EXPOSE 80",
    'SHELL ["/bin/bash", "-c"]', "# a comment", "", "ARG X=1", 'CMD ["x"]', "ONBUILD RUN x",
    "CMD serve", "ENTRYPOINT run it", 'SHELL ["/bin/sh", "-c"]',
])
_line = st.one_of(_run_shell, _run_exec, _run_cont, _run_flag, _run_heredoc, _other)
_from = st.sampled_from([
    "FROM --platform=linux/arm64 debian AS s{n}", "FROM debian AS s{n}", "FROM arm32v7/alpine",
    "FROM --platform=$BUILDPLATFORM golang AS s{n}", "FROM s0", "FROM scratch",
    "from --platform=linux/riscv64 debian as s{n}",
])
_stage = st.tuples(_from, st.lists(_line, max_size=6))


@st.composite
def dockerfiles(draw: st.DrawFn) -> str:
    stages = draw(st.lists(_stage, min_size=1, max_size=3))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    parts: list[str] = []
    for n, (frm, body) in enumerate(stages):
        first = frm.format(n=n)
        if n == 0 and first == "FROM s0":
            first = "FROM debian"
        parts.append(first)
        parts.extend(body)
    text = eol.join(ln.replace("\n", eol) for ln in parts)
    return text + (eol if draw(st.booleans()) else "")


def config_shells(text: str) -> list[tuple[str, tuple[str, ...] | None]]:
    """The SHELL the image config holds where the builder reads it: at each shell-form CMD or
    ENTRYPOINT (baked into them) and at the end of each stage (inherited, exported)."""
    out: list[tuple[str, tuple[str, ...] | None]] = []
    ends: dict[str, tuple[str, ...] | None] = {}
    shell: tuple[str, ...] | None = None
    name: str | None = None
    for ins in lex(text).instructions:
        if ins.cmd == "from":
            if name is not None or out:
                out.append(("end", shell))
            if name is not None:
                ends[name] = shell
            words = [w for w in ins.values if isinstance(w, str)]
            shell = ends.get(words[0].lower())
            name = words[2].lower() if len(words) >= 3 else ""
        elif ins.cmd == "shell":
            shell = ins.json
        elif ins.cmd in ("cmd", "entrypoint") and ins.json is None:
            out.append((ins.cmd, shell))
    out.append(("end", shell))
    return out


@pytest.mark.parametrize("mode", ["copy", "mount"])
def test_run_without_a_command_is_left_to_the_builder(mode: str) -> None:
    text = FOREIGN + "RUN --'\nRUN --network=none\n"
    out = rewrite(text, mode)
    assert "\nRUN --'\nRUN --network=none\n" in out
    assert_preserved(text, out, mode)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dockerfiles(), st.sampled_from(["copy", "mount"]),
       st.sampled_from([None, "linux/arm64", "linux/amd64,linux/arm64"]))
def test_generated_dockerfiles_keep_every_instruction(text: str, mode: str,
                                                      platform: str | None) -> None:
    try:
        lex(text)
    except LexError:
        return
    result = patch(text, opts(mode, platform))
    assert_preserved(text, result.text, mode)
    assert config_shells(result.text) == config_shells(text)
    assert patch(result.text, opts(mode, platform)).text == result.text
    if not any(s.foreign and s.runs for s in result.stages):
        assert result.text == text


@pytest.mark.parametrize("tail", ["RUN x \\", "RUN x \\\n\\", "RUN x \\\n# c", "USER app \\"])
def test_file_ending_inside_a_continuation(tail: str) -> None:
    text = FOREIGN + "RUN y\n" + tail
    out = rewrite(text)
    original = lex(text).instructions[-1]
    patched = lex(out).instructions
    kept = [i for i in patched if i.keyword == original.keyword
            and i.logical.rstrip() == original.logical.rstrip()]
    assert kept  # (a USER comes back a second time after the restore step)
    restore = [i for i in patched if i.json == (f"{P}/bin/xshim-restore", "--remove-bundle")]
    assert len(restore) == 1 and patched.index(restore[0]) > patched.index(kept[0])
