"""What a container sees from inside: each config.json field, checked by the container itself."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from .conftest import PURE_V2, assert_nothing_left

pytestmark = pytest.mark.root


def run(runtime, bundle, script: str, *extra: str) -> subprocess.CompletedProcess:
    bundle.write(["sh", "-c", script])
    container_id = runtime.new_id()
    return runtime("run", *extra, "--bundle", str(bundle.path), container_id, check=False)


def output(runtime, bundle, script: str, *extra: str) -> str:
    result = run(runtime, bundle, script, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pid_namespace_hostname_and_own_mount_table(runtime, bundle):
    bundle.config["domainname"] = "example.org"
    out = output(runtime, bundle, "echo $$; hostname; cat /proc/sys/kernel/domainname; "
                                  "cat /proc/self/mountinfo; ps -o pid | wc -l")
    lines = out.splitlines()
    assert lines[0] == "1"
    assert lines[1] == "corral" and lines[2] == "example.org"
    mount_points = {line.split()[4] for line in out.splitlines()[3:-1]}
    assert {"/", "/proc", "/dev", "/sys"} <= mount_points
    assert not any(p.startswith(("/work", "/tmp", "/sys/fs/cgroup/memory/")) for p in
                   mount_points), "host mounts must not show in the container"
    assert int(lines[-1]) <= 4  # header, sh, ps, wc: nothing of the host's


@pytest.mark.parametrize("no_pivot", [False, True])
def test_root_filesystem_with_and_without_pivot_root(runtime, bundle, no_pivot):
    extra = ("--no-pivot",) if no_pivot else ()
    out = output(runtime, bundle, "echo $$; ls /; grep -c ' / ' /proc/self/mountinfo", *extra)
    assert out.splitlines()[0] == "1"
    assert {"bin", "etc", "proc", "dev"} <= set(out.split())


# The container's cgroup as it sees it at /sys/fs/cgroup (bound from the host).
MEMORY_LIMIT = "/sys/fs/cgroup/" + ("memory.max" if PURE_V2 else "memory/memory.limit_in_bytes")
PIDS_LIMIT = "/sys/fs/cgroup/" + ("pids.max" if PURE_V2 else "pids/pids.max")
# The shell keeps 100 MB in a variable: far past a 32 MiB limit.
ALLOCATE_100M = (f"cat {MEMORY_LIMIT}; "
                 "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}")


def test_memory_limit_oom_kills_and_state_shows_stopped(runtime, bundle):
    bundle.linux["resources"]["memory"] = {"limit": 32 * 2**20}
    bundle.write(["sh", "-c", ALLOCATE_100M])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    runtime("start", cid)
    runtime.wait_stopped(cid)
    assert runtime.state(cid)["status"] == "stopped"
    runtime("delete", cid)
    # The same in the foreground: the OOM kill shows as 128 + SIGKILL.
    result = run(runtime, bundle, ALLOCATE_100M)
    assert result.stdout.splitlines()[0] == str(32 * 2**20)
    assert "survived" not in result.stdout
    assert result.returncode == 137


def test_pids_limit_stops_a_fork_bomb(runtime, bundle):
    bundle.linux["resources"]["pids"] = {"limit": 20}
    # Each fork that works prints its count; the shell dies at the first refused one.
    result = run(runtime, bundle, f"cat {PIDS_LIMIT}; i=0; "
                                  "while [ $i -lt 100 ]; do sleep 5 & i=$((i+1)); echo $i; done")
    lines = result.stdout.split()
    assert lines[0] == "20"
    assert int(lines[-1]) < 20, "forks went past pids.max"
    assert result.returncode != 0 and "can't fork" in result.stderr


def test_rlimits_user_groups_and_umask(runtime, bundle):
    bundle.config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
        {"type": "RLIMIT_NPROC", "soft": 300, "hard": 300}]
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 100],
                                        "umask": 0o077}
    bundle.config["root"]["readonly"] = False
    out = output(runtime, bundle, "ulimit -n; ulimit -Hn; ulimit -u; id; "
                                  "touch /tmp/f; stat -c %a /tmp/f")
    lines = out.splitlines()
    assert lines[:3] == ["100", "200", "300"]
    assert lines[3].startswith("uid=1000(corral) gid=1000(corral)")
    assert "groups=10(wheel),100(users)" in lines[3]
    assert lines[4] == "600"


def test_raising_a_hard_rlimit_is_a_clear_error(runtime, bundle):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    bundle.config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": hard + 1000, "hard": hard + 1000}]
    result = run(runtime, bundle, "true")
    assert result.returncode == 1
    assert "process.rlimits[0] (RLIMIT_NOFILE)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_left(runtime, runtime.ids[-1])


def test_oom_score_adj_raised_and_lowering_refused(runtime, make_bundle):
    bundle = make_bundle()
    bundle.config["process"]["oomScoreAdj"] = 500
    assert output(runtime, bundle, "cat /proc/self/oom_score_adj").strip() == "500"
    bundle = make_bundle()
    with open("/proc/self/oom_score_adj") as f:
        current = int(f.read())
    bundle.config["process"]["oomScoreAdj"] = max(current - 500, -1000)
    result = run(runtime, bundle, "true")
    assert result.returncode == 1 and "process.oomScoreAdj" in result.stderr
    assert_nothing_left(runtime, runtime.ids[-1])


def test_masked_and_readonly_paths_and_readonly_root(runtime, bundle):
    out = output(runtime, bundle,
                 "echo keys=$(cat /proc/keys | wc -c); echo fw=$(ls /sys/firmware | wc -l); "
                 "echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo sys-ro; "
                 "touch /x 2>/dev/null || echo root-ro; touch /tmp/y 2>/dev/null || echo tmp-ro")
    assert "keys=0" in out and "fw=0" in out
    assert "sys-ro" in out and "root-ro" in out and "tmp-ro" in out


def test_writable_root(runtime, bundle):
    bundle.config["root"]["readonly"] = False
    assert output(runtime, bundle, "touch /x && echo wrote").strip() == "wrote"
    assert (bundle.rootfs / "x").exists()


def test_env_and_cwd(runtime, bundle):
    bundle.config["process"]["env"] = ["PATH=/bin:/usr/bin", "GREETING=hello world"]
    bundle.config["process"]["cwd"] = "/srv/app"
    out = output(runtime, bundle, 'echo "$GREETING"; pwd; env')
    lines = out.splitlines()
    assert lines[:2] == ["hello world", "/srv/app"]
    assert {"PATH=/bin:/usr/bin", "GREETING=hello world"} <= set(lines[2:])
    assert "HOME=/root" in lines[2:]  # from the image's /etc/passwd, as runc does
    assert not any(line.startswith("PYTHON") for line in lines[2:])


def test_bind_mounts_ro_rw_and_tmpfs_options(runtime, bundle, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from the host\n")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    bundle.config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(shared), "options": ["rbind"]},
        {"destination": "/ro", "type": "bind", "source": str(readonly),
         "options": ["bind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["size=1m", "mode=1770", "nosuid"]},
    ]
    out = output(runtime, bundle,
                 "cat /data/hello; echo back > /data/reply; "
                 "touch /ro/x 2>/dev/null || echo ro-refused; "
                 "stat -c %a /scratch; grep ' /scratch ' /proc/self/mounts")
    lines = out.splitlines()
    assert lines[0] == "from the host" and lines[1] == "ro-refused" and lines[2] == "1770"
    assert "size=1024k" in lines[3] and "nosuid" in lines[3]
    assert (shared / "reply").read_text() == "back\n"
    assert not (readonly / "x").exists()


def test_mount_targets_never_follow_symlinks_out_of_the_rootfs(runtime, bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), bundle.rootfs / "escape")  # an absolute link in the image
    bundle.config["mounts"].append({"destination": "/escape/sub", "type": "tmpfs",
                                    "source": "tmpfs"})
    out = output(runtime, bundle, "cut -d' ' -f2 /proc/self/mounts")
    # /escape points at a host path; inside, that path is resolved in the rootfs.
    assert f"{outside}/sub" in out.split()
    assert list(outside.iterdir()) == [], "the mount or its directory landed on the host"


def test_joining_another_containers_namespaces(runtime, make_bundle):
    first = make_bundle(["sleep", "1000"])
    first.config["hostname"] = "first-host"
    first.write()
    first_id = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(first.path), first_id)
    pid = runtime.state(first_id)["pid"]

    second = make_bundle()
    second.config.pop("hostname")
    second.linux["namespaces"] = [
        {"type": "mount"}, {"type": "pid"},
        {"type": "uts", "path": f"/proc/{pid}/ns/uts"},
        {"type": "network", "path": f"/proc/{pid}/ns/net"},
    ]
    out = output(runtime, second, "hostname; readlink /proc/self/ns/net")
    with open(f"/proc/{pid}/ns/net", "rb"):
        net = os.readlink(f"/proc/{pid}/ns/net")
    assert out.splitlines() == ["first-host", net]

    bogus = make_bundle()
    bogus.linux["namespaces"].append({"type": "user", "path": f"/proc/{pid}/ns/net"})
    bogus.linux["uidMappings"] = []
    result = run(runtime, bogus, "true")
    assert result.returncode == 1 and "linux.namespaces[user].path" in result.stderr
    runtime("delete", "--force", first_id)


def test_user_namespace_with_mappings(runtime, world_readable_bundle):
    bundle = world_readable_bundle
    bundle.linux["namespaces"].append({"type": "user"})
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    out = output(runtime, bundle, "cat /proc/self/uid_map; id -u; echo x > /dev/null && echo ok;"
                                  " stat -c %u /bin/busybox")
    lines = out.split()
    assert lines[:3] == ["0", "100000", "65536"]
    assert lines[3:5] == ["0", "ok"]
    assert lines[5] == "65534"  # host root is not mapped: it shows as the overflow uid


def test_cgroup_and_time_namespaces(runtime, bundle):
    bundle.linux["namespaces"] += [{"type": "cgroup"}, {"type": "time"}]
    bundle.linux["timeOffsets"] = {"boottime": {"secs": 86400 * 365, "nanosecs": 0}}
    out = output(runtime, bundle, "cat /proc/self/cgroup; cut -d. -f1 /proc/uptime")
    lines = out.splitlines()
    assert all(line.endswith(":/") for line in lines[:-1]), lines
    assert int(lines[-1]) > 86400 * 365


def test_devices_and_dev_links(runtime, bundle):
    bundle.linux["devices"] = [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
                                "fileMode": 0o666}]
    out = output(runtime, bundle, "echo x > /dev/mynull && echo mynull-ok; readlink /dev/fd; "
                                  "readlink /dev/stdin; readlink /dev/ptmx; "
                                  "head -c 4 /dev/urandom | wc -c; ls /dev/shm /dev/mqueue")
    lines = out.splitlines()
    assert lines[:5] == ["mynull-ok", "/proc/self/fd", "/proc/self/fd/0", "pts/ptmx", "4"]


def test_device_cgroup_denies_what_is_not_allowed(runtime, bundle):
    # mknod is allowed (as runc allows it), using the node is not.
    bundle.config["process"]["capabilities"]["bounding"].append("CAP_MKNOD")
    bundle.config["process"]["capabilities"]["effective"].append("CAP_MKNOD")
    bundle.config["process"]["capabilities"]["permitted"].append("CAP_MKNOD")
    out = output(runtime, bundle, "mknod /dev/sda1 b 8 1 && echo made; "
                                  "head -c 1 /dev/sda1 2>&1 || echo denied")
    assert "made" in out and "denied" in out


def test_sysctls(runtime, make_bundle):
    bundle = make_bundle()
    bundle.linux["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.shmmni": "1000"}
    out = output(runtime, bundle, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni")
    assert out.split() == ["1", "1000"]
    bundle = make_bundle()
    bundle.linux["sysctl"] = {"vm.swappiness": "10"}
    result = run(runtime, bundle, "true")
    assert result.returncode == 1 and "linux.sysctl.vm.swappiness" in result.stderr
    assert_nothing_left(runtime, runtime.ids[-1])


def test_capabilities_are_the_configured_sets(runtime, bundle):
    out = output(runtime, bundle, "grep Cap /proc/self/status")
    caps = dict(line.split(":\t") for line in out.splitlines())
    expected = f"{(1 << 5) | (1 << 10) | (1 << 29):016x}"  # KILL, NET_BIND_SERVICE, AUDIT_WRITE
    assert caps["CapBnd"] == caps["CapPrm"] == caps["CapEff"] == expected
    bundle.config["process"]["capabilities"]["bounding"].append("CAP_BOGUS")
    result = run(runtime, bundle, "true")
    assert result.returncode == 1 and "unknown capability 'CAP_BOGUS'" in result.stderr


def test_the_init_waits_between_create_and_start(runtime, bundle, tmp_path):
    marker = tmp_path / "ran"
    marker.mkdir()
    bundle.config["mounts"].append({"destination": "/marker", "type": "bind",
                                    "source": str(marker), "options": ["bind"]})
    bundle.write(["sh", "-c", "touch /marker/started"])
    cid = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), cid)
    time.sleep(0.3)
    assert not (marker / "started").exists(), "the process ran before start"
    runtime("start", cid)
    runtime.wait_stopped(cid)
    assert (marker / "started").exists()
    runtime("delete", cid)


def test_mount_propagation_options(runtime, bundle, tmp_path):
    shared = tmp_path / "prop"
    shared.mkdir()
    bundle.linux["rootfsPropagation"] = "rshared"
    bundle.config["mounts"] += [
        {"destination": "/shared", "type": "bind", "source": str(shared),
         "options": ["rbind", "rshared"]},
        {"destination": "/private", "type": "bind", "source": str(shared),
         "options": ["rbind", "rprivate"]},
    ]
    out = output(runtime, bundle, "grep -E ' /(shared|private) ' /proc/self/mountinfo")
    fields = {line.split()[4]: line.split(" - ")[0].split()[6:] for line in out.splitlines()}
    assert any(f.startswith("shared:") for f in fields["/shared"])
    assert not any(f.startswith(("shared:", "master:")) for f in fields["/private"])


def test_without_cap_net_raw_raw_sockets_are_refused(runtime, make_bundle):
    script = "ping -c 1 -W 1 127.0.0.1 2>&1; true"
    bundle = make_bundle()
    assert "permission denied" in output(runtime, bundle, script).lower()
    bundle = make_bundle()
    for kind in ("bounding", "effective", "permitted"):
        bundle.config["process"]["capabilities"][kind].append("CAP_NET_RAW")
    assert "permission denied" not in output(runtime, bundle, script).lower()


@pytest.mark.parametrize("field, value", [("apparmorProfile", "docker-default"),
                                          ("selinuxLabel", "system_u:system_r:container_t:s0")])
def test_lsm_labels_this_host_cannot_apply_are_a_clear_error(runtime, bundle, field, value):
    bundle.config["process"][field] = value
    result = run(runtime, bundle, "true")
    assert result.returncode == 1 and f"process.{field}" in result.stderr
    assert_nothing_left(runtime, runtime.ids[-1])
    features = json.loads(runtime("features").stdout)["linux"]
    assert features["apparmor"]["enabled"] is False and features["selinux"]["enabled"] is False
