"""Foreign test material, built once and cached outside the repository.

Cache: ``$XSHIM_TEST_CACHE``, default ``/var/cache/xshim-tests``. Every artefact is built in a
temporary directory beside its final place and renamed into it, so an interrupted run never
leaves a half-made entry; a lock file per artefact keeps parallel pytest processes from building
the same thing twice. Whatever can't be had (no root, no cross compiler, archive unreachable)
makes the calling test skip with the reason.

API:
  cache_root() -> Path
  archive_or_skip(suite="bookworm") -> debian.Archive
  arm64_first_stage() -> Path             pristine tree: copy it with copy_tree() before changing it
  copy_tree(src, dst) -> Path             cp -a
  busybox_static(debian_arch) -> Path     Debian's busybox-static binary for that architecture
  guest_programs(arch="arm64") -> dict[str, Path]
  assert_no_binfmt(arch_names) -> None
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from xshim.builder import debian
from xshim.shim import arch as archmod

SUITE = "bookworm"
GUEST_SRC = Path(__file__).resolve().parent.parent / "guest"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")

# Debian architecture -> GNU cross triplet (Debian's gcc-<triplet> packages).
CROSS = {
    "arm64": "aarch64-linux-gnu",
    "armhf": "arm-linux-gnueabihf",
    "armel": "arm-linux-gnueabi",
    "riscv64": "riscv64-linux-gnu",
    "ppc64el": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
}

# Program name -> (source file, extra compiler flags). Usage is at the top of each source.
GUEST_PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fexecve": ("fexecve.c", ()),
    "execveat_empty": ("fexecve.c", ("-DRAW_EMPTY_PATH",)),
    "execveat_dirfd": ("fexecve.c", ("-DVIA_DIRFD",)),
    "threads_exec": ("threads.c", ()),
    "threads_join": ("threads.c", ("-DJOIN_ONLY",)),
    "segv": ("segv.c", ()),
    "exitcode": ("exitcode.c", ()),
    "printenv": ("printenv.c", ()),
    "pauth": ("pauth.c", ()),
}


def cache_root() -> Path:
    path = Path(os.environ.get("XSHIM_TEST_CACHE") or "/var/cache/xshim-tests")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pytest.skip(f"can't create the test cache {path}: set XSHIM_TEST_CACHE to a writable dir")
    return path




def _download_cache() -> Path:
    return Path(os.environ["XSHIM_CACHE"]) if os.environ.get("XSHIM_CACHE") else (
        cache_root() / "downloads")


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock`` (created if missing): one builder at a time."""
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _locked(name: str) -> contextlib.AbstractContextManager[None]:
    return locked(cache_root() / f".{name}.lock")


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """``cache_root()/name``, made by ``build(tmpdir)`` and renamed into place on success."""
    final = cache_root() / name
    if final.exists():
        return final
    with _locked(name):
        if final.exists():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=final.parent))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


@functools.cache
def _archive(suite: str) -> debian.Archive | str:
    try:
        a = debian.Archive.discover(suite=suite, cache=_download_cache())
        a.release()
    except debian.ArchiveUnreachableError as e:
        return f"Debian archive unreachable: {e.message}"
    return a


def archive_or_skip(suite: str = SUITE) -> debian.Archive:
    """The Debian archive from this machine's apt config, verified; skip when unreachable."""
    a = _archive(suite)
    if isinstance(a, str):
        pytest.skip(a)
    return a


def arm64_first_stage() -> Path:
    """The pristine arm64 bookworm minbase tree from ``debootstrap --foreign`` (root needed).

    Shared by every test: never change it; ``copy_tree`` it first.
    """
    name = f"arm64-{SUITE}-minbase-first-stage"
    final = cache_root() / name
    if final.exists():
        return final
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    archive_or_skip(SUITE)
    from xshim.builder.rootfs import RootfsRequest, make_rootfs

    if not final.exists():
        with _locked(name):
            if not final.exists():
                # make_rootfs builds beside `final` and renames at the end, like _cached.
                make_rootfs(RootfsRequest(final, suite=SUITE, variant="minbase"))
    return final


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a rootfs preserving owners, modes, links, device nodes and timestamps (cp -a)."""
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)
    return dst


def busybox_static(debian_arch: str) -> Path:
    """The static busybox from Debian's busybox-static for ``debian_arch`` (armhf, s390x, ...)."""
    want = archmod.from_platform(debian_arch)

    def build(tmp: Path) -> None:
        archive = archive_or_skip(SUITE)
        _info, deb = archive.fetch_package("busybox-static", debian_arch)
        (path,) = debian.extract_deb(deb, tmp, ["bin/busybox"])
        path.rename(tmp / "busybox")
        shutil.rmtree(tmp / "bin")
        got = archmod.arch_of(archmod.parse_ident((tmp / "busybox").read_bytes()[:64]))
        if got != want:
            raise AssertionError(f"busybox-static for {debian_arch} is {got}, not {want.name}")

    return _cached(f"busybox-static-{debian_arch}", build) / "busybox"


def _compiler(arch: str) -> str:
    triplet = CROSS.get(arch)
    if triplet is None:
        pytest.skip(f"no cross compiler known for {arch}")
    cc = shutil.which(f"{triplet}-gcc")
    if cc is None:
        pytest.skip(f"{triplet}-gcc not installed (apt-get install gcc-{triplet} "
                    f"libc6-dev-{arch}-cross)")
    return cc


def guest_programs(arch: str = "arm64") -> dict[str, Path]:
    """Static test programs for ``arch`` (Debian name), built from tests/guest/*.c.

    Names: fexecve, execveat_empty, execveat_dirfd, threads_exec, threads_join, segv,
    exitcode, printenv, pauth.
    """
    cc = _compiler(arch)
    version = subprocess.run([cc, "--version"], capture_output=True, check=True).stdout
    h = hashlib.sha256(version)
    for name, (src, flags) in sorted(GUEST_PROGRAMS.items()):
        h.update(f"{name} {src} {' '.join(flags)}\n".encode())
        h.update((GUEST_SRC / src).read_bytes())

    def build(tmp: Path) -> None:
        for name, (src, flags) in GUEST_PROGRAMS.items():
            argv = [cc, "-static", "-O2", "-Wall", "-Werror", "-pthread", *flags,
                    "-o", str(tmp / name), str(GUEST_SRC / src)]
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                raise AssertionError(f"building {name} failed:\n{proc.stderr}")

    out = _cached(f"guest-{arch}-{h.hexdigest()[:16]}", build)
    return {name: out / name for name in GUEST_PROGRAMS}


# --- binfmt_misc --------------------------------------------------------------------------------


def parse_binfmt_entry(text: str) -> dict[str, str]:
    """A binfmt_misc handler file: ``enabled``, ``interpreter X``, ``magic HEX`` ... as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key in ("enabled", "disabled"):
            out["state"] = key
        elif key:
            out[key] = value.strip()
    return out


def _elf_magic_for(a: archmod.Arch) -> bytes:
    bo = "little" if a.endian is archmod.Endian.LITTLE else "big"
    ident = archmod.ELFMAG + bytes([a.elf_class, a.endian.value, 1])
    return ident + bytes(9) + (2).to_bytes(2, bo) + a.machine.to_bytes(2, bo)


def _matches(entry: dict[str, str], a: archmod.Arch) -> bool:
    try:
        magic = bytes.fromhex(entry.get("magic", ""))
        mask = bytes.fromhex(entry["mask"]) if "mask" in entry else b"\xff" * len(magic)
    except ValueError:
        return False
    want = _elf_magic_for(a)
    offset = int(entry.get("offset", "0") or 0)
    if not magic or offset + len(magic) > len(want):
        return False
    return all((want[offset + i] & mask[i]) == (magic[i] & mask[i]) for i in range(len(magic)))


def binfmt_problems(arch_names: Iterable[str], binfmt_dir: Path = BINFMT_DIR) -> list[str]:
    """Why ``binfmt_dir`` could make the kernel run foreign code: one line per handler."""
    if not (binfmt_dir / "status").exists():
        return []  # not mounted: no handler can exist
    arches = [archmod.from_platform(n) for n in arch_names]
    problems = []
    for entry in sorted(binfmt_dir.iterdir()):
        if entry.name in ("register", "status"):
            continue
        try:
            info = parse_binfmt_entry(entry.read_text())
        except OSError:
            info = {}
        why = [a.name for a in arches if _matches(info, a) or a.qemu in entry.name]
        if "qemu" in entry.name or "qemu" in info.get("interpreter", ""):
            why.append("qemu")
        problems.append(
            f"binfmt_misc handler {entry.name!r} ({info.get('state', '?')}, interpreter "
            f"{info.get('interpreter', '?')})" + (f" serves {', '.join(why)}" if why else "")
        )
    return problems


def assert_no_binfmt(arch_names: Iterable[str], binfmt_dir: Path = BINFMT_DIR) -> None:
    """Fail loudly when a binfmt_misc handler is registered: the test would prove nothing.

    Reads only; it never mounts binfmt_misc. Any registered handler counts (the project rule),
    those for ``arch_names`` or qemu are named as such.
    """
    problems = binfmt_problems(arch_names, binfmt_dir)
    if problems:
        raise AssertionError(
            "binfmt_misc has handlers registered on this host, so the kernel could run foreign "
            "code itself and this test would prove nothing:\n  " + "\n  ".join(problems)
        )
