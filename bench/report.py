"""The table and the JSON document, from the rows the run collected."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import measure
import report_work
from contenders import Tools

if TYPE_CHECKING:
    from run import Row

TARGET = 1.05  # xshim's goal: within 5 % of the kernel's own dispatch (issue 2)


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def environment(
    tree: Path, tools: Tools, args: argparse.Namespace, load: tuple[float, float, float]
) -> dict[str, Any]:
    from xshim.shim.version import __version__

    osrel = tree / "etc" / "os-release"
    distro = "?"
    if osrel.is_file():
        for line in osrel.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    return {
        "kernel": os.uname().release,
        "cpus": measure.cpu_count(),
        "qemu": _first_line([str(tools.qemu), "--version"]),
        "proot": _first_line(["dpkg-query", "-W", "-f", "${Version}", "proot"]),
        "xshim": __version__,
        "tree": str(tree),
        "guest": f"{distro} arm64 minbase",
        "execs": args.execs,
        "reps": args.reps,
        "stage_reps": args.stage_reps,
        "stat": args.stat,
        "quick": args.quick,
        "workloads": getattr(args, "workload_names", []),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _metrics(row: Row, stat: str) -> dict[str, float | None]:
    loop, stage = row.loop, row.stage
    ok = loop is not None and bool(loop.full)
    return {
        "loop_s": loop.total(stat) if ok and loop else None,
        "start_s": loop.start(stat) if ok and loop else None,
        "per_exec_s": loop.per_exec(stat) if ok and loop else None,
        "loop_cpu_s": loop.cpu(stat) if ok and loop else None,
        "stage_s": stage.wall(stat) if stage else None,
        "stage_cpu_s": stage.cpu(stat) if stage else None,
    }


def ratios(rows: list[Row], stat: str) -> dict[str, dict[str, float | None]]:
    """xshim's numbers divided by binfmt's and proot's, metric by metric."""
    m = {r.contender.name: _metrics(r, stat) for r in rows}
    x = m.get("xshim")
    out: dict[str, dict[str, float | None]] = {}
    for base in ("binfmt", "proot"):
        if x is None or base not in m:
            continue
        out[f"xshim/{base}"] = {k: _ratio(x[k], m[base][k]) for k in x}
    return out


def _paired(xs: list[float], bs: list[float]) -> float | None:
    """The median over rounds of one round's ratio x/b.

    Each round runs every contender back to back, so a round's ratio compares runs made at
    nearly the same moment. This machine's speed drifts by ±20 % over minutes (the samples in the
    JSON show it); the ratio of two medians carries that drift, the median of paired ratios
    mostly cancels it.
    """
    pairs = _pairs(xs, bs)
    return statistics.median(pairs) if pairs else None


def _pairs(xs: list[float], bs: list[float]) -> list[float]:
    return [x / b for x, b in zip(xs, bs, strict=False) if b > 0]


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float] | None:
    """A distribution-free 95 % confidence interval for the median (order statistics).

    Between the j-th and k-th smallest of n values, j = ⌊n/2 − z·√n/2⌋ and k = ⌈1 + n/2 +
    z·√n/2⌉ (1-based); it says how far the median of the paired ratios could be off from the
    true one. None when there are too few values for such an interval (fewer than 6).
    """
    n = len(values)
    j = math.floor(n / 2 - z * math.sqrt(n) / 2)
    k = math.ceil(1 + n / 2 + z * math.sqrt(n) / 2)
    if j < 1 or k > n:
        return None
    v = sorted(values)
    return v[j - 1], v[k - 1]


def _per_exec_samples(row: Row) -> list[float]:
    """Each round's per-exec cost: its loop minus the contender's median start-up.

    Start-up is a fixed cost, the same in every round; its median is steadier than a single
    N = 0 run, whose own noise would otherwise land on every round's ratio.
    """
    loop = row.loop
    if loop is None or not loop.full or not loop.zero:
        return []
    start = statistics.median(loop.zero)
    return [(f - start) / loop.n for f in loop.full]


def paired_ratios(rows: list[Row]) -> dict[str, dict[str, float | None]]:
    """xshim over binfmt and proot, as medians of per-round ratios (see _paired)."""
    by = {r.contender.name: r for r in rows}
    x = by.get("xshim")
    out: dict[str, dict[str, float | None]] = {}
    for base in ("binfmt", "proot"):
        b = by.get(base)
        if x is None or b is None:
            continue
        xl, bl = x.loop, b.loop
        xs, bs = x.stage, b.stage
        out[f"xshim/{base}"] = {
            "loop_s": _paired(xl.full, bl.full) if xl and bl else None,
            "per_exec_s": _paired(_per_exec_samples(x), _per_exec_samples(b)),
            "loop_cpu_s": _paired(xl.full_cpu, bl.full_cpu) if xl and bl else None,
            "stage_s": _paired(xs.seconds, bs.seconds) if xs and bs else None,
            "stage_cpu_s": _paired(xs.cpu_seconds, bs.cpu_seconds) if xs and bs else None,
        }
    return out


def paired_intervals(rows: list[Row]) -> dict[str, tuple[float, float] | None]:
    """95 % confidence intervals of xshim/binfmt's paired ratios (see median_ci)."""
    by = {r.contender.name: r for r in rows}
    x, b = by.get("xshim"), by.get("binfmt")
    if x is None or b is None:
        return {}
    out = {"per_exec_s": median_ci(_pairs(_per_exec_samples(x), _per_exec_samples(b)))}
    if x.stage and b.stage:
        out["stage_s"] = median_ci(_pairs(x.stage.seconds, b.stage.seconds))
    return out


def meets_target(rows: list[Row], quick: bool) -> bool:
    """xshim ran and is within TARGET of binfmt per exec (and on the second stage).

    The issue states the goal on per-exec cost and second-stage wall time; both are judged on
    the paired ratios.
    """
    r = paired_ratios(rows).get("xshim/binfmt")
    if r is None:
        return False
    values = [r["per_exec_s"]] if quick else [r["per_exec_s"], r["stage_s"]]
    return all(v is not None and v <= TARGET for v in values)


def as_json(rows: list[Row], meta: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    contenders: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"label": row.contender.label, "nested_exec": row.contender.nested}
        if row.unavailable:
            entry["available"] = False
            entry["reason"] = row.unavailable
        else:
            entry["available"] = True
            entry.update({k: v for k, v in _metrics(row, args.stat).items() if v is not None})
            if row.loop and row.loop.full:
                entry["loop_samples_s"] = [round(s, 4) for s in row.loop.full]
                entry["start_samples_s"] = [round(s, 4) for s in row.loop.zero]
                entry["loop_cpu_samples_s"] = [round(s, 4) for s in row.loop.full_cpu]
            if row.loop_error:
                entry["loop_error"] = row.loop_error
            if row.stage:
                entry["stage_samples_s"] = [round(s, 2) for s in row.stage.seconds]
                entry["stage_cpu_samples_s"] = [round(s, 2) for s in row.stage.cpu_seconds]
                entry["packages_installed"] = row.stage.packages
            if row.stage_error:
                entry["stage_error"] = row.stage_error
        contenders[row.contender.name] = entry
    return {
        "environment": meta,
        "contenders": contenders,
        "ratios": ratios(rows, args.stat),
        "paired_ratios": paired_ratios(rows),
        "paired_ratio_ci95": {"xshim/binfmt": {
            k: [round(v, 4) for v in ci] if ci else None
            for k, ci in paired_intervals(rows).items()
        }},
        "target": TARGET,
        "xshim_meets_target": meets_target(rows, args.quick),
        "workloads": report_work.as_json(rows, args),
    }


def _cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "—"


def _load_note(meta: dict[str, Any]) -> list[str]:
    load = meta["loadavg_at_start"]
    text = f"load average {load[0]:.2f} at the start"
    if load[0] > 0.5:
        return [f"note: {text}: other work on this machine adds noise to every number"]
    return []


def table(rows: list[Row], meta: dict[str, Any], args: argparse.Namespace) -> str:
    stat = args.stat
    n = args.execs
    lines = [
        f"xshim benchmark: {meta['guest']}, {meta['qemu']}, kernel {meta['kernel']}, "
        f"{meta['cpus']} CPUs",
        f"exec loop: `uname -m` + {n} × /bin/true from one /bin/sh, {stat} of {args.reps} runs; "
        f"start-up = the same with 0 execs; per exec = (loop − start-up) / {n}",
    ]
    if not args.quick:
        lines.append(f"second stage: debootstrap --second-stage on a fresh copy, {stat} of "
                     f"{args.stage_reps} run(s)")
    lines += _load_note(meta)
    chosen = getattr(args, "workload_names", ["loop", "stage"])
    if "loop" not in chosen and "stage" not in chosen:
        return "\n".join(lines[:1] + _load_note(meta) + report_work.table(rows, args))
    lines.append("")
    head = (f"{'contender':<22} {'exec loop':>10} {'start-up':>9} {'per exec':>9} "
            f"{'loop cpu':>9} {'2nd stage':>10} {'stage cpu':>10} {'pkgs':>5}")
    lines += [head, "-" * len(head)]
    for row in rows:
        label = row.contender.label
        if row.unavailable:
            lines.append(f"{label:<22} not available: {row.unavailable}")
            continue
        m = _metrics(row, stat)
        if args.quick:
            stage = stage_cpu = "—"
        elif not row.contender.nested:
            stage = stage_cpu = "n/a"
        elif row.stage_error:
            stage = stage_cpu = "FAILED"
        else:
            stage = _cell(m["stage_s"], ".1f") + " s"
            stage_cpu = _cell(m["stage_cpu_s"], ".1f") + " s"
        pkgs = str(row.stage.packages) if row.stage else ""
        per = m["per_exec_s"]
        lines.append(
            f"{label:<22} {_cell(m['loop_s'], '.3f') + ' s':>10} "
            f"{_cell(m['start_s'], '.3f') + ' s':>9} "
            f"{_cell(per * 1000 if per is not None else None, '.1f') + ' ms':>9} "
            f"{_cell(m['loop_cpu_s'], '.3f') + ' s':>9} "
            f"{stage:>10} {stage_cpu:>10} {pkgs:>5}"
        )
        if row.loop_error:
            lines.append(f"{'':<22} exec loop FAILED: {row.loop_error}")
        if row.stage_error:
            lines.append(f"{'':<22} second stage FAILED: {row.stage_error}")
    lines.append("")
    rs, ps = ratios(rows, stat), paired_ratios(rows)
    if not rs:
        lines.append("ratios: xshim (or both binfmt and proot) not measured")
    else:
        lines.append(f"ratios: median over rounds of each round's ratio (in brackets: ratio of "
                     f"the {stat}s above)")

    def both(name: str, key: str) -> str:
        return (f"{_cell(ps.get(name, {}).get(key), '.2f')}× "
                f"[{_cell(rs[name][key], '.2f')}×]")

    for name in rs:
        parts = [f"per exec {both(name, 'per_exec_s')}", f"exec loop {both(name, 'loop_s')}"]
        if not args.quick:
            parts.append(f"second stage {both(name, 'stage_s')}")
        parts.append(f"cpu: exec loop {both(name, 'loop_cpu_s')}")
        if not args.quick:
            parts.append(f"second stage {both(name, 'stage_cpu_s')}")
        lines.append(f"{name + ':':<14} " + ", ".join(parts))
    cis = paired_intervals(rows)
    ci_text = [f"{label} {ci[0]:.2f}–{ci[1]:.2f}×" for key, label in
               (("per_exec_s", "per exec"), ("stage_s", "second stage"))
               if (ci := cis.get(key)) is not None]
    if ci_text:
        lines.append("xshim/binfmt paired, 95 % confidence interval of the median: "
                     + ", ".join(ci_text))
    if "xshim/binfmt" in rs:
        verdict = "met" if meets_target(rows, args.quick) else "MISSED"
        lines.append(f"target xshim ≤ {TARGET:.2f}× binfmt (per exec"
                     f"{'' if args.quick else ' and second-stage wall time'}, paired): {verdict}")
    return "\n".join(lines + report_work.table(rows, args))
