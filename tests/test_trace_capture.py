"""What the supervisor writes into a trace, from real runs of arm64 programs under `xshim run`:
CPU time on every exit, signal deaths with the guest-fault verdict, parents across subshells,
file digests, and the build-log transport."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import builders, foreign
from xshim.builder.trace_read import parse, read_files
from xshim.builder.trace_views import total_cpu
from xshim.shim.tracelog import MARK

pytestmark = [pytest.mark.integration,
              pytest.mark.root(reason="xshim run needs root (chroot and mounts)")]

XSHIM = shutil.which("xshim") or "xshim"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private copy of a finished arm64 tree (qemu writes a guest's core file into its cwd),
    with the arm64 test programs and the host's static busybox in /opt."""
    work = tmp_path_factory.mktemp("arm64-trace")
    root = foreign.copy_tree(builders.finished_tree(), work / "rootfs")
    opt = root / "opt"
    opt.mkdir(exist_ok=True)
    for name, path in foreign.guest_programs("arm64").items():
        shutil.copy2(path, opt / name)
    shutil.copy2("/bin/busybox", opt / "busybox-native")
    (opt / "hello.sh").write_text("#!/bin/sh\necho hello from a script\n")
    (opt / "hello.sh").chmod(0o755)
    yield root
    shutil.rmtree(work, ignore_errors=True)


def xrun(root: Path, script: str, trace: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [XSHIM, "run", "--rootfs", str(root), "--trace", trace, "--", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=300, env=dict(ENV, **(env or {})),
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exits_carry_cpu_time_and_signal_deaths_say_whether_the_guest_faulted(
    tree: Path, tmp_path: Path
) -> None:
    t = tmp_path / "t.jsonl"
    r = xrun(tree, "/opt/segv; /opt/busybox-native sh -c 'kill -SEGV $$'; "
                   "(cd /tmp && uname -m); exit 5", str(t))
    assert r.returncode == 5, r.stderr
    recs = records(t)
    start = recs[0]
    assert start["event"] == "start" and start["v"] == 2
    assert {x["run"] for x in recs} == {start["run"]}
    execs = {x["path"]: x for x in recs if x["event"] == "exec" and x["decision"] != "kernel"}
    exits = {x["pid"]: x for x in recs if x["event"] == "exit"}
    segv = exits[execs["/opt/segv"]["pid"]]
    assert (segv["signal"], segv["signame"], segv["guest_fault"]) == (11, "SIGSEGV", True)
    native = exits[execs["/opt/busybox-native"]["pid"]]
    assert execs["/opt/busybox-native"]["decision"] == "native"
    assert (native["signame"], native["guest_fault"]) == ("SIGSEGV", False)
    for x in exits.values():
        assert x["cpu"] > 0 and abs(x["user"] + x["sys"] - x["cpu"]) < 2e-6 and x["maxrss"] > 0
    readable = xrun(tree, "/opt/segv", "stderr")
    assert "killed by SIGSEGV (guest fault: qemu's uncaught target signal)" in readable.stderr
    # uname ran in a subshell that never exec'd: its parent in the trace is the shell.
    shell = execs["/bin/sh"]["pid"]
    assert shell == start["pid"] and execs["/usr/bin/uname"]["ppid"] == shell
    assert exits[shell]["status"] == 5
    # The shell waited for every child: its rusage holds them all.
    trace = read_files([str(t)])
    total = total_cpu(trace)
    assert total == pytest.approx(exits[shell]["cpu"])
    assert sum(p.exclusive for p in trace.procs) == pytest.approx(total, rel=0.01)


def test_digests_of_programs_and_interpreters(tree: Path, tmp_path: Path) -> None:
    t = tmp_path / "t.jsonl"
    r = xrun(tree, "uname -m; /opt/hello.sh", str(t), env={"XSHIM_TRACE_HASH": "1"})
    assert r.returncode == 0, r.stderr
    execs = {x["path"]: x for x in records(t) if x["event"] == "exec"
             and x["decision"] == "emulate"}  # fmt: skip

    def digest(path: str) -> str:
        return hashlib.sha256(builders.inside(tree, path).read_bytes()).hexdigest()

    assert execs["/usr/bin/uname"]["sha256"] == digest("/usr/bin/uname")
    script = execs["/opt/hello.sh"]
    assert script["script"] == ["/bin/sh"]
    assert script["sha256"] == digest("/opt/hello.sh")
    assert script["script_sha256"] == [digest("/bin/sh")]
    t2 = tmp_path / "plain.jsonl"
    xrun(tree, "uname -m", str(t2))
    assert not any("sha256" in x for x in records(t2))


def test_log_transport_is_marked_json_on_stderr(tree: Path, tmp_path: Path) -> None:
    r = xrun(tree, "echo out; echo err >&2; uname -m | cat", "log")
    assert r.returncode == 0 and r.stdout == "out\naarch64\n", r.stderr
    marked = [ln for ln in r.stderr.splitlines() if ln.startswith(MARK)]
    assert "err" in r.stderr.splitlines()
    assert len(marked) == 1 + 3 + 3  # start; sh, uname, cat execs; their exits
    log = tmp_path / "build.log"
    log.write_text(r.stderr)
    recs = parse(log.read_text(), str(log))
    assert [x["event"] for x in recs].count("exit") == 3
    out = subprocess.run([XSHIM, "trace", "tree", str(log)], capture_output=True, text=True)
    assert out.returncode == 0 and "uname -m" in out.stdout and "cat" in out.stdout, out.stderr


def test_execs_left_to_the_kernel_carry_the_errno_the_tracee_got(
    tree: Path, tmp_path: Path
) -> None:
    """A script whose interpreter is missing (ENOENT) or not executable (EACCES), and a program
    that is neither ELF nor script (ENOEXEC, after which env runs it with /bin/sh): the record
    names the errno the exec failed with."""
    trace = tmp_path / "t.jsonl"
    script = ("printf '#!/nowhere\\n' > /tmp/a; printf '#!/etc/passwd\\n' > /tmp/b; "
              "printf 'junk' > /tmp/c; chmod +x /tmp/a /tmp/b /tmp/c; "
              "for p in /tmp/a /tmp/b /tmp/c; do "
              "/opt/busybox-native env $p 2>/dev/null; echo $?; done")
    r = xrun(tree, script, str(trace))
    assert r.stdout == "127\n126\n127\n", r.stderr[-2000:]
    got = {rec["path"]: (rec["decision"], rec.get("errno")) for rec in records(trace)
           if rec.get("path") in ("/tmp/a", "/tmp/b", "/tmp/c")}
    assert got == {"/tmp/a": ("kernel", "ENOENT"), "/tmp/b": ("kernel", "EACCES"),
                   "/tmp/c": ("kernel", "ENOEXEC")}, got
