"""Trace records: one per exec decision and one per traced process exit.

Record format (one JSON object per line, the shared contract with ``xshim trace``):

  {"event": "exec", "time": 1700000000.123, "pid": 42, "ppid": 41, "path": "/usr/bin/dpkg",
   "argv": ["dpkg", "--configure", "-a"], "decision": "emulate", "emulator": "qemu-aarch64",
   "arch": "aarch64"}
  decision is one of: "emulate" (through ``emulator``), "native" (the kernel runs it),
  "kernel" (left to the kernel, which answers with ``errno``: ENOENT, EACCES, ENOEXEC, ...),
  "refused" (foreign, but no emulator: ``arch`` says which was needed, ``available`` what exists).
  "reason" gives detail where there is any; "script" lists the #! interpreters followed.
  {"event": "exit", "time": ..., "pid": 42, "status": 0, "signal": null, "duration": 0.0123}
  duration is seconds since that pid's last exec.

``XSHIM_TRACE`` (or ``--trace``): a file path for JSON lines; ``1`` or ``stderr`` for one readable
line per exec on stderr. Unset: no sink at all, so tracing costs nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

SCHEMA_VERSION = 1


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace").decode()


class TraceSink:
    """Writes trace records; ``readable`` selects the human format."""

    def __init__(self, stream: TextIO, readable: bool) -> None:
        self.stream = stream
        self.readable = readable

    def exec(
        self,
        pid: int,
        ppid: int,
        path: bytes,
        argv: list[bytes],
        decision: str,
        **extra: Any,
    ) -> None:
        if self.readable:
            target = {
                "emulate": extra.get("emulator", "?"),
                "native": "native",
                "kernel": f"kernel ({extra.get('errno', '?')})",
                "refused": f"refused: no emulator for {extra.get('arch', '?')}",
            }.get(decision, decision)
            shown = " ".join(_text(a) for a in argv[1:])
            line = f"xshim[{pid}] {_text(path)}{' ' + shown if shown else ''}  → {target}\n"
            self._write(line)
            return
        import json  # only JSON sinks pay for it

        rec: dict[str, Any] = {
            "event": "exec",
            "time": round(time.time(), 6),
            "pid": pid,
            "ppid": ppid,
            "path": _text(path),
            "argv": [_text(a) for a in argv],
            "decision": decision,
        }
        rec.update(extra)
        self._write(json.dumps(rec, separators=(",", ":")) + "\n")

    def exit(self, pid: int, status: int | None, signal: int | None, duration: float) -> None:
        if self.readable:
            return
        import json

        rec = {
            "event": "exit",
            "time": round(time.time(), 6),
            "pid": pid,
            "status": status,
            "signal": signal,
            "duration": round(duration, 6),
        }
        self._write(json.dumps(rec, separators=(",", ":")) + "\n")

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line)
            self.stream.flush()
        except OSError:
            # A full disk or closed pipe must not take the build down with it.
            pass


def open_sink(spec: str | None) -> TraceSink | None:
    """Open the sink named by a ``--trace``/``XSHIM_TRACE`` value; None when tracing is off."""
    if not spec or spec in ("0", "off", "no"):
        return None
    if spec in ("1", "stderr", "-"):
        return TraceSink(sys.stderr, readable=True)
    # Append, line-buffered: nested supervisors or several RUN steps may share one file.
    fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    return TraceSink(os.fdopen(fd, "a", buffering=1, encoding="utf-8"), readable=False)
