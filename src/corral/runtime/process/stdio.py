"""Giving a new process its standard streams: the fds a caller chose, or ours."""

from __future__ import annotations

import os


def adopt_stdio(stdio: tuple | None) -> None:
    """Make `stdio` (fds for 0, 1, 2) this process's standard streams.

    A shim creates containers in process and hands each its own pipes; the
    runtime CLI passes None, and the container inherits the caller's streams.
    dup2 clears close-on-exec, so the copies survive the container's execve
    while the originals (close-on-exec) do not.
    """
    if stdio is None:
        return
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
