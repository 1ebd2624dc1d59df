"""The content store: blobs addressed by digest, `<root>/blobs/sha256/<hex>` (containerd's layout).

A blob reaches its final name only whole and verified: it is written to
`<root>/ingest/`, hashed and counted on the way, fsynced, checked against
the expected digest and size, and renamed into place.  A crash leaves at
most a stray file in ingest/, never a wrong blob under a digest's name; a
mismatch leaves nothing at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager

from corral.images.errors import DigestMismatch
from corral.spec.image import check_digest

_CHUNK = 1 << 20


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
        if self.exists(digest):
            return digest
        with self.writer(digest, size) as writer:
            for chunk in chunks:
                writer.write(chunk)
                if progress is not None:
                    progress(writer.offset)
            writer.commit()
        return digest

    def writer(self, digest: str, size: int | None) -> BlobWriter:
        return BlobWriter(self, check_digest(digest), size)

    @contextmanager
    def locked(self, digest: str):
        """Hold the blob's ingest lock: one writer per digest, across threads and processes.

        The lock only saves duplicate downloads (writers are idempotent: each
        writes its own temp file and renames verified bytes), so unlinking the
        lock file afterwards is safe even if another waiter holds the old one.
        """
        path = os.path.join(self.ingest_dir, check_digest(digest)[7:] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.close(fd)


class BlobWriter:
    """One blob being written: hashed and counted as it grows, renamed into place on commit.

    `reset()` starts over (a server that ignored a Range request); `offset`
    is where a resumed download continues.  Leaving the `with` block without
    `commit()` removes the temp file.
    """

    def __init__(self, store: ContentStore, digest: str, size: int | None):
        self.store = store
        self.digest = digest
        self.size = size
        fd, self.tmp = tempfile.mkstemp(dir=store.ingest_dir, prefix=digest[7:19] + ".")
        self.file = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.committed = False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.file.close()  # flushes: on a full disk this fails too
        finally:
            if not self.committed:
                try:
                    os.unlink(self.tmp)
                except FileNotFoundError:
                    pass

    def write(self, chunk: bytes) -> None:
        self.offset += len(chunk)
        if self.size is not None and self.offset > self.size:
            raise DigestMismatch(f"blob {self.digest}: more than the declared {self.size} bytes")
        self.hasher.update(chunk)
        self.file.write(chunk)

    def reset(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.hasher = hashlib.sha256()
        self.offset = 0

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.size is not None and self.offset != self.size:
            raise DigestMismatch(f"blob {self.digest}: {self.offset} bytes, {self.size} "
                                 "declared (truncated)")
        actual = "sha256:" + self.hasher.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(f"blob {self.digest}: content has digest {actual}")
        os.chmod(self.tmp, 0o444)
        os.rename(self.tmp, self.store.path(self.digest))
        self.committed = True


def file_chunks(path: str):
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
