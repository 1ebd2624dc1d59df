"""The guest kernel: an installed Debian kernel, booted as its uncompressed vmlinux.

QEMU's microvm boots an ELF vmlinux through its PVH entry point directly,
skipping the bzImage's real-mode setup and self-decompression (seconds under
TCG).  Debian ships only the bzImage (`/boot/vmlinuz-*`, XZ inside), so the
vmlinux is taken out of it once and cached per kernel version.

The guest's modules are the host's `/lib/modules/<version>`: the same
package, so the guest loads exactly what that kernel was built with.
"""

from __future__ import annotations

import glob
import lzma
import os
import re
import tempfile

from corral.vm.errors import GuestImageError, GuestKernelMissing

BOOT_DIR = "/boot"
MODULES_ROOT = "/lib/modules"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ELF_MAGIC = b"\x7fELF"


class Kernel:
    """An installed kernel: its version, bzImage and modules directory."""

    def __init__(self, version: str, vmlinuz: str, modules_dir: str):
        self.version = version
        self.vmlinuz = vmlinuz
        self.modules_dir = modules_dir

    def __repr__(self) -> str:
        return f"Kernel({self.version!r})"


def find_kernel(version: str | None = None, boot_dir: str = BOOT_DIR,
                modules_root: str = MODULES_ROOT) -> Kernel:
    """The kernel `version`, or the newest installed one that has its modules."""
    found = []
    for vmlinuz in glob.glob(os.path.join(boot_dir, "vmlinuz-*")):
        release = os.path.basename(vmlinuz).removeprefix("vmlinuz-")
        modules = os.path.join(modules_root, release)
        if os.path.isfile(os.path.join(modules, "modules.dep")) and \
                (version is None or release == version):
            found.append(Kernel(release, vmlinuz, modules))
    if not found:
        wanted = f"kernel {version}" if version else "a kernel"
        raise GuestKernelMissing(f"no {wanted} with modules in {boot_dir} and {modules_root}: "
                                 f"install linux-image-amd64")
    return max(found, key=lambda k: os.path.getmtime(k.vmlinuz))


def vmlinux(kernel: Kernel, cache_dir: str) -> str:
    """The path of `kernel`'s uncompressed vmlinux in `cache_dir`, extracted if needed.

    Made as a temp file and renamed: concurrent pod starts never see half a file.
    """
    path = os.path.join(cache_dir, f"vmlinux-{kernel.version}")
    if os.path.isfile(path):
        return path
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    with open(kernel.vmlinuz, "rb") as f:
        image = f.read()
    elf = extract_vmlinux(image, kernel.vmlinuz)
    fd, tmp = tempfile.mkstemp(prefix=".vmlinux-", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(elf)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def extract_vmlinux(image: bytes, name: str = "bzImage") -> bytes:
    """The ELF kernel inside a bzImage whose payload is XZ (Debian's)."""
    start = image.find(_XZ_MAGIC)
    while start >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            data = decompressor.decompress(image[start:])
        except lzma.LZMAError:
            data = b""
        if data.startswith(_ELF_MAGIC):
            return data
        start = image.find(_XZ_MAGIC, start + 1)
    raise GuestImageError(f"{name}: no XZ-compressed ELF kernel inside (only XZ bzImages "
                          f"are supported)")


def module_files(modules_dir: str, names: tuple[str, ...]) -> list[str]:
    """The .ko files (relative to `modules_dir`) for `names`, each after its dependencies.

    A name the kernel has built in (modules.builtin) needs no file and is skipped.
    """
    deps: dict[str, list[str]] = {}
    with open(os.path.join(modules_dir, "modules.dep"), encoding="utf-8") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path.strip()] = rest.split()
    by_name = {_module_name(p): p for p in deps}
    builtin = set()
    try:
        with open(os.path.join(modules_dir, "modules.builtin"), encoding="utf-8") as f:
            builtin = {_module_name(line.strip()) for line in f if line.strip()}
    except FileNotFoundError:
        pass
    ordered: list[str] = []

    def add(path: str) -> None:
        if path in ordered:
            return
        for dep in reversed(deps.get(path, [])):  # modules.dep lists the deepest last
            add(dep)
        ordered.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            add(by_name[key])
        elif key not in builtin:
            raise GuestImageError(f"kernel module {name} is not in {modules_dir}/modules.dep")
    compressed = [p for p in ordered if not p.endswith(".ko")]
    if compressed:
        raise GuestImageError(f"compressed kernel modules in {modules_dir} ({compressed[0]}): "
                              f"busybox insmod takes plain .ko files")
    return ordered


def _module_name(path: str) -> str:
    return re.sub(r"\.ko(\.[a-z]+)?$", "", os.path.basename(path)).replace("-", "_")
