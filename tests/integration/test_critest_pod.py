"""critest's PodSandbox specs (pkg/validate/pod.go, pod_linux.go) against a real corrald.

Each test is one ginkgo spec, named after it, sending what critest sends (tests/integration/
critest.py).  The metrics specs skip themselves when ListMetricDescriptors is UNIMPLEMENTED,
as corrald's is, so they are not ported.
"""

from __future__ import annotations

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod, running_corrald
from tests.integration.critest import DEFAULT_ATTEMPT, Critest, new_uuid


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("crtpod0", "10.99.81.0/24") as daemon:
        yield daemon


@pytest.fixture
def critest(corrald):
    """A spec's client; afterwards no pod may be left, nor anything of one."""
    client = Critest(corrald)
    try:
        yield client
    finally:
        client.cleanup()
        remove_every_pod(corrald)


def test_metrics_specs_skip_on_unimplemented(critest):
    """The BeforeEach of "runtime should support metrics operations" skips on UNIMPLEMENTED."""
    with pytest.raises(grpc.RpcError) as info:
        critest.rc.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- runtime should support basic operations on PodSandbox ------------------------------------
def test_runtime_should_support_running_podsandbox(critest):
    config = critest.pod_config("PodSandbox-for-create-test-")
    pod_id = critest.run_pod(config)
    assert critest.pod_status(pod_id).state == api_pb2.SANDBOX_READY
    assert pod_id in [p.id for p in critest.list_pods(id=pod_id)]
    critest.stop_and_remove_pod(pod_id)


def test_runtime_should_support_stopping_podsandbox(critest):
    pod_id = critest.run_pod(critest.pod_config("PodSandbox-for-test-stop-"))
    critest.rc.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert critest.pod_status(pod_id).state == api_pb2.SANDBOX_NOTREADY
    critest.stop_and_remove_pod(pod_id)  # the AfterEach: both again, both succeed


def test_runtime_should_support_removing_podsandbox(critest):
    pod_id = critest.run_pod(critest.pod_config("PodSandbox-for-test-remove-"))
    critest.rc.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    critest.rc.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert pod_id not in [p.id for p in critest.list_pods(id=pod_id)]


def test_runtime_should_support_preserving_podsandbox_attributes(critest):
    name = "PodSandbox-with-attributes-" + new_uuid()
    uid = "cri-test-uid" + new_uuid()
    namespace = "cri-test-namespace" + new_uuid()
    labels = {"foo": "bar", "io.kubernetes.pod.name": name,
              "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.uid": uid}
    annotations = {"abc": "def"}
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace,
                                            attempt=DEFAULT_ATTEMPT),
        labels=labels, annotations=annotations)
    config.linux.cgroup_parent = critest.cgroup_parent()
    config.linux.SetInParent()
    pod_id = critest.run_pod(config)

    status = critest.pod_status(pod_id)
    assert (status.metadata.name, status.metadata.uid, status.metadata.namespace,
            status.metadata.attempt) == (name, uid, namespace, DEFAULT_ATTEMPT)
    assert labels.items() <= dict(status.labels).items()
    assert annotations.items() <= dict(status.annotations).items()

    pods = critest.list_pods(id=pod_id)
    assert len(pods) == 1
    pod = pods[0]
    assert (pod.metadata.name, pod.metadata.uid, pod.metadata.namespace,
            pod.metadata.attempt) == (name, uid, namespace, DEFAULT_ATTEMPT)
    assert labels.items() <= dict(pod.labels).items()
    assert annotations.items() <= dict(pod.annotations).items()
    critest.stop_and_remove_pod(pod_id)


# --- runtime should support sysctls (pod_linux.go) ---------------------------------------------
@pytest.mark.parametrize("sysctl, value, prefix", [
    ("kernel.shm_rmid_forced", "1", "container-shm-rmid-forced"),    # safe sysctls
    ("fs.mqueue.msg_max", "100", "container-fs-mqueue-msg-max"),     # unsafe sysctls
], ids=["should_support_safe_sysctls", "should_support_unsafe_sysctls"])
def test_runtime_should_support_sysctls(critest, sysctl, value, prefix):
    config = critest.pod_config("pod-sandbox-with-sysctls-")
    config.linux.sysctls[sysctl] = value
    pod_id = critest.run_pod(config)
    container_id = critest.default_container(pod_id, config, prefix)
    critest.start(container_id)
    reply = critest.exec_sync(container_id, ["cat", "/proc/sys/" + sysctl.replace(".", "/")])
    assert reply.stdout.decode().strip() == value
    critest.stop_and_remove_pod(pod_id)
