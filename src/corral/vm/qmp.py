"""A QMP client: QEMU's JSON monitor on a Unix socket, for saving and restoring VMs.

One command at a time; asynchronous events that arrive between are skipped.
"""

from __future__ import annotations

import json
import os
import socket
import time

from corral.vm.errors import VmError


class QmpError(VmError):
    pass


def _connect(sock: socket.socket, path: str) -> None:
    """connect(2) to a socket whose path may be over sun_path's 108 bytes (a pooled VM's,
    whose directory was renamed into a pod's, deeper): through its directory's fd."""
    if len(path.encode()) < 108:
        sock.connect(path)
        return
    directory = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{os.path.basename(path)}")
    finally:
        os.close(directory)


class Qmp:
    def __init__(self, path: str, timeout: float = 10.0, alive=lambda: True):
        """Connect (QEMU makes the socket shortly after it starts) and leave the
        capabilities negotiation mode."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                _connect(sock, path)
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline or not alive():
                    raise QmpError(f"QMP socket {path}: QEMU did not open it") from None
                time.sleep(0.002)
        sock.settimeout(timeout)
        self.sock = sock
        self.reader = sock.makefile("r", encoding="utf-8")
        greeting = self._message()
        if "QMP" not in greeting:
            raise QmpError(f"QMP socket {path}: not a QMP greeting")
        self.execute("qmp_capabilities")

    def execute(self, command: str, send_fd: int | None = None, **arguments) -> dict:
        """`send_fd`: sent with the command (SCM_RIGHTS), as `getfd` and `add-fd` take one."""
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        try:
            if send_fd is None:
                self.sock.sendall(data)
            else:
                sent = socket.send_fds(self.sock, [data], [send_fd])
                self.sock.sendall(data[sent:])
        except OSError as e:  # QEMU exited (a template that cannot restore): a VmError
            raise QmpError(f"QMP {command}: {e}") from None
        while True:
            reply = self._message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QmpError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

    def wait_for(self, command: str, done, timeout: float = 30.0, **arguments) -> dict:
        """Poll `command` until `done(result)`; the last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.execute(command, **arguments)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise QmpError(f"QMP {command}: still {result} after {timeout:.0f}s")
            time.sleep(0.002)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def _message(self) -> dict:
        try:
            line = self.reader.readline()
        except OSError as e:
            raise QmpError(f"QMP: {e}") from None
        if not line:
            raise QmpError("QMP: QEMU closed the monitor")
        try:
            return json.loads(line)
        except ValueError:
            raise QmpError("QMP: not JSON") from None
