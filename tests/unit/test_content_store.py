"""The content store: only verified blobs reach their digest's name; mismatches leave nothing."""

from __future__ import annotations

import hashlib
import os

import pytest

from corral.images.content import ContentStore
from corral.images.errors import DigestMismatch
from corral.spec.image import DigestError


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return ContentStore(str(tmp_path / "content"))


def test_blobs_are_stored_under_their_digest(store):
    data = b"layer bytes" * 1000
    seen = []
    digest = store.ingest(iter([data[:5000], data[5000:]]), digest_of(data), len(data),
                          progress=seen.append)
    assert store.exists(digest) and store.read(digest) == data
    assert store.path(digest).endswith("/blobs/sha256/" + digest[7:])
    assert seen == [5000, len(data)]
    assert store.digests() == [digest]
    assert os.listdir(store.ingest_dir) == []
    assert store.write(data) == digest  # already there: nothing written twice


@pytest.mark.parametrize("chunks, size, why", [
    ([b"hello", b" world"], 11, "content has digest"),   # wrong bytes
    ([b"hello"], 11, "truncated"),                      # short
    ([b"hello world!!"], 11, "more than the declared"),  # too long / a bomb
])
def test_mismatches_leave_nothing(store, chunks, size, why):
    expected = digest_of(b"something else entirely")
    with pytest.raises(DigestMismatch, match=why):
        store.ingest(iter(chunks), expected, size)
    assert store.digests() == [] and os.listdir(store.ingest_dir) == []


def test_an_interrupted_stream_leaves_nothing(store):
    def dropped():
        yield b"partial"
        raise ConnectionResetError("connection dropped")

    with pytest.raises(ConnectionResetError):
        store.ingest(dropped(), digest_of(b"partial and more"), 16)
    assert store.digests() == [] and os.listdir(store.ingest_dir) == []


def test_malformed_digests_are_refused(store):
    for bad in ("sha256:abc", "md5:" + "a" * 32, "sha256:" + "G" * 64, "../../etc/passwd"):
        with pytest.raises(DigestError):
            store.path(bad)
