"""A small Debian archive client: find a package, download it, prove it is the archive's, unpack it.

The chain of trust is the archive's own: the suite's ``InRelease`` is checked with ``gpgv``
against the Debian archive keyring, the SHA256 of ``Packages.xz`` comes from the signed text,
and the SHA256 of each ``.deb`` comes from that verified ``Packages`` index. No byte that has not
passed its check is returned, cached or unpacked.

The parsers (apt sources in ``apt_sources.py``, Release and Packages stanzas here, the .deb's ar
members in ``deb.py``) are pure functions over text or bytes; network, gpgv and the cache sit at
the edges, in :class:`Archive`.

The mirror is never built in: it comes from ``--mirror``, ``$XSHIM_MIRROR`` or this machine's apt
configuration.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import tools

# The mirror discovery, the .deb format and the archive's errors have modules of their own; they
# are named here too, as the archive client's API.
from .apt_sources import APT_DIR as APT_DIR
from .apt_sources import OS_RELEASE as OS_RELEASE
from .apt_sources import AptSource as AptSource
from .apt_sources import choose_main as choose_main
from .apt_sources import find_mirror as find_mirror
from .apt_sources import host_suite as host_suite
from .apt_sources import parse_deb822_sources as parse_deb822_sources
from .apt_sources import parse_one_line_sources as parse_one_line_sources
from .apt_sources import parse_os_release as parse_os_release
from .apt_sources import read_apt_sources as read_apt_sources
from .deb import ar_members as ar_members
from .deb import check_sha256 as check_sha256
from .deb import deb_data_tar as deb_data_tar
from .deb import extract_deb as extract_deb
from .deb import read_deb_members as read_deb_members
from .errors import ArchiveError as ArchiveError
from .errors import ArchiveUnreachableError as ArchiveUnreachableError
from .errors import ChecksumError as ChecksumError
from .errors import DebFormatError as DebFormatError
from .errors import MissingToolError
from .errors import SignatureError as SignatureError
from .fsutil import sha256_file

log = logging.getLogger("xshim")

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Enough for a slow mirror to answer; a dead one fails fast enough for tests to skip.
TIMEOUT = 30.0
_CHUNK = 1 << 20


# --- Release and Packages (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class IndexFile:
    path: str  # relative to dists/<suite>/
    sha256: str
    size: int


def parse_release(text: str) -> dict[str, IndexFile]:
    """The SHA256 section of a (verified) Release text: path -> IndexFile."""
    out: dict[str, IndexFile] = {}
    in_sha = False
    for line in text.splitlines():
        if line and not line[0].isspace():
            in_sha = line.rstrip() == "SHA256:"
            continue
        if in_sha:
            parts = line.split()
            if len(parts) == 3 and len(parts[0]) == 64:
                out[parts[2]] = IndexFile(parts[2], parts[0].lower(), int(parts[1]))
    return out


def parse_stanza(text: str) -> dict[str, str]:
    """One control stanza to a dict; field names keep their case, multi-line values keep lines."""
    for st in _control_stanzas(text):
        return st
    return {}


def _control_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif raw[0] in " \t" and key is not None:
            fields[key] += "\n" + raw[1:]
        else:
            name, sep, value = raw.partition(":")
            if sep:
                key = name
                fields[key] = value.strip()


def parse_packages(text: str) -> list[dict[str, str]]:
    """Every stanza of a Packages index."""
    return list(_control_stanzas(text))


def index_packages(text: str) -> dict[str, list[str]]:
    """Package name -> raw stanza texts, without parsing every field of every stanza."""
    out: dict[str, list[str]] = {}
    for chunk in text.split("\n\n"):
        chunk = chunk.strip("\n")
        if chunk.startswith("Package:"):
            name = chunk[8 : chunk.find("\n") if "\n" in chunk else None].strip()
            out.setdefault(name, []).append(chunk)
    return out


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    architecture: str
    filename: str  # relative to the mirror's base URL
    sha256: str
    size: int


def package_info(stanza: Mapping[str, str]) -> PackageInfo:
    try:
        return PackageInfo(
            stanza["Package"], stanza["Version"], stanza.get("Architecture", ""),
            stanza["Filename"], stanza["SHA256"].lower(), int(stanza["Size"]),
        )
    except (KeyError, ValueError) as e:
        name = stanza.get("Package", "?")
        raise ArchiveError(f"Packages stanza for {name} lacks a valid {e} field") from None


# --- I/O edge: HTTP, gpgv, cache -----------------------------------------------------------------


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("XSHIM_CACHE"):
        return Path(env["XSHIM_CACHE"])
    return Path(env.get("HOME") or Path.home()) / ".cache" / "xshim"


class _Progress:
    """Log lines for long downloads: at most one every 5 seconds, none for small files."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what, self.total = what, total
        self.start = self.last = time.monotonic()
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 5.0:
            self.last = now
            pct = f" ({100 * self.done // self.total}%)" if self.total else ""
            log.info("downloading %s: %.1f MB%s", self.what, self.done / 1e6, pct)

    def finish(self) -> None:
        secs = time.monotonic() - self.start
        if secs >= 2.0:
            log.info("downloaded %s: %.1f MB in %.0f s", self.what, self.done / 1e6, secs)


def _open_url(url: str) -> io.BufferedIOBase:
    try:
        resp = urllib.request.urlopen(url, timeout=TIMEOUT)
        return resp  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        raise ArchiveError(
            f"{url}: HTTP {e.code} {e.reason}",
            "check the mirror URL and suite (--mirror, --suite)",
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, FileNotFoundError) or isinstance(e, FileNotFoundError):
            raise ArchiveError(f"{url}: no such file", "check the mirror URL and suite") from None
        raise ArchiveUnreachableError(
            f"can't reach the Debian archive at {url}: {reason}",
            "check the network, or pass --mirror / set XSHIM_MIRROR to a reachable mirror",
        ) from None


def download(url: str, dest: Path, sha256: str | None, size: int | None, what: str) -> Path:
    """Download ``url`` to ``dest`` through a temporary file; keep it only if the digest matches.

    ``sha256=None`` is for signed files only (InRelease), whose check is the signature.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        progress = _Progress(what, size)
        with os.fdopen(fd, "wb") as out, _open_url(url) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                progress.add(len(chunk))
        progress.finish()
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ChecksumError(what, sha256.lower(), h.hexdigest())
        if size is not None and progress.done != size:
            raise ArchiveError(f"{what}: expected {size} bytes, got {progress.done}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        return dest
    except (OSError, TimeoutError) as e:
        raise ArchiveUnreachableError(f"downloading {url} failed: {e}",
                                      "check the network and retry") from None
    finally:
        tmp.unlink(missing_ok=True)


def verify_inrelease(path: Path, keyring: Path = DEFAULT_KEYRING) -> str:
    """Check an InRelease signature with gpgv; return only the text that the signature covers."""
    if not keyring.is_file():
        raise MissingToolError(str(keyring), "debian-archive-keyring", "to verify the archive")
    with tempfile.TemporaryDirectory(prefix="xshim-gpgv.") as td:
        out = Path(td) / "Release"
        proc = tools.run(
            ["gpgv", "--keyring", str(keyring), "--output", str(out), str(path)], check=False
        )
        if proc.returncode != 0 or not out.is_file():
            detail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
            raise SignatureError(
                f"{path.name} signature does not verify against {keyring}: "
                + " / ".join(detail),
                "the mirror serves a release file not signed by Debian's archive key; "
                "update debian-archive-keyring or pick another mirror",
            )
        return out.read_text(errors="replace")


# Parsed Packages indexes by their SHA256, shared by every Archive in the process.
_INDEX_MEMO: dict[str, dict[str, list[str]]] = {}


class Archive:
    """One suite of one Debian mirror, every answer checked against the archive's signature."""

    def __init__(
        self,
        mirror: str,
        suite: str,
        *,
        cache: Path | None = None,
        keyring: Path = DEFAULT_KEYRING,
        component: str = "main",
    ) -> None:
        self.mirror = mirror.rstrip("/")
        self.suite = suite
        self.cache = (cache or cache_dir()) / "debian"
        self.keyring = keyring
        self.component = component
        self._release: dict[str, IndexFile] | None = None

    @classmethod
    def discover(
        cls,
        mirror: str | None = None,
        suite: str | None = None,
        *,
        cache: Path | None = None,
        keyring: Path = DEFAULT_KEYRING,
    ) -> Archive:
        """The archive from --mirror/$XSHIM_MIRROR/apt config and the given or host suite."""
        return cls(find_mirror(mirror), suite or host_suite(), cache=cache, keyring=keyring)

    def url(self, rel: str) -> str:
        return f"{self.mirror}/{rel.lstrip('/')}"

    def release(self) -> dict[str, IndexFile]:
        """The verified SHA256 table of the suite's InRelease."""
        if self._release is not None:
            return self._release
        key = hashlib.sha256(f"{self.mirror} {self.suite}".encode()).hexdigest()[:16]
        cached = self.cache / "inrelease" / f"{key}-{self.suite}-InRelease"
        try:
            download(self.url(f"dists/{self.suite}/InRelease"), cached, None, None,
                     f"{self.suite}/InRelease")
        except ArchiveUnreachableError:
            # Offline: an InRelease fetched earlier is still good if its signature still holds.
            if not cached.is_file():
                raise
            log.warning("archive unreachable; using the InRelease fetched earlier")
        try:
            text = verify_inrelease(cached, self.keyring)
        except SignatureError:
            cached.unlink(missing_ok=True)
            raise
        self._release = parse_release(text)
        if not self._release:
            raise ArchiveError(f"{self.suite}/InRelease has no SHA256 section")
        return self._release

    def _cached_verified(self, rel: str, sha256: str, size: int, what: str) -> Path:
        """A content-addressed cache entry for ``rel``, re-verified on reuse."""
        path = self.cache / "by-sha256" / f"{sha256}-{os.path.basename(rel)}"
        if path.is_file():
            got = sha256_file(path)
            if got == sha256:
                return path
            log.warning("cached %s is corrupt (sha256 %s, expected %s); fetching it again",
                        what, got, sha256)
            path.unlink()
        return download(self.url(rel), path, sha256, size, what)

    def packages_index(self, debian_arch: str) -> dict[str, list[str]]:
        rel = f"{self.component}/binary-{debian_arch}/Packages.xz"
        entry = self.release().get(rel)
        if entry is None:
            raise ArchiveError(
                f"{self.suite} has no {rel}",
                f"is {debian_arch!r} a Debian architecture released in {self.suite}?",
            )
        if entry.sha256 not in _INDEX_MEMO:
            path = self._cached_verified(f"dists/{self.suite}/{rel}", entry.sha256, entry.size,
                                         f"{self.suite}/{rel}")
            text = lzma.decompress(path.read_bytes()).decode("utf-8", "replace")
            _INDEX_MEMO[entry.sha256] = index_packages(text)
        return _INDEX_MEMO[entry.sha256]

    def find(self, package: str, debian_arch: str) -> PackageInfo:
        """The package's entry in the verified index (Debian suites carry one version each)."""
        stanzas = self.packages_index(debian_arch).get(package)
        if not stanzas:
            raise ArchiveError(
                f"package {package!r} is not in {self.suite}/{self.component} for {debian_arch}",
                "check the package name and --suite",
            )
        return package_info(parse_stanza(stanzas[-1]))

    def fetch(self, info: PackageInfo) -> Path:
        """The .deb for ``info`` in the cache, its SHA256 checked against ``info``."""
        return self._cached_verified(info.filename, info.sha256, info.size,
                                     f"{info.name}_{info.version}_{info.architecture}.deb")

    def fetch_package(self, package: str, debian_arch: str) -> tuple[PackageInfo, Path]:
        info = self.find(package, debian_arch)
        return info, self.fetch(info)
