"""Finished Debian minbase trees for every Debian architecture xshim is tested on, cached.

Each foreign tree is made the way a user makes one: ``xshim rootfs --platform P --suite S DIR``
(debootstrap --foreign, no emulation), then ``xshim run --rootfs DIR --
/debootstrap/debootstrap --second-stage``. The two trees the host runs itself (amd64, i386) come
from a plain ``debootstrap`` on the host. Every tree is built beside its final place in the test
cache, under a lock, and renamed into place only once it is complete; ``NAME.times.json`` beside
it records how long each stage took, ``NAME.log`` the second stage's output.

API:
  TARGETS                                 Debian architecture -> Target (platform, suite)
  finished(debian_arch) -> Path           the finished tree; never change it, copy_tree() it
  native(debian_arch) -> Path             amd64 / i386 tree made by debootstrap on the host
  times(debian_arch) -> dict[str, float]  {"first_stage": s, "second_stage": s} as measured
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from . import foreign


class Target(NamedTuple):
    platform: str
    suite: str
    # What `uname -m` prints under qemu-user 7.2 (default CPU), as it does under binfmt_misc:
    # the architecture table's value (the kernel's on that hardware) except for armel, where
    # qemu-arm's default CPU is an ARMv7 one (armv7l) and an ARMv5 board says armv5tel.
    uname: str


# riscv64 became a Debian release architecture with trixie; bookworm has no riscv64 port.
TARGETS: dict[str, Target] = {
    "arm64": Target("linux/arm64", "bookworm", "aarch64"),
    "armhf": Target("linux/arm/v7", "bookworm", "armv7l"),
    "armel": Target("linux/arm/v5", "bookworm", "armv7l"),
    "ppc64el": Target("linux/ppc64le", "bookworm", "ppc64le"),
    "s390x": Target("linux/s390x", "bookworm", "s390x"),
    "mips64el": Target("linux/mips64le", "bookworm", "mips64"),
    "riscv64": Target("linux/riscv64", "trixie", "riscv64"),
}
# The tree made by one `xshim rootfs --second-stage` command instead of `xshim rootfs` followed by
# `xshim run`: the quickest second stage, so the CLI's own path costs no extra tree.
ONE_COMMAND = "riscv64"
NATIVE: dict[str, Target] = {
    "amd64": Target("linux/amd64", "bookworm", "x86_64"),
    "i386": Target("linux/386", "bookworm", "i686"),
}


def _name(debian_arch: str, suite: str, what: str) -> str:
    return f"{debian_arch}-{suite}-minbase-{what}"


def _finished_name(debian_arch: str) -> str:
    what = "finished-by-cli" if debian_arch == ONE_COMMAND else "finished"
    return _name(debian_arch, TARGETS[debian_arch].suite, what)


def times(debian_arch: str) -> dict[str, float]:
    if debian_arch in TARGETS:
        name = _finished_name(debian_arch)
    else:
        name = _name(debian_arch, NATIVE[debian_arch].suite, "native")
    path = foreign.cache_root() / f"{name}.times.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}


def _run(argv: list[str], log: Path | None = None, timeout: float = 3600) -> float:
    """Run ``argv``; its seconds. Its output goes to ``log``, and its tail into a failure."""
    start = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    took = time.monotonic() - start
    out = proc.stdout.decode(errors="replace")
    if log is not None:
        log.write_text(out)
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-40:])
        raise AssertionError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
    return took


def _need_root_and_archive(suite: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    foreign.archive_or_skip(suite)


def _build(name: str, make: Callable[[Path], tuple[Path, dict[str, float]]]) -> Path:
    final = foreign.cache_root() / name
    if final.exists():
        return final
    with foreign.locked(foreign.cache_root() / f".{name}.lock"):
        if final.exists():  # another process built it while we waited
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=final.parent))
        try:
            tree, took = make(work)
            final.with_name(f"{name}.times.json").write_text(json.dumps(took) + "\n")
            os.rename(tree, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def finished(debian_arch: str) -> Path:
    """The finished minbase tree of ``debian_arch`` (a key of TARGETS), made once and cached.

    The first call that finds a tree missing makes every missing one, as many at a time as there
    are CPUs: a second stage is one qemu process after another, so one tree keeps one CPU busy,
    and on a fresh machine this halves the time the trees take on two cores."""
    t = TARGETS[debian_arch]
    name = _finished_name(debian_arch)
    if (foreign.cache_root() / name).exists():
        return foreign.cache_root() / name
    _need_root_and_archive(t.suite)
    _make_missing_alongside(debian_arch)
    return _finished(debian_arch)


_tried_all = False


def _make_missing_alongside(wanted: str) -> None:
    """Make the other missing trees while ``wanted`` is made (once per test session)."""
    global _tried_all
    if _tried_all:
        return
    _tried_all = True
    root = foreign.cache_root()
    others = [a for a, t in TARGETS.items()
              if a != wanted and not (root / _finished_name(a)).exists()]
    if not others:
        return
    workers = max(1, min(len(others) + 1, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        mine = pool.submit(_finished, wanted)
        rest = [pool.submit(_finished, a) for a in others]
        mine.result()  # its own failure is the caller's; the others' are theirs, when asked for
        concurrent.futures.wait(rest)


def _finished(debian_arch: str) -> Path:
    t = TARGETS[debian_arch]
    name = _finished_name(debian_arch)

    def make(work: Path) -> tuple[Path, dict[str, float]]:
        tree = work / "rootfs"
        if debian_arch == ONE_COMMAND:
            # Both stages through the CLI in one command, as the README shows it.
            took = _run(["xshim", "rootfs", "--platform", t.platform, "--suite", t.suite,
                         "--second-stage", str(tree)], log=foreign.cache_root() / f"{name}.log")
            left = sorted(p.name for p in work.iterdir() if p != tree)
            assert not left, f"xshim rootfs left {left} beside the tree"
            assert not (tree / "debootstrap").exists(), f"the second stage of {name} did not finish"
            return tree, {"rootfs_second_stage": round(took, 1)}
        first = _run(["xshim", "rootfs", "--platform", t.platform, "--suite", t.suite,
                      str(tree)])
        second = _run(["xshim", "run", "--rootfs", str(tree), "--",
                       "/debootstrap/debootstrap", "--second-stage"],
                      log=foreign.cache_root() / f"{name}.log")
        assert not (tree / "debootstrap").exists(), f"the second stage of {name} did not finish"
        assert (tree / "var/lib/dpkg/status").is_file()
        return tree, {"first_stage": round(first, 1), "second_stage": round(second, 1)}

    return _build(name, make)


def native(debian_arch: str) -> Path:
    """The minbase tree of a host-native architecture (amd64, i386), from plain debootstrap."""
    t = NATIVE[debian_arch]
    name = _name(debian_arch, t.suite, "native")
    if (foreign.cache_root() / name).exists():
        return foreign.cache_root() / name
    _need_root_and_archive(t.suite)
    from xshim.builder import debian

    def make(work: Path) -> tuple[Path, dict[str, float]]:
        tree = work / "rootfs"
        argv = ["debootstrap", f"--arch={debian_arch}", "--variant=minbase"]
        if debian.DEFAULT_KEYRING.is_file():
            argv.append(f"--keyring={debian.DEFAULT_KEYRING}")
        took = _run([*argv, t.suite, str(tree), debian.find_mirror(None)],
                    log=foreign.cache_root() / f"{name}.log")
        assert (tree / "var/lib/dpkg/status").is_file()
        return tree, {"debootstrap": round(took, 1)}

    return _build(name, make)
