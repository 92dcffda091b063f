"""``xshim rootfs``: a foreign Debian tree from ``debootstrap --foreign``, optionally finished.

The first stage only downloads and unpacks packages, so it needs no emulator. The second stage
runs the tree's own maintainer scripts, which ``xshim run`` sends through qemu. The tree is built
in a temporary directory beside the target and renamed into place at the very end: a failure or
an interrupt leaves no half-made rootfs behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..shim import arch as archmod
from . import debian, tools
from .errors import (
    InputError,
    PrivilegeError,
    SecondStageError,
    ToolFailedError,
)

log = logging.getLogger("xshim")


def _check_debian_port(a: archmod.Arch) -> None:
    if not a.debian:
        raise InputError(
            f"--platform: Debian has no port for {a.platform}",
            "pick a platform Debian releases, e.g. linux/arm64, linux/arm/v7, linux/s390x",
        )


def debootstrap_argv(
    dir: Path,
    debian_arch: str,
    suite: str,
    mirror: str,
    variant: str,
    keyring: Path | None,
    cache: Path | None = None,
) -> list[str]:
    argv = ["debootstrap", "--foreign", f"--arch={debian_arch}", f"--variant={variant}"]
    if keyring is not None:
        argv.append(f"--keyring={keyring}")
    if cache is not None:
        argv.append(f"--cache-dir={cache}")
    return [*argv, suite, str(dir), mirror]


@contextlib.contextmanager
def _package_cache(suite: str, debian_arch: str) -> Iterator[Path]:
    """debootstrap's .deb cache for one suite and architecture, held by one build at a time.

    debootstrap checks every cached file against the signed index before using it, so reuse is
    safe; the lock is there because it writes downloads in place, where a second run could read
    a half-written file.
    """
    path = debian.cache_dir() / "debootstrap" / f"{suite}_{debian_arch}"
    path.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def _check_target(target: Path) -> None:
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise InputError(f"{target}: exists and is not a directory",
                             "give a new directory path for the rootfs")
        if any(target.iterdir()):
            raise InputError(f"{target}: directory is not empty",
                             "give a new or empty directory, or remove this one first")
    if not target.parent.is_dir():
        raise InputError(f"{target.parent}: no such directory",
                         f"create it first: mkdir -p {target.parent}")


def mounts_under(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    root = os.path.realpath(path).rstrip("/") + "/"
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            mp = fields[4].replace("\\040", " ")
            if (mp.rstrip("/") + "/").startswith(root):
                out.append(mp)
    return out


def _remove_tree(path: Path) -> None:
    """Delete a half-made tree, but never through a mount point still attached inside it."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        log.error("not deleting %s: still mounted inside it: %s", path, ", ".join(mounted))
        return
    shutil.rmtree(path, ignore_errors=True)


def _run_streaming(argv: list[str]) -> None:
    """Run a long program, its output turned into log lines; a failure carries its last lines."""
    # debootstrap prints one I: line per package and step: that is the progress.
    rc, tail = tools.run_streaming([tools.find(argv[0]), *argv[1:]],
                                   lambda line: log.info("%s: %s", argv[0], line), tail=20)
    if rc != 0:
        raise ToolFailedError(argv, rc, "\n".join(tail))


DEFAULT_ARCH = archmod.by_name("aarch64")


@dataclass(frozen=True)
class RootfsRequest:
    """``xshim rootfs``: a Debian ``variant`` tree for ``platform`` at ``dir``.

    ``dir`` must not exist or be empty. ``suite`` defaults to the host's, ``mirror`` to
    $XSHIM_MIRROR or this machine's apt sources. With ``second_stage`` the tree is finished by
    running ``/debootstrap/debootstrap --second-stage`` in it through ``xshim run``.
    """

    dir: str | os.PathLike[str]
    platform: archmod.Arch = DEFAULT_ARCH
    suite: str | None = None
    mirror: str | None = None
    second_stage: bool = False
    variant: str = "minbase"


def make_rootfs(req: RootfsRequest) -> Path:
    """Make the tree ``req`` asks for; return its path."""
    a = req.platform
    suite, variant = req.suite, req.variant
    _check_debian_port(a)
    target = Path(req.dir).absolute()
    _check_target(target)
    url = debian.find_mirror(req.mirror)
    suite = suite or debian.host_suite()
    _check_port(url, suite, a)
    if os.geteuid() != 0:
        raise PrivilegeError("debootstrap needs root (it creates device nodes and owns files)",
                             "run it as root, e.g. with sudo")
    keyring = debian.DEFAULT_KEYRING if debian.DEFAULT_KEYRING.is_file() else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        log.info("debootstrap --foreign %s %s for %s into %s", suite, variant, a.debian, target)
        with _package_cache(suite, a.debian) as pkgs:
            _run_streaming(debootstrap_argv(tmp, a.debian, suite, url, variant, keyring, pkgs))
        if req.second_stage:
            _second_stage(tmp, a)
        # rename(2) replaces an empty directory, which is all _check_target let through.
        os.rename(tmp, target)
    except BaseException:
        _remove_tree(tmp)
        raise
    log.info("rootfs ready: %s", target)
    return target


# Debian architectures released later than the others: the first suite that carries each.
FIRST_SUITE = {"riscv64": "trixie"}


def _check_port(url: str, suite: str, a: archmod.Arch) -> None:
    """InputError when the suite has no packages for the architecture (riscv64 before trixie).

    debootstrap would find out too, but only after its own download, in its own words; the
    signed index says it at once. An archive that can't answer (unreachable, no such suite, bad
    signature) is left for debootstrap, which checks the same things and reports them itself.
    """
    try:
        release = debian.Archive(url, suite).release()
    except debian.ArchiveError:
        return
    if any(p.startswith(f"main/binary-{a.debian}/") for p in release):
        return
    first = FIRST_SUITE.get(a.debian)
    raise InputError(
        f"--suite {suite}: Debian {suite} has no {a.debian} port (no main/binary-{a.debian} in "
        "its signed index)",
        f"use --suite {first} (the first release with {a.debian})" if first else
        "pick a suite that carries this architecture, e.g. --suite sid",
    )


def _second_stage(tree: Path, a: archmod.Arch) -> None:
    # Imported here: the runner pulls in the supervisor, which the first stage never needs.
    from .runner import RunRequest, run_in_rootfs

    log.info("running the second stage through xshim run (this takes minutes)")
    rc = run_in_rootfs(RunRequest(
        rootfs=str(tree),
        command=("/debootstrap/debootstrap", "--second-stage"),
        platform=a,
    ))
    if rc != 0:
        log_file = tree / "debootstrap" / "debootstrap.log"
        detail = ""
        if log_file.is_file():
            detail = "\n".join(log_file.read_text(errors="replace").splitlines()[-10:])
        raise SecondStageError(rc, detail)

