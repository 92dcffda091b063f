"""Native twins (``xshim run --accelerate``): the host build of the same Debian package version
runs in place of xz, gzip, tar, dpkg-deb, dpkg-split, the sums, as and the file tools, and what
they make is byte-identical.

Two copies of the arm64 tree get the same fixed, archive-verified .debs installed with
``dpkg -i``, one emulated, one with twins; then the installed programs are used on the same
input in both. Every file the packages installed, and every output, must be the same, and the
trace must show the twins and why a candidate was left out. Units for the map's identity checks
and the dpkg database reader come first. The compilers' twins are in test_twins_compilers.py.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import builders, foreign
from xshim.builder import dpkgdb
from xshim.shim import twins as shimtwins

XSHIM = shutil.which("xshim") or "xshim"

# Installed by dpkg -i in both trees: dpkg-deb, tar and xz work through them, then xz, bzip2
# and the cross-tool-named assembler are used.
DEBS = ("xz-utils", "bzip2", "binutils-aarch64-linux-gnu", "binutils-common", "libbinutils",
        "libctf-nobfd0", "libctf0", "libgprofng0", "libjansson4")

ASM = """\
    .text
    .globl add
add:
    add x0, x0, x1
    ret
    .data
msg: .asciz "twins"
"""

# Every file tool of builder/twins.py's FILE_TOOLS and dpkg-split at work; their outputs (and
# error messages, exit statuses, modes and times) are compared between the two trees.
FILE_TOOLS_SCRIPT = """\
mkdir -p ft/a/b && cd ft && printf 'one\\ntwo\\nthree\\n' > in.txt \
&& cat in.txt in.txt > cat.out && sed -e 's/o/0/g' -e 2d in.txt > sed.out \
&& grep -n -E 't(wo|hree)' in.txt > grep.out && cp -p in.txt a/b/copy.txt \
&& mv a/b/copy.txt a/moved.txt && ln -s moved.txt a/link && readlink a/link > names.out \
&& basename /x/y/z.txt .txt >> names.out && dirname /x/y/z.txt >> names.out \
&& chmod 640 a/moved.txt && touch -d '2001-02-03 04:05:06' a/moved.txt \
&& mkdir -m 700 made && rmdir made && rm -r a/b \
&& { cmp in.txt cat.out; echo "cmp $?"; diff in.txt sed.out; echo "diff $?"; \
     rm missing; echo "rm $?"; grep -q zzz in.txt; echo "grep $?"; } > status.out 2>&1 \
&& SOURCE_DATE_EPOCH=1000000000 dpkg-split -S 60 -s /tmp/debs/xz-utils.deb part > split.out \
&& dpkg-split -I part.*.deb > split.info && dpkg-split -j -o joined.deb part.*.deb \
&& cmp joined.deb /tmp/debs/xz-utils.deb"""
FILE_TOOLS_USED = {"mkdir", "cat", "sed", "grep", "cp", "mv", "ln", "readlink", "basename",
                   "dirname", "chmod", "touch", "rmdir", "rm", "cmp", "diff", "dpkg-split"}

# -- units ---------------------------------------------------------------------------------------


def test_status_keeps_installed_packages_only() -> None:
    text = ("Package: a\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1.0\n"
            "Description: x\n more\n\n"
            "Package: b\nStatus: deinstall ok config-files\nArchitecture: arm64\nVersion: 2\n")
    got = dpkgdb.parse_status(text)
    assert got["a"] == dpkgdb.Installed("a", "1.0", "arm64")
    assert got["a:arm64"] == got["a"]
    assert "b" not in got


def _table(tmp_path: Path, content: bytes) -> tuple[shimtwins.TwinTable, Path]:
    guest = tmp_path / "usr/bin/xz"
    guest.parent.mkdir(parents=True)
    guest.write_bytes(content)
    t = shimtwins.Twin("/usr/bin/xz", "exe/usr/bin/xz", hashlib.sha256(b"guest").hexdigest(), 5,
                       "xz-utils", "1", "xz-utils", "1")
    return shimtwins.TwinTable([t], "/dev/.xshim/twin", str(tmp_path)), guest


def _match(table: shimtwins.TwinTable, guest: Path) -> shimtwins.Match | None:
    st = os.stat(guest)
    return table.match((st.st_dev, st.st_ino), st, b"/usr/bin/xz",
                       lambda: os.open(guest, os.O_RDONLY))


def test_a_listed_file_with_its_digest_gets_its_twin(tmp_path: Path) -> None:
    table, guest = _table(tmp_path, b"guest")
    m = _match(table, guest)
    assert m is not None and m.path == b"/dev/.xshim/twin/exe/usr/bin/xz" and not m.reason


def test_a_changed_file_is_emulated_with_the_reason(tmp_path: Path) -> None:
    table, guest = _table(tmp_path, b"other")
    m = _match(table, guest)
    assert m is not None and m.path == b"" and "sha256" in m.reason


def test_a_replaced_file_is_found_again_by_name(tmp_path: Path) -> None:
    table, guest = _table(tmp_path, b"guest")
    new = guest.with_name("xz.new")
    new.write_bytes(b"guest")
    new.rename(guest)  # as dpkg puts a new version in place: another inode
    m = _match(table, guest)
    assert m is not None and m.path


def test_an_unlisted_file_has_no_twin(tmp_path: Path) -> None:
    table, _guest = _table(tmp_path, b"guest")
    other = tmp_path / "usr/bin/gzip"
    other.write_bytes(b"guest")
    st = os.stat(other)
    assert table.match((st.st_dev, st.st_ino), st, b"/usr/bin/gzip", lambda: 0) is None


def test_a_map_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text('{"format": 99, "twins": []}')
    with pytest.raises(shimtwins.TwinMapError, match="format"):
        shimtwins.load(str(tmp_path / "map.json"))


class _Index:
    """An archive stand-in for the version choice: a Packages index and nothing else."""

    suite = "bookworm"

    def __init__(self, stanzas: dict[str, list[str]]) -> None:
        self.stanzas = stanzas

    def packages_index(self, debian_arch: str) -> dict[str, list[str]]:
        return self.stanzas


def _stanza(name: str, version: str, built_using: str = "") -> str:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: x.deb\n"
            f"SHA256: {'0' * 64}\nSize: 1\n" + (f"Built-Using: {built_using}\n" if built_using
                                                  else ""))


def test_only_the_exact_version_is_a_twin() -> None:
    from xshim.builder import twins
    from xshim.shim.arch import host_arch

    debs = twins._Debs(_Index({"gzip": [_stanza("gzip", "1.12-1")]}), host_arch())  # type: ignore[arg-type]
    assert not isinstance(debs.find("gzip", "1.12-1"), str)
    why = debs.find("gzip", "1.12-1+b1")
    assert isinstance(why, str) and "1.12-1+b1" in why and "it has 1.12-1" in why


def test_the_cross_compiler_must_be_built_from_the_guest_gcc_version() -> None:
    from xshim.builder import twins
    from xshim.shim.arch import host_arch

    cross = "cpp-12-aarch64-linux-gnu"
    index = _Index({cross: [_stanza(cross, "12.2.0-14cross1", "gcc-12 (= 12.2.0-14), x (= 1)")]})
    debs = twins._Debs(index, host_arch())  # type: ignore[arg-type]
    found = debs.find(cross, "12.2.0-14", "gcc-12 (= 12.2.0-14)")
    assert not isinstance(found, str) and found.version == "12.2.0-14cross1"
    why = debs.find(cross, "12.2.0-14+deb12u1", "gcc-12 (= 12.2.0-14+deb12u1)")
    assert isinstance(why, str) and "built from gcc-12 (= 12.2.0-14+deb12u1)" in why


def test_file_tools_only_on_a_guest_of_the_host_word_size_and_byte_order(tmp_path: Path) -> None:
    from xshim.builder import twins
    from xshim.shim.arch import from_platform, host_arch

    files = {"/usr/bin/tar": "tar", "/usr/bin/gzip": "gzip",
             "/usr/bin/rm": "coreutils", "/usr/bin/uname": "coreutils", "/usr/bin/ls": "coreutils",
             "/usr/bin/sed": "sed", "/usr/bin/dpkg-split": "dpkg", "/usr/bin/dpkg": "dpkg",
             "/usr/bin/dpkg-query": "dpkg", "/usr/bin/perl": "perl-base"}
    for rel in files:
        (tmp_path / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel.lstrip("/")).write_bytes(b"x")
    found = {}
    for platform, arch in (("linux/arm64", "arm64"), ("linux/arm/v7", "armhf"),
                           ("linux/s390x", "s390x")):
        db = dpkgdb.Database(tmp_path, {
            f"{p}:{arch}": dpkgdb.Installed(p, "1", arch) for p in set(files.values())},
            {f: f"{p}:{arch}" for f, p in files.items()})
        got, _ = twins.candidates(db, from_platform(platform), host_arch())
        found[arch] = {c.guest for c in got}
    # Never what reports the machine, dpkg's database tools or an interpreter.
    assert found["arm64"] == {"/usr/bin/tar", "/usr/bin/gzip", "/usr/bin/rm", "/usr/bin/sed",
                              "/usr/bin/dpkg-split"}
    # 32-bit (time_t, off_t) or the other byte order: no tar, no file tools.
    assert found["armhf"] == found["s390x"] == {"/usr/bin/gzip", "/usr/bin/dpkg-split"}


# -- integration ---------------------------------------------------------------------------------


def _run(tree: Path, cmd: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSHIM, "run", "--rootfs", str(tree), *extra, "--", "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=1200)


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _installed(tree: Path) -> list[str]:
    files: list[str] = []
    for name in DEBS:
        for lst in (tree / "var/lib/dpkg/info").glob(f"{name}*.list"):
            if lst.name.split(":")[0].removesuffix(".list") == name:
                files += [p for p in lst.read_text().splitlines() if p != "/."]
    return sorted(set(files))


@pytest.mark.integration
@pytest.mark.root(reason="xshim run needs root")
@pytest.mark.slow
def test_dpkg_install_and_tools_are_identical_with_twins(tmp_path: Path) -> None:
    archive = foreign.archive_or_skip()
    debs = tmp_path / "debs"
    debs.mkdir()
    for name in DEBS:
        _info, deb = archive.fetch_package(name, "arm64")
        shutil.copy(deb, debs / f"{name}.deb")
    trees = {}
    for mode in ("emulated", "twins"):
        tree = foreign.copy_tree(builders.finished_tree(), tmp_path / mode)
        shutil.copytree(debs, tree / "tmp/debs")
        (tree / "tmp/add.s").write_text(ASM)
        trees[mode] = tree
    accel = ("--accelerate",)
    install = "dpkg -i /tmp/debs/*.deb"
    use = ("cd /tmp && head -c 3000000 /usr/bin/dpkg > data && xz -6 -k data && bzip2 -k data "
           "&& gzip -9 -n -k data && aarch64-linux-gnu-as -o add.o add.s && sha256sum data > sums"
           f" && {FILE_TOOLS_SCRIPT}")
    for step, cmd in (("install", install), ("use", use)):
        plain = _run(trees["emulated"], cmd)
        assert plain.returncode == 0, plain.stderr
        trace = tmp_path / f"{step}.jsonl"
        fast = _run(trees["twins"], cmd, *accel, "--trace", str(trace))
        assert fast.returncode == 0, fast.stderr
        recs = _records(trace)
        twins = {Path(str(r["path"])).name for r in recs if r.get("decision") == "twin"}
        start = next(r for r in recs if r["event"] == "start")
        assert "twins" in start, start
        if step == "install":  # dpkg runs dpkg-split and rm -rf for every .deb
            assert {"dpkg-deb", "tar", "dpkg-split", "rm"} <= twins, twins
        else:
            assert {"xz", "bzip2", "gzip", "aarch64-linux-gnu-as", "sha256sum",
                    *FILE_TOOLS_USED} <= twins, twins
            used = {u["guest"] for u in start["twins"]["used"]}  # type: ignore[index]
            assert "/usr/bin/aarch64-linux-gnu-as" in used
    files = _installed(trees["emulated"])
    assert "/usr/bin/aarch64-linux-gnu-as" in files and files == _installed(trees["twins"])
    made = sorted(str(p.relative_to(trees["emulated"])) for p in
                  (trees["emulated"] / "tmp/ft").rglob("*"))
    assert made == sorted(str(p.relative_to(trees["twins"])) for p in
                          (trees["twins"] / "tmp/ft").rglob("*"))
    assert {"tmp/ft/joined.deb", "tmp/ft/split.info", "tmp/ft/a/moved.txt"} <= set(made), made
    for rel in [*files, "/tmp/data.xz", "/tmp/data.bz2", "/tmp/data.gz", "/tmp/add.o",
                "/tmp/sums", *made]:
        a, b = trees["emulated"] / rel.lstrip("/"), trees["twins"] / rel.lstrip("/")
        if a.is_symlink() or b.is_symlink():
            assert os.readlink(a) == os.readlink(b), rel
        elif a.is_file():
            assert filecmp.cmp(a, b, shallow=False), f"{rel} differs with twins"
            assert a.stat().st_mode == b.stat().st_mode, rel
        elif a.is_dir():
            assert b.is_dir() and a.stat().st_mode == b.stat().st_mode, rel
    moved = "tmp/ft/a/moved.txt"
    assert (trees["emulated"] / moved).stat().st_mtime_ns == (
        trees["twins"] / moved).stat().st_mtime_ns



BUILD_DOCKERFILE = """\
FROM --platform=linux/arm64 xshim-example/debian:arm64
COPY hello.deb /tmp/
RUN dpkg -i /tmp/hello.deb && rm /tmp/hello.deb && hello > /greeting.txt
USER nobody
RUN echo twins | gzip -n > /tmp/g.gz && test "$(gzip -dc /tmp/g.gz)" = twins
USER root
RUN sha256sum < /tmp/g.gz > /gz.sum && rm /tmp/g.gz
"""


@pytest.mark.integration
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.docker
def test_a_buildah_build_runs_twins_from_an_accelerated_bundle(
    tmp_path: Path, request: pytest.FixtureRequest, base_tree: Path, hello_deb: Path,
) -> None:
    """Copy mode in buildah: the twins run inside the build step, for root and for an
    unprivileged user alike, and what they make is what the guest's programs make."""
    from support.buildfix import PLATFORM, make_context, patch

    bundle = tmp_path / "bundle" / ".xshim"
    builders.run([XSHIM, "bundle", "--platform", PLATFORM, "--accelerate", "--base",
                  str(base_tree), "-o", str(bundle)], timeout=900).check()
    builders.run([XSHIM, "verify", str(bundle)]).check()
    ctx = make_context(tmp_path / "ctx", BUILD_DOCKERFILE, bundle, {"hello.deb": hello_deb})
    patched = patch(ctx, "copy")
    b = request.getfixturevalue("loaded")("buildah")
    r = b.build(ctx, patched, "xshim-test/twins:buildah", {"XSHIM_TRACE": "1"},
                platform=PLATFORM)
    r.check()
    twins = {line.split("native twin ")[1].split()[0].rsplit("/", 1)[1]
             for line in r.output.splitlines() if "native twin " in line}
    assert {"dpkg-deb", "tar", "gzip", "sha256sum"} <= twins, r.output[-3000:]
    # The same bytes as the guest's own programs make, emulated in a copy of the base tree.
    tree = foreign.copy_tree(base_tree, tmp_path / "tree")
    plain = _run(tree, "echo twins | gzip -n | sha256sum")
    assert plain.returncode == 0, plain.stderr
    b.buildah("from", "--name", "twins-check", "xshim-test/twins:buildah").check()
    try:
        mnt = Path(b.buildah("mount", "twins-check").check().output.strip())
        assert (mnt / "greeting.txt").read_text() == "Hello, world!\n"
        assert (mnt / "gz.sum").read_text().split()[0] == plain.stdout.split()[0]
        assert not (mnt / ".xshim").exists()
    finally:
        b.buildah("rm", "twins-check")
