"""critest's framework (kubernetes-sigs/cri-tools pkg/framework, pkg/validate), ported to Python.

The CRI requests are the ones critest sends, field for field: metadata names with a UUID,
attempt 2, `linux: {}` with an empty cgroup parent (the cgroupfs driver's), no hostname, no
log directory unless a spec asks for one, no namespace options (so every namespace is POD),
the default command `top`, ImageStatus before CreateContainer, and `user_specified_image`.
Its waits are kept as limits (a minute for a state, 60 s for StopContainer), polled faster.

The embedded busybox stands in for critest's registry.k8s.io/e2e-test-images/busybox:1.29-2;
it has no `pgrep`, so the check for a leftover `sleep` reads /proc instead (CHECK_SLEEP).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from datetime import datetime

from cri_api.v1 import api_pb2

from tests.integration.corrald import BUSYBOX

DEFAULT_UID_PREFIX = "cri-test-uid"
DEFAULT_NAMESPACE_PREFIX = "cri-test-namespace"
DEFAULT_ATTEMPT = 2
DEFAULT_STOP_CONTAINER_TIMEOUT = 60
DEFAULT_EXEC_SYNC_TIMEOUT = 30
DEFAULT_LOG = "hello World"
DEFAULT_CONTAINER_COMMAND = ["top"]
PAUSE_COMMAND = ["sh", "-c", "top"]
ECHO_HELLO = ["echo", "-n", "hello"]
SLEEP = ["sleep", "4321"]
# critest: `sh -c "pgrep sleep || true"`; busybox here has no pgrep (same meaning, from /proc).
CHECK_SLEEP = ["sh", "-c", "grep -l '^sleep$' /proc/[0-9]*/comm 2>/dev/null || true"]
LOG_DEFAULT = ["echo", DEFAULT_LOG]
LOOP_LOG_DEFAULT = ["sh", "-c", f"while true; do echo {DEFAULT_LOG}; sleep 1; done"]
MINUTE = 60.0


def new_uuid() -> str:
    return str(uuid.uuid1())


def eventually(probe, timeout: float = MINUTE, interval: float = 0.1):
    """The probe's first truthy value within `timeout` (Gomega's Eventually); else fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: last value {value!r}")
        time.sleep(interval)


class Critest:
    """One spec's CRI client: what pkg/framework and pkg/validate's helpers do."""

    def __init__(self, daemon, image: str = BUSYBOX):
        self.daemon = daemon
        self.rc = daemon.runtime
        self.ic = daemon.images
        self.image = image
        self.temp_dirs: list[str] = []

    # --- pods ----------------------------------------------------------------------------------
    def cgroup_parent(self) -> str:
        """common.GetCgroupParent: "" for the cgroupfs driver, "/test.slice" otherwise."""
        driver = self.rc.RuntimeConfig(api_pb2.RuntimeConfigRequest()).linux.cgroup_driver
        return "" if driver == api_pb2.CGROUPFS else "/test.slice"

    def pod_config(self, prefix: str, **fields) -> api_pb2.PodSandboxConfig:
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=prefix + new_uuid(), uid=DEFAULT_UID_PREFIX + new_uuid(),
                namespace=DEFAULT_NAMESPACE_PREFIX + new_uuid(), attempt=DEFAULT_ATTEMPT),
            **fields)
        config.linux.SetInParent()
        config.linux.cgroup_parent = self.cgroup_parent()
        return config

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> str:
        return self.rc.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=config, runtime_handler="")).pod_sandbox_id

    def pod_for_container(self) -> tuple[str, api_pb2.PodSandboxConfig]:
        """framework.CreatePodSandboxForContainer."""
        config = self.pod_config("create-PodSandbox-for-container-")
        return self.run_pod(config), config

    def pod_with_log_directory(self) -> tuple[str, api_pb2.PodSandboxConfig]:
        """createPodSandboxWithLogDirectory: a fresh temp dir holding <pod name>/."""
        name = "PodSandbox-with-log-directory-"
        config = self.pod_config(name)
        host_path = tempfile.mkdtemp(prefix="podLogTest")
        self.temp_dirs.append(host_path)
        log_dir = os.path.join(host_path, config.metadata.name)
        os.makedirs(log_dir, 0o777)
        config.log_directory = log_dir
        return self.run_pod(config), config

    def privileged_pod(self) -> tuple[str, api_pb2.PodSandboxConfig]:
        """createPrivilegedPodSandbox(rc, true)."""
        config = self.pod_config("create-Privileged-PodSandbox-for-container-")
        config.linux.security_context.privileged = True
        return self.run_pod(config), config

    def pod_status(self, pod_id: str) -> api_pb2.PodSandboxStatus:
        return self.rc.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=False)).status

    def list_pods(self, **filter_fields) -> list:
        request = api_pb2.ListPodSandboxRequest()
        if filter_fields:
            request.filter.CopyFrom(api_pb2.PodSandboxFilter(**filter_fields))
        return list(self.rc.ListPodSandbox(request).items)

    def stop_and_remove_pod(self, pod_id: str) -> None:
        self.rc.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.rc.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def cleanup(self) -> None:
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)

    # --- containers ----------------------------------------------------------------------------
    def container_config(self, prefix: str, command: list[str] | None = None,
                         image: str = "", **fields) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=prefix + new_uuid(),
                                               attempt=DEFAULT_ATTEMPT),
            image=api_pb2.ImageSpec(image=image or self.image), command=command or [],
            **fields)

    def create_container(self, pod_id: str, pod_config, config) -> str:
        """framework.CreateContainer: ImageStatus (a pull if absent), then CreateContainer."""
        return self.create_container_with_error(pod_id, pod_config, config).container_id

    def create_container_with_error(self, pod_id: str, pod_config, config):
        image = config.image.image
        if ":" not in image:
            image += ":latest"
        status = self.ic.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=image), verbose=False))
        if not status.HasField("image"):
            self.ic.PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=image), sandbox_config=pod_config))
        if not config.image.user_specified_image:
            config.image.user_specified_image = image
        return self.rc.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))

    def default_container(self, pod_id: str, pod_config, prefix: str,
                          labels: dict | None = None) -> str:
        """framework.CreateDefaultContainer(WithLabels): `top`, `linux: {}`."""
        config = self.container_config(prefix, DEFAULT_CONTAINER_COMMAND, labels=labels or {})
        config.linux.SetInParent()
        return self.create_container(pod_id, pod_config, config)

    def pause_container(self, pod_id: str, pod_config, prefix: str) -> str:
        """framework.CreatePauseContainer: `sh -c top`, `linux: {}`."""
        config = self.container_config(prefix, PAUSE_COMMAND)
        config.linux.SetInParent()
        return self.create_container(pod_id, pod_config, config)

    def start(self, container_id: str) -> None:
        self.rc.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))

    def status(self, container_id: str, verbose: bool = False):
        return self.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id, verbose=verbose)).status

    def state(self, container_id: str) -> int:
        return self.status(container_id).state

    def wait_state(self, container_id: str, state: int) -> None:
        eventually(lambda: self.state(container_id) == state)

    def test_start(self, container_id: str) -> None:
        """testStartContainer: started, RUNNING within a minute."""
        self.start(container_id)
        self.wait_state(container_id, api_pb2.CONTAINER_RUNNING)

    def stop(self, container_id: str, timeout: int = DEFAULT_STOP_CONTAINER_TIMEOUT) -> float:
        """stopContainer: StopContainer(timeout) must return within `timeout` seconds."""
        done = threading.Event()
        errors: list[BaseException] = []

        def call():
            try:
                self.rc.StopContainer(api_pb2.StopContainerRequest(
                    container_id=container_id, timeout=timeout))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(e)
            done.set()

        started = time.monotonic()
        threading.Thread(target=call, daemon=True).start()
        if not done.wait(timeout):
            raise AssertionError(f"stop container {container_id[:12]} timeout ({timeout}s)")
        if errors:
            raise errors[0]
        return time.monotonic() - started

    def test_stop(self, container_id: str) -> float:
        took = self.stop(container_id)
        self.wait_state(container_id, api_pb2.CONTAINER_EXITED)
        return took

    def remove(self, container_id: str) -> None:
        self.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, **filter_fields) -> list:
        request = api_pb2.ListContainersRequest()
        if filter_fields:
            request.filter.CopyFrom(api_pb2.ContainerFilter(**filter_fields))
        return list(self.rc.ListContainers(request).containers)

    def exec_sync(self, container_id: str, cmd: list[str],
                  timeout: int = DEFAULT_EXEC_SYNC_TIMEOUT):
        return self.rc.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                        timeout=timeout))

    def exec_sync_output(self, container_id: str, cmd: list[str]) -> str:
        """execSyncContainer: no error, stderr empty, stdout returned."""
        reply = self.exec_sync(container_id, cmd)
        assert reply.stderr == b"", reply.stderr
        return reply.stdout.decode()

    def list_stats(self, filter_=None) -> list:
        request = api_pb2.ListContainerStatsRequest()
        if filter_ is not None:
            request.filter.CopyFrom(filter_)
        return list(self.rc.ListContainerStats(request).stats)


# --- CRI logs (parseLogLine / parseCRILog) ------------------------------------------------------
_RFC3339_NANO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


def parse_timestamp(text: str) -> datetime:
    """Go's time.Parse(time.RFC3339Nano, ...): fails on anything else."""
    match = _RFC3339_NANO.match(text)
    assert match, f"failed to parse timeStamp: {text!r}"
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + zone)


def parse_log_lines(pod_config, log_path: str) -> list[tuple[datetime, str, str]]:
    """(timestamp, stream, log + "\\n") per line, as critest reads a CRI log file."""
    messages = []
    with open(os.path.join(pod_config.log_directory, log_path), "rb") as f:
        for raw in f.read().decode().split("\n"):
            if raw == "":
                continue
            fields = raw.split(" ", 3)
            assert len(fields) == 4, f"invalid CRI log line {raw!r}"
            messages.append((parse_timestamp(fields[0]), fields[1], fields[3] + "\n"))
    return messages


def log_contains(pod_config, log_path: str, log: str, stream: str) -> bool:
    """verifyLogContents."""
    return any(m[2] == log and m[1] == stream for m in parse_log_lines(pod_config, log_path))
