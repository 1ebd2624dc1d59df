"""Containers on a pure cgroup v2 host: the unified files, the eBPF device filter, stats.

This machine is hybrid, so these run in the QEMU guest of test_cgroup_v2_guest.py
(and on any pure v2 host); elsewhere they are deselected.  The guest has a
scratch disk, /dev/vda, whose reads give zeros.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from corral.runtime.cgroups import V2Manager, open_manager
from corral.runtime.cgroups.common import discover, own_cgroups

from .conftest import CGROUP_ROOT, cgroup_dirs

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2]

MiB = 1 << 20


def cat(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def block_device() -> tuple[str, int, int]:
    """(name, major, minor) of a disk: the guest's /dev/vda, or a host's first disk."""
    names = sorted(os.listdir("/sys/block"), key=lambda n: (n != "vda", n))
    for name in names:
        if name.startswith(("loop", "ram", "zram", "dm-")):
            continue
        if int(cat(f"/sys/block/{name}/size")) > 0:
            major, minor = cat(f"/sys/block/{name}/dev").split(":")
            return name, int(major), int(minor)
    raise AssertionError("no block device with a size in /sys/block")


@pytest.fixture
def parent_cgroup(runtime):
    """A fresh /corral-test-<random> cgroup name; removed with everything below it
    (after `runtime` has deleted the containers in it)."""
    name = f"corral-test-{uuid.uuid4().hex[:12]}"
    yield name
    for top, _, _ in sorted(os.walk(os.path.join(CGROUP_ROOT, name)),
                            key=lambda entry: entry[0].count("/"), reverse=True):
        os.rmdir(top)


def container_cgroup(cid: str) -> str:
    (path,) = cgroup_dirs(cid)
    return path


def test_this_host_is_pure_cgroup_v2():
    host = discover()
    assert host.pure_v2 and host.v1 == {}
    assert host.unified.mountpoint == CGROUP_ROOT
    assert list(own_cgroups()) == [""]  # one "0::/path" line
    assert {"cpu", "memory", "io", "pids"} <= set(cat(f"{CGROUP_ROOT}/cgroup.controllers").split())
    assert isinstance(open_manager("", "x"), V2Manager)


def test_spec_resources_land_in_the_unified_files(runtime, bundle):
    _, major, minor = block_device()
    bundle.linux["resources"].update({
        "memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 32 * MiB},
        "cpu": {"shares": 1024, "quota": 20000, "period": 50000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 30},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [
            {"major": major, "minor": minor, "rate": MiB}]},
        "unified": {"memory.high": str(48 * MiB)},
    })
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    path = container_cgroup(cid)
    assert path == f"{CGROUP_ROOT}/{cid}"  # relative to the caller's parent: the root here
    assert cat(f"{path}/memory.max") == str(64 * MiB)
    assert cat(f"{path}/memory.swap.max") == str(32 * MiB)  # OCI's swap is memory+swap
    assert cat(f"{path}/memory.low") == str(32 * MiB)
    assert cat(f"{path}/memory.high") == str(48 * MiB)
    assert cat(f"{path}/cpu.max") == "20000 50000"
    assert cat(f"{path}/cpu.weight") == "39"  # runc's mapping of 1024 shares
    assert cat(f"{path}/cpuset.cpus") == "0"
    assert cat(f"{path}/pids.max") == "30"
    assert cat(f"{path}/io.weight") == "default 4950"  # blkio 500 of [10, 1000] → [1, 10000]
    assert f"{major}:{minor} rbps={MiB} wbps=max riops=max wiops=max" in cat(f"{path}/io.max")
    # The ancestors hand the controllers down (the root here).
    assert {"cpu", "cpuset", "io", "memory", "pids"} <= set(
        cat(f"{CGROUP_ROOT}/cgroup.subtree_control").split())
    init = runtime.state(cid)["pid"]
    assert cat(f"/proc/{init}/cgroup") == f"0::/{cid}"
    runtime("delete", "--force", cid)
    assert not os.path.exists(path)


def test_the_device_filter_is_an_attached_bpf_program(runtime, bundle):
    from corral.runtime.cgroups import devicefilter

    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    fd = os.open(container_cgroup(cid), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(devicefilter.attached(fd)) == 1
    finally:
        os.close(fd)
    runtime("delete", "--force", cid)


def with_mknod(bundle) -> None:
    caps = bundle.config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind].append("CAP_MKNOD")


def test_a_disk_is_denied_with_eperm_until_a_rule_allows_it(runtime, make_bundle):
    name, major, minor = block_device()
    script = (f"mknod /dev/{name} b {major} {minor} && echo made; "
              f"head -c 1 /dev/{name} | wc -c; echo x > /dev/null && echo null-ok")

    denied = make_bundle()
    with_mknod(denied)
    result = runtime.run_capture(denied.write(["sh", "-c", script]))
    assert result.stdout.split() == ["made", "0", "null-ok"], result.stderr
    assert f"/dev/{name}: Operation not permitted" in result.stderr

    allowed = make_bundle()
    with_mknod(allowed)
    allowed.linux["resources"]["devices"].append(
        {"allow": True, "type": "b", "major": major, "minor": minor, "access": "r"})
    result = runtime.run_capture(allowed.write(["sh", "-c", script]))
    assert result.stdout.split() == ["made", "1", "null-ok"], result.stderr
    # "r" only: opening it for writing is still refused.
    denied_write = make_bundle()
    with_mknod(denied_write)
    denied_write.linux["resources"]["devices"] = allowed.linux["resources"]["devices"]
    result = runtime.run_capture(denied_write.write(
        ["sh", "-c", f"mknod /dev/{name} b {major} {minor}; echo > /dev/{name}"]))
    assert result.returncode != 0 and "Operation not permitted" in result.stderr


def test_a_listed_device_is_not_allowed_by_the_listing(runtime, make_bundle):
    # linux.devices makes the node; only linux.resources.devices may allow it (as runc).
    name, major, minor = block_device()
    listed = make_bundle()
    listed.linux["devices"] = [{"path": f"/dev/{name}", "type": "b", "major": major,
                                "minor": minor}]
    result = runtime.run_capture(listed.write(
        ["sh", "-c", f"ls /dev/{name} && head -c 1 /dev/{name} | wc -c"]))
    assert result.stdout.split() == [f"/dev/{name}", "0"], result.stderr
    assert f"/dev/{name}: Operation not permitted" in result.stderr


def test_exec_into_a_sub_cgroup(runtime, bundle):
    # exec.bats "runc exec --cgroup subcgroup [v2]"
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    path = container_cgroup(cid)
    os.mkdir(f"{path}/sub")
    show = ["cat", "/proc/self/cgroup"]
    for bad, message in (("..", ".. is not a sub cgroup path"),
                         ("nonexistent", "/nonexistent/cgroup.procs: no such file ")):
        result = runtime("exec", "--cgroup", bad, cid, *show, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    own = path[len(CGROUP_ROOT):]  # no cgroup namespace: the host's view
    assert runtime("exec", "--cgroup", "/", cid, *show).stdout == f"0::{own}\n"
    assert runtime("exec", "--cgroup", "sub", cid, *show).stdout == f"0::{own}/sub\n"
    runtime("delete", "--force", cid)
    assert not os.path.exists(path)


def test_events_stats_come_from_the_v2_files(runtime, bundle):
    name, major, minor = block_device()
    bundle.linux["devices"] = [{"path": f"/dev/{name}", "type": "b", "major": major,
                                "minor": minor, "fileMode": 0o600}]
    bundle.linux["resources"]["devices"].append(
        {"allow": True, "type": "b", "major": major, "minor": minor, "access": "r"})
    bundle.linux["resources"].update(memory={"limit": 64 * MiB}, pids={"limit": 30})
    bundle.write(["sh", "-c", f"dd if=/dev/{name} of=/dev/null bs=64k count=16 2>/dev/null; "
                              "x=$(head -c 4000000 /dev/zero | tr '\\0' a); "
                              "echo ready > /dev/shm/ready; sleep 1000 & wait"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    ready = f"/proc/{runtime.state(cid)['pid']}/root/dev/shm/ready"
    deadline = time.monotonic() + 60
    while not os.path.exists(ready):
        assert time.monotonic() < deadline, "the container never got ready"
        time.sleep(0.05)
    data = json.loads(runtime("events", "--stats", cid).stdout)["data"]
    path = container_cgroup(cid)

    cpu_stat = dict(line.split() for line in cat(f"{path}/cpu.stat").splitlines())
    assert data["cpu"]["usage"]["total"] > 0 and data["cpu"]["usage"]["percpu"] == []
    assert data["cpu"]["usage"]["total"] <= int(cpu_stat["usage_usec"]) * 1000
    memory = data["memory"]
    assert memory["usage"]["limit"] == 64 * MiB and memory["usage"]["usage"] > 0
    assert memory["usage"]["max"] >= memory["usage"]["usage"]  # memory.peak
    assert {"anon", "file", "kernel_stack"} <= memory["raw"].keys()  # memory.stat's own keys
    assert memory["swap"]["limit"] == 2**64 - 1  # no swap limit: max, as runc says
    assert data["pids"] == {"current": 2, "limit": 30}  # sh and sleep
    reads = [e for e in data["blkio"]["ioServiceBytesRecursive"]
             if (e["major"], e["minor"], e["op"]) == (major, minor, "Read")]
    assert reads and reads[0]["value"] >= 16 * 64 * 1024, data["blkio"]  # from io.stat
    assert "some" in memory.get("psi", {}) or not os.path.exists(f"{path}/memory.pressure")
    runtime("delete", "--force", cid)


def test_nested_cgroups_path_under_a_parent(runtime, bundle, parent_cgroup):
    bundle.linux["resources"].update(memory={"limit": 32 * MiB}, pids={"limit": 10})
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    bundle.linux["cgroupsPath"] = f"/{parent_cgroup}/pod/{cid}"
    bundle.write()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    pod = f"{CGROUP_ROOT}/{parent_cgroup}/pod"
    assert cat(f"{pod}/{cid}/memory.max") == str(32 * MiB)
    assert cat(f"{pod}/{cid}/pids.max") == "10"
    for level in (f"{CGROUP_ROOT}/{parent_cgroup}", pod):  # each ancestor delegates
        assert {"memory", "pids"} <= set(cat(f"{level}/cgroup.subtree_control").split())
    init = runtime.state(cid)["pid"]
    assert cat(f"/proc/{init}/cgroup") == f"0::/{parent_cgroup}/pod/{cid}"
    runtime("pause", cid)
    assert cat(f"{pod}/{cid}/cgroup.freeze") == "1"
    assert "frozen 1" in cat(f"{pod}/{cid}/cgroup.events").splitlines()
    assert cat(f"{pod}/cgroup.freeze") == "0"  # the parent is not frozen
    runtime("delete", "--force", cid)
    assert not os.path.exists(f"{pod}/{cid}")
    assert os.path.isdir(pod)  # shared parents are left to their owner


def test_a_relative_path_goes_below_the_callers_parent(runtime, bundle, parent_cgroup):
    # The caller's own cgroup has a process (the caller), so on v2 it cannot hand
    # controllers down: a relative path is taken below its parent, as runc does.
    caller = f"{CGROUP_ROOT}/{parent_cgroup}/caller"
    os.makedirs(caller)
    bundle.linux["resources"]["pids"] = {"limit": 7}
    bundle.linux["cgroupsPath"] = "sub/box"
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()

    def join_caller() -> None:
        with open(f"{caller}/cgroup.procs", "w") as f:
            f.write("0")

    runtime("create", "--bundle", str(bundle.path), cid, preexec_fn=join_caller)
    box = f"{CGROUP_ROOT}/{parent_cgroup}/sub/box"
    assert cat(f"{box}/pids.max") == "7"
    assert cat(f"/proc/{runtime.state(cid)['pid']}/cgroup") == f"0::/{parent_cgroup}/sub/box"
    runtime("delete", "--force", cid)
    assert not os.path.exists(box)


def test_update_with_unified_keys_and_swap(runtime, bundle, tmp_path):
    bundle.linux["resources"]["memory"] = {"limit": 64 * MiB}
    bundle.write(["sleep", "1000"])
    cid = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    path = container_cgroup(cid)
    resources = {"memory": {"limit": 48 * MiB, "swap": 48 * MiB},
                 "unified": {"pids.max": "9", "memory.high": "max"}}
    runtime("update", "-r", "-", cid, input=json.dumps(resources).encode())
    assert cat(f"{path}/memory.max") == str(48 * MiB)
    assert cat(f"{path}/memory.swap.max") == "0"  # memory+swap equal to memory: no swap
    assert cat(f"{path}/pids.max") == "9"
    bad = runtime("update", "-r", "-", cid, check=False,
                  input=json.dumps({"unified": {"memory.nonsense": "1"}}).encode())
    assert bad.returncode == 1 and "linux.resources.unified.memory.nonsense" in bad.stderr
    runtime("delete", "--force", cid)



def test_a_parent_with_processes_is_a_clear_error(runtime, bundle, parent_cgroup):
    # cgroup v2 lets only a cgroup without processes of its own hand controllers down.
    busy = f"{CGROUP_ROOT}/{parent_cgroup}"
    os.makedirs(busy)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        with open(f"{busy}/cgroup.procs", "w") as f:
            f.write(str(sleeper.pid))
        bundle.linux["resources"]["memory"] = {"limit": 64 * MiB}
        bundle.linux["cgroupsPath"] = f"/{parent_cgroup}/box"
        result = runtime.run_capture(bundle.write(["true"]))
        assert result.returncode == 1
        assert (f"linux.resources.memory: the memory controller is not available in "
                f"{busy}/box (no memory.max): its parent {busy} has processes of its own, "
                f"so cannot enable it") in result.stderr
        assert not os.path.exists(f"{busy}/box")
    finally:
        sleeper.kill()
        sleeper.wait()
