"""The server side of a WebSocket (RFC 6455) after the HTTP upgrade, framed by wsproto.

Kubernetes' channel protocols (channel.k8s.io, v4/v5.channel.k8s.io) send
binary messages whose first byte names a channel.  Messages are handed on
in pieces as they arrive (`on_chunk(channel, data)`), so a huge frame never
sits in memory whole.  One lock orders wsproto's state and the socket's
writes; callbacks run outside it.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

log = logging.getLogger("corrald.stream")

_LINGER = 5.0


def accept_token(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return generate_accept_token(key.encode()).decode()


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


class Gone(Exception):
    pass


class WebSocket:
    def __init__(self, sock: socket.socket, idle_timeout: float):
        self.sock = sock
        self.idle_timeout = idle_timeout
        self._ws = Connection(ConnectionType.SERVER)
        self._lock = threading.Lock()
        self._reader_done = threading.Event()
        self._last_activity = time.monotonic()
        self.gone = False
        sock.settimeout(idle_timeout)

    def send(self, data: bytes) -> None:
        """One binary message."""
        with self._lock:
            if self.gone or self._ws.state != ConnectionState.OPEN:
                raise Gone("the client is gone")
            self._write(self._ws.send(BytesMessage(data=data)))

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.gone = True
            raise Gone(str(e)) from None
        self._last_activity = time.monotonic()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, then the socket (after the client's answer, or a while)."""
        with self._lock:
            if not self.gone and self._ws.state == ConnectionState.OPEN:
                try:
                    self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
                except Gone:
                    pass
        self._reader_done.wait(_LINGER)
        self.abort()

    def abort(self) -> None:
        self.gone = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def serve(self, on_chunk, on_gone) -> None:
        """Read until the connection ends; `on_chunk(channel, data)` for each piece of a
        message (channel from its first byte), `on_gone()` at the end."""
        channel = None  # of the message being received; None between messages
        try:
            while True:
                data = self._recv()
                if not data:
                    break
                with self._lock:
                    messages, closed = self._receive(data)
                for event in messages:
                    piece = event.data.encode() if isinstance(event, TextMessage) else event.data
                    if channel is None and piece:
                        channel, piece = piece[0], piece[1:]
                    if channel is not None and piece:
                        on_chunk(channel, bytes(piece))
                    if event.message_finished:
                        channel = None
                if closed:
                    break
        finally:
            self._reader_done.set()
            self.gone = True
            on_gone()

    def _recv(self) -> bytes:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                if time.monotonic() - self._last_activity >= self.idle_timeout:
                    log.info("WebSocket connection: idle, closed")
                    return b""
                continue
            except OSError:
                return b""
            self._last_activity = time.monotonic()
            return data

    def _receive(self, data: bytes) -> tuple[list[Message], bool]:
        """Feed wsproto (under the lock); answer pings and closes; the messages."""
        self._ws.receive_data(data)
        messages, closed = [], False
        for event in self._ws.events():
            if isinstance(event, Ping):
                self._write_quietly(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                closed = True
                if self._ws.state == ConnectionState.REMOTE_CLOSING:
                    self._write_quietly(self._ws.send(event.response()))
                elif self._ws.state == ConnectionState.OPEN:  # a protocol error wsproto found
                    log.info("WebSocket connection: %s", event.reason)
                    self._write_quietly(self._ws.send(CloseConnection(code=event.code)))
            elif isinstance(event, Message):
                messages.append(event)
        return messages, closed

    def _write_quietly(self, data: bytes) -> None:
        try:
            self._write(data)
        except Gone:
            pass
