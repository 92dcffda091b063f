"""A container platform as Docker and the OCI image index spell it, tied to its table row.

``Platform`` is what a build targets: the ``os``, ``architecture`` and ``variant`` the builder
and the image index see, and the ``Arch`` row (shim/arch.py) that says which emulator runs it.
``Platform.parse`` is the one place platform text becomes one. The command line parses its
options with it once (builder/values.py); the Dockerfile rewriter parses the platforms a
Dockerfile names itself (``FROM --platform=...``) with it too, as they come from the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..shim import arch as archmod


@dataclass(frozen=True)
class Platform:
    """One target platform; ``name`` is its canonical spelling (``linux/arm/v7``)."""

    arch: archmod.Arch
    os: str
    architecture: str
    variant: str

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @property
    def index_variant(self) -> str:
        """The variant in the index entry: buildx writes v8 for arm64."""
        if self.architecture == "arm64" and not self.variant:
            return "v8"
        return self.variant

    def build_args(self, prefix: str = "TARGET") -> dict[str, str]:
        """TARGET* (or BUILD*) as BuildKit defines them."""
        return {f"{prefix}PLATFORM": self.name, f"{prefix}OS": self.os,
                f"{prefix}ARCH": self.architecture, f"{prefix}VARIANT": self.variant}

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm/v7``, ``arm64``, ``aarch64``... -> Platform.

        A bare name means its row's platform (``arm`` is ``linux/arm/v7``); ``arm64/v8`` is
        ``arm64``, as in the index (``index_variant`` gives v8 back); a variant the table lacks
        keeps its os/arch row. Raises ``arch.UnknownPlatformError`` for anything else.
        """
        try:
            row = archmod.from_platform(text)
        except archmod.UnknownPlatformError:
            os_, arch_, variant = split_platform(text)
            if not variant:
                raise
            try:
                row = archmod.from_platform(f"{os_}/{arch_}")
            except archmod.UnknownPlatformError:
                raise archmod.UnknownPlatformError(text) from None
        os_, architecture, variant = split_platform(text)
        if "/" not in text.strip():
            os_, architecture, variant = split_platform(row.platform)
        if architecture == "arm" and not variant:
            variant = "v7"
        if architecture == "arm64" and variant == "v8":
            variant = ""  # the same platform; the index entry gets v8 back (index_variant)
        return cls(row, os_, architecture, variant)

    @classmethod
    def of(cls, arch: archmod.Arch) -> Platform:
        """The row's own platform (its canonical platform string)."""
        return cls(arch, *split_platform(arch.platform))


def split_platform(text: str) -> tuple[str, str, str]:
    """``os/arch[/variant]`` -> its three parts, lower-cased; a bare architecture means linux."""
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        return "linux", parts[0], ""
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""
