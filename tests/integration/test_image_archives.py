"""Import and export both ways: OCI layout dir, oci-archive, docker-archive; podman as a peer."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from corral.images.service import ImageError, ImageService
from tests.integration.registry_server import expected_tree, layered_image, snapshot_tree


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
