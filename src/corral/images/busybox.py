"""The embedded default image: a busybox root filesystem and OCI bundle, built offline.

The root filesystem comes from Debian's statically linked busybox (package
`busybox-static`), so it needs no registry, no network and no shared libraries
inside the container. Builds are deterministic: same busybox in, same tree out
(sorted entries, fixed modes, fixed mtimes).

    python -m corral.images.busybox DEST [--rootless] [--terminal] [--args CMD ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from typing import Any

from corral.spec.defaults import default_config

BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_FALLBACK_PATH = "/usr/bin/busybox"

# 2000-01-01T00:00:00Z: any fixed instant makes two builds compare equal.
FIXED_MTIME = 946684800

# Applets are linked only into the standard command directories (busybox also
# lists `linuxrc` at the top level, which a container has no use for).
BIN_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")

DIRECTORIES: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "etc": 0o755, "dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755,
    "tmp": 0o1777, "var": 0o755, "var/tmp": 0o1777, "root": 0o700,
    "home": 0o755, "home/corral": 0o755,
}

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
corral:x:1000:1000:corral:/home/corral:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

# wheel and users carry members so tests of additional gids have something to find.
GROUP = """\
root:x:0:
daemon:x:1:
tty:x:5:
wheel:x:10:root,corral
users:x:100:corral
corral:x:1000:
nogroup:x:65534:
"""

HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
"""

FILES: dict[str, tuple[str, int]] = {
    "etc/passwd": (PASSWD, 0o644),
    "etc/group": (GROUP, 0o644),
    "etc/hosts": (HOSTS, 0o644),
    "etc/resolv.conf": ("", 0o644),
}

CORRAL_UID = CORRAL_GID = 1000


class BusyboxError(RuntimeError):
    """The host cannot provide a static busybox (or the destination is unusable)."""


def find_busybox() -> str:
    """The host's statically linked busybox, or a BusyboxError saying what to install."""
    path = shutil.which("busybox") or BUSYBOX_FALLBACK_PATH
    if not os.path.isfile(path):
        raise BusyboxError(f"busybox not found: install the Debian package {BUSYBOX_PACKAGE}")
    if not is_static_elf(path):
        raise BusyboxError(
            f"{path} is not statically linked: install the Debian package {BUSYBOX_PACKAGE}")
    return path


def is_static_elf(path: str) -> bool:
    """True if `path` is an ELF executable without an interpreter (PT_INTERP)."""
    pt_interp = 3
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
            return False
        is64 = ident[4] == 2
        order = "<" if ident[5] == 1 else ">"
        header = f.read(48 if is64 else 36)
        # e_phoff, e_phentsize and e_phnum sit at different offsets in ELF32 and ELF64.
        if is64:
            (phoff,) = struct.unpack_from(order + "Q", header, 0x20 - 16)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 0x36 - 16)
        else:
            (phoff,) = struct.unpack_from(order + "I", header, 0x1C - 16)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 0x2A - 16)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            (p_type,) = struct.unpack(order + "I", f.read(4))
            if p_type == pt_interp:
                return False
    return True


def list_applets(busybox: str) -> list[str]:
    """Applet paths relative to `/` (e.g. `bin/sh`, `usr/bin/env`), sorted."""
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                         text=True).stdout
    applets = {line.strip().lstrip("/") for line in out.splitlines()}
    return sorted(a for a in applets
                  if os.path.dirname(a) in BIN_DIRS and a != "bin/busybox")


def build_rootfs(dest: str) -> None:
    """Write a busybox root filesystem into `dest` (created; must be absent or empty)."""
    busybox = find_busybox()
    _prepare_empty_dir(dest)
    for rel, mode in sorted(DIRECTORIES.items()):
        path = os.path.join(dest, rel)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)  # explicit: mkdir's mode is filtered by the umask
    _install_busybox(busybox, dest)
    for rel, (content, mode) in sorted(FILES.items()):
        _write_file(os.path.join(dest, rel), content, mode)
    _give_home_to_corral(dest)
    _fix_mtimes(dest)


def _prepare_empty_dir(dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise BusyboxError(f"{dest}: not empty, refusing to build a rootfs over it")
    os.chmod(dest, 0o755)


def _install_busybox(busybox: str, dest: str) -> None:
    target = os.path.join(dest, "bin", "busybox")
    shutil.copyfile(busybox, target)
    os.chmod(target, 0o755)
    for applet in list_applets(busybox):
        link = os.path.join(dest, applet)
        # Relative links stay valid wherever the rootfs is mounted or copied.
        os.symlink(os.path.relpath("bin/busybox", os.path.dirname(applet)), link)


def _write_file(path: str, content: str, mode: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    os.chmod(path, mode)


def _give_home_to_corral(dest: str) -> None:
    """Only root may chown; an unprivileged build leaves /home/corral to its builder."""
    if os.geteuid() == 0:
        os.chown(os.path.join(dest, "home", "corral"), CORRAL_UID, CORRAL_GID)


def _fix_mtimes(dest: str) -> None:
    # Bottom-up, so touching an entry cannot bump its directory's mtime afterwards.
    for root, dirs, files in os.walk(dest, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(root, name), (FIXED_MTIME, FIXED_MTIME),
                     follow_symlinks=False)
    os.utime(dest, (FIXED_MTIME, FIXED_MTIME))


def copy_rootfs(src: str, dest: str) -> None:
    """Copy a rootfs built earlier (symlinks kept as symlinks, modes and mtimes kept)."""
    if os.path.exists(dest) and os.listdir(dest):
        raise BusyboxError(f"{dest}: not empty, refusing to copy a rootfs over it")
    if os.path.isdir(dest):
        os.rmdir(dest)
    shutil.copytree(src, dest, symlinks=True)
    if os.geteuid() == 0:
        owner = os.stat(os.path.join(src, "home", "corral"))
        os.chown(os.path.join(dest, "home", "corral"), owner.st_uid, owner.st_gid)


def build_bundle(dest: str, args: list[str] | None = None, *, rootless: bool = False,
                 terminal: bool = False, rootfs_from: str | None = None,
                 edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write an OCI bundle (`dest/rootfs`, `dest/config.json`) and return its config.

    `rootfs_from` copies an existing rootfs instead of building one (cheaper when
    many bundles are made); `edit` may change the config before it is written.
    """
    os.makedirs(dest, exist_ok=True)
    rootfs = os.path.join(dest, "rootfs")
    if rootfs_from is not None:
        copy_rootfs(rootfs_from, rootfs)
    else:
        build_rootfs(rootfs)
    config = default_config(rootless=rootless, args=args, terminal=terminal)
    if edit is not None:
        edit(config)
    write_config(dest, config)
    return config


def write_config(bundle: str, config: dict[str, Any]) -> None:
    """Write `bundle/config.json` (replaced atomically, so readers never see half a file)."""
    path = os.path.join(bundle, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent="\t")
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corral.images.busybox",
        description="Build an OCI bundle (rootfs + config.json) from the host's static busybox.")
    parser.add_argument("dest", help="bundle directory to create")
    parser.add_argument("--rootless", action="store_true", help="a rootless config (userns)")
    parser.add_argument("--terminal", action="store_true", help="process.terminal = true")
    parser.add_argument("--rootfs-only", action="store_true",
                        help="write only the root filesystem into DEST")
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=None,
                        help="the container's command (must come last), default: sh")
    opts = parser.parse_args(argv)
    try:
        if opts.rootfs_only:
            build_rootfs(opts.dest)
        else:
            build_bundle(opts.dest, opts.args or None, rootless=opts.rootless,
                         terminal=opts.terminal)
    except (BusyboxError, OSError, subprocess.CalledProcessError) as e:
        parser.exit(1, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
