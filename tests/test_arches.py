"""Every Debian architecture end to end: ``xshim rootfs`` + second stage, then exec-heavy checks.

For each architecture in tests/support/trees.py, a minbase tree is made by ``xshim rootfs`` and
finished by ``xshim run -- /debootstrap/debootstrap --second-stage`` (once, cached). In the
finished tree, one ``xshim run`` then goes through nested shells, apt-get, dpkg, ``uname -m``
and a ``#!/usr/bin/perl`` script that runs a program itself, with a JSON trace proving that every
exec went through that architecture's emulator and none was refused or left to the kernel.

Nothing is written into the cached tree: the perl script lives in the private /dev/shm that
``xshim run`` mounts for the command.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import trees
from xshim.shim import arch as archmod

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

# Shell, then bash, then sh again; apt-get and dpkg; a perl script run by its #! line that
# itself runs `uname -m` through the shell (backticks): execs at every depth.
CHECKS = r"""
set -e
echo "uname=$(uname -m)"
echo "dpkg=$(dpkg --print-architecture)"
echo "nested=$(sh -c 'bash -c "sh -c \"echo \\\$((6 * 7))\""')"
echo "apt=$(apt-get --version | head -n 1)"
cat > /dev/shm/check.pl <<'EOF'
#!/usr/bin/perl
use strict;
my $m = `uname -m`;
chomp $m;
printf "perl=%s %s\n", $m, join(",", @ARGV);
EOF
chmod +x /dev/shm/check.pl
/dev/shm/check.pl a b
"""


def _run_checks(tree: Path, trace: Path) -> dict[str, str]:
    proc = subprocess.run(
        ["xshim", "run", "--rootfs", str(tree), "--trace", str(trace), "--", "sh", "-c", CHECKS],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


@pytest.mark.parametrize("debian_arch", sorted(trees.TARGETS))
def test_second_stage_and_exec_checks(debian_arch: str, tmp_path: Path) -> None:
    target = trees.TARGETS[debian_arch]
    row = archmod.from_platform(target.platform)
    assert row.debian == debian_arch
    tree = trees.finished(debian_arch)

    status = (tree / "var/lib/dpkg/status").read_text()
    assert "Package: perl-base\n" in status and "Package: apt\n" in status
    assert f"Architecture: {debian_arch}\n" in status
    os_release = (tree / "etc/os-release").read_text()
    assert f"VERSION_CODENAME={target.suite}" in os_release

    trace = tmp_path / "trace.jsonl"
    got = _run_checks(tree, trace)
    assert got["uname"] == target.uname, got
    assert got["dpkg"] == debian_arch
    assert got["nested"] == "42"
    assert got["apt"].startswith("apt ") and f"({debian_arch})" in got["apt"], got["apt"]
    assert got["perl"] == f"{target.uname} a,b"

    records = [json.loads(line) for line in trace.read_text().splitlines()]
    execs = [r for r in records if r["event"] == "exec"]
    # PATH searches try directories that lack the program: those execs are the kernel's ENOENT.
    odd = [r for r in execs if r["decision"] != "emulate"
           and (r["decision"], r.get("errno")) != ("kernel", "ENOENT")]
    assert not odd, odd
    emulated = [r for r in execs if r["decision"] == "emulate"]
    assert {r["emulator"] for r in emulated} == {row.qemu_static}
    assert {r["arch"] for r in emulated} == {row.name}
    paths = {r["path"] for r in emulated}
    for program in ("uname", "dpkg", "bash", "apt-get"):
        assert any(p.endswith(f"/{program}") for p in paths), (program, sorted(paths))
    scripts = [r for r in emulated if r["path"] == "/dev/shm/check.pl"]
    assert scripts and "/usr/bin/perl" in str(scripts[0].get("script")), scripts


def test_uname_is_the_hardwares_but_for_armel() -> None:
    """Under qemu, `uname -m` is what that architecture's hardware reports (the table's value),
    except armel: qemu-arm's default CPU is ARMv7 (armv7l), where an ARMv5 board says armv5tel.
    A binfmt_misc build with the same qemu says armv7l too, so xshim matches it."""
    for debian_arch, t in trees.TARGETS.items():
        row = archmod.from_platform(t.platform)
        assert row.debian == debian_arch
        if debian_arch == "armel":
            assert (row.uname, t.uname) == ("armv5tel", "armv7l")
        else:
            assert t.uname == row.uname, debian_arch
