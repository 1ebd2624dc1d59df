"""Importing OCI archives, image records, unpacking into snapshots, and a container on top."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from corral.images.errors import ContentInvalid, DigestMismatch, InvalidArgument
from corral.images.layout import build_image, write_archive
from corral.images.service import ImageService
from corral.runtime.syscalls import MNT_DETACH, Syscalls
from corral.spec.image import canonical_json

pytestmark = pytest.mark.root


@pytest.fixture
def service(tmp_path):
    svc = ImageService(str(tmp_path / "data"))
    yield svc
    svc.close()


def archive_of(files: dict[str, bytes], path) -> str:
    write_archive(files, str(path))
    return str(path)


def test_import_record_unpack_and_run(service, busybox_rootfs, tmp_path, runtime, make_bundle):
    files = build_image(busybox_rootfs, "busybox:latest", cmd=["sh"])
    (record,) = service.import_archive(archive_of(files, tmp_path / "bb.tar"))
    assert record.name == "docker.io/library/busybox:latest"
    assert record.id.startswith("sha256:") and service.get("busybox").id == record.id
    assert [r.name for r in service.list()] == [record.name]

    top = service.unpack("busybox")
    snapshots = os.listdir(os.path.join(service.snapshots.root, "snapshots"))
    assert service.unpack("busybox") == top  # each layer is unpacked once
    assert os.listdir(os.path.join(service.snapshots.root, "snapshots")) == snapshots

    (mount,) = service.snapshots.prepare("ctr-1", top)
    bundle = make_bundle(["sh", "-c", "echo from-the-image; ls /bin/busybox"])
    rootfs = str(bundle.rootfs)
    os.system(f"rm -rf {rootfs} && mkdir {rootfs}")
    mount.mount(rootfs)
    try:
        result = runtime("run", "--bundle", str(bundle.path), runtime.new_id(), check=False)
    finally:
        Syscalls().umount(rootfs, MNT_DETACH)
    assert result.stdout.split() == ["from-the-image", "/bin/busybox"], result.stderr
    service.snapshots.remove("ctr-1")


def test_a_blob_that_is_not_what_its_name_says_is_refused(service, tmp_path):
    files = {"oci-layout": b"{}", "index.json": b"{}",
             "blobs/sha256/" + "a" * 64: b"not the content of that digest"}
    with pytest.raises(DigestMismatch, match="content has digest"):
        service.import_archive(archive_of(files, tmp_path / "bad.tar"))
    assert service.content.digests() == [] and service.list() == []


def test_a_manifest_that_is_not_json(service, tmp_path):
    import hashlib

    junk = b"{this is not json"
    digest = "sha256:" + hashlib.sha256(junk).hexdigest()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
        "size": len(junk), "annotations": {"io.containerd.image.name": "x:1"}}]}
    files = {"index.json": canonical_json(index), "blobs/sha256/" + digest[7:]: junk}
    with pytest.raises(ContentInvalid, match="not JSON"):
        service.import_archive(archive_of(files, tmp_path / "junk.tar"))
    assert service.list() == []


def test_not_an_archive(service, tmp_path):
    (tmp_path / "x.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(InvalidArgument, match="not a readable image archive"):
        service.import_archive(str(tmp_path / "x.tar"))
    missing_index = tmp_path / "noindex.tar"
    with tarfile.open(missing_index, "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(InvalidArgument, match="neither an OCI archive"):
        service.import_archive(str(missing_index))
