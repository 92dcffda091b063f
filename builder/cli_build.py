"""The ``xshim build`` and ``xshim index`` command lines (builder/cli.py registers them)."""

from __future__ import annotations

import argparse
import sys

from .build import BUILDERS, PROGRESS, parse_output, parse_pull, parse_secret
from .cli_parsers import accelerate_base, add_accelerate
from .cli_parsers import add_command as _add
from .values import (
    BUILD_MODE_CHOICES,
    parse_build_mode,
    parse_platform_list,
    parse_target_platforms,
)

# --- xshim build ----------------------------------------------------------------------------------

BUILD_EPILOG = """\
examples:
  xshim build --platform linux/amd64,linux/arm64 -t registry.example/app:1 --push .
  xshim build --platform linux/arm64,linux/arm/v7 -o type=oci,dest=app.tar .
  xshim build --platform linux/arm64 --load -t app:arm64 .
  xshim build --builder docker --platform linux/amd64,linux/arm64 -t reg/app:1 --push .
  xshim build --builder buildx --network host --platform linux/arm64 --load -t app .
  xshim build --qemu-suite trixie --platform linux/arm64 --load -t app .
  # CI, one runner per platform, then one index:
  xshim build --platform linux/arm64 -t reg/app --push-by-digest --metadata-file m.json .
  xshim index create -t reg/app:1 sha256:<amd64 digest> sha256:<arm64 digest>

The flags are those of 'docker buildx build'. Each platform is built once, by the builder
(auto: buildah, then podman, then Docker: BuildKit through 'docker buildx' when it reaches a
builder, else the legacy builder); platforms this host runs natively build from the Dockerfile
as it is, foreign ones from a copy patched by 'xshim patch'. The shim bundle reaches BuildKit as
a named build context (mount mode), the other builders in a generated build context (the user's
context plus the bundle); all in a private temporary directory: nothing in the context is
changed, and a .dockerignore that lets through only some files still lets the bundle through.
The platforms build side by side, their output prefixed with the platform. The images become
one OCI image index (made with buildah or podman's manifest lists; images built in Docker are
saved out of it first), pushed with --push or written with -o type=oci,dest=FILE.
Registry access follows containers' own configuration (REGISTRY_AUTH_FILE, registries.conf).
Exit status: 0 built, 1 a build failed (the platform, step and status are named), 2 bad input,
3 a missing tool.
"""


def _cmd_build(args: argparse.Namespace) -> int:
    import os

    from ..shim import arch as archmod
    from .build import BuildRequest, Output, OutputSpec, one_output, parse_build_args
    from .build_run import run_build

    outputs = list(args.output)
    if args.push:
        outputs.append(OutputSpec(Output.REGISTRY))
    if args.load:
        outputs.append(OutputSpec(Output.LOAD))
    if args.push_by_digest:
        outputs.append(OutputSpec(Output.REGISTRY, push_by_digest=True))
    result = run_build(BuildRequest(
        context=args.context,
        dockerfile=args.file or os.path.join(args.context, "Dockerfile"),
        platforms=parse_target_platforms(args.platform, archmod.host_arch()),
        tags=tuple(args.tag),
        build_args=parse_build_args(args.build_arg, os.environ),
        target=args.target,
        secrets=tuple(args.secret),
        no_cache=args.no_cache,
        pull=args.pull,
        network=args.network,
        output=one_output(outputs),
        metadata_file=args.metadata_file,
        iidfile=args.iidfile,
        progress=args.progress,
        builder=args.builder,
        mode=args.mode,
        trace=args.trace,
        accelerate=accelerate_base(args.accelerate, args.base),
        qemu_suite=args.qemu_suite,
    ))
    if result.index_digest:
        print(result.index_digest)
    elif len(result.platform_digests) == 1:
        print(next(iter(result.platform_digests.values())))
    return 0


def _parse_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "build", "build a Dockerfile for several platforms into one image index",
             BUILD_EPILOG, _cmd_build)
    p.add_argument("context", metavar="CONTEXT", help="the build context directory")
    p.add_argument("--platform", action="append", default=[], metavar="P[,P...]",
                   type=parse_platform_list,
                   help="target platforms, e.g. linux/amd64,linux/arm64 (default: the host's)")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME",
                   help="name of the image, registry/repository:tag (repeatable)")
    p.add_argument("-f", "--file", metavar="FILE",
                   help="the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                   help="a build argument (repeatable); K alone takes it from the environment")
    p.add_argument("--target", metavar="STAGE", help="build this stage")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE",
                   type=parse_secret,
                   help="a secret for RUN --mount=type=secret (not the legacy builder)")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--pull", nargs="?", const="always", default=None, metavar="never",
                   type=parse_pull,
                   help="--pull: always pull base images; --pull=never: never")
    p.add_argument("--network", metavar="MODE", help="network mode for RUN (e.g. none, host)")
    p.add_argument("--push", action="store_true", help="push the index (needs -t)")
    p.add_argument("--push-by-digest", action="store_true",
                   help="push the image untagged to -t's repository; the digest goes to stdout "
                   "and --metadata-file (then: xshim index create)")
    p.add_argument("--load", action="store_true",
                   help="put the image into the builder's local store (one platform)")
    p.add_argument("-o", "--output", action="append", default=[], metavar="SPEC",
                   type=parse_output,
                   help="type=registry | type=oci,dest=FILE | type=docker")
    p.add_argument("--metadata-file", metavar="FILE",
                   help="write the digests (index and per platform) as JSON")
    p.add_argument("--iidfile", metavar="FILE", help="write the index digest (or image id)")
    p.add_argument("--progress", default="auto", choices=PROGRESS,
                   help="the builders' output, prefixed per platform, or none (quiet)")
    p.add_argument("--builder", default="auto", choices=BUILDERS,
                   help="buildx: BuildKit (docker buildx build); docker: the legacy builder "
                   "(DOCKER_BUILDKIT=0); default auto")
    p.add_argument("--mode", default="auto", type=parse_build_mode,
                   metavar="{" + ",".join(BUILD_MODE_CHOICES) + "}",
                   help="how foreign stages reach the shim (auto: mount where the builder can)")
    add_accelerate(p, "bundle native twins for the programs of the --base tree (see "
                   "'xshim bundle --help')")
    p.add_argument("--qemu-suite", metavar="SUITE",
                   help="bundle the qemu-user of this Debian suite (e.g. trixie for qemu 10, "
                   "which emulates execveat) instead of the host suite's, checked against the "
                   "signed archive (see 'xshim bundle --help')")
    p.add_argument("--trace", metavar="FILE",
                   help="collect every foreign exec of every platform's build as JSON lines")


# --- xshim index ----------------------------------------------------------------------------------

INDEX_EPILOG = """\
examples:
  xshim index create -t reg/app:1 sha256:<digest> sha256:<digest>
  xshim index create -t reg/app:1 -t reg/app:latest reg/app@sha256:<digest> reg/app@sha256:<digest>

Makes one OCI image index of images already in a registry (as 'xshim build --push-by-digest'
leaves them), each entry's platform read from its image config, and pushes it to every -t. A bare
digest is looked up in the first -t's repository. Prints the index digest.
"""


def _cmd_index(args: argparse.Namespace) -> int:
    from .oci_index import IndexRequest, create_index

    digest, per_platform = create_index(IndexRequest(tuple(args.tag), tuple(args.source)))
    for name, d in sorted(per_platform.items()):
        print(f"{name}: {d}", file=sys.stderr)
    print(digest)
    return 0


def _parse_index(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="make image indexes from pushed images",
                       description="make image indexes from pushed images")
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    c = _add(isub, "create", "one image index from images pushed by digest", INDEX_EPILOG,
             _cmd_index)
    c.add_argument("-t", "--tag", action="append", default=[], required=True, metavar="NAME",
                   help="where to push the index (repeatable)")
    c.add_argument("source", nargs="+", metavar="DIGEST",
                   help="sha256:... (in the -t repository) or REPOSITORY@sha256:...")


# --- registry -------------------------------------------------------------------------------------
