"""The `vm` runtime handler's machinery: a micro-VM per pod (Kata-style).

    kernel.py     the guest kernel: Debian's vmlinuz → cached uncompressed vmlinux (PVH)
    initramfs.py  busybox-static, the few modules, an /init that mounts the shares
    qemu.py       the QEMU command line (-M microvm), the accelerator, start and stop
    agent.py      the in-guest agent: runs the pod's containers with corral.runtime
    client.py     the host side of the agent's virtio-serial channel
    network.py    the pod's tap device, redirected to its CNI interface
"""
