"""What the supervisor keeps about each traced thread: one record per pid, in one table.

A record is made the first time its pid is seen (the first stop of a new tracee, or, when
tracing, its parent's fork event, whichever comes first) and dropped in one place, ``drop``,
when the thread is gone: it exited, or, not being its process's leader, it exec'd and took the
leader's pid. In between, its fields fall into three lifetimes:

- the thread's: ``started``, ``parent``, ``exec_time`` (the loop's) and ``root_known``;
- one exec's, from its trap to its end (shim/execs.py): the registers to give back, the
  mapping made for a new argv, the emulator's descriptor, ... A failed exec gives them back
  one by one; a successful one drops them at its exec event (``exec_done``), as the new image
  has none of them. ``retry`` is taken by the trap it was made for;
- ``unmap_later``: a vfork child's mapping left in this thread's memory by the child's exec.

A plain class with ``__slots__``, not a dataclass: importing dataclasses (and with it inspect)
would add milliseconds to every start of the shim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .abi import Saved
    from .blind import View


class Retry(NamedTuple):
    """An exec sent round again after calls were injected to prepare it."""

    view: View | None  # what the tracee told us about its root, cwd or descriptor


class PidState:
    """One traced thread, as the supervisor knows it between two of its stops."""

    __slots__ = (
        "emu_fd",
        "emulating",
        "exec_time",
        "name",
        "no_twin",
        "parent",
        "retry",
        "root_known",
        "saved",
        "scratch",
        "sharer",
        "started",
        "twinning",
        "undump",
        "unmap_later",
    )

    def __init__(self) -> None:
        # -- the thread's, kept until it is gone --
        # Its first stop has been seen (the command's first process has none: it is seized).
        self.started = False
        self.parent = 0  # the pid whose fork event made it, 0: unknown (kept only when tracing)
        self.exec_time: float | None = None  # its latest exec's seccomp stop (only when tracing)
        # /proc hides it, and its root was checked to be the command's and cannot change.
        self.root_known = False
        # -- one exec's: from its trap to its exec event, or given back when it fails --
        self.retry: Retry | None = None  # taken by its next trap, the round it was made for
        self.saved: Saved | None = None  # the caller's arguments and call before a rewrite
        # It was made dumpable to be read (shim/execs.py _prepare): what to set back if the
        # exec fails.
        self.undump: int | None = None
        self.emu_fd: int | None = None  # its descriptor of the emulator (shim/handoff.py)
        self.scratch: tuple[int, int] | None = None  # a mapping made for its new argv
        # The parent whose memory it shares (vfork, CLONE_VM), so the scratch mapping too: 0 if
        # none. Set with scratch, and read only while scratch is set.
        self.sharer = 0
        self.twinning = False  # its exec was rewritten into its twin's (shim/twinexec.py)
        # Why its twin is not used: the twin's exec failed. Kept until an exec succeeds, so a
        # later exec of the same program, after a failed emulated one, skips it too.
        self.no_twin: str | None = None
        self.emulating: bytes | None = None  # the path of its rewritten exec, when tracing
        self.name: tuple[bytes, int] | None = None  # (name, syscall offset): shim/comm.py
        # -- another exec's --
        # A scratch mapping of a vfork child, made in this thread's memory and left there by the
        # child's exec: unmapped at the syscall-exit stop after this thread's next fork event
        # (the only stop of a vfork parent where a call can surely be injected).
        self.unmap_later: tuple[int, int] | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"PidState({fields})"


class PidTable(dict[int, PidState]):
    """pid -> its record. Looking a pid up makes its record on first sight: the loop looks up
    only pids that stopped, which are traced; look-ups that may name a pid already gone (a
    parent) use ``get``."""

    __slots__ = ()

    def __missing__(self, pid: int) -> PidState:
        state = self[pid] = PidState()
        return state

    def drop(self, pid: int) -> PidState | None:
        """The thread is gone: the one place a record is removed."""
        return self.pop(pid, None)

    def exec_done(self, state: PidState) -> tuple[bytes, int] | None:
        """Its exec succeeded: nothing to give back, and memory made for the exec went with the
        old image, except a mapping in memory it shared with its parent (vfork), which becomes
        the parent's to remove. Returns the name the new image is to get (shim/comm.py)."""
        name = state.name
        state.saved = state.undump = state.emu_fd = None  # the descriptor was close-on-exec
        state.twinning = False
        state.no_twin = state.emulating = state.name = None
        area = state.scratch
        if area is not None:
            state.scratch = None
            if state.sharer:
                parent = self.get(state.sharer)
                if parent is not None:
                    parent.unmap_later = area
            state.sharer = 0
        state.unmap_later = None  # its own memory is new: nothing of a child's left in it
        return name

    def thread_exec(self, leader: PidState, former: int) -> tuple[bytes, int] | None:
        """Thread ``former``, not the leader, exec'd and took the leader's pid, whose record
        (``leader``) stays with it; ``former`` is gone without an exit of its own. Its exec is
        done; its children hang from its parent in the trace, as they would through a thread
        that has no exec of its own. Returns the name the new image is to get."""
        state = self.drop(former)
        if state is None:
            return None
        name = self.exec_done(state)
        if state.exec_time is not None:
            leader.exec_time = state.exec_time
        if state.parent:
            for other in self.values():
                if other.parent == former:
                    other.parent = state.parent
        return name
