"""critest's Security Context specs (cri-tools pkg/validate/security_context_linux.go), ported.

Each test sends what the spec sends, field for field (empty `linux`, empty `dns_config`, an
empty `capabilities` message, attempt 2, no hostname, a log directory only where the spec
makes one, the image looked up before CreateContainer) and checks what it checks, from
inside the container. Images stand in for critest's:
- registry.k8s.io/e2e-test-images/busybox:1.29-2 is the embedded busybox with its applets
  hard-linked, as in the real image (a masked /bin/ls must not mask busybox itself);
- registry.k8s.io/e2e-test-images/nonewprivs:1.3 is that busybox plus a static set-uid-root
  program printing its effective uid, as the real one does.
busybox here has no `ipcs`; /proc/sysvipc/shm, which is what ipcs reads, is read instead.
Its sh runs applets in-process (see test_masked_paths for what that changes).

Not ported, because critest skips them here: AppArmor and SELinux (neither is enabled on
this host, so critest registers no spec), SupplementalGroupsPolicy and UserNamespaces
(corrald advertises neither feature, as containerd 1.6), CgroupMountMode (cgroup v2 only;
this host is hybrid v1). HostPID, PodPID and ContainerPID are ported with the pod PID
namespace work, not here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import grpc
import pytest
from cri_api.v1 import api_pb2

from corral.images.layout import build_image, write_archive
from corral.images.service import ImageService
from tests.integration.corrald import Corrald, remove_every_pod, short_base
from tests.integration.critest import DEFAULT_ATTEMPT, PAUSE_COMMAND, eventually, new_uuid

BUSYBOX_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
NO_NEW_PRIVS_IMAGE = "registry.k8s.io/e2e-test-images/nonewprivs:1.3"
EXEC_TIMEOUT = 30
RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = 0, 1, 2
NODE, POD = api_pb2.NODE, api_pb2.POD
NNP_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
"""
# The spec's two Localhost profiles, byte for byte.
BLOCK_HOSTNAME_PROFILE = """{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [
         {
             "names": ["sethostname"],
             "action": "SCMP_ACT_ERRNO"
         }
     ]
}"""
BLOCK_CHMOD_PROFILE = """{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [
         {
             "names": ["chmod", "fchmodat"],
             "action": "SCMP_ACT_ERRNO"
         }
     ]
}"""


# --- the daemon and its images ---------------------------------------------------------------
def static_program(source: str, name: str) -> str:
    """A static binary of `source`, compiled once and cached in tmp by the source's hash."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "corral-test-cache")
    path = os.path.join(cache, f"{name}-{digest}")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            with open(os.path.join(work, "main.c"), "w") as f:
                f.write(source)
            subprocess.run(["gcc", "-static", "-O1", "-o", os.path.join(work, "out"),
                            os.path.join(work, "main.c")], check=True, capture_output=True)
            os.replace(os.path.join(work, "out"), path)
    return path


def hard_linked_busybox(source_rootfs: str, dest: str) -> None:
    """The busybox tree with every applet a hard link of bin/busybox (the official image's
    layout) instead of a symlink."""
    shutil.copytree(source_rootfs, dest, symlinks=True)
    busybox = os.path.join(dest, "bin", "busybox")
    for directory, _, names in os.walk(dest):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path) and os.path.realpath(path) == os.path.realpath(busybox):
                os.unlink(path)
                os.link(busybox, path)


def import_image(daemon: Corrald, rootfs: str, name: str, cmd: list[str]) -> None:
    archive = daemon.base / f"{hashlib.sha256(name.encode()).hexdigest()[:12]}.tar"
    write_archive(build_image(rootfs, name, cmd=cmd), str(archive))
    service = ImageService(str(daemon.root))
    try:
        service.import_archive(str(archive))
    finally:
        service.close()
    archive.unlink()


@pytest.fixture(scope="module")
def corrald():
    daemon = Corrald(short_base(), bridge="crtsec0", subnet="10.99.93.0/24")
    try:
        daemon.import_busybox()
        busybox = str(daemon.base / "e2e-busybox")
        hard_linked_busybox(str(daemon.base / "busybox-rootfs"), busybox)
        import_image(daemon, busybox, BUSYBOX_IMAGE, ["sh"])
        nnp_rootfs = str(daemon.base / "nonewprivs")
        shutil.copytree(busybox, nnp_rootfs, symlinks=True)
        nnp = os.path.join(nnp_rootfs, "usr", "local", "bin", "nnp")
        os.makedirs(os.path.dirname(nnp))
        shutil.copyfile(static_program(NNP_SOURCE, "nnp"), nnp)
        os.chown(nnp, 0, 0)
        os.chmod(nnp, 0o4755)
        import_image(daemon, nnp_rootfs, NO_NEW_PRIVS_IMAGE, ["/usr/local/bin/nnp"])
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def critest(corrald):
    spec = Critest(corrald)
    try:
        yield spec
    finally:
        spec.cleanup()
        remove_every_pod(corrald)


# --- pkg/framework and pkg/validate helpers ---------------------------------------------------
class Critest:
    """What one spec sends: pods, containers, exec and logs as critest makes them."""

    def __init__(self, daemon: Corrald):
        self.rc, self.ic = daemon.runtime, daemon.images
        self.temp_dirs: list[str] = []

    def cleanup(self) -> None:
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)

    # pods
    def pod_config(self, prefix: str, **fields) -> api_pb2.PodSandboxConfig:
        config = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(
            name=prefix + new_uuid(), uid="cri-test-uid" + new_uuid(),
            namespace="cri-test-namespace" + new_uuid(), attempt=DEFAULT_ATTEMPT), **fields)
        config.linux.SetInParent()
        config.linux.cgroup_parent = ""  # common.GetCgroupParent for a cgroupfs runtime
        return config

    def run_pod(self, config) -> str:
        return self.rc.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=config, runtime_handler="")).pod_sandbox_id

    def pod_for_container(self):
        """framework.CreatePodSandboxForContainer."""
        config = self.pod_config("create-PodSandbox-for-container-")
        return self.run_pod(config), config

    def log_temp_dir(self, pod_name: str) -> str:
        """createLogTempDir: <temp>/podLogTest*/<pod name>, mode 0777."""
        host_path = tempfile.mkdtemp(prefix="podLogTest")
        self.temp_dirs.append(host_path)
        path = os.path.join(host_path, pod_name)
        os.makedirs(path, 0o777)
        return path

    def pod_with_log_directory(self):
        """createPodSandboxWithLogDirectory."""
        config = self.pod_config("PodSandbox-with-log-directory-")
        config.log_directory = self.log_temp_dir(config.metadata.name)
        return self.run_pod(config), config

    def privileged_pod(self, privileged: bool):
        """createPrivilegedPodSandbox."""
        config = self.pod_config("create-Privileged-PodSandbox-for-container-")
        config.linux.security_context.privileged = privileged
        return self.run_pod(config), config

    def namespace_pod(self, options: api_pb2.NamespaceOption, log_directory: str = "",
                      name: str = ""):
        """createNamespacePodSandbox: an empty dns_config, the namespace options."""
        config = self.pod_config("", dns_config=api_pb2.DNSConfig(),
                                 log_directory=log_directory)
        config.metadata.name = name or "NamespaceOption-PodSandbox-" + new_uuid()
        config.linux.security_context.namespace_options.CopyFrom(options)
        return self.run_pod(config), config

    # containers
    def container_config(self, prefix: str, command: list[str] | None = None,
                         image: str = BUSYBOX_IMAGE, **security) -> api_pb2.ContainerConfig:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=prefix + new_uuid(), attempt=DEFAULT_ATTEMPT),
            image=api_pb2.ImageSpec(image=image), command=command or [])
        config.linux.security_context.SetInParent()
        for field, value in security.items():
            if isinstance(value, list):
                getattr(config.linux.security_context, field).extend(value)
            elif hasattr(value, "CopyFrom"):
                getattr(config.linux.security_context, field).CopyFrom(value)
            else:
                setattr(config.linux.security_context, field, value)
        return config

    def create_with_error(self, pod_id: str, pod_config, config):
        """framework.CreateContainerWithError: ImageStatus first (a pull if absent)."""
        image = config.image.image if ":" in config.image.image else config.image.image + ":latest"
        status = self.ic.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(
            image=image)))
        assert status.HasField("image"), f"{image} not in corrald"
        return self.rc.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id

    def create(self, pod_id: str, pod_config, config) -> str:
        return self.create_with_error(pod_id, pod_config, config)

    def start(self, container_id: str, state: int = api_pb2.CONTAINER_RUNNING) -> None:
        """startContainer, then Eventually(state) within a minute."""
        self.rc.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
        eventually(lambda: self.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id)).status.state == state)

    def run(self, pod_id: str, pod_config, config,
            state: int = api_pb2.CONTAINER_RUNNING) -> str:
        container_id = self.create(pod_id, pod_config, config)
        self.start(container_id, state)
        return container_id

    def exec_sync(self, container_id: str, cmd: list[str]):
        """rc.ExecSync: (stdout, stderr, failed), failed meaning a non-zero exit."""
        reply = self.rc.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                         timeout=EXEC_TIMEOUT))
        return reply.stdout.decode(), reply.stderr.decode(), reply.exit_code != 0

    def exec_ok(self, container_id: str, cmd: list[str]) -> str:
        """execSyncContainer: no error, stderr empty."""
        stdout, stderr, failed = self.exec_sync(container_id, cmd)
        assert not failed and stderr == "", (cmd, stdout, stderr)
        return stdout

    def exit_code(self, container_id: str) -> int:
        return self.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id)).status.exit_code


def log_lines(pod_config, log_path: str) -> list[tuple[str, str]]:
    """parseLogLine: (stream, log + newline) of each line of a CRI log file."""
    with open(os.path.join(pod_config.log_directory, log_path), "rb") as f:
        lines = [raw.split(" ", 3) for raw in f.read().decode().split("\n") if raw]
    return [(fields[1], fields[3] + "\n") for fields in lines]


def assert_logged(pod_config, log_path: str, text: str, stream: str = "stdout") -> None:
    """verifyLogContents: some line of that stream is exactly `text`."""
    lines = log_lines(pod_config, log_path)
    assert (stream, text) in lines, lines


# --- bucket ------------------------------------------------------------------------------------
def test_supplemental_groups(critest):
    """runtime should support SupplementalGroups"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config("container-with-SupplementalGroups-test-", PAUSE_COMMAND,
                                      supplemental_groups=[1234, 5678])
    container_id = critest.run(pod_id, pod_config, config)
    groups = critest.exec_ok(container_id, ["id", "-G"]).strip().split(" ")
    assert "1234" in groups and "5678" in groups


def test_run_as_user(critest):
    """runtime should support RunAsUser"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config("container-with-RunAsUser-test-", PAUSE_COMMAND,
                                      run_as_user=api_pb2.Int64Value(value=1001))
    container_id = critest.run(pod_id, pod_config, config)
    assert critest.exec_ok(container_id, ["id", "-u"]) == "1001\n"


def test_run_as_user_name(critest):
    """runtime should support RunAsUserName"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config("container-with-RunAsUserName-test-", PAUSE_COMMAND,
                                      run_as_username="nobody")
    container_id = critest.run(pod_id, pod_config, config)
    assert critest.exec_ok(container_id, ["id", "-nu"]) == "nobody\n"


def test_run_as_group(critest):
    """runtime should support RunAsGroup"""
    pod_id, pod_config = critest.pod_with_log_directory()
    config = critest.container_config("container-with-RunAsGroup-test-",
                                      ["sh", "-c", "echo $(id -u):$(id -g)"],
                                      run_as_user=api_pb2.Int64Value(value=1001),
                                      run_as_group=api_pb2.Int64Value(value=1002))
    config.log_path = config.metadata.name + ".log"
    critest.run(pod_id, pod_config, config, api_pb2.CONTAINER_EXITED)
    assert_logged(pod_config, config.log_path, "1001:1002\n")


def test_run_as_group_without_run_as_user_is_an_error(critest):
    """runtime should return error if RunAsGroup is set without RunAsUser"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config("container-with-RunAsGroup-without-RunAsUser-test-",
                                      ["sh", "-c", "echo $(id -u):$(id -g)"],
                                      run_as_group=api_pb2.Int64Value(value=1002))
    with pytest.raises(grpc.RpcError):
        critest.create_with_error(pod_id, pod_config, config)


@pytest.mark.parametrize("readonly", [False, True])
def test_read_only_rootfs(critest, readonly):
    """runtime should support that ReadOnlyRootfs is false / is true"""
    pod_id, pod_config = critest.pod_with_log_directory()
    config = critest.container_config(
        f"container-with-ReadOnlyRootfs-{str(readonly).lower()}-test-",
        ["sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"], readonly_rootfs=readonly)
    config.log_path = config.metadata.name + ".log"
    critest.run(pod_id, pod_config, config, api_pb2.CONTAINER_EXITED)
    if readonly:
        assert_logged(pod_config, config.log_path, "touch: test.go: Read-only file system\n",
                      "stderr")
    else:
        assert_logged(pod_config, config.log_path, "Found\n")


def network_manageable(critest, container_id: str) -> bool:
    """checkNetworkManagement: whether `brctl addbr foobar` succeeds."""
    return not critest.exec_sync(container_id, ["brctl", "addbr", "foobar"])[2]


@pytest.mark.parametrize("privileged", [True, False])
def test_privileged(critest, privileged):
    """runtime should support Privileged is true / is false"""
    pod_id, pod_config = critest.privileged_pod(privileged)
    prefix = "container-with-isPrivileged-test-" if privileged else \
        "container-with-notPrivileged-test-"
    config = critest.container_config(prefix, PAUSE_COMMAND, privileged=privileged)
    container_id = critest.run(pod_id, pod_config, config)
    assert network_manageable(critest, container_id) == privileged


def capability_container(critest, pod_id, pod_config, prefix, add=(), drop=()) -> str:
    """createCapabilityContainer: a capabilities message even when a list is empty."""
    config = critest.container_config(prefix, PAUSE_COMMAND, capabilities=api_pb2.Capability(
        add_capabilities=list(add), drop_capabilities=list(drop)))
    return critest.run(pod_id, pod_config, config)


def test_adding_capability(critest):
    """runtime should support adding capability"""
    pod_id, pod_config = critest.pod_for_container()
    added = capability_container(critest, pod_id, pod_config,
                                 "container-with-added-capability-test-", add=["NET_ADMIN"])
    assert network_manageable(critest, added)
    default = critest.container_config("container-with-notCapability-test-", ["top"])
    default.linux.ClearField("security_context")
    default.linux.SetInParent()
    default_id = critest.run(pod_id, pod_config, default)
    assert not network_manageable(critest, default_id)


def test_dropping_capability(critest):
    """runtime should support dropping capability"""
    pod_id, pod_config = critest.pod_for_container()
    container_id = capability_container(critest, pod_id, pod_config,
                                        "container-with-dropped-capability-test-",
                                        drop=["NET_RAW"])
    stdout, stderr, failed = critest.exec_sync(container_id, ["ping", "127.0.0.1"])
    assert failed and stdout != "" and "permission denied" in stderr, (stdout, stderr)


@pytest.mark.parametrize("kind", ["add", "drop"])
def test_all_capabilities(critest, kind):
    """runtime should support adding ALL capabilities / dropping ALL capabilities"""
    pod_id, pod_config = critest.pod_for_container()
    container_id = capability_container(
        critest, pod_id, pod_config, f"container-with-{kind}ed-all-capability-test-",
        **{kind: ["ALL"]})
    status = critest.exec_ok(container_id, ["cat", "/proc/self/status"])
    empty = "CapBnd:\t0000000000000000" in status
    assert empty == (kind == "drop"), status


def test_masked_paths(critest):
    """runtime should support MaskedPaths"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config("container-with-maskedpaths", PAUSE_COMMAND,
                                      masked_paths=["/bin/ls"])
    container_id = critest.run(pod_id, pod_config, config)
    # The spec runs `sh -c ls`; this busybox's sh runs applets in-process when named bare
    # (FEATURE_SH_STANDALONE; the image's is built without), so the path is given: sh then
    # execs /bin/ls, as the image's sh does for `ls`.
    _, stderr, failed = critest.exec_sync(container_id, ["/bin/sh", "-c", "/bin/ls"])
    assert failed and stderr == "/bin/sh: /bin/ls: Permission denied\n", stderr


def test_readonly_paths(critest):
    """runtime should support ReadonlyPaths"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config("container-with-readonlypaths", PAUSE_COMMAND,
                                      readonly_paths=["/tmp"])
    container_id = critest.run(pod_id, pod_config, config)
    _, stderr, failed = critest.exec_sync(container_id, ["touch", "/tmp/test"])
    assert failed and stderr == "touch: /tmp/test: Read-only file system\n", stderr


# --- NamespaceOption: HostIpc and HostNetwork ---------------------------------------------------
@pytest.fixture
def host_shm_segment():
    """`ipcmk -M 1048576` on the host; the segment is removed afterwards."""
    out = subprocess.run(["ipcmk", "-M", "1048576"], check=True, capture_output=True,
                         text=True).stdout
    segment = out.strip().removeprefix("Shared memory id: ")
    try:
        yield segment
    finally:
        subprocess.run(["ipcrm", "-m", segment], check=False, capture_output=True)


@pytest.mark.parametrize("mode", [NODE, POD])
def test_host_ipc(critest, host_shm_segment, mode):
    """runtime should support HostIpc is true / is false"""
    options = api_pb2.NamespaceOption(pid=POD, ipc=mode, network=POD)
    pod_id, pod_config = critest.namespace_pod(options)
    config = critest.container_config("namespace-container-", PAUSE_COMMAND,
                                      namespace_options=options)
    container_id = critest.run(pod_id, pod_config, config)
    # `ipcs -m`'s shmid column (busybox has no ipcs; this is the file it reads)
    table = critest.exec_ok(container_id, ["cat", "/proc/sysvipc/shm"])
    shmids = [line.split()[1] for line in table.splitlines()[1:]]
    assert (host_shm_segment in shmids) == (mode == NODE), table


@pytest.fixture
def host_listener():
    """What the spec listens on (Go's net.Listen("tcp", ":0")): every address, dual stack."""
    server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.mark.parametrize("host_network", [True, False])
def test_host_network(critest, host_listener, host_network):
    """runtime should support HostNetwork is true / is false"""
    options = api_pb2.NamespaceOption(pid=POD, ipc=POD, network=NODE if host_network else POD)
    pod_name = "NamespaceOption-PodSandbox-" + new_uuid()
    pod_id, pod_config = critest.namespace_pod(options, critest.log_temp_dir(pod_name),
                                               pod_name)
    config = critest.container_config("container-with-HostNetwork-test-",
                                      ["sh", "-c", "netstat -ln"], namespace_options=options)
    config.log_path = config.metadata.name + ".log"
    # The spec polls the log for a minute; netstat runs once, so its exit is the same point.
    critest.run(pod_id, pod_config, config, api_pb2.CONTAINER_EXITED)
    logged = [log for _, log in log_lines(pod_config, config.log_path)]
    assert logged, "netstat printed nothing"
    assert any(f":{host_listener}" in log for log in logged) == host_network, logged


# --- seccomp -----------------------------------------------------------------------------------
@pytest.fixture
def profiles():
    """The spec's BeforeEach: both profiles in a fresh seccomp-tests* directory."""
    directory = tempfile.mkdtemp(prefix="seccomp-tests")
    try:
        paths = {}
        for name, text in (("block-host-name.json", BLOCK_HOSTNAME_PROFILE),
                           ("block-chmod.json", BLOCK_CHMOD_PROFILE)):
            paths[name] = os.path.join(directory, name)
            with open(paths[name], "w") as f:
                f.write(text)
            os.chmod(paths[name], 0o644)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def profile_field(kind: int | None, ref: str = "") -> dict:
    """The seccomp field as the current spec sets it (None: no message at all)."""
    if kind is None:
        return {}
    return {"seccomp": api_pb2.SecurityProfile(profile_type=kind, localhost_ref=ref)}


def profile_path(kind: int | None, ref: str = "", spelling: str = "runtime/default") -> dict:
    """The deprecated seccomp_profile_path as critest v1.29's SeccompProfilePath specs set it."""
    path = {None: "", UNCONFINED: "unconfined", LOCALHOST: "localhost/" + ref,
            RUNTIME_DEFAULT: spelling}[kind]
    return {"seccomp_profile_path": path} if path else {}


SPELLINGS = {"field": profile_field, "path": profile_path}


def seccomp_test_container(critest, profile: dict) -> str:
    """seccompTestContainer: the profile on the pod and on the container."""
    pod_config = critest.pod_config("seccomp-sandbox-")
    pod_config.linux.security_context.SetInParent()
    for field, value in profile.items():
        if hasattr(value, "CopyFrom"):
            getattr(pod_config.linux.security_context, field).CopyFrom(value)
        else:
            setattr(pod_config.linux.security_context, field, value)
    pod_id = critest.run_pod(pod_config)
    config = critest.container_config("seccomp-container-" + new_uuid(), PAUSE_COMMAND,
                                      **profile)
    return critest.run(pod_id, pod_config, config)


def seccomp_mode(critest, container_id: str) -> str:
    """verifySeccomp with `grep Seccomp: /proc/self/status`."""
    return critest.exec_ok(container_id, ["grep", "Seccomp:", "/proc/self/status"]).split()[1]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("kind, mode", [(UNCONFINED, "0"), (RUNTIME_DEFAULT, "2"), (None, "0")])
def test_seccomp_mode(critest, spelling, kind, mode):
    """should support seccomp unconfined on the container / seccomp default on the container /
    nil profile, which is unconfined (v1.29's path spellings: unconfined, runtime/default,
    default which is unconfined)"""
    container_id = seccomp_test_container(critest, SPELLINGS[spelling](kind))
    assert seccomp_mode(critest, container_id) == mode


def test_seccomp_docker_default_path(critest):
    """should support seccomp docker/default on the container (v1.29)"""
    container_id = seccomp_test_container(critest, profile_path(RUNTIME_DEFAULT,
                                                                spelling="docker/default"))
    assert seccomp_mode(critest, container_id) == "2"


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_seccomp_localhost_profile(critest, profiles, spelling):
    """should support seccomp localhost profile on the container"""
    container_id = seccomp_test_container(
        critest, SPELLINGS[spelling](LOCALHOST, profiles["block-chmod.json"]))
    _, stderr, failed = critest.exec_sync(container_id, ["chmod", "400", "/"])
    assert failed and "Operation not permitted" in stderr, stderr


def seccomp_container(critest, pod_id, pod_config, profile: dict, caps, privileged) -> str:
    """createSeccompContainer: `sleep 60`, the capabilities message, the profile."""
    config = critest.container_config(
        "container-with-block-hostname-seccomp-profile-test-", ["sleep", "60"],
        privileged=privileged, capabilities=api_pb2.Capability(add_capabilities=caps),
        **profile)
    config.image.user_specified_image = BUSYBOX_IMAGE
    return critest.run(pod_id, pod_config, config)


def hostname_settable(critest, container_id: str) -> bool:
    """checkSetHostname."""
    return not critest.exec_sync(container_id, ["hostname", "ANewHostName"])[2]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_unconfined_seccomp_with_sys_admin_sets_hostname(critest, spelling):
    """runtime should not block setting host name with unconfined seccomp and SYS_ADMIN"""
    pod_id, pod_config = critest.pod_for_container()
    container_id = seccomp_container(critest, pod_id, pod_config,
                                     SPELLINGS[spelling](UNCONFINED), ["SYS_ADMIN"], False)
    assert hostname_settable(critest, container_id)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_profile_blocks_hostname_despite_sys_admin(critest, profiles, spelling):
    """runtime should support an seccomp profile that blocks setting hostname with SYS_ADMIN"""
    pod_id, pod_config = critest.pod_for_container()
    profile = SPELLINGS[spelling](LOCALHOST, profiles["block-host-name.json"])
    container_id = seccomp_container(critest, pod_id, pod_config, profile, ["SYS_ADMIN"], False)
    assert not hostname_settable(critest, container_id)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_privileged_ignores_a_profile(critest, profiles, spelling):
    """runtime should ignore a seccomp profile that blocks setting hostname when privileged"""
    pod_id, pod_config = critest.privileged_pod(True)
    profile = SPELLINGS[spelling](LOCALHOST, profiles["block-host-name.json"])
    container_id = seccomp_container(critest, pod_id, pod_config, profile, [], True)
    assert hostname_settable(critest, container_id)


# --- NoNewPrivs --------------------------------------------------------------------------------
@pytest.mark.parametrize("no_new_privs, euid", [(True, 1000), (False, 0)])
def test_no_new_privs(critest, no_new_privs, euid):
    """should not allow privilege escalation when true / should allow it when false"""
    pod_id, pod_config = critest.pod_with_log_directory()
    name = f"alpine-nnp-{str(no_new_privs).lower()}-" + new_uuid()
    config = critest.container_config("", image=NO_NEW_PRIVS_IMAGE, no_new_privs=no_new_privs,
                                      run_as_user=api_pb2.Int64Value(value=1000))
    config.metadata.name = name
    config.log_path = name + ".log"
    critest.run(pod_id, pod_config, config, api_pb2.CONTAINER_EXITED)
    assert_logged(pod_config, config.log_path, f"Effective uid: {euid}\n")


def test_corrald_advertises_no_feature_critest_would_then_test(critest):
    """SupplementalGroupsPolicy and UserNamespaces run only when Status says so."""
    status = critest.rc.Status(api_pb2.StatusRequest(verbose=False))
    assert not status.features.supplemental_groups_policy
    assert not any(handler.features.user_namespaces for handler in status.runtime_handlers)


# --- critest v1.29's deprecated seccomp_profile_path specs, beyond the ones above ------------
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("caps, settable", [(["SYS_ADMIN"], True), (None, False)])
def test_runtime_default_and_sethostname(critest, spelling, caps, settable):
    """runtime should support setting hostname with docker/default seccomp profile and
    SYS_ADMIN / should block sethostname with docker/default seccomp profile and no extra
    caps (and the same with the RuntimeDefault type)"""
    pod_id, pod_config = critest.pod_for_container()
    profile = profile_path(RUNTIME_DEFAULT, spelling="docker/default") \
        if spelling == "path" else profile_field(RUNTIME_DEFAULT)
    container_id = seccomp_container(critest, pod_id, pod_config, profile, caps, False)
    assert seccomp_mode(critest, container_id) == "2"
    assert hostname_settable(critest, container_id) == settable


def test_custom_profile_path_needs_the_localhost_prefix(critest, profiles):
    """runtime should not support a custom seccomp profile without using localhost/ as a
    prefix"""
    pod_id, pod_config = critest.pod_for_container()
    config = critest.container_config(
        "container-with-block-hostname-seccomp-profile-test-", ["sleep", "60"],
        capabilities=api_pb2.Capability(),
        seccomp_profile_path=profiles["block-host-name.json"])
    with pytest.raises(grpc.RpcError) as info:
        critest.create_with_error(pod_id, pod_config, config)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
