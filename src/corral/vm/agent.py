"""The in-guest agent: PID 1 of a pod's VM, running the pod's containers with corral.runtime.

It speaks the shim protocol's framing (4-byte length, JSON) on the virtio-serial
port named `corral.agent`.  The host multiplexes everything over that one port:

    request  {"id": N, "op": OP, ...}            a reply {"id": N, "ok": true, ...}
                                                 or {"id": N, "ok": false, "kind", "error"}
                                                 (no "id": no reply)
    event    {"event": "output", "container": C, "exec": E?, "stream": "stdout"|"stderr",
              "data": base64}
             {"event": "exit", "container": C, "exec": E?, "exit_code": N,
              "reason": "OOMKilled"|"", "finished_at": ns}

OPs: ping, network, create, start, kill, state, stats, update, exec, stdin,
close_stdin, delete, shutdown.  Stdlib and corral only: it runs on the host's
Python, shared read-only from the host's /usr.

The port reads EOF (and polls HUP) while the host side is not connected; the
agent then stops reading it, retries a little later, and keeps what it has to
send until the host is back.  It is one selector loop and PID 1, so it reaps
every orphan; its own death is the guest kernel's panic, which ends the VM.
"""

from __future__ import annotations

import binascii
import errno
import os
import selectors
import signal
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
from corral.spec import fastjson  # json would import re: ~0.3 s of the VM's boot under TCG
from corral.spec.frames import MAX_FRAME, ProtocolError, decode_frames, encode

# What a container's create and start import, loaded once the agent is idle after its
# first answer (the host's ping waits less; the first create no longer pays for it).
WARM_UP = ("corral.runtime.container", "corral.runtime.process.spawn",
           "corral.runtime.process.init", "corral.runtime.process.enter",
           "corral.runtime.validate", "corral.runtime.hooks", "corral.runtime.cgroups",
           "corral.runtime.cgroups.v2", "corral.runtime.cgroups.stats", "corral.spec.runtime")

RUNTIME_ROOT = "/run/corral-agent/runtime"
BUNDLES = "/run/corral-agent/bundles"  # guest-side bundles for a create with its own config
PORT_NAME = "corral.agent"
RECONNECT_DELAY = 0.1    # the host side is not connected: look again after this
OUTPUT_HIGH = 4 << 20    # queued for the host above this: stop reading container pipes
OUTPUT_LOW = 1 << 20
_READ = 1 << 16
_RB_AUTOBOOT = 0x01234567  # reboot(2): with reboot=t and QEMU's -no-reboot, the VM ends


class AgentRequestError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# --- the channel -------------------------------------------------------------------------------
def find_port(name: str = PORT_NAME, timeout: float = 10.0) -> str:
    """/dev/vportNpM of the virtio-serial port called `name` (devtmpfs makes the node)."""
    deadline = time.monotonic() + timeout
    ports = "/sys/class/virtio-ports"
    while True:
        for entry in (os.path.join(ports, n) for n in _listdir(ports)):
            try:
                with open(os.path.join(entry, "name")) as f:
                    found = f.read().strip()
            except OSError:
                continue
            device = os.path.join("/dev", os.path.basename(entry))
            if found == name and os.path.exists(device):
                return device
        if time.monotonic() > deadline:
            raise RuntimeError(f"no virtio-serial port named {name}")
        time.sleep(0.01)


class Port:
    """The virtio-serial port, non-blocking, with an output queue."""

    def __init__(self, path: str, selector: selectors.BaseSelector, on_frames):
        self.path = path
        self.selector = selector
        self.on_frames = on_frames
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.connected = True
        self.retry_at: float | None = None
        self.selector.register(self.fd, selectors.EVENT_READ, self._ready)

    def send(self, message: dict) -> None:
        self.outbox += encode(message)
        self.flush()

    def flush(self) -> None:
        while self.outbox and self.connected:
            try:
                n = os.write(self.fd, self.outbox[:1 << 20])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno not in (errno.ENODEV, errno.ENOTCONN, errno.EPIPE):
                    raise
                self._disconnected()
                break
            del self.outbox[:n]
        self._interest()

    def flush_blocking(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.outbox and time.monotonic() < deadline:
            self.flush()
            time.sleep(0.001)

    def retry(self, now: float) -> None:
        """The host side may be back: read and write again."""
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self.connected = True
            self._interest()

    def _interest(self) -> None:
        if not self.connected:
            events = 0
        else:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        try:
            key = self.selector.get_key(self.fd)
        except KeyError:
            key = None
        if key is not None and not events:
            self.selector.unregister(self.fd)
        elif key is None and events:
            self.selector.register(self.fd, events, self._ready)
        elif key is not None and key.events != events:
            self.selector.modify(self.fd, events, self._ready)

    def _ready(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                data = None
            except OSError as e:
                if e.errno not in (errno.ENODEV, errno.ENOTCONN, errno.EPIPE):
                    raise
                data = b""
            if data == b"":
                self._disconnected()
                return
            if data:
                self.inbox += data
                if len(self.inbox) > MAX_FRAME + 4:
                    self.inbox.clear()  # garbage; the host resynchronises by reconnecting
                else:
                    try:
                        frames = decode_frames(self.inbox)
                    except ProtocolError as e:
                        print(f"corral-agent: bad frame: {e}", file=sys.stderr, flush=True)
                        self.inbox.clear()
                        frames = []
                    self.on_frames(frames)
        if mask & selectors.EVENT_WRITE and self.connected:
            self.flush()

    def _disconnected(self) -> None:
        """EOF: no host on the other side now.  A frame cut in half is dropped."""
        self.connected = False
        self.inbox.clear()
        self.retry_at = time.monotonic() + RECONNECT_DELAY
        self._interest()


# --- what runs ---------------------------------------------------------------------------------
class Proc:
    """A container's init or an exec'd process, with its pipes."""

    def __init__(self, container_id: str, exec_id: str | None = None):
        self.container_id = container_id
        self.exec_id = exec_id
        self.pid = 0
        self.streams: dict[int, str] = {}   # read end → "stdout" | "stderr"
        self.stdin_fd: int | None = None
        self.stdin_buffer = bytearray()
        self.stdin_closing = False
        self.exit: dict | None = None

    def tag(self) -> dict:
        tag = {"container": self.container_id}
        if self.exec_id is not None:
            tag["exec"] = self.exec_id
        return tag


class Guest:
    def __init__(self, container, init: Proc, kill_all_on_exit: bool,
                 own_bundle: str | None):
        self.container = container
        self.init = init
        self.kill_all_on_exit = kill_all_on_exit
        self.own_bundle = own_bundle   # a guest-side bundle dir made for its config
        self.started_at = 0


class Agent:
    def __init__(self, port_path: str):
        self.selector = selectors.DefaultSelector()
        self.containers: dict[str, Guest] = {}
        self.execs: dict[int, Proc] = {}        # pid → exec'd process
        self.exec_ids: dict[tuple[str, str], Proc] = {}
        self.output_paused = False
        self.running = True
        self.answered = False  # a first request was answered: warm up when idle
        self.busybox = os.environ.get("CORRAL_BUSYBOX", "/usr/bin/busybox")
        self.shares: dict[str, str] = {}  # tag -> where adopt mounted it
        os.makedirs(RUNTIME_ROOT, mode=0o711, exist_ok=True)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._wake = (wake_r, wake_w)
        self.selector.register(wake_r, selectors.EVENT_READ, self._on_signal)
        self.port = Port(port_path, self.selector, self._on_frames)

    # --- the loop ------------------------------------------------------------------------------
    def serve(self) -> None:
        warm = False
        while self.running:
            timeout = None if warm or not self.answered else 0.0
            if self.port.retry_at is not None:
                timeout = max(0.0, min(self.port.retry_at - time.monotonic(),
                                       timeout if timeout is not None else 1e9))
            ready = self.selector.select(timeout)
            for key, mask in ready:
                key.data(mask)
            if not ready and not warm and self.answered:
                warm = True
                _warm_up()
            self.port.retry(time.monotonic())
            self._reap()
            self._throttle()

    def _on_signal(self, mask: int) -> None:
        try:
            while os.read(self._wake[0], 256):
                pass
        except BlockingIOError:
            pass

    def _on_frames(self, frames: list[dict]) -> None:
        for request in frames:
            self._dispatch(request)

    def _dispatch(self, request: dict) -> None:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        try:
            if handler is None:
                raise AgentRequestError("invalid", f"unknown operation {op!r}")
            reply = {"ok": True, **(handler(request) or {})}
        except AgentRequestError as e:
            reply = {"ok": False, "kind": e.kind, "error": str(e)}
        except RuntimeFailure as e:
            reply = {"ok": False, "kind": _kind(e), "error": str(e)}
        except ProtocolError as e:
            reply = {"ok": False, "kind": e.kind, "error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "kind": "invalid", "error": f"{op}: {e}"}
        except OSError as e:
            reply = {"ok": False, "kind": "failed", "error": f"{op}: {e}"}
        self.answered = True
        if "id" in request:
            self.port.send({"id": request["id"], **reply})
        elif not reply["ok"]:
            print(f"corral-agent: {op}: {reply['error']}", file=sys.stderr, flush=True)

    def _emit(self, event: dict) -> None:
        self.port.send(event)

    # --- children ------------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, _exit_code(status))

    def _exited(self, pid: int, code: int) -> None:
        proc = self.execs.pop(pid, None)
        if proc is not None:
            self._finish(proc, code, "")
            return
        for guest in self.containers.values():
            if guest.init.exit is None and guest.container.state.pid == pid:
                reason = "OOMKilled" if code == 137 and _oom_killed(guest.container) else ""
                self._finish(guest.init, code, reason)
                if guest.kill_all_on_exit:
                    try:
                        guest.container.kill(signal.SIGKILL, True)
                    except (RuntimeFailure, OSError):
                        pass
                return
        # anything else: an orphan reparented to PID 1

    def _finish(self, proc: Proc, code: int, reason: str) -> None:
        self._drain(proc)
        self._close_stdin(proc)
        proc.exit = {"exit_code": code, "reason": reason, "finished_at": time.time_ns()}
        self._emit({"event": "exit", **proc.tag(), **proc.exit})

    # --- pipes ---------------------------------------------------------------------------------
    def _watch(self, proc: Proc, fd: int, name: str) -> None:
        os.set_blocking(fd, False)
        proc.streams[fd] = name
        if not self.output_paused:
            self.selector.register(fd, selectors.EVENT_READ, lambda _m: self._read(proc, fd))

    def _read(self, proc: Proc, fd: int) -> bool:
        """One read of a pipe; False at its end or when it is empty now."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            name = proc.streams.pop(fd)
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)
            self._emit({"event": "output", **proc.tag(), "stream": name, "data": "",
                        "eof": True})
            return False
        self._emit({"event": "output", **proc.tag(), "stream": proc.streams[fd],
                    "data": binascii.b2a_base64(data, newline=False).decode("ascii")})
        return True

    def _drain(self, proc: Proc) -> None:
        """What the pipes hold now: the process has exited, its output is in the pipe."""
        for fd in list(proc.streams):
            while fd in proc.streams and self._read(proc, fd):
                pass

    def _throttle(self) -> None:
        """Stop reading containers' output while the host does not take it."""
        queued = len(self.port.outbox)
        if not self.output_paused and queued > OUTPUT_HIGH:
            self.output_paused = True
            for proc in self._procs():
                for fd in proc.streams:
                    try:
                        self.selector.unregister(fd)
                    except (KeyError, ValueError):
                        pass
        elif self.output_paused and queued < OUTPUT_LOW:
            self.output_paused = False
            for proc in self._procs():
                for fd in proc.streams:
                    self.selector.register(fd, selectors.EVENT_READ,
                                           lambda _m, p=proc, f=fd: self._read(p, f))

    def _procs(self) -> list[Proc]:
        return [g.init for g in self.containers.values()] + list(self.execs.values())

    def _write_stdin(self, proc: Proc) -> None:
        fd = proc.stdin_fd
        if fd is None:
            return
        while proc.stdin_buffer:
            try:
                n = os.write(fd, proc.stdin_buffer)
            except BlockingIOError:
                break
            except BrokenPipeError:
                proc.stdin_buffer.clear()
                proc.stdin_closing = True
                break
            del proc.stdin_buffer[:n]
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        if proc.stdin_buffer:
            self.selector.register(fd, selectors.EVENT_WRITE, lambda _m: self._write_stdin(proc))
        elif proc.stdin_closing:
            self._close_stdin(proc)

    def _close_stdin(self, proc: Proc) -> None:
        if proc.stdin_fd is None:
            return
        try:
            self.selector.unregister(proc.stdin_fd)
        except (KeyError, ValueError):
            pass
        os.close(proc.stdin_fd)
        proc.stdin_fd = None
        proc.stdin_buffer.clear()

    def _pipes(self, proc: Proc, want_stdin: bool) -> tuple[int, int, int]:
        """(stdin, stdout, stderr) for the child; the agent's ends are kept in `proc`."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if want_stdin:
            stdin, proc.stdin_fd = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(proc.stdin_fd, False)
        else:
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        proc.streams = {out_r: "stdout", err_r: "stderr"}  # watched once the child runs
        return stdin, out_w, err_w

    def _forget_pipes(self, proc: Proc) -> None:
        for fd in proc.streams:
            os.close(fd)
        proc.streams = {}
        if proc.stdin_fd is not None:
            os.close(proc.stdin_fd)
            proc.stdin_fd = None

    def _watch_all(self, proc: Proc) -> None:
        streams, proc.streams = proc.streams, {}
        for fd, name in streams.items():
            self._watch(proc, fd, name)

    # --- operations ----------------------------------------------------------------------------
    def _guest(self, request: dict) -> Guest:
        container_id = request.get("container")
        guest = self.containers.get(container_id) if isinstance(container_id, str) else None
        if guest is None:
            raise AgentRequestError("not_found", f"container {container_id!r} not found")
        return guest

    def _proc(self, request: dict) -> Proc:
        guest = self._guest(request)
        exec_id = request.get("exec")
        if exec_id is None:
            return guest.init
        proc = self.exec_ids.get((guest.container.id, exec_id))
        if proc is None:
            raise AgentRequestError("not_found", f"exec {exec_id!r} not found")
        return proc

    def op_ping(self, request: dict) -> dict:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return {"pid": os.getpid(), "kernel": os.uname().release, "uptime": uptime}

    # --- templates (vm/template.py) ---------------------------------------------------------
    def op_prepare_template(self, request: dict) -> dict:
        """Before the host saves this VM as a template: what every pod's first create would
        import is imported now, so that its clones have it in their (shared) memory."""
        _warm_up()
        import fcntl  # noqa: F401 - adopt's
        import socket  # noqa: F401
        import struct  # noqa: F401

        from corral.runtime import syscalls  # noqa: F401
        from corral.vm import netconf  # noqa: F401
        os.sync()
        return {}

    def op_adopt(self, request: dict) -> dict:
        """A template's clone becomes its pod's: every clone resumes with the template's
        clock, entropy pool, identity and MAC, and without the pod's shares."""
        if isinstance(request.get("time_ns"), int):  # clones resume at the snapshot's time
            time.clock_settime_ns(time.CLOCK_REALTIME, request["time_ns"])
        seed = binascii.unhexlify(request.get("entropy") or "")
        if seed:
            _reseed(seed)
            _write("/etc/machine-id", seed[:16].hex() + "\n")  # boot_id itself is the kernel's
        if request.get("mac"):
            _set_mac(_the_nic(), request["mac"])
        for share in request.get("mounts") or []:  # syscalls, not busybox: no fork here
            from corral.runtime.syscalls import MS_MOVE, LinuxSyscalls

            tag, path = share["tag"], share["path"]
            os.makedirs(path, exist_ok=True)
            mounted = self.shares.get(tag)
            if mounted == path:
                continue
            if mounted:  # a pooled VM's share, mounted for its warm-up: moved to the pod's
                LinuxSyscalls().mount(mounted, path, None, MS_MOVE, None)
            else:        # (a 9p tag has one channel: it cannot be mounted twice)
                LinuxSyscalls().mount(tag, path, "9p", 0,
                                      f"trans=virtio,version=9p2000.L,cache=mmap,"
                                      f"msize={int(share['msize'])}")
            self.shares[tag] = path
        with open("/proc/uptime") as f:
            return {"uptime": float(f.read().split()[0])}

    def op_network(self, request: dict) -> dict:
        """The pod's interfaces and routes: IPv4 by ioctl (vm/netconf.py: no fork), what
        ioctls cannot do (IPv6, renames, a second IPv4 address) by busybox `ip`."""
        from corral.vm import netconf

        netconf.link_up("lo")
        name = ""
        later: list[tuple[str, ...]] = []
        for iface in request.get("interfaces") or []:
            name = _link_by_mac(iface["mac"])
            wanted = iface.get("name") or name
            if wanted != name:
                self._ip_all([("link", "set", "dev", name, "name", wanted)])
                name = wanted
            if iface.get("mtu"):
                netconf.set_mtu(name, int(iface["mtu"]))
            ipv4 = [a for a in iface.get("addresses") or [] if netconf.is_ipv4(a)]
            if ipv4:
                netconf.add_address(name, ipv4[0])  # SIOCSIFADDR sets one, the primary
            later += [("addr", "add", a, "dev", name) for a in iface.get("addresses") or []
                      if a not in ipv4[:1]]
            netconf.link_up(name)
        for route in request.get("routes") or []:
            dst, gateway = route.get("dst") or "default", route.get("gw") or ""
            ipv6 = not (netconf.is_ipv4(dst) and netconf.is_ipv4(gateway))
            dst = "default" if dst in ("0.0.0.0/0", "::/0") else dst
            dev = route.get("dev") or name  # a route without a gateway is on the link
            if not ipv6 and gateway:
                netconf.add_route(dst, gateway)
                continue
            argv = ["route", "add", dst, *(["via", gateway] if gateway else []),
                    *(["dev", dev] if dev else [])]
            later.append(tuple(argv))
        self._ip_all(later)
        if request.get("hostname"):
            import socket

            socket.sethostname(request["hostname"])
            _write("/etc/hostname", request["hostname"] + "\n")
        dns = request.get("dns")
        if dns:
            lines = [f"nameserver {s}" for s in dns.get("servers") or []]
            if dns.get("searches"):
                lines.append("search " + " ".join(dns["searches"]))
            if dns.get("options"):
                lines.append("options " + " ".join(dns["options"]))
            _write("/etc/resolv.conf", "\n".join(lines) + "\n")
        return {}

    def _ip_all(self, commands: list[tuple[str, ...]]) -> None:
        """`ip` commands in one busybox shell, in order, stopping at the first failure: one
        fork of this (large) process instead of one each, which under TCG is most of
        the network's setup."""
        if not commands:
            return
        import subprocess

        script = "set -e\n" + "".join(
            " ".join(_quoted(a) for a in (self.busybox, "ip", *argv)) + "\n" for argv in commands)
        done = subprocess.run([self.busybox, "sh", "-c", script], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        if done.returncode:
            raise AgentRequestError("failed", f"ip: {(done.stderr or done.stdout).strip()}")

    def op_create(self, request: dict) -> dict:
        container_id, bundle = request["container"], request["bundle"]
        if container_id in self.containers:
            raise AgentRequestError("exists", f"container {container_id} already exists")
        own_bundle = None
        config = request.get("config")
        if config is None:
            with open(os.path.join(bundle, "config.json")) as f:
                config = fastjson.loads(f.read())
        else:
            # The host's config adapted to the guest; its rootfs stays in the shared bundle.
            config = dict(config)
            root = dict(config.get("root") or {})
            root["path"] = os.path.normpath(os.path.join(bundle, root.get("path", "rootfs")))
            config["root"] = root
            own_bundle = os.path.join(BUNDLES, container_id)
            os.makedirs(own_bundle, mode=0o711)
            _write(os.path.join(own_bundle, "config.json"), fastjson.dumps(config))
        from corral.runtime.container import Container

        init = Proc(container_id)
        stdio = self._pipes(init, bool(request.get("stdin")))
        try:
            container = Container.create(RUNTIME_ROOT, container_id, own_bundle or bundle,
                                         stdio=stdio, warn=_warn)
        except BaseException:
            self._forget_pipes(init)
            if own_bundle:
                _remove_tree(own_bundle)
            raise
        finally:
            for fd in stdio:
                os.close(fd)
        init.pid = container.state.pid
        self.containers[container_id] = Guest(container, init, _shares_pid_namespace(config),
                                              own_bundle)
        self._watch_all(init)
        return {"pid": init.pid}

    def op_start(self, request: dict) -> dict:
        guest = self._guest(request)
        if guest.init.exit is not None:
            raise AgentRequestError("invalid", f"container {guest.container.id} has exited")
        guest.container.start(warn=_warn)
        guest.started_at = time.time_ns()
        return {"pid": guest.init.pid, "started_at": guest.started_at}

    def op_kill(self, request: dict) -> dict:
        guest = self._guest(request)
        signum = int(request.get("signal", signal.SIGTERM))
        proc = self._proc(request)
        if proc is not guest.init:
            if proc.exit is None:
                _signal(proc.pid, signum)
            return {}
        if guest.init.exit is None or request.get("all"):
            try:
                guest.container.kill(signum, bool(request.get("all")))
            except RuntimeFailure:
                if guest.container.state.init_alive():
                    raise
        return {}

    def op_state(self, request: dict) -> dict:
        guest = self._guest(request)
        status = "stopped" if guest.init.exit is not None else guest.container.state.status()
        return {"container": guest.container.id, "status": status, "pid": guest.init.pid,
                "started_at": guest.started_at, "exit": guest.init.exit}

    def op_stats(self, request: dict) -> dict:
        from corral.runtime.cgroups import load_manager
        from corral.runtime.cgroups.stats import read_stats

        guest = self._guest(request)
        if guest.init.exit is not None:
            raise AgentRequestError("invalid", f"container {guest.container.id} is not running")
        saved = guest.container.state.cgroup
        return {"stats": read_stats(load_manager(saved)) if saved else {}}

    def op_update(self, request: dict) -> dict:
        self._guest(request).container.update(request["resources"])
        return {}

    def op_exec(self, request: dict) -> dict:
        from corral.spec.runtime import Process, SpecError

        guest = self._guest(request)
        exec_id = request["exec"]
        if not isinstance(exec_id, str) or (guest.container.id, exec_id) in self.exec_ids:
            raise AgentRequestError("exists", f"exec {exec_id!r} exists or is not a string")
        if guest.init.exit is not None:
            raise AgentRequestError("invalid", f"container {guest.container.id} is not running")
        try:
            process = Process.parse(request["process"], "process")
        except SpecError as e:
            raise AgentRequestError("invalid", str(e)) from None
        proc = Proc(guest.container.id, exec_id)
        stdio = self._pipes(proc, bool(request.get("stdin")))
        try:
            proc.pid = guest.container.exec(process, stdio=stdio)
        except BaseException:
            self._forget_pipes(proc)
            raise
        finally:
            for fd in stdio:
                os.close(fd)
        self.execs[proc.pid] = proc
        self.exec_ids[(guest.container.id, exec_id)] = proc
        self._watch_all(proc)
        return {"pid": proc.pid}

    def op_stdin(self, request: dict) -> dict:
        proc = self._proc(request)
        if proc.stdin_fd is None:
            raise AgentRequestError("invalid", "stdin is not open")
        proc.stdin_buffer += binascii.a2b_base64(request.get("data") or "")
        self._write_stdin(proc)
        return {}

    def op_close_stdin(self, request: dict) -> dict:
        proc = self._proc(request)
        proc.stdin_closing = True
        self._write_stdin(proc)
        if not proc.stdin_buffer:
            self._close_stdin(proc)
        return {}

    def op_delete(self, request: dict) -> dict:
        guest = self._guest(request)
        if guest.init.exit is None and guest.container.state.init_alive():
            if not request.get("force"):
                raise AgentRequestError("invalid", f"container {guest.container.id} is running")
            guest.container.kill(signal.SIGKILL, True)
            self._wait_for(guest.init, 10.0)
        guest.container.delete(force=True, warn=_warn)
        if guest.init.exit is None:
            self._finish(guest.init, 255, "deleted")
        for fd in list(guest.init.streams):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass  # not registered while output is paused
            os.close(fd)
        guest.init.streams = {}
        for key in [k for k in self.exec_ids if k[0] == guest.container.id]:
            proc = self.exec_ids.pop(key)
            self._close_stdin(proc)
        if guest.own_bundle:
            _remove_tree(guest.own_bundle)
        del self.containers[guest.container.id]
        return {}

    def _wait_for(self, proc: Proc, timeout: float) -> None:
        """Reap until `proc` has exited (delete --force, after SIGKILL)."""
        deadline = time.monotonic() + timeout
        while proc.exit is None and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self._exited(pid, _exit_code(status))
            else:
                time.sleep(0.002)

    def op_shutdown(self, request: dict) -> dict:
        """Kill everything, answer, and end the VM (reboot: QEMU exits)."""
        for guest in list(self.containers.values()):
            try:
                guest.container.kill(signal.SIGKILL, True)
            except (RuntimeFailure, OSError):
                pass
        if "id" in request:
            self.port.send({"id": request["id"], "ok": True})
        self.port.flush_blocking()
        _reboot()


# --- helpers -----------------------------------------------------------------------------------
def _warm_up() -> None:
    import importlib

    for name in WARM_UP:
        try:
            importlib.import_module(name)
        except ImportError as e:  # the create that needs it will say so
            print(f"corral-agent: warm-up: {e}", file=sys.stderr, flush=True)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _oom_killed(container) -> bool:
    saved = container.state.cgroup
    if not saved:
        return False
    from corral.runtime.cgroups import load_manager
    from corral.runtime.cgroups.stats import read_flat_keyed

    path = load_manager(saved).paths.get("")
    counters = read_flat_keyed(path, "memory.events") if path else None
    return bool(counters and counters.get("oom_kill"))


def _shares_pid_namespace(config: dict) -> bool:
    namespaces = (config.get("linux") or {}).get("namespaces") or []
    pid = next((ns for ns in namespaces if ns.get("type") == "pid"), None)
    return pid is None or bool(pid.get("path"))


def _quoted(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _the_nic() -> str:
    links = [n for n in _listdir("/sys/class/net") if n != "lo"]
    if len(links) != 1:
        raise AgentRequestError("failed", f"expected one network interface, found {links}")
    return links[0]


RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207      # _IO('R', 0x07)


SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1


def _set_mac(link: str, mac: str) -> None:
    """The interface's MAC, by ioctl (virtio-net takes it while up)."""
    import fcntl
    import socket
    import struct

    address = bytes(int(part, 16) for part in mac.split(":"))
    if len(address) != 6:
        raise AgentRequestError("invalid", f"MAC {mac!r}")
    request = struct.pack("16sH6s8x", link.encode(), ARPHRD_ETHER, address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCSIFHWADDR, request)


def _reseed(seed: bytes) -> None:
    """Mix the host's bytes into the pool, credited, and reseed the CRNG from it now: two
    clones of one template must not draw the same numbers."""
    import fcntl
    import struct

    with open("/dev/urandom", "wb") as f:
        fcntl.ioctl(f.fileno(), RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(f.fileno(), RNDRESEEDCRNG)


def _link_by_mac(mac: str) -> str:
    for name in _listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{name}/address") as f:
                if f.read().strip().lower() == mac.lower():
                    return name
        except OSError:
            continue
    raise AgentRequestError("not_found", f"no network interface with MAC {mac}")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _reboot() -> None:
    """End the VM: reboot(2) with reboot=t triple-faults, and QEMU's -no-reboot exits."""
    import ctypes

    os.sync()
    ctypes.CDLL(None, use_errno=True).reboot(_RB_AUTOBOOT)
    os._exit(1)  # not reached


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _warn(message: str) -> None:
    print(f"corral-agent: warning: {message}", file=sys.stderr, flush=True)


def _kind(error: RuntimeFailure) -> str:
    if isinstance(error, ContainerExists):
        return "exists"
    if isinstance(error, ContainerNotFound):
        return "not_found"
    if isinstance(error, (InvalidID, ConfigInvalid, InvalidState)):
        return "invalid"
    return "failed"


def main() -> None:
    try:
        if os.getpid() != 1:  # (a test outside a VM): orphans must still come here
            import ctypes

            PR_SET_CHILD_SUBREAPER = 36
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        os.umask(0o022)
        port = find_port(os.environ.get("CORRAL_AGENT_PORT", PORT_NAME))
        Agent(port).serve()
    except BaseException:  # noqa: BLE001 - PID 1 ending is the VM's end: say why first
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        if os.getpid() == 1:
            _reboot()
        raise


if __name__ == "__main__":
    main()
