"""corrald answers status and stats without waking shims (shim/liveness.py), and still
sees at once when a shim dies."""

from __future__ import annotations

import os
import signal
import time

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import NOTHING_LEFT, running_corrald


@pytest.fixture
def daemon():
    with running_corrald("corralt5", "10.99.12.0/24") as daemon:
        yield daemon


def context_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def test_status_list_and_stats_leave_the_shim_asleep(daemon):
    pod_id, pod_config = daemon.run_pod("quiet")
    container_id = daemon.create_container(pod_id, pod_config, "sleeper", ["sleep", "60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    (shim_pid,) = daemon.shim_pids()
    time.sleep(0.2)
    before = context_switches(shim_pid)
    for _ in range(20):
        status = daemon.container_state(container_id)
        assert status.state == api_pb2.CONTAINER_RUNNING
        listed = daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
        assert [c.id for c in listed] == [container_id]
        stats = daemon.runtime.ContainerStats(
            api_pb2.ContainerStatsRequest(container_id=container_id)).stats
        assert stats.memory.working_set_bytes.value > 0
        assert stats.cpu.usage_core_nano_seconds.value > 0
    assert context_switches(shim_pid) == before


def test_a_killed_shim_is_seen_without_a_restart(daemon):
    pod_id, pod_config = daemon.run_pod("fragile")
    running = daemon.create_container(pod_id, pod_config, "runner", ["sleep", "60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=running))
    created = daemon.create_container(pod_id, pod_config, "waiter", ["sleep", "60"])
    (shim_pid,) = daemon.shim_pids()
    with open(f"/proc/{shim_pid}/task/{shim_pid}/children") as f:
        orphans = [int(pid) for pid in f.read().split()]
    assert len(orphans) == 2  # the runner's sleep and the waiter's init
    # The created container's init outlives the shim for now (it waits to be started):
    # the shim's lock must not live on in it.
    os.kill(shim_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{shim_pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    for container_id in (running, created):
        status = daemon.container_state(container_id)
        assert status.state == api_pb2.CONTAINER_EXITED, container_id
        assert status.exit_code == 255
        assert "shim lost" in status.reason
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.leftovers() == NOTHING_LEFT
    assert [pid for pid in orphans if alive(pid)] == []  # killed with their pod


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
