"""Platforms (os/architecture/variant): parsed, normalized and matched as containerd does.

    linux/amd64            x86_64 is amd64, aarch64 is arm64
    linux/arm64            arm64's only variant, v8, is the same as none
    linux/arm/v7           32-bit arm defaults to v7

Choosing from an index: an exact variant wins; a request without a variant
takes the best variant the index has; a request for arm/v7 also accepts
v6 and v5 images (they run on v7), as containerd's matcher does.
"""

from __future__ import annotations

import os

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386", "i686": "386"}
_ARM_VARIANTS = ("v8", "v7", "v6", "v5")


class PlatformError(ValueError):
    pass


class Platform:
    __slots__ = ("os", "architecture", "variant")

    def __init__(self, os: str, architecture: str, variant: str = ""):
        architecture = _ARCH_ALIASES.get(architecture, architecture)
        if architecture == "arm64" and variant == "v8":
            variant = ""
        if architecture == "arm" and not variant:
            variant = "v7"
        self.os = os
        self.architecture = architecture
        self.variant = variant

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/") if isinstance(text, str) else []
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise PlatformError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(*parts)

    @classmethod
    def host(cls) -> Platform:
        return cls("linux", os.uname().machine)

    @classmethod
    def of(cls, descriptor_platform: dict | None) -> Platform | None:
        """The platform an index entry declares (None when it declares none)."""
        if not isinstance(descriptor_platform, dict):
            return None
        os_name, arch = descriptor_platform.get("os"), descriptor_platform.get("architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            return None
        variant = descriptor_platform.get("variant")
        return cls(os_name, arch, variant if isinstance(variant, str) else "")

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Platform) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def _rank(self, candidate: Platform) -> int | None:
        """How well `candidate` serves this platform: 0 is exact, None is not at all."""
        if candidate.os != self.os or candidate.architecture != self.architecture:
            return None
        if candidate.variant == self.variant:
            return 0
        if self.architecture == "arm" and candidate.variant in _ARM_VARIANTS \
                and self.variant in _ARM_VARIANTS:
            wanted = _ARM_VARIANTS.index(self.variant)
            offered = _ARM_VARIANTS.index(candidate.variant)
            return offered - wanted if offered > wanted else None  # older variants run
        if not self.variant or not candidate.variant:
            return 1
        return None

    def choose(self, manifests: list[dict]) -> dict | None:
        """The index entry that best serves this platform, or None."""
        best, best_rank = None, None
        for entry in manifests:
            candidate = Platform.of(entry.get("platform")) if isinstance(entry, dict) else None
            rank = self._rank(candidate) if candidate else None
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = entry, rank
        return best
