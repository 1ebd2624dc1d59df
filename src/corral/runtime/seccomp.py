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
"""

from __future__ import annotations

import errno
import sys

from corral.runtime.errors import ConfigInvalid

_DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
_ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
_OPERATORS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE",
              "SCMP_CMP_EQ": "EQ", "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT",
              "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": "CTL_TSYNC", "SECCOMP_FILTER_FLAG_LOG": "CTL_LOG",
          "SECCOMP_FILTER_FLAG_SPEC_ALLOW": "CTL_SSB"}


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


def compile_filter(profile: dict, where: str = "linux.seccomp"):
    """A seccomp.SyscallFilter for the OCI profile, not loaded yet."""
    lib = libseccomp()
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
    return {
        "SCMP_ACT_KILL": lib.KILL, "SCMP_ACT_KILL_THREAD": lib.KILL,
        "SCMP_ACT_KILL_PROCESS": lib.KILL_PROCESS, "SCMP_ACT_TRAP": lib.TRAP,
        "SCMP_ACT_ALLOW": lib.ALLOW, "SCMP_ACT_LOG": lib.LOG,
    }.get(name) or (lib.ERRNO(errno_ret) if name == "SCMP_ACT_ERRNO"
                    else lib.TRACE(errno_ret))


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
