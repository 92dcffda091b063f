"""Where the Debian archive is: ``--mirror``, ``$XSHIM_MIRROR`` or this machine's apt sources
(deb822 ``.sources`` and one-line ``.list`` files), and the host's suite (``/etc/os-release``).

Pure parsers over text, and one reader for each file; the mirror is never built in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
_URL_SCHEMES = ("http://", "https://", "file://")


@dataclass(frozen=True)
class AptSource:
    """One apt source: a URI, a suite and its components (only ``deb`` types are kept)."""

    uri: str
    suite: str
    components: tuple[str, ...]


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Split deb822 text into field dicts; continuation lines are joined with newlines."""
    fields: dict[str, str] = {}
    key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, None
            continue
        if raw[0] in " \t" and key is not None:
            fields[key] += "\n" + raw.strip()
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        fields[key] = value.strip()


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse a ``*.sources`` file (deb822 format) into its ``deb`` sources."""
    out: list[AptSource] = []
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").strip().lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        comps = tuple(st.get("components", "").split())
        for uri in st.get("uris", "").split():
            for suite in st.get("suites", "").split():
                out.append(AptSource(uri.rstrip("/"), suite, comps))
    return out


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse one-line ``sources.list`` text: ``deb [opts] URI SUITE COMPONENT...``."""
    out: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            rest = rest[end + 1 :].strip()
        words = rest.split()
        if len(words) >= 2:
            out.append(AptSource(words[0].rstrip("/"), words[1], tuple(words[2:])))
    return out


def _is_side_suite(suite: str) -> bool:
    return any(suite.endswith(s) for s in ("-security", "/updates", "-updates", "-backports",
                                            "-proposed-updates"))


def choose_main(sources: Iterable[AptSource]) -> AptSource | None:
    """The main archive among apt sources: ``main`` component, a release suite, no security host.

    Security archives carry only the security suites, so a URI that serves a plain release suite
    is the main archive. Among those, an entry for the bare suite wins over -updates/-backports.
    """
    usable = [s for s in sources if s.uri.startswith(_URL_SCHEMES) and "main" in s.components]
    usable = [s for s in usable if not s.suite.endswith("-security") and
              not s.suite.endswith("/updates")]
    for s in usable:
        if not _is_side_suite(s.suite):
            return s
    if usable:
        base = usable[0].suite.split("-", 1)[0]
        return AptSource(usable[0].uri, base, usable[0].components)
    return None


def read_apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every ``deb`` source in this machine's apt configuration, in apt's reading order."""
    out: list[AptSource] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        out += parse_one_line_sources(main_list.read_text(errors="replace"))
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".sources":
                out += parse_deb822_sources(f.read_text(errors="replace"))
            elif f.suffix == ".list":
                out += parse_one_line_sources(f.read_text(errors="replace"))
    return out


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() and not k.startswith("#"):
            out[k.strip()] = v.strip().strip("'\"")
    return out


def find_mirror(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    apt_dir: Path = APT_DIR,
) -> str:
    """The mirror URL: ``explicit``, else ``$XSHIM_MIRROR``, else apt's main archive."""
    env = os.environ if env is None else env
    for value, origin in ((explicit, "--mirror"), (env.get("XSHIM_MIRROR"), "XSHIM_MIRROR")):
        if value:
            if not value.startswith(_URL_SCHEMES):
                raise InputError(
                    f"{origin}: {value!r} is not an http://, https:// or file:// URL",
                    "give the mirror's base URL, the directory that holds dists/ and pool/",
                )
            return value.rstrip("/")
    main = choose_main(read_apt_sources(apt_dir))
    if main is None:
        raise InputError(
            f"no Debian mirror found in {apt_dir}/sources.list or {apt_dir}/sources.list.d/",
            "pass --mirror URL or set XSHIM_MIRROR to a Debian mirror's base URL",
        )
    return main.uri


def host_suite(apt_dir: Path = APT_DIR, os_release: Path = OS_RELEASE) -> str:
    """The host's Debian suite: from apt's main source, else ``VERSION_CODENAME``."""
    main = choose_main(read_apt_sources(apt_dir))
    if main is not None:
        return main.suite
    if os_release.is_file():
        code = parse_os_release(os_release.read_text(errors="replace")).get("VERSION_CODENAME")
        if code:
            return code
    raise InputError(
        "can't tell this host's Debian suite (no apt source, no VERSION_CODENAME in os-release)",
        "pass --suite, e.g. --suite bookworm",
    )
