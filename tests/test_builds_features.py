"""BuildKit's Dockerfile features in a foreign stage, each builder's known limits, and what copy
mode costs in the final image.

One multi-feature Dockerfile (heredocs, RUN --mount of every type, RUN --network=none, COPY
--from between foreign stages, $TARGETPLATFORM/$TARGETARCH with an ARG before FROM, a custom
SHELL, a non-root USER) is patched and built with dockerd 26's BuildKit in both modes, and with
buildah and podman in both modes minus what they lack (shown on native builds without xshim);
every feature leaves a file written by an arm64 program, checked one test per feature. apt-get
with network runs on every builder and mode.
"""

from __future__ import annotations

import concurrent.futures
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import builders, imagecheck
from support.buildfix import (
    BASE_TAG,
    KINDS,
    PLATFORM,
    Kind,
    build,
    builder_of,
    kind_id,
    load_into,
    make_context,
    patch,
    run_failed,
    xshim,
)
from xshim.builder.platform import Platform

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

BUILDKIT = [k for k in KINDS if k.builder == "buildkit"]
FEATURE_KINDS = [k for k in KINDS if k.builder != "docker"]  # the legacy builder has no --mount

# ARG before FROM, FROM --platform=$TARGETPLATFORM; $TARGETARCH in the base name where the
# builder has it (buildah 1.28 and podman 4.3 leave it empty in FROM: see the limits below).
HEAD = """\
ARG BASE=xshim-example/debian
FROM --platform=$TARGETPLATFORM ${{BASE}}:{arch} AS first
ARG TARGETARCH
RUN mkdir -p /out && echo "$TARGETARCH" > /out/targetarch
"""

# feature -> the step of the first stage that proves it
STAGE1 = {
    "heredoc": """\
RUN <<EOT
set -e
uname -m > /out/heredoc-plain
EOT
""",
    "heredoc-shebang": """\
RUN <<EOT
#!/bin/bash
set -euo pipefail
dpkg --print-architecture > /out/heredoc-shebang
echo "${BASH_VERSION%%.*}" >> /out/heredoc-shebang
EOT
""",
    "heredoc-dash-to-command": """\
RUN <<-EOT sh -e
\tuname -m > /out/heredoc-dash
\tgrep -qx aarch64 /out/heredoc-dash
\tEOT
""",
    "mount-cache": """\
RUN --mount=type=cache,target=/var/cache/feat \\
    uname -m > /var/cache/feat/m && cp /var/cache/feat/m /out/cache-mount
""",
    "mount-bind": """\
RUN --mount=type=bind,source=bound.txt,target=/mnt/bound.txt \\
    cp /mnt/bound.txt /out/bind-mount && uname -m >> /out/bind-mount
""",
    "mount-secret": """\
RUN --mount=type=secret,id=feat \\
    test "$(cat /run/secrets/feat)" = s3cr3t && uname -m > /out/secret-mount
""",
    "mount-tmpfs": """\
RUN --mount=type=tmpfs,target=/scratch \\
    uname -m > /scratch/m && grep -q ' /scratch tmpfs ' /proc/mounts \\
    && cp /scratch/m /out/tmpfs-mount
""",
    "network-none": """\
RUN --network=none \\
    test "$(ls /sys/class/net | grep -vx lo | wc -l)" -eq 0 && uname -m > /out/network-none
""",
}

# COPY --from between foreign stages, a custom SHELL, a non-root USER.
STAGE2 = """\
FROM --platform=$TARGETPLATFORM ${{BASE}}:{arch}
COPY --from=first /out/ /out/
RUN uname -m > /out/copy-from && cat /out/targetarch >> /out/copy-from
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if false | true; then exit 1; fi; uname -m | tee /out/shell
RUN useradd --create-home --uid 1000 app && install -d -o app /home/app/out
USER app
RUN id -un > /home/app/out/user && uname -m >> /home/app/out/user
USER root
RUN cp -r /home/app/out/. /out/
USER app
WORKDIR /home/app
"""

# feature -> (file under /out, its expected text): each written by arm64 programs in that step.
FEATURES = {
    "heredoc": ("heredoc-plain", "aarch64\n"),
    "heredoc-shebang": ("heredoc-shebang", "arm64\n5\n"),
    "heredoc-dash-to-command": ("heredoc-dash", "aarch64\n"),
    "targetarch": ("targetarch", "arm64\n"),
    "mount-cache": ("cache-mount", "aarch64\n"),
    "mount-bind": ("bind-mount", "bind-data\naarch64\n"),
    "mount-secret": ("secret-mount", "aarch64\n"),
    "mount-tmpfs": ("tmpfs-mount", "aarch64\n"),
    "network-none": ("network-none", "aarch64\n"),
    "copy-from": ("copy-from", "aarch64\narm64\n"),
    "shell": ("shell", "aarch64\n"),
    "user": ("user", "app\naarch64\n"),
}

# What buildah 1.28 and podman 4.3 cannot do, patched or not (test_buildah_podman_limits).
NOT_IN_BUILDAH = {"heredoc", "heredoc-shebang", "heredoc-dash-to-command", "network-none"}


def supported(builder: str) -> list[str]:
    return sorted(set(FEATURES) - (NOT_IN_BUILDAH if builder != "buildkit" else set()))


def features_dockerfile(builder: str) -> str:
    arch = "${TARGETARCH}" if builder == "buildkit" else "arm64"
    steps = "".join(STAGE1[f] for f in STAGE1 if f in supported(builder))
    return HEAD.format(arch=arch) + steps + "\n" + STAGE2.format(arch=arch)


@dataclass
class Built:
    kind: Kind
    tag: str
    result: builders.Result
    builder: Any


@pytest.fixture(scope="module")
def feature_builds(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, bundle: Path
) -> Callable[[Kind], Built]:
    done: dict[str, Built] = {}

    def get(kind: Kind) -> Built:
        if kind.id not in done:
            work = tmp_path_factory.mktemp(f"features-{kind.id}")
            ctx = make_context(work / "ctx", features_dockerfile(kind.builder), bundle)
            (ctx / "bound.txt").write_text("bind-data\n")
            (work / "secret.txt").write_text("s3cr3t")  # outside the context, as secrets are
            patched = patch(ctx, kind.mode, "--platform", PLATFORM)
            tag = f"xshim-test/features:{kind.id}"
            r = build(request, kind, ctx, patched, tag,
                      extra=["--secret", f"id=feat,src={work / 'secret.txt'}"])  # fmt: skip
            done[kind.id] = Built(kind, tag, r, builder_of(request, kind.builder))
        built = done[kind.id]
        built.result.check()
        return built

    return get


@pytest.fixture(scope="module", params=FEATURE_KINDS, ids=kind_id)
def features(request: pytest.FixtureRequest, feature_builds: Any) -> Built:
    return feature_builds(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def features_out(feature_builds: Any) -> Callable[[Kind], dict[str, str]]:
    """``features_out(kind)``: the files the features build left in /out, by name."""
    done: dict[str, dict[str, str]] = {}

    def get(kind: Kind) -> dict[str, str]:
        if kind.id not in done:
            built = feature_builds(kind)
            with built.builder.rootfs(built.tag) as root:
                out = builders.inside(root, "/out")
                done[kind.id] = {p.name: p.read_text() for p in out.iterdir()}
        return done[kind.id]

    return get


def test_features_image(features: Built, base_tree: Path) -> None:
    imagecheck.assert_platform(features.builder, features.tag, PLATFORM)
    with features.builder.rootfs(features.tag) as root:
        imagecheck.assert_clean(root, base_tree, {"out"})
    want = builders.pick_config(builders.base_config())
    want.update(Shell=["/bin/bash", "-o", "pipefail", "-c"], User="app", WorkingDir="/home/app")
    assert imagecheck.image_config(features.builder, features.tag) == want
    # XSHIM_TRACE=1: the steps' programs ran through the arm64 emulator.
    assert re.search(r"xshim\[\d+\] \S*/uname -m .*→ qemu-aarch64", features.result.output)


@pytest.mark.parametrize(
    ("kind", "feature"),
    [(k, f) for k in FEATURE_KINDS for f in supported(k.builder)],
    ids=[f"{k.id}-{f}" for k in FEATURE_KINDS for f in supported(k.builder)],
)
def test_feature(features_out: Any, kind: Kind, feature: str) -> None:
    got = features_out(kind)
    name, text = FEATURES[feature]
    assert got.get(name) == text, sorted(got)


@pytest.mark.parametrize("kind", BUILDKIT, ids=kind_id)
def test_failing_heredoc_run_fails_the_build(
    request: pytest.FixtureRequest, kind: Kind, bundle: Path, tmp_path: Path
) -> None:
    text = (f"FROM --platform={PLATFORM} {BASE_TAG}\nRUN <<EOT\necho before\nexit 42\n"
            "echo not reached\nEOT\nRUN touch /after\n")  # fmt: skip
    ctx = make_context(tmp_path / "ctx", text, bundle)
    r = build(request, kind, ctx, patch(ctx, kind.mode), f"xshim-test/failing-heredoc:{kind.id}")
    assert r.returncode != 0 and run_failed(kind, r.output, 42), r.output[-2000:]
    assert re.search(r"^#\d+ [\d.]+ before$", r.output, re.M), r.output[-2000:]
    assert not re.search(r"^#\d+ [\d.]+ not reached$", r.output, re.M)


# --- known limits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_heredoc_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-binary amd64 image (static busybox) for builds that need no xshim at all."""
    tree = tmp_path_factory.mktemp("native-tree")
    tree.chmod(0o755)
    (tree / "bin").mkdir()
    (tree / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (tree / "bin" / "busybox").chmod(0o755)
    (tree / "bin" / "sh").symlink_to("busybox")
    out = tmp_path_factory.mktemp("native-image") / "busybox.tar"
    return builders.write_image_archive(  # type: ignore[no-any-return]
        tree, out, tag="xshim-test/native:amd64", platform=Platform.parse("linux/amd64"),
        config={"Cmd": ["sh"]}
    )


# limit -> (a native Dockerfile's steps, what buildah 1.28 / podman 4.3 say about them)
BUILDAH_LIMITS = {
    # Heredocs came with buildah 1.33 / podman 5 (Debian 13). There, a `#!` heredoc in mount
    # mode under --isolation chroot fails on /dev/pipes, unpatched too.
    "heredoc": ("FROM xshim-test/native:amd64\nRUN <<EOT\n#!/bin/sh\necho ran > /m\nEOT\n",
                'Unknown instruction: "ECHO"'),
    "run-network": ("FROM xshim-test/native:amd64\nRUN --network=none true\n",
                    "RUN only supports the --mount flag"),
    "targetarch-in-from": ("FROM xshim-test/native:${TARGETARCH}\nRUN true\n",
                           "invalid reference format"),
}


@pytest.mark.parametrize("limit", sorted(BUILDAH_LIMITS))
@pytest.mark.parametrize("name", ["buildah", "podman"])
def test_buildah_podman_limits(
    request: pytest.FixtureRequest, name: str, limit: str, native_heredoc_archive: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """What Debian 12's buildah and podman refuse in a native build, without xshim: the
    features the patched builds on them leave out."""
    b = builder_of(request, name)
    load_into(b, native_heredoc_archive, "xshim-test/native:amd64")
    text, says = BUILDAH_LIMITS[limit]
    (tmp_path / "Dockerfile").write_text(text)
    r = b.build(tmp_path, tmp_path / "Dockerfile", "xshim-test/limit")
    assert r.returncode != 0
    assert says in r.output, r.output[-2000:]


HEREDOC_BODY = "RUN <<EOT\necho body-ran > /{name}\nEOT\n"


@pytest.fixture(scope="module")
def legacy26(request: pytest.FixtureRequest, native_heredoc_archive: Path) -> builders.Dockerd:
    d: builders.Dockerd = request.getfixturevalue("loaded")("buildkit")
    d.load(native_heredoc_archive)
    return d


def test_docker26_legacy_builder_drops_a_heredoc_body(
    legacy26: builders.Dockerd, tmp_path: Path
) -> None:
    """Docker 26's legacy builder runs `RUN <<EOT` as `/bin/sh -c <<EOT`: an empty body."""
    (tmp_path / "Dockerfile").write_text(
        "FROM xshim-test/native:amd64\n" + HEREDOC_BODY.format(name="m")
        + 'RUN test ! -e /m && echo "body: dropped"\n'
    )  # fmt: skip
    r = legacy26.build(tmp_path, tmp_path / "Dockerfile", "xshim-test/legacy-heredoc",
                       legacy=True, extra=["--network=host"]).check()  # fmt: skip
    assert "body: dropped" in r.output.splitlines()


def test_patched_heredoc_on_docker26_legacy_builder_matches_unpatched(
    legacy26: builders.Dockerd, bundle: Path, tmp_path: Path
) -> None:
    text = (f"FROM --platform={PLATFORM} {BASE_TAG}\n" + HEREDOC_BODY.format(name="m1")
            + 'SHELL ["/bin/bash", "-c"]\n' + HEREDOC_BODY.format(name="m2")
            + 'RUN test ! -e /m1 && test ! -e /m2 && echo "bodies: dropped"\n')  # fmt: skip
    ctx = make_context(tmp_path / "ctx", text, bundle)
    r = legacy26.build(ctx, patch(ctx, "copy"), "xshim-test/legacy-heredoc-patched",
                       legacy=True, extra=["--network=host"])  # fmt: skip
    assert r.returncode == 0 and "bodies: dropped" in r.output.splitlines(), r.output[-2000:]


# --- copy mode's cost ---------------------------------------------------------------------------


@pytest.mark.parametrize("platforms", ["linux/arm64", "linux/arm64,linux/arm/v7"])
@pytest.mark.parametrize("kind", [Kind("buildkit", "copy"), Kind("buildkit", "mount")],
                         ids=kind_id)  # fmt: skip
def test_bundle_bytes_left_in_the_image(
    request: pytest.FixtureRequest, kind: Kind, platforms: str, hello_deb: Path, tmp_path: Path
) -> None:
    """Copy mode's COPY of the bundle stays in a lower layer though /.xshim is gone from the
    final filesystem; mount mode leaves nothing. Prints the bytes for README."""
    out = tmp_path / "bundle"
    xshim("bundle", "--platform", platforms, "-o", str(out / ".xshim"), cwd=tmp_path).check()
    text = (builders.EXAMPLE_DIR / "Dockerfile").read_text()
    ctx = make_context(tmp_path / "ctx", text, out / ".xshim", {"hello_arm64.deb": hello_deb})
    tag = f"xshim-test/cost:{kind.id}"
    build(request, kind, ctx, patch(ctx, kind.mode, "--platform", PLATFORM), tag).check()
    b = builder_of(request, kind.builder)
    image = b.save(tag, tmp_path / "image.tar")
    per_layer = builders.bundle_bytes(image)
    bundle_size = sum(f.stat().st_size for f in (out / ".xshim").rglob("*") if f.is_file()
                      and not f.is_symlink())  # fmt: skip
    print(f"\n{kind.id} {platforms}: bundle {bundle_size} bytes, left in layers {per_layer}")
    if kind.mode == "mount":
        assert sum(per_layer) == 0
        # What mount mode's /bin/sh swap leaves instead: the final stage's install and restore
        # layers, which hold nothing but the path to /bin/sh and PREFIX-guest (the base image's
        # /bin/sh is a symlink to dash: its 4 bytes of target are the only file bytes).
        ours = [(size, members) for size, members in builders.layers(image)
                if any(".xshim-guest" in name for name, _ in members)
                and all(_swap_path(name) for name, _ in members)]
        kept = sum(n for _, members in ours for name, n in members
                   if name.startswith(".xshim-guest/"))
        print(f"{kind.id} {platforms}: /bin/sh swap layers {[size for size, _ in ours]} bytes, "
              f"{kept} bytes of kept shell: {[[m for m, _ in ms] for _, ms in ours]}")
        assert len(ours) == 2 and kept == len("dash") and sum(s for s, _ in ours) <= 8192
    else:
        # Each foreign stage copies it; only the final stage's layers are in the image (and
        # xshim-install's few bytes of state in the next one).
        assert per_layer.count(bundle_size) == 1, per_layer
        assert bundle_size <= sum(per_layer) < bundle_size + 4096, per_layer


def _swap_path(name: str) -> bool:
    """Whether a layer member is one of mount mode's /bin/sh swap (Debian's /bin is usr/bin; the
    builder's mounts of /etc/hosts and /etc/resolv.conf put /etc in every RUN's layer)."""
    return (name in ("bin", "bin/sh", "usr", "usr/bin", "usr/bin/sh", "etc", ".xshim-guest",
                     ".wh..xshim-guest")
            or name.startswith(".xshim-guest/"))


@pytest.mark.parametrize("name", ["docker", "buildkit"])
def test_legacy_squash_needs_an_experimental_daemon(
    request: pytest.FixtureRequest, name: str, tmp_path: Path
) -> None:
    d: builders.Dockerd = builder_of(request, name)
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_TAG}\n")
    r = d.build(tmp_path, tmp_path / "Dockerfile", "xshim-test/squash", legacy=True,
                extra=["--squash"])  # fmt: skip
    assert r.returncode != 0
    assert "only supported on a Docker daemon with experimental features enabled" in r.output


@pytest.fixture(scope="module")
def experimental(_builders_to_ourselves: None, base_archive: Path) -> Iterator[builders.Dockerd]:
    try:
        d = builders.start_buildkit(name="buildkit-experimental", args=["--experimental"])
    except builders.BuilderUnavailable as e:
        pytest.skip(f"dockerd 26 cannot run here: {e}")
    try:
        d.load(base_archive)
        yield d
    finally:
        d.prune("xshim-test/")
        d.stop()


def test_squash_on_an_experimental_daemon_leaves_no_bundle_bytes(
    experimental: builders.Dockerd, bundle: Path, hello_deb: Path, base_tree: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The legacy builder's way out: `--squash` merges the build's layers into one, in which the
    bundle's COPY and its removal cancel out (here on dockerd 26 --experimental)."""
    text = (builders.EXAMPLE_DIR / "Dockerfile").read_text()
    ctx = make_context(tmp_path / "ctx", text, bundle, {"hello_arm64.deb": hello_deb})
    tag = "xshim-test/squashed:copy"
    experimental.build(ctx, patch(ctx, "copy", "--platform", PLATFORM), tag, legacy=True,
                       extra=["--squash"]).check()
    assert sum(builders.bundle_bytes(experimental.save(tag, tmp_path / "image.tar"))) == 0
    with experimental.rootfs(tag) as root:
        imagecheck.assert_clean(root, base_tree, {"greeting.txt", "data"})
        imagecheck.assert_package(root, hello_deb, "hello", tmp_path / "deb")


# --- apt with the network, every builder --------------------------------------------------------

# apt's download methods drop to user _apt, after which a supervisor without CAP_SYS_PTRACE (no
# builder grants it) cannot read their memory or /proc entries by the usual means; their execs must
# still be emulated. `timeout` (the image's own, emulated) ends a hung step: a stuck download
# method must fail the build, not the test session. The step ends with an exec of a file open for
# writing, which must fail (ETXTBSY) on the builder's own storage too, and a set-ID program run by
# _apt, which must say it keeps _apt's identity.
APT_DOCKERFILE = f"""\
FROM --platform={PLATFORM} {BASE_TAG}
RUN timeout 120 apt-get update \\
 && timeout 120 apt-get install -y --no-install-recommends hello \\
 && hello && su -s /bin/sh _apt -c 'cd /usr && bin/uname -m' \\
 && su -s /bin/sh _apt -c 'chage -l root >/dev/null 2>&1; true' \\
 && cp /bin/true /tmp/busy && (exec 3>>/tmp/busy; /tmp/busy; echo "busy: $?")
"""


@pytest.fixture(scope="module")
def apt_builds(
    request: pytest.FixtureRequest, bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, builders.Result | str]:
    """Every way of building, all at once (the steps wait on the network and on apt's
    children more than on the CPU): kind id -> the build's result, or why it was skipped."""
    out: dict[str, builders.Result | str] = {}
    jobs: dict[str, Callable[[], builders.Result]] = {}
    for kind in KINDS:
        try:
            b = request.getfixturevalue("loaded")(kind.builder)
        except pytest.skip.Exception as e:
            out[kind.id] = str(e)
            continue
        ctx = make_context(tmp_path_factory.mktemp(f"apt-{kind.id}"), APT_DOCKERFILE, bundle)
        dockerfile = patch(ctx, kind.mode)
        # The legacy builder's steps have no network on a daemon without a bridge.
        extra = ["--network=host"] if kind.builder == "docker" else []
        jobs[kind.id] = functools.partial(
            b.build, ctx, dockerfile, f"xshim-test/apt:{kind.id}", platform=PLATFORM, extra=extra,
            build_args={"XSHIM_TRACE": "1"},
        )
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {k: pool.submit(job) for k, job in jobs.items()}
        out.update({k: f.result() for k, f in futures.items()})
    return out


@pytest.mark.parametrize("kind", KINDS, ids=kind_id)
def test_apt_get_install_with_network(
    request: pytest.FixtureRequest, apt_builds: dict[str, builders.Result | str], kind: Kind,
    base_tree: Path,
) -> None:  # fmt: skip
    r = apt_builds[kind.id]
    if isinstance(r, str):
        pytest.skip(r)
    assert r.returncode == 0, r.output[-2000:]
    assert "Hello, world!" in r.output
    # `uname -m` run as _apt: a line of its own after the greeting (builders may prefix lines).
    after = re.sub(r"\x1b\[[0-9;]*m", "", r.output.split("Hello, world!")[1])  # legacy colours
    assert re.search(r"(?m)(^|\s)aarch64\s*$", after), r.output[-3000:]
    assert "Failed to exec method" not in r.output and "cannot emulate" not in r.output
    assert "busy: 126" in r.output, r.output[-3000:]
    # A set-group-ID program run by a non-root user: it cannot change identity, and a line says so.
    assert "/usr/bin/chage is set-group-ID (gid 42) but runs as uid" in r.output, r.output[-3000:]
    # The methods' own execs were emulated (the trace names them) and none fell to the kernel.
    assert re.search(r"xshim\[\d+\] \S*/methods/http .*→ qemu-aarch64", r.output), r.output[-3000:]
    b = builder_of(request, kind.builder)
    tag = f"xshim-test/apt:{kind.id}"
    imagecheck.assert_platform(b, tag, PLATFORM)
    with b.rootfs(tag) as root:
        imagecheck.assert_clean(root, base_tree, set())
        hello = builders.elf_arch(builders.inside(root, "/usr/bin/hello"))
        assert hello is not None and hello.name == "aarch64"
