"""What a pull from a real registry unpacks, compared field by field with what was pushed.

Images with every kind of tar entry (devices, fifos, hard links within and
across layers, setuid, sticky, xattrs incl. file capabilities, long and
non-ASCII names, whiteouts of whole trees, opaque directories, entries that
change type between layers) are pushed with skopeo to Debian's
docker-registry as OCI images (gzip, zstd and plain layers) and as Docker
schema 2 / manifest lists, pulled with corral, unpacked into overlay
snapshots and read back through a view: type, mode, owner, size, content,
link target, device numbers, xattrs, mtime and hard-link identity must
all match.  Also: references by digest, re-pulls that fetch nothing,
progress that ends at done == total, two images sharing layers pulled and
unpacked at once (each blob fetched once, each shared snapshot made once),
and mirror order.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading

import pytest

from corral.images.errors import NoMatchingPlatform, NotFound, RegistryUnavailable
from corral.images.pull import Puller
from corral.images.registries import RegistryConfig
from corral.images.service import ImageService
from corral.spec.image import MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST
from tests.integration.layer_trees import (
    LayoutWriter,
    differences,
    expected_tree,
    file_capability,
    mounted_image,
    tree_of,
)
from tests.integration.registry_server import Registry, TamperingProxy

T = 1_500_000_000  # mtimes: distinct per entry, so a lost or shifted one shows
BIG = random.Random(4).randbytes(1_500_000)  # > one 1 MiB download chunk
LONG_NAME = "long/" + "n" * 150 + ".txt"
LONG_TARGET = "/" + "/".join(["deep"] * 40)


def base_layer() -> list[dict]:
    return [
        {"name": "etc", "type": "dir", "mode": 0o755, "mtime": T + 1},
        {"name": "etc/passwd", "data": b"root:x:0:0::/root:/bin/sh\n", "mtime": T + 2},
        {"name": "etc/attr", "data": b"xattrs\n", "mtime": T + 3,
         "xattrs": {"user.note": b"hello", "user.binary": b"\x00\xff\xfe raw"}},
        {"name": "tmp", "type": "dir", "mode": 0o1777, "mtime": T + 4},
        {"name": "dev", "type": "dir", "mode": 0o755, "mtime": T + 5},
        {"name": "dev/zero", "type": "char", "device": (1, 5), "mode": 0o666, "mtime": T + 6},
        {"name": "dev/loop9", "type": "block", "device": (7, 9), "mode": 0o660, "gid": 6,
         "mtime": T + 7},
        {"name": "usr", "type": "dir", "mode": 0o755, "mtime": T + 8},
        {"name": "usr/bin", "type": "dir", "mode": 0o755, "mtime": T + 9},
        {"name": "usr/bin/one", "data": b"#!/bin/sh\necho one\n", "mode": 0o755,
         "mtime": T + 10},
        {"name": "usr/bin/two", "type": "link", "target": "usr/bin/one"},
        {"name": "usr/bin/three", "type": "link", "target": "usr/bin/one"},
        {"name": "usr/bin/solo", "data": b"solo\n", "mode": 0o750, "gid": 50, "mtime": T + 11},
        {"name": "usr/bin/suid", "data": b"setuid\n", "mode": 0o4755, "mtime": T + 12},
        {"name": "usr/bin/sgid", "data": b"setgid\n", "mode": 0o2711, "gid": 5, "mtime": T + 13},
        {"name": "usr/bin/ping", "data": b"cap\n", "mode": 0o755, "mtime": T + 14,
         "xattrs": {"security.capability": file_capability(13)}},  # CAP_NET_RAW
        {"name": "home", "type": "dir", "mode": 0o755, "mtime": T + 15},
        {"name": "home/user", "type": "dir", "mode": 0o700, "uid": 1000, "gid": 1000,
         "mtime": T + 16},
        {"name": "home/user/.profile", "data": b"export A=1\n", "mode": 0o600, "uid": 1000,
         "gid": 1000, "mtime": T + 17},
        {"name": "home/user/empty", "data": b"", "uid": 1000, "gid": 100, "mtime": T + 18},
        {"name": "old", "type": "dir", "mode": 0o755, "mtime": T + 19},
        {"name": "old/a", "data": b"a\n", "mtime": T + 20},
        {"name": "old/sub", "type": "dir", "mode": 0o755, "mtime": T + 21},
        {"name": "old/sub/b", "data": b"b\n", "mtime": T + 22},
        {"name": "var", "type": "dir", "mode": 0o755, "mtime": T + 23},
        {"name": "var/lib", "type": "dir", "mode": 0o755, "mtime": T + 24},
        {"name": "var/lib/stale", "data": b"hidden by opaque\n", "mtime": T + 25},
        {"name": "var/lib/stale-dir", "type": "dir", "mode": 0o755, "mtime": T + 26},
        {"name": "var/lib/stale-dir/x", "data": b"x\n", "mtime": T + 27},
        {"name": "file-then-dir", "data": b"a file first\n", "mtime": T + 28},
        {"name": "dir-then-file", "type": "dir", "mode": 0o755, "mtime": T + 29},
        {"name": "dir-then-file/child", "data": b"goes with its dir\n", "mtime": T + 30},
        {"name": "link-then-file", "type": "symlink", "target": "etc/passwd", "mtime": T + 31},
        {"name": "big", "data": BIG, "mtime": T + 32},
    ]


def middle_layer() -> list[dict]:
    return [
        {"name": ".wh.old", "data": b""},  # a whole tree
        {"name": "etc", "type": "dir", "mode": 0o755, "mtime": T + 40},
        {"name": "etc/passwd", "data": b"root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/:/bin/sh\n",
         "mode": 0o600, "gid": 42, "mtime": T + 41},
        {"name": "var/lib", "type": "dir", "mode": 0o750, "mtime": T + 42},
        {"name": "var/lib/.wh..wh..opq", "data": b""},
        {"name": "var/lib/fresh", "data": b"after the opaque marker\n", "mtime": T + 43},
        {"name": "file-then-dir", "type": "dir", "mode": 0o711, "mtime": T + 44},
        {"name": "file-then-dir/inside", "data": b"now a dir\n", "mtime": T + 45},
        {"name": "dir-then-file", "data": b"now a file\n", "mode": 0o640, "mtime": T + 46},
        {"name": "usr/bin", "type": "dir", "mode": 0o755, "mtime": T + 47},
        {"name": "usr/bin/solo-link", "type": "link", "target": "usr/bin/solo"},  # across layers
        {"name": "abs-link", "type": "symlink", "target": "/usr/bin/one", "mtime": T + 48},
        {"name": "dangling", "type": "symlink", "target": "nowhere/at/all", "mtime": T + 49},
        {"name": "run", "type": "dir", "mode": 0o755, "mtime": T + 50},
        {"name": "run/fifo", "type": "fifo", "mode": 0o620, "uid": 7, "gid": 8, "mtime": T + 51},
        {"name": LONG_NAME.rsplit("/", 1)[0], "type": "dir", "mode": 0o755, "mtime": T + 52},
        {"name": LONG_NAME, "data": b"a name longer than 100 bytes\n", "mtime": T + 53},
        {"name": "with space", "data": b"spaces\n", "mtime": T + 54},
        {"name": "d\u00efr", "type": "dir", "mode": 0o755, "mtime": T + 55},
        {"name": "d\u00efr/\u00f1ame \u2603", "data": b"unicode\n", "mtime": T + 56},
        # a whiteout hides only lower layers' files: this one, written above it, stays
        {"name": "run/kept", "data": b"same layer as its whiteout\n", "mtime": T + 57},
        {"name": "run/.wh.kept", "data": b""},
    ]


def top_layer(marker: bytes) -> list[dict]:
    return [
        {"name": "usr/bin/.wh.two", "data": b""},  # one link of a pair goes
        {"name": "etc/added", "data": b"no dir entry for etc in this layer\n", "mtime": T + 60},
        {"name": "link-then-file", "data": b"a file replaces the symlink\n", "mtime": T + 61},
        {"name": "long-target", "type": "symlink", "target": LONG_TARGET, "mtime": T + 62},
        {"name": "platform", "data": marker, "mtime": T + 63},
    ]


def rich_layers(marker: bytes = b"amd64") -> list[list[dict]]:
    return [base_layer(), middle_layer(), top_layer(marker)]


def skopeo_push(registry: Registry, layout: str, repository: str, *options: str) -> None:
    result = subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", *options,
                             f"oci:{layout}", f"docker://{registry.host}/{repository}:latest"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo push of {repository}: {result.stderr}"


PLATFORMS = [("amd64", "", b"amd64"), ("arm64", "", b"arm64"), ("arm", "v7", b"armv7")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    server = Registry(str(tmp_path_factory.mktemp("registry")))
    try:
        oci = LayoutWriter(str(base / "oci"))
        skopeo_push(server, oci.finish(oci.image(list(zip(
            rich_layers(), ("gzip", "zstd", "tar"), strict=True)))), "test/rich")
        # Docker schema 2 (no zstd there): pushed as written, so the plain layer stays plain
        docker = LayoutWriter(str(base / "docker"), docker=True)
        skopeo_push(server, docker.finish(docker.image(list(zip(
            rich_layers(), ("gzip", "tar", "tar"), strict=True)))), "test/rich-docker",
            "--preserve-digests")
        multi = LayoutWriter(str(base / "multi"), docker=True)
        index = multi.index([multi.image(list(zip(rich_layers(marker), ("gzip", "gzip", "gzip"),
                                                  strict=True)),
                                         architecture=arch, variant=variant)
                             for arch, variant, marker in PLATFORMS])
        skopeo_push(server, multi.finish(index), "test/multi-docker", "--all",
                    "--preserve-digests")
        for name, marker in (("a", b"image a"), ("b", b"image b")):
            shared = LayoutWriter(str(base / f"shared-{name}"))
            skopeo_push(server, shared.finish(shared.image(list(zip(
                rich_layers(marker), ("gzip", "zstd", "gzip"), strict=True)))),
                f"test/shared-{name}")
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


def assert_unpacks_to(service, name: str, layers: list[list[dict]]) -> None:
    with mounted_image(service, name) as root:
        problems = differences(expected_tree(layers), tree_of(root))
    assert problems == []


def test_oci_image_with_every_entry_kind_round_trips(service, registry):
    record = pull(service, f"{registry.host}/test/rich")
    assert record.target_media_type == "application/vnd.oci.image.manifest.v1+json"
    assert_unpacks_to(service, record.name, rich_layers())


def test_docker_schema2_image_round_trips(service, registry):
    record = pull(service, f"{registry.host}/test/rich-docker")
    assert record.target_media_type == MEDIA_DOCKER_MANIFEST
    manifest = json.loads(service.content.read(record.manifest_digest))
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar"}
    assert_unpacks_to(service, record.name, rich_layers())


def test_non_distributable_layers(service, registry, tmp_path):
    """Pushed to this registry (no `urls`), they are pulled and unpacked like any layer.
    (Docker's foreign layers without URLs: distribution 2.8 refuses the manifest.)"""
    layout = LayoutWriter(str(tmp_path / "layout"))
    layers = rich_layers(b"nondistributable")
    skopeo_push(registry, layout.finish(layout.image(list(zip(
        layers, ("nondistributable", "gzip", "nondistributable"), strict=True)))),
        "test/nondistributable", "--preserve-digests")
    record = pull(service, f"{registry.host}/test/nondistributable")
    manifest = json.loads(service.content.read(record.manifest_digest))
    assert "nondistributable" in manifest["layers"][0]["mediaType"]
    assert_unpacks_to(service, record.name, layers)


def test_docker_manifest_list_platform_choice(service, registry):
    ref = f"{registry.host}/test/multi-docker"
    for platform, marker in ((None, b"amd64"), ("linux/arm64", b"arm64"),
                             ("linux/arm/v7", b"armv7")):
        record = pull(service, ref, platform=platform)
        assert record.target_media_type == MEDIA_DOCKER_MANIFEST_LIST
        assert record.platform == (platform or "linux/amd64")
        assert_unpacks_to(service, record.name, rich_layers(marker))
    with pytest.raises(NoMatchingPlatform, match=r"no image for linux/arm/v6 .*linux/arm/v7"):
        pull(service, ref, platform="linux/arm/v6")
    with pytest.raises(NoMatchingPlatform, match=r"no image for windows/amd64"):
        pull(service, ref, platform="windows/amd64")


def test_pull_by_digest(service, registry):
    by_tag = pull(service, f"{registry.host}/test/multi-docker", platform="linux/arm64")
    index_digest, arm64_digest = by_tag.target_digest, by_tag.manifest_digest
    repository = f"{registry.host}/test/multi-docker"

    record = pull(service, f"{repository}@{index_digest}", platform="linux/arm64")
    assert record.name == f"{repository}@{index_digest}"
    assert record.id == by_tag.id

    # a platform's own manifest, by digest: no index to choose from
    record = pull(service, f"{repository}:latest@{arm64_digest}")
    assert record.target_digest == record.manifest_digest == arm64_digest
    assert record.platform == "linux/arm64"
    assert_unpacks_to(service, record.name, rich_layers(b"arm64"))

    absent = "sha256:" + "0" * 64
    with pytest.raises(NotFound, match=r"not found|unknown"):
        pull(service, f"{repository}@{absent}")


def test_progress_and_a_second_pull_that_fetches_nothing(service, registry):
    proxy = TamperingProxy(registry.host)
    try:
        events: list[tuple] = []
        ref = f"{proxy.host}/test/rich"
        record = pull(service, ref, progress=lambda p: events.append(
            (p.digest, p.media_type, p.status, p.done, p.total)))
        manifest = json.loads(service.content.read(record.manifest_digest))
        layers = {layer["digest"]: layer for layer in manifest["layers"]}
        for digest, layer in layers.items():
            mine = [e for e in events if e[0] == digest]
            assert {e[1] for e in mine} == {layer["mediaType"]}
            assert {e[4] for e in mine} == {layer["size"]}
            statuses = [e[2] for e in mine]
            assert statuses[0] == "waiting" and statuses[-1] == "done", statuses
            assert "downloading" in statuses and "verifying" in statuses
            done = [e[3] for e in mine if e[2] == "downloading"]
            assert done == sorted(done) and done[-1] == layer["size"]
            assert mine[-1][3] == layer["size"]
        assert set(proxy.blob_gets) >= set(layers)
        assert events[-1][2] == "done"

        before = dict(proxy.blob_gets)
        events.clear()
        again = pull(service, ref, progress=lambda p: events.append((p.digest, p.status,
                                                                     p.done, p.total)))
        assert again.id == record.id
        assert all(proxy.blob_gets[d] == before[d] for d in layers)  # no layer fetched again
        finals = {digest: (status, done, total) for digest, status, done, total in events}
        assert finals == {d: ("exists", layer["size"], layer["size"])
                          for d, layer in layers.items()}
    finally:
        proxy.stop()


def test_two_images_sharing_layers_pulled_and_unpacked_at_once(service, registry):
    """Each shared blob is fetched once and each shared layer unpacked once."""
    proxy = TamperingProxy(registry.host)
    try:
        errors, records = [], {}

        def one(name: str) -> None:
            try:
                records[name] = pull(service, f"{proxy.host}/test/shared-{name}", unpack=True)
            except Exception as e:  # noqa: BLE001 - asserted below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b", "a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        layer_digests = set()
        for record in records.values():
            manifest = json.loads(service.content.read(record.manifest_digest))
            layer_digests |= {layer["digest"] for layer in manifest["layers"]}
        assert len(layer_digests) == 4  # two shared, one own each
        assert {d: proxy.blob_gets[d] for d in layer_digests} == dict.fromkeys(layer_digests, 1)
        committed = service.db.conn.execute(
            "SELECT COUNT(*) FROM snapshots WHERE kind = 'committed'").fetchone()[0]
        assert committed == 4
        for name in ("a", "b"):
            assert_unpacks_to(service, records[name].name, rich_layers(f"image {name}".encode()))
    finally:
        proxy.stop()


def mirrors_conf(tmp_path, *mirrors: str) -> RegistryConfig:
    path = tmp_path / "registries.conf"
    path.write_text('[[registry]]\nlocation = "docker.io"\n' + "".join(
        f'[[registry.mirror]]\nlocation = "{m}"\n' for m in mirrors))
    return RegistryConfig.load(registries_conf=str(path))


@pytest.fixture(scope="module")
def hub_mirror(registry, tmp_path_factory):
    """`registry` also serves docker.io/library/app (the rich image)."""
    layout = LayoutWriter(str(tmp_path_factory.mktemp("hub") / "app"))
    skopeo_push(registry, layout.finish(layout.image(list(zip(
        rich_layers(b"hub"), ("gzip", "zstd", "tar"), strict=True)))), "library/app")
    return registry


def test_mirrors_are_tried_in_order(service, hub_mirror, tmp_path):
    first, second = TamperingProxy(hub_mirror.host), TamperingProxy(hub_mirror.host)
    try:
        record = pull(service, "app", mirrors_conf(tmp_path, first.host, second.host))
        assert record.name == "docker.io/library/app:latest"
        assert first.blob_gets and not second.blob_gets
        assert_unpacks_to(service, record.name, rich_layers(b"hub"))
    finally:
        first.stop()
        second.stop()


def test_a_mirror_without_the_image_is_passed_over(service, hub_mirror, tmp_path):
    empty = Registry(str(tmp_path / "empty-mirror"))
    second = TamperingProxy(hub_mirror.host)
    try:
        record = pull(service, "docker.io/library/app:latest",
                      mirrors_conf(tmp_path, empty.host, second.host))
        assert record.name == "docker.io/library/app:latest"
        assert second.blob_gets
    finally:
        second.stop()
        empty.stop()


def test_all_mirrors_failing_names_each(service, tmp_path):
    """No internet here: the registry itself (docker.io) fails too, after both mirrors."""
    with pytest.raises(RegistryUnavailable) as caught:
        pull(service, "app", mirrors_conf(tmp_path, "127.0.0.1:1", "127.0.0.1:2"))
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "127.0.0.1:2" in message
    assert service.list() == [] and service.content.digests() == []


def test_pulls_from_separate_processes_share_blobs_and_snapshots(service, registry):
    """corrald and a `corral --root` CLI may pull into one data root at once: file locks,
    not thread locks, must keep each blob fetched once and each layer unpacked once."""
    proxy = TamperingProxy(registry.host)
    script = ("import sys\n"
              "from corral.images.pull import Puller\n"
              "from corral.images.service import ImageService\n"
              "service = ImageService(sys.argv[1])\n"
              "puller = Puller(service)\n"
              "print(puller.pull(sys.argv[2], unpack=True).id)\n"
              "puller.close()\n"
              "service.close()\n")
    try:
        processes = [subprocess.Popen([sys.executable, "-c", script, service.root,
                                       f"{proxy.host}/test/rich"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = [process.communicate(timeout=120) for process in processes]
        assert [p.returncode for p in processes] == [0] * 4, [err for _, err in results]
        assert len({out for out, _ in results}) == 1
        record = service.get(f"{proxy.host}/test/rich")
        manifest = json.loads(service.content.read(record.manifest_digest))
        assert {proxy.blob_gets[layer["digest"]] for layer in manifest["layers"]} == {1}
        committed = service.db.conn.execute(
            "SELECT COUNT(*) FROM snapshots WHERE kind = 'committed'").fetchone()[0]
        assert committed == len(manifest["layers"])
        assert_unpacks_to(service, record.name, rich_layers())
    finally:
        proxy.stop()
