"""CRI security context → OCI: seccomp profile choice, the RuntimeDefault list, capabilities."""

from __future__ import annotations

import json

import pytest
from cri_api.v1 import api_pb2

from corral.runtime.seccomp import compile_program
from corral.sandbox import ocispec as oci

RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = 0, 1, 2


def security(**fields) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(**fields)


def allowed(profile: dict) -> set[str]:
    return {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
            and not rule.get("args") for name in rule["names"]}


def test_profile_types_follow_the_cri_enum(tmp_path):
    assert api_pb2.SecurityProfile.RuntimeDefault == RUNTIME_DEFAULT
    caps = list(oci.DEFAULT_CAPABILITIES)
    default = oci.seccomp_profile(security(seccomp=api_pb2.SecurityProfile(
        profile_type=RUNTIME_DEFAULT)), caps)
    assert default["defaultAction"] == "SCMP_ACT_ERRNO"
    assert oci.seccomp_profile(security(seccomp=api_pb2.SecurityProfile(
        profile_type=UNCONFINED)), caps) is None
    assert oci.seccomp_profile(security(), caps) is None  # neither field: none, as containerd
    local = tmp_path / "p.json"
    local.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    assert oci.seccomp_profile(security(seccomp=api_pb2.SecurityProfile(
        profile_type=LOCALHOST, localhost_ref=str(local))), caps) == \
        {"defaultAction": "SCMP_ACT_LOG"}


def test_deprecated_profile_path_spellings(tmp_path):
    caps = list(oci.DEFAULT_CAPABILITIES)
    default = oci.runtime_default_seccomp(caps)
    for path in ("runtime/default", "docker/default"):
        assert oci.seccomp_profile(security(seccomp_profile_path=path), caps) == default
    assert oci.seccomp_profile(security(seccomp_profile_path="unconfined"), caps) is None
    local = tmp_path / "p.json"
    local.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert oci.seccomp_profile(security(seccomp_profile_path=f"localhost/{local}"), caps) == \
        {"defaultAction": "SCMP_ACT_ALLOW"}
    # the field wins over the path
    assert oci.seccomp_profile(security(
        seccomp_profile_path="runtime/default",
        seccomp=api_pb2.SecurityProfile(profile_type=UNCONFINED)), caps) is None


@pytest.mark.parametrize("fields, message", [
    ({"seccomp_profile_path": "bogus"}, "invalid profile 'bogus'"),
    ({"seccomp_profile_path": "localhost/relative.json"}, "absolute path"),
    ({"seccomp": api_pb2.SecurityProfile(profile_type=LOCALHOST,
                                         localhost_ref="/nonexistent.json")}, "No such file"),
    ({"seccomp": api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT,
                                         localhost_ref="/x.json")}, "only for a Localhost"),
])
def test_bad_profiles_are_translation_errors(fields, message):
    with pytest.raises(oci.TranslationError, match=message):
        oci.seccomp_profile(security(**fields), list(oci.DEFAULT_CAPABILITIES))


def test_runtime_default_is_an_allow_list_gated_by_capabilities():
    plain = oci.runtime_default_seccomp(list(oci.DEFAULT_CAPABILITIES), machine="x86_64")
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = allowed(plain)
    assert {"read", "execve", "arch_prctl", "chroot", "socket"} <= names
    assert not names & {"unshare", "setns", "mount", "keyctl", "add_key", "request_key",
                        "bpf", "reboot", "kexec_load", "init_module", "acct",
                        "io_uring_setup", "clone3", "clone"}
    clone = [r for r in plain["syscalls"] if r["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in \
        plain["syscalls"]
    assert sorted(r["args"][0]["value"] for r in plain["syscalls"]
                  if r["names"] == ["personality"]) == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]

    admin = oci.runtime_default_seccomp(oci.DEFAULT_CAPABILITIES + ["CAP_SYS_ADMIN",
                                                                     "CAP_SYS_PTRACE"])
    assert {"unshare", "setns", "mount", "clone", "clone3", "kcmp"} <= allowed(admin)
    assert not any(r["action"] == "SCMP_ACT_ERRNO" for r in admin["syscalls"])
    assert "keyctl" not in allowed(admin)
    s390 = oci.runtime_default_seccomp([], machine="s390x")
    assert [r["args"][0]["index"] for r in s390["syscalls"] if r["names"] == ["clone"]] == [1]


def test_runtime_default_compiles_with_libseccomp():
    for caps in ([], oci.DEFAULT_CAPABILITIES, oci.host_capabilities()):
        program = compile_program(oci.runtime_default_seccomp(list(caps)))
        assert program.bpf


def test_capabilities_expand_to_the_bounding_set():
    with open("/proc/self/status") as f:
        bounding = int(next(line for line in f if line.startswith("CapBnd:")).split()[1], 16)
    host = oci.host_capabilities()
    assert sum(1 << oci.CAPABILITY_NAMES.index(c) for c in host) == bounding

    def caps(add=(), drop=()):
        return oci._capabilities(api_pb2.Capability(add_capabilities=add,
                                                    drop_capabilities=drop))

    assert caps(["ALL"]) == host
    assert caps(["ALL"], ["CHOWN"]) == [c for c in host if c != "CAP_CHOWN"]
    assert caps(drop=["ALL"]) == []
    assert caps(["NET_ADMIN"], ["ALL"]) == ["CAP_NET_ADMIN"]
    assert caps(["ALL"], ["ALL"]) == []
    assert caps(["SYS_ADMIN"], ["KILL"]) == [c for c in oci.DEFAULT_CAPABILITIES
                                             if c != "CAP_KILL"] + ["CAP_SYS_ADMIN"]
    with pytest.raises(oci.TranslationError, match="unknown capability 'CAP_NOPE'"):
        caps(["NOPE"])


def test_run_as_group_needs_a_user(tmp_path):
    with pytest.raises(oci.TranslationError, match="run_as_group: set without run_as_user"):
        oci._user(security(run_as_group=api_pb2.Int64Value(value=5)), "", str(tmp_path))
    assert oci._user(security(run_as_group=api_pb2.Int64Value(value=5),
                              run_as_user=api_pb2.Int64Value(value=7)), "", str(tmp_path)) == \
        {"uid": 7, "gid": 5}
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("app:x:9:9::/:/bin/sh\n")
    assert oci._user(security(run_as_group=api_pb2.Int64Value(value=5),
                              run_as_username="app"), "", str(tmp_path)) == {"uid": 9, "gid": 5}


def test_pod_level_security_context(tmp_path):
    def pod(**fields):
        config = api_pb2.PodSandboxConfig()
        config.linux.security_context.CopyFrom(api_pb2.LinuxSandboxSecurityContext(**fields))
        return config

    default = pod(seccomp=api_pb2.SecurityProfile(profile_type=RUNTIME_DEFAULT))
    assert oci.sandbox_seccomp(default)["defaultAction"] == "SCMP_ACT_ERRNO"
    assert oci.sandbox_seccomp(pod(seccomp_profile_path="unconfined")) is None
    assert oci.sandbox_seccomp(pod(privileged=True, seccomp_profile_path="runtime/default")) \
        is None
    oci.check_pod_security(default)
    for bad, message in ((pod(seccomp_profile_path="nonsense"), "invalid profile"),
                         (pod(run_as_group=api_pb2.Int64Value(value=3)), "without run_as_user")):
        with pytest.raises(oci.TranslationError, match=message):
            oci.check_pod_security(bad)
    oci.check_pod_security(pod(run_as_group=api_pb2.Int64Value(value=3),
                               run_as_user=api_pb2.Int64Value(value=3)))
