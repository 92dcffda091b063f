"""``xshim build``: the plan from a Dockerfile and a platform list to builder command lines.

Pure: nothing here touches the disk or runs a program. The command line gives a ``BuildRequest``
of typed values (builder/cli_build.py parses the options, ``parse_output`` and ``parse_secret``
among its converters); ``check_request`` refuses combinations that cannot work; ``plan_platform``
decides, per platform, whether the host runs it natively (the user's Dockerfile as it is) or
through the shim (the Dockerfile patched for that platform, with the bundle in a generated build
context), and ``builder_argv`` writes the builder's command line. builder/build_run.py carries
the plan out; builder/oci_index.py assembles the per-platform images into one index.

The user's files are never changed: the patched Dockerfiles and the bundle live in a private
temporary directory. How the bundle reaches the build depends on the builder. BuildKit (``docker
buildx build``) in mount mode takes it as a named build context (``--build-context``), bind-mounted
by each foreign RUN, and reads the user's context as it is: the user's ``.dockerignore`` never
sees the bundle. Every other case (the legacy Docker builder, which has no named contexts;
buildah and podman; copy mode, whose COPY of the bundle reads the main context) uses a generated
build context, the user's context plus the bundle with the ``.dockerignore`` extended so that it
lets the bundle through. Each builder reads a Dockerfile outside its context (``-f``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..shim import arch as archmod
from .dockerfile import TRACE_ARG, Mode, Options, patch
from .errors import InputError
from .platform import Platform
from .qemu import check_suite

BUILDERS = ("auto", "buildx", "docker", "buildah", "podman")
PROGRESS = ("auto", "plain", "quiet")
# The named build context that carries the bundle to BuildKit (mount mode). A fixed name, so that
# the patched RUN lines, and with them BuildKit's cache keys, are the same from build to build.
BUNDLE_CONTEXT = "xshim-bundle"
# A traced step's shim writes marked JSON records into the step's own output (the build log).
TRACE_TO = "log"


class Output(Enum):
    NONE = "none"  # build only (buildx warns the same way)
    REGISTRY = "registry"
    OCI = "oci"
    LOAD = "docker"


@dataclass(frozen=True)
class OutputSpec:
    kind: Output
    dest: str | None = None  # the OCI archive
    push_by_digest: bool = False


def parse_output(value: str) -> OutputSpec:
    """One ``-o`` value in buildx's CSV form: ``type=registry``, ``type=oci,dest=app.tar``..."""
    fields: dict[str, str] = {}
    for item in value.split(","):
        key, eq, val = item.partition("=")
        if not eq:
            raise InputError(f"-o {value!r}: {item!r} is not key=value",
                             "use e.g. -o type=oci,dest=app.tar or -o type=registry")
        fields[key.strip().lower()] = val.strip()
    kind = fields.pop("type", "")
    by_digest = fields.pop("push-by-digest", "false").lower() == "true"
    fields.pop("name-canonical", None)
    push = fields.pop("push", "")
    dest = fields.pop("dest", None)
    if fields:
        raise InputError(f"-o {value!r}: unsupported attribute(s) {', '.join(sorted(fields))}",
                         "xshim build knows type, dest, push and push-by-digest")
    if kind == "registry" or (kind == "image" and push.lower() == "true"):
        return OutputSpec(Output.REGISTRY, push_by_digest=by_digest)
    if kind == "oci":
        if not dest or dest == "-":
            raise InputError(f"-o {value!r}: type=oci needs dest=FILE",
                             "use e.g. -o type=oci,dest=app.tar")
        return OutputSpec(Output.OCI, dest=dest)
    if kind in ("docker", "image"):
        return OutputSpec(Output.LOAD)
    raise InputError(f"-o {value!r}: unsupported type {kind!r}",
                     "use type=registry, type=oci,dest=FILE or type=docker")


def one_output(outputs: Sequence[OutputSpec]) -> OutputSpec:
    """The one output of ``-o``, ``--push``, ``--load`` and ``--push-by-digest`` together."""
    if len({o.kind for o in outputs}) > 1:
        raise InputError("give one output: --push, --load or one -o",
                         "build twice for two outputs (the second build is cached)")
    return max(outputs, key=lambda o: o.push_by_digest) if outputs else OutputSpec(Output.NONE)


_PULL = {"always": True, "true": True, "never": False, "false": False, "missing": None}


def parse_pull(value: str) -> bool | None:
    """``--pull[=always|never|missing]``: True always, False never, None the builder's default."""
    if value not in _PULL:
        raise InputError(f"--pull={value}", "use --pull, --pull=always or --pull=never")
    return _PULL[value]


@dataclass(frozen=True)
class Secret:
    id: str
    src: str


def parse_secret(value: str) -> Secret:
    fields = dict(item.partition("=")[::2] for item in value.split(","))
    sid = fields.get("id", "")
    src = fields.get("src") or fields.get("source") or ""
    if not sid or not src or fields.get("type", "file") != "file":
        raise InputError(f"--secret {value!r}: need id=ID,src=FILE",
                         "use e.g. --secret id=npmrc,src=$HOME/.npmrc")
    return Secret(sid, src)


def parse_build_args(values: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``K=V``, or ``K`` alone to take K from the environment (docker's rule: unset means skip)."""
    out: dict[str, str] = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not key:
            raise InputError(f"--build-arg {value!r}: no name", "use --build-arg NAME=VALUE")
        if eq:
            out[key] = val
        elif key in environ:
            out[key] = environ[key]
    return out


@dataclass(frozen=True)
class BuildRequest:
    """The command line, checked. Paths are as given; build_run resolves them."""

    context: str
    dockerfile: str
    platforms: tuple[Platform, ...]
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    secrets: tuple[Secret, ...] = ()
    no_cache: bool = False
    pull: bool | None = None  # True: always; False: never; None: the builder's default
    network: str | None = None
    output: OutputSpec = OutputSpec(Output.NONE)
    metadata_file: str | None = None
    iidfile: str | None = None
    progress: str = "auto"
    builder: str = "auto"
    mode: Mode | None = None  # None: auto (resolve_mode)
    trace: str | None = None
    accelerate: Path | None = None  # the base tree whose programs get native twins
    qemu_suite: str | None = None  # the Debian suite whose qemu-user the bundle ships


def check_request(req: BuildRequest) -> None:
    """Reject combinations that cannot work, before anything is built."""
    out = req.output
    if out.kind is Output.LOAD and len(req.platforms) > 1:
        raise InputError(
            f"--load takes one platform, not {len(req.platforms)} "
            f"({', '.join(p.name for p in req.platforms)}): a local image store holds one "
            "image per tag", "use --push or -o type=oci,dest=FILE for several platforms")
    if out.kind is Output.REGISTRY and not req.tags:
        raise InputError("--push needs a name to push to", "add -t REGISTRY/REPOSITORY:TAG")
    if out.push_by_digest and len(req.tags) != 1:
        raise InputError("--push-by-digest needs exactly one -t naming the repository",
                         "use e.g. -t registry.example/app --push-by-digest")
    if req.qemu_suite is not None:
        check_suite(req.qemu_suite)
    if req.progress not in PROGRESS:
        raise InputError(f"--progress {req.progress!r}", "use auto, plain or quiet")
    for tag in req.tags:
        if not tag or any(c.isspace() for c in tag) or tag != tag.strip():
            raise InputError(f"-t {tag!r}: not an image name", "use e.g. -t registry/app:1")


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlatformPlan:
    platform: Platform
    native: bool  # the user's Dockerfile unchanged: no stage needs the shim
    dockerfile_text: str  # what the builder reads (patched for foreign stages)
    emulated: tuple[archmod.Arch, ...]  # the stages' foreign architectures, for the bundle
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkPaths:
    """Where build_run puts things; the plan writes these paths into the command lines.

    Each map goes from the platform name to that platform's path or name.
    """

    context: dict[str, str]  # the build context the builder reads
    dockerfile: dict[str, str]  # the Dockerfile the builder reads
    iidfile: dict[str, str]  # where the builder writes the image id
    image_name: dict[str, str]  # a private name for the per-platform image
    bundle_context: str | None = None  # BuildKit: the bundle's directory, a named build context


def resolve_mode(mode: Mode | None, builder: str) -> Mode:
    """None (auto): mount mode (no bundle byte in any layer) wherever RUN --mount exists, i.e. on
    BuildKit, buildah and podman; copy mode on the legacy Docker builder."""
    if mode is Mode.COPY or (mode is None and builder == "docker"):
        return Mode.COPY
    if mode is Mode.MOUNT and builder == "docker":
        raise InputError("--mode mount needs RUN --mount, which the legacy Docker builder lacks",
                         "use --mode copy (or auto) with --builder docker")
    return Mode.MOUNT


def named_bundle_context(builder: str, mode: Mode) -> str | None:
    """The name of the build context that carries the bundle, where the builder takes one."""
    return BUNDLE_CONTEXT if builder == "buildx" and mode is Mode.MOUNT else None


def plan_platform(text: str, platform: Platform, mode: Mode, bundle: str, host: archmod.Arch,
                  filename: str, mount_from: str | None = None) -> PlatformPlan:
    """Native (the text unchanged) or through the shim (patched for this target platform)."""
    result = patch(text, Options(platforms=(platform,), mode=mode, bundle=bundle, host=host,
                                 mount_from=mount_from),
                   filename=filename)
    emulated: list[archmod.Arch] = []
    for stage in result.stages_to_patch:
        for a in stage.arches:
            if a not in emulated:
                emulated.append(a)
    if not result.changed:
        return PlatformPlan(platform, True, text, ())
    return PlatformPlan(platform, False, result.text, tuple(emulated))


def builder_argv(builder: str, req: BuildRequest, p: PlatformPlan, paths: WorkPaths,
                 program: str) -> tuple[list[str], dict[str, str]]:
    """One platform's build: (argv, extra environment)."""
    name = p.platform.name
    # buildah and podman set TARGET* themselves (and warn about unused build args); the legacy
    # builder does not, and dockerd 26's BuildKit leaves them empty in a global-scope ARG without
    # a default (ARG TARGETARCH / FROM base:${TARGETARCH}): both are given them.
    given = builder in ("docker", "buildx")
    args = {**(p.platform.build_args() if given else {}), **req.build_args}
    if not p.native:
        # Declared by every patched stage; set (empty: no trace) so builders do not warn.
        # With --trace the shim writes JSON lines into the step's output, where build_run
        # picks them out: nothing of the trace is written inside the image.
        args.setdefault(TRACE_ARG, TRACE_TO if req.trace else "")
    argv: list[str]
    env: dict[str, str] = {}
    if builder == "docker":
        if req.secrets:
            raise InputError("--secret needs BuildKit; the legacy Docker builder has none",
                             "use --builder buildah or podman")
        argv = [program, "build", "--platform", name, "-f", paths.dockerfile[name],
                "--iidfile", paths.iidfile[name], "-t", paths.image_name[name], "--force-rm"]
        if req.pull is True:
            argv.append("--pull")
        env["DOCKER_BUILDKIT"] = "0"
    elif builder in ("buildah", "podman"):
        argv = [program, "build", "--platform", name, "-f", paths.dockerfile[name],
                "--iidfile", paths.iidfile[name], "-t", paths.image_name[name]]
        if req.pull is True:
            argv.append("--pull-always")
        elif req.pull is False:
            argv.append("--pull-never")
        for s in req.secrets:
            argv += ["--secret", f"id={s.id},src={s.src}"]
    elif builder == "buildx":
        # The docker driver (dockerd without the containerd image store) exports one platform
        # at a time and only into the daemon (--load): -o type=oci and a multi-platform --push
        # are refused there, so each platform is loaded and the index is assembled afterwards,
        # as for the legacy builder. Plain progress: build_run reads the steps out of it.
        argv = [program, "buildx", "build", "--progress", "plain", "--platform", name,
                "-f", paths.dockerfile[name], "--iidfile", paths.iidfile[name],
                "-t", paths.image_name[name], "--load"]
        if req.pull is True:
            argv.append("--pull")
        for s in req.secrets:
            argv += ["--secret", f"id={s.id},src={s.src}"]
        if not p.native and paths.bundle_context:
            argv += ["--build-context", f"{BUNDLE_CONTEXT}={paths.bundle_context}"]
    else:
        raise InputError(f"--builder {builder}: unknown builder",
                         "use --builder auto, buildx, docker, buildah or podman")
    for key in sorted(args):
        argv += ["--build-arg", f"{key}={args[key]}"]
    if req.target:
        argv += ["--target", req.target]
    if req.no_cache:
        argv.append("--no-cache")
    if req.network:
        argv += ["--network", req.network]
    argv.append(paths.context[name])
    return argv, env


def plan_platforms(req: BuildRequest, mode: Mode, text: str, host: archmod.Arch,
                   bundle: str, mount_from: str | None = None) -> list[PlatformPlan]:
    return [plan_platform(text, p, mode, bundle, host, req.dockerfile, mount_from)
            for p in req.platforms]


def with_commands(plans: Sequence[PlatformPlan], builder: str, req: BuildRequest,
                  paths: WorkPaths, program: str) -> list[PlatformPlan]:
    out = []
    for p in plans:
        argv, env = builder_argv(builder, req, p, paths, program)
        out.append(PlatformPlan(p.platform, p.native, p.dockerfile_text, p.emulated,
                                tuple(argv), env))
    return out


def emulated_arches(plans: Sequence[PlatformPlan]) -> list[archmod.Arch]:
    out: list[archmod.Arch] = []
    for p in plans:
        for a in p.emulated:
            if a not in out:
                out.append(a)
    return out
