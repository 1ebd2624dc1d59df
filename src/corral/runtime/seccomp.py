"""linux.seccomp, compiled and loaded by libseccomp.

The library is libseccomp itself, through its Python binding (Debian's
`python3-seccomp`): the same BPF that runc and crun get from it, with
architectures, argument comparisons and multiplexed syscalls handled by the
people who maintain them.  The filter is compiled in the runtime, before
the fork, so a bad profile fails `create` cleanly; the process loads it
(see `corral.runtime.process.init`).

As runc does: names libseccomp does not know are skipped (profiles list
syscalls of newer kernels and other architectures), and a rule whose action
is the default action is left out.

Also as runc does (libcontainer/seccomp/patchbpf), when the default action
refuses, syscalls newer than every one the profile names get -ENOSYS, not
the default: a profile written before close_range or clone3 existed would
otherwise answer them EPERM, and programs fall back only on ENOSYS.  The
runtime puts that stub in front of libseccomp's BPF and the process loads
the whole program with seccomp(2) itself, asking the kernel for a listener
when a rule says SCMP_ACT_NOTIFY; the runtime passes the listener on to the
seccomp agent at `listenerPath` (see `send_listener_to_agent`).
"""

from __future__ import annotations

import errno
import os
import struct
import sys

from corral.runtime.errors import ConfigInvalid, RuntimeFailure
from corral.spec.record import Record

_DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
_ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
            "SCMP_ACT_NOTIFY")
# Default actions that let unknown syscalls through: no -ENOSYS stub (as runc's
# isAllowAction; a tracer handles new syscalls itself).
_ALLOWING = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE")
_OPERATORS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE",
              "SCMP_CMP_EQ": "EQ", "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT",
              "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": "CTL_TSYNC", "SECCOMP_FILTER_FLAG_LOG": "CTL_LOG",
          "SECCOMP_FILTER_FLAG_SPEC_ALLOW": "CTL_SSB"}
# seccomp(2) SECCOMP_FILTER_FLAG_* bits
_FLAG_BITS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
              "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
FLAG_NEW_LISTENER = 8

# classic BPF, as the kernel reads struct sock_filter and struct seccomp_data
_BPF_LD_W_ABS, _BPF_JA, _BPF_JEQ, _BPF_JGT, _BPF_JSET, _BPF_RET = 0x20, 0x05, 0x15, 0x25, 0x45, 0x06
_DATA_NR, _DATA_ARCH = 0, 4
_RET_ENOSYS = 0x00050000 | errno.ENOSYS  # SECCOMP_RET_ERRNO | ENOSYS
_X32_SYSCALL_BIT = 0x40000000
_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_S390, _AUDIT_ARCH_S390X = 0x16, 0x80000016
# A jump to the filter libseccomp made, resolved once the stub's length is known.
_TO_FILTER = "filter"


class SeccompProgram(Record):
    """A profile as the kernel loads it: the BPF, the seccomp(2) flags, the agent to notify."""

    bpf: bytes
    flags: int = 0
    listener_path: str = ""
    listener_metadata: str = ""

    @property
    def notifies(self) -> bool:
        return bool(self.flags & FLAG_NEW_LISTENER)


class SeccompAgentFailed(RuntimeFailure):
    """The seccomp agent at listenerPath could not be given the listener."""


def notifies(program: SeccompProgram | None) -> bool:
    return program is not None and program.notifies


def libseccomp():
    """The binding; Debian installs it for the system Python, outside any venv."""
    try:
        import seccomp
    except ImportError:
        if _DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(_DEBIAN_DIST_PACKAGES)
        try:
            import seccomp
        except ImportError:
            raise ConfigInvalid("linux.seccomp: libseccomp's Python binding is missing "
                                "(Debian package python3-seccomp)") from None
    return seccomp


def compile_program(profile: dict, where: str = "linux.seccomp") -> SeccompProgram:
    """The profile compiled for loading: the -ENOSYS stub, then libseccomp's filter."""
    fltr = compile_filter(profile, where)  # checks the whole profile
    flags = _check_notify(profile, where)
    for flag in profile.get("flags") or []:
        flags |= _FLAG_BITS[flag]
    lib = libseccomp()
    return SeccompProgram(bpf=_enosys_stub(lib, profile) + _export(fltr), flags=flags,
                          listener_path=profile.get("listenerPath") or "",
                          listener_metadata=profile.get("listenerMetadata") or "")


def _check_notify(profile: dict, where: str) -> int:
    """runc's limits on SCMP_ACT_NOTIFY; FLAG_NEW_LISTENER when a rule notifies."""
    if profile.get("defaultAction") == "SCMP_ACT_NOTIFY":
        raise ConfigInvalid(f"{where}.defaultAction: SCMP_ACT_NOTIFY cannot be used as "
                            "default action")
    flags = 0
    for i, rule in enumerate(profile.get("syscalls") or []):
        if not isinstance(rule, dict) or rule.get("action") != "SCMP_ACT_NOTIFY":
            continue
        # The process writes to the runtime to hand over the listener: a write held
        # for an agent that has no listener yet would never return.
        if "write" in (rule.get("names") or []):
            raise ConfigInvalid(f"{where}.syscalls[{i}]: SCMP_ACT_NOTIFY cannot be used "
                                "for the write syscall")
        flags = FLAG_NEW_LISTENER
    if flags and not profile.get("listenerPath"):
        raise ConfigInvalid(f"{where}.listenerPath: not set, and SCMP_ACT_NOTIFY needs "
                            "a seccomp agent listening there")
    return flags


def _export(fltr) -> bytes:
    with open(os.memfd_create("seccomp-bpf"), "r+b", buffering=0) as f:
        fltr.export_bpf(f)
        f.seek(0)
        return f.read()


def _enosys_stub(lib, profile: dict) -> bytes:
    """BPF that answers -ENOSYS for syscalls above the highest one the profile names
    (per architecture) and jumps to the filter for the rest; b"" when the default
    action lets unknown syscalls through or is ENOSYS already."""
    if profile.get("defaultAction") in _ALLOWING or \
            profile.get("defaultErrnoRet") == errno.ENOSYS:
        return b""
    ceilings = _highest_syscalls(lib, profile)
    if not ceilings:
        return b""
    sections = [_arch_section(audit, by_mode) for audit, by_mode in ceilings.items()]
    # ld arch; per architecture: jeq ARCH,0,1 + ja SECTION; ja FILTER; the sections
    program: list = [(_BPF_LD_W_ABS, 0, 0, _DATA_ARCH)]
    section_at = 1 + 2 * len(sections) + 1
    for audit, section in zip(ceilings, sections, strict=True):
        program.append((_BPF_JEQ, 0, 1, audit))
        program.append(("ja", section_at))
        section_at += len(section)
    program.append(("ja", _TO_FILTER))
    for section in sections:
        program.extend(section)
    return _assemble(program)


def _highest_syscalls(lib, profile: dict) -> dict[int, dict[str, int]]:
    """{AUDIT_ARCH: {"x32" or "native": the highest syscall number the profile names}}."""
    names = [name for rule in profile.get("syscalls") or [] if isinstance(rule, dict)
             for name in rule.get("names") or []]
    ceilings: dict[int, dict[str, int]] = {}
    for arch_name in profile.get("architectures") or []:
        token = _arch_token(lib, str(arch_name))
        if token is None:
            continue  # compile_filter reports it
        highest = max((_resolve(lib, token, name) for name in names), default=-1)
        if highest <= 0:
            continue  # names no syscall of this architecture (runc skips it too)
        if token == lib.Arch.X32:
            ceilings.setdefault(_AUDIT_ARCH_X86_64, {})["x32"] = highest
        else:
            ceilings.setdefault(token & 0xFFFFFFFF, {})["native"] = highest
    return ceilings


def _arch_token(lib, name: str):
    short = name.removeprefix("SCMP_ARCH_")
    if short == "NATIVE":
        return lib.system_arch()
    return getattr(lib.Arch, short, None)


def _resolve(lib, token, name: str) -> int:
    try:
        return lib.resolve_syscall(token, name)  # negative: not on this architecture
    except (ValueError, RuntimeError, TypeError):
        return -1


def _arch_section(audit: int, by_mode: dict[str, int]) -> list:
    """ld nr; -ENOSYS above the ceiling, else on to the filter.  On x86_64 the x32
    ABI (syscall numbers with bit 30 set) has its own ceiling."""
    section: list = [(_BPF_LD_W_ABS, 0, 0, _DATA_NR)]
    if audit in (_AUDIT_ARCH_S390, _AUDIT_ARCH_S390X):
        # s390 multiplexes syscalls it does not know onto number 0 (setup).
        section += [(_BPF_JEQ, 0, 1, 0), (_BPF_RET, 0, 0, _RET_ENOSYS)]
    if audit != _AUDIT_ARCH_X86_64:
        return section + _ceiling(by_mode["native"])
    native, x32 = by_mode.get("native"), by_mode.get("x32")
    native_part = _ceiling(native) if native else [("ja", _TO_FILTER)]
    x32_part = _ceiling(x32) if x32 else [("ja", _TO_FILTER)]
    return section + [(_BPF_JSET, len(native_part), 0, _X32_SYSCALL_BIT),
                      *native_part, *x32_part]


def _ceiling(highest: int) -> list:
    return [(_BPF_JGT, 0, 1, highest), (_BPF_RET, 0, 0, _RET_ENOSYS), ("ja", _TO_FILTER)]


def _assemble(program: list) -> bytes:
    """struct sock_filter[] in native byte order; ("ja", target) become relative jumps."""
    out = []
    for at, insn in enumerate(program):
        if insn[0] == "ja":
            target = len(program) if insn[1] == _TO_FILTER else insn[1]
            insn = (_BPF_JA, 0, 0, target - at - 1)
        out.append(struct.pack("=HBBI", *insn))
    return b"".join(out)


def compile_filter(profile: dict, where: str = "linux.seccomp"):
    """A seccomp.SyscallFilter for the OCI profile, not loaded yet."""
    lib = libseccomp()
    _check_notify(profile, where)
    default_errno = _int(profile.get("defaultErrnoRet", errno.EPERM), f"{where}.defaultErrnoRet")
    default = _action(lib, profile.get("defaultAction"), default_errno, f"{where}.defaultAction")
    fltr = lib.SyscallFilter(defaction=default)
    # no_new_privs is the process config's to decide, not libseccomp's.
    fltr.set_attr(lib.Attr.CTL_NNP, 0)
    for i, name in enumerate(profile.get("architectures") or []):
        arch = getattr(lib.Arch, str(name).removeprefix("SCMP_ARCH_"), None)
        if arch is None:
            raise ConfigInvalid(f"{where}.architectures[{i}]: unknown architecture {name!r}")
        try:
            fltr.add_arch(arch)
        except (RuntimeError, OSError):
            pass  # the native architecture is in every filter already
    for i, flag in enumerate(profile.get("flags") or []):
        attribute = _FLAGS.get(flag)
        if attribute is None:
            raise ConfigInvalid(f"{where}.flags[{i}]: unsupported flag {flag!r}")
        fltr.set_attr(getattr(lib.Attr, attribute), 1)
    for i, rule in enumerate(profile.get("syscalls") or []):
        here = f"{where}.syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ConfigInvalid(f"{here}: expected an object")
        action_name = rule.get("action")
        action = _action(lib, action_name, _int(rule.get("errnoRet", default_errno),
                                                f"{here}.errnoRet"), f"{here}.action")
        if action_name == profile.get("defaultAction") and "errnoRet" not in rule:
            continue
        raw_args = rule.get("args") or []
        args = [_argument(lib, a, f"{here}.args[{j}]") for j, a in enumerate(raw_args)]
        # libseccomp takes one comparison per argument in a rule; with two on the
        # same argument (docker's profile has them), each becomes its own rule, as runc does.
        indexes = [a.get("index") for a in raw_args]
        rule_args = [[a] for a in args] if len(set(indexes)) < len(indexes) else [args]
        for name in rule.get("names") or []:
            try:
                known = lib.resolve_syscall(lib.Arch.NATIVE, name) >= 0
            except (ValueError, RuntimeError):
                known = False
            if not known:
                continue  # not a syscall libseccomp knows here: skipped, as runc does
            for conditions in rule_args:
                _add_rule(fltr, action, name, conditions, here)
    return fltr


def _add_rule(fltr, action, name: str, conditions: list, where: str) -> None:
    try:
        fltr.add_rule(action, name, *conditions)
    except (RuntimeError, ValueError, OSError) as e:
        if "-17" in str(e) or getattr(e, "errno", None) == errno.EEXIST:
            return  # the same rule twice
        raise ConfigInvalid(f"{where}: cannot add a rule for {name}: {e}") from None


def load(fltr, where: str = "linux.seccomp") -> None:
    try:
        fltr.load()
    except (RuntimeError, OSError) as e:
        raise ConfigInvalid(f"{where}: cannot load the filter: {e}") from None


def _action(lib, name, errno_ret: int, where: str):
    if name not in _ACTIONS:
        raise ConfigInvalid(f"{where}: unknown or unsupported action {name!r}")
    if name == "SCMP_ACT_ERRNO":
        return lib.ERRNO(errno_ret)
    if name == "SCMP_ACT_TRACE":
        return lib.TRACE(errno_ret)
    # Not `.get(name) or ...`: KILL is 0 (SECCOMP_RET_KILL_THREAD), which is falsy and
    # once turned every KILL rule into TRACE (-ENOSYS without a tracer).
    return {
        "SCMP_ACT_KILL": lib.KILL, "SCMP_ACT_KILL_THREAD": lib.KILL,
        "SCMP_ACT_KILL_PROCESS": lib.KILL_PROCESS, "SCMP_ACT_TRAP": lib.TRAP,
        "SCMP_ACT_ALLOW": lib.ALLOW, "SCMP_ACT_LOG": lib.LOG, "SCMP_ACT_NOTIFY": lib.NOTIFY,
    }[name]


def _argument(lib, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigInvalid(f"{where}: expected an object")
    operator = _OPERATORS.get(raw.get("op"))
    if operator is None:
        raise ConfigInvalid(f"{where}.op: unknown operator {raw.get('op')!r}")
    values = [_int(raw.get("index"), f"{where}.index"), getattr(lib, operator),
              _int(raw.get("value", 0), f"{where}.value")]
    if operator == "MASKED_EQ":
        values.append(_int(raw.get("valueTwo", 0), f"{where}.valueTwo"))
    return lib.Arg(*values)


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigInvalid(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def send_listener_to_agent(program: SeccompProgram, pid: int, fd: int, state: dict) -> None:
    """Copy the listener `fd` of process `pid` (pidfd_getfd) and send it to the agent at
    listenerPath with the container process state, over SCM_RIGHTS, as runc does.

    `state` is the container's OCI state; the agent reads runc's
    specs.ContainerProcessState: the fd names, the process, the metadata.
    """
    from corral.runtime.syscalls import pidfd_getfd
    from corral.spec import fastjson

    process_state = {"ociVersion": state.get("ociVersion", ""), "fds": ["seccompFd"],
                     "pid": pid, "metadata": program.listener_metadata, "state": state}
    try:
        listener = pidfd_getfd(pid, fd)
    except OSError as e:
        raise SeccompAgentFailed(f"cannot take the seccomp listener of process {pid}: "
                                 f"{e.strerror}") from None
    try:
        _send_with_fd(program.listener_path, fastjson.dumps(process_state).encode(), listener)
    finally:
        os.close(listener)


def _send_with_fd(path: str, payload: bytes, fd: int) -> None:
    import socket  # only when a profile notifies: it costs start-up time

    # "@name" is an abstract socket, as Go's net.Dial reads it.
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as agent:
        try:
            agent.connect(address)
        except OSError as e:
            raise SeccompAgentFailed(
                "failed to connect with seccomp agent specified in the seccomp profile: "
                f"dial unix {path}: connect: {e.strerror.lower()}") from None
        try:
            agent.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack("i", fd))])
        except OSError as e:
            raise SeccompAgentFailed(f"cannot send seccomp fd to {path}: {e.strerror}") \
                from None
