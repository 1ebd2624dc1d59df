"""OCI device rules → the device cgroup's effective state, for v1 and for BPF alike.

Both hierarchies must mean the same thing by the same list, so the rules go
through one emulator of the v1 devices controller (as runc does):

* the state is a default (allow or deny) plus exceptions, keyed by
  (type, major, minor) with a set of access letters;
* a rule of type "a" resets everything to its own default;
* a rule against the default adds an exception, a rule with it removes one;
* removing access that a wider wildcard exception grants is refused, because
  v1 silently ignores it, which would let the caller believe it took effect.

The state starts as deny-all, so a list of allow rules means "only these".
"""

from __future__ import annotations

from corral.runtime.cgroups.common import field_error
from corral.spec.record import Factory, Record

WILDCARD = -1
_ACCESS_ORDER = "rwm"


class Rule(Record):
    type: str  # "a" (all), "b" (block) or "c" (char)
    major: int  # WILDCARD for any
    minor: int
    access: str  # letters of "rwm", canonical order
    allow: bool

    def cgroup_string(self) -> str:
        """As devices.allow / devices.deny / devices.list spell it: "c 1:3 rwm"."""
        major = "*" if self.major == WILDCARD else str(self.major)
        minor = "*" if self.minor == WILDCARD else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"


def _canonical(access: set[str] | str) -> str:
    return "".join(c for c in _ACCESS_ORDER if c in access)


def parse_rules(items: list) -> list[Rule]:
    """linux.resources.devices as Rules; errors name the offending entry."""
    rules = []
    for i, item in enumerate(items):
        where = f"devices[{i}]"
        if not isinstance(item, dict):
            raise field_error(where, "expected an object")
        allow = item.get("allow")
        if not isinstance(allow, bool):
            raise field_error(f"{where}.allow", "expected true or false")
        kind = item.get("type") or "a"
        if kind not in ("a", "b", "c"):
            raise field_error(f"{where}.type", f"{kind!r} is not one of a, b, c")
        numbers = []
        for key in ("major", "minor"):
            value = item.get(key)
            if value is None:
                value = WILDCARD
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    value == WILDCARD or 0 <= value < 2**32):
                raise field_error(f"{where}.{key}", f"invalid device number {value!r}")
            numbers.append(value)
        access = item.get("access")
        if not isinstance(access, str) or not access:
            raise field_error(f"{where}.access", "must not be empty")
        # As runc: letters other than r, w and m ("rwa") mean nothing and are dropped.
        known = _canonical(access)
        if not known and kind != "a":
            continue  # no access to grant or take away
        rules.append(Rule(kind, numbers[0], numbers[1], known or "rwm", allow))
    return rules


Key = tuple[str, int, int]


class Emulator(Record):
    default_allow: bool = False
    exceptions: dict[Key, frozenset[str]] = Factory(dict)

    @classmethod
    def from_rules(cls, rules: list[Rule]) -> Emulator:
        emu = cls()
        for i, rule in enumerate(rules):
            emu.apply(rule, f"devices[{i}]")
        return emu

    @classmethod
    def from_list(cls, text: str) -> Emulator:
        """The state a v1 cgroup reports in devices.list (an allow list).

        A deny-by-default cgroup lists its exceptions; an allow-by-default one
        shows only "a *:* rwm" and hides its deny exceptions, so it can only
        be read as allow-all (and Transition then resets it).
        """
        emu = cls()
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            kind, (major, _, minor), access = parts[0], parts[1].partition(":"), parts[2]
            emu.apply(Rule(kind, WILDCARD if major == "*" else int(major),
                           WILDCARD if minor == "*" else int(minor), _canonical(access), True),
                      "devices.list")
        return emu

    def apply(self, rule: Rule, where: str) -> None:
        if rule.type == "a":
            self.default_allow, self.exceptions = rule.allow, {}
            return
        key = (rule.type, rule.major, rule.minor)
        perms = frozenset(rule.access)
        if rule.allow != self.default_allow:
            self.exceptions[key] = self.exceptions.get(key, frozenset()) | perms
            return
        for wider in ((rule.type, WILDCARD, rule.minor), (rule.type, rule.major, WILDCARD),
                      (rule.type, WILDCARD, WILDCARD)):
            if wider != key and self.exceptions.get(wider, frozenset()) & perms:
                shown = Rule(*wider, _canonical(self.exceptions[wider]), not rule.allow)
                raise field_error(where, f"cannot remove {_canonical(perms)} access from "
                                         f"{rule.cgroup_string()}: it is granted by the wider "
                                         f"rule {shown.cgroup_string()}, which v1 would keep")
        left = self.exceptions.get(key, frozenset()) - perms
        if left:
            self.exceptions[key] = left
        else:
            self.exceptions.pop(key, None)

    def rules(self) -> list[Rule]:
        """The exceptions, each acting against the default, in a stable order."""
        return [Rule(t, major, minor, _canonical(perms), not self.default_allow)
                for (t, major, minor), perms in sorted(self.exceptions.items(),
                                                       key=lambda kv: (kv[0][1], kv[0][2],
                                                                       kv[0][0]))]

    def transition(self, target: Emulator) -> list[Rule]:
        """The fewest v1 writes that turn this state into `target`.

        An allow-by-default source always needs the reset rule: its deny
        exceptions are invisible in devices.list.
        """
        out: list[Rule] = []
        old = self.exceptions
        if self.default_allow or self.default_allow != target.default_allow:
            out.append(Rule("a", WILDCARD, WILDCARD, "rwm", target.default_allow))
            old = {}
        for key, perms in sorted(old.items()):
            dropped = perms - target.exceptions.get(key, frozenset())
            if dropped:
                out.append(Rule(*key, _canonical(dropped), target.default_allow))
        # In the order the config gave them: v1 lists allow rules in the order they
        # were written, and the spec asks for entries applied in the listed order.
        for key, perms in target.exceptions.items():
            gained = perms - old.get(key, frozenset())
            if gained:
                out.append(Rule(*key, _canonical(gained), not target.default_allow))
        return out
