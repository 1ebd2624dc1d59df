"""`Container`: the OCI lifecycle as a library: create, start, kill, delete, and
runc's extras: exec, pause/resume, processes, update.

Every operation either completes or leaves the world as it found it: a
failed create removes its cgroup, its state directory and its processes.
"""

from __future__ import annotations

import os
import select
import time

from corral.runtime.errors import (
    ConfigInvalid,
    ContainerExists,
    InvalidState,
    RuntimeFailure,
)
from corral.runtime.state import ContainerState, check_id, now_rfc3339, owner_name

DEFAULT_ROOT = "/run/corral-runtime"
_STOP_TIMEOUT = 10.0
SIGKILL = 9  # by number: the signal module's enums cost start-up time


class Container:
    def __init__(self, state: ContainerState):
        self.state = state

    @property
    def id(self) -> str:
        return self.state.id

    # --- create -------------------------------------------------------------------
    @classmethod
    def create(cls, root: str, container_id: str, bundle: str, *, pid_file: str | None = None,
               no_pivot: bool = False, preserve_fds: int = 0,
               console_socket: str | None = None, listen_fds: int = 0,
               stdio: tuple | None = None, syscalls=None, warn=None) -> Container:
        from corral.runtime import validate
        from corral.runtime.hooks import hooks_to_state
        from corral.runtime.process.spawn import SpawnRequest, spawn_init
        from corral.runtime.state import process_start_time
        from corral.runtime.syscalls import Syscalls
        from corral.spec.runtime import SpecError, load_config

        check_id(container_id)
        bundle = os.path.abspath(bundle)
        try:
            spec = load_config(bundle)
        except SpecError as e:
            raise ConfigInvalid(str(e)) from None
        rootfs = os.path.normpath(os.path.join(bundle, spec.root.path))
        validate.check_spec(spec, rootfs)
        validate.check_console(spec.process, console_socket)
        if listen_fds:
            # systemd socket activation, passed on as runc does: fds 3.., then --preserve-fds.
            spec.process.env += [f"LISTEN_FDS={listen_fds}", "LISTEN_PID=1"]
            preserve_fds += listen_fds

        os.makedirs(root, mode=0o711, exist_ok=True)
        state_dir = os.path.join(root, container_id)
        try:
            os.mkdir(state_dir, 0o711)
        except FileExistsError:
            raise ContainerExists(container_id) from None
        cgroup = None
        init_pid = None
        console_fd = None
        try:
            cgroup = _make_cgroup(spec, container_id, warn or _warn_on_stderr)
            fifo = os.path.join(state_dir, "exec.fifo")
            os.mkfifo(fifo)
            # World-writable: the init may no longer be root when it opens it.
            os.chmod(fifo, 0o622)
            if console_socket:
                from corral.runtime import console

                console_fd = console.connect(console_socket)
            seccomp_filter = _compile_seccomp(spec.linux.seccomp)
            hook_state = {"ociVersion": spec.oci_version, "id": container_id,
                          "bundle": bundle, "annotations": spec.annotations}
            request = SpawnRequest(spec=spec, rootfs=rootfs, bundle=bundle,
                                   state_dir=state_dir, cgroup=cgroup, no_pivot=no_pivot,
                                   preserve_fds=preserve_fds, hook_state=hook_state,
                                   console_fd=console_fd, seccomp=seccomp_filter,
                                   stdio=stdio)
            init_pid = spawn_init(request, syscalls or Syscalls())
            start_time = process_start_time(init_pid)
            if start_time is None:
                raise RuntimeFailure("container init exited during create")
            state = ContainerState(
                id=container_id, bundle=bundle, rootfs=rootfs, pid=init_pid,
                pid_start=start_time, created=now_rfc3339(), owner=owner_name(),
                oci_version=spec.oci_version, annotations=spec.annotations,
                cgroup=cgroup.to_state() if cgroup else None,
                hooks=hooks_to_state(spec.hooks), process=spec.source.get("process"),
                seccomp=spec.linux.seccomp, root=root,
                host_mounts=spec.linux.namespace("mount") is None)
            state.save()
            if pid_file:
                write_pid_file(pid_file, init_pid)
        except BaseException:
            _undo_create(init_pid, cgroup, state_dir)
            if spec.linux.namespace("mount") is None:
                _unmount_below(rootfs)
            raise
        finally:
            if console_fd is not None:
                os.close(console_fd)
        return cls(state)

    @classmethod
    def load(cls, root: str, container_id: str) -> Container:
        return cls(ContainerState.load(root, container_id))

    # --- start --------------------------------------------------------------------
    def start(self, warn=None) -> None:
        """Release the init to exec the program; then the poststart hooks."""
        status = self.state.status()
        if status == "stopped":
            raise InvalidState("cannot start a container that has stopped")
        if status != "created":
            raise InvalidState(f"cannot start an already {status} container")
        fifo = self.state.fifo_path
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidState("cannot start an already running container") from None
        try:
            # The init has the write end open (or is opening it); wait for its byte,
            # giving up if the init dies meanwhile.
            while not select.select([fd], [], [], 0.1)[0]:
                if not self.state.init_alive():
                    raise InvalidState("cannot start a container that has stopped")
            if os.read(fd, 1) != b"0":
                raise RuntimeFailure("container init exited before it was started")
            # The init holds its end open until execve (or exit): EOF says it is done.
            while not select.select([fd], [], [], 0.1)[0] or os.read(fd, 64):
                pass
        finally:
            os.close(fd)
        try:
            os.unlink(fifo)
        except FileNotFoundError:
            pass
        self._run_hooks("poststart", warn)

    # --- pause, resume, processes, update ------------------------------------------
    def pause(self) -> None:
        status = self.state.status()
        if status not in ("running", "created"):
            raise InvalidState(f"container not running or created: {status}")
        self.require_cgroup("pause").freeze()

    def resume(self) -> None:
        if self.state.status() != "paused":
            raise InvalidState("container not paused")
        self.require_cgroup("resume").thaw()

    def processes(self) -> list[int]:
        """Every process of the container (its cgroup), in the host's PID namespace."""
        if self.state.status() == "stopped":
            return []
        return sorted(self.require_cgroup("ps").pids())

    def update(self, resources: dict) -> None:
        """Change the live cgroup (the OCI linux.resources JSON, or part of it).

        Device rules are left as they are, as runc leaves them: they were made with
        the default devices appended, and a partial list would take those away.
        """
        from corral.spec.runtime import SpecError, canonical_resources, validate_resources

        if self.state.status() == "stopped":
            raise InvalidState("container not running")
        resources = canonical_resources(resources)
        resources.pop("devices", None)
        try:
            validate_resources(resources, "linux.resources")
        except SpecError as e:
            raise ConfigInvalid(str(e)) from None
        self.require_cgroup("update").apply(resources)

    def exec(self, process, *, preserve_fds: int = 0, console_socket: str | None = None,
             stdio: tuple | None = None, syscalls=None, sub_cgroups: dict | None = None,
             ignore_paused: bool = False) -> int:
        """Start `process` (a spec Process) in the running container; its PID.

        `sub_cgroups` (exec --cgroup): controller ("" for all) → an existing cgroup
        below the container's to join instead.  Into a paused container only with
        `ignore_paused`: the process then starts frozen and runs once resumed.
        """
        from corral.runtime import validate
        from corral.runtime.process.enter import ExecRequest, spawn_exec
        from corral.runtime.process.identity import last_capability, setgroups_allowed
        from corral.runtime.syscalls import Syscalls

        status = self.state.status()
        # runc execs into a created container too (its init waits in its namespaces).
        if status == "stopped":
            raise InvalidState("cannot exec in a stopped container")
        if status == "paused" and not ignore_paused:
            raise InvalidState("cannot exec in a paused container "
                               "(use --ignore-paused to override)")
        validate.check_process(process)
        validate.check_console(process, console_socket)
        cgroup = (self.require_cgroup("join a sub-cgroup").below(sub_cgroups) if sub_cgroups
                  else self._cgroup())
        console_fd = None
        if console_socket:
            from corral.runtime import console

            console_fd = console.connect(console_socket)
        request = ExecRequest(init_pid=self.state.pid, process=process, cgroup=cgroup,
                              may_setgroups=setgroups_allowed(self.state.pid),
                              preserve_fds=preserve_fds, last_cap=last_capability(),
                              console_fd=console_fd,
                              seccomp=_compile_seccomp(self.state.seccomp), stdio=stdio,
                              agent_state=_agent_state(self.state.oci_state()))
        try:
            return spawn_exec(request, syscalls or Syscalls())
        finally:
            if console_fd is not None:
                os.close(console_fd)

    def require_cgroup(self, what: str):
        cgroup = self._cgroup()
        if cgroup is None:
            raise InvalidState(f"cannot {what}: the container has no cgroup (rootless)")
        return cgroup

    # --- kill ---------------------------------------------------------------------
    def kill(self, signum: int, all_processes: bool = False) -> None:
        """As runc: --all signals whatever is left in the cgroup, even once the init is
        gone (a stopped container with no cgroup left succeeds); signal 0 only checks."""
        status = self.state.status()
        if all_processes:
            cgroup = self._cgroup()
            if status == "stopped" and (cgroup is None or not cgroup.exists()):
                return
            self._signal_all(signum)
            return
        if status == "stopped":
            raise InvalidState("container not running")
        _send(self.state.pid, signum)
        if status == "paused" and signum == SIGKILL:
            self.require_cgroup("kill").thaw()  # v1: a frozen process dies only when thawed

    def _signal_all(self, signum: int) -> None:
        cgroup = self._cgroup()
        if cgroup is None:
            _send(self.state.pid, signum)
            return
        # Frozen, nobody can fork past the signal.
        cgroup.freeze()
        try:
            for pid in cgroup.pids():
                _send(pid, signum)
        finally:
            cgroup.thaw()

    # --- delete -------------------------------------------------------------------
    def delete(self, force: bool = False, warn=None) -> None:
        status = self.state.status()
        if status in ("running", "paused") and not force:
            raise InvalidState(f"cannot delete container {self.id} that is not stopped: "
                               f"{status}")
        if status != "stopped":
            self._kill_everything()
        cgroup = self._cgroup()
        if cgroup is not None:
            # Without its own PID namespace, a container's children outlive its init.
            for pid in cgroup.pids():
                _send(pid, SIGKILL)
            cgroup.destroy()
        if self.state.host_mounts:
            _unmount_below(self.state.rootfs)
        remove_state_dir(self.state.dir)
        self._run_hooks("poststop", warn)

    def _kill_everything(self) -> None:
        cgroup = self._cgroup()
        if cgroup is not None:
            self._signal_all(SIGKILL)
        _send(self.state.pid, SIGKILL)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while self.state.init_alive():
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"container {self.id} did not die after SIGKILL")
            time.sleep(0.005)

    # --- helpers ------------------------------------------------------------------
    def _run_hooks(self, kind: str, warn) -> None:
        """poststart and poststop: a failure is a warning, as the OCI spec says."""
        if not self.state.hooks.get(kind):
            return
        from corral.runtime.hooks import hooks_from_state, run_hooks_warning

        state = self.state.oci_state()
        run_hooks_warning(kind, hooks_from_state(self.state.hooks, kind), state,
                          warn or _warn_on_stderr)
    def _cgroup(self):
        if not self.state.cgroup:
            return None
        from corral.runtime.cgroups import load_manager

        return load_manager(self.state.cgroup)


def _warn_on_stderr(message: str) -> None:
    os.write(2, f"warning: {message}\n".encode())


def _compile_seccomp(profile: dict | None):
    if not profile:
        return None
    from corral.runtime.seccomp import compile_program

    return compile_program(profile)


def _agent_state(state: dict) -> dict:
    """The OCI state a seccomp agent gets for an exec'd process (runc's specs.State)."""
    return {key: state[key] for key in ("ociVersion", "id", "status", "pid", "bundle",
                                         "annotations")}


def _make_cgroup(spec, container_id: str, warn):
    """The container's cgroup, made and configured; None when running rootless."""
    from corral.runtime.cgroups import CgroupError, open_manager
    from corral.runtime.devices import cgroup_device_rules

    if os.geteuid() != 0 and not spec.linux.cgroups_path:
        return None
    resources = dict(spec.linux.resources)
    resources["devices"] = cgroup_device_rules(resources.get("devices", []))
    try:
        manager = open_manager(spec.linux.cgroups_path, container_id)
        _check_existing_cgroup(manager, warn)
        manager.create(resources)
    except CgroupError as e:
        raise ConfigInvalid(str(e)) from None
    return manager


def _check_existing_cgroup(manager, warn) -> None:
    """A cgroup made before us may hold processes (runc warns) or be frozen (our
    init would stop in it and create would never return: refused, as runc)."""
    if not manager.exists():
        return
    found = manager.pids()
    if found:
        warn(f"container's cgroup is not empty: {len(found)} process(es) found")
    if manager.frozen():
        raise InvalidState("container's cgroup unexpectedly frozen")


def _unmount_below(rootfs: str) -> None:
    from corral.runtime.rootfs import unmount_below

    unmount_below(rootfs)


def _undo_create(init_pid: int | None, cgroup, state_dir: str) -> None:
    if init_pid is not None:
        _send(init_pid, SIGKILL)
    if cgroup is not None:
        try:
            if init_pid is not None:
                for pid in cgroup.pids():
                    _send(pid, SIGKILL)
            cgroup.destroy()
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
    remove_state_dir(state_dir)


def remove_state_dir(path: str) -> None:
    """The state dir holds only files the runtime made (state.json, exec.fifo, temps)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    os.rmdir(path)


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def write_pid_file(path: str, pid: int) -> None:
    """Atomically, so a reader never sees an empty pid file (as runc does)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path))
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def wait_for_exit(pid: int) -> int:
    """Reap children until `pid` exits (we are its subreaper); its status as a shell shows it."""
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        except InterruptedError:
            continue
        if reaped == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else (
                128 + os.WTERMSIG(status))

