"""Image records: record, get (name, short name, ID, prefix), tag, remove, prune, migration.

No root needed: blobs are written straight into the content store and
snapshots made with prepare/commit only (directories and rows, no mounts).
"""

from __future__ import annotations

import os
import sqlite3

import pytest

from corral.images.errors import (
    ContentInvalid,
    ImageError,
    InUse,
    InvalidArgument,
    InvalidReference,
    NotFound,
)
from corral.images.service import ImageService
from corral.spec.image import (
    MEDIA_CONFIG,
    MEDIA_LAYER_TAR,
    MEDIA_MANIFEST,
    canonical_json,
    chain_ids,
    descriptor,
    sha256_digest,
)
from corral.store.db import MIGRATIONS


@pytest.fixture
def service(tmp_path):
    svc = ImageService(str(tmp_path / "root"))
    yield svc
    svc.close()


def store_image(service, name: str, layers: list[bytes], cmd: str = "sh"):
    """Layer, config and manifest blobs stored, the image recorded; (record, chain IDs)."""
    diff_ids = [sha256_digest(layer) for layer in layers]
    config = canonical_json({"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": [cmd]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    manifest = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                               "config": descriptor(MEDIA_CONFIG, config),
                               "layers": [descriptor(MEDIA_LAYER_TAR, b) for b in layers]})
    for blob in (*layers, config, manifest):
        service.content.write(blob)
    record = service.record(name, target=descriptor(MEDIA_MANIFEST, manifest),
                            manifest_digest=sha256_digest(manifest),
                            config_digest=sha256_digest(config), platform="linux/amd64",
                            size=len(config) + sum(map(len, layers)))
    return record, chain_ids(diff_ids)


def commit_layers(service, chain: list[str]) -> None:
    parent = None
    for chain_id in chain:
        service.snapshots.prepare("tmp", parent)
        service.snapshots.commit(chain_id, "tmp")
        parent = chain_id


def test_record_fields_and_lookups(service):
    record, _ = store_image(service, "busybox", [b"layer-a"])
    assert record.name == "docker.io/library/busybox:latest"
    assert record.id.startswith("sha256:") and len(record.id) == 71
    assert record.target_digest == record.manifest_digest
    assert record.target_media_type == MEDIA_MANIFEST
    assert record.platform == "linux/amd64"
    assert record.repo_digest == f"docker.io/library/busybox@{record.manifest_digest}"
    for key in ("busybox", "busybox:latest", "docker.io/library/busybox:latest",
                record.id, record.id[7:], record.id[:11], record.id[7:11]):
        assert service.get(key).name == record.name, key
    # By repository digest, as `docker images --digests` shows it, though recorded by tag.
    for key in (record.repo_digest, f"busybox@{record.manifest_digest}",
                f"busybox:latest@{record.manifest_digest}"):
        assert service.get(key).name == record.name, key
    with pytest.raises(NotFound, match="not found"):
        service.get(f"alpine@{record.manifest_digest}")  # another repository
    with pytest.raises(NotFound, match="not found"):
        service.get(record.id[7:10])  # 3 hex digits: a name, not a prefix
    with pytest.raises(NotFound, match="not found"):
        service.get("alpine")
    with pytest.raises(InvalidArgument, match="empty"):
        service.get("")
    with pytest.raises(InvalidReference, match="invalid reference"):
        service.get("Not/A Name")


def test_repo_digest_keeps_the_registry_port(service):
    record, _ = store_image(service, "127.0.0.1:5000/team/app:1.0", [b"x"])
    assert record.repo_digest == f"127.0.0.1:5000/team/app@{record.manifest_digest}"


def test_a_name_wins_over_an_id_prefix_and_an_ambiguous_prefix_is_an_error(service):
    first, _ = store_image(service, "first:1", [b"one"])
    prefix = first.id[7:11]
    named, _ = store_image(service, prefix, [b"two"])  # an image called e.g. "3fa9"
    assert service.get(prefix).id == named.id
    assert service.get("sha256:" + prefix).id == first.id
    # Two IDs sharing 4 hex digits: configs differing in Cmd until two prefixes meet.
    seen: dict[str, str] = {}
    for i in range(100000):
        config = canonical_json({"architecture": "amd64", "os": "linux",
                                 "config": {"Cmd": [f"c{i}"]},
                                 "rootfs": {"type": "layers",
                                            "diff_ids": [sha256_digest(b"one")]}})
        shared = sha256_digest(config)[7:11]
        if shared in seen:
            break
        seen[shared] = f"c{i}"
    one, _ = store_image(service, "one:1", [b"one"], cmd=seen[shared])
    two, _ = store_image(service, "two:1", [b"one"], cmd=f"c{i}")
    assert one.id != two.id and one.id[7:11] == two.id[7:11] == shared
    with pytest.raises(InvalidArgument, match="ambiguous"):
        service.get("sha256:" + shared)
    with pytest.raises(InvalidArgument, match="ambiguous"):
        service.remove(shared)
    assert service.get(one.id[:20]).id == one.id  # a longer prefix tells them apart


def test_tag_keeps_id_and_created_and_a_name_moves_on_retag(service):
    record, _ = store_image(service, "app:1", [b"v1"])
    tagged = service.tag("app:1", "registry.example/app:stable")
    assert (tagged.id, tagged.manifest_digest, tagged.created) == \
        (record.id, record.manifest_digest, record.created)
    assert [r.name for r in service.list()] == ["docker.io/library/app:1",
                                                "registry.example/app:stable"]
    newer, _ = store_image(service, "app:2", [b"v2"])
    service.tag(newer.id, "registry.example/app:stable")
    assert service.get("registry.example/app:stable").id == newer.id
    with pytest.raises(NotFound, match="not found"):
        service.tag("missing:1", "x:1")
    with pytest.raises(ImageError):
        service.tag("app:1", "UPPER:case")


def test_record_refuses_bad_digests(service):
    with pytest.raises(ContentInvalid, match="not a sha256 digest"):
        service.record("x:1", target={"digest": "sha256:zz"}, manifest_digest="sha256:zz",
                       config_digest="sha256:zz", platform="linux/amd64", size=0)
    assert service.list() == []


def test_remove_a_name_then_by_id_and_blobs_go_with_the_last_name(service):
    record, _ = store_image(service, "app:1", [b"layer-one", b"layer-two"])
    other, _ = store_image(service, "other:1", [b"layer-one"])
    service.tag("app:1", "app:alias")
    blobs = set(service.content.digests())
    assert service.remove("app:alias") == ["docker.io/library/app:alias"]
    assert set(service.content.digests()) == blobs  # still named app:1
    service.tag("app:1", "app:alias")
    removed = service.remove(record.id[7:15])
    assert sorted(removed) == ["docker.io/library/app:1", "docker.io/library/app:alias"]
    assert [r.name for r in service.list()] == [other.name]
    left = set(service.content.digests())
    assert sha256_digest(b"layer-two") not in left and record.id not in left
    assert sha256_digest(b"layer-one") in left  # other:1 has it too
    with pytest.raises(NotFound, match="not found"):
        service.remove("app:1")


def test_an_image_a_container_stands_on_is_kept_unless_forced(service):
    record, chain = store_image(service, "app:1", [b"base", b"top"])
    commit_layers(service, chain)
    service.snapshots.prepare("container-1", chain[-1])
    assert service.in_use(record)
    with pytest.raises(InUse, match="in use by a container"):
        service.remove("app:1")
    service.tag("app:1", "app:2")
    service.remove("app:2")  # another name remains: only untagged, no check needed
    assert service.get("app:1").id == record.id
    assert service.remove(record.id, force=True) == ["docker.io/library/app:1"]
    assert service.list() == []
    assert service.content.digests() == []
    # The container keeps its layers: parents of an active snapshot are roots.
    assert all(service.snapshots.exists(key) for key in (*chain, "container-1"))
    service.snapshots.remove("container-1")
    report = service.gc()
    assert (report.snapshots, report.blobs) == (2, 0)
    assert not any(service.snapshots.exists(key) for key in chain)


def test_prune_all_removes_only_images_no_container_uses(service):
    used, used_chain = store_image(service, "used:1", [b"used-layer"])
    unused, unused_chain = store_image(service, "unused:1", [b"unused-layer"])
    service.tag("unused:1", "unused:2")
    commit_layers(service, used_chain)
    commit_layers(service, unused_chain)
    service.snapshots.prepare("container", used_chain[-1])
    report = service.prune()
    assert report.images == [] and report.blobs == 0 and report.snapshots == 0
    assert len(service.list()) == 3
    report = service.prune(all=True)
    assert sorted(report.images) == ["docker.io/library/unused:1", "docker.io/library/unused:2"]
    assert [r.name for r in service.list()] == [used.name]
    assert report.blobs == 3 and report.snapshots == 1 and report.bytes > 0
    assert unused.id not in service.content.digests()
    assert service.snapshots.exists(used_chain[-1])
    assert not service.snapshots.exists(unused_chain[-1])


def test_a_container_corrald_is_still_creating_keeps_its_image(service):
    """corrald writes a container's row before it makes its snapshot: the row alone is use."""
    from corral.store.sandboxes import SandboxStore

    record, _ = store_image(service, "app:1", [b"app-layer"])
    other, _ = store_image(service, "other:1", [b"other-layer"])
    store = SandboxStore(service.db)
    store.add_pod(id="pod", name="p", namespace="default", uid="u", attempt=0,
                  state="ready", created=0, handler="native", config=b"")
    store.add_container(id="c1", pod_id="pod", name="c", attempt=0, state="creating",
                        image="app:1", image_id=record.id, created=0, config=b"")
    assert service.in_use(record) and not service.in_use(other)
    with pytest.raises(InUse, match="in use by a container"):
        service.remove("app:1")
    report = service.prune(all=True)
    assert report.removed_images == {other.id: [other.name]}
    assert [r.name for r in service.list()] == [record.name]
    assert record.id in service.content.digests()
    store.remove_container("c1")
    report = service.prune(all=True)
    assert report.removed_images == {record.id: [record.name]} and report.blobs == 3
    assert service.content.digests() == []


def test_rows_from_before_migration_4_still_read(tmp_path):
    root = tmp_path / "old"
    os.makedirs(root)
    conn = sqlite3.connect(root / "metadata.db")
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    manifest = "sha256:" + "a" * 64
    config = "sha256:" + "b" * 64
    conn.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?)",
                 ("docker.io/library/old:1", manifest, config, 123, 1.5))
    conn.commit()
    conn.close()
    service = ImageService(str(root))
    try:
        (record,) = service.list()
        assert (record.name, record.id, record.size, record.created) == \
            ("docker.io/library/old:1", config, 123, 1.5)
        assert record.target_digest == manifest and record.platform == ""
        assert service.get("old:1").repo_digest == f"docker.io/library/old@{manifest}"
        assert service.get("bbbb").name == record.name
    finally:
        service.close()
