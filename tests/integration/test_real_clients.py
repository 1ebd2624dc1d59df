"""Real high-level runtimes drive corral-runtime in place of runc: containerd (ctr) and podman.

The image is the embedded busybox one, imported into podman's store and
saved as an OCI archive for containerd: no network anywhere.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time

import pytest

from corral.images.busybox import build_rootfs
from corral.images.layout import build_image, write_archive

from .conftest import CORRAL_RUNTIME

pytestmark = pytest.mark.root

IMAGE = "localhost/busybox:latest"
# This host's hard RLIMIT_NOFILE is below podman's default, and root may not raise it.
PODMAN_RUN = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is missing: scripts/setup installs it"
    return path


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    need("podman")
    base = tmp_path_factory.mktemp("podman")
    rootfs = base / "rootfs"
    build_rootfs(str(rootfs))
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(base / "rootfs.tar"), "."], check=True)
    cmd = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
           "--runtime", CORRAL_RUNTIME, "--cgroup-manager", "cgroupfs",
           "--events-backend", "file", "--storage-driver", "vfs"]
    subprocess.run([*cmd, "import", str(base / "rootfs.tar"), IMAGE], check=True,
                   capture_output=True)
    yield cmd
    subprocess.run([*cmd, "rm", "--all", "--force", "--time", "0"], capture_output=True)
    subprocess.run([*cmd, "system", "reset", "--force"], capture_output=True)


@pytest.fixture(scope="module")
def oci_archive(podman, tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "busybox-oci.tar"
    subprocess.run([*podman, "save", "--format", "oci-archive", "-o", str(path), IMAGE],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def ctr(oci_archive, tmp_path_factory):
    need("containerd")
    base = tmp_path_factory.mktemp("containerd")
    socket = base / "containerd.sock"
    (base / "config.toml").write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        f'[grpc]\n  address = "{socket}"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
    log = open(base / "containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")],
                              stdout=log, stderr=log)
    cmd = ["ctr", "--address", str(socket)]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*cmd, "version"], capture_output=True).returncode != 0:
            assert daemon.poll() is None, (base / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not come up"
            time.sleep(0.1)
        subprocess.run([*cmd, "images", "import", "--snapshotter", "native",
                        "--base-name", "localhost/busybox", str(oci_archive)],
                       check=True, capture_output=True)
        yield cmd
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def in_a_terminal(cmd: list[str], typed: bytes, until: bytes, timeout: float = 60) -> bytes:
    """Run `cmd` with a pty as its terminal, type into it, return what it showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        os.write(master, typed)
        deadline = time.monotonic() + timeout
        while until not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert until in seen, seen
    return seen


# --- containerd --------------------------------------------------------------------------

def ctr_run(ctr, *args: str) -> list[str]:
    return [*ctr, "run", "--snapshotter", "native", "--runc-binary", CORRAL_RUNTIME, *args]


def test_containerd_runs_a_container(ctr):
    out = run(ctr_run(ctr, "--rm", IMAGE, "c-run", "sh", "-c", "echo hello; echo pid=$$"))
    assert out.stdout.split() == ["hello", "pid=1"]


def test_containerd_imports_and_runs_an_image_corral_built(ctr, tmp_path):
    """corral.images.layout's oci-archive is a real OCI image for a real client."""
    rootfs = tmp_path / "rootfs"
    build_rootfs(str(rootfs))
    (rootfs / "etc" / "built-by").write_text("corral\n")
    write_archive(build_image(str(rootfs), "localhost/corral-built:1"), str(tmp_path / "i.tar"))
    run([*ctr, "images", "import", "--snapshotter", "native", str(tmp_path / "i.tar")])
    assert "localhost/corral-built:1" in run([*ctr, "images", "ls", "-q"]).stdout
    out = run(ctr_run(ctr, "--rm", "localhost/corral-built:1", "c-own", "cat", "/etc/built-by"))
    assert out.stdout == "corral\n"


def test_containerd_run_with_a_tty(ctr):
    seen = in_a_terminal(ctr_run(ctr, "--rm", "-t", IMAGE, "c-tty", "sh"),
                         b"tty; echo answer=$((6*7)); exit\n", b"answer=42")
    assert b"/dev/pts/0" in seen


def test_containerd_task_exec_ps_pause_resume_kill_delete(ctr):
    run(ctr_run(ctr, "-d", IMAGE, "c-task", "sleep", "1000"))
    try:
        tasks = run([*ctr, "task", "ls"]).stdout
        assert "c-task" in tasks and "RUNNING" in tasks
        out = run([*ctr, "task", "exec", "--exec-id", "e1", "c-task", "sh", "-c",
                   "echo exec-pid=$$; exit 4"], check=False)
        assert out.returncode == 4 and "exec-pid=" in out.stdout
        pid = int(tasks.split("c-task")[1].split()[0])
        assert str(pid) in run([*ctr, "task", "ps", "c-task"]).stdout
        run([*ctr, "task", "pause", "c-task"])
        assert "PAUSED" in run([*ctr, "task", "ls"]).stdout
        run([*ctr, "task", "resume", "c-task"])
        assert "RUNNING" in run([*ctr, "task", "ls"]).stdout
        run([*ctr, "task", "kill", "--signal", "SIGKILL", "c-task"])
        deadline = time.monotonic() + 20
        while "STOPPED" not in run([*ctr, "task", "ls"]).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        run([*ctr, "task", "delete", "c-task"])
    finally:
        run([*ctr, "task", "delete", "--force", "c-task"], check=False)
        run([*ctr, "container", "delete", "c-task"], check=False)
    assert "c-task" not in run([*ctr, "task", "ls"]).stdout


# --- podman --------------------------------------------------------------------------------

def test_podman_run_rm(podman):
    out = run([*podman, "run", "--rm", *PODMAN_RUN, IMAGE, "sh", "-c", "echo hello; echo $$"])
    assert out.stdout.split() == ["hello", "1"]


def test_podman_run_interactive_tty(podman):
    seen = in_a_terminal([*podman, "run", "--rm", "-it", *PODMAN_RUN, IMAGE, "sh"],
                         b"tty; echo answer=$((6*7)); exit\n", b"answer=42")
    assert b"/dev/pts/0" in seen


def test_podman_exec_top_ps_stop(podman):
    name = f"p-{os.getpid()}"
    run([*podman, "run", "-d", "--name", name, *PODMAN_RUN, IMAGE, "sleep", "1000"])
    try:
        out = run([*podman, "exec", name, "sh", "-c", "echo exec-pid=$$; hostname"])
        assert "exec-pid=" in out.stdout
        top = run([*podman, "top", name]).stdout
        assert "sleep 1000" in top
        assert name in run([*podman, "ps"]).stdout
        run([*podman, "stop", "--time", "1", name])
        assert name not in run([*podman, "ps"]).stdout
    finally:
        run([*podman, "rm", "--force", name], check=False)


def test_podman_forwards_a_stop_signal_the_container_handles(podman):
    name = f"p-sig-{os.getpid()}"
    run([*podman, "run", "-d", "--name", name, *PODMAN_RUN, IMAGE, "sh", "-c",
         "trap 'exit 0' TERM; while :; do sleep 0.1; done"])
    try:
        started = time.monotonic()
        run([*podman, "stop", "--time", "20", name])
        assert time.monotonic() - started < 15, "TERM reached the container's trap"
        state = run([*podman, "inspect", "--format", "{{.State.ExitCode}}", name]).stdout
        assert state.strip() == "0"
    finally:
        run([*podman, "rm", "--force", name], check=False)


# --- process.cwd from an image or a client cannot lead out (CVE-2024-21626 class) --------

ESCAPE_FDS = range(3, 12)


@pytest.fixture
def host_secret():
    name = f"corral-escape-{os.getpid()}-{time.monotonic_ns()}"
    path = f"/tmp/{name}"
    with open(path, "w") as f:
        f.write("host-secret-" + name)
    try:
        yield name, "host-secret-" + name
    finally:
        os.unlink(path)


def climb(name: str) -> list[str]:
    return ["sh", "-c", f"cat {'../' * 24}tmp/{name} 2>/dev/null; pwd"]


def test_containerd_image_working_dir_through_an_fd_stays_inside(ctr, tmp_path, host_secret):
    name, secret = host_secret
    rootfs = tmp_path / "rootfs"
    build_rootfs(str(rootfs))
    for fd in ESCAPE_FDS:
        image = f"localhost/corral-workdir:{fd}"
        write_archive(build_image(str(rootfs), image, working_dir=f"/proc/self/fd/{fd}"),
                      str(tmp_path / "i.tar"))
        run([*ctr, "images", "import", "--snapshotter", "native", str(tmp_path / "i.tar")])
        out = run(ctr_run(ctr, "--rm", image, f"c-wd-{fd}", *climb(name)), check=False)
        assert secret not in out.stdout + out.stderr, f"fd {fd}: read the host's file"
        run([*ctr, "images", "rm", image])


def test_podman_workdir_through_an_fd_stays_inside(podman, host_secret):
    name, secret = host_secret
    for fd in ESCAPE_FDS:
        out = run([*podman, "run", "--rm", *PODMAN_RUN, "--workdir", f"/proc/self/fd/{fd}",
                   IMAGE, *climb(name)], check=False)
        assert secret not in out.stdout + out.stderr, f"fd {fd}: read the host's file"
