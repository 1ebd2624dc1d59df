"""The CRI side by side: corrald against containerd 1.6 + runc, both over their own sockets.

1. Latency of one pod's life, as kubelet drives it, for a busybox container:
   RunPodSandbox → CreateContainer → StartContainer → (exit) → StopPodSandbox →
   RemovePodSandbox; medians per step and in all, daemons taking turns.
2. Memory per running pod: PODS pods, each with a busybox `sleep`; the PSS
   (/proc/PID/smaps_rollup) of the daemon, its shims and its sandbox holders
   (containerd's pause containers; corrald's shim zygote) over PODS.  The
   containers' own processes are not counted, for either.

Each daemon gets a temp root, state, socket, CNI bridge and subnet; both
get the same busybox image (imported, offline), containerd also a local
pause image.  Everything is removed at the end, whatever happens.

    .venv/bin/python bench/cri.py [-n 20] [--pods 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

from pull import unmount_under  # noqa: E402 - bench/ is on sys.path: a sibling

from corral.images.busybox import build_rootfs  # noqa: E402
from corral.images.layout import build_image, write_archive  # noqa: E402
from corral.images.service import ImageService  # noqa: E402

BUSYBOX = "docker.io/library/busybox:latest"
PAUSE = "corral.local/pause:1"
PAUSE_ARGS = ["sleep", "2147483"]
STEPS = ("run_pod", "create", "start", "exited", "stop_pod", "remove_pod")


def conflist(bridge: str, subnet: str, data_dir: str) -> str:
    return json.dumps({"cniVersion": "1.0.0", "name": f"{bridge}-net", "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": data_dir,
                  "ranges": [[{"subnet": subnet}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]})


class Daemon:
    name = ""

    def __init__(self, base: str, bridge: str, subnet: str):
        self.base = base
        self.bridge = bridge
        os.makedirs(os.path.join(base, "cni"))
        with open(os.path.join(base, "cni", "10-bench.conflist"), "w") as f:
            f.write(conflist(bridge, subnet, os.path.join(base, "ipam")))
        self.process: subprocess.Popen | None = None

    def connect(self) -> None:
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        grpc.channel_ready_future(self.channel).result(timeout=30)

    def overhead_pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        try:
            pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
            for pod in pods:
                self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
                self.runtime.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        except (grpc.RpcError, AttributeError):
            pass
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        unmount_under(self.base)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Corrald(Daemon):
    name = "corrald"

    def start(self, busybox_archive: str) -> None:
        self.socket = os.path.join(self.base, "s", "corral.sock")
        service = ImageService(os.path.join(self.base, "root"))
        try:
            service.import_archive(busybox_archive)
        finally:
            service.close()
        with open(os.path.join(self.base, "corrald.toml"), "w") as f:
            f.write(f'[cni]\nconf_dir = "{self.base}/cni"\nbin_dirs = ["/usr/lib/cni"]\n')
        self.log = open(os.path.join(self.base, "corrald.log"), "w")
        self.process = subprocess.Popen(
            [os.path.join(REPO, ".venv", "bin", "corrald"), "--config",
             f"{self.base}/corrald.toml", "--root", f"{self.base}/root", "--state",
             f"{self.base}/s", "--log-level", "warning"], stdout=self.log, stderr=self.log)
        self.connect()

    def overhead_pids(self) -> list[int]:
        zygote = os.path.join(self.base, "s", "zygote.sock")
        pids = [self.process.pid] + [pid for pid in _all_pids()
                                     if _cmdline(pid).endswith(f"corral.shim.zygote {zygote}")]
        for pid_file in _glob(os.path.join(self.base, "s", "pods"), "shim/shim.pid"):
            with open(pid_file) as f:
                pids.append(int(f.read()))
        return pids


class Containerd(Daemon):
    name = "containerd"

    def start(self, busybox_archive: str, pause_archive: str) -> None:
        self.socket = os.path.join(self.base, "containerd.sock")
        config = f"""version = 2
root = "{self.base}/root"
state = "{self.base}/state"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.base}/cni"
"""
        with open(os.path.join(self.base, "config.toml"), "w") as f:
            f.write(config)
        self.log = open(os.path.join(self.base, "containerd.log"), "w")
        self.process = subprocess.Popen(["containerd", "--config",
                                         f"{self.base}/config.toml"],
                                        stdout=self.log, stderr=self.log)
        self.connect()
        for archive in (busybox_archive, pause_archive):
            subprocess.run(["ctr", "-a", self.socket, "-n", "k8s.io", "images", "import",
                            archive], check=True, capture_output=True)

    def overhead_pids(self) -> list[int]:
        pids = [self.process.pid]
        for pid in _all_pids():
            cmdline = _cmdline(pid)
            if "containerd-shim-runc-v2" in cmdline and self.socket in cmdline:
                pids.append(pid)
                pids += [child for child in _children(pid) if _cmdline(child).split() ==
                         PAUSE_ARGS]
        return pids


def _glob(directory: str, suffix: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    paths = [os.path.join(directory, name, suffix) for name in os.listdir(directory)]
    return [p for p in paths if os.path.exists(p)]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    children = []
    for other in _all_pids():
        try:
            with open(f"/proc/{other}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(other)
        except (OSError, ValueError, IndexError):
            pass
    return children


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pod_config(name: str, uid: str) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(
        name=name, namespace="bench", uid=uid), hostname=name)
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    return config


def container_config(args: list[str]) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"),
                                   image=api_pb2.ImageSpec(image=BUSYBOX), command=args)


def one_pod(daemon: Daemon, index: int) -> dict[str, float]:
    rt = daemon.runtime
    times: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        times[name] = (now - mark) * 1000
        mark = now

    config = pod_config(f"lat{index}", f"uid-lat-{index}")
    pod_id = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
    step("run_pod")
    container_id = rt.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config(["true"]),
        sandbox_config=config)).container_id
    step("create")
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    step("start")
    while rt.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id)).status.state != api_pb2.CONTAINER_EXITED:
        time.sleep(0.002)
    step("exited")
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    step("stop_pod")
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    step("remove_pod")
    times["total"] = sum(times[s] for s in STEPS)
    return times


def memory_per_pod(daemon: Daemon, pods: int) -> tuple[float, float]:
    """(KiB of PSS per pod for daemon + shims + sandbox holders, the daemon's own KiB)."""
    rt = daemon.runtime
    for i in range(pods):
        config = pod_config(f"mem{i}", f"uid-mem-{i}")
        pod_id = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
        container_id = rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config(["sleep", "3600"]),
            sandbox_config=config)).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    time.sleep(2)
    pids = set(daemon.overhead_pids())  # zygote-forked shims share the zygote's cmdline
    total = sum(pss_kib(pid) for pid in pids)
    daemon_own = pss_kib(daemon.process.pid)
    for pod in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    return total / pods, daemon_own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--iterations", type=int, default=20)
    parser.add_argument("--pods", type=int, default=50)
    opts = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="cb-", dir="/tmp")
    daemons: list[Daemon] = []
    try:
        rootfs = os.path.join(work, "rootfs")
        build_rootfs(rootfs)
        busybox = os.path.join(work, "busybox.tar")
        pause = os.path.join(work, "pause.tar")
        write_archive(build_image(rootfs, BUSYBOX, cmd=["sh"]), busybox)
        write_archive(build_image(rootfs, PAUSE, cmd=PAUSE_ARGS), pause)
        corrald = Corrald(os.path.join(work, "c"), "corralb0", "10.99.50.0/24")
        containerd = Containerd(os.path.join(work, "d"), "corralb1", "10.99.51.0/24")
        daemons = [corrald, containerd]
        corrald.start(busybox)
        containerd.start(busybox, pause)
        for daemon in daemons:  # warm-up: first pods pay for image unpacking
            one_pod(daemon, -1)
        latencies: dict[str, list[dict[str, float]]] = {d.name: [] for d in daemons}
        for i in range(opts.iterations):
            for daemon in daemons if i % 2 == 0 else reversed(daemons):
                latencies[daemon.name].append(one_pod(daemon, i))
        memory = {d.name: memory_per_pod(d, opts.pods) for d in daemons}
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for daemon in daemons:
            daemon.stop()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(t["total"] for t in latencies["containerd"])
    print(f"pod lifecycle, median ms over {opts.iterations} "
          "(RunPodSandbox → Create → Start → exited → StopPodSandbox → RemovePodSandbox)")
    print(f"{'daemon':<12}{'total':>8}{'vs ctrd':>9} |" + "".join(f"{s:>11}" for s in STEPS))
    for name, runs in latencies.items():
        total = statistics.median(t["total"] for t in runs)
        steps = "".join(f"{statistics.median(t[s] for t in runs):>11.1f}" for s in STEPS)
        print(f"{name:<12}{total:>8.1f}{total / base:>8.2f}x |{steps}")
    print(f"\nmemory with {opts.pods} pods running (PSS of daemon + shims + sandbox holders)")
    for name, (per_pod, daemon_own) in memory.items():
        print(f"{name:<12}{per_pod / 1024:>8.2f} MiB per pod   (daemon alone "
              f"{daemon_own / 1024:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
