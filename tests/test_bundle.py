"""`xshim bundle`: the frozen supervisor with its own loader, libraries and emulators.

The integration tests place a real bundle in an arm64 Debian tree (which holds no x86_64 file
at all) and run it with chroot: the bundle must bring everything the host side needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import foreign
from xshim.builder import bundle, elf, freeze
from xshim.builder.errors import InputError
from xshim.builder.values import parse_arches
from xshim.shim import arch as archmod
from xshim.shim.version import __version__

XSHIM = shutil.which("xshim") or "xshim"
DEV_TREE = Path("/var/tmp/xshim-dev/arm64")
GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "XSHIM_TEST_MARK": "kept"}


def run_xshim(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSHIM, *args], capture_output=True, text=True, timeout=timeout)


def make_bundle(out: Path, platforms: str, *extra: str) -> dict[str, object]:
    r = run_xshim("bundle", "--platform", platforms, "-o", str(out), *extra)
    assert r.returncode == 0, r.stderr
    manifest: dict[str, object] = json.loads((out / "manifest.json").read_text())
    return manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A bundle for linux/arm64 and linux/arm/v7 at the default prefix."""
    out = tmp_path_factory.mktemp("bundle") / ".xshim"
    make_bundle(out, "linux/arm64,linux/arm/v7")
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


# --- pure parts ----------------------------------------------------------------------------


def test_platforms_are_parsed_in_order_without_duplicates() -> None:
    got = parse_arches(["linux/arm64,linux/arm/v7", "arm64", " linux/s390x "])
    assert [a.name for a in got] == ["aarch64", "armhf", "s390x"]


@pytest.mark.parametrize("bad", [["linux/vax"], [""], [","]])
def test_bad_platforms_are_input_errors(bad: list[str]) -> None:
    with pytest.raises(InputError):
        parse_arches(bad)


@pytest.mark.parametrize("bad", ["relative", "/", "/a/../b", "/a:b", "/a\nb"])
def test_bad_prefixes_are_input_errors(bad: str) -> None:
    with pytest.raises(InputError):
        bundle.check_prefix(bad)


def test_prefix_is_normalised() -> None:
    assert bundle.check_prefix("/opt//xshim/") == "/opt/xshim"


def test_the_shim_imports_without_the_excluded_modules(tmp_path: Path) -> None:
    """The freeze leaves EXCLUDES out: every shim module must import with them unavailable.

    Runs in a bare interpreter (-I -S) on a staged copy of the shim, as the freeze sees it, with
    an import hook refusing the excluded names the way a frozen program would.
    """
    stage = tmp_path / "stage"
    shutil.copytree(freeze.shim_source_dir(), stage / "xshim" / "shim",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (stage / "xshim" / "__init__.py").write_text("")
    code = (
        "import sys, importlib, pkgutil\n"
        f"EXCLUDED = {sorted(freeze.EXCLUDES)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == e or name.startswith(e + '.') for e in EXCLUDED):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(stage)!r})\n"
        "import xshim.shim as s\n"
        "for m in pkgutil.iter_modules(s.__path__):\n"
        "    importlib.import_module('xshim.shim.' + m.name)\n"
        "import shutil, resource\n"
        "print(len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cache_key_follows_the_shim_sources(tmp_path: Path) -> None:
    src = tmp_path / "shim"
    shutil.copytree(freeze.shim_source_dir(), src,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = freeze.cache_key(src)
    assert freeze.cache_key(src) == before
    with open(src / "entry.py", "a") as f:
        f.write("\n# changed\n")
    assert freeze.cache_key(src) != before


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.txt").write_text("keep me")
    r = run_xshim("bundle", "--platform", "linux/arm64", "-o", str(out))
    assert r.returncode == 2
    assert "not an xshim bundle" in r.stderr
    assert [p.name for p in out.iterdir()] == ["data.txt"]


def test_bad_platform_writes_nothing(tmp_path: Path) -> None:
    r = run_xshim("bundle", "--platform", "linux/vax", "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and "unknown platform" in r.stderr
    assert list(tmp_path.iterdir()) == []


# --- the built bundle ----------------------------------------------------------------------


def test_layout_and_manifest(built: Path) -> None:
    m = json.loads((built / "manifest.json").read_text())
    assert m["xshim_version"] == __version__
    assert m["host_arch"] == archmod.host_arch().name
    assert m["prefix"] == "/.xshim"
    assert m["platforms"] == ["linux/arm64", "linux/arm/v7"]
    files = {f["path"]: f for f in m["files"]}
    assert files["bin/sh"]["role"] == "shim"
    for link in ("xshim-exec", "xshim-install", "xshim-restore"):
        assert files[f"bin/{link}"] == {"path": f"bin/{link}", "role": "link", "target": "sh"}
        assert os.readlink(built / "bin" / link) == "sh"
    assert files["qemu/qemu-aarch64-static"]["role"] == "emulator"
    assert files["qemu/qemu-arm-static"]["role"] == "emulator"
    loader = m["loader"]
    assert files[loader]["role"] == "loader"
    assert {f["role"] for f in m["files"]} >= {"shim", "link", "payload", "loader", "library",
                                                "emulator", "manifest"}
    for rel, f in files.items():
        if f["role"] in ("link", "manifest"):
            continue
        assert (built / rel).stat().st_size == f["size"]
        assert bundle.sha256_file(built / rel) == f["sha256"]
    on_disk = {p.relative_to(built).as_posix() for p in built.rglob("*")
               if p.is_file() or p.is_symlink()}
    assert on_disk == set(files)


def test_every_elf_points_into_the_prefix(built: Path) -> None:
    m = json.loads((built / "manifest.json").read_text())
    loader = f"/.xshim/{m['loader']}"
    elves = [p for p in built.rglob("*") if elf.is_elf_file(p)]
    assert len(elves) > 5
    for p in elves:
        info = elf.read_elf_file(p)
        assert info.arch == archmod.host_arch(), p
        if info.interp is not None:
            assert info.interp == loader, p
        for d in info.search_path:
            assert d.startswith("/.xshim/"), (p, d)
    shim = elf.read_elf_file(built / "bin" / "sh")
    assert shim.rpath == ("/.xshim/lib", "/.xshim/bin/_internal") and shim.runpath is None


def test_one_platform_fits_in_40_mb(tmp_path: Path) -> None:
    m = make_bundle(tmp_path / "one", "linux/arm64")
    total = sum(int(f.get("size", 0)) for f in m["files"])  # type: ignore[union-attr]
    assert total <= 40 * 1024 * 1024, f"{total / 1e6:.1f} MB"


def test_modes_are_fixed_whatever_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = subprocess.run([XSHIM, "bundle", "--platform", "linux/arm64", "-o", str(out)],
                       capture_output=True, text=True, timeout=900,
                       preexec_fn=lambda: os.umask(0))
    assert r.returncode == 0, r.stderr
    modes = {p.relative_to(out).as_posix(): p.lstat().st_mode & 0o7777
             for p in [out, *out.rglob("*")] if not p.is_symlink()}
    assert set(modes.values()) <= {0o755, 0o644}, {k: oct(v) for k, v in modes.items()}
    assert modes["manifest.json"] == 0o644 and modes["bin/sh"] == 0o755
    v = run_xshim("verify", str(out))
    assert v.returncode == 0, v.stdout


def test_second_build_is_cached_and_replaces_the_old_bundle(tmp_path: Path, built: Path) -> None:
    out = tmp_path / "b"
    make_bundle(out, "linux/arm64")
    marker = out / "bin" / "_internal" / "stale"
    marker.write_text("from the old bundle")
    start = time.monotonic()
    r = run_xshim("-v", "bundle", "--platform", "linux/arm/v7", "-o", str(out))
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert "frozen shim from the cache" in r.stderr
    assert took < 30, f"a cached build took {took:.1f}s"
    assert not marker.exists()
    assert json.loads((out / "manifest.json").read_text())["platforms"] == ["linux/arm/v7"]
    assert not (out / "qemu" / "qemu-aarch64-static").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary dirs left"


# --- inside a foreign tree -----------------------------------------------------------------


def _first_stage() -> Path:
    if (DEV_TREE / "debootstrap").is_dir() and (DEV_TREE / "usr").is_dir():
        return DEV_TREE
    return foreign.arm64_first_stage()


def host_elves(tree: Path) -> list[str]:
    """Every regular file in ``tree`` whose ELF header says it is a host-architecture ELF."""
    host = archmod.host_arch()
    found = []
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            try:
                with open(p, "rb") as f:
                    header = f.read(64)
                ident = archmod.parse_ident(header)
            except (OSError, archmod.NotElfError):
                continue
            if archmod.arch_of(ident) == host:
                found.append(str(p.relative_to(tree)))
    return found


def chroot_sh(tree: Path, shell: str, script: str, timeout: float = 300
              ) -> subprocess.CompletedProcess[str]:
    """``chroot TREE SHELL -c SCRIPT`` with /proc mounted in a private mount namespace."""
    proc = tree / "proc"
    if proc.is_symlink():  # debootstrap's first stage leaves proc -> /proc
        proc.unlink()
    proc.mkdir(exist_ok=True)
    outer = 'mount -t proc proc "$1/proc" && exec chroot "$1" "$2" -c "$3"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", outer, "outer",
         str(tree), shell, script],
        capture_output=True, text=True, timeout=timeout, env=GUEST_ENV,
    )


@pytest.fixture(scope="module")
def foreign_tree(tmp_path_factory: pytest.TempPathFactory, built: Path) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("tree")
    tree = foreign.copy_tree(_first_stage(), work / "rootfs")
    (tree / "opt").mkdir(exist_ok=True)
    shutil.copy2(foreign.busybox_static("armhf"), tree / "opt" / "busybox-armhf")
    assert host_elves(tree) == [], "the foreign tree already holds host-architecture files"
    foreign.copy_tree(built, tree / ".xshim")
    yield tree
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.root
@pytest.mark.integration
def test_runs_in_a_foreign_tree_with_nothing_from_it_but_the_kernel(foreign_tree: Path) -> None:
    script = "uname -m; /opt/busybox-armhf uname -m; sh -c 'dpkg --version' | head -1; env"
    r = chroot_sh(foreign_tree, "/.xshim/bin/sh", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "aarch64"
    assert lines[1] == "armv7l"  # the armhf binary went through the second emulator
    assert "dpkg" in lines[2] and "arm64" in lines[2]
    env = dict(line.split("=", 1) for line in lines[3:] if "=" in line)
    assert env.get("XSHIM_TEST_MARK") == "kept"
    leaked = [k for k in env if k.startswith(("LD_", "PYTHON", "_PYI", "_MEI"))]
    assert leaked == [], f"variables leaked into the guest: {leaked}"


@pytest.mark.root
@pytest.mark.integration
def test_exit_status_comes_from_the_guest(foreign_tree: Path) -> None:
    r = chroot_sh(foreign_tree, "/.xshim/bin/sh", "exit 7")
    assert r.returncode == 7, r.stderr


@pytest.mark.root
@pytest.mark.integration
def test_apt_and_dpkg_in_a_finished_tree(tmp_path: Path, built: Path) -> None:
    from support import builders

    tree = foreign.copy_tree(builders.finished_tree(), tmp_path / "rootfs")
    foreign.copy_tree(built, tree / ".xshim")
    r = chroot_sh(tree, "/.xshim/bin/sh",
                  'uname -m; apt-get --version | head -1; sh -c "dpkg -l | wc -l"')
    assert r.returncode == 0, r.stderr
    arch, apt, count = r.stdout.split("\n")[:3]
    assert arch == "aarch64"
    assert apt.startswith("apt ") and "arm64" in apt
    assert int(count) > 50


@pytest.mark.root
@pytest.mark.integration
def test_wrong_prefix_fails_clearly(foreign_tree: Path) -> None:
    """At another place its loader is missing: no crash, and verify --root says why."""
    moved = foreign_tree / "opt" / "elsewhere"
    foreign.copy_tree(foreign_tree / ".xshim", moved)
    try:
        shutil.rmtree(foreign_tree / ".xshim")
        r = chroot_sh(foreign_tree, "/opt/elsewhere/bin/sh", "true")
        assert r.returncode == 127, (r.returncode, r.stderr)  # exec failed; nothing crashed
        assert "No such file or directory" in r.stderr
        v = run_xshim("verify", "--root", str(foreign_tree), str(moved))
        assert v.returncode == 1
        assert "built for prefix /.xshim" in v.stdout
        assert "--prefix /opt/elsewhere" in v.stdout
    finally:
        if not (foreign_tree / ".xshim").exists():
            foreign.copy_tree(moved, foreign_tree / ".xshim")
        shutil.rmtree(moved, ignore_errors=True)


@pytest.mark.root
@pytest.mark.integration
def test_a_bundle_built_for_another_prefix_runs_there(foreign_tree: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", "linux/arm64", "--prefix", "/opt/xs")
    foreign.copy_tree(tmp_path / "b", foreign_tree / "opt" / "xs")
    try:
        r = chroot_sh(foreign_tree, "/opt/xs/bin/sh", "uname -m")
        assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr
        v = run_xshim("verify", "--root", str(foreign_tree), str(foreign_tree / "opt" / "xs"))
        assert v.returncode == 0, v.stdout
    finally:
        shutil.rmtree(foreign_tree / "opt" / "xs", ignore_errors=True)
