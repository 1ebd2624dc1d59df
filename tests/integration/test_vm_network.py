"""corral.vm.network against the real kernel, Debian's CNI plugins and a real QEMU guest.

A pod netns of the test's own gets its network from the real bridge and
host-local plugins (bridge cvmnet0, 10.231.0.0/24 and fd00:231::/64, only
this module's), connect_tap wires eth0 to tap0 with tc mirred, and a QEMU
micro-VM (-M microvm, TCG, Debian's kernel, an initramfs built here from
busybox-static and virtio_mmio/virtio_net) runs inside that netns on tap0.
Its init configures its NIC from the GuestNetwork connect_tap returned, pings
the bridge's gateway and serves TCP on 8080; the host reaches it at the pod
IP through the bridge.  Fixtures kill QEMU, run CNI DEL, unpin the netns and
delete the bridge even when a test fails.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import lzma
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from corral.network import netns as ns
from corral.network.manager import PodNetwork
from corral.vm.network import NetworkError, connect_tap, disconnect_tap, forward_target

from .guest import _cpio_entry, find_kernel, module_files

BRIDGE = "cvmnet0"
SUBNET = "10.231.0.0/24"
GATEWAY = "10.231.0.1"
SUBNET6 = "fd00:231::/64"
GATEWAY6 = "fd00:231::1"
MTU = 1450  # not the default: the tap and the guest must take eth0's
BIN_DIRS = ["/usr/lib/cni"]
BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"
GUEST_MODULES = ("virtio_mmio", "virtio_net")  # microvm's NIC is virtio-mmio (ACPI)
GUEST_PORT = 8080  # answers "guest-hello <token> <its MAC>"
SINK_PORT = 8081  # counts what it is sent
SOURCE_PORT = 8082  # sends BULK random bytes ...
SUM_PORT = 8083  # ... and then their md5sum
BULK = 4 << 20
BOOT_TIMEOUT = 40.0


def run(*command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def in_netns(netns: str, *command: str) -> subprocess.CompletedProcess:
    return run("nsenter", f"--net={netns}", *command)


def ip_json(netns: str, *args: str) -> list[dict]:
    done = in_netns(netns, "ip", "-j", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


def tc_json(netns: str, *args: str) -> list[dict]:
    done = in_netns(netns, "tc", "-j", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


def host_ip() -> str:
    """The host's primary IPv4 address (on the default route's device)."""
    route = run("ip", "-4", "-o", "route", "show", "default").stdout.split()
    device = route[route.index("dev") + 1]
    address = run("ip", "-4", "-o", "addr", "show", "dev", device, "scope", "global").stdout
    return address.split()[3].split("/")[0]


def ingress_actions(netns: str, dev: str) -> list[tuple]:
    """(kind, mirred action, direction, target) of every action on `dev`'s ingress filters."""
    return [(a["kind"], a.get("mirred_action"), a.get("direction"), a.get("to_dev"))
            for f in tc_json(netns, "filter", "show", "dev", dev, "parent", "ffff:")
            for a in f.get("options", {}).get("actions", [])]


def conflist(data_dir: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "cvmnet",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "mtu": MTU,
             "ipam": {"type": "host-local", "dataDir": data_dir,
                      "ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]],
                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# --- the guest ---------------------------------------------------------------------------------

def host_tsc_khz() -> int:
    """The TSC frequency QEMU's TCG guest must be told (else it calibrates, slowly)."""
    with open("/proc/cpuinfo") as f:
        mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", f.read(), re.M)
    assert mhz, "no 'cpu MHz' in /proc/cpuinfo"
    return int(float(mhz.group(1)) * 1000)


def extract_vmlinux(vmlinuz: str, dest: str) -> None:
    """The uncompressed ELF inside Debian's bzImage (xz): microvm boots it by PVH, 3x
    faster than a bzImage it must decompress under TCG."""
    with open(vmlinuz, "rb") as f:
        data = f.read()
    start = data.find(b"\xfd7zXZ\x00")
    assert start >= 0, f"{vmlinuz}: no xz payload"
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    assert elf[:4] == b"\x7fELF"
    with open(dest, "wb") as f:
        f.write(elf)


def configure_script(guest: dict) -> str:
    """The GuestNetwork as the guest's `ip` commands (what the agent does with it)."""
    lines = []
    for n, nic in enumerate(guest["interfaces"]):
        lines += [f"dev{n}=$(for d in /sys/class/net/*; do "
                  f"[ \"$(cat $d/address)\" = {nic['mac']} ] && basename $d; done)",
                  f"[ -n \"$dev{n}\" ] || echo 'vmnet-fail: no NIC has {nic['mac']}'",
                  # the pod's addresses are the guest's alone: no DAD (busybox ip has no nodad)
                  f"echo 0 > /proc/sys/net/ipv6/conf/$dev{n}/accept_dad",
                  f"ip link set $dev{n} mtu {nic['mtu']} up"]
        lines += [f"ip addr add {a} dev $dev{n}" for a in nic["addresses"]]
    for route in guest["routes"]:
        via = f"via {route['gw']} " if route["gw"] else ""
        lines.append(f"ip route add {route['dst']} {via}dev $dev0 || echo 'vmnet-fail: route'")
    return "\n".join(lines) + "\n"


GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod /modules/$m || echo "vmnet-fail: insmod $m"; done
ip link set lo up
. /configure
printf '#!/bin/sh\necho "guest-hello {token} $(cat /sys/class/net/$1/address)"\n' > /bin/hello
chmod +x /bin/hello
nc -ll -p {port} -e /bin/hello $dev0 &
printf '#!/bin/sh\nwc -c\n' > /bin/sink; chmod +x /bin/sink
nc -ll -p {sink_port} -e /bin/sink &
head -c {bulk} /dev/urandom > /bulk; md5sum /bulk > /bulk.md5
printf '#!/bin/sh\ncat /bulk\n' > /bin/source; chmod +x /bin/source
nc -ll -p {source_port} -e /bin/source &
printf '#!/bin/sh\ncat /bulk.md5\n' > /bin/sum; chmod +x /bin/sum
nc -ll -p {sum_port} -e /bin/sum &
ping -c 5 -W 3 {gateway} > /ping.out 2>&1; echo "vmnet-ping4 rc=$?"; cat /ping.out
ping6 -c 2 -W 3 {gateway6} > /ping.out 2>&1; echo "vmnet-ping6 rc=$?"; cat /ping.out
echo vmnet-ready
while :; do sleep 3600; done
"""


def build_initramfs(dest: str, modules_dir: str, guest: dict, token: str) -> None:
    """A newc cpio (uncompressed: the kernel unpacks it faster than a gzip under TCG)."""
    out = io.BytesIO()
    ino = iter(range(1, 1 << 20))
    for d in ("bin", "dev", "proc", "sys", "modules"):
        _cpio_entry(out, d, 0o040755, ino=next(ino))
    _cpio_entry(out, "dev/console", 0o020600, ino=next(ino), rdev=(5, 1))
    with open(BUSYBOX, "rb") as f:
        _cpio_entry(out, "bin/busybox", 0o100755, f.read(), next(ino))
    init = (GUEST_INIT.replace("{token}", token).replace("{port}", str(GUEST_PORT))
            .replace("{sink_port}", str(SINK_PORT)).replace("{source_port}", str(SOURCE_PORT))
            .replace("{sum_port}", str(SUM_PORT)).replace("{bulk}", str(BULK))
            .replace("{gateway}", GATEWAY).replace("{gateway6}", GATEWAY6))
    _cpio_entry(out, "init", 0o100755, init.encode(), next(ino))
    _cpio_entry(out, "configure", 0o100644, configure_script(guest).encode(), next(ino))
    names = []
    for rel in module_files(modules_dir, GUEST_MODULES):
        names.append(os.path.basename(rel))
        with open(os.path.join(modules_dir, rel), "rb") as f:
            _cpio_entry(out, f"modules/{names[-1]}", 0o100644, f.read(), next(ino))
    _cpio_entry(out, "modules.list", 0o100644, ("\n".join(names) + "\n").encode(), next(ino))
    _cpio_entry(out, "TRAILER!!!", 0)
    with open(dest, "wb") as f:
        f.write(out.getvalue())


class Guest:
    def __init__(self, proc: subprocess.Popen, console: Path, token: str, mac: str):
        self.proc = proc
        self.mac = mac
        self.console = console
        self.token = token

    def output(self) -> str:
        try:
            return self.console.read_text(errors="replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def wait_for(self, marker: str, timeout: float = BOOT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if marker in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        qemu = self.console.with_name(self.console.name.replace("console", "qemu")).read_text()
        pytest.fail(f"guest: no {marker!r} (qemu exit {self.proc.poll()}: {qemu.strip()}); "
                    f"console:\n{self.output()[-5000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# --- fixtures ----------------------------------------------------------------------------------

class Lab:
    def __init__(self, base: Path):
        self.base = base
        (base / "net.d").mkdir()
        (base / "net.d" / "10-cvmnet.conflist").write_text(json.dumps(conflist(str(base / "ipam"))))
        self.network = PodNetwork(str(base / "net.d"), BIN_DIRS, str(base / "cache"))
        vmlinuz, self.modules_dir = find_kernel()
        self.vmlinux = str(base / "vmlinux")
        extract_vmlinux(vmlinuz, self.vmlinux)
        self.tsc_khz = host_tsc_khz()


class Pod:
    """A pinned netns with the CNI network on eth0, and the guests booted in it."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.id = "cvmnet-" + secrets.token_hex(16)
        self.dir = lab.base / "pods" / self.id
        self.netns = ns.pin_namespaces(["net"], str(self.dir))["net"]
        self.result = None
        self.guests: list[Guest] = []

    def setup(self, port_mappings: list[dict] | None = None) -> None:
        self.result = self.lab.network.setup(self.id, self.netns, name="vm", namespace="test",
                                             uid=self.id, port_mappings=port_mappings or [])

    def boot(self, guest: dict) -> Guest:
        token = secrets.token_hex(8)
        initrd = self.dir / f"initrd-{token}.cpio"
        console = self.dir / f"console-{token}.log"
        build_initramfs(str(initrd), self.lab.modules_dir, guest, token)
        cmdline = ("console=ttyS0 quiet reboot=t panic=-1 no_timer_check mitigations=off "
                   f"pci=off cryptomgr.notests tsc=reliable tsc_early_khz={self.lab.tsc_khz} "
                   f"lpj={self.lab.tsc_khz * 1000 // 250} rdinit=/init")  # loops per jiffy, HZ=250
        mac = guest["interfaces"][0]["mac"]
        argv = ["nsenter", f"--net={self.netns}",  # execs QEMU: its PID is QEMU's
                QEMU, "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "128", "-smp", "1",
                "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
                "-kernel", self.lab.vmlinux, "-initrd", str(initrd), "-append", cmdline,
                "-serial", f"file:{console}",
                "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=n0,mac={mac}"]
        with open(self.dir / f"qemu-{token}.log", "w") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        started = Guest(proc, console, token, mac)
        self.guests.append(started)
        return started

    def teardown(self) -> None:
        for guest in self.guests:
            guest.kill()
        try:
            disconnect_tap(self.netns)
        finally:
            try:
                self.lab.network.teardown(self.id, self.netns)
            finally:
                ns.unpin_namespaces(str(self.dir))


@pytest.fixture(scope="module")
def lab():
    base = Path(tempfile.mkdtemp(prefix="corral-vmnet-"))
    try:
        yield Lab(base)
    finally:
        if run("ip", "link", "show", BRIDGE).returncode == 0:
            run("ip", "link", "del", BRIDGE)
        shutil.rmtree(base, ignore_errors=True)


HOST_PORT = 18231


def made_pod(lab: Lab, port_mappings: list[dict] | None = None):
    made = Pod(lab)
    try:
        made.setup(port_mappings)
        yield made
    finally:
        made.teardown()
    assert not os.path.exists(made.netns)
    assert made.id not in run("iptables-save").stdout  # portmap's rules went with CNI DEL


@pytest.fixture
def pod(lab):
    yield from made_pod(lab)


@pytest.fixture(scope="module")
def vm_pod(lab):
    """One pod whose guest the read-only tests share (a boot is ~3 s under TCG)."""
    for made in made_pod(lab, [{"hostPort": HOST_PORT, "containerPort": GUEST_PORT,
                                "protocol": "TCP", "hostIP": ""}]):
        guest_net = connect_tap(made.netns)
        guest = made.boot(guest_net)
        guest.wait_for("vmnet-ready")
        yield made, guest_net, guest


def connect(address: str, port: int, netns: str | None = None) -> socket.socket:
    if netns:
        with ns.entered(netns):
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound to the netns
    else:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(20)
    try:
        conn.connect((address, port))
    except BaseException:
        conn.close()
        raise
    return conn


def read_all(conn: socket.socket) -> bytes:
    data = bytearray()
    while chunk := conn.recv(1 << 16):
        data += chunk
    return bytes(data)


def reply_from(address: str, netns: str | None = None, port: int = GUEST_PORT) -> str:
    with connect(address, port, netns) as conn:
        return read_all(conn).decode().strip()


# --- tests -------------------------------------------------------------------------------------

def test_connect_tap_describes_eth0_and_wires_it_to_the_tap(pod):
    eth0 = ip_json(pod.netns, "addr", "show", "dev", "eth0")[0]
    guest = connect_tap(pod.netns)

    assert set(guest) == {"interfaces", "routes"}
    (nic,) = guest["interfaces"]
    assert set(nic) == {"mac", "addresses", "mtu"}
    assert nic["mac"] == eth0["address"]
    assert nic["mtu"] == eth0["mtu"] == MTU
    v4 = f"{pod.result.ip}/24"
    assert nic["addresses"][0] == v4
    (v6,) = [a for a in nic["addresses"] if ":" in a]
    assert ipaddress.ip_interface(v6).network == ipaddress.ip_network(SUBNET6)
    # the default routes only: the subnet routes are the kernel's, made by the address
    assert guest["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY},
                               {"dst": "::/0", "gw": GATEWAY6}]

    (tap,) = ip_json(pod.netns, "-d", "link", "show", "tap0")
    info = tap["linkinfo"]["info_data"]
    assert (info["type"], info["multi_queue"], info["user"]) == ("tap", False, "root")
    assert tap["mtu"] == eth0["mtu"] and "UP" in tap["flags"]
    assert not ip_json(pod.netns, "addr", "show", "dev", "tap0")[0]["addr_info"]
    for src, dst in (("eth0", "tap0"), ("tap0", "eth0")):
        kinds = {q["kind"] for q in tc_json(pod.netns, "qdisc", "show", "dev", src)}
        assert "ingress" in kinds
        assert ingress_actions(pod.netns, src) == [("mirred", "redirect", "egress", dst)]
    # eth0 keeps the pod IP (as CNI left it; the netns's stack never sees a frame now)
    assert v4 in [f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"]]


def test_a_guest_on_the_tap_is_the_pod(vm_pod):
    pod, guest_net, guest = vm_pod
    console = guest.output()
    assert "vmnet-fail" not in console, console[-3000:]

    # guest -> the bridge's gateway, through tap0 -> eth0 -> veth -> bridge
    assert "vmnet-ping4 rc=0" in console, console[-3000:]
    rtt = re.search(r"vmnet-ping4 rc=0\n(?:.*\n)*?round-trip min/avg/max = ([\d.]+)/([\d.]+)/"
                    r"([\d.]+) ms", console)
    assert rtt, console[-3000:]
    print(f"\nguest ping to the gateway: min/avg/max {'/'.join(rtt.groups())} ms")
    assert "vmnet-ping6 rc=0" in console, console[-3000:]

    # host -> pod IP: the bridge delivers to eth0, whose ingress redirect hands it to the guest
    done = run(BUSYBOX, "ping", "-c", "3", "-W", "3", pod.result.ip)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0% packet loss" in done.stdout
    assert reply_from(pod.result.ip) == f"guest-hello {guest.token} {guest.mac}"

    # The neighbour the bridge's side resolved for the pod IP is eth0's MAC: the guest answered.
    neighbours = json.loads(run("ip", "-j", "neigh", "show", "dev", BRIDGE).stdout)
    assert {n.get("lladdr") for n in neighbours if n["dst"] == pod.result.ip} == {guest.mac}
    assert guest_net["interfaces"][0]["mac"] == guest.mac


def test_bulk_tcp_both_ways_through_the_tap(vm_pod):
    """Full-size segments (GSO from the host's stack, the guest's offloads) pass the
    redirects intact: byte counts and checksums match both ways."""
    pod, _, _ = vm_pod
    payload = os.urandom(BULK)
    start = time.monotonic()
    with connect(pod.result.ip, SINK_PORT) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        assert read_all(conn).decode().strip() == str(BULK)
    sent = time.monotonic() - start
    start = time.monotonic()
    with connect(pod.result.ip, SOURCE_PORT) as conn:
        received = read_all(conn)
    got = time.monotonic() - start
    assert len(received) == BULK
    checksum = reply_from(pod.result.ip, port=SUM_PORT).split()[0]
    assert checksum == hashlib.md5(received).hexdigest()
    print(f"\nTCP host->guest {BULK / sent / 1e6:.0f} MB/s, "
          f"guest->host {BULK / got / 1e6:.0f} MB/s")


def test_a_pod_on_the_bridge_reaches_the_guest(vm_pod, pod):
    """Pod to pod on one L2 segment: the other pod ARPs for the pod IP, the guest answers."""
    vm, _, guest = vm_pod
    assert reply_from(vm.result.ip, netns=pod.netns) == f"guest-hello {guest.token} {guest.mac}"
    done = in_netns(pod.netns, BUSYBOX, "ping", "-c", "2", "-W", "3", vm.result.ip)
    assert done.returncode == 0, done.stdout + done.stderr
    (neighbour,) = [n for n in ip_json(pod.netns, "neigh", "show", "dev", "eth0")
                    if n["dst"] == vm.result.ip]
    assert neighbour["lladdr"] == guest.mac


def test_host_port_reaches_the_guest(vm_pod):
    _, _, guest = vm_pod
    # portmap's DNAT in the host sends it to the pod IP, which the guest is
    for address in ("127.0.0.1", host_ip()):
        assert reply_from(address, port=HOST_PORT) == f"guest-hello {guest.token} {guest.mac}"


def test_forward_target_reaches_the_guest_from_the_host(vm_pod):
    pod, _, guest = vm_pod
    target = forward_target(pod.netns)
    assert target == pod.result.ip
    # from the host's namespace, where corrald's port-forward relay runs
    assert reply_from(target) == f"guest-hello {guest.token} {guest.mac}"
    # Not from inside the pod's netns: eth0 there still has the pod IP, so the netns
    # routes it to its own loopback, where nothing listens.
    assert in_netns(pod.netns, "ip", "route", "get", target).stdout.startswith("local ")
    with pytest.raises(ConnectionRefusedError):
        reply_from(target, netns=pod.netns)


def test_disconnect_tap_under_a_running_guest(pod):
    guest = pod.boot(connect_tap(pod.netns))
    guest.wait_for("vmnet-ready")
    assert reply_from(pod.result.ip) == f"guest-hello {guest.token} {guest.mac}"
    disconnect_tap(pod.netns)  # QEMU still holds the tap
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    assert not [q for q in tc_json(pod.netns, "qdisc", "show") if q["kind"] == "ingress"]
    with pytest.raises(OSError):
        with connect(pod.result.ip, GUEST_PORT) as conn:
            conn.settimeout(3)
            read_all(conn)
    assert guest.proc.poll() is None


def identity(links: list[dict]) -> list[tuple]:
    return [(link["ifindex"], link["ifname"], link["address"], link["mtu"], link["flags"])
            for link in links]


def test_disconnect_tap_leaves_eth0_as_cni_made_it(pod):
    before_links = ip_json(pod.netns, "link", "show")
    before_qdiscs = tc_json(pod.netns, "qdisc", "show")
    connect_tap(pod.netns)
    disconnect_tap(pod.netns)
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    assert identity(ip_json(pod.netns, "link", "show")) == identity(before_links)
    assert tc_json(pod.netns, "qdisc", "show") == before_qdiscs
    assert not [q for q in before_qdiscs if q["kind"] in ("ingress", "clsact")]
    assert tc_json(pod.netns, "filter", "show", "dev", "eth0", "ingress") == []
    disconnect_tap(pod.netns)  # twice: nothing there is fine
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    connect_tap(pod.netns)  # and it connects again


def test_disconnect_tap_after_the_guest_is_gone(pod):
    guest = pod.boot(connect_tap(pod.netns))
    guest.wait_for("vmnet-ready")
    guest.kill()
    disconnect_tap(pod.netns)
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    assert not [q for q in tc_json(pod.netns, "qdisc", "show") if q["kind"] == "ingress"]


def test_connect_tap_refuses_a_taken_tap_name_and_leaves_it(pod):
    connect_tap(pod.netns)
    with pytest.raises(NetworkError, match="tap0 already exists"):
        connect_tap(pod.netns)
    assert "tap0" in {link["ifname"] for link in ip_json(pod.netns, "link", "show")}


def test_errors_carry_the_commands_stderr(pod, lab):
    with pytest.raises(NetworkError, match="no eth9 in"):
        connect_tap(pod.netns, interface="eth9")
    missing = str(lab.base / "no-such-netns")
    with pytest.raises(NetworkError, match="nsenter.*No such file or directory"):
        connect_tap(missing)
    # a tap name ip refuses: its stderr; (a failure after the tap: the plugin test below)
    with pytest.raises(NetworkError, match=r"^ip -batch \(tuntap add dev x{16} .* in .*: "
                                           r"Error: .*not a valid ifname"):
        connect_tap(pod.netns, tap="x" * 16)
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    assert not [q for q in tc_json(pod.netns, "qdisc", "show") if q["kind"] == "ingress"]


def test_disconnect_tap_removes_what_a_cut_short_connect_left(pod):
    # the ingress qdisc on eth0 without its filter: a connect_tap killed in between
    assert in_netns(pod.netns, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap").returncode == 0
    assert in_netns(pod.netns, "tc", "qdisc", "add", "dev", "eth0", "ingress").returncode == 0
    disconnect_tap(pod.netns)
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    assert not [q for q in tc_json(pod.netns, "qdisc", "show") if q["kind"] == "ingress"]


def test_a_plugins_own_ingress_qdisc_is_left_alone(pod):
    foreign = ("filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "ip", "u32",
               "match", "ip", "dport", "9", "0xffff",
               "action", "mirred", "egress", "mirror", "dev", "lo")
    assert in_netns(pod.netns, "tc", "qdisc", "add", "dev", "eth0", "ingress").returncode == 0
    assert in_netns(pod.netns, "tc", *foreign).returncode == 0
    exclusive = "^tc qdisc add dev eth0 ingress in .*: Error: Exclusivity flag on"
    with pytest.raises(NetworkError, match=exclusive):
        connect_tap(pod.netns)
    # undone: no tap; the plugin's qdisc and filter are still there
    assert {link["ifname"] for link in ip_json(pod.netns, "link", "show")} == {"lo", "eth0"}
    assert ingress_actions(pod.netns, "eth0") == [("mirred", "mirror", "egress", "lo")]
    disconnect_tap(pod.netns)
    assert ingress_actions(pod.netns, "eth0") == [("mirred", "mirror", "egress", "lo")]


def test_connect_tap_timing(pod):
    times = []
    for _ in range(10):
        start = time.perf_counter()
        connect_tap(pod.netns)
        times.append(time.perf_counter() - start)
        disconnect_tap(pod.netns)
    median = statistics.median(times)
    print(f"\nconnect_tap: median {median * 1000:.1f} ms of 10 "
          f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    assert median < 1.0
