"""The packet engine on its own: what it counts per tenant, what its meters drop, the frames it
writes out (unchanged, decapsulated, VXLAN-encapsulated), and policies swapped under it with
counters and meter buckets carried over. (That its verdicts are OVS's is
tests/test_engine_agreement.py.)"""

from __future__ import annotations

import dataclasses
import ipaddress

import numpy as np
import pytest

from dataplane.compile.engine import compile_engine
from dataplane.engine import Engine, Underlay
from dataplane.frames import Frames
from dataplane.kernels import engine as k
from dataplane.kernels import parse as p
from dataplane.policy import Invalid
from dataplane.topology import Direction, RateLimit
from tests import packets
from tests.test_network_compiler import host

P1, P2, Q1, TUNNEL = 5, 6, 7, 1
P1_MAC, P2_MAC, REMOTE_MAC = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "fa:16:3e:00:00:09"


def to_p2(dport: int = 1500, src: str = "198.51.100.10", size: int = 60) -> bytes:
    """From p1 to p2 over TCP: port 1000-1999 from a member of `web` passes p2's ingress."""
    return packets.ip_frame(P2_MAC, P1_MAC, src, "198.51.100.11", 6, 40000, dport, pad_to=size)


def test_counts_per_tenant_direction_and_outcome() -> None:
    engine = Engine(compile_engine(host()))
    frames = Frames.of([to_p2(), to_p2(), to_p2(dport=22), to_p2(src="198.51.100.99"), to_p2(size=200)])
    out = engine.process(frames, P1)
    assert [k.VERDICTS[v] for v in out.verdict] == ["output", "output", "drop_ingress", "drop_spoof", "output"]
    assert list(out.out_port[[0, 1, 4]]) == [P2, P2, P2]
    usage = engine.usage()
    egress, ingress = usage["t1"][k.METER_EGRESS], usage["t1"][k.METER_INGRESS]
    assert egress[k.PASSED_PACKETS] == 4 and egress[k.PASSED_BYTES] == 60 * 3 + 200
    assert egress[k.DROPPED_PACKETS] == 1 and egress[k.DROPPED_BYTES] == 60  # the spoofed one
    assert ingress[k.PASSED_PACKETS] == 3 and ingress[k.PASSED_BYTES] == 60 * 2 + 200
    assert ingress[k.DROPPED_PACKETS] == 1  # port 22 from outside 203.0.113.0/24
    assert not usage["t2"].any()
    # Frames leave unchanged.
    for i in (0, 1, 4):
        assert bytes(out.out_buf[out.out_offsets[i] : out.out_offsets[i] + out.out_lengths[i]]) == frames.frame(i)


def test_the_same_addresses_in_another_tenant_are_another_tenants_traffic() -> None:
    engine = Engine(compile_engine(host()))
    # q1 (tenant t2, no port security) has p1's MAC and address, on network n2.
    engine.process(Frames.of([to_p2(), to_p2()]), Q1)
    usage = engine.usage()
    assert usage["t2"][k.METER_EGRESS][k.PASSED_PACKETS] == 2
    assert not usage["t1"].any()


def test_a_tenant_rate_limit_drops_red_packets_and_counts_them() -> None:
    limit = RateLimit("rl", "t1", Direction.EGRESS, cir_bytes_per_s=10_000, cbs_bytes=3000)
    engine = Engine(compile_engine(host(rate_limits={"rl": limit})), now_ns=0)
    frames = Frames.of([to_p2(size=1000)] * 5, times_ns=[0] * 5)  # 5,000 bytes at once: 3 fit the burst
    out = engine.process(frames, P1)
    assert [k.VERDICTS[v] for v in out.verdict] == ["output"] * 3 + ["drop_meter"] * 2
    assert list(out.colour) == [0, 0, 0, 2, 2]
    egress = engine.usage()["t1"][k.METER_EGRESS]
    assert egress[k.METER_DROPPED_PACKETS] == 2 and egress[k.METER_DROPPED_BYTES] == 2000
    assert egress[k.PASSED_PACKETS] == 3
    # 0.1 s later the bucket holds 1,000 bytes again: one more passes.
    out = engine.process(Frames.of([to_p2(size=1000)] * 2, times_ns=[100_000_000] * 2), P1)
    assert [k.VERDICTS[v] for v in out.verdict] == ["output", "drop_meter"]


def test_traffic_to_a_remote_port_leaves_vxlan_encapsulated() -> None:
    underlay = Underlay(int(ipaddress.IPv4Address("198.18.0.1")), 0x020000000001, 0x020000000002)
    engine = Engine(compile_engine(host()), underlay=underlay)
    inner = packets.ip_frame(REMOTE_MAC, P1_MAC, "198.51.100.10", "198.51.100.20", 17, 5000, 53)
    out = engine.process(Frames.of([inner]), P1)
    assert k.VERDICTS[out.verdict[0]] == "encap" and out.out_port[0] == TUNNEL
    frame = bytes(out.out_buf[: out.out_lengths[0]])
    assert len(frame) == len(inner) + k.VXLAN_OVERHEAD
    assert frame[:12] == bytes.fromhex("020000000002" "020000000001")
    assert packets.checksum(frame[14:34]) == 0  # a valid IPv4 header checksum
    row = np.zeros(p.PARSED_COLS, np.uint32)
    p.parse_frame(np.frombuffer(frame, np.uint8), 0, len(frame), p.VXLAN_PORT, row)
    assert row[p.STATUS] == p.OK and row[p.FLAGS] & p.FLAG_TUNNELED
    assert row[p.VNI] == 100 and row[p.OUTER_DST] == int(ipaddress.IPv4Address("198.18.0.2"))
    assert frame[row[p.INNER_OFF] :] == inner


def test_traffic_from_the_tunnel_is_decapsulated_only_from_its_endpoint() -> None:
    engine = Engine(compile_engine(host()))
    inner = packets.ip_frame(P2_MAC, REMOTE_MAC, "198.51.100.100", "198.51.100.11", 6, 40000, 1500)

    def wrapped(src: str, vni: int = 100, flags: int = 0x08) -> bytes:
        udp = packets.udp(50000, 4789, packets.vxlan(vni, inner, flags=flags))
        return packets.ethernet("02:00:00:00:00:01", "02:00:00:00:00:02", packets.ETH_IPV4,
                                packets.ipv4(src, "198.18.0.1", 17, udp))  # fmt: skip

    frames = Frames.of([wrapped("198.18.0.2"), wrapped("198.18.0.3"), wrapped("198.18.0.2", vni=200),
                        wrapped("198.18.0.2", flags=0)])  # fmt: skip
    out = engine.process(frames, TUNNEL)
    assert [k.VERDICTS[v] for v in out.verdict] == ["output", "drop_tunnel", "drop_tunnel", "drop_tunnel"]
    assert out.out_port[0] == P2
    assert bytes(out.out_buf[: out.out_lengths[0]]) == inner
    assert engine.usage()["t1"][k.METER_INGRESS][k.PASSED_BYTES] == len(inner)


def test_arp_neighbour_discovery_and_flooding_are_left_to_ovs() -> None:
    engine = Engine(compile_engine(host()))
    arp = packets.ethernet("ff:ff:ff:ff:ff:ff", P1_MAC, packets.ETH_ARP, b"\0" * 28)
    ns = packets.ethernet("33:33:ff:00:00:0b", P1_MAC, packets.ETH_IPV6,
                          packets.ipv6("fe80::1", "ff02::1:ff00:b", 58, packets.icmp(135, 0, b"\0" * 20)))  # fmt: skip
    unknown = packets.ip_frame("fa:16:3e:00:00:77", P1_MAC, "198.51.100.10", "198.51.100.77", 17, 1, 2)
    out = engine.process(Frames.of([arp, ns, unknown]), P1)
    assert [k.VERDICTS[v] for v in out.verdict] == ["slow", "slow", "slow"]
    assert engine.usage()["t1"][k.METER_EGRESS][k.SLOW_PACKETS] == 2  # the unknown one passed egress first


def test_truncated_and_unknown_sources_are_dropped() -> None:
    engine = Engine(compile_engine(host()))
    out = engine.process(Frames.of([to_p2()[:30], to_p2()]), np.array([P1, 99]))
    assert [k.VERDICTS[v] for v in out.verdict] == ["drop_frame", "drop_no_port"]


def test_a_new_policy_keeps_counters_and_meter_buckets_by_tenant() -> None:
    limit = RateLimit("rl", "t1", Direction.EGRESS, cir_bytes_per_s=10_000, cbs_bytes=3000)
    state = host(rate_limits={"rl": limit})
    engine = Engine(compile_engine(state), now_ns=0)
    engine.process(Frames.of([to_p2(size=1000)] * 2, times_ns=[0, 0]), P1)
    # t2 leaves the policy and comes back; t1's bucket holds 1,000 bytes across the swaps.
    without_t2 = dataclasses.replace(state, tenant_tags={"t1": 7}, networks={"n1": state.networks["n1"]},
                                     ports={i: v for i, v in state.ports.items() if i != "q1"})  # fmt: skip
    engine.process(Frames.of([to_p2()]), Q1)
    engine.load(compile_engine(without_t2), now_ns=0)
    assert engine.usage()["t2"][k.METER_EGRESS][k.PASSED_PACKETS] == 1  # kept while away
    engine.load(compile_engine(state), now_ns=0)
    out = engine.process(Frames.of([to_p2(size=1000)] * 2, times_ns=[0, 0]), P1)
    assert [k.VERDICTS[v] for v in out.verdict] == ["output", "drop_meter"]
    usage = engine.usage()
    assert usage["t1"][k.METER_EGRESS][k.PASSED_PACKETS] == 3
    assert usage["t2"][k.METER_EGRESS][k.PASSED_PACKETS] == 1


def test_bad_batches_are_refused_naming_what_is_wrong() -> None:
    engine = Engine(compile_engine(host()), capacity=2)
    with pytest.raises(Invalid, match="frames: a batch holds at most 2"):
        engine.process(Frames.of([to_p2()] * 3), P1)
    with pytest.raises(Invalid, match="in_ports: one per frame"):
        engine.process(Frames.of([to_p2()] * 2), np.array([P1, P1, P1]))
    with pytest.raises(Invalid, match="capacity"):
        Engine(compile_engine(host()), capacity=0)


def test_the_verdict_cache_answers_as_the_classifier_and_forgets_with_a_new_policy() -> None:
    from bench import engine_policy

    allowing = engine_policy.security_group_state(rules=1000)  # an ingress table big enough to cache
    # The same groups on the same ports (the same cache keys), without their rules for TCP
    # (or any protocol): TCP frames are dropped now, the others still pass.
    ingress = allowing.ports[engine_policy.RECEIVER].security_group_ids
    groups = {g: dataclasses.replace(allowing.security_groups[g], rules=tuple(
        r for r in allowing.security_groups[g].rules if r.protocol not in (6, None))) for g in ingress}  # fmt: skip
    fewer = dataclasses.replace(allowing, security_groups={**allowing.security_groups, **groups})
    frames = engine_policy.frames(allowing, 4096, 512, 64)
    engine = Engine(compile_engine(allowing), capacity=4096, write_frames=False)
    uncached = Engine(compile_engine(allowing), capacity=4096, write_frames=False, cache_rows=0)
    seen = []
    for policy in (allowing, fewer, allowing):
        engine.load(compile_engine(policy))
        uncached.load(compile_engine(policy))
        for _ in range(2):  # the second time, the cache answers
            out = engine.process(frames, engine_policy.SENDER_OFPORT)
            np.testing.assert_array_equal(out.verdict, uncached.process(frames, engine_policy.SENDER_OFPORT).verdict)
        seen.append({k.VERDICTS[v] for v in out.verdict})
    assert seen == [{"output"}, {"output", "drop_ingress"}, {"output"}]
    assert (engine._scratch.cache[:, 0] != 0).sum() >= 512  # it was used
