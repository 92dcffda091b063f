"""One-line notes for the limits that come from running every command traced under
``PR_SET_NO_NEW_PRIVS``, said where they bite (once each per run) instead of leaving a user to
guess from a program's own confused error.

- A set-user-ID or set-group-ID program does not change identity: no_new_privs, which the
  seccomp filter needs without CAP_SYS_ADMIN, makes the kernel ignore the bits. (binfmt_misc
  without its ``C`` flag, as Debian registers qemu, ignores them for foreign programs too.)
- A process has one tracer, and that is the supervisor: a native program's ptrace gets EPERM.
  An emulated one never reaches the kernel: qemu-user answers ENOSYS, as under binfmt_misc.
"""

from __future__ import annotations

import os
import stat

# Programs whose whole job is ptrace; under qemu-user they fail with ENOSYS, which says little.
_TRACERS = frozenset({b"strace", b"ltrace", b"gdb", b"gdbserver"})


def _ids(pid: int) -> tuple[int, set[int]] | None:
    """The tracee's effective uid and its effective and supplementary gids."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"Uid", b"Gid", b"Groups"):
            fields[key] = value.split()
    try:
        euid = int(fields[b"Uid"][1])
        gids = {int(fields[b"Gid"][1])} | {int(g) for g in fields.get(b"Groups", [])}
    except (KeyError, IndexError, ValueError):
        return None
    return euid, gids


def setid_note(pid: int, path: bytes, st: os.stat_result) -> str | None:
    """The note for a set-ID program whose bits would change the tracee's identity, else None."""
    suid = bool(st.st_mode & stat.S_ISUID)
    # Set-group-ID without group execute marks mandatory locking, not a set-ID program.
    sgid = bool(st.st_mode & stat.S_ISGID) and bool(st.st_mode & stat.S_IXGRP)
    if not (suid or sgid):
        return None
    ids = _ids(pid)
    if ids is None:
        return None
    euid, gids = ids
    if euid == 0:
        return None  # root's capabilities already give what the bits would (in practice)
    if suid and st.st_uid != euid:
        what, who = "set-user-ID", f"uid {st.st_uid}"
    elif sgid and st.st_gid not in gids:
        what, who = "set-group-ID", f"gid {st.st_gid}"
    else:
        return None  # the bits would change nothing
    return (f"{path.decode(errors='replace')} is {what} ({who}) but runs as uid {euid}: "
            "under xshim (no_new_privs) set-ID programs do not change identity; "
            "run this step as root (USER root) instead")


def tracer_note(path: bytes, emulated: bool) -> str | None:
    """The note for an exec of strace, gdb and the like, which cannot trace here."""
    if os.path.basename(path) not in _TRACERS:
        return None
    name = os.path.basename(path).decode()
    if emulated:
        return (f"{name} cannot trace under emulation: qemu-user does not implement ptrace (the "
                "same under binfmt_misc); XSHIM_TRACE=stderr (or xshim run --trace) shows the "
                "execs instead")
    return ptrace_note(name)


def ptrace_note(name: str) -> str:
    """The note for a native process's ptrace, which the supervisor's own tracing refuses."""
    return (f"{name} called ptrace, which fails with EPERM here: every process under xshim is "
            "already traced by its supervisor and a process has one tracer")
