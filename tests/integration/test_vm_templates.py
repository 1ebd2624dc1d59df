"""VM templates (vm/template.py) with real QEMU under TCG: built once, restored per pod.

The templates live in a directory of the module's (not /run/corral/vm-templates);
the guest image and kernel files come from the machine's cache as corrald's do.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid

import pytest

from corral.images.busybox import build_bundle
from corral.vm import guestimage, qemu, template
from corral.vm.pod import PodVm

CACHE = "/var/cache/corral/vm"


@pytest.fixture
def vms(workdir):
    started: list[PodVm] = []

    def start(templates: str, **fields) -> PodVm:
        name = uuid.uuid4().hex[:6]
        bundles = os.path.join(workdir, name, "bundles")
        os.makedirs(bundles)
        vm = PodVm(cache_dir=CACHE, vm_dir=os.path.join(workdir, name, "vm"),
                   agent_socket=qemu.socket_path(os.path.join(workdir, name), "agent.sock"),
                   bundles_dir=bundles, template_dir=templates, **fields)
        started.append(vm)
        vm.start()
        return vm

    yield start
    for vm in started:
        vm.stop()
        assert vm.vm.poll() is not None


def run(vm: PodVm, rootfs: str, args: list[str]) -> tuple[int, bytes]:
    cid = f"c{uuid.uuid4().hex[:8]}"
    bundles = next(s.path for s in vm.spec.shares if s.tag == "bundles")
    path = os.path.join(bundles, cid)
    build_bundle(path, args, terminal=False, rootfs_from=rootfs)
    vm.client.call("create", container=cid, bundle=path)
    vm.client.call("start", container=cid)
    output, ended, exit_event = b"", set(), None
    while exit_event is None or len(ended) < 2:  # output may follow the exit event
        event = vm.client.wait_event(lambda e: e.get("container") == cid and not e.get("exec"),
                                     timeout=60)
        if event["event"] == "exit":
            exit_event = event
        elif event.get("eof"):
            ended.add(event["stream"])
        elif event["stream"] == "stdout":
            output += base64.b64decode(event["data"])
    vm.client.call("delete", container=cid)
    return exit_event["exit_code"], output


def test_a_template_is_built_once_and_its_clones_run_containers(workdir, busybox_rootfs, vms):
    templates = os.path.join(workdir, "t1")
    first = vms(templates)
    assert first.template is not None and not first.fallback
    second = vms(templates)
    assert second.template.key == first.template.key  # one build, two clones
    assert os.stat(first.template.ram).st_mode & 0o777 == 0o400  # never written again
    meta = first.template.meta()
    assert meta["state_bytes"] < 1 << 20  # the RAM is not in the state (x-ignore-shared)
    # its rootfs is in the bundles share, mounted by the clone after the restore
    assert run(second, busybox_rootfs, ["echo", "from-a-clone"]) == (0, b"from-a-clone\n")


def test_a_changed_agent_makes_a_new_template_and_the_old_one_goes(workdir, vms):
    templates = os.path.join(workdir, "t2")
    old = vms(templates).template
    # the same sources with the agent edited: another guest image, so another template
    source = os.path.join(workdir, "src-changed")
    shutil.copytree(qemu.corral_source_dir() + "/corral", source + "/corral",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(source, "corral", "vm", "agent.py"), "a") as f:
        f.write("\n# changed\n")
    changed = vms(templates)
    base = qemu.VmSpec(**{**vars(changed.spec), "python_path": source,
                          "image": guestimage.guest_image(CACHE, changed.spec.python, source)})
    new = template.ensure_template(templates, base)
    assert new.key != old.key and new.complete()
    assert not os.path.exists(old.dir)  # replaced: same memory size and tenant


def test_a_template_that_cannot_restore_boots_cold_and_is_rebuilt(workdir, busybox_rootfs, vms):
    templates = os.path.join(workdir, "t3")
    broken = vms(templates).template
    os.chmod(broken.state, 0o600)
    with open(broken.state, "r+b") as f:
        f.truncate(100)  # its device state cut short
    vm = vms(templates)
    assert vm.template is None and "restore" in vm.fallback  # booted cold instead
    code, out = run(vm, busybox_rootfs, ["echo", "cold"])
    assert (code, out) == (0, b"cold\n")
    assert not os.path.exists(broken.dir)  # discarded
    assert vms(templates).template.complete()  # the next pod builds it again


def test_leftover_builds_are_removed(workdir, vms):
    templates = os.path.join(workdir, "t4")
    os.makedirs(os.path.join(templates, ".build-crashed"))
    vms(templates)
    assert not [n for n in os.listdir(templates) if n.startswith(".build-")]
