"""Tenant networks end to end: real agents in simulated hosts, each over its own Open vSwitch,
driven only over gRPC; real packets between stand-in VMs; real crashes.

One two-host lab serves the whole module (building it takes seconds); the tests that kill
things come last and leave the lab working again. Every namespace and process is removed by
the fixture, also on failure.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent.lab.hosts import Lab, StandInVM, missing_tools
from agent.lab.probes import Capture, FloodPing, ping
from agent.lab.scenario import Scenario, TenantVM, icmp_received, wait_for
from andromede.v1 import common_pb2, network_pb2, node_pb2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Scenario]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"the lab needs {missing}: run scripts/setup.sh", pytrace=False)
    scenario = Scenario.build(Lab(), hosts=2)
    try:
        scenario.apply()
        yield scenario
    finally:
        scenario.close()


def vm(lab: Scenario, tenant: str, host: str) -> StandInVM:
    return next(v.vm for v in lab.vms if v.tenant == tenant and v.host == host)


def tenant_vm(lab: Scenario, tenant: str, host: str) -> TenantVM:
    return next(v for v in lab.vms if v.tenant == tenant and v.host == host)


def flows(lab: Scenario, host: str) -> set[str]:
    """br-int's flows without their counters, to compare before and after."""
    h = lab.lab.hosts[host]
    out = h.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-stats", "dump-flows",
                 f"unix:{h.rundir}/br-int.mgmt"]).stdout  # fmt: skip
    return {line.strip() for line in out.splitlines() if "cookie=" in line}


def put_group(lab: Scenario, host: str, group: network_pb2.SecurityGroup) -> None:
    api = lab.agents[host].network()
    answer = api.PutSecurityGroups(network_pb2.PutSecurityGroupsRequest(
        request_id=lab.request_id(), security_groups=[group]), timeout=10)  # fmt: skip
    lab.agents[host].wait_applied(answer.generation)


def tcp_listener(target: StandInVM, port: int) -> subprocess.Popen:
    """A TCP server in the VM that accepts connections and answers 'ok'."""
    code = ("import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('0.0.0.0',{port}));s.listen()\nprint('listening',flush=True)\n"
            "while True:\n c,_=s.accept();c.sendall(b'ok');c.close()\n")  # fmt: skip
    proc = target.popen(["python3", "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "listening\n"
    return proc


def tcp_connects(source: StandInVM, ip: str, port: int) -> bool:
    code = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1.5)\n"
            "sys.exit(0 if s.recv(2)==b'ok' else 1)\n")  # fmt: skip
    done = source.run(["python3", "-c", code, ip, str(port)], timeout=10, check=False)
    return done.returncode == 0


# --- isolation and the overlay ------------------------------------------------------------------


def test_a_tenant_pings_across_hosts_and_the_other_tenant_with_the_same_ips_sees_nothing(
    lab: Scenario,
) -> None:
    checks = lab.pings(count=3)
    assert len(checks) == 4
    for check in checks:
        assert check.received > 0, check
        assert check.leaked == 0, f"{check}: the other tenant's VM got ICMP"


def test_the_underlay_carries_vxlan_with_the_tenants_vni_and_no_arp(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    source.run(["ip", "neigh", "flush", "dev", "eth0"])  # the next ping must resolve again
    wire = lab.lab.wire
    with Capture(wire, wire.bridge, "udp dst port 4789", count=50, timeout=3) as capture:
        result = ping(source, target.ip, count=3, interval=0.1)
        packets = capture.packets()
    assert result.received == 3, result.output
    icmp = [p for p in packets if "ICMP echo" in p]
    assert icmp and all("vni 1001" in p for p in icmp), packets
    # The ARP responder answered locally: no ARP inside the tunnel.
    assert not [p for p in packets if "ARP" in p], packets


# --- security groups ------------------------------------------------------------------------------


def test_a_group_admits_tcp_22_from_its_members_and_nothing_else(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    listeners = [tcp_listener(target, 22), tcp_listener(target, 2323)]
    try:
        assert tcp_connects(source, target.ip, 22), "a member was refused on 22"
        assert not tcp_connects(source, target.ip, 2323), "a port no rule allows went through"
        # Only from a CIDR the member is not in: refused now.
        group = network_pb2.SecurityGroup(id="sg-blue", tenant_id="blue", member_ips=[source.ip],
            rules=[network_pb2.SecurityGroupRule(direction=common_pb2.DIRECTION_INGRESS,
                                                 ethertype=network_pb2.ETHERTYPE_IPV4, protocol=6,
                                                 port_range_min=22, port_range_max=22,
                                                 remote_cidr="203.0.113.0/24"),
                   network_pb2.SecurityGroupRule(direction=common_pb2.DIRECTION_EGRESS,
                                                 ethertype=network_pb2.ETHERTYPE_IPV4)])  # fmt: skip
        put_group(lab, "h2", group)
        assert not tcp_connects(source, target.ip, 22), "22 from outside the CIDR went through"
    finally:
        for listener in listeners:
            listener.kill()
            listener.wait()
        lab.apply()  # the scenario's groups again
    assert tcp_connects_eventually(source, target, 22)


def tcp_connects_eventually(source: StandInVM, target: StandInVM, port: int) -> bool:
    listener = tcp_listener(target, port)
    try:
        return tcp_connects(source, target.ip, port)
    finally:
        listener.kill()
        listener.wait()


def test_stateful_groups_let_replies_in_and_stateless_ones_need_both_rules(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    # Stateful (the scenario's): h1 admits only ICMP and 22 in, yet its connection to h2:22
    # gets its replies (from port 22 to an ephemeral port) back through conntrack.
    assert tcp_connects_eventually(source, target, 22)
    # Unsolicited traffic to a port nothing allows is blocked at h1's door.
    assert not tcp_connects_eventually(target, source, 2424)
    ingress, egress = common_pb2.DIRECTION_INGRESS, common_pb2.DIRECTION_EGRESS
    ipv4 = network_pb2.ETHERTYPE_IPV4
    only_22_in = network_pb2.SecurityGroup(id="sg-blue", tenant_id="blue", stateful=False,
        member_ips=[target.ip], rules=[
            network_pb2.SecurityGroupRule(direction=ingress, ethertype=ipv4, protocol=6,
                                          port_range_min=22, port_range_max=22),
            network_pb2.SecurityGroupRule(direction=egress, ethertype=ipv4)])  # fmt: skip
    try:
        put_group(lab, "h1", only_22_in)
        # Stateless on h1: the SYN-ACK from h2:22 is not "to port 22": dropped at h1.
        assert not tcp_connects_eventually(source, target, 22)
        both = network_pb2.SecurityGroup()
        both.CopyFrom(only_22_in)
        both.rules.add(direction=ingress, ethertype=ipv4, protocol=6, port_range_min=1024,
                       port_range_max=65535)  # the replies' ephemeral ports
        put_group(lab, "h1", both)
        assert tcp_connects_eventually(source, target, 22)
    finally:
        lab.apply()


# --- anti-spoofing ------------------------------------------------------------------------------


def test_a_vm_sending_from_a_foreign_ip_or_mac_is_dropped(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    try:
        source.run(["ip", "addr", "add", "198.51.100.99/24", "dev", "eth0"])
        done = source.run(["ping", "-n", "-c", "2", "-W", "1", "-I", "198.51.100.99", target.ip],
                          check=False)  # fmt: skip
        assert " 0 received" in done.stdout, done.stdout
    finally:
        source.run(["ip", "addr", "del", "198.51.100.99/24", "dev", "eth0"])
    try:
        source.run(["ip", "link", "set", "eth0", "address", "fa:16:3e:66:66:66"])
        source.run(["ip", "neigh", "flush", "dev", "eth0"])
        assert ping(source, target.ip, count=2).received == 0
    finally:
        source.run(["ip", "link", "set", "eth0", "address", tenant_vm(lab, "blue", "h1").vm.mac])
    assert ping(source, target.ip, count=3).received > 0


# --- crashes ------------------------------------------------------------------------------------


def test_kill_9_of_the_agent_and_a_restart_lose_no_packet_and_change_no_flow(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    before = flows(lab, "h1"), flows(lab, "h2")
    flood = FloodPing(source, target.ip, count=1500)
    try:
        time.sleep(0.3)
        for name in ("h1", "h2"):
            lab.agents[name].kill()
            lab.agents[name].start()
        result = flood.result(timeout=60)
    finally:
        flood.close()
    assert result.lost == 0, result.output
    assert (flows(lab, "h1"), flows(lab, "h2")) == before, "the restart changed flows"


def test_a_port_deleted_just_before_kill_9_is_gone_from_ovs_after_the_restart(lab: Scenario) -> None:
    agent = lab.agents["h1"]
    red = tenant_vm(lab, "red", "h1")
    ofport = lab.lab.hosts["h1"].vsctl("get", "Interface", red.vm.host_ifname, "ofport")
    agent.network().DeletePorts(network_pb2.DeletePortsRequest(
        request_id=lab.request_id(), ids=[red.port_id]), timeout=10)  # fmt: skip
    agent.kill()  # maybe before its pass ran, maybe after: either way it must be repaired
    agent.start()
    info = agent.node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=5).info
    agent.wait_applied(info.desired_generation)
    ports = lab.lab.hosts["h1"].vsctl("list-ports", "br-int").split()
    assert red.vm.host_ifname not in ports
    assert not [f for f in flows(lab, "h1") if f"in_port={ofport}," in f or f"reg5={ofport}" in f]
    lab.apply()  # put it back for the tests after


def test_kill_9_of_ovs_vswitchd_is_repaired_in_under_2_s_with_no_packet_between_tenants(
    lab: Scenario,
) -> None:
    host = lab.lab.hosts["h2"]
    source, target, other = vm(lab, "blue", "h1"), vm(lab, "blue", "h2"), vm(lab, "red", "h2")
    before, other_icmp = flows(lab, "h2"), icmp_received(other)
    host.stop_vswitchd(signal.SIGKILL)
    host.start_vswitchd()
    restarted = time.monotonic()
    repaired = wait_for(lambda: ping(source, target.ip, count=1, wait=0.3).received == 1,
                        timeout=10, what="the overlay ping after the OVS restart")  # fmt: skip
    assert time.monotonic() - restarted < 2.0, f"repaired in {repaired:.2f} s"
    assert icmp_received(other) == other_icmp, "the red VM with blue's address got blue's pings"
    assert flows(lab, "h2") == before
    assert all(c.received > 0 and c.leaked == 0 for c in lab.pings(count=2))
