"""Base images for three platforms and a private registry, for the ``xshim build`` tests.

Trees: tree("arm64"), tree("armhf"), tree("amd64"), the cached ones of builders.finished_tree and
tests/support/trees.py.

Registry: ``registry()`` starts Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1
with a free port and a private storage directory, its config in a temporary directory, and
stops it afterwards; ``registries_conf()`` lets containers' tools (buildah, podman, skopeo) use
it over plain HTTP, as Docker does by itself for 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import builders, foreign, trees

SUITE = foreign.SUITE
PLATFORMS = {"amd64": "linux/amd64", "arm64": "linux/arm64", "armhf": "linux/arm/v7"}


def tree(debian_arch: str) -> Path:
    """A complete bookworm minbase tree for amd64, arm64 or armhf (tests/support/trees.py's
    cached ones); never change it."""
    if debian_arch == "arm64":
        return builders.finished_tree()
    if debian_arch == "armhf":
        return trees.finished("armhf")
    if debian_arch == "amd64":
        return trees.native("amd64")
    raise ValueError(debian_arch)


def base_archive(debian_arch: str, tag: str) -> Path:
    """The tree as a one-layer docker-archive tagged ``tag``, its config saying its platform."""
    return builders.base_archive(tree(debian_arch), tag=tag, platform=PLATFORMS[debian_arch],
                                 config=builders.base_config())


# --- the registry ----------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    conf: Path  # registries.conf for containers' tools

    def env(self) -> dict[str, str]:
        return {"CONTAINERS_REGISTRIES_CONF": str(self.conf)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def registry() -> Iterator[Registry]:
    prog = shutil.which("docker-registry")
    if prog is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    tmp = Path(tempfile.mkdtemp(prefix="xshim-registry-"))
    port = _free_port()
    storage = tmp / "storage"
    storage.mkdir()
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    conf = tmp / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n')
    log = (tmp / "registry.log").open("wb")
    proc = subprocess.Popen([prog, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("docker-registry did not start:\n"
                                         + (tmp / "registry.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield Registry(f"127.0.0.1:{port}", storage, conf)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
