"""The lab's control plane: two tenants with the same subnet and the same addresses on every
host, wired up over nothing but the agents' gRPC API, as a real control plane would.

`Scenario.build(lab, hosts)` makes the hosts, an agent on each and two VMs per host (one per
tenant): stand-ins (a namespace and a veth each), or with `guests=True` real VMs that the
agents run (the test guest under QEMU, agent/lab/vms.py); `apply()` puts, on every host, both
tenants' networks, a security group per tenant (ICMP and TCP 22 from its own members,
everything out), the other hosts' tunnel endpoints, L2 entries for the other hosts' VMs, ports
for its own VMs (bound to the stand-in's veth, or to the real VM's NIC) and the real VMs
themselves; then waits until every host has applied it (real VMs: running, ports wired). `pings()` checks each tenant across hosts, and that a ping in one
tenant never reaches the other tenant's VM with the same address; `objects()` reads back, over
the same API, what each host holds. `close()` stops the agents and removes the lab; `build`
does it itself when it fails (or is interrupted) half-way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent import cli_network
from agent.lab.agents import LabAgent, lab_pki
from agent.lab.hosts import Lab, SimulatedHost, StandInVM
from agent.lab.probes import PingResult, ping
from agent.lab.vms import GuestImages, LabGuest, install_guest
from andromede.v1 import common_pb2, compute_pb2, network_pb2

TENANTS = {"blue": 1001, "red": 1002}  # tenant -> VNI
SUBNET = "198.51.100"  # both tenants: the same /24, the same addresses
HOTPLUG_SUBNET = "203.0.113"  # what a real VM's second NIC gets, once one is plugged


@dataclass(frozen=True, slots=True)
class TenantVM:
    tenant: str
    host: str
    vm: StandInVM | LabGuest

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
    images: GuestImages | None = None  # the test guest, when the VMs are real
    vms_put_at: dict[str, float] = field(default_factory=dict)  # host -> monotonic time of PutVms
    _requests: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    @classmethod
    def build(cls, lab: Lab, hosts: int = 2, guests: bool = False,
              progress: Callable[[str], None] = lambda line: None,
              agent_config: str = "") -> Scenario:  # fmt: skip
        """Hosts h1..h`hosts` on `lab`, each with its VMs (real ones with `guests`) and a
        started agent (`agent_config`: TOML appended to each agent's config); `progress` gets a
        line per host. On any failure (or Ctrl-C) everything made so far, `lab` included, is
        removed before the exception goes on."""
        scenario = cls(lab)
        try:
            certs = lab_pki(lab.root)
            if guests:
                scenario.images = install_guest(lab.root / "images")
            for n in range(1, hosts + 1):
                host = lab.add_host(f"h{n}")
                agent = LabAgent(host, certs, agent_config)
                for t, tenant in enumerate(TENANTS):
                    mac = f"fa:16:3e:{t + 1:02x}:{n:02x}:01"
                    ip = f"{SUBNET}.{10 + n}/24"
                    vm = (LabGuest(f"{tenant}-{host.name}", mac, ip, agent.dir / "run",
                                   agent.dir / "state", f"{HOTPLUG_SUBNET}.{10 + n}/24")
                          if guests else host.add_vm(f"{tenant[0]}{n}", mac, ip))  # fmt: skip
                    scenario.vms.append(TenantVM(tenant, host.name, vm))
                scenario.agents[host.name] = agent
                agent.start()
                kind = "real VMs to start" if guests else "stand-in VMs"
                progress(f"{host.name}: OVS up, underlay {host.underlay}, {len(TENANTS)} "
                         f"{kind}, agent up (pid {agent.proc.pid})")  # fmt: skip
        except BaseException:
            scenario.close()
            raise
        return scenario

    def request_id(self) -> str:
        return f"lab-{next(self._requests)}"

    # --- the control plane ---------------------------------------------------------------

    def apply(self) -> dict[str, float]:
        """Put everything on every host; seconds each host took to apply it."""
        generations = {name: self._put_host(self.lab.hosts[name]) for name in self.agents}
        return {name: self.agents[name].wait_applied(g) for name, g in generations.items()}

    def _put_host(self, host: SimulatedHost) -> int:
        """Put this host's desired state, in reference order; the highest generation of the
        answers (an unchanged object answers with its older generation)."""
        api = self.agents[host.name].network()
        answers = [api.PutNetworks(network_pb2.PutNetworksRequest(
            request_id=self.request_id(),
            networks=[network_pb2.TenantNetwork(id=f"net-{t}", tenant_id=t, vni=vni)
                      for t, vni in TENANTS.items()]), timeout=10)]  # fmt: skip
        # A group's members on other hosts are the control plane's to list (member_ips).
        members = {t: [v.vm.ip for v in self.vms if v.tenant == t and v.host != host.name]
                   for t in TENANTS}  # fmt: skip
        answers.append(api.PutSecurityGroups(network_pb2.PutSecurityGroupsRequest(
            request_id=self.request_id(),
            security_groups=[_default_group(t, members[t]) for t in TENANTS]), timeout=10))  # fmt: skip
        peers = [h for h in self.lab.hosts.values() if h.name != host.name]
        if peers:
            answers.append(api.PutTunnelEndpoints(network_pb2.PutTunnelEndpointsRequest(
                request_id=self.request_id(),
                tunnel_endpoints=[network_pb2.TunnelEndpoint(id=p.name, ip=p.underlay_ip)
                                  for p in peers]), timeout=10))  # fmt: skip
            answers.append(api.PutL2Entries(network_pb2.PutL2EntriesRequest(
                request_id=self.request_id(),
                l2_entries=[network_pb2.L2Entry(
                    id=v.port_id, network_id=f"net-{v.tenant}", mac=v.vm.mac,
                    ip_addresses=[v.vm.ip], tunnel_endpoint_id=v.host)
                    for v in self.vms if v.host != host.name]), timeout=10))  # fmt: skip
        mine = [v for v in self.vms if v.host == host.name]
        answers.append(api.PutPorts(network_pb2.PutPortsRequest(
            request_id=self.request_id(),
            ports=[network_pb2.Port(
                id=v.port_id, tenant_id=v.tenant, network_id=f"net-{v.tenant}", mac=v.vm.mac,
                fixed_ips=[v.vm.ip], security_group_ids=[f"sg-{v.tenant}"], **_binding(v))
                for v in mine]), timeout=10))  # fmt: skip
        if self.images is not None:
            self.vms_put_at[host.name] = time.monotonic()
            answers.append(self.agents[host.name].compute().PutVms(compute_pb2.PutVmsRequest(
                request_id=self.request_id(),
                vms=[v.vm.spec(self.images, v.port_id, v.tenant) for v in mine]), timeout=10))  # fmt: skip
        return max(a.generation for a in answers)

    # --- checks --------------------------------------------------------------------------

    def boot_times(self, timeout: float = 90.0) -> dict[str, float]:
        """Real VMs only: seconds from their host's PutVms to each guest's boot marker, by VM
        id (waiting for the ones not booted yet)."""
        booted: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        guests = [v for v in self.vms if isinstance(v.vm, LabGuest)]
        while len(booted) < len(guests):
            for v in guests:
                if v.vm.id not in booted and v.vm.boots():
                    booted[v.vm.id] = time.monotonic() - self.vms_put_at[v.host]
            if time.monotonic() > deadline:
                slow = [v.vm.id for v in guests if v.vm.id not in booted]
                raise TimeoutError(f"VMs {slow} did not boot within {timeout} s of their PutVms")
            time.sleep(0.05)
        return booted

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
                result = ping_from(source.vm, target.vm.ip, count=count)
                leaked = icmp_received(other.vm) - before
                checks.append(PingCheck(source.tenant, source.host, target.host, True,
                                        result.received, result.sent, result.rtt_avg_ms,
                                        leaked))  # fmt: skip
        return checks

    def objects(self) -> dict[str, dict[str, list[Any]]]:
        """host -> CLI kind ("network", "port", ..., "vm" with real VMs) -> the records its
        agent lists."""
        objects = {name: {kind.command: cli_network.list_records(agent.network(), kind)
                          for kind in cli_network.KINDS.values()}
                   for name, agent in self.agents.items()}  # fmt: skip
        if self.images is not None:
            for name, agent in self.agents.items():
                objects[name]["vm"] = list(agent.compute().ListVms(compute_pb2.ListVmsRequest(),
                                                                   timeout=10).vms)  # fmt: skip
        return objects

    def close(self) -> None:
        """Stop every agent (even if one fails to stop) and end the VMs they left running,
        then remove the lab."""
        errors = []
        for vm in self.vms:
            if isinstance(vm.vm, LabGuest):
                vm.vm.close()
        for agent in self.agents.values():
            try:
                agent.stop()
            except Exception as e:  # keep going: the lab must go whatever happens
                errors.append(f"agent on {agent.host.name}: {e}")
            try:
                agent.end_vms()  # they outlive their agent, by design; not the lab
            except Exception as e:
                errors.append(f"VMs on {agent.host.name}: {e}")
        self.lab.close()
        if errors:
            raise RuntimeError("lab teardown was incomplete: " + "; ".join(errors))


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


def _binding(v: TenantVM) -> dict[str, object]:
    if isinstance(v.vm, LabGuest):
        return {"vm_nic": network_pb2.VmNicBinding(vm_id=v.vm.id, nic_id="nic0")}
    return {"tap": network_pb2.TapBinding(interface_name=v.vm.host_ifname)}


def ping_from(vm: StandInVM | LabGuest, destination: str, *, count: int = 3,
              interval: float = 0.2) -> PingResult:  # fmt: skip
    """`count` pings from a stand-in's namespace or from inside a real VM."""
    if isinstance(vm, LabGuest):
        return vm.ping(destination, count=count, interval=interval)
    return ping(vm, destination, count=count, interval=interval)


def icmp_received(vm: StandInVM | LabGuest) -> int:
    """ICMP messages the VM's kernel has received (/proc/net/snmp's Icmp InMsgs)."""
    snmp = vm.read("/proc/net/snmp") if isinstance(vm, LabGuest) else vm.run(["cat", "/proc/net/snmp"]).stdout
    text = snmp.splitlines()
    names, values = [line.split()[1:] for line in text if line.startswith("Icmp:")][:2]
    return int(values[names.index("InMsgs")])


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started
