"""Seccomp profiles, privileges and users through the CRI, checked from inside the container.

Each profile type (and each deprecated seccomp_profile_path spelling) is looked at from
inside: /proc/self/status's Seccomp line (2 a filter, 0 none), busybox `unshare -U`, and
a small static C probe calling add_key, keyctl and clone3 directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.corrald import remove_every_pod, running_corrald

RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = 0, 1, 2
PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    printf("%s=%s\n", name, rc < 0 ? strerrorname_np(errno) : "ok");
}

int main(void) {
    /* KEY_SPEC_PROCESS_KEYRING is -2; KEYCTL_GET_KEYRING_ID is 0 */
    report("add_key", syscall(SYS_add_key, "user", "corral-test", "x", 1, -2));
    report("keyctl", syscall(SYS_keyctl, 0, -2, 1));
    report("clone3", syscall(SYS_clone3, NULL, 0));  /* EINVAL when it reaches the kernel */
    return 0;
}
"""
CONFINED = {"add_key": "EPERM", "keyctl": "EPERM", "clone3": "ENOSYS"}
UNCONFINED_RESULT = {"add_key": "ok", "keyctl": "ok", "clone3": "EINVAL"}


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("corrsec0", "10.99.62.0/24") as daemon:
        yield daemon


@pytest.fixture
def daemon(corrald):
    yield corrald
    remove_every_pod(corrald)


@pytest.fixture(scope="module")
def probe() -> str:
    """The static probe, compiled once and cached in tmp by the hash of its source."""
    digest = hashlib.sha256(PROBE_SOURCE.encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "corral-test-cache")
    path = os.path.join(cache, f"secprobe-{digest}")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            source = os.path.join(work, "probe.c")
            with open(source, "w") as f:
                f.write(PROBE_SOURCE)
            subprocess.run(["gcc", "-static", "-O1", "-o", os.path.join(work, "probe"), source],
                           check=True, capture_output=True)
            os.replace(os.path.join(work, "probe"), path)
    return path


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert "Traceback" not in info.value.details()
    return info.value.code()


def run_sleeper(daemon, name: str, probe: str | None = None, pod_privileged: bool = False,
                **security) -> str:
    pod_config = daemon.pod_config(name)
    pod_config.linux.security_context.privileged = pod_privileged
    pod_id = daemon.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=pod_config)).pod_sandbox_id
    config = daemon.container_config(name, ["sleep", "300"])
    config.linux.security_context.CopyFrom(api_pb2.LinuxContainerSecurityContext(**security))
    if probe:
        config.mounts.append(api_pb2.Mount(host_path=probe, container_path="/secprobe",
                                           readonly=True))
    container_id = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    return container_id


def sh(daemon, container_id: str, script: str) -> str:
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["sh", "-c", script], timeout=20))
    assert reply.exit_code == 0, reply.stderr
    return reply.stdout.decode()


def inside(daemon, container_id: str) -> dict:
    """Seccomp mode of the init and of an exec'd process, unshare -U, and the probe's calls."""
    out = sh(daemon, container_id,
             "grep Seccomp: /proc/1/status | tr -d ' \\t' | sed s/^/init/; "
             "grep Seccomp: /proc/self/status | tr -d ' \\t'; "
             "if unshare -U true 2>/dev/null; then echo unshare=ok; else echo unshare=denied; fi; "
             "/secprobe")
    return dict(line.replace(":", "=", 1).split("=", 1) for line in out.split())


def caps_of(status_text: str, field: str) -> int:
    return int(next(line for line in status_text.splitlines()
                    if line.startswith(field + ":")).split()[1], 16)


def corrald_bounding(daemon) -> int:
    with open(f"/proc/{daemon.process.pid}/status") as f:
        return caps_of(f.read(), "CapBnd")


# --- seccomp -------------------------------------------------------------------------------------
def test_runtime_default_filters_and_unconfined_does_not(daemon, probe):
    default = run_sleeper(daemon, "sec-default", probe,
                          seccomp=api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT))
    assert inside(daemon, default) == {"initSeccomp": "2", "Seccomp": "2",
                                       "unshare": "denied", **CONFINED}
    unconfined = run_sleeper(daemon, "sec-unconfined", probe,
                             seccomp=api_pb2.SecurityProfile(profile_type=UNCONFINED))
    assert inside(daemon, unconfined) == {"initSeccomp": "0", "Seccomp": "0",
                                          "unshare": "ok", **UNCONFINED_RESULT}
    unset = run_sleeper(daemon, "sec-unset", probe)  # neither field: none, as containerd
    assert inside(daemon, unset)["Seccomp"] == "0"


@pytest.mark.parametrize("path, filtered", [
    ("runtime/default", True), ("docker/default", True), ("unconfined", False)])
def test_deprecated_profile_paths(daemon, probe, path, filtered):
    container_id = run_sleeper(daemon, "sec-path", probe, seccomp_profile_path=path)
    seen = inside(daemon, container_id)
    assert seen["Seccomp"] == ("2" if filtered else "0")
    assert {k: seen[k] for k in CONFINED} == (CONFINED if filtered else UNCONFINED_RESULT)


def test_localhost_profile_by_field_and_by_path(daemon, probe, tmp_path):
    profile = tmp_path / "deny-unshare.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["unshare", "add_key"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 13}]}))
    for name, security in (
            ("sec-local", {"seccomp": api_pb2.SecurityProfile(profile_type=LOCALHOST,
                                                              localhost_ref=str(profile))}),
            ("sec-localpath", {"seccomp_profile_path": f"localhost/{profile}"})):
        seen = inside(daemon, run_sleeper(daemon, name, probe, **security))
        assert (seen["Seccomp"], seen["unshare"], seen["add_key"], seen["keyctl"]) == \
            ("2", "denied", "EACCES", "ok")


def test_runtime_default_runs_ordinary_programs_and_follows_capabilities(daemon, probe):
    container_id = run_sleeper(daemon, "sec-ordinary", probe,
                               seccomp=api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT))
    out = sh(daemon, container_id,
             "ls / >/dev/null && echo ls-ok; mkdir /tmp/d && echo hi > /tmp/d/f && "
             "cat /tmp/d/f; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo ping-ok; "
             "(sleep 0.1 &) ; wait; chroot / true && echo chroot-ok")
    assert out.split() == ["ls-ok", "hi", "ping-ok", "chroot-ok"]
    # CAP_SYS_ADMIN in the bounding set brings its syscalls (unshare, clone3) back
    admin = run_sleeper(daemon, "sec-admin", probe,
                        capabilities=api_pb2.Capability(add_capabilities=["SYS_ADMIN"]),
                        seccomp=api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT))
    seen = inside(daemon, admin)
    assert (seen["Seccomp"], seen["unshare"], seen["clone3"], seen["keyctl"]) == \
        ("2", "ok", "EINVAL", "EPERM")


@pytest.mark.parametrize("security", [
    {"seccomp_profile_path": "bogus"},
    {"seccomp_profile_path": "localhost/relative/profile.json"},
    {"seccomp": api_pb2.SecurityProfile(profile_type=LOCALHOST,
                                        localhost_ref="/nonexistent/profile.json")},
    {"seccomp": api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT, localhost_ref="/x")},
    {"run_as_group": api_pb2.Int64Value(value=1000)},
])
def test_invalid_security_contexts(daemon, security):
    pod_id, pod_config = daemon.run_pod("sec-invalid")
    config = daemon.container_config("bad", ["true"])
    config.linux.security_context.CopyFrom(api_pb2.LinuxContainerSecurityContext(**security))
    assert code_of(daemon.runtime.CreateContainer, api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert not daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers


@pytest.mark.parametrize("security", [
    {"seccomp_profile_path": "bogus"},
    {"seccomp": api_pb2.SecurityProfile(profile_type=LOCALHOST,
                                        localhost_ref="/nonexistent/profile.json")},
    {"run_as_group": api_pb2.Int64Value(value=1000)},
])
def test_invalid_pod_security_contexts(daemon, security):
    # containerd resolves the pod-level profile for the pause container at RunPodSandbox
    config = daemon.pod_config("sec-badpod")
    config.linux.security_context.MergeFrom(api_pb2.LinuxSandboxSecurityContext(**security))
    assert code_of(daemon.runtime.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=config)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert not daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items


def test_pod_level_profile_is_not_inherited_by_containers(daemon, probe):
    # kubelet copies a pod's profile into each container's context; corrald reads only that
    pod_config = daemon.pod_config("sec-podlevel")
    pod_config.linux.security_context.seccomp.profile_type = RUNTIME_DEFAULT
    pod_id = daemon.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=pod_config)).pod_sandbox_id
    seen = {}
    for name, profile in (("unset", None), ("default", RUNTIME_DEFAULT)):
        config = daemon.container_config(name, ["sleep", "300"])
        if profile is not None:
            config.linux.security_context.seccomp.profile_type = profile
        config.mounts.append(api_pb2.Mount(host_path=probe, container_path="/secprobe",
                                           readonly=True))
        container_id = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
        seen[name] = inside(daemon, container_id)["Seccomp"]
    assert seen == {"unset": "0", "default": "2"}


def test_run_as_group_with_user(daemon):
    container_id = run_sleeper(daemon, "sec-group", run_as_user=api_pb2.Int64Value(value=1000),
                               run_as_group=api_pb2.Int64Value(value=2000))
    assert sh(daemon, container_id, "id -u; id -g").split() == ["1000", "2000"]


# --- capabilities --------------------------------------------------------------------------------
def test_privileged_container_has_corralds_bounding_set(daemon):
    container_id = run_sleeper(daemon, "sec-priv", pod_privileged=True, privileged=True,
                               seccomp=api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT))
    status = sh(daemon, container_id, "cat /proc/1/status")
    bounding = corrald_bounding(daemon)
    for field in ("CapBnd", "CapEff", "CapPrm"):
        assert caps_of(status, field) == bounding, field
    assert "Seccomp:\t0" in status  # privileged: no profile, as containerd


def test_all_capabilities_added_and_dropped(daemon):
    everything = run_sleeper(daemon, "sec-all", capabilities=api_pb2.Capability(
        add_capabilities=["ALL"], drop_capabilities=["CHOWN"]))
    status = sh(daemon, everything, "cat /proc/1/status")
    assert caps_of(status, "CapEff") == corrald_bounding(daemon) & ~1  # CAP_CHOWN is bit 0
    nothing = run_sleeper(daemon, "sec-none", capabilities=api_pb2.Capability(
        drop_capabilities=["ALL"]))
    status = sh(daemon, nothing, "cat /proc/1/status")
    assert (caps_of(status, "CapEff"), caps_of(status, "CapBnd")) == (0, 0)


# --- mount propagation on a privileged pod (critest's Container Mount Propagation) -------------
@pytest.mark.parametrize("propagation", [
    api_pb2.PROPAGATION_PRIVATE, api_pb2.PROPAGATION_HOST_TO_CONTAINER,
    api_pb2.PROPAGATION_BIDIRECTIONAL])
def test_mount_propagation_on_a_privileged_pod(daemon, tmp_path, propagation):
    source, host_dir = tmp_path / "mnt", tmp_path / "src"
    host_mount, container_mount = source / "fromhost", source / "fromcontainer"
    host_mount.mkdir(parents=True)
    host_dir.mkdir()
    (host_dir / "flag").write_text("x")
    mounted = []
    try:
        subprocess.run(["mount", "--rbind", str(source), str(source)], check=True)
        mounted.append(source)
        kind = "--make-rprivate" if propagation == api_pb2.PROPAGATION_PRIVATE \
            else "--make-rshared"
        subprocess.run(["mount", kind, str(source)], check=True)

        pod_config = daemon.pod_config("sec-prop")
        pod_config.linux.security_context.privileged = True
        pod_id = daemon.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config)).pod_sandbox_id
        config = daemon.container_config("prop", ["sleep", "300"])
        config.linux.security_context.privileged = True
        config.mounts.append(api_pb2.Mount(host_path=str(source), container_path=str(source),
                                           propagation=propagation))
        container_id = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
        mounts = daemon.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id)).status.mounts
        assert [(m.host_path, m.propagation) for m in mounts] == [(str(source), propagation)]

        subprocess.run(["mount", "--bind", str(host_dir), str(host_mount)], check=True)
        mounted.append(host_mount)
        seen_inside = sh(daemon, container_id, f"ls -A {host_mount}").split()
        assert seen_inside == ([] if propagation == api_pb2.PROPAGATION_PRIVATE else ["flag"])

        sh(daemon, container_id, f"mkdir -p {container_mount} && "
                                 f"mount --bind /etc {container_mount}")
        mounted.append(container_mount)
        seen_on_host = os.listdir(container_mount)
        if propagation == api_pb2.PROPAGATION_BIDIRECTIONAL:
            assert "passwd" in seen_on_host
        else:
            assert seen_on_host == []
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.mark.parametrize("propagation", [api_pb2.PROPAGATION_HOST_TO_CONTAINER,
                                         api_pb2.PROPAGATION_BIDIRECTIONAL])
def test_propagation_a_private_host_mount_cannot_give_is_refused(daemon, tmp_path, propagation):
    source = tmp_path / "private"
    source.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(source)], check=True)
    try:
        subprocess.run(["mount", "--make-rprivate", str(source)], check=True)
        pod_config = daemon.pod_config("sec-refuse")
        pod_config.linux.security_context.privileged = True
        pod_id = daemon.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config)).pod_sandbox_id
        config = daemon.container_config("prop", ["true"])
        config.linux.security_context.privileged = True
        config.mounts.append(api_pb2.Mount(host_path=str(source), container_path="/vol",
                                           propagation=propagation))
        with pytest.raises(grpc.RpcError) as info:
            daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"is on {source}, which is" in info.value.details()
    finally:
        subprocess.run(["umount", "-l", str(source)], check=False, capture_output=True)
