"""podman (Debian 12's 4.3) on a private store: its own root and runroot with the overlay driver,
apart from buildah's vfs store, building with ``--isolation oci`` (its default, runc) or
``chroot``. Base images are loaded from the same docker-archive tarballs; nothing is pulled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import RUNDIR, STATE, BuilderUnavailable, Result, need_root, run


@dataclass
class Podman:
    root: Path
    runroot: Path
    isolation: str = "oci"
    driver: str = os.environ.get("XSHIM_TEST_PODMAN_DRIVER", "overlay")

    def podman(self, *args: str, cwd: Path | None = None, timeout: float = 1800) -> Result:
        argv = ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", self.driver,
                "--cgroup-manager", "cgroupfs", "--events-backend", "none", *args]  # fmt: skip
        env = dict(os.environ)
        # Nothing from the host's container configuration may change what is tested.
        env["CONTAINERS_CONF"] = "/dev/null"
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
        isolation: str | None = None,
    ) -> Result:
        # Docker format keeps SHELL in the config (OCI has no field for it), as docker would.
        argv = ["build", "--isolation", isolation or self.isolation, "--format", "docker",
                "--no-cache", "--force-rm", "--pull=never", "--network=host",
                "-f", str(dockerfile), "-t", tag, *extra]  # fmt: skip
        if platform:
            argv += ["--platform", platform]
        for k, v in build_args.items():
            argv += ["--build-arg", f"{k}={v}"]
        return self.podman(*argv, str(context))

    def load(self, archive: Path, name: str) -> None:
        self.podman("rmi", "-f", name)
        self.podman("load", "-q", "-i", str(archive)).check()

    def save(self, image: str, out: Path) -> Path:
        self.podman("save", "--format", "docker-archive", "-o", str(out), image).check()
        return out

    def config(self, image: str) -> dict[str, Any]:
        """The image's Docker config. ``podman image inspect`` shows the OCI view, which has no
        Shell; buildah (same storage library, same store) shows the Docker one as committed."""
        argv = ["buildah", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", self.driver, "inspect", "--type", "image", image]  # fmt: skip
        data = json.loads(run(argv).check().output)
        docker = data.get("Docker") or {}
        return {
            "Architecture": docker.get("architecture") or data["OCIv1"].get("architecture"),
            "Os": docker.get("os") or data["OCIv1"].get("os"),
            "Config": docker.get("config") or {},
        }

    @contextlib.contextmanager
    def rootfs(self, image: str) -> Iterator[Path]:
        """The image's filesystem, exported into a temporary directory."""
        cid = self.podman("create", image, "/nonexistent").check().output.strip().splitlines()[-1]
        tmp = Path(tempfile.mkdtemp(prefix="xshim-export-"))
        try:
            out = tmp / "fs.tar"
            self.podman("export", "-o", str(out), cid).check()
            root = tmp / "root"
            root.mkdir()
            subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(root), "-f", str(out)],
                           check=True)  # fmt: skip
            out.unlink()
            yield root
        finally:
            self.podman("rm", "-f", cid)
            shutil.rmtree(tmp, ignore_errors=True)

    def prune(self, prefix: str) -> None:
        out = self.podman("images", "--format", "{{.Repository}}:{{.Tag}}").output.split()
        names = [n for n in out if n.removeprefix("localhost/").startswith(prefix)]
        if names:
            self.podman("rmi", "-f", *names)
        self.podman("image", "prune", "-f")


def start_podman() -> Podman:
    need_root("podman on a private root store")
    if shutil.which("podman") is None:
        raise BuilderUnavailable("podman is missing (apt-get install podman)")
    p = Podman(root=STATE / "podman" / "root", runroot=RUNDIR / "podman")
    p.root.mkdir(parents=True, exist_ok=True)
    p.runroot.mkdir(parents=True, exist_ok=True)
    r = p.podman("info", timeout=60)
    if r.returncode != 0:
        raise BuilderUnavailable(f"podman cannot run here: {r.output.strip()[-500:]}")
    return p
