"""TraceeMemory's reads and writes: on this very process (process_vm_* allow one's own pid), and
word by word (PTRACE_PEEKDATA/POKEDATA) on a stopped child."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import struct
from collections.abc import Callable, Iterator

import pytest
from xshim.shim import ptrace as pt

PID = os.getpid()


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def test_read_pair_reads_a_path_and_an_argv_in_one_go() -> None:
    mem = pt.TraceeMemory()
    path = ctypes.create_string_buffer(b"/usr/bin/true")
    args = [ctypes.create_string_buffer(s) for s in (b"true", b"--version")]
    argv = (ctypes.c_uint64 * 3)(_addr(args[0]), _addr(args[1]), 0)
    head, ptrs = mem.read_pair(PID, _addr(path), ctypes.addressof(argv))
    assert mem.read_cstring(PID, _addr(path), first=head) == b"/usr/bin/true"
    got = mem.read_pointers(PID, ctypes.addressof(argv), first=ptrs)
    assert [mem.read_cstring(PID, p) for p in got] == [b"true", b"--version"]


def test_an_unreadable_half_comes_back_empty_and_the_other_intact() -> None:
    mem = pt.TraceeMemory()
    path = ctypes.create_string_buffer(b"/bin/sh")
    head, ptrs = mem.read_pair(PID, _addr(path), 0)  # a NULL argv
    assert head.startswith(b"/bin/sh\0") and ptrs == b""
    assert mem.read_pointers(PID, 0, first=ptrs) == []
    head, _ = mem.read_pair(PID, 8, _addr(path))
    assert head == b""
    with pytest.raises(OSError) as e:
        mem.read_cstring(PID, 8, first=head)
    assert e.value.errno == errno.EFAULT


def test_strings_and_arrays_that_cross_into_an_unmapped_page() -> None:
    # Two pages, the second made inaccessible: data ending right at the boundary must read.
    region = mmap.mmap(-1, 2 * mmap.PAGESIZE)
    anchor = ctypes.c_char.from_buffer(region)
    base = ctypes.addressof(anchor)
    try:
        assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(base + mmap.PAGESIZE),
                                          mmap.PAGESIZE, 0) == 0
        s = b"x" * 300 + b"\0"
        at = mmap.PAGESIZE - len(s)
        region[at:mmap.PAGESIZE] = s
        mem = pt.TraceeMemory()
        head, _ = mem.read_pair(PID, base + at, base + at)
        assert mem.read_cstring(PID, base + at, first=head) == b"x" * 300
        ptrs = struct.pack("<3Q", 1, 2, 0)
        region[mmap.PAGESIZE - 24:mmap.PAGESIZE] = ptrs
        assert mem.read_pointers(PID, base + mmap.PAGESIZE - 24) == [1, 2]
    finally:
        ctypes.CDLL(None).mprotect(ctypes.c_void_p(base + mmap.PAGESIZE), mmap.PAGESIZE, 3)
        del anchor  # the mapping cannot close while ctypes still holds a view of it
        region.close()


def test_write_small_and_large() -> None:
    mem = pt.TraceeMemory()
    for size in (40, 3 * 4096):
        buf = ctypes.create_string_buffer(size)
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        mem.write(PID, _addr(buf), data)
        assert buf.raw == data



@contextlib.contextmanager
def stopped_child(prepare: Callable[[], object] = lambda: None) -> Iterator[int]:
    """A forked child, seized and stopped once ``prepare`` has run in it. It has our memory
    layout, so our addresses are its."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only waits to be killed
        try:
            prepare()
            os.write(w, b"x")
            while True:
                signal.pause()
        finally:
            os._exit(1)  # never back into the test runner
    try:
        os.close(w)
        os.read(r, 1)
        pt.seize(pid, 0)
        pt.interrupt(pid)
        os.waitpid(pid, 0)
        yield pid
    finally:
        os.close(r)
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_peekdata_and_pokedata_at_any_alignment() -> None:
    """The word-by-word path, for tracees whose memory only PTRACE_PEEKDATA can reach."""
    mem = pt.TraceeMemory()
    buf = ctypes.create_string_buffer(bytes(range(64)))
    base = _addr(buf)
    with stopped_child() as pid:
        assert mem._peek(pid, base + 3, 20) == bytes(range(3, 23))
        mem._poke(pid, base + 5, b"abcdefghijk")
        expected = bytes(range(5)) + b"abcdefghijk" + bytes(range(16, 64))
        assert mem._peek(pid, base, 64) == expected
        assert buf.raw[:64] == bytes(range(64))  # the child's copy changed, not ours
        with pytest.raises(pt.Unreadable):
            mem._peek(pid, 8, 8)
        with pytest.raises(pt.Unreadable):
            mem._poke(pid, 8, b"x")


def test_a_short_peek_stops_where_the_memory_ends() -> None:
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    page = mmap.PAGESIZE
    base = libc.mmap(None, 2 * page, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    try:
        ctypes.memmove(base + page - 4, b"tail", 4)
        with stopped_child(lambda: libc.munmap(ctypes.c_void_p(base + page), page)) as pid:
            assert pt.TraceeMemory()._peek(pid, base + page - 4, 64) == b"tail"
    finally:
        libc.munmap(ctypes.c_void_p(base), 2 * page)
