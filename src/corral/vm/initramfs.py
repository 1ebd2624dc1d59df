"""The guest's initramfs: busybox-static, the few modules the guest needs, an /init.

Nothing of a pod is in it, so one image serves every VM and is cached by the
hash of what goes in.  What differs per VM (the shares, the agent's Python)
comes on the kernel command line: the kernel hands parameters it does not
know (`corral_shares=...`) to /init as environment variables.

The init (PID 1) mounts a tmpfs as the new root, the shares into it (the
host's /usr read-only: Debian is merged-/usr, so /bin, /lib, /sbin are
symlinks into it and the host's Python runs as it is), proc, sys, cgroup2
alone at /sys/fs/cgroup, dev, dev/pts, dev/shm, tmp and run, then
switch_root's into it and execs the agent as PID 1.  The switch matters:
pivot_root(2), which containers use, refuses a root that is the initramfs.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

from corral.vm.errors import GuestImageError, QemuMissing
from corral.vm.kernel import Kernel, module_files

BUSYBOX = "/bin/busybox"
# What the init loads, in groups: always (virtio-mmio transport, the agent's virtio-serial
# port, 9p, the balloon that reports free pages to the host), with a NIC, with a virtiofs
# share.  Anything else the guest asks for later comes from the host's /lib/modules
# (the same kernel) through modprobe.
MODULE_GROUPS = (("base", ("virtio_mmio", "virtio_console", "9pnet_virtio", "9p",
                          "virtio_balloon")),
                 ("net", ("virtio_net",)),
                 ("virtiofs", ("virtiofs",)),
                 ("image", ("virtio_blk", "crc32c_generic", "ext4")))
AGENT_MODULE = "corral.vm.agent"
AGENT_PORT = "corral.agent"  # the virtio-serial port's name (/sys/class/virtio-ports/*/name)
PROBE_MARKER = "corral-probe: userspace reached"  # the accelerator probe's boot prints it
NINEP_MSIZE = 512 * 1024
FORMAT = 2  # how the image is made; a change makes every key new
SIGNATURE_MAGIC = b"~Module signature appended~\n"  # how a signed .ko ends

INIT = r"""#!/busybox sh
# corral's guest init: see corral/vm/initramfs.py.  Its parameters come from
# the kernel command line as environment variables:
#   corral_shares  fstype:tag:ro|rw:path,...  (9p or virtiofs; mounted at path)
#   corral_python  the interpreter that runs the agent (under /usr)
#   corral_path    PYTHONPATH: the directory holding the corral package
#   corral_net     set: the VM has a NIC (virtio-net)
#   corral_image   set: /usr and corral's source come from the ext4 image on /dev/vda
#                  (guestimage.py), not from shares
B=/busybox
fail() { echo "corral-init: $*" > /dev/console; $B sync; $B reboot -f; exit 1; }
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
if [ -n "$corral_probe" ]; then echo "{probe}" > /dev/console; $B reboot -f; exit 0; fi
load() { for m in $($B cat /modules/$1.list); do $B insmod /modules/$m || fail "insmod $m"; done; }
load base
[ -n "$corral_net" ] && load net
case ",$corral_shares" in *,virtiofs:*) load virtiofs;; esac
[ -n "$corral_image" ] && load image
r=/newroot
$B mount -t tmpfs -o mode=755 root $r || fail "tmpfs root"
cd $r || fail "cd $r"
$B mkdir -p usr proc sys dev run tmp etc root var .corral
for d in bin sbin lib lib64; do $B ln -s usr/$d $d; done
$B mount -t proc proc $r/proc
$B mount -t sysfs sysfs $r/sys
$B mount -t cgroup2 -o nsdelegate cgroup2 $r/sys/fs/cgroup || fail "cgroup2"
$B mount -t devtmpfs devtmpfs $r/dev
$B mkdir -p $r/dev/pts $r/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts $r/dev/pts
$B ln -sf pts/ptmx $r/dev/ptmx
$B mount -t tmpfs -o mode=1777,nosuid,nodev shm $r/dev/shm
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmp $r/tmp
$B mount -t tmpfs -o mode=755,nosuid,nodev run $r/run
IFS=,
for share in $corral_shares; do
  IFS=:; set -- $share; IFS=,
  fstype=$1 tag=$2 mode=$3 path=$4
  $B mkdir -p "$r$path"
  if [ "$fstype" = virtiofs ]; then
    $B mount -t virtiofs -o "$mode" "$tag" "$r$path" || fail "virtiofs $tag at $path"
  else
    cache=mmap; [ "$mode" = ro ] && cache=loose
    $B mount -t 9p -o "trans=virtio,version=9p2000.L,$mode,cache=$cache,msize={msize}" \
      "$tag" "$r$path" || fail "9p $tag at $path"
  fi
done
unset IFS
if [ -n "$corral_image" ]; then
  i=$r/.corral/image
  $B mkdir -p $i "$r$corral_path"
  $B mount -t ext4 -o ro /dev/vda $i || fail "the guest image on /dev/vda"
  $B mount --bind $i/usr $r/usr || fail "/usr from the guest image"
  $B mount --bind "$i$corral_path" "$r$corral_path" || fail "$corral_path from the guest image"
fi
[ -x "$r$corral_python" ] || fail "no $corral_python in the guest"
busybox=/usr/bin/busybox
[ -x "$r$busybox" ] || { busybox=/.corral/busybox; $B cp /busybox "$r$busybox"; }
exec $B env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root \
  LANG=C.UTF-8 PYTHONPATH="$corral_path" PYTHONDONTWRITEBYTECODE=1 \
  CORRAL_AGENT_PORT={port} CORRAL_BUSYBOX="$busybox" \
  $B switch_root $r "$corral_python" -S -B -u -c "from {agent} import main; main()"
"""


def init_script() -> str:
    return (INIT.replace("{msize}", str(NINEP_MSIZE)).replace("{port}", AGENT_PORT)
            .replace("{probe}", PROBE_MARKER)
            .replace("{agent}", AGENT_MODULE))


def initramfs(kernel: Kernel, cache_dir: str, busybox: str = BUSYBOX,
              groups: tuple[tuple[str, tuple[str, ...]], ...] = MODULE_GROUPS) -> str:
    """The path of the (uncompressed newc cpio) initramfs in `cache_dir`, made if needed.

    Uncompressed: under TCG the kernel's inflate costs more than copying the bytes.
    Found by a key of what it is made from (busybox, the kernel's module index, the
    init script, the module list) without reading any of it: each pod VM asks, and
    reading and hashing the modules cost ~60 ms a pod.  A kernel package that
    changes a module rewrites modules.dep (depmod), which makes the key new.
    """
    if not os.path.isfile(busybox):
        raise QemuMissing(f"{busybox} not found: install busybox-static")
    path = os.path.join(cache_dir, f"initramfs-{kernel.version}-{_key(kernel, busybox, groups)}"
                                   f".cpio")
    if os.path.isfile(path):
        return path
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    image = _cpio(_parts(kernel, busybox, groups))
    fd, tmp = tempfile.mkstemp(prefix=".initramfs-", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(image)
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


def _key(kernel: Kernel, busybox: str, groups) -> str:
    def file_id(path: str) -> list:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return [path]
        return [path, st.st_size, st.st_mtime_ns, st.st_ino]

    parts = [FORMAT, init_script(), file_id(busybox), repr(groups), kernel.version,
             *(file_id(os.path.join(kernel.modules_dir, name))
               for name in ("modules.dep", "modules.builtin"))]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _parts(kernel: Kernel, busybox: str, groups) -> list[tuple[str, bytes]]:
    """The initramfs's files: init, busybox, each group's modules after their
    dependencies (once, in the first group that needs them) and each group's list."""
    lists: dict[str, list[str]] = {}
    taken: set[str] = set()
    for group, names in groups:
        lists[group] = [m for m in module_files(kernel.modules_dir, names) if m not in taken]
        taken.update(lists[group])
    parts: list[tuple[str, bytes]] = [("init", init_script().encode())]
    with open(busybox, "rb") as f:
        parts.append(("busybox", f.read()))
    for rel in (m for group in lists.values() for m in group):
        with open(os.path.join(kernel.modules_dir, rel), "rb") as f:
            parts.append((f"modules/{os.path.basename(rel)}", without_signature(f.read())))
    for group, files in lists.items():
        listing = "".join(os.path.basename(rel) + "\n" for rel in files)
        parts.append((f"modules/{group}.list", listing.encode()))
    return parts


def without_signature(module: bytes) -> bytes:
    """A module without its appended signature (the kernel's module_signature layout:
    the signature, a 12-byte trailer ending in its big-endian length, the magic).

    Checking it costs the guest's kernel a SHA-512 and an RSA verify per module,
    emulated under TCG at every boot (loading the modules took 0.44-0.47 s of a boot
    with them, 0.34-0.37 s without); these are the host's own files of the guest's
    kernel, and the guest does not enforce signatures (it logs a taint)."""
    if not module.endswith(SIGNATURE_MAGIC):
        return module
    trailer = module[-len(SIGNATURE_MAGIC) - 12:-len(SIGNATURE_MAGIC)]
    length = int.from_bytes(trailer[8:12], "big")
    end = len(module) - len(SIGNATURE_MAGIC) - 12 - length
    return module[:end] if end > 0 else module


def _cpio(parts: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    inodes = iter(range(1, 1 << 20))
    for d in ("dev", "proc", "sys", "modules", "newroot"):
        write_entry(out, d, 0o040755, ino=next(inodes))
    # The kernel opens it as init's stdin/stdout/stderr, before devtmpfs is there.
    write_entry(out, "dev/console", 0o020600, ino=next(inodes), rdev=(5, 1))
    for name, data in parts:
        mode = 0o100755 if name in ("init", "busybox") else 0o100644
        write_entry(out, name, mode, data, next(inodes))
    write_entry(out, "TRAILER!!!", 0)
    return out.getvalue()


def write_entry(out: io.BytesIO, name: str, mode: int, data: bytes = b"", ino: int = 0,
                rdev: tuple[int, int] = (0, 0)) -> None:
    """One newc record (the initramfs format), padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    if len(encoded) > 4096:
        raise GuestImageError(f"cpio name too long: {name[:40]}...")
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0]
    out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))
