"""corral.network against the real kernel and Debian's CNI plugins (bridge, host-local,
portmap, loopback, tuning): pinned namespaces, pod to pod, hostPort, teardown in every state.

Everything runs on a test-only bridge and subnet (corraltest0, 10.99.0.0/24) with its own
host-local dataDir, so the host's own networks are never touched.  After every test the
`lab` fixture tears down what is left and checks that nothing remains: no pinned netns,
no veth on the bridge, no IP allocation, no cache file, and none of the iptables rules or
chains the plugins made for the test's pods (bridge ipMasq, portmap DNAT).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from corral.network import netns as ns
from corral.network.cni import CNIError
from corral.network.manager import PodNetwork

BRIDGE = "corraltest0"
SUBNET = "10.99.0.0/24"
SUBNET_PREFIX = "10.99.0."
NETWORK = "corraltest"
BIN_DIRS = ["/usr/lib/cni"]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
SHARED_CHAINS = re.compile(r"^CNI-(HOSTPORT-|FORWARD$|ADMIN$)")  # portmap/firewall's own


def conflist(data_dir: str, *extra: dict, ip_masq: bool = True) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": ip_masq,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": data_dir,
                      "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            *extra,
        ],
    }


def run(*command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def iptables_save() -> list[str]:
    done = run("iptables-save")
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if not line.startswith("#")]


def chains_of(pod_ids: set[str]) -> set[str]:
    """The per-pod chains the plugins made: named by the rules that mention a pod's ID."""
    chains = set()
    for line in iptables_save():
        if any(pod_id in line for pod_id in pod_ids):
            chains.update(c for c in re.findall(r"(?:-j|-A) (CNI-\S+)", line)
                          if not SHARED_CHAINS.match(c))
    return chains


class Pod:
    def __init__(self, lab: Lab, name: str):
        self.name = name
        self.id = secrets.token_hex(32)
        self.dir = lab.base / "pods" / self.id[:12]
        self.netns = ns.pin_namespaces(["net"], str(self.dir))["net"]
        self.result = None

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return run("nsenter", f"--net={self.netns}", *command, timeout=timeout)


class Lab:
    """A PodNetwork on the test bridge, and everything made through it."""

    def __init__(self, base: Path):
        self.base = base
        self.conf_dir = base / "net.d"
        self.ipam = base / "ipam"
        self.cache = base / "cache"
        self.conf_dir.mkdir()
        self.write_config(conflist(str(self.ipam)))
        self.network = PodNetwork(str(self.conf_dir), BIN_DIRS, str(self.cache))
        self.pods: list[Pod] = []
        self.chains: set[str] = set()
        self.processes: list[subprocess.Popen] = []

    def write_config(self, document: dict | str, name: str = "10-test.conflist") -> None:
        for old in self.conf_dir.iterdir():
            old.unlink()
        text = document if isinstance(document, str) else json.dumps(document)
        (self.conf_dir / name).write_text(text)

    def pod(self, name: str) -> Pod:
        pod = Pod(self, name)
        self.pods.append(pod)
        return pod

    def setup(self, pod: Pod, port_mappings: list[dict] | None = None):
        pod.result = self.network.setup(pod.id, pod.netns, name=pod.name, namespace="test",
                                        uid=f"uid-{pod.name}", port_mappings=port_mappings or [])
        self.chains |= chains_of({pod.id})
        return pod.result

    def start(self, *command: str) -> subprocess.Popen:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    # --- what is left --------------------------------------------------------------------------
    def allocations(self) -> list[str]:
        return sorted(p.name for p in self.ipam.rglob("*") if p.name[0].isdigit()) \
            if self.ipam.exists() else []

    def leftovers(self, pins: bool = True) -> dict:
        """What the tests' pods left; `pins=False` leaves out the pinned netns (the caller's,
        not the network's, to remove)."""
        lines = iptables_save()
        pod_ids = {pod.id for pod in self.pods}
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if str(self.base) in line] if pins else []
        return {
            "veths": veths_on(BRIDGE),
            "ip_allocations": self.allocations(),
            "cache": sorted(p.name for p in self.cache.iterdir()) if self.cache.exists() else [],
            "mounts": mounts,
            "rules": [line for line in lines if any(pod_id in line for pod_id in pod_ids)
                      or SUBNET_PREFIX in line],
            "chains": sorted(c for c in self.chains
                             if any(re.search(rf"\b{re.escape(c)}\b", line) for line in lines)),
        }

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for pod in self.pods:
            try:
                self.network.teardown(pod.id, pod.netns)
            except CNIError:
                pass
            ns.unpin_namespaces(str(pod.dir))


EMPTY = {"veths": [], "ip_allocations": [], "cache": [], "mounts": [], "rules": [],
         "chains": []}


def veths_on(bridge: str) -> list[str]:
    path = f"/sys/class/net/{bridge}/brif"
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


@pytest.fixture(scope="module")
def test_bridge():
    """The test bridge is removed at the end if the tests made it (bridge ADD creates it)."""
    existed = os.path.exists(f"/sys/class/net/{BRIDGE}")
    yield BRIDGE
    if not existed and os.path.exists(f"/sys/class/net/{BRIDGE}"):
        run("ip", "link", "del", BRIDGE)


@pytest.fixture
def lab(test_bridge):
    base = Path(tempfile.mkdtemp(prefix="corral-net-"))
    lab = Lab(base)
    try:
        yield lab
        lab.cleanup()
        assert lab.leftovers() == EMPTY
    finally:
        lab.cleanup()
        remove_rules_of(NETWORK)  # only if a test failed: a leak is reported above first
        shutil.rmtree(base, ignore_errors=True)


def remove_rules_of(network: str) -> None:
    """Delete the nat rules the plugins tagged with `network`, and their per-pod chains."""
    chains = set()
    for line in run("iptables-save", "-t", "nat").stdout.splitlines():
        if line.startswith("-A ") and f'name: \\"{network}\\"' in line:
            rule = shlex.split(line)
            chains.update(c for c in rule[1:2] + rule[-1:]
                          if c.startswith("CNI-") and not SHARED_CHAINS.match(c))
            run("iptables", "-t", "nat", "-D", *rule[1:])
    for chain in chains:
        run("iptables", "-t", "nat", "-F", chain)
        run("iptables", "-t", "nat", "-X", chain)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def host_ip() -> str:
    """The host's primary IPv4 address (on the default route's device)."""
    route = run("ip", "-4", "-o", "route", "show", "default").stdout.split()
    device = route[route.index("dev") + 1]
    address = run("ip", "-4", "-o", "addr", "show", "dev", device, "scope", "global").stdout
    return address.split()[3].split("/")[0]


def fetch(url: str, timeout: float = 5) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the server in the pod may not listen yet


# --- pinned namespaces ---------------------------------------------------------------------------
def test_pinned_namespaces_with_hostname(tmp_path):
    directory = str(tmp_path / "ns")
    pins = ns.pin_namespaces(["net", "ipc", "uts"], directory, hostname="web-0")
    try:
        assert pins == {kind: os.path.join(directory, kind) for kind in ("net", "ipc", "uts")}
        for kind, path in pins.items():
            assert ns.is_pinned(path)
            assert os.stat(path).st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
        assert run("nsenter", f"--uts={pins['uts']}", "hostname").stdout == "web-0\n"
        assert os.uname().nodename != "web-0"
        # a fresh netns: only lo, down
        links = run("nsenter", f"--net={pins['net']}", "ip", "-o", "link").stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        with pytest.raises(ns.NamespaceError, match="is not a net namespace"):
            ns.open_namespace(pins["ipc"], "net")
        host = os.stat("/proc/thread-self/ns/net").st_ino
        with ns.entered(pins["net"]):
            assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(pins["net"]).st_ino
        assert os.stat("/proc/thread-self/ns/net").st_ino == host
    finally:
        ns.unpin_namespaces(directory)
    assert not os.path.exists(directory)
    ns.unpin_namespaces(directory)  # idempotent
    with open("/proc/self/mountinfo") as f:
        assert directory not in f.read()


def test_unpinning_reaches_mount_namespaces_copied_meanwhile(tmp_path):
    """A mount namespace made while the pod lives (a container's) holds a copy of the pin;
    the pin directory's own shared peer group carries the unmount into it, so the netns
    does not outlive the pod."""
    directory = str(tmp_path / "ns")
    pins = ns.pin_namespaces(["net"], directory)
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while _mount_points(holder.pid).count(pins["net"]) == 0:
            assert time.monotonic() < deadline, "the copied mount namespace never appeared"
            time.sleep(0.02)
        ns.unpin_namespaces(directory)
        assert pins["net"] not in _mount_points(holder.pid)
        assert directory not in _mount_points(holder.pid)
    finally:
        holder.kill()
        holder.wait()
        ns.unpin_namespaces(directory)


def _mount_points(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return [line.split()[4] for line in f]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("kinds, hostname, message", [
    (["pid"], "", "cannot pin namespaces"),
    (["net"], "host", "needs a UTS namespace"),
    (["uts"], "x" * 65, "invalid hostname"),
])
def test_bad_pin_requests_leave_nothing(tmp_path, kinds, hostname, message):
    directory = tmp_path / "ns"
    with pytest.raises(ns.NamespaceError, match=message):
        ns.pin_namespaces(kinds, str(directory), hostname=hostname)
    assert not directory.exists()


# --- CNI -----------------------------------------------------------------------------------------
def test_two_pods_reach_each_other(lab):
    assert lab.network.status() == (True, "")
    a, b = lab.pod("a"), lab.pod("b")
    result_a, result_b = lab.setup(a), lab.setup(b)
    assert result_a.ip.startswith(SUBNET_PREFIX) and result_b.ip.startswith(SUBNET_PREFIX)
    assert result_a.ip != result_b.ip
    (eth0,) = [i for i in result_a.interfaces if i.sandbox]
    assert (eth0.name, eth0.sandbox) == ("eth0", a.netns)
    assert [(e.address.startswith(SUBNET_PREFIX), e.gateway, e.interface)
            for e in result_a.ips] == [(True, SUBNET_PREFIX + "1", "eth0")]
    assert [r.dst for r in result_a.routes] == ["0.0.0.0/0"]
    assert len(veths_on(BRIDGE)) == 2
    assert len(lab.allocations()) == 2
    for pod, peer in ((a, result_b.ip), (b, result_a.ip)):
        done = pod.run(BUSYBOX, "ping", "-c", "1", "-W", "5", peer)
        assert done.returncode == 0, done.stdout + done.stderr
    # the loopback network brought lo up in the pod
    done = a.run(BUSYBOX, "ping", "-c", "1", "-W", "2", "127.0.0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    # what corrald reports after a restart comes from the cache
    restarted = PodNetwork(str(lab.conf_dir), BIN_DIRS, str(lab.cache))
    assert restarted.cached_result(a.id).ip == result_a.ip
    for pod in (a, b):
        lab.network.teardown(pod.id, pod.netns)
    assert lab.leftovers(pins=False) == EMPTY
    assert a.run(BUSYBOX, "ping", "-c", "1", "-W", "1", result_b.ip).returncode != 0


def test_host_port_reaches_httpd_in_pod(lab, tmp_path):
    pod = lab.pod("web")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello from the pod\n")
    host_port = free_port()
    result = lab.setup(pod, [{"hostPort": host_port, "containerPort": 80, "protocol": "TCP",
                              "hostIP": ""}])
    lab.start("nsenter", f"--net={pod.netns}", BUSYBOX, "httpd", "-f", "-p", "80",
              "-h", str(tmp_path / "www"))
    assert fetch(f"http://{result.ip}:80/index.html") == b"hello from the pod\n"
    # portmap DNATs locally generated traffic too; for 127.0.0.1 it sets route_localnet on
    # the bridge and masquerades the source, so localhost works as well as the host's IP
    for address in ("127.0.0.1", host_ip()):
        assert fetch(f"http://{address}:{host_port}/index.html") == b"hello from the pod\n"
    assert any(f"--dport {host_port}" in line and "DNAT" in line for line in iptables_save())
    lab.network.teardown(pod.id, pod.netns)
    assert lab.leftovers(pins=False) == EMPTY
    with pytest.raises(OSError):
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html", timeout=2):
            pass


def test_teardown_twice_and_with_the_netns_gone(lab):
    """DEL is idempotent, and works from the cache after a restart with the netns gone and
    the config since broken: the IP is released and the ipMasq rules removed."""
    first, second = lab.pod("first"), lab.pod("second")
    lab.setup(first, [{"hostPort": free_port(), "containerPort": 80}])
    lab.setup(second, [{"hostPort": free_port(), "containerPort": 80}])
    assert len(lab.chains) == 4  # per pod: the ipMasq chain and portmap's DNAT chain
    lab.network.teardown(first.id, first.netns)
    lab.network.teardown(first.id, first.netns)
    lab.network.teardown(first.id)
    # corrald "restarts": a new PodNetwork; the config dir now holds garbage
    ns.unpin_namespaces(str(second.dir))
    assert not os.path.exists(second.netns)
    lab.write_config("{ not json")
    restarted = PodNetwork(str(lab.conf_dir), BIN_DIRS, str(lab.cache))
    assert restarted.status()[0] is False
    restarted.teardown(second.id, second.netns)
    restarted.teardown(second.id, second.netns)
    assert lab.leftovers(pins=False) == EMPTY


def test_check_finds_a_missing_interface(lab):
    pod = lab.pod("checked")
    result = lab.setup(pod)
    lab.network.check(pod.id)
    (host_veth,) = [i.name for i in result.interfaces if not i.sandbox and i.name != BRIDGE]
    assert run("ip", "link", "del", host_veth).returncode == 0  # takes eth0 with it
    with pytest.raises(CNIError, match="CNI plugin bridge CHECK"):
        lab.network.check(pod.id)
    lab.network.teardown(pod.id, pod.netns)
    assert lab.leftovers(pins=False) == EMPTY


@pytest.mark.parametrize("config, name, message", [
    ('{"cniVersion": "1.0.0", "name": "corraltest", "plugins": [', "10-bad.conflist",
     r"10-bad.conflist: not JSON"),
    (None, "10-missing.conflist", r"10-missing.conflist: CNI plugin 'no-such-plugin' not found"),
])
def test_broken_config_fails_clearly_and_leaves_nothing(lab, config, name, message):
    if config is None:
        config = json.dumps(conflist(str(lab.ipam), {"type": "no-such-plugin"}))
    lab.write_config(config, name)
    pod = lab.pod("broken")
    with pytest.raises(CNIError, match=message):
        lab.setup(pod)
    ready, reason = lab.network.status()
    assert not ready and name in reason
    assert lab.leftovers(pins=False) == EMPTY
    assert veths_on(BRIDGE) == [] and lab.allocations() == []


def test_failing_plugin_mid_list_rolls_back(lab):
    """bridge and portmap succeed, tuning fails (no such sysctl): all of it is DEL'd."""
    failing = {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_setting": "1"}}
    lab.write_config(conflist(str(lab.ipam), failing))
    pod = lab.pod("rollback")
    with pytest.raises(CNIError, match=r"CNI plugin tuning ADD \(network corraltest\): .*"
                                       "no_such_setting"):
        lab.setup(pod, [{"hostPort": free_port(), "containerPort": 80}])
    assert lab.leftovers(pins=False) == EMPTY
    links = pod.run("ip", "-o", "link").stdout
    assert "eth0" not in links
    # the pod can be set up again once the config is fixed
    lab.write_config(conflist(str(lab.ipam)))
    assert lab.setup(pod).ip.startswith(SUBNET_PREFIX)


def test_setup_into_something_not_a_netns_is_refused(lab, tmp_path):
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    with pytest.raises(OSError, match="not a pinned namespace"):
        lab.network.setup("f" * 64, str(plain), name="x", namespace="test", uid="u")
    with pytest.raises(CNIError, match="hostPort 0"):
        pod = lab.pod("ports")
        lab.network.setup(pod.id, pod.netns, name="x", namespace="test", uid="u",
                          port_mappings=[{"hostPort": 0, "containerPort": 80}])
    assert lab.leftovers(pins=False) == EMPTY


def test_teardown_after_a_crash_during_add(lab, tmp_path):
    """corrald is SIGKILLed while ADD is half done (bridge and portmap done, a third plugin
    still running, no result cached): a teardown by the next corrald removes it all."""
    hold = tmp_path / "bin" / "hold"
    hold.parent.mkdir()
    hold.write_text(f'#!/bin/sh\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
                    f'echo $$ > {tmp_path}/hold.pid\nexec sleep 60\n')
    hold.chmod(0o755)
    lab.write_config(conflist(str(lab.ipam), {"type": "hold"}))
    bin_dirs = [str(hold.parent), *BIN_DIRS]
    pod = lab.pod("crash")
    setup = (f"from corral.network.manager import PodNetwork\n"
             f"PodNetwork({str(lab.conf_dir)!r}, {bin_dirs!r}, {str(lab.cache)!r}).setup("
             f"{pod.id!r}, {pod.netns!r}, name='crash', namespace='test', uid='u', "
             f"port_mappings=[{{'hostPort': {free_port()}, 'containerPort': 80}}])\n")
    daemon = lab.start(sys.executable, "-c", setup)
    pid_file = tmp_path / "hold.pid"
    deadline = time.monotonic() + 30
    try:
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert daemon.poll() is None and time.monotonic() < deadline, "ADD never got to hold"
            time.sleep(0.01)
        daemon.kill()
        daemon.wait()
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the orphaned plugin, by PID
    assert len(veths_on(BRIDGE)) == 1 and len(lab.allocations()) == 1
    lab.chains |= chains_of({pod.id})
    assert len(lab.chains) == 2  # ipMasq and DNAT: bridge and portmap did their ADD
    cache = json.loads((lab.cache / f"{pod.id}.json").read_text())
    assert cache["result"] is None
    PodNetwork(str(lab.conf_dir), bin_dirs, str(lab.cache)).teardown(pod.id)
    assert lab.leftovers(pins=False) == EMPTY
