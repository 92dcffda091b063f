"""The bundle's entry point: one frozen executable, four roles chosen by the name it is run as.

  sh              the image's /bin/sh replacement: runs the image's own shell, with the same
                  arguments, under the supervisor.
  xshim-exec      ``xshim-exec CMD ARGS...``: CMD (searched in $PATH) under the supervisor.
  xshim-install   swaps /bin/sh for the shim, keeping the original (``--mounted``: beside the
                  read-only bundle, for mount mode).
  xshim-restore   puts the original /bin/sh back; ``--remove-bundle`` also deletes the bundle.

The bundle's layout and manifest are defined in shim/layout.py (docs/bundle-contract.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from typing import TYPE_CHECKING

from . import sigstate
from .errors import ShimError
from .layout import (
    EXEC_NAME,
    GUEST,
    GUEST_SH,
    GUEST_SYMLINK,
    INSTALL_NAME,
    RESTORE_NAME,
    Layout,
    Manifest,
    ManifestError,
)

if TYPE_CHECKING:
    from .tracelog import TraceSink
    from .twins import TwinTable

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


def find_layout() -> Layout:
    """The bundle this executable belongs to: it is ``<prefix>/bin/sh``."""
    return Layout.of_shim(sys.executable)


def bundled_emulators(layout: Layout) -> dict[str, bytes]:
    """The bundle's emulators, by architecture name (paths as the image sees them)."""
    from .arch import ARCHES

    try:
        names = set(os.listdir(layout.qemu_dir))
    except FileNotFoundError:
        names = set()
    found: dict[str, bytes] = {}
    for a in ARCHES:
        for candidate in (a.qemu_static, a.qemu_binary):
            if candidate in names:
                found[a.name] = os.path.join(layout.qemu_dir, candidate).encode()
                break
    return found


def _kept(layout: Layout) -> tuple[tuple[str, str], tuple[str, str]]:
    """Where xshim-install may have kept the image's shell, in the order the shim looks: the
    bundle's guest/ (copy mode), then beside the bundle (mount mode); each (file, symlink)."""
    return ((layout.guest_sh, layout.guest_symlink), (layout.outside_sh, layout.outside_symlink))


def guest_shell(layout: Layout, root: str = "/") -> str:
    """The image's own shell: kept in <prefix>/guest or <prefix>-guest by xshim-install, else
    /bin/sh itself (the bundle used without being installed, as by ``xshim run``)."""
    for (sh, _), (sh_here, link_here) in zip(_kept(layout), _kept(layout.inside(root)),
                                               strict=True):
        if os.path.lexists(sh_here):
            return sh
        try:
            with open(link_here, encoding="utf-8") as f:
                target = f.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        return os.path.normpath(os.path.join(os.path.dirname(SH), target))
    return SH


# -- install / restore -----------------------------------------------------------------------------


class InstallError(ShimError):
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


def _check_guest(here: Layout, allowed: tuple[str, ...]) -> None:
    """Refuse a bundle whose manifest does not declare guest/, or whose guest/ holds anything
    but ``allowed``: what is there would take the place of the image's /bin/sh."""
    try:
        manifest = Manifest.load(here.base)
    except FileNotFoundError:
        raise InstallError(f"{here.manifest} is missing, so this is not a complete bundle",
                           "copy the whole directory made by 'xshim bundle'") from None
    except ManifestError as e:
        raise InstallError(f"{here.manifest}: {e}",
                           "make the bundle again with 'xshim bundle'") from None
    if GUEST not in manifest.runtime_dirs:
        raise InstallError(f"{here.manifest} does not declare {GUEST}/",
                           "make the bundle again with this version of 'xshim bundle'")
    shown = _strangers(here.guest_dir, allowed)
    if shown:
        raise InstallError(f"{shown}: not in the bundle's manifest, and it would take the "
                           f"place of the image's {SH}; refusing",
                           "make the bundle again with 'xshim bundle' and check it with "
                           "'xshim verify'")


def _strangers(directory: str, allowed: tuple[str, ...]) -> str:
    """What ``directory`` holds besides ``allowed``, named for a message ("" when nothing; the
    directory itself when it is not one)."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return ""
    except NotADirectoryError:
        names = [""]
    return ", ".join(os.path.join(directory, n) for n in names if n not in allowed)


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_outside(here: Layout, allowed: tuple[str, ...]) -> None:
    """Refuse a <prefix>-guest that holds anything but ``allowed``: the image brought it, and
    what is there would be taken for its shell, or be deleted by xshim-restore."""
    shown = _strangers(here.outside_dir, allowed)
    if shown:
        raise InstallError(f"{shown}: already in the image, where xshim keeps the image's "
                           f"{SH} in mount mode; refusing",
                           "remove it from the image, or patch with another --prefix")


_NAMES = (os.path.basename(GUEST_SH), os.path.basename(GUEST_SYMLINK))


def install(layout: Layout, root: str = "/", mounted: bool = False) -> None:
    """Swap /bin/sh for the shim. At every moment the original exists under some name.

    A regular /bin/sh is hard-linked into <prefix>/guest/sh first (same inode, so restoring is
    bit-identical, owner, mode and times included); a symlinked one has its target recorded.
    Only then is /bin/sh replaced, by an atomic rename of a new symlink over it. ``mounted``
    (mount mode: the bundle is read-only and there only during each RUN) keeps the original in
    <prefix>-guest instead, in the image; between RUNs /bin/sh then points at nothing.
    """
    sh = os.path.join(root, SH.lstrip("/"))
    here = layout.inside(root)
    if os.path.islink(sh) and os.readlink(sh) == layout.shim:
        return  # already installed
    if not os.path.lexists(sh):
        raise InstallError(f"{SH} does not exist in this image, so there is nothing to wrap")
    keep_dir, keep_sh, keep_link = (
        (here.outside_dir, here.outside_sh, here.outside_symlink) if mounted
        else (here.guest_dir, here.guest_sh, here.guest_symlink))
    # The kept file may already be /bin/sh itself: an install interrupted after its first step.
    resumed = (os.path.basename(GUEST_SH),) if _same_file(keep_sh, sh) else ()
    # A bundle's guest/ is where the shim looks first, so it must be empty in both modes.
    _check_guest(here, () if mounted else resumed)
    if mounted:
        _check_outside(here, resumed)
    os.makedirs(keep_dir, exist_ok=True)
    if os.path.islink(sh):
        _write_atomic(keep_link, os.readlink(sh))
    elif not resumed:
        os.link(sh, keep_sh)
    _symlink_atomic(layout.shim, sh)


def restore(layout: Layout, root: str = "/", remove_bundle: bool = False) -> None:
    """Put the original /bin/sh back (atomic rename), wherever install kept it, and leave no
    trace of the keeping; then optionally delete the bundle."""
    sh = os.path.join(root, SH.lstrip("/"))
    here = layout.inside(root)
    if os.path.islink(sh) and os.readlink(sh) == layout.shim:
        _check_guest(here, _NAMES)
        _check_outside(here, _NAMES)
        for keep_sh, keep_link in _kept(here):
            if os.path.lexists(keep_sh):
                os.rename(keep_sh, sh)
                break
            if os.path.exists(keep_link):
                with open(keep_link, encoding="utf-8") as f:
                    _symlink_atomic(f.read(), sh)
                break
        else:
            raise InstallError(f"{SH} points at the shim but no original was kept in "
                               f"{here.guest_dir} or {here.outside_dir}")
    if os.path.isdir(here.outside_dir) and not os.path.islink(here.outside_dir):
        _check_outside(here, _NAMES)
        for name in _NAMES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(here.outside_dir, name))
        os.rmdir(here.outside_dir)
    if remove_bundle:
        import shutil

        shutil.rmtree(here.base)


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


def native_image(layout: Layout, root: str = "/") -> bool:
    """Whether the image's own shell runs on this host without an emulator.

    That is the native leg of a build for several platforms (linux/amd64 and linux/arm64 from
    one patched Dockerfile): there the shim has nothing to translate, so it steps aside
    completely, as if the build ran without it.
    """
    from .arch import host_arch, natively_runs
    from .supervisor import guest_arch

    shell = guest_shell(layout, root)
    arch = guest_arch(shell.encode(), root)
    return arch is not None and natively_runs(host_arch(), arch)


def _exec_native(layout: Layout, argv: list[bytes], env: dict[bytes, bytes],
                 search_path: bool) -> int:
    """Run the command itself in place of this process (no supervisor, no ptrace)."""
    target = argv[0] if search_path else guest_shell(layout).encode()
    try:
        if search_path:
            os.execvpe(target, argv, env)
        os.execve(target, argv, env)
    except OSError as e:
        sys.stderr.write(f"xshim: {os.fsdecode(target)}: {e.strerror}\n")
        return 127 if e.errno == errno.ENOENT else 126


def _run(layout: Layout, argv: list[bytes], program: bytes | None, search_path: bool) -> int:
    from .supervisor import Config, SupervisorError, original_environ, supervise
    from .tracelog import open_sink

    env = clean_environ(original_environ() or dict(os.environb), layout.base.encode())
    if native_image(layout):
        return _exec_native(layout, argv, env, search_path)
    try:
        sink = open_sink(os.environ.get("XSHIM_TRACE"), os.environ.get("XSHIM_TRACE_HASH"))
    except OSError as e:
        sys.stderr.write(f"xshim: cannot open trace {os.environ.get('XSHIM_TRACE')}: {e}\n")
        sink = None
    try:
        st = os.stat(layout.shim)
        self_ids = frozenset({(st.st_dev, st.st_ino)})
    except OSError:
        self_ids = frozenset()
    twins = _twins(layout, sink)
    options = None
    if twins is not None:
        from .twins import cpu_options

        options = cpu_options("QEMU_CPU" in os.environ)
    config = Config(
        emulators=bundled_emulators(layout),
        self_ids=self_ids,
        guest_shell=guest_shell(layout).encode(),
        trace=sink,
        search_path=search_path,
        twins=twins,
        emulator_options=options,
    )
    try:
        status = supervise(argv, env, config, program=program)
    except SupervisorError as e:
        sys.stderr.write(f"xshim: {e}\n")
        return 125
    return _die_like(status)


def _twins(layout: Layout, sink: TraceSink | None) -> TwinTable | None:
    """The bundle's native twins (``xshim bundle --accelerate``), if it has any."""
    from .twins import MAP_NAME, TwinMapError, TwinTable, decisions, load

    path = os.path.join(layout.twin_dir, MAP_NAME)
    if not os.path.exists(path):
        return None
    try:
        twins, skipped = load(path)
    except TwinMapError as e:
        sys.stderr.write(f"xshim: no native twins: {e}\n")
        return None
    if sink is not None:
        sink.twins = decisions(twins, skipped)
    return TwinTable(twins, layout.twin_dir)


USAGE = {
    EXEC_NAME: f"usage: {EXEC_NAME} CMD [ARGS...]\n",
    INSTALL_NAME: f"usage: {INSTALL_NAME} [--mounted]   (swaps /bin/sh for the shim; needs "
                  "root; --mounted: the bundle is bind-mounted for each RUN, keep the image's "
                  "shell beside it)\n",
    RESTORE_NAME: f"usage: {RESTORE_NAME} [--remove-bundle]\n",
}


def main(argv: list[str] | None = None) -> int:
    sigstate.original()  # before anything installs a handler
    args = list(sys.argv if argv is None else argv)
    role = os.path.basename(args[0]) if args else "sh"
    layout = find_layout()
    if role in (INSTALL_NAME, RESTORE_NAME):
        allowed = "--mounted" if role == INSTALL_NAME else "--remove-bundle"
        if any(a != allowed for a in args[1:]) or len(args) > 2:
            sys.stderr.write(USAGE[role])
            return 2
        try:
            if role == INSTALL_NAME:
                if native_image(layout):
                    return 0  # the image's /bin/sh runs here as it is: nothing to wrap
                install(layout, mounted="--mounted" in args)
            else:
                restore(layout, remove_bundle="--remove-bundle" in args)
        except InstallError as e:
            hint = f"\nhint: {e.hint}" if e.hint else ""
            sys.stderr.write(f"xshim: {role}: {e}{hint}\n")
            return 1
        except OSError as e:
            hint = " (run this step as root: USER root)" if isinstance(e, PermissionError) else ""
            sys.stderr.write(f"xshim: {role}: {e}{hint}\n")
            return 1
        return 0
    bargv = [os.fsencode(a) for a in args]
    if role == EXEC_NAME:
        if len(bargv) < 2:
            sys.stderr.write(USAGE[role])
            return 2
        return _run(layout, bargv[1:], None, search_path=True)
    # The shell role: exec the shim itself, which the supervisor turns into the image's shell
    # under qemu, exactly as it does for every later exec of /bin/sh.
    return _run(layout, bargv, layout.shim.encode(), search_path=False)


def run() -> None:
    """The frozen program's start: leave without interpreter teardown once the work is done,
    so a RUN step ends as soon as its command does."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
