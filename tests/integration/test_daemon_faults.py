"""corrald's own faults: a second daemon on the same socket or root."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import running_corrald, short_base


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

