"""The CRI gRPC servicers: each method validates, calls the core, and maps errors to codes.

`_CODES` is the one place a sandbox or image error becomes a gRPC code, by
its class (the nearest listed base counts); anything else is INTERNAL with
a one-line message (the traceback goes to corrald's log, never the client).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from corral.cri import validation
from corral.images import errors as image_errors
from corral.sandbox import errors
from corral.sandbox.containers import container_config
from corral.sandbox.pods import pod_config

log = logging.getLogger("corrald.cri")

RUNTIME_NAME = "corral"
RUNTIME_VERSION = "0.1.0"
CRI_VERSION = "v1"

_CODES = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    # Images, as containerd's errdefs and CRI-O tell them apart.
    image_errors.NotFound: grpc.StatusCode.NOT_FOUND,  # NoMatchingPlatform too, as containerd
    image_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,  # InvalidReference too
    image_errors.InUse: grpc.StatusCode.FAILED_PRECONDITION,
    image_errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    image_errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,  # Blocked too
    image_errors.RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    image_errors.RegistryFailed: grpc.StatusCode.UNKNOWN,  # the registry said too little
    image_errors.ConfigInvalid: grpc.StatusCode.FAILED_PRECONDITION,
    image_errors.Unsupported: grpc.StatusCode.FAILED_PRECONDITION,
    image_errors.ContentInvalid: grpc.StatusCode.FAILED_PRECONDITION,  # digests, layers too
    image_errors.SnapshotConflict: grpc.StatusCode.INTERNAL,  # records that contradict: a bug
    image_errors.NoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_POD_STATES = {"ready": api_pb2.SANDBOX_READY, "notready": api_pb2.SANDBOX_NOTREADY}
_CONTAINER_STATES = {"created": api_pb2.CONTAINER_CREATED, "running": api_pb2.CONTAINER_RUNNING,
                     "exited": api_pb2.CONTAINER_EXITED}


def rpc(method):
    """Run a servicer method; turn corral's errors into gRPC status codes."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        started = time.monotonic()
        try:
            return method(self, request, context)
        except (errors.SandboxError, image_errors.ImageError) as e:
            code = status_code(e)
            log.log(logging.WARNING if code == grpc.StatusCode.INTERNAL else logging.DEBUG,
                    "%s: %s", method.__name__, e)
            context.abort(code, str(e))
        except grpc.RpcError:
            raise
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            if isinstance(e, Exception) and type(e).__name__ == "_AbortedError":
                raise
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: {e}")
        finally:
            log.debug("%s took %.1f ms", method.__name__, (time.monotonic() - started) * 1000)
    return wrapper


def status_code(error: Exception) -> grpc.StatusCode:
    """The code of the error's nearest class in `_CODES`; INTERNAL if none is listed."""
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def _matches_labels(labels, selector) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _filter_id(find, ident: str) -> str | None:
    """The whole ID a list filter names: "" for no filter, None for none at all (an unknown
    ID, or a prefix several share), as containerd's and CRI-O's ID indexes resolve it."""
    if not ident:
        return ""
    record = find(ident)
    return record.id if record is not None else None


class RuntimeService(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, ctx):
        self.ctx = ctx

    @rpc
    def Version(self, request, context):
        return api_pb2.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                       runtime_version=RUNTIME_VERSION,
                                       runtime_api_version=CRI_VERSION)

    @rpc
    def Status(self, request, context):
        network_ready, network_message = self.ctx.network.status()
        conditions = [
            api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
            api_pb2.RuntimeCondition(type="NetworkReady", status=network_ready,
                                     reason="" if network_ready else "NetworkPluginNotReady",
                                     message=network_message),
        ]
        handlers = [api_pb2.RuntimeHandler(name=h.name, features=api_pb2.RuntimeHandlerFeatures(
            recursive_read_only_mounts=h.features.recursive_read_only_mounts,
            user_namespaces=h.features.user_namespaces)) for h in self.ctx.config.offered()]
        info = {"runtimeHandlers": json.dumps(_handler_info(self.ctx.config, self.ctx.pools))} \
            if request.verbose else {}
        return api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conditions),
                                      runtime_handlers=handlers, info=info)

    @rpc
    def RuntimeConfig(self, request, context):
        return api_pb2.RuntimeConfigResponse(linux=api_pb2.LinuxRuntimeConfiguration(
            cgroup_driver=api_pb2.CGROUPFS))

    @rpc
    def UpdateRuntimeConfig(self, request, context):
        return api_pb2.UpdateRuntimeConfigResponse()

    # --- pods ----------------------------------------------------------------------------------
    @rpc
    def RunPodSandbox(self, request, context):
        from corral.sandbox.ocispec import TranslationError, check_pod_security, sandbox_seccomp

        try:
            check_pod_security(request.config)
        except TranslationError as e:
            raise errors.InvalidArgument(str(e)) from None
        validation.check_pod_config(request.config)
        # The profile of the pod's init, if it has one (a shared PID namespace).
        pod_id = self.ctx.pods.run(request.config, request.runtime_handler,
                                   init_seccomp=sandbox_seccomp(request.config))
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    @rpc
    def StopPodSandbox(self, request, context):
        self._require_id(request.pod_sandbox_id, "pod_sandbox_id")
        self.ctx.pods.stop(request.pod_sandbox_id)
        return api_pb2.StopPodSandboxResponse()

    @rpc
    def RemovePodSandbox(self, request, context):
        self._require_id(request.pod_sandbox_id, "pod_sandbox_id")
        self.ctx.pods.remove(request.pod_sandbox_id)
        return api_pb2.RemovePodSandboxResponse()

    def _pod_status(self, record) -> api_pb2.PodSandboxStatus:
        record = self.ctx.pods.sync(record)  # NOTREADY once its init has ended
        config = pod_config(record)
        options = config.linux.security_context.namespace_options
        return api_pb2.PodSandboxStatus(
            id=record.id, metadata=config.metadata, state=_POD_STATES.get(record.state, 1),
            created_at=record.created, network=api_pb2.PodSandboxNetworkStatus(ip=record.ip),
            linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(options=options)),
            labels=config.labels, annotations=config.annotations,
            runtime_handler=record.handler)

    @rpc
    def PodSandboxStatus(self, request, context):
        self._require_id(request.pod_sandbox_id, "pod_sandbox_id")
        record = self.ctx.pods.get(request.pod_sandbox_id)
        info = {}
        if request.verbose:
            import json

            info["info"] = json.dumps({
                "pid": record.shim_pid, "handler": record.handler,
                "namespaces": record.pinned, "cgroupParent": record.cgroup_parent,
                "shim": self.ctx.pods.paths(record.id).shim_socket})
        return api_pb2.PodSandboxStatusResponse(status=self._pod_status(record), info=info)

    @rpc
    def ListPodSandbox(self, request, context):
        wanted = request.filter
        pod_id = _filter_id(self.ctx.store.find_pod, wanted.id)
        if pod_id is None:
            return api_pb2.ListPodSandboxResponse()
        items = []
        for record in self.ctx.store.pods():
            if record.state in ("creating", "removing"):
                continue
            if pod_id and record.id != pod_id:
                continue
            status = self._pod_status(record)
            if wanted.HasField("state") and status.state != wanted.state.state:
                continue
            if not _matches_labels(status.labels, wanted.label_selector):
                continue
            items.append(api_pb2.PodSandbox(
                id=status.id, metadata=status.metadata, state=status.state,
                created_at=status.created_at, labels=status.labels,
                annotations=status.annotations, runtime_handler=status.runtime_handler))
        return api_pb2.ListPodSandboxResponse(items=items)

    # --- containers ----------------------------------------------------------------------------
    @rpc
    def CreateContainer(self, request, context):
        self._require_id(request.pod_sandbox_id, "pod_sandbox_id")
        validation.check_container_config(request.config)
        # The pod's config is the one stored at RunPodSandbox, not the request's copy.
        container_id = self.ctx.containers.create(request.pod_sandbox_id, request.config)
        return api_pb2.CreateContainerResponse(container_id=container_id)

    @rpc
    def StartContainer(self, request, context):
        self._require_id(request.container_id, "container_id")
        self.ctx.containers.start(request.container_id)
        return api_pb2.StartContainerResponse()

    @rpc
    def StopContainer(self, request, context):
        self._require_id(request.container_id, "container_id")
        self.ctx.containers.stop(request.container_id, timeout=max(0, request.timeout))
        return api_pb2.StopContainerResponse()

    @rpc
    def RemoveContainer(self, request, context):
        self._require_id(request.container_id, "container_id")
        self.ctx.containers.remove(request.container_id)
        return api_pb2.RemoveContainerResponse()

    def _image_ref(self, record) -> str:
        try:
            return self.ctx.images.get(record.image_id).repo_digest
        except (image_errors.ImageError, AttributeError):
            return record.image_id

    def _container_status(self, record) -> api_pb2.ContainerStatus:
        config = container_config(record)
        return api_pb2.ContainerStatus(
            id=record.id, metadata=config.metadata,
            state=_CONTAINER_STATES.get(record.state, api_pb2.CONTAINER_UNKNOWN),
            created_at=record.created, started_at=record.started, finished_at=record.finished,
            exit_code=record.exit_code, image=config.image, image_ref=self._image_ref(record),
            image_id=record.image_id, reason=record.reason, message=record.message,
            labels=config.labels, annotations=config.annotations, mounts=config.mounts,
            log_path=record.log_path)

    @rpc
    def ContainerStatus(self, request, context):
        self._require_id(request.container_id, "container_id")
        record = self.ctx.containers.status(request.container_id)
        info = {}
        if request.verbose:
            import json

            info["info"] = json.dumps({"sandboxID": record.pod_id, "logPath": record.log_path})
        return api_pb2.ContainerStatusResponse(status=self._container_status(record), info=info)

    @rpc
    def ListContainers(self, request, context):
        wanted = request.filter
        items = []
        for record in self._listed_containers(wanted):
            status = self._container_status(record)
            if wanted.HasField("state") and status.state != wanted.state.state:
                continue
            if not _matches_labels(status.labels, wanted.label_selector):
                continue
            items.append(api_pb2.Container(
                id=status.id, pod_sandbox_id=record.pod_id, metadata=status.metadata,
                image=status.image, image_ref=status.image_ref, image_id=status.image_id,
                state=status.state, created_at=status.created_at, labels=status.labels,
                annotations=status.annotations))
        return api_pb2.ListContainersResponse(containers=items)

    def _listed_containers(self, wanted) -> list:
        """The containers a ContainerFilter or ContainerStatsFilter names by ID and pod ID."""
        store = self.ctx.store
        container_id = _filter_id(store.find_container, wanted.id)
        pod_id = _filter_id(store.find_pod, wanted.pod_sandbox_id)
        if container_id is None or pod_id is None:
            return []
        if container_id:  # one container: sync only that one
            try:
                records = [self.ctx.containers.status(container_id)]
            except errors.NotFound:
                return []
        else:
            records = self.ctx.containers.list()
        return [record for record in records if not pod_id or record.pod_id == pod_id]

    # --- streaming: URLs on the streaming server (cri/streaming) -------------------------------
    @rpc
    def Exec(self, request, context):
        return api_pb2.ExecResponse(url=self._stream_url(context, "exec_url", request))

    @rpc
    def Attach(self, request, context):
        return api_pb2.AttachResponse(url=self._stream_url(context, "attach_url", request))

    @rpc
    def PortForward(self, request, context):
        return api_pb2.PortForwardResponse(url=self._stream_url(context, "port_forward_url",
                                                                request))

    def _stream_url(self, context, method: str, request) -> str:
        from corral.cri.streaming.server import TooManyRequests

        try:
            return getattr(self.ctx.streaming, method)(request)
        except TooManyRequests as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    @rpc
    def ExecSync(self, request, context):
        self._require_id(request.container_id, "container_id")
        result = self.ctx.containers.exec_sync(request.container_id, list(request.cmd),
                                               int(request.timeout))
        return api_pb2.ExecSyncResponse(stdout=result["stdout"], stderr=result["stderr"],
                                        exit_code=result["exit_code"])

    def _stats(self, record) -> api_pb2.ContainerStats:
        config = container_config(record)
        now = time.time_ns()
        stats = api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(
            id=record.id, metadata=config.metadata, labels=config.labels,
            annotations=config.annotations))
        data = self.ctx.containers.stats(record) or {}
        cpu = (data.get("cpu") or {}).get("usage")
        if cpu:
            stats.cpu.timestamp = now
            stats.cpu.usage_core_nano_seconds.value = cpu.get("total", 0)
        memory = data.get("memory")
        if memory:
            raw = memory.get("raw") or {}
            usage = (memory.get("usage") or {}).get("usage", 0)
            inactive = raw.get("total_inactive_file", raw.get("inactive_file", 0))
            stats.memory.timestamp = now
            stats.memory.usage_bytes.value = usage
            stats.memory.working_set_bytes.value = max(0, usage - inactive)  # as cAdvisor
            stats.memory.rss_bytes.value = raw.get("total_rss", raw.get("anon", 0))
            stats.memory.page_faults.value = raw.get("total_pgfault", raw.get("pgfault", 0))
            stats.memory.major_page_faults.value = raw.get("total_pgmajfault",
                                                           raw.get("pgmajfault", 0))
        try:
            used, inodes = self.ctx.images.snapshots.usage(record.id)
        except image_errors.NotFound:
            used = inodes = 0
        stats.writable_layer.timestamp = now
        stats.writable_layer.fs_id.mountpoint = os.path.join(self.ctx.config.root,
                                                             "snapshotter")
        stats.writable_layer.used_bytes.value = used
        stats.writable_layer.inodes_used.value = inodes
        return stats

    @rpc
    def ContainerStats(self, request, context):
        self._require_id(request.container_id, "container_id")
        record = self.ctx.containers.status(request.container_id)
        return api_pb2.ContainerStatsResponse(stats=self._stats(record))

    @rpc
    def ListContainerStats(self, request, context):
        wanted = request.filter
        stats = []
        for record in self._listed_containers(wanted):
            if not _matches_labels(container_config(record).labels, wanted.label_selector):
                continue
            stats.append(self._stats(record))
        return api_pb2.ListContainerStatsResponse(stats=stats)

    @rpc
    def UpdateContainerResources(self, request, context):
        from corral.sandbox.ocispec import TranslationError, linux_resources

        self._require_id(request.container_id, "container_id")
        validation.check_memory_limit(request.linux.memory_limit_in_bytes)
        try:
            resources = linux_resources(request.linux)
        except TranslationError as e:
            raise errors.InvalidArgument(str(e)) from None
        resources.pop("devices", None)  # the device rules were set at create; keep them
        self.ctx.containers.update_resources(request.container_id, resources)
        return api_pb2.UpdateContainerResourcesResponse()

    @rpc
    def ReopenContainerLog(self, request, context):
        self._require_id(request.container_id, "container_id")
        self.ctx.containers.reopen_log(request.container_id)
        return api_pb2.ReopenContainerLogResponse()

    @staticmethod
    def _require_id(value: str, field: str) -> None:
        if not value:
            raise errors.InvalidArgument(f"{field} is required")


class ImageService(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, ctx):
        self.ctx = ctx

    def _image(self, record) -> api_pb2.Image:
        images = self.ctx.images
        names = [r.name for r in images.list() if r.id == record.id]
        tags = [n for n in names if "@" not in n]
        digests = sorted({r.repo_digest for r in images.list() if r.id == record.id})
        user = ""
        try:
            user = (self.ctx.image_config(record).get("config") or {}).get("User") or ""
        except (OSError, ValueError):
            pass
        image = api_pb2.Image(id=record.id, repo_tags=tags, repo_digests=digests,
                              size=record.size, spec=api_pb2.ImageSpec(image=record.id))
        uid, _, _ = user.partition(":")
        if uid.isdigit():
            image.uid.value = int(uid)
        elif uid:
            image.username = uid
        return image

    @rpc
    def ListImages(self, request, context):
        wanted = request.filter.image.image if request.HasField("filter") else ""
        seen, images = set(), []
        for record in self.ctx.images.list():
            if record.id in seen:
                continue
            if wanted:
                try:
                    if self.ctx.images.get(wanted).id != record.id:
                        continue
                except image_errors.ImageError:  # no such image, or no valid name: no match
                    continue
            seen.add(record.id)
            images.append(self._image(record))
        return api_pb2.ListImagesResponse(images=images)

    @rpc
    def ImageStatus(self, request, context):
        if not request.image.image:
            raise errors.InvalidArgument("image.image is required")
        try:
            record = self.ctx.images.get(request.image.image)
        except image_errors.NotFound:
            return api_pb2.ImageStatusResponse()  # the CRI: an absent image is no error
        return api_pb2.ImageStatusResponse(image=self._image(record))

    @rpc
    def PullImage(self, request, context):
        from corral.images.pull import Puller

        if not request.image.image:
            raise errors.InvalidArgument("image.image is required")
        credentials = _credentials(request.auth) if request.HasField("auth") else None
        puller = Puller(self.ctx.images, self.ctx.registries)
        try:
            record = puller.pull(request.image.image, credentials=credentials, unpack=True)
        finally:
            puller.close()
        self.ctx.unpack_image(record.name, new=True)
        return api_pb2.PullImageResponse(image_ref=record.id)

    @rpc
    def RemoveImage(self, request, context):
        if not request.image.image:
            raise errors.InvalidArgument("image.image is required")
        try:
            record = self.ctx.images.get(request.image.image)
        except image_errors.NotFound:
            return api_pb2.RemoveImageResponse()  # idempotent, as the CRI asks
        if record.id in self.ctx.store.images_in_use():
            raise errors.FailedPrecondition(f"image {request.image.image} is in use by a "
                                            "container")
        try:
            self.ctx.images.remove(record.id)
        except image_errors.NotFound:
            if self._image_exists(request.image.image):
                raise
            # Removed meanwhile by a concurrent RemoveImage: idempotent, as containerd.
        return api_pb2.RemoveImageResponse()

    def _image_exists(self, image: str) -> bool:
        try:
            self.ctx.images.get(image)
            return True
        except image_errors.NotFound:
            return False

    @rpc
    def ImageFsInfo(self, request, context):
        root = self.ctx.config.root
        used, inodes = _usage(root)
        usage = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(), fs_id=api_pb2.FilesystemIdentifier(
                mountpoint=os.path.join(root, "snapshotter")))
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage])


def _credentials(auth) -> tuple[str, str] | None:
    if auth.username:
        return auth.username, auth.password
    if auth.auth:
        import base64

        try:
            user, _, password = base64.b64decode(auth.auth).decode().partition(":")
        except ValueError:
            raise errors.InvalidArgument("auth.auth is not base64 of user:password") from None
        return user, password
    return None


def _usage(root: str) -> tuple[int, int]:
    used = inodes = 0
    for directory, _, files in os.walk(root):
        inodes += 1 + len(files)
        for name in files:
            try:
                used += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                pass
    return used, inodes


__all__ = ["RuntimeService", "ImageService", "pod_config", "container_config"]


def _handler_info(config, pools=None) -> list[dict]:
    """Every configured handler: type, features, the overhead its RuntimeClass should
    declare, why it is not offered here, for vm the accelerator (TCG: a warning) and its
    warm pool (sandbox/pool.py: size, ready now)."""
    import glob

    described = []
    for name, handler in sorted(config.runtimes.items()):
        entry = {"name": name, "type": handler.type, "features": handler.features.to_dict(),
                 "overhead": handler.overhead, "unavailable": handler.unavailable()}
        if handler.type == "vm":
            verdicts = glob.glob(os.path.join(handler.options.get("cache_dir", ""),
                                              "accel-*.json"))
            if verdicts:
                with open(max(verdicts, key=os.path.getmtime)) as f:
                    entry["accelerator"] = json.load(f)
        pool = pools.get(name) if pools is not None else None
        if pool is not None:
            entry["pool"] = {"size": pool.size, "ready": len(pool.ready)}
        described.append(entry)
    return described
