"""TraceeMemory's reads and writes, on this very process (process_vm_* allow one's own pid)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

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
