"""The `oci` runtime handler: a runc-compatible binary (runc, crun, runsc) run by the shim.

It looks to the shim like a corral.runtime Container (create, start, kill,
exec, update, delete, state), so any runc-compatible runtime can be a
Kubernetes RuntimeClass handler.  The binary's container init is
orphaned when the binary exits and, the shim being a subreaper, becomes
the shim's child: exits are reaped and recorded the same way as native
containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from corral.runtime.errors import ContainerExists, InvalidState, RuntimeFailure
from corral.runtime.state import process_start_time


class OciState:
    def __init__(self, owner: OciContainer, pid: int):
        self.owner = owner
        self.pid = pid
        self.pid_start = process_start_time(pid)

    def init_alive(self) -> bool:
        return self.pid > 0 and process_start_time(self.pid) == self.pid_start

    def status(self) -> str:
        if not self.init_alive():
            return "stopped"
        try:
            return json.loads(self.owner.run("state", self.owner.id).stdout)["status"]
        except (RuntimeFailure, ValueError, KeyError):
            return "stopped"


class OciContainer:
    def __init__(self, binary: str, root: str, container_id: str):
        self.binary = binary
        self.root = root
        self.id = container_id
        self.state: OciState | None = None

    def run(self, *args: str, stdio: tuple | None = None, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """The binary with runc's global flags; a failure is its stderr, in one line."""
        with tempfile.TemporaryFile() as errors:
            stdin, stdout = (stdio[0], stdio[1]) if stdio else (subprocess.DEVNULL, None)
            stderr = stdio[2] if stdio else errors
            try:
                done = subprocess.run([self.binary, "--root", self.root, *args],
                                      stdin=stdin if input is None else None, input=input,
                                      stdout=stdout if stdio else subprocess.PIPE,
                                      stderr=stderr if stdio else errors, timeout=timeout,
                                      close_fds=True)
            except subprocess.TimeoutExpired:
                raise RuntimeFailure(f"{self.binary} {args[0]}: timed out") from None
            except OSError as e:
                raise RuntimeFailure(f"{self.binary}: {e}") from None
            if done.returncode != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip().splitlines()
                text = message[-1] if message else f"exit status {done.returncode}"
                if "already exists" in text:
                    raise ContainerExists(text)
                raise RuntimeFailure(f"{os.path.basename(self.binary)} {args[0]}: {text}")
            return done

    @classmethod
    def create(cls, binary: str, root: str, container_id: str, bundle: str,
               stdio: tuple) -> OciContainer:
        container = cls(binary, root, container_id)
        pid_file = os.path.join(root, f"{container_id}.pid")
        os.makedirs(root, mode=0o711, exist_ok=True)
        # The binary's own stderr is the container's until it execs the init: runc reports
        # errors through its log, so the container's stderr pipe gets nothing of runc's.
        container.run("create", "--bundle", bundle, "--pid-file", pid_file, container_id,
                      stdio=stdio)
        with open(pid_file) as f:
            container.state = OciState(container, int(f.read()))
        os.unlink(pid_file)
        return container

    def start(self) -> None:
        if self.state.status() != "created":
            raise InvalidState(f"container {self.id} is not created")
        self.run("start", self.id)

    def kill(self, signum: int, all_processes: bool = False) -> None:
        self.run("kill", *(["--all"] if all_processes else []), self.id, str(signum))

    def exec(self, process, stdio: tuple) -> int:
        pid_file = os.path.join(self.root, f"{self.id}.exec.pid")
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.root) as spec:
            json.dump(process, spec)
            spec.flush()
            self.run("exec", "--detach", "--pid-file", pid_file, "--process", spec.name,
                     self.id, stdio=stdio)
        with open(pid_file) as f:
            pid = int(f.read())
        os.unlink(pid_file)
        return pid

    def update(self, resources: dict) -> None:
        self.run("update", "--resources", "-", self.id, input=json.dumps(resources).encode())

    def delete(self, force: bool = False) -> None:
        try:
            self.run("delete", *(["--force"] if force else []), self.id)
        except RuntimeFailure as e:
            if "does not exist" not in str(e) and "not exist" not in str(e):
                raise
