"""``xshim run``: a command chrooted into a foreign rootfs, under the exec supervisor.

The rootfs is left as it was: /proc, /sys and a private /dev (with the emulators under
``/dev/.xshim``, where every traced process can exec them) are mounted in a mount namespace of
our own, which disappears with the last process in it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from ..shim import arch as archmod
from ..shim.libc import (
    CLONE_NEWNS,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    umount2,
    unshare,
)
from ..shim.ptrace import open_in_root
from ..shim.supervisor import (
    Config,
    SupervisorError,
    exit_code,
    guest_arch,
    original_environ,
    supervise,
)
from ..shim.tracelog import LOG_VALUES, TraceSink, open_sink
from ..shim.twins import MAP_NAME, TwinTable, cpu_options, decisions
from ..shim.twins import load as load_map
from .errors import InputError, PrivilegeError, XshimError
from .qemu import available_emulators, check_suite, fetch_emulators

log = logging.getLogger("xshim")

EMULATOR_DIR = "/dev/.xshim"
TWIN_DIR = f"{EMULATOR_DIR}/twin"

# Device nodes bound from the host's /dev into the private one (what a container runtime gives).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _unshare_mounts() -> None:
    try:
        unshare(CLONE_NEWNS)
    except OSError as e:
        raise PrivilegeError(
            f"unshare(CLONE_NEWNS) failed: {os.strerror(e.errno or 0)}",
            "xshim run needs root (CAP_SYS_ADMIN) for its private mounts; run it with sudo",
        ) from None
    mount("none", "/", None, MS_REC | MS_PRIVATE, None)


def check_rootfs(rootfs: Path) -> None:
    if not rootfs.is_dir():
        raise InputError(
            f"rootfs {str(rootfs)!r} does not exist or is not a directory",
            "make one with: xshim rootfs --platform linux/arm64 DIR",
        )
    if not any((rootfs / d).is_dir() for d in ("bin", "usr/bin")):
        raise InputError(
            f"{str(rootfs)!r} does not look like a root filesystem (no bin/ or usr/bin/)",
            "point --rootfs at the top of an unpacked image or a debootstrap tree",
        )
    dev = rootfs / "dev"
    if _not_a_mount_point(dev):
        # The emulators go under /dev/.xshim, so a rootfs without a /dev of its own cannot run.
        raise InputError(
            f"{str(dev)!r} is a symlink or a file, so no /dev can be mounted in the rootfs",
            f"replace it with an empty directory: rm {dev} && mkdir {dev}",
        )


def detect_platform(rootfs: Path) -> archmod.Arch:
    for candidate in (b"/bin/sh", b"/usr/bin/env", b"/bin/busybox", b"/usr/bin/dpkg"):
        a = guest_arch(candidate, str(rootfs))
        if a is not None:
            return a
    raise InputError(
        f"cannot tell the platform of {str(rootfs)!r}: no ELF /bin/sh, /usr/bin/env or "
        "/bin/busybox in it",
        "give it with --platform, e.g. --platform linux/arm64",
    )


def _not_a_mount_point(path: Path) -> bool:
    """A symlink or a file: mount(2) follows symlinks, and an absolute one (a debootstrap
    --foreign tree made in a container has ``proc -> /proc``) points out of the rootfs."""
    return path.is_symlink() or (path.exists() and not path.is_dir())


def _mount_point(rootfs: Path, sub: str) -> Path | None:
    """``rootfs/sub`` as a directory to mount on (it may not exist yet); None if it cannot be
    one."""
    path = rootfs / sub
    if _not_a_mount_point(path):
        return None
    return path


def _setup_dev(rootfs: Path, emulators: dict[str, Path]) -> dict[str, bytes]:
    dev = _mount_point(rootfs, "dev")
    assert dev is not None, "check_rootfs refuses such a /dev"
    mount("tmpfs", str(dev), "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in DEVICES:
        node = dev / name
        node.touch()
        mount(f"/dev/{name}", str(node), None, MS_BIND, None)
    (dev / "pts").mkdir()
    try:
        mount("devpts", str(dev / "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620")
        os.symlink("pts/ptmx", dev / "ptmx")
    except OSError as e:
        log.debug("no devpts in the rootfs: %s", e)
    (dev / "shm").mkdir()
    mount("tmpfs", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", dev / name)
    os.symlink("/proc/self/fd", dev / "fd")
    edir = dev / EMULATOR_DIR.removeprefix("/dev/")
    edir.mkdir()
    inside: dict[str, bytes] = {}
    for name, path in emulators.items():
        target = edir / path.name
        if not target.exists():
            target.touch()
            mount(str(path), str(target), None, MS_BIND, None)
            mount(str(path), str(target), None, MS_BIND | MS_RDONLY | MS_REMOUNT, None)
        inside[name] = f"{EMULATOR_DIR}/{path.name}".encode()
    return inside


@dataclass(frozen=True)
class RunRequest:
    """``xshim run``: ``command`` chrooted into ``rootfs``. ``platform``: the rootfs's, checked
    against the tree (default: read from it); ``trace``: a trace spec (default: $XSHIM_TRACE)."""

    rootfs: str
    command: tuple[str, ...]
    platform: archmod.Arch | None = None
    qemu: tuple[str, ...] = ()
    trace: str | None = None
    workdir: str = "/"
    accelerate: bool = False  # native twins (builder/twins.py)
    qemu_suite: str | None = None  # the Debian suite whose qemu-user to run


def run_in_rootfs(req: RunRequest) -> int:
    """Run the command chrooted into the rootfs with every foreign exec going through qemu.

    Returns the command's exit code (128+N when killed by signal N). Every input is checked
    before anything is made or mounted; the mount points it has to create in the rootfs are
    removed again when the command ends.
    """
    rootfs, command, trace = req.rootfs, req.command, req.trace
    if not str(rootfs).strip():
        raise InputError("--rootfs is empty", "give the directory of a root filesystem, e.g. "
                         "--rootfs /var/tmp/arm64")
    qemu_suite = req.qemu_suite
    if qemu_suite is not None:
        check_suite(qemu_suite)
        if req.qemu:
            raise InputError("--qemu and --qemu-suite both name the emulator to use",
                             "give one of them: a file with --qemu, or a Debian suite whose "
                             "qemu-user to fetch with --qemu-suite")
    root = Path(rootfs).resolve()
    check_rootfs(root)
    if os.geteuid() != 0:
        raise PrivilegeError(
            "xshim run needs root: it chroots and mounts /proc, /sys and /dev for the command",
            "run it as root (sudo xshim run ...)",
        )
    target = _target_platform(root, req.platform)
    workdir = _check_workdir(root, req.workdir)
    trace_spec, trace_from = (trace, "--trace") if trace is not None else (
        os.environ.get("XSHIM_TRACE"), "XSHIM_TRACE")
    _check_trace(trace_spec, trace_from)
    explicit = [Path(q) for q in req.qemu]
    # Every emulator the host has (or was given) is offered, for mixed-architecture trees; the
    # rootfs's own platform must have one, fetched from Debian if need be.
    emulators, missing = available_emulators(archmod.ARCHES, explicit)
    if qemu_suite is not None:  # that suite's emulator for the rootfs, not the host's
        emulators.update(fetch_emulators([target], suite=qemu_suite))
    elif target in missing:
        emulators.update(fetch_emulators([target]))
    twin_dir = _prepare_twins(root, target) if req.accelerate else None

    points = {sub: _mount_point(root, sub) for sub in ("proc", "sys", "dev")}
    made = [p for p in points.values() if p is not None and not p.exists()]
    for new in made:
        _make_mount_point(root, new)
    mounted: list[Path] = []
    try:
        sink = _open_trace(trace_spec, trace_from)
        _unshare_mounts()
        for sub, fstype, flags in (
            ("proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
            ("sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY),
        ):
            point = points[sub]
            if point is None:
                # debootstrap --second-stage replaces such a link and mounts /proc itself.
                log.warning("%s is a symlink or a file: no /%s inside the rootfs (replace it "
                            "with an empty directory to get one)", root / sub, sub)
                continue
            mount(sub, str(point), fstype, flags, None)
            mounted.append(point)
        mounted.append(root / "dev")
        inside = _setup_dev(root, emulators)
        table = None
        if twin_dir is not None:
            table = _mount_twins(root, twin_dir)
            if sink is not None:
                sink.twins = decisions(*load_map(str(twin_dir / MAP_NAME)))

        env = original_environ() or dict(os.environb)
        config = Config(
            emulators=inside, trace=sink, chroot=str(root), cwd=workdir, search_path=True,
            twins=table,
            names_dir=f"{EMULATOR_DIR}/by-name",
            emulator_options=cpu_options(b"QEMU_CPU" in env) if table is not None else None,
        )
        argv = [c.encode() for c in command]
        log.debug("running %s in %s (%s)", command, root, target.platform)
        try:
            status = supervise(argv, env, config)
        except SupervisorError as e:
            raise XshimError(str(e), "run xshim where ptrace and seccomp filters are allowed"
                             ) from e
    finally:
        _remove_mount_points(made, mounted)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        log.info("command killed by %s", signal.Signals(sig).name)
    return exit_code(status)


def _prepare_twins(root: Path, target: archmod.Arch) -> Path:
    from .twins import log_decisions, prepare

    twin_dir = prepare(root, target, archmod.host_arch(), TWIN_DIR)
    log_decisions(twin_dir)
    return twin_dir


def _mount_twins(root: Path, twin_dir: Path) -> TwinTable:
    """The twins, read-only at TWIN_DIR inside the rootfs (in the private /dev)."""
    point = root / TWIN_DIR.lstrip("/")
    point.mkdir()
    mount(str(twin_dir), str(point), None, MS_BIND, None)
    mount(str(twin_dir), str(point), None, MS_BIND | MS_RDONLY | MS_REMOUNT, None)
    twins, _ = load_map(str(twin_dir / MAP_NAME))
    return TwinTable(twins, TWIN_DIR, str(root))


def _target_platform(root: Path, target: archmod.Arch | None) -> archmod.Arch:
    """The rootfs's platform: --platform, which must agree with the tree, or the tree's own."""
    if target is None:
        return detect_platform(root)
    try:
        found: archmod.Arch | None = detect_platform(root)
    except InputError:
        found = None  # nothing to contradict
    if found is not None and found != target:
        raise InputError(
            f"--platform {target.platform} contradicts the rootfs {str(root)!r}, whose programs "
            f"are built for {found.platform}",
            f"drop --platform (the rootfs's own, {found.platform}, is used), or point --rootfs "
            f"at a {target.platform} tree")
    return target


def _check_workdir(root: Path, workdir: str) -> str:
    """``workdir`` as an absolute path inside the rootfs; InputError unless it is a directory
    there (symlinks resolved inside the rootfs, as the command will see them)."""
    inside = os.path.join("/", workdir)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(open_in_root(fd, inside.encode(), os.O_PATH | os.O_DIRECTORY))
    except OSError as e:
        raise InputError(f"--workdir {workdir}: {os.strerror(e.errno or 0)} inside the rootfs "
                         f"{str(root)!r}",
                         "give a directory that exists inside the rootfs, e.g. -w /root"
                         ) from None
    finally:
        os.close(fd)
    return inside


def _check_trace(spec: str | None, source: str) -> None:
    """Refuse a trace file that cannot be made, before anything is written or mounted."""
    if spec is None or spec in ("", "0", "off", "no", "1", "stderr", "-", *LOG_VALUES):
        return
    path = Path(spec)
    fix = (f"give {source} a file in an existing, writable directory (e.g. /tmp/xshim.jsonl), "
           "'stderr' for readable lines, or 'log' for records in a build log")
    if path.is_dir():
        raise InputError(f"{source} {spec}: is a directory; the trace is one file", fix)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{source} {spec}: directory {str(parent)!r} does not exist", fix)
    if (path.exists() and not os.access(path, os.W_OK)) or (
            not path.exists() and not os.access(parent, os.W_OK | os.X_OK)):
        raise InputError(f"{source} {spec}: not writable", fix)


def _open_trace(spec: str | None, source: str) -> TraceSink | None:
    try:
        return open_sink(spec, os.environ.get("XSHIM_TRACE_HASH"))
    except OSError as e:
        raise InputError(f"{source} {spec}: cannot open: {os.strerror(e.errno or 0)}",
                         f"give {source} a file in an existing, writable directory, or "
                         "'stderr'") from None


def _make_mount_point(root: Path, point: Path) -> None:
    try:
        point.mkdir()
    except OSError as e:
        ro = e.errno == errno.EROFS
        raise InputError(
            f"the rootfs {str(root)!r} has no /{point.name}"
            + (" and is read-only, so none can be made" if ro else
               f", and it cannot be made: {os.strerror(e.errno or 0)}"),
            "create the empty directories proc, sys and dev in the rootfs, or make it writable",
        ) from None


def _remove_mount_points(made: list[Path], mounted: list[Path]) -> None:
    """Take the mounts off the mount points this run created and remove those directories."""
    for point in made:
        if point in mounted:
            # Lazily: a process of the command may still hold it until the supervisor exits.
            with contextlib.suppress(OSError):
                umount2(str(point), MNT_DETACH)
        try:
            point.rmdir()
        except OSError as e:
            log.warning("could not remove %s, made as a mount point: %s", point, e.strerror)
