"""Native twins: the host-architecture build of the same Debian package version, run in place of
a guest program whose output does not depend on the CPU (xz, gzip, tar, dpkg-deb, cc1, as, ...).

The builder (builder/twins.py) prepares them ahead of time and writes the twin map, ``map.json``
in the bundle's ``twin/`` directory (shim/layout.py): one entry per guest file, with the sha256
and size of the guest file it stands for and the package versions on both sides. At an exec the
planner asks ``TwinTable.match`` about the file it has just opened: a twin is used only when the
file is the very one the map names, checked by identity (device, inode, size, mtime) and, the
first time that identity is seen, by its digest. Everything else is emulated as before, and the
reason a listed file was not replaced goes into the trace.

Standard library only; json is imported only when a map exists.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from typing import Any, NamedTuple

MAP_NAME = "map.json"
MAP_FORMAT = 1
_CHUNK = 1 << 20


# qemu's -cpu for an accelerated run, by guest architecture. qemu's default aarch64 CPU ("max")
# computes pointer authentication with the architected QARMA5 cipher in software, at every signed
# return: paciasp/autiasp stand in every function of a distribution built with
# -mbranch-protection (Debian from trixie on), and a trixie python3 loop runs 13x slower than
# with pauth-impdef=on, which keeps the same instructions, HWCAPs and failures but signs with
# qemu's own cheap hash. The keys are random per process, so no program can tell the signatures
# apart; only the ID register's field naming the algorithm differs.
ACCELERATED_CPU = {"aarch64": b"max,pauth-impdef=on", "aarch64_be": b"max,pauth-impdef=on"}


def cpu_options(caller_sets_cpu: bool) -> dict[str, tuple[bytes, ...]]:
    """qemu options by Arch.name for an accelerated run; none where the caller chose a CPU
    itself (QEMU_CPU in the environment, which a command-line -cpu would override)."""
    if caller_sets_cpu:
        return {}
    return {name: (b"-cpu", cpu) for name, cpu in ACCELERATED_CPU.items()}


class TwinMapError(Exception):
    """The twin map is unreadable or does not have this format."""


class Twin(NamedTuple):
    """One guest file and the twin that stands for it."""

    guest: str  # absolute path of the guest file inside the root (symlinks resolved)
    twin: str  # path of the twin relative to the twin directory
    sha256: str  # of the guest file
    size: int  # of the guest file
    package: str  # the guest's package and version (from the tree's dpkg database)
    version: str
    host_package: str  # the host-architecture package the twin was taken from
    host_version: str
    # Arguments put before the caller's argv[1:]: the cross compiler is told where the guest's
    # own compiler keeps its headers (-iprefix), which it would otherwise look for elsewhere.
    args: tuple[str, ...] = ()
    # "NAME=VALUE": VALUE added at the end of the caller's NAME (the guest compiler's own C++
    # header directories, which the cross compiler does not know, as CPLUS_INCLUDE_PATH).
    env: tuple[str, ...] = ()
    # Where the guest program would search other directories than its twin: an argument that
    # starts with one of these, or the environment naming one that ends in "=", and the twin
    # is not used.
    unless: tuple[str, ...] = ()
    # "-opt=value": wherever the argument -opt is given, the next one must be value.
    pinned: tuple[str, ...] = ()
    # Directories only one of the two searches: the twin is used only while they hold nothing.
    empty_dirs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dict(self._asdict())
        for f in _LISTS:
            out[f] = list(getattr(self, f))
        return out

    @classmethod
    def from_json(cls, item: object) -> Twin:
        if not isinstance(item, dict):
            raise TwinMapError(f"bad twin entry {item!r}")
        try:
            values = {f: item[f] for f in cls._fields if f not in _LISTS}
        except KeyError as e:
            raise TwinMapError(f"twin entry {item.get('guest')!r} lacks {e}") from None
        lists = {f: item.get(f) or [] for f in _LISTS}
        if not all(isinstance(v, str) for k, v in values.items() if k != "size") or not (
                isinstance(values["size"], int) and values["size"] >= 0) or not all(
                isinstance(v, list) and all(isinstance(a, str) for a in v)
                for v in lists.values()):
            raise TwinMapError(f"twin entry {item.get('guest')!r}: bad field types")
        values.update((f, tuple(v)) for f, v in lists.items())
        twin = posixpath.normpath(values["twin"])
        if twin.startswith(("/", "..")) or not values["guest"].startswith("/"):
            raise TwinMapError(f"twin entry {values['guest']!r}: bad paths")
        return cls(**values)


_LISTS = ("args", "env", "unless", "pinned", "empty_dirs")


def refusal(t: Twin, argv: list[bytes], env: list[bytes]) -> str:
    """Why the twin would not do what the guest program does with this argv and environment
    (a reason for the trace), or "" when it would."""
    prefixes = tuple(u.encode() for u in t.unless if not u.endswith("="))
    pins = dict(p.encode().split(b"=", 1) for p in t.pinned)
    for i, a in enumerate(argv[1:], 1):
        if prefixes and a.startswith(prefixes):
            return f"its caller passes {os.fsdecode(a)}"
        if a in pins and argv[i + 1:i + 2] != [pins[a]]:
            return (f"its caller passes {os.fsdecode(a)} with another value than "
                    f"{os.fsdecode(pins[a])}")
    names = tuple(u.encode() for u in t.unless if u.endswith("="))
    for e in env:
        if names and e.startswith(names):
            return f"the environment sets {os.fsdecode(e.split(b'=', 1)[0])}"
    return ""


def environment(t: Twin, env: list[bytes]) -> list[tuple[int, bytes]]:
    """The entries of the twin's environment that differ from ``env``: (the index of the entry
    it replaces, or -1 for a new one at the end; the entry). A value is added after the caller's
    own, so that what the caller names is searched first, as by the guest program; a caller's
    empty value is replaced (GCC reads an empty element as the current directory)."""
    out = []
    for item in t.env:
        name, value = item.encode().split(b"=", 1)
        key = name + b"="
        at = next((i for i, e in enumerate(env) if e.startswith(key)), -1)
        old = env[at][len(key):] if at >= 0 else b""
        out.append((at, key + (old + b":" + value if old else value)))
    return out


def dumps(twins: list[Twin], skipped: list[dict[str, str]]) -> str:
    import json

    return json.dumps({"format": MAP_FORMAT,
                       "twins": [t.to_json() for t in sorted(twins)],
                       "skipped": sorted(skipped, key=lambda s: s.get("guest", ""))},
                      indent=1) + "\n"


def load(path: str) -> tuple[list[Twin], list[dict[str, str]]]:
    """The twins and the skipped candidates of the map at ``path``."""
    import json

    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except OSError as e:
        raise TwinMapError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise TwinMapError(f"{path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != MAP_FORMAT:
        raise TwinMapError(f"{path}: not a twin map of format {MAP_FORMAT}")
    twins = [Twin.from_json(t) for t in data.get("twins") or []]
    skipped = data.get("skipped") or []
    if not isinstance(skipped, list) or not all(isinstance(s, dict) for s in skipped):
        raise TwinMapError(f"{path}: bad 'skipped' list")
    return twins, skipped


def decisions(twins: list[Twin], skipped: list[dict[str, str]]) -> dict[str, Any]:
    """What the map decided, for the trace's start record and the log."""
    return {"used": [{"guest": t.guest, "twin": t.twin, "package": f"{t.package}={t.version}",
                      "host_package": f"{t.host_package}={t.host_version}"} for t in twins],
            "skipped": skipped}


class Match(NamedTuple):
    """What the table says of a guest file the map lists: its twin (path inside the root), or
    why it is not used (``path`` empty)."""

    twin: Twin
    path: bytes
    reason: str = ""


class TwinTable:
    """The twin map of one supervisor, looked up by the identity of the file being exec'd."""

    def __init__(self, twins: list[Twin], twin_dir: str, own_root: str = "/") -> None:
        self.twin_dir = twin_dir  # the twin directory as the tracees see it
        self.own_root = own_root
        self.by_name: dict[str, list[Twin]] = {}
        for t in twins:
            self.by_name.setdefault(posixpath.basename(t.guest), []).append(t)
        self.by_ident: dict[tuple[int, int], Twin] = {}
        # (dev, ino, size, mtime_ns) -> whether the file's digest is the map's
        self.checked: dict[tuple[int, int, int, int], bool] = {}
        for t in twins:
            self._index(t)

    def _index(self, t: Twin) -> None:
        try:
            st = os.stat(posixpath.join(self.own_root, t.guest.lstrip("/")))
        except OSError:
            return
        self.by_ident[(st.st_dev, st.st_ino)] = t

    def refresh(self, name: bytes) -> None:
        """A file called ``name`` was not found by identity: the guest may have replaced it
        since (dpkg renames new files into place), so look again."""
        for t in self.by_name.get(os.fsdecode(name), ()):
            self._index(t)

    def match(self, ident: tuple[int, int], st: os.stat_result, lookup: bytes,
              opener: Callable[[], int]) -> Match | None:
        """The twin for the file at ``lookup`` (with ``st``), or None when the map does not
        list it. ``opener`` opens the file; it is read only the first time its identity is
        seen."""
        t = self.by_ident.get(ident)
        if t is None:
            base = posixpath.basename(lookup)
            if os.fsdecode(base) not in self.by_name:
                return None
            self.refresh(base)
            t = self.by_ident.get(ident)
            if t is None:
                return None
        if st.st_size != t.size:
            return Match(t, b"", f"{t.guest} changed since the twin map was made (size)")
        key = (ident[0], ident[1], st.st_size, st.st_mtime_ns)
        ok = self.checked.get(key)
        if ok is None:
            ok = self.checked[key] = _digest(opener, ident) == t.sha256
        if not ok:
            return Match(t, b"", f"{t.guest} changed since the twin map was made (sha256)")
        return Match(t, posixpath.join(self.twin_dir, t.twin).encode())


def _digest(opener: Callable[[], int], ident: tuple[int, int]) -> str:
    try:
        fd = opener()
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != ident:
            return ""  # replaced between the exec's check and this one
        from .tracelog import _sha256  # the interpreter's own: the frozen shim has no hashlib

        h = _sha256()
        offset = 0
        while chunk := os.pread(fd, _CHUNK, offset):
            h.update(chunk)
            offset += len(chunk)
        digest: str = h.hexdigest()
        return digest
    finally:
        os.close(fd)


def table_at(twin_dir_here: str, twin_dir_inside: str, own_root: str = "/") -> TwinTable | None:
    """The table of the twin map in ``twin_dir_here`` (this process's view), whose twins the
    tracees reach at ``twin_dir_inside``; None when there is no map."""
    path = os.path.join(twin_dir_here, MAP_NAME)
    if not os.path.exists(path):
        return None
    twins, _ = load(path)
    return TwinTable(twins, twin_dir_inside, own_root)
