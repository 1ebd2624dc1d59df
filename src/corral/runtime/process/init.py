"""The container's init process, from its birth in the new namespaces to execve.

The sequence (the order matters, and unit tests check it with a recording
`Syscalls`):

  setsid → rootfs (mounts, devices, pivot_root) → hostname → sysctl,
  read-only and masked paths, read-only root → rlimits → close every fd
  the container must not have → cwd (as root) → drop bounding
  capabilities → groups, gid, uid → capabilities → umask, no_new_privs →
  cwd checked → "ready" to the runtime → wait on exec.fifo for `start` →
  execve.

Everything that can fail is done before "ready", so `create` reports it and
cleans up; after "ready" only the wait and the execve remain.

When the init enters process.cwd it holds no fd to anything outside the
container but its sync pipes and an O_PATH fd on exec.fifo (neither can be
a directory), and the cwd it ends in must be reachable from its root: a
cwd like /proc/self/fd/N reaching a host directory (CVE-2024-21626) fails.

The seccomp filter, as runc loads it: without no_new_privs before the user
change (loading needs CAP_SYS_ADMIN then); with it after `start`, just
before the startContainer hooks and execve, or before "ready" when it
notifies (its listener reaches the agent through the runtime, over the
channel that closes at "ready").
"""

from __future__ import annotations

# `_signal`, not `signal`: built in, so it needs no file after pivot_root.
import _signal
import os
import stat

from corral.runtime import syscalls as k
from corral.runtime.hooks import run_hooks
from corral.runtime.mounts import MountContext
from corral.runtime.process.identity import (
    become,
    chdir_after_user,
    chdir_before_user,
    describe,
    env_with_home,
    find_executable,
    last_capability,
    load_seccomp_early,
    load_seccomp_late,
    notifies,
    reset_signals,
    setgroups_allowed,
)
from corral.runtime.process.sync import SyncChannel
from corral.runtime.rlimits import apply_rlimits
from corral.runtime.rootfs import enter_rootfs, harden_rootfs
from corral.runtime.state import EXEC_FIFO
from corral.runtime.syscalls import Syscalls
from corral.spec.record import Record
from corral.spec.runtime import Spec

# Signals that end the init while it waits for `start` (TERM, INT, HUP, QUIT,
# USR1, USR2); as PID 1 of its namespace it would otherwise ignore them.
_WAITING_EXIT_SIGNALS = (15, 2, 1, 3, 10, 12)


class InitContext(Record):
    spec: Spec
    rootfs: str
    bundle: str
    # O_PATH fd on exec.fifo, reopened through /proc/self/fd after pivot_root (on its
    # state directory when the container has no /proc of its own)
    fifo_fd: int
    cgroup_paths: dict[str, str]
    user_namespace: bool
    no_pivot: bool = False
    preserve_fds: int = 0
    console_fd: int | None = None
    seccomp: object | None = None  # a seccomp.SeccompProgram
    mount_sources_fd: int | None = None  # socket bringing bind sources' fds (mountsources)


class InitSequence:
    listener_channel = None  # where a seccomp listener goes: run_init's channel to the runtime

    def __init__(self, ctx: InitContext, syscalls: Syscalls, last_cap: int,
                 before_pivot=None, channel_fds: tuple[int, ...] = ()):
        self.ctx = ctx
        self.sc = syscalls
        self.last_cap = last_cap
        self.before_pivot = before_pivot
        self.channel_fds = channel_fds

    def prepare(self) -> str:
        """Everything up to "ready"; returns the resolved executable."""
        ctx, sc, spec = self.ctx, self.sc, self.ctx.spec
        process = spec.process
        sc.setsid()
        mounts = MountContext(rootfs=ctx.rootfs, bundle=ctx.bundle,
                              cgroup_paths=ctx.cgroup_paths,
                              cgroup_namespace=spec.has_new_namespace("cgroup"), syscalls=sc,
                              source_fds=self.mount_sources())
        enter_rootfs(spec, mounts, user_namespace=ctx.user_namespace, no_pivot=ctx.no_pivot,
                     before_pivot=self.before_pivot)
        make_cwd(process.cwd, sc)  # before the root may turn read-only
        if spec.has_new_namespace("network"):
            sc.set_link_up("lo")  # as runc: 127.0.0.1 works in a network namespace of our own
        if spec.hostname:
            sc.sethostname(spec.hostname)
        if spec.domainname:
            sc.setdomainname(spec.domainname)
        harden_rootfs(spec, sc)
        process.env = env_with_home(process)
        if ctx.console_fd is not None:
            from corral.runtime import console  # loaded by the runtime before it forked

            console.take_terminal(ctx.console_fd, process.console_size, process.user.uid)
        executable = find_executable(process)
        apply_rlimits(process.rlimits, sc)
        sc.close_fds_except(self.kept_fds())
        entered = chdir_before_user(process.cwd, sc)
        load_seccomp_early(ctx.seccomp, process, sc, self.listener_channel)
        become(process, sc, self.last_cap,
               may_setgroups=not ctx.user_namespace or setgroups_allowed())
        chdir_after_user(process.cwd, sc, entered)
        if notifies(ctx.seccomp):
            # The listener reaches the agent through the runtime: before "ready".
            load_seccomp_late(ctx.seccomp, process, sc, self.listener_channel)
        return executable

    def mount_sources(self) -> dict[int, int]:
        if self.ctx.mount_sources_fd is None:
            return {}
        from corral.runtime import mountsources  # its socket module: only when needed

        return mountsources.receive(self.ctx.mount_sources_fd)

    def kept_fds(self) -> set[int]:
        """What the init still needs: preserved fds, its sync pipes, exec.fifo."""
        kept = set(range(3, 3 + self.ctx.preserve_fds))
        kept.update(self.channel_fds)
        kept.add(self.ctx.fifo_fd)
        return kept

    def wait_for_start(self) -> None:
        """Block until `start` opens exec.fifo for reading."""
        for signum in _WAITING_EXIT_SIGNALS:
            _signal.signal(signum, lambda s, _f: os._exit(128 + s))
        if _is_directory(self.ctx.fifo_fd):  # a container without a /proc of its own
            fd = os.open(EXEC_FIFO, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.ctx.fifo_fd)
        else:
            fd = os.open(f"/proc/self/fd/{self.ctx.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
        # `fd` stays open (close-on-exec): `start` reads to EOF, so poststart runs only
        # once the startContainer hooks are done and the program is exec'd (OCI order).
        os.close(self.ctx.fifo_fd)

    def exec(self, executable: str, start_hooks=None) -> None:
        process = self.ctx.spec.process
        reset_signals()
        self.sc.mark_fds_cloexec(3 + self.ctx.preserve_fds)
        if not notifies(self.ctx.seccomp):
            load_seccomp_late(self.ctx.seccomp, process, self.sc)
        if start_hooks is not None:
            start_hooks()  # under the no_new_privs filter too, as runc runs them
        self.sc.execve(executable, process.args, process.env)


def _is_directory(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def make_cwd(cwd: str, sc: Syscalls) -> None:
    """mkdir -p process.cwd, as root and after pivot_root: in the jail, where "/" is
    the container's root (a /proc link out of it is caught when the cwd is entered)."""
    path = ""
    for part in os.path.normpath(cwd).split("/"):
        if part:
            path += "/" + part
            if not os.path.exists(path):
                sc.mkdir(path)


def run_init(ctx: InitContext, channel: SyncChannel, syscalls: Syscalls) -> None:
    """The init's whole life; never returns (execs or exits)."""
    try:
        channel.debug(f"nsexec-2[{os.getpid()}]: <= nsexec container setup")
        channel.debug("child process in init()")
        last_cap = last_capability()
        hooks = HookRunner(ctx.spec, ctx.rootfs, channel)
        sequence = InitSequence(ctx, syscalls, last_cap, before_pivot=hooks.before_pivot,
                                channel_fds=(channel.read_fd, channel.write_fd))
        sequence.listener_channel = channel
        if ctx.spec.has_new_namespace("cgroup"):
            channel.expect("cgroup-joined")
            syscalls.unshare(k.CLONE_NEWCGROUP)
            executable = sequence.prepare()
        else:
            executable = sequence.prepare()  # while the runtime moves us into our cgroup
            channel.expect("cgroup-joined")
    except BaseException as e:  # noqa: BLE001 - every failure is reported, none escapes
        _report(channel, e)
        os._exit(1)
    channel.debug("init: closing the pipe to signal completion")
    channel.send("ready")
    channel.close()
    try:
        sequence.wait_for_start()
        sequence.exec(executable, hooks.start_container)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"corral-runtime init: {describe(e)}\n".encode())
    os._exit(127)


class HookRunner:
    """The hooks the init has a part in (see corral.runtime.hooks)."""

    def __init__(self, spec: Spec, rootfs: str, channel: SyncChannel):
        self.hooks = spec.hooks
        self.rootfs = rootfs
        self.channel = channel
        self.state: dict | None = None  # the runtime sends it: we do not know our host PID

    def before_pivot(self) -> None:
        if not any(self.hooks.get(k) for k in ("prestart", "createRuntime", "createContainer",
                                                 "startContainer")):
            return
        self.channel.send("run-hooks")
        self.state = self.channel.expect("hooks-done")["state"]
        if self.hooks.get("createContainer"):
            os.chdir(self.rootfs)  # runc runs them with the container's root as their cwd
            run_hooks("createContainer", self.hooks["createContainer"], self.state)

    def start_container(self) -> None:
        if self.hooks.get("startContainer"):
            run_hooks("startContainer", self.hooks["startContainer"],
                      dict(self.state, status="created"))


def _report(channel: SyncChannel, error: BaseException) -> None:
    try:
        channel.send("error", message=describe(error))
    except OSError:
        pass
