"""The pure core of ``xshim build``: options, per-platform plans, command lines, index reading."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from xshim.builder import build as plan
from xshim.builder import build_run, oci_index
from xshim.builder.cli import main
from xshim.builder.errors import InputError
from xshim.builder.values import parse_platform, parse_target_platforms
from xshim.shim import arch as archmod

HOST = archmod.from_platform("linux/amd64")
TEXT = "FROM debian:bookworm\nRUN echo hi\n"


def test_platforms_as_the_index_spells_them() -> None:
    got = parse_target_platforms(["linux/amd64,linux/arm64", "linux/arm/v7"], HOST)
    assert [(p.os, p.architecture, p.variant, p.index_variant) for p in got] == [
        ("linux", "amd64", "", ""), ("linux", "arm64", "", "v8"), ("linux", "arm", "v7", "v7")]
    assert parse_platform("arm").name == "linux/arm/v7"
    assert parse_platform("linux/arm64/v8").name == "linux/arm64"
    assert [p.name for p in parse_target_platforms([], HOST)] == ["linux/amd64"]


def test_bad_platforms_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown platform 'linux/vax'"):
        parse_target_platforms(["linux/amd64,linux/vax"], HOST)
    with pytest.raises(InputError, match="given twice"):
        parse_target_platforms(["linux/arm64,linux/arm64/v8"], HOST)


def test_outputs_in_buildx_form() -> None:
    assert plan.parse_output("type=registry") == plan.OutputSpec(plan.Output.REGISTRY)
    assert plan.parse_output("type=image,push=true,push-by-digest=true,name-canonical=true") \
        == plan.OutputSpec(plan.Output.REGISTRY, push_by_digest=True)
    assert plan.parse_output("type=oci,dest=app.tar") == plan.OutputSpec(plan.Output.OCI,
                                                                         "app.tar")
    assert plan.parse_output("type=docker").kind is plan.Output.LOAD
    for bad in ("type=oci", "type=tar,dest=x", "oci", "type=oci,dest=x,compression=zstd"):
        with pytest.raises(InputError):
            plan.parse_output(bad)


def _req(**kw: object) -> plan.BuildRequest:
    base: dict[str, object] = {"context": ".", "dockerfile": "Dockerfile",
                               "platforms": parse_target_platforms(["linux/amd64"], HOST)}
    base.update(kw)
    return plan.BuildRequest(**base)  # type: ignore[arg-type]


def test_impossible_combinations_are_refused() -> None:
    two = parse_target_platforms(["linux/amd64,linux/arm64"], HOST)
    with pytest.raises(InputError, match="--load takes one platform"):
        plan.check_request(_req(platforms=two, output=plan.OutputSpec(plan.Output.LOAD)))
    with pytest.raises(InputError, match="--push needs a name"):
        plan.check_request(_req(output=plan.OutputSpec(plan.Output.REGISTRY)))
    with pytest.raises(InputError, match="exactly one -t"):
        plan.check_request(_req(tags=("r/a", "r/b"), output=plan.OutputSpec(
            plan.Output.REGISTRY, push_by_digest=True)))
    with pytest.raises(InputError, match="legacy Docker builder lacks"):
        plan.resolve_mode(plan.Mode.MOUNT, "docker")
    assert plan.resolve_mode(None, "docker") is plan.Mode.COPY
    assert plan.resolve_mode(None, "buildah") is plan.Mode.MOUNT


def test_native_platform_keeps_the_dockerfile_foreign_ones_are_patched() -> None:
    plans = plan.plan_platforms(
        _req(platforms=parse_target_platforms(["linux/amd64,linux/arm/v7"], HOST)),
        plan.Mode.COPY, TEXT, HOST, ".xshim")
    native, armhf = plans
    assert native.native and native.dockerfile_text == TEXT and native.emulated == ()
    assert not armhf.native and [a.name for a in armhf.emulated] == ["armhf"]
    assert "COPY .xshim /.xshim" in armhf.dockerfile_text
    assert plan.emulated_arches(plans) == [archmod.by_name("armhf")]


def test_a_constant_foreign_stage_is_patched_in_the_native_build() -> None:
    text = "FROM --platform=linux/arm64 debian AS b\nRUN true\nFROM debian\nCOPY --from=b / /\n"
    (p,) = plan.plan_platforms(_req(), plan.Mode.MOUNT, text, HOST, ".xshim-1")
    assert not p.native and [a.name for a in p.emulated] == ["aarch64"]
    assert "source=.xshim-1,target=/.xshim" in p.dockerfile_text


def _layout(plans: list[plan.PlatformPlan]) -> plan.WorkPaths:
    names = [p.platform.name for p in plans]
    return plan.WorkPaths(context={n: "/w/ctx" for n in names},
                       dockerfile={n: f"/w/Dockerfile.{n}" for n in names},
                       iidfile={n: f"/w/iid.{n}" for n in names},
                       image_name={n: f"localhost/x:{n.replace('/', '-')}" for n in names})


def test_command_lines() -> None:
    req = _req(platforms=parse_target_platforms(["linux/arm64"], HOST),
               build_args={"A": "1"}, target="final", no_cache=True, pull=False,
               network="none")
    plans = plan.plan_platforms(req, plan.Mode.COPY, TEXT, HOST, ".xshim")
    (d,) = plan.with_commands(plans, "docker", req, _layout(plans), "/usr/bin/docker")
    assert d.env == {"DOCKER_BUILDKIT": "0"}
    assert list(d.argv) == [
        "/usr/bin/docker", "build", "--platform", "linux/arm64", "-f", "/w/Dockerfile.linux/arm64",
        "--iidfile", "/w/iid.linux/arm64", "-t", "localhost/x:linux-arm64", "--force-rm",
        "--build-arg", "A=1", "--build-arg", "TARGETARCH=arm64", "--build-arg", "TARGETOS=linux",
        "--build-arg", "TARGETPLATFORM=linux/arm64", "--build-arg", "TARGETVARIANT=",
        "--build-arg", "XSHIM_TRACE=", "--target", "final", "--no-cache", "--network", "none",
        "/w/ctx"]
    (b,) = plan.with_commands(plans, "buildah", req, _layout(plans), "buildah")
    assert "--pull-never" in b.argv and "TARGETARCH=arm64" not in b.argv
    secret = _req(secrets=(plan.parse_secret("id=s,src=/f"),))
    with pytest.raises(InputError, match="--secret needs BuildKit"):
        plan.with_commands(plan.plan_platforms(secret, plan.Mode.COPY, TEXT, HOST, ".x"),
                           "docker", secret, _layout(plans), "docker")


def test_index_reading_and_digest_sources() -> None:
    index = {"manifests": [
        {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm64",
                                            "variant": "v8"}},
        {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm",
                                            "variant": "v7"}}]}
    assert oci_index.platform_digests(index) == {"linux/arm64": "sha256:a",
                                                 "linux/arm/v7": "sha256:b"}
    assert oci_index.repository_of("127.0.0.1:5000/xs/app:1") == "127.0.0.1:5000/xs/app"
    assert oci_index.repository_of("127.0.0.1:5000/xs/app") == "127.0.0.1:5000/xs/app"
    d = "sha256:" + "0" * 64
    assert oci_index.source_refs([d, f"r/x@{d}"], ["reg:1/app:1"]) == [
        f"docker://reg:1/app@{d}", f"docker://r/x@{d}"]
    with pytest.raises(InputError, match="not an image digest"):
        oci_index.source_refs(["sha256:12"], ["r/app:1"])


def test_failure_names_platform_step_and_status() -> None:
    ok = build_run.Outcome("linux/amd64", 0, "RUN true")
    bad = build_run.Outcome("linux/arm64", 1, "RUN exit 7", collections.deque(
        ["STEP 3/3: RUN exit 7", "error building at STEP \"RUN exit 7\": exit status 7"]))
    msg = build_run.failure_message([ok, bad])
    assert msg is not None and msg.startswith(
        "linux/arm64: step 'RUN exit 7' exited with status 7 (builder exit status 1)")
    assert build_run.failure_message([ok]) is None


def test_cli_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--platform", "linux/vax", "."]) == 2
    assert "unknown platform" in capsys.readouterr().err
    assert main(["build", "--platform", "linux/amd64,linux/arm64", "--load", "."]) == 2
    assert main(["build", "--push", "-o", "type=oci,dest=x.tar", "-t", "a/b", "."]) == 2
    assert main(["index", "create", "-t", "r/a:1", "sha256:zz"]) == 2


@pytest.mark.parametrize(("value", "needle", "hint"), [
    ("linux/vax", "--platform: unknown platform 'linux/vax'", "os/arch[/variant]"),
    ("linux/amd64,,linux/arm64", "--platform 'linux/amd64,,linux/arm64' has an empty entry",
     "comma-separated list"),
    ("linux/arm64,linux/arm64/v8", "--platform: linux/arm64 is given twice",
     "list each platform once"),
])
def test_bad_platforms_name_the_input_and_the_fix_and_write_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        value: str, needle: str, hint: str) -> None:
    (tmp_path / "Dockerfile").write_text(TEXT)
    monkeypatch.chdir(tmp_path)
    argv = ["build", "--platform", value, "--metadata-file", "m.json", "--iidfile", "iid",
            "-o", "type=oci,dest=out.tar", "--trace", "t.jsonl", "."]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"xshim: error: {needle}") and hint in err[1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dockerfile"]


def test_the_build_request_holds_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[plan.BuildRequest] = []

    def record(req: plan.BuildRequest) -> build_run.BuildResult:
        seen.append(req)
        return build_run.BuildResult(None, {}, {}, [])

    monkeypatch.setattr(build_run, "run_build", record)
    assert main(["build", "--platform", "arm64,linux/arm/v7", "--platform", "s390x",
                 "--mode", "copy", "--pull=never", "-o", "type=oci,dest=a.tar",
                 "--secret", "id=s,src=/f", "."]) == 0
    assert main(["build", "."]) == 0
    typed, default = seen
    assert [(p.name, p.arch.name) for p in typed.platforms] == [
        ("linux/arm64", "aarch64"), ("linux/arm/v7", "armhf"), ("linux/s390x", "s390x")]
    assert typed.mode is plan.Mode.COPY and typed.pull is False
    assert typed.output == plan.OutputSpec(plan.Output.OCI, "a.tar")
    assert typed.secrets == (plan.Secret("s", "/f"),)
    assert [p.arch for p in default.platforms] == [HOST] and default.mode is None
    assert default.pull is None and default.output.kind is plan.Output.NONE


class _Stop(Exception):
    """Raised by the stand-in for the bundle maker: what it was asked for is all a test needs."""


@pytest.mark.parametrize("builder", ["buildah", "buildx"])  # generated context; named context
def test_qemu_suite_and_twins_reach_the_bundle(builder: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from xshim.builder import bundle

    asked: dict[str, object] = {}

    def make(out: object, platforms: object, **kw: object) -> None:
        asked.update(kw, platforms=platforms)
        raise _Stop

    monkeypatch.setattr(bundle, "build_bundle", make)
    monkeypatch.setattr(build_run, "detect_builder", lambda choice: (builder, "docker"))
    monkeypatch.setattr(build_run.tools, "find", lambda program, why: f"/usr/bin/{program}")
    (tmp_path / "Dockerfile").write_text(TEXT)
    (tmp_path / "base").mkdir()
    argv = ["build", "--builder", builder, "--platform", "linux/arm64", "--qemu-suite", "trixie",
            "--accelerate", "--base", str(tmp_path / "base"), str(tmp_path)]
    assert main(argv) == 1 and "_Stop" in capsys.readouterr().err
    assert asked == {"platforms": [archmod.from_platform("linux/arm64")],
                     "qemu_suite": "trixie", "accelerate": tmp_path / "base"}
    asked.clear()
    assert main([*argv[:5], str(tmp_path)]) == 1
    assert asked["qemu_suite"] is None and asked["accelerate"] is None


def test_a_bad_qemu_suite_is_refused_before_anything_is_built(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--platform", "linux/arm64", "--qemu-suite", "Trixie/updates",
                 "/nonexistent"]) == 2
    assert "--qemu-suite 'Trixie/updates': not a Debian suite name" in capsys.readouterr().err


def test_trace_records_are_picked_out_of_the_build_log() -> None:
    from xshim.shim.tracelog import MARK

    line = f'\x1b[31m#7 0.5 {MARK}{{"event":"exec","pid":3}}\x1b[0m'
    assert build_run._trace_record(line) == {"event": "exec", "pid": 3}
    assert build_run._trace_record("Step 3/7 : RUN true") is None
    assert build_run._trace_record(f"{MARK}{{not json") is None


def test_docker_config_without_credentials_is_not_passed_on(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:

    d = Path(str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    assert "DOCKER_CONFIG" not in oci_index.tool_env()
    (d / "config.json").write_text("{}")
    assert oci_index.tool_env()["DOCKER_CONFIG"] == str(d)


def test_ignore_file_lets_the_bundle_through(tmp_path: object) -> None:

    ctx = Path(str(tmp_path))
    assert build_run._ignore_text(ctx, ctx / "Dockerfile", ".xshim") is None
    (ctx / ".dockerignore").write_text("*\n!app")
    assert build_run._ignore_text(ctx, ctx / "Dockerfile", ".xshim") == \
        "*\n!app\n!.xshim\n!.xshim/**\n"
    (ctx / "Dockerfile.dockerignore").write_text("**\n")
    assert build_run._ignore_text(ctx, ctx / "Dockerfile", ".x1") == "**\n!.x1\n!.x1/**\n"


def test_buildkit_command_line_takes_the_bundle_as_a_named_context() -> None:
    req = _req(platforms=parse_target_platforms(["linux/amd64,linux/arm64"], HOST),
               network="host", pull=True)
    assert plan.resolve_mode(None, "buildx") is plan.Mode.MOUNT
    named = plan.named_bundle_context("buildx", plan.Mode.MOUNT)
    assert named == plan.BUNDLE_CONTEXT
    assert plan.named_bundle_context("buildx", plan.Mode.COPY) is None
    assert plan.named_bundle_context("buildah", plan.Mode.MOUNT) is None
    plans = plan.plan_platforms(req, plan.Mode.MOUNT, TEXT, HOST, ".xshim", named)
    native, foreign = plans
    assert native.native and native.dockerfile_text == TEXT
    assert f"--mount=type=bind,from={named},target=/.xshim" in foreign.dockerfile_text
    layout = _layout(plans)
    layout = plan.WorkPaths(layout.context, layout.dockerfile, layout.iidfile, layout.image_name,
                         bundle_context="/w/bundle")
    a, b = plan.with_commands(plans, "buildx", req, layout, "docker")
    assert list(b.argv[:4]) == ["docker", "buildx", "build", "--progress"]
    assert "--load" in b.argv and "--pull" in b.argv and b.env == {}
    at = b.argv.index("--build-context")
    assert b.argv[at + 1] == f"{named}=/w/bundle"
    assert "--build-context" not in a.argv  # the native build has no use for it
    # dockerd 26's BuildKit leaves a global ARG TARGETARCH empty: given explicitly.
    assert "TARGETARCH=arm64" in b.argv and "TARGETARCH=amd64" in a.argv


BUILDKIT_LOG = r"""#1 [internal] load build definition from Dockerfile.linux-arm64
#5 [build 2/3] RUN tcc -o /b /p.c
#6 [stage-1 2/3] RUN true
#5 0.512 {mark}{{"event":"exec","path":"/usr/bin/tcc"}}
#6 DONE 0.1s
#7 [stage-1 3/3] RUN exit 7
#7 ERROR: process "/bin/sh -c exit 7" did not complete successfully: exit code: 7
------
 > [stage-1 3/3] RUN exit 7:
------
#5 CANCELED
ERROR: failed to solve: process "/bin/sh -c exit 7" did not complete successfully: exit code: 7
"""


def test_buildkit_output_steps_trace_and_failure(tmp_path: object) -> None:
    """BuildKit's plain progress interleaves the steps of a build's stages: a trace record
    belongs to the step its number names, a failure to the step BuildKit reports."""
    import io

    from xshim.shim.tracelog import MARK

    log = BUILDKIT_LOG.format(mark=MARK)
    p = plan.PlatformPlan(parse_platform("linux/arm64"), False, "", (),
                          ("sh", "-c", 'printf "%s" "$0"; exit 1', log))
    out = build_run.Runner("plain", io.StringIO()).run_one(p)
    assert out.returncode == 1
    assert [(r["step"], r["path"]) for r in out.trace] == [("RUN tcc -o /b /p.c",
                                                             "/usr/bin/tcc")]
    msg = build_run.failure_message([out])
    assert msg is not None and msg.startswith(
        "linux/arm64: step 'RUN exit 7' exited with status 7 (builder exit status 1)")
    assert "ERROR: failed to solve" in msg
