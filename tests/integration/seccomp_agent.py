"""A seccomp agent for the tests, answering as runc's contrib/cmd/seccompagent does.

    python seccomp_agent.py SOCKET RECORD [--mkdir-errno N]

Listens on SOCKET; each connection brings a container process state (JSON, runc's
specs.ContainerProcessState) and, over SCM_RIGHTS, a seccomp listener.  Each
state is appended to RECORD as one JSON line.  Notifications are answered:

  mkdir(path)              makes "<path>-<metadata>" in the process's root instead
                           and succeeds, or fails with --mkdir-errno
  chmod, fchmod, fchmodat  fail with ENOMEDIUM
  anything else            goes on as if not filtered (SECCOMP_USER_NOTIF_FLAG_CONTINUE)
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import socket
import struct
import threading

# <linux/seccomp.h>, x86_64
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, data.nr, data.arch, data.ip, args
_RESPONSE = struct.Struct("=QqiI")  # id, val, error, flags
_IOCTL_RECV = 0xC0502100  # SECCOMP_IOCTL_NOTIF_RECV
_IOCTL_SEND = 0xC0182101  # SECCOMP_IOCTL_NOTIF_SEND
_FLAG_CONTINUE = 1
_MKDIR, _CHMOD_FAMILY = 83, (90, 91, 268)  # mkdir; chmod, fchmod, fchmodat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("record")
    parser.add_argument("--mkdir-errno", type=int, default=0)
    args = parser.parse_args()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(args.socket)
    server.listen(16)
    while True:
        connection, _ = server.accept()
        with connection:
            payload, fds, _, _ = socket.recv_fds(connection, 4096, 4)
        state = json.loads(payload)
        with open(args.record, "a") as f:
            f.write(json.dumps({"state": state, "fd_count": len(fds)}) + "\n")
        listener = fds[state["fds"].index("seccompFd")]
        for fd in fds:
            if fd != listener:
                os.close(fd)
        threading.Thread(target=answer, args=(listener, state.get("metadata", ""),
                                              args.mkdir_errno), daemon=True).start()


def answer(listener: int, metadata: str, mkdir_errno: int) -> None:
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    while True:
        poller.poll()
        request = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(listener, _IOCTL_RECV, request)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.ENOENT):
                continue  # the process went away meanwhile
            return  # no process uses the filter any more
        notif_id, pid, _, nr, _, _, *call_args = _NOTIF.unpack(request)
        error, flags = 0, 0
        if nr == _MKDIR:
            error = mkdir_errno or mkdir_with_suffix(pid, call_args[0], call_args[1], metadata)
        elif nr in _CHMOD_FAMILY:
            error = errno.ENOMEDIUM
        else:
            flags = _FLAG_CONTINUE
        response = bytearray(_RESPONSE.pack(notif_id, -1 if error else 0, -error, flags))
        try:
            fcntl.ioctl(listener, _IOCTL_SEND, response)
        except OSError:
            pass  # the process was killed while we answered


def mkdir_with_suffix(pid: int, path_address: int, mode: int, metadata: str) -> int:
    """mkdir "<path>-<metadata>" for the process; 0 or an errno."""
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(path_address)
            path = mem.read(4096).split(b"\0", 1)[0].decode()
        base = f"/proc/{pid}/root" if path.startswith("/") else f"/proc/{pid}/cwd"
        os.mkdir(f"{base}/{path.lstrip('/')}-{metadata}", mode)
    except OSError as e:
        return e.errno or errno.ENOSYS
    return 0


if __name__ == "__main__":
    main()
