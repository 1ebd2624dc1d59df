"""Managing a live container: pause/resume, ps, update, features."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import PURE_V2, cgroup_dirs, cgroup_file

pytestmark = pytest.mark.root


@pytest.fixture
def running(runtime, bundle):
    """A running container with a child process, and its ID."""
    bundle.linux["resources"]["memory"] = {"limit": 256 * 2**20}
    bundle.write(["sh", "-c", "sleep 1000 & while :; do sleep 0.05; done"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    return cid


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def frozen(cid: str) -> bool:
    if PURE_V2:
        return cgroup_file(cid, "", "cgroup.freeze") == "1"
    return cgroup_file(cid, "freezer/freezer.state", "") == "FROZEN"


def memory_limit(cid: str) -> str:
    return cgroup_file(cid, "memory/memory.limit_in_bytes", "memory.max")


def test_pause_freezes_and_resume_thaws(runtime, running):
    runtime("pause", running)
    assert runtime.status(running) == "paused"
    assert frozen(running)
    pids = json.loads(runtime("ps", "--format", "json", running).stdout)
    # A frozen task sleeps in the freezer, in state D or S, and makes no progress.
    ticks = [open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11] for p in pids]
    time.sleep(0.3)
    assert ticks == [open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11]
                     for p in pids]
    again = runtime("pause", running, check=False)
    assert again.returncode == 1

    runtime("resume", running)
    assert runtime.status(running) == "running"
    assert not frozen(running)
    assert runtime("resume", running, check=False).returncode == 1
    runtime("delete", "--force", running)


def test_a_paused_container_can_be_force_deleted(runtime, running):
    runtime("pause", running)
    runtime("delete", "--force", running)
    assert cgroup_dirs(running) == []


def test_ps_lists_the_containers_processes(runtime, running):
    init = runtime.state(running)["pid"]
    deadline = time.monotonic() + 10
    while len(pids := json.loads(runtime("ps", "--format", "json", running).stdout)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert init in pids
    table = runtime("ps", running).stdout.splitlines()
    assert table[0].split()[:2] == ["UID", "PID"]
    assert any("sleep 1000" in line for line in table[1:])
    assert str(init) in [line.split()[1] for line in table[1:]]
    assert not any("pytest" in line for line in table), "only the container's processes"
    custom = runtime("ps", running, "-o", "pid,comm").stdout.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"] and any("sleep" in x for x in custom)


def test_update_changes_the_live_cgroup(runtime, running, tmp_path):
    runtime("update", "--memory", "128m", "--pids-limit", "50", "--cpu-quota", "50000",
            "--cpu-period", "100000", running)
    assert memory_limit(running) == str(128 * 2**20)
    assert cgroup_file(running, "pids/pids.max", "pids.max") == "50"
    if PURE_V2:
        assert cgroup_file(running, "", "cpu.max") == "50000 100000"
    else:
        assert cgroup_file(running, "cpu/cpu.cfs_quota_us", "") == "50000"

    resources = tmp_path / "resources.json"
    resources.write_text(json.dumps({"memory": {"limit": 96 * 2**20}, "cpu": {"shares": 512}}))
    runtime("update", "--resources", str(resources), running)
    assert memory_limit(running) == str(96 * 2**20)
    # cpu.weight is cpu.shares mapped linearly from [2, 262144] to [1, 10000] (as runc).
    assert cgroup_file(running, "cpu/cpu.shares", "cpu.weight") == ("20" if PURE_V2 else "512")

    from_stdin = runtime("update", "-r", "-", running,
                         input=json.dumps({"pids": {"limit": 40}}).encode())
    assert from_stdin.returncode == 0
    assert cgroup_file(running, "pids/pids.max", "pids.max") == "40"

    bad = runtime("update", "--resources", "-", running, check=False,
                  input=b'{"memory": {"limit": "lots"}}')
    assert bad.returncode == 1 and "linux.resources.memory.limit" in bad.stderr
    assert memory_limit(running) == str(96 * 2**20)
    runtime("delete", "--force", running)


def test_features_describes_this_runtime(runtime):
    features = json.loads(runtime("features").stdout)
    assert features["ociVersionMax"].startswith("1.")
    assert "CAP_SYS_ADMIN" in features["linux"]["capabilities"]
    assert set(features["linux"]["namespaces"]) >= {"pid", "network", "mount", "user", "time"}
    assert "rbind" in features["mountOptions"] and "poststop" in features["hooks"]
