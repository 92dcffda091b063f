#!/usr/bin/env python3
"""Material for the arm64-hello example, made locally: nothing is pulled from a registry.

  prepare.py image TREE ARCHIVE --tag NAME:TAG [--platform linux/arm64]
      Write the rootfs TREE as a one-layer docker-archive whose config carries the platform, for
      ``docker load -i ARCHIVE`` or ``buildah pull docker-archive:ARCHIVE``. (Docker 20.10's
      ``docker import --platform`` records the daemon's own architecture, so it can't be used.)
  prepare.py deb PACKAGE DEST [--platform linux/arm64] [--suite SUITE]
      Fetch PACKAGE for the platform's Debian architecture to DEST, checked against the signed
      archive index; the mirror comes from $XSHIM_MIRROR or this machine's apt configuration.

The image is written by xshim.builder.image, with which the test suite makes its base images
too, so the example's flow is the tested one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from xshim.builder.image import base_config, write_image_archive
from xshim.builder.platform import Platform
from xshim.shim.arch import UnknownPlatformError


def fetch_deb(package: str, dest: Path, *, platform: Platform, suite: str | None = None) -> Path:
    """Download ``package`` for ``platform`` to ``dest``, verified against the signed archive."""
    from xshim.builder.debian import Archive

    _, path = Archive.discover(suite=suite).fetch_package(package, platform.arch.debian)
    shutil.copyfile(path, dest)
    return dest


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except UnknownPlatformError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    img = sub.add_parser("image", help="rootfs tree -> docker-archive")
    img.add_argument("tree", type=Path)
    img.add_argument("archive", type=Path)
    img.add_argument("--tag", required=True)
    img.add_argument("--platform", default="linux/arm64", type=_platform)
    deb = sub.add_parser("deb", help="fetch a verified Debian package")
    deb.add_argument("package")
    deb.add_argument("dest", type=Path)
    deb.add_argument("--platform", default="linux/arm64", type=_platform)
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
