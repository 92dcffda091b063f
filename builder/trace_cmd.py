"""``xshim trace``: read trace files, make the view asked for, write it (stdout or -o, atomically).

The I/O edge of the trace reader (``trace_read``), views (``trace_views``) and timelines
(``trace_export``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from .errors import InputError
from .fsutil import write_atomic
from .trace_export import perfetto, svg
from .trace_read import read_files
from .trace_views import slow, slow_text, summary, summary_text, tree, tree_text


@dataclass(frozen=True)
class TraceRequest:
    view: str  # summary | tree | slow | export
    files: tuple[str, ...]
    format: str  # text | json | perfetto | svg
    output: str | None = None
    failed: bool = False
    count: int = 10


def run_trace(req: TraceRequest) -> None:
    if req.output and req.output != "-":
        parent = os.path.dirname(os.path.abspath(req.output))
        if not os.path.isdir(parent):
            raise InputError(f"-o {req.output}: the directory {parent} does not exist",
                             "create it first, or write elsewhere")
    trace = read_files(req.files)
    text = render(req, trace)
    if req.output and req.output != "-":
        write_atomic(req.output, text.encode())
    else:
        sys.stdout.write(text)


def render(req: TraceRequest, trace: Any) -> str:
    data: Any
    if req.view == "export":
        if req.format == "svg":
            title = "xshim trace: " + ", ".join(os.path.basename(f) for f in req.files)
            return svg(trace, title)
        return json.dumps(perfetto(trace), separators=(",", ":")) + "\n"
    if req.view == "summary":
        data = summary(trace, top=req.count)
        text = summary_text(data)
    elif req.view == "tree":
        data = tree(trace, failed=req.failed)
        text = tree_text(data, failed=req.failed)
    else:
        data = slow(trace, req.count)
        text = slow_text(data)
    if req.format == "json":
        return json.dumps(data, indent=2) + "\n"
    return text
