"""Views of a trace: summary, process tree, slowest execs. Pure: a ``Trace`` in, data or text out.

Each view has a data form (plain dicts and lists, what ``--format json`` prints) and a text form
made from the data form, so both say the same thing.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from .trace_read import Proc, Run, Trace

ARG_MAX = 32  # characters shown of one argument
LINE_ARGV_MAX = 90  # characters shown of a whole command line


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 600:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s"


def short_argv(argv: list[str], path: str = "", limit: int = LINE_ARGV_MAX) -> str:
    """A command line cut down for one line: argv[0] as its base name, long arguments clipped."""
    words = list(argv) or [path]
    if words:
        words[0] = words[0].rsplit("/", 1)[-1] or words[0]
    shown: list[str] = []
    used = 0
    for i, w in enumerate(words):
        w = w if len(w) <= ARG_MAX else w[: ARG_MAX - 1] + "…"
        q = shlex.quote(w) if w else "''"
        if used + len(q) > limit and i > 0:
            shown.append(f"…(+{len(words) - i})")
            break
        shown.append(q)
        used += len(q) + 1
    return " ".join(shown)


def outcome(p: Proc) -> str:
    if p.signal is not None:
        return f"{p.signame or p.signal}" + (" (guest fault)" if p.guest_fault else "")
    if p.status is None:
        return "unfinished"
    return "ok" if p.status == 0 else f"exit {p.status}"


def _label(p: Proc) -> str:
    last = p.last
    text = short_argv(last.argv, last.path)
    if len(p.execs) > 1:  # e.g. env or a wrapper that exec'd into the program shown
        text += "  (via " + " → ".join(e.program for e in p.execs[:-1]) + ")"
    if not p.execs:
        text += f"  [exec failed: {last.errno or last.decision}]"
    elif not p.emulated:
        text += "  [native]"
    return text


def proc_data(p: Proc, until: float, children: bool = True) -> dict[str, Any]:
    last = p.last
    d: dict[str, Any] = {
        "run": p.run,
        "pid": p.pid,
        "program": p.program,
        "path": last.path,
        "argv": last.argv,
        "decision": last.decision,
        "arch": p.arch,
        "start": p.start,
        "wall": round(p.wall(until), 6),
        "cpu": p.cpu,
        "exclusive_cpu": round(p.exclusive, 6) if p.cpu is not None else None,
        "status": p.status,
        "signal": p.signame,
        "guest_fault": p.guest_fault,
        "outcome": outcome(p),
    }
    if len(p.execs) > 1:
        d["via"] = [e.path for e in p.execs[:-1]]
    if p.attempts and not p.execs:
        d["errno"] = last.errno
    if children:
        d["children"] = [proc_data(c, until) for c in p.children]
    return d


# --- summary --------------------------------------------------------------------------------------


def total_cpu(trace: Trace) -> float:
    """The CPU time of everything traced, as the kernel counted it for each run's command: its
    rusage includes every descendant that was waited for. Runs without that (version 1 records,
    a command with no exit record) count the roots' rusage, or the sum of their subtrees."""
    total = 0.0
    for run in trace.runs:
        main = run.main_proc
        if main is not None and main.cpu is not None:
            total += main.cpu
            continue
        for root in run.roots:
            if root.cpu is not None:
                total += root.cpu
            else:
                total += sum(p.exclusive for p in root.walk())
    return total


def summary(trace: Trace, top: int = 10) -> dict[str, Any]:
    procs = trace.procs
    decisions: dict[str, int] = {}
    arches: dict[tuple[str, bool], dict[str, Any]] = {}
    for run in trace.runs:
        for k, v in run.counts.items():
            decisions[k] = decisions.get(k, 0) + v
        for p in run.procs:
            for e in p.execs:
                a = arches.setdefault((e.arch or "?", e.decision == "emulate"),
                                      {"arch": e.arch or "?", "emulated": e.decision == "emulate",
                                       "execs": 0, "cpu": 0.0})
                a["execs"] += 1
            if p.execs:
                last = p.execs[-1]
                arches[(last.arch or "?", last.decision == "emulate")]["cpu"] += p.exclusive
    total = total_cpu(trace)
    by_prog: dict[str, dict[str, Any]] = {}
    for p in procs:
        entry = by_prog.setdefault(p.program, {"program": p.program, "count": 0, "cpu": 0.0,
                                               "wall": 0.0})
        entry["count"] += 1
        entry["cpu"] += p.exclusive
        entry["wall"] += p.wall(trace.end)
    for entry in by_prog.values():
        entry["cpu"] = round(entry["cpu"], 6)
        entry["wall"] = round(entry["wall"], 6)
        entry["share"] = round(100 * entry["cpu"] / total, 2) if total > 0 else 0.0
    for a in arches.values():
        a["cpu"] = round(a["cpu"], 6)
    progs = list(by_prog.values())
    return {
        "runs": len(trace.runs),
        "records": trace.records,
        "execs": sum(decisions.values()),
        "decisions": {k: decisions.get(k, 0) for k in ("emulate", "native", "kernel", "refused")},
        "processes": len(procs),
        "failed": sum(1 for p in procs if p.failed),
        "signalled": sum(1 for p in procs if p.signal is not None),
        "guest_faults": sum(1 for p in procs if p.guest_fault),
        "unfinished": sum(1 for p in procs if not p.exited),
        "wall": round(sum(r.wall for r in trace.runs), 6),
        "cpu": round(total, 6),
        "arches": sorted(arches.values(), key=lambda a: -a["execs"]),
        "top_cpu": sorted(progs, key=lambda e: (-e["cpu"], e["program"]))[:top],
        "top_count": sorted(progs, key=lambda e: (-e["count"], -e["cpu"], e["program"]))[:top],
    }


def summary_text(s: dict[str, Any]) -> str:
    d = s["decisions"]
    out = [
        f"{s['execs']} execs in {s['runs']} run(s): {d['emulate']} emulated, {d['native']} "
        f"native, {d['kernel']} left to the kernel (failed lookups), {d['refused']} refused",
        f"{s['processes']} processes: {s['failed']} failed ({s['signalled']} killed by a "
        f"signal, {s['guest_faults']} guest faults), {s['unfinished']} without an exit record",
        f"wall {fmt_s(s['wall'])}, CPU {fmt_s(s['cpu'])} (user+system of every traced process)",
        "",
        "per architecture:",
    ]
    for a in s["arches"]:
        kind = "emulated" if a["emulated"] else "native"
        out.append(f"  {a['arch']:<10} {kind:<9} {a['execs']:>6} execs  CPU {fmt_s(a['cpu'])}")
    out += ["", "top programs by exclusive CPU time (own time, children's excluded):",
            f"  {'CPU':>9}  {'share':>6}  {'count':>6}  program"]
    for e in s["top_cpu"]:
        out.append(f"  {fmt_s(e['cpu']):>9}  {e['share']:>5.1f}%  {e['count']:>6}  {e['program']}")
    out += ["", "top programs by count:", f"  {'count':>6}  {'CPU':>9}  {'wall':>9}  program"]
    for e in s["top_count"]:
        out.append(f"  {e['count']:>6}  {fmt_s(e['cpu']):>9}  {fmt_s(e['wall']):>9}  "
                   f"{e['program']}")
    return "\n".join(out) + "\n"


# --- tree -----------------------------------------------------------------------------------------


def _failing(p: Proc) -> bool:
    refused = any(a.decision == "refused" for a in p.attempts)
    return p.failed or refused


def failed_paths(run: Run) -> list[Proc]:
    """The processes on a path from a root to a failing or signalled process, in tree order."""
    keep: set[int] = set()
    for p in run.procs:
        if _failing(p):
            keep.update(id(a) for a in p.ancestry())
    return [p for root in run.roots for p in root.walk() if id(p) in keep]


def tree(trace: Trace, failed: bool = False) -> list[dict[str, Any]]:
    """One entry per run: its command and its process trees (only failing paths with ``failed``)."""
    out = []
    for run in trace.runs:
        keep = {id(p) for p in failed_paths(run)} if failed else None
        if keep is not None and not keep:
            continue
        roots = [_pruned(r, run.last, keep) for r in run.roots if keep is None or id(r) in keep]
        out.append({"run": run.id, "argv": run.argv, "wall": round(run.wall, 6), "procs": roots})
    return out


def _pruned(p: Proc, until: float, keep: set[int] | None) -> dict[str, Any]:
    d = proc_data(p, until, children=False)
    d["label"] = _label(p)
    d["children"] = [_pruned(c, until, keep) for c in p.children if keep is None or id(c) in keep]
    if keep is not None:
        d["hidden_ok_children"] = sum(1 for c in p.children if id(c) not in keep)
    return d


def tree_text(runs: list[dict[str, Any]], failed: bool = False) -> str:
    if not runs:
        return "no failing or signalled process in the trace\n" if failed else "empty trace\n"
    out: list[str] = []
    for r in runs:
        cmd = short_argv(r["argv"]) if r["argv"] else "(no start record)"
        out.append(f"run {r['run']}: {cmd}  ({fmt_s(r['wall'])})")
        for i, root in enumerate(r["procs"]):
            _tree_lines(root, "", i == len(r["procs"]) - 1, out)
        out.append("")
    return "\n".join(out)


def _tree_lines(d: dict[str, Any], indent: str, last: bool, out: list[str]) -> None:
    branch = "└─ " if last else "├─ "
    cpu = f"  cpu {fmt_s(d['cpu'])}" if d["cpu"] is not None else ""
    mark = "✗ " if d["outcome"] not in ("ok", "unfinished") else ""
    out.append(f"{indent}{branch}{mark}{d['label']}  [{d['pid']}] {fmt_s(d['wall'])}{cpu}  "
               f"{d['outcome']}")
    child_indent = indent + ("   " if last else "│  ")
    kids = d["children"]
    hidden = d.get("hidden_ok_children", 0)
    if hidden:
        out.append(f"{child_indent}┆  ({hidden} more that succeeded, not shown)")
    for i, c in enumerate(kids):
        _tree_lines(c, child_indent, i == len(kids) - 1, out)


# --- slow -----------------------------------------------------------------------------------------


def slow(trace: Trace, n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` longest-running processes, each with its ancestry (parent first)."""
    ranked = sorted(trace.procs, key=lambda p: -p.wall(trace.end))[: max(n, 0)]
    out = []
    for p in ranked:
        d = proc_data(p, trace.end, children=False)
        d["label"] = _label(p)
        d["ancestry"] = [{"pid": a.pid, "program": a.program, "label": _label(a)}
                         for a in p.ancestry()[1:]]
        out.append(d)
    return out


def slow_text(rows: Iterable[dict[str, Any]]) -> str:
    out = [f"{'wall':>9}  {'CPU':>9}  {'own CPU':>9}  command"]
    for d in rows:
        out.append(f"{fmt_s(d['wall']):>9}  {fmt_s(d['cpu']):>9}  "
                   f"{fmt_s(d['exclusive_cpu']):>9}  {d['label']}  [{d['pid']}] {d['outcome']}")
        if d["ancestry"]:
            chain = " ← ".join(_clip(a["label"], 48) for a in d["ancestry"])
            out.append(f"{'':>33}← {chain}")
    return "\n".join(out) + "\n"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
