"""Real image builders for the integration tests: private dockerd 20.10 (legacy builder) and
dockerd 26 (BuildKit) daemons (support/moby.py), a private buildah store, a private podman store
(support/podman.py).

Nothing here touches the host's own Docker or container storage: the daemons run as root on their
own sockets, data roots and exec roots (no bridge, no iptables), buildah uses the vfs driver on its
own root and runroot with chroot isolation. Base images are made locally from rootfs trees: the
tree becomes one layer of a docker-archive tarball whose config carries the platform we say it has
(``docker import`` in Docker 20.10 always records the daemon's own architecture), and that one
tarball is loaded into every builder. Nothing is ever pulled.

Paths: see support/procs.py (XSHIM_TEST_STATE, XSHIM_TEST_RUN). Foreign rootfs trees live in the
shared test cache (tests.support.foreign.cache_root()).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xshim.builder import image
from xshim.builder.platform import Platform
from xshim.shim import arch as archmod

from . import foreign
from .moby import DOCKER, DOCKERD, Dockerd, start_buildkit, start_dockerd
from .podman import Podman, start_podman
from .procs import RUNDIR, STATE, BuilderUnavailable, Result, need_root, run

__all__ = [
    "DOCKER", "DOCKERD", "RUNDIR", "STATE", "BuilderUnavailable", "Dockerd", "Podman", "Result",
    "run", "start_buildkit", "start_dockerd", "start_podman",
]  # fmt: skip

# The image config keys the tests compare (docker and OCI spell them the same way in Config).
CONFIG_KEYS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "User",
    "WorkingDir",
    "Shell",
    "Labels",
    "ExposedPorts",
    "Volumes",
)


# --- binfmt_misc -------------------------------------------------------------------------------


def assert_no_binfmt(platforms: tuple[str, ...] = ("linux/arm64",)) -> None:
    """Fail loudly when a binfmt_misc handler is registered: these builds must not rely on one.

    Reads only; never mounts binfmt_misc (see tests.support.foreign).
    """
    foreign.assert_no_binfmt(platforms)


_held = 0  # how many exclusive() blocks of this process are open


@contextlib.contextmanager
def exclusive(timeout: float = 3600) -> Iterator[None]:
    """Hold the private builders for this process: two test sessions sharing one dockerd and one
    buildah store would stop, prune and rebuild under each other. Re-entrant: the session's
    builder fixtures hold it while a test module takes it again (a second flock of the same file
    from the same process would wait for itself)."""
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    RUNDIR.mkdir(parents=True, exist_ok=True)
    with open(RUNDIR / "builders.lock", "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another test session held {f.name} for {timeout:.0f}s"
                    ) from None
                time.sleep(1)
        _held = 1
        try:
            yield
        finally:
            _held = 0
            fcntl.flock(f, fcntl.LOCK_UN)


# --- buildah -----------------------------------------------------------------------------------


MEMFD_FLAKE = "sealing memfd copy: Device or resource busy"


@dataclass
class Buildah:
    """buildah with the vfs driver on a private store, building with chroot isolation."""

    root: Path
    runroot: Path
    extra: list[str] = field(default_factory=list)

    def buildah(self, *args: str, cwd: Path | None = None, timeout: float = 1800) -> Result:
        argv = ["buildah", "--storage-driver", "vfs", "--root", str(self.root),
                "--runroot", str(self.runroot), *self.extra, *args]  # fmt: skip
        env = dict(os.environ)
        env.setdefault("BUILDAH_ISOLATION", "chroot")
        return run(argv, env=env, cwd=cwd, timeout=timeout)

    def build(
        self,
        context: Path,
        dockerfile: Path,
        tag: str,
        build_args: Mapping[str, str] = {},
        *,
        platform: str | None = None,
        extra: Sequence[str] = (),
    ) -> Result:
        # Docker format keeps SHELL in the config (OCI has no field for it), as docker would.
        argv = ["bud", "--isolation", "chroot", "--format", "docker", "--no-cache", "--force-rm",
                "--pull-never", "-f", str(dockerfile), "-t", tag, *extra]  # fmt: skip
        if platform:
            argv += ["--platform", platform]
        for k, v in build_args.items():
            argv += ["--build-arg", f"{k}={v}"]
        result = self.buildah(*argv, str(context))
        for _ in range(2):
            # buildah 1.28's chroot runtime now and then fails to seal its memfd copy of itself
            # before a RUN starts (nothing of the step has run yet); a second try is what a user
            # would do. Any other failure is returned as it is.
            if result.returncode == 0 or MEMFD_FLAKE not in result.output:
                break
            result = self.buildah(*argv, str(context))
        return result

    def load(self, archive: Path, name: str) -> None:
        self.buildah("rmi", "-f", name)
        self.buildah("pull", "--quiet", f"docker-archive:{archive}").check()

    def save(self, image: str, out: Path) -> Path:
        self.buildah("push", "--quiet", image, f"docker-archive:{out}").check()
        return out

    def config(self, image: str) -> dict[str, Any]:
        out = self.buildah("inspect", "--type", "image", image).check().output
        data = json.loads(out)
        docker = data.get("Docker") or {}
        return {
            "Architecture": docker.get("architecture") or data["OCIv1"].get("architecture"),
            "Os": docker.get("os") or data["OCIv1"].get("os"),
            "Config": docker.get("config") or {},
        }

    @contextlib.contextmanager
    def rootfs(self, image: str) -> Iterator[Path]:
        """The image's filesystem: a working container's mount (vfs: a plain directory)."""
        ctr = self.buildah("from", "--pull-never", image).check().output.strip().splitlines()[-1]
        try:
            path = self.buildah("mount", ctr).check().output.strip().splitlines()[-1]
            yield Path(path)
        finally:
            self.buildah("umount", ctr)
            self.buildah("rm", ctr)


    def prune(self, prefix: str) -> None:
        """Remove the images named ``prefix...`` (vfs keeps a full copy per layer)."""
        out = self.buildah("images", "--format", "{{.Name}}:{{.Tag}}").output.split()
        names = [n for n in out if n.removeprefix("localhost/").startswith(prefix)]
        if names:
            self.buildah("rmi", "-f", *names)
        self.buildah("rmi", "--prune")


def start_buildah() -> Buildah:
    need_root("buildah with chroot isolation")
    if shutil.which("buildah") is None:
        raise BuilderUnavailable("buildah is missing (apt-get install buildah)")
    b = Buildah(root=STATE / "buildah" / "root", runroot=RUNDIR / "buildah")
    b.root.mkdir(parents=True, exist_ok=True)
    b.runroot.mkdir(parents=True, exist_ok=True)
    r = b.buildah("info", timeout=60)
    if r.returncode != 0:
        raise BuilderUnavailable(f"buildah cannot run here: {r.output.strip()[-500:]}")
    return b


# --- base images from rootfs trees -----------------------------------------------------------


EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "arm64-hello"


# Made as the example makes its base image, by the same library code.
base_config = image.base_config
write_image_archive = image.write_image_archive
DEBIAN_PATH: str = image.DEBIAN_PATH


# --- foreign Debian trees ------------------------------------------------------------------------


_locked = foreign.locked


def finished_tree(name: str = "arm64-bookworm-minbase-finished") -> Path:
    """A complete arm64 Debian minbase tree: the debootstrap --foreign first stage
    (foreign.arm64_first_stage) finished with
    ``xshim run --rootfs TREE -- /debootstrap/debootstrap --second-stage``.

    Cached in the test cache under ``name``: built in a temporary directory beside it and renamed
    into place only when the second stage succeeded, so a half-made tree is never reused. The
    second stage's output is kept in ``name.log``. Never change the returned tree.
    """
    final = foreign.cache_root() / name
    if final.exists():
        return final
    first = foreign.arm64_first_stage()
    with _locked(final.with_name(f".{name}.lock")):
        if final.exists():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=final.parent))
        try:
            tree = foreign.copy_tree(first, work / "rootfs")
            r = run(
                ["xshim", "run", "--rootfs", str(tree), "--", "/debootstrap/debootstrap",
                 "--second-stage"],
                timeout=3600,
            )  # fmt: skip
            log = final.with_name(f"{name}.log")
            log.write_text(r.output)
            r.check()
            assert not (tree / "debootstrap").exists(), f"the second stage did not finish: {log}"
            assert (tree / "var/lib/dpkg/status").is_file()
            os.rename(tree, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def base_archive(tree: Path, *, tag: str, platform: str, config: Mapping[str, Any]) -> Path:
    """The docker-archive of ``tree``, cached beside it while the tree and config are unchanged."""
    key = hashlib.sha256(
        json.dumps([str(tree), tree.stat().st_mtime_ns, tag, platform, dict(config)]).encode()
    ).hexdigest()[:16]
    cache = STATE / "archives"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{key}.tar"
    if not out.exists():
        write_image_archive(tree, out, tag=tag, platform=Platform.parse(platform), config=config)
    return out


# --- reading built images ------------------------------------------------------------------------


def pick_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The compared config fields, with absent and empty spelled the same way (None)."""
    return {k: (config.get(k) or None) for k in CONFIG_KEYS}


def elf_arch(path: Path) -> archmod.Arch | None:
    """The architecture of an ELF file, None for anything that is not ELF."""
    from xshim.builder.qemu import elf_arch as read_arch

    try:
        return read_arch(path)
    except archmod.NotElfError:
        return None


def inside(root: Path, path: str) -> Path:
    """``path`` as seen from inside the tree ``root``, resolving symlinks within the tree."""
    cur = root
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / part
        if nxt.is_symlink():
            hops += 1
            assert hops < 40, f"symlink loop at {path}"
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p] + parts
            cur = root if target.startswith("/") else cur
            continue
        cur = nxt
    return cur


def layers(archive: Path) -> list[tuple[int, list[tuple[str, int]]]]:
    """Per layer of a docker-archive image (``docker save``), bottom first: the layer's size as
    stored (its uncompressed tar) and its members' (name, size), names without a leading ./."""
    out: list[tuple[int, list[tuple[str, int]]]] = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for name in manifest[0]["Layers"]:
            size = outer.getmember(name).size
            blob = outer.extractfile(name)
            assert blob is not None, f"{archive}: no layer {name}"
            with tarfile.open(fileobj=blob, mode="r|*") as layer:
                members = [(m.name.removeprefix("./").rstrip("/"), m.size) for m in layer]
            out.append((size, members))
    return out


def bundle_bytes(archive: Path, prefix: str = ".xshim/") -> list[int]:
    """Per layer of a docker-archive image (``docker save``), bottom first: the bytes of the
    regular files under ``prefix`` that the layer carries, even when a later layer removes them."""
    out: list[int] = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for name in manifest[0]["Layers"]:
            blob = outer.extractfile(name)
            assert blob is not None, f"{archive}: no layer {name}"
            total = 0
            with tarfile.open(fileobj=blob, mode="r|*") as layer:
                for m in layer:
                    if m.isfile() and m.name.removeprefix("./").startswith(prefix):
                        total += m.size
            out.append(total)
    return out
