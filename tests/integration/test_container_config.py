"""What a container sees from inside, part two: the corners test_inside.py leaves.

test_inside.py checks each config.json field once; this module checks the
edges of the same fields (other mount and symlink shapes, other signals,
joined and foreign namespaces, fields that must be refused with a clear
error) and a few behaviours runc has that a container may rely on (HOME,
a loopback that is up). Every check is made by the container itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import PURE_V2, Bundle, assert_nothing_left

pytestmark = pytest.mark.root


def run(runtime, bundle, script: str, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    bundle.write(["sh", "-c", script])
    container_id = runtime.new_id()
    return runtime("run", *extra, "--bundle", str(bundle.path), container_id, check=False,
                   **kwargs)


def output(runtime, bundle, script: str, *extra: str) -> str:
    result = run(runtime, bundle, script, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(runtime, bundle, *fields: str) -> str:
    """`run` fails before the program starts, with one line naming the field; nothing left."""
    result = run(runtime, bundle, "echo ran")
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "ran" not in result.stdout
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for field in fields:
        assert field in message, message
    assert "Traceback" not in message
    assert_nothing_left(runtime, runtime.ids[-1])
    return message


def wait_until_running(runtime, container_id: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, "run ended before the container was running"
        state = runtime("state", container_id, check=False)
        if state.returncode == 0 and runtime.status(container_id) == "running":
            return
        assert time.monotonic() < deadline, "the container never showed as running"
        time.sleep(0.02)


def user_namespace(bundle: Bundle) -> Bundle:
    bundle.linux["namespaces"].append({"type": "user"})
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    return bundle


# --- the mount table ---------------------------------------------------------------------

@pytest.mark.parametrize("no_pivot", [False, True], ids=["pivot_root", "no-pivot"])
def test_the_mount_table_holds_only_what_the_config_asks_for(runtime, bundle, no_pivot):
    extra = ("--no-pivot",) if no_pivot else ()
    out = output(runtime, bundle, "echo $$; cat /proc/self/mountinfo", *extra)
    lines = out.splitlines()
    assert lines[0] == "1"
    mounts = {}
    for line in lines[1:]:
        fields = line.split()
        mounts[fields[4]] = fields[fields.index("-") + 1]  # mount point → filesystem type
    assert mounts["/proc"] == "proc" and mounts["/sys"] == "sysfs"
    expected = {"/", *(m["destination"] for m in bundle.config["mounts"]),
                *bundle.linux["maskedPaths"], *bundle.linux["readonlyPaths"]}
    strays = {p for p in mounts if p not in expected and not p.startswith("/sys/fs/cgroup/")}
    assert not strays, f"mounts the config did not ask for (host mounts?): {strays}"


def test_masked_paths_read_empty_and_readonly_paths_say_so(runtime, bundle):
    bundle.config["root"]["readonly"] = False
    bundle.linux["maskedPaths"] += ["/etc/passwd", "/no/such/path"]  # missing: skipped
    bundle.linux["readonlyPaths"] += ["/etc", "/no/such/dir"]
    out = output(runtime, bundle,
                 "for f in /proc/keys /proc/timer_list /etc/passwd; do "
                 "  echo $f=$(cat $f 2>/dev/null | wc -c); done; "
                 "echo firmware=$(ls -A /sys/firmware | wc -l); "
                 "echo x 2>&1 > /proc/sys/kernel/domainname | sed 's/^/sys: /'; "
                 "touch /etc/new 2>&1 | sed 's/^/etc: /'; "
                 "touch /elsewhere && echo root-writable")
    assert "/proc/keys=0" in out and "/proc/timer_list=0" in out
    assert "/etc/passwd=0" in out and "firmware=0" in out
    assert "sys: " in out and "etc: " in out, out
    for line in out.splitlines():
        if line.startswith(("sys: ", "etc: ")):
            assert "Read-only file system" in line, line
    assert "root-writable" in out
    assert (bundle.rootfs / "elsewhere").exists() and not (bundle.rootfs / "etc/new").exists()


def test_a_readonly_root_still_gets_a_new_cwd_and_a_writable_dev_shm(runtime, bundle):
    bundle.config["process"]["cwd"] = "/not/in/the/image"
    out = output(runtime, bundle, "pwd; touch /dev/shm/ok && echo shm-ok; "
                                  "touch here 2>/dev/null || echo cwd-readonly")
    assert out.split() == ["/not/in/the/image", "shm-ok", "cwd-readonly"]
    assert (bundle.rootfs / "not/in/the/image").is_dir()


def test_mount_destinations_through_symlinks_stay_in_the_rootfs(runtime, bundle, tmp_path):
    relative = tmp_path / "relative-target"
    relative.mkdir()
    absolute = tmp_path / "absolute-target"
    absolute.mkdir()
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("bound\n")
    # A relative link with more ".." than the rootfs is deep, and an absolute one
    # that climbs above "/": both resolve inside the rootfs, never on the host.
    os.symlink("../" * 20 + str(relative).lstrip("/"), bundle.rootfs / "etc/evil")
    os.symlink("/../.." + str(absolute), bundle.rootfs / "evil2")
    bundle.config["mounts"] += [
        {"destination": "/etc/evil", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/evil2/sub", "type": "bind", "source": str(source),
         "options": ["bind"]},
    ]
    out = output(runtime, bundle, "cut -d' ' -f2,3 /proc/self/mounts; cat /evil2/sub/file; "
                                  "echo inside > /etc/evil/written && echo written")
    assert f"{relative} tmpfs" in out
    assert f"{absolute}/sub" in out
    assert "bound" in out and "written" in out
    assert list(relative.iterdir()) == [] and list(absolute.iterdir()) == [], \
        "a mount or its directory landed on the host"
    assert (bundle.rootfs / str(absolute).lstrip("/") / "sub").is_dir()


def test_bind_mounts_of_a_file_and_an_explicit_rw_and_tmpfs_owner(runtime, bundle, tmp_path):
    host_file = tmp_path / "resolv.conf"
    host_file.write_text("nameserver 192.0.2.1\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    bundle.config["mounts"] += [
        {"destination": "/etc/resolv.conf", "type": "bind", "source": str(host_file),
         "options": ["rbind", "ro"]},
        {"destination": "/data", "type": "bind", "source": str(shared),
         "options": ["bind", "rw", "nosuid"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["size=2m", "mode=750", "uid=1000", "gid=100"]},
    ]
    out = output(runtime, bundle,
                 "cat /etc/resolv.conf; echo x 2>/dev/null > /etc/resolv.conf || echo file-ro; "
                 "echo from-inside > /data/new && echo data-rw; "
                 "stat -c '%u %g %a' /scratch; df -k /scratch | tail -1 | awk '{print $2}'")
    assert out.splitlines() == ["nameserver 192.0.2.1", "file-ro", "data-rw", "1000 100 750",
                                "2048"]
    assert host_file.read_text() == "nameserver 192.0.2.1\n"
    assert (shared / "new").read_text() == "from-inside\n"


# --- devices -----------------------------------------------------------------------------

def test_config_devices_nested_owned_and_fifo(runtime, bundle):
    bundle.linux["devices"] = [
        {"path": "/dev/sub/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
         "uid": 1000, "gid": 10},
        {"path": "/dev/myfifo", "type": "p", "major": 0, "minor": 0},
    ]
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}  # the node's owner
    out = output(runtime, bundle, "stat -c '%F %t:%T %a %u:%g' /dev/sub/mynull; "
                                  "stat -c '%F' /dev/myfifo; echo x > /dev/sub/mynull && echo ok")
    lines = out.splitlines()
    assert lines[0] == "character special file 1:3 640 1000:10"
    assert lines[1] == "fifo"
    assert lines[2] == "ok"


# --- namespaces --------------------------------------------------------------------------

def test_joining_a_namespace_that_is_gone_is_a_clear_error(runtime, bundle):
    gone = subprocess.Popen(["true"])
    gone.wait()
    bundle.config.pop("hostname")
    bundle.linux["namespaces"] = [n for n in bundle.linux["namespaces"] if n["type"] != "uts"]
    bundle.linux["namespaces"].append({"type": "uts", "path": f"/proc/{gone.pid}/ns/uts"})
    refused(runtime, bundle, "linux.namespaces[uts].path", f"/proc/{gone.pid}/ns/uts")


def test_user_namespace_with_a_user_and_groups(runtime, world_readable_bundle):
    bundle = user_namespace(world_readable_bundle)
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 100]}
    out = output(runtime, bundle, "id; cat /proc/self/gid_map; cat /proc/self/setgroups")
    lines = out.splitlines()
    assert lines[0] == "uid=1000(corral) gid=1000(corral) groups=10(wheel),100(users)"
    assert lines[1].split() == ["0", "100000", "65536"]
    assert lines[2] == "allow"


def test_cgroup_namespace_shows_the_containers_own_limits(runtime, bundle):
    bundle.linux["namespaces"].append({"type": "cgroup"})
    bundle.linux["resources"]["pids"] = {"limit": 20}
    bundle.linux["resources"]["memory"] = {"limit": 32 * 2**20}
    limits = ("/sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max" if PURE_V2 else
              "/sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes")
    # root and fstype of each mount there (after the optional fields' "-")
    out = output(runtime, bundle, f"cat {limits}; grep -E ' /sys/fs/cgroup[/ ]' "
                                  "/proc/self/mountinfo | "
                                  "awk '{i = 7; while ($i != \"-\") i++; print $4, $(i + 1)}'")
    lines = out.splitlines()
    assert lines[:2] == ["20", str(32 * 2**20)]
    # Each mount shows the container's own cgroup as its root: a fresh cgroup2 mount in
    # the cgroup namespace on v2, per-controller v1 mounts (and cgroup2 on hybrid) else.
    mounts = [line.split() for line in lines[2:]]
    assert mounts and {root for root, _ in mounts} == {"/"}, mounts
    if PURE_V2:
        assert [fstype for _, fstype in mounts] == ["cgroup2"]


def test_time_namespace_monotonic_offset_and_an_unknown_clock(runtime, make_bundle):
    bundle = make_bundle()
    bundle.linux["namespaces"].append({"type": "time"})
    bundle.linux["timeOffsets"] = {"monotonic": {"secs": 1000000, "nanosecs": 5}}
    out = output(runtime, bundle, "cat /proc/self/timens_offsets")
    assert ["monotonic", "1000000", "5"] in [line.split() for line in out.splitlines()]
    bundle = make_bundle()
    bundle.linux["namespaces"].append({"type": "time"})
    bundle.linux["timeOffsets"] = {"realtime": {"secs": 1}}
    refused(runtime, bundle, "linux.timeOffsets.realtime")


# --- the process -------------------------------------------------------------------------

def test_out_of_range_oom_score_adj_and_soft_above_hard_are_clear_errors(runtime, make_bundle):
    bundle = make_bundle()
    bundle.config["process"]["oomScoreAdj"] = 1001
    refused(runtime, bundle, "process.oomScoreAdj")
    bundle = make_bundle()
    bundle.config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 200}]
    refused(runtime, bundle, "process.rlimits[0]")


def test_run_relays_stdin_to_the_container(runtime, bundle):
    result = run(runtime, bundle, "read line; echo got:$line; cat", input=b"hello\nrest\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "got:hello\nrest\n"


def test_the_containers_children_end_with_its_init(runtime, bundle):
    # The PID namespace dies with its init: the background sleep must not keep
    # `run` (or the container's stdout) alive.
    result = run(runtime, bundle, "sleep 100 & echo started; exit 3", timeout=20)
    assert result.returncode == 3 and result.stdout == "started\n"
    assert_nothing_left(runtime, runtime.ids[-1])


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 8), (signal.SIGHUP, 9),
                                          (signal.SIGUSR1, 10)])
def test_run_forwards_other_signals(runtime, bundle, signum, code):
    name = signal.Signals(signum).name.removeprefix("SIG")
    bundle.write(["sh", "-c", f'trap "exit {code}" {name}; while :; do sleep 0.05; done'])
    cid = runtime.new_id()
    proc = subprocess.Popen(runtime.cmd("run", "--bundle", str(bundle.path), cid),
                            stdin=subprocess.DEVNULL)
    try:
        wait_until_running(runtime, cid, proc)
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_nothing_left(runtime, cid)


# --- runc behaviours a container may rely on, and refusals runc makes --------------------

def test_home_comes_from_the_users_passwd_entry(runtime, make_bundle):
    # runc (and crun) set HOME from the image's /etc/passwd when process.env has none,
    # "/" for a user with no entry; a configured HOME is kept.
    for user, env, home in [(0, [], "/root"), (1000, [], "/home/corral"),
                            (4242, [], "/"), (0, ["HOME=/custom"], "/custom")]:
        bundle = make_bundle()
        bundle.config["process"]["user"] = {"uid": user, "gid": user}
        bundle.config["process"]["env"] += env
        assert output(runtime, bundle, 'echo "HOME=$HOME"').strip() == f"HOME={home}", user


def test_loopback_is_up_in_a_new_network_namespace(runtime, bundle):
    # runc brings lo up in a network namespace it creates: 127.0.0.1 works.
    out = output(runtime, bundle, "cat /sys/class/net/lo/flags; "
                                  "ip -4 addr show lo | grep -o 'inet [0-9./]*'")
    lines = out.splitlines()
    assert int(lines[0], 16) & 0x1, "lo is down"  # IFF_UP
    assert lines[1:] == ["inet 127.0.0.1/8"]


def test_a_program_that_cannot_be_executed_fails_at_create(runtime, bundle):
    bundle.write(["/etc/passwd"])  # a regular file without any execute bit
    cid = runtime.new_id()
    result = runtime("create", "--bundle", str(bundle.path), cid, check=False)
    assert result.returncode == 1, "create must fail, not leave a container that exits 127"
    assert "/etc/passwd" in result.stderr and "permission denied" in result.stderr.lower()
    assert_nothing_left(runtime, cid)


@pytest.mark.parametrize("field, user", [
    ("process.user.uid", {"uid": 70000, "gid": 0}),
    ("process.user.gid", {"uid": 0, "gid": 70000}),
    ("process.user.additionalGids", {"uid": 0, "gid": 0, "additionalGids": [70000]}),
])
def test_a_user_the_user_namespace_does_not_map_is_a_clear_error(runtime, world_readable_bundle,
                                                                  field, user):
    bundle = user_namespace(world_readable_bundle)
    bundle.config["process"]["user"] = user
    refused(runtime, bundle, field, "70000")


def test_net_sysctl_in_the_hosts_network_namespace_is_refused(runtime, bundle):
    # Joining the runtime's own network namespace and setting a net.* sysctl would
    # change the host: runc refuses. (The value is the host's own, so no harm if not.)
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        current = f.read().strip()
    host_net = f"/proc/{os.getpid()}/ns/net"
    bundle.linux["namespaces"] = [n for n in bundle.linux["namespaces"]
                                  if n["type"] != "network"]
    bundle.linux["namespaces"].append({"type": "network", "path": host_net})
    bundle.linux["sysctl"] = {"net.ipv4.ip_forward": current}
    refused(runtime, bundle, "linux.sysctl.net.ipv4.ip_forward")
