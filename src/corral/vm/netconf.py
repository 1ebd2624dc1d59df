"""In the guest: IPv4 addresses, routes and link state by ioctl, as the agent sets up a pod.

Each `ip` command would be a fork of the agent (a large Python process) and an exec
of busybox, which under TCG is ~0.1 s apiece: the whole network of a pod restored
from a template took 0.4-0.6 s that way.  IPv4 has the old socket ioctls for all
of it; IPv6 (and renames) still go through busybox `ip` (agent.py).
"""

from __future__ import annotations

import ctypes
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


class _Rtentry(ctypes.Structure):  # linux/route.h
    _fields_ = [("rt_pad1", ctypes.c_ulong), ("rt_dst", ctypes.c_ubyte * 16),
                ("rt_gateway", ctypes.c_ubyte * 16), ("rt_genmask", ctypes.c_ubyte * 16),
                ("rt_flags", ctypes.c_ushort), ("rt_pad2", ctypes.c_short),
                ("rt_pad3", ctypes.c_ulong), ("rt_pad4", ctypes.c_void_p),
                ("rt_metric", ctypes.c_short), ("rt_dev", ctypes.c_char_p),
                ("rt_mtu", ctypes.c_ulong), ("rt_window", ctypes.c_ulong),
                ("rt_irtt", ctypes.c_ushort)]


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


def add_route(dst: str, gateway: str, dev: str) -> None:
    """`ip route add dst [via gateway] dev dev`; dst "default" or A.B.C.D/N."""
    network, prefix = ("0.0.0.0", 0) if dst == "default" else _split(dst)
    entry = _Rtentry()
    entry.rt_dst[:] = _sockaddr(network)
    entry.rt_genmask[:] = _sockaddr(_mask(prefix))
    entry.rt_flags = RTF_UP | (RTF_HOST if prefix == 32 else 0)
    if gateway:
        entry.rt_gateway[:] = _sockaddr(gateway)
        entry.rt_flags |= RTF_GATEWAY
    device = ctypes.create_string_buffer(dev.encode())  # alive across the ioctl
    entry.rt_dev = ctypes.cast(device, ctypes.c_char_p)
    with _socket() as sock:
        fcntl.ioctl(sock, SIOCADDRT, bytearray(entry))


def _socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _split(cidr: str) -> tuple[str, int]:
    address, _, prefix = cidr.partition("/")
    return address, int(prefix or 32)


def _mask(prefix: int) -> str:
    return socket.inet_ntoa(struct.pack(">I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))


def _sockaddr(address: str) -> bytes:
    return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))
