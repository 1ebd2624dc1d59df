"""The channel between the runtime and the container's bootstrap/init processes.

One message per line, each a small JSON object: {"type": ..., ...}, over a
pair of pipes (cheaper to import than sockets, and all we need).  Every fd
is close-on-exec, so the container program never sees them.
"""

from __future__ import annotations

import os

from corral.spec import fastjson


class SyncChannel:
    # Where the children's debug lines go (--debug): set by the CLI before it forks, so
    # a child knows by inheritance whether to send any; the parent's receive() hands
    # them on, so no loop that reads messages sees them.
    debug_sink = None

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""
        self._early: list[dict] = []  # arrived before they were expected

    @classmethod
    def pair(cls) -> tuple[SyncChannel, SyncChannel]:
        """Two connected ends: what one sends, the other receives."""
        a_read, b_write = os.pipe2(os.O_CLOEXEC)
        b_read, a_write = os.pipe2(os.O_CLOEXEC)
        return cls(a_read, a_write), cls(b_read, b_write)

    def send(self, kind: str, **fields) -> None:
        fields["type"] = kind
        data = fastjson.dumps(fields).encode() + b"\n"
        while data:
            data = data[os.write(self.write_fd, data):]

    def receive(self) -> dict | None:
        """The next message, or None once every other holder has closed its end."""
        while True:
            while b"\n" not in self._buffer:
                chunk = os.read(self.read_fd, 4096)
                if not chunk:
                    return None
                self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\n")
            message = fastjson.loads(line)
            if message.get("type") != "debug":
                return message
            if SyncChannel.debug_sink is not None:
                SyncChannel.debug_sink(message["msg"])

    def debug(self, text: str) -> None:
        """In a child: a debug line for the runtime's log, when it asked for them."""
        if SyncChannel.debug_sink is None:
            return
        try:
            self.send("debug", msg=text)
        except OSError:
            pass  # the runtime went away; its own error says why

    def expect(self, kind: str) -> dict:
        """The next message of this kind; others that come first are kept for later."""
        for i, message in enumerate(self._early):
            if message["type"] == kind:
                return self._early.pop(i)
        while (message := self.receive()) is not None:
            if message.get("type") == kind:
                return message
            self._early.append(message)
        raise ConnectionError(f"expected {kind!r} from the runtime, which went away")

    def fileno(self) -> int:
        return self.read_fd

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
