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


def test_a_remote_group_rule_follows_the_groups_members(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    group = lab.agents["h2"].network().GetSecurityGroup(network_pb2.GetSecurityGroupRequest(
        id="sg-blue"), timeout=10).security_group.spec  # fmt: skip
    assert list(group.member_ips) == [source.ip]
    try:
        del group.member_ips[:]  # h1's VM leaves the group (as the control plane sees it)
        put_group(lab, "h2", group)
        assert not tcp_connects_eventually(source, target, 22)
        assert ping(source, target.ip, count=2).received == 0
    finally:
        lab.apply()  # back in
    assert tcp_connects_eventually(source, target, 22)


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


# --- read-back for operators --------------------------------------------------------------------


def test_node_info_reports_the_dataplane(lab: Scenario) -> None:
    info = lab.agents["h1"].node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=5).info
    dataplane = info.dataplane
    assert dataplane.ovs_connected and info.capabilities.ovs_connected
    assert info.capabilities.tunnel_ip == lab.lab.hosts["h1"].underlay_ip
    canary = 1  # the restart canary is on br-int, not in the pipeline
    assert dataplane.flows == sum(t.flows for t in dataplane.tables) == len(flows(lab, "h1")) - canary
    assert {t.name for t in dataplane.tables} >= {"classify", "spoof", "forward", "ingress"}
    assert dataplane.last_pass_ms > 0 and dataplane.last_pass_at.seconds > 0


def test_a_port_reports_what_was_plugged_for_it(lab: Scenario) -> None:
    api = lab.agents["h1"].network()
    blue = vm(lab, "blue", "h1")
    runtime = api.GetPort(network_pb2.GetPortRequest(id="blue-h1"), timeout=10).port.runtime
    ofport = int(lab.lab.hosts["h1"].vsctl("get", "Interface", blue.host_ifname, "ofport"))
    assert (runtime.interface_name, runtime.ofport, runtime.link_up) == (blue.host_ifname, ofport, True)
    listed = api.ListPorts(network_pb2.ListPortsRequest(), timeout=10).ports
    assert {p.spec.id: p.runtime.interface_name for p in listed} == {
        "blue-h1": blue.host_ifname, "red-h1": vm(lab, "red", "h1").host_ifname}


def test_a_trace_says_where_a_packet_goes_and_why_it_is_dropped(lab: Scenario) -> None:
    api = lab.agents["h1"].network()
    target = vm(lab, "blue", "h2")
    trace = api.GetPacketTrace(network_pb2.GetPacketTraceRequest(
        port_id="blue-h1", dst_ip=target.ip), timeout=10)  # fmt: skip
    assert trace.verdict == network_pb2.TRACE_VERDICT_TUNNELLED, trace.trace
    assert trace.tunnel_dst == lab.lab.hosts["h2"].underlay_ip
    assert trace.tables[:2] == ["classify", "spoof"] and "forward" in trace.tables
    spoofed = api.GetPacketTrace(network_pb2.GetPacketTraceRequest(
        port_id="blue-h1", dst_ip=target.ip, src_ip="198.51.100.99", protocol=6, dst_port=22),
        timeout=10)  # fmt: skip
    assert spoofed.verdict == network_pb2.TRACE_VERDICT_DROPPED
    assert spoofed.tables == ["classify", "spoof"]


def test_flows_are_listed_by_port_and_by_tenant_with_their_counters(lab: Scenario) -> None:
    api = lab.agents["h1"].network()
    ping(vm(lab, "red", "h1"), vm(lab, "red", "h2").ip, count=2)
    red = api.ListFlows(network_pb2.ListFlowsRequest(tenant_id="red"), timeout=10).flows
    assert red and all(f.tenant_id == "red" for f in red)
    assert sum(f.packets for f in red if f.table == "classify") >= 2
    ofport = int(lab.lab.hosts["h1"].vsctl("get", "Interface", vm(lab, "blue", "h1").host_ifname,
                                           "ofport"))  # fmt: skip
    port = api.ListFlows(network_pb2.ListFlowsRequest(port_id="blue-h1"), timeout=10).flows
    assert port and all(f"in_port={ofport}" in f.match or f"reg5={ofport:#x}" in f.match
                        for f in port)  # fmt: skip
    assert {f.direction for f in port} == {common_pb2.DIRECTION_INGRESS, common_pb2.DIRECTION_EGRESS}


# --- IPv6, port settings, rate limits, churn ------------------------------------------------------


def put_ports(lab: Scenario, host: str, *ports: network_pb2.Port) -> None:
    agent = lab.agents[host]
    answer = agent.network().PutPorts(network_pb2.PutPortsRequest(
        request_id=lab.request_id(), ports=list(ports)), timeout=10)  # fmt: skip
    agent.wait_applied(answer.generation)


def stored_port(lab: Scenario, host: str, port_id: str) -> network_pb2.Port:
    api = lab.agents[host].network()
    return api.GetPort(network_pb2.GetPortRequest(id=port_id), timeout=10).port.spec


def v6(host: str) -> str:
    return f"2001:db8:1::{10 + int(host[1:])}"


def test_an_ipv6_tenant_works_with_neighbour_discovery_anti_spoofing_and_a_group(
    lab: Scenario,
) -> None:
    blue = {h: tenant_vm(lab, "blue", h) for h in ("h1", "h2")}
    try:
        for h, v in blue.items():
            v.vm.run(["ip", "-6", "addr", "add", f"{v6(h)}/64", "dev", "eth0", "nodad"])
            other = "h2" if h == "h1" else "h1"
            agent = lab.agents[h]
            port = stored_port(lab, h, v.port_id)
            port.fixed_ips.append(v6(h))
            put_ports(lab, h, port)
            entry = agent.network().GetL2Entry(network_pb2.GetL2EntryRequest(
                id=blue[other].port_id), timeout=10).l2_entry.spec  # fmt: skip
            entry.ip_addresses.append(v6(other))
            group = agent.network().GetSecurityGroup(network_pb2.GetSecurityGroupRequest(
                id="sg-blue"), timeout=10).security_group.spec  # fmt: skip
            group.member_ips.append(v6(other))
            group.rules.add(direction=common_pb2.DIRECTION_INGRESS,
                            ethertype=network_pb2.ETHERTYPE_IPV6, protocol=58,
                            remote_group_id="sg-blue")  # fmt: skip
            group.rules.add(direction=common_pb2.DIRECTION_EGRESS,
                            ethertype=network_pb2.ETHERTYPE_IPV6)  # fmt: skip
            agent.network().PutL2Entries(network_pb2.PutL2EntriesRequest(
                request_id=lab.request_id(), l2_entries=[entry]), timeout=10)  # fmt: skip
            put_group(lab, h, group)
        source, target = blue["h1"].vm, blue["h2"].vm
        done = source.run(["ping", "-6", "-n", "-c", "3", "-W", "1", v6("h2")], check=False)
        assert " 0 received" not in done.stdout, done.stdout
        neigh = source.run(["ip", "-6", "neigh", "show", v6("h2")]).stdout
        assert target.mac in neigh, neigh  # answered by the responder with the right MAC
        # From an address the port does not own: dropped.
        source.run(["ip", "-6", "addr", "add", "2001:db8:1::99/64", "dev", "eth0", "nodad"])
        done = source.run(["ping", "-6", "-n", "-c", "2", "-W", "1", "-I", "2001:db8:1::99",
                           v6("h2")], check=False)  # fmt: skip
        assert " 0 received" in done.stdout, done.stdout
    finally:
        for h, v in blue.items():
            v.vm.run(["ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global"])
        lab.apply()


def test_admin_down_stops_a_port_and_port_security_off_opens_it(lab: Scenario) -> None:
    source, target = tenant_vm(lab, "blue", "h1"), tenant_vm(lab, "blue", "h2")
    try:
        down = stored_port(lab, "h2", target.port_id)
        down.admin_state_up = False
        put_ports(lab, "h2", down)
        assert ping(source.vm, target.vm.ip, count=2).received == 0
        down.admin_state_up = True
        put_ports(lab, "h2", down)
        assert ping(source.vm, target.vm.ip, count=3).received > 0
        # Port security off on h1's port: no groups, so h2 may open any port on it.
        assert not tcp_connects_eventually(target.vm, source.vm, 2424)
        open_port = stored_port(lab, "h1", source.port_id)
        open_port.port_security_enabled = False
        del open_port.security_group_ids[:]
        put_ports(lab, "h1", open_port)
        assert tcp_connects_eventually(target.vm, source.vm, 2424)
    finally:
        lab.apply()


def udp_flood_rate(source: StandInVM, target: StandInVM, seconds: float = 3.0) -> float:
    """Bits per second the target receives from a ~10 Mbit/s UDP flood of 1,000-byte datagrams."""
    sender = ("import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              f"end=time.time()+{seconds};b=b'x'*1000\nwhile time.time()<end:\n"
              " s.sendto(b,(sys.argv[1],9));time.sleep(0.0008)\n")  # fmt: skip
    rx = lambda: int(target.run(["cat", "/sys/class/net/eth0/statistics/rx_bytes"]).stdout)
    before = rx()
    source.run(["python3", "-c", sender, target.ip], timeout=seconds + 15)
    time.sleep(0.3)
    return (rx() - before) * 8 / seconds


def test_a_rate_limit_holds_a_udp_flood_near_its_rate(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    agent = lab.agents["h1"]
    group = lab.agents["h2"].network().GetSecurityGroup(network_pb2.GetSecurityGroupRequest(
        id="sg-blue"), timeout=10).security_group.spec  # fmt: skip
    group.rules.add(direction=common_pb2.DIRECTION_INGRESS, ethertype=network_pb2.ETHERTYPE_IPV4,
                    protocol=17, remote_group_id="sg-blue")  # h2 lets the flood in
    put_group(lab, "h2", group)
    limit = network_pb2.RateLimit(id="rl-blue", tenant_id="blue",
                                  direction=common_pb2.DIRECTION_EGRESS,
                                  cir_bytes_per_s=250_000, cbs_bytes=25_000)  # 2 Mbit/s
    try:
        unlimited = udp_flood_rate(source, target)
        answer = agent.network().PutRateLimits(network_pb2.PutRateLimitsRequest(
            request_id=lab.request_id(), rate_limits=[limit]), timeout=10)  # fmt: skip
        agent.wait_applied(answer.generation)
        limited = udp_flood_rate(source, target)
        assert unlimited > 5e6, f"the flood itself reached only {unlimited / 1e6:.2f} Mbit/s"
        assert 1.0e6 < limited < 3.2e6, f"{limited / 1e6:.2f} Mbit/s through a 2 Mbit/s limit"
    finally:
        answer = agent.network().DeleteRateLimits(network_pb2.DeleteRateLimitsRequest(
            request_id=lab.request_id(), ids=["rl-blue"], allow_missing=True), timeout=10)  # fmt: skip
        agent.wait_applied(answer.generation)
        lab.apply()
    assert ping(source, target.ip, count=2).received == 2


def test_100_policy_changes_under_a_flood_ping_lose_nothing(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    agent = lab.agents["h2"]
    group = agent.network().GetSecurityGroup(network_pb2.GetSecurityGroupRequest(
        id="sg-blue"), timeout=10).security_group.spec  # fmt: skip
    flood = FloodPing(source, target.ip, count=20_000)  # outlasts the changes on a loaded machine
    try:
        for i in range(100):
            changed = network_pb2.SecurityGroup()
            changed.CopyFrom(group)
            changed.rules.add(direction=common_pb2.DIRECTION_INGRESS,
                              ethertype=network_pb2.ETHERTYPE_IPV4, protocol=6,
                              port_range_min=8000 + i, port_range_max=8100 + i)  # fmt: skip
            answer = agent.network().PutSecurityGroups(network_pb2.PutSecurityGroupsRequest(
                request_id=lab.request_id(), security_groups=[changed]), timeout=10)  # fmt: skip
        agent.wait_applied(answer.generation)
        assert flood.running(), "the flood ended before the changes: make it longer"
        result = flood.result(timeout=120)
    finally:
        flood.close()
        lab.apply()
    assert result.lost == 0, result.output


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
    for name, was in zip(("h1", "h2"), before):
        now = flows(lab, name)
        assert now == was, f"the restart changed {name}'s flows: gone {was - now}, new {now - was}"


def test_a_port_deleted_just_before_kill_9_is_gone_from_ovs_after_the_restart(lab: Scenario) -> None:
    agent = lab.agents["h1"]
    red = tenant_vm(lab, "red", "h1")
    ofport = int(lab.lab.hosts["h1"].vsctl("get", "Interface", red.vm.host_ifname, "ofport"))
    agent.network().DeletePorts(network_pb2.DeletePortsRequest(
        request_id=lab.request_id(), ids=[red.port_id]), timeout=10)  # fmt: skip
    agent.kill()  # maybe before its pass ran, maybe after: either way it must be repaired
    agent.start()
    info = agent.node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=5).info
    agent.wait_applied(info.desired_generation)
    ports = lab.lab.hosts["h1"].vsctl("list-ports", "br-int").split()
    assert red.vm.host_ifname not in ports
    assert not [f for f in flows(lab, "h1") if f"in_port={ofport}," in f or f"reg5={ofport:#x}" in f]
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
