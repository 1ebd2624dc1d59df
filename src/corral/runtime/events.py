"""`corral-runtime events`: runc's JSON events (stats and OOM), read from the cgroup.

One JSON object a line, as runc prints them:
  {"type": "stats", "id": ID, "data": {"cpu": …, "memory": …, "pids": …, "blkio": …}}
  {"type": "oom", "id": ID}
Fields follow runc's types/events.go; a controller the host lacks is left out.
"""

from __future__ import annotations

import os
import time

_USER_HZ = os.sysconf("SC_CLK_TCK")


def _read(directory: str, name: str) -> str | None:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _number(directory: str, name: str) -> int | None:
    text = _read(directory, name)
    if text is None:
        return None
    return 0 if text == "max" else int(text)


def _key_values(directory: str, name: str) -> dict[str, int]:
    text = _read(directory, name) or ""
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


# --- cgroup v1 ------------------------------------------------------------------------------

def _v1_stats(paths: dict[str, str]) -> dict:
    data: dict = {}
    if "cpuacct" in paths:
        d = paths["cpuacct"]
        ticks = _key_values(d, "cpuacct.stat")
        to_ns = 1_000_000_000 // _USER_HZ
        data["cpu"] = {"usage": {
            "total": _number(d, "cpuacct.usage") or 0,
            "percpu": [int(x) for x in (_read(d, "cpuacct.usage_percpu") or "").split()],
            "kernel": ticks.get("system", 0) * to_ns, "user": ticks.get("user", 0) * to_ns}}
    if "cpu" in paths:
        throttle = _key_values(paths["cpu"], "cpu.stat")
        data.setdefault("cpu", {})["throttling"] = {
            "periods": throttle.get("nr_periods", 0),
            "throttledPeriods": throttle.get("nr_throttled", 0),
            "throttledTime": throttle.get("throttled_time", 0)}
    if "memory" in paths:
        d = paths["memory"]
        raw = _key_values(d, "memory.stat")
        memory = {"cache": raw.get("total_cache", raw.get("cache", 0)),
                  "usage": _v1_memory_entry(d, "memory"), "raw": raw}
        if os.path.exists(os.path.join(d, "memory.memsw.usage_in_bytes")):
            memory["swap"] = _v1_memory_entry(d, "memory.memsw")
        memory["kernel"] = _v1_memory_entry(d, "memory.kmem")
        data["memory"] = memory
    if "pids" in paths:
        data["pids"] = {"current": _number(paths["pids"], "pids.current") or 0,
                        "limit": _number(paths["pids"], "pids.max") or 0}
    if "blkio" in paths:
        d = paths["blkio"]
        data["blkio"] = {
            "ioServiceBytesRecursive": _v1_blkio(d, "blkio.throttle.io_service_bytes_recursive"),
            "ioServicedRecursive": _v1_blkio(d, "blkio.throttle.io_serviced_recursive")}
    return data


def _v1_memory_entry(directory: str, prefix: str) -> dict:
    return {"limit": _number(directory, f"{prefix}.limit_in_bytes") or 0,
            "usage": _number(directory, f"{prefix}.usage_in_bytes") or 0,
            "max": _number(directory, f"{prefix}.max_usage_in_bytes") or 0,
            "failcnt": _number(directory, f"{prefix}.failcnt") or 0}


def _v1_blkio(directory: str, name: str) -> list[dict]:
    entries = []
    for line in (_read(directory, name) or "").splitlines():
        fields = line.split()
        if len(fields) == 3 and ":" in fields[0]:
            major, minor = fields[0].split(":")
            entries.append({"major": int(major), "minor": int(minor), "op": fields[1],
                            "value": int(fields[2])})
    return entries


# --- cgroup v2 ------------------------------------------------------------------------------

def _v2_stats(directory: str) -> dict:
    data: dict = {}
    cpu = _key_values(directory, "cpu.stat")
    if cpu:
        data["cpu"] = {
            "usage": {"total": cpu.get("usage_usec", 0) * 1000,
                      "kernel": cpu.get("system_usec", 0) * 1000,
                      "user": cpu.get("user_usec", 0) * 1000, "percpu": []},
            "throttling": {"periods": cpu.get("nr_periods", 0),
                           "throttledPeriods": cpu.get("nr_throttled", 0),
                           "throttledTime": cpu.get("throttled_usec", 0) * 1000}}
    if os.path.exists(os.path.join(directory, "memory.current")):
        raw = _key_values(directory, "memory.stat")
        events = _key_values(directory, "memory.events")
        data["memory"] = {
            "cache": raw.get("file", 0), "raw": raw,
            "usage": {"usage": _number(directory, "memory.current") or 0,
                      "limit": _number(directory, "memory.max") or 0,
                      "max": _number(directory, "memory.peak") or 0,
                      "failcnt": events.get("max", 0)},
            "swap": {"usage": _number(directory, "memory.swap.current") or 0,
                     "limit": _number(directory, "memory.swap.max") or 0}}
    if os.path.exists(os.path.join(directory, "pids.current")):
        data["pids"] = {"current": _number(directory, "pids.current") or 0,
                        "limit": _number(directory, "pids.max") or 0}
    io = _read(directory, "io.stat")
    if io is not None:
        service_bytes, serviced = [], []
        for line in io.splitlines():
            device, *counters = line.split()
            major, minor = (int(x) for x in device.split(":"))
            values = dict(c.split("=") for c in counters if "=" in c)
            for op, key, into in (("Read", "rbytes", service_bytes),
                                  ("Write", "wbytes", service_bytes),
                                  ("Read", "rios", serviced), ("Write", "wios", serviced)):
                into.append({"major": major, "minor": minor, "op": op,
                             "value": int(values.get(key, 0))})
        data["blkio"] = {"ioServiceBytesRecursive": service_bytes,
                         "ioServicedRecursive": serviced}
    return data


# --- events ---------------------------------------------------------------------------------

def stats_event(container_id: str, manager) -> dict:
    paths = dict(manager.paths)
    if manager.version == 2:
        data = _v2_stats(paths[""])
    else:
        paths.pop("", None)
        data = _v1_stats(paths)
    return {"type": "stats", "id": container_id, "data": data}


def follow(container_id: str, manager, alive, interval: float, write,
           poll: float = 0.1) -> None:
    """Stats every `interval` seconds and an "oom" event whenever the OOM count grows,
    until `alive()` is false."""
    from corral.spec import fastjson

    kills = manager.oom_kills()
    next_stats = time.monotonic()
    while alive():
        now = time.monotonic()
        count = manager.oom_kills()
        if count > kills:
            kills = count
            write(fastjson.dumps({"type": "oom", "id": container_id}))
        if now >= next_stats:
            write(fastjson.dumps(stats_event(container_id, manager)))
            next_stats = now + interval
        time.sleep(min(poll, interval))
    if manager.oom_kills() > kills:  # the kill that ended it
        write(fastjson.dumps({"type": "oom", "id": container_id}))


def parse_duration(text: str) -> float:
    """Go's durations as runc takes them: 5s, 100ms, 1m, 1.5s."""
    units = (("ms", 0.001), ("us", 1e-6), ("ns", 1e-9), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, scale in units:
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)
