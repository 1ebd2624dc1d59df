"""Images in and out of files: OCI layouts (a directory or a tar) and `docker save` tarballs.

    import   a directory with index.json (OCI layout), a tar with index.json
             (oci-archive; also what docker 25+ saves), or a tar with only
             manifest.json (docker-archive: podman save, older docker save)
    export   "oci-dir", "oci-archive" or "docker-archive" (loadable by
             `docker load` / `podman load`: manifest.json, repositories, the
             config, uncompressed layers whose digests are the diff IDs); a
             name that points to an index is written with the index limited
             to the platforms stored (OCI), or its stored platform's image

An import stores only blobs it verified, and records images only when
every blob they need is stored; a failed import collects what it stored.
Exports are reproducible: sorted entries, fixed modes and times.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile

from corral.images.errors import (
    ContentInvalid,
    DigestMismatch,
    InvalidArgument,
    InvalidReference,
    NoSpace,
    is_out_of_space,
)
from corral.images.reference import parse as parse_reference
from corral.spec.image import (
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    canonical_json,
    check_digest,
    descriptor,
    sha256_digest,
)

MEDIA_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
FORMATS = ("oci-archive", "oci-dir", "docker-archive")
_CHUNK = 1 << 20


# --- import ---------------------------------------------------------------------------------------
def import_image(service, path: str, name: str | None = None) -> list:
    try:
        with service.gc_lock(shared=True):
            if os.path.isdir(path):
                return _import_layout_dir(service, path, name)
            try:
                tar = tarfile.open(path)
            except tarfile.TarError:
                raise InvalidArgument(f"{path}: not a readable image archive (a tar, or an OCI "
                                      "layout directory)") from None
            except OSError as e:
                raise InvalidArgument(f"{path}: {e.strerror}") from None
            with tar:
                names = {m.name.removeprefix("./") for m in tar.getmembers()}
                if "index.json" in names:
                    return _import_oci_tar(service, tar, name)
                if "manifest.json" in names:
                    return _import_docker_tar(service, tar, path, name)
                raise InvalidArgument(f"{path}: neither an OCI archive (index.json) nor a "
                                      "docker archive (manifest.json)")
    except BaseException:
        service.gc(wait=False)  # what this import stored and nothing names
        raise


def _ingest(service, stream, digest: str, size: int | None, what: str) -> None:
    try:
        check_digest(digest)
    except ValueError as e:
        raise ContentInvalid(f"{what}: {e}") from None
    try:
        service.content.ingest(iter(lambda: stream.read(_CHUNK), b""), digest, size)
    except DigestMismatch as e:
        raise DigestMismatch(f"{what}: {e}") from None


def _import_layout_dir(service, path: str, name: str | None) -> list:
    index_path = os.path.join(path, "index.json")
    if not os.path.exists(index_path):
        raise InvalidArgument(f"{path}: not an OCI image layout (no index.json)")
    blobs = os.path.join(path, "blobs", "sha256")
    try:
        for entry in sorted(os.listdir(blobs)) if os.path.isdir(blobs) else []:
            with open(os.path.join(blobs, entry), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ContentInvalid(f"{path}: blobs/sha256/{entry} is not a regular file")
                _ingest(service, f, f"sha256:{entry}", os.fstat(f.fileno()).st_size,
                        f"blobs/sha256/{entry}")
        with open(index_path, "rb") as f:
            index = f.read()
    except OSError as e:
        if is_out_of_space(e):
            raise  # writing the store, not reading the layout: the caller names the data root
        raise InvalidArgument(f"{path}: {e.filename or ''}: {e.strerror}") from None
    return service.record_index(index, name)


def _import_oci_tar(service, tar: tarfile.TarFile, name: str | None) -> list:
    index = None
    for member in tar:
        if not member.isfile():
            continue
        entry = member.name.removeprefix("./")
        if entry == "index.json":
            index = tar.extractfile(member).read()
        elif entry.startswith("blobs/sha256/"):
            _ingest(service, tar.extractfile(member), "sha256:" + entry.rsplit("/", 1)[1],
                    member.size, entry)
    return service.record_index(index, name)


def _member(tar: tarfile.TarFile, entry: str, what: str):
    if not isinstance(entry, str) or entry.startswith("/") or ".." in entry.split("/"):
        raise ContentInvalid(f"manifest.json: {what} {entry!r} is not a path inside the "
                             "archive")
    try:
        member = tar.getmember(entry)
    except KeyError:
        try:
            member = tar.getmember("./" + entry)
        except KeyError:
            raise ContentInvalid(f"manifest.json: {what} {entry} is missing from the "
                                 "archive") from None
    if not member.isfile():
        raise ContentInvalid(f"manifest.json: {what} {entry} is not a regular file")
    return tar.extractfile(member), member.size


def _import_docker_tar(service, tar: tarfile.TarFile, path: str, name: str | None) -> list:
    from corral.images.service import _json_object

    stream, _ = _member(tar, "manifest.json", "manifest")
    try:
        entries = json.loads(stream.read())
    except ValueError:
        raise ContentInvalid(f"{path}: manifest.json is not JSON") from None
    if not isinstance(entries, list) or not entries:
        raise ContentInvalid(f"{path}: manifest.json lists no images")
    if name and len(entries) > 1:
        raise InvalidArgument(f"{path}: holds {len(entries)} images; one name cannot name them all")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ContentInvalid(f"{path}: manifest.json[{i}] is not an object")
        config_stream, config_size = _member(tar, entry.get("Config"), "config")
        config_bytes = config_stream.read()
        config = _json_object(config_bytes, f"config {entry.get('Config')}")
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        service.content.write(config_bytes, config_digest)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layer_paths = entry.get("Layers")
        if not isinstance(layer_paths, list) or len(layer_paths) != len(diff_ids):
            raise ContentInvalid(f"{path}: manifest.json[{i}]: {len(layer_paths or [])} layers, "
                                 f"the config lists {len(diff_ids)} diff IDs")
        layers = []
        for layer_path, diff_id in zip(layer_paths, diff_ids, strict=True):
            layers.append(_store_docker_layer(service, tar, layer_path, diff_id))
        manifest = canonical_json({
            "schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
            "config": descriptor(MEDIA_DOCKER_CONFIG, config_bytes), "layers": layers})
        manifest_digest = service.content.write(manifest)
        tags = entry.get("RepoTags") or []
        if name:
            tags = [name]
        if not tags:
            raise InvalidArgument(f"{path}: manifest.json[{i}] has no RepoTags; give a name")
        platform = "/".join(filter(None, (config.get("os"), config.get("architecture"),
                                          config.get("variant"))))
        size = len(config_bytes) + sum(layer["size"] for layer in layers)
        for tag in tags:
            try:
                reference = str(parse_reference(tag))
            except InvalidReference as e:
                raise InvalidReference(f"{path}: RepoTags: {e}") from None
            records.append(service.record(
                reference, target={"digest": manifest_digest, "mediaType": MEDIA_DOCKER_MANIFEST},
                manifest_digest=manifest_digest, config_digest=config_digest,
                platform=platform, size=size))
    return records


def _store_docker_layer(service, tar, layer_path: str, diff_id: str) -> dict:
    """A docker-archive layer (a tar, perhaps compressed), stored as it is; its descriptor.

    The uncompressed digest must be the config's diff ID: checked here, not at unpack."""
    stream, size = _member(tar, layer_path, "layer")
    with tempfile.TemporaryFile(dir=service.content.ingest_dir) as copy:
        blob_hash = hashlib.sha256()
        while chunk := stream.read(_CHUNK):
            blob_hash.update(chunk)
            copy.write(chunk)
        copy.seek(0)
        magic = copy.read(4)
        copy.seek(0)
        media_type = MEDIA_DOCKER_LAYER_TAR
        if magic[:2] == b"\x1f\x8b":
            media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip"
            uncompressed = gzip.GzipFile(fileobj=copy)
        elif magic == b"\x28\xb5\x2f\xfd":
            import zstandard

            media_type = "application/vnd.docker.image.rootfs.diff.tar.zstd"
            uncompressed = zstandard.ZstdDecompressor().stream_reader(copy)
        else:
            uncompressed = copy
        diff_hash = hashlib.sha256()
        while chunk := uncompressed.read(_CHUNK):
            diff_hash.update(chunk)
        if "sha256:" + diff_hash.hexdigest() != diff_id:
            raise DigestMismatch(f"layer {layer_path}: content has diff ID "
                                 f"sha256:{diff_hash.hexdigest()}, the config says {diff_id}")
        digest = "sha256:" + blob_hash.hexdigest()
        copy.seek(0)
        _ingest(service, copy, digest, size, f"layer {layer_path}")
    return {"mediaType": media_type, "digest": digest, "size": size}


# --- export ---------------------------------------------------------------------------------------
def export_images(service, names: list[str], dest: str, format: str) -> None:
    """Write the images to `dest` whole or not at all (a temp name, then a rename).

    An existing `dest` is replaced only if it is what this format writes: a file for
    the tars, an OCI layout (or an empty directory) for "oci-dir"; never another dir."""
    if format not in FORMATS:
        raise InvalidArgument(f"unknown export format {format!r} (one of {', '.join(FORMATS)})")
    records = [service.get(name) for name in names]
    if not records:
        raise InvalidArgument("export: no image given")
    if os.path.isdir(dest) and (format != "oci-dir" or (
            os.listdir(dest) and not os.path.exists(os.path.join(dest, "oci-layout")))):
        raise InvalidArgument(f"export: {dest} is a directory that is not an OCI layout; "
                              "not replacing it")
    if format == "oci-dir" and os.path.lexists(dest) and not os.path.isdir(dest):
        raise InvalidArgument(f"export: {dest} exists and is not a directory")
    tmp = f"{dest}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        files = (_docker_files if format == "docker-archive" else _oci_files)(service, records)
        if format == "oci-dir":
            os.makedirs(tmp)
            for entry, source in files:
                target = os.path.join(tmp, entry)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _write_entry(service, source, target)
            _remove(dest)
        else:
            _write_tar(service, files, tmp)
        os.replace(tmp, dest)
    except BaseException as e:
        _remove(tmp)
        if is_out_of_space(e):
            raise NoSpace(f"export to {dest}: no space left on its filesystem") from None
        if isinstance(e, OSError):
            raise InvalidArgument(f"export to {dest}: {e.filename or ''}: {e.strerror}") \
                from None
        if isinstance(e, (KeyError, ValueError)):
            raise ContentInvalid(f"export to {dest}: an image's manifest or config is not "
                                 f"as expected: {e!r}") from None
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _manifest(service, record) -> dict:
    return json.loads(service.content.read(record.manifest_digest))


def _oci_files(service, records) -> list[tuple[str, object]]:
    """(path in the layout, bytes or a blob digest) for each file.

    An image whose name points to an index is written with that index, limited to the
    platform manifests whose blobs are all stored (a pull stores its own platform's only):
    every descriptor written has its blob (`ctr export` keeps the whole index, naming
    manifests it leaves out), and a re-import records the same image.  Unchanged (same
    digest) when all are stored."""
    blobs: dict[str, object] = {}
    entries = []
    for record in records:
        annotations = {"io.containerd.image.name": record.name,
                       "org.opencontainers.image.ref.name":
                           parse_reference(record.name).tag or "latest"}
        index = _stored_platforms_index(service, record)
        if index is not None:
            body, manifest_blobs = index
            blobs[sha256_digest(body)] = body
            blobs.update((digest, digest) for digest in manifest_blobs)
            entries.append(descriptor(record.target_media_type or MEDIA_INDEX, body,
                                      annotations=annotations))
            continue
        manifest = _manifest(service, record)
        for digest in (record.manifest_digest, manifest["config"]["digest"],
                       *(layer["digest"] for layer in manifest["layers"])):
            blobs[digest] = digest
        os_name, _, rest = record.platform.partition("/")
        architecture, _, variant = rest.partition("/")
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant
        entries.append(descriptor(
            manifest.get("mediaType") or MEDIA_MANIFEST, record.manifest_digest,
            len(service.content.read(record.manifest_digest)), platform=platform,
            annotations=annotations))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}
    files: list[tuple[str, object]] = [
        ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", canonical_json(index))]
    files += [(f"blobs/sha256/{digest[7:]}", blobs[digest]) for digest in sorted(blobs)]
    return files


def _stored_platforms_index(service, record) -> tuple[bytes, set[str]] | None:
    """(the record's index limited to its stored platform manifests, their blobs); None
    when the record names a manifest, or an import would not choose its manifest from
    that index (a pull for another platform): then the manifest is written alone."""
    from corral.images.service import host_manifest

    if record.target_digest == record.manifest_digest:
        return None
    body = service.content.read(record.target_digest)
    document = json.loads(body)
    manifests = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(manifests, list):
        return None
    kept, blobs = [], set()
    for entry in manifests:
        stored = _stored_manifest_blobs(service, entry)
        if stored:
            kept.append(entry)
            blobs |= stored
    chosen = host_manifest(kept)
    if chosen is None or chosen["digest"] != record.manifest_digest:
        return None
    if len(kept) < len(manifests):
        body = canonical_json(dict(document, manifests=kept))
    return body, blobs


def _stored_manifest_blobs(service, entry) -> set[str]:
    """The blobs of an index entry that is a manifest whose blobs are all stored, or none."""
    digest = entry.get("digest") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or not service.content.exists(digest):
        return set()
    try:
        manifest = json.loads(service.content.read(digest))
        parts = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    except (ValueError, KeyError, TypeError):
        return set()  # not a manifest (a nested index, say)
    if not all(isinstance(part, str) and service.content.exists(part) for part in parts):
        return set()
    return {digest, *parts}


def _docker_files(service, records) -> list[tuple[str, object]]:
    """docker save's classic layout: one manifest.json entry per image ID, all its names
    as RepoTags (a name by digest alone has no tag to give), layers as `<diff ID>.tar`."""
    manifest_json, repositories, files = [], {}, []
    written: set[str] = set()
    by_id: dict[str, list] = {}
    for record in records:
        by_id.setdefault(record.id, []).append(record)
    for image_id, same in by_id.items():
        record = same[0]
        manifest = _manifest(service, record)
        config = json.loads(service.content.read(image_id))
        diff_ids = config["rootfs"]["diff_ids"]
        layer_paths = []
        for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
            entry = f"{diff_id[7:]}.tar"
            layer_paths.append(entry)
            if entry not in written:
                written.add(entry)
                files.append((entry, ("layer", layer["digest"], layer["mediaType"])))
        config_entry = f"{image_id[7:]}.json"
        files.append((config_entry, image_id))
        tags = []
        for each in same:
            reference = parse_reference(each.name)
            if reference.tag:
                reference.digest = None
                tag = reference.familiar
                if tag not in tags:
                    tags.append(tag)
                    repository, _, tag_name = tag.rpartition(":")
                    repositories.setdefault(repository, {})[tag_name] = diff_ids[-1][7:]
        manifest_json.append({"Config": config_entry, "RepoTags": tags or None,
                              "Layers": layer_paths})
    files.append(("manifest.json", json.dumps(manifest_json).encode()))
    files.append(("repositories", json.dumps(repositories, sort_keys=True).encode()))
    return files


def _open_source(service, source):
    """(stream, size or None) of an entry: bytes, a blob, or a layer decompressed."""
    from corral.images.unpack import open_layer

    if isinstance(source, bytes):
        return io.BytesIO(source), len(source)
    if isinstance(source, tuple):
        _, digest, media_type = source
        return open_layer(service.content.path(digest), media_type), None
    path = service.content.path(source)
    return open(path, "rb"), os.path.getsize(path)


def _write_entry(service, source, target: str) -> None:
    stream, _ = _open_source(service, source)
    with stream, open(target, "wb") as out:
        shutil.copyfileobj(stream, out, _CHUNK)
    os.chmod(target, 0o644)


def _write_tar(service, files, dest: str) -> None:
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({os.path.dirname(entry) for entry, _ in files} - {""})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for entry, source in sorted(files, key=lambda item: item[0]):
            stream, size = _open_source(service, source)
            with stream:
                if size is None:  # a decompressed layer: its size is known once written
                    with tempfile.TemporaryFile(dir=service.content.ingest_dir) as spool:
                        shutil.copyfileobj(stream, spool, _CHUNK)
                        size = spool.tell()
                        spool.seek(0)
                        _add(tar, entry, spool, size)
                else:
                    _add(tar, entry, stream, size)


def _add(tar: tarfile.TarFile, entry: str, stream, size: int) -> None:
    info = tarfile.TarInfo(entry)
    info.size, info.mode, info.mtime = size, 0o644, 0
    tar.addfile(info, stream)
