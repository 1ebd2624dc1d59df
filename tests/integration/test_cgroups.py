"""The cgroup managers against this host's real cgroup hierarchies.

Every cgroup is named corral-test-<random> and made at the top of each
hierarchy; the `cg` fixture kills (by PID) what a test started, thaws and
destroys what it made, and fails loudly if anything is left.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from corral.runtime.cgroups import (
    CgroupError,
    Manager,
    V1Manager,
    V2Manager,
    load_manager,
    open_manager,
)
from corral.runtime.cgroups.common import discover, own_cgroups, read_or_none, visible_path

pytestmark = pytest.mark.root

HOST = discover()
PURE_V2 = HOST.pure_v2
UNIFIED = HOST.unified.mountpoint if HOST.unified else None
V2_ROOT = UNIFIED  # V2Manager is tested here: the root on v2 hosts, .../unified on hybrid
needs_v1 = pytest.mark.skipif(PURE_V2, reason="needs cgroup v1 controllers")
needs_hybrid = pytest.mark.skipif(PURE_V2 or UNIFIED is None, reason="needs a hybrid host")
needs_v2 = pytest.mark.skipif(V2_ROOT is None, reason="needs a cgroup2 mount")

MiB = 1 << 20
CREATED_NAMES: list[str] = []


def _v2_controllers() -> set[str]:
    return set((read_or_none(V2_ROOT, "cgroup.controllers") or "").split()) if V2_ROOT else set()


def _hugetlb_2mb() -> bool:
    return os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB")


def leftovers(name: str) -> list[str]:
    """Directories named `name` at the top of any hierarchy, and everything below them."""
    found = []
    for mount in {m.mountpoint for m in HOST.v1.values()} | ({UNIFIED} if UNIFIED else set()):
        found += [top for top, _, _ in os.walk(os.path.join(mount, name))]
    return sorted(found)


class Tracker:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.managers: list[Manager] = []
        self.procs: list[subprocess.Popen] = []

    def name(self) -> str:
        name = f"corral-test-{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        CREATED_NAMES.append(name)
        return name

    def open(self, path: str | None = None, container_id: str | None = None) -> Manager:
        if path is None:
            path = "/" + self.name()
        manager = open_manager(path, container_id or "ct")
        self.managers.append(manager)
        return manager

    def v2(self, name: str | None = None) -> V2Manager:
        manager = V2Manager(os.path.join(V2_ROOT, name or self.name()), root=V2_ROOT)
        self.managers.append(manager)
        return manager

    def spawn(self, *args: str, manager: Manager | None = None, **kwargs) -> subprocess.Popen:
        """Start a process; with `manager`, it joins that cgroup before exec."""
        preexec = (lambda: manager.join(0)) if manager is not None else None
        proc = subprocess.Popen(list(args), preexec_fn=preexec, **kwargs)
        self.procs.append(proc)
        return proc

    def python(self, code: str, manager: Manager) -> subprocess.CompletedProcess:
        proc = self.spawn(sys.executable, "-S", "-c", code, manager=manager,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def cleanup(self) -> None:
        for manager in self.managers:
            try:
                manager.thaw()  # frozen processes cannot die
            except Exception:
                pass
        for proc in self.procs:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for manager in self.managers:
            try:
                manager.destroy(timeout=5)
            except CgroupError:
                pass
        for name in self.names:  # parents made by mkdir -p, and anything else
            for path in sorted(leftovers(name), key=lambda p: p.count("/"), reverse=True):
                os.rmdir(path)


@pytest.fixture
def cg():
    tracker = Tracker()
    yield tracker
    tracker.cleanup()
    for name in tracker.names:
        assert leftovers(name) == [], f"cgroup directories left for {name}"


@pytest.fixture(scope="module", autouse=True)
def nothing_left_at_the_end():
    yield
    left = [p for name in CREATED_NAMES for p in leftovers(name)]
    assert left == []
    assert glob.glob("/sys/fs/cgroup/*/corral-test-*") == []


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("State:"))


def cat(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


# --- v1 (and hybrid) through open_manager --------------------------------------------


@needs_v1
def test_create_join_limits_and_destroy(cg):
    name = cg.name()
    manager = cg.open("/" + name)
    assert isinstance(manager, V1Manager) and manager.version == 1
    manager.create({
        "memory": {"limit": 64 * MiB, "swap": 64 * MiB, "reservation": 32 * MiB},
        "pids": {"limit": 32},
        "cpu": {"shares": 512, "quota": 25000, "period": 100000, "cpus": "0", "mems": "0"},
    })
    for key, path in manager.paths.items():
        assert os.path.isdir(path), key
        assert path.endswith("/" + name)
    if UNIFIED:
        assert manager.paths[""] == os.path.join(UNIFIED, name)
    p = manager.paths
    assert cat(f"{p['memory']}/memory.limit_in_bytes") == str(64 * MiB)
    assert cat(f"{p['memory']}/memory.soft_limit_in_bytes") == str(32 * MiB)
    if os.path.exists(f"{p['memory']}/memory.memsw.limit_in_bytes"):
        assert cat(f"{p['memory']}/memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert cat(f"{p['pids']}/pids.max") == "32"
    assert cat(f"{p['cpu']}/cpu.cfs_quota_us") == "25000"
    assert cat(f"{p['cpu']}/cpu.cfs_period_us") == "100000"
    assert cat(f"{p['cpu']}/cpu.shares") == "512"
    assert cat(f"{p['cpuset']}/cpuset.cpus") == "0"
    assert cat(f"{p['cpuset']}/cpuset.mems") == "0"

    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    assert manager.pids() == [sleeper.pid]
    with open(f"/proc/{sleeper.pid}/cgroup") as f:
        lines = f.read().splitlines()
    assert all(line.endswith("/" + name) for line in lines), lines

    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    manager.destroy()
    assert not manager.exists()
    assert leftovers(name) == []
    manager.destroy()  # already gone: fine


@needs_v1
def test_cpuset_parents_get_cpus_and_mems(cg):
    name = cg.name()
    manager = cg.open(f"/{name}/a/b")
    manager.create({})
    cpuset = manager.paths["cpuset"]
    top = os.path.dirname(os.path.dirname(os.path.dirname(cpuset)))
    for level in (f"{top}/{name}", f"{top}/{name}/a", cpuset):
        assert cat(f"{level}/cpuset.cpus") == cat(f"{top}/cpuset.cpus")
        assert cat(f"{level}/cpuset.mems") == cat(f"{top}/cpuset.mems")
    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)  # ENOSPC if the cpuset were empty
    assert manager.pids() == [sleeper.pid]


@needs_v1
def test_failing_resource_names_the_field_and_leaves_nothing(cg):
    name = cg.name()
    manager = cg.open(f"/{name}/child")
    with pytest.raises(CgroupError) as err:
        manager.create({"memory": {"limit": 64 * MiB}, "cpu": {"cpus": "99"}})
    message = str(err.value)
    assert message.startswith("linux.resources.cpu.cpus: cannot write 99 to ")
    assert "\n" not in message
    assert leftovers(name) == []  # the parent it made is gone too
    assert not manager.exists()


@needs_v1
def test_failure_keeps_directories_that_existed(cg):
    name = cg.name()
    parent = cg.open("/" + name)
    parent.create({})
    child = cg.open(f"/{name}/child")
    with pytest.raises(CgroupError, match=r"^linux\.resources\.pids\.limit: "):
        child.create({"pids": {"limit": "many"}})
    assert all(os.path.isdir(p) for p in parent.paths.values())
    assert not child.exists()


@needs_v1
def test_destroy_removes_the_leaf_not_the_parents(cg):
    name = cg.name()
    child = cg.open(f"/{name}/pod/ctr")
    child.create({"pids": {"limit": 10}})
    child.destroy()
    assert not child.exists()
    # The parents may be shared (a pod's cgroup): left alone.
    assert all(os.path.isdir(os.path.dirname(p)) for p in child.paths.values())


@needs_v1
def test_create_is_idempotent_and_apply_updates(cg):
    manager = cg.open()
    resources = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 10}}
    manager.create(resources)
    manager.create(resources)
    manager.apply({"memory": {"limit": 128 * MiB, "swap": 256 * MiB}, "pids": {"limit": -1},
                   "cpu": {"period": 50000}})
    p = manager.paths
    assert cat(f"{p['memory']}/memory.limit_in_bytes") == str(128 * MiB)
    if os.path.exists(f"{p['memory']}/memory.memsw.limit_in_bytes"):
        assert cat(f"{p['memory']}/memory.memsw.limit_in_bytes") == str(256 * MiB)
    assert cat(f"{p['pids']}/pids.max") == "max"
    assert cat(f"{p['cpu']}/cpu.cfs_period_us") == "50000"
    # Lower again: now the limit must go before memory+swap.
    manager.apply({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}})
    assert cat(f"{p['memory']}/memory.limit_in_bytes") == str(32 * MiB)


@needs_v1
def test_freeze_and_thaw(cg):
    manager = cg.open()
    manager.create({})
    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    assert not manager.frozen()
    manager.freeze()
    assert manager.frozen()
    assert cat(f"{manager.paths['freezer']}/freezer.state") == "FROZEN"
    assert proc_state(sleeper.pid) == "D"  # the freezer holds it
    manager.thaw()
    assert not manager.frozen()
    assert cat(f"{manager.paths['freezer']}/freezer.state") == "THAWED"
    wait_for(lambda: proc_state(sleeper.pid) == "S")


@needs_v1
def test_memory_limit_is_enforced_by_the_oom_killer(cg):
    manager = cg.open()
    manager.create({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}})
    assert manager.oom_kills() == 0
    result = cg.python("b = bytearray(200 * 2**20)", manager)
    assert result.returncode == -signal.SIGKILL
    assert manager.oom_kills() >= 1


@needs_v1
def test_device_rules_on_v1(cg):
    manager = cg.open()
    manager.create({"devices": [{"allow": False, "access": "rwm"},
                                {"allow": True, "type": "c", "major": 1, "minor": 3,
                                 "access": "rwm"}]})
    assert cat(f"{manager.paths['devices']}/devices.list") == "c 1:3 rwm"
    probe = ("import os\nos.close(os.open('/dev/null', os.O_WRONLY))\n"
             "try:\n    os.close(os.open('/dev/zero', os.O_RDONLY)); print('zero')\n"
             "except PermissionError:\n    print('denied')\n")
    assert cg.python(probe, manager).stdout == "denied\n"
    manager.apply({"devices": [{"allow": True, "access": "rwm"}]})
    assert cat(f"{manager.paths['devices']}/devices.list") == "a *:* rwm"
    assert cg.python(probe, manager).stdout == "zero\n"


@needs_v1
def test_destroy_retries_then_reports_live_processes(cg):
    manager = cg.open()
    manager.create({})
    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    start = time.monotonic()
    with pytest.raises(CgroupError, match=rf"cannot remove cgroup .*{sleeper.pid}"):
        manager.destroy(timeout=0.3)
    assert time.monotonic() - start >= 0.3
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    manager.destroy()
    assert not manager.exists()


@needs_v1
def test_state_round_trip(cg):
    manager = cg.open()
    manager.create({"pids": {"limit": 5}})
    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    saved = json.loads(json.dumps(manager.to_state()))
    again = load_manager(saved)
    assert type(again) is type(manager) and again.version == manager.version
    assert again.paths == manager.paths
    assert again.pids() == [sleeper.pid]
    again.freeze()
    assert manager.frozen()
    again.thaw()
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    again.destroy()
    assert not manager.exists()


def test_load_manager_rejects_bad_state():
    for bad in ({}, {"version": 3}, {"version": 1, "paths": {"memory": "relative/x"}},
                {"version": 1, "paths": {"memory": "/sys/fs/cgroup/memory/../x"}},
                {"version": 2, "path": 5, "root": "/sys/fs/cgroup"}, []):
        with pytest.raises(CgroupError, match="saved cgroup state"):
            load_manager(bad)


def test_cgroups_path_resolution():
    own = own_cgroups()
    name = f"corral-test-{uuid.uuid4().hex[:12]}"
    absolute = open_manager(f"/{name}/x", "ct")
    relative = open_manager(f"{name}/x", "ct")
    default = open_manager("", name)
    if PURE_V2:
        assert absolute.paths == {"": f"{UNIFIED}/{name}/x"}
        parent = os.path.dirname(own[""]).rstrip("/")
        assert relative.paths == {"": f"{UNIFIED}{parent}/{name}/x"}
        assert default.paths == {"": f"{UNIFIED}{parent}/{name}"}
    else:
        for ctl, mount in HOST.v1.items():
            assert absolute.paths[ctl] == f"{mount.mountpoint}/{name}/x"
            base = visible_path(mount, own[ctl], ctl).rstrip("/")
            assert relative.paths[ctl] == f"{mount.mountpoint}{base}/{name}/x"
            assert default.paths[ctl] == f"{mount.mountpoint}{base}/{name}"
        if UNIFIED:
            assert absolute.paths[""] == f"{UNIFIED}/{name}/x"
            base = visible_path(HOST.unified, own[""], "").rstrip("/")
            assert relative.paths[""] == f"{UNIFIED}{base}/{name}/x"
    for bad in ("/a/../b", "../x", "/"):
        with pytest.raises(CgroupError, match=r"^linux\.cgroupsPath: "):
            open_manager(bad, "ct")
    assert not any(os.path.exists(p) for p in absolute.paths.values())  # nothing made yet


@needs_hybrid
def test_hybrid_unified_dir_and_hugetlb(cg):
    if "hugetlb" not in _v2_controllers() or not _hugetlb_2mb():
        pytest.skip("hugetlb is not offered on the cgroup2 mount")
    manager = cg.open()
    manager.create({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]})
    unified = manager.paths[""]
    assert cat(f"{unified}/hugetlb.2MB.max") == str(4 * MiB)
    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    assert cat(f"{unified}/cgroup.procs") == str(sleeper.pid)
    manager.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}]})
    assert cat(f"{unified}/hugetlb.2MB.max") == str(2 * MiB)


@needs_v1
def test_unified_is_refused_on_v1_even_with_a_cgroup2_mount(cg):
    # As runc: "unified" is for cgroup v2 hosts; nothing is made, nothing is changed.
    manager = cg.open()
    name = os.path.basename(manager.paths["memory"])
    for resources in ({"unified": {"pids.max": "5"}}, {"unified": {"memory.nonsense": "1"}}):
        with pytest.raises(CgroupError, match=r"^linux\.resources\.unified: invalid "
                                              r"configuration: cannot use unified on cgroup v1"):
            manager.create(resources)
        assert leftovers(name) == []
    manager.create({"pids": {"limit": 9}})
    with pytest.raises(CgroupError, match="cannot use unified"):
        manager.apply({"unified": {"pids.max": "5"}})
    assert cat(f"{manager.paths['pids']}/pids.max") == "9"


@needs_v1
def test_resource_for_a_controller_mounted_nowhere(cg):
    if "net_cls" in HOST.v1:
        pytest.skip("net_cls is mounted here")
    manager = cg.open()
    name = os.path.basename(manager.paths["memory"])
    with pytest.raises(CgroupError, match=r"^linux\.resources\.network\.classID: the net_cls "
                                          r"controller is not mounted"):
        manager.create({"network": {"classID": 0x100001}})
    assert leftovers(name) == []


# --- V2Manager on the cgroup2 mount ------------------------------------------------------


@needs_v2
def test_v2_create_join_freeze_destroy(cg):
    name = cg.name()
    manager = cg.v2(name)
    resources: dict = {"unified": {"cgroup.max.descendants": "3"}}
    if "hugetlb" in _v2_controllers() and _hugetlb_2mb():
        resources["hugepageLimits"] = [{"pageSize": "2MB", "limit": 2 * MiB}]
    manager.create(resources)
    path = os.path.join(V2_ROOT, name)
    assert manager.paths == {"": path} and manager.version == 2
    assert os.path.isdir(path)
    assert cat(f"{path}/cgroup.max.descendants") == "3"
    if "hugepageLimits" in resources:
        assert cat(f"{path}/hugetlb.2MB.max") == str(2 * MiB)

    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    assert manager.pids() == [sleeper.pid]
    manager.freeze()
    assert manager.frozen()
    assert cat(f"{path}/cgroup.freeze") == "1"
    assert "frozen 1" in cat(f"{path}/cgroup.events").splitlines()
    manager.thaw()
    assert not manager.frozen()
    wait_for(lambda: "frozen 0" in cat(f"{path}/cgroup.events").splitlines())

    assert load_manager(json.loads(json.dumps(manager.to_state()))).paths == manager.paths
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    manager.destroy()
    assert not os.path.exists(path)


@needs_v2
def test_open_manager_on_a_pure_v2_hierarchy(cg):
    # Rooted at the cgroup2 mount, the factory sees a pure v2 host (on a hybrid
    # host too): relative paths go below the parent of the caller's cgroup.
    name = cg.name()
    manager = open_manager("/" + name, "ct", root=V2_ROOT)
    cg.managers.append(manager)
    assert isinstance(manager, V2Manager) and manager.paths == {"": f"{V2_ROOT}/{name}"}
    parent = visible_path(HOST.unified, os.path.dirname(own_cgroups()[""]), "").rstrip("/")
    assert open_manager(name, "ct", root=V2_ROOT).paths == {"": f"{V2_ROOT}{parent}/{name}"}
    assert open_manager("", name, root=V2_ROOT).paths == {"": f"{V2_ROOT}{parent}/{name}"}
    manager.create({"pids": {"limit": 10}} if "pids" in _v2_controllers() else {})
    sleeper = cg.spawn("sleep", "60")
    manager.join(sleeper.pid)
    assert manager.pids() == [sleeper.pid]
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    manager.destroy()
    assert not manager.exists()


@needs_v2
def test_v2_refuses_what_the_hierarchy_lacks(cg):
    manager = cg.v2()
    with pytest.raises(CgroupError, match=r"^linux\.resources\.unified\.nosuch\.file: no such "):
        manager.create({"unified": {"nosuch.file": "1"}})
    assert not manager.exists()
    with pytest.raises(CgroupError, match=r"^linux\.resources\.unified\.\.\./x: not a cgroup"):
        manager.create({"unified": {"../x": "1"}})
    if "memory" not in _v2_controllers():
        with pytest.raises(CgroupError, match=r"^linux\.resources\.memory: the memory controller "
                                              r"is not available"):
            manager.create({"memory": {"limit": 64 * MiB}})
    with pytest.raises(CgroupError, match=r"^linux\.resources\.cpu\.realtimeRuntime: "):
        manager.create({"cpu": {"realtimeRuntime": 1000}})
    assert not manager.exists()


@needs_v2
def test_v2_device_filter(cg):
    from corral.runtime.cgroups import devicefilter

    manager = cg.v2()
    manager.create({"devices": [{"allow": False, "access": "rwm"},
                                {"allow": True, "type": "c", "major": 1, "minor": 3,
                                 "access": "rwm"}]})
    probe = ("import errno, os\nos.close(os.open('/dev/null', os.O_RDWR)); print('null ok')\n"
             "try:\n    os.close(os.open('/dev/zero', os.O_RDONLY)); print('zero ok')\n"
             "except OSError as e:\n    print('zero', errno.errorcode[e.errno])\n")
    result = cg.python(probe, manager)
    assert result.stdout == "null ok\nzero EPERM\n", result.stderr

    # An update replaces the filter rather than stacking another one on it.
    manager.apply({"devices": [{"allow": True, "access": "rwm"}]})
    assert cg.python(probe, manager).stdout == "null ok\nzero ok\n"
    fd = os.open(manager.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(devicefilter.attached(fd)) == 1
    finally:
        os.close(fd)
