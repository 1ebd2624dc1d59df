"""Resolve container paths inside a root filesystem without escaping it.

An image controls its own symlinks: `/etc -> /host/etc` or `a -> ../../..`
must not let a mount land outside the rootfs.  Every symlink met while
walking is resolved as if `root` were `/` (as filepath-securejoin does for
runc), and `..` stops at the root.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_SYMLINKS = 255


class PathEscape(OSError):
    pass


def secure_join(root: str, unsafe: str, *, strict: bool = False) -> str:
    """`root` + `unsafe`, with symlinks in the existing part resolved within `root`.

    By default a `..` stops at `root` (as filepath-securejoin does).  With
    `strict`, one that would climb above it is an error (errno EXDEV), and so
    is an existing component that is neither a directory nor a symlink
    (ENOTDIR): what an image layer must not do.
    """
    resolved: list[str] = []
    pending = [c for c in unsafe.split("/") if c not in ("", ".")]
    pending.reverse()  # a stack: next component on top
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            elif strict:
                raise PathEscape(errno.EXDEV, f"{unsafe!r} leads out of {root}")
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        except NotADirectoryError:
            raise PathEscape(errno.ENOTDIR, f"not a directory in path {unsafe!r}") from None
        if not stat.S_ISLNK(st.st_mode):
            if strict and not stat.S_ISDIR(st.st_mode):
                raise PathEscape(errno.ENOTDIR, f"{part!r} in {unsafe!r} is not a directory")
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise PathEscape(errno.ELOOP, f"too many symlinks resolving {unsafe!r}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
    return os.path.join(root, *resolved) if resolved else root


def make_dirs_inside(root: str, path: str, mkdir, mode: int = 0o755) -> None:
    """mkdir -p for a path already resolved by `secure_join` (so no symlinks remain)."""
    relative = os.path.relpath(path, root)
    if relative == ".":
        return
    current = root
    for part in relative.split("/"):
        current = os.path.join(current, part)
        if not os.path.lexists(current):
            mkdir(current, mode)
        elif os.path.islink(current):
            raise PathEscape(errno.ELOOP, f"{current} became a symlink while being created")
