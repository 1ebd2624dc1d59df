"""Test images with every kind of tar entry, and the tree they must unpack to.

A layer is a list of entries (dicts): `name`, `type` (file, dir, symlink,
link, fifo, char, block), `data`, `mode`, `uid`, `gid`, `mtime`, `target`
(symlink or hard link), `xattrs` ({name: bytes}), `device` ((major, minor)).
`LayoutWriter` turns layers into OCI images (gzip, zstd or plain tar) in an
OCI layout, with indexes for several platforms, ready for `skopeo copy`.

`expected_tree()` applies layers in memory the way an image's layers are
defined (`.wh.NAME` deletes, `.wh..wh..opq` hides what lower layers had in
the directory, a later entry replaces an earlier one), and `tree_of()`
reads a real directory into the same shape, so an unpacked rootfs can be
compared with what was pushed field by field: type, mode, owner, size,
content hash, link target, device numbers, xattrs, mtime, and which paths
are one inode (hard links).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import stat
import struct
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import zstandard

from corral.spec.image import (
    MEDIA_CONFIG,
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_TAR,
    MEDIA_LAYER_ZSTD,
    MEDIA_MANIFEST,
    canonical_json,
    descriptor,
)

COMPRESSORS = {
    "gzip": (MEDIA_LAYER_GZIP, lambda tar: gzip.compress(tar, mtime=0)),
    "zstd": (MEDIA_LAYER_ZSTD, lambda tar: zstandard.ZstdCompressor().compress(tar)),
    "tar": (MEDIA_LAYER_TAR, lambda tar: tar),
    "nondistributable": ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                         lambda tar: gzip.compress(tar, mtime=0)),
    # bytes already zstd-compressed (pass diff_ids: the one computed is of the blob)
    "zstd-ready": (MEDIA_LAYER_ZSTD, lambda blob: blob),
}
# Docker schema 2 names the same things differently (and has no zstd)
DOCKER_MEDIA_TYPES = {
    MEDIA_MANIFEST: MEDIA_DOCKER_MANIFEST,
    MEDIA_CONFIG: MEDIA_DOCKER_CONFIG,
    MEDIA_LAYER_GZIP: MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_LAYER_TAR: "application/vnd.docker.image.rootfs.diff.tar",
    MEDIA_INDEX: MEDIA_DOCKER_MANIFEST_LIST,
}
DEFAULT_MTIME = 1_600_000_000
# Which xattrs the comparison looks at: what images carry (the overlay's own are hidden).
XATTR_PREFIXES = ("user.", "security.capability")


def file_capability(bit: int) -> bytes:
    """A VFS_CAP_REVISION_2 security.capability value: capability `bit`, permitted+effective."""
    return struct.pack("<IIIII", 0x02000001, 1 << bit, 0, 0, 0)


# --- building layers and layouts --------------------------------------------------------------
def layer_tar(entries: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry["name"])
            kind = entry.get("type", "file")
            info.mode = entry.get("mode", 0o777 if kind == "symlink" else 0o644)
            info.uid = entry.get("uid", 0)
            info.gid = entry.get("gid", 0)
            info.mtime = entry.get("mtime", DEFAULT_MTIME)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
                         "symlink": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE,
                         "block": tarfile.BLKTYPE}[kind]
            if kind in ("symlink", "link"):
                info.linkname = entry["target"]
            if kind in ("char", "block"):
                info.devmajor, info.devminor = entry["device"]
            info.pax_headers = {"SCHILY.xattr." + key: value.decode("utf-8", "surrogateescape")
                                for key, value in entry.get("xattrs", {}).items()}
            data = entry.get("data", b"")
            if kind == "file":
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buffer.getvalue()


class LayoutWriter:
    """Images into one OCI layout directory: `image()` per platform, then `finish()`.

    With `docker`, the manifests, configs, layers and index carry Docker schema 2 media
    types (push them with `skopeo copy --preserve-digests`, which keeps them)."""

    def __init__(self, dest: str, docker: bool = False):
        self.dest = dest
        self.media = (lambda oci: DOCKER_MEDIA_TYPES[oci]) if docker else (lambda oci: oci)
        os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(dest, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> None:
        path = os.path.join(self.dest, "blobs", "sha256", hashlib.sha256(data).hexdigest())
        with open(path, "wb") as f:
            f.write(data)

    def image(self, layers: list[tuple[list[dict] | bytes, str]], *,
              architecture: str = "amd64", variant: str = "",
              diff_ids: list[str] | None = None) -> dict:
        """A manifest for (entries or raw tar bytes, compression) layers; its descriptor, with
        the platform.  `diff_ids` replaces what the config would truthfully list."""
        layer_descriptors, true_diff_ids = [], []
        for entries, compression in layers:
            tar = entries if isinstance(entries, bytes) else layer_tar(entries)
            media_type, compress = COMPRESSORS[compression]
            blob = compress(tar)
            self.blob(blob)
            layer_descriptors.append(descriptor(self.media(media_type), blob))
            true_diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        platform = {"architecture": architecture, "os": "linux"}
        if variant:
            platform["variant"] = variant
        config = canonical_json({**platform, "config": {"Cmd": ["sh"]},
                                 "rootfs": {"type": "layers",
                                            "diff_ids": diff_ids or true_diff_ids}})
        manifest = canonical_json({"schemaVersion": 2, "mediaType": self.media(MEDIA_MANIFEST),
                                   "config": descriptor(self.media(MEDIA_CONFIG), config),
                                   "layers": layer_descriptors})
        self.blob(config)
        self.blob(manifest)
        return descriptor(self.media(MEDIA_MANIFEST), manifest, platform=platform)

    def index(self, manifests: list[dict]) -> dict:
        index = canonical_json({"schemaVersion": 2, "mediaType": self.media(MEDIA_INDEX),
                                "manifests": manifests})
        self.blob(index)
        return descriptor(self.media(MEDIA_INDEX), index)

    def finish(self, top: dict, tag: str = "latest") -> str:
        with open(os.path.join(self.dest, "index.json"), "wb") as f:
            f.write(canonical_json({"schemaVersion": 2, "manifests": [
                dict(top, annotations={"org.opencontainers.image.ref.name": tag})]}))
        return self.dest


# --- the expected tree ------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    content: str | None = None  # sha256 of a file's bytes
    target: str | None = None  # a symlink's
    device: tuple[int, int] | None = None
    xattrs: tuple = ()
    mtime: int | None = None  # None: not defined (a directory a later layer changed)
    inode: int = field(default=0, compare=False)  # hard links share one (files only)


def expected_tree(layers: list[list[dict]]) -> dict[str, Node]:
    """What the layers unpack to, path → Node, as overlay-based unpackers (containerd,
    corral) make it."""
    tree: dict[str, Node] = {}
    inodes = itertools.count(1)
    for layer in layers:
        touched_dirs: set[str] = set()  # whose children this layer changed
        own_dirs: set[str] = set()  # which this layer itself lists
        written: set[str] = set()  # a whiteout hides lower layers' paths, not these
        for entry in layer:
            name = entry["name"].strip("/")
            parent, base = os.path.dirname(name), os.path.basename(name)
            for ancestor in _ancestors(parent):
                touched_dirs.add(ancestor)
            if base == ".wh..wh..opq":
                for path in [p for p in tree if p.startswith(parent + "/")]:
                    del tree[path]
                continue
            if base.startswith(".wh."):
                if os.path.join(parent, base[4:]) not in written:
                    _delete(tree, os.path.join(parent, base[4:]))
                continue
            written.add(name)
            kind = entry.get("type", "file")
            if kind == "dir":
                own_dirs.add(name)
                if name in tree and tree[name].kind == "dir":
                    tree[name] = _node(entry, 0)
                    continue
            _delete(tree, name)
            if kind == "link":
                target = entry["target"].strip("/")
                tree[name] = tree[target]
                continue
            tree[name] = _node(entry, next(inodes) if kind == "file" else 0)
        for directory in touched_dirs - own_dirs:
            if directory in tree and tree[directory].mtime is not None:
                tree[directory] = replace(tree[directory], mtime=None)
    return tree


def _ancestors(path: str):
    while path:
        yield path
        path = os.path.dirname(path)


def _delete(tree: dict, path: str) -> None:
    for key in [p for p in tree if p == path or p.startswith(path + "/")]:
        del tree[key]


def _node(entry: dict, inode: int) -> Node:
    kind = entry.get("type", "file")
    data = entry.get("data", b"")
    mode = 0o777 if kind == "symlink" else entry.get("mode", 0o644)
    return Node(kind=kind, mode=mode, uid=entry.get("uid", 0), gid=entry.get("gid", 0),
                size=len(data) if kind == "file" else 0,
                content=hashlib.sha256(data).hexdigest() if kind == "file" else None,
                target=entry.get("target") if kind == "symlink" else None,
                device=tuple(entry["device"]) if kind in ("char", "block") else None,
                xattrs=tuple(sorted(entry.get("xattrs", {}).items())),
                mtime=entry.get("mtime", DEFAULT_MTIME), inode=inode)


# --- the actual tree --------------------------------------------------------------------------
def tree_of(root: str) -> dict[str, Node]:
    """A directory read into Nodes; `inode` is the real one, to compare hard-link groups."""
    tree = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            mode = info.st_mode
            kind = ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else
                    "fifo" if stat.S_ISFIFO(mode) else "char" if stat.S_ISCHR(mode) else
                    "block" if stat.S_ISBLK(mode) else "file")
            content = None
            if kind == "file":
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            xattrs = () if kind == "symlink" else tuple(sorted(
                (key, os.getxattr(path, key, follow_symlinks=False))
                for key in os.listxattr(path, follow_symlinks=False)
                if key.startswith(XATTR_PREFIXES)))
            tree[os.path.relpath(path, root)] = Node(
                kind=kind, mode=0o777 if kind == "symlink" else stat.S_IMODE(mode),
                uid=info.st_uid, gid=info.st_gid, size=info.st_size if kind == "file" else 0,
                content=content, target=os.readlink(path) if kind == "symlink" else None,
                device=(os.major(info.st_rdev), os.minor(info.st_rdev))
                if kind in ("char", "block") else None,
                xattrs=xattrs, mtime=int(info.st_mtime), inode=info.st_ino)
    return tree


def hard_link_groups(tree: dict[str, Node]) -> set[frozenset[str]]:
    """Sets of paths that are one file (only sets of two or more)."""
    groups: dict[int, set[str]] = {}
    for path, node in tree.items():
        if node.kind == "file":
            groups.setdefault(node.inode, set()).add(path)
    return {frozenset(paths) for paths in groups.values() if len(paths) > 1}


def differences(expected: dict[str, Node], actual: dict[str, Node]) -> list[str]:
    """Every way `actual` differs from `expected`, one line each (empty: the same)."""
    problems = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected: {p}" for p in sorted(actual.keys() - expected.keys())]
    for path in sorted(expected.keys() & actual.keys()):
        want, got = expected[path], actual[path]
        if want.mtime is None:
            got = replace(got, mtime=None)
        if want != got:
            fields = [f"{name}: want {getattr(want, name)!r}, got {getattr(got, name)!r}"
                      for name in ("kind", "mode", "uid", "gid", "size", "content", "target",
                                   "device", "xattrs", "mtime")
                      if getattr(want, name) != getattr(got, name)]
            problems.append(f"{path}: {'; '.join(fields)}")
    want_groups, got_groups = hard_link_groups(expected), hard_link_groups(actual)
    if want_groups != got_groups:
        problems.append(f"hard links: want {sorted(map(sorted, want_groups))}, "
                        f"got {sorted(map(sorted, got_groups))}")
    return problems


@contextmanager
def mounted_image(service, name: str):
    """The unpacked image `name` as a directory: a read-only view of its snapshots."""
    import tempfile

    from corral.runtime.syscalls import MNT_DETACH, Syscalls

    top = service.unpack(name)
    target = tempfile.mkdtemp(prefix="corral-view-")
    key = f"test-view-{os.getpid()}-{os.path.basename(target)}"
    try:
        for mount in service.snapshots.view(key, top):
            mount.mount(target)
        try:
            yield target
        finally:
            Syscalls().umount(target, MNT_DETACH)
    finally:
        service.snapshots.remove(key)
        os.rmdir(target)
