"""process.terminal: a pty made inside the container, its master sent over --console-socket.

This is runc's protocol, which containerd and podman speak: the runtime
connects to the caller's Unix socket, the container's process opens a pty
from the container's own devpts (/dev/ptmx), makes the slave its
controlling terminal and stdio, and sends the master with SCM_RIGHTS.

Only built-in modules (`_socket`, `fcntl`) and `termios`, imported here
before pivot_root: the parent imports this module before it forks when a
terminal is asked for, so the container side finds it loaded.
"""

from __future__ import annotations

import _socket
import fcntl
import os
import sys
import termios

from corral.runtime.errors import ConfigInvalid


def connect(path: str) -> int:
    """Connect to the console socket; the fd, inherited by the container's process."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise ConfigInvalid(f"--console-socket {path}: cannot connect: {e.strerror}") from None
    fd = sock.detach()
    os.set_inheritable(fd, False)  # the container's program must not inherit it
    return fd


def take_terminal(console_fd: int, size: tuple[int, int] | None, uid: int) -> None:
    """In the container's process (a session leader): a new pty as its terminal and stdio."""
    master, slave = os.openpty()
    try:
        # The user's, in the group devpts gave it (gid=5, tty, in the default
        # mount options), as runc leaves it.
        os.fchown(slave, uid, -1)
        if size and all(size):
            rows, cols = size
            fcntl.ioctl(slave, termios.TIOCSWINSZ, _u16(rows) + _u16(cols) + bytes(4))
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for stdio in (0, 1, 2):
            os.dup2(slave, stdio)
        sock = _socket.socket(fileno=console_fd)
        try:
            sock.sendmsg([b"/dev/ptmx"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                           master.to_bytes(4, sys.byteorder, signed=True))])
        finally:
            sock.close()
    finally:
        os.close(master)
        if slave > 2:
            os.close(slave)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, sys.byteorder)
