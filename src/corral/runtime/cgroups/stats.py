"""A container's resource usage, read from its cgroup, in the shape of runc's
`events --stats` "data" object (runc's types.Stats, types/events.go).

    data = read_stats(manager)      # {"cpu": …, "cpuset": …, "memory": …, "pids": …,
                                    #  "blkio": …, "hugetlb": …}

Which files feed which fields follows runc's libcontainer/cgroups/fs (v1) and
fs2 (v2) readers:

  cpu      v1: cpuacct.{usage,usage_percpu,usage_all,stat}, cpu.stat (throttling)
           v2: cpu.stat (usage_usec, user_usec, system_usec, nr_periods, …), cpu.pressure
  cpuset   v1 only: cpuset.cpus, cpuset.mems and the flag files
  memory   v1: memory.stat, memory.{,memsw.,kmem.,kmem.tcp.}{usage,max_usage,limit}_in_bytes
           and .failcnt; cache is memory.stat "cache"
           v2: memory.stat, memory.current/max/peak, memory.swap.current/max
           (swap reported as memory+swap, as v1 does); cache is memory.stat "file"
  pids     pids.current, pids.max ("max": 0, no limit)
  blkio    v1: the first of runc's file sets (BFQ, CFQ, throttle) that has entries
           v2: io.stat (rbytes/wbytes → ioServiceBytesRecursive, rios/wios →
           ioServicedRecursive), io.pressure
  hugetlb  v1: hugetlb.<size>.{usage_in_bytes,max_usage_in_bytes,failcnt}
           v2 (and the cgroup2 directory of a hybrid host): hugetlb.<size>.current,
           hugetlb.<size>.events "max"

Differences from runc, on purpose: a section whose controller (or files) this
cgroup lacks is left out instead of being filled with zeros, and the fields of
a section that is there are all present (runc's `omitempty` drops zeros and
empty lists; a decoder gets the same values either way).  Values are numbers
as the kernel shows them; "max" in a v2 limit is 2**64-1, as runc reports it.

Nothing here raises for a missing or unreadable file: the stats of a cgroup
that is going away are simply smaller.
"""

from __future__ import annotations

import os

MAX_UINT64 = (1 << 64) - 1
NS_PER_SEC = 1_000_000_000


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (ValueError, OSError):
        return 100


USER_HZ = _clock_ticks()


# --- reading files --------------------------------------------------------------------


def read_text(directory: str, name: str) -> str | None:
    """The file's content, or None when it is missing or unreadable (any OSError)."""
    try:
        with open(os.path.join(directory, name), "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return None


def parse_uint(text: str) -> int | None:
    """A cgroup number as runc's ParseUint reads it: "max" is 2**64-1, negative is 0."""
    text = text.strip()
    if text == "max":
        return MAX_UINT64
    try:
        value = int(text)
    except ValueError:
        return None
    return min(max(value, 0), MAX_UINT64)


def read_uint(directory: str, name: str) -> int | None:
    text = read_text(directory, name)
    return None if text is None else parse_uint(text)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """'key value' lines (memory.stat, cpu.stat, memory.events); bad lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            value = parse_uint(parts[1])
            if value is not None:
                out[parts[0]] = value
    return out


def read_flat_keyed(directory: str, name: str) -> dict[str, int] | None:
    text = read_text(directory, name)
    return None if text is None else parse_flat_keyed(text)


def parse_cpu_list(text: str) -> list[int]:
    """A cpuset list ("0-3,8,10-11") as the numbers it names."""
    out: list[int] = []
    for part in text.strip().split(","):
        low, sep, high = part.partition("-")
        try:
            if sep:
                out.extend(range(int(low), int(high) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            continue
    return out


def parse_psi(text: str) -> dict:
    """A *.pressure file: {"some": {avg10, avg60, avg300, total}, "full": {…}}."""
    out: dict = {}
    for line in text.splitlines():
        kind, *fields = line.split() or [""]
        if kind not in ("some", "full"):
            continue
        data = {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0}
        for field in fields:
            key, _, value = field.partition("=")
            try:
                if key in ("avg10", "avg60", "avg300"):
                    data[key] = float(value)
                elif key == "total":
                    data[key] = int(value)
            except ValueError:
                continue
        out[kind] = data
    return out


def _psi(directory: str, name: str) -> dict | None:
    text = read_text(directory, name)  # EOPNOTSUPP when booted with psi=0: left out
    if text is None:
        return None
    return parse_psi(text) or None


# --- cpu ----------------------------------------------------------------------------


def parse_usage_all(text: str) -> tuple[list[int], list[int]]:
    """cpuacct.usage_all ("cpu user system" header, then one line a CPU) →
    (per-CPU kernel ns, per-CPU user ns)."""
    kernel: list[int] = []
    user: list[int] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) != 3:
            continue
        try:
            u, k = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        user.append(u)
        kernel.append(k)
    return kernel, user


def _throttling(stat: dict[str, int], time_key: str, scale: int) -> dict:
    return {"periods": stat.get("nr_periods", 0),
            "throttledPeriods": stat.get("nr_throttled", 0),
            "throttledTime": stat.get(time_key, 0) * scale}


def cpu_v1(cpuacct: str | None, cpu: str | None) -> dict | None:
    usage: dict | None = None
    if cpuacct is not None:
        total = read_uint(cpuacct, "cpuacct.usage")
        ticks = read_flat_keyed(cpuacct, "cpuacct.stat")
        if total is not None or ticks is not None:
            ticks = ticks or {}
            percpu_text = read_text(cpuacct, "cpuacct.usage_percpu") or ""
            usage = {"total": total or 0,
                     "percpu": [v for v in map(parse_uint, percpu_text.split()) if v is not None]}
            usage_all = read_text(cpuacct, "cpuacct.usage_all")
            if usage_all is not None:
                usage["percpu_kernel"], usage["percpu_user"] = parse_usage_all(usage_all)
            usage["kernel"] = ticks.get("system", 0) * NS_PER_SEC // USER_HZ
            usage["user"] = ticks.get("user", 0) * NS_PER_SEC // USER_HZ
    stat = read_flat_keyed(cpu, "cpu.stat") if cpu is not None else None
    if usage is None and stat is None:
        return None
    return {"usage": usage or {"total": 0, "percpu": [], "kernel": 0, "user": 0},
            "throttling": _throttling(stat or {}, "throttled_time", 1)}


def cpu_v2(directory: str, psi: bool = True) -> dict | None:
    stat = read_flat_keyed(directory, "cpu.stat")
    if stat is None:
        return None
    out = {"usage": {"total": stat.get("usage_usec", 0) * 1000, "percpu": [],
                     "kernel": stat.get("system_usec", 0) * 1000,
                     "user": stat.get("user_usec", 0) * 1000},
           "throttling": _throttling(stat, "throttled_usec", 1000)}
    pressure = _psi(directory, "cpu.pressure") if psi else None
    if pressure:
        out["psi"] = pressure
    return out


# --- cpuset (v1) --------------------------------------------------------------------

_CPUSET_FLAGS = ("mem_hardwall", "mem_exclusive", "memory_migrate", "memory_spread_page",
                 "memory_spread_slab", "memory_pressure", "sched_load_balance")


def cpuset_v1(directory: str) -> dict | None:
    cpus = read_text(directory, "cpuset.cpus")
    if cpus is None:
        return None
    # types.CPUSet's field order
    out: dict = {"cpus": parse_cpu_list(cpus),
                 "cpu_exclusive": read_uint(directory, "cpuset.cpu_exclusive") or 0,
                 "mems": parse_cpu_list(read_text(directory, "cpuset.mems") or "")}
    for key in _CPUSET_FLAGS:
        out[key] = read_uint(directory, f"cpuset.{key}") or 0
    level = (read_text(directory, "cpuset.sched_relax_domain_level") or "").strip()
    out["sched_relax_domain_level"] = int(level) if level.lstrip("-").isdigit() else 0
    return out


# --- memory -------------------------------------------------------------------------


def _memory_entry_v1(directory: str, prefix: str) -> dict | None:
    usage = read_uint(directory, f"{prefix}.usage_in_bytes")
    if usage is None:
        return None  # no swap (memsw) or kmem accounting in this kernel
    return {"limit": read_uint(directory, f"{prefix}.limit_in_bytes") or 0,
            "usage": usage,
            "max": read_uint(directory, f"{prefix}.max_usage_in_bytes") or 0,
            "failcnt": read_uint(directory, f"{prefix}.failcnt") or 0}


def memory_v1(directory: str) -> dict | None:
    raw = read_flat_keyed(directory, "memory.stat")
    usage = _memory_entry_v1(directory, "memory")
    if raw is None and usage is None:
        return None
    raw = raw or {}
    out: dict = {"cache": raw.get("cache", 0),
                 "usage": usage or {"limit": 0, "usage": 0, "max": 0, "failcnt": 0}}
    for key, prefix in (("swap", "memory.memsw"), ("kernel", "memory.kmem"),
                        ("kernelTCP", "memory.kmem.tcp")):
        entry = _memory_entry_v1(directory, prefix)
        if entry is not None:
            out[key] = entry
    out["raw"] = dict(sorted(raw.items()))  # Go writes map keys sorted
    return out


def _add_limits(a: int, b: int) -> int:
    return MAX_UINT64 if MAX_UINT64 in (a, b) else min(a + b, MAX_UINT64)


def memory_v2(directory: str, psi: bool = True) -> dict | None:
    current = read_uint(directory, "memory.current")
    if current is None:
        return None
    raw = read_flat_keyed(directory, "memory.stat") or {}
    limit = read_uint(directory, "memory.max")
    limit = MAX_UINT64 if limit is None else limit
    out: dict = {"cache": raw.get("file", 0),
                 "usage": {"limit": limit, "usage": current,
                           "max": read_uint(directory, "memory.peak") or 0,  # kernel 5.19+
                           "failcnt": 0}}
    swap = read_uint(directory, "memory.swap.current")
    if swap is not None:
        # v1 reports swap as memory+swap; runc does the same sum on v2.
        swap_limit = read_uint(directory, "memory.swap.max")
        swap_limit = MAX_UINT64 if swap_limit is None else swap_limit
        out["swap"] = {"limit": _add_limits(swap_limit, limit), "usage": swap + current,
                       "max": 0, "failcnt": 0}
    out["raw"] = dict(sorted(raw.items()))
    pressure = _psi(directory, "memory.pressure") if psi else None
    if pressure:
        out["psi"] = pressure
    return out


# --- pids ---------------------------------------------------------------------------


def pids_stats(directory: str, count_procs: bool = False) -> dict | None:
    current = read_uint(directory, "pids.current")
    if current is None:
        if not count_procs:
            return None
        # v2 without the pids controller: count cgroup.procs, as runc does.
        procs = read_text(directory, "cgroup.procs")
        if procs is None:
            return None
        return {"current": sum(1 for line in procs.splitlines() if line.strip()), "limit": 0}
    limit = read_uint(directory, "pids.max")
    return {"current": current, "limit": 0 if limit in (None, MAX_UINT64) else limit}


# --- blkio / io ---------------------------------------------------------------------


def parse_blkio(text: str) -> list[dict]:
    """A v1 blkio stat file: "MAJ:MIN Op value" or "MAJ:MIN value" lines; "Total" skipped."""
    out = []
    for line in text.splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) not in (3, 4):
            continue  # "Total N" and anything unexpected
        try:
            major, minor, value = int(fields[0]), int(fields[1]), int(fields[-1])
        except ValueError:
            continue
        entry: dict = {"major": major, "minor": minor}
        if len(fields) == 4:
            entry["op"] = fields[2]
        entry["value"] = value
        out.append(entry)
    return out


# runc's sets of blkio files, best first (BFQ with debug stats, BFQ, CFQ, throttling
# recursive, throttling); the first set whose first file has entries is used.
_BLKIO_SETS = (
    (("blkio.bfq.sectors_recursive", "sectorsRecursive"),
     ("blkio.bfq.io_service_time_recursive", "ioServiceTimeRecursive"),
     ("blkio.bfq.io_wait_time_recursive", "ioWaitTimeRecursive"),
     ("blkio.bfq.io_merged_recursive", "ioMergedRecursive"),
     ("blkio.bfq.io_queued_recursive", "ioQueueRecursive"),
     ("blkio.bfq.time_recursive", "ioTimeRecursive"),
     ("blkio.bfq.io_serviced_recursive", "ioServicedRecursive"),
     ("blkio.bfq.io_service_bytes_recursive", "ioServiceBytesRecursive")),
    (("blkio.bfq.io_serviced_recursive", "ioServicedRecursive"),
     ("blkio.bfq.io_service_bytes_recursive", "ioServiceBytesRecursive")),
    (("blkio.sectors_recursive", "sectorsRecursive"),
     ("blkio.io_service_time_recursive", "ioServiceTimeRecursive"),
     ("blkio.io_wait_time_recursive", "ioWaitTimeRecursive"),
     ("blkio.io_merged_recursive", "ioMergedRecursive"),
     ("blkio.io_queued_recursive", "ioQueueRecursive"),
     ("blkio.time_recursive", "ioTimeRecursive"),
     ("blkio.io_serviced_recursive", "ioServicedRecursive"),
     ("blkio.io_service_bytes_recursive", "ioServiceBytesRecursive")),
    (("blkio.throttle.io_serviced_recursive", "ioServicedRecursive"),
     ("blkio.throttle.io_service_bytes_recursive", "ioServiceBytesRecursive")),
    (("blkio.throttle.io_serviced", "ioServicedRecursive"),
     ("blkio.throttle.io_service_bytes", "ioServiceBytesRecursive")),
)

# types.Blkio's field order
_BLKIO_KEYS = ("ioServiceBytesRecursive", "ioServicedRecursive", "ioQueueRecursive",
               "ioServiceTimeRecursive", "ioWaitTimeRecursive", "ioMergedRecursive",
               "ioTimeRecursive", "sectorsRecursive")


def blkio_v1(directory: str) -> dict | None:
    if not os.path.isdir(directory):
        return None
    found: dict[str, list[dict]] = {}
    for files in _BLKIO_SETS:
        first = parse_blkio(read_text(directory, files[0][0]) or "")
        if not first:
            continue
        found[files[0][1]] = first
        for name, key in files[1:]:
            entries = parse_blkio(read_text(directory, name) or "")
            if not entries:
                break  # runc stops here too, keeping what it has
            found[key] = entries
        break
    out: dict = {"ioServiceBytesRecursive": [], "ioServicedRecursive": []}
    for key in _BLKIO_KEYS:
        if found.get(key):
            out[key] = found[key]
    return out


def parse_io_stat(text: str) -> dict:
    """io.stat ("MAJ:MIN rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…") in v1 terms."""
    service_bytes: list[dict] = []
    serviced: list[dict] = []
    ops = {"rbytes": ("Read", service_bytes), "wbytes": ("Write", service_bytes),
           "rios": ("Read", serviced), "wios": ("Write", serviced)}
    for line in text.splitlines():
        device, *fields = line.split() or [""]
        major, sep, minor = device.partition(":")
        if not sep or not major.isdigit() or not minor.isdigit():
            continue
        for field in fields:
            key, _, value = field.partition("=")
            if key in ops and value.isdigit():
                op, into = ops[key]
                into.append({"major": int(major), "minor": int(minor), "op": op,
                             "value": int(value)})
    return {"ioServiceBytesRecursive": service_bytes, "ioServicedRecursive": serviced}


def io_v2(directory: str, psi: bool = True) -> dict | None:
    text = read_text(directory, "io.stat")
    if text is None:
        return None
    out = parse_io_stat(text)
    pressure = _psi(directory, "io.pressure") if psi else None
    if pressure:
        out["psi"] = pressure
    return out


# --- hugetlb ------------------------------------------------------------------------


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _page_sizes(directory: str, suffix: str) -> list[str]:
    """Page sizes ("1GB", "2MB") that have a hugetlb.<size>.<suffix> file, sorted (as Go
    sorts map keys)."""
    sizes = []
    for name in _listdir(directory):
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "hugetlb" and parts[2] == suffix:
            sizes.append(parts[1])
    return sorted(sizes)


def hugetlb_v1(directory: str) -> dict | None:
    out = {}
    for size in _page_sizes(directory, "usage_in_bytes"):
        out[size] = {"usage": read_uint(directory, f"hugetlb.{size}.usage_in_bytes") or 0,
                     "max": read_uint(directory, f"hugetlb.{size}.max_usage_in_bytes") or 0,
                     "failcnt": read_uint(directory, f"hugetlb.{size}.failcnt") or 0}
    return out or None


def hugetlb_v2(directory: str) -> dict | None:
    out = {}
    for size in _page_sizes(directory, "current"):
        events = read_flat_keyed(directory, f"hugetlb.{size}.events") or {}
        # cgroup2 keeps no peak for hugetlb; runc leaves max at 0 as well.
        out[size] = {"usage": read_uint(directory, f"hugetlb.{size}.current") or 0,
                     "max": 0, "failcnt": events.get("max", 0)}
    return out or None


# --- whole cgroups ------------------------------------------------------------------


def _put(data: dict, key: str, value: dict | None) -> None:
    if value is not None:
        data[key] = value


def v1_stats(paths: dict[str, str], unified: str | None = None) -> dict:
    """Stats of a v1 cgroup: `paths` is controller → directory; `unified` the cgroup2
    directory of a hybrid host, read (v2 files) for controllers no v1 mount has."""
    data: dict = {}
    if "cpu" in paths or "cpuacct" in paths:
        _put(data, "cpu", cpu_v1(paths.get("cpuacct"), paths.get("cpu")))
    elif unified:
        _put(data, "cpu", cpu_v2(unified, psi=False))  # cpu.stat is in every cgroup2 dir
    if "cpuset" in paths:
        _put(data, "cpuset", cpuset_v1(paths["cpuset"]))
    if "memory" in paths:
        _put(data, "memory", memory_v1(paths["memory"]))
    elif unified:
        _put(data, "memory", memory_v2(unified, psi=False))
    if "pids" in paths:
        _put(data, "pids", pids_stats(paths["pids"]))
    elif unified:
        _put(data, "pids", pids_stats(unified))
    if "blkio" in paths:
        _put(data, "blkio", blkio_v1(paths["blkio"]))
    elif unified:
        _put(data, "blkio", io_v2(unified, psi=False))
    if "hugetlb" in paths:
        _put(data, "hugetlb", hugetlb_v1(paths["hugetlb"]))
    elif unified:
        _put(data, "hugetlb", hugetlb_v2(unified))
    return data


def v2_stats(directory: str) -> dict:
    """Stats of a cgroup on a cgroup2 hierarchy (controllers not enabled there are left out)."""
    data: dict = {}
    _put(data, "cpu", cpu_v2(directory))
    _put(data, "memory", memory_v2(directory))
    _put(data, "pids", pids_stats(directory, count_procs=True))
    _put(data, "blkio", io_v2(directory))
    _put(data, "hugetlb", hugetlb_v2(directory))
    return data


def read_stats(manager) -> dict:
    """runc's `events --stats` data for the cgroup of `manager` (a V1Manager or V2Manager)."""
    paths = dict(manager.paths)
    if manager.version == 2:
        return v2_stats(paths[""])
    unified = paths.pop("", None)
    return v1_stats(paths, unified)
