"""The planner's pure parts: which descriptor an exec goes through, and what a tracee hidden by
/proc must tell the supervisor before its exec can be planned."""

from __future__ import annotations

from xshim.shim import ptrace as pt
from xshim.shim.plan import NeedView, Planner, fd_of


def test_the_descriptor_an_exec_goes_through() -> None:
    assert fd_of(7, pt.AT_FDCWD, b"/bin/sh") is None
    assert fd_of(7, pt.AT_FDCWD, b"bin/sh") is None
    assert fd_of(7, 3, b"sh") == 3
    assert fd_of(7, 3, b"") == 3
    assert fd_of(7, 3, b"/bin/sh") is None  # an absolute path ignores the descriptor
    assert fd_of(7, pt.AT_FDCWD, b"/proc/self/fd/4") == 4
    assert fd_of(7, pt.AT_FDCWD, b"/proc/thread-self/fd/5") == 5
    assert fd_of(7, pt.AT_FDCWD, b"/proc/7/fd/6") == 6
    assert fd_of(7, pt.AT_FDCWD, b"/proc/8/fd/6") is None  # another process's
    assert fd_of(7, pt.AT_FDCWD, b"/proc/self/fd/4/x") is None


def test_what_a_hidden_tracee_must_tell() -> None:
    p = Planner({}, frozenset(), None, None, "/")
    assert p.needs(7, pt.AT_FDCWD, b"/bin/sh", root_known=True) is None
    assert p.needs(7, pt.AT_FDCWD, b"/bin/sh", root_known=False) == NeedView(True, False, None)
    assert p.needs(7, pt.AT_FDCWD, b"bin/sh", root_known=True) == NeedView(False, True, None)
    assert p.needs(7, 3, b"sh", root_known=True) == NeedView(False, False, 3)
    assert p.needs(7, pt.AT_FDCWD, b"/proc/self/fd/4", root_known=True) == NeedView(False, False, 4)
