"""A real corrald for tests: its own root, state, socket and CNI network, and a CRI client.

`Corrald.start()` runs `python -m corral.daemon.main` and waits for its
ready line; `kill()` sends any signal (SIGKILL for the crash tests);
`cleanup()` removes every pod through CRI, then makes sure of it: no shim
process, mount, netns, veth, cgroup or IP allocation of this daemon is
left.  The CNI network is a test-only bridge and subnet, so nothing of
the host's own networking is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from corral.images.busybox import build_rootfs
from corral.images.layout import build_image, write_archive
from corral.images.service import ImageService

BUSYBOX = "docker.io/library/busybox:latest"
CNI_BIN_DIRS = ["/usr/lib/cni"]
CGROUP_ROOT = "/sys/fs/cgroup"


def cni_conflist(bridge: str, subnet: str, data_dir: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": f"{bridge}-net",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": data_dir,
                      "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


@contextlib.contextmanager
def running_corrald(bridge: str, subnet: str):
    """A started corrald with the busybox image; everything of it removed afterwards."""
    daemon = Corrald(short_base(), bridge=bridge, subnet=subnet)
    try:
        daemon.import_busybox()
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def short_base() -> Path:
    """A short temp dir: Unix socket paths (corrald's, the shims') have at most 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))


class Corrald:
    def __init__(self, base: Path, bridge: str = "corralt0", subnet: str = "10.99.7.0/24",
                 pod_cgroup_parent: str = ""):
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.socket = self.state / "corral.sock"
        self.log_path = base / "corrald.log"
        self.cni_dir = base / "cni"
        self.bridge = bridge
        self.process: subprocess.Popen | None = None
        self.channel = None
        self.cni_dir.mkdir(parents=True, exist_ok=True)
        (self.cni_dir / "10-test.conflist").write_text(json.dumps(
            cni_conflist(bridge, subnet, str(base / "ipam"))))
        self.config = base / "corrald.toml"
        # Pods' cgroups under a parent of this daemon's own, so what they leave is seen.
        self.pod_cgroup_parent = pod_cgroup_parent or f"/corral-test-{base.name}"
        # A certs dir of its own: the machine's /etc/containers/certs.d is not the tests'.
        (base / "certs.d").mkdir(exist_ok=True)
        self.config.write_text(f'pod_cgroup_parent = "{self.pod_cgroup_parent}"\n'
                               f'certs_dir = "{base / "certs.d"}"\n'
                               f'[cni]\nconf_dir = "{self.cni_dir}"\nbin_dirs = {CNI_BIN_DIRS!r}\n'
                               # VM templates of its own (each holds a guest's RAM)
                               f'[runtimes.vm]\ntype = "vm"\n'
                               f'template_dir = "{base / "vm-templates"}"\n'
                               .replace("'", '"'))

    def import_busybox(self) -> str:
        """The embedded busybox image, imported into the root before the daemon starts."""
        rootfs = self.base / "busybox-rootfs"
        if not rootfs.exists():
            build_rootfs(str(rootfs))
        archive = self.base / "busybox.tar"
        write_archive(build_image(str(rootfs), BUSYBOX, cmd=["sh"]), str(archive))
        service = ImageService(str(self.root))
        try:
            return service.import_archive(str(archive))[0].id
        finally:
            service.close()

    def start(self, timeout: float = 30) -> None:
        ready_r, ready_w = os.pipe()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "corral.daemon.main", "--config", str(self.config),
             "--root", str(self.root), "--state", str(self.state), "--log-level", "debug",
             "--ready-fd", str(ready_w)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w,))
        os.close(ready_w)
        log.close()
        deadline = time.monotonic() + timeout
        line = b""
        try:
            while time.monotonic() < deadline and not line.endswith(b"\n"):
                chunk = os.read(ready_r, 64)
                if not chunk:
                    break
                line += chunk
        finally:
            os.close(ready_r)
        if line != b"ready\n":
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"corrald did not start:\n{self.log()}")
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except FileNotFoundError:
            return ""

    def kill(self, signum: int = signal.SIGKILL) -> int:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.process.send_signal(signum)
        return self.process.wait(30)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- CRI helpers -------------------------------------------------------------------------
    def pod_config(self, name: str, **fields) -> api_pb2.PodSandboxConfig:
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="test", uid=f"uid-{name}"),
            hostname=name, log_directory=str(self.base / "logs" / name), **fields)
        config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
        return config

    def container_config(self, name: str, args: list[str], **fields) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=BUSYBOX), command=args[:1], args=args[1:],
            log_path=f"{name}.log", **fields)

    def run_pod(self, name: str, **fields) -> tuple[str, api_pb2.PodSandboxConfig]:
        config = self.pod_config(name, **fields)
        reply = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        return reply.pod_sandbox_id, config

    def create_container(self, pod_id: str, pod_config, name: str, args: list[str],
                         **fields) -> str:
        reply = self.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=self.container_config(name, args, **fields),
            sandbox_config=pod_config))
        return reply.container_id

    def container_state(self, container_id: str):
        return self.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)).status

    def wait_exited(self, container_id: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.container_state(container_id)
            if status.state == api_pb2.CONTAINER_EXITED:
                return status
            time.sleep(0.05)
        raise AssertionError(f"container {container_id[:12]} did not exit")

    # --- cleanup -----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove every pod (through CRI if the daemon runs), then whatever is left by hand."""
        if self.running() and self.channel is not None:
            try:
                for pod in self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
                    self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(
                        pod_sandbox_id=pod.id))
                    self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(
                        pod_sandbox_id=pod.id))
            except grpc.RpcError:
                pass
        if self.running():
            self.kill(signal.SIGTERM)
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        remove_cgroup_tree(self.pod_cgroup_parent)
        for mount in reversed(self.mounts()):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def shim_pids(self, pooled: bool = True) -> list[int]:
        """The pods' shims, and the warm pool's (sandbox/pool.py) unless not `pooled`."""
        return self._shims("pods") + (self.pool_shim_pids() if pooled else [])

    def pool_shim_pids(self) -> list[int]:
        return self._shims("pool")

    def _shims(self, kind: str) -> list[int]:
        pids = []
        for pid_file in self.state.glob(f"{kind}/*/shim/shim.pid"):
            try:
                pid = int(pid_file.read_text())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"corral.shim" in f.read():
                        pids.append(pid)
            except (OSError, ValueError):
                pass
        return pids

    def mounts(self) -> list[str]:
        base = str(self.base)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [p for p in points if p == base or p.startswith(base + "/")]

    def leftovers(self) -> dict:
        """What of this daemon's pods exists outside the daemon: all should be empty.  A
        warm pool's shims and sockets are the daemon's, not a pod's."""
        ipam = self.base / "ipam"
        return {
            "shims": self.shim_pids(pooled=False),
            "mounts": self.mounts(),
            "pod_dirs": sorted(p.name for p in (self.state / "pods").glob("*"))
            if (self.state / "pods").exists() else [],
            "ip_allocations": sorted(p.name for p in ipam.rglob("*")
                                     if p.is_file() and p.name[0].isdigit())
            if ipam.exists() else [],
            "veths": _veths_on(self.bridge),
            "sockets": sorted(p.name for p in (self.state / "sockets").glob("*")
                              if not p.name.startswith("pool-")),
            "processes": sorted(cgroup_pids(self.pod_cgroup_parent)),
            "cgroups": cgroup_dirs(self.pod_cgroup_parent),
        }


NOTHING_LEFT = {key: [] for key in ("shims", "mounts", "pod_dirs", "ip_allocations", "veths",
                                    "sockets", "processes", "cgroups")}


def remove_every_pod(daemon) -> None:
    """After a test on a shared daemon: remove its pods; nothing of them may be left."""
    for pod in daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    assert daemon.leftovers() == NOTHING_LEFT


def cgroup_hierarchies() -> list[str]:
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        return [CGROUP_ROOT]
    return [os.path.join(CGROUP_ROOT, name) for name in sorted(os.listdir(CGROUP_ROOT))
            if os.path.isdir(os.path.join(CGROUP_ROOT, name))
            and not os.path.islink(os.path.join(CGROUP_ROOT, name))]


def cgroup_dirs(parent: str) -> list[str]:
    """The cgroups below `parent` (not itself), in any hierarchy, relative to it."""
    found = set()
    for hierarchy in cgroup_hierarchies():
        top = os.path.join(hierarchy, parent.strip("/"))
        for directory, _, _ in os.walk(top):
            if directory != top:
                found.add(os.path.relpath(directory, top))
    return sorted(found)


def cgroup_pids(parent: str) -> set[int]:
    """Every process in a cgroup under `parent`, in any hierarchy."""
    pids = set()
    for hierarchy in cgroup_hierarchies():
        for directory, _, files in os.walk(os.path.join(hierarchy, parent.strip("/"))):
            if "cgroup.procs" in files:
                with open(os.path.join(directory, "cgroup.procs")) as f:
                    pids |= {int(line) for line in f if line.strip()}
    return pids


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_cgroup_tree(parent: str) -> list[str]:
    """Kill what still runs under the cgroup parent, remove it everywhere; what stayed."""
    for _ in range(50):
        pids = cgroup_pids(parent)
        if not pids:
            break
        kill_pids(pids)
        time.sleep(0.1)
    left = []
    for hierarchy in cgroup_hierarchies():
        top = os.path.join(hierarchy, parent.strip("/"))
        for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(directory)
            except OSError:
                left.append(directory)
    return left


def _veths_on(bridge: str) -> list[str]:
    path = f"/sys/class/net/{bridge}/brif"
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
