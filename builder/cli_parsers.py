"""What every ``xshim`` sub-command parser shares, apart from cli.py so that the sub-command
modules (cli_build.py) and cli.py can both use it without importing each other."""

from __future__ import annotations

import argparse
from collections.abc import Callable

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
