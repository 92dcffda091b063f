"""Timelines of a trace: Chrome Trace Event JSON (Perfetto, chrome://tracing) and an SVG picture.

Pure: a ``Trace`` in, a JSON document or SVG text out.

Trace Event format: ``{"traceEvents": [...]}`` with complete events (``"ph": "X"``, ``ts`` and
``dur`` in microseconds, ``pid``, ``tid``) and metadata events (``"ph": "M"``: process_name,
process_sort_index, thread_name). Each traced process is one track (its own pid, tid = pid) with
one slice per program it ran; pids are renumbered in tree order (the real pid and run are in the
track name and in ``args``), since pids repeat between the RUN steps of a build.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .trace_read import Proc, Trace
from .trace_views import fmt_s, outcome, short_argv


def _ordered(trace: Trace) -> list[Proc]:
    return [p for run in trace.runs for root in run.roots for p in root.walk()]


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def perfetto(trace: Trace) -> dict[str, Any]:
    t0 = trace.begin
    events: list[dict[str, Any]] = []
    for track, p in enumerate(_ordered(trace), 1):
        name = f"{p.program} [{p.pid}]" + (f" run {p.run}" if len(trace.runs) > 1 else "")
        metadata: tuple[tuple[str, dict[str, Any]], ...] = (
            ("process_name", {"name": name}),
            ("process_sort_index", {"sort_index": track}),
            ("thread_name", {"name": p.program}),
        )
        for meta, margs in metadata:
            events.append({"ph": "M", "name": meta, "pid": track, "tid": track, "args": margs})
        end = p.end if p.end is not None else trace.end
        images = p.execs or p.attempts[-1:]
        for i, ex in enumerate(images):
            stop = images[i + 1].time if i + 1 < len(images) else end
            last = i == len(images) - 1
            args: dict[str, Any] = {"argv": " ".join(ex.argv), "path": ex.path,
                                    "decision": ex.decision, "pid": p.pid, "run": p.run}
            if ex.arch:
                args["arch"] = ex.arch
            if last:
                args["outcome"] = outcome(p)
                if p.cpu is not None:
                    args["cpu_s"] = p.cpu
                    args["exclusive_cpu_s"] = round(p.exclusive, 6)
            events.append({
                "ph": "X", "name": ex.program, "cat": ex.decision,
                "ts": _us(ex.time - t0), "dur": _us(max(0.0, stop - ex.time)),
                "pid": track, "tid": track, "args": args,
            })
        if p.signal is not None and p.end is not None:
            events.append({"ph": "i", "s": "t", "name": p.signame or f"signal {p.signal}",
                           "cat": "signal", "ts": _us(p.end - t0), "pid": track, "tid": track,
                           "args": {"guest_fault": p.guest_fault}})
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"source": "xshim trace", "runs": [r.id for r in trace.runs]},
    }


# --- SVG ------------------------------------------------------------------------------------------

WIDTH = 1400
ROW = 20
LEFT = 10
TOP = 58
COLOURS = {
    "emulate": "#4e79a7",
    "native": "#59a14f",
    "failed": "#e15759",
    "signal": "#8b1e3f",
    "unfinished": "#9d9d9d",
}


def _lanes(procs: list[Proc], until: float) -> dict[int, int]:
    """A row for every process: below its parent, in the first row free at its start time, so
    children sit under their parents and siblings that overlap in time (a pipeline) stack."""
    row: dict[int, int] = {}
    busy: list[float] = []
    for p in sorted(procs, key=lambda q: q.start):
        r = row[id(p.parent)] + 1 if p.parent is not None and id(p.parent) in row else 0
        end = p.end if p.end is not None else until
        while r < len(busy) and busy[r] > p.start:
            r += 1
        if r == len(busy):
            busy.append(end)
        else:
            busy[r] = end
        row[id(p)] = r
    return row


def _colour(p: Proc) -> str:
    if p.signal is not None:
        return COLOURS["signal"]
    if p.failed:
        return COLOURS["failed"]
    if not p.exited:
        return COLOURS["unfinished"]
    return COLOURS["emulate" if p.emulated else "native"]


def _tick(span: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800):
        if span / step <= 12:
            return step
    return 3600.0


def svg(trace: Trace, title: str = "xshim trace") -> str:
    procs = _ordered(trace)
    t0, t1 = trace.begin, max(trace.end, trace.begin + 1e-3)
    span = t1 - t0
    scale = (WIDTH - 2 * LEFT) / span
    rows = _lanes(procs, t1)
    height = TOP + ROW * (max(rows.values(), default=0) + 1) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" '
        'font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    s = _legend_and_axis(trace, t0, span, scale, height)
    out.extend(s)
    for p in procs:
        end = p.end if p.end is not None else t1
        x = LEFT + (p.start - t0) * scale
        w = max(1.0, (end - p.start) * scale)
        y = TOP + rows[id(p)] * ROW
        label = short_argv(p.last.argv, p.last.path, limit=200)
        tip = (f"{label}\npid {p.pid}, {fmt_s(end - p.start)} wall, "
               f"cpu {fmt_s(p.cpu)}, {outcome(p)}")
        # A white edge separates neighbours; on a bar a few pixels wide it would hide the bar.
        edge = ' stroke="#ffffff" stroke-width="0.5"' if w > 4 else ""
        out.append(f'<g><title>{escape(tip)}</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" '
                   f'height="{ROW - 3}" rx="{2 if w > 4 else 0}" fill="{_colour(p)}"{edge}/>')
        room = int((w - 6) / 6.3)
        if room >= 3:
            text = label if len(label) <= room else label[: room - 1] + "…"
            out.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 8}" fill="#ffffff">'
                       f'{escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend_and_axis(trace: Trace, t0: float, span: float, scale: float,
                     height: int) -> list[str]:  # fmt: skip
    out = []
    legend = (("emulate", "emulated"), ("native", "native"), ("failed", "exit ≠ 0"),
              ("signal", "killed by a signal"), ("unfinished", "no exit record"))
    x = WIDTH - LEFT - sum(28 + 6 * len(text) for _, text in legend)  # right-aligned
    for key, text in legend:
        out.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{COLOURS[key]}"/>')
        out.append(f'<text x="{x + 16}" y="18">{escape(text)}</text>')
        x += 28 + 6 * len(text)
    procs = len(trace.procs)
    out.append(f'<text x="{LEFT}" y="36" fill="#444444">{procs} processes, '
               f'{fmt_s(span)} from first to last record; hover a bar for its command</text>')
    step = _tick(span)
    t = 0.0
    while t <= span + 1e-9:
        xx = LEFT + t * scale
        out.append(f'<line x1="{xx:.2f}" y1="{TOP - 6}" x2="{xx:.2f}" y2="{height - 20}" '
                   'stroke="#e4e4e4"/>')
        out.append(f'<text x="{xx + 2:.2f}" y="{TOP - 8}" fill="#666666">'
                   f'{_tick_label(t, span)}</text>')
        t += step
    return out


def _tick_label(t: float, span: float) -> str:
    """One unit along the whole axis: ms, s, or m:ss."""
    if span >= 120:
        m, s = divmod(round(t), 60)
        return f"{m}:{s:02d}"
    if span < 2:
        return f"{t * 1000:.0f} ms"
    return f"{t:g} s"
