"""The planner: which descriptor an exec goes through, what a tracee hidden by /proc must tell
the supervisor before its exec can be planned, and the plan or the leave for real files: #!
chains, fexecve, the shim exec'd as itself, and the errno of what is left to the kernel."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

from support.headers import elf_header
from xshim.shim import arch as A
from xshim.shim import ptrace as pt
from xshim.shim.decide import Script, emulated_argv
from xshim.shim.plan import Leave, NeedView, Plan, Planner, fd_of
from xshim.shim.tracee import Opener
from xshim.shim.tracelog import Decision
from xshim.shim.twins import Twin, TwinTable


def test_the_descriptor_an_exec_goes_through() -> None:
    assert fd_of(7, pt.AT_FDCWD, b"/bin/sh") is None
    assert fd_of(7, pt.AT_FDCWD, b"bin/sh") is None
    assert fd_of(7, 3, b"sh") == 3
    assert fd_of(7, 3, b"") == 3
    assert fd_of(7, 3, b"/bin/sh") is None  # an absolute path ignores the descriptor
    assert fd_of(7, pt.AT_FDCWD, b"/proc/self/fd/4") == 4
    assert fd_of(7, pt.AT_FDCWD, b"/proc/thread-self/fd/5") == 5
    assert fd_of(7, pt.AT_FDCWD, b"/proc/7/fd/6") == 6
    assert fd_of(7, pt.AT_FDCWD, b"/proc/8/fd/6") is None  # another process's
    assert fd_of(7, pt.AT_FDCWD, b"/proc/self/fd/4/x") is None


def test_what_a_hidden_tracee_must_tell() -> None:
    p = Planner({}, frozenset(), None, None, Opener("/"))
    assert p.needs(7, pt.AT_FDCWD, b"/bin/sh", root_known=True) is None
    assert p.needs(7, pt.AT_FDCWD, b"/bin/sh", root_known=False) == NeedView(True, False, None)
    assert p.needs(7, pt.AT_FDCWD, b"bin/sh", root_known=True) == NeedView(False, True, None)
    assert p.needs(7, 3, b"sh", root_known=True) == NeedView(False, False, 3)
    assert p.needs(7, pt.AT_FDCWD, b"/proc/self/fd/4", root_known=True) == NeedView(False, False, 4)


# --- the planner over real files, as this process's own exec would see them ----------------------
# The "tracee" is the test process itself: its /proc entries are readable without privileges, so
# these need no root. Files are made in a temporary directory inside this process's root.

AARCH64 = A.by_name("aarch64")
EMU = b"/opt/emu/qemu-aarch64"


def _file(path: Path, data: bytes, mode: int = 0o755) -> bytes:
    path.write_bytes(data)
    path.chmod(mode)
    return os.fsencode(path)


def _foreign(path: Path) -> bytes:
    return _file(path, elf_header(AARCH64))


def _planner(
    emulators: dict[str, bytes] | None = None, shim: bytes | None = None,
    shell: bytes | None = None,
) -> Planner:
    ids = frozenset()
    if shim is not None:
        st = os.stat(shim)
        ids = frozenset({(st.st_dev, st.st_ino)})
    return Planner({"aarch64": EMU} if emulators is None else emulators, ids, shell,
                   AARCH64 if shell else None, Opener("/"))


def _plan(p: Planner, path: bytes, dirfd: int = pt.AT_FDCWD, flags: int = 0) -> object:
    return p.plan(os.getpid(), dirfd, path, flags)


def test_a_foreign_program_is_run_by_its_emulator(tmp_path: Path) -> None:
    prog = _foreign(tmp_path / "prog")
    assert _plan(_planner(), prog) == Plan(EMU, AARCH64, prog, [EMU, b"-0", b"", prog], None, [])


def test_a_shebang_chain_ending_in_a_foreign_program(tmp_path: Path) -> None:
    elf = _foreign(tmp_path / "elf")
    i1 = _file(tmp_path / "i1", b"#!" + elf + b" a2\n")
    script = _file(tmp_path / "s", b"#!" + i1 + b" a1\n")
    chain = [Script(i1, b"a1"), Script(elf, b"a2")]
    assert _plan(_planner(), script) == Plan(
        EMU, AARCH64, elf, emulated_argv(EMU, b"", elf, chain, script), None, chain)


def test_a_shebang_chain_ending_in_a_native_program_is_the_kernels(tmp_path: Path) -> None:
    native = _file(tmp_path / "native", elf_header(A.host_arch()))
    script = _file(tmp_path / "s", b"#!" + native + b"\n")
    out = _plan(_planner(), script)
    assert out == Leave(Decision.NATIVE, 0, A.host_arch().name, A.host_arch())


def test_a_missing_interpreter_is_left_to_the_kernel(tmp_path: Path) -> None:
    script = _file(tmp_path / "s", b"#!" + os.fsencode(tmp_path / "nowhere") + b"\n")
    out = _plan(_planner(), script)
    assert isinstance(out, Leave) and out.decision is Decision.KERNEL and not out.answer
    assert out.errno == errno.ENOENT  # the kernel's answer, which the trace names
    assert out.reason == f"interpreter {tmp_path / 'nowhere'}: ENOENT"


def test_a_foreign_chain_deeper_than_binfmt_misc_follows_fails_with_eloop(
    tmp_path: Path,
) -> None:
    prev = _foreign(tmp_path / "elf")
    for i in range(5):  # five #! levels: binfmt_misc would take a sixth round of the loader
        prev = _file(tmp_path / f"s{i}", b"#!" + prev + b"\n")
    out = _plan(_planner(), prev)
    assert out == Leave(Decision.KERNEL, errno.ELOOP, "ELOOP: too many levels of #! interpreters",
                        AARCH64, answer=True)


def test_what_the_kernel_would_refuse_carries_its_errno(tmp_path: Path) -> None:
    p = _planner()
    assert _plan(p, _file(tmp_path / "plain", elf_header(AARCH64), 0o644)) == Leave(
        Decision.KERNEL, errno.EACCES, "EACCES: no execute permission")
    assert _plan(p, os.fsencode(tmp_path)) == Leave(
        Decision.KERNEL, errno.EACCES, "EACCES: not a regular file")
    assert _plan(p, os.fsencode(tmp_path / "absent")) == Leave(
        Decision.KERNEL, errno.ENOENT, "ENOENT")
    assert _plan(p, _file(tmp_path / "text", b"hello\n")) == Leave(
        Decision.KERNEL, errno.ENOEXEC, "not an executable format")


def test_a_foreign_program_open_for_writing_fails_with_etxtbsy(tmp_path: Path) -> None:
    prog = _foreign(tmp_path / "prog")
    with open(prog, "ab"):
        out = _plan(_planner(), prog)
    assert out == Leave(Decision.KERNEL, errno.ETXTBSY, "ETXTBSY: open for writing", AARCH64,
                        answer=True)


def test_no_emulator_is_a_refusal_the_kernel_answers(tmp_path: Path) -> None:
    out = _plan(_planner({}), _foreign(tmp_path / "prog"))
    assert out == Leave(Decision.REFUSED, errno.ENOEXEC, "no emulator for aarch64", AARCH64)


def test_fexecve_of_a_named_file_hands_qemu_its_name(tmp_path: Path) -> None:
    prog = _foreign(tmp_path / "prog")
    fd = os.open(prog, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = _plan(_planner(), b"", fd, pt.AT_EMPTY_PATH)
        assert isinstance(out, Plan) and out.program == prog and out.path_override == prog
        # glibc's fallback, execve("/proc/self/fd/N"): the same file, the same name for qemu
        via_proc = _plan(_planner(), b"/proc/self/fd/%d" % fd)
        assert isinstance(via_proc, Plan) and via_proc.path_override == prog
    finally:
        os.close(fd)


def test_fexecve_of_an_unlinked_file_needs_a_descriptor_that_survives(tmp_path: Path) -> None:
    prog = _foreign(tmp_path / "prog")
    fd = os.open(prog, os.O_RDONLY | os.O_CLOEXEC)
    os.unlink(prog)
    try:
        assert _plan(_planner(), b"", fd, pt.AT_EMPTY_PATH) == Leave(
            Decision.KERNEL, errno.ENOEXEC, "fexecve of an unnamed close-on-exec descriptor")
        os.set_inheritable(fd, True)
        out = _plan(_planner(), b"", fd, pt.AT_EMPTY_PATH)
        assert isinstance(out, Plan) and out.path_override == b"/proc/self/fd/%d" % fd
    finally:
        os.close(fd)


def test_a_script_through_a_close_on_exec_descriptor_fails_with_enoent(tmp_path: Path) -> None:
    elf = _foreign(tmp_path / "elf")
    script = _file(tmp_path / "s", b"#!" + elf + b"\n")
    fd = os.open(script, os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert _plan(_planner(), b"", fd, pt.AT_EMPTY_PATH) == Leave(
            Decision.KERNEL, errno.ENOENT, "ENOENT: script through a close-on-exec descriptor",
            answer=True)
        os.set_inheritable(fd, True)
        out = _plan(_planner(), b"", fd, pt.AT_EMPTY_PATH)
        # the kernel's name for it, /dev/fd/N, is what the interpreter gets
        assert isinstance(out, Plan) and out.head[-1] == b"/dev/fd/%d" % fd
    finally:
        os.close(fd)


def test_the_shim_exec_d_as_itself_runs_the_images_shell(tmp_path: Path) -> None:
    shim = _file(tmp_path / "sh", b"#!/not/read\n")
    shell = b"/guest/bin/sh"
    p = _planner(shim=shim, shell=shell)
    assert _plan(p, shim) == Plan(EMU, AARCH64, shell, [EMU, b"-0", b"", shell], shell, [])


def test_the_shim_as_a_scripts_interpreter_runs_it_with_the_images_shell(tmp_path: Path) -> None:
    shim = _file(tmp_path / "sh", b"#!/not/read\n")
    shell = b"/guest/bin/sh"
    script = _file(tmp_path / "s", b"#!" + shim + b" -e\n")
    out = _plan(_planner(shim=shim, shell=shell), script)
    chain = [Script(shim, b"-e")]
    assert out == Plan(EMU, AARCH64, shell, emulated_argv(EMU, b"", shell, chain, script), None,
                       chain)


def test_the_shim_without_an_emulator_for_the_images_shell_is_refused(tmp_path: Path) -> None:
    shim = _file(tmp_path / "sh", b"#!/not/read\n")
    out = _plan(_planner({}, shim=shim, shell=b"/guest/bin/sh"), shim)
    assert out == Leave(Decision.REFUSED, errno.ENOEXEC, "no emulator for the image's shell",
                        AARCH64)


def test_decisions_are_the_trace_formats_strings() -> None:
    assert [d.value for d in Decision] == ["emulate", "native", "kernel", "refused", "failed",
                                          "twin"]
    assert json.dumps({"decision": Decision.KERNEL}) == '{"decision": "kernel"}'
    assert f"{Decision.REFUSED}" == "refused"


def test_a_tracee_whose_twin_failed_is_emulated_with_the_reason(tmp_path: Path) -> None:
    content = elf_header(AARCH64)
    prog = _file(tmp_path / "xz", content)
    twin = Twin("/xz", "exe/xz", hashlib.sha256(content).hexdigest(), len(content),
                "xz-utils", "1", "xz-utils", "1")
    p = Planner({"aarch64": EMU}, frozenset(), None, None, Opener("/"),
                TwinTable([twin], "/twin", str(tmp_path)))
    out = p.plan(os.getpid(), pt.AT_FDCWD, prog, 0)
    assert isinstance(out, Plan) and out.twin is not None
    assert (out.twin.path, out.twin.reason) == (b"/twin/exe/xz", "")
    failed = "its twin's exec failed with ENOENT"
    out = p.plan(os.getpid(), pt.AT_FDCWD, prog, 0, no_twin=failed)
    assert isinstance(out, Plan) and out.twin is not None
    assert (out.twin.path, out.twin.reason) == (b"", failed)


def test_qemu_options_stand_between_the_emulator_and_its_argv0(tmp_path: Path) -> None:
    """An accelerated run's -cpu reaches every emulated exec of that architecture: a program, a
    script chain and the shim standing in for the image's shell; the count of option strings
    tells the argv writer where the caller's argv[0] and path go."""
    from xshim.shim.twins import cpu_options

    opts = cpu_options(caller_sets_cpu=False)
    cpu = opts["aarch64"]
    assert cpu == (b"-cpu", b"max,pauth-impdef=on") and cpu_options(caller_sets_cpu=True) == {}
    shim = _file(tmp_path / "sh", b"#!/not/read\n")
    shell = b"/guest/bin/sh"
    p = Planner({"aarch64": EMU}, frozenset({(os.stat(shim).st_dev, os.stat(shim).st_ino)}),
                shell, AARCH64, Opener("/"), None, opts)
    prog = _foreign(tmp_path / "prog")
    assert _plan(p, prog) == Plan(EMU, AARCH64, prog, [EMU, *cpu, b"-0", b"", prog], None, [],
                                  lead=2)
    script = _file(tmp_path / "s", b"#!" + prog + b" a1\n")
    out = _plan(p, script)
    assert isinstance(out, Plan) and out.lead == 2
    assert out.head == [EMU, *cpu, b"-0", prog, prog, b"a1", script]
    assert _plan(p, shim) == Plan(EMU, AARCH64, shell, [EMU, *cpu, b"-0", b"", shell], shell, [],
                                  lead=2)
