"""The container's root filesystem: mounts, devices, pivot_root, and the finishing touches.

Runs inside the init process, in its new mount namespace, in two halves:
`enter_rootfs` (everything up to and including pivot_root) and
`harden_rootfs` (sysctls, read-only and masked paths, read-only root).
"""

from __future__ import annotations

import errno
import os

from corral.runtime import syscalls as k
from corral.runtime.devices import create_devices, create_links
from corral.runtime.mounts import (
    PROPAGATION_OPTIONS,
    MountContext,
    finishing_touches,
    mount_into_rootfs,
    set_recursive_attributes,
)
from corral.runtime.syscalls import Syscalls
from corral.spec.record import Record
from corral.spec.runtime import Spec

# statvfs f_flag bits share their values with the MS_* flags below.
_KEPT_ON_REMOUNT = (k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC | k.MS_NOATIME | k.MS_NODIRATIME
                    | k.MS_RELATIME)


class RootfsError(OSError):
    pass


def enter_rootfs(spec: Spec, ctx: MountContext, *, user_namespace: bool,
                 no_pivot: bool, before_pivot=None) -> None:
    sc = ctx.syscalls
    rootfs = ctx.rootfs
    # Without a mount namespace of its own (none, not even one to join) the
    # container lives among the runtime's mounts: its mounts are made under the
    # rootfs there, as runc does (delete unmounts them), and it is chrooted.
    own_mounts = spec.linux.namespace("mount") is not None
    if own_mounts:
        _prepare_root(spec, rootfs, no_pivot, sc)
    _mount_all(spec, ctx)
    dev_from_host = any(m.destination == "/dev" and m.is_bind for m in spec.mounts)
    if not dev_from_host:
        create_devices(rootfs, spec.linux.devices, sc, bind_from_host=user_namespace)
        create_links(rootfs, sc)

    if before_pivot is not None:
        before_pivot()  # the createRuntime and createContainer hooks
    if not own_mounts:
        _chroot(rootfs, sc)
        return
    if no_pivot:
        _move_root(rootfs, sc)
    else:
        _pivot_root(rootfs, sc)
    if spec.linux.rootfs_propagation:
        # What the config asked of the container's "/" (runtime-tools checks it there);
        # of "/" alone: the mounts below keep the propagation their options gave them.
        sc.mount(None, "/", None, PROPAGATION_OPTIONS[spec.linux.rootfs_propagation]
                 & ~k.MS_REC)


def _prepare_root(spec: Spec, rootfs: str, no_pivot: bool, sc: Syscalls) -> None:
    """Propagation of the inherited mounts, and the rootfs as a mount of its own."""
    asked = spec.linux.rootfs_propagation
    if no_pivot and asked in ("private", "rprivate"):
        # The old root stays below the container's: private, host mounts under it
        # would stay forever (runc refuses this too).
        raise RootfsError(errno.EINVAL, f"linux.rootfsPropagation: {asked} is not safe "
                          "without pivot_root (--no-pivot)")
    # Stop mount events from leaking back to the host (unless asked to share).
    # Set once, first: the mounts below inherit it and may set their own.  An
    # unbindable "/" could not be bound below: that is for the container's "/" only.
    propagation = PROPAGATION_OPTIONS.get(asked, 0)
    if not propagation or propagation & k.MS_UNBINDABLE:
        propagation = k.MS_SLAVE | k.MS_REC
    sc.mount(None, "/", None, propagation)
    # pivot_root refuses a new root on (or in) a shared mount, and a bind of a shared
    # mount would propagate back to the host: the mount holding the rootfs (which may
    # be the rootfs itself, e.g. containerd's overlay) is made private if shared.
    holder = _mount_holding(rootfs)
    if holder.shared:
        sc.mount(None, holder.mount_point, None, k.MS_PRIVATE)
    # pivot_root also needs the new root to be a mount point.
    sc.mount(rootfs, rootfs, None, k.MS_BIND | k.MS_REC)


def _mount_all(spec: Spec, ctx: MountContext) -> None:
    try:
        for index, mount in enumerate(spec.mounts):
            mount_into_rootfs(mount, ctx, source_fd=ctx.source_fds.get(index))
    finally:
        _close_all(ctx.source_fds)  # they lead outside the container


def unmount_below(rootfs: str) -> None:
    """Take down every mount under `rootfs` in our mount namespace, deepest first
    (what a container without a mount namespace of its own left there)."""
    base = os.path.realpath(rootfs).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]) for line in f]
    for point in sorted({p for p in points if p.startswith(base)}, key=len, reverse=True):
        try:
            Syscalls().umount(point, k.MNT_DETACH)
        except OSError:
            pass  # gone already (a parent's detach took it)


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def harden_rootfs(spec: Spec, sc: Syscalls) -> None:
    """After pivot_root: what must not be changed or seen from inside."""
    for key, value in spec.linux.sysctl.items():
        try:
            sc.write_file("/proc/sys/" + key.replace(".", "/"), value)
        except OSError as e:
            raise RootfsError(e.errno, f"linux.sysctl.{key}: cannot set to {value!r}: "
                              f"{e.strerror}") from None
    _finish_mounts(spec, sc)
    for path in spec.linux.readonly_paths:
        _make_readonly(path, sc)
    for path in spec.linux.masked_paths:
        _mask(path, sc)
    if spec.root.readonly:
        sc.mount(None, "/", None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | _kept_flags("/"))


def _pivot_root(rootfs: str, sc: Syscalls) -> None:
    """pivot_root(".", ".") and detach the old root, without a temporary directory."""
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.chdir(rootfs)
        sc.pivot_root(".", ".")
        sc.fchdir(old_root)
        # Unmounting must not propagate to the host's copy of these mounts.
        sc.mount(None, ".", None, k.MS_SLAVE | k.MS_REC)
        sc.umount(".", k.MNT_DETACH)
        sc.chdir("/")
    finally:
        os.close(old_root)


def _finish_mounts(spec: Spec, sc: Syscalls) -> None:
    """The read-only flag and recursive attributes left for the end (tmpfs, /dev)."""
    if spec.linux.namespace("mount") is None:
        return
    for dest, opts in finishing_touches(spec.mounts):
        if opts.flags & k.MS_RDONLY:
            sc.mount(None, dest, None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY
                     | _kept_flags(dest))
        set_recursive_attributes(dest, opts, sc)


def _move_root(rootfs: str, sc: Syscalls) -> None:
    """--no-pivot: for a root that cannot be pivoted (e.g. on a ramfs)."""
    _hide_full_proc_and_sysfs(rootfs, sc)
    sc.chdir(rootfs)
    sc.mount(rootfs, "/", None, k.MS_MOVE)
    sc.chroot(".")
    sc.chdir("/")


def _hide_full_proc_and_sysfs(rootfs: str, sc: Syscalls) -> None:
    """Unmount (or cover) every whole procfs and sysfs outside the rootfs.

    After MS_MOVE and chroot the old root is still in our mount namespace,
    and the kernel lets a nested user namespace mount a fresh proc or sysfs
    whenever one fully visible mount of it exists there: the host's bare
    /proc would be that one (runc's msMoveRoot does the same).
    """
    inside = rootfs.rstrip("/") + "/"
    for entry in _mountinfo():
        if (entry.root != "/" or entry.fstype not in ("proc", "sysfs")
                or (entry.mount_point + "/").startswith(inside)):
            continue
        try:
            sc.mount(None, entry.mount_point, None, k.MS_SLAVE | k.MS_REC)  # not the host's
        except FileNotFoundError:
            continue  # under one already gone
        try:
            sc.umount(entry.mount_point, k.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            # Locked (a user namespace): covered instead.
            sc.mount("tmpfs", entry.mount_point, "tmpfs", 0)


def _chroot(rootfs: str, sc: Syscalls) -> None:
    """No mount namespace of our own: pivot_root would move every process's root."""
    sc.chdir(rootfs)
    sc.chroot(".")
    sc.chdir("/")


def _make_readonly(path: str, sc: Syscalls) -> None:
    try:
        sc.mount(path, path, None, k.MS_BIND | k.MS_REC)
    except FileNotFoundError:
        return
    sc.mount(None, path, None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | k.MS_REC
             | _kept_flags(path))


def _mask(path: str, sc: Syscalls) -> None:
    if not os.path.lexists(path):
        return
    if os.path.isdir(path):
        sc.mount("tmpfs", path, "tmpfs", k.MS_RDONLY, "size=0k")
    else:
        try:
            sc.mount("/dev/null", path, None, k.MS_BIND)
        except FileNotFoundError:
            return


def _kept_flags(path: str) -> int:
    """A remount must repeat the flags it keeps (the kernel insists in user namespaces)."""
    try:
        return os.statvfs(path).f_flag & _KEPT_ON_REMOUNT
    except OSError:
        return 0


class MountInfo(Record):
    mount_point: str
    root: str
    fstype: str
    shared: bool  # in a peer group ("shared:N" among the optional fields)


def _mountinfo() -> list[MountInfo]:
    """Our mount table, in mount order (/proc/self/mountinfo, as proc(5) lays it out)."""
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            entries.append(MountInfo(
                mount_point=_unescape(fields[4]), root=_unescape(fields[3]),
                fstype=fields[dash + 1],
                shared=any(o.startswith("shared:") for o in fields[6:dash])))
    return entries


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (so every \\ starts one)."""
    first, *escaped = field.split("\\")
    return first + "".join(chr(int(part[:3], 8)) + part[3:] for part in escaped)


def _mount_holding(path: str) -> MountInfo:
    """The mount `path` lies on: the last mounted of the longest mount points over it."""
    real = os.path.realpath(path)
    best = None
    for entry in _mountinfo():
        point = entry.mount_point
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best.mount_point):
                best = entry
    if best is None:
        raise RootfsError(errno.ENOENT, f"cannot find the mount holding {path}")
    return best
