"""``xshim verify``: prove a bundle is intact and self-contained.

Checks, each problem naming the file (the contract is shim/layout.py, docs/bundle-contract.md):
  - manifest.json is readable, complete and of this version's format;
  - every file in the manifest exists with its size, sha256 and mode, every directory with its
    mode, every link with its target;
  - no file, link or directory outside the manifest; the runtime ``guest/`` directory holds
    nothing (xshim-install fills it inside the image, and whatever a bundle brings there would
    take the place of the image's /bin/sh);
  - no setuid, setgid or world-writable file or directory, whatever the manifest says;
  - every ELF is built for the bundle's host architecture;
  - every PT_INTERP points at a loader inside the bundle, at the bundle's prefix;
  - every DT_NEEDED resolves inside the bundle, the way glibc's loader will look for it: through
    the object's DT_RUNPATH, else its DT_RPATH and the DT_RPATH of the program that loads it
    (the shim, bin/sh); the loader's own soname is always resolved. A search directory outside
    the prefix is a problem in itself: the loader would look into the image there.

With ``root`` (``--root TREE``), it also checks the bundle's placement: the kernel and the
loader read PT_INTERP and DT_RPATH as absolute paths, so a bundle built for ``/.xshim`` that sits
at ``TREE/opt/x`` cannot start; the kernel answers ENOENT for the missing loader, which shells
print as "not found". This check says so beforehand, in words.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from ..shim import arch as archmod
from ..shim import layout as L
from ..shim.layout import Manifest, ManifestError
from . import elf
from .errors import ElfFormatError
from .fsutil import sha256_file


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the bundle ("" for the bundle as a whole)
    check: str  # manifest, missing, changed, mode, extra, arch, interp, needed, placement
    message: str

    def __str__(self) -> str:
        return f"{self.path or '.'}: {self.message}"


@dataclass
class Report:
    bundle: str
    prefix: str = ""
    host_arch: str = ""
    platforms: list[str] = field(default_factory=list)
    # emulator path -> where it came from, as the manifest records it
    emulators: dict[str, str] = field(default_factory=dict)
    files: int = 0
    elf_files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, check: str, message: str) -> None:
        self.problems.append(Problem(path, check, message))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def to_text(self) -> str:
        lines = [
            f"bundle    {self.bundle}",
            f"prefix    {self.prefix or '?'}",
            f"host      {self.host_arch or '?'}",
            f"platforms {', '.join(self.platforms) or '?'}",
            f"checked   {self.files} files ({self.elf_files} ELF)",
        ]
        lines.extend(f"emulator  {path}: {origin}"
                     for path, origin in sorted(self.emulators.items()))
        if self.ok:
            lines.append("OK: every hash and mode matches, no extra file, every ELF is "
                         "host-native and resolves inside the bundle")
        else:
            lines.append(f"FAILED: {len(self.problems)} problem(s)")
            lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class VerifyRequest:
    bundle: Path  # the bundle directory
    root: Path | None = None  # also check that the bundle sits at its prefix inside this tree
    format: str = "text"  # the report as text lines or JSON


def run_verify(req: VerifyRequest, stdout: TextIO | None = None) -> bool:
    """Check the bundle and write the report; True when all is well."""
    stdout = stdout or sys.stdout
    report = verify_bundle(req.bundle, root=req.root)
    if req.format == "json":
        stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        stdout.write(report.to_text())
    return report.ok


def verify_bundle(bundle: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
                  ) -> Report:
    """Check a bundle directory; with ``root``, also that it sits at its prefix inside root."""
    base = Path(bundle)
    report = Report(str(base))
    manifest = _load_manifest(base, report)
    if manifest is None:
        return report
    prefix = report.prefix
    listed = _check_files(base, manifest, report)
    _check_extra(base, manifest, listed, report)
    _check_elves(base, manifest, prefix, report)
    _report_emulators(manifest, report)
    _check_twins(base, manifest, report)
    if root is not None:
        _check_placement(base, Path(root), prefix, manifest, report)
    return report


def _load_manifest(base: Path, report: Report) -> Manifest | None:
    if not base.is_dir():
        report.add("", "manifest", "not a directory")
        return None
    try:
        manifest = Manifest.load(str(base))
    except FileNotFoundError:
        report.add(L.MANIFEST, "manifest", "missing: this is not an xshim bundle")
        return None
    except ManifestError as e:
        report.add(L.MANIFEST, "manifest", str(e))
        return None
    report.prefix = manifest.prefix
    report.host_arch = manifest.host_arch
    report.platforms = list(manifest.platforms)
    try:
        archmod.by_name(report.host_arch)
    except archmod.UnknownPlatformError:
        report.add(L.MANIFEST, "manifest", f"unknown host_arch {report.host_arch!r}")
        return None
    return manifest


def describe_source(source: object) -> str | None:
    """One line for an ``emulator_sources`` entry; None when it is malformed."""
    if not isinstance(source, dict):
        return None
    if source.get("origin") == "given":
        return "given with --qemu when bundled (not checked against Debian)"
    fields = ("package", "version", "architecture", "suite", "deb_sha256")
    if source.get("origin") != "debian" or not all(isinstance(source.get(k), str) and source[k]
                                                   for k in fields):
        return None
    return (f"Debian {source['package']} {source['version']} ({source['suite']}, "
            f"{source['architecture']}; .deb sha256 {source['deb_sha256'][:16]}...), checked "
            "against the archive's signed index when bundled")


def _report_emulators(manifest: Manifest, report: Report) -> None:
    """Where each emulator came from; a bundle of an older xshim records nothing."""
    sources = manifest.emulator_sources
    for name, rel in sorted(manifest.emulators.items()):
        if sources is None:
            report.emulators[rel] = "origin not recorded (bundle made by an older xshim)"
            continue
        line = describe_source(sources.get(name))
        if line is None:
            report.add(L.MANIFEST, "manifest", f"no valid emulator_sources entry for {name}")
            continue
        report.emulators[rel] = line


def _check_twins(base: Path, manifest: Manifest, report: Report) -> None:
    """A twin map names only twins the bundle lists."""
    from ..shim import twins

    rel_map = f"{L.TWIN}/{twins.MAP_NAME}"
    roles = {e.path: e.role for e in manifest.entries}
    if rel_map not in roles:
        return
    try:
        found, _ = twins.load(str(base / rel_map))
    except twins.TwinMapError as e:
        report.add(rel_map, "manifest", str(e))
        return
    for t in found:
        if roles.get(f"{L.TWIN}/{t.twin}") != "twin":
            report.add(rel_map, "manifest", f"the twin of {t.guest}, {t.twin}, is not in the "
                       "bundle")


def _check_mode(rel: str, st: os.stat_result, want: int, report: Report) -> None:
    mode = st.st_mode & 0o7777
    bad = L.unsafe_mode(mode)
    if bad is not None:
        report.add(rel, "mode", f"is {bad} (mode {mode:04o}); a bundle never needs that")
    elif mode != want:
        report.add(rel, "mode", f"mode {mode:04o}, manifest says {want:04o}")


def _check_files(base: Path, manifest: Manifest, report: Report) -> set[str]:
    listed: set[str] = set()
    for entry in manifest.entries:
        rel, role, full = entry.path, entry.role, base / entry.path
        listed.add(rel)
        if role == "manifest":  # it cannot hold its own hash, but its mode is fixed
            with contextlib.suppress(FileNotFoundError):
                _check_mode(rel, full.lstat(), L.DATA_MODE, report)
            continue
        report.files += 1
        try:
            st = full.lstat()
        except FileNotFoundError:
            report.add(rel, "missing", f"listed in the manifest ({role}) but missing")
            continue
        if role == "link":
            if not stat.S_ISLNK(st.st_mode):
                report.add(rel, "changed", "should be a symlink")
            elif os.readlink(full) != entry.target:
                report.add(rel, "changed", f"symlink points at {os.readlink(full)!r}, "
                           f"not {entry.target!r}")
            continue
        if not stat.S_ISREG(st.st_mode):
            report.add(rel, "changed", "should be a regular file")
            continue
        if st.st_size != entry.size:
            report.add(rel, "changed", f"size {st.st_size}, manifest says {entry.size}")
        elif sha256_file(full) != entry.sha256:
            report.add(rel, "changed", "sha256 differs from the manifest")
        _check_mode(rel, st, entry.mode, report)
    for d in manifest.dirs:
        listed.add(d.path)
        try:
            st = (base / d.path).lstat()
        except FileNotFoundError:
            if d.role != "runtime":  # made by xshim-install when it is needed
                report.add(d.path, "missing", "listed in the manifest (directory) but missing")
            continue
        if not stat.S_ISDIR(st.st_mode):
            report.add(d.path, "changed", "should be a directory")
            continue
        _check_mode(d.path, st, d.mode, report)
    return listed


def _check_extra(base: Path, manifest: Manifest, listed: set[str], report: Report) -> None:
    runtime = set(manifest.runtime_dirs)
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames.sort()
        names = filenames + [d for d in dirnames if (here / d).is_symlink()]
        names += [d for d in dirnames if d not in names]
        for name in sorted(names):
            rel = (here / name).relative_to(base).as_posix()
            if rel in listed:
                continue
            parent = rel.rpartition("/")[0]
            if parent in runtime:
                report.add(rel, "extra", f"not in the manifest: {parent}/ is filled by "
                           "xshim-install inside the image, and whatever a bundle brings there "
                           "would take the place of the image's /bin/sh")
            else:
                report.add(rel, "extra", "not in the manifest")
        # An unlisted directory has been reported as a whole; nothing in it is looked at.
        dirnames[:] = [d for d in dirnames if (here / d).relative_to(base).as_posix() in listed
                       and not (here / d).is_symlink()]


def _in_bundle(path: str, prefix: str, base: Path) -> Path | None:
    """The bundle file an absolute path (as the loader sees it) names; None if outside."""
    p = PurePosixPath(os.path.normpath(path))
    try:
        rel = p.relative_to(prefix)
    except ValueError:
        return None
    return base / rel


def _check_elves(base: Path, manifest: Manifest, prefix: str, report: Report) -> None:
    host = archmod.by_name(report.host_arch)
    infos: dict[str, elf.ElfInfo] = {}
    for entry in manifest.entries:
        rel = entry.path
        if entry.role in ("link", "manifest"):
            continue
        full = base / rel
        if not elf.is_elf_file(full):
            continue
        try:
            infos[rel] = elf.read_elf_file(full)
        except ElfFormatError as e:
            report.add(rel, "arch", e.message)
    report.elf_files = len(infos)
    # The loader's soname is resolved before anything is searched.
    loader_sonames = {i.soname for i in infos.values() if i.soname and i.interp is None
                      and not i.needed and i.soname.startswith("ld-")}
    shim = infos.get(L.SHIM)
    shim_rpath = shim.rpath if shim is not None and shim.runpath is None else None
    for rel, info in sorted(infos.items()):
        # A twin's libraries are served by its program's DT_RPATH (twin/lib), not the shim's.
        prog_rpath = ((f"{prefix}/{L.TWIN}/{L.LIB}",) if rel.startswith(f"{L.TWIN}/")
                      else shim_rpath)
        if info.arch is None or not (info.arch == host or archmod.natively_runs(host, info.arch)):
            what = info.arch.platform if info.arch else f"ELF machine {info.ident.machine}"
            report.add(rel, "arch", f"built for {what}, not for the host ({host.platform})")
            continue
        if info.interp is not None:
            target = _in_bundle(info.interp, prefix, base)
            if target is None:
                report.add(rel, "interp", f"PT_INTERP {info.interp} is outside the bundle's "
                           f"prefix {prefix}: it would be looked up in the image")
            elif not target.is_file() or target.relative_to(base).as_posix() not in infos:
                report.add(rel, "interp", f"PT_INTERP {info.interp} is not in the bundle")
        origin = str(PurePosixPath(prefix) / PurePosixPath(rel).parent)
        own = info.search_path
        search = list(own)
        if info.runpath is None and not info.is_program and prog_rpath:
            search += prog_rpath  # a program's DT_RPATH serves the libraries it loads
        search = elf.expand_origin(search, origin)
        outside = [d for d in search if _in_bundle(d, prefix, base) is None]
        if outside:
            report.add(rel, "needed", f"searches for libraries outside the bundle: "
                       f"{':'.join(outside)}")
        dirs = [str(p) for d in search if (p := _in_bundle(d, prefix, base)) is not None]
        for name in info.needed:
            if name in loader_sonames:
                continue
            found = elf.find_library(name, dirs, info.ident)
            if found is None:
                where = ":".join(search) or "no search path"
                report.add(rel, "needed", f"DT_NEEDED {name} does not resolve inside the "
                           f"bundle (searched {where})")


def _check_placement(base: Path, root: Path, prefix: str, manifest: Manifest,
                     report: Report) -> None:
    expected = root / prefix.lstrip("/")
    try:
        if expected.exists() and os.path.samefile(expected, base):
            return
    except OSError:
        pass
    try:
        at = "/" + base.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        at = ""
    where = f"is at {at} inside {root}" if at else f"is not inside {root}"
    fix = f"move it to {expected}" + (f" or rebuild it with --prefix {at}" if at else "")
    loader = manifest.loader
    report.add("", "placement",
               f"the bundle {where}, but was built for prefix {prefix}: its programs name "
               f"{prefix}/{loader} as their loader, so they cannot start there (the kernel "
               f"answers ENOENT and shells say 'not found'); {fix}")
