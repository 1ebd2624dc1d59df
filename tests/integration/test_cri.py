"""The CRI against a real corrald over its Unix socket: pods, containers, exec, logs, errors."""

from __future__ import annotations

import os
import re
import signal
import time

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.conftest import PURE_V2
from tests.integration.corrald import BUSYBOX, remove_every_pod, running_corrald

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) (.*)$")


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("corralt0", "10.99.7.0/24") as daemon:
        yield daemon


@pytest.fixture
def daemon(corrald):
    """The shared daemon; after each test no pod of it may be left, nor anything of one."""
    yield corrald
    remove_every_pod(corrald)


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert "Traceback" not in info.value.details()
    return info.value.code()


def test_version_and_status(daemon):
    version = daemon.runtime.Version(api_pb2.VersionRequest())
    assert (version.runtime_name, version.runtime_api_version) == ("corral", "v1")
    conditions = {c.type: c.status for c in
                  daemon.runtime.Status(api_pb2.StatusRequest()).status.conditions}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


def test_pod_and_container_lifecycle_with_logs(daemon):
    pod_id, pod_config = daemon.run_pod("life")
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    assert status.status.state == api_pb2.SANDBOX_READY
    assert status.status.network.ip.startswith("10.99.7.")
    assert "shim" in status.info["info"]

    container_id = daemon.create_container(
        pod_id, pod_config, "hello",
        ["sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 3"])
    assert daemon.container_state(container_id).state == api_pb2.CONTAINER_CREATED
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    final = daemon.wait_exited(container_id)
    assert final.exit_code == 3
    assert final.started_at > 0 and final.finished_at >= final.started_at
    assert final.image.image == BUSYBOX and final.image_id.startswith("sha256:")

    lines = open(final.log_path).read().splitlines()
    parsed = [LOG_LINE.match(line).groups() for line in lines]
    assert ("stdout", "F", "hello from life") in parsed
    assert ("stderr", "F", "oops") in parsed

    listed = daemon.runtime.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id)))
    assert [c.id for c in listed.containers] == [container_id]
    daemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    daemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    for _ in range(2):  # idempotent, as the CRI requires
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    for _ in range(2):
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items


def test_exec_sync_and_stop(daemon):
    pod_id, pod_config = daemon.run_pod("execs")
    container_id = daemon.create_container(
        pod_id, pod_config, "sleeper",
        ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["sh", "-c", "echo out; echo err >&2; exit 4"],
        timeout=10))
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 4)
    assert code_of(daemon.runtime.ExecSync, api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["sleep", "30"], timeout=1)) == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    started = time.monotonic()
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id,
                                                              timeout=10))
    assert time.monotonic() - started < 5  # the TERM trap ends it long before the timeout
    assert daemon.container_state(container_id).exit_code == 7
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id))


def test_stop_escalates_to_kill(daemon):
    pod_id, pod_config = daemon.run_pod("stubborn")
    container_id = daemon.create_container(
        pod_id, pod_config, "deaf", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id,
                                                              timeout=1))
    assert daemon.container_state(container_id).exit_code == 137


def test_error_codes(daemon):
    rt = daemon.runtime
    missing = "f" * 64
    assert code_of(rt.ContainerStatus, api_pb2.ContainerStatusRequest(
        container_id=missing)) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.PodSandboxStatus, api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=missing)) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.StartContainer, api_pb2.StartContainerRequest(
        container_id="")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(
        config=api_pb2.PodSandboxConfig())) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(
        config=daemon.pod_config("h"), runtime_handler="nope")) == \
        grpc.StatusCode.INVALID_ARGUMENT

    pod_id, pod_config = daemon.run_pod("errors")
    assert code_of(rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=pod_config)) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert code_of(rt.CreateContainer, api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="x"),
            image=api_pb2.ImageSpec(image="no/such:image")))) == grpc.StatusCode.NOT_FOUND
    container_id = daemon.create_container(pod_id, pod_config, "once", ["true"])
    assert code_of(rt.CreateContainer, api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=daemon.container_config("once", ["true"]))) == \
        grpc.StatusCode.ALREADY_EXISTS
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    daemon.wait_exited(container_id)
    assert code_of(rt.StartContainer, api_pb2.StartContainerRequest(
        container_id=container_id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(rt.ExecSync, api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["true"])) == grpc.StatusCode.FAILED_PRECONDITION


def test_list_filters(daemon):
    first, _ = daemon.run_pod("first", labels={"app": "a"})
    second, _ = daemon.run_pod("second", labels={"app": "b"})
    rt = daemon.runtime

    def ids(**filter_fields):
        request = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(**filter_fields))
        return sorted(pod.id for pod in rt.ListPodSandbox(request).items)

    assert ids() == sorted([first, second])
    assert ids(id=first[:13]) == [first]
    assert ids(label_selector={"app": "b"}) == [second]
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=second))
    assert ids(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)) == [second]
    assert ids(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)) == [first]


def test_images_through_cri(daemon):
    images = daemon.images.ListImages(api_pb2.ListImagesRequest()).images
    assert any(BUSYBOX in image.repo_tags for image in images)
    status = daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image="busybox")))
    assert status.image.id.startswith("sha256:") and BUSYBOX in status.image.repo_tags
    absent = daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image="no/such:image")))
    assert not absent.HasField("image")
    info = daemon.images.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    assert info.image_filesystems[0].used_bytes.value > 0


def test_runc_runtime_handler(daemon):
    """The `oci` handler: the same pod lifecycle through Debian's runc (a RuntimeClass)."""
    pod_config = daemon.pod_config("viarunc")
    pod_id = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
        config=pod_config, runtime_handler="runc")).pod_sandbox_id
    assert daemon.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.runtime_handler == "runc"
    container_id = daemon.create_container(pod_id, pod_config, "r",
                                           ["sh", "-c", "echo via runc; sleep 30"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["hostname"], timeout=10))
    assert reply.stdout == b"viarunc\n"
    stats = daemon.runtime.ContainerStats(api_pb2.ContainerStatsRequest(
        container_id=container_id)).stats  # through `runc events --stats`
    assert stats.memory.working_set_bytes.value > 0
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id))
    status = daemon.container_state(container_id)
    assert (status.state, status.exit_code) == (api_pb2.CONTAINER_EXITED, 137)
    assert "via runc" in open(status.log_path).read()


def test_low_oom_score_adj_is_clamped_not_refused(daemon):
    """This host's root lacks CAP_SYS_RESOURCE: -998 is raised to corrald's own value."""
    pod_id, pod_config = daemon.run_pod("oom")
    config = daemon.container_config("c", ["sh", "-c", "cat /proc/self/oom_score_adj"])
    config.linux.resources.oom_score_adj = -998
    container_id = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    status = daemon.wait_exited(container_id)
    assert status.exit_code == 0
    value = int(LOG_LINE.match(open(status.log_path).read().splitlines()[0]).group(3))
    assert value == int(open(f"/proc/{daemon.process.pid}/oom_score_adj").read())


def test_reopen_container_log(daemon):
    pod_id, pod_config = daemon.run_pod("rotate")
    container_id = daemon.create_container(
        pod_id, pod_config, "c", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    log_path = daemon.container_state(container_id).log_path
    time.sleep(0.3)
    os.rename(log_path, log_path + ".1")
    daemon.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(
        container_id=container_id))
    time.sleep(0.3)
    assert "tick" in open(log_path).read()  # a new file at the same path
    assert "tick" in open(log_path + ".1").read()


def zombies_below(ancestor: int) -> list[int]:
    """Zombie processes among the descendants of `ancestor`."""
    parents, states = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(name)], states[int(name)] = int(fields[1]), fields[0]

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == ancestor:
                return True
        return False

    return [pid for pid, state in states.items() if state == "Z" and descends(pid)]


@pytest.mark.parametrize("host_pid", [False, True])
def test_orphaned_grandchildren_leave_no_zombie(daemon, host_pid):
    """Orphans are reaped: by the shim (a subreaper) when the container shares the host's PID
    namespace, at once; in its own PID namespace they are its init's until it ends."""
    pod_config = daemon.pod_config(f"orphans{int(host_pid)}")
    if host_pid:
        pod_config.linux.security_context.namespace_options.pid = api_pb2.NODE
    pod_id = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
        config=pod_config)).pod_sandbox_id
    container_id = daemon.create_container(
        pod_id, pod_config, "parent",
        ["sh", "-c", "(sleep 0.2 &) ; (sleep 0.3 &) ; exec sleep 30"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    shims = daemon.shim_pids()
    time.sleep(1.0)  # every grandchild has ended
    if host_pid:
        assert [zombies_below(shim) for shim in shims] == [[] for _ in shims]
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id))
    time.sleep(0.2)
    assert [zombies_below(shim) for shim in shims] == [[] for _ in shims]
    assert all(os.path.exists(f"/proc/{shim}") for shim in shims)  # the shims live on


def test_container_config_reaches_the_container(daemon, tmp_path):
    """User, env, working dir, mounts, read-only rootfs, the pod's /dev/shm and files."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").write_text("from the host\n")
    pod_id, pod_config = daemon.run_pod("configured")
    config = daemon.container_config("a", ["sleep", "60"])
    config.envs.add(key="GREETING", value="hello")
    config.working_dir = "/tmp"
    config.linux.security_context.run_as_user.value = 1000
    config.linux.security_context.readonly_rootfs = True
    config.mounts.add(container_path="/data", host_path=str(shared), readonly=True)
    first = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
    second = daemon.create_container(pod_id, pod_config, "b", ["sleep", "60"])
    for container_id in (first, second):
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))

    def run(container_id: str, script: str) -> str:
        reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", script], timeout=10))
        return reply.stdout.decode() + reply.stderr.decode()

    assert run(first, "id -u; pwd; echo $GREETING; cat /data/data") == \
        "1000\n/tmp\nhello\nfrom the host\n"
    assert "Read-only file system" in run(first, "touch /data/x; touch /etc/x")
    assert "configured" in run(first, "cat /etc/hosts") and \
        run(first, "cat /etc/hostname") == "configured\n"
    run(second, "echo shared-memory > /dev/shm/note")
    assert run(first, "cat /dev/shm/note") == "shared-memory\n"  # one /dev/shm per pod
    assert run(second, "cat /proc/1/cmdline | tr '\\0' ' '") == "sleep 60 "  # own PID ns


@pytest.fixture
def private_registry(tmp_path):
    from tests.integration.registry_server import Registry, layered_image

    layout = str(tmp_path / "layout")
    layered_image(layout, marker=b"amd64")
    server = Registry(str(tmp_path / "registry"), htpasswd=("bob", "pw"))
    try:
        server.push(layout, "cri/app")
        yield server
    finally:
        server.stop()


def test_pull_with_auth_status_remove_image(daemon, private_registry):
    ref = f"{private_registry.host}/cri/app:latest"
    spec = api_pb2.ImageSpec(image=ref)
    assert code_of(daemon.images.PullImage, api_pb2.PullImageRequest(image=spec)) == \
        grpc.StatusCode.UNAUTHENTICATED
    reply = daemon.images.PullImage(api_pb2.PullImageRequest(
        image=spec, auth=api_pb2.AuthConfig(username="bob", password="pw")))
    status = daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=spec)).image
    assert reply.image_ref == status.id and ref in status.repo_tags
    assert status.repo_digests[0].startswith(f"{private_registry.host}/cri/app@sha256:")

    pod_id, pod_config = daemon.run_pod("user")
    config = daemon.container_config("c", ["/bin/tool"])  # the image has no shell to run
    config.image.image = ref
    daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))
    assert code_of(daemon.images.RemoveImage, api_pb2.RemoveImageRequest(image=spec)) == \
        grpc.StatusCode.FAILED_PRECONDITION  # a container uses it
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec))
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec))  # idempotent
    assert not daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=spec)).HasField(
        "image")


def test_sigterm_stops_corrald_and_leaves_containers_running(daemon):
    pod_id, pod_config = daemon.run_pod("term")
    container_id = daemon.create_container(pod_id, pod_config, "c", ["sleep", "60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    assert daemon.kill(signal.SIGTERM) == 0  # a clean exit
    assert not os.path.exists(daemon.socket)
    assert daemon.shim_pids()  # the pod's shim, and its container, live on
    daemon.start()
    assert daemon.container_state(container_id).state == api_pb2.CONTAINER_RUNNING


def test_pod_sysctls_and_cgroup_parent(daemon):
    parent = f"/corraltest-{os.getpid()}/pod-sysctl"
    pod_config = daemon.pod_config("tuned")
    pod_config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "99"
    pod_config.linux.cgroup_parent = parent
    pod_id = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
        config=pod_config)).pod_sandbox_id
    try:
        container_id = daemon.create_container(pod_id, pod_config, "c", ["sleep", "60"])
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
        reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
            container_id=container_id, timeout=10,
            cmd=["sh", "-c", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
                             "cat /proc/self/cgroup"]))
        lines = reply.stdout.decode().splitlines()
        assert lines[0] == "99"
        if PURE_V2:
            # A cgroup namespace (as containerd gives on v2): the container sees its own
            # cgroup as the root; the host sees it below the pod's parent.
            assert lines[1:] == ["0::/"]
            with open(f"/sys/fs/cgroup{parent}/{container_id}/cgroup.procs") as f:
                assert f.read().split()
        else:
            assert any(f"{parent}/{container_id}" in line for line in lines[1:])
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            assert f.read().strip() != "99"  # the host's is untouched
        bad = daemon.pod_config("untuned")
        bad.linux.sysctls["kernel.hostname"] = "nope"
        bad_pod = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=bad)).pod_sandbox_id
        assert code_of(daemon.runtime.CreateContainer, api_pb2.CreateContainerRequest(
            pod_sandbox_id=bad_pod, config=daemon.container_config("c", ["true"]),
            sandbox_config=bad)) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for pod in daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
            daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(
                pod_sandbox_id=pod.id))
        # A CRI cgroup parent is kubelet's to remove.
        for hierarchy in [""] if PURE_V2 else os.listdir("/sys/fs/cgroup"):
            for path in (parent, os.path.dirname(parent)):
                try:
                    os.rmdir(os.path.join("/sys/fs/cgroup", hierarchy) + path)
                except OSError:
                    pass


def test_oom_killed_reason_and_update_resources(daemon):
    pod_id, pod_config = daemon.run_pod("memory")
    config = daemon.container_config("hog", ["sh", "-c", "sleep 0.5; "
                                                         "dd if=/dev/zero of=/dev/null bs=64M"])
    config.linux.resources.memory_limit_in_bytes = 256 * 2**20
    container_id = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    # Before it allocates, lower the limit below dd's 64 MiB buffer: the OOM killer ends it.
    daemon.runtime.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=container_id,
        linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=32 * 2**20)))
    status = daemon.wait_exited(container_id)
    assert (status.exit_code, status.reason) == (137, "OOMKilled")
    assert code_of(daemon.runtime.UpdateContainerResources,
                   api_pb2.UpdateContainerResourcesRequest(
                       container_id=container_id,
                       linux=api_pb2.LinuxContainerResources(cpu_quota=5))) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_container_stats(daemon):
    pod_id, pod_config = daemon.run_pod("stats")
    container_id = daemon.create_container(
        pod_id, pod_config, "busy",
        ["sh", "-c", "head -c 3000000 /dev/urandom > /tmp/blob; exec sleep 60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    time.sleep(0.5)
    stats = daemon.runtime.ContainerStats(api_pb2.ContainerStatsRequest(
        container_id=container_id)).stats
    assert stats.attributes.id == container_id and stats.attributes.metadata.name == "busy"
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0
    assert stats.writable_layer.used_bytes.value >= 3_000_000  # /tmp/blob is in the upper dir
    listed = daemon.runtime.ListContainerStats(api_pb2.ListContainerStatsRequest(
        filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod_id))).stats
    assert [s.attributes.id for s in listed] == [container_id]


def test_concurrent_pod_lifecycles(daemon):
    """kubelet starts pods in parallel: eight at once, each with a container, then removed."""
    from concurrent.futures import ThreadPoolExecutor

    def life(i: int) -> tuple[int, bytes]:
        pod_id, pod_config = daemon.run_pod(f"parallel{i}")
        container_id = daemon.create_container(pod_id, pod_config, "c", ["sleep", "30"])
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
        reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["hostname"], timeout=10))
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        return i, reply.stdout

    with ThreadPoolExecutor(8) as pool:
        results = sorted(pool.map(life, range(8)))
    assert results == [(i, f"parallel{i}\n".encode()) for i in range(8)]


def test_tty_container_output_reaches_the_log(daemon):
    pod_id, pod_config = daemon.run_pod("tty")
    config = daemon.container_config("t", ["sh", "-c", "tty; stty size; echo on the terminal"])
    config.tty = True
    container_id = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    status = daemon.wait_exited(container_id)
    assert status.exit_code == 0
    time.sleep(0.2)
    lines = [LOG_LINE.match(line).groups() for line in open(status.log_path).read().splitlines()]
    messages = [message.rstrip("\r") for stream, _, message in lines if stream == "stdout"]
    assert messages[0].startswith("/dev/pts/") and "on the terminal" in messages
