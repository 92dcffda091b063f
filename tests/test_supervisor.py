"""The exec supervisor with real qemu on real arm64, armhf and s390x programs (`xshim run`).

Every test here runs foreign code on a host with no binfmt_misc handler (conftest checks), so a
pass means the supervisor, and only the supervisor, sent each exec through qemu.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import builders, foreign
from xshim.builder import trace_read

pytestmark = [pytest.mark.integration, pytest.mark.root(reason="xshim run chroots and mounts")]

XSHIM = shutil.which("xshim") or "xshim"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private copy of a finished arm64 Debian tree, with foreign test programs in /opt."""
    work = tmp_path_factory.mktemp("arm64")
    root = foreign.copy_tree(builders.finished_tree(), work / "rootfs")
    opt = root / "opt"
    opt.mkdir(exist_ok=True)
    for arch in ("arm64", "armhf", "s390x"):
        shutil.copy2(foreign.busybox_static(arch), opt / f"busybox-{arch}")
    for name, path in foreign.guest_programs("arm64").items():
        shutil.copy2(path, opt / name)
    yield root
    shutil.rmtree(work, ignore_errors=True)


def xrun(
    root: Path, *cmd: str, trace: str | None = None, timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [XSHIM, "run", "--rootfs", str(root)]
    if trace:
        argv += ["--trace", trace]
    return subprocess.run([*argv, "--", *cmd], capture_output=True, text=True, timeout=timeout,
                          env=ENV if env is None else env)


def sh(root: Path, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return xrun(root, "/bin/sh", "-c", script, **kw)  # type: ignore[arg-type]


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_six_levels_of_nested_shells_end_in_an_emulated_uname(tree: Path) -> None:
    script = "uname -m"
    for _ in range(6):
        script = "sh -c " + shlex.quote(script)
    r = sh(tree, script)
    assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr


def test_apt_and_dpkg_run(tree: Path) -> None:
    r = xrun(tree, "apt-get", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("apt 2.") and "arm64" in r.stdout
    r = xrun(tree, "dpkg", "-l")
    assert r.returncode == 0, r.stderr
    assert any(line.split()[:2] == ["ii", "dpkg"] for line in r.stdout.splitlines())


def test_pipeline(tree: Path) -> None:
    r = sh(tree, "find /usr -name '*.so*' | sort | head")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 10 and all(".so" in x for x in lines)
    assert lines == sorted(lines)


def test_xargs_fan_out(tree: Path) -> None:
    r = sh(tree, "seq 1 40 | xargs -P 4 -n 1 sh -c 'echo $(( $1 * 2 ))' _")
    assert r.returncode == 0, r.stderr
    assert sorted(int(x) for x in r.stdout.split()) == [2 * i for i in range(1, 41)]


def test_foreign_scripts_with_sh_and_env_shebangs(tree: Path) -> None:
    (tree / "tmp/direct.sh").write_text('#!/bin/sh -e\necho "direct $0 $*"; uname -m\n')
    (tree / "tmp/viaenv").write_text('#!/usr/bin/env bash\necho "bash ${BASH_VERSINFO[0]} $1"\n')
    (tree / "tmp/nested").write_text("#!/tmp/direct.sh\n")  # an interpreter that is a script
    for name in ("direct.sh", "viaenv", "nested"):
        (tree / "tmp" / name).chmod(0o755)
    r = sh(tree, "/tmp/direct.sh a b && cd /tmp && ./viaenv x && /tmp/nested y")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "direct /tmp/direct.sh a b", "aarch64", "bash 5 x",
        "direct /tmp/direct.sh /tmp/nested y", "aarch64",
    ]


def test_kernel_answers_reach_the_shell(tree: Path) -> None:
    r = sh(tree, "no-such-command")
    assert r.returncode == 127 and "not found" in r.stderr
    r = sh(tree, "/etc/passwd")
    assert r.returncode == 126 and "Permission denied" in r.stderr
    (tree / "tmp/garbage").write_bytes(b"\x00\x01\x02 not a program")
    (tree / "tmp/garbage").chmod(0o755)
    r = sh(tree, "/tmp/garbage")
    assert r.returncode != 0


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_codes(tree: Path, code: int) -> None:
    assert sh(tree, f"exit {code}").returncode == code
    assert xrun(tree, "/opt/exitcode", str(code)).returncode == code


def test_guest_killed_by_a_signal(tree: Path) -> None:
    r = sh(tree, "kill -9 $$")
    assert r.returncode == 128 + signal.SIGKILL
    r = xrun(tree, "/opt/segv")
    assert r.returncode == 128 + signal.SIGSEGV
    r = sh(tree, "/opt/segv; echo status=$?")
    assert r.stdout.strip() == f"status={128 + signal.SIGSEGV}"


def test_fexecve_and_execveat_from_a_guest_program(tree: Path) -> None:
    r = xrun(tree, "/opt/fexecve", "/bin/uname", "-m")
    assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr
    r = xrun(tree, "/opt/execveat_dirfd", "/bin/uname", "-m")
    # qemu-user 7.2 does not implement execveat for its guests; newer ones pass it on to us.
    assert (r.returncode == 0 and r.stdout == "aarch64\n") or "Function not implemented" in r.stderr


@pytest.mark.network
def test_qemu_suite_selects_a_newer_debian_qemu_that_emulates_execveat(tree: Path) -> None:
    """trixie's qemu-user (10.0), fetched and checked through the signed archive, passes a
    guest's execveat on to the supervisor; bookworm's 7.2 (the default here) answers ENOSYS."""
    argv = [XSHIM, "run", "--rootfs", str(tree), "--qemu-suite", "trixie", "--",
            "/opt/execveat_dirfd", "/bin/uname", "-m"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=ENV)
    if r.returncode != 0 and "can't reach the Debian archive" in r.stderr:
        pytest.skip("the Debian archive is unreachable")
    assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr
    default = xrun(tree, "/opt/execveat_dirfd", "/bin/uname", "-m")
    if "7.2" in subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True,
                               text=True).stdout:
        assert "Function not implemented" in default.stderr


@pytest.mark.network
def test_accelerate_gives_aarch64_guests_qemus_cheap_pointer_signing(tree: Path) -> None:
    """--accelerate runs aarch64 guests on qemu's CPU with the implementation-defined pointer
    authentication (API) instead of QARMA5 (APA), at every depth; QEMU_CPU set by the caller
    wins. Without --accelerate the CPU is qemu's default, as under binfmt_misc."""
    def pauth(*opts: str, env: dict[str, str] = ENV) -> str:
        argv = [XSHIM, "run", *opts, "--rootfs", str(tree), "--", "/bin/sh", "-c",
                "/opt/pauth && sh -c /opt/pauth"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode != 0 and "can't reach the Debian archive" in r.stderr:
            pytest.skip("the Debian archive is unreachable")
        assert r.returncode == 0, r.stderr
        return r.stdout

    default = pauth()
    assert default.splitlines()[0].startswith("apa ") and " api 0" in default, default
    assert "apa 0 " not in default
    fast = pauth("--accelerate")
    assert fast.splitlines() == ["apa 0 api 1"] * 2, fast
    assert pauth("--accelerate", env={**ENV, "QEMU_CPU": "max"}) == default


def test_execveat_with_empty_path_from_a_native_program(tree: Path, tmp_path: Path) -> None:
    """execveat(fd, "", AT_EMPTY_PATH) and execveat(dirfd, name) reach the supervisor directly."""
    cc = shutil.which("cc") or pytest.skip("no host C compiler")
    src = Path(__file__).parent / "guest" / "fexecve.c"
    variants = (("execveat_empty", "-DRAW_EMPTY_PATH"), ("execveat_dirfd", "-DVIA_DIRFD"))
    for name, flag in variants:
        out = tree / "opt" / f"native-{name}"
        subprocess.run([cc, "-static", "-O2", flag, "-o", str(out), str(src)], check=True)
        r = xrun(tree, f"/opt/native-{name}", "/bin/uname", "-m")
        assert (r.returncode, r.stdout) == (0, "aarch64\n"), (name, r.stderr)


def test_static_busybox_and_other_architectures_in_one_run(tree: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    r = sh(tree, "/opt/busybox-arm64 uname -m; /opt/busybox-armhf uname -m; "
                 "/opt/busybox-s390x uname -m; uname -m", trace=str(trace))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["aarch64", "armv7l", "s390x", "aarch64"]
    used = {str(x.get("emulator")) for x in records(trace) if x["event"] == "exec"}
    assert {"qemu-aarch64-static", "qemu-arm-static", "qemu-s390x-static"} <= used


def test_guest_environment_is_exactly_the_callers(tree: Path) -> None:
    env = dict(ENV, XSHIM_TEST_MARK="42")
    r = xrun(tree, "/opt/printenv", env=env)
    assert r.returncode == 0, r.stderr
    environ, _, proc = r.stdout.partition("--- /proc/self/environ\n")
    expected = sorted(f"{k}={v}" for k, v in env.items())
    assert sorted(environ.split("\n")[:-1]) == expected
    assert sorted(proc.split("\n")[:-1]) == expected
    r = sh(tree, "env", env=env)
    assert sorted(r.stdout.splitlines()) == sorted([*expected, "PWD=/"])


def test_trace_records_every_exec_and_exit(tree: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    r = sh(tree, "/bin/true; sh -c 'exit 3'; no-such; /etc/passwd; :", trace=str(trace))
    assert r.returncode == 0
    recs = records(trace)
    execs = [x for x in recs if x["event"] == "exec"]
    assert [(x["path"], x["decision"]) for x in execs] == [
        ("/bin/sh", "emulate"), ("/bin/true", "emulate"), ("/usr/bin/sh", "emulate"),
        ("/etc/passwd", "kernel"),
    ]
    assert execs[2]["argv"] == ["sh", "-c", "exit 3"] and execs[2]["arch"] == "aarch64"
    assert execs[3]["errno"] == "EACCES"
    exits = {x["pid"]: x for x in recs if x["event"] == "exit"}
    assert exits[execs[2]["pid"]]["status"] == 3
    assert all(isinstance(x["duration"], float) for x in exits.values())
    r = sh(tree, "uname -m", trace="stderr")
    assert "→ qemu-aarch64-static" in r.stderr and "xshim[" in r.stderr


def test_the_trace_records_failures_long_arguments_and_descriptor_names(
    tree: Path, tmp_path: Path
) -> None:
    """An emulated exec the kernel then refuses is recorded with its errno; an argument over
    64 KiB is shown cut off with a marker; an execveat through a descriptor is named as the
    kernel names it (/dev/fd/N)."""
    cc = shutil.which("cc") or pytest.skip("no host C compiler")
    src = Path(__file__).parent / "guest" / "fexecve.c"
    prog = tree / "opt" / "native-execveat-empty-trace"
    subprocess.run([cc, "-static", "-O2", "-DRAW_EMPTY_PATH", "-o", str(prog), str(src)],
                   check=True)  # fmt: skip
    trace = tmp_path / "t.jsonl"
    big = "y" * 70000
    r = sh(tree, f"/bin/true $(seq 1 200000) 2>/dev/null; echo $?; /bin/echo {big} | wc -c; "
                 f"/opt/{prog.name} /bin/uname -m", trace=str(trace))
    assert (r.returncode, r.stdout) == (0, "126\n70001\n" "aarch64\n"), r.stderr
    execs = [x for x in records(trace) if x["event"] == "exec"]
    failed = [x for x in execs if x["decision"] == "failed"]
    assert [(x["path"], x["errno"]) for x in failed] == [("/bin/true", "E2BIG")]
    echo = next(x for x in execs if x["path"] == "/bin/echo")
    assert echo["argv"][1] == "y" * 65536 + "...[truncated at 65536 bytes]"
    fd_exec = next(x for x in execs if x["argv"][:1] == ["/bin/uname"])
    assert re.fullmatch(r"/dev/fd/\d+", str(fd_exec["path"])), fd_exec
    assert fd_exec["decision"] == "emulate"
    # The reader: the process never became the program whose exec failed.
    t = trace_read.assemble(records(trace))
    failed_pid = failed[0]["pid"]
    proc = next(p for p in t.procs if p.pid == failed_pid)
    assert all(e.path != "/bin/true" for e in proc.execs)
    assert any(e.path == "/bin/true" and e.errno == "E2BIG" for e in proc.attempts)


def test_signals_are_forwarded(tree: Path) -> None:
    p = subprocess.Popen(
        [XSHIM, "run", "--rootfs", str(tree), "--", "/bin/sh", "-c",
         "trap 'echo got-term; exit 3' TERM; echo ready; sleep 60 & wait"],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert (p.returncode, out) == (3, "got-term\n")


def _in_tree(root: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "root") == str(root):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_killing_the_supervisor_leaves_no_process_behind(tree: Path) -> None:
    p = subprocess.Popen(
        [XSHIM, "run", "--rootfs", str(tree), "--", "/bin/sh", "-c",
         "sleep 300 & sleep 300 & (sleep 300; echo no) & echo ready; wait"],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 30
    while len(_in_tree(tree)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_in_tree(tree)) >= 4
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while _in_tree(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _in_tree(tree) == []


@pytest.mark.slow
def test_two_thousand_execs_from_xargs_keep_every_exit_status(tree: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    r = sh(tree, "seq 1 2000 | xargs -P 8 -n 1 sh -c 'echo $1; exit $(( $1 % 5 ))' _",
           trace=str(trace), timeout=900)
    assert r.returncode == 123, r.stderr  # xargs: some command exited 1-125
    assert sorted(int(x) for x in r.stdout.split()) == list(range(1, 2001))
    recs = records(trace)
    runs = {x["pid"]: int(str(x["argv"][-1])) for x in recs  # type: ignore[index]
            if x["event"] == "exec" and x["argv"][:2] == ["sh", "-c"]}  # type: ignore[index]
    assert len(runs) == 2000
    exits = {x["pid"]: x["status"] for x in recs if x["event"] == "exit"}
    assert all(exits[pid] == n % 5 for pid, n in runs.items())


def test_multithreaded_guests(tree: Path) -> None:
    r = xrun(tree, "/opt/threads_join", "8")
    assert (r.returncode, r.stdout) == (0, "joined 8\n"), r.stderr
    r = xrun(tree, "/opt/threads_exec", "4", "/bin/uname", "-m")
    assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr


def test_no_emulator_means_enoexec_and_a_trace_that_says_why(tmp_path: Path) -> None:
    """Run the supervisor directly with only the arm64 emulator: an s390x exec must fail."""
    bb64, bbs390 = foreign.busybox_static("arm64"), foreign.busybox_static("s390x")
    trace = tmp_path / "t.jsonl"
    qemu = str(shutil.which("qemu-aarch64-static"))
    code = (
        "import os, sys\n"
        "from xshim.shim.supervisor import Config, supervise, exit_code\n"
        "from xshim.shim.tracelog import open_sink\n"
        f"cfg = Config(emulators={{'aarch64': {qemu!r}.encode()}},"
        f" trace=open_sink({str(trace)!r}))\n"
        f"argv = [b'sh', b'-c', b'{bbs390} uname -m; echo status=$?']\n"
        f"st = supervise(argv, dict(os.environb), cfg, program={str(bb64)!r}.encode())\n"
        "sys.exit(exit_code(st))\n"
    )
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=120)
    # ENOEXEC makes a POSIX shell try the file as a script, which then fails on the ELF bytes.
    assert "status=" in r.stdout and "status=0" not in r.stdout, r.stdout + r.stderr
    assert "s390x" not in r.stdout
    assert "s390x program but there is no emulator for s390x (have: aarch64)" in r.stderr
    refused = [x for x in records(trace) if x.get("decision") == "refused"]
    assert refused and refused[0]["arch"] == "s390x" and refused[0]["available"] == ["aarch64"]


def test_a_proc_symlink_is_left_alone_and_reported(tmp_path: Path) -> None:
    """A debootstrap --foreign tree made in a container has ``proc -> /proc``: mount(2) would
    follow it out of the rootfs, so xshim run leaves it, says so, and the command still runs."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(foreign.busybox_static("arm64"), root / "bin" / "busybox")
    (root / "proc").symlink_to("/proc")
    r = xrun(root, "/bin/busybox", "sh", "-c", "test -L /proc && /bin/busybox uname -m")
    assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr
    assert f"{root / 'proc'} is a symlink or a file: no /proc inside the rootfs" in r.stderr
    assert os.readlink(root / "proc") == "/proc"
    assert sorted(os.listdir(root)) == ["bin", "proc"], "mount points made by the run are left"


@pytest.mark.slow
def test_headline_debootstrap_second_stage(tmp_path: Path) -> None:
    root = foreign.copy_tree(foreign.arm64_first_stage(), tmp_path / "rootfs")
    r = xrun(root, "/debootstrap/debootstrap", "--second-stage", timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Base system installed successfully" in r.stdout + r.stderr
    assert not (root / "debootstrap").exists()
    status = (root / "var/lib/dpkg/status").read_text()
    installed = status.count("Status: install ok installed")
    assert installed > 80, installed
