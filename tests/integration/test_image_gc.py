"""Garbage collection on real unpacked images: what images and containers reach stays.

Roots are image records and active/view snapshots; an index keeps the
manifests that are stored; stray ingest files of dead writers go; the gc
lock (shared while pulling or importing) keeps collection away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from corral.images.errors import InUse
from corral.images.service import ImageService
from corral.spec.image import chain_ids
from tests.integration.registry_server import expected_tree, layered_image, snapshot_tree

pytestmark = pytest.mark.root


@pytest.fixture
def service(tmp_path):
    svc = ImageService(str(tmp_path / "root"))
    yield svc
    for key, kind in svc.db.execute("SELECT key, kind FROM snapshots ORDER BY id DESC"):
        if kind != "committed":
            svc.snapshots.remove(key)
    svc.close()


def layout(tmp_path, name: str, marker: bytes, **kwargs) -> str:
    path = str(tmp_path / name)
    layered_image(path, marker=marker, **kwargs)
    return path


def blob_json(service, digest: str) -> dict:
    return json.loads(service.content.read(digest))


def image_blobs(service, manifest_digest: str) -> set[str]:
    manifest = blob_json(service, manifest_digest)
    return {manifest_digest, manifest["config"]["digest"],
            *(layer["digest"] for layer in manifest["layers"])}


def image_chain(service, record) -> list[str]:
    return chain_ids(blob_json(service, record.id)["rootfs"]["diff_ids"])


def snapshot_dirs(service) -> list[str]:
    return os.listdir(os.path.join(service.snapshots.root, "snapshots"))


def test_removing_images_frees_what_only_they_used(service, tmp_path):
    (first,) = service.import_archive(layout(tmp_path, "a", b"first"), "example.com/a:1")
    (second,) = service.import_archive(layout(tmp_path, "b", b"second"), "example.com/b:1")
    service.unpack(first.name)
    service.unpack(second.name)
    first_chain, second_chain = image_chain(service, first), image_chain(service, second)
    shared = set(first_chain) & set(second_chain)
    assert shared and first_chain[-1] != second_chain[-1]  # only the marker layer differs
    junk = service.content.write(b"a blob nothing names")
    assert service.gc().blobs == 1 and not service.content.exists(junk)

    service.remove("example.com/a:1")
    left = set(service.content.digests())
    assert left == image_blobs(service, second.manifest_digest)
    assert not service.snapshots.exists(first_chain[-1])
    assert all(service.snapshots.exists(key) for key in second_chain)
    assert snapshot_tree(service, second.name) == expected_tree(b"second")  # still whole

    service.remove(second.id)
    assert service.content.digests() == []
    assert service.db.execute("SELECT key FROM snapshots").fetchall() == []
    assert snapshot_dirs(service) == []


def test_a_container_keeps_its_layers_and_blocks_removal(service, tmp_path):
    (record,) = service.import_archive(layout(tmp_path, "a", b"x"), "example.com/app:1")
    top = service.unpack(record.name)
    chain = image_chain(service, record)
    service.snapshots.prepare("container-1", top)
    for name_or_id in (record.name, record.id, record.id[7:13]):
        with pytest.raises(InUse, match="in use by a container"):
            service.remove(name_or_id)
    assert service.gc().snapshots == 0 and service.get(record.name).id == record.id

    service.remove(record.name, force=True)
    assert service.content.digests() == []  # the blobs go; the container's layers stay
    rows = service.db.execute("SELECT key, kind FROM snapshots").fetchall()
    assert sorted(rows) == sorted([("container-1", "active")] +
                                  [(key, "committed") for key in chain])
    service.snapshots.remove("container-1")
    report = service.gc()
    assert (report.snapshots, report.blobs) == (len(chain), 0)
    assert snapshot_dirs(service) == []


def test_a_view_is_a_root_too(service, tmp_path):
    (record,) = service.import_archive(layout(tmp_path, "a", b"x"), "example.com/app:1")
    top = service.unpack(record.name)
    chain = image_chain(service, record)
    service.snapshots.view("inspect", top)
    assert service.in_use(record)
    service.remove(record.name, force=True)
    assert all(service.snapshots.exists(key) for key in chain)
    service.snapshots.remove("inspect")
    assert service.gc().snapshots == len(chain)
    assert snapshot_dirs(service) == []


def index_parts(service, index_digest: str) -> dict[str, str]:
    """architecture → manifest digest, from a stored index."""
    return {entry["platform"]["architecture"]: entry["digest"]
            for entry in blob_json(service, index_digest)["manifests"]}


def test_an_index_keeps_the_platform_manifests_that_are_stored(service, tmp_path):
    arm = [("arm64", "v8", b"arm64")]
    (record,) = service.import_archive(layout(tmp_path, "all", b"amd64", extra_platforms=arm),
                                       "example.com/multi:1")
    assert record.target_digest != record.manifest_digest
    assert record.platform == "linux/amd64"
    manifests = index_parts(service, record.target_digest)
    everything = {record.target_digest, *image_blobs(service, manifests["amd64"]),
                  *image_blobs(service, manifests["arm64"])}
    service.content.write(b"unreferenced")
    service.gc()
    assert set(service.content.digests()) == everything  # what was fetched stays

    # An index whose other platform was never fetched: only what is stored is reached.
    other = ImageService(str(tmp_path / "other"))
    try:
        partial = layout(tmp_path, "partial", b"amd64", extra_platforms=arm)
        arm_only = image_blobs(service, manifests["arm64"]) - \
            image_blobs(service, manifests["amd64"])
        for digest in arm_only:
            os.unlink(os.path.join(partial, "blobs", "sha256", digest[7:]))
        (imported,) = other.import_archive(partial, "example.com/multi:1")
        assert imported.id == record.id
        other.gc()
        assert set(other.content.digests()) == everything - arm_only
        assert snapshot_tree(other, imported.name) == expected_tree(b"amd64")
        other.remove(imported.name)
        assert other.content.digests() == [] and snapshot_dirs(other) == []
    finally:
        other.close()


def test_stray_ingest_files_of_dead_writers_go(service):
    ingest = service.content.ingest_dir
    old, fresh, old_dir = (os.path.join(ingest, n) for n in ("old", "fresh", "olddir"))
    for path in (old, fresh):
        with open(path, "wb") as f:
            f.write(b"partial download")
    os.makedirs(os.path.join(old_dir, "blobs"))
    two_hours_ago = time.time() - 7200
    for path in (old, old_dir):
        os.utime(path, (two_hours_ago, two_hours_ago))
    service.gc()
    assert os.listdir(ingest) == ["fresh"]
    service.gc(stray_age=0)  # nothing else can be writing (corrald's start)
    assert os.listdir(ingest) == []


LOCK_HOLDER = """
import sys
from corral.images.service import ImageService
service = ImageService(sys.argv[1])
with service.gc_lock(shared=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_gc_waits_for_a_pull_in_another_process(service):
    junk = service.content.write(b"stored by a pull, not yet named")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, service.root],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert service.gc(wait=False) is None  # a pull holds it shared: skip, do not wait
        with service.gc_lock(shared=True) as held:  # pulls share it with each other
            assert held
        reports = []
        collector = threading.Thread(target=lambda: reports.append(service.gc()))
        collector.start()
        collector.join(0.5)
        assert collector.is_alive() and service.content.exists(junk)
        holder.stdin.write("done\n")
        holder.stdin.flush()
        collector.join(30)
        holder.wait(30)
        # Collected once: by the waiting gc, or by the holder on release (the skipped gc
        # asked for one), whichever took the lock first.
        assert not collector.is_alive() and reports[0].blobs in (0, 1)
        assert not service.content.exists(junk)
    finally:
        holder.kill()
        holder.wait()


def release(holder: subprocess.Popen) -> None:
    holder.stdin.write("done\n")
    holder.stdin.flush()
    assert holder.wait(30) == 0


def remove_without_waiting(service, name: str, holders: list) -> list[str]:
    """service.remove(name), which must not wait for the holders of the GC lock."""
    removed = []
    remover = threading.Thread(target=lambda: removed.append(service.remove(name)))
    remover.start()
    remover.join(30)
    if remover.is_alive():
        for holder in holders:  # let it finish before the test fails
            holder.kill()
        remover.join()
        raise AssertionError("remove waited for the GC lock")
    return removed[0]


def test_removal_during_pulls_is_collected_by_the_last_to_finish(service, tmp_path):
    (record,) = service.import_archive(layout(tmp_path, "a", b"x"), "example.com/app:1")
    service.unpack(record.name)
    blobs = set(service.content.digests())
    holders = [subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, service.root],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        assert [h.stdout.readline() for h in holders] == ["held\n", "held\n"]
        assert remove_without_waiting(service, record.name, holders) == [record.name]
        assert service.list() == [] and set(service.content.digests()) == blobs
        release(holders[0])  # tries to collect on release, but the other still holds it
        assert set(service.content.digests()) == blobs
        release(holders[1])
        assert service.content.digests() == []
        assert snapshot_dirs(service) == []
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_removal_whose_pull_died_is_collected_by_the_next_gc(service, tmp_path):
    (record,) = service.import_archive(layout(tmp_path, "a", b"x"), "example.com/app:1")
    service.unpack(record.name)
    blobs, chain = set(service.content.digests()), image_chain(service, record)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, service.root],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert remove_without_waiting(service, record.name, [holder]) == [record.name]
    finally:
        holder.kill()  # SIGKILL: it cannot collect on its way out
        holder.wait()
    assert set(service.content.digests()) == blobs
    report = service.gc()
    assert (report.blobs, report.snapshots) == (len(blobs), len(chain))
    assert service.content.digests() == [] and snapshot_dirs(service) == []
