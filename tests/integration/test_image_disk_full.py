"""A full disk: corrald's data root is a real 8 MiB tmpfs, filled by real pulls.

A pull that fills the disk must fail with "no space left on <data root>"
(RESOURCE_EXHAUSTED) and leave nothing behind at once: no half-applied
layer, no extraction mount, no temp blob, no layer of the failed image;
then the disk is as before and a small image pulls.  The same error when
the blobs fit but SQLite cannot write the image's record.  And an import
onto a full root (the `corral` CLI's path) says the same.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess

import grpc
import pytest
from cri_api.v1 import api_pb2

from corral.images.errors import NoSpace
from corral.images.service import ImageService
from tests.integration.corrald import Corrald, short_base
from tests.integration.registry_server import Registry, layered_image

BRIDGE, SUBNET = "corrfull0", "10.99.84.0/24"
SIZE = "8m"
MiB = 1 << 20


def mount_tmpfs(path, size: str = SIZE) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "corral-full",
                    str(path)], check=True)


def unmount(path) -> None:
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], check=True)


def mounts_below(path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(f"{path}/")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    layouts = {
        # 24 MiB of zeros compress to a few KiB: the blobs fit, the unpacked layer does not.
        "unpacks-too-big": [[{"name": "etc", "type": "dir", "mode": 0o755},
                             {"name": "etc/first", "data": b"the first layer fits\n"}],
                            [{"name": "zeros", "data": bytes(24 * MiB)}]],
        # 12 MiB that do not compress: refused before a byte is downloaded.
        "declares-too-much": [[{"name": "noise", "data": os.urandom(12 * MiB)}]],
        "small": None,
    }
    server = Registry(str(base / "registry"))
    try:
        for name, layers in layouts.items():
            layout = str(base / name)
            layered_image(layout, marker=name.encode(), layers=layers)
            server.push(layout, f"full/{name}")
        server.push(str(base / "small"), "full/small-again")  # the same blobs, another name
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemon():
    daemon = Corrald(short_base(), bridge=BRIDGE, subnet=SUBNET)
    try:
        mount_tmpfs(daemon.root)
        daemon.import_busybox()
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()  # stops corrald, then unmounts everything under its base
        unmount(daemon.root)
        assert not os.path.ismount(daemon.root)


def pull(daemon, image: str):
    return daemon.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)))


def refused(daemon, image: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        pull(daemon, image)
    return info.value


def snapshot_rows(root) -> int:
    db = sqlite3.connect(f"file:{root}/metadata.db?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
    finally:
        db.close()


def state_of(daemon) -> dict:
    """What the data root holds: everything a failed pull must leave as it was."""
    root = daemon.root
    apply = root / "snapshotter" / "apply"
    return {
        "images": sorted(tag for image in daemon.images.ListImages(
            api_pb2.ListImagesRequest()).images for tag in image.repo_tags),
        "blobs": sorted(os.listdir(root / "content" / "blobs" / "sha256")),
        "ingest": sorted(n for n in os.listdir(root / "content" / "ingest")
                         if not n.endswith(".lock")),
        "snapshot_dirs": sorted(os.listdir(root / "snapshotter" / "snapshots")),
        "snapshot_rows": snapshot_rows(root),
        "extractions": sorted(os.listdir(apply)) if apply.exists() else [],
        "mounts": mounts_below(root),
    }


def free_bytes(path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def assert_no_space(error: grpc.RpcError, root) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert f"no space left on {root}" in error.details()
    assert "database or disk is full" not in error.details()
    assert "Errno" not in error.details() and "Traceback" not in error.details()


def test_a_pull_that_fills_the_disk_leaves_nothing(daemon, registry):
    before, free = state_of(daemon), free_bytes(daemon.root)
    error = refused(daemon, f"{registry.host}/full/unpacks-too-big")
    assert_no_space(error, daemon.root)
    # At once, not at the next start: the half-applied layer, its mount, the layer below
    # it and the blobs are gone, and the space is free again.
    assert state_of(daemon) == before
    assert free_bytes(daemon.root) >= free - 256 * 1024  # but the WAL of the records written
    pull(daemon, f"{registry.host}/full/small")
    assert f"{registry.host}/full/small:latest" in state_of(daemon)["images"]


def test_layers_declaring_more_than_is_free_are_refused_first(daemon, registry):
    before = state_of(daemon)
    error = refused(daemon, f"{registry.host}/full/declares-too-much")
    assert_no_space(error, daemon.root)
    assert re.search(r"layers declare \d+ bytes .* are free", error.details())
    assert state_of(daemon) == before


def test_a_record_sqlite_cannot_write_is_no_space_too(daemon, registry):
    """The blobs and layers are there (the same image under another name): only the
    database write needs space, and SQLite gets ENOSPC."""
    pull(daemon, f"{registry.host}/full/small")
    before = state_of(daemon)
    db = sqlite3.connect(str(daemon.root / "metadata.db"))
    try:  # an empty WAL: the next transaction must allocate
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        db.close()
    filler = daemon.root / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for chunk in (MiB, 64 * 1024, 4096):
            try:
                while os.write(fd, bytes(chunk)):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert free_bytes(daemon.root) < 4096
    error = refused(daemon, f"{registry.host}/full/small-again")
    assert_no_space(error, daemon.root)
    os.unlink(filler)
    assert state_of(daemon) == before
    pull(daemon, f"{registry.host}/full/small-again")
    assert f"{registry.host}/full/small-again:latest" in state_of(daemon)["images"]


def test_an_import_onto_a_full_root_is_no_space(tmp_path):
    """What `corral image import` does: the blobs go to the content store first."""
    root = tmp_path / "root"
    mount_tmpfs(root, "2m")
    try:
        layout = str(tmp_path / "layout")
        layered_image(layout, marker=b"x", layers=[[{"name": "noise",
                                                     "data": os.urandom(3 * MiB)}]])
        service = ImageService(str(root))
        try:
            with pytest.raises(NoSpace, match=f"^no space left on {root}$"):
                service.import_archive(layout, "docker.io/library/noise:1")
            assert service.list() == [] and service.content.digests() == []
            assert os.listdir(service.content.ingest_dir) == []
        finally:
            service.close()
    finally:
        unmount(root)
