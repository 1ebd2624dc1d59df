"""Whether a pod's shim lives, told without waking it.

corrald answers ContainerStatus and ListContainers (kubelet relists every
second) from its records and the exits each shim writes durably, so it
needs only to know that the shim still runs.  Asking over the socket would
wake every shim each second and, in CPython, the code a request runs
writes refcounts into pages the shim shares copy-on-write with its
siblings.  Instead each shim holds a POSIX record lock on `shim.lock` in
its directory for its whole life; corrald asks the kernel who holds it
(F_GETLK).  POSIX locks belong to the process, so the shim's children (a
container's init waiting to start, exec helpers) never keep the lock after
the shim dies, and the kernel drops it when the shim ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
import struct

LOCK_FILE = "shim.lock"
_FLOCK = struct.Struct("@hhqqi")  # struct flock: l_type, l_whence, l_start, l_len, l_pid


def hold(directory: str) -> int:
    """Take the shim's lock (an fd the shim keeps open, close-on-exec, until it ends)."""
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RuntimeError(f"another shim already serves {directory}") from None
    return fd


def holder(directory: str) -> int | None:
    """The PID of the live shim of `directory`, or None if none holds its lock.

    Raises FileNotFoundError when there is no lock file (a shim too old to take one)."""
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    try:
        query = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else pid
