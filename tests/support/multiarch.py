"""Base images for three platforms and a private registry, for the ``xshim build`` tests.

Trees (cached in the test cache, built once under a lock, renamed into place when complete):
  tree("arm64")  the finished arm64 minbase tree (builders.finished_tree)
  tree("armhf")  armhf: ``xshim rootfs`` + ``xshim run ... --second-stage``
  tree("amd64")  amd64: plain ``debootstrap --variant=minbase`` on the host
The cache names are those tests/support's other tree helpers use for the same trees, so a tree
made by either is reused by both.

Registry: ``registry()`` starts Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1
with a free port and a private storage directory, its config in a temporary directory, and
stops it afterwards; ``registries_conf()`` lets containers' tools (buildah, podman, skopeo) use
it over plain HTTP, as Docker does by itself for 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import os
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

from . import builders, foreign

SUITE = foreign.SUITE
PLATFORMS = {"amd64": "linux/amd64", "arm64": "linux/arm64", "armhf": "linux/arm/v7"}


def _run(argv: list[str], log: Path) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=3600, check=False)
    out = proc.stdout.decode(errors="replace")
    log.write_text(out)
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-40:])
        raise AssertionError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")


def _cached_tree(name: str, make: list[list[str]]) -> Path:
    """``cache_root()/name``: the commands (with TREE for the tree's path) run in a temporary
    directory beside it, then the tree renamed into place."""
    final = foreign.cache_root() / name
    if final.exists():
        return final
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    foreign.archive_or_skip(SUITE)
    with foreign.locked(foreign.cache_root() / f".{name}.lock"):
        if final.exists():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=final.parent))
        try:
            tree = work / "rootfs"
            for argv in make:
                _run([str(tree) if a == "TREE" else a for a in argv],
                     foreign.cache_root() / f"{name}.log")
            assert (tree / "var/lib/dpkg/status").is_file()
            assert not (tree / "debootstrap").exists(), f"debootstrap did not finish {name}"
            os.rename(tree, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def tree(debian_arch: str) -> Path:
    """A complete bookworm minbase tree for amd64, arm64 or armhf; never change it."""
    if debian_arch == "arm64":
        return builders.finished_tree()
    if debian_arch == "armhf":
        return _cached_tree(f"armhf-{SUITE}-minbase-finished", [
            ["xshim", "rootfs", "--platform", "linux/arm/v7", "--suite", SUITE, "TREE"],
            ["xshim", "run", "--rootfs", "TREE", "--", "/debootstrap/debootstrap",
             "--second-stage"],
        ])
    if debian_arch == "amd64":
        from xshim.builder import debian

        argv = ["debootstrap", "--arch=amd64", "--variant=minbase"]
        if debian.DEFAULT_KEYRING.is_file():
            argv.append(f"--keyring={debian.DEFAULT_KEYRING}")
        return _cached_tree(f"amd64-{SUITE}-minbase-native",
                            [[*argv, SUITE, "TREE", debian.find_mirror(None)]])
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
