"""OpenFlow flows as plain values: what the compiler produces and the OVS driver installs.

A `Flow` is one OpenFlow flow in `ovs-ofctl` syntax, split into the parts the agent reasons
about: its table, priority and match (which together identify it in OVS: an add with the same
three replaces it) and its cookie and actions (what an add changes). Nothing here does I/O.

Cookies (64 bits) say who a flow belongs to, so usage can be read per tenant from flow
statistics and stale flows can be found after any crash:

    bits 63..56  COOKIE_MAGIC: every flow the agent installs (others are not ours to touch)
    bits 55..54  direction: 0 none, 1 ingress (to a VM), 2 egress (from a VM)
    bits 53..30  the tenant's 24-bit tag (0: infrastructure, no tenant)
    bits 29..0   free for the compiler (for instance which rule or port a flow comes from)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

COOKIE_MAGIC = 0xA7
MAX_TABLE = 254
MAX_PRIORITY = 65535
TENANT_TAG_BITS = 24
SERIAL_BITS = 30


class FlowDirection(IntEnum):
    NONE = 0
    INGRESS = 1
    EGRESS = 2


def cookie(tenant_tag: int, direction: FlowDirection, serial: int = 0) -> int:
    """The cookie of a flow owned by tenant `tenant_tag` (0: none) in `direction`."""
    if not 0 <= tenant_tag < 1 << TENANT_TAG_BITS:
        raise ValueError(f"tenant_tag: must be 0..{(1 << TENANT_TAG_BITS) - 1}, got {tenant_tag}")
    if not 0 <= serial < 1 << SERIAL_BITS:
        raise ValueError(f"serial: must be 0..{(1 << SERIAL_BITS) - 1}, got {serial}")
    return (COOKIE_MAGIC << 56) | (int(direction) << 54) | (tenant_tag << SERIAL_BITS) | serial


def is_ours(value: int) -> bool:
    """True for a cookie the agent made (any flow without it is left alone)."""
    return value >> 56 == COOKIE_MAGIC


def cookie_tenant(value: int) -> int:
    return (value >> SERIAL_BITS) & ((1 << TENANT_TAG_BITS) - 1)


def cookie_direction(value: int) -> FlowDirection:
    return FlowDirection((value >> 54) & 0b11)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow. `match` and `actions` are ovs-ofctl text ("" match: everything; "drop" is
    written as actions="drop")."""

    table: int
    priority: int
    match: str
    actions: str
    cookie: int

    def __post_init__(self) -> None:
        if not 0 <= self.table <= MAX_TABLE:
            raise ValueError(f"table: must be 0..{MAX_TABLE}, got {self.table}")
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"priority: must be 0..{MAX_PRIORITY}, got {self.priority}")
        if not self.actions:
            raise ValueError("actions: required (write 'drop' to drop)")
        if not 0 <= self.cookie < 1 << 64:
            raise ValueError(f"cookie: must be a 64-bit value, got {self.cookie}")

    @property
    def key(self) -> tuple[int, int, str]:
        """What identifies the flow inside OVS: table, priority and match."""
        return (self.table, self.priority, self.match)

    def text(self) -> str:
        """The flow as one line of `ovs-ofctl add-flows` input."""
        match = f",{self.match}" if self.match else ""
        return (
            f"table={self.table},priority={self.priority},cookie={self.cookie:#x}{match},"
            f"actions={self.actions}"
        )
