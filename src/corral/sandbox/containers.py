"""Containers: an overlay snapshot of the image, an OCI bundle, and the pod's shim running it.

    create   record (creating) → snapshot + rootfs mount → config.json → shim create → created
    start    shim start → running
    stop     SIGTERM (or the image's StopSignal), wait `timeout`, SIGKILL, wait → exited
    remove   record (removing) → shim delete → unmount, remove snapshot and bundle → gone

The shim is the truth about a live container's process; the record is
brought up to date from it (`_sync`) whenever a container is looked at,
so an exit that happened while corrald was down is seen on the next look.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import time

from corral.sandbox.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SandboxError,
)
from corral.sandbox.files import host_file
from corral.sandbox.pods import NODE, namespace_mode, pod_config, shares_pid
from corral.shim.protocol import ShimClient, ShimError

log = logging.getLogger("corrald.containers")
# containerd's for a container whose end nobody recorded
UNKNOWN_EXIT_CODE = 255
UNKNOWN_EXIT_REASON = "Unknown"


def container_config(record):
    from cri_api.v1 import api_pb2

    config = api_pb2.ContainerConfig()
    config.ParseFromString(record.config)
    return config


class Containers:
    def __init__(self, ctx):
        self.ctx = ctx
        self.store = ctx.store

    def _shim(self, pod_id: str, timeout: float | None = 60.0) -> ShimClient:
        path = self.ctx.pods.paths(pod_id).shim_socket
        try:
            return ShimClient(path, timeout=timeout)
        except OSError as e:
            raise SandboxError(f"pod {pod_id[:12]}: shim unreachable: {e}") from None

    def get(self, container_id: str):
        record = self.store.find_container(container_id)
        if record is None or record.state in ("creating", "removing"):
            raise NotFound(f"container {container_id!r} not found")
        return record

    # --- create --------------------------------------------------------------------------------
    def create(self, pod_id: str, config) -> str:
        from corral.images.errors import NotFound as ImageNotFound

        pod = self.ctx.pods.get(pod_id)
        if pod.state != "ready":
            raise FailedPrecondition(f"pod sandbox {pod.id[:12]} is not ready")
        metadata = config.metadata
        if not metadata.name:
            raise InvalidArgument("container config: metadata.name is required")
        if not config.image.image:
            raise InvalidArgument("container config: image.image is required")
        try:
            image = self.ctx.images.get(config.image.image)
        except ImageNotFound as e:  # other image errors reach cri/server.py as they are
            raise NotFound(f"image {config.image.image!r} not found: {e}") from None
        stored_pod_config = pod_config(pod)
        container_id = secrets.token_hex(32)
        log_path = ""
        if stored_pod_config.log_directory and config.log_path:
            log_path = os.path.join(stored_pod_config.log_directory, config.log_path)
        try:
            self.store.add_container(id=container_id, pod_id=pod.id, name=metadata.name,
                                     attempt=metadata.attempt, state="creating",
                                     image=config.image.image, image_id=image.id,
                                     created=time.time_ns(), config=config.SerializeToString(),
                                     log_path=log_path)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"container {metadata.name} (attempt {metadata.attempt}) "
                                f"already exists in pod {pod.id[:12]}") from None
        with self.ctx.pods.lock(pod.id):
            try:
                self._make(container_id, pod, stored_pod_config, config, image, log_path)
            except BaseException:
                self.undo(container_id, pod.id)
                self.store.remove_container(container_id)
                raise
            self.store.update_container(container_id, state="created")
        log.info("container %s (%s) created in pod %s", container_id[:12], metadata.name,
                 pod.id[:12])
        return container_id

    def _make(self, container_id: str, pod, stored_pod_config, config, image,
              log_path: str) -> None:
        from corral.sandbox.ocispec import PodContext, TranslationError, container_spec

        bundle = self._bundle(pod.id, container_id)
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs)
        parent = self.ctx.unpack_image(image.name)
        for mount in self.ctx.images.snapshots.prepare(container_id, parent):
            mount.mount(rootfs)
        paths = self.ctx.pods.paths(pod.id)
        pinned = pod.pinned
        context = PodContext(
            pod_id=pod.id, namespaces={kind: pinned.get(short, "") for kind, short in
                                       (("network", "net"), ("ipc", "ipc"), ("uts", "uts"),
                                        ("pid", "pid"))},
            # A pod made before pods had an init has no pid pin: own PID namespaces.
            share_pid=shares_pid(stored_pod_config) and bool(pinned.get("pid")),
            host_pid=namespace_mode(stored_pod_config, "pid") == NODE,
            cgroup_parent=pod.cgroup_parent, hostname=host_file(paths.hostname).strip(),
            etc_hosts=paths.hosts, resolv_conf=paths.resolv_conf,
            hostname_file=paths.hostname,
            shm=paths.shm if "ipc" in pinned else "/dev/shm",
            sysctls=dict(stored_pod_config.linux.sysctls))
        image_config = self.ctx.image_config(image)
        try:
            spec = container_spec(config, stored_pod_config, image_config, context,
                                  rootfs=rootfs, container_id=container_id,
                                  cgroups_path=os.path.join(pod.cgroup_parent, container_id),
                                  cgroup_v2=self.ctx.cgroup_v2,
                                  min_oom_score_adj=self.ctx.min_oom_score_adj)
        except TranslationError as e:
            raise InvalidArgument(str(e)) from None
        spec["root"] = {"path": "rootfs", "readonly": bool(spec.get("root", {}).get("readonly"))}
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        handler = self.ctx.config.handler(pod.handler)
        with self._shim(pod.id) as shim:
            try:
                shim.call("create", id=container_id, bundle=bundle, log_path=log_path,
                          runtime=handler.to_dict(),
                          stdin=config.stdin, stdin_once=config.stdin_once)
            except ShimError as e:
                raise _shim_error(e, f"create container {config.metadata.name}") from None

    def _bundle(self, pod_id: str, container_id: str) -> str:
        return os.path.join(self.ctx.pods.paths(pod_id).containers, container_id)

    def undo(self, container_id: str, pod_id: str) -> None:
        """Remove whatever of a container exists; each step tolerates what is gone."""
        from corral.runtime import syscalls as k

        try:
            with self._shim(pod_id, timeout=30) as shim:
                shim.call("delete", id=container_id, force=True)
        except ShimError as e:
            if e.kind != "not_found":
                log.warning("container %s: shim delete: %s", container_id[:12], e)
        except SandboxError:
            self.end_unparented(pod_id, container_id)
        bundle = self._bundle(pod_id, container_id)
        rootfs = os.path.join(bundle, "rootfs")
        try:
            k.Syscalls().umount(rootfs, k.MNT_DETACH)
        except OSError:
            pass
        try:
            self.ctx.images.snapshots.remove(container_id)
        except Exception as e:  # noqa: BLE001 - a snapshot that never was is fine
            if self.ctx.images.snapshots.exists(container_id):
                log.warning("container %s: remove snapshot: %s", container_id[:12], e)
        shutil.rmtree(bundle, ignore_errors=True)

    def end_unparented(self, pod_id: str, container_id: str) -> None:
        """Kill what runs of a container whose shim is gone (reparented to init, nobody
        reads its output), through the runtime's own state: its PID and cgroup."""
        from corral.runtime.container import Container
        from corral.runtime.errors import ContainerNotFound, RuntimeFailure
        from corral.shim.handlers.oci import OciRuntime

        shim_dir = self.ctx.pods.paths(pod_id).shim
        try:
            Container.load(os.path.join(shim_dir, "runtime"), container_id).delete(force=True)
            return
        except ContainerNotFound:
            pass
        except (RuntimeFailure, OSError) as e:
            log.warning("container %s: delete without its shim: %s", container_id[:12], e)
            return
        pod = self.store.pod(pod_id)
        handler = self.ctx.config.handler(pod.handler) if pod else None
        if handler is not None and handler.type in ("oci", "runsc"):
            try:
                OciRuntime(handler.path, os.path.join(shim_dir, "oci")).run(
                    "delete", "--force", container_id)
                return
            except RuntimeFailure as e:
                log.debug("container %s: %s delete: %s", container_id[:12], handler.path, e)
        # No runtime state (the state dir was wiped, as by a reboot): what is left is the
        # container's cgroup, if the host kept it.
        self.ctx.remove_container_cgroup(pod, container_id)

    # --- start, stop ---------------------------------------------------------------------------
    def start(self, container_id: str) -> None:
        record = self.sync(self.get(container_id))
        if record.state != "created":
            raise FailedPrecondition(f"container {record.id[:12]} is {record.state}, not created")
        with self._shim(record.pod_id) as shim:
            try:
                reply = shim.call("start", id=record.id)
            except ShimError as e:
                raise _shim_error(e, f"start container {record.id[:12]}") from None
        self.store.update_container(record.id, state="running", started=reply["started_at"])

    def stop(self, container_id: str, timeout: int = 0) -> None:
        """Idempotent: stopping an exited container, or one that is gone, succeeds."""
        record = self.store.container(container_id)
        if record is None:
            try:
                record = self.get(container_id)
            except NotFound:
                return
        record = self.sync(record)
        if record.state not in ("created", "running"):
            return
        try:
            with self._shim(record.pod_id, timeout=None) as shim:
                if timeout > 0:
                    shim.call("kill", id=record.id, signal=_stop_signal(self.ctx, record),
                              all=False)
                    if shim.call("wait", id=record.id, timeout=timeout)["exited"]:
                        self.sync(record)
                        return
                shim.call("kill", id=record.id, signal=signal.SIGKILL, all=True)
                shim.call("wait", id=record.id, timeout=30)
        except ShimError as e:
            raise _shim_error(e, f"stop container {record.id[:12]}") from None
        self.sync(record)

    # --- remove --------------------------------------------------------------------------------
    def remove(self, container_id: str) -> None:
        record = self.store.container(container_id)
        if record is None:
            try:
                record = self.get(container_id)
            except NotFound:
                return  # the CRI: removing what is gone is not an error
        self.store.update_container(record.id, state="removing")
        self.undo(record.id, record.pod_id)
        self.store.remove_container(record.id)
        log.info("container %s removed", record.id[:12])

    # --- status --------------------------------------------------------------------------------
    def sync(self, record):
        """The record, updated from the exit its shim recorded if the process ended.

        Read from the shim's directory without waking the shim (see shim/liveness.py): an
        exit record means the container ended; none, while the shim lives, that it runs."""
        from corral.shim.server import recorded_exit

        if record.state not in ("created", "running"):
            return record
        shim_dir = self.ctx.pods.paths(record.pod_id).shim
        exit_record = recorded_exit(shim_dir, record.id)
        if exit_record is None:
            lost = self.shim_lost(record.pod_id)
            if lost is None:
                return record
            # The whole pod is ended, this container with the others.
            self.ctx.pods.shim_gone(record.pod_id, lost)
            return self.store.container(record.id)
        self.store.update_container(record.id, state="exited", **exit_fields(exit_record))
        return self.store.container(record.id)

    def end_without_shim(self, record, why: str) -> None:
        """A created or running container whose shim is gone: what is left of it is killed
        (init, and everything in its cgroup), then its end recorded, the one its shim wrote
        if it did (just before it ended), else 255: never EXITED while its processes run."""
        from corral.shim.server import recorded_exit

        self.end_unparented(record.pod_id, record.id)
        exit_record = recorded_exit(self.ctx.pods.paths(record.pod_id).shim, record.id)
        self.store.update_container(record.id, state="exited",
                                    **exit_fields(exit_record, f"shim lost: {why}"))
        log.warning("container %s: its shim is gone (%s): what was left of it is killed",
                    record.id[:12], why)

    def shim_lost(self, pod_id: str) -> str | None:
        """Why the pod's shim is gone, or None while it lives (asked of the kernel, not the
        shim: see shim/liveness.py)."""
        from corral.shim import liveness

        shim_dir = self.ctx.pods.paths(pod_id).shim
        try:
            return None if liveness.holder(shim_dir) else "it is no longer running"
        except FileNotFoundError:  # a shim from before liveness locks: ask it
            try:
                with self._shim(pod_id, timeout=10) as shim:
                    shim.call("ping")
                return None
            except (ShimError, SandboxError) as e:
                return str(e)
        except OSError as e:
            return f"its lock: {e}"

    def status(self, container_id: str):
        return self.sync(self.get(container_id))

    def list(self) -> list:
        return [self.sync(record) for record in self.store.containers()
                if record.state not in ("creating", "removing")]

    # --- exec ----------------------------------------------------------------------------------
    def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> dict:
        from corral.sandbox.ocispec import exec_process

        record = self.sync(self.get(container_id))
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id[:12]} is not running")
        if not cmd:
            raise InvalidArgument("exec: cmd is empty")
        with open(os.path.join(self._bundle(record.pod_id, record.id), "config.json")) as f:
            base = json.load(f)["process"]
        process = exec_process(base, list(cmd))
        with self._shim(record.pod_id, timeout=(timeout + 30) if timeout else None) as shim:
            try:
                reply = shim.call("exec_sync", id=record.id, process=process, timeout=timeout)
            except ShimError as e:
                if e.kind == "timeout":
                    raise DeadlineExceeded(f"exec in container {record.id[:12]}: timeout "
                                           f"{timeout}s exceeded") from None
                raise _shim_error(e, f"exec in container {record.id[:12]}") from None
        return {"exit_code": reply["exit_code"], "stdout": _exec_output(reply, "stdout"),
                "stderr": _exec_output(reply, "stderr")}

    def reopen_log(self, container_id: str) -> None:
        record = self.sync(self.get(container_id))
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id[:12]} is not running")
        with self._shim(record.pod_id) as shim:
            shim.call("reopen_log", id=record.id)

    def stats(self, record) -> dict | None:
        """The cgroup stats of a created or running container (runc's format), as containerd
        reports a created task's; None for any other, or if it has no cgroup (any more)."""
        if record.state not in ("created", "running"):
            return None
        native = self._native_stats(record)
        if native is not None:
            return native
        try:
            with self._shim(record.pod_id, timeout=10) as shim:
                return shim.call("stats", id=record.id)["stats"]
        except (ShimError, SandboxError):
            return None  # it ended meanwhile

    def _native_stats(self, record) -> dict | None:
        """A corral.runtime container's stats read from its cgroup here, not by its shim.

        kubelet asks for every container's stats every few seconds; served by the shim,
        each request would copy shared pages into it (see shim/liveness.py).  None for a
        container of another runtime (its state is the `oci` binary's) or gone meanwhile."""
        from corral.runtime.cgroups import load_manager
        from corral.runtime.cgroups.stats import read_stats
        from corral.runtime.errors import ContainerNotFound
        from corral.runtime.state import ContainerState

        runtime_root = os.path.join(self.ctx.pods.paths(record.pod_id).shim, "runtime")
        try:
            state = ContainerState.load(runtime_root, record.id)
        except ContainerNotFound:
            return None
        if not state.cgroup or not state.init_alive():
            return None
        try:
            return read_stats(load_manager(state.cgroup))
        except OSError:
            return None  # the cgroup went with the container

    def update_resources(self, container_id: str, resources: dict) -> None:
        record = self.sync(self.get(container_id))
        with self._shim(record.pod_id) as shim:
            try:
                shim.call("update", id=record.id, resources=resources)
            except ShimError as e:
                raise _shim_error(e, f"update container {record.id[:12]}") from None


def exit_fields(exit_record: dict | None, unrecorded_reason: str = UNKNOWN_EXIT_REASON,
                message: str = "") -> dict:
    """The record fields of a container's end: from its shim's exit record, or for an end
    nobody recorded, 255 and `unrecorded_reason` (containerd's "Unknown"), finished now."""
    if exit_record is None:
        fields = {"exit_code": UNKNOWN_EXIT_CODE, "finished": time.time_ns(),
                  "reason": unrecorded_reason}
        return {**fields, "message": message} if message else fields
    code = exit_record["exit_code"]
    return {"exit_code": code, "finished": exit_record["finished_at"],
            "reason": exit_record.get("reason") or ("Completed" if code == 0 else "Error")}


def _shim_error(error: ShimError, what: str) -> SandboxError:
    kinds = {"not_found": NotFound, "exists": AlreadyExists, "invalid": InvalidArgument,
             "timeout": DeadlineExceeded, "unsupported": FailedPrecondition}
    return kinds.get(error.kind, SandboxError)(f"{what}: {error}")


def _stop_signal(ctx, record) -> int:
    """The image's StopSignal (e.g. SIGQUIT for nginx), else SIGTERM."""
    try:
        image = ctx.images.get(record.image_id)
        name = (ctx.image_config(image).get("config") or {}).get("StopSignal") or ""
    except Exception:  # noqa: BLE001 - the image may be gone: use the default
        name = ""
    name = name.upper()
    if name.isdigit():
        return int(name)
    try:
        return signal.Signals(name if name.startswith("SIG") else f"SIG{name}").value
    except (ValueError, KeyError):
        return signal.SIGTERM


def _exec_output(reply: dict, stream: str) -> bytes:
    """An exec_sync reply's output as the bytes the process wrote (base64 in the shim's JSON;
    a shim started before that change, still running, sends text)."""
    if f"{stream}_base64" in reply:
        return base64.b64decode(reply[f"{stream}_base64"])
    return reply.get(stream, "").encode()
