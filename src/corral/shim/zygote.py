"""The shim zygote: shims forked from one warm, single-threaded process.

Starting a shim as a new interpreter costs ~60 ms and ~15 MiB of private
memory per pod.  corrald instead starts this zygote once: it imports
everything a shim needs, freezes its objects out of the garbage
collector's reach (`gc.freeze()`, so collections do not write to pages the
children share), and forks a shim per request.  Each shim double-forks
away (its own session, reparented to init or the nearest subreaper, not
corrald's child) and shares the zygote's pages copy-on-write.

    request  {"op": "spawn", "id": POD, "dir": DIR, "socket": PATH}
    reply    {"ok": true, "pid": PID} | {"ok": false, "error": ...}

The zygote ends with corrald, however corrald ends; its shims do not (they
keep the containers alive across daemon restarts).  Its stdin is a pipe
whose only writer is corrald: EOF there means corrald is gone.  (Not
PR_SET_PDEATHSIG: that fires when the *thread* that started the zygote
ends, and corrald is threaded; nor a check of getppid() == 1: under a
subreaper the orphaned zygote's parent is not 1.)
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys
import traceback

from corral.shim.proctitle import retitle
from corral.shim.protocol import decode_frames, encode


def spawn_shim(pod_id: str, directory: str, socket_path: str, inherited: list[int]) -> int:
    """Fork a detached shim; its PID once its socket listens (raises if it failed)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            for fd in inherited:
                os.close(fd)
            if os.fork() != 0:
                os._exit(0)
            os.setsid()  # the shim leads a session of its own
            _become_shim(pod_id, directory, socket_path, ready_w)
        except BaseException:  # noqa: BLE001 - never return into the zygote's loop
            traceback.print_exc()
        os._exit(1)
    os.close(ready_w)
    try:
        os.waitpid(child, 0)
        data = b""
        while chunk := os.read(ready_r, 64):
            data += chunk
    finally:
        os.close(ready_r)
    words = data.split()
    if len(words) != 2 or words[0] != b"ready":
        raise RuntimeError(f"shim for pod {pod_id} did not start; see {directory}/shim.log")
    return int(words[1])


def _become_shim(pod_id: str, directory: str, socket_path: str, ready_w: int) -> None:
    from corral.runtime import syscalls
    from corral.shim.server import Shim

    # The zygote's objects stay frozen: a collection would write to every page they share.
    os.makedirs(directory, mode=0o700, exist_ok=True)
    log = os.open(os.path.join(directory, "shim.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDWR)
    for target, fd in ((0, null), (1, null), (2, log)):
        os.dup2(fd, target)
    os.close(null)
    os.close(log)
    syscalls.Syscalls().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    retitle(f"corral.shim {pod_id}")
    shim = Shim(pod_id, directory, socket_path)
    shim.listen()
    with open(os.path.join(directory, "shim.pid"), "w") as f:
        f.write(str(os.getpid()))
    os.write(ready_w, f"ready {os.getpid()}\n".encode())
    os.close(ready_w)
    shim.serve()
    os._exit(0)


def _warm_up() -> None:
    """Import now all a shim may use: what a shim imports later is private to it, what the
    zygote imported is shared by every shim."""
    import importlib
    import pkgutil

    import corral.runtime
    import corral.shim
    import corral.spec

    for package in (corral.runtime, corral.shim, corral.spec):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith((".cli", ".cliargs", ".__main__", ".zygote")):
                importlib.import_module(module.name)


def serve(socket_path: str, parent_fd: int = 0) -> None:
    """Serve spawn requests until `parent_fd` (corrald's end of a pipe) reads EOF."""
    _warm_up()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(8)
    gc.collect()
    gc.freeze()
    print("ready", flush=True)
    events = selectors.DefaultSelector()
    events.register(listener, selectors.EVENT_READ)
    events.register(parent_fd, selectors.EVENT_READ)
    while True:
        ready = {key.fd for key, _ in events.select()}
        if parent_fd in ready and not os.read(parent_fd, 4096):
            os._exit(0)  # corrald is gone (it writes nothing: any read is EOF or noise)
        if listener.fileno() not in ready:
            continue
        conn, _ = listener.accept()
        with conn:
            buffer = bytearray()
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                buffer += data
                for request in decode_frames(buffer):
                    try:
                        pid = spawn_shim(request["id"], request["dir"], request["socket"],
                                         [listener.fileno(), conn.fileno(), events.fileno()])
                        reply = {"ok": True, "pid": pid}
                    except Exception as e:  # noqa: BLE001 - the caller gets the message
                        reply = {"ok": False, "kind": "failed", "error": str(e)}
                    conn.sendall(encode(reply))


if __name__ == "__main__":
    serve(sys.argv[1])
