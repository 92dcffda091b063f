"""Base images made locally from a rootfs tree: a one-layer docker-archive, nothing pulled.

``write_image_archive`` writes a tree as an archive for ``docker load -i`` or ``buildah pull
docker-archive:...`` whose config carries the platform (Docker 20.10's ``docker import
--platform`` records the daemon's own architecture instead). The example
(examples/arm64-hello/prepare.py) and the test suite make their base images with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fsutil import sha256_file
from .platform import Platform

DEBIAN_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A fixed date keeps the archive, and so the image id, the same for the same tree.
CREATED = "2024-01-01T00:00:00Z"


def base_config(**over: Any) -> dict[str, Any]:
    """The config of Debian's own images: a PATH and ``bash`` as the command."""
    cfg: dict[str, Any] = {"Env": [DEBIAN_PATH], "Cmd": ["bash"]}
    cfg.update(over)
    return cfg


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_image_archive(
    tree: Path, out: Path, *, tag: str, platform: Platform, config: Mapping[str, Any]
) -> Path:
    """Write ``tree`` as a one-layer docker-archive tagged ``tag`` whose config says ``platform``.

    Written beside ``out`` and renamed into place, so a reader never sees half an archive.
    """
    work = Path(tempfile.mkdtemp(prefix=".image-", dir=out.parent))
    try:
        layer = work / "layer.tar"
        # Device nodes and the kernel's file systems come from the runtime, as in any base image.
        subprocess.run(
            ["tar", "-C", str(tree), "--numeric-owner", "--xattrs", "--acls",
             "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
             "-cf", str(layer), "."],
            check=True,
        )  # fmt: skip
        diff_id = "sha256:" + sha256_file(layer)
        image: dict[str, Any] = {
            "architecture": platform.architecture,
            "os": platform.os,
            "created": CREATED,
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED,
                         "created_by": f"rootfs tree ({platform.arch.platform})"}],
        }
        if platform.variant:
            image["variant"] = platform.variant
        cfg = json.dumps(image, sort_keys=True).encode()
        cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
        layer_name = diff_id.split(":")[1] + "/layer.tar"
        manifest = [{"Config": cfg_name, "RepoTags": [tag], "Layers": [layer_name]}]
        part = work / "image.tar"
        with tarfile.open(part, "w") as tf:
            _add_bytes(tf, cfg_name, cfg)
            tf.add(layer, arcname=layer_name)
            _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
        part.rename(out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
