"""corrald after a host reboot: /run (its state dir) is wiped, every process and mount is gone,
only the root (metadata, snapshots, CNI cache) and the CNI plugins' IP allocations remain.

The reboot is simulated: corrald, its shims and the containers are SIGKILLed by PID, every
mount under the state dir is unmounted, the pods' host-side veths are deleted (as the kernel
does when a netns dies) and the state dir is removed.  The restarted corrald must report the
pods NOTREADY and their containers EXITED, release the pods' IPs and iptables rules through
CNI DEL, and then stop and remove them leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from cri_api.v1 import api_pb2

from corral.images.service import ImageService
from tests.integration.corrald import (
    NOTHING_LEFT,
    Corrald,
    cgroup_pids,
    cni_conflist,
    kill_pids,
    short_base,
)
from tests.integration.test_network import free_port, remove_rules_of

BRIDGE = "corraltr0"
SUBNET = "10.99.41.0/24"
NETWORK = f"{BRIDGE}-net"


@pytest.fixture
def daemon():
    """A corrald whose network also masquerades (bridge ipMasq), so both kinds of per-pod
    iptables rules (masquerade and portmap DNAT) are there to be released."""
    daemon = Corrald(short_base(), bridge=BRIDGE, subnet=SUBNET)
    conflist = cni_conflist(BRIDGE, SUBNET, str(daemon.base / "ipam"))
    conflist["plugins"][0]["ipMasq"] = True
    (daemon.cni_dir / "10-test.conflist").write_text(json.dumps(conflist))
    try:
        daemon.import_busybox()
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()
        remove_rules_of(NETWORK)  # only if the test failed: a leak is asserted on first


def rules_of(pod_id: str) -> list[str]:
    """The iptables rules the plugins tagged with the pod (masquerade and portmap DNAT)."""
    output = subprocess.run(["iptables-save"], capture_output=True, text=True,
                            check=True).stdout
    return [line for line in output.splitlines() if pod_id in line]


def allocations(daemon: Corrald) -> list[str]:
    """host-local's IP allocations (its dataDir outlives a reboot, like /var/lib/cni/networks)."""
    return sorted(p.name for p in (daemon.base / "ipam" / NETWORK).glob("*")
                  if p.name[0].isdigit())


def simulate_reboot(daemon: Corrald) -> None:
    pids = set(daemon.shim_pids()) | cgroup_pids(daemon.pod_cgroup_parent)
    assert pids
    daemon.kill(signal.SIGKILL)
    kill_pids(pids)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        assert time.monotonic() < deadline, "processes outlived SIGKILL"
        time.sleep(0.02)
    state = str(daemon.state)
    for mount in reversed(daemon.mounts()):
        if mount.startswith(state + "/"):
            subprocess.run(["umount", "-l", mount], check=True)
    for veth in os.listdir(f"/sys/class/net/{BRIDGE}/brif"):
        subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)
    shutil.rmtree(daemon.state)


def files_named(directory, *ids: str) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*") if any(i in p.name for i in ids))


def test_reboot_leaves_pods_notready_and_releases_their_network(daemon):
    host_port = free_port()
    ready_pod, ready_config = daemon.run_pod("web", port_mappings=[api_pb2.PortMapping(
        host_port=host_port, container_port=80, protocol=api_pb2.TCP)])
    running = daemon.create_container(ready_pod, ready_config, "sleeper", ["sleep", "600"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=running))
    stopped_pod, stopped_config = daemon.run_pod("done")
    stopped = daemon.create_container(stopped_pod, stopped_config, "sleeper", ["sleep", "600"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=stopped))
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=stopped_pod))
    stopped_status = daemon.container_state(stopped)
    assert len(allocations(daemon)) == 1  # the stopped pod's IP is released already
    assert any("MASQUERADE" in rule for rule in rules_of(ready_pod))
    assert any(str(host_port) in rule for rule in rules_of(ready_pod))

    simulate_reboot(daemon)
    daemon.start()

    pods = {pod.id: pod.state for pod in
            daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items}
    assert pods == {ready_pod: api_pb2.SANDBOX_NOTREADY, stopped_pod: api_pb2.SANDBOX_NOTREADY}
    status = daemon.container_state(running)
    assert (status.state, status.exit_code, status.reason) == \
        (api_pb2.CONTAINER_EXITED, 255, "Unknown")
    assert status.finished_at > 0
    assert daemon.container_state(stopped) == stopped_status  # its recorded end is kept
    # CNI DEL ran for the pod whose netns the reboot took: its IP and rules are released.
    assert allocations(daemon) == []
    assert rules_of(ready_pod) == []
    assert daemon.leftovers()["veths"] == []

    # A new pod gets an address and a working network.
    new_pod, new_config = daemon.run_pod("after")
    ip = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=new_pod)).status.network.ip
    assert ip.startswith("10.99.41.")
    container = daemon.create_container(new_pod, new_config, "c", ["sleep", "600"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container))
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container, timeout=10, cmd=["ping", "-c", "1", "-W", "5", "10.99.41.1"]))
    assert reply.exit_code == 0, reply.stdout + reply.stderr

    for pod_id in (ready_pod, stopped_pod, new_pod):
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    assert daemon.leftovers() == NOTHING_LEFT
    assert allocations(daemon) == []
    assert rules_of(new_pod) == []
    ids = (ready_pod, stopped_pod, new_pod, running, stopped, container)
    assert files_named(daemon.root, *ids) == []
    service = ImageService(str(daemon.root))
    try:
        assert [c for c in (running, stopped, container) if service.snapshots.exists(c)] == []
    finally:
        service.close()


def test_cni_cache_of_the_old_default_dir_is_adopted(daemon):
    """corralds before this one kept the CNI cache in <state>/cni: a pod set up by one is
    still torn down (its IP released) by a corrald that keeps the cache under its root."""
    pod_id, _ = daemon.run_pod("older")
    cache = daemon.root / "cni" / f"{pod_id}.json"
    assert cache.exists() and allocations(daemon) != []
    daemon.kill(signal.SIGKILL)  # the shim and the pod live on
    (daemon.state / "cni").mkdir()
    cache.rename(daemon.state / "cni" / cache.name)
    daemon.start()
    assert not (daemon.state / "cni").exists() and cache.exists()
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_READY and status.network.ip.startswith("10.99.41.")
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.leftovers() == NOTHING_LEFT
    assert rules_of(pod_id) == [] and not cache.exists()


def test_pod_whose_netns_pin_is_gone_is_not_ready(daemon):
    """The same without a reboot (the pin unmounted behind corrald's back): the shim still
    runs, so the containers are stopped through it and keep their real exit codes."""
    pod_id, config = daemon.run_pod("unpinned")
    container_id = daemon.create_container(pod_id, config, "sleeper", ["sleep", "600"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    daemon.kill(signal.SIGKILL)
    subprocess.run(["umount", str(daemon.state / "pods" / pod_id / "ns" / "net")], check=True)
    daemon.start()
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_NOTREADY
    container = daemon.container_state(container_id)
    assert (container.state, container.exit_code) == (api_pb2.CONTAINER_EXITED, 137)
    assert allocations(daemon) == [] and rules_of(pod_id) == []
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.leftovers() == NOTHING_LEFT
