"""A host's tenant networks -> the OpenFlow pipeline of br-int. Pure: state in, flows out.

`compile_host(state)` turns a `dataplane.topology.HostState` into a `Pipeline`: every flow of
br-int (and the OpenFlow meters the rate limits need), sorted, so the same state always gives
the same flows in the same order. The OVS driver diffs them with what OVS has and sends the
difference in one bundle; nothing here knows OVS is there.

The pipeline, one job per table (Neutron's br-int/br-tun tables and OVN's logical pipeline in
spirit). Registers carry what a packet learnt on its way:

    reg5  the destination port's ofport (set before INGRESS)
    reg6  the network's conntrack zone (16 bits)
    reg7  the network's VNI (the tenant segment the packet is on)

    CLASSIFY      0  where a packet comes from: a VM port (-> its network, its tenant's egress
                     meter) or the tunnel, from a listed endpoint, with the VNI and source MAC
                     of one of its L2 entries; else drop.
    SPOOF        10  from a VM: only its own MAC and addresses (fixed IPs, allowed address
                     pairs; ARP sha/spa; IPv6 link-local, ND from its own addresses); else drop.
                     Ports without port security skip it and the groups.
    ARP          20  ARP requests for an address in the network (local ports and L2 entries)
                     are answered here, so no ARP crosses the tunnel; IPv6 neighbour
                     solicitations the same. Everything else goes on to EGRESS.
    ND_REPLY     21  finishes a neighbour advertisement made from a solicitation in ARP (its
                     target link-layer address can only be set once the packet is an NA).
    EGRESS       30  egress security groups of the source port: stateful ports through
                     conntrack (-> EGRESS_CT), stateless rules matched directly.
    EGRESS_CT    31  after conntrack: established and related pass, new traffic that a rule
                     allows is committed and passes; the rest is dropped.
    FORWARD      40  by (network, destination MAC): a local port (-> INGRESS with reg5), a
                     remote port's endpoint (VXLAN with the network's VNI), or the network's
                     flood list (local ports and the endpoints that hold L2 entries on it).
    TUNNEL_IN    50  from the tunnel: by (network, destination MAC) to a local port, or
                     flooded to the network's local ports; never back into the tunnel.
    INGRESS      60  ingress security groups of the destination port (reg5), like EGRESS.
    INGRESS_CT   61  after conntrack, like EGRESS_CT.
    DELIVER      70  by reg5: the tenant's ingress meter and output to the port (the one flow
                     each packet to a VM crosses once: ingress usage is read here).

Port ranges become the fewest value/mask matches (`ranges.prefix_blocks`); a rule whose remote
side (a group's members) and port range both have several values becomes a conjunction
(`conjunction(id, k/2)` on each dimension), never their cross product.

Cookies (`flows.cookie`) carry the tenant's tag and the direction: egress for a VM's own
traffic (CLASSIFY .. FORWARD), ingress for traffic to a VM (TUNNEL_IN .. INGRESS_CT). Flows
that belong to no tenant (the drop defaults, the tunnel classification) have tag 0.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from dataplane.compile.flows import Flow, FlowDirection, cookie
from dataplane.compile.ranges import match_text
from dataplane.topology import (
    Direction,
    HostState,
    IPNetwork,
    Port,
    RateLimit,
    SecurityGroup,
    SecurityGroupRule,
    group_members,
)

CLASSIFY, SPOOF, ARP, ND_REPLY, EGRESS, EGRESS_CT, FORWARD, TUNNEL_IN, INGRESS, INGRESS_CT, DELIVER = (
    0, 10, 20, 21, 30, 31, 40, 50, 60, 61, 70
)  # fmt: skip
TABLES = {
    "classify": CLASSIFY, "spoof": SPOOF, "arp": ARP, "nd_reply": ND_REPLY, "egress": EGRESS,
    "egress_ct": EGRESS_CT,
    "forward": FORWARD, "tunnel_in": TUNNEL_IN, "ingress": INGRESS, "ingress_ct": INGRESS_CT,
    "deliver": DELIVER,
}  # fmt: skip
ZONE = "NXM_NX_REG6[0..15]"
NEW = "ct_state=+trk+new"
BROADCAST_OR_MULTICAST = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"
_IP = {4: "ip", 6: "ipv6"}
_SRC = {4: "nw_src", 6: "ipv6_src"}
_DST = {4: "nw_dst", 6: "ipv6_dst"}
_PROTO = {6: "tcp", 17: "udp", 132: "sctp"}  # ovs-ofctl shorthands; others use nw_proto=N

# Priorities, one meaning each.
P_UNCHECKED = 210  # port security off: above every check of SPOOF
P_OVERRIDE = 200  # admin down: beats everything of the port
P_PORT = 100
P_ALLOW = 90
P_CONJ = 78  # the rules, as conjunctions
P_TO_CT = 75  # to conntrack, once no stateless rule allowed the packet
P_FLOOD = 10


@dataclass(frozen=True, slots=True)
class Meter:
    """An OpenFlow meter for one tenant and direction: a drop band at `rate_kbps` with
    `burst_kb` (OVS meters police one rate; see agent/network/ofctl.py for what of RFC 2698's
    trTCM that covers)."""

    id: int
    rate_kbps: int
    burst_kb: int


@dataclass(frozen=True, slots=True)
class Pipeline:
    flows: tuple[Flow, ...]
    meters: tuple[Meter, ...]


def compile_host(state: HostState) -> Pipeline:
    """Every flow and meter br-int needs for `state`, deterministic."""
    build = _Builder(state)
    build.defaults()
    for port_id in sorted(state.plugged):
        port = state.ports.get(port_id)
        if port is not None and port.network_id in state.networks:
            build.port(port, state.plugged[port_id].ofport)
    for network_id in sorted(state.networks):
        build.network(network_id)
    build.security_groups()
    meters = tuple(sorted((_meter(state, r) for r in state.rate_limits.values()),
                          key=lambda m: m.id))  # fmt: skip
    return Pipeline(_merged(build.flows), meters)


def meter_id(tenant_tag: int, direction: Direction) -> int:
    """The meter of a tenant's traffic in one direction (never 0, which OpenFlow reserves)."""
    return tenant_tag * 2 + (1 if direction is Direction.EGRESS else 2)


def _meter(state: HostState, limit: RateLimit) -> Meter:
    tag = state.tenant_tags[limit.tenant_id]
    return Meter(
        meter_id(tag, limit.direction),
        rate_kbps=max(1, limit.cir_bytes_per_s * 8 // 1000),
        burst_kb=max(1, limit.cbs_bytes * 8 // 1000),
    )


@dataclass(slots=True)
class _Builder:
    state: HostState
    flows: list[Flow] = field(default_factory=list)
    # The rules ports are subject to: (table, port match, tenant tag, direction) -> rules, and
    # each rule's networks; `security_groups` turns them into flows once every port is seen.
    _rule_ports: dict[tuple[int, str, int, FlowDirection], set[_RuleUse]] = field(default_factory=dict)
    _rule_networks: dict[_RuleUse, set[str]] = field(default_factory=dict)
    _member_cache: dict[tuple[str, int], tuple[IPNetwork, ...]] = field(default_factory=dict)
    _remote_cache: dict[SecurityGroupRule, tuple[str, ...]] = field(default_factory=dict)
    _use_cache: dict[tuple[str, Direction], tuple[_RuleUse, ...]] = field(default_factory=dict)

    def add(self, table: int, priority: int, match: str, actions: str, owner: int = 0,
            direction: FlowDirection = FlowDirection.NONE) -> None:  # fmt: skip
        self.flows.append(Flow(table, priority, match, actions, cookie(owner, direction)))

    def tag(self, port: Port) -> int:
        return self.state.tenant_tags[port.tenant_id]

    # --- what every host has ---------------------------------------------------------------

    def defaults(self) -> None:
        """Drop what no flow claims, in every table (fail_mode=secure keeps it that way while
        the agent is away)."""
        for table in TABLES.values():
            self.add(table, 0, "", "drop")
        # Router advertisements are never a VM's to send, and a neighbour advertisement only
        # for an address of its own (SPOOF lets those through, per port).
        self.add(SPOOF, P_OVERRIDE, "icmp6,icmp_type=134", "drop")
        self.add(SPOOF, P_OVERRIDE - 1, "icmp6,icmp_type=136", "drop")
        # ARP and IPv6 ND that the responder does not answer travel on like other traffic,
        # and pass the security groups whatever they say, before conntrack (anti-spoofing
        # already holds them to the sender's own addresses).
        self.add(ARP, 1, "", f"goto_table:{EGRESS}")
        for table, nds, passed in ((EGRESS, (133, 135, 136), FORWARD), (INGRESS, (134, 135, 136), DELIVER)):
            self.add(table, P_ALLOW, "arp", f"goto_table:{passed}")
            for nd in nds:
                self.add(table, P_ALLOW, f"icmp6,icmp_type={nd}", f"goto_table:{passed}")
        # After conntrack: replies and related traffic of allowed connections pass.
        for table, passed in ((EGRESS_CT, FORWARD), (INGRESS_CT, DELIVER)):
            self.add(table, P_ALLOW, "ct_state=+trk+est-rel-inv", f"goto_table:{passed}")
            self.add(table, P_ALLOW, "ct_state=+trk+rel-inv", f"goto_table:{passed}")

    # --- one plugged port ------------------------------------------------------------------

    def port(self, port: Port, ofport: int) -> None:
        state, tag = self.state, self.tag(port)
        network = state.networks[port.network_id]
        zone = state.ct_zones[network.id]
        out = FlowDirection.EGRESS
        into = FlowDirection.INGRESS
        if not port.admin_state_up:
            self.add(CLASSIFY, P_OVERRIDE, f"in_port={ofport}", "drop", tag, out)
            self.add(INGRESS, P_OVERRIDE, f"reg5={ofport}", "drop", tag, into)
            return
        meter = self._meter_action(port, Direction.EGRESS)
        self.add(CLASSIFY, P_PORT, f"in_port={ofport}",
                 f"{meter}set_field:{network.vni}->reg7,set_field:{zone}->reg6,"
                 f"goto_table:{SPOOF}", tag, out)  # fmt: skip
        self.add(DELIVER, P_PORT, f"reg5={ofport}",
                 f"{self._meter_action(port, Direction.INGRESS)}output:{ofport}", tag, into)  # fmt: skip
        if not port.port_security_enabled:
            self.add(SPOOF, P_UNCHECKED, f"in_port={ofport}", f"goto_table:{ARP}", tag, out)
            self.add(EGRESS, P_PORT, f"in_port={ofport}", f"goto_table:{FORWARD}", tag, out)
            self.add(INGRESS, P_PORT, f"reg5={ofport}", f"goto_table:{DELIVER}", tag, into)
            return
        self._anti_spoofing(port, ofport, tag)
        self._groups(port, ofport, Direction.EGRESS)
        self._groups(port, ofport, Direction.INGRESS)

    def _anti_spoofing(self, port: Port, ofport: int, tag: int) -> None:
        out, go = FlowDirection.EGRESS, f"goto_table:{ARP}"
        for mac, prefix in port.addresses:
            where = f"in_port={ofport},dl_src={mac}"
            if prefix.version == 4:
                self.add(SPOOF, P_PORT, f"{where},arp,arp_sha={mac},arp_spa={_net(prefix)}", go,
                         tag, out)  # fmt: skip
                self.add(SPOOF, P_PORT, f"{where},ip,nw_src={_net(prefix)}", go, tag, out)
            else:
                self.add(SPOOF, P_PORT, f"{where},ipv6,ipv6_src={_net(prefix)}", go, tag, out)
        # IPv6 needs the port's link-local address (from its MAC) and the unspecified source
        # of duplicate address detection; routers' advertisements are never a VM's to send.
        own_link_local = link_local(port.mac)
        where = f"in_port={ofport},dl_src={port.mac}"
        self.add(SPOOF, P_PORT, f"{where},ipv6,ipv6_src={own_link_local}", go, tag, out)
        self.add(SPOOF, P_PORT, f"{where},icmp6,ipv6_src=::,icmp_type=135", go, tag, out)
        # A VM answering neighbour solicitations for an address it does not own is spoofing
        # (the default in `defaults` drops it).
        owned = [p for _, p in port.addresses if p.version == 6] + [ipaddress.ip_network(own_link_local)]
        for prefix in owned:
            self.add(SPOOF, P_OVERRIDE, f"in_port={ofport},icmp6,icmp_type=136,nd_target={_net(prefix)}",
                     go, tag, out)  # fmt: skip

    # --- security groups -------------------------------------------------------------------

    def _groups(self, port: Port, ofport: int, direction: Direction) -> None:
        """Send the port's traffic in `direction` through its groups: to conntrack if any group
        is stateful, and name the port in each rule it is subject to (the rules' own flows come
        once per host, from `security_groups`)."""
        state, tag = self.state, self.tag(port)
        egress = direction is Direction.EGRESS
        table, ct_table = (EGRESS, EGRESS_CT) if egress else (INGRESS, INGRESS_CT)
        who = f"in_port={ofport}" if egress else f"reg5={ofport}"
        cdir = FlowDirection.EGRESS if egress else FlowDirection.INGRESS
        groups = [state.security_groups[g] for g in port.security_group_ids
                  if g in state.security_groups]  # fmt: skip
        if any(g.stateful for g in groups):
            for version in (4, 6):
                self.add(table, P_TO_CT, f"{who},{_IP[version]}",
                         f"ct(table={ct_table},zone={ZONE})", tag, cdir)  # fmt: skip
        for group in groups:
            rule_table, port_match = (ct_table, f"{who},{NEW}") if group.stateful else (table, who)
            uses = self._uses(group, direction, rule_table)
            self._rule_ports.setdefault((rule_table, port_match, tag, cdir), set()).update(uses)
            for use in uses:
                self._rule_networks.setdefault(use, set()).add(port.network_id)

    def _uses(self, group: SecurityGroup, direction: Direction, table: int) -> tuple[_RuleUse, ...]:
        """The group's rules in `direction` that allow something, once per compile."""
        key = (group.id, direction)
        if key not in self._use_cache:
            self._use_cache[key] = tuple(
                _RuleUse(table, group.id, i, rule, self._remote(rule))
                for i, rule in enumerate(group.rules) if rule.direction is direction and self._remote(rule)
            )  # fmt: skip
        return self._use_cache[key]

    def security_groups(self) -> None:
        """Each rule that a port here is subject to, as one conjunction (as Neutron's OVS
        firewall does): its ports (dimension 1), its protocol and destination ports (2) and its
        remote addresses (3, left out when any address will do). Dimensions 2 and 3 belong to
        the rule's networks, not to its ports, so a rule costs a few flows per network however
        many ports it guards, and a port one flow per table however many rules it has."""
        ids = _conjunction_ids(self._rule_networks)
        clauses: dict[tuple[int, str], tuple[int, set[str]]] = {}

        def clause(table: int, match: str, owner: int, cdir: FlowDirection, use: _RuleUse,
                   dimension: int) -> None:  # fmt: skip
            _, actions = clauses.setdefault((table, match), (cookie(owner, cdir), set()))
            actions.add(f"conjunction({ids[use]},{dimension}/{use.clauses})")

        for (table, port_match, tag, cdir), uses in self._rule_ports.items():
            for use in uses:
                clause(table, port_match, tag, cdir, use, 1)
        for use, network_ids in self._rule_networks.items():
            group, rule = self.state.security_groups[use.group_id], use.rule
            egress = rule.direction is Direction.EGRESS
            cdir = FlowDirection.EGRESS if egress else FlowDirection.INGRESS
            passed = f"goto_table:{FORWARD if egress else DELIVER}"
            if group.stateful:
                passed = f"ct(commit,zone={ZONE}),{passed}"
            # The IP version too: ct() needs it, and a conjunction allows no other.
            self.add(use.table, P_CONJ, f"conj_id={ids[use]},{_IP[rule.ethertype]}", passed,
                     self.state.tenant_tags[group.tenant_id], cdir)  # fmt: skip
            for network_id in network_ids:
                network = self.state.networks[network_id]
                net, owner = f"reg7={network.vni}", self.state.tenant_tags[network.tenant_id]
                for term in _ports(rule):
                    clause(use.table, _join(net, _protocol(rule), term), owner, cdir, use, 2)
                for remote in use.remotes:
                    if remote:
                        clause(use.table, _join(net, _IP[rule.ethertype], remote), owner, cdir, use, 3)
        for (table, match), (flow_cookie, actions) in clauses.items():
            self.flows.append(Flow(table, P_CONJ, match,
                                   ",".join(sorted(actions, key=_clause_order)), flow_cookie))  # fmt: skip

    def _remote(self, rule: SecurityGroupRule) -> tuple[str, ...]:
        """The remote side as match terms: [""] for any address, else one term per prefix (none
        for a remote group without members: the rule allows nothing)."""
        if rule not in self._remote_cache:
            side = _DST[rule.ethertype] if rule.direction is Direction.EGRESS else _SRC[rule.ethertype]
            if rule.remote_cidr is not None and rule.remote_cidr.prefixlen > 0:
                terms: tuple[str, ...] = (f"{side}={_net(rule.remote_cidr)}",)
            elif rule.remote_group_id is None:
                terms = ("",)  # 0.0.0.0/0 and ::/0 too: OVS would drop the match term anyway
            else:
                terms = tuple(f"{side}={_net(p)}" for p in self._members(rule.remote_group_id, rule.ethertype))
            self._remote_cache[rule] = terms
        return self._remote_cache[rule]

    def _members(self, group_id: str, version: int) -> tuple[IPNetwork, ...]:
        """topology.group_members, computed once per compile (every port of the group asks)."""
        key = (group_id, version)
        if key not in self._member_cache:
            self._member_cache[key] = group_members(self.state, group_id, version)
        return self._member_cache[key]

    def _meter_action(self, port: Port, direction: Direction) -> str:
        limited = any(r.tenant_id == port.tenant_id and r.direction is direction
                      for r in self.state.rate_limits.values())  # fmt: skip
        return f"meter:{meter_id(self.tag(port), direction)}," if limited else ""

    # --- one network: ARP/ND responder, forwarding, tunnel ----------------------------------

    def network(self, network_id: str) -> None:
        state = self.state
        network = state.networks[network_id]
        vni, zone = network.vni, state.ct_zones[network_id]
        tag = state.tenant_tags[network.tenant_id]
        local = [(p, state.plugged[p.id].ofport) for p in sorted(state.ports.values(), key=lambda p: p.id)
                 if p.network_id == network_id and p.id in state.plugged and p.admin_state_up]  # fmt: skip
        remote = sorted((e for e in state.l2_entries.values() if e.network_id == network_id),
                        key=lambda e: e.id)  # fmt: skip
        net = f"reg7={vni}"
        # The responder: the addresses of local ports and of L2 entries.
        owners = [(p.mac, ip) for p, _ in local for ip in p.fixed_ips]
        owners += [(e.mac, ip) for e in remote for ip in e.ip_addresses]
        for mac, ip in sorted(owners, key=lambda o: (o[1].version, int(o[1]), o[0])):
            if ip.version == 4:
                self.add(ARP, P_PORT, f"{net},arp,arp_op=1,arp_tpa={ip}", _arp_reply(mac, ip), tag,
                         FlowDirection.EGRESS)  # fmt: skip
            else:
                self.add(ARP, P_PORT, f"{net},icmp6,icmp_type=135,nd_target={ip}",
                         _na_reply(ip), tag, FlowDirection.EGRESS)  # fmt: skip
                self.add(ND_REPLY, P_PORT, f"{net},icmp6,icmp_type=136,icmp_code=0,nd_target={ip}",
                         f"set_field:{mac}->eth_src,set_field:{mac}->nd_tll,in_port", tag,
                         FlowDirection.EGRESS)  # fmt: skip
        # Forwarding from local ports.
        for port, ofport in local:
            self.add(FORWARD, P_PORT, f"{net},dl_dst={port.mac}",
                     f"set_field:{ofport}->reg5,goto_table:{INGRESS}", tag, FlowDirection.EGRESS)  # fmt: skip
            self.add(TUNNEL_IN, P_PORT, f"{net},dl_dst={port.mac}",
                     f"set_field:{ofport}->reg5,goto_table:{INGRESS}", tag, FlowDirection.INGRESS)  # fmt: skip
        endpoints = {}
        if state.tunnel_ofport:
            for entry in remote:
                endpoint = state.tunnel_endpoints.get(entry.tunnel_endpoint_id)
                if endpoint is None:
                    continue
                endpoints[endpoint.id] = endpoint
                self.add(FORWARD, P_PORT, f"{net},dl_dst={entry.mac}",
                         f"set_field:{vni}->tun_id,set_field:{endpoint.ip}->tun_dst,"
                         f"output:{state.tunnel_ofport}", tag, FlowDirection.EGRESS)  # fmt: skip
        # Broadcast, multicast and unknown unicast: every local port (through its ingress
        # groups), and from a local port also every endpoint that holds L2 entries here.
        to_locals = "".join(f"set_field:{o}->reg5,resubmit(,{INGRESS})," for _, o in local)
        to_peers = "".join(f"set_field:{e.ip}->tun_dst,output:{state.tunnel_ofport},"
                           for e in sorted(endpoints.values(), key=lambda e: e.id))  # fmt: skip
        if to_peers:
            to_peers = f"set_field:{vni}->tun_id," + to_peers
        self.add(FORWARD, P_FLOOD, net, (to_locals + to_peers).rstrip(",") or "drop", tag,
                 FlowDirection.EGRESS)  # fmt: skip
        self.add(TUNNEL_IN, P_FLOOD, net, to_locals.rstrip(",") or "drop", tag, FlowDirection.INGRESS)
        # The tunnel: only listed endpoints, only this VNI, only the MACs of their L2 entries.
        if state.tunnel_ofport:
            for entry in remote:
                endpoint = state.tunnel_endpoints.get(entry.tunnel_endpoint_id)
                if endpoint is not None:
                    self.add(CLASSIFY, P_PORT, f"in_port={state.tunnel_ofport},tun_id={vni},"
                             f"tun_src={endpoint.ip},dl_src={entry.mac}",
                             f"set_field:{vni}->reg7,set_field:{zone}->reg6,"
                             f"goto_table:{TUNNEL_IN}", tag, FlowDirection.INGRESS)  # fmt: skip


# --- text helpers --------------------------------------------------------------------------------


def _net(prefix: IPNetwork) -> str:
    """A prefix as ovs-ofctl writes it: a host address without /32 or /128."""
    return str(prefix.network_address) if prefix.prefixlen == prefix.max_prefixlen else str(prefix)


def _join(*terms: str) -> str:
    return ",".join(t for t in terms if t)


def _protocol(rule: SecurityGroupRule) -> str:
    """The rule's protocol (and ICMP type and code) as one match term."""
    ip = _IP[rule.ethertype]
    if rule.protocol is None:
        return ip
    if rule.is_icmp:
        terms = ["icmp" if rule.ethertype == 4 else "icmp6"]
        if rule.port_range_min is not None:
            terms.append(f"icmp_type={rule.port_range_min}")
        if rule.port_range_max is not None:
            terms.append(f"icmp_code={rule.port_range_max}")
        return ",".join(terms)
    name = _PROTO.get(rule.protocol)
    if name is None:
        return f"{ip},nw_proto={rule.protocol}"
    return name if rule.ethertype == 4 else f"{name}6"


def _ports(rule: SecurityGroupRule) -> list[str]:
    """The rule's destination ports, one term per value/mask block ([""]: any)."""
    if rule.is_icmp or rule.port_range_min is None:
        return [""]
    return match_text("tp_dst", rule.port_range_min, rule.port_range_max)


def _arp_reply(mac: str, ip: ipaddress.IPv4Address) -> str:
    """Turn an ARP request into the reply `mac` would send, back out of the port it came in."""
    return (
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
        f"set_field:{mac}->eth_src,"
        "set_field:2->arp_op,"
        "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],"
        "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
        f"set_field:{mac}->arp_sha,"
        f"set_field:{ip}->arp_spa,"
        "in_port"
    )


def _na_reply(ip: ipaddress.IPv6Address) -> str:
    """Turn a neighbour solicitation for `ip` into a solicited advertisement; ND_REPLY puts in
    the owner's MAC and sends it back."""
    return (
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
        "move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[],"
        f"set_field:{ip}->ipv6_src,"
        "set_field:136->icmpv6_type,"
        "set_field:2->nd_options_type,"
        "set_field:0x60000000->nd_reserved,"  # solicited and override
        f"resubmit(,{ND_REPLY})"
    )


def link_local(mac: str) -> str:
    """The EUI-64 link-local address of `mac` (RFC 4291, appendix A)."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    words = [(eui[i] << 8) | eui[i + 1] for i in range(0, 8, 2)]
    return str(ipaddress.IPv6Address("fe80::" + ":".join(f"{w:x}" for w in words)))


def unreachable(add: Iterable[Flow], installed: Iterable[Flow]) -> list[Flow]:
    """The flows of `add` that no packet can reach while the rest of `add` is not installed,
    so they can be loaded before it, in any order (flows in OVS's canonical form).

    A packet enters at CLASSIFY, whose every flow names its in_port, and a VM port's flows in
    the other tables name it (in_port, or reg5 that only FORWARD and TUNNEL_IN set). So with
    nothing in CLASSIFY, nothing past it is reachable (a new bridge, a restarted switch); else
    the flows past CLASSIFY of a port that no installed flow names (a new port) are not."""
    installed = list(installed)
    if not any(f.table == CLASSIFY for f in installed):
        return [f for f in add if f.table != CLASSIFY]
    named = {port for f in installed for port in _ports_named(f)}
    return [f for f in add if f.table != CLASSIFY and (port := _port_matched(f)) is not None
            and port not in named]  # fmt: skip


_IN_PORT = re.compile(r"(?:^|,)(?:in_port=(\d+)|reg5=(0x[0-9a-f]+))(?:,|$)")
_SETS_PORT = re.compile(r"set_field:(0x[0-9a-f]+)->reg5")


def _port_matched(flow: Flow) -> int | None:
    found = _IN_PORT.search(flow.match)
    return None if found is None else int(found.group(1) or found.group(2), 0)


def _ports_named(flow: Flow) -> set[int]:
    named = {int(v, 0) for v in _SETS_PORT.findall(flow.actions)}
    port = _port_matched(flow)
    return named if port is None else named | {port}


def _merged(flows: Iterable[Flow]) -> tuple[Flow, ...]:
    """One flow per key (OVS keeps one per table, priority and match), sorted. Two flows with
    one key are the same flow twice, or two owners of one address in the ARP responder (a port
    and an L2 entry): the first built wins, so the answer is still deterministic."""
    by_key: dict[tuple[int, int, str], Flow] = {}
    for flow in flows:
        by_key.setdefault(flow.key, flow)
    return tuple(sorted(by_key.values(), key=lambda f: (f.table, -f.priority, f.match, f.actions)))


@dataclass(frozen=True, slots=True)
class _RuleUse:
    """Rule `index` of a group, in the table its ports meet it in: one conjunction. Known by
    (table, group, index); the rule and its remote terms ride along."""

    table: int
    group_id: str
    index: int
    rule: SecurityGroupRule = field(compare=False)
    remotes: tuple[str, ...] = field(compare=False)

    @property
    def name(self) -> str:
        return f"{self.table}/{self.group_id}/{self.rule!r}"

    @property
    def clauses(self) -> int:
        return 2 if self.remotes == ("",) else 3


def _conjunction_ids(uses: Iterable[_RuleUse]) -> dict[_RuleUse, int]:
    """A 32-bit conjunction id per rule, from a hash of the rule itself, so adding or removing
    one rule leaves the flows of every other rule as they are; the rare collision takes the
    next free id, in name order, so the same rules always get the same ids."""
    ids: dict[_RuleUse, int] = {}
    taken: set[int] = set()
    for use in sorted(uses, key=lambda u: (u.name, u.index)):
        conj = int.from_bytes(hashlib.blake2b(use.name.encode(), digest_size=4).digest(), "big")
        while conj == 0 or conj in taken:
            conj = (conj + 1) & 0xFFFFFFFF
        ids[use] = conj
        taken.add(conj)
    return ids


def _clause_order(clause: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", clause))
