"""The ``xshim`` command line: parse, set up logging, call the library, map errors to exit codes.

Exit codes: 0 success; 1 the work failed (or, for ``--check``, changes are needed); 2 bad input or
usage, nothing written; 3 a missing tool or privilege; ``xshim run`` exits with its command's own
status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..shim import layout, sigstate
from ..shim.errors import ShimError
from ..shim.version import __version__
from .cli_build import _parse_build, _parse_index
from .cli_parsers import Formatter, Handler, accelerate_base, add_accelerate
from .cli_parsers import add_command as _add
from .cli_trace import _parse_trace
from .errors import InputError, Unavailable
from .values import (
    MODE_CHOICES,
    parse_arch,
    parse_arch_list,
    parse_arches,
    parse_mode,
    parse_optional_arch,
    parse_platform_list,
)

log = logging.getLogger("xshim")



# --- xshim run ------------------------------------------------------------------------------------

RUN_EPILOG = """\
examples:
  xshim rootfs --platform linux/arm64 /var/tmp/arm64
  xshim run --rootfs /var/tmp/arm64 -- uname -m
  xshim run --rootfs /var/tmp/arm64 --trace stderr -- sh -c 'dpkg -l | wc -l'
  xshim run --rootfs /var/tmp/arm64 --trace /tmp/t.jsonl -- /debootstrap/debootstrap --second-stage

Every exec of a foreign program, at any depth, goes through the matching qemu-<arch>-static.
The command runs chrooted into the rootfs, with /proc, /sys and /dev mounted in a private mount
namespace that is gone when it ends. Needs root. Exits with the command's own status (128+N when
it is killed by signal N).
"""


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunRequest, run_in_rootfs

    return run_in_rootfs(RunRequest(
        rootfs=args.rootfs,
        command=tuple(args.command),
        platform=args.platform,
        qemu=tuple(args.qemu),
        trace=args.trace,
        workdir=args.workdir,
        accelerate=args.accelerate,
        qemu_suite=args.qemu_suite,
    ))


def _parse_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "run", "run a command in a foreign-architecture rootfs", RUN_EPILOG, _cmd_run)
    p.add_argument("--rootfs", required=True, metavar="DIR",
                   help="the root filesystem to chroot into")
    p.add_argument(
        "--platform",
        metavar="P",
        type=parse_optional_arch,
        help="the rootfs's platform, e.g. linux/arm64 (default: read from the rootfs's /bin/sh)",
    )
    p.add_argument(
        "--qemu",
        action="append",
        default=[],
        metavar="PATH",
        help="an emulator to use (repeatable); default: qemu-*-static found on PATH",
    )
    p.add_argument(
        "--qemu-suite",
        metavar="SUITE",
        help="run the rootfs's programs with the qemu-user of this Debian suite (e.g. trixie "
        "for qemu 10, which emulates execveat), fetched and checked against the signed "
        "archive; default: the host's qemu-*-static",
    )
    p.add_argument(
        "--trace",
        metavar="T",
        help="trace every exec: a file path (JSON lines), 'stderr'/'1' for readable lines, or "
        "'log' for marked JSON lines on stderr; read them with 'xshim trace' "
        "(default: $XSHIM_TRACE)",
    )
    p.add_argument("--workdir", "-w", metavar="DIR", default="/",
                   help="directory inside the rootfs")
    p.add_argument("--accelerate", action="store_true",
                   help="run native twins (the host build of the same Debian package version) "
                   "for programs whose output does not depend on the CPU: xz, gzip, tar, "
                   "dpkg-deb, dpkg-split, the sums, cc1, cc1plus, as, and file tools (rm, cp, "
                   "sed, grep, ...); every decision is in the trace. Also runs arm64 guests on "
                   "qemu's cheap pointer signing (-cpu max,pauth-impdef=on) unless QEMU_CPU is "
                   "set")
    p.add_argument("command", nargs="+", metavar="CMD", help="the command and its arguments")


# --- xshim rootfs ---------------------------------------------------------------------------------

ROOTFS_EPILOG = """\
examples:
  xshim rootfs --platform linux/arm64 /var/tmp/arm64
  xshim rootfs --platform linux/arm64 --second-stage /var/tmp/arm64-full
  xshim rootfs --platform linux/riscv64 --suite trixie --mirror http://mirror.example/debian /tmp/rv

Makes a Debian minbase tree with 'debootstrap --foreign' (no emulation needed); with
--second-stage it then finishes it through 'xshim run'. The mirror comes from --mirror,
$XSHIM_MIRROR, or this machine's apt sources.
"""


def _cmd_rootfs(args: argparse.Namespace) -> int:
    from .rootfs import RootfsRequest, make_rootfs

    make_rootfs(RootfsRequest(
        args.dir,
        platform=args.platform,
        suite=args.suite,
        mirror=args.mirror,
        second_stage=args.second_stage,
        variant=args.variant,
    ))
    return 0


def _parse_rootfs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "rootfs", "make a foreign Debian rootfs with debootstrap", ROOTFS_EPILOG,
             _cmd_rootfs)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--platform", default="linux/arm64", metavar="P", type=parse_arch)
    p.add_argument("--suite", default=None, help="Debian suite (default: the host's)")
    p.add_argument("--mirror", default=None, metavar="URL")
    p.add_argument("--variant", default="minbase")
    p.add_argument("--second-stage", action="store_true", help="also run the second stage")


# --- xshim patch ----------------------------------------------------------------------------------

PATCH_EPILOG = """\
examples:
  xshim patch Dockerfile -o Dockerfile.xshim
  docker build -f Dockerfile.xshim .
  xshim patch --platform linux/arm64 Dockerfile | docker build -f - .
  xshim patch --mode mount --bundle .xshim -o Dockerfile.xshim Dockerfile
  buildah bud --platform linux/arm64 -f Dockerfile.xshim .
  xshim patch --mode mount --mount-from xshim -o Dockerfile.xshim Dockerfile
  docker buildx build --build-context xshim=.xshim -f Dockerfile.xshim .
  xshim patch --platform linux/amd64,linux/arm64 -o Dockerfile.xshim Dockerfile
  xshim patch --check Dockerfile                  # CI: exit 1 when a stage needs patching
  xshim patch --check --format json Dockerfile    # hadolint-style records
  xshim patch --diff Dockerfile
  xshim patch -o Dockerfile Dockerfile            # in place (written atomically)

Stages whose platform is foreign to this host (FROM --platform=linux/arm64, an arm64v8/ image,
or --platform for stages without their own) get their RUN steps routed through the shim bundle
made by 'xshim bundle'. copy mode (default, works with every builder) copies the bundle in
after FROM and removes it, restoring /bin/sh, at the end of the stage; mount mode (BuildKit,
buildah, podman) bind-mounts it into each RUN, and swaps and restores /bin/sh the same way from
the mounted bundle. Every other byte is left as it was, and patching
a patched file changes nothing. The patched file goes to stdout unless -o is given; add
--build-arg XSHIM_TRACE=1 to the build to see every exec translation, or XSHIM_TRACE=log to
make the saved build log a trace for 'xshim trace'.
"""


def _cmd_patch(args: argparse.Namespace) -> int:
    from .patch import PatchRequest, run_patch

    needs_patching = run_patch(
        PatchRequest(
            dockerfile=args.dockerfile,
            output=args.output,
            platforms=args.platform,
            bundle=args.bundle,
            prefix=args.prefix,
            mode=args.mode,
            mount_from=args.mount_from,
            context=args.context,
            check=args.check,
            diff=args.diff,
            format=args.format,
        )
    )
    return 1 if needs_patching else 0


def _parse_patch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "patch", "rewrite a Dockerfile so its foreign-architecture stages build "
             "without binfmt_misc", PATCH_EPILOG, _cmd_patch)
    p.add_argument("dockerfile", metavar="DOCKERFILE", help="the Dockerfile, or - for stdin")
    p.add_argument("--platform", metavar="P", type=parse_platform_list, default=(),
                   help="the build's target platform, or a comma-separated list of them, as "
                   "given to 'docker buildx build --platform' (default: stages without their "
                   "own platform are native)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="write the patched Dockerfile here (atomically); - or none: stdout")
    p.add_argument("--bundle", metavar="DIR",
                   help="the bundle made by 'xshim bundle', checked and written into the "
                   "Dockerfile relative to the build context (default: .xshim, not checked)")
    p.add_argument("--prefix", metavar="PATH",
                   help="where the bundle lives in the image (default: the bundle's, or /.xshim)")
    p.add_argument("--mode", type=parse_mode, default="copy",
                   metavar="{" + ",".join(MODE_CHOICES) + "}",
                   help="copy: install into each stage (any builder); mount: bind-mount per RUN "
                   "(BuildKit, buildah, podman)")
    p.add_argument("--mount-from", metavar="NAME",
                   help="mount mode: mount the bundle from the named build context NAME "
                   "(build with --build-context NAME=BUNDLE_DIR: BuildKit, buildah, podman), "
                   "so the bundle need not be inside the build context")
    p.add_argument("--context", metavar="DIR", default=".",
                   help="the build context --bundle is relative to (default: .)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; list the stages that need patching, exit 1 if any")
    p.add_argument("--diff", action="store_true",
                   help="print a unified diff instead of the patched file")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="findings as text lines or hadolint-style JSON records")


# --- xshim bundle ---------------------------------------------------------------------------------

BUNDLE_EPILOG = """\
examples:
  xshim bundle --platform linux/arm64
  xshim bundle --platform linux/arm64,linux/arm/v7 -o build/.xshim
  xshim bundle --platform linux/riscv64 --qemu /opt/qemu/qemu-riscv64-static
  xshim bundle --platform linux/arm64 --prefix /opt/xshim -o /tmp/xshim

Writes a self-contained, host-native bundle to DIR, meant to sit at PREFIX inside a foreign
image: bin/sh (the frozen exec supervisor, the image's /bin/sh replacement), bin/xshim-exec,
bin/xshim-install, bin/xshim-restore, the host loader and libraries it needs in lib/, the
qemu-<arch>-static emulators in qemu/, and manifest.json with every file's sha256. Emulators
come from --qemu, else the host's qemu-user-static, else Debian's package (verified). The
frozen supervisor is cached ($XSHIM_CACHE or ~/.cache/xshim); the first build takes a minute.
An older bundle in DIR is replaced atomically; anything else there is left alone.
"""


def _cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import BundleRequest, run_bundle

    run_bundle(BundleRequest(
        args.output,
        tuple(parse_arches(args.platform)),
        prefix=args.prefix,
        qemu=tuple(args.qemu),
        rebuild=args.rebuild,
        accelerate=accelerate_base(args.accelerate, args.base),
        qemu_suite=args.qemu_suite,
    ))
    return 0



def _parse_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "bundle", "build the self-contained shim bundle for foreign platforms",
             BUNDLE_EPILOG, _cmd_bundle)
    p.add_argument("--platform", action="append", required=True, metavar="P[,P...]",
                   type=parse_arch_list,
                   help="target platforms, e.g. linux/arm64,linux/arm/v7 (repeatable)")
    p.add_argument("-o", "--output", default=layout.DEFAULT_DIR, metavar="DIR",
                   help=f"where to write the bundle (default: {layout.DEFAULT_DIR})")
    p.add_argument("--prefix", default=layout.DEFAULT_PREFIX,
                   help=f"where the bundle will sit inside the image (default: "
                   f"{layout.DEFAULT_PREFIX})")
    p.add_argument("--qemu", action="append", default=[], metavar="PATH",
                   help="an emulator to bundle, named qemu-<target>[-static] (repeatable)")
    p.add_argument("--qemu-suite", metavar="SUITE",
                   help="ship the qemu-user of this Debian suite (e.g. trixie for qemu 10) "
                   "instead of the host suite's, checked against the signed archive")
    p.add_argument("--rebuild", action="store_true",
                   help="freeze the supervisor again even when it is cached")
    add_accelerate(p, "add native twins for the programs of the --base tree (the host build "
                   "of the same Debian package version, for xz, gzip, tar, dpkg-deb, dpkg-split, "
                   "the sums, cc1, cc1plus, as, and file tools: rm, cp, sed, grep, ...), and run "
                   "arm64 guests on qemu's cheap pointer signing (-cpu max,pauth-impdef=on) "
                   "unless QEMU_CPU is set")


# --- xshim verify ---------------------------------------------------------------------------------

VERIFY_EPILOG = """\
examples:
  xshim verify .xshim
  xshim verify --json .xshim
  xshim verify --root /var/tmp/arm64 /var/tmp/arm64/.xshim

Checks every file against manifest.json (sha256, size, mode, symlink targets), that no file is
missing or extra, that nothing is setuid, setgid or world-writable, that guest/ is empty, that
every ELF is built for the host, and that every PT_INTERP and DT_NEEDED resolves inside the
bundle at its prefix. With --root TREE it also checks that the bundle sits
at its prefix inside TREE (a bundle anywhere else cannot start: the kernel reports its loader
as missing). Exits 0 when all is well, 1 naming each problem.
"""


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import VerifyRequest, run_verify

    ok = run_verify(VerifyRequest(args.dir, root=args.root,
                                  format="json" if args.json else "text"))
    return 0 if ok else 1


def _parse_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "verify", "check a shim bundle's integrity and self-containment",
             VERIFY_EPILOG, _cmd_verify)
    p.add_argument("dir", metavar="DIR", type=Path, help="the bundle directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--root", metavar="TREE", type=Path,
                   help="also check that DIR sits at its prefix inside this root filesystem")


# --- registry ------------------------------------------------------------------------------------

PARSERS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _parse_run,
    _parse_rootfs,
    _parse_patch,
    _parse_bundle,
    _parse_verify,
    _parse_trace,
    _parse_build,
    _parse_index,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xshim",
        description="Build foreign-architecture container images on hosts without binfmt_misc.",
        formatter_class=Formatter,
        epilog="Run 'xshim COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"xshim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def exit_status(e: ShimError) -> int:
    """The exit status for an error: 2 bad input (nothing written), 3 something this host lacks
    (a program, a privilege, an emulator), 1 the work failed."""
    if isinstance(e, InputError):
        return 2
    if isinstance(e, Unavailable):
        return 3
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    sigstate.original()  # the caller's signal state, before anything installs a handler
    args_list = sys.argv[1:] if argv is None else list(argv)
    # A guess before parsing, for an error while parsing; the parsed option once there is one
    # (a command's own -v, as in xshim run -- ls -v, is not ours).
    verbose = any(a in ("-v", "--verbose") for a in args_list)
    try:
        # The type= converters raise InputError for bad values (a platform the table lacks).
        args = build_parser().parse_args(args_list)
        verbose = args.verbose
        level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
        logging.basicConfig(level=level, format="xshim: %(message)s", stream=sys.stderr)
        handler: Handler = args.handler
        return handler(args)
    except ShimError as e:
        return _report(e.message, e.hint, exit_status(e), verbose)
    except KeyboardInterrupt:
        print("xshim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (xshim patch ... | head): like any filter, stop.
        _quiet_stdout()
        return 1
    except OSError as e:
        return _report(_describe_os_error(e), None, 1, verbose)
    except Exception as e:
        return _report(f"internal error: {type(e).__name__}: {e}",
                       None if verbose else "run with -v to see where it happened",
                       1, verbose)


def _report(message: str, hint: str | None, code: int, verbose: bool) -> int:
    if verbose:
        import traceback

        traceback.print_exc(file=sys.stderr)
    print(f"xshim: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return code


def _describe_os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{': '.join(names)}: {what}" if names else what


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush has nowhere to fail."""
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
