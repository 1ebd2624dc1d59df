"""The runtime-handler interface: what the shim asks of whatever runs a pod's containers.

A handler is a Kubernetes RuntimeClass: `native` (corral.runtime forked in the
shim), `oci` (any runc-compatible binary), `runsc` (one gVisor sandbox per
pod) and `vm` (a micro-VM per pod).  The shim (server.py) keeps the pod's
bookkeeping — stdio, CRI logs, exit records, waiters, deadlines — and
asks its handler for everything that touches a container:

    Handler           one per shim (pod): start_pod / stop_pod, create
    HandledContainer  one per container: start, kill, exec, status, stats,
                      update, delete, oom_killed

A handler whose containers are not the shim's children (a VM's) reports their
ends through `ShimServices.container_exited` / `exec_exited`; the others' are
reaped by the shim and matched on `HandledContainer.pid`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from corral.shim.protocol import ShimError


class Unsupported(ShimError):
    """What this handler cannot do (corrald answers FAILED_PRECONDITION)."""

    def __init__(self, message: str):
        super().__init__("unsupported", message)


class ShimServices(Protocol):
    """What the shim lends its handler."""

    pod_id: str
    dir: str  # the shim's directory: the handler's state goes below it

    def in_helper(self, work: Callable):
        """Run `work` in a short-lived child of the shim; its JSON result, or its error."""

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call `callback(fd)` from the shim's loop whenever `fd` is readable."""

    def watch_writable(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call `callback(fd)` from the shim's loop once `fd` is writable (one shot)."""

    def unwatch(self, fd: int) -> None: ...

    def container_exited(self, container_id: str, code: int, reason: str = "") -> None:
        """A container's init ended where the shim cannot reap it (in a VM)."""

    def exec_exited(self, key: int, code: int) -> None:
        """An exec'd process, known by the key `exec` returned, ended (in a VM)."""

    def sandbox_ended(self, code: int, reason: str) -> None:
        """The pod's sandbox (a VM, gVisor's) ended unasked: the pod is not ready."""


class HandledContainer:
    """One container of a handler.  `pid` is its init's PID on the host (0 if it has
    none there: the shim then learns of its end from `container_exited`)."""

    id: str
    pid: int = 0

    def status(self) -> str:
        """created | running | paused | stopped, as the runtime sees it now."""
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def kill(self, signum: int, all_processes: bool = False) -> None:
        raise NotImplementedError

    def exec(self, process: dict, stdio: tuple[int, int, int] | None,
             console_socket: str | None = None) -> int:
        """Start `process` (the OCI process object, unparsed) in the container; the key
        its end is known by: its host PID, if it is the shim's child."""
        raise NotImplementedError

    def kill_exec(self, key: int, signum: int) -> None:
        """Signal a process `exec` started (the shim SIGKILLs one whose client left)."""
        import os

        try:
            os.kill(key, signum)
        except ProcessLookupError:
            pass

    def stats(self) -> dict:
        """runc's `events --stats` data: {"cpu": …, "memory": …, "pids": …}."""
        raise Unsupported("this runtime handler reports no stats")

    def update(self, resources: dict) -> None:
        raise Unsupported("this runtime handler cannot update resources")

    def delete(self) -> None:
        """Remove the container, killing what is left of it."""
        raise NotImplementedError

    def oom_killed(self) -> bool:
        return False


class Handler:
    """One pod's runtime.  `start_pod` runs once, before any container is created."""

    def __init__(self, spec: dict, services: ShimServices):
        self.spec = spec  # HandlerSpec.to_dict(): name, type, path, options
        self.services = services

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.spec.get("type", "")

    @property
    def options(self) -> dict:
        return self.spec.get("options") or {}

    def start_pod(self, pod: dict) -> dict:
        """Make the pod's sandbox, if the handler has one.  `pod`: {"namespaces":
        {"net": path, …}, "cgroup_parent", "hostname", …}; the reply is the shim's."""
        return {}

    def stop_pod(self) -> None:
        """End the pod's sandbox; every container has been deleted."""

    def prepare_sandbox(self) -> dict:
        """Make the sandbox before its pod exists (a shim of corrald's warm pool);
        `start_pod` then gives it to the pod.  Only handlers with a sandbox can."""
        raise Unsupported(f"the {self.spec.get('type')} runtime handler has no warm pool")

    def relocate(self, old_dir: str, new_dir: str) -> None:
        """The shim's directory was renamed from `old_dir` (its pooled shim claimed)."""

    def create(self, container_id: str, bundle: str, stdio: tuple[int, int, int],
               console_socket: str | None = None) -> HandledContainer:
        raise NotImplementedError

    def reaped(self, pid: int, code: int) -> bool:
        """A child of the shim ended that none of its containers or execs is: True if it
        was this handler's own (a VM's QEMU, a sandbox's root)."""
        return False
