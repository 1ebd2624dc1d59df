"""config.json mounts: option parsing (runc's table) and mounting into the rootfs."""

from __future__ import annotations

import errno
import os
import stat

from corral.runtime import syscalls as k
from corral.runtime.paths import make_dirs_inside, secure_join
from corral.runtime.syscalls import Syscalls
from corral.spec.record import Record
from corral.spec.runtime import Mount

# option → (flags to set, flags to clear)
FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (k.MS_RDONLY, 0), "rw": (0, k.MS_RDONLY),
    "nosuid": (k.MS_NOSUID, 0), "suid": (0, k.MS_NOSUID),
    "nodev": (k.MS_NODEV, 0), "dev": (0, k.MS_NODEV),
    "noexec": (k.MS_NOEXEC, 0), "exec": (0, k.MS_NOEXEC),
    "sync": (k.MS_SYNCHRONOUS, 0), "async": (0, k.MS_SYNCHRONOUS),
    "dirsync": (k.MS_DIRSYNC, 0),
    "remount": (k.MS_REMOUNT, 0),
    "mand": (k.MS_MANDLOCK, 0), "nomand": (0, k.MS_MANDLOCK),
    "atime": (0, k.MS_NOATIME), "noatime": (k.MS_NOATIME, 0),
    "diratime": (0, k.MS_NODIRATIME), "nodiratime": (k.MS_NODIRATIME, 0),
    "relatime": (k.MS_RELATIME, 0), "norelatime": (0, k.MS_RELATIME),
    "strictatime": (k.MS_STRICTATIME, 0), "nostrictatime": (0, k.MS_STRICTATIME),
    "lazytime": (k.MS_LAZYTIME, 0), "nolazytime": (0, k.MS_LAZYTIME),
    "nosymfollow": (k.MS_NOSYMFOLLOW, 0), "symfollow": (0, k.MS_NOSYMFOLLOW),
    "silent": (k.MS_SILENT, 0), "loud": (0, k.MS_SILENT),
    "bind": (k.MS_BIND, 0), "rbind": (k.MS_BIND | k.MS_REC, 0),
}
PROPAGATION_OPTIONS: dict[str, int] = {
    "private": k.MS_PRIVATE, "rprivate": k.MS_PRIVATE | k.MS_REC,
    "shared": k.MS_SHARED, "rshared": k.MS_SHARED | k.MS_REC,
    "slave": k.MS_SLAVE, "rslave": k.MS_SLAVE | k.MS_REC,
    "unbindable": k.MS_UNBINDABLE, "runbindable": k.MS_UNBINDABLE | k.MS_REC,
}
# Recursive attributes (OCI runtime-spec 1.1), applied with mount_setattr(2) and
# AT_RECURSIVE to the mount and every mount below it: option → (set it?, MOUNT_ATTR_*).
RECURSIVE_OPTIONS: dict[str, tuple[bool, int]] = {
    "rro": (True, k.MOUNT_ATTR_RDONLY), "rrw": (False, k.MOUNT_ATTR_RDONLY),
    "rnosuid": (True, k.MOUNT_ATTR_NOSUID), "rsuid": (False, k.MOUNT_ATTR_NOSUID),
    "rnodev": (True, k.MOUNT_ATTR_NODEV), "rdev": (False, k.MOUNT_ATTR_NODEV),
    "rnoexec": (True, k.MOUNT_ATTR_NOEXEC), "rexec": (False, k.MOUNT_ATTR_NOEXEC),
    "rnodiratime": (True, k.MOUNT_ATTR_NODIRATIME),
    "rdiratime": (False, k.MOUNT_ATTR_NODIRATIME),
    "rrelatime": (True, k.MOUNT_ATTR_RELATIME), "rnorelatime": (False, k.MOUNT_ATTR_RELATIME),
    "rnoatime": (True, k.MOUNT_ATTR_NOATIME), "ratime": (False, k.MOUNT_ATTR_NOATIME),
    "rstrictatime": (True, k.MOUNT_ATTR_STRICTATIME),
    "rnostrictatime": (False, k.MOUNT_ATTR_STRICTATIME),
    "rnosymfollow": (True, k.MOUNT_ATTR_NOSYMFOLLOW),
    "rsymfollow": (False, k.MOUNT_ATTR_NOSYMFOLLOW),
}
# runc-specific extensions that are not kernel options; accepted and ignored here.
_IGNORED_OPTIONS = {"tmpcopyup", "idmap", "ridmap"}
# procfs and sysfs go on the very path named (runc: "must be mounted on ordinary
# directory"): a symlink there could put the host's view anywhere.
_PSEUDO_FILESYSTEMS = ("proc", "sysfs")


class MountError(OSError):
    pass


class MountOptions(Record):
    flags: int = 0
    propagation: list[int] | None = None
    data: str = ""
    recursive_set: int = 0  # MOUNT_ATTR_* for the whole tree
    recursive_clear: int = 0

    @classmethod
    def parse(cls, options: list[str]) -> MountOptions:
        flags = 0
        propagation = []
        data = []
        attr_set = attr_clear = 0
        for option in options:
            if option in FLAG_OPTIONS:
                set_flags, clear_flags = FLAG_OPTIONS[option]
                flags = (flags | set_flags) & ~clear_flags
            elif option in PROPAGATION_OPTIONS:
                propagation.append(PROPAGATION_OPTIONS[option])
            elif option in RECURSIVE_OPTIONS:
                attr_set, attr_clear = _add_recursive(option, attr_set, attr_clear)
            elif option not in _IGNORED_OPTIONS:
                data.append(option)
        return cls(flags, propagation, ",".join(data), attr_set, attr_clear)


def _add_recursive(option: str, attr_set: int, attr_clear: int) -> tuple[int, int]:
    setting, attr = RECURSIVE_OPTIONS[option]
    if attr & ~k.MOUNT_ATTR__ATIME == 0:
        # The access-time mode is one field, not bits (mount_setattr(2)): any change
        # clears the whole field and sets one value; undoing one means relatime (0).
        attr_clear |= k.MOUNT_ATTR__ATIME
        attr_set = attr_set & ~k.MOUNT_ATTR__ATIME | (attr if setting else 0)
    elif setting:
        attr_set, attr_clear = attr_set | attr, attr_clear & ~attr
    else:
        attr_set, attr_clear = attr_set & ~attr, attr_clear | attr
    return attr_set, attr_clear


class MountContext(Record):
    """What mounting needs to know beyond the mount itself."""

    rootfs: str
    bundle: str
    cgroup_paths: dict[str, str]  # controller → host directory of the container's cgroup
    cgroup_namespace: bool
    syscalls: Syscalls
    source_fds: dict[int, int] = {}  # index in spec.mounts → O_PATH fd on its bind source


def mount_into_rootfs(mount: Mount, ctx: MountContext, source_fd: int | None = None) -> None:
    """Mount one config.json entry at its destination inside the rootfs.

    `source_fd`: an O_PATH fd on a bind mount's source, opened by the runtime
    (see corral.runtime.mountsources) where the init itself may not reach it.
    """
    opts = MountOptions.parse(mount.options)
    sc = ctx.syscalls
    if mount.type in _PSEUDO_FILESYSTEMS and not mount.is_bind:
        dest = _ordinary_directory(ctx.rootfs, mount)
    else:
        dest = secure_join(ctx.rootfs, mount.destination)
    if mount.is_bind:
        source, is_dir = _bind_source(mount, ctx.bundle, source_fd)
        _make_target(ctx.rootfs, dest, directory=is_dir, sc=sc)
        _bind(source, dest, opts, sc)
    elif mount.type == "cgroup":
        _mount_cgroups(dest, opts, ctx)
    else:
        _make_target(ctx.rootfs, dest, directory=True, sc=sc)
        flags = opts.flags & ~k.MS_REMOUNT
        if finished_after_pivot(mount):
            flags &= ~k.MS_RDONLY  # files and mounts still go in; see finishing_touches
        sc.mount(mount.source or mount.type, dest, mount.type, flags, opts.data or None)
    for propagation in opts.propagation:
        sc.mount(None, dest, None, propagation)
    if not finished_after_pivot(mount):
        set_recursive_attributes(dest, opts, sc)


def finished_after_pivot(mount: Mount) -> bool:
    """A tmpfs or /dev is made read-only only at the end, as runc does: devices,
    /dev/pts and mounts below it need it writable first."""
    return not mount.is_bind and (
        mount.type == "tmpfs" or os.path.normpath(mount.destination) == "/dev")


def finishing_touches(mounts: list[Mount]) -> list[tuple[str, MountOptions]]:
    """(destination in the container, options) of each mount left to finish after pivot_root."""
    return [(secure_join("/", m.destination), MountOptions.parse(m.options))
            for m in mounts if finished_after_pivot(m)]


def set_recursive_attributes(dest: str, opts: MountOptions, sc: Syscalls) -> None:
    if opts.recursive_set or opts.recursive_clear:
        sc.mount_setattr(dest, opts.recursive_set, opts.recursive_clear)


def _ordinary_directory(rootfs: str, mount: Mount) -> str:
    """The destination of procfs or sysfs, refused unless a directory or absent."""
    dest = os.path.normpath(mount.destination)
    parent = secure_join(rootfs, os.path.dirname(dest))
    path = os.path.join(parent, os.path.basename(dest))
    if os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode):
        raise MountError(errno.ENOTDIR, f"{mount.destination}: filesystem "
                         f"\"{mount.type}\" must be mounted on ordinary directory")
    return path


def _bind_source(mount: Mount, bundle: str, source_fd: int | None) -> tuple[str, bool]:
    """The path to bind from, and whether it is a directory."""
    if source_fd is not None:
        return f"/proc/self/fd/{source_fd}", stat.S_ISDIR(os.fstat(source_fd).st_mode)
    source = mount.source if os.path.isabs(mount.source) else os.path.join(bundle,
                                                                           mount.source)
    try:
        return source, stat.S_ISDIR(os.stat(source).st_mode)
    except FileNotFoundError:
        raise MountError(errno.ENOENT, f"bind mount source {source} does not exist") from None


def _bind(source: str, dest: str, opts: MountOptions, sc: Syscalls) -> None:
    bind_flags = k.MS_BIND | (opts.flags & k.MS_REC)
    sc.mount(source, dest, None, bind_flags)
    # A bind mount ignores other flags: they take effect on a remount.
    extra = opts.flags & ~(k.MS_BIND | k.MS_REC | k.MS_REMOUNT)
    if extra:
        sc.mount(None, dest, None, k.MS_BIND | k.MS_REMOUNT | extra)


def _make_target(rootfs: str, dest: str, directory: bool, sc: Syscalls) -> None:
    if os.path.lexists(dest):
        is_dir = stat.S_ISDIR(os.lstat(dest).st_mode)
        if directory and not is_dir:
            raise MountError(20, f"mount target {dest} exists and is not a directory")
        return
    if directory:
        make_dirs_inside(rootfs, dest, sc.mkdir)
    else:
        make_dirs_inside(rootfs, os.path.dirname(dest), sc.mkdir)
        sc.create_file(dest)


def _mount_cgroups(dest: str, opts: MountOptions, ctx: MountContext) -> None:
    """Show the container its own cgroup, read-only unless asked otherwise.

    With a cgroup namespace the kernel already roots the view at the
    container's cgroup, so a fresh cgroup2 mount (or per-controller v1
    mounts) is right; without one, the container's directories are bound.
    """
    sc = ctx.syscalls
    flags = opts.flags & ~(k.MS_BIND | k.MS_REC | k.MS_REMOUNT)
    _make_target(ctx.rootfs, dest, directory=True, sc=sc)
    unified_only = set(ctx.cgroup_paths) == {""}
    if unified_only:
        if ctx.cgroup_namespace:
            sc.mount("cgroup2", dest, "cgroup2", flags)
        else:
            _bind(ctx.cgroup_paths[""], dest, MountOptions(flags), sc)
        return
    sc.mount("tmpfs", dest, "tmpfs", flags & ~k.MS_RDONLY, "mode=755")
    for controller, host_dir in sorted(ctx.cgroup_paths.items()):
        name = controller.removeprefix("name=") or "unified"
        target = os.path.join(dest, name)
        sc.mkdir(target, 0o755)
        if controller and ctx.cgroup_namespace:
            # Named hierarchies (name=systemd) carry no controller: "none,name=...".
            options = f"none,{controller}" if controller.startswith("name=") else controller
            sc.mount("cgroup", target, "cgroup", flags, options)
        elif not controller and ctx.cgroup_namespace:
            sc.mount("cgroup2", target, "cgroup2", flags)
        else:
            _bind(host_dir, target, MountOptions(flags), sc)
    if flags & k.MS_RDONLY:
        sc.mount(None, dest, None, k.MS_REMOUNT | flags)
