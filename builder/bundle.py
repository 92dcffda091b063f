"""``xshim bundle``: the self-contained, host-native shim bundle.

The layout of the output directory, which is meant to sit at PREFIX inside an image, and its
manifest are the bundle contract: shim/layout.py, described in docs/bundle-contract.md. bin/sh
is the frozen shim (PyInstaller bootloader) with PT_INTERP PREFIX/lib/<ld.so> and DT_RPATH
PREFIX/lib:PREFIX/bin/_internal. Every file gets a fixed mode (0755 for programs and libraries,
0644 for data, 0755 for directories), whatever the umask, so that the manifest's modes are the
same on every machine. The emulators are Debian's qemu-user-static for the host, checked against
the signed archive (or exactly what --qemu gave); the manifest records the package version of
each.

The closure of host libraries comes from DT_NEEDED, read from the files themselves (no ldd:
ldd runs the loader, and would answer for this host's environment, not the image's). Every
bundled ELF gets PT_INTERP pointing at the bundled loader, and the programs get a DT_RPATH of
PREFIX/lib and PREFIX/bin/_internal, which the loader also applies to every library they load
(see _patch_all for why not DT_RUNPATH), so nothing is looked up in the image and no
LD_LIBRARY_PATH is needed.

The bundle is assembled in a temporary directory beside the output and renamed into place, so
a reader sees the old bundle or the new one, never a half-built one.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..shim import arch as archmod
from ..shim import layout as L
from ..shim.arch import Arch
from ..shim.layout import Entry, Manifest
from ..shim.version import __version__
from . import elf, freeze
from .errors import BundleError, InputError
from .fsutil import sha256_file

log = logging.getLogger("xshim")


def check_prefix(prefix: str) -> str:
    """A normalised absolute prefix; InputError for anything the loader could not use."""
    p = PurePosixPath(prefix)
    if not p.is_absolute() or ".." in p.parts or str(p) == "/":
        raise InputError(f"--prefix {prefix!r}: must be an absolute path below /",
                         f"use e.g. --prefix {L.DEFAULT_PREFIX}")
    if any(c in prefix for c in ":\n\0"):
        # ':' separates DT_RUNPATH entries; the others can't be in a path the loader reads.
        raise InputError(f"--prefix {prefix!r}: may not contain ':' or control characters",
                         f"use e.g. --prefix {L.DEFAULT_PREFIX}")
    return str(p)


def _check_output(out: Path) -> None:
    """Refuse to replace anything that is not a bundle: the rename would destroy it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out}: exists and is not a directory", "choose another -o DIR")
    if out.is_dir() and any(out.iterdir()) and not (out / L.MANIFEST).is_file():
        raise InputError(f"{out}: exists, is not empty and holds no {L.MANIFEST}, so it is not an "
                         "xshim bundle; refusing to replace it", "choose another -o DIR")


@dataclass(frozen=True)
class BundleRequest:
    """``xshim bundle``: a bundle for ``platforms`` at ``output``, to sit at ``prefix``."""

    output: str
    platforms: tuple[Arch, ...]
    prefix: str = L.DEFAULT_PREFIX
    qemu: tuple[str, ...] = ()
    rebuild: bool = False
    accelerate: Path | None = None  # the base tree whose programs get native twins
    qemu_suite: str | None = None  # the Debian suite whose qemu-user to ship


def run_bundle(req: BundleRequest) -> Manifest:
    return build_bundle(req.output, req.platforms, prefix=req.prefix, qemu=req.qemu,
                        rebuild=req.rebuild, accelerate=req.accelerate,
                        qemu_suite=req.qemu_suite)


def build_bundle(
    out: str | os.PathLike[str],
    platforms: Sequence[Arch],
    *,
    prefix: str = L.DEFAULT_PREFIX,
    qemu: Sequence[str | os.PathLike[str]] = (),
    cache: Path | None = None,
    rebuild: bool = False,
    accelerate: Path | None = None,
    qemu_suite: str | None = None,
) -> Manifest:
    """Build the bundle into ``out`` (replacing an older bundle there); return the manifest.

    ``accelerate``: the base tree whose programs get native twins (builder/twins.py).
    ``qemu_suite``: the Debian suite whose qemu-user emulators to ship (default: the host's).
    """
    from . import qemu as qemumod

    prefix = check_prefix(prefix)
    if qemu_suite is not None:
        qemumod.check_suite(qemu_suite)
    arches = list(dict.fromkeys(platforms))
    if not arches:
        raise InputError("no platform given", "use e.g. --platform linux/arm64")
    target = Path(out).absolute()
    _check_output(target)
    host = archmod.host_arch()
    emulators, sources = qemumod.bundle_emulators(arches, qemu, suite=qemu_suite)
    twin_dir = _twins(accelerate, arches, prefix, host) if accelerate is not None else None
    frozen = freeze.frozen_shim(cache, rebuild=rebuild)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        manifest = _assemble(tmp, frozen, emulators, arches, prefix, host, sources, twin_dir)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(e.size for e in manifest.entries)
    log.info("bundle for %s at %s (prefix %s): %d files, %.1f MB",
             ", ".join(a.platform for a in arches), target, prefix, len(manifest.entries),
             total / 1e6)
    return manifest


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an older bundle there is swapped out, then deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / "b")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / "b", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _twins(base: Path, arches: Sequence[Arch], prefix: str, host: Arch) -> Path:
    """The twins of the base tree's programs, made for this prefix."""
    from . import runner, twins

    if not base.is_dir():
        raise InputError(f"--base {base}: not a directory",
                         "give the unpacked root filesystem of the base image")
    runner.check_rootfs(base)
    guest = runner.detect_platform(base)
    if guest not in arches:
        raise InputError(
            f"--base {base}: the tree is {guest.platform}, which the bundle is not for",
            f"add --platform {guest.platform}, or give the base tree of a bundled platform")
    twin_dir = twins.prepare(base.resolve(), guest, host, L.Layout(prefix).twin_dir)
    twins.log_decisions(twin_dir)
    return twin_dir


def _assemble(root: Path, frozen: Path, emulators: dict[str, Path], arches: Sequence[Arch],
              prefix: str, host: Arch, sources: dict[str, dict[str, str]],
              twin_dir: Path | None = None) -> Manifest:
    bindir, libdir, qdir = root / L.BIN, root / L.LIB, root / L.QEMU
    bindir.mkdir()
    shutil.copy2(frozen / freeze.NAME, root / L.SHIM)
    shutil.copytree(frozen / freeze.CONTENTS, root / L.PAYLOAD, symlinks=True)
    libdir.mkdir()
    qdir.mkdir()
    for name in L.ENTRY_LINKS:
        os.symlink(L.SHIM_NAME, bindir / name)

    shim = root / L.SHIM
    shim_info = elf.read_elf_file(shim)
    if shim_info.interp is None:
        raise BundleError(f"{shim}: the PyInstaller bootloader has no PT_INTERP",
                          "use a dynamically linked PyInstaller bootloader")
    host_loader = Path(os.path.realpath(shim_info.interp))
    loader_name = PurePosixPath(shim_info.interp).name
    shutil.copy2(host_loader, libdir / loader_name)
    loader_soname = elf.read_elf_file(libdir / loader_name).soname or loader_name

    for a in arches:
        em = emulators.get(a.name)
        if em is None:  # the host runs this architecture itself
            continue
        dest = qdir / a.qemu_static
        if not dest.exists():
            shutil.copy2(em, dest)
            os.chmod(dest, 0o755)

    search = [libdir, root / L.PAYLOAD]
    _collect_libraries(root, search, libdir, loader_soname, host)
    _patch_all(root, prefix, loader_name, search)
    if twin_dir is not None:  # self-contained already, with a loader of their own
        shutil.copytree(twin_dir, root / L.TWIN, symlinks=True)
    _fix_modes(root)
    return _write_manifest(root, prefix, host, arches, loader_name, sources)


def _fix_modes(root: Path) -> None:
    """Fixed permission bits, whatever the umask or the sources': the manifest records them."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, L.DIR_MODE)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            executable = os.stat(full).st_mode & 0o111 or elf.is_elf_file(Path(full))
            os.chmod(full, L.EXEC_MODE if executable else L.DATA_MODE)
        del dirnames  # os.walk descends into every directory, symlinked ones excepted


def _elf_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if elf.is_elf_file(p))


def _collect_libraries(root: Path, search: Sequence[Path], libdir: Path, loader_soname: str,
                       host: Arch) -> None:
    """Copy into ``libdir`` every host library some bundled ELF needs and the bundle lacks."""
    host_dirs = elf.host_library_dirs()
    # Where each library copied from the host came from, for its own $ORIGIN-relative paths.
    origin: dict[Path, Path] = {}
    todo = _elf_files(root)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        info = elf.read_elf_file(path)
        if info.arch != host and not (info.arch and archmod.natively_runs(host, info.arch)):
            raise BundleError(f"{path.relative_to(root)}: built for "
                              f"{info.arch.platform if info.arch else 'an unknown machine'}, "
                              f"not for this host ({host.platform})")
        for name in info.needed:
            if name == loader_soname:
                continue
            inside = elf.find_library(name, [str(d) for d in search], info.ident)
            if inside is not None:
                todo.append(inside)
                continue
            src_dir = origin.get(path, path).parent
            own = elf.expand_origin(info.search_path, str(src_dir))
            found = elf.find_library(name, [*own, *host_dirs], info.ident)
            if found is None:
                raise BundleError(
                    f"{path.relative_to(root)} needs {name}, which is not on this host "
                    f"(searched {', '.join([*own, *host_dirs])})",
                    f"install the package that provides {name}",
                )
            dest = libdir / name
            shutil.copyfile(found, dest)
            os.chmod(dest, 0o755)
            origin[dest] = Path(os.path.realpath(found))
            log.debug("library %s <- %s (needed by %s)", name, found, path.relative_to(root))
            todo.append(dest)


def _patch_all(root: Path, prefix: str, loader_name: str, search: Sequence[Path]) -> None:
    """PT_INTERP into the bundle everywhere; DT_RPATH on programs; no host paths on libraries.

    Why DT_RPATH on the program and nothing on the libraries, not DT_RUNPATH on every file:
    DT_RUNPATH serves only the object's own DT_NEEDED, so every library with dependencies would
    need one, and adding a string to a large library's dynamic string table makes LIEF shift
    all its segments (libpython does not survive that). A program's DT_RPATH is searched for
    every library it loads that has no DT_RUNPATH, dlopen()ed extension modules included, so
    one patch per program covers the whole tree, and the libraries are left byte-identical
    unless they carry a host search path of their own, which is removed.
    """
    loader_path = L.Layout(prefix).path(f"{L.LIB}/{loader_name}")
    rpath = ":".join(f"{prefix}/{d.relative_to(root).as_posix()}" for d in search)
    for path in _elf_files(root):
        if path == root / L.LIB / loader_name:
            continue
        info = elf.read_elf_file(path)
        interp = loader_path if info.interp not in (None, loader_path) else None
        if info.is_program:
            rp = rpath if (info.rpath, info.runpath) != (tuple(rpath.split(":")), None) else None
            drop = False
        else:
            rp = None
            drop = info.rpath is not None or info.runpath is not None
        if interp is None and rp is None and not drop:
            continue
        log.debug("patching %s:%s%s%s", path.relative_to(root),
                  f" PT_INTERP={interp}" if interp else "", f" DT_RPATH={rp}" if rp else "",
                  " (host search path removed)" if drop else "")
        elf.patch_elf_file(path, interp=interp, rpath=rp, drop_search_path=drop)


def _role(rel: str, loader_name: str) -> str:
    if rel == L.SHIM:
        return "shim"
    if rel.startswith(f"{L.BIN}/"):
        return "payload"
    if rel == f"{L.LIB}/{loader_name}":
        return "loader"
    if rel.startswith(f"{L.LIB}/"):
        return "library"
    if rel.startswith(f"{L.QEMU}/"):
        return "emulator"
    if rel.startswith(f"{L.TWIN}/"):
        return "twin"
    raise BundleError(f"unexpected file in the bundle: {rel}")


def _write_manifest(root: Path, prefix: str, host: Arch, arches: Sequence[Arch],
                    loader_name: str, sources: dict[str, dict[str, str]]) -> Manifest:
    entries: list[Entry] = []
    dirs: list[Entry] = [Entry(L.GUEST, "runtime", mode=L.DIR_MODE)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for d in dirnames:
            if not (here / d).is_symlink():
                rel = (here / d).relative_to(root).as_posix()
                dirs.append(Entry(rel, "dir", mode=(here / d).lstat().st_mode & 0o7777))
        for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
            full = here / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, "link", target=os.readlink(full)))
            else:
                entries.append(Entry(rel, _role(rel, loader_name), st.st_size, sha256_file(full),
                                     st.st_mode & 0o7777))
    entries.append(Entry(L.MANIFEST, "manifest"))
    emulators = {a.name: f"{L.QEMU}/{a.qemu_static}" for a in arches
                 if (root / L.QEMU / a.qemu_static).exists()}
    manifest = Manifest(
        prefix=prefix,
        host_arch=host.name,
        platforms=tuple(a.platform for a in arches),
        emulators=emulators,
        loader=f"{L.LIB}/{loader_name}",
        entries=tuple(sorted(entries, key=lambda e: e.path)),
        dirs=tuple(sorted(dirs, key=lambda e: e.path)),
        xshim_version=__version__,
        emulator_sources={name: sources[name] for name in emulators},
    )
    (root / L.MANIFEST).write_text(manifest.dumps())
    os.chmod(root / L.MANIFEST, L.DATA_MODE)
    return manifest
