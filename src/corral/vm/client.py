"""The host side of the agent's channel: a Unix socket QEMU connects to as a chardev client.

The host listens first, then starts QEMU, then `accept`s QEMU's connection;
from then on the bytes are the guest's virtio-serial port (agent.py): framed
JSON requests with an `id`, replies with the same `id`, and events the agent
pushes unasked (output, exits).

Two ways to use it, on one connection:
  - blocking: `call(op, **args)` waits for its reply; events that arrive
    meanwhile are kept and handed out by the next `on_readable`/`events`;
  - a selector loop: register `fileno()` for reading (and for writing while
    `wants_write`), `request(op, callback, **args)`, and call `on_readable()`,
    which runs reply callbacks and returns the events.  When the channel ends
    (QEMU exited or dropped it) it returns a `{"event": "disconnected"}`.
"""

from __future__ import annotations

import os
import select
import socket
import time

from corral.spec.frames import ProtocolError, decode_frames, encode
from corral.vm.errors import AgentError, AgentGone, VmBootFailed

DISCONNECTED = {"event": "disconnected"}
_READ = 1 << 16


class AgentClient:
    def __init__(self, socket_path: str):
        self.path = socket_path
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.listener.bind(socket_path)
            os.chmod(socket_path, 0o600)
            self.listener.listen(1)
        except OSError:
            self.listener.close()
            raise
        self.sock: socket.socket | None = None
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closed = False
        self._next_id = 1
        self._callbacks: dict[int, object] = {}
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []

    # --- connection ----------------------------------------------------------------------------
    def accept(self, timeout: float = 10.0, alive=None) -> None:
        """Wait for QEMU's connection; `alive()` false (QEMU died) gives up at once."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if ready:
                sock, _ = self.listener.accept()
                sock.setblocking(False)
                self.sock = sock
                return
            if alive is not None and not alive():
                raise VmBootFailed("QEMU exited before it connected to the agent socket")
            if time.monotonic() > deadline:
                raise VmBootFailed(f"QEMU did not connect to {self.path} within {timeout:g}s")

    def fileno(self) -> int:
        if self.sock is None:
            raise AgentGone("the agent channel is not connected")
        return self.sock.fileno()

    def close(self) -> None:
        for sock in (self.sock, self.listener):
            if sock is not None:
                sock.close()
        self.sock = None
        self.closed = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def wants_write(self) -> bool:
        return bool(self.outbox) and not self.closed

    # --- sending -------------------------------------------------------------------------------
    def request(self, op: str, callback=None, **arguments) -> int:
        """Queue a request; `callback(reply)` runs when its reply comes (from on_readable)."""
        if self.closed or self.sock is None:
            raise AgentGone("the agent channel is closed")
        request_id = self._next_id
        self._next_id += 1
        if callback is not None:
            self._callbacks[request_id] = callback
        self.outbox += encode({"id": request_id, "op": op, **arguments})
        self.on_writable()
        return request_id

    def notify(self, op: str, **arguments) -> None:
        """A request without an id: the agent sends no reply (stdin data)."""
        if self.closed or self.sock is None:
            raise AgentGone("the agent channel is closed")
        self.outbox += encode({"op": op, **arguments})
        self.on_writable()

    def on_writable(self) -> None:
        while self.outbox and not self.closed:
            try:
                n = self.sock.send(self.outbox)
            except BlockingIOError:
                return
            except OSError:
                self._disconnected()
                return
            del self.outbox[:n]

    # --- receiving -----------------------------------------------------------------------------
    def on_readable(self) -> list[dict]:
        """Read what is there; run reply callbacks; the events (kept ones first)."""
        self._receive()
        events, self._events = self._events, []
        return events

    def events(self) -> list[dict]:
        """The events kept so far, without reading."""
        events, self._events = self._events, []
        return events

    def _receive(self) -> None:
        if self.closed or self.sock is None:
            return
        while True:
            try:
                data = self.sock.recv(_READ)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._disconnected()
                return
            self.inbox += data
            try:
                frames = decode_frames(self.inbox)
            except ProtocolError:
                self._disconnected()
                return
            for frame in frames:
                self._take(frame)

    def _take(self, frame: dict) -> None:
        if "event" in frame:
            self._events.append(frame)
            return
        request_id = frame.get("id")
        callback = self._callbacks.pop(request_id, None)
        if callback is not None:
            callback(frame)
        else:
            self._replies[request_id] = frame

    def _disconnected(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        gone = {"ok": False, "kind": "failed", "error": "the VM's agent channel ended"}
        callbacks, self._callbacks = self._callbacks, {}
        for callback in callbacks.values():
            callback(gone)
        self._events.append(dict(DISCONNECTED))

    # --- blocking ------------------------------------------------------------------------------
    def call(self, op: str, timeout: float | None = 30.0, **arguments) -> dict:
        """One request, waited for; raises AgentError for a refusal, AgentGone at EOF."""
        request_id = self.request(op, **arguments)
        deadline = None if timeout is None else time.monotonic() + timeout
        while request_id not in self._replies:
            if self.closed:
                raise AgentGone(f"{op}: the VM's agent channel ended")
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise AgentError("timeout", f"{op}: no answer from the VM's agent within "
                                            f"{timeout:g}s")
            writing = [self.sock] if self.outbox else []
            readable, writable, _ = select.select([self.sock], writing, [], wait)
            if writable:
                self.on_writable()
            if readable:
                self._receive()
        reply = self._replies.pop(request_id)
        if not reply.get("ok"):
            raise AgentError(reply.get("kind", "failed"), reply.get("error", "agent error"))
        return reply

    def wait_event(self, match, timeout: float = 30.0) -> dict:
        """Block until an event for which `match(event)` is true; the others are kept."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for i in range(checked, len(self._events)):
                if match(self._events[i]):
                    return self._events.pop(i)
            checked = len(self._events)
            if self.closed:
                raise AgentGone("the VM's agent channel ended")
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise AgentError("timeout", f"no matching event within {timeout:g}s")
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                self._receive()
