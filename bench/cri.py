"""The CRI side by side: corrald against containerd 1.6 + runc, both over their own sockets.

1. Latency of one pod's life, as kubelet drives it, for a busybox container:
   RunPodSandbox → CreateContainer (`true`) → StartContainer → ContainerStatus
   says EXITED → StopPodSandbox → RemovePodSandbox.  Median, p90, min and max of
   the whole life, the median of each step, daemons taking turns (the first one
   alternates), after one unrecorded warm-up pod each.
2. Memory per running pod: PODS pods, each one busybox `sleep 3600`, created
   for one daemon, measured, removed, then the other.  The PSS
   (/proc/PID/smaps_rollup) of everything the runtime runs: the daemon, its
   shims and their helpers (containerd's pause processes, corrald's shim
   zygote), over PODS.  The containers' own processes are not counted.

Each daemon gets a temp root, state, socket, cgroup parent and CNI bridge
(`corralb0` 10.99.50.0/24 for corrald, `corralb1` 10.99.51.0/24 for
containerd: the test harness's conflist, bridge + host-local + portmap from
/usr/lib/cni); both get the same busybox image, imported offline, containerd
also a local pause image (busybox `sleep`) as its sandbox_image.  Everything
is removed at the end, whatever happens (also on Ctrl-C or SIGTERM): pods
through CRI, then daemons, shims and container processes by PID, mounts under
the temp dir, our network namespaces, bridges, portmap rules and cgroups.

    .venv/bin/python bench/cri.py [-n 20] [--pods 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "src"), REPO]

from pull import unmount_under  # noqa: E402 - bench/ is on sys.path: a sibling
from tests.integration.corrald import (  # noqa: E402 - the test harness's corrald
    BUSYBOX,
    Corrald,
    cni_conflist,
    kill_pids,
    remove_cgroup_tree,
    short_base,
)

from corral.images.layout import build_image, write_archive  # noqa: E402

PAUSE = "corral.local/pause:1"
PAUSE_ARGS = ["sleep", "2147483"]       # containerd stops sandboxes with SIGKILL
PAYLOAD_ARGS = ["sleep", "3600"]        # the memory phase's containers
STEPS = ("run_pod", "create", "start", "exited", "stop_pod", "remove_pod")
RPC_TIMEOUT = 60.0
SHIM_SOCKET_DIR = "/run/containerd/s"  # containerd 1.6's, whatever its root and state
SHARED_CNI_CHAINS = ("CNI-FORWARD", "CNI-ADMIN")  # the firewall plugin's, kept
# Plugins containerd does not need for CRI with overlayfs and runc v2.
CONTAINERD_DISABLED = [
    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.native",
    "io.containerd.internal.v1.opt", "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
]


class BenchError(Exception):
    """A daemon could not be set up or failed a step; the message says which and why."""


# ---------------------------------------------------------------- processes


def process_table() -> dict[int, tuple[int, str]]:
    """pid → (ppid, cmdline joined by spaces), for every process now."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        table[int(name)] = (ppid, cmdline)
    return table


def with_descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found = {pid for pid in roots if pid in table}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- host state we may leave


def portmap_rules(network: str) -> list[tuple[str, str]]:
    """(table, rule) of the iptables rules a CNI plugin tagged with this network's name."""
    rules = []
    for table in ("nat", "filter"):
        saved = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True)
        rules += [(table, line) for line in saved.stdout.splitlines()
                  if line.startswith("-A ") and f'name: \\"{network}\\"' in line]
    return rules


def remove_portmap_rules(network: str) -> None:
    """Delete rules tagged with the network, then the per-pod chains they jumped to."""
    chains = set()
    for table, rule in portmap_rules(network):
        words = rule.split()
        if "-j" in words:
            target = words[words.index("-j") + 1]
            if target.startswith("CNI-") and target not in SHARED_CNI_CHAINS \
                    and not target.startswith("CNI-HOSTPORT-"):
                chains.add((table, target))  # a per-pod chain (CNI-DN-…, CNI-…)
        subprocess.run(["sh", "-c", f"iptables -t {table} -D {rule[3:]}"],
                       capture_output=True)
    for table, chain in chains:
        subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


# ---------------------------------------------------------------- the two daemons


class Daemon:
    """What the bench needs of a CRI daemon; subclasses start it and know its processes."""

    name = ""
    bridge = ""
    base: Path
    runtime: api_pb2_grpc.RuntimeServiceStub

    def cgroup_parent(self) -> str:
        return f"/corral-bench-{os.getpid()}-{self.name}"

    def network(self) -> str:
        return f"{self.bridge}-net"

    def version(self) -> str:
        reply = self.runtime.Version(api_pb2.VersionRequest(), timeout=RPC_TIMEOUT)
        return f"{reply.runtime_name} {reply.runtime_version}"

    def overhead_roots(self, table: dict[int, tuple[int, str]]) -> set[int]:
        """The daemon, its shims and helpers whose trees belong to the runtime."""
        raise NotImplementedError

    def overhead_pids(self) -> tuple[set[int], set[int]]:
        """(everything the runtime runs but the containers' own processes, those processes)."""
        table = process_table()
        pids = with_descendants(self.overhead_roots(table), table)
        payloads = {pid for pid in pids if table[pid][1].split() == PAYLOAD_ARGS}
        return pids - payloads, payloads

    def remove_all_pods(self) -> None:
        for pod in self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(),
                                               timeout=RPC_TIMEOUT).items:
            self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                        timeout=RPC_TIMEOUT)
            self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(
                pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)

    def log_tail(self) -> str:
        raise NotImplementedError


class BenchCorrald(Daemon, Corrald):
    """The test harness's corrald, logging at warning level (debug logs cost time)."""

    name = "corrald"

    def __init__(self, base: Path, bridge: str, subnet: str):
        super().__init__(base, bridge=bridge, subnet=subnet,
                         pod_cgroup_parent=self.cgroup_parent())

    def start(self, timeout: float = 30, log_level: str = "warning") -> None:
        ready_r, ready_w = os.pipe()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "corral.daemon.main", "--config", str(self.config),
                 "--root", str(self.root), "--state", str(self.state),
                 "--log-level", log_level, "--ready-fd", str(ready_w)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w,))
        os.close(ready_w)
        line = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not line.endswith(b"\n"):
                chunk = os.read(ready_r, 64)
                if not chunk:
                    break
                line += chunk
        finally:
            os.close(ready_r)
        if line != b"ready\n":
            raise BenchError(f"corrald did not start:\n{self.log()}")
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)

    def overhead_roots(self, table: dict[int, tuple[int, str]]) -> set[int]:
        # The zygote is corrald's child; shims are forked from it and reparented away.
        return {self.process.pid, *self.shim_pids()}

    def log_tail(self) -> str:
        return self.log()[-1500:]

    def stop(self) -> list[str]:
        """Pods through CRI, then the harness's cleanup; returns what was left behind."""
        self.cleanup()  # pods, corrald, shims, mounts, bridge, the base dir
        return remove_cgroup_tree(self.cgroup_parent())


class Containerd(Daemon):
    """containerd 1.6 with its CRI plugin and runc v2 shims, nothing of it in the host's paths
    but the shims' sockets (containerd 1.6 puts them in /run/containerd/s, by a hash of our
    socket and the container's ID)."""

    name = "containerd"

    def __init__(self, base: Path, bridge: str, subnet: str):
        self.base = base
        self.bridge = bridge
        self.socket = str(base / "containerd.sock")
        self.log_path = base / "containerd.log"
        self.process: subprocess.Popen | None = None
        self.channel = None
        (base / "cni").mkdir(parents=True, exist_ok=True)
        (base / "cni" / "10-test.conflist").write_text(
            json.dumps(cni_conflist(bridge, subnet, str(base / "ipam"))))
        disabled = ", ".join(f'"{p}"' for p in CONTAINERD_DISABLED)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (base / "config.toml").write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [{disabled}]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[{cri}]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "runc"
        Root = "{base}/runc"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{base}/cni"
""")

    def start(self, archives: list[str], timeout: float = 30) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(self.base / "config.toml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise BenchError(f"containerd did not start:\n{self.log_tail()}") from None
        for archive in archives:
            done = subprocess.run(["ctr", "-a", self.socket, "-n", "k8s.io", "images",
                                   "import", archive], capture_output=True, text=True)
            if done.returncode != 0:
                raise BenchError(f"ctr images import {archive}: {done.stderr.strip()}")
        images = api_pb2_grpc.ImageServiceStub(self.channel)
        for ref in (BUSYBOX, PAUSE):  # present, so the CRI plugin never tries to pull them
            if not images.ImageStatus(api_pb2.ImageStatusRequest(
                    image=api_pb2.ImageSpec(image=ref)), timeout=RPC_TIMEOUT).HasField("image"):
                raise BenchError(f"containerd: {ref} missing after import")
        deadline = time.monotonic() + timeout
        while not all(c.status for c in self.runtime.Status(
                api_pb2.StatusRequest(), timeout=RPC_TIMEOUT).status.conditions):
            if time.monotonic() > deadline:
                raise BenchError("containerd: RuntimeReady/NetworkReady never became true")
            time.sleep(0.1)

    def shim_pids(self, table: dict[int, tuple[int, str]]) -> set[int]:
        return {pid for pid, (_, cmdline) in table.items()
                if "containerd-shim-runc-v2" in cmdline
                and f"-address {self.socket} " in cmdline + " "}

    def overhead_roots(self, table: dict[int, tuple[int, str]]) -> set[int]:
        # runc's container inits are reparented to the shim (a subreaper): pause and payload.
        return {self.process.pid, *self.shim_pids(table)}

    def remove_shim_sockets(self) -> None:
        """A shim that was killed leaves its socket in /run/containerd/s; the task's `address`
        file in our state dir names it."""
        tasks = self.base / "state" / "io.containerd.runtime.v2.task"
        for address in tasks.glob("*/*/address"):
            path = address.read_text().strip().removeprefix("unix://")
            if path.startswith(SHIM_SOCKET_DIR + "/"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> list[str]:
        """Pods through CRI, then by hand whatever is left; returns what could not go."""
        if self.running():
            try:
                self.remove_all_pods()
            except grpc.RpcError:
                pass
        table = process_table()
        shims = self.shim_pids(table)
        ours = with_descendants(shims, table)
        if self.channel is not None:
            self.channel.close()
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_pids(ours)
        left = remove_cgroup_tree(self.cgroup_parent())
        self.remove_shim_sockets()
        unmount_under(str(self.base))
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.base)], capture_output=True)
        return left


# ---------------------------------------------------------------- CRI requests


def pod_config(daemon, name: str) -> api_pb2.PodSandboxConfig:
    """A kubelet-like pod: log directory, cgroup parent, its own PID namespace."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=f"uid-{name}"),
        hostname=name, log_directory=str(daemon.base / "logs" / name))
    config.linux.cgroup_parent = daemon.cgroup_parent()
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    return config


def container_config(args: list[str]) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"),
                                   image=api_pb2.ImageSpec(image=BUSYBOX),
                                   command=args[:1], args=args[1:], log_path="c.log")


def run_pod(daemon, name: str, args: list[str],
            runtime_handler: str = "") -> tuple[str, str, dict[str, float]]:
    """RunPodSandbox, CreateContainer, StartContainer: (pod ID, container ID, ms per step)."""
    rt = daemon.runtime
    times: dict[str, float] = {}
    mark = time.perf_counter()
    config = pod_config(daemon, name)
    pod_id = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(
        config=config, runtime_handler=runtime_handler), timeout=RPC_TIMEOUT).pod_sandbox_id
    times["run_pod"], mark = lap(mark)
    container_id = rt.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config(args), sandbox_config=config),
        timeout=RPC_TIMEOUT).container_id
    times["create"], mark = lap(mark)
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id),
                      timeout=RPC_TIMEOUT)
    times["start"], mark = lap(mark)
    return pod_id, container_id, times


def lap(mark: float) -> tuple[float, float]:
    now = time.perf_counter()
    return (now - mark) * 1000, now


def pod_life(daemon, index: int) -> dict[str, float]:
    """One pod's whole life, in ms per step and in total."""
    rt = daemon.runtime
    pod_id, container_id, times = run_pod(daemon, f"lat{index}", ["true"])
    mark = time.perf_counter()
    deadline = time.monotonic() + RPC_TIMEOUT
    while rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id),
                             timeout=RPC_TIMEOUT).status.state != api_pb2.CONTAINER_EXITED:
        if time.monotonic() > deadline:
            raise BenchError(f"container {container_id[:12]} never exited")
        time.sleep(0.002)
    times["exited"], mark = lap(mark)
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT)
    times["stop_pod"], mark = lap(mark)
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                        timeout=RPC_TIMEOUT)
    times["remove_pod"], mark = lap(mark)
    times["total"] = sum(times[s] for s in STEPS)
    return times


def memory(daemon, pods: int) -> dict[str, float]:
    """PSS with `pods` pods each running `sleep 3600`; the pods are removed afterwards."""
    rt = daemon.runtime
    try:
        containers = [run_pod(daemon, f"mem{i}", PAYLOAD_ARGS)[1] for i in range(pods)]
        for container_id in containers:
            status = rt.ContainerStatus(api_pb2.ContainerStatusRequest(
                container_id=container_id), timeout=RPC_TIMEOUT).status
            if status.state != api_pb2.CONTAINER_RUNNING:
                raise BenchError(f"container {container_id[:12]} is not running: "
                                 f"{api_pb2.ContainerState.Name(status.state)}")
        time.sleep(2)  # let start-up garbage settle
        pids, payloads = daemon.overhead_pids()
        if len(payloads) != pods:
            raise BenchError(f"found {len(payloads)} container processes under the shims, "
                             f"not {pods}: the process accounting is wrong")
        total = sum(pss_kib(pid) for pid in pids)
        own = pss_kib(daemon.process.pid)
    finally:
        daemon.remove_all_pods()
    return {"pods": pods, "processes": len(pids), "total_kib": total, "daemon_kib": own,
            "per_pod_kib": total / pods, "per_pod_without_daemon_kib": (total - own) / pods}


# ---------------------------------------------------------------- reporting


def summarize(daemons, latencies, memories, errors, versions, opts) -> dict:
    report = {"iterations": opts.iterations, "pods": opts.pods, "daemons": {}}
    base = latencies.get("containerd")
    base_median = statistics.median(t["total"] for t in base) if base else None
    for daemon in daemons:
        runs = latencies.get(daemon.name, [])
        entry: dict = {"version": versions.get(daemon.name, ""),
                       "error": errors.get(daemon.name), "pods_lived": len(runs)}
        if runs:
            totals = sorted(t["total"] for t in runs)
            median = statistics.median(totals)
            entry["life_ms"] = {
                "median": round(median, 1), "p90": round(percentile(totals, 0.9), 1),
                "min": round(totals[0], 1), "max": round(totals[-1], 1)}
            entry["vs_containerd"] = round(median / base_median, 3) if base_median else None
            entry["step_median_ms"] = {s: round(statistics.median(t[s] for t in runs), 1)
                                       for s in STEPS}
        if daemon.name in memories:
            entry["memory"] = {k: round(v, 1) if isinstance(v, float) else v
                               for k, v in memories[daemon.name].items()}
        report["daemons"][daemon.name] = entry
    return report


def percentile(ordered: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def format_table(report: dict) -> str:
    header = (f"{'daemon':<12}{'pods':>5}{'median':>8}{'p90':>8}{'min':>8}{'max':>8}"
              f"{'vs ctrd':>9}  |" + "".join(f"{s:>11}" for s in STEPS))
    lines = [f"pod lifecycle, busybox `true`, {report['iterations']} pods each (ms; step "
             "columns are medians): RunPodSandbox → CreateContainer → StartContainer → "
             "EXITED → StopPodSandbox → RemovePodSandbox", header, "-" * len(header)]
    for name, entry in report["daemons"].items():
        row = f"{name:<12}{entry['pods_lived']:>5}"
        if "life_ms" in entry:
            life, steps = entry["life_ms"], entry["step_median_ms"]
            ratio = f"{entry['vs_containerd']:.2f}x" if entry["vs_containerd"] else "-"
            row += (f"{life['median']:>8.1f}{life['p90']:>8.1f}{life['min']:>8.1f}"
                    f"{life['max']:>8.1f}{ratio:>9}  |"
                    + "".join(f"{steps[s]:>11.1f}" for s in STEPS))
        lines.append(row)
    lines += ["", f"memory with {report['pods']} pods running `sleep 3600` (PSS of daemon + "
              "shims + their helpers; containers' own processes not counted)",
              f"{'daemon':<12}{'per pod':>10}{'vs ctrd':>9}{'w/o daemon':>12}"
              f"{'daemon':>10}{'total':>10}{'procs':>7}", "-" * 70]
    ctrd = report["daemons"].get("containerd", {}).get("memory")
    for name, entry in report["daemons"].items():
        mem = entry.get("memory")
        if mem:
            ratio = f"{mem['per_pod_kib'] / ctrd['per_pod_kib']:.2f}x" if ctrd else "-"
            lines.append(f"{name:<12}{mib(mem['per_pod_kib']):>10}{ratio:>9}"
                         f"{mib(mem['per_pod_without_daemon_kib']):>12}"
                         f"{mib(mem['daemon_kib']):>10}{mib(mem['total_kib']):>10}"
                         f"{mem['processes']:>7}")
    lines.append("(MiB)")
    for name, entry in report["daemons"].items():
        lines.append(f"  {name}: {entry['version']}")
        if entry["error"]:
            lines.append(f"  {name} FAILED: {entry['error']}")
    return "\n".join(lines)


def mib(kib: float) -> str:
    return f"{kib / 1024:.2f}"


def tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].strip() if out else "?"


# ---------------------------------------------------------------- both daemons (also sandboxes.py)


def start_side_by_side(corrald: BenchCorrald,
                       containerd: Containerd) -> tuple[dict[str, str], dict[str, Exception]]:
    """Import busybox into both (and containerd's pause image), start both daemons.
    Returns (version by daemon name, the error of each daemon that did not start)."""
    corrald.import_busybox()  # builds busybox.tar in corrald's base: containerd gets it too
    pause = str(containerd.base / "pause.tar")
    write_archive(build_image(str(corrald.base / "busybox-rootfs"), PAUSE, cmd=PAUSE_ARGS),
                  pause)
    versions: dict[str, str] = {}
    failures: dict[str, Exception] = {}
    for daemon, start in ((corrald, lambda: corrald.start()),
                          (containerd, lambda: containerd.start(
                              [str(corrald.base / "busybox.tar"), pause]))):
        try:
            start()
            versions[daemon.name] = daemon.version()
        except (BenchError, grpc.RpcError, OSError) as e:
            failures[daemon.name] = e
    if "containerd" in versions:
        versions["containerd"] += f" + {tool_version(['runc', '--version'])}"
    return versions, failures


def stop_daemons(daemons) -> dict[str, list[str]]:
    """Stop each daemon with everything of it, and its portmap rules: what each left behind."""
    leftovers = {}
    for daemon in daemons:
        leftovers[daemon.name] = daemon.stop()
        remove_portmap_rules(daemon.network())
        if portmap_rules(daemon.network()):
            leftovers[daemon.name].append(f"iptables rules of {daemon.network()}")
    return leftovers


# ---------------------------------------------------------------- main


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--iterations", type=int, default=20,
                        help="pod lives per daemon (default 20)")
    parser.add_argument("--pods", type=int, default=50,
                        help="running pods for the memory measurement (default 50; 0: skip)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cri.py: needs root (pods, mounts, bridges)", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)  # cleanup runs, also when started with SIGINT ignored
    daemons: list = []
    latencies: dict[str, list[dict[str, float]]] = {}
    memories: dict[str, dict] = {}
    errors: dict[str, str] = {}
    versions: dict[str, str] = {}
    leftovers: dict[str, list[str]] = {}
    daemons_alive: list = []
    interrupted = False

    def fail(daemon, error: Exception) -> None:
        message = error.details() if isinstance(error, grpc.RpcError) else str(error)
        errors[daemon.name] = f"{message}\n{daemon.log_tail()}"
        if daemon in daemons_alive:
            daemons_alive.remove(daemon)

    try:
        corrald = BenchCorrald(short_base(), "corralb0", "10.99.50.0/24")
        daemons.append(corrald)
        containerd = Containerd(short_base(), "corralb1", "10.99.51.0/24")
        daemons.append(containerd)
        started, failures = start_side_by_side(corrald, containerd)
        versions.update(started)
        for daemon in daemons:
            daemons_alive.append(daemon)
            if daemon.name in failures:
                fail(daemon, failures[daemon.name])
        for daemon in list(daemons_alive):  # warm-up: the first pod pays for unpacking
            try:
                pod_life(daemon, -1)
                latencies[daemon.name] = []
            except (BenchError, grpc.RpcError) as e:
                fail(daemon, e)
        for i in range(opts.iterations):
            for daemon in daemons_alive if i % 2 == 0 else daemons_alive[::-1]:
                try:
                    latencies[daemon.name].append(pod_life(daemon, i))
                except (BenchError, grpc.RpcError) as e:
                    fail(daemon, e)
        if opts.pods > 0:
            for daemon in list(daemons_alive):
                try:
                    memories[daemon.name] = memory(daemon, opts.pods)
                except (BenchError, grpc.RpcError) as e:
                    fail(daemon, e)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leftovers.update(stop_daemons(daemons))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    for name, left in leftovers.items():
        if left:
            print(f"cri.py: {name} left behind: {', '.join(left)}", file=sys.stderr)
    if interrupted:
        return 130
    report = summarize(daemons, latencies, memories, errors, versions, opts)
    print(json.dumps(report, indent=2) if opts.json else format_table(report))
    return 0 if not errors and not any(leftovers.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
