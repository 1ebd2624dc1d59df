"""A server-side SPDY/3.1 connection: the client opens streams, the server answers.

One reader (`serve`) parses frames and hands each stream's data to whoever
consumes it (data that comes before a consumer waits, up to MAX_PENDING);
any thread may write.  As kubelet's server does, every SYN_STREAM the
`on_stream` callback accepts gets an empty SYN_REPLY; refused ones a
RST_STREAM.  PINGs from the client are echoed; flow control is not
enforced (spdystream does not either).  A protocol error ends the
connection with GOAWAY.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from corral.cri.streaming import spdy

log = logging.getLogger("corrald.stream")

MAX_PENDING = 1 << 20    # data a stream may hold before anyone reads it
_CHUNK = 32 << 10        # data frames we send are at most this large
_LINGER = 5.0            # at close, how long the client gets to close its side


class Gone(Exception):
    """The client is gone (or the stream is closed): nothing more can be sent."""


class SpdyStream:
    def __init__(self, conn: SpdyConnection, stream_id: int, headers: dict[str, list[str]],
                 remote_closed: bool):
        self.conn = conn
        self.id = stream_id
        self.headers = {name: values[0] if values else "" for name, values in headers.items()}
        self.remote_closed = remote_closed  # the client sent FIN (or reset it)
        self.local_closed = False           # we sent FIN (or reset it)
        self._lock = threading.Lock()  # the consumer, its pending data, the end
        self._pending = bytearray()
        self._on_data = None
        self._on_end = None

    @property
    def type(self) -> str:
        return self.headers.get("streamtype", "")

    def consume(self, on_data, on_end=None) -> None:
        """Deliver the stream's data to `on_data`, its end to `on_end`; what came before is
        delivered now, in the caller's thread, before anything the reader gets later."""
        with self._lock:
            pending, self._pending = bytes(self._pending), bytearray()
            self._on_data = on_data
            if pending:
                on_data(pending)
            if self.remote_closed:
                if on_end:
                    on_end()
            else:
                self._on_end = on_end

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), _CHUNK):
            self.conn.send(spdy.data_frame(self.id, data[start:start + _CHUNK]), self)

    def close(self) -> None:
        """Half-close: FIN, once."""
        if not self.local_closed:
            try:
                self.conn.send(spdy.data_frame(self.id, fin=True), self)
            except Gone:
                pass
            self.local_closed = True

    def reset(self, status: int = spdy.CANCEL) -> None:
        if not (self.local_closed and self.remote_closed):
            self.local_closed = True
            try:
                self.conn.send(spdy.rst_stream(self.id, status))
            except Gone:
                pass
        self._remote_end()

    def _data(self, data: bytes) -> None:
        with self._lock:
            callback = self._on_data
            if callback is None:
                if len(self._pending) + len(data) > MAX_PENDING:
                    raise spdy.ProtocolError(f"stream {self.id}: over {MAX_PENDING} bytes "
                                             "sent before it was read")
                self._pending += data
                return
        callback(data)

    def _remote_end(self) -> None:
        with self._lock:
            self.remote_closed = True
            callback, self._on_end = self._on_end, None
        if callback:
            callback()


class SpdyConnection:
    def __init__(self, sock: socket.socket, on_stream, idle_timeout: float):
        """`on_stream(stream)` is called (by the reader) for each new stream: false refuses
        it; a callable is called after the SYN_REPLY."""
        self.sock = sock
        self.on_stream = on_stream
        self.on_gone = None          # called once when the client is gone
        self.idle_timeout = idle_timeout
        self.lock = threading.Lock()        # the streams table, gone
        self._write_lock = threading.Lock()  # frames are written whole, and compressed in order
        self._codec = spdy.HeaderCodec()
        self.streams: dict[int, SpdyStream] = {}
        self._last_stream_id = 0
        self.gone = False
        self._goaway_sent = False
        self._last_activity = time.monotonic()
        self._reader_done = threading.Event()
        sock.settimeout(idle_timeout)

    # --- writing -------------------------------------------------------------------------------
    def send(self, frame: bytes, stream: SpdyStream | None = None) -> None:
        with self._write_lock:
            if self.gone or (stream is not None and stream.local_closed):
                raise Gone(f"stream {stream.id} is closed" if stream else "client gone")
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        try:
            self.sock.sendall(frame)
        except OSError as e:
            self._set_gone()
            raise Gone(str(e)) from None
        self._last_activity = time.monotonic()

    def _reply(self, stream_id: int) -> None:
        with self._write_lock:
            if not self.gone:
                self._write(spdy.syn_reply(self._codec, stream_id))

    def close(self) -> None:
        """GOAWAY, then give the client time to read everything and close its side."""
        with self._write_lock:
            if not self.gone and not self._goaway_sent:
                self._goaway_sent = True
                try:
                    self._write(spdy.goaway(self._last_stream_id))
                except Gone:
                    pass
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._reader_done.wait(_LINGER)
        self.abort()

    def abort(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        except OSError:
            pass
        self._set_gone()

    def _set_gone(self) -> None:
        with self.lock:
            if self.gone:
                return
            self.gone = True
            streams = list(self.streams.values())
        for stream in streams:
            stream._remote_end()
        if self.on_gone:
            self.on_gone()

    # --- reading -------------------------------------------------------------------------------
    def serve(self) -> None:
        """Read frames until the client closes, breaks the protocol, or idles out."""
        try:
            while True:
                header = self._read_exact(spdy.HEADER_SIZE)
                if header is None:
                    break
                frame = spdy.parse_header(header)
                if frame.control:
                    self._on_control(frame)
                else:
                    self._on_data(frame)
        except spdy.ProtocolError as e:
            log.info("SPDY connection from %s: %s", _peer(self.sock), e)
            with self._write_lock:
                if not self.gone and not self._goaway_sent:
                    self._goaway_sent = True
                    try:
                        self._write(spdy.goaway(self._last_stream_id,
                                                spdy.GOAWAY_PROTOCOL_ERROR))
                    except Gone:
                        pass
        except Gone:
            pass
        finally:
            self._reader_done.set()
            self._set_gone()

    def _read_exact(self, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = self._recv(size - len(data))
            if not chunk:
                if data:
                    raise spdy.ProtocolError("connection closed inside a frame")
                return None
            data += chunk
        return bytes(data)

    def _recv(self, size: int) -> bytes:
        while True:
            try:
                chunk = self.sock.recv(min(size, 1 << 16))
            except TimeoutError:
                if time.monotonic() - self._last_activity >= self.idle_timeout:
                    log.info("SPDY connection from %s: idle, closed", _peer(self.sock))
                    return b""
                continue
            except OSError:
                return b""
            self._last_activity = time.monotonic()
            return chunk

    def _on_control(self, header: spdy.FrameHeader) -> None:
        if header.length > spdy.MAX_CONTROL_PAYLOAD:
            raise spdy.ProtocolError(f"control frame of {header.length} bytes")
        payload = self._read_exact(header.length) if header.length else b""
        if payload is None:
            raise spdy.ProtocolError("connection closed inside a frame")
        frame = spdy.parse_control(header, payload, self._codec)
        if isinstance(frame, spdy.SynStream):
            self._on_syn_stream(frame)
        elif isinstance(frame, spdy.RstStream):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream.local_closed = True
                stream._remote_end()
        elif isinstance(frame, spdy.Ping):
            if frame.id % 2 == 1:  # the client's: echo it (ours would be even)
                self.send(spdy.ping(frame.id))
        elif isinstance(frame, spdy.GoAway):
            pass  # the client opens no more streams; those open go on until it closes
        # SYN_REPLY (we open no streams), HEADERS, SETTINGS, WINDOW_UPDATE: nothing to do

    def _on_syn_stream(self, frame: spdy.SynStream) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            raise spdy.ProtocolError(f"stream id {stream_id} after {self._last_stream_id} "
                                     "(client streams are odd and increasing)")
        self._last_stream_id = stream_id
        stream = SpdyStream(self, stream_id, frame.headers, bool(frame.flags & spdy.FLAG_FIN))
        with self.lock:
            self.streams[stream_id] = stream
        try:
            accepted = self.on_stream(stream)
        except Exception:  # noqa: BLE001 - a bad stream must not end the reader
            log.exception("SPDY stream %d", stream_id)
            accepted = False
        if accepted:
            self._reply(stream_id)
            if callable(accepted):  # what is to happen once the client knows the stream
                accepted()
        else:
            with self.lock:
                del self.streams[stream_id]
            stream.reset(spdy.REFUSED_STREAM)

    def _on_data(self, header: spdy.FrameHeader) -> None:
        stream = self.streams.get(header.stream_id)
        remaining = header.length
        while remaining:  # delivered in pieces: a large frame is never held whole
            chunk = self._recv(min(remaining, 1 << 16))
            if not chunk:
                raise spdy.ProtocolError("connection closed inside a frame")
            remaining -= len(chunk)
            if stream is not None and not stream.remote_closed:
                stream._data(chunk)
        if stream is None:
            self.send(spdy.rst_stream(header.stream_id, spdy.INVALID_STREAM))
        elif header.flags & spdy.FLAG_FIN:
            stream._remote_end()


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
