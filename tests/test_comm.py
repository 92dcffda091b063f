"""The kernel's process name for an exec, and the syscall instruction found in an emulator."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from xshim.shim.comm import NameLinks, kernel_name, syscall_offset


def test_the_name_is_the_basename_cut_at_15_bytes() -> None:
    assert kernel_name(b"/usr/bin/cat") == b"cat"
    assert kernel_name(b"cat") == b"cat"
    assert kernel_name(b"/tmp/a-name-of-more-than-sixteen") == b"a-name-of-more-"
    assert kernel_name(b"/opt/qemu/qemu-aarch64-static") == b"qemu-aarch64-st"


def _entry_and_code(path: Path) -> tuple[int, list[tuple[int, int, int]]]:
    data = path.read_bytes()
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    segs = []
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_flags & 1:
            segs.append((p_offset, p_vaddr, p_filesz))
    return entry, segs


def test_a_static_emulator_has_a_syscall_instruction_at_the_offset_found() -> None:
    qemu = shutil.which("qemu-aarch64-static") or pytest.skip("no qemu-aarch64-static")
    path = Path(qemu).resolve()
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = syscall_offset(fd)
    finally:
        os.close(fd)
    assert offset is not None
    entry, segs = _entry_and_code(path)
    vaddr = entry + offset
    data = path.read_bytes()
    (file_at,) = [o + vaddr - v for o, v, n in segs if v <= vaddr < v + n - 1]
    assert data[file_at:file_at + 2] == b"\x0f\x05"


def test_a_dynamically_linked_program_has_none(tmp_path: Path) -> None:
    fd = os.open("/bin/true", os.O_RDONLY)  # it stands in its loader at the exec's stop
    try:
        assert syscall_offset(fd) is None
    finally:
        os.close(fd)
    (tmp_path / "text").write_bytes(b"#!/bin/sh\n")
    fd = os.open(tmp_path / "text", os.O_RDONLY)
    try:
        assert syscall_offset(fd) is None
    finally:
        os.close(fd)


def test_name_links_point_at_the_emulator_and_are_made_once(tmp_path: Path) -> None:
    """The links a rewritten exec runs instead of the emulator: named after the program, in a
    directory per architecture, the path given as the command's root sees it."""
    links = NameLinks(str(tmp_path / "by-name"), b"/dev/.xshim/by-name")
    emu = b"/dev/.xshim/qemu-aarch64-static"
    got = links.link(emu, "aarch64", b"dpkg")
    assert got == b"/dev/.xshim/by-name/aarch64/dpkg"
    assert os.readlink(tmp_path / "by-name" / "aarch64" / "dpkg") == emu.decode()
    assert links.link(emu, "aarch64", b"dpkg") == got  # remembered, not made again
    assert links.targets[got] == emu
    # Made by another supervisor sharing the directory: used as it is.
    other = NameLinks(str(tmp_path / "by-name"), b"/dev/.xshim/by-name")
    assert other.link(emu, "aarch64", b"dpkg") == got
    for bad in (b"", b".", b".."):
        assert links.link(emu, "aarch64", bad) is None  # left to the injected rename


def test_name_links_fall_back_where_the_directory_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    links = NameLinks(str(tmp_path / "file"), b"/x")
    assert links.link(b"/qemu-aarch64-static", "aarch64", b"cat") is None
