"""Image errors over corrald's real socket: each kind of failure has its gRPC code.

Real registries (Debian's docker-registry on 127.0.0.1, one with htpasswd
auth, a tampering proxy), a registries.conf that blocks a prefix, and a
corrald of this module's own.  After every refused pull, nothing of it is
recorded or left in the content store.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import NOTHING_LEFT, Corrald, short_base
from tests.integration.registry_server import Registry, TamperingProxy, layered_image

BRIDGE, SUBNET = "corrimg0", "10.99.83.0/24"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    base = tmp_path_factory.mktemp("registries")
    single, foreign = str(base / "single"), str(base / "foreign")
    layered_image(single, marker=b"amd64")
    layered_image(foreign, arch="arm64", marker=b"arm64",
                  extra_platforms=[("s390x", "", b"s390x")])  # an index without amd64
    public = Registry(str(base / "public"))
    private = Registry(str(base / "private"), htpasswd=("bob", "pw"))
    proxy = TamperingProxy(public.host)
    try:
        public.push(single, "test/app")
        public.push(foreign, "test/foreign", all_platforms=True)
        private.push(single, "team/app")
        yield {"public": public, "private": private, "proxy": proxy}
    finally:
        proxy.stop()
        private.stop()
        public.stop()


@pytest.fixture(scope="module")
def daemon():
    daemon = Corrald(short_base(), bridge=BRIDGE, subnet=SUBNET)
    try:
        conf = daemon.base / "registries.conf"
        conf.write_text('[[registry]]\nprefix = "blocked.example"\nblocked = true\n')
        daemon.config.write_text(f'registries_conf = "{conf}"\n' + daemon.config.read_text())
        daemon.import_busybox()
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def proxy(registries):
    proxy = registries["proxy"]
    yield proxy
    proxy.mode, proxy.target = None, ""


def failure(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert "Traceback" not in info.value.details()
    return info.value


def pull_request(image: str, auth: api_pb2.AuthConfig | None = None):
    return api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image), auth=auth)


def first_layer(host: str, repository: str) -> str:
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/latest",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["layers"][0]["digest"]


def assert_nothing_kept(daemon, before: set[str]) -> None:
    """Only the images and blobs there were before the refused pull."""
    images = daemon.images.ListImages(api_pb2.ListImagesRequest()).images
    assert [tag for image in images for tag in image.repo_tags] == \
        ["docker.io/library/busybox:latest"]
    content = daemon.root / "content"
    assert set(os.listdir(content / "blobs" / "sha256")) == before
    assert [n for n in os.listdir(content / "ingest") if not n.endswith(".lock")] == []


def blobs(daemon) -> set[str]:
    return set(os.listdir(daemon.root / "content" / "blobs" / "sha256"))


@pytest.mark.parametrize("case, code, message", [
    ("invalid", Code.INVALID_ARGUMENT, r"invalid reference 'Upper/Case': must be lower case"),
    ("absent", Code.NOT_FOUND, r"test/absent: manifest latest: not found \(HTTP 404\)"),
    ("no-platform", Code.NOT_FOUND, r"no image for linux/amd64 in index .*linux/arm64"),
    ("no-credentials", Code.UNAUTHENTICATED, r"asks for credentials \(HTTP 401\) and none"),
    ("wrong-credentials", Code.UNAUTHENTICATED, r"unauthorized \(HTTP 401\)"),
    ("unreachable", Code.UNAVAILABLE, r"127\.0\.0\.1:1: .*refused"),
    ("blocked", Code.PERMISSION_DENIED, r"blocked\.example/app is blocked in registries\.conf"),
    ("corrupt-layer", Code.FAILED_PRECONDITION, r"blob sha256:[0-9a-f]{64}: content has digest"),
    ("schema1", Code.FAILED_PRECONDITION, r"Docker schema 1, which is deprecated"),
])
def test_pull_failures_have_their_codes(daemon, registries, proxy, case, code, message):
    public, private = registries["public"].host, registries["private"].host
    image, auth = {
        "invalid": ("Upper/Case", None),
        "absent": (f"{public}/test/absent", None),
        "no-platform": (f"{public}/test/foreign", None),
        "no-credentials": (f"{private}/team/app", None),
        "wrong-credentials": (f"{private}/team/app",
                              api_pb2.AuthConfig(username="bob", password="wrong")),
        "unreachable": ("127.0.0.1:1/test/app", None),
        "blocked": ("blocked.example/app", None),
        "corrupt-layer": (f"{proxy.host}/test/app", None),
        "schema1": (f"{proxy.host}/test/app", None),
    }[case]
    if case == "corrupt-layer":
        proxy.target, proxy.mode = first_layer(public, "test/app"), "corrupt"
    elif case == "schema1":
        proxy.target, proxy.mode = "manifest", "schema1"
    before = blobs(daemon)
    error = failure(daemon.images.PullImage, pull_request(image, auth))
    assert error.code() == code, error.details()
    assert re.search(message, error.details()), error.details()
    assert_nothing_kept(daemon, before)


def test_the_right_credentials_pull(daemon, registries):
    image = f"{registries['private'].host}/team/app:latest"
    daemon.images.PullImage(pull_request(image, api_pb2.AuthConfig(username="bob",
                                                                    password="pw")))
    spec = api_pb2.ImageSpec(image=image)
    assert image in daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=spec)).image \
        .repo_tags
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec))
    assert not daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=spec)) \
        .HasField("image")


def test_status_and_removal_of_absent_and_invalid_names(daemon):
    absent = api_pb2.ImageSpec(image="docker.io/library/absent:1")
    invalid = api_pb2.ImageSpec(image="Upper/Case")
    # The CRI: an absent image is no error for ImageStatus, and removal is idempotent.
    assert not daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=absent)) \
        .HasField("image")
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=absent))
    # A name that cannot name any image is the caller's mistake (as containerd).
    for call, request in (
            (daemon.images.ImageStatus, api_pb2.ImageStatusRequest(image=invalid)),
            (daemon.images.RemoveImage, api_pb2.RemoveImageRequest(image=invalid))):
        error = failure(call, request)
        assert error.code() == Code.INVALID_ARGUMENT
        assert "invalid reference 'Upper/Case'" in error.details()


def test_a_container_of_an_absent_image_is_not_found(daemon):
    pod_id, pod_config = daemon.run_pod("absent-image")
    try:
        config = daemon.container_config("c", ["sh"])
        config.image.image = "docker.io/library/absent:1"
        error = failure(daemon.runtime.CreateContainer, api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))
        assert error.code() == Code.NOT_FOUND
        assert "image 'docker.io/library/absent:1' not found" in error.details()
    finally:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.leftovers() == NOTHING_LEFT
