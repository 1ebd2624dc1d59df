"""Ports of critest's streaming specs (cri-tools pkg/validate streaming.go,
streaming_linux.go, v1.29.0 to v1.36.0) over corrald's real socket and streaming server.

Each test is one ginkgo `It`, named after it, sending what critest sends (critest_env.py).
critest streams with client-go's SPDY executor and port-forwarder (its default; the
WebSocket flags are off); here the SPDY client is tests/integration/spdyclient, on the
same spdystream library, opening the same streams in the same order and offering the
versions client-go offers (v5 first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod
from tests.integration.critest_env import (
    DEFAULT_IMAGE,
    HOSTNET_WEB_SERVER_IMAGE,
    HOSTNET_WEB_SERVER_PORT,
    WEB_SERVER_IMAGE,
    WEB_SERVER_PAGE,
    WEB_SERVER_PORT,
    Critest,
    check_main_page,
    critest_corrald,
    eventually,
)

SPDY_CLIENT_SOURCE = Path(__file__).parent / "spdyclient"
CLIENT_GO_PROTOCOLS = "v5.channel.k8s.io,v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io"
ECHO_HELLO = ["echo", "-n", "hello"]
# client-go's portforward serves a local port; Go's http.DefaultClient sends this on it.
GO_HTTP_GET = ("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Go-http-client/1.1\r\n"
               "Accept-Encoding: gzip\r\n\r\n")
HOST_PORT_FOR_PORT_FORWARD = 12001
HOST_PORT_FOR_HOST_NET_PORT_FORWARD = 12002


@pytest.fixture(scope="module")
def world():
    with critest_corrald("corraltcs", "10.99.74.0/24") as (daemon, registry):
        yield daemon


@pytest.fixture
def c(world):
    yield Critest(world)
    remove_every_pod(world)


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


class Stream:
    """One spdyclient session: stdin kept open until closed, stdout and stderr gathered."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.out, self.err = bytearray(), bytearray()
        self.readers = [threading.Thread(target=self._gather, args=(pipe, buffer), daemon=True)
                        for pipe, buffer in ((self.process.stdout, self.out),
                                             (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _gather(pipe, buffer: bytearray) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            buffer.extend(chunk)

    def write(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        self.process.stdin.close()

    def wait(self, timeout: float) -> int:
        """The client's exit status once the server ended the session (killed if it did not)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the stream did not end within {timeout} s") from None
        finally:
            for reader in self.readers:
                reader.join(5)


def check_exec(spdyclient: str, url: str, expected: bytes, exact: bool, tty: bool,
               status: Path) -> None:
    """critest's checkExec: with a tty, stdin is a pipe left open (closed after 20 s)."""
    argv = [spdyclient, "exec", url, "-stderr", "-protocols", CLIENT_GO_PROTOCOLS,
            "-status", str(status)]
    if tty:
        argv += ["-stdin", "-tty"]
    stream = Stream(argv)
    try:
        assert stream.wait(timeout=20) == 0, stream.err.decode()
    finally:
        if stream.process.stdin and not stream.process.stdin.closed:
            stream.close_stdin()
    assert bytes(stream.out) == expected if exact else expected in stream.out, stream.out
    assert stream.err == b"", "The stderr of exec should be empty"
    assert _success(status.read_bytes())


def _success(error_stream: bytes) -> bool:
    """client-go v4's errorDecoder: nothing, or a Status of Success, is no error."""
    return not error_stream or json.loads(error_stream).get("status") == "Success"


def exec_url(c, request) -> str:
    url = c.rc.Exec(request).url
    assert url.startswith("http://") and "//" + "/" not in url
    return url


def test_runtime_should_support_exec_with_tty_false_and_stdin_false(c, spdyclient, tmp_path):
    pod_id, pod_config = c.create_pod_sandbox_for_container()
    container_id = c.create_default_container(pod_id, pod_config, "container-for-exec-test")
    c.start_container(container_id)
    url = exec_url(c, api_pb2.ExecRequest(container_id=container_id, cmd=ECHO_HELLO,
                                          stdout=True, stderr=True))
    check_exec(spdyclient, url, b"hello", True, False, tmp_path / "status")


def test_runtime_should_support_exec_with_tty_true_and_stdin_true(c, spdyclient, tmp_path):
    pod_id, pod_config = c.create_pod_sandbox_for_container()
    container_id = c.create_default_container(pod_id, pod_config, "container-for-exec-test")
    c.start_container(container_id)
    url = exec_url(c, api_pb2.ExecRequest(container_id=container_id, cmd=ECHO_HELLO,
                                          stdout=True, tty=True, stdin=True))
    check_exec(spdyclient, url, b"hello", False, True, tmp_path / "status")


def test_runtime_should_support_attach(c, spdyclient, tmp_path):
    pod_id, pod_config = c.create_pod_sandbox_for_container()
    config = c.container_config("container-for-attach-test", image=DEFAULT_IMAGE,
                                command=["/bin/sh"], stdin=True, stdin_once=True, tty=False)
    container_id = c.create_container(config, pod_id, pod_config)
    c.start_container(container_id)
    url = c.rc.Attach(api_pb2.AttachRequest(container_id=container_id, stdin=True,
                                            stdout=True, stderr=True, tty=False)).url
    status = tmp_path / "status"
    stream = Stream([spdyclient, "exec", url, "-stdin", "-stderr", "-protocols",
                     CLIENT_GO_PROTOCOLS, "-status", str(status)])
    try:
        time.sleep(1)
        header = bytes(stream.out)
        # "The container should stop output when there is no input"
        eventually(lambda: _unchanged(stream, header), timeout=10)
        header = bytes(stream.out)
        stream.write(" ".join(ECHO_HELLO).encode() + b"\n")
        eventually(lambda: bytes(stream.out).removeprefix(header) == b"hello", timeout=60)
        for _ in range(3):  # Consistently, 3 s: nothing else comes
            time.sleep(1)
            assert bytes(stream.out).removeprefix(header) == b"hello"
    finally:
        stream.close_stdin()
    assert stream.wait(timeout=30) == 0, stream.err.decode()
    assert stream.err == b"", "The stderr of attach should be empty"
    assert _success(status.read_bytes())


def _unchanged(stream: Stream, before: bytes) -> bool:
    time.sleep(1)
    return bytes(stream.out) == before


def check_port_forward(c, spdyclient: str, pod_id: str, local_port: int,
                       container_port: int) -> None:
    """critest's checkPortForward: a GET of the main page through the forwarded port."""
    url = c.rc.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id)).url
    done = subprocess.run([spdyclient, "portforward", "-no-half-close", url,
                           str(container_port), GO_HTTP_GET.format(port=local_port)],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["error"] == "", result
    head, _, body = result["data"].partition("\r\n\r\n")
    assert head.split("\r\n")[0].split()[1] == "200", head
    assert body.encode() == WEB_SERVER_PAGE


def pod_with_port_mapping(c, container_port: int, host_net: bool):
    config = c.pod_config("create-PodSandbox-with-port-mapping", port_mappings=[
        api_pb2.PortMapping(container_port=container_port)])
    if host_net:
        config.linux.security_context.namespace_options.network = api_pb2.NODE
    return c.run_pod_sandbox(config), config


def test_runtime_should_support_portforward(c, spdyclient):
    pod_id, pod_config = pod_with_port_mapping(c, WEB_SERVER_PORT, host_net=False)
    config = c.container_config("container-for-portforward-test", image=WEB_SERVER_IMAGE,
                                command=())
    c.start_container(c.create_container(config, pod_id, pod_config))
    check_main_page(c, pod_id, 0, WEB_SERVER_PORT)
    check_port_forward(c, spdyclient, pod_id, HOST_PORT_FOR_PORT_FORWARD, WEB_SERVER_PORT)


def test_runtime_should_support_portforward_in_host_network(c, spdyclient):
    pod_id, pod_config = pod_with_port_mapping(c, HOSTNET_WEB_SERVER_PORT, host_net=True)
    config = c.container_config("container-for-host-net-portforward-test",
                                image=HOSTNET_WEB_SERVER_IMAGE, command=())
    c.start_container(c.create_container(config, pod_id, pod_config))
    check_main_page(c, "", HOSTNET_WEB_SERVER_PORT, 0)
    check_port_forward(c, spdyclient, pod_id, HOST_PORT_FOR_HOST_NET_PORT_FORWARD,
                       HOSTNET_WEB_SERVER_PORT)
