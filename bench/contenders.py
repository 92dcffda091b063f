"""How each contender runs a command in an arm64 tree: the host command line, nothing else.

- binfmt: the kernel's own dispatch, the limit. binfmt_misc is mounted and qemu registered (F flag)
  inside a private user namespace only (binfmt_misc is per user namespace since Linux 6.7), then
  the command is chrooted. The namespace script refuses to mount anything when it finds itself in
  the host's user namespace.
- qemu: one ``chroot TREE /qemu-aarch64-static PROG`` per exec from a host shell; no nested exec,
  so it only runs the exec loop.
- proot: Debian's ``proot -q qemu-aarch64-static``, in a private mount namespace so that the
  mounts debootstrap makes (proot passes them to the kernel as the real root) go away with it.
- xshim: ``xshim run --rootfs TREE -- CMD``.
- twins: ``xshim run --accelerate --rootfs TREE -- CMD`` (native twins of architecture-independent
  tools), when the xshim that runs has that option; otherwise the row says it is not available.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hostguard import kernel_version, user_ns_id
from xshim.shim import arch as archmod

AARCH64 = archmod.by_name("aarch64")
# Where the raw-qemu contender puts its emulator inside its own copy of the tree.
RAW_QEMU_IN_TREE = f"/{AARCH64.qemu_static}"
BINFMT_NAME = f"xshim-bench-{AARCH64.qemu}"


@dataclass(frozen=True)
class Contender:
    name: str  # short key: binfmt, qemu, proot, xshim
    label: str  # table row label
    nested: bool  # can it run the second stage (every nested exec emulated)?


CONTENDERS = (
    Contender("binfmt", "binfmt_misc (userns)", True),
    Contender("qemu", "raw qemu (chroot)", False),
    Contender("proot", "proot -q", True),
    Contender("xshim", "xshim run", True),
    Contender("twins", "xshim + twins", True),
)
BY_NAME = {c.name: c for c in CONTENDERS}


def binfmt_register_line(a: archmod.Arch, interpreter: str) -> str:
    """The binfmt_misc ``register`` line qemu's own qemu-binfmt-conf.sh writes for ``a``.

    Matches the ELF ident (class, byte order, version) and e_machine; the mask ignores EI_OSABI
    and the low bit of e_type so both ET_EXEC and ET_DYN match. F: the kernel opens the
    interpreter now, so it needs not exist inside the chroot.
    """
    bo = "little" if a.endian is archmod.Endian.LITTLE else "big"
    magic = (
        archmod.ELFMAG + bytes([a.elf_class, a.endian.value, 1]) + bytes(9)
        + archmod.ET_EXEC.to_bytes(2, bo) + a.machine.to_bytes(2, bo)
    )
    etype_mask = b"\xfe\xff" if bo == "little" else b"\xff\xfe"
    mask = b"\xff" * 7 + b"\x00" + b"\xff" * 8 + etype_mask + b"\xff\xff"

    def esc(data: bytes) -> str:
        return "".join(f"\\x{b:02x}" for b in data)

    return f":{BINFMT_NAME}:M::{esc(magic)}:{esc(mask)}:{interpreter}:F"


# Runs as root of a fresh user namespace; $0 the caller's name for messages, $1 host user-ns
# id, $2 register line, $3 tree, $4 "mount" to mount /proc and /dev in the tree first, or "".
_NS_SCRIPT = """\
set -e
if [ "$(readlink /proc/self/ns/user)" = "$1" ]; then
    echo "$0: still in the host's user namespace; not mounting binfmt_misc" >&2
    exit 97
fi
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf '%s' "$2" > /proc/sys/fs/binfmt_misc/register
tree=$3
mounts=$4
shift 4
if [ -n "$mounts" ]; then
    mount -t proc proc "$tree/proc"
    mount --rbind /dev "$tree/dev"
fi
exec chroot "$tree" "$@"
"""
# What the script exits with when it finds itself in the host's user namespace.
STILL_IN_HOST_NS = 97

UNSHARE_USERNS = [
    "unshare", "--user", "--map-users=0,0,65536", "--map-groups=0,0,65536",
    "--mount", "--pid", "--fork",
]


def under_binfmt(
    qemu: Path, tree: str, argv: list[str], *, name: str, mounts: bool = False
) -> list[str]:
    """The host command line that runs guest ``argv`` chrooted in ``tree`` with ``qemu``
    registered in binfmt_misc (F flag) inside a private user namespace, never the host's.
    ``mounts``: mount /proc and /dev in the tree first; ``name`` leads the script's messages."""
    register = binfmt_register_line(AARCH64, str(qemu))
    return [*UNSHARE_USERNS, "/bin/sh", "-c", _NS_SCRIPT, name, user_ns_id(), register, tree,
            "mount" if mounts else "", *argv]


@dataclass(frozen=True)
class Tools:
    qemu: Path  # the host's qemu-aarch64-static
    xshim: tuple[str, ...]  # command prefix that runs the xshim CLI
    accelerate: bool = False  # whether that xshim's `run` has --accelerate (native twins)


def find_tools(qemu: str | None, xshim: str | None, qemu_suite: str | None = None) -> Tools:
    """``qemu_suite``: every contender runs that Debian suite's qemu-user (fetched and checked
    against the signed archive by xshim's own client) instead of the host's."""
    q = qemu or shutil.which(AARCH64.qemu_static)
    if qemu_suite is not None:
        from xshim.builder import qemu as qemumod

        q = str(qemumod.fetch_emulators([AARCH64], suite=qemumod.check_suite(qemu_suite))[
            AARCH64.name])
    if q is None:
        raise FileNotFoundError(
            f"{AARCH64.qemu_static} not found on PATH; apt-get install qemu-user-static "
            "or pass --qemu PATH"
        )
    # The module form, not a console-script wrapper (pyenv's is a bash script that would add
    # its own start-up to every xshim number).
    prefix = tuple(shlex.split(xshim)) if xshim else (sys.executable, "-m", "xshim.builder")
    return Tools(Path(q).resolve(), prefix, has_accelerate(prefix))


def has_accelerate(prefix: tuple[str, ...]) -> bool:
    """Whether ``xshim run`` of this xshim offers --accelerate (asked, not assumed: the
    benchmark also runs against older installed versions)."""
    try:
        proc = subprocess.run([*prefix, "run", "--help"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return accelerate_in_help(proc.stdout)


def accelerate_in_help(text: str) -> bool:
    return any(word.strip("[],") == "--accelerate" for word in text.split())


def unavailable_reason(c: Contender, tools: Tools) -> str | None:
    """Why ``c`` cannot run on this host at all, before trying it; None when it may."""
    if c.name == "binfmt":
        if kernel_version() < (6, 7):
            return (f"kernel {'.'.join(map(str, kernel_version()))} has one global binfmt_misc "
                    "(per user namespace only since 6.7); refusing to register on the host")
        for prog in ("unshare", "newuidmap", "newgidmap", "chroot"):
            if shutil.which(prog) is None:
                return f"{prog} not found (apt-get install util-linux uidmap coreutils)"
    if c.name == "twins" and not tools.accelerate:
        return ("this xshim's `run` has no --accelerate option (native twins), so there is "
                "nothing to measure")
    if c.name == "proot" and shutil.which("proot") is None:
        return "proot not found (apt-get install proot)"
    if c.name in ("qemu", "binfmt") and shutil.which("chroot") is None:
        return "chroot not found"
    return None


def prepare(c: Contender, tree: Path, tools: Tools) -> None:
    """Per-copy set-up that is not part of any timed run."""
    if c.name == "qemu":
        shutil.copy2(tools.qemu, tree / RAW_QEMU_IN_TREE.lstrip("/"))


def guest_command(
    c: Contender, tree: Path, argv: list[str], tools: Tools, mounts: bool = False
) -> list[str]:
    """The host command line that runs guest ``argv`` (absolute guest paths) in ``tree``.
    ``mounts``: binfmt's chroot gets /proc and /dev, as proot's and xshim's always have (a build
    step has them; make and configure behave differently without)."""
    t = str(tree)
    if c.name == "binfmt":
        return under_binfmt(tools.qemu, t, argv, name="xshim-bench", mounts=mounts)
    if c.name == "proot":
        return ["unshare", "--mount", "--propagation", "private",
                "proot", "-0", "-q", str(tools.qemu), "-r", t,
                "-b", "/proc", "-b", "/dev", "-b", "/sys", "-w", "/", *argv]
    # The same emulator file as the other contenders, whichever --qemu or --qemu-suite chose.
    if c.name == "xshim":
        return [*tools.xshim, "run", "--qemu", str(tools.qemu), "--rootfs", t, "--", *argv]
    if c.name == "twins":
        return [*tools.xshim, "run", "--accelerate", "--qemu", str(tools.qemu), "--rootfs", t,
                "--", *argv]
    if c.name == "qemu":
        return ["chroot", t, RAW_QEMU_IN_TREE, *argv]
    raise ValueError(c.name)


# The two contenders whose ratio is the target: they always run back to back.
PAIR = ("binfmt", "xshim")


def round_order(names: list[str], rep: int) -> list[str]:
    """The order of one round: binfmt and xshim first and adjacent, swapped every other round.

    The machine's speed drifts within seconds; adjacent runs see nearly the same machine, and
    swapping which goes first keeps a steady drift from always favouring the same one.
    """
    pair = [n for n in PAIR if n in names]
    if rep % 2:
        pair.reverse()
    return pair + [n for n in names if n not in PAIR]


def exec_loop_script(n: int) -> str:
    """``uname -m`` then ``n`` execs of /bin/true, all from one shell."""
    return f'uname -m; i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done'


def exec_loop_command(c: Contender, tree: Path, n: int, tools: Tools) -> list[str]:
    if c.name != "qemu":
        return guest_command(c, tree, ["/bin/sh", "-c", exec_loop_script(n)], tools)
    # No nested exec: the loop runs in a host shell, one chroot + qemu per guest program.
    run = " ".join(shlex.quote(a) for a in guest_command(c, tree, [], tools))
    script = (f"{run} /bin/uname -m; i=0; while [ $i -lt {n} ]; do {run} /bin/true; "
              "i=$((i+1)); done")
    return ["/bin/sh", "-c", script]


def second_stage_command(c: Contender, tree: Path, tools: Tools) -> list[str]:
    if not c.nested:
        raise ValueError(f"{c.name} cannot run nested execs")
    return guest_command(c, tree, ["/debootstrap/debootstrap", "--second-stage"], tools)
