"""Start-up of the bundle's shim: exec of ``<prefix>/bin/sh -c true`` to the guest shell's first
instruction. Target: <= 80 ms.

How it is measured, without root and without a foreign tree: a bundle is built with its prefix
in a temporary directory on the host (so its absolute PT_INTERP and DT_RPATH are real paths
here), and its kept guest shell (``<prefix>/guest/sh``, where xshim-install puts the image's
shell) is a tiny static aarch64 program whose first instructions read CLOCK_MONOTONIC (qemu
passes the call to the host kernel: the same clock as ours), write it to stdout and exit. The
start-up is that timestamp minus ours, taken just before spawning ``<prefix>/bin/sh -c true``
(so the spawn itself counts too). The full wall time until the shim exits is shown beside it.

Also printed, to show where the time goes:
  frozen start   the shim run as xshim-install with a bad argument: PyInstaller bootloader (which
                 re-execs itself once), Python start-up, entry import, usage error, exit;
  qemu start     qemu-aarch64-static running the same tiny program directly, measured the same
                 way (spawn to the guest's first instructions).

  python3 bench/startup.py [-n 50] [--bundle DIR-built-with-matching---prefix] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 80.0

# aarch64: clock_gettime(CLOCK_MONOTONIC, sp - 16); write(1, sp, 16); exit_group(0)
_CODE = struct.pack(
    "<13I",
    0xD2800020,  # mov x0, #1            CLOCK_MONOTONIC
    0xD10043FF,  # sub sp, sp, #16
    0x910003E1,  # mov x1, sp
    0xD2800E28,  # mov x8, #113          clock_gettime
    0xD4000001,  # svc #0
    0xD2800020,  # mov x0, #1            stdout
    0x910003E1,  # mov x1, sp
    0xD2800202,  # mov x2, #16
    0xD2800808,  # mov x8, #64           write
    0xD4000001,  # svc #0
    0xD2800000,  # mov x0, #0
    0xD2800BC8,  # mov x8, #94           exit_group
    0xD4000001,  # svc #0
)


def tiny_aarch64_clock() -> bytes:
    """A static ELF64 aarch64 executable that writes its start time (timespec) and exits."""
    base, ehsize, phsize = 0x400000, 64, 56
    size = ehsize + phsize + len(_CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, base + ehsize + phsize, ehsize, 0,
                                 0, ehsize, phsize, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + phdr + _CODE


def timed(argv: list[str], n: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Per run: ms from spawn to the guest's clock reading (when it prints one), ms to exit."""
    first, total = [], []
    for _ in range(n):
        start = time.monotonic_ns()
        proc = subprocess.run(argv, env=env, capture_output=True)
        total.append((time.monotonic_ns() - start) / 1e6)
        if proc.returncode not in (0, 2):
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()}")
        if len(proc.stdout) == 16:
            sec, nsec = struct.unpack("<qq", proc.stdout)
            first.append((sec * 1_000_000_000 + nsec - start) / 1e6)
    return first, total


def summary(ms: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(ms, n=10)
    return {"median": statistics.median(ms), "p10": qs[0], "p90": qs[-1], "min": min(ms)}


def build(prefix: Path) -> None:
    xshim = shutil.which("xshim")
    argv = [xshim] if xshim else [sys.executable, "-m", "xshim.builder.cli"]
    subprocess.run([*argv, "-q", "bundle", "--platform", "linux/arm64", "--prefix", str(prefix),
                    "-o", str(prefix)], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="runs per measurement (default 50)")
    ap.add_argument("--bundle", type=Path,
                    help="an existing bundle whose --prefix is its own path on this host")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xshim-bench-"))
    try:
        prefix = args.bundle.resolve() if args.bundle else work / "xshim"
        if not args.bundle:
            build(prefix)
        made_guest = not (prefix / "guest").exists()
        guest = prefix / "guest" / "sh"
        if made_guest:
            guest.parent.mkdir()
            guest.write_bytes(tiny_aarch64_clock())
            guest.chmod(0o755)
        env = {"PATH": "/usr/bin:/bin"}
        try:
            timed([str(prefix / "bin" / "sh"), "-c", "true"], 3, env)  # warm the page cache
            shim_first, shim_total = timed([str(prefix / "bin" / "sh"), "-c", "true"], args.n,
                                           env)
            if len(shim_first) != args.n:
                raise SystemExit("the guest did not report its start time")
            shim, shim_exit = summary(shim_first), summary(shim_total)
            frozen = summary(timed([str(prefix / "bin" / "xshim-install"), "x"], args.n, env)[1])
            qemu = summary(timed([str(prefix / "qemu" / "qemu-aarch64-static"), str(guest)],
                                 args.n, env)[0])
        finally:
            if made_guest:
                shutil.rmtree(prefix / "guest")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"runs": args.n, "target_ms": TARGET_MS, "shim_to_first_instruction": shim,
              "shim_to_exit": shim_exit, "frozen_start": frozen, "qemu_start": qemu,
              "ok": shim["median"] <= TARGET_MS}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        def line(name: str, s: dict[str, float]) -> str:
            return (f"{name:28s} median {s['median']:6.1f} ms   p10 {s['p10']:6.1f}   "
                    f"p90 {s['p90']:6.1f}   min {s['min']:6.1f}")
        print(f"start-up, {args.n} runs each (target: median <= {TARGET_MS:.0f} ms)")
        print(line("bin/sh -c true -> guest", shim))
        print(line("  ... -> shim exits", shim_exit))
        print(line("  frozen start (usage exit)", frozen))
        print(line("  qemu start (direct)", qemu))
        print("OK" if result["ok"] else "OVER TARGET")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
