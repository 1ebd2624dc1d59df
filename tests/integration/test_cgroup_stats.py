"""cgroup stats and OOM events from a real cgroup on this host (v1, hybrid or v2).

Each test makes /corral-stats-test-<random> with open_manager + create; the
fixture kills (by PID) the processes a test started and destroys the cgroup,
whatever happened.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from corral.runtime.cgroups import CgroupError, open_manager
from corral.runtime.cgroups.common import discover
from corral.runtime.cgroups.stats import read_stats
from corral.runtime.events import follow, stats_event
from corral.spec import fastjson

pytestmark = pytest.mark.root

MiB = 1 << 20
HOST = discover()


class Cgroup:
    def __init__(self) -> None:
        self.name = f"corral-stats-test-{uuid.uuid4().hex[:12]}"
        self.manager = open_manager("/" + self.name, "x")
        self.procs: list[subprocess.Popen] = []

    def python(self, code: str) -> subprocess.Popen:
        """A python child that joins the cgroup before it runs `code`."""
        proc = subprocess.Popen([sys.executable, "-S", "-c", code],
                                preexec_fn=lambda: self.manager.join(0),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    try:
                        stream.close()
                    except OSError:
                        pass
        try:
            self.manager.destroy(timeout=10)
        except CgroupError:
            pass


@pytest.fixture
def cgroup():
    made = Cgroup()
    try:
        yield made
    finally:
        made.cleanup()
    assert not made.manager.exists(), f"cgroup {made.name} left behind"
    assert glob.glob(f"/sys/fs/cgroup/*/{made.name}") == []


BUSY = """
import sys, time
block = b"\\1" * (24 << 20)          # 24 MiB, every page touched
end = time.monotonic() + 0.3
n = 0
while time.monotonic() < end:       # a little CPU
    n += 1
print("ready", flush=True)
sys.stdin.read()                    # until the test is done
"""


def test_read_stats_of_a_live_cgroup(cgroup):
    cgroup.manager.create({"memory": {"limit": 64 * MiB}, "pids": {"limit": 50}})
    child = cgroup.python(BUSY)
    assert child.stdout.readline() == "ready\n"

    data = read_stats(cgroup.manager)
    fastjson.loads(fastjson.dumps(data))

    usage = data["cpu"]["usage"]
    assert usage["total"] > 0
    assert usage["user"] + usage["kernel"] > 0
    if cgroup.manager.version == 1:
        assert len(usage["percpu"]) == os.cpu_count() or len(usage["percpu"]) >= 1
        assert sum(usage["percpu"]) > 0
    assert set(data["cpu"]["throttling"]) == {"periods", "throttledPeriods", "throttledTime"}

    memory = data["memory"]
    assert memory["usage"]["limit"] == 64 * MiB
    assert 24 * MiB <= memory["usage"]["usage"] <= 64 * MiB
    assert memory["usage"]["max"] >= memory["usage"]["usage"] or memory["usage"]["max"] == 0
    assert memory["raw"]  # memory.stat, whatever the kernel puts there
    if cgroup.manager.version == 1:
        assert memory["raw"]["rss"] + memory["raw"].get("shmem", 0) > 0
    else:
        assert memory["raw"]["anon"] > 0

    assert data["pids"]["current"] >= 1
    assert data["pids"]["limit"] == 50
    assert "ioServiceBytesRecursive" in data.get("blkio", {"ioServiceBytesRecursive": []})
    if HOST.unified is not None and not HOST.pure_v2 and "hugetlb" not in HOST.v1 and \
            os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        # hybrid: hugetlb comes from the cgroup2 directory
        assert data["hugetlb"]["2MB"] == {"usage": 0, "max": 0, "failcnt": 0}

    event = stats_event("x", cgroup.manager)
    assert event["type"] == "stats" and event["id"] == "x" and event["data"]["pids"]

    child.stdin.close()
    assert child.wait(timeout=30) == 0


def test_read_stats_of_a_cgroup_that_is_gone(cgroup):
    cgroup.manager.create({"pids": {"limit": 10}})
    cgroup.manager.destroy()
    assert read_stats(cgroup.manager) == {}


OOM = """
import sys
sys.stdin.readline()                # wait until `follow` has read the OOM count
hog = []
while True:
    hog.append(b"\\1" * (4 << 20))   # 4 MiB at a time, pages touched
"""


def test_follow_emits_an_oom_event(cgroup):
    # memory+swap equal to memory: the hog cannot escape into swap.
    cgroup.manager.create({"memory": {"limit": 16 * MiB, "swap": 16 * MiB},
                           "pids": {"limit": 50}})
    before = cgroup.manager.oom_kills()
    child = cgroup.python(OOM)
    deadline = time.monotonic() + 30
    started = False

    def alive() -> bool:
        nonlocal started
        if not started:  # follow has its starting OOM count now: let the hog go
            started = True
            child.stdin.write("go\n")
            child.stdin.flush()
        return child.poll() is None and time.monotonic() < deadline

    lines: list[str] = []
    follow("oomer", cgroup.manager, alive, 0.1, lines.append)

    assert child.poll() == -signal.SIGKILL, "the child was not OOM-killed"
    assert cgroup.manager.oom_kills() > before
    events = [fastjson.loads(line) for line in lines]
    kinds = [e["type"] for e in events]
    assert "oom" in kinds, kinds
    assert all(e["id"] == "oomer" for e in events)
    assert events[kinds.index("oom")] == {"type": "oom", "id": "oomer"}
    stats = [e for e in events if e["type"] == "stats"]
    for event in stats:
        assert event["data"]["memory"]["usage"]["limit"] == 16 * MiB


@pytest.mark.skipif(HOST.unified is None, reason="needs a cgroup2 mount")
def test_read_stats_through_a_v2_manager():
    """The v2 reader on this host's cgroup2 mount (the whole host on pure v2; on a hybrid
    host .../unified, where cpu.stat and cgroup.procs are there even without controllers)."""
    from corral.runtime.cgroups import V2Manager

    root = HOST.unified.mountpoint
    manager = V2Manager(os.path.join(root, f"corral-stats-test-{uuid.uuid4().hex[:12]}"),
                        root=root)
    child = None
    try:
        manager.create({"pids": {"limit": 50}} if HOST.pure_v2 else {})
        child = subprocess.Popen([sys.executable, "-S", "-c", BUSY],
                                 preexec_fn=lambda: manager.join(0),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        data = read_stats(manager)
        assert data["cpu"]["usage"]["total"] > 0
        assert data["cpu"]["usage"]["percpu"] == []
        assert data["pids"]["current"] == 1
        if HOST.pure_v2:
            assert data["pids"]["limit"] == 50
            assert data["memory"]["usage"]["usage"] >= 24 * MiB
    finally:
        if child is not None:
            child.kill()
            child.wait(timeout=30)
            child.stdin.close()
            child.stdout.close()
        manager.destroy(timeout=10)
    assert not manager.exists()
