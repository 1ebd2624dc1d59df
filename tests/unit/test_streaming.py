"""The streaming server's pure parts: tokens, statuses, resizes, handshakes, its config."""

from __future__ import annotations

import json

import pytest

from corral.cri.streaming import remotecommand, websocket
from corral.cri.streaming.server import _url_host
from corral.cri.streaming.tokens import RequestCache, TooManyRequests
from corral.daemon.config import ConfigError, load


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_single_use_and_expire():
    clock = Clock()
    cache = RequestCache(ttl=60, clock=clock)
    first, second = cache.insert("exec", "a"), cache.insert("attach", "b")
    assert first != second and len(first) >= 24
    assert cache.consume(first) == ("exec", "a")
    assert cache.consume(first) is None
    clock.now += 60
    assert cache.consume(second) is None  # expired at its deadline
    assert cache.consume("no-such-token") is None
    assert len(cache) == 0


def test_tokens_in_flight_are_bounded():
    clock = Clock()
    cache = RequestCache(ttl=60, max_in_flight=2, clock=clock)
    cache.insert("exec", 1)
    cache.insert("exec", 2)
    with pytest.raises(TooManyRequests):
        cache.insert("exec", 3)
    clock.now += 61  # expired ones make room
    cache.insert("exec", 4)


def test_statuses_as_kubelet_writes_them():
    assert remotecommand.success() == {"metadata": {}, "status": "Success"}
    failure = remotecommand.exit_failure(42)
    assert failure["reason"] == "NonZeroExitCode"
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "42"}]
    v4 = json.loads(remotecommand.encode_status(failure, "v4.channel.k8s.io"))
    assert v4 == failure
    # before v4: only a failure's message, as plain text
    assert remotecommand.encode_status(remotecommand.success(), "v3.channel.k8s.io") == b""
    assert remotecommand.encode_status(remotecommand.internal_error("boom"),
                                       "channel.k8s.io") == b"Internal error occurred: boom"


def test_resize_decoder():
    decoder = remotecommand.ResizeDecoder()
    assert decoder.feed(b'{"Width":80,"Height":24}{"width": 100, ') == [(80, 24)]
    assert decoder.feed(b'"height": 30}\n') == [(100, 30)]
    assert decoder.feed(b"junk") == []  # dropped, not kept
    assert decoder.feed(b'{"Width":-1,"Height":2}{"Width":"x","Height":2}[1]') == []
    assert decoder.feed(b"{" + b" " * 5000) == []  # an object that never ends is dropped
    assert decoder.feed(b'{"Width":1,"Height":2}') == [(1, 2)]


def test_websocket_accept_token():
    # RFC 6455 §1.3's example
    assert websocket.accept_token("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert websocket.valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not websocket.valid_key("c2hvcnQ=") and not websocket.valid_key("!!")


def test_url_host():
    assert _url_host("127.0.0.1") == "127.0.0.1"
    assert _url_host("0.0.0.0") == "127.0.0.1"
    assert _url_host("::") == "[::1]"
    assert _url_host("fd00::5") == "[fd00::5]"


def test_stream_config(tmp_path):
    assert (load().stream.address, load().stream.port, load().stream.idle_timeout) == \
        ("127.0.0.1", 0, 14400)
    path = tmp_path / "corrald.toml"
    path.write_text('[stream]\naddress = "::1"\nport = 10010\nidle_timeout = 60\n')
    stream = load(str(path)).stream
    assert (stream.address, stream.port, stream.idle_timeout) == ("::1", 10010, 60)


@pytest.mark.parametrize("text, message", [
    ("[stream]\naddress = 'localhost'", "IP address"),
    ("[stream]\nport = 70000", "0 to 65535"),
    ("[stream]\nport = '1'", "0 to 65535"),
    ("[stream]\nidle_timeout = 0", "positive"),
    ("[stream]\ntls = true", "unknown key"),
    ("stream = 1", "must be a table"),
])
def test_bad_stream_config(tmp_path, text, message):
    path = tmp_path / "corrald.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(str(path))
