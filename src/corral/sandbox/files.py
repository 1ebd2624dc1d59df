"""The files a pod gives its containers: /etc/hostname, /etc/hosts, /etc/resolv.conf."""

from __future__ import annotations

import os

HOST_RESOLV_CONF = "/etc/resolv.conf"
HOST_HOSTS = "/etc/hosts"


def write_file(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def hosts_text(hostname: str, ip: str = "") -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes",
             "fe00::2\tip6-allrouters"]
    if ip and hostname:
        lines.append(f"{ip}\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf_text(dns_config) -> str:
    """From the CRI DNSConfig; the host's resolv.conf when the pod gives none."""
    servers, searches, options = (list(dns_config.servers), list(dns_config.searches),
                                  list(dns_config.options)) if dns_config else ([], [], [])
    if not (servers or searches or options):
        try:
            with open(HOST_RESOLV_CONF) as f:
                return f.read()
        except FileNotFoundError:
            return ""
    lines = [f"nameserver {server}" for server in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def host_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""
