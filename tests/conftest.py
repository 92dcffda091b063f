"""Shared test set-up: the support package on sys.path, the ``root`` marker, the binfmt_misc
guard."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT_REASON = "needs root (chroot, mounts, dockerd): run the tests as root"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``root`` is skipped, with the reason, when the tests do not run as root;
    ``pytest.mark.root(reason=...)`` says why that test needs it."""
    if os.geteuid() == 0:
        return
    for item in items:
        marker = item.get_closest_marker("root")
        if marker is not None:
            reason = marker.kwargs.get("reason") or ROOT_REASON
            item.add_marker(pytest.mark.skip(reason=f"not root: {reason}"))


@pytest.fixture(autouse=True)
def _no_binfmt_handler(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every integration test first proves the kernel would not have run foreign code itself,
    and a real build must not have registered a handler on its way either."""
    marked = request.node.get_closest_marker("docker")
    if request.node.get_closest_marker("integration") or marked:
        _assert_no_binfmt()
    yield
    if marked:
        _assert_no_binfmt()


def _assert_no_binfmt() -> None:
    from support.foreign import assert_no_binfmt
    from xshim.shim.arch import ARCHES, host_arch, natively_runs

    host = host_arch()
    assert_no_binfmt([a.name for a in ARCHES if not natively_runs(host, a)])


# The real-build fixtures (one instance of each builder per test session), for test_builds*.py.
from support.buildfix import (  # noqa: E402, F401
    _builders_to_ourselves,
    base_archive,
    base_tree,
    buildah,
    buildkit,
    bundle,
    dockerd,
    hello_deb,
    loaded,
    podman,
    podman_chroot,
)
