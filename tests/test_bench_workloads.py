"""The build-like workloads of the benchmark: their options, parsers and report (pure, no runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import contenders
import debsrc
import measure
import report
import report_work
import run
import workloads
from run import Row
from xshim.builder import debian

SOURCES = """\
Package: zlib
Binary: zlib1g, zlib1g-dev
Version: 1:1.2.13.dfsg-1
Directory: pool/main/z/zlib
Checksums-Sha256:
 3fa1e6b2fc525062aa88207dda52fed8e045373c809d362fe8a2bfbf7cf515a8 2399 zlib_1.2.13.dfsg-1.dsc
 71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1 1239825 zlib_1.2.13.orig.tar.bz2
 f66cf3d4f2d7defcd4d1fd1fb0a11ee39f1e01b42ec7d059c9dc5c1695133c44 15700 zlib_1.debian.tar.xz

Package: zlibc
Version: 0.9k-4.3
Directory: pool/main/z/zlibc
Checksums-Sha256:
 0000000000000000000000000000000000000000000000000000000000000000 10 zlibc_0.9k-4.3.dsc
"""


def test_sources_stanza_gives_the_files_and_their_digests() -> None:
    src = debsrc.parse_sources(SOURCES, "zlib")
    assert (src.name, src.version, src.directory) == ("zlib", "1:1.2.13.dfsg-1",
                                                      "pool/main/z/zlib")
    orig = src.file(".orig.tar.bz2")
    assert orig.size == 1239825 and orig.sha256.startswith("71feb794")
    assert debsrc.parse_sources(SOURCES, "zlibc").version == "0.9k-4.3"  # not a prefix match
    with pytest.raises(debian.ArchiveError, match="not in the Sources index"):
        debsrc.parse_sources(SOURCES, "zli")
    with pytest.raises(debian.ArchiveError, match="0 files ending"):
        src.file(".orig.tar.gz")


def test_deb_file_names_as_apt_stores_them() -> None:
    assert workloads.deb_name("libc6_2.36-9+deb12u9_arm64.deb") == (
        "libc6", "2.36-9+deb12u9", "arm64")
    assert workloads.deb_name("zlib1g_1%3a1.2.13.dfsg-1_arm64.deb") == (
        "zlib1g", "1:1.2.13.dfsg-1", "arm64")
    with pytest.raises(ValueError, match="not a name_version_arch"):
        workloads.deb_name("lock")


def test_workload_list_keeps_the_run_order_and_names_unknown_ones() -> None:
    assert workloads.parse_list("zlib, apt") == ["apt", "zlib"]
    assert workloads.parse_list("compileall,loop") == ["loop", "compileall"]
    with pytest.raises(ValueError, match=r"unknown workload.*rpm"):
        workloads.parse_list("apt,rpm")
    with pytest.raises(ValueError, match=r"\(none\)"):
        workloads.parse_list(" , ")


def test_options_select_workloads_and_rounds() -> None:
    args = run.parse_args(["--workloads", "apt,zlib", "--rounds", "2"])
    assert args.workload_names == ["apt", "zlib"] and args.stage_reps == 2 and args.quick
    args = run.parse_args(["--stage-reps", "4"])  # the old name of --rounds
    assert args.stage_reps == 4 and args.workload_names == list(workloads.ALL)
    assert not args.quick
    assert run.parse_args(["--quick"]).workload_names == ["loop"]
    with pytest.raises(SystemExit):
        run.parse_args(["--workloads", "apt,nope"])


def test_twins_contender_only_where_xshim_has_accelerate() -> None:
    assert contenders.accelerate_in_help("usage: xshim run [-h] [--accelerate] --rootfs DIR")
    assert not contenders.accelerate_in_help("usage: xshim run [-h] --rootfs DIR [--trace T]")
    without = contenders.Tools(Path("/usr/bin/qemu-aarch64-static"), ("xshim",), False)
    with_twins = contenders.Tools(Path("/usr/bin/qemu-aarch64-static"), ("xshim",), True)
    twins = contenders.BY_NAME["twins"]
    assert "--accelerate" in (contenders.unavailable_reason(twins, without) or "")
    assert contenders.unavailable_reason(twins, with_twins) is None
    argv = contenders.guest_command(twins, Path("/t"), ["/bin/true"], with_twins)
    assert argv == ["xshim", "run", "--accelerate", "--qemu", "/usr/bin/qemu-aarch64-static",
                    "--rootfs", "/t", "--", "/bin/true"]


def test_package_status_reads_dpkg_database(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: make\nStatus: install ok installed\nVersion: 4.3-4.1\n\n"
                      "Package: gcc\nStatus: deinstall ok config-files\n")
    assert measure.package_status(tmp_path) == {
        "make": "install ok installed", "gcc": "deinstall ok config-files"}
    with pytest.raises(measure.RunFailed, match="python3, gcc, libc6-dev"):
        workloads.WORKLOADS["apt"].check(tmp_path)


def _row(name: str, wall: list[float], cpu: list[float], result: str = "143 pkgs") -> Row:
    return Row(contenders.BY_NAME[name],
               runs={"apt": measure.Runs(seconds=wall, cpu_seconds=cpu, result=result)})


def test_workload_ratios_are_paired_round_by_round() -> None:
    rows = [_row("binfmt", [70.0, 80.0, 100.0], [60.0, 60.0, 60.0]),
            _row("xshim", [77.0, 80.0, 90.0], [63.0, 60.0, 66.0]),
            _row("proot", [140.0, 160.0, 200.0], [120.0, 120.0, 120.0])]
    rs = report_work.ratios(rows, "apt")
    assert list(rs) == ["xshim/binfmt", "xshim/proot"]  # no twins row: no twins ratios
    wall = rs["xshim/binfmt"]["wall"]
    assert wall["median"] == pytest.approx(1.0)
    assert (wall["low"], wall["high"]) == (pytest.approx(0.9), pytest.approx(1.1))
    assert wall["rounds"] == 3 and wall["ci95"] is None  # too few rounds for an interval
    assert rs["xshim/binfmt"]["cpu"]["median"] == pytest.approx(1.05)
    assert rs["xshim/proot"]["wall"]["median"] == pytest.approx(0.5)
    assert report_work.paired([], []) is None


def test_workload_table_and_json() -> None:
    rows = [_row("binfmt", [70.0, 80.0], [60.0, 60.0]),
            _row("xshim", [77.0, 80.0], [63.0, 60.0]),
            Row(contenders.BY_NAME["twins"], unavailable="no --accelerate"),
            Row(contenders.BY_NAME["proot"],
                runs={"apt": measure.Runs(error="exit status 100: E: broken")})]
    args = argparse.Namespace(execs=100, reps=1, stage_reps=2, stat="median", quick=True,
                              workload_names=["apt"])
    meta = {"guest": "g", "qemu": "q", "kernel": "k", "cpus": 2, "loadavg_at_start": [1.5]}
    text = report.table(rows, meta, args)
    assert "exec loop" not in text  # neither the loop nor the second stage was chosen
    assert "note: load average 1.50" in text
    assert "xshim + twins          not available: no --accelerate" in text
    assert "proot -q               FAILED: exit status 100: E: broken" in text
    assert "xshim/binfmt  wall 1.05× (rounds 1.00–1.10), cpu 1.02× (rounds 1.00–1.05)" in text
    data = report.as_json(rows, meta, args)["workloads"]["apt"]
    assert data["contenders"]["xshim"]["samples_s"] == [77.0, 80.0]
    assert data["contenders"]["proot"]["error"].startswith("exit status 100")
    assert data["paired_ratios"]["xshim/binfmt"]["wall"]["median"] == pytest.approx(1.05)
