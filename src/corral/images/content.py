"""The content store: blobs addressed by digest, `<root>/blobs/sha256/<hex>` (containerd's layout).

A blob reaches its final name only whole and verified: it is written to
`<root>/ingest/`, hashed and counted on the way, fsynced, checked against
the expected digest and size, and renamed into place.  A crash leaves at
most a stray file in ingest/, never a wrong blob under a digest's name; a
mismatch leaves nothing at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from corral.spec.image import check_digest

_CHUNK = 1 << 20


class ContentError(ValueError):
    """A blob that does not match what was expected of it."""


class ContentStore:
    def __init__(self, root: str):
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        self.ingest_dir = os.path.join(root, "ingest")
        os.makedirs(self.blobs, exist_ok=True)
        os.makedirs(self.ingest_dir, exist_ok=True)

    def path(self, digest: str) -> str:
        return os.path.join(self.blobs, check_digest(digest).removeprefix("sha256:"))

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def read(self, digest: str) -> bytes:
        with open(self.path(digest), "rb") as f:
            return f.read()

    def digests(self) -> list[str]:
        return sorted("sha256:" + name for name in os.listdir(self.blobs))

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def write(self, data: bytes, digest: str | None = None) -> str:
        """Store bytes (verified against `digest` when given); their digest."""
        expected = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        return self.ingest(iter([data]), expected, len(data))

    def ingest(self, chunks, digest: str, size: int | None, progress=None) -> str:
        """Store a blob from an iterable of byte chunks, verified while it streams."""
        check_digest(digest)
        if self.exists(digest):
            return digest
        fd, tmp = tempfile.mkstemp(dir=self.ingest_dir, prefix=digest[7:19] + ".")
        try:
            hasher = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if size is not None and written > size:
                        raise ContentError(f"blob {digest}: more than the declared {size} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(written)
                out.flush()
                os.fsync(out.fileno())
            if size is not None and written != size:
                raise ContentError(f"blob {digest}: {written} bytes, {size} declared "
                                   "(truncated)")
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise ContentError(f"blob {digest}: content has digest {actual}")
            os.chmod(tmp, 0o444)
            os.rename(tmp, self.path(digest))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return digest


def file_chunks(path: str):
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
