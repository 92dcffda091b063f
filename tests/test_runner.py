"""``xshim run``'s checks of the rootfs, before anything is mounted or run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xshim.builder import cli, runner
from xshim.builder.errors import InputError


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    return root


def test_a_usable_tree_passes(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    runner.check_rootfs(root)
    (root / "dev").mkdir()
    runner.check_rootfs(root)


@pytest.mark.parametrize("make", ["symlink", "file"])
def test_dev_that_is_not_a_directory_is_refused_with_the_fix(tmp_path: Path, make: str) -> None:
    root = _tree(tmp_path)
    if make == "symlink":
        (root / "dev").symlink_to("/dev")
    else:
        (root / "dev").write_text("")
    with pytest.raises(InputError) as e:
        runner.check_rootfs(root)
    assert str(root / "dev") in str(e.value)
    assert f"mkdir {root / 'dev'}" in (e.value.hint or "")


def test_cli_refuses_it_with_status_2_and_leaves_the_tree_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path)
    (root / "dev").symlink_to("/dev")
    before = sorted(os.listdir(root))
    assert cli.main(["run", "--rootfs", str(root), "--", "/bin/true"]) == 2
    err = capsys.readouterr().err
    assert "is a symlink or a file" in err and "rm " in err
    assert sorted(os.listdir(root)) == before


def test_mount_point_never_follows_a_symlink(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "proc").symlink_to("/proc")
    (root / "sys").write_text("")
    assert runner._mount_point(root, "proc") is None
    assert runner._mount_point(root, "sys") is None
    assert runner._mount_point(root, "run") == root / "run"
    assert not (root / "run").exists(), "made only when the run starts, and removed after it"
