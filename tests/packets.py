"""Frames for tests, built byte by byte: Ethernet, 802.1Q, IPv4, IPv6, TCP, UDP, ICMP and
VXLAN, with correct lengths and IPv4 header checksums (OVS's ofproto/trace reads them as a
NIC would hand them over)."""

from __future__ import annotations

import ipaddress
import struct

ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_VLAN = 0x0800, 0x86DD, 0x0806, 0x8100


def mac_bytes(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def ethernet(dst: str, src: str, ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", ETH_VLAN, vid) for vid in vlans)
    return mac_bytes(dst) + mac_bytes(src) + tags + struct.pack("!H", ethertype) + payload


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, flags_fragment: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, flags_fragment, ttl, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)  # fmt: skip


def tcp(sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0)


def icmp(type_: int, code: int, payload: bytes = b"\0" * 4) -> bytes:
    return struct.pack("!BBH", type_, code, 0) + payload


def vxlan(vni: int, inner: bytes, *, flags: int = 0x08) -> bytes:
    return struct.pack("!BBHI", flags, 0, 0, vni << 8) + inner


def l4(proto: int, sport: int, dport: int) -> bytes:
    """An L4 header of `proto` with the ports (ICMP/ICMPv6: type and code) given."""
    if proto == 6:
        return tcp(sport, dport)
    if proto in (17, 136):
        return udp(sport, dport)
    if proto == 132:
        return sctp(sport, dport)
    if proto in (1, 58):
        return icmp(sport, dport)
    return b"\0" * 8


def ip_frame(dst_mac: str, src_mac: str, src: str, dst: str, proto: int, sport: int, dport: int,
             pad_to: int = 60) -> bytes:  # fmt: skip
    """An IPv4 or IPv6 frame (by the addresses' version) padded to `pad_to` bytes."""
    payload = l4(proto, sport, dport)
    if ipaddress.ip_address(src).version == 4:
        frame = ethernet(dst_mac, src_mac, ETH_IPV4, ipv4(src, dst, proto, payload))
    else:
        frame = ethernet(dst_mac, src_mac, ETH_IPV6, ipv6(src, dst, proto, payload))
    return frame + b"\0" * max(0, pad_to - len(frame))
