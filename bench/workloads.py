"""Workloads that look like builds: an apt install, a C build, a byte-compile.

Each one runs a fixed guest command in a fresh copy of a cached tree (so every round of every
contender starts from the same files) and checks what it left behind. The trees are made once,
through ``xshim run``, and cached beside the first-stage tree:

- ``<suite>-arm64-minbase-finished``: the first-stage tree after ``debootstrap --second-stage``;
- ``<suite>-arm64-apt-cache``: that, with apt's lists and every .deb of the apt workload in
  /var/cache/apt/archives (``apt-get install --download-only``, the one step that needs the
  network), each .deb then checked against the signed archive's index on the host;
- ``<suite>-arm64-devtools``: that, with the packages installed and zlib's source (Debian's
  source package, checked the same way) unpacked in /root/zlib.

The timed apt run uses ``--no-download``: it installs from the local cache or fails, never
touching the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import contenders as cmod
import debsrc
import measure
import trees
from contenders import Tools
from measure import RunFailed

APT_PACKAGES = ("python3", "gcc", "libc6-dev", "make")
APT_OPTIONS = ("-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0")
ZLIB_DIR = "/root/zlib"
COMPILEALL_DIR = "/usr/lib/python3.11"
PREPARE_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Workload:
    name: str
    title: str  # one line for the report
    tree: str  # which cached tree it starts from: "apt-cache" or "devtools"
    argv: tuple[str, ...]
    check: Callable[[Path], str]  # the finished tree -> a short result, or RunFailed
    env: tuple[tuple[str, str], ...] = ()

    def environment(self) -> dict[str, str]:
        return {**measure.GUEST_ENV, **dict(self.env)}


def _check_apt(tree: Path) -> str:
    status = measure.package_status(tree)
    missing = [p for p in APT_PACKAGES if status.get(p) != "install ok installed"]
    if missing:
        raise RunFailed(f"not installed after the run: {', '.join(missing)}")
    return f"{sum(1 for s in status.values() if s == 'install ok installed')} pkgs"


def _check_zlib(tree: Path) -> str:
    built = tree / ZLIB_DIR.lstrip("/")
    libs = sorted(p.name for p in built.glob("libz.so.*") if not p.is_symlink())
    if not (built / "libz.a").is_file() or not libs:
        raise RunFailed(f"no libz.a or libz.so.* in {ZLIB_DIR} after the build")
    with open(built / libs[0], "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != 183:  # EM_AARCH64
        raise RunFailed(f"{libs[0]} is not an aarch64 ELF file")
    return libs[0]


def _check_compileall(tree: Path) -> str:
    root = tree / COMPILEALL_DIR.lstrip("/")
    n = sum(1 for _ in root.rglob("__pycache__/*.cpython-311.pyc"))
    if n == 0:
        raise RunFailed(f"no .pyc files under {COMPILEALL_DIR}")
    return f"{n} .pyc"


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "apt", f"apt-get install {' '.join(APT_PACKAGES)} (--no-install-recommends, "
            "from the local package cache, --no-download)", "apt-cache",
            ("/usr/bin/apt-get", "install", *APT_OPTIONS, "--no-download", *APT_PACKAGES),
            _check_apt,
            (("DEBIAN_FRONTEND", "noninteractive"),),
        ),
        Workload(
            "zlib", "zlib (Debian's source package): ./configure && make -j2", "devtools",
            ("/bin/sh", "-c", f"cd {ZLIB_DIR} && ./configure && make -j2"), _check_zlib,
        ),
        Workload(
            "compileall", f"python3 -m compileall -f -q {COMPILEALL_DIR}", "devtools",
            ("/usr/bin/python3", "-m", "compileall", "-f", "-q", COMPILEALL_DIR), _check_compileall,
        ),
    )
}

# Every workload the run knows, in the order they run: the two that have always been there first.
ALL = ("loop", "stage", *WORKLOADS)


def parse_list(text: str) -> list[str]:
    """``--workloads a,b``: the names in the order of ALL; ValueError naming unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL]
    if bad or not names:
        raise ValueError(f"unknown workload(s) {', '.join(bad) or '(none)'}; choose from "
                         f"{','.join(ALL)}")
    return [n for n in ALL if n in names]


# -- the cached trees ----------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _xshim(tree: Path, argv: list[str], tools: Tools, logfile: Path,
           env: dict[str, str] | None = None) -> None:
    cmd = [*tools.xshim, "run", "--rootfs", str(tree), "--", *argv]
    measure.timed(cmd, PREPARE_TIMEOUT, logfile, env or measure.GUEST_ENV)


def _derive(name: str, base: Path, make: Callable[[Path, Path], None]) -> Path:
    """The cached tree ``name``, made from a copy of ``base`` by ``make(tree, logfile)`` and
    renamed into place only when complete."""
    final = trees.cache_root() / name
    if final.is_dir():
        return final
    tmp = trees.cache_root() / f".{name}.part"
    trees.fresh_copy(base, tmp)
    logfile = trees.cache_root() / f"{name}.log"
    _log(f"making {final} (log: {logfile})")
    try:
        make(tmp, logfile)
    except RunFailed as e:
        raise trees.TreeError(f"making {final} failed: {e} (see {logfile})") from None
    os.replace(tmp, final)
    return final


def finished_tree(first: Path, suite: str, tools: Tools) -> Path:
    def make(tree: Path, logfile: Path) -> None:
        _xshim(tree, ["/debootstrap/debootstrap", "--second-stage"], tools, logfile,
               measure.STAGE_ENV)
        measure.check_second_stage(tree)

    return _derive(f"{suite}-arm64-minbase-finished", first, make)


def apt_cache_tree(finished: Path, suite: str, mirror: str | None, tools: Tools) -> Path:
    def make(tree: Path, logfile: Path) -> None:
        env = {**measure.GUEST_ENV, "DEBIAN_FRONTEND": "noninteractive"}
        argv = ["/usr/bin/apt-get", "install", *APT_OPTIONS, "--download-only", *APT_PACKAGES]
        _xshim(tree, argv, tools, logfile, env)
        n = verify_debs(tree / "var/cache/apt/archives", suite, mirror)
        _log(f"{n} .debs in the package cache match the signed archive's index")

    return _derive(f"{suite}-arm64-apt-cache", finished, make)


def devtools_tree(apt_cache: Path, suite: str, mirror: str | None, tools: Tools) -> Path:
    def make(tree: Path, logfile: Path) -> None:
        w = WORKLOADS["apt"]
        _xshim(tree, list(w.argv), tools, logfile, w.environment())
        w.check(tree)
        unpack_zlib(tree / ZLIB_DIR.lstrip("/"), suite, mirror)

    return _derive(f"{suite}-arm64-devtools", apt_cache, make)


def base_trees(first: Path, suite: str, mirror: str | None, tools: Tools,
               names: list[str]) -> dict[str, Path]:
    """The cached trees the chosen workloads start from, made where missing."""
    wanted = {WORKLOADS[n].tree for n in names if n in WORKLOADS}
    if not wanted:
        return {}
    out = {}
    finished = finished_tree(first, suite, tools)
    out["apt-cache"] = apt_cache_tree(finished, suite, mirror, tools)
    if "devtools" in wanted:
        out["devtools"] = devtools_tree(out["apt-cache"], suite, mirror, tools)
    return out


def deb_name(filename: str) -> tuple[str, str, str]:
    """``name_version_arch.deb`` as apt stores it (the epoch's colon as %3a) -> its parts."""
    stem = filename.removesuffix(".deb")
    parts = stem.split("_")
    if len(parts) != 3 or not filename.endswith(".deb"):
        raise ValueError(f"{filename}: not a name_version_arch.deb file name")
    return parts[0], parts[1].replace("%3a", ":"), parts[2]


def verify_debs(archives: Path, suite: str, mirror: str | None) -> int:
    """Check every .deb apt downloaded against the arm64 Packages index of the signed archive;
    RunFailed naming the first that differs."""
    from xshim.builder import debian
    from xshim.builder.fsutil import sha256_file

    archive = debian.Archive.discover(mirror, suite)
    debs = sorted(archives.glob("*.deb"))
    if not debs:
        raise RunFailed(f"no .deb in {archives}")
    for path in debs:
        name, version, _arch = deb_name(path.name)
        info = archive.find(name, "arm64")
        if info.version != version:
            raise RunFailed(f"{path.name}: the archive has {name} {info.version}, not {version}; "
                            "remove the cached trees and run again")
        if sha256_file(path) != info.sha256:
            raise RunFailed(f"{path.name}: sha256 differs from the signed archive's index")
    return len(debs)


def unpack_zlib(dest: Path, suite: str, mirror: str | None) -> None:
    """zlib's upstream source from Debian's source package (the .orig tarball), verified."""
    from xshim.builder import debian

    archive = debian.Archive.discover(mirror, suite)
    src = debsrc.find_source(archive, "zlib")
    tarball = next((f for f in src.files if ".orig.tar." in f.name), None)
    if tarball is None:
        raise RunFailed(f"zlib {src.version} has no .orig tarball in the Sources index")
    orig = debsrc.fetch_source_file(archive, src, tarball)
    dest.mkdir(parents=True)
    proc = subprocess.run(["tar", "-xf", str(orig), "-C", str(dest), "--strip-components=1",
                           "--no-same-owner"], capture_output=True, text=True)
    if proc.returncode != 0 or not (dest / "configure").is_file():
        raise RunFailed(f"unpacking {orig.name} failed: {proc.stderr.strip() or 'no configure'}")
    _log(f"zlib {src.version} from {tarball.name} (sha256 checked against the signed Sources "
         "index)")


# -- one timed run ---------------------------------------------------------------------------------


def run_once(w: Workload, c: cmod.Contender, base: Path, work: Path, tools: Tools,
             timeout: float, keep: bool) -> tuple[measure.Timed, str]:
    """One run of ``w`` by ``c`` on a fresh copy of ``base``: its times and checked result."""
    tree = trees.fresh_copy(base, work / f"{c.name}-{w.name}")
    logfile = work / f"{c.name}-{w.name}.log"
    try:
        t = measure.timed(cmod.guest_command(c, tree, list(w.argv), tools, mounts=True),
                          timeout, logfile, w.environment())
        return t, w.check(tree)
    finally:
        if not keep:
            trees.remove_tree(tree)
