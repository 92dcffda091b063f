"""Finding the qemu-user emulators a platform needs: given, installed, or fetched from Debian.

Order of preference for each architecture: an explicit ``--qemu PATH`` (its target read from the
file name ``qemu-<target>[-static]``), the host's ``qemu-<target>-static`` on PATH or in /usr/bin,
else the file from Debian's ``qemu-user-static`` package for the host architecture, downloaded
and checked against the archive's signed digests, unpacked into the cache. Every emulator must be
a host-architecture ELF: a foreign one would need an emulator itself.

A bundle ships none of the host's copies: its emulators are Debian's, each proven against the
archive's signed chain and recorded with the package version it came from (bundle_emulators).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..shim import arch as archmod
from ..shim.arch import Arch, NotElfError
from .errors import InputError, NotAnEmulatorError, Unavailable

if TYPE_CHECKING:
    from . import debian

# The archive client (urllib, email), pyelftools, hashlib and tempfile are imported where they are
# used: `xshim run` with the host's emulators needs none of them, and importing them all would
# double its start-up time.

log = logging.getLogger("xshim")

PACKAGE = "qemu-user-static"
# Newer Debian releases ship the static emulators in qemu-user and keep qemu-user-static as a
# transitional package; try both before giving up.
PACKAGES = (PACKAGE, "qemu-user")
SEARCH_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
_NAME = re.compile(r"^qemu-(?P<target>[a-z0-9_]+?)(?P<static>-static)?$")


class MissingEmulatorError(Unavailable):
    """No emulator could be had for an architecture."""

    def __init__(self, arches: Sequence[Arch], why: str = "", *, bundle: bool = False) -> None:
        names = ", ".join(a.qemu_static for a in arches)
        if bundle:
            # A bundle never ships the host's copies, so installing qemu would not help.
            what, hint = f"{names}: not given", (
                "a bundle ships Debian's emulators, checked against the signed archive: make "
                "the archive reachable (or name a mirror in $XSHIM_MIRROR), or pass --qemu "
                f"/path/to/{arches[0].qemu_static} to ship your own")
        else:
            what = f"{names} not given, not installed"
            hint = f"apt-get install {PACKAGE}, or pass --qemu /path/to/{arches[0].qemu_static}"
        super().__init__(
            f"no emulator for {', '.join(a.platform for a in arches)}: {what}"
            + (f", and {why}" if why else ""),
            hint,
        )
        self.arches = tuple(arches)
        self.why = why


def target_from_name(path: Path) -> str:
    """The qemu target named by ``qemu-<target>[-static]`` (e.g. ``aarch64``, ``arm``)."""
    m = _NAME.match(path.name)
    if m is None:
        raise NotAnEmulatorError(
            f"{path}: can't tell the emulated architecture from the file name",
            "name the file qemu-<target>-static, e.g. qemu-aarch64-static, or use a symlink",
        )
    return m.group("target")


def elf_arch(path: Path) -> Arch | None:
    """The table row of an ELF file's header; None for an ELF no row describes."""
    with open(path, "rb") as f:
        header = f.read(64)
    return archmod.arch_of(archmod.parse_ident(header))


def is_static(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP, i.e. runs without a dynamic loader.

    Raises NotElfError for a file that is not ELF (or is corrupt).
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            return not any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments())
    except ELFError as e:
        raise NotElfError(f"{path}: {e}") from None


def is_dynamic(path: Path) -> bool:
    return not is_static(path)


def _check_host_elf(path: Path, host: Arch) -> None:
    try:
        got = elf_arch(path)
    except NotElfError:
        raise NotAnEmulatorError(f"{path}: not an ELF executable",
                                 "pass the qemu-<target>-static binary itself") from None
    except OSError as e:
        raise NotAnEmulatorError(f"{path}: {e.strerror}", "check the --qemu path") from None
    if got != host and not (got is not None and archmod.natively_runs(host, got)):
        what = got.platform if got else "an unknown architecture"
        raise NotAnEmulatorError(
            f"{path}: built for {what}, but this host is {host.platform}",
            f"use a qemu-user-static built for {host.debian or host.name}",
        )


def find_emulators(
    arches: Iterable[Arch],
    explicit_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    search_dirs: Sequence[Path] | None = None,
    download: bool = True,
    archive: debian.Archive | None = None,
    cache: Path | None = None,
) -> dict[str, Path]:
    """Arch name -> emulator path for each architecture the host can't run natively.

    ``search_dirs`` defaults to PATH plus /usr/bin; ``download=False`` stops before the network.
    Architectures this host runs itself (its own, i386 on x86_64) get no entry.
    """
    found, missing = available_emulators(arches, explicit_paths, search_dirs=search_dirs)
    if missing and download:
        found.update(fetch_emulators(missing, archive=archive, cache=cache))
    elif missing:
        raise MissingEmulatorError(missing)
    return found


def available_emulators(
    arches: Iterable[Arch],
    explicit_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    search_dirs: Sequence[Path] | None = None,
) -> tuple[dict[str, Path], list[Arch]]:
    """The emulators given or installed for ``arches``, and the architectures left without one.

    Never downloads and never raises for a missing emulator; a bad ``--qemu`` path still raises
    NotAnEmulatorError.
    """
    host = archmod.host_arch()
    wanted = [a for a in dict.fromkeys(arches)
              if not archmod.natively_runs(host, a)]
    by_target: dict[str, Path] = {}
    for p in explicit_paths:
        path = Path(p)
        target = target_from_name(path)
        if not any(a.qemu == target for a in archmod.ARCHES):
            raise NotAnEmulatorError(f"{path}: qemu target {target!r} is not one xshim knows",
                                     "see 'xshim --help' for the supported platforms")
        if not path.is_file():
            raise NotAnEmulatorError(f"{path}: no such file", "check the --qemu path")
        _check_host_elf(path, host)
        by_target[target] = path.resolve()

    found: dict[str, Path] = {}
    missing: list[Arch] = []
    dirs = [str(d) for d in (_search_dirs() if search_dirs is None else search_dirs)]
    for a in wanted:
        emulator = by_target.get(a.qemu) or _search(a, dirs, host)
        if emulator is None:
            missing.append(a)
        else:
            found[a.name] = emulator
    return found, missing


def _search_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return list(dict.fromkeys([*dirs, *SEARCH_DIRS]))


def _search(a: Arch, dirs: Sequence[str], host: Arch) -> Path | None:
    # Plain strings, not Path objects: `xshim run` probes every architecture in every PATH
    # directory on each start, and pathlib made that the slowest step of its start-up.
    for d in dirs:
        p = os.path.join(d, a.qemu_static)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            try:
                _check_host_elf(Path(p), host)
            except NotAnEmulatorError as e:
                log.warning("skipping %s", e.message)
                continue
            return Path(os.path.realpath(p))
    return None


def fetch_emulators(
    arches: Sequence[Arch],
    *,
    archive: debian.Archive | None = None,
    cache: Path | None = None,
    suite: str | None = None,
) -> dict[str, Path]:
    """Emulators from Debian's qemu-user-static for the host architecture, verified, cached.

    Each unpacked emulator's SHA256 is recorded beside it and checked again on every reuse.
    ``suite``: the Debian suite to take them from (default: the host's).
    """
    return debian_emulators(arches, archive=archive, cache=cache, suite=suite)[0]


_SUITE = re.compile(r"^[a-z][a-z0-9.-]*$")


def check_suite(suite: str, option: str = "--qemu-suite") -> str:
    """A Debian suite name as given on the command line, or InputError."""
    if not _SUITE.match(suite):
        raise InputError(f"{option} {suite!r}: not a Debian suite name",
                         "give a suite or codename such as bookworm, trixie or sid")
    return suite


def _read_emulator(deb: bytes, a: Arch, package: str) -> tuple[bytes, str]:
    """``a``'s static emulator in a qemu .deb, and its member name: ``qemu-<target>-static`` up
    to bookworm, plain ``qemu-<target>`` in qemu-user from trixie on (built static there)."""
    from . import debian

    errors = []
    for name in (a.qemu_static, f"qemu-{a.qemu}"):
        member = f"usr/bin/{name}"
        try:
            (blob, _mode), = debian.read_deb_members(deb, [member]).values()
            return blob, member
        except debian.DebFormatError as e:
            errors.append(str(e))
    raise MissingEmulatorError([a], f"{package} has none ({'; '.join(errors)})")


class EmulatorSource(NamedTuple):
    """The Debian package an emulator was unpacked from, as the signed archive lists it.

    A NamedTuple, not a dataclass: `xshim run` imports this module on every start, and
    dataclasses pulls in inspect.
    """

    package: str
    version: str
    architecture: str
    suite: str
    deb_sha256: str  # the .deb's SHA256 from the Packages index that InRelease signs

    def to_json(self) -> dict[str, str]:
        return {"origin": "debian", "package": self.package, "version": self.version,
                "architecture": self.architecture, "suite": self.suite,
                "deb_sha256": self.deb_sha256}


def debian_emulators(
    arches: Sequence[Arch],
    *,
    archive: debian.Archive | None = None,
    cache: Path | None = None,
    suite: str | None = None,
) -> tuple[dict[str, Path], EmulatorSource]:
    """Emulators proven to be Debian's, and the package they came from.

    The chain is checked on every call: ``InRelease`` against the archive keyring (gpgv), the
    Packages index against its SHA256 in that signed text, the .deb against the index, and each
    emulator is the .deb's own member. Unpacked emulators are cached per package version (Debian
    never reuses a version for other bytes in one archive), with their SHA256 beside them,
    checked again on reuse.
    """
    import hashlib

    from . import debian
    from .fsutil import write_atomic

    host = archmod.host_arch()
    try:
        archive = archive or debian.Archive.discover(suite=suite, cache=cache)
        info = _find_package(archive, host.debian)
    except debian.ArchiveError as e:
        raise MissingEmulatorError(arches, f"Debian's {PACKAGE} could not be had: {e}") from e
    source = EmulatorSource(info.name, info.version, info.architecture or host.debian,
                            archive.suite, info.sha256)
    version = info.version.replace(":", "_")  # the epoch's colon is awkward in paths
    root = (cache or debian.cache_dir()) / "qemu" / f"{info.name}_{version}_{host.debian}"
    out: dict[str, Path] = {}
    deb: bytes | None = None
    for a in arches:
        path = root / a.qemu_static
        if _cached_ok(path):
            out[a.name] = path
            continue
        if deb is None:
            log.info("fetching %s %s for %s", info.name, info.version, host.debian)
            deb = archive.fetch(info).read_bytes()
        blob, member = _read_emulator(deb, a, f"{info.name} {info.version}")
        if not _blob_is_static(blob):
            raise MissingEmulatorError(
                [a], f"{info.name} {info.version}'s {member} is not statically linked")
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(path, blob, mode=0o755)
        write_atomic(_sum_path(path), (hashlib.sha256(blob).hexdigest() + "\n").encode())
        out[a.name] = path
    return out, source


def _blob_is_static(blob: bytes) -> bool:
    """No PT_INTERP: the emulator runs where the image has no loader (and in a chroot)."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(blob))
        return not any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments())
    except ELFError:
        return False


def bundle_emulators(
    arches: Iterable[Arch],
    explicit_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    archive: debian.Archive | None = None,
    cache: Path | None = None,
    suite: str | None = None,
) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """The emulators a bundle ships, and where each came from (for its manifest).

    An explicit ``--qemu`` file is shipped as given, recorded as such. Every other one is
    Debian's, proven by :func:`debian_emulators`: never the host's installed copy, whose bytes
    nothing here can vouch for, so a bundle built anywhere ships the same emulators.
    """
    given, rest = available_emulators(arches, explicit_paths, search_dirs=[])
    sources: dict[str, dict[str, str]] = {name: {"origin": "given"} for name in given}
    if rest:
        try:
            fetched, source = debian_emulators(rest, archive=archive, cache=cache, suite=suite)
        except MissingEmulatorError as e:
            raise MissingEmulatorError(e.arches, e.why, bundle=True) from e
        given.update(fetched)
        sources.update({name: source.to_json() for name in fetched})
    return given, sources


def _find_package(archive: debian.Archive, debian_arch: str) -> debian.PackageInfo:
    """qemu-user-static, or qemu-user where the former is only a transitional package."""
    from . import debian

    last: debian.ArchiveError | None = None
    for name in PACKAGES:
        try:
            info = archive.find(name, debian_arch)
        except debian.ArchiveError as e:
            last = e
            continue
        # A transitional package is tiny; the real one carries tens of MB of emulators.
        if info.size > 1_000_000:
            return info
    raise last or debian.ArchiveError(f"no {PACKAGE} with emulators in {archive.suite}")


def _sum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cached_ok(path: Path) -> bool:
    from .fsutil import sha256_file

    try:
        want = _sum_path(path).read_text().strip()
    except FileNotFoundError:
        return False
    if path.is_file() and sha256_file(path) == want:
        return True
    log.warning("cached emulator %s does not match its recorded sha256; unpacking it again", path)
    return False
