"""Images: records, lookups, removal and garbage collection, import/export/build, unpacking.

Records name an image (an index or a manifest, the platform's manifest, the
config whose digest is the image ID) in SQLite; `get` takes a name, an ID
or an ID prefix.  An import first stores every blob it can verify (the
content store checks each against its digest), then reads index → manifest
→ config from the store, never from the archive, and records the image only
when all of it is there.  Unpacking applies each layer once, as a committed
snapshot named by its chain ID, checking the diff ID the config promises.
Removal and `prune` untag, then collect garbage (gc.py) under the gc lock;
removal never waits for the lock (a pull in progress collects when it ends).
"""

from __future__ import annotations

import functools
import json
import os
import time
from contextlib import contextmanager

from corral.images import gc
from corral.images.content import ContentStore
from corral.images.errors import (
    ContentInvalid,
    InUse,
    InvalidArgument,
    InvalidReference,
    NoMatchingPlatform,
    NotFound,
    Unsupported,
    space_checked,
)
from corral.images.reference import parse as parse_reference
from corral.images.snapshots import OverlaySnapshotter
from corral.images.unpack import open_layer
from corral.spec.image import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    chain_ids,
    check_digest,
)
from corral.spec.platform import Platform
from corral.store.db import Database

_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws")


_COLUMNS = ("name, manifest_digest, config_digest, size, created, target_digest, "
            "target_media_type, platform")


def _on_data_root(method):
    """Running out of space on the data root in `method` raises NoSpace naming the root."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with space_checked(self.root):
            return method(self, *args, **kwargs)
    return wrapper


class ImageRecord:
    def __init__(self, name: str, manifest_digest: str, config_digest: str, size: int,
                 created: float, target_digest: str = "", target_media_type: str = "",
                 platform: str = ""):
        self.name = name
        self.manifest_digest = manifest_digest
        self.id = config_digest  # the image ID, as CRI and docker show it
        self.size = size
        self.created = created
        self.target_digest = target_digest or manifest_digest  # an index, or the manifest
        self.target_media_type = target_media_type
        self.platform = platform

    @property
    def repo_digest(self) -> str:
        """repository@digest of what the name points to, as `docker images --digests` shows."""
        repository = self.name.split("@")[0]
        if repository.rfind(":") > repository.rfind("/"):
            repository = repository[:repository.rfind(":")]
        return f"{repository}@{self.target_digest}"


class ImageService:
    def __init__(self, root: str):
        self.root = root
        self.db = Database(os.path.join(root, "metadata.db"))
        self.content = ContentStore(os.path.join(root, "content"))
        self.snapshots = OverlaySnapshotter(os.path.join(root, "snapshotter"), self.db)

    def close(self) -> None:
        self.db.close()

    # --- records ---------------------------------------------------------------------------------
    def list(self) -> list[ImageRecord]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM images ORDER BY name").fetchall()
        return [ImageRecord(*row) for row in rows]

    def get(self, name: str) -> ImageRecord:
        """By image ID, name ("busybox" is docker.io/library/busybox:latest) or ID prefix.

        Looked up in docker's order: a full ID, then a name, then a unique prefix of at
        least 4 hex digits (so an image named "cafe" wins over IDs starting with cafe)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("image name is empty")
        if _looks_like_id(name) and len(name.removeprefix("sha256:")) == 64:
            found = self._by_id_prefix(name)
            if found is not None:
                return found
        try:
            ref = str(parse_reference(name))
        except InvalidReference:
            ref = None
            if not _looks_like_id(name):
                raise
        if ref is not None:
            row = self.db.execute(f"SELECT {_COLUMNS} FROM images WHERE name = ?",
                                  (ref,)).fetchone()
            if row is not None:
                return ImageRecord(*row)
            by_digest = self._by_repo_digest(ref)
            if by_digest is not None:
                return by_digest
        found = self._by_id_prefix(name) if _looks_like_id(name) else None
        if found is None:
            raise NotFound(f"image {name!r} not found")
        return found

    def _by_repo_digest(self, ref: str) -> ImageRecord | None:
        """repo@sha256:… for an image recorded by tag: what its name or platform points to."""
        repository, _, digest = ref.partition("@")
        if not digest:
            return None
        repository = repository.rsplit(":", 1)[0] if repository.rfind(":") > \
            repository.rfind("/") else repository
        for row in self.db.execute(
                f"SELECT {_COLUMNS} FROM images WHERE (target_digest = ? OR manifest_digest = ?)"
                " ORDER BY name", (digest, digest)):
            record = ImageRecord(*row)
            if record.repo_digest.partition("@")[0] == repository:
                return record
        return None

    def _by_id_prefix(self, text: str) -> ImageRecord | None:
        hex_part = text.removeprefix("sha256:")
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE config_digest >= ? AND config_digest < ? "
            "ORDER BY name", (f"sha256:{hex_part}", f"sha256:{hex_part}g")).fetchall()
        ids = sorted({row[2] for row in rows})
        if len(ids) > 1:
            shown = ", ".join(i[7:19] for i in ids)
            raise InvalidArgument(f"image ID prefix {text!r} is ambiguous: it matches {shown}")
        return ImageRecord(*rows[0]) if rows else None

    def names_of(self, image_id: str) -> list[str]:
        """Every name the image ID has."""
        return [row[0] for row in self.db.execute(
            "SELECT name FROM images WHERE config_digest = ? ORDER BY name", (image_id,))]

    @_on_data_root
    def record(self, name: str, *, target: dict, manifest_digest: str, config_digest: str,
               platform: str, size: int, created: float | None = None) -> ImageRecord:
        """Name an image whose blobs are all stored (the puller and importers call this).

        A name already in use is moved to this image, as `docker tag` and a re-pull do."""
        try:
            name = str(parse_reference(name))
        except InvalidReference as e:
            raise InvalidReference(f"image record {name!r}: {e}") from None
        try:
            for digest in (target.get("digest"), manifest_digest, config_digest):
                check_digest(digest)
        except ValueError as e:
            raise ContentInvalid(f"image record {name!r}: {e}") from None
        with self.db.transaction() as tx:
            tx.execute(f"INSERT OR REPLACE INTO images ({_COLUMNS}) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, manifest_digest, config_digest, size,
                        time.time() if created is None else created,
                        target["digest"], target.get("mediaType", ""), platform))
        return self.get(name)

    @_on_data_root
    def tag(self, source: str, new_name: str) -> ImageRecord:
        """Another name for an image (its created time kept)."""
        record = self.get(source)
        return self.record(new_name, target={"digest": record.target_digest,
                                             "mediaType": record.target_media_type},
                           manifest_digest=record.manifest_digest, config_digest=record.id,
                           platform=record.platform, size=record.size, created=record.created)

    def in_use(self, record: ImageRecord) -> bool:
        """Whether a container's snapshot is made from the image."""
        return gc.image_in_use(self, record)

    @_on_data_root
    def remove(self, name_or_id: str, force: bool = False) -> list[str]:
        """Untag (every name, when given an ID) and collect what nothing uses any more, now
        or, while a pull or import holds the GC lock, when it is done.

        Refused, unless `force`, when the image's last name would go while a container's
        snapshot stands on its layers; its names removed."""
        record = self.get(name_or_id)
        all_names = self.names_of(record.id)
        by_id = _looks_like_id(name_or_id) and _maybe_reference(name_or_id) != record.name
        names = all_names if by_id else [record.name]
        last = len(names) == len(all_names)
        if last and not force and self.in_use(record):
            raise InUse(f"image {name_or_id} ({record.id[7:19]}) is in use by a container")
        with self.db.transaction() as tx:
            for name in names:
                tx.execute("DELETE FROM images WHERE name = ?", (name,))
        # Never wait for a pull (it holds the lock shared for as long as it downloads):
        # collect now if the lock is free, else the pull collects when it is done.
        self.gc(wait=False)
        return names

    @_on_data_root
    def prune(self, all: bool = False, on_wait=None) -> gc.Report:
        """Collect garbage; with `all`, first remove every image no container uses.

        Every record has a name here (a re-tag moves it, leaving no untagged image),
        so there are no dangling images to remove without `all`.  Collection waits for
        pulls and imports in progress (`on_wait()` is called first if there are any)."""
        removed: dict[str, list[str]] = {}
        if all:
            for image_id in sorted({r.id for r in self.list()}):
                names = self.names_of(image_id)
                if names and not self.in_use(self.get(names[0])):
                    with self.db.transaction() as tx:
                        for name in names:
                            tx.execute("DELETE FROM images WHERE name = ?", (name,))
                    removed[image_id] = names
        report = self.gc(on_wait=on_wait)
        report.images = [name for names in removed.values() for name in names]
        report.removed_images = removed
        return report

    @contextmanager
    def gc_lock(self, shared: bool):
        """LOCK_SH while pulling or importing, LOCK_EX while collecting garbage.

        On release, a collection a removal asked for meanwhile is done, if the lock is
        free (otherwise whoever holds it does it on release: gc.py)."""
        try:
            with gc.lock(self.root, shared) as held:
                yield held
        finally:
            if gc.requested(self.root):
                self.gc(wait=False)

    @_on_data_root
    def gc(self, wait: bool = True, stray_age: float = gc.STRAY_AGE,
           on_wait=None) -> gc.Report | None:
        """Remove blobs and snapshots no image or container uses (None: others hold the lock;
        then the last of them collects when it releases it).

        `stray_age`: ingest files older than this are a dead writer's (0 when nothing else
        can be writing, e.g. at corrald's start).  `on_wait()`: called before waiting."""
        return gc.collect(self, wait, stray_age, on_wait)

    # --- import ----------------------------------------------------------------------------------
    @_on_data_root
    def import_archive(self, path: str, name: str | None = None) -> list[ImageRecord]:
        """An OCI layout (directory or tar) or a docker-save tar; each image in it recorded."""
        from corral.images.archive import import_image

        return import_image(self, path, name)

    @_on_data_root
    def build(self, rootfs_dir: str, name: str, cmd: list[str] | None = None,
              env: list[str] | None = None) -> ImageRecord:
        """An image of one layer made from a root filesystem directory (layout.py), imported.

        Reproducible: the same tree, name, cmd and env give the same image ID."""
        from corral.images.layout import build_image

        if not os.path.isdir(rootfs_dir):
            raise InvalidArgument(f"build: {rootfs_dir} is not a directory")
        try:
            files = build_image(rootfs_dir, name, cmd=cmd, env=env)
        except InvalidReference as e:
            raise InvalidReference(f"build: {e}") from None
        try:
            with self.gc_lock(shared=True):
                for path, data in files.items():
                    if path.startswith("blobs/sha256/"):
                        self.content.write(data, "sha256:" + path.rsplit("/", 1)[1])
                (record,) = self.record_index(files["index.json"])
        except BaseException:
            self.gc(wait=False)
            raise
        return record

    def export(self, names: list[str], dest: str, format: str = "oci-archive") -> None:
        """Write images as "oci-archive", "oci-dir" or "docker-archive"."""
        from corral.images.archive import export_images

        export_images(self, names, dest, format)

    def record_index(self, index: bytes | None, name: str | None = None) -> list[ImageRecord]:
        """Record the images an OCI index.json names (its blobs already stored)."""
        if index is None:
            raise ContentInvalid("not an OCI layout: no index.json")
        entries = _json_object(index, "index.json").get("manifests")
        if not isinstance(entries, list) or not entries:
            raise ContentInvalid("index.json: no manifests")
        if name and len(entries) > 1:
            raise InvalidArgument(f"index.json names {len(entries)} images; one name cannot name "
                                  "them all")
        records = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ContentInvalid(f"index.json manifests[{i}]: not an object")
            annotations = entry.get("annotations") or {}
            ref_name = annotations.get(ANNOTATION_REF_NAME) or ""
            if not any(c in ref_name for c in "/:"):
                ref_name = ""  # a tag alone ("latest", the OCI convention) names no image
            image_name = name or annotations.get(ANNOTATION_CONTAINERD_NAME) or ref_name
            if not image_name:
                raise InvalidArgument(f"index.json manifests[{i}]: no image name (ref.name is "
                                      f"{annotations.get(ANNOTATION_REF_NAME)!r}); give one")
            try:
                reference = str(parse_reference(image_name))
            except InvalidReference as e:
                raise InvalidReference(f"index.json manifests[{i}]: {e}") from None
            records.append(self._record(reference, entry))
        return records

    def _record(self, name: str, entry: dict) -> ImageRecord:
        manifest_digest, manifest = self._resolve_manifest(entry)
        config = manifest.get("config") or {}
        config_digest = _checked_digest(config.get("digest"), f"manifest {manifest_digest}")
        config_doc = self._blob_json(config_digest, "config")
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise ContentInvalid(f"manifest {manifest_digest}: no layers")
        for layer in layers:
            if not self.content.exists(_checked_digest(layer.get("digest"),
                                                       f"manifest {manifest_digest}")):
                raise ContentInvalid(f"layer {layer.get('digest')} is missing from the archive")
        size = sum(int(d.get("size", 0)) for d in (config, *layers))
        platform = "/".join(filter(None, (config_doc.get("os"), config_doc.get("architecture"),
                                          config_doc.get("variant"))))
        return self.record(name, target={"digest": entry.get("digest"),
                                         "mediaType": entry.get("mediaType", "")},
                           manifest_digest=manifest_digest, config_digest=config_digest,
                           platform=platform, size=size)

    def _resolve_manifest(self, entry: dict) -> tuple[str, dict]:
        """Follow an index to the manifest for this platform."""
        media_type = entry.get("mediaType")
        digest = _checked_digest(entry.get("digest"), "index")
        if media_type in _SCHEMA1:
            raise Unsupported("Docker schema 1 manifests are not supported")
        document = self._blob_json(digest, "manifest")
        if media_type in (MEDIA_INDEX, MEDIA_DOCKER_MANIFEST_LIST) or "manifests" in document:
            manifests = document.get("manifests")
            candidate = host_manifest(manifests if isinstance(manifests, list) else [])
            if candidate is None:
                raise NoMatchingPlatform(f"index {digest}: no image for {Platform.host()}")
            return self._resolve_manifest(candidate)
        if media_type not in (MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST, None):
            raise Unsupported(f"unsupported manifest media type {media_type!r}")
        return digest, document

    def _blob_json(self, digest: str, what: str) -> dict:
        try:
            data = self.content.read(digest)
        except FileNotFoundError:
            raise ContentInvalid(f"{what} {digest} is missing") from None
        return _json_object(data, f"{what} {digest}")

    @_on_data_root
    def unpack_new(self, name: str) -> str:
        """Unpack an image just pulled or imported; if a layer is refused, the image goes too.

        The layer's blob verified, but what it would write did not (a `../` or a symlink
        escape, a tar bomb): nothing of such an image is kept."""
        try:
            return self.unpack(name)
        except BaseException as e:
            self.remove(name, force=True)
            if isinstance(e, ValueError):  # the spec's: a diff ID that is no digest
                raise ContentInvalid(f"image {name}: {e}") from None
            raise

    # --- unpack ----------------------------------------------------------------------------------
    @_on_data_root
    def unpack(self, name: str, limit_factor: int = 64) -> str:
        """Every layer as a committed snapshot; the top chain ID (a container's parent)."""
        record = self.get(name)
        manifest = self._blob_json(record.manifest_digest, "manifest")
        config = self._blob_json(record.id, "config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layers = manifest["layers"]
        if len(diff_ids) != len(layers):
            raise ContentInvalid(f"image {name}: {len(layers)} layers but {len(diff_ids)} diff IDs")
        return self.unpack_layers(layers, diff_ids, limit_factor=limit_factor)

    @_on_data_root
    def unpack_layers(self, layers: list[dict], diff_ids: list[str], ready=None,
                      limit_factor: int = 64) -> str:
        """Apply layers in order, each once (a lock per chain ID: concurrent pulls share
        layers); `ready(i)` blocks until layer i's blob is stored (a pull in progress)."""
        parent = None
        for i, (layer, diff_id, chain_id) in enumerate(zip(layers, diff_ids,
                                                           chain_ids(diff_ids), strict=True)):
            if ready is not None:
                ready(i)
            with self.snapshots.locked(chain_id):
                if not self.snapshots.exists(chain_id):
                    # A bomb is bounded: at most limit_factor times its size, plus 64 MiB.
                    limit = int(layer.get("size", 0)) * limit_factor + 64 * 2**20
                    with open_layer(self.content.path(layer["digest"]),
                                    layer["mediaType"]) as stream:
                        self.snapshots.apply_layer(chain_id, parent, stream, limit=limit,
                                                   expected_diff_id=diff_id)
            parent = chain_id
        return parent


def host_manifest(manifests: list) -> dict | None:
    """The index entry an import records: this machine's platform, chosen as a pull does."""
    return Platform.host().choose(manifests)


def _json_object(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ContentInvalid(f"{what}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ContentInvalid(f"{what}: not a JSON object")
    return value


def _checked_digest(value, what: str) -> str:
    try:
        return check_digest(value)
    except ValueError as e:
        raise ContentInvalid(f"{what}: {e}") from None


def _looks_like_id(text: str) -> bool:
    hex_part = text.removeprefix("sha256:")
    return len(hex_part) >= 4 and all(c in "0123456789abcdef" for c in hex_part)


def _maybe_reference(text: str) -> str:
    try:
        return str(parse_reference(text))
    except InvalidReference:
        return ""
