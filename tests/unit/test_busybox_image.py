"""The embedded busybox image: rootfs layout, account files, bundle config."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from corral.images import busybox
from corral.spec.runtime import load_config

pytestmark = pytest.mark.skipif(
    not os.path.isfile(busybox.BUSYBOX_FALLBACK_PATH) and not shutil.which("busybox"),
    reason="needs Debian's busybox-static")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    dest = str(tmp_path_factory.mktemp("image") / "rootfs")
    busybox.build_rootfs(dest)
    return dest


def _read_colon_file(path: str) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        return {fields[0]: fields for fields in (line.rstrip("\n").split(":") for line in f)}


def test_sh_is_a_link_to_busybox(rootfs: str) -> None:
    sh = os.path.join(rootfs, "bin", "sh")
    assert os.path.islink(sh)
    assert os.path.realpath(sh) == os.path.realpath(os.path.join(rootfs, "bin", "busybox"))
    assert not os.path.isabs(os.readlink(sh))


def test_applets_in_usr_resolve_inside_the_rootfs(rootfs: str) -> None:
    env = os.path.join(rootfs, "usr", "bin", "env")
    assert os.readlink(env) == "../../bin/busybox"
    assert os.path.isfile(env)


def test_busybox_binary_is_static_and_executable(rootfs: str) -> None:
    binary = os.path.join(rootfs, "bin", "busybox")
    assert busybox.is_static_elf(binary)
    assert os.stat(binary).st_mode & 0o777 == 0o755


def test_passwd_has_root_nobody_and_a_regular_user(rootfs: str) -> None:
    users = _read_colon_file(os.path.join(rootfs, "etc", "passwd"))
    assert all(len(fields) == 7 for fields in users.values())
    assert users["root"][2:4] == ["0", "0"]
    assert users["nobody"][2:4] == ["65534", "65534"]
    assert users["corral"][2:4] == ["1000", "1000"]


def test_group_has_tty_and_groups_with_members(rootfs: str) -> None:
    groups = _read_colon_file(os.path.join(rootfs, "etc", "group"))
    assert all(len(fields) == 4 for fields in groups.values())
    assert groups["tty"][2] == "5"
    assert groups["nogroup"][2] == "65534"
    assert groups["corral"][2] == "1000"
    assert "corral" in groups["wheel"][3].split(",")


def test_directory_modes(rootfs: str) -> None:
    def mode(rel: str) -> int:
        return stat.S_IMODE(os.stat(os.path.join(rootfs, rel)).st_mode)

    assert mode("tmp") == 0o1777
    assert mode("root") == 0o700
    for rel in ("proc", "sys", "dev", "etc", "usr/bin", "usr/sbin", "sbin", "bin", "run"):
        assert os.path.isdir(os.path.join(rootfs, rel)), rel
    assert os.path.getsize(os.path.join(rootfs, "etc", "resolv.conf")) == 0
    assert "localhost" in open(os.path.join(rootfs, "etc", "hosts"), encoding="utf-8").read()


def test_build_is_deterministic(rootfs: str, tmp_path) -> None:
    other = str(tmp_path / "rootfs")
    busybox.build_rootfs(other)
    assert _tree(rootfs) == _tree(other)


def _tree(root: str) -> list[tuple]:
    entries = []
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            entries.append((os.path.relpath(path, root), st.st_mode, st.st_mtime, link))
    return sorted(entries)


def test_refuses_a_non_empty_destination(tmp_path) -> None:
    (tmp_path / "junk").write_text("x")
    with pytest.raises(busybox.BusyboxError, match="not empty"):
        busybox.build_rootfs(str(tmp_path))


def test_missing_busybox_names_the_debian_package(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(busybox.shutil, "which", lambda name: None)
    monkeypatch.setattr(busybox, "BUSYBOX_FALLBACK_PATH", str(tmp_path / "nope"))
    with pytest.raises(busybox.BusyboxError, match="busybox-static"):
        busybox.find_busybox()


def test_dynamic_binary_is_rejected() -> None:
    assert not busybox.is_static_elf("/bin/ls")


def test_bundle_config_loads_and_edit_applies(rootfs: str, tmp_path) -> None:
    bundle = str(tmp_path / "bundle")

    def edit(config: dict) -> None:
        config["hostname"] = "edited"

    config = busybox.build_bundle(bundle, ["/bin/true"], rootfs_from=rootfs, edit=edit)
    spec = load_config(bundle)
    assert spec.process.args == ["/bin/true"]
    assert spec.process.terminal is False
    assert spec.hostname == "edited"
    with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
        assert json.load(f) == config
    assert os.path.islink(os.path.join(bundle, "rootfs", "bin", "sh"))
    assert stat.S_IMODE(os.stat(os.path.join(bundle, "rootfs", "tmp")).st_mode) == 0o1777


def test_rootless_bundle_maps_the_caller(tmp_path, rootfs: str) -> None:
    config = busybox.build_bundle(str(tmp_path / "b"), rootless=True, rootfs_from=rootfs)
    assert config["linux"]["uidMappings"][0]["hostID"] == os.getuid()
    assert load_config(str(tmp_path / "b")).process.args == ["sh"]


def test_command_line_builds_a_bundle(tmp_path) -> None:
    bundle = str(tmp_path / "cli")
    assert busybox.main([bundle, "--args", "/bin/echo", "-n", "hi"]) == 0
    assert load_config(bundle).process.args == ["/bin/echo", "-n", "hi"]
