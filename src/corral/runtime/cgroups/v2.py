"""cgroup v2: one directory, limits written through the unified interface files.

The `set_*` functions write one OCI section into one cgroup2 directory; the
v1 manager reuses them for controllers that a hybrid host offers only on
its cgroup2 mount (hugetlb, typically).
"""

from __future__ import annotations

import os
import time

from corral.runtime.cgroups import convert
from corral.runtime.cgroups.base import Manager
from corral.runtime.cgroups.common import (
    DEFAULT_ROOT,
    CgroupError,
    field_error,
    get_int,
    get_str,
    has_file,
    make_dirs,
    read_keyed,
    read_or_none,
    section,
    write,
)
from corral.runtime.cgroups.devicerules import Emulator, parse_rules

FREEZE_TIMEOUT = 5.0


def _conv(field: str, fn, *args):
    try:
        return fn(*args)
    except ValueError as e:
        raise field_error(field, str(e)) from None


def enable_controllers(top: str, leaf: str) -> None:
    """Turn on every available controller in each ancestor's subtree_control (as runc).

    Failures are ignored: a parent with processes of its own cannot delegate
    domain controllers, and then the write of the limit itself says so.
    """
    current = top
    rel = os.path.relpath(os.path.dirname(leaf), top)
    for part in [None] + ([] if rel == "." else rel.split("/")):
        if part is not None:
            current = os.path.join(current, part)
        available = (read_or_none(current, "cgroup.controllers") or "").split()
        enabled = set((read_or_none(current, "cgroup.subtree_control") or "").split())
        missing = [c for c in available if c not in enabled]
        if not missing:
            continue
        try:
            write(current, "cgroup.subtree_control", " ".join("+" + c for c in missing), "")
        except CgroupError:
            for ctl in missing:
                try:
                    write(current, "cgroup.subtree_control", "+" + ctl, "")
                except CgroupError:
                    pass


def _need(path: str, name: str, field: str, controller: str) -> None:
    if not has_file(path, name):
        raise field_error(field, f"the {controller} controller is not available in {path} "
                                 f"(no {name}){_not_handed_down(path, controller)}")


def _not_handed_down(path: str, controller: str) -> str:
    """Why the parent offers `controller` but did not enable it for `path`, if we know."""
    parent = os.path.dirname(path)
    offered = (read_or_none(parent, "cgroup.controllers") or "").split()
    enabled = (read_or_none(parent, "cgroup.subtree_control") or "").split()
    if controller not in offered or controller in enabled:
        return ""
    # cgroup v2's "no internal processes" rule: only a cgroup without processes of
    # its own may enable domain controllers for its children (the root excepted).
    if (read_or_none(parent, "cgroup.procs") or "").strip():
        return f": its parent {parent} has processes of its own, so cannot enable it"
    return ""


# --- the sections ---------------------------------------------------------------------


def set_memory(path: str, resources: dict) -> None:
    mem = section(resources, "memory")
    limit = get_int(mem, "limit", "memory.limit") or 0
    swap = get_int(mem, "swap", "memory.swap") or 0
    low = get_int(mem, "reservation", "memory.reservation") or 0
    # kernel, kernelTCP, swappiness, disableOOMKiller and useHierarchy have no
    # v2 counterpart; runc ignores them there too.
    if not (limit or swap or low):
        return
    _need(path, "memory.max", "memory", "memory")
    swap_max = _conv("memory.swap", convert.swap_to_v2, swap, limit)
    swap_str = _conv("memory.swap", convert.v2_limit, swap_max)
    if swap_max == 0 and swap > 0:
        swap_str = "0"  # swap equal to the limit: no swap at all
    if swap_str and (has_file(path, "memory.swap.max") or swap_str not in ("max", "0")):
        write(path, "memory.swap.max", swap_str, "memory.swap")
    limit_str = _conv("memory.limit", convert.v2_limit, limit)
    if limit > 0:
        usage = read_or_none(path, "memory.current")
        if usage and int(usage) > limit:
            raise field_error("memory.limit", f"{limit} is below the current usage {usage} "
                                              f"of {path}")
    if limit_str:
        write(path, "memory.max", limit_str, "memory.limit")
    if low:
        write(path, "memory.low", _conv("memory.reservation", convert.v2_limit, low),
              "memory.reservation")


def set_cpu(path: str, resources: dict) -> None:
    cpu = section(resources, "cpu")
    shares = get_int(cpu, "shares", "cpu.shares") or 0
    quota = get_int(cpu, "quota", "cpu.quota") or 0
    period = get_int(cpu, "period", "cpu.period") or 0
    burst = get_int(cpu, "burst", "cpu.burst")
    idle = get_int(cpu, "idle", "cpu.idle")
    for key in ("realtimeRuntime", "realtimePeriod"):
        if get_int(cpu, key, f"cpu.{key}"):
            raise field_error(f"cpu.{key}", "cgroup v2 has no realtime group scheduling")
    if not (shares or quota or period or burst is not None or idle is not None):
        return
    _need(path, "cpu.max", "cpu", "cpu")
    if shares:
        write(path, "cpu.weight", str(convert.shares_to_weight(shares)), "cpu.shares")
    if quota or period:
        old = (read_or_none(path, "cpu.max") or "max 100000").split()
        if not quota and len(old) == 2 and old[0] != "max":
            quota = int(old[0])  # a new period alone keeps the quota in force
        value = _conv("cpu.period", convert.cpu_max, quota, period,
                      int(old[1]) if len(old) == 2 else None)
        write(path, "cpu.max", value, "cpu.quota" if quota else "cpu.period")
    if burst is not None:
        write(path, "cpu.max.burst", str(burst), "cpu.burst")
    if idle is not None:
        write(path, "cpu.idle", str(idle), "cpu.idle")


def set_cpuset(path: str, resources: dict) -> None:
    cpu = section(resources, "cpu")
    for key in ("cpus", "mems"):
        value = get_str(cpu, key, f"cpu.{key}")
        if value:
            _need(path, f"cpuset.{key}", f"cpu.{key}", "cpuset")
            write(path, f"cpuset.{key}", value, f"cpu.{key}")


def set_pids(path: str, resources: dict) -> None:
    pids = section(resources, "pids")
    limit = get_int(pids, "limit", "pids.limit")
    if limit:  # 0 leaves it as it is (runc), -1 is "max"
        _need(path, "pids.max", "pids.limit", "pids")
        write(path, "pids.max", convert.pids_limit(limit), "pids.limit")


def device_lines(entries: list, field: str, value_key: str) -> list[tuple[str, int]]:
    """("major:minor", value) for blockIO device lists."""
    out = []
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise field_error(where, "expected an object")
        major = get_int(entry, "major", f"{where}.major")
        minor = get_int(entry, "minor", f"{where}.minor")
        if major is None or minor is None or major < 0 or minor < 0:
            raise field_error(where, "needs major and minor device numbers")
        value = get_int(entry, value_key, f"{where}.{value_key}")
        if value is not None:
            out.append((f"{major}:{minor}", value))
    return out


THROTTLES = (("throttleReadBpsDevice", "rbps", "read_bps_device"),
             ("throttleWriteBpsDevice", "wbps", "write_bps_device"),
             ("throttleReadIOPSDevice", "riops", "read_iops_device"),
             ("throttleWriteIOPSDevice", "wiops", "write_iops_device"))


def set_io(path: str, resources: dict) -> None:
    blkio = section(resources, "blockIO")
    if not blkio:
        return
    weight = get_int(blkio, "weight", "blockIO.weight") or 0
    # leafWeight has no v2 counterpart (runc ignores it there too).
    devices = device_lines(section(blkio, "weightDevice", list), "blockIO.weightDevice",
                            "weight")
    bfq = has_file(path, "io.bfq.weight")
    if weight:
        _need(path, "io.stat", "blockIO.weight", "io")
        if bfq:  # BFQ takes the v1 scale as is
            write(path, "io.bfq.weight", str(weight), "blockIO.weight")
        else:
            value = _conv("blockIO.weight", convert.blkio_weight_to_io_weight, weight)
            write(path, "io.weight", str(value), "blockIO.weight")
    for i, (dev, value) in enumerate(devices):
        field = f"blockIO.weightDevice[{i}].weight"
        if bfq:
            write(path, "io.bfq.weight", f"{dev} {value}", field)
        else:
            converted = _conv(field, convert.blkio_weight_to_io_weight, value)
            write(path, "io.weight", f"{dev} {converted}", field)
    for key, name, _ in THROTTLES:
        for i, (dev, rate) in enumerate(device_lines(section(blkio, key, list),
                                                       f"blockIO.{key}", "rate")):
            write(path, "io.max", f"{dev} {name}={rate}", f"blockIO.{key}[{i}]")


def hugetlb_entries(resources: dict) -> list[tuple[str, int, str]]:
    """(page size, limit, field) for each hugepageLimits entry."""
    out = []
    for i, entry in enumerate(section(resources, "hugepageLimits", list)):
        where = f"hugepageLimits[{i}]"
        if not isinstance(entry, dict):
            raise field_error(where, "expected an object")
        size = get_str(entry, "pageSize", f"{where}.pageSize")
        limit = get_int(entry, "limit", f"{where}.limit")
        if size is None or limit is None:
            raise field_error(where, "needs pageSize and limit")
        out.append((_conv(f"{where}.pageSize", convert.check_page_size, size), limit, where))
    return out


def set_hugetlb(path: str, resources: dict) -> None:
    for size, limit, where in hugetlb_entries(resources):
        name = f"hugetlb.{size}.max"
        if not has_file(path, name):
            if any(n.startswith("hugetlb.") for n in os.listdir(path)):
                raise field_error(f"{where}.pageSize", f"page size {size} is not supported "
                                                       f"(no {name} in {path})")
            _need(path, name, where, "hugetlb")
        write(path, name, str(limit), f"{where}.limit")
        if has_file(path, f"hugetlb.{size}.rsvd.max"):  # reservations too, as runc
            write(path, f"hugetlb.{size}.rsvd.max", str(limit), f"{where}.limit")


def rdma_lines(resources: dict) -> list[tuple[str, str]]:
    """(line for rdma.max, field) for linux.resources.rdma."""
    out = []
    for device, limits in section(resources, "rdma").items():
        where = f"rdma.{device}"
        if not isinstance(limits, dict) or not device or " " in device:
            raise field_error(where, "expected an object for a device name")
        parts = [device]
        for key, name in (("hcaHandles", "hca_handle"), ("hcaObjects", "hca_object")):
            value = get_int(limits, key, f"{where}.{key}")
            if value is not None:
                parts.append(f"{name}={value}")
        if len(parts) > 1:
            out.append((" ".join(parts), where))
    return out


def set_rdma(path: str, resources: dict) -> None:
    for line, where in rdma_lines(resources):
        _need(path, "rdma.max", where, "rdma")
        write(path, "rdma.max", line, where)


def set_unified(path: str, resources: dict) -> None:
    """linux.resources.unified: each key is a file in the cgroup, written verbatim."""
    for key, value in section(resources, "unified").items():
        field = f"unified.{key}"
        if not key or "/" in key or key in (".", ".."):
            raise field_error(field, "not a cgroup file name")
        if not isinstance(value, str):
            raise field_error(field, f"expected a string, got {value!r}")
        if not has_file(path, key):
            controller = key.partition(".")[0]
            raise field_error(field, f"no such file in {path} (is the {controller} "
                                     f"controller available?)")
        write(path, key, value, field)


def set_devices(path: str, resources: dict) -> None:
    items = section(resources, "devices", list)
    if items:
        from corral.runtime.cgroups import devicefilter  # ctypes: only when needed

        devicefilter.apply(path, Emulator.from_rules(parse_rules(items)))


def check_network(resources: dict) -> None:
    net = section(resources, "network")
    if get_int(net, "classID", "network.classID") is not None or net.get("priorities"):
        raise field_error("network", "cgroup v2 has no net_cls/net_prio controllers")


# --- the freezer --------------------------------------------------------------------


def freeze(path: str) -> None:
    write(path, "cgroup.freeze", "1", "")
    deadline = time.monotonic() + FREEZE_TIMEOUT
    # The write only asks; cgroup.events says when every task has stopped.
    while read_keyed(path, "cgroup.events", "frozen") != 1:
        if time.monotonic() > deadline:
            write(path, "cgroup.freeze", "0", "")
            raise CgroupError(f"cannot freeze {path}: still not frozen after "
                              f"{FREEZE_TIMEOUT:g}s")
        time.sleep(0.002)


def thaw(path: str) -> None:
    if has_file(path, "cgroup.freeze"):
        write(path, "cgroup.freeze", "0", "")


def frozen(path: str) -> bool:
    return read_or_none(path, "cgroup.freeze") == "1"


class V2Manager(Manager):
    """A cgroup on a cgroup2 hierarchy mounted at `root` (pure v2 hosts, or any cgroup2 mount)."""

    version = 2

    def __init__(self, path: str, root: str = DEFAULT_ROOT):
        root = root.rstrip("/") or "/"
        if not path.startswith(root + "/") or path == root:
            raise CgroupError(f"cgroup {path} is not below the cgroup2 mount {root}")
        self.path = path
        self.root = root
        self.paths = {"": path}

    def _with_paths(self, paths: dict[str, str]) -> V2Manager:
        return V2Manager(paths[""], root=self.root)

    def _make_dirs(self, created: list[str]) -> None:
        make_dirs(self.path, created)
        enable_controllers(self.root, self.path)

    def _apply(self, resources: dict, creating: bool) -> None:
        check_network(resources)
        set_pids(self.path, resources)
        set_memory(self.path, resources)
        set_io(self.path, resources)
        set_cpu(self.path, resources)
        set_cpuset(self.path, resources)
        set_hugetlb(self.path, resources)
        set_rdma(self.path, resources)
        set_devices(self.path, resources)
        set_unified(self.path, resources)

    def freeze(self) -> None:
        freeze(self.path)

    def thaw(self) -> None:
        thaw(self.path)

    def frozen(self) -> bool:
        return frozen(self.path)

    def oom_kills(self) -> int:
        return read_keyed(self.path, "memory.events", "oom_kill") or 0

    def to_state(self) -> dict:
        return {"version": 2, "path": self.path, "root": self.root}

