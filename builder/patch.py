"""``xshim patch``: the I/O around the Dockerfile rewriter (builder/dockerfile.py).

Reads the Dockerfile (a file or ``-`` for stdin), checks the options and the bundle, and writes
the patched text atomically to ``-o FILE`` or to stdout; ``--check`` and ``--diff`` write
nothing. Findings go to stdout with ``--check`` and to stderr otherwise.

``run_patch`` says whether ``--check`` found stages that need patching (the CLI exits 1 then);
bad input raises InputError before anything is written.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..shim import layout as L
from ..shim.layout import Manifest, ManifestError
from .dockerfile import Finding, Level, Mode, Options, PatchResult, patch
from .errors import InputError
from .fsutil import OutputError, write_output
from .platform import Platform


@dataclass(frozen=True)
class PatchRequest:
    dockerfile: str  # a path, or "-" for stdin
    output: str | None = None  # a path, "-" or None for stdout
    platforms: tuple[Platform, ...] = ()  # the build's targets; none: FROM lines decide alone
    bundle: str | None = None  # the bundle directory on this machine
    prefix: str | None = None
    mode: Mode = Mode.COPY
    mount_from: str | None = None  # mount mode: the bundle comes from this named build context
    context: str = "."
    check: bool = False
    diff: bool = False
    format: str = "text"


def _read_input(path: str, stdin: TextIO) -> tuple[str, str]:
    """(display name, text) with undecodable bytes kept through surrogateescape."""
    if path == "-":
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
        return "<stdin>", data.decode("utf-8", "surrogateescape")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file",
                         "give the path of a Dockerfile, or - to read one from stdin") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory",
                         f"give the Dockerfile itself, e.g. {os.path.join(path, 'Dockerfile')}"
                         ) from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    return path, data.decode("utf-8", "surrogateescape")


def _read_manifest(bundle: Path) -> Manifest:
    if not bundle.is_dir():
        raise InputError(f"bundle directory {str(bundle)!r} does not exist",
                         f"make it first: xshim bundle -o {bundle}")
    manifest = bundle / L.MANIFEST
    try:
        return Manifest.load(str(bundle))
    except FileNotFoundError:
        raise InputError(f"{manifest}: no such file; {str(bundle)!r} is not an xshim bundle",
                         f"make the bundle with: xshim bundle -o {bundle}") from None
    except ManifestError as e:
        raise InputError(f"{manifest}: {e}",
                         f"make the bundle again with: xshim bundle -o {bundle}") from None


def resolve_options(req: PatchRequest) -> Options:
    """Turn the command-line values into rewriter options, checking the bundle if one is given."""
    platforms = tuple({p.name: p for p in req.platforms}.values())  # each once
    if req.mount_from is not None and req.mode is not Mode.MOUNT:
        raise InputError("--mount-from only serves mount mode", "add --mode mount")
    bundle_text = L.DEFAULT_DIR
    prefix = req.prefix
    if req.bundle is not None:
        bundle = Path(req.bundle)
        declared = _read_manifest(bundle).prefix
        if declared:
            if prefix is not None and prefix.rstrip("/") != declared.rstrip("/"):
                raise InputError(
                    f"the bundle {req.bundle!r} was made for prefix {declared!r}, "
                    f"not {prefix!r}",
                    f"drop --prefix, or make the bundle again: xshim bundle -o {req.bundle} "
                    f"--prefix {prefix}")
            prefix = declared
        context = Path(req.context).resolve()
        real = bundle.resolve()
        try:
            bundle_text = real.relative_to(context).as_posix()
        except ValueError:
            if req.mount_from is not None:
                bundle_text = L.DEFAULT_DIR  # not written: the mounts name the context
            else:
                raise InputError(
                    f"the bundle {req.bundle!r} is outside the build context {req.context!r}",
                    "make the bundle inside the directory you build from "
                    "(xshim bundle -o .xshim), give that directory with --context, or mount "
                    "it from a named build context (--mode mount --mount-from xshim)") from None
    return Options(platforms=platforms, mode=req.mode, bundle=bundle_text,
                   prefix=prefix or L.DEFAULT_PREFIX, mount_from=req.mount_from)


def _missing_emulators(result: PatchResult, manifest: Manifest, bundle: str) -> list[Finding]:
    """A warning for each patched stage whose platform the bundle has no emulator for: its
    first foreign exec would fail in the build."""
    names = set(manifest.emulators)
    out = []
    for stage in result.stages_to_patch:
        for arch in stage.arches:
            if arch.name not in names:
                line = result.lexed.instructions[stage.from_index].line
                out.append(Finding(line, 1, Level.WARNING, "XS013",
                                   f"{stage.label} runs on {arch.platform} but the bundle "
                                   f"{bundle!r} has no emulator for it: make it with xshim "
                                   f"bundle --platform {arch.platform} (a list for several)"))
    return out


def format_findings(name: str, findings: list[Finding], fmt: str) -> str:
    if fmt == "json":
        records = [{"file": name, "line": f.line, "column": f.column, "level": f.level,
                    "code": f.code, "message": f.message} for f in findings]
        return json.dumps(records, indent=2) + "\n"
    return "".join(f"{name}:{f.line}:{f.column}: {f.level} {f.code}: {f.message}\n"
                   for f in findings)


def unified_diff(name: str, old: str, new: str) -> str:
    from .dockerfile_lex import split_lines

    a, b = (name, name) if name.startswith(("/", "<")) else (f"a/{name}", f"b/{name}")
    lines = difflib.unified_diff(split_lines(old), split_lines(new), a, b)
    out = []
    for ln in lines:
        out.append(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n")
    return "".join(out)


def run_patch(req: PatchRequest, stdin: TextIO | None = None, stdout: TextIO | None = None,
              stderr: TextIO | None = None) -> bool:
    """Do what ``req`` asks; True when ``--check`` finds stages that need patching."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    options = resolve_options(req)
    name, text = _read_input(req.dockerfile, stdin)
    result: PatchResult = patch(text, options, filename=name)
    if req.bundle is not None:
        result.findings.extend(_missing_emulators(result, _read_manifest(Path(req.bundle)),
                                                  req.bundle))
        result.findings.sort(key=lambda f: (f.line, f.code))
    if req.check:
        needing = [f for f in result.findings if f.code == "XS001"]
        shown = result.findings if req.format == "json" else needing or result.findings
        stdout.write(format_findings(name, shown, req.format))
        return result.changed
    if req.diff:
        _write_text(stdout, unified_diff(name, text, result.text))
    if req.output not in (None, "-"):
        assert req.output is not None
        try:
            write_output(req.output, result.text.encode("utf-8", "surrogateescape"))
        except OutputError as e:
            raise InputError(f"-o {req.output}: cannot write it: {e.strerror}",
                             "give -o a file in an existing, writable directory, or - for "
                             "stdout") from None
    elif not req.diff:
        _write_text(stdout, result.text)
    report = format_findings(name, [f for f in result.findings if f.level is not Level.INFO]
                             if req.format == "text" else result.findings, req.format)
    if report and (req.format == "json" or result.findings):
        stderr.write(report)
    return False


def _write_text(stream: TextIO, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    if hasattr(stream, "buffer"):
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()
    else:
        stream.write(data.decode("utf-8", "replace"))
