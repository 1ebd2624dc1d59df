"""The `runsc` handler: a pod is one gVisor sandbox, and its containers run inside it.

As containerd's runsc integration does, the sandbox is a *root container*
created with the OCI annotation `io.kubernetes.cri.container-type: sandbox`,
and each CRI container is created with `container-type: container` and
`io.kubernetes.cri.sandbox-id: <root id>`, which makes runsc start it in that
sandbox (runsc/specutils/cri.go: the CRI-O pair `io.kubernetes.cri-o.ContainerType`
/ `SandboxID` works too; `dev.gvisor.flag.<name>` overrides a flag only under
`--allow-flag-override`; `dev.gvisor.spec.mount.<name>.*` are mount-sharing hints).
corral has no pause image, so the root container runs catatonit (`catatonit -P`,
Debian's static binary, hard-linked into a read-only rootfs of its own) and
holds the sandbox for the pod's life.

What Debian's runsc 0.0~20221219 does on this host (kernel 6.18, hybrid cgroups),
measured while writing this module:

- Platforms: ptrace (the default here) and kvm, which hangs on this host's PVM
  /dev/kvm; no systrap in this version.  `options.platform` picks one.
- `--network=sandbox` joins the netns of the root container's spec, moves its
  interfaces' addresses and routes into gVisor's netstack (the pod's eth0 keeps
  working from outside: ARP, the pod IP, CNI's routes) and strips them from the
  netns.  Its guard against the *host's* netns is broken on Linux >= 6.6: it
  takes the existence of /proc/sys/net/core/rmem_default for "root netns", but
  that sysctl is per netns now, so every `runsc start` of a root container
  fails with "cannot run with network enabled in root network namespace".
  `runsc start` of the root therefore runs in a mount namespace of its own with
  an empty tmpfs over /proc/sys/net (it needs /proc/sys/vm, so not all of
  /proc/sys), and this module does the guard's job: the pod's netns must not be
  the shim's.  Since the netns no longer holds the pod IP and gVisor has its own
  loopback, port-forward cannot dial 127.0.0.1 in the netns: `port_forward`
  relays through busybox's nc exec'd in the root container.
- cgroups: cgroupsPath works on hybrid hosts (no --ignore-cgroups): runsc makes
  the directories in each v1 hierarchy and puts the sandbox, gofers and the
  ptrace stubs there.  A subcontainer's cgroupsPath gets a "compat" cgroup
  holding only its gofer: gVisor enforces no per-container limit, everything
  is charged to the sandbox.  So the sandbox's cgroup (`<cgroup parent>/sandbox`)
  is given the sum of its containers' memory limits plus the pod overhead
  when every container has one (none when one has none, as Kubernetes sizes a
  pod's cgroup), and a container that needs more makes the host OOM-kill the
  whole sandbox: every container ends, reported OOMKilled, and the shim hears
  `sandbox_ended` (the pod is not ready).
  Deleting the root while a subcontainer exists fails after ~6 s on the
  subcontainer's cgroup and leaves the sandbox's cgroups; so they go last.
- `create --pid-file` writes the *sandbox's* PID for every container: a
  subcontainer's end cannot be reaped.  `runsc wait <id>` (one per started
  container, a child of the shim) prints {"id", "exitStatus"} (128+signal for a
  killed one) and exits 0; it answers again after the end, fails with "not
  started" before `start`, and exits 128 with "urpc ... EOF" if the sandbox dies.
- A subcontainer's stdio is the stdio of `runsc start`, not of `create` (a
  root's is the create's: the sandbox inherits it).  A tty subcontainer gets
  its pty from `create --console-socket` (output arrives; gVisor tells the
  process "not a tty" for it, so the handler offers no tty).
- When a subcontainer exits, the sandbox and the others keep running; `state`
  says "stopped", `kill` fails with "no such process"; a created one cannot be
  signalled at all ("cannot signal container in state created").  But a
  subcontainer's end (as `kill --all`) pauses gVisor's whole kernel ("Gofer
  socket disconnected, killing container" in its log), which interrupts every
  blocking syscall of every container, and this version's netstack returns
  EINTR from such an accept() instead of restarting it: a server that takes
  EINTR for fatal dies when a neighbour ends (busybox `nc -l` does; httpd,
  nginx, Go and Python servers retry).  Nothing in the spec avoids it.
- The sandbox and the gofers are orphaned to the shim (a subreaper) when runsc
  exits, and runsc's `delete` waits for them to be gone: a zombie is not gone,
  so the handler reaps them while `delete` runs.  If the shim dies, they live
  on: `end_without_shim` is for corrald.
- stdin works from pipes and sockets for blocking reads; busybox nc's poll() on
  a donated stdin is fine too (port_forward).
- `exec --detach --pid-file` writes the PID of a `runsc exec` that waits for
  the process and exits with its status (orphaned to the shim, like runc's
  init): exec works as for any oci runtime.  stdio of exec'd processes is
  passed into the sandbox; pipes work.
- `events --stats <id>`: cpu.usage.total is the container's own; memory and
  pids are the whole sandbox's (the same numbers for every container).  OOM is
  not an event: the sandbox's cgroup counts the kill (memory.oom_control).
- `--oci-seccomp` puts a container's own process under its seccomp profile
  (/proc/self/status says Seccomp 2), but not a process `runsc exec` starts in it
  (Seccomp 0): ExecSync and streaming exec run under gVisor's own syscall
  interception only.  Its /proc/PID/status has no NoNewPrivs line.
- No `update` subcommand in this version; PID namespace paths in a
  subcontainer's spec are ignored (every container has its own PID namespace);
  a subcontainer's hostname is the sandbox's (the pod's, as CRI wants),
  whatever its spec says.  `exec --detach` without `--pid-file` loses the
  container ID in the re-exec'd child ("a container-id is required").
- Timings here (ptrace, 2 cores shared with other work): root create 0.12-0.28 s
  + start 0.08-0.1 s (network on); subcontainer create 0.03-0.05 s + start
  0.12-0.18 s; exec 0.05 s; delete 0.03 s.  Every runsc process costs ~35 ms to
  start (a 24 MB static Go binary), and a sandbox takes five (create, gofer,
  boot and its re-exec, start), a subcontainer three.  An idle pod with one
  container: ~23 MiB PSS on the host (sandbox, two gofers, ptrace stubs).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from corral.runtime.errors import ContainerExists, RuntimeFailure
from corral.shim.handlers.base import Handler, Unsupported
from corral.shim.handlers.oci import (
    OciContainer,
    OciHandler,
    OciRuntime,
    _last_line,
    _logged_error,
    _read_pid,
    _size,
)
from corral.shim.protocol import ShimError

PAUSE = "/usr/bin/catatonit"
RELAY = "/bin/busybox"  # busybox-static: `nc` in the root container for port-forward
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
OVERHEAD = 64 << 20  # the sandbox's own memory (Sentry, gofers): ~30 MiB idle here
SANDBOX_CGROUP = "sandbox"  # below the pod's cgroup parent
NETWORKS = ("sandbox", "none")
# Capabilities newer than this runsc (it knows up to CAP_AUDIT_READ, 37): a spec naming one
# fails "creating capabilities: unknown capability" (a privileged container's has all)
UNKNOWN_CAPABILITIES = frozenset({"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})
_READ = 1 << 16


class RunscRuntime(OciRuntime):
    """runsc as an oci runtime, plus what only runsc needs of the shim."""

    def __init__(self, binary: str, root: str, global_flags: tuple[str, ...]):
        super().__init__(binary, root, global_flags)
        self.reaped: set[int] = set()  # children of the shim that `run_reaping` reaped

    def command(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, *self.global_flags, *args]

    def run_reaping(self, *args: str, reap: set[int], timeout: float = 60) -> None:
        """`run`, reaping `reap` (children of the shim) meanwhile.  `delete` waits for the
        sandbox and the gofers to be gone, and a zombie is not gone: with the shim's
        loop blocked on this call, nobody else would reap them (it took runsc's full
        6 s deadline, then failed)."""
        log_start = _size(self.log)
        with tempfile.TemporaryFile() as errors:
            command = [self.binary, "--root", self.root, "--log", self.log, "--log-format",
                       "json", *self.global_flags, *args]
            try:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=errors,
                                           close_fds=True)
            except OSError as e:
                raise RuntimeFailure(f"{self.binary}: {e}") from None
            deadline = time.monotonic() + timeout
            pending = set(reap)
            while process.poll() is None:
                for pid in list(pending):
                    try:
                        reaped, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:  # not the shim's child (any more)
                        pending.discard(pid)
                        continue
                    if reaped:
                        pending.discard(pid)
                        self.reaped.add(pid)
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise RuntimeFailure(f"{self.name} {args[0]}: timed out")
                time.sleep(0.005)
            if process.returncode != 0:
                errors.seek(0)
                text = _logged_error(self.log, log_start) or _last_line(errors.read()) or \
                    f"exit status {process.returncode}"
                raise RuntimeFailure(f"{self.name} {args[0]}: {text}")

    def helpers(self) -> set[int]:
        """The PIDs of the sandbox and of every gofer, from runsc's state files."""
        pids = set()
        for name in os.listdir(self.root):
            if not name.endswith(".state"):
                continue
            try:
                with open(os.path.join(self.root, name)) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                continue
            for pid in (state.get("goferPid"), (state.get("sandbox") or {}).get("pid")):
                if isinstance(pid, int) and pid > 0:
                    pids.add(pid)
        return pids


def hide_proc_sys_net() -> None:
    """In the helper child that runs `runsc start` of the root (module doc: runsc's
    root-netns guard): a private mount namespace with an empty read-only tmpfs on
    /proc/sys/net.  Nothing of the host's changes."""
    from corral.runtime import syscalls as sc

    kernel = sc.LinuxSyscalls()
    kernel.unshare(sc.CLONE_NEWNS)
    kernel.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    kernel.mount("tmpfs", "/proc/sys/net", "tmpfs",
                 sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "size=4k")


class RunscContainer(OciContainer):
    """A CRI container in the pod's sandbox.  `pid` is 0: the host PID runsc reports is
    the sandbox's, so its end comes from a `runsc wait` child (`RunscHandler.reaped`).
    stats are the oci handler's (`runsc events --stats`)."""

    def __init__(self, handler: RunscHandler, container_id: str, stdio: tuple[int, int, int],
                 memory_limit: int):
        super().__init__(handler.runtime, container_id)
        self.handler = handler
        self.stdio: list[int] = [os.dup(fd) for fd in stdio]  # for `start` (module doc)
        self.memory_limit = memory_limit  # 0: none
        self.exec_pids: dict[int, int] = {}  # `runsc exec` PID (the shim's key) → PID inside
        self.ended = False

    def _close_stdio(self) -> None:
        for fd in self.stdio:
            os.close(fd)
        self.stdio = []

    def status(self) -> str:
        if self.ended:
            return "stopped"
        try:
            return json.loads(self.runtime.run("state", self.id).stdout).get("status", "stopped")
        except (RuntimeFailure, ValueError):
            return "stopped"

    def alive(self) -> bool:
        return self.status() in ("created", "running", "paused")

    def start(self) -> None:
        try:
            self.runtime.run("start", self.id, stdio=tuple(self.stdio))
        finally:
            self._close_stdio()
        self.handler.spawn_waiter(self)

    def kill(self, signum: int, all_processes: bool = False) -> None:
        """runsc cannot signal a created container (it has no process yet): as runc's
        waiting init would, it ends, killed by the signal; runsc forgets it."""
        try:
            super().kill(signum, all_processes)
        except RuntimeFailure:
            if self.ended or self.status() != "created":
                raise
            self._remove()
            self.ended = True
            self.handler.services.container_exited(self.id, 128 + signum, "")

    def exec(self, process: dict, stdio: tuple[int, int, int],
             console_socket: str | None = None) -> int:
        from corral.shim.handlers.native import _parsed

        _parsed(process)  # runsc reads the JSON itself: refuse what corral would
        process = without_unknown_capabilities(process)
        with tempfile.TemporaryDirectory(dir=self.runtime.root, prefix=".exec-") as scratch:
            spec, pid_file, inner_file = (os.path.join(scratch, name)
                                          for name in ("process.json", "pid", "inner"))
            with open(spec, "w") as f:
                json.dump(process, f)
            console = ["--console-socket", console_socket] if console_socket else []
            self.runtime.run("exec", "--detach", "--pid-file", pid_file, "--internal-pid-file",
                             inner_file, *console, "--process", spec, self.id, stdio=stdio)
            pid = _read_pid(pid_file)
            inner = _read_pid(inner_file)
        # the ended ones' (their `runsc exec` reaped: no /proc entry) are dropped here
        self.exec_pids = {key: value for key, value in self.exec_pids.items()
                          if os.path.exists(f"/proc/{key}")}
        self.exec_pids[pid] = inner
        return pid

    def kill_exec(self, key: int, signum: int) -> None:
        """Signal the process in the sandbox: SIGKILL of its `runsc exec` would leave it."""
        inner = self.exec_pids.get(key)
        if inner:
            try:
                self.runtime.run("kill", "--pid", str(inner), self.id, str(signum))
                return
            except RuntimeFailure:
                pass  # it ended; its `runsc exec` may still be there
        super().kill_exec(key, signum)

    def update(self, resources: dict) -> None:
        raise Unsupported("runsc cannot change a container's resources (no `runsc update`; "
                          "gVisor charges everything to the pod's sandbox)")

    def _remove(self) -> None:
        self._close_stdio()
        try:
            self.runtime.run_reaping("delete", "--force", self.id, reap=self.runtime.helpers())
        except RuntimeFailure as e:
            if "not exist" not in str(e):
                raise
        finally:
            self.handler.note_reaped()

    def delete(self) -> None:
        self._remove()
        # its waiter has the end now (delete --force killed it): reported before the
        # shim forgets the container, rather than as "deleted"
        self.handler.collect_waiter(self, timeout=2.0)
        self.handler.forget(self)

    def oom_killed(self) -> bool:
        return self.handler.sandbox_oom_killed()


class RunscHandler(OciHandler):
    """options: platform ("ptrace"), network ("sandbox" | "none"), debug_log (a directory
    for runsc's debug logs), runtime_flags (more global flags), pause (the pause binary),
    relay (a static busybox for port-forward, "" for none), memory_overhead (bytes added
    to the sum of the containers' memory limits, when the spec has no overhead),
    oci_seccomp (true: the spec's seccomp profile is enforced inside the sandbox; runsc
    ignores it by default)."""

    def __init__(self, spec: dict, services):
        Handler.__init__(self, spec, services)  # not OciHandler's: another runtime and root
        self.network = self.options.get("network", "sandbox")
        if self.network not in NETWORKS:
            raise ShimError("invalid", f"runsc network {self.network!r}: corral runs "
                            "'sandbox' (the pod's netns, in gVisor's netstack) or 'none'")
        self.runtime = RunscRuntime(spec.get("path") or "/usr/bin/runsc",
                                    os.path.join(services.dir, "runsc"), self.global_flags())
        self.sandbox_id = services.pod_id
        self.sandbox_pid = 0
        self.stopping = False  # stop_pod ends the sandbox: no news for the shim
        self.sandbox_cgroup = None  # a corral.runtime.cgroups Manager, once the pod starts
        self.containers: dict[str, RunscContainer] = {}
        self.waiters: dict[int, tuple[RunscContainer, int]] = {}  # PID → (container, pipe)

    def global_flags(self) -> tuple[str, ...]:
        options = self.options
        flags = [f"--platform={options.get('platform', 'ptrace')}", f"--network={self.network}"]
        if options.get("oci_seccomp", True):  # CRI's seccomp profiles, applied by the Sentry
            flags.append("--oci-seccomp")
        if options.get("debug_log"):
            flags += ["--debug", f"--debug-log={str(options['debug_log']).rstrip('/')}/"]
        extra = options.get("runtime_flags") or []
        if not isinstance(extra, list) or not all(isinstance(f, str) for f in extra):
            raise ShimError("invalid", "runsc runtime_flags: a list of strings")
        return (*flags, *extra)

    # --- the pod ---------------------------------------------------------------------------
    def start_pod(self, pod: dict) -> dict:
        netns = (pod.get("namespaces") or {}).get("net") or ""
        if self.network == "sandbox":
            _check_pod_netns(netns)
        else:
            netns = ""  # runsc makes an empty one
        bundle = self._pause_bundle(pod, netns)
        pid_file = os.path.join(self.runtime.root, "sandbox.pid")
        try:
            # the sandbox inherits create's stdio: a file, for what gVisor prints itself
            with open(os.path.join(self.runtime.root, "sandbox.log"), "ab") as out:
                self.runtime.run("create", "--bundle", bundle, "--pid-file", pid_file,
                                 self.sandbox_id, stdio=(subprocess.DEVNULL, out, out))
            self.sandbox_pid = _read_pid(pid_file)
            if self.network == "sandbox":
                self.services.in_helper(self._start_root)
            else:
                self.runtime.run("start", self.sandbox_id)
        except BaseException:
            self.stop_pod()
            raise
        return {"sandbox_pid": self.sandbox_pid}

    def _start_root(self) -> None:
        """In the shim's helper child: its mount namespace becomes its own."""
        hide_proc_sys_net()
        self.runtime.run("start", self.sandbox_id)

    def _pause_bundle(self, pod: dict, netns: str) -> str:
        """The root container: catatonit in a read-only rootfs of its own, the pod's netns,
        the sandbox's cgroup below the pod's."""
        from corral.runtime.cgroups import open_manager

        bundle = os.path.join(self.runtime.root, "pause")
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs, exist_ok=True)
        _install(self.options.get("pause") or PAUSE, os.path.join(rootfs, "pause"))
        relay = self.options.get("relay", RELAY)
        if relay and os.path.isfile(relay):
            _install(relay, os.path.join(rootfs, "busybox"))
        cgroups_path = sandbox_cgroups_path(pod.get("cgroup_parent") or "", self.sandbox_id)
        self.sandbox_cgroup = open_manager(cgroups_path, self.sandbox_id)
        namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
        namespaces.append({"type": "network", **({"path": netns} if netns else {})})
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 65535, "gid": 65535}, "cwd": "/",
                "args": ["/pause", "-P"], "env": ["PATH=/"],
                "capabilities": {kind: [] for kind in ("bounding", "effective", "permitted")},
                "noNewPrivileges": True,
            },
            "root": {"path": rootfs, "readonly": True},
            "hostname": pod.get("hostname") or "",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": namespaces, "cgroupsPath": cgroups_path},
            "annotations": {CONTAINER_TYPE: "sandbox"},
        }
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f)
        return bundle

    def stop_pod(self) -> None:
        self.stopping = True
        for container in list(self.containers.values()):  # the root's cgroup must go last
            try:
                container.delete()
            except RuntimeFailure:
                pass
        try:
            self.runtime.run_reaping("delete", "--force", self.sandbox_id, timeout=30,
                                     reap=self.runtime.helpers() | {self.sandbox_pid} - {0})
        except RuntimeFailure as e:
            if "not exist" not in str(e):
                raise
        finally:
            self.note_reaped()
            self._kill_sandbox_processes()
            if self.sandbox_cgroup is not None and self.sandbox_cgroup.exists():
                from corral.runtime.cgroups import CgroupError

                try:
                    self.sandbox_cgroup.destroy()
                except CgroupError:
                    pass
            for pid, (container, _fd) in list(self.waiters.items()):
                container.ended = True  # deleted: nobody to tell
                self._end_waiter(pid, read=False)
                try:
                    os.kill(pid, signal.SIGKILL)  # the shim reaps it
                except ProcessLookupError:
                    pass
            shutil.rmtree(os.path.join(self.runtime.root, "pause"), ignore_errors=True)

    def _kill_sandbox_processes(self) -> None:
        """What runsc left in the sandbox's cgroup (a failed delete): SIGKILLed."""
        from corral.runtime.cgroups import CgroupError

        if self.sandbox_cgroup is None:
            return
        try:
            pids = self.sandbox_cgroup.pids()
        except CgroupError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def port_forward(self, port: int) -> socket.socket:
        """A stream connected to 127.0.0.1:`port` in the sandbox's network stack.

        Not the netns's: gVisor's netstack has taken the pod's addresses and has its
        own loopback, so connecting in the netns (as for native pods) reaches
        nothing.  The relay is busybox's `nc` exec'd in the root container, its
        stdin and stdout one end of a socketpair: this returns the other end."""
        if not self.sandbox_pid:
            raise ShimError("invalid", "runsc: the pod's sandbox is not running")
        if not os.path.exists(os.path.join(self.runtime.root, "pause", "rootfs", "busybox")):
            raise Unsupported(f"runsc port-forward needs a static busybox ({RELAY}, "
                              "Debian's busybox-static)")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ShimError("invalid", f"port {port!r} is not a TCP port")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = {"args": ["/busybox", "nc", "127.0.0.1", str(port)], "cwd": "/",
                   "env": ["PATH=/"], "user": {"uid": 65535, "gid": 65535}}
        try:
            with tempfile.TemporaryDirectory(dir=self.runtime.root, prefix=".pf-") as scratch:
                spec = os.path.join(scratch, "process.json")
                with open(spec, "w") as f:
                    json.dump(process, f)
                # its `runsc exec` is orphaned to the shim, which reaps it (not ours);
                # --detach without --pid-file loses the container ID in this runsc
                self.runtime.run("exec", "--detach", "--pid-file",
                                 os.path.join(scratch, "pid"), "--process", spec,
                                 self.sandbox_id,
                                 stdio=(theirs.fileno(), theirs.fileno(), subprocess.DEVNULL))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def sandbox_oom_killed(self) -> bool:
        from corral.runtime.cgroups import CgroupError

        try:
            return bool(self.sandbox_cgroup and self.sandbox_cgroup.oom_kills())
        except (CgroupError, OSError):
            return False  # a gone cgroup has no record

    # --- containers ------------------------------------------------------------------------
    def create(self, container_id: str, bundle: str, stdio: tuple[int, int, int],
               console_socket: str | None = None) -> RunscContainer:
        if console_socket:
            raise Unsupported("runsc: tty containers are not offered (gVisor gives the "
                              "process a pty it reports as not a tty)")
        if not self.sandbox_pid:
            raise ShimError("invalid", "runsc: the pod's sandbox is not running")
        if container_id == self.sandbox_id or container_id in self.containers:
            raise ContainerExists(container_id)
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        moved = os.path.join(self.runtime.root, "bundles", container_id)
        os.makedirs(moved, mode=0o700, exist_ok=True)
        limit = self.for_sandbox(config, bundle)
        with open(os.path.join(moved, "config.json"), "w") as f:
            json.dump(config, f)
        container = RunscContainer(self, container_id, stdio, limit)
        self.containers[container_id] = container
        try:
            self.size_sandbox()
            self.runtime.run("create", "--bundle", moved, container_id)
        except BaseException:
            container._close_stdio()
            self.forget(container)
            raise
        return container

    def for_sandbox(self, config: dict, bundle: str) -> int:
        """Rewrite a CRI container's spec to join the pod's sandbox; its memory limit (0:
        none).

        - the annotations that make runsc use the sandbox (module doc);
        - root.path absolute: the spec moves to the handler's own bundle directory
          (corrald's config.json stays as corrald wrote it);
        - namespace paths dropped: they name host namespaces, meaningless inside
          gVisor, whose containers share the sandbox's network and have PID, IPC,
          UTS and mount namespaces of their own in its kernel;
        - capabilities this runsc does not know dropped (UNKNOWN_CAPABILITIES)."""
        config.setdefault("annotations", {}).update(
            {CONTAINER_TYPE: "container", SANDBOX_ID: self.sandbox_id})
        root = config.setdefault("root", {})
        root["path"] = os.path.join(bundle, root.get("path") or "rootfs")
        if isinstance(config.get("process"), dict):
            config["process"] = without_unknown_capabilities(config["process"])
        linux = config.setdefault("linux", {})
        linux["namespaces"] = [{"type": ns["type"]} for ns in linux.get("namespaces") or []]
        limit = ((linux.get("resources") or {}).get("memory") or {}).get("limit") or 0
        return limit if isinstance(limit, int) and limit > 0 else 0

    def size_sandbox(self) -> None:
        """The sandbox's memory limit: its containers' limits plus the overhead when every
        container has one (module doc), none otherwise."""
        from corral.runtime.cgroups import CgroupError

        limits = [c.memory_limit for c in self.containers.values()]
        limit = sum(limits) + self.memory_overhead() if limits and all(limits) else -1
        try:
            self.sandbox_cgroup.apply({"memory": {"limit": limit, "swap": limit}})
        except CgroupError as e:
            raise ShimError("failed", f"runsc: the sandbox's memory limit: {e}") from None

    def memory_overhead(self) -> int:
        """The sandbox's own memory: the RuntimeClass's declared pod overhead (Kubernetes
        adds it to the pod's limits for the same reason) if the spec carries it, else
        options.memory_overhead, else OVERHEAD."""
        declared = (self.spec.get("overhead") or {}).get("memory")
        value = declared if declared else self.options.get("memory_overhead", OVERHEAD)
        return int(value)

    def forget(self, container: RunscContainer) -> None:
        if self.containers.get(container.id) is container:
            del self.containers[container.id]
            shutil.rmtree(os.path.join(self.runtime.root, "bundles", container.id),
                          ignore_errors=True)
            try:
                self.size_sandbox()
            except ShimError:
                pass  # below what the sandbox uses now: the larger limit stays

    # --- ends --------------------------------------------------------------------------------
    def spawn_waiter(self, container: RunscContainer) -> None:
        """`runsc wait <id>`, a child of the shim: what it prints is the container's end."""
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, write, 2)]
            pid = os.posix_spawn(self.runtime.binary,
                                 self.runtime.command("wait", container.id), os.environ,
                                 file_actions=actions)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self.waiters[pid] = (container, read)

    def collect_waiter(self, container: RunscContainer, timeout: float) -> None:
        """Wait (bounded) for the container's waiter to end, and report what it says."""
        deadline = time.monotonic() + timeout
        for pid, (owner, _fd) in list(self.waiters.items()):
            if owner is not container:
                continue
            while True:
                try:
                    reaped, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    reaped = pid  # reaped elsewhere: its output is still in the pipe
                if reaped or time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
            if reaped:
                self._end_waiter(pid, read=True)

    def note_reaped(self) -> None:
        """What `run_reaping` reaped, as if the shim had handed it to `reaped`."""
        while self.runtime.reaped:
            self.reaped(self.runtime.reaped.pop(), 255)

    def reaped(self, pid: int, code: int) -> bool:
        if pid in self.waiters:
            self._end_waiter(pid, read=True)
            return True
        if pid == self.sandbox_pid:
            self.sandbox_pid = 0  # its containers' waiters fail, and report them
            if not self.stopping:  # the pod is not ready any more (OOM, a crash, a kill)
                reason = "OOMKilled" if self.sandbox_oom_killed() else \
                    f"the gVisor sandbox ended (status {code})"
                self.services.sandbox_ended(code, reason)
            return True
        return False

    def _end_waiter(self, pid: int, read: bool) -> None:
        container, fd = self.waiters.pop(pid)
        output = b""
        while read:
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                break
            if not data:
                break
            output += data
        os.close(fd)
        if container.ended:
            return
        container.ended = True
        code, reason = self._end_of(output)
        self.services.container_exited(container.id, code, reason)

    def _end_of(self, output: bytes) -> tuple[int, str]:
        for line in output.decode(errors="replace").splitlines():
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if isinstance(result, dict) and isinstance(result.get("exitStatus"), int):
                code = result["exitStatus"]
                return code, "OOMKilled" if code == 137 and self.sandbox_oom_killed() else ""
        # the sandbox died under it (`runsc wait` lost its connection)
        if self.sandbox_oom_killed():
            return 137, "OOMKilled"
        return 255, f"sandbox ended: {_last_line(output) or 'runsc wait failed'}"


def without_unknown_capabilities(process: dict) -> dict:
    """The OCI process with UNKNOWN_CAPABILITIES left out of every set."""
    capabilities = process.get("capabilities")
    if not isinstance(capabilities, dict):
        return process
    kept = {kind: [c for c in names if c not in UNKNOWN_CAPABILITIES]
            if isinstance(names, list) else names for kind, names in capabilities.items()}
    return {**process, "capabilities": kept}


def sandbox_cgroups_path(cgroup_parent: str, pod_id: str) -> str:
    """The sandbox's cgroupsPath: below the pod's cgroup parent, beside its containers'."""
    if cgroup_parent:
        return os.path.join(cgroup_parent, SANDBOX_CGROUP)
    return f"/corral-runsc/{pod_id}"


def end_without_shim(shim_dir: str, pod_id: str, cgroup_parent: str,
                     binary: str = "/usr/bin/runsc", timeout: float = 10.0) -> None:
    """For corrald, when a runsc pod's shim is gone: the sandbox, its gofers and its
    ptrace stubs outlive the shim (orphaned to init), so everything in the sandbox's
    cgroup is SIGKILLed; then runsc forgets the pod's containers, subcontainers
    first, and the sandbox's cgroups are removed.  Idempotent."""
    from corral.runtime.cgroups import CgroupError, open_manager

    manager = open_manager(sandbox_cgroups_path(cgroup_parent, pod_id), pod_id)
    deadline = time.monotonic() + timeout
    while manager.exists():
        try:
            pids = manager.pids()
        except CgroupError:
            break
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"runsc sandbox of pod {pod_id[:12]}: processes {pids} "
                                 "did not end")
        time.sleep(0.01)
    root = os.path.join(shim_dir, "runsc")
    if os.path.isdir(root):
        runtime = RunscRuntime(binary, root, ())
        ids = sorted((name.split("_sandbox:")[0] for name in os.listdir(root)
                      if name.endswith(".state")), key=lambda cid: cid == pod_id)
        for container_id in ids:
            try:
                runtime.run("delete", "--force", container_id, timeout=30)
            except RuntimeFailure:
                pass  # its state is removed with the shim's directory
    if manager.exists():
        try:
            manager.destroy()
        except CgroupError as e:
            raise RuntimeFailure(f"runsc sandbox of pod {pod_id[:12]}: {e}") from None


def _install(binary: str, target: str) -> None:
    """A static binary into a rootfs: hard-linked, or copied across filesystems."""
    if os.path.exists(target):
        return
    try:
        os.link(binary, target)
    except OSError:
        shutil.copy2(binary, target)


def _check_pod_netns(netns: str) -> None:
    """runsc's own check is broken here (module doc): refuse the host's netns ourselves,
    since runsc would move the host's addresses into the sandbox."""
    if not netns:
        raise ShimError("invalid", "runsc: the pod has no network namespace of its own")
    try:
        pod, own = os.stat(netns), os.stat("/proc/self/ns/net")
    except OSError as e:
        raise ShimError("invalid", f"runsc: the pod's network namespace {netns}: "
                        f"{os.strerror(e.errno or errno.ENOENT)}") from None
    if (pod.st_dev, pod.st_ino) == (own.st_dev, own.st_ino):
        raise ShimError("invalid", "runsc: the pod's network namespace is the host's")
