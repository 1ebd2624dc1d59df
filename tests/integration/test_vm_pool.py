"""The vm handler's warm pool (sandbox/pool.py): VMs restored and warmed before pods ask.

One corrald with `pool = 2` in [runtimes.vm], real QEMU (TCG here), real CNI:
pods take pooled VMs and are each their own (clock, random, hostname, IP, and
traffic both ways through the tap joined after the restore); the pool refills;
a pooled VM that died is not used and its pod still starts; the pool ends
with corrald (SIGTERM), and a killed corrald's pool is ended by the next one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod, running_corrald

POOL = 2
FILL_TIMEOUT = 300  # the first slot builds the template first (~10-30 s under TCG)


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("corralp0", "10.99.41.0/24") as daemon:
        daemon.kill(signal.SIGTERM)
        daemon.config.write_text(daemon.config.read_text() + f"pool = {POOL}\n")
        daemon.start()
        yield daemon


@pytest.fixture
def clean(corrald):
    yield corrald
    remove_every_pod(corrald)


def pool_status(daemon) -> dict:
    info = daemon.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    (vm,) = [h for h in json.loads(info["runtimeHandlers"]) if h["name"] == "vm"]
    return vm["pool"]


def wait_for_pool(daemon, ready: int = POOL, timeout: float = FILL_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while pool_status(daemon)["ready"] < ready:
        assert time.monotonic() < deadline, daemon.log()[-3000:]
        assert "pooled sandbox could not be made" not in daemon.log(), daemon.log()[-3000:]
        time.sleep(0.5)


def pooled_slots(daemon) -> list[str]:
    root = daemon.state / "pool"
    return sorted(os.listdir(root)) if root.exists() else []


def children(pid: int, name: bytes = b"qemu-system") -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and name in cmdline:
            found.append(int(entry))
    return found


def qemu_of_pod(daemon, pod_id: str) -> str:
    shim = int((daemon.state / "pods" / pod_id / "shim" / "shim.pid").read_text())
    (qemu,) = children(shim)
    with open(f"/proc/{qemu}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def run_pod(daemon, name: str, args: list[str]) -> tuple[str, str]:
    config = daemon.pod_config(name)
    pod_id = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
        config=config, runtime_handler="vm")).pod_sandbox_id
    container_id = daemon.create_container(pod_id, config, "main", args)
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    return pod_id, container_id


def exec_sync(daemon, container_id: str, cmd: list[str]):
    return daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                           timeout=60))


def pod_ip(daemon, pod_id: str) -> str:
    return daemon.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.network.ip


def test_pooled_vms_become_pods_that_are_each_their_own(clean):
    daemon = clean
    wait_for_pool(daemon)
    assert pool_status(daemon) == {"size": POOL, "ready": POOL}
    slots = pooled_slots(daemon)
    probe = ("date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
             "hostname; ip -4 -o addr show eth0 | awk '{print $4}'")
    serve = "mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
    seen = []
    for name in ("pooled-a", "pooled-b"):
        pod_id, container_id = run_pod(daemon, name, ["sh", "-c", serve])
        qemu = qemu_of_pod(daemon, pod_id)
        assert "/pool/pool-" in qemu and "-incoming" in qemu  # a pooled VM, restored
        now = time.time()
        clock, random, hostname, address = exec_sync(
            daemon, container_id, ["sh", "-c", probe]).stdout.decode().split()
        assert abs(int(clock) - now) < 5
        assert address.partition("/")[0] == pod_ip(daemon, pod_id)
        # the tap joined after the restore carries traffic both ways: host -> guest httpd
        assert _http_get(pod_ip(daemon, pod_id), 8080) == f"{name}\n"
        seen.append((random, hostname, address))
    (random_a, host_a, ip_a), (random_b, host_b, ip_b) = seen
    assert random_a != random_b and (host_a, host_b) == ("pooled-a", "pooled-b")
    assert ip_a != ip_b
    # both slots were taken (their directories are the pods' now) and the pool refills
    assert not set(slots) & set(pooled_slots(daemon))
    wait_for_pool(daemon)
    # a pooled VM's pod ends as any other: its QEMU, its files
    for pod in daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        assert not (daemon.state / "pods" / pod.id).exists()


def test_a_pooled_vm_that_died_is_not_used(clean):
    daemon = clean
    wait_for_pool(daemon)
    for slot in pooled_slots(daemon):
        shim = int((daemon.state / "pool" / slot / "shim" / "shim.pid").read_text())
        for qemu in children(shim):
            os.kill(qemu, signal.SIGKILL)
    pod_id, container_id = run_pod(daemon, "after-death", ["sleep", "1000"])
    assert exec_sync(daemon, container_id, ["echo", "fine"]).stdout == b"fine\n"
    assert "/pool/pool-" not in qemu_of_pod(daemon, pod_id)  # restored for it instead
    assert "could not be used" in (daemon.state / "pods" / pod_id / "shim" /
                                   "shim.log").read_text()


def test_the_pool_ends_with_corrald_and_a_killed_ones_is_ended_at_start(clean):
    daemon = clean
    wait_for_pool(daemon)
    pod_id, container_id = run_pod(daemon, "survivor", ["sleep", "1000"])
    wait_for_pool(daemon)
    shims = _pool_shims(daemon)
    assert len(shims) == POOL
    daemon.kill(signal.SIGTERM)
    assert pooled_slots(daemon) == [] and not any(_alive(pid) for pid in shims)
    daemon.start()
    assert exec_sync(daemon, container_id, ["echo", "still"]).stdout == b"still\n"
    wait_for_pool(daemon)
    shims = _pool_shims(daemon)
    qemus = [q for pid in shims for q in children(pid)]
    assert len(qemus) == POOL
    daemon.kill(signal.SIGKILL)  # its pool lives on, nobody's ...
    assert all(_alive(pid) for pid in shims + qemus)
    daemon.start()               # ... until the next corrald ends it
    assert not any(_alive(pid) for pid in shims + qemus)
    assert f"ended {POOL} pooled sandbox(es)" in daemon.log()
    assert exec_sync(daemon, container_id, ["echo", "again"]).stdout == b"again\n"
    assert pod_id in {p.id for p in daemon.runtime.ListPodSandbox(
        api_pb2.ListPodSandboxRequest()).items}


def _pool_shims(daemon) -> list[int]:
    return [int((daemon.state / "pool" / slot / "shim" / "shim.pid").read_text())
            for slot in pooled_slots(daemon)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _http_get(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=30) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()
