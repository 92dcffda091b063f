"""builder/platform.py: platform text becomes a Platform in one place, for every verb alike."""

from __future__ import annotations

import pytest
from xshim.builder.errors import InputError
from xshim.builder.platform import Platform
from xshim.builder.values import parse_arch, parse_platform, parse_platform_list
from xshim.shim import arch as archmod


@pytest.mark.parametrize(("text", "name", "row"), [
    ("linux/arm64", "linux/arm64", "aarch64"),
    ("arm64", "linux/arm64", "aarch64"),
    ("aarch64", "linux/arm64", "aarch64"),
    ("linux/arm64/v8", "linux/arm64", "aarch64"),
    (" Linux/ARM64 ", "linux/arm64", "aarch64"),
    ("linux/arm", "linux/arm/v7", "armhf"),
    ("armhf", "linux/arm/v7", "armhf"),
    ("linux/arm/v6", "linux/arm/v6", "armel"),
    ("linux/amd64/v2", "linux/amd64/v2", "x86_64"),  # a variant the table lacks: its os/arch row
    ("ppc64el", "linux/ppc64le", "ppc64le"),
])
def test_platform_text_becomes_its_row_and_spelling(text: str, name: str, row: str) -> None:
    p = Platform.parse(text)
    assert (p.name, p.arch.name) == (name, row)
    assert parse_platform(text) == p and parse_arch(text) is p.arch


@pytest.mark.parametrize("text", ["linux/vax", "windows/amd64", "vax", "", "linux/vax/v1"])
def test_unknown_platforms(text: str) -> None:
    with pytest.raises(archmod.UnknownPlatformError):
        Platform.parse(text)
    with pytest.raises(InputError) as e:
        parse_platform(text)
    assert e.value.message.startswith("--platform: unknown platform") and e.value.hint


def test_a_row_as_a_platform() -> None:
    assert [Platform.of(a).name for a in archmod.ARCHES] == [a.platform for a in archmod.ARCHES]
    assert Platform.of(archmod.by_name("armhf")).build_args("BUILD") == {
        "BUILDPLATFORM": "linux/arm/v7", "BUILDOS": "linux", "BUILDARCH": "arm",
        "BUILDVARIANT": "v7"}


def test_platform_lists() -> None:
    assert [p.name for p in parse_platform_list("linux/amd64, arm64")] == [
        "linux/amd64", "linux/arm64"]
    assert parse_platform_list("") == ()
    for bad in ("linux/amd64,", ",linux/amd64", "linux/amd64,,linux/arm64"):
        with pytest.raises(InputError, match="has an empty entry"):
            parse_platform_list(bad)
