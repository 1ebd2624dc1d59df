"""The runsc handler (shim/handlers/runsc.py) driving real gVisor sandboxes.

Each test gets a pod: a network namespace of its own with a veth to the host
(10.211.N.2 inside, 10.211.N.1 outside), a cgroup parent below
/corral-test-runsc, and a shim-like loop (`Loop`): this process is made a
child subreaper for the module, as a shim is, so the sandbox, gofers and
`runsc exec`/`runsc wait` processes are reaped here and handed to the
handler's `reaped` as the shim does.  Teardown asserts nothing is left: no
process in the pod's cgroups, no cgroup directory, no runsc state.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import time

import pytest

from corral.runtime.errors import RuntimeFailure
from corral.shim.handlers.base import Unsupported
from corral.shim.handlers.runsc import RunscHandler, end_without_shim
from corral.shim.protocol import ShimError
from corral.shim.server import in_helper

RUNSC = shutil.which("runsc") or "/usr/bin/runsc"
CGROUP_ROOT = "/sys/fs/cgroup"
TEST_CGROUP = "corral-test-runsc"
PR_SET_CHILD_SUBREAPER = 36

pytestmark = pytest.mark.skipif(not os.path.exists(RUNSC) or not os.path.exists(
    "/usr/bin/catatonit"), reason="Debian's runsc and catatonit (scripts/setup installs them)")

_pods = itertools.count(1)


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    _reap_all()


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Loop:
    """What a shim lends its handler (base.ShimServices), with the shim's reaping."""

    def __init__(self, pod_id: str, directory: str):
        self.pod_id = pod_id
        self.dir = directory
        self.selector = selectors.DefaultSelector()
        self.exits: dict[str, tuple[int, str]] = {}
        self.exec_exits: dict[int, int] = {}  # reaped here: runsc exec's own status
        self.sandbox_end: tuple[int, str] | None = None
        self.handler: RunscHandler | None = None

    def in_helper(self, work):
        return in_helper(work)  # the shim's: a forked child (runsc.py unshares in it)

    def watch(self, fd, callback):
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def watch_writable(self, fd, callback):
        self.selector.register(fd, selectors.EVENT_WRITE, callback)

    def unwatch(self, fd):
        self.selector.unregister(fd)

    def container_exited(self, container_id: str, code: int, reason: str = "") -> None:
        self.exits[container_id] = (code, reason)

    def exec_exited(self, key: int, code: int) -> None:
        self.exec_exits[key] = code

    def sandbox_ended(self, code: int, reason: str) -> None:
        self.sandbox_end = (code, reason)

    def turn(self, timeout: float = 0.02) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            if not self.handler.reaped(pid, code):
                self.exec_exits[pid] = code
        if self.selector.get_map():
            for key, _ in self.selector.select(timeout):
                key.data(key.fd)
        else:
            time.sleep(timeout)

    def until(self, condition, timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.turn()
            value = condition()
            if value:
                return value
        raise AssertionError(f"timed out waiting for {what}")


class Output:
    """A container's stdout and stderr pipes, read to EOF."""

    def __init__(self):
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self.null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.data = {"stdout": b"", "stderr": b""}
        self.open = {"stdout", "stderr"}

    @property
    def stdio(self) -> tuple[int, int, int]:
        return self.null, self.out_w, self.err_w

    def handed_over(self, loop: Loop) -> None:
        """The handler has what it needs (it keeps its own copies): ours are closed."""
        for fd in (self.null, self.out_w, self.err_w):
            os.close(fd)
        for fd, name in ((self.out_r, "stdout"), (self.err_r, "stderr")):
            os.set_blocking(fd, False)
            loop.watch(fd, lambda fd, name=name: self._read(loop, fd, name))

    def _read(self, loop: Loop, fd: int, name: str) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            self.data[name] += data
        else:
            loop.unwatch(fd)
            os.close(fd)
            self.open.discard(name)

    def text(self, name: str = "stdout") -> str:
        return self.data[name].decode(errors="replace")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _cgroup_dirs(path: str) -> list[str]:
    found = []
    for hierarchy in os.listdir(CGROUP_ROOT):
        directory = os.path.join(CGROUP_ROOT, hierarchy, path.lstrip("/"))
        if os.path.isdir(directory):
            found.append(directory)
    return found


def _pids_below(path: str) -> set[int]:
    pids: set[int] = set()
    for directory in _cgroup_dirs(path):
        for parent, _, _ in os.walk(directory):
            try:
                with open(os.path.join(parent, "cgroup.procs")) as f:
                    pids.update(int(line) for line in f if line.strip())
            except OSError:
                pass
    return pids


def _remove_cgroups(path: str) -> None:
    for directory in _cgroup_dirs(path):
        for parent, _, _ in sorted(os.walk(directory), key=lambda w: -len(w[0])):
            try:
                os.rmdir(parent)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise


class Pod:
    def __init__(self, n: int, tmp_path, options: dict | None = None):
        self.n = n
        self.netns = f"corral-rs11-{n}"
        self.host_if, self.pod_if = f"crs11h{n}", f"crs11c{n}"
        self.host_ip, self.ip = f"10.211.{n}.1", f"10.211.{n}.2"
        self.cgroup_parent = f"/{TEST_CGROUP}/pod-{os.getpid()}-{n}"
        self.id = f"pod{os.getpid()}x{n}"
        self.dir = str(tmp_path / f"shim{n}")
        os.makedirs(self.dir)
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if)
        _ip("link", "set", self.pod_if, "netns", self.netns)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", self.pod_if)
        _ip("-n", self.netns, "link", "set", self.pod_if, "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "route", "add", "default", "via", self.host_ip)
        self.loop = Loop(self.id, self.dir)
        spec = {"name": "runsc", "type": "runsc", "path": RUNSC,
                "options": {"platform": "ptrace", **(options or {})}}
        self.handler = self.loop.handler = RunscHandler(spec, self.loop)

    @property
    def namespaces(self) -> dict:
        return {"net": f"/run/netns/{self.netns}"}

    def start(self) -> dict:
        return self.handler.start_pod({"namespaces": self.namespaces,
                                       "cgroup_parent": self.cgroup_parent,
                                       "hostname": f"pod{self.n}"})

    def run(self, make_bundle, args: list[str], *, memory: int = 0, start: bool = True):
        bundle = make_bundle(args)
        bundle.config["root"]["readonly"] = False
        if memory:
            bundle.linux.setdefault("resources", {})["memory"] = {"limit": memory}
        container_id = f"c{len(self.handler.containers)}-{os.urandom(4).hex()}"
        bundle.linux["cgroupsPath"] = os.path.join(self.cgroup_parent, container_id)
        bundle.write()
        output = Output()
        began = time.monotonic()
        container = self.handler.create(container_id, str(bundle.path), output.stdio)
        output.handed_over(self.loop)
        if start:
            container.start()
        self.took = time.monotonic() - began  # create and start, without the bundle's copy
        return container, output

    def exited(self, container) -> tuple[int, str]:
        return self.loop.until(lambda: self.loop.exits.get(container.id),
                               what=f"{container.id} to exit")

    def close(self) -> None:
        try:
            self.handler.stop_pod()
            self.loop.until(lambda: not _pids_below(self.cgroup_parent), timeout=10,
                            what="the pod's processes to end")
        finally:
            _reap_all()
            leftover = _pids_below(self.cgroup_parent)
            for pid in leftover:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            dirs = _cgroup_dirs(self.cgroup_parent + "/sandbox")
            root = self.handler.runtime.root
            state = [n for n in os.listdir(root) if n.endswith(".state")] \
                if os.path.isdir(root) else []
            try:
                _remove_cgroups(self.cgroup_parent)
            finally:
                subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
                subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        assert not leftover, f"processes left in the pod's cgroups: {sorted(leftover)}"
        assert not dirs, f"the sandbox's cgroups are left: {dirs}"
        assert not state, f"runsc state left: {state}"


@pytest.fixture
def make_pod(tmp_path):
    pods = []

    def make(options: dict | None = None) -> Pod:
        pod = Pod(next(_pods), tmp_path, options)
        pods.append(pod)
        return pod

    yield make
    for pod in pods:
        pod.close()
    _remove_cgroups(f"/{TEST_CGROUP}")


def _listed(pod: Pod) -> dict[str, dict]:
    done = subprocess.run([RUNSC, "--root", pod.handler.runtime.root, "list", "--format", "json"],
                          check=True, capture_output=True, text=True)
    return {c["id"]: c for c in json.loads(done.stdout or "[]") or []}


def test_a_pod_is_one_sandbox_with_its_containers_inside(make_pod, make_bundle):
    pod = make_pod()
    began = time.monotonic()
    pod.start()
    pod_ready = time.monotonic() - began
    sandbox = pod.handler.sandbox_pid
    assert sandbox and os.path.exists(f"/proc/{sandbox}")
    first, out1 = pod.run(make_bundle, ["sh", "-c", "echo one out; echo one err >&2; "
                                                    "ip addr; hostname; sleep 1000"])
    container_ready = pod.took
    second, out2 = pod.run(make_bundle, ["sh", "-c", "uname -r; echo two; sleep 1000"])
    pod.loop.until(lambda: "one out" in out1.text() and "two" in out2.text(),
                   what="both containers' output")
    pod.loop.until(lambda: "one err" in out1.text("stderr"), what="stderr")
    # one sandbox: both containers and the root are runsc containers of the same PID
    listed = _listed(pod)
    assert set(listed) == {pod.id, first.id, second.id}
    assert {c["pid"] for c in listed.values()} == {sandbox}
    assert first.status() == second.status() == "running"
    # gVisor's kernel, and the pod's network: its IP moved into the sandbox
    assert "4.4.0" in out2.text()
    assert pod.ip in out1.text()
    addresses = subprocess.run(["ip", "-n", pod.netns, "-4", "addr", "show", pod.pod_if],
                               capture_output=True, text=True).stdout
    assert pod.ip not in addresses
    print(f"\nrunsc pod start {pod_ready * 1000:.0f} ms, container create+start "
          f"{container_ready * 1000:.0f} ms")


def test_the_pod_ip_serves_a_container_port(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    server, _ = pod.run(make_bundle, ["sh", "-c", "echo hello-from-gvisor | nc -l -p 8080"])
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection((pod.ip, 8080), timeout=2) as conn:
                received = conn.recv(100)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            pod.loop.turn(0.1)
    assert received == b"hello-from-gvisor\n"
    assert pod.exited(server) == (0, "")


def test_exit_codes_and_signals_are_reported(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    three, out = pod.run(make_bundle, ["sh", "-c", "echo bye; exit 3"])
    sleeper, _ = pod.run(make_bundle, ["sleep", "1000"])
    trapper, _ = pod.run(make_bundle, ["sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"])
    assert pod.exited(three) == (3, "")
    pod.loop.until(lambda: not out.open, what="stdout to close")  # the sandbox let go
    assert out.text() == "bye\n"
    assert three.status() == "stopped" and not three.alive()
    sleeper.kill(signal.SIGKILL)
    assert pod.exited(sleeper) == (137, "")
    time.sleep(0.3)  # its trap is set
    trapper.kill(signal.SIGTERM)
    assert pod.exited(trapper) == (7, "")
    # the sandbox outlives them all
    assert os.path.exists(f"/proc/{pod.handler.sandbox_pid}")
    for container in (three, sleeper, trapper):
        container.delete()
    assert set(_listed(pod)) == {pod.id}


def test_exec_runs_in_the_container_and_can_be_killed(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    target, _ = pod.run(make_bundle, ["sh", "-c", "echo marker > /tmp/mark; sleep 1000"])
    time.sleep(0.3)
    output = Output()
    key = target.exec({"args": ["sh", "-c", "cat /tmp/mark; echo oops >&2; exit 5"],
                       "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
                      output.stdio)
    output.handed_over(pod.loop)
    assert pod.loop.until(lambda: pod.loop.exec_exits.get(key) is not None,
                          what="the exec") is not None
    assert pod.loop.exec_exits[key] == 5
    pod.loop.until(lambda: not output.open, what="the exec's output")
    assert output.text() == "marker\n" and output.text("stderr") == "oops\n"
    # kill_exec reaches the process inside, not only its runsc exec
    longer = Output()
    key = target.exec({"args": ["sleep", "1000"], "cwd": "/", "env": ["PATH=/bin"],
                       "user": {"uid": 0, "gid": 0}}, longer.stdio)
    longer.handed_over(pod.loop)
    time.sleep(0.3)
    target.kill_exec(key, signal.SIGKILL)
    pod.loop.until(lambda: pod.loop.exec_exits.get(key) is not None, what="killed exec")
    assert pod.loop.exec_exits[key] == 137
    ps = subprocess.run([RUNSC, "--root", pod.handler.runtime.root, "ps", target.id],
                        capture_output=True, text=True).stdout
    assert "sleep" in ps and ps.count("sleep") == 1  # the container's own sleep only


def test_stats_come_from_runsc_events(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    busy, _ = pod.run(make_bundle, ["sh", "-c", "while :; do :; done"])
    time.sleep(1)
    stats = busy.stats()
    assert stats["cpu"]["usage"]["total"] > 100_000_000  # ns: it spun for ~1 s
    assert stats["memory"]["usage"]["usage"] > 0
    assert stats["pids"]["current"] >= 1
    with pytest.raises(Unsupported):
        busy.update({"memory": {"limit": 1 << 30}})


def test_a_container_over_its_memory_ooms_the_sandbox_and_is_reported(make_pod, make_bundle):
    pod = make_pod({"memory_overhead": 48 << 20})
    pod.start()
    quiet, _ = pod.run(make_bundle, ["sleep", "1000"], memory=32 << 20)
    hog, _ = pod.run(make_bundle, ["sh", "-c", "tail /dev/zero"], memory=32 << 20)
    limit = open(os.path.join(CGROUP_ROOT, "memory", pod.cgroup_parent.lstrip("/"),
                              "sandbox", "memory.limit_in_bytes")).read()
    assert int(limit) == (32 << 20) * 2 + (48 << 20)
    assert pod.exited(hog) == (137, "OOMKilled")
    # the whole sandbox went: every container is reported, OOMKilled too
    assert pod.exited(quiet) == (137, "OOMKilled")
    assert hog.oom_killed()
    assert pod.loop.until(lambda: pod.loop.sandbox_end, what="the sandbox's end") == (
        137, "OOMKilled")


def test_a_dead_sandbox_ends_its_containers(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    victim, _ = pod.run(make_bundle, ["sleep", "1000"])
    os.kill(pod.handler.sandbox_pid, signal.SIGKILL)
    code, reason = pod.exited(victim)
    assert code == 255 and reason.startswith("sandbox ended")
    assert pod.loop.until(lambda: pod.loop.sandbox_end, what="the sandbox's end") == (
        137, "the gVisor sandbox ended (status 137)")
    assert pod.handler.sandbox_pid == 0  # reaped, and known to be the sandbox
    with pytest.raises(ShimError):
        pod.run(make_bundle, ["true"])


def test_deleting_a_running_container_reports_its_end(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    running, _ = pod.run(make_bundle, ["sleep", "1000"])
    created, _ = pod.run(make_bundle, ["true"], start=False)
    assert created.status() == "created"
    running.delete()
    assert pod.loop.exits[running.id] == (137, "")  # known before delete returned
    never_started, _ = pod.run(make_bundle, ["true"], start=False)
    never_started.delete()
    assert never_started.id not in pod.loop.exits  # it never ran: the shim records that
    # runsc cannot signal a created container; the handler ends it as runc's init would
    created.kill(signal.SIGTERM)
    assert pod.loop.exits[created.id] == (143, "") and created.status() == "stopped"
    with pytest.raises(RuntimeFailure):
        created.kill(signal.SIGKILL)
    created.delete()
    assert set(_listed(pod)) == {pod.id}
    assert os.listdir(os.path.join(pod.handler.runtime.root, "bundles")) == []
    assert not _cgroup_dirs(running.id) and not _cgroup_dirs(
        os.path.join(pod.cgroup_parent, running.id))


def test_stop_pod_leaves_nothing_even_with_containers_running(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    pod.run(make_bundle, ["sleep", "1000"])
    pod.run(make_bundle, ["sh", "-c", "sleep 1000 & sleep 1000"])
    assert len(_pids_below(pod.cgroup_parent)) >= 3
    pod.handler.stop_pod()
    pod.loop.until(lambda: not _pids_below(pod.cgroup_parent), timeout=10,
                   what="the sandbox's processes to end")
    assert not _cgroup_dirs(pod.cgroup_parent + "/sandbox")
    assert not _listed(pod)
    assert pod.loop.sandbox_end is None  # asked for: not news
    # pod.close() (the fixture) asserts the same again, after a second stop_pod


def test_runscs_own_error_message_is_reported(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    with pytest.raises(RuntimeFailure) as failed:
        pod.run(make_bundle, ["/no/such/program"])
    message = str(failed.value)
    assert message.startswith("runsc start:") and "/no/such/program" in message, message


def test_the_hosts_network_namespace_is_refused(make_pod):
    pod = make_pod()
    with pytest.raises(ShimError) as refused:
        pod.handler.start_pod({"namespaces": {"net": "/proc/self/ns/net"},
                               "cgroup_parent": pod.cgroup_parent})
    assert refused.value.kind == "invalid" and "host's" in str(refused.value)
    assert not _listed(pod) and not _cgroup_dirs(pod.cgroup_parent)
    with pytest.raises(ShimError):
        pod.handler.start_pod({"namespaces": {}, "cgroup_parent": pod.cgroup_parent})


def test_tty_containers_are_refused(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    bundle = make_bundle(["sh"])
    with pytest.raises(Unsupported):
        pod.handler.create("tty", str(bundle.path), (0, 1, 2), console_socket="/nowhere")


def test_port_forward_reaches_the_sandboxs_localhost(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    # a server that answers after it has read: the relay must carry both ways
    server, output = pod.run(make_bundle, ["sh", "-c", "printf '#!/bin/sh\\nread x\\n"
                                           "echo pong:$x\\n' > /tmp/s; chmod +x /tmp/s; "
                                           "nc -l -p 9000 -e /tmp/s; echo served"])
    # nothing listens on 127.0.0.1:9000 in the pod's netns: the stack is gVisor's
    deadline = time.monotonic() + 15
    while True:
        received = b""
        with pod.handler.port_forward(9000) as conn:
            conn.settimeout(10)
            try:
                conn.sendall(b"ping\n")
                while chunk := conn.recv(100):
                    received += chunk
                    if received.endswith(b"\n"):
                        break
            except OSError:
                pass  # the relay found no listener yet, and ended
        if received or time.monotonic() > deadline:
            break
        pod.loop.turn(0.2)
    assert received == b"pong:ping\n"
    assert pod.exited(server) == (0, "")
    pod.loop.until(lambda: not output.open, what="the server's output")
    assert output.text() == "served\n"


def test_a_cri_shaped_spec_runs_and_shares_the_pods_files(make_pod, make_bundle, tmp_path):
    """What corrald writes: host namespace paths, a cgroup namespace, the pod's hosts and
    resolv.conf as file binds, its /dev/shm as a directory bind."""
    pod = make_pod()
    pod.start()
    shm = tmp_path / "shm"
    shm.mkdir()
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts.write_text("10.211.0.9 the-pods-host\n")
    resolv.write_text("nameserver 10.211.0.53\n")
    bundle = make_bundle(["sh", "-c", "cat /etc/hosts /etc/resolv.conf; echo hi > /dev/shm/x; "
                                      "cat /dev/shm/from-host; hostname"])
    bundle.config["hostname"] = "not-the-pods"  # gVisor gives it the sandbox's
    bundle.config["mounts"] = [m for m in bundle.config["mounts"]
                               if m["destination"] != "/dev/shm"] + [
        {"destination": "/dev/shm", "type": "bind", "source": str(shm),
         "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]},
        {"destination": "/etc/hosts", "type": "bind", "source": str(hosts),
         "options": ["rbind", "rprivate", "rw"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv),
         "options": ["rbind", "rprivate", "ro"]}]
    bundle.linux["namespaces"] = [
        {"type": "mount"}, {"type": "pid", "path": "/proc/self/ns/pid"},
        {"type": "network", "path": pod.namespaces["net"]},
        {"type": "ipc", "path": "/proc/self/ns/ipc"}, {"type": "uts", "path": "/proc/self/ns/uts"},
        {"type": "cgroup"}]
    bundle.linux["cgroupsPath"] = os.path.join(pod.cgroup_parent, "cri")
    bundle.write()
    (shm / "from-host").write_text("shared\n")
    output = Output()
    container = pod.handler.create("cri", str(bundle.path), output.stdio)
    output.handed_over(pod.loop)
    container.start()
    assert pod.exited(container) == (0, "")
    pod.loop.until(lambda: not output.open, what="its output")
    assert output.text() == ("10.211.0.9 the-pods-host\nnameserver 10.211.0.53\nshared\n"
                             f"pod{pod.n}\n"), output.text("stderr")
    assert (shm / "x").read_text() == "hi\n"
    # corrald's config.json is left as corrald wrote it
    assert "io.kubernetes.cri.sandbox-id" not in json.loads(
        (bundle.path / "config.json").read_text()).get("annotations", {})
    container.delete()


def test_containers_share_the_sandboxs_network_and_stdin_reaches_a_container(
        make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    server, served = pod.run(make_bundle, ["sh", "-c", "nc -l -p 7000"])
    # the client's stdin is a pipe the test writes to after start, as attach does
    bundle = make_bundle(["sh", "-c", "read line; until echo $line | nc 127.0.0.1 7000; "
                                      "do sleep 0.1; done; echo sent"])
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    output = Output()
    os.close(output.null)
    output.null = stdin_r
    client = pod.handler.create("client", str(bundle.path), output.stdio)
    output.handed_over(pod.loop)
    client.start()
    time.sleep(0.3)
    os.write(stdin_w, b"over-loopback\n")
    os.close(stdin_w)
    assert pod.exited(client) == (0, "")
    assert pod.exited(server) == (0, "")
    pod.loop.until(lambda: "over-loopback" in served.text(), what="the server's output")
    assert served.text() == "over-loopback\n"
    assert "sent" in output.text()


def test_options_reach_runsc(make_pod, make_bundle, tmp_path):
    logs = tmp_path / "debug"
    logs.mkdir()
    pod = make_pod({"debug_log": str(logs), "runtime_flags": ["--num-network-channels=2"],
                    "network": "sandbox"})
    assert "--platform=ptrace" in pod.handler.runtime.global_flags
    pod.start()
    container, output = pod.run(make_bundle, ["echo", "logged"])
    assert pod.exited(container) == (0, "")
    names = os.listdir(logs)
    assert any(".boot." in n for n in names) and any(".start." in n for n in names), names
    boot = next(n for n in names if ".boot." in n)
    assert "NumNetworkChannels" in (logs / boot).read_text() or \
        "--num-network-channels=2" in (logs / boot).read_text()
    with pytest.raises(ShimError) as bad:
        RunscHandler({"type": "runsc", "path": RUNSC, "options": {"network": "host"}},
                     pod.loop)
    assert bad.value.kind == "invalid"


def test_network_none_gives_a_sandbox_only_loopback(make_pod, make_bundle):
    pod = make_pod({"network": "none"})
    pod.start()
    container, output = pod.run(make_bundle, ["ip", "-o", "addr"])
    assert pod.exited(container) == (0, "")
    pod.loop.until(lambda: not output.open, what="its output")
    assert " lo " in output.text() and pod.ip not in output.text()
    addresses = subprocess.run(["ip", "-n", pod.netns, "-4", "addr", "show", pod.pod_if],
                               capture_output=True, text=True).stdout
    assert pod.ip in addresses  # the pod's netns was not touched


def test_end_without_shim_ends_an_orphaned_sandbox(make_pod, make_bundle):
    """corrald's part when a runsc pod's shim is gone (killed): its sandbox would live on."""
    pod = make_pod()
    pod.start()
    pod.run(make_bundle, ["sleep", "1000"])
    pod.run(make_bundle, ["sh", "-c", "sleep 1000 & sleep 1000"])
    sandbox = pod.handler.sandbox_pid
    assert _pids_below(pod.cgroup_parent)
    # corrald is not the sandbox's parent: run it in a child while this process (the
    # "shim" the sandbox was orphaned to) reaps, as init would
    child = os.fork()
    if child == 0:
        try:
            end_without_shim(pod.dir, pod.id, pod.cgroup_parent, binary=RUNSC)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the status is the verdict
            os._exit(1)
    pod.loop.until(lambda: child in pod.loop.exec_exits, timeout=20, what="end_without_shim")
    assert pod.loop.exec_exits[child] == 0  # (the loop files unknown children there)
    pod.loop.until(lambda: pod.handler.sandbox_pid == 0, timeout=5, what="the sandbox reaped")
    assert not os.path.exists(f"/proc/{sandbox}/cmdline") or not open(
        f"/proc/{sandbox}/cmdline").read()
    assert not _cgroup_dirs(pod.cgroup_parent + "/sandbox")
    assert not _listed(pod)
    end_without_shim(pod.dir, pod.id, pod.cgroup_parent, binary=RUNSC)  # again: nothing to do


def test_a_containers_seccomp_profile_applies_inside_the_sandbox(make_pod, make_bundle):
    pod = make_pod()
    pod.start()
    bundle = make_bundle(["sh", "-c", "mkdir /tmp/d; echo mkdir=$?"])
    bundle.config["root"]["readonly"] = False
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}]}
    bundle.write()
    output = Output()
    container = pod.handler.create("seccomp", str(bundle.path), output.stdio)
    output.handed_over(pod.loop)
    container.start()
    assert pod.exited(container) == (0, "")
    pod.loop.until(lambda: not output.open, what="its output")
    assert "mkdir=1" in output.text(), output.text() + output.text("stderr")
    assert "Operation not permitted" in output.text("stderr")


def test_capabilities_newer_than_runsc_are_dropped(make_pod, make_bundle):
    """A privileged container's spec names every capability the host knows; this runsc
    refuses CAP_PERFMON, CAP_BPF and CAP_CHECKPOINT_RESTORE ("unknown capability")."""
    pod = make_pod()
    pod.start()
    every = [f"CAP_{name}" for name in (
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETUID", "SETGID", "NET_BIND_SERVICE",
        "SYS_ADMIN", "PERFMON", "BPF", "CHECKPOINT_RESTORE")]
    bundle = make_bundle(["sh", "-c", "grep CapEff /proc/self/status; sleep 1000"])
    bundle.config["process"]["capabilities"] = {kind: list(every) for kind in (
        "bounding", "effective", "permitted", "ambient", "inheritable")}
    bundle.write()
    output = Output()
    container = pod.handler.create("privileged", str(bundle.path), output.stdio)
    output.handed_over(pod.loop)
    container.start()
    pod.loop.until(lambda: "CapEff" in output.text(), what="its capabilities")
    exec_output = Output()
    key = container.exec({"args": ["true"], "cwd": "/", "env": ["PATH=/bin"],
                          "user": {"uid": 0, "gid": 0},
                          "capabilities": {"bounding": every, "effective": every,
                                           "permitted": every}}, exec_output.stdio)
    exec_output.handed_over(pod.loop)
    pod.loop.until(lambda: key in pod.loop.exec_exits, what="the exec")
    assert pod.loop.exec_exits[key] == 0, exec_output.text("stderr")
