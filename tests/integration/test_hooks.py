"""OCI hooks: each kind runs in order, at its moment, with the state on stdin."""

from __future__ import annotations

import json

import pytest

from .conftest import assert_nothing_left

pytestmark = pytest.mark.root


def logging_hook(log, kind: str, path: str = "/bin/sh", **extra) -> dict:
    """A hook that appends "<kind> <state JSON>" to `log` (a path where it runs)."""
    return {"path": path, "args": ["sh", "-c", f'echo "{kind} $(cat)" >> {log}'], **extra}


def read_log(path) -> list[tuple[str, dict]]:
    """(kind, state) per hook line; the program's own line ("program") is skipped."""
    entries = []
    for line in path.read_text().splitlines():
        if line != "program":
            kind, _, state = line.partition(" ")
            entries.append((kind, json.loads(state)))
    return entries


@pytest.fixture
def hooked(bundle, tmp_path):
    log_dir = tmp_path / "hooklog"
    log_dir.mkdir()
    host_log = log_dir / "log"
    bundle.config["mounts"].append({"destination": "/hooklog", "type": "bind",
                                    "source": str(log_dir), "options": ["bind"]})
    bundle.config["hooks"] = {
        "prestart": [logging_hook(host_log, "prestart")],
        "createRuntime": [logging_hook(host_log, "createRuntime"),
                          logging_hook(host_log, "createRuntime2")],
        "createContainer": [logging_hook(host_log, "createContainer")],
        # startContainer runs in the container: its paths are the container's.
        "startContainer": [logging_hook("/hooklog/log", "startContainer")],
        "poststart": [logging_hook(host_log, "poststart")],
        "poststop": [logging_hook(host_log, "poststop")],
    }
    bundle.config["annotations"] = {"org.example/purpose": "hook test"}
    # The program outlives `start`, so poststart sees it running.
    bundle.write(["sh", "-c", "echo program >> /hooklog/log; sleep 0.5"])
    return bundle, host_log


def test_hooks_run_in_order_with_the_state_on_stdin(runtime, hooked):
    bundle, log = hooked
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    pid = runtime.state(cid)["pid"]
    assert [k for k, _ in read_log(log)] == ["prestart", "createRuntime", "createRuntime2",
                                            "createContainer"]
    runtime("start", cid)
    runtime.wait_stopped(cid)
    runtime("delete", cid)

    kinds = [line.split(" ", 1)[0] for line in log.read_text().splitlines()]
    assert kinds[:5] == ["prestart", "createRuntime", "createRuntime2", "createContainer",
                         "startContainer"]
    # poststart runs after the program is released; the program may print first.
    assert sorted(kinds[5:7]) == ["poststart", "program"] and kinds[7:] == ["poststop"]
    states = dict(read_log(log))
    assert states["prestart"]["status"] == "created"  # as crun, and runtime-tools' hooks_stdin
    assert states["prestart"]["pid"] == pid
    assert states["createRuntime"]["status"] == "creating"
    assert states["createRuntime"]["pid"] == pid
    assert states["startContainer"]["status"] == "created"
    assert states["poststart"]["status"] == "running"
    assert states["poststop"]["status"] == "stopped"
    for state in states.values():
        assert state["id"] == cid and state["bundle"] == str(bundle.path)
        assert state["annotations"] == {"org.example/purpose": "hook test"}
    assert_nothing_left(runtime, cid)


@pytest.mark.parametrize("kind", ["prestart", "createRuntime", "createContainer"])
def test_a_failing_create_hook_fails_create_and_cleans_up(runtime, hooked, kind):
    bundle, log = hooked
    bundle.config["hooks"][kind].append({"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]})
    bundle.write()
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1
    assert f"hooks.{kind}[" in result.stderr and "exit status 3" in result.stderr
    assert_nothing_left(runtime, cid)


def test_a_hook_that_hangs_is_killed_at_its_timeout(runtime, hooked):
    bundle, log = hooked
    bundle.config["hooks"]["createRuntime"] = [
        {"path": "/bin/sleep", "args": ["sleep", "100"], "timeout": 1}]
    bundle.write()
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False, timeout=30)
    assert result.returncode == 1 and "timed out after 1s" in result.stderr
    assert_nothing_left(runtime, cid)


def test_a_failing_start_container_hook_stops_the_container(runtime, hooked):
    bundle, log = hooked
    bundle.config["hooks"]["startContainer"] = [
        {"path": "/bin/sh", "args": ["sh", "-c", "exit 5"]}]
    bundle.write()
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    runtime("start", cid)
    runtime.wait_stopped(cid)
    assert "program" not in log.read_text()
    runtime("delete", cid)


def test_poststart_and_poststop_failures_are_warnings(runtime, hooked):
    bundle, log = hooked
    failing = {"path": "/bin/false"}
    bundle.config["hooks"]["poststart"].insert(0, failing)
    bundle.config["hooks"]["poststop"].insert(0, failing)
    bundle.write()
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    started = runtime("start", cid)
    assert "hooks.poststart[0]" in started.stderr and "warning" in started.stderr
    runtime.wait_stopped(cid)
    deleted = runtime("delete", cid)
    assert "hooks.poststop[0]" in deleted.stderr
    kinds = [k for k, _ in read_log(log)]
    assert "poststart" in kinds and "poststop" in kinds  # the rest still ran
    assert_nothing_left(runtime, cid)


def test_create_container_hooks_run_in_the_container_root(runtime, bundle, tmp_path):
    """runc chdirs to the rootfs before the createContainer hooks; other hooks keep ours."""
    log = tmp_path / "cwd.log"
    bundle.config["hooks"] = {
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", f"pwd > {log}"]}]}
    bundle.write(["true"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert log.read_text().strip() == str(bundle.rootfs)


def test_a_hook_killed_by_a_signal_is_reported_in_runc_s_words(runtime, bundle):
    bundle.config["hooks"] = {
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "kill -SYS $$"]}]}
    bundle.write(["true"])
    result = runtime.run_capture(bundle)
    assert result.returncode != 0
    assert "error running hook: signal: bad system call" in result.stderr, result.stderr
