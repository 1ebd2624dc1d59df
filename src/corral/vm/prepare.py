"""Make what the vm handler boots, once per host: `python -m corral.vm.prepare CACHE_DIR`.

The guest kernel as an uncompressed vmlinux (taken out of /boot/vmlinuz), the
initramfs, the accelerator's verdict (a probe boot, when /dev/kvm is there) and
the guest image VM templates boot from (guestimage.py):
all cached in CACHE_DIR, so the first vm pod does not pay for them.  Prints the
accelerator and exits 0; without QEMU or a kernel it says why and exits 0 too,
since the vm handler is then simply not offered.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from corral.vm import guestimage, initramfs, kernel, qemu
    from corral.vm.errors import VmError

    if len(argv) != 1:
        print("usage: python -m corral.vm.prepare CACHE_DIR", file=sys.stderr)
        return 2
    cache_dir = argv[0]
    try:
        guest = kernel.find_kernel()
        vmlinux = kernel.vmlinux(guest, cache_dir)
        initrd = initramfs.initramfs(guest, cache_dir)
        accelerator = qemu.choose_accelerator(cache_dir, vmlinux, initrd)
        guestimage.guest_image(cache_dir, qemu.host_python(), qemu.corral_source_dir())
    except VmError as e:
        print(f"vm handler not prepared: {e}")
        return 0
    print(f"vm handler: kernel {guest.version}, accelerator {accelerator.name}"
          + (f" ({accelerator.warning})" if accelerator.warning else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
