"""The container's PID namespace in its OCI config, per the pod's CRI pid mode."""

from corral.sandbox.ocispec import PodContext, _namespaces


def pid_entries(**pod) -> list[dict]:
    context = PodContext(pod_id="p", **pod)
    return [ns for ns in _namespaces(context, cgroup_v2=False) if ns["type"] == "pid"]


def test_pod_mode_joins_the_pod_inits_namespace_by_its_pin():
    assert pid_entries(namespaces={"pid": "/run/corral/pods/p/ns/pid"}, share_pid=True) == \
        [{"type": "pid", "path": "/run/corral/pods/p/ns/pid"}]


def test_container_mode_makes_a_namespace_of_its_own():
    assert pid_entries(namespaces={"pid": "/run/corral/pods/p/ns/pid"}) == [{"type": "pid"}]


def test_a_pod_without_a_pin_gives_each_container_its_own():
    """A pod made before pods had an init: its containers keep their own namespaces."""
    assert pid_entries(namespaces={}, share_pid=True) == [{"type": "pid"}]


def test_node_mode_stays_in_the_hosts_namespace():
    assert pid_entries(namespaces={}, host_pid=True) == []
