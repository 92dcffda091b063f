"""The pure exec decisions: ELF headers from the architecture table, #! lines, argv building."""

from __future__ import annotations

import struct

import pytest
from support.headers import elf_header
from xshim.shim import arch as A
from xshim.shim.decide import (
    Foreign,
    Native,
    Script,
    Unknown,
    UnknownElf,
    classify,
    emulated_argv,
    parse_shebang,
)

HOST = A.by_name("x86_64")


@pytest.mark.parametrize("a", A.ARCHES, ids=lambda a: a.name)
def test_every_table_row_round_trips_through_its_elf_header(a: A.Arch) -> None:
    kind = classify(elf_header(a), HOST)
    if A.natively_runs(HOST, a):
        assert kind == Native(a)
    else:
        assert kind == Foreign(a)


def test_arm_float_abi_picks_the_platform_but_both_use_qemu_arm() -> None:
    armhf, armel = A.by_name("armhf"), A.by_name("armel")
    hard = classify(elf_header(armhf, flags=0x05000400), HOST)
    soft = classify(elf_header(armhf, flags=0x05000200), HOST)
    assert hard == Foreign(armhf) and soft == Foreign(armel)
    assert armhf.qemu == armel.qemu == "arm"
    assert armhf.platform == "linux/arm/v7"


def test_mips_n32_is_told_apart_from_o32() -> None:
    a = A.by_name("mipsel")
    assert classify(elf_header(a, flags=A.EF_MIPS_ABI2), HOST) == Foreign(A.by_name("mipsn32el"))
    assert classify(elf_header(a, flags=0), HOST) == Foreign(a)


def test_relocatable_objects_and_unknown_machines_are_left_to_the_kernel() -> None:
    a = A.by_name("aarch64")
    assert isinstance(classify(elf_header(a, e_type=1), HOST), UnknownElf)
    weird = bytearray(elf_header(a))
    weird[18:20] = struct.pack("<H", 9999)
    assert classify(bytes(weird), HOST) == UnknownElf(9999, A.ELFCLASS64)
    assert classify(b"\x7fELF\x09", HOST) == Unknown()
    assert classify(b"plain text", HOST) == Unknown()
    assert classify(b"", HOST) == Unknown()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"#!/bin/sh\n", Script(b"/bin/sh", None)),
        (b"#! /bin/sh -e\nexit\n", Script(b"/bin/sh", b"-e")),
        (b"#!/usr/bin/env python3\n", Script(b"/usr/bin/env", b"python3")),
        # Linux passes everything after the interpreter as ONE argument.
        (b"#!/usr/bin/env -S a b  \n", Script(b"/usr/bin/env", b"-S a b")),
        # A carriage return is not a blank: it stays part of the last word.
        (b"#!\t/bin/bash\t-x\r\n", Script(b"/bin/bash", b"-x\r")),
        (b"#!/bin/sh\r\n", Script(b"/bin/sh\r", None)),
        # A NUL ends the line; a NUL right after the blanks is an empty argument.
        (b"#!/bin/sh\0 -e\n", Script(b"/bin/sh", None)),
        (b"#!/bin/sh -e\0x\n", Script(b"/bin/sh", b"-e")),
        (b"#!/bin/sh \0x\n", Script(b"/bin/sh", b"")),
        (b"#!/bin/sh\0", Script(b"/bin/sh", None)),
        (b"#!/bin/sh -a  b \t\n", Script(b"/bin/sh", b"-a  b")),
        (b"#!/bin/sh", Script(b"/bin/sh", None)),
        (b"#!\n", None),
        (b"#!   \n", None),
        (b"# /bin/sh\n", None),
    ],
)
def test_shebang_lines_split_like_binfmt_script(line: bytes, expected: Script | None) -> None:
    assert parse_shebang(line) == expected


def test_an_overlong_shebang_line_is_refused_unless_the_interpreter_fits() -> None:
    assert parse_shebang(b"#!/bin/" + b"x" * 300) is None
    # Without a newline in the 256 bytes the kernel cuts the last one off.
    assert parse_shebang((b"#!/bin/sh " + b"y" * 300)[:256]) == Script(b"/bin/sh", b"y" * 245)
    assert parse_shebang(b"#!/bin/sh " + b"y" * 300) == Script(b"/bin/sh", b"y" * 245)
    assert parse_shebang(b"#!/bin/sh " + b"y" * 245 + b"\n") == Script(b"/bin/sh", b"y" * 245)
    assert parse_shebang(b"#!" + b" " * 300) is None
    # The interpreter name may fill the buffer as long as a blank ends it inside.
    name = b"/" + b"n" * 252
    assert parse_shebang(b"#!" + name + b" " + b"z" * 50) == Script(name, None)


def test_emulated_argv_for_an_elf_keeps_argv0_and_the_path() -> None:
    assert emulated_argv(b"/q", b"ls", b"/bin/ls", [], None) == [b"/q", b"-0", b"ls", b"/bin/ls"]


def test_emulated_argv_for_a_script_chain_matches_the_kernel() -> None:
    # /s has "#!/i1 a1", /i1 has "#!/i2 a2": the kernel runs /i2 with [/i2 a2 /i1 a1 /s ...].
    chain = [Script(b"/i1", b"a1"), Script(b"/i2", b"a2")]
    assert emulated_argv(b"/q", b"", b"/i2", chain, b"/s") == [
        b"/q", b"-0", b"/i2", b"/i2", b"a2", b"/i1", b"a1", b"/s",
    ]
    assert emulated_argv(b"/q", b"", b"/bin/sh", [Script(b"/bin/sh", None)], b"./x") == [
        b"/q", b"-0", b"/bin/sh", b"/bin/sh", b"./x",
    ]


def test_platform_strings_map_to_rows() -> None:
    assert A.from_platform("linux/arm64").name == "aarch64"
    assert A.from_platform("arm64").name == "aarch64"
    assert A.from_platform("linux/arm64/v8").name == "aarch64"
    assert A.from_platform("linux/arm/v7").name == "armhf"
    assert A.from_platform("linux/arm/v6").name == "armel"
    assert A.from_platform("linux/ppc64le").qemu == "ppc64le"
    assert A.from_platform("linux/riscv64").debian == "riscv64"
    assert A.from_platform("linux/s390x").qemu_static == "qemu-s390x-static"
    assert A.from_platform("linux/loong64").name == "loongarch64"
    assert A.from_platform("linux/mips64le").name == "mips64el"
    assert A.from_platform("linux/386").name == "i386"
    with pytest.raises(A.UnknownPlatformError, match="linux/arm64"):
        A.from_platform("linux/vax")
