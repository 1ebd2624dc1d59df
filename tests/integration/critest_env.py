"""critest's world for ports of its specs: its test images in a real registry, its helpers.

The Python ports of cri-tools' pkg/validate specs (tests/integration/test_critest_*.py)
send what critest sends.  `Critest` mirrors pkg/framework/util.go: pods with a generated
name, uid and namespace, attempt 2, an empty `linux` (cgroup parent "" because corrald's
RuntimeConfig says cgroupfs), no hostname and no log directory; containers with `top`,
an empty `linux`, no log path, the image pulled first when ImageStatus does not find it,
and `user_specified_image` set.

The test images critest pulls (gcr.io/k8s-staging-cri-tools/*, registry.k8s.io/
e2e-test-images/*) are built here on the embedded busybox and pushed, as multi-arch
Docker manifest lists like the real ones, to a local docker-registry; corrald reaches
them through registries.conf mirrors for those hosts, so they keep their real names,
as they would behind a pull-through mirror.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import os
import shutil
import tarfile
import tempfile
import time
import urllib.request
import uuid
from urllib.parse import urlsplit

import grpc
from cri_api.v1 import api_pb2

from corral.images.busybox import build_rootfs
from corral.images.layout import layer_tar
from corral.spec.image import (
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    canonical_json,
    descriptor,
    sha256_digest,
)
from tests.integration.corrald import Corrald, short_base
from tests.integration.registry_server import Registry

CRI_TOOLS = "gcr.io/k8s-staging-cri-tools/"
E2E_IMAGES = "registry.k8s.io/e2e-test-images/"
DEFAULT_IMAGE = E2E_IMAGES + "busybox:1.29-2"
WEB_SERVER_IMAGE = E2E_IMAGES + "nginx:1.14-2"
HOSTNET_WEB_SERVER_IMAGE = CRI_TOOLS + "hostnet-nginx-amd64"
WEB_SERVER_PORT = 80
HOSTNET_WEB_SERVER_PORT = 12003
WEB_SERVER_PAGE = b"<html>critest web server</html>\n"
# The same image under a second registry (critest's testSameImageDifferentRegistries).
SECOND_REGISTRY = "quay.io/k8s-staging-cri-tools/"
MIRRORED_HOSTS = ("registry.k8s.io", "gcr.io", "quay.io")

DEFAULT_UID_PREFIX = "cri-test-uid"
DEFAULT_NAMESPACE_PREFIX = "cri-test-namespace"
DEFAULT_ATTEMPT = 2


class Layer:
    def __init__(self, tar: bytes):
        self.blob = gzip.compress(tar, mtime=0)
        self.diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()


def files_layer(files: dict[str, bytes]) -> Layer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted({"/".join(p.split("/")[:i]) for p in files
                            for i in range(1, p.count("/") + 1)}):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 946684800
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 946684800
            tar.addfile(info, io.BytesIO(data))
    return Layer(buffer.getvalue())


def _images(busybox: Layer) -> dict[str, tuple[list[Layer], dict]]:
    """critest's test images by repository path (no host), as (layers, config)."""
    www = files_layer({"www/index.html": WEB_SERVER_PAGE})

    def web_server(port: int):
        return [busybox, www], {"Entrypoint": ["httpd", "-f", "-p", str(port), "-h", "/www"]}

    images = {
        "e2e-test-images/busybox": ([busybox], {"Cmd": ["sh"]}),
        "e2e-test-images/nginx": web_server(WEB_SERVER_PORT),
        "k8s-staging-cri-tools/hostnet-nginx-amd64": web_server(HOSTNET_WEB_SERVER_PORT),
        "k8s-staging-cri-tools/test-image-user-uid": ([busybox], {"User": "1002"}),
        "k8s-staging-cri-tools/test-image-user-username": ([busybox], {"User": "www-data"}),
        "k8s-staging-cri-tools/test-image-user-uid-group": ([busybox], {"User": "1003:users"}),
        "k8s-staging-cri-tools/test-image-user-username-group":
            ([busybox], {"User": "www-data:users"}),
    }
    for name in ("test-image-latest", "test-image-tag", "test-image-digest", "test-image-1",
                 "test-image-2", "test-image-3", "test-image-tags"):
        images["k8s-staging-cri-tools/" + name] = ([busybox], {"Cmd": ["sh"],
                                                               "Labels": {"image": name}})
    return images


# repository path → the tags critest pulls it by
_TAGS = {
    "e2e-test-images/busybox": ["1.29-2"],
    "e2e-test-images/nginx": ["1.14-2"],
    "k8s-staging-cri-tools/test-image-tag": ["test", "all"],
    "k8s-staging-cri-tools/test-image-tags": ["1", "2", "3"],
}
# As the real ones are multi-arch: a Docker manifest list; only amd64 can run here.
_PLATFORMS = (("amd64", ""), ("arm64", "v8"))


class TestRegistry:
    """A docker-registry holding critest's images; `digests`: each one's list digest."""

    def __init__(self, base: str):
        self.base = base
        rootfs = os.path.join(base, "busybox-rootfs")
        build_rootfs(rootfs)
        busybox = Layer(layer_tar(rootfs))
        self.registry = Registry(os.path.join(base, "registry"))
        self.digests: dict[str, str] = {}
        try:
            for path, (layers, config) in _images(busybox).items():
                repositories = [path] + (["second/" + path] if path.endswith("/test-image-tags")
                                         else [])
                for repository in repositories:
                    self.digests[repository] = self._push(repository, layers, config,
                                                          _TAGS.get(path, ["latest"]))
        except BaseException:
            self.registry.stop()
            raise

    def _push(self, repository: str, layers: list[Layer], config: dict,
              tags: list[str]) -> str:
        """Blobs, one schema 2 manifest per platform and the list under each tag (the
        registry's HTTP API, as `docker push` speaks it); the list's digest."""
        manifests = []
        for layer in layers:
            self._put_blob(repository, layer.blob)
        for architecture, variant in _PLATFORMS:
            image_config = canonical_json({
                "architecture": architecture, **({"variant": variant} if variant else {}),
                "os": "linux",
                "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                   "/sbin:/bin"], **config},
                "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]}})
            self._put_blob(repository, image_config)
            manifest = canonical_json({
                "schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": descriptor(MEDIA_DOCKER_CONFIG, image_config),
                "layers": [descriptor(MEDIA_DOCKER_LAYER_GZIP, x.blob) for x in layers]})
            digest = self._put_manifest(repository, manifest, MEDIA_DOCKER_MANIFEST,
                                        sha256_digest(manifest))
            platform = {"architecture": architecture, "os": "linux",
                        **({"variant": variant} if variant else {})}
            manifests.append(descriptor(MEDIA_DOCKER_MANIFEST, manifest, platform=platform))
            assert digest == sha256_digest(manifest)
        manifest_list = canonical_json({"schemaVersion": 2,
                                        "mediaType": MEDIA_DOCKER_MANIFEST_LIST,
                                        "manifests": manifests})
        for tag in tags:
            self._put_manifest(repository, manifest_list, MEDIA_DOCKER_MANIFEST_LIST, tag)
        return sha256_digest(manifest_list)

    def _request(self, method: str, path: str, body: bytes = b"",
                 headers: dict | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(self.registry.host, timeout=30)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def _put_blob(self, repository: str, blob: bytes) -> None:
        digest = sha256_digest(blob)
        if self._request("HEAD", f"/v2/{repository}/blobs/{digest}").status == 200:
            return
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        assert started.status == 202, started.status
        location = urlsplit(started.getheader("Location"))
        query = (location.query + "&" if location.query else "") + f"digest={digest}"
        done = self._request("PUT", f"{location.path}?{query}", blob,
                             {"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.status

    def _put_manifest(self, repository: str, manifest: bytes, media_type: str,
                      reference: str) -> str:
        done = self._request("PUT", f"/v2/{repository}/manifests/{reference}", manifest,
                             {"Content-Type": media_type})
        assert done.status == 201, done.status
        return done.getheader("Docker-Content-Digest")

    def registries_conf(self) -> str:
        """Mirrors for critest's registries; quay.io is the second registry's copy."""
        lines = []
        for host in MIRRORED_HOSTS:
            location = self.registry.host + ("/second" if host == "quay.io" else "")
            lines += ["[[registry]]", f'prefix = "{host}"', f'location = "{host}"',
                      "[[registry.mirror]]", f'location = "{location}"', ""]
        path = os.path.join(self.base, "registries.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        return path

    def stop(self) -> None:
        self.registry.stop()


@contextlib.contextmanager
def critest_corrald(bridge: str, subnet: str):
    """A corrald whose image pulls reach critest's test images; (daemon, registry)."""
    base = tempfile.mkdtemp(prefix="critest-registry-")
    registry = TestRegistry(base)
    daemon = Corrald(short_base(), bridge=bridge, subnet=subnet)
    try:
        daemon.config.write_text(f'registries_conf = "{registry.registries_conf()}"\n'
                                 + daemon.config.read_text())
        daemon.start()
        yield daemon, registry
    finally:
        daemon.cleanup()
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


def new_uuid() -> str:
    return str(uuid.uuid4())


class Critest:
    """pkg/framework's helpers over a daemon's CRI clients."""

    def __init__(self, daemon):
        self.rc = daemon.runtime
        self.ic = daemon.images

    # --- pods ---------------------------------------------------------------------------------
    @staticmethod
    def pod_config(prefix: str, **fields) -> api_pb2.PodSandboxConfig:
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=prefix + new_uuid(), uid=DEFAULT_UID_PREFIX + new_uuid(),
                namespace=DEFAULT_NAMESPACE_PREFIX + new_uuid(), attempt=DEFAULT_ATTEMPT),
            **fields)
        config.linux.SetInParent()
        return config

    def run_pod_sandbox(self, config) -> str:
        return self.rc.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id

    def run_default_pod_sandbox(self, prefix: str) -> str:
        return self.run_pod_sandbox(self.pod_config(prefix))

    def create_pod_sandbox_for_container(self) -> tuple[str, api_pb2.PodSandboxConfig]:
        config = self.pod_config("create-PodSandbox-for-container-")
        return self.run_pod_sandbox(config), config

    def stop_and_remove_pod(self, pod_id: str) -> None:
        self.rc.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.rc.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def pod_status(self, pod_id: str) -> api_pb2.PodSandboxStatus:
        return self.rc.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status

    # --- containers ---------------------------------------------------------------------------
    @staticmethod
    def container_config(prefix: str, image: str = DEFAULT_IMAGE, command=("top",),
                         **fields) -> api_pb2.ContainerConfig:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=prefix + new_uuid(),
                                               attempt=DEFAULT_ATTEMPT),
            image=api_pb2.ImageSpec(image=image), command=list(command), **fields)
        config.linux.SetInParent()
        return config

    def create_container(self, config, pod_id: str, pod_config) -> str:
        image = config.image.image
        if ":" not in image:
            image += ":latest"
        if self.image_status(image) is None:
            self.pull_public_image(image, pod_config)
        if not config.image.user_specified_image:
            config.image.user_specified_image = image
        return self.rc.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id

    def create_default_container(self, pod_id: str, pod_config, prefix: str,
                                 labels: dict | None = None) -> str:
        return self.create_container(self.container_config(prefix, labels=labels or {}),
                                     pod_id, pod_config)

    def create_pause_container(self, pod_id: str, pod_config, prefix: str) -> str:
        return self.create_container(self.container_config(prefix,
                                                           command=["sh", "-c", "top"]),
                                     pod_id, pod_config)

    def start_container(self, container_id: str) -> None:
        self.rc.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))

    def container_status(self, container_id: str) -> api_pb2.ContainerStatus:
        return self.rc.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)).status

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 60):
        return self.rc.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                        timeout=timeout))

    # --- images -------------------------------------------------------------------------------
    def image_status(self, name: str):
        reply = self.ic.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=name)))
        return reply.image if reply.HasField("image") else None

    def list_images(self) -> list:
        return list(self.ic.ListImages(api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter())).images)

    @staticmethod
    def prepare_image_name(name: str) -> str:
        """PrepareImageName with the default registry prefix: a tag of latest if none."""
        return name if ":" in name else name + ":latest"

    def pull_public_image(self, name: str, pod_config=None, timeout: float | None = None) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(
            image=self.prepare_image_name(name)))
        if pod_config is not None:
            request.sandbox_config.CopyFrom(pod_config)
        return self.ic.PullImage(request, timeout=timeout).image_ref

    def remove_image(self, name: str) -> None:
        """critest's removeImage: by the ID ImageStatus gives, if there is one."""
        image = self.image_status(name)
        if image is not None:
            self.ic.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(
                image=image.id)))


# PullImage's pod config for the image specs: testImagePodSandbox, labels only (none).
IMAGE_POD_SANDBOX = api_pb2.PodSandboxConfig()


def eventually(check, timeout: float, interval: float = 1.0):
    """Gomega's Eventually: the first truthy result of `check`, or the last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, grpc.RpcError, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{check} not true within {timeout} s")
        time.sleep(interval)


def check_main_page(c, pod_id: str, host_port: int, container_port: int) -> None:
    """critest's checkMainPage: 200 from 127.0.0.1:hostPort, else from podIP:containerPort."""
    if host_port:
        url = f"http://127.0.0.1:{host_port}"
    else:
        ip = c.pod_status(pod_id).network.ip
        assert ip, "The IP should not be nil."
        url = f"http://{ip}:{container_port}"

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy

    def get():
        with opener.open(url, timeout=60) as response:
            return response.status, response.read()

    assert eventually(get, timeout=60) == (200, WEB_SERVER_PAGE)
