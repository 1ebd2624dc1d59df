"""Start-up recovery: make the world consistent with the store, touching nothing healthy.

    pod `creating` / `removing`        undo it all (shim, CNI DEL, namespaces, shm, dirs)
    container `creating` / `removing`  undo it all (shim delete, rootfs mount, snapshot, bundle)
    pod whose shim died                its containers are marked exited with the exit code the
                                       shim recorded (else 255, reason Unknown, as containerd);
                                       a new shim serves the pod, with a new init if its
                                       containers share a PID namespace (the old one died
                                       with the old shim)
    pod whose namespaces are gone      (a reboot wiped the state dir) its containers marked
                                       exited as above, CNI DEL from the cache kept under the
                                       root (the IPs, iptables rules), the pod NOTREADY
    CNI caches of the old default dir  (<state>/cni) moved to <root>/cni
    container whose process ended      marked exited with its recorded exit code
    pod directory without a record     torn down (a crash between cleanup and record removal)
    active snapshot without a record   removed
    layer extraction of a dead process its mount and half-made snapshot removed
    blobs of an interrupted pull       garbage-collected (if no other pull runs)
    pooled sandboxes (sandbox/pool.py) a killed corrald's: ended, their files removed

Each step is idempotent, so a crash during recovery is recovered by the next start.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from corral.network.cni import CNIError
from corral.sandbox.errors import SandboxError
from corral.sandbox.pods import namespace_mode, pod_config
from corral.sandbox.pool import remove_leftovers
from corral.shim.protocol import ShimClient, ShimError

log = logging.getLogger("corrald.recovery")
_ID = re.compile(r"[0-9a-f]{64}")


def recover(ctx) -> None:
    store = ctx.store
    try:
        ctx.network.adopt_legacy_cache()
    except OSError as e:
        log.warning("CNI caches of the old default dir: %s", e)
    stale = ctx.images.snapshots.remove_stale_extractions()
    if stale:
        log.info("removed %d layer extraction(s) a crash interrupted", stale)
    ended = remove_leftovers(ctx.config.state)
    if ended:
        log.info("ended %d pooled sandbox(es) a stopped corrald left", ended)
    for container in store.containers():
        if container.state in ("creating", "removing"):
            log.info("container %s was %s: undoing it", container.id[:12], container.state)
            ctx.containers.undo(container.id, container.pod_id)
            store.remove_container(container.id)
    for pod in store.pods():
        if pod.state in ("creating", "removing"):
            log.info("pod %s was %s: undoing it", pod.id[:12], pod.state)
            for container in store.containers(pod.id):
                ctx.containers.undo(container.id, pod.id)
            ctx.pods.teardown(pod.id, pod_config(pod), network=True)
            store.remove_pod(pod.id)
            continue
        shim_alive = _shim_alive(ctx, pod.id)
        lost = _lost_namespaces(ctx, pod)
        if lost:
            _retire_pod(ctx, pod, lost, shim_alive)
        elif not shim_alive:
            _replace_shim(ctx, pod)
    for container in store.containers():
        ctx.containers.sync(container)
    _remove_strays(ctx)
    # A pull killed midway leaves blobs no image names, and temp files: collect them, unless
    # another process (a `corral pull`) is pulling right now.
    report = ctx.images.gc(wait=False, stray_age=0)
    if report and (report.blobs or report.snapshots):
        log.info("collected %d blob(s) and %d snapshot(s) nothing uses", report.blobs,
                 report.snapshots)


def _shim_alive(ctx, pod_id: str) -> bool:
    try:
        with ShimClient(ctx.pods.paths(pod_id).shim_socket, timeout=5) as shim:
            shim.call("ping")
        return True
    except (OSError, ShimError):
        return False


def _lost_namespaces(ctx, pod) -> str:
    """Why the pod's sandbox is gone ("" if it is not): its directory or a pinned namespace
    is missing, as after a reboot, which wipes the state dir and every mount."""
    from corral.network import netns

    if not os.path.isdir(ctx.pods.paths(pod.id).dir):
        return "its state directory is gone"
    for kind, path in sorted(pod.pinned.items()):
        if not netns.is_pinned(path):
            return f"its {kind} namespace is no longer pinned"
    return ""


def _retire_pod(ctx, pod, why: str, shim_alive: bool) -> None:
    """A pod without its namespaces cannot run anything: its containers are ended, its
    network released (the IPs and rules the plugins keep on the host), and it is NOTREADY,
    for kubelet to stop and remove it.  A DEL that fails here is retried by StopPodSandbox."""
    if pod.state != "notready":
        log.warning("pod %s: %s (was the host rebooted?): it is not ready", pod.id[:12], why)
    if not (shim_alive and _stop_containers(ctx, pod)):
        _end_containers(ctx, pod)
    if namespace_mode(pod_config(pod), "network") != 2:
        try:
            ctx.network.teardown(pod.id, pod.pinned.get("net", ""))
        except (CNIError, OSError) as e:
            log.warning("pod %s: CNI DEL: %s", pod.id[:12], e)
    if pod.state != "notready":
        ctx.store.update_pod(pod.id, state="notready")


def _stop_containers(ctx, pod) -> bool:
    """Stop the pod's containers through its live shim, which records their exits."""
    try:
        for container in ctx.store.containers(pod.id):
            ctx.containers.stop(container.id, timeout=0)
    except SandboxError as e:
        log.warning("pod %s: stopping its containers: %s", pod.id[:12], e)
        return False
    return True


def _replace_shim(ctx, pod) -> None:
    """The pod's shim died: record its containers' ends, clear them, serve the pod anew."""
    log.warning("pod %s: shim is gone; its containers are marked exited", pod.id[:12])
    _end_containers(ctx, pod)
    paths = ctx.pods.paths(pod.id)
    if os.path.isdir(paths.dir):
        pid = ctx.shims.start(pod.id, paths.shim, paths.shim_socket)
        ctx.store.update_pod(pod.id, shim_pid=pid)
        if "pid" in pod.pinned and pod.state == "ready":
            _replace_init(ctx, pod)


def _replace_init(ctx, pod) -> None:
    """The pod's init died with its shim (and the kernel ended its PID namespace): the
    new shim gets a new init, in a new namespace, for the containers still to come."""
    from corral.sandbox.ocispec import sandbox_seccomp

    try:
        ctx.pods.start_init(pod.id, pod.pinned, sandbox_seccomp(pod_config(pod)))
    except (SandboxError, OSError, ValueError) as e:
        log.warning("pod %s: a new init: %s: it is not ready", pod.id[:12], e)
        ctx.store.update_pod(pod.id, state="notready")


def _end_containers(ctx, pod) -> None:
    """The pod's shim is gone: its containers are marked exited with the exits it recorded
    (255 and reason Unknown where none is), and what runs of them is killed."""
    from corral.sandbox.containers import exit_fields
    from corral.shim.server import recorded_exit

    paths = ctx.pods.paths(pod.id)
    for container in ctx.store.containers(pod.id):
        if container.state in ("created", "running"):
            ctx.store.update_container(
                container.id, state="exited",
                **exit_fields(recorded_exit(paths.shim, container.id),
                              message="its shim is gone and recorded no exit"))
        # A process left without its shim has no one reading its output: end it.
        ctx.containers.end_unparented(pod.id, container.id)


def _remove_strays(ctx) -> None:
    pods_dir = os.path.join(ctx.config.state, "pods")
    known_pods = {pod.id for pod in ctx.store.pods()}
    for name in os.listdir(pods_dir) if os.path.isdir(pods_dir) else []:
        if _ID.fullmatch(name) and name not in known_pods:
            log.info("pod directory %s has no record: tearing it down", name[:12])
            _teardown_unrecorded(ctx, name)
    known_containers = {container.id for container in ctx.store.containers()}
    active = ctx.images.db.execute("SELECT key FROM snapshots WHERE kind = 'active'")
    for (key,) in active.fetchall():
        if _ID.fullmatch(key) and key not in known_containers:
            log.info("snapshot %s has no container: removing it", key[:12])
            ctx.images.snapshots.remove(key)


def _teardown_unrecorded(ctx, pod_id: str) -> None:
    from cri_api.v1 import api_pb2

    paths = ctx.pods.paths(pod_id)
    for name in os.listdir(paths.containers) if os.path.isdir(paths.containers) else []:
        ctx.containers.undo(name, pod_id)
    ctx.pods.teardown(pod_id, api_pb2.PodSandboxConfig(), network=False)
    ctx.network.teardown(pod_id, "", name="", namespace="", uid="", port_mappings=[])
    shutil.rmtree(paths.dir, ignore_errors=True)
