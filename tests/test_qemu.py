"""Emulator acquisition: --qemu paths, the host's qemu-*-static, and Debian's qemu-user-static."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.foreign import (
    archive_or_skip,
    assert_no_binfmt,
    binfmt_problems,
    cache_root,
    guest_programs,
)
from xshim.builder import debian, qemu
from xshim.builder.cli import exit_status
from xshim.builder.errors import InputError
from xshim.builder.fsutil import sha256_file
from xshim.builder.values import parse_arch
from xshim.shim import arch as archmod

HOST_QEMU = Path("/usr/bin/qemu-aarch64-static")


def _p(*platforms: str) -> list[archmod.Arch]:
    return [parse_arch(p) for p in platforms]


needs_host_qemu = pytest.mark.skipif(not HOST_QEMU.is_file(),
                                     reason="qemu-user-static is not installed on this host")
x86_64_only = pytest.mark.skipif(archmod.host_arch().name != "x86_64",
                                 reason="the test's foreign/native split assumes an x86_64 host")


@pytest.mark.parametrize(("name", "target"), [
    ("qemu-aarch64-static", "aarch64"),
    ("qemu-arm", "arm"),
    ("qemu-ppc64le-static", "ppc64le"),
    ("qemu-mips64el", "mips64el"),
])
def test_target_from_name(name: str, target: str) -> None:
    assert qemu.target_from_name(Path("/x") / name) == target
    assert any(a.qemu == target for a in archmod.ARCHES)


@pytest.mark.parametrize("name", ["qemu", "aarch64-static", "qemu-", "qemu-AArch64"])
def test_unreadable_names_are_input_errors(name: str) -> None:
    with pytest.raises(qemu.NotAnEmulatorError, match="file name") as e:
        qemu.target_from_name(Path(name))
    assert exit_status(e.value) == 2


@needs_host_qemu
def test_explicit_path_wins_and_serves_every_arch_of_its_target(tmp_path: Path) -> None:
    mine = tmp_path / "qemu-arm-static"
    shutil.copy2("/usr/bin/qemu-arm-static", mine)
    got = qemu.find_emulators(_p("linux/arm/v7", "linux/arm/v6"), [mine], search_dirs=[],
                              download=False)
    assert got == {"armhf": mine, "armel": mine}


@needs_host_qemu
@x86_64_only
def test_foreign_elf_is_refused_as_emulator(tmp_path: Path) -> None:
    progs = guest_programs("arm64")
    fake = tmp_path / "qemu-aarch64-static"
    shutil.copy2(progs["exitcode"], fake)
    with pytest.raises(qemu.NotAnEmulatorError, match="linux/arm64") as e:
        qemu.find_emulators(_p("linux/arm64"), [fake], search_dirs=[], download=False)
    assert "linux/amd64" in str(e.value)


def test_non_elf_and_missing_explicit_paths(tmp_path: Path) -> None:
    script = tmp_path / "qemu-aarch64-static"
    script.write_text("#!/bin/sh\nexec true\n")
    script.chmod(0o755)
    with pytest.raises(qemu.NotAnEmulatorError, match="not an ELF"):
        qemu.find_emulators(_p("linux/arm64"), [script], search_dirs=[], download=False)
    with pytest.raises(qemu.NotAnEmulatorError, match="no such file"):
        qemu.find_emulators(_p("linux/arm64"), [tmp_path / "qemu-s390x-static"], download=False)
    with pytest.raises(qemu.NotAnEmulatorError, match="not one xshim knows"):
        qemu.find_emulators(_p("linux/arm64"), [tmp_path / "qemu-hexagon-static"], download=False)


@needs_host_qemu
def test_search_dirs_find_host_emulators(tmp_path: Path) -> None:
    (tmp_path / "qemu-s390x-static").symlink_to("/usr/bin/qemu-s390x-static")
    got = qemu.find_emulators(_p("linux/s390x"), search_dirs=[tmp_path], download=False)
    assert got == {"s390x": Path("/usr/bin/qemu-s390x-static")}
    # Default search: PATH and /usr/bin.
    assert qemu.find_emulators(_p("linux/arm64"), download=False)["aarch64"] == HOST_QEMU


def test_missing_emulator_error_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(qemu.MissingEmulatorError) as e:
        qemu.find_emulators(_p("linux/riscv64", "linux/s390x"), search_dirs=[tmp_path],
                            download=False)
    assert exit_status(e.value) == 3
    assert "qemu-riscv64-static" in str(e.value) and "qemu-s390x-static" in str(e.value)
    assert e.value.hint is not None and "qemu-user-static" in e.value.hint


@x86_64_only
def test_native_arches_need_no_emulator(tmp_path: Path) -> None:
    assert qemu.find_emulators(_p("linux/amd64", "linux/386"), search_dirs=[tmp_path],
                               download=False) == {}


def test_unknown_platform_is_input_error() -> None:
    with pytest.raises(qemu.InputError, match="unknown platform") as e:
        qemu.find_emulators(_p("linux/vax"), download=False)
    assert exit_status(e.value) == 2


@needs_host_qemu
@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid", "bookworm-backports",
                                   "stable"])
def test_suite_names(suite: str) -> None:
    assert qemu.check_suite(suite) == suite


@pytest.mark.parametrize("suite", ["", "Trixie", "../x", "trixie/updates", "-trixie", "a b"])
def test_bad_suite_names_are_input_errors(suite: str) -> None:
    with pytest.raises(InputError, match=r"--qemu-suite .*not a Debian suite name"):
        qemu.check_suite(suite)


def test_is_static() -> None:
    assert qemu.is_static(HOST_QEMU)
    assert not qemu.is_static(Path(shutil.which("python3") or "/usr/bin/python3"))
    assert qemu.is_dynamic(Path("/bin/ls"))
    for prog in guest_programs("arm64").values():
        assert qemu.is_static(prog)


def test_is_static_on_non_elf(tmp_path: Path) -> None:
    text = tmp_path / "t"
    text.write_text("hello\n" * 20)
    with pytest.raises(archmod.NotElfError):
        qemu.is_static(text)


# --- downloaded from Debian ----------------------------------------------------------------------


def _download_cache() -> Path:
    return cache_root() / "downloads"


@pytest.mark.network
@pytest.mark.integration
def test_download_from_debian_and_run_a_foreign_program() -> None:
    assert_no_binfmt(["linux/arm64", "linux/s390x"])
    archive = archive_or_skip()
    cache = _download_cache()
    got = qemu.find_emulators(_p("linux/arm64", "linux/s390x"), search_dirs=[], archive=archive,
                              cache=cache)
    assert set(got) == {"aarch64", "s390x"}
    for name, path in got.items():
        assert path.is_relative_to(cache / "qemu")
        assert qemu.is_static(path)
        assert qemu.elf_arch(path) == archmod.host_arch()
        recorded = path.with_name(path.name + ".sha256").read_text().strip()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded
        version = subprocess.run([str(path), "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and f"qemu-{archmod.by_name(name).qemu}" in version.stdout
    progs = guest_programs("arm64")
    run = subprocess.run([str(got["aarch64"]), str(progs["exitcode"]), "42"])
    assert run.returncode == 42
    run = subprocess.run([str(got["aarch64"]), str(progs["threads_join"]), "4"],
                         capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, "joined 4\n")


@pytest.mark.network
def test_tampered_cached_emulator_is_unpacked_again(caplog: pytest.LogCaptureFixture) -> None:
    archive = archive_or_skip()
    cache = _download_cache()
    (path,) = qemu.find_emulators(_p("linux/riscv64"), search_dirs=[], archive=archive,
                                  cache=cache).values()
    good = sha256_file(path)
    with open(path, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    again = qemu.find_emulators(_p("linux/riscv64"), search_dirs=[], archive=archive,
                                cache=cache)["riscv64"]
    assert again == path and sha256_file(again) == good
    assert "does not match" in caplog.text


@pytest.mark.network
def test_tampered_qemu_package_is_refused(tmp_path: Path) -> None:
    """A mirror serving a changed qemu-user-static .deb: refused, nothing unpacked."""
    archive = archive_or_skip()
    host = archmod.host_arch().debian
    info = qemu._find_package(archive, host)
    deb = archive.fetch(info)  # the real package, verified, in the shared download cache
    index_rel = f"main/binary-{host}/Packages.xz"
    index_sha = archive.release()[index_rel].sha256
    (index,) = (archive.cache / "by-sha256").glob(f"{index_sha}-*")
    (inrelease,) = (archive.cache / "inrelease").glob(f"*-{archive.suite}-InRelease")

    mirror = tmp_path / "mirror"
    suite_dir = mirror / "dists" / archive.suite
    (suite_dir / f"main/binary-{host}").mkdir(parents=True)
    shutil.copyfile(inrelease, suite_dir / "InRelease")
    shutil.copyfile(index, suite_dir / index_rel)
    bad = mirror / info.filename
    bad.parent.mkdir(parents=True)
    shutil.copyfile(deb, bad)
    with open(bad, "r+b") as f:
        f.seek(info.size // 2)
        byte = f.read(1)
        f.seek(info.size // 2)
        f.write(bytes([byte[0] ^ 0x01]))

    cache = tmp_path / "cache"
    local = debian.Archive(f"file://{mirror}", archive.suite, cache=cache)
    with pytest.raises(debian.ChecksumError) as e:
        qemu.find_emulators(_p("linux/arm64"), search_dirs=[], archive=local, cache=cache)
    assert e.value.expected == info.sha256 and e.value.got != info.sha256
    assert not (cache / "qemu").exists()
    assert not list(cache.rglob("*.deb*"))  # neither the bad .deb nor a partial one kept


# --- the binfmt_misc guard every integration test relies on --------------------------------------


def _kernel_entry(debian_binfmt: Path) -> str:
    """A handler as /proc/sys/fs/binfmt_misc/<name> shows it, from Debian's binfmts file."""
    fields = dict(line.split(" ", 1) for line in debian_binfmt.read_text().splitlines() if line)
    hexed = {k: fields[k].replace("\\x", "") for k in ("magic", "mask")}
    return (f"enabled\ninterpreter {fields['interpreter']}\nflags: POCF\noffset "
            f"{fields['offset']}\nmagic {hexed['magic']}\nmask {hexed['mask']}\n")


def _fake_binfmt(tmp_path: Path, entries: dict[str, str]) -> Path:
    d = tmp_path / "binfmt_misc"
    d.mkdir()
    (d / "register").write_text("")
    (d / "status").write_text("enabled\n")
    for name, text in entries.items():
        (d / name).write_text(text)
    return d


def test_binfmt_guard_passes_on_this_host() -> None:
    assert_no_binfmt(["linux/arm64", "linux/arm/v7", "linux/s390x", "linux/riscv64"])


def test_binfmt_guard_ignores_an_unmounted_dir(tmp_path: Path) -> None:
    assert binfmt_problems(["linux/arm64"], tmp_path) == []
    assert binfmt_problems(["linux/arm64"], _fake_binfmt(tmp_path, {})) == []


@pytest.mark.skipif(not Path("/usr/share/binfmts/qemu-aarch64").is_file(),
                    reason="qemu-user-static's binfmts files are not installed")
def test_binfmt_guard_names_qemu_handlers_and_their_p(tmp_path: Path) -> None:
    d = _fake_binfmt(tmp_path, {
        "qemu-aarch64": _kernel_entry(Path("/usr/share/binfmts/qemu-aarch64")),
        "arm-handler": _kernel_entry(Path("/usr/share/binfmts/qemu-arm")),
    })
    problems = binfmt_problems(["linux/arm64"], d)
    assert len(problems) == 2
    arm, aarch64 = problems
    assert "'qemu-aarch64'" in aarch64 and "serves aarch64, qemu" in aarch64
    assert "'arm-handler'" in arm and "serves qemu" in arm and "aarch64" not in arm
    armhf = binfmt_problems(["linux/arm/v7"], d)
    assert "serves armhf, qemu" in armhf[0]
    with pytest.raises(AssertionError, match="qemu-aarch64"):
        assert_no_binfmt(["linux/arm64"], d)


def test_binfmt_guard_counts_any_handler(tmp_path: Path) -> None:
    d = _fake_binfmt(tmp_path, {"jar": "enabled\ninterpreter /usr/bin/jexec\nflags: \n"
                                       "offset 0\nmagic 504b0304\n"})
    (problem,) = binfmt_problems(["linux/arm64"], d)
    assert "'jar'" in problem and "serves" not in problem
    with pytest.raises(AssertionError, match="would prove nothing"):
        assert_no_binfmt(["linux/arm64"], d)


def test_bundle_without_the_archive_says_how_to_get_emulators(tmp_path: Path) -> None:
    """A bundle never falls back to the host's installed qemu: with no archive it stops, exit 3,
    and says what would help (a reachable archive, or --qemu), writing nothing."""
    env = dict(os.environ, XSHIM_CACHE=str(tmp_path / "cache"),
               XSHIM_MIRROR="http://127.0.0.1:9/debian")
    out = tmp_path / "out" / ".xshim"
    r = subprocess.run([sys.executable, "-m", "xshim.builder.cli", "bundle", "--platform",
                        "linux/arm64", "-o", str(out)], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "qemu-aarch64-static: not given" in r.stderr
    assert "signed archive" in r.stderr and "--qemu /path/to/qemu-aarch64-static" in r.stderr
    assert "apt-get install" not in r.stderr
    assert not out.parent.exists()
