"""The `vm` handler: a QEMU micro-VM per pod, its containers run by the agent inside.

    start_pod   tap in the pod's netns (vm/network.py) → QEMU (vm/pod.py) → agent ping
                → the guest NIC gets the pod's IP, routes and hostname
    create …    each container's config adapted to the guest (below), relayed to the agent
    output      agent events → the stdio pipes the shim gave (non-blocking, buffered)
    exits       agent events → ShimServices.container_exited / exec_exited, once the
                output before them is in the pipes
    QEMU ends   (reaped by the shim, or the channel's EOF) → every container and exec
                ends 137, reason VMExited

A container's config in the guest: the pod's namespaces are the VM's own (the
entries that join a host namespace by path are dropped, so the pod's
containers share the guest's network, IPC, UTS and PID namespaces), bind
sources outside the pod's bundle directory are copied into the bundle (hosts,
resolv.conf, hostname; small directories), the pod's /dev/shm is the guest's.
The bundle directory itself (with each container's rootfs mounted by corrald)
is shared read-write at the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys

from corral.shim.handlers import VM_CACHE_DIR, VM_TEMPLATE_DIR, vm_memory_mib
from corral.shim.handlers.base import HandledContainer, Handler, Unsupported
from corral.shim.protocol import ShimError

EXITED_WITH_VM = 137
VM_EXITED = "VMExited"
COPY_LIMIT = 16 << 20        # a bind-mounted directory copied into the guest, at most
GUEST_FILES = ".corral-guest"  # in a bundle: the copies of its bind sources
_READ = 1 << 16


class Sink:
    """One stdio fd the shim gave (a dup of it), written without blocking the loop."""

    def __init__(self, handler: VmHandler, fd: int):
        self.handler = handler
        self.fd = os.dup(fd)
        os.set_blocking(self.fd, False)
        self.buffer = bytearray()
        self.closing = False
        self.waiting = False

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        self.buffer += data
        self.flush()

    def flush(self, _fd: int | None = None) -> None:
        self.waiting = False
        while self.buffer and self.fd >= 0:
            try:
                n = os.write(self.fd, self.buffer)
            except BlockingIOError:
                break
            except OSError:  # the shim closed its end (an exec it has finished)
                self.buffer.clear()
                break
            del self.buffer[:n]
        if self.buffer and self.fd >= 0:
            self.waiting = True
            self.handler.services.watch_writable(self.fd, self.flush)
        elif self.closing:
            self.close()
        if not self.buffer:
            self.handler.flushed()

    def end(self) -> None:
        self.closing = True
        if not self.buffer:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            if self.waiting:
                self.handler.services.unwatch(self.fd)
            os.close(self.fd)
            self.fd = -1
        self.buffer.clear()

    @property
    def empty(self) -> bool:
        return not self.buffer


class GuestProcess:
    """A container's init or an exec in the guest: its sinks and stdin relay."""

    def __init__(self, handler: VmHandler, container_id: str, exec_id: str | None,
                 stdio: tuple[int, int, int] | None):
        self.handler = handler
        self.container_id = container_id
        self.exec_id = exec_id
        self.sinks: dict[str, Sink] = {}
        self.stdin_fd = -1
        self.exit: tuple[int, str] | None = None   # seen from the agent
        self.reported = False                      # told the shim
        if stdio is not None:
            stdin, stdout, stderr = stdio
            self.sinks = {"stdout": Sink(handler, stdout), "stderr": Sink(handler, stderr)}
            if stat.S_ISFIFO(os.fstat(stdin).st_mode) or stat.S_ISSOCK(os.fstat(stdin).st_mode):
                self.stdin_fd = os.dup(stdin)
                os.set_blocking(self.stdin_fd, False)

    @property
    def has_stdin(self) -> bool:
        return self.stdin_fd >= 0

    def tag(self) -> dict:
        tag = {"container": self.container_id}
        if self.exec_id is not None:
            tag["exec"] = self.exec_id
        return tag

    def watch_stdin(self) -> None:
        if self.stdin_fd >= 0:
            self.handler.services.watch(self.stdin_fd, self._stdin_readable)

    def _stdin_readable(self, _fd: int) -> None:
        try:
            data = os.read(self.stdin_fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        client = self.handler.client
        try:
            if data:
                client.notify("stdin", data=_b64(data), **self.tag())
            else:
                self.close_stdin()
                client.notify("close_stdin", **self.tag())
            self.handler._want_writable()
        except Exception:  # noqa: BLE001 - the VM is gone: its end is reported elsewhere
            self.close_stdin()

    def close_stdin(self) -> None:
        if self.stdin_fd >= 0:
            self.handler.services.unwatch(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    def close(self) -> None:
        self.close_stdin()
        for sink in self.sinks.values():
            sink.close()

    @property
    def flushed(self) -> bool:
        return all(s.empty for s in self.sinks.values())


class VmContainer(HandledContainer):
    pid = 0  # not a process of this host: its end comes from the agent

    def __init__(self, handler: VmHandler, container_id: str, init: GuestProcess,
                 guest_files: str):
        self.handler = handler
        self.id = container_id
        self.init = init
        self.guest_files = guest_files
        self.execs: dict[int, GuestProcess] = {}
        self.reason = ""

    def status(self) -> str:
        if self.init.exit is not None or not self.handler.running:
            return "stopped"
        try:
            return self.handler.call("state", container=self.id)["status"]
        except ShimError:
            return "stopped" if not self.handler.running else "running"

    def alive(self) -> bool:
        return self.init.exit is None and self.handler.running

    def start(self) -> None:
        self.handler.call("start", container=self.id)

    def kill(self, signum: int, all_processes: bool = False) -> None:
        if not self.handler.running:
            return  # the VM has ended: so has everything in it
        self.handler.call("kill", container=self.id, signal=int(signum), all=all_processes)

    def exec(self, process: dict, stdio: tuple[int, int, int] | None,
             console_socket: str | None = None) -> int:
        if console_socket or stdio is None or (process or {}).get("terminal"):
            raise Unsupported("the vm runtime handler has no tty exec")
        key = self.handler.next_key()
        proc = GuestProcess(self.handler, self.id, f"x{-key}", stdio)
        try:
            self.handler.call("exec", container=self.id, exec=proc.exec_id, process=process,
                              stdin=proc.has_stdin)
        except BaseException:
            proc.close()
            raise
        self.execs[key] = proc
        self.handler.procs[(self.id, proc.exec_id)] = (proc, key)
        proc.watch_stdin()
        return key

    def kill_exec(self, key: int, signum: int) -> None:
        proc = self.execs.get(key)
        if proc is None or proc.exit is not None or not self.handler.running:
            return
        try:
            self.handler.call("kill", container=self.id, exec=proc.exec_id, signal=int(signum))
        except ShimError:
            pass

    def stats(self) -> dict:
        return self.handler.call("stats", container=self.id)["stats"]

    def update(self, resources: dict) -> None:
        self.handler.call("update", container=self.id, resources=resources)

    def delete(self) -> None:
        if self.handler.running:
            try:
                self.handler.call("delete", container=self.id, force=True)
            except ShimError as e:
                if e.kind != "not_found" and self.handler.running:
                    raise
        for proc in [self.init, *self.execs.values()]:
            self.handler.procs.pop((self.id, proc.exec_id), None)
            proc.close()
        self.handler.containers.pop(self.id, None)
        shutil.rmtree(self.guest_files, ignore_errors=True)

    def oom_killed(self) -> bool:
        return self.reason == "OOMKilled"


class VmHandler(Handler):
    """Options (the config's [runtimes.<name>.options]): cache_dir (vmlinux, initramfs,
    the accelerator's probe; corrald gives one), memory (bytes) or memory_mib, cpus, kernel
    (a version under /boot), fstype (9p | virtiofs), boot_timeout."""

    def __init__(self, spec: dict, services):
        super().__init__(spec, services)
        self.pod_vm = None
        self.client = None
        self.netns = ""
        self.bundles_dir = ""
        self.pod_dir = os.path.dirname(services.dir)
        self.containers: dict[str, VmContainer] = {}
        self.procs: dict[tuple[str, str | None], tuple[GuestProcess, int]] = {}
        self.running = False
        self._keys = 0
        self._client_fd = -1
        self._client_wfd = -1
        self._writing = False
        self._wake: tuple[int, int] | None = None

    # --- the pod -------------------------------------------------------------------------------
    def _pod_vm(self, **network):
        from corral.vm.pod import PodVm
        from corral.vm.qemu import socket_path

        options = self.options
        vm_dir = os.path.join(self.services.dir, "vm")
        os.makedirs(vm_dir, mode=0o700, exist_ok=True)
        return PodVm(
            cache_dir=options.get("cache_dir") or VM_CACHE_DIR, vm_dir=vm_dir,
            agent_socket=socket_path(vm_dir, "agent.sock"), memory_mib=vm_memory_mib(options),
            cpus=int(options.get("cpus") or 1), fstype=options.get("fstype") or "9p",
            kernel_version=options.get("kernel") or None,
            template_dir=(options.get("template_dir") or VM_TEMPLATE_DIR)
            if options.get("templates", True) else None, **network)

    def prepare_sandbox(self) -> dict:
        """A warm pool's VM (corrald's pool of shims): restored from the template before
        any pod asks, and run once through a throwaway container, so that QEMU has
        already translated the code a pod's first create runs (TCG's cache is per QEMU
        process: a fresh clone pays it again).  `start_pod` then claims it."""
        from corral.vm.errors import VmError

        if not self.options.get("templates", True):
            raise Unsupported("a pool of vm pods needs templates")
        self.pod_vm = self._pod_vm()
        try:
            self.pod_vm.start_idle(float(self.options.get("boot_timeout") or 60))
            self.client = self.pod_vm.client
            self._warm_up()
        except VmError as e:
            self._end_vm()
            raise ShimError("failed", f"pooled VM: {e}") from None
        except BaseException:
            self._end_vm()
            raise
        return {"vm": {"pid": self.pod_vm.vm.pid, "template": self.pod_vm.template.key}}

    def _warm_up(self) -> None:
        """One container created, run and deleted in the pooled VM, through the share its
        pod's containers will use."""
        from corral.spec.defaults import default_config

        bundle = os.path.join(self.pod_vm._bundles_share().path, ".warm-up")
        os.makedirs(os.path.join(bundle, "rootfs", "bin"))
        try:
            shutil.copy2(shutil.which("busybox") or "/bin/busybox",
                         os.path.join(bundle, "rootfs", "bin", "busybox"))
            config = default_config(args=["/bin/busybox", "true"], terminal=False)
            config["root"]["path"] = "rootfs"
            self.client.call("create", container=".warm-up", bundle=bundle, config=config,
                             stdin=False, timeout=60)
            self.client.call("start", container=".warm-up", timeout=60)
            self.client.wait_event(lambda e: e.get("event") == "exit"
                                   and e.get("container") == ".warm-up", timeout=60)
            self.client.call("delete", container=".warm-up", force=True, timeout=60)
            self.client.events()  # its output: nobody's
        finally:
            shutil.rmtree(bundle, ignore_errors=True)

    def relocate(self, old_dir: str, new_dir: str) -> None:
        """The shim's directory was renamed (a pooled shim claimed for a pod)."""
        if self.pod_vm is not None:
            self.pod_vm.relocate(old_dir, new_dir)

    def start_pod(self, pod: dict) -> dict:
        from corral.vm import network
        from corral.vm.errors import VmError

        netns = (pod.get("namespaces") or {}).get("net")
        if not netns:
            raise Unsupported("a vm pod needs a network namespace of its own "
                              "(host network is not possible in a VM)")
        options = self.options
        # corrald's per-pod bundle directory ("containers"): the guest shares it
        self.bundles_dir = os.path.realpath(pod.get("containers")
                                            or os.path.join(self.pod_dir, "containers"))
        self.pod_dir = os.path.dirname(self.bundles_dir)
        os.makedirs(self.bundles_dir, mode=0o711, exist_ok=True)
        try:
            guest = network.connect_tap(netns)
        except network.NetworkError as e:
            raise ShimError("failed", f"vm pod network: {e}") from None
        self.netns = netns
        mac = guest["interfaces"][0]["mac"] if guest["interfaces"] else None
        timeout = float(options.get("boot_timeout") or 60)
        pooled, self.pod_vm = self.pod_vm, None
        try:
            if pooled is not None:
                try:
                    pooled.claim(bundles_dir=self.bundles_dir, netns=netns, mac=mac,
                                 timeout=timeout)
                    self.pod_vm = pooled
                except (VmError, network.NetworkError, OSError) as e:
                    print(f"pod {self.services.pod_id}: the pooled VM could not be used "
                          f"({e}): restoring one", file=sys.stderr, flush=True)
                    pooled.stop()
                    os.makedirs(self.bundles_dir, mode=0o711, exist_ok=True)
            if self.pod_vm is None:
                self.pod_vm = self._pod_vm(bundles_dir=self.bundles_dir, tap=network.TAP,
                                           mac=mac, netns=netns)
                self.pod_vm.start(timeout)
            if self.pod_vm.fallback:
                print(f"pod {self.services.pod_id}: booted cold, the VM template failed: "
                      f"{self.pod_vm.fallback}", file=sys.stderr, flush=True)
            self.client = self.pod_vm.client
            self.running = True
            self.call("network", interfaces=guest["interfaces"], routes=guest["routes"],
                      hostname=pod.get("hostname") or "")
        except VmError as e:
            self._end_vm()
            raise ShimError("failed", str(e)) from None
        except BaseException:
            self._end_vm()
            raise
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = (wake_r, wake_w)
        self.services.watch(wake_r, self._on_wake)
        self._client_fd = self.client.fileno()
        # The shim's selector takes an fd once: writability is watched on a dup.
        self._client_wfd = os.dup(self._client_fd)
        self.services.watch(self._client_fd, self._on_readable)
        self._want_writable()
        return {"vm": {"pid": self.pod_vm.vm.pid, "kernel": self.pod_vm.kernel.version,
                       "template": self.pod_vm.template.key if self.pod_vm.template else "",
                       "pooled": self.pod_vm is pooled,
                       "boot_seconds": round(self.pod_vm.boot_seconds, 3),
                       "accelerator": self.pod_vm.accelerator.name,
                       "warning": self.pod_vm.warning}}

    def stop_pod(self) -> None:
        for container in list(self.containers.values()):
            container.delete()
        self._end_vm()

    def _end_vm(self) -> None:
        was_running, self.running = self.running, False
        self._unwatch_client()
        if self.pod_vm is not None:
            self.pod_vm.stop()
        if was_running:
            self._vm_ended()
        if self._wake is not None:
            self.services.unwatch(self._wake[0])
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        if self.netns:
            from corral.vm import network

            try:
                network.disconnect_tap(self.netns)
            except network.NetworkError:
                pass
            self.netns = ""

    def reaped(self, pid: int, code: int) -> bool:
        if self.pod_vm is None or pid != self.pod_vm.vm.pid:
            return False
        self.pod_vm.vm.exited(code)
        if self.running:
            self.running = False
            self._vm_ended()
        return True

    def _vm_ended(self) -> None:
        """QEMU is gone: so is everything that ran in it, and the pod is not ready."""
        for proc, _key in list(self.procs.values()):
            if proc.exit is None:
                proc.exit = (EXITED_WITH_VM, VM_EXITED)
        self.flushed()
        self.services.sandbox_ended(EXITED_WITH_VM, VM_EXITED)

    # --- containers ----------------------------------------------------------------------------
    def create(self, container_id: str, bundle: str, stdio: tuple[int, int, int],
               console_socket: str | None = None) -> VmContainer:
        if console_socket:
            raise Unsupported("the vm runtime handler has no tty containers")
        if not self.running:
            raise ShimError("failed", "the pod's VM is not running")
        bundle = os.path.realpath(bundle)
        if os.path.dirname(bundle) != self.bundles_dir:
            raise Unsupported(f"bundle {bundle} is not in the pod's shared directory "
                              f"{self.bundles_dir}")
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        guest_files = os.path.join(bundle, GUEST_FILES)
        guest_config = self.guest_config(config, guest_files)
        init = GuestProcess(self, container_id, None, stdio)
        try:
            self.call("create", container=container_id, bundle=bundle, config=guest_config,
                      stdin=init.has_stdin)
        except BaseException:
            init.close()
            shutil.rmtree(guest_files, ignore_errors=True)
            raise
        container = self.containers[container_id] = VmContainer(self, container_id, init,
                                                                guest_files)
        self.procs[(container_id, None)] = (init, 0)
        init.watch_stdin()
        return container

    def guest_config(self, config: dict, guest_files: str) -> dict:
        """The container's config as the guest runs it (see the module's docstring)."""
        config = json.loads(json.dumps(config))
        linux = config.setdefault("linux", {})
        for ns in linux.get("namespaces") or []:
            if ns.get("type") == "user" and ns.get("path"):
                raise Unsupported("a vm container cannot join a user namespace by path")
        namespaces = linux.get("namespaces") or []
        if any(ns.get("type") == "uts" and ns.get("path") for ns in namespaces):
            config.pop("hostname", None)  # the pod's UTS namespace is the guest's own
            config.pop("domainname", None)
        # Joined by path (the pod's) or the network (the VM's NIC is there): the guest's.
        linux["namespaces"] = [ns for ns in namespaces
                               if not ns.get("path") and ns.get("type") != "network"]
        process = config.get("process") or {}
        process.pop("apparmorProfile", None)   # the guest kernel has no host profiles
        process.pop("selinuxLabel", None)
        if process.get("terminal"):
            raise Unsupported("the vm runtime handler has no tty containers")
        mounts = []
        for i, mount in enumerate(config.get("mounts") or []):
            mounts.append(self._guest_mount(mount, guest_files, i))
        config["mounts"] = mounts
        return config

    def _guest_mount(self, mount: dict, guest_files: str, index: int) -> dict:
        options = mount.get("options") or []
        if mount.get("type") not in (None, "bind", "none") and "bind" not in options \
                and "rbind" not in options:
            return mount  # proc, tmpfs, sysfs…: made in the guest
        source = os.path.realpath(mount.get("source") or "")
        if source == self.bundles_dir or source.startswith(self.bundles_dir + "/"):
            return mount  # shared as it is
        if source == os.path.join(self.pod_dir, "shm"):
            return {**mount, "source": "/dev/shm"}  # the pod's: the guest's, shared
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise Unsupported(f"mount source {source} does not exist") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise Unsupported(f"mount source {source} (not a file or directory) cannot reach "
                              f"a VM")
        os.makedirs(guest_files, mode=0o755, exist_ok=True)
        copy = os.path.join(guest_files, f"{index}-{os.path.basename(source) or 'root'}")
        if stat.S_ISREG(st.st_mode):
            shutil.copy2(source, copy)
        else:
            if _tree_size(source, COPY_LIMIT) > COPY_LIMIT:
                raise Unsupported(f"mount source {source} is a directory over "
                                  f"{COPY_LIMIT >> 20} MiB: a vm pod gets copies of its "
                                  f"host directories")
            shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
        return {**mount, "source": copy}

    def next_key(self) -> int:
        """An exec's key: negative, so that it never equals a host PID the shim reaps."""
        self._keys += 1
        return -self._keys

    # --- the channel ---------------------------------------------------------------------------
    def call(self, op: str, **arguments) -> dict:
        from corral.vm.errors import AgentError, AgentGone

        if self.client is None or not self.running:
            raise ShimError("failed", "the pod's VM is not running")
        try:
            reply = self.client.call(op, timeout=float(self.options.get("call_timeout") or 60),
                                     **arguments)
        except AgentError as e:
            raise ShimError(e.kind, str(e)) from None
        except AgentGone as e:
            raise ShimError("failed", f"the pod's VM has ended: {e}") from None
        finally:
            if self._wake is not None and self.client is not None and self.client._events:
                try:
                    os.write(self._wake[1], b"x")  # events kept meanwhile: the loop takes them
                except BlockingIOError:
                    pass
        return reply

    def _on_wake(self, fd: int) -> None:
        try:
            while os.read(fd, 64):
                pass
        except BlockingIOError:
            pass
        self._take(self.client.events())

    def _on_readable(self, _fd: int) -> None:
        self._take(self.client.on_readable())
        self._want_writable()

    def _on_writable(self, _fd: int) -> None:
        self._writing = False
        self.client.on_writable()
        self._want_writable()

    def _want_writable(self) -> None:
        """Stdin data the socket did not take at once: sent when it can take more."""
        if self.client.wants_write and not self._writing and self._client_wfd >= 0:
            self._writing = True
            self.services.watch_writable(self._client_wfd, self._on_writable)

    def _unwatch_client(self) -> None:
        if self._client_fd >= 0:
            self.services.unwatch(self._client_fd)
            self._client_fd = -1
        if self._client_wfd >= 0:
            self.services.unwatch(self._client_wfd)
            os.close(self._client_wfd)
            self._client_wfd = -1
            self._writing = False

    def _take(self, events: list[dict]) -> None:
        for event in events:
            kind = event.get("event")
            if kind == "disconnected":
                self._disconnected()
                continue
            found = self.procs.get((event.get("container"), event.get("exec")))
            if found is None:
                continue
            proc, _ = found
            if kind == "output":
                sink = proc.sinks.get(event.get("stream"))
                if sink is None:
                    continue
                if event.get("data"):
                    sink.write(_unb64(event["data"]))
                if event.get("eof"):
                    sink.end()
            elif kind == "exit" and proc.exit is None:
                proc.exit = (int(event.get("exit_code", 255)), event.get("reason") or "")
        self.flushed()

    def _disconnected(self) -> None:
        """The channel ended: QEMU has exited or is about to (the shim reaps it)."""
        self._unwatch_client()
        if self.running:
            self.running = False
            if self.pod_vm is not None and self.pod_vm.vm.returncode is None:
                try:
                    os.kill(self.pod_vm.vm.pid, signal.SIGKILL)  # a VM without its agent
                except ProcessLookupError:
                    pass
            self._vm_ended()

    def flushed(self) -> None:
        """Report the ends whose output is all in the shim's pipes."""
        for (container_id, exec_id), (proc, key) in list(self.procs.items()):
            if proc.exit is None or proc.reported or not proc.flushed:
                continue
            proc.reported = True
            code, reason = proc.exit
            if exec_id is None:
                container = self.containers.get(container_id)
                if container is not None:
                    container.reason = reason
                if proc.exit[1] == VM_EXITED:
                    proc.close()
                self.services.container_exited(container_id, code, reason)
            else:
                proc.close()
                self.procs.pop((container_id, exec_id), None)
                container = self.containers.get(container_id)
                if container is not None:
                    container.execs.pop(key, None)
                self.services.exec_exited(key, code)


def _b64(data: bytes) -> str:
    import binascii

    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str) -> bytes:
    import binascii

    return binascii.a2b_base64(text)


def _tree_size(path: str, limit: int) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
            if total > limit:
                return total
    return total
