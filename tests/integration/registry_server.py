"""Test registries: Debian's docker-registry on 127.0.0.1, a tampering proxy, test images.

`Registry` runs `docker-registry serve` with its storage in a temp dir
(optionally behind htpasswd Basic auth) and `push()`es OCI layouts with
skopeo.  `TamperingProxy` passes requests through to it but can corrupt,
truncate, drop mid-blob once, replace a manifest, or fail with 500s —
the hostile registry replies a client must survive.  `layered_image()`
writes a multi-layer OCI layout with whiteouts, an opaque directory, hard
links, symlinks, a fifo, and gzip/zstd/plain layers, and `expected_tree()`
applies the same layers in memory, to compare an unpacked rootfs with.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time

import zstandard

from corral.spec.image import (
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_TAR,
    MEDIA_LAYER_ZSTD,
    MEDIA_MANIFEST,
    canonical_json,
    descriptor,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, base: str, htpasswd: tuple[str, str] | None = None,
                 extra_config: str = "", tls: tuple[str, str] | None = None):
        self.base = base
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.credentials = htpasswd
        os.makedirs(base, exist_ok=True)
        auth = ""
        if htpasswd:
            line = subprocess.run(["htpasswd", "-Bbn", *htpasswd], capture_output=True,
                                  text=True, check=True).stdout
            with open(os.path.join(base, "htpasswd"), "w") as f:
                f.write(line)
            auth = (f"auth:\n  htpasswd:\n    realm: test\n"
                    f"    path: {os.path.join(base, 'htpasswd')}\n")
        self.tls = tls
        http_tls = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
        config = os.path.join(base, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {os.path.join(base, 'data')}\n  delete:\n"
                    f"    enabled: true\nhttp:\n  addr: {self.host}\n{http_tls}"
                    f"{auth}{extra_config}")
        self.log = open(os.path.join(base, "registry.log"), "wb")
        self.process = subprocess.Popen(["docker-registry", "serve", config],
                                        stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise AssertionError("docker-registry did not start") from None
                time.sleep(0.05)

    def push(self, layout: str, repository: str, tag: str = "latest", all_platforms=False):
        command = ["skopeo", "copy", "-q", "--dest-tls-verify=false"]  # also plain HTTP
        if self.credentials:
            command += ["--dest-creds", ":".join(self.credentials)]
        if all_platforms:
            command.append("--all")
        command += [f"oci:{layout}", f"docker://{self.host}/{repository}:{tag}"]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


class TamperingProxy:
    """An HTTP proxy to a registry that misbehaves on request (`self.mode`, one of
    None, "corrupt", "truncate", "drop-once", "not-json", "huge", "schema1",
    "500-twice", "stall": half the blob, then the rest once `resume` is set; `stalled`
    is set meanwhile), counting blob GETs per digest."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.mode: str | None = None
        self.target = ""  # the digest (or "manifest") the mode applies to
        self.blob_gets: dict[str, int] = {}
        self.failures = 0
        self.stalled = threading.Event()
        self.resume = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                proxy.handle(self, "HEAD")

            def do_GET(self):
                proxy.handle(self, "GET")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, handler, method: str) -> None:
        path = handler.path
        is_blob = "/blobs/sha256:" in path
        digest = path.rsplit("/", 1)[1] if is_blob else ""
        if is_blob and method == "GET":
            self.blob_gets[digest] = self.blob_gets.get(digest, 0) + 1
        if self.mode == "500-twice" and self.failures < 2 and (is_blob or "/manifests/" in path):
            self.failures += 1
            return self.reply(handler, 500, b'{"errors":[{"code":"UNKNOWN"}]}', {})
        headers = {k: v for k, v in handler.headers.items() if k.lower() in
                   ("accept", "range", "authorization")}
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        out_headers = {k: v for k, v in response.getheaders() if k.lower() in
                       ("content-type", "docker-content-digest", "www-authenticate",
                        "content-range", "location")}
        conn.close()
        status = response.status
        if "/manifests/" in path and self.target == "manifest" and status == 200:
            body, out_headers = self.tamper_manifest(body, out_headers)
        if is_blob and digest == self.target and status in (200, 206):
            if self.mode == "corrupt":
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            elif self.mode == "truncate":
                body = body[: len(body) // 2]
                out_headers["Content-Length"] = str(len(body))
                return self.reply(handler, status, body, out_headers, close=True)
            elif self.mode == "stall" and method == "GET" and "Range" not in handler.headers:
                handler.send_response(status)
                for key, value in out_headers.items():
                    handler.send_header(key, value)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body[: len(body) // 2])
                handler.wfile.flush()
                self.stalled.set()
                self.resume.wait(60)
                handler.wfile.write(body[len(body) // 2:])
                return
            elif self.mode == "drop-once" and "Range" not in handler.headers:
                self.mode = "dropped"
                handler.send_response(status)
                for key, value in out_headers.items():
                    handler.send_header(key, value)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body[: len(body) // 3])
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
                return
        self.reply(handler, status, body if method == "GET" else b"", out_headers,
                   length=len(body))

    def tamper_manifest(self, body: bytes, headers: dict) -> tuple[bytes, dict]:
        headers.pop("Docker-Content-Digest", None)
        if self.mode == "not-json":
            return b"<html>this is not a manifest</html>", headers
        document = json.loads(body)
        if self.mode == "huge" and document.get("layers"):
            document["layers"][0]["size"] = 1 << 50
        elif self.mode == "schema1":
            document = {"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}
            headers["Content-Type"] = "application/vnd.docker.distribution.manifest.v1+json"
        return json.dumps(document).encode(), headers

    @staticmethod
    def reply(handler, status, body, headers, length=None, close=False) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            if key != "Content-Length":
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        if close:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        if close:
            handler.close_connection = True


# --- test images ------------------------------------------------------------------------------
def _tar(entries: list[dict]) -> bytes:
    """A layer from entries: {name, type: file|dir|symlink|link|fifo, data, mode, uid, gid,
    mtime, target}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry["name"])
            info.mode = entry.get("mode", 0o644)
            info.uid = entry.get("uid", 0)
            info.gid = entry.get("gid", 0)
            info.mtime = entry.get("mtime", 1_600_000_000)
            kind = entry.get("type", "file")
            data = entry.get("data", b"")
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry["target"]
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, entry["target"]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buffer.getvalue()


LAYERS = [
    [{"name": "etc", "type": "dir", "mode": 0o755},
     {"name": "etc/motd", "data": b"first\n"},
     {"name": "etc/gone", "data": b"deleted later\n"},
     {"name": "data", "type": "dir", "mode": 0o755},
     {"name": "data/old", "data": b"hidden by the opaque dir\n"},
     {"name": "bin", "type": "dir", "mode": 0o755},
     {"name": "bin/tool", "data": b"#!/bin/sh\necho tool\n", "mode": 0o755, "uid": 1000,
      "gid": 1000}],
    [{"name": "etc/.wh.gone", "data": b""},
     {"name": "etc/motd", "data": b"second\n", "mode": 0o600},
     {"name": "data/.wh..wh..opq", "data": b""},
     {"name": "data/new", "data": b"after opaque\n"},
     {"name": "bin/alias", "type": "link", "target": "bin/tool"},
     {"name": "bin/sym", "type": "symlink", "target": "tool"}],
    [{"name": "run", "type": "dir", "mode": 0o755},
     {"name": "run/pipe", "type": "fifo", "mode": 0o600},
     {"name": "big", "data": os.urandom(0) + hashlib.sha256(b"seed").digest() * 20000}],
]
COMPRESSIONS = [(MEDIA_LAYER_GZIP, lambda b: gzip.compress(b, mtime=0)),
                (MEDIA_LAYER_ZSTD, lambda b: zstandard.ZstdCompressor().compress(b)),
                (MEDIA_LAYER_TAR, lambda b: b)]


def layered_image(dest: str, *, arch: str = "amd64", variant: str = "", marker: bytes = b"",
                  extra_platforms: list[tuple[str, str, bytes]] = (),
                  layers: list[list[dict]] | None = None) -> None:
    """An OCI layout: the LAYERS (plus a marker file naming the platform) for each platform;
    an index with all of them when extra platforms are given."""
    blobs: dict[str, bytes] = {}
    entries = []
    for platform_arch, platform_variant, platform_marker in \
            [(arch, variant, marker), *extra_platforms]:
        chosen = [list(layer) for layer in (layers or LAYERS)]
        chosen[-1] = chosen[-1] + [{"name": "platform",
                                    "data": platform_marker or arch.encode()}]
        tars = [_tar(layer) for layer in chosen]
        descriptors = []
        for tar, (media_type, compress) in zip(tars, COMPRESSIONS, strict=False):
            blob = compress(tar)
            blobs[hashlib.sha256(blob).hexdigest()] = blob
            descriptors.append(descriptor(media_type, blob))
        platform = {"architecture": platform_arch, "os": "linux"}
        if platform_variant:
            platform["variant"] = platform_variant
        config = canonical_json({**platform, "config": {"Cmd": ["sh"]}, "rootfs": {
            "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest()
                                           for t in tars]}})
        manifest = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                                   "config": descriptor(MEDIA_CONFIG, config),
                                   "layers": descriptors})
        for blob in (config, manifest):
            blobs[hashlib.sha256(blob).hexdigest()] = blob
        entries.append(descriptor(MEDIA_MANIFEST, manifest, platform=platform))
    if extra_platforms:
        index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                                "manifests": entries})
        blobs[hashlib.sha256(index).hexdigest()] = index
        top = [descriptor(MEDIA_INDEX, index, annotations={
            "org.opencontainers.image.ref.name": "latest"})]
    else:
        top = [dict(entries[0], annotations={"org.opencontainers.image.ref.name": "latest"})]
    os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
    for hex_digest, blob in blobs.items():
        with open(os.path.join(dest, "blobs", "sha256", hex_digest), "wb") as f:
            f.write(blob)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    with open(os.path.join(dest, "index.json"), "wb") as f:
        f.write(canonical_json({"schemaVersion": 2, "manifests": top}))


def expected_tree(marker: bytes) -> dict[str, tuple]:
    """What LAYERS make, path → (kind, mode, uid, gid, content or target)."""
    tree: dict[str, tuple] = {}
    layers = [list(layer) for layer in LAYERS]
    layers[-1] = layers[-1] + [{"name": "platform", "data": marker}]
    for layer in layers:
        for entry in layer:
            name = entry["name"]
            base = os.path.basename(name)
            parent = os.path.dirname(name)
            if base == ".wh..wh..opq":
                for path in [p for p in tree if p.startswith(parent + "/")]:
                    del tree[path]
                continue
            if base.startswith(".wh."):
                target = os.path.join(parent, base[4:])
                for path in [p for p in tree if p == target or p.startswith(target + "/")]:
                    del tree[path]
                continue
            kind = entry.get("type", "file")
            if kind == "link":
                tree[name] = tree[entry["target"]]
                continue
            value = entry.get("target") if kind == "symlink" else \
                hashlib.sha256(entry.get("data", b"")).hexdigest() if kind == "file" else None
            tree[name] = (kind, entry.get("mode", 0o644) if kind != "symlink" else 0o777,
                          entry.get("uid", 0), entry.get("gid", 0), value)
    return tree


def actual_tree(root: str) -> dict[str, tuple]:
    import stat as stat_module

    tree = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            relative = os.path.relpath(path, root)
            mode = stat_module.S_IMODE(info.st_mode)
            if stat_module.S_ISDIR(info.st_mode):
                tree[relative] = ("dir", mode, info.st_uid, info.st_gid, None)
            elif stat_module.S_ISLNK(info.st_mode):
                tree[relative] = ("symlink", 0o777, info.st_uid, info.st_gid,
                                  os.readlink(path))
            elif stat_module.S_ISFIFO(info.st_mode):
                tree[relative] = ("fifo", mode, info.st_uid, info.st_gid, None)
            else:
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
                tree[relative] = ("file", mode, info.st_uid, info.st_gid, content)
    return tree


def snapshot_tree(service, name: str) -> dict[str, tuple]:
    """The unpacked image as `actual_tree` sees it, through a read-only view of its layers."""
    import tempfile

    from corral.runtime.syscalls import MNT_DETACH, Syscalls

    top = service.unpack(name)
    target = tempfile.mkdtemp()
    key = f"view-{os.getpid()}"
    try:
        for mount in service.snapshots.view(key, top):
            mount.mount(target)
        try:
            return actual_tree(target)
        finally:
            Syscalls().umount(target, MNT_DETACH)
    finally:
        service.snapshots.remove(key)
        os.rmdir(target)
