"""The CRI log format the shim writes: full and partial lines, streams, rotation."""

import re

import pytest

from corral.shim.logs import MAX_LINE, CriLog, parse_line, timestamp


def entries(path) -> list[tuple[str, str, str]]:
    return [parse_line(line)[1:] for line in path.read_text().splitlines()]


def test_lines_are_tagged_full_and_split_across_chunks(tmp_path):
    log = CriLog(str(tmp_path / "c.log"))
    log.feed("stdout", b"one\ntw")
    log.feed("stdout", b"o\nthree")
    log.feed("stderr", b"err\n")
    log.close()  # the stream ended mid-line: what is left is a full line
    assert entries(tmp_path / "c.log") == [("stdout", "F", "one"), ("stdout", "F", "two"),
                                           ("stderr", "F", "err"), ("stdout", "F", "three")]


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
