"""VM templates: a VM booted once, its agent idle, saved; each pod's VM is restored from it.

    build    boot with guest RAM in a file on tmpfs (memory-backend-file, share=on),
             /usr and corral from the read-only guest image (guestimage.py: a mounted
             9p share cannot be saved), the NIC on an unconnected hub port, the pod's
             bundles share present but not mounted; agent ping → prepare_template
             (the runtime imported) → QMP: x-ignore-shared, stop, migrate to
             `exec:cat > state` (only the device state: ~60 KB) → quit
    restore  QEMU with the same devices, the RAM file mapped share=off (copy-on-write:
             clones share every page they do not write), -incoming defer; QMP:
             x-ignore-shared, migrate-incoming `exec:cat state`, cont

QEMU 7.2 has no `file:` migration URI and no command-line x-ignore-shared, hence
QMP and `exec:`.  A template's files never change once made: a clone maps the
RAM file privately, and a page it has not written is read from the file, so a
rebuilt template is a new directory (its key is new) and an old one is only
unlinked, which the clones that still map it do not notice.

A template is keyed by everything its guest's memory depends on: the vmlinux,
the initramfs, the guest image (whose name hashes corral's sources), memory
size, vCPUs, accelerator, the QEMU binary, and a tenant (clones of one template
share pages, a side channel between them: one template per tenant).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time

from corral.vm import qemu
from corral.vm.client import AgentClient
from corral.vm.errors import AgentError, AgentGone, VmBootFailed, VmError
from corral.vm.qmp import Qmp, QmpError

BUNDLES_TAG = "bundles"
FORMAT = 1  # what a template directory holds; a change makes every key new
BUILD_TIMEOUT = 120.0
RESTORE_TIMEOUT = 30.0
_CAPABILITIES = [{"capability": "x-ignore-shared", "state": True}]


class TemplateError(VmError):
    pass


class Template:
    """A saved VM's files: guest RAM (`ram`), device state (`state`), `meta.json`."""

    def __init__(self, directory: str):
        self.dir = directory
        self.key = os.path.basename(directory)
        self.ram = os.path.join(directory, "ram")
        self.state = os.path.join(directory, "state")
        self.meta_path = os.path.join(directory, "meta.json")

    def complete(self) -> bool:
        return all(os.path.isfile(p) for p in (self.ram, self.state, self.meta_path))

    def meta(self) -> dict:
        with open(self.meta_path) as f:
            return json.load(f)


def template_key(spec: qemu.VmSpec, tenant: str = "") -> str:
    parts = [FORMAT, qemu.file_id(spec.kernel), qemu.file_id(spec.initrd),
             qemu.file_id(spec.image) if spec.image else [],
             spec.memory_mib, spec.cpus, spec.accelerator.name, qemu.file_id(spec.qemu),
             spec.python, spec.python_path, tenant]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def template_spec(base: qemu.VmSpec, *, vm_dir: str, agent_socket: str, bundles_dir: str,
                  memory_file: str, clone: bool, tap: str | None = None,
                  netns: str | None = None) -> qemu.VmSpec:
    """The VmSpec of a template (clone=False) or of a clone of it: the same devices in
    the same order, as a migration needs; only backends and paths differ."""
    share = qemu.Share(BUNDLES_TAG, bundles_dir, readonly=False, at_boot=False)
    return qemu.VmSpec(
        vm_dir=vm_dir, kernel=base.kernel, initrd=base.initrd, agent_socket=agent_socket,
        shares=[share], python=base.python, python_path=base.python_path,
        accelerator=base.accelerator, memory_mib=base.memory_mib, cpus=base.cpus,
        tap=tap if clone else None, netns=netns if clone else None, qemu=base.qemu,
        image=base.image, memory_file=memory_file, memory_shared=not clone,
        incoming=clone, qmp_socket=qemu.socket_path(vm_dir, "qmp.sock"), nic=True)


def ensure_template(root: str, base: qemu.VmSpec, tenant: str = "") -> Template:
    """The template for `base` (a VmSpec with its image), built if there is none.

    Under an exclusive flock on `root`/.lock: concurrent pods wait for one build.
    A build is made in a directory of its own and renamed into place, so a crash
    leaves no half template (leftover builds are removed here); templates of the
    same slot (memory, tenant) with another key are removed once a new one exists."""
    key = template_key(base, tenant)
    os.makedirs(root, mode=0o700, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        template = Template(os.path.join(root, key))
        if template.complete():
            return template
        shutil.rmtree(template.dir, ignore_errors=True)
        for name in os.listdir(root):
            if name.startswith(".build-"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        building = tempfile.mkdtemp(prefix=".build-", dir=root)
        try:
            _build(building, base, key, tenant)
            os.rename(building, template.dir)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        _remove_replaced(root, template, base, tenant)
        return template


def discard(root: str, template: Template) -> None:
    """A template that failed to restore: gone, so that the next pod builds it again."""
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(template.dir, ignore_errors=True)


def remove_all(root: str) -> None:
    """Every template (and leftover build) in `root`, and `root` if that empties it;
    nothing else there is touched."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(root, name)
        if name.startswith(".build-") or Template(path).complete():
            shutil.rmtree(path, ignore_errors=True)
    try:
        os.unlink(os.path.join(root, ".lock"))
        os.rmdir(root)
    except OSError:
        pass


def _build(directory: str, base: qemu.VmSpec, key: str, tenant: str) -> None:
    bundles = os.path.join(directory, "bundles")  # the clones' own replace it
    os.makedirs(bundles)
    spec = template_spec(base, vm_dir=directory,
                         agent_socket=qemu.socket_path(directory, "agent.sock"),
                         bundles_dir=bundles, memory_file=os.path.join(directory, "ram"),
                         clone=False)
    started = time.monotonic()
    client = AgentClient(spec.agent_socket)
    vm = qemu.Vm(spec)
    try:
        vm.start()
        client.accept(10.0, alive=lambda: vm.poll() is None)
        client.call("ping", timeout=BUILD_TIMEOUT)
        client.call("prepare_template", timeout=BUILD_TIMEOUT)
        monitor = Qmp(spec.qmp_socket, alive=lambda: vm.poll() is None)
        try:
            monitor.execute("migrate-set-capabilities", capabilities=_CAPABILITIES)
            monitor.execute("stop")
            saving = time.monotonic()
            monitor.execute("migrate", uri=f"exec:cat > {os.path.join(directory, 'state')}")
            result = monitor.wait_for("query-migrate",
                                      lambda r: r.get("status") in ("completed", "failed"))
            if result.get("status") != "completed":
                raise TemplateError(f"saving the template VM: {result.get('error-desc')}")
            saved_ms = (time.monotonic() - saving) * 1000
            monitor.execute("quit")
        finally:
            monitor.close()
        vm.wait(10.0)
    except (AgentError, AgentGone, QmpError, VmBootFailed) as e:
        console = vm.console()[-2000:]
        raise TemplateError(f"building the VM template: {e}; console:\n{console}") from None
    finally:
        vm.stop()
        client.close()
    os.chmod(os.path.join(directory, "ram"), 0o400)  # never written again (module doc)
    shutil.rmtree(bundles, ignore_errors=True)
    meta = {"key": key, "tenant": tenant, "memory_mib": base.memory_mib, "cpus": base.cpus,
            "built_at": time.time(), "build_seconds": round(time.monotonic() - started, 3),
            "save_ms": round(saved_ms, 1),
            "state_bytes": os.path.getsize(os.path.join(directory, "state"))}
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump(meta, f)


def restore(vm: qemu.Vm, template: Template, timeout: float = RESTORE_TIMEOUT) -> None:
    """Bring a started clone (`vm.spec.incoming`) to running from `template`."""
    monitor = Qmp(vm.spec.qmp_socket, alive=lambda: vm.poll() is None)
    try:
        monitor.execute("migrate-set-capabilities", capabilities=_CAPABILITIES)
        monitor.execute("migrate-incoming", uri=f"exec:cat {template.state}")
        status = monitor.wait_for("query-status", lambda r: r.get("status") != "inmigrate",
                                  timeout=timeout)
        if status.get("status") not in ("paused", "postmigrate"):
            raise TemplateError(f"restoring from template {template.key}: "
                                f"QEMU is {status.get('status')}")
        monitor.execute("cont")
    finally:
        monitor.close()


def _remove_replaced(root: str, kept: Template, base: qemu.VmSpec, tenant: str) -> None:
    for name in os.listdir(root):
        other = Template(os.path.join(root, name))
        if name.startswith(".") or other.dir == kept.dir or not other.complete():
            continue
        try:
            meta = other.meta()
        except (OSError, ValueError):
            continue
        if (meta.get("tenant"), meta.get("memory_mib"), meta.get("cpus")) == (
                tenant, base.memory_mib, base.cpus):
            shutil.rmtree(other.dir, ignore_errors=True)
