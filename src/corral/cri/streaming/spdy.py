"""SPDY/3.1 framing: what kubelet's remotecommand and port-forward clients speak.

No maintained Python library speaks SPDY, so this is the wire format, after
the SPDY Protocol Draft 3.1 (§2.2-2.6), as Go's spdystream implements it:

    control frame   |1| version=3 (15) | type (16) | flags (8) | length (24) | payload
    data frame      |0| stream id (31)              | flags (8) | length (24) | data

Name/value header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are

    count (32), then per pair: name length (32), name, value length (32), value

(several values of one name separated by NUL), compressed with zlib and the
spec's dictionary, one compression context per direction for the whole
connection (each block ends with a sync flush).  Flow control
(WINDOW_UPDATE) is read and ignored, as spdystream does.

Everything here is pure: bytes in, frames out; connection.py drives it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
FRAME_TOO_LARGE = 11

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

HEADER_SIZE = 8
MAX_CONTROL_PAYLOAD = 64 << 10   # a control frame larger than this ends the connection
MAX_HEADER_BLOCK = 64 << 10      # decompressed; bounds a zlib bomb
MAX_DATA_LENGTH = (1 << 24) - 1

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base "
    "content-encoding content-language content-length content-location content-md5 "
    "content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status"
).split(" ") + ["200 OK"] + "version HTTP/1.1 url public set-cookie keep-alive origin".split(" ")
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504"
    "505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, "
    "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# The zlib dictionary of SPDY/3 header blocks (§2.6.10.1): length-prefixed words, then a tail.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()

_U32 = struct.Struct(">I")
_TWO_U32 = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer broke the protocol: the connection ends (GOAWAY PROTOCOL_ERROR)."""


# --- frames ------------------------------------------------------------------------------------
@dataclass
class FrameHeader:
    control: bool
    flags: int
    length: int
    type: int = 0          # control frames
    version: int = 0       # control frames
    stream_id: int = 0     # data frames


@dataclass
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    flags: int
    headers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class SynReply:
    stream_id: int
    flags: int
    headers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RstStream:
    stream_id: int
    status: int


@dataclass
class Settings:
    entries: list[tuple[int, int, int]]  # (flags, id, value)


@dataclass
class Ping:
    id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int


@dataclass
class Headers:
    stream_id: int
    flags: int
    headers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass
class UnknownControl:
    type: int


def parse_header(data: bytes) -> FrameHeader:
    """The 8-byte header common to every frame."""
    first, second = _TWO_U32.unpack(data[:HEADER_SIZE])
    flags, length = second >> 24, second & 0xFFFFFF
    if first & 0x80000000:
        return FrameHeader(True, flags, length, type=first & 0xFFFF,
                           version=(first >> 16) & 0x7FFF)
    return FrameHeader(False, flags, length, stream_id=first & 0x7FFFFFFF)


def parse_control(header: FrameHeader, payload: bytes, codec: HeaderCodec):
    """One control frame's payload as a frame object.

    Every header block is decompressed, even of frames that are then ignored: the
    zlib context spans the connection."""
    if header.version != VERSION:
        raise ProtocolError(f"SPDY version {header.version} (only 3 is spoken)")
    kind = header.type
    if kind == SYN_STREAM:
        _need(payload, 10, "SYN_STREAM")
        stream_id, associated = _TWO_U32.unpack_from(payload)
        return SynStream(stream_id & 0x7FFFFFFF, associated & 0x7FFFFFFF, payload[8] >> 5,
                         header.flags, codec.decode(payload[10:]))
    if kind == SYN_REPLY:
        _need(payload, 4, "SYN_REPLY")
        return SynReply(_U32.unpack_from(payload)[0] & 0x7FFFFFFF, header.flags,
                        codec.decode(payload[4:]))
    if kind == HEADERS:
        _need(payload, 4, "HEADERS")
        return Headers(_U32.unpack_from(payload)[0] & 0x7FFFFFFF, header.flags,
                       codec.decode(payload[4:]))
    if kind == RST_STREAM:
        _need(payload, 8, "RST_STREAM", exact=True)
        stream_id, status = _TWO_U32.unpack(payload)
        return RstStream(stream_id & 0x7FFFFFFF, status)
    if kind == SETTINGS:
        _need(payload, 4, "SETTINGS")
        (count,) = _U32.unpack_from(payload)
        if len(payload) != 4 + 8 * count:
            raise ProtocolError("SETTINGS: length does not match its entry count")
        entries = []
        for offset in range(4, len(payload), 8):
            flags_id, value = _TWO_U32.unpack_from(payload, offset)
            entries.append((flags_id >> 24, flags_id & 0xFFFFFF, value))
        return Settings(entries)
    if kind == PING:
        _need(payload, 4, "PING", exact=True)
        return Ping(_U32.unpack(payload)[0])
    if kind == GOAWAY:
        _need(payload, 8, "GOAWAY", exact=True)
        last, status = _TWO_U32.unpack(payload)
        return GoAway(last & 0x7FFFFFFF, status)
    if kind == WINDOW_UPDATE:
        _need(payload, 8, "WINDOW_UPDATE", exact=True)
        stream_id, delta = _TWO_U32.unpack(payload)
        return WindowUpdate(stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)
    return UnknownControl(kind)  # the spec: ignore control frames of unknown type


def _need(payload: bytes, size: int, what: str, exact: bool = False) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        raise ProtocolError(f"{what}: payload of {len(payload)} bytes")


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_DATA_LENGTH:
        raise ValueError("control frame payload too large")
    return _TWO_U32.pack(0x80000000 | VERSION << 16 | kind, flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, data: bytes = b"", fin: bool = False) -> bytes:
    if len(data) > MAX_DATA_LENGTH:
        raise ValueError("data frame too large")
    flags = FLAG_FIN if fin else 0
    return _TWO_U32.pack(stream_id & 0x7FFFFFFF, flags << 24 | len(data)) + data


def syn_stream(codec: HeaderCodec, stream_id: int, headers: dict, fin: bool = False,
               associated_id: int = 0, priority: int = 0) -> bytes:
    payload = _TWO_U32.pack(stream_id, associated_id) + bytes([priority << 5, 0]) + \
        codec.encode(headers)
    return control_frame(SYN_STREAM, FLAG_FIN if fin else 0, payload)


def syn_reply(codec: HeaderCodec, stream_id: int, headers: dict | None = None,
              fin: bool = False) -> bytes:
    return control_frame(SYN_REPLY, FLAG_FIN if fin else 0,
                         _U32.pack(stream_id) + codec.encode(headers or {}))


def rst_stream(stream_id: int, status: int) -> bytes:
    return control_frame(RST_STREAM, 0, _TWO_U32.pack(stream_id, status))


def ping(ping_id: int) -> bytes:
    return control_frame(PING, 0, _U32.pack(ping_id))


def goaway(last_good_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    return control_frame(GOAWAY, 0, _TWO_U32.pack(last_good_stream_id, status))


# --- header blocks -----------------------------------------------------------------------------
class HeaderCodec:
    """One connection's header compression: a deflater for what we send, an inflater for
    what we receive, each primed with the SPDY dictionary and kept across frames."""

    def __init__(self):
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8,
                                         zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)

    def encode(self, headers: dict) -> bytes:
        """`headers`: name → value or list of values.  Names go out lowercase, as SPDY/3
        requires (Go's framer refuses others)."""
        block = bytearray(_U32.pack(len(headers)))
        for name, value in headers.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            name_bytes = name.lower().encode()
            value_bytes = b"\0".join(str(v).encode() for v in values)
            block += _U32.pack(len(name_bytes)) + name_bytes
            block += _U32.pack(len(value_bytes)) + value_bytes
        return self._deflate.compress(bytes(block)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, compressed: bytes) -> dict[str, list[str]]:
        try:
            block = self._inflate.decompress(compressed, MAX_HEADER_BLOCK + 1)
        except zlib.error as e:
            raise ProtocolError(f"header block: {e}") from None
        if len(block) > MAX_HEADER_BLOCK or self._inflate.unconsumed_tail:
            raise ProtocolError(f"header block over {MAX_HEADER_BLOCK} bytes")
        return parse_header_block(block)


def parse_header_block(block: bytes) -> dict[str, list[str]]:
    """An uncompressed name/value block; names lowercase (as Go's framer checks)."""
    if len(block) < 4:
        raise ProtocolError("header block: no pair count")
    (count,) = _U32.unpack_from(block)
    offset, headers = 4, {}
    for _ in range(count):
        name, offset = _string(block, offset, "name")
        value, offset = _string(block, offset, "value")
        if not name:
            raise ProtocolError("header block: an empty name")
        if name != name.lower():
            raise ProtocolError(f"header block: name {name!r} is not lowercase")
        if name in headers:
            raise ProtocolError(f"header block: duplicate name {name!r}")
        headers[name] = value.split("\0")
    if offset != len(block):
        raise ProtocolError("header block: bytes after the last pair")
    return headers


def _string(block: bytes, offset: int, what: str) -> tuple[str, int]:
    if offset + 4 > len(block):
        raise ProtocolError(f"header block: truncated {what} length")
    (length,) = _U32.unpack_from(block, offset)
    end = offset + 4 + length
    if end > len(block):
        raise ProtocolError(f"header block: truncated {what}")
    try:
        return block[offset + 4:end].decode(), end
    except UnicodeDecodeError:
        raise ProtocolError(f"header block: {what} is not UTF-8") from None
