"""``xshim rootfs``: input checks, all-or-nothing creation, and the real debootstrap stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import trees
from support.foreign import archive_or_skip, arm64_first_stage, cache_root
from xshim.builder import cli, rootfs
from xshim.builder.errors import InputError, ToolFailedError
from xshim.builder.values import parse_arch
from xshim.shim import arch as archmod

root_only = pytest.mark.root(reason="debootstrap needs root")


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_non_empty_dir_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "tree"
    target.mkdir()
    (target / "keep").write_text("mine")
    assert cli.main(["rootfs", "--mirror", "http://127.0.0.1:9/debian", str(target)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "hint:" in err
    assert [p.name for p in target.iterdir()] == ["keep"]
    assert _siblings(target) == []


@pytest.mark.parametrize(("platform", "message"), [
    ("linux/vax", "unknown platform"),
    ("linux/arm64be", "no port"),
])
def test_bad_platform_is_input_error(tmp_path: Path, platform: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        rootfs.make_rootfs(rootfs.RootfsRequest(tmp_path / "t", platform=parse_arch(platform)))
    assert not (tmp_path / "t").exists()


def test_target_must_be_a_directory_with_a_parent(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        rootfs.make_rootfs(rootfs.RootfsRequest(f))
    with pytest.raises(InputError, match="no such directory") as e:
        rootfs.make_rootfs(rootfs.RootfsRequest(tmp_path / "missing" / "tree"))
    assert e.value.hint is not None and "mkdir -p" in e.value.hint


def test_mounts_under_reads_mountinfo() -> None:
    info = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:5 / /srv/tree/proc rw - proc proc rw\n"
        "31 22 0:6 / /srv/tree\\040b/dev rw - devtmpfs udev rw\n"
        "32 22 0:7 / /srv/treehouse rw - tmpfs tmpfs rw\n"
    )
    assert rootfs.mounts_under(Path("/srv/tree"), info) == ["/srv/tree/proc"]
    assert rootfs.mounts_under(Path("/srv/tree b"), info) == ["/srv/tree b/dev"]


@root_only
def test_failing_debootstrap_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    with pytest.raises(ToolFailedError, match="debootstrap") as e:
        rootfs.make_rootfs(rootfs.RootfsRequest(target, suite="bookworm",
                                                mirror=f"file://{tmp_path}/no-mirror"))
    assert e.value.returncode != 0
    assert not target.exists()
    assert _siblings(target) == []


@root_only
@pytest.mark.network
@pytest.mark.slow
def test_arm64_first_stage_fixture_is_a_foreign_tree() -> None:
    tree = arm64_first_stage()
    assert (tree / "debootstrap" / "debootstrap").is_file()
    assert os.path.lexists(tree / "bin" / "sh")
    dash = tree / "usr" / "bin" / "dash"
    ident = archmod.parse_ident(dash.read_bytes()[:64])
    assert archmod.arch_of(ident) == archmod.by_name("aarch64")
    assert os.stat(tree).st_mode & 0o777 == 0o755
    assert not [p for p in cache_root().iterdir() if p.name.endswith(".part")
                and p.name.startswith(f".{tree.name}.")]


@root_only
@pytest.mark.network
@pytest.mark.integration
@pytest.mark.slow
def test_cli_second_stage_finishes_the_tree() -> None:
    """The whole thing through the CLI, first stage then the second one under xshim run, in one
    ``xshim rootfs --second-stage`` command: the test trees make one of theirs this way (the
    quickest), and nothing may be left beside it."""
    tree = trees.finished(trees.ONE_COMMAND)
    took = trees.times(trees.ONE_COMMAND)
    assert "rootfs_second_stage" in took, f"{tree} was not made by xshim rootfs --second-stage"
    log = tree.with_name(f"{tree.name}.log").read_text()
    assert "Base system installed successfully" in log, log[-3000:]
    status = (tree / "var/lib/dpkg/status").read_text()
    assert status.count("Status: install ok installed") > 50
    assert not (tree / "debootstrap").exists()  # the second stage removes it when done


@pytest.mark.network
def test_suite_without_the_port_is_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """riscv64 is a Debian release architecture from trixie on: bookworm is refused at once."""
    archive = archive_or_skip("bookworm")
    target = tmp_path / "rv"
    argv = ["rootfs", "--platform", "linux/riscv64", "--suite", "bookworm",
            "--mirror", archive.mirror, str(target)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "bookworm has no riscv64 port" in err and "--suite trixie" in err
    assert list(tmp_path.iterdir()) == []
