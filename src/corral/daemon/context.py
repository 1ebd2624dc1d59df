"""What corrald's parts share: config, the store, images, network, pods and containers."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from corral.daemon.config import Config
from corral.images.registries import RegistryConfig
from corral.images.service import ImageService
from corral.runtime.cgroups.common import procs as cgroup_procs
from corral.sandbox.containers import Containers
from corral.sandbox.pods import Pods
from corral.sandbox.pool import Pools
from corral.shim.launch import ShimLauncher
from corral.store.db import Database
from corral.store.sandboxes import SandboxStore

log = logging.getLogger("corrald")


class Context:
    def __init__(self, config: Config):
        from corral.network.manager import PodNetwork

        self.config = config
        os.makedirs(config.root, mode=0o711, exist_ok=True)
        os.makedirs(config.state, mode=0o711, exist_ok=True)
        self.db = Database(os.path.join(config.root, "metadata.db"))
        self.store = SandboxStore(self.db)
        self.images = ImageService(config.root)
        self.registries = RegistryConfig.load(config.registries_conf or None,
                                              config.auth_file or None, config.certs_dir)
        self.network = PodNetwork(config.cni.conf_dir, config.cni.bin_dirs,
                                  config.cni.cache_dir, config.cni.legacy_cache_dir)
        self.pods = Pods(self)
        self.containers = Containers(self)
        self.streaming = None  # the Exec/Attach/PortForward URL server, started by main.py
        self.cgroup_v2 = _cgroup_v2_only()
        self.min_oom_score_adj = _current_oom_score_adj()
        self._unpack_lock = threading.Lock()
        self.shims = ShimLauncher(os.path.join(config.state, "zygote.sock"),
                                  os.path.join(config.state, "zygote.log"))
        self.pools = Pools(self)  # started by main.py once corrald serves

    def close(self) -> None:
        self.pools.close()
        self.shims.close()
        self.images.close()
        self.db.close()

    # --- images --------------------------------------------------------------------------------
    def unpack_image(self, name: str, new: bool = False) -> str:
        """The image's top chain ID, unpacked once (layers are shared; unpacking is serialized).
        `new`: just pulled, so a layer that cannot be unpacked removes the image."""
        with self._unpack_lock:
            return self.images.unpack_new(name) if new else self.images.unpack(name)

    def image_config(self, image) -> dict:
        return json.loads(self.images.content.read(image.id))

    # --- cgroups -------------------------------------------------------------------------------
    def remove_pod_cgroup(self, record) -> None:
        """The pod's cgroup parent directories, if empty (its containers' cgroups are gone)."""
        if record is None or not record.cgroup_parent:
            return
        relative = record.cgroup_parent.strip("/")
        if not relative or not relative.startswith(self.config.pod_cgroup_parent.strip("/")
                                                    + "/pod-"):
            return  # a parent kubelet chose is kubelet's to remove
        self._remove_cgroup(relative, "pod")

    def remove_container_cgroup(self, record, container_id: str) -> None:
        """A container's cgroup its runtime cannot remove, its state lost (with the state
        dir, or with a shim that never wrote it): what still runs in it is killed first.
        The runtime removes it in every other case."""
        if record is not None and record.cgroup_parent:
            relative = os.path.join(record.cgroup_parent.strip("/"), container_id)
            _kill_cgroup(self._hierarchies(), relative)
            self._remove_cgroup(relative, "container")

    def _hierarchies(self) -> list[str]:
        base = "/sys/fs/cgroup"
        return [base] if self.cgroup_v2 else [
            os.path.join(base, name) for name in os.listdir(base)
            if os.path.isdir(os.path.join(base, name)) and
            not os.path.islink(os.path.join(base, name))]

    def _remove_cgroup(self, relative: str, what: str) -> None:
        for hierarchy in self._hierarchies():
            try:
                os.rmdir(os.path.join(hierarchy, relative))
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                log.warning("%s cgroup %s in %s: %s", what, relative, hierarchy, e)


def _kill_cgroup(hierarchies: list[str], relative: str, timeout: float = 5.0) -> None:
    """SIGKILL every process of a cgroup, in every hierarchy, until none is left (a fork
    may race a round); a frozen one is thawed first, or the signal would wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for hierarchy in hierarchies:
            directory = os.path.join(hierarchy, relative)
            for name, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                try:
                    with open(os.path.join(directory, name), "r+") as f:
                        if f.read().strip() not in ("THAWED", "0"):
                            f.write(thawed)
                except OSError:
                    pass
            try:
                pids.update(cgroup_procs(directory))
            except OSError:
                pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    log.warning("container cgroup %s: processes left after SIGKILL", relative)


def _cgroup_v2_only() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def _current_oom_score_adj() -> int | None:
    """Where oom_score_adj may not go below without CAP_SYS_RESOURCE (containerd's
    restrict_oom_score_adj): corrald's own value, if lowering it is not allowed here."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(current - 1 if current > -1000 else current))
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(current))
        return None
    except PermissionError:
        log.info("oom_score_adj cannot be lowered here (no CAP_SYS_RESOURCE): container values "
                 "below %d are raised to it", current)
        return current
