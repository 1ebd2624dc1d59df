"""Hostile and unusual CRI inputs against a real corrald over its socket (issue 10).

Pods without a hostname, DNS values that would inject resolv.conf lines, log paths that
lead out of the log directory, oversized labels and annotations, ports and memory limits
out of range, unknown IDs, and concurrent RemoveImage of one image.
"""

from __future__ import annotations

import os
import threading

import grpc
import pytest
from cri_api.v1 import api_pb2

from corral.images.layout import build_image, write_archive
from corral.images.service import ImageService
from tests.integration.corrald import BUSYBOX, remove_every_pod, running_corrald

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("corraltin", "10.99.61.0/24") as daemon:
        yield daemon


@pytest.fixture
def daemon(corrald):
    """The shared daemon; after each test no pod of it may be left, nor anything of one."""
    yield corrald
    remove_every_pod(corrald)


def error_of(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert "Traceback" not in info.value.details()
    return info.value.code(), info.value.details()


def pod_config(daemon, name: str, **fields) -> api_pb2.PodSandboxConfig:
    config = daemon.pod_config(name)
    for field, value in fields.items():
        if field == "dns_config":
            config.dns_config.CopyFrom(value)
        elif field == "port_mappings":
            config.port_mappings.extend(value)
        elif field in ("labels", "annotations"):
            getattr(config, field).update(value)
        else:
            setattr(config, field, value)
    return config


def run_pod_with(daemon, name: str, **fields):
    config = pod_config(daemon, name, **fields)
    return daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)), config


def stdout_of(daemon, pod_id, pod_config, name: str, script: str, **fields) -> str:
    container_id = daemon.create_container(pod_id, pod_config, name, ["sh", "-c", script],
                                           **fields)
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    status = daemon.wait_exited(container_id)
    assert status.exit_code == 0, (status.reason, open(status.log_path).read())
    lines = []
    for line in open(status.log_path).read().splitlines():
        _, stream, _, content = line.split(" ", 3)
        if stream == "stdout":
            lines.append(content)
    return "\n".join(lines)


def pods(daemon) -> list:
    return list(daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items)


# --- hostname --------------------------------------------------------------------------------
def test_pod_without_hostname_has_the_nodes(daemon):
    # critest's pod names are 66-79 bytes, over HOST_NAME_MAX: never the hostname.
    name = "podsandbox-without-hostname-" + "0123456789abcdef" * 3
    assert len(name) > 64
    reply, config = run_pod_with(daemon, name, hostname="")
    out = stdout_of(daemon, reply.pod_sandbox_id, config, "host",
                    "hostname; cat /etc/hostname; grep -c . /etc/hosts")
    node = os.uname().nodename
    assert out.splitlines()[:2] == [node, node]


@pytest.mark.parametrize("hostname", ["h" * 65, "under_score", "new\nline", "-lead",
                                      "trail-", "sp ace", "dots..dots", "nul\0"])
def test_invalid_hostname_is_invalid_argument(daemon, hostname):
    code, details = error_of(daemon.runtime.RunPodSandbox, api_pb2.RunPodSandboxRequest(
        config=pod_config(daemon, "badhost", hostname=hostname)))
    assert code == INVALID and "hostname" in details
    assert pods(daemon) == []


def test_longest_hostname_works(daemon):
    hostname = ".".join(["a" * 31, "b" * 32])  # 64 bytes: HOST_NAME_MAX
    reply, config = run_pod_with(daemon, "longhost", hostname=hostname)
    assert stdout_of(daemon, reply.pod_sandbox_id, config, "h", "hostname") == hostname


# --- DNS -------------------------------------------------------------------------------------
def test_dns_config_is_the_pods_resolv_conf(daemon):
    dns = api_pb2.DNSConfig(servers=["10.96.0.10", "2001:db8::53"],
                            searches=["default.svc.cluster.local", "svc.cluster.local",
                                      "example.com."],
                            options=["ndots:5", "timeout:1", "edns0"])
    reply, config = run_pod_with(daemon, "dns", dns_config=dns)
    out = stdout_of(daemon, reply.pod_sandbox_id, config, "resolv", "cat /etc/resolv.conf")
    assert out.splitlines() == [
        "nameserver 10.96.0.10", "nameserver 2001:db8::53",
        "search default.svc.cluster.local svc.cluster.local example.com.",
        "options ndots:5 timeout:1 edns0"]


@pytest.mark.parametrize("dns", [
    api_pb2.DNSConfig(servers=["10.0.0.1\nnameserver 6.6.6.6"]),
    api_pb2.DNSConfig(servers=["dns.example.com"]),
    api_pb2.DNSConfig(servers=[""]),
    api_pb2.DNSConfig(searches=["example.com\nnameserver 6.6.6.6"]),
    api_pb2.DNSConfig(searches=["two words"]),
    api_pb2.DNSConfig(searches=[""]),
    api_pb2.DNSConfig(searches=["x" * 300]),
    api_pb2.DNSConfig(searches=[f"s{i}.example.com" for i in range(33)]),
    api_pb2.DNSConfig(options=["ndots:5\nnameserver 6.6.6.6"]),
    api_pb2.DNSConfig(options=["ndots:5 rotate"]),
    api_pb2.DNSConfig(options=[""]),
], ids=lambda dns: repr(str(dns))[:40])
def test_dns_injection_is_invalid_argument(daemon, dns):
    config = daemon.pod_config("dnsbad")
    config.dns_config.CopyFrom(dns)
    code, details = error_of(daemon.runtime.RunPodSandbox,
                             api_pb2.RunPodSandboxRequest(config=config))
    assert code == INVALID and details.startswith("dns_config:")
    assert pods(daemon) == []


# --- log paths -------------------------------------------------------------------------------
def test_relative_log_directory_is_invalid_argument(daemon):
    code, details = error_of(daemon.runtime.RunPodSandbox, api_pb2.RunPodSandboxRequest(
        config=pod_config(daemon, "rellog", log_directory="logs/relative")))
    assert code == INVALID and "log_directory" in details
    assert pods(daemon) == []


@pytest.mark.parametrize("log_path", ["../escape.log", "sub/../../escape.log", "..",
                                      "/tmp/corral-absolute-escape.log", "nul\0.log"])
def test_log_path_out_of_the_log_directory_is_invalid_argument(daemon, log_path):
    reply, config = run_pod_with(daemon, "logesc")
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=reply.pod_sandbox_id, sandbox_config=config,
        config=daemon.container_config("esc", ["echo", "out"]))
    request.config.log_path = log_path
    code, details = error_of(daemon.runtime.CreateContainer, request)
    assert code == INVALID and "log_path" in details
    assert not os.path.exists(os.path.join(config.log_directory, "..", "escape.log"))
    assert not os.path.exists("/tmp/corral-absolute-escape.log")
    assert list(daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers) == []


def test_log_path_with_dots_inside_a_name_works(daemon):
    reply, config = run_pod_with(daemon, "logdots")
    container_id = daemon.create_container(reply.pod_sandbox_id, config, "dots", ["echo", "hi"])
    daemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=reply.pod_sandbox_id, sandbox_config=config,
        config=daemon.container_config("dots", ["echo", "hi"]))
    request.config.log_path = "dots..0.log"
    container_id = daemon.runtime.CreateContainer(request).container_id
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    status = daemon.wait_exited(container_id)
    assert status.log_path == os.path.join(config.log_directory, "dots..0.log")
    assert open(status.log_path).read().endswith(" stdout F hi\n")


# --- labels and annotations ------------------------------------------------------------------
def big(total: int, prefix: str = "k") -> dict[str, str]:
    """Annotations of `total` bytes (keys and values)."""
    chunk = 64 * 1024
    values, left, i = {}, total, 0
    while left > 0:
        key = f"{prefix}{i:04d}"
        values[key] = "v" * max(0, min(chunk, left) - len(key))
        left -= len(key) + len(values[key])
        i += 1
    return values


def test_oversized_pod_annotations_are_invalid_argument(daemon):
    for field in ("annotations", "labels"):
        config = daemon.pod_config("huge")
        getattr(config, field).update(big(256 * 1024 + 1))
        code, details = error_of(daemon.runtime.RunPodSandbox,
                                 api_pb2.RunPodSandboxRequest(config=config))
        assert code == INVALID and "256 KiB" in details
    config = daemon.pod_config("huge")  # 12 MiB, as the trial that broke listing
    config.annotations.update(big(12 << 20))
    assert error_of(daemon.runtime.RunPodSandbox,
                    api_pb2.RunPodSandboxRequest(config=config))[0] == INVALID
    assert pods(daemon) == []


def test_pods_and_containers_at_the_bound_can_all_be_listed(daemon):
    # Names and metadata count too: leave room for them under 256 KiB.
    annotations = big(256 * 1024 - 200)
    pod_ids = []
    for i in range(3):
        reply, config = run_pod_with(daemon, f"full{i}", annotations=annotations)
        pod_ids.append(reply.pod_sandbox_id)
    listed = pods(daemon)
    assert sorted(p.id for p in listed) == sorted(pod_ids)
    assert all(dict(p.annotations) == annotations for p in listed)

    container_ids = []
    for i in range(3):
        container_ids.append(daemon.create_container(pod_ids[0], config, f"full{i}", ["true"],
                                                     annotations=annotations))
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_ids[0], sandbox_config=config,
        config=daemon.container_config("over", ["true"], annotations=big(256 * 1024 + 1)))
    code, details = error_of(daemon.runtime.CreateContainer, request)
    assert code == INVALID and "256 KiB" in details
    containers = daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert sorted(c.id for c in containers) == sorted(container_ids)
    assert all(dict(c.annotations) == annotations for c in containers)


# --- ports and memory ------------------------------------------------------------------------
@pytest.mark.parametrize("host_port,container_port", [(65536, 80), (-1, 80), (8080, 0),
                                                      (8080, 70000), (8080, -80)])
def test_port_out_of_range_is_invalid_argument(daemon, host_port, container_port):
    config = daemon.pod_config("ports")
    config.port_mappings.append(api_pb2.PortMapping(host_port=host_port,
                                                    container_port=container_port))
    code, details = error_of(daemon.runtime.RunPodSandbox,
                             api_pb2.RunPodSandboxRequest(config=config))
    assert code == INVALID and "outside 1-65535" in details
    assert pods(daemon) == []


def memory(limit: int) -> api_pb2.LinuxContainerConfig:
    return api_pb2.LinuxContainerConfig(
        resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit))


def test_memory_limit_too_small_is_invalid_argument(daemon):
    reply, config = run_pod_with(daemon, "mem")
    pod_id = reply.pod_sandbox_id
    for limit in (1, 64 * 1024, (6 << 20) - 1, -1):
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config,
            config=daemon.container_config("tiny", ["true"], linux=memory(limit)))
        code, details = error_of(daemon.runtime.CreateContainer, request)
        assert code == INVALID and "memory_limit_in_bytes" in details
    assert list(daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers) == []

    # The minimum itself starts, and a running container cannot be updated below it.
    assert stdout_of(daemon, pod_id, config, "least", "echo ok", linux=memory(6 << 20)) == "ok"
    container_id = daemon.create_container(pod_id, config, "upd", ["sleep", "30"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    code, details = error_of(daemon.runtime.UpdateContainerResources,
                             api_pb2.UpdateContainerResourcesRequest(
                                 container_id=container_id,
                                 linux=api_pb2.LinuxContainerResources(
                                     memory_limit_in_bytes=4096)))
    assert code == INVALID and "memory_limit_in_bytes" in details
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id))


# --- idempotence -----------------------------------------------------------------------------
def test_stop_and_remove_of_unknown_ids_succeed(daemon):
    unknown = "0123456789abcdef" * 4
    rt = daemon.runtime
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=unknown))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=unknown))
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=unknown))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=unknown))
    # A running pod is not touched by them.
    reply, _ = run_pod_with(daemon, "bystander")
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=unknown))
    assert [(p.id, p.state) for p in pods(daemon)] == [(reply.pod_sandbox_id,
                                                        api_pb2.SANDBOX_READY)]


def remove_image(daemon, image: str, barrier: threading.Barrier, failures: list) -> None:
    barrier.wait()
    try:
        daemon.images.RemoveImage(api_pb2.RemoveImageRequest(
            image=api_pb2.ImageSpec(image=image)))
    except grpc.RpcError as e:
        failures.append(e)


def test_concurrent_remove_image_never_not_found(daemon):
    archive = daemon.base / "busybox.tar"
    rootfs = daemon.base / "busybox-rootfs"
    for round_ in range(20):
        name = f"docker.io/library/removed:{round_}"
        write_archive(build_image(str(rootfs), name, cmd=["sh", "-c", f"exit {round_}"]),
                      str(archive) + ".extra")
        service = ImageService(str(daemon.root))
        try:
            service.import_archive(str(archive) + ".extra")
        finally:
            service.close()
        assert daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=name))).image.id
        failures: list[grpc.RpcError] = []
        barrier = threading.Barrier(16)
        threads = [threading.Thread(target=remove_image, args=(daemon, name, barrier, failures))
                   for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [(e.code(), e.details()) for e in failures] == []
        assert not daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=name))).HasField("image")
    assert daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=BUSYBOX))).image.id
