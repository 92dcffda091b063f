"""The supervisor's record of each traced thread: made on first sight, what a successful exec
resets and what it keeps, a vfork child's mapping handed to its parent, a thread's exec that
takes the leader's pid, and the trace's ancestry read from the records. No tracee, no root."""

from __future__ import annotations

import pytest
from xshim.shim.pidstate import PidState, PidTable, Retry
from xshim.shim.supervisor import Config, Supervisor

AREA = (0x7F0000000000, 8192)


def _mid_exec(t: PidState) -> None:
    """Everything one emulated exec in flight can hold."""
    t.saved = (1, 2, 3, 4, 5, 59)
    t.undump = 0
    t.emu_fd = 9
    t.scratch = AREA
    t.twinning = True
    t.no_twin = "its twin's exec failed with ENOENT"
    t.emulating = b"/usr/bin/xz"
    t.name = (b"xz", 0x1234)


def test_a_record_is_made_on_first_sight_and_only_a_lookup_makes_it() -> None:
    pids = PidTable()
    assert pids.get(7) is None and 7 not in pids
    t = pids[7]
    assert pids[7] is t and not t.started and t.parent == 0 and t.exec_time is None
    assert pids.drop(7) is t and 7 not in pids
    assert pids.drop(7) is None


def test_the_record_has_slots_only() -> None:
    t = PidState()
    assert not hasattr(t, "__dict__")
    with pytest.raises(AttributeError):
        t.sharers = 1  # type: ignore[attr-defined]
    assert "scratch=None" in repr(t)


def test_a_successful_exec_drops_the_exec_s_state_and_keeps_the_thread_s() -> None:
    pids = PidTable()
    t = pids[7]
    t.started, t.parent, t.exec_time, t.root_known = True, 3, 12.5, True
    _mid_exec(t)
    t.unmap_later = (0x1000, 4096)  # a child's, in memory the new image no longer has
    assert pids.exec_done(t) == (b"xz", 0x1234)  # the name the new image is to get
    fresh = PidState()
    for field in ("saved", "undump", "emu_fd", "scratch", "sharer", "twinning", "no_twin",
                  "emulating", "name", "unmap_later"):
        assert getattr(t, field) == getattr(fresh, field), field
    assert (t.started, t.parent, t.exec_time, t.root_known) == (True, 3, 12.5, True)


def test_a_retry_is_left_for_the_trap_it_was_made_for() -> None:
    pids = PidTable()
    t = pids[7]
    t.retry = Retry(None)
    pids.exec_done(t)
    assert t.retry == Retry(None)


def test_a_vfork_child_s_mapping_is_its_parent_s_to_remove_after_its_exec() -> None:
    pids = PidTable()
    parent, child = pids[10], pids[11]
    child.scratch, child.sharer = AREA, 10
    assert pids.exec_done(child) is None
    assert parent.unmap_later == AREA
    assert child.scratch is None and child.sharer == 0 and child.unmap_later is None


def test_a_mapping_shared_with_a_parent_that_is_gone_makes_no_record() -> None:
    pids = PidTable()
    child = pids[11]
    child.scratch, child.sharer = AREA, 10
    pids.exec_done(child)
    assert 10 not in pids


def test_a_mapping_of_its_own_goes_with_the_old_image() -> None:
    pids = PidTable()
    parent, child = pids[10], pids[11]
    child.scratch = AREA  # not shared: sharer 0
    pids.exec_done(child)
    assert parent.unmap_later is None and child.scratch is None


def test_a_thread_s_exec_takes_the_leader_s_pid_and_the_thread_s_record_goes() -> None:
    pids = PidTable()
    leader = pids[20]
    leader.started, leader.parent, leader.exec_time, leader.root_known = True, 1, 1.0, True
    thread = pids[21]
    thread.started, thread.parent, thread.exec_time = True, 20, 2.0
    _mid_exec(thread)
    grandchild = pids[30]
    grandchild.parent = 21  # forked by the thread
    assert pids.thread_exec(leader, 21) == (b"xz", 0x1234)
    assert 21 not in pids
    assert leader.exec_time == 2.0  # the exec just made is the thread's
    assert (leader.started, leader.parent, leader.root_known) == (True, 1, True)
    assert grandchild.parent == 20  # hangs from the thread's parent, as through the thread


def test_a_thread_never_seen_leaves_the_leader_as_it_was() -> None:
    pids = PidTable()
    leader = pids[20]
    leader.exec_time = 1.0
    assert pids.thread_exec(leader, 21) is None
    assert leader.exec_time == 1.0 and 21 not in pids


def _supervisor() -> Supervisor:
    return Supervisor(Config(emulators={}))


def test_the_traced_parent_is_the_nearest_ancestor_that_exec_d() -> None:
    sup = _supervisor()
    pids = sup.pids
    pids[2].exec_time = 1.0  # the shell
    pids[3].parent = 2  # a subshell that never execs
    pids[4].parent = 3
    pids[4].exec_time = 2.0
    assert sup._traced_parent(4) == 2
    assert sup._traced_parent(3) == 2
    assert sup._traced_parent(2) == 0
    assert sup._traced_parent(99) == 0 and 99 not in pids  # asking makes no record


def test_children_of_an_exited_parent_hang_from_the_root() -> None:
    sup = _supervisor()
    pids = sup.pids
    pids[2].exec_time = 1.0
    pids[3].parent = 2
    pids[4].parent = 3
    sup._exited(3, 0, None)
    assert 3 not in pids
    assert sup._traced_parent(4) == 0


def test_a_thread_s_exec_keeps_the_ancestry_of_what_it_forked() -> None:
    sup = _supervisor()
    pids = sup.pids
    pids[20].exec_time = 1.0  # the process
    pids[21].parent = 20  # its thread, which forks 30 and then execs
    pids[30].parent = 21
    before = sup._traced_parent(30)
    pids[21].exec_time = 2.0
    pids.thread_exec(pids[20], 21)
    assert sup._traced_parent(30) == before == 20
