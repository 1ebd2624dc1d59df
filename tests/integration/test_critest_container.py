"""critest's Container specs (pkg/validate/container.go, container_linux.go,
multi_container_linux.go) against a real corrald.

Each test is one ginkgo spec, named after it, sending what critest sends (tests/integration/
critest.py).  The mount propagation specs of container_linux.go are ported in
test_cri_security.py; the recursive read-only ones skip, as critest does, while corrald's
runtime handler does not report recursive_read_only_mounts (checked here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import grpc
import pytest
from cri_api.v1 import api_pb2

from corral.images.busybox import build_rootfs
from corral.images.layout import build_image, write_archive
from corral.images.service import ImageService
from tests.integration.corrald import Corrald, remove_every_pod, short_base
from tests.integration.critest import (
    CHECK_SLEEP,
    DEFAULT_LOG,
    ECHO_HELLO,
    LOG_DEFAULT,
    LOOP_LOG_DEFAULT,
    PAUSE_COMMAND,
    SLEEP,
    Critest,
    eventually,
    log_contains,
    parse_log_lines,
)

HTTPD_IMAGE = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4"
HTTPD_PORT = 80


def import_httpd(daemon: Corrald) -> None:
    """critest's httpd image, stood in for by busybox httpd serving a page on port 80 and
    saying "httpd" on stderr first (as Apache's start-up lines do)."""
    rootfs = daemon.base / "httpd-rootfs"
    build_rootfs(str(rootfs))
    os.makedirs(rootfs / "www")
    (rootfs / "www" / "index.html").write_text("<html>It works!</html>\n")
    archive = daemon.base / "httpd.tar"
    write_archive(build_image(str(rootfs), HTTPD_IMAGE, cmd=[
        "sh", "-c", f"echo 'httpd: serving /www' >&2; exec httpd -f -p {HTTPD_PORT} -h /www"]),
        str(archive))
    service = ImageService(str(daemon.root))
    try:
        service.import_archive(str(archive))
    finally:
        service.close()


@pytest.fixture(scope="module")
def corrald():
    daemon = Corrald(short_base(), bridge="crtctr0", subnet="10.99.82.0/24")
    try:
        daemon.import_busybox()
        import_httpd(daemon)
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def critest(corrald):
    """A spec's client; afterwards no pod may be left, nor anything of one."""
    client = Critest(corrald)
    try:
        yield client
    finally:
        client.cleanup()
        remove_every_pod(corrald)


@pytest.fixture
def pod(critest):
    """The BeforeEach of most contexts: framework.CreatePodSandboxForContainer; the AfterEach
    stops and removes it (both must succeed)."""
    pod_id, config = critest.pod_for_container()
    yield pod_id, config
    critest.stop_and_remove_pod(pod_id)


@pytest.fixture
def log_pod(critest):
    pod_id, config = critest.pod_with_log_directory()
    yield pod_id, config
    critest.stop_and_remove_pod(pod_id)


@pytest.fixture
def privileged_pod(critest):
    pod_id, config = critest.privileged_pod()
    yield pod_id, config
    critest.stop_and_remove_pod(pod_id)


def found(items, container_id: str) -> bool:
    return any(item.id == container_id for item in items)


def stat_found(stats, container_id: str) -> bool:
    return any(stat.attributes.id == container_id for stat in stats)


# --- runtime should support basic operations on container --------------------------------------
def test_runtime_should_support_creating_container(critest, pod):
    container_id = critest.default_container(*pod, "container-for-create-")
    assert found(critest.list_containers(id=container_id), container_id)


def test_runtime_should_support_starting_container(critest, pod):
    container_id = critest.default_container(*pod, "container-for-start-test-")
    critest.test_start(container_id)


def test_runtime_should_support_stopping_container(critest, pod):
    container_id = critest.default_container(*pod, "container-for-stop-test-")
    critest.start(container_id)
    critest.test_stop(container_id)


def test_runtime_should_support_removing_created_container(critest, pod):
    container_id = critest.pause_container(*pod, "container-for-remove-created-test-")
    critest.remove(container_id)
    assert not found(critest.list_containers(id=container_id), container_id)


def test_runtime_should_support_removing_running_container(critest, pod):
    container_id = critest.pause_container(*pod, "container-for-remove-running-test-")
    critest.start(container_id)
    critest.remove(container_id)
    assert not found(critest.list_containers(id=container_id), container_id)


def test_runtime_should_support_removing_stopped_container(critest, pod):
    container_id = critest.pause_container(*pod, "container-for-remove-stopped-test-")
    critest.start(container_id)
    critest.test_stop(container_id)
    critest.remove(container_id)
    assert not found(critest.list_containers(id=container_id), container_id)


def test_runtime_should_support_execsync(critest, pod):
    container_id = critest.default_container(*pod, "container-for-execSync-test-")
    critest.start(container_id)
    assert critest.exec_sync_output(container_id, ECHO_HELLO) == "hello"


def test_runtime_should_support_execsync_with_timeout(critest, pod):
    container_id = critest.default_container(*pod, "container-for-execSync-timeout-test-")
    critest.start(container_id)
    with pytest.raises(grpc.RpcError):
        # critest: time.Second; cri-client adds its 300 s RPC timeout to the deadline
        critest.rc.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=SLEEP,
                                                    timeout=1), timeout=300 + 1)
    reply = critest.exec_sync(container_id, CHECK_SLEEP)
    assert reply.stderr == b""
    assert reply.stdout.strip() == b"", "the timed-out exec process must be gone"


def test_runtime_should_support_listing_container_stats(critest, pod):
    container_id = critest.default_container(*pod, "container-for-stats-")
    critest.start(container_id)
    stats = critest.rc.ContainerStats(api_pb2.ContainerStatsRequest(
        container_id=container_id)).stats
    assert stats.attributes.id == container_id
    assert "container-for-stats-" in stats.attributes.metadata.name
    assert stats.cpu.timestamp != 0
    assert stats.memory.timestamp != 0


def test_runtime_should_support_listing_stats_for_started_containers(critest, pod):
    container_id = critest.default_container(*pod, "container-for-stats-")
    critest.start(container_id)
    stats = critest.list_stats(api_pb2.ContainerStatsFilter(id=container_id))
    assert stat_found(stats, container_id)


def test_runtime_should_support_listing_stats_for_started_containers_when_filter_is_nil(
        critest, pod):
    container_id = critest.default_container(*pod, "container-for-stats-with-nil-filter-")
    critest.start(container_id)
    assert stat_found(critest.list_stats(None), container_id)


def test_runtime_should_support_listing_stats_for_three_created_containers_when_filter_is_nil(
        critest, pod):
    ids = [critest.default_container(*pod, "container-for-stats-with-nil-filter-")
           for _ in range(3)]
    for container_id in ids:
        critest.start(container_id)
    stats = critest.list_stats(None)
    assert all(stat_found(stats, container_id) for container_id in ids)


def test_runtime_should_support_listing_stats_for_containers_filtered_by_labels(critest, pod):
    labels = {"foo": "bar"}
    container_id = critest.default_container(*pod, "container-for-stats-with-labels-",
                                             labels=labels)
    critest.start(container_id)
    assert stat_found(critest.list_stats(api_pb2.ContainerStatsFilter(
        label_selector=labels)), container_id)
    assert not stat_found(critest.list_stats(api_pb2.ContainerStatsFilter(
        label_selector={"foo": "baz"})), container_id)


# --- runtime should support adding volume and device -------------------------------------------
def create_host_path(pod_id: str) -> str:
    """createHostPath: os.MkdirTemp("", "test"+podID) holding testVolume.file."""
    host_path = tempfile.mkdtemp(prefix="test" + pod_id)
    open(os.path.join(host_path, "testVolume.file"), "w").close()
    return host_path


def volume_container(critest, pod, prefix: str, host_path: str) -> str:
    config = critest.container_config(prefix, PAUSE_COMMAND, mounts=[api_pb2.Mount(
        host_path=host_path, container_path=host_path, selinux_relabel=True)])
    return critest.create_container(*pod, config)


def test_runtime_should_support_starting_container_with_volume(critest, pod):
    host_path = create_host_path(pod[0])
    try:
        container_id = volume_container(critest, pod, "container-with-volume-test-", host_path)
        critest.test_start(container_id)
        assert critest.exec_sync_output(container_id, ["ls", "-A", host_path]) != ""
    finally:
        shutil.rmtree(host_path, ignore_errors=True)


def test_runtime_should_support_starting_container_with_volume_when_host_path_is_a_symlink(
        critest, pod):
    host_path = create_host_path(pod[0])
    symlink = host_path + "-symlink"
    os.symlink(host_path, symlink)
    try:
        container_id = volume_container(critest, pod, "container-with-symlink-host-path-test-",
                                        symlink)
        critest.test_start(container_id)
        assert critest.exec_sync_output(container_id, ["ls", "-A", symlink]) != ""
    finally:
        os.unlink(symlink)
        shutil.rmtree(host_path, ignore_errors=True)


# --- runtime should support log ----------------------------------------------------------------
def log_container(critest, pod, prefix: str, command: list[str]) -> tuple[str, str]:
    config = critest.container_config(prefix, command)
    config.log_path = config.metadata.name + ".log"
    return config.log_path, critest.create_container(*pod, config)


def test_runtime_should_support_starting_container_with_log(critest, log_pod):
    log_path, container_id = log_container(critest, log_pod, "container-with-log-test-",
                                           LOG_DEFAULT)
    critest.start(container_id)
    critest.wait_state(container_id, api_pb2.CONTAINER_EXITED)
    assert log_contains(log_pod[1], log_path, DEFAULT_LOG + "\n", "stdout"), \
        parse_log_lines(log_pod[1], log_path)


def test_runtime_should_support_reopening_container_log(critest, log_pod):
    _, pod_config = log_pod
    log_path, container_id = log_container(critest, log_pod, "container-reopen-log-test-",
                                           LOOP_LOG_DEFAULT)
    critest.start(container_id)
    eventually(lambda: parse_log_lines(pod_config, log_path), interval=1)
    new_log_path = log_path + ".new"
    os.rename(os.path.join(pod_config.log_directory, log_path),
              os.path.join(pod_config.log_directory, new_log_path))
    critest.rc.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=container_id))
    assert os.path.exists(os.path.join(pod_config.log_directory, log_path)), \
        "new container log file should be created"
    eventually(lambda: parse_log_lines(pod_config, log_path), interval=1)
    old_length = len(parse_log_lines(pod_config, new_log_path))
    for _ in range(5):  # Consistently, 5 s
        time.sleep(1)
        assert len(parse_log_lines(pod_config, new_log_path)) == old_length, \
            "old container log should not change"


# --- Container OOM (container_linux.go) ---------------------------------------------------------
def test_should_terminate_with_exitcode_137_and_reason_oomkilled(critest, privileged_pod):
    config = critest.container_config("OOM-test-", ["sh", "-c",
                                                    "dd if=/dev/zero of=/dev/null bs=20M"])
    config.linux.resources.memory_limit_in_bytes = 15 * 1024 * 1024
    config.linux.resources.memory_swap_limit_in_bytes = 15 * 1024 * 1024
    container_id = critest.create_container(*privileged_pod, config)
    critest.status(container_id, verbose=True)
    critest.start(container_id)
    critest.wait_state(container_id, api_pb2.CONTAINER_EXITED)
    eventually(lambda: critest.status(container_id).reason == "OOMKilled")
    assert critest.status(container_id).exit_code == 137


# --- Container Mount Readonly (container_linux.go) ----------------------------------------------
def runtime_supports_rro(critest) -> bool:
    status = critest.rc.Status(api_pb2.StatusRequest(verbose=False))
    return any(h.features.recursive_read_only_mounts for h in status.runtime_handlers
               if h.name == "")


@pytest.fixture
def rro_host_path(critest, privileged_pod):
    """createHostPathForRROMount: a temp dir with a tmpfs mounted at tmpfs/."""
    host_path = tempfile.mkdtemp(prefix="test" + privileged_pod[0])
    tmpfs = os.path.join(host_path, "tmpfs")
    os.makedirs(tmpfs, 0o700)
    subprocess.run(["mount", "-t", "tmpfs", "none", tmpfs], check=True)
    try:
        yield host_path
    finally:
        subprocess.run(["umount", "-l", tmpfs], check=False)
        shutil.rmtree(host_path, ignore_errors=True)


def test_should_support_non_recursive_readonly_mounts(critest, privileged_pod, rro_host_path):
    mounts = [api_pb2.Mount(host_path=rro_host_path, container_path="/mnt", readonly=True,
                            recursive_read_only=False, selinux_relabel=True)]
    config = critest.container_config("test-mount-", PAUSE_COMMAND, mounts=mounts)
    container_id = critest.create_container(*privileged_pod, config)
    assert len(critest.status(container_id, verbose=True).mounts) == 1
    critest.test_start(container_id)
    critest.exec_sync_output(container_id, ["touch", "/mnt/tmpfs/file"])


def test_recursive_readonly_specs_skip_without_the_feature(critest):
    """should support recursive readonly mounts, and the three should-reject specs, skip."""
    assert not runtime_supports_rro(critest)


# --- Multiple Containers [Conformance] (multi_container_linux.go) ------------------------------
@pytest.fixture
def multi_container_pod(critest):
    """createMultiContainerTestPodSandbox with an httpd and a busybox container started."""
    config = critest.pod_config("PodSandbox-for-multi-container-test-",
                                port_mappings=[api_pb2.PortMapping(container_port=HTTPD_PORT)])
    log_dir = tempfile.mkdtemp(prefix="podLogTest")
    critest.temp_dirs.append(log_dir)
    config.log_directory = os.path.join(log_dir, config.metadata.name)
    os.makedirs(config.log_directory, 0o777)
    pod_id = critest.run_pod(config)

    httpd = critest.container_config("httpd", image=HTTPD_IMAGE)
    httpd.linux.SetInParent()
    httpd.log_path = httpd.metadata.name + ".log"
    httpd_id = critest.create_container(pod_id, config, httpd)
    critest.test_start(httpd_id)

    busybox = critest.container_config("busybox", ["sh", "-c",
                                                   f"echo {DEFAULT_LOG}; sleep 1000"])
    busybox.log_path = busybox.metadata.name + ".log"
    busybox_id = critest.create_container(pod_id, config, busybox)
    critest.test_start(busybox_id)
    yield pod_id, httpd_id, busybox_id
    critest.stop_and_remove_pod(pod_id)


def test_multiple_containers_should_support_network(critest, multi_container_pod):
    pod_id = multi_container_pod[0]
    url = f"http://{critest.pod_status(pod_id).network.ip}:{HTTPD_PORT}"

    def get():
        try:
            with urllib.request.urlopen(url, timeout=60) as reply:
                return reply.status
        except OSError:
            return None

    assert eventually(get, interval=1) == 200


def test_multiple_containers_should_support_container_log(critest, multi_container_pod):
    _, httpd_id, busybox_id = multi_container_pod

    def log_has(container_id: str, text: str):
        def probe():
            with open(critest.status(container_id).log_path) as f:
                return text in f.read()
        return probe

    eventually(log_has(httpd_id, "httpd"))
    eventually(log_has(busybox_id, DEFAULT_LOG))


def test_multiple_containers_should_support_container_exec(critest, multi_container_pod):
    _, httpd_id, busybox_id = multi_container_pod
    assert critest.exec_sync_output(httpd_id, ["echo", "httpd"]) == "httpd\n"
    assert critest.exec_sync_output(busybox_id, ["echo", "busybox"]) == "busybox\n"


# --- beyond the specs: list filters and stats as containerd gives them --------------------------
def sharing_first_digit(make) -> tuple[str, str, list[str]]:
    """Make objects until two IDs share their first hex digit (at most 17): that digit, an
    unshared prefix of one of them, and every ID made."""
    made: list[str] = []
    while True:
        made.append(make())
        firsts = [i[0] for i in made]
        shared = [i for i in made if firsts.count(i[0]) > 1]
        if shared:
            return shared[0][0], shared[0][:12], made


def test_an_id_filter_is_a_whole_id_or_a_prefix_only_one_has(critest, pod):
    """containerd (truncindex) and CRI-O: a prefix several IDs share names none of them."""
    digit, prefix, made = sharing_first_digit(
        lambda: critest.default_container(*pod, "container-for-filter-"))
    one = next(i for i in made if i.startswith(prefix))
    assert [c.id for c in critest.list_containers(id=digit)] == []
    assert [c.id for c in critest.list_containers(id=prefix)] == [one]
    assert [c.id for c in critest.list_containers(id=one)] == [one]
    assert critest.list_containers(id="f" * 64) == []
    critest.start(one)
    stats = critest.list_stats
    assert [s.attributes.id for s in stats(api_pb2.ContainerStatsFilter(id=digit))] == []
    assert [s.attributes.id for s in stats(api_pb2.ContainerStatsFilter(id=prefix))] == [one]


def test_a_pod_filter_is_a_whole_id_or_a_prefix_only_one_pod_has(critest):
    digit, prefix, made = sharing_first_digit(lambda: critest.pod_for_container()[0])
    pod_id = next(i for i in made if i.startswith(prefix))
    config = critest.pod_config("unused")  # CreateContainer takes the stored pod config
    container_id = critest.default_container(pod_id, config, "container-in-pod-")
    assert [p.id for p in critest.list_pods(id=digit)] == []
    assert [p.id for p in critest.list_pods(id=prefix)] == [pod_id]
    assert [c.id for c in critest.list_containers(pod_sandbox_id=digit)] == []
    assert [c.id for c in critest.list_containers(pod_sandbox_id=prefix)] == [container_id]
    assert [s.attributes.id for s in critest.list_stats(
        api_pb2.ContainerStatsFilter(pod_sandbox_id=prefix))] == [container_id]
    assert critest.list_stats(api_pb2.ContainerStatsFilter(pod_sandbox_id=digit)) == []


def test_list_filters_by_state_and_labels(critest, pod):
    created = critest.default_container(*pod, "created-", labels={"tier": "a"})
    running = critest.default_container(*pod, "running-", labels={"tier": "a", "x": "1"})
    exited = critest.default_container(*pod, "exited-", labels={"tier": "b"})
    critest.start(running)
    critest.start(exited)
    critest.rc.StopContainer(api_pb2.StopContainerRequest(container_id=exited, timeout=0))

    def ids(**wanted):
        return sorted(c.id for c in critest.list_containers(**wanted))

    for state, container_id in ((api_pb2.CONTAINER_CREATED, created),
                                (api_pb2.CONTAINER_RUNNING, running),
                                (api_pb2.CONTAINER_EXITED, exited)):
        assert ids(state=api_pb2.ContainerStateValue(state=state)) == [container_id]
    assert ids(label_selector={"tier": "a"}) == sorted([created, running])
    assert ids(label_selector={"tier": "a", "x": "1"}) == [running]
    assert ids(label_selector={"tier": "a"}, state=api_pb2.ContainerStateValue(
        state=api_pb2.CONTAINER_CREATED)) == [created]
    assert ids(label_selector={"tier": "c"}) == []
    ready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
    assert [p.id for p in critest.list_pods(state=ready)] == [pod[0]]


def test_stats_of_a_created_container_have_cpu_and_memory(critest, pod):
    """containerd reports a created task's cgroup (kubelet lists every container's stats)."""
    container_id = critest.default_container(*pod, "container-for-created-stats-")
    stats = critest.rc.ContainerStats(api_pb2.ContainerStatsRequest(
        container_id=container_id)).stats
    assert stats.cpu.timestamp != 0 and stats.memory.timestamp != 0
    assert stats.memory.working_set_bytes.value > 0


def test_a_missing_host_path_is_made_a_directory(critest, pod):
    """containerd's WithMounts makes a volume's missing host path (0755, with its parents):
    kubelet's hostPath volumes without a type rely on it."""
    base = tempfile.mkdtemp(prefix="test" + pod[0])
    missing = os.path.join(base, "not", "yet")
    try:
        config = critest.container_config("container-with-missing-host-path-", PAUSE_COMMAND,
                                          mounts=[api_pb2.Mount(host_path=missing,
                                                                container_path="/data")])
        container_id = critest.create_container(*pod, config)
        assert os.path.isdir(missing) and os.stat(missing).st_mode & 0o777 == 0o755
        critest.test_start(container_id)
        critest.exec_sync_output(container_id, ["touch", "/data/written"])
        assert os.listdir(missing) == ["written"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_stopping_a_program_without_a_sigterm_handler_takes_no_grace_period(critest, pod):
    """critest's busybox 1.29 `top` has no SIGTERM handler, as `sleep` here: were it PID 1
    of its own namespace it would ignore SIGTERM and StopContainer(60) would reach critest's
    60 s limit.  With pid POD (critest's default) the pod's init is PID 1, so it ends at once."""
    config = critest.container_config("container-for-stop-sleep-", ["sleep", "1000"])
    config.linux.SetInParent()
    container_id = critest.create_container(*pod, config)
    critest.start(container_id)
    assert critest.test_stop(container_id) < 5
    assert critest.status(container_id).exit_code == 143  # SIGTERM's, not SIGKILL's 137
