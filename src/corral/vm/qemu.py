"""A pod's micro-VM: the QEMU command line (`-M microvm`), the accelerator, start and stop.

    QEMU (in the pod's network namespace when it has a tap there)
      ├─ vmlinux (PVH entry) + the cached initramfs; kernel parameters carry the shares
      ├─ serial console → <vm dir>/console.log
      ├─ virtio-serial port "corral.agent" → chardev *client* of the host's Unix socket
      ├─ virtio-9p (or virtiofs) shares: the host's /usr and corral's source read-only,
      │   the pod's bundle directory read-write, each at its host path
      └─ virtio-net on the tap (optional)

The guest ends the VM by rebooting (reboot=t, panic=-1, and -no-reboot make
QEMU exit): a kernel panic, an agent that dies (PID 1) and `shutdown` all
end as QEMU's exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from corral.vm.errors import QemuMissing, VmBootFailed, VmError
from corral.vm.initramfs import PROBE_MARKER

QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
SHORT_SOCKET_DIR = "/run/corral-vm"
SOCKET_MAX = 100  # sun_path holds 108 bytes
DEFAULT_MEMORY_MIB = 128  # Debian's kernel does not boot in 64 MiB; 96 MiB does
DEFAULT_CPUS = 1
MACHINE = "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on"  # keep the RTC: without it
#                                         the kernel waits 1 s twice for one
TB_SIZE_MIB = 64
PROBE_TIMEOUT = 8.0   # a KVM boot reaches userspace in well under a second
STOP_GRACE = 3.0      # SIGTERM → SIGKILL
_SOCKET_PATH_MAX = 107
HZ = 250              # Debian's CONFIG_HZ: lpj = loops (TSC cycles) per jiffy


class Share:
    """A host directory the guest mounts at the same path."""

    def __init__(self, tag: str, path: str, readonly: bool = True, fstype: str = "9p",
                 at_boot: bool = True):
        if fstype not in ("9p", "virtiofs"):
            raise VmError(f"share {tag}: unknown fstype {fstype!r}")
        for value in (tag, path):
            if not value or any(c in value for c in ",: \t\n\"'\\") or not value.isprintable():
                raise VmError(f"share {tag}: {value!r} cannot go on the kernel command line")
        if not os.path.isabs(path):
            raise VmError(f"share {tag}: {path} is not absolute")
        self.tag = tag
        self.path = path
        self.readonly = readonly
        self.fstype = fstype
        # False: the device is there, the agent mounts it when asked (a template's clone
        # mounts its pod's bundles after the restore: a mounted 9p share cannot be saved)
        self.at_boot = at_boot

    def kernel_form(self) -> str:
        return f"{self.fstype}:{self.tag}:{'ro' if self.readonly else 'rw'}:{self.path}"


class Accelerator:
    def __init__(self, name: str, warning: str = ""):
        self.name = name          # "kvm" | "tcg"
        self.warning = warning    # why not KVM, for the log and Status; "" under KVM

    def to_json(self) -> dict:
        return {"name": self.name, "warning": self.warning}


class VmSpec:
    """What one VM is made of."""

    def __init__(self, *, vm_dir: str, kernel: str, initrd: str, agent_socket: str,
                 shares: list[Share], python: str, python_path: str,
                 accelerator: Accelerator, memory_mib: int = DEFAULT_MEMORY_MIB,
                 cpus: int = DEFAULT_CPUS, tap: str | None = None, mac: str | None = None,
                 netns: str | None = None, qemu: str | None = None,
                 extra_cmdline: str = "", image: str | None = None,
                 memory_file: str | None = None, memory_shared: bool = False,
                 incoming: bool = False, qmp_socket: str | None = None,
                 nic: bool = False):
        self.vm_dir = vm_dir
        self.kernel = kernel
        self.initrd = initrd
        self.agent_socket = agent_socket
        self.shares = shares
        self.python = python
        self.python_path = python_path
        self.accelerator = accelerator
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.tap = tap
        self.mac = mac
        self.netns = netns
        self.qemu = qemu or qemu_binary()
        self.extra_cmdline = extra_cmdline
        self.image = image                  # guestimage.py's ext4: /usr and corral, no shares
        self.memory_file = memory_file      # guest RAM in this file (a template's)
        self.memory_shared = memory_shared  # True while a template runs; False: a clone's CoW
        self.incoming = incoming            # a clone: no kernel, the state comes over QMP
        self.qmp_socket = qmp_socket
        self.nic = nic or bool(tap)         # a template has the NIC, on a hub port, no tap

    @property
    def console_log(self) -> str:
        return os.path.join(self.vm_dir, "console.log")

    def virtiofs_socket(self, share: Share) -> str:
        return socket_path(self.vm_dir, f"vfs-{share.tag}.sock")


def socket_path(vm_dir: str, name: str) -> str:
    """A Unix socket of the VM's: in its directory, unless that path is over what sun_path
    holds (a pod's directory under corrald's state is long); then in SHORT_SOCKET_DIR."""
    path = os.path.join(vm_dir, name)
    if len(path) <= SOCKET_MAX:
        return path
    os.makedirs(SHORT_SOCKET_DIR, mode=0o700, exist_ok=True)
    digest = hashlib.sha256(path.encode()).hexdigest()[:20]
    return os.path.join(SHORT_SOCKET_DIR, f"{digest}.sock")


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise QemuMissing(f"{QEMU} not found: install qemu-system-x86")
    return path


def host_python() -> str:
    """The interpreter under this one's virtualenv (the guest has /usr, not .venv)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    path = os.path.realpath(base)
    if not path.startswith("/usr/"):
        path = "/usr/bin/python3"
    if not os.access(path, os.X_OK):
        raise QemuMissing(f"{path} not found: the guest runs the agent with the host's "
                          f"Python under /usr")
    return path


def corral_source_dir() -> str:
    """The directory holding the `corral` package (the guest's PYTHONPATH)."""
    import corral

    return os.path.dirname(os.path.dirname(os.path.abspath(corral.__file__)))


def default_shares(bundles_dir: str | None, fstype: str = "9p") -> list[Share]:
    """The host's /usr and corral's source read-only, the pod's bundles read-write."""
    shares = [Share("usr", "/usr", True, fstype)]
    source = corral_source_dir()
    if not source.startswith("/usr/"):
        shares.append(Share("corral", source, True, fstype))
    if bundles_dir:
        shares.append(Share("bundles", bundles_dir, False, fstype))
    return shares


def host_tsc_khz() -> int:
    """The host's TSC frequency: under TCG the guest reads the host's TSC, and
    the kernel's calibration against emulated timers is slow and wrong."""
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read())
    except (OSError, ValueError):
        pass
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    raise VmError("cannot tell the host's TSC frequency from /proc/cpuinfo")


def kernel_cmdline(spec: VmSpec, probe: bool = False) -> str:
    khz = host_tsc_khz()
    parts = ["console=ttyS0", "quiet", "reboot=t", "panic=-1", f"tsc_early_khz={khz}",
             f"lpj={khz * 1000 // HZ}", "no_timer_check", "cryptomgr.notests",
             "mitigations=off", "pci=off", "cgroup_no_v1=all", "rdinit=/init"]
    if probe:
        parts.append("corral_probe=1")
    else:
        parts += [f"corral_shares={','.join(s.kernel_form() for s in spec.shares if s.at_boot)}",
                  f"corral_python={spec.python}", f"corral_path={spec.python_path}"]
        if spec.nic:
            parts.append("corral_net=1")
        if spec.image:
            parts.append("corral_image=1")
    if spec.extra_cmdline:
        parts.append(spec.extra_cmdline)
    return " ".join(parts)


def command_line(spec: VmSpec, probe: bool = False) -> list[str]:
    accel = spec.accelerator.name
    virtiofs = [s for s in spec.shares if s.fstype == "virtiofs"] if not probe else []
    machine = MACHINE
    args = [spec.qemu, "-M", machine,
            "-accel", "kvm" if accel == "kvm" else f"tcg,tb-size={TB_SIZE_MIB}",
            "-cpu", "host" if accel == "kvm" else "max",
            "-m", f"{spec.memory_mib}M", "-smp", str(spec.cpus),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-monitor", "none"]
    if not spec.incoming or probe:  # a restored VM's kernel is in its RAM already
        args += ["-kernel", spec.kernel, "-initrd", spec.initrd,
                 "-append", kernel_cmdline(spec, probe)]
    args += ["-chardev", f"file,id=console,path={spec.console_log}", "-serial", "chardev:console"]
    if spec.memory_file and not probe:
        if virtiofs:
            raise VmError("virtiofs shares cannot be saved in a template (vhost-user-fs)")
        args[2] = f"{machine},memory-backend=mem"
        args += ["-object", f"memory-backend-file,id=mem,size={spec.memory_mib}M,"
                            f"mem-path={spec.memory_file},"
                            f"share={'on' if spec.memory_shared else 'off'}"]
    if virtiofs:
        # vhost-user needs guest memory the daemon can map; virtio-mmio must be modern.
        args[2] = f"{machine},memory-backend=mem"
        args += ["-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on",
                 "-global", "virtio-mmio.force-legacy=false"]
    if probe:
        return args
    if len(spec.agent_socket) > _SOCKET_PATH_MAX:
        raise VmError(f"agent socket path too long for a Unix socket: {spec.agent_socket}")
    # Client of the host's socket; reconnect: a restarted host side is found again.
    args += ["-chardev", f"socket,id=agent,path={spec.agent_socket},reconnect=1",
             "-device", "virtio-serial-device,max_ports=2",
             "-device", "virtserialport,chardev=agent,name=corral.agent",
             # The guest hands back the pages it frees (boot leaves tens of MiB free).
             "-device", "virtio-balloon-device,free-page-reporting=on"]
    if spec.image:
        args += ["-drive", f"file={spec.image},if=none,id=image,format=raw,readonly=on",
                 "-device", "virtio-blk-device,drive=image"]
    for share in spec.shares:
        if share.fstype == "virtiofs":
            args += ["-chardev", f"socket,id=vfs-{share.tag},path={spec.virtiofs_socket(share)}",
                     "-device", f"vhost-user-fs-device,chardev=vfs-{share.tag},tag={share.tag}"]
        else:
            ro = ",readonly=on" if share.readonly else ""
            model = "none" if share.readonly else "passthrough"
            args += ["-fsdev", f"local,id=fs-{share.tag},path={share.path},"
                               f"security_model={model},multidevs=remap{ro}",
                     "-device", f"virtio-9p-device,fsdev=fs-{share.tag},mount_tag={share.tag}"]
    if spec.nic:
        mac = f",mac={spec.mac}" if spec.mac else ""
        backend = (f"tap,id=net0,ifname={spec.tap},script=no,downscript=no,vhost=off"
                   if spec.tap else "hubport,id=net0,hubid=0")  # a template's, unconnected
        args += ["-netdev", backend, "-device", f"virtio-net-device,netdev=net0{mac}"]
    if spec.qmp_socket:
        args += ["-qmp", f"unix:{spec.qmp_socket},server=on,wait=off"]
    if spec.incoming:
        args += ["-incoming", "defer"]
    return args


class Vm:
    """A running QEMU, by PID.

    `exited(code)` takes an exit that someone else reaped (a shim reaps every
    child with waitpid(-1)); otherwise `poll`/`wait` reap it here.
    """

    def __init__(self, spec: VmSpec):
        self.spec = spec
        self.pid = 0
        self.returncode: int | None = None
        self.started_at = 0.0
        self._daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        os.makedirs(self.spec.vm_dir, mode=0o700, exist_ok=True)
        for share in self.spec.shares:
            if share.fstype == "virtiofs":
                self._daemons.append(_start_virtiofsd(self.spec, share))
        argv = command_line(self.spec)
        if self.spec.netns:
            argv = ["nsenter", f"--net={self.spec.netns}", "--", *argv]  # execs: same PID
        log = open(os.path.join(self.spec.vm_dir, "qemu.log"), "ab")
        parent = os.getpid()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=lambda: _die_with(parent))
        except OSError as e:
            self._stop_daemons()
            raise VmBootFailed(f"cannot start QEMU: {e}") from None
        finally:
            log.close()
        self.pid = proc.pid
        proc.returncode = 0  # Popen must not reap or kill it later; this class does
        self.started_at = time.monotonic()
        with open(os.path.join(self.spec.vm_dir, "qemu.pid"), "w") as f:
            f.write(f"{self.pid}\n")

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._stop_daemons()

    def poll(self) -> int | None:
        if self.returncode is None and self.pid:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 255 << 8  # reaped elsewhere and not told
            if pid:
                self.exited(os.waitstatus_to_exitcode(status))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        return self.returncode

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM (QEMU exits at once), then SIGKILL; reaped."""
        if self.poll() is not None or not self.pid:
            return self.returncode
        _signal(self.pid, signal.SIGTERM)
        if self.wait(grace) is None:
            _signal(self.pid, signal.SIGKILL)
            self.wait(5.0)
        return self.returncode

    def pss_kib(self) -> int:
        """The QEMU process's proportional set size (smaps_rollup), in KiB."""
        with open(f"/proc/{self.pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))

    def console(self) -> str:
        try:
            with open(self.spec.console_log, encoding="utf-8", errors="replace") as f:
                return f.read().replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def _stop_daemons(self) -> None:
        for daemon in self._daemons:
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(2)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        self._daemons = []
        for share in self.spec.shares:
            if share.fstype == "virtiofs":
                try:
                    os.unlink(self.spec.virtiofs_socket(share))
                except FileNotFoundError:
                    pass
        if self.spec.qmp_socket:  # QEMU leaves its monitor's socket when it is killed
            try:
                os.unlink(self.spec.qmp_socket)
            except FileNotFoundError:
                pass


def _start_virtiofsd(spec: VmSpec, share: Share) -> subprocess.Popen:
    sock = spec.virtiofs_socket(share)
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    argv = [VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={share.path}",
            "-o", "cache=always" if share.readonly else "cache=auto", "-o", "sandbox=chroot"]
    log = open(os.path.join(spec.vm_dir, f"virtiofsd-{share.tag}.log"), "ab")
    try:
        parent = os.getpid()
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True, preexec_fn=lambda: _die_with(parent))
    finally:
        log.close()
    deadline = time.monotonic() + 5.0
    while not os.path.exists(sock):  # QEMU must find the socket at start
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            log_path = os.path.join(spec.vm_dir, f"virtiofsd-{share.tag}.log")
            raise VmBootFailed(f"virtiofsd for {share.path} did not start: "
                               f"{_last_line(log_path) or f'exit status {daemon.returncode}'}")
        time.sleep(0.005)
    return daemon


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read()[-4096:].decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _die_with(parent: int) -> None:
    """In the child before exec: a VM outlives no shim (its pod is lost with the shim).

    PR_SET_PDEATHSIG fires when the forking *thread* ends: callers fork from their main
    thread (the shim has no other)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --- the accelerator ---------------------------------------------------------------------------
def choose_accelerator(cache_dir: str, kernel: str, initrd: str,
                       probe_timeout: float = PROBE_TIMEOUT) -> Accelerator:
    """KVM when the host has usable hardware virtualization, else TCG (with the reason).

    /dev/kvm is not proof: under PVM (/sys/module/kvm_pvm) KVM_CREATE_VM works
    and Debian's kernel cannot boot.  Without vmx/svm, or under PVM, a boot with
    a timeout decides; the answer is cached per host kernel, guest kernel, QEMU.
    """
    if not os.path.exists("/dev/kvm"):
        return Accelerator("tcg", "no /dev/kvm: pod VMs run under TCG emulation (slow)")
    flags = _cpu_flags()
    pvm = os.path.exists("/sys/module/kvm_pvm")
    if flags & {"vmx", "svm"} and not pvm:
        return Accelerator("kvm")
    key = hashlib.sha256(json.dumps([os.uname().release, kernel, file_id(kernel),
                                     file_id(qemu_binary()), sorted(flags & {"vmx", "svm"}),
                                     pvm]).encode()).hexdigest()[:16]
    cached = os.path.join(cache_dir, f"accel-{key}.json")
    try:
        with open(cached) as f:
            saved = json.load(f)
        return Accelerator(saved["name"], saved.get("warning", ""))
    except (OSError, ValueError, KeyError):
        pass
    why = "PVM" if pvm else "no vmx/svm"
    failure = probe_boot(cache_dir, kernel, initrd, probe_timeout)
    if not failure:
        result = Accelerator("kvm")
    else:
        result = Accelerator("tcg", f"/dev/kvm ({why}) cannot boot the guest kernel "
                                    f"(probe boot: {failure}): pod VMs run under TCG "
                                    f"emulation (slow)")
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".accel-", dir=cache_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(result.to_json(), f)
    os.rename(tmp, cached)
    return result


def probe_boot(cache_dir: str, kernel: str, initrd: str, timeout: float) -> str:
    """Boot the guest under KVM to its first userspace line: "" if it got there within
    `timeout`, else why not."""
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe-", dir=cache_dir) as tmp:
        spec = VmSpec(vm_dir=tmp, kernel=kernel, initrd=initrd, agent_socket="", shares=[],
                      python="", python_path="", accelerator=Accelerator("kvm"))
        log_path = os.path.join(tmp, "qemu.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command_line(spec, probe=True), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True,
                                    cwd=tmp)  # a core dump goes with tmp
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if PROBE_MARKER in Vm(spec).console():
                    return ""
                if proc.poll() is not None:
                    if PROBE_MARKER in Vm(spec).console():
                        return ""
                    with open(log_path, errors="replace") as f:
                        said = [line.strip() for line in f if line.strip()]
                    return f"QEMU exited {proc.returncode}" + (f": {said[0]}" if said else "")
                time.sleep(0.05)
            return f"no userspace within {timeout:g}s"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def file_id(path: str) -> list:
    """What a cache key needs of a file: its path, size and mtime."""
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]
