"""Shared test set-up: the support package on sys.path and the binfmt_misc guard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _no_binfmt_handler(request: pytest.FixtureRequest) -> None:
    """Every integration test first proves the kernel would not have run foreign code itself."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("docker"):
        from support.foreign import assert_no_binfmt
        from xshim.shim.arch import ARCHES, host_arch, natively_runs

        host = host_arch()
        assert_no_binfmt([a.name for a in ARCHES if not natively_runs(host, a)])
