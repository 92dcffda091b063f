"""The .deb format and the checks on bytes from the archive: a SHA256 against the digest the
signed index publishes, the ar members of a .deb, its data.tar (xz, gzip, zstd or plain), and
unpacking members or the whole tree. Pure functions over bytes, apart from ``extract_deb``.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from . import tools
from .errors import ChecksumError, DebFormatError


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
