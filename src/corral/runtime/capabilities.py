"""Linux capabilities by name, and applying the five OCI sets to the init process."""

from __future__ import annotations

from corral.runtime import syscalls as k
from corral.runtime.syscalls import Syscalls
from corral.spec.runtime import Capabilities

CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITY_NAMES)}


class CapabilityError(ValueError):
    pass


def capability_mask(names: list[str], where: str, last_cap: int) -> int:
    """A bit mask of the named capabilities; names this kernel lacks are skipped (as runc)."""
    mask = 0
    for name in names:
        number = CAPABILITY_NUMBERS.get(name.upper())
        if number is None:
            raise CapabilityError(f"{where}: unknown capability {name!r}")
        if number <= last_cap:
            mask |= 1 << number
    return mask


class CapabilitySets:
    """The five sets as masks, checked once, before anything is changed."""

    def __init__(self, caps: Capabilities, last_cap: int):
        where = "process.capabilities"
        self.last_cap = last_cap
        self.bounding = capability_mask(caps.bounding, f"{where}.bounding", last_cap)
        self.effective = capability_mask(caps.effective, f"{where}.effective", last_cap)
        self.permitted = capability_mask(caps.permitted, f"{where}.permitted", last_cap)
        self.inheritable = capability_mask(caps.inheritable, f"{where}.inheritable", last_cap)
        self.ambient = capability_mask(caps.ambient, f"{where}.ambient", last_cap)

    def drop_bounding(self, sc: Syscalls) -> None:
        """First step: needs CAP_SETPCAP, so it happens while the init is still root."""
        for number in range(self.last_cap + 1):
            if not self.bounding & (1 << number):
                sc.prctl(k.PR_CAPBSET_DROP, number)

    def apply(self, sc: Syscalls) -> None:
        """Last step, after the uid change (which PR_SET_KEEPCAPS survived)."""
        sc.capset(self.effective, self.permitted, self.inheritable)
        sc.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_CLEAR_ALL)
        # Ambient capabilities must be permitted and inheritable; runc skips the rest.
        ambient = self.ambient & self.permitted & self.inheritable
        for number in range(self.last_cap + 1):
            if ambient & (1 << number):
                sc.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_RAISE, number)
