"""linux.namespaces: which to create, which to join, in the order the kernel needs."""

from __future__ import annotations

import errno
import os

from corral.runtime import syscalls as k
from corral.runtime.syscalls import Syscalls
from corral.spec.runtime import Namespace

CLONE_FLAGS = {
    "pid": k.CLONE_NEWPID, "network": k.CLONE_NEWNET, "mount": k.CLONE_NEWNS,
    "ipc": k.CLONE_NEWIPC, "uts": k.CLONE_NEWUTS, "user": k.CLONE_NEWUSER,
    "cgroup": k.CLONE_NEWCGROUP, "time": k.CLONE_NEWTIME,
}
PROC_NAMES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
              "user": "user", "cgroup": "cgroup", "time": "time"}
# The user namespace first (it grants the rights to join the others), mount last
# (joining it changes what later paths mean; the fds are opened beforehand anyway).
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


class NamespaceError(OSError):
    pass


def open_join_targets(namespaces: list[Namespace]) -> list[tuple[Namespace, int]]:
    """Open every namespace to join before joining any (paths change as we go)."""
    opened = []
    try:
        for kind in _JOIN_ORDER:
            ns = next((n for n in namespaces if n.type == kind and n.path), None)
            if ns is None:
                continue
            try:
                fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise NamespaceError(e.errno, f"linux.namespaces[{kind}].path: cannot open "
                                     f"{ns.path}: {e.strerror}") from None
            opened.append((ns, fd))
    except BaseException:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def join(targets: list[tuple[Namespace, int]], sc: Syscalls) -> None:
    for ns, fd in targets:
        try:
            sc.setns(fd, CLONE_FLAGS[ns.type])
        except OSError as e:
            reason = f"not a {ns.type} namespace" if e.errno == errno.EINVAL else e.strerror
            raise NamespaceError(e.errno, f"linux.namespaces[{ns.type}].path: cannot join "
                                 f"{ns.path}: {reason}") from None
        finally:
            os.close(fd)


def unshare_flags(namespaces: list[Namespace], *, include_user: bool = False) -> int:
    flags = 0
    for ns in namespaces:
        if not ns.path and (include_user or ns.type != "user"):
            flags |= CLONE_FLAGS[ns.type]
    return flags


def time_offsets_text(offsets: dict[str, dict]) -> str:
    """/proc/self/timens_offsets lines: "<clock> <secs> <nanosecs>"."""
    lines = []
    for clock, value in offsets.items():
        if clock not in ("monotonic", "boottime"):
            raise NamespaceError(errno.EINVAL, f"linux.timeOffsets.{clock}: unknown clock")
        lines.append(f"{clock} {int(value.get('secs', 0))} {int(value.get('nanosecs', 0))}")
    return "\n".join(lines) + "\n"
