"""Device nodes in the container's /dev, and the device cgroup rules that allow them."""

from __future__ import annotations

import errno
import os
import stat

from corral.runtime import syscalls as k
from corral.runtime.paths import make_dirs_inside, secure_join
from corral.runtime.syscalls import Syscalls
from corral.spec.record import Record
from corral.spec.runtime import Device


class DefaultDevice(Record):
    path: str
    major: int
    minor: int


# What every container gets (the OCI spec's default devices).
DEFAULT_DEVICES = (
    DefaultDevice("/dev/null", 1, 3),
    DefaultDevice("/dev/zero", 1, 5),
    DefaultDevice("/dev/full", 1, 7),
    DefaultDevice("/dev/random", 1, 8),
    DefaultDevice("/dev/urandom", 1, 9),
    DefaultDevice("/dev/tty", 5, 0),
)

DEFAULT_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
)

# Appended after the config's own rules, as runc does: mknod of anything, the
# default devices, ptys and tun.  Nothing else: /dev/console is a pty bind mount.
DEFAULT_ALLOW_RULES = [
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"}
      for d in DEFAULT_DEVICES),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # /dev/net/tun
]


def cgroup_device_rules(config_rules: list[dict]) -> list[dict]:
    """The full rule list for the device cgroup: config rules, then what must work.

    linux.devices only makes nodes; whether they may be opened is for
    linux.resources.devices to say (as runc), so a deny-all there holds.
    """
    return [*config_rules, *DEFAULT_ALLOW_RULES]


def create_devices(rootfs: str, devices: list[Device], sc: Syscalls, *,
                   bind_from_host: bool) -> None:
    """Make the default and configured device nodes under rootfs/dev.

    Inside a user namespace mknod is not allowed, so the host's nodes are
    bind-mounted instead (as runc does).
    """
    old_umask = os.umask(0)
    try:
        for d in DEFAULT_DEVICES:
            _create(rootfs, Device(d.path, "c", d.major, d.minor, 0o666, 0, 0), sc,
                    bind_from_host)
        for device in devices:
            _create(rootfs, device, sc, bind_from_host)
    finally:
        os.umask(old_umask)


def create_links(rootfs: str, sc: Syscalls) -> None:
    for target, link in DEFAULT_LINKS:
        path = secure_join(rootfs, link)
        if not os.path.lexists(path):
            sc.symlink(target, path)
    if os.path.exists(os.path.join(rootfs, "proc/kcore")):
        core = secure_join(rootfs, "/dev/core")
        if not os.path.lexists(core):
            sc.symlink("/proc/kcore", core)


def _create(rootfs: str, device: Device, sc: Syscalls, bind_from_host: bool) -> None:
    dest = secure_join(rootfs, device.path)
    make_dirs_inside(rootfs, os.path.dirname(dest), sc.mkdir)
    if bind_from_host:
        if not os.path.lexists(dest):
            sc.create_file(dest, 0o000)
        sc.mount(device.path, dest, None, k.MS_BIND)
        return
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    mode = (device.file_mode if device.file_mode is not None else 0o666) & 0o7777
    if os.path.lexists(dest):
        sc.unlink(dest)  # a config device replaces whatever the image had there
    try:
        sc.mknod(dest, kind[device.type] | mode, os.makedev(device.major, device.minor))
    except PermissionError:
        raise OSError(errno.EPERM, f"mknod {device.path}: not permitted (user namespace?)",
                      device.path) from None
    sc.chown(dest, device.uid or 0, device.gid or 0)

