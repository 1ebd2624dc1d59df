"""Compiling OCI seccomp profiles with libseccomp (no filter is loaded here)."""

from __future__ import annotations

import tempfile

import pytest

from corral.runtime.errors import ConfigInvalid
from corral.runtime.seccomp import compile_filter


def test_a_profile_compiles_to_bpf():
    fltr = compile_filter({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["read", "write", "not_a_syscall_at_all"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            # Two conditions on one argument: split into two rules, as runc does.
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        ]})
    with tempfile.TemporaryFile() as f:
        fltr.export_bpf(f)
        assert f.tell() > 0 and f.tell() % 8 == 0  # whole BPF instructions


@pytest.mark.parametrize("profile, where", [
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]},
     "linux.seccomp.flags[0]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["read"]}, "linux.seccomp.syscalls[0]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]},
     "linux.seccomp.syscalls[0].errnoRet"),
])
def test_bad_profiles_name_the_field(profile, where):
    with pytest.raises(ConfigInvalid, match=where.replace("[", r"\[").replace("]", r"\]")):
        compile_filter(profile)
