"""``xshim build``: carry out the plan of builder/build.py.

In a private temporary directory: the patched Dockerfiles and the bundle. BuildKit in mount mode
takes the bundle as a named build context and reads the user's context as it is; otherwise (when
a platform needs the shim) a generated build context holds the user's context, copied with hard
links where the file system allows, plus the bundle, with a ``.dockerignore`` that lets the
bundle through whatever the user's excludes. The user's context and Dockerfile are only read.

Each platform's build runs the builder once; the builds run side by side (as many as there are
CPUs), their output prefixed with the platform as buildx's plain progress does. Then the images
are assembled into one index (builder/oci_index.py), loaded, or left, as the output asks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..shim import arch as archmod
from ..shim import layout as L
from ..shim import tracelog
from . import build as plan
from . import oci_index, tools
from .errors import BuildFailed, InputError, MissingToolError
from .fsutil import write_atomic

log = logging.getLogger("xshim")

# The builder's step headers and its report of a failed RUN, to name them in our error.
_STEP = re.compile(r"^(?:\[\d+/\d+\] )?(?:Step \d+/\d+ : |STEP \d+/\d+: )(.*)$")
# BuildKit's plain progress: "#8 [stage-1 2/4] RUN ..." opens step 8, "#8 1.234 text" is its
# output (the steps of a build's stages interleave), " > [stage-1 2/4] RUN ...:" heads the
# report of the step that failed.
_BK_STEP = re.compile(r"^#(\d+) \[[^\]]*\d+/\d+\] (.*)$")
_BK_LINE = re.compile(r"^#(\d+) ")
_BK_FAILED = re.compile(r"^ > \[[^\]]*\d+/\d+\] (.*):$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATUS = re.compile(r"(?:returned a non-zero code|exit status|exit code):?\s*(\d+)")


def _buildx_answers(docker: str) -> str | None:
    """None when ``docker buildx`` reaches a BuildKit builder, else its own words why not."""
    try:
        r = subprocess.run([docker, "buildx", "inspect"], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode == 0:
        return None
    return (r.stderr or r.stdout).decode(errors="replace").strip() or f"exit status {r.returncode}"


def detect_builder(choice: str) -> tuple[str, str]:
    """(builder, program). auto: buildah, then podman, then Docker: BuildKit through
    ``docker buildx`` where the plugin reaches a builder, else the legacy builder."""
    if choice not in plan.BUILDERS:
        raise InputError(f"--builder {choice}", "use auto, buildx, docker, buildah or podman")
    if choice == "buildx":
        docker = tools.find("docker", "--builder buildx runs docker buildx build")
        why = _buildx_answers(docker)
        if why is not None:
            raise MissingToolError("docker buildx", "docker-buildx",
                                   "--builder buildx: docker buildx inspect failed: "
                                   + why.splitlines()[-1])
        return "buildx", "docker"
    if choice != "auto":
        return choice, choice
    for name in ("buildah", "podman"):
        if shutil.which(name):
            return name, name
    found = shutil.which("docker")
    if found:
        return ("buildx", "docker") if _buildx_answers(found) is None else ("docker", "docker")
    raise MissingToolError("buildah", "buildah", "xshim build needs an image builder")


def _copy_context(src: Path, dst: Path) -> None:
    """``cp -a`` with hard links where possible (the builder only reads the files)."""
    r = subprocess.run(["cp", "-a", "-l", "--", f"{src}/.", str(dst)], capture_output=True)
    if r.returncode != 0:
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        tools.run(["cp", "-a", "--reflink=auto", "--", f"{src}/.", str(dst)])


def _ignore_text(context: Path, dockerfile: Path, bundle: str) -> str | None:
    """The user's ignore file with the bundle let through (later patterns win).

    ``<Dockerfile>.dockerignore`` beside the Dockerfile takes the place of the context's
    ``.dockerignore``, as in BuildKit and buildah; the patched Dockerfile lives elsewhere, so the
    one that applies is written into the generated context.
    """
    path = Path(f"{dockerfile}.dockerignore")
    if not path.is_file():
        path = context / ".dockerignore"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if text and not text.endswith("\n"):
        text += "\n"
    return text + f"!{bundle}\n!{bundle}/**\n"


def bundle_name(context: Path) -> str:
    """Where the bundle sits in the generated context: the usual name, or another one when the
    user's context already has one of that name."""
    name = L.DEFAULT_DIR
    while os.path.lexists(context / name):
        name = f"{L.DEFAULT_DIR}-{secrets.token_hex(4)}"
    return name


# --- running the builds ---------------------------------------------------------------------------


@dataclass
class Outcome:
    platform: str
    returncode: int = -1
    step: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    trace: list[dict[str, object]] = field(default_factory=list)


class Runner:
    """Runs the per-platform builds side by side and prefixes their output."""

    def __init__(self, progress: str, stream: TextIO) -> None:
        self.progress = progress
        self.stream = stream
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.failed = threading.Event()

    def run_one(self, p: plan.PlatformPlan) -> Outcome:
        out = Outcome(p.platform.name)
        if self.failed.is_set():
            return out
        steps: dict[str, str] = {}  # BuildKit: step number -> the step
        failed_step = False
        env = {**os.environ, **p.env}
        proc = subprocess.Popen(list(p.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with self.lock:
            self.procs[out.platform] = proc
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            vertex = _BK_LINE.match(line)
            record = _trace_record(line)
            if record is not None:
                step = steps.get(vertex.group(1), out.step) if vertex else out.step
                out.trace.append({"platform": out.platform, "step": step, **record})
                continue
            m = _BK_FAILED.match(line)
            if m:
                out.step, failed_step = m.group(1).strip(), True
            elif not failed_step:
                m = _STEP.match(line) or _BK_STEP.match(line)
                if m:
                    out.step = m.group(m.lastindex or 1).strip()
                    if m.re is _BK_STEP:
                        steps[m.group(1)] = out.step
            out.tail.append(line)
            if self.progress != "quiet":
                with self.lock:
                    self.stream.write(f"[{out.platform}] {line}\n")
                    self.stream.flush()
        out.returncode = proc.wait()
        if out.returncode != 0 and not self.failed.is_set():
            self.failed.set()
            self.cancel(but=out.platform)
        return out

    def cancel(self, but: str) -> None:
        """A failed platform fails the build: stop the others (buildx does the same)."""
        with self.lock:
            for name, proc in self.procs.items():
                if name != but and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)

    def run_all(self, plans: Sequence[plan.PlatformPlan]) -> list[Outcome]:
        workers = max(1, min(len(plans), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                return list(pool.map(self.run_one, plans))
            except BaseException:  # ^C: the builders are in their own sessions, stop them
                self.failed.set()
                self.cancel(but="")
                raise


def _trace_record(line: str) -> dict[str, object] | None:
    """A shim trace record (marked JSON) in a step's output, or None for any other line."""
    at = line.find(tracelog.MARK)
    if at < 0:
        return None
    try:
        rec = json.loads(_ANSI.sub("", line[at + len(tracelog.MARK):]))
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def failure_message(outcomes: Sequence[Outcome]) -> str | None:
    """Name the failing platform(s), the step and the step's exit status, in the builder's words."""
    failed = [o for o in outcomes if o.returncode != 0 and o.returncode != -1 and
              o.returncode != -signal.SIGTERM]
    if not failed:
        failed = [o for o in outcomes if o.returncode != 0]
    if not failed:
        return None
    parts = []
    for o in failed:
        status = None
        for line in reversed(o.tail):
            m = _STATUS.search(line)
            if m:
                status = m.group(1)
                break
        what = f"step {o.step!r}" if o.step else "the build"
        code = f" exited with status {status}" if status else " failed"
        parts.append(f"{o.platform}: {what}{code} (builder exit status {o.returncode}):\n  "
                     + "\n  ".join(o.tail))
    return "\n".join(parts)


# --- the whole build ------------------------------------------------------------------------------


@dataclass
class BuildResult:
    index_digest: str | None
    platform_digests: dict[str, str]
    image_ids: dict[str, str]
    tags: list[str]


def _read_dockerfile(req: plan.BuildRequest) -> str:
    path = Path(req.dockerfile)
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise InputError(f"{req.dockerfile}: no such Dockerfile",
                         "give it with -f FILE, or put a Dockerfile in the context") from None
    except OSError as e:
        raise InputError(f"{req.dockerfile}: cannot read: {e.strerror}") from None


def _in_docker(builder: str) -> bool:
    return builder in ("docker", "buildx")


def _entry_ref(builder: str, program: str, name: str, work: Path) -> str:
    """Where the manifest tool reads a built image: the builder's store, or for the Docker
    daemon (which buildah cannot be pointed at) an OCI layout copied out of it."""
    if not _in_docker(builder):
        return f"containers-storage:{name}"
    return oci_index.from_docker_daemon(program, name,
                                        work / "images" / f"{name.rsplit(':', 1)[1]}.tar")


def run_build(req: plan.BuildRequest, stream: TextIO | None = None) -> BuildResult:
    stream = stream or sys.stderr
    plan.check_request(req)
    context = Path(req.context)
    if not context.is_dir():
        raise InputError(f"{req.context}: the build context is not a directory",
                         "give the directory to build from, e.g. .")
    builder, program = detect_builder(req.builder)
    program = tools.find(program, f"--builder {builder}")
    text = _read_dockerfile(req)
    host = archmod.host_arch()
    mode = plan.resolve_mode(req.mode, builder)
    bundle = bundle_name(context)
    named = plan.named_bundle_context(builder, mode)
    plans = plan.plan_platforms(req, mode, text, host, bundle, named)
    token = secrets.token_hex(6)
    work = Path(tempfile.mkdtemp(prefix="xshim-build-"))
    try:
        return _build_in(req, builder, program, plans, work, bundle, named, token, stream)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_in(req: plan.BuildRequest, builder: str, program: str,
              plans: list[plan.PlatformPlan], work: Path, bundle: str, named: str | None,
              token: str, stream: TextIO) -> BuildResult:
    from .bundle import build_bundle

    context = Path(req.context).resolve()
    foreign = [p for p in plans if not p.native]
    gen = context if named else work / "context"
    if foreign and named:
        build_bundle(work / "bundle", plan.emulated_arches(plans), accelerate=req.accelerate,
                     qemu_suite=req.qemu_suite)
    elif foreign:
        gen.mkdir()
        _copy_context(context, gen)
        ignore = _ignore_text(context, Path(req.dockerfile).resolve(), bundle)
        if ignore is not None:
            # Unlinked first: it may be a hard link to the user's own file.
            (gen / ".dockerignore").unlink(missing_ok=True)
            (gen / ".dockerignore").write_text(ignore, encoding="utf-8", errors="surrogateescape")
        build_bundle(gen / bundle, plan.emulated_arches(plans), accelerate=req.accelerate,
                     qemu_suite=req.qemu_suite)
    names = {p.platform.name: p.platform.name.replace("/", "-") for p in plans}
    paths = plan.WorkPaths(
        context={p.platform.name: str(context if p.native else gen) for p in plans},
        dockerfile={p.platform.name: (str(Path(req.dockerfile).resolve()) if p.native
                                      else str(work / f"Dockerfile.{names[p.platform.name]}"))
                    for p in plans},
        iidfile={n: str(work / f"iid.{s}") for n, s in names.items()},
        image_name={n: f"localhost/xshim-build-{token}:{s}" for n, s in names.items()},
        bundle_context=str(work / "bundle") if named else None,
    )
    own_ignore = Path(f"{Path(req.dockerfile).resolve()}.dockerignore")
    for p in foreign:
        path = Path(paths.dockerfile[p.platform.name])
        path.write_text(p.dockerfile_text, encoding="utf-8", errors="surrogateescape")
        if named and own_ignore.is_file():
            # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile it is given.
            shutil.copyfile(own_ignore, f"{path}.dockerignore")
    plans = plan.with_commands(plans, builder, req, paths, program)
    for p in plans:
        log.info("%s: %s", p.platform.name,
                 "native" if p.native else
                 f"through the shim ({', '.join(a.platform for a in p.emulated)})")
        log.debug("%s: %s", p.platform.name, " ".join(p.argv))
    outcomes = Runner(req.progress, stream).run_all(plans)
    if req.trace:
        records = [r for o in outcomes for r in o.trace]
        write_atomic(req.trace, "".join(json.dumps(r, separators=(",", ":")) + "\n"
                                        for r in records).encode())
        log.info("trace: %d records in %s", len(records), req.trace)
    built = [paths.image_name[p.platform.name] for p, o in zip(plans, outcomes, strict=True)
             if o.returncode == 0]
    try:
        message = failure_message(outcomes)
        if message:
            raise BuildFailed(message, "the builder's output above has the details")
        ids = {p.platform.name: _image_id(paths.iidfile[p.platform.name], p.platform.name)
               for p in plans}
        return _deliver(req, builder, program, plans, paths, ids, work)
    finally:
        loaded = req.output.kind is plan.Output.LOAD or (
            req.output.kind is plan.Output.NONE and len(plans) == 1)
        if not (loaded and not req.tags):
            # With the user's tags on it, this only removes the private name.
            for name in built:
                subprocess.run([program, "rmi", name], capture_output=True)


def _image_id(path: str, platform: str) -> str:
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        raise BuildFailed(f"{platform}: the builder succeeded but wrote no image id",
                          "run the build again with --progress plain to see its output") from None


def _deliver(req: plan.BuildRequest, builder: str, program: str,
             plans: Sequence[plan.PlatformPlan], paths: plan.WorkPaths, ids: Mapping[str, str],
             work: Path) -> BuildResult:
    out = req.output
    tags = list(req.tags)
    result = BuildResult(None, {}, dict(ids), tags)
    if out.kind is plan.Output.LOAD or (out.kind is plan.Output.NONE and len(plans) == 1):
        (p,) = plans
        for t in tags:
            tools.run([program, "tag", paths.image_name[p.platform.name], t])
        print(f"{p.platform.name}: loaded {ids[p.platform.name]}"
              + (f" as {', '.join(tags)}" if tags else ""), file=sys.stderr)
    elif out.push_by_digest:
        repo = oci_index.repository_of(tags[0])
        for p in plans:
            d = work / f"push-{p.platform.name.replace('/', '-')}"
            d.mkdir()
            digest = oci_index.push_by_digest(
                _entry_ref(builder, program, paths.image_name[p.platform.name], work), repo, d)
            result.platform_digests[p.platform.name] = digest
            print(f"{p.platform.name}: pushed {repo}@{digest}", file=sys.stderr)
    elif out.kind in (plan.Output.REGISTRY, plan.Output.OCI):
        entries = [oci_index.IndexEntry(_entry_ref(builder, program,
                                                   paths.image_name[p.platform.name], work),
                                        p.platform.os, p.platform.architecture,
                                        p.platform.index_variant) for p in plans]
        if out.kind is plan.Output.OCI:
            dest_path = Path(out.dest or "").absolute()
            tmp = work / "out.tar"
            dests = [f"oci-archive:{tmp}"]
        else:
            dests = [f"docker://{t}" for t in tags]
        name = f"xshim-build-{secrets.token_hex(6)}"
        if _in_docker(builder):
            with oci_index.private_tool() as tool:
                digest = oci_index.assemble(tool, entries, dests, name)
        else:
            digest = oci_index.assemble(oci_index.ManifestTool(program), entries, dests, name)
        result.index_digest = digest
        if out.kind is plan.Output.OCI:
            result.platform_digests = oci_index.platform_digests(
                oci_index.inspect_raw(f"oci-archive:{tmp}"))
            dest_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp), str(dest_path))
        else:
            result.platform_digests = oci_index.platform_digests(
                oci_index.inspect_raw(dests[0]))
            print(f"pushed {', '.join(tags)}@{digest}", file=sys.stderr)
    else:
        print("xshim: no output given (--push, --load or -o): the images were built and "
              "discarded", file=sys.stderr)
    _write_outputs(req, result)
    return result


def _write_outputs(req: plan.BuildRequest, result: BuildResult) -> None:
    if req.metadata_file:
        meta: dict[str, object] = {}
        if result.index_digest:
            meta["containerimage.digest"] = result.index_digest
        if result.tags:
            meta["image.name"] = ",".join(result.tags)
        if len(result.platform_digests) == 1 and not result.index_digest:
            meta["containerimage.digest"] = next(iter(result.platform_digests.values()))
        meta["xshim.platforms"] = {
            name: {"digest": result.platform_digests.get(name),
                   "image_id": result.image_ids.get(name)}
            for name in result.image_ids}
        write_atomic(req.metadata_file, (json.dumps(meta, indent=2) + "\n").encode())
    if req.iidfile:
        iid = result.index_digest or (next(iter(result.image_ids.values()))
                                      if len(result.image_ids) == 1 else "")
        if iid:
            write_atomic(req.iidfile, iid.encode())
