"""One-time tokens for streaming URLs, as kubelet's streaming request cache has them.

An Exec/Attach/PortForward RPC stores its (validated) request under a random
token and returns a URL carrying it; the first HTTP request with that token
takes it out (used or not), and a token not taken within TTL seconds is gone.
At most MAX_IN_FLIGHT requests wait at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict

TTL = 60.0
MAX_IN_FLIGHT = 1000


class TooManyRequests(Exception):
    pass


class RequestCache:
    def __init__(self, ttl: float = TTL, max_in_flight: int = MAX_IN_FLIGHT,
                 clock=time.monotonic):
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, str, object]] = OrderedDict()

    def insert(self, kind: str, request) -> str:
        with self._lock:
            self._expire()
            if len(self._entries) >= self.max_in_flight:
                raise TooManyRequests(f"{len(self._entries)} streaming requests are waiting "
                                      "to be used; try again later")
            token = secrets.token_urlsafe(18)
            self._entries[token] = (self._clock() + self.ttl, kind, request)
            return token

    def consume(self, token: str) -> tuple[str, object] | None:
        """(kind, request) for a live token, once; None for an unknown or expired one."""
        with self._lock:
            entry = self._entries.pop(token, None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1], entry[2]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, (deadline, _, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[token]
