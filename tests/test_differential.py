"""xshim against the kernel: the same guest commands under binfmt_misc and under `xshim run`.

The kernel side registers qemu with binfmt_misc (F flag) inside a private user namespace, as
bench/ does, and runs each command chrooted in a copy of the arm64 tree with /proc and /dev
mounted; the host's binfmt_misc stays untouched (conftest checks it before every test). The xshim
side runs the same command in the same tree without CAP_SYS_PTRACE, as inside any build
container. Exit status and stdout (where the commands print their own status and errors) must
be the same.

Then a stress test: thousands of execs from native and foreign parents, from the bottom of small
stacks and with 20,000 arguments, none of which may fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import builders, foreign

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import contenders
import hostguard

pytestmark = [pytest.mark.integration, pytest.mark.root]

XSHIM = shutil.which("xshim") or "xshim"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
NO_PTRACE_CAP = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", "--"]
NATIVE_SRC = Path(__file__).resolve().parent / "native"

@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if contenders.unavailable_reason(contenders.BY_NAME["binfmt"], _tools()) is not None:
        pytest.skip(str(contenders.unavailable_reason(contenders.BY_NAME["binfmt"], _tools())))
    hostguard.ensure_subids()
    work = tmp_path_factory.mktemp("differential")
    root = foreign.copy_tree(builders.finished_tree(), work / "rootfs")
    opt = root / "opt"
    opt.mkdir(exist_ok=True)
    shutil.copy2(foreign.busybox_static("arm64"), opt / "busybox-arm64")
    for name, path in foreign.guest_programs("arm64").items():
        shutil.copy2(path, opt / name)
    cc = shutil.which("cc") or pytest.skip("no host C compiler")
    for name in ("stackexec", "untraced", "dropexec", "traceme"):
        subprocess.run([cc, "-static", "-O2", "-Wall", "-Werror", "-pthread", "-o",
                        str(opt / name), str(NATIVE_SRC / f"{name}.c")], check=True)
    fexecve = Path(__file__).resolve().parent / "guest" / "fexecve.c"
    for name, flag in (("execveat_empty", "-DRAW_EMPTY_PATH"), ("execveat_dirfd", "-DVIA_DIRFD")):
        subprocess.run([cc, "-static", "-O2", flag, "-o", str(opt / f"native-{name}"),
                        str(fexecve)], check=True)
    yield root
    shutil.rmtree(work, ignore_errors=True)


def _tools() -> contenders.Tools:
    return contenders.find_tools(None, None)


def under_binfmt(root: Path, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = contenders.under_binfmt(_tools().qemu, str(root), ["/bin/sh", "-c", script],
                                   name="xshim-differential", mounts=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV)


def under_xshim(root: Path, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = [*NO_PTRACE_CAP, XSHIM, "run", "--rootfs", str(root), "--", "/bin/sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV)


# Each case prints what it wants compared; `$?` and `2>&1` carry the errno a shell reports.
CASES = {
    "uname": "uname -m",
    "nested-shells": "sh -c 'sh -c \"sh -c \\\"sh -c uname\\\"\"'",
    "pipeline": "seq 1 200 | sort -rn | head -3 | tr '\\n' ' '",
    "exit-status": "sh -c 'exit 42'; echo $?",
    "killed-by-signal": "sh -c 'kill -9 $$'; echo $?",
    "enoent": "/nonexistent 2>&1; echo $?",
    "eacces-no-x-bit": "cp /bin/true /tmp/nox; chmod 644 /tmp/nox; /tmp/nox 2>&1; echo $?",
    "eacces-directory": "/tmp 2>&1; echo $?",
    "script-sh": "printf '#!/bin/sh\\necho script $0 $1\\n' > /tmp/s; chmod +x /tmp/s; "
                 "/tmp/s arg; echo $?",
    "script-env": "printf '#!/usr/bin/env sh\\necho env $1\\n' > /tmp/e; chmod +x /tmp/e; "
                  "/tmp/e x; echo $?",
    "script-missing-interpreter": "printf '#!/nonexistent/sh\\n' > /tmp/m; chmod +x /tmp/m; "
                                  "/tmp/m 2>&1; echo $?",
    "static-busybox": "/opt/busybox-arm64 uname -m",
    "fexecve": "/opt/fexecve /bin/uname -m",
    "exit-codes": "/opt/exitcode 7; echo $?",
    "env-exact": "env -i A=1 B=2 /opt/printenv",
    "20k-arguments": "/bin/true $(seq 1 20000); echo $?",
    "20k-arguments-to-a-script": "printf '#!/bin/sh\\necho $#\\n' > /tmp/n; chmod +x /tmp/n; "
                                 "/tmp/n $(seq 1 20000)",
    "argument-list-too-long": "/bin/true $(seq 1 400000) 2>/dev/null; echo $?",
    # Credentials changed: apt's sandbox, setpriv, su, runuser.
    "setpriv-apt": "setpriv --reuid=_apt --regid=nogroup --clear-groups uname -m; echo $?",
    "su-apt": "su -s /bin/sh _apt -c 'id -un; uname -m'; echo $?",
    "su-apt-relative": "su -s /bin/sh _apt -c 'cd /usr && bin/uname -m'; echo $?",
    "su-apt-script": "printf '#!/bin/sh\\necho $(id -un) $1\\n' > /tmp/a; chmod 755 /tmp/a; "
                     "su -s /bin/sh _apt -c '/tmp/a hi'; echo $?",
    "runuser-apt-20k": "runuser -u _apt -- sh -c '/bin/true $(seq 1 20000); echo $?'",
    # setpriv keeps CAP_DAC_OVERRIDE up to its exec, so the kernel lets it run a file only
    # root may execute (and the program, as _apt, then cannot read it).
    "setpriv-apt-root-only-program": "cp /bin/true /tmp/t; chmod 700 /tmp/t; "
                                     "setpriv --reuid=_apt /tmp/t; echo $?",
    "setpriv-apt-enoent": "setpriv --reuid=_apt /nonexistent 2>&1 | sed 's/^.*: //'; echo $?",
    # Text file busy: the program, or a script, open for writing.
    "etxtbsy": "cp /bin/true /tmp/busy; (exec 3>>/tmp/busy; /tmp/busy 2>&1; echo $?); "
               "/tmp/busy; echo $?",
    "etxtbsy-script": "printf '#!/bin/sh\\necho ran\\n' > /tmp/bs; chmod +x /tmp/bs; "
                      "(exec 3>>/tmp/bs; /tmp/bs 2>&1; echo $?); /tmp/bs",
    # Shebangs byte for byte as fs/binfmt_script.c.
    "shebang-cr": "printf '#!/bin/sh\\r\\necho ran\\n' > /tmp/cr; chmod +x /tmp/cr; "
                  "/tmp/cr 2>&1; echo $?",
    "shebang-cr-argument": "printf '#!/bin/echo -n\\r\\n' > /tmp/ca; chmod +x /tmp/ca; "
                           "/tmp/ca x | od -c | head -2",
    "shebang-nul": "printf '#!/bin/echo a\\0b\\n' > /tmp/nu; chmod +x /tmp/nu; /tmp/nu x; "
                   "printf '#!/bin/echo \\0b\\n' > /tmp/nv; chmod +x /tmp/nv; /tmp/nv x | od -c",
    "shebang-truncated": "{ printf '#!/bin/echo '; head -c 400 /dev/zero | tr '\\0' y; } "
                         "> /tmp/tr; chmod +x /tmp/tr; /tmp/tr | wc -c",
    "shebang-depth": "printf '#!/bin/sh\\necho d0 \"$@\"\\n' > /tmp/d0; chmod +x /tmp/d0; "
                     "for i in 1 2 3 4 5 6; do printf '#!/tmp/d%d\\n' $((i-1)) > /tmp/d$i; "
                     "chmod +x /tmp/d$i; done; "
                     "for i in 0 1 2 3 4 5 6; do /tmp/d$i x 2>&1; echo \"depth $i: $?\"; done",
    "script-through-a-descriptor": "printf '#!/bin/sh\\necho \"$0\" \"$@\"\\n' > /tmp/fd; "
                                   "chmod +x /tmp/fd; /opt/native-execveat_empty /tmp/fd a; "
                                   "/opt/native-execveat_dirfd /tmp/fd b; echo $?",
    "untraced-child": "/opt/untraced /bin/uname -m; echo $?",
    # A process that changed its uids is not dumpable, and stays so when its exec fails.
    "dropped-credentials": "/opt/dropexec 42 0 /nonexistent; /opt/dropexec 42 300000 /bin/true; "
                           "/opt/dropexec 42 0 /bin/uname -m; /opt/dropexec 42 0 /tmp; "
                           "/opt/dropexec 42 200000 /bin/true; "
                           "/opt/dropexec 42 30000 /bin/true; echo $?",
    # Small stacks: native and foreign parents.
    "native-parent-small-stacks": "/opt/stackexec 60 /bin/true",
    "native-parent-small-stacks-20k": "/opt/stackexec 12 /bin/true $(seq 1 20000)",
    "threads": "/opt/threads_exec /bin/uname -m",
    # Process names (/proc/PID/comm): the executed path's basename, 15 bytes; a script's own.
    "comm": "cat /proc/self/comm; cd /bin && ./cat /proc/self/comm; "
            "/opt/busybox-arm64 cat /proc/self/comm; "
            "cp /bin/cat /tmp/a-name-of-more-than-sixteen-bytes; "
            "/tmp/a-name-of-more-than-sixteen-bytes /proc/self/comm; "
            "printf '#!/bin/sh\\ncat /proc/$$/comm\\n' > /tmp/named; chmod +x /tmp/named; "
            "/tmp/named; /bin/sh -c 'cat /proc/$$/comm'; "
            "/opt/native-execveat_empty /bin/cat /proc/self/comm; "
            "/opt/native-execveat_dirfd /bin/cat /proc/self/comm; "
            "/opt/native-execveat_dirfd /tmp/named; /opt/native-execveat_empty /tmp/named",
    # Nested roots: the emulator is reached from a chroot, and from a mount namespace whose
    # /dev (where `xshim run` keeps it) is a fresh tmpfs, as binfmt_misc's F flag does.
    "chroot-foreign": "rm -rf /tmp/sub; mkdir -p /tmp/sub/bin; "
                      "cp /opt/busybox-arm64 /tmp/sub/bin/busybox; ln -s busybox /tmp/sub/bin/sh; "
                      "chroot /tmp/sub /bin/busybox echo in; echo $?; "
                      "chroot /tmp/sub /bin/busybox uname -m; "
                      "chroot /tmp/sub /bin/busybox true $(seq 1 20000); echo $?; "
                      "chroot /tmp/sub /bin/sh -c 'exit 3'; echo $?; "
                      "chroot /tmp/sub /bin/nonexistent 2>&1 | sed 's/^.*: //'; "
                      "cp /tmp/sub/bin/busybox /tmp/sub/bin/a-name-of-more-than-sixteen; "
                      "chroot /tmp/sub /bin/a-name-of-more-than-sixteen echo $?",
    "unshare-fresh-dev": "unshare --propagation unchanged -m sh -c 'mount --make-rprivate /dev "
                         "&& mount -t tmpfs none /dev && uname -m && ls -A /dev | wc -l && "
                         "cat /proc/self/comm'; echo $?",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_binfmt(tree: Path, case: str) -> None:
    script = CASES[case]
    kernel = under_binfmt(tree, script)
    assert kernel.returncode != contenders.STILL_IN_HOST_NS, kernel.stderr
    shim = under_xshim(tree, script)
    assert (shim.returncode, shim.stdout) == (kernel.returncode, kernel.stdout), (
        f"binfmt: {kernel.returncode} {kernel.stdout!r} {kernel.stderr[-500:]!r}\n"
        f"xshim:  {shim.returncode} {shim.stdout!r} {shim.stderr[-500:]!r}"
    )
    assert "xshim:" not in shim.stderr, shim.stderr[-1000:]


def test_set_id_program_runs_as_under_binfmt_and_says_why(tree: Path) -> None:
    """chage is set-group-ID shadow: run by nobody it cannot read /etc/shadow under either
    (Debian registers qemu without binfmt_misc's C flag); xshim says why, once."""
    script = ("setpriv --reuid 65534 --regid 65534 --clear-groups -- "
              "sh -c 'chage -l root >/dev/null 2>&1; echo $?; chage -l root >/dev/null 2>&1'")
    kernel = under_binfmt(tree, script)
    shim = under_xshim(tree, script)
    assert (shim.returncode, shim.stdout) == (kernel.returncode, kernel.stdout), (kernel, shim)
    assert kernel.stdout.strip() != "0", kernel
    notes = [line for line in shim.stderr.splitlines() if "set-group-ID" in line]
    assert len(notes) == 1, shim.stderr
    assert "/usr/bin/chage" in notes[0] and "runs as uid 65534" in notes[0], notes
    # Root's own exec of it changes nothing, so nothing is said.
    root = under_xshim(tree, "chage -l root >/dev/null; echo $?")
    assert root.stdout == "0\n" and "set-group-ID" not in root.stderr, root


def test_native_ptrace_fails_with_a_note(tree: Path) -> None:
    """A process has one tracer: under xshim that is the supervisor, so PTRACE_TRACEME fails
    (the kernel alone lets it succeed); the note says why."""
    assert under_binfmt(tree, "/opt/traceme").stdout == "0\n"
    shim = under_xshim(tree, "/opt/traceme; echo $?")
    assert shim.stdout == "EPERM\n1\n", shim
    assert "traceme called ptrace, which fails with EPERM" in shim.stderr, shim.stderr


@pytest.mark.slow
def test_five_thousand_execs_without_a_spurious_failure(tree: Path) -> None:
    """Native parents from the bottom of 64 KiB thread stacks (fork, vfork, posix_spawn), foreign
    parents in a shell loop, and 20,000-argument lists from both: every exec must succeed."""
    script = (
        "/opt/stackexec 1500 /opt/busybox-arm64 true | grep -x '0 failed' || exit 11; "
        "/opt/stackexec 60 /opt/busybox-arm64 true $(seq 1 20000) | grep -x '0 failed' || exit 12; "
        "i=0; while [ $i -lt 3300 ]; do /opt/busybox-arm64 true || exit 13; i=$((i+1)); done; "
        "set -- $(seq 1 20000); i=0; "
        "while [ $i -lt 140 ]; do /opt/busybox-arm64 true \"$@\" || exit 14; i=$((i+1)); done; "
        "echo done"
    )
    r = under_xshim(tree, script, timeout=600)
    assert (r.returncode, r.stdout) == (0, "0 failed\n0 failed\ndone\n"), r.stderr[-2000:]
