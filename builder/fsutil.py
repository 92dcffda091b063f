"""Writing files: atomically where a reader could see half a file, as a shell redirect where the
target is not a regular file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def write_output(path: str | os.PathLike[str], data: bytes) -> None:
    """Write an output file the way ``> path`` would, but atomically where that is possible.

    A regular file (or a new one) is replaced atomically; a symlink is followed and its target
    replaced the same way, the link kept. Anything else (a device such as /dev/null, a FIFO, a
    socket) cannot be replaced without destroying it, and a path under /dev or /proc such as
    /dev/stdout stands for a descriptor already open elsewhere, so those are opened and written
    through (truncated first), exactly as a shell redirect writes to them. Raises OutputError,
    naming the path, when it cannot be written at all (nothing is written then).
    """
    try:
        st: os.stat_result | None = os.stat(path)  # through symlinks, as open(2) goes
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(str(path), e) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(str(path), IsADirectoryError(21, os.strerror(21)))
    # /dev/stdout and the like stand for a descriptor someone else holds open: even when it is a
    # regular file, replacing it would leave that descriptor on the old one.
    through_fd = os.path.abspath(path).startswith(("/dev/", "/proc/"))
    if st is not None and (through_fd or not stat.S_ISREG(st.st_mode)):
        # Opened by its own name: /dev/stdout's link through /proc/self/fd names no real path.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as e:
            raise OutputError(str(path), e) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise OutputError(str(path), FileNotFoundError(2, f"directory {directory} does not exist"))
    try:
        write_atomic(target, data)
    except OSError as e:
        raise OutputError(str(path), e) from None


class OutputError(OSError):
    """An output file that cannot be written: ``path`` and the reason."""

    def __init__(self, path: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
