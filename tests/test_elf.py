"""ELF reading (pyelftools) and patching (LIEF) on real host and foreign binaries."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xshim.builder import elf
from xshim.shim import arch as archmod

TRUE = Path(shutil.which("true") or "/bin/true")


def host_loader() -> Path:
    interp = elf.read_elf_file(TRUE).interp
    assert interp is not None
    return Path(os.path.realpath(interp))


def host_libc() -> Path:
    info = elf.read_elf_file(TRUE)
    found = elf.find_library("libc.so.6", elf.host_library_dirs(), info.ident)
    assert found is not None
    return found


def test_host_program() -> None:
    info = elf.read_elf_file(TRUE)
    assert info.arch == archmod.host_arch()
    assert info.interp is not None and os.path.isabs(info.interp)
    assert "libc.so.6" in info.needed
    assert info.is_program and info.dynamic


def test_libc_has_an_interpreter_but_is_a_library() -> None:
    info = elf.read_elf_file(host_libc())
    assert info.soname == "libc.so.6"
    assert info.interp is not None  # libc.so.6 prints its version when run
    assert not info.is_program


def test_foreign_static_binary() -> None:
    from support import foreign

    info = elf.read_elf_file(foreign.busybox_static("armhf"))
    assert info.arch is not None and info.arch.name == "armhf"
    assert info.interp is None and info.needed == ()


def test_reads_from_a_stream() -> None:
    data = TRUE.read_bytes()
    assert elf.read_elf(io.BytesIO(data)) == elf.read_elf_file(TRUE)
    assert elf.is_elf(io.BytesIO(data))
    assert not elf.is_elf(io.BytesIO(b"#!/bin/sh\n"))


@pytest.mark.parametrize(
    "data", [b"", b"#!/bin/sh\necho\n", b"\x7fELF", b"\x7fELF\x09\x01" + bytes(60)]
)
def test_not_elf_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(elf.ElfFormatError) as e:
        elf.read_elf(io.BytesIO(data), "x.bin")
    assert "x.bin" in e.value.message


def test_truncated_elf_is_a_typed_error() -> None:
    data = TRUE.read_bytes()[:200]
    with pytest.raises(elf.ElfFormatError):
        elf.read_elf(io.BytesIO(data), "cut")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=64))
def test_corrupt_bytes_never_crash_the_reader(offset: int, junk: bytes) -> None:
    data = bytearray(TRUE.read_bytes()[:8192])
    data[offset:offset + len(junk)] = junk
    with contextlib.suppress(elf.ElfFormatError):
        elf.read_elf(io.BytesIO(bytes(data)), "fuzz")


def test_patched_program_runs_with_a_relocated_loader(tmp_path: Path) -> None:
    """PT_INTERP and DT_RPATH pointing at copies: the program runs from them alone."""
    lib = tmp_path / "some where" / "lib"
    lib.mkdir(parents=True)
    loader = lib / host_loader().name
    shutil.copy2(host_loader(), loader)
    shutil.copy2(host_libc(), lib / "libc.so.6")
    prog = tmp_path / "true"
    prog.write_bytes(elf.patch_elf(TRUE.read_bytes(), interp=str(loader), rpath=str(lib)))
    prog.chmod(0o755)
    info = elf.read_elf_file(prog)
    assert info.interp == str(loader)
    assert info.rpath == (str(lib),) and info.runpath is None
    r = subprocess.run([str(prog)], env={"LD_DEBUG": "libs"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # The loader found libc through the new DT_RPATH, not the host's default paths.
    assert f"{lib}/libc.so.6" in r.stderr


def test_drop_search_path_leaves_no_rpath(tmp_path: Path) -> None:
    with_rpath = elf.patch_elf(TRUE.read_bytes(), rpath="/nonexistent/lib")
    dropped = elf.patch_elf(with_rpath, drop_search_path=True)
    info = elf.read_elf(io.BytesIO(dropped))
    assert info.rpath is None and info.runpath is None
    prog = tmp_path / "true"
    prog.write_bytes(dropped)
    prog.chmod(0o755)
    assert subprocess.run([str(prog)]).returncode == 0


def test_patch_interp_of_static_binary_is_refused() -> None:
    from support import foreign

    data = foreign.busybox_static("armhf").read_bytes()
    with pytest.raises(elf.ElfFormatError, match="no PT_INTERP"):
        elf.patch_elf(data, interp="/x/ld.so", name="busybox")


def test_expand_origin() -> None:
    assert elf.expand_origin(["$ORIGIN/../lib", "${ORIGIN}", "/usr/lib", "$ORIGINAL"],
                             "/p/bin") == ["/p/bin/../lib", "/p/bin", "/usr/lib", "$ORIGINAL"]


def test_ld_so_conf_includes(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("/opt/b # trailing comment\n")
    (tmp_path / "conf.d" / "a.conf").write_text("# comment\n/opt/a\n\ninclude /nowhere/*.conf\n")
    conf = "/usr/local/lib\ninclude conf.d/*.conf\nhwcap 0 nosegneg\n"
    (tmp_path / "ld.so.conf").write_text(conf)
    assert elf.read_ld_so_conf(tmp_path / "ld.so.conf") == ["/usr/local/lib", "/opt/a", "/opt/b"]
    assert elf.host_library_dirs(tmp_path / "ld.so.conf")[-4:] == list(elf.SYSTEM_DIRS)


def test_find_library_skips_other_architectures(tmp_path: Path) -> None:
    from support import foreign

    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.mkdir()
    right.mkdir()
    shutil.copy2(foreign.busybox_static("armhf"), wrong / "libc.so.6")
    shutil.copy2(host_libc(), right / "libc.so.6")
    want = elf.read_elf_file(TRUE).ident
    assert elf.find_library("libc.so.6", [str(wrong), str(right)], want) == right / "libc.so.6"
    assert elf.find_library("libc.so.6", [str(wrong)], want) is None
