"""The vm layer's errors: one hierarchy, raised where each condition is detected."""

from __future__ import annotations


class VmError(Exception):
    """Something about a pod's micro-VM failed."""


class GuestKernelMissing(VmError):
    """No usable guest kernel (vmlinuz with modules) is installed."""


class GuestImageError(VmError):
    """The vmlinux or the initramfs could not be made."""


class QemuMissing(VmError):
    """QEMU (or busybox-static, which the guest needs) is not installed."""


class VmBootFailed(VmError):
    """QEMU did not start, or the guest's agent did not answer in time."""


class AgentError(VmError):
    """The agent refused a request ({"ok": false}); `kind` as the shim protocol's."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class AgentGone(VmError):
    """The channel to the agent ended (the VM stopped, or QEMU disconnected)."""
