"""A host's tenant networks -> the tables of the userspace packet engine. Pure: state in,
arrays out.

The same `HostState` that `compile/openflow.py` turns into br-int's flows becomes here the
plain arrays the jitted pipeline (kernels/engine.py) walks, with the same verdict for every
IPv4 and IPv6 packet (tests/test_engine_agreement.py asks a real ovs-vswitchd and the engine
about the same packets):

- ports, by ofport: the port's tenant and network, whether it is admin up and has port
  security, its addresses for anti-spoofing, and its *group set* (the security groups it
  is in: ports with the same groups share their rules, so a thousand ports of one group
  cost one group's rules, as the OpenFlow compiler's conjunctions do);
- forwarding, by (network, MAC): a local port (admin up) or a remote port's tunnel
  endpoint; and the L2 entries a tunnel packet may come from (endpoint, VNI, source MAC);
- security groups: one classifier per direction and IP version, one rule per (group set,
  rule, remote prefix), on the fields below; a packet passes if any rule matches. The engine
  keeps no connection state: every packet is judged as a new connection would be
  (OVS's ct_state=+trk+new), which is what a stateful group allows first;
- meters: one per tenant and direction, RFC 2698 trTCM from the tenant's RateLimit.

What the engine leaves to OVS (verdict SLOW): ARP, IPv6 neighbour discovery (ICMPv6 133-137),
other EtherTypes, and broadcast, multicast or unknown destinations (flooding); tunnel
endpoints with IPv6 addresses (the engine encapsulates over an IPv4 underlay only).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from dataplane.compile.classifier import Classifier
from dataplane.compile.openflow import link_local
from dataplane.kernels import hashmap
from dataplane.kernels.classify import ClassifierArrays
from dataplane.meters import MeterSpec
from dataplane.policy import Exact, Field, Prefix, Range, Rule
from dataplane.topology import Direction, HostState, IPNetwork, Port, SecurityGroupRule, group_members

# Columns of EngineArrays.ports (one row per ofport).
PORT_KIND, PORT_TENANT, PORT_NETWORK, PORT_SECURED, PORT_GROUPS, PORT_SPOOF_FIRST, PORT_SPOOF_END = range(7)
PORT_COLS = 7
KIND_NONE, KIND_VM, KIND_VM_DOWN, KIND_TUNNEL = 0, 1, 2, 3
# Columns of EngineArrays.spoof: the (MAC, prefix) pairs a port may send from.
SPOOF_MAC, SPOOF_VERSION, SPOOF_LENGTH, SPOOF_W0 = 0, 1, 2, 3  # W0..W3: the network, as words
SPOOF_COLS = 7
# Columns of EngineArrays.networks (one row per network index).
NET_VNI, NET_TENANT = 0, 1
# Columns of EngineArrays.destinations (the values of the forwarding map).
DEST_KIND, DEST_OFPORT, DEST_GROUPS, DEST_SECURED, DEST_TENANT, DEST_ENDPOINT = range(6)
DEST_LOCAL, DEST_REMOTE, DEST_UNREACHABLE = 0, 1, 2  # unreachable: an IPv6 endpoint (left to OVS)
NO_GROUPS = -1  # port security off: no anti-spoofing and no groups

# The classifiers' fields. IN_PORT holds the group set; the remote address is the destination
# for egress rules and the source for ingress rules.
SG_FIELDS = {
    (Direction.EGRESS, 4): (Field.IN_PORT, Field.IP_DST, Field.IP_PROTO, Field.L4_SRC, Field.L4_DST),
    (Direction.INGRESS, 4): (Field.IN_PORT, Field.IP_SRC, Field.IP_PROTO, Field.L4_SRC, Field.L4_DST),
    (Direction.EGRESS, 6): (Field.IN_PORT, Field.IP6_DST_0, Field.IP6_DST_1, Field.IP6_DST_2, Field.IP6_DST_3,
                            Field.IP_PROTO, Field.L4_SRC, Field.L4_DST),
    (Direction.INGRESS, 6): (Field.IN_PORT, Field.IP6_SRC_0, Field.IP6_SRC_1, Field.IP6_SRC_2, Field.IP6_SRC_3,
                             Field.IP_PROTO, Field.L4_SRC, Field.L4_DST),
}  # fmt: skip
_REMOTE_FIELDS = {key: fields[1 : 2 if key[1] == 4 else 5] for key, fields in SG_FIELDS.items()}

# Meters: index tenant * 2 + direction; a tenant without a rate limit has UNLIMITED ones.
METER_EGRESS, METER_INGRESS = 0, 1


class EngineArrays(NamedTuple):
    """Everything the pipeline reads about the policy (read-only arrays)."""

    ports: np.ndarray  # int64 (max ofport + 1, PORT_COLS)
    spoof: np.ndarray  # int64 (pairs, SPOOF_COLS)
    networks: np.ndarray  # int64 (networks, 2)
    vni_keys: np.ndarray  # hashmap: VNI -> network index
    vni_values: np.ndarray
    forward_keys: np.ndarray  # hashmap: network << 48 | MAC -> destination row
    forward_values: np.ndarray
    destinations: np.ndarray  # int64 (destinations, 6)
    source_keys: np.ndarray  # hashmap: network << 48 | MAC -> tunnel endpoint (IPv4) it may come from
    source_values: np.ndarray
    egress4: ClassifierArrays
    ingress4: ClassifierArrays
    egress6: ClassifierArrays
    ingress6: ClassifierArrays


@dataclass(frozen=True, slots=True, eq=False)
class EngineTables:
    arrays: EngineArrays
    tenants: tuple[str, ...]  # tenant id per tenant index
    meters: tuple[MeterSpec, ...]  # per meter index (tenant * 2 + direction)
    classifiers: dict  # (direction, version) -> Classifier, for tools and tests
    tunnel_ofport: int


def mac_value(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def forward_key(network: int, mac: int) -> int:
    return (network << 48) | mac


def compile_engine(state: HostState) -> EngineTables:
    """The engine's tables for `state`, deterministic."""
    tenants = tuple(sorted(state.tenant_tags))
    tenant_index = {t: i for i, t in enumerate(tenants)}
    network_ids = sorted(state.networks)
    network_index = {n: i for i, n in enumerate(network_ids)}
    networks = np.array([(state.networks[n].vni, tenant_index[state.networks[n].tenant_id]) for n in network_ids],
                        np.int64).reshape(-1, 2)  # fmt: skip
    group_sets = _group_sets(state)

    plugged = {pid: p for pid, p in state.plugged.items() if pid in state.ports
               and state.ports[pid].network_id in state.networks}  # fmt: skip
    size = max([p.ofport for p in plugged.values()] + [state.tunnel_ofport, 0]) + 1
    ports = np.zeros((size, PORT_COLS), np.int64)
    spoof: list[tuple[int, ...]] = []
    for port_id in sorted(plugged):
        port, ofport = state.ports[port_id], plugged[port_id].ofport
        row = ports[ofport]
        row[PORT_KIND] = KIND_VM if port.admin_state_up else KIND_VM_DOWN
        row[PORT_TENANT] = tenant_index[port.tenant_id]
        row[PORT_NETWORK] = network_index[port.network_id]
        row[PORT_SECURED] = port.port_security_enabled
        row[PORT_GROUPS] = group_sets.get(_groups_of(state, port), NO_GROUPS)
        row[PORT_SPOOF_FIRST] = len(spoof)
        if port.port_security_enabled:
            spoof += _spoof_rows(port)
        row[PORT_SPOOF_END] = len(spoof)
    if state.tunnel_ofport:
        ports[state.tunnel_ofport, PORT_KIND] = KIND_TUNNEL

    destinations: list[tuple[int, ...]] = []
    forward: dict[int, int] = {}
    sources: dict[int, int] = {}
    for port_id in sorted(plugged):  # local ports first: they win over an L2 entry of the same MAC
        port = state.ports[port_id]
        if port.admin_state_up:
            key = forward_key(network_index[port.network_id], mac_value(port.mac))
            if key not in forward:
                forward[key] = len(destinations)
                destinations.append((DEST_LOCAL, plugged[port_id].ofport, int(ports[plugged[port_id].ofport, PORT_GROUPS]),
                                     int(port.port_security_enabled), tenant_index[port.tenant_id], 0))  # fmt: skip
    if state.tunnel_ofport:
        for entry_id in sorted(state.l2_entries):
            entry = state.l2_entries[entry_id]
            endpoint = state.tunnel_endpoints.get(entry.tunnel_endpoint_id)
            if endpoint is None or entry.network_id not in network_index:
                continue
            network = network_index[entry.network_id]
            key = forward_key(network, mac_value(entry.mac))
            v4 = endpoint.ip.version == 4
            if key not in forward:
                forward[key] = len(destinations)
                destinations.append((DEST_REMOTE if v4 else DEST_UNREACHABLE, state.tunnel_ofport, NO_GROUPS, 0,
                                     int(networks[network, NET_TENANT]), int(endpoint.ip) if v4 else 0))  # fmt: skip
            if v4:
                sources.setdefault(key, int(endpoint.ip))

    classifiers = {key: Classifier({i: r for i, r in enumerate(rules)}, SG_FIELDS[key])
                   for key, rules in _sg_rules(state, group_sets).items()}  # fmt: skip
    vni_keys, vni_values = hashmap.build({int(networks[i, NET_VNI]): i for i in range(len(network_ids))})
    forward_keys, forward_values = hashmap.build(forward)
    source_keys, source_values = hashmap.build(sources)
    arrays = EngineArrays(
        ports=_frozen(ports),
        spoof=_frozen(np.array(spoof, np.int64).reshape(-1, SPOOF_COLS)),
        networks=_frozen(networks),
        vni_keys=vni_keys, vni_values=vni_values,
        forward_keys=forward_keys, forward_values=forward_values,
        destinations=_frozen(np.array(destinations, np.int64).reshape(-1, 6)),
        source_keys=source_keys, source_values=source_values,
        egress4=classifiers[(Direction.EGRESS, 4)].arrays,
        ingress4=classifiers[(Direction.INGRESS, 4)].arrays,
        egress6=classifiers[(Direction.EGRESS, 6)].arrays,
        ingress6=classifiers[(Direction.INGRESS, 6)].arrays,
    )  # fmt: skip
    meters = [MeterSpec.unlimited()] * (2 * len(tenants))
    for limit in state.rate_limits.values():
        if limit.tenant_id in tenant_index:
            index = 2 * tenant_index[limit.tenant_id] + (METER_EGRESS if limit.direction is Direction.EGRESS else METER_INGRESS)
            meters[index] = MeterSpec.trtcm(limit.cir_bytes_per_s, limit.cbs_bytes, limit.pir_bytes_per_s, limit.pbs_bytes)
    return EngineTables(arrays, tenants, tuple(meters), classifiers, state.tunnel_ofport)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _groups_of(state: HostState, port: Port) -> tuple[str, ...]:
    return tuple(sorted(g for g in set(port.security_group_ids) if g in state.security_groups))


def _group_sets(state: HostState) -> dict[tuple[str, ...], int]:
    """An index per distinct set of groups among the ports with port security."""
    sets = {_groups_of(state, p) for p in state.ports.values() if p.port_security_enabled}
    return {groups: i for i, groups in enumerate(sorted(sets))}


def _spoof_rows(port: Port) -> list[tuple[int, ...]]:
    """What the port may send from (as SPOOF in compile/openflow.py): its addresses, and its
    IPv6 link-local address with its own MAC."""
    pairs = list(port.addresses) + [(port.mac, ipaddress.ip_network(link_local(port.mac)))]
    return [(mac_value(mac), prefix.version, prefix.prefixlen, *_words(prefix)) for mac, prefix in pairs]


def _words(prefix: IPNetwork) -> tuple[int, int, int, int]:
    value = int(prefix.network_address)
    if prefix.version == 4:
        return (value, 0, 0, 0)
    return tuple((value >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4))  # type: ignore[return-value]


def _sg_rules(state: HostState, group_sets: dict[tuple[str, ...], int]) -> dict[tuple[Direction, int], list[Rule]]:
    """The classifier rules per direction and IP version: every (group set, rule, remote
    prefix), once."""
    rules: dict[tuple[Direction, int], dict[Rule, None]] = {key: {} for key in SG_FIELDS}
    members: dict[tuple[str, int], tuple[IPNetwork, ...]] = {}
    for groups, index in group_sets.items():
        for group_id in groups:
            for rule in state.security_groups[group_id].rules:
                key = (rule.direction, rule.ethertype)
                for remote in _remotes(state, rule, members):
                    rules[key][_rule(index, rule, remote, _REMOTE_FIELDS[key])] = None
    return {key: list(found) for key, found in rules.items()}


def _remotes(state: HostState, rule: SecurityGroupRule, members: dict) -> tuple[IPNetwork | None, ...]:
    """The rule's remote side: (None,) for any address, else its prefixes (none for a remote
    group without members: the rule allows nothing)."""
    if rule.remote_cidr is not None and rule.remote_cidr.prefixlen > 0:
        return (rule.remote_cidr,)
    if rule.remote_group_id is None:
        return (None,)
    key = (rule.remote_group_id, rule.ethertype)
    if key not in members:
        members[key] = group_members(state, rule.remote_group_id, rule.ethertype)
    return members[key]


def _rule(group_set: int, rule: SecurityGroupRule, remote: IPNetwork | None, remote_fields: tuple[Field, ...]) -> Rule:
    matches: dict = {Field.IN_PORT: Exact(group_set)}
    if remote is not None:
        for f, (value, length) in zip(remote_fields, _word_prefixes(remote)):
            if length:
                matches[f] = Prefix(value, length)
    if rule.protocol is not None:
        matches[Field.IP_PROTO] = Exact(rule.protocol)
        if rule.is_icmp:
            if rule.port_range_min is not None:
                matches[Field.L4_SRC] = Exact(rule.port_range_min)  # ICMP type
            if rule.port_range_max is not None:
                matches[Field.L4_DST] = Exact(rule.port_range_max)  # ICMP code
        elif rule.port_range_min is not None:
            matches[Field.L4_DST] = Range(rule.port_range_min, rule.port_range_max)
    return Rule(priority=1, matches=matches)


def _word_prefixes(prefix: IPNetwork) -> list[tuple[int, int]]:
    """The prefix as a (value, length) prefix on each of its 32-bit words."""
    words = _words(prefix)[: 1 if prefix.version == 4 else 4]
    out = []
    for i, word in enumerate(words):
        length = min(32, max(0, prefix.prefixlen - 32 * i))
        out.append((word & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF, length))
    return out
