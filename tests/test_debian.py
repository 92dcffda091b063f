"""The Debian archive client: parsers on real-shaped text, the rest against the real archive."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from support.foreign import archive_or_skip
from xshim.builder import debian
from xshim.builder.cli import exit_status
from xshim.builder.errors import InputError
from xshim.builder.fsutil import sha256_file
from xshim.shim import arch as archmod

network = pytest.mark.network

DEB822 = """\
Types: deb
# a comment between fields
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: trixie
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: sid
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example/debian/ trixie main
deb-src http://one.example/debian trixie main
deb http://one.example/debian-security trixie-security main  # trailing comment
deb cdrom:[Debian]/ trixie main
"""


def test_deb822_keeps_enabled_binary_sources_only() -> None:
    got = debian.parse_deb822_sources(DEB822)
    assert [(s.uri, s.suite) for s in got] == [
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
        ("http://security.example/debian-security", "bookworm-security"),
    ]
    assert got[0].components == ("main", "contrib")


def test_one_line_sources_skip_options_comments_and_src() -> None:
    got = debian.parse_one_line_sources(ONE_LINE)
    assert [(s.uri, s.suite, s.components) for s in got] == [
        ("http://one.example/debian", "trixie", ("main",)),
        ("http://one.example/debian-security", "trixie-security", ("main",)),
        ("cdrom:[Debian]", "trixie", ("main",)),
    ]


def test_choose_main_prefers_the_release_suite_and_never_security() -> None:
    sources = debian.parse_one_line_sources(ONE_LINE) + debian.parse_deb822_sources(DEB822)
    main = debian.choose_main(sources)
    assert main is not None
    assert (main.uri, main.suite) == ("http://one.example/debian", "trixie")
    only_security = [s for s in sources if s.suite.endswith("-security")]
    assert debian.choose_main(only_security) is None
    only_updates = debian.parse_one_line_sources("deb http://u.example/d bookworm-updates main")
    got = debian.choose_main(only_updates)
    assert got is not None and got.suite == "bookworm"


def _apt_dir(tmp_path: Path, sources: str = "", one_line: str = "") -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if sources:
        (tmp_path / "sources.list.d" / "debian.sources").write_text(sources)
    if one_line:
        (tmp_path / "sources.list").write_text(one_line)
    return tmp_path


def test_find_mirror_order(tmp_path: Path) -> None:
    apt = _apt_dir(tmp_path, DEB822)
    assert debian.find_mirror(None, {}, apt) == "http://mirror.example/debian"
    env = {"XSHIM_MIRROR": "http://env.example/debian/"}
    assert debian.find_mirror(None, env, apt) == "http://env.example/debian"
    assert debian.find_mirror("file:///srv/mirror", env, apt) == "file:///srv/mirror"
    assert debian.host_suite(apt, tmp_path / "none") == "bookworm"


def test_find_mirror_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="XSHIM_MIRROR") as e:
        debian.find_mirror(None, {"XSHIM_MIRROR": "mirror.example/debian"}, tmp_path)
    assert exit_status(e.value) == 2
    with pytest.raises(InputError, match="no Debian mirror") as e:
        debian.find_mirror(None, {}, _apt_dir(tmp_path))
    assert e.value.hint is not None and "--mirror" in e.value.hint


def test_host_suite_falls_back_to_os_release(tmp_path: Path) -> None:
    (tmp_path / "apt").mkdir()
    apt = _apt_dir(tmp_path / "apt")
    osr = tmp_path / "os-release"
    osr.write_text('PRETTY_NAME="Debian GNU/Linux trixie/sid"\nVERSION_CODENAME=trixie\n')
    assert debian.host_suite(apt, osr) == "trixie"
    osr.write_text("ID=debian\n")
    with pytest.raises(InputError, match="suite"):
        debian.host_suite(apt, osr)


def test_machine_apt_config_yields_a_main_archive() -> None:
    """On this machine's own configuration: a URL, never a -security archive."""
    sources = debian.read_apt_sources()
    if not sources:
        pytest.skip("this machine has no apt sources")
    main = debian.choose_main(sources)
    assert main is not None
    assert main.uri.startswith(("http://", "https://", "file://"))
    assert not main.suite.endswith("-security")


RELEASE = """\
Origin: Debian
Suite: stable
MD5Sum:
 e0f09148d8af4e8836adf64b3679d893  8689464 main/binary-arm64/Packages.xz
SHA256:
 {a}  8689464 main/binary-arm64/Packages.xz
 {b}  12 main/binary-arm64/Release
""".replace("{a}", "2ddb17" + "0" * 58).replace("{b}", "ab" * 32)


def test_parse_release_reads_only_the_sha256_section() -> None:
    got = debian.parse_release(RELEASE)
    assert set(got) == {"main/binary-arm64/Packages.xz", "main/binary-arm64/Release"}
    xz = got["main/binary-arm64/Packages.xz"]
    assert xz.size == 8689464 and xz.sha256.startswith("2ddb17")


PACKAGES = """\
Package: hello
Version: 2.10-3
Architecture: arm64
Description: example package
 based on GNU hello
 .
 second paragraph
Filename: pool/main/h/hello/hello_2.10-3_arm64.deb
Size: 53508
SHA256: {h}

Package: other
Version: 1
Filename: pool/o.deb
Size: x
SHA256: {h}
""".replace("{h}", "cd" * 32)


def test_packages_stanzas_and_index() -> None:
    stanzas = debian.parse_packages(PACKAGES)
    assert [s["Package"] for s in stanzas] == ["hello", "other"]
    assert stanzas[0]["Description"].splitlines() == [
        "example package", "based on GNU hello", ".", "second paragraph"]
    index = debian.index_packages(PACKAGES)
    info = debian.package_info(debian.parse_stanza(index["hello"][0]))
    assert (info.version, info.size, info.filename) == (
        "2.10-3", 53508, "pool/main/h/hello/hello_2.10-3_arm64.deb")
    with pytest.raises(debian.ArchiveError, match="other"):
        debian.package_info(debian.parse_stanza(index["other"][0]))


def test_check_sha256_names_expected_and_got() -> None:
    data = b"payload"
    good = hashlib.sha256(data).hexdigest()
    assert debian.check_sha256(data, good.upper(), "x") == data
    with pytest.raises(debian.ChecksumError) as e:
        debian.check_sha256(data + b"!", good, "thing.deb")
    assert good in str(e.value) and e.value.got in str(e.value) and "thing.deb" in str(e.value)


# --- .deb unpacking against dpkg-deb's own packages ----------------------------------------------


def _build_deb(tmp_path: Path, compression: str) -> Path:
    root = tmp_path / f"pkg-{compression}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: xshim-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n" + bytes(range(256)) * 64)
    tool.chmod(0o755)
    (root / "usr/bin/tool-link").symlink_to("tool")
    (root / "usr/share/doc/xshim-test").mkdir(parents=True)
    (root / "usr/share/doc/xshim-test/abs-link").symlink_to("/usr/bin/tool")
    deb = tmp_path / f"t-{compression}.deb"
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    proc = subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build",
                           str(root), str(deb)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"dpkg-deb can't build -Z{compression}: {proc.stderr.strip()}")
    return deb


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_extract_deb_matches_dpkg_deb(tmp_path: Path, compression: str) -> None:
    if compression == "zstd" and shutil.which("zstd") is None:
        pytest.importorskip("zstandard", reason="neither the zstd program nor python zstandard")
    deb = _build_deb(tmp_path, compression)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    debian.extract_deb(deb, ours)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(theirs)], check=True)
    for rel in ("usr/bin/tool", "usr/bin/tool-link"):
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes()
    assert (ours / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (ours / "usr/bin/tool-link").is_symlink()

    sel = tmp_path / "sel"
    wanted = ["./usr/bin/tool-link", "/usr/share/doc/xshim-test/abs-link"]
    got = debian.extract_deb(deb, sel, wanted)
    assert [p.relative_to(sel).as_posix() for p in got] == [
        "usr/bin/tool-link", "usr/share/doc/xshim-test/abs-link"]
    for p in got:  # links followed inside the package, written as files
        assert not p.is_symlink()
        assert p.read_bytes() == (theirs / "usr/bin/tool").read_bytes()
    with pytest.raises(debian.DebFormatError, match="no file"):
        debian.extract_deb(deb, sel, ["usr/bin/absent"])


def test_not_a_deb_is_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(debian.DebFormatError, match="ar magic"):
        debian.extract_deb(bad, tmp_path / "out")
    bad.write_bytes(b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n")
    with pytest.raises(debian.DebFormatError, match=r"no data\.tar"):
        debian.extract_deb(bad, tmp_path / "out")


# --- the real archive ----------------------------------------------------------------------------


def test_unreachable_archive_is_its_own_error(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    a = debian.Archive("http://127.0.0.1:9/debian", "bookworm", cache=tmp_path)
    with pytest.raises(debian.ArchiveUnreachableError) as e:
        a.release()
    assert e.value.hint is not None and "XSHIM_MIRROR" in e.value.hint
    assert not list(tmp_path.rglob("*.part"))


@network
def test_release_is_verified_and_lists_indexes() -> None:
    archive = archive_or_skip()
    release = archive.release()
    for arch in ("arm64", "armhf", "s390x", "amd64"):
        entry = release[f"main/binary-{arch}/Packages.xz"]
        assert len(entry.sha256) == 64 and entry.size > 1_000_000


@network
def test_missing_suite_and_package_are_archive_errors(tmp_path: Path) -> None:
    archive = archive_or_skip()
    other = debian.Archive(archive.mirror, "no-such-suite", cache=tmp_path)
    with pytest.raises(debian.ArchiveError, match="404") as e:
        other.release()
    assert not isinstance(e.value, debian.ArchiveUnreachableError)
    with pytest.raises(debian.ArchiveError, match="no-such-package-xshim"):
        archive.find("no-such-package-xshim", "arm64")


@network
def test_download_verify_and_extract_busybox(tmp_path: Path) -> None:
    archive = archive_or_skip()
    info, deb = archive.fetch_package("busybox-static", "armhf")
    assert sha256_file(deb) == info.sha256
    assert deb.stat().st_size == info.size
    (busybox,) = debian.extract_deb(deb, tmp_path, ["bin/busybox"])
    ident = archmod.parse_ident(busybox.read_bytes()[:64])
    assert archmod.arch_of(ident) == archmod.by_name("armhf")


@network
def test_wrong_expected_digest_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    archive = archive_or_skip()
    info = archive.find("busybox-static", "s390x")
    own = debian.Archive(archive.mirror, archive.suite, cache=tmp_path)
    wrong = dataclasses.replace(info, sha256="0" * 64)
    with pytest.raises(debian.ChecksumError) as e:
        own.fetch(wrong)
    assert e.value.expected == "0" * 64
    assert e.value.got == info.sha256  # the real bytes' digest, as the signed index has it
    assert "0" * 64 in str(e.value) and info.sha256 in str(e.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".deb", ".part")]


@network
def test_tampered_cache_entry_is_fetched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = archive_or_skip()
    info = archive.find("busybox-static", "armhf")
    own = debian.Archive(archive.mirror, archive.suite, cache=tmp_path)
    first = own.fetch(info)
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="xshim"):
        again = own.fetch(info)
    assert again == first
    assert sha256_file(again) == info.sha256
    assert "corrupt" in caplog.text


def _local_mirror(tmp_path: Path, archive: debian.Archive) -> Path:
    """A file:// copy of the suite's real InRelease, as fetched and verified by ``archive``."""
    archive.release()
    (inrelease,) = (archive.cache / "inrelease").glob(f"*-{archive.suite}-InRelease")
    mirror = tmp_path / "mirror"
    dists = mirror / "dists" / archive.suite
    dists.mkdir(parents=True)
    shutil.copyfile(inrelease, dists / "InRelease")
    return mirror


@network
def test_tampered_inrelease_fails_signature(tmp_path: Path) -> None:
    archive = archive_or_skip()
    mirror = _local_mirror(tmp_path, archive)
    path = mirror / "dists" / archive.suite / "InRelease"
    text = path.read_text()
    release = archive.release()
    real = release["main/binary-arm64/Packages.xz"].sha256
    forged = "f" * 64 if real != "f" * 64 else "e" * 64
    path.write_text(text.replace(real, forged))
    local = debian.Archive(f"file://{mirror}", archive.suite, cache=tmp_path / "cache")
    with pytest.raises(debian.SignatureError, match="does not verify"):
        local.release()


@network
def test_tampered_packages_index_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = archive_or_skip()
    mirror = _local_mirror(tmp_path, archive)
    entry = archive.release()["main/binary-armhf/Packages.xz"]
    archive.packages_index("armhf")  # the real index, now in archive's cache
    (real,) = (archive.cache / "by-sha256").glob(f"{entry.sha256}-*")
    target = mirror / "dists" / archive.suite / "main" / "binary-armhf" / "Packages.xz"
    target.parent.mkdir(parents=True)
    data = bytearray(real.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    monkeypatch.setattr(debian, "_INDEX_MEMO", {})  # make the index really be read again
    local = debian.Archive(f"file://{mirror}", archive.suite, cache=tmp_path / "cache")
    with pytest.raises(debian.ChecksumError) as e:
        local.find("busybox-static", "armhf")
    assert e.value.expected == entry.sha256
    assert not list((tmp_path / "cache").rglob("*Packages.xz*"))
