"""The overlayfs snapshotter: layers applied once, stacked, and a container run on top."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess

import pytest

from corral.images.errors import DigestMismatch, SnapshotConflict
from corral.images.layout import layer_tar
from corral.images.snapshots import OverlaySnapshotter
from corral.runtime.syscalls import MNT_DETACH, Syscalls
from corral.spec.image import chain_ids
from corral.store.db import Database

from .test_unpack import make_tar

pytestmark = pytest.mark.root
LIMIT = 256 * 2**20


@pytest.fixture
def snapshotter(tmp_path):
    db = Database(str(tmp_path / "meta" / "corral.db"))
    yield OverlaySnapshotter(str(tmp_path / "snapshotter"), db)
    db.close()


@pytest.fixture
def layers(busybox_rootfs, tmp_path):
    """A busybox base with a merged-usr style /lib symlink, and a layer on top of it."""
    base = tmp_path / "base"
    subprocess.run(["cp", "-a", busybox_rootfs, str(base)], check=True)
    (base / "usr" / "lib").mkdir()
    os.symlink("usr/lib", base / "lib")
    first = layer_tar(str(base))
    second = make_tar(("etc/motd", "file", "layer two\n"), ("etc/.wh.resolv.conf", "file", ""),
                      ("lib/from-layer2", "file", "through the symlink\n"))
    return [first, second]


def test_layers_stack_and_a_container_runs_on_the_snapshot(snapshotter, layers, runtime,
                                                          make_bundle):
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    chain = chain_ids(diff_ids)
    parent = None
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain, strict=True):
        assert snapshotter.apply_layer(chain_id, parent, io.BytesIO(layer), limit=LIMIT,
                                       expected_diff_id=diff_id) == diff_id
        parent = chain_id
    (mount,) = snapshotter.prepare("container-1", chain[-1])
    assert mount.type == "overlay" and len(mount.options[-1].split(":")) == 2

    bundle = make_bundle(["sh", "-c", "cat /etc/motd /usr/lib/from-layer2; "
                                      "ls /etc/resolv.conf 2>&1; touch /written && echo wrote"])
    bundle.config["root"]["readonly"] = False
    for kind in ("bounding", "effective", "permitted"):  # the layer's files belong to uid 1000
        bundle.config["process"]["capabilities"][kind].append("CAP_DAC_OVERRIDE")
    bundle.write()
    rootfs = str(bundle.rootfs)
    subprocess.run(["rm", "-rf", rootfs], check=True)
    os.mkdir(rootfs)
    mount.mount(rootfs)
    try:
        result = runtime("run", "--bundle", str(bundle.path), runtime.new_id(), check=False)
    finally:
        Syscalls().umount(rootfs, MNT_DETACH)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[:2] == ["layer two", "through the symlink"]
    assert "No such file" in lines[2]  # the whiteout hid it
    assert lines[3] == "wrote"
    upper = mount.options[1].removeprefix("upperdir=")
    assert os.path.exists(os.path.join(upper, "written"))  # only the container's layer changed

    with pytest.raises(SnapshotConflict, match="parent of"):
        snapshotter.remove(chain[-1])
    snapshotter.remove("container-1")
    for chain_id in reversed(chain):
        snapshotter.remove(chain_id)
    assert os.listdir(os.path.join(snapshotter.root, "snapshots")) == []


def test_a_wrong_diff_id_leaves_no_snapshot(snapshotter):
    layer = make_tar(("hello", "file", "x"))
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch, match="diff ID"):
        snapshotter.apply_layer(wrong, None, io.BytesIO(layer), limit=LIMIT,
                                expected_diff_id=wrong)
    assert not snapshotter.exists(wrong)
    assert os.listdir(os.path.join(snapshotter.root, "snapshots")) == []
    with open("/proc/self/mountinfo") as f:
        assert "corral-apply-" not in f.read()
