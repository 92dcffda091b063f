"""A root filesystem's dpkg database, read-only: which packages are installed at which version,
and which package a file belongs to (/var/lib/dpkg/status and info/*.list).

The parsing is pure; ``Database.read`` is the one edge that touches the tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

STATUS = "var/lib/dpkg/status"
INFO = "var/lib/dpkg/info"

# Debian architecture -> the GNU multiarch triplet of its library and cross-tool paths.
TRIPLETS = {
    "amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf",
    "armel": "arm-linux-gnueabi", "i386": "i386-linux-gnu", "ppc64el": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu", "riscv64": "riscv64-linux-gnu", "mips64el":
    "mips64el-linux-gnuabi64",
}


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    architecture: str  # "all" for architecture-independent packages


def parse_status(text: str) -> dict[str, Installed]:
    """Installed packages (status "install ok installed"), by name; a package installed for
    several architectures is also listed as ``name:arch``."""
    out: dict[str, Installed] = {}
    for chunk in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in chunk.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status", "").split()[-1:] != ["installed"] or "Package" not in fields:
            continue
        pkg = Installed(fields["Package"], fields.get("Version", ""),
                        fields.get("Architecture", ""))
        out[f"{pkg.name}:{pkg.architecture}"] = pkg
        out.setdefault(pkg.name, pkg)
    return out


@dataclass
class Database:
    root: Path
    packages: dict[str, Installed]
    owners: dict[str, str] = field(default_factory=dict)  # path as listed -> "name:arch" key
    _by_name: dict[str, list[str]] | None = field(default=None, init=False, repr=False)

    @classmethod
    def read(cls, root: Path) -> Database:
        """The tree's database; an empty one when the tree has none."""
        try:
            text = (root / STATUS).read_text(errors="replace")
        except OSError:
            return cls(root, {})
        db = cls(root, parse_status(text))
        info = root / INFO
        try:
            names = sorted(os.listdir(info))
        except OSError:
            names = []
        for name in names:
            if not name.endswith(".list"):
                continue
            stem = name[:-5]
            key = stem if ":" in stem else None
            pkg = db.packages.get(stem)
            if pkg is None:
                continue
            key = f"{pkg.name}:{pkg.architecture}"
            try:
                lines = (info / name).read_text(errors="surrogateescape").splitlines()
            except OSError:
                continue
            for line in lines:
                if line and line != "/.":
                    db.owners.setdefault(line, key)
        return db

    def owner(self, path: str) -> Installed | None:
        """The package that lists ``path`` (as dpkg recorded it, e.g. /bin/gzip on a
        merged-/usr tree)."""
        key = self.owners.get(path)
        return self.packages.get(key) if key is not None else None

    def files_named(self, name: str) -> list[str]:
        """Every listed path whose last component is ``name``."""
        if self._by_name is None:  # one pass over the listed files, not one per name asked
            self._by_name = {}
            for p in self.owners:
                self._by_name.setdefault(p.rpartition("/")[2], []).append(p)
        return sorted(self._by_name.get(name, ()))
