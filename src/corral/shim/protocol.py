"""The shim's control protocol: length-prefixed JSON over its Unix socket.

    frame     4-byte big-endian length, then that many bytes of UTF-8 JSON
    request   {"op": "create" | "start" | "kill" | "exec_sync" | "state" | "wait" | "delete" |
                     "reopen_log" | "update" | "stats" | "shutdown" | "ping", ...arguments}
    reply     {"ok": true, ...results} or {"ok": false, "kind": KIND, "error": message}

KIND is one of not_found, exists, invalid, failed, timeout — what corrald
maps to gRPC codes.  One request per connection at a time; a connection
may carry many requests in turn.
"""

from __future__ import annotations

import json
import socket
import struct

MAX_FRAME = 64 << 20  # exec_sync output is bounded below this
_HEADER = struct.Struct(">I")


class ShimError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[dict]:
    """Complete frames taken off the front of `buffer`."""
    messages = []
    while len(buffer) >= 4:
        (length,) = _HEADER.unpack_from(buffer)
        if length > MAX_FRAME:
            raise ShimError("invalid", f"frame of {length} bytes is over the limit")
        if len(buffer) < 4 + length:
            break
        body = bytes(buffer[4:4 + length])
        del buffer[:4 + length]
        try:
            message = json.loads(body)
        except ValueError:
            raise ShimError("invalid", "frame is not JSON") from None
        if not isinstance(message, dict):
            raise ShimError("invalid", "frame is not a JSON object")
        messages.append(message)
    return messages


class ShimClient:
    """Blocking client: one call at a time on one connection."""

    def __init__(self, path: str, timeout: float | None = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ShimClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, op: str, io_timeout: float | None = None, **arguments) -> dict:
        """One request; `io_timeout` bounds the socket wait (arguments go to the shim)."""
        if io_timeout is not None:
            self.sock.settimeout(io_timeout)
        self.sock.sendall(encode({"op": op, **arguments}))
        buffer = bytearray()
        while True:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ShimError("failed", f"shim at {self.path} closed the connection")
            buffer += chunk
            frames = decode_frames(buffer)
            if frames:
                reply = frames[0]
                if reply.get("ok"):
                    return reply
                raise ShimError(reply.get("kind", "failed"), reply.get("error", "shim error"))
