"""Pod sandboxes: pinned namespaces, CNI networking, the pod's files and its shim.

A pod has no pause container: its network, IPC and UTS namespaces are
pinned (bind-mounted nsfs files under `<state>/pods/<id>/ns/`), and its
shim is started on RunPodSandbox.  A pod whose containers share one PID
namespace (CRI pid = POD) also gets an init, forked by its shim, PID 1 of
that namespace (pinned as ns/pid), with the pod-level seccomp profile, as
containerd's pause container; StopPodSandbox ends it after the containers.
Steps run in order and each is undone, in reverse, if a later one fails;
the record is written as `creating` first and removed last, so a crash in
between is found and undone by the recovery (recovery.py).

    <state>/pods/<id>/
        ns/{net,ipc,uts,pid}  pinned namespaces
        hostname hosts resolv.conf
        shm/                  the pod's /dev/shm (tmpfs)
        shim/                 the shim's socket, exit records, runtime state
        containers/<cid>/     bundles (config.json, rootfs mount point)
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time

from corral.sandbox.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SandboxError,
)
from corral.sandbox.files import HOST_HOSTS, host_file, hosts_text, resolv_conf_text, write_file

log = logging.getLogger("corrald.pods")

SHM_OPTIONS = "mode=1777,size=65536k"  # Docker's and containerd's 64 MiB /dev/shm
POD, NODE = 0, 2  # CRI NamespaceMode


class PodPaths:
    def __init__(self, state: str, pod_id: str):
        self.dir = os.path.join(state, "pods", pod_id)
        # Unix socket paths are short (107 bytes): sockets live apart, named by an ID prefix.
        self.shim_socket = os.path.join(state, "sockets", f"{pod_id[:20]}.sock")
        self.ns = os.path.join(self.dir, "ns")
        self.shm = os.path.join(self.dir, "shm")
        self.shim = os.path.join(self.dir, "shim")
        self.containers = os.path.join(self.dir, "containers")
        self.hostname = os.path.join(self.dir, "hostname")
        self.hosts = os.path.join(self.dir, "hosts")
        self.resolv_conf = os.path.join(self.dir, "resolv.conf")


def namespace_mode(config, kind: str) -> int:
    """The CRI NamespaceMode (POD=0, CONTAINER=1, NODE=2, TARGET=3) of a pod's namespace."""
    options = config.linux.security_context.namespace_options
    return getattr(options, kind)


def shares_pid(config) -> bool:
    """The pod's containers share one PID namespace, the pod init's."""
    return namespace_mode(config, "pid") == POD


class Pods:
    def __init__(self, ctx):
        self.ctx = ctx
        self.store = ctx.store
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # Not the pod's lock: a lost shim is seen from calls made under it (stop's syncs).
        self._gone_lock = threading.Lock()

    def lock(self, pod_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(pod_id, threading.Lock())

    def paths(self, pod_id: str) -> PodPaths:
        return PodPaths(self.ctx.config.state, pod_id)

    def get(self, pod_id: str):
        record = self.store.find_pod(pod_id)
        if record is None or record.state in ("creating", "removing"):
            raise NotFound(f"pod sandbox {pod_id!r} not found")
        return self.sync(record)

    def sync(self, record):
        """The record, NOTREADY if the pod's shim is gone (`shim_gone`) or its init ended
        unasked (its shim recorded the exit): its PID namespace, and every process in it,
        is gone, as a dead pause container's sandbox is for containerd.  For a ready pod: a
        lock query (shim/liveness.py) and, with an init, one stat; no shim call."""
        from corral.shim.server import POD_INIT_EXIT, SANDBOX_EXIT, recorded_exit

        if record.state != "ready":
            return record
        lost = self.ctx.containers.shim_lost(record.id)
        if lost is not None:
            self.shim_gone(record.id, lost)
            return self.store.pod(record.id)
        shim_dir = self.paths(record.id).shim
        if "pid" in record.pinned and recorded_exit(shim_dir, POD_INIT_EXIT) is not None:
            log.warning("pod %s: its init has ended: it is not ready", record.id[:12])
        elif _has_sandbox(self.ctx.config, record.handler) and \
                (ended := recorded_exit(shim_dir, SANDBOX_EXIT)) is not None:
            log.warning("pod %s: its sandbox has ended (%s): it is not ready", record.id[:12],
                        ended.get("reason", ""))
        else:
            return record
        self.store.update_pod(record.id, state="notready")
        return self.store.pod(record.id)

    def shim_gone(self, pod_id: str, why: str) -> None:
        """The pod's shim ended unasked (it is asked to only once the pod is stopped), say
        killed: as containerd when a shim disconnects, what is left of the pod's containers
        is killed (nobody would reap them or read their output) and their ends recorded,
        and the pod is NOTREADY, for kubelet to recreate it."""
        with self._gone_lock:
            record = self.store.pod(pod_id)
            if record is None or record.state in ("creating", "removing"):
                return  # what makes or removes it handles its shim
            for container in self.store.containers(pod_id):
                if container.state in ("created", "running"):
                    self.ctx.containers.end_without_shim(container, why)
            if record.state == "ready":
                log.warning("pod %s: its shim is gone (%s): it is not ready", pod_id[:12], why)
                self.store.update_pod(pod_id, state="notready")

    # --- run -----------------------------------------------------------------------------------
    def run(self, config, handler_name: str = "", init_seccomp: dict | None = None) -> str:
        """`init_seccomp`: the OCI seccomp profile of the pod's init (sandbox/ocispec.py
        sandbox_seccomp), if its containers share a PID namespace."""
        from corral.shim.handlers import UnknownHandler

        metadata = config.metadata
        if not metadata.name or not metadata.namespace or not metadata.uid:
            raise InvalidArgument("pod sandbox config: metadata.name, metadata.namespace and "
                                  "metadata.uid are required")
        try:
            handler = self.ctx.config.handler(handler_name)
        except UnknownHandler as e:
            raise InvalidArgument(str(e)) from None
        _check_handler(handler, config)
        pod_id = secrets.token_hex(32)
        host_network = namespace_mode(config, "network") == NODE
        cgroup_parent = config.linux.cgroup_parent or \
            os.path.join(self.ctx.config.pod_cgroup_parent, f"pod-{pod_id[:12]}")
        try:
            self.store.add_pod(id=pod_id, name=metadata.name, namespace=metadata.namespace,
                               uid=metadata.uid, attempt=metadata.attempt, state="creating",
                               created=time.time_ns(), handler=handler.name,
                               config=config.SerializeToString(), cgroup_parent=cgroup_parent)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"pod sandbox {metadata.name}_{metadata.namespace}_"
                                f"{metadata.uid}_{metadata.attempt} already exists") from None
        with self.lock(pod_id):
            try:
                ip, pinned, shim_pid = self._make(pod_id, config, host_network, init_seccomp,
                                                  handler, cgroup_parent)
            except BaseException:
                self.teardown(pod_id, config, network=not host_network)
                self.store.remove_pod(pod_id)
                raise
            self.store.update_pod(pod_id, state="ready", ip=ip, namespaces=json.dumps(pinned),
                                  shim_pid=shim_pid)
        log.info("pod %s (%s/%s) ready ip=%s", pod_id[:12], metadata.namespace, metadata.name,
                 ip or "host")
        return pod_id

    def _make(self, pod_id: str, config, host_network: bool, init_seccomp: dict | None,
              handler, cgroup_parent: str) -> tuple[str, dict, int]:
        from corral.network import netns

        paths = self.paths(pod_id)
        os.makedirs(paths.containers, exist_ok=True)
        kinds = []
        if not host_network:
            kinds += ["net", "uts"]
        if namespace_mode(config, "ipc") != NODE:
            kinds.append("ipc")
        # Without a hostname, the node's, as containerd (a pod name may be longer than
        # HOST_NAME_MAX); a host-network pod shares the host's UTS namespace anyway.
        hostname = config.hostname or os.uname().nodename
        pinned = (netns.pin_namespaces(kinds, paths.ns,
                                       hostname=hostname if "uts" in kinds else "")
                  if kinds else {})
        if "ipc" in kinds:
            self._mount_shm(paths.shm)
        ip = ""
        if not host_network:
            result = self.ctx.network.setup(
                pod_id, pinned["net"], name=config.metadata.name,
                namespace=config.metadata.namespace, uid=config.metadata.uid,
                port_mappings=port_mappings(config))
            ip = result.ip or ""
        write_file(paths.hostname, hostname + "\n")
        write_file(paths.hosts, host_file(HOST_HOSTS) if host_network else
                   hosts_text(hostname, ip))
        write_file(paths.resolv_conf, resolv_conf_text(config.dns_config
                                                       if config.HasField("dns_config") else None))
        shim_pid = self._shim(pod_id, handler, paths)
        self._start_sandbox(pod_id, handler, {
            "namespaces": pinned, "cgroup_parent": cgroup_parent, "hostname": hostname,
            "containers": paths.containers, "ip": ip, "hosts": paths.hosts,
            "resolv_conf": paths.resolv_conf, "shares_pid": shares_pid(config)})
        if shares_pid(config) and handler.features.pod_init:
            pinned["pid"] = self.start_init(pod_id, pinned, init_seccomp)
        return ip, pinned, shim_pid

    def _shim(self, pod_id: str, handler, paths: PodPaths) -> int:
        """The pod's shim: a pooled one with its sandbox made (pool.py) if the handler has
        a pool with one ready, else a new one."""
        from corral.shim.protocol import ShimError

        pool = self.ctx.pools.get(handler.name)
        slot = pool.take() if pool is not None else None
        if slot is not None:
            try:
                return pool.claim(slot, pod_id, paths)
            except (OSError, ShimError) as e:
                if os.path.exists(paths.shim):
                    raise  # the pod's now: its teardown ends it
                log.warning("pod %s: the pooled sandbox could not be claimed (%s): starting "
                            "a shim", pod_id[:12], e)
        return self.ctx.shims.start(pod_id, paths.shim, paths.shim_socket)

    def _start_sandbox(self, pod_id: str, handler, pod: dict) -> None:
        """The pod's runtime handler in its shim, and the sandbox it has (a VM, gVisor's):
        made now, so the pod is ready when its sandbox is."""
        from corral.shim.protocol import ShimClient, ShimError

        try:
            with ShimClient(self.paths(pod_id).shim_socket, timeout=120) as shim:
                shim.call("start_pod", runtime=handler.to_dict(), pod=pod)
        except ShimError as e:
            if e.kind == "unsupported":
                raise FailedPrecondition(f"runtime handler {handler.name}: {e}") from None
            raise SandboxError(f"pod {pod_id[:12]}: runtime handler {handler.name}: "
                               f"{e}") from None

    def start_init(self, pod_id: str, pinned: dict, seccomp_profile: dict | None) -> str:
        """Start the pod's init in its shim, in a new PID namespace pinned as ns/pid
        (replacing a pin left by an init that is gone); the pin's path."""
        from corral.network import netns
        from corral.shim.protocol import ShimClient, ShimError

        paths = self.paths(pod_id)
        netns.remove_namespace(os.path.join(paths.ns, "pid"))
        pin = netns.prepare_pin(paths.ns, "pid")
        request = {"pin": pin, "namespaces": {kind: pinned[kind] for kind in
                                              ("net", "ipc", "uts") if pinned.get(kind)}}
        if seccomp_profile:
            request["seccomp"] = compiled_seccomp(json.dumps(seccomp_profile, sort_keys=True))
        try:
            with ShimClient(paths.shim_socket, timeout=30) as shim:
                shim.call("start_init", **request)
        except ShimError as e:
            raise SandboxError(f"pod {pod_id[:12]}: {e}") from None
        return pin

    def _mount_shm(self, path: str) -> None:
        from corral.runtime import syscalls as k

        os.makedirs(path, exist_ok=True)
        k.Syscalls().mount("shm", path, "tmpfs", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC,
                           SHM_OPTIONS)

    # --- stop and remove -----------------------------------------------------------------------
    def stop(self, pod_id: str) -> None:
        """Stop every container, tear the network down; idempotent, as the CRI requires."""
        record = self.store.pod(pod_id)
        if record is None or record.state == "removing":
            return  # the CRI: stopping what is gone is not an error
        with self.lock(record.id):
            for container in self.store.containers(record.id):
                self.ctx.containers.stop(container.id, timeout=0)
            config = pod_config(record)
            if "pid" in record.pinned:
                self._stop_init(record.id)
            self._stop_sandbox(record.id)
            if namespace_mode(config, "network") != NODE:
                # Also when not ready: a DEL that failed earlier (at recovery after a reboot)
                # is retried; with nothing cached it is a no-op.
                self.ctx.network.teardown(record.id, record.pinned.get("net", ""),
                                          name=config.metadata.name,
                                          namespace=config.metadata.namespace,
                                          uid=config.metadata.uid,
                                          port_mappings=port_mappings(config))
            if record.state != "notready":
                self.store.update_pod(record.id, state="notready")
        log.info("pod %s stopped", record.id[:12])

    def remove(self, pod_id: str) -> None:
        record = self.store.pod(pod_id)
        if record is None:
            return
        self.stop(record.id)
        with self.lock(record.id):
            for container in self.store.containers(record.id):
                self.ctx.containers.remove(container.id)
            self.store.update_pod(record.id, state="removing")
            self.teardown(record.id, pod_config(record), network=False)
            self.store.remove_pod(record.id)
        with self._locks_lock:
            self._locks.pop(record.id, None)
        log.info("pod %s removed", record.id[:12])

    def _stop_sandbox(self, pod_id: str) -> None:
        """End the handler's sandbox (a VM, gVisor's): the stopped pod holds no resources."""
        from corral.shim.protocol import ShimClient, ShimError

        try:
            with ShimClient(self.paths(pod_id).shim_socket, timeout=60) as shim:
                shim.call("stop_pod")
        except (OSError, ShimError) as e:
            log.warning("pod %s: stop its sandbox: %s", pod_id[:12], e)

    def _stop_init(self, pod_id: str) -> None:
        """End the pod's init, and with it anything left in its PID namespace."""
        from corral.shim.protocol import ShimClient, ShimError

        try:
            with ShimClient(self.paths(pod_id).shim_socket, timeout=30) as shim:
                shim.call("stop_init")
        except (OSError, ShimError) as e:
            # A shim that is gone took its init along (PR_SET_PDEATHSIG).
            log.warning("pod %s: stop its init: %s", pod_id[:12], e)

    def teardown(self, pod_id: str, config, network: bool) -> None:
        """Undo whatever of the pod exists: each step tolerates what is already gone."""
        from corral.network import netns
        from corral.shim.protocol import ShimClient, ShimError

        paths = self.paths(pod_id)
        if os.path.exists(paths.shim_socket):
            try:
                with ShimClient(paths.shim_socket, timeout=30) as shim:
                    shim.call("shutdown", force=True)
            except (OSError, ShimError) as e:
                log.warning("pod %s: shim shutdown: %s", pod_id[:12], e)
        kill_shim(paths.shim)
        try:
            os.unlink(paths.shim_socket)
        except FileNotFoundError:
            pass
        if network:
            record = self.store.pod(pod_id)
            self.ctx.network.teardown(pod_id, (record.pinned if record else {}).get("net", ""),
                                      name=config.metadata.name,
                                      namespace=config.metadata.namespace,
                                      uid=config.metadata.uid,
                                      port_mappings=port_mappings(config))
        _unmount(paths.shm)
        netns.unpin_namespaces(paths.ns)
        self.ctx.remove_pod_cgroup(self.store.pod(pod_id))
        shutil.rmtree(paths.dir, ignore_errors=True)


def _has_sandbox(config, handler_name: str) -> bool:
    handler = config.runtimes.get(handler_name)  # a pod may outlive its handler's config
    return handler is not None and handler.features.sandbox


def _check_handler(handler, config) -> None:
    """FAILED_PRECONDITION for what this handler cannot give the pod."""
    why = handler.unavailable()
    if why:
        raise FailedPrecondition(f"runtime handler {handler.name} is not available on this "
                                 f"host: {why}")
    if handler.features.host_namespaces:
        return
    for kind in ("network", "pid", "ipc"):
        if namespace_mode(config, kind) == NODE:
            raise FailedPrecondition(f"runtime handler {handler.name} cannot share the host's "
                                     f"{kind} namespace (its pods have a kernel of their own)")


@functools.lru_cache(maxsize=16)
def compiled_seccomp(profile_json: str) -> dict:
    """A profile compiled for the pod init's seccomp(2), as the shim takes it.  Pods share
    a few profiles (RuntimeDefault mostly): each is compiled once."""
    from corral.runtime.errors import RuntimeFailure
    from corral.runtime.seccomp import compile_program

    try:
        program = compile_program(json.loads(profile_json), "pod linux.security_context.seccomp")
    except (RuntimeFailure, ValueError) as e:
        raise InvalidArgument(str(e)) from None
    if program.notifies:
        raise InvalidArgument("pod linux.security_context.seccomp: SCMP_ACT_NOTIFY needs a "
                              "seccomp agent, which the pod's init has not")
    return {"bpf": base64.b64encode(program.bpf).decode("ascii"), "flags": program.flags}


def pod_config(record):
    from cri_api.v1 import api_pb2

    config = api_pb2.PodSandboxConfig()
    config.ParseFromString(record.config)
    return config


def port_mappings(config) -> list[dict]:
    protocols = {0: "tcp", 1: "udp", 2: "sctp"}
    return [{"hostPort": m.host_port, "containerPort": m.container_port,
             "protocol": protocols.get(m.protocol, "tcp"), "hostIP": m.host_ip}
            for m in config.port_mappings if m.host_port]


def _unmount(path: str) -> None:
    from corral.runtime import syscalls as k

    try:
        k.Syscalls().umount(path, k.MNT_DETACH)
    except OSError:
        pass


def kill_shim(shim_dir: str, grace: float = 2.0) -> None:
    """A shim that does not exit by itself (after `shutdown`) is killed by its recorded PID."""
    try:
        with open(os.path.join(shim_dir, "shim.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + grace
    while _is_shim(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.005)


def _is_shim(pid: int) -> bool:
    """Alive, not a zombie, and still a shim (not a reused PID)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"corral.shim" in f.read()
    except OSError:
        return False

