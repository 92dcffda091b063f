"""Every external program xshim runs goes through here, so a missing one is a typed error."""

from __future__ import annotations

import collections
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .errors import MissingToolError, ToolFailedError

# Which Debian package provides each program we may call, for the "is X installed?" hint.
PACKAGES = {
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "gpgv": "gpgv",
    "docker": "docker.io",
    "dockerd": "docker.io",
    "buildah": "buildah",
    "podman": "podman",
    "skopeo": "skopeo",
    "proot": "proot",
    "unshare": "util-linux",
    "mount": "mount",
}


def find(program: str, why: str = "") -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise MissingToolError(program, PACKAGES.get(program, program), why)
    return path


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program; raise MissingToolError when absent, ToolFailedError when it fails."""
    full = [find(argv[0]), *argv[1:]]
    proc = subprocess.run(
        full,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else None,
    )
    if check and proc.returncode != 0:
        out = proc.stdout.decode(errors="replace") if proc.stdout else ""
        raise ToolFailedError(list(argv), proc.returncode, out)
    return proc


def run_streaming(
    argv: Sequence[str], on_line: Callable[[str], None], *, tail: int,
    cwd: Path | None = None, env: Mapping[str, str] | None = None,
) -> tuple[int, list[str]]:
    """Run a long program, each line of its output (stdout and stderr) handed to ``on_line`` as
    it comes; return its exit status and its last ``tail`` lines, for the error if it failed."""
    last: collections.deque[str] = collections.deque(maxlen=tail)
    with subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            last.append(line)
            on_line(line)
        status = proc.wait()
    return status, list(last)
