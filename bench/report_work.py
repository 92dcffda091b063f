"""The build-like workloads' part of the table and of the JSON document (pure)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

import measure
import report  # median_ci; a cycle, but only used at call time
import workloads as wmod

if TYPE_CHECKING:
    from run import Row

# Numerator and denominator of each ratio shown: xshim against the kernel's own dispatch (the
# target), the native twins against it, and xshim against the other user-space tool.
PAIRS = (("xshim", "binfmt"), ("twins", "binfmt"), ("twins", "xshim"), ("xshim", "proot"))


def paired(xs: list[float], bs: list[float]) -> dict[str, Any] | None:
    """Round-by-round ratios x/b: their median, lowest and highest, count, and the 95 % interval
    of the median (None below 6 rounds). None when no round has both."""
    pairs = [x / b for x, b in zip(xs, bs, strict=False) if b > 0]
    if not pairs:
        return None
    ci = report.median_ci(pairs)
    return {"median": statistics.median(pairs), "low": min(pairs), "high": max(pairs),
            "rounds": len(pairs), "ci95": list(ci) if ci else None}


def ratios(rows: list[Row], workload: str) -> dict[str, dict[str, Any]]:
    """For each pair in PAIRS that both ran ``workload``: wall and CPU paired ratios."""
    runs = {r.contender.name: r.runs[workload] for r in rows
            if workload in r.runs and r.runs[workload].seconds}
    out: dict[str, dict[str, Any]] = {}
    for num, den in PAIRS:
        if num in runs and den in runs:
            a, b = runs[num], runs[den]
            out[f"{num}/{den}"] = {"wall": paired(a.seconds, b.seconds),
                                   "cpu": paired(a.cpu_seconds, b.cpu_seconds)}
    return out


def selected(args: Any) -> list[str]:
    return [n for n in getattr(args, "workload_names", []) if n in wmod.WORKLOADS]


def as_json(rows: list[Row], args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in selected(args):
        per: dict[str, Any] = {}
        for row in rows:
            runs = row.runs.get(name)
            if runs is None:
                continue
            entry: dict[str, Any] = {
                "samples_s": [round(s, 2) for s in runs.seconds],
                "cpu_samples_s": [round(s, 2) for s in runs.cpu_seconds],
                "result": runs.result,
            }
            if runs.seconds:
                entry["wall_s"] = runs.wall(args.stat)
                entry["cpu_s"] = runs.cpu(args.stat)
            if runs.error:
                entry["error"] = runs.error
            per[row.contender.name] = entry
        out[name] = {"command": list(wmod.WORKLOADS[name].argv), "contenders": per,
                     "paired_ratios": ratios(rows, name)}
    return out


def _ratio_text(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    spread = (f"rounds {r['low']:.2f}–{r['high']:.2f}" if r["rounds"] > 1 else "1 round")
    ci = f", 95 % interval {r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}" if r["ci95"] else ""
    return f"{r['median']:.2f}× ({spread}{ci})"


def table(rows: list[Row], args: Any) -> list[str]:
    names = selected(args)
    if not names:
        return []
    lines = ["", f"build workloads: {args.stat} of {args.stage_reps} round(s) each, every run on "
             "a fresh copy of its tree; cpu = user + system time of every process"]
    for name in names:
        lines.append(f"  {name}: {wmod.WORKLOADS[name].title}")
    lines.append("")
    head = f"{'workload':<11} {'contender':<22} {'wall':>9} {'cpu':>9}  result"
    lines += [head, "-" * (len(head) + 10)]
    for name in names:
        first = True
        for row in rows:
            label = f"{name if first else '':<11} {row.contender.label:<22}"
            if row.unavailable:
                lines.append(f"{label} not available: {row.unavailable}")
            elif not row.contender.nested:
                continue
            else:
                runs = row.runs.get(name) or measure.Runs()
                if runs.seconds:
                    lines.append(f"{label} {runs.wall(args.stat):>7.1f} s "
                                 f"{runs.cpu(args.stat):>7.1f} s  {runs.result}")
                if runs.error:
                    lines.append(f"{label} FAILED: {runs.error}")
            first = False
    lines += ["", "paired ratios: median over rounds of each round's ratio (the two run back "
              "to back), with the rounds' range"]
    for name in names:
        rs = ratios(rows, name)
        if not rs:
            lines.append(f"{name:<11} (no pair of contenders finished it)")
        for i, (pair, r) in enumerate(rs.items()):
            lines.append(f"{name if i == 0 else '':<11} {pair:<13} wall {_ratio_text(r['wall'])}"
                         f", cpu {_ratio_text(r['cpu'])}")
    return lines
