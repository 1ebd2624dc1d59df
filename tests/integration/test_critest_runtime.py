"""Ports of critest's runtime info and idempotence specs (cri-tools pkg/validate
runtime_info.go, status.go, idempotence.go, v1.29.0 to v1.36.0) over corrald's real socket.

Each test is one ginkgo `It`, named after it, sending what critest sends (critest_env.py).
"""

from __future__ import annotations

import time

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod
from tests.integration.critest_env import Critest, critest_corrald, new_uuid

DEFAULT_API_VERSION = "0.1.0"


@pytest.fixture(scope="module")
def world():
    with critest_corrald("corraltcr", "10.99.72.0/24") as (daemon, registry):
        yield daemon


@pytest.fixture
def c(world):
    yield Critest(world)
    remove_every_pod(world)


# --- runtime_info.go, status.go -------------------------------------------------------------
def test_runtime_should_return_version_info(c):
    version = c.rc.Version(api_pb2.VersionRequest(version=DEFAULT_API_VERSION))
    # critest asks only that the fields be there; kubelet reads them, so say something.
    assert version.version and version.runtime_name and version.runtime_version
    assert version.runtime_api_version == "v1"


def test_runtime_should_return_runtime_conditions(c):
    status = c.rc.Status(api_pb2.StatusRequest(verbose=False)).status
    ready = {condition.type for condition in status.conditions if condition.status}
    assert {"RuntimeReady", "NetworkReady"} <= ready


# --- idempotence.go ---------------------------------------------------------------------------
def test_stop_pod_sandbox_should_not_return_an_error_if_not_found(c):
    c.rc.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=new_uuid()))


def test_stop_pod_sandbox_should_not_return_an_error_if_already_stopped(c):
    pod_id = c.run_default_pod_sandbox("idempotence-pod-")
    for _ in range(2):
        c.rc.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert c.pod_status(pod_id).state == api_pb2.SANDBOX_NOTREADY
    c.rc.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_remove_pod_sandbox_should_not_return_an_error_if_not_found(c):
    c.rc.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=new_uuid()))


def test_stop_container_should_not_return_an_error_if_not_found(c):
    c.rc.StopContainer(api_pb2.StopContainerRequest(container_id=new_uuid(), timeout=0))


def test_stop_container_should_not_return_an_error_if_already_stopped(c):
    pod_id, pod_config = c.create_pod_sandbox_for_container()
    container_id = c.create_pause_container(pod_id, pod_config, "idempotence-container-")
    c.start_container(container_id)
    assert c.container_status(container_id).state == api_pb2.CONTAINER_RUNNING
    # critest's testStopContainer: timeout 60, failed if the call takes that long
    started = time.monotonic()
    c.rc.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=60))
    assert time.monotonic() - started < 60, "stop container timeout"
    assert c.container_status(container_id).state == api_pb2.CONTAINER_EXITED
    for _ in range(2):  # removeContainer twice, then its status is NOT_FOUND
        c.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
        listed = c.rc.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(id=container_id))).containers
        assert not listed
    c.stop_and_remove_pod(pod_id)


def test_remove_container_should_not_return_an_error_if_not_found(c):
    c.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=new_uuid()))


def test_remove_image_should_not_return_an_error_if_not_found(c):
    fake_image_id = "0" * 64
    for _ in range(2):
        c.ic.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=fake_image_id)))
