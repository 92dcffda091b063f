"""Native twins, prepared ahead of time: for each allowlisted guest program of a tree, the host
build of the **same Debian package version**, fetched through the signed archive, made
self-contained and described in a twin map (shim/twins.py reads it at exec time).

Only programs whose output does not depend on the CPU they run on are candidates (``SAME``,
``FILE_TOOLS``, ``CROSS``); never apt, dpkg's database work, maintainer scripts, uname, interpreters
or anything configure probes. A candidate becomes a twin only when:

- the guest file belongs to an installed package of the tree's dpkg database;
- the host architecture's package of exactly that version is in the archive (for the compiler
  proper, Debian's cross compiler built from exactly that gcc version, as its Built-Using says);
- every library the twin needs comes from the twin's own package or from the host build of the
  exact version of the guest package that provides the same library, and the loader from the
  host build of the guest's libc6 version.

Nothing comes from the host system or the image: the twin directory holds the programs under
``exe/`` and the loader and libraries under ``lib/``, every program's PT_INTERP and DT_RPATH
pointing at ``lib/`` where the tracees see the directory (``inside``). Prepared directories are
cached by what went into them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..shim import twins as shimtwins
from ..shim.arch import Arch
from ..shim.ptrace import open_in_root
from . import debian, elf
from .dpkgdb import TRIPLETS, Database, Installed
from .fsutil import sha256_file, write_atomic

log = logging.getLogger("xshim")

RECIPE = "6"  # bump when the way twins are made changes
TWIN_DIR = "twin"  # relative to a bundle, or /dev/.xshim for xshim run
EXE = "exe"
LIB = "lib"

# Programs whose host build is the guest's own package for the host architecture.
# The rule for this list and FILE_TOOLS: what the program writes (files, output, exit status)
# follows from its arguments, its input and the files it reads, never from the machine. So no
# interpreter (python, perl, sh: they run arbitrary code that can ask), nothing that reports the
# machine (uname, arch, nproc, getconf, ldd), nothing that writes architecture-specific data
# (ldconfig's cache), nothing that knows dpkg's native architecture for its database (dpkg,
# dpkg-query: a native package would become a foreign one), no apt, no maintainer script. The
# only difference a caller can see is `--version` of dpkg-deb and dpkg-split, which names the
# architecture dpkg was built for. Each program is listed by name after review; a new one needs
# its reason and a line in the equivalence test (tests/test_twins.py).
SAME = ("xz", "gzip", "bzip2", "zstd", "md5sum", "sha1sum", "sha224sum", "sha256sum",
        "sha384sum", "sha512sum", "b2sum",
        # dpkg's archive tools: they read and write .deb files (and parts of them), whose format
        # is the same everywhere; dpkg runs dpkg-split on every .deb it installs.
        "dpkg-deb", "dpkg-split")
# File tools (coreutils, sed, grep, diffutils) that dpkg, maintainer scripts and build systems run
# many times for a few milliseconds each: emulated, each exec costs qemu's start-up (about 25 ms)
# for a millisecond of work. They are twins only where the guest has the host's word size and
# byte order: a 32-bit guest's time_t, off_t and long are narrower (touch -d 2040 fails there),
# and a guest of the other byte order has locale data the host's libc cannot read. Left out on
# purpose: what prints numbers through floating point (printf, seq, sort -g, numfmt, od: long
# double differs between architectures), what looks up user or group names (ls -l, chown, stat,
# find -ls, id: the name service modules are the image's, which a twin cannot load), and what
# reports the machine (uname, arch, nproc, hostid).
# tar belongs here too: it sets and stores file times (a 32-bit guest's tar refuses what a 64-bit
# one writes after 2038) and lists names through the locale's character set.
FILE_TOOLS = ("tar", "rm", "rmdir", "mkdir", "cp", "mv", "ln", "chmod", "touch", "cat", "readlink",
              "basename", "dirname", "sed", "grep", "cmp", "diff")
BIN_DIRS = ("/bin/", "/usr/bin/")
# The compiler proper: guest package prefix -> program, Debian's cross compiler package for it.
CROSS = (("cpp-", "cc1"), ("g++-", "cc1plus"))


@dataclass(frozen=True)
class Candidate:
    guest: str  # the file's path inside the root, symlinks resolved
    package: Installed  # the guest package it belongs to
    host_package: str  # the host architecture's package that has its twin
    host_path: str  # the twin's path in that package
    built_using: str = ""  # cross: "gcc-12 (= 12.2.0-14)" must be in the host's Built-Using
    args: tuple[str, ...] = ()  # put before the caller's arguments (shim/twins.py)
    env: tuple[str, ...] = ()  # the rest: where the twin searches what the guest's searches
    unless: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    empty_dirs: tuple[str, ...] = ()


def _real_path(root: Path, path: str) -> str | None:
    """``path`` with its symlinks resolved inside ``root``; None unless a regular file."""
    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(rfd, path.encode(), os.O_PATH)
    except OSError:
        return None
    finally:
        os.close(rfd)
    try:
        if not os.path.isfile(f"/proc/self/fd/{fd}"):
            return None
        seen = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    top = str(root).rstrip("/")
    return seen[len(top):] if seen.startswith(top + "/") else None


def candidates(
    db: Database, guest: Arch, host: Arch
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The tree's allowlisted programs, and the listed ones that cannot be candidates."""
    out: dict[str, Candidate] = {}
    skipped: list[dict[str, str]] = []
    triplet = TRIPLETS.get(guest.debian)
    same_abi = (guest.elf_class, guest.endian) == (host.elf_class, host.endian)
    for name in (*SAME, *FILE_TOOLS) if same_abi else SAME:
        for listed in db.files_named(name):
            if not listed.startswith(BIN_DIRS):
                continue
            _add(db, listed, lambda pkg, p=listed: (pkg.name, p, ""), out, skipped)
    if triplet:
        as_path = f"/usr/bin/{triplet}-as"
        _add(db, as_path, lambda pkg: (pkg.name, as_path, ""), out, skipped)
        for prefix, program in CROSS:
            for listed in db.files_named(program):
                # /usr/lib/gcc/T/N/cc1 (bookworm) or /usr/libexec/gcc/T/N/cc1 (trixie on); the
                # cross compiler's is the same path under gcc-cross.
                parts = listed.split("/")
                if (len(parts) != 7 or parts[:4] not in (["", "usr", "lib", "gcc"],
                                                         ["", "usr", "libexec", "gcc"])
                        or parts[4] != triplet):
                    continue
                major = parts[5]
                host_path = "/".join([*parts[:3], "gcc-cross", *parts[4:]])

                def cross(pkg: Installed, major: str = major, host_path: str = host_path,
                          prefix: str = prefix) -> tuple[str, str, str] | None:
                    # cpp-12 (bookworm); cpp-14-<triplet>, the cross package's own name (trixie)
                    if pkg.name not in (f"{prefix}{major}", f"{prefix}{major}-{triplet}"):
                        return None
                    return (f"{prefix}{major}-{triplet}", host_path,
                            f"gcc-{major} (= {pkg.version})")

                _add(db, listed, cross, out, skipped)
    return sorted(out.values(), key=lambda c: c.guest), skipped


def _add(db: Database, listed: str, host_of: object, out: dict[str, Candidate],
         skipped: list[dict[str, str]]) -> None:
    pkg = db.owner(listed)
    if pkg is None:
        return
    real = _real_path(db.root, listed)
    if real is None or real in out:
        return
    mapped = host_of(pkg)  # type: ignore[operator]
    if mapped is None:
        skipped.append({"guest": real, "reason": f"{pkg.name} has no cross twin"})
        return
    host_package, host_path, built_using = mapped
    if built_using:
        parts = listed.split("/")
        out[real] = Candidate(real, pkg, host_package, host_path, built_using,
                              **compiler_search(parts[6], parts[4], parts[5]))
    else:
        out[real] = Candidate(real, pkg, host_package, host_path)


def compiler_search(program: str, triplet: str, major: str) -> dict[str, tuple[str, ...]]:
    """What makes Debian's cross compiler proper search the guest compiler's header directories,
    in the same order and as the same kind of directory, and when it cannot.

    The cross compiler finds its own headers (stddef.h...) where the guest's are when told their
    prefix (-iprefix). It does not search /usr/local/include (Debian leaves it out of cross
    compilers), so the twin is used only while that holds nothing; nor does it know the guest's
    C++ headers (it looks under /usr/<triplet>/include/c++): those are named in
    CPLUS_INCLUDE_PATH, after any the caller names, which GCC searches just before its standard
    directories and marks as C++-aware system directories, as the native compiler's own C++
    directories are (-isystem would not: its headers' line markers say implicit extern "C").
    Options and variables that move or drop the standard directories (a sysroot, another
    prefix or multilib, -nostdinc, another C++ library, a relocated GCC_EXEC_PREFIX) would move
    them differently in the two compilers: with those the guest's own compiler runs, as it does
    to write a precompiled header (a dump of the compiler's memory, not the same across hosts).
    """
    out: dict[str, tuple[str, ...]] = {
        "args": ("-iprefix", f"/usr/lib/gcc/{triplet}/{major}/"),
        "unless": ("-iprefix", "-isysroot", "--sysroot", "-imultilib", "GCC_EXEC_PREFIX=",
                   # A precompiled header is a memory image of the compiler that writes it.
                   "--output-pch"),
        "pinned": (f"-imultiarch={triplet}",),
        "empty_dirs": ("/usr/local/include", "/usr/lib/gcc-cross"),
    }
    if program == "cc1plus":
        cxx = (f"/usr/include/c++/{major}", f"/usr/include/{triplet}/c++/{major}",
               f"/usr/include/c++/{major}/backward")
        out["env"] = ("CPLUS_INCLUDE_PATH=" + ":".join(cxx),)
        out["unless"] += ("-nostdinc", "-stdlib")
        out["empty_dirs"] += (f"/usr/{triplet}/include/c++",)
    return out


# -- the archive side --------------------------------------------------------------------------


class _Debs:
    """Host-architecture packages of exact versions, fetched once, their files read in memory."""

    def __init__(self, archive: debian.Archive, host: Arch) -> None:
        self.archive = archive
        self.host = host
        self.tars: dict[tuple[str, str], dict[str, bytes]] = {}
        self.infos: dict[tuple[str, str], debian.PackageInfo] = {}

    def find(self, name: str, version: str, built_using: str = "") -> debian.PackageInfo | str:
        """The archive's entry for ``name`` at ``version`` (or whose Built-Using names
        ``built_using``), or why there is none."""
        stanzas = self.archive.packages_index(self.host.debian).get(name)
        if not stanzas:
            return f"{name} is not in {self.archive.suite} for {self.host.debian}"
        seen = []
        for text in stanzas:
            st = debian.parse_stanza(text)
            seen.append(st.get("Version", "?"))
            if built_using:
                if built_using in [u.strip() for u in st.get("Built-Using", "").split(",")]:
                    return debian.package_info(st)
            elif st.get("Version") == version:
                return debian.package_info(st)
        want = f"built from {built_using}" if built_using else f"version {version}"
        return f"{name}:{self.host.debian} {want} is not in the archive (it has {', '.join(seen)})"

    def files(self, info: debian.PackageInfo) -> dict[str, bytes]:
        """Every regular file and symlink of the package: path -> contents (a symlink's
        contents are b"->" and its target)."""
        key = (info.name, info.version)
        if key not in self.tars:
            deb = self.archive.fetch(info).read_bytes()
            tar = debian.deb_data_tar(deb)
            files: dict[str, bytes] = {}
            for m in tar.getmembers():
                path = "/" + os.path.normpath(m.name.lstrip("./")).lstrip("/")
                if m.issym():
                    files[path] = b"->" + m.linkname.encode()
                elif m.islnk():
                    files[path] = b"=>" + m.linkname.encode()
                elif m.isfile():
                    f = tar.extractfile(m)
                    files[path] = f.read() if f is not None else b""
            self.tars[key] = files
            self.infos[key] = info
        return self.tars[key]

    def read(self, info: debian.PackageInfo, path: str) -> bytes | None:
        files = self.files(info)
        for _ in range(16):
            data = files.get(path)
            if data is None:
                return None
            if data.startswith(b"->"):
                target = data[2:].decode()
                base = "/" if target.startswith("/") else os.path.dirname(path)
                path = os.path.normpath(os.path.join(base, target))
                continue
            if data.startswith(b"=>"):
                path = "/" + os.path.normpath(data[2:].decode().lstrip("./"))
                continue
            return data
        return None


@dataclass
class _Prepared:
    twins: list[shimtwins.Twin]
    skipped: list[dict[str, str]]
    programs: dict[str, bytes]  # exe/<path> -> contents
    libs: dict[str, bytes]  # soname -> contents
    loader: str


def _resolve(db: Database, cands: list[Candidate], debs: _Debs, guest: Arch,
             skipped: list[dict[str, str]]) -> _Prepared:
    host_triplet = TRIPLETS[debs.host.debian]
    guest_triplet = TRIPLETS.get(guest.debian, "")
    libc = db.packages.get(f"libc6:{guest.debian}") or db.packages.get("libc6")
    out = _Prepared([], skipped, {}, {}, "")
    for c in cands:
        info = debs.find(c.host_package, c.package.version, c.built_using)
        if isinstance(info, str):
            skipped.append({"guest": c.guest, "reason": info})
            continue
        program = debs.read(info, c.host_path)
        if program is None:
            skipped.append({"guest": c.guest, "reason": f"{info.name} has no {c.host_path}"})
            continue
        libs: dict[str, bytes] = {}
        why = _libraries(db, debs, info, program, libc, guest_triplet, host_triplet, libs)
        if why:
            skipped.append({"guest": c.guest, "reason": why})
            continue
        guest_file = db.root / c.guest.lstrip("/")
        if c.env and not _debian_cxx_dirs(guest_file, c.guest):
            skipped.append({"guest": c.guest, "reason": "its C++ header directories are not "
                            "Debian's (/usr/include/c++/N, /usr/include/<triplet>/c++/N)"})
            continue
        digest = sha256_file(guest_file)
        rel = f"{EXE}{c.host_path}"
        out.programs[rel] = program
        out.libs.update(libs)
        loader = elf.read_elf(io.BytesIO(program)).interp or ""
        out.loader = os.path.basename(loader)
        out.twins.append(shimtwins.Twin(
            c.guest, rel, digest, guest_file.stat().st_size, c.package.name, c.package.version,
            info.name, info.version, c.args, c.env, c.unless, c.pinned, c.empty_dirs))
    return out


def _debian_cxx_dirs(guest_file: Path, guest: str) -> bool:
    """Whether the guest's cc1plus has Debian's C++ header directories compiled in, as GCC
    writes them before it makes them canonical: the ones CPLUS_INCLUDE_PATH names for its
    twin."""
    _, _, _, _, triplet, major, _ = guest.split("/")
    top = f"/usr/lib/gcc/{triplet}/{major}/../../../../include"
    want = [f"{top}/c++/{major}\0", f"{top}/{triplet}/c++/{major}\0",
            f"{top}/c++/{major}/backward\0"]
    data = guest_file.read_bytes()
    return all(w.encode() in data for w in want)


def _libraries(db: Database, debs: _Debs, own: debian.PackageInfo, program: bytes,
               libc: Installed | None, guest_triplet: str, host_triplet: str,
               libs: dict[str, bytes]) -> str:
    """Fill ``libs`` with the loader and every library ``program`` needs; or say why not."""
    first = elf.read_elf(io.BytesIO(program))
    if first.interp is None:
        return "the twin has no PT_INTERP"
    if libc is None:
        return "the tree has no libc6 to take the twin's loader from"
    libc_info = debs.find("libc6", libc.version)
    if isinstance(libc_info, str):
        return libc_info
    # bookworm's libc6 ships /lib64/ld-linux-x86-64.so.2; trixie's, with /usr merged, ships it
    # under /usr (the /lib64 link belongs to base-files there).
    loader = debs.read(libc_info, first.interp) or debs.read(libc_info, "/usr" + first.interp)
    if loader is None:
        return f"libc6 has no {first.interp}"
    libs[os.path.basename(first.interp)] = loader
    todo = [first]
    while todo:
        info = todo.pop()
        for soname in info.needed:
            if soname in libs:
                continue
            data = _own_library(debs, own, soname) or _own_library(debs, libc_info, soname)
            if data is None:
                found = _guest_library(db, debs, soname, guest_triplet, host_triplet)
                if isinstance(found, str):
                    return found
                data = found
            libs[soname] = data
            todo.append(elf.read_elf(io.BytesIO(data), soname))
    return ""


def _own_library(debs: _Debs, info: debian.PackageInfo, soname: str) -> bytes | None:
    for path in sorted(debs.files(info)):
        if os.path.basename(path) == soname and "/lib" in path:
            return debs.read(info, path)
    return None


def _guest_library(db: Database, debs: _Debs, soname: str, guest_triplet: str,
                   host_triplet: str) -> bytes | str:
    """The host build of the guest package that provides ``soname``, at its exact version."""
    for listed in db.files_named(soname):
        if f"/{guest_triplet}/" not in listed:
            continue
        pkg = db.owner(listed)
        if pkg is None:
            continue
        info = debs.find(pkg.name, pkg.version)
        if isinstance(info, str):
            return f"library {soname}: {info}"
        data = debs.read(info, listed.replace(f"/{guest_triplet}/", f"/{host_triplet}/"))
        if data is None:
            return f"library {soname}: {info.name} has no {listed}"
        return data
    return f"library {soname}: no package of the tree provides it"


# -- the prepared directory ----------------------------------------------------------------------


def _cache_key(cands: list[Candidate], skipped: list[dict[str, str]], inside: str,
               root: Path) -> str:
    h = hashlib.sha256(f"{RECIPE}\n{inside}\n{sorted(map(sorted, map(dict.items, skipped)))}\n"
                       .encode())
    # Not the inode: a copy of the tree (cp -a keeps sizes and mtimes) reuses the directory. A
    # stale entry costs nothing but speed: the shim checks each guest file's sha256 against the
    # map before its twin runs, and emulates it otherwise.
    for c in cands:
        st = (root / c.guest.lstrip("/")).stat()
        h.update(f"{c.guest} {c.package.name}={c.package.version} {c.host_package} "
                 f"{st.st_size} {st.st_mtime_ns} {c.args} {c.env} {c.unless} {c.pinned} "
                 f"{c.empty_dirs}\n".encode())
    return h.hexdigest()[:24]


def prepare(root: Path, guest: Arch, host: Arch, inside: str,
            archive: debian.Archive | None = None, cache: Path | None = None) -> Path:
    """The twin directory for the tree at ``root`` whose tracees see it at ``inside``: made, or
    found in the cache. Its map.json lists the twins and the skipped candidates with reasons."""
    db = Database.read(root)
    cands, skipped = candidates(db, guest, host)
    top = (cache or debian.cache_dir()) / "twins"
    final = top / _cache_key(cands, skipped, inside, root)
    if (final / shimtwins.MAP_NAME).is_file():
        return final
    if archive is None:
        archive = debian.Archive.discover(suite=_tree_suite(root))
    debs = _Debs(archive, host)
    prepared = _resolve(db, cands, debs, guest, skipped)
    top.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".twins.", dir=top))
    try:
        _write(work, prepared, inside)
        try:
            os.rename(work, final)
        except OSError:
            if not (final / shimtwins.MAP_NAME).is_file():
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _write(work: Path, prepared: _Prepared, inside: str) -> None:
    os.chmod(work, 0o755)
    (work / LIB).mkdir(mode=0o755)
    if prepared.twins:
        for name, data in prepared.libs.items():
            path = work / LIB / name
            path.write_bytes(data)
            os.chmod(path, 0o755)
            if name != prepared.loader:
                info = elf.read_elf(io.BytesIO(data), name)
                # libc.so.6 names a loader too (it runs when exec'd): the twins' own.
                interp = (f"{inside}/{LIB}/{prepared.loader}" if info.interp is not None
                          else None)
                if info.rpath is not None or info.runpath is not None or interp:
                    elf.patch_elf_file(path, interp=interp,
                                       drop_search_path=info.rpath is not None
                                       or info.runpath is not None)
        for rel, data in prepared.programs.items():
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            patched = elf.patch_elf(data, interp=f"{inside}/{LIB}/{prepared.loader}",
                                    rpath=f"{inside}/{LIB}", name=rel)
            write_atomic(path, patched, mode=0o755)
    write_atomic(work / shimtwins.MAP_NAME,
                 shimtwins.dumps(prepared.twins, prepared.skipped).encode(), mode=0o644)


def _tree_suite(root: Path) -> str | None:
    try:
        text = (root / "etc/os-release").read_text(errors="replace")
    except OSError:
        return None
    fields = debian.parse_os_release(text)
    return fields.get("VERSION_CODENAME") or None


def log_decisions(twin_dir: Path) -> dict[str, Any]:
    """Say which twins a directory has and why candidates were left out; return the
    decisions for the trace."""
    d = shimtwins.decisions(*shimtwins.load(str(twin_dir / shimtwins.MAP_NAME)))
    log.info("native twins: %d (%s); %d candidates left out", len(d["used"]),
             " ".join(os.path.basename(t["guest"]) for t in d["used"]) or "none",
             len(d["skipped"]))
    for s in d["skipped"]:
        log.info("no twin for %s: %s", s.get("guest"), s.get("reason"))
    return d
