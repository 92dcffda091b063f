"""Trace records: one when a supervisor starts, one per exec decision, one per traced exit.

Record format, version 2 (one JSON object per line; the shared contract with ``xshim trace``,
which also reads version 1, the same records without ``run``, ``start`` and the CPU fields):

  {"event": "start", "v": 2, "run": "5f1c09ab", "time": 1700000000.1, "pid": 41,
   "argv": ["/bin/sh", "-c", "apt-get update"]}
  one per supervisor; ``run`` tags every record it writes, because pids repeat between the RUN
  steps of a build (each has its own pid namespace) and several supervisors may share a file;
  ``pid`` is the command's process.

  {"event": "exec", "run": "5f1c09ab", "time": 1700000000.123, "pid": 42, "ppid": 41,
   "path": "/usr/bin/dpkg", "argv": ["dpkg", "--configure", "-a"], "decision": "emulate",
   "emulator": "qemu-aarch64", "arch": "aarch64"}
  decision is one of: "emulate" (through ``emulator``), "native" (the kernel runs it),
  "kernel" (left to the kernel, which answers with ``errno``: ENOENT, EACCES, ENOEXEC, ...),
  "refused" (foreign, but no emulator: ``arch`` says which was needed, ``available`` what exists;
  or an exec that could not be carried out, with ``errno`` and ``reason``), and "failed": a second
  record for an "emulate" exec that the kernel then refused, with its ``errno``. Arguments over
  64 KiB are cut off, marked "...[truncated at 65536 bytes]"; an exec through a descriptor has
  the path the kernel gives it, "/dev/fd/N" or "/dev/fd/N/name".
  "reason" gives detail where there is any; "script" lists the #! interpreters followed.
  "twin" (``xshim run/bundle --accelerate``): the program ran natively as its twin, the host
  build of the same Debian package version (shim/twins.py): "twin" is its path, "package" the
  guest's package=version, "host_package" the twin's. An "emulate" record of a program the twin
  map lists has "twin_skipped", the reason its twin was not used, and "package".
  ``ppid`` is the nearest traced ancestor that has exec'd (a subshell that never execs is skipped),
  0 for the command itself. With ``XSHIM_TRACE_HASH=1``, "sha256" is the executed file's digest and
  "script_sha256" those of the interpreters in "script" (null where a file could not be read).
  "truncated": true when argv was shortened to keep a build-log record under PIPE_BUF.

  {"event": "exit", "run": "5f1c09ab", "time": ..., "pid": 42, "status": 0, "signal": null,
   "duration": 0.0123, "cpu": 0.0101, "user": 0.0090, "sys": 0.0011, "maxrss": 5120}
  duration is wall seconds since that pid's last exec; cpu = user + sys, from the rusage wait4
  returns with the exit: the process's own CPU time plus that of the children it waited for, so a
  program's exclusive time is its cpu minus its children's. maxrss is in KiB.
  A process killed by a signal has "status": null, "signal": N, "signame": "SIGSEGV", "core"
  (the kernel's core-dump bit, which depends on the host's core_pattern and limits) and
  "guest_fault": whether qemu gave up on the guest program. qemu-user catches every catchable
  host signal for its guest; when the guest leaves one of the core-dumping signals (SIGSEGV,
  SIGBUS, SIGILL, SIGFPE, SIGABRT, ...) unhandled, qemu prints "qemu: uncaught target signal N"
  (when it could write the guest's core) and kills itself with the same signal. So an emulated
  process that dies of a core-dumping signal is a guest fault; a native one, or SIGKILL/SIGTERM,
  is not. (A SIGSEGV sent to an emulated program with kill(1) looks the same.)

``XSHIM_TRACE`` (or ``--trace``): a file path for JSON lines; ``1`` or ``stderr`` for one readable
line per exec on stderr; ``log`` (``log+hash``: with digests) for the JSON records on stderr,
each line marked with ``MARK``,
so that they travel through a build's log (docker, BuildKit, buildah, podman) and ``xshim trace``
finds them there whatever prefix the builder puts before each line. Unset: no sink at all, so
tracing costs nothing.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import signal as _signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import resource

SCHEMA_VERSION = 2
# Marks a record in a build log: "xshim-trace/2 {...}". The reader looks for it anywhere in a
# line, since builders put their own prefixes ("#7 1.234 ", colour escapes) before step output.
MARK = f"xshim-trace/{SCHEMA_VERSION} "
# A write of at most PIPE_BUF bytes to a pipe is atomic: a build-log record then never interleaves
# with output the traced programs write to the same stderr.
LOG_LINE_MAX = 4000
LOG_VALUES = ("log", "log+hash")
CORE_SIGNALS = frozenset({
    _signal.SIGQUIT, _signal.SIGILL, _signal.SIGTRAP, _signal.SIGABRT, _signal.SIGBUS,
    _signal.SIGFPE, _signal.SIGSEGV, _signal.SIGSYS, _signal.SIGXCPU, _signal.SIGXFSZ,
})


class Decision(enum.StrEnum):
    """What became of an exec: the ``decision`` of its record (the values are the format's)."""

    EMULATE = "emulate"
    NATIVE = "native"
    KERNEL = "kernel"
    REFUSED = "refused"
    FAILED = "failed"
    TWIN = "twin"  # ran natively as its twin (shim/twins.py)


def errname(e: int) -> str:
    """An errno as records and messages name it: "ENOENT"."""
    return _errno.errorcode.get(e, str(e))


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace").decode()


def signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


class TraceSink:
    """Writes trace records: readable lines, JSON lines, or marked JSON lines (``marked``)."""

    def __init__(
        self, stream: TextIO, readable: bool, marked: bool = False, hash_files: bool = False
    ) -> None:
        self.stream = stream
        self.readable = readable
        self.marked = marked
        self.hash_files = hash_files
        self.run = os.urandom(4).hex()
        self.emulated: set[int] = set()  # pids whose current program runs under qemu
        self.digests: dict[tuple[int, int, int, int, int], str] = {}
        self.twins: dict[str, Any] | None = None  # the twin map's decisions, for the start record

    def start(self, pid: int, argv: list[bytes]) -> None:
        if self.readable:
            return
        rec = {"event": "start", "v": SCHEMA_VERSION, "run": self.run,
               "time": round(time.time(), 6), "pid": pid, "argv": [_text(a) for a in argv]}
        if self.twins is not None:
            rec["twins"] = self.twins
        self._record(rec)

    def exec(
        self,
        pid: int,
        ppid: int,
        path: bytes,
        argv: list[bytes],
        decision: Decision,
        reason: str | None = None,
        err: int = 0,
        **extra: Any,
    ) -> None:
        """``reason``: detail for people; ``err``: the errno the record names (0: none)."""
        if decision is Decision.EMULATE:
            self.emulated.add(pid)
        elif decision in (Decision.NATIVE, Decision.TWIN):
            self.emulated.discard(pid)
        name = errname(err) if err else None
        if self.readable:
            target = {
                Decision.EMULATE: extra.get("emulator", "?"),
                Decision.NATIVE: "native",
                Decision.TWIN: f"native twin {extra.get('twin', '?')} "
                f"({extra.get('host_package', '?')})",
                Decision.KERNEL: f"kernel ({name or '?'})",
                Decision.FAILED: f"the emulated exec failed ({name or '?'})",
                Decision.REFUSED: f"refused: {reason or 'no emulator'}"
                + (f" ({name})" if name else ""),
            }[decision]
            shown = " ".join(_text(a) for a in argv[1:])
            line = f"xshim[{pid}] {_text(path)}{' ' + shown if shown else ''}  → {target}\n"
            self._write(line)
            return
        rec: dict[str, Any] = {
            "event": "exec",
            "run": self.run,
            "time": round(time.time(), 6),
            "pid": pid,
            "ppid": ppid,
            "path": _text(path),
            "argv": [_text(a) for a in argv],
            "decision": decision.value,
        }
        if reason is not None:
            rec["reason"] = reason
        if name is not None:
            rec["errno"] = name
        rec.update(extra)
        if self.hash_files and decision in (Decision.EMULATE, Decision.NATIVE, Decision.TWIN):
            rec["sha256"] = self._digest(pid, path)
            if "script" in extra:
                rec["script_sha256"] = [self._digest(pid, p.encode()) for p in extra["script"]]
        self._record(rec)

    def exit(
        self, pid: int, status: int, duration: float, rusage: resource.struct_rusage | None = None
    ) -> None:
        """``status`` is the raw wait status; ``rusage`` what wait4 returned with it."""
        emulated = pid in self.emulated
        self.emulated.discard(pid)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        if self.readable:
            if sig is not None:
                fault = " (guest fault: qemu's uncaught target signal)" if (
                    emulated and sig in CORE_SIGNALS) else ""
                self._write(f"xshim[{pid}] killed by {signal_name(sig)}{fault}\n")
            return
        rec: dict[str, Any] = {
            "event": "exit",
            "run": self.run,
            "time": round(time.time(), 6),
            "pid": pid,
            "status": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": sig,
            "duration": round(duration, 6),
        }
        if sig is not None:
            rec["signame"] = signal_name(sig)
            rec["core"] = os.WCOREDUMP(status)
            rec["guest_fault"] = emulated and sig in CORE_SIGNALS
        if rusage is not None:
            user, system = rusage.ru_utime, rusage.ru_stime
            rec["cpu"] = round(user + system, 6)
            rec["user"] = round(user, 6)
            rec["sys"] = round(system, 6)
            rec["maxrss"] = rusage.ru_maxrss
        self._record(rec)

    def _record(self, rec: dict[str, Any]) -> None:
        import json  # only JSON sinks pay for it

        line = json.dumps(rec, separators=(",", ":"))
        if self.marked:
            if len(line) > LOG_LINE_MAX and "argv" in rec:
                line = json.dumps(_shortened(rec), separators=(",", ":"))
            # One write(2) of the whole line, not whatever the text layer's buffering makes of it.
            self._write_fd(f"{MARK}{line}\n".encode())
            return
        self._write(line + "\n")

    def _digest(self, pid: int, path: bytes) -> str | None:
        """sha256 of ``path`` as the tracee sees it; memoised on the file's identity and change
        time, so a program exec'd a thousand times is read once."""
        from .ptrace import open_in_root

        try:
            root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if not path.startswith(b"/"):
                    cwd = os.readlink(f"/proc/{pid}/cwd").encode()
                    top = os.readlink(f"/proc/{pid}/root").encode()
                    if top != b"/" and (cwd == top or cwd.startswith(top + b"/")):
                        cwd = cwd[len(top):] or b"/"
                    path = cwd + b"/" + path
                fd = open_in_root(root, path, os.O_RDONLY)
            finally:
                os.close(root)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = self.digests.get(key)
                if known is None:
                    h = _sha256()
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                    known = self.digests[key] = str(h.hexdigest())
                return known
        except OSError:
            return None

    def _write_fd(self, data: bytes) -> None:
        try:
            self.stream.flush()
            os.write(self.stream.fileno(), data)
        except (OSError, ValueError):
            pass

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line)
            self.stream.flush()
        except OSError:
            # A full disk or closed pipe must not take the build down with it.
            pass


def _sha256() -> Any:
    """The interpreter's own SHA-256, not hashlib's: the frozen shim leaves hashlib (and
    libcrypto behind it) out."""
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:
        from _sha2 import sha256  # Python 3.12 and later
    return sha256()


def _shortened(rec: dict[str, Any]) -> dict[str, Any]:
    """The record with argv cut down (16 arguments of at most 120 characters) and marked."""
    argv = [a if len(a) <= 120 else a[:119] + "…" for a in rec["argv"][:16]]
    if len(rec["argv"]) > 16:
        argv.append(f"… {len(rec['argv']) - 16} more")
    path = rec["path"] if len(rec["path"]) <= 400 else rec["path"][:399] + "…"
    return {**rec, "argv": argv, "path": path, "truncated": True}


def open_sink(spec: str | None, hash_files: str | None = None) -> TraceSink | None:
    """Open the sink named by a ``--trace``/``XSHIM_TRACE`` value; None when tracing is off.

    ``hash_files`` is the ``XSHIM_TRACE_HASH`` value: "1" adds file digests to exec records.
    """
    if not spec or spec in ("0", "off", "no"):
        return None
    digests = hash_files not in (None, "", "0", "no", "off")
    if spec in ("1", "stderr", "-"):
        return TraceSink(sys.stderr, readable=True)
    if spec in LOG_VALUES:
        # "log+hash": a build has one ARG for tracing (the rewriter declares XSHIM_TRACE only),
        # so the digests are asked for in its value.
        return TraceSink(sys.stderr, readable=False, marked=True,
                         hash_files=digests or spec.endswith("+hash"))
    # Append, line-buffered: nested supervisors or several RUN steps may share one file.
    fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    return TraceSink(os.fdopen(fd, "a", buffering=1, encoding="utf-8"), readable=False,
                     hash_files=digests)
