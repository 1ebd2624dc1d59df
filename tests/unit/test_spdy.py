"""SPDY/3.1 framing against the spec's layouts and frames written by Go's spdy framer.

The GO_* hex strings were written by github.com/moby/spdystream/spdy (the
framer kubelet's remotecommand client uses), one framer in sequence, so
the header blocks share one zlib context, as on a real connection.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from corral.cri.streaming import spdy

GO_SYN_STREAM_1 = ("80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c2"
                   "9a0a0a6800000000ffff")  # stream 1, {streamType: error}
GO_SYN_STREAM_3 = ("800300010100002f0000000300000000000002a5470c295029930829b08bc079c3c2c0c28081"
                   "8181b30812c199a084cf6800000000ffff")  # stream 3, FIN, data/port/requestID
GO_SYN_REPLY_1 = "800300020000000e000000016260606000000000ffff"  # stream 1, no headers
GO_DATA_FIN = "00000005010000026869"                  # stream 5, FIN, "hi"
GO_PING = "800300060000000400000007"                  # id 7
GO_GOAWAY = "80030007000000080000000900000000"        # last good 9, OK
GO_RST = "80030003000000080000000300000005"           # stream 3, CANCEL
GO_WINDOW_UPDATE = "800300090000000800000003000003e8"  # stream 3, +1000


def frame(hex_text: str, codec: spdy.HeaderCodec):
    data = bytes.fromhex(hex_text)
    header = spdy.parse_header(data)
    assert header.length == len(data) - spdy.HEADER_SIZE
    if not header.control:
        return header, data[spdy.HEADER_SIZE:]
    return header, spdy.parse_control(header, data[spdy.HEADER_SIZE:], codec)


def test_dictionary_is_the_specs():
    # SPDY/3 §2.6.10.1: 1423 bytes; the same bytes as Go's spdy.headerDictionary
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    assert spdy.DICTIONARY.startswith(b"\0\0\0\x07options\0\0\0\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_control_frame_header_layout():
    # |1| version 3 | type | flags | length (24)
    header = spdy.parse_header(bytes.fromhex("8003000101000010"))
    assert (header.control, header.version, header.type, header.flags, header.length) == \
        (True, 3, spdy.SYN_STREAM, spdy.FLAG_FIN, 16)
    header = spdy.parse_header(bytes.fromhex("7fffffff02abcdef"))
    assert (header.control, header.stream_id, header.flags, header.length) == \
        (False, 0x7FFFFFFF, 2, 0xABCDEF)


def test_go_header_blocks_decode_in_one_context():
    codec = spdy.HeaderCodec()
    _, first = frame(GO_SYN_STREAM_1, codec)
    assert first == spdy.SynStream(1, 0, 0, 0, {"streamtype": ["error"]})
    header, second = frame(GO_SYN_STREAM_3, codec)
    assert header.flags == spdy.FLAG_FIN
    assert second.stream_id == 3
    assert second.headers == {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]}
    _, reply = frame(GO_SYN_REPLY_1, codec)
    assert reply == spdy.SynReply(1, 0, {})


def test_go_block_out_of_context_is_refused():
    # the second block of a connection refers to the first one's window: alone it is garbage
    with pytest.raises(spdy.ProtocolError):
        frame(GO_SYN_STREAM_3, spdy.HeaderCodec())


def test_simple_frames_match_go_byte_for_byte():
    assert spdy.data_frame(5, b"hi", fin=True).hex() == GO_DATA_FIN
    assert spdy.ping(7).hex() == GO_PING
    assert spdy.goaway(9, spdy.GOAWAY_OK).hex() == GO_GOAWAY
    assert spdy.rst_stream(3, spdy.CANCEL).hex() == GO_RST
    codec = spdy.HeaderCodec()
    assert frame(GO_PING, codec)[1] == spdy.Ping(7)
    assert frame(GO_GOAWAY, codec)[1] == spdy.GoAway(9, 0)
    assert frame(GO_RST, codec)[1] == spdy.RstStream(3, spdy.CANCEL)
    assert frame(GO_WINDOW_UPDATE, codec)[1] == spdy.WindowUpdate(3, 1000)
    header, data = frame(GO_DATA_FIN, codec)
    assert (header.stream_id, header.flags, data) == (5, spdy.FLAG_FIN, b"hi")


def test_our_header_blocks_round_trip_across_frames():
    sender, receiver = spdy.HeaderCodec(), spdy.HeaderCodec()
    for stream_id, headers in ((1, {"streamType": "stdout"}), (3, {"Port": "80", "x": ["a", "b"]}),
                               (5, {})):
        raw = spdy.syn_stream(sender, stream_id, headers, fin=stream_id == 5)
        header = spdy.parse_header(raw)
        parsed = spdy.parse_control(header, raw[spdy.HEADER_SIZE:], receiver)
        expected = {name.lower(): (value if isinstance(value, list) else [value])
                    for name, value in headers.items()}
        assert (parsed.stream_id, parsed.headers) == (stream_id, expected)
        assert bool(parsed.flags & spdy.FLAG_FIN) == (stream_id == 5)
    reply = spdy.syn_reply(sender, 7)
    parsed = spdy.parse_control(spdy.parse_header(reply), reply[spdy.HEADER_SIZE:], receiver)
    assert parsed == spdy.SynReply(7, 0, {})


def test_our_block_uses_the_dictionary():
    raw = spdy.syn_reply(spdy.HeaderCodec(), 1, {"streamtype": "error"})
    block = raw[spdy.HEADER_SIZE + 4:]
    assert block[1] & 0x20  # FDICT: the zlib header names a preset dictionary ...
    assert struct.unpack(">I", block[2:6])[0] == zlib.adler32(spdy.DICTIONARY)  # ... this one


def compressed(block: bytes) -> bytes:
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    return deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)


def pairs(*items: tuple[bytes, bytes]) -> bytes:
    out = struct.pack(">I", len(items))
    for name, value in items:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


@pytest.mark.parametrize("block, message", [
    (pairs((b"StreamType", b"x")), "not lowercase"),
    (pairs((b"a", b"1"), (b"a", b"2")), "duplicate"),
    (pairs((b"", b"1")), "empty name"),
    (pairs((b"a", b"1"))[:-1], "truncated value"),
    (pairs((b"a", b"1")) + b"junk", "after the last pair"),
    (struct.pack(">I", 5), "truncated name length"),
    (b"\0\0", "no pair count"),
])
def test_bad_header_blocks(block, message):
    with pytest.raises(spdy.ProtocolError, match=message):
        spdy.HeaderCodec().decode(compressed(block))


def test_header_bomb_is_bounded():
    block = pairs((b"a", b"x" * (spdy.MAX_HEADER_BLOCK * 4)))
    packed = compressed(block)
    assert len(packed) < 2000  # a few KiB on the wire ...
    with pytest.raises(spdy.ProtocolError, match="over"):
        spdy.HeaderCodec().decode(packed)  # ... is not inflated to 256 KiB


def test_garbage_block_and_bad_frames():
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderCodec().decode(b"\x00garbage")
    codec = spdy.HeaderCodec()
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.parse_control(spdy.parse_header(bytes.fromhex("8002000600000004")), b"\0" * 4, codec)
    with pytest.raises(spdy.ProtocolError, match="PING"):
        spdy.parse_control(spdy.parse_header(bytes.fromhex("8003000600000003")), b"\0" * 3, codec)
    with pytest.raises(spdy.ProtocolError, match="SETTINGS"):
        spdy.parse_control(spdy.parse_header(bytes.fromhex("800300040000000c")),
                           struct.pack(">III", 2, 0, 0), codec)
    unknown = spdy.parse_control(spdy.parse_header(bytes.fromhex("8003000a00000000")), b"", codec)
    assert unknown == spdy.UnknownControl(10)


def test_settings_entries():
    payload = struct.pack(">III", 1, 0x01000007, 65536)  # persist, INITIAL_WINDOW_SIZE
    header = spdy.parse_header(spdy.control_frame(spdy.SETTINGS, 0, payload))
    assert spdy.parse_control(header, payload, spdy.HeaderCodec()) == \
        spdy.Settings([(1, 7, 65536)])
