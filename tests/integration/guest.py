"""Boot a throw-away QEMU guest on a pure cgroup v2 kernel and run one command in it.

This host mounts cgroups hybrid (v1 controllers, an empty cgroup2 mount), so
the cgroup v2 code only meets a real v2 hierarchy inside a guest:

    Debian's kernel (/boot/vmlinuz-*, cgroup_no_v1=all)
      └─ initramfs built here: busybox-static + the modules for virtio-9p and overlay
           └─ the host's / shared read-only (virtio-9p), under an overlay whose
              upper is a tmpfs, so the guest can write and the host sees nothing
                └─ cgroup2 alone at /sys/fs/cgroup; chroot; the command

QEMU runs with TCG (software emulation): this machine's /dev/kvm cannot boot
Debian's kernel.  The command's output comes back over the serial console,
followed by a marker line with its exit status; then the guest powers off.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
# What the init needs as modules (Debian builds them as such); their
# dependencies come from modules.dep.  cgroup2, BPF and tmpfs are built in.
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_blk")
SCRATCH_DISK_MIB = 64  # /dev/vda: a block device (reads give zeros) for io and device tests
EXIT_MARKER = "corral-guest-exit-status:"
GUEST_ENV = "CORRAL_IN_GUEST"  # set for the command: it runs inside the guest


class GuestError(RuntimeError):
    """The guest could not be built, booted or did not report an exit status."""


@dataclass
class GuestResult:
    returncode: int
    output: str  # the serial console: kernel warnings, the init's and the command's output
    seconds: float


def find_kernel() -> tuple[str, str]:
    """(vmlinuz, its modules directory) of an installed Debian kernel; the newest."""
    found = []
    for vmlinuz in glob.glob("/boot/vmlinuz-*"):
        version = vmlinuz.removeprefix("/boot/vmlinuz-")
        modules = f"/lib/modules/{version}"
        if os.path.isfile(os.path.join(modules, "modules.dep")):
            found.append((vmlinuz, modules))
    if not found:
        raise GuestError("no kernel with modules in /boot and /lib/modules: "
                         "install linux-image-amd64 (scripts/setup does)")
    return max(found, key=lambda pair: os.path.getmtime(pair[0]))


def module_files(modules_dir: str, names: tuple[str, ...] = MODULES) -> list[str]:
    """The .ko files (relative to `modules_dir`) for `names`, dependencies first."""
    deps: dict[str, list[str]] = {}
    with open(os.path.join(modules_dir, "modules.dep"), encoding="utf-8") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    by_name = {re.sub(r"\.ko(\.[a-z]+)?$", "", os.path.basename(p)).replace("-", "_"): p
               for p in deps}
    ordered: list[str] = []

    def add(path: str) -> None:
        if path in ordered:
            return
        for dep in reversed(deps[path]):  # modules.dep lists the deepest last
            add(dep)
        ordered.append(path)

    for name in names:
        if name not in by_name:
            raise GuestError(f"kernel module {name} not in {modules_dir}/modules.dep")
        add(by_name[name])
    if any(not p.endswith(".ko") for p in ordered):
        raise GuestError(f"compressed kernel modules in {modules_dir}: busybox insmod "
                         f"takes plain .ko files")
    return ordered


INIT = r"""#!/bin/busybox sh
# PID 1 of the guest: mount the host's root read-only under a tmpfs overlay,
# give it a cgroup2-only /sys/fs/cgroup, switch to it, run /command, report, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "guest init: $*"; echo "{marker}255"; poweroff -f; sleep 10; }
for m in $(cat /modules.list); do insmod "/modules/$m" || fail "insmod $m"; done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
  || fail "cannot mount the host root (9p)"
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || fail "cannot mount the overlay"
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t cgroup2 -o nsdelegate cgroup2 $r/sys/fs/cgroup || fail "cannot mount cgroup2"
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 shm $r/dev/shm
# The command's directory stays visible even where a tmpfs below covers it (a clone in /tmp).
work=$(cat /workdir)
[ "$work" = / ] || { mkdir -p /keep && mount --bind "$r$work" /keep; } || fail "keep $work"
for d in tmp var/tmp run; do mount -t tmpfs -o mode=1777 tmpfs "$r/$d"; done
[ "$work" = / ] || { mkdir -p "$r$work" && mount --move /keep "$r$work"; } || fail "move $work"
cp /command $r/run/guest-command
printf '%s\n' '/bin/sh /run/guest-command' 'echo "{marker}$?"' sync \
  '/bin/busybox poweroff -f' > $r/run/guest-init
hostname corral-guest
ip link set lo up
# The overlay becomes / and PID 1 moves into it (as at any boot): the kernel refuses
# user namespaces to a chrooted process, and runs modprobe in PID 1's root.
exec switch_root $r /bin/sh /run/guest-init
"""


def command_script(argv: list[str], cwd: str, env: dict[str, str]) -> str:
    lines = ["set -e", f"cd {shlex.quote(cwd)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def _cpio_entry(out: io.BytesIO, name: str, mode: int, data: bytes = b"", ino: int = 0,
                rdev: tuple[int, int] = (0, 0)) -> None:
    """One newc record (the initramfs format)."""
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0]
    out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def build_initramfs(dest: str, modules_dir: str, command: str, workdir: str = "/") -> None:
    """A gzip'd newc cpio: busybox as /bin/busybox and /init's shell, the modules, /command."""
    mods = module_files(modules_dir)
    out = io.BytesIO()
    ino = iter(range(1, 1 << 20))
    for d in ("bin", "dev", "proc", "sys", "modules"):
        _cpio_entry(out, d, 0o040755, ino=next(ino))
    # The kernel opens it as init's stdin/stdout/stderr, before devtmpfs is there.
    _cpio_entry(out, "dev/console", 0o020600, ino=next(ino), rdev=(5, 1))
    with open(BUSYBOX, "rb") as f:
        _cpio_entry(out, "bin/busybox", 0o100755, f.read(), next(ino))
    _cpio_entry(out, "init", 0o100755, INIT.replace("{marker}", EXIT_MARKER).encode(), next(ino))
    _cpio_entry(out, "command", 0o100644, command.encode(), next(ino))
    _cpio_entry(out, "workdir", 0o100644, workdir.encode(), next(ino))
    names = []
    for rel in mods:
        name = os.path.basename(rel)
        names.append(name)
        with open(os.path.join(modules_dir, rel), "rb") as f:
            _cpio_entry(out, f"modules/{name}", 0o100644, f.read(), next(ino))
    _cpio_entry(out, "modules.list", 0o100644, ("\n".join(names) + "\n").encode(), next(ino))
    _cpio_entry(out, "TRAILER!!!", 0)
    with gzip.open(dest, "wb", compresslevel=1) as f:
        f.write(out.getvalue())


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise GuestError(f"{QEMU} not found: install qemu-system-x86 (scripts/setup does)")
    if not os.path.isfile(BUSYBOX):
        raise GuestError(f"{BUSYBOX} not found: install busybox-static (scripts/setup does)")
    return path


def run_in_guest(argv: list[str], *, cwd: str, env: dict[str, str] | None = None,
                 timeout: float = 600, memory: str = "2G", cpus: int = 2,
                 console_log: str | None = None) -> GuestResult:
    """Boot a guest, run `argv` in `cwd` (a host path: the host's / is the guest's /).

    The serial console goes to `console_log` if given (to follow a run: tail -f).
    """
    qemu = qemu_binary()
    vmlinuz, modules_dir = find_kernel()
    guest_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "HOME": "/root", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
                 "PYTHONDONTWRITEBYTECODE": "1", GUEST_ENV: "1", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="corral-guest-") as tmp:
        initrd = os.path.join(tmp, "initrd.gz")
        console = console_log or os.path.join(tmp, "console.log")
        build_initramfs(initrd, modules_dir, command_script(argv, cwd, guest_env),
                        os.path.abspath(cwd))
        cmdline = ("console=ttyS0 panic=-1 quiet loglevel=4 cgroup_no_v1=all "
                   "rdinit=/init tsc=unstable")
        args = [qemu, "-accel", "tcg", "-cpu", "max", "-m", memory, "-smp", str(cpus),
                "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
                "-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline,
                "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                           "multidevs=remap",
                "-blockdev", f"driver=null-co,node-name=scratch,read-zeroes=on,"
                             f"size={SCRATCH_DISK_MIB << 20}",
                "-device", "virtio-blk-pci,drive=scratch"]
        start = time.monotonic()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            qemu_out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"the guest did not power off within {timeout:g}s; console:\n"
                             + _read(console)[-20000:]) from None
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        seconds = time.monotonic() - start
        output = _read(console)
    found = re.findall(rf"^{re.escape(EXIT_MARKER)}(\d+)\s*$", output, re.M)
    if not found:
        raise GuestError(f"the guest reported no exit status (qemu exited "
                         f"{proc.returncode}: {qemu_out.decode(errors='replace').strip()}); "
                         f"console:\n{output[-20000:]}")
    return GuestResult(int(found[-1]), output, seconds)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().replace("\r\n", "\n")
    except FileNotFoundError:
        return ""
