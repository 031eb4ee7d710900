"""dataplane.kernels.parse: the jitted frame parser fills every column exactly as a slow,
obvious parser written here from the rules in the module's docstring does, for crafted frames
of every kind, every prefix of them, random bytes and mutated frames; it reads nothing
outside the frame it is given; and parse_batch is parse_frame, frame after frame."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.kernels import parse as P
from dataplane.kernels.parse import (
    BAD_EXT,
    BAD_L2,
    BAD_L3,
    BAD_VXLAN,
    FLAG_TUNNELED,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    MAX_EXT_HEADERS,
    MAX_VLANS,
    NOT_IP,
    OK,
    PARSED_COLS,
    TRUNCATED,
    VXLAN_PORT,
    parse_batch,
    parse_frame,
)

PROPERTY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COLUMNS = [
    "STATUS", "FLAGS", "ETH_TYPE", "VLANS", "VLAN_ID", "IP_VERSION", "IP_PROTO",
    "SRC0", "SRC1", "SRC2", "SRC3", "DST0", "DST1", "DST2", "DST3", "L4_SRC", "L4_DST",
    "FRAGMENT", "L3_OFF", "L4_OFF", "ETH_DST_HI", "ETH_DST_LO", "ETH_SRC_HI", "ETH_SRC_LO",
    "VNI", "OUTER_SRC", "OUTER_DST", "INNER_OFF", "TCP_FLAGS",
]  # fmt: skip
COL = {name: getattr(P, name) for name in COLUMNS}


# --- the reference: plain Python, one header at a time, from the module docstring's rules ----


class _Cut(Exception):
    """The frame ends inside the header being read."""


def _take(frame: bytes, at: int, size: int) -> bytes:
    if at + size > len(frame):
        raise _Cut
    return frame[at : at + size]


TPIDS = (0x8100, 0x88A8, 0x9100)
EXTENSIONS = (0, 43, 44, 51, 60)  # hop-by-hop, routing, fragment, AH, destination options
L4_SIZE = {6: 20, 17: 8, 136: 8, 132: 12}  # TCP, UDP, UDP-Lite, SCTP: bytes before the ports count


def reference(frame: bytes, vxlan_port: int) -> list[int]:
    """The row parse_frame must produce for `frame` (all of its bytes)."""
    row = dict.fromkeys(COLUMNS, 0)
    status, tunnel = _ref_ethernet(frame, 0, vxlan_port, row)
    if tunnel is not None:
        vni, inner = tunnel
        outer_src, outer_dst = row["SRC0"], row["DST0"]
        row = dict.fromkeys(COLUMNS, 0)
        row.update(FLAGS=FLAG_TUNNELED, VNI=vni, OUTER_SRC=outer_src, OUTER_DST=outer_dst, INNER_OFF=inner)
        status, _ = _ref_ethernet(frame, inner, 0, row)
    row["STATUS"] = status
    return [row[name] for name in COLUMNS]


def _ref_ethernet(frame: bytes, start: int, vxlan_port: int, row: dict) -> tuple[int, tuple | None]:
    try:
        return _ref_layers(frame, start, vxlan_port, row)
    except _Cut:
        return TRUNCATED, None


def _ref_layers(frame: bytes, start: int, vxlan_port: int, row: dict) -> tuple[int, tuple | None]:
    header = _take(frame, start, 14)
    dst, src = int.from_bytes(header[0:6], "big"), int.from_bytes(header[6:12], "big")
    row.update(ETH_DST_HI=dst >> 32, ETH_DST_LO=dst & 0xFFFFFFFF, ETH_SRC_HI=src >> 32, ETH_SRC_LO=src & 0xFFFFFFFF)
    (ether_type,) = struct.unpack("!H", header[12:14])
    row["ETH_TYPE"] = ether_type
    at = start + 14
    while ether_type in TPIDS:
        if row["VLANS"] == MAX_VLANS:
            return BAD_L2, None
        tci, ether_type = struct.unpack("!HH", _take(frame, at, 4))
        if row["VLANS"] == 0:
            row["VLAN_ID"] = tci & 0xFFF
        row["VLANS"] += 1
        row["ETH_TYPE"] = ether_type
        at += 4
    if ether_type == 0x0800:
        return _ref_ipv4(frame, at, vxlan_port, row)
    if ether_type == 0x86DD:
        return _ref_ipv6(frame, at, row), None
    return NOT_IP, None


def _ref_ipv4(frame: bytes, at: int, vxlan_port: int, row: dict) -> tuple[int, tuple | None]:
    fixed = _take(frame, at, 20)
    version_ihl, _tos, total, _ident, frag, _ttl, proto, _checksum, src, dst = struct.unpack("!BBHHHBBHII", fixed)
    ihl = (version_ihl & 0xF) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or total < ihl:
        return BAD_L3, None
    _take(frame, at, ihl)  # the options too
    row.update(IP_VERSION=4, IP_PROTO=proto, SRC0=src, DST0=dst, L3_OFF=at)
    more, offset = frag & 0x2000, frag & 0x1FFF
    if offset:
        row["FRAGMENT"] = FRAG_LATER
        return OK, None
    if more:
        row["FRAGMENT"] = FRAG_FIRST
    l4 = at + ihl
    status = _ref_l4(frame, l4, proto, 1, row)
    if vxlan_port and proto == 17 and status == OK and row["L4_DST"] == vxlan_port and not more:
        header = _take(frame, l4 + 8, 8)
        if not header[0] & 0x08:
            return BAD_VXLAN, None
        return OK, (int.from_bytes(header[4:7], "big"), l4 + 16)
    return status, None


def _ref_ipv6(frame: bytes, at: int, row: dict) -> int:
    fixed = _take(frame, at, 40)
    if fixed[0] >> 4 != 6:
        return BAD_L3
    next_header = fixed[6]
    src, dst = struct.unpack("!4I", fixed[8:24]), struct.unpack("!4I", fixed[24:40])
    row.update(IP_VERSION=6, IP_PROTO=next_header, L3_OFF=at)
    row.update(SRC0=src[0], SRC1=src[1], SRC2=src[2], SRC3=src[3])
    row.update(DST0=dst[0], DST1=dst[1], DST2=dst[2], DST3=dst[3])
    at += 40
    seen = 0
    while next_header in EXTENSIONS:
        if seen == MAX_EXT_HEADERS:
            return BAD_EXT
        seen += 1
        if next_header == 44:
            nh, _reserved, offset_m, _ident = struct.unpack("!BBHI", _take(frame, at, 8))
            if offset_m >> 3:
                row.update(FRAGMENT=FRAG_LATER, IP_PROTO=nh)
                return OK
            if offset_m & 1 and row["FRAGMENT"] == FRAG_NONE:
                row["FRAGMENT"] = FRAG_FIRST
            size = 8
        else:
            nh, units = _take(frame, at, 2)
            size = (units + 2) * 4 if next_header == 51 else (units + 1) * 8
            _take(frame, at, size)
        next_header = nh
        row["IP_PROTO"] = nh
        at += size
    return _ref_l4(frame, at, next_header, 58, row)


def _ref_l4(frame: bytes, at: int, proto: int, icmp: int, row: dict) -> int:
    if proto in L4_SIZE:
        header = _take(frame, at, L4_SIZE[proto])
        row["L4_SRC"], row["L4_DST"] = struct.unpack("!HH", header[:4])
        if proto == 6:
            row["TCP_FLAGS"] = (header[12] & 1) << 8 | header[13]
    elif proto == icmp:
        header = _take(frame, at, 8)
        row["L4_SRC"], row["L4_DST"] = header[0], header[1]
    else:
        return OK
    row["L4_OFF"] = at
    return OK


# --- frames ------------------------------------------------------------------------------------

DST_MAC, SRC_MAC = bytes.fromhex("0211223344ff"), bytes.fromhex("a0b1c2d3e4f5")
V4_SRC, V4_DST = bytes([10, 1, 2, 3]), bytes([192, 168, 200, 9])
V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("fe80000000000000021122fffe334455")
OUT_SRC, OUT_DST = bytes([172, 16, 0, 1]), bytes([172, 16, 0, 2])


def eth(ether_type: int, payload: bytes, tags: tuple = ()) -> bytes:
    """An Ethernet II frame; tags: (TPID, TCI) pairs, outermost first."""
    stack = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
    return DST_MAC + SRC_MAC + stack + struct.pack("!H", ether_type) + payload


def ipv4(proto: int, payload: bytes, *, options: bytes = b"", frag: int = 0, version: int = 4,
         ihl: int | None = None, total: int | None = None, src: bytes = V4_SRC, dst: bytes = V4_DST) -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4 if ihl is None else ihl
    total = 20 + len(options) + len(payload) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total, 0x1234, frag, 64, proto, 0, src, dst) + options + payload


def ipv6(next_header: int, payload: bytes, *, version: int = 6, src: bytes = V6_SRC, dst: bytes = V6_DST) -> bytes:
    return struct.pack("!IHBB16s16s", version << 28, len(payload), next_header, 64, src, dst) + payload


def extension(kind: int, next_header: int, arg: int = 0) -> bytes:
    """One IPv6 extension header. arg: the length field (8-octet units past the first 8, or
    AH's 4-octet units minus 2), or for a fragment header its offset-and-M field."""
    if kind == 44:
        return struct.pack("!BBHI", next_header, 0, arg, 0xCAFE)
    size = (arg + 2) * 4 if kind == 51 else (arg + 1) * 8
    return bytes([next_header, arg]) + bytes(range(2, size))


def chain(exts: list, last: int, l4: bytes) -> tuple[int, bytes]:
    """IPv6 payload with extension headers exts ((kind, arg) pairs, first first) before l4 of
    protocol last: (the IPv6 next header, the payload)."""
    next_header, payload = last, l4
    for kind, arg in reversed(exts):
        payload = extension(kind, next_header, arg) + payload
        next_header = kind
    return next_header, payload


def tcp(sport: int, dport: int, flags: int = 0x12, ns: bool = True, options: bytes = b"", reserved: int = 0) -> bytes:
    """A TCP segment; reserved: the three bits between the data offset and NS."""
    byte12 = (20 + len(options)) // 4 << 4 | reserved << 1 | ns
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, byte12, flags, 512, 0, 0) + options + b"data"


def udp(sport: int, dport: int, payload: bytes = b"payload!") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0xDEADBEEF, 0) + bytes(16)


def icmp(kind: int, code: int) -> bytes:
    return struct.pack("!BBHI", kind, code, 0, 0x00010002) + b"ping"


def vxlan(inner: bytes, vni: int, flags: int = 0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00" + inner


def vxlan_frame(inner: bytes, vni: int = 0x123456, flags: int = 0x08, port: int = VXLAN_PORT, tags: tuple = ()) -> bytes:
    return eth(0x0800, ipv4(17, udp(49152, port, vxlan(inner, vni, flags)), src=OUT_SRC, dst=OUT_DST), tags)


def word(address: bytes, i: int = 0) -> int:
    return int.from_bytes(address[4 * i : 4 * i + 4], "big")


INNER_V4 = eth(0x0800, ipv4(17, udp(5000, 53)))
INNER_V6 = eth(0x86DD, ipv6(6, tcp(40000, 443, flags=0x02, ns=False)))
HOP, ROUTING, FRAG, AH, DSTOPTS = 0, 43, 44, 51, 60
MIXED = [(HOP, 1), (DSTOPTS, 0), (ROUTING, 2), (FRAG, 1), (AH, 4), (DSTOPTS, 0)]
EIGHT = [(HOP, 0), (DSTOPTS, 1), (ROUTING, 0), (DSTOPTS, 0), (AH, 1), (ROUTING, 1), (DSTOPTS, 2), (AH, 0)]
assert len(EIGHT) == MAX_EXT_HEADERS
NINE = EIGHT + [(DSTOPTS, 0)]
V6_L4 = 14 + 40

# name: (frame, vxlan port, fields the reference must give it: checked by hand from the RFCs).
CRAFTED: dict[str, tuple[bytes, int, dict]] = {
    "ipv4_udp": (eth(0x0800, ipv4(17, udp(1234, 80))), VXLAN_PORT,
                 dict(STATUS=OK, ETH_TYPE=0x0800, IP_VERSION=4, IP_PROTO=17, SRC0=0x0A010203, DST0=0xC0A8C809,
                      L4_SRC=1234, L4_DST=80, L3_OFF=14, L4_OFF=34, ETH_DST_HI=0x0211, ETH_DST_LO=0x223344FF,
                      ETH_SRC_HI=0xA0B1, ETH_SRC_LO=0xC2D3E4F5)),
    "ipv4_tcp": (eth(0x0800, ipv4(6, tcp(443, 51000, flags=0x12, ns=True))), VXLAN_PORT,
                 dict(STATUS=OK, IP_PROTO=6, L4_SRC=443, L4_DST=51000, TCP_FLAGS=0x112, L4_OFF=34)),
    "ipv4_tcp_all_flags": (eth(0x0800, ipv4(6, tcp(1, 2, flags=0xFF, ns=False, options=bytes([2, 4, 5, 180])))),
                           VXLAN_PORT, dict(STATUS=OK, TCP_FLAGS=0xFF)),
    "ipv4_tcp_reserved_bits": (eth(0x0800, ipv4(6, tcp(1, 2, flags=0x04, ns=False, reserved=7))), VXLAN_PORT,
                               dict(STATUS=OK, TCP_FLAGS=0x04)),
    "ipv6_tcp_reserved_bits": (eth(0x86DD, ipv6(6, tcp(1, 2, flags=0x80, ns=True, reserved=7))), VXLAN_PORT,
                               dict(STATUS=OK, TCP_FLAGS=0x180)),
    "ipv4_tcp_options": (eth(0x0800, ipv4(6, tcp(22, 2222), options=bytes([0x94, 4, 0, 0]))), VXLAN_PORT,
                         dict(STATUS=OK, L3_OFF=14, L4_OFF=38, L4_SRC=22, L4_DST=2222)),
    "ipv4_udp_max_options": (eth(0x0800, ipv4(17, udp(7, 9), options=bytes([1] * 40))), VXLAN_PORT,
                             dict(STATUS=OK, L4_OFF=74, L4_SRC=7, L4_DST=9)),
    "ipv4_icmp": (eth(0x0800, ipv4(1, icmp(8, 0))), VXLAN_PORT,
                  dict(STATUS=OK, IP_PROTO=1, L4_SRC=8, L4_DST=0, L4_OFF=34)),
    "ipv4_icmp_unreachable": (eth(0x0800, ipv4(1, icmp(3, 4))), VXLAN_PORT, dict(STATUS=OK, L4_SRC=3, L4_DST=4)),
    "ipv4_sctp": (eth(0x0800, ipv4(132, sctp(2905, 3868))), VXLAN_PORT,
                  dict(STATUS=OK, IP_PROTO=132, L4_SRC=2905, L4_DST=3868, L4_OFF=34)),
    "ipv4_udplite": (eth(0x0800, ipv4(136, udp(6000, 6001))), VXLAN_PORT,
                     dict(STATUS=OK, IP_PROTO=136, L4_SRC=6000, L4_DST=6001)),
    "ipv4_sctp_options": (eth(0x0800, ipv4(132, sctp(1, 2), options=bytes(8))), VXLAN_PORT,
                          dict(STATUS=OK, L4_OFF=42)),
    "ipv4_gre_portless": (eth(0x0800, ipv4(47, bytes(24))), VXLAN_PORT,
                          dict(STATUS=OK, IP_PROTO=47, L4_OFF=0, L3_OFF=14)),
    "ipv4_icmpv6_number_is_portless": (eth(0x0800, ipv4(58, icmp(128, 0))), VXLAN_PORT,
                                       dict(STATUS=OK, IP_PROTO=58, L4_SRC=0, L4_OFF=0)),
    "ipv4_padded": (eth(0x0800, ipv4(17, udp(1, 2, b""), total=28) + bytes(18)), VXLAN_PORT,
                    dict(STATUS=OK, L4_SRC=1, L4_DST=2)),
    "ipv4_frag_first": (eth(0x0800, ipv4(17, udp(1111, 2222), frag=0x2000)), VXLAN_PORT,
                        dict(STATUS=OK, FRAGMENT=FRAG_FIRST, L4_SRC=1111, L4_DST=2222, L4_OFF=34)),
    "ipv4_frag_later": (eth(0x0800, ipv4(17, udp(1111, 2222), frag=0x2000 | 185)), VXLAN_PORT,
                        dict(STATUS=OK, FRAGMENT=FRAG_LATER, IP_PROTO=17, L4_SRC=0, L4_DST=0, L4_OFF=0, L3_OFF=14)),
    "ipv4_frag_last": (eth(0x0800, ipv4(6, tcp(1, 2), frag=1)), VXLAN_PORT,
                       dict(STATUS=OK, FRAGMENT=FRAG_LATER, L4_SRC=0, TCP_FLAGS=0)),
    "ipv4_dont_fragment": (eth(0x0800, ipv4(17, udp(3, 4), frag=0x4000)), VXLAN_PORT,
                           dict(STATUS=OK, FRAGMENT=FRAG_NONE, L4_SRC=3)),
    "ipv4_bad_ihl": (eth(0x0800, ipv4(17, udp(1, 2), ihl=4)), VXLAN_PORT,
                     dict(STATUS=BAD_L3, IP_VERSION=0, L3_OFF=0, SRC0=0, ETH_TYPE=0x0800, ETH_SRC_LO=0xC2D3E4F5)),
    "ipv4_bad_version": (eth(0x0800, ipv4(17, udp(1, 2), version=6)), VXLAN_PORT,
                         dict(STATUS=BAD_L3, IP_VERSION=0)),
    "ipv4_total_too_short": (eth(0x0800, ipv4(17, udp(1, 2), total=19)), VXLAN_PORT, dict(STATUS=BAD_L3)),
    "ipv4_total_shorter_than_options": (eth(0x0800, ipv4(17, udp(1, 2), options=bytes(4), total=20)), VXLAN_PORT,
                                        dict(STATUS=BAD_L3)),
    "ipv6_tcp": (eth(0x86DD, ipv6(6, tcp(80, 40000, flags=0x11, ns=False))), VXLAN_PORT,
                 dict(STATUS=OK, ETH_TYPE=0x86DD, IP_VERSION=6, IP_PROTO=6, SRC0=0x20010DB8, SRC1=0, SRC3=1,
                      DST0=0xFE800000, DST2=0x021122FF, DST3=0xFE334455, L4_SRC=80, L4_DST=40000, TCP_FLAGS=0x11,
                      L3_OFF=14, L4_OFF=V6_L4)),
    "ipv6_udp": (eth(0x86DD, ipv6(17, udp(546, 547))), VXLAN_PORT, dict(STATUS=OK, IP_PROTO=17, L4_DST=547)),
    "ipv6_icmpv6": (eth(0x86DD, ipv6(58, icmp(135, 0))), VXLAN_PORT,
                    dict(STATUS=OK, IP_PROTO=58, L4_SRC=135, L4_DST=0, L4_OFF=V6_L4)),
    "ipv6_icmp_number_is_portless": (eth(0x86DD, ipv6(1, icmp(8, 0))), VXLAN_PORT,
                                     dict(STATUS=OK, IP_PROTO=1, L4_SRC=0, L4_OFF=0)),
    "ipv6_sctp": (eth(0x86DD, ipv6(132, sctp(9, 10))), VXLAN_PORT, dict(STATUS=OK, L4_SRC=9, L4_DST=10)),
    "ipv6_bad_version": (eth(0x86DD, ipv6(17, udp(1, 2), version=4)), VXLAN_PORT,
                         dict(STATUS=BAD_L3, IP_VERSION=0, SRC0=0)),
    "ipv6_hop_by_hop": (eth(0x86DD, ipv6(*chain([(HOP, 0)], 17, udp(1, 2)))), VXLAN_PORT,
                        dict(STATUS=OK, IP_PROTO=17, L4_OFF=V6_L4 + 8, L4_SRC=1)),
    "ipv6_routing_long": (eth(0x86DD, ipv6(*chain([(ROUTING, 2)], 6, tcp(5, 6)))), VXLAN_PORT,
                          dict(STATUS=OK, IP_PROTO=6, L4_OFF=V6_L4 + 24, L4_SRC=5)),
    "ipv6_dstopts": (eth(0x86DD, ipv6(*chain([(DSTOPTS, 1)], 58, icmp(128, 0)))), VXLAN_PORT,
                     dict(STATUS=OK, IP_PROTO=58, L4_OFF=V6_L4 + 16, L4_SRC=128)),
    "ipv6_ah": (eth(0x86DD, ipv6(*chain([(AH, 4)], 17, udp(500, 4500)))), VXLAN_PORT,
                dict(STATUS=OK, IP_PROTO=17, L4_OFF=V6_L4 + 24, L4_DST=4500)),
    "ipv6_atomic_fragment": (eth(0x86DD, ipv6(*chain([(FRAG, 0)], 17, udp(8, 9)))), VXLAN_PORT,
                             dict(STATUS=OK, FRAGMENT=FRAG_NONE, L4_OFF=V6_L4 + 8, L4_SRC=8)),
    "ipv6_atomic_fragment_reserved_bits": (eth(0x86DD, ipv6(*chain([(FRAG, 0b110)], 17, udp(8, 9)))), VXLAN_PORT,
                                           dict(STATUS=OK, FRAGMENT=FRAG_NONE, L4_SRC=8)),
    "ipv6_frag_first": (eth(0x86DD, ipv6(*chain([(FRAG, 1)], 6, tcp(8, 9)))), VXLAN_PORT,
                        dict(STATUS=OK, FRAGMENT=FRAG_FIRST, IP_PROTO=6, L4_OFF=V6_L4 + 8, L4_SRC=8)),
    "ipv6_frag_later": (eth(0x86DD, ipv6(*chain([(HOP, 0), (FRAG, 100 << 3 | 1)], 6, tcp(8, 9)))), VXLAN_PORT,
                        dict(STATUS=OK, FRAGMENT=FRAG_LATER, IP_PROTO=6, L4_SRC=0, L4_OFF=0, L3_OFF=14)),
    "ipv6_frag_later_offset_1": (eth(0x86DD, ipv6(*chain([(FRAG, 1 << 3)], 17, udp(8, 9)))), VXLAN_PORT,
                                 dict(STATUS=OK, FRAGMENT=FRAG_LATER, IP_PROTO=17, L4_SRC=0)),
    "ipv6_frag_later_before_extension": (eth(0x86DD, ipv6(*chain([(FRAG, 8 << 3)], 60, bytes(16)))), VXLAN_PORT,
                                         dict(STATUS=OK, FRAGMENT=FRAG_LATER, IP_PROTO=60)),
    "ipv6_mixed_chain": (eth(0x86DD, ipv6(*chain(MIXED, 6, tcp(7000, 8000)))), VXLAN_PORT,
                         dict(STATUS=OK, FRAGMENT=FRAG_FIRST, IP_PROTO=6, L4_OFF=V6_L4 + 16 + 8 + 24 + 8 + 24 + 8,
                              L4_SRC=7000, L4_DST=8000)),
    "ipv6_max_extensions": (eth(0x86DD, ipv6(*chain(EIGHT, 17, udp(11, 12)))), VXLAN_PORT,
                            dict(STATUS=OK, IP_PROTO=17, L4_OFF=V6_L4 + 8 + 16 + 8 + 8 + 12 + 16 + 24 + 8,
                                 L4_SRC=11)),
    "ipv6_one_extension_too_many": (eth(0x86DD, ipv6(*chain(NINE, 17, udp(11, 12)))), VXLAN_PORT,
                                    dict(STATUS=BAD_EXT, IP_PROTO=DSTOPTS, IP_VERSION=6, L4_SRC=0, L4_OFF=0,
                                         L3_OFF=14)),
    "ipv6_esp": (eth(0x86DD, ipv6(*chain([(HOP, 0)], 50, bytes(32)))), VXLAN_PORT,
                 dict(STATUS=OK, IP_PROTO=50, L4_OFF=0)),
    "ipv6_no_next_header": (eth(0x86DD, ipv6(*chain([(DSTOPTS, 0)], 59, b""))), VXLAN_PORT,
                            dict(STATUS=OK, IP_PROTO=59, L4_OFF=0)),
    "arp": (eth(0x0806, bytes.fromhex("0001080006040001") + SRC_MAC + V4_SRC + bytes(6) + V4_DST), VXLAN_PORT,
            dict(STATUS=NOT_IP, ETH_TYPE=0x0806, IP_VERSION=0, ETH_DST_HI=0x0211, ETH_SRC_LO=0xC2D3E4F5)),
    "vlan_arp": (eth(0x0806, bytes(28), tags=((0x8100, 0x2064),)), VXLAN_PORT,
                 dict(STATUS=NOT_IP, ETH_TYPE=0x0806, VLANS=1, VLAN_ID=100)),
    "vlan_1": (eth(0x0800, ipv4(17, udp(1, 2)), tags=((0x8100, 0xE00A),)), VXLAN_PORT,
               dict(STATUS=OK, VLANS=1, VLAN_ID=10, ETH_TYPE=0x0800, L3_OFF=18, L4_OFF=38)),
    "vlan_2_qinq": (eth(0x86DD, ipv6(17, udp(1, 2)), tags=((0x88A8, 0x0FFF), (0x8100, 7))), VXLAN_PORT,
                    dict(STATUS=OK, VLANS=2, VLAN_ID=4095, ETH_TYPE=0x86DD, L3_OFF=22, L4_OFF=62)),
    "vlan_3": (eth(0x0800, ipv4(6, tcp(1, 2)), tags=((0x9100, 300), (0x88A8, 2), (0x8100, 3))), VXLAN_PORT,
               dict(STATUS=OK, VLANS=3, VLAN_ID=300, L3_OFF=26)),
    "vlan_max": (eth(0x0800, ipv4(6, tcp(1, 2)), tags=tuple((tpid, 1 + i) for i, tpid in
                                                         enumerate((0x88A8, 0x9100, 0x8100, 0x8100)))),
                 VXLAN_PORT, dict(STATUS=OK, VLANS=MAX_VLANS, VLAN_ID=1, L3_OFF=14 + 4 * MAX_VLANS)),
    "vlan_one_too_many": (eth(0x0800, ipv4(6, tcp(1, 2)), tags=tuple((0x8100, 1 + i) for i in range(MAX_VLANS + 1))),
                          VXLAN_PORT, dict(STATUS=BAD_L2, VLANS=MAX_VLANS, VLAN_ID=1, ETH_TYPE=0x8100, L3_OFF=0,
                                           IP_VERSION=0)),
    "vxlan_inner_ipv4": (vxlan_frame(INNER_V4), VXLAN_PORT,
                         dict(STATUS=OK, FLAGS=FLAG_TUNNELED, VNI=0x123456, OUTER_SRC=word(OUT_SRC),
                              OUTER_DST=word(OUT_DST), INNER_OFF=50, SRC0=word(V4_SRC), DST0=word(V4_DST),
                              IP_PROTO=17, L4_SRC=5000, L4_DST=53, L3_OFF=64, L4_OFF=84, ETH_TYPE=0x0800)),
    "vxlan_inner_ipv6": (vxlan_frame(INNER_V6, vni=1), VXLAN_PORT,
                         dict(STATUS=OK, FLAGS=FLAG_TUNNELED, VNI=1, INNER_OFF=50, IP_VERSION=6, IP_PROTO=6,
                              L4_SRC=40000, L4_DST=443, TCP_FLAGS=0x02, L3_OFF=64, L4_OFF=104, SRC3=1)),
    "vxlan_inner_vlan": (vxlan_frame(eth(0x0800, ipv4(1, icmp(0, 0)), tags=((0x8100, 42),)), vni=0xFFFFFF),
                         VXLAN_PORT, dict(STATUS=OK, FLAGS=FLAG_TUNNELED, VNI=0xFFFFFF, VLANS=1, VLAN_ID=42,
                                          L3_OFF=68, L4_OFF=88, IP_PROTO=1)),
    "vxlan_outer_vlan": (vxlan_frame(INNER_V4, tags=((0x8100, 5),)), VXLAN_PORT,
                         dict(STATUS=OK, FLAGS=FLAG_TUNNELED, VLANS=0, VLAN_ID=0, INNER_OFF=54, L3_OFF=68,
                              L4_SRC=5000)),
    "vxlan_inner_arp": (vxlan_frame(eth(0x0806, bytes(28))), VXLAN_PORT,
                        dict(STATUS=NOT_IP, FLAGS=FLAG_TUNNELED, ETH_TYPE=0x0806, VNI=0x123456, INNER_OFF=50)),
    "vxlan_inner_bad_ihl": (vxlan_frame(eth(0x0800, ipv4(17, udp(1, 2), ihl=3))), VXLAN_PORT,
                            dict(STATUS=BAD_L3, FLAGS=FLAG_TUNNELED, OUTER_SRC=word(OUT_SRC), L3_OFF=0)),
    "vxlan_empty_inner": (vxlan_frame(b""), VXLAN_PORT,
                          dict(STATUS=TRUNCATED, FLAGS=FLAG_TUNNELED, VNI=0x123456, INNER_OFF=50, ETH_TYPE=0,
                               ETH_DST_HI=0)),
    "vxlan_in_vxlan": (vxlan_frame(vxlan_frame(INNER_V4, vni=7), vni=8), VXLAN_PORT,
                       dict(STATUS=OK, FLAGS=FLAG_TUNNELED, VNI=8, SRC0=word(OUT_SRC), L4_DST=VXLAN_PORT,
                            L4_OFF=84, OUTER_SRC=word(OUT_SRC))),
    "vxlan_bad_flag": (vxlan_frame(INNER_V4, flags=0x80), VXLAN_PORT,
                       dict(STATUS=BAD_VXLAN, FLAGS=0, VNI=0, OUTER_SRC=0, SRC0=word(OUT_SRC), L4_SRC=49152,
                            L4_DST=VXLAN_PORT, L4_OFF=34)),
    "vxlan_disabled": (vxlan_frame(INNER_V4), 0,
                       dict(STATUS=OK, FLAGS=0, SRC0=word(OUT_SRC), L4_DST=VXLAN_PORT, L4_OFF=34, VNI=0)),
    "vxlan_other_port": (vxlan_frame(INNER_V4), 8472, dict(STATUS=OK, FLAGS=0, L4_DST=VXLAN_PORT)),
    "vxlan_custom_port": (vxlan_frame(INNER_V6, port=8472), 8472,
                          dict(STATUS=OK, FLAGS=FLAG_TUNNELED, IP_VERSION=6, INNER_OFF=50)),
    "vxlan_source_port_only": (eth(0x0800, ipv4(17, udp(VXLAN_PORT, 9999, vxlan(INNER_V4, 3)))), VXLAN_PORT,
                               dict(STATUS=OK, FLAGS=0, L4_SRC=VXLAN_PORT)),
    "vxlan_first_fragment": (eth(0x0800, ipv4(17, udp(1, VXLAN_PORT, vxlan(INNER_V4, 3)), frag=0x2000)),
                             VXLAN_PORT, dict(STATUS=OK, FLAGS=0, FRAGMENT=FRAG_FIRST, L4_DST=VXLAN_PORT)),
    "vxlan_ipv6_underlay": (eth(0x86DD, ipv6(17, udp(1, VXLAN_PORT, vxlan(INNER_V4, 3)))), VXLAN_PORT,
                            dict(STATUS=OK, FLAGS=0, IP_VERSION=6, L4_DST=VXLAN_PORT)),
}  # fmt: skip


# --- running the kernel ----------------------------------------------------------------------


def kernel(buf: bytes, off: int, length: int, vxlan_port: int) -> list[int]:
    row = np.full(PARSED_COLS, 0xA5A5A5A5, np.uint32)  # garbage: every column must be written
    status = parse_frame(np.frombuffer(buf, np.uint8).copy(), off, length, vxlan_port, row)
    assert status == row[P.STATUS]
    return row.tolist()


def assert_same(got: list[int], want: list[int], context: str) -> None:
    diff = {name: (g, w) for name, g, w in zip(COLUMNS, got, want) if g != w}
    assert not diff, f"{context}: columns (kernel, reference) differ: {diff}"


def junk(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


# --- the reference itself, against the hand-checked fields --------------------------------------


def test_hand_checked_fields_cover_every_status() -> None:
    statuses = {fields["STATUS"] for _, _, fields in CRAFTED.values()}
    assert statuses == {OK, NOT_IP, TRUNCATED, BAD_L3, BAD_EXT, BAD_VXLAN, BAD_L2}


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_frame_parses_as_checked_by_hand(name: str) -> None:
    frame, port, fields = CRAFTED[name]
    want = reference(frame, port)
    wrong = {k: (want[COL[k]], v) for k, v in fields.items() if want[COL[k]] != v}
    assert not wrong, f"reference disagrees with the hand-checked fields (got, expected): {wrong}"
    assert_same(kernel(frame, 0, len(frame), port), want, name)


# --- every prefix, and the bytes around a frame ---------------------------------------------------


@pytest.mark.parametrize("name", CRAFTED)
def test_every_prefix_parses_as_the_reference_and_reads_nothing_past_its_length(name: str) -> None:
    frame, port, _ = CRAFTED[name]
    rng = random.Random(name)
    before = junk(rng, 13)
    for cut in range(len(frame) + 1):
        want = reference(frame[:cut], port)
        # The frame is the whole buffer: any read past its end would be out of bounds.
        assert_same(kernel(frame[:cut], 0, cut, port), want, f"{name}[:{cut}] alone")
        # The rest of the real frame follows: reading past `length` would see real headers.
        assert_same(kernel(before + frame + junk(rng, 5), len(before), cut, port), want, f"{name}[:{cut}] inside")
        # A length beyond the buffer: the frame ends where the buffer does.
        assert_same(kernel(before + frame[:cut], len(before), cut + 1000, port), want, f"{name}[:{cut}] overlong")


@pytest.mark.parametrize("name", CRAFTED)
def test_bytes_outside_the_frame_do_not_change_the_row(name: str) -> None:
    frame, port, _ = CRAFTED[name]
    rng = random.Random(name + "outside")
    want = kernel(frame, 0, len(frame), port)
    for _ in range(20):
        before, after = junk(rng, rng.randrange(0, 70)), junk(rng, rng.randrange(0, 70))
        assert_same(kernel(before + frame + after, len(before), len(frame), port), want, f"{name} amid junk")
        assert_same(kernel(before + frame, len(before), len(frame), port), want, f"{name} at the buffer's end")


def test_empty_and_out_of_range_frames_are_truncated_and_zero() -> None:
    frame = CRAFTED["ipv4_udp"][0]
    empty = [TRUNCATED] + [0] * (PARSED_COLS - 1)
    for off, length in [(0, 0), (0, -5), (-1, 40), (len(frame), 10), (len(frame) + 3, 10), (5, -1)]:
        assert kernel(frame, off, length, VXLAN_PORT) == empty, (off, length)


# --- random bytes and mutated frames ------------------------------------------------------------

PORTS = st.sampled_from([0, VXLAN_PORT, 8472])
# Starts that lead random bytes past the Ethernet header into each parser.
STARTS = [b"", DST_MAC + SRC_MAC] + [DST_MAC + SRC_MAC + struct.pack("!H", t) for t in (0x0800, 0x86DD, 0x8100, 0x88A8)]
STARTS += [DST_MAC + SRC_MAC + b"\x08\x00\x45", DST_MAC + SRC_MAC + b"\x86\xdd\x60"]


@PROPERTY
@given(start=st.sampled_from(STARTS), tail=st.binary(max_size=160), port=PORTS)
def test_random_bytes_parse_as_the_reference(start: bytes, tail: bytes, port: int) -> None:
    frame = start + tail
    assert_same(kernel(frame, 0, len(frame), port), reference(frame, port), frame.hex())


@PROPERTY
@given(
    name=st.sampled_from(sorted(CRAFTED)),
    edits=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 255),
    port=PORTS,
    pad=st.integers(0, 20),
)
def test_mutated_frames_parse_as_the_reference(name: str, edits: list, cut: int, port: int, pad: int) -> None:
    frame = bytearray(CRAFTED[name][0])
    for at, value in edits:
        frame[at % len(frame)] = value
    frame = bytes(frame[: max(cut, len(frame) - cut)])  # often the whole frame, sometimes a prefix
    buf = b"\xff" * pad + frame + b"\x00" * pad
    assert_same(kernel(buf, pad, len(frame), port), reference(frame, port), f"{name} mutated: {frame.hex()}")


# --- the batch ---------------------------------------------------------------------------------


def test_parse_batch_is_parse_frame_frame_after_frame() -> None:
    rng = random.Random(7)
    frames = []
    for frame, _, _ in CRAFTED.values():
        frames += [frame, frame[: rng.randrange(len(frame) + 1)], junk(rng, rng.randrange(0, 100))]
    rng.shuffle(frames)
    chunks, offsets, lengths = [], [], []
    at = 0
    for frame in frames:
        gap = junk(rng, rng.randrange(0, 9))
        chunks += [gap, frame]
        offsets.append(at + len(gap))
        lengths.append(len(frame))
        at += len(gap) + len(frame)
    lengths[-1] += 64  # the last frame's length runs past the buffer
    buf = np.frombuffer(b"".join(chunks), np.uint8).copy()
    offsets_a, lengths_a = np.array(offsets, np.int64), np.array(lengths, np.int64)
    for port in (0, VXLAN_PORT):
        out = np.full((len(frames), PARSED_COLS), 0xA5A5A5A5, np.uint32)
        parse_batch(buf, offsets_a, lengths_a, port, out)
        row = np.empty(PARSED_COLS, np.uint32)
        for i, frame in enumerate(frames):
            parse_frame(buf, offsets[i], lengths[i], port, row)
            assert_same(out[i].tolist(), row.tolist(), f"frame {i} of the batch")
            assert_same(out[i].tolist(), reference(frame, port), f"frame {i} of the batch, reference")
    assert len({tuple(r) for r in out.tolist()}) > 50  # the batch really is mixed


def test_parse_batch_rejects_arrays_that_do_not_line_up() -> None:
    buf = np.zeros(64, np.uint8)
    offsets, lengths = np.zeros(2, np.int64), np.full(2, 64, np.int64)
    with pytest.raises(ValueError, match="one row per frame"):
        parse_batch(buf, offsets, lengths, VXLAN_PORT, np.zeros((3, PARSED_COLS), np.uint32))
    with pytest.raises(ValueError, match="one row per frame"):
        parse_batch(buf, offsets, lengths[:1], VXLAN_PORT, np.zeros((2, PARSED_COLS), np.uint32))
