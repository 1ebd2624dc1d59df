"""Container cgroups on cgroup v1, v2 and hybrid hosts (runc's cgroupfs driver semantics).

    manager = open_manager(spec.linux.cgroups_path, container_id)
    manager.create(spec.linux.resources)   # directories + limits, or nothing at all
    manager.join(pid)
    state["cgroup"] = manager.to_state()    # later: load_manager(state["cgroup"])

Which manager: a cgroup2 mount at the root (/sys/fs/cgroup) is a pure v2
host → V2Manager.  Otherwise the v1 controller mounts → V1Manager, which on
a hybrid host (v1 plus a cgroup2 mount such as /sys/fs/cgroup/unified) also
makes, joins and, for controllers only cgroup2 offers, configures a
directory there.

cgroupsPath, as runc's cgroupfs driver reads it:
  "/a/b"  below each hierarchy's root;
  "a/b"   below the caller's own cgroup in each hierarchy (on pure v2, below
          its parent: the caller's own cgroup has processes, so could not
          delegate controllers);
  ""      the container ID, taken as a relative path.
A path with ".." is refused.
"""

from __future__ import annotations

import os

from corral.runtime.cgroups.base import Manager
from corral.runtime.cgroups.common import (
    DEFAULT_ROOT,
    CgroupError,
    check_saved_dir,
    clean_cgroups_path,
    discover,
    own_cgroups,
    visible_path,
)
from corral.runtime.cgroups.v1 import V1Manager
from corral.runtime.cgroups.v2 import V2Manager

__all__ = ["CgroupError", "Manager", "V1Manager", "V2Manager", "load_manager", "open_manager"]


def open_manager(cgroups_path: str, container_id: str, *, root: str = DEFAULT_ROOT) -> Manager:
    """The manager for this host and path; nothing is created until `create`."""
    if not cgroups_path and not container_id:
        raise CgroupError("linux.cgroupsPath: empty, and no container ID to default to")
    inner = clean_cgroups_path(cgroups_path or container_id)
    absolute = inner.startswith("/")
    hierarchies = discover(root)
    own = {} if absolute else own_cgroups()

    def below(mount, key: str, parent: bool = False) -> str:
        if absolute:
            return mount.mountpoint + inner
        if key not in own:
            name = key or "cgroup2"
            raise CgroupError(f"linux.cgroupsPath: the caller is in no {name} cgroup "
                              f"(/proc/self/cgroup)")
        base = visible_path(mount, own[key], key)
        if parent:
            base = os.path.dirname(base)
        return os.path.join(mount.mountpoint + base.rstrip("/"), inner)

    if hierarchies.pure_v2:
        mount = hierarchies.unified
        return V2Manager(below(mount, "", parent=True), root=mount.mountpoint)
    paths = {ctl: below(mount, ctl) for ctl, mount in hierarchies.v1.items()}
    if hierarchies.unified is not None:
        paths[""] = below(hierarchies.unified, "")
    return V1Manager(paths)


def load_manager(saved: dict) -> Manager:
    """The manager again, from what `Manager.to_state()` returned (state.json)."""
    if not isinstance(saved, dict):
        raise CgroupError("saved cgroup state: expected an object")
    version = saved.get("version")
    if version == 2:
        return V2Manager(check_saved_dir(saved.get("path"), "path"),
                         root=check_saved_dir(saved.get("root"), "root"))
    if version == 1:
        paths = saved.get("paths")
        if not isinstance(paths, dict):
            raise CgroupError("saved cgroup state: paths is not an object")
        checked = {str(ctl): check_saved_dir(path, f"paths.{ctl}") for ctl, path in paths.items()}
        if saved.get("unified") is not None:
            checked[""] = check_saved_dir(saved["unified"], "unified")
        return V1Manager(checked)
    raise CgroupError(f"saved cgroup state: unknown version {version!r}")
