"""The OVS drivers and the lab, against the real thing: two simulated hosts (network
namespaces, each with its own ovsdb-server and ovs-vswitchd on the userspace datapath) on one
underlay, stand-in VMs plugged into br-int, real packets.

What is proved: br-int and the flow-based VXLAN port made through the IDL (agent/network/
ovsdb.py) carry a ping from a VM on one host to a VM on the other, seen on the wire as VXLAN
with the VNI; canonical() predicts exactly what OVS prints back, so a second pass changes
nothing; kill -9 of ovs-vswitchd is detected by the canary and repaired by re-applying;
the IDL client survives restarts of both daemons with a full resync; 100 bundle swaps under a
flood ping lose nothing (and the same swaps done non-atomically do lose packets, so the test
can see a loss); a meter holds a UDP flood near its rate. Each test's lab is torn down and
checked: no namespace, link or process of it is left.

The hand-written flow set stands in for dataplane/compile/openflow.py's pipeline: L2 by
destination MAC to a local port, to the tunnel (tun_id, tun_dst) or flooded, and tunnel
ingress only from the peer's underlay IP with the VNI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import ovs.json
import psutil
import pytest
from pyroute2 import IPRoute
from structlog.testing import capture_logs

from agent.lab.hosts import Lab, LabError, SimulatedHost, StandInVM, missing_tools
from agent.lab.probes import Capture, FloodPing, ping
from agent.network.ofctl import Band, Meter, OpenFlow, diff, meter_diff
from agent.network.ovsdb import VXLAN_OFPORT, Ovsdb
from agent.reconcile import ApplyError
from dataplane.compile.flows import COOKIE_MAGIC, Flow
from dataplane.compile.openflow import CLASSIFY, compile_host, unreachable
from dataplane.topology import Plugged, Port
from tests.test_network_compiler import host as small_host

pytestmark = pytest.mark.integration

BR_INT = "br-int"
VNI = 100
OURS = COOKIE_MAGIC << 56
BROADCAST = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"
EXTRA_TOOLS = ("tcpdump", "ping", "iperf3", "timeout")


# --- the lab -------------------------------------------------------------------------------


def _leftovers(lab: Lab) -> list[str]:
    """Whatever of `lab` is still on the machine."""
    left = [f"namespace {n}" for n in lab.namespaces()]
    with IPRoute() as ipr:
        left += [f"link {name}" for link in ipr.get_links()
                 if (name := link.get_attr("IFLA_IFNAME")).startswith(lab.prefix)]  # fmt: skip
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and (
            str(lab.root) in cmdline or f"{lab.prefix}-" in cmdline
        ):
            left.append(f"process {proc.info['pid']}: {cmdline}")
    if lab.root.exists():
        left.append(f"directory {lab.root}")
    return left


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the OVS lab tests need root (network namespaces, veths)", pytrace=False)
    missing = missing_tools() + [t for t in EXTRA_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing for the OVS lab tests: {', '.join(missing)}; run scripts/setup.sh",
                    pytrace=False)  # fmt: skip
    made = Lab()
    try:
        yield made
    finally:
        made.close()
        left = _leftovers(made)
        assert not left, f"the lab left things behind: {left}"


@dataclass
class Node:
    """One simulated host with its drivers and its VMs."""

    host: SimulatedHost
    db: Ovsdb
    of: OpenFlow
    vms: list[StandInVM]

    def ofports(self) -> dict[str, int]:
        """port id -> ofport, as OVSDB reports it."""
        return {i.port_id: i.ofport for i in self.db.interfaces(BR_INT) if i.port_id}


def overlay_flows(node: Node, peer: Node) -> list[Flow]:
    """L2 over VXLAN between `node`'s VMs and `peer`'s, at the ofports OVSDB gave."""
    ofports = node.ofports()
    local = [(vm.mac, ofports[f"port-{vm.name}"]) for vm in node.vms]
    peer_ip = peer.host.underlay_ip
    tunnel = f"set_field:{VNI}->tun_id,set_field:{peer_ip}->tun_dst,output:{VXLAN_OFPORT}"
    flows = [
        Flow(0, 0, "", "drop", OURS | 1),
        Flow(10, 0, "", "drop", OURS | 2),
        Flow(0, 100, f"in_port={VXLAN_OFPORT},tun_id={VNI},tun_src={peer.host.underlay_ip}",
             "goto_table:10", OURS | 3),
        Flow(10, 50, BROADCAST, ",".join([f"output:{p}" for _, p in local] + [tunnel]), OURS | 4),
    ]  # fmt: skip
    for n, (mac, ofport) in enumerate(local):
        flows.append(Flow(0, 100, f"in_port={ofport}", "goto_table:10", OURS | (0x10 + n)))
        flows.append(Flow(10, 100, f"dl_dst={mac}", f"output:{ofport}", OURS | (0x20 + n)))
    for n, vm in enumerate(peer.vms):
        flows.append(Flow(10, 100, f"dl_dst={vm.mac.upper()}", tunnel, OURS | (0x30 + n)))
    return flows


def sync(node: Node, desired: list[Flow], *, canary: bool = False) -> tuple[int, int]:
    """One reconciler pass over the flows: canonical, diff, one bundle. (added, deleted)."""
    add, delete = diff(node.of.canonical(desired), node.of.installed(BR_INT))
    node.of.apply(BR_INT, add, delete, canary=canary)
    return len(add), len(delete)


def plug(host: SimulatedHost, names: tuple[str, ...], index: int) -> Node:
    """br-int, the VXLAN port and stand-in VMs `names`, all through the IDL."""
    vms = [host.add_vm(name, f"02:00:00:00:{index:02x}:{k + 1:02x}",
                       f"198.51.100.{index * 10 + k + 1}/24") for k, name in enumerate(names)]  # fmt: skip
    db = Ovsdb(host.db)
    db.connect()
    db.ensure_bridge(BR_INT, datapath_type="netdev")
    db.ensure_vxlan_port(BR_INT, host.underlay_ip)
    db.add_ports(BR_INT, {vm.host_ifname: f"port-{vm.name}" for vm in vms}, wait=True)
    return Node(host, db, OpenFlow(host.rundir), vms)


@pytest.fixture
def overlay(lab: Lab) -> Iterator[tuple[Node, Node]]:
    """Two hosts, two VMs each, one tenant network (VNI 100) across them, flows installed."""
    a = plug(lab.add_host("a"), ("a1", "a2"), 1)
    b = plug(lab.add_host("b"), ("b1", "b2"), 2)
    try:
        for node, peer in ((a, b), (b, a)):
            sync(node, overlay_flows(node, peer), canary=True)
        yield a, b
    finally:
        a.db.close()
        b.db.close()


def wait_ping(vm: StandInVM, ip: str, limit: float = 5.0) -> float:
    """Seconds until `vm` gets a reply from `ip` (pinging every 20 ms)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if ping(vm, ip, count=1, wait=0.05).received:
            return time.perf_counter() - started
        time.sleep(0.02)
    raise AssertionError(f"no reply from {ip} to {vm.name} within {limit} s")


# --- the tests -----------------------------------------------------------------------------


def test_vm_pings_vm_on_another_host_over_vxlan(overlay: tuple[Node, Node], lab: Lab) -> None:
    a, b = overlay
    a1, b2 = a.vms[0], b.vms[1]
    wait_ping(a1, b2.ip)  # the first packets also resolve the underlay neighbour
    with Capture(lab.wire, lab.wire.bridge, "udp dst port 4789", count=20, timeout=2) as capture:
        result = ping(a1, b2.ip, count=3, interval=0.05)
        packets = capture.packets()  # the VMs' own IPv6 chatter is flooded over the tunnel too
    assert result.received == 3, result.output
    assert packets and all("VXLAN" in p and f"vni {VNI}" in p for p in packets), packets
    outer = f"IP {a.host.underlay_ip}.", f"> {b.host.underlay_ip}.4789: VXLAN"
    requests = [p for p in packets if all(o in p for o in outer)
                and f"IP {a1.ip} > {b2.ip}: ICMP echo request" in p]  # fmt: skip
    replies = [p for p in packets if f"IP {b2.ip} > {a1.ip}: ICMP echo reply" in p]
    assert (len(requests), len(replies)) == (3, 3), packets
    assert ping(a1, a.vms[1].ip, count=2, interval=0.05).received == 2  # the local path too


def test_bridge_and_ports_are_made_through_the_idl(overlay: tuple[Node, Node]) -> None:
    a, _ = overlay
    vsctl = a.host.vsctl
    assert vsctl("get", "Bridge", BR_INT, "fail_mode") == "secure"
    assert vsctl("get", "Bridge", BR_INT, "datapath_type") == "netdev"
    assert vsctl("get", "Bridge", BR_INT, "other_config:disable-in-band") == '"true"'
    options = vsctl("get", "Interface", "vxlan0", "options")
    assert options == f'{{key=flow, local_ip="{a.host.underlay_ip}", remote_ip=flow}}', options
    assert vsctl("get", "Interface", "vxlan0", "ofport") == str(VXLAN_OFPORT)
    interfaces = {i.name: i for i in a.db.interfaces(BR_INT)}
    for vm in a.vms:
        iface = interfaces[vm.host_ifname]
        assert (iface.port_id, iface.link_state, iface.error) == (f"port-{vm.name}", "up", "")
        assert iface.ofport is not None and iface.ofport > 0
        assert vsctl("get", "Interface", vm.host_ifname, "external_ids:iface-id").strip('"') == (
            f"port-{vm.name}"
        )
    # Idempotent: asking again changes nothing.
    assert not a.db.ensure_bridge(BR_INT)
    assert not a.db.ensure_vxlan_port(BR_INT, a.host.underlay_ip)
    assert not a.db.add_ports(BR_INT, {vm.host_ifname: f"port-{vm.name}" for vm in a.vms})
    # Remove, then add back with another port id.
    assert a.db.remove_port(BR_INT, a.vms[1].host_ifname)
    assert a.vms[1].host_ifname not in {i.name for i in a.db.interfaces(BR_INT)}
    assert not a.db.remove_port(BR_INT, a.vms[1].host_ifname)
    assert a.db.add_port(BR_INT, a.vms[1].host_ifname, "port-other", wait=True)
    assert "port-other" in a.ofports()


def test_a_second_pass_finds_nothing_to_change(overlay: tuple[Node, Node]) -> None:
    a, b = overlay
    desired = overlay_flows(a, b)
    assert len(a.of.installed(BR_INT)) == len(desired)  # the canary is not listed
    assert diff(a.of.canonical(desired), a.of.installed(BR_INT)) == ([], [])
    assert not a.of.restarted(BR_INT)
    # A flow OVS has but that is no longer desired is deleted; one changed is replaced.
    changed = [f if f.priority != 50 else Flow(f.table, f.priority, f.match, "drop", f.cookie)
               for f in desired[1:]]  # fmt: skip
    assert sync(a, changed) == (1, 1)
    assert diff(a.of.canonical(changed), a.of.installed(BR_INT)) == ([], [])
    assert not a.of.restarted(BR_INT)


# fmt: off
SHAPES = [  # flow texts as a compiler could write them; OVS prints most differently
    "table=0,priority=100,in_port=1,actions=goto_table:10",
    "table=0,priority=100,dl_type=0x0800,nw_src=198.51.100.5/24,actions=resubmit(,2)",
    "table=1,priority=10,tcp,tp_dst=0x0050/0xfff0,actions=conjunction(7,1/2)",
    "table=1,priority=10,ip,nw_src=198.18.0.0/16,actions=conjunction(7,2/2)",
    "table=1,priority=10,conj_id=7,ip,actions=ct(commit,zone=5,table=3)",
    "table=1,priority=11,ct_state=+trk+est-new,ip,actions=output:2",
    "table=1,priority=12,ct_state=-trk,ip,actions=ct(table=7,zone=NXM_NX_REG6[0..15])",
    "table=2,priority=5,ipv6,ipv6_src=FD00::1/64,actions=drop",
    "table=2,priority=6,arp,arp_tpa=198.51.100.1,arp_op=1,actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
    "set_field:02:00:00:00:00:01->eth_src,load:0x2->NXM_OF_ARP_OP[],IN_PORT",
    "table=2,priority=7,reg0=0x5,dl_dst=02:00:00:00:00:AA,actions=set_field:0x64->tun_id,"
    "set_field:198.18.0.2->tun_dst,output:4789",
    "table=2,priority=8,arp,arp_spa=198.51.100.0/24,arp_sha=02:00:00:00:00:01,actions=drop",
    "table=3,priority=0,actions=drop",
    "table=3,priority=1,icmp6,icmp_type=135,nd_target=fd00::1,actions=load:0x1->NXM_NX_REG1[0..3],resubmit(,4)",
    "table=3,priority=2,icmp6,icmp_type=136,nd_target=fd00::2,nd_tll=02:00:00:00:00:02,actions=drop",
    "table=4,priority=1,udp,udp_dst=53,actions=ct(commit,exec(load:0x1->NXM_NX_CT_MARK[])),output:3",
    "table=4,priority=2,tun_id=0x64,in_port=4789,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=output:1,output:2",
    "table=5,priority=2,ip,nw_dst=198.51.100.1,actions=meter:1,output:1",
    "table=5,priority=3,ip,nw_frag=no,nw_tos=0x10,actions=mod_dl_src:02:00:00:00:00:01,dec_ttl,output:1",
    "table=5,priority=4,metadata=0x5,tcp6,ipv6_dst=fd00::/8,tp_src=22,actions=write_metadata:0x1/0xff,goto_table:6",
    "table=6,priority=4,dl_vlan=5,actions=strip_vlan,output:1",
    "table=6,priority=5,icmp,icmp_type=8,actions=set_field:0x1->reg2,resubmit(,7)",
    "table=6,priority=6,tcp,tcp_flags=+syn-ack,actions=drop",
    "table=7,priority=32768,actions=drop",
    "table=7,priority=9,sctp,tp_dst=9,actions=output:1",
    "table=7,priority=10,ip,nw_proto=47,actions=drop",
    "table=8,priority=1,reg5=0x3,actions=output:NXM_NX_REG5[]",
]
# fmt: on


def _parse_shape(text: str, serial: int) -> Flow:
    fields = dict(part.split("=", 1) for part in text.split(",")[:2])
    match, _, actions = text.split(",", 2)[2].partition("actions=")
    return Flow(int(fields["table"]), int(fields["priority"]), match.rstrip(","), actions,
                OURS | serial)  # fmt: skip


def test_canonical_is_what_ovs_prints_back(lab: Lab) -> None:
    host = lab.add_host("a")
    db = Ovsdb(host.db)
    db.ensure_bridge(BR_INT)
    db.close()
    of = OpenFlow(host.rundir)
    of.apply_meters(BR_INT, [Meter.drop(1, kbps=1000)])
    flows = [_parse_shape(text, n) for n, text in enumerate(SHAPES, 1)]
    canonical = of.canonical(flows)
    assert [f.key[:2] for f in canonical] == [f.key[:2] for f in flows]
    assert canonical != flows  # OVS spells many of them differently
    of.apply(BR_INT, canonical)
    installed = of.installed(BR_INT)
    assert sorted(installed, key=str) == sorted(canonical, key=str)
    assert diff(canonical, installed) == ([], [])
    # The second time, the cache answers: no subprocess.
    calls = []
    real = of._ofctl
    of._ofctl = lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs)
    assert of.canonical(flows) == canonical
    assert calls == []


def test_flows_no_packet_can_reach_go_ahead_and_the_rest_stays_atomic(lab: Lab) -> None:
    """The compiled pipeline of a small host (tests/test_network_compiler.py's), loaded on a
    real bridge: on an empty bridge everything past table 0 may go ahead; with a new port,
    only that port's flows past table 0; what is installed is the pipeline either way."""
    bridge = lab.add_host("a")
    db = Ovsdb(bridge.db)
    db.ensure_bridge(BR_INT)
    db.close()
    of = OpenFlow(bridge.rundir)
    before = small_host()
    want = of.canonical(compile_host(before).flows)
    ahead = unreachable(want, of.installed(BR_INT))
    assert ahead == [f for f in want if f.table != CLASSIFY] and len(ahead) > 50
    of.apply(BR_INT, want, first=ahead)
    assert diff(want, of.installed(BR_INT)) == ([], [])
    # A third port of the group joins (ofport 8): its own flows go ahead, while the shared
    # ones it changes (the flood lists, the group's members) and its table-0 entry do not.
    newcomer = Port("p3", "t1", "n1", "fa:16:3e:00:00:03", ("198.51.100.12",), (), ("web",))
    after = small_host(ports={**before.ports, "p3": newcomer}, plugged={**before.plugged, "p3": Plugged(8)})
    want = of.canonical(compile_host(after).flows)
    add, delete = diff(want, of.installed(BR_INT))
    ahead = unreachable(add, of.installed(BR_INT))
    assert ahead and all(f.table != CLASSIFY and ("in_port=8" in f.match or "reg5=0x8" in f.match)
                         for f in ahead)  # fmt: skip
    assert {f.table for f in ahead} >= {10, 30, 60, 70}
    shared = [f for f in add if f not in ahead]
    assert any(f.table == CLASSIFY for f in shared) and any("set_field:0x8->reg5" in f.actions for f in shared)
    of.apply(BR_INT, add, delete, first=ahead)
    assert diff(want, of.installed(BR_INT)) == ([], [])


def test_the_ovsdb_client_parses_json_in_c() -> None:
    """scripts/setup.sh lends Debian's C JSON parser to the ovs package (PyPI's has none): the
    pure-Python one doubles the time to plug a thousand ports."""
    assert ovs.json.PARSER == ovs.json.PARSER_C, "run scripts/setup.sh: ovs has no C JSON parser"


def test_ovs_errors_say_what_to_do(lab: Lab) -> None:
    host = lab.add_host("a")
    of = OpenFlow(host.rundir)
    with pytest.raises(ApplyError, match="ovs-vswitchd runs and the bridge exists") as missing:
        of.installed(BR_INT)
    assert missing.value.code == grpc.StatusCode.UNAVAILABLE
    db = Ovsdb(host.db)
    db.ensure_bridge(BR_INT)
    bad = Flow(0, 1, "ip", "output:1,drop", OURS | 1)
    with pytest.raises(ApplyError, match="output:1,drop") as refused:
        of.canonical([Flow(0, 1, "ip", "drop", OURS | 2), bad])
    assert refused.value.code == grpc.StatusCode.INTERNAL
    with pytest.raises(ApplyError, match="bridge br-nope does not exist"):
        db.add_port("br-nope", "vm-x", "port-x")
    host.stop_ovsdb()
    started = time.monotonic()
    with pytest.raises(ApplyError, match="check that ovsdb-server runs") as down:
        db.interfaces(BR_INT, timeout=0.3)
    assert down.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 1.0
    db.close()


def test_vswitchd_kill9_is_detected_and_repaired(overlay: tuple[Node, Node]) -> None:
    a, b = overlay
    a1, b1 = a.vms[0], b.vms[0]
    wait_ping(a1, b1.ip)
    before = a.db.interfaces(BR_INT)
    assert not a.of.restarted(BR_INT)

    a.host.stop_vswitchd(signal.SIGKILL)
    started = time.perf_counter()
    a.host.start_vswitchd()
    while True:  # the bridge's OpenFlow socket comes back when ovs-vswitchd has read the db
        try:
            restarted = a.of.restarted(BR_INT)
            break
        except ApplyError:
            assert time.perf_counter() - started < 2.0, "br-int's socket did not come back"
            time.sleep(0.01)
    assert restarted
    assert a.of.installed(BR_INT) == []  # every flow was lost ...
    assert a.db.interfaces(BR_INT) == before  # ... but bridges, ports, ofports came back
    assert sync(a, overlay_flows(a, b), canary=True)[0] == len(overlay_flows(a, b))
    repaired = time.perf_counter() - started
    reachable = wait_ping(a1, b1.ip)
    total = time.perf_counter() - started
    print(f"\novs-vswitchd kill -9: flows back {repaired:.3f} s after restart, "
          f"ping back {total:.3f} s after restart ({reachable:.3f} s after the flows)")
    assert total < 2.0
    assert not a.of.restarted(BR_INT)
    assert diff(a.of.canonical(overlay_flows(a, b)), a.of.installed(BR_INT)) == ([], [])


def test_idl_client_recovers_when_both_daemons_restart(overlay: tuple[Node, Node]) -> None:
    a, b = overlay
    db, host = a.db, a.host
    before = db.interfaces(BR_INT)
    assert db.resyncs == 0

    host.stop_vswitchd(signal.SIGKILL)
    host.stop_ovsdb(signal.SIGKILL)
    host.start_ovsdb()
    host.start_vswitchd()
    # A change made behind the client's back while it was disconnected ...
    host.vsctl("set", "Interface", a.vms[1].host_ifname, "external_ids:iface-id=port-moved")
    # ... is in the client's replica after its reconnection: a full resync.
    started = time.perf_counter()
    after = {i.name: i for i in db.interfaces(BR_INT)}
    resync_s = time.perf_counter() - started
    assert db.resyncs == 1
    assert after[a.vms[1].host_ifname].port_id == "port-moved"
    assert after[a.vms[0].host_ifname] == next(i for i in before if i.name == a.vms[0].host_ifname)
    # And it writes again: the port id set back through the IDL, waiting for ovs-vswitchd.
    assert db.add_port(BR_INT, a.vms[1].host_ifname, f"port-{a.vms[1].name}", wait=True)
    assert db.interfaces(BR_INT) == before
    sync(a, overlay_flows(a, b), canary=True)
    wait_ping(a.vms[0], b.vms[0].ip)
    print(f"\nIDL reconnected with a full resync {resync_s:.3f} s after both daemons restarted")


class RacingOvsdb(Ovsdb):
    """An Ovsdb client that lets `race` happen once, between reading its replica and
    committing the transaction built from it (what a concurrent writer can do)."""

    race = None

    def _ready(self, deadline: float) -> None:
        super()._ready(deadline)
        race, self.race = self.race, None
        if race is not None:
            race()


def test_idl_transactions_are_retried_after_a_conflict_or_a_lost_connection(lab: Lab) -> None:
    host = lab.add_host("a")
    vm = host.add_vm("a1", "02:00:00:00:01:01", "198.51.100.11/24")
    db = RacingOvsdb(host.db)
    db.connect()
    # Another writer makes the same bridge meanwhile: OVSDB refuses the duplicate name, the
    # client rebuilds its transaction from the new replica and fixes what differs.
    db.race = lambda: host.vsctl("add-br", BR_INT)
    with capture_logs() as logs:
        assert db.ensure_bridge(BR_INT)
    assert [e for e in logs if e["event"] == "ovs.txn_retry"], logs
    assert host.vsctl("--bare", "--columns=name", "find", "Bridge", f"name={BR_INT}") == BR_INT
    assert host.vsctl("get", "Bridge", BR_INT, "fail_mode") == "secure"
    assert host.vsctl("get", "Bridge", BR_INT, "datapath_type") == "netdev"
    # ovsdb-server restarts under a transaction: TRY_AGAIN, retried once reconnected.
    db.race = lambda: (host.stop_ovsdb(signal.SIGKILL), host.start_ovsdb())
    with capture_logs() as logs:
        assert db.add_port(BR_INT, vm.host_ifname, "port-a1", wait=True)
    assert [e for e in logs if e["event"] == "ovs.txn_retry"], logs
    assert db.resyncs == 1
    assert [i.port_id for i in db.interfaces(BR_INT) if i.name == vm.host_ifname] == ["port-a1"]
    db.close()


def test_plugging_from_a_stale_replica_leaves_a_port_plugged_meanwhile_alone(lab: Lab) -> None:
    """The compute side (os-vif) plugs a tap while the agent's replica has not seen it yet:
    the agent's transaction must not add the port a second time (OVS would delete and re-add
    the interface, with a new ofport, under the VM's traffic)."""
    host = lab.add_host("a")
    vm = host.add_vm("a1", "02:00:00:00:01:01", "198.51.100.11/24")
    db = RacingOvsdb(host.db)
    db.ensure_bridge(BR_INT)
    db.race = lambda: host.vsctl("add-port", BR_INT, vm.host_ifname, "--", "set", "Interface",
                                 vm.host_ifname, "external_ids:iface-id=port-a1")  # fmt: skip
    db.add_ports(BR_INT, {vm.host_ifname: "port-a1"}, wait=True)
    before = host.vsctl("get", "Interface", vm.host_ifname, "_uuid", "ofport")
    assert host.vsctl("--bare", "--columns=name", "find", "Port", f"name={vm.host_ifname}") == vm.host_ifname
    db.add_ports(BR_INT, {vm.host_ifname: "port-a1"}, wait=True)  # and again, now seen
    assert host.vsctl("get", "Interface", vm.host_ifname, "_uuid", "ofport") == before
    log = (host.dir / "ovs-vswitchd.log").read_text()
    assert f"deleted interface {vm.host_ifname}" not in log
    db.close()


def test_100_bundle_swaps_under_flood_ping_lose_nothing(lab: Lab) -> None:
    node = plug(lab.add_host("a"), ("a1", "a2"), 1)
    try:
        v1, v2 = node.vms
        p1, p2 = (node.ofports()[f"port-{vm.name}"] for vm in node.vms)
        base = [Flow(0, 0, "", "drop", OURS | 1)]
        direct = base + [Flow(0, 100, f"in_port={p1}", f"output:{p2}", OURS | 2),
                         Flow(0, 100, f"in_port={p2}", f"output:{p1}", OURS | 3)]  # fmt: skip
        detour = base + [Flow(0, 110, f"in_port={p1}", "resubmit(,5)", OURS | 4),
                         Flow(0, 110, f"in_port={p2}", "resubmit(,5)", OURS | 5),
                         Flow(5, 100, f"in_port={p1}", f"output:{p2}", OURS | 6),
                         Flow(5, 100, f"in_port={p2}", f"output:{p1}", OURS | 7)]  # fmt: skip
        paths = [node.of.canonical(direct), node.of.canonical(detour)]
        sync(node, direct, canary=True)
        wait_ping(v1, v2.ip)

        def swaps(atomic: bool) -> tuple[int, int, float]:
            flood = FloodPing(v1, v2.ip, 60_000)  # outlasts 100 swaps even on a loaded machine
            try:
                time.sleep(0.1)  # the flood is under way
                started = time.perf_counter()
                for n in range(100):
                    # Each swap deletes every forwarding flow of one path and adds the other's.
                    add, delete = diff(paths[(n + 1) % 2], node.of.installed(BR_INT))
                    assert add and delete
                    if atomic:
                        node.of.apply(BR_INT, add, delete)
                    else:
                        node.of.apply(BR_INT, [], delete)
                        node.of.apply(BR_INT, add, [])
                seconds = time.perf_counter() - started
                assert flood.running(), "the flood ping ended before the swaps: raise its count"
                result = flood.result()
            finally:
                flood.close()
            return result.sent, result.lost, seconds

        sent, lost, seconds = swaps(atomic=True)
        print(f"\n100 bundle swaps in {seconds:.2f} s under a flood ping: {lost} of {sent} lost")
        assert lost == 0
        # The same swaps done in two steps do lose packets: the test can see a gap.
        sent2, lost2, _ = swaps(atomic=False)
        print(f"the same swaps in two steps each: {lost2} of {sent2} lost")
        assert lost2 > 0
    finally:
        node.db.close()


def test_meter_holds_a_udp_flood_near_its_rate(lab: Lab) -> None:
    node = plug(lab.add_host("a"), ("a1", "a2"), 1)
    try:
        v1, v2 = node.vms
        p1, p2 = (node.ofports()[f"port-{vm.name}"] for vm in node.vms)
        of = node.of
        meter = Meter.drop(7, kbps=20_000, burst=2_000)
        desired = [meter, Meter.drop(8, pktps=1_000, burst=100)]
        of.apply_meters(BR_INT, *meter_diff(desired, of.meters(BR_INT)))
        assert of.meters(BR_INT) == desired
        assert meter_diff(desired, of.meters(BR_INT)) == ([], [], [])
        changed = [meter, Meter.drop(8, pktps=2_000, burst=100), Meter.drop(9, kbps=100)]
        assert meter_diff(changed, of.meters(BR_INT)) == ([changed[2]], [changed[1]], [])
        of.apply_meters(BR_INT, *meter_diff([meter], of.meters(BR_INT)))
        assert of.meters(BR_INT) == [meter]
        with pytest.raises(ApplyError, match="OFPMMFC_BAD_BAND"):  # no dscp_remark here
            remark = Band(1000, type="dscp_remark", prec_level=1)
            of.apply_meters(BR_INT, [Meter(10, "kbps", (remark,))])

        sync(node, [Flow(0, 10, f"in_port={p1}", f"meter:{meter.id},output:{p2}", OURS | 1),
                    Flow(0, 10, f"in_port={p2}", f"output:{p1}", OURS | 2)], canary=True)  # fmt: skip
        seconds, payload = 2, 1400
        server = v2.popen(["iperf3", "-s", "-1", "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        try:
            time.sleep(0.3)
            client = v1.run(["iperf3", "-c", v2.ip, "-u", "-b", "60M", "-l", str(payload),
                             "-t", str(seconds), "--json"], timeout=seconds + 10)  # fmt: skip
            received = json.loads(server.communicate(timeout=10)[0])["end"]["sum"]
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        sent = json.loads(client.stdout)["end"]["sum"]
        frame_bits = (payload + 8 + 20 + 14) * 8  # what a kbps meter counts: the whole frame
        offered = sent["packets"] * frame_bits / seconds / 1000
        passed = (sent["packets"] - received["lost_packets"]) * frame_bits / seconds / 1000
        expected = 20_000 + 2_000 / seconds  # the rate, plus the bucket drained once
        print(f"\nmeter 20000 kbps burst 2000 kb: offered {offered:.0f} kbps, passed "
              f"{passed:.0f} kbps (expected about {expected:.0f})")
        assert offered > 2 * expected
        assert 0.85 * expected < passed < 1.1 * expected
    finally:
        node.db.close()


def test_lab_teardown_is_complete_after_a_partial_setup(lab: Lab) -> None:
    host = lab.add_host("a")
    with pytest.raises(Exception):
        host.add_vm("bad", "not-a-mac", "198.51.100.99/24")  # fails half-way
    assert f"{host.ns.name}-bad" in lab.namespaces()
    with pytest.raises(LabError, match="exists already"):
        lab.add_host("a")
    lab.close()
    assert _leftovers(lab) == []
    lab.close()  # twice is fine
