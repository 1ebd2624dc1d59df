"""A container's on-disk record under the runtime root: `<root>/<id>/state.json`.

The status is never stored; it is derived each time from the init process
(alive? same start time, so a reused PID is not mistaken for it), the
exec FIFO (present until `start`) and the cgroup freezer.
"""

from __future__ import annotations

import os
import time

from corral.runtime.errors import ContainerNotFound, InvalidID
from corral.spec import fastjson

STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
_ID_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def check_id(container_id: str) -> None:
    """IDs name directories: refuse anything that could escape the root (as runc does)."""
    if not container_id or not _ID_CHARACTERS.issuperset(container_id) or container_id in (
            ".", ".."):
        raise InvalidID(f"invalid container id format: {container_id!r}")


def process_start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class ContainerState:
    """What `create` records; everything else about a container is derived."""

    FIELDS = ("id", "bundle", "rootfs", "pid", "pid_start", "created", "owner", "oci_version",
              "annotations", "cgroup", "hooks", "process", "seccomp", "host_mounts")

    def __init__(self, *, id: str, bundle: str, rootfs: str, pid: int, pid_start: int,
                 created: str, owner: str, oci_version: str,
                 annotations: dict[str, str] | None = None, cgroup: dict | None = None,
                 hooks: dict | None = None, process: dict | None = None,
                 seccomp: dict | None = None, host_mounts: bool = False, root: str = ""):
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.pid_start = pid_start  # start time of the init: a reused PID is not ours
        self.created = created
        self.owner = owner
        self.oci_version = oci_version
        self.annotations = annotations or {}
        self.cgroup = cgroup  # the cgroup manager's to_state()
        self.hooks = hooks or {}
        self.process = process or {}  # config.json's process: what `exec` starts from
        self.seccomp = seccomp  # linux.seccomp: exec'd processes get it too
        # No mount namespace of its own: its mounts live under rootfs in ours, and
        # delete takes them down.
        self.host_mounts = host_mounts
        self.root = root

    # --- where it lives --------------------------------------------------------
    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def fifo_path(self) -> str:
        return os.path.join(self.dir, EXEC_FIFO)

    # --- status ----------------------------------------------------------------
    def init_alive(self) -> bool:
        return self.pid > 0 and process_start_time(self.pid) == self.pid_start

    def status(self) -> str:
        if not self.init_alive():
            return "stopped"
        if os.path.exists(self.fifo_path):
            return "created"
        if self.cgroup and _frozen(self.cgroup):
            return "paused"
        return "running"

    def oci_state(self) -> dict:
        """The OCI state JSON (plus runc's `created` and `owner`)."""
        status = self.status()
        return {
            "ociVersion": self.oci_version,
            "id": self.id,
            "pid": self.pid if status != "stopped" else 0,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        }

    # --- persistence -----------------------------------------------------------
    def save(self) -> None:
        """Write atomically: a crash leaves the old state or the new one, never half."""
        data = {name: getattr(self, name) for name in self.FIELDS}
        tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(fastjson.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.dir, STATE_FILE))

    @classmethod
    def load(cls, root: str, container_id: str) -> ContainerState:
        check_id(container_id)
        try:
            with open(os.path.join(root, container_id, STATE_FILE), "rb") as f:
                data = fastjson.loads(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise ContainerNotFound(container_id) from None
        return cls(root=root, **data)


def list_ids(root: str) -> list[str]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.exists(os.path.join(root, n, STATE_FILE))]


def owner_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _frozen(saved_cgroup: dict) -> bool:
    from corral.runtime.cgroups import load_manager

    try:
        return load_manager(saved_cgroup).frozen()
    except Exception:
        return False
