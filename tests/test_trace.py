"""``xshim trace`` on real recorded traces (tests/traces, see its README for how each was made):
the reader, the views, the exports and the command line."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from xshim.builder.errors import InputError, SourceError
from xshim.builder.trace_export import perfetto, svg
from xshim.builder.trace_read import Trace, assemble, parse, read_files
from xshim.builder.trace_views import slow, summary, total_cpu, tree, tree_text
from xshim.shim.tracelog import MARK, Decision, TraceSink

TRACES = Path(__file__).resolve().parent / "traces"
RUN_TRACE = TRACES / "dpkg-reconfigure.jsonl"  # xshim run --trace, dpkg-reconfigure of 3 packages
BUILD_LOG = TRACES / "failing-build.log"  # docker build (legacy builder), XSHIM_TRACE=log
SECOND_STAGE = TRACES / "debootstrap-second-stage.jsonl.gz"  # xshim run --trace, 1158 processes
ALL = [RUN_TRACE, BUILD_LOG, SECOND_STAGE]


def load(path: Path) -> Trace:
    return read_files([str(path)])


def xshim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xshim.builder", *args], capture_output=True,
                          text=True, cwd=cwd)  # fmt: skip


def strip(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "_where"} for r in recs]


# --- the fixtures are what they claim to be ----------------------------------------------------


def test_fixtures_are_real_and_small() -> None:
    for path in ALL:
        assert path.stat().st_size < 80_000, path
    log = BUILD_LOG.read_text()
    assert "Step 1/" in log and "returned a non-zero code: 3" in log  # docker's own lines
    assert "\x1b[91m" + MARK in log  # the legacy builder's colour for a step's stderr


# --- CPU accounting -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_exclusive_cpu_adds_up_to_the_kernel_total(path: Path) -> None:
    """Each command's rusage (what the kernel counted for it and everything it waited for) is
    the total; the programs' exclusive times, own rusage minus their children's, must add up to
    it. A process hung under the wrong parent, or a lost exit, breaks the sum."""
    trace = load(path)
    total = total_cpu(trace)
    assert total > 0.1
    assert all(r.main_proc is not None and r.main_proc.cpu for r in trace.runs)
    exclusive = [p.exclusive for p in trace.procs]
    assert sum(exclusive) == pytest.approx(total, rel=0.01)
    assert min(exclusive) > -0.01 * total  # no child's time is more than its parent's
    s = summary(trace)
    assert s["cpu"] == pytest.approx(total, abs=1e-5)
    assert sum(a["cpu"] for a in s["arches"]) == pytest.approx(total, rel=0.01)


def test_summary_of_the_run_trace() -> None:
    s = summary(load(RUN_TRACE))
    assert s["runs"] == 1 and s["execs"] == sum(s["decisions"].values())
    assert s["decisions"]["emulate"] > 20 and s["decisions"]["native"] == 0
    assert s["processes"] == len(load(RUN_TRACE).procs)
    assert [a["arch"] for a in s["arches"]] == ["aarch64"]
    top = s["top_cpu"]
    assert [e["cpu"] for e in top] == sorted((e["cpu"] for e in top), reverse=True)
    assert top[0]["program"] == "dpkg-reconfigure"  # perl, the busiest program
    counts = {e["program"]: e["count"] for e in s["top_count"]}
    assert counts["dpkg-query"] >= 6


def test_summary_of_the_second_stage() -> None:
    s = summary(load(SECOND_STAGE))
    assert (s["processes"], s["decisions"]["emulate"]) == (1158, 1159)
    assert s["top_cpu"][0]["program"] == "dpkg-deb"  # unpacking: xz inside dpkg-deb
    assert s["top_count"][0] == {**s["top_count"][0], "program": "dpkg-deb", "count": 189}
    assert s["failed"] > 100  # grep -q misses and dpkg-split probes: failures that are normal


# --- tree and slow --------------------------------------------------------------------------------


def test_failed_view_of_the_build_names_the_nested_script_and_its_status() -> None:
    trace = load(BUILD_LOG)
    runs = tree(trace, failed=True)
    assert len(runs) == 1 and runs[0]["argv"][-1] == "/ci/build.sh"
    chain = []
    node = runs[0]["procs"][0]
    while True:
        chain.append((node["program"], node["outcome"]))
        if not node["children"]:
            break
        assert len(node["children"]) == 1
        node = node["children"][0]
    assert chain[-3:] == [("package.sh", "exit 3"), ("verify-archive.sh", "exit 3"),
                          ("gzip", "exit 1")]
    assert ("build.sh", "exit 3") in chain
    text = tree_text(runs, failed=True)
    assert re.search(r"verify-archive\.sh /tmp/out\.tar\.gz .* exit 3$", text, re.M), text
    assert "more that succeeded" in text  # head, tar: shown only without --failed
    full = tree_text(tree(trace))
    assert "head -c 100" in full and "dpkg --print-architecture" in full


def test_slow_lists_the_longest_processes_with_their_ancestry() -> None:
    trace = load(RUN_TRACE)
    rows = slow(trace, 4)
    assert len(rows) == 4
    assert [r["wall"] for r in rows] == sorted((r["wall"] for r in rows), reverse=True)
    assert rows[0]["program"] == "dpkg-reconfigure" and rows[0]["ancestry"] == []
    deep = next(r for r in slow(trace, 50) if r["program"] == "pam-auth-update")
    assert [a["program"] for a in deep["ancestry"]] == ["libpam-runtime.postinst",
                                                        "dpkg-reconfigure"]


# --- exports --------------------------------------------------------------------------------------

# The Trace Event Format's fields (the format's specification: "ph" the phase, "ts" and "dur" in
# microseconds, "pid" and "tid" integers, "M" metadata events with "args", "i" instant events
# with scope "s"), written as a JSON Schema.
TRACE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "traceEvents": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["ph", "name", "pid", "tid"],
                "properties": {
                    "ph": {"enum": ["B", "E", "X", "i", "I", "C", "M", "b", "e", "n", "s", "t",
                                    "f", "P", "O", "N", "D"]},
                    "name": {"type": "string"},
                    "cat": {"type": "string"},
                    "pid": {"type": "integer"},
                    "tid": {"type": "integer"},
                    "ts": {"type": "number", "minimum": 0},
                    "dur": {"type": "number", "minimum": 0},
                    "s": {"enum": ["g", "p", "t"]},
                    "args": {"type": "object"},
                },
                "allOf": [
                    {"if": {"properties": {"ph": {"const": "X"}}},
                     "then": {"required": ["ts", "dur"]}},
                    {"if": {"properties": {"ph": {"const": "i"}}},
                     "then": {"required": ["ts", "s"]}},
                    {"if": {"properties": {"ph": {"const": "M"}}},
                     "then": {"required": ["args"],
                              "properties": {"name": {"enum": [
                                  "process_name", "process_labels", "process_sort_index",
                                  "thread_name", "thread_sort_index"]}}}},
                ],
            },
        },
    },
}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_perfetto_export_is_valid_trace_event_json(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = xshim("trace", "export", "--format", "perfetto", "-o", str(out), str(path))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, TRACE_EVENT_SCHEMA)
    trace = load(path)
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    tracks = {e["pid"] for e in slices}
    assert len(tracks) == len(trace.procs)  # one track per process
    assert all(e["tid"] == e["pid"] for e in doc["traceEvents"])
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}  # fmt: skip
    assert set(names) == tracks
    assert 0 <= min(e["ts"] for e in slices) < 100_000  # µs from the supervisor's start
    assert perfetto(trace) == doc


def test_svg_export_is_well_formed_with_a_bar_per_process(tmp_path: Path) -> None:
    trace = load(BUILD_LOG)
    text = svg(trace, "t")
    root = ET.fromstring(text)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [g for g in root.iter(f"{ns}g") if g.find(f"{ns}title") is not None]
    assert len(bars) == len(trace.procs)
    tips = [g.find(f"{ns}title").text or "" for g in bars]  # type: ignore[union-attr]
    assert any("verify-archive.sh" in t and "exit 3" in t for t in tips)
    out = tmp_path / "t.svg"
    r = xshim("trace", "export", "--format", "svg", "-o", str(out), str(BUILD_LOG))
    assert r.returncode == 0, r.stderr
    ET.parse(out)


# --- reading build logs ---------------------------------------------------------------------------


def test_records_survive_every_builders_line_prefix() -> None:
    """The same records whatever the builder put before each line: BuildKit's plain progress
    (``#9 1.234 ``), CRLF line ends, buildah/podman (plain), the legacy builder (colours)."""
    text = BUILD_LOG.read_text()
    want = strip(parse(text, "log"))
    assert len(want) > 20
    lines = text.split("\n")
    buildkit = "\n".join(f"#9 {i * 0.013:.3f} {ln}" for i, ln in enumerate(lines))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    crlf = text.replace("\n", "\r\n")
    for variant in (buildkit, plain, crlf):
        assert strip(parse(variant, "log")) == want


def test_jsonl_and_build_log_give_the_same_trace() -> None:
    recs = strip(parse(RUN_TRACE.read_text(), "t"))
    as_log = "\n".join(f"#5 0.{i:03d} {MARK}{json.dumps(r)}" for i, r in enumerate(recs))
    again = strip(parse("Step 1/3 : RUN x\n" + as_log + "\n", "log"))
    assert again == recs
    a, b = assemble(recs), assemble(again)
    assert summary(a) == summary(b)


def test_version_1_records_still_read() -> None:
    v1 = [{k: v for k, v in r.items() if k not in ("run", "cpu", "user", "sys", "maxrss")}
          for r in strip(parse(RUN_TRACE.read_text(), "t")) if r["event"] != "start"]
    trace = assemble(v1)
    assert len(trace.runs) == 1 and len(trace.procs) == len(load(RUN_TRACE).procs)
    assert summary(trace)["cpu"] == 0 and tree(trace)[0]["procs"][0]["program"] == (
        "dpkg-reconfigure")


def test_a_long_record_in_a_build_log_is_one_atomic_write() -> None:
    r, w = os.pipe()
    stream = io.TextIOWrapper(os.fdopen(w, "wb"), encoding="utf-8")
    sink = TraceSink(stream, readable=False, marked=True)
    argv = [b"gcc"] + [b"-I/usr/include/" + b"x" * 300] * 200
    sink.exec(7, 1, b"/usr/bin/gcc", argv, Decision.EMULATE, emulator="qemu-aarch64",
              arch="aarch64")
    stream.close()
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and len(data) <= 4096
    (rec,) = parse(data.decode(), "pipe")
    assert rec["truncated"] is True and rec["argv"][0] == "gcc" and rec["pid"] == 7


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    with pytest.raises(InputError, match=r"nope\.log"):
        read_files([str(missing)])
    empty = tmp_path / "plain.log"
    empty.write_text("Step 1/2 : FROM debian\nok\n")
    with pytest.raises(InputError, match=r"plain\.log: no xshim trace records"):
        read_files([str(empty)])
    lines = RUN_TRACE.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n")
    with pytest.raises(SourceError) as e:
        read_files([str(bad)])
    assert (e.value.file, e.value.line) == (str(bad), 3)
    cut = tmp_path / "cut.log"
    cut.write_text(f"Step 1/1 : RUN x\n#4 0.5 {MARK}" + '{"event":"exec","pid":1\n')
    with pytest.raises(SourceError, match=r"cut\.log:2: malformed trace record"):
        read_files([str(cut)])
    wrong = tmp_path / "other.jsonl"
    wrong.write_text('{"event": "exec", "pid": "1"}\n')
    with pytest.raises(SourceError, match=r"other\.jsonl:1: exec record without a valid"):
        read_files([str(wrong)])


def test_cli_exits_2_and_writes_nothing_on_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "exec"}\n')
    for args in (["summary", str(tmp_path / "missing")], ["tree", "--failed", str(bad)],
                 ["export", "-o", str(out), str(bad)], ["slow", "-n", "3", "/etc/hostname"]):
        r = xshim("trace", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("xshim: error: ") and "Traceback" not in r.stderr
        assert "hint:" in r.stderr
    assert "bad.jsonl:1:" in xshim("trace", "tree", str(bad)).stderr
    assert not out.exists() and os.listdir(tmp_path) == ["bad.jsonl"]


def test_cli_views_and_json_formats(tmp_path: Path) -> None:
    r = xshim("trace", "summary", str(RUN_TRACE), str(BUILD_LOG))
    assert r.returncode == 0 and "3 run(s)" in r.stdout and "top programs by count" in r.stdout
    out = tmp_path / "s.json"
    assert xshim("trace", "slow", "-n", "2", "--format", "json", "-o", str(out),
                 str(RUN_TRACE)).returncode == 0  # fmt: skip
    assert len(json.loads(out.read_text())) == 2
    r = xshim("trace", "tree", "--format", "json", str(BUILD_LOG))
    assert [len(run["procs"]) for run in json.loads(r.stdout)] == [1, 1]
    r = xshim("trace", "--help")
    assert "examples:" in r.stdout and "XSHIM_TRACE=log" in r.stdout
