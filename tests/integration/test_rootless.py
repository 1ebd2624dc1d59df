"""Rootless: an unprivileged user runs the config `spec --rootless` writes (no cgroups)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from corral.images.busybox import copy_rootfs

from .conftest import CORRAL_RUNTIME

pytestmark = pytest.mark.root

NOBODY = 65534


def as_nobody(*args: str, cwd: str | None = None, check: bool = True):
    cmd = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
           CORRAL_RUNTIME, *args]
    # Files, not pipes: a detached container keeps the runtime's stdio open.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(cmd, stdout=out, stderr=err, timeout=60, cwd=cwd)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, done.returncode, out.read(), err.read())
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def home(busybox_rootfs):
    """A directory the unprivileged user owns, with a bundle in it."""
    path = tempfile.mkdtemp(prefix="corral-rootless-", dir="/var/tmp")
    os.chmod(path, 0o755)
    bundle = os.path.join(path, "bundle")
    os.mkdir(bundle)
    copy_rootfs(busybox_rootfs, os.path.join(bundle, "rootfs"))
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", path], check=True)
    try:
        yield path
    finally:
        subprocess.run([CORRAL_RUNTIME, "--root", os.path.join(path, "state"), "delete",
                        "--force", "rootless-1"], capture_output=True)
        shutil.rmtree(path)


def test_an_unprivileged_user_runs_a_rootless_container(home):
    bundle = os.path.join(home, "bundle")
    as_nobody("spec", "--rootless", cwd=bundle)
    config_path = os.path.join(bundle, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": NOBODY, "size": 1}]
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", "id -u; echo $$; cat /proc/self/uid_map; "
                                              "echo x > /dev/null && echo dev-ok"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    state = os.path.join(home, "state")
    out = as_nobody("--root", state, "run", "rootless-1", cwd=bundle).stdout.split()
    assert out[:2] == ["0", "1"]  # root inside, PID 1
    assert out[2:5] == ["0", str(NOBODY), "1"]
    assert out[5] == "dev-ok"
    assert not os.path.exists(os.path.join(state, "rootless-1"))


def test_rootless_lifecycle_and_exec(home):
    bundle = os.path.join(home, "bundle")
    as_nobody("spec", "--rootless", cwd=bundle)
    config_path = os.path.join(bundle, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sleep", "1000"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    state = os.path.join(home, "state")
    as_nobody("--root", state, "run", "--detach", "--bundle", bundle, "rootless-1")
    status = json.loads(as_nobody("--root", state, "state", "rootless-1").stdout)
    assert status["status"] == "running" and status["owner"] != "root"
    out = as_nobody("--root", state, "exec", "rootless-1", "sh", "-c", "id -u; hostname").stdout
    assert out.split() == ["0", "corral"]
    as_nobody("--root", state, "kill", "rootless-1", "KILL")
    as_nobody("--root", state, "delete", "--force", "rootless-1")
    assert not os.path.exists(os.path.join(state, "rootless-1"))
