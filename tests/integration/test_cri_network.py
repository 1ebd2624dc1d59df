"""Pod networking through corrald and the real CNI plugins: pod to pod, hostPort, cleanup."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import NOTHING_LEFT, Corrald, running_corrald


@pytest.fixture(scope="module")
def daemon():
    with running_corrald("corralt2", "10.99.9.0/24") as daemon:
        yield daemon


def nat_rules() -> list[str]:
    """The per-pod rules portmap adds (its shared top-level chains may stay, as with podman)."""
    output = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                            check=True).stdout
    return [line for line in output.splitlines() if "CNI-DN-" in line or "corralt2" in line
            or "10.99.9." in line]


def start(daemon: Corrald, name: str, args: list[str], **pod_fields) -> tuple[str, str, str]:
    pod_id, config = daemon.run_pod(name, **pod_fields)
    container_id = daemon.create_container(pod_id, config, name, args)
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    ip = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
    return pod_id, container_id, ip


def remove(daemon: Corrald, *pod_ids: str) -> None:
    for pod_id in pod_ids:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_two_pods_reach_each_other(daemon):
    before = nat_rules()
    server, server_container, server_ip = start(
        daemon, "server", ["sh", "-c", "echo pong > /tmp/index.html; "
                                       "exec httpd -f -p 8080 -h /tmp"])
    client, client_container, client_ip = start(daemon, "client", ["sleep", "60"])
    assert server_ip != client_ip and server_ip.startswith("10.99.9.")
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=client_container, timeout=20,
        cmd=["sh", "-c", f"ping -c 1 -W 5 {server_ip} >/dev/null && "
                         f"wget -q -O - http://{server_ip}:8080/index.html"]))
    assert (reply.exit_code, reply.stdout) == (0, b"pong\n"), reply.stderr
    remove(daemon, server, client)
    assert daemon.leftovers() == NOTHING_LEFT
    assert nat_rules() == before


def host_address() -> str:
    """The host's address on its default route: what a hostPort is reached on from outside."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True,
                           text=True, check=True).stdout.split()
    return route[route.index("src") + 1]


def fetch(address: str, port: int, deadline: float) -> bytes:
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as conn:
                conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                return data
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_host_port_reaches_httpd_in_pod(daemon):
    before = nat_rules()
    mapping = api_pb2.PortMapping(host_port=18081, container_port=80, protocol=api_pb2.TCP)
    pod_id, _, _ = start(daemon, "web", ["sh", "-c", "echo hello-from-pod > /tmp/index.html; "
                                                     "exec httpd -f -p 80 -h /tmp"],
                         port_mappings=[mapping])
    assert any("18081" in rule for rule in nat_rules())
    response = fetch(host_address(), 18081, time.monotonic() + 10)
    assert response.startswith(b"HTTP/1.") and response.endswith(b"hello-from-pod\n")
    remove(daemon, pod_id)
    assert nat_rules() == before
    assert daemon.leftovers() == NOTHING_LEFT
    with pytest.raises(OSError):
        fetch(host_address(), 18081, time.monotonic())


def test_host_network_pod(daemon):
    config_pod = daemon.pod_config("hostnet")
    config_pod.linux.security_context.namespace_options.network = api_pb2.NODE
    pod_id = daemon.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config_pod)).pod_sandbox_id
    container_id = daemon.create_container(pod_id, config_pod, "c", ["sleep", "60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["cat", "/proc/net/dev"], timeout=10))
    host = open("/proc/net/dev").read().split("\n")[2:]
    names = {line.split(":")[0].strip() for line in host if ":" in line}
    seen = {line.split(":")[0].strip() for line in reply.stdout.decode().split("\n")[2:]
            if ":" in line}
    assert names == seen  # the host's interfaces, not a pod's
    assert not daemon.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.network.ip
    remove(daemon, pod_id)
    assert daemon.leftovers() == NOTHING_LEFT
