"""Checks of what a CRI client sends, made before anything is created.

A careless or hostile client gets INVALID_ARGUMENT naming the field, never
a resolv.conf with lines it injected, a log written outside the log
directory, metadata too big to list, or an INTERNAL error from deep down.
"""

from __future__ import annotations

import ipaddress
import os
import re

from corral.sandbox.errors import InvalidArgument

# Kubernetes' TotalAnnotationSizeLimitB: labels, annotations and metadata of one object together.
MAX_METADATA_BYTES = 256 * 1024
HOST_NAME_MAX = 64  # the kernel's, for sethostname(2)
# Kubernetes' MaxDNSSearchPaths; a search domain is at most a DNS name long.
MAX_DNS_SEARCHES = 32
MAX_DNS_NAME = 253
# Docker's minimum.  corral's init is charged about 0.5 MiB before execve, and under ~64 KiB
# it dies before it is ready; a shell needs about 1 MiB more.  6 MiB leaves a container room
# to start and fail in its own right (OOMKilled), not in corral's init.
MIN_MEMORY_LIMIT = 6 * 1024 * 1024

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# Search domains in the wild also carry underscores (e.g. _tcp); whitespace never.
_SEARCH_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_SEARCH = re.compile(rf"{_SEARCH_LABEL}(\.{_SEARCH_LABEL})*\.?")
_DNS_OPTION = re.compile(r"[!-~]+")  # printable ASCII without space: "ndots:5", "edns0"


def check_pod_config(config) -> None:
    if config.hostname:
        check_hostname(config.hostname)
    if config.log_directory and not os.path.isabs(config.log_directory):
        raise InvalidArgument(f"pod sandbox config: log_directory {config.log_directory!r} "
                              "must be an absolute path")
    _check_no_nul("log_directory", config.log_directory)
    if config.HasField("dns_config"):
        check_dns_config(config.dns_config)
    for mapping in config.port_mappings:
        if not 1 <= mapping.container_port <= 65535:
            raise InvalidArgument(f"pod sandbox config: port mapping container_port "
                                  f"{mapping.container_port} is outside 1-65535")
        if not 0 <= mapping.host_port <= 65535:
            raise InvalidArgument(f"pod sandbox config: port mapping host_port "
                                  f"{mapping.host_port} is outside 1-65535 (0: none)")
    metadata = config.metadata
    _check_metadata_size("pod sandbox config", config.labels, config.annotations,
                         metadata.name, metadata.namespace, metadata.uid)


def check_container_config(config) -> None:
    check_log_path(config.log_path)
    _check_metadata_size("container config", config.labels, config.annotations,
                         config.metadata.name)
    if config.HasField("linux"):
        check_memory_limit(config.linux.resources.memory_limit_in_bytes)


def check_hostname(hostname: str) -> None:
    if len(hostname.encode()) > HOST_NAME_MAX or not _HOSTNAME.fullmatch(hostname):
        raise InvalidArgument(f"pod sandbox config: invalid hostname {hostname[:80]!r}: at most "
                              f"{HOST_NAME_MAX} bytes of dot-separated labels of letters, digits "
                              "and '-' (RFC 1123)")


def check_dns_config(dns) -> None:
    for server in dns.servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"dns_config: server {server[:80]!r} is not an IP "
                                  "address") from None
    if len(dns.searches) > MAX_DNS_SEARCHES:
        raise InvalidArgument(f"dns_config: {len(dns.searches)} searches, at most "
                              f"{MAX_DNS_SEARCHES}")
    for search in dns.searches:
        if len(search) > MAX_DNS_NAME or not _SEARCH.fullmatch(search):
            raise InvalidArgument(f"dns_config: search {search[:80]!r} is not a DNS name")
    for option in dns.options:
        if not _DNS_OPTION.fullmatch(option):
            raise InvalidArgument(f"dns_config: option {option[:80]!r} must be printable ASCII "
                                  "without whitespace")


def check_log_path(log_path: str) -> None:
    """Relative to the pod's log directory, and staying inside it."""
    _check_no_nul("log_path", log_path)
    if os.path.isabs(log_path) or ".." in log_path.split("/"):
        raise InvalidArgument(f"container config: log_path {log_path[:200]!r} must be a "
                              "relative path inside the pod's log_directory (no '..')")


def check_memory_limit(limit: int) -> None:
    """0 is no limit; a limit too small for the container to start is refused up front."""
    if limit < 0 or 0 < limit < MIN_MEMORY_LIMIT:
        raise InvalidArgument(f"memory_limit_in_bytes {limit} is below the minimum "
                              f"{MIN_MEMORY_LIMIT} ({MIN_MEMORY_LIMIT >> 20} MiB; 0: no limit)")


def _check_no_nul(field: str, value: str) -> None:
    if "\0" in value:
        raise InvalidArgument(f"{field} contains a NUL byte")


def _check_metadata_size(what: str, labels, annotations, *strings: str) -> None:
    """Bounded so that listing every object stays far below gRPC's message size."""
    size = sum(len(k.encode()) + len(v.encode()) for k, v in labels.items())
    size += sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    size += sum(len(s.encode()) for s in strings)
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{what}: labels, annotations and metadata take {size} bytes, at "
                              f"most {MAX_METADATA_BYTES} (256 KiB, as Kubernetes)")
