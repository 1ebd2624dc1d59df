"""linux.seccomp through libseccomp: actions, errno, argument conditions, exec'd processes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.root

ENOSPC = 28


def profile(*rules, default="SCMP_ACT_ALLOW", **extra) -> dict:
    return {"defaultAction": default, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": list(rules), **extra}


def run(runtime, bundle, script: str):
    bundle.write(["sh", "-c", script])
    return runtime("run", "--bundle", str(bundle.path), runtime.new_id(), check=False)


@pytest.mark.parametrize("no_new_privs", [True, False])
def test_a_denied_mkdir_fails_with_the_configured_errno(runtime, bundle, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.config["root"]["readonly"] = False
    bundle.linux["seccomp"] = profile(
        {"names": ["mkdir", "mkdirat", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO",
         "errnoRet": ENOSPC})
    result = run(runtime, bundle, "mkdir /tmp/x || echo refused; touch /tmp/y && echo touched")
    assert "No space left on device" in result.stderr
    assert result.stdout.split() == ["refused", "touched"]


def test_kill_process_action(runtime, bundle):
    bundle.linux["seccomp"] = profile({"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"})
    result = run(runtime, bundle, "uname")
    assert result.returncode == 128 + 31  # SIGSYS


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"])
def test_kill_and_kill_thread_kill(runtime, bundle, action):
    """SECCOMP_RET_KILL_THREAD is 0: it once fell through to TRACE, i.e. -ENOSYS."""
    bundle.linux["seccomp"] = profile({"names": ["uname"], "action": action})
    result = run(runtime, bundle, "uname; echo survived")
    assert "survived" not in result.stdout
    assert "Function not implemented" not in result.stderr


def test_a_kill_rule_with_only_other_architectures_listed(runtime, bundle):
    """runc's startContainer-hook profile lists x86 and x32 only: the native one is
    always in the filter, and its rule kills there too (the hook's own mkdir)."""
    bundle.linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                               "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_KILL"}]}
    bundle.config["hooks"] = {"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "mkdir /dev/shm/foo"]}]}
    result = run(runtime, bundle, "true")
    assert result.returncode != 0
    assert "error running hook: signal: bad system call" in result.stderr, result.stderr


def test_argument_conditions(runtime, bundle):
    # kill(pid, SIGUSR1) is refused; kill(pid, 0) is not.
    bundle.linux["seccomp"] = profile(
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]})
    result = run(runtime, bundle, "kill -0 $$ && echo zero-ok; kill -USR1 $$ || echo usr1-refused")
    assert result.stdout.split() == ["zero-ok", "usr1-refused"]


def test_default_errno_with_an_allow_list(runtime, bundle):
    # Everything is refused but what a shell needs to run `echo` and `exit`.
    allowed = ["execve", "brk", "arch_prctl", "set_tid_address", "set_robust_list", "rseq",
               "prlimit64", "readlink", "getuid", "getgid", "geteuid", "getegid", "getpid",
               "getppid", "write", "exit_group", "rt_sigaction", "rt_sigprocmask", "ioctl",
               "uname", "mprotect", "getcwd", "stat", "newfstatat", "fstat", "read", "close",
               "fcntl", "dup2", "getrandom", "mmap", "munmap", "wait4", "rt_sigreturn",
               "sigaltstack", "statx", "lseek", "getpgrp", "setpgid", "access", "faccessat2"]
    bundle.linux["seccomp"] = profile({"names": allowed, "action": "SCMP_ACT_ALLOW"},
                                      default="SCMP_ACT_ERRNO", defaultErrnoRet=ENOSPC)
    result = run(runtime, bundle, "echo alive; mkdir /tmp/x; exit 0")
    assert result.stdout == "alive\n"
    assert "No space left on device" in result.stderr


def test_exec_gets_the_containers_filter(runtime, bundle):
    bundle.linux["seccomp"] = profile({"names": ["mkdir", "mkdirat"],
                                       "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSPC})
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    result = runtime("exec", cid, "mkdir", "/tmp/z", check=False)
    assert result.returncode != 0 and "No space left on device" in result.stderr
    status = runtime("exec", cid, "grep", "Seccomp:", "/proc/self/status").stdout
    assert status.split() == ["Seccomp:", "2"]  # filter mode
    runtime("delete", "--force", cid)


@pytest.mark.parametrize("broken, message", [
    ({"defaultAction": "SCMP_ACT_EXPLODE"}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "NOPE"}]},
     "linux.seccomp.syscalls[0].action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]},
     "linux.seccomp.architectures[0]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "op": "LIKE"}]}]},
     "linux.seccomp.syscalls[0].args[0].op"),
])
def test_a_bad_profile_is_a_clear_error(runtime, bundle, broken, message):
    bundle.linux["seccomp"] = broken
    result = run(runtime, bundle, "true")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_features_lists_seccomp(runtime):
    features = json.loads(runtime("features").stdout)
    assert features["linux"]["seccomp"]["enabled"] is True
