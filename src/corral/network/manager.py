"""A pod's network: CNI ADD on setup, DEL on teardown (also after a crash, from the cache).

    net = PodNetwork(conf_dir, bin_dirs, cache_dir)
    result = net.setup(pod_id, netns_path, name=..., namespace=..., uid=..., port_mappings=[...])
    result.ip                        the pod IP (first IPv4)
    net.check(pod_id)                CNI CHECK against what ADD returned
    net.teardown(pod_id, netns_path) DEL; idempotent, works with the netns already gone
    net.status()                     (ready, message) for the CRI NetworkReady condition
    net.adopt_legacy_cache()         move caches an older corrald kept elsewhere (at start)

The network config, CNI_ARGS, runtime config and netns used are cached per
pod (`<cache_dir>/<pod-id>.json`, written and fsynced) BEFORE the first
plugin runs, and the ADD result is added when ADD is done: a teardown — by
a restarted corrald, with the config dir since edited, with the netns
gone — runs DEL with exactly what ADD had (libcni keeps the same in
/var/lib/cni/results).  No cache means ADD never began: nothing to undo.
corrald keeps it under its root, not its state dir: a reboot wipes /run but
not the IPs host-local allocated (/var/lib/cni/networks), which only DEL
releases.

The pod gets two networks, as with containerd: the built-in loopback
network (`lo` up) and the first valid config of `conf_dir` (on `eth0`).
If the config dir holds no config file at all, a default conflist
(bridge corral0 + host-local 10.85.0.0/16 + portmap) is written there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator

from corral.network import netns as ns
from corral.network.cni import (
    LOOPBACK,
    CNIError,
    Invocation,
    Network,
    NetworkResult,
    config_files,
    default_conflist,
    find_plugin,
    kubernetes_args,
    load_network,
    port_mappings,
)

__all__ = ["CNIError", "NetworkResult", "PodNetwork"]

IFNAME = "eth0"
DEFAULT_CONFLIST = "10-corral.conflist"
CACHE_FORMAT = 1
STAND_IN_PEER = "stand-in"

log = logging.getLogger("corral.network")


class PodNetwork:
    def __init__(self, conf_dir: str, bin_dirs: list[str], cache_dir: str,
                 legacy_cache_dir: str = ""):
        self.conf_dir = conf_dir
        self.bin_dirs = list(bin_dirs)
        self.cache_dir = cache_dir
        self.legacy_cache_dir = legacy_cache_dir

    # --- config ----------------------------------------------------------------------------------
    def network(self) -> Network:
        """The network pods join: the first valid config, the default one if there is none."""
        if not config_files(self.conf_dir):
            try:
                self._write_default()
            except OSError as e:
                raise CNIError(f"no CNI network config in {self.conf_dir}, and the default "
                               f"cannot be written there: {e.strerror}") from None
        return load_network(self.conf_dir)

    def _write_default(self) -> None:
        os.makedirs(self.conf_dir, mode=0o755, exist_ok=True)
        path = os.path.join(self.conf_dir, DEFAULT_CONFLIST)
        _write_atomic(path, default_conflist(), mode=0o644)
        log.info("wrote the default CNI network config %s", path)

    def status(self) -> tuple[bool, str]:
        """NetworkReady: a valid config whose plugins (and loopback) are all installed."""
        try:
            self._check_plugins(self.network())
        except CNIError as e:
            return False, str(e)
        except OSError as e:
            return False, f"CNI config dir {self.conf_dir}: {e.strerror}"
        return True, ""

    # --- setup / check / teardown ----------------------------------------------------------------
    def setup(self, pod_id: str, netns: str, *, name: str, namespace: str, uid: str,
              port_mappings: list[dict] | tuple = ()) -> NetworkResult:
        """CNI ADD of loopback and the pod network into `netns`; the result (pod IP …).

        On failure everything begun is DEL'd and the cache removed; if a DEL fails too,
        the cache stays so that teardown() can finish the job.
        """
        cache_path = self._cache_path(pod_id)
        if os.path.exists(cache_path):
            raise CNIError(f"pod {pod_id}: network already set up (teardown first)")
        network = self.network()
        os.close(ns.open_namespace(netns, "net"))  # a clear error if no netns is pinned there
        invocation = Invocation(pod_id, netns, IFNAME, kubernetes_args(pod_id, name, namespace,
                                                                      uid))
        mappings = _port_mappings(port_mappings)
        if mappings:
            invocation.capabilities["portMappings"] = mappings
        self._check_plugins(network)
        cache = {"format": CACHE_FORMAT, "network": network.to_cache(), "netns": netns,
                 "ifname": IFNAME, "args": invocation.args,
                 "capabilities": invocation.capabilities, "result": None}
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        _write_atomic(cache_path, cache)  # before ADD: a crash mid-ADD is DEL'd later
        try:
            cache["loopback_result"] = LOOPBACK.add(
                self.bin_dirs, Invocation(pod_id, netns, "lo", invocation.args))
            result = network.add(self.bin_dirs, invocation)
            record = NetworkResult(result)
        except BaseException:
            try:
                self.teardown(pod_id, netns)
            except CNIError as undo:
                log.warning("pod %s: undoing a failed CNI ADD: %s", pod_id[:12], undo)
            raise
        cache["result"] = result
        _write_atomic(cache_path, cache)
        return record

    def check(self, pod_id: str, netns: str = "") -> None:
        """CNI CHECK: the pod's network is still what ADD made (raises CNIError if not)."""
        cache = self._read_cache(pod_id)
        if cache is None or not cache.get("result"):
            raise CNIError(f"pod {pod_id}: no network set up")
        network = Network.from_cache(cache["network"])
        target = netns or cache["netns"]
        LOOPBACK.check(self.bin_dirs, Invocation(pod_id, target, "lo", cache["args"]),
                       cache.get("loopback_result") or {})
        network.check(self.bin_dirs, Invocation(pod_id, target, cache["ifname"], cache["args"],
                                                cache["capabilities"]), cache["result"])

    def teardown(self, pod_id: str, netns: str = "", **_ignored) -> None:
        """DEL with what ADD used, netns or not; nothing cached → nothing to undo.

        Idempotent.  Extra keyword arguments (the pod's name, mappings …) are accepted
        and ignored: the cache has what ADD had.  A failing DEL raises CNIError and keeps
        the cache, so a later teardown retries.
        """
        path = self._cache_path(pod_id)
        try:
            cache = self._read_cache(pod_id)
        except CNIError as e:
            log.warning("%s; DEL with the current config instead", e)
            network = self.network()
            self._delete(network, Invocation(pod_id, _live(netns), IFNAME,
                                             kubernetes_args(pod_id, "", "", "")), None)
            os.unlink(path)
            return
        if cache is None:
            return
        network = Network.from_cache(cache["network"])
        target = _live(netns or cache["netns"])
        invocation = Invocation(pod_id, target, cache["ifname"], cache["args"],
                                cache["capabilities"])
        addresses = _sandbox_addresses(cache.get("result"), cache["ifname"])
        if not addresses or (target and _has_interface(target, cache["ifname"])):
            self._delete(network, invocation, cache.get("result"))
        else:
            with _stand_in_netns(path + ".stand-in", cache["ifname"], addresses) as stand_in:
                invocation.netns = stand_in
                self._delete(network, invocation, cache.get("result"))
        os.unlink(path)
        _fsync_dir(self.cache_dir)

    def cached_result(self, pod_id: str) -> NetworkResult | None:
        """The ADD result of a pod set up earlier (by this or an earlier corrald)."""
        cache = self._read_cache(pod_id)
        return NetworkResult(cache["result"]) if cache and cache.get("result") else None

    def adopt_legacy_cache(self) -> int:
        """Move the caches of pods set up by an older corrald, which kept them in its state
        dir, into `cache_dir`; how many.  Idempotent: a crash midway leaves each cache in
        one place or both, and the copy in `cache_dir` wins."""
        legacy = self.legacy_cache_dir
        if not legacy or os.path.realpath(legacy) == os.path.realpath(self.cache_dir):
            return 0
        try:
            names = sorted(os.listdir(legacy))
        except FileNotFoundError:
            return 0
        moved = 0
        for name in names:
            source = os.path.join(legacy, name)
            if name.endswith(".stand-in"):
                ns.unpin_namespaces(source)  # a teardown cut short; DEL is redone from the cache
                continue
            if name.endswith(".json"):
                target = os.path.join(self.cache_dir, name)
                if not os.path.exists(target):
                    os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
                    with open(source, "rb") as f:
                        _write_atomic_bytes(target, f.read())
                    moved += 1
            if name.endswith((".json", ".tmp")):  # .tmp: a write cut short
                os.unlink(source)
        with contextlib.suppress(OSError):
            os.rmdir(legacy)
        if moved:
            log.info("moved %d CNI cache(s) from %s to %s", moved, legacy, self.cache_dir)
        return moved

    # --- helpers ---------------------------------------------------------------------------------
    def _delete(self, network: Network, invocation: Invocation, result: dict | None) -> None:
        errors = []
        # libcni hands DEL the cached result only from 0.4.0 on
        prev = result if network.version not in ("0.3.0", "0.3.1") else None
        for net, inv, prev_result in (
                (network, invocation, prev),
                (LOOPBACK, Invocation(invocation.container_id, invocation.netns, "lo",
                                      invocation.args), None)):
            try:
                net.delete(self.bin_dirs, inv, prev_result)
            except CNIError as e:
                errors.append(str(e))
        if errors:
            raise CNIError(f"pod {invocation.container_id[:12]}: " + "; ".join(errors))

    def _check_plugins(self, network: Network) -> None:
        """Every plugin of the list, its IPAM plugin and loopback are installed."""
        for plugin in LOOPBACK.plugins + network.plugins:
            for name in (plugin["type"], (plugin.get("ipam") or {}).get("type")):
                try:
                    if name:
                        find_plugin(name, self.bin_dirs)
                except CNIError as e:
                    raise CNIError(f"{network.source}: {e}") from None

    def _cache_path(self, pod_id: str) -> str:
        if not pod_id or "/" in pod_id or pod_id.startswith("."):
            raise CNIError(f"invalid pod id {pod_id!r}")
        return os.path.join(self.cache_dir, f"{pod_id}.json")

    def _read_cache(self, pod_id: str) -> dict | None:
        path = self._cache_path(pod_id)
        try:
            with open(path, "rb") as f:
                cache = json.load(f)
            if not isinstance(cache, dict):
                raise ValueError("not an object")
            cache.setdefault("ifname", IFNAME)  # caches of format 0 had no ifname
            for key in ("network", "netns", "args", "capabilities"):
                cache[key]  # noqa: B018 — raises KeyError for a cache from elsewhere
            Network.from_cache(cache["network"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, CNIError) as e:
            raise CNIError(f"CNI cache {path} is unreadable: {e}") from None
        return cache


def _has_interface(netns: str, ifname: str) -> bool:
    try:
        with ns.entered(netns):
            socket.if_nametoindex(ifname)  # asks the thread's (the pod's) network namespace
    except OSError:
        return False
    return True


def _sandbox_addresses(result: dict | None, ifname: str) -> list[str]:
    """The CIDR addresses ADD gave the pod's `ifname` (all of them if the result has no
    interface indices)."""
    if not result:
        return []
    try:
        parsed = NetworkResult(result)
    except CNIError:
        return []
    return [entry.address for entry in parsed.ips if entry.interface in (ifname, "")]


@contextlib.contextmanager
def _stand_in_netns(directory: str, ifname: str, addresses: list[str]) -> Iterator[str]:
    """A throw-away netns holding `ifname` with the pod's old addresses, for DEL.

    The bridge plugin (v1.1.1 and later, containernetworking/plugins#810) learns
    which ipMasq rules to remove from the addresses on the pod's interface, so a
    DEL without the netns, or with the interface gone from it, leaves them
    behind.  Given this stand-in, the plugin finds what it looks for and removes
    its own rules; the netns (and the veth pair in it: a dummy device may not
    exist in the kernel) then goes away.
    """
    from pyroute2 import IPRoute  # heavy; only here, after a netns vanished

    ns.unpin_namespaces(directory)  # a stand-in left by a crash during an earlier teardown
    pinned = ns.pin_namespaces(["net"], directory)["net"]
    try:
        with ns.entered(pinned):
            rtnl = IPRoute()  # its socket stays in the stand-in; setns is per thread
        with rtnl:
            rtnl.link("add", ifname=ifname, kind="veth", peer=STAND_IN_PEER)
            (index,) = rtnl.link_lookup(ifname=ifname)
            for address in addresses:
                ip, prefix = address.split("/")
                rtnl.addr("add", index=index, address=ip, prefixlen=int(prefix))
        yield pinned
    finally:
        ns.unpin_namespaces(directory)


def _port_mappings(mappings) -> list[dict]:
    return port_mappings([dict(m) for m in mappings or ()])


def _live(path: str) -> str:
    """`path` if a network namespace is pinned there, else "" (the plugins then clean what
    lives on the host, as the spec asks; a stale file would make them fail instead)."""
    if not path:
        return ""
    try:
        os.close(ns.open_namespace(path, "net"))
    except OSError:
        return ""
    return path


def _write_atomic(path: str, value: dict, mode: int = 0o600) -> None:
    _write_atomic_bytes(path, json.dumps(value, indent=1).encode(), mode)


def _write_atomic_bytes(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
