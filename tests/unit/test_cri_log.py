"""The CRI log format the shim writes: full and partial lines, streams, rotation."""

import random
import re

import pytest

from corral.shim.logs import MAX_LINE, CriLog, output, parse_line, timestamp


def entries(path) -> list[tuple[str, str, str]]:
    return [parse_line(line)[1:] for line in path.read_text().splitlines()]


def test_lines_are_tagged_full_and_split_across_chunks(tmp_path):
    log = CriLog(str(tmp_path / "c.log"))
    log.feed("stdout", b"one\ntw")
    log.feed("stdout", b"o\nthree")
    log.feed("stderr", b"err\n")
    log.close()  # the stream ended mid-line: what is left had no newline, a partial line
    assert entries(tmp_path / "c.log") == [("stdout", "F", "one"), ("stdout", "F", "two"),
                                           ("stderr", "F", "err"), ("stdout", "P", "three")]


@pytest.mark.parametrize("length, expected", [
    (MAX_LINE, [("F", MAX_LINE)]),
    (MAX_LINE + 1, [("P", MAX_LINE), ("F", 1)]),
    (2 * MAX_LINE + 5, [("P", MAX_LINE), ("P", MAX_LINE), ("F", 5)]),
])
def test_long_lines_become_partial_entries(tmp_path, length, expected):
    log = CriLog(str(tmp_path / "c.log"))
    log.feed("stdout", b"x" * length + b"\n")
    log.close()
    assert [(tag, len(message)) for _, tag, message in entries(tmp_path / "c.log")] == expected


def test_reopen_after_rotation_writes_a_new_file(tmp_path):
    path = tmp_path / "c.log"
    log = CriLog(str(path))
    log.feed("stdout", b"before\n")
    path.rename(tmp_path / "c.log.1")
    log.reopen()
    log.feed("stdout", b"after\n")
    log.close()
    assert entries(tmp_path / "c.log.1") == [("stdout", "F", "before")]
    assert entries(path) == [("stdout", "F", "after")]


def test_timestamp_is_rfc3339_nano_utc():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", timestamp())
    assert timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_parse_line_rejects_what_is_not_a_log_line():
    assert parse_line("2023-11-14T22:13:20.1Z stdout F a b c\n")[3] == "a b c"
    with pytest.raises(ValueError):
        parse_line("garbage")


def reassembled(path) -> dict[bytes, bytes]:
    """Each stream's bytes as a reader (kubelet, `corral logs`) rebuilds them from the file."""
    streams: dict[bytes, bytes] = {}
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    for line in data.split(b"\n")[:-1]:
        _, stream, tag, content = parse_line(line)
        assert tag in (b"F", b"P") and len(content) <= MAX_LINE
        streams[stream] = streams.get(stream, b"") + output(tag, content)
    return streams


# \r, NUL, escapes, what str.splitlines() splits on, and invalid UTF-8
CONTROL = (b"a\rb\r\n\r\n\0\0\n\x1b[31mred\x1b[0m\t\x0b\x0c\x1c\x1d\x1e\x85\n"
           b"\xff\xfe\xc3(\xed\xa0\x80 \n")


@pytest.mark.parametrize("seed, size", [(1, 1), (2, MAX_LINE), (3, MAX_LINE + 1),
                                        (4, 100_000), (5, 1 << 20)])
def test_random_bytes_reassemble_exactly_whatever_the_chunks(tmp_path, seed, size):
    rng = random.Random(seed)
    payloads = {b"stdout": rng.randbytes(size), b"stderr": CONTROL + rng.randbytes(size // 3)}
    log = CriLog(str(tmp_path / "c.log"))
    for stream, payload in payloads.items():
        offset = 0
        while offset < len(payload):  # as pipe reads split it: anywhere
            step = rng.choice([1, 7, 4096, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 65536])
            log.feed(stream.decode(), payload[offset:offset + step])
            offset += step
    log.close()
    assert reassembled(tmp_path / "c.log") == payloads


@pytest.mark.parametrize("payload", [b"no newline at the end", b"\n", b"\r", b"x\n\n",
                                     b"y" * MAX_LINE, b"z" * (MAX_LINE + 1) + b"\n",
                                     b"w" * (2 * MAX_LINE), CONTROL, CONTROL.rstrip(b"\n")])
def test_line_edges_reassemble_exactly(tmp_path, payload):
    log = CriLog(str(tmp_path / "c.log"))
    log.feed("stdout", payload)
    log.close()
    assert reassembled(tmp_path / "c.log") == {b"stdout": payload}


def test_a_last_line_without_newline_is_partial(tmp_path):
    log = CriLog(str(tmp_path / "c.log"))
    log.feed("stdout", b"done\nprompt> ")
    log.close()
    assert entries(tmp_path / "c.log") == [("stdout", "F", "done"), ("stdout", "P", "prompt> ")]
