"""Pods and containers in the metadata database: the records corrald acts on.

Every change of state is written here before it is acted on: a pod or a
container is inserted as `creating` before anything is made for it, and
marked `removing` before anything is torn down, so the recovery after a
crash knows what may be half-made and must be undone.  The schema is
migration 3 in store/db.py.
"""

from __future__ import annotations

import json

from corral.store.db import Database

_POD_FIELDS = ("id", "name", "namespace", "uid", "attempt", "state", "created", "handler",
               "config", "ip", "namespaces", "shim_pid", "cgroup_parent")
_CONTAINER_FIELDS = ("id", "pod_id", "name", "attempt", "state", "image", "image_id", "created",
                     "started", "finished", "exit_code", "reason", "message", "config",
                     "log_path")


class Row:
    """A record: attributes named as the columns."""

    def __init__(self, fields, values):
        for field, value in zip(fields, values, strict=True):
            setattr(self, field, value)


class PodRecord(Row):
    @property
    def pinned(self) -> dict[str, str]:
        return json.loads(self.namespaces)


class ContainerRecord(Row):
    pass


class SandboxStore:
    def __init__(self, db: Database):
        self.db = db

    # --- pods ----------------------------------------------------------------------------------
    def add_pod(self, **values) -> None:
        columns = ", ".join(values)
        with self.db.transaction() as tx:
            tx.execute(f"INSERT INTO pods ({columns}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))

    def update_pod(self, pod_id: str, **values) -> None:
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self.db.transaction() as tx:
            tx.execute(f"UPDATE pods SET {assignments} WHERE id = ?", (*values.values(), pod_id))

    def remove_pod(self, pod_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM containers WHERE pod_id = ?", (pod_id,))
            tx.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    def pod(self, pod_id: str) -> PodRecord | None:
        row = self.db.execute(f"SELECT {', '.join(_POD_FIELDS)} FROM pods WHERE id = ?",
                                   (pod_id,)).fetchone()
        return PodRecord(_POD_FIELDS, row) if row else None

    def pods(self) -> list[PodRecord]:
        rows = self.db.execute(f"SELECT {', '.join(_POD_FIELDS)} FROM pods "
                                    "ORDER BY created").fetchall()
        return [PodRecord(_POD_FIELDS, row) for row in rows]

    def find_pod(self, ident: str) -> PodRecord | None:
        """By full ID or by an ID prefix only one pod has."""
        return self._find("pods", ident, self.pod)

    # --- containers ----------------------------------------------------------------------------
    def add_container(self, **values) -> None:
        columns = ", ".join(values)
        with self.db.transaction() as tx:
            tx.execute(f"INSERT INTO containers ({columns}) VALUES "
                       f"({', '.join('?' * len(values))})", tuple(values.values()))

    def update_container(self, container_id: str, **values) -> None:
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self.db.transaction() as tx:
            tx.execute(f"UPDATE containers SET {assignments} WHERE id = ?",
                       (*values.values(), container_id))

    def remove_container(self, container_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def container(self, container_id: str) -> ContainerRecord | None:
        row = self.db.execute(f"SELECT {', '.join(_CONTAINER_FIELDS)} FROM containers "
                                   "WHERE id = ?", (container_id,)).fetchone()
        return ContainerRecord(_CONTAINER_FIELDS, row) if row else None

    def containers(self, pod_id: str | None = None) -> list[ContainerRecord]:
        query = f"SELECT {', '.join(_CONTAINER_FIELDS)} FROM containers"
        args: tuple = ()
        if pod_id is not None:
            query += " WHERE pod_id = ?"
            args = (pod_id,)
        rows = self.db.execute(query + " ORDER BY created", args).fetchall()
        return [ContainerRecord(_CONTAINER_FIELDS, row) for row in rows]

    def find_container(self, ident: str) -> ContainerRecord | None:
        """By full ID or by an ID prefix only one container has."""
        return self._find("containers", ident, self.container)

    def _find(self, table: str, ident: str, by_id):
        if not ident:
            return None
        record = by_id(ident)
        if record is None and len(ident) < 64:
            rows = self.db.execute(f"SELECT id FROM {table} WHERE id >= ? AND id < ?",
                                        (ident, ident + "\uffff")).fetchall()
            if len(rows) == 1:
                record = by_id(rows[0][0])
        return record

    def images_in_use(self) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT image_id FROM containers").fetchall()
        return {row[0] for row in rows}
