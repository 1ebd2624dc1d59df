"""Real profiles: one older than close_range, runc's -ENOSYS for syscalls newer than a
profile, and startContainer hooks under the filter.

A profile written before Linux 5.9 (docker's default of 2018, which runtime-tools
still generates) names neither close_range nor clone3: the container must still
run, with and without noNewPrivileges, for `run`, `exec` and a terminal, and the
new syscalls must answer ENOSYS (programs fall back on it), not the default EPERM.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.integration.test_console import ConsoleReceiver, read_until

pytestmark = pytest.mark.root

EPERM, ENOSYS, ENOSPC = 1, 38, 28
# x86_64 numbers (the suite runs there): all newer than statx (332), the last the
# old profile below names.
SYSCALLS = {"clone3": 435, "close_range": 436, "openat2": 437, "faccessat2": 439,
            "ptrace": 101, "mkdirat": 258}

# The allow list of a 2018-era default profile (docker's of that year, as
# runtime-tools' generator still writes it): nothing added after Linux 4.14.
_OLD_ALLOWED = """
accept accept4 access alarm bind brk capget capset chdir chmod chown clock_getres
clock_gettime clock_nanosleep close connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_wait eventfd eventfd2 execve
execveat exit exit_group faccessat fadvise64 fallocate fanotify_mark fchdir fchmod
fchmodat fchown fchownat fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr
fsetxattr fstat fstatfs fsync ftruncate futex futimesat getcpu getcwd getdents
getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresuid getrlimit get_robust_list
getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid
getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl
io_destroy io_getevents ioprio_get ioprio_set io_setup io_submit kill lchown lgetxattr
link linkat listen listxattr llistxattr lremovexattr lseek lsetxattr lstat madvise
memfd_create mincore mkdir mknod mknodat mlock mlock2 mlockall mmap mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl
msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat open openat
pause pipe pipe2 poll ppoll prctl pread64 preadv prlimit64 pselect6 pwrite64 pwritev
read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages
removexattr rename renameat renameat2 restart_syscall rmdir rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget
semop semtimedop sendfile sendmmsg sendmsg sendto setfsgid setfsuid setgid setgroups
setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setxattr shmat
shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socket socketpair splice stat
statfs statx symlink symlinkat sync sync_file_range syncfs sysinfo syslog tee tgkill
time timer_create timer_delete timerfd_create timerfd_gettime timerfd_settime
timer_getoverrun timer_gettime timer_settime times tkill truncate umask uname unlink
unlinkat utime utimensat utimes vfork vmsplice wait4 waitid write writev arch_prctl
modify_ldt
""".split()
_CLONE_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|UTS|IPC|USER|PID|NET|CGROUP


def old_profile(*extra_rules, allowed=_OLD_ALLOWED) -> dict:
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": list(allowed), "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}]},
            # fork, not namespaces: clone with none of the CLONE_NEW* flags
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            *extra_rules,
        ],
    }


# Calls the syscall numbered argv[1] with the arguments that follow and prints
# "<return value> <errno>".  Static: the busybox rootfs has no libc.
_PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long a[6] = {0};
    for (int i = 2; i < argc && i < 8; i++) a[i - 2] = strtol(argv[i], NULL, 0);
    long r = syscall(strtol(argv[1], NULL, 0), a[0], a[1], a[2], a[3], a[4], a[5]);
    printf("%ld %d\n", r, r < 0 ? errno : 0);
    return 0;
}
"""


@pytest.fixture(scope="session")
def syscall_probe() -> str:
    """The probe, compiled once and cached under the temp dir by its source's hash."""
    digest = hashlib.sha256(_PROBE_C.encode()).hexdigest()[:16]
    cached = os.path.join(tempfile.gettempdir(), f"corral-syscall-probe-{digest}")
    if not os.path.exists(cached):
        with tempfile.TemporaryDirectory() as work:
            source = os.path.join(work, "probe.c")
            with open(source, "w") as f:
                f.write(_PROBE_C)
            subprocess.run(["gcc", "-static", "-O2", "-o", f"{work}/probe", source],
                           check=True)
            os.replace(f"{work}/probe", cached)
    return cached


def install_probe(bundle, probe: str) -> None:
    shutil.copy(probe, bundle.rootfs / "bin" / "probe")


def probe_results(output: str) -> list[int]:
    """The errno of each probe line ("<ret> <errno>")."""
    return [int(line.split()[1]) for line in output.splitlines() if line.strip()]


def probe_script(*calls: tuple[str, str]) -> str:
    return "; ".join(f"probe {SYSCALLS[name]} {args}" for name, args in calls)


@pytest.fixture(params=[False, True], ids=["without-nnp", "with-nnp"])
def no_new_privs(request) -> bool:
    return request.param


# --- item 1: the init under an old profile -------------------------------------

def test_run_under_a_profile_older_than_close_range(runtime, bundle, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.linux["seccomp"] = old_profile()
    bundle.write(["sh", "-c", "echo user-process-ran; grep Seccomp: /proc/self/status"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["user-process-ran", "Seccomp:", "2"]


def test_exec_under_a_profile_older_than_close_range(runtime, bundle, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.linux["seccomp"] = old_profile()
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    result = runtime("exec", cid, "sh", "-c", "echo exec-ran", check=False)
    assert (result.returncode, result.stdout) == (0, "exec-ran\n"), result.stderr
    runtime("delete", "--force", cid)


def test_a_terminal_under_a_profile_older_than_close_range(runtime, bundle, tmp_path,
                                                           no_new_privs):
    receiver = ConsoleReceiver(tmp_path / "console.sock")
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.config["process"]["terminal"] = True
    bundle.linux["seccomp"] = old_profile()
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    init_master = None
    try:
        runtime("create", "--console-socket", receiver.path, "--bundle", str(bundle.path),
                cid)
        init_master = receiver.receive()  # held open: a hangup would end the init
        runtime("start", cid)
        exec_tty = subprocess.Popen(runtime.cmd("exec", "--detach", "--tty",
                                                "--console-socket", receiver.path, cid,
                                                "sh", "-c", "tty; echo tty-exec-ran"))
        master = receiver.receive()
        try:
            assert exec_tty.wait(timeout=20) == 0
            assert b"/dev/pts/" in read_until(master, b"tty-exec-ran")
        finally:
            os.close(master)
            if exec_tty.poll() is None:
                exec_tty.kill()
    finally:
        receiver.close()
        if init_master is not None:
            os.close(init_master)
    runtime("delete", "--force", cid)


def test_the_init_closes_stray_fds_where_close_range_is_refused(runtime, bundle, no_new_privs):
    # close_range answers with an errno of the profile's: the init marks fds by fcntl
    # instead; a preserved fd reaches the program, a stray one does not.
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.linux["seccomp"] = old_profile(
        {"names": ["close_range"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSPC})
    bundle.write(["sh", "-c", "ls /proc/self/fd"])
    read_end, write_end = os.pipe()
    preserved, stray = 3, 57
    saved = os.dup(preserved) if _is_open(preserved) else None
    try:
        os.dup2(write_end, preserved)
        os.dup2(write_end, stray)
        result = runtime("run", "--preserve-fds", "1", "--bundle", str(bundle.path),
                         runtime.new_id(), check=False, pass_fds=(preserved, stray))
    finally:
        for fd in (read_end, write_end, stray):
            os.close(fd)
        if saved is None:
            os.close(preserved)
        else:
            os.dup2(saved, preserved)
            os.close(saved)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert str(preserved) in listed and str(stray) not in listed, listed


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# --- item 2: -ENOSYS for syscalls newer than the profile -----------------------

def test_syscalls_newer_than_the_profile_get_enosys(runtime, bundle, syscall_probe,
                                                    no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    allowed = [name for name in _OLD_ALLOWED if name != "mkdirat"]
    bundle.linux["seccomp"] = old_profile(
        {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSPC},
        allowed=allowed)
    install_probe(bundle, syscall_probe)
    bundle.write(["sh", "-c", probe_script(
        ("clone3", "0 0"),                      # newer than the profile: ENOSYS
        ("close_range", "0xffffffff 0 0"),      # (first > last: EINVAL if it ran)
        ("openat2", "-1 0 0 0"),
        ("faccessat2", "-1 0 0 0"),
        ("ptrace", "-1 0 0 0"),                 # older, not named: the default, EPERM
        ("mkdirat", "-100 0 0"),                # named with its errnoRet
    )])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert probe_results(result.stdout) == [ENOSYS, ENOSYS, ENOSYS, ENOSYS, EPERM, ENOSPC]


def test_a_default_errno_of_its_own_applies_to_older_syscalls_only(runtime, bundle,
                                                                     syscall_probe):
    profile = old_profile()
    profile["defaultErrnoRet"] = ENOSPC
    bundle.linux["seccomp"] = profile
    install_probe(bundle, syscall_probe)
    bundle.write(["sh", "-c", probe_script(("clone3", "0 0"), ("ptrace", "-1 0 0 0"))])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert probe_results(result.stdout) == [ENOSYS, ENOSPC]


def test_an_allowing_default_lets_new_syscalls_run(runtime, bundle, syscall_probe):
    # No stub when the default lets unknown syscalls through: close_range really runs.
    bundle.linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                               "architectures": ["SCMP_ARCH_X86_64"],
                               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    install_probe(bundle, syscall_probe)
    bundle.write(["sh", "-c", probe_script(("close_range", "0xffffffff 0 0"))])
    result = runtime.run_capture(bundle)
    assert probe_results(result.stdout) == [22]  # EINVAL from the kernel


# --- item 4: startContainer hooks run under the no_new_privs filter -----------

def test_start_container_hooks_run_under_the_filter(runtime, bundle, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.config["root"]["readonly"] = False
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": ENOSPC}]}
    bundle.config["hooks"] = {"startContainer": [{
        "path": "/bin/sh",
        "args": ["sh", "-c", "mkdir /tmp/by-hook 2>/dev/null && echo hook-made-dir "
                             "|| echo hook-mkdir-refused"]}]}
    bundle.write(["true"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hook-mkdir-refused"]


def test_a_filter_that_kills_mkdir_kills_the_hooks_mkdir(runtime, bundle, no_new_privs):
    bundle.config["process"]["noNewPrivileges"] = no_new_privs
    bundle.config["root"]["readonly"] = False
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]}
    bundle.config["hooks"] = {"startContainer": [{
        "path": "/bin/mkdir", "args": ["mkdir", "/tmp/by-hook"]}]}
    bundle.write(["sh", "-c", "echo the-program-ran"])
    result = runtime.run_capture(bundle)
    assert result.returncode != 0
    assert "the-program-ran" not in result.stdout
    assert "startContainer" in result.stderr, result.stderr
