"""corrald killed (SIGKILL) at the worst moments: the restarted daemon reports a consistent
world, keeps what was healthy, and nothing is leaked; shims and containers outlive it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import NOTHING_LEFT, Corrald, running_corrald


@pytest.fixture
def daemon():
    with running_corrald("corralt1", "10.99.8.0/24") as daemon:
        yield daemon


def remove_everything(daemon: Corrald) -> None:
    for pod in daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    assert daemon.leftovers() == NOTHING_LEFT


def test_containers_and_shim_survive_corrald(daemon):
    pod_id, pod_config = daemon.run_pod("survivor")
    container_id = daemon.create_container(
        pod_id, pod_config, "ticker", ["sh", "-c", "while :; do echo tick; sleep 0.1; done"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    (shim_pid,) = daemon.shim_pids()
    assert os.getsid(shim_pid) == shim_pid  # its own session, not corrald's
    daemon.kill(signal.SIGKILL)
    time.sleep(0.5)
    os.kill(shim_pid, 0)  # still alive
    log_path = daemon.base / "logs" / "survivor" / "ticker.log"
    size = log_path.stat().st_size
    time.sleep(0.5)
    assert log_path.stat().st_size > size  # logs keep flowing without corrald
    daemon.start()
    status = daemon.container_state(container_id)
    assert status.state == api_pb2.CONTAINER_RUNNING
    assert daemon.shim_pids() == [shim_pid]  # reconnected, not replaced
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id,
                                                            cmd=["echo", "still here"]))
    assert reply.stdout == b"still here\n"
    remove_everything(daemon)


def test_exit_while_corrald_is_down_is_seen_after_restart(daemon):
    pod_id, pod_config = daemon.run_pod("brief")
    container_id = daemon.create_container(pod_id, pod_config, "short",
                                           ["sh", "-c", "sleep 0.5; exit 9"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    daemon.kill(signal.SIGKILL)
    time.sleep(1.0)
    daemon.start()
    status = daemon.container_state(container_id)
    assert (status.state, status.exit_code) == (api_pb2.CONTAINER_EXITED, 9)
    remove_everything(daemon)


def test_dead_shim_marks_its_containers_exited(daemon):
    pod_id, pod_config = daemon.run_pod("orphaned")
    container_id = daemon.create_container(pod_id, pod_config, "sleeper", ["sleep", "60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    daemon.kill(signal.SIGKILL)
    for pid in daemon.shim_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    daemon.start()
    status = daemon.container_state(container_id)
    # no exit was recorded: containerd's unknown exit
    assert (status.state, status.exit_code, status.reason) == \
        (api_pb2.CONTAINER_EXITED, 255, "Unknown")
    # The state dir is intact, so the pod keeps its namespaces and a new shim serves it
    # (a reboot, which loses them, is test_cri_reboot.py's).
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_READY
    again = daemon.create_container(pod_id, pod_config, "again", ["sleep", "60"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=again))
    assert daemon.container_state(again).state == api_pb2.CONTAINER_RUNNING
    remove_everything(daemon)


def kill_during(daemon: Corrald, call, seconds: float) -> None:
    """Start `call` in a thread and SIGKILL corrald `seconds` later, mid-call."""
    errors = []

    def run():
        try:
            call()
        except grpc.RpcError as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(seconds)
    daemon.kill(signal.SIGKILL)
    thread.join(30)


@pytest.mark.parametrize("delay", [0.02, 0.1, 0.3])
def test_kill_during_run_pod_sandbox(daemon, delay):
    kill_during(daemon, lambda: daemon.run_pod("crashy"), delay)
    daemon.start()
    pods = daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    # Either the pod was made whole before the kill, or nothing of it is left.
    assert all(pod.state == api_pb2.SANDBOX_READY for pod in pods)
    remove_everything(daemon)


@pytest.mark.parametrize("delay", [0.02, 0.1])
def test_kill_during_create_and_start_container(daemon, delay):
    pod_id, pod_config = daemon.run_pod("crashc")

    def create_and_start():
        container_id = daemon.create_container(pod_id, pod_config, "c", ["sleep", "30"])
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))

    kill_during(daemon, create_and_start, delay)
    daemon.start()
    containers = daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    for container in containers:
        assert container.state in (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_RUNNING)
    remove_everything(daemon)


@pytest.mark.parametrize("delay", [0.02, 0.1])
def test_kill_during_stop_pod_sandbox(daemon, delay):
    pod_id, pod_config = daemon.run_pod("crashs")
    container_id = daemon.create_container(pod_id, pod_config, "c", ["sleep", "30"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    kill_during(daemon, lambda: daemon.runtime.StopPodSandbox(
        api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id)), delay)
    daemon.start()
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_NOTREADY
    assert daemon.container_state(container_id).state == api_pb2.CONTAINER_EXITED
    remove_everything(daemon)


@pytest.fixture
def registry_with_image(tmp_path):
    from tests.integration.registry_server import Registry, layered_image

    layout = str(tmp_path / "layout")
    layered_image(layout, marker=b"amd64")
    server = Registry(str(tmp_path / "registry"))
    try:
        server.push(layout, "crash/app")
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.2])
def test_kill_during_pull_image(daemon, registry_with_image, delay):
    ref = f"{registry_with_image.host}/crash/app:latest"
    kill_during(daemon, lambda: daemon.images.PullImage(api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=ref))), delay)
    daemon.start()
    status = daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=ref)))
    content = daemon.root / "content"
    blobs = sorted(os.listdir(content / "blobs" / "sha256"))
    strays = [n for n in os.listdir(content / "ingest") if not n.endswith(".lock")]
    assert strays == []
    if not status.HasField("image"):
        # The pull died before recording: nothing of it may remain, only busybox's blobs.
        from corral.images.service import ImageService

        service = ImageService(str(daemon.root))
        try:
            (busybox,) = service.list()
            kept = {busybox.manifest_digest, busybox.id, busybox.target_digest}
            manifest = json.loads(service.content.read(busybox.manifest_digest))
            kept |= {layer["digest"] for layer in manifest["layers"]}
        finally:
            service.close()
        assert {"sha256:" + b for b in blobs} == kept
    # Either way the image pulls (again), whole.
    daemon.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
    assert daemon.images.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=ref))).image.size > 0
    remove_everything(daemon)


def snapshot_ids(daemon: Corrald) -> dict[str, int]:
    import sqlite3

    db = sqlite3.connect(daemon.root / "metadata.db")
    try:
        return dict(db.execute("SELECT key, id FROM snapshots").fetchall())
    finally:
        db.close()


def test_snapshot_ids_are_never_given_twice(daemon, registry_with_image):
    """snapshots/N left by a pull killed mid-layer (its record rolled back, or removed by a
    crashed removal) is never given to a new snapshot, and recovery removes it; a removed
    snapshot's ID is not given again either."""
    ref = api_pb2.ImageSpec(image=f"{registry_with_image.host}/crash/app:latest")
    snapshots = daemon.root / "snapshotter" / "snapshots"
    before = set(snapshot_ids(daemon).values())
    top = max(before, default=0)
    leftovers = [snapshots / str(top + n) for n in (1, 2, 3)]
    for leftover in leftovers:
        (leftover / "fs" / "bin").mkdir(parents=True)
        (leftover / "fs" / "bin" / "half-unpacked").write_bytes(b"x")
    daemon.images.PullImage(api_pb2.PullImageRequest(image=ref))
    first = set(snapshot_ids(daemon).values()) - before
    assert first and min(first) > top + 3
    assert all((leftover / "fs" / "bin" / "half-unpacked").exists() for leftover in leftovers)
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=ref))
    assert set(snapshot_ids(daemon).values()) == before  # its layers were collected
    daemon.images.PullImage(api_pb2.PullImageRequest(image=ref))
    again = set(snapshot_ids(daemon).values()) - before
    assert min(again) > max(first)
    daemon.kill(signal.SIGKILL)
    daemon.start()
    assert [leftover for leftover in leftovers if leftover.exists()] == []
    assert sorted(int(name) for name in os.listdir(snapshots)) == \
        sorted(snapshot_ids(daemon).values())
    pod_id, pod_config = daemon.run_pod("fresh")
    container_id = daemon.create_container(pod_id, pod_config, "c", ["sleep", "30"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    assert daemon.container_state(container_id).state == api_pb2.CONTAINER_RUNNING
    remove_everything(daemon)
