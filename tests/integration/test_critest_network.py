"""Ports of critest's networking specs (cri-tools pkg/validate networking.go,
networking_linux.go, v1.29.0 to v1.36.0) over corrald's real socket.

Each test is one ginkgo `It`, named after it, sending what critest sends (critest_env.py):
the web server is critest's nginx image (here a busybox httpd on port 80 as its
entrypoint), reached from the host at the pod's IP and at 127.0.0.1:12000 as critest does.
"""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod
from tests.integration.critest_env import (
    WEB_SERVER_IMAGE,
    WEB_SERVER_PORT,
    Critest,
    check_main_page,
    critest_corrald,
)

DEFAULT_EXEC_SYNC_TIMEOUT = 60
HOST_PORT_FOR_PORT_MAPPING = 12000


@pytest.fixture(scope="module")
def world():
    with critest_corrald("corraltcn", "10.99.73.0/24") as (daemon, registry):
        yield daemon


@pytest.fixture
def c(world):
    yield Critest(world)
    remove_every_pod(world)


def pod_with(c, prefix: str, **fields) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = c.pod_config(prefix, **fields)
    return c.run_pod_sandbox(config), config


def web_server(c, pod_id: str, pod_config, prefix: str, image: str = WEB_SERVER_IMAGE) -> str:
    config = c.container_config(prefix, image=image, command=())
    container_id = c.create_container(config, pod_id, pod_config)
    c.start_container(container_id)
    return container_id


def exec_sync_ok(c, container_id: str, cmd: list[str]) -> str:
    reply = c.exec_sync(container_id, cmd, DEFAULT_EXEC_SYNC_TIMEOUT)
    assert reply.exit_code == 0 and reply.stderr == b"", reply
    return reply.stdout.decode()


def test_runtime_should_support_dns_config(c):
    pod_id, config = pod_with(c, "create-PodSandbox-with-DNS-config", dns_config=api_pb2.DNSConfig(
        servers=["10.10.10.10"], searches=["google.com"], options=["ndots:8"]))
    container_id = c.create_default_container(pod_id, config, "container-for-DNS-config-test-")
    c.start_container(container_id)
    resolv_conf = exec_sync_ok(c, container_id, ["cat", "/etc/resolv.conf"])
    for line in ("nameserver 10.10.10.10", "search google.com", "options ndots:8"):
        assert line in resolv_conf, resolv_conf


def test_runtime_should_support_set_hostname(c):
    pod_id, config = pod_with(c, "create-PodSandbox-with-hostname", hostname="test-hostname")
    container_id = c.create_default_container(pod_id, config, "container-for-hostname-test-")
    c.start_container(container_id)
    assert exec_sync_ok(c, container_id, ["hostname"]).strip().lower() == "test-hostname"


def test_runtime_should_support_port_mapping_with_only_container_port(c):
    pod_id, config = pod_with(c, "create-PodSandbox-with-port-mapping", port_mappings=[
        api_pb2.PortMapping(container_port=WEB_SERVER_PORT)])
    web_server(c, pod_id, config, "container-for-container-port")
    check_main_page(c, pod_id, 0, WEB_SERVER_PORT)


def test_runtime_should_support_port_mapping_with_host_port_and_container_port(c):
    pod_id, config = pod_with(c, "create-PodSandbox-with-port-mapping", port_mappings=[
        api_pb2.PortMapping(container_port=WEB_SERVER_PORT,
                            host_port=HOST_PORT_FOR_PORT_MAPPING)])
    web_server(c, pod_id, config, "container-for-host-port")
    check_main_page(c, "", HOST_PORT_FOR_PORT_MAPPING, 0)
