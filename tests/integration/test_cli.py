"""The `corral` command line, run as a user runs it: images on a data root, pods via corrald."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli.images import human_size
from corral.images.layout import build_image
from corral.images.service import ImageService
from tests.integration.corrald import running_corrald
from tests.integration.registry_server import (
    Registry,
    actual_tree,
    expected_tree,
    layered_image,
    snapshot_tree,
)
from tests.integration.test_image_gc import LOCK_HOLDER

CORRAL = str(Path(sys.executable).parent / "corral")


# Nothing of the machine's: its registries.conf, auth files (REGISTRY_AUTH_FILE,
# /run/containers/0/auth.json, ~/.docker/config.json), certs.d, $CORRAL_ROOT, and the pod
# logs of /var/log/corral, which another corrald on the host may be writing to.  A test's
# own options come after these, and win.
HOST_FREE: list[str] = []
HOST_FREE_ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def free_of_the_host(tmp_path_factory):
    own = tmp_path_factory.mktemp("cli-config")
    (own / "registries.conf").write_text("")
    (own / "auth.json").write_text("{}")
    (own / "certs.d").mkdir()
    (own / "pod-logs").mkdir()
    HOST_FREE[:] = ["--registries-conf", str(own / "registries.conf"),
                    "--auth-file", str(own / "auth.json"), "--certs-dir", str(own / "certs.d")]
    HOST_FREE_ENV.update(CORRAL_LOG_ROOT=str(own / "pod-logs"))
    yield
    HOST_FREE.clear()
    HOST_FREE_ENV.clear()


def corral(*args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("CORRAL_ROOT", "REGISTRY_AUTH_FILE")}
    environment = {**HOST_FREE_ENV, **environment, **env}
    done = subprocess.run([CORRAL, *HOST_FREE, *args], capture_output=True, text=True,
                          timeout=120, env=environment)
    if check and done.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    layout = str(tmp_path_factory.mktemp("layout") / "image")
    layered_image(layout, marker=b"amd64")
    server = Registry(str(tmp_path_factory.mktemp("registry")))
    try:
        server.push(layout, "cli/app", tag="1.0")
        yield server
    finally:
        server.stop()


def test_pull_images_tag_inspect_rmi_prune(tmp_path, registry):
    root = str(tmp_path / "root")
    ref = f"{registry.host}/cli/app:1.0"
    image_id = corral("--root", root, "pull", "-q", ref).stdout.strip()
    assert image_id.startswith("sha256:")
    table = corral("--root", root, "images").stdout
    assert f"{registry.host}/cli/app" in table and "1.0" in table and image_id[7:19] in table
    corral("--root", root, "tag", ref, "mine/app:v2")
    listed = json.loads(corral("--root", root, "images", "--format", "json").stdout)
    assert sorted(i["name"] for i in listed) == sorted([ref, "docker.io/mine/app:v2"])
    assert corral("--root", root, "images", "-q").stdout.split() == [image_id[7:19]]
    (inspected,) = json.loads(corral("--root", root, "image", "inspect", "mine/app:v2").stdout)
    assert inspected["Id"] == image_id and inspected["Config"]["os"] == "linux"
    exported = str(tmp_path / "app.tar")
    corral("--root", root, "image", "export", "--format", "docker-archive", "-o", exported,
           "mine/app:v2")
    other = str(tmp_path / "other")
    assert image_id in corral("--root", other, "image", "import", exported).stdout
    assert corral("--root", root, "rmi", "mine/app:v2").stdout.strip() == \
        "Untagged: docker.io/mine/app:v2"
    corral("--root", root, "rmi", image_id[7:19])  # by ID prefix: the last name goes
    assert corral("--root", root, "images", "-q").stdout == ""
    assert os.listdir(os.path.join(root, "content", "blobs", "sha256")) == []
    assert "removed 0 blobs" in corral("--root", root, "image", "prune").stdout


def test_image_prune_all_spares_images_in_use_and_waits_for_pulls(tmp_path, registry):
    root = str(tmp_path / "root")
    ref = f"{registry.host}/cli/app:1.0"
    image_id = corral("--root", root, "pull", "-q", ref).stdout.strip()
    corral("--root", root, "tag", ref, "mine/app:v2")
    used_layout = str(tmp_path / "used")
    layered_image(used_layout, marker=b"used")
    (used_line,) = corral("--root", root, "image", "import", used_layout,
                          "example.com/used:1").stdout.splitlines()
    used_id = used_line.split()[1]
    service = ImageService(root)
    try:
        service.snapshots.prepare("container-1", service.unpack("example.com/used:1"))
        junk = service.content.write(b"a blob nothing names")
        done = corral("--root", root, "image", "prune")
        assert done.stdout == "removed 1 blobs and 0 layers, 20B freed\n"
        assert not service.content.exists(junk) and len(service.list()) == 3

        # A pull in progress (the GC lock held shared by another process): prune says it
        # waits, and collects once the pull is done.
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, root],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        prune = None
        try:
            assert holder.stdout.readline() == "held\n"  # before prune starts: it must wait
            prune = subprocess.Popen([CORRAL, "--root", root, "image", "prune", "--all"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert select.select([prune.stderr], [], [], 60)[0]
            assert prune.stderr.readline() == "waiting for a pull or import to finish ...\n"
            assert prune.poll() is None
            holder.stdin.write("done\n")
            holder.stdin.flush()
            out, err = prune.communicate(timeout=60)
        finally:
            for process in (holder, prune):
                if process is not None:
                    process.kill()
                    process.wait()
        assert (prune.returncode, err) == (0, "")
        lines = out.splitlines()
        assert sorted(lines[:2]) == sorted([f"Untagged: {ref}", "Untagged: docker.io/mine/app:v2"])
        assert lines[2] == f"Deleted: {image_id}"
        assert lines[3].startswith("removed 3 blobs and 1 layers, ")  # what only it used
        assert [r.id for r in service.list()] == [used_id]  # a container stands on it
        assert snapshot_tree(service, "example.com/used:1") == expected_tree(b"used")
    finally:
        if service.snapshots.exists("container-1"):
            service.snapshots.remove("container-1")
        service.close()
    blobs = os.path.join(root, "content", "blobs", "sha256")
    stored = sum(os.path.getsize(os.path.join(blobs, name)) for name in os.listdir(blobs))
    assert corral("--root", root, "image", "prune", "-a").stdout.splitlines() == [
        "Untagged: example.com/used:1", f"Deleted: {used_id}",
        f"removed 5 blobs and 3 layers, {human_size(stored)} freed"]
    assert os.listdir(blobs) == []


def test_image_build_records_the_layout_image(tmp_path, busybox_rootfs):
    root = str(tmp_path / "root")
    files = build_image(busybox_rootfs, "example.com/bb:1", cmd=["echo", "built"])
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    done = corral("--root", root, "image", "build", busybox_rootfs, "example.com/bb:1",
                  "--cmd", "echo", "built")
    assert done.stdout == f"{manifest['config']['digest']}\n"  # the image ID, as layout.py's
    (inspected,) = json.loads(corral("--root", root, "image", "inspect",
                                     "example.com/bb:1").stdout)
    assert inspected["Config"]["config"]["Cmd"] == ["echo", "built"]
    service = ImageService(root)
    try:
        assert snapshot_tree(service, "example.com/bb:1") == actual_tree(busybox_rootfs)
    finally:
        service.close()
    other = str(tmp_path / "other")
    done = corral("--root", other, "image", "build", str(tmp_path / "nowhere"), "x:1",
                  check=False)
    assert (done.returncode, done.stderr) == (
        1, f"corral: build: {tmp_path / 'nowhere'} is not a directory\n")
    done = corral("--root", other, "image", "build", busybox_rootfs, "Bad Name", check=False)
    assert done.returncode == 1 and done.stderr.startswith("corral: build: invalid reference")
    assert corral("--root", other, "images", "-q").stdout == ""
    assert os.listdir(os.path.join(other, "content", "blobs", "sha256")) == []


def test_pull_draws_progress_bars_on_a_terminal(tmp_path, registry):
    ref = f"{registry.host}/cli/app:1.0"
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(CORRAL, [CORRAL, "--root", str(tmp_path / "root"), "pull", ref])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "done" in text and "sha256:" in text and "linux/amd64" in text


def test_errors_are_one_line(tmp_path):
    done = corral("--root", str(tmp_path), "rmi", "nope", check=False)
    assert done.returncode == 1
    assert done.stderr == "corral: image 'nope' not found\n"
    done = corral("--root", str(tmp_path), "pull", "127.0.0.1:1/x", check=False)
    assert done.returncode == 1 and done.stderr.startswith("corral: 127.0.0.1:1")
    assert len(done.stderr.splitlines()) == 1
    assert corral("bogus", check=False).returncode == 2
    done = corral("--socket", str(tmp_path / "none.sock"), "ps", check=False)
    assert done.returncode == 1 and "corrald is not running" in done.stderr


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """A corrald, and `corral run`'s pod logs in a directory of this test's own (not the
    machine's /var/log/corral, which another corrald on the host may be writing to)."""
    (tmp_path / "pod-logs").mkdir()
    monkeypatch.setenv("CORRAL_LOG_ROOT", str(tmp_path / "pod-logs"))
    with running_corrald("corralt3", "10.99.10.0/24") as daemon:
        yield daemon


def test_run_ps_pods_logs_stop_rm(daemon, tmp_path):
    sock = str(daemon.socket)
    done = corral("--socket", sock, "run", "--rm", "--name", "hello", "-e", "WHO=corral",
                  "busybox", "sh", "-c", "echo hi $WHO from $(hostname); echo err >&2; exit 3",
                  check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "hi corral from hello\n",
                                                           "err\n")
    assert corral("--socket", sock, "pods", "-q").stdout == ""  # --rm removed the pod
    assert os.listdir(tmp_path / "pod-logs") == []  # and its log directory

    container = corral("--socket", sock, "run", "-d", "--name", "web", "busybox", "sh", "-c",
                       "echo started; exec sleep 60").stdout.strip()
    assert len(container) == 64
    assert "web" in corral("--socket", sock, "ps").stdout
    assert "web" in corral("--socket", sock, "pods").stdout
    assert corral("--socket", sock, "logs", container[:12]).stdout == "started\n"
    done = corral("--socket", sock, "exec", container[:12], "sh", "-c", "hostname; exit 5",
                  check=False)
    assert (done.returncode, done.stdout) == (5, "web\n")
    assert "RuntimeReady: yes" in corral("--socket", sock, "info").stdout
    corral("--socket", sock, "stop", "-t", "1", container[:12])
    assert "exited (137)" in corral("--socket", sock, "ps", "-a").stdout
    corral("--socket", sock, "rm", "web")  # the pod (and its container)
    assert corral("--socket", sock, "ps", "-a", "-q").stdout == ""
    assert os.listdir(tmp_path / "pod-logs") == []  # its log dir went too


def test_image_commands_go_through_corrald_when_it_runs(daemon, registry):
    sock = str(daemon.socket)
    table = corral("--socket", sock, "images").stdout
    assert "busybox" in table and "latest" in table  # what corrald has, as CRI lists it
    ref = f"{registry.host}/cli/app:1.0"
    image_id = corral("--socket", sock, "pull", "-q", ref).stdout.strip()
    assert image_id.startswith("sha256:")
    assert image_id[7:19] in corral("--socket", sock, "images", "-q").stdout.split()
    assert corral("--socket", sock, "rmi", ref).stdout == f"Untagged: {ref}\n"
    done = corral("--socket", sock, "rmi", ref, check=False)
    assert done.returncode == 1 and "not found" in done.stderr
