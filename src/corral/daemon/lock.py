"""One corrald per root, per state dir and per socket: exclusive flocks taken before recovery.

Two daemons on one root would both "recover" each other's pods and pulls;
two on one socket would take the socket from each other (and the one that
exits last would unlink the other's).  So corrald holds, for its whole
life, an flock on `<root>/corrald.lock`, `<state>/corrald.lock` and
`<socket>.lock`, each holding its PID for the message a second daemon
prints.  flock locks belong to the open file, which is close-on-exec, so
no child (the zygote, CNI plugins) keeps them; the kernel drops them when
corrald ends, however it ends.  Lock files are never removed: unlinking
one while another process opens it would let two daemons lock two files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

LOCK_NAME = "corrald.lock"


class DaemonLocked(Exception):
    """Another corrald serves this root, state dir or socket."""


def lock_paths(root: str, state: str, socket_path: str) -> list[tuple[str, str]]:
    """(what, lock file) for each thing one daemon must own alone."""
    paths = [("root", os.path.join(root, LOCK_NAME)), ("state dir", os.path.join(state, LOCK_NAME)),
             ("socket", socket_path + ".lock")]
    unique, seen = [], set()
    for what, path in paths:
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append((what, path))
    return unique


def hold_daemon_locks(root: str, state: str, socket_path: str) -> list[int]:
    """Lock root, state and socket for this process (the fds stay open for its life).

    Raises DaemonLocked, naming the lock and its holder's PID, if another daemon has one."""
    held: list[int] = []
    try:
        for what, path in lock_paths(root, state, socket_path):
            os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
            held.append(_lock(what, path))
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


def _lock(what: str, path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_pid(fd)
        os.close(fd)
        by = f"pid {holder}" if holder else "another process"
        raise DaemonLocked(f"another corrald ({by}) serves this {what}: it holds {path}") \
            from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def claim_socket(path: str) -> None:
    """Remove a stale socket file before listening there; never one something answers on
    (a daemon too old to take the socket's lock, or another program)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOTSOCK):
            raise
    else:
        raise DaemonLocked(f"{path} is in use: something else listens on it")
    finally:
        probe.close()
    os.unlink(path)
