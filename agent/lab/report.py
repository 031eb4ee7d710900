"""What `python -m agent.lab` prints: the summary of a built lab and how to explore it.

Where data comes from: the Scenario (hosts, agents, VMs; agent/lab/scenario.py), what each
agent lists over gRPC once it has applied the scenario (`Scenario.objects`: the records with
their status and times, as the agent keeps them) and the pings (`Scenario.pings`). Where it
goes: text for stdout; no I/O here. `passed` is the verdict `--once` exits with.
"""

from __future__ import annotations

import re
from typing import Any

from agent.cli_network import table
from agent.lab.hosts import UNDERLAY_NET
from agent.compute.reconcile import sockets
from agent.lab.scenario import PingCheck, Scenario
from agent.lab.vms import LabGuest
from andromede.v1 import common_pb2, compute_pb2

Objects = dict[str, dict[str, list[Any]]]  # host -> CLI kind -> records (Scenario.objects)
# CLI kind -> column, in the order the control plane puts them (Scenario._put_host)
_HEADERS = {"network": "networks", "sg": "groups", "endpoint": "endpoints", "l2": "l2 entries",
            "port": "ports", "vm": "vms"}  # fmt: skip


def _applied(records: list[Any]) -> int:
    return sum(r.status.state == common_pb2.APPLY_STATE_APPLIED for r in records)


def _every(kinds: dict[str, list[Any]]) -> list[Any]:
    return [record for records in kinds.values() for record in records]


def _apply_s(records: list[Any]) -> str:
    """From the first object's commit to the last one applied, by the agent's own clock."""
    if not records:
        return "-"
    start = min(r.meta.updated_at.ToNanoseconds() for r in records)
    end = max(r.status.since.ToNanoseconds() for r in records)
    return f"{(end - start) / 1e9:.2f}"


def passed(objects: Objects, checks: list[PingCheck]) -> bool:
    """Every ping as expected (and no leak), every object on every host APPLIED."""
    every = [r for kinds in objects.values() for r in _every(kinds)]
    return all(c.ok for c in checks) and _applied(every) == len(every)


def summary(scenario: Scenario, objects: Objects, checks: list[PingCheck],
            boots: dict[str, float] | None = None) -> str:  # fmt: skip
    """The lab's table: per host what its agent holds and how long it took to apply it (from
    the first commit to the last object APPLIED); per real VM its host, tenant, address, what
    runs and the seconds from PutVms to its boot marker (`boots`); per ping the tenant, the
    hosts, what was expected and seen, the latency and any leak; then the verdict (PASS or
    FAIL and why)."""
    lab = scenario.lab
    lines = [f"lab {lab.prefix}: {len(lab.hosts)} hosts on the underlay {UNDERLAY_NET}, "
             f"state in {lab.root}", ""]  # fmt: skip
    rows = [["host", "underlay", *_HEADERS.values(), "applied", "in s"]]
    for name, host in lab.hosts.items():
        kinds = objects.get(name, {})
        every = _every(kinds)
        rows.append([name, host.underlay_ip, *(str(len(kinds.get(k, []))) for k in _HEADERS),
                     f"{_applied(every)}/{len(every)}", _apply_s(every)])  # fmt: skip
    lines += [table(rows), ""]
    vms = [(name, vm) for name, kinds in objects.items() for vm in kinds.get("vm", [])]
    if vms:
        rows = [["vm", "host", "tenant", "address", "run state", "pid", "accel", "boot s"]]
        for name, vm in vms:
            runtime = vm.runtime
            rows.append([vm.spec.id, name, vm.spec.tenant_id, _guest_ip(vm.spec.kernel_cmdline),
                         compute_pb2.RunState.Name(runtime.run_state).removeprefix("RUN_STATE_").lower(),
                         str(runtime.pid), compute_pb2.Accel.Name(runtime.accel).removeprefix("ACCEL_").lower(),
                         f"{boots[vm.spec.id]:.2f}" if boots and vm.spec.id in boots else "-"])  # fmt: skip
        lines += [table(rows), ""]
    rows = [["tenant", "from", "to", "expected", "seen", "rtt ms", "leaked", "ok"]]
    for c in checks:
        rows.append([c.tenant, c.source, c.target, "reply" if c.expected else "none",
                     f"{c.received}/{c.sent}", f"{c.rtt_ms:.2f}" if c.rtt_ms is not None else "-",
                     str(c.leaked), "yes" if c.ok else "NO"])  # fmt: skip
    lines += [table(rows), ""]
    every = [r for kinds in objects.values() for r in _every(kinds)]
    good = sum(c.ok for c in checks)
    verdict = "PASS" if passed(objects, checks) else "FAIL"
    lines.append(f"{verdict}: {good} of {len(checks)} pings as expected (no leak between "
                 f"tenants), {_applied(every)} of {len(every)} objects applied")  # fmt: skip
    return "\n".join(lines)


def _guest_ip(cmdline: str) -> str:
    """The test guest's eth0 address, from its kernel command line (agent/lab/guest.py)."""
    match = re.search(r"andromede\.ip=eth0=([^,\s]+)", cmdline)
    return match.group(1) if match else "-"


def explore(scenario: Scenario, cli: str) -> str:
    """How a person explores the running lab: `cli` (the andromede command) against each
    host's agent, the VMs' namespaces, each host's OVS, the logs; and how to stop."""
    lab = scenario.lab
    first = next(iter(scenario.agents.values()))
    pki = lab.root / "pki"
    lines = ["", "The lab is up. Each host's agent answers on <host dir>/agent/agent.sock with "
             "mutual TLS (the lab's CA and operator certificate in " f"{pki}):"]  # fmt: skip
    lines += [f"  {cli} --lab {agent.dir} port list" for agent in scenario.agents.values()]
    if scenario.images is not None:
        lines += [f"  {cli} --lab {first.dir} vm list",
                  f"  {cli} --lab {first.dir} vm console blue-{first.host.name}",
                  f"  {cli} --lab {first.dir} vm reboot red-{first.host.name} --wait"]  # fmt: skip
    lines += [
        f"  {cli} --lab {first.dir} network get net-blue",
        f"  {cli} --lab {first.dir} --json l2 list",
        "  (commands: network|port|sg|endpoint|l2|vm list|get ID, vm start|stop|pause|resume|"
        "reboot|console ID, node info|inventory, events; --json for JSON lines)",
        f"  {cli} --unix {first.socket} --ca {pki / 'ca.pem'} --cert {pki / 'operator.pem'} "
        f"--key {pki / 'operator.key'} sg list",
        "",
    ]
    lines += _packets(scenario, first.host.name, cli)
    lines += ["", "Open vSwitch and logs of a host:"]
    host = first.host
    lines += [
        f"  ovs-vsctl --db={host.db} show",
        f"  ovs-ofctl -O OpenFlow15 dump-flows unix:{host.rundir}/br-int.mgmt",
        f"  less {first.log_path}",
        "",
        "Ctrl-C (or SIGTERM) stops the agents and OVS and removes every namespace and file.",
    ]
    return "\n".join(lines)


def _packets(scenario: Scenario, host: str, cli: str) -> list[str]:
    """How to send packets between the VMs (tenants blue and red use the same addresses):
    from a stand-in's namespace, or from inside a real VM through its console."""
    lines = ["", "Packets (tenants blue and red use the same addresses):"]
    for vm in (v for v in scenario.vms if v.host == host):
        peers = [v for v in scenario.vms if v.tenant == vm.tenant and v.host != vm.host]
        if not peers:
            continue
        if isinstance(vm.vm, LabGuest):
            socket = sockets(vm.vm.run_dir, vm.vm.id)[1]
            lines.append(f"  socat - UNIX-CONNECT:{socket}    # a shell in {vm.vm.id}: "
                         f"ping -c 3 {peers[0].vm.ip}  ({vm.tenant}: {vm.host} -> {peers[0].host})")  # fmt: skip
        else:
            lines.append(f"  ip netns exec {vm.vm.ns.name} ping -c 3 {peers[0].vm.ip}"
                         f"    # {vm.tenant}: {vm.host} -> {peers[0].host}")  # fmt: skip
    return lines
