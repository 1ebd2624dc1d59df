"""Starting a pod's shim from corrald (which is threaded: it never forks itself)."""

from __future__ import annotations

import os
import subprocess
import sys

from corral.shim.protocol import ShimError


def start_shim(pod_id: str, directory: str, socket_path: str | None = None,
               python: str | None = None, timeout: float = 30.0) -> int:
    """Start the shim detached and return its PID once its socket listens."""
    command = [python or sys.executable, "-m", "corral.shim", "--id", pod_id, "--dir", directory]
    if socket_path:
        os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
        command += ["--socket", socket_path]
    process = subprocess.Popen(command,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               close_fds=True)
    try:
        line = process.stdout.readline().decode(errors="replace").split()
    finally:
        process.stdout.close()
        process.wait(timeout)
    if len(line) != 2 or line[0] != "ready":
        raise ShimError("failed", f"shim for pod {pod_id} did not start: "
                        f"{_tail(os.path.join(directory, 'shim.log'))}")
    return int(line[1])


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-limit:].strip()
    except OSError:
        return "no shim.log"
    return text.splitlines()[-1] if text else "shim.log is empty"
