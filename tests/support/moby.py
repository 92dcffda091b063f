"""Private Docker daemons: Debian 12's dockerd 20.10 (legacy builder) and Debian trixie's
dockerd 26 with its embedded BuildKit, driven by ``docker buildx build``.

Each runs as root on its own socket, data root and exec root, with no bridge and no iptables;
a host /etc/docker/daemon.json cannot change what is tested (each has its own empty config file).
The trixie daemon, client, buildx plugin and containerd are unpacked by .ci/install-buildkit into
XSHIM_BUILDKIT_DIR (default /opt/xshim-buildkit); they run with the host's runc. The buildx
plugin lives in a private DOCKER_CONFIG. XSHIM_TEST_DOCKERD_ARGS adds options to both daemons
(e.g. ``--storage-driver vfs`` where overlayfs can't stack).
"""

from __future__ import annotations

import contextlib
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

from .procs import RUNDIR, STATE, BuilderUnavailable, Result, need_root, run, terminate

# /usr/local/bin/docker on some machines is an unrelated newer client: every client is called by
# its full path, the one that speaks its daemon's API version.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
BUILDKIT_DIR = Path(os.environ.get("XSHIM_BUILDKIT_DIR") or "/opt/xshim-buildkit") / "root"
INSTALL_HINT = "run .ci/install-buildkit (it fetches trixie's docker.io into a private directory)"


@dataclass
class Dockerd:
    """A dockerd on a private socket; ``docker(...)`` runs the matching client against it."""

    socket: Path
    data_root: Path
    exec_root: Path
    pidfile: Path
    log: Path
    client: str = DOCKER
    daemon: str = DOCKERD
    bindirs: list[Path] = field(default_factory=list)  # first on the daemon's and client's PATH
    buildkit: bool = False  # build with `docker buildx build` rather than the legacy builder
    args: list[str] = field(default_factory=list)  # more dockerd options
    proc: subprocess.Popen[bytes] | None = None
    adopted: int | None = None  # pid of a daemon a previous session left running

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_dir(self) -> Path:
        return self.data_root.parent / "client"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DOCKER_CONTEXT", None)
        env.pop("DOCKER_TLS_VERIFY", None)
        env.pop("BUILDX_BUILDER", None)
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config_dir))
        if self.bindirs:
            env["PATH"] = os.pathsep.join([*map(str, self.bindirs), env.get("PATH", "")])
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
            [self.client, *args], env=self.env(**(env or {})), cwd=cwd, input=input,
            timeout=timeout,
        )  # fmt: skip

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        return self.docker("version", "--format", "{{.Server.Version}}", timeout=20).returncode == 0

    def build(
        self,
        context: Path,
        dockerfile: Path,
        tag: str,
        build_args: Mapping[str, str] = {},
        *,
        platform: str | None = None,
        extra: Sequence[str] = (),
        legacy: bool = False,
    ) -> Result:
        """The legacy builder (BuildKit off, what 20.10 does by default), or on a BuildKit
        daemon ``docker buildx build --load`` with the host's network for RUN steps (the
        daemon has no bridge, and BuildKit's default network is the bridge)."""
        if self.buildkit and not legacy:
            argv = ["buildx", "build", "--progress=plain", "--network=host", "--load"]
            env = {}
            if platform:
                argv += ["--platform", platform]
        else:
            argv = ["build", "--force-rm"]
            env = {"DOCKER_BUILDKIT": "0"}
        argv += ["--no-cache", "-f", str(dockerfile), "-t", tag, *extra]
        for k, v in build_args.items():
            argv += ["--build-arg", f"{k}={v}"]
        return self.docker(*argv, str(context), env=env)

    def load(self, archive: Path) -> None:
        self.docker("load", "-i", str(archive)).check()

    def save(self, image: str, out: Path) -> Path:
        self.docker("save", "-o", str(out), image).check()
        return out

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
                [self.client, "export", cid], env=self.env(), stdout=subprocess.PIPE
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
        if self.buildkit:
            self.docker("builder", "prune", "-af")

    def stop(self) -> None:
        if self.adopted is not None:
            pid, self.adopted = self.adopted, None
            terminate(pid)
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


def buildkit_paths(name: str = "buildkit") -> Dockerd:
    return Dockerd(
        socket=RUNDIR / name / "docker.sock",
        data_root=STATE / name / "docker",
        exec_root=RUNDIR / name / "exec",
        pidfile=RUNDIR / name / "docker.pid",
        log=STATE / name / "dockerd.log",
        client=str(BUILDKIT_DIR / "usr/bin/docker"),
        daemon=str(BUILDKIT_DIR / "usr/sbin/dockerd"),
        # trixie's containerd and docker-init; runc is the host's (bookworm's), found on PATH.
        bindirs=[BUILDKIT_DIR / "usr/bin", BUILDKIT_DIR / "usr/sbin"],
        buildkit=True,
    )


def start_dockerd(timeout: float = 60) -> Dockerd:
    """Start the private dockerd 20.10; call it under ``builders.exclusive()``."""
    return _start(dockerd_paths(), "apt-get install docker.io", timeout)


def start_buildkit(timeout: float = 60, *, name: str = "buildkit",
                   args: Sequence[str] = ()) -> Dockerd:  # fmt: skip
    """Start the private dockerd 26 (BuildKit) with buildx as a CLI plugin of its client;
    ``name`` and ``args`` make another instance (e.g. with ``--experimental``)."""
    d = buildkit_paths(name)
    d.args = list(args)
    plugin = BUILDKIT_DIR / "usr/libexec/docker/cli-plugins/docker-buildx"
    if not plugin.is_file():
        raise BuilderUnavailable(f"{plugin} is missing: {INSTALL_HINT}")
    if shutil.which("runc") is None:
        raise BuilderUnavailable("runc is missing (apt-get install runc)")
    plugins = d.config_dir / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-buildx"
    if not link.is_symlink() or os.readlink(link) != str(plugin):
        link.unlink(missing_ok=True)
        link.symlink_to(plugin)
    d = _start(d, INSTALL_HINT, timeout)
    version = d.docker("buildx", "version", timeout=30)
    if version.returncode != 0:
        d.stop()
        raise BuilderUnavailable(f"docker buildx does not run: {version.output.strip()[-500:]}")
    return d


def _start(d: Dockerd, hint: str, timeout: float) -> Dockerd:
    """A daemon already answering on the private socket was left by an interrupted session (only
    test sessions use that socket, one at a time): it is adopted and stopped like our own.
    Raises BuilderUnavailable with the daemon's own words when it cannot start here."""
    need_root("dockerd")
    for prog in (d.daemon, d.client):
        if not os.access(prog, os.X_OK):
            raise BuilderUnavailable(f"{prog} is missing ({hint})")
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
        d.daemon,
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
        *shlex.split(os.environ.get("XSHIM_TEST_DOCKERD_ARGS", "")),
        *d.args,
    ]  # fmt: skip
    logf = d.log.open("ab")
    d.proc = subprocess.Popen(
        argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=d.env(),
    )  # fmt: skip
    logf.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            tail = "\n".join(d.log.read_text(errors="replace").splitlines()[-15:])
            d.proc = None
            raise BuilderUnavailable(f"{d.daemon} exited at start:\n{tail}")
        if d.ready():
            return d
        time.sleep(0.5)
    d.stop()
    raise BuilderUnavailable(f"{d.daemon} did not answer on {d.socket} within {timeout:.0f}s")


def _empty_daemon_json(where: Path) -> Path:
    p = where / "daemon.json"
    where.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_text("{}\n")
    return p
