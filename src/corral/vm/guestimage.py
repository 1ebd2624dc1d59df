"""The guest's userland as a read-only ext4 image, for VMs that are saved and restored.

A cold VM reads the host's /usr and corral's sources over 9p, but QEMU refuses
to migrate (save) a VM with a mounted 9p share ("Migration is disabled when
VirtFS export path ... is mounted"), and a template must be saved.  So a
template's guest reads them from a virtio-blk disk instead: this image, made
with `mkfs.ext4 -d` from what the agent and corral.runtime need (the host's
Python and the stdlib, the libraries its extension modules link, python3-seccomp,
corral's source), each at its host path below the image's root.  Disks migrate:
clones open the same file read-only.

The image is keyed by `fingerprint`: corral's files and the directories of the
rest, so a change to corral (or a Python or library upgrade) makes a new one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

from corral.vm.errors import GuestImageError

MKFS = "/usr/sbin/mkfs.ext4"
# Not needed in the guest, and large: the stdlib's GUI, build and packaging parts.
STDLIB_LEFT_OUT = ("config-3", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
                   "pydoc_data", "site-packages", "dist-packages", "distutils", "venv")
SECCOMP_BINDINGS = "/usr/lib/python3/dist-packages/seccomp*.so"
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
FORMAT = 1  # what image_files takes; a change makes every image new
_SLACK = 1.3  # ext4's metadata over the files' sizes


def image_files(python: str, source_dir: str) -> list[str]:
    """Every host file the image holds (absolute paths; symlinks as they are)."""
    real_python = os.path.realpath(python)
    stdlib = _stdlib_dir(real_python)
    files = {python, real_python}
    for root, dirs, names in os.walk(stdlib):
        if root == stdlib:
            dirs[:] = [d for d in dirs if not d.startswith(STDLIB_LEFT_OUT)]
        dirs[:] = [d for d in dirs if d not in ("test", "tests")]
        files.update(os.path.join(root, n) for n in names)
    extensions = glob.glob(os.path.join(stdlib, "lib-dynload", "*.so"))
    seccomp = glob.glob(SECCOMP_BINDINGS)
    files.update(seccomp)
    files.update(_shared_libraries([real_python, *extensions, *seccomp]))
    for root, _dirs, names in os.walk(os.path.join(source_dir, "corral")):
        files.update(os.path.join(root, n) for n in names)
    # merged /usr: /lib/x86_64-linux-gnu/libc.so.6 is /usr/lib/..., where the guest looks
    return sorted({os.path.join(os.path.realpath(os.path.dirname(f)), os.path.basename(f))
                   for f in files})


def guest_image(cache_dir: str, python: str, source_dir: str) -> str:
    """The image's path in `cache_dir`, made if it is not there (atomically)."""
    path = os.path.join(cache_dir, f"guest-{fingerprint(python, source_dir)}.ext4")
    if os.path.isfile(path):
        return path
    files = image_files(python, source_dir)
    size = sum(os.lstat(f).st_size for f in files)
    if not os.access(MKFS, os.X_OK):
        raise GuestImageError(f"{MKFS} not found: install e2fsprogs")
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".guest-", dir=cache_dir)
    tmp = staging + ".ext4"
    try:
        for source in files:
            target = os.path.join(staging, source.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
        blocks = int(size * _SLACK) // 4096 + 4096
        done = subprocess.run([MKFS, "-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal",
                               "-E", "root_owner=0:0", "-d", staging, tmp, str(blocks)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise GuestImageError(f"mkfs.ext4 -d: {done.stderr.strip() or done.returncode}")
        os.chmod(tmp, 0o444)
        os.rename(tmp, path)
        _prune(cache_dir, keep=path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _prune(cache_dir: str, keep: str, age: float = 86400.0) -> None:
    """Images made for other sources over a day ago (a VM using one keeps its open file)."""
    import time

    for other in glob.glob(os.path.join(cache_dir, "guest-*.ext4")):
        try:
            if other != keep and time.time() - os.stat(other).st_mtime > age:
                os.unlink(other)
        except FileNotFoundError:
            pass


def fingerprint(python: str, source_dir: str) -> str:
    """What the image's content depends on, cheaply (every pod's VM asks): corral's files
    one by one, and for the rest the directories a package upgrade writes to (dpkg
    renames files into them), not the thousand files nor an ldd of each library."""
    real_python = os.path.realpath(python)
    stdlib = _stdlib_dir(real_python)
    watched = [real_python, stdlib, os.path.join(stdlib, "lib-dynload"),
               *glob.glob(SECCOMP_BINDINGS), *(d for d in LIBRARY_DIRS if os.path.isdir(d))]
    for root, _dirs, names in os.walk(os.path.join(source_dir, "corral")):
        watched.extend(os.path.join(root, n) for n in names)
    digest = hashlib.sha256(f"{FORMAT}\0{python}\0{source_dir}\n".encode())
    for item in sorted(watched):
        st = os.lstat(item)
        digest.update(f"{item}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _stdlib_dir(python: str) -> str:
    version = os.path.basename(python).removeprefix("python")
    candidate = os.path.join(os.path.dirname(os.path.dirname(python)), "lib", f"python{version}")
    if not os.path.isdir(candidate):
        raise GuestImageError(f"no standard library for {python} at {candidate}")
    return candidate


def _shared_libraries(binaries: list[str]) -> set[str]:
    """What the dynamic loader maps for `binaries` (ldd), with the symlinks that name them."""
    found: set[str] = set()
    for chunk in range(0, len(binaries), 64):
        done = subprocess.run(["ldd", *binaries[chunk:chunk + 64]], capture_output=True,
                              text=True)
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 1:  # "file:", the header ldd prints for each of several
                continue
            candidates = [p for p in parts if p.startswith("/")]
            for lib in candidates[:1]:
                found.add(lib)
                found.add(os.path.realpath(lib))
    return found
