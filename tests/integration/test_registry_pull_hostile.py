"""Hostile registries and hostile images, beyond test_registry_pull.py's cases.

A proxy in front of Debian's docker-registry lies about sizes and digests,
demands credentials halfway through, fails for good, drops every
connection, or drops once and then ignores Range; images carry layers that
expand into bombs, escape through hard links, absolute names or whiteouts
behind symlinks, are not tar at all, or do not match the config's diff IDs.
Each must end in one clear error naming what was wrong, with nothing left
behind: no blob, no half-written ingest file, no snapshot, no image record,
no extraction mount.  The cases a client must survive (a drop followed by
a server that ignores Range) must succeed with the right content.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import tarfile
import threading
import uuid

import pytest
import zstandard

from corral.images.distribution import RetryPolicy
from corral.images.errors import (
    ContentInvalid,
    DigestMismatch,
    ImageError,
    LayerInvalid,
    RegistryUnavailable,
    Unauthenticated,
)
from corral.images.pull import Puller
from corral.images.registries import RegistryConfig
from corral.images.service import ImageService
from tests.integration.layer_trees import LayoutWriter, layer_tar, mounted_image
from tests.integration.registry_server import Registry, TamperingProxy

FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.05)
SAFE = [{"name": "etc", "type": "dir", "mode": 0o755},
        {"name": "etc/motd", "data": b"hello\n" * 50_000}]  # ~300 kB: several reads


class HostileProxy(TamperingProxy):
    """TamperingProxy with more modes: "401" (everything), "401-blobs", "500-always",
    "short-size", "lying-digest-header", "swapped", "bloated" (manifests); and
    `ignore_range` (answer a Range request with the whole blob) and `always_drop`."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.ignore_range = False
        self.always_drop = False
        self.range_requests = 0

    def handle(self, handler, method: str) -> None:
        path = handler.path
        is_blob = "/blobs/sha256:" in path
        if self.mode == "401" or (self.mode == "401-blobs" and is_blob):
            return self.reply(handler, 401, b'{"errors":[{"code":"UNAUTHORIZED",'
                              b'"message":"authentication required"}]}',
                              {"WWW-Authenticate": 'Basic realm="hostile"',
                               "Content-Type": "application/json"})
        if self.mode == "500-always" and (is_blob or "/manifests/" in path):
            return self.reply(handler, 500, b'{"errors":[{"code":"UNKNOWN",'
                              b'"message":"storage on fire"}]}', {})
        if is_blob and path.endswith(self.target or "-") and "Range" in handler.headers:
            self.range_requests += 1
            if self.ignore_range:
                del handler.headers["Range"]
        if self.always_drop:
            self.mode = "drop-once"
        return super().handle(handler, method)

    def tamper_manifest(self, body: bytes, headers: dict) -> tuple[bytes, dict]:
        if self.mode == "lying-digest-header":
            headers["Docker-Content-Digest"] = "sha256:" + "1" * 64
            return body, headers
        if self.mode not in ("short-size", "swapped", "bloated"):
            return super().tamper_manifest(body, headers)
        headers.pop("Docker-Content-Digest", None)
        document = json.loads(body)
        if self.mode == "short-size":
            document["layers"][0]["size"] -= 10
        elif self.mode == "swapped":
            document["annotations"] = {"swapped": "by the proxy"}
        else:
            document["annotations"] = {"padding": "x" * (5 << 20)}
        return json.dumps(document).encode(), headers


def push(registry: Registry, tmp_path, repository: str, layers, **image) -> str:
    """An image of (entries or tar bytes, compression) layers, pushed; its reference."""
    layout = LayoutWriter(str(tmp_path / f"layout-{repository.replace('/', '-')}"))
    registry.push(layout.finish(layout.image(layers, **image)), repository)
    return f"{registry.host}/{repository}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = Registry(str(tmp_path_factory.mktemp("registry")))
    layout = LayoutWriter(str(tmp_path_factory.mktemp("layouts") / "safe"))
    try:
        server.push(layout.finish(layout.image([(SAFE, "gzip"), (
            [{"name": "etc/issue", "data": b"second layer\n"}], "zstd")])), "test/safe")
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(registry):
    server = HostileProxy(registry.host)
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path):
    svc = ImageService(str(tmp_path / "root"))
    yield svc
    for record in svc.list():
        svc.remove(record.name, force=True)
    svc.close()


def pull(service, ref: str, **options):
    puller = Puller(service, RegistryConfig(), retry=FAST_RETRY)
    try:
        return puller.pull(ref, **options)
    finally:
        puller.close()


def safe_image(registry, tmp_path) -> tuple[str, list[dict]]:
    """The safe image's config digest and layer descriptors, from a pull of its own."""
    scratch = ImageService(str(tmp_path / f"scratch-{uuid.uuid4().hex}"))
    try:
        record = pull(scratch, f"{registry.host}/test/safe")
        return record.id, json.loads(scratch.content.read(record.manifest_digest))["layers"]
    finally:
        scratch.close()


def assert_nothing_left(service) -> None:
    assert service.list() == []
    assert service.content.digests() == []
    assert [n for n in os.listdir(service.content.ingest_dir) if not n.endswith(".lock")] == []
    assert service.db.conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 0
    snapshots = os.path.join(service.snapshots.root, "snapshots")
    assert not os.path.isdir(snapshots) or os.listdir(snapshots) == []
    apply_dir = os.path.join(service.snapshots.root, "apply")
    assert not os.path.isdir(apply_dir) or os.listdir(apply_dir) == []
    with open("/proc/self/mountinfo") as f:
        assert service.root not in f.read()


# --- the registry lies --------------------------------------------------------------------------
def test_layer_larger_than_its_declared_size(service, proxy):
    proxy.target, proxy.mode = "manifest", "short-size"
    with pytest.raises(DigestMismatch, match=r"more than the declared \d+ bytes"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


def test_corrupted_config_blob(service, registry, proxy, tmp_path):
    config_digest, _ = safe_image(registry, tmp_path)
    proxy.target, proxy.mode = config_digest, "corrupt"
    with pytest.raises(DigestMismatch, match=rf"config {config_digest} has digest sha256:"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


def test_digest_header_that_disagrees_with_the_manifest(service, proxy):
    proxy.target, proxy.mode = "manifest", "lying-digest-header"
    with pytest.raises(DigestMismatch, match=r"the registry says sha256:1{64} but the content"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


def test_manifest_swapped_under_a_digest_reference(service, registry, proxy):
    digest = pull(service, f"{registry.host}/test/safe").target_digest
    service.remove(f"{registry.host}/test/safe", force=True)
    service.gc()
    proxy.target, proxy.mode = "manifest", "swapped"
    with pytest.raises(DigestMismatch, match=rf"manifest {digest} has digest sha256:"):
        pull(service, f"{proxy.host}/test/safe@{digest}")
    assert_nothing_left(service)


def test_oversized_manifest(service, proxy):
    proxy.target, proxy.mode = "manifest", "bloated"
    with pytest.raises(ContentInvalid, match=r"more than (the )?4194304"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


# --- the registry refuses or breaks -------------------------------------------------------------
def test_basic_challenge_without_credentials(service, proxy):
    proxy.mode = "401"
    with pytest.raises(Unauthenticated, match=r"asks for credentials \(HTTP 401\) and none"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


def test_credentials_demanded_halfway_leave_nothing(service, proxy):
    """The manifest and config came anonymously; the layers want a login: all of it goes."""
    proxy.mode = "401-blobs"
    with pytest.raises(Unauthenticated, match=r"blob sha256:[0-9a-f]{64}: unauthorized \(HTTP "
                                            r"401\); no credentials were given"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


def test_server_errors_that_never_stop(service, proxy):
    proxy.mode = "500-always"
    with pytest.raises(RegistryUnavailable, match=r"HTTP 500 \(UNKNOWN: storage on fire\)"):
        pull(service, f"{proxy.host}/test/safe")
    assert_nothing_left(service)


def test_every_connection_dropped_mid_blob(service, registry, proxy, tmp_path):
    proxy.target = safe_image(registry, tmp_path)[1][0]["digest"]
    proxy.always_drop = proxy.ignore_range = True  # the base proxy drops only whole-blob GETs
    with pytest.raises(RegistryUnavailable,
                       match=rf"blob {proxy.target}: .*gave up after 3 attempts"):
        pull(service, f"{proxy.host}/test/safe")
    assert proxy.blob_gets[proxy.target] == 3
    assert_nothing_left(service)


def test_dropped_then_range_ignored_starts_over(service, registry, proxy, tmp_path):
    """A server that answers a Range request with the whole blob (200): the client must
    throw away what it had and take the whole body, not append it."""
    _, layers = safe_image(registry, tmp_path)
    proxy.target, proxy.mode, proxy.ignore_range = layers[0]["digest"], "drop-once", True
    record = pull(service, f"{proxy.host}/test/safe")
    assert proxy.mode == "dropped" and proxy.range_requests == 1
    assert proxy.blob_gets[proxy.target] == 2
    with open(service.content.path(proxy.target), "rb") as f:
        assert len(f.read()) == layers[0]["size"]
    service.unpack(record.name)  # the diff IDs check out


# --- the image is hostile -----------------------------------------------------------------------
def zero_bomb(size: int) -> bytes:
    """A tar holding `size` zero bytes, zstd-compressed to a few kB (a decompression bomb)."""
    compressed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(compressed, closefd=False) as out, \
            tarfile.open(fileobj=out, mode="w|") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = size

        class Zeros:
            left = size

            def read(self, n: int) -> bytes:
                n = min(n, self.left)
                self.left -= n
                return bytes(n)

        tar.addfile(info, Zeros())
    return compressed.getvalue()


def test_decompression_bomb_is_bounded(service, registry, tmp_path):
    """80 MiB of zeros in a few kB of zstd: over the bound (64 x size + 64 MiB), refused
    before a byte of it is written."""
    bomb = zero_bomb(80 << 20)
    assert len(bomb) < 64 << 10
    diff_id = "sha256:" + "0" * 64  # never reached: the entry's size alone is refused
    ref = push(registry, tmp_path, "test/bomb", [(bomb, "zstd-ready")], diff_ids=[diff_id])
    for unpack_while_pulling in (False, True):
        if unpack_while_pulling:
            with pytest.raises(LayerInvalid, match=r"unpacks to more than \d+ bytes"):
                pull(service, ref, unpack=True)
        else:
            record = pull(service, ref)
            with pytest.raises(LayerInvalid, match=r"unpacks to more than \d+ bytes"):
                service.unpack_new(record.name)
        assert_nothing_left(service)


UP = "../" * 20  # from wherever a layer is unpacked, far enough to reach the host's /


def escapes(victim: str) -> dict[str, tuple[list[dict], str]]:
    """Layers that would reach `victim` (a host directory holding a file `f`) if unchecked:
    a broken client damages only the test's own files."""
    return {
        "absolute": ([{"name": f"{victim}/planted", "data": b"x"}], r"absolute path"),
        "dot dot": ([{"name": f"{UP}{victim}/planted", "data": b"x"}], r"'\.\.' in path"),
        "hard link up": ([{"name": "h", "type": "link", "target": f"{UP}{victim}/f"}],
                         r"hard link .* leads out"),
        "hard link absolute": ([{"name": "h", "type": "link", "target": f"{victim}/f"}],
                               r"hard link .* leads out"),
        "hard link through a symlink": (
            [{"name": "up", "type": "symlink", "target": UP.rstrip("/")},
             {"name": "h", "type": "link", "target": f"up{victim}/f"}],
            r"symlink in its path leads out"),
        "file through a symlink": (
            [{"name": "up", "type": "symlink", "target": f"{UP}{victim}"},
             {"name": "up/planted", "data": b"x"}],
            r"symlink in its path leads out"),
        "whiteout through a symlink": (
            [{"name": "up", "type": "symlink", "target": f"{UP}{victim}"},
             {"name": "up/.wh.f", "data": b""}],
            r"symlink in its path leads out"),
        "opaque marker through a symlink": (
            [{"name": "up", "type": "symlink", "target": f"{UP}{victim}"},
             {"name": "up/.wh..wh..opq", "data": b""}],
            r"symlink in its path leads out"),
    }


@pytest.mark.parametrize("case", escapes("/victim"))
def test_escaping_layers_are_refused(service, registry, tmp_path, case):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_bytes(b"precious\n")
    entries, message = escapes(str(victim))[case]
    repository = "test/escape-" + case.replace(" ", "-")
    ref = push(registry, tmp_path, repository, [(SAFE, "gzip"), (entries, "tar")])
    record = pull(service, ref)  # every blob is what its digest says
    with pytest.raises(ImageError, match=message):
        service.unpack_new(record.name)
    assert_nothing_left(service)
    assert os.listdir(victim) == ["f"] and (victim / "f").read_bytes() == b"precious\n"
    assert os.stat(victim / "f").st_nlink == 1


def test_absolute_symlink_resolves_inside_the_rootfs(service, registry, tmp_path):
    """`link -> /tmp` then `link/NAME`: the file lands in the image's /tmp, not the host's."""
    name = f"corral-test-{uuid.uuid4().hex}"
    ref = push(registry, tmp_path, "test/abs-link", [([
        {"name": "tmp", "type": "dir", "mode": 0o1777},
        {"name": "link", "type": "symlink", "target": "/tmp"},
        {"name": f"link/{name}", "data": b"inside\n"}], "gzip")])
    record = pull(service, ref)
    with mounted_image(service, record.name) as root:
        with open(os.path.join(root, "tmp", name), "rb") as f:
            assert f.read() == b"inside\n"
    assert not os.path.exists(os.path.join("/tmp", name))


@pytest.mark.parametrize("case, layer, diff_ids, message", [
    ("not a tar", os.urandom(3000), None, r"not a valid tar layer"),
    ("diff ID mismatch", layer_tar(SAFE), ["sha256:" + "ab" * 32], r"diff ID sha256:"),
])
def test_layers_that_do_not_unpack(service, registry, tmp_path, case, layer, diff_ids,
                                   message):
    ref = push(registry, tmp_path, "test/bad-" + case.replace(" ", "-").lower(), [(layer, "gzip")],
               diff_ids=diff_ids)
    record = pull(service, ref)
    with pytest.raises(ImageError, match=message):
        service.unpack_new(record.name)
    assert_nothing_left(service)


def test_config_listing_too_few_diff_ids(service, registry, tmp_path):
    ref = push(registry, tmp_path, "test/short-config", [(SAFE, "gzip"), (SAFE, "zstd")],
               diff_ids=["sha256:" + "cd" * 32])
    with pytest.raises(ContentInvalid, match=r"2 layers but rootfs.diff_ids lists 1"):
        pull(service, ref)
    assert_nothing_left(service)


# --- blobs served from elsewhere ----------------------------------------------------------------
class BlobCDN:
    """Blob storage on another host (127.0.0.2), as S3 behind a registry: serves the
    registry's blob files with Range, records each request's headers, and can drop the
    first GET of one digest mid-body."""

    def __init__(self, registry: Registry):
        self.blobs_dir = os.path.join(registry.base, "data", "docker", "registry", "v2",
                                      "blobs", "sha256")
        self.requests: list[tuple[str, dict]] = []
        self.drop_first = ""
        cdn = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                digest = self.path.split("?")[0].rsplit("/", 1)[1]
                cdn.requests.append((digest, dict(self.headers.items())))
                hex_digest = digest.removeprefix("sha256:")
                with open(os.path.join(cdn.blobs_dir, hex_digest[:2], hex_digest, "data"),
                          "rb") as f:
                    body = f.read()
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if digest == cdn.drop_first and not start:
                    cdn.drop_first = ""
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.2:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RedirectingProxy(TamperingProxy):
    """Sends every blob GET to the CDN with a 307, as distribution does with S3 storage."""

    def __init__(self, upstream: str, cdn: BlobCDN):
        super().__init__(upstream)
        self.cdn = cdn

    def handle(self, handler, method: str) -> None:
        if "/blobs/sha256:" in handler.path and method == "GET":
            digest = handler.path.rsplit("/", 1)[1]
            return self.reply(handler, 307, b"", {
                "Location": f"http://{self.cdn.host}/cdn/{digest}?X-Amz-Signature=abc"})
        return super().handle(handler, method)


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    server = Registry(str(tmp_path_factory.mktemp("private")), htpasswd=("bob", "hunter2"))
    layout = LayoutWriter(str(tmp_path_factory.mktemp("layouts") / "private"))
    try:
        server.push(layout.finish(layout.image([(SAFE, "gzip"), (
            [{"name": "etc/issue", "data": b"second layer\n"}], "zstd")])), "team/app")
        yield server
    finally:
        server.stop()


def test_blobs_redirected_to_another_host_get_no_credentials(service, private_registry):
    """The registry's credentials go to the registry only, never to where it redirects
    blobs; a download dropped there resumes (Range through the redirect)."""
    cdn = BlobCDN(private_registry)
    proxy = RedirectingProxy(private_registry.host, cdn)
    try:
        record = pull(service, f"{proxy.host}/team/app", credentials=("bob", "hunter2"))
        scratch_layers = json.loads(service.content.read(record.manifest_digest))["layers"]
        service.remove(record.name, force=True)
        service.gc()
        assert service.content.digests() == []
        cdn.requests.clear()
        cdn.drop_first = scratch_layers[0]["digest"]

        record = pull(service, f"{proxy.host}/team/app", credentials=("bob", "hunter2"))
        fetched = [digest for digest, _ in cdn.requests]
        assert sorted(set(fetched)) == sorted({record.id} | {
            layer["digest"] for layer in scratch_layers})
        assert fetched.count(scratch_layers[0]["digest"]) == 2  # dropped, then resumed
        resumed = [h for d, h in cdn.requests if d == scratch_layers[0]["digest"]][1]
        assert resumed.get("Range", "").startswith("bytes=")
        leaked = [h for _, h in cdn.requests if "authorization" in {k.lower() for k in h}]
        assert leaked == []
        with mounted_image(service, record.name) as root:
            with open(os.path.join(root, "etc", "issue"), "rb") as f:
                assert f.read() == b"second layer\n"
    finally:
        proxy.stop()
        cdn.stop()
