"""The native leg of a build for several platforms: a bundle made for linux/amd64 and
linux/arm64, in an amd64 image, steps aside.

There the image's /bin/sh runs on the host, so xshim-install leaves it alone, and the shim's
``sh`` and ``xshim-exec`` roles exec the command in place, without the supervisor: no ptrace, no
"no emulator for x86_64", exit codes and "not found" as without xshim.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root(reason="chroot needs root"), pytest.mark.integration]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("native-leg")
    r = subprocess.run(["xshim", "bundle", "--platform", "linux/amd64,linux/arm64", "-o",
                        str(work / "bundle")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    root = work / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "uname"):
        (root / "bin" / applet).symlink_to("busybox")
    shutil.copytree(work / "bundle", root / ".xshim", symlinks=True)
    return root


def chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    argv0 = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run([argv0, str(root), *argv], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/bin"})


def test_install_leaves_a_native_shell_alone(tree: Path) -> None:
    r = chroot(tree, "/.xshim/bin/xshim-install")
    assert (r.returncode, r.stderr) == (0, "")
    assert os.readlink(tree / "bin" / "sh") == "busybox"
    assert not (tree / ".xshim" / "guest").exists()


@pytest.mark.parametrize(
    ("argv", "code", "out", "err"),
    [
        (["/.xshim/bin/sh", "-c", 'uname -m; echo "$0 $1"; exit 3', "zero", "one"], 3,
         "x86_64\nzero one\n", ""),
        (["/.xshim/bin/xshim-exec", "sh", "-c", "uname -m"], 0, "x86_64\n", ""),
        (["/.xshim/bin/xshim-exec", "missing-program"], 127, "",
         "xshim: missing-program: No such file or directory\n"),
    ],
)
def test_commands_run_without_the_supervisor(tree: Path, argv: list[str], code: int, out: str,
                                             err: str) -> None:
    r = chroot(tree, *argv)
    assert (r.returncode, r.stdout, r.stderr) == (code, out, err)


def test_restore_removes_the_bundle(tree: Path) -> None:
    r = chroot(tree, "/.xshim/bin/xshim-restore", "--remove-bundle")
    assert (r.returncode, r.stderr) == (0, "")
    assert not (tree / ".xshim").exists() and os.readlink(tree / "bin" / "sh") == "busybox"
