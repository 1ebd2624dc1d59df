"""The container config that a CRI runtime (containerd) sends, for the benches' `--profile cri`.

Two things set a CRI container apart from `runc spec`'s default bundle:

- the 14 capabilities that containerd gives every container (its
  `oci.defaultUnixCaps`), in the bounding, effective and permitted sets (none
  ambient, none inheritable), and
- the runtime's default seccomp profile.  Debian's containers-common (pulled in
  by podman) ships it as /usr/share/containers/seccomp.json, a docker-style
  profile: conditional entries (`includes` / `excludes` on capabilities,
  architectures, kernel versions) and an `archMap`.  `oci_seccomp()` turns it
  into an OCI `linux.seccomp` the way containerd and podman do: only the
  entries whose `includes` are all met and none of whose `excludes` is, the
  host's architecture with its sub-architectures, and nothing but OCI fields.

    from cri_profile import apply_cri_profile
    apply_cri_profile(config)          # edits an OCI config.json dict in place
"""

from __future__ import annotations

import json
import platform
import re
from typing import Any

SECCOMP_JSON = "/usr/share/containers/seccomp.json"

# containerd's oci.defaultUnixCaps (the same set as Docker's and CRI-O's defaults).
CRI_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

# uname -m → (libseccomp's name for it, the names a docker-style profile uses in `arches`).
_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", {"amd64", "x86_64"}),
    "aarch64": ("SCMP_ARCH_AARCH64", {"arm64", "aarch64"}),
    "ppc64le": ("SCMP_ARCH_PPC64LE", {"ppc64le"}),
    "s390x": ("SCMP_ARCH_S390X", {"s390x"}),
}
# The OCI fields of a syscall rule; `includes`, `excludes`, `comment`, `errno` are dropped.
_RULE_FIELDS = ("names", "action", "errnoRet", "args")


class ProfileError(Exception):
    """The seccomp profile is missing or not one this module understands."""


def load_docker_profile(path: str = SECCOMP_JSON) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f)
    except FileNotFoundError:
        raise ProfileError(
            f"{path} is missing: the cri profile needs the default seccomp profile of "
            "containers-common (install podman/containers-common: apt-get install podman)"
        ) from None
    except (OSError, ValueError) as e:
        raise ProfileError(f"{path}: {e}") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise ProfileError(f"{path}: not a seccomp profile (no defaultAction)")
    return profile


def oci_seccomp(profile: dict[str, Any], caps: list[str], machine: str | None = None,
                kernel: str | None = None) -> dict[str, Any]:
    """The OCI linux.seccomp for a docker-style profile, a capability set, an arch and a kernel."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise ProfileError(f"architecture {machine!r} is not known to cri_profile.py")
    native, arch_names = _ARCHES[machine]
    kernel_version = _version(kernel or platform.release())

    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    architectures = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            architectures = [native, *entry.get("subArchitectures", [])]
    if architectures:
        out["architectures"] = architectures
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])

    syscalls = []
    for entry in profile.get("syscalls") or []:
        if not _applies(entry, set(caps), arch_names, kernel_version):
            continue
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        rule = {key: entry[key] for key in _RULE_FIELDS if entry.get(key) not in (None, [])}
        rule["names"] = list(names)
        syscalls.append(rule)
    out["syscalls"] = syscalls
    return out


def _applies(entry: dict[str, Any], caps: set[str], arches: set[str],
             kernel: tuple[int, ...]) -> bool:
    """containerd's rule: every include is met and no exclude is."""
    includes = entry.get("includes") or {}
    excludes = entry.get("excludes") or {}
    if includes.get("arches") and not arches & set(includes["arches"]):
        return False
    if includes.get("caps") and not set(includes["caps"]) <= caps:
        return False
    if includes.get("minKernel") and kernel < _version(includes["minKernel"]):
        return False
    if excludes.get("arches") and arches & set(excludes["arches"]):
        return False
    if excludes.get("caps") and caps & set(excludes["caps"]):
        return False
    return not (excludes.get("minKernel") and kernel >= _version(excludes["minKernel"]))


def _version(release: str) -> tuple[int, ...]:
    """'6.1.0-13-amd64' → (6, 1); only major and minor count, as in containerd."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        raise ProfileError(f"cannot read a kernel version from {release!r}")
    return int(match[1]), int(match[2])


def apply_cri_profile(config: dict[str, Any], seccomp_json: str = SECCOMP_JSON) -> None:
    """Give an OCI config containerd's default capabilities and seccomp profile (in place)."""
    caps = list(CRI_CAPABILITIES)
    config["process"]["capabilities"] = {
        "bounding": caps, "effective": list(caps), "permitted": list(caps)}
    config["linux"]["seccomp"] = oci_seccomp(load_docker_profile(seccomp_json), caps)
