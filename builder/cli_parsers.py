"""What every ``xshim`` sub-command parser shares, apart from cli.py so that the sub-command
modules (cli_build.py) and cli.py can both use it without importing each other."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .errors import InputError

Handler = Callable[[argparse.Namespace], int]


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    epilog: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=Formatter)
    p.set_defaults(handler=handler)
    return p


def add_accelerate(p: argparse.ArgumentParser, what: str) -> None:
    """--accelerate and --base, which go together (``accelerate_base`` checks the pair)."""
    p.add_argument("--accelerate", action="store_true", help=what + "; off by default")
    p.add_argument("--base", metavar="TREE",
                   help="with --accelerate: the unpacked root filesystem of the base image")


def accelerate_base(accelerate: bool, base: str | None) -> Path | None:
    """The base tree of --accelerate --base, checked as a pair."""
    if not accelerate:
        if base:
            raise InputError("--base is given without --accelerate",
                             "add --accelerate to bundle native twins for that tree")
        return None
    if not base:
        raise InputError("--accelerate needs the base image's tree: twins are the host builds "
                         "of the exact package versions installed there",
                         "add --base TREE (the unpacked root filesystem of the base image)")
    return Path(base)
