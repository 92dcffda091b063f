"""Guests start with exactly the caller's signal dispositions and mask, as under binfmt_misc.

Python's start-up ignores SIGPIPE and SIGXFSZ, and the supervisor installs forwarding handlers;
neither may reach a guest: a pipeline's writer must die of SIGPIPE, and a signal the caller
ignored (nohup's SIGHUP, a background job's SIGINT) must stay ignored. Checked for ``xshim run``
and for both roles of a real frozen bundle (/bin/sh and xshim-exec), with foreign programs (an
arm64 busybox under qemu) and with a native static busybox that reads /proc/self/status.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import foreign

pytestmark = [pytest.mark.root, pytest.mark.integration]

XSHIM = shutil.which("xshim") or "xshim"
NATIVE_BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static, a host program
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
PROBE = "/opt/native/busybox grep -E '^Sig(Ign|Blk):' /proc/self/status"


def _tree(root: Path) -> Path:
    """A static arm64 busybox as the whole system, and the host's static busybox in /opt."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(foreign.busybox_static("arm64"), root / "bin" / "busybox")
    for name in ("sh", "yes", "head", "kill", "echo", "true"):
        os.symlink("busybox", root / "bin" / name)
    (root / "opt" / "native").mkdir(parents=True)
    shutil.copy2(NATIVE_BUSYBOX, root / "opt" / "native" / "busybox")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not NATIVE_BUSYBOX.is_file():
        pytest.skip("busybox-static is not installed")
    work = tmp_path_factory.mktemp("signals")
    yield _tree(work / "rootfs")
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same tree with a real bundle at /.xshim and a /proc to mount on."""
    if not NATIVE_BUSYBOX.is_file():
        pytest.skip("busybox-static is not installed")
    work = tmp_path_factory.mktemp("bundled")
    root = _tree(work / "rootfs")
    (root / "proc").mkdir()
    r = subprocess.run([XSHIM, "bundle", "--platform", "linux/arm64", "-o", str(root / ".xshim")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    yield root
    shutil.rmtree(work, ignore_errors=True)


def _ignoring(*sigs: int, block: tuple[int, ...] = ()) -> Callable[[], None]:
    def setup() -> None:
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        if block:
            signal.pthread_sigmask(signal.SIG_BLOCK, block)
    return setup


def _plain_caller() -> None:
    """Every signal at its default and none blocked: the test session itself may have been
    started with some ignored (a background job ignores SIGINT and SIGQUIT, nohup SIGHUP)."""
    for s in signal.Signals:
        if s not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def run(argv: list[str], setup: Callable[[], None] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    # The child starts from a plain caller; setup then adds what the test's caller ignores or
    # blocks.
    def start() -> None:
        _plain_caller()
        if setup is not None:
            setup()
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV,
                          preexec_fn=start)


def xrun(tree: Path, *cmd: str) -> list[str]:
    return [XSHIM, "run", "--rootfs", str(tree), "--", *cmd]


def in_bundle(tree: Path, program: str, *args: str) -> list[str]:
    """``chroot TREE PROGRAM ARGS`` with /proc mounted in a private mount namespace. No shell in
    between: every step execs the next, so the caller's signal state reaches PROGRAM as given
    (a shell that waits for a child may clear the mask)."""
    return ["unshare", "--mount", "--propagation", "private", f"--mount-proc={tree}/proc",
            "chroot", str(tree), program, *args]


def sig_masks(out: str) -> dict[str, int]:
    masks = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigIgn", "SigBlk"):
            masks[key] = int(value.strip(), 16)
    return masks


def bit(sig: int) -> int:
    return 1 << (sig - 1)


def as_shell_role(tree: Path, *cmd: str) -> list[str]:
    """The bundle's /bin/sh role: ``sh -c SCRIPT``, the way a builder runs a RUN step."""
    script = cmd[2] if cmd[:2] == ("/bin/sh", "-c") else " ".join(cmd)
    return in_bundle(tree, "/.xshim/bin/sh", "-c", script)


COMMANDS: dict[str, Callable[..., list[str]]] = {
    "run": xrun,
    "sh": as_shell_role,
    "xshim-exec": lambda tree, *cmd: in_bundle(tree, "/.xshim/bin/xshim-exec", *cmd),
}


@pytest.fixture(params=sorted(COMMANDS))
def how(request: pytest.FixtureRequest, tree: Path) -> Callable[..., list[str]]:
    name: str = request.param
    root: Path = request.getfixturevalue("bundled") if name != "run" else tree

    def make(*cmd: str) -> list[str]:
        return COMMANDS[name](root, *cmd)
    return make


def test_a_pipeline_writer_dies_of_sigpipe(how: Callable[..., list[str]]) -> None:
    r = run(how("/bin/sh", "-c", "while :; do echo x; done | head -1; echo done"), timeout=60)
    assert (r.returncode, r.stdout) == (0, "x\ndone\n"), r.stderr[-2000:]


def test_the_first_element_of_a_pipeline_reports_sigpipe(how: Callable[..., list[str]]) -> None:
    """``CMD | head -1`` on the host: CMD's status is 141, as when the kernel runs yes itself."""
    inner = " ".join(f"'{a}'" for a in how("/bin/yes"))
    r = run(["bash", "-c", f'{inner} | head -1; echo "status ${{PIPESTATUS[0]}}"'])
    assert r.stdout == "y\nstatus 141\n", r.stderr[-2000:]


@pytest.fixture(params=["run", "xshim-exec"])
def direct(request: pytest.FixtureRequest, tree: Path) -> Callable[..., list[str]]:
    """The roles that exec the caller's command itself, here a native probe. (The shell role
    always starts the image's shell, under qemu, and qemu-user resets the host dispositions of
    the signals it handles before its guest execs anything, with binfmt_misc as without.)"""
    name: str = request.param
    root: Path = request.getfixturevalue("bundled") if name != "run" else tree

    def make(*cmd: str) -> list[str]:
        return COMMANDS[name](root, *cmd)
    return make


def test_ignored_signals_stay_ignored_and_the_rest_are_default(
        direct: Callable[..., list[str]]) -> None:
    """The probe sees what it would see run straight from the caller. (glibc will not let a
    process change its two internal signals, 32 and 33, so a caller that was started with them
    ignored passes that on too: the host's own run of the probe is the reference.)"""
    probe = ["/opt/native/busybox", "grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"]
    on_host = [shutil.which("busybox") or "/bin/busybox", *probe[1:]]
    three = bit(signal.SIGHUP) | bit(signal.SIGINT) | bit(signal.SIGQUIT)
    ignoring = _ignoring(signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    want = sig_masks(run(on_host, ignoring).stdout)["SigIgn"]
    assert want & three == three, hex(want)
    r = run(direct(*probe), ignoring)
    assert r.returncode == 0, r.stderr
    assert sig_masks(r.stdout)["SigIgn"] == want, hex(sig_masks(r.stdout)["SigIgn"])
    want_plain = sig_masks(run(on_host).stdout)["SigIgn"]
    assert want_plain & three == 0, hex(want_plain)
    plain = sig_masks(run(direct(*probe)).stdout)["SigIgn"]
    assert plain == want_plain, hex(plain)


def test_nohup_keeps_a_foreign_shell_alive(how: Callable[..., list[str]]) -> None:
    script = "kill -HUP $$; kill -INT $$; kill -QUIT $$; echo survived"
    r = run(how("/bin/sh", "-c", script),
            _ignoring(signal.SIGHUP, signal.SIGINT, signal.SIGQUIT))
    assert (r.returncode, r.stdout) == (0, "survived\n"), r.stderr
    r = run(how("/bin/sh", "-c", script))
    # xshim run exits 128+N; the bundle's roles die of the signal itself, as the shell would.
    assert r.returncode in (128 + signal.SIGHUP, -signal.SIGHUP), (r.returncode, r.stderr)
    assert r.stdout == ""


def test_the_callers_mask_is_kept(how: Callable[..., list[str]]) -> None:
    r = run(how("/bin/sh", "-c", PROBE), _ignoring(block=(signal.SIGUSR1, signal.SIGWINCH)))
    assert r.returncode == 0, r.stderr
    blk = sig_masks(r.stdout)["SigBlk"]
    assert blk == bit(signal.SIGUSR1) | bit(signal.SIGWINCH), hex(blk)
