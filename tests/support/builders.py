"""Real image builders for the integration tests: a private dockerd and a private buildah store.

Nothing here touches the host's own Docker or container storage: dockerd runs as root on its own
socket, data root and exec root (no bridge, no iptables), buildah uses the vfs driver on its own
root and runroot with chroot isolation. Base images are made locally from rootfs trees: the tree
becomes one layer of a docker-archive tarball whose config carries the platform we say it has
(``docker import`` in Docker 20.10 always records the daemon's own architecture), and that one
tarball is loaded into both builders. Nothing is ever pulled.

Paths can be moved with XSHIM_TEST_STATE (builder data roots, image archives; default
/var/lib/xshim-test) and XSHIM_TEST_RUN (sockets, pid files; default /run/xshim-test);
XSHIM_TEST_DOCKERD_ARGS adds dockerd options (e.g. ``--storage-driver vfs``). Foreign
rootfs trees live in the shared test cache (tests.support.foreign.cache_root()).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xshim.builder import image
from xshim.shim import arch as archmod

from . import foreign

STATE = Path(os.environ.get("XSHIM_TEST_STATE", "/var/lib/xshim-test"))
RUNDIR = Path(os.environ.get("XSHIM_TEST_RUN", "/run/xshim-test"))

# /usr/local/bin/docker on some machines is an unrelated newer client; the daemon is Debian's 20.10
# and its own client speaks its API version.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"

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


class BuilderUnavailable(RuntimeError):
    """The builder cannot run on this machine at all (the tests using it are skipped)."""


@dataclass
class Result:
    argv: list[str]
    returncode: int
    output: str

    def check(self) -> Result:
        if self.returncode != 0:
            tail = "\n".join(self.output.splitlines()[-60:])
            raise AssertionError(
                f"{' '.join(self.argv)} exited with {self.returncode}:\n{tail}"
            )
        return self


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = 1800,
) -> Result:
    proc = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return Result(list(argv), proc.returncode, proc.stdout.decode(errors="replace"))


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise BuilderUnavailable(f"{what} needs root (run the tests as root)")


# --- binfmt_misc -------------------------------------------------------------------------------


def assert_no_binfmt(platforms: tuple[str, ...] = ("linux/arm64",)) -> None:
    """Fail loudly when a binfmt_misc handler is registered: these builds must not rely on one.

    Reads only; never mounts binfmt_misc (see tests.support.foreign).
    """
    foreign.assert_no_binfmt(platforms)


@contextlib.contextmanager
def exclusive(timeout: float = 3600) -> Iterator[None]:
    """Hold the private builders for this process: two test sessions sharing one dockerd and one
    buildah store would stop, prune and rebuild under each other."""
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
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- dockerd -----------------------------------------------------------------------------------


@dataclass
class Dockerd:
    """A dockerd on a private socket; ``docker(...)`` runs Debian's client against it."""

    socket: Path
    data_root: Path
    exec_root: Path
    pidfile: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    adopted: int | None = None  # pid of a daemon a previous session left running

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DOCKER_CONTEXT", None)
        env.pop("DOCKER_TLS_VERIFY", None)
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.data_root.parent / "client"))
        env.update(extra)
        return env

    def docker(
        self,
        *args: str,
        cwd: Path | None = None,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 1800,
    ) -> Result:
        return run(
            [DOCKER, *args], env=self.env(**(env or {})), cwd=cwd, input=input, timeout=timeout
        )

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        return self.docker("version", "--format", "{{.Server.Version}}", timeout=20).returncode == 0

    def build(
        self, context: Path, dockerfile: Path, tag: str, build_args: Mapping[str, str] = {},
        network: str | None = None,
    ) -> Result:
        """A legacy-builder build (BuildKit off): the builder every Docker install has.
        ``network``: the RUN steps' network mode (``host`` where the daemon has no bridge)."""
        argv = ["build", "--no-cache", "--force-rm", "-f", str(dockerfile), "-t", tag]
        if network:
            argv += ["--network", network]
        for k, v in build_args.items():
            argv += ["--build-arg", f"{k}={v}"]
        return self.docker(*argv, str(context), env={"DOCKER_BUILDKIT": "0"})

    def load(self, archive: Path) -> None:
        self.docker("load", "-i", str(archive)).check()

    def config(self, image: str) -> dict[str, Any]:
        out = self.docker("image", "inspect", image).check().output
        return dict(json.loads(out)[0])

    @contextlib.contextmanager
    def rootfs(self, image: str) -> Iterator[Path]:
        """The image's filesystem, exported into a temporary directory."""
        cid = self.docker("create", image, "/nonexistent").check().output.strip().splitlines()[-1]
        tmp = Path(tempfile.mkdtemp(prefix="xshim-export-"))
        try:
            exp = subprocess.Popen(
                [DOCKER, "export", cid], env=self.env(), stdout=subprocess.PIPE
            )
            tar = subprocess.run(
                ["tar", "-x", "--numeric-owner", "-C", str(tmp)], stdin=exp.stdout, check=False
            )
            assert exp.wait() == 0 and tar.returncode == 0, f"docker export {image} failed"
            yield tmp
        finally:
            self.docker("rm", "-f", cid)
            shutil.rmtree(tmp, ignore_errors=True)

    def prune(self, prefix: str) -> None:
        """Remove the images tagged ``prefix...`` and what only they used."""
        out = self.docker("images", "--format", "{{.Repository}}:{{.Tag}}").output.split()
        tags = [t for t in out if t.startswith(prefix)]
        if tags:
            self.docker("rmi", "-f", *tags)
        self.docker("system", "prune", "-f")

    def stop(self) -> None:
        if self.adopted is not None:
            pid, self.adopted = self.adopted, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def dockerd_paths() -> Dockerd:
    return Dockerd(
        socket=RUNDIR / "docker.sock",
        data_root=STATE / "docker",
        exec_root=RUNDIR / "exec",
        pidfile=RUNDIR / "docker.pid",
        log=STATE / "dockerd.log",
    )


def start_dockerd(timeout: float = 60) -> Dockerd:
    """Start the private dockerd; call it under ``exclusive()``.

    A daemon already answering on the private socket was left by an interrupted session (only
    test sessions use that socket, one at a time): it is adopted and stopped like our own.
    Raises BuilderUnavailable with the daemon's own words when it cannot start here.
    """
    _need_root("dockerd")
    for prog in (DOCKERD, DOCKER):
        if not os.access(prog, os.X_OK):
            raise BuilderUnavailable(f"{prog} is missing (apt-get install docker.io)")
    d = dockerd_paths()
    if d.ready():
        with contextlib.suppress(OSError, ValueError):
            d.adopted = int(d.pidfile.read_text().strip())
        return d
    for p in (d.data_root, d.exec_root, d.socket.parent, d.log.parent):
        p.mkdir(parents=True, exist_ok=True)
    # A pid file left by a daemon that died keeps a new one from starting.
    if d.pidfile.exists():
        try:
            os.kill(int(d.pidfile.read_text().strip()), 0)
        except (ValueError, ProcessLookupError):
            d.pidfile.unlink()
    argv = [
        DOCKERD,
        "--host", d.host,
        "--data-root", str(d.data_root),
        "--exec-root", str(d.exec_root),
        "--pidfile", str(d.pidfile),
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        # Our own config file, so a host /etc/docker/daemon.json cannot change what we test.
        "--config-file", str(_empty_daemon_json(d.data_root.parent)),
        # e.g. "--storage-driver vfs" where overlayfs can't stack (dockerd inside a container)
        *shlex.split(os.environ.get("XSHIM_TEST_DOCKERD_ARGS", "")),
    ]  # fmt: skip
    logf = d.log.open("ab")
    d.proc = subprocess.Popen(
        argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    logf.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            tail = "\n".join(d.log.read_text(errors="replace").splitlines()[-15:])
            d.proc = None
            raise BuilderUnavailable(f"dockerd exited at start:\n{tail}")
        if d.ready():
            return d
        time.sleep(0.5)
    d.stop()
    raise BuilderUnavailable(f"dockerd did not answer on {d.socket} within {timeout:.0f}s")


def _empty_daemon_json(where: Path) -> Path:
    p = where / "daemon.json"
    where.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_text("{}\n")
    return p


# --- buildah -----------------------------------------------------------------------------------


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
        *,
        platform: str | None = None,
        build_args: Mapping[str, str] = {},
        network: str | None = None,
    ) -> Result:
        # Docker format keeps SHELL in the config (OCI has no field for it), as docker would.
        argv = ["bud", "--isolation", "chroot", "--format", "docker", "--no-cache", "--force-rm",
                "--pull-never", "-f", str(dockerfile), "-t", tag]  # fmt: skip
        if network:
            argv += ["--network", network]
        if platform:
            argv += ["--platform", platform]
        for k, v in build_args.items():
            argv += ["--build-arg", f"{k}={v}"]
        return self.buildah(*argv, str(context))

    def load(self, archive: Path, name: str) -> None:
        self.buildah("rmi", "-f", name)
        self.buildah("pull", "--quiet", f"docker-archive:{archive}").check()

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
    _need_root("buildah with chroot isolation")
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
        write_image_archive(tree, out, tag=tag, platform=platform, config=config)
    return out


# --- reading built images ------------------------------------------------------------------------


def pick_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The compared config fields, with absent and empty spelled the same way (None)."""
    return {k: (config.get(k) or None) for k in CONFIG_KEYS}


def elf_arch(path: Path) -> archmod.Arch | None:
    """The architecture of an ELF file, None for anything that is not ELF."""
    with path.open("rb") as f:
        head = f.read(64)
    try:
        return archmod.arch_of(archmod.parse_ident(head))
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
