"""`xshim verify` on a real bundle, intact and damaged in each way it must catch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import foreign
from xshim.builder import bundle, debian, elf, qemu
from xshim.builder.verify import verify_bundle
from xshim.shim import arch as archmod

XSHIM = shutil.which("xshim") or "xshim"


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSHIM, "verify", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("pristine") / ".xshim"
    r = subprocess.run([XSHIM, "bundle", "--platform", "linux/arm64", "-o", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture
def copy(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / ".xshim"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


def manifest(b: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((b / "manifest.json").read_text())
    return data


def rewrite_manifest(b: Path, data: dict[str, object]) -> None:
    (b / "manifest.json").write_text(json.dumps(data))


def test_fresh_bundle_passes(pristine: Path) -> None:
    r = verify(str(pristine))
    assert r.returncode == 0, r.stdout
    assert "OK" in r.stdout
    j = verify("--json", str(pristine))
    report = json.loads(j.stdout)
    assert j.returncode == 0 and report["ok"] is True and report["problems"] == []
    assert report["prefix"] == "/.xshim" and report["platforms"] == ["linux/arm64"]
    assert report["elf_files"] > 5


def test_changed_byte_is_named(copy: Path) -> None:
    victim = copy / "lib" / "libm.so.6"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = verify(str(copy))
    assert r.returncode == 1
    assert "lib/libm.so.6: sha256 differs from the manifest" in r.stdout


def test_extra_file_is_named(copy: Path) -> None:
    (copy / "bin" / "_internal" / "intruder.so").write_bytes(b"hello")
    r = verify("--json", str(copy))
    assert r.returncode == 1
    problems = json.loads(r.stdout)["problems"]
    assert problems == [{"path": "bin/_internal/intruder.so", "check": "extra",
                         "message": "not in the manifest"}]


def test_missing_file_is_named(copy: Path) -> None:
    (copy / "qemu" / "qemu-aarch64-static").unlink()
    r = verify(str(copy))
    assert r.returncode == 1 and "qemu/qemu-aarch64-static: listed in the manifest" in r.stdout


def test_unresolved_dt_needed_names_the_elf(copy: Path) -> None:
    """A library gone from disk and manifest alike: only the dependency check can see it."""
    needers = [p.relative_to(copy).as_posix() for p in copy.rglob("*")
               if elf.is_elf_file(p) and "libm.so.6" in elf.read_elf_file(p).needed]
    assert needers
    (copy / "lib" / "libm.so.6").unlink()
    m = manifest(copy)
    m["files"] = [f for f in m["files"] if f["path"] != "lib/libm.so.6"]  # type: ignore[attr-defined]
    rewrite_manifest(copy, m)
    report = verify_bundle(copy)
    assert not report.ok
    assert {p.path for p in report.problems} == set(needers)
    assert all(p.check == "needed" and "DT_NEEDED libm.so.6" in p.message
               for p in report.problems)
    r = verify(str(copy))
    assert r.returncode == 1 and f"{needers[0]}: DT_NEEDED libm.so.6" in r.stdout


def test_foreign_elf_is_named(copy: Path) -> None:
    target = copy / "lib" / "libextra.so.1"
    shutil.copy2(foreign.busybox_static("armhf"), target)
    m = manifest(copy)
    m["files"].append({"path": "lib/libextra.so.1", "role": "library",  # type: ignore[attr-defined]
                       "size": target.stat().st_size, "sha256": bundle.sha256_file(target),
                       "mode": f"{target.stat().st_mode & 0o7777:04o}"})
    rewrite_manifest(copy, m)
    report = verify_bundle(copy)
    assert [(p.path, p.check) for p in report.problems] == [("lib/libextra.so.1", "arch")]
    assert "linux/arm/v7" in report.problems[0].message


def test_interp_outside_the_prefix_is_named(copy: Path) -> None:
    shim = copy / "bin" / "sh"
    elf.patch_elf_file(shim, interp="/lib64/ld-linux-x86-64.so.2")
    m = manifest(copy)
    for f in m["files"]:  # type: ignore[attr-defined]
        if f["path"] == "bin/sh":
            f["size"], f["sha256"] = shim.stat().st_size, bundle.sha256_file(shim)
    rewrite_manifest(copy, m)
    report = verify_bundle(copy)
    assert [(p.path, p.check) for p in report.problems] == [("bin/sh", "interp")]
    assert "looked up in the image" in report.problems[0].message


def test_broken_manifest_is_named(copy: Path) -> None:
    (copy / "manifest.json").write_text("{not json")
    r = verify(str(copy))
    assert r.returncode == 1 and "manifest.json: unreadable" in r.stdout


def test_an_empty_guest_dir_is_allowed(copy: Path) -> None:
    (copy / "guest").mkdir(mode=0o755)
    os.chmod(copy / "guest", 0o755)
    assert verify_bundle(copy).ok


@pytest.mark.parametrize("name", ["sh", "sh.symlink"])
def test_anything_in_guest_is_named(copy: Path, name: str) -> None:
    """guest/ is filled by xshim-install inside the image; a bundle that brings its own
    guest/sh would have it installed in place of the image's /bin/sh."""
    (copy / "guest").mkdir()
    os.chmod(copy / "guest", 0o755)
    (copy / "guest" / name).write_text("#!/bin/evil\n")
    r = verify("--json", str(copy))
    assert r.returncode == 1
    (problem,) = json.loads(r.stdout)["problems"]
    assert (problem["path"], problem["check"]) == (f"guest/{name}", "extra")
    assert "image's /bin/sh" in problem["message"]


def test_manifest_lists_modes_and_directories(pristine: Path) -> None:
    m = manifest(pristine)
    files = {f["path"]: f for f in m["files"]}  # type: ignore[attr-defined]
    assert files["bin/sh"]["mode"] == "0755"
    assert files["lib/libm.so.6"]["mode"] == "0755"
    assert {d["path"]: (d["role"], d["mode"]) for d in m["dirs"]  # type: ignore[attr-defined]
            if d["path"] in ("bin", "guest", "qemu")} == {
        "bin": ("dir", "0755"), "guest": ("runtime", "0755"), "qemu": ("dir", "0755")}


@pytest.mark.parametrize(("path", "mode", "needle"), [
    ("bin/sh", 0o644, "mode 0644, manifest says 0755"),
    ("qemu/qemu-aarch64-static", 0o4755, "is setuid (mode 4755)"),
    ("lib/libm.so.6", 0o2755, "is setgid (mode 2755)"),
    ("manifest.json", 0o666, "is world-writable (mode 0666)"),
    ("bin/_internal", 0o777, "is world-writable (mode 0777)"),
    ("lib", 0o775, "mode 0775, manifest says 0755"),
])
def test_bad_modes_are_named(copy: Path, path: str, mode: int, needle: str) -> None:
    os.chmod(copy / path, mode)
    r = verify("--json", str(copy))
    assert r.returncode == 1
    problems = json.loads(r.stdout)["problems"]
    assert [(p["path"], p["check"]) for p in problems] == [(path, "mode")], problems
    assert needle in problems[0]["message"]


def test_extra_directory_is_named(copy: Path) -> None:
    (copy / "lib" / "extra").mkdir()
    (copy / "lib" / "extra" / "x.so").write_bytes(b"x")
    problems = verify_bundle(copy).problems
    assert [(p.path, p.check) for p in problems] == [("lib/extra", "extra")]


def test_manifest_of_an_older_format_is_named(copy: Path) -> None:
    m = manifest(copy)
    m["format"] = 1
    rewrite_manifest(copy, m)
    r = verify(str(copy))
    assert r.returncode == 1
    assert "manifest.json: format 1, not 2: made by another xshim version" in r.stdout


def test_placement(copy: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "opt").mkdir(parents=True)
    shutil.copytree(copy, tree / ".xshim", symlinks=True)
    assert verify_bundle(tree / ".xshim", root=tree).ok
    shutil.move(tree / ".xshim", tree / "opt" / "x")
    report = verify_bundle(tree / "opt" / "x", root=tree)
    assert [p.check for p in report.problems] == ["placement"]
    assert "rebuild it with --prefix /opt/x" in report.problems[0].message


# --- where the emulators came from ------------------------------------------------------------


def test_emulator_is_debians_and_verify_says_which_version(pristine: Path) -> None:
    """The bundled emulator is the member of the .deb the signed index lists, byte for byte, and
    the manifest and `xshim verify` name that package version."""
    archive = foreign.archive_or_skip()
    host = archmod.host_arch().debian
    info = qemu._find_package(archive, host)
    source = manifest(pristine)["emulator_sources"]["aarch64"]  # type: ignore[index]
    assert source == {"origin": "debian", "package": info.name, "version": info.version,
                      "architecture": host, "suite": archive.suite, "deb_sha256": info.sha256}
    deb = archive.fetch(info).read_bytes()
    ((blob, _mode),) = debian.read_deb_members(deb, ["usr/bin/qemu-aarch64-static"]).values()
    assert (pristine / "qemu" / "qemu-aarch64-static").read_bytes() == blob
    r = verify(str(pristine))
    assert r.returncode == 0
    assert (f"emulator  qemu/qemu-aarch64-static: Debian {info.name} {info.version} "
            f"({archive.suite}, {host}; .deb sha256 {info.sha256[:16]}...)") in r.stdout
    report = json.loads(verify("--json", str(pristine)).stdout)
    assert report["emulators"]["qemu/qemu-aarch64-static"].startswith(f"Debian {info.name} ")


def test_given_emulator_is_reported_as_given(tmp_path: Path, pristine: Path) -> None:
    mine = tmp_path / "qemu-aarch64-static"
    shutil.copy2(pristine / "qemu" / "qemu-aarch64-static", mine)
    out = tmp_path / ".xshim"
    r = subprocess.run([XSHIM, "bundle", "--platform", "linux/arm64", "--qemu", str(mine),
                        "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert manifest(out)["emulator_sources"] == {"aarch64": {"origin": "given"}}
    assert "qemu/qemu-aarch64-static: given with --qemu" in verify(str(out)).stdout


@pytest.mark.parametrize("entry", [None, {"origin": "debian", "package": "qemu-user-static"},
                                   {"origin": "elsewhere"}])
def test_bad_emulator_source_is_named(copy: Path, entry: object) -> None:
    m = manifest(copy)
    m["emulator_sources"] = {} if entry is None else {"aarch64": entry}
    rewrite_manifest(copy, m)
    report = verify_bundle(copy)
    assert [(p.path, p.check) for p in report.problems] == [("manifest.json", "manifest")]
    assert "no valid emulator_sources entry for aarch64" in report.problems[0].message


@pytest.mark.parametrize("value", [["qemu-user-static"], {"aarch64": "debian"},
                                   {"aarch64": {"origin": 5}}])
def test_malformed_emulator_sources_is_a_manifest_problem(copy: Path, value: object) -> None:
    m = manifest(copy)
    m["emulator_sources"] = value
    rewrite_manifest(copy, m)
    report = verify_bundle(copy)
    assert [(p.path, p.check) for p in report.problems] == [("manifest.json", "manifest")]
    assert "emulator_sources" in report.problems[0].message
