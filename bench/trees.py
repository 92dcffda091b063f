"""The first-stage arm64 tree every contender starts from, cached, and fresh copies of it.

Each contender gets its own ``cp -a`` of the same cached ``debootstrap --foreign`` tree, so no
run sees files another one changed. The cache is made with xshim's own ``make_rootfs`` (mirror
from ``--mirror``, ``$XSHIM_MIRROR`` or the machine's apt sources; never written down here) and
renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/xshim-bench")
PLATFORM = "linux/arm64"
VARIANT = "minbase"


class TreeError(Exception):
    """A tree that cannot be made, copied or used; the message says what to do."""


def cache_root() -> Path:
    value = os.environ.get("XSHIM_BENCH_CACHE")
    return Path(value) if value else DEFAULT_CACHE


def is_first_stage(tree: Path) -> bool:
    """A ``debootstrap --foreign`` tree: packages unpacked, the second stage still to run."""
    return (tree / "debootstrap" / "debootstrap").is_file() and (tree / "bin").exists()


def first_stage_tree(explicit: Path | None, suite: str | None, mirror: str | None) -> Path:
    """The cached first-stage tree, made on first use (minutes: it downloads ~40 packages)."""
    if explicit is not None:
        if not is_first_stage(explicit):
            raise TreeError(
                f"--tree {explicit}: not a debootstrap --foreign tree (no debootstrap/debootstrap)"
                "; give a first-stage tree, or leave --tree out to have one made and cached"
            )
        return explicit
    # Imported here: only this path needs the builder (and its mirror discovery).
    from xshim.builder import debian
    from xshim.builder.rootfs import RootfsRequest, make_rootfs
    from xshim.builder.values import parse_arch

    suite = suite or debian.host_suite()
    tree = cache_root() / f"{suite}-arm64-{VARIANT}"
    if is_first_stage(tree):
        return tree
    if tree.exists():
        raise TreeError(
            f"{tree} exists but is not a complete first-stage tree; remove it and run again"
        )
    tree.parent.mkdir(parents=True, exist_ok=True)
    make_rootfs(RootfsRequest(tree, platform=parse_arch(PLATFORM), suite=suite, mirror=mirror,
                              variant=VARIANT))
    return tree


def fresh_copy(src: Path, dest: Path) -> Path:
    """``cp -a`` of ``src`` at ``dest`` (which must not exist yet)."""
    if dest.exists():
        remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["cp", "-a", str(src), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TreeError(f"cp -a {src} {dest} failed: {proc.stderr.strip()}")
    return dest


def remove_tree(path: Path) -> None:
    """Delete a used copy, but never through a mount point left attached inside it."""
    if not path.exists():
        return
    from xshim.builder.rootfs import mounts_under

    mounted = mounts_under(path)
    if mounted:
        raise TreeError(
            f"not deleting {path}: still mounted inside it: {', '.join(mounted)}; "
            "unmount them (umount -R) and remove the directory by hand"
        )
    shutil.rmtree(path)
