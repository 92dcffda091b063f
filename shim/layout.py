"""The bundle contract: where each part of a bundle sits, and the manifest that lists them all.

A bundle is one directory, built on the host by ``xshim bundle`` and placed at PREFIX inside an
image (``/.xshim`` unless ``--prefix`` says otherwise). Everything below is relative to PREFIX:

  bin/sh                          the frozen shim: the image's /bin/sh replacement
  bin/xshim-exec                  -> sh: ``xshim-exec CMD ARGS...`` runs CMD under the supervisor
  bin/xshim-install               -> sh: swaps the image's /bin/sh for bin/sh
  bin/xshim-restore               -> sh: puts the image's /bin/sh back (``--remove-bundle``)
  bin/_internal/                  the frozen program's payload (libpython, stdlib, extensions)
  lib/                            the host's loader and every host library the above need
  qemu/qemu-<target>-static       the emulators, one per foreign platform
  twin/                           only with ``--accelerate``: native twins (shim/twins.py),
                                  twin/map.json, twin/exe/... and their loader and libraries
                                  in twin/lib/
  manifest.json                   this contract's record of everything above
  guest/                          empty in a built bundle; xshim-install keeps the image's own
                                  shell there (guest/sh, a hard link, or guest/sh.symlink, the
                                  target of a symlinked /bin/sh)

One path sits beside PREFIX, in the image itself, never in the bundle:

  PREFIX-guest/                   ``xshim-install --mounted`` keeps the image's shell here (the
                                  same two names as guest/) when the bundle is only bind-mounted,
                                  read-only, for each RUN; xshim-restore puts it back and removes
                                  the directory

The manifest (format 2) lists every file, symlink and directory with its role, and for files
and directories their permission bits, so that nothing can be added, changed or loosened
without ``xshim verify`` seeing it. ``guest/`` is declared in it as the one runtime directory:
a bundle that arrives with anything in it is refused by xshim-install (what is there would
become the image's /bin/sh).

This module is the only place that spells the layout or reads the manifest; the shim (entry
roles), the builder (bundle, verify, patch) and the Dockerfile rewriter all use it. It uses the
standard library only and imports json lazily: the shell role never reads the manifest, and its
start-up time is paid on every RUN step.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Any, NamedTuple

from .errors import ShimError

DEFAULT_PREFIX = "/.xshim"  # where the bundle sits inside an image
DEFAULT_DIR = ".xshim"  # where ``xshim bundle`` writes it, inside the build context
MANIFEST = "manifest.json"
FORMAT = 2

BIN = "bin"
SHIM_NAME = "sh"
SHIM = f"{BIN}/{SHIM_NAME}"
PAYLOAD = f"{BIN}/_internal"
EXEC_NAME = "xshim-exec"
INSTALL_NAME = "xshim-install"
RESTORE_NAME = "xshim-restore"
ENTRY_LINKS = (EXEC_NAME, INSTALL_NAME, RESTORE_NAME)
LIB = "lib"
QEMU = "qemu"
TWIN = "twin"
GUEST = "guest"
GUEST_SH = f"{GUEST}/sh"  # the image's regular /bin/sh, hard-linked here by xshim-install
GUEST_SYMLINK = f"{GUEST}/sh.symlink"  # or the target of a symlinked /bin/sh
# Mount mode: the bundle is read-only and only there during each RUN, so the image's shell is
# kept beside it, in the image: PREFIX + this suffix, holding the same two names as guest/.
OUTSIDE_SUFFIX = "-guest"

# Roles of manifest entries.
FILE_ROLES = ("shim", "payload", "loader", "library", "emulator", "twin")
DIR_ROLES = ("dir", "runtime")
ROLES = (*FILE_ROLES, "link", "manifest", *DIR_ROLES)

DIR_MODE = 0o755
EXEC_MODE = 0o755
DATA_MODE = 0o644


class Layout:
    """The paths of a bundle whose top directory is ``base``.

    ``base`` is the prefix as the image sees it (``/.xshim``), or the bundle's directory on this
    machine; ``inside(root)`` gives the same bundle seen from outside a root filesystem.
    """

    __slots__ = ("base",)

    def __init__(self, base: str = DEFAULT_PREFIX) -> None:
        self.base = base.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Layout({self.base!r})"

    def path(self, rel: str) -> str:
        return posixpath.join(self.base, rel)

    def inside(self, root: str) -> Layout:
        """This layout at its place inside ``root`` (``/`` gives the layout itself)."""
        if root in ("", "/"):
            return self
        return Layout(os.path.join(root, self.base.lstrip("/")))

    @property
    def shim(self) -> str:
        return self.path(SHIM)

    @property
    def exec(self) -> str:
        return self.path(f"{BIN}/{EXEC_NAME}")

    @property
    def install(self) -> str:
        return self.path(f"{BIN}/{INSTALL_NAME}")

    @property
    def restore(self) -> str:
        return self.path(f"{BIN}/{RESTORE_NAME}")

    @property
    def bin_dir(self) -> str:
        return self.path(BIN)

    @property
    def lib_dir(self) -> str:
        return self.path(LIB)

    @property
    def qemu_dir(self) -> str:
        return self.path(QEMU)

    @property
    def twin_dir(self) -> str:
        return self.path(TWIN)

    @property
    def guest_dir(self) -> str:
        return self.path(GUEST)

    @property
    def guest_sh(self) -> str:
        return self.path(GUEST_SH)

    @property
    def guest_symlink(self) -> str:
        return self.path(GUEST_SYMLINK)

    @property
    def manifest(self) -> str:
        return self.path(MANIFEST)

    @property
    def outside_dir(self) -> str:
        """Where ``xshim-install --mounted`` keeps the image's shell: beside the bundle, in the
        image, as the bundle itself is read-only there."""
        return (self.base if self.base != "/" else "") + OUTSIDE_SUFFIX

    @property
    def outside_sh(self) -> str:
        return posixpath.join(self.outside_dir, os.path.basename(GUEST_SH))

    @property
    def outside_symlink(self) -> str:
        return posixpath.join(self.outside_dir, os.path.basename(GUEST_SYMLINK))

    @classmethod
    def of_shim(cls, executable: str) -> Layout:
        """The layout of the bundle whose bin/sh is ``executable`` (symlinks resolved)."""
        real = os.path.realpath(executable)
        return cls(os.path.dirname(os.path.dirname(real)))


def emulator_name(qemu_target: str) -> str:
    """The file name of the emulator for a qemu target (``aarch64`` -> ``qemu-aarch64-static``)."""
    return f"qemu-{qemu_target}-static"


# -- the manifest ----------------------------------------------------------------------------------


class ManifestError(ShimError):
    """The manifest is missing, unreadable or does not describe a bundle of this format."""


class Entry(NamedTuple):
    """One thing in the bundle. ``mode`` is the permission bits (files and directories)."""

    path: str  # relative, POSIX, no '..'
    role: str
    size: int = 0
    sha256: str = ""
    mode: int = 0
    target: str = ""  # symlinks

    def to_json(self) -> dict[str, Any]:
        if self.role == "link":
            return {"path": self.path, "role": self.role, "target": self.target}
        if self.role == "manifest":
            return {"path": self.path, "role": self.role}
        if self.role in DIR_ROLES:
            return {"path": self.path, "role": self.role, "mode": f"{self.mode:04o}"}
        return {"path": self.path, "role": self.role, "size": self.size, "sha256": self.sha256,
                "mode": f"{self.mode:04o}"}

    @classmethod
    def from_json(cls, item: object) -> Entry:
        if not isinstance(item, dict):
            raise ManifestError(f"bad entry {item!r}: not an object")
        path = safe_relative(item.get("path"))
        role = item.get("role")
        if path is None:
            raise ManifestError(f"bad entry {item!r}: its path must be relative, without '..'")
        if role not in ROLES:
            raise ManifestError(f"{path}: unknown role {role!r}")
        if role == "manifest":
            return cls(path, role)
        if role == "link":
            target = item.get("target")
            if not isinstance(target, str) or not target:
                raise ManifestError(f"{path}: a link entry needs its target")
            return cls(path, role, target=target)
        mode = _parse_mode(path, item.get("mode"))
        if role in DIR_ROLES:
            return cls(path, role, mode=mode)
        size, digest = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{path}: bad size {size!r}")
        if not (isinstance(digest, str) and len(digest) == 64
                and all(c in "0123456789abcdef" for c in digest)):
            raise ManifestError(f"{path}: bad sha256 {digest!r}")
        return cls(path, role, size, digest, mode)


def _parse_mode(path: str, value: object) -> int:
    if not isinstance(value, str):
        raise ManifestError(f"{path}: no mode (the manifest is older than format {FORMAT})")
    try:
        mode = int(value, 8)
    except ValueError:
        raise ManifestError(f"{path}: bad mode {value!r}") from None
    if not 0 <= mode <= 0o7777:
        raise ManifestError(f"{path}: bad mode {value!r}")
    return mode


def safe_relative(path: object) -> str | None:
    """``path`` as a normalised relative POSIX path, or None if it is empty, absolute or
    climbs out with '..'."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def unsafe_mode(mode: int) -> str | None:
    """Why permission bits are not acceptable in a bundle (None when they are)."""
    if mode & stat.S_ISUID:
        return "setuid"
    if mode & stat.S_ISGID:
        return "setgid"
    if mode & stat.S_IWOTH:
        return "world-writable"
    return None


class Manifest(NamedTuple):
    """What a bundle holds and what it was built for."""

    prefix: str
    host_arch: str  # an Arch name
    platforms: tuple[str, ...]
    emulators: dict[str, str]  # Arch name -> path relative to the bundle
    loader: str  # path relative to the bundle
    entries: tuple[Entry, ...]  # files and symlinks, sorted by path
    dirs: tuple[Entry, ...]  # directories, sorted by path; guest/ is the "runtime" one
    xshim_version: str = ""
    # Arch name -> where its emulator came from: {"origin": "debian", "package", "version",
    # "architecture", "suite", "deb_sha256"} as checked against the signed archive, or
    # {"origin": "given"} for a --qemu file. None in bundles made before it was recorded.
    emulator_sources: dict[str, dict[str, str]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "xshim_version": self.xshim_version,
            "host_arch": self.host_arch,
            "prefix": self.prefix,
            "platforms": list(self.platforms),
            "emulators": dict(self.emulators),
            "loader": self.loader,
            "files": [e.to_json() for e in self.entries],
            "dirs": [d.to_json() for d in self.dirs],
            **({} if self.emulator_sources is None else
               {"emulator_sources": {k: dict(v) for k, v in self.emulator_sources.items()}}),
        }

    def dumps(self) -> str:
        import json

        return json.dumps(self.to_json(), indent=1) + "\n"

    @property
    def runtime_dirs(self) -> tuple[str, ...]:
        return tuple(d.path for d in self.dirs if d.role == "runtime")

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Parse and validate; ManifestError names the first thing wrong."""
        if not isinstance(data, dict):
            raise ManifestError("not a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise ManifestError(f"format {fmt!r}, not {FORMAT}: made by another xshim version")
        prefix = data.get("prefix")
        if not (isinstance(prefix, str) and prefix.startswith("/") and prefix != "/"):
            raise ManifestError(f"bad prefix {prefix!r}")
        for key, kind in (("host_arch", str), ("platforms", list), ("files", list),
                          ("dirs", list), ("emulators", dict), ("loader", str)):
            if not isinstance(data.get(key), kind):
                raise ManifestError(f"has no valid {key!r}")
        entries = tuple(Entry.from_json(item) for item in data["files"])
        dirs = tuple(Entry.from_json(item) for item in data["dirs"])
        for e in entries:
            if e.role in DIR_ROLES:
                raise ManifestError(f"{e.path}: a directory role among the files")
        for d in dirs:
            if d.role not in DIR_ROLES:
                raise ManifestError(f"{d.path}: role {d.role!r} among the directories")
        seen: set[str] = set()
        for e in (*entries, *dirs):
            if e.path in seen:
                raise ManifestError(f"{e.path}: listed twice")
            seen.add(e.path)
        emulators: dict[str, str] = {}
        for name, path in data["emulators"].items():
            rel = safe_relative(path)
            if rel is None:
                raise ManifestError(f"bad emulator path {path!r} for {name!r}")
            emulators[str(name)] = rel
        loader = safe_relative(data["loader"])
        if loader is None:
            raise ManifestError(f"bad loader path {data['loader']!r}")
        sources = data.get("emulator_sources")
        if sources is not None and not (
            isinstance(sources, dict)
            and all(isinstance(v, dict) and all(isinstance(x, str) for x in (*v, *v.values()))
                    for v in sources.values())
        ):
            raise ManifestError("has no valid 'emulator_sources'")
        return cls(
            prefix=prefix.rstrip("/"),
            host_arch=data["host_arch"],
            platforms=tuple(str(p) for p in data["platforms"]),
            emulators=emulators,
            loader=loader,
            entries=entries,
            dirs=dirs,
            xshim_version=str(data.get("xshim_version", "")),
            emulator_sources=None if sources is None else {
                str(k): dict(v) for k, v in sources.items()},
        )

    @classmethod
    def load(cls, bundle: str) -> Manifest:
        """Read ``bundle``/manifest.json. FileNotFoundError when there is none; ManifestError
        when it is unreadable or invalid."""
        import json

        path = os.path.join(bundle, MANIFEST)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise ManifestError(f"unreadable: {e.strerror}") from None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ManifestError(f"unreadable: {e}") from None
        return cls.from_json(data)
