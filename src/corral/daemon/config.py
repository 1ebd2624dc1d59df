"""corrald's configuration: one TOML file, every key with a default.

    root = "/var/lib/corral"              # images, snapshots, metadata.db
    state = "/run/corral"                 # shims, pinned namespaces, bundles (tmpfs)
    listen = "unix:///run/corral/corral.sock"
    registries_conf = ""                  # containers-registries.conf(5); "" = none
    auth_file = ""                        # Docker config.json / containers-auth.json
    certs_dir = "/etc/containers/certs.d"
    log_level = "info"                    # debug | info | warning | error
    default_runtime = "native"
    pod_cgroup_parent = "/corral"         # pods without a CRI cgroup_parent go here
    sandbox_image = ""                    # not used: pods pin namespaces, no pause container

    [cni]
    conf_dir = "/etc/cni/net.d"
    bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
    cache_dir = ""                        # "" = <root>/cni: ADD results DEL needs, kept
                                          # across reboots (host-local's IPs are kept too)

    [stream]                              # the URLs Exec, Attach and PortForward return
    address = "127.0.0.1"                 # an IP address; 0.0.0.0 or :: listens everywhere
    port = 0                              # 0: any free port
    idle_timeout = 14400                  # seconds a stream may idle both ways (containerd's 4h)

    [runtimes.native]                     # containers forked by the shim, corral.runtime in process
    type = "native"
    [runtimes.runc]                       # any runc-compatible binary: a RuntimeClass handler
    type = "oci"
    path = "/usr/sbin/runc"
    runtime_flags = []                    # global flags before the command
    [runtimes.runsc]                      # gVisor: one sandbox per pod (shim/handlers/runsc.py)
    type = "runsc"
    path = "/usr/bin/runsc"
    platform = "ptrace"                   # kvm needs real VMX/SVM; systrap on newer runsc
    overhead = { memory = "64MiB", cpu = 0.1 }  # what its RuntimeClass should declare
    [runtimes.vm]                         # a QEMU micro-VM per pod (shim/handlers/vm.py)
    type = "vm"
    memory = "128MiB"                     # guest RAM; vcpus = 1
    cache_dir = "/var/cache/corral/vm"    # vmlinux extracted from /boot, initramfs, accelerator
    templates = true                      # pods restored from a saved VM (vm/template.py)
    template_dir = "/run/corral/vm-templates"  # tmpfs; removed when corrald stops
    template_at_start = false             # true: built when corrald starts, not at the first pod
    pool = 0                              # VMs made ready before pods ask (sandbox/pool.py)
    overhead = { memory = "256MiB", cpu = 0.25 }

A handler whose binary (or QEMU and a guest kernel, for vm) is not on the host
is not offered: Status leaves it out and RunPodSandbox refuses it with the reason.

Flags (`--root`, `--state`, `--listen`, `--config`) override the file.
"""

from __future__ import annotations

import os
import tomllib

from corral.shim.handlers import TYPES, VM_CACHE_DIR, VM_TEMPLATE_DIR, HandlerSpec, UnknownHandler

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    pass




class CniConfig:
    __slots__ = ("conf_dir", "bin_dirs", "cache_dir", "legacy_cache_dir")

    def __init__(self, conf_dir: str, bin_dirs: list[str], cache_dir: str,
                 legacy_cache_dir: str = ""):
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.cache_dir = cache_dir
        # The default of earlier corralds (<state>/cni): caches found there are moved over.
        self.legacy_cache_dir = legacy_cache_dir


class StreamConfig:
    __slots__ = ("address", "port", "idle_timeout")

    def __init__(self, address: str, port: int, idle_timeout: int):
        self.address = address
        self.port = port
        self.idle_timeout = idle_timeout


class Config:
    def __init__(self, values: dict, runtimes: dict[str, HandlerSpec], cni: CniConfig,
                 stream: StreamConfig | None = None):
        self.root: str = values["root"]
        self.state: str = values["state"]
        self.listen: str = values["listen"]
        self.registries_conf: str = values["registries_conf"]
        self.auth_file: str = values["auth_file"]
        self.certs_dir: str = values["certs_dir"]
        self.log_level: str = values["log_level"]
        self.default_runtime: str = values["default_runtime"]
        self.pod_cgroup_parent: str = values["pod_cgroup_parent"]
        self.runtimes = runtimes
        self.cni = cni
        self.stream = stream or StreamConfig(*STREAM_DEFAULTS.values())

    @property
    def socket_path(self) -> str:
        return self.listen.removeprefix("unix://")

    def handler(self, name: str) -> HandlerSpec:
        """The runtime handler for a CRI runtime_handler ("" is the default), whether or
        not it can run here (HandlerSpec.unavailable)."""
        handler = self.runtimes.get(name or self.default_runtime)
        if handler is None:
            raise UnknownHandler(f"no runtime handler {name!r} (configured: "
                                 f"{', '.join(sorted(self.runtimes))})")
        return handler

    def offered(self) -> list[HandlerSpec]:
        """The handlers that can run on this host, by name."""
        return [h for _, h in sorted(self.runtimes.items()) if not h.unavailable()]


DEFAULTS = {
    "root": "/var/lib/corral",
    "state": "/run/corral",
    "listen": "",  # from state
    "registries_conf": "",
    "auth_file": "",
    "certs_dir": "/etc/containers/certs.d",
    "log_level": "info",
    "default_runtime": "native",
    "pod_cgroup_parent": "/corral",
    "sandbox_image": "",
}
STREAM_DEFAULTS = {"address": "127.0.0.1", "port": 0, "idle_timeout": 4 * 3600}
DEFAULT_RUNTIMES = {
    "native": {"type": "native"},
    "runc": {"type": "oci", "path": "/usr/sbin/runc"},
    "crun": {"type": "oci", "path": "/usr/bin/crun"},
    "runsc": {"type": "runsc", "path": "/usr/bin/runsc", "platform": "ptrace",
              "overhead": {"memory": "64MiB", "cpu": 0.1}},
    "vm": {"type": "vm", "memory": "128MiB", "overhead": {"memory": "256MiB", "cpu": 0.25}},
}
SIZE_UNITS = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3,
              "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def load(path: str | None = None, **overrides) -> Config:
    document = {}
    if path:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config {path}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {path}: not valid TOML: {e}") from None
    where = f"config {path}" if path else "config"
    known = set(DEFAULTS) | {"cni", "runtimes", "stream"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values = dict(DEFAULTS)
    for key in DEFAULTS:
        if key in document:
            if not isinstance(document[key], str):
                raise ConfigError(f"{where}: {key} must be a string")
            values[key] = document[key]
    for key, value in overrides.items():
        if value:
            values[key] = value
    for key in ("root", "state"):
        if not os.path.isabs(values[key]):
            raise ConfigError(f"{where}: {key} must be an absolute path, not {values[key]!r}")
    if not values["listen"]:
        values["listen"] = "unix://" + os.path.join(values["state"], "corral.sock")
    if not values["listen"].startswith("unix:///"):
        raise ConfigError(f"{where}: listen must be unix:///absolute/path, not "
                          f"{values['listen']!r}")
    if values["log_level"] not in LOG_LEVELS:
        raise ConfigError(f"{where}: log_level must be one of {', '.join(LOG_LEVELS)}")
    return Config(values, _runtimes(document.get("runtimes", {}), where, values),
                  _cni(document.get("cni", {}), where, values),
                  _stream(document.get("stream", {}), where))


def _runtimes(table, where: str, values: dict) -> dict[str, HandlerSpec]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: runtimes must be a table")
    merged = {name: dict(spec) for name, spec in DEFAULT_RUNTIMES.items()}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: runtimes.{name} must be a table")
        merged[name] = {**merged.get(name, {}), **spec}
    handlers = {}
    for name, spec in merged.items():
        kind = spec.get("type", "oci")
        if kind not in TYPES:
            raise ConfigError(f"{where}: runtimes.{name}.type must be one of {', '.join(TYPES)}")
        path = spec.get("path", "")
        if kind in ("oci", "runsc") and not (isinstance(path, str) and os.path.isabs(path)):
            raise ConfigError(f"{where}: runtimes.{name}.path must be an absolute path")
        flags = spec.get("runtime_flags", [])
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise ConfigError(f"{where}: runtimes.{name}.runtime_flags must be a list of strings")
        options = {k: v for k, v in spec.items() if k not in ("type", "path", "overhead")}
        if kind == "vm":  # the guest kernel and initramfs, made once per host (setup does)
            options.setdefault("cache_dir", VM_CACHE_DIR)
            options.setdefault("template_dir", VM_TEMPLATE_DIR)
        if "memory" in options:
            options["memory"] = _size(options["memory"], f"{where}: runtimes.{name}.memory")
        if "pool" in options and (kind != "vm" or isinstance(options["pool"], bool) or
                                  not isinstance(options["pool"], int) or
                                  not 0 <= options["pool"] <= 64):
            raise ConfigError(f"{where}: runtimes.{name}.pool must be a number of VMs from 0 "
                              "to 64 (vm handlers only)")
        handlers[name] = HandlerSpec(name, kind, path, options,
                                     _overhead(spec.get("overhead", {}), f"{where}: runtimes."
                                               f"{name}.overhead"))
    if values["default_runtime"] not in handlers:
        raise ConfigError(f"{where}: default_runtime {values['default_runtime']!r} is not in "
                          "runtimes")
    return handlers


def _overhead(table, where: str) -> dict:
    """A RuntimeClass's pod overhead: {"memory": bytes, "cpu": cores}."""
    if not isinstance(table, dict) or set(table) - {"memory", "cpu"}:
        raise ConfigError(f"{where} must be a table of memory and cpu")
    overhead = {}
    if "memory" in table:
        overhead["memory"] = _size(table["memory"], f"{where}.memory")
    if "cpu" in table:
        cpu = table["cpu"]
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu < 0:
            raise ConfigError(f"{where}.cpu must be a number of cores")
        overhead["cpu"] = float(cpu)
    return overhead


def _size(value, where: str) -> int:
    """Bytes from 123, "64MiB", "1G" (Kubernetes' quantity suffixes, case-insensitive)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower().removesuffix("b")
    number = text.rstrip("kmgi")
    try:
        return int(float(number) * SIZE_UNITS[text[len(number):]])
    except (ValueError, KeyError):
        raise ConfigError(f"{where} must be a size such as 128MiB, not {value!r}") from None


def _cni(table, where: str, values: dict) -> CniConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: cni must be a table")
    unknown = sorted(set(table) - {"conf_dir", "bin_dirs", "cache_dir"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) cni.{', cni.'.join(unknown)}")
    conf_dir = table.get("conf_dir", "/etc/cni/net.d")
    bin_dirs = table.get("bin_dirs", ["/usr/lib/cni", "/opt/cni/bin"])
    cache_dir = table.get("cache_dir", "")
    if not isinstance(conf_dir, str) or not isinstance(cache_dir, str):
        raise ConfigError(f"{where}: cni.conf_dir and cni.cache_dir must be strings")
    if not isinstance(bin_dirs, list) or not all(isinstance(d, str) for d in bin_dirs):
        raise ConfigError(f"{where}: cni.bin_dirs must be a list of strings")
    if cache_dir:
        return CniConfig(conf_dir, bin_dirs, cache_dir)
    # Persistent, as libcni's /var/lib/cni/results: after a reboot DEL still finds what ADD
    # did, and releases the IPs host-local keeps in /var/lib/cni/networks.
    return CniConfig(conf_dir, bin_dirs, os.path.join(values["root"], "cni"),
                     legacy_cache_dir=os.path.join(values["state"], "cni"))


def _stream(table, where: str) -> StreamConfig:
    import ipaddress

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: stream must be a table")
    unknown = sorted(set(table) - set(STREAM_DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) stream.{', stream.'.join(unknown)}")
    values = {**STREAM_DEFAULTS, **table}
    try:
        ipaddress.ip_address(values["address"])
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: stream.address must be an IP address, not "
                          f"{values['address']!r}") from None
    port, idle = values["port"], values["idle_timeout"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{where}: stream.port must be a number from 0 to 65535")
    if not isinstance(idle, int) or isinstance(idle, bool) or idle <= 0:
        raise ConfigError(f"{where}: stream.idle_timeout must be a positive number of seconds")
    return StreamConfig(values["address"], port, idle)
