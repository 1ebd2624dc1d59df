"""The OCI runtime features document (`corral-runtime features`): what this runtime supports."""

from __future__ import annotations

from corral.runtime.capabilities import CAPABILITY_NAMES
from corral.runtime.mounts import FLAG_OPTIONS, PROPAGATION_OPTIONS
from corral.spec.runtime import HOOK_KINDS, NAMESPACE_TYPES


def features() -> dict:
    options = sorted({*FLAG_OPTIONS, *PROPAGATION_OPTIONS, "tmpcopyup"})
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": list(HOOK_KINDS),
        "mountOptions": options,
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": list(CAPABILITY_NAMES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": True},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {
            "io.github.corral.runtime.version": "0.1.0",
        },
    }
