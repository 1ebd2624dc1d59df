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

Tar is read as Go's archive/tar (containerd) reads it: PAX, GNU long name
and long link headers and sparse maps are bounded at 1 MiB each, checked
before tarfile reads them, so memory stays small whatever the layer holds;
a bad header checksum or a header cut short is an error (tarfile would end
the archive there in silence); a layer may end in its last entry's padding
or without the end-of-archive blocks; global PAX headers are ignored.

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

from corral.images.errors import LayerInvalid, Unsupported, is_out_of_space
from corral.runtime.paths import PathEscape, secure_join

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_XATTR_PREFIX = "SCHILY.xattr."
_READ_SIZE = 1 << 20  # tarfile's stream reads (10 KiB by default, each a join)
MAX_HEADER_SIZE = 1 << 20  # Go's archive/tar maxSpecialFileSize
MAX_CHAINED_HEADERS = 8  # extended headers before one entry: each nests a call in tarfile
_EXTENDED_HEADERS = {tarfile.XHDTYPE: "PAX", tarfile.SOLARIS_XHDTYPE: "PAX",
                     tarfile.XGLTYPE: "global PAX", tarfile.GNUTYPE_LONGNAME: "GNU long name",
                     tarfile.GNUTYPE_LONGLINK: "GNU long link"}


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


class _LayerTarInfo(tarfile.TarInfo):
    """tarfile's header parsing with Go's bounds, through its `_proc_member` hook."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.TruncatedHeaderError:
            raise LayerInvalid("not a valid tar layer: it ends inside a header") from None
        except tarfile.InvalidHeaderError as e:
            raise LayerInvalid(f"not a valid tar layer: {e}") from None

    def _proc_member(self, tar):
        kind = _EXTENDED_HEADERS.get(self.type)
        if kind is None:
            tar.chained_headers = 0
            return super()._proc_member(tar)
        if self.size > MAX_HEADER_SIZE:
            raise LayerInvalid(f"entry {self.name!r}: a {kind} header of {self.size} bytes "
                               f"(at most {MAX_HEADER_SIZE})")
        tar.chained_headers += 1
        if tar.chained_headers > MAX_CHAINED_HEADERS:
            raise LayerInvalid(f"more than {MAX_CHAINED_HEADERS} extended headers before one entry")
        if self.type == tarfile.XGLTYPE:  # containerd ignores them; tarfile would apply them
            _read_exactly(tar.fileobj, self._block(self.size), "a global PAX header")
            return self.fromtarfile(tar)
        try:
            return super()._proc_member(tar)
        except tarfile.InvalidHeaderError as e:  # tarfile's next() would end the archive
            raise LayerInvalid(f"entry {self.name!r}: a malformed {kind} header ({e})") from None

    def _proc_sparse(self, tar):
        """An old GNU sparse entry, its map's extension blocks bounded."""
        structs, extended, real_size = self._sparse_structs
        del self._sparse_structs
        blocks = 0
        while extended:
            blocks += 1
            if blocks * tarfile.BLOCKSIZE > MAX_HEADER_SIZE:
                raise LayerInvalid(f"entry {self.name!r}: a sparse map over {MAX_HEADER_SIZE} "
                                   "bytes")
            buf = _read_exactly(tar.fileobj, tarfile.BLOCKSIZE, "a sparse map")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = tarfile.nti(buf[pos:pos + 12])
                    length = tarfile.nti(buf[pos + 12:pos + 24])
                except tarfile.InvalidHeaderError:
                    break
                if offset and length:
                    structs.append((offset, length))
            extended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)
        self.size = real_size
        return self

    def _proc_gnusparse_10(self, next, pax_headers, tar):
        """A PAX (GNU 1.0) sparse map, at the start of the data: bounded, as Go's."""
        text = bytearray()
        lines = wanted = 0  # the count's line, then an offset and a length per region
        while lines < 1 + 2 * wanted:
            if len(text) >= MAX_HEADER_SIZE:
                name = pax_headers.get("GNU.sparse.name", next.name)
                raise LayerInvalid(f"entry {name!r}: a sparse map over {MAX_HEADER_SIZE} bytes")
            block = _read_exactly(tar.fileobj, tarfile.BLOCKSIZE, "a sparse map")
            text += block
            lines += block.count(b"\n")
            if lines and not wanted:
                wanted = _map_number(text.split(b"\n", 1)[0])
        numbers = [_map_number(n) for n in text.split(b"\n")[1:1 + 2 * wanted]]
        next.offset_data = tar.fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))


def _map_number(text: bytes) -> int:
    if not text.isdigit():
        raise LayerInvalid("not a valid tar layer: a malformed sparse map")
    return int(text)


def _read_exactly(stream, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise LayerInvalid(f"not a valid tar layer: it ends inside {what}")
    return data


class _LayerTarFile(tarfile.TarFile):
    """A tar stream read one entry at a time, keeping none (tarfile keeps them all)."""

    tarinfo = _LayerTarInfo
    chained_headers = 0
    _previous: tarfile.TarInfo | None = None

    def next(self):
        if self.firstmember is None and not self._previous_complete():
            return None
        member = super().next()
        self.members.clear()
        self._previous = member
        return member

    def _previous_complete(self) -> bool:
        """Skip to the next header; False at EOF in the padding, as Go's reader accepts.

        umoci, for one, writes layers without the last padding or end blocks.
        tarfile refuses them, but a member's data must still be whole.
        """
        previous, pos = self._previous, self.fileobj.tell()
        if previous is None or self.offset <= pos:
            return True
        data_end = self.offset  # a sparse entry's stored size is not kept: its padding too
        if previous.sparse is None and (previous.isreg() or
                                        previous.type not in tarfile.SUPPORTED_TYPES):
            data_end = previous.offset_data + previous.size
        if data_end > pos:
            self.fileobj.seek(data_end - 1)
            if not self.fileobj.read(1):
                raise LayerInvalid(f"entry {previous.name!r}: the layer ends inside its data")
        padding = self.offset - self.fileobj.tell()
        return len(self.fileobj.read(padding)) == padding


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
    raise Unsupported(f"unsupported layer media type {media_type!r}")


def apply_layer(stream, dest: str, *, limit: int, whiteouts: str = "delete") -> str:
    """Unpack the tar read from `stream` into `dest`; returns the diff ID."""
    reader = _HashingReader(stream)
    unpacked = 0
    directories: list[tuple[str, int]] = []  # (path, mtime)
    written: set[str] = set()  # this layer's own paths: an opaque marker keeps them
    try:
        with _LayerTarFile.open(fileobj=reader, mode="r|", bufsize=_READ_SIZE) as tar:
            while (member := tar.next()) is not None:
                # Headers count too: a stream of empty entries is no smaller a bomb.
                unpacked += tarfile.BLOCKSIZE + max(member.size, 0)
                if unpacked > limit:
                    raise LayerInvalid(f"layer unpacks to more than {limit} bytes")
                path = _place(dest, member.name)
                if path is None:
                    continue  # the root itself
                base = os.path.basename(path)
                if base == OPAQUE_MARKER:
                    _opaque(dest, os.path.dirname(path), whiteouts, written)
                elif base.startswith(WHITEOUT_PREFIX):
                    hidden_name = base[len(WHITEOUT_PREFIX):]
                    if hidden_name in ("", ".", ".."):
                        raise LayerInvalid(f"entry {member.name!r}: a whiteout of "
                                           f"{hidden_name or 'nothing'!r} names no entry")
                    hidden = _inside(dest, os.path.join(os.path.dirname(path), hidden_name))
                    if hidden not in written:  # it hides lower layers' files, not its own
                        _whiteout(dest, hidden, whiteouts)
                else:
                    _extract(tar, member, path, dest)
                    written.add(path)
                    if member.isdir():
                        directories.append((path, member.mtime))
            while reader.read(65536):  # the tail, so the diff ID covers the whole tar
                pass
    except RecursionError:
        raise LayerInvalid("not a valid tar layer: headers nested too deep") from None
    except tarfile.TarError as e:
        raise LayerInvalid(f"not a valid tar layer: {e}") from None
    except _decompression_errors() as e:
        raise LayerInvalid(f"corrupt compressed layer: {e}") from None
    except (EOFError, OSError) as e:
        if is_out_of_space(e):
            raise  # the disk's fault, not the layer's: the caller names the data root
        raise LayerInvalid(f"cannot unpack layer: {e}") from None
    for path, mtime in reversed(directories):  # children first changed their parents' mtime
        os.utime(path, (mtime, mtime), follow_symlinks=False)
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
        raise LayerInvalid(f"entry {name!r}: absolute path")
    if ".." in parts:
        raise LayerInvalid(f"entry {name!r}: '..' in path")
    if not parts:
        return None
    parent = _resolve_inside(dest, parts[:-1], name)
    return _inside(dest, os.path.join(parent, parts[-1]))


def _inside(dest: str, path: str) -> str:
    """`path` if it lies strictly inside `dest`: no operation may touch `dest` or above."""
    normal = os.path.normpath(path)
    if not normal.startswith(os.path.normpath(dest) + "/"):
        raise LayerInvalid(f"{path!r} is not inside the layer's directory")
    return normal


def _resolve_inside(dest: str, parts: list[str], name: str) -> str:
    """Follow the existing directories and symlinks of `parts`, never out of `dest`."""
    try:
        return secure_join(dest, "/".join(parts), strict=True)
    except PathEscape as e:
        why = {errno.EXDEV: "a symlink in its path leads out of the layer",
               errno.ENOTDIR: "a file in its path is not a directory",
               errno.ELOOP: "too many symlinks"}.get(e.errno, e.strerror)
        raise LayerInvalid(f"entry {name!r}: {why}") from None


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, dest: str) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    existing = _lstat(path)
    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        _remove(dest, path)  # a later layer replaces what an earlier one put there
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
            raise LayerInvalid(f"entry {member.name!r}: hard link to {member.linkname!r} "
                               "leads out of the layer")
        target = os.path.join(_resolve_inside(dest, link_parts[:-1], member.name),
                              link_parts[-1])
        target_stat = _lstat(target)
        if target_stat is None or stat.S_ISDIR(target_stat.st_mode):
            raise LayerInvalid(f"entry {member.name!r}: hard link to a missing file or a "
                               f"directory {member.linkname!r}")
        os.link(target, path, follow_symlinks=False)
        return  # a hard link shares its target's owner, mode and times
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() \
            else stat.S_IFIFO
        os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
    else:
        raise LayerInvalid(f"entry {member.name!r}: unsupported type {member.type!r}")
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


def _whiteout(dest: str, path: str, mode: str) -> None:
    if mode == "overlay":
        if _lstat(path) is not None:
            _remove(dest, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    elif _lstat(path) is not None:
        _remove(dest, path)


def _opaque(dest: str, directory: str, mode: str, written: set[str]) -> None:
    """Hide what lower layers had in `directory` (not what this layer put there)."""
    os.makedirs(directory, exist_ok=True)
    if mode == "overlay":
        os.setxattr(directory, "trusted.overlay.opaque", b"y")
        return
    for name in os.listdir(directory):
        child = os.path.join(directory, name)
        if child not in written:
            _remove(dest, child)


def _lstat(path: str):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(dest: str, path: str) -> None:
    _inside(dest, path)
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
