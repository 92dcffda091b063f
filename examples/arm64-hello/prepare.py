#!/usr/bin/env python3
"""Material for the arm64-hello example, made locally: nothing is pulled from a registry.

  prepare.py image TREE ARCHIVE --tag NAME:TAG [--platform linux/arm64]
      Write the rootfs TREE as a one-layer docker-archive whose config carries the platform, for
      ``docker load -i ARCHIVE`` or ``buildah pull docker-archive:ARCHIVE``. (Docker 20.10's
      ``docker import --platform`` records the daemon's own architecture, so it can't be used.)
  prepare.py deb PACKAGE DEST [--platform linux/arm64] [--suite SUITE]
      Fetch PACKAGE for the platform's Debian architecture to DEST, checked against the signed
      archive index; the mirror comes from $XSHIM_MIRROR or this machine's apt configuration.

The test suite makes its base images with the same code (tests/support/builders.py), so the
example's flow is the tested one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xshim.shim import arch as archmod

DEBIAN_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A fixed date keeps the archive, and so the image id, the same for the same tree.
CREATED = "2024-01-01T00:00:00Z"


def base_config(**over: Any) -> dict[str, Any]:
    """The config of Debian's own images: a PATH and ``bash`` as the command."""
    cfg: dict[str, Any] = {"Env": [DEBIAN_PATH], "Cmd": ["bash"]}
    cfg.update(over)
    return cfg


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_image_archive(
    tree: Path, out: Path, *, tag: str, platform: str, config: Mapping[str, Any]
) -> Path:
    """Write ``tree`` as a one-layer docker-archive tagged ``tag`` whose config says ``platform``.

    Written beside ``out`` and renamed into place, so a reader never sees half an archive.
    """
    row = archmod.from_platform(platform)
    os_name, arch_name, *variant = row.platform.split("/")
    given = platform.split("/")
    if len(given) == 3:
        variant = [given[2]]
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
        diff_id = "sha256:" + _sha256_file(layer)
        image: dict[str, Any] = {
            "architecture": arch_name,
            "os": os_name,
            "created": CREATED,
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": f"rootfs tree ({row.platform})"}],
        }
        if variant:
            image["variant"] = variant[0]
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


def fetch_deb(package: str, dest: Path, *, platform: str, suite: str | None = None) -> Path:
    """Download ``package`` for ``platform`` to ``dest``, verified against the signed archive."""
    from xshim.builder.debian import Archive

    debian_arch = archmod.from_platform(platform).debian
    _, path = Archive.discover(suite=suite).fetch_package(package, debian_arch)
    shutil.copyfile(path, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    img = sub.add_parser("image", help="rootfs tree -> docker-archive")
    img.add_argument("tree", type=Path)
    img.add_argument("archive", type=Path)
    img.add_argument("--tag", required=True)
    img.add_argument("--platform", default="linux/arm64")
    deb = sub.add_parser("deb", help="fetch a verified Debian package")
    deb.add_argument("package")
    deb.add_argument("dest", type=Path)
    deb.add_argument("--platform", default="linux/arm64")
    deb.add_argument("--suite", default=None, help="Debian suite (default: this machine's)")
    args = p.parse_args(argv)
    if args.what == "image":
        if not (args.tree / "bin").exists():
            p.error(f"{args.tree}: not a rootfs tree (no bin/)")
        write_image_archive(args.tree, args.archive, tag=args.tag, platform=args.platform,
                            config=base_config())
    else:
        fetch_deb(args.package, args.dest, platform=args.platform, suite=args.suite)
    print(args.archive if args.what == "image" else args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
