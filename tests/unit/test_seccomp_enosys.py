"""runc's -ENOSYS stub in front of libseccomp's BPF, loaded in a forked child (seccomp
needs no root with no_new_privs) that reports what its syscalls returned."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

import pytest

from corral.runtime import seccomp
from corral.runtime.syscalls import PR_SET_NO_NEW_PRIVS, LinuxSyscalls, libc

CLONE3, PTRACE = 435, 101  # x86_64
SIGSYS = 31
# What the child needs once the filter is in: its report and its exit.
_CHILD_NEEDS = ["write", "exit_group", "exit", "rt_sigreturn", "brk", "mmap", "munmap", "futex"]

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="syscall numbers of x86_64")


def profile(default: str, **extra) -> dict:
    return {"defaultAction": default, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": _CHILD_NEEDS, "action": "SCMP_ACT_ALLOW"}], **extra}


def errnos_under(program: seccomp.SeccompProgram, *numbers: int) -> tuple[list[int], int]:
    """Each syscall's errno (no arguments) in a child under `program`; its wait status."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            sc = LinuxSyscalls()
            sc.prctl(PR_SET_NO_NEW_PRIVS, 1)
            sc.load_seccomp(program.bpf, program.flags)
            for number in numbers:
                libc().syscall(number, -1, 0, 0, 0)
                os.write(write_end, struct.pack("i", ctypes.get_errno()))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return [value for (value,) in struct.iter_unpack("i", data)], status


def test_new_syscalls_get_enosys_and_older_ones_the_default():
    program = seccomp.compile_program(profile("SCMP_ACT_ERRNO"))
    assert errnos_under(program, CLONE3, PTRACE) == ([errno.ENOSYS, errno.EPERM], 0)


def test_a_killing_default_spares_syscalls_newer_than_the_profile():
    program = seccomp.compile_program(profile("SCMP_ACT_KILL_PROCESS"))
    assert errnos_under(program, CLONE3) == ([errno.ENOSYS], 0)
    _, status = errnos_under(program, PTRACE)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGSYS


def test_a_syscall_the_profile_names_raises_the_ceiling():
    raised = profile("SCMP_ACT_ERRNO")
    raised["syscalls"].append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                               "errnoRet": errno.ENOSPC})
    program = seccomp.compile_program(raised)
    assert errnos_under(program, CLONE3, PTRACE) == ([errno.ENOSPC, errno.EPERM], 0)


@pytest.mark.parametrize("default, extra", [
    ("SCMP_ACT_ALLOW", {}), ("SCMP_ACT_LOG", {}), ("SCMP_ACT_TRACE", {}),
    ("SCMP_ACT_ERRNO", {"defaultErrnoRet": errno.ENOSYS}),
    ("SCMP_ACT_ERRNO", {"architectures": []}),
])
def test_no_stub_where_runc_adds_none(default, extra):
    raw = profile(default, **extra)
    bare = seccomp._export(seccomp.compile_filter(raw))
    assert seccomp.compile_program(raw).bpf == bare


def test_the_stub_checks_each_architecture_named():
    raw = profile("SCMP_ACT_ERRNO")
    raw["architectures"] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    code = seccomp.compile_program(raw).bpf
    insns = [struct.unpack("=HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    compared = {k for op, _, _, k in insns[:8] if op == 0x15}  # jeq on the arch
    assert {0xC000003E, 0x40000003} <= compared  # AUDIT_ARCH_X86_64, AUDIT_ARCH_I386


def test_notify_asks_for_a_listener():
    raw = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock",
           "listenerMetadata": "m",
           "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}
    program = seccomp.compile_program(raw)
    assert program.notifies and program.listener_metadata == "m"
    assert not seccomp.compile_program(profile("SCMP_ACT_ERRNO")).notifies
