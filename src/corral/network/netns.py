"""Pinned namespaces: a pod's network, IPC and UTS namespaces, kept alive by bind mounts.

No pause container holds a pod's namespaces: like `ip netns add`, each is
bind-mounted onto a file (`<dir>/net`, `<dir>/ipc`, `<dir>/uts`), and
containers join them by path.  The directory is made a private mount
first, so the pins never propagate into other mount namespaces.

corrald serves on threads and must not fork; util-linux's `unshare`, which
creates persistent namespaces itself (`--net=FILE`), does the unsharing in
a fresh process and runs `hostname` inside the new UTS namespace.
"""

from __future__ import annotations

import os
import subprocess

from corral.runtime import syscalls as k

UNSHARE_FLAGS = {"net": "--net", "ipc": "--ipc", "uts": "--uts"}
HOSTNAME = "/bin/hostname"


class NamespaceError(OSError):
    pass


def pin_namespaces(kinds: list[str], directory: str, hostname: str = "") -> dict[str, str]:
    """New namespaces of `kinds`, pinned under `directory`: kind → path."""
    unknown = set(kinds) - set(UNSHARE_FLAGS)
    if unknown:
        raise NamespaceError(f"cannot pin namespaces {sorted(unknown)}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    sc = k.Syscalls()
    if not _is_mount_point(directory):
        sc.mount(directory, directory, None, k.MS_BIND)
    sc.mount(None, directory, None, k.MS_PRIVATE)
    paths = {kind: os.path.join(directory, kind) for kind in kinds}
    try:
        for path in paths.values():
            open(path, "a").close()
        command = ["unshare", *(f"{UNSHARE_FLAGS[kind]}={path}" for kind, path in paths.items())]
        command += [HOSTNAME, hostname] if hostname and "uts" in paths else ["true"]
        done = subprocess.run(command, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise NamespaceError(f"pin {','.join(kinds)} namespaces in {directory}: "
                                 f"{done.stderr.decode(errors='replace').strip()}")
    except BaseException:
        unpin_namespaces(directory)
        raise
    return paths


def unpin_namespaces(directory: str) -> None:
    """Unmount and remove every pin under `directory`, and the directory; idempotent."""
    if not os.path.isdir(directory):
        return
    sc = k.Syscalls()
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        try:
            sc.umount(path, k.MNT_DETACH)
        except OSError:
            pass
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        sc.umount(directory, k.MNT_DETACH)
    except OSError:
        pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


def _is_mount_point(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)
