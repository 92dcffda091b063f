"""Bad input to ``xshim run`` and ``xshim patch -o``: exit 2 naming the cause and the fix, no
traceback, nothing left behind; and ``-o`` onto what is not a regular file."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import foreign
from xshim.builder.cli import main

XSHIM = shutil.which("xshim") or "xshim"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
ARM = "FROM --platform=linux/arm64 debian\nRUN apt-get update\n"


def xshim(*args: str, env: dict[str, str] | None = None, timeout: float = 120
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSHIM, *args], capture_output=True, text=True, timeout=timeout,
                          env={**ENV, **(env or {})})


def assert_bad_input(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("xshim: error: ") and "\nhint: " in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """The smallest arm64 rootfs: a static busybox as /bin/sh, no /proc, /sys or /dev."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(foreign.busybox_static("arm64"), root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    (root / "root").mkdir()
    yield root


def test_empty_rootfs_is_bad_input(tmp_path: Path) -> None:
    r = subprocess.run([XSHIM, "run", "--rootfs", "", "--", "/bin/true"], capture_output=True,
                       text=True, cwd=tmp_path, env=ENV)
    assert_bad_input(r, "--rootfs is empty")
    assert list(tmp_path.iterdir()) == []


root_integration = [pytest.mark.root, pytest.mark.integration]


@pytest.mark.parametrize(("args", "env", "needles"), [
    (["--trace", "/nonexistent/x.jsonl"], {}, ["--trace /nonexistent/x.jsonl",
                                               "'/nonexistent' does not exist"]),
    (["--trace", "{tmp}"], {}, ["is a directory"]),
    ([], {"XSHIM_TRACE": "/nonexistent/x.jsonl"}, ["XSHIM_TRACE /nonexistent/x.jsonl"]),
    (["-w", "/nonexistent"], {}, ["--workdir /nonexistent: No such file or directory inside"]),
    (["-w", "/bin/busybox"], {}, ["--workdir /bin/busybox: Not a directory"]),
    (["--platform", "linux/s390x"], {}, ["--platform linux/s390x contradicts the rootfs",
                                         "built for linux/arm64"]),
    (["--platform", "linux/vax"], {}, ["--platform: unknown platform 'linux/vax'"]),
    (["--qemu-suite", "Trixie/updates"], {}, ["--qemu-suite 'Trixie/updates': not a Debian "
                                              "suite name"]),
    (["--qemu-suite", "trixie", "--qemu", "/usr/bin/qemu-aarch64-static"], {},
     ["--qemu and --qemu-suite both name the emulator"]),
], ids=["trace-missing-dir", "trace-dir", "bad-XSHIM_TRACE", "workdir-missing",
        "workdir-file", "platform-contradicts", "platform-unknown", "qemu-suite-name",
        "qemu-and-qemu-suite"])
@pytest.mark.root
@pytest.mark.integration
def test_run_refuses_bad_input_and_leaves_the_tree_alone(
    tree: Path, tmp_path: Path, args: list[str], env: dict[str, str], needles: list[str]
) -> None:
    before = snapshot(tree)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = xshim("run", "--rootfs", str(tree), *args, "--", "/bin/sh", "-c", "echo ran",
              env=env)
    assert_bad_input(r, *needles)
    assert "ran" not in r.stdout
    assert snapshot(tree) == before


@pytest.mark.root
@pytest.mark.integration
def test_run_on_a_read_only_rootfs_without_proc(tree: Path) -> None:
    inner = (f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
             f'exec {XSHIM} run --rootfs "$1" -- /bin/sh -c "echo ran"')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", inner,
                        "sh", str(tree)], capture_output=True, text=True, timeout=120, env=ENV)
    assert_bad_input(r, f"the rootfs '{tree}' has no /proc and is read-only",
                     "create the empty directories proc, sys and dev")


@pytest.mark.root
@pytest.mark.integration
def test_run_removes_the_mount_points_it_made(tree: Path) -> None:
    before = snapshot(tree)
    r = xshim("run", "--rootfs", str(tree), "-w", "/root", "--", "/bin/sh", "-c",
              "pwd; test -d /proc/self && test -c /dev/null && echo mounted")
    assert (r.returncode, r.stdout) == (0, "/root\nmounted\n"), r.stderr
    assert snapshot(tree) == before


@pytest.mark.root
@pytest.mark.integration
def test_background_processes_end_with_the_command_and_it_says_so(tree: Path) -> None:
    os.symlink("busybox", tree / "bin" / "sleep")
    start = time.monotonic()
    r = xshim("run", "--rootfs", str(tree), "--", "/bin/sh", "-c",
              "sleep 300 & sleep 300 & echo started")
    assert (r.returncode, r.stdout) == (0, "started\n"), r.stderr
    assert time.monotonic() - start < 60
    assert "2 process(es) it left running" in r.stderr and "end with it" in r.stderr
    quiet = xshim("run", "--rootfs", str(tree), "--", "/bin/sh", "-c", "sleep 0 & wait")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


@pytest.mark.root
@pytest.mark.integration
def test_run_keeps_mount_points_that_were_there(tree: Path) -> None:
    for d in ("proc", "sys", "dev"):
        (tree / d).mkdir()
    before = snapshot(tree)
    r = xshim("run", "--rootfs", str(tree), "--", "/bin/sh", "-c", "test -d /proc/self")
    assert r.returncode == 0, r.stderr
    assert snapshot(tree) == before


# --- xshim patch -o -----------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text(ARM)
    return tmp_path


def _patch_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["patch", "Dockerfile", *args])
    return code, capsys.readouterr().err


def test_patch_into_a_missing_directory(workdir: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    code, err = _patch_main(capsys, "-o", "nowhere/Dockerfile.xshim")
    assert code == 2 and "-o nowhere/Dockerfile.xshim: cannot write it" in err
    assert "does not exist" in err and "\nhint: " in err
    assert sorted(os.listdir(workdir)) == ["Dockerfile"]


def test_patch_onto_a_directory(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "out").mkdir()
    code, err = _patch_main(capsys, "-o", "out")
    assert code == 2 and "-o out: cannot write it: Is a directory" in err
    assert list((workdir / "out").iterdir()) == []
    assert sorted(os.listdir(workdir)) == ["Dockerfile", "out"]


@pytest.mark.root
def test_patch_into_a_read_only_directory(tmp_path: Path) -> None:
    """Root writes through mode bits, so the directory is on a read-only mount."""
    (tmp_path / "Dockerfile").write_text(ARM)
    ro = tmp_path / "ro"
    ro.mkdir()
    inner = (f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
             f'exec {XSHIM} patch "$2" -o "$1/Dockerfile.xshim"')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", inner,
                        "sh", str(ro), str(tmp_path / "Dockerfile")],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert_bad_input(r, "cannot write it: Read-only file system")
    assert list(ro.iterdir()) == []


def test_patch_to_dev_stdout_writes_through_it(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(ARM)
    r = subprocess.run([XSHIM, "patch", "Dockerfile", "-o", "/dev/stdout"], capture_output=True,
                       text=True, cwd=tmp_path, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(ARM.splitlines()[0] + "\nARG XSHIM_TRACE\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["Dockerfile"]


def test_patch_to_dev_stdout_on_a_file_writes_into_that_file(tmp_path: Path) -> None:
    """With stdout on a regular file, /dev/stdout is reopened as a shell redirect would reopen
    it: the caller's file gets the text, and is not replaced by another behind its back."""
    (tmp_path / "Dockerfile").write_text(ARM)
    out = tmp_path / "out"
    out.write_text("old content, longer than nothing")
    before = out.stat().st_ino
    with out.open("r+") as f:
        r = subprocess.run([XSHIM, "patch", "Dockerfile", "-o", "/dev/stdout"], stdout=f,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_ino == before
    assert out.read_text().startswith(ARM.splitlines()[0] + "\nARG XSHIM_TRACE\n")
    assert "old content" not in out.read_text()


def test_patch_to_a_fifo_writes_through_it(workdir: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    fifo = workdir / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    code, err = _patch_main(capsys, "-o", "pipe")
    reader.join(timeout=30)
    assert code == 0, err
    assert got and got[0].decode().startswith(ARM.splitlines()[0] + "\nARG XSHIM_TRACE\n")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_patch_to_dev_null_keeps_the_device(workdir: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    code, err = _patch_main(capsys, "-o", "/dev/null")
    assert code == 0, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_patch_through_a_symlink_replaces_its_target(workdir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "real").write_text("old")
    os.chmod(workdir / "real", 0o640)
    os.symlink("real", workdir / "link")
    code, err = _patch_main(capsys, "-o", "link")
    assert code == 0, err
    assert os.readlink(workdir / "link") == "real"
    assert (workdir / "real").read_text().startswith(ARM.splitlines()[0])
    assert stat.S_IMODE((workdir / "real").stat().st_mode) == 0o640
    assert sorted(os.listdir(workdir)) == ["Dockerfile", "link", "real"]
