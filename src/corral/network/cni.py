"""CNI: network configurations and the plugins that apply them (CNI spec 1.0, as libcni does).

    load_network(conf_dir)       the first valid *.conflist / *.conf / *.json, lexically
    Network.add(invocation)      ADD through the plugin list, each given the previous result;
                                 a failure DELs what ran (the failing plugin too) and raises
    Network.check(invocation, prev_result)   CHECK in order (cniVersion >= 0.4.0)
    Network.delete(invocation, prev_result)  DEL in reverse order, every plugin even if
                                 one fails; plugins tolerate what is already gone (the spec)
    NetworkResult(result)        IPs, interfaces, routes, DNS; `.ip` is the pod IP

Each plugin runs as its own process with the CNI_* environment and its
config on stdin (`name` and `cniVersion` from the list, `prevResult`,
`runtimeConfig` holding only the capabilities the plugin declared), with a
timeout.  A plugin's error (a JSON error object on stdout: code, msg,
details) becomes a CNIError naming the plugin, the command and the network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from dataclasses import dataclass, field

PLUGIN_TIMEOUT = 60.0
SUPPORTED_VERSIONS = ("1.0.0", "0.4.0", "0.3.1", "0.3.0")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")  # the spec's network name
PROTOCOLS = ("tcp", "udp", "sctp")


class CNIError(Exception):
    pass


@dataclass
class Invocation:
    """What a plugin is told besides its config: the CNI_* environment and runtime config."""

    container_id: str
    netns: str
    ifname: str
    args: str = ""
    capabilities: dict = field(default_factory=dict)  # portMappings, … (runtimeConfig)

    def environment(self, command: str, bin_dirs: list[str]) -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": self.container_id,
                "CNI_NETNS": self.netns, "CNI_IFNAME": self.ifname, "CNI_ARGS": self.args,
                "CNI_PATH": ":".join(bin_dirs),
                # the plugins run ip/iptables from PATH; nothing else of ours leaks in
                "PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}


class Network:
    """One network configuration list (a .conf is a list of one plugin)."""

    def __init__(self, name: str, version: str, plugins: list[dict], source: str,
                 disable_check: bool = False):
        self.name = name
        self.version = version
        self.plugins = plugins
        self.source = source
        self.disable_check = disable_check

    def to_cache(self) -> dict:
        return {"name": self.name, "cniVersion": self.version, "plugins": self.plugins,
                "source": self.source, "disableCheck": self.disable_check}

    @classmethod
    def from_cache(cls, value: dict) -> Network:
        network = parse_network(json.dumps(
            {"name": value["name"], "cniVersion": value["cniVersion"],
             "plugins": value["plugins"]}).encode(), value.get("source", "") + " (cached)",
            conflist=True)
        network.source = value.get("source", "")
        network.disable_check = bool(value.get("disableCheck"))
        return network

    # --- operations ------------------------------------------------------------------------------
    def add(self, bin_dirs: list[str], invocation: Invocation) -> dict:
        """ADD through the list; the last plugin's result.  On failure, DEL what was begun."""
        result: dict | None = None
        begun = []
        try:
            for plugin in self.plugins:
                begun.append(plugin)
                result = self._invoke("ADD", plugin, bin_dirs, invocation, result)
        except BaseException:
            # The failing plugin may have done half its work (a veth without an address):
            # DEL is idempotent, so it is undone along with the plugins before it.
            for plugin in reversed(begun):
                try:
                    self._invoke("DEL", plugin, bin_dirs, invocation, result)
                except CNIError:
                    pass
            raise
        return result or {}

    def check(self, bin_dirs: list[str], invocation: Invocation, prev_result: dict) -> None:
        """CHECK every plugin against the cached ADD result (skipped before 0.4.0)."""
        if self.disable_check or self.version in ("0.3.0", "0.3.1"):
            return
        if not prev_result:
            raise CNIError(f"CNI network {self.name}: CHECK needs the result of ADD")
        for plugin in self.plugins:
            self._invoke("CHECK", plugin, bin_dirs, invocation, prev_result)

    def delete(self, bin_dirs: list[str], invocation: Invocation,
               prev_result: dict | None) -> None:
        """DEL in reverse order; every plugin runs, then the errors are raised together."""
        errors = []
        for plugin in reversed(self.plugins):
            try:
                self._invoke("DEL", plugin, bin_dirs, invocation, prev_result)
            except CNIError as e:
                errors.append(str(e))
        if errors:
            raise CNIError("; ".join(errors))

    def plugin_config(self, plugin: dict, invocation: Invocation,
                      prev_result: dict | None) -> dict:
        """The config a plugin reads on stdin, as libcni builds it."""
        config = dict(plugin, name=self.name, cniVersion=self.version)
        if prev_result is not None:
            config["prevResult"] = prev_result
        wanted = {key for key, on in (plugin.get("capabilities") or {}).items() if on}
        runtime_config = {key: value for key, value in invocation.capabilities.items()
                          if key in wanted}
        if runtime_config:
            config["runtimeConfig"] = runtime_config
        return config

    def _invoke(self, command: str, plugin: dict, bin_dirs: list[str], invocation: Invocation,
                prev_result: dict | None) -> dict | None:
        plugin_type = plugin["type"]
        what = f"CNI plugin {plugin_type} {command} (network {self.name})"
        binary = find_plugin(plugin_type, bin_dirs)
        config = self.plugin_config(plugin, invocation, prev_result)
        try:
            done = subprocess.run([binary], input=json.dumps(config).encode(),
                                  env=invocation.environment(command, bin_dirs),
                                  capture_output=True, timeout=PLUGIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CNIError(f"{what}: timed out after {PLUGIN_TIMEOUT:g}s") from None
        except OSError as e:
            raise CNIError(f"{what}: cannot run {binary}: {e.strerror}") from None
        output = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0:
            raise CNIError(f"{what}: {_error_text(output, done)}")
        if command != "ADD":
            return prev_result
        if not output:
            raise CNIError(f"{what}: no result on stdout")
        try:
            result = json.loads(output)
        except ValueError:
            raise CNIError(f"{what}: result is not JSON: {output[:200]!r}") from None
        if not isinstance(result, dict):
            raise CNIError(f"{what}: result is not a JSON object: {output[:200]!r}")
        return result


def _error_text(output: str, done: subprocess.CompletedProcess) -> str:
    stderr = done.stderr.decode(errors="replace").strip()
    try:
        error = json.loads(output)
        if not isinstance(error, dict):
            raise ValueError
    except ValueError:
        return stderr or output or f"exit status {done.returncode}"
    text = str(error.get("msg") or "failed")
    if error.get("code") is not None:
        text = f"error {error['code']}: {text}"
    if error.get("details"):
        text += f" ({error['details']})"
    return text


def find_plugin(plugin_type: str, bin_dirs: list[str]) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CNIError(f"invalid CNI plugin type {plugin_type!r}")
    for directory in bin_dirs:
        path = os.path.join(directory, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CNIError(f"CNI plugin {plugin_type!r} not found in {':'.join(bin_dirs) or '(none)'}")


# --- configs -------------------------------------------------------------------------------------
def parse_network(data: bytes, source: str, conflist: bool | None = None) -> Network:
    """A network config list (or a single .conf, when `conflist` is False or `source` says so)."""
    try:
        document = json.loads(data)
    except ValueError as e:
        raise CNIError(f"{source}: not JSON: {e}") from None
    if not isinstance(document, dict):
        raise CNIError(f"{source}: not a JSON object")
    version = document.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(f"{source}: cniVersion {version!r} is not one of "
                       f"{', '.join(SUPPORTED_VERSIONS)}")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise CNIError(f"{source}: no network name")
    if not NETWORK_NAME.match(name):
        raise CNIError(f"{source}: network name {name!r} has characters other than "
                       "letters, digits, '_', '.' and '-' (or starts with one of the last three)")
    if conflist is None:
        conflist = source.endswith(".conflist")
    if conflist:
        plugins = document.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise CNIError(f"{source}: plugins must be a non-empty list")
    else:
        if "type" not in document and "plugins" in document:
            raise CNIError(f"{source}: a plugin list in a single-plugin config "
                           "(name the file *.conflist)")
        plugins = [{k: v for k, v in document.items() if k not in ("name", "cniVersion")}]
    for i, plugin in enumerate(plugins):
        where = f"{source}: plugins[{i}]"
        if not isinstance(plugin, dict):
            raise CNIError(f"{where} is not an object")
        if not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise CNIError(f"{where} has no type")
        if "/" in plugin["type"] or plugin["type"] in (".", ".."):
            raise CNIError(f"{where}: type {plugin['type']!r} is not a plugin name")
        if not isinstance(plugin.get("capabilities", {}), dict):
            raise CNIError(f"{where}: capabilities must be an object")
        ipam = plugin.get("ipam")
        if ipam is not None and not (isinstance(ipam, dict) and isinstance(ipam.get("type"), str)
                                     and ipam["type"]):
            raise CNIError(f"{where}: ipam must be an object with a type")
    disable_check = document.get("disableCheck", False)
    if not isinstance(disable_check, bool):
        raise CNIError(f"{source}: disableCheck must be true or false")
    return Network(name, version, plugins, source, disable_check)


def config_files(conf_dir: str) -> list[str]:
    try:
        names = os.listdir(conf_dir)
    except FileNotFoundError:
        return []
    return [os.path.join(conf_dir, n) for n in sorted(names) if n.endswith(CONFIG_SUFFIXES)]


def load_network(conf_dir: str) -> Network:
    """The first valid network in `conf_dir` in lexical order, as kubelet and containerd pick it.

    Invalid files are skipped; if none is valid, the error names each file and its problem.
    """
    errors = []
    for path in config_files(conf_dir):
        try:
            with open(path, "rb") as f:
                return parse_network(f.read(), path)
        except CNIError as e:
            errors.append(str(e))
        except OSError as e:
            errors.append(f"{path}: {e.strerror}")
    if errors:
        raise CNIError(f"no valid CNI network config in {conf_dir}: " + "; ".join(errors))
    raise CNIError(f"no CNI network config in {conf_dir}")


def default_conflist() -> dict:
    """Written when the config dir is empty: a bridge with host-local IPAM and portmap.

    Like podman's default network, on 10.85/16 so as not to meet podman's own 10.88/16.
    """
    return {
        "cniVersion": "1.0.0",
        "name": "corral",
        "plugins": [
            {"type": "bridge", "bridge": "corral0", "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.85.0.0/16"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# The pod's loopback: its own network, so `lo` is up whatever the main list holds (go-cni).
LOOPBACK = Network("cni-loopback", "1.0.0", [{"type": "loopback"}], "(built in)")


# --- runtime arguments ---------------------------------------------------------------------------
def kubernetes_args(pod_id: str, name: str, namespace: str, uid: str) -> str:
    """CNI_ARGS as kubelet's runtimes pass them."""
    values = {"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name,
              "K8S_POD_INFRA_CONTAINER_ID": pod_id, "K8S_POD_UID": uid}
    for key, value in values.items():
        if any(c in value for c in ";=") or not value.isprintable():
            raise CNIError(f"CNI_ARGS {key}={value!r}: ';', '=' and control characters "
                           "cannot be passed")
    return "IgnoreUnknown=1;" + ";".join(f"{key}={value}" for key, value in values.items())


def port_mappings(mappings: list[dict]) -> list[dict]:
    """runtimeConfig.portMappings, checked: hostPort, containerPort, protocol, hostIP."""
    checked = []
    for i, mapping in enumerate(mappings):
        where = f"port mapping {i}"
        host_port, container_port = mapping.get("hostPort"), mapping.get("containerPort")
        for label, port in (("hostPort", host_port), ("containerPort", container_port)):
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise CNIError(f"{where}: {label} {port!r} is not a port (1-65535)")
        protocol = str(mapping.get("protocol") or "tcp").lower()
        if protocol not in PROTOCOLS:
            raise CNIError(f"{where}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        entry = {"hostPort": host_port, "containerPort": container_port, "protocol": protocol}
        host_ip = mapping.get("hostIP") or ""
        if host_ip:
            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                raise CNIError(f"{where}: hostIP {host_ip!r} is not an IP address") from None
            entry["hostIP"] = host_ip
        checked.append(entry)
    return checked


# --- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path for interfaces inside the pod; "" on the host


@dataclass(frozen=True)
class IPConfig:
    address: str              # CIDR: 10.88.0.5/16
    gateway: str = ""
    interface: str = ""       # the interface's name, from the result's index

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str = ""


class NetworkResult:
    """A CNI result (any version from 0.3.0 on), read into plain records."""

    def __init__(self, result: dict | None):
        result = result or {}
        self.raw = result
        try:
            self.interfaces = [Interface(i.get("name", ""), i.get("mac", ""), i.get("sandbox", ""))
                               for i in result.get("interfaces") or []]
            self.ips = [self._ip(entry) for entry in result.get("ips") or []]
            self.routes = [Route(r["dst"], r.get("gw", "")) for r in result.get("routes") or []]
            dns = result.get("dns") or {}
            self.nameservers = list(dns.get("nameservers") or [])
            self.search = list(dns.get("search") or [])
            self.dns_domain = dns.get("domain", "")
            self.dns_options = list(dns.get("options") or [])
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CNIError(f"malformed CNI result ({e}): {json.dumps(result)[:200]}") from None

    def _ip(self, entry: dict) -> IPConfig:
        ipaddress.ip_interface(entry["address"])  # raises ValueError for garbage
        index = entry.get("interface")
        name = ""
        if isinstance(index, int) and 0 <= index < len(self.interfaces):
            name = self.interfaces[index].name
        return IPConfig(entry["address"], entry.get("gateway", ""), name)

    @property
    def ip(self) -> str:
        """The pod IP: the first IPv4 address, else the first address, else ""."""
        v4 = [entry.ip for entry in self.ips if entry.version == 4]
        return v4[0] if v4 else (self.ips[0].ip if self.ips else "")

    @property
    def additional_ips(self) -> list[str]:
        """Every other address (PodSandboxStatus.network.additional_ips)."""
        first = self.ip
        return [entry.ip for entry in self.ips if entry.ip != first]

    def __repr__(self) -> str:
        return f"NetworkResult(ips={[e.address for e in self.ips]})"
