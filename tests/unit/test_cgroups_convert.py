"""cgroup value conversions, path and mount parsing, device rules: pure code, no root."""

from __future__ import annotations

import struct

import pytest

from corral.runtime.cgroups import CgroupError, convert, devicefilter
from corral.runtime.cgroups.common import (
    clean_cgroups_path,
    parse_mountinfo,
    parse_proc_cgroup,
    visible_path,
)
from corral.runtime.cgroups.devicerules import Emulator, Rule, parse_rules

# --- cpu ----------------------------------------------------------------------------


@pytest.mark.parametrize(("shares", "weight"), [
    (0, 0),  # unset stays unset
    (2, 1),
    (1024, 39),  # runc's value for Docker's default
    (262144, 10000),
    (1, 1),  # below the kernel's minimum: clamped as v1 would
    (10**9, 10000),
])
def test_shares_to_weight(shares, weight):
    assert convert.shares_to_weight(shares) == weight


def test_shares_to_weight_is_monotonic_and_in_range():
    weights = [convert.shares_to_weight(s) for s in range(2, 262145, 997)]
    assert weights == sorted(weights)
    assert all(1 <= w <= 10000 for w in weights)


@pytest.mark.parametrize(("quota", "period", "current", "expected"), [
    (50000, 100000, None, "50000 100000"),
    (50000, None, None, "50000 100000"),  # the kernel's default period
    (50000, None, 20000, "50000 20000"),  # keep the period in force
    (-1, 100000, None, "max 100000"),
    (None, 250000, None, "max 250000"),
    (0, 0, None, "max 100000"),
])
def test_cpu_max(quota, period, current, expected):
    assert convert.cpu_max(quota, period, current) == expected


# --- memory -------------------------------------------------------------------------


@pytest.mark.parametrize(("swap", "memory", "expected"), [
    (0, 0, 0),
    (0, -1, -1),  # unlimited memory and no swap given: swap unlimited too
    (-1, 1 << 20, -1),
    (0, 1 << 20, 0),  # unset
    (3 << 20, 1 << 20, 2 << 20),  # memory+swap → swap alone
    (1 << 20, 1 << 20, 0),  # equal: no swap
    (5 << 20, -1, 5 << 20),
])
def test_swap_to_v2(swap, memory, expected):
    assert convert.swap_to_v2(swap, memory) == expected


@pytest.mark.parametrize(("swap", "memory", "message"), [
    (2 << 20, 0, "needs a memory limit"),
    (1 << 20, 2 << 20, "below the memory limit"),
    (1 << 20, -5, "invalid memory limit"),
])
def test_swap_to_v2_rejects(swap, memory, message):
    with pytest.raises(ValueError, match=message):
        convert.swap_to_v2(swap, memory)


@pytest.mark.parametrize(("value", "text"), [(0, ""), (-1, "max"), (4096, "4096")])
def test_v2_limit(value, text):
    assert convert.v2_limit(value) == text


def test_v2_limit_rejects_other_negatives():
    with pytest.raises(ValueError):
        convert.v2_limit(-2)


# --- pids, blkio, hugetlb ---------------------------------------------------------


@pytest.mark.parametrize(("limit", "text"), [(0, "max"), (-1, "max"), (1, "1"), (4096, "4096")])
def test_pids_limit(limit, text):
    assert convert.pids_limit(limit) == text


@pytest.mark.parametrize(("weight", "io_weight"), [(0, 0), (10, 1), (500, 4950), (1000, 10000)])
def test_blkio_weight_to_io_weight(weight, io_weight):
    assert convert.blkio_weight_to_io_weight(weight) == io_weight


@pytest.mark.parametrize("weight", [5, 1001])
def test_blkio_weight_out_of_range(weight):
    with pytest.raises(ValueError, match="outside 10-1000"):
        convert.blkio_weight_to_io_weight(weight)


@pytest.mark.parametrize("size", ["2MB", "1GB", "64KB", "16GB"])
def test_page_size_ok(size):
    assert convert.check_page_size(size) == size


@pytest.mark.parametrize("size", ["2M", "2mb", "MB", "02MB", "2MB/../x", "2 MB", "", "1XB"])
def test_page_size_bad(size):
    with pytest.raises(ValueError):
        convert.check_page_size(size)


# --- cgroupsPath --------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "clean"), [
    ("/a/b", "/a/b"),
    ("a/b", "a/b"),
    ("//a//./b/", "/a/b"),
    ("./x", "x"),
])
def test_clean_cgroups_path(raw, clean):
    assert clean_cgroups_path(raw) == clean


@pytest.mark.parametrize("raw", ["/a/../b", "..", "a/..", "/", "", "./", "a\0b"])
def test_clean_cgroups_path_rejects(raw):
    with pytest.raises(CgroupError, match="linux.cgroupsPath"):
        clean_cgroups_path(raw)


# --- /proc/self/mountinfo and /proc/self/cgroup ---------------------------------------

HYBRID_MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 31 0:39 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
"""


def test_parse_mountinfo():
    mounts = parse_mountinfo(HYBRID_MOUNTINFO, {"cpu", "cpuacct", "memory", "hugetlb"})
    assert [(fs, m.mountpoint, m.root, m.controllers) for fs, m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/cpu,cpuacct", "/", ("cpu", "cpuacct")),
        ("cgroup", "/sys/fs/cgroup/memory", "/docker/abc", ("memory",)),
        ("cgroup", "/sys/fs/cgroup/systemd", "/", ("name=systemd",)),
        ("cgroup2", "/sys/fs/cgroup/unified", "/", ()),
        ("cgroup2", "/mnt/with space", "/", ()),
    ]


def test_parse_proc_cgroup():
    text = "9:name=systemd:/\n2:cpu,cpuacct:/a\n4:memory:/docker/abc/x\n0::/user.slice\n"
    assert parse_proc_cgroup(text) == {"name=systemd": "/", "cpu": "/a", "cpuacct": "/a",
                                       "memory": "/docker/abc/x", "": "/user.slice"}


def test_visible_path_strips_the_mount_root():
    mount = parse_mountinfo(HYBRID_MOUNTINFO, {"memory"})[1][1]
    assert visible_path(mount, "/docker/abc/x", "memory") == "/x"
    assert visible_path(mount, "/docker/abc", "memory") == "/"
    with pytest.raises(CgroupError, match="outside"):
        visible_path(mount, "/elsewhere", "memory")


# --- device rules -------------------------------------------------------------------

DENY_ALL = {"allow": False, "access": "rwm"}
NULL = {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}


def test_parse_rules_defaults_and_errors():
    assert parse_rules([DENY_ALL, {"allow": True, "type": "c", "major": 136, "access": "wr"}]) == [
        Rule("a", -1, -1, "rwm", False), Rule("c", 136, -1, "rw", True)]
    for bad, field in [({"allow": "yes", "access": "r"}, "devices[0].allow"),
                       ({"allow": True, "type": "x", "access": "r"}, "devices[0].type"),
                       ({"allow": True, "access": ""}, "devices[0].access"),
                       ({"allow": True, "major": -5, "access": "r"}, "devices[0].major")]:
        with pytest.raises(CgroupError, match=rf"linux\.resources\.{field.replace('[', '.')}"):
            parse_rules([bad])


def test_parse_rules_drops_unknown_access_letters_as_runc():
    assert parse_rules([{"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rwa"},
                        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "x"},
                        {"allow": False, "access": "a"}]) == [
        Rule("c", 1, 11, "rw", True), Rule("a", -1, -1, "rwm", False)]


def test_emulator_default_is_deny_and_allow_all_resets():
    emu = Emulator.from_rules(parse_rules([NULL]))
    assert not emu.default_allow and emu.rules() == [Rule("c", 1, 3, "rwm", True)]
    emu = Emulator.from_rules(parse_rules([NULL, {"allow": True, "access": "rwm"}]))
    assert emu.default_allow and emu.rules() == []


def test_emulator_removes_access_and_refuses_holes_in_wildcards():
    emu = Emulator.from_rules(parse_rules([DENY_ALL, NULL, {**NULL, "allow": False,
                                                             "access": "w"}]))
    assert emu.rules() == [Rule("c", 1, 3, "rm", True)]
    wide = {"allow": True, "type": "c", "major": 1, "access": "rw"}
    with pytest.raises(CgroupError, match=r"devices\[2\].*wider rule c 1:\* rw"):
        Emulator.from_rules(parse_rules([DENY_ALL, wide, {**NULL, "allow": False}]))


def test_transition_from_allow_all_starts_with_deny_all():
    current = Emulator.from_list("a *:* rwm\n")
    target = Emulator.from_rules(parse_rules([DENY_ALL, NULL]))
    assert [r.cgroup_string() + ("+" if r.allow else "-") for r in current.transition(target)] == [
        "a *:* rwm-", "c 1:3 rwm+"]


def test_transition_between_allow_lists_is_minimal():
    current = Emulator.from_list("c 1:3 rwm\nc 1:5 rwm\n")
    target = Emulator.from_rules(parse_rules([NULL, {**NULL, "minor": 9, "access": "r"}]))
    assert [(r.cgroup_string(), r.allow) for r in current.transition(target)] == [
        ("c 1:5 rwm", False), ("c 1:9 r", True)]
    assert Emulator.from_list("c 1:3 rwm\n").transition(Emulator.from_rules(
        parse_rules([NULL]))) == []


def _decode(program: bytes) -> list[tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(program), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", program, i)
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


def _run(program: bytes, dev_type: str, major: int, minor: int, access: str) -> int:
    """A tiny interpreter for the opcodes the assembler emits: what the kernel would decide."""
    acc = sum(devicefilter._ACCESS_BITS[c] for c in access)
    ctx = [(acc << 16) | devicefilter._TYPE_BITS[dev_type], major, minor]
    regs = [0] * 11
    insns, pc = _decode(program), 0
    while True:
        code, dst, src, off, imm = insns[pc]
        pc += 1
        if code == devicefilter._LDX_MEM_W:
            regs[dst] = ctx[off // 4]
        elif code == devicefilter._ALU32_AND_K:
            regs[dst] &= imm
        elif code == devicefilter._ALU32_RSH_K:
            regs[dst] >>= imm
        elif code == devicefilter._ALU32_MOV_K:
            regs[dst] = imm
        elif code == devicefilter._ALU32_MOV_X:
            regs[dst] = regs[src]
        elif code == devicefilter._JEQ_K:
            pc += off if regs[dst] == imm else 0
        elif code == devicefilter._JNE_K:
            pc += off if regs[dst] != imm else 0
        elif code == devicefilter._JNE_X:
            pc += off if regs[dst] != regs[src] else 0
        elif code == devicefilter._EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_bpf_program_decides_like_the_rules():
    emu = Emulator.from_rules(parse_rules([
        DENY_ALL, NULL, {"allow": True, "type": "c", "major": 136, "access": "rw"},
        {"allow": True, "type": "b", "access": "m"}]))
    program = devicefilter.assemble(emu)
    assert len(program) % 8 == 0
    assert _run(program, "c", 1, 3, "rw") == 1
    assert _run(program, "c", 1, 5, "r") == 0  # /dev/zero: not listed
    assert _run(program, "c", 136, 7, "w") == 1
    assert _run(program, "c", 136, 7, "m") == 0  # mknod not granted for ptys
    assert _run(program, "b", 8, 0, "m") == 1
    assert _run(program, "b", 8, 0, "r") == 0
    assert _run(program, "b", 1, 3, "r") == 0  # a block device with /dev/null's numbers


def test_bpf_program_for_deny_list():
    emu = Emulator.from_rules(parse_rules([{"allow": True, "access": "rwm"},
                                           {**NULL, "allow": False, "access": "w"}]))
    program = devicefilter.assemble(emu)
    assert _run(program, "c", 1, 3, "w") == 0
    assert _run(program, "c", 1, 3, "r") == 1
    assert _run(program, "c", 1, 3, "rw") == 0
    assert _run(program, "b", 7, 0, "rw") == 1


# --- what lands in which v2 file ---------------------------------------------------------
# A plain directory with the interface files a cgroup2 dir would have: this checks
# the mapping from OCI fields to files and values; the kernel's side is covered by
# tests/integration/test_cgroups.py.

V2_FILES = ("memory.max", "memory.swap.max", "memory.low", "memory.current", "cpu.max",
            "cpu.weight", "cpu.idle", "cpu.max.burst", "cpuset.cpus", "cpuset.mems", "pids.max",
            "io.stat", "io.weight", "io.max", "hugetlb.2MB.max")


@pytest.fixture
def v2dir(tmp_path):
    for name in V2_FILES:
        (tmp_path / name).write_text("")
    return tmp_path


def _files(path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir()) if p.read_text()}


def test_v2_files_for_oci_resources(v2dir):
    from corral.runtime.cgroups import v2

    resources = {"memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 1 << 20,
                            "swappiness": 10, "kernel": 5, "disableOOMKiller": True},
                 "cpu": {"shares": 1024, "quota": 20000, "period": 50000, "cpus": "0-1",
                         "idle": 1, "burst": 1000},
                 "pids": {"limit": -1},
                 "blockIO": {"weight": 500, "throttleReadBpsDevice": [
                     {"major": 8, "minor": 0, "rate": 1048576}]},
                 "hugepageLimits": [{"pageSize": "2MB", "limit": 2 << 20}]}
    for setter in (v2.set_memory, v2.set_cpu, v2.set_cpuset, v2.set_pids, v2.set_io,
                   v2.set_hugetlb):
        setter(str(v2dir), resources)
    assert _files(v2dir) == {
        "memory.max": str(64 << 20), "memory.swap.max": str(32 << 20),
        "memory.low": str(1 << 20), "cpu.weight": "39", "cpu.max": "20000 50000",
        "cpu.idle": "1", "cpu.max.burst": "1000", "cpuset.cpus": "0-1", "pids.max": "max",
        "io.weight": "4950", "io.max": "8:0 rbps=1048576", "hugetlb.2MB.max": str(2 << 20)}


def test_v2_unlimited_memory_and_swap(v2dir):
    from corral.runtime.cgroups import v2

    v2.set_memory(str(v2dir), {"memory": {"limit": -1}})
    assert _files(v2dir) == {"memory.max": "max", "memory.swap.max": "max"}


def test_v2_swap_equal_to_limit_means_no_swap(v2dir):
    from corral.runtime.cgroups import v2

    v2.set_memory(str(v2dir), {"memory": {"limit": 8 << 20, "swap": 8 << 20}})
    assert _files(v2dir) == {"memory.max": str(8 << 20), "memory.swap.max": "0"}


def test_v2_errors_name_the_field(v2dir):
    from corral.runtime.cgroups import v2

    cases = [
        (v2.set_memory, {"memory": {"limit": 4 << 20, "swap": 2 << 20}},
         r"^linux\.resources\.memory\.swap: memory\+swap limit .* is below"),
        (v2.set_memory, {"memory": {"limit": "64m"}},
         r"^linux\.resources\.memory\.limit: expected an integer"),
        (v2.set_io, {"blockIO": {"weight": 5}}, r"^linux\.resources\.blockIO\.weight: "),
        (v2.set_hugetlb, {"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]},
         r"^linux\.resources\.hugepageLimits\[0\]\.pageSize: page size 3MB is not supported"),
        (v2.set_hugetlb, {"hugepageLimits": [{"pageSize": "../x", "limit": 1}]},
         r"^linux\.resources\.hugepageLimits\[0\]\.pageSize: "),
        (v2.set_cpu, {"cpu": {"realtimePeriod": 1000}},
         r"^linux\.resources\.cpu\.realtimePeriod: cgroup v2 has no realtime"),
        (v2.set_rdma, {"rdma": {"mlx5_1": {"hcaHandles": 3}}},
         r"^linux\.resources\.rdma\.mlx5_1: the rdma controller is not available"),
    ]
    for setter, resources, message in cases:
        with pytest.raises(CgroupError, match=message):
            setter(str(v2dir), resources)
