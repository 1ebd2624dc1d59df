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
from corral.runtime.mounts import PROPAGATION_OPTIONS, MountContext, mount_into_rootfs
from corral.runtime.paths import make_dirs_inside, secure_join
from corral.runtime.syscalls import Syscalls
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
    # Stop mount events from leaking back to the host (unless asked to share).
    # Set once, first: the mounts below inherit it and may set their own.
    propagation = PROPAGATION_OPTIONS.get(spec.linux.rootfs_propagation,
                                          k.MS_SLAVE | k.MS_REC)
    sc.mount(None, "/", None, propagation)
    # pivot_root refuses a new root whose parent mount is shared.
    sc.mount(None, _mount_point_of(os.path.dirname(rootfs)), None, k.MS_PRIVATE)
    # pivot_root also needs the new root to be a mount point.
    sc.mount(rootfs, rootfs, None, k.MS_BIND | k.MS_REC)

    for mount in spec.mounts:
        mount_into_rootfs(mount, ctx)

    dev_from_host = any(m.destination == "/dev" and m.is_bind for m in spec.mounts)
    if not dev_from_host:
        create_devices(rootfs, spec.linux.devices, sc, bind_from_host=user_namespace)
        create_links(rootfs, sc)

    if spec.process:
        cwd = secure_join(rootfs, spec.process.cwd)
        if not os.path.lexists(cwd):
            make_dirs_inside(rootfs, cwd, sc.mkdir)

    if before_pivot is not None:
        before_pivot()  # the createRuntime and createContainer hooks
    if no_pivot:
        _move_root(rootfs, sc)
    else:
        _pivot_root(rootfs, sc)


def harden_rootfs(spec: Spec, sc: Syscalls) -> None:
    """After pivot_root: what must not be changed or seen from inside."""
    for key, value in spec.linux.sysctl.items():
        try:
            sc.write_file("/proc/sys/" + key.replace(".", "/"), value)
        except OSError as e:
            raise RootfsError(e.errno, f"linux.sysctl.{key}: cannot set to {value!r}: "
                              f"{e.strerror}") from None
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


def _move_root(rootfs: str, sc: Syscalls) -> None:
    """--no-pivot: for a root that cannot be pivoted (e.g. on a ramfs)."""
    sc.chdir(rootfs)
    sc.mount(rootfs, "/", None, k.MS_MOVE)
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


def _mount_point_of(path: str) -> str:
    """The mount point containing `path` (longest prefix in our mount table)."""
    best = "/"
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(
                    best):
                best = point
    if not os.path.isdir(best):
        raise RootfsError(errno.ENOENT, f"cannot find the mount holding {path}")
    return best
