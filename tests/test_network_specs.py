"""network.proto's messages become checked domain values, or a fault that names the field as
the proto spells it and says what would be right; every valid message converts."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.network import specs
from agent.store import Invalid, Precondition, Ref, Unique
from andromede.v1 import common_pb2, network_pb2
from dataplane import topology as t

HOST = specs.Host(max_network_mtu=8950, tunnel_ip=ipaddress.ip_address("192.0.2.1"))
MAC = "fa:16:3e:00:00:01"
INGRESS, EGRESS = common_pb2.DIRECTION_INGRESS, common_pb2.DIRECTION_EGRESS
IPV4, IPV6 = network_pb2.ETHERTYPE_IPV4, network_pb2.ETHERTYPE_IPV6
Rule = network_pb2.SecurityGroupRule
Pair = network_pb2.AllowedAddressPair


def network(**fields: object) -> network_pb2.TenantNetwork:
    return network_pb2.TenantNetwork(**{"id": "n1", "tenant_id": "t1", "vni": 100, **fields})


def port(**fields: object) -> network_pb2.Port:
    return network_pb2.Port(**{"id": "p1", "tenant_id": "t1", "network_id": "n1", "mac": MAC,
                               **fields})  # fmt: skip


def group(*rules: Rule, **fields: object) -> network_pb2.SecurityGroup:
    return network_pb2.SecurityGroup(id="g1", tenant_id="t1", rules=rules, **fields)


def tcp(**fields: object) -> Rule:
    return Rule(**{"direction": INGRESS, "ethertype": IPV4, "protocol": 6, **fields})


def endpoint(ip: str) -> network_pb2.TunnelEndpoint:
    return network_pb2.TunnelEndpoint(id="host-b", ip=ip)


def l2_entry(**fields: object) -> network_pb2.L2Entry:
    return network_pb2.L2Entry(**{"id": "e1", "network_id": "n1", "mac": MAC,
                                  "tunnel_endpoint_id": "host-b", **fields})  # fmt: skip


def rate_limit(**fields: object) -> network_pb2.RateLimit:
    return network_pb2.RateLimit(**{"id": "r1", "tenant_id": "t1", "direction": EGRESS,
                                    "cir_bytes_per_s": 125_000, "cbs_bytes": 15_000,
                                    **fields})  # fmt: skip


CHECKS = {
    network_pb2.TenantNetwork: specs.network,
    network_pb2.Port: specs.port,
    network_pb2.SecurityGroup: specs.security_group,
    network_pb2.TunnelEndpoint: specs.tunnel_endpoint,
    network_pb2.L2Entry: specs.l2_entry,
    network_pb2.RateLimit: specs.rate_limit,
}


def check(message: object) -> specs.Checked:
    return CHECKS[type(message)](message, HOST)


BAD = [
    # (message, the field named, a piece of the message)
    (network(id=""), "id", "required"),
    (network(id="no spaces"), "id", "A-Z"),
    (network(tenant_id=""), "tenant_id", "required"),
    (network(vni=0), "vni", "must be 1..16,777,215, got 0"),
    (network(vni=1 << 24), "vni", "must be 1..16,777,215, got 16777216"),
    (network(mtu=575), "mtu", "must be 576..9,000"),
    (network(mtu=9001), "mtu", "must be 576..9,000"),
    (port(mac=""), "mac", "lowercase colon form"),
    (port(mac="FA:16:3E:00:00:01"), "mac", "lowercase colon form"),
    (port(mac="01:00:5e:00:00:01"), "mac", "must be a unicast MAC"),
    (port(mac="ff:ff:ff:ff:ff:ff"), "mac", "must be a unicast MAC"),
    (port(mac="00:00:00:00:00:00"), "mac", "all zeros"),
    (port(network_id=""), "network_id", "required"),
    (port(tenant_id="x" * 129), "tenant_id", "1-128 characters"),
    (port(fixed_ips=["198.51.100.10", "198.51.100.300"]), "fixed_ips[1]", "IPv4 or IPv6"),
    (port(fixed_ips=["198.51.100.0/24"]), "fixed_ips[0]", "without prefix length"),
    (port(fixed_ips=["2001:db8::1", "2001:DB8::1"]), "fixed_ips[1]", "also at [0]"),
    (port(fixed_ips=[f"198.51.100.{i}" for i in range(17)]), "fixed_ips", "at most 16"),
    (port(allowed_address_pairs=[Pair(ip_prefix="198.51.100.0/28"),
                                 Pair(ip_prefix="198.51.100.1/28")]),
     "allowed_address_pairs[1].ip_prefix", "host bits zero"),  # fmt: skip
    (port(allowed_address_pairs=[Pair(ip_prefix="")]),
     "allowed_address_pairs[0].ip_prefix", "CIDR"),  # fmt: skip
    (port(allowed_address_pairs=[Pair(ip_prefix="198.51.100.9", mac="33:33:00:00:00:01")]),
     "allowed_address_pairs[0].mac", "unicast"),  # fmt: skip
    (port(allowed_address_pairs=[Pair(ip_prefix=f"198.51.100.{i}") for i in range(17)]),
     "allowed_address_pairs", "at most 16"),  # fmt: skip
    (port(security_group_ids=["g1", "g2", "g1"]), "security_group_ids[2]", "also at [0]"),
    (port(security_group_ids=[""]), "security_group_ids[0]", "required"),
    (port(security_group_ids=[f"g{i}" for i in range(17)]), "security_group_ids", "at most 16"),
    (port(port_security_enabled=False, security_group_ids=["g1"]), "security_group_ids",
     "empty with port security off"),  # fmt: skip
    (port(port_security_enabled=False, allowed_address_pairs=[Pair(ip_prefix="198.51.100.9")]),
     "allowed_address_pairs", "empty with port security off"),  # fmt: skip
    (port(vm_nic=network_pb2.VmNicBinding(nic_id="eth0")), "vm_nic.vm_id", "required"),
    (port(vm_nic=network_pb2.VmNicBinding(vm_id="vm1")), "vm_nic.nic_id", "required"),
    (port(tap=network_pb2.TapBinding()), "tap.interface_name", "1-15 characters"),
    (port(tap=network_pb2.TapBinding(interface_name="tap/0")), "tap.interface_name", "'/'"),
    (port(tap=network_pb2.TapBinding(interface_name="t" * 16)), "tap.interface_name", "1-15"),
    (group(tcp(direction=0)), "rules[0].direction",
     "required: DIRECTION_INGRESS or DIRECTION_EGRESS, got DIRECTION_UNSPECIFIED"),
    (group(tcp(), tcp(direction=7)), "rules[1].direction", "got 7"),
    (group(tcp(ethertype=0)), "rules[0].ethertype", "ETHERTYPE_IPV4 or ETHERTYPE_IPV6"),
    (group(tcp(protocol=256)), "rules[0].protocol", "must be 0..255"),
    (group(tcp(port_range_min=22)), "rules[0].port_range_max", "both ends"),
    (group(tcp(port_range_max=22)), "rules[0].port_range_min", "both ends"),
    (group(tcp(port_range_min=0, port_range_max=22)), "rules[0].port_range_min", "1..65,535"),
    (group(tcp(port_range_min=1, port_range_max=65536)), "rules[0].port_range_max", "1..65,535"),
    (group(tcp(port_range_min=443, port_range_max=80)), "rules[0].port_range_min",
     "443 is above port_range_max 80"),  # fmt: skip
    (group(tcp(protocol=47, port_range_min=1, port_range_max=2)), "rules[0].port_range_min",
     "must be unset with protocol 47"),  # fmt: skip
    (group(Rule(direction=INGRESS, ethertype=IPV4, port_range_min=1, port_range_max=2)),
     "rules[0].port_range_min", "must be unset with protocol None"),  # fmt: skip
    (group(tcp(protocol=1, port_range_max=0)), "rules[0].port_range_min", "needs a type"),
    (group(tcp(protocol=1, port_range_min=256)), "rules[0].port_range_min", "0..255"),
    (group(tcp(ethertype=IPV6, protocol=58, port_range_min=128, port_range_max=256)),
     "rules[0].port_range_max", "0..255"),  # fmt: skip
    (group(tcp(remote_cidr="203.0.113.1/24")), "rules[0].remote_cidr", "host bits zero"),
    (group(tcp(remote_cidr="2001:db8::/32")), "rules[0].remote_cidr", "is IPv6, the rule IPv4"),
    (group(tcp(remote_cidr="")), "rules[0].remote_cidr", "CIDR"),
    (group(tcp(remote_group_id="")), "rules[0].remote_group_id", "required"),
    (group(*[tcp()] * 1001), "rules", "at most 1000 entries, got 1001"),
    (group(member_ips=["198.51.100.1", "nope"]), "member_ips[1]", "IPv4 or IPv6"),
    (group(member_ips=["198.51.100.1"] * 16_385), "member_ips", "at most 16384"),
    (endpoint(""), "ip", "IPv4 or IPv6"),
    (endpoint("198.51.100.0/24"), "ip", "without prefix length"),
    (endpoint("192.0.2.1"), "ip", "192.0.2.1 is this host's own tunnel_ip"),
    (l2_entry(network_id=""), "network_id", "required"),
    (l2_entry(tunnel_endpoint_id=""), "tunnel_endpoint_id", "required"),
    (l2_entry(mac="03:00:00:00:00:01"), "mac", "unicast"),
    (l2_entry(ip_addresses=["198.51.100.1", "198.51.100.1"]), "ip_addresses[1]", "also at [0]"),
    (l2_entry(ip_addresses=["x"]), "ip_addresses[0]", "IPv4 or IPv6"),
    (l2_entry(ip_addresses=[f"2001:db8::{i}" for i in range(17)]), "ip_addresses", "at most 16"),
    (rate_limit(direction=0), "direction", "got DIRECTION_UNSPECIFIED"),
    (rate_limit(cir_bytes_per_s=0), "cir_bytes_per_s", "must be 125..125,000,000,000, got 0"),
    (rate_limit(cir_bytes_per_s=125_000_000_001), "cir_bytes_per_s", "125..125,000,000,000"),
    (rate_limit(cbs_bytes=1517), "cbs_bytes", "must be 1518..1,073,741,824"),
    (rate_limit(pir_bytes_per_s=124_999), "pir_bytes_per_s", "must be 125000..125,000,000,000"),
    (rate_limit(pbs_bytes=0), "pbs_bytes", "1518..1,073,741,824, got 0"),
]


@pytest.mark.parametrize(
    ("message", "field", "says"), BAD, ids=[f"{type(m).__name__}-{f}" for m, f, _ in BAD]
)
def test_a_bad_object_is_invalid_naming_its_field(message: object, field: str, says: str) -> None:
    with pytest.raises(Invalid) as err:
        check(message)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert says in str(err.value)


def test_an_mtu_above_what_the_host_carries_is_a_failed_precondition() -> None:
    assert check(network(mtu=8950)).value.mtu == 8950
    with pytest.raises(Precondition) as err:
        check(network(mtu=9000))
    assert str(err.value).startswith("mtu: 9000 is above this host's max_network_mtu 8950")
    with pytest.raises(Precondition):  # the default host carries 1,450: a 1,500-byte underlay
        specs.network(network(mtu=1500), specs.Host())


def test_unset_fields_take_the_documented_defaults() -> None:
    assert check(network()).value.mtu == 1450
    assert (check(port()).value.port_security_enabled, check(port()).value.admin_state_up) == (
        True, True
    )
    off = check(port(port_security_enabled=False, admin_state_up=False)).value
    assert (off.port_security_enabled, off.admin_state_up, off.binding) == (False, False, None)
    assert check(group()).value.stateful is True
    assert check(group(stateful=False)).value.stateful is False
    limit = check(rate_limit()).value
    assert (limit.pir_bytes_per_s, limit.pbs_bytes) == (125_000, 15_000)
    rule = check(group(Rule(direction=EGRESS, ethertype=IPV6))).value.rules[0]
    assert (rule.protocol, rule.port_range_min, rule.remote_cidr, rule.remote_group_id) == (
        None, None, None, None
    )


def test_a_zero_that_is_set_is_not_unset() -> None:
    """`optional` fields: protocol 0 (IPv6 hop-by-hop) is a protocol, not "any"."""
    assert check(group(tcp(protocol=0))).value.rules[0].protocol == 0
    assert check(group(tcp(protocol=1, port_range_min=0))).value.rules[0].port_range_min == 0


def test_the_binding_oneof_becomes_the_domains_binding() -> None:
    nic = check(port(vm_nic=network_pb2.VmNicBinding(vm_id="vm1", nic_id="eth0"))).value.binding
    assert nic == t.VmNicBinding("vm1", "eth0")
    tap = check(port(tap=network_pb2.TapBinding(interface_name="tap0"))).value.binding
    assert tap == t.TapBinding("tap0")


def test_refs_and_unique_values_are_what_the_store_must_enforce() -> None:
    p = check(port(fixed_ips=["198.51.100.10", "2001:DB8::A"], security_group_ids=["g2", "g1"]))
    assert p.refs == (
        Ref("network_id", "network", "n1"),
        Ref("security_group_ids[0]", "security_group", "g2"),
        Ref("security_group_ids[1]", "security_group", "g1"),
    )
    assert p.unique == (  # addresses in their one canonical spelling
        Unique("mac", "mac@n1", MAC),
        Unique("fixed_ips[0]", "ip@n1", "198.51.100.10"),
        Unique("fixed_ips[1]", "ip@n1", "2001:db8::a"),
    )
    e = check(l2_entry(ip_addresses=["198.51.100.10"]))
    assert e.refs == (Ref("network_id", "network", "n1"),
                      Ref("tunnel_endpoint_id", "tunnel_endpoint", "host-b"))  # fmt: skip
    assert e.unique == (Unique("mac", "mac@n1", MAC),)  # a port's MAC scope, not its IPs'
    g = check(group(tcp(remote_group_id="g1"), tcp(remote_group_id="g2"),
                    tcp(remote_group_id="g2"), tcp(remote_cidr="203.0.113.0/24")))  # fmt: skip
    assert g.refs == (Ref("rules[1].remote_group_id", "security_group", "g2"),)
    assert check(network(vni=7)).unique == (Unique("vni", "network.vni", "7"),)
    assert check(endpoint("2001:DB8::2")).unique == (
        Unique("ip", "tunnel_endpoint.ip", "2001:db8::2"),
    )
    assert check(rate_limit()).unique == (
        Unique("direction", "rate_limit.direction@t1", "DIRECTION_EGRESS"),
    )


# --- every valid object converts ---------------------------------------------------------------

ids = st.text(string.ascii_letters + string.digits + "._:-", min_size=1, max_size=128).filter(
    lambda s: s[0].isalnum()
)
macs = st.integers(0, (1 << 48) - 1).map(lambda n: n & ~(1 << 40)).filter(bool).map(
    lambda n: ":".join(f"{b:02x}" for b in n.to_bytes(6, "big"))
)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
addresses = st.one_of(ipv4, ipv6)


def networks_of(version: int) -> st.SearchStrategy[str]:
    return st.tuples(st.ip_addresses(v=version), st.integers(0, 32 if version == 4 else 128)).map(
        lambda a: str(ipaddress.ip_network(f"{a[0]}/{a[1]}", strict=False))
    )


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    ethertype = draw(st.sampled_from([IPV4, IPV6]))
    version = 4 if ethertype == IPV4 else 6
    rule = Rule(direction=draw(st.sampled_from([INGRESS, EGRESS])), ethertype=ethertype)
    kind = draw(st.sampled_from(["any", "ports", "icmp", "other"]))
    if kind == "ports":
        low, high = sorted(draw(st.lists(st.integers(1, 65535), min_size=2, max_size=2)))
        rule.protocol = draw(st.sampled_from(sorted(t.PORT_PROTOCOLS)))
        if draw(st.booleans()):
            rule.port_range_min, rule.port_range_max = low, high
    elif kind == "icmp":
        rule.protocol = t.ICMP_PROTOCOLS[version]
        if draw(st.booleans()):
            rule.port_range_min = draw(st.integers(0, 255))
            if draw(st.booleans()):
                rule.port_range_max = draw(st.integers(0, 255))
    elif kind == "other":
        rule.protocol = draw(st.integers(0, 255).filter(
            lambda p: p not in t.PORT_PROTOCOLS and p != t.ICMP_PROTOCOLS[version]))  # fmt: skip
    remote = draw(st.sampled_from(["none", "cidr", "group"]))
    if remote == "cidr":
        rule.remote_cidr = draw(networks_of(version))
    elif remote == "group":
        rule.remote_group_id = draw(ids)
    return rule


@st.composite
def ports(draw: st.DrawFn) -> network_pb2.Port:
    secure = draw(st.booleans())
    message = network_pb2.Port(
        id=draw(ids), tenant_id=draw(ids), network_id=draw(ids), mac=draw(macs),
        fixed_ips=[str(a) for a in draw(st.lists(addresses, max_size=16, unique=True))],
    )  # fmt: skip
    if not secure or draw(st.booleans()):
        message.port_security_enabled = secure
    if secure:
        prefixes = st.one_of(networks_of(4), networks_of(6))
        message.allowed_address_pairs.extend(
            Pair(ip_prefix=p, mac=draw(st.sampled_from(["", draw(macs)])))
            for p in draw(st.lists(prefixes, max_size=16))
        )
        message.security_group_ids.extend(draw(st.lists(ids, max_size=16, unique=True)))
    binding = draw(st.sampled_from(["none", "vm_nic", "tap"]))
    if binding == "vm_nic":
        message.vm_nic.vm_id, message.vm_nic.nic_id = draw(ids), draw(ids)
    elif binding == "tap":
        message.tap.interface_name = draw(st.text(
            st.characters(blacklist_characters="/:", blacklist_categories=("Z", "Cc", "Cs")),
            min_size=1, max_size=15))  # fmt: skip
    return message


@given(ports())
@settings(max_examples=200, deadline=None)
def test_every_valid_port_converts(message: network_pb2.Port) -> None:
    checked = check(message)
    assert checked.value.mac == message.mac
    assert checked.value.fixed_ips == tuple(ipaddress.ip_address(a) for a in message.fixed_ips)
    assert checked.value.security_group_ids == tuple(message.security_group_ids)
    assert len(checked.refs) == 1 + len(message.security_group_ids)
    assert len(checked.unique) == 1 + len(message.fixed_ips)


@given(ids, ids, st.lists(rules(), max_size=30), st.lists(addresses, max_size=50))
@settings(max_examples=200, deadline=None)
def test_every_valid_security_group_converts(
    id: str, tenant: str, rule_list: list[Rule], members: list[object]
) -> None:
    message = group(*rule_list, member_ips=[str(m) for m in members])
    message.id, message.tenant_id = id, tenant
    checked = check(message)
    assert len(checked.value.rules) == len(rule_list)
    assert {r.id for r in checked.refs} == {r.remote_group_id for r in rule_list
                                            if r.HasField("remote_group_id")} - {id}  # fmt: skip


@given(
    ids, ids, st.integers(1, t.MAX_VNI), st.sampled_from([0, *range(576, 8951, 997), 8950]),
    st.one_of(ipv4, ipv6).filter(lambda a: a != HOST.tunnel_ip), macs,
    st.lists(addresses, max_size=16, unique=True),
)  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_every_valid_network_endpoint_and_l2_entry_converts(
    id: str, other: str, vni: int, mtu: int, ip: object, mac: str, ips: list[object]
) -> None:
    assert check(network(id=id, tenant_id=other, vni=vni, mtu=mtu)).value.vni == vni
    assert check(endpoint(str(ip))).value.ip == ip
    entry = l2_entry(id=id, network_id=other, mac=mac, ip_addresses=[str(a) for a in ips])
    assert check(entry).value.ip_addresses == tuple(ips)


@given(
    ids, st.sampled_from([INGRESS, EGRESS]), st.integers(t.MIN_RATE, t.MAX_RATE),
    st.integers(t.MIN_BURST, t.MAX_BURST), st.data(),
)  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_every_valid_rate_limit_converts(
    tenant: str, direction: int, cir: int, cbs: int, data: st.DataObject
) -> None:
    message = rate_limit(tenant_id=tenant, direction=direction, cir_bytes_per_s=cir,
                         cbs_bytes=cbs)  # fmt: skip
    if data.draw(st.booleans()):
        message.pir_bytes_per_s = data.draw(st.integers(cir, t.MAX_RATE))
    if data.draw(st.booleans()):
        message.pbs_bytes = data.draw(st.integers(t.MIN_BURST, t.MAX_BURST))
    value = check(message).value
    assert value.pir_bytes_per_s >= value.cir_bytes_per_s
    assert value.pbs_bytes == (message.pbs_bytes if message.HasField("pbs_bytes") else cbs)
