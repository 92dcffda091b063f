"""Real foreign-arch builds with real builders, on a host with no binfmt_misc.

The example Dockerfile (examples/arm64-hello) is patched with ``xshim patch`` and built three
ways: Debian's dockerd 20.10 with the legacy builder (copy mode), buildah 1.28 with vfs storage
and chroot isolation (copy mode and mount mode). Each image is then checked against what the
unpatched Dockerfile would have produced on a binfmt host: the base image's /bin/sh untouched,
no bundle left, the config computed from the Dockerfile and the base config, and the Debian
arm64 package installed by dpkg present byte for byte.

Builders run on private stores (tests/support/builders.py); tests skip only when dockerd or
buildah cannot run here at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from elftools.elf.elffile import ELFFile
from support import builders, foreign
from xshim.builder import debian

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

PLATFORM = "linux/arm64"
BASE_TAG = "xshim-example/debian:arm64"  # the name examples/arm64-hello/Dockerfile builds on
NATIVE_TAG = "xshim-test/busybox:amd64"


# --- what the unpatched Dockerfile would produce ------------------------------------------------


def logical_lines(text: str) -> list[str]:
    """Instructions of a simple Dockerfile (backslash escape, no heredocs), continuations joined
    and comment lines dropped."""
    out: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not cur):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur.strip():
        out.append(cur)
    return out


def _json_or_words(arg: str) -> list[str]:
    try:
        value = json.loads(arg)
    except ValueError:
        return shlex.split(arg)
    assert isinstance(value, list), arg
    return [str(v) for v in value]


def _pairs(arg: str) -> list[tuple[str, str]]:
    words = shlex.split(arg)
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return [(words[0], words[1])]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


def expected_config(dockerfile: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the last stage: the base image's config with the stage's config
    instructions applied, as Docker's builder applies them."""
    stages: dict[str, dict[str, Any]] = {}
    cfg: dict[str, Any] = {}
    cmd_set = False
    for line in logical_lines(dockerfile):
        word, _, arg = line.partition(" ")
        op, arg = word.upper(), arg.strip()
        if op == "FROM":
            words = [w for w in arg.split() if not w.startswith("--")]
            parent = words[0].lower()
            cfg = json.loads(json.dumps(stages.get(parent, base)))
            cmd_set = False
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2].lower()] = cfg
        elif op == "ENV":
            env = [e for e in cfg.get("Env") or []]
            for k, v in _pairs(arg):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            cfg["Env"] = env
        elif op == "LABEL":
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(_pairs(arg))}
        elif op == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in arg.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif op == "VOLUME":
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{v: {} for v in _json_or_words(arg)}}
        elif op == "WORKDIR":
            cfg["WorkingDir"] = os.path.join(cfg.get("WorkingDir") or "/", arg)
        elif op == "USER":
            cfg["User"] = arg
        elif op == "SHELL":
            cfg["Shell"] = _json_or_words(arg)
        elif op == "CMD":
            cfg["Cmd"] = _json_or_words(arg)
            cmd_set = True
        elif op == "ENTRYPOINT":
            cfg["Entrypoint"] = _json_or_words(arg)
            if not cmd_set:  # an inherited CMD is dropped by a new ENTRYPOINT
                cfg["Cmd"] = None
    return builders.pick_config(cfg)


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


# --- builders -----------------------------------------------------------------------------------


class Builder(Protocol):
    def config(self, image: str) -> dict[str, Any]: ...
    def rootfs(self, image: str) -> Any: ...


@dataclass
class Kind:
    """One way of building: a builder and the patch mode it uses."""

    builder: str  # docker | buildah
    mode: str  # copy | mount

    @property
    def id(self) -> str:
        return f"{self.builder}-{self.mode}"


KINDS = [Kind("docker", "copy"), Kind("buildah", "copy"), Kind("buildah", "mount")]


@pytest.fixture(autouse=True)
def _no_binfmt_after() -> Iterator[None]:
    """conftest checks before each test; a build must not have registered anything either."""
    yield
    builders.assert_no_binfmt((PLATFORM,))


@pytest.fixture(scope="module")
def _builders_to_ourselves() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("dockerd and buildah with chroot isolation need root")
    with builders.exclusive():
        yield


@pytest.fixture(scope="module")
def dockerd(_builders_to_ourselves: None) -> Iterator[builders.Dockerd]:
    try:
        d = builders.start_dockerd()
    except builders.BuilderUnavailable as e:
        pytest.skip(f"dockerd cannot run here: {e}")
    try:
        yield d
    finally:
        d.prune("xshim-test/")
        d.stop()


@pytest.fixture(scope="module")
def buildah(_builders_to_ourselves: None) -> Iterator[builders.Buildah]:
    try:
        b = builders.start_buildah()
    except builders.BuilderUnavailable as e:
        pytest.skip(f"buildah cannot run here: {e}")
    yield b
    b.prune("xshim-test/")


def _builder(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue("dockerd" if name == "docker" else "buildah")


@pytest.fixture(scope="module")
def base_tree() -> Path:
    return builders.finished_tree()


@pytest.fixture(scope="module")
def base_archive(base_tree: Path) -> Path:
    return builders.base_archive(
        base_tree, tag=BASE_TAG, platform=PLATFORM, config=builders.base_config()
    )


@pytest.fixture(scope="module")
def loaded(request: pytest.FixtureRequest, base_archive: Path) -> Any:
    """Load the base image into a builder on first use: ``loaded('docker')``."""
    done: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in done:
            b = _builder(request, name)
            if name == "docker":
                b.load(base_archive)
            else:
                b.load(base_archive, BASE_TAG)
            cfg = b.config(BASE_TAG)
            assert (cfg["Os"], cfg["Architecture"]) == ("linux", "arm64")
            done[name] = b
        return done[name]

    return load


@pytest.fixture(scope="module")
def hello_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GNU hello for arm64 from the tree's suite, verified against the signed archive."""
    _, path = foreign.archive_or_skip(foreign.SUITE).fetch_package("hello", "arm64")
    return Path(path)


def _xshim(*args: str, cwd: Path) -> builders.Result:
    return builders.run(["xshim", *args], cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    _xshim("bundle", "--platform", PLATFORM, "-o", str(out / ".xshim"), cwd=out).check()
    return out / ".xshim"


def make_context(dest: Path, dockerfile: str, bundle: Path, extra: Mapping[str, Path] = {}) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Dockerfile").write_text(dockerfile)
    for name, src in extra.items():
        shutil.copyfile(src, dest / name)
    subprocess.run(["cp", "-a", str(bundle), str(dest / ".xshim")], check=True)
    return dest


def patch(ctx: Path, mode: str) -> Path:
    r = _xshim("patch", "Dockerfile", "-o", "Dockerfile.xshim", "--mode", mode,
               "--bundle", ".xshim", cwd=ctx)  # fmt: skip
    r.check()
    return ctx / "Dockerfile.xshim"


def build(request: pytest.FixtureRequest, kind: Kind, ctx: Path, dockerfile: Path,
          tag: str, network: str | None = None) -> builders.Result:  # fmt: skip
    b = request.getfixturevalue("loaded")(kind.builder)
    args = {"XSHIM_TRACE": "1"}
    if kind.builder == "docker":
        return b.build(ctx, dockerfile, tag, build_args=args, network=network)  # type: ignore[no-any-return]
    return b.build(ctx, dockerfile, tag, platform=PLATFORM, build_args=args,  # type: ignore[no-any-return]
                   network=network)


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
) -> Any:  # fmt: skip
    """``example_builds(kind)``: the example built that way (once per module)."""
    done: dict[str, Built] = {}
    text = (builders.EXAMPLE_DIR / "Dockerfile").read_text()

    def get(kind: Kind) -> Built:
        if kind.id not in done:
            ctx = make_context(tmp_path_factory.mktemp(f"ctx-{kind.id}"), text, bundle,
                               {"hello.deb": hello_deb})  # fmt: skip
            patched = patch(ctx, kind.mode)
            tag = f"xshim-test/example:{kind.id}"
            r = build(request, kind, ctx, patched, tag)
            done[kind.id] = Built(kind, tag, r, _builder(request, kind.builder), text)
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
        tree, out, tag=NATIVE_TAG, platform="linux/amd64", config={"Cmd": ["sh"]}
    )


@pytest.mark.parametrize("name", ["docker", "buildah"])
def test_build_step_allows_ptrace_and_seccomp(
    request: pytest.FixtureRequest, name: str, native_archive: Path, tmp_path: Path
) -> None:
    """What the shim needs inside a RUN step, under the builder's default seccomp profile."""
    b = _builder(request, name)
    if name == "docker":
        b.load(native_archive)
    else:
        b.load(native_archive, NATIVE_TAG)
    (tmp_path / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp_path / "probe"),
                    str(tmp_path / "probe.c")], check=True)  # fmt: skip
    (tmp_path / "Dockerfile").write_text(
        f"FROM {NATIVE_TAG}\nCOPY probe /probe\nRUN /probe /bin/busybox true\n"
    )
    r = b.build(tmp_path, tmp_path / "Dockerfile", f"xshim-test/probe:{name}").check()
    assert "ptrace+seccomp: 1 execve stop(s), child exit 0" in r.output


@pytest.mark.parametrize("name", ["docker", "buildah"])
def test_unpatched_foreign_build_fails_here(
    request: pytest.FixtureRequest, name: str, loaded: Any, tmp_path: Path
) -> None:
    """Without xshim the kernel refuses the arm64 shell: nothing else runs foreign code here."""
    b = loaded(name)
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_TAG}\nRUN true\n")
    r = b.build(tmp_path, tmp_path / "Dockerfile", "xshim-test/unpatched")
    assert r.returncode != 0
    assert "exec format error" in r.output.lower(), r.output[-2000:]


# --- the example, patched and built three ways ----------------------------------------------------


@pytest.fixture(params=KINDS, ids=lambda k: k.id)
def built(request: pytest.FixtureRequest, example_builds: Any) -> Built:
    return example_builds(request.param)  # type: ignore[no-any-return]


def test_example_builds_as_arm64(built: Built) -> None:
    cfg = built.builder.config(built.tag)
    assert (cfg["Os"], cfg["Architecture"]) == ("linux", "arm64")
    # XSHIM_TRACE=1 put the trace in the build log: the innermost program of the nested shells
    # ran through the arm64 emulator.
    assert re.search(r"xshim\[\d+\] \S*/uname -m .*→ qemu-aarch64", built.result.output), (
        built.result.output[-3000:]
    )


def _chain(root: Path, path: str) -> list[tuple[str, str]]:
    """``path`` and every symlink hop from it, as (path, what it is) pairs: the link text for a
    link, the mode and sha256 of the contents for the file at the end."""
    out: list[tuple[str, str]] = []
    for _ in range(16):
        parent = builders.inside(root, os.path.dirname(path))
        node = parent / os.path.basename(path)
        if node.is_symlink():
            target = os.readlink(node)
            out.append((path, f"-> {target}"))
            path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
            path = os.path.normpath(path)
            continue
        st = node.lstat()
        digest = hashlib.sha256(node.read_bytes()).hexdigest()
        out.append((path, f"{oct(st.st_mode)} {st.st_uid}:{st.st_gid} {digest}"))
        return out
    raise AssertionError(f"symlink loop at {path}")


def _top_level(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


# Top-level names the example's own steps create, and those each builder's export adds.
EXAMPLE_CREATES = {"greeting.txt", "data"}
EXPORT_ADDS = {".dockerenv"}


def test_example_image_is_clean(built: Built, base_tree: Path) -> None:
    with built.builder.rootfs(built.tag) as root:
        assert _chain(root, "/bin/sh") == _chain(base_tree, "/bin/sh")
        assert not os.path.lexists(root / ".xshim"), "the bundle was left in the image"
        extra = _top_level(root) - _top_level(base_tree) - EXAMPLE_CREATES - EXPORT_ADDS
        assert not extra, f"unexpected top-level entries: {sorted(extra)}"


def test_example_image_config(built: Built) -> None:
    got = builders.pick_config(built.builder.config(built.tag)["Config"])
    if built.kind.builder == "buildah":
        # buildah stamps its version on every image it commits, patched or not.
        labels = dict(got["Labels"] or {})
        assert labels.pop("io.buildah.version", None)
        got["Labels"] = labels or None
    assert got == expected_config(built.dockerfile, builders.base_config())


def test_example_image_has_the_arm64_package(built: Built, hello_deb: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    files = debian.extract_deb(hello_deb, tmp_path / "deb")
    regular = [f for f in files if f.is_file() and not f.is_symlink()]
    assert regular
    with built.builder.rootfs(built.tag) as root:
        status = (root / "var/lib/dpkg/status").read_text()
        stanza = re.search(r"^Package: hello\n(?:.+\n)*", status, re.M)
        assert stanza and "Status: install ok installed" in stanza.group(0)
        assert "Architecture: arm64" in stanza.group(0)
        elves = []
        for f in regular:
            rel = f.relative_to(tmp_path / "deb")
            mine = builders.inside(root, str(rel))
            assert mine.is_file(), f"/{rel} is missing from the image"
            assert mine.read_bytes() == f.read_bytes(), f"/{rel} differs from the package's"
            a = builders.elf_arch(mine)
            if a is not None:
                assert a.name == "aarch64", f"/{rel} is {a.name}"
                elves.append(rel)
        assert Path("usr/bin/hello") in elves
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
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.id)
def test_failing_run_fails_the_build_with_its_status(
    request: pytest.FixtureRequest, kind: Kind, form: str, bundle: Path, tmp_path: Path
) -> None:
    code = 42 if form == "shell" else 43
    text = f"FROM --platform={PLATFORM} {BASE_TAG}\nRUN true\n{FAILING[form]}RUN touch /after\n"
    ctx = make_context(tmp_path / "ctx", text, bundle)
    r = build(request, kind, ctx, patch(ctx, kind.mode), f"xshim-test/failing:{kind.id}")
    assert r.returncode != 0, r.output[-2000:]
    if kind.builder == "docker":
        assert f"returned a non-zero code: {code}" in r.output, r.output[-2000:]
    else:
        assert f"exit status {code}" in r.output, r.output[-2000:]
    # Docker's legacy builder colours the step's stderr lines, so lines may start with escapes.
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in r.output.splitlines()]
    assert "not reached" not in lines, "the build went on after the failure"
    if form == "shell":
        assert "before" in lines, "the step failed before its own command ran"


# --- apt with the network: its download methods run as _apt ------------------------------------

APT_STEP = (
    "RUN apt-get update && apt-get install -y --no-install-recommends hello "
    "&& hello && su -s /bin/sh _apt -c 'cd /usr && bin/uname -m' "
    "&& cp /bin/true /tmp/busy && (exec 3>>/tmp/busy; /tmp/busy; echo \"busy: $?\")\n"
)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.id)
def test_apt_get_update_and_install_with_the_network(
    request: pytest.FixtureRequest, kind: Kind, bundle: Path, tmp_path: Path
) -> None:
    """The most common line of any Dockerfile. apt's methods drop to user _apt, after which a
    supervisor without CAP_SYS_PTRACE (no builder grants it) cannot read their memory or /proc
    entries by the usual means; their execs must still be emulated. The base image's
    sources.list names the mirror the tree was made from (the machine's). The step ends with an
    exec of a file open for writing, which must fail (ETXTBSY) on the builder's storage."""
    text = f"FROM --platform={PLATFORM} {BASE_TAG}\n{APT_STEP}"
    ctx = make_context(tmp_path / "ctx", text, bundle)
    r = build(request, kind, ctx, patch(ctx, kind.mode), f"xshim-test/apt:{kind.id}",
              network="host")
    r.check()
    assert "Hello, world!" in r.output and "aarch64" in r.output.split("Hello, world!")[1]
    assert "Failed to exec method" not in r.output and "cannot emulate" not in r.output
    # A program open for writing is "Text file busy" in the builder's file system too.
    assert "busy: 126" in r.output, r.output[-3000:]
    # The methods' own execs were emulated (the trace names them) and none fell to the kernel.
    assert re.search(r"xshim\[\d+\] \S*/methods/http .*→ qemu-aarch64", r.output), r.output[-3000:]


# --- the README's main job ---------------------------------------------------------------------


def test_run_example_script(dockerd: builders.Dockerd, base_tree: Path, tmp_path: Path) -> None:
    """examples/run-example.sh, as `make demo` runs it, on the private dockerd: it ends by running
    the built image's own program through the bundle mounted for that run only."""
    work = tmp_path / "work"
    work.mkdir()
    foreign.copy_tree(base_tree, work / "rootfs")  # the script's step 1 would make the same tree
    script = builders.EXAMPLE_DIR.parent / "run-example.sh"
    try:
        r = builders.run(["sh", str(script), str(work)],
                         env=dockerd.env(DOCKER=builders.DOCKER))  # fmt: skip
        r.check()
        lines = [line.strip() for line in r.output.splitlines()]
        assert "built and run through xshim" in lines
        assert "OK: xshim-example/hello:arm64" in lines
        assert "platform: linux/arm64" in lines
    finally:
        dockerd.docker("rmi", "-f", "xshim-example/hello:arm64")
