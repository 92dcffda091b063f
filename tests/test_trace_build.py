"""A real legacy docker build with ``--build-arg XSHIM_TRACE=log``, read back by ``xshim trace``.

The RUN step fails three scripts deep (build.sh → package.sh → verify-archive.sh, whose gzip
finds a truncated archive): the build log alone must say which script failed and with what
status, and nothing of the trace may stay in an image.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import builders
from xshim.builder.trace_read import parse

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

PLATFORM = "linux/arm64"
BASE_TAG = "xshim-example/debian:arm64"

DOCKERFILE = f"""\
FROM --platform={PLATFORM} {BASE_TAG}
COPY ci /ci
RUN dpkg --print-architecture && uname -m
RUN /ci/build.sh
"""

SCRIPTS = {
    "build.sh": """\
#!/bin/sh
set -e
echo "build: $(uname -m)"
/ci/steps/package.sh
""",
    "steps/package.sh": """\
#!/bin/sh
set -e
cd /tmp
tar -czf out.tar.gz -C /etc debian_version hostname passwd group
/ci/steps/verify-archive.sh /tmp/out.tar.gz
""",
    "steps/verify-archive.sh": """\
#!/bin/bash
set -eu
archive=$1
# What an interrupted download leaves behind: the first 100 bytes.
head -c 100 "$archive" > "$archive.part"
gzip -t "$archive.part" || { echo "verify-archive: $archive.part is corrupt" >&2; exit 3; }
""",
}


# The builders, with the base image loaded, are the session's (tests/support/buildfix.py, through
# conftest.py): ``loaded("docker")``.


def _xshim(*args: str, cwd: Path) -> builders.Result:
    return builders.run(["xshim", *args], cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / ".xshim"
    _xshim("bundle", "--platform", PLATFORM, "-o", str(out), cwd=out.parent).check()
    return out


def make_context(ctx: Path, bundle: Path) -> Path:
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for name, text in SCRIPTS.items():
        path = ctx / "ci" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    subprocess.run(["cp", "-a", str(bundle), str(ctx / ".xshim")], check=True)
    _xshim("patch", "Dockerfile", "-o", "Dockerfile.xshim", "--bundle", ".xshim",
           cwd=ctx).check()  # fmt: skip
    return ctx


@pytest.mark.parametrize("name", ["docker", "buildah"])
def test_failing_build_log_names_the_failing_script(
    request: pytest.FixtureRequest, name: str, bundle: Path, tmp_path: Path
) -> None:
    """docker's legacy builder colours a step's stderr; buildah prints it plain."""
    ctx = make_context(tmp_path / "ctx", bundle)
    args = {"XSHIM_TRACE": "log"}
    tag = f"xshim-test/trace:failing-{name}"
    if name == "docker":
        r = request.getfixturevalue("loaded")("docker").build(ctx, ctx / "Dockerfile.xshim", tag,
                                                     build_args=args)
        said = "returned a non-zero code: 3"
    else:
        r = request.getfixturevalue("loaded")("buildah").build(ctx, ctx / "Dockerfile.xshim", tag,
                                                     platform=PLATFORM, build_args=args)
        said = "exit status 3"
    assert r.returncode != 0 and said in r.output, r.output[-3000:]
    log = tmp_path / "build.log"
    log.write_text(r.output)

    s = _xshim("trace", "summary", "--format", "json", str(log), cwd=tmp_path).check()
    summary = json.loads(s.output)
    assert summary["runs"] == 2  # one per RUN step that went through the shim
    assert summary["decisions"]["emulate"] >= 10 and summary["decisions"]["refused"] == 0
    assert summary["failed"] >= 4 and summary["cpu"] > 0
    assert {a["arch"] for a in summary["arches"]} == {"aarch64"}
    progs = {e["program"] for e in summary["top_count"]}
    assert {"gzip", "tar"} <= progs | {e["program"] for e in summary["top_cpu"]}
    text = _xshim("trace", "summary", str(log), cwd=tmp_path).check().output
    assert "emulated" in text and "top programs by exclusive CPU time" in text

    failed = _xshim("trace", "tree", "--failed", str(log), cwd=tmp_path).check().output
    lines = failed.splitlines()
    leaf = next(ln for ln in lines if "verify-archive.sh" in ln)
    assert "exit 3" in leaf, failed
    assert any("gzip -t" in ln and "exit 1" in ln for ln in lines), failed
    assert any("package.sh" in ln and "exit 3" in ln for ln in lines), failed
    assert "dpkg" not in failed  # the RUN step that succeeded is not on a failing path


def test_trace_leaves_nothing_in_the_image(
    request: pytest.FixtureRequest, bundle: Path, tmp_path: Path
) -> None:
    dockerd: builders.Dockerd = request.getfixturevalue("loaded")("docker")
    ctx = make_context(tmp_path / "ctx", bundle)
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("RUN /ci/build.sh\n", ""))
    _xshim("patch", "Dockerfile", "-o", "Dockerfile.xshim", "--bundle", ".xshim",
           cwd=ctx).check()  # fmt: skip
    tag = "xshim-test/trace:ok"
    r = dockerd.build(ctx, ctx / "Dockerfile.xshim", tag,
                      build_args={"XSHIM_TRACE": "log+hash"}).check()
    log = tmp_path / "build.log"
    log.write_text(r.output)
    tree = json.loads(_xshim("trace", "tree", "--format", "json", str(log), cwd=tmp_path)
                      .check().output)
    procs = [p for run in tree for root in run["procs"] for p in _walk(root)]
    assert {p["program"] for p in procs} >= {"dpkg", "uname"}
    assert all(p["outcome"] == "ok" for p in procs)
    ran = [x for x in parse(log.read_text(), str(log))
           if x["event"] == "exec" and x["decision"] == "emulate"]
    assert ran and all(len(x["sha256"]) == 64 for x in ran)  # log+hash: every program's digest
    cfg = dockerd.config(tag)["Config"]
    assert not any("XSHIM" in e for e in cfg.get("Env") or []), cfg
    with dockerd.rootfs(tag) as root:
        assert not (root / ".xshim").exists()
        leftovers = subprocess.run(["grep", "-rl", "xshim-trace/", str(root / "tmp"),
                                    str(root / "var/log")], capture_output=True, text=True)
        assert leftovers.stdout == ""


def _walk(d: dict[str, object]) -> Iterator[dict[str, object]]:
    yield d
    for c in d["children"]:  # type: ignore[attr-defined]
        yield from _walk(c)
