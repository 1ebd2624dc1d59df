"""The metadata database: one SQLite file in WAL mode, schema by numbered migrations.

State that matters is written here before it is acted on; every change
runs in a transaction (`with db.transaction() as tx:`), so a crash leaves
the database as before or after a change, never half of it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager

# Append only: a migration, once released, is never edited.
MIGRATIONS: list[str] = [
    # 1: snapshots (the overlayfs snapshotter)
    """
    CREATE TABLE snapshots (
        key TEXT PRIMARY KEY,
        id INTEGER NOT NULL UNIQUE,
        parent TEXT REFERENCES snapshots(key),
        kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
        created REAL NOT NULL
    );
    CREATE INDEX snapshots_parent ON snapshots(parent);
    """,
    # 2: images (name → manifest; the image ID is the config digest, as CRI expects)
    """
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        manifest_digest TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX images_config ON images(config_digest);
    """,
    # 3: pods and containers (corrald; store/sandboxes.py), written before they are acted on
    """
    CREATE TABLE pods (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        namespace TEXT NOT NULL,
        uid TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'notready', 'removing')),
        created INTEGER NOT NULL,
        handler TEXT NOT NULL,
        config BLOB NOT NULL,
        ip TEXT NOT NULL DEFAULT '',
        namespaces TEXT NOT NULL DEFAULT '{}',
        shim_pid INTEGER NOT NULL DEFAULT 0,
        cgroup_parent TEXT NOT NULL DEFAULT '',
        UNIQUE (name, namespace, uid, attempt)
    );
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        pod_id TEXT NOT NULL REFERENCES pods(id),
        name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'created', 'running', 'exited',
                                             'removing')),
        image TEXT NOT NULL,
        image_id TEXT NOT NULL,
        created INTEGER NOT NULL,
        started INTEGER NOT NULL DEFAULT 0,
        finished INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        config BLOB NOT NULL,
        log_path TEXT NOT NULL DEFAULT '',
        UNIQUE (pod_id, name, attempt)
    );
    CREATE INDEX containers_pod ON containers(pod_id);
    """,
    # 4: what an image name points to (an index or a manifest) and the platform chosen
    """
    ALTER TABLE images ADD COLUMN target_digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE images ADD COLUMN target_media_type TEXT NOT NULL DEFAULT '';
    ALTER TABLE images ADD COLUMN platform TEXT NOT NULL DEFAULT ''
    """,
    # 5: the last snapshot ID given out, so none is given twice (MAX(id) + 1 gave a removed
    # snapshot's ID again, and its directory, if a crash had left it, made the next one fail)
    """
    CREATE TABLE snapshot_ids (last INTEGER NOT NULL);
    INSERT INTO snapshot_ids (last) SELECT COALESCE(MAX(id), 0) FROM snapshots
    """,
]


class Rows(list):
    """A read's rows, with the cursor methods callers use."""

    def fetchone(self):
        return self[0] if self else None

    def fetchall(self) -> list:
        return list(self)


class Database:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        # One connection shared by a daemon's threads (gRPC serves on a pool): statements are
        # serialized by SQLite itself, transactions by `self.lock`.
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30,
                                    check_same_thread=False)
        self.lock = threading.RLock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self.transaction() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {number}")

    def execute(self, sql: str, args: tuple = ()) -> Rows:
        """A read, run to completion under the lock.

        A statement left open on the shared connection would hold a read snapshot
        into another thread's BEGIN IMMEDIATE, which SQLite then refuses at once
        ("database is locked", no busy wait): so reads never stay open."""
        with self.lock:
            return Rows(self.conn.execute(sql, args).fetchall())

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK if the block raises."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
