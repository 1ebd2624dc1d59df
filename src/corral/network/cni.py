"""CNI: network configurations and the plugins that apply them (CNI spec 1.0, as libcni does).

    load_network(conf_dir)   the first valid *.conflist / *.conf / *.json, lexically
    Network.add(...)         ADD through the plugin list, each with the previous result
    Network.delete(...)      DEL in reverse order; tolerant of what is already gone

A plugin's error (a JSON error object on stdout) becomes a CNIError naming
the plugin; plugins run with a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess

PLUGIN_TIMEOUT = 60.0
SUPPORTED_VERSIONS = ("1.0.0", "0.4.0", "0.3.1", "0.3.0")


class CNIError(Exception):
    pass


class Network:
    def __init__(self, name: str, version: str, plugins: list[dict], source: str):
        self.name = name
        self.version = version
        self.plugins = plugins
        self.source = source

    def to_cache(self) -> dict:
        return {"name": self.name, "cniVersion": self.version, "plugins": self.plugins,
                "source": self.source}

    @classmethod
    def from_cache(cls, value: dict) -> Network:
        return cls(value["name"], value["cniVersion"], value["plugins"], value["source"])

    # --- operations ------------------------------------------------------------------------------
    def add(self, bin_dirs: list[str], container_id: str, netns: str, ifname: str,
            args: str, capabilities: dict) -> dict:
        result: dict | None = None
        done = []
        try:
            for plugin in self.plugins:
                result = self._invoke("ADD", plugin, bin_dirs, container_id, netns, ifname,
                                      args, capabilities, result)
                done.append(plugin)
        except BaseException:
            for plugin in reversed(done):
                try:
                    self._invoke("DEL", plugin, bin_dirs, container_id, netns, ifname, args,
                                 capabilities, None)
                except CNIError:
                    pass
            raise
        return result or {}

    def delete(self, bin_dirs: list[str], container_id: str, netns: str, ifname: str,
               args: str, capabilities: dict, prev_result: dict | None) -> None:
        errors = []
        for plugin in reversed(self.plugins):
            try:
                self._invoke("DEL", plugin, bin_dirs, container_id, netns, ifname, args,
                             capabilities, prev_result)
            except CNIError as e:
                errors.append(str(e))
        if errors:
            raise CNIError("; ".join(errors))

    def _invoke(self, command: str, plugin: dict, bin_dirs: list[str], container_id: str,
                netns: str, ifname: str, args: str, capabilities: dict,
                prev_result: dict | None) -> dict:
        plugin_type = plugin["type"]
        binary = find_plugin(plugin_type, bin_dirs)
        config = dict(plugin, name=self.name, cniVersion=self.version)
        if prev_result is not None:
            config["prevResult"] = prev_result
        wanted = {key for key, on in (plugin.get("capabilities") or {}).items() if on}
        runtime_config = {key: value for key, value in capabilities.items() if key in wanted}
        if runtime_config:
            config["runtimeConfig"] = runtime_config
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join(bin_dirs),
               "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        try:
            done = subprocess.run([binary], input=json.dumps(config).encode(), env=env,
                                  capture_output=True, timeout=PLUGIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CNIError(f"CNI plugin {plugin_type} {command}: timed out after "
                           f"{PLUGIN_TIMEOUT:.0f}s") from None
        output = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0:
            raise CNIError(f"CNI plugin {plugin_type} {command}: {_error_text(output, done)}")
        if command != "ADD":
            return prev_result or {}
        try:
            return json.loads(output) if output else (prev_result or {})
        except ValueError:
            raise CNIError(f"CNI plugin {plugin_type} ADD: result is not JSON: "
                           f"{output[:200]!r}") from None


def _error_text(output: str, done) -> str:
    try:
        error = json.loads(output)
        text = error.get("msg") or f"error code {error.get('code')}"
        return text + (f" ({error['details']})" if error.get("details") else "")
    except (ValueError, AttributeError):
        stderr = done.stderr.decode(errors="replace").strip()
        return stderr or output or f"exit status {done.returncode}"


def find_plugin(plugin_type: str, bin_dirs: list[str]) -> str:
    if not plugin_type or "/" in plugin_type:
        raise CNIError(f"invalid CNI plugin type {plugin_type!r}")
    for directory in bin_dirs:
        path = os.path.join(directory, plugin_type)
        if os.access(path, os.X_OK):
            return path
    raise CNIError(f"CNI plugin {plugin_type!r} not found in {':'.join(bin_dirs)}")


def parse_network(data: bytes, source: str) -> Network:
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
    if source.endswith(".conflist"):
        plugins = document.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise CNIError(f"{source}: plugins must be a non-empty list")
    else:
        plugins = [{k: v for k, v in document.items() if k not in ("name", "cniVersion")}]
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise CNIError(f"{source}: plugins[{i}] has no type")
    return Network(name, version, plugins, source)


def load_network(conf_dir: str) -> Network:
    """The first valid network in `conf_dir` (lexical order), as libcni picks it."""
    try:
        names = sorted(n for n in os.listdir(conf_dir)
                       if n.endswith((".conflist", ".conf", ".json")))
    except FileNotFoundError:
        names = []
    errors = []
    for name in names:
        path = os.path.join(conf_dir, name)
        try:
            with open(path, "rb") as f:
                return parse_network(f.read(), path)
        except (CNIError, OSError) as e:
            errors.append(str(e))
    if errors:
        raise CNIError("no valid CNI network: " + "; ".join(errors))
    raise CNIError(f"no CNI network config in {conf_dir}")


def default_conflist() -> dict:
    """Written when the config dir is empty: a bridge with host-local IPAM and portmap."""
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


LOOPBACK = Network("cni-loopback", "1.0.0", [{"type": "loopback"}], "(built in)")
