"""The packet engine's pipeline: parse -> port -> egress meter -> anti-spoofing -> egress
groups -> forward -> ingress groups -> ingress meter -> act, one batch of frames at a time.

Each step does what the br-int table of the same name does (compile/openflow.py), on the
tables compile/engine.py makes from the same HostState; dataplane/engine.py drives it. Per
frame it writes a verdict, the output port, the meter colour, and (when an output buffer is
given) the frame as it leaves: unchanged, decapsulated, or VXLAN-encapsulated. Per tenant and
direction it counts packets and bytes by outcome. Nothing is allocated: the caller hands in
every array.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from dataplane.compile.engine import (DEST_ENDPOINT, DEST_GROUPS, DEST_KIND, DEST_LOCAL, DEST_OFPORT, DEST_REMOTE,
                                      DEST_SECURED, DEST_TENANT, KIND_TUNNEL, KIND_VM, KIND_VM_DOWN, METER_EGRESS,
                                      METER_INGRESS, NET_TENANT, NET_VNI, PORT_GROUPS, PORT_KIND, PORT_NETWORK,
                                      PORT_SECURED, PORT_SPOOF_END, PORT_SPOOF_FIRST, PORT_TENANT, SPOOF_LENGTH,
                                      SPOOF_MAC, SPOOF_VERSION, SPOOF_W0)  # fmt: skip
from dataplane.compile import engine as _tables
from dataplane.kernels import classify as _classify
from dataplane.kernels import hashmap
from dataplane.kernels import meter as _meter
from dataplane.kernels import parse as _parse
from dataplane.kernels.classify import NO_MATCH, lookup
from dataplane.kernels.meter import GREEN, PREFETCH_AHEAD, RED, mark, prefetch
from dataplane.kernels.stale import drop_stale_cache
from dataplane.kernels.parse import (DST0, ETH_DST_HI, ETH_DST_LO, ETH_SRC_HI, ETH_SRC_LO, FLAG_TUNNELED, FLAGS,
                                     INNER_OFF, IP_PROTO, IP_VERSION, L4_DST, L4_SRC, NOT_IP, OK, OUTER_SRC, SRC0,
                                     STATUS, VNI, parse_frame)  # fmt: skip

# Verdicts.
OUTPUT = 0  # to out_port (a VM port), decapsulated if it came from the tunnel
ENCAP = 1  # VXLAN to a remote endpoint, out of the tunnel port
SLOW = 2  # left to OVS: ARP, neighbour discovery, other EtherTypes, flooding
DROP_FRAME = 3  # truncated or malformed headers
DROP_NO_PORT = 4  # from an ofport the policy does not know
DROP_ADMIN_DOWN = 5
DROP_SPOOF = 6
DROP_EGRESS = 7  # no egress rule allows it
DROP_INGRESS = 8  # no ingress rule of the destination allows it
DROP_METER = 9  # red at the tenant's meter
DROP_TUNNEL = 10  # from the tunnel but not from a known endpoint, VNI and source MAC
VERDICTS = ("output", "encap", "slow", "drop_frame", "drop_no_port", "drop_admin_down", "drop_spoof",
            "drop_egress", "drop_ingress", "drop_meter", "drop_tunnel")  # fmt: skip

# Counters: uint64 (tenants, 2 directions (METER_EGRESS, METER_INGRESS), COUNTER_COLS).
PASSED_PACKETS, PASSED_BYTES, DROPPED_PACKETS, DROPPED_BYTES = 0, 1, 2, 3
METER_DROPPED_PACKETS, METER_DROPPED_BYTES, SLOW_PACKETS, SLOW_BYTES = 4, 5, 6, 7
COUNTER_COLS = 8

# The underlay of VXLAN encapsulation, int64: this host's IPv4 address, its MAC and the MAC of
# the next hop (the underlay is one L2 segment, as in the lab).
UNDERLAY_IP, UNDERLAY_MAC, UNDERLAY_GATEWAY_MAC = 0, 1, 2
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class Outputs(NamedTuple):
    """Per frame: verdict (int8), out_port (int64), colour (int8); when out_buf is not empty,
    the frames as they leave, at out_offsets/out_lengths (int64) in out_buf (uint8)."""

    verdict: np.ndarray
    out_port: np.ndarray
    colour: np.ndarray
    out_buf: np.ndarray
    out_offsets: np.ndarray
    out_lengths: np.ndarray


class Scratch(NamedTuple):
    row: np.ndarray  # uint32 (PARSED_COLS,): the frame being processed (stays in L1)
    header4: np.ndarray  # uint32 (5,)
    header6: np.ndarray  # uint32 (8,)
    cache: np.ndarray  # uint32 (2**k or 0 rows, CACHE_COLS): the verdict cache (`_decided`)


# Tables smaller than this many leaf entries are looked up directly: their walk costs less than
# the cache's miss (and their decisions would crowd out the big tables').
CACHE_MIN_ENTRIES = 4096
CACHE_COLS = 10  # stamp (generation << 3 | kind << 1 | allowed), then up to 8 header words
_HASH = np.uint64(0x9E37_79B9_7F4A_7C15)


# Without Numba's reference counting (_nrt=False), as kernels/classify.py's kernels: nothing
# here allocates, and with counting every read of an array out of the table tuples costs an
# increment and a decrement (the e2e ran at 1.9 Mpps with it).
drop_stale_cache(__file__, _tables, _classify, hashmap, _meter, _parse)
_kernel = njit(cache=True, nogil=True, _nrt=False)
_inline = njit(cache=True, nogil=True, _nrt=False, inline="always")


@_inline
def _count(counters: np.ndarray, tenant: int, direction: int, column: int, nbytes: int) -> None:
    counters[tenant, direction, column] += 1
    counters[tenant, direction, column + 1] += nbytes


@_inline
def _spoofed(t, port: int, row: np.ndarray) -> bool:
    """True unless the frame's source MAC and address are one of the port's pairs."""
    mac = (np.int64(row[ETH_SRC_HI]) << 32) | np.int64(row[ETH_SRC_LO])
    version = np.int64(row[IP_VERSION])
    for s in range(t.ports[port, PORT_SPOOF_FIRST], t.ports[port, PORT_SPOOF_END]):
        if t.spoof[s, SPOOF_MAC] != mac or t.spoof[s, SPOOF_VERSION] != version:
            continue
        left = t.spoof[s, SPOOF_LENGTH]
        inside = True
        for w in range(4 if version == 6 else 1):
            bits = min(32, max(0, left - 32 * w))
            if bits and (np.int64(row[SRC0 + w]) ^ t.spoof[s, SPOOF_W0 + w]) >> (32 - bits):
                inside = False
        if inside:
            return False
    return True


@_inline
def _decided(table, header: np.ndarray, n: int, kind: int, cache: np.ndarray, generation: int) -> bool:
    """Whether `table` has a rule for `header` (its first n words), through the verdict cache:
    a direct-mapped table of the last decisions, exact on every word the classifier looks at,
    stamped with the policy's generation (a new policy starts it afresh, without clearing)."""
    if cache.shape[0] == 0 or table.entries.shape[0] < CACHE_MIN_ENTRIES:
        return lookup(table, header) != NO_MATCH
    x = np.uint64(kind + 1)
    for w in range(n):
        x = (x ^ np.uint64(header[w])) * _HASH
    entry = cache[np.int64(x >> np.uint64(40)) & (cache.shape[0] - 1)]
    stamp = (generation << 3) | (kind << 1)
    if (np.int64(entry[0]) & ~1) == stamp:
        same = True
        for w in range(n):
            same = same and entry[1 + w] == header[w]
        if same:
            return (entry[0] & 1) == 1
    allowed = lookup(table, header) != NO_MATCH
    entry[0] = stamp | allowed
    for w in range(n):
        entry[1 + w] = header[w]
    return allowed


@_inline
def _allowed(table4, table6, scratch: Scratch, generation: int, groups: int, row: np.ndarray, remote: int,
             ingress: int) -> bool:  # fmt: skip
    """Whether a rule of group set `groups` allows the frame; the remote address is at column
    `remote` (SRC0 or DST0) of the parsed row."""
    if row[IP_VERSION] == 4:
        h = scratch.header4
        h[0] = groups
        h[1] = row[remote]
        h[2] = row[IP_PROTO]
        h[3] = row[L4_SRC]
        h[4] = row[L4_DST]
        return _decided(table4, h, 5, ingress, scratch.cache, generation)
    h = scratch.header6
    h[0] = groups
    for w in range(4):
        h[1 + w] = row[remote + w]
    h[5] = row[IP_PROTO]
    h[6] = row[L4_SRC]
    h[7] = row[L4_DST]
    return _decided(table6, h, 8, 2 + ingress, scratch.cache, generation)


@_inline
def _unhandled(status: int, row: np.ndarray) -> int:
    """SLOW for what OVS alone handles (ARP and other EtherTypes, neighbour discovery),
    DROP_FRAME for headers that are cut short or malformed, -1 for the rest."""
    if status == NOT_IP or (status == OK and row[IP_VERSION] == 6 and row[IP_PROTO] == 58
                            and 133 <= row[L4_SRC] <= 137):  # fmt: skip
        return SLOW
    return DROP_FRAME if status != OK else -1


@_inline
def _move(src, start: int, dst, at: int, length: int) -> None:
    """dst[at:at+length] = src[start:start+length], without a slice (slices need NRT)."""
    for j in range(length):
        dst[at + j] = src[start + j]


@_inline
def _copy(buf, start: int, length: int, out: Outputs, i: int, at: int) -> int:
    out.out_offsets[i] = at
    out.out_lengths[i] = length
    _move(buf, start, out.out_buf, at, length)
    return at + length


@_inline
def _put16(b, at: int, value: int) -> None:
    b[at] = (value >> 8) & 0xFF
    b[at + 1] = value & 0xFF


@_inline
def _put32(b, at: int, value: int) -> None:
    _put16(b, at, value >> 16)
    _put16(b, at + 2, value)


@_inline
def _put48(b, at: int, value: int) -> None:
    _put16(b, at, value >> 32)
    _put32(b, at + 2, value)


@_inline
def _encapsulate(buf, start: int, length: int, vni: int, endpoint: int, underlay: np.ndarray, entropy: int,
                 out: Outputs, i: int, at: int) -> int:  # fmt: skip
    """Write the VXLAN frame carrying buf[start:start+length] to `endpoint` (RFC 7348)."""
    b = out.out_buf
    _put48(b, at, underlay[UNDERLAY_GATEWAY_MAC])
    _put48(b, at + 6, underlay[UNDERLAY_MAC])
    _put16(b, at + 12, 0x0800)
    ip = at + 14
    _put16(b, ip, 0x4500)
    _put16(b, ip + 2, 36 + length)
    _put32(b, ip + 4, 0x4000)  # id 0, don't fragment
    _put16(b, ip + 8, 0x4011)  # TTL 64, UDP
    _put16(b, ip + 10, 0)
    _put32(b, ip + 12, underlay[UNDERLAY_IP])
    _put32(b, ip + 16, endpoint)
    checksum = 0
    for k in range(0, 20, 2):
        checksum += (np.int64(b[ip + k]) << 8) | b[ip + k + 1]
    while checksum >> 16:
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
    _put16(b, ip + 10, ~checksum & 0xFFFF)
    udp = ip + 20
    _put16(b, udp, 49152 | (entropy & 0x3FFF))  # source port from the inner flow: ECMP entropy
    _put16(b, udp + 2, 4789)
    _put16(b, udp + 4, 16 + length)
    _put16(b, udp + 6, 0)
    _put32(b, udp + 8, 0x08000000)  # the I flag
    _put32(b, udp + 12, vni << 8)
    out.out_offsets[i] = at
    out.out_lengths[i] = VXLAN_OVERHEAD + length
    _move(buf, start, out.out_buf, at + VXLAN_OVERHEAD, length)
    return at + VXLAN_OVERHEAD + length


@_kernel
def process(t, meters, counters: np.ndarray, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
            times_ns: np.ndarray, in_ports: np.ndarray, vxlan_port: int, underlay: np.ndarray, scratch: Scratch,
            generation: int, out: Outputs) -> int:  # fmt: skip
    """Run frames 0..len(offsets) through the pipeline; returns the bytes written to out.out_buf."""
    write = out.out_buf.shape[0] > 0
    at = 0
    n = offsets.shape[0]
    for i in range(n):
        if i + PREFETCH_AHEAD < n:  # the egress meter of a frame a few ahead: 64k meters miss L2
            ahead = in_ports[i + PREFETCH_AHEAD]
            if 0 <= ahead < t.ports.shape[0]:
                prefetch(meters, 2 * t.ports[ahead, PORT_TENANT] + METER_EGRESS)
        row = scratch.row
        start, length = offsets[i], lengths[i]
        out.colour[i] = GREEN
        out.out_port[i] = 0
        port = in_ports[i]
        kind = t.ports[port, PORT_KIND] if 0 <= port < t.ports.shape[0] else 0
        # Only the tunnel port carries VXLAN: a VM's own UDP to port 4789 is just UDP.
        parse_frame(buf, start, length, vxlan_port if kind == KIND_TUNNEL else 0, row)
        tunneled = (row[FLAGS] & FLAG_TUNNELED) != 0
        status = row[STATUS]
        # 1. Where the frame comes from: a VM port, or the tunnel (then from whom).
        if kind == KIND_VM or kind == KIND_VM_DOWN:
            tenant = t.ports[port, PORT_TENANT]
            network = t.ports[port, PORT_NETWORK]
            if kind == KIND_VM_DOWN:
                out.verdict[i] = DROP_ADMIN_DOWN
                _count(counters, tenant, METER_EGRESS, DROPPED_PACKETS, length)
                continue
            colour = mark(meters, 2 * tenant + METER_EGRESS, times_ns[i], length, GREEN)
            out.colour[i] = colour
            if colour == RED:
                out.verdict[i] = DROP_METER
                _count(counters, tenant, METER_EGRESS, METER_DROPPED_PACKETS, length)
                continue
            unhandled = _unhandled(status, row)
            if unhandled >= 0:
                out.verdict[i] = unhandled
                _count(counters, tenant, METER_EGRESS, SLOW_PACKETS if unhandled == SLOW else DROPPED_PACKETS, length)
                continue
            # 2. Anti-spoofing and egress groups (port security).
            if t.ports[port, PORT_SECURED]:
                if _spoofed(t, port, row):
                    out.verdict[i] = DROP_SPOOF
                    _count(counters, tenant, METER_EGRESS, DROPPED_PACKETS, length)
                    continue
                if not _allowed(t.egress4, t.egress6, scratch, generation, t.ports[port, PORT_GROUPS], row, DST0, 0):
                    out.verdict[i] = DROP_EGRESS
                    _count(counters, tenant, METER_EGRESS, DROPPED_PACKETS, length)
                    continue
            _count(counters, tenant, METER_EGRESS, PASSED_PACKETS, length)
            frame_start, frame_length = start, length
        elif kind == KIND_TUNNEL:
            if not tunneled:
                out.verdict[i] = DROP_TUNNEL
                continue
            network = hashmap.get(t.vni_keys, t.vni_values, np.uint64(row[VNI]))
            if network < 0:
                out.verdict[i] = DROP_TUNNEL
                continue
            source = hashmap.get(t.source_keys, t.source_values,
                                 np.uint64((network << 48) | (np.int64(row[ETH_SRC_HI]) << 32) | row[ETH_SRC_LO]))  # fmt: skip
            if source < 0 or source != row[OUTER_SRC]:
                out.verdict[i] = DROP_TUNNEL
                continue
            tenant = t.networks[network, NET_TENANT]
            frame_start, frame_length = start + row[INNER_OFF], length - row[INNER_OFF]
            unhandled = _unhandled(status, row)
            if unhandled >= 0:
                out.verdict[i] = unhandled
                _count(counters, tenant, METER_INGRESS, SLOW_PACKETS if unhandled == SLOW else DROPPED_PACKETS,
                       frame_length)  # fmt: skip
                continue
        else:
            out.verdict[i] = DROP_NO_PORT
            continue
        # 3. Forwarding by (network, destination MAC): broadcast, multicast and unknown
        # destinations are flooded by OVS.
        dst_hi = np.int64(row[ETH_DST_HI])
        d = -1
        if not dst_hi & 0x100:
            d = hashmap.get(t.forward_keys, t.forward_values,
                            np.uint64((network << 48) | (dst_hi << 32) | row[ETH_DST_LO]))  # fmt: skip
        if d < 0 or (kind == KIND_TUNNEL and t.destinations[d, DEST_KIND] != DEST_LOCAL):
            out.verdict[i] = SLOW
            continue
        if t.destinations[d, DEST_KIND] == DEST_REMOTE:
            out.verdict[i] = ENCAP
            out.out_port[i] = t.destinations[d, DEST_OFPORT]
            if write:
                entropy = row[SRC0] ^ row[DST0] ^ (row[L4_SRC] << 16) ^ row[L4_DST]
                at = _encapsulate(buf, frame_start, frame_length, t.networks[network, NET_VNI],
                                  t.destinations[d, DEST_ENDPOINT], underlay, entropy, out, i, at)  # fmt: skip
            continue
        if t.destinations[d, DEST_KIND] != DEST_LOCAL:
            out.verdict[i] = SLOW
            continue
        # 4. The destination port's ingress groups, its tenant's ingress meter, out.
        receiver = t.destinations[d, DEST_TENANT]
        if t.destinations[d, DEST_SECURED] and not _allowed(
                t.ingress4, t.ingress6, scratch, generation, t.destinations[d, DEST_GROUPS], row, SRC0, 1):
            out.verdict[i] = DROP_INGRESS
            _count(counters, receiver, METER_INGRESS, DROPPED_PACKETS, frame_length)
            continue
        colour = mark(meters, 2 * receiver + METER_INGRESS, times_ns[i], frame_length, GREEN)
        if colour > out.colour[i]:
            out.colour[i] = colour
        if colour == RED:
            out.verdict[i] = DROP_METER
            _count(counters, receiver, METER_INGRESS, METER_DROPPED_PACKETS, frame_length)
            continue
        _count(counters, receiver, METER_INGRESS, PASSED_PACKETS, frame_length)
        out.verdict[i] = OUTPUT
        out.out_port[i] = t.destinations[d, DEST_OFPORT]
        if write:
            at = _copy(buf, frame_start, frame_length, out, i, at)
    return at
