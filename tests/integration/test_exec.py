"""`exec`: another process in a running container, in all its namespaces and its cgroup."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def running(runtime, bundle):
    bundle.config["hostname"] = "exec-test"
    bundle.config["process"]["env"].append("FROM_CONFIG=yes")
    bundle.config["process"]["cwd"] = "/tmp"
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    return cid


def test_exec_joins_the_pid_namespace_cgroup_and_the_rest(runtime, running):
    init = runtime.state(running)["pid"]
    out = runtime("exec", running, "sh", "-c",
                  "hostname; echo $FROM_CONFIG; pwd; ps -o pid,comm; cat /proc/self/cgroup; "
                  "readlink /proc/self/ns/net").stdout.splitlines()
    assert out[:3] == ["exec-test", "yes", "/tmp"]
    assert any(line.split() == ["1", "sleep"] for line in out), "sees the container's PID 1"
    with open(f"/proc/{init}/cgroup") as f:
        init_cgroups = f.read().splitlines()
    # Every hierarchy's line (v1), or the one "0::/..." line (v2), is the init's.
    assert [line for line in out if re.match(r"\d+:[\w,=]*:/", line)] == init_cgroups
    net = os.readlink(f"/proc/{init}/ns/net")
    assert net in out


def test_exec_passes_the_exit_status_and_output(runtime, running):
    result = runtime("exec", running, "sh", "-c", "echo out; echo err >&2; exit 9", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (9, "out\n", "err\n")


def test_exec_flags_env_cwd_user_groups_caps_nnp(runtime, running):
    out = runtime("exec", "--env", "A=1", "-e", "B=two words", "--cwd", "/etc",
                  "--user", "1000:1000", "-g", "10", "--additional-gids", "100",
                  "--no-new-privs", running,
                  "sh", "-c", 'echo "$A|$B"; pwd; id; grep -E "NoNewPrivs|CapEff" '
                              '/proc/self/status').stdout.splitlines()
    assert out[0] == "1|two words" and out[1] == "/etc"
    assert out[2].startswith("uid=1000(corral) gid=1000(corral) groups=10(wheel),100(users)")
    status = dict(line.split(":\t") for line in out[3:])
    assert status["NoNewPrivs"] == "1"
    assert status["CapEff"] == "0000000000000000"  # a non-root user keeps no capabilities

    root = runtime("exec", "--cap", "CAP_NET_ADMIN", running, "grep", "CapEff",
                   "/proc/self/status").stdout
    assert int(root.split()[1], 16) & (1 << 12)  # CAP_NET_ADMIN added to the config's set


def test_exec_with_a_process_json(runtime, running, tmp_path):
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh", "-c", "echo $X; id -u"], "cwd": "/",
                                   "env": ["X=from-json", "PATH=/bin"],
                                   "user": {"uid": 1000, "gid": 1000}}))
    out = runtime("exec", "--process", str(process), running).stdout.split()
    assert out == ["from-json", "1000"]


def test_exec_detached_with_a_pid_file(runtime, running, tmp_path):
    pid_file = tmp_path / "exec.pid"
    runtime("exec", "--detach", "--pid-file", str(pid_file), running, "sleep", "1000")
    pid = int(pid_file.read_text())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sleep"
    pids = json.loads(runtime("ps", "--format", "json", running).stdout)
    assert pid in pids


def test_exec_forwards_signals(runtime, running):
    proc = subprocess.Popen(runtime.cmd("exec", running, "sh", "-c",
                                        'trap "exit 6" TERM; echo ready; '
                                        'while :; do sleep 0.05; done'),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 6
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("argv, message", [
    (["nosuchprogram"], "executable file not found"),
    (["--user", "1000", "--cap", "CAP_BOGUS", "true"], "unknown capability"),
    (["--tty", "--detach", "sh"], "cannot allocate tty"),
    ([], "process args cannot be empty"),
])
def test_exec_errors_are_clear(runtime, running, argv, message):
    """runc's status for a failed exec is 255 (1 is the process's own)."""
    result = runtime("exec", *argv[:-1], running, *argv[-1:], check=False) if argv else \
        runtime("exec", running, check=False)
    assert result.returncode == 255 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    pids = json.loads(runtime("ps", "--format", "json", running).stdout)
    assert len(pids) == 1, "a failed exec leaves no process behind"


def test_exec_in_a_stopped_container_is_refused(runtime, bundle):
    bundle.write(["true"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    runtime.wait_stopped(cid)
    result = runtime("exec", cid, "true", check=False)
    assert result.returncode == 255 and "stopped" in result.stderr
