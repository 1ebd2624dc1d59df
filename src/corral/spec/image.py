"""OCI image format data: media types, digests and descriptors (the image-spec's JSON)."""

from __future__ import annotations

import hashlib
import re

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class DigestError(ValueError):
    pass


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """The digest, if it is a well-formed sha256 one (the only algorithm stored here)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise DigestError(f"not a sha256 digest: {digest!r}")
    return digest


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The image-spec's ChainIDs: each layer named by itself and everything below it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        check_digest(diff_id)
        chain.append(diff_id if not chain else sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


def descriptor(media_type: str, data_or_digest: bytes | str, size: int | None = None,
               **extra) -> dict:
    """An OCI descriptor for `data` (or for a digest and size already known)."""
    if isinstance(data_or_digest, bytes):
        digest, size = sha256_digest(data_or_digest), len(data_or_digest)
    else:
        digest = check_digest(data_or_digest)
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def canonical_json(value) -> bytes:
    """Compact, sorted JSON: the bytes a digest is taken of, stable across builds."""
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
