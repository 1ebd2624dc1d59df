"""The OCI lifecycle through `corral-runtime`, and every error leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import assert_nothing_left, cgroup_dirs

pytestmark = pytest.mark.root


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def test_create_start_kill_delete(runtime, bundle):
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    pid_file = bundle.path / "init.pid"
    runtime("create", "--bundle", str(bundle.path), "--pid-file", str(pid_file), cid)

    state = runtime.state(cid)
    assert state["status"] == "created"
    assert state["id"] == cid and state["bundle"] == str(bundle.path)
    assert state["pid"] == int(pid_file.read_text()) > 0
    assert {"ociVersion", "created", "owner", "annotations", "rootfs"} <= state.keys()
    # Created: the init waits before exec, still our runtime, not `sleep`.
    with open(f"/proc/{state['pid']}/cmdline", "rb") as f:
        assert b"sleep" not in f.read()
    assert cgroup_dirs(cid), "the cgroup exists from create on"

    runtime("start", cid)
    assert runtime.status(cid) == "running"
    wait_for(lambda: b"sleep" in open(f"/proc/{state['pid']}/cmdline", "rb").read())

    runtime("kill", cid, "KILL")
    runtime.wait_stopped(cid)
    assert runtime.state(cid)["pid"] == 0

    runtime("delete", cid)
    assert_nothing_left(runtime, cid)
    assert runtime("state", cid, check=False).returncode == 1


def test_a_container_that_exits_shows_stopped(runtime, bundle):
    bundle.write(["true"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    runtime("start", cid)
    runtime.wait_stopped(cid)
    runtime("delete", cid)
    assert_nothing_left(runtime, cid)


def test_run_detach_then_force_delete_a_running_container(runtime, bundle):
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    state = runtime.state(cid)
    assert state["status"] == "running"

    refused = runtime("delete", cid, check=False)
    assert refused.returncode == 1
    assert "not stopped" in refused.stderr and "running" in refused.stderr
    assert runtime.status(cid) == "running"

    runtime("delete", "--force", cid)
    assert_nothing_left(runtime, cid)
    assert not os.path.exists(f"/proc/{state['pid']}") or _is_zombie(state["pid"])


def test_kill_by_number_name_and_default(runtime, make_bundle):
    trap = ['sh', '-c', 'trap "exit 3" USR1; trap "exit 4" TERM; while :; do sleep 0.05; done']
    for how, args in (("10", ["kill"]), ("SIGUSR1", ["kill"]), ("usr1", ["kill"]),
                      ("TERM", ["kill"]), (None, ["kill"])):
        bundle = make_bundle(trap)
        cid = runtime.new_id()
        runtime("run", "--detach", "--bundle", str(bundle.path), cid)
        runtime(*args, cid, *([how] if how else []))
        runtime.wait_stopped(cid)
        runtime("delete", cid)
    bad = runtime("kill", runtime.new_id(), "NOPE", check=False)
    assert bad.returncode == 1


def test_kill_all_reaches_every_process(runtime, bundle):
    # As PID 1 of its namespace the shell ignores TERM; its children do not.
    bundle.write(["sh", "-c", "sleep 1000 & sleep 1000 & wait; sleep 1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    init = runtime.state(cid)["pid"]
    children = wait_for(lambda: _children(init) if len(_children(init)) == 2 else None)
    runtime("kill", "--all", cid, "TERM")
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") and not _is_zombie(p)
                             for p in children))
    assert runtime.status(cid) == "running"  # the init itself ignored TERM
    runtime("kill", "--all", cid, "KILL")
    runtime.wait_stopped(cid)
    runtime("delete", cid)


def test_list_table_quiet_and_json(runtime, make_bundle):
    ids = []
    for _ in range(2):
        bundle = make_bundle(["sleep", "1000"])
        cid = runtime.new_id()
        runtime("create", "--bundle", str(bundle.path), cid)
        ids.append(cid)
    runtime("start", ids[1])

    quiet = runtime("list", "-q").stdout.split()
    assert sorted(quiet) == sorted(ids)
    table = runtime("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows[ids[0]][2] == "created" and rows[ids[1]][2] == "running"
    listed = {s["id"]: s for s in json.loads(runtime("list", "--format", "json").stdout)}
    assert listed[ids[0]]["status"] == "created" and listed[ids[1]]["owner"] == "root"
    for cid in ids:
        runtime("delete", "--force", cid)
    assert runtime("list", "-q").stdout == ""


def test_run_foreground_passes_the_exit_status(runtime, bundle):
    bundle.write(["sh", "-c", "echo out; echo err >&2; exit 42"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 42
    assert result.stdout == "out\n" and "err" in result.stderr
    assert_nothing_left(runtime, runtime.ids[-1])


def test_run_foreground_forwards_signals(runtime, bundle):
    bundle.write(["sh", "-c", 'trap "exit 7" TERM; while :; do sleep 0.05; done'])
    cid = runtime.new_id()
    proc = subprocess.Popen(runtime.cmd("run", "--bundle", str(bundle.path), cid))
    try:
        wait_for(lambda: runtime("state", cid, check=False).returncode == 0
                 and runtime.status(cid) == "running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_nothing_left(runtime, cid)


def test_spec_writes_a_runnable_config(runtime, tmp_path, bundle):
    target = tmp_path / "specdir"
    target.mkdir()
    runtime("spec", "--bundle", str(target))
    config = json.loads((target / "config.json").read_text())
    assert config["process"]["args"] == ["sh"] and config["root"]["path"] == "rootfs"
    again = runtime("spec", "--bundle", str(target), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    runtime("spec", "--rootless", "--bundle", str(tmp_path))
    rootless = json.loads((tmp_path / "config.json").read_text())
    assert {"type": "user"} in rootless["linux"]["namespaces"]


# --- errors: one line, exit 1, nothing left behind ------------------------------------------

@pytest.mark.parametrize("command", [["state"], ["start"], ["kill"], ["delete"]])
def test_unknown_container(runtime, command):
    cid = runtime.new_id()
    result = runtime(*command, cid, check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_duplicate_id_is_refused_and_the_first_survives(runtime, bundle):
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    again = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    assert runtime.status(cid) == "created"
    runtime("delete", cid)
    assert_nothing_left(runtime, cid)


def test_invalid_id_is_refused(runtime, bundle):
    result = runtime("create", "--bundle", str(bundle.path), "../escape", check=False)
    assert result.returncode == 1 and "invalid container id" in result.stderr
    assert not os.path.exists(os.path.join(os.path.dirname(runtime.root), "escape"))


def test_start_twice_and_kill_stopped_are_bad_states(runtime, bundle):
    bundle.write(["true"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    runtime("start", cid)
    runtime.wait_stopped(cid)
    again = runtime("start", cid, check=False)
    assert again.returncode == 1 and "stopped" in again.stderr
    killed = runtime("kill", cid, "KILL", check=False)
    assert killed.returncode == 1 and "not running" in killed.stderr
    runtime("delete", cid)
    assert_nothing_left(runtime, cid)


def test_missing_bundle(runtime, tmp_path):
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(tmp_path / "nowhere"), cid, check=False)
    assert result.returncode == 1 and "config.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_left(runtime, cid)


@pytest.mark.parametrize("broken, message", [
    ("{not json", "invalid JSON"),
    ("[]", "JSON object"),
    ('{"ociVersion": "1.0.2"}', "root: required"),
    ('{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": "sh"}}',
     "process.args"),
    ('{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, '
     '"process": {"args": ["sh"], "user": {"uid": "root"}}}', "process.user.uid"),
])
def test_malformed_config(runtime, bundle, broken, message):
    (bundle.path / "config.json").write_text(broken)
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(runtime, cid)


def test_a_failure_inside_the_init_leaves_nothing(runtime, bundle):
    # The program does not exist: found out in the init, after the cgroup and
    # namespaces exist; create must undo all of it.
    bundle.write(["/no/such/program"])
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1 and "/no/such/program" in result.stderr
    assert_nothing_left(runtime, cid)


def test_a_bad_mount_leaves_nothing(runtime, bundle):
    bundle.config["mounts"].append({"destination": "/data", "type": "bind",
                                    "source": str(bundle.path / "missing"),
                                    "options": ["rbind"]})
    bundle.write(["true"])
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert_nothing_left(runtime, cid)


def test_systemd_cgroup_is_a_clear_error(runtime, bundle):
    cid = runtime.new_id()
    result = runtime("--systemd-cgroup", "create", "--bundle", str(bundle.path), cid,
                     check=False)
    assert result.returncode == 1 and "systemd" in result.stderr
    assert_nothing_left(runtime, cid)


def test_log_file_in_json_for_containerd(runtime, tmp_path):
    log = tmp_path / "log.json"
    cid = runtime.new_id()
    result = runtime("--log", str(log), "--log-format", "json", "state", cid, check=False)
    assert result.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and entry["msg"] == "container does not exist"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_create_leaves_nothing(runtime, bundle, tmp_path, signum):
    # Joining a "namespace" that is a FIFO blocks create after its state dir and
    # cgroup exist: the worst time for a signal to arrive.
    fifo = tmp_path / "not-a-namespace"
    os.mkfifo(fifo)
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"]
                                  if ns["type"] != "network"]
    bundle.linux["namespaces"].append({"type": "network", "path": str(fifo)})
    bundle.write(["true"])
    cid = runtime.new_id()
    proc = subprocess.Popen(runtime.cmd("create", "--bundle", str(bundle.path), cid),
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: cgroup_dirs(cid))
        time.sleep(0.05)  # let it reach the blocking open
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in proc.stderr.read()
    assert_nothing_left(runtime, cid)


def test_preserve_fds_and_socket_activation_fds_reach_the_container(runtime, bundle):
    bundle.write(["sh", "-c", 'echo "$LISTEN_FDS $LISTEN_PID" >&3; echo preserved >&4; '
                              'ls /proc/self/fd | wc -l >&4'])
    listen_r, listen_w = os.pipe()
    extra_r, extra_w = os.pipe()

    def hand_over_fds():
        # fd 3: a socket-activation fd (LISTEN_PID names the runtime's own PID);
        # fd 4: one more, kept by --preserve-fds 1.
        os.dup2(listen_w, 3)
        os.dup2(extra_w, 4)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))

    cid = runtime.new_id()
    result = subprocess.run(runtime.cmd("run", "--preserve-fds", "1", "--bundle",
                                        str(bundle.path), cid),
                            preexec_fn=hand_over_fds, pass_fds=(3, 4), timeout=60)
    os.close(listen_w)
    os.close(extra_w)
    assert result.returncode == 0
    assert os.read(listen_r, 100) == b"1 1\n"
    lines = os.read(extra_r, 100).decode().split()
    assert lines[0] == "preserved"
    assert int(lines[1]) == 5 + 1  # 0-4, and the directory ls reads
    os.close(listen_r)
    os.close(extra_r)


@pytest.mark.parametrize("section, key, value", [
    ("linux", "personality", {"domain": "LINUX32"}),
    ("process", "scheduler", {"policy": "SCHED_BATCH"}),
    ("process", "ioPriority", {"class": "IOPRIO_CLASS_IDLE", "priority": 7}),
])
def test_fields_not_applied_yet_are_refused_not_ignored(runtime, bundle, section, key, value):
    bundle.config.setdefault(section, {})[key] = value
    bundle.write()
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1 and f"{section}.{key}: not supported" in result.stderr
    assert_nothing_left(runtime, cid)
