"""The lab's control plane: two tenants with the same subnet and the same addresses on every
host, wired up over nothing but the agents' gRPC API, as a real control plane would.

`Scenario.build(lab, hosts)` makes the hosts, an agent on each and two stand-in VMs per host
(one per tenant); `apply()` puts, on every host, both tenants' networks, a security group per
tenant (ICMP and TCP 22 from its own members, everything out), the other hosts' tunnel
endpoints, L2 entries for the other hosts' VMs, and ports for its own VMs; then waits until
every host has applied it. `pings()` checks each tenant across hosts, and that a ping in one
tenant never reaches the other tenant's VM with the same address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.lab.agents import LabAgent, lab_pki
from agent.lab.hosts import Lab, SimulatedHost, StandInVM
from agent.lab.probes import ping
from andromede.v1 import common_pb2, network_pb2

TENANTS = {"blue": 1001, "red": 1002}  # tenant -> VNI
SUBNET = "198.51.100"  # both tenants: the same /24, the same addresses


@dataclass(frozen=True, slots=True)
class TenantVM:
    tenant: str
    host: str
    vm: StandInVM

    @property
    def port_id(self) -> str:
        return f"{self.tenant}-{self.host}"


@dataclass(frozen=True, slots=True)
class PingCheck:
    tenant: str
    source: str  # host of the pinging VM
    target: str  # host of the VM pinged
    expected: bool
    received: int
    sent: int
    rtt_ms: float | None
    leaked: int  # packets that reached the other tenant's VM with the same address

    @property
    def ok(self) -> bool:
        return (self.received > 0) == self.expected and self.leaked == 0


@dataclass(slots=True)
class Scenario:
    lab: Lab
    agents: dict[str, LabAgent] = field(default_factory=dict)
    vms: list[TenantVM] = field(default_factory=list)
    _requests: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    @classmethod
    def build(cls, lab: Lab, hosts: int = 2) -> Scenario:
        scenario = cls(lab)
        certs = lab_pki(lab.root)
        for n in range(1, hosts + 1):
            host = lab.add_host(f"h{n}")
            for t, tenant in enumerate(TENANTS):
                mac = f"fa:16:3e:{t + 1:02x}:{n:02x}:01"
                vm = host.add_vm(f"{tenant[0]}{n}", mac, f"{SUBNET}.{10 + n}/24")
                scenario.vms.append(TenantVM(tenant, host.name, vm))
            agent = LabAgent(host, certs)
            agent.start()
            scenario.agents[host.name] = agent
        return scenario

    def request_id(self) -> str:
        return f"lab-{next(self._requests)}"

    # --- the control plane ---------------------------------------------------------------

    def apply(self) -> dict[str, float]:
        """Put everything on every host; seconds each host took to apply it."""
        generations = {name: self._put_host(self.lab.hosts[name]) for name in self.agents}
        return {name: self.agents[name].wait_applied(g) for name, g in generations.items()}

    def _put_host(self, host: SimulatedHost) -> int:
        api = self.agents[host.name].network()
        networks = [network_pb2.TenantNetwork(id=f"net-{t}", tenant_id=t, vni=vni)
                    for t, vni in TENANTS.items()]  # fmt: skip
        api.PutNetworks(network_pb2.PutNetworksRequest(
            request_id=self.request_id(), networks=networks), timeout=10)  # fmt: skip
        # A group's members on other hosts are the control plane's to list (member_ips).
        members = {t: [v.vm.ip for v in self.vms if v.tenant == t and v.host != host.name]
                   for t in TENANTS}  # fmt: skip
        api.PutSecurityGroups(network_pb2.PutSecurityGroupsRequest(
            request_id=self.request_id(),
            security_groups=[_default_group(t, members[t]) for t in TENANTS]), timeout=10)  # fmt: skip
        peers = [h for h in self.lab.hosts.values() if h.name != host.name]
        if peers:
            api.PutTunnelEndpoints(network_pb2.PutTunnelEndpointsRequest(
                request_id=self.request_id(),
                tunnel_endpoints=[network_pb2.TunnelEndpoint(id=p.name, ip=p.underlay_ip)
                                  for p in peers]), timeout=10)  # fmt: skip
            remote = [v for v in self.vms if v.host != host.name]
            api.PutL2Entries(network_pb2.PutL2EntriesRequest(
                request_id=self.request_id(),
                l2_entries=[network_pb2.L2Entry(
                    id=v.port_id, network_id=f"net-{v.tenant}", mac=v.vm.mac,
                    ip_addresses=[v.vm.ip], tunnel_endpoint_id=v.host)
                    for v in remote]), timeout=10)  # fmt: skip
        local = [v for v in self.vms if v.host == host.name]
        answer = api.PutPorts(network_pb2.PutPortsRequest(
            request_id=self.request_id(),
            ports=[network_pb2.Port(
                id=v.port_id, tenant_id=v.tenant, network_id=f"net-{v.tenant}", mac=v.vm.mac,
                fixed_ips=[v.vm.ip], security_group_ids=[f"sg-{v.tenant}"],
                tap=network_pb2.TapBinding(interface_name=v.vm.host_ifname))
                for v in local]), timeout=10)  # fmt: skip
        return answer.generation

    # --- checks --------------------------------------------------------------------------

    def pings(self, count: int = 3) -> list[PingCheck]:
        """Every tenant VM pings its tenant's VM on every other host; the other tenant's VM at
        the same address must see none of it."""
        checks = []
        for source in self.vms:
            for target in self.vms:
                if target.tenant != source.tenant or target.host == source.host:
                    continue
                other = next(v for v in self.vms
                             if v.host == target.host and v.tenant != source.tenant)  # fmt: skip
                before = icmp_received(other.vm)
                result = ping(source.vm, target.vm.ip, count=count)
                leaked = icmp_received(other.vm) - before
                checks.append(PingCheck(source.tenant, source.host, target.host, True,
                                        result.received, result.sent, result.rtt_avg_ms,
                                        leaked))  # fmt: skip
        return checks

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.lab.close()


def _default_group(tenant: str, member_ips: list[str]) -> network_pb2.SecurityGroup:
    ingress, egress = common_pb2.DIRECTION_INGRESS, common_pb2.DIRECTION_EGRESS
    ipv4 = network_pb2.ETHERTYPE_IPV4
    return network_pb2.SecurityGroup(id=f"sg-{tenant}", tenant_id=tenant, member_ips=member_ips, rules=[
        network_pb2.SecurityGroupRule(direction=ingress, ethertype=ipv4, protocol=1,
                                      remote_group_id=f"sg-{tenant}"),
        network_pb2.SecurityGroupRule(direction=ingress, ethertype=ipv4, protocol=6,
                                      port_range_min=22, port_range_max=22,
                                      remote_group_id=f"sg-{tenant}"),
        network_pb2.SecurityGroupRule(direction=egress, ethertype=ipv4),
    ])  # fmt: skip


def icmp_received(vm: StandInVM) -> int:
    """ICMP messages the VM's kernel has received (/proc/net/snmp's Icmp InMsgs)."""
    text = vm.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    names, values = [line.split()[1:] for line in text if line.startswith("Icmp:")][:2]
    return int(values[names.index("InMsgs")])


def summary(checks: list[PingCheck], apply_s: dict[str, float]) -> str:
    """The table the lab prints: what was applied where, each ping expected and seen."""
    lines = ["", f"{'host':8}{'applied in':>12}"]
    lines += [f"{h:8}{s:11.2f}s" for h, s in sorted(apply_s.items())]
    lines += ["", f"{'tenant':8}{'from':6}{'to':6}{'expected':>10}{'received':>10}{'rtt ms':>9}"
                  f"{'leaked':>8}  ok"]  # fmt: skip
    for c in checks:
        rtt = f"{c.rtt_ms:.2f}" if c.rtt_ms is not None else "-"
        lines.append(f"{c.tenant:8}{c.source:6}{c.target:6}{'reply' if c.expected else 'none':>10}"
                     f"{c.received:>5}/{c.sent:<4}{rtt:>9}{c.leaked:>8}  {'yes' if c.ok else 'NO'}")  # fmt: skip
    return "\n".join(lines)


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started
