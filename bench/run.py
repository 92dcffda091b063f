#!/usr/bin/env python3
"""xshim against binfmt_misc, raw qemu and proot -q: per-exec cost, a debootstrap second stage,
and workloads that look like builds (an apt install, a C build, a byte-compile).

One run prints one table. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import contenders as cmod
import hostguard
import measure
import report
import trees
import workloads as wmod
from contenders import Contender, Tools
from measure import ExecLoop, RunFailed, Runs, SecondStage
from xshim.builder.cli import exit_status
from xshim.builder.errors import XshimError
from xshim.builder.fsutil import write_atomic

EPILOG = """\
examples:
  python3 bench/run.py                      # everything (~2 hours)
  python3 bench/run.py --quick              # exec loop only (~6 min)
  python3 bench/run.py --workloads loop,stage    # the exec loop and the second stage (~28 min)
  python3 bench/run.py --workloads apt --rounds 2 --only binfmt,xshim   # apt only (~6 min)
  python3 bench/run.py --reps 6 --rounds 1  # a rough look at everything
  python3 bench/run.py --quick --only binfmt,xshim --execs 300 --reps 9 --stat best
  python3 bench/run.py --json > bench.json
  python3 bench/run.py --save bench.json      # the table, and the JSON in a file
  XSHIM_BENCH_CACHE=/srv/bench python3 bench/run.py --tree /var/tmp/arm64-first-stage

Needs root and Linux >= 6.7 (binfmt_misc private to a user namespace). It never mounts
binfmt_misc outside that namespace, and stops if the host has a handler registered.
"""

PROBE_TIMEOUT = 180.0
LOOP_TIMEOUT = 900.0
STAGE_TIMEOUT = 3600.0
WORK_TIMEOUT = 3600.0


@dataclass
class Row:
    contender: Contender
    unavailable: str | None = None  # set: the contender did not run at all
    loop: ExecLoop | None = None
    loop_error: str | None = None
    stage: SecondStage | None = None
    stage_error: str | None = None
    notes: list[str] = field(default_factory=list)
    runs: dict[str, Runs] = field(default_factory=dict)  # build-like workload -> its rounds


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="exec loop only (the same as --workloads loop)")
    p.add_argument("--workloads", metavar="LIST", default=",".join(wmod.ALL),
                   help=f"comma-separated workloads (default: all of {','.join(wmod.ALL)})")
    p.add_argument("--execs", type=int, default=100, metavar="N",
                   help="execs of /bin/true in the loop (default 100)")
    # Many short rounds rather than a few long ones: the machine's speed drifts within seconds,
    # so a longer loop does not average the drift away, while more pairs narrow the median.
    p.add_argument("--reps", type=int, default=30, metavar="N",
                   help="rounds of the exec loop (default 30)")
    p.add_argument("--rounds", "--stage-reps", dest="stage_reps", type=int, default=3,
                   metavar="N", help="rounds of the second stage and of each build workload, "
                   "each on a fresh copy (default 3)")
    p.add_argument("--stat", choices=measure.STATS, default="median",
                   help="statistic over repetitions (default median)")
    p.add_argument("--only", metavar="LIST", default=",".join(cmod.BY_NAME),
                   help="comma-separated contenders (default: all of "
                        f"{','.join(cmod.BY_NAME)}; twins only where xshim has --accelerate)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--save", type=Path, metavar="FILE",
                   help="also write the JSON document to FILE")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when xshim misses the 1.05x-of-binfmt target (per exec and "
                        "second stage, paired ratios) or cannot run")
    p.add_argument("--tree", type=Path, metavar="DIR",
                   help="use this debootstrap --foreign arm64 tree (read only) instead of the "
                        "cached one")
    p.add_argument("--suite", help="Debian suite of the cached tree (default: the host's)")
    p.add_argument("--mirror", help="Debian mirror (default: $XSHIM_MIRROR, else apt's)")
    p.add_argument("--work", type=Path, metavar="DIR",
                   help="where the per-contender copies go (default: $XSHIM_BENCH_CACHE/work)")
    p.add_argument("--keep", action="store_true", help="keep the copies and logs afterwards")
    p.add_argument("--qemu", metavar="PATH", help="qemu-aarch64-static to use (default: PATH)")
    p.add_argument("--qemu-suite", metavar="SUITE",
                   help="use that Debian suite's qemu-user for every contender, e.g. trixie "
                        "(qemu 10.0), checked against the signed archive")
    p.add_argument("--xshim", metavar="CMD",
                   help="command that runs the xshim CLI (default: python3 -m xshim.builder)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in cmod.BY_NAME]
    if bad or not names:
        p.error(f"--only: unknown contender(s) {', '.join(bad) or '(none)'}; "
                f"choose from {','.join(cmod.BY_NAME)}")
    if args.execs < 1 or args.reps < 1 or args.stage_reps < 1:
        p.error("--execs, --reps and --rounds must be at least 1")
    try:
        args.workload_names = ["loop"] if args.quick else wmod.parse_list(args.workloads)
    except ValueError as e:
        p.error(f"--workloads: {e}")
    args.quick = "stage" not in args.workload_names
    args.names = names
    return args


def probe(row: Row, tree: Path, tools: Tools) -> None:
    """One small run, which also warms the caches; a failure marks the contender unavailable."""
    c = row.contender
    reason = cmod.unavailable_reason(c, tools)
    if reason is None:
        try:
            cmod.prepare(c, tree, tools)
            measure.expect_aarch64(
                measure.timed(cmod.exec_loop_command(c, tree, 1, tools), PROBE_TIMEOUT))
        except (RunFailed, OSError) as e:
            reason = str(e)
    if reason is not None:
        row.unavailable = reason
        log(f"{c.name}: not available: {reason}")
    else:
        row.loop = ExecLoop(0)


def exec_loops(rows: list[Row], loop_trees: dict[str, Path], tools: Tools,
               n: int, reps: int) -> None:
    by_name = {row.contender.name: row for row in rows}
    for rep in range(reps):
        for name in cmod.round_order(list(by_name), rep):
            row = by_name[name]
            if row.loop is None:
                continue
            c, tree = row.contender, loop_trees[row.contender.name]
            try:
                full = measure.timed(cmod.exec_loop_command(c, tree, n, tools), LOOP_TIMEOUT)
                measure.expect_aarch64(full)
                zero = measure.timed(cmod.exec_loop_command(c, tree, 0, tools), LOOP_TIMEOUT)
                measure.expect_aarch64(zero)
            except RunFailed as e:
                row.loop_error, row.loop = str(e), None
                log(f"{c.name}: exec loop failed: {e}")
                continue
            row.loop.n = n
            row.loop.full.append(full.seconds)
            row.loop.full_cpu.append(full.cpu)
            row.loop.zero.append(zero.seconds)
            log(f"{c.name}: exec loop {rep + 1}/{reps}: {n} execs {full.seconds:.3f} s "
                f"(cpu {full.cpu:.3f} s), start-up {zero.seconds:.3f} s")


def second_stage(row: Row, first: Path, work: Path, tools: Tools, rep: int, reps: int,
                 keep: bool) -> None:
    """One second-stage run of ``row`` on a fresh copy; a failure ends the contender's runs."""
    c = row.contender
    tree = trees.fresh_copy(first, work / f"{c.name}-stage")
    logfile = work / f"{c.name}-stage.log"
    log(f"{c.name}: debootstrap --second-stage {rep + 1}/{reps} (log: {logfile})")
    try:
        t = measure.timed(cmod.second_stage_command(c, tree, tools), STAGE_TIMEOUT, logfile,
                          measure.STAGE_ENV)
        packages = measure.check_second_stage(tree)
    except RunFailed as e:
        row.stage_error, row.stage = str(e), None
        log(f"{c.name}: second stage failed: {e} (see {logfile})")
        return
    finally:
        if not keep:
            trees.remove_tree(tree)
    if row.stage is None:
        row.stage = SecondStage()
    row.stage.seconds.append(t.seconds)
    row.stage.cpu_seconds.append(t.cpu)
    row.stage.packages = packages
    log(f"{c.name}: second stage {t.seconds:.1f} s (cpu {t.cpu:.1f} s), "
        f"{packages} packages installed")


def build_workloads(rows: list[Row], first: Path, work: Path, tools: Tools,
                    args: argparse.Namespace) -> None:
    """The apt install, the C build and the byte-compile: rounds of every contender that can
    nest execs, each run on a fresh copy of its cached tree."""
    names = [n for n in args.workload_names if n in wmod.WORKLOADS]
    if not names:
        return
    from xshim.builder import debian

    suite = args.suite or debian.host_suite()
    bases = wmod.base_trees(first, suite, args.mirror, tools, names)
    by_name = {row.contender.name: row for row in rows}
    for wname in names:
        w = wmod.WORKLOADS[wname]
        for rep in range(args.stage_reps):
            for name in cmod.round_order(list(by_name), rep):
                row = by_name[name]
                if row.unavailable is not None or not row.contender.nested:
                    continue
                runs = row.runs.setdefault(wname, Runs())
                if runs.error:
                    continue
                log(f"{name}: {wname} {rep + 1}/{args.stage_reps}")
                try:
                    t, result = wmod.run_once(w, row.contender, bases[w.tree], work, tools,
                                              WORK_TIMEOUT, args.keep)
                except RunFailed as e:
                    runs.error = str(e)
                    log(f"{name}: {wname} failed: {e} (see {work}/{name}-{wname}.log)")
                    continue
                runs.seconds.append(t.seconds)
                runs.cpu_seconds.append(t.cpu)
                runs.result = result
                log(f"{name}: {wname} {t.seconds:.1f} s (cpu {t.cpu:.1f} s), {result}")


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        log("needs root: it chroots, maps ids 0-65535 into a user namespace and mounts "
            "/proc for debootstrap; run it with sudo")
        return 2
    try:
        tools = cmod.find_tools(args.qemu, args.xshim, args.qemu_suite)
    except FileNotFoundError as e:
        log(str(e))
        return 2
    first = trees.first_stage_tree(args.tree, args.suite, args.mirror)
    probe_elf = first / "usr" / "bin" / "true"
    log(f"first-stage tree: {first}")
    hostguard.assert_no_binfmt(probe_elf, "before the benchmark")
    if "binfmt" in args.names:
        for path in hostguard.ensure_subids():
            log(f"added {hostguard.SUBID_USER}:0:{hostguard.SUBID_COUNT} to {path} "
                "(for the private user namespace)")

    work = args.work or trees.cache_root() / "work"
    rows = [Row(cmod.BY_NAME[n]) for n in args.names]
    loop_trees: dict[str, Path] = {}
    started, load = time.time(), os.getloadavg()
    try:
        for row in rows:
            loop_trees[row.contender.name] = trees.fresh_copy(
                first, work / f"{row.contender.name}-loop")
            probe(row, loop_trees[row.contender.name], tools)
        if "loop" in args.workload_names:
            exec_loops(rows, loop_trees, tools, args.execs, args.reps)
        for tree in loop_trees.values():
            if not args.keep:
                trees.remove_tree(tree)
        if not args.quick:
            by_name = {row.contender.name: row for row in rows}
            for rep in range(args.stage_reps):
                for name in cmod.round_order(list(by_name), rep):
                    row = by_name[name]
                    if row.unavailable is None and row.contender.nested and not row.stage_error:
                        second_stage(row, first, work, tools, rep, args.stage_reps, args.keep)
        build_workloads(rows, first, work, tools, args)
    finally:
        if not args.keep:
            for tree in loop_trees.values():
                trees.remove_tree(tree)
        hostguard.assert_no_binfmt(probe_elf, "after the benchmark")

    meta: dict[str, Any] = report.environment(first, tools, args, load)
    meta["duration_s"] = round(time.time() - started, 1)
    data = report.as_json(rows, meta, args)
    if args.save:
        write_atomic(args.save, (json.dumps(data, indent=2) + "\n").encode())
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(report.table(rows, meta, args))
    if args.check:
        return 0 if data["xshim_meets_target"] else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # make_rootfs reports debootstrap's progress through logging: show it while the tree is made.
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except hostguard.HostError as e:
        print(f"bench: REFUSED: {e}", file=sys.stderr)
        return 3
    except trees.TreeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except XshimError as e:  # making the cached tree: no mirror, no debootstrap, ...
        print(f"bench: {e}", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
