"""Ports of critest's image specs (cri-tools pkg/validate image.go, image_consistency.go,
image_id_consistency.go, v1.29.0 to v1.36.0) over corrald's real socket.

Each test is one ginkgo `It`, named after it, sending what critest sends (see
critest_env.py); the images come from a real registry under their critest names.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod
from tests.integration.critest_env import (
    CRI_TOOLS,
    DEFAULT_IMAGE,
    IMAGE_POD_SANDBOX,
    SECOND_REGISTRY,
    Critest,
    critest_corrald,
    new_uuid,
)

IMAGE_WITH_TAG = CRI_TOOLS + "test-image-tag:test"
IMAGE_WITHOUT_TAG = CRI_TOOLS + "test-image-latest"
IMAGE_WITH_ALL_REFERENCES = CRI_TOOLS + "test-image-tag:all"
DIFFERENT_TAG_DIFFERENT_IMAGE = [CRI_TOOLS + f"test-image-{i}:latest" for i in (1, 2, 3)]
DIFFERENT_TAG_SAME_IMAGE = [CRI_TOOLS + f"test-image-tags:{i}" for i in (1, 2, 3)]
SAME_IMAGE_DIFFERENT_REGISTRIES = [CRI_TOOLS + "test-image-tags:1",
                                   SECOND_REGISTRY + "test-image-tags:1"]


@pytest.fixture(scope="module")
def world():
    with critest_corrald("corraltci", "10.99.71.0/24") as (daemon, registry):
        yield daemon, registry


@pytest.fixture
def c(world):
    """critest's clients; after each spec no pod is left and no test image is either."""
    daemon, _ = world
    yield Critest(daemon)
    remove_every_pod(daemon)
    left = [tag for image in Critest(daemon).list_images() for tag in image.repo_tags]
    assert left in ([], [DEFAULT_IMAGE]), left


def check_remove_image(c, name: str) -> None:
    c.remove_image(name)
    assert c.image_status(name) is None, "Should have none image in list"


def pull_check_remove(c, name: str, status_check) -> None:
    c.remove_image(name)
    c.pull_public_image(name, IMAGE_POD_SANDBOX)
    status = c.image_status(name)
    assert status is not None, "Should have one image in list"
    assert status.id and status.size > 0
    status_check(status)
    check_remove_image(c, name)


# --- image.go ------------------------------------------------------------------------------
def test_public_image_with_tag_should_be_pulled_and_removed(c):
    pull_check_remove(c, IMAGE_WITH_TAG,
                      lambda s: _equal(list(s.repo_tags), [IMAGE_WITH_TAG]))


def test_public_image_should_timeout_if_requested(c):
    with pytest.raises(grpc.RpcError) as info:
        c.pull_public_image(IMAGE_WITH_TAG, timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5  # a pull corrald went on with lands soon: remove it
    while time.monotonic() < deadline and c.image_status(IMAGE_WITH_TAG) is None:
        time.sleep(0.1)
    c.remove_image(IMAGE_WITH_TAG)


def test_public_image_without_tag_should_be_pulled_and_removed(c):
    pull_check_remove(c, IMAGE_WITHOUT_TAG,
                      lambda s: _equal(list(s.repo_tags), [IMAGE_WITHOUT_TAG + ":latest"]))


def test_public_image_with_digest_should_be_pulled_and_removed(world, c):
    _, registry = world
    name = CRI_TOOLS + "test-image-digest@" + \
        registry.digests["k8s-staging-cri-tools/test-image-digest"]

    def check(status):
        _equal(list(status.repo_tags), [])
        _equal(list(status.repo_digests), [name])

    pull_check_remove(c, name, check)


def test_image_status_should_support_all_kinds_of_references(c):
    name = IMAGE_WITH_ALL_REFERENCES
    c.remove_image(name)
    c.pull_public_image(name, IMAGE_POD_SANDBOX)
    status = c.image_status(name)
    assert status is not None, "should get image status"
    assert c.image_status(status.id) == status
    assert status.repo_tags and status.repo_digests
    for reference in list(status.repo_tags) + list(status.repo_digests):
        assert c.image_status(reference) == status, reference
    check_remove_image(c, name)


@pytest.mark.parametrize("image, uid, username", [
    ("test-image-user-uid", 1002, ""),
    ("test-image-user-username", 0, "www-data"),
    ("test-image-user-uid-group", 1003, ""),
    ("test-image-user-username-group", 0, "www-data"),
], ids=["UID only", "Username only", "UID:group", "Username:group"])
def test_image_status_get_image_fields_should_not_have_uid_username_empty(c, image, uid,
                                                                           username):
    name = CRI_TOOLS + image
    c.pull_public_image(name, IMAGE_POD_SANDBOX)
    try:
        status = c.image_status(name)
        assert (status.uid.value, status.username) == (uid, username)
    finally:
        c.remove_image(name)


def test_list_image_should_get_exactly_3_image_in_the_result_list(c):
    for name in DIFFERENT_TAG_DIFFERENT_IMAGE:
        c.remove_image(name)
    ids = [c.pull_public_image(name, IMAGE_POD_SANDBOX) for name in DIFFERENT_TAG_DIFFERENT_IMAGE]
    try:
        assert len(ids) == 3 and len(set(ids)) == 3
        images = {image.id: image for image in c.list_images()}
        for name, image_id in zip(DIFFERENT_TAG_DIFFERENT_IMAGE, ids, strict=True):
            assert list(images[image_id].repo_tags) == [name]
    finally:
        for name in DIFFERENT_TAG_DIFFERENT_IMAGE:
            c.remove_image(name)


def test_list_image_should_get_exactly_3_repo_tags_in_the_result_image(c):
    for name in DIFFERENT_TAG_SAME_IMAGE:
        c.remove_image(name)
    ids = sorted({c.pull_public_image(name, IMAGE_POD_SANDBOX)
                  for name in DIFFERENT_TAG_SAME_IMAGE})
    try:
        assert len(ids) == 1, "Only 1 image id should be returned"
        found = [image for image in c.list_images() if image.id == ids[0]]
        assert len(found) == 1
        assert sorted(found[0].repo_tags) == sorted(DIFFERENT_TAG_SAME_IMAGE)
    finally:
        for name in DIFFERENT_TAG_SAME_IMAGE:
            c.remove_image(name)


def _pulled_under_every_name(c, names: list[str]):
    for name in names:
        c.remove_image(name)
    for name in names:
        c.pull_public_image(name, IMAGE_POD_SANDBOX)
    found = next(image for image in c.list_images() if names[0] in image.repo_tags)
    assert sorted(found.repo_tags) == sorted(names)
    return found


def test_removing_image_by_one_tag_should_remove_all_tags(c):
    found = _pulled_under_every_name(c, DIFFERENT_TAG_SAME_IMAGE)
    c.remove_image(DIFFERENT_TAG_SAME_IMAGE[0])
    for name in DIFFERENT_TAG_SAME_IMAGE + [found.id]:
        assert c.image_status(name) is None, name


def test_removing_image_from_one_registry_should_remove_all_tags_from_other_registries(c):
    found = _pulled_under_every_name(c, SAME_IMAGE_DIFFERENT_REGISTRIES)
    c.remove_image(SAME_IMAGE_DIFFERENT_REGISTRIES[0])
    for name in SAME_IMAGE_DIFFERENT_REGISTRIES + [found.id]:
        assert c.image_status(name) is None, name


# --- image_consistency.go ------------------------------------------------------------------
def test_should_not_list_or_get_image_status_immediately_after_removal(c):
    c.remove_image(IMAGE_WITH_TAG)
    c.pull_public_image(IMAGE_WITH_TAG, IMAGE_POD_SANDBOX)
    c.remove_image(IMAGE_WITH_TAG)
    assert not any(IMAGE_WITH_TAG in image.repo_tags for image in c.list_images())
    assert c.image_status(IMAGE_WITH_TAG) is None


def test_should_list_and_get_image_status_immediately_after_pulling(c):
    c.remove_image(IMAGE_WITH_TAG)
    c.pull_public_image(IMAGE_WITH_TAG, IMAGE_POD_SANDBOX)
    try:
        assert any(IMAGE_WITH_TAG in image.repo_tags for image in c.list_images())
        assert c.image_status(IMAGE_WITH_TAG) is not None
    finally:
        c.remove_image(IMAGE_WITH_TAG)


def test_should_not_fail_on_simultaneous_remove_image_calls(c):
    c.remove_image(IMAGE_WITH_TAG)
    c.pull_public_image(IMAGE_WITH_TAG, IMAGE_POD_SANDBOX)
    image_id = c.image_status(IMAGE_WITH_TAG).id
    results, start = [], threading.Barrier(5)

    def remove():
        start.wait()
        try:
            c.ic.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id)))
            error = None
        except grpc.RpcError as e:
            error = e.code()
        results.append((error, c.image_status(image_id) is not None))

    threads = [threading.Thread(target=remove) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [(None, False)] * 5
    assert c.image_status(image_id) is None


# --- image_id_consistency.go (v1.36.0) -----------------------------------------------------
def _run_image_by_ref(c, image_ref: str, user_specified: str):
    pod_id, pod_config = c.create_pod_sandbox_for_container()
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="id-consistency-" + new_uuid(), attempt=2),
        image=api_pb2.ImageSpec(image=image_ref, user_specified_image=user_specified))
    container_id = c.rc.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
    c.start_container(container_id)
    return pod_id, container_id


def test_should_return_the_same_image_identifier_across_all_apis(c):
    image_ref = c.pull_public_image(IMAGE_WITH_TAG, IMAGE_POD_SANDBOX)
    assert image_ref
    try:
        assert c.image_status(IMAGE_WITH_TAG).id == image_ref
        pod_id, container_id = _run_image_by_ref(c, image_ref, IMAGE_WITH_TAG)
        status = c.container_status(container_id)
        listed = c.rc.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(id=container_id))).containers
        assert len(listed) == 1
        assert status.image_id == image_ref  # critest skips when empty; corrald fills it
        assert listed[0].image_id == image_ref
        c.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
        c.stop_and_remove_pod(pod_id)
    finally:
        c.remove_image(IMAGE_WITH_TAG)


def test_should_return_the_same_image_identifier_when_pulled_from_different_registries(c):
    first, second = SAME_IMAGE_DIFFERENT_REGISTRIES
    ref1 = c.pull_public_image(first, IMAGE_POD_SANDBOX)
    ref2 = c.pull_public_image(second, IMAGE_POD_SANDBOX)
    try:
        assert ref1 and ref1 == ref2
        assert c.image_status(first).id == ref1 and c.image_status(second).id == ref1
        pod_id, container_id = _run_image_by_ref(c, ref2, second)
        assert c.container_status(container_id).image_id == ref1
        c.rc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
        c.stop_and_remove_pod(pod_id)
    finally:
        c.remove_image(first)
        c.remove_image(second)


def _equal(actual, expected) -> None:
    assert actual == expected, (actual, expected)
