"""A VM pod's network: the pod's CNI interface wired to a tap that QEMU attaches to.

    guest = connect_tap(netns_path)    tap0 in the pod's netns, tc mirred eth0 <-> tap0;
                                       what the guest's NIC must be (GuestNetwork)
    disconnect_tap(netns_path)         filters, qdiscs and tap removed; idempotent
    forward_target(netns_path)         the pod IP a port-forward dials, from the host
    open_tap(netns_path)               an fd on the tap, for a QEMU outside the netns
                                       (a pooled VM, started before its pod existed)

corrald runs CNI as for any pod, so the pod's netns on the host keeps the CNI
result: eth0 with the pod IP, its routes, and whatever the plugins set up
outside (bridge port, portmap rules).  The VM then takes eth0's identity
instead of a copy of the network: as in Kata's "tcfilter" model, an ingress
qdisc on each of eth0 and tap0 carries a u32 match-all filter whose action
is `mirred egress redirect` to the other, so every frame that arrives on
eth0 leaves through the tap into the guest and every frame the guest sends
leaves through eth0, untouched.  The guest's NIC has eth0's MAC and the pod
IP, so the bridge (its FDB, its neighbours' ARP caches) sees the same
station as before; no bridge, no NAT, no MAC rewriting inside the netns.

eth0 keeps its address, as Kata leaves it: ingress is redirected before the
netns's IP stack sees a frame, so that stack never answers ARP or anything
else for the pod IP (the guest does, with the same MAC, which is what the
bridge and its neighbours already have).  Removing it would gain nothing and
break CNI CHECK (the bridge plugin checks eth0's addresses) and anything that
reads the pod IP from the netns.  One consequence: inside the netns the pod
IP is a local address, so a port-forward must dial it from the host's
namespace (forward_target).

Host-network pods have no netns of their own; the vm handler refuses them,
so this module is never asked to wire one.

ip and tc are programs anyway, so each runs inside the netns through
`nsenter --net=PATH` (corrald's threads never setns); a batch (`-batch -`)
makes one process of several commands, and `-j` JSON is what is read back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from typing import TypedDict

NSENTER = "nsenter"
INTERFACE = "eth0"
TAP = "tap0"
COMMAND_TIMEOUT = 30.0
INGRESS = "ffff:"  # the ingress qdisc's handle
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
CLONE_NEWNET = 0x40000000


class NetworkError(Exception):
    """A command in the pod's netns failed; the message carries its stderr."""


class Interface(TypedDict):
    mac: str
    addresses: list[str]  # CIDR: "10.85.0.7/16", global IPv6 ones
    mtu: int


class Route(TypedDict):
    dst: str  # a prefix; "0.0.0.0/0" / "::/0" for the default
    gw: str  # "" for a route on the link itself (ptp's route to its gateway)


class GuestNetwork(TypedDict):
    """What the guest agent configures: the schema it consumes, keys exactly these."""

    interfaces: list[Interface]
    routes: list[Route]


def connect_tap(netns_path: str, interface: str = INTERFACE, tap: str = TAP) -> GuestNetwork:
    """Create `tap` in the netns, redirect `interface` <-> `tap`, and describe the guest NIC.

    Nothing is left on failure.  A `tap` already in the netns is an error
    (connected before, or a name taken): it is not touched.
    """
    links = _ip_json(netns_path, "-d", "addr", "show")
    by_name = {link["ifname"]: link for link in links}
    if interface not in by_name:
        raise NetworkError(f"no {interface} in {netns_path} (has {', '.join(by_name)})")
    if tap in by_name:
        raise NetworkError(f"{tap} already exists in {netns_path}")
    link = by_name[interface]
    guest: GuestNetwork = {
        "interfaces": [{"mac": link["address"], "addresses": _addresses(link),
                        "mtu": int(link["mtu"])}],
        "routes": _routes(netns_path, interface),
    }
    try:
        # multi_queue off (the kernel refuses an attach whose flag differs, and QEMU's
        # default netdev is single-queue); owned by root, so only root or CAP_NET_ADMIN
        # (QEMU as corrald runs it) can attach.  No addresses on the
        # tap (addrgenmode none: no IPv6 link-local, no DAD/RS sent to the guest): it
        # is a wire, not a host interface.  Same MTU as eth0, or frames get dropped.
        _run(netns_path, ["ip", "-batch", "-"], stdin=(
            f"tuntap add dev {tap} mode tap user 0 group 0\n"
            f"link set dev {tap} mtu {link['mtu']} addrgenmode none up\n"))
        _run(netns_path, ["tc", "-batch", "-"], stdin="".join(
            f"qdisc add dev {src} ingress\n"
            f"filter add dev {src} parent {INGRESS} protocol all u32 match u8 0 0 "
            f"action mirred egress redirect dev {dst}\n"
            for src, dst in ((interface, tap), (tap, interface))))
    except BaseException as e:
        try:
            disconnect_tap(netns_path, tap, interface)
        except NetworkError as undo:
            e.add_note(f"and undoing it failed: {undo}")
        raise
    return guest


def disconnect_tap(netns_path: str, tap: str = TAP, interface: str = INTERFACE) -> None:
    """Remove the redirect filters and ingress qdiscs and the tap; nothing there is fine.

    Deleting eth0's ingress qdisc drops its filters with it, and deleting the
    tap drops its own qdisc; eth0 is otherwise left as CNI made it.  eth0's
    ingress qdisc is removed only if it is ours (see _ours): a plugin's own,
    with its own filters, stays.
    """
    if not os.path.exists(netns_path):
        return  # the netns is gone, and everything in it
    links = {link["ifname"]: link for link in _ip_json(netns_path, "-d", "link", "show")}
    if interface in links and _ours(netns_path, interface, tap):
        _run(netns_path, ["tc", "qdisc", "del", "dev", interface, "ingress"])
    if tap in links:
        kind = links[tap].get("linkinfo", {}).get("info_kind")
        if kind != "tun":
            raise NetworkError(f"{tap} in {netns_path} is a {kind or 'plain'} link, not a tap")
        # `ip link del`, not `ip tuntap del`: that one attaches to the tap first and
        # fails (EBUSY) while a QEMU still holds it; this removes it under QEMU too.
        _run(netns_path, ["ip", "link", "del", "dev", tap])


def open_tap(netns_path: str, tap: str = TAP) -> int:
    """An fd attached to `tap` in the netns (close-on-exec), for QEMU's `netdev_add
    tap,fd=`: the calling process enters the netns for the open and comes back.  Only
    for a single-threaded caller (the shim): setns(2) moves the calling thread only,
    and no other thread may see the pod's netns meanwhile."""
    import fcntl
    import struct

    from corral.runtime.syscalls import LinuxSyscalls

    calls = LinuxSyscalls()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            calls.setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                # what QEMU asks for when it opens a tap by name (vnet_hdr: offloads)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack(
                    "16sH22x", tap.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            except OSError as e:
                os.close(fd)
                raise NetworkError(f"attaching to {tap} in {netns_path}: {e}") from None
        finally:
            calls.setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
    return fd


def forward_target(netns_path: str, interface: str = INTERFACE) -> str:
    """The address a port-forward dials to reach the guest's ports: the pod IP.

    Dial it from the host's namespace (corrald's own), NOT from inside the
    pod's netns: there eth0 still carries the pod IP, so the netns routes it
    to its own loopback and nothing listens there (connection refused); and
    the netns's stack cannot reach the guest anyway, since every frame
    arriving on eth0 or tap0 is redirected past it.  From the host the
    connection goes through the bridge, eth0's ingress redirect and the tap,
    as any pod traffic does; the Kubernetes network model guarantees that a
    node reaches its pods' IPs (kubelet's probes rely on it).  Unlike a runc
    pod's port-forward (127.0.0.1 in the pod), a listener bound to the
    guest's loopback only is not reached: that needs the guest agent.

    The IPv4 address if eth0 has one, else its first global IPv6 address.
    """
    (link,) = _ip_json(netns_path, "addr", "show", "dev", interface) or [{}]
    addresses = [a.partition("/")[0] for a in _addresses(link)]
    if not addresses:
        raise NetworkError(f"no address on {interface} in {netns_path}")
    return addresses[0]


def _addresses(link: dict) -> list[str]:
    """IPv4 addresses, then global IPv6 ones; the guest makes its own link-local."""
    infos = link.get("addr_info", [])
    v4 = [i for i in infos if i.get("family") == "inet"]
    v6 = [i for i in infos if i.get("family") == "inet6" and i.get("scope") == "global"]
    return [f"{i['local']}/{i['prefixlen']}" for i in v4 + v6]


def _routes(netns_path: str, interface: str) -> list[Route]:
    """The main table's unicast routes through `interface`, on-link ones first.

    The kernel's own routes (proto kernel: the subnet route an address makes,
    fe80::/64) are left out: the guest's kernel makes them when the address
    is added.  A route on the link (no gateway) comes before the routes via
    a gateway it reaches, so the guest can add them in order.
    """
    routes: list[Route] = []
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        for route in _ip_json(netns_path, family, "route", "show", "table", "main"):
            if (route.get("dev") != interface or route.get("protocol") == "kernel"
                    or route.get("type", "unicast") != "unicast"):
                continue
            dst = route["dst"]
            dst = default if dst == "default" else str(ipaddress.ip_network(dst, strict=False))
            routes.append({"dst": dst, "gw": route.get("gateway", "")})
    return sorted(routes, key=lambda r: r["gw"] != "")


def _ours(netns_path: str, interface: str, tap: str) -> bool:
    """Whether `interface` has an ingress qdisc connect_tap made: its filter redirects
    to `tap`, or it has no filter at all (a connect cut short between the two)."""
    qdiscs = _json(_run(netns_path, ["tc", "-j", "qdisc", "show", "dev", interface]))
    if not any(q.get("kind") == "ingress" for q in qdiscs):
        return False
    filters = _json(_run(netns_path, ["tc", "-j", "filter", "show", "dev", interface,
                                      "parent", INGRESS]))
    actions = [action for f in filters for action in f.get("options", {}).get("actions", [])]
    return not filters or any(a.get("kind") == "mirred" and a.get("to_dev") == tap
                              for a in actions)


def _ip_json(netns_path: str, *args: str) -> list[dict]:
    return _json(_run(netns_path, ["ip", "-j", *args]))


def _json(text: str) -> list[dict]:
    return json.loads(text) if text.strip() else []


def _run(netns_path: str, argv: list[str], stdin: str | None = None) -> str:
    command = [NSENTER, f"--net={netns_path}", *argv]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL if stdin is None else None)
    except subprocess.TimeoutExpired:
        raise NetworkError(f"{' '.join(argv)} in {netns_path}: timed out after "
                           f"{COMMAND_TIMEOUT:g}s") from None
    except FileNotFoundError as e:
        raise NetworkError(f"{e.filename}: not installed (util-linux, iproute2)") from None
    if done.returncode != 0:
        error = "; ".join((done.stderr.strip() or done.stdout.strip()).splitlines())
        raise NetworkError(f"{_failed_command(argv, stdin, error)} in {netns_path}: {error}")
    return done.stdout


def _failed_command(argv: list[str], stdin: str | None, error: str) -> str:
    """The command that failed; for a batch, the line ip/tc name ("Command failed -:N")."""
    if stdin is None:
        return " ".join(argv)
    lines = stdin.splitlines()
    line = re.search(r"Command failed -:(\d+)", error)
    if line and 0 < int(line.group(1)) <= len(lines):
        return f"{argv[0]} {lines[int(line.group(1)) - 1]}"
    return f"{argv[0]} -batch ({'; '.join(lines)})"
