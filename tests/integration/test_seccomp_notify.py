"""SCMP_ACT_NOTIFY: the listener and the container process state reach the seccomp agent
at linux.seccomp.listenerPath, as runc sends them, for `run` and `exec`, with and
without noNewPrivileges.  The agent is tests/integration/seccomp_agent.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

AGENT = Path(__file__).with_name("seccomp_agent.py")
ENOMEDIUM = 123


class Agent:
    def __init__(self, tmp_path: Path, *extra: str):
        self.socket = str(tmp_path / "agent.sock")
        self.record = tmp_path / "agent-states.jsonl"
        self.process = subprocess.Popen([sys.executable, str(AGENT), self.socket,
                                         str(self.record), *extra])
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            assert self.process.poll() is None, "the agent exited"
            assert time.monotonic() < deadline, "the agent does not listen"
            time.sleep(0.02)

    def states(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def agent(tmp_path):
    running = Agent(tmp_path)
    yield running
    running.stop()


def notify_profile(agent: Agent | None, *names: str, metadata: str = "bar") -> dict:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": metadata,
               "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_X86_64"],
               "syscalls": [{"names": list(names), "action": "SCMP_ACT_NOTIFY"}]}
    if agent is not None:
        profile["listenerPath"] = agent.socket
    return profile


@pytest.fixture(params=[False, True], ids=["without-nnp", "with-nnp"])
def no_new_privs(request) -> bool:
    return request.param


def run(runtime, bundle, script: str, **kwargs):
    bundle.write(["sh", "-c", script])
    return runtime.run_capture(bundle, **kwargs)


def test_run_the_agent_answers_mkdir(runtime, bundle, agent, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.linux["seccomp"] = notify_profile(agent, "mkdir")
    result = run(runtime, bundle, "mkdir /dev/shm/foo && stat -c %F /dev/shm/foo-bar && "
                 "! test -e /dev/shm/foo && ls -l /proc/self/fd/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("directory\n")
    assert "seccomp" not in result.stdout  # no listener fd reached the program
    (received,) = agent.states()
    state = received["state"]
    assert received["fd_count"] == 1 and state["fds"] == ["seccompFd"]
    assert state["metadata"] == "bar" and state["ociVersion"]
    inner = state["state"]
    assert inner["status"] == "creating" and inner["pid"] == state["pid"] > 0
    assert inner["id"] == runtime.ids[-1] and inner["bundle"] == str(bundle.path)


def test_exec_the_agent_answers_mkdir(runtime, bundle, agent, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.linux["seccomp"] = notify_profile(agent, "mkdir")
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    init_pid = runtime.state(cid)["pid"]
    result = runtime("exec", cid, "sh", "-c", "mkdir /dev/shm/foo && stat /dev/shm/foo-bar",
                     check=False)
    assert result.returncode == 0, result.stderr
    init_state, exec_state = (r["state"] for r in agent.states())
    assert init_state["pid"] == init_pid
    assert exec_state["pid"] not in (0, init_pid)
    assert exec_state["state"]["status"] == "running"
    assert exec_state["state"]["pid"] == init_pid and exec_state["state"]["id"] == cid
    runtime("delete", "--force", cid)


def test_the_syscalls_the_runtime_itself_needs_may_notify(runtime, bundle, agent,
                                                          no_new_privs):
    # The init and the exec'd process read, close and exec after the filter is
    # loaded: each waits for the agent, which lets them through.
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.linux["seccomp"] = notify_profile(agent, "execve", "openat", "open", "read",
                                             "close")
    bundle.write(["true"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    assert runtime("exec", cid, "cat", "/etc/passwd", check=False).returncode == 0
    runtime("delete", "--force", cid)


def test_the_agent_answers_with_an_errno(runtime, bundle, agent):
    bundle.linux["seccomp"] = notify_profile(agent, "chmod", "fchmod", "fchmodat")
    result = run(runtime, bundle, "touch /dev/shm/foo && chmod 777 /dev/shm/foo")
    assert result.returncode != 0
    assert "chmod" in result.stderr and "No medium found" in result.stderr


def test_mkdir_fails_with_the_errno_the_agent_chooses(runtime, bundle, tmp_path):
    picky = Agent(tmp_path, "--mkdir-errno", str(ENOMEDIUM))
    try:
        bundle.linux["seccomp"] = notify_profile(picky, "mkdir")
        result = run(runtime, bundle, "mkdir /dev/shm/foo")
    finally:
        picky.stop()
    assert result.returncode != 0 and "No medium found" in result.stderr


def test_a_listener_path_without_notify_rules_is_fine(runtime, bundle, agent):
    bundle.linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                               "listenerPath": agent.socket, "listenerMetadata": "bar"}
    result = run(runtime, bundle, "mkdir /dev/shm/foo && stat /dev/shm/foo")
    assert result.returncode == 0, result.stderr
    assert agent.states() == []


@pytest.mark.parametrize("names, message", [
    (["write"], "SCMP_ACT_NOTIFY cannot be used for the write syscall"),
    (["mkdir", "write"], "SCMP_ACT_NOTIFY cannot be used for the write syscall"),
])
def test_notify_is_refused_for_write(runtime, bundle, agent, names, message):
    bundle.linux["seccomp"] = notify_profile(agent, *names)
    result = run(runtime, bundle, "true")
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert agent.states() == []


def test_notify_as_the_default_action_is_refused(runtime, bundle, agent):
    bundle.linux["seccomp"] = {"defaultAction": "SCMP_ACT_NOTIFY",
                               "listenerPath": agent.socket}
    result = run(runtime, bundle, "true")
    assert result.returncode != 0
    assert "SCMP_ACT_NOTIFY cannot be used as default action" in result.stderr


@pytest.mark.parametrize("listener_path, message", [
    (None, "linux.seccomp.listenerPath"),
    ("", "linux.seccomp.listenerPath"),
    ("/some-non-existing-listener-path.sock",
     "failed to connect with seccomp agent specified in the seccomp profile"),
    ("@no-such-abstract-socket",
     "failed to connect with seccomp agent specified in the seccomp profile"),
])
def test_no_agent_is_a_clear_error(runtime, bundle, listener_path, message):
    profile = notify_profile(None, "mkdir")
    if listener_path is not None:
        profile["listenerPath"] = listener_path
    bundle.linux["seccomp"] = profile
    started = time.monotonic()
    result = run(runtime, bundle, "echo the-program-ran")
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "the-program-ran" not in result.stdout
    assert time.monotonic() - started < 5  # the init is not left waiting


def test_an_agent_that_died_leaves_enosys(runtime, bundle, agent):
    # Once no listener is left, the kernel answers notified syscalls ENOSYS.
    bundle.linux["seccomp"] = notify_profile(agent, "mkdir")
    bundle.write(["sh", "-c", "while ! test -e /dev/shm/go; do sleep 0.05; done; "
                              "mkdir /dev/shm/foo"])
    cid = runtime.new_id()
    outcome = {}
    foreground = threading.Thread(target=lambda: outcome.update(
        result=runtime("run", "--bundle", str(bundle.path), cid, check=False)))
    foreground.start()
    try:
        deadline = time.monotonic() + 20
        while not agent.states():
            assert time.monotonic() < deadline, "the agent got no listener"
            time.sleep(0.05)
        agent.stop()
        init_pid = agent.states()[0]["state"]["pid"]
        Path(f"/proc/{init_pid}/root/dev/shm/go").touch()
    finally:
        foreground.join(timeout=30)
    result = outcome["result"]
    assert result.returncode != 0
    assert "/dev/shm/foo" in result.stderr and "Function not implemented" in result.stderr


def test_start_container_hooks_get_no_listener(runtime, bundle, agent):
    bundle.linux["seccomp"] = notify_profile(agent, "mkdir")
    bundle.config["hooks"] = {"startContainer": [{
        "path": "/bin/sh",
        "args": ["sh", "-c", "n=$(ls /proc/self/fd/ | wc -l); [ $n -eq 4 ] || "
                             "{ echo fds: $n; ls -l /proc/self/fd/; exit 1; }"]}]}
    bundle.write(["true"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stdout + result.stderr


def test_features_lists_notify(runtime):
    features = json.loads(runtime("features").stdout)
    assert "SCMP_ACT_NOTIFY" in features["linux"]["seccomp"]["actions"]
