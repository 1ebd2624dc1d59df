"""The cgroup v2 device filter: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE.

cgroup v2 has no devices.allow; the kernel asks a BPF program attached to
the cgroup instead.  The program is assembled here from the emulated rule
state (devicerules.Emulator), loaded with bpf(BPF_PROG_LOAD) and attached
with BPF_F_ALLOW_MULTI to the cgroup directory, as runc and crun do.

The program sees struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
where access_type = (access << 16) | type, and returns 1 to allow, 0 to deny.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from corral.runtime.cgroups.common import field_error
from corral.runtime.cgroups.devicerules import WILDCARD, Emulator, Rule

# bpf(2) commands, program/attach types and flags (include/uapi/linux/bpf.h)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

# bpf_cgroup_dev_ctx values
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPE_BITS = {"b": DEV_BLOCK, "c": DEV_CHAR}

# instruction opcodes used (class | op | source)
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_ALU32_AND_K = 0x54
_ALU32_RSH_K = 0x74
_ALU32_MOV_K = 0xB4
_ALU32_MOV_X = 0xBC
_JEQ_K = 0x15
_JNE_K = 0x55
_JNE_X = 0x5D
_EXIT = 0x95

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351,
            "i686": 357, "armv7l": 386}
LICENSE = b"Apache\0"


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _block(rule: Rule) -> bytes:
    """Return rule.allow when a request matches `rule`, else fall through to the next block."""
    checks: list[tuple[int, int, int, int]] = []  # (code, dst, src, imm); all jump to the end
    checks.append((_JNE_K, 2, 0, _TYPE_BITS[rule.type]))
    access = sum(_ACCESS_BITS[c] for c in rule.access)
    if access != ACC_MKNOD | ACC_READ | ACC_WRITE:
        checks.append((_ALU32_MOV_X, 1, 3, 0))  # r1 = requested & rule's access
        checks.append((_ALU32_AND_K, 1, 0, access))
        if rule.allow:
            # An allow matches when it grants everything asked: r1 == r3 (v1's match_exception).
            checks.append((_JNE_X, 1, 3, 0))
        else:
            # A deny matches when it touches anything asked: r1 != 0, as v1's
            # match_exception_partial (so "w" denied also denies an O_RDWR open).
            checks.append((_JEQ_K, 1, 0, 0))
    if rule.major != WILDCARD:
        checks.append((_JNE_K, 4, 0, rule.major))
    if rule.minor != WILDCARD:
        checks.append((_JNE_K, 5, 0, rule.minor))
    tail = [_insn(_ALU32_MOV_K, 0, imm=int(rule.allow)), _insn(_EXIT)]
    length = len(checks) + len(tail)
    out = []
    for i, (code, dst, src, imm) in enumerate(checks):
        is_jump = code in (_JEQ_K, _JNE_K, _JNE_X)
        out.append(_insn(code, dst, src, length - i - 1 if is_jump else 0, imm))
    return b"".join(out + tail)


def assemble(emu: Emulator) -> bytes:
    """The program's instructions for the emulated state."""
    prologue = [
        _insn(_LDX_MEM_W, 2, 1, 0),  # r2 = access_type
        _insn(_ALU32_AND_K, 2, imm=0xFFFF),  # r2 = device type
        _insn(_LDX_MEM_W, 3, 1, 0),  # r3 = access_type
        _insn(_ALU32_RSH_K, 3, imm=16),  # r3 = requested access
        _insn(_LDX_MEM_W, 4, 1, 4),  # r4 = major
        _insn(_LDX_MEM_W, 5, 1, 8),  # r5 = minor
    ]
    # The emulator leaves only exceptions to the default, and they never
    # overlap in outcome, so their order does not matter.
    blocks = [_block(rule) for rule in emu.rules()]
    epilogue = [_insn(_ALU32_MOV_K, 0, imm=int(emu.default_allow)), _insn(_EXIT)]
    return b"".join(prologue + blocks + epilogue)


# --- bpf(2) -------------------------------------------------------------------------------

_libc = None


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {os.uname().machine}")
    ret = _libc.syscall(ctypes.c_long(number), ctypes.c_long(cmd), attr,
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(fmt: str, *values) -> ctypes.Array:
    buf = ctypes.create_string_buffer(128)  # zero tail: the kernel insists on it
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def load(insns: bytes) -> int:
    """BPF_PROG_LOAD; the new program's fd.  On failure, the verifier's last words."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(LICENSE, len(LICENSE))
    count = len(insns) // 8

    def attempt(log_size: int) -> int:
        log = ctypes.create_string_buffer(log_size) if log_size else None
        attr = _attr("<IIQQIIQ", BPF_PROG_TYPE_CGROUP_DEVICE, count, ctypes.addressof(code),
                     ctypes.addressof(lic), 1 if log else 0, log_size,
                     ctypes.addressof(log) if log else 0)
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as e:
            if log is not None and log.value:
                last = log.value.decode(errors="replace").strip().splitlines()[-1]
                raise OSError(e.errno, f"{e.strerror} (verifier: {last})") from None
            raise

    try:
        return attempt(0)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):  # no privilege; a log would not help
            raise
        return attempt(1 << 16)


def attached(dir_fd: int) -> list[int]:
    """IDs of the device programs attached to the cgroup open at `dir_fd`."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr("<IIIIQI", dir_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), len(ids))
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:min(count, len(ids))])


def _detach(dir_fd: int, prog_id: int) -> None:
    prog_fd = _bpf(BPF_PROG_GET_FD_BY_ID, _attr("<III", prog_id, 0, 0))
    try:
        _bpf(BPF_PROG_DETACH, _attr("<III", dir_fd, prog_fd, BPF_CGROUP_DEVICE))
    finally:
        os.close(prog_fd)


def apply(dirpath: str, emu: Emulator) -> None:
    """Attach a filter for `emu` to the cgroup at `dirpath`, replacing earlier ones.

    The new program goes on before the old ones come off: with ALLOW_MULTI all
    attached programs must allow, so the cgroup is never less restricted than
    either rule set in between.
    """
    try:
        dir_fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise field_error("devices", f"cannot open {dirpath}: {e.strerror}") from None
    try:
        step = "query attached device programs"
        old = attached(dir_fd)
        step = "load the device filter program"
        prog_fd = load(assemble(emu))
        try:
            step = "attach the device filter"
            _bpf(BPF_PROG_ATTACH, _attr("<IIII", dir_fd, prog_fd, BPF_CGROUP_DEVICE,
                                        BPF_F_ALLOW_MULTI))
        finally:
            os.close(prog_fd)  # the attachment holds its own reference
        step = "detach the previous device filter"
        for prog_id in old:
            _detach(dir_fd, prog_id)
    except OSError as e:
        raise field_error("devices", f"cannot {step} on {dirpath}: {e.strerror}") from None
    finally:
        os.close(dir_fd)

