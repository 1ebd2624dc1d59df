"""Length-prefixed JSON frames: what the shim's socket and a VM's agent channel carry.

    frame   4-byte big-endian length, then that many bytes of UTF-8 JSON (an object)

Here, below both the shim and the VM guest code, so that neither imports the other.
"""

from __future__ import annotations

import struct

from corral.spec import fastjson  # not `json`: its `re` costs a VM's agent ~0.3 s to start

MAX_FRAME = 64 << 20  # exec_sync output is bounded below this
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A failure that crosses a framed channel as {"kind": KIND, "error": message}; KIND is
    one of not_found, exists, invalid, failed, timeout, unsupported (corrald maps them to
    gRPC codes)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def encode(message: dict) -> bytes:
    body = fastjson.dumps(message).encode()
    return _HEADER.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[dict]:
    """Complete frames taken off the front of `buffer`."""
    messages = []
    while len(buffer) >= 4:
        (length,) = _HEADER.unpack_from(buffer)
        if length > MAX_FRAME:
            raise ProtocolError("invalid", f"frame of {length} bytes is over the limit")
        if len(buffer) < 4 + length:
            break
        body = bytes(buffer[4:4 + length])
        del buffer[:4 + length]
        try:
            message = fastjson.loads(body)
        except ValueError:
            raise ProtocolError("invalid", "frame is not JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("invalid", "frame is not a JSON object")
        messages.append(message)
    return messages
