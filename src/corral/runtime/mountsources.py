"""Bind-mount sources the container's init cannot reach by itself.

In a user namespace the init is root only over the ids mapped into it: a
0700 directory of the host's root on the way to a bind source stops it.
As runc does (its mount-source fds), the runtime opens each source for it
with the host's credentials, in the init's mount namespace (a bind mount
must come from the namespace it goes into), and hands the O_PATH fds over
a Unix socket; the init mounts /proc/self/fd/N.

    runtime ──fork──▶ helper: setns(init's mnt ns), open(source, O_PATH) ─┐
       │                                                 SCM_RIGHTS      │
       │                         init ◀── (index, fd) … "end" ───────────┘
"""

from __future__ import annotations

import os

from corral.spec.runtime import Spec

_END = b"end"


def needed(spec: Spec) -> bool:
    """As runc: a user and a mount namespace, bind mounts, and a runtime that is root."""
    return (spec.linux.namespace("user") is not None
            and spec.linux.namespace("mount") is not None
            and os.geteuid() == 0 and any(m.is_bind for m in spec.mounts))


def socket_pair() -> tuple[object, int]:
    """(the runtime's end, the init's end as a plain fd), both close-on-exec."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return ours, theirs.detach()


def send(sock, init_pid: int, spec: Spec, bundle: str) -> None:
    """Open every bind source in the init's mount namespace and send the fds.

    A forked helper does it: joining a mount namespace needs a process that
    shares its filesystem context with no other, and the runtime keeps its own.
    A source the helper cannot open is left to the init, which reports it.
    """
    helper = os.fork()
    if helper == 0:
        status = 1
        try:
            _send_from_helper(sock, init_pid, spec, bundle)
            status = 0
        finally:
            os._exit(status)
    os.waitpid(helper, 0)


def _send_from_helper(sock, init_pid: int, spec: Spec, bundle: str) -> None:
    import socket

    from corral.runtime.syscalls import CLONE_NEWNS, Syscalls

    ns_fd = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    Syscalls().setns(ns_fd, CLONE_NEWNS)
    for index, mount in enumerate(spec.mounts):
        if not mount.is_bind:
            continue
        source = os.path.join(bundle, mount.source)  # an absolute source stays as it is
        try:
            fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        socket.send_fds(sock, [str(index).encode()], [fd])
        os.close(fd)
    sock.send(_END)


def receive(fd: int) -> dict[int, int]:
    """In the init: index in spec.mounts → O_PATH fd, until the runtime says "end"
    (or its end closes: then sources are looked up by path, as without a helper)."""
    import socket

    sock = socket.socket(fileno=fd)
    sources: dict[int, int] = {}
    try:
        while True:
            data, fds, _flags, _addr = socket.recv_fds(sock, 64, 1, socket.MSG_CMSG_CLOEXEC)
            if not data or data == _END:
                break
            sources[int(data)] = fds[0]
    finally:
        sock.close()
    return sources
