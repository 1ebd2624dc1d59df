"""`python -m corral.shim --id POD --dir DIR`: start a pod's shim, detached.

The process corrald starts forks the shim and exits at once, so the shim
is reparented away from corrald (to init or the nearest subreaper) and
lives in its own session.  The shim says "ready <pid>" on the inherited
stdout once its socket listens, then lets go of stdout: corrald reads
that line, or EOF if the shim failed (its reason is in DIR/shim.log).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-shim")
    parser.add_argument("--id", required=True, help="the pod's ID")
    parser.add_argument("--dir", required=True, help="the shim's state directory")
    parser.add_argument("--socket", help="its control socket (default DIR/shim.sock; a Unix "
                        "socket path has at most 107 bytes)")
    opts = parser.parse_args(argv)
    os.makedirs(opts.dir, mode=0o700, exist_ok=True)

    # Everything a container birth needs is imported now, once, before any fork.
    from corral.runtime import syscalls
    from corral.runtime.process import init, spawn  # noqa: F401
    from corral.shim.server import Shim

    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    log = os.open(os.path.join(opts.dir, "shim.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(log, 2)
    ready = os.dup(1)
    os.dup2(null, 1)
    os.close(null)
    os.close(log)
    os.set_inheritable(ready, False)
    try:
        syscalls.Syscalls().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        shim = Shim(opts.id, opts.dir, opts.socket)
        shim.listen()
        with open(os.path.join(opts.dir, "shim.pid"), "w") as f:
            f.write(str(os.getpid()))
        os.write(ready, f"ready {os.getpid()}\n".encode())
        os.close(ready)
        shim.serve()
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
