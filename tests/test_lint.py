"""ruff and mypy are part of the test suite: a lint failure fails the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    r = subprocess.run([ruff, "check", "shim", "builder", "tests", "bench"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy(tmp_path: Path) -> None:
    # The sources install as xshim.shim and xshim.builder; give mypy that layout with symlinks
    # so relative imports between the two halves are checked, not guessed.
    pkg = tmp_path / "xshim"
    pkg.mkdir()
    (pkg / "shim").symlink_to(ROOT / "shim")
    (pkg / "builder").symlink_to(ROOT / "builder")
    env = dict(os.environ, MYPYPATH=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "xshim.shim", "-p", "xshim.builder"],
        cwd=tmp_path, capture_output=True, text=True, env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
