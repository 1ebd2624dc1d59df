"""One pod's VM from start to end: images, accelerator, QEMU, the agent's channel.

    boot:  vmlinux + initramfs (cached in `cache_dir`) → accelerator (cached)
           → listen on the agent socket → QEMU → accept → ping answered
    stop:  the agent's `shutdown` (the guest reboots: QEMU exits), else SIGTERM/SIGKILL
"""

from __future__ import annotations

import os
import time

from corral.vm import initramfs, kernel, qemu
from corral.vm.client import AgentClient
from corral.vm.errors import AgentError, AgentGone, VmBootFailed

BOOT_TIMEOUT = 60.0  # TCG: ~2-3 s on an idle host, much more on a loaded one


class PodVm:
    def __init__(self, *, cache_dir: str, vm_dir: str, agent_socket: str,
                 bundles_dir: str | None = None, memory_mib: int = qemu.DEFAULT_MEMORY_MIB,
                 cpus: int = qemu.DEFAULT_CPUS, tap: str | None = None,
                 mac: str | None = None, netns: str | None = None, fstype: str = "9p",
                 kernel_version: str | None = None, accelerator: qemu.Accelerator | None = None):
        precompile(qemu.corral_source_dir())
        guest = kernel.find_kernel(kernel_version)
        vmlinux = kernel.vmlinux(guest, cache_dir)
        initrd = initramfs.initramfs(guest, cache_dir)
        self.kernel = guest
        self.accelerator = accelerator or qemu.choose_accelerator(cache_dir, vmlinux, initrd)
        self.spec = qemu.VmSpec(
            vm_dir=vm_dir, kernel=vmlinux, initrd=initrd, agent_socket=agent_socket,
            shares=qemu.default_shares(bundles_dir, fstype), python=qemu.host_python(),
            python_path=qemu.corral_source_dir(), accelerator=self.accelerator,
            memory_mib=memory_mib, cpus=cpus, tap=tap, mac=mac, netns=netns)
        self.vm = qemu.Vm(self.spec)
        self.client: AgentClient | None = None
        self.boot_seconds = 0.0

    @property
    def warning(self) -> str:
        return self.accelerator.warning

    def boot(self, timeout: float = BOOT_TIMEOUT) -> dict:
        """Start the VM and wait for the agent's answer to a ping; that answer."""
        os.makedirs(self.spec.vm_dir, mode=0o700, exist_ok=True)
        started = time.monotonic()
        self.client = AgentClient(self.spec.agent_socket)
        try:
            self.vm.start()
            self.client.accept(10.0, alive=lambda: self.vm.poll() is None)
            # The ping waits in QEMU until the agent opens its port.
            reply = self.client.call("ping", timeout=timeout)
        except (AgentError, AgentGone, VmBootFailed) as e:
            console = self.vm.console()[-3000:]
            self.stop()
            raise VmBootFailed(f"the pod VM did not boot: {e}; console:\n{console}") from None
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return reply

    def stop(self, timeout: float = 5.0) -> int | None:
        """End the VM: ask the agent, then signals; always reaped, the socket removed."""
        if self.client is not None and not self.client.closed and self.vm.poll() is None:
            try:
                self.client.call("shutdown", timeout=timeout)
            except (AgentError, AgentGone):
                pass
            self.vm.wait(timeout)
        code = self.vm.stop()
        if self.client is not None:
            self.client.close()
        return code


def precompile(source_dir: str) -> None:
    """Byte-compile corral where the guest reads it: the guest cannot write .pyc files
    (a read-only share), and compiling the agent under TCG costs it half a second a boot.
    Up-to-date files are skipped (one stat each); a source tree we cannot write is left."""
    import compileall

    try:
        compileall.compile_dir(os.path.join(source_dir, "corral"), quiet=2, workers=1)
    except OSError:
        pass
