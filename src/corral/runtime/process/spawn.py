"""How a container's init is born: runtime (parent) → bootstrap → init.

    runtime ──fork──▶ bootstrap: setns(paths), unshare(user)
       │                 │         [runtime writes uid/gid maps]
       │                 │         oom_score_adj, unshare(the rest), time offsets
       │                 └─fork──▶ init: PID 1 of the new PID namespace
       │◀──── "init-pid" ─┘ (bootstrap exits)   │ rootfs, user, caps ...
       │ moves init into its cgroup             │
       │──── "cgroup-joined" ──────────────────▶│ (unshare cgroup ns)
       │◀──────────────────────── "ready" ──────┘ then waits on exec.fifo

Two forks because unshare(CLONE_NEWPID) only moves the caller's children,
and a new user namespace must exist (and own the PID namespace) before the
PID namespace is made.  Forking a small single-threaded Python process is
cheap, and no interpreter is started for the container.

The runtime moves the init into its cgroup while the init sets up its root
filesystem: on cgroup v1 the first move waits for an RCU grace period
(~15 ms here), time better spent in parallel.  The init waits for the move
before "ready" (nothing of the container runs outside its cgroup), or before
anything else when it makes a cgroup namespace, whose root is the cgroup
the init is in when it makes it.
"""

from __future__ import annotations

import os
import select
import time

from corral.runtime import mountsources, namespaces
from corral.runtime.errors import InitFailed
from corral.runtime.hooks import run_hooks
from corral.runtime.process.identity import describe
from corral.runtime.process.init import InitContext, run_init
from corral.runtime.process.stdio import adopt_stdio
from corral.runtime.process.sync import SyncChannel
from corral.runtime.state import EXEC_FIFO
from corral.runtime.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWUSER,
    PR_SET_DUMPABLE,
    Syscalls,
)
from corral.spec.record import Record
from corral.spec.runtime import IDMapping, Spec

_INIT_EXIT_GRACE = 2.0  # seconds an init that reported an error gets to exit by itself


class SpawnRequest(Record):
    spec: Spec
    rootfs: str
    bundle: str
    state_dir: str
    cgroup: object | None  # a cgroups.Manager, joined by the bootstrap
    no_pivot: bool = False
    preserve_fds: int = 0
    hook_state: dict = {}  # the OCI state for hooks, less status and pid
    console_fd: int | None = None  # connected --console-socket, for process.terminal
    seccomp: object | None = None  # a seccomp.SeccompProgram
    stdio: tuple | None = None  # fds for the init's 0, 1, 2 (a shim's pipes); None inherits ours


def spawn_init(request: SpawnRequest, syscalls: Syscalls) -> int:
    """Start the container's init and return its PID once it waits for `start`."""
    spec = request.spec
    ours, theirs = SyncChannel.pair()
    join_targets = namespaces.open_join_targets(spec.linux.namespaces)
    # The init reaches exec.fifo after pivot_root through this O_PATH fd, never a
    # directory fd: a directory outside the container could become its cwd.
    fifo_fd = os.open(os.path.join(request.state_dir, EXEC_FIFO), os.O_PATH | os.O_CLOEXEC)
    if not _container_has_proc(spec):
        # Without its own /proc the init cannot reopen that fd: it keeps the state
        # directory instead, and the cwd check after chdir is what keeps it inside.
        os.close(fifo_fd)
        fifo_fd = os.open(request.state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sources, init_sources_fd = (mountsources.socket_pair() if mountsources.needed(spec)
                                else (None, None))
    try:
        bootstrap_pid = os.fork()
        if bootstrap_pid == 0:
            ours.close()
            if sources is not None:
                sources.close()  # the init must see EOF if the runtime's helper fails
            _bootstrap_main(request, theirs, join_targets, fifo_fd, syscalls,
                            init_sources_fd)
    finally:
        theirs.close()
        os.close(fifo_fd)
        if init_sources_fd is not None:
            os.close(init_sources_fd)
        for _, fd in join_targets:
            os.close(fd)
    init_pid = None
    try:
        init_pid = _converse(ours, bootstrap_pid, request, sources)
        return init_pid
    except BaseException as e:
        _stop_failed_init(ours, getattr(e, "init_pid", init_pid))
        raise
    finally:
        ours.close()
        if sources is not None:
            sources.close()
        _reap(bootstrap_pid)


def _converse(channel: SyncChannel, bootstrap_pid: int, request: SpawnRequest,
              mount_sources=None) -> int:
    spec, cgroup = request.spec, request.cgroup
    init_pid = None
    listeners = []  # seccomp listener fds of the init, for the agent once its PID is known
    while True:
        message = channel.receive()
        if message is None:
            raise InitFailed("container init exited before it was ready")
        kind = message["type"]
        if kind == "need-maps":
            write_id_maps(bootstrap_pid, spec.linux.uid_mappings, spec.linux.gid_mappings)
            channel.send("maps-done")
        elif kind == "init-pid":
            init_pid = message["pid"]
            try:
                if cgroup is not None:
                    cgroup.join(init_pid)
            except BaseException as e:
                e.init_pid = init_pid
                raise
            _tell(channel, "cgroup-joined")
            if mount_sources is not None:
                mountsources.send(mount_sources, init_pid, spec, request.bundle)
                mount_sources.close()
        elif kind == "run-hooks":
            state = dict(request.hook_state, status="creating", pid=init_pid)
            try:
                # prestart (deprecated) sees "created", as crun shows it and runtime-tools
                # checks; createRuntime runs during create and sees "creating".
                run_hooks("prestart", spec.hooks.get("prestart", []),
                          dict(state, status="created"))
                run_hooks("createRuntime", spec.hooks.get("createRuntime", []), state)
            except BaseException as e:
                e.init_pid = init_pid
                raise
            _tell(channel, "hooks-done", state=state)
        elif kind == "seccomp-listener":
            listeners.append(message["fd"])
        elif kind == "ready":
            return init_pid
        elif kind == "error":
            error = InitFailed(message["message"])
            error.init_pid = init_pid
            raise error
        while listeners and init_pid is not None:
            _pass_listener(channel, request, init_pid, listeners.pop())


def _pass_listener(channel: SyncChannel, request: SpawnRequest, init_pid: int,
                   fd: int) -> None:
    """The init's seccomp listener to the agent, then the init may go on."""
    from corral.runtime.seccomp import send_listener_to_agent

    state = dict(request.hook_state, status="creating", pid=init_pid)
    try:
        send_listener_to_agent(request.seccomp, init_pid, fd, state)
    except BaseException as e:
        _tell(channel, "seccomp-listener-sent", error=str(e))
        e.init_pid = init_pid
        raise
    _tell(channel, "seccomp-listener-sent")


def _container_has_proc(spec: Spec) -> bool:
    return spec.has_new_namespace("mount") and any(
        m.destination.rstrip("/") == "/proc" and m.type == "proc" for m in spec.mounts)


def _tell(channel: SyncChannel, kind: str, **fields) -> None:
    try:
        channel.send(kind, **fields)
    except BrokenPipeError:
        pass  # the init already failed; its error message is on its way


def write_id_maps(pid: int, uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> None:
    def text(maps: list[IDMapping]) -> bytes:
        return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps).encode()

    if os.geteuid() != 0:
        # An unprivileged writer may map only its own gid, and only with setgroups denied.
        with open(f"/proc/{pid}/setgroups", "wb") as f:
            f.write(b"deny")
    for name, maps in (("uid_map", uid_maps), ("gid_map", gid_maps)):
        try:
            with open(f"/proc/{pid}/{name}", "wb") as f:
                f.write(text(maps))
        except OSError as e:
            field = "uidMappings" if name == "uid_map" else "gidMappings"
            raise InitFailed(f"linux.{field}: cannot write {name}: {e.strerror}") from None


def _stop_failed_init(channel: SyncChannel, init_pid: int | None) -> None:
    """An init that failed exits by itself (closing its end); one that does not is killed."""
    deadline = time.monotonic() + _INIT_EXIT_GRACE
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([channel], [], [], left)[0]:
            break
        try:
            message = channel.receive()
        except (OSError, ValueError):
            break
        if message is None:
            return
        if message.get("type") == "init-pid":
            init_pid = message["pid"]
    if init_pid is not None:
        try:
            os.kill(init_pid, 9)  # SIGKILL
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# --- in the bootstrap process ---------------------------------------------------

def _bootstrap_main(request: SpawnRequest, channel: SyncChannel,
                    join_targets: list, fifo_fd: int, sc: Syscalls,
                    mount_sources_fd: int | None = None) -> None:
    """Runs in the forked child; never returns."""
    try:
        channel.debug(f"nsexec[{os.getpid()}]: => nsexec container setup")  # runc's words
        spec = request.spec
        adopt_stdio(request.stdio)
        # Lowering needs CAP_SYS_RESOURCE in the host's user namespace: do it here.
        if spec.process.oom_score_adj is not None:
            _set_oom_score_adj(spec.process.oom_score_adj, sc)
        namespaces.join(join_targets, sc)
        user_ns = spec.linux.namespace("user")
        if spec.has_new_namespace("user"):
            sc.unshare(CLONE_NEWUSER)
            channel.send("need-maps")
            channel.expect("maps-done")
            sc.setresgid(0)
            sc.setresuid(0)
        # Until execve, no process of the container may ptrace or open us through
        # /proc (runc's defence for CVE-2019-5736); after the maps, which an
        # unprivileged runtime writes only while we are dumpable.
        sc.prctl(PR_SET_DUMPABLE, 0)
        # The cgroup namespace is the init's to make, once it is in its cgroup.
        sc.unshare(namespaces.unshare_flags(spec.linux.namespaces) & ~CLONE_NEWCGROUP)
        if spec.linux.time_offsets:
            sc.write_file("/proc/self/timens_offsets",
                          namespaces.time_offsets_text(spec.linux.time_offsets))
        init_pid = os.fork()
        if init_pid == 0:
            ctx = InitContext(spec=spec, rootfs=request.rootfs, bundle=request.bundle,
                              fifo_fd=fifo_fd,
                              cgroup_paths=request.cgroup.paths if request.cgroup else {},
                              user_namespace=user_ns is not None, no_pivot=request.no_pivot,
                              preserve_fds=request.preserve_fds,
                              console_fd=request.console_fd, seccomp=request.seccomp,
                              mount_sources_fd=mount_sources_fd)
            run_init(ctx, channel, sc)
        channel.send("init-pid", pid=init_pid)
    except BaseException as e:  # noqa: BLE001 - reported to the runtime, never raised here
        try:
            channel.send("error", message=describe(e))
        except OSError:
            pass
        os._exit(1)
    os._exit(0)


def _set_oom_score_adj(value: int, sc: Syscalls) -> None:
    try:
        sc.write_file("/proc/self/oom_score_adj", str(value))
    except PermissionError:
        raise InitFailed(f"process.oomScoreAdj: cannot set to {value}: permission denied "
                         "(lowering it needs CAP_SYS_RESOURCE)") from None
