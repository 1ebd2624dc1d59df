"""A pod's network: CNI ADD on setup, DEL on teardown (also after a crash, from the cache).

The ADD result, with the network config and arguments used, is cached per
pod (`<cache_dir>/<pod-id>.json`) before it is reported, so a teardown —
even by a restarted corrald, even with the netns gone — runs DEL with
exactly what ADD had.
"""

from __future__ import annotations

import json
import os

from corral.network.cni import LOOPBACK, CNIError, Network, default_conflist, load_network


class NetworkResult:
    def __init__(self, result: dict):
        self.raw = result
        ips = [entry.get("address", "") for entry in result.get("ips") or []]
        v4 = [ip.split("/")[0] for ip in ips if "." in ip]
        self.ip = v4[0] if v4 else (ips[0].split("/")[0] if ips else "")


class PodNetwork:
    def __init__(self, conf_dir: str, bin_dirs: list[str], cache_dir: str):
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.cache_dir = cache_dir

    def _network(self) -> Network:
        if not os.path.isdir(self.conf_dir) or not any(
                n.endswith((".conflist", ".conf", ".json")) for n in os.listdir(self.conf_dir)):
            os.makedirs(self.conf_dir, exist_ok=True)
            with open(os.path.join(self.conf_dir, "10-corral.conflist"), "w") as f:
                json.dump(default_conflist(), f, indent=2)
        return load_network(self.conf_dir)

    def status(self) -> tuple[bool, str]:
        try:
            network = self._network()
            from corral.network.cni import find_plugin

            for plugin in network.plugins + LOOPBACK.plugins:
                find_plugin(plugin["type"], self.bin_dirs)
        except (CNIError, OSError) as e:
            return False, str(e)
        return True, ""

    def _cache_path(self, pod_id: str) -> str:
        return os.path.join(self.cache_dir, f"{pod_id}.json")

    @staticmethod
    def _args(pod_id: str, name: str, namespace: str, uid: str) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
                f"K8S_POD_INFRA_CONTAINER_ID={pod_id};K8S_POD_UID={uid}")

    def setup(self, pod_id: str, netns: str, *, name: str, namespace: str, uid: str,
              port_mappings: list[dict]) -> NetworkResult:
        network = self._network()
        args = self._args(pod_id, name, namespace, uid)
        capabilities = {"portMappings": port_mappings} if port_mappings else {}
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        cache = {"network": network.to_cache(), "netns": netns, "args": args,
                 "capabilities": capabilities, "result": None}
        _write(self._cache_path(pod_id), cache)  # before ADD: a crash mid-ADD is DEL'd later
        LOOPBACK.add(self.bin_dirs, pod_id, netns, "lo", args, {})
        result = network.add(self.bin_dirs, pod_id, netns, "eth0", args, capabilities)
        cache["result"] = result
        _write(self._cache_path(pod_id), cache)
        return NetworkResult(result)

    def teardown(self, pod_id: str, netns: str = "", **_) -> None:
        """DEL with what ADD used; nothing cached means nothing to undo.  Idempotent."""
        path = self._cache_path(pod_id)
        try:
            with open(path) as f:
                cache = json.load(f)
        except FileNotFoundError:
            return
        except ValueError:
            os.unlink(path)
            return
        network = Network.from_cache(cache["network"])
        target = netns or cache.get("netns", "")
        if target and not os.path.exists(target):
            target = ""  # the plugins clean host-side state without a netns, per the spec
        network.delete(self.bin_dirs, pod_id, target, "eth0", cache["args"],
                       cache["capabilities"], cache.get("result"))
        os.unlink(path)


def _write(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
