"""The `vm` handler's guest side with real QEMU: a micro-VM, its agent, containers in it.

One VM is shared by the tests that leave it alive (module fixture); the
tests that end a VM (panic, shutdown) or time boots boot their own.  Each
container's bundle is a busybox rootfs in the pod's bundle directory, which
the guest mounts (9p) at the same path.  Every QEMU is stopped and reaped
in the fixtures, also when a test fails.

Numbers (boot to ping, first output, idle PSS) are printed: run with -s.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from corral.images.busybox import build_bundle, build_rootfs
from corral.shim.protocol import ShimClient, ShimError
from corral.vm import initramfs, kernel, qemu
from corral.vm.client import AgentClient
from corral.vm.errors import AgentError, AgentGone
from corral.vm.pod import PodVm

pytestmark = pytest.mark.root

GUEST_KERNEL_PREFIX = "6."  # the guest boots Debian's kernel, whatever the host runs


@pytest.fixture(scope="module")
def cache_dir(workdir):
    return os.path.join(workdir, "cache")


@pytest.fixture(scope="module")
def base_rootfs(workdir):
    path = os.path.join(workdir, "rootfs")
    build_rootfs(path)
    return path


class Pod:
    """A booted VM with its bundle directory, and helpers to run containers in it."""

    def __init__(self, workdir: str, cache_dir: str, base_rootfs: str, name: str,
                 fstype: str = "9p"):
        self.dir = os.path.join(workdir, name)
        self.bundles = os.path.join(self.dir, "bundles")
        os.makedirs(self.bundles)
        self.base_rootfs = base_rootfs
        self.vm = PodVm(cache_dir=cache_dir, vm_dir=os.path.join(self.dir, "vm"),
                        agent_socket=qemu.socket_path(self.dir, "agent.sock"),
                        bundles_dir=self.bundles, fstype=fstype)
        self.ping = self.vm.boot()

    @property
    def agent(self) -> AgentClient:
        return self.vm.client

    def bundle(self, args: list[str], edit=None) -> tuple[str, str]:
        cid = f"c{uuid.uuid4().hex[:10]}"
        path = os.path.join(self.bundles, cid)
        build_bundle(path, args, terminal=False, rootfs_from=self.base_rootfs, edit=edit)
        return cid, path

    def start(self, args: list[str], edit=None) -> str:
        cid, path = self.bundle(args, edit)
        self.agent.call("create", container=cid, bundle=path)
        self.agent.call("start", container=cid)
        return cid

    def run(self, args: list[str], edit=None, timeout: float = 60) -> tuple[int, str, str, dict]:
        """A container to its end: exit code, stdout, stderr, the exit event."""
        cid = self.start(args, edit)
        exit_event, out = self.collect(cid, None, timeout)
        self.agent.call("delete", container=cid)
        return exit_event["exit_code"], out["stdout"], out["stderr"], exit_event

    def collect(self, cid: str, exec_id: str | None, timeout: float = 60):
        """Output until the process's exit and both streams' ends."""
        out = {"stdout": b"", "stderr": b""}
        ended: set[str] = set()
        exit_event = None

        def mine(e: dict) -> bool:
            return e.get("container") == cid and e.get("exec") == exec_id

        deadline = time.monotonic() + timeout
        while exit_event is None or len(ended) < 2:
            event = self.agent.wait_event(mine, max(0.1, deadline - time.monotonic()))
            if event["event"] == "exit":
                exit_event = event
            elif event.get("eof"):
                ended.add(event["stream"])
            else:
                out[event["stream"]] += base64.b64decode(event["data"])
        return exit_event, {k: v.decode() for k, v in out.items()}

    def stop(self) -> None:
        self.vm.stop()


@pytest.fixture(scope="module")
def pod(workdir, cache_dir, base_rootfs):
    p = Pod(workdir, cache_dir, base_rootfs, "shared")
    print(f"\nboot to agent ping: {p.vm.boot_seconds:.2f}s ({p.vm.accelerator.name}"
          f"{'; ' + p.vm.warning if p.vm.warning else ''})")
    yield p
    p.stop()
    assert p.vm.vm.poll() is not None


@pytest.fixture
def own_pod(workdir, cache_dir, base_rootfs):
    pods = []

    def boot(name: str, fstype: str = "9p") -> Pod:
        pods.append(Pod(workdir, cache_dir, base_rootfs, f"{name}-{uuid.uuid4().hex[:6]}",
                        fstype))
        return pods[-1]

    yield boot
    for p in pods:
        p.stop()
        assert p.vm.vm.poll() is not None
        assert not p.vm.vm._daemons  # virtiofsd stopped with its VM


def test_the_guest_images_are_made_once_and_atomically(tmp_path):
    guest = kernel.find_kernel()
    path = kernel.vmlinux(guest, str(tmp_path))
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    made = os.stat(path).st_mtime_ns
    assert kernel.vmlinux(guest, str(tmp_path)) == path and os.stat(path).st_mtime_ns == made
    assert path.endswith(guest.version)  # keyed by the kernel's version
    initrd = initramfs.initramfs(guest, str(tmp_path))
    assert initramfs.initramfs(guest, str(tmp_path)) == initrd
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp files left
    listing = subprocess.run(["/bin/busybox", "cpio", "-t"], stdin=open(initrd, "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert {"init", "busybox", "dev/console", "modules/base.list", "modules/9p.ko",
            "modules/virtio_console.ko", "modules/virtio_net.ko"} <= set(listing)
    # only what the guest needs: no module beyond the groups and their dependencies
    assert len([n for n in listing if n.endswith(".ko")]) < 25
    # the modules' signatures are left out (the guest's kernel would check them, emulated)
    with open(os.path.join(guest.modules_dir, "kernel/fs/9p/9p.ko"), "rb") as f:
        signed = f.read().endswith(initramfs.SIGNATURE_MAGIC)
    with open(initrd, "rb") as f:
        image = f.read()
    assert initramfs.SIGNATURE_MAGIC not in image
    if signed:  # Debian's are
        assert initramfs.without_signature(open(os.path.join(
            guest.modules_dir, "kernel/fs/9p/9p.ko"), "rb").read()) in image


def test_sockets_of_a_long_vm_directory_stay_within_sun_path():
    deep = "/var/lib/corral/state/pods/" + "a" * 64 + "/shim/vm"
    paths = {qemu.socket_path(deep, name) for name in ("agent.sock", "vfs-usr.sock")}
    assert len(paths) == 2 and all(len(p) <= qemu.SOCKET_MAX for p in paths)
    assert all(p.startswith(qemu.SHORT_SOCKET_DIR + "/") for p in paths)
    assert qemu.socket_path("/tmp/vm", "agent.sock") == "/tmp/vm/agent.sock"


def test_the_accelerator_is_decided_by_a_probe_boot(tmp_path, cache_dir, pod):
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm: TCG without a probe")
    started = time.monotonic()
    first = qemu.choose_accelerator(str(tmp_path), pod.vm.spec.kernel, pod.vm.spec.initrd)
    probe_seconds = time.monotonic() - started
    started = time.monotonic()
    again = qemu.choose_accelerator(str(tmp_path), pod.vm.spec.kernel, pod.vm.spec.initrd)
    assert time.monotonic() - started < 0.5 and again.to_json() == first.to_json()  # cached
    print(f"\naccelerator: {first.name} (probe {probe_seconds:.2f}s) {first.warning}")
    if os.path.exists("/sys/module/kvm_pvm"):  # this host: KVM_CREATE_VM works, boots do not
        assert first.name == "tcg" and "PVM" in first.warning


def test_the_agent_answers_from_the_guest_kernel(pod):
    assert pod.ping["ok"] and pod.ping["pid"] == 1  # the agent is the guest's PID 1
    assert pod.ping["kernel"].startswith(GUEST_KERNEL_PREFIX)
    pod.agent.call("ping")  # after the agent's warm-up (its imports once idle)
    started = time.monotonic()
    for _ in range(20):
        pod.agent.call("ping")
    print(f"\nagent round trip: {(time.monotonic() - started) / 20 * 1000:.2f} ms")


def test_uname_in_a_container_is_the_guest_kernel(pod):
    code, out, _, _ = pod.run(["uname", "-r"])
    assert code == 0
    assert out.strip() == pod.ping["kernel"]
    assert out.strip() != os.uname().release  # the host runs another kernel


def test_a_containers_output_and_exit_code_come_back(pod):
    started = time.monotonic()
    cid, path = pod.bundle(["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    pod.agent.call("create", container=cid, bundle=path)
    pod.agent.call("start", container=cid)
    first = pod.agent.wait_event(lambda e: e.get("container") == cid
                                 and e["event"] == "output", 30)
    print(f"\ncontainer create+start to first output: {time.monotonic() - started:.2f}s")
    pod.agent._events.insert(0, first)
    exit_event, out = pod.collect(cid, None)
    assert exit_event["exit_code"] == 3 and exit_event["reason"] == ""
    assert out == {"stdout": "hello\n", "stderr": "oops\n"}
    state = pod.agent.call("state", container=cid)
    assert state["status"] == "stopped" and state["exit"]["exit_code"] == 3
    pod.agent.call("delete", container=cid)
    with pytest.raises(AgentError) as e:
        pod.agent.call("state", container=cid)
    assert e.value.kind == "not_found"


def test_exec_with_output_and_stdin(pod):
    cid = pod.start(["sleep", "600"])
    try:
        process = {"args": ["sh", "-c", "echo out; echo err >&2; exit 5"], "cwd": "/",
                   "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
        pod.agent.call("exec", container=cid, exec="e1", process=process)
        exit_event, out = pod.collect(cid, "e1")
        assert exit_event["exit_code"] == 5
        assert out == {"stdout": "out\n", "stderr": "err\n"}

        cat = dict(process, args=["sh", "-c", "cat; echo done"])
        pod.agent.call("exec", container=cid, exec="e2", process=cat, stdin=True)
        pod.agent.notify("stdin", container=cid, exec="e2",
                         data=base64.b64encode(b"line one\nline two\n").decode())
        pod.agent.call("close_stdin", container=cid, exec="e2")
        exit_event, out = pod.collect(cid, "e2")
        assert exit_event["exit_code"] == 0
        assert out["stdout"] == "line one\nline two\ndone\n"
    finally:
        pod.agent.call("delete", container=cid, force=True)


def test_kill_ends_a_container_with_137(pod):
    cid = pod.start(["sleep", "600"])
    assert pod.agent.call("state", container=cid)["status"] == "running"
    pod.agent.call("kill", container=cid, signal=9)
    exit_event, _ = pod.collect(cid, None, 30)
    assert exit_event["exit_code"] == 137 and exit_event["reason"] == ""
    pod.agent.call("delete", container=cid)


def test_stats_and_oom_kill_in_the_guest_cgroup(pod):
    def limited(config):
        config["linux"]["resources"]["memory"] = {"limit": 16 << 20, "swap": 16 << 20}

    cid = pod.start(["sleep", "600"], limited)
    stats = pod.agent.call("stats", container=cid)["stats"]
    assert stats["memory"]["usage"]["limit"] == 16 << 20
    assert stats["pids"]["current"] >= 1
    pod.agent.call("delete", container=cid, force=True)

    # dd's 64 MiB buffer, filled from /dev/zero, is over the 16 MiB limit
    code, _, _, exit_event = pod.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M",
                                      "count=1"], limited)
    assert code == 137 and exit_event["reason"] == "OOMKilled"


def test_the_guests_processes_and_mounts_are_not_the_hosts(pod):
    def host_pid_namespace(config):  # no PID namespace of its own: the guest's is seen
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"]
                                         if ns["type"] != "pid"]

    script = ("cmdlines() { for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done; }; "
              "cat /proc/1/cmdline | tr '\\0' ' '; echo; cmdlines | grep -c .; "
              "cmdlines | grep -c '[p]ytest'; cat /proc/1/mounts")
    code, out, _, _ = pod.run(["sh", "-c", script], host_pid_namespace)
    assert code == 0
    cmdline, user_processes, pytests, *mounts = out.splitlines()
    assert "corral.vm.agent" in cmdline  # PID 1 is the agent, not the host's init
    # the agent, this shell and its pipeline; the host runs pytest, QEMU, ...
    assert int(user_processes) < 10 and pytests == "0"
    fstypes = {line.split()[0]: line.split()[2] for line in mounts}
    assert fstypes.get("usr") == "9p"   # the host's /usr, shared
    with open("/proc/self/mounts") as f:
        host_sources = {line.split()[0] for line in f if line.startswith("/dev/")}
    assert host_sources and not host_sources & set(fstypes)  # no host block device


def test_the_agent_survives_the_host_side_going_away(pod):
    cid = pod.start(["sh", "-c", "sleep 2; echo while-away"])
    pod.agent.close()  # the host side is gone: the port reads EOF in the guest
    time.sleep(2.5)    # the container writes meanwhile
    pod.vm.client = AgentClient(pod.vm.spec.agent_socket)
    pod.agent.accept(10.0)  # QEMU reconnects (reconnect=1)
    assert pod.agent.call("ping", timeout=30)["pid"] == 1
    exit_event, out = pod.collect(cid, None, 30)  # what it said while nobody listened
    assert exit_event["exit_code"] == 0 and out["stdout"] == "while-away\n"
    pod.agent.call("delete", container=cid)


def test_idle_vm_pss(pod):
    time.sleep(1)
    pss = pod.vm.vm.pss_kib()
    print(f"\nidle VM PSS (QEMU, smaps_rollup): {pss / 1024:.0f} MiB")
    assert pss < 400 << 10


def test_virtiofs_shares(own_pod):
    # a directory as long as corrald's pods' (virtiofsd's sockets go elsewhere then)
    pod = own_pod("vfs-" + "d" * 90, "virtiofs")
    started = time.monotonic()
    code, out, _, _ = pod.run(["sh", "-c", "echo written > /tmp/x && cat /tmp/x; "
                                           "grep -c virtiofs /proc/mounts"],
                              lambda c: c.update(root={"path": "rootfs", "readonly": False}))
    print(f"\nvirtiofs: boot to ping {pod.vm.boot_seconds:.2f}s, a container's run "
          f"{time.monotonic() - started:.2f}s")
    assert code == 0 and out.splitlines()[0] == "written"
    with open("/proc/self/mounts") as f:
        assert "virtiofs" not in f.read()
    code, out, _, _ = pod.run(["cat", "/proc/1/mounts"], _without_pid_namespace)
    fstypes = {line.split()[1]: line.split()[2] for line in out.splitlines()}
    assert fstypes["/usr"] == "virtiofs" and fstypes[pod.bundles] == "virtiofs"
    assert len([p for p in pod.vm.vm._daemons if p.poll() is None]) == 3


def _without_pid_namespace(config):  # the guest's PID namespace: its /proc/1 is the agent
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"]
                                     if ns["type"] != "pid"]


def test_a_kernel_panic_ends_the_vm(own_pod):
    pod = own_pod("panic")

    def privileged(config):
        config["linux"]["maskedPaths"] = []
        config["linux"]["readonlyPaths"] = []
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/proc"]
        config["mounts"].append({"destination": "/proc", "type": "proc", "source": "proc"})

    pod.start(["sh", "-c", "echo c > /proc/sysrq-trigger"], privileged)
    pod.agent.wait_event(lambda e: e["event"] == "disconnected", 60)
    assert pod.agent.closed
    assert pod.vm.vm.wait(30) is not None  # QEMU exited (panic=-1, -no-reboot)
    console = pod.vm.vm.console()
    assert "sysrq: Trigger a crash" in console and "Kernel panic" in console
    with pytest.raises(AgentGone):
        pod.agent.call("ping")


def test_shutdown_ends_the_vm(own_pod):
    pod = own_pod("shutdown")
    pod.start(["sleep", "600"])
    pod.agent.call("shutdown", timeout=30)
    assert pod.vm.vm.wait(30) == 0
    pod.agent.wait_event(lambda e: e["event"] == "disconnected", 10)


# --- the vm runtime handler, through a real shim process ------------------------------------
class ShimPod:
    """A shim (python -m corral.shim) whose pod runs under the vm handler, in a netns of
    its own wired to the host by a veth (the pod side named eth0, as CNI names it)."""

    SUBNET = "10.233.71"

    def __init__(self, workdir: str, cache_dir: str, base_rootfs: str):
        suffix = uuid.uuid4().hex[:6]
        self.pod_id = f"cvmg{suffix}"
        self.dir = os.path.join(workdir, self.pod_id)
        self.containers = os.path.join(self.dir, "containers")
        self.base_rootfs = base_rootfs
        self.netns_name = f"cvmg-{suffix}"
        self.netns = f"/run/netns/{self.netns_name}"
        self.veth = f"cvmgh{suffix[:4]}"
        self.shim_pid = 0
        self.qemu_pid = 0
        self.mounts: list[str] = []
        os.makedirs(self.containers)
        with open(os.path.join(self.dir, "hosts"), "w") as f:
            f.write(f"127.0.0.1 localhost\n{self.SUBNET}.2 vmpod\n")
        for argv in (["ip", "netns", "add", self.netns_name],
                     ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
                      "netns", self.netns_name],
                     ["ip", "addr", "add", f"{self.SUBNET}.1/24", "dev", self.veth],
                     ["ip", "link", "set", self.veth, "up"],
                     ["ip", "-n", self.netns_name, "addr", "add", f"{self.SUBNET}.2/24", "dev",
                      "eth0"],
                     ["ip", "-n", self.netns_name, "link", "set", "eth0", "up"],
                     ["ip", "-n", self.netns_name, "route", "add", "default", "via",
                      f"{self.SUBNET}.1"]):
            subprocess.run(argv, check=True, capture_output=True)
        shim = subprocess.run([sys.executable, "-m", "corral.shim", "--id", self.pod_id,
                               "--dir", os.path.join(self.dir, "shim"),
                               "--socket", os.path.join(self.dir, "s.sock")],
                              capture_output=True, text=True, timeout=30)
        assert shim.stdout.startswith("ready "), shim.stderr
        self.shim_pid = int(shim.stdout.split()[1])
        self.socket = os.path.join(self.dir, "s.sock")
        reply = self.call("start_pod", runtime={"type": "vm", "name": "vm",
                                                "options": {"cache_dir": cache_dir,
                                                            "template_dir": os.path.join(
                                                                workdir, "templates")}},
                          pod={"namespaces": {"net": self.netns}, "containers": self.containers,
                               "hostname": "vmpod"}, io_timeout=120)
        self.vm = reply["vm"]
        self.qemu_pid = self.vm["pid"]

    def call(self, op: str, io_timeout: float = 60, **arguments) -> dict:
        with ShimClient(self.socket, timeout=io_timeout) as client:
            return client.call(op, **arguments)

    def bundle(self, args: list[str]) -> tuple[str, str]:
        """A bundle as corrald writes one: the pod's namespaces joined by path (the
        handler gives the guest's instead), its /etc/hosts bind-mounted."""
        cid = f"c{uuid.uuid4().hex[:10]}"
        path = os.path.join(self.containers, cid)

        def cri_like(config):
            for ns in config["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = self.netns
                elif ns["type"] in ("ipc", "uts"):
                    ns["path"] = f"/proc/1/ns/{ns['type']}"  # stands for the pod's pins
            config["mounts"].append({"destination": "/etc/hosts", "type": "bind",
                                     "source": os.path.join(self.dir, "hosts"),
                                     "options": ["rbind", "rprivate", "ro"]})

        build_bundle(path, args, terminal=False, rootfs_from=self.base_rootfs, edit=cri_like)
        return cid, path

    def overlay_bundle(self, args: list[str]) -> tuple[str, str, str]:
        """As corrald makes one: rootfs/ an overlay mounted on the host (its upper dir)."""
        cid, path = self.bundle(args)
        shutil.rmtree(os.path.join(path, "rootfs"))
        upper, work = os.path.join(self.dir, f"{cid}-upper"), os.path.join(self.dir, f"{cid}-w")
        for d in (upper, work, os.path.join(path, "rootfs")):
            os.makedirs(d)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.base_rootfs},upperdir={upper},workdir={work}",
                        os.path.join(path, "rootfs")], check=True)
        self.mounts.append(os.path.join(path, "rootfs"))
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        config["root"]["readonly"] = False
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
        return cid, path, upper

    def run(self, args: list[str]) -> tuple[str, str]:
        cid, path = self.bundle(args)
        log = os.path.join(self.dir, f"{cid}.log")
        self.call("create", id=cid, bundle=path, log_path=log)
        self.call("start", id=cid)
        return cid, log

    def stop(self) -> None:
        if self.shim_pid and _alive(self.shim_pid):
            try:
                self.call("shutdown", force=True, io_timeout=30)
            except (ShimError, OSError):
                pass
            _wait_gone(self.shim_pid, 10)
        for pid in (self.qemu_pid, self.shim_pid):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        for mount in self.mounts:
            subprocess.run(["umount", "-l", mount], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns_name], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _log_lines(path: str) -> list[tuple[str, str]]:
    with open(path) as f:
        return [(line.split(" ", 3)[1], line.split(" ", 3)[3].rstrip("\n")) for line in f]


@pytest.fixture
def shim_pod(workdir, cache_dir, base_rootfs):
    pods = []

    def start() -> ShimPod:
        pods.append(ShimPod.__new__(ShimPod))
        try:
            ShimPod.__init__(pods[-1], workdir, cache_dir, base_rootfs)
        except BaseException:
            pods[-1].stop()
            raise
        return pods[-1]

    yield start
    for p in pods:
        p.stop()
        assert not _alive(p.qemu_pid) and not _alive(p.shim_pid)
    assert not os.path.exists(f"/run/netns/{p.netns_name}")


def test_the_vm_handler_runs_a_pod_through_the_shim(shim_pod):
    pod = shim_pod()
    assert pod.vm["kernel"] != os.uname().release and pod.vm["boot_seconds"] > 0
    cid, log = pod.run(["sh", "-c", "uname -r; hostname; cat /etc/hosts; echo oops >&2; "
                                    "exit 7"])
    reply = pod.call("wait", id=cid, timeout=60, io_timeout=90)
    assert reply["exited"] and reply["exit_code"] == 7
    lines = _log_lines(log)
    assert ("stdout", pod.vm["kernel"]) in lines and ("stdout", "vmpod") in lines
    assert ("stdout", f"{ShimPod.SUBNET}.2 vmpod") in lines  # the copied bind source
    assert ("stderr", "oops") in lines
    pod.call("delete", id=cid)

    cid, _ = pod.run(["sleep", "600"])
    done = pod.call("exec_sync", id=cid, timeout=30, io_timeout=90,
                    process={"args": ["sh", "-c", "ip -4 addr show eth0; echo err >&2; exit 4"],
                             "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
    assert done["exit_code"] == 4
    assert f"inet {ShimPod.SUBNET}.2/24" in base64.b64decode(done["stdout_base64"]).decode()
    assert base64.b64decode(done["stderr_base64"]) == b"err\n"
    stats = pod.call("stats", id=cid)["stats"]
    assert stats["pids"]["current"] >= 1
    pod.call("kill", id=cid, signal=9)
    assert pod.call("wait", id=cid, timeout=30, io_timeout=60)["exit_code"] == 137
    pod.call("delete", id=cid)


def test_the_vm_pod_has_the_pod_ip_on_the_host_network(shim_pod):
    pod = shim_pod()
    ping = subprocess.run(["/bin/busybox", "ping", "-c", "1", "-W", "5", f"{ShimPod.SUBNET}.2"],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr  # the guest answers for the pod IP
    cid, log = pod.run(["sh", "-c", "echo hello-from-the-vm | nc -l -p 8080"])
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((f"{ShimPod.SUBNET}.2", 8080), timeout=5) as conn:
                assert conn.recv(100) == b"hello-from-the-vm\n"
                break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert pod.call("wait", id=cid, timeout=30, io_timeout=60)["exit_code"] == 0
    pod.call("delete", id=cid)


def test_qemu_killed_ends_every_container_of_the_pod(shim_pod):
    pod = shim_pod()
    first, _ = pod.run(["sleep", "600"])
    second, _ = pod.run(["sleep", "600"])
    os.kill(pod.qemu_pid, signal.SIGKILL)
    for cid in (first, second):
        reply = pod.call("wait", id=cid, timeout=30, io_timeout=60)
        assert reply["exited"] and reply["exit_code"] == 137 and reply["reason"] == "VMExited"
    with pytest.raises(ShimError):
        pod.run(["true"])
    for cid in (first, second):
        pod.call("delete", id=cid)


def test_a_killed_shim_takes_its_vm_with_it(shim_pod):
    pod = shim_pod()
    pod.run(["sleep", "600"])
    os.kill(pod.shim_pid, signal.SIGKILL)
    _wait_gone(pod.qemu_pid, 10)
    assert not _alive(pod.qemu_pid)  # PR_SET_PDEATHSIG: no VM outlives its pod's shim


def test_a_rootfs_overlay_mounted_on_the_host_is_the_containers_root(shim_pod):
    pod = shim_pod()
    cid, path, upper = pod.overlay_bundle(["sh", "-c", "echo from-the-guest > /made-here; "
                                           "rm /bin/true; ls /bin/true; cat /made-here"])
    log = os.path.join(pod.dir, f"{cid}.log")
    pod.call("create", id=cid, bundle=path, log_path=log)
    pod.call("start", id=cid)
    assert pod.call("wait", id=cid, timeout=60, io_timeout=90)["exit_code"] == 0
    assert ("stdout", "from-the-guest") in _log_lines(log)
    with open(os.path.join(upper, "made-here")) as f:  # written through 9p into the upper dir
        assert f.read() == "from-the-guest\n"
    assert not os.path.exists(os.path.join(path, "rootfs", "bin", "true"))  # a whiteout
    assert os.path.exists(os.path.join(pod.base_rootfs, "bin", "true"))
    pod.call("delete", id=cid)
