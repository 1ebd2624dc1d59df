"""CRI ContainerConfig → OCI runtime config, with the defaults containerd's CRI plugin uses.

Pure translation: the only I/O is reading the container rootfs's
/etc/passwd and /etc/group to resolve a user name, stat'ing host device
nodes, reading a Localhost seccomp profile, and reading corrald's own
/proc/self/status (its bounding set: what "ALL" and privileged mean) and
/proc/self/mountinfo (whether a volume's host mount can propagate).
Anything that cannot be honoured is a TranslationError naming the CRI
field (corrald answers INVALID_ARGUMENT).

The RuntimeDefault seccomp profile is data, seccomp_default.json beside
this file: a re-expression of containerd v1.7's default profile (its
"provenance" says what it follows and where it differs).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat

from cri_api.v1 import api_pb2

from corral.runtime.capabilities import CAPABILITY_NAMES
from corral.spec.defaults import DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS, default_config

# containerd's default capability set (pkg/cri/opts/spec_opts.go: DefaultCapabilities)
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
ALL_CAPABILITIES = DEFAULT_CAPABILITIES + [
    "CAP_DAC_READ_SEARCH", "CAP_LINUX_IMMUTABLE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_LEASE", "CAP_AUDIT_CONTROL", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
# Namespaced sysctls a pod may set (Kubernetes' safe + unsafe namespaced sets).
_NAMESPACED_SYSCTLS = ("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.", "net.")
# CRI MountPropagation → OCI rootfs propagation option
_PROPAGATION = {0: "rprivate", 1: "rslave", 2: "rshared"}
# CRI's deprecated seccomp_profile_path spellings (containerd: generateSecurityProfile)
_PROFILE_PATHS = {"runtime/default": api_pb2.SecurityProfile.RuntimeDefault,
                  "docker/default": api_pb2.SecurityProfile.RuntimeDefault,
                  "unconfined": api_pb2.SecurityProfile.Unconfined}
_LOCALHOST_PREFIX = "localhost/"
_SECCOMP_DEFAULT = os.path.join(os.path.dirname(__file__), "seccomp_default.json")


class TranslationError(ValueError):
    pass


class PodContext:
    """What the pod gives each of its containers."""

    def __init__(self, *, pod_id: str, namespaces: dict[str, str], share_pid: bool = False,
                 host_pid: bool = False, cgroup_parent: str = "", hostname: str = "",
                 etc_hosts: str = "", resolv_conf: str = "", hostname_file: str = "",
                 shm: str = "", sysctls: dict[str, str] | None = None):
        self.pod_id = pod_id
        self.namespaces = namespaces
        self.share_pid = share_pid
        self.host_pid = host_pid
        self.cgroup_parent = cgroup_parent
        self.hostname = hostname
        self.etc_hosts = etc_hosts
        self.resolv_conf = resolv_conf
        self.hostname_file = hostname_file
        self.shm = shm
        self.sysctls = sysctls or {}


def container_spec(config, pod_config, image_config: dict, pod: PodContext, *, rootfs: str,
                   container_id: str, cgroups_path: str | None = None, cgroup_v2: bool = False,
                   min_oom_score_adj: int | None = None) -> dict:
    image = image_config.get("config") or {}
    security = config.linux.security_context
    privileged = security.privileged
    if privileged and not pod_config.linux.security_context.privileged:
        raise TranslationError("linux.security_context.privileged: the pod sandbox is not "
                               "privileged")
    spec = default_config(args=_args(config, image), terminal=config.tty)
    process = spec["process"]
    process["env"] = _env(image.get("Env") or [], config.envs)
    process["cwd"] = config.working_dir or image.get("WorkingDir") or "/"
    process["user"] = _user(security, image.get("User") or "", rootfs)
    process["noNewPrivileges"] = bool(security.no_new_privs)
    process.pop("rlimits", None)  # inherit corrald's: raising them needs CAP_SYS_RESOURCE
    caps = host_capabilities() if privileged else _capabilities(security.capabilities)
    process["capabilities"] = {"bounding": caps, "effective": list(caps),
                               "permitted": list(caps)}
    if config.linux.resources.oom_score_adj or min_oom_score_adj is not None:
        value = config.linux.resources.oom_score_adj
        if min_oom_score_adj is not None:
            value = max(value, min_oom_score_adj)
        process["oomScoreAdj"] = value
    if pod.namespaces.get("uts"):
        spec["hostname"] = pod.hostname
    else:
        spec.pop("hostname", None)  # the host's UTS namespace: its hostname is the host's
    spec["root"] = {"path": rootfs, "readonly": bool(security.readonly_rootfs)}
    spec["mounts"] = _mounts(spec["mounts"], config, pod, privileged)
    linux = spec["linux"]
    # A shared or slave volume needs the container's "/" to keep its peer groups (containerd's
    # WithMounts): otherwise the runtime's rslave "/" cuts the volume off from the host's.
    kinds = {m.propagation for m in config.mounts}
    if api_pb2.PROPAGATION_BIDIRECTIONAL in kinds:
        linux["rootfsPropagation"] = "rshared"
    elif api_pb2.PROPAGATION_HOST_TO_CONTAINER in kinds:
        linux["rootfsPropagation"] = "rslave"
    linux["namespaces"] = _namespaces(pod, cgroup_v2)
    linux["maskedPaths"] = [] if privileged else (
        list(security.masked_paths) if security.masked_paths else list(MASKED_PATHS))
    linux["readonlyPaths"] = [] if privileged else (
        list(security.readonly_paths) if security.readonly_paths else list(READONLY_PATHS))
    linux["sysctl"] = _sysctls(pod)
    linux["resources"] = linux_resources(config.linux.resources, privileged)
    linux["devices"] = _devices(config.devices)
    # A device node is only usable where a cgroup rule allows it (containerd adds these).
    linux["resources"]["devices"] += [
        {"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"],
         "access": device.permissions or "rwm"}
        for d, device in zip(linux["devices"], config.devices, strict=True)]
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    seccomp = None if privileged else seccomp_profile(security, caps)
    if seccomp:
        linux["seccomp"] = seccomp
    _check_lsm(security)
    spec["annotations"] = {
        **dict(config.annotations),
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": config.metadata.name,
        "io.kubernetes.cri.sandbox-id": pod.pod_id,
        "io.kubernetes.cri.sandbox-name": pod_config.metadata.name,
        "io.kubernetes.cri.sandbox-namespace": pod_config.metadata.namespace,
        "io.kubernetes.cri.sandbox-uid": pod_config.metadata.uid,
        "io.kubernetes.cri.image-name": config.image.image,
    }
    return spec


def check_pod_security(pod_config) -> None:
    """What containerd refuses at RunPodSandbox in the pod's own security context: a group
    without a user, and a seccomp profile its pause container could not be given."""
    security = pod_config.linux.security_context
    if security.HasField("run_as_group") and not security.HasField("run_as_user"):
        raise TranslationError("pod linux.security_context.run_as_group: set without "
                               "run_as_user")
    sandbox_seccomp(pod_config)


def sandbox_seccomp(pod_config) -> dict | None:
    """The profile containerd gives the pod's own process (its pause container), from the
    pod-level context. Containers do not inherit it: kubelet copies the pod's profile into
    each container's context, and corrald, as containerd, reads only that."""
    security = pod_config.linux.security_context
    if security.privileged:
        return None
    return seccomp_profile(security, list(DEFAULT_CAPABILITIES), "pod linux.security_context")


def exec_process(base_process: dict, cmd: list[str], *, tty: bool = False) -> dict:
    """The process of an ExecSync: the container's user, env, cwd, caps and flags."""
    process = json.loads(json.dumps(base_process))
    process["args"] = list(cmd)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return process


# --- pieces -------------------------------------------------------------------------------------
def _args(config, image: dict) -> list[str]:
    """Kubernetes' rule: command replaces the entrypoint, args replace the cmd."""
    entrypoint = list(config.command) or list(image.get("Entrypoint") or [])
    args = list(config.args) if (config.args or config.command) else \
        list(image.get("Cmd") or [])
    if config.command and not config.args:
        args = []
    combined = entrypoint + args
    if not combined:
        raise TranslationError("command: neither the config nor the image gives one")
    return combined


def _env(image_env: list[str], envs) -> list[str]:
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    for kv in envs:
        if not kv.key:
            raise TranslationError("envs: a variable without a name")
        merged[kv.key] = kv.value
    if "PATH" not in merged:
        merged["PATH"] = DEFAULT_PATH.partition("=")[2]
    return [f"{key}={value}" for key, value in merged.items()]


def _user(security, image_user: str, rootfs: str) -> dict:
    passwd = _read_table(os.path.join(rootfs, "etc/passwd"))
    groups = _read_table(os.path.join(rootfs, "etc/group"))
    if security.HasField("run_as_group") and not (security.HasField("run_as_user") or
                                                  security.run_as_username):
        raise TranslationError("linux.security_context.run_as_group: set without run_as_user "
                               "or run_as_username")
    if security.HasField("run_as_user"):
        spec = str(security.run_as_user.value)
    elif security.run_as_username:
        spec = security.run_as_username
    else:
        spec = image_user
    name, _, group = spec.partition(":")
    uid, gid, username = 0, 0, "root"
    if name:
        if name.isdigit():
            uid = int(name)
            entry = next((e for e in passwd if e[2] == name), None)
            gid = int(entry[3]) if entry else 0
            username = entry[0] if entry else ""
        else:
            entry = next((e for e in passwd if e[0] == name), None)
            if entry is None:
                raise TranslationError(f"user {name!r}: not in the image's /etc/passwd")
            uid, gid, username = int(entry[2]), int(entry[3]), name
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = next((e for e in groups if e[0] == group), None)
            if entry is None:
                raise TranslationError(f"group {group!r}: not in the image's /etc/group")
            gid = int(entry[2])
    if security.HasField("run_as_group"):
        gid = security.run_as_group.value
    additional = sorted({int(e[2]) for e in groups if len(e) > 3 and username and
                         username in e[3].split(",") and e[2].isdigit()} |
                        set(security.supplemental_groups))
    user = {"uid": uid, "gid": gid}
    if additional:
        user["additionalGids"] = additional
    return user


def _read_table(path: str) -> list[list[str]]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 2]
    except OSError:
        return []


def _capabilities(capabilities) -> list[str]:
    def names(values) -> list[str]:
        return [v.upper() if v.upper().startswith("CAP_") or v.upper() == "ALL"
                else "CAP_" + v.upper() for v in values]

    add, drop = names(capabilities.add_capabilities), names(capabilities.drop_capabilities)
    for name in add + drop:
        if name != "ALL" and name not in ALL_CAPABILITIES:
            raise TranslationError(f"linux.security_context.capabilities: unknown capability "
                                   f"{name!r}")
    # containerd's order: ALL first (add, then drop), then the named additions and drops, so
    # add ALL + drop CHOWN is every capability but CHOWN.
    caps = list(host_capabilities()) if "ALL" in add else list(DEFAULT_CAPABILITIES)
    if "ALL" in drop:
        caps = []
    caps += [c for c in add if c != "ALL" and c not in caps]
    return [c for c in caps if c not in drop]


def _mounts(defaults: list[dict], config, pod: PodContext, privileged: bool) -> list[dict]:
    wanted = {os.path.normpath(m.container_path) for m in config.mounts}
    mounts = []
    for mount in defaults:
        if mount["destination"] in wanted:
            continue
        if mount["destination"] == "/dev/shm" and pod.shm:
            mount = {"destination": "/dev/shm", "type": "bind", "source": pod.shm,
                     "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]}
        if privileged and mount["type"] in ("sysfs", "cgroup"):
            mount = dict(mount, options=[o for o in mount["options"] if o != "ro"] + ["rw"])
        mounts.append(mount)
    for path, target in ((pod.etc_hosts, "/etc/hosts"), (pod.resolv_conf, "/etc/resolv.conf"),
                         (pod.hostname_file, "/etc/hostname")):
        if path and target not in wanted:
            mounts.append({"destination": target, "type": "bind", "source": path,
                           "options": ["rbind", "rprivate", "rw"]})
    for i, mount in enumerate(config.mounts):
        where = f"mounts[{i}]"
        if not os.path.isabs(mount.container_path):
            raise TranslationError(f"{where}.container_path must be absolute, not "
                                   f"{mount.container_path!r}")
        if not os.path.isabs(mount.host_path):
            raise TranslationError(f"{where}.host_path must be absolute, not "
                                   f"{mount.host_path!r}")
        _make_missing_host_path(mount.host_path, where)
        _check_source_propagation(mount, where)
        options = ["rbind", _PROPAGATION.get(mount.propagation, "rprivate"),
                   "ro" if mount.readonly else "rw"]
        mounts.append({"destination": mount.container_path, "type": "bind",
                       "source": mount.host_path, "options": options})
    return mounts


def _make_missing_host_path(path: str, where: str) -> None:
    """As containerd's WithMounts: a volume's host path that does not exist is made a
    directory (0755, parents too); kubelet's hostPath volumes without a type rely on it."""
    if os.path.lexists(path):
        return
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except OSError as e:
        raise TranslationError(f"{where}.host_path {path}: cannot make it: "
                               f"{e.strerror}") from None


def _check_source_propagation(mount, where: str) -> None:
    """As containerd: a Bidirectional volume must be on a shared mount of the host, a
    HostToContainer one on a shared or slave mount, or the propagation asked cannot happen."""
    if mount.propagation == api_pb2.PROPAGATION_PRIVATE:
        return
    point, fields = _mount_of(mount.host_path)
    shared = any(f.startswith("shared:") for f in fields)
    slave = any(f.startswith("master:") for f in fields)
    if mount.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL and not shared:
        raise TranslationError(f"{where}: host_path {mount.host_path} is on {point}, which is "
                               "not a shared mount (needed for Bidirectional propagation)")
    if mount.propagation == api_pb2.PROPAGATION_HOST_TO_CONTAINER and not (shared or slave):
        raise TranslationError(f"{where}: host_path {mount.host_path} is on {point}, which is "
                               "neither a shared nor a slave mount (needed for HostToContainer "
                               "propagation)")


def _mount_of(path: str) -> tuple[str, list[str]]:
    """The mount point holding path in corrald's mount namespace, and its optional fields."""
    path = os.path.realpath(path)
    best, best_fields = "/", []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):  # later entries cover earlier ones
                best, best_fields = point, parts[6:parts.index("-")]
    return best, best_fields


def _namespaces(pod: PodContext, cgroup_v2: bool) -> list[dict]:
    namespaces = [{"type": "mount"}]
    shared_pid = pod.namespaces.get("pid", "") if pod.share_pid else ""
    if shared_pid:
        namespaces.append({"type": "pid", "path": shared_pid})  # the pod init's
    elif not pod.host_pid:
        namespaces.append({"type": "pid"})
    for kind in ("network", "ipc", "uts"):
        path = pod.namespaces.get(kind, "")
        if path:
            namespaces.append({"type": kind, "path": path})
    if cgroup_v2:
        namespaces.append({"type": "cgroup"})
    return namespaces


def _sysctls(pod: PodContext) -> dict[str, str]:
    for key in pod.sysctls:
        if not key.startswith(_NAMESPACED_SYSCTLS):
            raise TranslationError(f"linux.sysctls: {key} is not a namespaced sysctl")
        if key.startswith("net.") and not pod.namespaces.get("network"):
            raise TranslationError(f"linux.sysctls: {key} needs the pod's own network "
                                   "namespace (not the host's)")
    return dict(pod.sysctls)


def linux_resources(resources, privileged: bool = False) -> dict:
    """OCI linux.resources from CRI LinuxContainerResources (also for UpdateContainerResources)."""
    result: dict = {"devices": [{"allow": privileged, "access": "rwm"}]}
    cpu = {}
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        if resources.cpu_quota < 1000 and resources.cpu_quota != -1:
            raise TranslationError("linux.resources.cpu_quota: at least 1000 (1 ms)")
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        result["cpu"] = cpu
    if resources.memory_limit_in_bytes:
        if resources.memory_limit_in_bytes < 0:
            raise TranslationError("linux.resources.memory_limit_in_bytes: negative")
        result["memory"] = {"limit": resources.memory_limit_in_bytes}
        if resources.memory_swap_limit_in_bytes:
            result["memory"]["swap"] = resources.memory_swap_limit_in_bytes
    if resources.hugepage_limits:
        result["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                    for h in resources.hugepage_limits]
    if resources.unified:
        result["unified"] = dict(resources.unified)
    return result


def _devices(devices) -> list[dict]:
    result = []
    for i, device in enumerate(devices):
        try:
            info = os.stat(device.host_path)
        except OSError as e:
            raise TranslationError(f"devices[{i}].host_path {device.host_path}: "
                                   f"{e.strerror}") from None
        if stat.S_ISCHR(info.st_mode):
            kind = "c"
        elif stat.S_ISBLK(info.st_mode):
            kind = "b"
        else:
            raise TranslationError(f"devices[{i}].host_path {device.host_path}: not a device")
        result.append({"path": device.container_path or device.host_path, "type": kind,
                       "major": os.major(info.st_rdev), "minor": os.minor(info.st_rdev),
                       "fileMode": stat.S_IMODE(info.st_mode), "uid": 0, "gid": 0})
    return result


@functools.cache
def host_capabilities() -> list[str]:
    """The capabilities of corrald's own bounding set: what "ALL" and privileged mean here
    (containerd's WithAllCurrentCapabilities); asking for more would fail at start."""
    with open("/proc/self/status") as f:
        bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return [name for bit, name in enumerate(CAPABILITY_NAMES) if bounding >> bit & 1]


def seccomp_profile(security, capabilities: list[str],
                    where: str = "linux.security_context") -> dict | None:
    """The OCI linux.seccomp for a CRI security context, as containerd chooses it: the
    `seccomp` field wins over the deprecated `seccomp_profile_path`; neither means none."""
    if security.HasField("seccomp"):
        kind, ref = security.seccomp.profile_type, security.seccomp.localhost_ref
        if kind != api_pb2.SecurityProfile.Localhost and ref:
            raise TranslationError(f"{where}.seccomp.localhost_ref is only for a Localhost "
                                   "profile")
    elif security.seccomp_profile_path:
        path = security.seccomp_profile_path
        if path in _PROFILE_PATHS:
            kind, ref = _PROFILE_PATHS[path], ""
        elif path.startswith(_LOCALHOST_PREFIX):
            kind, ref = api_pb2.SecurityProfile.Localhost, path[len(_LOCALHOST_PREFIX):]
        else:
            raise TranslationError(f"{where}.seccomp_profile_path: invalid profile {path!r}")
    else:
        return None
    if kind == api_pb2.SecurityProfile.Unconfined:
        return None
    if kind == api_pb2.SecurityProfile.RuntimeDefault:
        return runtime_default_seccomp(capabilities)
    if kind != api_pb2.SecurityProfile.Localhost:
        raise TranslationError(f"{where}.seccomp.profile_type: unknown type {kind}")
    ref = ref.removeprefix(_LOCALHOST_PREFIX)
    if not os.path.isabs(ref):
        raise TranslationError(f"{where}.seccomp.localhost_ref must be an absolute path, "
                               f"not {ref!r}")
    try:
        with open(ref) as f:
            profile = json.load(f)
    except (OSError, ValueError) as e:
        raise TranslationError(f"{where}.seccomp.localhost_ref {ref}: {e}") from None
    if not isinstance(profile, dict):
        raise TranslationError(f"{where}.seccomp.localhost_ref {ref}: not a JSON object")
    return profile


@functools.cache
def _seccomp_default_data() -> dict:
    with open(_SECCOMP_DEFAULT) as f:
        return json.load(f)


def runtime_default_seccomp(capabilities: list[str], machine: str | None = None) -> dict:
    """The RuntimeDefault profile for a container with this bounding set (see
    seccomp_default.json for what it follows): an allow list, the syscalls of this
    architecture and of each capability held, and without CAP_SYS_ADMIN no clone into new
    namespaces and clone3 answered ENOSYS (so libcs fall back to clone)."""
    data = _seccomp_default_data()
    machine = machine or os.uname().machine

    def allow(names, args=()):
        return {"names": list(names), "action": "SCMP_ACT_ALLOW", "args": list(args)}

    syscalls = [allow(data["allow"])]
    syscalls += [allow(["personality"], [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}])
                 for value in data["personalityValues"].values()]
    if data["allowByArchitecture"].get(machine):
        syscalls.append(allow(data["allowByArchitecture"][machine]))
    for cap in capabilities:
        if data["allowByCapability"].get(cap):
            syscalls.append(allow(data["allowByCapability"][cap]))
    if "CAP_SYS_ADMIN" not in capabilities:
        rule = data["withoutSysAdmin"]
        index = rule["cloneFlagsArgument"].get(machine, rule["cloneFlagsArgument"]["default"])
        mask = functools.reduce(int.__or__, rule["namespaceCloneFlags"].values())
        syscalls.append(allow(["clone"], [{"index": index, "value": mask, "valueTwo": 0,
                                           "op": "SCMP_CMP_MASKED_EQ"}]))
        syscalls.append({"names": list(rule["enosys"]), "action": "SCMP_ACT_ERRNO",
                         "errnoRet": errno.ENOSYS})
    return {"defaultAction": data["defaultAction"],
            "architectures": list(data["architectures"].get(machine, [])),
            "syscalls": syscalls}


def _check_lsm(security) -> None:
    apparmor = security.apparmor.localhost_ref if security.HasField("apparmor") else ""
    profile_type = security.apparmor.profile_type if security.HasField("apparmor") else 0
    if profile_type == 2 or apparmor:  # Localhost
        raise TranslationError("linux.security_context.apparmor: AppArmor is not supported "
                               "on this host")
    label = security.selinux_options
    if label.user or label.role or label.type or label.level:
        raise TranslationError("linux.security_context.selinux_options: SELinux is not "
                               "supported on this host")
