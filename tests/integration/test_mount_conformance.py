"""Root filesystem, mounts and mount namespaces, as runc's bats suite and runtime-tools check
them (mask.bats, no_pivot.bats, mounts.bats, mounts_recursive.bats, userns.bats,
linux_rootfs_propagation, linux_ns_path): each checked from inside the container.

Host mounts a test makes for itself (a tmpfs rootfs, a shared volume) are made and undone
by the test; the host's own mounts are compared before and after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.integration.conftest import Bundle

pytestmark = pytest.mark.root


def run(runtime, bundle: Bundle, script: str, *extra: str) -> subprocess.CompletedProcess:
    bundle.write(["sh", "-c", script])
    return runtime("run", *extra, "--bundle", str(bundle.path), runtime.new_id(), check=False)


def output(runtime, bundle: Bundle, script: str, *extra: str) -> str:
    result = run(runtime, bundle, script, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def mount_table(path: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, propagation fields) of every mount: what a test must leave as it was."""
    table = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            table.append((fields[4], " ".join(fields[6:fields.index("-")])))
    return table


@contextlib.contextmanager
def host_tmpfs(path: str, *, shared: bool):
    """A tmpfs of the test's own at `path`, shared if asked; lazily unmounted afterwards."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "corral-test", path], check=True)
    try:
        if shared:
            subprocess.run(["mount", "--make-shared", path], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-R", "-l", path], check=True)


def add_capabilities(bundle: Bundle, *names: str) -> None:
    caps = bundle.config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = sorted({*caps[kind], *names})


def user_namespace(bundle: Bundle) -> Bundle:
    bundle.linux["namespaces"].append({"type": "user"})
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    return bundle


# --- /proc and /sys must be ordinary directories ---------------------------------------

@pytest.mark.parametrize("name, fstype", [("proc", "proc"), ("sys", "sysfs")])
@pytest.mark.parametrize("points_to", ["host-root", "outside-dir"])
def test_a_symlinked_proc_or_sys_is_refused(runtime, bundle, tmp_path, name, fstype,
                                             points_to):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rmdir(bundle.rootfs / name)
    os.symlink("/" if points_to == "host-root" else str(outside), bundle.rootfs / name)
    before = mount_table()
    result = run(runtime, bundle, "echo ran")
    assert result.returncode != 0
    assert "ran" not in result.stdout
    message = result.stderr.replace("\\", "")  # the log line escapes the quotes
    assert f'filesystem "{fstype}" must be mounted on ordinary directory' in message
    assert not os.path.ismount(outside)
    assert mount_table() == before


# --- --no-pivot ---------------------------------------------------------------------------

def test_no_pivot_leaves_no_bare_proc_for_a_nested_user_namespace(runtime, bundle):
    """A fresh proc needs a fully visible one in the mount namespace: after MS_MOVE and
    chroot the host's /proc would be that one, unless it is taken away first."""
    add_capabilities(bundle, "CAP_SETFCAP")  # unshare -r maps root: its uid_map needs it
    result = run(runtime, bundle, "busybox unshare -mrpf sh -c "
                 "'mount -t proc proc /proc && echo mounted-proc'; "
                 "busybox unshare -mrpf sh -c "
                 "'mount -t sysfs sysfs /sys && echo mounted-sysfs'; true", "--no-pivot")
    assert result.returncode == 0, result.stderr
    assert "mounted-proc" not in result.stdout
    assert "mounted-sysfs" not in result.stdout
    assert "permission denied" in result.stdout + result.stderr


def test_no_pivot_in_a_user_namespace_covers_what_it_cannot_unmount(runtime,
                                                                      world_readable_bundle):
    bundle = user_namespace(world_readable_bundle)
    out = output(runtime, bundle, "awk '{print $5, $9}' /proc/self/mountinfo", "--no-pivot")
    assert "/proc proc" in out.splitlines()


def test_no_pivot_refuses_private_rootfs_propagation(runtime, bundle):
    bundle.linux["rootfsPropagation"] = "private"
    result = run(runtime, bundle, "echo ran", "--no-pivot")
    assert result.returncode != 0
    assert "not safe without pivot_root" in result.stderr


# --- rootfs propagation -----------------------------------------------------------------

@pytest.fixture
def shared_rootfs_bundle(make_bundle, busybox_rootfs):
    """The rootfs is a mount point of its own, and shared (containerd's overlay is)."""
    bundle = make_bundle()
    shutil.rmtree(bundle.rootfs)
    with host_tmpfs(str(bundle.rootfs), shared=True):
        shutil.copytree(busybox_rootfs, bundle.rootfs, symlinks=True, dirs_exist_ok=True)
        yield bundle


def root_line(mountinfo: str, point: str) -> str:
    for line in mountinfo.splitlines():
        if line.split()[4] == point:
            found = line
    return found


@pytest.mark.parametrize("propagation", ["shared", "rshared", "slave", "private"])
def test_rootfs_propagation_on_a_shared_rootfs_mount(runtime, shared_rootfs_bundle, tmp_path,
                                                      propagation):
    bundle = shared_rootfs_bundle
    with host_tmpfs(str(tmp_path / "volume"), shared=True) as volume:
        bundle.linux["rootfsPropagation"] = propagation
        bind_propagation = "rshared" if propagation == "rshared" else "rslave"
        bundle.config["mounts"].append({"destination": "/vol", "type": "bind",
                                        "source": volume,
                                        "options": ["rbind", bind_propagation]})
        bundle.write(["sh", "-c", "cat /proc/self/mountinfo > /vol/mountinfo"])
        host_before = mount_table()
        container_id = runtime.new_id()
        runtime("create", "--bundle", str(bundle.path), container_id)
        # Made on the host once the container's mounts exist: it can only come by
        # propagation from the shared bind source.
        os.mkdir(os.path.join(volume, "late"))
        subprocess.run(["mount", "-t", "tmpfs", "late", os.path.join(volume, "late")],
                       check=True)
        runtime("start", container_id)
        runtime.wait_stopped(container_id)
        with open(os.path.join(volume, "mountinfo")) as f:
            inside = f.read()
        runtime("delete", container_id)
        subprocess.run(["umount", os.path.join(volume, "late")], check=True)
        host_after = mount_table()
    root = root_line(inside, "/")
    if propagation in ("shared", "rshared"):
        assert " shared:" in root, root
    else:
        assert " shared:" not in root, root
    if propagation == "private":
        assert " master:" not in root, root
    assert " /vol/late " in inside, "a mount on the host did not reach the container"
    if propagation == "rshared":
        assert " shared:" in root_line(inside, "/vol/late")
    assert host_after == host_before


def test_unbindable_rootfs_propagation(runtime, bundle):
    """runtime-tools: binding "/" in an unbindable root fails with EINVAL."""
    bundle.linux["rootfsPropagation"] = "unbindable"
    add_capabilities(bundle, "CAP_SYS_ADMIN")
    out = output(runtime, bundle, "awk '$5 == \"/\"' /proc/self/mountinfo; mkdir -p /tmp/t; "
                                  "mount --rbind / /tmp/t && echo bound || echo refused")
    assert " unbindable " in out
    assert out.split()[-1] == "refused"


# --- a read-only /dev ----------------------------------------------------------------------

def test_read_only_dev_keeps_devices_and_dev_mounts(runtime, bundle):
    for mount in bundle.config["mounts"]:
        if mount["destination"] == "/dev":
            mount["options"].append("ro")
    out = output(runtime, bundle, """
        awk '$2 ~ "^/dev" {print $2, $3, substr($4, 1, 2)}' /proc/mounts
        echo x > /dev/null && head -c 1 /dev/zero | wc -c && echo null-and-zero
        test -c /dev/pts/ptmx && test -L /dev/ptmx && echo ptmx
        echo hi > /dev/shm/f && cat /dev/shm/f
        touch /dev/new 2>&1 || true
    """)
    lines = out.splitlines()
    assert "/dev tmpfs ro" in lines
    assert "/dev/pts devpts rw" in lines
    assert "/dev/shm tmpfs rw" in lines
    assert "/dev/mqueue mqueue rw" in lines
    for expected in ("null-and-zero", "ptmx", "hi"):
        assert expected in lines, out
    assert "Read-only file system" in out


def test_read_only_tmpfs_with_a_mount_below_it(runtime, bundle):
    bundle.config["mounts"] += [
        {"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
         "options": ["ro", "nodev", "nosuid", "mode=755"]},
        {"destination": "/mnt/sub", "type": "tmpfs", "source": "tmpfs", "options": []},
    ]
    out = output(runtime, bundle, "grep -E ' /mnt(/sub)? ' /proc/mounts | cut -d' ' -f2,4")
    assert out.splitlines()[0].startswith("/mnt ro,")
    assert out.splitlines()[1].startswith("/mnt/sub rw,")


# --- bind sources only the host's root can reach, with a user namespace ----------------

def test_bind_sources_in_0700_directories_with_a_user_namespace(runtime,
                                                                 world_readable_bundle):
    bundle = user_namespace(world_readable_bundle)
    for name in ("inaccessible-1", "inaccessible-2"):
        os.makedirs(bundle.path / name / "dir")
        (bundle.path / name / "dir" / "foo.txt").write_text(name)
        os.chmod(bundle.path / name, 0o700)
    bundle.config["mounts"] += [
        {"source": "inaccessible-1/dir", "destination": "/tmp/mount-1", "options": ["bind"]},
        {"source": str(bundle.path / "inaccessible-2" / "dir"), "destination": "/tmp/mount-2",
         "options": ["rbind", "ro"]},
    ]
    out = output(runtime, bundle, "cat /tmp/mount-1/foo.txt /tmp/mount-2/foo.txt; echo; "
                                  "touch /tmp/mount-2/x 2>&1; ls /proc/self/fd | wc -l")
    lines = out.splitlines()
    assert lines[0] == "inaccessible-1inaccessible-2"
    assert "Read-only file system" in lines[1]
    assert lines[2] == "4"  # 0, 1, 2 and ls's own: no source fd reached the program


def test_a_missing_bind_source_with_a_user_namespace_is_named(runtime, world_readable_bundle):
    bundle = user_namespace(world_readable_bundle)
    bundle.config["mounts"].append({"source": "absent", "destination": "/mnt",
                                    "options": ["bind"]})
    result = run(runtime, bundle, "echo ran")
    assert result.returncode != 0
    assert "bind mount source" in result.stderr and "absent" in result.stderr


# --- recursive mount attributes --------------------------------------------------------------

@pytest.fixture
def volume_with_submount(tmp_path):
    with host_tmpfs(str(tmp_path / "volume"), shared=False) as volume:
        with open(os.path.join(volume, "foo"), "w") as f:
            f.write("foo")
        with host_tmpfs(os.path.join(volume, "subvol"), shared=False):
            yield volume


@pytest.mark.parametrize("options, top_ro, sub_ro", [
    (["rbind", "ro"], True, False),
    (["rbind", "rro"], True, True),
    (["rbind", "ro", "rro"], True, True),
    (["rbind", "ro", "rrw"], False, False),
])
def test_recursive_read_only(runtime, bundle, volume_with_submount, options, top_ro, sub_ro):
    bundle.config["mounts"].append({"source": volume_with_submount, "destination": "/mnt",
                                    "options": options})
    out = output(runtime, bundle, "for f in /mnt/foo /mnt/subvol/bar; do "
                                  "touch $f 2>/dev/null && echo rw || echo ro; done")
    assert out.split() == ["ro" if top_ro else "rw", "ro" if sub_ro else "rw"]


def test_recursive_nosuid_noexec_noatime(runtime, bundle, volume_with_submount):
    bundle.config["mounts"].append({"source": volume_with_submount, "destination": "/mnt",
                                    "options": ["rbind", "rnosuid", "rnoexec", "rnoatime"]})
    out = output(runtime, bundle, "grep ' /mnt' /proc/mounts | cut -d' ' -f2,4")
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        options = line.split()[1].split(",")
        assert {"nosuid", "noexec", "noatime"} <= set(options), line


def test_features_advertise_the_recursive_options(runtime):
    import json

    options = json.loads(runtime("features").stdout)["mountOptions"]
    for option in ("rro", "rrw", "rnosuid", "rnodev", "rnoexec", "rnoatime", "rnosymfollow"):
        assert option in options


# --- mount namespaces: joined, or none -------------------------------------------------------

@pytest.fixture
def mount_namespace_holder():
    """A process in a mount namespace of its own (unshare --mount), to be joined."""
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
    try:
        host_ns = os.readlink("/proc/self/ns/mnt")
        path = f"/proc/{proc.pid}/ns/mnt"
        while os.readlink(path) == host_ns:
            assert proc.poll() is None
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_joining_a_mount_namespace_sets_the_rootfs_up_in_it(runtime, bundle,
                                                             mount_namespace_holder):
    joined = f"/proc/{mount_namespace_holder}/ns/mnt"
    bundle.linux["namespaces"] = [ns if ns["type"] != "mount" else {"type": "mount",
                                                                     "path": joined}
                                  for ns in bundle.linux["namespaces"]]
    host_before = mount_table()
    out = output(runtime, bundle, "readlink /proc/self/ns/mnt; cat /etc/hostname; "
                                  "test -e /proc/self/mountinfo && echo proc")
    lines = out.splitlines()
    assert lines[0] == os.readlink(joined)
    assert lines[-1] == "proc"
    assert mount_table() == host_before


def without_mount_namespace(bundle: Bundle) -> Bundle:
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"]
                                  if ns["type"] != "mount"]
    return bundle


@pytest.mark.parametrize("field, edit", [
    ("root.readonly", lambda b: None),
    ("linux.rootfsPropagation", lambda b: (b.config["root"].update(readonly=False),
                                           b.linux.update(rootfsPropagation="rshared"))),
])
def test_without_a_mount_namespace_what_would_change_host_mounts_is_refused(
        runtime, bundle, field, edit):
    bundle = without_mount_namespace(bundle)
    edit(bundle)
    host_before = mount_table()
    result = run(runtime, bundle, "echo ran")
    assert result.returncode != 0
    assert "ran" not in result.stdout
    assert field in result.stderr and "mount namespace" in result.stderr
    assert mount_table() == host_before


@pytest.fixture
def shared_host_mount():
    """A shared mount on the host whose propagation a container must leave alone."""
    path = tempfile.mkdtemp(prefix="corral-shared-", dir="/var/tmp")
    try:
        with host_tmpfs(path, shared=True):
            yield path
    finally:
        os.rmdir(path)


def test_without_a_mount_namespace_the_container_is_only_chrooted(runtime, bundle,
                                                                  shared_host_mount):
    bundle = without_mount_namespace(bundle)
    bundle.config["mounts"] = []
    bundle.linux.update(maskedPaths=[], readonlyPaths=[])
    bundle.config["root"]["readonly"] = False
    bundle.write(["sh", "-c", "test -x /bin/busybox && echo chrooted > /result"])
    host_before = mount_table()
    container_id = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), container_id)
    init_pid = runtime.state(container_id)["pid"]
    assert os.readlink(f"/proc/{init_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{init_pid}/root") == str(bundle.rootfs)
    runtime("start", container_id)
    runtime.wait_stopped(container_id)
    runtime("delete", container_id)
    assert (bundle.rootfs / "result").read_text() == "chrooted\n"
    assert mount_table() == host_before  # the shared mount is still shared, nothing added


def test_without_a_mount_namespace_mounts_are_made_under_the_rootfs_and_undone(runtime, bundle):
    """As runc (runtime-tools linux_ns_itype): the default mounts, masked and read-only
    paths are made under the rootfs in the runtime's namespace; delete takes them down."""
    bundle = without_mount_namespace(bundle)
    bundle.config["root"]["readonly"] = False
    (bundle.rootfs / "etc" / "secret").write_text("not for the container\n")
    bundle.linux["maskedPaths"].append("/etc/secret")
    bundle.write(["sh", "-c", "test -e /proc/self/status && echo proc; "
                              "test -c /dev/null && echo dev; "
                              "wc -c < /etc/secret; touch /proc/sys/x 2>/dev/null || echo ro"])
    host_before = mount_table()
    container_id = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), container_id)
    assert any(point.startswith(f"{bundle.rootfs}/") for point, _ in mount_table())
    runtime("start", container_id)
    runtime.wait_stopped(container_id)
    runtime("delete", container_id)
    assert mount_table() == host_before
    # Seen from inside: proc, devices, a masked /proc/kcore, a read-only /proc/sys.
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["proc", "dev", "0", "ro"], result.stdout
    assert mount_table() == host_before
