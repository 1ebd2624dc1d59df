"""corrald answers status and stats without waking shims (shim/liveness.py), and still
sees at once when a shim dies."""

from __future__ import annotations

import os
import signal
import time

import grpc
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


def container_pids(daemon, container_id: str) -> set[int]:
    """The live processes in the container's cgroups (every hierarchy), read from /proc."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                paths = [line.rstrip("\n").split(":", 2)[2] for line in f]
        except OSError:
            continue
        if any(path.rstrip("/").endswith("/" + container_id) for path in paths) \
                and alive(int(pid)):
            found.add(int(pid))
    return found


def kill_shim(daemon) -> None:
    (shim_pid,) = daemon.shim_pids()
    os.kill(shim_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(shim_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(shim_pid)


def pod_state(daemon, pod_id: str) -> int:
    return daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.state


@pytest.mark.parametrize("first_look", ["container_status", "list_containers", "pod_status",
                                        "list_pods"])
def test_a_killed_shim_leaves_no_process_running(daemon, first_look):
    """As containerd when a shim disconnects: what is left of the pod's containers is killed
    (all of it: a host-PID container's children outlive its init) before any is reported
    EXITED, and the pod is NOTREADY."""
    pod_id, pod_config = daemon.run_pod("lost")
    sleeper = daemon.create_container(pod_id, pod_config, "sleeper", ["sleep", "600"])
    host_pid = daemon.container_config("forker", ["sh", "-c", "sleep 601 & sleep 602 & wait"])
    host_pid.linux.security_context.namespace_options.pid = api_pb2.NODE
    forker = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=host_pid, sandbox_config=pod_config)).container_id
    waiter = daemon.create_container(pod_id, pod_config, "waiter", ["sleep", "600"])
    for container_id in (sleeper, forker):
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    deadline = time.monotonic() + 10
    while len(container_pids(daemon, forker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    before = {cid: container_pids(daemon, cid) for cid in (sleeper, forker, waiter)}
    assert [len(before[cid]) for cid in (sleeper, forker, waiter)] == [1, 3, 1]
    kill_shim(daemon)
    time.sleep(0.3)  # nothing asked yet: the processes still run, unseen
    look = {
        "container_status": lambda: daemon.container_state(sleeper),
        "list_containers": lambda: daemon.runtime.ListContainers(
            api_pb2.ListContainersRequest()),
        "pod_status": lambda: pod_state(daemon, pod_id),
        "list_pods": lambda: daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()),
    }
    look[first_look]()
    # Once corrald has looked, nothing of the containers runs, whatever it said.
    left = {cid: container_pids(daemon, cid) for cid in before}
    assert left == {cid: set() for cid in before}
    assert [pid for pids in before.values() for pid in pids if alive(pid)] == []
    assert daemon.leftovers()["processes"] == []
    for container_id in (sleeper, forker, waiter):
        status = daemon.container_state(container_id)
        assert (status.state, status.exit_code) == (api_pb2.CONTAINER_EXITED, 255)
        assert status.reason.startswith("shim lost")
    assert pod_state(daemon, pod_id) == api_pb2.SANDBOX_NOTREADY
    (listed,) = daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert listed.state == api_pb2.SANDBOX_NOTREADY
    with pytest.raises(grpc.RpcError) as refused:
        daemon.create_container(pod_id, pod_config, "late", ["sleep", "1"])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert daemon.leftovers() == NOTHING_LEFT
