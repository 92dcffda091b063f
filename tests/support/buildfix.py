"""Fixtures and helpers of the real-build tests (test_builds*.py), registered in conftest.py.

Builders, by the name the tests use: ``docker`` (dockerd 20.10's legacy builder), ``buildkit``
(dockerd 26, ``docker buildx build``), ``buildah`` (1.28, chroot isolation), ``podman`` (4.3, oci
isolation) and ``podman-chroot`` (the same podman and store, chroot isolation). Each is started
on first use, once per test session, under the builders lock, and stopped (or its images pruned)
at the end; each gets the arm64 base image loaded once.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import builders, foreign

PLATFORM = "linux/arm64"
BASE_TAG = "xshim-example/debian:arm64"  # the name examples/arm64-hello/Dockerfile builds on
BUILDERS = ("docker", "buildkit", "buildah", "podman")


@dataclass(frozen=True)
class Kind:
    """One way of building: a builder and the patch mode it uses."""

    builder: str  # one of BUILDERS, or podman-chroot
    mode: str  # copy | mount

    @property
    def id(self) -> str:
        return f"{self.builder}-{self.mode}"


# The legacy builder has no RUN --mount: copy mode only.
KINDS = [Kind("docker", "copy"), Kind("buildkit", "copy"), Kind("buildkit", "mount"),
         Kind("buildah", "copy"), Kind("buildah", "mount"), Kind("podman", "copy"),
         Kind("podman", "mount"), Kind("podman-chroot", "copy"),
         Kind("podman-chroot", "mount")]  # fmt: skip


def kind_id(kind: Kind) -> str:
    return kind.id


@pytest.fixture(scope="session")
def _builders_to_ourselves() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the private builders (dockerd, buildah, podman) need root")
    with builders.exclusive():
        yield


def _started(start: Callable[[], Any], what: str) -> Any:
    try:
        return start()
    except builders.BuilderUnavailable as e:
        pytest.skip(f"{what} cannot run here: {e}")


@pytest.fixture(scope="session")
def dockerd(_builders_to_ourselves: None) -> Iterator[builders.Dockerd]:
    d = _started(builders.start_dockerd, "dockerd 20.10")
    try:
        yield d
    finally:
        d.prune("xshim-test/")
        d.stop()


@pytest.fixture(scope="session")
def buildkit(_builders_to_ourselves: None) -> Iterator[builders.Dockerd]:
    d = _started(builders.start_buildkit, "dockerd 26 with BuildKit")
    try:
        yield d
    finally:
        d.prune("xshim-test/")
        d.stop()


@pytest.fixture(scope="session")
def buildah(_builders_to_ourselves: None) -> Iterator[builders.Buildah]:
    b = _started(builders.start_buildah, "buildah")
    yield b
    b.prune("xshim-test/")


@pytest.fixture(scope="session")
def podman(_builders_to_ourselves: None) -> Iterator[builders.Podman]:
    p = _started(builders.start_podman, "podman")
    yield p
    p.prune("xshim-test/")


@pytest.fixture(scope="session")
def podman_chroot(podman: builders.Podman) -> builders.Podman:
    return dataclasses.replace(podman, isolation="chroot")


def builder_of(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue("dockerd" if name == "docker" else name.replace("-", "_"))


def load_into(b: Any, archive: Path, tag: str) -> None:
    if isinstance(b, builders.Dockerd):
        b.load(archive)
    else:
        b.load(archive, tag)


@pytest.fixture(scope="session")
def base_tree() -> Path:
    return builders.finished_tree()


@pytest.fixture(scope="session")
def base_archive(base_tree: Path) -> Path:
    return builders.base_archive(
        base_tree, tag=BASE_TAG, platform=PLATFORM, config=builders.base_config()
    )


@pytest.fixture(scope="session")
def loaded(request: pytest.FixtureRequest, base_archive: Path) -> Callable[[str], Any]:
    """Load the base image into a builder on first use: ``loaded('docker')``."""
    done: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name == "podman-chroot":  # the same store: loading again would remove podman's images
            load("podman")
        if name not in done:
            b = builder_of(request, name)
            if name != "podman-chroot":
                load_into(b, base_archive, BASE_TAG)
            cfg = b.config(BASE_TAG)
            assert (cfg["Os"], cfg["Architecture"]) == ("linux", "arm64")
            done[name] = b
        return done[name]

    return load


@pytest.fixture(scope="session")
def hello_deb() -> Path:
    """GNU hello for arm64 from the tree's suite, verified against the signed archive."""
    _, path = foreign.archive_or_skip(foreign.SUITE).fetch_package("hello", "arm64")
    return Path(path)


def xshim(*args: str, cwd: Path) -> builders.Result:
    return builders.run(["xshim", *args], cwd=cwd, timeout=900)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    xshim("bundle", "--platform", PLATFORM, "-o", str(out / ".xshim"), cwd=out).check()
    return out / ".xshim"


def make_context(dest: Path, dockerfile: str, bundle: Path | None,
                 extra: Mapping[str, Path] = {}) -> Path:  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Dockerfile").write_text(dockerfile)
    for name, src in extra.items():
        shutil.copyfile(src, dest / name)
    if bundle is not None:
        subprocess.run(["cp", "-a", str(bundle), str(dest / ".xshim")], check=True)
    return dest


def patch(ctx: Path, mode: str, *extra: str, src: str = "Dockerfile") -> Path:
    xshim("patch", src, "-o", "Dockerfile.xshim", "--mode", mode, "--bundle", ".xshim", *extra,
          cwd=ctx).check()  # fmt: skip
    return ctx / "Dockerfile.xshim"


def build(request: pytest.FixtureRequest, kind: Kind, ctx: Path, dockerfile: Path, tag: str,
          *, extra: Sequence[str] = (), trace: bool = True) -> builders.Result:  # fmt: skip
    """Build with the base image loaded; XSHIM_TRACE=1 puts the shim's trace in the build log."""
    b = request.getfixturevalue("loaded")(kind.builder)
    args = {"XSHIM_TRACE": "1"} if trace else {}
    r: builders.Result = b.build(ctx, dockerfile, tag, args, platform=PLATFORM, extra=extra)
    return r


def run_failed(kind: Kind, output: str, code: int) -> bool:
    """Whether the build log says a RUN step failed with exit status ``code``."""
    return {
        "docker": f"returned a non-zero code: {code}",
        "buildkit": f"did not complete successfully: exit code: {code}",
        "buildah": f"exit status {code}",
        "podman": f"exit status {code}",
        "podman-chroot": f"exit status {code}",
    }[kind.builder] in output
