"""Runtime handlers (Kubernetes RuntimeClasses): what each is, can do, and where it lives.

    native   corral.runtime forked in the shim (the default)
    oci      any runc-compatible binary (runc, crun): `path`
    runsc    gVisor: one sandbox per pod, its containers inside (runsc.py)
    vm       a QEMU micro-VM per pod, its own kernel (vm.py)

This module is light: corrald imports it for the config, Status and the checks
at RunPodSandbox; only the shim imports a handler's module (`make`).
"""

from __future__ import annotations

import glob
import os
import shutil

TYPES = ("native", "oci", "runsc", "vm")
VM_CACHE_DIR = "/var/cache/corral/vm"  # vmlinux, initramfs, guest image, accelerator verdict
VM_TEMPLATE_DIR = "/run/corral/vm-templates"  # tmpfs: VM templates' RAM (vm/template.py)
QEMU = "qemu-system-x86_64"


def vm_memory_mib(options: dict) -> int:
    """A vm handler's guest RAM: `memory` in bytes (the config's "128MiB"), or `memory_mib`."""
    if options.get("memory"):
        return max(1, int(options["memory"]) >> 20)
    return int(options.get("memory_mib") or 128)


class UnknownHandler(LookupError):
    """A CRI runtime_handler that no [runtimes.<name>] table declares."""


class Features:
    """What a handler can do.  The first two are CRI's RuntimeHandlerFeatures."""

    __slots__ = ("recursive_read_only_mounts", "user_namespaces", "tty", "host_namespaces",
                 "pod_init", "host_cgroups", "local_port_forward", "sandbox")

    def __init__(self, *, tty: bool = True, host_namespaces: bool = True, pod_init: bool = True,
                 host_cgroups: bool = True, local_port_forward: bool = True,
                 sandbox: bool = False):
        self.recursive_read_only_mounts = False
        self.user_namespaces = False
        self.tty = tty                          # process.terminal, for containers and exec
        self.host_namespaces = host_namespaces  # NODE network/PID/IPC modes
        self.pod_init = pod_init                # the shim's init for a shared PID namespace
        self.host_cgroups = host_cgroups        # the container's cgroup is on this host, ours
        # a pod's localhost is its network namespace's; else port-forward dials the pod IP
        # (a VM's or gVisor's own stack answers there, not the pod netns's loopback)
        self.local_port_forward = local_port_forward
        self.sandbox = sandbox  # a sandbox of its own per pod, whose end ends the pod

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


FEATURES = {
    "native": Features(),
    "oci": Features(tty=False, host_cgroups=False),
    # gVisor shares the pod's network namespace but no host PID/IPC namespace, and its
    # containers share the sandbox's PID namespace only as gVisor arranges it
    "runsc": Features(tty=False, host_namespaces=False, pod_init=False, host_cgroups=False,
                      local_port_forward=False, sandbox=True),
    "vm": Features(tty=False, host_namespaces=False, pod_init=False, host_cgroups=False,
                   local_port_forward=False, sandbox=True),
}


class HandlerSpec:
    """A `[runtimes.<name>]` table of corrald's config."""

    __slots__ = ("name", "type", "path", "options", "overhead")

    def __init__(self, name: str, type: str, path: str = "", options: dict | None = None,
                 overhead: dict | None = None):
        self.name = name
        self.type = type
        self.path = path
        self.options = options or {}
        # what a RuntimeClass for it should declare as its pod overhead (Kubernetes
        # adds it to the pod's requests): {"memory": bytes, "cpu": cores}
        self.overhead = overhead or {}

    @property
    def features(self) -> Features:
        return FEATURES[self.type]

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "path": self.path,
                "options": self.options, "overhead": self.overhead}

    def unavailable(self) -> str:
        """Why this handler cannot run on this host ("" if it can)."""
        if self.type in ("oci", "runsc"):
            if not os.path.isfile(self.path):
                return f"{self.path} is not installed"
            if not os.access(self.path, os.X_OK):
                return f"{self.path} is not executable"
        if self.type == "vm":
            qemu = self.options.get("qemu") or shutil.which(QEMU)
            if not qemu or not os.access(qemu, os.X_OK):
                return f"{QEMU} is not installed"
            if not (self.options.get("kernel") or glob.glob("/boot/vmlinuz-*")):
                return "no guest kernel (install linux-image-amd64)"
        return ""


def make(spec: dict, services):
    """The shim's handler for `spec` (HandlerSpec.to_dict())."""
    kind = spec.get("type", "native")
    if kind == "native":
        from corral.shim.handlers.native import NativeHandler as handler
    elif kind == "oci":
        from corral.shim.handlers.oci import OciHandler as handler
    elif kind == "runsc":
        from corral.shim.handlers.runsc import RunscHandler as handler
    elif kind == "vm":
        from corral.shim.handlers.vm import VmHandler as handler
    else:
        from corral.shim.protocol import ShimError

        raise ShimError("invalid", f"unknown runtime handler type {kind!r}")
    return handler(spec, services)
