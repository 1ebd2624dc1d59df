"""Exec and attach sessions: kubelet's remotecommand server protocol, over SPDY or WebSocket.

    SPDY      the client opens one stream per role, named by the header streamType:
              error, stdin, stdout, stderr, resize (v3+ and a tty)
    WebSocket channels by the first byte of each message: 0 stdin, 1 stdout,
              2 stderr, 3 error, 4 resize; v5 adds 255 + channel: that channel
              is closed (the client's stdin ended)

A resize is a JSON object {"Width": w, "Height": h}.  When the process has
ended and its output is sent, the error stream gets the result: for v4 and
v5 a metav1.Status as JSON (Success, or Failure with reason NonZeroExitCode
and cause ExitCode = the code), for older versions the message of a
failure only.  Then the connection is closed.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import selectors
import threading
import time

from corral.cri.streaming import spdyconn, websocket

log = logging.getLogger("corrald.stream")

SPDY_PROTOCOLS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io"]
WEBSOCKET_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io", ""]
CHANNELS = {"stdin": 0, "stdout": 1, "stderr": 2, "error": 3, "resize": 4}
CLOSE_CHANNEL = 255
OUTPUT_GRACE = 2.0   # after the exit, how long output still held open (by a child) is relayed
INITIAL_SIZE_WAIT = 0.5  # a tty process starts with the client's size if it comes this soon
_READ = 1 << 16


class Options:
    def __init__(self, stdin: bool, stdout: bool, stderr: bool, tty: bool):
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr, tty


# --- results -----------------------------------------------------------------------------------
def success() -> dict:
    return {"metadata": {}, "status": "Success"}


def exit_failure(code: int) -> dict:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error(message: str) -> dict:
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]},
            "code": 500}


def encode_status(status: dict, protocol: str) -> bytes:
    """v4/v5: the Status as JSON; older protocols: a failure's message, nothing for success."""
    if protocol.startswith(("v4.", "v5.")):
        return json.dumps(status, separators=(",", ":")).encode()
    return b"" if status["status"] == "Success" else status["message"].encode()


class ResizeDecoder:
    """Terminal sizes from a stream of JSON objects (bounded: junk is dropped)."""

    LIMIT = 4096

    def __init__(self):
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buffer += data.decode(errors="replace")
        sizes = []
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                break
            try:
                value, end = self._decoder.raw_decode(text)
            except ValueError:
                if len(text) > self.LIMIT or not text.startswith("{"):
                    self._buffer = ""  # not a JSON object, nor the start of one
                else:
                    self._buffer = text  # an object not yet complete
                break
            self._buffer = text[end:]
            size = _size(value)
            if size:
                sizes.append(size)
        return sizes


def _size(value) -> tuple[int, int] | None:
    if not isinstance(value, dict):
        return None
    fields = {str(k).lower(): v for k, v in value.items()}
    width, height = fields.get("width"), fields.get("height")
    if isinstance(width, int) and isinstance(height, int) and width >= 0 and height >= 0:
        return width, height
    return None


# --- the two transports, seen alike ------------------------------------------------------------
class SpdyChannels:
    """The streams a SPDY client opened, by role."""

    def __init__(self, conn: spdyconn.SpdyConnection, streams: dict, protocol: str):
        self.conn = conn
        self.streams = streams
        self.protocol = protocol
        self.has_resize = "resize" in streams

    def fileno(self) -> int:
        return self.conn.sock.fileno()

    @classmethod
    def wait(cls, conn, protocol: str, options: Options, timeout: float,
             arrived: dict, condition: threading.Condition):
        """Once the client has opened every stream the request needs (None: it did not,
        within `timeout`, or went away)."""
        wanted = {"error"} | {name for name, on in (("stdin", options.stdin),
                                                     ("stdout", options.stdout),
                                                     ("stderr", options.stderr)) if on}
        if options.tty and protocol != "v2.channel.k8s.io":
            wanted.add("resize")
        deadline = time.monotonic() + timeout
        with condition:
            while not wanted <= set(arrived) and not conn.gone:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                condition.wait(left)
            if conn.gone:
                return None
        return cls(conn, dict(arrived), protocol)

    def start(self, on_input, on_input_end, on_gone) -> None:
        for name in ("stdin", "resize"):
            stream = self.streams.get(name)
            if stream is not None:
                stream.consume(lambda data, n=name: on_input(n, data),
                               lambda n=name: on_input_end(n))
        self.conn.on_gone = on_gone
        if self.conn.gone:
            on_gone()

    def write(self, name: str, data: bytes) -> None:
        stream = self.streams.get(name)
        if stream is not None and data:
            try:
                stream.write(data)
            except spdyconn.Gone:
                pass

    def end(self, name: str) -> None:
        stream = self.streams.get(name)
        if stream is not None:
            stream.close()

    def finish(self, status: dict | None) -> None:
        if status is not None:
            self.write("error", encode_status(status, self.protocol))
        for stream in self.streams.values():
            stream.close()
        self.conn.close()

    def abort(self) -> None:
        self.conn.abort()


class WebSocketChannels:
    def __init__(self, ws: websocket.WebSocket, protocol: str, options: Options):
        self.ws = ws
        self.protocol = protocol
        self.options = options
        self.has_resize = options.tty
        self.outputs = {"error"} | {name for name, on in (("stdout", options.stdout),
                                                           ("stderr", options.stderr)) if on}
        # As kubelet: an empty message on the lowest output channel says the streams are up.
        first = "stdout" if options.stdout else "stderr" if options.stderr else "error"
        self._send(first, b"")

    def fileno(self) -> int:
        return self.ws.sock.fileno()

    def start(self, on_input, on_input_end, on_gone) -> None:
        inputs = {CHANNELS["stdin"]: "stdin" if self.options.stdin else None,
                  CHANNELS["resize"]: "resize" if self.options.tty else None}

        def on_chunk(channel: int, data: bytes) -> None:
            if channel == CLOSE_CHANNEL and self.protocol.startswith("v5."):
                for closed in data:
                    if inputs.get(closed):
                        on_input_end(inputs[closed])
            elif inputs.get(channel):
                on_input(inputs[channel], data)

        threading.Thread(target=self.ws.serve, args=(on_chunk, on_gone),
                         name="ws-reader", daemon=True).start()

    def _send(self, name: str, data: bytes) -> None:
        try:
            self.ws.send(bytes([CHANNELS[name]]) + data)
        except websocket.Gone:
            pass

    def write(self, name: str, data: bytes) -> None:
        if name in self.outputs and data:
            self._send(name, data)

    def end(self, name: str) -> None:
        pass  # the channel protocols have no end of an output channel but the close

    def finish(self, status: dict | None) -> None:
        if status is not None:
            encoded = encode_status(status, self.protocol)
            if encoded:
                self._send("error", encoded)
        self.ws.close()

    def abort(self) -> None:
        self.ws.abort()


# --- the session -------------------------------------------------------------------------------
class StartFailed(Exception):
    """The process could not be started (or attached to): the client's error status says."""


def serve(channels, start, *, is_exec: bool, wants_size: bool) -> None:
    """Run a session: read the client's input, start the process (`start(size)` → Stdio;
    with a tty, once the client's first size is known, or after INITIAL_SIZE_WAIT), relay
    until it ends, report the result, close.  A client that goes away ends everything:
    the shim kills an exec'd process, detaches an attachment."""
    session = _Session(channels, is_exec)
    try:
        channels.start(session.on_input, session.on_input_end, session.on_gone)
        if wants_size:
            session.size_known.wait(INITIAL_SIZE_WAIT)
        if session.gone.is_set():
            channels.abort()
            return
        try:
            stdio = start(session.size)
        except StartFailed as e:
            channels.finish(internal_error(str(e)))
            return
        try:
            session.begin(stdio)
            session.relay()
        finally:
            session.input.close()
            stdio.close()
    finally:
        session.input.close()
        os.close(session.wake_read)
        os.close(session.wake_write)


class _Input:
    """The client's stdin on its way to the process, written by a thread of its own: the
    connection's reader and the session never wait for a process that does not read.
    Up to LIMIT bytes wait here (also before the process exists); then the reader waits."""

    LIMIT = 4 << 20
    END = None

    def __init__(self):
        self._condition = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._size = 0
        self._closed = False

    def put(self, data: bytes | None) -> None:
        with self._condition:
            while data and self._size >= self.LIMIT and not self._closed:
                self._condition.wait()
            if self._closed:
                return
            self._items.append(data)
            self._size += len(data or b"")
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._items.clear()
            self._condition.notify_all()

    def start_writing(self, stdio, client_fd: int) -> None:
        threading.Thread(target=self._write, args=(stdio, client_fd), name="stdin-writer",
                         daemon=True).start()

    def _write(self, stdio, client_fd: int) -> None:
        while True:
            with self._condition:
                while not self._items and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                data = self._items.popleft()
                self._size -= len(data or b"")
                self._condition.notify_all()
            try:
                if data is self.END:
                    stdio.close_stdin()
                    return
                stdio.write_stdin(data, client_fd)
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.EBADF):
                    log.warning("stdin: %s", e)
                stdio.close_stdin()  # the process no longer reads it
                self.close()
                return


class _Session:
    def __init__(self, channels, is_exec: bool):
        self.channels = channels
        self.is_exec = is_exec
        self.stdio = None
        self.size: tuple[int, int] | None = None   # (width, height) the client last sent
        self.size_known = threading.Event()
        self.input = _Input()
        self.resize = ResizeDecoder()
        self.gone = threading.Event()
        self.wake_read, self.wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def begin(self, stdio) -> None:
        self.stdio = stdio
        if self.size:
            self._resize(*self.size)  # an attachment's terminal; an exec started with it
        self.input.start_writing(stdio, self.channels.fileno())

    # called by the channels' reader (and, for data that came first, by channels.start)
    def on_input(self, name: str, data: bytes) -> None:
        if name == "stdin":
            self.input.put(data)
            return
        for size in self.resize.feed(data):
            self.size = size
            self.size_known.set()
            if self.stdio is not None:
                self._resize(*size)

    def on_input_end(self, name: str) -> None:
        if name == "stdin":
            self.input.put(_Input.END)

    def on_gone(self) -> None:
        self.gone.set()
        self.size_known.set()
        self.input.close()
        try:
            os.write(self.wake_write, b"x")
        except OSError:
            pass

    def _resize(self, width: int, height: int) -> None:
        try:
            self.stdio.resize(width, height)
        except OSError as e:
            log.debug("resize: %s", e)  # the terminal is gone with its process

    def relay(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            exit_code, exited = self._pump(selector)
        finally:
            selector.close()
        if self.gone.is_set():
            self.channels.abort()
            return
        if not self.is_exec:
            status = success()
        elif exit_code is None:
            status = internal_error("error executing command in container: the exit status "
                                    "was lost" if exited else "no exit status")
        else:
            status = success() if exit_code == 0 else exit_failure(exit_code)
        self.channels.finish(status)

    def _pump(self, selector) -> tuple[int | None, bool]:
        """Output to the client until every output ends (and, for an exec, the process)."""
        outputs = dict(self.stdio.outputs)
        for name, fd in outputs.items():
            selector.register(fd, selectors.EVENT_READ, name)
        selector.register(self.wake_read, selectors.EVENT_READ, None)
        if self.is_exec:
            selector.register(self.stdio.shim.fileno(), selectors.EVENT_READ, "exit")
        exit_code, exited, grace_until = None, not self.is_exec, None
        while outputs or not exited:
            timeout = None if grace_until is None else max(0.0, grace_until - time.monotonic())
            ready = selector.select(timeout)
            if not ready and grace_until is not None:
                log.info("exec: output still open %.0fs after the exit (a child holds it): "
                         "ended", OUTPUT_GRACE)
                break
            for key, _ in ready:
                if key.data is None:
                    return exit_code, exited  # the client is gone
                if key.data == "exit":
                    selector.unregister(key.fd)
                    exit_code, exited = self.stdio.exit_code(), True
                    grace_until = time.monotonic() + OUTPUT_GRACE
                    continue
                data = _read(key.fd)
                if data:
                    self.channels.write(key.data, data)
                elif data is not None:
                    selector.unregister(key.fd)
                    del outputs[key.data]
                    self.channels.end(key.data)
        return exit_code, exited


def _read(fd: int) -> bytes | None:
    """Output read from `fd`: b"" at its end, None if there is nothing after all."""
    try:
        return os.read(fd, _READ)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno == errno.EIO:  # a pty master whose other side has closed: the end
            return b""
        raise
