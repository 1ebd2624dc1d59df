"""Import and export both ways: OCI layout dir, oci-archive, docker-archive; podman as a peer."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from corral.images.errors import ImageError
from corral.images.service import ImageService
from corral.spec.image import sha256_digest
from tests.integration.registry_server import (
    actual_tree,
    expected_tree,
    layered_image,
    snapshot_tree,
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("layout") / "image")
    layered_image(path, marker=b"amd64")
    return path


def service_at(path) -> ImageService:
    return ImageService(str(path))


def test_layout_dir_import_and_every_export_round_trips(tmp_path, layout):
    source = service_at(tmp_path / "a")
    (record,) = source.import_archive(layout, "example.com/round/trip:1")
    expected = snapshot_tree(source, record.name)
    assert expected["platform"] == expected_tree(b"amd64")["platform"]
    for fmt, dest in (("oci-archive", "img.tar"), ("oci-dir", "img-dir"),
                      ("docker-archive", "docker.tar")):
        path = str(tmp_path / dest)
        source.export([record.name], path, fmt)
        target = service_at(tmp_path / f"b-{fmt}")
        try:
            (imported,) = target.import_archive(path)
            assert imported.name == record.name
            assert imported.id == record.id  # same config, same image ID
            assert snapshot_tree(target, imported.name) == expected
        finally:
            target.close()
    source.close()


def test_exports_are_reproducible(tmp_path, layout):
    service = service_at(tmp_path / "root")
    (record,) = service.import_archive(layout, "example.com/repro:1")
    digests = set()
    for i in range(2):
        path = str(tmp_path / f"out{i}.tar")
        service.export([record.name], path, "docker-archive")
        digests.add(subprocess.run(["sha256sum", path], capture_output=True, text=True,
                                   check=True).stdout.split()[0])
    assert len(digests) == 1
    service.close()


@pytest.fixture
def podman():
    root = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # podman: runroot ≤ 50 bytes
    base = ["podman", "--root", str(root / "root"), "--runroot", str(root / "run"),
            "--storage-driver", "vfs"]
    yield lambda *args: subprocess.run([*base, *args], capture_output=True, text=True,
                                       timeout=120)
    subprocess.run([*base, "system", "reset", "-f"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_podman_loads_our_exports_and_we_load_its_saves(tmp_path, layout, podman):
    service = service_at(tmp_path / "root")
    (record,) = service.import_archive(layout, "example.com/peer/app:1")
    expected = snapshot_tree(service, record.name)
    path = str(tmp_path / "docker.tar")
    service.export([record.name], path, "docker-archive")
    loaded = podman("load", "-i", path)
    assert loaded.returncode == 0, loaded.stderr
    saved = str(tmp_path / "saved.tar")
    done = podman("save", "--format", "docker-archive", "-o", saved, "example.com/peer/app:1")
    assert done.returncode == 0, done.stderr
    other = service_at(tmp_path / "other")
    try:
        (imported,) = other.import_archive(saved)
        assert imported.name == "example.com/peer/app:1"
        assert snapshot_tree(other, imported.name) == expected
    finally:
        other.close()
    # An oci-archive loads too (kept apart: podman cannot save its zstd layer as docker's).
    service.tag(record.name, "example.com/peer/oci:1")
    path = str(tmp_path / "oci.tar")
    service.export(["example.com/peer/oci:1"], path, "oci-archive")
    loaded = podman("load", "-i", path)
    assert loaded.returncode == 0, loaded.stderr
    assert "example.com/peer/oci" in podman("images").stdout
    for name in ("example.com/peer/app:1", "example.com/peer/oci:1"):
        inspected = podman("image", "inspect", "--format", "{{.Id}}", name)
        assert inspected.stdout.strip() == record.id[7:], inspected.stderr  # same image ID
    # podman's own oci-archive (ref.name is the full name there) comes in under that name.
    saved = str(tmp_path / "saved-oci.tar")
    done = podman("save", "--format", "oci-archive", "-o", saved, "example.com/peer/oci:1")
    assert done.returncode == 0, done.stderr
    other = service_at(tmp_path / "other-oci")
    try:
        (imported,) = other.import_archive(saved)
        assert (imported.name, imported.id) == ("example.com/peer/oci:1", record.id)
        assert snapshot_tree(other, imported.name) == expected
    finally:
        other.close()
    service.close()


def test_podman_loads_a_docker_archive_of_several_images(tmp_path, busybox_rootfs, podman):
    service = service_at(tmp_path / "root")
    busybox = service.build(busybox_rootfs, "example.com/bb:1", cmd=["sh"])
    service.tag(busybox.name, "example.com/bb:2")
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "hello").write_text("hi\n")
    small = service.build(str(tmp_path / "small"), "example.com/small:1")
    path = str(tmp_path / "all.tar")
    service.export(["example.com/bb:1", "example.com/bb:2", small.name], path, "docker-archive")
    loaded = podman("load", "-i", path)
    assert loaded.returncode == 0, loaded.stderr
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert sorted(listed.stdout.split("\n")[:-1]) == [
        f"example.com/bb:1 {busybox.id[7:19]}", f"example.com/bb:2 {busybox.id[7:19]}",
        f"example.com/small:1 {small.id[7:19]}"]
    mounted = podman("image", "mount", "example.com/bb:1")  # vfs: a directory, no mount
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert actual_tree(mounted.stdout.strip()) == actual_tree(busybox_rootfs)
    finally:
        podman("image", "unmount", "example.com/bb:1")
    service.close()


def test_an_oci_layout_whose_ref_name_is_only_a_tag_needs_a_name(tmp_path, layout):
    service = service_at(tmp_path / "root")
    with pytest.raises(ImageError, match="no image name .ref.name is 'latest'.; give one"):
        service.import_archive(layout)
    assert_nothing_left(service)
    (record,) = service.import_archive(layout, "example.com/named:1")
    assert record.name == "example.com/named:1"
    service.close()


def docker_tar(path, manifest, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("manifest, files, message", [
    ([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}],
     {"c.json": b'{"rootfs": {"diff_ids": ["sha256:' + b"0" * 64 + b'"]}}', "l.tar": b"x" * 1024},
     "diff ID"),
    ([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["missing.tar"]}],
     {"c.json": b'{"rootfs": {"diff_ids": ["sha256:' + b"0" * 64 + b'"]}}'}, "missing"),
    ([{"Config": "../etc/passwd", "RepoTags": ["x:1"], "Layers": []}], {},
     "not a path inside"),
    ("not a list", {}, "lists no images"),
])
def test_bad_docker_archives(tmp_path, manifest, files, message):
    service = service_at(tmp_path / "root")
    with pytest.raises(ImageError, match=message):
        service.import_archive(docker_tar(tmp_path / "bad.tar", manifest, files))
    assert service.list() == []
    assert service.content.digests() == []
    service.close()


def tar_of(path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return str(path)


def docker_config(layers: list[bytes]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [sha256_digest(layer) for layer in layers]}}).encode()


def small_layer(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def assert_nothing_left(service):
    assert service.list() == []
    assert service.content.digests() == []
    assert os.listdir(service.content.ingest_dir) == []


def test_build_then_every_format_round_trips_to_the_same_rootfs(tmp_path, busybox_rootfs):
    source = service_at(tmp_path / "a")
    record = source.build(busybox_rootfs, "corral/busybox:test", cmd=["sh", "-c", "true"])
    assert record.name == "docker.io/corral/busybox:test"
    assert source.build(busybox_rootfs, "corral/busybox:test",
                        cmd=["sh", "-c", "true"]).id == record.id  # reproducible
    expected = actual_tree(busybox_rootfs)
    assert snapshot_tree(source, record.name) == expected
    for fmt in ("oci-archive", "oci-dir", "docker-archive"):
        path = str(tmp_path / f"bb-{fmt}")
        source.export(["corral/busybox:test"], path, fmt)
        target = service_at(tmp_path / f"b-{fmt}")
        try:
            (imported,) = target.import_archive(path)
            assert (imported.name, imported.id) == (record.name, record.id), fmt
            assert snapshot_tree(target, imported.name) == expected, fmt
        finally:
            target.close()
    with pytest.raises(ImageError, match="not a directory"):
        source.build(str(tmp_path / "nowhere"), "x:1")
    with pytest.raises(ImageError, match="invalid reference"):
        source.build(busybox_rootfs, "Bad Name")
    source.close()


def test_docker_archive_of_several_images_and_names(tmp_path, layout):
    service = service_at(tmp_path / "root")
    (record,) = service.import_archive(layout, "example.com/app:1")
    service.tag(record.name, "example.com/app:latest")
    service.tag(record.name, f"example.com/app@{record.manifest_digest}")  # no tag to give
    (tmp_path / "empty").mkdir()
    other = service.build(str(tmp_path / "empty"), "example.com/empty:1")
    path = str(tmp_path / "two.tar")
    service.export(["example.com/app:1", "example.com/app:latest",
                    f"example.com/app@{record.manifest_digest}", other.name], path,
                   "docker-archive")
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
    assert [entry["RepoTags"] for entry in manifest] == [
        ["example.com/app:1", "example.com/app:latest"], ["example.com/empty:1"]]
    assert sorted(repositories["example.com/app"]) == ["1", "latest"]
    fresh = service_at(tmp_path / "fresh")
    try:
        names = {(r.name, r.id) for r in fresh.import_archive(path)}
        assert names == {("example.com/app:1", record.id), ("example.com/app:latest", record.id),
                         ("example.com/empty:1", other.id)}
        with pytest.raises(ImageError, match="one name cannot name them all"):
            fresh.import_archive(path, "example.com/one:1")
    finally:
        fresh.close()
    compressed = tmp_path / "two.tar.gz"  # `docker save | gzip`, which docker load takes
    compressed.write_bytes(gzip.compress(Path(path).read_bytes()))
    fresh = service_at(tmp_path / "fresh-gz")
    try:
        assert {(r.name, r.id) for r in fresh.import_archive(str(compressed))} == names
    finally:
        fresh.close()
    service.close()


def test_docker_archive_with_compressed_layers_under_blobs(tmp_path):
    """Newer docker save names layers blobs/sha256/<digest>, and they may be gzip'd."""
    layers = [small_layer("a", b"first"), small_layer("b", b"second")]
    blobs = [gzip.compress(layers[0], mtime=0), layers[1]]
    config = docker_config(layers)
    files = {f"blobs/sha256/{sha256_digest(b)[7:]}": b for b in (*blobs, config)}
    manifest = [{"Config": f"blobs/sha256/{sha256_digest(config)[7:]}",
                 "RepoTags": ["example.com/new:1"],
                 "Layers": [f"blobs/sha256/{sha256_digest(b)[7:]}" for b in blobs]}]
    service = service_at(tmp_path / "root")
    (record,) = service.import_archive(docker_tar(tmp_path / "new.tar", manifest, files))
    assert record.id == sha256_digest(config)
    stored = json.loads(service.content.read(record.manifest_digest))
    assert stored["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert [layer["mediaType"] for layer in stored["layers"]] == [
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar"]
    assert [layer["digest"] for layer in stored["layers"]] == [sha256_digest(b) for b in blobs]
    tree = snapshot_tree(service, record.name)
    assert {path: value[4] for path, value in tree.items()} == {
        "a": hashlib.sha256(b"first").hexdigest(), "b": hashlib.sha256(b"second").hexdigest()}
    service.close()


def test_bad_archives_leave_nothing(tmp_path, layout):
    good = small_layer("a", b"ok")
    config = docker_config([good, small_layer("b", b"gone")])
    cases = {
        # a verified first layer is stored, then the second is missing: both must go
        "missing-second-layer": (docker_tar(tmp_path / "m.tar", [
            {"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l1.tar", "l2.tar"]}],
            {"c.json": config, "l1.tar": good}), "l2.tar is missing"),
        "absolute-layer": (docker_tar(tmp_path / "abs.tar", [
            {"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["/etc/passwd", "l2"]}],
            {"c.json": config}), "not a path inside"),
        "symlinked-layer": (tar_of(tmp_path / "sym.tar", {
            "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["x:1"],
                                          "Layers": ["l1.tar", "l2.tar"]}]).encode(),
            "c.json": config, "l1.tar": good}, {"l2.tar": "/etc/passwd"}),
            "not a regular file"),
        "oci-traversal": (tar_of(tmp_path / "trav.tar", {
            "index.json": b'{"schemaVersion": 2, "manifests": []}',
            "blobs/sha256/../../../../tmp/evil": b"x"}), "not a sha256 digest"),
        "oci-no-manifests": (tar_of(tmp_path / "empty.tar", {
            "index.json": b'{"schemaVersion": 2, "manifests": []}',
            f"blobs/sha256/{sha256_digest(good)[7:]}": good}), "no manifests"),
        "oci-missing-blob": (tar_of(tmp_path / "half.tar", {
            name: (Path(layout) / name).read_bytes()
            for name in ["index.json", *sorted(f"blobs/sha256/{n}" for n in
                                              os.listdir(Path(layout) / "blobs/sha256"))][:-1]}),
            "missing"),
        "not-json-manifest": (tar_of(tmp_path / "nj.tar", {"manifest.json": b"[{"}),
                              "not JSON"),
    }
    for case, (path, message) in cases.items():
        service = service_at(tmp_path / f"root-{case}")
        try:
            with pytest.raises(ImageError, match=message):
                service.import_archive(path, "example.com/x:1")
            assert_nothing_left(service)
        finally:
            service.close()
    layout_dir = tmp_path / "no-index"
    shutil.copytree(layout, layout_dir)
    os.unlink(layout_dir / "index.json")
    service = service_at(tmp_path / "root-dir")
    with pytest.raises(ImageError, match="no index.json"):
        service.import_archive(str(layout_dir))
    with pytest.raises(ImageError, match="does-not-exist.tar: No such file"):
        service.import_archive(str(tmp_path / "does-not-exist.tar"))
    assert_nothing_left(service)
    service.close()


def test_oci_archive_export_is_reproducible_and_loads_in_a_fresh_root(tmp_path, layout):
    service = service_at(tmp_path / "root")
    (record,) = service.import_archive(layout, "example.com/repro:1")
    first, second = str(tmp_path / "1.tar"), str(tmp_path / "2.tar")
    service.export([record.name], first, "oci-archive")
    service.export([record.name], second, "oci-archive")
    assert Path(first).read_bytes() == Path(second).read_bytes()
    with tarfile.open(first) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
        files = [m.name for m in tar.getmembers() if m.isfile()]
    assert files == sorted(files) and "index.json" in files and "oci-layout" in files
    with pytest.raises(ImageError, match="unknown export format"):
        service.export([record.name], str(tmp_path / "x"), "zip")
    with pytest.raises(ImageError, match="not found"):
        service.export(["example.com/nope:1"], str(tmp_path / "x"), "oci-archive")
    assert not os.path.exists(tmp_path / "x")
    service.close()


def test_export_never_replaces_what_is_not_its_own(tmp_path, layout):
    service = service_at(tmp_path / "root")
    (record,) = service.import_archive(layout, "example.com/app:1")
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes").write_text("keep me")
    for fmt in ("oci-archive", "docker-archive", "oci-dir"):
        with pytest.raises(ImageError, match="not an OCI layout; not replacing it"):
            service.export([record.name], str(precious), fmt)
    assert os.listdir(precious) == ["notes"]
    with pytest.raises(ImageError, match="No such file"):
        service.export([record.name], str(tmp_path / "missing" / "x.tar"), "oci-archive")
    layout_out = tmp_path / "out"
    service.export([record.name], str(layout_out), "oci-dir")
    (layout_out / "stale").write_text("from an earlier export")
    service.export([record.name], str(layout_out), "oci-dir")  # an OCI layout: replaced
    assert sorted(os.listdir(layout_out)) == ["blobs", "index.json", "oci-layout"]
    with pytest.raises(ImageError, match="exists and is not a directory"):
        service.export([record.name], str(precious / "notes"), "oci-dir")
    assert sorted(os.listdir(tmp_path)) == ["home", "out", "root"]  # no temp files left
    service.close()
