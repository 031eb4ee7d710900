"""The engine benchmark's shared inputs: one host's policy and the frames both engines get.

Pure and deterministic (seeded): the same arguments give the same `HostState` and the same
bytes, so our engine and its peer (bench/ovs_dpdk.py: OVS's DPDK datapath) are fed exactly the
same policy, compiled by the same compiler, and the same pcap.

`security_group_state(rules, tenants)` is one host with two VM ports of one tenant on one
tenant network: the sender plugged at ofport 1 and the receiver at ofport 2 (OVS-DPDK's pcap
port and null port have those ofports). The receiver's ingress is guarded by `rules` rules
shaped like real ones (`_rule`): TCP and UDP to single well-known ports, to ranges whose ends
are not powers of two (1000-1999, 8000-8080, random ones) and to any port, a few ICMP rules,
from remote CIDRs of every length /15../32, from any address, and from remote groups (a peer
group's member IPs, the receiver's own group). A rate limit on the tenant's ingress puts an
OpenFlow meter on the receiver's output (`meter:N` in DELIVER), at 100 Gbit/s by default so
that it is evaluated on every packet and drops none. Each tenant beyond the first adds a
network, a plugged port (ofport 3, 4, ...), an open group and a rate limit: more flows, none
of them on the benchmark's path.

Every group is stateless (`stateful=False`): the rules are matched directly in the EGRESS and
INGRESS tables and no flow on the path calls ct(). A stateful group would send every packet
through conntrack, and an OVS-DPDK fed from a pcap would then measure its connection tracker
(a lookup, and a commit of each new 5-tuple), not its classifier. The engine is compared with
it on the same stateless policy.

`frames(state, count, distinct_tuples, size)` makes Ethernet/IPv4/TCP-or-UDP frames from the
sender's MAC and an address it owns (its fixed IP or its allowed /16, so anti-spoofing passes)
to the receiver's MAC and fixed IP (so forwarding by MAC delivers them), with exactly
`distinct_tuples` distinct 5-tuples, each allowed by one of the receiver's rules (picked at
random among the rules that admit the sender), so every frame's verdict is output:2. `size`
is the Ethernet frame size as line rates count it, FCS included (64..1518); a pcap holds
frames without FCS, so each frame is `size - 4` bytes (60 for "64-byte" frames).

Addresses: only 198.18.0.0/15 and TEST-NET-2/3 (198.51.100.0/24, 203.0.113.0/24).
"""

from __future__ import annotations

import ipaddress
import random

import numpy as np

from dataplane.frames import Frames
from dataplane.policy import Invalid
from dataplane.topology import (
    MAX_ADDRESSES,
    MAX_RULES,
    AddressPair,
    Direction,
    HostState,
    Plugged,
    Port,
    RateLimit,
    SecurityGroup,
    SecurityGroupRule,
    TenantNetwork,
)

SENDER_OFPORT = 1
RECEIVER_OFPORT = 2
TENANT = "bench-t0"
NETWORK = "bench-net0"
SENDER = "bench-tx"
RECEIVER = "bench-rx"
SENDER_MAC = "fa:16:3e:00:00:01"
RECEIVER_MAC = "fa:16:3e:00:00:02"
SENDER_IP = ipaddress.IPv4Address("198.18.0.1")
SENDER_PAIRS = ipaddress.IPv4Network("198.18.0.0/16")  # the sender's allowed address pair
RECEIVER_IP = ipaddress.IPv4Address("198.19.0.2")
PEERS = "bench-peers"  # a remote group: member IPs only, on no port here
DEFAULT_RATE_BYTES_PER_S = 12_500_000_000  # 100 Gbit/s: metered, never dropped
VNI_BASE = 1000
TCP, UDP, ICMP = 6, 17, 1
FCS = 4
MIN_SIZE, MAX_SIZE = 64, 1518

WELL_KNOWN = (22, 25, 53, 80, 110, 123, 143, 389, 443, 465, 587, 636, 993, 995, 1433, 1521, 2049,
              3306, 3389, 5432, 5672, 6379, 8080, 8443, 9090, 9200, 9300, 11211, 27017)  # fmt: skip
RANGES = ((1000, 1999), (8000, 8080), (3000, 3999), (5000, 5100), (6000, 6063), (30000, 32767),
          (32768, 60999), (49152, 65535), (1024, 65535), (20, 21), (135, 139), (2379, 2380))  # fmt: skip
ELSEWHERE = (ipaddress.ip_network("198.19.0.0/16"), ipaddress.ip_network("198.51.100.0/24"),
             ipaddress.ip_network("203.0.113.0/24"))  # fmt: skip
PREFIX_LENGTHS = (15, 16, 17, 18, 20, 21, 22, 23, 24, 24, 25, 26, 27, 28, 29, 30, 31, 32, 32)


def security_group_state(rules: int = 1000, tenants: int = 1, *, seed: int = 1,
                         rate_bytes_per_s: int = DEFAULT_RATE_BYTES_PER_S,
                         peer_members: int = 64) -> HostState:  # fmt: skip
    """The benchmark's host (see the module docstring): `rules` ingress rules on the receiver
    (in groups of at most 1,000, up to 16 groups), `tenants` tenants, `peer_members` member
    IPs in the remote group the rules name, a rate limit of `rate_bytes_per_s` per tenant."""
    if not 1 <= rules <= MAX_RULES * MAX_ADDRESSES:
        raise Invalid("rules", f"must be 1..{MAX_RULES * MAX_ADDRESSES:,}, got {rules}")
    if not 1 <= tenants <= 30_000:
        raise Invalid("tenants", f"must be 1..30,000, got {tenants}")
    if not 0 <= peer_members <= 254:
        raise Invalid("peer_members", f"must be 0..254, got {peer_members}")
    rng = random.Random(seed)
    groups_n = -(-rules // MAX_RULES)
    ingress_ids = [f"bench-in{k}" for k in range(groups_n)]
    made: set[SecurityGroupRule] = set()
    all_rules: list[SecurityGroupRule] = []
    while len(all_rules) < rules:
        rule = _rule(rng, ingress_ids[0])
        if rule not in made:
            made.add(rule)
            all_rules.append(rule)
    members = sorted(_members(rng, peer_members), key=int)
    groups = {PEERS: SecurityGroup(PEERS, TENANT, (), stateful=False, member_ips=tuple(members))}
    for k, group_id in enumerate(ingress_ids):
        chunk = tuple(all_rules[k * MAX_RULES : (k + 1) * MAX_RULES])
        groups[group_id] = SecurityGroup(group_id, TENANT, chunk, stateful=False)
    out = "bench-out"
    groups[out] = SecurityGroup(out, TENANT, (SecurityGroupRule(Direction.EGRESS, 4),
                                              SecurityGroupRule(Direction.EGRESS, 6)), stateful=False)  # fmt: skip
    networks = {NETWORK: TenantNetwork(NETWORK, TENANT, VNI_BASE)}
    ports = {
        SENDER: Port(SENDER, TENANT, NETWORK, SENDER_MAC, (SENDER_IP,),
                     (AddressPair(SENDER_PAIRS),), (out,)),  # fmt: skip
        RECEIVER: Port(RECEIVER, TENANT, NETWORK, RECEIVER_MAC, (RECEIVER_IP,), (), tuple(ingress_ids)),
    }
    plugged = {SENDER: Plugged(SENDER_OFPORT), RECEIVER: Plugged(RECEIVER_OFPORT)}
    limits = {f"bench-rl-{TENANT}": RateLimit(f"bench-rl-{TENANT}", TENANT, Direction.INGRESS,
                                              rate_bytes_per_s, _burst(rate_bytes_per_s))}  # fmt: skip
    tags, zones = {TENANT: 1}, {NETWORK: 1}
    for t in range(1, tenants):
        tenant, network, port, group = f"bench-t{t}", f"bench-net{t}", f"bench-t{t}-vm", f"bench-open{t}"
        networks[network] = TenantNetwork(network, tenant, VNI_BASE + t)
        open_rules = (SecurityGroupRule(Direction.INGRESS, 4), SecurityGroupRule(Direction.EGRESS, 4))
        groups[group] = SecurityGroup(group, tenant, open_rules, stateful=False)
        ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.19.128.0")) + t)
        ports[port] = Port(port, tenant, network, f"fa:16:3e:01:{t >> 8:02x}:{t & 0xFF:02x}", (ip,), (), (group,))
        plugged[port] = Plugged(RECEIVER_OFPORT + t)
        limits[f"bench-rl-{tenant}"] = RateLimit(f"bench-rl-{tenant}", tenant, Direction.INGRESS,
                                                 rate_bytes_per_s, _burst(rate_bytes_per_s))  # fmt: skip
        tags[tenant], zones[network] = t + 1, t + 1
    return HostState(networks=networks, ports=ports, security_groups=groups, rate_limits=limits,
                     plugged=plugged, tenant_tags=tags, ct_zones=zones)  # fmt: skip


def _burst(rate_bytes_per_s: int) -> int:
    """10 ms at the rate, within RateLimit's bounds."""
    return min(max(rate_bytes_per_s // 100, 1518), 1 << 30)


def _rule(rng: random.Random, own_group: str) -> SecurityGroupRule:
    """One ingress rule of the mix real security groups have (weights from the shape of
    Neutron default and web/app/db groups, many of them across many tenants)."""
    roll = rng.random()
    if roll < 0.04:
        icmp = rng.choice(((8, None), (8, 0), (0, None), (3, 4), (11, None)))
        return SecurityGroupRule(Direction.INGRESS, 4, ICMP, icmp[0], icmp[1], _remote_cidr(rng))
    protocol = TCP if rng.random() < 0.6 else UDP
    if rng.random() < 0.04:
        protocol = None  # any protocol from the remote side
    low = high = None
    if protocol is not None:
        kind = rng.random()
        if kind < 0.40:
            low = high = rng.choice(WELL_KNOWN)
        elif kind < 0.60:
            low, high = rng.choice(RANGES)
        elif kind < 0.90:  # a random range, ends rarely on a power of two
            low = rng.randint(1024, 60000)
            high = min(65535, low + rng.choice((1, 2, 9, 15, 99, 100, 255, 300, 999, 1000, 4095)))
        # else: every port of the protocol
    remote = rng.random()
    if remote < 0.15:
        return SecurityGroupRule(Direction.INGRESS, 4, protocol, low, high, remote_group_id=PEERS)
    if remote < 0.20:
        return SecurityGroupRule(Direction.INGRESS, 4, protocol, low, high, remote_group_id=own_group)
    if remote < 0.26 and protocol is not None:
        return SecurityGroupRule(Direction.INGRESS, 4, protocol, low, high)  # from anywhere
    return SecurityGroupRule(Direction.INGRESS, 4, protocol, low, high, _remote_cidr(rng))


def _remote_cidr(rng: random.Random) -> ipaddress.IPv4Network:
    """A CIDR of a random length: mostly inside the sender's /16 (so some traffic matches it),
    else elsewhere in the test ranges."""
    length = rng.choice(PREFIX_LENGTHS)
    if length == 15:
        return ipaddress.ip_network("198.18.0.0/15")
    if rng.random() < 0.6:
        space = SENDER_PAIRS
    else:
        space = rng.choice(ELSEWHERE)
        length = max(length, space.prefixlen)
    address = int(space.network_address) + rng.randrange(space.num_addresses)
    return ipaddress.ip_network((address, length), strict=False)


def _members(rng: random.Random, count: int) -> set[ipaddress.IPv4Address]:
    """The peer group's member IPs: half in the sender's /16, half in 203.0.113.0/24."""
    found: set[ipaddress.IPv4Address] = set()
    spaces = (SENDER_PAIRS, ipaddress.ip_network("203.0.113.0/24"))
    while len(found) < count:
        space = spaces[len(found) % 2]
        found.add(space.network_address + rng.randrange(1, space.num_addresses - 1))
    return found


# --- frames --------------------------------------------------------------------------------


def frames(state: HostState, count: int, distinct_tuples: int, size: int = 64, *, seed: int = 1,
           line_rate_bps: float = 25e9, start_ns: int = 1_700_000_000 * 10**9) -> Frames:  # fmt: skip
    """`count` frames (see the module docstring) cycling through `distinct_tuples` distinct
    allowed 5-tuples in a random order; arrival times spaced as at `line_rate_bps` (preamble
    and gap included) from `start_ns`."""
    if count < 1:
        raise Invalid("count", f"must be at least 1, got {count}")
    if not 1 <= distinct_tuples <= count:
        raise Invalid("distinct_tuples", f"must be 1..count ({count}), got {distinct_tuples}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise Invalid("size", f"must be {MIN_SIZE}..{MAX_SIZE} (FCS included), got {size}")
    sender, receiver = _port_at(state, SENDER_OFPORT), _port_at(state, RECEIVER_OFPORT)
    if sender.mac == receiver.mac or not any(ip.version == 4 for ip in receiver.fixed_ips):
        raise Invalid("state", f"port {receiver.id} needs its own MAC and an IPv4 fixed IP")
    rng = np.random.default_rng(seed)
    tuples = _tuples(rng, _recipes(state, sender, receiver), distinct_tuples)
    length = size - FCS
    dst_ip = int(next(ip for ip in receiver.fixed_ips if ip.version == 4))
    rows = _headers(tuples, length, sender.mac, receiver.mac, dst_ip)
    order = np.arange(count, dtype=np.int64) % distinct_tuples
    buf = rows[order].reshape(-1)
    offsets = np.arange(count, dtype=np.int64) * length
    gap_ns = (size + 20) * 8 / line_rate_bps * 1e9
    times = start_ns + np.round(np.arange(count) * gap_ns).astype(np.int64)
    return Frames(buf, offsets, np.full(count, length, np.int64), times)


def _port_at(state: HostState, ofport: int) -> Port:
    for port_id, where in state.plugged.items():
        if where.ofport == ofport and port_id in state.ports:
            return state.ports[port_id]
    raise Invalid("state", f"no port plugged at ofport {ofport}")


_Recipe = tuple[tuple[int, ...], int, int, int, int, float]


def _recipes(state: HostState, sender: Port, receiver: Port) -> list[_Recipe]:
    """What the receiver's ingress rules admit from the sender: (protocols, lowest port,
    highest port, first source address, number of addresses, weight), one per rule and
    source block (a rule's weight shared among its blocks)."""
    own = [p for _, p in sender.addresses if p.version == 4]
    if not receiver.port_security_enabled:
        return [((TCP, UDP), 1, 65535, int(p.network_address), p.num_addresses, 1.0) for p in own]
    recipes = []
    for group_id in receiver.security_group_ids:
        group = state.security_groups.get(group_id)
        for rule in group.rules if group is not None else ():
            if rule.direction is not Direction.INGRESS or rule.ethertype != 4 or rule.is_icmp:
                continue
            if rule.protocol is not None and rule.protocol not in (TCP, UDP):
                continue
            protocols = (TCP, UDP) if rule.protocol is None else (rule.protocol,)
            low, high = rule.port_range_min or 1, rule.port_range_max or 65535
            blocks = [b for remote in _remote_blocks(state, rule) for p in own
                      if (b := _overlap(remote, p)) is not None]  # fmt: skip
            for block in blocks:
                recipes.append((protocols, low, high, int(block.network_address), block.num_addresses,
                                1.0 / len(blocks)))  # fmt: skip
    if not recipes:
        raise Invalid("state", f"no ingress rule of port {receiver.id} admits TCP or UDP from "
                               f"port {sender.id}'s addresses: every frame would be dropped")  # fmt: skip
    return recipes


def _remote_blocks(state: HostState, rule: SecurityGroupRule) -> list[ipaddress.IPv4Network]:
    """The rule's remote side as prefixes (members of a remote group as /32s, as the compiler has them)."""
    if rule.remote_cidr is not None:
        return [rule.remote_cidr]
    if rule.remote_group_id is None:
        return [ipaddress.ip_network("0.0.0.0/0")]
    group = state.security_groups.get(rule.remote_group_id)
    found = set() if group is None else {ipaddress.ip_network(ip) for ip in group.member_ips if ip.version == 4}
    for port in state.ports.values():
        if rule.remote_group_id in port.security_group_ids:
            found.update(p for _, p in port.addresses if p.version == 4)
    return sorted(found, key=lambda p: (int(p.network_address), p.prefixlen))


def _overlap(a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> ipaddress.IPv4Network | None:
    if a.subnet_of(b):
        return a
    if b.subnet_of(a):
        return b
    return None


_TUPLE = np.dtype([("src", "<u4"), ("sport", "<u2"), ("dport", "<u2"), ("proto", "u1")])


def _tuples(rng: np.random.Generator, recipes: list[_Recipe], wanted: int) -> np.ndarray:
    """`wanted` distinct (src, sport, dport, proto), each from a recipe, in generation order."""
    protocols = np.array([r[0][0] for r in recipes], np.uint8)
    both = np.array([len(r[0]) == 2 for r in recipes])
    low = np.array([r[1] for r in recipes], np.int64)
    high = np.array([r[2] for r in recipes], np.int64)
    base = np.array([r[3] for r in recipes], np.int64)
    span = np.array([r[4] for r in recipes], np.int64)
    weight = np.array([r[5] for r in recipes], np.float64)
    weight /= weight.sum()
    found = np.zeros(0, _TUPLE)
    while len(found) < wanted:
        m = 2 * (wanted - len(found)) + 16
        pick = rng.choice(len(recipes), size=m, p=weight)
        batch = np.zeros(m, _TUPLE)
        batch["proto"] = np.where(both[pick] & (rng.random(m) < 0.5), UDP, protocols[pick])
        batch["dport"] = low[pick] + (rng.random(m) * (high[pick] - low[pick] + 1)).astype(np.int64)
        batch["src"] = base[pick] + (rng.random(m) * span[pick]).astype(np.int64)
        batch["sport"] = rng.integers(1024, 65536, m)
        joined = np.concatenate([found, batch])
        _, first = np.unique(joined, return_index=True)
        found = joined[np.sort(first)]
    return found[:wanted]


def _mac(text: str) -> np.ndarray:
    return np.array([int(b, 16) for b in text.split(":")], np.uint8)


def _fold(total: np.ndarray) -> np.ndarray:
    """One's-complement sum of 16-bit words (as int64 sums), complemented: the Internet checksum."""
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def _words(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Sum of the big-endian 16-bit words of rows[:, start:stop] (an odd end padded with 0)."""
    part = rows[:, start:stop].astype(np.int64)
    if part.shape[1] % 2:
        part = np.concatenate([part, np.zeros((len(rows), 1), np.int64)], axis=1)
    return (part[:, 0::2] * 256 + part[:, 1::2]).sum(axis=1)


def _put(rows: np.ndarray, at: int, values: np.ndarray | int, width: int) -> None:
    """Write `values` big-endian, `width` bytes, at column `at` of every row."""
    values = np.broadcast_to(np.asarray(values, np.int64), (len(rows),))
    for k in range(width):
        rows[:, at + k] = (values >> (8 * (width - 1 - k))) & 0xFF


def _headers(tuples: np.ndarray, length: int, src_mac: str, dst_mac: str, dst_ip: int) -> np.ndarray:
    """One frame per tuple, `length` bytes: Ethernet, IPv4 (DF, TTL 64), TCP (ACK) or UDP,
    zero payload, every checksum right."""
    n = len(tuples)
    rows = np.zeros((n, length), np.uint8)
    rows[:, 0:6] = _mac(dst_mac)
    rows[:, 6:12] = _mac(src_mac)
    _put(rows, 12, 0x0800, 2)
    proto = tuples["proto"].astype(np.int64)
    rows[:, 14] = 0x45
    _put(rows, 16, length - 14, 2)  # total length
    _put(rows, 18, np.arange(n) & 0xFFFF, 2)  # identification
    _put(rows, 20, 0x4000, 2)  # DF
    rows[:, 22] = 64
    rows[:, 23] = proto
    _put(rows, 26, tuples["src"].astype(np.int64), 4)
    _put(rows, 30, dst_ip, 4)
    _put(rows, 24, _fold(_words(rows, 14, 34)), 2)
    _put(rows, 34, tuples["sport"].astype(np.int64), 2)
    _put(rows, 36, tuples["dport"].astype(np.int64), 2)
    tcp = proto == TCP
    l4_len = length - 34
    # UDP: length at 38, checksum at 40. TCP: seq 38..41, ack 42..45, offset 46, flags 47,
    # window 48, checksum 50. Fill each kind's rows only.
    udp_rows, tcp_rows = np.flatnonzero(~tcp), np.flatnonzero(tcp)
    u = rows[udp_rows]
    _put(u, 38, l4_len, 2)
    t = rows[tcp_rows]
    _put(t, 38, 1, 4)
    _put(t, 42, 1, 4)
    t[:, 46] = 5 << 4
    t[:, 47] = 0x10  # ACK
    _put(t, 48, 0xFFFF, 2)
    for part, where, index in ((u, 40, udp_rows), (t, 50, tcp_rows)):
        if len(part):
            pseudo = _words(part, 26, 34) + proto[index] + l4_len
            checksum = _fold(pseudo + _words(part, 34, length))
            if where == 40:
                checksum = np.where(checksum == 0, 0xFFFF, checksum)  # UDP: 0 means none
            _put(part, where, checksum, 2)
    rows[udp_rows], rows[tcp_rows] = u, t
    return rows
