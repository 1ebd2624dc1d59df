"""Hostile tar layers (issue 10): whiteouts of `.` and `..`, header bombs, and the tar
tails Go's archive/tar accepts.

Layers are written byte by byte here (tarfile cannot write most of them) and applied
both directly (`apply_layer`, in a child process when its memory is measured) and
through a real registry pull and `ImageService`, which must leave nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zlib

import pytest

from corral.images.errors import LayerInvalid
from corral.images.service import ImageService
from corral.images.unpack import MAX_HEADER_SIZE, apply_layer
from tests.integration.layer_trees import mounted_image
from tests.integration.registry_server import Registry
from tests.integration.test_registry_pull_hostile import SAFE, assert_nothing_left, pull, push

pytestmark = pytest.mark.root
BLOCK = 512
MiB = 1 << 20


# --- tar, by hand -------------------------------------------------------------------------------
def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **fields) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, 0o644, 1_000_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> bytes:
    return header(name, len(data), kind) + padded(data)


def pax_body(records: dict[str, str]) -> bytes:
    """PAX records: "LEN key=value\\n" each, LEN counting itself."""
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length += 1
        body += str(length).encode() + record
    return body


def pax(records: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> bytes:
    body = pax_body(records)
    return header("pax", len(body), kind) + padded(body)


END = bytes(2 * BLOCK)


def gzip_stream(*pieces) -> bytes:
    """gzip of the pieces: bytes, or an int for that many zero bytes (fed a MiB at a time)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = []
    for piece in pieces:
        if isinstance(piece, int):
            zeros = bytes(MiB)
            for start in range(0, piece, MiB):
                out.append(compressor.compress(zeros[:min(MiB, piece - start)]))
        else:
            out.append(compressor.compress(piece))
    out.append(compressor.flush())
    return b"".join(out)


def apply(data: bytes, dest) -> str:
    return apply_layer(io.BytesIO(data), str(dest), limit=1 << 40)


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = Registry(str(tmp_path_factory.mktemp("registry")))
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path):
    svc = ImageService(str(tmp_path / "root"))
    yield svc
    for record in svc.list():
        svc.remove(record.name, force=True)
    svc.close()


# --- 1. whiteouts that name `.` or `..` ---------------------------------------------------------
DOT_WHITEOUTS = [".wh..", ".wh...", "sub/.wh...", "./.wh..", "sub/.wh..", ".wh."]


@pytest.mark.parametrize("name", DOT_WHITEOUTS)
@pytest.mark.parametrize("mode", ["delete", "overlay"])
def test_whiteouts_of_dot_and_dot_dot_are_refused(tmp_path, name, mode):
    dest = tmp_path / "layer"
    dest.mkdir()
    (tmp_path / "sibling").write_bytes(b"precious\n")
    layer = member("sub/", kind=tarfile.DIRTYPE) + member("sub/keep", b"k") + member(name) + END
    with pytest.raises(LayerInvalid, match=r"a whiteout of .* names no entry"):
        apply_layer(io.BytesIO(layer), str(dest), limit=1 << 30, whiteouts=mode)
    assert sorted(os.listdir(tmp_path)) == ["layer", "sibling"]
    assert (tmp_path / "sibling").read_bytes() == b"precious\n"
    assert (dest / "sub" / "keep").read_bytes() == b"k"


def test_a_dot_dot_whiteout_image_leaves_nothing(service, registry, tmp_path):
    ref = push(registry, tmp_path, "test/wh-dotdot", [(SAFE, "gzip"),
                                                      (member(".wh...") + END, "gzip")])
    record = pull(service, ref)
    with pytest.raises(LayerInvalid, match=r"entry '\.wh\.\.\.': a whiteout of '\.\.'"):
        service.unpack_new(record.name)
    assert_nothing_left(service)


def test_a_concurrent_unpack_stays_complete(service, registry, tmp_path):
    """Image A (thousands of files) unpacks while image B's `.wh...` is tried again and
    again in the same root: A is committed whole, every B attempt is refused."""
    files = [f"d{i // 100}/f{i}" for i in range(4000)]
    big = b"".join(member(name, name.encode()) for name in files) + END
    ref_a = push(registry, tmp_path, "test/wh-big", [(big, "gzip")])
    ref_b = push(registry, tmp_path, "test/wh-hostile", [(SAFE, "gzip"),
                                                         (member(".wh...") + END, "tar")])
    record_a = pull(service, ref_a)
    record_b = pull(service, ref_b)
    errors, refusals = [], []

    def unpack_a():
        try:
            service.unpack(record_a.name)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=unpack_a)
    thread.start()
    while thread.is_alive() or not refusals:
        with pytest.raises(LayerInvalid, match=r"a whiteout of '\.\.'"):
            service.unpack(record_b.name)
        refusals.append(1)
    thread.join()
    assert errors == []
    with mounted_image(service, record_a.name) as root:
        found = [os.path.relpath(os.path.join(d, f), root)
                 for d, _, names in os.walk(root) for f in names]
        assert sorted(found) == sorted(files)
        with open(os.path.join(root, files[-1]), "rb") as f:
            assert f.read() == files[-1].encode()
    service.remove(record_a.name, force=True)
    service.remove(record_b.name, force=True)
    service.gc()
    assert_nothing_left(service)


# --- 2. header bombs ----------------------------------------------------------------------------
CHILD = """
import json, resource, sys
from corral.images.errors import LayerInvalid
from corral.images.unpack import apply_layer, open_layer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = None
with open_layer(sys.argv[1], "application/vnd.oci.image.layer.v1.tar+gzip") as stream:
    try:
        apply_layer(stream, sys.argv[2], limit=1 << 40)
    except LayerInvalid as e:
        error = str(e)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "grew_kib": after - before}))
"""


def unpack_in_child(tmp_path, blob: bytes) -> dict:
    """apply_layer in a fresh process: its error and how much its peak RSS grew."""
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    dest = tmp_path / "dest"
    dest.mkdir()
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(dest)],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout)


BOMB = 64 * MiB


@pytest.mark.parametrize("kind, what", [
    (tarfile.XHDTYPE, "PAX"), (tarfile.XGLTYPE, "global PAX"),
    (tarfile.GNUTYPE_LONGNAME, "GNU long name"), (tarfile.GNUTYPE_LONGLINK, "GNU long link")])
def test_a_huge_extended_header_is_refused_in_small_memory(tmp_path, kind, what):
    blob = gzip_stream(header("bomb", BOMB, kind), BOMB, member("after", b"x"), END)
    assert len(blob) < 256 * 1024
    result = unpack_in_child(tmp_path, blob)
    assert result["error"] == f"entry 'bomb': a {what} header of {BOMB} bytes (at most {MiB})"
    assert result["grew_kib"] < 16 * 1024, result


def test_headers_up_to_a_mebibyte_are_read(tmp_path):
    """Go's bound is inclusive: a 1 MiB PAX header is fine, one byte more is not."""
    def records(filler: int) -> dict[str, str]:
        return {"comment": "c" * filler, "SCHILY.xattr.user.big": "v"}

    filler = MAX_HEADER_SIZE - len(pax_body(records(0)))
    while len(pax_body(records(filler))) > MAX_HEADER_SIZE:
        filler -= 1
    assert len(pax_body(records(filler))) == MAX_HEADER_SIZE
    exact = pax(records(filler))
    apply(exact + member("file", b"data") + END, tmp_path / "a")
    assert (tmp_path / "a" / "file").read_bytes() == b"data"
    over = pax(records(filler + 1))
    with pytest.raises(LayerInvalid, match=rf"a PAX header of {MiB + 1} bytes"):
        apply(over + member("file", b"data") + END, tmp_path / "b")


def test_a_chain_of_extended_headers_is_refused(tmp_path):
    chain = b"".join(pax({"comment": "c" * (MiB - 100)}) for _ in range(200))
    result = unpack_in_child(tmp_path, gzip_stream(chain, member("f", b"x"), END))
    assert result["error"] == "more than 8 extended headers before one entry"
    assert result["grew_kib"] < 32 * 1024, result


def test_a_header_bomb_pull_fails_and_leaves_nothing(service, registry, tmp_path):
    """The case of the issue: 256 MiB of PAX header in a ~254 KiB gzip layer."""
    size = 256 * MiB
    tar = header("bomb", size, tarfile.XHDTYPE) + bytes(size) + member("after", b"x") + END
    ref = push(registry, tmp_path, "test/pax-bomb", [(tar, "gzip")])
    del tar
    record = pull(service, ref)
    with pytest.raises(LayerInvalid, match=rf"a PAX header of {size} bytes \(at most {MiB}\)"):
        service.unpack_new(record.name)
    assert_nothing_left(service)


def test_global_headers_are_ignored_as_containerd_does(tmp_path):
    """tarfile applies a global `path` to every later entry; Go returns it as an entry of
    its own and containerd skips it."""
    layer = pax({"path": "renamed", "uid": "7"}, tarfile.XGLTYPE) + member("file", b"x") + END
    apply(layer, tmp_path)
    assert os.listdir(tmp_path) == ["file"]
    assert os.stat(tmp_path / "file").st_uid == 0


def sparse_map_10(regions: list[tuple[int, int]]) -> bytes:
    lines = [str(len(regions))] + [str(n) for region in regions for n in region]
    return padded(("\n".join(lines) + "\n").encode())


def test_a_gnu_sparse_file_unpacks(tmp_path):
    """PAX sparse format 1.0: the map at the head of the data, then the stored bytes."""
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
               "GNU.sparse.name": "holey", "GNU.sparse.realsize": "8192"}
    data = sparse_map_10([(4096, 512)]) + b"A" * 512
    layer = pax(records) + header("GNUSparseFile.0/holey", len(data)) + data + END
    apply(layer, tmp_path)
    assert (tmp_path / "holey").read_bytes() == bytes(4096) + b"A" * 512 + bytes(3584)


def test_a_sparse_map_bomb_is_refused(tmp_path):
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
               "GNU.sparse.name": "holey", "GNU.sparse.realsize": "1"}
    head = b"1000000000\n"  # regions claimed; 4 MiB of map follow, each "0\n"
    body_size = len(head) + 4 * MiB
    stream = gzip_stream(pax(records), header("GNUSparseFile.0/holey", body_size), head,
                         *[b"0\n" * (MiB // 2)] * 8, bytes(-body_size % BLOCK), END)
    result = unpack_in_child(tmp_path, stream)
    assert result["error"] == f"entry 'holey': a sparse map over {MiB} bytes"
    assert result["grew_kib"] < 32 * 1024, result


def old_gnu_sparse(name: str, real_size: int, extension_blocks: int) -> bytes:
    """A GNU 'S' header with one region in it and `extension_blocks` blocks of more regions."""
    block = bytearray(header(name, BLOCK, tarfile.GNUTYPE_SPARSE))
    block[257:265] = b"ustar  \0"
    block[386:410] = b"%011o\0%011o\0" % (0, BLOCK)
    block[482] = 1 if extension_blocks else 0
    block[483:495] = b"%011o\0" % real_size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    extensions = b""
    for i in range(extension_blocks):
        extension = bytearray(BLOCK)
        extension[504] = 1 if i + 1 < extension_blocks else 0
        extensions += bytes(extension)
    return bytes(block) + extensions


def test_old_gnu_sparse_files_unpack_and_their_maps_are_bounded(tmp_path):
    layer = old_gnu_sparse("holey", 4096, 1) + b"B" * BLOCK + END
    apply(layer, tmp_path / "a")
    assert (tmp_path / "a" / "holey").read_bytes() == b"B" * BLOCK + bytes(4096 - BLOCK)
    bomb = old_gnu_sparse("holey", 4096, 3 * MiB // BLOCK) + b"B" * BLOCK + END
    with pytest.raises(LayerInvalid, match=rf"entry 'holey': a sparse map over {MiB} bytes"):
        apply(bomb, tmp_path / "b")


def test_many_entries_keep_memory_small(tmp_path):
    """tarfile keeps every member it read; the unpacker keeps none."""
    entries = b"".join(member(f"f{i % 50}", b"") for i in range(100_000))
    result = unpack_in_child(tmp_path, gzip_stream(entries, END))
    assert result["error"] is None
    assert result["grew_kib"] < 32 * 1024, result


# --- 3. tails Go's reader accepts, and truncations it does not ----------------------------------
LAST = member("etc/", kind=tarfile.DIRTYPE) + header("etc/data", 700) + b"d" * 700
TAILS = {
    "no end blocks": LAST + bytes(-700 % BLOCK),
    "one end block": LAST + bytes(-700 % BLOCK) + bytes(BLOCK),
    "no padding and no end blocks": LAST,
    "part of the padding": LAST + bytes(10),
    "a directory last, no end blocks": LAST + bytes(-700 % BLOCK) + member("var/", kind=b"5"),
}


@pytest.mark.parametrize("case", TAILS)
def test_layers_without_end_blocks_or_padding_unpack(service, registry, tmp_path, case):
    tar = TAILS[case]
    ref = push(registry, tmp_path, "test/tail-" + case.replace(" ", "-").replace(",", ""),
               [(tar, "gzip")])  # the config's diff ID is the sha256 of exactly these bytes
    record = pull(service, ref, unpack=True)
    with mounted_image(service, record.name) as root:
        with open(os.path.join(root, "etc", "data"), "rb") as f:
            assert f.read() == b"d" * 700
    service.remove(record.name, force=True)
    service.gc()
    assert_nothing_left(service)


@pytest.mark.parametrize("tar, message", [
    (LAST[:-5], r"unexpected end of data"),
    (LAST + bytes(-700 % BLOCK) + header("skipped", 4000, b"x")[:BLOCK] + b"x" * 10,
     r"entry .skipped.: a malformed PAX header"),
    (member(".wh.gone", b"x" * 600)[:BLOCK + 100], r"entry '\.wh\.gone': the layer ends inside"),
    (LAST + bytes(-700 % BLOCK) + header("cut")[:300], r"it ends inside a header"),
], ids=["data cut short", "extended header cut short", "skipped data cut short",
        "header cut short"])
def test_truncated_layers_are_refused(tmp_path, tar, message):
    with pytest.raises(LayerInvalid, match=message):
        apply(tar, tmp_path)


def test_a_corrupt_header_after_the_first_is_an_error(tmp_path):
    """tarfile would end the archive there in silence: the rest of the layer lost, its diff
    ID still matching.  Go's reader says ErrHeader."""
    second = bytearray(member("second", b"2"))
    second[148:156] = b"0000000\0"
    with pytest.raises(LayerInvalid, match=r"not a valid tar layer: bad checksum"):
        apply(member("first", b"1") + bytes(second) + member("third", b"3") + END, tmp_path)
