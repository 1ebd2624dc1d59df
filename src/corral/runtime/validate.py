"""Checks of a parsed config against what this runtime and host can do.

Run before anything is created, so a config that cannot work fails with a
clear message and leaves nothing behind.
"""

from __future__ import annotations

import os

from corral.runtime.capabilities import CapabilityError, CapabilitySets
from corral.runtime.errors import ConfigInvalid
from corral.runtime.rlimits import RlimitError, check_rlimits
from corral.spec.runtime import Process, Spec

# sysctls that are namespaced, and the namespace that must be new to set them.
_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}


def check_spec(spec: Spec, rootfs: str) -> None:
    if spec.process is None:
        raise ConfigInvalid("process: required to create a container")
    if not os.path.isdir(rootfs):
        raise ConfigInvalid(f"root.path: rootfs {rootfs} is not a directory")
    check_process(spec.process)
    _refuse_unsupported(spec.source)
    for key in spec.linux.sysctl:
        _check_sysctl(spec, key)
    if spec.linux.namespace("mount") is None:
        _check_without_mount_namespace(spec)


def check_process(process: Process) -> None:
    """What a process (the init's or an exec's) may ask for on this runtime and host."""
    if process.apparmor_profile:
        raise ConfigInvalid("process.apparmorProfile: AppArmor is not supported on this host")
    if process.selinux_label:
        raise ConfigInvalid("process.selinuxLabel: SELinux is not supported on this host")
    try:
        check_rlimits(process.rlimits)
        if process.capabilities is not None:
            CapabilitySets(process.capabilities, last_cap=63)
    except (RlimitError, CapabilityError) as e:
        raise ConfigInvalid(e.strerror if isinstance(e, OSError) else str(e)) from None


# Newer OCI fields this runtime does not apply yet: refused, never silently ignored.
_UNSUPPORTED = (("linux", "personality"), ("linux", "intelRdt"), ("process", "scheduler"),
                ("process", "ioPriority"), ("process", "execCPUAffinity"))


def _refuse_unsupported(source: dict) -> None:
    for section, key in _UNSUPPORTED:
        if (source.get(section) or {}).get(key) is not None:
            raise ConfigInvalid(f"{section}.{key}: not supported by this version of "
                                "corral-runtime")


def _check_without_mount_namespace(spec: Spec) -> None:
    """Sharing the runtime's mount namespace, the container is chrooted and its mounts
    are made under the rootfs in that namespace (as runc does; `delete` unmounts
    them); what would change mounts outside the rootfs is refused."""
    changes_the_host = (
        ("linux.rootfsPropagation", bool(spec.linux.rootfs_propagation)),
        ("root.readonly", spec.root.readonly),
    )
    for field, asked in changes_the_host:
        if asked:
            raise ConfigInvalid(f"{field}: needs a mount namespace of the container's own "
                                "(linux.namespaces has no mount namespace)")


def check_console(process: Process, console_socket: str | None) -> None:
    """A terminal and a console socket come together (as runc insists)."""
    if process.terminal and not console_socket:
        raise ConfigInvalid("process.terminal: a terminal needs --console-socket")
    if console_socket and not process.terminal:
        raise ConfigInvalid("--console-socket given, but process.terminal is false")


def _check_sysctl(spec: Spec, key: str) -> None:
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        needed = "ipc"
    elif key.startswith("net."):
        needed = "network"
    elif key in ("kernel.hostname", "kernel.domainname"):
        needed = "uts"
    else:
        raise ConfigInvalid(f"linux.sysctl.{key}: not namespaced, so a container may not set it")
    namespace = spec.linux.namespace(needed)
    if namespace is None or (namespace.path and _is_own_namespace(namespace.path, needed)):
        raise ConfigInvalid(f"linux.sysctl.{key}: not allowed in the host's {needed} namespace")


def _is_own_namespace(path: str, kind: str) -> bool:
    """Is `path` the namespace the runtime itself is in (the host's, for our purposes)?"""
    name = {"network": "net"}.get(kind, kind)
    try:
        return os.stat(path).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino
    except OSError:
        return False
