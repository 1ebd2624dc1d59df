"""`run` or `exec` in the foreground with process.terminal and no --console-socket: as
runc does, the runtime takes the pty master itself and relays it to the caller's terminal.

The caller's terminal (the "host console") is the first of stderr, stdout and stdin
that is a terminal, else the controlling terminal (/dev/tty); without one the command
fails before anything is created.  The host console is put in raw mode (the
container's pty does the line editing) and its window size follows the container's.
The relay copies stdin to the pty and the pty to stdout, until the process exits.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import tempfile

from corral.runtime.errors import RuntimeFailure


class NoTerminal(RuntimeFailure):
    """A terminal was asked for, in the foreground, but the caller has none."""


class ForegroundTerminal:
    """A console socket of our own; then a relay between our stdio and the container's pty."""

    def __init__(self) -> None:
        self._host, self._host_opened = _host_console()
        self._master: int | None = None
        self._saved = None  # the caller's terminal settings, while it is raw
        self._dir = tempfile.mkdtemp(prefix="corral-console-")
        self.path = os.path.join(self._dir, "console.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)

    def window_size(self) -> tuple[int, int] | None:
        """The caller's terminal's (rows, columns), for a process that starts at once."""
        import fcntl
        import termios

        try:
            packed = fcntl.ioctl(self._host, termios.TIOCGWINSZ, bytes(8))
        except OSError:
            return None
        rows, cols = struct.unpack("HH", packed[:4])  # struct winsize, native order
        return (rows, cols) if rows and cols else None

    def attach(self) -> None:
        """Receive the master and set it up: raw caller's terminal, its window size."""
        conn, _ = self._listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        self.close()
        self._master = master = fds[0]
        _clear_onlcr(master)  # as runc: "\n" reaches a captured stdout without "\r"
        self._saved = _raw_mode(self._host)
        _copy_window_size(self._host, master)
        signal.signal(signal.SIGWINCH, lambda _s, _f: _copy_window_size(self._host, master))

    def relay(self, pid: int | None = None) -> None:
        """Copy both ways until `pid` exits (its last output drained) or every holder of
        the pty's other end has closed it; then give the caller's terminal back."""
        if self._master is None:
            self.attach()
        exited = _pidfd(pid)
        try:
            _pump(self._master, exited)
        finally:
            if exited is not None:
                os.close(exited)
            self.detach()

    def detach(self) -> None:
        """The caller's terminal as it was; our end of the pty closed."""
        if self._master is None:
            return
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._host, termios.TCSADRAIN, self._saved)
        os.close(self._master)
        self._master = None
        self._close_host()

    def close(self) -> None:
        """The socket only; called by relay() once it has the master, or on failure."""
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def abandon(self) -> None:
        """Nothing will be relayed (the container failed): let go of everything."""
        self.close()
        self.detach()
        self._close_host()

    def _close_host(self) -> None:
        if self._host_opened:
            os.close(self._host)
            self._host_opened = False


def _host_console() -> tuple[int, bool]:
    """The caller's terminal: (fd, whether we opened it)."""
    for fd in (2, 1, 0):
        if os.isatty(fd):
            return fd, False
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC), True
    except OSError as e:
        raise NoTerminal(f"open /dev/tty: {(e.strerror or str(e)).lower()}") from None


def _pidfd(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # already gone, or no pidfds: relay to EOF
        return None


def _pump(master: int, exited: int | None) -> None:
    sources = [0, master] + ([exited] if exited is not None else [])
    while True:
        readable, _, _ = select.select(sources, [], [])
        if master in readable and not _copy_out(master):
            return
        if exited is not None and exited in readable:
            while select.select([master], [], [], 0)[0] and _copy_out(master):
                pass  # what the process wrote before it exited
            return
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                sources.remove(0)  # our stdin ended; keep showing the container's output
                continue
            os.write(master, data)


def _copy_out(master: int) -> bool:
    """One read from the pty to stdout; False once the pty is closed."""
    try:
        data = os.read(master, 65536)
    except OSError:  # EIO: every slave fd is closed
        return False
    if not data:
        return False
    while data:
        data = data[os.write(1, data):]
    return True


def _raw_mode(fd: int):
    import termios
    import tty

    try:
        saved = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)  # TCSAFLUSH would drop what was typed ahead
    except termios.error:
        return None
    return saved


def _clear_onlcr(master: int) -> None:
    import termios

    attrs = termios.tcgetattr(master)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(master, termios.TCSANOW, attrs)


def _copy_window_size(host: int, master: int) -> None:
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(host, termios.TIOCGWINSZ, bytes(8))
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    except OSError:
        pass
