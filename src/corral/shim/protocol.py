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

import socket

from corral.spec.frames import MAX_FRAME, ProtocolError, decode_frames, encode

__all__ = ["MAX_FRAME", "ShimClient", "ShimError", "decode_frames", "encode"]

ShimError = ProtocolError  # the shim's name for it: what a reply's "kind" and "error" carry


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
