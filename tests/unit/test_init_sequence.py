"""The order of the init sequence, checked with a recording Syscalls (no root needed)."""

from __future__ import annotations

import os

import pytest

from corral.runtime import syscalls as k
from corral.runtime.process.identity import ExecutableNotFound
from corral.runtime.process.init import InitContext, InitSequence
from corral.runtime.syscalls import Syscalls
from corral.spec.defaults import default_config
from corral.spec.runtime import Spec


class RecordingSyscalls(Syscalls):
    """Records every call that would change the world, and makes none."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattribute__(self, name):
        if name.startswith("_") or name == "calls" or not hasattr(Syscalls, name):
            return object.__getattribute__(self, name)

        def record(*args, **kwargs):
            self.calls.append((name, *args))
            return 0

        return record

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def index(self, predicate) -> int:
        for i, call in enumerate(self.calls):
            if predicate(call):
                return i
        raise AssertionError(f"no matching call in {self.calls}")


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        (root / d).mkdir(parents=True)
    return root


def make_sequence(rootfs, edit=None) -> tuple[InitSequence, RecordingSyscalls]:
    config = default_config(args=["sh", "-c", "true"], terminal=False)
    config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 100],
                                 "umask": 0o027}
    config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    if edit:
        edit(config)
    spec = Spec.parse(config)
    ctx = InitContext(spec=spec, rootfs=str(rootfs), bundle=str(rootfs.parent),
                      fifo_fd=-1, cgroup_paths={}, user_namespace=False)
    recorder = RecordingSyscalls()
    return InitSequence(ctx, recorder, last_cap=40), recorder


def test_the_init_sequence_runs_in_the_order_the_kernel_needs(rootfs):
    sequence, sc = make_sequence(rootfs)
    sequence.prepare()
    calls = sc.calls
    # The host's mounts stop propagating before anything is mounted.
    assert calls[0] == ("setsid",)
    assert calls[1] == ("mount", None, "/", None, k.MS_SLAVE | k.MS_REC)
    bind_root = sc.index(lambda c: c[:3] == ("mount", str(rootfs), str(rootfs)))
    proc = sc.index(lambda c: c[0] == "mount" and c[3] == "proc")
    null = sc.index(lambda c: c[0] == "mknod" and c[1].endswith("/dev/null"))
    pivot = sc.index(lambda c: c[0] == "pivot_root")
    hostname = sc.index(lambda c: c[0] == "sethostname")
    sysctl = sc.index(lambda c: c[:2] == ("write_file", "/proc/sys/net/ipv4/ip_forward"))
    readonly = sc.index(lambda c: c[0] == "mount" and c[1] == "/proc/sys")
    masked = sc.index(lambda c: c[0] == "mount" and c[2] == "/proc/keys")
    root_ro = sc.index(lambda c: c[0] == "mount" and c[2] == "/" and c[4] & k.MS_RDONLY)
    rlimit = sc.index(lambda c: c[0] == "setrlimit")
    drop = sc.index(lambda c: c[:2] == ("prctl", k.PR_CAPBSET_DROP))
    groups = sc.index(lambda c: c[0] == "setgroups")
    gid = sc.index(lambda c: c[0] == "setresgid")
    uid = sc.index(lambda c: c[0] == "setresuid")
    capset = sc.index(lambda c: c[0] == "capset")
    nnp = sc.index(lambda c: c[:2] == ("prctl", k.PR_SET_NO_NEW_PRIVS))
    # Stray fds are closed, then the cwd is entered as root (runc's order), and once the
    # user is taken on the cwd must still be reachable from the container's root.
    close_fds = sc.index(lambda c: c[0] == "close_fds_except")
    chdir = close_fds + 1
    assert calls[chdir] == ("chdir", "/")
    assert calls[-1] == ("check_cwd_reachable",)
    order = [bind_root, proc, null, pivot, hostname, sysctl, readonly, masked, root_ro,
             rlimit, close_fds, chdir, drop, groups, gid, uid, capset, nnp, len(calls) - 1]
    assert order == sorted(order), calls
    assert calls[groups] == ("setgroups", [10, 100])
    assert calls[gid] == ("setresgid", 1000) and calls[uid] == ("setresuid", 1000)


def test_capabilities_keep_only_the_configured_sets(rootfs):
    sequence, sc = make_sequence(rootfs)
    sequence.prepare()
    dropped = {c[2] for c in sc.calls if c[:2] == ("prctl", k.PR_CAPBSET_DROP)}
    kept = {5, 10, 29}  # CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE
    assert dropped == set(range(41)) - kept
    (capset,) = [c for c in sc.calls if c[0] == "capset"]
    mask = sum(1 << n for n in kept)
    assert capset == ("capset", mask, mask, 0)


def test_pivot_root_detaches_the_old_root_without_propagating(rootfs):
    sequence, sc = make_sequence(rootfs)
    sequence.prepare()
    pivot = sc.index(lambda c: c[0] == "pivot_root")
    assert sc.calls[pivot - 1] == ("chdir", str(rootfs))
    assert sc.calls[pivot] == ("pivot_root", ".", ".")
    assert sc.calls[pivot + 1][0] == "fchdir"
    assert sc.calls[pivot + 2] == ("mount", None, ".", None, k.MS_SLAVE | k.MS_REC)
    assert sc.calls[pivot + 3] == ("umount", ".", k.MNT_DETACH)


def test_no_pivot_moves_the_root_and_chroots(rootfs):
    sequence, sc = make_sequence(rootfs)
    sequence.ctx.no_pivot = True
    sequence.prepare()
    assert "pivot_root" not in sc.names()
    move = sc.index(lambda c: c[0] == "mount" and c[4] == k.MS_MOVE)
    assert sc.calls[move + 1] == ("chroot", ".")


def test_mounts_follow_config_order_and_stay_inside_the_rootfs(rootfs):
    os.symlink("/../../../..", rootfs / "escape")

    def edit(config):
        config["mounts"].append({"destination": "/escape/data", "type": "tmpfs",
                                 "source": "tmpfs", "options": ["size=1m"]})

    sequence, sc = make_sequence(rootfs, edit)
    sequence.prepare()
    targets = [c[2] for c in sc.calls if c[0] == "mount" and c[3] in (
        "proc", "tmpfs", "devpts", "mqueue", "sysfs")]
    assert targets[:6] == [f"{rootfs}/proc", f"{rootfs}/dev", f"{rootfs}/dev/pts",
                           f"{rootfs}/dev/shm", f"{rootfs}/dev/mqueue", f"{rootfs}/sys"]
    # The symlink resolves inside the rootfs: /escape -> / of the container.
    assert f"{rootfs}/data" in targets


def test_user_namespace_binds_devices_instead_of_mknod(rootfs):
    sequence, sc = make_sequence(rootfs)
    sequence.ctx.user_namespace = True
    sequence.prepare()
    assert "mknod" not in sc.names()
    assert ("mount", "/dev/null", f"{rootfs}/dev/null", None, k.MS_BIND) in sc.calls


def test_a_missing_executable_fails_before_the_user_is_changed(rootfs):
    def edit(config):
        config["process"]["args"] = ["no-such-program-here"]

    sequence, sc = make_sequence(rootfs, edit)
    with pytest.raises(ExecutableNotFound, match="executable file not found"):
        sequence.prepare()
    assert "setresuid" not in sc.names()


def test_a_new_network_namespace_gets_its_loopback_up(rootfs):
    sequence, sc = make_sequence(rootfs)
    sequence.prepare()
    assert ("set_link_up", "lo") in sc.calls
    joined, sc = make_sequence(rootfs, lambda c: c["linux"].update(namespaces=[
        n if n["type"] != "network" else {"type": "network", "path": "/proc/1/ns/net"}
        for n in c["linux"]["namespaces"]]))
    joined.prepare()
    assert not any(call[0] == "set_link_up" for call in sc.calls)
