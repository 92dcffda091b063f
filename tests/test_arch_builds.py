"""Real builds for the other architectures, native stages and a mixed-architecture image.

- One Dockerfile per platform (linux/arm/v7, linux/ppc64le, linux/s390x, linux/riscv64), built
  in each mode of its builder (docker legacy: copy; buildah: copy and mount):
  it installs Debian's `hello` for that architecture and runs it, nested shells, dpkg and perl.
  The image must carry the platform, no /.xshim, the base's /bin/sh chain, and the package's
  files byte for byte, built for that architecture.
- linux/386 and linux/amd64 stages: ``xshim patch`` leaves them byte-identical and they build
  with no shim (no trace line), while an arm64 stage in the same file is patched.
- An arm64 image that adds armhf with ``dpkg --add-architecture`` and installs and runs armhf
  `hello` (with its armhf libc) in the same RUN: the trace shows arm64 programs going through
  qemu-aarch64 and armhf ones through qemu-arm.

Packages are fetched on the host with the signed-archive client into the build context: the
build steps have no network. Base images come from the cached trees (tests/support/trees.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from support import builders, foreign, imagecheck, trees
from xshim.builder import debian
from xshim.shim import arch as archmod

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

PLATFORMS = ("linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x", "linux/riscv64")


class Case(NamedTuple):
    debian_arch: str
    builder: str  # docker | buildah
    mode: str  # copy | mount


# One Dockerfile per architecture, built in each mode its builder has: Docker's legacy builder
# has copy mode only, buildah both.
CASES = (
    Case("armhf", "docker", "copy"),
    Case("ppc64el", "buildah", "copy"),
    Case("ppc64el", "buildah", "mount"),
    Case("s390x", "buildah", "copy"),
    Case("s390x", "buildah", "mount"),
    Case("riscv64", "docker", "copy"),
)


def _tag(debian_arch: str) -> str:
    return f"xshim-test/debian:{debian_arch}"


# The builders are the session's (tests/support/buildfix.py, through conftest.py).


def _tree(debian_arch: str) -> Path:
    return trees.native(debian_arch) if debian_arch in trees.NATIVE else trees.finished(debian_arch)


def _platform(debian_arch: str) -> str:
    return (trees.TARGETS.get(debian_arch) or trees.NATIVE[debian_arch]).platform


def _builder(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue("dockerd" if name == "docker" else "buildah")


def load_base(request: pytest.FixtureRequest, builder: str, debian_arch: str) -> Any:
    """The builder, with the tree of ``debian_arch`` loaded as ``xshim-test/debian:ARCH``."""
    b = _builder(request, builder)
    archive = builders.base_archive(_tree(debian_arch), tag=_tag(debian_arch),
                                    platform=_platform(debian_arch),
                                    config=builders.base_config())  # fmt: skip
    if builder == "docker":
        b.load(archive)
    else:
        b.load(archive, _tag(debian_arch))
    return b


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / ".xshim"
    builders.run(["xshim", "bundle", "--platform", ",".join(PLATFORMS), "-o", str(out)],
                 timeout=900).check()  # fmt: skip
    return out


def test_bundle_ships_debians_emulator_for_each_architecture(bundle: Path) -> None:
    """Each bundled emulator is the member of the qemu-user-static .deb that the signed index
    lists, byte for byte, and the manifest names that package version for each."""
    archive = foreign.archive_or_skip()
    host = archmod.host_arch().debian
    info = archive.find("qemu-user-static", host)
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = [archmod.from_platform(p) for p in PLATFORMS]
    assert set(manifest["emulator_sources"]) == {a.name for a in rows}
    for a in rows:
        assert manifest["emulator_sources"][a.name] == {
            "origin": "debian", "package": info.name, "version": info.version,
            "architecture": host, "suite": archive.suite, "deb_sha256": info.sha256}
    members = debian.read_deb_members(archive.fetch(info).read_bytes(),
                                      [f"usr/bin/{a.qemu_static}" for a in rows])
    assert len(members) == len(rows)
    for a in rows:
        ((blob, _mode),) = [v for k, v in members.items() if k.endswith(f"/{a.qemu_static}")]
        assert (bundle / "qemu" / a.qemu_static).read_bytes() == blob, a.qemu_static


def make_context(dest: Path, dockerfile: str, bundle: Path, files: Mapping[str, Path]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Dockerfile").write_text(dockerfile)
    for name, src in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / name)
    subprocess.run(["cp", "-a", str(bundle), str(dest / ".xshim")], check=True)
    return dest


def patch(ctx: Path, mode: str) -> Path:
    builders.run(["xshim", "patch", "Dockerfile", "-o", "Dockerfile.xshim", "--mode", mode,
                  "--bundle", ".xshim"], cwd=ctx, timeout=300).check()  # fmt: skip
    return ctx / "Dockerfile.xshim"


def build(b: Any, builder: str, ctx: Path, dockerfile: Path, tag: str,
          platform: str) -> builders.Result:  # fmt: skip
    args = {"XSHIM_TRACE": "1"}
    if builder == "docker":
        return b.build(ctx, dockerfile, tag, build_args=args)  # type: ignore[no-any-return]
    return b.build(ctx, dockerfile, tag, platform=platform,  # type: ignore[no-any-return]
                   build_args=args)


def fetch(package: str, debian_arch: str, suite: str) -> Path:
    _, path = foreign.archive_or_skip(suite).fetch_package(package, debian_arch)
    return Path(path)


# --- image checks ---------------------------------------------------------------------------------


def image_platform(b: Any, builder: str, tag: str) -> str:
    """os/architecture[/variant] as the image's config records it."""
    if builder == "docker":
        cfg = b.config(tag)
        parts = [cfg["Os"], cfg["Architecture"], cfg.get("Variant") or ""]
    else:
        data = json.loads(b.buildah("inspect", "--type", "image", tag).check().output)
        oci = data.get("OCIv1") or {}
        docker = data.get("Docker") or {}
        parts = [docker.get("os") or oci.get("os"),
                 docker.get("architecture") or oci.get("architecture"),
                 docker.get("variant") or oci.get("variant") or ""]  # fmt: skip
    return "/".join(p for p in parts if p)


def traced(output: str) -> list[str]:
    """The build log's trace lines (XSHIM_TRACE=1) that ran something through an emulator."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    return [line for line in lines if re.match(r"xshim\[\d+\] ", line) and "→ qemu-" in line]


def assert_no_odd_trace(output: str) -> None:
    """No exec was refused, and none of the shim's own was run natively."""
    for line in output.splitlines():
        if re.search(r"xshim\[\d+\] ", line):
            assert "refused" not in line and "→ native" not in line, line


def assert_package_installed(root: Path, name: str, deb: Path, debian_arch: str,
                             tmp: Path) -> None:  # fmt: skip
    """dpkg has the package installed, every file is the package's, every ELF is that arch's."""
    want = archmod.from_platform(debian_arch)
    files = debian.extract_deb(deb, tmp / name)
    regular = [f for f in files if f.is_file() and not f.is_symlink()]
    status = (root / "var/lib/dpkg/status").read_text()
    stanza = re.search(rf"^Package: {re.escape(name)}\n(?:.+\n)*?Architecture: {debian_arch}\n",
                       status, re.M)
    assert stanza, f"{name}:{debian_arch} is not in dpkg's status"
    elves = 0
    for f in regular:
        rel = f.relative_to(tmp / name)
        mine = builders.inside(root, str(rel))
        assert mine.is_file() and mine.read_bytes() == f.read_bytes(), f"/{rel} differs"
        a = builders.elf_arch(mine)
        if a is not None:
            assert a == want, f"/{rel} is {a.name}, not {want.name}"
            elves += 1
    assert elves, f"{deb.name} has no ELF file to check"


# --- one build per foreign architecture -------------------------------------------------------

PER_ARCH = """\
FROM --platform={platform} {base}
COPY hello.deb /tmp/hello.deb
RUN sh -c 'bash -c "uname -m > /uname-m"' \\
 && dpkg --print-architecture > /dpkg-arch \\
 && dpkg -i /tmp/hello.deb && rm /tmp/hello.deb \\
 && hello > /greeting.txt \\
 && perl -e 'printf "%s\\n", `uname -m` =~ s/\\s+//r' > /perl-uname
CMD ["hello"]
"""


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.debian_arch}-{c.builder}-{c.mode}")
def test_foreign_build(request: pytest.FixtureRequest, case: Case, bundle: Path,
                       tmp_path: Path) -> None:  # fmt: skip
    target = trees.TARGETS[case.debian_arch]
    row = archmod.from_platform(target.platform)
    b = load_base(request, case.builder, case.debian_arch)
    hello = fetch("hello", case.debian_arch, target.suite)
    text = PER_ARCH.format(platform=target.platform, base=_tag(case.debian_arch))
    ctx = make_context(tmp_path / "ctx", text, bundle, {"hello.deb": hello})
    tag = f"xshim-test/arch:{case.debian_arch}-{case.mode}"
    r = build(b, case.builder, ctx, patch(ctx, case.mode), tag, target.platform).check()
    lines = traced(r.output)
    assert_no_odd_trace(r.output)
    assert any(re.match(r"xshim\[\d+\] \S*/hello ", line) for line in lines), r.output[-3000:]
    assert lines and all(line.endswith(f"→ {row.qemu_static}") for line in lines), lines

    assert image_platform(b, case.builder, tag) == target.platform
    base = trees.finished(case.debian_arch)
    with b.rootfs(tag) as root:
        assert not os.path.lexists(root / ".xshim"), "the bundle was left in the image"
        assert imagecheck.chain(root, "/bin/sh") == imagecheck.chain(base, "/bin/sh")
        assert (root / "uname-m").read_text() == f"{target.uname}\n"
        assert (root / "perl-uname").read_text() == f"{target.uname}\n"
        assert (root / "dpkg-arch").read_text() == f"{case.debian_arch}\n"
        assert (root / "greeting.txt").read_text() == "Hello, world!\n"
        assert_package_installed(root, "hello", hello, case.debian_arch, tmp_path)


# --- native stages: left alone by xshim patch, built with no shim -------------------------------

NATIVE = """\
FROM --platform=linux/386 {i386} AS i386
RUN dpkg --print-architecture > /dpkg-arch && sh -c 'bash -c "getconf LONG_BIT"' > /long-bit

FROM --platform=linux/arm64 {arm64} AS arm64
RUN dpkg --print-architecture > /dpkg-arch

FROM --platform=linux/amd64 {amd64}
COPY --from=i386 /dpkg-arch /long-bit /from-i386/
COPY --from=arm64 /dpkg-arch /from-arm64/
RUN dpkg --print-architecture > /dpkg-arch && uname -m > /uname-m
"""


def _stages(text: str) -> list[str]:
    return ["FROM" + s for s in re.split(r"^FROM", text, flags=re.M)[1:]]


@pytest.mark.parametrize("builder", ["docker", "buildah"])
def test_native_stages_are_left_alone(request: pytest.FixtureRequest, builder: str,
                                      bundle: Path, tmp_path: Path) -> None:  # fmt: skip
    b = load_base(request, builder, "i386")
    load_base(request, builder, "amd64")
    load_base(request, builder, "arm64")
    text = NATIVE.format(i386=_tag("i386"), amd64=_tag("amd64"), arm64=_tag("arm64"))
    ctx = make_context(tmp_path / "ctx", text, bundle, {})
    patched = patch(ctx, "copy" if builder == "docker" else "mount")
    stages, out = _stages(text), _stages(patched.read_text())
    assert len(out) == 3
    assert out[0].strip() == stages[0].strip(), "the i386 stage was changed"
    assert out[2].strip() == stages[2].strip(), "the amd64 stage was changed"
    assert out[1] != stages[1], "the arm64 stage was not patched"

    tag = f"xshim-test/native:{builder}"
    r = build(b, builder, ctx, patched, tag, "linux/amd64").check()
    lines = traced(r.output)
    assert_no_odd_trace(r.output)
    assert any("/dpkg --print-architecture" in line for line in lines), r.output[-3000:]
    assert all(line.endswith("→ qemu-aarch64-static") for line in lines), lines
    # The native stages' own programs never passed through the shim.
    assert not [line for line in r.output.splitlines()
                if re.search(r"xshim\[\d+\] .*(getconf|uname)", line)]

    with b.rootfs(tag) as root:
        assert not os.path.lexists(root / ".xshim")
        assert imagecheck.chain(root, "/bin/sh") == imagecheck.chain(trees.native("amd64"),
                                                            "/bin/sh")
        assert (root / "dpkg-arch").read_text() == "amd64\n"
        assert (root / "uname-m").read_text() == "x86_64\n"
        assert (root / "from-i386/dpkg-arch").read_text() == "i386\n"
        assert (root / "from-i386/long-bit").read_text() == "32\n"
        assert (root / "from-arm64/dpkg-arch").read_text() == "arm64\n"
    assert image_platform(b, builder, tag) == "linux/amd64"


# --- one image, two architectures -----------------------------------------------------------------

MIXED = """\
FROM --platform=linux/arm64 {arm64}
COPY debs/ /tmp/debs/
RUN dpkg --add-architecture armhf \\
 && dpkg -i /tmp/debs/*.deb && rm -r /tmp/debs \\
 && hello > /greeting-armhf.txt \\
 && dpkg --print-architecture > /native-arch \\
 && dpkg --print-foreign-architectures > /foreign-archs \\
 && /usr/bin/hello --version | head -n 1 > /hello-version
"""
# hello:armhf and the armhf libraries it needs, beside the tree's arm64 ones (Multi-Arch: same).
ARMHF_DEBS = ("gcc-12-base", "libgcc-s1", "libc6", "hello")


def _installed_version(tree: Path, package: str) -> str | None:
    status = (tree / "var/lib/dpkg/status").read_text()
    m = re.search(rf"^Package: {re.escape(package)}\n(?:.+\n)*?Version: (\S+)", status, re.M)
    return m.group(1) if m else None


def test_mixed_architecture_image(request: pytest.FixtureRequest, bundle: Path,
                                  tmp_path: Path) -> None:  # fmt: skip
    archive = foreign.archive_or_skip("bookworm")
    tree = trees.finished("arm64")
    debs: dict[str, Path] = {}
    for name in ARMHF_DEBS:
        info, path = archive.fetch_package(name, "armhf")
        mine = _installed_version(tree, name)
        if mine is not None:
            assert mine == info.version, (
                f"the cached arm64 tree has {name} {mine}, the archive {info.version}: "
                f"Multi-Arch: same needs both equal; delete {tree} to make it again")
        debs[name] = Path(path)
    b = load_base(request, "buildah", "arm64")
    # The cache names files <sha256>-<name>_<version>_<arch>.deb; the context gets the Debian name.
    files = {f"debs/{p.name.split('-', 1)[1]}": p for p in debs.values()}
    ctx = make_context(tmp_path / "ctx", MIXED.format(arm64=_tag("arm64")), bundle, files)
    tag = "xshim-test/mixed:arm64"
    r = build(b, "buildah", ctx, patch(ctx, "mount"), tag, "linux/arm64").check()

    lines = traced(r.output)
    assert_no_odd_trace(r.output)
    hello = [line for line in lines if re.match(r"xshim\[\d+\] \S*/hello ", line)]
    dpkg = [line for line in lines if re.match(r"xshim\[\d+\] \S*/dpkg ", line)]
    assert len(hello) == 2 and all(line.endswith("→ qemu-arm-static") for line in hello), hello
    assert dpkg and all(line.endswith("→ qemu-aarch64-static") for line in dpkg), dpkg
    assert {line.rsplit("→ ", 1)[1] for line in lines} == {"qemu-arm-static",
                                                           "qemu-aarch64-static"}

    with b.rootfs(tag) as root:
        assert not os.path.lexists(root / ".xshim")
        assert (root / "greeting-armhf.txt").read_text() == "Hello, world!\n"
        assert (root / "native-arch").read_text() == "arm64\n"
        assert (root / "foreign-archs").read_text() == "armhf\n"
        assert (root / "hello-version").read_text().startswith("hello (GNU Hello) ")
        for name in ("libc6", "hello"):
            assert_package_installed(root, name, debs[name], "armhf", tmp_path)
        assert builders.elf_arch(builders.inside(root, "/usr/bin/dpkg")) == \
            archmod.from_platform("arm64")
    assert image_platform(b, "buildah", tag) == "linux/arm64"
