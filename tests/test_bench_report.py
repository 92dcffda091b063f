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

