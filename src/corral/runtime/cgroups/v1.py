"""cgroup v1: a directory per controller hierarchy, plus the cgroup2 one on hybrid hosts.

On a hybrid host (v1 controllers and a cgroup2 mount, usually at
/sys/fs/cgroup/unified) the container also gets a directory in the cgroup2
hierarchy, which systemd uses to track it.  Controllers that are bound to
cgroup2 there rather than to a v1 mount (hugetlb, say) are configured
through that directory, with v2 semantics.
"""

from __future__ import annotations

import errno
import os
import time

from corral.runtime.cgroups import convert, v2
from corral.runtime.cgroups.base import Manager
from corral.runtime.cgroups.common import (
    CgroupError,
    field_error,
    get_bool,
    get_int,
    get_str,
    has_file,
    hierarchy_top,
    make_dirs,
    read,
    read_keyed,
    read_or_none,
    section,
    write,
)
from corral.runtime.cgroups.devicerules import Emulator, parse_rules

FREEZE_TIMEOUT = 5.0


def _read_at(path: str, name: str, field: str) -> str:
    try:
        return read(path, name)
    except OSError as e:
        raise field_error(field, f"cannot read {os.path.join(path, name)}: {e.strerror}") from None


# --- the sections ---------------------------------------------------------------------


def _set_memory_limit(path: str, limit: int) -> None:
    try:
        write(path, "memory.limit_in_bytes", str(limit), "memory.limit")
    except CgroupError as e:
        if e.errno != errno.EBUSY:
            raise
        # EBUSY: the limit is below what the cgroup already uses; say how much, as runc.
        usage = read_or_none(path, "memory.usage_in_bytes")
        peak = read_or_none(path, "memory.max_usage_in_bytes")
        raise CgroupError(f"{e} (current usage {usage}, peak usage {peak})") from None


def set_memory(path: str, resources: dict, creating: bool) -> None:
    mem = section(resources, "memory")
    limit = get_int(mem, "limit", "memory.limit") or 0
    swap = get_int(mem, "swap", "memory.swap") or 0
    memsw = has_file(path, "memory.memsw.limit_in_bytes")
    if limit == -1 and swap == 0:
        swap = -1  # unlimited memory means unlimited memory+swap too
    if not memsw:
        swap = 0  # no swap accounting in this kernel: there is nothing to limit
    # memory+swap may never be below memory, so order the two writes to keep that true.
    swap_first = False
    if limit and swap:
        current = int(_read_at(path, "memory.limit_in_bytes", "memory.limit"))
        swap_first = swap == -1 or current < swap
    if swap and swap_first:
        write(path, "memory.memsw.limit_in_bytes", str(swap), "memory.swap")
    if limit:
        _set_memory_limit(path, limit)
    if swap and not swap_first:
        write(path, "memory.memsw.limit_in_bytes", str(swap), "memory.swap")

    reservation = get_int(mem, "reservation", "memory.reservation")
    if reservation:
        write(path, "memory.soft_limit_in_bytes", str(reservation), "memory.reservation")
    # memory.kernel is ignored (the kernel dropped kmem limits in 5.16; runc ignores it).
    get_int(mem, "kernel", "memory.kernel")
    kernel_tcp = get_int(mem, "kernelTCP", "memory.kernelTCP")
    if kernel_tcp and has_file(path, "memory.kmem.tcp.limit_in_bytes"):
        write(path, "memory.kmem.tcp.limit_in_bytes", str(kernel_tcp), "memory.kernelTCP")
    swappiness = get_int(mem, "swappiness", "memory.swappiness")
    if swappiness is not None and swappiness != -1:
        if not 0 <= swappiness <= 100:
            raise field_error("memory.swappiness", f"{swappiness} is outside 0-100")
        write(path, "memory.swappiness", str(swappiness), "memory.swappiness")
    no_oom = get_bool(mem, "disableOOMKiller", "memory.disableOOMKiller")
    if no_oom or (no_oom is False and not creating
                  and read_keyed(path, "memory.oom_control", "oom_kill_disable") == 1):
        write(path, "memory.oom_control", "1" if no_oom else "0", "memory.disableOOMKiller")
    hierarchy = get_bool(mem, "useHierarchy", "memory.useHierarchy")
    # Recent kernels pin use_hierarchy to 1 and refuse writes; write only a change.
    if hierarchy is not None and read_or_none(path, "memory.use_hierarchy") != str(int(hierarchy)):
        write(path, "memory.use_hierarchy", str(int(hierarchy)), "memory.useHierarchy")


def set_cpu(path: str, resources: dict) -> None:
    cpu = section(resources, "cpu")
    shares = get_int(cpu, "shares", "cpu.shares")
    if shares:
        write(path, "cpu.shares", str(shares), "cpu.shares")
        got = int(_read_at(path, "cpu.shares", "cpu.shares"))
        if got != shares:
            raise field_error("cpu.shares", f"the kernel set {got} instead of {shares} "
                                            f"(allowed range 2-262144)")
    quota = get_int(cpu, "quota", "cpu.quota") or 0
    period = get_int(cpu, "period", "cpu.period") or 0
    retry_period = False
    if period:
        try:
            write(path, "cpu.cfs_period_us", str(period), "cpu.period")
        except CgroupError as e:
            # A shorter period can push old_quota/period over the parent's
            # limit (EINVAL); if a quota comes too, set it and try again.
            if e.errno != errno.EINVAL or not quota:
                raise
            retry_period = True
    if quota:
        write(path, "cpu.cfs_quota_us", str(quota), "cpu.quota")
        if retry_period:
            write(path, "cpu.cfs_period_us", str(period), "cpu.period")
    burst = get_int(cpu, "burst", "cpu.burst")
    if burst is not None:
        write(path, "cpu.cfs_burst_us", str(burst), "cpu.burst")
    # The realtime budget must be in place before a SCHED_RR/FIFO task joins.
    for key, name in (("realtimePeriod", "cpu.rt_period_us"),
                      ("realtimeRuntime", "cpu.rt_runtime_us")):
        value = get_int(cpu, key, f"cpu.{key}")
        if value:
            write(path, name, str(value), f"cpu.{key}")
    idle = get_int(cpu, "idle", "cpu.idle")
    if idle is not None:
        write(path, "cpu.idle", str(idle), "cpu.idle")


def _cpuset_copy_if_empty(path: str) -> None:
    """A new cpuset cgroup starts with no CPUs and no memory nodes, which makes
    joining it fail with ENOSPC; inherit the parent's."""
    parent = os.path.dirname(path)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read_at(path, name, "cpu.cpus"):
            write(path, name, _read_at(parent, name, "cpu.cpus"), f"cpu.{name[7:]}")


def set_cpuset(path: str, resources: dict) -> None:
    cpu = section(resources, "cpu")
    for key in ("cpus", "mems"):
        value = get_str(cpu, key, f"cpu.{key}")
        if value:
            write(path, f"cpuset.{key}", value, f"cpu.{key}")
    _cpuset_copy_if_empty(path)


def set_pids(path: str, resources: dict) -> None:
    limit = get_int(section(resources, "pids"), "limit", "pids.limit")
    if limit:  # 0 leaves it as it is (runc), -1 is "max"
        write(path, "pids.max", convert.pids_limit(limit), "pids.limit")


def set_blkio(path: str, resources: dict) -> None:
    blkio = section(resources, "blockIO")
    if not blkio:
        return
    # CFQ's files when present, else BFQ's (same scale), as runc picks them.
    weight_file = "blkio.weight" if has_file(path, "blkio.weight") else "blkio.bfq.weight"
    weight = get_int(blkio, "weight", "blockIO.weight")
    if weight:
        write(path, weight_file, str(weight), "blockIO.weight")
    leaf = get_int(blkio, "leafWeight", "blockIO.leafWeight")
    if leaf:
        write(path, "blkio.leaf_weight", str(leaf), "blockIO.leafWeight")
    field = "blockIO.weightDevice"
    entries = section(blkio, "weightDevice", list)
    for i, (dev, value) in enumerate(v2.device_lines(entries, field, "weight")):
        write(path, weight_file + "_device", f"{dev} {value}", f"{field}[{i}].weight")
    for i, (dev, value) in enumerate(v2.device_lines(entries, field, "leafWeight")):
        write(path, "blkio.leaf_weight_device", f"{dev} {value}", f"{field}[{i}].leafWeight")
    for key, _, name in v2.THROTTLES:
        for i, (dev, rate) in enumerate(v2.device_lines(section(blkio, key, list),
                                                          f"blockIO.{key}", "rate")):
            write(path, f"blkio.throttle.{name}", f"{dev} {rate}", f"blockIO.{key}[{i}]")


def set_hugetlb(path: str, resources: dict) -> None:
    for size, limit, where in v2.hugetlb_entries(resources):
        name = f"hugetlb.{size}.limit_in_bytes"
        if not has_file(path, name):
            raise field_error(f"{where}.pageSize", f"page size {size} is not supported "
                                                   f"(no {name} in {path})")
        write(path, name, str(limit), f"{where}.limit")
        if has_file(path, f"hugetlb.{size}.rsvd.limit_in_bytes"):
            write(path, f"hugetlb.{size}.rsvd.limit_in_bytes", str(limit), f"{where}.limit")


def set_devices(path: str, resources: dict) -> None:
    """Write the fewest devices.allow/deny lines that reach the requested state (as runc)."""
    items = section(resources, "devices", list)
    if not items:
        return
    target = Emulator.from_rules(parse_rules(items))
    current = Emulator.from_list(_read_at(path, "devices.list", "devices"))
    for rule in current.transition(target):
        write(path, "devices.allow" if rule.allow else "devices.deny", rule.cgroup_string(),
              "devices")


def set_net_cls(path: str, resources: dict) -> None:
    class_id = get_int(section(resources, "network"), "classID", "network.classID")
    if class_id is not None:
        write(path, "net_cls.classid", str(class_id), "network.classID")


def set_net_prio(path: str, resources: dict) -> None:
    for i, prio in enumerate(section(section(resources, "network"), "priorities", list)):
        where = f"network.priorities[{i}]"
        if not isinstance(prio, dict):
            raise field_error(where, "expected an object")
        name = get_str(prio, "name", f"{where}.name")
        value = get_int(prio, "priority", f"{where}.priority")
        if not name or value is None:
            raise field_error(where, "needs name and priority")
        write(path, "net_prio.ifpriomap", f"{name} {value}", where)


def set_rdma(path: str, resources: dict) -> None:
    for line, where in v2.rdma_lines(resources):
        write(path, "rdma.max", line, where)


def _freeze(path: str) -> None:
    """FROZEN may stall in FREEZING while tasks keep forking; nudge it, as runc does."""
    deadline = time.monotonic() + FREEZE_TIMEOUT
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        if attempt % 50 == 0:  # an occasional thaw lets a fork storm settle
            write(path, "freezer.state", "THAWED", "")
            time.sleep(0.01)
        write(path, "freezer.state", "FROZEN", "")
        state = read(path, "freezer.state")
        if state == "FROZEN":
            return
        if state != "FREEZING":
            raise CgroupError(f"cannot freeze {path}: freezer.state is {state}")
        time.sleep(0.001 if attempt < 25 else 0.01)
    write(path, "freezer.state", "THAWED", "")  # never leave it half frozen
    raise CgroupError(f"cannot freeze {path}: still FREEZING after {FREEZE_TIMEOUT:g}s")


def _given(value) -> bool:
    """Set to something other than OCI's "unset" (absent, 0, false)."""
    return value is not None and value is not False and value != 0


# (v1 controller, its v2 name) per section; None: v2 has no such controller.
_CONTROLLERS = {
    "cpuset": "cpuset", "devices": None, "memory": "memory", "cpu": "cpu", "pids": "pids",
    "blkio": "io", "hugetlb": "hugetlb", "net_cls": None, "net_prio": None, "rdma": "rdma",
}


class V1Manager(Manager):
    """A cgroup in each v1 hierarchy; `paths[""]` is its cgroup2 directory on hybrid hosts."""

    version = 1

    def __init__(self, paths: dict[str, str]):
        self.paths = dict(paths)
        self._v2_available: set[str] | None = None

    @property
    def unified(self) -> str | None:
        return self.paths.get("")

    def _with_paths(self, paths: dict[str, str]) -> V1Manager:
        return V1Manager(paths)

    def _v2_controllers(self) -> set[str]:
        """Controllers a hybrid host offers on cgroup2 because no v1 mount has them."""
        if self._v2_available is None:
            self._v2_available = set()
            if self.unified:
                top = hierarchy_top(self.unified)
                bound_v1 = {_CONTROLLERS.get(c) or c for c in self.paths if c}
                offered = (read_or_none(top, "cgroup.controllers") or "").split()
                self._v2_available = {c for c in offered if c not in bound_v1}
        return self._v2_available

    def _where(self, controller: str, field: str) -> tuple[int, str]:
        """(1 or 2, directory) where `controller`'s limits go; a clear error if nowhere."""
        if controller in self.paths:
            return 1, self.paths[controller]
        name = _CONTROLLERS.get(controller)
        if name and name in self._v2_controllers():
            return 2, self.unified
        if controller == "devices" and self.unified:
            return 2, self.unified  # no v1 devices: the eBPF filter works on any cgroup2 dir
        raise field_error(field, f"the {controller} controller is not mounted on this host")

    def _make_dirs(self, created: list[str]) -> None:
        for path in self._dirs():
            make_dirs(path, created)
        cpuset = self.paths.get("cpuset")
        if cpuset:
            # Every level between the mount and the leaf needs CPUs and memory
            # nodes before anything can join below it.
            top = hierarchy_top(cpuset)
            level = top
            for part in os.path.relpath(os.path.dirname(cpuset), top).split("/"):
                if part != ".":
                    level = os.path.join(level, part)
                    _cpuset_copy_if_empty(level)
        if self.unified:
            v2.enable_controllers(hierarchy_top(self.unified), self.unified)

    def _apply(self, resources: dict, creating: bool) -> None:
        cpu = section(resources, "cpu")
        mem = section(resources, "memory")
        net = section(resources, "network")
        # section → (controller, is it set?, v1 writer, v2 writer), in runc's order
        steps = [
            ("cpuset", "cpu.cpus", any(cpu.get(k) for k in ("cpus", "mems")) or (
                creating and "cpuset" in self.paths), set_cpuset, v2.set_cpuset),
            ("devices", "devices", bool(section(resources, "devices", list)), set_devices,
             v2.set_devices),
            ("memory", "memory", any(_given(v) for v in mem.values()),
             lambda p, r: set_memory(p, r, creating), v2.set_memory),
            ("cpu", "cpu", any(_given(v) for k, v in cpu.items() if k not in ("cpus", "mems")),
             set_cpu, v2.set_cpu),
            ("pids", "pids", _given(section(resources, "pids").get("limit")), set_pids,
             v2.set_pids),
            ("blkio", "blockIO", bool(section(resources, "blockIO")), set_blkio, v2.set_io),
            ("hugetlb", "hugepageLimits", bool(section(resources, "hugepageLimits", list)),
             set_hugetlb, v2.set_hugetlb),
            ("net_cls", "network.classID", net.get("classID") is not None, set_net_cls, None),
            ("net_prio", "network.priorities", bool(net.get("priorities")), set_net_prio, None),
            ("rdma", "rdma", bool(v2.rdma_lines(resources)), set_rdma, v2.set_rdma),
        ]
        for controller, field, wanted, set_v1, set_v2 in steps:
            if not wanted:
                continue
            version, path = self._where(controller, field)
            (set_v1 if version == 1 else set_v2)(path, resources)

    def _refuse(self, resources: dict) -> None:
        # Even on a hybrid host, whose cgroup2 mount would take some keys: as runc.
        if section(resources, "unified"):
            raise field_error("unified", "invalid configuration: cannot use unified on "
                                         "cgroup v1")

    def freeze(self) -> None:
        if "freezer" in self.paths:
            _freeze(self.paths["freezer"])
        elif self.unified:
            v2.freeze(self.unified)
        else:
            raise CgroupError("cannot freeze: the freezer controller is not mounted")

    def thaw(self) -> None:
        if "freezer" in self.paths:
            write(self.paths["freezer"], "freezer.state", "THAWED", "")
        elif self.unified:
            v2.thaw(self.unified)

    def frozen(self) -> bool:
        path = self.paths.get("freezer")
        if path is None:
            return bool(self.unified) and v2.frozen(self.unified)
        deadline = time.monotonic() + 1.0
        while True:
            state = read_or_none(path, "freezer.state")
            if state != "FREEZING" or time.monotonic() > deadline:
                break
            time.sleep(0.001)
        if state == "FROZEN":
            # FROZEN also shows when only an ancestor is frozen; that is not our pause.
            return read_or_none(path, "freezer.self_freezing") != "0"
        return state == "FREEZING"

    def oom_kills(self) -> int:
        if "memory" in self.paths:
            return read_keyed(self.paths["memory"], "memory.oom_control", "oom_kill") or 0
        if "memory" in self._v2_controllers():
            return read_keyed(self.unified, "memory.events", "oom_kill") or 0
        return 0

    def to_state(self) -> dict:
        return {"version": 1, "paths": {k: v for k, v in self.paths.items() if k},
                "unified": self.unified}
