"""`run` in the foreground with process.terminal and no --console-socket: as runc does,
the runtime takes the pty master itself and relays it to its own terminal.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import sys
import tempfile


class ForegroundTerminal:
    """A console socket of our own; then a relay between our stdio and the container's pty."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="corral-console-")
        self.path = os.path.join(self._dir, "console.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)

    def relay(self) -> None:
        """Receive the master, then copy both ways until the container closes its side."""
        conn, _ = self._listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        self.close()
        master = fds[0]
        saved = _raw_mode(0)
        _copy_window_size(master)
        signal.signal(signal.SIGWINCH, lambda _s, _f: _copy_window_size(master))
        try:
            _pump(master)
        finally:
            if saved is not None:
                import termios

                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            os.close(master)

    def close(self) -> None:
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _pump(master: int) -> None:
    sources = [0, master]
    while True:
        readable, _, _ = select.select(sources, [], [])
        if master in readable:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave fd is closed, the container is gone
                return
            if not data:
                return
            os.write(1, data)
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                sources.remove(0)  # our stdin ended; keep showing the container's output
                continue
            os.write(master, data)


def _raw_mode(fd: int):
    """Put our terminal in raw mode (the container's pty does the line editing)."""
    if not os.isatty(fd):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # TCSAFLUSH would drop what was typed ahead
    return saved


def _copy_window_size(master: int) -> None:
    if not sys.stdout.isatty():
        return
    import fcntl
    import termios

    size = fcntl.ioctl(1, termios.TIOCGWINSZ, bytes(8))
    fcntl.ioctl(master, termios.TIOCSWINSZ, size)
