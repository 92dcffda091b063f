"""The bundle's entry point: one frozen executable, four roles chosen by the name it is run as.

  sh              the image's /bin/sh replacement: runs the image's own shell, with the same
                  arguments, under the supervisor.
  xshim-exec      ``xshim-exec CMD ARGS...``: CMD (searched in $PATH) under the supervisor.
  xshim-install   swaps /bin/sh for the shim, keeping the original.
  xshim-restore   puts the original /bin/sh back; ``--remove-bundle`` also deletes the bundle.

The bundle lives at PREFIX (``<PREFIX>/bin/sh`` is this executable), with the emulators in
``<PREFIX>/qemu`` and the image's original shell kept in ``<PREFIX>/guest``.
"""

from __future__ import annotations

import os
import signal
import sys

SH = "/bin/sh"

# Variables the PyInstaller bootloader adds for its own use; guests must see the environment the
# caller passed, so these go before anything runs.
_BOOTLOADER_PREFIXES = ("_PYI_", "_MEIPASS")
_LD_SAVED = "LD_LIBRARY_PATH_ORIG"


def clean_environ(env: dict[bytes, bytes], prefix: bytes) -> dict[bytes, bytes]:
    out = {k: v for k, v in env.items() if not k.startswith(tuple(p.encode() for p in
                                                                  _BOOTLOADER_PREFIXES))}
    saved = out.pop(_LD_SAVED.encode(), None)
    if saved is not None:
        out[b"LD_LIBRARY_PATH"] = saved
    elif out.get(b"LD_LIBRARY_PATH", b"").startswith(prefix + b"/"):
        del out[b"LD_LIBRARY_PATH"]
    return out


def find_prefix() -> str:
    """The bundle's prefix: this executable is ``<prefix>/bin/sh``."""
    exe = os.path.realpath(sys.executable)
    return os.path.dirname(os.path.dirname(exe))


def find_emulators(prefix: str) -> dict[str, bytes]:
    from .arch import ARCHES

    qdir = os.path.join(prefix, "qemu")
    try:
        names = set(os.listdir(qdir))
    except FileNotFoundError:
        names = set()
    found: dict[str, bytes] = {}
    for a in ARCHES:
        for candidate in (a.qemu_static, a.qemu_binary):
            if candidate in names:
                found[a.name] = os.path.join(qdir, candidate).encode()
                break
    return found


def guest_shell(prefix: str, root: str = "/") -> str:
    """The image's own shell: kept in <prefix>/guest by xshim-install, else /bin/sh itself."""
    guest = os.path.join(root, prefix.lstrip("/"), "guest")
    if os.path.lexists(os.path.join(guest, "sh")):
        return os.path.join(prefix, "guest", "sh")
    try:
        with open(os.path.join(guest, "sh.symlink"), encoding="utf-8") as f:
            target = f.read()
    except FileNotFoundError:
        return SH
    return os.path.normpath(os.path.join(os.path.dirname(SH), target))


# -- install / restore -----------------------------------------------------------------------------


class InstallError(Exception):
    pass


def _symlink_atomic(target: str, path: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.xshim-tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, path)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def install(prefix: str, root: str = "/") -> None:
    """Swap /bin/sh for the shim. At every moment the original exists under some name.

    A regular /bin/sh is hard-linked into <prefix>/guest/sh first (same inode, so restoring is
    bit-identical, owner, mode and times included); a symlinked one has its target recorded.
    Only then is /bin/sh replaced, by an atomic rename of a new symlink over it.
    """
    sh = os.path.join(root, SH.lstrip("/"))
    shim = os.path.join(prefix, "bin", "sh")
    guest = os.path.join(root, prefix.lstrip("/"), "guest")
    if os.path.islink(sh) and os.readlink(sh) == shim:
        return  # already installed
    if not os.path.lexists(sh):
        raise InstallError(f"{SH} does not exist in this image, so there is nothing to wrap")
    os.makedirs(guest, exist_ok=True)
    if os.path.islink(sh):
        _write_atomic(os.path.join(guest, "sh.symlink"), os.readlink(sh))
    else:
        kept = os.path.join(guest, "sh")
        if not os.path.lexists(kept):
            os.link(sh, kept)
    _symlink_atomic(shim, sh)


def restore(prefix: str, root: str = "/", remove_bundle: bool = False) -> None:
    """Put the original /bin/sh back (atomic rename), then optionally delete the bundle."""
    sh = os.path.join(root, SH.lstrip("/"))
    shim = os.path.join(prefix, "bin", "sh")
    guest = os.path.join(root, prefix.lstrip("/"), "guest")
    if os.path.islink(sh) and os.readlink(sh) == shim:
        kept = os.path.join(guest, "sh")
        record = os.path.join(guest, "sh.symlink")
        if os.path.lexists(kept):
            os.rename(kept, sh)
        elif os.path.exists(record):
            with open(record, encoding="utf-8") as f:
                _symlink_atomic(f.read(), sh)
        else:
            raise InstallError(f"{SH} points at the shim but no original was kept in {guest}")
    if remove_bundle:
        import shutil

        shutil.rmtree(os.path.join(root, prefix.lstrip("/")))


# -- running ---------------------------------------------------------------------------------------


def _die_like(status: int) -> int:
    """Leave with the child's status: its exit code, or death by the same signal.

    As PID 1 (a container's first process) we cannot die of our own signal: then 128+N.
    """
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if os.getpid() != 1:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core of the supervisor
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _run(prefix: str, argv: list[bytes], program: bytes | None, search_path: bool) -> int:
    from .supervisor import Config, SupervisorError, original_environ, supervise
    from .tracelog import open_sink

    env = clean_environ(original_environ() or dict(os.environb), prefix.encode())
    try:
        sink = open_sink(os.environ.get("XSHIM_TRACE"), os.environ.get("XSHIM_TRACE_HASH"))
    except OSError as e:
        sys.stderr.write(f"xshim: cannot open trace {os.environ.get('XSHIM_TRACE')}: {e}\n")
        sink = None
    shim = os.path.join(prefix, "bin", "sh")
    try:
        st = os.stat(shim)
        self_ids = frozenset({(st.st_dev, st.st_ino)})
    except OSError:
        self_ids = frozenset()
    config = Config(
        emulators=find_emulators(prefix),
        self_ids=self_ids,
        guest_shell=guest_shell(prefix).encode(),
        trace=sink,
        search_path=search_path,
    )
    try:
        status = supervise(argv, env, config, program=program)
    except SupervisorError as e:
        sys.stderr.write(f"xshim: {e}\n")
        return 125
    return _die_like(status)


USAGE = {
    "xshim-exec": "usage: xshim-exec CMD [ARGS...]\n",
    "xshim-install": "usage: xshim-install   (swaps /bin/sh for the shim; needs root)\n",
    "xshim-restore": "usage: xshim-restore [--remove-bundle]\n",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    role = os.path.basename(args[0]) if args else "sh"
    prefix = find_prefix()
    if role in ("xshim-install", "xshim-restore"):
        if any(a not in ("--remove-bundle",) for a in args[1:]) or (
            role == "xshim-install" and len(args) > 1
        ):
            sys.stderr.write(USAGE[role])
            return 2
        try:
            if role == "xshim-install":
                install(prefix)
            else:
                restore(prefix, remove_bundle="--remove-bundle" in args)
        except (InstallError, OSError) as e:
            hint = " (run this step as root: USER root)" if isinstance(e, PermissionError) else ""
            sys.stderr.write(f"xshim: {role}: {e}{hint}\n")
            return 1
        return 0
    bargv = [os.fsencode(a) for a in args]
    if role == "xshim-exec":
        if len(bargv) < 2:
            sys.stderr.write(USAGE[role])
            return 2
        return _run(prefix, bargv[1:], None, search_path=True)
    # The shell role: exec the shim itself, which the supervisor turns into the image's shell
    # under qemu, exactly as it does for every later exec of /bin/sh.
    return _run(prefix, bargv, os.path.join(prefix, "bin", "sh").encode(), search_path=False)


def run() -> None:
    """The frozen program's start: leave without interpreter teardown once the work is done,
    so a RUN step ends as soon as its command does."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
