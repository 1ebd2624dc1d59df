"""Pinned namespaces: a pod's network, IPC and UTS namespaces, kept alive by bind mounts.

No pause container holds a pod's namespaces: like `ip netns add`, each is
bind-mounted (nsfs) onto a file (`<dir>/net`, `<dir>/ipc`, `<dir>/uts`),
and containers join them by path.

    pin_namespaces(["net", "ipc", "uts"], dir, hostname="web-0")  → {"net": "<dir>/net", ...}
    open_namespace(path, "net")    an fd, checked to be a pinned namespace of that kind
    entered(path, "net")           run a block inside it (this thread only)
    prepare_pin(dir, "pid")        the file a process's namespace is bind-mounted onto
    remove_namespace(path)         unmount + unlink one pin; idempotent
    unpin_namespaces(dir)          every pin under dir, then dir; idempotent

Why unshare(1): corrald serves on threads and must never fork (a forked
child may inherit a lock another thread held).  util-linux's `unshare
--net=FILE` is a fresh process that unshares itself and has its own child
bind-mount /proc/<pid>/ns/* onto the files, exactly the sequence `ip netns
add` uses; a ctypes child started with `python -c` would do the same at
ten times the start-up cost.  `hostname NAME` runs inside the new UTS
namespace to set the pod's hostname before anything joins it.

A PID namespace cannot be pinned that way: it dies with its last process,
so it lives as long as the pod's init (shim/podinit.py), which makes it.
`prepare_pin` gives the file under the same mount point, and the shim
bind-mounts the init's /proc/<pid>/ns/pid onto it while the init is its
unreaped child (no PID reuse can slip in between).

Propagation: like `ip netns add`, the directory becomes a mount point with
shared propagation, but in a peer group of its own (made private first, so
pins never leak into the peers of its parent mount).  A mount namespace
copied from the host while a pod lives (a container's, before pivot_root)
then receives the unmount too, so removing a pin really frees the
namespace instead of leaving a copy that keeps its veth alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
from collections.abc import Iterator

from corral.runtime import syscalls as k

KINDS = {"net": k.CLONE_NEWNET, "ipc": k.CLONE_NEWIPC, "uts": k.CLONE_NEWUTS}
# Pinned from a process of the pod (its init), not by unshare(1): see prepare_pin.
PROCESS_KINDS = {"pid": k.CLONE_NEWPID}
_ALL_KINDS = {**KINDS, **PROCESS_KINDS}
UNSHARE = "unshare"
HOSTNAME = "/bin/hostname"
PIN_TIMEOUT = 30.0
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
HOST_NAME_MAX = 64


class NamespaceError(OSError):
    pass


def pin_namespaces(kinds: list[str], directory: str, hostname: str = "") -> dict[str, str]:
    """New namespaces of `kinds`, pinned under `directory` (created): kind → path.

    `hostname` is set in the new UTS namespace.  On failure nothing is left:
    no pin, no mount, and the directory is removed if left empty.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise NamespaceError(errno.EINVAL, f"cannot pin namespaces {unknown or kinds}: "
                             f"kinds are {', '.join(KINDS)}")
    if hostname and "uts" not in kinds:
        raise NamespaceError(errno.EINVAL, "a hostname needs a UTS namespace to pin")
    _check_hostname(hostname)
    paths = {kind: os.path.join(directory, kind) for kind in dict.fromkeys(kinds)}
    for path in paths.values():
        if _is_mount_point(path):
            raise NamespaceError(errno.EEXIST, f"namespace already pinned at {path}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        _make_shared_mount_point(directory)
        for path in paths.values():
            open(path, "a").close()
        command = [UNSHARE, *(f"--{kind}={path}" for kind, path in paths.items())]
        command += [HOSTNAME, hostname] if hostname else ["true"]
        try:
            done = subprocess.run(command, capture_output=True, timeout=PIN_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise NamespaceError(errno.ETIMEDOUT, f"pin {','.join(paths)} namespaces in "
                                 f"{directory}: unshare timed out") from None
        except FileNotFoundError:
            raise NamespaceError(errno.ENOENT, f"pin namespaces: {UNSHARE} (util-linux) "
                                 "is not installed") from None
        if done.returncode != 0:
            raise NamespaceError(errno.EIO, f"pin {','.join(paths)} namespaces in {directory}: "
                                 f"{done.stderr.decode(errors='replace').strip()}")
    except BaseException:
        unpin_namespaces(directory)
        raise
    return paths


def open_namespace(path: str, kind: str = "net") -> int:
    """An O_CLOEXEC fd of the namespace pinned at `path`, checked to be of `kind`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NamespaceError(e.errno, f"open {kind} namespace {path}: {e.strerror}") from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        os.close(fd)
        raise NamespaceError(errno.EINVAL, f"{path} is not a pinned namespace "
                             "(no nsfs mount)") from None
    if nstype != _ALL_KINDS[kind]:
        os.close(fd)
        raise NamespaceError(errno.EINVAL, f"{path} is not a {kind} namespace")
    return fd


@contextlib.contextmanager
def entered(path: str, kind: str = "net") -> Iterator[None]:
    """Run the block in the namespace pinned at `path`.

    setns() of a net, IPC or UTS namespace changes only the calling thread,
    so this is safe in threaded corrald; the thread goes back to its own
    namespace afterwards.  Sockets opened inside (a pyroute2 IPRoute, say)
    stay bound to the pinned namespace after the block ends.
    """
    sc = k.Syscalls()
    target = open_namespace(path, kind)
    try:
        own = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        sc.setns(target, KINDS[kind])
        try:
            yield
        finally:
            sc.setns(own, KINDS[kind])
    finally:
        os.close(target)
        os.close(own)


def prepare_pin(directory: str, kind: str) -> str:
    """The empty file under `directory` (made a shared mount point, as by pin_namespaces)
    that a process's namespace of `kind` is to be bind-mounted onto; its path."""
    if kind not in PROCESS_KINDS:
        raise NamespaceError(errno.EINVAL, f"{kind} namespaces are pinned by pin_namespaces")
    path = os.path.join(directory, kind)
    if _is_mount_point(path):
        raise NamespaceError(errno.EEXIST, f"namespace already pinned at {path}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        if not _is_mount_point(directory):
            _make_shared_mount_point(directory)
        open(path, "a").close()
    except BaseException:
        unpin_namespaces(directory)
        raise
    return path


def is_pinned(path: str) -> bool:
    return _is_mount_point(path)


def remove_namespace(path: str) -> None:
    """Unmount and unlink one pin; nothing there is fine."""
    try:
        k.Syscalls().umount(path, k.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise NamespaceError(e.errno, f"unmount namespace {path}: {e.strerror}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unpin_namespaces(directory: str) -> None:
    """Remove the pins under `directory`, its mount and the directory if then empty.

    Idempotent; only the pins' names (net, ipc, uts, pid) are touched.
    """
    if not os.path.isdir(directory):
        return
    for kind in _ALL_KINDS:
        remove_namespace(os.path.join(directory, kind))
    while _is_mount_point(directory):  # stacked by an earlier crash mid-pin: undo them all
        try:
            k.Syscalls().umount(directory, k.MNT_DETACH)
        except OSError as e:
            raise NamespaceError(e.errno, f"unmount {directory}: {e.strerror}") from None
    try:
        os.rmdir(directory)
    except OSError:
        pass  # something else lives there; not ours to remove


def _make_shared_mount_point(directory: str) -> None:
    sc = k.Syscalls()
    if not _is_mount_point(directory):
        sc.mount(directory, directory, None, k.MS_BIND)
    sc.mount(None, directory, None, k.MS_PRIVATE)  # out of the parent's peer group
    sc.mount(None, directory, None, k.MS_SHARED)   # a peer group of its own


def _check_hostname(hostname: str) -> None:
    if len(hostname.encode()) > HOST_NAME_MAX or "\0" in hostname or hostname.startswith("-"):
        raise NamespaceError(errno.EINVAL, f"invalid hostname {hostname!r}: at most "
                             f"{HOST_NAME_MAX} bytes, no NUL, not starting with '-'")


def _is_mount_point(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == real for line in f)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field
