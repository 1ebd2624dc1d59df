"""config.json mounts: option parsing (runc's table) and mounting into the rootfs."""

from __future__ import annotations

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
# runc-specific extensions that are not kernel options; accepted and ignored here.
_IGNORED_OPTIONS = {"tmpcopyup", "idmap", "ridmap"}


class MountError(OSError):
    pass


class MountOptions(Record):
    flags: int = 0
    propagation: list[int] | None = None
    data: str = ""

    @classmethod
    def parse(cls, options: list[str]) -> MountOptions:
        flags = 0
        propagation = []
        data = []
        for option in options:
            if option in FLAG_OPTIONS:
                set_flags, clear_flags = FLAG_OPTIONS[option]
                flags = (flags | set_flags) & ~clear_flags
            elif option in PROPAGATION_OPTIONS:
                propagation.append(PROPAGATION_OPTIONS[option])
            elif option not in _IGNORED_OPTIONS:
                data.append(option)
        return cls(flags, propagation, ",".join(data))


class MountContext(Record):
    """What mounting needs to know beyond the mount itself."""

    rootfs: str
    bundle: str
    cgroup_paths: dict[str, str]  # controller → host directory of the container's cgroup
    cgroup_namespace: bool
    syscalls: Syscalls


def mount_into_rootfs(mount: Mount, ctx: MountContext) -> None:
    """Mount one config.json entry at its destination inside the rootfs."""
    opts = MountOptions.parse(mount.options)
    sc = ctx.syscalls
    dest = secure_join(ctx.rootfs, mount.destination)
    if mount.is_bind:
        source = mount.source if os.path.isabs(mount.source) else os.path.join(
            ctx.bundle, mount.source)
        if not os.path.exists(source):
            raise MountError(2, f"bind mount source {source} does not exist")
        _make_target(ctx.rootfs, dest, directory=os.path.isdir(source), sc=sc)
        _bind(source, dest, opts, sc)
    elif mount.type == "cgroup":
        _mount_cgroups(dest, opts, ctx)
    else:
        _make_target(ctx.rootfs, dest, directory=True, sc=sc)
        sc.mount(mount.source or mount.type, dest, mount.type, opts.flags & ~k.MS_REMOUNT,
                 opts.data or None)
    for propagation in opts.propagation:
        sc.mount(None, dest, None, propagation)


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
