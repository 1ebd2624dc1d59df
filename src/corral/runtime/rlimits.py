"""process.rlimits: names to resource numbers, applied with clear errors."""

from __future__ import annotations

import errno
import resource

from corral.runtime.syscalls import Syscalls
from corral.spec.runtime import Rlimit

RLIMITS = {
    "RLIMIT_CPU": resource.RLIMIT_CPU, "RLIMIT_FSIZE": resource.RLIMIT_FSIZE,
    "RLIMIT_DATA": resource.RLIMIT_DATA, "RLIMIT_STACK": resource.RLIMIT_STACK,
    "RLIMIT_CORE": resource.RLIMIT_CORE, "RLIMIT_RSS": resource.RLIMIT_RSS,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC, "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
    "RLIMIT_MEMLOCK": resource.RLIMIT_MEMLOCK, "RLIMIT_AS": resource.RLIMIT_AS,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": resource.RLIMIT_SIGPENDING,
    "RLIMIT_MSGQUEUE": resource.RLIMIT_MSGQUEUE, "RLIMIT_NICE": resource.RLIMIT_NICE,
    "RLIMIT_RTPRIO": resource.RLIMIT_RTPRIO, "RLIMIT_RTTIME": resource.RLIMIT_RTTIME,
}
_UNLIMITED = 2**64 - 1  # how the OCI JSON spells RLIM_INFINITY


class RlimitError(OSError):
    pass


def check_rlimits(rlimits: list[Rlimit]) -> None:
    for i, limit in enumerate(rlimits):
        if limit.type not in RLIMITS:
            raise RlimitError(errno.EINVAL,
                              f"process.rlimits[{i}].type: unknown rlimit {limit.type!r}")


def apply_rlimits(rlimits: list[Rlimit], sc: Syscalls) -> None:
    for i, limit in enumerate(rlimits):
        soft = resource.RLIM_INFINITY if limit.soft >= _UNLIMITED else limit.soft
        hard = resource.RLIM_INFINITY if limit.hard >= _UNLIMITED else limit.hard
        try:
            sc.setrlimit(RLIMITS[limit.type], soft, hard)
        except (OSError, ValueError) as e:
            current = resource.getrlimit(RLIMITS[limit.type])[1]
            why = "raising a hard limit needs CAP_SYS_RESOURCE" if (
                current != resource.RLIM_INFINITY and hard > current) else str(e)
            raise RlimitError(errno.EPERM, f"process.rlimits[{i}] ({limit.type}): cannot set "
                              f"soft={limit.soft} hard={limit.hard}: {why}") from None
