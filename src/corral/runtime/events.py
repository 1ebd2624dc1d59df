"""`corral-runtime events`: runc's JSON events (stats and OOM), read from the cgroup.

One JSON object a line, as runc prints them:
  {"type": "stats", "id": ID, "data": {"cpu": …, "memory": …, "pids": …, "blkio": …}}
  {"type": "oom", "id": ID}
"data" is runc's types.Stats (see corral.runtime.cgroups.stats); a controller
the host lacks is left out.
"""

from __future__ import annotations

import time

from corral.runtime.cgroups.stats import read_stats
from corral.spec import fastjson

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc costs 3 ms at start-up
    from collections.abc import Callable

OOM_POLL = 0.1  # seconds between looks at the OOM kill count


def stats_event(container_id: str, manager) -> dict:
    return {"type": "stats", "id": container_id, "data": read_stats(manager)}


def oom_event(container_id: str) -> dict:
    return {"type": "oom", "id": container_id}


def _oom_kills(manager, last: int) -> int:
    """The cgroup's OOM kill count; `last` when it cannot be read (the cgroup is going away)."""
    try:
        return manager.oom_kills()
    except (OSError, ValueError, RuntimeError):  # CgroupError is a RuntimeError
        return last


def follow(container_id: str, manager, is_alive: Callable[[], bool], interval: float,
           write: Callable[[str], None], *, poll: float = OOM_POLL,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """`runc events` without --stats: until `is_alive()` is false, a stats event every
    `interval` seconds (the first one after `interval`, as runc's ticker) and an "oom"
    event as soon as the cgroup's OOM kill count rises (looked at every `poll` seconds).

    `write` gets each event as one line of JSON, without the newline.
    """
    kills = _oom_kills(manager, 0)

    def check_oom() -> None:
        nonlocal kills
        count = _oom_kills(manager, kills)
        if count > kills:
            kills = count
            write(fastjson.dumps(oom_event(container_id)))

    next_stats = clock() + interval
    while is_alive():
        check_oom()
        now = clock()
        if now >= next_stats:
            write(fastjson.dumps(stats_event(container_id, manager)))
            next_stats += interval
            if next_stats <= now:  # fell behind (a slow read, a stopped process): no burst
                next_stats = now + interval
        sleep(max(0.0, min(poll, next_stats - clock())))
    check_oom()  # the kill that ended it


_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's durations as runc takes them (5s, 100ms, 1.5s, 1m30s), in seconds.

    A bare number is taken as seconds.  ValueError for anything else.
    """
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    if s[:1] in ("+", "-"):
        s = s[1:]
    if s.replace(".", "", 1).isdigit():
        return sign * float(s)
    total, i = 0.0, 0
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        if j == i or s[j:k] not in _UNITS:
            raise ValueError(f"invalid duration {text!r}")
        total += float(s[i:j]) * _UNITS[s[j:k]]
        i = k
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total
