"""corral-runtime's cgroup behaviour where runc 1.1.5's bats suite checks it (issue 9):
device rules, runc's spelling of resources, unified on v1, pre-existing cgroups,
`update`'s flags and `exec --cgroup` / `--ignore-paused`.

Containers use an absolute cgroupsPath (/<id>), so each file is read at
/sys/fs/cgroup/<controller>/<id>/; values are read back from the kernel's files and
device access is tried from inside the container.  This host is cgroup v1 (hybrid).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from .conftest import CGROUP_ROOT, PURE_V2

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(PURE_V2, reason="the v1 files of runc's v1 tests")]

MiB = 1 << 20
FUSE = {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
# What a v1 memory cgroup reads as its limit when there is none.
NO_LIMIT = open(f"{CGROUP_ROOT}/memory/memory.limit_in_bytes").read().strip()


def cat(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def value(cid: str, name: str) -> str:
    """A file of the container's cgroup: "memory.limit_in_bytes" is read in memory/."""
    return cat(f"{CGROUP_ROOT}/{name.split('.')[0]}/{cid}/{name}")


def start(runtime, bundle, args=("sleep", "1000")) -> str:
    cid = runtime.new_id()
    bundle.linux["cgroupsPath"] = "/" + cid
    bundle.write(list(args))
    runtime("run", "--detach", "--bundle", str(bundle.path), cid)
    return cid


def update(runtime, cid: str, *flags: str, resources: dict | None = None, check=True):
    if resources is not None:
        return runtime("update", "-r", "-", *flags, cid, check=check,
                       input=json.dumps(resources).encode())
    return runtime("update", *flags, cid, check=check)


def inside(runtime, cid: str, script: str, *exec_flags: str, check=True):
    return runtime("exec", *exec_flags, cid, "sh", "-c", script, check=check)


# --- 1. device rules: linux.devices makes nodes, linux.resources.devices decides -----


OPEN_FUSE = "exec 3<>/dev/fuse && echo opened"


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this host")
def test_a_configured_device_is_not_allowed_by_being_listed(runtime, bundle):
    bundle.linux["devices"] = [FUSE]
    bundle.linux["resources"]["devices"] = [{"allow": False, "access": "rwm"}]
    cid = start(runtime, bundle)
    listing = inside(runtime, cid, "ls -l /dev/fuse").stdout
    assert listing.startswith("c") and "10, 229" in listing  # the node is made
    denied = inside(runtime, cid, OPEN_FUSE, check=False)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr
    assert "10:229" not in value(cid, "devices.list")
    # The default devices keep working under the deny-all.
    assert inside(runtime, cid, "echo x > /dev/null && head -c3 /dev/zero | wc -c"
                  ).stdout.strip() == "3"


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this host")
def test_a_device_rule_allows_the_configured_device(runtime, bundle):
    bundle.linux["devices"] = [FUSE]
    # "rwa": runc drops the letters it does not know.
    bundle.linux["resources"]["devices"] = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwa"}]
    cid = start(runtime, bundle)
    assert inside(runtime, cid, OPEN_FUSE).stdout.strip() == "opened"
    assert "c 10:229 rw" in value(cid, "devices.list").splitlines()


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this host")
def test_a_cri_device_comes_with_its_cgroup_rule(runtime, bundle):
    # CRI devices (containerd's WithDevices): the node and an allow rule with its permissions.
    from cri_api.v1 import api_pb2

    from corral.sandbox.ocispec import PodContext, container_spec

    config = api_pb2.ContainerConfig(command=["true"])
    config.devices.add(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rw")
    spec = container_spec(config, api_pb2.PodSandboxConfig(), {"config": {}},
                          PodContext(pod_id="pod", namespaces={}), rootfs=str(bundle.rootfs),
                          container_id="ct")
    bundle.linux["devices"] = spec["linux"]["devices"]
    bundle.linux["resources"]["devices"] = spec["linux"]["resources"]["devices"]
    cid = start(runtime, bundle)
    assert inside(runtime, cid, OPEN_FUSE).stdout.strip() == "opened"


def test_access_strings_as_runc_reads_them(runtime, bundle):
    # runc 1.1.5 update.bats: a deny with "rwa" next to a node made by linux.devices.
    bundle.linux["devices"] = [{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11}]
    bundle.linux["resources"]["devices"] = [
        {"allow": False, "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "minor": 11, "access": "rwa"}]
    cid = start(runtime, bundle)
    assert "1:11" not in value(cid, "devices.list")
    bundle.linux["resources"]["devices"] = [{"allow": False, "access": ""}]
    del bundle.linux["cgroupsPath"]
    result = runtime.run_capture(bundle.write(["true"]))
    assert result.returncode == 1
    assert "linux.resources.devices[0].access: must not be empty" in result.stderr


# --- 2. resources spelled as Go's encoding/json reads them -------------------------------


def test_resource_keys_match_regardless_of_case(runtime, bundle):
    # update.bats "update cpuset parameters via resources.CPU"
    bundle.linux["resources"] = {"CPU": {"Cpus": "0", "Mems": "0"},
                                 "Memory": {"Limit": 40 * MiB}}
    cid = start(runtime, bundle)
    assert value(cid, "cpuset.cpus") == "0"
    assert value(cid, "memory.limit_in_bytes") == str(40 * MiB)
    cpus = "1" if os.cpu_count() > 1 else "0"
    update(runtime, cid, resources={"CPU": {"Cpus": cpus}, "PIDS": {"limit": 33}})
    assert value(cid, "cpuset.cpus") == cpus
    assert value(cid, "pids.max") == "33"


# --- 3. linux.resources.unified needs cgroup v2 ------------------------------------------


def test_unified_resources_on_a_v1_host_are_an_invalid_configuration(runtime, bundle):
    # cgroups.bats "runc run (cgroup v1 + unified resources should fail)"
    bundle.linux["resources"]["pids"] = {"limit": 20}
    bundle.linux["resources"]["unified"] = {"memory.min": "131072"}
    cid = runtime.new_id()
    bundle.linux["cgroupsPath"] = "/" + cid
    result = runtime("run", "--bundle", str(bundle.write(["true"]).path), cid, check=False)
    assert result.returncode == 1
    assert "invalid configuration: cannot use unified on cgroup v1" in result.stderr
    assert not os.path.exists(f"{CGROUP_ROOT}/unified/{cid}")

    del bundle.linux["resources"]["unified"]
    cid = start(runtime, bundle)
    refused = update(runtime, cid, resources={"unified": {"pids.max": "10"}}, check=False)
    assert refused.returncode == 1 and "invalid configuration" in refused.stderr
    assert value(cid, "pids.max") == "20"


# --- 4. a cgroup that exists before the container -------------------------------------


@pytest.fixture
def frozen_cgroup():
    """/sys/fs/cgroup/freezer/<name>, FROZEN; thawed and removed afterwards."""
    name = f"corral-frozen-{uuid.uuid4().hex[:10]}"
    path = f"{CGROUP_ROOT}/freezer/{name}"
    os.mkdir(path)
    with open(f"{path}/freezer.state", "w") as f:
        f.write("FROZEN")
    yield name
    with open(f"{path}/freezer.state", "w") as f:
        f.write("THAWED")
    os.rmdir(path)


def test_create_into_a_frozen_cgroup_is_refused_at_once(runtime, bundle, frozen_cgroup):
    # cgroups.bats "runc run/create should refuse pre-existing frozen cgroup"
    bundle.linux["cgroupsPath"] = "/" + frozen_cgroup
    bundle.write(["true"])
    for command in (["run", "--detach"], ["create"]):
        began = time.monotonic()
        result = runtime(*command, "--bundle", str(bundle.path), runtime.new_id(),
                         check=False, timeout=30)
        assert result.returncode == 1
        assert "container's cgroup unexpectedly frozen" in result.stderr
        assert time.monotonic() - began < 10
    assert cat(f"{CGROUP_ROOT}/freezer/{frozen_cgroup}/freezer.state") == "FROZEN"
    # Nothing was made in the other hierarchies, and the frozen cgroup is left as found.
    assert not os.path.exists(f"{CGROUP_ROOT}/memory/{frozen_cgroup}")


def test_a_cgroup_with_processes_gets_runc_s_warning(runtime, make_bundle):
    # cgroups.bats "runc run/create should warn about a non-empty cgroup"
    shared = f"/corral-shared-{uuid.uuid4().hex[:10]}"
    first = make_bundle(["sleep", "1000"])
    first.linux["cgroupsPath"] = shared
    runtime("run", "--detach", "--bundle", str(first.write().path), runtime.new_id())
    second = make_bundle(["sleep", "1000"])
    second.linux["cgroupsPath"] = shared
    second.write()
    for command in (["run", "--detach"], ["create"]):
        result = runtime(*command, "--bundle", str(second.path), runtime.new_id())
        assert "container's cgroup is not empty: " in result.stderr
        assert "process(es) found" in result.stderr
    for cid in runtime.ids:
        runtime("delete", "--force", cid)
    assert not os.path.exists(f"{CGROUP_ROOT}/memory{shared}")


# --- 5. update: runc's flags, values read back from the cgroup files ----------------------


@pytest.fixture
def limited(bundle):
    """update.bats' starting point: memory 32M (soft 24M), cpu 100 shares at
    500000/1000000, 20 pids."""
    bundle.linux["resources"].update(
        memory={"limit": 32 * MiB, "reservation": 24 * MiB},
        cpu={"shares": 100, "quota": 500000, "period": 1000000}, pids={"limit": 20})
    return bundle


def test_update_common_limits(runtime, limited, tmp_path):
    # update.bats "update cgroup v1/v2 common limits"
    cid = start(runtime, limited)
    assert value(cid, "memory.limit_in_bytes") == str(32 * MiB)
    assert value(cid, "memory.soft_limit_in_bytes") == str(24 * MiB)
    assert value(cid, "pids.max") == "20"
    if os.cpu_count() > 1:
        update(runtime, cid, "--cpuset-cpus", "1")
        assert value(cid, "cpuset.cpus") == "1"
    update(runtime, cid, "--memory", "67108864")
    assert value(cid, "memory.limit_in_bytes") == "67108864"
    update(runtime, cid, "--memory", "50M")
    assert value(cid, "memory.limit_in_bytes") == str(50 * MiB)
    update(runtime, cid, "--memory-reservation", "33554432")
    assert value(cid, "memory.soft_limit_in_bytes") == "33554432"
    swap = os.path.exists(f"{CGROUP_ROOT}/memory/{cid}/memory.memsw.limit_in_bytes")
    if swap:
        update(runtime, cid, "--memory-swap", "-1")
        assert value(cid, "memory.memsw.limit_in_bytes") == NO_LIMIT
        update(runtime, cid, "--memory-swap", "96468992")
        assert value(cid, "memory.memsw.limit_in_bytes") == "96468992"
    update(runtime, cid, "--memory", "-1")
    assert value(cid, "memory.limit_in_bytes") == NO_LIMIT
    if swap:
        assert value(cid, "memory.memsw.limit_in_bytes") == NO_LIMIT
    update(runtime, cid, "--pids-limit", "10")
    assert value(cid, "pids.max") == "10"
    update(runtime, cid, "--pids-limit", "0")  # 0: left as it is
    assert value(cid, "pids.max") == "10"
    update(runtime, cid, "--pids-limit", "-1")
    assert value(cid, "pids.max") == "max"

    initial = {"memory": {"limit": 32 * MiB, "reservation": 24 * MiB},
               "cpu": {"shares": 100, "quota": 500000, "period": 1000000, "cpus": "0"},
               "pids": {"limit": 20}}
    update(runtime, cid, resources=initial)
    assert [value(cid, n) for n in ("cpuset.cpus", "memory.limit_in_bytes",
                                    "memory.soft_limit_in_bytes", "pids.max")] == [
        "0", str(32 * MiB), str(24 * MiB), "20"]
    update(runtime, cid, "--cpu-period", "900000", "--cpu-quota", "600000", "--cpu-share",
           "200", "--memory", "67108864", "--memory-reservation", "33554432",
           "--pids-limit", "10")
    assert [value(cid, n) for n in ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares",
                                    "memory.limit_in_bytes", "memory.soft_limit_in_bytes",
                                    "pids.max")] == [
        "900000", "600000", "200", "67108864", "33554432", "10"]
    from_file = tmp_path / "resources.json"
    from_file.write_text(json.dumps(initial))
    update(runtime, cid, "-r", str(from_file))
    assert value(cid, "pids.max") == "20" and value(cid, "cpu.shares") == "100"
    # With -r the other flags are ignored (runc's help says so).
    update(runtime, cid, "--pids-limit", "7", resources={"pids": {"limit": 21}})
    assert value(cid, "pids.max") == "21"

    if swap:
        # memory and memory+swap, raised past the old swap limit: written in an order
        # the kernel accepts (memory+swap never below memory).
        update(runtime, cid, "--memory", "30M", "--memory-swap", "50M")
        assert value(cid, "memory.limit_in_bytes") == str(30 * MiB)
        assert value(cid, "memory.memsw.limit_in_bytes") == str(50 * MiB)
        update(runtime, cid, "--memory", "60M", "--memory-swap", "80M")
        assert value(cid, "memory.limit_in_bytes") == str(60 * MiB)
        assert value(cid, "memory.memsw.limit_in_bytes") == str(80 * MiB)
        below = update(runtime, cid, "--memory", "90M", check=False)
        assert below.returncode == 1 and "memory" in below.stderr
        assert value(cid, "memory.limit_in_bytes") == str(60 * MiB)


def test_update_cpu_limits(runtime, limited, tmp_path):
    # update.bats "update cgroup cpu limits"
    cid = start(runtime, limited)

    def quota_period() -> tuple[str, str]:
        return value(cid, "cpu.cfs_quota_us"), value(cid, "cpu.cfs_period_us")

    assert quota_period() == ("500000", "1000000") and value(cid, "cpu.shares") == "100"
    update(runtime, cid, "--cpu-period", "900000")
    assert quota_period() == ("500000", "900000")
    update(runtime, cid, "--cpu-quota", "600000")
    assert quota_period() == ("600000", "900000")
    update(runtime, cid, "--cpu-quota", "-1")
    assert quota_period() == ("-1", "900000")
    update(runtime, cid, "--cpu-share", "200")
    assert value(cid, "cpu.shares") == "200"
    update(runtime, cid, resources={"cpu": {"shares": 100, "quota": 500000,
                                            "period": 1000000}})
    assert quota_period() == ("500000", "1000000") and value(cid, "cpu.shares") == "100"
    update(runtime, cid, "--cpu-quota", "-1", "--cpu-period", "100000")
    assert quota_period() == ("-1", "100000")
    bad = update(runtime, cid, "--cpu-share", "lots", check=False)
    assert bad.returncode == 1 and "--cpu-share" in bad.stderr


@pytest.mark.parametrize(("cpu", "expected"), [
    ({"period": 1000000}, ("-1", "1000000")),  # "set cpu period with no quota"
    ({"quota": 5000}, ("5000", "100000")),  # "set cpu quota with no period"
])
def test_quota_or_period_alone_at_create(runtime, bundle, cpu, expected):
    bundle.linux["resources"]["cpu"] = cpu
    cid = start(runtime, bundle)
    assert (value(cid, "cpu.cfs_quota_us"), value(cid, "cpu.cfs_period_us")) == expected


def test_an_invalid_period_fails_create(runtime, bundle):
    bundle.linux["resources"]["cpu"] = {"period": 100}  # below the kernel's 1 ms
    result = runtime.run_capture(bundle.write(["true"]))
    assert result.returncode == 1 and "linux.resources.cpu.period" in result.stderr


@pytest.mark.parametrize("flag", ["--cpu-period", "--cpu-quota"])
def test_update_quota_or_period_with_none_set_before(runtime, bundle, flag):
    cid = start(runtime, bundle)
    update(runtime, cid, flag, "50000")
    assert (value(cid, "cpu.cfs_quota_us"), value(cid, "cpu.cfs_period_us")) == (
        ("-1", "50000") if flag == "--cpu-period" else ("50000", "100000"))


@pytest.fixture
def pod(runtime):
    """/corral-pod-<random> in the cpu hierarchy, with a 50% quota; removed afterwards."""
    name = f"corral-pod-{uuid.uuid4().hex[:10]}"
    yield name
    for hierarchy in os.listdir(CGROUP_ROOT):
        path = f"{CGROUP_ROOT}/{hierarchy}/{name}"
        if os.path.isdir(path):
            os.rmdir(path)


def test_update_period_under_a_pod_quota(runtime, bundle, pod):
    # update.bats "update cpu period in a pod cgroup with pod limit set"
    os.mkdir(f"{CGROUP_ROOT}/cpu/{pod}")
    with open(f"{CGROUP_ROOT}/cpu/{pod}/cpu.cfs_quota_us", "w") as f:
        f.write("50000")
    cid = runtime.new_id()
    bundle.linux["cgroupsPath"] = f"/{pod}/{cid}"
    runtime("run", "--detach", "--bundle", str(bundle.write(["sleep", "1000"]).path), cid)
    leaf = f"{CGROUP_ROOT}/cpu/{pod}/{cid}"
    period = int(cat(f"{leaf}/cpu.cfs_period_us"))
    over = update(runtime, cid, "--cpu-quota", str(period * 6 // 10), check=False)
    assert over.returncode == 1
    update(runtime, cid, "--cpu-period", "10000", "--cpu-quota", "3000")
    assert (cat(f"{leaf}/cpu.cfs_quota_us"), cat(f"{leaf}/cpu.cfs_period_us")) == (
        "3000", "10000")
    runtime("delete", "--force", cid)


@pytest.mark.skipif(not os.path.exists(f"{CGROUP_ROOT}/cpu/cpu.rt_runtime_us"),
                    reason="no realtime group scheduling")
def test_update_rt_period_and_runtime(runtime, bundle, pod):
    # update.bats "update rt period and runtime": the budget is handed down first.
    cid = runtime.new_id()
    root_period = cat(f"{CGROUP_ROOT}/cpu/cpu.rt_period_us")
    root_runtime = cat(f"{CGROUP_ROOT}/cpu/cpu.rt_runtime_us")
    for level in (f"{pod}", f"{pod}/{cid}"):
        os.mkdir(f"{CGROUP_ROOT}/cpu/{level}")
        for name, budget in (("cpu.rt_period_us", root_period),
                             ("cpu.rt_runtime_us", root_runtime)):
            with open(f"{CGROUP_ROOT}/cpu/{level}/{name}", "w") as f:
                f.write(budget)
    bundle.linux["cgroupsPath"] = f"/{pod}/{cid}"
    runtime("run", "--detach", "--bundle", str(bundle.write(["sleep", "1000"]).path), cid)
    leaf = f"{CGROUP_ROOT}/cpu/{pod}/{cid}"

    def rt() -> tuple[str, str]:
        return cat(f"{leaf}/cpu.rt_period_us"), cat(f"{leaf}/cpu.rt_runtime_us")

    update(runtime, cid, resources={"cpu": {"realtimeRuntime": 500001}})
    assert rt() == (root_period, "500001")
    update(runtime, cid, resources={"cpu": {"realtimePeriod": 800001,
                                            "realtimeRuntime": 500001}})
    assert rt() == ("800001", "500001")
    update(runtime, cid, "--cpu-rt-period", "900001", "--cpu-rt-runtime", "600001")
    assert rt() == ("900001", "600001")
    runtime("delete", "--force", cid)


def test_update_of_a_paused_container_keeps_it_paused(runtime, bundle):
    # update.bats "update paused container"
    cid = start(runtime, bundle)
    runtime("pause", cid)
    update(runtime, cid, "--pids-limit", "30")
    assert runtime.status(cid) == "paused" and value(cid, "pids.max") == "30"
    runtime("resume", cid)
    assert runtime.status(cid) == "running"


def test_update_leaves_the_device_rules_alone(runtime, bundle):
    # runc's update never changes device rules: a partial list there (the CRI sends a
    # bare deny-all) would take away the default devices.
    cid = start(runtime, bundle)
    rules = value(cid, "devices.list")
    update(runtime, cid, resources={"devices": [{"allow": False, "access": "rwm"}],
                                    "pids": {"limit": 30}})
    assert value(cid, "devices.list") == rules and value(cid, "pids.max") == "30"
    assert inside(runtime, cid, "echo x > /dev/null && echo ok").stdout.strip() == "ok"


def test_update_flags_runc_ignores_or_lacks(runtime, bundle):
    cid = start(runtime, bundle)
    kernel = update(runtime, cid, "--kernel-memory", "64M", "--kernel-memory-tcp", "8M")
    assert "Kernel memory settings are ignored" in kernel.stderr
    for flag, feature in (("--l3-cache-schema", "Intel RDT/CAT"),
                          ("--mem-bw-schema", "Intel RDT/MBA")):
        if os.path.isdir("/sys/fs/resctrl/info"):
            pytest.skip("resctrl is mounted here")
        refused = update(runtime, cid, flag, "L3:0=f", check=False)
        assert refused.returncode == 1 and f"{feature}: " in refused.stderr
        assert "is not enabled" in refused.stderr
    sizes = update(runtime, cid, "--memory", "1.5g", check=False)
    assert sizes.returncode == 0 and value(cid, "memory.limit_in_bytes") == str(1536 * MiB)
    bad = update(runtime, cid, "--memory", "lots", check=False)
    assert bad.returncode == 1 and "invalid value for memory" in bad.stderr
    runtime("delete", "--force", cid)
    stopped = update(runtime, cid, "--pids-limit", "5", check=False)
    assert stopped.returncode == 1


def test_update_then_events_stats_shows_the_new_limits(runtime, bundle):
    cid = start(runtime, bundle)
    update(runtime, cid, "--memory", "48M", "--pids-limit", "17")
    stats = json.loads(runtime("events", "--stats", cid).stdout)["data"]
    assert stats["memory"]["usage"]["limit"] == 48 * MiB
    assert stats["pids"]["limit"] == 17


# --- 6. exec --cgroup and --ignore-paused ---------------------------------------------------


def test_exec_into_sub_cgroups(runtime, bundle):
    # exec.bats "runc exec --cgroup sub-cgroups [v1]"
    cid = start(runtime, bundle)
    # The process's cgroups as the host sees them, controller → path.
    show = "cat /proc/$$/cgroup"

    def host_view(*flags: str) -> dict[str, str]:
        pid_file = f"/tmp/{cid}.pid"
        runtime("exec", "--detach", "--pid-file", pid_file, *flags, cid, "sleep", "30")
        pid = int(cat(pid_file))
        os.unlink(pid_file)
        try:
            lines = cat(f"/proc/{pid}/cgroup").splitlines()
        finally:
            os.kill(pid, 9)
        return {ctl: path for _, ctls, path in (line.split(":", 2) for line in lines)
                for ctl in ctls.split(",")}

    for bad, message in (("..", ".. is not a sub cgroup path"),
                         ("nonexistent", "/nonexistent/cgroup.procs: no such file "),
                         ("cpu:nonexistent", "/nonexistent/cgroup.procs: no such file "),
                         ("whaaat:/", "unknown controller ")):
        result = inside(runtime, cid, show, "--cgroup", bad, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        if "no such file" in message:
            assert " adding pid " in result.stderr
    for flags in ((), ("--cgroup", "/")):
        assert set(host_view(*flags).values()) == {"/" + cid}
    for controller, sub in (("memory", "submem"), ("cpu", "subcpu"), ("cpuacct", "subcpu")):
        os.mkdir(f"{CGROUP_ROOT}/{controller}/{cid}/{sub}")
    joined = host_view("--cgroup", "memory:submem", "--cgroup", "cpu,cpuacct:subcpu")
    assert joined["memory"] == f"/{cid}/submem"
    assert joined["cpu"] == joined["cpuacct"] == f"/{cid}/subcpu"
    assert joined["pids"] == f"/{cid}"
    refused = runtime("exec", "--cgroup", "a", "--cgroup", "b", cid, "true", check=False)
    assert refused.returncode != 0 and "missing <controller>: prefix" in refused.stderr
    runtime("delete", "--force", cid)  # the sub-cgroups go with the container's


def test_exec_into_a_paused_container(runtime, bundle):
    # cgroups.bats "runc exec should refuse a paused container", "runc exec --ignore-paused"
    cid = start(runtime, bundle)
    runtime("pause", cid)
    refused = runtime("exec", cid, "echo", "ok", check=False, timeout=20)
    assert refused.returncode != 0
    assert "cannot exec in a paused container" in refused.stderr
    resumer = subprocess.Popen(["sh", "-c", f"sleep 2; {' '.join(runtime.cmd('resume', cid))}"])
    try:
        began = time.monotonic()
        result = runtime("exec", "--ignore-paused", cid, "echo", "ok", timeout=30)
        assert result.stdout == "ok\n"
        assert time.monotonic() - began > 1.5  # it ran only once resumed
    finally:
        resumer.wait(timeout=30)
    assert runtime.status(cid) == "running"


def test_device_rules_are_applied_in_the_listed_order(runtime, bundle):
    """runtime-tools' linux_cgroups_devices: after the deny-all, devices.list starts with
    the config's allow rules in their order (runc's defaults follow them)."""
    bundle.linux["resources"]["devices"] = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
        {"allow": True, "type": "b", "major": 8, "minor": 20, "access": "rw"},
        {"allow": True, "type": "b", "major": 10, "minor": 200, "access": "r"}]
    cid = start(runtime, bundle)
    listed = value(cid, "devices.list").splitlines()
    assert listed[:3] == ["c 10:229 rwm", "b 8:20 rw", "b 10:200 r"], listed
    assert "c 1:3 rwm" in listed  # /dev/null still works
