"""Pulling from a real registry (Debian's docker-registry on 127.0.0.1), friendly and hostile."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from corral.images import gc
from corral.images.errors import (
    ContentInvalid,
    ImageError,
    NoMatchingPlatform,
    NoSpace,
    NotFound,
    RegistryUnavailable,
    Unauthenticated,
    Unsupported,
)
from corral.images.pull import Puller
from corral.images.registries import RegistryConfig
from corral.images.service import ImageService
from corral.spec.image import MEDIA_INDEX, MEDIA_MANIFEST, sha256_digest
from tests.integration.registry_server import (
    Registry,
    TamperingProxy,
    actual_tree,
    expected_tree,
    layered_image,
    snapshot_tree,
)

CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    single, multi = str(base / "single"), str(base / "multi")
    layered_image(single, marker=b"amd64")
    layered_image(multi, marker=b"amd64", extra_platforms=[("arm64", "", b"arm64"),
                                                           ("arm", "v7", b"armv7")])
    return {"single": single, "multi": multi}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, images):
    server = Registry(str(tmp_path_factory.mktemp("registry")))
    try:
        server.push(images["single"], "test/layered")
        server.push(images["multi"], "test/multi", all_platforms=True)
        server.push(images["single"], "library/busybox")  # served as a docker.io mirror
        yield server
    finally:
        server.stop()


@pytest.fixture
def service(tmp_path):
    svc = ImageService(str(tmp_path / "root"))
    yield svc
    for record in svc.list():
        svc.remove(record.name, force=True)
    svc.close()


def pull(service, ref: str, config: RegistryConfig | None = None, **options):
    puller = Puller(service, config or RegistryConfig())
    try:
        return puller.pull(ref, **options)
    finally:
        puller.close()


def assert_nothing_stored(service) -> None:
    assert service.list() == []
    assert service.content.digests() == []
    assert [n for n in os.listdir(service.content.ingest_dir) if not n.endswith(".lock")] == []
    assert service.db.conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 0


def test_pull_unpacks_what_was_pushed_file_by_file(service, registry):
    events = []
    record = pull(service, f"{registry.host}/test/layered", progress=lambda p: events.append(
        (p.digest, p.status, p.done, p.total)))
    assert record.name == f"{registry.host}/test/layered:latest"
    assert record.platform == "linux/amd64"
    tree = snapshot_tree(service, record.name)
    expected = expected_tree(b"amd64")
    for path, value in expected.items():
        if value[0] != "dir":
            assert tree.get(path) == value, path
    assert "etc/gone" not in tree and "data/old" not in tree  # whiteout, opaque dir
    finals = {digest: (status, done, total) for digest, status, done, total in events}
    assert len(finals) == 3
    assert all(status == "done" and done == total for status, done, total in finals.values())


def test_platform_choice_from_an_index(service, registry):
    for platform, marker in ((None, b"amd64"), ("linux/arm64", b"arm64"),
                             ("linux/arm/v7", b"armv7")):
        record = pull(service, f"{registry.host}/test/multi", platform=platform)
        tree = snapshot_tree(service, record.name)
        assert tree["platform"] == expected_tree(marker)["platform"]
        assert record.target_digest != record.manifest_digest  # the name points to the index
    with pytest.raises(NoMatchingPlatform, match=r"no image for linux/s390x .*linux/amd64"):
        pull(service, f"{registry.host}/test/multi", platform="linux/s390x")


def layout_files(path: str) -> dict[str, bytes]:
    """Every file of an OCI layout, a directory or a tar, by its path in it."""
    if os.path.isdir(path):
        return {os.path.relpath(os.path.join(d, n), path): Path(d, n).read_bytes()
                for d, _, names in os.walk(path) for n in names}
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def named_blobs(files: dict[str, bytes], descriptors: list[dict]) -> set[str]:
    """The digests the descriptors reach (index → manifests → config and layers), each
    checked to be in blobs/ with its digest and size."""
    reached = set()
    for entry in descriptors:
        blob = files.get(f"blobs/sha256/{entry['digest'][7:]}")
        assert blob is not None, f"{entry['digest']} is named but not in blobs/"
        assert (sha256_digest(blob), len(blob)) == (entry["digest"], entry["size"])
        reached.add(entry["digest"])
        if entry["mediaType"] in (MEDIA_INDEX, MEDIA_MANIFEST):
            document = json.loads(blob)
            reached |= named_blobs(files, document.get("manifests") or [
                document["config"], *document["layers"]])
    return reached


def test_a_pulled_index_exports_with_the_platforms_stored(service, registry, tmp_path):
    """The name points to an index of 3 platforms, of which a pull stores one: oci-archive
    and oci-dir write the index limited to it, docker-archive its one image; each imports
    into a fresh root as the same image, and names no blob it lacks."""
    ref = f"{registry.host}/test/multi:latest"
    record = pull(service, ref, unpack=True)
    expected = snapshot_tree(service, ref)
    original = json.loads(service.content.read(record.target_digest))
    (host_entry,) = [m for m in original["manifests"] if m["digest"] == record.manifest_digest]
    assert len(original["manifests"]) == 3 and host_entry["platform"]["architecture"] == "amd64"
    for fmt in ("oci-archive", "oci-dir", "docker-archive"):
        path = str(tmp_path / f"multi-{fmt}")
        service.export([ref], path, fmt)
        files = layout_files(path)
        if fmt == "docker-archive":
            (entry,) = json.loads(files["manifest.json"])
            assert entry["RepoTags"] == [ref] and entry["Config"] == f"{record.id[7:]}.json"
            assert len(entry["Layers"]) == 3 and all(layer in files for layer in entry["Layers"])
        else:
            (top,) = json.loads(files["index.json"])["manifests"]
            assert top["mediaType"] == MEDIA_INDEX and "platform" not in top
            index = json.loads(files[f"blobs/sha256/{top['digest'][7:]}"])
            assert index["manifests"] == [host_entry]
            reached = named_blobs(files, [top])
            assert {f"sha256:{p[13:]}" for p in files if p.startswith("blobs/")} == reached
        target = ImageService(str(tmp_path / f"root-{fmt}"))
        try:
            (imported,) = target.import_archive(path)
            assert (imported.name, imported.id, imported.platform) == \
                (ref, record.id, "linux/amd64"), fmt
            if fmt != "docker-archive":
                assert imported.manifest_digest == record.manifest_digest
                assert imported.target_digest == top["digest"]
                assert target.gc().blobs == 0  # the import reaches every blob it stored
            assert snapshot_tree(target, imported.name) == expected, fmt
        finally:
            for each in target.list():
                target.remove(each.name, force=True)
            target.close()
    archive = str(tmp_path / "multi-oci-archive")
    inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"],
                                          capture_output=True, text=True, check=True).stdout)
    assert inspected["Architecture"] == "amd64" and len(inspected["Layers"]) == 3
    copy = subprocess.run(["skopeo", "copy", "--all", f"oci-archive:{archive}",
                           f"oci:{tmp_path / 'skopeo-copy'}"], capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr  # --all: every manifest the index names

    # Every platform stored: the index as the registry served it.
    for platform in ("linux/arm64", "linux/arm/v7"):
        pull(service, ref, platform=platform)
    pull(service, ref)
    service.export([ref], archive, "oci-archive")
    (top,) = json.loads(layout_files(archive)["index.json"])["manifests"]
    assert top["digest"] == record.target_digest


def test_an_image_pulled_for_another_platform_exports_its_manifest(service, registry,
                                                                   tmp_path):
    ref = f"{registry.host}/test/multi:latest"
    record = pull(service, ref, platform="linux/arm64")
    path = str(tmp_path / "arm64.tar")
    service.export([ref], path, "oci-archive")
    (top,) = json.loads(layout_files(path)["index.json"])["manifests"]
    assert top["digest"] == record.manifest_digest  # what an import here would choose
    assert top["platform"] == {"architecture": "arm64", "os": "linux"}
    target = ImageService(str(tmp_path / "other"))
    try:
        (imported,) = target.import_archive(path)
        assert (imported.id, imported.platform) == (record.id, "linux/arm64")
    finally:
        for each in target.list():
            target.remove(each.name)
        target.close()


def test_mirror_serves_docker_hub_offline(service, registry, tmp_path):
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "docker.io"\n'
                    f'[[registry.mirror]]\nlocation = "127.0.0.1:1"\n'  # down: skipped
                    f'[[registry.mirror]]\nlocation = "{registry.host}"\n')
    record = pull(service, "busybox", RegistryConfig.load(registries_conf=str(conf)))
    assert record.name == "docker.io/library/busybox:latest"


def test_concurrent_pulls_fetch_each_blob_once(service, registry):
    proxy = TamperingProxy(registry.host)
    try:
        errors = []

        def one():
            try:
                pull(service, f"{proxy.host}/test/layered")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        layer_gets = {d: n for d, n in proxy.blob_gets.items()}
        assert layer_gets and max(layer_gets.values()) <= 4  # configs: read by each pull
        manifest = json.loads(service.content.read(service.list()[0].manifest_digest))
        for layer in manifest["layers"]:
            assert proxy.blob_gets[layer["digest"]] == 1
    finally:
        proxy.stop()


@pytest.fixture
def proxy(registry):
    server = TamperingProxy(registry.host)
    yield server
    server.stop()


def first_layer(registry_host: str, service_root: str, which: int = 0) -> str:
    """The digest of the layered image's first (or `which`) layer (from a throwaway pull)."""
    svc = ImageService(service_root)
    try:
        record = pull(svc, f"{registry_host}/test/layered")
        manifest = json.loads(svc.content.read(record.manifest_digest))
        return manifest["layers"][which]["digest"]
    finally:
        svc.close()


def test_removal_does_not_wait_for_a_pull_in_another_process(service, registry, proxy,
                                                             tmp_path):
    """RemoveImage untags at once while a pull (holding the GC lock shared) downloads; the
    pull collects the removed image's blobs and layers when it is done."""
    old_layout = str(tmp_path / "old")
    layered_image(old_layout, marker=b"old")
    (old,) = service.import_archive(old_layout, "example.com/old:1")
    old_top = service.unpack(old.name)
    old_blobs = set(service.content.digests())
    proxy.target = first_layer(registry.host, str(tmp_path / "scratch"), which=-1)
    proxy.mode = "stall"
    ref = f"{proxy.host}/test/layered:latest"
    puller = subprocess.Popen([CORRAL, "--root", service.root, "pull", "-q", ref],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    remover = None
    try:
        assert proxy.stalled.wait(60)  # the pull is mid-blob, holding the lock shared
        with gc.lock(service.root, shared=False, wait=False) as free:
            assert not free
        removed = []
        remover = threading.Thread(target=lambda: removed.append(service.remove(old.name)))
        remover.start()
        remover.join(30)
        assert not remover.is_alive() and removed == [[old.name]]
        assert old_blobs <= set(service.content.digests())  # collection is the pull's
        assert service.snapshots.exists(old_top) and puller.poll() is None
        proxy.resume.set()
        out, err = puller.communicate(timeout=60)
    finally:
        proxy.resume.set()
        puller.kill()
        puller.wait()
        if remover is not None:
            remover.join(60)  # (if it waited for the pull, it is done now)
    assert puller.returncode == 0, err
    pulled = service.get(ref)
    assert [r.name for r in service.list()] == [ref] and out == f"{pulled.id}\n"
    manifest = json.loads(service.content.read(pulled.manifest_digest))
    assert set(service.content.digests()) == {
        pulled.manifest_digest, pulled.id, *(layer["digest"] for layer in manifest["layers"])}
    assert not service.snapshots.exists(old_top)
    assert snapshot_tree(service, ref) == expected_tree(b"amd64")


@pytest.mark.parametrize("mode, message", [
    ("corrupt", "content has digest"),
    ("truncate", r"truncated|connection closed|gave up"),
])
def test_bad_blob_is_rejected_and_nothing_stored(service, registry, proxy, tmp_path, mode,
                                                 message):
    proxy.target = first_layer(registry.host, str(tmp_path / "scratch"))
    proxy.mode = mode
    with pytest.raises(ImageError, match=message):
        pull(service, f"{proxy.host}/test/layered")
    assert_nothing_stored(service)


def test_dropped_connection_resumes_with_range(service, registry, proxy, tmp_path):
    proxy.target = first_layer(registry.host, str(tmp_path / "scratch"))
    proxy.mode = "drop-once"
    record = pull(service, f"{proxy.host}/test/layered")
    assert proxy.mode == "dropped"
    assert proxy.blob_gets[proxy.target] == 2  # the drop, then the rest with Range
    assert snapshot_tree(service, record.name)["etc/motd"] == expected_tree(b"")["etc/motd"]


def test_server_errors_are_retried(service, proxy):
    proxy.mode = "500-twice"
    pull(service, f"{proxy.host}/test/layered")
    assert proxy.failures == 2


@pytest.mark.parametrize("mode, error, message", [
    ("not-json", ContentInvalid, "not JSON"),
    ("huge", NoSpace, r"no space left on .*layers declare \d+ bytes"),
    ("schema1", Unsupported, "schema 1"),
])
def test_hostile_manifests(service, proxy, mode, error, message):
    proxy.target, proxy.mode = "manifest", mode
    with pytest.raises(error, match=message):
        pull(service, f"{proxy.host}/test/layered")
    assert_nothing_stored(service)


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory, images):
    server = Registry(str(tmp_path_factory.mktemp("private")), htpasswd=("alice", "s3cret"))
    try:
        server.push(images["single"], "team/app")
        yield server
    finally:
        server.stop()


def test_basic_auth(service, private_registry, tmp_path):
    ref = f"{private_registry.host}/team/app"
    with pytest.raises(Unauthenticated, match=r"credentials|401"):
        pull(service, ref)
    assert_nothing_stored(service)
    with pytest.raises(Unauthenticated, match="401"):
        pull(service, ref, credentials=("alice", "wrong"))
    pull(service, ref, credentials=("alice", "s3cret"))
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {private_registry.host: {
        "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    other = ImageService(str(tmp_path / "other"))
    try:
        pull(other, ref, RegistryConfig.load(auth_file=str(auth_file)))
        assert other.get(ref).id == service.get(ref).id
    finally:
        other.close()


def test_unknown_image_and_registry_down(service, registry):
    with pytest.raises(NotFound, match="not found"):
        pull(service, f"{registry.host}/test/absent")
    with pytest.raises(RegistryUnavailable, match=r"127.0.0.1:1: .*refused"):
        pull(service, "127.0.0.1:1/test/layered")
    assert_nothing_stored(service)


@pytest.mark.parametrize("layer, message", [
    ([{"name": "../escaped", "data": b"x"}], r"\.\."),
    ([{"name": "link", "type": "symlink", "target": "../../../../../tmp"},
      {"name": "link/owned", "data": b"x"}], "outside|symlink|escape"),
])
def test_escaping_layer_is_refused_and_nothing_kept(service, registry, tmp_path, layer,
                                                    message):
    layout = str(tmp_path / "evil")
    layered_image(layout, layers=[layer])
    registry.push(layout, "test/evil")
    record = pull(service, f"{registry.host}/test/evil")  # the blobs themselves verify
    with pytest.raises(ImageError, match=message):
        service.unpack_new(record.name)
    assert_nothing_stored(service)
    assert not os.path.exists("/tmp/owned") and not os.path.exists(
        os.path.join(os.path.dirname(service.root), "escaped"))


def test_busybox_image_round_trips_through_the_registry(service, registry, tmp_path):
    """The embedded busybox image, pushed and pulled: the same files, modes and owners."""
    from corral.images.busybox import build_rootfs
    from corral.images.layout import build_image, write_layout

    rootfs = str(tmp_path / "rootfs")
    build_rootfs(rootfs)
    layout = str(tmp_path / "busybox-layout")
    write_layout(build_image(rootfs, "busybox:latest"), layout)
    registry.push(layout, "embedded/busybox")
    record = pull(service, f"{registry.host}/embedded/busybox")
    pulled = snapshot_tree(service, record.name)
    pushed = actual_tree(rootfs)
    assert pulled == pushed


def test_pull_unpacking_while_downloading(service, registry):
    record = pull(service, f"{registry.host}/test/layered", unpack=True)
    tree = snapshot_tree(service, record.name)  # unpack() finds every layer already there
    assert tree["etc/motd"] == expected_tree(b"")["etc/motd"]
    assert "etc/gone" not in tree


def test_pull_unpacking_while_downloading_refuses_an_escaping_layer(service, registry,
                                                                     tmp_path):
    layout = str(tmp_path / "evil")
    layered_image(layout, layers=[[{"name": "../escaped", "data": b"x"}]])
    registry.push(layout, "test/evil2")
    with pytest.raises(ImageError, match=r"\.\."):
        pull(service, f"{registry.host}/test/evil2", unpack=True)
    assert_nothing_stored(service)
