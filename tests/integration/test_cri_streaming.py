"""Exec, Attach and PortForward through corrald's streaming server, driven by real clients.

    WebSocket  the `kubernetes` package's client (v4/v5.channel.k8s.io, as its
               stream() and portforward() use them)
    SPDY/3.1   a Go program on spdystream, the library kubelet's and kubectl's
               clients use (tests/integration/spdyclient), built offline here

and hostile clients on raw sockets: bad, used and mistyped tokens, bad
upgrades, a client gone mid-stream, frames far larger than any buffer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from cri_api.v1 import api_pb2
from kubernetes.client import Configuration
from kubernetes.stream.ws_client import PortForward, WSClient, create_websocket

from tests.integration.corrald import NOTHING_LEFT, running_corrald

SPDY_CLIENT_SOURCE = Path(__file__).parent / "spdyclient"
HTTPD = "mkdir -p /www && echo hello-http > /www/index.html && httpd -p 8080 -h /www && " \
    "nc -ll -p 9090 -e cat & exec sleep 100000"


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("corralt9", "10.99.16.0/24") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def pod(corrald):
    """One pod for the module: a running busybox with an httpd (8080) and an echo (9090)."""
    pod_id, config = corrald.run_pod("streams")
    container_id = corrald.create_container(pod_id, config, "main", ["sh", "-c", HTTPD])
    corrald.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    wait_for_port(corrald, container_id, 8080)
    yield pod_id, config, container_id
    corrald.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    corrald.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert corrald.leftovers() == NOTHING_LEFT


@pytest.fixture(scope="module")
def spdyclient(tmp_path_factory) -> str:
    """The Go SPDY client, built offline against Debian's spdystream (GOPATH mode)."""
    out = tmp_path_factory.mktemp("spdyclient") / "spdyclient"
    cache = Path(__file__).resolve().parents[2] / ".cache" / "go-build"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
           "GOCACHE": str(cache), "GOFLAGS": "", "GOPROXY": "off", "CGO_ENABLED": "0"}
    done = subprocess.run([shutil.which("go") or "/usr/bin/go", "build", "-o", str(out), "."],
                          cwd=SPDY_CLIENT_SOURCE, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return str(out)


def wait_for_port(daemon, container_id: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["nc", "-w", "1", "127.0.0.1", str(port)], timeout=5))
        if reply.exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def exec_url(daemon, container_id: str, cmd: list[str], **streams) -> str:
    return daemon.runtime.Exec(api_pb2.ExecRequest(container_id=container_id, cmd=cmd,
                                                   **streams)).url


def ws_url(url: str) -> str:
    return "ws://" + url.removeprefix("http://")


def ws_client(url: str, protocol: str = "v4.channel.k8s.io") -> WSClient:
    return WSClient(Configuration(), ws_url(url), {"sec-websocket-protocol": protocol},
                    capture_all=True, binary=True)


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code()


def raw_request(url: str, headers: dict, method: str = "GET") -> tuple[int, dict, socket.socket]:
    """An HTTP request on a raw socket: (status, headers, the socket, left open)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    head = response.split(b"\r\n\r\n")[0].decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in fields.items()}, sock


def host_pids(*args: str) -> list[int]:
    wanted = "\0".join(args).encode() + b"\0"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == wanted:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def wait_reaped(pid: int, timeout: float = 10) -> None:
    """The process is gone from /proc: dead and reaped (a zombie stays, in state Z)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    raise AssertionError(f"process {pid} still there, state {state}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


# --- the RPCs ----------------------------------------------------------------------------------
def test_rpc_validation(corrald, pod):
    pod_id, config, container_id = pod
    rt = corrald.runtime
    bad = [
        (api_pb2.ExecRequest(container_id=container_id, cmd=["sh"], tty=True, stdout=True,
                             stderr=True), grpc.StatusCode.INVALID_ARGUMENT),
        (api_pb2.ExecRequest(container_id=container_id, cmd=["sh"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (api_pb2.ExecRequest(container_id=container_id, stdout=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (api_pb2.ExecRequest(container_id="f" * 64, cmd=["sh"], stdout=True),
         grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in bad:
        assert code_of(rt.Exec, request) == code, request
    assert code_of(rt.Attach, api_pb2.AttachRequest(container_id=container_id)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.PortForward, api_pb2.PortForwardRequest(pod_sandbox_id=pod_id,
                                                              port=[70000])) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.PortForward, api_pb2.PortForwardRequest(pod_sandbox_id="0" * 64)) == \
        grpc.StatusCode.NOT_FOUND
    done = corrald.create_container(pod_id, config, "done", ["true"])
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=done))
    corrald.wait_exited(done)
    assert code_of(rt.Exec, api_pb2.ExecRequest(container_id=done, cmd=["sh"], stdout=True)) \
        == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(rt.Attach, api_pb2.AttachRequest(container_id=done, stdout=True)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=done))
    url = exec_url(corrald, container_id, ["true"], stdout=True)
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url


# --- WebSocket: the kubernetes client ----------------------------------------------------------
def test_websocket_exec_stdio_and_exit_codes(corrald, pod):
    container_id = pod[2]
    client = ws_client(exec_url(corrald, container_id,
                                ["sh", "-c", "echo out; echo err >&2; read x; echo got $x; exit 3"],
                                stdin=True, stdout=True, stderr=True))
    assert client.subprotocol == "v4.channel.k8s.io"
    client.write_stdin(b"hello\n")
    client.run_forever(timeout=20)
    assert (client.read_stdout(), client.read_stderr()) == (b"out\ngot hello\n", b"err\n")
    assert client.returncode == 3

    client = ws_client(exec_url(corrald, container_id, ["echo", "fine"], stdout=True))
    client.run_forever(timeout=20)
    assert client.read_stdout() == b"fine\n" and client.returncode == 0

    client = ws_client(exec_url(corrald, container_id, ["/no/such/binary"], stdout=True))
    client.run_forever(timeout=20)
    error = json.loads(client.read_channel(3))
    assert error["status"] == "Failure"
    assert "/no/such/binary" in error["message"] or error.get("reason") == "NonZeroExitCode"


def test_websocket_v5_closes_stdin(corrald, pod):
    """v5: the client ends stdin (255, 0) and `cat` sees EOF: megabytes pass both ways."""
    payload = os.urandom(3 << 20)
    client = ws_client(exec_url(corrald, pod[2], ["sh", "-c", "cat; echo done >&2"],
                                stdin=True, stdout=True, stderr=True),
                       protocol="v5.channel.k8s.io")
    assert client.subprotocol == "v5.channel.k8s.io"
    for start in range(0, len(payload), 256 << 10):
        client.write_stdin(payload[start:start + (256 << 10)])
        client.update(timeout=0)
    client.close_channel(0)
    client.run_forever(timeout=30)
    assert client.read_stdout() == payload
    assert client.read_stderr() == b"done\n" and client.returncode == 0


def test_websocket_exec_tty_and_resize(corrald, pod):
    url = exec_url(corrald, pod[2], ["sh", "-c", "tty; stty size; read x; stty size"],
                   stdin=True, stdout=True, tty=True)
    client = ws_client(url)
    client.write_channel(4, json.dumps({"Width": 100, "Height": 30}))  # as kubectl: at once
    output = b""
    deadline = time.monotonic() + 10
    while b"30 100" not in output and time.monotonic() < deadline:
        output += client.read_stdout(timeout=1) or b""
    client.write_channel(4, json.dumps({"Height": 40, "Width": 120}))
    time.sleep(0.2)
    client.write_stdin(b"go\n")
    client.run_forever(timeout=20)
    output += client.read_stdout()
    lines = output.decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert "30 100" in lines and "40 120" in lines
    assert client.returncode == 0


def test_websocket_attach_stdin_once_and_tty(corrald, pod):
    pod_id, config, _ = pod
    piped = corrald.create_container(
        pod_id, config, "piped", ["sh", "-c", "read line; echo got $line; echo err >&2; "
                                  "read more || echo eof"], stdin=True, stdin_once=True)
    corrald.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=piped))
    url = corrald.runtime.Attach(api_pb2.AttachRequest(
        container_id=piped, stdin=True, stdout=True, stderr=True)).url
    client = ws_client(url, protocol="v5.channel.k8s.io")
    client.write_stdin(b"one\n")
    client.close_channel(0)  # stdin_once: the container's stdin ends with the first attach's
    client.run_forever(timeout=20)
    assert client.read_stdout() == b"got one\neof\n" and client.read_stderr() == b"err\n"
    assert client.returncode == 0  # attach reports Success once the output ends
    assert corrald.wait_exited(piped).exit_code == 0
    log = open(corrald.container_state(piped).log_path).read()
    assert "stdout F got one" in log and "stderr F err" in log

    terminal = corrald.create_container(
        pod_id, config, "terminal", ["sh", "-c", "read x; stty size; echo [$x]"],
        stdin=True, tty=True)
    corrald.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=terminal))
    url = corrald.runtime.Attach(api_pb2.AttachRequest(
        container_id=terminal, stdin=True, stdout=True, tty=True)).url
    client = ws_client(url)
    client.write_channel(4, json.dumps({"Width": 77, "Height": 22}))
    time.sleep(0.2)
    client.write_stdin(b"typed\n")
    client.run_forever(timeout=20)
    assert "22 77\r\n[typed]" in client.read_stdout().decode()
    assert client.returncode == 0
    for container_id in (piped, terminal):
        corrald.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(
            container_id=container_id))


def test_websocket_port_forward(corrald, pod):
    url = corrald.runtime.PortForward(api_pb2.PortForwardRequest(
        pod_sandbox_id=pod[0], port=[8080, 9090, 9999])).url
    forward = PortForward(create_websocket(Configuration(), ws_url(url),
                                           {"sec-websocket-protocol": "v4.channel.k8s.io"}),
                          [8080, 9090, 9999])
    http = forward.socket(8080)
    http.settimeout(10)
    http.sendall(b"GET / HTTP/1.0\r\n\r\n")
    response = b""
    while not response.endswith(b"hello-http\n"):  # one port's end is not signalled in v4:
        response += http.recv(4096)                 # the socket closes with the WebSocket
    assert response.startswith(b"HTTP/1.")
    echo = forward.socket(9090)
    echo.settimeout(10)
    echo.sendall(b"ping\n")
    assert echo.recv(100) == b"ping\n"
    deadline = time.monotonic() + 10
    while forward.error(9999) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "connection refused" in forward.error(9999).lower()
    forward.close()


# --- SPDY: spdystream, as kubelet's clients ----------------------------------------------------
def test_spdy_exec(corrald, pod, spdyclient, tmp_path):
    status = tmp_path / "status"
    url = exec_url(corrald, pod[2], ["sh", "-c", "cat; echo err >&2; exit 7"],
                   stdin=True, stdout=True, stderr=True)
    payload = os.urandom(2 << 20)
    done = subprocess.run([spdyclient, "exec", url, "-stdin", "-stderr", "-status", str(status)],
                          input=payload, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == payload and done.stderr == b"err\n"
    result = json.loads(status.read_text())
    assert result["status"] == "Failure" and result["reason"] == "NonZeroExitCode"
    assert result["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]

    url = exec_url(corrald, pod[2], ["sh", "-c", "stty size; tty"], stdin=True, stdout=True,
                   tty=True)
    done = subprocess.run([spdyclient, "exec", url, "-stdin", "-tty", "-resize", "132x43",
                           "-status", str(status)], input=b"", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("43 132\r\n/dev/pts/")
    assert json.loads(status.read_text()) == {"metadata": {}, "status": "Success"}


def test_spdy_attach(corrald, pod, spdyclient, tmp_path):
    pod_id, config, _ = pod
    container_id = corrald.create_container(
        pod_id, config, "attached", ["sh", "-c", "read a; echo out $a; echo err $a >&2; "
                                     "read b || exit 5"], stdin=True, stdin_once=True)
    corrald.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    url = corrald.runtime.Attach(api_pb2.AttachRequest(
        container_id=container_id, stdin=True, stdout=True, stderr=True)).url
    status = tmp_path / "status"
    done = subprocess.run([spdyclient, "exec", url, "-stdin", "-stderr", "-status", str(status)],
                          input=b"spdy\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == (b"out spdy\n", b"err spdy\n")
    assert json.loads(status.read_text())["status"] == "Success"
    assert corrald.wait_exited(container_id).exit_code == 5  # its stdin ended with ours
    corrald.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))


def test_spdy_port_forward(corrald, pod, spdyclient):
    url = corrald.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod[0])).url
    done = subprocess.run([spdyclient, "portforward", url, "8080", "GET / HTTP/1.0\r\n\r\n",
                           "GET /nope HTTP/1.0\r\n\r\n"], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["data"].endswith("hello-http\n") and first["error"] == ""
    assert second["data"].startswith("HTTP/1.1 404") and second["error"] == ""
    url = corrald.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod[0])).url
    done = subprocess.run([spdyclient, "portforward", url, "9999", "x"], capture_output=True,
                          timeout=60)
    result = json.loads(done.stdout)
    assert result["data"] == "" and "error forwarding port 9999" in result["error"]


def test_spdy_port_forward_leaves_no_thread_behind(corrald, pod, spdyclient):
    """Each forwarded connection's pair timer ends with it, not creation_timeout later."""
    def forward(requests: int) -> None:
        url = corrald.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod[0])).url
        done = subprocess.run([spdyclient, "portforward", url, "8080",
                               *["GET / HTTP/1.0\r\n\r\n"] * requests], capture_output=True,
                              timeout=60)
        assert done.returncode == 0 and done.stdout.count(b"hello-http") == requests

    def threads() -> int:
        return len(os.listdir(f"/proc/{corrald.process.pid}/task"))

    forward(1)  # gRPC's pool makes its threads as calls come
    time.sleep(0.5)
    before = threads()
    for _ in range(5):
        forward(3)
    deadline = time.monotonic() + 5
    while threads() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threads() <= before


def test_spdy_protocol_negotiation(corrald, pod, spdyclient):
    def agreed(*versions):
        url = exec_url(corrald, pod[2], ["true"], stdout=True)
        return subprocess.run([spdyclient, "protocol", url, *versions], capture_output=True,
                              text=True, timeout=30).stdout.split()

    assert agreed("v5.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io") == \
        ["101", "v3.channel.k8s.io"]
    assert agreed("v1.nothing") == ["403"]


# --- hostile clients ---------------------------------------------------------------------------
def test_tokens_are_single_use_and_checked(corrald, pod):
    def status_of(url: str) -> int:
        status, _, sock = raw_request(url, {})
        sock.close()
        return status

    url = exec_url(corrald, pod[2], ["true"], stdout=True)
    base, token = url.rsplit("/exec/", 1)
    for path in ("/exec/nonsense", f"/exec/{token}/x", "/", f"/{token}", f"/attach/{token}"):
        assert status_of(base + path) == 404, path
    assert status_of(url) == 404  # taken, as kubelet's cache does, by the try as an attach
    url = exec_url(corrald, pod[2], ["true"], stdout=True)
    assert status_of(url) == 400  # the right token, but no upgrade: used up all the same
    assert status_of(url) == 404


@pytest.mark.parametrize("headers, expected", [
    ({}, 400),
    ({"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}, 400),  # no X-Stream-Protocol-Version
    ({"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v9"}, 403),
    ({"Connection": "close", "X-Stream-Protocol-Version": "v4.channel.k8s.io"}, 400),
    ({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "8",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 400),
    ({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "short"}, 400),
    ({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "v9"}, 400),
])
def test_bad_upgrades(corrald, pod, headers, expected):
    status, fields, sock = raw_request(exec_url(corrald, pod[2], ["true"], stdout=True), headers)
    sock.close()
    assert status == expected
    if expected == 403:
        assert "v4.channel.k8s.io" in fields["x-accepted-stream-protocol-versions"]


def test_client_gone_mid_stream_kills_only_the_exec(corrald, pod, spdyclient):
    container_id = pod[2]
    shims = corrald.shim_pids()
    for marker, connect in (("4321", "websocket"), ("4322", "spdy")):
        url = exec_url(corrald, container_id, ["sleep", marker], stdin=True, stdout=True)
        if connect == "websocket":
            client = ws_client(url)
        else:
            client = subprocess.Popen([spdyclient, "exec", url, "-stdin"],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not host_pids("sleep", marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = host_pids("sleep", marker)
        if connect == "websocket":
            client.sock.sock.shutdown(socket.SHUT_RDWR)  # no close frame: the client vanishes
            client.sock.sock.close()
        else:
            client.send_signal(signal.SIGKILL)
            client.wait()
        wait_reaped(pid)  # killed by the shim and reaped by it: no zombie
    assert corrald.shim_pids() == shims
    assert corrald.container_state(container_id).state == api_pb2.CONTAINER_RUNNING
    reply = corrald.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id,
                                                             cmd=["echo", "alive"], timeout=10))
    assert reply.stdout == b"alive\n"


def websocket_upgrade(url: str) -> socket.socket:
    status, _, sock = raw_request(url, {
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": "v4.channel.k8s.io"})
    assert status == 101
    return sock


def push_for(sock: socket.socket, seconds: float) -> int:
    """Send as much as the server takes in `seconds`; how much that was."""
    sock.setblocking(False)
    sent, chunk, deadline = 0, bytes(1 << 16), time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break
    return sent


def test_huge_frames_are_bounded(corrald, pod):
    """A 1 GiB WebSocket frame into a process that does not read, and a 16 MiB SPDY data
    frame and an oversized control frame: corrald's memory does not follow."""
    container_id = pod[2]
    daemon_pid = corrald.process.pid
    before = rss_kib(daemon_pid)
    sock = websocket_upgrade(exec_url(corrald, container_id, ["sleep", "4323"], stdin=True,
                                      stdout=True))
    # masked binary frame, 64-bit length 1 GiB, first payload byte: channel 0 (stdin)
    sock.sendall(bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 30) + bytes(4) + b"\0")
    pushed = push_for(sock, 2.0)
    grown = rss_kib(daemon_pid) - before
    assert grown < 32 << 10, f"corrald grew {grown} KiB after {pushed} bytes"
    # Reset, not FIN: a FIN would wait behind the megabytes corrald does not take while the
    # process reads nothing; a reset (a crashed client, a broken link) is seen at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 10
    while host_pids("sleep", "4323") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host_pids("sleep", "4323")

    url = exec_url(corrald, container_id, ["sleep", "4324"], stdin=True, stdout=True)
    status, _, sock = raw_request(url, {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                                        "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    assert status == 101
    sock.sendall(struct.pack(">II", 1, 0xFFFFFF))  # data frame, stream 1 (unknown), 16 MiB
    push_for(sock, 1.0)
    assert rss_kib(daemon_pid) - before < 32 << 10
    sock.close()
    status, _, sock = raw_request(exec_url(corrald, container_id, ["true"], stdout=True), {
        "Connection": "Upgrade", "Upgrade": "SPDY/3.1",
        "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    sock.sendall(struct.pack(">II", 0x80030001, 0x00FFFFFF))  # SYN_STREAM of 16 MiB
    sock.settimeout(10)
    reply = sock.recv(64)
    assert reply[:4] == struct.pack(">I", 0x80030007)  # GOAWAY ...
    assert reply[-4:] == struct.pack(">I", 1)          # ... PROTOCOL_ERROR
    assert sock.recv(64) == b""                        # and the connection ends
    sock.close()
