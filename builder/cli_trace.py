"""The ``xshim trace`` command line (builder/cli.py registers it)."""

from __future__ import annotations

import argparse

from .cli_parsers import Formatter
from .cli_parsers import add_command as _add
from .values import parse_positive

# --- xshim trace ---------------------------------------------------------------------------------

TRACE_EPILOG = """\
examples:
  xshim run --rootfs /var/tmp/arm64 --trace t.jsonl -- apt-get install -y curl
  xshim trace summary t.jsonl
  xshim trace tree --failed build.log
  xshim trace slow -n 20 t.jsonl
  xshim trace export --format perfetto -o build.trace.json build.log   # ui.perfetto.dev
  xshim trace export --format svg -o build.svg build.log
  docker build --build-arg XSHIM_TRACE=log -f Dockerfile.xshim . 2>&1 | tee build.log

FILE is a JSONL trace (XSHIM_TRACE=FILE, xshim run --trace FILE) or a saved build log of a build
run with --build-arg XSHIM_TRACE=log (docker, BuildKit with --progress=plain, buildah, podman);
several files are read as one trace, - is stdin, FILE.gz is decompressed. XSHIM_TRACE=log+hash
(XSHIM_TRACE_HASH=1 outside a build) adds the sha256 of every program run. Exits 2 naming the
file and line when a file holds no records or a malformed one.
"""

TRACE_VIEWS = {
    "summary": "execs, CPU and wall time, per architecture, top programs by own CPU and by count",
    "tree": "the process tree: command, duration, CPU, exit status",
    "slow": "the slowest processes with their ancestry",
    "export": "a timeline: Chrome Trace Event JSON (Perfetto) or an SVG picture",
}


def _cmd_trace(args: argparse.Namespace) -> int:
    from .trace_cmd import TraceRequest, run_trace

    run_trace(TraceRequest(
        view=args.trace_view, files=tuple(args.files), format=args.format, output=args.output,
        failed=getattr(args, "failed", False), count=getattr(args, "n", 10),
    ))
    return 0


def _parse_trace(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "trace", "read exec traces: what a foreign build ran, where its time went, "
             "why it failed", TRACE_EPILOG, _cmd_trace)
    views = p.add_subparsers(dest="trace_view", metavar="VIEW", required=True)
    for name, help in TRACE_VIEWS.items():
        v = views.add_parser(name, help=help, description=help, epilog=TRACE_EPILOG,
                             formatter_class=Formatter)
        v.add_argument("files", nargs="+", metavar="FILE", help="JSONL traces or build logs")
        if name == "export":
            v.add_argument("--format", choices=["perfetto", "svg"], default="perfetto",
                           help="perfetto: Chrome Trace Event JSON; svg: a picture")
        else:
            v.add_argument("--format", choices=["text", "json"], default="text",
                           help="text for people, json for CI (default: text)")
        v.add_argument("-o", "--output", metavar="OUT",
                       help="write here (atomically) instead of stdout")
        if name == "tree":
            v.add_argument("--failed", action="store_true",
                           help="only the paths from the root to each failing or signalled process")
        if name in ("slow", "summary"):
            v.add_argument("-n", type=parse_positive, default=10, metavar="N",
                           help="how many to list (default: 10)")
