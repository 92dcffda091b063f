"""The one error boundary around ``xshim``: typed errors with their hint and exit status, and
anything else as one ``xshim: error:`` line, with the traceback only under -v."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xshim.builder import cli, verify
from xshim.builder.errors import InputError, MissingToolError
from xshim.shim.errors import ShimError


def _fail_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise exc
    monkeypatch.setattr(verify, "verify_bundle", boom)


@pytest.mark.parametrize(("exc", "code", "lines"), [
    (InputError("bad thing", "do this"), 2, ["xshim: error: bad thing", "hint: do this"]),
    (MissingToolError("tar", "tar"), 3, [
        "xshim: error: couldn't find 'tar'",
        "hint: is 'tar' installed? On Debian: apt-get install tar"]),
    (ShimError("the shim said no", "ask it nicely"), 1, ["xshim: error: the shim said no",
                                                         "hint: ask it nicely"]),
    (PermissionError(13, "Permission denied", "/x/y"), 1, [
        "xshim: error: /x/y: Permission denied"]),
    (RuntimeError("boom"), 1, ["xshim: error: internal error: RuntimeError: boom",
                               "hint: run with -v to see where it happened"]),
    (RecursionError("deep"), 1, ["xshim: error: internal error: RecursionError: deep",
                                 "hint: run with -v to see where it happened"]),
], ids=["input", "missing-tool", "shim", "oserror", "bug", "recursion"])
def test_errors_become_one_message_and_a_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: BaseException,
    code: int, lines: list[str],
) -> None:
    _fail_with(monkeypatch, exc)
    assert cli.main(["verify", "somewhere"]) == code
    err = capsys.readouterr().err
    assert err.splitlines() == lines
    assert "Traceback" not in err


def test_verbose_shows_the_traceback(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _fail_with(monkeypatch, RuntimeError("boom"))
    assert cli.main(["-v", "verify", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1] == "xshim: error: internal error: RuntimeError: boom"


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert cli.main(["verify", "somewhere"]) == 130
    assert capsys.readouterr().err == "xshim: interrupted\n"


@pytest.mark.parametrize("command", ["build", "index", "trace", "run", "patch"])
def test_the_module_runs_as_a_program(command: str) -> None:
    """``python -m xshim.builder.cli`` (how the tests and some users run it) imports every
    sub-command module without an import cycle."""
    r = subprocess.run([sys.executable, "-m", "xshim.builder.cli", command, "--help"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: xshim {command}"), r.stdout[:200]


@pytest.mark.parametrize("as_json", [False, True])
def test_verify_reports_a_directory_that_is_no_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    empty = tmp_path
    assert cli.main(["verify", *(["--json"] if as_json else []), str(empty)]) == 1
    out = capsys.readouterr().out
    if as_json:
        report = json.loads(out)
        assert report["ok"] is False and report["bundle"] == str(empty)
        assert [p["check"] for p in report["problems"]] == ["manifest"]
    else:
        assert out.splitlines()[0] == f"bundle    {empty}"
        assert "FAILED: 1 problem(s)" in out and "manifest.json: missing" in out
