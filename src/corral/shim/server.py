"""The shim: one per pod, the parent of its containers, alive whatever corrald does.

It is one single-threaded event loop (a selector), because it forks: a
container's init and exec'd processes are born here, with corral.runtime
in this process — no interpreter start per container.  It is a child
subreaper, so every process that ends in the pod is reaped here (no
zombies), and the container inits — orphaned by design when their
bootstrap exits — become its children.

The loop watches:
    the control socket   requests from corrald (protocol.py)
    a signal wakeup fd   SIGCHLD: reap, record exits, answer waiters
    container pipes      stdout/stderr into CRI-format logs (logs.py)
    deadlines            `wait` and `exec_sync` timeouts

What runs a container is the pod's runtime handler (handlers/: native,
oci, runsc, vm), chosen when the pod starts; this module keeps what all of
them share: stdio, CRI logs, exit records, waiters and deadlines.

A pod whose containers share a PID namespace has an init (podinit.py), a
child of this shim like the containers, started and stopped on request.

An exit is written to `exits/<id>.json` (temp file, fsync, rename) before
anyone is told of it, so it survives the shim, corrald and the machine.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import secrets
import selectors
import signal
import socket
import sys
import time

from corral.runtime.errors import (
    ConfigInvalid,
    ContainerExists,
    ContainerNotFound,
    InvalidID,
    InvalidState,
    RuntimeFailure,
)
from corral.shim import handlers, liveness, podinit
from corral.shim.handlers.base import HandledContainer, Handler, Unsupported
from corral.shim.logs import CriLog
from corral.shim.proctitle import retitle
from corral.shim.protocol import MAX_FRAME, ShimError, decode_frames, encode
from corral.shim.streams import ContainerIO, StreamExec, StreamOps

OUTPUT_LIMIT = 16 << 20  # per stream of an exec_sync, as the CRI's ExecSync allows
POD_INIT_GRACE = 5.0     # for the pod's init to end on SIGTERM, before SIGKILL
POD_INIT_EXIT = "pod-init"  # the init's exit record, exits/pod-init.json (no container ID)
SANDBOX_EXIT = "pod-sandbox"  # a handler's sandbox (a VM, gVisor's) ended unasked
_READ = 1 << 16


def exit_code(status: int) -> int:
    """A wait status as a shell shows it: the code, or 128 + the killing signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def write_json_atomically(path: str, value: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.busy = False  # a request is being answered (maybe later: wait, exec_sync)
        self.fds: list[int] = []        # passed with the request (SCM_RIGHTS): streams.py
        self.reply_fds: list[int] = []  # to pass with the reply
        self.stream = None              # the streaming exec or attach this connection owns


class Managed:
    """A container this shim parents."""

    def __init__(self, container: HandledContainer, log: CriLog, kill_all_on_exit: bool = False):
        self.container = container
        self.log = log
        # Without a PID namespace of its own, the end of its init does not end the rest
        # of the container: it is killed through the cgroup (as containerd's shim does).
        self.kill_all_on_exit = kill_all_on_exit
        self.streams: dict[int, str] = {}  # read end of a pipe → "stdout" | "stderr"
        self.exit: dict | None = None
        self.started_at = 0
        self.waiters: list[tuple[Connection, float | None]] = []

    @property
    def id(self) -> str:
        return self.container.id


class ExecJob:
    def __init__(self, conn: Connection, container: HandledContainer, pid: int,
                 deadline: float | None):
        self.conn = conn
        self.container = container
        self.pid = pid  # the key its end is known by: its host PID, or the handler's key
        self.deadline = deadline
        self.streams: dict[int, str] = {}
        self.output = {"stdout": bytearray(), "stderr": bytearray()}
        self.timed_out = False


class Shim(StreamOps):
    def __init__(self, pod_id: str, directory: str, socket_path: str | None = None):
        self.pod_id = pod_id
        self.dir = directory
        self.exits_dir = os.path.join(directory, "exits")
        self.socket_path = socket_path or os.path.join(directory, "shim.sock")
        self.selector = selectors.DefaultSelector()
        self.containers: dict[str, Managed] = {}
        self.execs: dict[int, ExecJob] = {}
        self.pod_init_pid = 0  # the pod's init (podinit.py), while it runs
        self.handler: Handler | None = None  # chosen by start_pod (or the first create)
        self.prepared: dict | None = None  # a pooled shim's runtime, until start_pod
        self.sandbox_stopping = False  # stop_pod asked: the sandbox's end is no failure
        self.running = True
        os.makedirs(self.exits_dir, exist_ok=True)
        self._life_lock = liveness.hold(directory)  # held until this process ends

    # --- the loop ------------------------------------------------------------------------------
    def listen(self) -> None:
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        wake_read, wake_write = socket.socketpair()
        for end in (wake_read, wake_write):
            end.setblocking(False)
            os.set_inheritable(end.fileno(), False)
        self._wake = (wake_read, wake_write)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        signal.signal(signal.SIGTERM, lambda *_: None)  # only `shutdown` ends a shim
        self.selector.register(wake_read, selectors.EVENT_READ, self._on_signal)

    def serve(self) -> None:
        while self.running:
            timeout = self._next_deadline()
            for key, _ in self.selector.select(timeout):
                key.data(key.fileobj)
            self._expire(time.monotonic())
            self._reap()
        self._close()

    def _next_deadline(self) -> float | None:
        deadlines = [d for m in self.containers.values() for _, d in m.waiters if d is not None]
        deadlines += [job.deadline for job in self.execs.values() if job.deadline is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _on_signal(self, wake: socket.socket) -> None:
        try:
            while wake.recv(256):
                pass
        except BlockingIOError:
            pass

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Connection(sock)
        self.selector.register(sock, selectors.EVENT_READ, lambda _: self._on_readable(conn))

    def _on_readable(self, conn: Connection) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn.sock, _READ, 4, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        conn.fds += fds
        if not data:
            self._drop(conn)
            return
        conn.buffer += data
        if len(conn.buffer) > MAX_FRAME + 4:
            self._drop(conn)
            return
        try:
            requests = decode_frames(conn.buffer)
        except ShimError as e:
            self._reply(conn, {"ok": False, "kind": e.kind, "error": str(e)})
            self._drop(conn)
            return
        for request in requests:
            self._dispatch(conn, request)

    def _drop(self, conn: Connection) -> None:
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        for managed in self.containers.values():
            managed.waiters = [(c, d) for c, d in managed.waiters if c is not conn]
        for fd in conn.fds + conn.reply_fds:
            os.close(fd)
        conn.fds, conn.reply_fds = [], []
        self._stream_dropped(conn)

    def _reply(self, conn: Connection, reply: dict) -> None:
        conn.busy = False
        data = encode(reply if "ok" in reply else {"ok": True, **reply})
        fds, conn.reply_fds = conn.reply_fds, []
        try:
            conn.sock.setblocking(True)
            if fds and reply.get("ok", True):
                data = data[socket.send_fds(conn.sock, [data], fds):]
            conn.sock.sendall(data)
            conn.sock.setblocking(False)
        except OSError:
            self._drop(conn)
        finally:
            for fd in fds:
                os.close(fd)

    def _dispatch(self, conn: Connection, request: dict) -> None:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        conn.busy = True
        try:
            if handler is None:
                raise ShimError("invalid", f"unknown operation {op!r}")
            reply = handler(conn, request)
        except ShimError as e:
            reply = {"ok": False, "kind": e.kind, "error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "kind": "invalid", "error": f"{op}: {e}"}
        except RuntimeFailure as e:
            reply = {"ok": False, "kind": _kind(e), "error": str(e)}
        except OSError as e:
            reply = {"ok": False, "kind": "failed", "error": f"{op}: {e}"}
        if reply is not None:  # None: answered later (wait, exec_sync)
            self._reply(conn, reply)
        for fd in conn.fds:  # passed, but not taken by the operation
            os.close(fd)
        conn.fds = []

    # --- children ------------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, exit_code(status))

    def _exited(self, pid: int, code: int) -> None:
        if pid == self.pod_init_pid:
            # The kernel has killed what ran in the pod's namespace; corrald reads the
            # record to report the pod NOTREADY if it did not ask for this.
            self.pod_init_pid = 0
            write_json_atomically(self._exit_path(POD_INIT_EXIT),
                                  {"exit_code": code, "finished_at": time.time_ns()})
            return
        job = self.execs.pop(pid, None)
        if job is not None:
            self._finish_exec(job, code)
            return
        for managed in self.containers.values():
            if managed.exit is None and managed.container.pid == pid:
                self._record_exit(managed, code)
                return
        if self.handler is not None:
            self.handler.reaped(pid, code)
        # anything else: an orphan of the pod, reaped so that it is no zombie

    def _record_exit(self, managed: Managed, code: int, reason: str = "") -> None:
        self._drain(managed.streams, managed.log.feed)
        if not reason and code == 137 and managed.container.oom_killed():
            reason = "OOMKilled"
        managed.exit = {"exit_code": code, "finished_at": time.time_ns(), "reason": reason}
        write_json_atomically(self._exit_path(managed.id), managed.exit)
        if managed.kill_all_on_exit:
            try:
                managed.container.kill(signal.SIGKILL, True)
            except (RuntimeFailure, OSError):
                pass  # nothing left, or its cgroup is gone
        for conn, _ in managed.waiters:
            self._reply(conn, {"exited": True, **managed.exit})
        managed.waiters.clear()

    def _drain(self, streams: dict[int, str], sink) -> None:
        """Read what the pipes hold now (the writer has exited; its data is in the pipe)."""
        for fd, name in list(streams.items()):
            while True:
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    data = b""  # a pty master: the container's side is closed
                if not data:
                    self._close_stream(fd, streams, name, sink)
                    break
                sink(name, data)

    def _close_stream(self, fd: int, streams: dict[int, str], name: str, sink) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)
        del streams[fd]
        end = getattr(sink, "__self__", None)
        if isinstance(end, CriLog):
            end.end(name)

    def _watch(self, fd: int, streams: dict[int, str], name: str, sink) -> None:
        os.set_blocking(fd, False)
        streams[fd] = name

        def readable(_fd):
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                data = b""  # a pty master whose slave side is closed: the end
            if data:
                sink(name, data)
            else:
                self._close_stream(fd, streams, name, sink)

        self.selector.register(fd, selectors.EVENT_READ, readable)

    def _expire(self, now: float) -> None:
        for managed in self.containers.values():
            expired = [(c, d) for c, d in managed.waiters if d is not None and d <= now]
            for conn, _ in expired:
                self._reply(conn, {"exited": False})
            managed.waiters = [w for w in managed.waiters if w not in expired]
        for job in list(self.execs.values()):
            if job.deadline is not None and job.deadline <= now and not job.timed_out:
                job.timed_out = True
                job.deadline = None
                job.container.kill_exec(job.pid, signal.SIGKILL)

    # --- operations ----------------------------------------------------------------------------
    def _in_helper(self, work):
        """in_helper, with this shim's own fds closed in the child: a container's init
        forked there must not keep the control socket listening after the shim dies (a
        client would connect and wait for an answer that never comes)."""
        own = [key.fd for key in self.selector.get_map().values()]
        own += [self._wake[1].fileno(), self._life_lock]
        return in_helper(work, close=own)

    # --- what the handler may ask of the shim (handlers/base.py ShimServices) ---------------
    def in_helper(self, work):
        return self._in_helper(work)

    def watch(self, fd: int, callback) -> None:
        self.selector.register(fd, selectors.EVENT_READ, lambda _: callback(fd))

    def watch_writable(self, fd: int, callback) -> None:
        def writable(_):
            self.unwatch(fd)
            callback(fd)

        self.selector.register(fd, selectors.EVENT_WRITE, writable)

    def unwatch(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def container_exited(self, container_id: str, code: int, reason: str = "") -> None:
        managed = self.containers.get(container_id)
        if managed is not None and managed.exit is None:
            self._record_exit(managed, code, reason)

    def sandbox_ended(self, code: int, reason: str) -> None:
        if self.sandbox_stopping:
            return
        # corrald reads the record and reports the pod NOTREADY, as a dead pause container
        write_json_atomically(self._exit_path(SANDBOX_EXIT),
                              {"exit_code": code, "reason": reason,
                               "finished_at": time.time_ns()})
        print(f"pod {self.pod_id}: its sandbox ended: {reason}", file=sys.stderr, flush=True)

    def exec_exited(self, key: int, code: int) -> None:
        job = self.execs.pop(key, None)
        if job is not None:
            self._finish_exec(job, code)

    def _handler(self, spec: dict | None) -> Handler:
        if self.handler is None:
            self.handler = handlers.make(spec or {"type": "native"}, self)
        return self.handler

    def _managed(self, request: dict) -> Managed:
        container_id = request.get("id")
        managed = self.containers.get(container_id) if isinstance(container_id, str) else None
        if managed is None:
            raise ShimError("not_found", f"container {container_id!r} not found in pod "
                            f"{self.pod_id}")
        return managed

    def _exit_path(self, container_id: str) -> str:
        return os.path.join(self.exits_dir, f"{container_id}.json")

    def op_ping(self, conn, request) -> dict:
        return {"pid": os.getpid(), "pod": self.pod_id}

    def op_prepare_sandbox(self, conn, request) -> dict:
        """A shim of corrald's warm pool: its handler's sandbox made before any pod (the
        `claim` and `start_pod` that follow give it to one)."""
        if self.handler is not None:
            raise ShimError("exists", f"pod {self.pod_id} has a runtime handler")
        handler = self._handler(request["runtime"])
        self.prepared = request["runtime"]
        try:
            return handler.prepare_sandbox()
        except BaseException:
            self.handler = self.prepared = None
            raise

    def op_claim(self, conn, request) -> dict:
        """This pooled shim is now pod `id`'s: corrald has renamed its directory to `dir`
        and its socket to `socket` (the open files, the lock and the listener follow)."""
        if self.prepared is None:
            raise ShimError("invalid", f"shim {self.pod_id} is not a pooled one")
        old_dir = self.dir
        self.pod_id = request["id"]
        self.dir = request["dir"]
        self.exits_dir = os.path.join(self.dir, "exits")
        self.socket_path = request["socket"]
        self.handler.relocate(old_dir, self.dir)
        retitle(f"corral.shim {self.pod_id}")
        return {"pid": os.getpid()}

    def op_start_pod(self, conn, request) -> dict:
        """The pod's runtime handler, and its sandbox if it has one (a VM, gVisor's); a
        pooled shim's prepared one if the runtime asked is the one it was prepared for."""
        prepared, self.prepared = self.prepared, None
        if self.handler is not None and prepared != request["runtime"]:
            raise ShimError("exists", f"pod {self.pod_id} has started")
        handler = self._handler(request["runtime"])
        try:
            os.unlink(self._exit_path(SANDBOX_EXIT))
        except FileNotFoundError:
            pass
        try:
            return handler.start_pod(request.get("pod") or {})
        except BaseException:
            self.handler = None
            raise

    def op_stop_pod(self, conn, request) -> dict:
        """End the sandbox (StopPodSandbox): its containers are stopped, their records kept."""
        if self.handler is not None:
            self.sandbox_stopping = True
            self.handler.stop_pod()
        return {}

    def op_create(self, conn, request) -> dict:
        container_id, bundle = request["id"], request["bundle"]
        if container_id in self.containers:
            raise ShimError("exists", f"container {container_id} already exists")
        handler = self._handler(request.get("runtime"))
        log = ContainerIO(request.get("log_path") or "", stdin_once=bool(request.get("stdin_once")))
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        if request.get("stdin"):  # CRI stdin: the write end is kept for attach (streams.py)
            null, log.stdin_fd = os.pipe2(os.O_CLOEXEC)
        else:
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        console = self._console_listener(config)
        if console:
            log.open_sources["stdout"] += 1  # the pty master will feed stdout too
        try:
            container = handler.create(container_id, bundle, (null, stdout_w, stderr_w),
                                       _address(console) if console else None)
        except BaseException:
            for fd in (stdout_r, stderr_r):
                os.close(fd)
            if console:
                console.close()
            log.close()
            raise
        finally:
            for fd in (null, stdout_w, stderr_w):
                os.close(fd)
        managed = self.containers[container_id] = Managed(container, log,
                                                          _shares_pid_namespace(config))
        self._watch(stdout_r, managed.streams, "stdout", log.feed)
        self._watch(stderr_r, managed.streams, "stderr", log.feed)
        if console:
            self.selector.register(console, selectors.EVENT_READ,
                                   lambda _: self._take_console(console, managed))
        return {"pid": container.pid}

    def _console_listener(self, config: dict) -> socket.socket | None:
        """For a tty container (CRI tty: process.terminal), a socket its pty master comes to.

        Abstract (no path): a pod's directory is too deep for a Unix socket path."""
        if not config.get("process", {}).get("terminal"):
            return None
        if not handlers.FEATURES[self.handler.spec.get("type", "native")].tty:
            raise Unsupported(f"runtime handler {self.handler.name} has no tty containers")
        return console_listener()

    def _take_console(self, listener: socket.socket, managed: Managed) -> None:
        """The container's pty master arrived: its output is the container's stdout."""
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        self.selector.unregister(listener)
        listener.close()
        with conn:
            conn.setblocking(True)
            _, fds, _, _ = socket.recv_fds(conn, 64, 1)
        if fds and managed.exit is None:
            self._watch(fds[0], managed.streams, "stdout", managed.log.feed)
        else:
            for fd in fds:
                os.close(fd)

    def op_start(self, conn, request) -> dict:
        managed = self._managed(request)
        managed.container.start()
        managed.started_at = time.time_ns()
        return {"pid": managed.container.pid, "started_at": managed.started_at}

    def op_kill(self, conn, request) -> dict:
        managed = self._managed(request)
        signum = int(request.get("signal", signal.SIGTERM))
        if managed.exit is None:
            try:
                managed.container.kill(signum, bool(request.get("all")))
            except RuntimeFailure:
                if managed.container.alive():
                    raise
        return {}

    def _state(self, managed: Managed) -> dict:
        if managed.exit is not None:
            status = "stopped"
        else:
            status = managed.container.status()
        return {"id": managed.id, "status": status, "pid": managed.container.pid,
                "started_at": managed.started_at, "exit": managed.exit}

    def op_state(self, conn, request) -> dict:
        return self._state(self._managed(request))

    def op_wait(self, conn, request) -> dict | None:
        managed = self._managed(request)
        if managed.exit is not None:
            return {"exited": True, **managed.exit}
        timeout = request.get("timeout")
        deadline = time.monotonic() + float(timeout) if timeout is not None else None
        managed.waiters.append((conn, deadline))
        return None

    def op_delete(self, conn, request) -> dict:
        managed = self._managed(request)
        if managed.exit is None and managed.container.alive():
            if not request.get("force"):
                raise ShimError("invalid", f"container {managed.id} is running")
            managed.container.kill(signal.SIGKILL, True)
            self._wait_for(managed, 10.0)
        managed.container.delete()
        if managed.exit is None:  # it never ran, or died unseen
            self._record_exit(managed, 255, "deleted")
        self._drain(managed.streams, managed.log.feed)
        for fd, name in list(managed.streams.items()):
            self._close_stream(fd, managed.streams, name, managed.log.feed)
        managed.log.close()
        for waiter, _ in managed.waiters:
            self._reply(waiter, {"exited": True, **managed.exit})
        del self.containers[managed.id]
        try:
            os.unlink(self._exit_path(managed.id))
        except FileNotFoundError:
            pass
        return {}

    def _wait_for(self, managed: Managed, timeout: float) -> None:
        """Block until the init is reaped (used by delete --force, after SIGKILL)."""
        pid = managed.container.pid
        if pid <= 0:
            return  # not the shim's child: the handler's delete ends it
        deadline = time.monotonic() + timeout
        while managed.exit is None and time.monotonic() < deadline:
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped:
                self._exited(reaped, exit_code(status))
            else:
                time.sleep(0.002)

    def op_reopen_log(self, conn, request) -> dict:
        managed = self._managed(request)
        managed.log.reopen()
        return {}

    def op_update(self, conn, request) -> dict:
        self._managed(request).container.update(request["resources"])
        return {}

    def op_stats(self, conn, request) -> dict:
        """runc's `events --stats` data of the container's cgroup."""
        managed = self._managed(request)
        if managed.exit is not None:
            raise ShimError("invalid", f"container {managed.id} is not running")
        return {"stats": managed.container.stats()}

    def op_exec_sync(self, conn, request) -> dict | None:
        managed = self._managed(request)
        if managed.exit is not None:
            raise ShimError("invalid", f"container {managed.id} is not running")
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = managed.container.exec(request["process"], (null, stdout_w, stderr_w))
        except BaseException:
            os.close(stdout_r)
            os.close(stderr_r)
            raise
        finally:
            for fd in (null, stdout_w, stderr_w):
                os.close(fd)
        timeout = request.get("timeout") or 0
        job = ExecJob(conn, managed.container, pid,
                      time.monotonic() + float(timeout) if timeout else None)
        self.execs[pid] = job
        self._watch(stdout_r, job.streams, "stdout", lambda n, d, j=job: _collect(j, n, d))
        self._watch(stderr_r, job.streams, "stderr", lambda n, d, j=job: _collect(j, n, d))
        return None

    def _finish_exec(self, job: ExecJob, code: int) -> None:
        if isinstance(job, StreamExec):
            self._finish_stream_exec(job, code)
            return
        self._drain(job.streams, lambda n, d: _collect(job, n, d))
        for fd, name in list(job.streams.items()):
            self._close_stream(fd, job.streams, name, None)
        if job.timed_out:
            self._reply(job.conn, {"ok": False, "kind": "timeout",
                                   "error": "command timed out and was killed"})
            return
        # base64: the output is bytes (CRI's ExecSyncResponse), which JSON cannot carry
        self._reply(job.conn, {"ok": True, "exit_code": code,
                               "stdout_base64": _base64(job.output["stdout"]),
                               "stderr_base64": _base64(job.output["stderr"])})

    def op_shutdown(self, conn, request) -> dict:
        live = [m.id for m in self.containers.values() if m.exit is None
                and m.container.alive()]
        if live and not request.get("force"):
            raise ShimError("invalid", f"pod {self.pod_id} still has running containers: "
                            f"{', '.join(live)}")
        for container_id in list(self.containers):
            self.op_delete(conn, {"id": container_id, "force": True})
        self._stop_init()
        if self.handler is not None:
            self.sandbox_stopping = True
            self.handler.stop_pod()
        self.running = False
        return {}

    def op_start_init(self, conn, request) -> dict:
        """The pod's init in a new PID namespace, pinned at `pin` (see podinit.py)."""
        if self.pod_init_pid:
            raise ShimError("exists", f"pod {self.pod_id} already has an init "
                            f"({self.pod_init_pid})")
        try:
            os.unlink(self._exit_path(POD_INIT_EXIT))  # a former init's (before a new shim)
        except FileNotFoundError:
            pass
        seccomp = request.get("seccomp")
        program = (base64.b64decode(seccomp["bpf"]), int(seccomp.get("flags", 0))) \
            if seccomp else None
        self.pod_init_pid = podinit.start(request["pin"], request.get("namespaces") or {},
                                          program, self.dir)
        return {"pid": self.pod_init_pid}

    def op_stop_init(self, conn, request) -> dict:
        self._stop_init()
        return {}

    def _stop_init(self) -> None:
        """SIGTERM the pod's init and wait for its end, reaping meanwhile: its exit waits
        until every process of its namespace is gone, container inits (our children)
        included.  SIGKILL after POD_INIT_GRACE; after twice that, it is left to the loop
        (a process of the namespace whose parent is not ours holds its exit up)."""
        if not self.pod_init_pid:
            return
        pid = self.pod_init_pid
        podinit.stop(pid)
        started = time.monotonic()
        killed = False
        while self.pod_init_pid:
            waited = time.monotonic() - started
            if waited > 2 * POD_INIT_GRACE:
                print(f"pod {self.pod_id}: its init {pid} has not ended", file=sys.stderr,
                      flush=True)
                return
            if waited > POD_INIT_GRACE and not killed:
                killed = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                reaped, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.pod_init_pid = 0
                return
            if reaped:
                self._exited(reaped, exit_code(status))
            else:
                time.sleep(0.002)


def _shares_pid_namespace(config: dict) -> bool:
    """The container joins a PID namespace (the pod's) or uses the host's."""
    namespaces = config.get("linux", {}).get("namespaces") or []
    pid = next((ns for ns in namespaces if ns.get("type") == "pid"), None)
    return pid is None or bool(pid.get("path"))


def console_listener() -> socket.socket:
    """A socket a pty master comes to (runc's console socket protocol), non-blocking.
    Abstract (no path): a pod's directory is too deep for a Unix socket path."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(f"\0corral-console-{os.getpid()}-{secrets.token_hex(8)}")
    listener.listen(1)
    listener.setblocking(False)
    return listener


def _address(sock: socket.socket) -> str:
    """A bound Unix socket's address as a str ("\\0…" for an abstract one)."""
    address = sock.getsockname()
    return address.decode() if isinstance(address, bytes) else address


def in_helper(work, close=()):
    """Run `work` in a short-lived child and return its (JSON) result or raise its error.

    Creating a container touches hundreds of objects, and in CPython touching is
    writing (reference counts): done here, it would turn ~2 MiB of the pages this
    shim shares with its zygote and sibling shims into private copies, per pod.
    Done in a child, those copies die with it.  The processes the child starts
    are orphaned when it exits and, this shim being a subreaper, become ours.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read_end)
            for fd in close:
                os.close(fd)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                reply = {"ok": True, "result": work()}
            except RuntimeFailure as e:
                reply = {"ok": False, "kind": _kind(e), "error": str(e)}
            except ShimError as e:
                reply = {"ok": False, "kind": e.kind, "error": str(e)}
            except (ValueError, KeyError, TypeError, OSError) as e:
                reply = {"ok": False, "kind": "failed", "error": str(e)}
            data = encode(reply)
            while data:
                data = data[os.write(write_end, data):]
        except BaseException:  # noqa: BLE001 - never return into the shim's loop
            status = 1
        os._exit(status)
    os.close(write_end)
    # One framed reply, not EOF: the container's init inherits the write end until execve.
    buffer, replies = bytearray(), []
    try:
        while not replies and (chunk := os.read(read_end, 1 << 16)):
            buffer += chunk
            replies = decode_frames(buffer)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not replies:
        raise ShimError("failed", "the helper process died without a reply")
    reply = replies[0]
    if not reply["ok"]:
        raise ShimError(reply["kind"], reply["error"])
    return reply["result"]


def _kind(error: RuntimeFailure) -> str:
    if isinstance(error, ContainerExists):
        return "exists"
    if isinstance(error, ContainerNotFound):
        return "not_found"
    if isinstance(error, (InvalidID, ConfigInvalid, InvalidState)):
        return "invalid"
    return "failed"


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _collect(job: ExecJob, name: str, data: bytes) -> None:
    buffer = job.output[name]
    room = OUTPUT_LIMIT - len(buffer)
    if room > 0:
        buffer += data[:room]


def recorded_exit(directory: str, container_id: str) -> dict | None:
    """A container's durable exit record, read without its shim (corrald's recovery)."""
    try:
        with open(os.path.join(directory, "exits", f"{container_id}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if getattr(e, "errno", None) == errno.ENOENT:
            return None
        return {"exit_code": 255, "finished_at": 0, "reason": f"unreadable exit record: {e}"}
