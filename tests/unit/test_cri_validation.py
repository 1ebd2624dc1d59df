"""corral.cri.validation: what a CRI client may send, checked before anything is made."""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2

from corral.cri import validation
from corral.sandbox.errors import InvalidArgument


@pytest.mark.parametrize("hostname", ["a", "web-0", "Node-1.example.com", "x" * 63,
                                      ".".join(["a" * 31, "b" * 32])])
def test_valid_hostnames(hostname):
    validation.check_hostname(hostname)


@pytest.mark.parametrize("hostname", ["x" * 64 + "y", "a" * 64 + ".", "a_b", "a b", "-a", "a-",
                                      "a..b", ".a", "a\n", "é"])
def test_invalid_hostnames(hostname):
    with pytest.raises(InvalidArgument, match="hostname"):
        validation.check_hostname(hostname)


def test_dns_values_kubelet_sends_are_valid():
    validation.check_dns_config(api_pb2.DNSConfig(
        servers=["10.96.0.10", "fe80::1%eth0", "::1"],
        searches=["ns.svc.cluster.local", "example.com.", "_tcp.example.com"],
        options=["ndots:5", "single-request-reopen", "timeout:1"]))


@pytest.mark.parametrize("field,value", [("servers", "10.0.0.1 "), ("servers", "10.0.0.256"),
                                         ("searches", "a.\nb"), ("searches", "a b"),
                                         ("searches", "a..b"), ("options", "a\tb"),
                                         ("options", "a\rb")])
def test_dns_values_with_whitespace_or_garbage_are_invalid(field, value):
    with pytest.raises(InvalidArgument, match="^dns_config:"):
        validation.check_dns_config(api_pb2.DNSConfig(**{field: [value]}))


@pytest.mark.parametrize("log_path", ["0.log", "name/0.log", "a..b.log", ""])
def test_log_paths_inside(log_path):
    validation.check_log_path(log_path)


@pytest.mark.parametrize("log_path", ["..", "../x", "a/../../x", "a/..", "/abs.log"])
def test_log_paths_outside(log_path):
    with pytest.raises(InvalidArgument, match="log_path"):
        validation.check_log_path(log_path)


def test_memory_limit_bounds():
    validation.check_memory_limit(0)
    validation.check_memory_limit(validation.MIN_MEMORY_LIMIT)
    for limit in (-1, 1, validation.MIN_MEMORY_LIMIT - 1):
        with pytest.raises(InvalidArgument, match="memory_limit_in_bytes"):
            validation.check_memory_limit(limit)


def test_metadata_bound_counts_keys_values_and_names():
    config = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(name="n" * 10))
    config.annotations["k"] = "v" * (validation.MAX_METADATA_BYTES - 11)
    validation.check_pod_config(config)
    config.labels["x"] = ""
    with pytest.raises(InvalidArgument, match="256 KiB"):
        validation.check_pod_config(config)
