"""In the guest: IPv4 addresses, routes and link state by ioctl, as the agent sets up a pod.

Each `ip` command would be a fork of the agent (a large Python process) and an exec
of busybox, which under TCG is ~0.1 s apiece: the whole network of a pod restored
from a template took 0.4-0.6 s that way.  IPv4 has the old socket ioctls; IPv6,
renames and routes on the link still go through busybox `ip` (agent.py).  No
ctypes: importing it is ~0.3 s of a cold guest's boot under TCG.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCADDRT = 0x890B
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
RTF_UP, RTF_GATEWAY, RTF_HOST = 0x1, 0x2, 0x4


# struct rtentry (linux/route.h), native alignment: pad1, dst, gateway, genmask, flags,
# pad2, pad3, pad4, metric, dev (a pointer: NULL, the kernel finds the device from the
# gateway), mtu, window, irtt
_RTENTRY = "L16s16s16sHhLPhPLLH"


def is_ipv4(cidr: str) -> bool:
    return ":" not in cidr


def link_up(name: str) -> None:
    with _socket() as sock:
        request = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack_from("H", fcntl.ioctl(sock, SIOCGIFFLAGS, request), 16)[0]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


def set_mtu(name: str, mtu: int) -> None:
    with _socket() as sock:
        fcntl.ioctl(sock, SIOCSIFMTU, struct.pack("16si12x", name.encode(), mtu))


def add_address(name: str, cidr: str) -> None:
    """`ip addr add A.B.C.D/N dev name` (the kernel adds the subnet's route, as ip's does)."""
    address, prefix = _split(cidr)
    with _socket() as sock:
        fcntl.ioctl(sock, SIOCSIFADDR, struct.pack("16s16s", name.encode(), _sockaddr(address)))
        fcntl.ioctl(sock, SIOCSIFNETMASK, struct.pack("16s16s", name.encode(),
                                                      _sockaddr(_mask(prefix))))


def add_route(dst: str, gateway: str) -> None:
    """`ip route add dst via gateway`; dst "default" or A.B.C.D/N.  A route on the link
    (no gateway) needs its device named, which this ioctl takes only as a pointer: the
    agent gives those to busybox `ip`."""
    network, prefix = ("0.0.0.0", 0) if dst == "default" else _split(dst)
    flags = RTF_UP | RTF_GATEWAY | (RTF_HOST if prefix == 32 else 0)
    entry = struct.pack(_RTENTRY, 0, _sockaddr(network), _sockaddr(gateway),
                        _sockaddr(_mask(prefix)), flags, 0, 0, 0, 0, 0, 0, 0, 0)
    with _socket() as sock:
        fcntl.ioctl(sock, SIOCADDRT, entry)


def _socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _split(cidr: str) -> tuple[str, int]:
    address, _, prefix = cidr.partition("/")
    return address, int(prefix or 32)


def _mask(prefix: int) -> str:
    return socket.inet_ntoa(struct.pack(">I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))


def _sockaddr(address: str) -> bytes:
    return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))
