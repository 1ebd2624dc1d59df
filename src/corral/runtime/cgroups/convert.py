"""Value conversions between the OCI resources (cgroup v1 flavoured) and cgroup files.

Pure functions, no I/O.  They raise ValueError with a message the managers
prefix with the OCI field name.  The formulas are runc's, so a container gets
the same limits under either runtime.
"""

from __future__ import annotations

MIN_SHARES, MAX_SHARES = 2, 262144  # the kernel's bounds for cpu.shares
DEFAULT_CFS_PERIOD = 100000  # µs; the kernel's default cfs period



def shares_to_weight(shares: int) -> int:
    """cpu.shares [2, 262144] → cpu.weight [1, 10000] linearly; 0 means unset → 0."""
    if shares == 0:
        return 0
    shares = min(max(shares, MIN_SHARES), MAX_SHARES)  # what the v1 kernel would clamp to
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight [10, 1000] → io.weight [1, 10000] linearly; 0 means unset → 0."""
    if weight == 0:
        return 0
    if not 10 <= weight <= 1000:
        raise ValueError(f"weight {weight} is outside 10-1000")
    return 1 + (weight - 10) * 9999 // 990


def v2_limit(value: int) -> str:
    """An OCI limit for a v2 .max/.low file: -1 is "max"; 0 is unset → ""."""
    if value == 0:
        return ""
    if value == -1:
        return "max"
    if value < 0:
        raise ValueError(f"invalid value {value}")
    return str(value)


def swap_to_v2(swap: int, memory: int) -> int:
    """OCI memory.swap (memory+swap, as v1) → v2 memory.swap.max (swap alone).

    -1 is unlimited and 0 is unset, as in OCI.  With memory unlimited and swap
    unset, swap is unlimited too (what v1 does).
    """
    if memory == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if memory == -1:
        return swap
    if memory == 0:
        raise ValueError("a swap limit needs a memory limit")
    if memory < 0:
        raise ValueError(f"invalid memory limit {memory}")
    if swap < memory:
        raise ValueError(f"memory+swap limit {swap} is below the memory limit {memory}")
    return swap - memory


def cpu_max(quota: int | None, period: int | None, current_period: int | None = None) -> str:
    """cpu.max from the v1-style quota and period: "QUOTA PERIOD" or "max PERIOD".

    A missing period keeps the one in force (`current_period`) so that an
    update of the quota alone does not reset it.
    """
    if period is None or period == 0:
        period = current_period or DEFAULT_CFS_PERIOD
    if period < 0:
        raise ValueError(f"invalid period {period}")
    head = str(quota) if quota is not None and quota > 0 else "max"
    return f"{head} {period}"


def pids_limit(limit: int) -> str:
    """pids.max: a positive limit, or "max" for 0 and -1 (no limit)."""
    return str(limit) if limit > 0 else "max"


def check_page_size(size: str) -> str:
    """A hugetlb page size as the kernel names its files ("2MB", "1GB", "64KB")."""
    number, unit = size[:-2], size[-2:]
    if not (number.isascii() and number.isdigit() and number[0] != "0" and unit[:1] in "KMGTP"
            and unit.endswith("B") and len(unit) == 2):
        raise ValueError(f"page size {size!r} is not like 2MB or 1GB")
    return size
