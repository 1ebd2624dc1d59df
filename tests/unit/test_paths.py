"""secure_join: symlinks in an image resolve inside the rootfs, never on the host."""

from __future__ import annotations

import errno
import os

import pytest

from corral.runtime.paths import PathEscape, secure_join


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "usr" / "lib").mkdir(parents=True)
    return r


@pytest.mark.parametrize("link, target, path, expected", [
    ("abs", "/etc", "/abs/passwd", "etc/passwd"),
    ("rel", "../../../../etc", "/rel/x", "etc/x"),
    ("up", "..", "/up/up/up/usr", "usr"),
    ("usr/lib/lnk", "../../etc", "/usr/lib/lnk/y", "etc/y"),
    ("chain1", "chain2", "/chain1/z", "etc/z"),
])
def test_symlinks_resolve_inside_the_root(root, link, target, path, expected):
    os.symlink(target, root / link)
    if link == "chain1":
        os.symlink("/etc", root / "chain2")
    assert secure_join(str(root), path) == str(root / expected)


def test_dotdot_stops_at_the_root(root):
    assert secure_join(str(root), "/../../../etc") == str(root / "etc")
    assert secure_join(str(root), "/") == str(root)


def test_missing_components_are_kept(root):
    assert secure_join(str(root), "/new/dir/../file") == str(root / "new" / "file")


def test_symlink_loops_are_an_error(root):
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(PathEscape, match="too many symlinks"):
        secure_join(str(root), "/a/x")


def test_strict_mode_refuses_to_climb_out_or_through_files(root):
    os.symlink("../../..", root / "up")
    (root / "file").write_text("x")
    assert secure_join(str(root), "/up/etc") == str(root / "etc")  # clamped by default
    with pytest.raises(PathEscape) as error:
        secure_join(str(root), "/up/etc", strict=True)
    assert error.value.errno == errno.EXDEV
    with pytest.raises(PathEscape) as error:
        secure_join(str(root), "/file/child", strict=True)
    assert error.value.errno == errno.ENOTDIR
