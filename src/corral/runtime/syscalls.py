"""Every raw Linux system call the runtime makes, behind one object.

The container init sequence calls the kernel only through a `Syscalls`
instance.  Production code uses `LinuxSyscalls` (ctypes on libc); unit tests
pass a recording fake to check the order of operations without root.

Only calls that change the world live here.  Reading the filesystem (lstat,
readlink) stays with `os`, because path resolution must see the real tree.
"""

from __future__ import annotations

import ctypes
import os
import resource

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MS_PROPAGATION = MS_SHARED | MS_SLAVE | MS_PRIVATE | MS_UNBINDABLE

MNT_DETACH = 0x2

# mount_setattr(2) attributes (struct mount_attr); the access-time mode is a field
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_SYS_MOUNT_SETATTR = 442  # the same on every architecture (unified table, Linux 5.12)

# clone(2) / unshare(2) / setns(2) namespace flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# netdevice(7): bring an interface up
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_SIZE = 40  # char ifr_name[16] + the largest member of the union

# glibc has no pivot_root wrapper; its number differs by architecture
# (close_range is 436 on every architecture since the unified table).
_FD_MAX = 2**31 - 1  # os.closerange's end: CPython turns it into one close_range(2)

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217}.get(os.uname().machine, 155)
_SYS_CLOSE_RANGE = 436
_CLOSE_RANGE_CLOEXEC = 1 << 2
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358,
                "s390x": 348}.get(os.uname().machine, 317)
_SECCOMP_SET_MODE_FILTER = 1
_SYS_PIDFD_GETFD = 438  # the unified table: the same on every architecture
_F_GETFD, _F_SETFD, _FD_CLOEXEC = 1, 2, 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str, *paths: str | None) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        shown = [p for p in paths if p]
        raise OSError(errno, f"{what}: {os.strerror(errno)}", *(shown[:1]))
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


class Syscalls:
    """The kernel, as the init sequence sees it.  Subclassed by fakes in tests."""

    # --- mounts ---------------------------------------------------------
    def mount(self, source: str | None, target: str, fstype: str | None,
              flags: int = 0, data: str | None = None) -> None:
        _check(libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags),
                            _b(data)), f"mount {source or fstype} on {target}", target)

    def umount(self, target: str, flags: int = 0) -> None:
        _check(libc().umount2(_b(target), flags), f"umount {target}", target)

    def mount_setattr(self, target: str, attr_set: int, attr_clear: int) -> None:
        """Change attributes of `target` and every mount below it (AT_RECURSIVE)."""
        attr = _MountAttr(attr_set, attr_clear, 0, 0)
        _check(libc().syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(_AT_FDCWD), _b(target),
                              ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                              ctypes.c_size_t(ctypes.sizeof(attr))),
               f"mount_setattr {target}", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        _check(libc().syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root")

    def fchdir(self, fd: int) -> None:
        os.fchdir(fd)

    def chroot(self, path: str) -> None:
        os.chroot(path)

    def chdir(self, path: str) -> None:
        os.chdir(path)

    # --- files ------------------------------------------------------------
    def mkdir(self, path: str, mode: int = 0o755) -> None:
        os.mkdir(path, mode)

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(path, mode, device)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(path, uid, gid, follow_symlinks=False)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def symlink(self, target: str, link: str) -> None:
        os.symlink(target, link)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def create_file(self, path: str, mode: int = 0o644) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, mode))

    def write_file(self, path: str, data: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    # --- namespaces -------------------------------------------------------
    def unshare(self, flags: int) -> None:
        _check(libc().unshare(flags), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        _check(libc().setns(fd, nstype), "setns")

    def set_link_up(self, name: str) -> None:
        """`ip link set NAME up`: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP added."""
        fd = _check(libc().socket(2, 2 | os.O_CLOEXEC, 0), "socket")  # AF_INET, SOCK_DGRAM
        try:
            request = ctypes.create_string_buffer(name.encode(), _IFREQ_SIZE)
            _check(libc().ioctl(fd, SIOCGIFFLAGS, request), f"SIOCGIFFLAGS {name}")
            flags = ctypes.c_short.from_buffer(request, 16)  # ifr_flags, native byte order
            flags.value |= IFF_UP
            _check(libc().ioctl(fd, SIOCSIFFLAGS, request), f"SIOCSIFFLAGS {name}")
        finally:
            os.close(fd)

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(libc().sethostname(raw, len(raw)), "sethostname")

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        _check(libc().setdomainname(raw, len(raw)), "setdomainname")

    # --- credentials and limits -------------------------------------------
    def setgroups(self, gids: list[int]) -> None:
        os.setgroups(gids)

    def setresgid(self, gid: int) -> None:
        os.setresgid(gid, gid, gid)

    def setresuid(self, uid: int) -> None:
        os.setresuid(uid, uid, uid)

    def umask(self, mask: int) -> None:
        os.umask(mask)

    def setrlimit(self, which: int, soft: int, hard: int) -> None:
        resource.setrlimit(which, (soft, hard))

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int:
        return _check(libc().prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                                   ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl({option})")

    def set_process_name(self, name: str) -> None:
        """The thread's comm (/proc/PID/comm, ps -o comm): at most 15 bytes are kept."""
        buffer = ctypes.create_string_buffer(name.encode()[:15])
        self.prctl(PR_SET_NAME, ctypes.addressof(buffer))

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        _check(libc().capset(ctypes.byref(header), data), "capset")

    # --- processes ----------------------------------------------------------
    def setsid(self) -> None:
        os.setsid()

    def mark_fds_cloexec(self, first: int) -> None:
        """Every fd from `first` up is closed by the coming execve (close_range(2)).

        A seccomp profile older than close_range (Linux 5.9) refuses it, with
        ENOSYS or its own errno: then each open fd is marked by fcntl.
        """
        if libc().syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                          ctypes.c_uint(_CLOSE_RANGE_CLOEXEC)) == 0:
            return
        for fd in _open_fds(first):
            flags = libc().fcntl(fd, _F_GETFD)
            if flags >= 0 and not flags & _FD_CLOEXEC:
                _check(libc().fcntl(fd, _F_SETFD, flags | _FD_CLOEXEC), f"fcntl({fd})")

    def load_seccomp(self, bpf: bytes, flags: int) -> int:
        """seccomp(SECCOMP_SET_MODE_FILTER, flags, bpf); the listener fd when `flags`
        asks for one (SECCOMP_FILTER_FLAG_NEW_LISTENER), else 0."""
        code = ctypes.create_string_buffer(bpf, len(bpf))
        program = _SockFprog(len(bpf) // 8, ctypes.cast(code, ctypes.c_void_p))
        return _check(libc().syscall(_SYS_SECCOMP, ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
                                     ctypes.c_ulong(flags), ctypes.byref(program)),
                      "seccomp(SECCOMP_SET_MODE_FILTER)")

    def close_fds_except(self, keep: set[int]) -> None:
        """Close every fd from 3 up that is not in `keep` (a few close_range calls)."""
        low = 3
        for fd in sorted(k for k in keep if k >= 3):
            if fd > low:
                os.closerange(low, fd)
            low = max(low, fd + 1)
        os.closerange(low, _FD_MAX)

    def check_cwd_reachable(self) -> None:
        """The working directory must lie under our root: a directory reached through
        an fd or /proc link from outside (CVE-2024-21626) is "(unreachable)" to
        getcwd(2), which glibc reports as ENOENT."""
        try:
            reachable = os.getcwd().startswith("/")
        except FileNotFoundError:
            reachable = False
        if not reachable:
            raise PermissionError(1, "current working directory is outside of the container's "
                                  "root: possible container breakout detected")

    def execve(self, path: str, args: list[str], env: list[str]) -> None:
        os.execve(path, args, dict(_split_env(env)))


def _split_env(env: list[str]):
    for entry in env:
        key, _, value = entry.partition("=")
        yield key, value


class LinuxSyscalls(Syscalls):
    """The real kernel.  `Syscalls` already talks to it; the name says so."""


def _open_fds(first: int) -> list[int]:
    """The fds from `first` up: /proc/self/fd, or every number below RLIMIT_NOFILE
    where the container has no /proc (yet)."""
    try:
        return [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd >= first]
    except OSError:
        return list(range(first, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of process `pid`'s fd `fd` (pidfd_getfd(2)), close-on-exec."""
    pidfd = os.pidfd_open(pid)
    try:
        return _check(libc().syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0), "pidfd_getfd")
    finally:
        os.close(pidfd)


def capget_bounding_last() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())
