"""Usage billing can trust, end to end: two simulated hosts with their own Open vSwitch, a real
agent on each driven over gRPC with mutual TLS, real packets between stand-in VMs, real
crashes; the counts are compared, packet for packet, with what the test sent.

The agents poll their counters only once an hour here ([metering] poll_interval_s = 3600), so
every count the tests see was read by a GetUsage, or by the reconciler right before it changed
the flows that carried it. The VMs' IPv6 is off, so nothing but the tests' own traffic flows.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from test_network_e2e import flows, put_group, put_ports, stored_port, tenant_vm, vm

from agent.lab.hosts import Lab, StandInVM, missing_tools
from agent.lab.probes import ping
from agent.lab.scenario import Scenario, wait_for
from andromede.v1 import common_pb2, metering_pb2, network_pb2

pytestmark = pytest.mark.integration

ICMP_FRAME = 98  # bytes of an echo request or reply with ping's 56 bytes of data, as OVS counts
POLL_ONCE_AN_HOUR = "[metering]\npoll_interval_s = 3600\n"


def counting_lab(agent_config: str = POLL_ONCE_AN_HOUR) -> Scenario:
    """Two hosts with agents, their networks applied, IPv6 off in the VMs and in the hosts'
    namespaces (whose kernels would send router solicitations down the VMs' veths, past OVS),
    so the tenants' counts are the tests' own traffic alone."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"the lab needs {missing}: run scripts/setup.sh", pytrace=False)
    scenario = Scenario.build(Lab(), hosts=2, agent_config=agent_config)
    try:
        for where in [v.vm for v in scenario.vms] + list(scenario.lab.hosts.values()):
            where.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                       "net.ipv6.conf.default.disable_ipv6=1"])  # fmt: skip
        scenario.apply()
        scenario.pings(count=2)  # the underlay's neighbours learnt: no first packet lost later
    except BaseException:
        scenario.close()
        raise
    return scenario


@pytest.fixture(scope="module")
def lab() -> Iterator[Scenario]:
    scenario = counting_lab()
    try:
        yield scenario
    finally:
        scenario.close()


Counts = tuple[int, int, int, int]  # egress packets, egress bytes, ingress packets, ingress bytes


def report(lab: Scenario, host: str, *tenants: str) -> metering_pb2.UsageReport:
    return lab.agents[host].metering().GetUsage(metering_pb2.GetUsageRequest(tenant_ids=tenants),
                                                timeout=10).report  # fmt: skip


def usage(lab: Scenario, host: str, tenant: str = "blue") -> metering_pb2.TenantUsage:
    [found] = report(lab, host, tenant).tenants
    return found


def counts(lab: Scenario, host: str, tenant: str = "blue") -> Counts:
    u = usage(lab, host, tenant)
    return (u.egress.packets, u.egress.bytes, u.ingress.packets, u.ingress.bytes)


def steady(lab: Scenario, host: str, tenant: str = "blue") -> Counts:
    """The counts once two reads 0.7 s apart agree (OVS's flow statistics lag the packets)."""
    last = counts(lab, host, tenant)
    while True:
        time.sleep(0.7)
        now = counts(lab, host, tenant)
        if now == last:
            return now
        last = now


def reaches(lab: Scenario, host: str, expected: Counts, tenant: str = "blue") -> None:
    """The counts become exactly `expected` (within 10 s) and stay there."""
    seen: list[Counts] = []

    def there() -> bool:
        seen.append(counts(lab, host, tenant))
        return seen[-1] == expected

    try:
        wait_for(there, timeout=10, what="the usage")
    except TimeoutError:
        pytest.fail(f"{host} {tenant}: usage {seen[-1]}, expected {expected} (seen {seen[-5:]})")
    time.sleep(1.0)
    assert counts(lab, host, tenant) == expected, "more was counted than was sent"


def pings(source: StandInVM, target: StandInVM, count: int) -> tuple[int, int]:
    """(requests sent, replies received)."""
    result = ping(source, target.ip, count=count, interval=0.01)
    return result.sent, result.received


def plus(base: Counts, out: int, into: int) -> Counts:
    return (base[0] + out, base[1] + out * ICMP_FRAME, base[2] + into, base[3] + into * ICMP_FRAME)


def table_packets(lab: Scenario, host: str, table: int) -> int:
    """Packets counted by every flow of one table of br-int, read from OVS directly."""
    h = lab.lab.hosts[host]
    out = h.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", f"unix:{h.rundir}/br-int.mgmt",
                 f"table={table}"]).stdout  # fmt: skip
    return sum(int(w.split("=")[1].rstrip(",")) for w in out.split() if w.startswith("n_packets="))


def sysfs(target: StandInVM, counter: str) -> int:
    return int(target.run(["cat", f"/sys/class/net/eth0/statistics/{counter}"]).stdout)


# --- counting -----------------------------------------------------------------------------------


def test_usage_is_what_was_sent_packet_for_packet_in_both_directions(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    before = {h: steady(lab, h) for h in ("h1", "h2")}
    red_before = counts(lab, "h1", "red")
    sent, received = pings(source, target, 20)
    assert received == sent == 20
    reaches(lab, "h1", plus(before["h1"], out=sent, into=received))
    reaches(lab, "h2", plus(before["h2"], out=received, into=sent))
    assert counts(lab, "h1", "red") == red_before
    # Every tenant with ports here, in id order; one the host never saw is zero.
    listed = report(lab, "h1")
    assert [t.tenant_id for t in listed.tenants] == ["blue", "red"]
    [stranger] = report(lab, "h1", "never-here").tenants
    assert stranger.egress == stranger.ingress == metering_pb2.TrafficCounters()
    assert stranger.counting_since == listed.tenants[0].counting_since


def test_watch_usage_follows_the_traffic(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    base = steady(lab, "h1")
    stream = lab.agents["h1"].metering().WatchUsage(metering_pb2.WatchUsageRequest(
        tenant_ids=["blue"], interval_s=1), timeout=30)  # fmt: skip
    try:
        first = next(stream).report.tenants[0]
        assert (first.egress.packets, first.ingress.packets) == (base[0], base[2])
        sent, received = pings(source, target, 5)
        for response in stream:
            u = response.report.tenants[0]
            if (u.egress.packets, u.ingress.packets) == (base[0] + sent, base[2] + received):
                break
    finally:
        stream.cancel()


def test_rate_limit_drops_are_counted_and_passed_plus_dropped_is_what_left_the_vm(
    lab: Scenario,
) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    # No ARP during the flood (it would pass the egress meter but not count as traffic).
    source.run(["ip", "neigh", "replace", target.ip, "lladdr", target.mac, "dev", "eth0"])
    group = lab.agents["h2"].network().GetSecurityGroup(network_pb2.GetSecurityGroupRequest(
        id="sg-blue"), timeout=10).security_group.spec  # fmt: skip
    group.rules.add(direction=common_pb2.DIRECTION_INGRESS, ethertype=network_pb2.ETHERTYPE_IPV4,
                    protocol=17, remote_group_id="sg-blue")  # h2 lets the flood in
    put_group(lab, "h2", group)
    limits = {"h1": network_pb2.RateLimit(id="rl-blue-out", tenant_id="blue",
                                          direction=common_pb2.DIRECTION_EGRESS,
                                          cir_bytes_per_s=250_000, cbs_bytes=25_000),
              "h2": network_pb2.RateLimit(id="rl-blue-in", tenant_id="blue",
                                          direction=common_pb2.DIRECTION_INGRESS,
                                          cir_bytes_per_s=60_000, cbs_bytes=10_000)}  # fmt: skip
    try:
        for host, limit in limits.items():
            agent = lab.agents[host]
            answer = agent.network().PutRateLimits(network_pb2.PutRateLimitsRequest(
                request_id=lab.request_id(), rate_limits=[limit]), timeout=10)  # fmt: skip
            agent.wait_applied(answer.generation)
        out_before, in_before = usage(lab, "h1").egress, usage(lab, "h2").ingress
        tx = sysfs(source, "tx_packets"), sysfs(source, "tx_bytes")
        rx = sysfs(target, "rx_packets"), sysfs(target, "rx_bytes")
        flood = ("import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                 "end=time.time()+2\nwhile time.time()<end:\n"
                 " s.sendto(b'x'*1000,(sys.argv[1],9));time.sleep(0.0008)\n")  # fmt: skip
        source.run(["python3", "-c", flood, target.ip], timeout=30)
        time.sleep(0.5)
        left = sysfs(source, "tx_packets") - tx[0], sysfs(source, "tx_bytes") - tx[1]
        arrived = sysfs(target, "rx_packets") - rx[0], sysfs(target, "rx_bytes") - rx[1]

        def egress_adds_up() -> bool:
            e = usage(lab, "h1").egress
            return (e.packets - out_before.packets + e.meter_dropped_packets
                    - out_before.meter_dropped_packets,
                    e.bytes - out_before.bytes + e.meter_dropped_bytes
                    - out_before.meter_dropped_bytes) == left  # fmt: skip

        def ingress_adds_up() -> bool:
            i = usage(lab, "h2").ingress
            return (i.packets - in_before.packets, i.bytes - in_before.bytes) == arrived

        wait_for(egress_adds_up, timeout=10, what=f"h1's egress adding up to {left}")
        wait_for(ingress_adds_up, timeout=10, what=f"h2's ingress adding up to {arrived}")
        out_after, in_after = usage(lab, "h1").egress, usage(lab, "h2").ingress
        assert out_after.meter_dropped_packets - out_before.meter_dropped_packets > 100
        assert in_after.meter_dropped_packets - in_before.meter_dropped_packets > 100
    finally:
        for host, limit in limits.items():
            agent = lab.agents[host]
            answer = agent.network().DeleteRateLimits(network_pb2.DeleteRateLimitsRequest(
                request_id=lab.request_id(), ids=[limit.id], allow_missing=True), timeout=10)  # fmt: skip
            agent.wait_applied(answer.generation)
        source.run(["ip", "neigh", "del", target.ip, "dev", "eth0"], check=False)
        lab.apply()
    # Deleting the meters folded their drops first: nothing went back, nothing doubled.
    assert usage(lab, "h1").egress == out_after
    assert usage(lab, "h2").ingress == in_after


def test_100_policy_changes_between_sends_lose_and_double_nothing(lab: Scenario) -> None:
    """Each round's pings are on br-int's flows (read from OVS itself) but not read by the
    agent when the next change deletes those flows: the reconciler must fold them first."""
    agent, host = lab.agents["h1"], "h1"
    source, target = tenant_vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    network = agent.network()
    group = network.GetSecurityGroup(network_pb2.GetSecurityGroupRequest(id="sg-blue"),
                                     timeout=10).security_group.spec  # fmt: skip
    entry = network.GetL2Entry(network_pb2.GetL2EntryRequest(id="blue-h2"), timeout=10).l2_entry.spec
    port = stored_port(lab, host, source.port_id)

    def l2(present: bool) -> None:
        if present:
            answer = network.PutL2Entries(network_pb2.PutL2EntriesRequest(
                request_id=lab.request_id(), l2_entries=[entry]), timeout=10)  # fmt: skip
        else:
            answer = network.DeleteL2Entries(network_pb2.DeleteL2EntriesRequest(
                request_id=lab.request_id(), ids=[entry.id]), timeout=10)  # fmt: skip
        agent.wait_applied(answer.generation)

    def up(admin_up: bool) -> None:
        port.admin_state_up = admin_up
        put_ports(lab, host, port)

    def rule(round_: int) -> None:
        changed = network_pb2.SecurityGroup()
        changed.CopyFrom(group)
        if round_ % 2 == 0:
            changed.rules.add(direction=common_pb2.DIRECTION_INGRESS,
                              ethertype=network_pb2.ETHERTYPE_IPV4, protocol=6,
                              port_range_min=8000 + round_, port_range_max=8100 + round_)  # fmt: skip
        put_group(lab, host, changed)

    base = steady(lab, host)
    sent = received = changes = 0
    try:
        for round_ in range(20):
            forward, deliver = table_packets(lab, host, 40), table_packets(lab, host, 70)
            out, into = pings(source.vm, target, 3)
            sent, received = sent + out, received + into
            # On the flows (OVS pushes its datapath's statistics every ~0.5 s), not yet read.
            wait_for(lambda: table_packets(lab, host, 40) >= forward + out
                     and table_packets(lab, host, 70) >= deliver + into,
                     timeout=10, what="the pings on br-int's flows")  # fmt: skip
            first, second = (lambda: l2(False), lambda: up(False))[:: 1 if round_ % 2 else -1]
            for change in (lambda: rule(round_), first, second, lambda: l2(True), lambda: up(True)):
                change()
                changes += 1
    finally:
        up(True)
        lab.apply()
    assert changes == 100
    assert received == sent == 60
    reaches(lab, host, plus(base, out=sent, into=received))


# --- crashes ------------------------------------------------------------------------------------


def test_kill_9_of_the_agent_loses_and_doubles_nothing(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    agent = lab.agents["h1"]
    base, since = steady(lab, "h1"), usage(lab, "h1").counting_since
    before = table_packets(lab, "h1", 40)
    out1, in1 = pings(source, target, 10)
    wait_for(lambda: table_packets(lab, "h1", 40) >= before + out1, timeout=10,
             what="the pings on br-int's flows")  # fmt: skip
    agent.kill()  # its last checkpoint is older than these pings
    agent.start()
    out2, in2 = pings(source, target, 10)
    reaches(lab, "h1", plus(base, out=out1 + out2, into=in1 + in2))
    assert usage(lab, "h1").counting_since == since


def test_kill_9_of_ovs_vswitchd_and_the_repair_lose_and_double_nothing(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    host, agent = lab.lab.hosts["h1"], lab.agents["h1"]
    base, since = steady(lab, "h1"), usage(lab, "h1").counting_since
    out1, in1 = pings(source, target, 10)
    reaches(lab, "h1", plus(base, out=out1, into=in1))  # read and checkpointed
    installed = flows(lab, "h1")
    host.stop_vswitchd(signal.SIGKILL)
    host.start_vswitchd()
    wait_for(lambda: flows(lab, "h1") == installed, timeout=10, what="br-int's flows back")
    out2, in2 = pings(source, target, 10)
    reaches(lab, "h1", plus(base, out=out1 + out2, into=in1 + in2))
    assert usage(lab, "h1").counting_since == since
    # The restart is a window where counts may be lost: said in the log.
    assert '"metering.counts_lost"' in agent.log_path.read_text()


def test_a_lost_state_directory_counts_from_zero_with_a_new_counting_since(lab: Scenario) -> None:
    source, target = vm(lab, "blue", "h1"), vm(lab, "blue", "h2")
    agent = lab.agents["h1"]
    old = usage(lab, "h1").counting_since.ToNanoseconds()
    assert counts(lab, "h1") != (0, 0, 0, 0)
    agent.stop()
    shutil.rmtree(agent.dir / "state")
    agent.start()
    lab.apply()
    assert usage(lab, "h1").counting_since.ToNanoseconds() > old
    assert steady(lab, "h1") == (0, 0, 0, 0)
    out, into = pings(source, target, 10)
    reaches(lab, "h1", plus((0, 0, 0, 0), out=out, into=into))


def test_the_metering_service_refuses_bad_requests_naming_the_field(lab: Scenario) -> None:
    stub = lab.agents["h2"].metering()
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetUsage(metering_pb2.GetUsageRequest(tenant_ids=["blue", "no spaces"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("tenant_ids[1]: ")
    with pytest.raises(grpc.RpcError) as caught:
        next(stub.WatchUsage(metering_pb2.WatchUsageRequest(interval_s=3601), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("interval_s: ")
