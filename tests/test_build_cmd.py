"""``xshim build`` end to end: three platforms, real builders, a real registry, no binfmt_misc.

One multi-stage Dockerfile (Debian packages installed with dpkg, a C program compiled with tcc in
a build stage, a non-root USER) over local amd64, arm64 and armhf Debian base images (made from
debootstrap trees, never pulled), built by each builder tests/support/builders.py provides
(buildah, podman, Docker's legacy builder and BuildKit through ``docker buildx``), and pushed to
Debian's docker-registry on 127.0.0.1. The build context's .dockerignore lets through only the
packages, so every build here is also the allowlist case.

Every builder runs the three-platform push; the cheaper cases (OCI archive, --load and run, a
failing RUN) run on every builder too, on the layers that push left in its cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import builders, foreign, multiarch
from xshim.shim import arch as archmod

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

ALL = "linux/amd64,linux/arm64,linux/arm/v7"
# TARGETARCH -> the base image's tag and the Debian architecture of its packages.
TAGS = {"amd64": "amd64", "arm64": "arm64", "arm": "armhf"}
ELF = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armhf"}
DEBIAN = {"linux/amd64": "amd64", "linux/arm64": "arm64", "linux/arm/v7": "armhf"}
PACKAGES = ("hello", "tcc", "libc6-dev", "linux-libc-dev")

DOCKERFILE = """\
ARG TARGETARCH
FROM xshim-test/debian:${TARGETARCH} AS build
COPY debs/ /tmp/debs/
# tcc with only the C library's headers and objects: enough for this program (no apt network).
RUN a=$(dpkg --print-architecture) \\
 && dpkg -i --force-depends /tmp/debs/tcc_$a.deb /tmp/debs/libc6-dev_$a.deb \\
      /tmp/debs/linux-libc-dev_$a.deb \\
 && printf '#include <stdio.h>\\nint main(void){puts("built by tcc");return 0;}\\n' >/tmp/p.c \\
 && tcc -o /usr/local/bin/built /tmp/p.c && /usr/local/bin/built

FROM xshim-test/debian:${TARGETARCH}
COPY debs/ /tmp/debs/
RUN dpkg -i /tmp/debs/hello_$(dpkg --print-architecture).deb && rm -rf /tmp/debs && hello
COPY --from=build /usr/local/bin/built /usr/local/bin/built
RUN useradd --create-home --uid 1000 app
USER app
ENTRYPOINT ["/usr/bin/hello"]
"""
# Everything but the packages is excluded: the bundle must reach the build all the same.
DOCKERIGNORE = "*\n!debs\n"

BUILDERS = ["buildah", "podman", "docker", "buildkit"]
# The name xshim build knows each test builder by.
XSHIM_BUILDER = {"buildah": "buildah", "podman": "podman", "docker": "docker",
                 "buildkit": "buildx"}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[multiarch.Registry]:
    with multiarch.registry() as r:
        yield r


@pytest.fixture(scope="module")
def bases() -> dict[str, Path]:
    """TARGETARCH -> the base image archive tagged xshim-test/debian:TARGETARCH."""
    return {t: multiarch.base_archive(d, f"xshim-test/debian:{t}") for t, d in TAGS.items()}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = foreign.archive_or_skip(foreign.SUITE)
    ctx = tmp_path_factory.mktemp("ctx")
    (ctx / "debs").mkdir()
    for d in DEBIAN.values():
        for pkg in PACKAGES:
            _, deb = archive.fetch_package(pkg, d)
            shutil.copyfile(deb, ctx / "debs" / f"{pkg}_{d}.deb")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / ".dockerignore").write_text(DOCKERIGNORE)
    return ctx


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Env:
    """How ``xshim build`` reaches one builder: its environment, and the builder's own handle."""

    name: str
    env: dict[str, str]
    builder: Any
    # Every build's extra options: the private daemons and podman have no bridge network, so RUN
    # steps use the host's (none of them needs a network).
    extra: tuple[str, ...] = ()

    def build(self, *args: str) -> builders.Result:
        return xshim(self, "build", "--builder", XSHIM_BUILDER[self.name], *self.extra, *args)


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, bases: dict[str, Path],
        registry: multiarch.Registry, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``env(name)``: the session's builder (tests/support/buildfix.py), the three bases loaded,
    its environment for xshim."""
    done: dict[str, Env] = {}

    def get(name: str) -> Env:
        if name in done:
            return done[name]
        base = {**os.environ, **registry.env()}
        if name == "docker":
            d = request.getfixturevalue("dockerd")
            for archive in bases.values():
                d.load(archive)
            # Debian's client, which speaks the daemon's API, first on PATH.
            bindir = tmp_path_factory.mktemp("bin")
            (bindir / "docker").symlink_to(builders.DOCKER)
            e = Env(name, {**d.env(**registry.env()),
                           "PATH": f"{bindir}:{os.environ['PATH']}"}, d)
        elif name == "buildkit":
            # dockerd 26, its client and buildx plugin first on PATH, in their DOCKER_CONFIG.
            d = request.getfixturevalue("buildkit")
            for archive in bases.values():
                d.load(archive)
            e = Env(name, d.env(**registry.env()), d, ("--network", "host"))
        elif name == "podman":
            p = request.getfixturevalue("podman")
            for t, archive in bases.items():
                p.load(archive, f"xshim-test/debian:{t}")
            d = tmp_path_factory.mktemp("podman-conf")
            (d / "storage.conf").write_text(
                f'[storage]\ndriver = "{p.driver}"\ngraphroot = "{p.root}"\n'
                f'runroot = "{p.runroot}"\n')
            (d / "containers.conf").write_text(
                '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n')
            e = Env(name, {**base, "CONTAINERS_STORAGE_CONF": str(d / "storage.conf"),
                           "CONTAINERS_CONF": str(d / "containers.conf")}, p,
                    ("--network", "host"))
        else:
            b = request.getfixturevalue("buildah")
            for t, archive in bases.items():
                b.load(archive, f"xshim-test/debian:{t}")
            conf = tmp_path_factory.mktemp("storage") / "storage.conf"
            conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{b.root}"\n'
                            f'runroot = "{b.runroot}"\n')
            e = Env(name, {**base, "CONTAINERS_STORAGE_CONF": str(conf),
                           "BUILDAH_ISOLATION": "chroot"}, b)
        done[name] = e
        return e

    return get


def xshim(e: Env, *args: str, cwd: Path | None = None) -> builders.Result:
    return builders.run(["xshim", *args], env=e.env, cwd=cwd, timeout=1200)


# --- reading images out of the registry ----------------------------------------------------------


def skopeo(e: Env, *args: str) -> str:
    conf = e.env["CONTAINERS_REGISTRIES_CONF"]
    return builders.run(["skopeo", "--registries-conf", conf, *args], env=e.env).check().output


@dataclass
class Image:
    config: dict[str, Any]
    names: set[str]  # every path of the image's filesystem (the layers with their whiteouts)
    files: dict[str, bytes]  # the wanted files' contents (last layer wins), symlinks as "-> T"
    layer_names: set[str]  # every path in every layer, whiteouts included


# /bin/sh and every hop to the file it is (merged /usr: /bin -> usr/bin, sh -> dash).
SHELL_PATHS = ("bin", "bin/sh", "usr/bin/sh", "usr/bin/dash")
WANTED = (*SHELL_PATHS, "usr/bin/hello", "usr/local/bin/built")


def read_image(e: Env, ref: str, tmp: Path) -> Image:
    """The config, the layers' path names and a few files of the image at ``ref``."""
    out = tmp / "img"
    shutil.rmtree(out, ignore_errors=True)
    conf = e.env["CONTAINERS_REGISTRIES_CONF"]
    builders.run(["skopeo", "--registries-conf", conf, "copy", "--quiet", ref, f"dir:{out}"],
                 env=e.env).check()
    manifest = json.loads((out / "manifest.json").read_text())
    config = json.loads((out / manifest["config"]["digest"].split(":")[1]).read_text())
    names: set[str] = set()
    layer_names: set[str] = set()
    files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        with tarfile.open(out / layer["digest"].split(":")[1]) as tf:
            for m in tf:
                name = m.name.removeprefix("./").rstrip("/")
                layer_names.add(name)
                parent, _, base = name.rpartition("/")
                if base.startswith(".wh."):  # a whiteout hides what lower layers had
                    gone = parent if base == ".wh..wh..opq" else (
                        f"{parent}/{base[4:]}" if parent else base[4:])
                    for n in [n for n in names if n.startswith(gone + "/") or
                              (n == gone and base != ".wh..wh..opq")]:
                        names.discard(n)
                        files.pop(n, None)
                    continue
                names.add(name)
                if name in WANTED:
                    if m.issym():
                        files[name] = f"-> {m.linkname}".encode()
                    elif m.isfile():
                        f = tf.extractfile(m)
                        assert f is not None
                        files[name] = f.read()
    shutil.rmtree(out, ignore_errors=True)
    return Image(config, names, files, layer_names)


def elf_arch(data: bytes) -> str | None:
    try:
        a = archmod.arch_of(archmod.parse_ident(data[:64]))
    except archmod.NotElfError:
        return None
    return a.name if a else None


def _bundle(names: set[str]) -> set[str]:
    return {n for n in names if n == ".xshim" or n.startswith(".xshim/")}


def check_image(img: Image, platform: str, mode: str) -> None:
    os_, arch, *variant = platform.split("/")
    assert img.config["os"] == os_ and img.config["architecture"] == arch, img.config
    assert img.config.get("variant", "") == (variant[0] if variant else ""), img.config
    assert img.config["config"].get("User") == "app"
    assert not _bundle(img.names), f"{platform}: the bundle is in the image"
    if mode == "mount":  # bind-mounted per RUN: not a byte of it in any layer
        assert not _bundle(img.layer_names), f"{platform}: the bundle is in a layer"
    for prog in ("usr/bin/hello", "usr/local/bin/built"):
        assert elf_arch(img.files[prog]) == ELF[platform], f"{platform}: /{prog}"
    base = multiarch.tree(DEBIAN[platform])
    for path in SHELL_PATHS:
        node = base / path
        if any((base / parent).is_symlink() for parent in Path(path).parents):
            continue  # reached through a link: the hop is checked at its real place
        if node.is_symlink():
            want: bytes | None = f"-> {os.readlink(node)}".encode()
        elif node.is_file():
            want = node.read_bytes()
        else:
            continue  # a directory in the base, or under one that is a link
        assert img.files.get(path) == want, f"{platform}: /{path} differs from the base image's"
    assert "usr/bin/dash" in img.files


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDERS)
def test_build_push_three_platforms(env: Any, name: str, context: Path,
                                    registry: multiarch.Registry, tmp_path: Path) -> None:
    e = env(name)
    before = _snapshot(context)
    tag = f"{registry.host}/xs/app-{name}:1"
    meta = tmp_path / "meta.json"
    # No cache: every step runs here (the later tests reuse this build's layers).
    r = e.build("--platform", ALL, "-t", tag, "--push", "--no-cache", "--metadata-file",
                str(meta), str(context))
    r.check()
    assert _snapshot(context) == before, "the build changed the user's context"
    # Each platform's output is prefixed, and the foreign ones ran their steps through qemu.
    # Without colours, and without BuildKit's step number and time after the platform.
    lines = [re.sub(r"^(\[\S+\] )#\d+ [\d.]+ ", r"\1",
                    re.sub(r"\x1b\[[0-9;]*m", "", line)).strip() for line in r.output.splitlines()]
    for platform, said in (("linux/arm/v7", "built by tcc"), ("linux/arm64", "Hello, world!")):
        assert f"[{platform}] {said}" in lines, [x for x in lines if said in x or "tcc" in x]

    index = json.loads(skopeo(e, "inspect", "--raw", f"docker://{tag}"))
    got = sorted((m["platform"]["os"], m["platform"]["architecture"],
                  m["platform"].get("variant", "")) for m in index["manifests"])
    assert got == [("linux", "amd64", ""), ("linux", "arm", "v7"), ("linux", "arm64", "v8")]
    data = json.loads(meta.read_text())
    digest = "sha256:" + hashlib.sha256(
        skopeo(e, "inspect", "--raw", f"docker://{tag}").encode()).hexdigest()
    assert data["containerimage.digest"] == digest
    by_platform = {p: v["digest"] for p, v in data["xshim.platforms"].items()}
    assert set(by_platform) == {"linux/amd64", "linux/arm64", "linux/arm/v7"}
    for m in index["manifests"]:
        p = m["platform"]
        name_ = "/".join(x for x in (p["os"], p["architecture"],
                                     "" if p["architecture"] == "arm64" else p.get("variant"))
                         if x)
        assert by_platform[name_] == m["digest"]
        check_image(read_image(e, f"docker://{tag.rsplit(':', 1)[0]}@{m['digest']}", tmp_path),
                    name_, "copy" if name == "docker" else "mount")


@pytest.mark.parametrize("name", BUILDERS)
def test_build_oci_archive(env: Any, name: str, context: Path, tmp_path: Path) -> None:
    e = env(name)
    out = tmp_path / "app.tar"
    e.build("--platform", "linux/arm64,linux/arm/v7", "-o", f"type=oci,dest={out}",
            "--progress", "quiet", str(context)).check()
    index = json.loads(skopeo(e, "inspect", "--raw", f"oci-archive:{out}"))
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["arm64", "arm"]
    info = json.loads(skopeo(e, "--override-arch", "arm", "--override-variant", "v7",
                             "inspect", f"oci-archive:{out}"))
    assert (info["Os"], info["Architecture"]) == ("linux", "arm")


@pytest.mark.parametrize("name", BUILDERS)
def test_load_one_foreign_platform_and_run_it(env: Any, name: str, context: Path,
                                              tmp_path: Path) -> None:
    e = env(name)
    tag = f"xshim-test/loaded:{name}"
    trace = tmp_path / "trace.jsonl"
    e.build("--platform", "linux/arm/v7", "--load", "-t", tag, "--trace", str(trace),
            "--progress", "quiet", str(context)).check()
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    tcc = [r for r in records if r["event"] == "exec" and r["path"].endswith("/tcc")]
    assert tcc and all(r["platform"] == "linux/arm/v7" and r["decision"] == "emulate"
                       and r["emulator"] in ("qemu-arm", "qemu-arm-static")
                       and r["step"].startswith("RUN ") for r in tcc), tcc
    bundle = tmp_path / "bundle"
    xshim(e, "bundle", "--platform", "linux/arm/v7", "-o", str(bundle)).check()
    if name in ("docker", "buildkit"):
        r = e.builder.docker("run", "--rm", "--network", "none", "-v", f"{bundle}:/.xshim:ro",
                             "--entrypoint", "/.xshim/bin/xshim-exec", tag,
                             "/usr/local/bin/built")
    else:
        # buildah, or buildah on podman's store: `podman run` here cannot set its default
        # open-files limit (runc: "error setting rlimit type 7"), buildah's chroot run sets none.
        def buildah(*args: str) -> builders.Result:
            if name == "buildah":
                return e.builder.buildah(*args)
            p = e.builder
            return builders.run(["buildah", "--root", str(p.root), "--runroot", str(p.runroot),
                                 "--storage-driver", p.driver, *args], env=e.env)

        ctr = buildah("from", "--pull-never", tag).check().output.split()[-1]
        try:
            r = buildah("run", "--isolation", "chroot", "-v", f"{bundle}:/.xshim:ro",
                        ctr, "/.xshim/bin/xshim-exec", "/usr/local/bin/built")
        finally:
            buildah("rm", ctr)
    assert r.check().output.splitlines()[-1] == "built by tcc"


@pytest.mark.parametrize("name", ["buildah", "buildkit"])
def test_accelerated_build_runs_twins(env: Any, name: str, context: Path, tmp_path: Path) -> None:
    """--accelerate reaches the bundle in copy mode (buildah) and in mount mode (BuildKit's
    named context): dpkg -i's dpkg-deb and tar run as their twins, and the image is the same."""
    e = env(name)
    tag = f"xshim-test/twins:{name}"
    trace = tmp_path / "trace.jsonl"
    e.build("--platform", "linux/arm64", "--accelerate", "--base", str(multiarch.tree("arm64")),
            "--load", "-t", tag, "--trace", str(trace), "--progress", "quiet",
            str(context)).check()
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    twinned = {r["path"].rsplit("/", 1)[1] for r in records
               if r["event"] == "exec" and r["decision"] == "twin"}
    assert {"dpkg-deb", "tar"} <= twinned, sorted(twinned)
    hello = [r for r in records if r["event"] == "exec" and r["path"] == "/usr/bin/hello"]
    assert hello and all(r["decision"] == "emulate" for r in hello), hello


FAILING = """\
ARG TARGETARCH
FROM xshim-test/debian:${TARGETARCH}
RUN true
RUN if [ "$(dpkg --print-architecture)" = arm64 ]; then exit 7; fi
"""


@pytest.mark.parametrize("name", BUILDERS)
def test_failing_run_names_the_platform_and_status(env: Any, name: str, tmp_path: Path) -> None:
    e = env(name)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(FAILING)
    r = e.build("--platform", "linux/amd64,linux/arm64",
                "-o", f"type=oci,dest={tmp_path / 'x.tar'}", str(ctx))
    assert r.returncode == 1, r.output[-3000:]
    error = r.output[r.output.index("xshim: error:"):]
    assert error.startswith("xshim: error: linux/arm64: step 'RUN ")
    assert "exited with status 7" in error.splitlines()[0]
    assert "linux/amd64:" not in error
    assert not (tmp_path / "x.tar").exists()


EXECVEAT = """\
FROM xshim-test/debian:arm64
COPY execveat_dirfd /opt/
RUN /opt/execveat_dirfd /bin/uname -m > /machine && cat /machine
"""


@pytest.mark.network
@pytest.mark.parametrize("name", ["buildah", "buildkit"])  # generated context; named context
def test_qemu_suite_puts_that_suites_qemu_in_the_bundle(env: Any, name: str,
                                                        tmp_path: Path) -> None:
    """--qemu-suite trixie: the build's bundle carries trixie's qemu-user (10.0), which passes a
    guest's execveat on to the shim; bookworm's 7.2 (the default) answers ENOSYS and the RUN
    step fails."""
    e = env(name)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copyfile(foreign.guest_programs("arm64")["execveat_dirfd"], ctx / "execveat_dirfd")
    os.chmod(ctx / "execveat_dirfd", 0o755)
    (ctx / "Dockerfile").write_text(EXECVEAT)
    trace = tmp_path / "trace.jsonl"
    r = e.build("--platform", "linux/arm64", "--qemu-suite", "trixie", "--load",
                "-t", f"xshim-test/qemu-suite:{name}", "--trace", str(trace),
                "--progress", "plain", "--no-cache", str(ctx))
    assert r.returncode == 0, r.output[-3000:]
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    uname = [rec for rec in records if rec["event"] == "exec"
             and os.path.basename(str(rec.get("path", ""))) == "uname"]
    # The guest's execveat reached the shim through qemu (the bundle names every emulator
    # qemu-<target>-static, whichever package it came from).
    assert [(rec["decision"], rec["argv"]) for rec in uname] == [
        ("emulate", ["/bin/uname", "-m"])], uname


def test_push_by_digest_then_index_create(env: Any, context: Path,
                                          registry: multiarch.Registry, tmp_path: Path) -> None:
    """The CI matrix: one invocation per platform, then one index of both."""
    e = env("docker")  # its layer cache makes these rebuilds quick
    repo = f"{registry.host}/xs/matrix"
    digests: dict[str, str] = {}
    for platform in ("linux/amd64", "linux/arm/v7"):
        meta = tmp_path / f"{platform.replace('/', '-')}.json"
        r = xshim(e, "build", "--builder", "docker", "--platform", platform, "-t", repo,
                  "--push-by-digest", "--metadata-file", str(meta), "--progress", "quiet",
                  str(context))
        r.check()
        digests[platform] = json.loads(meta.read_text())["containerimage.digest"]
        assert r.output.strip().splitlines()[-1] == digests[platform]
    r = xshim(e, "index", "create", "-t", f"{repo}:1", *digests.values())
    r.check()
    index = json.loads(skopeo(e, "inspect", "--raw", f"docker://{repo}:1"))
    assert {(m["platform"]["architecture"], m["platform"].get("variant", "")): m["digest"]
            for m in index["manifests"]} == {("amd64", ""): digests["linux/amd64"],
                                             ("arm", "v7"): digests["linux/arm/v7"]}
    cfg = json.loads(skopeo(e, "inspect", "--config", "--raw",
                            f"docker://{repo}@{digests['linux/arm/v7']}"))
    assert (cfg["architecture"], cfg.get("variant")) == ("arm", "v7")
