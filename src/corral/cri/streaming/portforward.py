"""Port forwarding: kubelet's portforward protocol, over SPDY or WebSocket.

    SPDY       (portforward.k8s.io) per forwarded connection the client opens a pair of
               streams, streamType error and data, both with the headers port and
               requestID; the data stream carries the bytes both ways, the error
               stream a message if the pod's port cannot be reached.  A pair whose
               second stream does not come within the creation timeout is dropped.
    WebSocket  (v4.channel.k8s.io, or none) the ports are the PortForward request's:
               channel 2i carries port i's data both ways, 2i+1 its error; each
               channel's first message is its port (2 bytes, little-endian).

Each connection goes to localhost:port inside the pod's network namespace
(`connect(port)`).  The pod's side closing ends the forwarded connection;
the client's end of its data (FIN) half-closes the pod's socket.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

from corral.cri.streaming import spdy, spdyconn, websocket

log = logging.getLogger("corrald.stream")

SPDY_PROTOCOLS = ["portforward.k8s.io"]
WEBSOCKET_PROTOCOLS = ["v4.channel.k8s.io", ""]
MAX_WEBSOCKET_PORTS = 127  # two channels each, numbered by one byte
_READ = 1 << 16


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _error_message(pod_id: str, port: int, error: Exception) -> bytes:
    return f"error forwarding port {port} to pod {pod_id}: {error}".encode()


class _Sockets:
    """The pod-side sockets of a client connection, all shut when the client goes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.gone = False

    def add(self, sock: socket.socket) -> bool:
        with self._lock:
            if self.gone:
                return False
            self._open.add(sock)
            return True

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        sock.close()

    def shut_all(self) -> None:
        with self._lock:
            self.gone = True
            sockets = list(self._open)
        for sock in sockets:
            _shutdown(sock, socket.SHUT_RDWR)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _send_to_pod(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the pod's side is gone: its reader ends the forwarding


# --- SPDY --------------------------------------------------------------------------------------
class SpdyPortForward:
    def __init__(self, pod_id: str, connect, creation_timeout: float):
        self.pod_id = pod_id
        self.connect = connect
        self.creation_timeout = creation_timeout
        self.sockets = _Sockets()
        self._lock = threading.Lock()
        self._pairs: dict[str, dict[str, spdyconn.SpdyStream]] = {}
        # One timer per incomplete pair, cancelled when it completes: a timer left to
        # run out would hold a thread for the whole timeout after every connection.
        self._timers: dict[str, threading.Timer] = {}

    def serve(self, sock: socket.socket, idle_timeout: float) -> None:
        """Until the client closes the connection (in the calling thread)."""
        conn = spdyconn.SpdyConnection(sock, self.on_stream, idle_timeout)
        conn.on_gone = self.sockets.shut_all
        conn.serve()
        conn.abort()
        with self._lock:  # pairs still incomplete have nobody to wait for now
            timers, self._timers, self._pairs = list(self._timers.values()), {}, {}
        for timer in timers:
            timer.cancel()

    def on_stream(self, stream: spdyconn.SpdyStream):
        try:
            port = parse_port(stream.headers.get("port", ""))
        except ValueError as e:
            log.info("port-forward stream %d refused: %s", stream.id, e)
            return False
        kind = stream.type
        if kind not in ("data", "error"):
            log.info("port-forward stream %d refused: stream type %r", stream.id, kind)
            return False
        request_id = stream.headers.get("requestid") or \
            str(stream.id if kind == "error" else stream.id - 2)  # clients before requestID
        with self._lock:
            pair = self._pairs.get(request_id)
            if pair is None:
                pair = self._pairs[request_id] = {}
                timer = threading.Timer(self.creation_timeout, self._expire, (request_id, pair))
                timer.daemon = True
                self._timers[request_id] = timer
                timer.start()
            if kind in pair:
                return False
            pair[kind] = stream
            if len(pair) < 2:
                return True
            del self._pairs[request_id]
            self._timers.pop(request_id).cancel()
        if parse_port(pair["data"].headers["port"]) != parse_port(pair["error"].headers["port"]):
            return lambda: self._refuse(pair, "the data and error streams name different ports")
        return lambda: threading.Thread(target=self._forward, args=(port, pair), daemon=True,
                                        name=f"forward-{port}").start()

    def _expire(self, request_id: str, pair: dict) -> None:
        with self._lock:
            if self._pairs.get(request_id) is not pair:
                return  # completed
            del self._pairs[request_id]
            del self._timers[request_id]
        self._refuse(pair, "timed out waiting for the other stream of the pair")

    @staticmethod
    def _refuse(pair: dict, message: str) -> None:
        error = pair.get("error")
        if error is not None:
            try:
                error.write(message.encode())
            except spdyconn.Gone:
                pass
        for stream in pair.values():
            stream.reset(spdy.CANCEL)

    def _forward(self, port: int, pair: dict) -> None:
        data, error = pair["data"], pair["error"]
        try:
            sock = self.connect(port)
        except Exception as e:  # noqa: BLE001 - any failure is the client's message
            try:
                error.write(_error_message(self.pod_id, port, e))
            except spdyconn.Gone:
                pass
            error.close()
            data.close()
            return
        if not self.sockets.add(sock):
            sock.close()
            return
        try:
            data.consume(lambda chunk: _send_to_pod(sock, chunk),
                         lambda: _shutdown(sock, socket.SHUT_WR))
            while chunk := _recv(sock):
                data.write(chunk)
        except spdyconn.Gone:
            pass
        finally:
            data.close()
            error.close()
            self.sockets.remove(sock)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(_READ)
    except OSError:
        return b""


# --- WebSocket ---------------------------------------------------------------------------------
def serve_websocket(ws: websocket.WebSocket, pod_id: str, ports: list[int], connect) -> None:
    sockets = _Sockets()
    for index, port in enumerate(ports):
        prefix = struct.pack("<H", port)
        for channel in (2 * index, 2 * index + 1):
            _ws_send(ws, channel, prefix)
    connected: dict[int, socket.socket] = {}
    for index, port in enumerate(ports):
        try:
            sock = connect(port)
        except Exception as e:  # noqa: BLE001 - any failure is the client's message
            _ws_send(ws, 2 * index + 1, _error_message(pod_id, port, e))
            continue
        sockets.add(sock)
        connected[index] = sock

    def on_chunk(channel: int, data: bytes) -> None:
        sock = connected.get(channel // 2) if channel % 2 == 0 else None
        if sock is not None:
            _send_to_pod(sock, data)

    reader = threading.Thread(target=ws.serve, args=(on_chunk, sockets.shut_all),
                              name="ws-reader", daemon=True)
    reader.start()
    pumps = [threading.Thread(target=_pump_to_websocket, args=(ws, 2 * index, sock),
                              name=f"forward-{ports[index]}", daemon=True)
             for index, sock in connected.items()]
    for pump in pumps:
        pump.start()
    for pump in pumps:
        pump.join()
    for sock in connected.values():
        sockets.remove(sock)
    ws.close()


def _pump_to_websocket(ws: websocket.WebSocket, channel: int, sock: socket.socket) -> None:
    while chunk := _recv(sock):
        if not _ws_send(ws, channel, chunk):
            break


def _ws_send(ws: websocket.WebSocket, channel: int, data: bytes) -> bool:
    try:
        ws.send(bytes([channel]) + data)
        return True
    except websocket.Gone:
        return False
