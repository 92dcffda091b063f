"""One OCI image index from per-platform images, through the builders' own manifest-list tools.

``buildah manifest`` (or ``podman manifest``) makes the index and pushes it with every image it
lists, to a registry (``docker://``) or into an OCI archive (``oci-archive:``); ``skopeo`` reads
indexes back and pushes single images by digest. No registry protocol is spoken here: every
transfer is one of those programs. Registry access (credentials, plain-HTTP registries) follows
their own configuration: ``REGISTRY_AUTH_FILE``, ``registries.conf``
(``CONTAINERS_REGISTRIES_CONF``).

Images built in a Docker daemon (the legacy builder, or BuildKit's docker driver) are saved out
of it (``docker save``); the manifest list that lists them then lives in a private, temporary
buildah store, so nothing is written to the user's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tools
from .errors import ImageIndexError, InputError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class IndexEntry:
    """One image to list: where to read it and the platform to record for it."""

    ref: str  # a containers/image transport reference
    os: str
    architecture: str
    variant: str

    @property
    def platform(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def config_args(program: str) -> list[str]:
    """``--registries-conf`` from ``$CONTAINERS_REGISTRIES_CONF``: Debian's buildah 1.28 and
    skopeo 1.9 do not read the variable themselves (podman does)."""
    path = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if path and os.path.basename(program) in ("buildah", "skopeo"):
        return ["--registries-conf", path]
    return []


def tool_env() -> dict[str, str]:
    """The environment for buildah, podman and skopeo.

    They take ``$DOCKER_CONFIG/config.json`` as their credentials file when DOCKER_CONFIG is set
    and refuse to start when that file is missing; a Docker client directory without one holds
    no credentials, so it is not passed on.
    """
    env = dict(os.environ)
    cfg = env.get("DOCKER_CONFIG")
    if cfg and "REGISTRY_AUTH_FILE" not in env and not os.path.exists(
            os.path.join(cfg, "config.json")):
        del env["DOCKER_CONFIG"]
    return env


def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return tools.run(argv, check=False, env=tool_env())


def skopeo(*args: str) -> list[str]:
    return ["skopeo", *config_args("skopeo"), *args]


@dataclass(frozen=True)
class ManifestTool:
    """``buildah``/``podman`` with the global options that pick its store."""

    program: str
    global_args: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        return [self.program, *config_args(self.program), *self.global_args, *args]

    def run(self, *args: str) -> str:
        proc = _run(self.argv(*args))
        out = proc.stdout.decode(errors="replace") if proc.stdout else ""
        if proc.returncode != 0:
            raise ImageIndexError(f"{self.program} {' '.join(args[:2])} failed "
                                  f"(exit status {proc.returncode}):\n  "
                                  + "\n  ".join(out.strip().splitlines()[-8:]))
        return out


@contextmanager
def private_tool(program: str = "buildah") -> Iterator[ManifestTool]:
    """A manifest tool on a store of its own, removed afterwards."""
    import shutil

    tools.find(program, "to assemble the image index")
    tmp = Path(tempfile.mkdtemp(prefix="xshim-index-"))
    try:
        yield ManifestTool(program, ("--root", str(tmp / "root"), "--runroot", str(tmp / "run"),
                                     "--storage-driver", "vfs"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_argv(tool: ManifestTool, name: str, e: IndexEntry) -> list[str]:
    argv = ["manifest", "add", "--os", e.os, "--arch", e.architecture]
    if e.variant:
        argv += ["--variant", e.variant]
    return [*argv, name, e.ref]


def assemble(tool: ManifestTool, entries: Sequence[IndexEntry], destinations: Sequence[str],
             name: str) -> str:
    """Make the list ``name``, push it with its images to each destination; its digest."""
    tool.run("manifest", "create", name)
    try:
        for e in entries:
            tool.run(*add_argv(tool, name, e))
        digest = ""
        with tempfile.TemporaryDirectory(prefix="xshim-digest-") as tmp:
            for dest in destinations:
                f = os.path.join(tmp, "digest")
                tool.run("manifest", "push", "--all", "--digestfile", f, name, dest)
                digest = Path(f).read_text().strip() if os.path.exists(f) else ""
                if not _DIGEST.fullmatch(digest):
                    raise ImageIndexError(f"{tool.program} manifest push to {dest} reported "
                                          "success but no digest")
        return digest
    finally:
        # Not tool.run: a failed clean-up must not hide why the push failed.
        _run(tool.argv("manifest", "rm", name))


def inspect_raw(ref: str) -> dict[str, Any]:
    """The manifest or index at ``ref`` (``docker://...``, ``oci-archive:...``), parsed."""
    proc = _run(skopeo("inspect", "--raw", ref))
    out = proc.stdout.decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise ImageIndexError(f"skopeo inspect {ref} failed (exit status {proc.returncode}):\n  "
                              + "\n  ".join(out.strip().splitlines()[-5:]))
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def inspect_config(ref: str) -> dict[str, Any]:
    proc = _run(skopeo("inspect", "--config", "--raw", ref))
    out = proc.stdout.decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise ImageIndexError(f"skopeo inspect --config {ref} failed (exit status "
                              f"{proc.returncode}):\n  "
                              + "\n  ".join(out.strip().splitlines()[-5:]))
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def platform_digests(index: Mapping[str, Any]) -> dict[str, str]:
    """platform (os/arch[/variant]) -> image manifest digest, from an index or manifest list."""
    out: dict[str, str] = {}
    for m in index.get("manifests") or []:
        p = m.get("platform") or {}
        variant = p.get("variant")
        if p.get("architecture") == "arm64" and variant == "v8":
            variant = None  # linux/arm64 as --platform names it
        name = "/".join(x for x in (p.get("os"), p.get("architecture"), variant) if x)
        out[name] = str(m.get("digest"))
    return out


def from_docker_daemon(docker: str, image: str, archive: Path) -> str:
    """Save an image out of the Docker daemon (``$DOCKER_HOST``) into a docker-archive; its ref.

    ``docker save`` rather than skopeo's ``docker-daemon:`` transport: skopeo 1.9 speaks the
    Engine API 1.22, which dockerd 25 and later refuse (their minimum is 1.24).
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    proc = tools.run([docker, "save", "-o", str(archive), image], check=False)
    if proc.returncode != 0:
        out = proc.stdout.decode(errors="replace") if proc.stdout else ""
        raise ImageIndexError(f"reading {image} out of the Docker daemon failed:\n  "
                              + "\n  ".join(out.strip().splitlines()[-5:]))
    return f"docker-archive:{archive}"


def push_by_digest(src: str, repository: str, workdir: Path) -> str:
    """Push one image to ``repository`` untagged; its manifest digest.

    The image is first written to an OCI layout (compressed, so the digest is final), then copied
    to ``repository@digest`` with --preserve-digests, which fails rather than change a byte.
    """
    layout = workdir / "oci"
    proc = _run(skopeo("copy", "--quiet", src, f"oci:{layout}:image"))
    if proc.returncode != 0:
        raise ImageIndexError(f"copying {src} failed:\n  " + "\n  ".join(
            (proc.stdout or b"").decode(errors="replace").strip().splitlines()[-5:]))
    index = json.loads((layout / "index.json").read_text())
    digest = str(index["manifests"][0]["digest"])
    proc = _run(skopeo("copy", "--quiet", "--preserve-digests", f"oci:{layout}:image",
                       f"docker://{repository}@{digest}"))
    if proc.returncode != 0:
        out = proc.stdout.decode(errors="replace") if proc.stdout else ""
        raise ImageIndexError(f"pushing {digest} to {repository} failed:\n  "
                              + "\n  ".join(out.strip().splitlines()[-5:]))
    return digest


def repository_of(name: str) -> str:
    """``reg/app:1`` -> ``reg/app`` (a port's colon is not a tag's)."""
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def source_refs(sources: Sequence[str], tags: Sequence[str]) -> list[str]:
    """``repo@sha256:...`` or a bare ``sha256:...`` (in the first tag's repository)."""
    out = []
    for s in sources:
        repo, at, digest = s.rpartition("@")
        if not at:
            repo, digest = repository_of(tags[0]), s
        if not _DIGEST.fullmatch(digest) or (at and not repo):
            raise InputError(f"{s!r} is not an image digest",
                             "give REPOSITORY@sha256:<64 hex> or sha256:<64 hex>")
        out.append(f"docker://{repo}@{digest}")
    return out


@dataclass(frozen=True)
class IndexRequest:
    """``xshim index create``: the images (``sha256:...`` or ``REPOSITORY@sha256:...``) and
    where the index goes."""

    tags: tuple[str, ...]
    sources: tuple[str, ...]


def create_index(req: IndexRequest) -> tuple[str, dict[str, str]]:
    """``xshim index create``: one index of the given images, pushed to every tag."""
    tags, sources = req.tags, req.sources
    if not tags:
        raise InputError("index create needs -t NAME", "use -t registry/app:1")
    if not sources:
        raise InputError("index create needs the images' digests",
                         "give one or more sha256:... or REPOSITORY@sha256:...")
    refs = source_refs(sources, tags)
    entries = []
    for ref in refs:
        cfg = inspect_config(ref)
        arch = str(cfg.get("architecture") or "")
        variant = str(cfg.get("variant") or ("v8" if arch == "arm64" else ""))
        entries.append(IndexEntry(ref, str(cfg.get("os") or "linux"), arch, variant))
    seen: dict[str, str] = {}
    for e in entries:
        if e.platform in seen:
            raise InputError(f"{seen[e.platform]} and {e.ref} are both {e.platform}",
                             "give one image per platform")
        seen[e.platform] = e.ref
    with private_tool() as tool:
        digest = assemble(tool, entries, [f"docker://{t}" for t in tags], "xshim-index")
    return digest, platform_digests(inspect_raw(f"docker://{tags[0]}"))
