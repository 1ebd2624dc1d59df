"""An overlayfs snapshotter, as containerd's: layers unpacked once, shared read-only.

    committed  a read-only layer, named by its chain ID, with a parent chain
    active     a writable snapshot on top of a parent: upper + work dirs
    view       a read-only view of a parent

`mounts(key)` gives the mount that makes a snapshot a root filesystem:
overlay with the parent chain as lowerdirs (nearest first), or a bind of a
lone directory.  Layers are applied through such a mount (`apply_layer`),
so a layer sees what the layers below it made (a symlinked /lib, say), and
overlayfs itself turns its deletes into whiteouts.

Metadata lives in the store's SQLite database, written before directories
are made or removed.  A snapshot's directory is named by an ID never given
twice (a counter in the database, committed with the snapshot's record
before the directory is made): a directory a crash left behind can never
be taken for a new snapshot's, and recovery removes every directory
without a record (`remove_stale_extractions`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager

from corral.images.errors import DigestMismatch, NotFound, SnapshotConflict
from corral.images.unpack import apply_layer as unpack_into
from corral.store.db import Database

EXTRACT_PREFIX = "extract-"


def _extraction_alive(key: str) -> bool:
    """Whether the process named in an extraction key (extract-<pid>-<chain>) still runs."""
    pid = key.removeprefix(EXTRACT_PREFIX).split("-", 1)[0]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


class Mount:
    def __init__(self, type: str, source: str, options: list[str]):
        self.type = type
        self.source = source
        self.options = options

    def mount(self, target: str) -> None:
        from corral.runtime import syscalls as k

        sc = k.Syscalls()
        if self.type == "bind":
            flags = k.MS_BIND | (k.MS_RDONLY if "ro" in self.options else 0)
            sc.mount(self.source, target, None, k.MS_BIND)
            if flags & k.MS_RDONLY:
                sc.mount(None, target, None, flags | k.MS_REMOUNT)
        else:
            sc.mount(self.source, target, self.type, 0, ",".join(self.options))

    def __repr__(self) -> str:
        return f"Mount({self.type!r}, {self.source!r}, {self.options!r})"


class OverlaySnapshotter:
    def __init__(self, root: str, db: Database):
        self.root = root
        self.db = db
        os.makedirs(os.path.join(root, "snapshots"), exist_ok=True)

    # --- lookups -------------------------------------------------------------------------------
    def _row(self, key: str):
        row = self.db.execute("SELECT id, parent, kind FROM snapshots WHERE key = ?",
                                   (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return row

    def exists(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM snapshots WHERE key = ?",
                                    (key,)).fetchone() is not None

    def _dir(self, snapshot_id: int, part: str = "fs") -> str:
        return os.path.join(self.root, "snapshots", str(snapshot_id), part)

    def _chain(self, key: str | None) -> list[str]:
        """The fs dirs of `key` and its ancestors, nearest first."""
        dirs = []
        while key is not None:
            snapshot_id, key, _ = self._row(key)
            dirs.append(self._dir(snapshot_id))
        return dirs

    # --- lifecycle -------------------------------------------------------------------------------
    def prepare(self, key: str, parent: str | None = None) -> list[Mount]:
        return self._create(key, parent, "active")

    def view(self, key: str, parent: str) -> list[Mount]:
        return self._create(key, parent, "view")

    def _create(self, key: str, parent: str | None, kind: str) -> list[Mount]:
        with self.db.transaction() as tx:
            if parent is not None:
                _, _, parent_kind = self._row(parent)
                if parent_kind != "committed":
                    raise SnapshotConflict(f"parent {parent!r} is not committed")
            if self.exists(key):
                raise SnapshotConflict(f"snapshot {key!r} already exists")
            snapshot_id = self._new_id(tx)
            tx.execute("INSERT INTO snapshots (key, id, parent, kind, created) "
                       "VALUES (?, ?, ?, ?, ?)", (key, snapshot_id, parent, kind, time.time()))
        # The record is committed first: a crash from here on leaves a record (undone by
        # whoever made it: recovery, for an extraction or a container), never a directory
        # whose ID is given again.
        try:
            os.makedirs(self._dir(snapshot_id), mode=0o755)
            if kind == "active":
                os.makedirs(self._dir(snapshot_id, "work"), mode=0o700)
        except BaseException:
            self.remove(key)
            raise
        return self.mounts(key)

    def _new_id(self, tx) -> int:
        """An ID never given before; one whose directory exists (left by a version that
        reused IDs) is skipped, for recovery to remove."""
        while True:
            (snapshot_id,) = tx.execute(
                "UPDATE snapshot_ids SET last = last + 1 RETURNING last").fetchone()
            if not os.path.lexists(os.path.join(self.root, "snapshots", str(snapshot_id))):
                return snapshot_id

    def commit(self, name: str, key: str) -> None:
        """An active snapshot becomes the read-only `name` (e.g. a chain ID)."""
        with self.db.transaction() as tx:
            snapshot_id, _, kind = self._row(key)
            if kind != "active":
                raise SnapshotConflict(f"snapshot {key!r} is not active")
            if self.exists(name):
                raise SnapshotConflict(f"snapshot {name!r} already exists")
            tx.execute("UPDATE snapshots SET key = ?, kind = 'committed' WHERE key = ?",
                       (name, key))
        shutil.rmtree(self._dir(snapshot_id, "work"), ignore_errors=True)

    def remove(self, key: str) -> None:
        with self.db.transaction() as tx:
            snapshot_id, _, _ = self._row(key)
            child = tx.execute("SELECT key FROM snapshots WHERE parent = ?", (key,)).fetchone()
            if child is not None:
                raise SnapshotConflict(f"snapshot {key!r} is the parent of {child[0]!r}")
            tx.execute("DELETE FROM snapshots WHERE key = ?", (key,))
        shutil.rmtree(os.path.join(self.root, "snapshots", str(snapshot_id)), ignore_errors=True)

    @contextmanager
    def locked(self, key: str):
        """One writer of a snapshot at a time, across threads and processes (flock)."""
        directory = os.path.join(self.root, "locks")
        os.makedirs(directory, exist_ok=True)
        name = key.replace("/", "_").replace(":", "-")
        fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) a snapshot's own directory holds: a container's writable layer."""
        snapshot_id, _, _ = self._row(key)
        used = inodes = 0
        for directory, _, files in os.walk(self._dir(snapshot_id)):
            inodes += 1 + len(files)
            for name in files:
                try:
                    used += os.lstat(os.path.join(directory, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return used, inodes

    def mounts(self, key: str) -> list[Mount]:
        snapshot_id, parent, kind = self._row(key)
        lower = self._chain(parent)
        if kind == "active":
            if not lower:
                return [Mount("bind", self._dir(snapshot_id), ["rbind", "rw"])]
            return [Mount("overlay", "overlay", [
                f"workdir={self._dir(snapshot_id, 'work')}",
                f"upperdir={self._dir(snapshot_id)}",
                "lowerdir=" + ":".join(lower)])]
        chain = self._chain(key) if kind == "committed" else lower
        if len(chain) == 1:
            return [Mount("bind", chain[0], ["rbind", "ro"])]
        return [Mount("overlay", "overlay", ["lowerdir=" + ":".join(chain)])]

    def remove_stale_extractions(self) -> int:
        """Undo layer applications whose process died (a crash): mounts, snapshots, dirs."""
        from corral.runtime.syscalls import MNT_DETACH, Syscalls

        removed = 0
        apply_dir = os.path.join(self.root, "apply")
        for name in os.listdir(apply_dir) if os.path.isdir(apply_dir) else []:
            if _extraction_alive(name):
                continue
            path = os.path.join(apply_dir, name)
            # The mount is <name>/rootfs; commits before that mounted <name> itself.
            for mountpoint in (os.path.join(path, "rootfs"), path):
                try:
                    Syscalls().umount(mountpoint, MNT_DETACH)
                except OSError:
                    pass
            for directory in (os.path.join(path, "rootfs"), path):
                try:
                    os.rmdir(directory)  # never rmtree: a mount left there is a layer's files
                except FileNotFoundError:
                    pass
        rows = self.db.execute("SELECT key FROM snapshots WHERE kind = 'active' AND "
                                    "key LIKE ?", (EXTRACT_PREFIX + "%",)).fetchall()
        for (key,) in rows:
            if not _extraction_alive(key):
                self.remove(key)
                removed += 1
        return removed + self._remove_unrecorded_dirs()

    def _remove_unrecorded_dirs(self) -> int:
        """Snapshot directories without a record: a removal a crash cut short (or a
        creation, in versions that made the directory before committing the record)."""
        # Listed before the records are read: a snapshot being made now has its record
        # committed before its directory exists, so it is never taken for a leftover.
        snapshots_dir = os.path.join(self.root, "snapshots")
        names = [name for name in os.listdir(snapshots_dir) if name.isdigit()]
        recorded = {str(snapshot_id) for (snapshot_id,) in
                    self.db.execute("SELECT id FROM snapshots").fetchall()}
        removed = 0
        for name in names:
            if name not in recorded:
                shutil.rmtree(os.path.join(snapshots_dir, name), ignore_errors=True)
                removed += 1
        return removed

    # --- layers ----------------------------------------------------------------------------------
    def apply_layer(self, chain_id: str, parent: str | None, stream, *, limit: int,
                    expected_diff_id: str | None = None) -> str:
        """Unpack a layer on top of `parent` and commit it as `chain_id`; its diff ID.

        A failure, or a diff ID other than the image config promised, removes the
        half-made snapshot: nothing is left.
        """
        key = f"{EXTRACT_PREFIX}{os.getpid()}-{chain_id}"
        (mount,) = self.prepare(key, parent)
        try:
            # Under the root, not /tmp: a crash mid-apply leaves a mount that
            # `remove_stale_extractions` finds.  Each extraction has a directory of
            # its own above its mount: nothing there is shared with another one.
            private = os.path.join(self.root, "apply", key)
            target = os.path.join(private, "rootfs")
            os.makedirs(os.path.dirname(private), exist_ok=True)
            os.makedirs(private, mode=0o700)
            os.mkdir(target)
            try:
                mount.mount(target)
                try:
                    diff_id = unpack_into(stream, target, limit=limit)
                finally:
                    from corral.runtime.syscalls import MNT_DETACH, Syscalls

                    Syscalls().umount(target, MNT_DETACH)
            finally:
                os.rmdir(target)
                os.rmdir(private)
            if expected_diff_id is not None and diff_id != expected_diff_id:
                raise DigestMismatch(f"layer {chain_id}: diff ID {diff_id}, the image config "
                                     f"says {expected_diff_id}")
            self.commit(chain_id, key)
        except BaseException:
            self._discard(key)
            raise
        return diff_id

    def _discard(self, key: str) -> None:
        """Remove a failed extraction at once, its files before its record: on a full disk
        that frees the space the record's removal needs (SQLite writes to delete a row)."""
        if not self.exists(key):
            return
        snapshot_id, _, _ = self._row(key)
        shutil.rmtree(os.path.join(self.root, "snapshots", str(snapshot_id)), ignore_errors=True)
        self.remove(key)
