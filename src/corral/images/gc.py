"""Garbage collection of the data root, as containerd's: what no root reaches is removed.

    roots       image records, and active/view snapshots (containers' root filesystems)
    reachable   from an image: its target (index or manifest), the index's manifests that
                are stored, each manifest's config and layers, and the layers' snapshots
                (chain IDs from the config's diff_ids); from a snapshot: its parents
    removed     every other blob and committed snapshot (children before parents), and
                files in content/ingest older than an hour (a crashed writer's)

Locking: the Puller holds LOCK_SH on <root>/gc.lock during a pull (from its
first stored blob to its record), and so does an import; collection holds
LOCK_EX, so it never sees a blob that is stored but not yet named.  The lock
is `ImageService.gc_lock(shared)` (flock: separate processes and separate
threads of one process both exclude each other).

Deferred collection: a removal never waits for a pull (`collect(wait=False)`).
It first leaves <root>/gc.pending, then tries the lock; a collection removes
the file once it holds the lock, before it reads what is reachable.  Whoever
releases the lock (a pull or import, or a collection) collects if the file
is there and the lock is free.  If the lock is not free, someone holds it
who will do the same on release; so a request is never lost, and a holder
that dies (SIGKILL) leaves the file for the next collection, which collects
everything unreachable anyway.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import time
from contextlib import contextmanager

from corral.spec.image import chain_ids

STRAY_AGE = 3600.0
PENDING = "gc.pending"


class Report:
    def __init__(self):
        self.blobs = 0
        self.snapshots = 0
        self.bytes = 0
        self.images: list[str] = []  # names removed first (prune)
        self.removed_images: dict[str, list[str]] = {}  # image ID → those of its names

    def add(self, other: Report) -> None:
        self.blobs += other.blobs
        self.snapshots += other.snapshots
        self.bytes += other.bytes

    def __repr__(self) -> str:
        return (f"Report(images={len(self.images)}, blobs={self.blobs}, "
                f"snapshots={self.snapshots}, bytes={self.bytes})")


@contextmanager
def lock(root: str, shared: bool, wait: bool = True, on_wait=None):
    """Yield True once the lock is held; False (without it) if `wait` is off and it is busy.
    `on_wait()` is called before waiting, if it must."""
    fd = os.open(os.path.join(root, "gc.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield True
    finally:
        os.close(fd)


def _json(service, digest: str) -> dict:
    try:
        value = json.loads(service.content.read(digest))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def reachable(service) -> tuple[set[str], set[str]]:
    """(blob digests, snapshot keys) that images reach."""
    blobs: set[str] = set()
    snapshots: set[str] = set()
    for record in service.list():
        manifests = [record.manifest_digest]
        blobs.update((record.target_digest, record.manifest_digest, record.id))
        target = _json(service, record.target_digest)
        for entry in target.get("manifests") or []:
            digest = entry.get("digest") if isinstance(entry, dict) else None
            if isinstance(digest, str) and service.content.exists(digest):
                blobs.add(digest)
                manifests.append(digest)
        for digest in manifests:
            manifest = _json(service, digest)
            config = manifest.get("config") or {}
            if isinstance(config.get("digest"), str):
                blobs.add(config["digest"])
            for layer in manifest.get("layers") or []:
                if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                    blobs.add(layer["digest"])
        diff_ids = (_json(service, record.id).get("rootfs") or {}).get("diff_ids") or []
        try:
            snapshots.update(chain_ids(diff_ids))
        except ValueError:
            pass
    return blobs, snapshots


def _snapshot_rows(service) -> list[tuple[str, str | None, str, int]]:
    return service.db.execute(
        "SELECT key, parent, kind, id FROM snapshots ORDER BY id DESC").fetchall()


def image_in_use(service, record) -> bool:
    """Whether a container uses the image: corrald records it (from before its snapshot is
    made: a container being created counts), or an active or view snapshot stands on the
    image's top layer."""
    if service.db.execute("SELECT 1 FROM containers WHERE image_id = ? LIMIT 1",
                          (record.id,)).fetchone() is not None:
        return True
    diff_ids = (_json(service, record.id).get("rootfs") or {}).get("diff_ids") or []
    if not diff_ids:
        return False
    top = chain_ids(diff_ids)[-1]
    rows = _snapshot_rows(service)
    parents = {key: parent for key, parent, _, _ in rows}
    for _, parent, kind, _ in rows:
        if kind == "committed":
            continue
        while parent is not None:
            if parent == top:
                return True
            parent = parents.get(parent)
    return False


def request(root: str) -> None:
    """Ask for a collection: the next holder of the lock to release it does one."""
    os.close(os.open(os.path.join(root, PENDING), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                     0o600))


def requested(root: str) -> bool:
    return os.path.exists(os.path.join(root, PENDING))


def collect(service, wait: bool = True, stray_age: float = STRAY_AGE,
            on_wait=None) -> Report | None:
    """Collect now (None, with a request left, if `wait` is off and the lock is busy);
    then again while a removal asked for one during this collection."""
    report = _collect(service, wait, stray_age, on_wait)
    while report is not None and requested(service.root):
        again = _collect(service, False, stray_age)
        if again is None:
            break  # the lock is held again: its holder collects when it releases it
        report.add(again)
    return report


def _collect(service, wait: bool, stray_age: float, on_wait=None) -> Report | None:
    if not wait:
        request(service.root)  # before trying: whoever holds the lock sees it on release
    with lock(service.root, shared=False, wait=wait, on_wait=on_wait) as held:
        if not held:
            return None
        try:
            os.unlink(os.path.join(service.root, PENDING))
        except FileNotFoundError:
            pass
        report = Report()
        blobs, keep = reachable(service)
        rows = _snapshot_rows(service)
        parents = {key: parent for key, parent, _, _ in rows}
        for key, parent, kind, _ in rows:
            if kind != "committed":
                keep.add(key)
                while parent is not None:
                    keep.add(parent)
                    parent = parents.get(parent)
        for key, _, kind, _ in rows:  # newest first: children before parents
            if kind == "committed" and key not in keep:
                service.snapshots.remove(key)
                report.snapshots += 1
        for digest in service.content.digests():
            if digest not in blobs:
                path = service.content.path(digest)
                try:
                    report.bytes += os.lstat(path).st_size
                except FileNotFoundError:
                    continue
                service.content.delete(digest)
                report.blobs += 1
        now = time.time()
        for name in os.listdir(service.content.ingest_dir):
            path = os.path.join(service.content.ingest_dir, name)
            try:
                info = os.lstat(path)
                if now - info.st_mtime < stray_age:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        return report
