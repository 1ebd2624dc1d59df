"""Image references: Docker's and containerd's normalization, and clear errors."""

from __future__ import annotations

import pytest

from corral.images.errors import InvalidReference
from corral.images.reference import parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, normalized", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("someuser/app", "docker.io/someuser/app:latest"),
    ("quay.io/org/app:1.2", "quay.io/org/app:1.2"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000/a/b/c:v1"),
    ("[::1]:5000/app:x", "[::1]:5000/app:x"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
    ("my-app__x/sub.dir/name--z:Tag_1.0-rc", "docker.io/my-app__x/sub.dir/name--z:Tag_1.0-rc"),
])
def test_references_normalize_like_docker(text, normalized):
    ref = parse(text)
    assert str(ref) == normalized
    assert parse(normalized) == ref  # normalizing is idempotent


def test_parts_and_familiar_form():
    ref = parse("localhost:5000/team/app:v2")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "v2",
                                                            None)
    assert ref.name == "localhost:5000/team/app"
    assert parse("busybox").familiar == "busybox:latest"
    assert parse("someuser/app:1").familiar == "someuser/app:1"


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("Busybox", "must be lower case"),
    ("busybox:", "bad tag"),
    ("busybox:-bad", "bad tag"),
    ("busybox:" + "a" * 129, "bad tag"),
    ("bus box", "whitespace"),
    ("busybox@sha256:abc", "bad digest"),
    ("busybox@sha256:" + "AB" * 32, "lower-case hex"),
    ("busybox@sha256:" + "ab" * 31, "64 lower-case hex"),
    ("localhost:5000/", "no repository name"),
    ("a//b", "bad name"),
    ("-app", "bad name"),
    ("app..x", "bad name"),
    ("x" * 300, "longer than 255"),
    ("my_host.example:port/app", "bad registry"),
])
def test_invalid_references_say_why(text, why):
    with pytest.raises(InvalidReference, match=why):
        parse(text)
