"""Applying image layers: contents, whiteouts, and hostile tars rejected with nothing written
outside.  Needs root (ownership, device nodes, trusted xattrs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile

import pytest

from corral.images.errors import LayerInvalid
from corral.images.unpack import apply_layer, open_layer

pytestmark = pytest.mark.root
LIMIT = 64 * 2**20


def make_tar(*entries) -> bytes:
    """entries: (name, kind, extra) with kind file/dir/sym/link/chr/fifo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_000_000_000
            info.uid, info.gid = 1000, 100
            data = None
            if kind == "file":
                data = extra.encode()
                info.size, info.mode = len(data), 0o640
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o750
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, 1, 3, 0o666
            elif kind == "fifo":
                info.type, info.mode = tarfile.FIFOTYPE, 0o600
            elif kind == "xattr-file":
                data = b"x"
                info.size, info.mode = 1, 0o644
                info.pax_headers = {"SCHILY.xattr.user.origin": extra}
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def apply(data: bytes, dest, **kw) -> str:
    return apply_layer(io.BytesIO(data), str(dest), limit=kw.pop("limit", LIMIT), **kw)


def test_a_layer_with_every_kind_of_entry(tmp_path):
    layer = make_tar(("etc", "dir", None), ("etc/passwd", "file", "root:x:0:0\n"),
                     ("etc/link", "sym", "passwd"), ("etc/hard", "link", "etc/passwd"),
                     ("dev", "dir", None), ("dev/null", "chr", None), ("run/fifo", "fifo", None),
                     ("srv/tagged", "xattr-file", "layer-1"))
    diff_id = apply(layer, tmp_path)
    assert diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    passwd = os.lstat(tmp_path / "etc" / "passwd")
    assert (passwd.st_uid, passwd.st_gid, stat.S_IMODE(passwd.st_mode)) == (1000, 100, 0o640)
    assert passwd.st_mtime == 1_000_000_000 and passwd.st_nlink == 2
    assert os.readlink(tmp_path / "etc" / "link") == "passwd"
    assert os.lstat(tmp_path / "etc" / "hard").st_ino == passwd.st_ino
    assert stat.S_ISCHR(os.lstat(tmp_path / "dev" / "null").st_mode)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run" / "fifo").st_mode)
    assert os.getxattr(tmp_path / "srv" / "tagged", "user.origin") == b"layer-1"
    assert os.lstat(tmp_path / "etc").st_mtime == 1_000_000_000


def test_whiteouts_delete_and_opaque_directories(tmp_path):
    apply(make_tar(("a/keep", "file", "1"), ("a/gone", "file", "2"), ("b/old", "file", "3"),
                   ("b/older", "file", "4")), tmp_path)
    apply(make_tar(("a/.wh.gone", "file", ""), ("b/new", "file", "5"),
                   ("b/.wh..wh..opq", "file", "")), tmp_path)
    assert sorted(os.listdir(tmp_path / "a")) == ["keep"]
    assert sorted(os.listdir(tmp_path / "b")) == ["new"]  # this layer's own entry stays


def test_overlay_whiteouts_for_snapshots(tmp_path):
    apply(make_tar(("a/.wh.gone", "file", ""), ("b/.wh..wh..opq", "file", "")), tmp_path,
          whiteouts="overlay")
    gone = os.lstat(tmp_path / "a" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(tmp_path / "b", "trusted.overlay.opaque") == b"y"


def test_symlinks_in_the_image_resolve_inside(tmp_path):
    apply(make_tar(("usr/lib", "dir", None), ("lib", "sym", "/usr/lib"),
                   ("lib/libx.so", "file", "x")), tmp_path)
    assert (tmp_path / "usr" / "lib" / "libx.so").read_text() == "x"


@pytest.mark.parametrize("entries, why", [
    ([("../escape", "file", "x")], "'..' in path"),
    ([("/etc/passwd", "file", "x")], "absolute path"),
    ([("up", "sym", "../../.."), ("up/escape", "file", "x")], "leads out of the layer"),
    ([("l", "sym", "a/../../x"), ("l/y", "file", "x")], "leads out of the layer"),
    ([("hard", "link", "../../etc/shadow")], "hard link"),
    ([("hard", "link", "/etc/shadow")], "hard link"),
    ([("f", "file", "x"), ("f/child", "file", "y")], "not a directory"),
])
def test_hostile_layers_are_rejected_and_write_nothing_outside(tmp_path, entries, why):
    dest = tmp_path / "layer"
    dest.mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(LayerInvalid, match=why):
        apply(make_tar(*entries), dest)
    assert sorted(os.listdir(tmp_path)) == before
    assert not os.path.exists("/escape") and not os.path.exists(tmp_path / "escape")


def test_a_tar_bomb_is_bounded(tmp_path):
    bomb = gzip.compress(make_tar(("big", "file", "0" * 5_000_000)))
    assert len(bomb) < 50_000
    blob = tmp_path / "bomb.tar.gz"
    blob.write_bytes(bomb)
    with open_layer(str(blob), "application/vnd.oci.image.layer.v1.tar+gzip") as stream:
        with pytest.raises(LayerInvalid, match="more than 1000000 bytes"):
            apply_layer(stream, str(tmp_path / "out"), limit=1_000_000)


def test_garbage_is_not_a_layer(tmp_path):
    with pytest.raises(LayerInvalid, match="not a valid tar"):
        apply(b"this is not a tar archive at all" * 40, tmp_path)


@pytest.mark.parametrize("media_type, compress", [
    ("application/vnd.oci.image.layer.v1.tar", lambda b: b),
    ("application/vnd.oci.image.layer.v1.tar+gzip", gzip.compress),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", gzip.compress),
    ("application/vnd.oci.image.layer.v1.tar+zstd",
     lambda b: __import__("zstandard").ZstdCompressor().compress(b)),
])
def test_compressions_and_the_diff_id(tmp_path, media_type, compress):
    layer = make_tar(("hello", "file", "world"))
    blob = tmp_path / "blob"
    blob.write_bytes(compress(layer))
    with open_layer(str(blob), media_type) as stream:
        diff_id = apply_layer(stream, str(tmp_path / "out"), limit=LIMIT)
    assert diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert (tmp_path / "out" / "hello").read_text() == "world"


@pytest.mark.parametrize("media_type, compress", [
    ("application/vnd.oci.image.layer.v1.tar+gzip", gzip.compress),
    ("application/vnd.oci.image.layer.v1.tar+zstd",
     lambda b: __import__("zstandard").ZstdCompressor().compress(b)),
])
def test_corrupt_compressed_data_is_a_layer_error(tmp_path, media_type, compress):
    # A registry may serve a blob matching its digest whose stream is still broken.
    good = compress(make_tar(("hello", "file", "world" * 5000)))
    middle = len(good) // 2
    blob = tmp_path / "blob"
    blob.write_bytes(good[:middle] + bytes(64) + good[middle + 64:])
    with open_layer(str(blob), media_type) as stream:
        with pytest.raises(LayerInvalid, match="corrupt compressed|not a valid tar|cannot unpack"):
            apply_layer(stream, str(tmp_path / "out"), limit=LIMIT)
