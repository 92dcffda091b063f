"""Where the private builders keep their state, and running their commands.

Paths can be moved with XSHIM_TEST_STATE (builder data roots, image archives; default
/var/lib/xshim-test) and XSHIM_TEST_RUN (sockets, pid files; default /run/xshim-test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STATE = Path(os.environ.get("XSHIM_TEST_STATE", "/var/lib/xshim-test"))
RUNDIR = Path(os.environ.get("XSHIM_TEST_RUN", "/run/xshim-test"))


class BuilderUnavailable(RuntimeError):
    """The builder cannot run on this machine at all (the tests using it are skipped)."""


@dataclass
class Result:
    argv: list[str]
    returncode: int
    output: str
    seconds: float = 0.0

    def check(self) -> Result:
        if self.returncode != 0:
            tail = "\n".join(self.output.splitlines()[-60:])
            raise AssertionError(
                f"{' '.join(self.argv)} exited with {self.returncode}:\n{tail}"
            )
        return self


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = 1800,
) -> Result:
    t0 = time.monotonic()
    proc = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return Result(list(argv), proc.returncode, proc.stdout.decode(errors="replace"),
                  time.monotonic() - t0)  # fmt: skip


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise BuilderUnavailable(f"{what} needs root (run the tests as root)")


def terminate(pid: int, timeout: float = 60) -> None:
    """SIGTERM ``pid`` (a daemon we started or adopted), SIGKILL if it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
