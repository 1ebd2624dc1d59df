"""corrald's own faults: a second daemon on the same socket or root, and what is left of
corrald's children when it stops or dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod, running_corrald, short_base


@pytest.fixture
def daemon():
    with running_corrald("corraltf", "10.99.70.0/24") as daemon:
        yield daemon


def second_corrald(daemon, *args: str) -> subprocess.CompletedProcess:
    """Run another corrald (with the first one's config) to completion."""
    return subprocess.run([sys.executable, "-m", "corral.daemon.main", "--config",
                           str(daemon.config), *args], capture_output=True, text=True,
                          timeout=60)


def assert_first_still_serves(daemon) -> None:
    assert daemon.socket.is_socket()
    version = daemon.runtime.Version(api_pb2.VersionRequest())
    assert version.runtime_name == "corral"
    assert daemon.running()


@pytest.mark.parametrize("shared", ["socket", "root", "state"])
def test_a_second_corrald_refuses_to_start(daemon, shared):
    other = short_base()
    try:
        paths = {"root": str(other / "root"), "state": str(other / "state"),
                 "listen": f"unix://{other / 'state' / 'corral.sock'}"}
        if shared == "socket":
            paths["listen"] = f"unix://{daemon.socket}"
        else:
            paths[shared] = str(getattr(daemon, shared))
        done = second_corrald(daemon, "--root", paths["root"], "--state", paths["state"],
                              "--listen", paths["listen"])
        assert done.returncode == 1, done.stderr
        (line,) = done.stderr.splitlines()
        lock = {"socket": f"{daemon.socket}.lock", "root": f"{daemon.root}/corrald.lock",
                "state": f"{daemon.state}/corrald.lock"}[shared]
        assert line == (f"corrald: another corrald (pid {daemon.process.pid}) serves this "
                        f"{'state dir' if shared == 'state' else shared}: it holds {lock}")
        assert_first_still_serves(daemon)
        # It made nothing: no socket, store or zygote of its own.
        assert not (other / "state" / "corral.sock").exists()
        assert not (other / "state" / "zygote.sock").exists()
        assert not (other / "root" / "metadata.db").exists()
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_socket_something_answers_on_is_not_taken(daemon, tmp_path):
    """A listener that holds no lock (another program, an older corrald) keeps its socket."""
    import socket

    other = short_base()
    path = other / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(1)
        done = second_corrald(daemon, "--root", str(other / "root"), "--state",
                              str(other / "state"), "--listen", f"unix://{path}")
        assert done.returncode == 1
        assert done.stderr == f"corrald: {path} is in use: something else listens on it\n"
        assert path.is_socket()
    finally:
        listener.close()
        shutil.rmtree(other, ignore_errors=True)


def test_a_stale_socket_is_replaced(daemon):
    """The socket of a daemon that died (SIGKILL: it could not remove it) is no obstacle."""
    daemon.kill(signal.SIGKILL)
    assert daemon.socket.is_socket()
    daemon.start()
    assert_first_still_serves(daemon)


# --- the shim zygote ------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def zygotes_of(daemon) -> list[int]:
    """Live processes whose command line is this daemon's zygote's."""
    sock = str(daemon.state / "zygote.sock").encode()
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
            and b"corral.shim.zygote" in cmdline(int(pid)) and sock in cmdline(int(pid))
            and alive(int(pid))]


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
def test_the_zygote_ends_with_corrald_and_its_shims_live_on(daemon, signum):
    pod_id, pod_config = daemon.run_pod("kept")
    container_id = daemon.create_container(pod_id, pod_config, "sleeper", ["sleep", "600"])
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    (zygote,) = [pid for pid in children(daemon.process.pid)
                 if b"corral.shim.zygote" in cmdline(pid)]
    (shim,) = daemon.shim_pids()
    # The shim says what it is: it is not taken for a zygote when it outlives corrald.
    assert cmdline(shim) == f"corral.shim {pod_id}".encode()[:len(cmdline(zygote)) - 2] + b"\0"
    try:
        daemon.kill(signum)
        assert wait_gone(zygote), f"zygote {zygote} outlived corrald"
        assert alive(shim)
        assert zygotes_of(daemon) == []
        daemon.start()
        assert daemon.container_state(container_id).state == api_pb2.CONTAINER_RUNNING
        assert daemon.shim_pids() == [shim]
    finally:
        if alive(zygote):
            os.kill(zygote, signal.SIGKILL)
    remove_every_pod(daemon)


# corrald's stand-in: start a zygote, then die at once, under a subreaper (a supervisor, a
# container's init), so the orphaned zygote's parent is not PID 1.  Prints its PID.
ORPHAN_A_ZYGOTE = """
import ctypes, os, signal, sys, threading
from corral.shim.launch import ShimLauncher

ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
parent = os.fork()
if parent == 0:
    launcher = ShimLauncher(sys.argv[1], sys.argv[2])
    threading.Thread(target=launcher._start_zygote, daemon=True).start()
    while launcher.process is None:
        pass
    print(launcher.process.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # still warming up
os.waitpid(parent, 0)
zygote = int(sys.stdin.readline())
deadline = __import__("time").monotonic() + 15
while __import__("time").monotonic() < deadline:
    if os.waitpid(zygote, os.WNOHANG)[0]:
        print("gone", flush=True)
        sys.exit(0)
    __import__("time").sleep(0.05)
os.kill(zygote, signal.SIGKILL)
os.waitpid(zygote, 0)
print("outlived its parent", flush=True)
"""


def test_a_zygote_orphaned_while_warming_up_ends(tmp_path):
    """corrald killed before the zygote is ready, under a subreaper: the zygote ends too."""
    helper = subprocess.Popen([sys.executable, "-c", ORPHAN_A_ZYGOTE,
                               str(tmp_path / "zygote.sock"), str(tmp_path / "zygote.log")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        zygote = helper.stdout.readline()
        helper.stdin.write(zygote)
        helper.stdin.flush()
        assert helper.stdout.readline() == "gone\n"
    finally:
        helper.kill()
        helper.wait()


def test_sigterm_always_stops_corrald(daemon):
    """The kernel may hand SIGTERM to any of corrald's threads: it must stop all the same."""
    for _ in range(15):
        for _ in range(20):  # busy gRPC threads, the likeliest to take the signal
            daemon.runtime.Version(api_pb2.VersionRequest())
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        try:
            assert daemon.process.wait(10) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError("corrald ignored SIGTERM") from None
        assert time.monotonic() - started < 8
        daemon.channel.close()
        daemon.start()
    assert_first_still_serves(daemon)
