"""Plumbing shared by the v1 and v2 managers: the error type, finding the
cgroup mounts, resolving cgroupsPath, and file I/O whose errors name the OCI
field that caused them.

Everything here is plain file-system work on cgroupfs; no policy.
"""

from __future__ import annotations

import errno
import os
import time

from corral.runtime.errors import RuntimeFailure
from corral.spec.record import Record

DEFAULT_ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
OWN_CGROUP = "/proc/self/cgroup"


class CgroupError(RuntimeFailure, RuntimeError):
    """A cgroup could not be made, configured, joined or removed (one-line message).

    `errno` is the kernel's answer when a file write failed, else None.
    """

    errno: int | None = None


def field_error(field: str, message: str) -> CgroupError:
    return CgroupError(f"linux.resources.{field}: {message}")


# --- discovering the hierarchies ---------------------------------------------------------


class Mount(Record):
    mountpoint: str
    root: str  # the cgroup this mount shows at its mountpoint (mountinfo field 4)
    controllers: tuple[str, ...]  # empty for cgroup2


class Hierarchies(Record):
    """What this host mounts: v1 controller → mount, and the cgroup2 mount if any."""

    v1: dict[str, Mount]
    unified: Mount | None
    root: str

    @property
    def pure_v2(self) -> bool:
        return self.unified is not None and self.unified.mountpoint == self.root


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def known_v1_controllers() -> set[str]:
    try:
        with open("/proc/cgroups", encoding="ascii") as f:
            return {line.split()[0] for line in f if line.strip() and not line.startswith("#")}
    except OSError:
        return set()


def parse_mountinfo(text: str, known: set[str]) -> list[tuple[str, Mount]]:
    """(fstype, Mount) for every cgroup and cgroup2 mount, in mount order."""
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        controllers: tuple[str, ...] = ()
        if tail[0] == "cgroup":
            opts = tail[2].split(",")
            controllers = tuple(o for o in opts if o in known or o.startswith("name="))
        found.append((tail[0], Mount(_unescape(fields[4]), _unescape(fields[3]), controllers)))
    return found


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def discover(root: str = DEFAULT_ROOT) -> Hierarchies:
    """Find the cgroup mounts, preferring those at or under `root` (several may exist)."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            mounts = parse_mountinfo(f.read(), known_v1_controllers())
    except OSError as e:
        raise CgroupError(f"cannot read {MOUNTINFO}: {e.strerror}") from None
    # Mounts under root first, then the rest: the first one seen for a controller wins.
    mounts.sort(key=lambda fm: not _under(fm[1].mountpoint, root))
    v1: dict[str, Mount] = {}
    unified = None
    for fstype, mount in mounts:
        if fstype == "cgroup2":
            if unified is None or mount.mountpoint == root:
                unified = mount
            continue
        for ctl in mount.controllers:
            v1.setdefault(ctl, mount)
    if unified is not None and unified.mountpoint == root:
        v1 = {}  # a pure v2 host; stray v1 mounts elsewhere are not ours to use
    if not v1 and unified is None:
        raise CgroupError("no cgroup file system is mounted")
    return Hierarchies(v1, unified, root)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as controller → path; the cgroup2 line is under the key ""."""
    own = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctl in parts[1].split(",") if parts[1] else [""]:
            own[ctl] = parts[2]
    return own


def own_cgroups() -> dict[str, str]:
    try:
        with open(OWN_CGROUP, encoding="utf-8", errors="surrogateescape") as f:
            return parse_proc_cgroup(f.read())
    except OSError as e:
        raise CgroupError(f"cannot read {OWN_CGROUP}: {e.strerror}") from None


def visible_path(mount: Mount, cgroup: str, key: str) -> str:
    """The caller's cgroup `cgroup` (as /proc/self/cgroup shows it) as seen under `mount`."""
    if mount.root in ("", "/"):
        return cgroup
    if not _under(cgroup, mount.root):
        name = key or "cgroup2"
        raise CgroupError(f"linux.cgroupsPath: the caller's {name} cgroup {cgroup} is outside "
                          f"the part mounted at {mount.mountpoint} ({mount.root})")
    return cgroup[len(mount.root.rstrip("/")):] or "/"


def clean_cgroups_path(path: str) -> str:
    """cgroupsPath without empty or "." parts; absolute ones keep their leading "/".

    runc lexically cleans ".." away; we refuse it, so a path never means more than it says.
    """
    if "\0" in path:
        raise CgroupError("linux.cgroupsPath: contains a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CgroupError(f"linux.cgroupsPath: {path!r} must not contain '..'")
    if not parts:
        raise CgroupError(f"linux.cgroupsPath: {path!r} names the root cgroup")
    return ("/" if path.startswith("/") else "") + "/".join(parts)


def hierarchy_top(path: str) -> str:
    """The cgroupfs mount point above `path` (which may not exist yet)."""
    top = path
    while not os.path.ismount(top):
        parent = os.path.dirname(top)
        if parent == top:
            raise CgroupError(f"{path} is not inside a mounted cgroup file system")
        top = parent
    return top


def check_saved_dir(path: object, what: str) -> str:
    if not isinstance(path, str) or not os.path.isabs(path) or ".." in path.split("/"):
        raise CgroupError(f"saved cgroup state: {what} is not a clean absolute path: {path!r}")
    return path


# --- reading and writing cgroup files -------------------------------------------------


def write(dirpath: str, name: str, value: str, field: str) -> None:
    """Write `value` in one write(2), as cgroupfs parses one value per call.

    `field` (as "memory.limit") names the OCI resource in the error; "" for none.

    Never O_CREAT: a missing file means a missing controller, not a file to make.
    """
    path = os.path.join(dirpath, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        shown = value if value.strip() else repr(value)
        message = f"cannot write {shown} to {path}: {e.strerror}"
        err = field_error(field, message) if field else CgroupError(message)
        err.errno = e.errno
        raise err from None


def read(dirpath: str, name: str) -> str:
    with open(os.path.join(dirpath, name), encoding="ascii") as f:
        return f.read().strip()


def read_or_none(dirpath: str, name: str) -> str | None:
    try:
        return read(dirpath, name)
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_keyed(dirpath: str, name: str, key: str) -> int | None:
    """The number after `key` in a flat-keyed file (memory.events, memory.oom_control)."""
    text = read_or_none(dirpath, name)
    if text is None:
        return None
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return None


def has_file(dirpath: str, name: str) -> bool:
    return os.path.isfile(os.path.join(dirpath, name))


def procs(dirpath: str) -> list[int]:
    """Every process in the cgroup at `dirpath` and its descendants."""
    found: list[int] = []
    for top, dirs, _ in os.walk(dirpath):
        try:
            with open(os.path.join(top, "cgroup.procs"), encoding="ascii") as f:
                found.extend(int(line) for line in f if line.strip())
        except FileNotFoundError:
            dirs.clear()  # removed while we walked
    return found


def write_pid(dirpath: str, pid: int) -> None:
    path = os.path.join(dirpath, "cgroup.procs")
    for attempt in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
            return
        except OSError as e:
            # EINVAL: the task is still being born (TASK_NEW); runc retries too.
            if e.errno == errno.EINVAL and attempt < 4:
                time.sleep(0.03)
                continue
            # Worded as runc's (exec --cgroup callers match on it), errno text as Go's.
            who = "this process" if pid == 0 else f"pid {pid}"
            reason = e.strerror[:1].lower() + e.strerror[1:]
            raise CgroupError(f"error adding {who} to cgroups: cannot write {path}: "
                              f"{reason}") from None


# --- making and removing directories -----------------------------------------------


def make_dirs(path: str, created: list[str]) -> str:
    """mkdir -p inside one hierarchy, appending each directory made to `created`.

    Returns the hierarchy's mount point.  Directories that already exist are
    not recorded, so a rollback never removes what someone else made.
    """
    top = hierarchy_top(path)
    current = top
    for part in os.path.relpath(path, top).split("/"):
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            continue
        except OSError as e:
            raise CgroupError(f"linux.cgroupsPath: cannot create {current}: {e.strerror}") from None
        created.append(current)
    return top


def remove_created(created: list[str]) -> None:
    """Undo make_dirs, deepest first; best effort (the caller is already failing)."""
    for path in sorted(created, key=lambda p: p.count("/"), reverse=True):
        try:
            os.rmdir(path)
        except OSError:
            pass
    created.clear()


def remove_tree(path: str, deadline: float) -> None:
    """rmdir a cgroup and any cgroups below it, deepest first.

    A cgroup whose last processes are still dying answers EBUSY for a moment;
    retry until `deadline` (time.monotonic()).
    """
    try:
        children = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    except OSError as e:
        raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}") from None
    for child in children:
        remove_tree(child, deadline)
    delay = 0.005
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                left = procs(path) if e.errno == errno.EBUSY else []
                extra = f" (processes still in it: {', '.join(map(str, left))})" if left else ""
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}{extra}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --- typed access to linux.resources ------------------------------------------------


def section(resources: dict, name: str, kind: type = dict):
    value = resources.get(name)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise field_error(name, f"expected {'an object' if kind is dict else 'a list'}")
    return value


def get_int(obj: dict, key: str, field: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(field, f"expected an integer, got {value!r}")
    return value


def get_str(obj: dict, key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise field_error(field, f"expected a string, got {value!r}")
    return value


def get_bool(obj: dict, key: str, field: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise field_error(field, f"expected true or false, got {value!r}")
    return value
