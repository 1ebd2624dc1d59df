"""Apply an image layer (tar, tar+gzip, tar+zstd) to a directory, safely.

Every entry lands inside `dest` or the layer is rejected: no absolute
names, no `..`, no symlink or hard link that leads out (a symlink in the
image is followed as if `dest` were `/`, as containerd does, but one whose
`..` climbs above it is an error).  The unpacked size is bounded, so a
small blob cannot expand into a disk-filling bomb.  The diff ID (sha256 of
the uncompressed tar) is computed on the way, for checking against the
image config's rootfs.diff_ids.

Whiteouts: `.wh.NAME` deletes NAME, `.wh..wh..opq` empties its directory
(mode "delete", for a flat tree); or they become overlayfs whiteouts, a 0:0
character device and the trusted.overlay.opaque xattr (mode "overlay", for
a snapshot that will be a lower layer).

The caller unpacks into a fresh directory and removes it if this raises:
a rejected layer leaves nothing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile

from corral.runtime.paths import PathEscape, secure_join

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_XATTR_PREFIX = "SCHILY.xattr."
_READ_SIZE = 1 << 20  # tarfile's stream reads (10 KiB by default, each a join)


class LayerError(ValueError):
    """A layer that is malformed or tries to write outside its directory."""


class _HashingReader:
    """Reads through, hashing and counting what passes (the decompressed tar)."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


def open_layer(path: str, media_type: str):
    """The decompressed stream of a layer blob, by its media type."""
    if media_type.endswith("+gzip") or media_type.endswith(".tar.gzip"):
        # ISA-L's inflate (python-isal) is several times faster than zlib's: gzip
        # layers are most of what a pull decompresses.
        from isal import igzip

        return igzip.open(path, "rb")
    if media_type.endswith("+zstd") or media_type.endswith(".tar.zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    if media_type.endswith(".tar") or media_type.endswith("tar.diff"):
        return open(path, "rb")
    raise LayerError(f"unsupported layer media type {media_type!r}")


def apply_layer(stream, dest: str, *, limit: int, whiteouts: str = "delete") -> str:
    """Unpack the tar read from `stream` into `dest`; returns the diff ID."""
    reader = _HashingReader(stream)
    unpacked = 0
    directories: list[tuple[str, tarfile.TarInfo]] = []
    written: set[str] = set()  # this layer's own paths: an opaque marker keeps them
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_READ_SIZE) as tar:
            for member in tar:
                unpacked += max(member.size, 0)
                if unpacked > limit:
                    raise LayerError(f"layer unpacks to more than {limit} bytes")
                path = _place(dest, member.name)
                if path is None:
                    continue  # the root itself
                base = os.path.basename(path)
                if base == OPAQUE_MARKER:
                    _opaque(os.path.dirname(path), whiteouts, written)
                elif base.startswith(WHITEOUT_PREFIX):
                    hidden = os.path.join(os.path.dirname(path), base[len(WHITEOUT_PREFIX):])
                    if hidden not in written:  # it hides lower layers' files, not its own
                        _whiteout(hidden, whiteouts)
                else:
                    _extract(tar, member, path, dest)
                    written.add(path)
                    if member.isdir():
                        directories.append((path, member))
            while reader.read(65536):  # the tail, so the diff ID covers the whole tar
                pass
    except tarfile.TarError as e:
        raise LayerError(f"not a valid tar layer: {e}") from None
    except _decompression_errors() as e:
        raise LayerError(f"corrupt compressed layer: {e}") from None
    except (EOFError, OSError) as e:
        if isinstance(e, LayerError):
            raise
        raise LayerError(f"cannot unpack layer: {e}") from None
    for path, member in reversed(directories):  # children first changed their parents' mtime
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    return "sha256:" + reader.sha256.hexdigest()


def _decompression_errors() -> tuple[type[Exception], ...]:
    import zlib

    import zstandard
    from isal.isal_zlib import error as IsalError

    return zlib.error, IsalError, zstandard.ZstdError


def _place(dest: str, name: str) -> str | None:
    """Where an entry goes: its parent resolved inside `dest`, the last name kept."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/"):
        raise LayerError(f"entry {name!r}: absolute path")
    if ".." in parts:
        raise LayerError(f"entry {name!r}: '..' in path")
    if not parts:
        return None
    parent = _resolve_inside(dest, parts[:-1], name)
    return os.path.join(parent, parts[-1])


def _resolve_inside(dest: str, parts: list[str], name: str) -> str:
    """Follow the existing directories and symlinks of `parts`, never out of `dest`."""
    try:
        return secure_join(dest, "/".join(parts), strict=True)
    except PathEscape as e:
        why = {errno.EXDEV: "a symlink in its path leads out of the layer",
               errno.ENOTDIR: "a file in its path is not a directory",
               errno.ELOOP: "too many symlinks"}.get(e.errno, e.strerror)
        raise LayerError(f"entry {name!r}: {why}") from None


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, dest: str) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    existing = _lstat(path)
    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        _remove(path)  # a later layer replaces what an earlier one put there
    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(path, 0o700)
    elif member.isreg():
        source = tar.extractfile(member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        link_parts = [p for p in member.linkname.split("/") if p not in ("", ".")]
        if member.linkname.startswith("/") or ".." in link_parts or not link_parts:
            raise LayerError(f"entry {member.name!r}: hard link to {member.linkname!r} "
                             "leads out of the layer")
        target = os.path.join(_resolve_inside(dest, link_parts[:-1], member.name),
                              link_parts[-1])
        target_stat = _lstat(target)
        if target_stat is None or stat.S_ISDIR(target_stat.st_mode):
            raise LayerError(f"entry {member.name!r}: hard link to a missing file or a "
                             f"directory {member.linkname!r}")
        os.link(target, path, follow_symlinks=False)
        return  # a hard link shares its target's owner, mode and times
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() \
            else stat.S_IFIFO
        os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
    else:
        raise LayerError(f"entry {member.name!r}: unsupported type {member.type!r}")
    _set_metadata(member, path)


def _set_metadata(member: tarfile.TarInfo, path: str) -> None:
    os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)
    for key, value in (member.pax_headers or {}).items():
        if key.startswith(_XATTR_PREFIX):
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            try:
                os.setxattr(path, key[len(_XATTR_PREFIX):], raw, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
    if not member.isdir():
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _whiteout(path: str, mode: str) -> None:
    if mode == "overlay":
        if _lstat(path) is not None:
            _remove(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    elif _lstat(path) is not None:
        _remove(path)


def _opaque(directory: str, mode: str, written: set[str]) -> None:
    """Hide what lower layers had in `directory` (not what this layer put there)."""
    os.makedirs(directory, exist_ok=True)
    if mode == "overlay":
        os.setxattr(directory, "trusted.overlay.opaque", b"y")
        return
    for name in os.listdir(directory):
        child = os.path.join(directory, name)
        if child not in written:
            _remove(child)


def _lstat(path: str):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
