"""The channel between the runtime and the container's bootstrap/init processes.

One message per line, each a small JSON object: {"type": ..., ...}.  The
socket is close-on-exec, so the container program never sees it.
"""

from __future__ import annotations

import json
import socket


class SyncChannel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = b""

    @classmethod
    def pair(cls) -> tuple[SyncChannel, SyncChannel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a), cls(b)

    def send(self, kind: str, **fields) -> None:
        fields["type"] = kind
        self.sock.sendall(json.dumps(fields).encode() + b"\n")

    def receive(self) -> dict | None:
        """The next message, or None once every other holder has closed its end."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def expect(self, kind: str) -> dict:
        message = self.receive()
        if message is None or message.get("type") != kind:
            raise ConnectionError(f"expected {kind!r} from the runtime, got {message!r}")
        return message

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
