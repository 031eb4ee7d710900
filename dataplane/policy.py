"""The intermediate form of network policy: fields, matches, rules, tables.

Everything the control plane says about packets (security groups, anti-spoofing,
tenant isolation, ClassBench rule sets in the benchmarks) is first turned into this
form; `dataplane.compile` turns it into OpenFlow for OVS and into arrays for the
Numba classifier. The types validate themselves on construction, so a bad value
cannot get past the edge that builds them.

Semantics (the same as OpenFlow's): a packet takes the first rule that matches when
rules are ordered by priority, highest first; among equal priorities the one that
comes first in the table wins (OpenFlow leaves that case undefined; we make it
deterministic). A field a rule does not mention is a wildcard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum


class Invalid(ValueError):
    """A value that cannot exist in the policy form; `field` names what was wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class Field(IntEnum):
    """Packet fields a rule can match. An IPv6 address is four 32-bit words, most
    significant first (the classifier takes fields of at most 32 bits)."""

    IN_PORT = 0
    TENANT = 1  # the VNI of the tenant network the packet belongs to
    ETH_SRC = 2
    ETH_DST = 3
    ETH_TYPE = 4
    IP_SRC = 5
    IP_DST = 6
    IP_PROTO = 7
    L4_SRC = 8
    L4_DST = 9
    IP6_SRC_0 = 10
    IP6_SRC_1 = 11
    IP6_SRC_2 = 12
    IP6_SRC_3 = 13
    IP6_DST_0 = 14
    IP6_DST_1 = 15
    IP6_DST_2 = 16
    IP6_DST_3 = 17

    @property
    def width(self) -> int:
        """Width of the field in bits."""
        return _WIDTHS[self]

    @property
    def max_value(self) -> int:
        return (1 << _WIDTHS[self]) - 1


_WIDTHS = {
    Field.IN_PORT: 32,
    Field.TENANT: 24,
    Field.ETH_SRC: 48,
    Field.ETH_DST: 48,
    Field.ETH_TYPE: 16,
    Field.IP_SRC: 32,
    Field.IP_DST: 32,
    Field.IP_PROTO: 8,
    Field.L4_SRC: 16,
    Field.L4_DST: 16,
    **{Field(n): 32 for n in range(10, 18)},
}


def _check_value(name: str, value: int, width: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, f"must be an integer, got {value!r}")
    if not 0 <= value < (1 << width):
        raise Invalid(name, f"must be 0..{(1 << width) - 1}, got {value}")


# --- matches -------------------------------------------------------------------------
# Each match kind validates itself against a field and describes the values it accepts
# as sorted inclusive ranges, the one view compilers and the reference both use.


@dataclass(frozen=True, slots=True)
class Wildcard:
    """Any value."""

    def validate(self, f: Field) -> None:
        pass

    def ranges(self, f: Field) -> list[tuple[int, int]]:
        return [(0, f.max_value)]



@dataclass(frozen=True, slots=True)
class Exact:
    value: int

    def validate(self, f: Field) -> None:
        _check_value(f.name.lower(), self.value, f.width)

    def ranges(self, f: Field) -> list[tuple[int, int]]:
        return [(self.value, self.value)]



@dataclass(frozen=True, slots=True)
class Prefix:
    """The top `length` bits equal those of `value`; the other bits of `value` must be 0."""

    value: int
    length: int

    def validate(self, f: Field) -> None:
        name = f.name.lower()
        _check_value(name, self.value, f.width)
        if not 0 <= self.length <= f.width:
            raise Invalid(f"{name}.length", f"must be 0..{f.width}, got {self.length}")
        if self.value & ((1 << (f.width - self.length)) - 1):
            raise Invalid(name, f"has bits set past the /{self.length} prefix")

    def ranges(self, f: Field) -> list[tuple[int, int]]:
        return [(self.value, self.value | ((1 << (f.width - self.length)) - 1))]



@dataclass(frozen=True, slots=True)
class Range:
    """lo <= value <= hi, both inclusive (port ranges)."""

    lo: int
    hi: int

    def validate(self, f: Field) -> None:
        name = f.name.lower()
        _check_value(f"{name}.lo", self.lo, f.width)
        _check_value(f"{name}.hi", self.hi, f.width)
        if self.lo > self.hi:
            raise Invalid(name, f"range is empty: lo {self.lo} > hi {self.hi}")

    def ranges(self, f: Field) -> list[tuple[int, int]]:
        return [(self.lo, self.hi)]



@dataclass(frozen=True, slots=True)
class Masked:
    """value & mask == self.value; bits of `value` outside `mask` must be 0."""

    value: int
    mask: int

    def validate(self, f: Field) -> None:
        name = f.name.lower()
        _check_value(name, self.value, f.width)
        _check_value(f"{name}.mask", self.mask, f.width)
        if self.value & ~self.mask:
            raise Invalid(name, f"value {self.value:#x} has bits outside mask {self.mask:#x}")

    def ranges(self, f: Field) -> list[tuple[int, int]]:
        """Maximal runs of accepted values. A mask whose zero bits are all at the bottom
        gives one range; each zero bit above the lowest set bit of the mask doubles the
        count, so such masks are meant for narrow fields (IP protocol, TCP flags)."""
        low_free = 0  # trailing zero bits of the mask: these vary freely inside one run
        while low_free < f.width and not (self.mask >> low_free) & 1:
            low_free += 1
        free_high = [b for b in range(low_free, f.width) if not (self.mask >> b) & 1]
        if len(free_high) > 16:
            raise Invalid(f.name.lower(), f"mask {self.mask:#x} expands to more than 65536 ranges")
        out = []
        for combo in range(1 << len(free_high)):
            base = self.value
            for i, b in enumerate(free_high):
                if (combo >> i) & 1:
                    base |= 1 << b
            out.append((base, base | ((1 << low_free) - 1)))
        out.sort()
        return out



Match = Wildcard | Exact | Prefix | Range | Masked
ANY = Wildcard()

# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allow:
    pass


@dataclass(frozen=True, slots=True)
class Drop:
    pass


@dataclass(frozen=True, slots=True)
class Output:
    port: int

    def __post_init__(self) -> None:
        _check_value("output.port", self.port, 32)


@dataclass(frozen=True, slots=True)
class Meter:
    meter: int

    def __post_init__(self) -> None:
        _check_value("meter", self.meter, 32)


Action = Allow | Drop | Output | Meter

# --- rules and tables --------------------------------------------------------------------

MAX_PRIORITY = 65535  # OpenFlow's 16-bit priority


@dataclass(frozen=True, slots=True)
class Rule:
    """Matches (fields not named are wildcards), a priority and the actions to take."""

    priority: int
    matches: Mapping[Field, Match] = field(default_factory=dict)
    actions: tuple[Action, ...] = (Allow(),)

    def __post_init__(self) -> None:
        _check_value("priority", self.priority, 16)
        # Freeze the mapping in a canonical order so equal rules compare and hash equal.
        items = tuple(sorted(((Field(f), m) for f, m in dict(self.matches).items()), key=lambda fm: fm[0]))
        for f, m in items:
            if not isinstance(m, (Wildcard, Exact, Prefix, Range, Masked)):
                raise Invalid(f.name.lower(), f"not a match kind: {m!r}")
            m.validate(f)
        object.__setattr__(self, "matches", _FrozenMatches(items))
        if not isinstance(self.actions, tuple):
            object.__setattr__(self, "actions", tuple(self.actions))

    def match(self, f: Field) -> Match:
        return self.matches.get(f, ANY)

    def matches_packet(self, packet: Mapping[Field, int]) -> bool:
        """The obvious, slow check (the reference the compiled forms are tested against).
        A field the packet lacks matches only a wildcard."""
        for f, m in self.matches.items():
            if isinstance(m, Wildcard):
                continue
            if f not in packet:
                return False
            v = packet[f]
            if not any(lo <= v <= hi for lo, hi in m.ranges(f)):
                return False
        return True


class _FrozenMatches(dict):
    """An immutable, hashable field -> match mapping."""

    def __init__(self, items: Iterable[tuple[Field, Match]]) -> None:
        super().__init__(items)

    def _readonly(self, *args, **kwargs):
        raise TypeError("rule matches are immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


@dataclass(frozen=True, slots=True)
class Table:
    """An ordered list of rules; see the module docstring for first-match semantics."""

    rules: tuple[Rule, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        for i, r in enumerate(self.rules):
            if not isinstance(r, Rule):
                raise Invalid(f"rules[{i}]", f"not a Rule: {r!r}")

    def __len__(self) -> int:
        return len(self.rules)

    def search_order(self) -> list[int]:
        """Rule positions in the order a first-match search visits them."""
        return sorted(range(len(self.rules)), key=lambda i: (-self.rules[i].priority, i))

    def first_match(self, packet: Mapping[Field, int]) -> int:
        """Position of the rule that applies to `packet`, or -1 (slow reference)."""
        for i in self.search_order():
            if self.rules[i].matches_packet(packet):
                return i
        return -1
