"""What every cgroup manager does the same way, whatever the hierarchy layout."""

from __future__ import annotations

import os
import time

from corral.runtime.cgroups.common import (
    CgroupError,
    procs,
    remove_created,
    remove_tree,
    write_pid,
)


class Manager:
    """One container's cgroup: a directory in each hierarchy this host has.

    Subclasses provide `_make_dirs`, `_apply`, the freezer and `to_state`.
    """

    version: int
    paths: dict[str, str]  # controller (or "" for cgroup2) → directory

    def _dirs(self) -> list[str]:
        """Each directory once (co-mounted controllers such as cpu,cpuacct share one)."""
        return list(dict.fromkeys(self.paths.values()))

    def _make_dirs(self, created: list[str]) -> None:
        raise NotImplementedError

    def _apply(self, resources: dict, creating: bool) -> None:
        raise NotImplementedError

    def _refuse(self, resources: dict) -> None:
        """Raise for what this hierarchy can never do, before anything is touched."""

    def create(self, resources: dict | None) -> None:
        """Make the directories and apply `resources`; on failure, leave nothing we made."""
        self._refuse(resources or {})
        created: list[str] = []
        try:
            self._make_dirs(created)
            self._apply(resources or {}, creating=True)
        except CgroupError:
            remove_created(created)
            raise
        except OSError as e:  # anything the helpers did not already put into words
            remove_created(created)
            raise CgroupError(f"cannot set up cgroup {self._dirs()[0]}: {e}") from None
        except BaseException:
            remove_created(created)
            raise

    def apply(self, resources: dict | None) -> None:
        """Change the limits of a live cgroup (`update`)."""
        self._refuse(resources or {})
        try:
            self._apply(resources or {}, creating=False)
        except OSError as e:
            raise CgroupError(f"cannot update cgroup {self._dirs()[0]}: {e}") from None

    def below(self, sub_paths: dict[str, str]) -> Manager:
        """This cgroup's existing sub-cgroups, to join (exec --cgroup): controller →
        path below its directory, or "" → the same path in every hierarchy."""
        paths = dict(self.paths)
        if "" in sub_paths:
            targets = {key: sub_paths[""] for key in paths}
        else:
            unknown = sorted(set(sub_paths) - set(paths))
            if unknown:
                raise CgroupError(f"unknown controller {unknown[0]} in sub-cgroup paths")
            targets = sub_paths
        for key, sub in targets.items():
            joined = os.path.normpath(os.path.join(paths[key], sub.lstrip("/")))
            if joined != paths[key] and not joined.startswith(paths[key] + "/"):
                raise CgroupError(f"{sub} is not a sub cgroup path")
            paths[key] = joined
        return self._with_paths(paths)

    def _with_paths(self, paths: dict[str, str]) -> Manager:
        raise NotImplementedError

    def join(self, pid: int) -> None:
        """Move `pid` (0: the calling process) into the cgroup in every hierarchy."""
        for path in self._dirs():
            write_pid(path, pid)

    def pids(self) -> list[int]:
        """Every process in the cgroup or below it, in any of its hierarchies."""
        found: set[int] = set()
        for path in self._dirs():
            try:
                found.update(procs(path))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CgroupError(f"cannot list processes of {path}: {e.strerror}") from None
        return sorted(found)

    def exists(self) -> bool:
        return any(os.path.isdir(path) for path in self._dirs())

    def destroy(self, timeout: float = 5.0) -> None:
        """Remove the container's directories (and any cgroups made inside them).

        Parents are left alone: they may be shared (a pod's cgroup) and may
        have existed before.  Directories already gone are fine.
        """
        deadline = time.monotonic() + timeout
        first: CgroupError | None = None
        for path in self._dirs():
            try:
                remove_tree(path, deadline)
            except CgroupError as e:
                first = first or e  # still try the other hierarchies
        if first is not None:
            raise first

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def frozen(self) -> bool:
        raise NotImplementedError

    def oom_kills(self) -> int:
        raise NotImplementedError

    def to_state(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.paths!r})"
