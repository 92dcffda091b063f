"""Checks of built images against what the unpatched Dockerfile would have produced on a binfmt
host: the config a Dockerfile gives the last stage, the /bin/sh chain of the base, no bundle left,
a Debian package's files present and of the right architecture."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xshim.builder import debian

from . import builders


def logical_lines(text: str) -> list[str]:
    """Instructions of a simple Dockerfile (backslash escape, no heredocs), continuations joined
    and comment lines dropped."""
    out: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not cur):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur.strip():
        out.append(cur)
    return out


def _json_or_words(arg: str) -> list[str]:
    try:
        value = json.loads(arg)
    except ValueError:
        return shlex.split(arg)
    assert isinstance(value, list), arg
    return [str(v) for v in value]


def _pairs(arg: str) -> list[tuple[str, str]]:
    words = shlex.split(arg)
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return [(words[0], words[1])]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


def expected_config(dockerfile: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the last stage: the base image's config with the stage's config
    instructions applied, as Docker's builder applies them."""
    stages: dict[str, dict[str, Any]] = {}
    cfg: dict[str, Any] = {}
    cmd_set = False
    for line in logical_lines(dockerfile):
        word, _, arg = line.partition(" ")
        op, arg = word.upper(), arg.strip()
        if op == "FROM":
            words = [w for w in arg.split() if not w.startswith("--")]
            parent = words[0].lower()
            cfg = json.loads(json.dumps(stages.get(parent, base)))
            cmd_set = False
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2].lower()] = cfg
        elif op == "ENV":
            env = [e for e in cfg.get("Env") or []]
            for k, v in _pairs(arg):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            cfg["Env"] = env
        elif op == "LABEL":
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(_pairs(arg))}
        elif op == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in arg.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif op == "VOLUME":
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{v: {} for v in _json_or_words(arg)}}
        elif op == "WORKDIR":
            cfg["WorkingDir"] = os.path.join(cfg.get("WorkingDir") or "/", arg)
        elif op == "USER":
            cfg["User"] = arg
        elif op == "SHELL":
            cfg["Shell"] = _json_or_words(arg)
        elif op == "CMD":
            cfg["Cmd"] = _json_or_words(arg)
            cmd_set = True
        elif op == "ENTRYPOINT":
            cfg["Entrypoint"] = _json_or_words(arg)
            if not cmd_set:  # an inherited CMD is dropped by a new ENTRYPOINT
                cfg["Cmd"] = None
    return builders.pick_config(cfg)


def chain(root: Path, path: str) -> list[tuple[str, str]]:
    """``path`` and every symlink hop from it, as (path, what it is) pairs: the link text for a
    link, the mode and sha256 of the contents for the file at the end."""
    out: list[tuple[str, str]] = []
    for _ in range(16):
        parent = builders.inside(root, os.path.dirname(path))
        node = parent / os.path.basename(path)
        if node.is_symlink():
            target = os.readlink(node)
            out.append((path, f"-> {target}"))
            path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
            path = os.path.normpath(path)
            continue
        st = node.lstat()
        digest = hashlib.sha256(node.read_bytes()).hexdigest()
        out.append((path, f"{oct(st.st_mode)} {st.st_uid}:{st.st_gid} {digest}"))
        return out
    raise AssertionError(f"symlink loop at {path}")


def _top_level(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}




def top_level(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


# What each builder's export adds at the top level (docker's container marker).
EXPORT_ADDS = {".dockerenv"}


def assert_clean(root: Path, base_tree: Path, creates: set[str]) -> None:
    """/bin/sh and its symlink chain exactly the base's, no bundle, nothing unexpected on top."""
    assert chain(root, "/bin/sh") == chain(base_tree, "/bin/sh")
    assert not os.path.lexists(root / ".xshim"), "the bundle was left in the image"
    extra = top_level(root) - top_level(base_tree) - creates - EXPORT_ADDS
    assert not extra, f"unexpected top-level entries: {sorted(extra)}"


def image_config(builder: Any, tag: str) -> dict[str, Any]:
    """The compared config fields of a built image, without buildah's own version label."""
    got = builders.pick_config(builder.config(tag)["Config"])
    labels = dict(got["Labels"] or {})
    labels.pop("io.buildah.version", None)  # stamped by buildah and podman on every commit
    got["Labels"] = labels or None
    return got


def assert_platform(builder: Any, tag: str, platform: str = "linux/arm64") -> None:
    cfg = builder.config(tag)
    assert f"{cfg['Os']}/{cfg['Architecture']}" == platform


def assert_package(root: Path, deb: Path, name: str, work: Path, arch: str = "arm64") -> None:
    """Every regular file of ``deb`` in the image byte for byte, its ELF files of ``arch``, and
    dpkg's status saying it is installed."""
    files = debian.extract_deb(deb, work)
    regular = [f for f in files if f.is_file() and not f.is_symlink()]
    assert regular
    status = (root / "var/lib/dpkg/status").read_text()
    stanza = re.search(rf"^Package: {re.escape(name)}\n(?:.+\n)*", status, re.M)
    assert stanza and "Status: install ok installed" in stanza.group(0), name
    assert f"Architecture: {arch}" in stanza.group(0)
    elves = 0
    machine = {"arm64": "aarch64"}[arch]
    for f in regular:
        rel = f.relative_to(work)
        mine = builders.inside(root, str(rel))
        assert mine.is_file(), f"/{rel} is missing from the image"
        assert mine.read_bytes() == f.read_bytes(), f"/{rel} differs from the package's"
        a = builders.elf_arch(mine)
        if a is not None:
            assert a.name == machine, f"/{rel} is {a.name}"
            elves += 1
    assert elves, f"{deb.name} installed no ELF file"
