"""``xshim patch`` end to end through the CLI entry point: files, stdin, exit codes, output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xshim.builder.cli import main
from xshim.shim import arch
from xshim.shim.layout import Manifest

ARM = "FROM --platform=linux/arm64 debian\nRUN apt-get update\n"
NATIVE = "FROM debian\nRUN apt-get update\n"
pytestmark = pytest.mark.skipif(arch.host_arch().name != "x86_64",
                                reason="expectations assume an x86_64 host")


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_bundle(path: Path, prefix: str = "/.xshim",
                emulators: dict[str, str] | None = None) -> Path:
    """A directory with a valid manifest: all that ``xshim patch --bundle`` reads."""
    (path / "bin").mkdir(parents=True)
    manifest = Manifest(prefix=prefix, host_arch=arch.host_arch().name,
                        platforms=("linux/arm64",), emulators=emulators or {},
                        loader="lib/ld.so", entries=(), dirs=())
    (path / "manifest.json").write_text(manifest.dumps())
    return path


def test_default_writes_to_stdout(workdir: Path,
                                  capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (workdir / "Dockerfile").write_text(ARM)
    assert main(["patch", "Dockerfile"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert out.startswith(ARM.splitlines()[0] + "\nARG XSHIM_TRACE\nCOPY .xshim /.xshim\n")
    assert (workdir / "Dockerfile").read_text() == ARM


def test_output_file_is_written(workdir: Path) -> None:
    (workdir / "Dockerfile").write_text(ARM)
    assert main(["patch", "Dockerfile", "-o", "Dockerfile.xshim", "--mode", "mount"]) == 0
    text = (workdir / "Dockerfile.xshim").read_text()
    assert "RUN --mount=type=bind,source=.xshim,target=/.xshim apt-get update\n" in text
    assert '["/.xshim/bin/xshim-install", "--mounted"]' in text
    assert not [p for p in os.listdir(workdir) if p.endswith(".tmp")]


def test_in_place(workdir: Path) -> None:
    (workdir / "Dockerfile").write_text(ARM)
    assert main(["patch", "Dockerfile", "-o", "Dockerfile"]) == 0
    once = (workdir / "Dockerfile").read_text()
    assert "xshim-install" in once
    assert main(["patch", "Dockerfile", "-o", "Dockerfile"]) == 0
    assert (workdir / "Dockerfile").read_text() == once


def test_stdin(workdir: Path, monkeypatch: pytest.MonkeyPatch,
               capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import io
    import sys

    class Stdin(io.TextIOWrapper):
        pass

    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(NATIVE.encode())))
    assert main(["patch", "-", "--platform", "linux/riscv64", "--mode", "mount"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "--mount=type=bind,source=.xshim,target=/.xshim" in out


def test_bytes_survive(workdir: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    data = b"FROM debian\r\n# caf\xe9 \xff\r\nRUN echo \xc3\xa9"
    (workdir / "Dockerfile").write_bytes(data)
    assert main(["patch", "Dockerfile"]) == 0
    assert capsysbinary.readouterr().out == data


def test_check(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "a").write_text(ARM)
    (workdir / "b").write_text(NATIVE)
    assert main(["patch", "--check", "a"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("a:1:1: warning XS001: stage 0 runs on linux/arm64")
    assert main(["patch", "--check", "b"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["patch", "--check", "b", "--platform", "linux/arm64"]) == 1
    main(["patch", "a", "-o", "a"])
    assert main(["patch", "--check", "a"]) == 0


def test_check_json(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "Dockerfile").write_text(ARM)
    assert main(["patch", "--check", "--format", "json", "Dockerfile"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert records[0] == {
        "file": "Dockerfile", "line": 1, "column": 1, "level": "warning", "code": "XS001",
        "message": "stage 0 runs on linux/arm64, foreign to this host: its RUN steps need the "
                   "xshim bundle (copy mode)"}
    assert all(set(r) == {"file", "line", "column", "level", "code", "message"} for r in records)


def test_diff(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "Dockerfile").write_text(ARM)
    assert main(["patch", "--diff", "Dockerfile"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--- a/Dockerfile\n+++ b/Dockerfile\n@@ ")
    assert "+ARG XSHIM_TRACE\n" in out and "+RUN [\"/.xshim/bin/xshim-install\"]\n" in out
    assert not (workdir / "Dockerfile.xshim").exists()


@pytest.mark.parametrize(
    ("args", "text", "needle"),
    [
        (["patch", "missing"], None, "missing: no such file"),
        (["patch", "Dockerfile"], "FROM a\nENV PATH\n", "Dockerfile:2: ENV must have two"),
        (["patch", "Dockerfile"], "# only a comment\n", "Dockerfile:1: file with no instr"),
        (["patch", "Dockerfile"], "FROM a\nRUN <<EOF\nx\n", "Dockerfile:2: unterminated heredoc"),
        (["patch", "Dockerfile"], "FROM --platform=linux/vax a\nRUN x\n",
         "Dockerfile:1: unknown platform 'linux/vax'"),
        (["patch", "Dockerfile", "--platform", "linux/vax"], ARM, "unknown platform 'linux/vax'"),
        (["patch", "Dockerfile", "--platform", "linux/amd64,linux/vax"], ARM,
         "unknown platform 'linux/vax'"),
        (["patch", "Dockerfile", "--platform", "linux/amd64,,linux/arm64"], ARM, "empty entry"),
        (["patch", "Dockerfile"], "FROM --platform=linux/arm64 a\nRUN x\nSHELL bash -c\nRUN y\n",
         "Dockerfile:3: SHELL needs the JSON form"),
        (["patch", "Dockerfile", "--mount-from", "xshim"], ARM, "only serves mount mode"),
        (["patch", "Dockerfile", "--mode", "mount", "--mount-from", "X Y"], ARM,
         "'X Y' is not a build context name"),
        (["patch", "Dockerfile", "--bundle", "nope"], ARM, "bundle directory 'nope' does not"),
        (["patch", "Dockerfile", "--bundle", "empty"], ARM, "manifest.json: no such file"),
        (["patch", "Dockerfile", "--bundle", "b", "--prefix", "/opt/x"], ARM,
         "made for prefix '/.xshim'"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], text: str | None,
    needle: str,
) -> None:
    if text is not None:
        (workdir / "Dockerfile").write_text(text)
    (workdir / "empty").mkdir()
    make_bundle(workdir / "b")
    before = sorted(os.listdir(workdir))
    assert main([*args, "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "\nhint: " in err, err
    assert sorted(os.listdir(workdir)) == before


def test_bundle_outside_context(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "ctx").mkdir()
    (workdir / "ctx" / "Dockerfile").write_text(ARM)
    make_bundle(workdir / "elsewhere")
    assert main(["patch", "ctx/Dockerfile", "--bundle", "elsewhere", "--context", "ctx"]) == 2
    assert "outside the build context" in capsys.readouterr().err


def test_bundle_relative_to_context_and_prefix_from_manifest(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "ctx").mkdir()
    (workdir / "ctx" / "Dockerfile").write_text(ARM)
    make_bundle(workdir / "ctx" / "build" / "xs", prefix="/opt/xs")
    assert main(["patch", "ctx/Dockerfile", "--bundle", "ctx/build/xs", "--context", "ctx",
                 "--mode", "mount"]) == 0
    out = capsys.readouterr().out
    assert "RUN --mount=type=bind,source=build/xs,target=/opt/xs apt-get update\n" in out
    assert ('RUN --mount=type=bind,source=build/xs,target=/opt/xs '
            '["/opt/xs/bin/xshim-install", "--mounted"]') in out


def test_platform_list(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One patched file for a build of both platforms: the stage is foreign for arm64, so it is
    # patched; for amd64 the shim runs every command directly (reported, not an error).
    (workdir / "Dockerfile").write_text(NATIVE)
    assert main(["patch", "Dockerfile", "--platform", "linux/amd64,linux/arm64"]) == 0
    captured = capsys.readouterr()
    assert 'RUN ["/.xshim/bin/xshim-install"]\n' in captured.out
    assert "Dockerfile:1:1: warning XS001: stage 0 runs on linux/arm64" in captured.err
    assert main(["patch", "--check", "--format", "json", "Dockerfile",
                 "--platform", "linux/amd64, linux/arm64"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert any(r["code"] == "XS012" and "natively for linux/amd64" in r["message"]
               for r in records)
    # Only native targets: nothing to patch.
    assert main(["patch", "--check", "Dockerfile", "--platform", "linux/amd64,linux/386"]) == 0


def test_mount_from_needs_no_bundle_in_the_context(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "ctx").mkdir()
    (workdir / "ctx" / "Dockerfile").write_text(ARM)
    make_bundle(workdir / "elsewhere", prefix="/opt/xs")
    assert main(["patch", "ctx/Dockerfile", "--bundle", "elsewhere", "--context", "ctx",
                 "--mode", "mount", "--mount-from", "xshim"]) == 0
    out = capsys.readouterr().out
    assert "RUN --mount=type=bind,from=xshim,target=/opt/xs apt-get update\n" in out
    assert 'RUN --mount=type=bind,from=xshim,target=/opt/xs ["/opt/xs/bin/xshim-restore"]' in out


def test_bundle_without_the_stages_emulator_is_reported(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "Dockerfile").write_text(ARM + "FROM --platform=linux/riscv64 debian\nRUN x\n")
    make_bundle(workdir / ".xshim", emulators={"aarch64": "qemu/qemu-aarch64-static"})
    assert main(["patch", "Dockerfile", "--bundle", ".xshim", "-o", "out"]) == 0
    err = capsys.readouterr().err
    assert "Dockerfile:3:1: warning XS013: stage 1 runs on linux/riscv64" in err
    assert "linux/arm64" not in err.split("XS013")[1]


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["patch", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "xshim patch Dockerfile -o Dockerfile.xshim" in out
