"""process.terminal with --console-socket: the pty master arrives over SCM_RIGHTS, as from runc."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import time

import pytest

pytestmark = pytest.mark.root


class ConsoleReceiver:
    """What containerd and podman do: listen, accept, receive the pty master."""

    def __init__(self, path):
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(20)

    def receive(self) -> int:
        conn, _ = self.listener.accept()
        with conn:
            name, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        assert name == b"/dev/ptmx" and len(fds) == 1
        return fds[0]

    def close(self):
        self.listener.close()


@pytest.fixture
def receiver(tmp_path):
    r = ConsoleReceiver(tmp_path / "console.sock")
    yield r
    r.close()


def read_until(master: int, text: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in {seen!r}"
        if select.select([master], [], [], left)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            seen += chunk
    assert text in seen, seen
    return seen


@contextlib.contextmanager
def started_with_console(runtime, bundle, receiver):
    """create with --console-socket, start; the container ID and the pty master."""
    cid = runtime.new_id()
    runtime("create", "--console-socket", receiver.path, "--bundle", str(bundle.path), cid)
    master = receiver.receive()
    try:
        runtime("start", cid)
        yield cid, master
        runtime.wait_stopped(cid)
    finally:
        os.close(master)
    runtime("delete", cid)


@contextlib.contextmanager
def exec_with_console(runtime, receiver, *args):
    """A detached `exec --tty` (runc's rule for a console socket); its pty master."""
    proc = subprocess.Popen(runtime.cmd("exec", "--tty", "--detach", "--console-socket",
                                        receiver.path, *args))
    master = receiver.receive()
    try:
        yield master
        assert proc.wait(timeout=20) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_create_sends_the_pty_master_and_the_container_uses_it(runtime, bundle, receiver):
    bundle.config["process"]["terminal"] = True
    bundle.config["process"]["consoleSize"] = {"height": 33, "width": 111}
    bundle.write(["sh"])
    with started_with_console(runtime, bundle, receiver) as (_, master):
        os.write(master, b"tty; stty size; echo answer=$((6*7))\n")
        out = read_until(master, b"answer=42")
        assert b"/dev/pts/0" in out and b"33 111" in out
        os.write(master, b"exit 3\n")


def test_exec_with_a_tty(runtime, bundle, receiver):
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    with exec_with_console(runtime, receiver, cid, "sh", "-c", "tty; echo done") as master:
        assert b"/dev/pts/" in read_until(master, b"done")
    runtime("delete", "--force", cid)


def test_terminal_without_console_socket_is_a_clear_error(runtime, bundle, receiver):
    bundle.config["process"]["terminal"] = True
    bundle.write(["sh"])
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1 and "cannot allocate tty" in result.stderr
    assert "without setting console socket" in result.stderr
    bundle.config["process"]["terminal"] = False
    bundle.write()
    result = runtime("create", "--console-socket", receiver.path, "--bundle", str(bundle.path),
                     cid, check=False)
    assert result.returncode == 1 and "cannot use console socket" in result.stderr


def test_run_in_the_foreground_relays_its_own_terminal(runtime, bundle):
    import pty

    bundle.config["process"]["terminal"] = True
    bundle.write(["sh"])
    cid = runtime.new_id()
    master, slave = pty.openpty()
    proc = subprocess.Popen(runtime.cmd("run", "--bundle", str(bundle.path), cid),
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        # Typed ahead, before the runtime set up the relay: nothing may be lost.
        os.write(master, b"tty; echo answer=$((6*7)); exit 5\n")
        out = read_until(master, b"answer=42")
        assert b"/dev/pts/0" in out
        assert proc.wait(timeout=20) == 5
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("user", [{"uid": 0, "gid": 0}, {"uid": 1000, "gid": 100}])
def test_the_pty_belongs_to_the_user_and_the_tty_group(runtime, bundle, receiver, user):
    """As runc: the process's uid, and group 5 (tty) from the container's devpts."""
    bundle.config["process"]["terminal"] = True
    bundle.config["process"]["user"] = user
    bundle.write(["sh", "-c", "stat -c owner=%u:%g:end $(tty)"])
    with started_with_console(runtime, bundle, receiver) as (_, master):
        assert f"owner={user['uid']}:5:end".encode() in read_until(master, b":end")


def test_an_exec_pty_belongs_to_the_user_and_the_tty_group(runtime, bundle, receiver):
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    with exec_with_console(runtime, receiver, "--user", "1000:100", cid, "sh", "-c",
                           "stat -c owner=%u:%g $(tty); echo done") as master:
        assert b"owner=1000:5" in read_until(master, b"done")
    runtime("delete", "--force", cid)
