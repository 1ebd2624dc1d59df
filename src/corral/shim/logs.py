"""Container logs in the CRI format kubelet reads.

    2016-10-06T00:17:09.669794202Z stdout F a whole line
    2016-10-06T00:17:09.669794202Z stderr P the first 16 KiB of a longer line

Each line is tagged F (full: a newline ended it) or P (partial: no newline
follows).  The content is the container's bytes as they came (\r, NUL and
invalid UTF-8 included); only the newline is dropped, and readers
(kubelet, crictl, `corral logs`) put it back after an F entry.  A line
longer than MAX_LINE is cut into P entries.  What is left when a stream
ends had no newline, so it is written as P too: the output reassembles
byte for byte.  `reopen()` serves ReopenContainerLog: kubelet renames the
file when rotating and asks for a new one at the same path.
"""

from __future__ import annotations

import os
import time

MAX_LINE = 16 << 10  # containerd's default max_container_log_line_size


def timestamp(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


class CriLog:
    def __init__(self, path: str):
        self.path = path
        self.fd = -1
        self.pending = {"stdout": bytearray(), "stderr": bytearray()}
        self.reopen()

    def reopen(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        if self.path:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                              0o640)

    def close(self) -> None:
        for stream in self.pending:
            self.end(stream)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def feed(self, stream: str, data: bytes) -> None:
        buffer = self.pending[stream]
        buffer += data
        entries, start, now = [], 0, timestamp()
        while True:
            newline = buffer.find(b"\n", start, start + MAX_LINE + 1)
            if newline >= 0:
                entries.append(_entry(now, stream, "F", buffer[start:newline]))
                start = newline + 1
            elif len(buffer) - start > MAX_LINE:
                entries.append(_entry(now, stream, "P", buffer[start:start + MAX_LINE]))
                start += MAX_LINE
            else:
                break
        del buffer[:start]
        self._write(entries)

    def end(self, stream: str) -> None:
        """The stream closed: what is left had no newline, a partial line."""
        buffer = self.pending[stream]
        if buffer:
            self._write([_entry(timestamp(), stream, "P", buffer)])
            buffer.clear()

    def _write(self, entries: list[bytes]) -> None:
        if entries and self.fd >= 0:
            data = b"".join(entries)
            while data:
                written = os.write(self.fd, data)
                data = data[written:]


def _entry(now: str, stream: str, tag: str, line) -> bytes:
    return b"%s %s %s %s\n" % (now.encode(), stream.encode(), tag.encode(), bytes(line))


def parse_line(line):
    """(timestamp, stream, tag, content) of one CRI log line, str or bytes as given.

    Only the line's own newline is removed: the content keeps every other byte."""
    newline, space = ("\n", " ") if isinstance(line, str) else (b"\n", b" ")
    parts = line.removesuffix(newline).split(space, 3)
    if len(parts) < 4:
        raise ValueError(f"not a CRI log line: {line[:80]!r}")
    return parts[0], parts[1], parts[2], parts[3]


def output(tag: bytes, content: bytes) -> bytes:
    """The bytes a log entry stands for: its content, and the newline a full line had."""
    return content + b"\n" if tag == b"F" else content
