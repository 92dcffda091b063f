"""A small Debian archive client: find a package, download it, prove it is the archive's, unpack it.

The chain of trust is the archive's own: the suite's ``InRelease`` is checked with ``gpgv``
against the Debian archive keyring, the SHA256 of ``Packages.xz`` comes from the signed text,
and the SHA256 of each ``.deb`` comes from that verified ``Packages`` index. No byte that has not
passed its check is returned, cached or unpacked.

The parsers (apt sources, Release, Packages stanzas, ar members) are pure functions over text or
bytes; network, gpgv and the cache sit at the edges, in :class:`Archive`.

The mirror is never built in: it comes from ``--mirror``, ``$XSHIM_MIRROR`` or this machine's apt
configuration.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import tools
from .errors import InputError, MissingToolError, XshimError
from .fsutil import sha256_file

log = logging.getLogger("xshim")

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
# Enough for a slow mirror to answer; a dead one fails fast enough for tests to skip.
TIMEOUT = 30.0
_CHUNK = 1 << 20
_URL_SCHEMES = ("http://", "https://", "file://")


# --- errors --------------------------------------------------------------------------------------


class ArchiveError(XshimError):
    """The archive answered, but not with what we need (missing file, missing package)."""


class ArchiveUnreachableError(ArchiveError):
    """The archive could not be reached at all (network down, DNS, refused)."""


class SignatureError(ArchiveError):
    """``InRelease`` did not verify against the keyring: nothing from it is trusted."""


class ChecksumError(ArchiveError):
    """Downloaded bytes differ from the digest the signed archive publishes for them."""

    def __init__(self, what: str, expected: str, got: str) -> None:
        super().__init__(
            f"checksum mismatch for {what}: expected sha256 {expected}, got {got}; "
            "the bytes were discarded",
            "retry; if it persists the mirror is serving corrupt or tampered files: "
            "pick another with --mirror or $XSHIM_MIRROR",
        )
        self.what = what
        self.expected = expected
        self.got = got


class DebFormatError(ArchiveError):
    """A .deb that is not an ar archive with a data.tar member."""


# --- mirror discovery (pure parsers + one reader) ------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One apt source: a URI, a suite and its components (only ``deb`` types are kept)."""

    uri: str
    suite: str
    components: tuple[str, ...]


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Split deb822 text into field dicts; continuation lines are joined with newlines."""
    fields: dict[str, str] = {}
    key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, None
            continue
        if raw[0] in " \t" and key is not None:
            fields[key] += "\n" + raw.strip()
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        fields[key] = value.strip()


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse a ``*.sources`` file (deb822 format) into its ``deb`` sources."""
    out: list[AptSource] = []
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").strip().lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        comps = tuple(st.get("components", "").split())
        for uri in st.get("uris", "").split():
            for suite in st.get("suites", "").split():
                out.append(AptSource(uri.rstrip("/"), suite, comps))
    return out


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse one-line ``sources.list`` text: ``deb [opts] URI SUITE COMPONENT...``."""
    out: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            rest = rest[end + 1 :].strip()
        words = rest.split()
        if len(words) >= 2:
            out.append(AptSource(words[0].rstrip("/"), words[1], tuple(words[2:])))
    return out


def _is_side_suite(suite: str) -> bool:
    return any(suite.endswith(s) for s in ("-security", "/updates", "-updates", "-backports",
                                            "-proposed-updates"))


def choose_main(sources: Iterable[AptSource]) -> AptSource | None:
    """The main archive among apt sources: ``main`` component, a release suite, no security host.

    Security archives carry only the security suites, so a URI that serves a plain release suite
    is the main archive. Among those, an entry for the bare suite wins over -updates/-backports.
    """
    usable = [s for s in sources if s.uri.startswith(_URL_SCHEMES) and "main" in s.components]
    usable = [s for s in usable if not s.suite.endswith("-security") and
              not s.suite.endswith("/updates")]
    for s in usable:
        if not _is_side_suite(s.suite):
            return s
    if usable:
        base = usable[0].suite.split("-", 1)[0]
        return AptSource(usable[0].uri, base, usable[0].components)
    return None


def read_apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every ``deb`` source in this machine's apt configuration, in apt's reading order."""
    out: list[AptSource] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        out += parse_one_line_sources(main_list.read_text(errors="replace"))
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".sources":
                out += parse_deb822_sources(f.read_text(errors="replace"))
            elif f.suffix == ".list":
                out += parse_one_line_sources(f.read_text(errors="replace"))
    return out


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() and not k.startswith("#"):
            out[k.strip()] = v.strip().strip("'\"")
    return out


def find_mirror(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    apt_dir: Path = APT_DIR,
) -> str:
    """The mirror URL: ``explicit``, else ``$XSHIM_MIRROR``, else apt's main archive."""
    env = os.environ if env is None else env
    for value, origin in ((explicit, "--mirror"), (env.get("XSHIM_MIRROR"), "XSHIM_MIRROR")):
        if value:
            if not value.startswith(_URL_SCHEMES):
                raise InputError(
                    f"{origin}: {value!r} is not an http://, https:// or file:// URL",
                    "give the mirror's base URL, the directory that holds dists/ and pool/",
                )
            return value.rstrip("/")
    main = choose_main(read_apt_sources(apt_dir))
    if main is None:
        raise InputError(
            f"no Debian mirror found in {apt_dir}/sources.list or {apt_dir}/sources.list.d/",
            "pass --mirror URL or set XSHIM_MIRROR to a Debian mirror's base URL",
        )
    return main.uri


def host_suite(apt_dir: Path = APT_DIR, os_release: Path = OS_RELEASE) -> str:
    """The host's Debian suite: from apt's main source, else ``VERSION_CODENAME``."""
    main = choose_main(read_apt_sources(apt_dir))
    if main is not None:
        return main.suite
    if os_release.is_file():
        code = parse_os_release(os_release.read_text(errors="replace")).get("VERSION_CODENAME")
        if code:
            return code
    raise InputError(
        "can't tell this host's Debian suite (no apt source, no VERSION_CODENAME in os-release)",
        "pass --suite, e.g. --suite bookworm",
    )


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


# --- checksums and ar (pure) ---------------------------------------------------------------------


def check_sha256(data: bytes, expected: str, what: str) -> bytes:
    """Return ``data`` when its SHA256 is ``expected``; raise ChecksumError otherwise."""
    got = hashlib.sha256(data).hexdigest()
    if got != expected.lower():
        raise ChecksumError(what, expected.lower(), got)
    return data


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a (System V / GNU) ar archive, as a .deb uses it."""
    if not data.startswith(b"!<arch>\n"):
        raise DebFormatError("not a .deb: no ar magic")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise DebFormatError(f"not a .deb: bad ar header at offset {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DebFormatError(f"not a .deb: bad member size at offset {pos}") from None
        start = pos + 60
        if start + size > len(data):
            raise DebFormatError(f"not a .deb: member {name!r} is truncated")
        out[name] = data[start : start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned
    return out


def _decompress(name: str, blob: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(blob)
    if name.endswith(".gz"):
        import gzip

        return gzip.decompress(blob)
    if name.endswith(".zst"):
        try:
            import zstandard

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(blob))
        except ImportError:
            return tools.run(["zstd", "-dc"], input=blob, capture=True).stdout
    if name.endswith(".tar"):
        return blob
    raise DebFormatError(f"unsupported .deb member compression: {name}")


def deb_data_tar(deb: bytes) -> tarfile.TarFile:
    """The data.tar of a .deb, decompressed in memory."""
    members = ar_members(deb)
    for name, blob in members.items():
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(_decompress(name, blob)), mode="r:")
    raise DebFormatError(f"not a .deb: no data.tar member (members: {', '.join(members)})")


def _norm(member: str) -> str:
    return os.path.normpath("/" + member.lstrip("./").lstrip("/")).lstrip("/")


def read_deb_members(deb: bytes, wanted: Iterable[str]) -> dict[str, tuple[bytes, int]]:
    """The contents and modes of some files of a .deb, following symlinks inside the package.

    Paths may be given as ``usr/bin/x``, ``./usr/bin/x`` or ``/usr/bin/x``. A missing member is a
    DebFormatError naming it.
    """
    tar = deb_data_tar(deb)
    by_path = {_norm(m.name): m for m in tar.getmembers()}
    out: dict[str, tuple[bytes, int]] = {}
    for want in wanted:
        path = _norm(want)
        for _ in range(16):  # symlink hops
            m = by_path.get(path)
            if m is None:
                raise DebFormatError(f"the package has no file {want!r}")
            if m.issym():
                base = "/" if m.linkname.startswith("/") else "/" + os.path.dirname(path)
                path = _norm(os.path.join(base, m.linkname))
                continue
            if m.islnk():
                path = _norm(m.linkname)
                continue
            f = tar.extractfile(m)
            if f is None:
                raise DebFormatError(f"{want!r} in the package is not a regular file")
            out[want] = (f.read(), m.mode & 0o7777)
            break
        else:
            raise DebFormatError(f"{want!r}: too many symlink levels in the package")
    return out


def extract_deb(deb: Path, dest: Path, members: Iterable[str] | None = None) -> list[Path]:
    """Unpack a (verified) .deb into ``dest``: everything, or only ``members`` (links followed).

    Selected members land at ``dest/<member path>`` as regular files with the package's modes.
    """
    data = deb.read_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    if members is None:
        tar = deb_data_tar(data)
        if not hasattr(tarfile, "tar_filter"):  # Python < 3.11.4 has no extraction filters
            raise DebFormatError("unpacking a whole .deb needs Python >= 3.11.4 (tar filters)")
        # 'tar' filter: nothing lands outside dest, setuid and group/other-write bits dropped.
        tar.extractall(dest, filter="tar")
        return [dest / _norm(m.name) for m in tar.getmembers() if _norm(m.name) != "."]
    from .fsutil import write_atomic

    written = []
    for name, (blob, mode) in read_deb_members(data, members).items():
        target = dest / _norm(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, blob, mode=mode & 0o755)
        written.append(target)
    return written


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
