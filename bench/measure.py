"""Timed runs and what they produce: samples, the statistic taken from them, per-exec cost."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Every contender gets the same small environment, so none pays for (or profits from) the
# caller's; container=lxc makes debootstrap skip mknod, which a user namespace refuses
# (design.md §4) — given to all contenders so they all do the same work.
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C",
    "container": "lxc",
}

# Where debootstrap would find itself anyway; said out loud because under proot its own
# `[ -x /debootstrap/debootstrap ]` looks at the host (proot 5.1 does not translate faccessat2,
# which qemu passes straight through) and it would look for /usr/share/debootstrap instead.
STAGE_ENV = {**GUEST_ENV, "DEBOOTSTRAP_DIR": "/debootstrap"}

STATS = ("median", "best")


def pick(samples: list[float], stat: str) -> float:
    return min(samples) if stat == "best" else statistics.median(samples)


@dataclass
class ExecLoop:
    """Wall times of the exec loop with ``n`` execs and with none (start-up only)."""

    n: int
    full: list[float] = field(default_factory=list)
    zero: list[float] = field(default_factory=list)
    full_cpu: list[float] = field(default_factory=list)  # user + system time of the loop

    def total(self, stat: str) -> float:
        return pick(self.full, stat)

    def start(self, stat: str) -> float:
        return pick(self.zero, stat)

    def cpu(self, stat: str) -> float:
        return pick(self.full_cpu, stat)

    def per_exec(self, stat: str) -> float:
        """Seconds per exec: what the loop costs beyond the contender's fixed start-up."""
        return (self.total(stat) - self.start(stat)) / self.n


@dataclass
class Runs:
    """Whole runs of one build-like workload: wall and CPU time of each round, what it left."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    result: str = ""  # e.g. "143 pkgs": should be the same for every contender
    error: str | None = None

    def wall(self, stat: str) -> float:
        return pick(self.seconds, stat)

    def cpu(self, stat: str) -> float:
        return pick(self.cpu_seconds, stat)


@dataclass
class SecondStage:
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    packages: int = 0

    def wall(self, stat: str) -> float:
        return pick(self.seconds, stat)

    def cpu(self, stat: str) -> float:
        return pick(self.cpu_seconds, stat)


class RunFailed(Exception):
    """A contender's command failed; the message is one line, fit for the table."""


@dataclass(frozen=True)
class Timed:
    seconds: float
    # User + system time of the command and every descendant that was waited for. Other work
    # on the machine stretches wall time but hardly this, so it is the steadier comparison.
    cpu: float
    stdout: str


def timed(
    argv: list[str], timeout: float, log: Path | None = None, env: dict[str, str] | None = None
) -> Timed:
    """Run ``argv`` with ``env`` (GUEST_ENV) and no stdin; its wall time, or RunFailed."""
    out = open(log, "wb") if log else None  # noqa: SIM115 - closed below, after the run
    try:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                argv, env=env or GUEST_ENV, stdin=subprocess.DEVNULL,
                stdout=out if out else subprocess.PIPE,
                stderr=subprocess.STDOUT if out else subprocess.PIPE,
                timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            raise RunFailed(f"timed out after {timeout:.0f} s") from None
        except OSError as e:
            raise RunFailed(f"{argv[0]}: {e.strerror}") from None
        seconds = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        if out:
            out.close()
    stdout = proc.stdout.decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        if out and log:
            err = log.read_text(errors="replace")
        else:
            err = proc.stderr.decode(errors="replace") if proc.stderr else ""
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        last = lines[-1] if lines else "(no output)"
        raise RunFailed(f"exit status {proc.returncode}: {last}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Timed(seconds, cpu, stdout)


def expect_aarch64(result: Timed) -> None:
    first = result.stdout.strip().splitlines()[:1]
    if first != ["aarch64"]:
        raise RunFailed(f"uname -m printed {result.stdout.strip()[:60]!r}, not 'aarch64'")


def installed_packages(tree: Path) -> int:
    """Packages dpkg records as fully installed in ``tree``."""
    status = tree / "var" / "lib" / "dpkg" / "status"
    if not status.is_file():
        return 0
    return status.read_text(errors="replace").count("\nStatus: install ok installed")


def package_status(tree: Path) -> dict[str, str]:
    """Package -> its Status field in dpkg's database of ``tree``."""
    status = tree / "var" / "lib" / "dpkg" / "status"
    out: dict[str, str] = {}
    if not status.is_file():
        return out
    for stanza in status.read_text(errors="replace").split("\n\n"):
        name = state = None
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Status: "):
                state = line[8:].strip()
        if name and state:
            out[name] = state
    return out


def check_second_stage(tree: Path) -> int:
    """The installed-package count of a finished tree, or RunFailed if it is not finished."""
    if (tree / "debootstrap").exists():
        raise RunFailed("debootstrap/ still present: the second stage did not finish")
    n = installed_packages(tree)
    if n == 0:
        raise RunFailed("no package is installed in the tree after the second stage")
    return n


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
