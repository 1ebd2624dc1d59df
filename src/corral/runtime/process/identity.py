"""The last steps before execve, shared by a container's init and `exec` processes:
resolve the program, take on the user, groups and capabilities, reset signals.
"""

from __future__ import annotations

# `_signal`, not `signal`: built into the interpreter, so it imports in no time
# and needs no file (these steps run after pivot_root or setns into the
# container's mount namespace, where the host's Python library is out of reach).
import _signal
import os
import stat

from corral.runtime import syscalls as k
from corral.runtime.capabilities import CapabilitySets
from corral.runtime.syscalls import Syscalls
from corral.spec.runtime import Process

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExecutableNotFound(OSError):
    pass


def find_executable(process: Process) -> str:
    """Resolve args[0] as execvp would, with the process's PATH, before committing."""
    name = process.args[0]
    if "/" in name:
        candidates = [name if os.path.isabs(name) else os.path.join(process.cwd, name)]
    else:
        path = process.env_value("PATH")
        candidates = [os.path.join(d or ".", name) for d in (path or DEFAULT_PATH).split(":")]
    not_executable = None
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if st.st_mode & 0o111:
            return candidate
        not_executable = not_executable or candidate  # execvp goes on looking, so do we
    if not_executable:
        raise ExecutableNotFound(13, f'exec: "{not_executable}": permission denied')
    raise ExecutableNotFound(2, f'exec: "{name}": executable file not found in $PATH'
                             if "/" not in name else f'exec: "{name}": no such file')


def env_with_home(process: Process) -> list[str]:
    """HOME from the container's /etc/passwd when the config sets none ("/" if no entry),
    as runc does.  Call with the container's root as "/"."""
    if process.env_value("HOME") is not None:
        return process.env
    home = "/"
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(process.user.uid):
                    home = fields[5] or "/"
                    break
    except OSError:
        pass
    return [*process.env, f"HOME={home}"]


def become(process: Process, sc: Syscalls, last_cap: int, *, may_setgroups: bool) -> None:
    """Drop to the process's user, groups and capabilities (in that order)."""
    caps = (CapabilitySets(process.capabilities, last_cap)
            if process.capabilities is not None else None)
    if caps:
        caps.drop_bounding(sc)  # needs CAP_SETPCAP: while still root
    # Keep the permitted set across the uid change; capset sets it exactly after.
    sc.prctl(k.PR_SET_KEEPCAPS, 1)
    user = process.user
    if may_setgroups:
        _as_user(sc.setgroups, user.additional_gids, "process.user.additionalGids")
    _as_user(sc.setresgid, user.gid, "process.user.gid")
    _as_user(sc.setresuid, user.uid, "process.user.uid")
    sc.prctl(k.PR_SET_KEEPCAPS, 0)
    if caps:
        caps.apply(sc)
    if user.umask is not None:
        sc.umask(user.umask)
    if process.no_new_privileges:
        sc.prctl(k.PR_SET_NO_NEW_PRIVS, 1)


def chdir_before_user(cwd: str, sc: Syscalls) -> bool:
    """Enter process.cwd while still root, as runc does (a directory the runtime's
    user may reach and the container's user may not); False if that failed."""
    try:
        sc.chdir(cwd)
    except OSError:
        return False
    return True


def chdir_after_user(cwd: str, sc: Syscalls, entered: bool) -> None:
    """Enter process.cwd as the container's user unless done already; either way
    it must be reachable from the container's root."""
    if not entered:
        try:
            sc.chdir(cwd)
        except OSError as e:
            raise OSError(e.errno, f'chdir to cwd ("{cwd}") set in config.json failed: '
                          f"{e.strerror}") from None
    sc.check_cwd_reachable()


def _as_user(call, value, field: str) -> None:
    try:
        call(value)
    except OSError as e:
        hint = " (not mapped in the user namespace?)" if e.errno == 22 else ""
        raise OSError(e.errno, f"{field}: cannot switch to {value}: {e.strerror}{hint}") \
            from None


def load_seccomp_early(program, process: Process, sc: Syscalls, channel=None) -> None:
    """Without no_new_privs, loading needs CAP_SYS_ADMIN: before the user change."""
    if program is not None and not process.no_new_privileges:
        _load_seccomp(program, sc, channel)


def load_seccomp_late(program, process: Process, sc: Syscalls, channel=None) -> None:
    """With no_new_privs, as late as can be (fewer syscalls to allow); for a filter
    that notifies, while `channel` to the runtime is still open."""
    if program is not None and process.no_new_privileges:
        _load_seccomp(program, sc, channel)


def notifies(program) -> bool:
    """A seccomp.SeccompProgram whose listener must reach the runtime (SCMP_ACT_NOTIFY)."""
    return program is not None and program.notifies


def _load_seccomp(program, sc: Syscalls, channel) -> None:
    """Load the compiled program (a seccomp.SeccompProgram); its listener, if any,
    goes to the runtime over `channel`."""
    try:
        listener = sc.load_seccomp(program.bpf, program.flags)
    except OSError as e:
        raise OSError(e.errno, f"linux.seccomp: cannot load the filter: {e.strerror}") \
            from None
    if program.notifies:
        hand_listener_to_runtime(channel, listener)


def hand_listener_to_runtime(channel, listener: int) -> None:
    """Tell the runtime which fd is the listener; it copies it (pidfd_getfd) for the
    seccomp agent.  Ours is closed once the agent has its copy: a syscall held for
    the agent before that would wait for good."""
    try:
        channel.send("seccomp-listener", fd=listener)
        reply = channel.expect("seccomp-listener-sent")
    finally:
        os.close(listener)
    if reply.get("error"):
        from corral.runtime.seccomp import SeccompAgentFailed  # imported before the fork

        raise SeccompAgentFailed(reply["error"])


def setgroups_allowed(pid: str | int = "self") -> bool:
    """False in a user namespace whose setgroups was denied (rootless maps)."""
    try:
        with open(f"/proc/{pid}/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across execve."""
    for signum in range(1, _signal.NSIG):
        if signum in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def describe(error: BaseException) -> str:
    """An exception as one line for the user."""
    if isinstance(error, OSError) and error.strerror:
        extra = f": {error.filename}" if error.filename and error.filename not in \
            error.strerror else ""
        return error.strerror + extra
    return str(error) or type(error).__name__
