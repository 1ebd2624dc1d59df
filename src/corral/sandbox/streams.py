"""What the streaming server relays: exec'd processes, attachments, pod ports.

An exec'd process is started by the pod's shim (its parent, which reaps it);
corrald hands the shim the process's stdio as file descriptors (SCM_RIGHTS,
see shim/streams.py) and keeps the other ends, so stream bytes never pass
through the shim.  A tty process makes its pty inside the container (runc's
console protocol) and the master comes back here.  The shim connection
stays open for the life of the stream: closing it (the client went away)
makes the shim kill a process still running, or detach an attachment.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import termios
import threading

from corral.sandbox.errors import FailedPrecondition, InvalidArgument, SandboxError
from corral.shim.protocol import ShimError, decode_frames, encode

PIPE_SIZE = 1 << 20  # an attachment whose pipe fills is detached by the shim: room for bursts
CONNECT_TIMEOUT = 10.0


class ShimStream:
    """A connection to a pod's shim whose requests and replies carry file descriptors."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise SandboxError(f"shim unreachable: {e}") from None
        self._buffer = bytearray()

    def send(self, op: str, fds: list[int] = (), **arguments) -> None:
        data = encode({"op": op, **arguments})
        if fds:
            data = data[socket.send_fds(self.sock, [data], list(fds)):]
        self.sock.sendall(data)

    def receive(self) -> tuple[dict, list[int]]:
        """The next reply and the fds that came with it; a failure is a ShimError."""
        fds: list[int] = []
        try:
            while True:
                frames = decode_frames(self._buffer)
                if frames:
                    reply = frames[0]
                    break
                data, more, _, _ = socket.recv_fds(self.sock, 1 << 16, 4,
                                                   socket.MSG_CMSG_CLOEXEC)
                fds += more
                if not data:
                    raise ShimError("failed", "the shim closed the connection")
                self._buffer += data
        except BaseException:
            _close_all(fds)
            raise
        if not reply.get("ok"):
            _close_all(fds)
            raise ShimError(reply.get("kind", "failed"), reply.get("error", "shim error"))
        return reply, fds

    def call(self, op: str, fds: list[int] = (), **arguments) -> tuple[dict, list[int]]:
        self.send(op, fds, **arguments)
        return self.receive()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Stdio:
    """The streams of an exec'd process or an attachment, seen from corrald.

    stdin      fd to write the client's input to (None: no input)
    outputs    "stdout"/"stderr" → fd to read; all of them reach EOF when it ends
    terminal   the pty master, for resizes (a tty), else None
    """

    def __init__(self, shim: ShimStream, stdin: int | None, outputs: dict[str, int],
                 terminal: int | None = None):
        self.shim = shim
        self.stdin = stdin
        self.outputs = outputs
        self.terminal = terminal
        self._closed = False
        self._stdin_lock = threading.Lock()  # close() waits for a write in progress
        if stdin is not None:
            os.set_blocking(stdin, False)  # a write waits in poll(), so close() can stop it

    def write_stdin(self, data: bytes, client: int | None = None) -> None:
        """Blocks while the process does not read, unless this is closed or the `client`
        socket hangs up meanwhile (then the data is dropped)."""
        with self._stdin_lock:
            if self.stdin is not None and not self._closed:
                write_all(self.stdin, data, stop=lambda: self._closed, hangup=client)

    def close_stdin(self) -> None:
        with self._stdin_lock:
            if self.stdin is not None and self.stdin != self.terminal:
                os.close(self.stdin)
            self.stdin = None

    def resize(self, width: int, height: int) -> None:
        if self.terminal is not None and width > 0 and height > 0:
            size = struct.pack("HHHH", min(height, 0xFFFF), min(width, 0xFFFF), 0, 0)
            fcntl.ioctl(self.terminal, termios.TIOCSWINSZ, size)

    def exit_code(self) -> int | None:
        """For an exec, once the shim socket is readable: the exit code (None: unknown)."""
        try:
            reply, fds = self.shim.receive()
        except (ShimError, OSError):
            return None
        _close_all(fds)
        return reply.get("exit_code")

    def close(self) -> None:
        """Let go of everything; a process still running is killed by its shim."""
        if self._closed:
            return
        self._closed = True  # a stdin write in progress gives up within a second
        self.close_stdin()
        _close_all({*self.outputs.values(), *([self.terminal] if self.terminal is not None
                                             else [])})
        self.outputs = {}
        self.shim.close()


def write_all(fd: int, data: bytes, stop=lambda: False, hangup: int | None = None) -> None:
    """Write everything to a non-blocking fd, waiting while it is full (a process that does
    not read its input), unless `stop()` says to give up or the socket `hangup` hangs up."""
    view = memoryview(data)
    while view and not stop():
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if hangup is not None:
                poller.register(hangup, select.POLLRDHUP)
            if any(ready == hangup for ready, _ in poller.poll(1000)):
                return


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _running(ctx, container_id: str):
    record = ctx.containers.sync(ctx.containers.get(container_id))
    if record.state != "running":
        raise FailedPrecondition(f"container {record.id[:12]} is {record.state}, not running")
    return record


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size: the default size will do
    return read_end, write_end


def start_exec(ctx, container_id: str, cmd: list[str], *, tty: bool, stdin: bool,
               stdout: bool, stderr: bool, size: tuple[int, int] | None = None) -> Stdio:
    """Start `cmd` in the running container; its stdio for the streaming server.  A tty
    starts with `size` (width, height) if known."""
    from corral.sandbox.ocispec import exec_process

    if not cmd:
        raise InvalidArgument("exec: cmd is empty")
    record = _running(ctx, container_id)
    bundle = os.path.join(ctx.pods.paths(record.pod_id).containers, record.id)
    with open(os.path.join(bundle, "config.json")) as f:
        process = exec_process(json.load(f)["process"], list(cmd), tty=tty)
    if tty and size and all(size):
        process["consoleSize"] = {"width": size[0], "height": size[1]}
    shim = ShimStream(ctx.pods.paths(record.pod_id).shim_socket)
    try:
        if tty:
            stdio = _start_tty(shim, record.id, process, stdin)
        else:
            stdio = _start_piped(shim, record.id, process, stdin, stdout, stderr)
        shim.send("wait_exec")  # answered when the process is reaped
        shim.sock.settimeout(None)
        return stdio
    except ShimError as e:
        shim.close()
        raise SandboxError(f"exec in container {record.id[:12]}: {e}") from None
    except BaseException:
        shim.close()
        raise


def _start_tty(shim: ShimStream, container_id: str, process: dict, stdin: bool) -> Stdio:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with theirs:
            shim.call("exec", [theirs.fileno()], id=container_id, process=process, tty=True)
        mine.settimeout(CONNECT_TIMEOUT)
        _, fds, _, _ = socket.recv_fds(mine, 16, 1, socket.MSG_CMSG_CLOEXEC)
    finally:
        mine.close()
    if not fds:
        raise SandboxError("exec: the process's terminal did not arrive")
    master = fds[0]
    return Stdio(shim, master if stdin else None, {"stdout": master}, terminal=master)


def _start_piped(shim: ShimStream, container_id: str, process: dict, stdin: bool,
                 stdout: bool, stderr: bool) -> Stdio:
    theirs, names, ours = [], [], {}
    try:
        if stdin:
            read_end, ours["stdin"] = os.pipe2(os.O_CLOEXEC)
            theirs.append(read_end)
            names.append("stdin")
        for name, wanted in (("stdout", stdout), ("stderr", stderr)):
            if wanted:
                ours[name], write_end = _pipe()
                theirs.append(write_end)
                names.append(name)
        shim.call("exec", theirs, id=container_id, process=process, stdio=names)
    except BaseException:
        _close_all(ours.values())
        raise
    finally:
        _close_all(theirs)
    return Stdio(shim, ours.pop("stdin", None), ours)


def attach(ctx, container_id: str, *, stdin: bool) -> Stdio:
    """Attach to the running container's main process: its output from now on (the CRI
    log still gets all of it), and its stdin or terminal if it has one."""
    from corral.sandbox.containers import container_config

    record = _running(ctx, container_id)
    config = container_config(record)
    shim = ShimStream(ctx.pods.paths(record.pod_id).shim_socket)
    names = ["stdout"] if config.tty else ["stdout", "stderr"]
    ours, theirs = {}, []
    try:
        for name in names:
            ours[name], write_end = _pipe()
            theirs.append(write_end)
        # a tty's master always comes: resizes go to it even when there is no input
        reply, fds = shim.call("attach", theirs, id=record.id, outputs=names,
                               stdin=config.tty or (stdin and config.stdin), tty=config.tty)
        shim.sock.settimeout(None)
    except BaseException as e:
        _close_all(ours.values())
        shim.close()
        if isinstance(e, ShimError):
            raise SandboxError(f"attach to container {record.id[:12]}: {e}") from None
        raise
    finally:
        _close_all(theirs)
    given = fds[0] if fds else None
    if config.tty:
        return Stdio(shim, given if stdin and config.stdin else None, ours, terminal=given)
    return Stdio(shim, given, ours)


def connect_in_pod(ctx, pod_id: str, port: int) -> socket.socket:
    """A TCP connection to localhost:`port` in the pod's network namespace (127.0.0.1, then
    ::1), as containerd's port forwarding makes it."""
    from corral.network import netns

    pod = ctx.pods.get(pod_id)
    if pod.state != "ready":
        raise FailedPrecondition(f"pod sandbox {pod.id[:12]} is not ready")
    path = pod.pinned.get("net", "")
    targets = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))
    if not ctx.config.handler(pod.handler).features.local_port_forward:
        # A VM's or gVisor's network stack is its own: what listens there is reached at the
        # pod's IP, from this namespace (inside the pod's, the IP is the host side's, local).
        path, targets = "", ((socket.AF_INET6 if ":" in pod.ip else socket.AF_INET, pod.ip),)
    errors = []
    for family, host in targets:
        try:
            if path:
                with netns.entered(path):  # the socket stays in the pod's namespace
                    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            else:  # a host-network pod
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as e:
            errors.append(f"{host}: {e.strerror or e}")
            continue
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((host, port))
            sock.settimeout(None)
            return sock
        except OSError as e:
            sock.close()
            errors.append(f"{host}: {e.strerror or e}")
    raise OSError(f"connect to port {port} in pod {pod.id[:12]}: {'; '.join(errors)}")
