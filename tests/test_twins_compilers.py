"""The compiler twins: Debian's cross cc1 and cc1plus of the guest's exact gcc version, told
the guest compiler's header directories, make what the guest's compilers make.

Units for the candidates, the limits and the environment of a compiler twin first; then, on a
riscv64 trixie tree, the guest compilers' output compared byte for byte with their twins'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import foreign
from xshim.builder import dpkgdb
from xshim.shim import twins as shimtwins

XSHIM = shutil.which("xshim") or "xshim"

# -- units ---------------------------------------------------------------------------------------


def _compiler_twin() -> shimtwins.Twin:
    from xshim.builder import twins

    limits = twins.compiler_search("cc1plus", "aarch64-linux-gnu", "14")
    return shimtwins.Twin("/usr/libexec/gcc/aarch64-linux-gnu/14/cc1plus", "exe/cc1plus", "0", 1,
                          "g++-14", "14.2.0-19", "g++-14-aarch64-linux-gnu", "14.2.0-19cross1",
                          **limits)


def test_the_cxx_twin_is_told_the_guest_headers_after_the_callers_own() -> None:
    t = _compiler_twin()
    ours = (b"/usr/include/c++/14:/usr/include/aarch64-linux-gnu/c++/14:"
            b"/usr/include/c++/14/backward")
    assert shimtwins.environment(t, [b"PATH=/bin"]) == [(-1, b"CPLUS_INCLUDE_PATH=" + ours)]
    # After the caller's directories, as GCC searches the variable's before its own; an empty
    # value is no directory (an empty element would be the current one).
    env = [b"A=1", b"CPLUS_INCLUDE_PATH=/opt/inc", b"CPLUS_INCLUDE_PATH=/later"]
    assert shimtwins.environment(t, env) == [(1, b"CPLUS_INCLUDE_PATH=/opt/inc:" + ours)]
    assert shimtwins.environment(t, [b"CPLUS_INCLUDE_PATH="]) == [
        (0, b"CPLUS_INCLUDE_PATH=" + ours)]
    assert t.args == ("-iprefix", "/usr/lib/gcc/aarch64-linux-gnu/14/")
    assert "/usr/local/include" in t.empty_dirs
    assert shimtwins.Twin.from_json(json.loads(json.dumps(t.to_json()))) == t


@pytest.mark.parametrize(("argv", "env", "why"), [
    ([b"cc1plus", b"-quiet", b"-imultiarch", b"aarch64-linux-gnu", b"k.cpp"], [], ""),
    ([b"cc1plus", b"-nostdinc++", b"k.cpp"], [], "its caller passes -nostdinc++"),
    ([b"cc1plus", b"-nostdinc", b"k.cpp"], [], "its caller passes -nostdinc"),
    ([b"cc1plus", b"-isysroot/opt/sys", b"k.cpp"], [], "its caller passes -isysroot/opt/sys"),
    ([b"cc1plus", b"-iprefix", b"/x/", b"k.cpp"], [], "its caller passes -iprefix"),
    ([b"cc1plus", b"-stdlib=libc++", b"k.cpp"], [], "its caller passes -stdlib=libc++"),
    ([b"cc1plus", b"-imultiarch", b"foo", b"k.cpp"], [], "with another value than aarch64"),
    ([b"cc1plus", b"k.cpp", b"-imultiarch"], [], "with another value than aarch64"),
    ([b"cc1plus", b"h.hpp", b"-o", b"/tmp/x.s", b"--output-pch", b"h.hpp.gch"], [],
     "its caller passes --output-pch"),
    ([b"cc1plus", b"k.cpp"], [b"GCC_EXEC_PREFIX=/usr/bin/../lib/gcc/"],
     "the environment sets GCC_EXEC_PREFIX"),
    # A file named like an option is only an argument where it starts with '-'.
    ([b"cc1plus", b"x-nostdinc.cpp"], [b"X_GCC_EXEC_PREFIX=1"], ""),
])
def test_the_compiler_twin_is_not_used_where_the_caller_moves_the_standard_directories(
        argv: list[bytes], env: list[bytes], why: str) -> None:
    got = shimtwins.refusal(_compiler_twin(), argv, env)
    assert why in got if why else got == ""


def test_candidates_map_cc1_to_the_cross_compiler(tmp_path: Path) -> None:
    from xshim.builder import twins
    from xshim.shim.arch import from_platform, host_arch

    cc1 = "/usr/lib/gcc/aarch64-linux-gnu/12/cc1"
    for rel in (cc1, "/usr/bin/gzip", "/usr/bin/apt"):
        (tmp_path / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel.lstrip("/")).write_bytes(b"x")
    db = dpkgdb.Database(tmp_path, {
        "cpp-12:arm64": dpkgdb.Installed("cpp-12", "12.2.0-14", "arm64"),
        "gzip:arm64": dpkgdb.Installed("gzip", "1.12-1", "arm64"),
        "apt:arm64": dpkgdb.Installed("apt", "2.6.1", "arm64"),
    }, {cc1: "cpp-12:arm64", "/usr/bin/gzip": "gzip:arm64", "/usr/bin/apt": "apt:arm64"})
    got, skipped = twins.candidates(db, from_platform("linux/arm64"), host_arch())
    assert not skipped
    by_guest = {c.guest: c for c in got}
    assert set(by_guest) == {cc1, "/usr/bin/gzip"}  # never apt
    c = by_guest[cc1]
    assert (c.host_package, c.host_path, c.built_using) == (
        "cpp-12-aarch64-linux-gnu", "/usr/lib/gcc-cross/aarch64-linux-gnu/12/cc1",
        "gcc-12 (= 12.2.0-14)")
    assert by_guest["/usr/bin/gzip"].host_package == "gzip"


def test_candidates_map_cc1plus_to_the_cross_compiler_with_the_guest_cxx_headers(
        tmp_path: Path) -> None:
    from xshim.builder import twins
    from xshim.shim.arch import from_platform, host_arch

    cc1plus = "/usr/libexec/gcc/aarch64-linux-gnu/14/cc1plus"
    (tmp_path / cc1plus.lstrip("/")).parent.mkdir(parents=True)
    (tmp_path / cc1plus.lstrip("/")).write_bytes(b"x")
    db = dpkgdb.Database(tmp_path, {
        "g++-14-aarch64-linux-gnu:arm64": dpkgdb.Installed("g++-14-aarch64-linux-gnu",
                                                           "14.2.0-19", "arm64"),
    }, {cc1plus: "g++-14-aarch64-linux-gnu:arm64"})
    (c,), skipped = twins.candidates(db, from_platform("linux/arm64"), host_arch())
    assert not skipped
    assert (c.host_package, c.host_path, c.built_using) == (
        "g++-14-aarch64-linux-gnu", "/usr/libexec/gcc-cross/aarch64-linux-gnu/14/cc1plus",
        "gcc-14 (= 14.2.0-19)")
    assert c.env == ("CPLUS_INCLUDE_PATH=/usr/include/c++/14:"
                     "/usr/include/aarch64-linux-gnu/c++/14:/usr/include/c++/14/backward",)
    # Only a cc1plus that has Debian's C++ directories compiled in.
    assert not twins._debian_cxx_dirs(tmp_path / cc1plus.lstrip("/"), cc1plus)
    top = "/usr/lib/gcc/aarch64-linux-gnu/14/../../../../include"
    (tmp_path / cc1plus.lstrip("/")).write_bytes(
        f"x\0{top}/c++/14\0{top}/aarch64-linux-gnu/c++/14\0{top}/c++/14/backward\0".encode())
    assert twins._debian_cxx_dirs(tmp_path / cc1plus.lstrip("/"), cc1plus)


# -- integration ---------------------------------------------------------------------------------


def _run(tree: Path, cmd: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSHIM, "run", "--rootfs", str(tree), *extra, "--", "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=1200)


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CC1_DEBS = ("cpp-14-riscv64-linux-gnu", "libisl23", "libmpc3", "libmpfr6", "libgcc-14-dev")

# Headers from the compiler's own directory only (libgcc-14-dev), so no libc6-dev is needed.
C_SOURCE = r"""
#include <stdarg.h>
#include <stddef.h>
#include <stdint-gcc.h>
struct rec { uint32_t a; double b; char name[12]; };
static uint32_t crc(const unsigned char *p, size_t n) {
    uint32_t c = ~0u;
    while (n--) { c ^= *p++; for (int k = 0; k < 8; k++) c = c >> 1 ^ (0xEDB88320u & -(c & 1)); }
    return ~c;
}
double sum(int n, ...) {
    va_list ap; double s = 0;
    va_start(ap, n);
    for (int i = 0; i < n; i++) s += va_arg(ap, double);
    va_end(ap);
    return s * offsetof(struct rec, name);
}
uint32_t check(const struct rec *r, size_t n) {
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++)
        c ^= crc((const unsigned char *)&r[i], sizeof r[i]) + (uint32_t)r[i].b;
    return c;
}
"""


def _riscv64_tree_with(tmp_path: Path, debs: tuple[str, ...], sources: dict[str, str]) -> Path:
    """A copy of the riscv64 trixie tree with these trixie packages installed by dpkg -i
    (emulated) and these files in /tmp."""
    from support import trees

    archive = foreign.archive_or_skip("trixie")
    tree = foreign.copy_tree(trees.finished("riscv64"), tmp_path / "rootfs")
    (tree / "tmp/debs").mkdir()
    for name in debs:
        _info, deb = archive.fetch_package(name, "riscv64")
        shutil.copy(deb, tree / "tmp/debs" / f"{name}.deb")
    for name, text in sources.items():
        (tree / "tmp" / name).write_text(text)
    r = _run(tree, "dpkg --force-depends -i /tmp/debs/*.deb")
    assert r.returncode == 0, r.stdout + r.stderr
    return tree


@pytest.mark.integration
@pytest.mark.root(reason="xshim run needs root")
@pytest.mark.slow
def test_cc1_output_is_identical_with_its_cross_twin(tmp_path: Path) -> None:
    """riscv64 trixie: the guest's cc1 and Debian's cross cc1 built from the same gcc version
    write the same assembly, debug information included, for the same input and options."""
    tree = _riscv64_tree_with(tmp_path, CC1_DEBS, {"k.c": C_SOURCE})
    cc1 = "/usr/libexec/gcc/riscv64-linux-gnu/14/cc1"
    compile_ = (f"cd /tmp && {cc1} -quiet -imultiarch riscv64-linux-gnu k.c -march=rv64gc "
                "-mabi=lp64d -g -O2 -o k-{}.s")
    plain = _run(tree, compile_.format("plain"))
    assert plain.returncode == 0, plain.stderr
    trace = tmp_path / "cc1.jsonl"
    fast = _run(tree, compile_.format("twin"), "--accelerate", "--trace", str(trace))
    assert fast.returncode == 0, fast.stderr
    recs = _records(trace)
    (twin,) = [r for r in recs if r.get("decision") == "twin"]
    assert twin["path"] == cc1
    assert str(twin["host_package"]).startswith("cpp-14-riscv64-linux-gnu=14.2.0-")
    out = (tree / "tmp/k-plain.s").read_bytes()
    assert b".file" in out and b"crc" in out
    assert out == (tree / "tmp/k-twin.s").read_bytes()


CC1PLUS_DEBS = ("g++-14-riscv64-linux-gnu", "libisl23", "libmpc3", "libmpfr6", "libgcc-14-dev",
                "libstdc++-14-dev", "libc6-dev", "linux-libc-dev")

CXX_SOURCES = {
    "t.cpp": r"""
#include <algorithm>
#include <iostream>
#include <map>
#include <string>
#include <vector>
template <typename T> struct Acc { T total{}; void add(const T &v) { total += v; } };
template <typename K, typename V> V sum_values(const std::map<K, V> &m) {
    Acc<V> a;
    for (const auto &kv : m) a.add(kv.second);
    return a.total;
}
int main(int argc, char **argv) {
    std::vector<std::string> words(argv, argv + argc);
    std::sort(words.begin(), words.end());
    std::map<std::string, int> lens;
    for (const auto &w : words) lens[w] = static_cast<int>(w.size());
    std::cout << sum_values(lens) << ' ' << (words.empty() ? "" : words[0]) << '\n';
}
""",
    # <cstdlib> and <cmath> reach the C library's stdlib.h and math.h through #include_next.
    "n.cpp": r"""
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
double f(double x) { return std::sqrt(std::fabs(x)) + std::pow(x, 3) + std::abs(-INT_MAX / 2); }
int main() {
    auto p = std::make_unique<char[]>(32);
    std::snprintf(p.get(), 32, "%.3f", f(std::strtod("2.5", nullptr)));
    return std::atoi(p.get());
}
""",
}


@pytest.mark.integration
@pytest.mark.root(reason="xshim run needs root")
@pytest.mark.slow
def test_cc1plus_output_is_identical_with_its_cross_twin(tmp_path: Path) -> None:
    """riscv64 trixie: the cross cc1plus, told the guest's C++ header directories, searches
    exactly the guest cc1plus's directories in its order: the preprocessed output (every line
    marker and its flags) and the assembly, debug information included, are the same. With a
    header in /usr/local/include, which the cross compiler does not search, the guest's own
    compiler runs, and the trace says why."""
    tree = _riscv64_tree_with(tmp_path, CC1PLUS_DEBS, CXX_SOURCES)
    cc1plus = "/usr/libexec/gcc/riscv64-linux-gnu/14/cc1plus"
    # As g++ runs it.
    head = f"{cc1plus} -quiet -imultiarch riscv64-linux-gnu -D_GNU_SOURCE"
    tail = "-march=rv64gc -mabi=lp64d"
    compile_ = " && ".join(
        f"{head} {n} -dumpbase {n} -dumpbase-ext .cpp {tail} -g -O2 -o {n}-{{0}}.s && "
        f"{head} -E {n} {tail} -o {n}-{{0}}.ii" for n in CXX_SOURCES)
    plain = _run(tree, "cd /tmp && " + compile_.format("plain"))
    assert plain.returncode == 0, plain.stderr
    trace = tmp_path / "cc1plus.jsonl"
    fast = _run(tree, "cd /tmp && " + compile_.format("twin"), "--accelerate", "--trace",
                str(trace))
    assert fast.returncode == 0, fast.stderr
    twins = [r for r in _records(trace) if r.get("decision") == "twin"]
    assert [r["path"] for r in twins] == [cc1plus] * 4
    assert str(twins[0]["host_package"]).startswith("g++-14-riscv64-linux-gnu=14.2.0-")
    for n in CXX_SOURCES:
        pre = (tree / f"tmp/{n}-plain.ii").read_bytes()
        assert b'"/usr/include/c++/14/vector" 1 3\n' in pre or n != "t.cpp"
        assert b'"/usr/include/stdlib.h" 1 3 4\n' in pre or n != "n.cpp"
        assert pre == (tree / f"tmp/{n}-twin.ii").read_bytes(), n
        asm = (tree / f"tmp/{n}-plain.s").read_bytes()
        assert b".file" in asm and asm == (tree / f"tmp/{n}-twin.s").read_bytes(), n
    (tree / "usr/local/include").mkdir(parents=True, exist_ok=True)
    (tree / "usr/local/include/probe.h").write_text("#define PROBE 1\n")
    (tree / "tmp/p.cpp").write_text("#include <probe.h>\nint p = PROBE;\n")
    trace = tmp_path / "probe.jsonl"
    r = _run(tree, f"cd /tmp && {head} -E p.cpp {tail} -o p.ii", "--accelerate", "--trace",
             str(trace))
    assert r.returncode == 0, r.stderr
    (rec,) = [r for r in _records(trace) if r.get("path") == cc1plus]
    assert rec["decision"] == "emulate"
    assert str(rec["twin_skipped"]).startswith("/usr/local/include is not empty")
