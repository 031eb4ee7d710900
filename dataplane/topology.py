"""What a host's tenant networks are, as self-validating values: the compiler's input.

The Network service turns each stored protobuf (network.proto) into these types
(agent/network/specs.py) and the network compiler (dataplane/compile/openflow.py) turns a
`HostState` of them into flows. A bad value cannot exist: every constructor checks its fields
and raises `Invalid(field, message)` naming the field as network.proto does (`mac`,
`rules[2].port_range_min`), so the servicer only has to put the object's position in front.

Addresses are `ipaddress` objects; MACs are lowercase colon strings. Collections are tuples, so
every value is hashable and compares by content (the compiler is deterministic).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from dataplane.policy import Invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_VNI = (1 << 24) - 1
DEFAULT_MTU = 1450
MIN_MTU, MAX_MTU = 576, 9000
MAX_ADDRESSES = 16  # fixed IPs, address pairs, security groups, L2 entry IPs per object
MAX_RULES = 1000
MAX_MEMBER_IPS = 16_384
MIN_RATE, MAX_RATE = 125, 125_000_000_000  # bytes per second: 1 kbit/s .. 1 Tbit/s
MIN_BURST, MAX_BURST = 1518, 1 << 30
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite: they have ports
ICMP_PROTOCOLS = {4: 1, 6: 58}  # ethertype -> its ICMP protocol

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAX_ID_CHARS = 128
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}" % (MAX_ID_CHARS - 1))
"""The API's one id rule (common.proto), for object, tenant and request ids; agent/store.py
checks request ids with it too."""
_IFNAME = re.compile(r"[^/:\s]{1,15}")


class Direction(Enum):
    """Seen from the VM, as in Neutron: INGRESS enters the VM, EGRESS leaves it."""

    INGRESS = "ingress"
    EGRESS = "egress"


# --- field checks ------------------------------------------------------------------------------


def check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise Invalid(name, f"required: 1-{MAX_ID_CHARS} characters A-Z a-z 0-9 . _ : -, starting with a "
                            f"letter or digit, got {_show(value)}")  # fmt: skip
    return value


def check_mac(name: str, value: object) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise Invalid(name, f"must be a MAC in lowercase colon form like fa:16:3e:12:34:56, "
                            f"got {_show(value)}")  # fmt: skip
    if int(value[:2], 16) & 1:
        raise Invalid(name, f"must be a unicast MAC (the lowest bit of the first byte clear), "
                            f"got {value!r}")  # fmt: skip
    if value == "00:00:00:00:00:00":
        raise Invalid(name, "must not be all zeros")
    return value


def check_ip(name: str, value: object) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        if not isinstance(value, str) or "/" in value:
            raise ValueError
        return ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(name, f"must be an IPv4 or IPv6 address without prefix length, "
                            f"got {_show(value)}") from None  # fmt: skip


def check_prefix(name: str, value: object) -> IPNetwork:
    """An address or a CIDR with its host bits zero."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise Invalid(name, f"must be an address or a CIDR with its host bits zero, like "
                            f"198.51.100.0/28, got {_show(value)}") from None  # fmt: skip


def _check_count(name: str, values: tuple, most: int) -> None:
    if len(values) > most:
        raise Invalid(name, f"at most {most} entries, got {len(values)}")


def _check_distinct(name: str, values: tuple) -> None:
    seen: dict[object, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            raise Invalid(f"{name}[{i}]", f"{_show(str(value))} is also at [{seen[value]}]")
        seen[value] = i


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(name, f"must be {low}..{high:,}, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantNetwork:
    id: str
    tenant_id: str
    vni: int
    mtu: int = DEFAULT_MTU

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("tenant_id", self.tenant_id)
        _check_int("vni", self.vni, 1, MAX_VNI)
        _check_int("mtu", self.mtu, MIN_MTU, MAX_MTU)


@dataclass(frozen=True, slots=True)
class AddressPair:
    prefix: IPNetwork
    mac: str = ""  # "": the port's own MAC

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", check_prefix("ip_prefix", self.prefix))
        if self.mac:
            check_mac("mac", self.mac)


@dataclass(frozen=True, slots=True)
class VmNicBinding:
    vm_id: str
    nic_id: str

    def __post_init__(self) -> None:
        check_id("vm_nic.vm_id", self.vm_id)
        check_id("vm_nic.nic_id", self.nic_id)


@dataclass(frozen=True, slots=True)
class TapBinding:
    interface_name: str

    def __post_init__(self) -> None:
        if not isinstance(self.interface_name, str) or not _IFNAME.fullmatch(self.interface_name):
            raise Invalid("tap.interface_name", f"must be a Linux interface name: 1-15 "
                          f"characters, none of them '/', ':' or whitespace, got "
                          f"{_show(self.interface_name)}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Port:
    id: str
    tenant_id: str
    network_id: str
    mac: str
    fixed_ips: tuple[IPAddress, ...] = ()
    allowed_address_pairs: tuple[AddressPair, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    port_security_enabled: bool = True
    admin_state_up: bool = True
    binding: VmNicBinding | TapBinding | None = None

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("tenant_id", self.tenant_id)
        check_id("network_id", self.network_id)
        check_mac("mac", self.mac)
        ips = tuple(check_ip(f"fixed_ips[{i}]", ip) for i, ip in enumerate(self.fixed_ips))
        object.__setattr__(self, "fixed_ips", ips)
        _check_count("fixed_ips", ips, MAX_ADDRESSES)
        _check_distinct("fixed_ips", ips)
        pairs = tuple(self.allowed_address_pairs)
        object.__setattr__(self, "allowed_address_pairs", pairs)
        _check_count("allowed_address_pairs", pairs, MAX_ADDRESSES)
        groups = tuple(self.security_group_ids)
        object.__setattr__(self, "security_group_ids", groups)
        _check_count("security_group_ids", groups, MAX_ADDRESSES)
        for i, group in enumerate(groups):
            check_id(f"security_group_ids[{i}]", group)
        _check_distinct("security_group_ids", groups)
        if not self.port_security_enabled:
            if pairs:
                raise Invalid("allowed_address_pairs", "must be empty with port security off")
            if groups:
                raise Invalid("security_group_ids", "must be empty with port security off")

    @property
    def addresses(self) -> tuple[tuple[str, IPNetwork], ...]:
        """Every (MAC, prefix) the port may send from: its fixed IPs (as /32 or /128) with its
        MAC, then its allowed address pairs."""
        own = tuple((self.mac, ipaddress.ip_network(ip)) for ip in self.fixed_ips)
        return own + tuple((p.mac or self.mac, p.prefix) for p in self.allowed_address_pairs)


@dataclass(frozen=True, slots=True)
class SecurityGroupRule:
    direction: Direction
    ethertype: int  # 4 or 6
    protocol: int | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_cidr: IPNetwork | None = None
    remote_group_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            raise Invalid("direction", f"required: INGRESS or EGRESS, got {_show(self.direction)}")
        if self.ethertype not in (4, 6):
            raise Invalid("ethertype", f"required: IPV4 or IPV6, got {_show(self.ethertype)}")
        if self.protocol is not None:
            _check_int("protocol", self.protocol, 0, 255)
        self._check_ports()
        if self.remote_cidr is not None and self.remote_group_id is not None:
            raise Invalid("remote_cidr", "set remote_cidr or remote_group_id, not both")
        if self.remote_cidr is not None:
            cidr = check_prefix("remote_cidr", self.remote_cidr)
            if cidr.version != self.ethertype:
                raise Invalid("remote_cidr", f"{cidr} is IPv{cidr.version}, the rule IPv{self.ethertype}")
            object.__setattr__(self, "remote_cidr", cidr)
        if self.remote_group_id is not None:
            check_id("remote_group_id", self.remote_group_id)

    def _check_ports(self) -> None:
        low, high = self.port_range_min, self.port_range_max
        if low is None and high is None:
            return
        if self.protocol in PORT_PROTOCOLS:
            if low is None or high is None:
                raise Invalid("port_range_min" if low is None else "port_range_max",
                              "set both ends of the port range, or neither")  # fmt: skip
            _check_int("port_range_min", low, 1, 65535)
            _check_int("port_range_max", high, 1, 65535)
            if low > high:
                raise Invalid("port_range_min", f"{low} is above port_range_max {high}")
        elif self.protocol is not None and self.protocol == ICMP_PROTOCOLS[self.ethertype]:
            if low is None:
                raise Invalid("port_range_min", "an ICMP code (port_range_max) needs a type")
            _check_int("port_range_min", low, 0, 255)
            if high is not None:
                _check_int("port_range_max", high, 0, 255)
        else:
            raise Invalid("port_range_min", f"must be unset with protocol {self.protocol} "
                          f"(ports are for 6, 17, 132, 136; type and code for ICMP)")  # fmt: skip

    @property
    def is_icmp(self) -> bool:
        return self.protocol is not None and self.protocol == ICMP_PROTOCOLS[self.ethertype]


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    id: str
    tenant_id: str
    rules: tuple[SecurityGroupRule, ...] = ()
    stateful: bool = True
    member_ips: tuple[IPAddress, ...] = ()

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("tenant_id", self.tenant_id)
        object.__setattr__(self, "rules", tuple(self.rules))
        _check_count("rules", self.rules, MAX_RULES)
        ips = tuple(check_ip(f"member_ips[{i}]", ip) for i, ip in enumerate(self.member_ips))
        _check_count("member_ips", ips, MAX_MEMBER_IPS)
        object.__setattr__(self, "member_ips", ips)


@dataclass(frozen=True, slots=True)
class TunnelEndpoint:
    id: str
    ip: IPAddress

    def __post_init__(self) -> None:
        check_id("id", self.id)
        object.__setattr__(self, "ip", check_ip("ip", self.ip))


@dataclass(frozen=True, slots=True)
class L2Entry:
    id: str
    network_id: str
    mac: str
    tunnel_endpoint_id: str
    ip_addresses: tuple[IPAddress, ...] = ()

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("network_id", self.network_id)
        check_mac("mac", self.mac)
        check_id("tunnel_endpoint_id", self.tunnel_endpoint_id)
        ips = tuple(check_ip(f"ip_addresses[{i}]", ip) for i, ip in enumerate(self.ip_addresses))
        _check_count("ip_addresses", ips, MAX_ADDRESSES)
        _check_distinct("ip_addresses", ips)
        object.__setattr__(self, "ip_addresses", ips)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An RFC 2698 trTCM on one tenant's traffic in one direction; pir/pbs default to cir/cbs."""

    id: str
    tenant_id: str
    direction: Direction
    cir_bytes_per_s: int
    cbs_bytes: int
    pir_bytes_per_s: int | None = None
    pbs_bytes: int | None = None

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("tenant_id", self.tenant_id)
        if not isinstance(self.direction, Direction):
            raise Invalid("direction", f"required: INGRESS or EGRESS, got {_show(self.direction)}")
        _check_int("cir_bytes_per_s", self.cir_bytes_per_s, MIN_RATE, MAX_RATE)
        _check_int("cbs_bytes", self.cbs_bytes, MIN_BURST, MAX_BURST)
        if self.pir_bytes_per_s is None:
            object.__setattr__(self, "pir_bytes_per_s", self.cir_bytes_per_s)
        _check_int("pir_bytes_per_s", self.pir_bytes_per_s, self.cir_bytes_per_s, MAX_RATE)
        if self.pbs_bytes is None:
            object.__setattr__(self, "pbs_bytes", self.cbs_bytes)
        _check_int("pbs_bytes", self.pbs_bytes, MIN_BURST, MAX_BURST)


# --- a host's whole state ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plugged:
    """Where a port is plugged on br-int, as the OVS driver found it."""

    ofport: int


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(sorted(mapping.items())))


@dataclass(frozen=True, slots=True)
class HostState:
    """Everything the compiler needs about one host, each kind by id: the desired state from
    the store, and from the host itself which ports are plugged at which ofport and the tunnel
    port's ofport. `tenant_tags` gives each tenant its
    24-bit number for flow cookies, `ct_zones` each network its 16-bit conntrack zone (both
    agent-allocated and stable across restarts, so conntrack entries and cookies survive)."""

    networks: Mapping[str, TenantNetwork] = field(default_factory=dict)
    ports: Mapping[str, Port] = field(default_factory=dict)
    security_groups: Mapping[str, SecurityGroup] = field(default_factory=dict)
    tunnel_endpoints: Mapping[str, TunnelEndpoint] = field(default_factory=dict)
    l2_entries: Mapping[str, L2Entry] = field(default_factory=dict)
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    plugged: Mapping[str, Plugged] = field(default_factory=dict)  # port id -> where
    tenant_tags: Mapping[str, int] = field(default_factory=dict)
    ct_zones: Mapping[str, int] = field(default_factory=dict)  # network id -> zone
    tunnel_ofport: int = 0  # 0: no tunnel port yet

    def __post_init__(self) -> None:
        for name in ("networks", "ports", "security_groups", "tunnel_endpoints", "l2_entries",
                     "rate_limits", "plugged", "tenant_tags", "ct_zones"):  # fmt: skip
            object.__setattr__(self, name, _frozen(getattr(self, name)))


def group_members(state: HostState, group_id: str, version: int) -> tuple[IPNetwork, ...]:
    """The members of a security group of one IP version, as a remote group rule sees them:
    its member_ips and the addresses of the host's ports that list it, sorted."""
    group = state.security_groups.get(group_id)
    members: set[IPNetwork] = set()
    if group is not None:
        members.update(ipaddress.ip_network(ip) for ip in group.member_ips if ip.version == version)
        for port in state.ports.values():
            if group_id in port.security_group_ids:
                members.update(p for _, p in port.addresses if p.version == version)
    return tuple(sorted(members, key=lambda p: (int(p.network_address), p.prefixlen)))
