"""One policy, two targets, one verdict: the same HostState compiled to br-int's flows (loaded
into a real ovs-vswitchd) and to the engine's tables, and thousands of packets asked of both:
OVS through ofproto/trace (conntrack answering as for a new connection, the state a stateful
group's rules decide on), the engine through its pipeline. Every packet must get the same
verdict and the same output: dropped, delivered to one port, or tunnelled to one endpoint with
the network's VNI.

The packets are IPv4 and IPv6 TCP, UDP, SCTP and ICMP, from VM ports (their own addresses,
allowed pairs, and spoofed ones) and from the tunnel (known and unknown endpoints), to local
ports and remote ports, with ports and addresses at the edges of the rules' ranges and
prefixes. ARP, neighbour discovery and flooding are OVS's alone (the engine says SLOW), so
the packets are unicast to known destinations.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ovs.unixctl.client import UnixctlClient

from agent.lab.hosts import Lab, SimulatedHost
from agent.network.ofctl import OpenFlow, diff, meter_diff
from agent.network.ovsdb import VXLAN_OFPORT, Ovsdb
from dataplane.compile.engine import compile_engine
from dataplane.compile.openflow import compile_host
from dataplane.engine import Engine
from dataplane.frames import Frames
from dataplane.kernels import engine as k
from dataplane.topology import (AddressPair, Direction, HostState, L2Entry, Plugged, Port, SecurityGroup,
                                SecurityGroupRule, TenantNetwork, TunnelEndpoint, group_members)  # fmt: skip
from tests import packets
from tests.test_ovs_lab import lab  # noqa: F401  (the fixture: a lab torn down and checked)

pytestmark = pytest.mark.integration

BR_INT = "br-int"
OFPORTS = tuple(range(5, 13))  # internal ports made once on the bridge; a policy plugs some of them
ENDPOINTS = ("198.18.0.21", "198.18.0.22")
EDGE_PORTS = (1, 21, 22, 23, 79, 80, 81, 443, 1023, 1024, 1025, 8079, 8080, 8081, 32767, 32768, 65534, 65535)


# --- the switch -----------------------------------------------------------------------------------


@dataclass
class Switch:
    host: SimulatedHost
    of: OpenFlow
    ctl: UnixctlClient

    def load(self, state: HostState) -> None:
        """br-int's flows and meters for `state`, as the network reconciler installs them."""
        pipeline = compile_host(state)
        add, delete = diff(self.of.canonical(pipeline.flows), self.of.installed(BR_INT))
        self.of.apply(BR_INT, add, delete)
        add_m, modify_m, delete_m = meter_diff(pipeline.meters, self.of.meters(BR_INT))
        self.of.apply_meters(BR_INT, add_m, modify_m, delete_m)

    def trace(self, flow: str, frame: bytes) -> str:
        error, failure, result = self.ctl.transact("ofproto/trace", [BR_INT, flow, frame.hex()])
        assert not error and failure is None, f"ofproto/trace {flow}: {failure or error}"
        return result


@pytest.fixture
def switch(lab: Lab) -> Iterator[Switch]:  # noqa: F811
    host = lab.add_host("a")
    db = Ovsdb(host.db)
    db.connect()
    try:
        db.ensure_bridge(BR_INT, datapath_type="netdev")
        db.ensure_vxlan_port(BR_INT, host.underlay_ip)
    finally:
        db.close()
    for ofport in OFPORTS:
        host.vsctl("add-port", BR_INT, f"vm{ofport}", "--", "set", "interface", f"vm{ofport}", "type=internal",
                   f"ofport_request={ofport}")  # fmt: skip
    error, ctl = UnixctlClient.create(host.ctl("ovs-vswitchd"))
    assert not error, f"cannot reach ovs-vswitchd's control socket: {error}"
    try:
        yield Switch(host, OpenFlow(host.rundir), ctl)
    finally:
        ctl.close()


# --- what each side says --------------------------------------------------------------------------


def ovs_verdict(text: str) -> tuple:
    """("drop",), ("output", ofport) or ("tunnel", endpoint, vni) from a trace's OpenFlow part."""
    outputs, tun_dst, tun_id = [], None, None
    for line in text.splitlines():
        words = line.strip()
        if words.startswith("set_field:") and "->tun_dst" in words:
            tun_dst = words[len("set_field:") : words.index("->")]
        elif words.startswith("set_field:") and "->tun_id" in words:
            tun_id = int(words[len("set_field:") : words.index("->")], 0)
        elif words.startswith("output:"):
            outputs.append(int(words[len("output:") :].split()[0]))
    if not outputs:  # (the datapath actions may say drop for a tunnel whose ARP is not resolved yet)
        return ("drop",)
    assert len(outputs) == 1, f"a unicast packet went out of several ports: {outputs}\n{text}"
    if outputs[0] == VXLAN_OFPORT:
        return ("tunnel", tun_dst, tun_id)
    return ("output", outputs[0])


def engine_verdict(engine: Engine, out: k.Outputs, i: int, state: HostState) -> tuple:
    verdict = int(out.verdict[i])
    if verdict == k.OUTPUT:
        return ("output", int(out.out_port[i]))
    if verdict == k.ENCAP:
        frame = bytes(out.out_buf[out.out_offsets[i] : out.out_offsets[i] + out.out_lengths[i]])
        endpoint = str(ipaddress.IPv4Address(frame[30:34]))
        return ("tunnel", endpoint, int.from_bytes(frame[46:49], "big"))
    if verdict == k.SLOW:
        return ("slow",)
    return ("drop",)


@dataclass(frozen=True)
class Probe:
    """One packet: where it enters (a VM's ofport, or the tunnel from `tunnel_src`) and its bytes."""

    in_port: int
    frame: bytes  # the inner frame for the tunnel: OVS gets it with tunnel metadata, the engine wrapped in VXLAN
    tunnel_src: str = ""
    vni: int = 0
    what: str = ""

    def flow(self) -> str:
        if self.tunnel_src:
            return f"in_port={VXLAN_OFPORT},tun_id={self.vni},tun_src={self.tunnel_src},tun_dst=198.18.0.1"
        return f"in_port={self.in_port}"

    def wire(self) -> bytes:
        """What the engine reads: VXLAN over the underlay for tunnel packets."""
        if not self.tunnel_src:
            return self.frame
        outer = packets.ipv4(self.tunnel_src, "198.18.0.1", 17, packets.udp(50000, 4789, packets.vxlan(self.vni, self.frame)))
        return packets.ethernet("02:00:00:00:00:01", "02:00:00:00:00:02", packets.ETH_IPV4, outer)


def compare(switch: Switch, state: HostState, probes: list[Probe]) -> int:
    """Ask both about every probe; fail on the first disagreement with everything needed to see
    why. Returns how many were compared."""
    switch.load(state)
    engine = Engine(compile_engine(state), capacity=len(probes), underlay=None)
    frames = Frames.of([p.wire() for p in probes])
    out = engine.process(frames, [VXLAN_OFPORT if p.tunnel_src else p.in_port for p in probes])
    for i, probe in enumerate(probes):
        ours = engine_verdict(engine, out, i, state)
        assert ours != ("slow",), f"a probe the engine leaves to OVS: {probe.what}"
        text = switch.trace(probe.flow(), probe.frame)
        theirs = ovs_verdict(text)
        if ours != theirs:
            groups = "\n".join(f"  {g.id} (stateful={g.stateful}): {list(g.rules)}" for g in state.security_groups.values())
            ports = "\n".join(f"  {p}" for p in state.ports.values())
            pytest.fail(f"OVS and the engine disagree on {probe.what} ({probe.flow()}, frame {probe.frame.hex()}):\n"
                        f"OVS: {theirs}, engine: {ours} ({k.VERDICTS[out.verdict[i]]})\n"
                        f"groups:\n{groups}\nports:\n{ports}\ntrace:\n{text}")  # fmt: skip
    return len(probes)


# --- policies and packets -------------------------------------------------------------------------

V4 = ("198.51.100.0/25", "198.51.100.128/25", "198.51.100.0/24", "203.0.113.0/24", "203.0.113.64/26",
      "203.0.113.7/32", "198.18.0.0/15", "0.0.0.0/0")  # fmt: skip
V6 = ("2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::/64", "2001:db8:1::7/128", "2001:db8:2::/48", "::/0")
PROTOCOLS = {4: (None, 6, 17, 1, 132), 6: (None, 6, 17, 58, 132)}


def _address(net: str, rng: random.Random) -> str:
    """An address in `net`, often at its edges."""
    network = ipaddress.ip_network(net)
    pick = rng.choice((0, 1, network.num_addresses - 1, rng.randrange(network.num_addresses)))
    return str(network.network_address + min(pick, network.num_addresses - 1))


def _rule(rng: random.Random, groups: list[str]) -> SecurityGroupRule:
    version = rng.choice((4, 6))
    direction = rng.choice((Direction.INGRESS, Direction.EGRESS))
    protocol = rng.choice(PROTOCOLS[version])
    low = high = None
    if protocol in (6, 17, 132) and rng.random() < 0.8:
        low, high = sorted(rng.sample(EDGE_PORTS, 2)) if rng.random() < 0.7 else (rng.choice(EDGE_PORTS),) * 2
    elif protocol in (1, 58) and rng.random() < 0.6:
        low = rng.choice((0, 3, 8, 128, 129))
        high = rng.choice((None, 0, 1))
    remote = rng.random()
    if remote < 0.45:
        return SecurityGroupRule(direction, version, protocol, low, high, remote_cidr=rng.choice(V4 if version == 4 else V6))
    if remote < 0.7:
        return SecurityGroupRule(direction, version, protocol, low, high, remote_group_id=rng.choice(groups))
    return SecurityGroupRule(direction, version, protocol, low, high)


def random_state(seed: int) -> HostState:
    """Two tenants, three networks, up to eight ports (some without port security, one maybe
    down), groups with overlapping prefixes, port ranges at their edges and remote groups, remote
    ports behind two endpoints."""
    rng = random.Random(seed)
    networks = {"n1": TenantNetwork("n1", "t1", 100), "n2": TenantNetwork("n2", "t1", 101),
                "n3": TenantNetwork("n3", "t2", 200)}  # fmt: skip
    group_ids = ["g1", "g2", "g3"]
    groups = {}
    for g in group_ids:
        rules = tuple({_rule(rng, group_ids): None for _ in range(rng.randint(1, 10))})
        if rng.random() < 0.5:  # Neutron's default group lets everything out
            rules += (SecurityGroupRule(Direction.EGRESS, 4), SecurityGroupRule(Direction.EGRESS, 6))
        members = tuple(_address(rng.choice(V4[:5]), rng) for _ in range(rng.randint(0, 2)))
        groups[g] = SecurityGroup(g, "t2" if g == "g3" else "t1", rules, stateful=rng.random() < 0.6, member_ips=members)
    ports, plugged = {}, {}
    for n, ofport in enumerate(OFPORTS[: rng.randint(3, len(OFPORTS))]):
        network = rng.choice(sorted(networks))
        tenant = networks[network].tenant_id
        secured = rng.random() < 0.85
        v4 = f"198.51.100.{10 + n}" if tenant == "t1" else f"198.51.100.{10 + n % 2}"  # t2 reuses t1's addresses
        v6 = f"2001:db8:1::{10 + n:x}"
        pairs = (AddressPair(ipaddress.ip_network(rng.choice(("203.0.113.64/26", "2001:db8:2::/48")))),) if secured and rng.random() < 0.3 else ()
        mine = [g for g in group_ids if groups[g].tenant_id == tenant]
        member_of = tuple(rng.sample(mine, rng.randint(0, len(mine)))) if secured else ()
        ports[f"p{n}"] = Port(f"p{n}", tenant, network, f"fa:16:3e:00:00:{n + 1:02x}", (v4, v6), pairs, member_of,
                              port_security_enabled=secured, admin_state_up=rng.random() < 0.95)  # fmt: skip
        plugged[f"p{n}"] = Plugged(ofport)
    endpoints = {f"h{i}": TunnelEndpoint(f"h{i}", ip) for i, ip in enumerate(ENDPOINTS)}
    entries = {f"r{i}": L2Entry(f"r{i}", rng.choice(sorted(networks)), f"fa:16:3e:00:01:{i:02x}", f"h{i % 2}",
                                (f"198.51.100.{200 + i}", f"2001:db8:1::{200 + i:x}"))
               for i in range(4)}  # fmt: skip
    return HostState(networks=networks, ports=ports, security_groups=groups, tunnel_endpoints=endpoints,
                     l2_entries=entries, plugged=plugged, tenant_tags={"t1": 1, "t2": 2},
                     ct_zones={"n1": 1, "n2": 2, "n3": 3}, tunnel_ofport=VXLAN_OFPORT)  # fmt: skip


def _aimed(state: HostState, rules: list[SecurityGroupRule], version: int, rng: random.Random
           ) -> tuple[int, int, int, str | None]:  # fmt: skip
    """Protocol, ports and a remote address for a packet near one of `rules` (inside it, or
    just outside its port range or prefix), or anything when there is none."""
    rules = [r for r in rules if r.ethertype == version]
    protocol = rng.choice([p for p in PROTOCOLS[version] if p] + [47])
    sport, dport, remote = rng.choice(EDGE_PORTS), rng.choice(EDGE_PORTS), None
    if rules and rng.random() < 0.8:
        rule = rng.choice(rules)
        protocol = rule.protocol if rule.protocol is not None else protocol
        if rule.port_range_min is not None and not rule.is_icmp:
            dport = rng.choice((rule.port_range_min, rule.port_range_max, rule.port_range_min - 1,
                                min(65535, rule.port_range_max + 1)))  # fmt: skip
        if rule.remote_cidr is not None:
            remote = _address(str(rule.remote_cidr), rng)
        elif rule.remote_group_id is not None:
            members = group_members(state, rule.remote_group_id, version)
            remote = _address(str(rng.choice(members)), rng) if members else None
        if rule.is_icmp:
            sport = rule.port_range_min if rule.port_range_min is not None else rng.choice((0, 8, 128))
            dport = rule.port_range_max if rule.port_range_max is not None else rng.choice((0, 1))
    if protocol in (1, 58) and (sport > 255 or dport > 255):
        sport, dport = rng.choice((0, 3, 8, 128, 129)), rng.choice((0, 1))
    return protocol, sport, dport, remote


def _rules(state: HostState, port: Port, direction: Direction) -> list[SecurityGroupRule]:
    return [r for g in port.security_group_ids if g in state.security_groups
            for r in state.security_groups[g].rules if r.direction is direction]  # fmt: skip


def random_probes(state: HostState, count: int, seed: int) -> list[Probe]:
    """`count` unicast packets to known destinations, from ports and from the tunnel, most of
    them aimed at a rule of the sender or the receiver."""
    rng = random.Random(seed)
    ports = [p for p in state.ports.values() if p.id in state.plugged]
    up = [p for p in ports if p.admin_state_up]
    probes = []
    while len(probes) < count:
        version = rng.choice((4, 6))
        if rng.random() < 0.75:  # from a VM port
            src = rng.choice(ports)
            peers = [p for p in up if p.network_id == src.network_id and p.mac != src.mac]
            entries = [e for e in state.l2_entries.values() if e.network_id == src.network_id]
            if not peers and not entries:
                continue
            own = [str(ip) for ip in src.fixed_ips if ip.version == version]
            own += [_address(str(p.prefix), rng) for p in src.allowed_address_pairs if p.prefix.version == version]
            if peers and (not entries or rng.random() < 0.7):
                dst = rng.choice(peers)
                dst_mac, dst_ips = dst.mac, [str(ip) for ip in dst.fixed_ips if ip.version == version]
                aim_ingress = rng.random() < 0.5
                rules = _rules(state, dst, Direction.INGRESS) if aim_ingress else _rules(state, src, Direction.EGRESS)
            else:
                entry = rng.choice(entries)
                dst_mac, dst_ips = entry.mac, [str(ip) for ip in entry.ip_addresses if ip.version == version]
                aim_ingress, rules = False, _rules(state, src, Direction.EGRESS)
            protocol, sport, dport, remote = _aimed(state, rules, version, rng)
            source, dst_ip = rng.choice(own), rng.choice(dst_ips)
            if remote is not None:
                if aim_ingress and rng.random() < 0.3:
                    source = remote  # spoofed, unless the sender's pairs hold it
                elif not aim_ingress:
                    dst_ip = remote
            elif rng.random() < 0.05:
                source = _address(rng.choice(V4[:5]) if version == 4 else rng.choice(V6[:5]), rng)
            frame = packets.ip_frame(dst_mac, src.mac, source, dst_ip, protocol, sport, dport)
            probes.append(Probe(state.plugged[src.id].ofport, frame,
                                what=f"{src.id} -> {dst_mac} {source} -> {dst_ip} proto {protocol} {sport}->{dport}"))  # fmt: skip
        else:  # from the tunnel
            entry = rng.choice(list(state.l2_entries.values()))
            locals_ = [p for p in up if p.network_id == entry.network_id]
            if not locals_:
                continue
            dst = rng.choice(locals_)
            endpoint = state.tunnel_endpoints[entry.tunnel_endpoint_id].ip
            tunnel_src = str(endpoint) if rng.random() < 0.9 else "198.18.0.99"
            protocol, sport, dport, remote = _aimed(state, _rules(state, dst, Direction.INGRESS), version, rng)
            source = remote or rng.choice([str(ip) for ip in entry.ip_addresses if ip.version == version])
            dst_ip = rng.choice([str(ip) for ip in dst.fixed_ips if ip.version == version])
            vni = state.networks[entry.network_id].vni
            frame = packets.ip_frame(dst.mac, entry.mac, source, dst_ip, protocol, sport, dport)
            probes.append(Probe(0, frame, tunnel_src, vni,
                                what=f"tunnel {tunnel_src} vni {vni} -> {dst.id} {source} -> {dst_ip} proto {protocol} {sport}->{dport}"))  # fmt: skip
    return probes


def test_a_fixed_policy_gives_the_same_verdicts_in_ovs_and_in_the_engine(switch: Switch) -> None:
    compared = 0
    for seed in range(3):
        state = random_state(seed)
        compared += compare(switch, state, random_probes(state, 700, seed))
    assert compared == 2100


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_generated_policies_give_the_same_verdicts_in_ovs_and_in_the_engine(switch: Switch, seed: int) -> None:
    state = random_state(seed)
    compare(switch, state, random_probes(state, 120, seed))
