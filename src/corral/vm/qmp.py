"""A QMP client: QEMU's JSON monitor on a Unix socket, for saving and restoring VMs.

One command at a time; asynchronous events that arrive between are skipped.
"""

from __future__ import annotations

import json
import socket
import time

from corral.vm.errors import VmError


class QmpError(VmError):
    pass


class Qmp:
    def __init__(self, path: str, timeout: float = 10.0, alive=lambda: True):
        """Connect (QEMU makes the socket shortly after it starts) and leave the
        capabilities negotiation mode."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
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

    def execute(self, command: str, **arguments) -> dict:
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
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
