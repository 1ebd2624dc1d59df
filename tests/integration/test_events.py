"""`events`: runc's stats and OOM events from the container's cgroup."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from .conftest import PURE_V2

pytestmark = pytest.mark.root


def test_stats_once(runtime, bundle):
    bundle.linux["resources"].update(memory={"limit": 64 * 2**20}, pids={"limit": 30})
    bundle.write(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
                              "sleep 1000 & wait"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    deadline = time.monotonic() + 30  # until the loop is done and sleep runs (slow under TCG)
    while True:
        event = json.loads(runtime("events", "--stats", cid).stdout)
        if event["data"]["pids"]["current"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert event["type"] == "stats" and event["id"] == cid
    data = event["data"]
    assert data["cpu"]["usage"]["total"] > 0
    # cgroup v2 has no per-CPU usage (cpu.stat only); runc leaves percpu empty there too.
    assert (data["cpu"]["usage"]["percpu"] == []) if PURE_V2 else \
        len(data["cpu"]["usage"]["percpu"]) >= 1
    assert data["memory"]["usage"]["limit"] == 64 * 2**20
    assert 0 < data["memory"]["usage"]["usage"] <= 64 * 2**20
    assert data["pids"] == {"current": 2, "limit": 30}  # sh and sleep
    assert "ioServiceBytesRecursive" in data["blkio"]
    runtime("delete", "--force", cid)


def test_events_stream_stats_and_an_oom_kill(runtime, bundle):
    bundle.linux["resources"]["memory"] = {"limit": 16 * 2**20}
    bundle.write(["sh", "-c", "sleep 0.5; x=$(head -c 100000000 /dev/zero | tr '\\0' a)"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    with open(bundle.path / "events.log", "w+") as log:
        proc = subprocess.Popen(runtime.cmd("events", "--interval", "100ms", cid), stdout=log)
        try:
            assert proc.wait(timeout=30) == 0  # it ends when the container does
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        events = [json.loads(line) for line in log]
    kinds = [e["type"] for e in events]
    assert kinds.count("stats") >= 2
    assert "oom" in kinds, kinds
    assert all(e["id"] == cid for e in events)
    runtime("delete", cid)


def test_events_of_a_stopped_container(runtime, bundle):
    bundle.write(["true"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    runtime.wait_stopped(cid)
    result = runtime("events", "--stats", cid, check=False)
    assert result.returncode == 1 and "stopped" in result.stderr
