"""Fixtures for tests against the real kernel: bundles, a runtime root, leak checks.

Every test gets its own runtime root and container IDs; the `runtime`
fixture deletes (--force) whatever a test left and then asserts that
nothing leaked: no state directory, no cgroup directory, no process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.images.busybox import build_rootfs, copy_rootfs, write_config
from corral.spec.defaults import default_config

REPO = Path(__file__).resolve().parents[2]
CORRAL_RUNTIME = str(Path(sys.executable).parent / "corral-runtime")
CGROUP_ROOT = "/sys/fs/cgroup"
# cgroup2 alone at the root: a pure v2 host (this machine is hybrid; the QEMU guest
# of test_cgroup_v2_guest.py is pure v2).
PURE_V2 = os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))

# Inside that guest, the test that boots it is not collected again.
collect_ignore = ["test_cgroup_v2_guest.py"] if os.environ.get("CORRAL_IN_GUEST") else []


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        # Loud, not skipped: these tests are the point and need root.
        raise pytest.UsageError("integration tests need root (namespaces, cgroups, mounts)")
    if not PURE_V2:
        # Deselected, not skipped: test_cgroup_v2_guest.py runs them in a v2 guest.
        v2_only = [item for item in items if item.get_closest_marker("cgroup_v2")]
        if v2_only:
            config.hook.pytest_deselected(items=v2_only)
            items[:] = [item for item in items if item not in v2_only]


@pytest.fixture(scope="module")
def workdir():
    """A directory of the module's under /tmp, short: VMs' Unix socket paths are under it."""
    path = tempfile.mkdtemp(prefix="cvm-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("image") / "rootfs")
    build_rootfs(path)
    return path


class Bundle:
    """A bundle with its own copy of the busybox rootfs and an editable config."""

    def __init__(self, path: Path, rootfs_from: str):
        self.path = path
        self.rootfs = path / "rootfs"
        copy_rootfs(rootfs_from, str(self.rootfs))
        self.config = default_config(args=["true"], terminal=False)

    def write(self, args: list[str] | None = None, **process) -> Bundle:
        if args is not None:
            self.config["process"]["args"] = args
        self.config["process"].update(process)
        write_config(str(self.path), self.config)
        return self

    @property
    def linux(self) -> dict:
        return self.config["linux"]


@pytest.fixture
def make_bundle(tmp_path, busybox_rootfs) -> Callable[..., Bundle]:
    counter = iter(range(1000))

    def make(args: list[str] | None = None) -> Bundle:
        bundle = Bundle(tmp_path / f"bundle{next(counter)}", busybox_rootfs)
        return bundle.write(args)

    return make


@pytest.fixture
def bundle(make_bundle) -> Bundle:
    return make_bundle()


@pytest.fixture
def world_readable_bundle(busybox_rootfs) -> Bundle:
    """A bundle the mapped root of a user namespace can reach (pytest's tmp is 0700)."""
    path = tempfile.mkdtemp(prefix="corral-userns-", dir="/var/tmp")
    os.chmod(path, 0o755)
    try:
        yield Bundle(Path(path) / "bundle", busybox_rootfs).write()
    finally:
        shutil.rmtree(path)


class Runtime:
    """`corral-runtime` with a private --root, run as a real process."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.ids: list[str] = []

    def new_id(self) -> str:
        container_id = f"ct-{uuid.uuid4().hex[:10]}"
        self.ids.append(container_id)
        return container_id

    def cmd(self, *args: str) -> list[str]:
        return [CORRAL_RUNTIME, "--root", self.root, *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60,
                 **kwargs) -> subprocess.CompletedProcess:
        # Output goes to files, not pipes: a created container's init inherits the
        # runtime's stdio and keeps it open long after the runtime has exited.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            done = subprocess.run(self.cmd(*args), stdout=out, stderr=err, timeout=timeout,
                                  **kwargs)
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(done.args, done.returncode, out.read(),
                                                 err.read())
        if check and result.returncode != 0:
            raise AssertionError(f"corral-runtime {' '.join(args)} failed "
                                 f"({result.returncode}): {result.stderr.strip()}")
        return result

    def state(self, container_id: str) -> dict:
        return json.loads(self("state", container_id).stdout)

    def status(self, container_id: str) -> str:
        return self.state(container_id)["status"]

    def wait_stopped(self, container_id: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.status(container_id) != "stopped":
            assert time.monotonic() < deadline, f"{container_id} still running"
            time.sleep(0.02)

    def run_capture(self, bundle: Bundle, timeout: float = 60) -> subprocess.CompletedProcess:
        """`run` in the foreground: the container's output and exit status."""
        container_id = self.new_id()
        return self("run", "--bundle", str(bundle.path), container_id, check=False,
                    timeout=timeout)


def cgroup_dirs(name: str) -> list[str]:
    """Every directory named `name` in any cgroup hierarchy (the container's cgroup)."""
    found = []
    hierarchies = [CGROUP_ROOT] if PURE_V2 else [
        os.path.join(CGROUP_ROOT, hierarchy) for hierarchy in os.listdir(CGROUP_ROOT)]
    for base in hierarchies:
        for dirpath, dirnames, _ in os.walk(base):
            if name in dirnames:
                found.append(os.path.join(dirpath, name))
            if dirpath.count("/") - base.count("/") >= 2:
                dirnames.clear()  # containers are shallow; don't walk whole trees
    return found


def cgroup_file(container_id: str, v1: str, v2: str) -> str:
    """A file of the container's cgroup: `v1` ("memory/memory.limit_in_bytes") on a v1
    or hybrid host, `v2` ("memory.max") on a pure cgroup v2 host."""
    if PURE_V2:
        (path,) = cgroup_dirs(container_id)
        name = v2
    else:
        controller, name = v1.split("/")
        (path,) = [d for d in cgroup_dirs(container_id) if f"/{controller}/" in d]
    with open(os.path.join(path, name)) as f:
        return f.read().strip()


def processes_in_root(root: str) -> list[int]:
    """Processes whose command line mentions the runtime root (leaked runtime processes)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if root.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def assert_nothing_left(runtime: Runtime, container_id: str) -> None:
    assert not os.path.exists(os.path.join(runtime.root, container_id)), "state dir left"
    assert cgroup_dirs(container_id) == [], "cgroup left"
    with open("/proc/self/mountinfo") as f:
        assert container_id not in f.read(), "mount left"


@pytest.fixture
def runtime(tmp_path) -> Runtime:
    rt = Runtime(tmp_path / "runtime-root")
    yield rt
    for container_id in rt.ids:
        subprocess.run(rt.cmd("delete", "--force", container_id), capture_output=True,
                       timeout=60)
    for pid in processes_in_root(rt.root):
        os.kill(pid, 9)
    for container_id in rt.ids:
        assert_nothing_left(rt, container_id)
    shutil.rmtree(rt.root, ignore_errors=True)
