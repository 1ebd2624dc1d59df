"""Pulling an image: reference → endpoint → manifest (platform chosen) → config → layers → record.

Endpoints are tried in order (mirrors, then the registry); the first that
serves the manifest serves the whole image.  Layers download concurrently
(bounded), each under its digest's ingest lock, so concurrent pulls of one
image or of images sharing a layer fetch every blob once.  The record is
written only after every blob is stored and verified.

A pull holds the data root's GC lock shared: garbage collection (exclusive)
never sees a blob that is stored but not yet recorded.  A failed pull
leaves nothing of its own: afterwards it collects garbage if no other pull
is running (otherwise the last of them to finish does: gc.py).
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from corral.images.distribution import (
    MEDIA_DOCKER_SCHEMA1,
    MEDIA_DOCKER_SCHEMA1_SIGNED,
    Repository,
    RetryPolicy,
    Transport,
)
from corral.images.errors import (
    ContentInvalid,
    DigestMismatch,
    ImageError,
    InvalidArgument,
    NoMatchingPlatform,
    NoSpace,
    Unsupported,
    space_checked,
)
from corral.images.reference import parse as parse_reference
from corral.images.registries import RegistryConfig
from corral.spec.image import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    DigestError,
    check_digest,
    sha256_digest,
)
from corral.spec.platform import Platform, PlatformError

CONFIG_MAX = 8 << 20
_INDEX_TYPES = (MEDIA_INDEX, MEDIA_DOCKER_MANIFEST_LIST)
_MANIFEST_TYPES = (MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST)
_LAYER_SUFFIXES = (".tar", "+gzip", "+zstd", ".tar.gzip", ".tar.zstd")


class LayerProgress:
    """What a progress callback sees: one layer's state (the object is updated in place)."""

    __slots__ = ("digest", "media_type", "done", "total", "status")

    def __init__(self, digest: str, media_type: str, total: int):
        self.digest = digest
        self.media_type = media_type
        self.done = 0
        self.total = total
        self.status = "waiting"


class _Cancelled(Exception):
    """Another layer failed: stop this download."""


class Puller:
    def __init__(self, service, config: RegistryConfig | None = None, *,
                 max_concurrent: int = 3, retry: RetryPolicy | None = None):
        self.service = service
        self.content = service.content
        self.config = config or RegistryConfig()
        self.max_concurrent = max_concurrent
        self.retry = retry
        self.transport = Transport(max_connections=max_concurrent + 1)

    def close(self) -> None:
        self.transport.close()

    def pull(self, ref: str, *, platform: str | None = None,
             credentials: tuple[str, str] | None = None, progress=None, unpack: bool = False):
        """Fetch and record an image; with `unpack`, each layer is also applied as soon as it
        and the layers below it are stored, while the others still download."""
        try:
            reference = parse_reference(ref)
            wanted = Platform.parse(platform) if platform else Platform.host()
        except PlatformError as e:
            raise InvalidArgument(str(e)) from None
        stored: list[str] = []
        with space_checked(self.service.root):  # a blob, a layer or a record: one error
            try:
                with self.service.gc_lock(shared=True):
                    return self._pull(reference, wanted, credentials, progress, stored, unpack)
            except BaseException:
                if stored:
                    self.service.gc(wait=False)
                raise

    def _pull(self, reference, wanted: Platform, credentials, progress, stored: list[str],
              unpack: bool = False):
        repo, body, media_type, digest = self._resolve(reference, credentials)
        document = _json_object(body, f"{repo.what}: manifest {digest}")
        media_type = document.get("mediaType") or media_type
        _refuse_schema1(media_type, document, repo, digest)
        target = {"mediaType": media_type, "digest": digest, "size": len(body)}
        documents = [(body, digest)]

        if media_type in _INDEX_TYPES or "manifests" in document:
            entry = wanted.choose(document.get("manifests") or [])
            if entry is None:
                offered = sorted({str(p) for m in document.get("manifests") or []
                                  if isinstance(m, dict) and (p := Platform.of(m.get("platform")))})
                raise NoMatchingPlatform(f"{repo.what}: no image for {wanted} in index {digest} "
                                         f"(it has {', '.join(offered) or 'no platforms'})")
            manifest_digest = _digest(entry, f"{repo.what}: index {digest}")
            body, media_type, _ = repo.manifest(manifest_digest, expected_digest=manifest_digest)
            document = _json_object(body, f"{repo.what}: manifest {manifest_digest}")
            media_type = entry.get("mediaType") or document.get("mediaType") or media_type
            _refuse_schema1(media_type, document, repo, manifest_digest)
            documents.append((body, manifest_digest))
        else:
            manifest_digest = digest
        if media_type not in _MANIFEST_TYPES and "layers" not in document:
            raise Unsupported(f"{repo.what}: manifest {manifest_digest}: unsupported media "
                              f"type {media_type!r}")

        config_descriptor, layers = _manifest_parts(document, f"{repo.what}: manifest "
                                                              f"{manifest_digest}")
        config_digest = config_descriptor["digest"]
        config_body = repo.read_blob(config_digest, config_descriptor["size"], CONFIG_MAX)
        if sha256_digest(config_body) != config_digest:
            raise DigestMismatch(f"{repo.what}: config {config_digest} has digest "
                                 f"{sha256_digest(config_body)}")
        config = _json_object(config_body, f"{repo.what}: config {config_digest}")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise ContentInvalid(f"{repo.what}: config {config_digest}: {len(layers)} layers but "
                                 f"rootfs.diff_ids lists {len(diff_ids or [])}")
        self._check_space(layers, repo)

        for blob, blob_digest in (*documents, (config_body, config_digest)):
            self._store_small(blob, blob_digest, stored, repo)
        if unpack:
            self._fetch_and_unpack(repo, layers, diff_ids, progress, stored)
        else:
            self._fetch_layers(repo, layers, progress, stored)

        image_platform = Platform(config.get("os") or wanted.os,
                                  config.get("architecture") or wanted.architecture,
                                  config.get("variant") or "")
        size = config_descriptor["size"] + sum(layer["size"] for layer in layers)
        return self.service.record(str(reference), target=target,
                                   manifest_digest=manifest_digest, config_digest=config_digest,
                                   platform=str(image_platform), size=size)

    # --- endpoints -----------------------------------------------------------------------------
    def _resolve(self, reference, credentials):
        """The first endpoint that serves the manifest: (repository, body, media type, digest)."""
        endpoints = self.config.endpoints(reference)
        failures = []
        for endpoint in endpoints:
            creds = credentials if (credentials and not endpoint.mirror) else \
                self.config.credentials(endpoint.host, endpoint.repository)
            repo = Repository(endpoint, self.transport, creds, self.retry)
            try:
                repo.ping()
                body, media_type, digest = repo.manifest(reference.digest or reference.tag,
                                                         expected_digest=reference.digest)
                return repo, body, media_type, digest
            except ImageError as e:
                if not endpoint.mirror:
                    if failures:
                        raise type(e)(f"{e} (mirrors failed too: {'; '.join(failures)})") \
                            from None
                    raise
                failures.append(str(e))
        raise AssertionError("the registry itself is always the last endpoint")

    # --- blobs ---------------------------------------------------------------------------------
    def _store_small(self, blob: bytes, digest: str, stored: list[str], repo) -> None:
        if self.content.exists(digest):
            return
        try:
            self.content.write(blob, digest)
        except DigestMismatch as e:
            raise DigestMismatch(f"{repo.what}: {e}") from None
        stored.append(digest)

    def _check_space(self, layers: list[dict], repo) -> None:
        missing = sum(layer["size"] for layer in layers if not self.content.exists(layer["digest"]))
        stat = os.statvfs(self.content.root)
        free = stat.f_bavail * stat.f_frsize
        if missing > free:
            biggest = max(layers, key=lambda layer: layer["size"])
            raise NoSpace(f"no space left on {self.service.root}: {repo.what}'s layers declare "
                          f"{missing} bytes (the largest, {biggest['digest']}, "
                          f"{biggest['size']}), {free} are free")

    def _fetch_and_unpack(self, repo, layers: list[dict], diff_ids: list[str], progress,
                          stored: list[str]) -> None:
        """Downloads on the pool, unpacking on a thread that follows them in layer order."""
        arrived = {layer["digest"]: threading.Event() for layer in layers}
        aborted = threading.Event()
        failure: list[BaseException] = []

        def ready(i: int) -> None:
            arrived[layers[i]["digest"]].wait()
            if aborted.is_set():
                raise _Cancelled

        def unpack() -> None:
            try:
                self.service.unpack_layers(layers, diff_ids, ready=ready)
            except _Cancelled:
                pass
            except BaseException as e:  # noqa: BLE001 - raised in the pulling thread
                failure.append(e)

        unpacker = threading.Thread(target=unpack, name="unpack")
        unpacker.start()
        try:
            self._fetch_layers(repo, layers, progress, stored,
                               on_stored=lambda digest: arrived[digest].set())
        except BaseException:
            aborted.set()
            raise
        finally:
            for event in arrived.values():
                event.set()
            unpacker.join()
        if failure:
            error = failure[0]
            if isinstance(error, ImageError):
                raise type(error)(f"{repo.what}: {error}") from None
            if isinstance(error, ValueError):  # the spec's: a diff ID that is no digest
                raise ContentInvalid(f"{repo.what}: {error}") from None
            raise error

    def _fetch_layers(self, repo, layers: list[dict], progress, stored: list[str],
                      on_stored=None) -> None:
        states = [LayerProgress(layer["digest"], layer["mediaType"], layer["size"])
                  for layer in layers]
        cancelled = threading.Event()
        report_lock = threading.Lock()

        def report(state: LayerProgress, status: str, done: int | None = None) -> None:
            if cancelled.is_set():
                raise _Cancelled
            state.status = status
            if done is not None:
                state.done = done
            if progress is not None:
                with report_lock:
                    progress(state)

        def fetch(state: LayerProgress) -> None:
            with self.content.locked(state.digest):
                if self.content.exists(state.digest):
                    report(state, "exists", state.total)
                    if on_stored is not None:
                        on_stored(state.digest)
                    return
                try:
                    with self.content.writer(state.digest, state.total) as writer:
                        report(state, "downloading", 0)
                        repo.fetch_blob(writer, lambda n: report(state, "downloading", n))
                        report(state, "verifying")
                        writer.commit()
                except DigestMismatch as e:
                    raise DigestMismatch(f"{repo.what}: {e}") from None
                stored.append(state.digest)
            if on_stored is not None:
                on_stored(state.digest)
            report(state, "done", state.total)

        for state in states:
            report(state, "waiting")
        unique = list({state.digest: state for state in states}.values())
        with ThreadPoolExecutor(max_workers=self.max_concurrent,
                                thread_name_prefix="pull") as pool:
            futures = {pool.submit(fetch, state): state for state in unique}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                cancelled.set()
                for future in pending:
                    future.cancel()
                wait(pending)
                state = futures[failed[0]]
                state.status = "failed"
                if progress is not None:
                    progress(state)
                raise failed[0].exception()
        for state in states:
            if state.status != "done" and state.status != "exists":
                report(state, "exists", state.total)  # a layer listed twice


def _json_object(body: bytes, what: str) -> dict:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ContentInvalid(f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise ContentInvalid(f"{what}: not a JSON object")
    return value


def _refuse_schema1(media_type: str, document: dict, repo, digest: str) -> None:
    if media_type in (MEDIA_DOCKER_SCHEMA1, MEDIA_DOCKER_SCHEMA1_SIGNED) or \
            document.get("schemaVersion") == 1:
        raise Unsupported(f"{repo.what}: manifest {digest} is Docker schema 1, which is "
                          "deprecated and not supported; push the image again with a current "
                          "client (schema 2 or OCI)")


def _digest(descriptor, what: str) -> str:
    try:
        return check_digest(descriptor.get("digest"))
    except (DigestError, AttributeError):
        raise ContentInvalid(f"{what}: a descriptor without a valid sha256 digest") from None


def _descriptor(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ContentInvalid(f"{what}: not a descriptor")
    digest = _digest(value, what)
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ContentInvalid(f"{what}: size must be a non-negative integer, not {size!r}")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ContentInvalid(f"{what}: no mediaType")
    return {"mediaType": media_type, "digest": digest, "size": size}


def _manifest_parts(document: dict, what: str) -> tuple[dict, list[dict]]:
    config = _descriptor(document.get("config"), f"{what}: config")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise ContentInvalid(f"{what}: no layers list")
    parsed = [_descriptor(layer, f"{what}: layers[{i}]") for i, layer in enumerate(layers)]
    for i, layer in enumerate(parsed):
        if not layer["mediaType"].endswith(_LAYER_SUFFIXES):
            raise Unsupported(f"{what}: layers[{i}]: unsupported media type "
                              f"{layer['mediaType']!r}")
    return config, parsed
