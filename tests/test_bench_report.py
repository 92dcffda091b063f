"""The benchmark's arithmetic: paired ratios and the target verdict (pure, no runs)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import contenders
import report
from measure import ExecLoop, SecondStage
from run import Row


def _row(name: str, full: list[float], zero: list[float], stage: list[float] | None) -> Row:
    loop = ExecLoop(100, full=full, zero=zero, full_cpu=list(full))
    st = SecondStage(seconds=stage, cpu_seconds=list(stage), packages=88) if stage else None
    return Row(contenders.BY_NAME[name], loop=loop, stage=st)


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    # Round by round xshim is 2x, 1x, 2x binfmt; the ratio of the two medians (3/3) hides that.
    xshim, binfmt = [2.0, 3.0, 10.0], [1.0, 3.0, 5.0]
    assert report._paired(xshim, binfmt) == pytest.approx(2.0)
    assert statistics.median(xshim) / statistics.median(binfmt) == pytest.approx(1.0)
    assert report._paired([], []) is None
    assert report._paired([1.0], [0.0]) is None  # a zero sample cannot be divided by


def test_per_exec_excludes_start_up() -> None:
    rows = [
        _row("binfmt", [1.1, 2.1], [0.1, 0.1], None),
        _row("xshim", [1.5, 2.5], [0.5, 0.5], None),  # slower start-up, same cost per exec
    ]
    r = report.paired_ratios(rows)["xshim/binfmt"]
    assert r["per_exec_s"] == pytest.approx(1.0)
    assert r["loop_s"] == pytest.approx(statistics.median([1.5 / 1.1, 2.5 / 2.1]))
    assert r["stage_s"] is None
    assert report.meets_target(rows, quick=True)
    assert not report.meets_target(rows, quick=False)  # no second stage measured


def test_target_needs_both_per_exec_and_second_stage() -> None:
    fast = [_row("binfmt", [1.1], [0.1], [100.0]), _row("xshim", [1.14], [0.1], [104.0])]
    assert report.meets_target(fast, quick=False)
    slow_stage = [_row("binfmt", [1.1], [0.1], [100.0]), _row("xshim", [1.14], [0.1], [106.0])]
    assert not report.meets_target(slow_stage, quick=False)
    slow_exec = [_row("binfmt", [1.1], [0.1], [100.0]), _row("xshim", [1.16], [0.1], [100.0])]
    assert not report.meets_target(slow_exec, quick=True)
    assert not report.meets_target([_row("binfmt", [1.1], [0.1], [100.0])], quick=True)


def test_table_shows_paired_and_median_ratios() -> None:
    rows = [_row("binfmt", [1.1, 1.3], [0.1, 0.1], [100.0]),
            _row("xshim", [1.2, 1.4], [0.2, 0.2], [103.0])]
    args = argparse.Namespace(execs=100, reps=2, stage_reps=1, stat="median", quick=False)
    meta = {"guest": "g", "qemu": "q", "kernel": "k", "cpus": 2, "loadavg_at_start": [0.0]}
    text = report.table(rows, meta, args)
    assert "per exec 1.00× [1.00×]" in text
    assert "second stage 1.03× [1.03×]" in text
    assert text.rstrip().endswith("met")



def test_binfmt_and_xshim_run_back_to_back_and_take_turns_first() -> None:
    names = ["binfmt", "qemu", "proot", "xshim"]
    assert contenders.round_order(names, 0) == ["binfmt", "xshim", "qemu", "proot"]
    assert contenders.round_order(names, 1) == ["xshim", "binfmt", "qemu", "proot"]
    assert contenders.round_order(["proot", "xshim"], 1) == ["xshim", "proot"]


def test_per_exec_subtracts_the_median_start_up() -> None:
    # One noisy N = 0 run (0.9 s) must not land on its own round's ratio.
    rows = [_row("binfmt", [1.1, 1.1, 1.1], [0.1, 0.1, 0.1], None),
            _row("xshim", [1.1, 1.1, 1.1], [0.1, 0.9, 0.1], None)]
    assert report._per_exec_samples(rows[1]) == pytest.approx([0.01, 0.01, 0.01])
    assert report.paired_ratios(rows)["xshim/binfmt"]["per_exec_s"] == pytest.approx(1.0)


def test_median_interval_from_order_statistics() -> None:
    assert report.median_ci([1.0] * 5) is None  # too few for a 95 % interval
    values = [float(v) for v in range(1, 31)]  # n = 30: the 9th and 22nd smallest
    assert report.median_ci(values) == (9.0, 22.0)
    assert report.median_ci(list(reversed(values))) == (9.0, 22.0)
    lo, hi = report.median_ci([float(v) for v in range(100)]) or (0, 0)
    assert lo < statistics.median(range(100)) < hi


def test_table_and_json_give_the_interval() -> None:
    full_b = [1.1 + 0.01 * i for i in range(10)]
    rows = [_row("binfmt", full_b, [0.1] * 10, None),
            _row("xshim", [f * 1.02 for f in full_b], [0.1] * 10, None)]
    args = argparse.Namespace(execs=100, reps=10, stage_reps=1, stat="median", quick=True)
    meta = {"guest": "g", "qemu": "q", "kernel": "k", "cpus": 2, "loadavg_at_start": [0.0]}
    text = report.table(rows, meta, args)
    assert "95 % confidence interval of the median: per exec 1.02–1.02×" in text
    ci = report.as_json(rows, meta, args)["paired_ratio_ci95"]["xshim/binfmt"]["per_exec_s"]
    assert ci[0] <= 1.022 <= ci[1] + 0.001
