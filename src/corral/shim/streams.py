"""The shim's side of streaming exec and attach (corrald's streaming server is the other).

corrald passes file descriptors with the request (SCM_RIGHTS), so no byte of a
stream goes through the shim's loop except what it already reads (container
output):

    exec         fds: the exec'd process's stdio (pipe ends; /dev/null for any not
                 given), or, for a tty, one socket the pty master goes back on.
                 {"op": "exec", "id", "process", "stdio": ["stdin", "stdout",
                 "stderr"] (those given, in fd order) | "tty": true} → {"pid"}
    wait_exec    → {"exit_code"} once the process is reaped (answered then)
    attach       fds: pipe write ends for the container's output, named by
                 "outputs"; → {"stdin": bool} with the container's stdin
                 writer (or, for a tty, its pty master) as an fd, if asked and kept

A streaming exec or attach lives as long as its connection: when corrald
drops it (the client went away), an exec'd process still running is
SIGKILLed (and reaped by the loop), an attachment is detached.  The exec'd
process is the shim's child like any other, so no zombie is left.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

from corral.shim.logs import CriLog
from corral.shim.protocol import ShimError


class ContainerIO(CriLog):
    """A container's CRI log, the outputs of clients attached to it, and its stdin.

    Output goes to attached pipes without blocking the shim: an attachment whose
    pipe is full (its client reads too slowly) is detached, its pipe closed."""

    def __init__(self, path: str, stdin_fd: int = -1, stdin_once: bool = False):
        super().__init__(path)
        self.stdin_fd = stdin_fd        # write end of the container's stdin pipe, kept for attach
        self.stdin_once = stdin_once
        self.attached: dict[object, dict[str, int]] = {}   # connection → stream → pipe fd
        # what feeds each stream: its pipe, and for a tty container the pty master as
        # stdout too (server.py adds it); a stream has ended when all of them have
        self.open_sources = {"stdout": 1, "stderr": 1}
        self.ended: set[str] = set()

    def feed(self, stream: str, data: bytes) -> None:
        super().feed(stream, data)
        for owner, outputs in list(self.attached.items()):
            fd = outputs.get(stream)
            if fd is not None and not _write_all_now(fd, data):
                self.detach(owner)

    def end(self, stream: str) -> None:
        super().end(stream)
        self.open_sources[stream] -= 1
        if self.open_sources[stream] > 0 or stream in self.ended:
            return
        self.ended.add(stream)
        for outputs in self.attached.values():
            fd = outputs.pop(stream, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        super().close()
        self.ended.update(self.open_sources)
        for owner in list(self.attached):
            self.detach(owner)
        if self.stdin_fd >= 0:
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    def attach(self, owner, outputs: dict[str, int]) -> None:
        for stream, fd in list(outputs.items()):
            os.set_blocking(fd, False)
            if stream in self.ended:  # nothing more will come: the client sees the end now
                os.close(outputs.pop(stream))
        self.attached[owner] = outputs

    def detach(self, owner) -> None:
        for fd in self.attached.pop(owner, {}).values():
            os.close(fd)

    def stdin_for_attach(self) -> int | None:
        """An fd writing to the container's stdin, for one attachment; None if there is none.
        With stdin_once the first attachment takes the only writer: when it is done, the
        container reads EOF, and later attachments get no stdin."""
        if self.stdin_fd < 0:
            return None
        if self.stdin_once:
            fd, self.stdin_fd = self.stdin_fd, -1
            return fd
        return os.dup(self.stdin_fd)


def _write_all_now(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF):
                return False
            raise
        view = view[written:]
    return True


class StreamExec:
    """An exec'd process whose stdio corrald streams; its connection owns it."""

    deadline = None  # the loop's exec deadlines: a streaming exec has none

    def __init__(self, conn, container, pid: int):
        self.conn = conn
        self.container = container
        self.pid = pid
        self.exit_code: int | None = None
        self.waiting = False


class Attachment:
    def __init__(self, io: ContainerIO):
        self.io = io


class StreamOps:
    """Operations of the shim (server.Shim) for corrald's streaming server."""

    def op_exec(self, conn, request) -> dict:
        fds, conn.fds = conn.fds, []
        try:
            managed = self._stream_target(conn, request)
            container = managed.container
            if request.get("tty"):
                if len(fds) != 1:
                    raise ShimError("invalid", "a tty exec takes one socket for its terminal")
                self._console_listener({"process": {"terminal": True}})  # refused if none
                pid = _exec_with_terminal(container, request["process"], fds[0])
            else:
                stdio = _stdio(request.get("stdio", []), fds)
                try:
                    pid = container.exec(request["process"], stdio)
                finally:
                    for fd in stdio:
                        if fd not in fds:
                            os.close(fd)
        finally:
            for fd in fds:
                os.close(fd)
        job = StreamExec(conn, container, pid)
        self.execs[pid] = job
        conn.stream = job
        return {"pid": pid}

    def _stream_target(self, conn, request):
        """The running container a new stream on this connection is for."""
        managed = self._managed(request)
        if managed.exit is not None:
            raise ShimError("invalid", f"container {managed.id} is not running")
        if conn.stream is not None:
            raise ShimError("invalid", "this connection already streams")
        return managed

    def op_wait_exec(self, conn, request) -> dict | None:
        job = conn.stream
        if not isinstance(job, StreamExec):
            raise ShimError("invalid", "no streaming exec on this connection")
        if job.exit_code is not None:
            return {"exit_code": job.exit_code}
        job.waiting = True
        return None

    def op_attach(self, conn, request) -> dict:
        fds, conn.fds = conn.fds, []
        try:
            managed = self._stream_target(conn, request)
            names = request.get("outputs", [])
            if len(names) != len(fds) or not set(names) <= {"stdout", "stderr"}:
                raise ShimError("invalid", "attach: outputs must name the fds passed")
            io = managed.log
            stdin = None
            if request.get("stdin"):  # a tty's input is its pty master, not the stdin pipe
                stdin = self._console_of(managed) if request.get("tty") else \
                    io.stdin_for_attach()
            io.attach(conn, dict(zip(names, fds, strict=True)))
            fds = []
        finally:
            for fd in fds:
                os.close(fd)
        conn.stream = Attachment(io)
        if stdin is not None:
            conn.reply_fds.append(stdin)
        return {"stdin": stdin is not None}

    def _console_of(self, managed) -> int | None:
        """A dup of a tty container's pty master (its stdin and where resizes go)."""
        for fd, name in managed.streams.items():
            if name == "stdout" and _is_tty(fd):
                return os.dup(fd)
        return None

    def _finish_stream_exec(self, job: StreamExec, code: int) -> None:
        job.exit_code = code
        if job.waiting and job.conn is not None:
            job.waiting = False
            self._reply(job.conn, {"exit_code": code})

    def _stream_dropped(self, conn) -> None:
        """corrald let go of a streaming exec or attach: the client is gone."""
        job, conn.stream = conn.stream, None
        if isinstance(job, StreamExec):
            job.conn = None
            if job.exit_code is None:  # not reaped yet: the pid is still this process
                job.container.kill_exec(job.pid, signal.SIGKILL)
        elif isinstance(job, Attachment):
            job.io.detach(conn)


def _stdio(names: list, fds: list[int]) -> tuple[int, int, int]:
    if len(names) != len(fds) or len(set(names)) != len(names) or \
            not set(names) <= {"stdin", "stdout", "stderr"}:
        raise ShimError("invalid", "exec: stdio must name the fds passed")
    given = dict(zip(names, fds, strict=True))
    stdin = given.get("stdin")
    if stdin is None:
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    outputs = []
    for name in ("stdout", "stderr"):
        fd = given.get(name)
        outputs.append(fd if fd is not None else
                       os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
    return stdin, outputs[0], outputs[1]


def _exec_with_terminal(container, process: dict, back_fd: int) -> int:
    """Exec with a pty the process makes in the container (runc's console socket
    protocol), and pass its master to corrald on `back_fd`.  The master comes back
    while the exec is being made, so the loop waits for it here (at most 10 s)."""
    from corral.shim.server import console_listener

    listener = console_listener()
    back = socket.socket(fileno=os.dup(back_fd))
    pid = 0
    try:
        address = listener.getsockname()
        pid = container.exec(process, None, console_socket=address.decode()
                             if isinstance(address, bytes) else address)
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            _, masters, _, _ = socket.recv_fds(conn, 64, 1)
        if not masters:
            raise OSError(errno.EIO, "the exec'd process sent no terminal")
        try:
            socket.send_fds(back, [b"T"], masters)
        finally:
            for fd in masters:
                os.close(fd)
        return pid
    except BaseException:
        if pid:
            container.kill_exec(pid, signal.SIGKILL)  # the loop reaps it
        raise
    finally:
        listener.close()
        back.close()


def _is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
