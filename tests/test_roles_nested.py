"""The bundle's roles (/bin/sh and xshim-exec) reach their emulator from a nested root and give
emulated processes the kernel's names, as under binfmt_misc.

The same arm64 busybox tree as tests/test_signals.py, with a real bundle at /.xshim: a chroot
into a copy of busybox has no /.xshim, so the emulator must come from outside the new root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_signals import bundled, in_bundle, run

pytestmark = [pytest.mark.root, pytest.mark.integration]

__all__ = ["bundled"]  # the fixture, shared with test_signals

SCRIPT = (
    "/bin/busybox rm -rf /tmp/sub; /bin/busybox mkdir -p /tmp/sub/bin; "
    "/bin/busybox cp /bin/busybox /tmp/sub/bin/; "
    "/bin/busybox chroot /tmp/sub /bin/busybox echo in-chroot; echo $?; "
    "/bin/busybox chroot /tmp/sub /bin/busybox sh -c 'exit 3'; echo $?; "
    "/bin/busybox cat /proc/self/comm; "
    "/bin/busybox printf '#!/bin/sh\\n/bin/busybox cat /proc/$$/comm\\n' "
    "> /tmp/a-script-of-more-than-sixteen; "
    "/bin/busybox chmod +x /tmp/a-script-of-more-than-sixteen; "
    "/tmp/a-script-of-more-than-sixteen"
)
EXPECTED = "in-chroot\n0\n3\nbusybox\na-script-of-mor\n"

ROLES: dict[str, Callable[[Path], list[str]]] = {
    "sh": lambda root: in_bundle(root, "/.xshim/bin/sh", "-c", SCRIPT),
    "xshim-exec": lambda root: in_bundle(root, "/.xshim/bin/xshim-exec", "/bin/sh", "-c", SCRIPT),
}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_chroot_and_process_names_in_a_bundle_role(bundled: Path, role: str) -> None:
    (bundled / "tmp").mkdir(exist_ok=True)
    r = run(ROLES[role](bundled))
    assert (r.returncode, r.stdout) == (0, EXPECTED), r.stderr[-1000:]
    assert "xshim:" not in r.stderr, r.stderr[-1000:]
