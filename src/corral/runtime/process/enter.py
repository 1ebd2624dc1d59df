"""`exec`: start another process inside a running container (runc's "setns" process).

    runtime ──fork──▶ bootstrap  [runtime moves it into the container's cgroup]
       │                 │  setns: user, then ipc, uts, net, pid, cgroup, time, mount
       │                 └─fork──▶ process: in the container's PID namespace
       │◀────── "pid" ───┘ exits     │ rlimits, close stray fds, cwd (as root),
       │                             │ user, groups, caps, cwd checked
       │◀──────────────── EOF ───────┘ execve (the channel is close-on-exec)

The namespaces to join are those the init lives in that differ from the
runtime's own: exactly the container's, whether it made them or joined them.
"""

from __future__ import annotations

import os

from corral.runtime.errors import InitFailed
from corral.runtime.namespaces import CLONE_FLAGS, PROC_NAMES
from corral.runtime.process.identity import (
    become,
    chdir_after_user,
    chdir_before_user,
    describe,
    env_with_home,
    find_executable,
    load_seccomp_early,
    load_seccomp_late,
    reset_signals,
)
from corral.runtime.process.stdio import adopt_stdio
from corral.runtime.process.sync import SyncChannel
from corral.runtime.rlimits import apply_rlimits
from corral.runtime.syscalls import PR_SET_DUMPABLE, Syscalls
from corral.spec.record import Record
from corral.spec.runtime import Process

# The user namespace first (it grants the right to join the rest), mount last.
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


class ExecRequest(Record):
    init_pid: int
    process: Process
    cgroup: object | None = None  # a cgroups.Manager
    may_setgroups: bool = True
    preserve_fds: int = 0
    last_cap: int = 40  # read on the host: the container may have no /proc
    console_fd: int | None = None  # connected --console-socket, for process.terminal
    seccomp: object | None = None  # the container's seccomp.SeccompProgram
    agent_state: dict = {}  # the container's OCI state, for a seccomp agent
    stdio: tuple | None = None  # fds for 0, 1, 2 (a shim's pipes); None inherits ours


def container_namespaces(init_pid: int) -> list[tuple[str, int]]:
    """Open the init's namespaces that are not ours, in the order to join them."""
    opened = []
    try:
        for kind in _JOIN_ORDER:
            name = PROC_NAMES[kind]
            try:
                if os.stat(f"/proc/{init_pid}/ns/{name}").st_ino == os.stat(
                        f"/proc/self/ns/{name}").st_ino:
                    continue
            except FileNotFoundError:
                continue  # a namespace type this kernel lacks
            opened.append((kind, os.open(f"/proc/{init_pid}/ns/{name}",
                                         os.O_RDONLY | os.O_CLOEXEC)))
    except BaseException:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def spawn_exec(request: ExecRequest, syscalls: Syscalls) -> int:
    """Start the process; return its PID once it has called execve."""
    ours, theirs = SyncChannel.pair()
    targets = container_namespaces(request.init_pid)
    try:
        bootstrap = os.fork()
        if bootstrap == 0:
            ours.close()
            _bootstrap_main(request, theirs, targets, syscalls)
    finally:
        theirs.close()
        for _, fd in targets:
            os.close(fd)
    pid = None
    try:
        if request.cgroup is not None:
            request.cgroup.join(bootstrap)
        ours.send("go")
        listeners = []  # the process's seccomp listener, for the agent once its PID is known
        while (message := ours.receive()) is not None:
            if message["type"] == "pid":
                pid = message["pid"]
            elif message["type"] == "error":
                raise InitFailed(message["message"])
            elif message["type"] == "seccomp-listener":
                listeners.append(message["fd"])
            while listeners and pid is not None:
                _pass_listener(ours, request, pid, listeners.pop())
        if pid is None:
            raise InitFailed("the exec process exited before it started")
        return pid
    except BaseException:
        if pid is not None:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        raise
    finally:
        ours.close()
        try:
            os.waitpid(bootstrap, 0)
        except ChildProcessError:
            pass


def _bootstrap_main(request: ExecRequest, channel: SyncChannel, targets, sc: Syscalls) -> None:
    """In the forked bootstrap: join, fork the process, report its PID; never returns."""
    try:
        channel.expect("go")  # now in the container's cgroup
        channel.debug(f"nsexec[{os.getpid()}]: => nsexec container setup")  # runc's words
        adopt_stdio(request.stdio)
        # Not reachable from the container through /proc or ptrace until execve.
        sc.prctl(PR_SET_DUMPABLE, 0)
        for kind, fd in targets:
            channel.debug(f"setns({CLONE_FLAGS[kind]:#x}) into {kind} namespace")
            sc.setns(fd, CLONE_FLAGS[kind])
        pid = os.fork()
        if pid == 0:
            _process_main(request, channel, sc)
        channel.send("pid", pid=pid)
    except BaseException as e:  # noqa: BLE001 - reported, never raised here
        _report(channel, e)
        os._exit(1)
    os._exit(0)


def _process_main(request: ExecRequest, channel: SyncChannel, sc: Syscalls) -> None:
    process = request.process
    try:
        channel.debug(f"nsexec-2[{os.getpid()}]: <= nsexec container setup")
        channel.debug("child process in init()")
        if request.console_fd is not None:
            from corral.runtime import console  # loaded by the runtime before it forked

            os.setsid()  # a terminal needs a session of its own
            console.take_terminal(request.console_fd, process.console_size, process.user.uid)
        executable = find_executable(process)
        process.env = env_with_home(process)
        apply_rlimits(process.rlimits, sc)
        # Nothing of the runtime's may be a way out of the container (CVE-2024-21626).
        sc.close_fds_except({*range(3, 3 + request.preserve_fds), channel.read_fd,
                             channel.write_fd})
        entered = chdir_before_user(process.cwd, sc)
        load_seccomp_early(request.seccomp, process, sc, channel)
        become(process, sc, request.last_cap, may_setgroups=request.may_setgroups)
        chdir_after_user(process.cwd, sc, entered)
        channel.debug("setns_init: about to exec")
        reset_signals()
        sc.mark_fds_cloexec(3 + request.preserve_fds)
        load_seccomp_late(request.seccomp, process, sc, channel)
        sc.execve(executable, process.args, process.env)
    except BaseException as e:  # noqa: BLE001
        _report(channel, e)
    os._exit(127)


def _pass_listener(channel: SyncChannel, request: ExecRequest, pid: int, fd: int) -> None:
    """The process's seccomp listener to the agent, then the process may go on."""
    from corral.runtime.seccomp import send_listener_to_agent

    try:
        send_listener_to_agent(request.seccomp, pid, fd, request.agent_state)
    except BaseException as e:
        try:
            channel.send("seccomp-listener-sent", error=str(e))
        except BrokenPipeError:
            pass
        raise
    channel.send("seccomp-listener-sent")


def _report(channel: SyncChannel, error: BaseException) -> None:
    try:
        channel.send("error", message=describe(error))
    except OSError:
        pass
