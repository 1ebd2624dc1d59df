"""Building an OCI image from a rootfs: the layout's links, digests and layer contents."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

from corral.images.layout import build_image, write_archive, write_layout


def make_tree(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "hello", 0o755)
    os.symlink("hello", root / "bin" / "hi")
    os.link(root / "bin" / "hello", root / "bin" / "hello2")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")


def blob(files, digest):
    data = files["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_the_image_links_index_manifest_config_and_layer(tmp_path):
    make_tree(tmp_path / "rootfs")
    files = build_image(str(tmp_path / "rootfs"), "example.com/team/app:1.0", cmd=["hello"])
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "example.com/team/app:1.0"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    manifest_data = blob(files, entry["digest"])
    assert len(manifest_data) == entry["size"]
    manifest = json.loads(manifest_data)
    config = json.loads(blob(files, manifest["config"]["digest"]))
    assert config["os"] == "linux" and config["config"]["Cmd"] == ["hello"]
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar_bytes = gzip.decompress(blob(files, layer["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"bin", "bin/hello", "bin/hi", "bin/hello2", "etc",
                                "etc/passwd"}
        assert members["bin/hi"].issym() and members["bin/hi"].linkname == "hello"
        assert members["bin/hello2"].islnk() or members["bin/hello"].islnk()
        assert members["bin/hello"].mode & 0o777 == 0o755
        assert tar.extractfile("etc/passwd").read().startswith(b"root:")


def test_builds_are_reproducible_and_written_both_ways(tmp_path):
    make_tree(tmp_path / "rootfs")
    first = build_image(str(tmp_path / "rootfs"), "app")
    assert build_image(str(tmp_path / "rootfs"), "app") == first
    write_layout(first, str(tmp_path / "layout"))
    assert (tmp_path / "layout" / "index.json").read_bytes() == first["index.json"]
    write_archive(first, str(tmp_path / "app.tar"))
    with tarfile.open(tmp_path / "app.tar") as tar:
        names = tar.getnames()
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert set(names) == {"blobs", "blobs/sha256", *first}
