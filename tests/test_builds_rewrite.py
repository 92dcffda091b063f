"""Real builds of the SHELL-routed rewrite, and of the native leg of a two-platform patch.

One Dockerfile with a custom SHELL, a RUN of several lines with comments, an exec-form RUN, a
shell-form ENTRYPOINT and CMD (the builder bakes the SHELL in force into them), a non-root USER
and a child stage that inherits the SHELL is patched once for ``linux/amd64,linux/arm64`` with a
bundle made for both, then built by each builder and mode:

* for arm64 (foreign: every RUN through the shim) on the Debian arm64 base image;
* for amd64 (the native leg: the shim must step aside) on a small amd64 image;
* unpatched, for amd64, as the reference.

The patched images must have the reference's config, the patched build logs must show the user's
RUN steps exactly as the unpatched build shows them, the foreign steps must have run as aarch64
and the native ones as x86_64, and no bundle may be left behind.

The builders are the session's (tests/support/buildfix.py): the legacy builder in copy mode,
buildah in both modes, and BuildKit in mount mode, from the build context and from a named build
context (``--build-context xshim=DIR``, ``xshim patch --mount-from xshim``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import builders, imagecheck
from support.buildfix import builder_of, load_into
from xshim.builder.platform import Platform

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

PLATFORMS = "linux/amd64,linux/arm64"
FOREIGN_BASE = "xshim-example/debian:arm64"  # the same base image (and archive) as test_builds
NATIVE_BASE = "xshim-test/rewrite-base:amd64"
PREFIX = "/.xshim"
CONTEXT_NAME = "xshim"

DOCKERFILE = """\
ARG BASE=xshim-example/debian:arm64
FROM ${BASE} AS parent
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A step of several lines with comments: the log must show it as the builder shows it unpatched.
RUN set -u; \\
    # which machine runs this shell, and is the user's SHELL (pipefail) in force
    uname -m > /parent-arch; \\
    if false | true; then echo "SHELL did not apply" >&2; exit 1; fi; \\
    echo "bash $BASH_VERSION" | cat > /parent-bash
RUN ["/bin/bash", "-c", "uname -m > /exec-arch"]
ENTRYPOINT echo entry point
ENV STAGE=parent
USER 65534:65534

FROM parent
RUN test "$(uname -m)" = "$(cat /parent-arch)" && [[ -o pipefail ]] && echo inherited | cat
CMD echo "shell-form command"
RUN uname -m > /tmp/child-arch
"""


@dataclass(frozen=True)
class Kind:
    """A builder and how the patched Dockerfile reaches the bundle."""

    builder: str  # docker | buildkit | buildah
    mode: str  # copy | mount
    named_context: bool = False  # mount mode: the bundle as --build-context NAME=DIR

    @property
    def id(self) -> str:
        return f"{self.builder}-{self.mode}" + ("-context" if self.named_context else "")


KINDS = [
    Kind("docker", "copy"),
    Kind("buildkit", "mount"),
    Kind("buildkit", "mount", named_context=True),
    Kind("buildah", "copy"),
    Kind("buildah", "mount"),
    Kind("buildah", "mount", named_context=True),
]


# The builders are the session's (tests/support/buildfix.py, through conftest.py).


def _native_tree(dest: Path) -> Path:
    """An amd64 tree with the host's bash (and the libraries it loads) and static busybox."""
    dest.mkdir()
    dest.chmod(0o755)
    for d in ("bin", "tmp"):
        (dest / d).mkdir()
    (dest / "tmp").chmod(0o1777)
    bash = Path(shutil.which("bash") or "/bin/bash").resolve()
    libs = subprocess.run(["ldd", str(bash)], capture_output=True, text=True, check=True).stdout
    for path in re.findall(r"(/\S+) \(0x", libs):
        target = dest / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(path).resolve(), target)
    shutil.copy2(bash, dest / "bin" / "bash")
    shutil.copy2("/bin/busybox", dest / "bin" / "busybox")
    for applet in ("sh", "uname", "cat"):
        (dest / "bin" / applet).symlink_to("busybox")
    return dest


@pytest.fixture(scope="module")
def bases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``bases(builder)``: the builder with both base images loaded (once per module)."""
    foreign_archive = builders.base_archive(
        builders.finished_tree(), tag=FOREIGN_BASE, platform="linux/arm64",
        config=builders.base_config())  # fmt: skip
    work = tmp_path_factory.mktemp("native-base")
    native_archive = builders.write_image_archive(
        _native_tree(work / "tree"), work / "native.tar", tag=NATIVE_BASE,
        platform=Platform.parse("linux/amd64"), config=builders.base_config())  # fmt: skip
    done: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in done:
            b = builder_of(request, name)
            for archive, tag in ((foreign_archive, FOREIGN_BASE), (native_archive, NATIVE_BASE)):
                load_into(b, archive, tag)
            done[name] = b
        return done[name]

    return get


def _xshim(*args: str, cwd: Path) -> builders.Result:
    return builders.run(["xshim", *args], cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "xshim-bundle"
    _xshim("bundle", "--platform", PLATFORMS, "-o", str(out), cwd=out.parent).check()
    return out


def _build(b: Any, kind: Kind, ctx: Path, dockerfile: Path, tag: str, platform: str, base: str,
           bundle: Path | None) -> builders.Result:
    args = {"BASE": base, "XSHIM_TRACE": "1"}
    if kind.builder == "docker":
        return b.build(ctx, dockerfile, tag, build_args=args)  # type: ignore[no-any-return]
    # BuildKit, buildah 1.28 and podman 4.3 all take a named build context.
    extra = (["--build-context", f"{CONTEXT_NAME}={bundle}"]
             if kind.named_context and bundle is not None else [])
    return b.build(ctx, dockerfile, tag, platform=platform,  # type: ignore[no-any-return]
                   build_args=args, extra=extra)


# The legacy builder's "Step 2/9 : RUN ...", buildah's "STEP 2/9: RUN ...", BuildKit's
# "#7 [parent 2/9] RUN ..." (printed again when its output resumes: once per vertex number).
_STEP = re.compile(r"^(?:\[\d+/\d+\] )?(?:Step \d+/\d+ :|STEP \d+/\d+:) (.*)$", re.MULTILINE)
_BUILDKIT_STEP = re.compile(r"^#(\d+) \[[^\]]*\b\d+/\d+\] (.*)$", re.MULTILINE)


def _steps(log: str, kind: Kind) -> list[str]:
    if kind.builder != "buildkit":
        return _STEP.findall(log)  # type: ignore[no-any-return]
    seen: dict[str, str] = {}
    for number, step in _BUILDKIT_STEP.findall(log):
        seen.setdefault(number, step)
    return [seen[n] for n in sorted(seen, key=int)]


def user_steps(log: str, kind: Kind) -> list[str]:
    """The build steps of a log as the builder printed them, without the ones the patch added
    and without what it changed on purpose: the mount on a RUN's first line, xshim-exec in front
    of an exec-form RUN, the SHELL and USER lines, and FROM (the base image differs)."""
    out = []
    for step in _steps(log, kind):
        word = step.split(" ", 1)[0].upper()
        if word in ("FROM", "SHELL", "USER"):
            continue
        if step in ("ARG XSHIM_TRACE", f"COPY .xshim {PREFIX}"):
            continue
        if f"{PREFIX}/bin/xshim-install" in step or f"{PREFIX}/bin/xshim-restore" in step:
            continue
        step = re.sub(r"^RUN --mount=type=bind,(source=[^, ]+|from=[^, ]+),target=\S+ ", "RUN ",
                      step)
        out.append(step.replace(f'"{PREFIX}/bin/xshim-exec", ', ""))
    return out


@dataclass
class Builds:
    kind: Kind
    foreign: builders.Result
    native: builders.Result
    reference: builders.Result
    tags: dict[str, str]
    builder: Any


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          bases: Any, bundle: Path) -> Any:  # fmt: skip
    """``built(kind)``: the three builds of one kind (once per module)."""
    done: dict[str, Builds] = {}
    references: dict[str, builders.Result] = {}

    def get(kind: Kind) -> Builds:
        if kind.id in done:
            return done[kind.id]
        b = bases(kind.builder)
        ctx = tmp_path_factory.mktemp(f"ctx-{kind.id}")
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        patch_args = ["patch", "Dockerfile", "-o", "Dockerfile.xshim", "--mode", kind.mode,
                      "--platform", PLATFORMS]  # fmt: skip
        if kind.named_context:
            patch_args += ["--bundle", str(bundle), "--mount-from", CONTEXT_NAME]
        else:
            shutil.copytree(bundle, ctx / ".xshim", symlinks=True)
            patch_args += ["--bundle", ".xshim"]
        _xshim(*patch_args, cwd=ctx).check()
        patched = ctx / "Dockerfile.xshim"
        tags = {leg: f"xshim-test/rewrite-{leg}:{kind.id}" for leg in ("foreign", "native")}
        tags["reference"] = f"xshim-test/rewrite-reference:{kind.builder}"
        if kind.builder not in references:
            references[kind.builder] = _build(b, kind, ctx, ctx / "Dockerfile",
                                              tags["reference"], "linux/amd64", NATIVE_BASE, None)
        foreign = _build(b, kind, ctx, patched, tags["foreign"], "linux/arm64", FOREIGN_BASE,
                         bundle)
        native = _build(b, kind, ctx, patched, tags["native"], "linux/amd64", NATIVE_BASE, bundle)
        done[kind.id] = Builds(kind, foreign, native, references[kind.builder], tags, b)
        return done[kind.id]

    return get


def _read(root: Path, path: str) -> str:
    return builders.inside(root, path).read_text().strip()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.id)
def test_shell_routed_build(built: Any, kind: Kind) -> None:
    bs: Builds = built(kind)
    bs.reference.check()
    bs.foreign.check()
    bs.native.check()
    reference = builders.pick_config(bs.builder.config(bs.tags["reference"])["Config"])
    assert reference["Shell"] == ["/bin/bash", "-o", "pipefail", "-c"]
    # Docker bakes the SHELL in force into a shell-form ENTRYPOINT; buildah always /bin/sh -c.
    assert reference["Entrypoint"][-1] == "echo entry point"
    for leg in ("foreign", "native"):
        cfg = bs.builder.config(bs.tags[leg])
        assert builders.pick_config(cfg["Config"]) == reference, leg
        assert (cfg["Os"], cfg["Architecture"]) == (
            ("linux", "arm64") if leg == "foreign" else ("linux", "amd64"))
    # The user's steps, as the builder prints them unpatched, in the same order.
    expected = user_steps(bs.reference.output, kind)
    assert any(s.startswith("RUN set -u;") and "# which" not in s for s in expected), (
        bs.reference.output[-3000:])
    assert user_steps(bs.foreign.output, kind) == expected
    assert user_steps(bs.native.output, kind) == expected
    # XSHIM_TRACE=1: the user's shell, started by the routed SHELL the child stage inherited,
    # ran under the emulator...
    trace = r"xshim\[\d+\] \S*bash -o pipefail -c uname -m > /tmp/child-arch  → \S*qemu-aarch64"
    assert re.search(trace, bs.foreign.output), "no trace of the child's RUN"
    # ...and the native leg ran without the supervisor: nothing from xshim in its log.
    # (BuildKit prefixes a step's lines with "#N seconds", and names a context "xshim" itself.)
    assert not re.search(r"(?m)^(?:#\d+ [\d.]+ )?xshim(?:\[\d+\]|:)", bs.native.output)
    assert "no emulator" not in bs.native.output
    for leg, machine in (("foreign", "aarch64"), ("native", "x86_64")):
        with bs.builder.rootfs(bs.tags[leg]) as root:
            for path in ("/parent-arch", "/exec-arch", "/tmp/child-arch"):
                assert _read(root, path) == machine, (leg, path)
            assert _read(root, "/parent-bash").startswith("bash ")
            assert not (root / PREFIX.lstrip("/")).exists()
            assert not os.path.lexists(root / f"{PREFIX.lstrip('/')}-guest")
            assert os.readlink(root / "bin" / "sh") == ("dash" if leg == "foreign" else "busybox")
    # The foreign image's /bin/sh chain is the base image's, byte for byte.
    with bs.builder.rootfs(bs.tags["foreign"]) as root:
        assert imagecheck.chain(root, "/bin/sh") == imagecheck.chain(builders.finished_tree(),
                                                                      "/bin/sh")

