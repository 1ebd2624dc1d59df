"""Build an OCI image from a root filesystem directory: layout directory or oci-archive.

Used for the embedded default busybox image and for test images; what it
writes is what `skopeo copy oci:…`, `ctr images import` and `podman load`
read.  Builds are reproducible: entries sorted, the gzip header without a
timestamp, JSON canonical; the same tree gives the same digests.

    python -m corral.images.layout ROOTFS DEST.tar --name busybox [--cmd sh]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import platform
import tarfile

from corral.images.reference import parse as parse_reference
from corral.spec.image import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    canonical_json,
    descriptor,
)

_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                  "s390x": "s390x", "riscv64": "riscv64"}


def layer_tar(rootfs: str) -> bytes:
    """The rootfs as an uncompressed tar: sorted entries, paths relative, owners kept."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk_sorted(rootfs):
            relative = os.path.relpath(path, rootfs)
            info = tar.gettarinfo(path, arcname=relative)
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _walk_sorted(root: str):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield os.path.join(dirpath, name)


def build_image(rootfs: str, name: str, *, cmd: list[str] | None = None,
                env: list[str] | None = None,
                working_dir: str | None = None) -> dict[str, bytes]:
    """Every blob and file of the image, by its path in an OCI layout."""
    ref = parse_reference(name)
    tar = layer_tar(rootfs)
    compressed = gzip.compress(tar, mtime=0)
    config = {
        "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                  "/sbin:/bin"],
                   "Cmd": cmd or ["sh"],
                   **({"WorkingDir": working_dir} if working_dir else {})},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    }
    config_json = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, config_json),
        "layers": [descriptor(MEDIA_LAYER_GZIP, compressed)],
    }
    manifest_json = canonical_json(manifest)
    annotations = {ANNOTATION_REF_NAME: ref.tag or "latest",
                   ANNOTATION_CONTAINERD_NAME: str(ref)}
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX,
             "manifests": [descriptor(MEDIA_MANIFEST, manifest_json,
                                      platform={"architecture": config["architecture"],
                                                "os": "linux"},
                                      annotations=annotations)]}
    files = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
             "index.json": canonical_json(index)}
    for blob in (compressed, config_json, manifest_json):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    return files


def write_layout(files: dict[str, bytes], dest: str) -> None:
    """An OCI image layout directory."""
    for path, data in files.items():
        target = os.path.join(dest, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


def write_archive(files: dict[str, bytes], dest: str) -> None:
    """An oci-archive: the layout as one tar (what `ctr images import` takes)."""
    directories = sorted({parent for path in files for parent in _parents(path)})
    tmp = dest + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(files[path]), 0o644
            tar.addfile(info, io.BytesIO(files[path]))
    os.replace(tmp, dest)


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m corral.images.layout",
                                     description="Build an OCI image from a rootfs directory.")
    parser.add_argument("rootfs")
    parser.add_argument("dest", help="a directory (OCI layout) or a .tar (oci-archive)")
    parser.add_argument("--name", required=True, help="image reference, e.g. busybox:latest")
    parser.add_argument("--cmd", nargs="+", default=None)
    opts = parser.parse_args(argv)
    files = build_image(opts.rootfs, opts.name, cmd=opts.cmd)
    (write_archive if opts.dest.endswith(".tar") else write_layout)(files, opts.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
