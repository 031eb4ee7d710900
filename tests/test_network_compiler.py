"""The network compiler, pure: port ranges to masks, the br-int pipeline's shape, conjunctions
instead of cross products, cookies, determinism. (That OVS gives the verdicts we mean is
proved against a real ovs-vswitchd in the network integration tests.)"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.compile import openflow
from dataplane.compile.flows import FlowDirection, cookie_direction, cookie_tenant, is_ours
from dataplane.compile.openflow import compile_host
from dataplane.compile.ranges import match_text, prefix_blocks
from dataplane.policy import Invalid
from dataplane.topology import (
    AddressPair,
    Direction,
    HostState,
    L2Entry,
    Plugged,
    Port,
    RateLimit,
    SecurityGroup,
    SecurityGroupRule,
    TenantNetwork,
    TunnelEndpoint,
)

# --- port ranges -----------------------------------------------------------------------------


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_prefix_blocks_cover_exactly_the_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = prefix_blocks(lo, hi)
    covered = [v for v in range(max(0, lo - 3), min(65535, hi + 3) + 1)
               if any(v & mask == value for value, mask in blocks)]  # fmt: skip
    assert covered == list(range(lo, hi + 1))
    assert len(blocks) <= 30


@pytest.mark.parametrize(
    ("lo", "hi", "blocks"),
    [(22, 22, 1), (0, 65535, 1), (1, 65535, 16), (1024, 65535, 6), (1000, 1999, 7),
     (1, 65534, 30), (8000, 8080, 3)],
)  # fmt: skip
def test_prefix_blocks_are_the_fewest_prefix_matches(lo: int, hi: int, blocks: int) -> None:
    assert len(prefix_blocks(lo, hi)) == blocks


def test_match_text_writes_ovs_terms() -> None:
    assert match_text("tp_dst", 22, 22) == ["tp_dst=22"]
    assert match_text("tp_dst", 0, 65535) == [""]
    assert match_text("tp_dst", 1024, 2047) == ["tp_dst=0x400/0xfc00"]


# --- a small host ---------------------------------------------------------------------------


def host(members: int = 2, rules: tuple[SecurityGroupRule, ...] | None = None, **changes) -> HostState:
    rules = rules if rules is not None else (
        SecurityGroupRule(Direction.INGRESS, 4, 6, 22, 22, remote_cidr="203.0.113.0/24"),
        SecurityGroupRule(Direction.INGRESS, 4, 6, 1000, 1999, remote_group_id="web"),
        SecurityGroupRule(Direction.EGRESS, 4),
    )  # fmt: skip
    group = SecurityGroup("web", "t1", rules,
                          member_ips=tuple(f"198.51.100.{100 + i}" for i in range(members)))  # fmt: skip
    state = dict(
        networks={"n1": TenantNetwork("n1", "t1", 100), "n2": TenantNetwork("n2", "t2", 200)},
        ports={
            "p1": Port("p1", "t1", "n1", "fa:16:3e:00:00:01", ("198.51.100.10",), (), ("web",)),
            "p2": Port("p2", "t1", "n1", "fa:16:3e:00:00:02", ("198.51.100.11",), (), ("web",)),
            "q1": Port("q1", "t2", "n2", "fa:16:3e:00:00:01", ("198.51.100.10",),
                       port_security_enabled=False),
        },  # the same MAC and IP in tenant t2: separated by network
        security_groups={"web": group},
        tunnel_endpoints={"h2": TunnelEndpoint("h2", "198.18.0.2")},
        l2_entries={"r1": L2Entry("r1", "n1", "fa:16:3e:00:00:09", "h2", ("198.51.100.20",))},
        plugged={"p1": Plugged(5), "p2": Plugged(6), "q1": Plugged(7)},
        tenant_tags={"t1": 7, "t2": 8},
        ct_zones={"n1": 1, "n2": 2},
        tunnel_ofport=1,
    )  # fmt: skip
    state.update(changes)
    return HostState(**state)


def flows_of(state: HostState, table: int) -> list[str]:
    return [f.match + " -> " + f.actions for f in compile_host(state).flows if f.table == table]


def test_the_same_state_gives_the_same_flows_in_the_same_order() -> None:
    state = host()
    shuffled = {}
    for name in ("networks", "ports", "plugged"):
        items = list(getattr(state, name).items())
        random.Random(1).shuffle(items)
        shuffled[name] = dict(items)
    assert compile_host(state) == compile_host(host(**shuffled))
    keys = [f.key for f in compile_host(state).flows]
    assert len(keys) == len(set(keys)), "two flows with one key: OVS would keep only one"


def test_every_flow_is_ours_with_the_tenant_and_direction_in_its_cookie() -> None:
    pipeline = compile_host(host())
    assert all(is_ours(f.cookie) for f in pipeline.flows)
    for flow in pipeline.flows:
        if "in_port=5" in flow.match and flow.table == openflow.CLASSIFY:
            assert (cookie_tenant(flow.cookie), cookie_direction(flow.cookie)) == (7, FlowDirection.EGRESS)
        if "reg5=7" in flow.match:
            assert (cookie_tenant(flow.cookie), cookie_direction(flow.cookie)) == (8, FlowDirection.INGRESS)
        if flow.priority == 0:
            assert cookie_tenant(flow.cookie) == 0 and flow.actions == "drop"


def test_tenants_with_the_same_addresses_are_kept_apart_by_network() -> None:
    forward = flows_of(host(), openflow.FORWARD)
    assert "reg7=100,dl_dst=fa:16:3e:00:00:01 -> set_field:5->reg5,goto_table:60" in forward
    assert "reg7=200,dl_dst=fa:16:3e:00:00:01 -> set_field:7->reg5,goto_table:60" in forward
    classify = flows_of(host(), openflow.CLASSIFY)
    assert any(f.startswith("in_port=7 -> set_field:200->reg7") for f in classify)


def test_anti_spoofing_holds_a_port_to_its_own_addresses() -> None:
    pair = AddressPair("198.51.100.64/28", "fa:16:3e:00:00:aa")
    port = Port("p1", "t1", "n1", "fa:16:3e:00:00:01", ("198.51.100.10", "2001:db8::10"),
                (pair,), ("web",))  # fmt: skip
    spoof = flows_of(host(ports={**host().ports, "p1": port}), openflow.SPOOF)
    mine = [f for f in spoof if "in_port=5" in f]
    assert "in_port=5,dl_src=fa:16:3e:00:00:01,ip,nw_src=198.51.100.10 -> goto_table:20" in mine
    assert "in_port=5,dl_src=fa:16:3e:00:00:aa,ip,nw_src=198.51.100.64/28 -> goto_table:20" in mine
    assert ("in_port=5,dl_src=fa:16:3e:00:00:01,arp,arp_sha=fa:16:3e:00:00:01,"
            "arp_spa=198.51.100.10 -> goto_table:20") in mine  # fmt: skip
    assert "in_port=5,dl_src=fa:16:3e:00:00:01,ipv6,ipv6_src=2001:db8::10 -> goto_table:20" in mine
    # Link-local from the MAC (EUI-64), advertisements only for its own targets.
    assert "in_port=5,dl_src=fa:16:3e:00:00:01,ipv6,ipv6_src=fe80::f816:3eff:fe00:1 -> goto_table:20" in mine
    assert "in_port=5,icmp6,icmp_type=136,nd_target=2001:db8::10 -> goto_table:20" in mine
    # Other advertisements, and router advertisements, from no port with port security.
    assert "icmp6,icmp_type=136 -> drop" in spoof and "icmp6,icmp_type=134 -> drop" in spoof
    # Port security off: no address checks (above the drops), no groups either way.
    unchecked = [f for f in compile_host(host()).flows if f.table == openflow.SPOOF and "in_port=7" in f.match]
    assert [(f.match, f.actions) for f in unchecked] == [("in_port=7", "goto_table:20")]
    assert unchecked[0].priority > max(f.priority for f in compile_host(host()).flows
                                       if f.table == openflow.SPOOF and f.actions == "drop")  # fmt: skip
    egress = flows_of(host(), openflow.EGRESS)
    assert [f for f in egress if "in_port=7" in f] == ["in_port=7 -> goto_table:40"]
    ingress = flows_of(host(), openflow.INGRESS)
    assert [f for f in ingress if "reg5=7" in f] == ["reg5=7 -> goto_table:70"]
    assert "reg5=7 -> output:7" in flows_of(host(), openflow.DELIVER)


def conjunctions(flows: list[str]) -> dict[str, set[str]]:
    """Clause flows by match: the conjunction(id,k/n) actions on each."""
    return {f.split(" -> ")[0]: set(f.split(" -> ")[1].split(",conj")) for f in flows if "conjunction(" in f}


def test_a_rule_is_one_conjunction_of_its_ports_protocol_and_remote_never_a_cross_product() -> None:
    ingress_ct = flows_of(host(members=100), openflow.INGRESS_CT)
    members = 100 + 2  # member_ips and the two local ports in the group
    # The 1000-1999 rule: each port names it once; its 7 port blocks and its members are
    # flows of the network, shared by every port of the group.
    assert len([f for f in ingress_ct if f.startswith("reg5=5,") and "conjunction(" in f]) == 1
    assert sum("tp_dst=0x" in f for f in ingress_ct) == 7  # 1000-1999 is 7 blocks
    assert sum(",nw_src=198.51.100." in f for f in ingress_ct) == members
    assert sum("conj_id=" in f for f in ingress_ct) == 2  # that rule and the TCP 22 one
    # Twice the ports: one flow per port more, nothing else.
    more = {f"p{i}": Port(f"p{i}", "t1", "n1", f"fa:16:3e:00:01:{i:02x}", (f"198.51.100.{30 + i}",),
                          (), ("web",)) for i in range(3, 5)}  # fmt: skip
    bigger = host(members=100, ports={**host().ports, **more},
                  plugged={**host().plugged, "p3": Plugged(8), "p4": Plugged(9)})  # fmt: skip
    grown = flows_of(bigger, openflow.INGRESS_CT)
    assert len(grown) == len(ingress_ct) + 2 + 2  # two port clauses, two more members


def test_rules_sharing_a_protocol_or_remote_share_its_flow() -> None:
    rules = (
        SecurityGroupRule(Direction.INGRESS, 4, 6, 1000, 1999, remote_group_id="web"),
        SecurityGroupRule(Direction.INGRESS, 4, 6, 3000, 3999, remote_group_id="web"),
    )
    clauses = conjunctions(flows_of(host(members=3, rules=rules), openflow.INGRESS_CT))
    member = clauses["reg7=100,ip,nw_src=198.51.100.100"]
    ports = clauses["reg5=5,ct_state=+trk+new"]
    assert len(member) == len(ports) == 2 and all("3/3" in c for c in member)
    assert clauses["reg5=6,ct_state=+trk+new"] == ports


def test_conjunction_ids_follow_the_rule_not_its_neighbours() -> None:
    ssh = SecurityGroupRule(Direction.INGRESS, 4, 6, 22, 22, remote_cidr="203.0.113.0/24")
    web = SecurityGroupRule(Direction.INGRESS, 4, 6, 1000, 1999, remote_group_id="web")
    alone = [f for f in flows_of(host(rules=(ssh,)), openflow.INGRESS_CT) if "conj_id=" in f]
    both = [f for f in flows_of(host(rules=(web, ssh)), openflow.INGRESS_CT) if "conj_id=" in f]
    assert len(alone) == 1 and len(both) == 2 and alone[0] in both


def test_stateless_groups_skip_conntrack() -> None:
    rules = (SecurityGroupRule(Direction.INGRESS, 4, 17, 53, 53),)
    group = SecurityGroup("web", "t1", rules, stateful=False)
    state = host(security_groups={"web": group})
    ingress = flows_of(state, openflow.INGRESS)
    clauses = conjunctions(ingress)
    assert set(clauses) == {"reg5=5", "reg5=6", "reg7=100,udp,tp_dst=53"}
    assert any(f.startswith("conj_id=") and f.endswith(" -> goto_table:70") for f in ingress)
    assert not any("ct(" in f for f in ingress)


def test_admin_down_drops_everything_of_the_port() -> None:
    down = Port("p1", "t1", "n1", "fa:16:3e:00:00:01", ("198.51.100.10",), (), ("web",),
                admin_state_up=False)  # fmt: skip
    state = host(ports={**host().ports, "p1": down})
    mine = [f for f in compile_host(state).flows if "in_port=5" in f.match or "reg5=5" in f.match]
    assert {(f.table, f.actions) for f in mine} == {(openflow.CLASSIFY, "drop"), (openflow.INGRESS, "drop")}
    # The group's rules still guard the other port of the group, and only it.
    assert {m for m in conjunctions(flows_of(state, openflow.INGRESS_CT)) if m.startswith("reg5=")} == {
        "reg5=6,ct_state=+trk+new"
    }


def test_arp_is_answered_for_local_ports_and_l2_entries_only_in_their_network() -> None:
    arp = flows_of(host(), openflow.ARP)
    answered = sorted(f.split(" -> ")[0] for f in arp if "arp_op=1" in f)
    assert answered == [
        "reg7=100,arp,arp_op=1,arp_tpa=198.51.100.10",
        "reg7=100,arp,arp_op=1,arp_tpa=198.51.100.11",
        "reg7=100,arp,arp_op=1,arp_tpa=198.51.100.20",
        "reg7=200,arp,arp_op=1,arp_tpa=198.51.100.10",
    ]


def test_the_tunnel_admits_only_listed_endpoints_vnis_and_macs() -> None:
    classify = flows_of(host(), openflow.CLASSIFY)
    tunnel = [f for f in classify if f.startswith("in_port=1,")]
    assert tunnel == ["in_port=1,tun_id=100,tun_src=198.18.0.2,dl_src=fa:16:3e:00:00:09 -> "
                      "set_field:100->reg7,set_field:1->reg6,goto_table:50"]  # fmt: skip
    # Floods go to the endpoints that hold L2 entries on the network, and never from the
    # tunnel back into it.
    flood = [f for f in flows_of(host(), openflow.FORWARD) if f.startswith("reg7=100 ")]
    assert flood == ["reg7=100 -> set_field:5->reg5,resubmit(,60),set_field:6->reg5,"
                     "resubmit(,60),set_field:100->tun_id,set_field:198.18.0.2->tun_dst,output:1"]  # fmt: skip
    assert all("output:1" not in f for f in flows_of(host(), openflow.TUNNEL_IN))


def test_rate_limits_become_meters_on_the_tenants_ports() -> None:
    limit = RateLimit("rl", "t1", Direction.EGRESS, cir_bytes_per_s=125_000, cbs_bytes=15_000)
    pipeline = compile_host(host(rate_limits={"rl": limit}))
    assert pipeline.meters == (openflow.Meter(15, rate_kbps=1000, burst_kb=120),)
    classify = [f for f in pipeline.flows if f.table == openflow.CLASSIFY and f.match == "in_port=5"]
    assert classify[0].actions.startswith("meter:15,")


def test_bad_values_cannot_be_built() -> None:
    with pytest.raises(Invalid, match="vni"):
        TenantNetwork("n", "t", 1 << 24)
    with pytest.raises(Invalid, match="port_range_min"):
        SecurityGroupRule(Direction.INGRESS, 4, 6, 30, 22)
    with pytest.raises(Invalid, match="mac"):
        Port("p", "t", "n", "01:00:5e:00:00:01")


def test_a_remote_cidr_of_every_address_is_any_address() -> None:
    everyone = SecurityGroupRule(Direction.INGRESS, 4, remote_cidr="0.0.0.0/0")
    anyone = SecurityGroupRule(Direction.INGRESS, 4)
    clauses = conjunctions(flows_of(host(rules=(everyone,)), openflow.INGRESS_CT))
    assert set(clauses) == {"reg5=5,ct_state=+trk+new", "reg5=6,ct_state=+trk+new", "reg7=100,ip"}
    assert all(c.endswith("/2)") for cs in clauses.values() for c in cs)
    assert len(flows_of(host(rules=(everyone,)), openflow.INGRESS_CT)) == len(
        flows_of(host(rules=(anyone,)), openflow.INGRESS_CT))
