"""The OCI runtime configuration (config.json) as plain data classes.

`load_config` reads and validates a bundle's config.json; every problem is a
`SpecError` whose message names the offending field, e.g.
``process.user.uid: expected an integer, got "root"``.

`linux.resources` stays a JSON dict (validated for shape here): the cgroup
managers, `update --resources` and the CRI layer all speak that same JSON.
"""

from __future__ import annotations

import os

from corral.spec import fastjson
from corral.spec.record import Factory, Record

OCI_VERSION = "1.2.0"

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer",
              "poststart", "poststop")
PROPAGATIONS = ("", "private", "rprivate", "slave", "rslave", "shared", "rshared",
                "unbindable", "runbindable")


class SpecError(ValueError):
    """config.json is malformed or asks for something invalid."""


# --- small typed readers ------------------------------------------------------

def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "?")


def _get(obj: dict, key: str, where: str, kind: type | tuple, default: object = None,
         required: bool = False) -> object:
    if key not in obj or obj[key] is None:
        if required:
            raise SpecError(f"{where}.{key}: required")
        return default
    value = obj[key]
    # bool is an int in Python; never accept it where a number is meant.
    bad_bool = isinstance(value, bool) and kind in (int, (int, float))
    if bad_bool or not isinstance(value, kind):
        want = _type_name(kind() if isinstance(kind, type) else kind[0]())
        raise SpecError(f"{where}.{key}: expected {want}, got {fastjson.dumps(value)[:60]}")
    return value


def _obj(obj: dict, key: str, where: str) -> dict:
    return _get(obj, key, where, dict, {})


def _str_list(obj: dict, key: str, where: str) -> list[str]:
    items = _get(obj, key, where, list, [])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise SpecError(f"{where}.{key}[{i}]: expected a string")
    return list(items)


def _int_list(obj: dict, key: str, where: str) -> list[int]:
    items = _get(obj, key, where, list, [])
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int):
            raise SpecError(f"{where}.{key}[{i}]: expected an integer")
    return list(items)


def _objs(obj: dict, key: str, where: str) -> list[tuple[dict, str]]:
    items = _get(obj, key, where, list, [])
    out = []
    for i, item in enumerate(items):
        here = f"{where}.{key}[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{here}: expected an object")
        out.append((item, here))
    return out


def _uint(obj: dict, key: str, where: str, default: int | None = None,
          required: bool = False) -> int | None:
    value = _get(obj, key, where, int, default, required)
    if value is not None and value < 0:
        raise SpecError(f"{where}.{key}: must not be negative")
    return value


# --- the data classes -----------------------------------------------------------

class User(Record):
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: list[int] = []

    @classmethod
    def parse(cls, raw: dict, where: str) -> User:
        return cls(uid=_uint(raw, "uid", where, 0), gid=_uint(raw, "gid", where, 0),
                   umask=_uint(raw, "umask", where),
                   additional_gids=_int_list(raw, "additionalGids", where))


class Rlimit(Record):
    type: str
    soft: int
    hard: int

    @classmethod
    def parse(cls, raw: dict, where: str) -> Rlimit:
        kind = _get(raw, "type", where, str, required=True)
        if not kind.startswith("RLIMIT_"):
            raise SpecError(f"{where}.type: unknown rlimit {kind!r}")
        soft = _uint(raw, "soft", where, required=True)
        hard = _uint(raw, "hard", where, required=True)
        if soft > hard:
            raise SpecError(f"{where}: soft limit {soft} exceeds hard limit {hard}")
        return cls(kind, soft, hard)


class Capabilities(Record):
    bounding: list[str] = []
    effective: list[str] = []
    inheritable: list[str] = []
    permitted: list[str] = []
    ambient: list[str] = []

    @classmethod
    def parse(cls, raw: dict, where: str) -> Capabilities:
        return cls(**{name: _str_list(raw, name, where) for name in
                      ("bounding", "effective", "inheritable", "permitted", "ambient")})


class Process(Record):
    args: list[str]
    env: list[str] = []
    cwd: str = "/"
    terminal: bool = False
    console_size: tuple[int, int] | None = None
    user: User = Factory(User)
    capabilities: Capabilities | None = None
    rlimits: list[Rlimit] = []
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    apparmor_profile: str = ""
    selinux_label: str = ""

    @classmethod
    def parse(cls, raw: dict, where: str = "process") -> Process:
        args = _str_list(raw, "args", where)
        if not args:
            raise SpecError(f"{where}.args: must name the program to run")
        cwd = _get(raw, "cwd", where, str, "/")
        if not os.path.isabs(cwd):
            raise SpecError(f"{where}.cwd: must be an absolute path, got {cwd!r}")
        env = _str_list(raw, "env", where)
        for i, entry in enumerate(env):
            if "=" not in entry:
                raise SpecError(f"{where}.env[{i}]: expected KEY=VALUE, got {entry!r}")
        size = _obj(raw, "consoleSize", where)
        caps = raw.get("capabilities")
        oom = _get(raw, "oomScoreAdj", where, int)
        if oom is not None and not -1000 <= oom <= 1000:
            raise SpecError(f"{where}.oomScoreAdj: must be within -1000..1000, got {oom}")
        return cls(
            args=args, env=env, cwd=cwd,
            terminal=_get(raw, "terminal", where, bool, False),
            console_size=(_uint(size, "height", f"{where}.consoleSize", 0),
                          _uint(size, "width", f"{where}.consoleSize", 0)) if size else None,
            user=User.parse(_obj(raw, "user", where), f"{where}.user"),
            capabilities=None if caps is None else Capabilities.parse(
                _obj(raw, "capabilities", where), f"{where}.capabilities"),
            rlimits=[Rlimit.parse(r, w) for r, w in _objs(raw, "rlimits", where)],
            no_new_privileges=_get(raw, "noNewPrivileges", where, bool, False),
            oom_score_adj=oom,
            apparmor_profile=_get(raw, "apparmorProfile", where, str, ""),
            selinux_label=_get(raw, "selinuxLabel", where, str, ""),
        )

    def env_value(self, key: str) -> str | None:
        for entry in self.env:
            name, _, value = entry.partition("=")
            if name == key:
                return value
        return None


class Root(Record):
    path: str
    readonly: bool = False


class Mount(Record):
    destination: str
    type: str = ""
    source: str = ""
    options: list[str] = []

    @classmethod
    def parse(cls, raw: dict, where: str) -> Mount:
        dest = _get(raw, "destination", where, str, required=True)
        if not os.path.isabs(dest):
            raise SpecError(f"{where}.destination: must be an absolute path, got {dest!r}")
        return cls(destination=dest, type=_get(raw, "type", where, str, ""),
                   source=_get(raw, "source", where, str, ""),
                   options=_str_list(raw, "options", where))

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or "bind" in self.options or "rbind" in self.options


class Hook(Record):
    path: str
    args: list[str] = []
    env: list[str] = []
    timeout: int | None = None

    @classmethod
    def parse(cls, raw: dict, where: str) -> Hook:
        path = _get(raw, "path", where, str, required=True)
        if not os.path.isabs(path):
            raise SpecError(f"{where}.path: must be an absolute path, got {path!r}")
        timeout = _get(raw, "timeout", where, int)
        if timeout is not None and timeout <= 0:
            raise SpecError(f"{where}.timeout: must be positive")
        return cls(path, _str_list(raw, "args", where), _str_list(raw, "env", where), timeout)


class Namespace(Record):
    type: str
    path: str = ""

    @classmethod
    def parse(cls, raw: dict, where: str) -> Namespace:
        kind = _get(raw, "type", where, str, required=True)
        if kind not in NAMESPACE_TYPES:
            raise SpecError(f"{where}.type: unknown namespace type {kind!r}")
        path = _get(raw, "path", where, str, "")
        if path and not os.path.isabs(path):
            raise SpecError(f"{where}.path: must be an absolute path")
        return cls(kind, path)


class IDMapping(Record):
    container_id: int
    host_id: int
    size: int

    @classmethod
    def parse(cls, raw: dict, where: str) -> IDMapping:
        return cls(_uint(raw, "containerID", where, required=True),
                   _uint(raw, "hostID", where, required=True),
                   _uint(raw, "size", where, required=True))


class Device(Record):
    path: str
    type: str
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def parse(cls, raw: dict, where: str) -> Device:
        path = _get(raw, "path", where, str, required=True)
        if not os.path.isabs(path):
            raise SpecError(f"{where}.path: must be an absolute path")
        kind = _get(raw, "type", where, str, required=True)
        if kind not in ("c", "b", "u", "p"):
            raise SpecError(f"{where}.type: must be one of c, b, u, p; got {kind!r}")
        need_numbers = kind != "p"
        return cls(path, kind, _uint(raw, "major", where, 0, required=need_numbers),
                   _uint(raw, "minor", where, 0, required=need_numbers),
                   _uint(raw, "fileMode", where), _uint(raw, "uid", where),
                   _uint(raw, "gid", where))


class Linux(Record):
    namespaces: list[Namespace] = []
    uid_mappings: list[IDMapping] = []
    gid_mappings: list[IDMapping] = []
    time_offsets: dict[str, dict] = {}
    devices: list[Device] = []
    cgroups_path: str = ""
    resources: dict = {}
    rootfs_propagation: str = ""
    masked_paths: list[str] = []
    readonly_paths: list[str] = []
    sysctl: dict[str, str] = {}
    seccomp: dict | None = None
    mount_label: str = ""

    @classmethod
    def parse(cls, raw: dict, where: str = "linux") -> Linux:
        namespaces = [Namespace.parse(n, w) for n, w in _objs(raw, "namespaces", where)]
        seen: set[str] = set()
        for ns in namespaces:
            if ns.type in seen:
                raise SpecError(f"{where}.namespaces: {ns.type!r} listed twice")
            seen.add(ns.type)
        propagation = _get(raw, "rootfsPropagation", where, str, "")
        if propagation not in PROPAGATIONS:
            raise SpecError(f"{where}.rootfsPropagation: unknown propagation {propagation!r}")
        sysctl = _obj(raw, "sysctl", where)
        for key, value in sysctl.items():
            if not isinstance(value, str):
                raise SpecError(f"{where}.sysctl.{key}: expected a string")
        resources = canonical_resources(_obj(raw, "resources", where))
        validate_resources(resources, f"{where}.resources")
        return cls(
            namespaces=namespaces,
            uid_mappings=[IDMapping.parse(m, w) for m, w in _objs(raw, "uidMappings", where)],
            gid_mappings=[IDMapping.parse(m, w) for m, w in _objs(raw, "gidMappings", where)],
            time_offsets=_obj(raw, "timeOffsets", where),
            devices=[Device.parse(d, w) for d, w in _objs(raw, "devices", where)],
            cgroups_path=_get(raw, "cgroupsPath", where, str, ""),
            resources=resources,
            rootfs_propagation=propagation,
            masked_paths=_str_list(raw, "maskedPaths", where),
            readonly_paths=_str_list(raw, "readonlyPaths", where),
            sysctl=dict(sysctl),
            seccomp=_get(raw, "seccomp", where, dict),
            mount_label=_get(raw, "mountLabel", where, str, ""),
        )

    def namespace(self, kind: str) -> Namespace | None:
        return next((ns for ns in self.namespaces if ns.type == kind), None)


class Spec(Record):
    oci_version: str
    root: Root
    process: Process | None = None
    hostname: str = ""
    domainname: str = ""
    mounts: list[Mount] = []
    hooks: dict[str, list[Hook]] = {}
    annotations: dict[str, str] = {}
    linux: Linux = Factory(Linux)
    source: dict = {}  # the JSON it was parsed from (exec takes its process defaults)

    @classmethod
    def parse(cls, raw: object) -> Spec:
        if not isinstance(raw, dict):
            raise SpecError("config.json: expected a JSON object at the top level")
        version = _get(raw, "ociVersion", "config", str, required=True)
        if not version.startswith("1."):
            raise SpecError(f"ociVersion: unsupported version {version!r}")
        root_raw = _get(raw, "root", "config", dict, required=True)
        root = Root(_get(root_raw, "path", "root", str, required=True),
                    _get(root_raw, "readonly", "root", bool, False))
        process_raw = _get(raw, "process", "config", dict)
        hooks_raw = _obj(raw, "hooks", "config")
        hooks = {}
        for kind in hooks_raw:
            if kind not in HOOK_KINDS:
                raise SpecError(f"hooks.{kind}: unknown hook kind")
            hooks[kind] = [Hook.parse(h, w) for h, w in _objs(hooks_raw, kind, "hooks")]
        annotations = _obj(raw, "annotations", "config")
        for key, value in annotations.items():
            if not isinstance(value, str):
                raise SpecError(f"annotations.{key}: expected a string")
        linux = Linux.parse(_obj(raw, "linux", "config"))
        spec = cls(
            oci_version=version, root=root,
            process=Process.parse(process_raw) if process_raw is not None else None,
            hostname=_get(raw, "hostname", "config", str, ""),
            domainname=_get(raw, "domainname", "config", str, ""),
            mounts=[Mount.parse(m, w) for m, w in _objs(raw, "mounts", "config")],
            hooks=hooks, annotations=dict(annotations), linux=linux, source=raw,
        )
        spec._check_consistency()
        return spec

    def _check_consistency(self) -> None:
        # As runc: a uts namespace of the container's own, made or joined (a pod's), not the host's.
        if (self.hostname or self.domainname) and self.linux.namespace("uts") is None:
            raise SpecError("hostname: setting a hostname needs a uts namespace")
        user = self.linux.namespace("user")
        if self.linux.uid_mappings or self.linux.gid_mappings:
            if user is None or user.path:
                raise SpecError("linux.uidMappings: id mappings need a new user namespace")
        if user is not None and not user.path and not self.linux.uid_mappings:
            raise SpecError("linux.uidMappings: a new user namespace needs uid and gid mappings")
        if self.linux.time_offsets and not self.has_new_namespace("time"):
            raise SpecError("linux.timeOffsets: needs a new time namespace")

    def has_new_namespace(self, kind: str) -> bool:
        ns = self.linux.namespace(kind)
        return ns is not None and not ns.path


_DEVICE_NUMBERS = ("major", "minor")
_THROTTLE = ("list", {k: None for k in (*_DEVICE_NUMBERS, "rate")})
# linux.resources as runtime-spec's Go types name it: a dict is an object's fields, a
# ("list", …) a list of such objects, a ("map", …) a map whose keys are data (kept as they are).
_RESOURCE_FIELDS: dict = {
    "devices": ("list", dict.fromkeys(("allow", "type", *_DEVICE_NUMBERS, "access"))),
    "memory": dict.fromkeys(("limit", "reservation", "swap", "kernel", "kernelTCP",
                             "swappiness", "disableOOMKiller", "useHierarchy",
                             "checkBeforeUpdate")),
    "cpu": dict.fromkeys(("shares", "quota", "burst", "period", "realtimeRuntime",
                          "realtimePeriod", "cpus", "mems", "idle")),
    "pids": {"limit": None},
    "blockIO": {"weight": None, "leafWeight": None,
                "weightDevice": ("list", dict.fromkeys((*_DEVICE_NUMBERS, "weight",
                                                        "leafWeight"))),
                "throttleReadBpsDevice": _THROTTLE, "throttleWriteBpsDevice": _THROTTLE,
                "throttleReadIOPSDevice": _THROTTLE, "throttleWriteIOPSDevice": _THROTTLE},
    "hugepageLimits": ("list", {"pageSize": None, "limit": None}),
    "network": {"classID": None,
                "priorities": ("list", {"name": None, "priority": None})},
    "rdma": ("map", {"hcaHandles": None, "hcaObjects": None}),
    "unified": ("map", None),
}


def canonical_resources(res: dict) -> dict:
    """linux.resources with its keys spelled as the spec does, matched regardless of case
    ({"CPU": {"Cpus": "0"}} is {"cpu": {"cpus": "0"}}), as Go's encoding/json reads them
    for runc.  Keys that match no field are kept, for validate_resources to name."""
    return _canonical_fields(res, _RESOURCE_FIELDS)


def _canonical_fields(value: object, fields) -> object:
    if fields is None:
        return value
    if isinstance(fields, tuple):
        kind, inner = fields
        if kind == "list" and isinstance(value, list):
            return [_canonical_fields(item, inner) for item in value]
        if kind == "map" and isinstance(value, dict):
            return {key: _canonical_fields(item, inner) for key, item in value.items()}
        return value
    if not isinstance(value, dict):
        return value
    by_folded = {name.lower(): name for name in fields}
    out: dict = {}
    for key, item in value.items():
        name = key if key in fields else by_folded.get(key.lower(), key)
        out[name] = _canonical_fields(item, fields.get(name))
    return out


def validate_resources(res: dict, where: str) -> None:
    """Check the shape of linux.resources: objects where objects belong, numbers as numbers."""
    sections = {"memory": dict, "cpu": dict, "pids": dict, "blockIO": dict,
                "hugepageLimits": list, "devices": list, "unified": dict, "network": dict,
                "rdma": dict}
    for key in res:
        kind = sections.get(key)
        if kind is None:
            raise SpecError(f"{where}.{key}: unknown resource")
        _get(res, key, where, kind)
    for key in ("limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness"):
        _get(res.get("memory", {}), key, f"{where}.memory", int)
    cpu = res.get("cpu", {})
    for key in ("shares", "quota", "burst", "period", "realtimeRuntime", "realtimePeriod", "idle"):
        _get(cpu, key, f"{where}.cpu", int)
    for key in ("cpus", "mems"):
        _get(cpu, key, f"{where}.cpu", str)
    _get(res.get("pids", {}), "limit", f"{where}.pids", int)
    for item, here in _objs(res, "devices", where):
        _get(item, "allow", here, bool, required=True)
        _get(item, "access", here, str)
        _get(item, "type", here, str)
    for item, here in _objs(res, "hugepageLimits", where):
        _get(item, "pageSize", here, str, required=True)
        _uint(item, "limit", here, required=True)
    for key, value in res.get("unified", {}).items():
        if not isinstance(value, str):
            raise SpecError(f"{where}.unified.{key}: expected a string")
        if "/" in key or key.startswith("."):
            raise SpecError(f"{where}.unified.{key}: not a cgroup file name")


def load_config(bundle: str) -> Spec:
    """Read and validate `<bundle>/config.json`."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = fastjson.loads(f.read())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file (is {bundle} a bundle?)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: invalid JSON: {e}") from None
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}") from None
    return Spec.parse(raw)
