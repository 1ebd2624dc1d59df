"""cgroup stats (runc's `events --stats` data) from fake cgroup directories.

The v1 and hybrid file contents are copied from a real hybrid host (kernel
6.18, cgroup v1 controllers plus hugetlb on /sys/fs/cgroup/unified); the v2
ones follow Documentation/admin-guide/cgroup-v2.rst.
"""

from __future__ import annotations

import os

import pytest

from corral.runtime.cgroups import V1Manager, V2Manager
from corral.runtime.cgroups.stats import (
    MAX_UINT64,
    USER_HZ,
    parse_blkio,
    parse_cpu_list,
    parse_flat_keyed,
    parse_io_stat,
    parse_psi,
    parse_uint,
    parse_usage_all,
    read_stats,
    v1_stats,
    v2_stats,
)
from corral.runtime.events import follow, oom_event, parse_duration, stats_event
from corral.spec import fastjson

UNLIMITED_V1 = 9223372036854771712  # what v1 shows for "no limit" (page-aligned LONG_MAX)

# --- real v1 files (a cgroup with one python process: 20 MiB touched, 0.5 s of CPU) ----

MEMORY_STAT_V1 = """\
cache 339968
rss 23748608
rss_huge 0
shmem 0
mapped_file 0
dirty 4096
writeback 0
workingset_refault_anon 0
workingset_refault_file 56
swap 0
swapcached 0
pgpgin 6233
pgpgout 352
pgfault 6404
pgmajfault 3
inactive_anon 23744512
active_anon 4096
inactive_file 102400
active_file 237568
unevictable 0
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 339968
total_rss 23748608
total_rss_huge 0
total_shmem 0
total_mapped_file 0
total_dirty 4096
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 56
total_swap 0
total_swapcached 0
total_pgpgin 6233
total_pgpgout 352
total_pgfault 6404
total_pgmajfault 3
total_inactive_anon 23744512
total_active_anon 4096
total_inactive_file 102400
total_active_file 237568
total_unevictable 0
"""

MEMORY_V1 = {
    "memory.stat": MEMORY_STAT_V1,
    "memory.usage_in_bytes": "24502272\n",
    "memory.max_usage_in_bytes": "25923584\n",
    "memory.limit_in_bytes": "67108864\n",
    "memory.failcnt": "0\n",
    "memory.memsw.usage_in_bytes": "24502272\n",
    "memory.memsw.limit_in_bytes": f"{UNLIMITED_V1}\n",
    "memory.memsw.max_usage_in_bytes": "25923584\n",
    "memory.memsw.failcnt": "0\n",
    "memory.kmem.usage_in_bytes": "143360\n",
    "memory.kmem.limit_in_bytes": f"{UNLIMITED_V1}\n",
    "memory.kmem.max_usage_in_bytes": "389120\n",
    "memory.kmem.failcnt": "0\n",
    "memory.kmem.tcp.usage_in_bytes": "0\n",
    "memory.kmem.tcp.limit_in_bytes": f"{UNLIMITED_V1}\n",
    "memory.kmem.tcp.max_usage_in_bytes": "0\n",
    "memory.kmem.tcp.failcnt": "0\n",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "memory.use_hierarchy": "1\n",
}

CPU_V1 = {
    "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n",
    "cpu.shares": "1024\n",
}

CPUACCT_V1 = {
    "cpuacct.stat": "user 50\nsystem 2\n",
    "cpuacct.usage": "532831885\n",
    "cpuacct.usage_percpu": "1961034 530870851 \n",
    "cpuacct.usage_all": "cpu user system\n0 0 0\n1 502392720 24000000\n",
}

CPUSET_V1 = {
    "cpuset.cpus": "0-1\n",
    "cpuset.mems": "0\n",
    "cpuset.cpu_exclusive": "1\n",
    "cpuset.mem_hardwall": "0\n",
    "cpuset.mem_exclusive": "1\n",
    "cpuset.memory_migrate": "0\n",
    "cpuset.memory_spread_page": "0\n",
    "cpuset.memory_spread_slab": "0\n",
    "cpuset.memory_pressure": "0\n",
    "cpuset.sched_load_balance": "1\n",
    "cpuset.sched_relax_domain_level": "-1\n",
}

PIDS_V1 = {"pids.current": "1\n", "pids.max": "max\n", "pids.peak": "3\n"}

# A BFQ host where nothing hit a disk yet: every file says only "Total 0".
BLKIO_IDLE_V1 = {name: "Total 0\n" for name in (
    "blkio.bfq.io_service_bytes", "blkio.bfq.io_service_bytes_recursive",
    "blkio.bfq.io_serviced", "blkio.bfq.io_serviced_recursive",
    "blkio.throttle.io_service_bytes", "blkio.throttle.io_service_bytes_recursive",
    "blkio.throttle.io_serviced", "blkio.throttle.io_serviced_recursive")}

# The format with devices (Documentation/admin-guide/cgroup-v1/blkio-controller.rst).
BLKIO_THROTTLE_V1 = {
    "blkio.bfq.io_serviced_recursive": "Total 0\n",
    "blkio.bfq.io_service_bytes_recursive": "Total 0\n",
    "blkio.throttle.io_serviced_recursive":
        "8:0 Read 124\n8:0 Write 104\n8:0 Sync 104\n8:0 Async 124\n8:0 Discard 0\n"
        "8:0 Total 228\nTotal 228\n",
    "blkio.throttle.io_service_bytes_recursive":
        "8:0 Read 1282048\n8:0 Write 2195456\n8:0 Sync 2195456\n8:0 Async 1282048\n"
        "8:0 Discard 0\n8:0 Total 3477504\nTotal 3477504\n",
}

# hugetlb on the hybrid host's cgroup2 directory (v2 files).
HUGETLB_V2 = {
    "hugetlb.2MB.current": "4194304\n",
    "hugetlb.2MB.events": "max 3\n",
    "hugetlb.2MB.events.local": "max 3\n",
    "hugetlb.2MB.max": f"{UNLIMITED_V1}\n",
    "hugetlb.2MB.rsvd.current": "0\n",
    "hugetlb.2MB.rsvd.max": f"{UNLIMITED_V1}\n",
    "hugetlb.1GB.current": "0\n",
    "hugetlb.1GB.events": "max 0\n",
    "hugetlb.1GB.max": f"{UNLIMITED_V1}\n",
    "hugetlb.1GB.rsvd.current": "0\n",
}

UNIFIED_HYBRID = {
    **HUGETLB_V2,
    "cgroup.procs": "4242\n",
    "cpu.stat": "usage_usec 532831\nuser_usec 508538\nsystem_usec 24293\nnice_usec 0\n",
    "cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                       "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
}

HUGETLB_V1 = {
    "hugetlb.2MB.usage_in_bytes": "2097152\n",
    "hugetlb.2MB.max_usage_in_bytes": "6291456\n",
    "hugetlb.2MB.failcnt": "1\n",
    "hugetlb.2MB.limit_in_bytes": "8388608\n",
    "hugetlb.1GB.usage_in_bytes": "0\n",
    "hugetlb.1GB.max_usage_in_bytes": "0\n",
    "hugetlb.1GB.failcnt": "0\n",
    "hugetlb.1GB.limit_in_bytes": f"{UNLIMITED_V1}\n",
}

# --- v2 files (formats from the kernel's cgroup-v2.rst) ---------------------------------

MEMORY_STAT_V2 = """\
anon 1871872
file 4648960
kernel 839680
kernel_stack 49152
pagetables 143360
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 3923968
file_dirty 0
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 1859584
active_anon 12288
inactive_file 2760704
active_file 1888256
unevictable 0
slab_reclaimable 356328
slab_unreclaimable 295816
slab 652144
workingset_refault_anon 0
workingset_refault_file 0
workingset_activate_anon 0
workingset_activate_file 0
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 0
pgscan 0
pgsteal 0
pgfault 4731
pgmajfault 93
"""

V2_FILES = {
    "cgroup.procs": "101\n102\n",
    "cpu.stat": "usage_usec 2215012\nuser_usec 1910046\nsystem_usec 304966\n"
                "core_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 7\n"
                "throttled_usec 81234\nnr_bursts 0\nburst_usec 0\n",
    "cpu.max": "50000 100000\n",
    "cpu.pressure": "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "memory.current": "7487488\n",
    "memory.max": "67108864\n",
    "memory.peak": "9764864\n",
    "memory.swap.current": "4096\n",
    "memory.swap.max": "max\n",
    "memory.stat": MEMORY_STAT_V2,
    "memory.events": "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=41\n"
                       "full avg10=0.00 avg60=0.00 avg300=0.00 total=40\n",
    "pids.current": "2\n",
    "pids.max": "50\n",
    "io.stat": "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
               "8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 "
               "dios=3021\n",
    "io.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
    **HUGETLB_V2,
}


def make_dir(path, files: dict[str, str]) -> str:
    os.makedirs(path, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(content)
    return str(path)


@pytest.fixture
def hybrid(tmp_path) -> V1Manager:
    """A container cgroup on a hybrid host like this one (cpu and cpuacct apart)."""
    paths = {
        "memory": make_dir(tmp_path / "memory/ct", MEMORY_V1),
        "cpu": make_dir(tmp_path / "cpu/ct", CPU_V1),
        "cpuacct": make_dir(tmp_path / "cpuacct/ct", CPUACCT_V1),
        "cpuset": make_dir(tmp_path / "cpuset/ct", CPUSET_V1),
        "pids": make_dir(tmp_path / "pids/ct", PIDS_V1),
        "blkio": make_dir(tmp_path / "blkio/ct", BLKIO_IDLE_V1),
        "devices": make_dir(tmp_path / "devices/ct", {"devices.list": "a *:* rwm\n"}),
        "freezer": make_dir(tmp_path / "freezer/ct", {"freezer.state": "THAWED\n"}),
        "": make_dir(tmp_path / "unified/ct", UNIFIED_HYBRID),
    }
    return V1Manager(paths)


# --- parsers ---------------------------------------------------------------------------


def test_parse_uint_as_runc():
    assert parse_uint("42\n") == 42
    assert parse_uint("max") == MAX_UINT64
    assert parse_uint("-4096") == 0  # some memory stats go negative (kernel bugs)
    assert parse_uint("") is None
    assert parse_uint("lots") is None


def test_parse_flat_keyed_skips_bad_lines():
    assert parse_flat_keyed("a 1\nb\n\nc x\nd -2\ne 3 4\nf max\n") == {
        "a": 1, "d": 0, "f": MAX_UINT64}


def test_parse_cpu_list():
    assert parse_cpu_list("0-1\n") == [0, 1]
    assert parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("\n") == []
    assert parse_cpu_list("2,x,4") == [2, 4]


def test_parse_usage_all():
    kernel, user = parse_usage_all(CPUACCT_V1["cpuacct.usage_all"])
    assert kernel == [0, 24000000]
    assert user == [0, 502392720]
    assert parse_usage_all("") == ([], [])


def test_parse_psi():
    assert parse_psi(V2_FILES["cpu.pressure"]) == {
        "some": {"avg10": 1.5, "avg60": 0.25, "avg300": 0.05, "total": 123456},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0}}
    assert parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n\n") == {
        "some": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 9}}
    assert parse_psi("") == {}


def test_parse_blkio_lines():
    entries = parse_blkio(BLKIO_THROTTLE_V1["blkio.throttle.io_service_bytes_recursive"])
    assert entries[0] == {"major": 8, "minor": 0, "op": "Read", "value": 1282048}
    assert [e["op"] for e in entries] == ["Read", "Write", "Sync", "Async", "Discard", "Total"]
    # sectors and time files have no op column
    assert parse_blkio("8:0 6792\n253:1 10\n") == [
        {"major": 8, "minor": 0, "value": 6792}, {"major": 253, "minor": 1, "value": 10}]
    assert parse_blkio("Total 0\n") == []
    assert parse_blkio("garbage here\n8:x Read 1\n") == []


def test_parse_io_stat_maps_to_v1_names():
    parsed = parse_io_stat(V2_FILES["io.stat"])
    assert parsed["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 16, "op": "Read", "value": 1459200},
        {"major": 8, "minor": 16, "op": "Write", "value": 314773504},
        {"major": 8, "minor": 0, "op": "Read", "value": 90430464},
        {"major": 8, "minor": 0, "op": "Write", "value": 299008000},
    ]
    assert parsed["ioServicedRecursive"] == [
        {"major": 8, "minor": 16, "op": "Read", "value": 192},
        {"major": 8, "minor": 16, "op": "Write", "value": 353},
        {"major": 8, "minor": 0, "op": "Read", "value": 8950},
        {"major": 8, "minor": 0, "op": "Write", "value": 1252},
    ]
    assert parse_io_stat("") == {"ioServiceBytesRecursive": [], "ioServicedRecursive": []}
    assert parse_io_stat("\nnonsense\n") == {"ioServiceBytesRecursive": [],
                                             "ioServicedRecursive": []}


# --- v1 and hybrid ---------------------------------------------------------------------


def test_hybrid_host_stats(hybrid):
    data = read_stats(hybrid)
    assert list(data) == ["cpu", "cpuset", "memory", "pids", "blkio", "hugetlb"]

    to_ns = 1_000_000_000 // USER_HZ
    assert data["cpu"] == {
        "usage": {"total": 532831885, "percpu": [1961034, 530870851],
                  "percpu_kernel": [0, 24000000], "percpu_user": [0, 502392720],
                  "kernel": 2 * to_ns, "user": 50 * to_ns},
        "throttling": {"periods": 0, "throttledPeriods": 0, "throttledTime": 0},
    }
    assert data["cpuset"] == {
        "cpus": [0, 1], "cpu_exclusive": 1, "mems": [0], "mem_hardwall": 0,
        "mem_exclusive": 1, "memory_migrate": 0, "memory_spread_page": 0,
        "memory_spread_slab": 0, "memory_pressure": 0, "sched_load_balance": 1,
        "sched_relax_domain_level": -1}

    memory = data["memory"]
    assert list(memory) == ["cache", "usage", "swap", "kernel", "kernelTCP", "raw"]
    assert memory["cache"] == 339968  # memory.stat "cache", as runc
    assert memory["usage"] == {"limit": 64 << 20, "usage": 24502272, "max": 25923584,
                               "failcnt": 0}
    assert memory["swap"] == {"limit": UNLIMITED_V1, "usage": 24502272, "max": 25923584,
                              "failcnt": 0}
    assert memory["kernel"] == {"limit": UNLIMITED_V1, "usage": 143360, "max": 389120,
                                "failcnt": 0}
    assert memory["kernelTCP"]["usage"] == 0
    assert memory["raw"]["total_rss"] == 23748608
    assert memory["raw"]["hierarchical_memory_limit"] == UNLIMITED_V1
    assert list(memory["raw"]) == sorted(memory["raw"])  # as Go writes a map
    assert len(memory["raw"]) == MEMORY_STAT_V1.count("\n")

    assert data["pids"] == {"current": 1, "limit": 0}  # "max": no limit
    assert data["blkio"] == {"ioServiceBytesRecursive": [], "ioServicedRecursive": []}
    # hugetlb from the cgroup2 directory; rsvd and .events.local are not page sizes
    assert data["hugetlb"] == {"1GB": {"usage": 0, "max": 0, "failcnt": 0},
                               "2MB": {"usage": 4194304, "max": 0, "failcnt": 3}}
    fastjson.loads(fastjson.dumps(data))  # plain JSON


def test_v1_blkio_throttle_files_when_bfq_has_nothing(tmp_path):
    data = v1_stats({"blkio": make_dir(tmp_path / "blkio", BLKIO_THROTTLE_V1)})
    blkio = data["blkio"]
    assert list(blkio) == ["ioServiceBytesRecursive", "ioServicedRecursive"]
    assert blkio["ioServiceBytesRecursive"][:2] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 1282048},
        {"major": 8, "minor": 0, "op": "Write", "value": 2195456}]
    assert blkio["ioServicedRecursive"][-1] == {"major": 8, "minor": 0, "op": "Total",
                                                "value": 228}


def test_v1_blkio_cfq_files_fill_every_list(tmp_path):
    files = {
        "blkio.sectors_recursive": "8:0 6792\n",
        "blkio.io_service_time_recursive": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        "blkio.io_wait_time_recursive": "8:0 Read 4\nTotal 4\n",
        "blkio.io_merged_recursive": "8:0 Read 5\nTotal 5\n",
        "blkio.io_queued_recursive": "8:0 Read 6\nTotal 6\n",
        "blkio.time_recursive": "8:0 7\n",
        "blkio.io_serviced_recursive": "8:0 Read 8\nTotal 8\n",
        "blkio.io_service_bytes_recursive": "8:0 Read 9\nTotal 9\n",
        **BLKIO_THROTTLE_V1,  # present too, but CFQ's files come first
    }
    blkio = v1_stats({"blkio": make_dir(tmp_path / "blkio", files)})["blkio"]
    assert list(blkio) == ["ioServiceBytesRecursive", "ioServicedRecursive",
                           "ioQueueRecursive", "ioServiceTimeRecursive", "ioWaitTimeRecursive",
                           "ioMergedRecursive", "ioTimeRecursive", "sectorsRecursive"]
    assert blkio["sectorsRecursive"] == [{"major": 8, "minor": 0, "value": 6792}]
    assert blkio["ioServiceBytesRecursive"] == [{"major": 8, "minor": 0, "op": "Read",
                                                 "value": 9}]


def test_v1_hugetlb_controller(tmp_path):
    data = v1_stats({"hugetlb": make_dir(tmp_path / "hugetlb", HUGETLB_V1)})
    assert data == {"hugetlb": {"1GB": {"usage": 0, "max": 0, "failcnt": 0},
                                "2MB": {"usage": 2097152, "max": 6291456, "failcnt": 1}}}


def test_v1_cpu_and_cpuacct_comounted(tmp_path):
    both = make_dir(tmp_path / "cpu,cpuacct", {**CPU_V1, **CPUACCT_V1,
                                               "cpu.stat": "nr_periods 10\nnr_throttled 4\n"
                                                           "throttled_time 123456789\n"})
    cpu = v1_stats({"cpu": both, "cpuacct": both})["cpu"]
    assert cpu["usage"]["total"] == 532831885
    assert cpu["throttling"] == {"periods": 10, "throttledPeriods": 4,
                                 "throttledTime": 123456789}  # already ns on v1


def test_v1_without_swap_or_kmem_accounting(tmp_path):
    files = {k: v for k, v in MEMORY_V1.items() if ".memsw." not in k and ".kmem." not in k}
    memory = v1_stats({"memory": make_dir(tmp_path / "memory", files)})["memory"]
    assert list(memory) == ["cache", "usage", "raw"]


def test_v1_missing_controllers_and_files_are_left_out(tmp_path):
    empty = {ctl: make_dir(tmp_path / ctl, {}) for ctl in
             ("memory", "cpu", "cpuacct", "cpuset", "pids", "hugetlb")}
    # an empty blkio directory still means the controller is there
    empty["blkio"] = make_dir(tmp_path / "blkio", {})
    assert v1_stats(empty) == {"blkio": {"ioServiceBytesRecursive": [],
                                         "ioServicedRecursive": []}}
    gone = {ctl: str(tmp_path / "gone" / ctl) for ctl in
            ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "hugetlb")}
    assert v1_stats(gone, str(tmp_path / "gone" / "unified")) == {}
    assert v1_stats({}) == {}


def test_v1_garbage_in_files_never_raises(tmp_path):
    garbage = "\x00\xff nonsense\n-\n"
    files = {name: garbage for name in (*MEMORY_V1, *CPU_V1, *CPUACCT_V1, *CPUSET_V1,
                                        *PIDS_V1, *BLKIO_THROTTLE_V1, *HUGETLB_V1)}
    paths = {ctl: make_dir(tmp_path / ctl, files) for ctl in
             ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "hugetlb")}
    data = v1_stats(paths, make_dir(tmp_path / "unified", files))
    fastjson.loads(fastjson.dumps(data))
    assert data["memory"]["usage"]["usage"] == 0


def test_hybrid_without_v1_cpu_reads_the_cgroup2_cpu_stat(tmp_path):
    unified = make_dir(tmp_path / "unified", UNIFIED_HYBRID)
    data = v1_stats({"memory": make_dir(tmp_path / "memory", MEMORY_V1)}, unified)
    assert data["cpu"]["usage"]["total"] == 532831000
    assert "psi" not in data["cpu"]  # runc's v1 stats have no PSI
    assert "pids" not in data  # no pids.current: no pids controller anywhere


# --- pure v2 ---------------------------------------------------------------------------


def test_v2_stats(tmp_path):
    manager = V2Manager(make_dir(tmp_path / "ct", V2_FILES), root=str(tmp_path))
    data = read_stats(manager)
    assert list(data) == ["cpu", "memory", "pids", "blkio", "hugetlb"]
    assert data["cpu"]["usage"] == {"total": 2215012000, "percpu": [], "kernel": 304966000,
                                    "user": 1910046000}
    assert data["cpu"]["throttling"] == {"periods": 40, "throttledPeriods": 7,
                                         "throttledTime": 81234000}
    assert data["cpu"]["psi"]["some"]["total"] == 123456

    memory = data["memory"]
    assert list(memory) == ["cache", "usage", "swap", "raw", "psi"]
    assert memory["cache"] == 4648960  # memory.stat "file", as runc
    assert memory["usage"] == {"limit": 64 << 20, "usage": 7487488, "max": 9764864,
                               "failcnt": 0}
    # swap as memory+swap (v1's meaning); an unlimited swap stays unlimited
    assert memory["swap"] == {"limit": MAX_UINT64, "usage": 7487488 + 4096, "max": 0,
                              "failcnt": 0}
    assert memory["raw"]["anon"] == 1871872
    assert memory["raw"]["pgmajfault"] == 93
    assert memory["psi"]["full"]["total"] == 40

    assert data["pids"] == {"current": 2, "limit": 50}
    assert data["blkio"]["ioServicedRecursive"][0] == {"major": 8, "minor": 16, "op": "Read",
                                                       "value": 192}
    assert data["blkio"]["psi"]["some"]["total"] == 7
    assert data["hugetlb"]["2MB"] == {"usage": 4194304, "max": 0, "failcnt": 3}


def test_v2_limits_unlimited_and_swap_limit_added(tmp_path):
    files = {**V2_FILES, "memory.max": "max\n", "pids.max": "max\n",
             "memory.swap.max": "1048576\n"}
    files.pop("memory.peak")  # before kernel 5.19
    data = v2_stats(make_dir(tmp_path / "ct", files))
    assert data["memory"]["usage"]["limit"] == MAX_UINT64
    assert data["memory"]["usage"]["max"] == 0
    assert data["memory"]["swap"]["limit"] == MAX_UINT64  # unlimited memory: unlimited total
    assert data["pids"]["limit"] == 0

    files["memory.max"] = "67108864\n"
    data = v2_stats(make_dir(tmp_path / "ct2", files))
    assert data["memory"]["swap"]["limit"] == (64 << 20) + 1048576


def test_v2_without_controllers(tmp_path):
    # Only what every cgroup2 directory has: cpu.stat (usage only) and cgroup.procs.
    files = {"cgroup.procs": "7\n8\n9\n",
             "cpu.stat": "usage_usec 10\nuser_usec 6\nsystem_usec 4\n"}
    data = v2_stats(make_dir(tmp_path / "ct", files))
    assert data == {
        "cpu": {"usage": {"total": 10000, "percpu": [], "kernel": 4000, "user": 6000},
                "throttling": {"periods": 0, "throttledPeriods": 0, "throttledTime": 0}},
        "pids": {"current": 3, "limit": 0},  # counted from cgroup.procs, as runc
    }
    assert v2_stats(str(tmp_path / "gone")) == {}


def test_v2_psi_unsupported_is_left_out(tmp_path):
    # With psi=0 on the kernel command line, reading *.pressure fails (EOPNOTSUPP);
    # a directory in its place makes the read fail the same way here.
    files = {k: v for k, v in V2_FILES.items() if not k.endswith(".pressure")}
    path = make_dir(tmp_path / "ct", files)
    os.mkdir(os.path.join(path, "cpu.pressure"))
    data = v2_stats(path)
    assert "psi" not in data["cpu"] and "psi" not in data["memory"]


# --- events ----------------------------------------------------------------------------


def test_events_shapes(hybrid):
    event = stats_event("abc", hybrid)
    assert list(event) == ["type", "id", "data"]
    assert event["type"] == "stats" and event["id"] == "abc"
    assert event["data"] == read_stats(hybrid)
    assert oom_event("abc") == {"type": "oom", "id": "abc"}
    assert fastjson.dumps(oom_event("abc")) == '{"type":"oom","id":"abc"}'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += max(seconds, 0.001)


class FakeManager:
    """oom_kills() follows a script of (time, count); the paths are the hybrid fixture's."""

    def __init__(self, real, clock, kills: list[tuple[float, int]]):
        self.version, self.paths = real.version, real.paths
        self.clock, self.kills = clock, kills

    def oom_kills(self) -> int:
        count = 0
        for at, value in self.kills:
            if self.clock.now >= at:
                count = value
        return count


def run_follow(manager, clock, until: float, interval: float) -> list[dict]:
    lines: list[str] = []
    follow("ct", manager, lambda: clock.now < until, interval, lines.append,
           clock=clock, sleep=clock.sleep)
    assert all("\n" not in line for line in lines)
    return [fastjson.loads(line) for line in lines]


def test_follow_stats_every_interval_and_oom_when_the_count_rises(hybrid):
    clock = FakeClock()
    start = clock.now
    # 2 kills before we start (not ours to report), one at +1.23 s, two more at +2.5 s
    manager = FakeManager(hybrid, clock, [(0, 2), (start + 1.23, 3), (start + 2.5, 5)])
    events = run_follow(manager, clock, start + 3.05, interval=1.0)
    kinds = [e["type"] for e in events]
    assert kinds == ["stats", "oom", "stats", "oom", "stats"]
    assert all(e["id"] == "ct" for e in events)
    assert events[0]["data"]["memory"]["usage"]["usage"] == 24502272


def test_follow_reports_the_kill_that_ended_the_container(hybrid):
    clock = FakeClock()
    manager = FakeManager(hybrid, clock, [(clock.now + 0.5, 1)])
    # alive only until the kill: the loop ends before it looks again
    events = run_follow(manager, clock, clock.now + 0.5, interval=10.0)
    assert [e["type"] for e in events] == ["oom"]


def test_follow_survives_a_cgroup_that_is_gone(tmp_path):
    class Gone:
        version, paths = 2, {"": str(tmp_path / "gone")}

        def oom_kills(self) -> int:
            raise OSError(19, "No such device")

    clock = FakeClock()
    events = run_follow(Gone(), clock, clock.now + 2.5, interval=1.0)
    assert [e["type"] for e in events] == ["stats", "stats"]
    assert events[0]["data"] == {}


def test_parse_duration():
    assert parse_duration("5s") == 5.0
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("250us") == pytest.approx(0.00025)
    assert parse_duration("2") == 2.0
    for bad in ("", "s", "5x", "1..5s", "inf", "nan", "fast"):
        with pytest.raises(ValueError):
            parse_duration(bad)
