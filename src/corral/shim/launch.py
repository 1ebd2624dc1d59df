"""Starting a pod's shim from corrald (which is threaded: it never forks itself)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

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


class ShimLauncher:
    """corrald's way to start shims: through the zygote (zygote.py), restarted if it died;
    a fresh interpreter per shim (`start_shim`) if the zygote cannot run."""

    def __init__(self, socket_path: str, log_path: str, python: str | None = None):
        self.socket_path = socket_path
        self.log_path = log_path
        self.python = python or sys.executable
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start_zygote(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path), mode=0o700, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # stdin: a pipe only we write to (never, in fact): the zygote ends at its EOF,
            # that is when this process ends, however it ends.
            self.process = subprocess.Popen(
                [self.python, "-m", "corral.shim.zygote", self.socket_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, close_fds=True)
        line = self.process.stdout.readline()
        self.process.stdout.close()
        if line.strip() != b"ready":
            self.close()
            raise ShimError("failed", f"shim zygote did not start (see {self.log_path})")

    def start(self, pod_id: str, directory: str, socket_path: str) -> int:
        from corral.shim.protocol import ShimClient

        os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
        with self._lock:
            for attempt in (1, 2):
                if self.process is None or self.process.poll() is not None:
                    self._start_zygote()
                try:
                    with ShimClient(self.socket_path, timeout=30) as zygote:
                        return zygote.call("spawn", id=pod_id, dir=directory,
                                           socket=socket_path)["pid"]
                except OSError:
                    if attempt == 2:
                        raise
                    self.close()  # a broken zygote: start a new one
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdin.close()
        self.process = None
