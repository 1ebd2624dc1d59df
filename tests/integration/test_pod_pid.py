"""A pod's PID namespace over corrald's real socket (CRI NamespaceOption.pid).

POD: the containers share one PID namespace whose PID 1 is the pod's init
(shim/podinit.py), as containerd's pause container: they see each other's
processes, orphans are reaped, a `sleep` without a signal handler stops on
SIGTERM (it is not PID 1), and the init shows a container nothing of the
host.  CONTAINER: each container's process is its own PID 1.  NODE: the
host's PID 1.  Stopping and removing the pod leaves no process of it; the
init survives a corrald restart and dies with its shim.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import NOTHING_LEFT, remove_every_pod, running_corrald

TITLE = b"corral-pod-init\0"


@pytest.fixture(scope="module")
def daemon():
    with running_corrald("corraltpid", "10.99.72.0/24") as daemon:
        yield daemon


@pytest.fixture(autouse=True)
def _clean(daemon):
    yield
    if not daemon.running():
        daemon.start()
    remove_every_pod(daemon)


def run_pod(daemon, name: str, mode: int, seccomp: int | None = None):
    config = daemon.pod_config(name)
    config.linux.security_context.namespace_options.pid = mode
    if seccomp is not None:
        config.linux.security_context.seccomp.profile_type = seccomp
    reply = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    return reply.pod_sandbox_id, config


def start(daemon, pod_id: str, config, name: str, args: list[str]) -> str:
    container_id = daemon.create_container(pod_id, config, name, args)
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    return container_id


def exec_sync(daemon, container_id: str, *cmd: str) -> bytes:
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id,
                                                            cmd=list(cmd), timeout=20))
    assert reply.exit_code == 0, reply.stderr
    return reply.stdout


def processes_seen(daemon, container_id: str) -> dict[int, tuple[str, int, bytes]]:
    """What a container sees in /proc: pid → (state, ppid, cmdline)."""
    # Two lines a process; newlines in a name or command line (the host's, in NODE mode)
    # become spaces.
    script = ('for d in /proc/[0-9]*; do '
              's=$(tr "\\n" " " 2>/dev/null <$d/stat) && [ -n "$s" ] || continue; '
              'echo "$s"; tr "\\0\\n" "  " 2>/dev/null <$d/cmdline; echo; done')
    lines = exec_sync(daemon, container_id, "sh", "-c", script).splitlines()
    seen = {}
    for stat, cmdline in zip(lines[::2], lines[1::2], strict=True):
        pid, rest = stat.split(b" (", 1)
        fields = rest.rsplit(b") ", 1)[1].split()
        seen[int(pid)] = (fields[0].decode(), int(fields[1]), cmdline.strip())
    return seen


def pid_pin(daemon, pod_id: str) -> str:
    reply = daemon.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id, verbose=True))
    return json.loads(reply.info["info"])["namespaces"]["pid"]


def host_pids_in(namespace_inode: int) -> set[int]:
    """The host's view: every process in the PID namespace with that inode."""
    pids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/pid").st_ino == namespace_inode:
                    pids.add(int(name))
            except OSError:
                pass
    return pids


def pod_init(namespace_inode: int) -> int:
    """The host PID of the namespace's PID 1."""
    for pid in host_pids_in(namespace_inode):
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        if nspid[-1] == "1":
            return pid
    raise AssertionError("the pod's PID namespace has no PID 1")


def wait_until(predicate, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


# --- POD ----------------------------------------------------------------------------------------
def test_containers_share_one_namespace_whose_pid_1_is_the_pod_init(daemon):
    pod_id, config = run_pod(daemon, "shared", api_pb2.POD)
    first = start(daemon, pod_id, config, "first", ["sleep", "1001"])
    second = start(daemon, pod_id, config, "second", ["sleep", "1002"])
    for container_id in (first, second):
        assert exec_sync(daemon, container_id, "cat", "/proc/1/cmdline") == TITLE
        commands = {cmdline for _, _, cmdline in processes_seen(daemon, container_id).values()}
        assert {b"sleep 1001", b"sleep 1002"} <= commands  # each sees the other's process
    # The host sees the same: both sleeps and the init in one namespace, and in no other.
    inode = os.stat(pid_pin(daemon, pod_id)).st_ino
    commands = set()
    for pid in host_pids_in(inode):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            commands.add(f.read())
    assert {TITLE, b"sleep\x001001\x00", b"sleep\x001002\x00"} <= commands


def test_the_pod_init_shows_a_container_nothing_of_the_host(daemon):
    pod_id, config = run_pod(daemon, "bare", api_pb2.POD,
                             seccomp=api_pb2.SecurityProfile.RuntimeDefault)
    container_id = start(daemon, pod_id, config, "looker", ["sleep", "1000"])
    mountinfo = exec_sync(daemon, container_id, "cat", "/proc/1/mountinfo").decode()
    (line,) = mountinfo.splitlines()  # one mount: its empty root, no host mount
    assert line.split()[4] == "/" and " - tmpfs " in line and " ro," in f" {line.split()[5]},"
    status = dict(line.split(":\t", 1) for line in
                  exec_sync(daemon, container_id, "cat", "/proc/1/status").decode().splitlines()
                  if ":\t" in line)
    assert status["Uid"].split() == ["65535"] * 4 and status["Gid"].split() == ["65535"] * 4
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # the pod's RuntimeDefault profile
    # Not dumpable: its root, cwd, fds and environment are closed to the container.
    listing = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["ls", "/proc/1/root/", "/proc/1/fd/"], timeout=20))
    assert listing.exit_code != 0 and b"Permission denied" in listing.stderr
    # Its network is the pod's (the same interfaces as the container's), not the host's.
    assert interfaces(exec_sync(daemon, container_id, "cat", "/proc/1/net/dev")) == \
        interfaces(exec_sync(daemon, container_id, "cat", "/proc/self/net/dev"))
    with open("/proc/self/net/dev", "rb") as f:
        assert interfaces(f.read()) != interfaces(
            exec_sync(daemon, container_id, "cat", "/proc/1/net/dev"))


def interfaces(net_dev: bytes) -> set[bytes]:
    return {line.split(b":")[0].strip() for line in net_dev.splitlines()[2:]}


def test_an_unconfined_pod_gives_its_init_no_seccomp_filter(daemon):
    pod_id, config = run_pod(daemon, "loose", api_pb2.POD,
                             seccomp=api_pb2.SecurityProfile.Unconfined)
    container_id = start(daemon, pod_id, config, "looker", ["sleep", "1000"])
    status = exec_sync(daemon, container_id, "cat", "/proc/1/status").decode()
    assert "Seccomp:\t0" in status


def test_orphans_of_a_container_are_reaped_by_the_pod_init(daemon):
    pod_id, config = run_pod(daemon, "reaper", api_pb2.POD)
    container_id = start(daemon, pod_id, config, "main", ["sleep", "1000"])
    # `parent` forks `true`, which exits, then execs sleep, which never waits: `true`
    # is a zombie.  The exec'd shell exits at once, so `parent` is an orphan (the pod
    # init's), and when it ends, so is the zombie.
    script = 'sh -c "true & exec sleep 1.5" >/dev/null 2>&1 & echo $!'
    parent = int(exec_sync(daemon, container_id, "sh", "-c", script))
    deadline = time.monotonic() + 1.0
    zombies = []
    while not zombies and time.monotonic() < deadline:
        zombies = [pid for pid, (state, ppid, _) in processes_seen(daemon, container_id).items()
                   if state == "Z" and ppid == parent]
    assert zombies, "no zombie was made"
    assert processes_seen(daemon, container_id)[parent][1] == 1  # reparented to the init

    def reaped():
        seen = processes_seen(daemon, container_id)
        return parent not in seen and not any(state == "Z" for state, _, _ in seen.values())

    wait_until(reaped, 5.0, "the orphan and its zombie child to be reaped")


def test_stop_container_of_a_sleep_returns_on_sigterm(daemon):
    """`sleep` has no SIGTERM handler; as PID 1 of a namespace it would ignore SIGTERM and
    StopContainer would wait out its timeout."""
    pod_id, config = run_pod(daemon, "stopper", api_pb2.POD)
    container_id = start(daemon, pod_id, config, "sleeper", ["sleep", "1000"])
    started = time.monotonic()
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id,
                                                              timeout=30))
    assert time.monotonic() - started < 3.0
    status = daemon.container_state(container_id)
    assert (status.state, status.exit_code) == (api_pb2.CONTAINER_EXITED, 128 + signal.SIGTERM)


def test_a_container_cannot_end_the_pod_by_signalling_pid_1(daemon):
    pod_id, config = run_pod(daemon, "kill1", api_pb2.POD)
    container_id = start(daemon, pod_id, config, "killer", ["sleep", "1000"])
    for signum in ("TERM", "INT", "KILL", "HUP"):
        daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id,
                                                        cmd=["kill", f"-{signum}", "1"]))
    time.sleep(0.3)
    assert daemon.container_state(container_id).state == api_pb2.CONTAINER_RUNNING
    assert exec_sync(daemon, container_id, "cat", "/proc/1/cmdline") == TITLE


def test_the_rest_of_a_container_ends_with_its_main_process(daemon):
    """Without its own PID namespace, a container's init ending does not end its other
    processes; the shim kills them through the cgroup (as containerd's shim does)."""
    pod_id, config = run_pod(daemon, "leftover", api_pb2.POD)
    keeper = start(daemon, pod_id, config, "keeper", ["sleep", "1000"])
    container_id = start(daemon, pod_id, config, "brief",
                         ["sh", "-c", "sleep 1003 & sleep 0.5"])
    daemon.wait_exited(container_id)

    def background_gone():
        return not any(cmdline == b"sleep 1003"
                       for _, _, cmdline in processes_seen(daemon, keeper).values())

    wait_until(background_gone, 5.0, "the container's background sleep to be killed")


def test_nothing_of_the_pod_is_left_after_stop_and_remove(daemon):
    pod_id, config = run_pod(daemon, "gone", api_pb2.POD)
    container_id = start(daemon, pod_id, config, "main", ["sleep", "1000"])
    # A process that outlives its container's main process's parent, and one of an exec.
    exec_sync(daemon, container_id, "sh", "-c", "sleep 1004 >/dev/null 2>&1 &")
    pin = pid_pin(daemon, pod_id)
    inode = os.stat(pin).st_ino
    init = pod_init(inode)
    assert len(host_pids_in(inode)) >= 3
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert host_pids_in(inode) == set()
    assert not os.path.exists(f"/proc/{init}") or _not_the_init(init)
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_NOTREADY
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not os.path.exists(pin)
    assert daemon.leftovers() == NOTHING_LEFT


def test_a_pod_whose_init_is_killed_is_not_ready(daemon):
    """As a sandbox whose pause container died: its namespace and containers are gone."""
    pod_id, config = run_pod(daemon, "headless", api_pb2.POD)
    container_id = start(daemon, pod_id, config, "main", ["sleep", "1000"])
    inode = os.stat(pid_pin(daemon, pod_id)).st_ino
    os.kill(pod_init(inode), signal.SIGKILL)
    wait_until(lambda: host_pids_in(inode) == set(), 5.0, "the pod's processes to end")
    wait_until(lambda: daemon.container_state(container_id).state == api_pb2.CONTAINER_EXITED,
               5.0, "the container to be reported exited")
    listed = daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [pod.state for pod in listed if pod.id == pod_id] == [api_pb2.SANDBOX_NOTREADY]
    with pytest.raises(grpc.RpcError) as failure:
        daemon.create_container(pod_id, config, "late", ["sleep", "1000"])
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _not_the_init(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() != TITLE
    except OSError:
        return True


# --- CONTAINER and NODE -------------------------------------------------------------------------
def test_container_mode_makes_the_container_process_pid_1(daemon):
    pod_id, config = run_pod(daemon, "own", api_pb2.CONTAINER)
    first = start(daemon, pod_id, config, "first", ["sleep", "1001"])
    second = start(daemon, pod_id, config, "second", ["sleep", "1002"])
    assert exec_sync(daemon, first, "cat", "/proc/1/cmdline") == b"sleep\x001001\x00"
    assert exec_sync(daemon, second, "cat", "/proc/1/cmdline") == b"sleep\x001002\x00"
    commands = {cmdline for _, _, cmdline in processes_seen(daemon, first).values()}
    assert b"sleep 1002" not in commands
    with pytest.raises(KeyError):
        pid_pin(daemon, pod_id)  # no pod init, no pinned PID namespace


def test_node_mode_shows_the_hosts_pid_1(daemon):
    pod_id, config = run_pod(daemon, "host", api_pb2.NODE)
    container_id = start(daemon, pod_id, config, "main", ["sleep", "1000"])
    with open("/proc/1/cmdline", "rb") as f:
        host_init = f.read()
    assert exec_sync(daemon, container_id, "cat", "/proc/1/cmdline") == host_init
    assert os.getpid() in processes_seen(daemon, container_id)  # this test, on the host


# --- recovery -----------------------------------------------------------------------------------
def test_the_pod_init_survives_a_corrald_restart(daemon):
    pod_id, config = run_pod(daemon, "restart", api_pb2.POD)
    before = start(daemon, pod_id, config, "before", ["sleep", "1001"])
    inode = os.stat(pid_pin(daemon, pod_id)).st_ino
    init = pod_init(inode)
    daemon.kill(signal.SIGKILL)
    time.sleep(0.3)
    daemon.start()
    assert pod_init(inode) == init
    after = start(daemon, pod_id, config, "after", ["sleep", "1002"])
    assert exec_sync(daemon, after, "cat", "/proc/1/cmdline") == TITLE
    commands = {cmdline for _, _, cmdline in processes_seen(daemon, after).values()}
    assert b"sleep 1001" in commands  # the same namespace as the container from before
    assert daemon.container_state(before).state == api_pb2.CONTAINER_RUNNING
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert host_pids_in(inode) == set()


def test_the_pod_init_dies_with_its_shim_and_a_new_shim_makes_a_new_one(daemon):
    pod_id, config = run_pod(daemon, "shimless", api_pb2.POD)
    start(daemon, pod_id, config, "before", ["sleep", "1001"])
    inode = os.stat(pid_pin(daemon, pod_id)).st_ino
    init = pod_init(inode)
    daemon.kill(signal.SIGKILL)
    for pid in daemon.shim_pids():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: host_pids_in(inode) == set(), 5.0,
               "the pod's processes to end with its shim")
    assert _not_the_init(init)
    daemon.start()
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_READY
    after = start(daemon, pod_id, config, "after", ["sleep", "1002"])
    assert exec_sync(daemon, after, "cat", "/proc/1/cmdline") == TITLE
    # A new init (the old namespace is gone: its inode number may be reused).
    assert pod_init(os.stat(pid_pin(daemon, pod_id)).st_ino) != init


@pytest.mark.parametrize("delay", [0.005, 0.015, 0.03])
def test_kill_during_run_pod_sandbox_leaves_nothing(daemon, delay):
    errors = []

    def run():
        try:
            run_pod(daemon, f"interrupted-{delay}", api_pb2.POD)
        except grpc.RpcError as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(delay)
    daemon.kill(signal.SIGKILL)
    thread.join(30)
    time.sleep(0.2)  # a shim's start_init under way when corrald died finishes
    inits = {pid for pid in _pod_inits() if _parent(pid) in daemon.shim_pids()}
    daemon.start()
    remove_every_pod(daemon)
    assert not inits & set(_pod_inits())


def _pod_inits() -> list[int]:
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and not _not_the_init(int(name))]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("PPid:")).split()[1])
    except (OSError, StopIteration):
        return 0
