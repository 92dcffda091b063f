"""The one-line notes for limits that come from running commands traced (shim/limits.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator

import pytest
from xshim.shim import limits


def _st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


def test_plain_programs_get_no_note() -> None:
    assert limits.setid_note(os.getpid(), b"/bin/true", _st(0o755)) is None


@pytest.fixture
def unprivileged() -> Iterator[int]:
    """The pid of a process that is not root (this one, or a child that dropped to nobody)."""
    if os.geteuid() != 0:
        yield os.getpid()
        return
    proc = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                             "sleep", "60"])
    try:
        for _ in range(200):  # until the child has dropped its credentials
            with open(f"/proc/{proc.pid}/status") as f:
                if "\nUid:\t65534" in f.read():
                    break
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_set_user_id_of_another_user_is_noted(unprivileged: int) -> None:
    note = limits.setid_note(unprivileged, b"/usr/bin/su", _st(0o4755, uid=0))
    assert note is not None and "/usr/bin/su is set-user-ID (uid 0)" in note
    assert "USER root" in note
    group = limits.setid_note(unprivileged, b"/usr/bin/chage", _st(0o2755, gid=42))
    assert group is not None and "set-group-ID (gid 42)" in group


def test_set_id_bits_that_change_nothing_are_not_noted() -> None:
    own = _st(0o6755, uid=os.geteuid(), gid=os.getegid())
    assert limits.setid_note(os.getpid(), b"/x", own) is None
    # Set-group-ID without group execute is the mandatory-locking mark, not a set-ID program.
    assert limits.setid_note(os.getpid(), b"/x", _st(0o2745, uid=os.geteuid(), gid=12345)) is None


@pytest.mark.root(reason="the note is left out for root only")
def test_root_gets_no_note() -> None:
    assert limits.setid_note(os.getpid(), b"/usr/bin/su", _st(0o4755, uid=1000)) is None


def test_tracers_are_noted_by_name() -> None:
    emulated = limits.tracer_note(b"/usr/bin/strace", emulated=True)
    assert emulated is not None and "qemu-user does not implement ptrace" in emulated
    native = limits.tracer_note(b"/usr/bin/gdb", emulated=False)
    assert native is not None and "EPERM" in native
    assert limits.tracer_note(b"/usr/bin/stracefoo", emulated=True) is None
