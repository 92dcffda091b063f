"""Real foreign-arch builds with every builder, on a host with no binfmt_misc.

The example Dockerfile (examples/arm64-hello) is patched with ``xshim patch`` and built every way
(support/buildfix.py KINDS): dockerd 20.10's legacy builder (copy mode), dockerd 26's BuildKit,
buildah 1.28 with chroot isolation, podman 4.3 with oci and with chroot isolation (copy and mount
mode each).
Each image is then checked against what the unpatched Dockerfile would have produced on a binfmt
host (support/imagecheck.py): the platform, the base image's /bin/sh untouched, no bundle left,
the config computed from the Dockerfile and the base config, and the Debian arm64 package
installed by dpkg present byte for byte.

Builders run on private stores (tests/support/builders.py); tests skip only when a builder cannot
run here at all. BuildKit's own features are proven in test_builds_features.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from support import builders, foreign, imagecheck, trees
from support.buildfix import (
    BASE_TAG,
    BUILDERS,
    KINDS,
    PLATFORM,
    Kind,
    build,
    builder_of,
    kind_id,
    load_into,
    make_context,
    patch,
    run_failed,
)
from support.imagecheck import expected_config
from xshim.builder.platform import Platform

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

NATIVE_TAG = "xshim-test/busybox:amd64"


def test_expected_config_follows_docker_rules() -> None:
    base = {"Env": ["PATH=/bin"], "Cmd": ["bash"], "Labels": {"a": "1"}}
    text = (
        "FROM x AS one\nENV A=1 B=\"two words\"\nLABEL b=2\nFROM one\n# c\nRUN a \\\n  b\n"
        "WORKDIR /w\nWORKDIR sub\nENTRYPOINT [\"/e\"]\nEXPOSE 80 53/udp\nVOLUME [\"/v\"]\n"
        "ENV A=3\nUSER app\n"
    )
    assert expected_config(text, base) == {
        "Env": ["PATH=/bin", "B=two words", "A=3"],
        "Cmd": None,
        "Entrypoint": ["/e"],
        "User": "app",
        "WorkingDir": "/w/sub",
        "Shell": None,
        "Labels": {"a": "1", "b": "2"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/v": {}},
    }


@dataclass
class Built:
    kind: Kind
    tag: str
    result: builders.Result
    builder: Any
    dockerfile: str


@pytest.fixture(scope="module")
def example_builds(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    bundle: Path, hello_deb: Path,
) -> Callable[[Kind], Built]:  # fmt: skip
    """``example_builds(kind)``: the example built that way (once per module)."""
    done: dict[str, Built] = {}
    text = (builders.EXAMPLE_DIR / "Dockerfile").read_text()

    def get(kind: Kind) -> Built:
        if kind.id not in done:
            ctx = make_context(tmp_path_factory.mktemp(f"ctx-{kind.id}"), text, bundle,
                               {"hello_arm64.deb": hello_deb})  # fmt: skip
            patched = patch(ctx, kind.mode, "--platform", PLATFORM)
            tag = f"xshim-test/example:{kind.id}"
            r = build(request, kind, ctx, patched, tag)
            done[kind.id] = Built(kind, tag, r, builder_of(request, kind.builder), text)
        built = done[kind.id]
        built.result.check()
        return built

    return get


# --- native sanity: the builders themselves and the kernel features xshim stands on ------------

PROBE_C = r"""
/* Can a process in this build step trace its child's execve through seccomp RET_TRACE? */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execve, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {sizeof f / sizeof f[0], f};
        if (ptrace(PTRACE_TRACEME, 0, 0, 0)) { perror("PTRACE_TRACEME"); _exit(10); }
        raise(SIGSTOP);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) { perror("NO_NEW_PRIVS"); _exit(11); }
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) { perror("SECCOMP"); _exit(12); }
        execv(argv[1], argv + 1);
        perror("execv");
        _exit(13);
    }
    int st, seen = 0;
    waitpid(pid, &st, 0);
    if (!WIFSTOPPED(st)) { fprintf(stderr, "child did not stop\n"); return 2; }
    if (ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL)) {
        perror("PTRACE_SETOPTIONS"); return 3;
    }
    ptrace(PTRACE_CONT, pid, 0, 0);
    for (;;) {
        waitpid(pid, &st, 0);
        if (WIFEXITED(st)) break;
        if (WIFSIGNALED(st)) { fprintf(stderr, "child killed by %d\n", WTERMSIG(st)); return 4; }
        if (st >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
            struct user_regs_struct r;
            ptrace(PTRACE_GETREGS, pid, 0, &r);
            if (r.orig_rax == SYS_execve) seen++;
        }
        ptrace(PTRACE_CONT, pid, 0, 0);
    }
    printf("ptrace+seccomp: %d execve stop(s), child exit %d\n", seen, WEXITSTATUS(st));
    return seen == 1 && WEXITSTATUS(st) == 0 ? 0 : 5;
}
"""


@pytest.fixture(scope="module")
def native_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-binary amd64 image: the host's static busybox as /bin/sh."""
    tree = tmp_path_factory.mktemp("busybox-tree")
    tree.chmod(0o755)  # the image's / gets the tree's mode
    (tree / "bin").mkdir()
    busybox = Path("/bin/busybox")
    with busybox.open("rb") as f:
        static = not any(seg["p_type"] == "PT_INTERP" for seg in ELFFile(f).iter_segments())
    assert static, f"{busybox} is not static: apt-get install busybox-static"
    shutil.copy2(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")
    out = tmp_path_factory.mktemp("native") / "busybox.tar"
    return builders.write_image_archive(  # type: ignore[no-any-return]
        tree, out, tag=NATIVE_TAG, platform=Platform.parse("linux/amd64"), config={"Cmd": ["sh"]}
    )


@pytest.mark.parametrize("name", BUILDERS)
def test_build_step_allows_ptrace_and_seccomp(
    request: pytest.FixtureRequest, name: str, native_archive: Path, tmp_path: Path
) -> None:
    """What the shim needs inside a RUN step, under the builder's default seccomp profile."""
    b = builder_of(request, name)
    load_into(b, native_archive, NATIVE_TAG)
    (tmp_path / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp_path / "probe"),
                    str(tmp_path / "probe.c")], check=True)  # fmt: skip
    (tmp_path / "Dockerfile").write_text(
        f"FROM {NATIVE_TAG}\nCOPY probe /probe\nRUN /probe /bin/busybox true\n"
    )
    r = b.build(tmp_path, tmp_path / "Dockerfile", f"xshim-test/probe:{name}").check()
    assert "ptrace+seccomp: 1 execve stop(s), child exit 0" in r.output


@pytest.mark.parametrize("name", BUILDERS)
def test_unpatched_foreign_build_fails_here(
    request: pytest.FixtureRequest, name: str, loaded: Any, tmp_path: Path
) -> None:
    """Without xshim the kernel refuses the arm64 shell: nothing else runs foreign code here."""
    b = loaded(name)
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_TAG}\nRUN true\n")
    r = b.build(tmp_path, tmp_path / "Dockerfile", "xshim-test/unpatched", platform=PLATFORM)
    assert r.returncode != 0
    assert "exec format error" in r.output.lower(), r.output[-2000:]


# --- the example, patched and built every way ----------------------------------------------


@pytest.fixture(params=KINDS, ids=kind_id)
def built(request: pytest.FixtureRequest, example_builds: Any) -> Built:
    return example_builds(request.param)  # type: ignore[no-any-return]


def test_example_builds_as_arm64(built: Built) -> None:
    imagecheck.assert_platform(built.builder, built.tag, PLATFORM)
    # XSHIM_TRACE=1 put the trace in the build log: the innermost program of the nested shells
    # ran through the arm64 emulator.
    assert re.search(r"xshim\[\d+\] \S*/uname -m .*→ qemu-aarch64", built.result.output), (
        built.result.output[-3000:]
    )


# Top-level names the example's own steps create.
EXAMPLE_CREATES = {"greeting.txt", "data"}


def test_example_image_is_clean(built: Built, base_tree: Path) -> None:
    with built.builder.rootfs(built.tag) as root:
        imagecheck.assert_clean(root, base_tree, EXAMPLE_CREATES)


def test_example_image_config(built: Built) -> None:
    got = imagecheck.image_config(built.builder, built.tag)
    assert got == expected_config(built.dockerfile, builders.base_config())


def test_example_image_has_the_arm64_package(built: Built, hello_deb: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    with built.builder.rootfs(built.tag) as root:
        imagecheck.assert_package(root, hello_deb, "hello", tmp_path / "deb")
        assert builders.elf_arch(builders.inside(root, "/usr/bin/hello")) is not None
        # Written by arm64 programs in the build stage and carried over by COPY --from.
        info = builders.inside(root, "/opt/build-info")
        assert (info / "uname-m").read_text() == "aarch64\n"
        assert (info / "dpkg-arch").read_text() == "arm64\n"
        assert builders.inside(root, "/greeting.txt").read_text() == "Hello, world!\n"


# --- a failing RUN fails the build with its own status --------------------------------------------

FAILING = {
    "shell": 'RUN echo before && sh -c "bash -c \'exit 42\'" && echo "not reached"\n',
    "exec": 'RUN ["bash", "-c", "exit 43"]\n',
}


@pytest.mark.parametrize("form", sorted(FAILING))
@pytest.mark.parametrize("kind", KINDS, ids=kind_id)
def test_failing_run_fails_the_build_with_its_status(
    request: pytest.FixtureRequest, kind: Kind, form: str, bundle: Path, tmp_path: Path
) -> None:
    code = 42 if form == "shell" else 43
    text = f"FROM --platform={PLATFORM} {BASE_TAG}\nRUN true\n{FAILING[form]}RUN touch /after\n"
    ctx = make_context(tmp_path / "ctx", text, bundle)
    r = build(request, kind, ctx, patch(ctx, kind.mode), f"xshim-test/failing:{kind.id}")
    assert r.returncode != 0, r.output[-2000:]
    assert run_failed(kind, r.output, code), r.output[-2000:]
    # Docker's legacy builder colours the step's stderr lines, and BuildKit prefixes each line
    # with its step number and time: compare the text after those.
    lines = [re.sub(r"^#\d+ [\d.]+ ", "", re.sub(r"\x1b\[[0-9;]*m", "", line)).strip()
             for line in r.output.splitlines()]  # fmt: skip
    assert "not reached" not in lines, "the build went on after the failure"
    if form == "shell":
        assert "before" in lines, "the step failed before its own command ran"


# --- the README's main job ---------------------------------------------------------------------


def test_run_example_script(dockerd: builders.Dockerd, base_tree: Path, tmp_path: Path) -> None:
    """examples/run-example.sh, as `make demo` runs it, on the private dockerd: `xshim build` of
    the example for linux/amd64 and linux/arm64 into an OCI archive it checks, then the arm64
    image loaded, its own program run through the bundle mounted for that run only."""
    work = tmp_path / "work"
    work.mkdir()
    # The script's step 1 would make the same trees.
    foreign.copy_tree(base_tree, work / "rootfs")
    foreign.copy_tree(trees.native("amd64"), work / "rootfs-amd64")
    script = builders.EXAMPLE_DIR.parent / "run-example.sh"
    try:
        r = builders.run(["sh", str(script), str(work)],
                         env=dockerd.env(DOCKER=builders.DOCKER))  # fmt: skip
        r.check()
        lines = [line.strip() for line in r.output.splitlines()]
        assert "built and run through xshim" in lines
        assert "OK: xshim-example/hello:arm64" in lines
        assert "platform: linux/arm64" in lines
        assert "index: linux/amd64 linux/arm64" in lines
        assert (work / "hello.tar").is_file()
    finally:
        dockerd.docker("rmi", "-f", "xshim-example/hello:arm64", "xshim-example/debian:amd64")
