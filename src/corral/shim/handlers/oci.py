"""The `oci` handler: a runc-compatible binary (runc, crun) run by the shim.

The binary's container init is orphaned when the binary exits and, the shim
being a subreaper, becomes the shim's child: exits are reaped and recorded
the same way as native containers.  The binary's errors come from its
`--log` (JSON, runc's and crun's format) — its stderr during `create` is the
container's own — so a failure always carries the runtime's own reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from corral.runtime.errors import ContainerExists, InvalidState, RuntimeFailure
from corral.runtime.state import process_start_time
from corral.shim.handlers.base import HandledContainer, Handler, Unsupported


class OciRuntime:
    """A runc-compatible binary with its global flags, and its state root."""

    def __init__(self, binary: str, root: str, global_flags: tuple[str, ...] = ()):
        self.binary = binary
        self.root = root
        self.global_flags = global_flags
        self.log = os.path.join(root, "runtime.log")
        os.makedirs(root, mode=0o711, exist_ok=True)

    def run(self, *args: str, stdio: tuple | None = None, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """The binary with runc's global flags; a failure is its own message, in one line."""
        log_start = _size(self.log)
        with tempfile.TemporaryFile() as errors:
            stdin, stdout = (stdio[0], stdio[1]) if stdio else (subprocess.DEVNULL, None)
            try:
                done = subprocess.run(
                    [self.binary, "--root", self.root, "--log", self.log, "--log-format", "json",
                     *self.global_flags, *args],
                    stdin=stdin if input is None else None, input=input,
                    stdout=stdout if stdio else subprocess.PIPE,
                    stderr=stdio[2] if stdio else errors, timeout=timeout, close_fds=True)
            except subprocess.TimeoutExpired:
                raise RuntimeFailure(f"{self.name} {args[0]}: timed out") from None
            except OSError as e:
                raise RuntimeFailure(f"{self.binary}: {e}") from None
            if done.returncode != 0:
                errors.seek(0)
                text = _logged_error(self.log, log_start) or _last_line(errors.read()) or \
                    f"exit status {done.returncode}"
                if "already exists" in text:
                    raise ContainerExists(text)
                raise RuntimeFailure(f"{self.name} {args[0]}: {text}")
            return done

    @property
    def name(self) -> str:
        return os.path.basename(self.binary)


class OciContainer(HandledContainer):
    def __init__(self, runtime: OciRuntime, container_id: str, pid: int = 0):
        self.runtime = runtime
        self.id = container_id
        self.pid = pid
        self.pid_start = process_start_time(pid) if pid else None

    def alive(self) -> bool:
        return self.pid > 0 and process_start_time(self.pid) == self.pid_start

    def status(self) -> str:
        if not self.alive():
            return "stopped"
        try:
            return json.loads(self.runtime.run("state", self.id).stdout)["status"]
        except (RuntimeFailure, ValueError, KeyError):
            return "stopped"

    def start(self) -> None:
        if self.status() != "created":
            raise InvalidState(f"container {self.id} is not created")
        self.runtime.run("start", self.id)

    def kill(self, signum: int, all_processes: bool = False) -> None:
        self.runtime.run("kill", *(["--all"] if all_processes else []), self.id, str(signum))

    def exec(self, process: dict, stdio: tuple[int, int, int] | None,
             console_socket: str | None = None) -> int:
        from corral.shim.handlers.native import _parsed

        _parsed(process)  # the binary reads the JSON itself: refuse what corral would
        pid_file = os.path.join(self.runtime.root, f"{self.id}.exec.pid")
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.runtime.root) as spec:
            json.dump(process, spec)
            spec.flush()
            self.runtime.run("exec", "--detach", "--pid-file", pid_file, "--process", spec.name,
                             self.id, stdio=stdio)
        return _read_pid(pid_file)

    def stats(self) -> dict:
        done = self.runtime.run("events", "--stats", self.id)
        return json.loads(done.stdout).get("data", {})

    def update(self, resources: dict) -> None:
        self.runtime.run("update", "--resources", "-", self.id,
                         input=json.dumps(resources).encode())

    def delete(self) -> None:
        try:
            self.runtime.run("delete", "--force", self.id)
        except RuntimeFailure as e:
            if "not exist" not in str(e):
                raise


class OciHandler(Handler):
    def __init__(self, spec: dict, services):
        super().__init__(spec, services)
        self.runtime = OciRuntime(spec["path"], os.path.join(services.dir, "oci"),
                                  tuple(self.options.get("runtime_flags") or ()))

    def create(self, container_id: str, bundle: str, stdio: tuple[int, int, int],
               console_socket: str | None = None) -> OciContainer:
        pid_file = os.path.join(self.runtime.root, f"{container_id}.pid")
        extra = ["--console-socket", console_socket] if console_socket else []
        try:
            self.runtime.run("create", "--bundle", bundle, "--pid-file", pid_file, *extra,
                             container_id, stdio=stdio)
        except ContainerExists:
            raise
        except RuntimeFailure as e:  # the runtime's own reason: it refuses this host or config
            raise Unsupported(str(e)) from None
        return OciContainer(self.runtime, container_id, _read_pid(pid_file))


def _read_pid(path: str) -> int:
    with open(path) as f:
        pid = int(f.read())
    os.unlink(path)
    return pid


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _logged_error(log: str, offset: int) -> str:
    """The last error-level message the binary logged after `offset`."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
            return str(entry.get("msg", "")).strip()
    return ""


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
