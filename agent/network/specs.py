"""network.proto's messages -> dataplane.topology's values, with what the store must enforce.

Where data comes from and where it goes: the Network servicer (agent/network/service.py) hands
each object of a request to the function of its kind here; it gets back the checked domain
value, the objects it refers to (`refs`) and the values it must hold alone (`unique`), and
stores the message with both (agent/store.py checks them inside the batch's transaction). The
reconciler later turns the same stored bytes into the same values with the same functions.

The domain types check their own fields (style.md). What they cannot see is checked here: the
proto's encoding (an UNSPECIFIED enum is a required field left unset; an `optional` field that
is unset takes its documented default; a oneof), and this host (`Host`: an MTU above what the
underlay carries is FAILED_PRECONDITION, a tunnel endpoint at this host's own address is
INVALID_ARGUMENT).

Errors are the store's `Invalid` or `Precondition`, whose `field` is the path inside the object
as network.proto spells it (`rules[2].port_range_min`, `allowed_address_pairs[0].mac`); the
servicer puts the object's position in front (`ports[3].`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

import dataplane.topology as t
from agent.store import Invalid, Precondition, Ref, Unique
from andromede.v1 import common_pb2, network_pb2

T = TypeVar("T")
C = TypeVar("C")
OnNetwork = TypeVar("OnNetwork", t.Port, t.L2Entry)

_DIRECTIONS = {
    common_pb2.DIRECTION_INGRESS: t.Direction.INGRESS,
    common_pb2.DIRECTION_EGRESS: t.Direction.EGRESS,
}
_ETHERTYPES = {network_pb2.ETHERTYPE_IPV4: 4, network_pb2.ETHERTYPE_IPV6: 6}


@dataclass(frozen=True, slots=True)
class Host:
    """What the checks need to know about this host (node.proto's Capabilities): the largest
    network MTU its underlay carries, and its own tunnel address (None: not configured)."""

    max_network_mtu: int = t.DEFAULT_MTU
    tunnel_ip: t.IPAddress | None = None


@dataclass(frozen=True, slots=True)
class Checked(Generic[T]):
    """One checked object: its domain value, what it refers to, what it holds alone."""

    value: T
    refs: tuple[Ref, ...] = ()
    unique: tuple[Unique, ...] = ()


# --- the kinds ---------------------------------------------------------------------------------


def network(message: network_pb2.TenantNetwork, host: Host) -> Checked[t.TenantNetwork]:
    with _fields():
        value = t.TenantNetwork(
            message.id, message.tenant_id, message.vni, message.mtu or t.DEFAULT_MTU
        )
    if value.mtu > host.max_network_mtu:
        raise Precondition("mtu", (
            f"{value.mtu} is above this host's max_network_mtu {host.max_network_mtu} (its "
            f"underlay's MTU less the VXLAN overhead); use at most {host.max_network_mtu}"
        ))  # fmt: skip
    return Checked(value, unique=(Unique("vni", "network.vni", str(value.vni)),))


def port(message: network_pb2.Port, host: Host) -> Checked[t.Port]:
    with _fields():
        value = t.Port(
            id=message.id,
            tenant_id=message.tenant_id,
            network_id=message.network_id,
            mac=message.mac,
            fixed_ips=tuple(message.fixed_ips),
            allowed_address_pairs=tuple(
                _address_pair(i, pair) for i, pair in enumerate(message.allowed_address_pairs)
            ),
            security_group_ids=tuple(message.security_group_ids),
            port_security_enabled=_optional(message, "port_security_enabled", True),
            admin_state_up=_optional(message, "admin_state_up", True),
            binding=_binding(message),
        )
    return _on_network(
        value,
        refs=[Ref(f"security_group_ids[{i}]", "security_group", group)
              for i, group in enumerate(value.security_group_ids)],
        unique=[Unique(f"fixed_ips[{i}]", f"ip@{value.network_id}", str(ip))
                for i, ip in enumerate(value.fixed_ips)],
    )  # fmt: skip


def security_group(message: network_pb2.SecurityGroup, host: Host) -> Checked[t.SecurityGroup]:
    with _fields():
        value = t.SecurityGroup(
            id=message.id,
            tenant_id=message.tenant_id,
            rules=tuple(_rule(i, rule) for i, rule in enumerate(message.rules)),
            stateful=_optional(message, "stateful", True),
            member_ips=tuple(message.member_ips),
        )
    # A rule may name its own group, which needs no reference; each other group once, by the
    # first rule that names it.
    remote: dict[str, str] = {}
    for i, rule in enumerate(value.rules):
        if rule.remote_group_id not in (None, value.id):
            remote.setdefault(rule.remote_group_id, f"rules[{i}].remote_group_id")
    return Checked(value, refs=tuple(Ref(f, "security_group", g) for g, f in remote.items()))


def tunnel_endpoint(message: network_pb2.TunnelEndpoint, host: Host) -> Checked[t.TunnelEndpoint]:
    with _fields():
        value = t.TunnelEndpoint(message.id, message.ip)
        if value.ip == host.tunnel_ip:
            raise t.Invalid("ip", f"{value.ip} is this host's own tunnel_ip; list only the "
                                  f"other hosts' endpoints")  # fmt: skip
    return Checked(value, unique=(Unique("ip", "tunnel_endpoint.ip", str(value.ip)),))


def l2_entry(message: network_pb2.L2Entry, host: Host) -> Checked[t.L2Entry]:
    # Its ip_addresses are not unique: network.proto promises that of ports' fixed IPs only.
    with _fields():
        value = t.L2Entry(message.id, message.network_id, message.mac,
                          message.tunnel_endpoint_id, tuple(message.ip_addresses))  # fmt: skip
    endpoint = Ref("tunnel_endpoint_id", "tunnel_endpoint", value.tunnel_endpoint_id)
    return _on_network(value, refs=[endpoint], unique=[])


def rate_limit(message: network_pb2.RateLimit, host: Host) -> Checked[t.RateLimit]:
    with _fields():
        value = t.RateLimit(
            id=message.id,
            tenant_id=message.tenant_id,
            direction=_choice("direction", message.direction, _DIRECTIONS, common_pb2.Direction),
            cir_bytes_per_s=message.cir_bytes_per_s,
            cbs_bytes=message.cbs_bytes,
            pir_bytes_per_s=_optional(message, "pir_bytes_per_s", None),
            pbs_bytes=_optional(message, "pbs_bytes", None),
        )
    direction = common_pb2.Direction.Name(message.direction)
    scope = f"rate_limit.direction@{value.tenant_id}"  # one per (tenant, direction)
    return Checked(value, unique=(Unique("direction", scope, direction),))


# --- parts -------------------------------------------------------------------------------------


def _address_pair(i: int, pair: network_pb2.AllowedAddressPair) -> t.AddressPair:
    with _fields(f"allowed_address_pairs[{i}]."):
        return t.AddressPair(pair.ip_prefix, pair.mac)


def _binding(message: network_pb2.Port) -> t.VmNicBinding | t.TapBinding | None:
    which = message.WhichOneof("binding")
    if which == "vm_nic":
        return t.VmNicBinding(message.vm_nic.vm_id, message.vm_nic.nic_id)
    if which == "tap":
        return t.TapBinding(message.tap.interface_name)
    return None  # stored, not plugged


def _rule(i: int, rule: network_pb2.SecurityGroupRule) -> t.SecurityGroupRule:
    remote = rule.WhichOneof("remote")
    with _fields(f"rules[{i}]."):
        return t.SecurityGroupRule(
            direction=_choice("direction", rule.direction, _DIRECTIONS, common_pb2.Direction),
            ethertype=_choice("ethertype", rule.ethertype, _ETHERTYPES, network_pb2.Ethertype),
            protocol=_optional(rule, "protocol", None),
            port_range_min=_optional(rule, "port_range_min", None),
            port_range_max=_optional(rule, "port_range_max", None),
            remote_cidr=rule.remote_cidr if remote == "remote_cidr" else None,
            remote_group_id=rule.remote_group_id if remote == "remote_group_id" else None,
        )


def _on_network(
    value: OnNetwork, refs: Iterable[Ref], unique: Iterable[Unique]
) -> Checked[OnNetwork]:
    """A port or an L2 entry: it needs its network, and its MAC is unique within the network
    among ports and L2 entries alike (one scope for both)."""
    return Checked(
        value,
        refs=(Ref("network_id", "network", value.network_id), *refs),
        unique=(Unique("mac", f"mac@{value.network_id}", value.mac), *unique),
    )


def _optional(message: Message, name: str, unset: C) -> C:
    """An `optional` field's value, or what network.proto says its absence means."""
    return getattr(message, name) if message.HasField(name) else unset


def _choice(name: str, value: int, choices: Mapping[int, C], enum: EnumTypeWrapper) -> C:
    """The domain value of a required enum; UNSPECIFIED (unset) or an unknown number is a
    fault naming the field."""
    if value in choices:
        return choices[value]
    got = enum.Name(value) if value in enum.values() else str(value)
    raise t.Invalid(name, f"required: {' or '.join(map(enum.Name, choices))}, got {got}")


@contextmanager
def _fields(prefix: str = "") -> Iterator[None]:
    """Turn the domain's faults inside the block into the store's `Invalid`, with `prefix` in
    front of the field (the path from the object down to the part the block checks)."""
    try:
        yield
    except t.Invalid as e:
        raise Invalid(prefix + e.field, str(e).removeprefix(f"{e.field}: ")) from None
