"""One pod's VM from start to end: images, accelerator, QEMU, the agent's channel.

    boot:     vmlinux + initramfs (cached in `cache_dir`) → accelerator (cached)
              → listen on the agent socket → QEMU → accept → ping answered
    restore:  the template (template.py; built at first use) → QEMU -incoming → QMP
              restore → accept → ping → adopt (clock, entropy, MAC, the bundles share)
    pooled:   start_idle: restored with no pod (the NIC on its unconnected hub port, the
              bundles share a directory of its own, mounted in the guest) → … → claim:
              that directory renamed to the pod's (QEMU holds it open), the pod's tap
              passed to QEMU (QMP getfd, netdev_add tap + a hub port joining it to the
              NIC), adopt again for this pod (the guest moves its mount to the pod's path)
    stop:  the agent's `shutdown` (the guest reboots: QEMU exits), else SIGTERM/SIGKILL
"""

from __future__ import annotations

import os
import time

from corral.vm import guestimage, initramfs, kernel, network, qemu, qmp, template
from corral.vm.client import AgentClient
from corral.vm.errors import AgentError, AgentGone, VmBootFailed, VmError

BOOT_TIMEOUT = 60.0  # TCG: ~2-3 s on an idle host, much more on a loaded one


class PodVm:
    def __init__(self, *, cache_dir: str, vm_dir: str, agent_socket: str,
                 bundles_dir: str | None = None, memory_mib: int = qemu.DEFAULT_MEMORY_MIB,
                 cpus: int = qemu.DEFAULT_CPUS, tap: str | None = None,
                 mac: str | None = None, netns: str | None = None, fstype: str = "9p",
                 kernel_version: str | None = None, accelerator: qemu.Accelerator | None = None,
                 template_dir: str | None = None, tenant: str = ""):
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
        self.template_dir = template_dir  # None: boot cold
        self.tenant = tenant
        self.template: template.Template | None = None  # the one this VM was restored from
        self.fallback = ""  # why a template was not used, when it was asked for
        self.cache_dir = cache_dir

    @property
    def warning(self) -> str:
        return self.accelerator.warning

    def start(self, timeout: float = BOOT_TIMEOUT) -> dict:
        """Restored from a template when asked and possible, else booted: the agent's
        answer to a ping.  A template that fails to restore is discarded (the next pod
        builds it again) and this pod boots cold."""
        if self.template_dir is None:
            return self.boot(timeout)
        try:
            return self.restore(timeout)
        except VmError as e:
            self.fallback = str(e).splitlines()[0]
            if self.template is not None:
                template.discard(self.template_dir, self.template)
                self.template = None
            return self.boot(timeout)

    def ensure_template(self) -> qemu.VmSpec:
        """This configuration's template (`self.template`), built if there is none; the
        spec it was built from."""
        base = qemu.VmSpec(**{**vars(self.spec), "image": guestimage.guest_image(
            self.cache_dir, self.spec.python, self.spec.python_path)})
        self.template = template.ensure_template(self.template_dir, base, self.tenant)
        return base

    def restore(self, timeout: float = BOOT_TIMEOUT) -> dict:
        """A clone of this configuration's template (built first if there is none)."""
        base = self.ensure_template()
        bundles = next((s.path for s in self.spec.shares if s.tag == template.BUNDLES_TAG),
                       None) or os.path.join(self.spec.vm_dir, "bundles")
        os.makedirs(bundles, exist_ok=True)
        spec = template.template_spec(base, vm_dir=self.spec.vm_dir,
                                      agent_socket=self.spec.agent_socket, bundles_dir=bundles,
                                      memory_file=self.template.ram, clone=True,
                                      tap=self.spec.tap, netns=self.spec.netns)

        return self._come_up(spec, timeout, "restore",
                             after_start=lambda: template.restore(self.vm, self.template),
                             after_ping=lambda: self._adopt(timeout, bundles))

    def _adopt(self, timeout: float, bundles: str) -> dict:
        """The clone becomes this pod's (agent.py op_adopt): clock, entropy, identity, MAC,
        and the bundles share mounted at `bundles` (moved there, for a pooled VM's)."""
        mounts = [{"tag": template.BUNDLES_TAG, "path": bundles,
                   "msize": initramfs.NINEP_MSIZE}]
        adopted = self.client.call("adopt", timeout=timeout, time_ns=time.time_ns(),
                                   entropy=os.urandom(64).hex(), mac=self.spec.mac or "",
                                   mounts=mounts)
        return {"uptime": adopted.get("uptime"), "template": self.template.key}

    # --- pooled: restored before its pod exists ---------------------------------------------
    def start_idle(self, timeout: float = BOOT_TIMEOUT) -> dict:
        """Restored from the template for no pod yet (a warm pool's): this PodVm was made
        without a tap, netns or MAC, its bundles share an empty directory of its own."""
        if self.template_dir is None or self.spec.tap or self.spec.netns:
            raise VmError("a pooled VM is restored from a template, with no network yet")
        base = self.ensure_template()
        bundles = self._bundles_share().path
        os.makedirs(bundles, exist_ok=True)
        spec = template.template_spec(base, vm_dir=self.spec.vm_dir,
                                      agent_socket=self.spec.agent_socket, bundles_dir=bundles,
                                      memory_file=self.template.ram, clone=True)
        return self._come_up(spec, timeout, "restore",
                             after_start=lambda: template.restore(self.vm, self.template),
                             after_ping=lambda: self._adopt(timeout, bundles))

    def relocate(self, old_dir: str, new_dir: str) -> None:
        """The directory holding this VM's files was renamed (a pooled VM's shim claimed
        for a pod): every path under it follows; QEMU's open files already do."""
        def moved(path):
            if path and (path == old_dir or path.startswith(old_dir + "/")):
                return new_dir + path[len(old_dir):]
            return path

        for spec in {id(self.spec): self.spec, id(self.vm.spec): self.vm.spec}.values():
            for name in ("vm_dir", "agent_socket", "qmp_socket"):
                setattr(spec, name, moved(getattr(spec, name)))
            for share in spec.shares:
                share.path = moved(share.path)

    def claim(self, *, bundles_dir: str, netns: str, mac: str | None,
              timeout: float = BOOT_TIMEOUT) -> dict:
        """A VM from `start_idle` becomes a pod's: its share directory (which QEMU holds
        open) renamed to the pod's `bundles_dir`, the netns's tap (network.connect_tap
        made it) joined to the NIC, then adopted with the MAC and the share mounted."""
        if self.vm.poll() is not None:
            raise VmError("the pooled VM has ended")
        started = time.monotonic()
        share = self._bundles_share()
        if os.path.isdir(bundles_dir):
            os.rmdir(bundles_dir)  # corrald's, still empty: QEMU's directory takes its place
        os.rename(share.path, bundles_dir)
        for spec in {id(self.spec): self.spec, id(self.vm.spec): self.vm.spec}.values():
            for each in spec.shares:
                if each.tag == template.BUNDLES_TAG:
                    each.path = bundles_dir
        fd = network.open_tap(netns)
        try:
            monitor = qmp.Qmp(self.vm.spec.qmp_socket, alive=lambda: self.vm.poll() is None)
            try:
                monitor.execute("getfd", send_fd=fd, fdname="tap")
                monitor.execute("netdev_add", type="tap", id="tap0", fd="tap", vhost=False)
                # the NIC is on hub 0 (template.py): a second port there joins the tap
                monitor.execute("netdev_add", type="hubport", id="net1", hubid=0,
                                netdev="tap0")
            finally:
                monitor.close()
        finally:
            os.close(fd)
        self.spec.mac, self.spec.netns = mac, netns
        adopted = self._adopt(timeout, bundles_dir)
        self.boot_seconds = time.monotonic() - started
        return adopted

    def _bundles_share(self) -> qemu.Share:
        share = next((s for s in self.spec.shares if s.tag == template.BUNDLES_TAG), None)
        if share is None:
            share = qemu.Share(template.BUNDLES_TAG, os.path.join(self.spec.vm_dir, "bundles"),
                               readonly=False)
            self.spec.shares.append(share)
        return share

    def boot(self, timeout: float = BOOT_TIMEOUT) -> dict:
        """Start the VM and wait for the agent's answer to a ping; that answer."""
        return self._come_up(self.spec, timeout, "boot")

    def _come_up(self, spec: qemu.VmSpec, timeout: float, verb: str, after_start=None,
                 after_ping=None) -> dict:
        """QEMU for `spec` started (`after_start`: a clone's restore), the agent's ping
        answered (`after_ping`'s fields added to the answer); on failure the VM is gone."""
        os.makedirs(spec.vm_dir, mode=0o700, exist_ok=True)
        started = time.monotonic()
        self.vm = qemu.Vm(spec)
        self.client = AgentClient(spec.agent_socket)
        try:
            self.vm.start()
            if after_start is not None:
                after_start()
            self.client.accept(10.0, alive=lambda: self.vm.poll() is None)
            # The ping waits in QEMU until the agent opens its port.
            reply = self.client.call("ping", timeout=timeout)
            if after_ping is not None:
                reply = {**reply, **after_ping()}
        except (AgentError, AgentGone, VmError) as e:
            console = self.vm.console()[-3000:]
            self.stop()
            raise VmBootFailed(f"the pod VM did not {verb}: {e}; console:\n{console}") from None
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


def build_template(*, cache_dir: str, template_dir: str,
                   memory_mib: int = qemu.DEFAULT_MEMORY_MIB, cpus: int = qemu.DEFAULT_CPUS,
                   kernel_version: str | None = None, tenant: str = "") -> template.Template:
    """The template that pod VMs of these settings restore from, built now if there is
    none (corrald's `template_at_start`: the first pod then does not wait for it).
    Nothing is started but the build's own VM."""
    unstarted = os.path.join(template_dir, ".unstarted")  # the PodVm is never started
    vm = PodVm(cache_dir=cache_dir, vm_dir=unstarted,
               agent_socket=os.path.join(unstarted, "agent.sock"), memory_mib=memory_mib,
               cpus=cpus, kernel_version=kernel_version, template_dir=template_dir,
               tenant=tenant)
    vm.ensure_template()
    return vm.template


def precompile(source_dir: str) -> None:
    """Byte-compile corral where the guest reads it: the guest cannot write .pyc files
    (a read-only share), and compiling the agent under TCG costs it half a second a boot.
    Up-to-date files are skipped (one stat each); a source tree we cannot write is left."""
    import compileall

    try:
        compileall.compile_dir(os.path.join(source_dir, "corral"), quiet=2, workers=1)
    except OSError:
        pass
