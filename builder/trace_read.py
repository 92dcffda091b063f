"""Reading exec traces: records from JSONL files or build logs, assembled into process trees.

Two inputs, told apart by their first non-blank line:
  - a JSONL trace (``XSHIM_TRACE=FILE``, ``xshim run --trace FILE``): every line one record;
  - a build log (``docker build --build-arg XSHIM_TRACE=log ... 2>&1 | tee build.log``): records
    are the lines carrying ``shim.tracelog.MARK``, wherever it sits in the line (BuildKit's
    ``#7 1.234`` prefix, the legacy builder's colour escapes); every other line is the build's own.

``parse`` (text → records) and ``assemble`` (records → ``Trace``) are pure; ``read_files`` is the
I/O edge. The record format is described in ``shim/tracelog.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..shim.tracelog import MARK
from .errors import InputError, SourceError

_MARK_RE = re.compile(re.escape(MARK.split("/")[0]) + r"/(\d+) ")
_EVENTS = ("start", "exec", "exit")
_HINT = ("a trace is the file given to XSHIM_TRACE/--trace, or a build log of a build run with "
         "--build-arg XSHIM_TRACE=log")
# Program images: these decisions replace the process's program; "kernel" and "refused" are
# attempts the kernel answered with an error (a PATH search, a missing emulator).
RUNS_PROGRAM = ("emulate", "native", "twin")


@dataclass
class Exec:
    """One exec record: a program the process became, or an attempt that failed."""

    time: float
    path: str
    argv: list[str]
    decision: str
    arch: str | None = None
    emulator: str | None = None
    errno: str | None = None
    reason: str | None = None
    script: list[str] = field(default_factory=list)
    sha256: str | None = None

    @property
    def program(self) -> str:
        return os.path.basename(self.path.rstrip("/")) or self.path


@dataclass
class Proc:
    """One traced process: the programs it ran (in order) and how it ended."""

    run: str
    pid: int
    start: float
    execs: list[Exec] = field(default_factory=list)
    attempts: list[Exec] = field(default_factory=list)
    parent: Proc | None = None
    children: list[Proc] = field(default_factory=list)
    end: float | None = None  # None: no exit record (the trace or the log was cut short)
    status: int | None = None
    signal: int | None = None
    signame: str | None = None
    guest_fault: bool = False
    cpu: float | None = None  # user+system, its own and that of the children it waited for
    maxrss: int | None = None

    @property
    def last(self) -> Exec:
        return self.execs[-1] if self.execs else self.attempts[-1]

    @property
    def program(self) -> str:
        return self.last.program

    @property
    def arch(self) -> str | None:
        return self.execs[-1].arch if self.execs else None

    @property
    def emulated(self) -> bool:
        return bool(self.execs) and self.execs[-1].decision == "emulate"

    @property
    def exited(self) -> bool:
        return self.end is not None

    @property
    def failed(self) -> bool:
        return self.signal is not None or (self.status is not None and self.status != 0)

    def wall(self, until: float) -> float:
        return max(0.0, (self.end if self.end is not None else until) - self.start)

    @property
    def exclusive(self) -> float:
        """CPU time in this process's own programs, not in its children's."""
        if self.cpu is None:
            return 0.0
        return self.cpu - sum(c.cpu for c in self.children if c.cpu is not None)

    def ancestry(self) -> list[Proc]:
        """This process and its ancestors, root last."""
        out: list[Proc] = []
        p: Proc | None = self
        while p is not None:
            out.append(p)
            p = p.parent
        return out

    def walk(self) -> Iterable[Proc]:
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class Run:
    """What one supervisor traced: a RUN step of a build, or one ``xshim run``."""

    id: str
    argv: list[str] = field(default_factory=list)
    start: float | None = None
    main: int | None = None  # the pid of the supervisor's command, from the start record
    last: float = 0.0  # the time of its last record
    roots: list[Proc] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # exec records by decision

    @property
    def begin(self) -> float:
        times = [p.start for p in self.roots]
        if self.start is not None:
            times.append(self.start)
        return min(times) if times else self.last

    @property
    def wall(self) -> float:
        return max(0.0, self.last - self.begin)

    @property
    def main_proc(self) -> Proc | None:
        return next((p for p in self.roots if p.pid == self.main), None)


@dataclass
class Trace:
    runs: list[Run]
    records: int
    sources: list[str]

    @property
    def procs(self) -> list[Proc]:
        return [p for r in self.runs for p in r.procs]

    @property
    def begin(self) -> float:
        return min((r.begin for r in self.runs), default=0.0)

    @property
    def end(self) -> float:
        return max((r.last for r in self.runs), default=0.0)


# --- text -> records ------------------------------------------------------------------------------


def parse(text: str, name: str) -> list[dict[str, Any]]:
    """The records in one file's text; ``name`` is used in error messages."""
    lines = text.split("\n")
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    jsonl = first.startswith("{") and not _MARK_RE.search(first)
    out: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if jsonl:
            if not line.strip():
                continue
            body, start = line, len(line) - len(line.lstrip())
        else:
            m = _MARK_RE.search(line)
            if m is None:
                continue
            if int(m.group(1)) > 2:
                raise SourceError(name, number, f"trace records of version {m.group(1)}: this "
                                  "xshim reads versions 1 and 2", "use a newer xshim")
            body, start = line, m.end()
        try:
            rec, _ = decoder.raw_decode(body, start)
        except json.JSONDecodeError as e:
            raise SourceError(name, number, f"malformed trace record: {e.msg}",
                              "the line was cut or garbled; remove it to read the rest") from None
        _check(rec, name, number)
        rec["_where"] = (name, number)
        out.append(rec)
    return out


_REQUIRED: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    "start": (("time", (int, float)), ("pid", int)),
    "exec": (("time", (int, float)), ("pid", int), ("path", str), ("argv", list),
             ("decision", str)),
    "exit": (("time", (int, float)), ("pid", int)),
}


def _check(rec: object, name: str, number: int) -> None:
    if not isinstance(rec, dict) or rec.get("event") not in _EVENTS:
        raise SourceError(name, number, "not an xshim trace record (no \"event\": start, exec "
                          "or exit)", _HINT)
    for key, kind in _REQUIRED[rec["event"]]:
        if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
            raise SourceError(name, number, f"{rec['event']} record without a valid {key!r}",
                              _HINT)


# --- records -> processes -------------------------------------------------------------------------


def assemble(records: Iterable[dict[str, Any]], sources: Sequence[str] = ()) -> Trace:
    """Build the process trees. Records of one run must come in the order they were written
    (they do, in a file and in a log); runs may interleave."""
    runs: dict[str, Run] = {}
    live: dict[tuple[str, int], Proc] = {}
    count = 0
    for rec in records:
        count += 1
        # Version 1 records have no run id: each file is one run.
        run_id = str(rec.get("run") or f"{rec.get('_where', ('trace',))[0]}")
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = Run(run_id)
        t = float(rec["time"])
        run.last = max(run.last, t)
        event = rec["event"]
        pid = rec["pid"]
        if event == "start":
            run.argv = [str(a) for a in rec.get("argv") or []]
            run.start = t
            run.main = pid
        elif event == "exec":
            _on_exec(run, live, rec, t)
        else:
            proc = live.pop((run_id, pid), None)
            if proc is None:
                continue  # an exit of a process whose exec was not traced (or clipped)
            proc.end = t
            proc.status = rec.get("status")
            proc.signal = rec.get("signal")
            proc.signame = rec.get("signame") or (_signame(proc.signal) if proc.signal else None)
            proc.guest_fault = bool(rec.get("guest_fault"))
            cpu = rec.get("cpu")
            proc.cpu = float(cpu) if isinstance(cpu, int | float) else None
            proc.maxrss = rec.get("maxrss")
    ordered = sorted(runs.values(), key=lambda r: r.begin)
    return Trace(ordered, count, list(sources))


def _on_exec(run: Run, live: dict[tuple[str, int], Proc], rec: dict[str, Any], t: float) -> None:
    if rec["decision"] == "failed":
        # The kernel refused the emulated exec recorded just before: the process never became
        # that program, and the exec counts as one the kernel answered with an error.
        proc = live.get((run.id, int(rec["pid"])))
        if proc is not None and proc.execs and proc.execs[-1].decision in ("emulate", "twin"):
            last = proc.execs.pop()
            run.counts[last.decision] -= 1
            last.decision, last.errno = "kernel", rec.get("errno")
            proc.attempts.append(last)
            run.counts["kernel"] = run.counts.get("kernel", 0) + 1
        return
    ex = Exec(
        time=t,
        path=str(rec["path"]),
        argv=[str(a) for a in rec["argv"]],
        decision=str(rec["decision"]),
        arch=rec.get("arch"),
        emulator=rec.get("emulator"),
        errno=rec.get("errno"),
        reason=rec.get("reason"),
        script=[str(s) for s in rec.get("script") or []],
        sha256=rec.get("sha256"),
    )
    run.counts[ex.decision] = run.counts.get(ex.decision, 0) + 1
    key = (run.id, int(rec["pid"]))
    proc = live.get(key)
    if proc is None:
        proc = live[key] = Proc(run.id, key[1], t)
        parent = live.get((run.id, int(rec.get("ppid") or 0)))
        proc.parent = parent
        (parent.children if parent is not None else run.roots).append(proc)
        run.procs.append(proc)
    (proc.execs if ex.decision in RUNS_PROGRAM else proc.attempts).append(ex)


def _signame(sig: int) -> str:
    import signal

    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


# --- files ----------------------------------------------------------------------------------------


def read_files(paths: Sequence[str]) -> Trace:
    """Read every file (``-`` is stdin, ``*.gz`` is decompressed) and assemble one trace;
    InputError when a file cannot be read, holds a malformed record, or holds no records."""
    if not paths:
        raise InputError("no trace file given", _HINT)
    records: list[dict[str, Any]] = []
    for path in paths:
        try:
            if path == "-":
                text = sys.stdin.read()
            elif path.endswith(".gz"):  # CI keeps its logs and artefacts compressed
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                    text = f.read()
            else:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
        except (OSError, EOFError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InputError(f"cannot read trace {path!r}: {why}", _HINT) from None
        found = parse(text, path)
        if not found:
            raise InputError(f"{path}: no xshim trace records in it", _HINT)
        records.extend(found)
    return assemble(records, paths)
