"""corrald's streaming server: the URLs that Exec, Attach and PortForward return.

    GET|POST /exec/<token>  /attach/<token>  /portforward/<token>

as kubelet's CRI streaming server (k8s.io/kubelet/pkg/cri/streaming) serves
them: the RPC validates the request and stores it under a one-time token
(tokens.py); the HTTP request that brings the token upgrades to SPDY/3.1
(`Upgrade: SPDY/3.1`, protocol in X-Stream-Protocol-Version) or to a
WebSocket (protocol in Sec-WebSocket-Protocol), and the session runs on
that connection (remotecommand.py, portforward.py).  An unknown, expired
or used token is 404; a request that does not upgrade is 400; no common
protocol is 403 (SPDY, naming the accepted ones) or 400 (WebSocket).

One thread per connection (at most MAX_CONNECTIONS); the request line and
headers must come within HEADER_TIMEOUT; a connection that is idle both
ways for `idle_timeout` is closed.
"""

from __future__ import annotations

import ipaddress
import logging
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from corral.cri.streaming import portforward, remotecommand, spdyconn, websocket
from corral.cri.streaming.tokens import RequestCache, TooManyRequests
from corral.sandbox.errors import FailedPrecondition, InvalidArgument, SandboxError

log = logging.getLogger("corrald.stream")

MAX_CONNECTIONS = 256
HEADER_TIMEOUT = 10.0
CREATION_TIMEOUT = 30.0   # for a SPDY client to open its streams (kubelet's default)

__all__ = ["StreamServer", "TooManyRequests"]


class StreamServer:
    def __init__(self, ctx, address: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float = 4 * 3600.0):
        self.ctx = ctx
        self.idle_timeout = idle_timeout
        self.cache = RequestCache()
        family = _HTTPServer.address_family
        if ":" in address:
            import socket

            family = socket.AF_INET6
        server_class = type("_Server", (_HTTPServer,), {"address_family": family})
        self.httpd = server_class((address, port), _Handler)
        self.httpd.streams = self
        host, bound_port = self.httpd.server_address[:2]
        self.base_url = f"http://{_url_host(host)}:{bound_port}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="stream-server",
                                        daemon=True)
        self._thread.start()
        log.info("streaming server on %s", self.base_url)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the RPC side --------------------------------------------------------------------------
    def exec_url(self, request) -> str:
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        self._check_stdio(request)
        self._running(request.container_id)
        return self._url("exec", _copy(request))

    def attach_url(self, request) -> str:
        self._check_stdio(request)
        self._running(request.container_id)
        return self._url("attach", _copy(request))

    def port_forward_url(self, request) -> str:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        for port in request.port:
            if not 0 < port <= 65535:
                raise InvalidArgument(f"port {port} is not a number from 1 to 65535")
        pod = self.ctx.pods.get(request.pod_sandbox_id)
        if pod.state != "ready":
            raise FailedPrecondition(f"pod sandbox {pod.id[:12]} is not ready")
        copy = _copy(request)
        copy.pod_sandbox_id = pod.id  # a unique prefix is resolved now
        return self._url("portforward", copy)

    @staticmethod
    def _check_stdio(request) -> None:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")

    def _running(self, container_id: str) -> None:
        record = self.ctx.containers.status(container_id)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id[:12]} is {record.state}, "
                                     "not running")

    def _url(self, kind: str, request) -> str:
        return f"{self.base_url}/{kind}/{self.cache.insert(kind, request)}"

    # --- the HTTP side -------------------------------------------------------------------------
    def serve_remote_command(self, http: _Handler, kind: str, request) -> None:
        from corral.sandbox import streams

        options = remotecommand.Options(request.stdin, request.stdout, request.stderr,
                                        request.tty)
        channels = self._remote_command_channels(http, options)
        if channels is None:
            return

        def start(size):
            try:
                if kind == "exec":
                    return streams.start_exec(
                        self.ctx, request.container_id, list(request.cmd), tty=request.tty,
                        stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
                        size=size)
                return streams.attach(self.ctx, request.container_id, stdin=request.stdin)
            except (SandboxError, OSError) as e:
                log.info("%s %s: %s", kind, request.container_id[:12], e)
                what = "executing command in" if kind == "exec" else "attaching to"
                raise remotecommand.StartFailed(f"error {what} container: {e}") from None

        remotecommand.serve(channels, start, is_exec=kind == "exec",
                            wants_size=request.tty and channels.has_resize)

    def _remote_command_channels(self, http: _Handler, options):
        if http.is_websocket():
            protocol = http.upgrade_websocket(remotecommand.WEBSOCKET_PROTOCOLS)
            if protocol is None:
                return None
            ws = websocket.WebSocket(http.connection, self.idle_timeout)
            return remotecommand.WebSocketChannels(ws, protocol, options)
        protocol = http.upgrade_spdy(remotecommand.SPDY_PROTOCOLS)
        if protocol is None:
            return None
        arrived: dict[str, spdyconn.SpdyStream] = {}
        condition = threading.Condition()

        def on_stream(stream):
            def known():
                with condition:
                    arrived.setdefault(stream.type, stream)
                    condition.notify_all()
            return known

        conn = spdyconn.SpdyConnection(http.connection, on_stream, self.idle_timeout)
        conn.on_gone = lambda: _notify(condition)
        threading.Thread(target=conn.serve, name="spdy-reader", daemon=True).start()
        channels = remotecommand.SpdyChannels.wait(conn, protocol, options, CREATION_TIMEOUT,
                                                   arrived, condition)
        if channels is None:
            log.info("SPDY client did not open its streams within %.0fs", CREATION_TIMEOUT)
            conn.abort()
        return channels

    def serve_port_forward(self, http: _Handler, request) -> None:
        from corral.sandbox import streams

        pod_id = request.pod_sandbox_id

        def connect(port: int):
            return streams.connect_in_pod(self.ctx, pod_id, port)

        if http.is_websocket():
            ports = list(request.port)
            if not ports:
                http.fail(400, "port forwarding over WebSocket needs the ports in the request")
                return
            if len(ports) > portforward.MAX_WEBSOCKET_PORTS:
                http.fail(400, f"at most {portforward.MAX_WEBSOCKET_PORTS} ports over WebSocket")
                return
            if http.upgrade_websocket(portforward.WEBSOCKET_PROTOCOLS) is None:
                return
            ws = websocket.WebSocket(http.connection, self.idle_timeout)
            portforward.serve_websocket(ws, pod_id, ports, connect)
            return
        if http.upgrade_spdy(portforward.SPDY_PROTOCOLS) is None:
            return
        portforward.SpdyPortForward(pod_id, connect, CREATION_TIMEOUT).serve(
            http.connection, self.idle_timeout)


def _notify(condition: threading.Condition) -> None:
    with condition:
        condition.notify_all()


def _copy(request):
    copy = type(request)()
    copy.CopyFrom(request)
    return copy


def _url_host(host: str) -> str:
    address = ipaddress.ip_address(host)
    if address.is_unspecified:  # listening everywhere: kubelet, on this node, reaches loopback
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{host}]" if address.version == 6 else host


class _HTTPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, *args, **kwargs):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        if self.slots.acquire(blocking=False):
            return True
        log.warning("streaming server: %d connections: refusing %s", MAX_CONNECTIONS,
                    client_address)
        return False

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "corral-stream"
    sys_version = ""
    rbufsize = 0              # read nothing past the headers: after an upgrade it is the session's
    timeout = HEADER_TIMEOUT  # for the request line and headers

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("stream %s: %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self.close_connection = True
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            self.fail(404, "404 page not found")
            return
        kind, token = parts
        entry = self.server.streams.cache.consume(token)
        if entry is None or entry[0] != kind:
            self.fail(404, "404 page not found")
            return
        streams = self.server.streams
        try:
            if kind == "portforward":
                streams.serve_port_forward(self, entry[1])
            else:
                streams.serve_remote_command(self, kind, entry[1])
        except Exception:  # noqa: BLE001 - one session's failure is not the server's
            log.exception("%s session", kind)

    do_POST = do_GET

    def fail(self, code: int, message: str, headers: dict | None = None) -> None:
        body = (message + "\n").encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _tokens(self, name: str) -> list[str]:
        values = self.headers.get_all(name) or []
        return [item.strip() for value in values for item in value.split(",") if item.strip()]

    def is_websocket(self) -> bool:
        return "upgrade" in [t.lower() for t in self._tokens("Connection")] and \
            self.headers.get("Upgrade", "").strip().lower() == "websocket"

    def upgrade_websocket(self, protocols: list[str]) -> str | None:
        """Answer the WebSocket handshake; the protocol agreed (None: refused, answered)."""
        key = self.headers.get("Sec-WebSocket-Key", "").strip()
        if self.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            self.fail(400, "unable to upgrade: Sec-WebSocket-Version must be 13",
                      {"Sec-WebSocket-Version": "13"})
            return None
        if not websocket.valid_key(key):
            self.fail(400, "unable to upgrade: a Sec-WebSocket-Key of 16 bytes is required")
            return None
        offered = self._tokens("Sec-WebSocket-Protocol") or [""]
        chosen = next((p for p in offered if p in protocols), None)
        if chosen is None:
            self.fail(400, f"requested protocol(s) are not supported: {offered}; supports "
                      f"{[p for p in protocols if p]}")
            return None
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket.accept_token(key))
        if chosen:
            self.send_header("Sec-WebSocket-Protocol", chosen)
        self.end_headers()
        return chosen

    def upgrade_spdy(self, protocols: list[str]) -> str | None:
        """Negotiate X-Stream-Protocol-Version and switch to SPDY/3.1 (None: refused)."""
        offered = self._tokens("X-Stream-Protocol-Version")
        if not offered:
            self.fail(400, "unable to upgrade: X-Stream-Protocol-Version is required")
            return None
        chosen = next((p for p in offered if p in protocols), None)
        if chosen is None:
            self.fail(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                      f"{offered}, server accepts {protocols}",
                      {"X-Accepted-Stream-Protocol-Versions": ", ".join(protocols)})
            return None
        connection = [t.lower() for t in self._tokens("Connection")]
        if "upgrade" not in connection or \
                "spdy/3.1" not in self.headers.get("Upgrade", "").lower():
            self.fail(400, "unable to upgrade: missing upgrade headers in request")
            return None
        self.send_response(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        self.send_header("X-Stream-Protocol-Version", chosen)
        self.end_headers()
        return chosen
