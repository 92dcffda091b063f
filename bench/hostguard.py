"""Keeping the host out of it: no binfmt_misc handler before or after, subordinate ids for userns.

If the host's kernel could run a foreign ELF by itself, every number the benchmark prints would
measure that and not the contender, so a registered handler stops the run. The checks only read:
they look at /proc/self/mountinfo before touching /proc/sys/fs/binfmt_misc (listing an autofs
mount point would mount binfmt_misc on the host) and ask the kernel to exec a foreign ELF, which
must fail with ENOEXEC.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
# The private user namespace maps ids 0..65535 onto the same host ids (design.md §4).
SUBID_USER = "root"
SUBID_COUNT = 65536


class HostError(Exception):
    """The host is in a state where the benchmark must not run (or cannot be set up)."""


def _binfmt_fstype(mountinfo: str) -> str | None:
    """The file system type mounted at /proc/sys/fs/binfmt_misc (the topmost), or None."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == str(BINFMT_DIR) and " - " in line:
            found = line.split(" - ", 1)[1].split()[0]
    return found


def binfmt_problems(probe: Path | None) -> list[str]:
    """Why this host's kernel might run foreign code itself; empty when it cannot.

    ``probe`` is a foreign ELF executable; the kernel must refuse it with ENOEXEC.
    """
    problems: list[str] = []
    fstype = _binfmt_fstype(Path("/proc/self/mountinfo").read_text())
    if fstype == "binfmt_misc":
        for entry in sorted(BINFMT_DIR.iterdir()):
            if entry.name not in ("register", "status"):
                try:
                    first = entry.read_text().splitlines()[:2]
                except OSError:
                    first = ["?"]
                problems.append(f"handler {entry.name!r} registered ({'; '.join(first)})")
    elif fstype is not None:
        # An automount point: not mounted yet, and we must not be the ones who mount it.
        pass
    if probe is not None:
        why = _not_foreign(probe)
        if why:
            return [*problems, why]
        try:
            proc = subprocess.run([str(probe)], capture_output=True, timeout=30)
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                problems.append(f"probe {probe}: unexpected {errno.errorcode.get(e.errno or 0)}")
        else:
            problems.append(
                f"the kernel ran the foreign ELF {probe} itself (exit status {proc.returncode}): "
                "some binfmt_misc handler serves it"
            )
    return problems


def _not_foreign(probe: Path) -> str | None:
    """Why ``probe`` cannot tell whether foreign code runs (it must be a foreign ELF)."""
    from xshim.shim import arch as archmod

    try:
        with open(probe, "rb") as f:
            ident = archmod.parse_ident(f.read(64))
    except (OSError, archmod.NotElfError) as e:
        return f"probe {probe}: not a readable ELF file ({e})"
    a = archmod.arch_of(ident)
    if a is None or archmod.natively_runs(archmod.host_arch(), a):
        return f"probe {probe}: not a foreign executable, so it cannot show a handler"
    return None


def assert_no_binfmt(probe: Path | None, when: str) -> None:
    problems = binfmt_problems(probe)
    if problems:
        raise HostError(
            f"{when}: this host has binfmt_misc handling foreign binaries, so every number would "
            "measure the host's handler and not the contenders:\n  " + "\n  ".join(problems)
            + "\n  remove the handler (echo -1 > /proc/sys/fs/binfmt_misc/<name>) and run again"
        )


def _covers(line: str, user: str, count: int) -> bool:
    parts = line.strip().split(":")
    if len(parts) != 3 or parts[0] not in (user, "0"):
        return False
    try:
        start, n = int(parts[1]), int(parts[2])
    except ValueError:
        return False
    return start == 0 and n >= count


def ensure_subids() -> list[Path]:
    """Add ``root:0:65536`` to /etc/subuid and /etc/subgid where missing; return what changed.

    newuidmap/newgidmap refuse ``unshare --map-users=0,0,65536`` without these lines.
    """
    from xshim.builder.fsutil import write_atomic

    changed = []
    for path in SUBID_FILES:
        text = path.read_text() if path.exists() else ""
        if any(_covers(line, SUBID_USER, SUBID_COUNT) for line in text.splitlines()):
            continue
        if text and not text.endswith("\n"):
            text += "\n"
        write_atomic(path, (text + f"{SUBID_USER}:0:{SUBID_COUNT}\n").encode(), mode=0o644)
        changed.append(path)
    return changed


def kernel_version() -> tuple[int, int]:
    release = os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def user_ns_id() -> str:
    return os.readlink("/proc/self/ns/user")
