"""The OCI runtime features document (`corral-runtime features`): what this runtime supports."""

from __future__ import annotations

from corral.runtime.capabilities import CAPABILITY_NAMES
from corral.runtime.mounts import FLAG_OPTIONS, PROPAGATION_OPTIONS, RECURSIVE_OPTIONS
from corral.spec.runtime import HOOK_KINDS, NAMESPACE_TYPES


def features() -> dict:
    options = sorted({*FLAG_OPTIONS, *PROPAGATION_OPTIONS, *RECURSIVE_OPTIONS, "tmpcopyup"})
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
            "seccomp": {
                "enabled": True,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                            "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32",
                          "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                               "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                   "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {
            "io.github.corral.runtime.version": "0.1.0",
        },
    }
