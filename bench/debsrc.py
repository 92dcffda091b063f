"""Debian source packages through the signed archive: the Sources index and a package's files.

The chain is the one builder/debian.py checks for binary packages: InRelease against the archive
keyring (gpgv), ``main/source/Sources.xz`` against its SHA256 in that signed text, and every file
of the source package against its SHA256 in the index. Nothing is taken from any other site.
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path
from typing import NamedTuple

from xshim.builder import debian
from xshim.builder.fsutil import sha256_file

SOURCES = "main/source/Sources.xz"


class SourceFile(NamedTuple):
    name: str  # file name, e.g. zlib_1.2.13.dfsg.orig.tar.gz
    sha256: str
    size: int


class SourcePackage(NamedTuple):
    name: str
    version: str
    directory: str  # pool directory, relative to the mirror's base URL
    files: tuple[SourceFile, ...]

    def file(self, suffix: str) -> SourceFile:
        """The one file whose name ends with ``suffix`` (e.g. ``.orig.tar.gz``)."""
        found = [f for f in self.files if f.name.endswith(suffix)]
        if len(found) != 1:
            raise debian.ArchiveError(
                f"source package {self.name} {self.version} has {len(found)} files ending in "
                f"{suffix!r}: {', '.join(f.name for f in self.files)}")
        return found[0]


def parse_sources(text: str, package: str) -> SourcePackage:
    """The stanza of ``package`` in a (decompressed, verified) Sources index.

    Pure. Several stanzas of one package (never in one Debian suite, but possible in a mirror's
    merged index) resolve to the last one, as builder/debian.py does for binary packages.
    """
    found = None
    for chunk in text.split("\n\n"):
        chunk = chunk.strip("\n")
        if chunk.startswith(f"Package: {package}\n"):
            found = chunk
    if found is None:
        raise debian.ArchiveError(f"source package {package!r} is not in the Sources index",
                                  "check the package name and --suite")
    st = debian.parse_stanza(found)
    files = []
    for line in st.get("Checksums-Sha256", "").splitlines():
        parts = line.split()
        if len(parts) == 3 and len(parts[0]) == 64:
            files.append(SourceFile(parts[2], parts[0].lower(), int(parts[1])))
    if not files or "Version" not in st or "Directory" not in st:
        raise debian.ArchiveError(f"Sources stanza of {package} lacks Version, Directory or "
                                  "Checksums-Sha256")
    return SourcePackage(package, st["Version"], st["Directory"], tuple(files))


def find_source(archive: debian.Archive, package: str) -> SourcePackage:
    entry = archive.release().get(SOURCES)
    if entry is None:
        raise debian.ArchiveError(f"{archive.suite} has no {SOURCES}")
    path = _fetch(archive, f"dists/{archive.suite}/{SOURCES}", entry.sha256, entry.size,
                  f"{archive.suite}/{SOURCES}")
    return parse_sources(lzma.decompress(path.read_bytes()).decode("utf-8", "replace"), package)


def fetch_source_file(archive: debian.Archive, src: SourcePackage, f: SourceFile) -> Path:
    """One file of a source package in the cache, its SHA256 checked against the index."""
    return _fetch(archive, f"{src.directory}/{f.name}", f.sha256, f.size, f.name)


def _fetch(archive: debian.Archive, rel: str, sha256: str, size: int, what: str) -> Path:
    # The same content-addressed cache as the archive client's, re-verified on every reuse.
    path = archive.cache / "by-sha256" / f"{sha256}-{os.path.basename(rel)}"
    if path.is_file() and sha256_file(path) == sha256:
        return path
    return debian.download(archive.url(rel), path, sha256, size, what)
