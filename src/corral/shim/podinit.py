"""The pod's init: PID 1 of a PID namespace the pod's containers share (CRI pid = POD).

What containerd's pause container is to such a pod: no container is PID 1
of the shared namespace (PID 1 has no default signal actions, so a `sleep`
would ignore StopContainer's SIGTERM), and orphans of every container are
reparented here and reaped.  It is a fork of the shim, not a program: the
shim unshares CLONE_NEWPID for its next child only, forks, and sets its own
namespace for children back, so the init is the shim's direct child.

    start(pin, namespaces, seccomp, root_dir)   fork it; its PID once it is ready
    stop(pid)                                          SIGTERM (the shim reaps it)

The init, before it says "ready" on a pipe:
    joins the pod's net, IPC and UTS namespaces (what /proc/1/net shows a container)
    makes a mount namespace holding one empty read-only tmpfs and nothing of the
        host (containers may read /proc/1/mountinfo; /proc/1/root is that tmpfs)
    closes every fd, names itself corral-pod-init (comm and cmdline, which
        would otherwise show the shim's command line to every container)
    becomes uid/gid 65535 with no capabilities, not dumpable, no new privileges
    dies with the shim (PR_SET_PDEATHSIG), so a lost shim takes the pod's
        processes with it (the kernel kills a PID namespace whose init ends)
    loads the pod's seccomp filter (the sandbox-level profile, as containerd's pause)
Then it waits for SIGTERM or SIGINT and exits on one sent from outside the
pod (si_pid 0: the shim, the node's admin); the same signals from a container
(`kill 1`) are ignored, so no container can end its pod's namespace.  It
reaps without running any code: its SIGCHLD is SIG_IGN, so the kernel
releases every orphan reparented to it, and every zombie, as it ends.
Python runs only for its setup and a stop request, which keeps the pages it
copies from the shim few.
"""

from __future__ import annotations

import gc
import os
import select
import signal

from corral.runtime import syscalls as k
from corral.shim.protocol import ShimError

TITLE = "corral-pod-init"
NOBODY = 65535  # the pause image's user and group
READY_TIMEOUT = 10.0
_WANTED = {signal.SIGTERM, signal.SIGINT}
_SETNS_FLAGS = {"net": k.CLONE_NEWNET, "ipc": k.CLONE_NEWIPC, "uts": k.CLONE_NEWUTS}


class PodInitError(OSError):
    """A step of the init's own setup failed (reported to the shim on the ready pipe)."""


def start(pin: str, namespaces: dict[str, str], seccomp: tuple[bytes, int] | None,
          root_dir: str) -> int:
    """Fork the pod's init into a new PID namespace pinned at `pin`; its PID.

    `namespaces` ("net"/"ipc"/"uts" → pinned path) are joined; `seccomp` is a
    compiled filter (BPF, seccomp(2) flags); `root_dir` is any directory, where the
    init's empty root is mounted (in its own mount namespace).  Runs in the
    (single-threaded) shim itself; the init keeps none of its fds."""
    sc = k.Syscalls()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = -1
    try:
        sc.unshare(k.CLONE_NEWPID)  # for our next child only
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                sc.setns(own, k.CLONE_NEWPID)  # later children (containers) are ours again
        if pid == 0:
            os.close(ready_r)
            _become_init(ready_w, namespaces, seccomp, root_dir)
        os.close(ready_w)
        ready_w = -1
        try:
            _await_ready(ready_r, pid)
            sc.mount(f"/proc/{pid}/ns/pid", pin, None, k.MS_BIND)
        except BaseException:
            _kill_and_reap(pid)
            raise
        return pid
    finally:
        for fd in (own, ready_r, ready_w):
            if fd >= 0:
                os.close(fd)


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _await_ready(ready_r: int, pid: int) -> None:
    data = b""
    while not data.endswith(b"\n"):
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        if not readable:
            raise ShimError("timeout", f"the pod's init ({pid}) was not ready within "
                            f"{READY_TIMEOUT:.0f} s")
        chunk = os.read(ready_r, 4096)
        if not chunk:
            break
        data += chunk
    if data != b"ready\n":
        message = data.decode(errors="replace").strip().removeprefix("error ")
        raise ShimError("failed", f"the pod's init failed: "
                        f"{message or 'it exited before it was ready'}")


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


# --- in the init ---------------------------------------------------------------------------------
def _become_init(ready_w: int, namespaces: dict[str, str], seccomp, root_dir: str) -> None:
    """Never returns: reports "ready" (or "error …") on ready_w, then serves until stopped."""
    try:
        gc.disable()  # a collection would write to every page shared with the shim
        signal.set_wakeup_fd(-1)
        for signum in signal.valid_signals():
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, _WANTED)  # taken by sigwaitinfo only
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps for us
        sc = k.Syscalls()
        sc.prctl(k.PR_SET_DUMPABLE, 0)
        last_cap = k.capget_bounding_last()  # while /proc is there
        _set_title(sc)
        _join(namespaces, sc)
        _empty_root(root_dir, sc)
        _drop_privileges(sc, last_cap)
        # After the uid change, which clears it; a shim gone before this is seen below,
        # when "ready" finds no reader (EPIPE).
        sc.prctl(k.PR_SET_PDEATHSIG, signal.SIGKILL)
        sc.close_fds_except({ready_w})  # the shim's sockets, pipes, lock and log
        if seccomp is not None:
            sc.load_seccomp(*seccomp)
        os.write(ready_w, b"ready\n")
        os.close(ready_w)
    except BaseException as e:  # noqa: BLE001 - reported to the shim, never raised here
        try:
            os.write(ready_w, f"error {_describe(e)}\n".encode())
        except OSError:
            pass
        os._exit(1)
    _serve()


def _serve() -> None:
    while signal.sigwaitinfo(_WANTED).si_pid != 0:
        pass  # from a process of the pod: ignored
    os._exit(0)  # from outside its namespace: the pod stops


def _join(namespaces: dict[str, str], sc: k.Syscalls) -> None:
    opened = []
    try:
        for kind, path in namespaces.items():
            if path:
                opened.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), kind, path))
        for fd, kind, path in opened:
            try:
                sc.setns(fd, _SETNS_FLAGS[kind])
            except OSError as e:
                raise PodInitError(e.errno, f"join the pod's {kind} namespace {path}: "
                                   f"{e.strerror}") from None
    finally:
        for fd, _, _ in opened:
            os.close(fd)


def _empty_root(root_dir: str, sc: k.Syscalls) -> None:
    """A mount namespace of one empty, read-only tmpfs: nothing of the host is left in it."""
    null = os.open(os.devnull, os.O_RDWR)  # before the host's /dev is gone
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)
    sc.unshare(k.CLONE_NEWNS)
    sc.mount(None, "/", None, k.MS_REC | k.MS_PRIVATE)  # nothing propagates back to the host
    flags = k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC
    sc.mount(TITLE, root_dir, "tmpfs", flags, "size=4k,nr_inodes=2,mode=0555")
    sc.chdir(root_dir)
    sc.pivot_root(".", ".")  # the old root is stacked on the new one …
    sc.umount(".", k.MNT_DETACH)  # … and detached, with every host mount below it
    sc.chdir("/")
    sc.mount(None, "/", None, k.MS_REMOUNT | k.MS_RDONLY | flags)


def _drop_privileges(sc: k.Syscalls, last_cap: int) -> None:
    for number in range(last_cap + 1):
        sc.prctl(k.PR_CAPBSET_DROP, number)
    sc.setgroups([])
    sc.setresgid(NOBODY)
    sc.setresuid(NOBODY)  # from uid 0 to another: the kernel clears every capability
    sc.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_CLEAR_ALL)
    sc.capset(0, 0, 0)
    sc.prctl(k.PR_SET_NO_NEW_PRIVS, 1)


def _set_title(sc: k.Syscalls) -> None:
    """comm and the cmdline a container reads at /proc/1/cmdline: TITLE, not the shim's
    command line.  The argv area is rewritten in place through /proc/self/mem (what
    setproctitle does; PR_SET_MM would need CAP_SYS_RESOURCE): TITLE, its NUL, then
    non-NUL filler, so the kernel reports the string up to the first NUL."""
    sc.set_process_name(TITLE)
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # stat fields 48 and 49
    size = arg_end - arg_start
    if size < 2:
        return
    title = TITLE.encode()[:size - 2] + b"\0"
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(arg_start)
        mem.write(title + b" " * (size - len(title)))


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
