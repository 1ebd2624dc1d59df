"""corral-runtime's command line against runc 1.1.5's: output forms, exit statuses, kill 0,
exec into a created container, --debug, the caller's terminal, checkpoint/restore, help.

Every test runs the real binary on real containers; what the container sees is
checked from inside it (its output through a pty, its exit status).
"""

from __future__ import annotations

import json
import os
import pty
import select
import struct
import subprocess
import time

import pytest

pytestmark = pytest.mark.root

COMMANDS = ("checkpoint", "create", "delete", "events", "exec", "kill", "list", "pause", "ps",
            "restore", "resume", "run", "spec", "start", "state", "update", "features")


@pytest.fixture
def running(runtime, bundle):
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    yield cid
    runtime("delete", "--force", cid, check=False)


# --- 1. JSON in runc's forms --------------------------------------------------------

def test_events_stats_is_one_compact_line(runtime, running):
    out = runtime("events", "--stats", running).stdout
    assert out.startswith('{"type":"stats","id":"' + running + '","data":{')
    assert out.count("\n") == 1 and ": " not in out and ", " not in out


def test_an_oom_event_is_runcs_exact_line(runtime, bundle):
    bundle.linux["resources"]["memory"] = {"limit": 16 * 2**20}
    bundle.write(["sh", "-c", "sleep 0.5; x=$(head -c 100000000 /dev/zero | tr '\\0' a)"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    with open(bundle.path / "events.log", "w+") as log:
        proc = subprocess.Popen(runtime.cmd("events", "--interval", "100ms", cid), stdout=log)
        try:
            assert proc.wait(timeout=30) == 0  # it ends with the container
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        lines = log.read().splitlines()
    assert '{"type":"oom","id":"' + cid + '"}' in lines
    assert all(line.startswith('{"type":"stats","id":"' + cid + '","data":{')
               for line in lines if '"oom"' not in line)
    runtime("delete", cid)


def test_list_json_is_compact_in_runcs_field_order(runtime, make_bundle):
    assert runtime("list", "--format", "json").stdout == "null\n"  # runc: none is null
    bundle = make_bundle(["sleep", "1000"])
    cids = [runtime.new_id(), runtime.new_id()]
    for cid in cids:
        runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    out = runtime("list", "--format", "json").stdout
    assert out.count("\n") == 1 and out.startswith('[{"ociVersion":"')
    for cid in cids:
        assert ('"id":"' + cid + '","pid":') in out
    listed = json.loads(out)
    assert list(listed[0])[:8] == ["ociVersion", "id", "pid", "status", "bundle", "rootfs",
                                   "created", "owner"]
    assert {s["status"] for s in listed} == {"running"}
    bad = runtime("list", "--format", "yaml", check=False)
    assert bad.returncode == 1 and "invalid format option" in bad.stderr
    for cid in cids:
        runtime("delete", "--force", cid)


def test_state_is_indented_and_ps_json_compact(runtime, running):
    out = runtime("state", running).stdout
    state = json.loads(out)
    assert out == json.dumps(state, indent=2)  # MarshalIndent, no newline after
    assert state["status"] == "running"
    assert runtime("ps", "--format", "json", running).stdout == f"[{state['pid']}]\n"


# --- 2. exit statuses ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["state"], ["kill"], ["delete"], ["start"], ["pause"],
                                  ["resume"], ["ps"], ["events", "--stats"], ["update"],
                                  ["checkpoint"]])
def test_a_missing_container_is_status_1(runtime, argv):
    result = runtime(*argv, "no-such-ct", check=False)
    assert result.returncode == 1 and "container does not exist" in result.stderr


def test_exec_failures_are_status_255_and_its_process_status_passes(runtime, running):
    assert runtime("exec", "no-such-ct", "true", check=False).returncode == 255
    failed = runtime("exec", running, "no-such-binary", check=False)
    assert failed.returncode == 255 and "exec failed: " in failed.stderr
    assert runtime("exec", "--pid-file", "/non-existent/dir", running, "true",
                   check=False).returncode == 255
    assert runtime("exec", running, "sh", "-c", "exit 42", check=False).returncode == 42
    assert runtime("exec", running, "false", check=False).returncode == 1


def test_usage_errors_are_status_1_and_an_unknown_command_3(runtime, running):
    for argv in (["state"], ["state", "a", "b"], ["kill", running, "KILL", "x"], ["exec"],
                 ["list", "--bogus"], ["--bogus", "list"]):
        result = runtime(*argv, check=False)
        assert result.returncode == 1, argv
        assert result.stdout.startswith("Incorrect Usage"), argv
        assert len(result.stderr.strip().splitlines()) == 1, argv
    assert runtime("exec", "--bogus", running, "true", check=False).returncode == 1
    unknown = runtime("frobnicate", check=False)
    assert unknown.returncode == 3 and "No help topic for 'frobnicate'" in unknown.stderr


# --- 3. kill 0, exec into a created container ------------------------------------------

def test_kill_signal_0_and_kill_all_after_the_container_stopped(runtime, running):
    assert runtime("kill", running, "0").returncode == 0
    assert runtime("kill", "--all", running, "0").returncode == 0
    assert runtime.status(running) == "running"  # 0 only checks
    bad = runtime("kill", running, "99", check=False)
    assert bad.returncode == 1 and "invalid argument" in bad.stderr
    runtime("kill", running, "KILL")
    runtime.wait_stopped(running)
    assert runtime("kill", "-a", running, "0").returncode == 0  # runc: still succeeds
    stopped = runtime("kill", running, "0", check=False)
    assert stopped.returncode == 1 and "not running" in stopped.stderr
    runtime("delete", running)


def test_exec_into_a_created_container(runtime, bundle):
    bundle.config["hostname"] = "made-by-create"
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    # Inside the container (its UTS and PID namespaces) while the init still waits.
    seen = runtime("exec", cid, "sh", "-c", "hostname; tr '\\0' ' ' < /proc/1/cmdline").stdout
    hostname, init = seen.split("\n", 1)
    assert hostname == "made-by-create" and "sleep" not in init
    assert runtime.status(cid) == "created"
    runtime("start", cid)
    assert runtime("exec", cid, "cat", "/proc/1/cmdline").stdout == "sleep\x001000\x00"
    runtime("delete", "--force", cid)


def test_exec_into_a_paused_container_is_refused(runtime, running):
    runtime("pause", running)
    result = runtime("exec", running, "true", check=False)
    assert result.returncode == 255 and "cannot exec in a paused container" in result.stderr
    runtime("resume", running)


# --- 4. --debug ------------------------------------------------------------------------

INIT_DEBUG = ("nsexec container setup", "child process in init()",
              "init: closing the pipe to signal completion")


def test_debug_on_stderr(runtime, bundle):
    bundle.write(["echo", "Hello World"])
    result = runtime("--debug", "run", "--bundle", str(bundle.path), runtime.new_id())
    assert result.stdout == "Hello World\n"
    assert "level=debug" in result.stderr
    for phrase in INIT_DEBUG:
        assert phrase in result.stderr, phrase


@pytest.mark.parametrize("log_format, marker", [(None, "level=debug"), ("text", "level=debug"),
                                                ("json", '"level":"debug"')])
def test_debug_into_the_log_file(runtime, bundle, tmp_path, log_format, marker):
    bundle.write(["echo", "Hello World"])
    log = tmp_path / "log.out"
    fmt = ["--log-format", log_format] if log_format else []
    result = runtime("--log", str(log), *fmt, "--debug", "run", "--bundle", str(bundle.path),
                     runtime.new_id())
    assert "level=debug" not in result.stderr and "debug" not in result.stderr
    text = log.read_text()
    assert marker in text
    for phrase in INIT_DEBUG:
        assert phrase in text, phrase
    if log_format == "json":
        entries = [json.loads(line) for line in text.splitlines()]
        assert all(list(e) == ["level", "msg", "time"] for e in entries)


def test_debug_exec(runtime, running, tmp_path):
    result = runtime("--debug", "exec", running, "true")
    for phrase in ("nsexec container setup", "child process in init()",
                   "setns_init: about to exec"):
        assert phrase in result.stderr, phrase
    log = tmp_path / "exec.log"
    result = runtime("--debug", "--log", str(log), "exec", running, "true")
    assert "level=debug" not in result.stderr and "setns_init: about to exec" in log.read_text()
    assert "level=debug" not in runtime("exec", running, "true").stderr  # only when asked


# --- 5. the caller's terminal ----------------------------------------------------------

class CallersTerminal:
    """A pty standing for the terminal corral-runtime is started from."""

    def __init__(self, rows: int = 21, cols: int = 83):
        import fcntl
        import termios

        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def run(self, argv: list[str], *, stdin_is_tty: bool = True,
            timeout: float = 30) -> tuple[int, str]:
        stdin = self.slave if stdin_is_tty else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=stdin, stdout=self.slave, stderr=self.slave,
                                start_new_session=True)
        os.close(self.slave)
        seen = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not select.select([self.master], [], [], 0.2)[0]:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every holder of the slave has gone
                    break
                if not chunk:
                    break
                seen += chunk
            return proc.wait(timeout=10), seen.decode().replace("\r", "")
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(self.master)


SHOW_TTY = ("tty; stty size; stat -c owner=%u:%g $(tty); "
            "for fd in 0 1; do readlink /proc/self/fd/$fd; done")


@pytest.mark.parametrize("stdin_is_tty", [True, False])
def test_exec_t_uses_the_callers_terminal(runtime, running, stdin_is_tty):
    status, out = CallersTerminal(21, 83).run(
        runtime.cmd("exec", "-t", running, "sh", "-c", SHOW_TTY + "; exit 7"),
        stdin_is_tty=stdin_is_tty)
    assert status == 7, out
    lines = out.splitlines()
    assert lines[0].startswith("/dev/pts/") and lines[1] == "21 83", out
    assert lines[2] == "owner=0:5" and lines[3:5] == [lines[0], lines[0]], out


def test_exec_t_input_reaches_the_process(runtime, running):
    term = CallersTerminal()
    os.write(term.master, b"echo typed-$((6*7))\nexit 3\n")  # typed ahead
    status, out = term.run(runtime.cmd("exec", "-t", running, "sh"))
    assert status == 3 and "typed-42" in out, out


@pytest.mark.parametrize("stdin_is_tty", [True, False])
def test_run_t_uses_the_callers_terminal(runtime, bundle, stdin_is_tty):
    bundle.config["process"]["terminal"] = True
    bundle.write(["sh", "-c", SHOW_TTY + "; exit 4"])
    status, out = CallersTerminal(13, 57).run(
        runtime.cmd("run", "--bundle", str(bundle.path), runtime.new_id()),
        stdin_is_tty=stdin_is_tty)
    assert status == 4, out
    lines = out.splitlines()
    assert lines[0].startswith("/dev/pts/") and lines[1] == "13 57", out
    assert lines[2] == "owner=0:5", out


def test_terminal_without_a_callers_terminal_or_socket_is_refused(runtime, running, bundle):
    # No terminal on stdio and no controlling terminal (a new session).
    alone = dict(stdin=subprocess.DEVNULL, start_new_session=True)
    result = runtime("exec", "-t", running, "true", check=False, **alone)
    assert result.returncode == 255 and "open /dev/tty" in result.stderr
    detached = runtime("exec", "-t", "-d", running, "true", check=False, **alone)
    assert detached.returncode == 255 and "cannot allocate tty" in detached.stderr
    foreground_socket = runtime("exec", "-t", "--console-socket", "/nonexistent.sock",
                                running, "true", check=False)
    assert foreground_socket.returncode == 255
    assert "cannot use console socket" in foreground_socket.stderr
    bundle.config["process"]["terminal"] = True
    bundle.write(["true"])
    cid = runtime.new_id()
    run = runtime("run", "--bundle", str(bundle.path), cid, check=False, **alone)
    assert run.returncode == 1 and "open /dev/tty" in run.stderr
    run_d = runtime("run", "-d", "--bundle", str(bundle.path), cid, check=False, **alone)
    assert run_d.returncode == 1 and "cannot allocate tty" in run_d.stderr
    assert runtime("list", "-q").stdout.split() == [running]  # nothing was left


# --- 6. checkpoint and restore ---------------------------------------------------------

def _unchanged(runtime, cid: str, before: dict) -> None:
    after = runtime.state(cid)
    assert (after["status"], after["pid"]) == ("running", before["pid"])
    assert runtime("exec", cid, "true").returncode == 0


def test_checkpoint_without_criu_is_a_clear_error(runtime, running, tmp_path):
    before = runtime.state(running)
    images = tmp_path / "images"
    missing = runtime("--criu", "/nonexistent/criu", "checkpoint", "--image-path", str(images),
                      running, check=False)
    assert missing.returncode == 1
    assert "CRIU version check failed: fork/exec /nonexistent/criu" in missing.stderr
    no_path = runtime("checkpoint", "--image-path", str(images), running, check=False,
                      env={**os.environ, "PATH": str(tmp_path)})
    assert no_path.returncode == 1
    assert 'exec: \\"criu\\": executable file not found in $PATH' in no_path.stderr
    _unchanged(runtime, running, before)


def test_checkpoint_and_restore_where_criu_check_fails(runtime, running, bundle, tmp_path):
    """A criu that cannot work on this kernel (here: its vDSO check, as this host's real
    criu fails); the real one too when it is installed."""
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Error (criu/vdso.c:613): vdso: Failed to fill self "
                    "vdso symtable' >&2\nexit 1\n")
    fake.chmod(0o755)
    criu_binaries = [str(fake)] + (["criu"] if _which("criu") else [])
    before = runtime.state(running)
    for criu in criu_binaries:
        images = tmp_path / f"images-{len(criu)}"
        dump = runtime("--criu", criu, "checkpoint", "--image-path", str(images), running,
                       check=False)
        assert dump.returncode == 1 and "criu failed: type DUMP" in dump.stderr, dump.stderr
        assert "log file: dump.log" in dump.stderr and (images / "dump.log").exists()
        _unchanged(runtime, running, before)
        cid = runtime.new_id()
        back = runtime("--criu", criu, "restore", "--image-path", str(images), "--bundle",
                       str(bundle.path), cid, check=False)
        assert back.returncode == 1 and "criu failed: type RESTORE" in back.stderr
        assert runtime("list", "-q").stdout.split() == [running]
    assert "vdso: Failed to fill self vdso symtable" in dump.stderr or len(criu_binaries) > 1


def test_checkpoint_refuses_a_created_container(runtime, bundle, tmp_path):
    bundle.write(["true"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    result = runtime("checkpoint", "--image-path", str(tmp_path / "i"), cid, check=False)
    assert result.returncode == 1
    assert "Container cannot be checkpointed in created state" in result.stderr
    assert runtime.status(cid) == "created"
    runtime("delete", "--force", cid)


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


# --- 7. help and version ---------------------------------------------------------------

def test_help_is_urfave_clis_layout(runtime):
    for flag in ("-h", "--help"):
        lines = runtime(flag).stdout.splitlines()
        assert lines[0] == "NAME:"
        assert lines[1].startswith("   runc - Open Container Initiative runtime")
        text = "\n".join(lines)
        for section in ("USAGE:", "VERSION:", "COMMANDS:", "GLOBAL OPTIONS:"):
            assert f"\n{section}\n" in text, section
        for command in COMMANDS:
            assert f"\n   {command} " in text, command
    assert runtime().stdout == runtime("-h").stdout  # no command: the help


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(runtime, command):
    for argv in ([command, "-h"], [command, "--help"], ["help", command]):
        result = runtime(*argv)
        lines = result.stdout.splitlines()
        assert result.returncode == 0 and lines[0] == "NAME:", argv
        assert lines[1].startswith(f"   runc {command} - "), argv
        assert "USAGE:" in lines and f"corral-runtime {command}" in result.stdout


def test_help_for_an_unknown_command(runtime):
    result = runtime("foo", "-h", check=False)
    assert result.returncode != 0 and "No help topic for 'foo'" in result.stderr
    assert runtime("help", "foo", check=False).returncode == 3


def test_checkpoint_help_has_runcs_flags(runtime):
    out = runtime("checkpoint", "--help").stdout
    for flag in ("--image-path value", "--work-path value", "--parent-path value",
                 "--leave-running", "--tcp-established", "--ext-unix-sk", "--shell-job",
                 "--lazy-pages", "--status-fd value", "--page-server value", "--file-locks",
                 "--pre-dump", "--manage-cgroups-mode value", "--empty-ns value",
                 "--auto-dedup"):
        assert flag in out, flag
    out = runtime("restore", "--help").stdout
    for flag in ("--console-socket value", "--bundle value, -b value", "--detach, -d",
                 "--pid-file value", "--no-subreaper", "--no-pivot", "--lsm-profile value",
                 "--lsm-mount-context value"):
        assert flag in out, flag


def test_version_as_runc_prints_it(runtime):
    for flag in ("-v", "--version"):
        lines = runtime(flag).stdout.splitlines()
        assert lines[0].startswith("runc version 1.1.5") and "corral-runtime" in lines[0]
        assert lines[1].startswith("commit: ") and lines[2].startswith("spec: 1.")
