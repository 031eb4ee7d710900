"""The pure parts of agent/network/ofctl.py, without OVS: the flow and meter diffs, and the
parsers of what ovs-ofctl prints (the texts below are real OVS 3.1 output, taken from the lab;
tests/test_ovs_lab.py proves the same against a running ovs-vswitchd)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.network.ofctl import (
    CANARY,
    Band,
    Meter,
    diff,
    meter_diff,
    parse_dump,
    parse_flow_mods,
    parse_meters,
)
from dataplane.compile.flows import COOKIE_MAGIC, Flow

OURS = COOKIE_MAGIC << 56


def test_diff_adds_missing_and_changed_flows_and_deletes_stale_ones() -> None:
    keep = Flow(0, 100, "in_port=1", "goto_table:10", OURS | 1)
    old = Flow(10, 100, "dl_dst=02:00:00:00:00:01", "output:1", OURS | 2)
    new = Flow(10, 100, "dl_dst=02:00:00:00:00:01", "output:2", OURS | 2)
    recookied = Flow(0, 0, "", "drop", OURS | 3)
    stale = Flow(10, 100, "dl_dst=02:00:00:00:00:09", "output:9", OURS | 4)
    fresh = Flow(20, 1, "ip", "drop", OURS | 5)
    installed = [keep, old, Flow(0, 0, "", "drop", OURS | 99), stale]
    add, delete = diff([keep, new, recookied, fresh], installed)
    assert add == [new, recookied, fresh]  # a changed flow is an add that replaces it
    assert delete == [stale]
    assert diff([keep], [keep]) == ([], [])
    assert diff([], [keep]) == ([], [keep])


def test_diff_refuses_two_desired_flows_with_one_key() -> None:
    a = Flow(0, 1, "ip", "drop", OURS | 1)
    b = Flow(0, 1, "ip", "output:1", OURS | 2)
    with pytest.raises(ValueError, match="two desired flows with one key"):
        diff([a, b], [])


_flows = st.builds(
    Flow,
    table=st.integers(0, 3),
    priority=st.integers(0, 3),
    match=st.sampled_from(["", "ip", "arp", "in_port=1"]),
    actions=st.sampled_from(["drop", "output:1", "output:2"]),
    cookie=st.integers(0, 2).map(lambda n: OURS | n),
)


@given(st.lists(_flows), st.lists(_flows))
def test_applying_the_diff_gives_the_desired_table(
    desired: list[Flow], installed: list[Flow]
) -> None:
    desired = list({f.key: f for f in desired}.values())
    installed = list({f.key: f for f in installed}.values())  # OVS: one flow per key
    table = {f.key: f for f in installed}
    add, delete = diff(desired, table.values())
    for flow in delete:
        del table[flow.key]
    for flow in add:
        table[flow.key] = flow
    assert set(table.values()) == set(desired)
    assert not set(add) & set(installed)  # nothing already there is sent again
    assert {f.key for f in delete}.isdisjoint(f.key for f in desired)


DUMP = """\
 cookie=0xa700000000000001, priority=100,in_port=1 actions=goto_table:10
 cookie=0xa700000000000006, table=1, priority=11,ct_state=-new+est+trk,ip actions=output:2
 cookie=0xa70000000000000a, table=3, priority=0 actions=drop
 cookie=0x1, actions=drop
 table=2, tcp actions=drop
 cookie=0xa700000000000009, table=2, priority=7,reg0=0x5,dl_dst=02:00:00:00:00:02 actions=set_field:0x64->tun_id,set_field:198.18.0.2->tun_dst,output:4789
 cookie=0xa700000000000005, table=1, idle_timeout=10, priority=10,conj_id=7,ip actions=ct(commit,table=3,zone=5)
"""


def test_parse_dump_reads_every_shape_ovs_prints() -> None:
    assert parse_dump(DUMP) == [
        Flow(0, 100, "in_port=1", "goto_table:10", OURS | 1),
        Flow(1, 11, "ct_state=-new+est+trk,ip", "output:2", OURS | 6),
        Flow(3, 0, "", "drop", OURS | 0xA),
        Flow(0, 32768, "", "drop", 1),
        Flow(2, 32768, "tcp", "drop", 0),
        Flow(2, 7, "reg0=0x5,dl_dst=02:00:00:00:00:02",
             "set_field:0x64->tun_id,set_field:198.18.0.2->tun_dst,output:4789", OURS | 9),  # fmt: skip
        Flow(1, 10, "conj_id=7,ip", "ct(commit,table=3,zone=5)", OURS | 5),
    ]


FLOW_MODS = """\
usable protocols: OXM,OpenFlow10+table_id,NXM+table_id,OpenFlow11
chosen protocol: OXM-OpenFlow15
OFPT_FLOW_MOD (OF1.5) (xid=0x1): ADD cookie:0x1 actions=drop
OFPT_FLOW_MOD (OF1.5) (xid=0x2): ADD table:2 tcp cookie:0x2 actions=drop
OFPT_FLOW_MOD (OF1.5) (xid=0x3): ADD table:2 priority=0,tcp actions=drop
OFPT_FLOW_MOD (OF1.5) (xid=0x4): ADD table:1 priority=10,tcp,tp_dst=0x50/0xfff0 cookie:0xa700000000000003 actions=conjunction(7,1/2)
OFPT_FLOW_MOD (OF1.5) (xid=0x5): ADD table:2 priority=6,arp,arp_tpa=198.51.100.1,arp_op=1 cookie:0xa700000000000008 actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:02:00:00:00:00:01->eth_src,set_field:2->arp_op,IN_PORT
"""


def test_parse_flow_mods_reads_parse_flows_output_in_order() -> None:
    assert parse_flow_mods(FLOW_MODS) == [
        Flow(0, 32768, "", "drop", 1),
        Flow(2, 32768, "tcp", "drop", 2),
        Flow(2, 0, "tcp", "drop", 0),
        Flow(1, 10, "tcp,tp_dst=0x50/0xfff0", "conjunction(7,1/2)", OURS | 3),
        Flow(2, 6, "arp,arp_tpa=198.51.100.1,arp_op=1",
             "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:02:00:00:00:00:01->eth_src,"
             "set_field:2->arp_op,IN_PORT", OURS | 8),  # fmt: skip
    ]


METERS = """\
OFPST_METER_CONFIG reply (OF1.5) (xid=0x2):
meter=8 kbps stats bands=
type=drop rate=2000

meter=5 kbps bands=
type=drop rate=2000
type=drop rate=1000

meter=3 pktps burst stats bands=
type=drop rate=100 burst_size=10
"""


def test_parse_meters_and_meter_text_round_trip() -> None:
    meters = parse_meters(METERS)
    assert meters == [
        Meter.drop(3, pktps=100, burst=10),
        Meter(5, "kbps", (Band(2000), Band(1000)), stats=False),
        Meter.drop(8, kbps=2000),
    ]
    assert meters[0].text() == "meter=3,pktps,burst,stats,bands=type=drop,rate=100,burst_size=10"
    assert meters[1].text() == "meter=5,kbps,bands=type=drop,rate=2000,type=drop,rate=1000"


def test_meter_diff_and_checks() -> None:
    a, b, c = Meter.drop(1, kbps=1000), Meter.drop(2, kbps=2000), Meter.drop(3, pktps=10)
    b2 = Meter.drop(2, kbps=3000, burst=300)
    assert meter_diff([a, b2, c], [b, a, Meter.drop(4, kbps=1)]) == ([c], [b2], [4])
    assert meter_diff([a], [a]) == ([], [], [])
    with pytest.raises(ValueError, match="all have a burst_size or none"):
        Meter(1, "kbps", (Band(10, 5), Band(20)))
    with pytest.raises(ValueError, match="exactly one of kbps and pktps"):
        Meter.drop(1)
    with pytest.raises(ValueError, match="id"):
        Meter.drop(0, kbps=1)


def test_the_canary_lives_in_a_table_of_its_own() -> None:
    assert CANARY.table == 253 and CANARY.cookie >> 56 == COOKIE_MAGIC
