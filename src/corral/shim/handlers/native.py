"""The `native` handler: corral.runtime as a library, its containers forked in the shim.

Create, start and exec run in the shim's helper child (`in_helper`): they touch
hundreds of objects, and in CPython touching is writing, which would turn the
pages the shim shares with its zygote into private copies, per pod.
"""

from __future__ import annotations

from corral.runtime.container import Container
from corral.shim.handlers.base import HandledContainer, Handler
from corral.shim.protocol import ShimError


class NativeContainer(HandledContainer):
    def __init__(self, handler: NativeHandler, container: Container):
        self.handler = handler
        self.container = container
        self.id = container.id

    @property
    def pid(self) -> int:
        return self.container.state.pid

    def status(self) -> str:
        return self.container.state.status()

    def alive(self) -> bool:
        return self.container.state.init_alive()

    def start(self) -> None:
        self.handler.services.in_helper(self.container.start)  # waits on the exec FIFO

    def kill(self, signum: int, all_processes: bool = False) -> None:
        self.container.kill(signum, all_processes)

    def exec(self, process: dict, stdio: tuple[int, int, int] | None,
             console_socket: str | None = None) -> int:
        return self.handler.services.in_helper(lambda: self.container.exec(
            _parsed(process), stdio=stdio, console_socket=console_socket))

    def stats(self) -> dict:
        from corral.runtime.cgroups import load_manager
        from corral.runtime.cgroups.stats import read_stats

        saved = self.container.state.cgroup
        return read_stats(load_manager(saved)) if saved else {}

    def update(self, resources: dict) -> None:
        self.container.update(resources)

    def delete(self) -> None:
        self.container.delete(force=True)

    def oom_killed(self) -> bool:
        return memory_cgroup_oom(self.container.state.cgroup)


class NativeHandler(Handler):
    def __init__(self, spec: dict, services):
        super().__init__(spec, services)
        import os

        self.root = os.path.join(services.dir, "runtime")
        os.makedirs(self.root, mode=0o711, exist_ok=True)

    def create(self, container_id: str, bundle: str, stdio: tuple[int, int, int],
               console_socket: str | None = None) -> NativeContainer:
        self.services.in_helper(lambda: Container.create(
            self.root, container_id, bundle, stdio=stdio, console_socket=console_socket).id)
        return NativeContainer(self, Container.load(self.root, container_id))


def _parsed(process: dict):
    """The OCI process object, checked (in the helper: parsing touches many objects)."""
    from corral.spec.runtime import Process, SpecError

    try:
        return Process.parse(process, "process")
    except SpecError as e:
        raise ShimError("invalid", str(e)) from None


def memory_cgroup_oom(saved: dict | None) -> bool:
    """Whether the kernel's OOM killer killed a process of this saved cgroup's memory
    controller (v1 memory.oom_control, v2 memory.events)."""
    if not saved:
        return False
    from corral.runtime.cgroups import load_manager
    from corral.runtime.cgroups.stats import read_flat_keyed

    paths = load_manager(saved).paths
    counters = read_flat_keyed(paths["memory"], "memory.oom_control") if "memory" in paths \
        else read_flat_keyed(paths.get("", ""), "memory.events") if paths.get("") else None
    return bool(counters and counters.get("oom_kill"))
