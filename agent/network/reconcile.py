"""The network reconciler: all six network kinds, compiled into br-int once per pass.

Where data comes from and where it goes (API -> store -> reconciler -> drivers): each pass
hands it the stored specs of networks, security groups, tunnel endpoints, rate limits, L2
entries and ports. It observes br-int through its `Switch` (which ports are plugged where,
which flows and meters are installed), plugs the `tap` ports that are missing, compiles the
whole host (`dataplane.compile.openflow.compile_host`), diffs the result with the installed
flows and sends only the difference, in one atomic bundle; then it removes what is installed
but not desired (ports of deleted objects, meters of deleted rate limits). After an agent
restart the first pass finds the flows already right and sends nothing; after an OVS restart
(the switch's canary flow is gone) it finds them missing and sends them all.

An object is APPLIED once the flows that carry it are installed; a port with a `vm_nic`
binding whose tap is not there yet (the compute side makes it), or a `tap` binding whose
interface does not exist, is PENDING with a message saying what it waits for, and holds the
host's ack.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import structlog

from agent.network import specs
from agent.network.numbers import Numbers
from agent.network.ofctl import diff
from agent.network.ovsdb import AGENT, Interface
from agent.reconcile import Desired, Key, Outcome, Work
from andromede.v1 import network_pb2
from dataplane import topology as t
from dataplane.compile.flows import Flow
from dataplane.compile.openflow import Meter, Pipeline, compile_host, unreachable

log = structlog.get_logger(__name__)

OFPORT_BASE = 16384  # ofports the agent asks for; OVS gives the lowest free ones, from 1
# In dependency order: what a port or an L2 entry refers to comes first.
KINDS = ("network", "security_group", "tunnel_endpoint", "rate_limit", "l2_entry", "port")
_PARSE: Mapping[str, tuple[type, Callable]] = {
    "network": (network_pb2.TenantNetwork, specs.network),
    "security_group": (network_pb2.SecurityGroup, specs.security_group),
    "tunnel_endpoint": (network_pb2.TunnelEndpoint, specs.tunnel_endpoint),
    "rate_limit": (network_pb2.RateLimit, specs.rate_limit),
    "l2_entry": (network_pb2.L2Entry, specs.l2_entry),
    "port": (network_pb2.Port, specs.port),
}


def parse_specs(desired: Desired, host: specs.Host, outcomes: dict[Key, Outcome]) -> dict[str, dict]:
    """The stored specs as domain values, by kind and id; one that cannot be read fails alone
    in `outcomes` (it was checked when stored, so this is a bug or a newer agent's data)."""
    values: dict[str, dict] = {}
    for kind in KINDS:
        message, convert = _PARSE[kind]
        values[kind] = {}
        for id, obj in desired.get(kind, {}).items():
            try:
                values[kind][id] = convert(message.FromString(obj.spec), host).value
            except Exception as e:  # a stored spec this agent cannot read
                outcomes[(kind, id)] = Outcome.failed(e)
    # What refers to something unreadable is left out, not compiled half.
    values["port"] = {i: p for i, p in values["port"].items() if p.network_id in values["network"]}
    return values


class Switch(Protocol):
    """br-int, as this reconciler needs it (agent/network/ovs.py is the real one)."""

    def ensure_bridge(self) -> int:
        """Make br-int and its one flow-based VXLAN port exist; the tunnel port's ofport."""
        ...

    def interfaces(self) -> Sequence[Interface]:
        """br-int's interfaces that carry an iface-id (the tenant ports)."""
        ...

    def interface_exists(self, name: str) -> bool:
        """A Linux interface of that name exists on the host."""
        ...

    def plug(self, interfaces: Mapping[str, str], ofports: Mapping[str, int]) -> None:
        """Add each interface (name -> iface-id) to br-int with external_ids:iface-id,
        external_ids:plugged-by=AGENT and ofport_request from `ofports`, in one transaction;
        ovs-vswitchd opens them after."""
        ...

    def settle(self) -> None:
        """Return once ovs-vswitchd has applied every change made so far (opened what was
        plugged)."""
        ...

    def unplug(self, names: Sequence[str]) -> None:
        """Take the interfaces out of br-int in one transaction (the interfaces stay)."""
        ...

    def installed(self) -> list[Flow]:
        """The agent's flows on br-int, canonical (as OVS prints them)."""
        ...

    def canonical(self, flows: Sequence[Flow]) -> list[Flow]:
        """`flows` as OVS would print them, so they compare with `installed()`."""
        ...

    def apply(self, add: Sequence[Flow], delete: Sequence[Flow], meters: Sequence[Meter], *,
              first: Sequence[Flow] = ()) -> None:  # fmt: skip
        """Make br-int's meters exactly `meters` and change the flows atomically (new meters
        before the flows that use them, old ones deleted after). `first`: flows of `add`
        that no packet can reach before the rest is in, which may go first, in any order."""
        ...


class Changes(Protocol):
    """Who must see br-int just before a pass changes its flows or meters, and just after (the
    usage ledger folds the counters of what is about to change: agent/metering/ovs.py)."""

    def changing(self, add: Sequence[Flow], delete: Sequence[Flow], meters: Sequence[Meter],
                 tenant_tags: Mapping[str, int]) -> AbstractContextManager[object]:  # fmt: skip
        """Entered right before `Switch.apply(add, delete, meters)` and left right after it
        (with its exception, if it raised). `tenant_tags`: the tags of every tenant whose
        flows may be installed now, those this pass freed included."""
        ...


class NetworkReconciler:
    """Reconciles KINDS on one host's br-int."""

    kinds = KINDS

    def __init__(self, switch: Switch, numbers: Numbers, host: specs.Host,
                 changes: Changes | None = None) -> None:  # fmt: skip
        self._switch = switch
        self._numbers = numbers
        self._host = host
        self._changes = changes
        # What the last pass found, for NodeInfo (agent/network/readback.py) and benches.
        self.last_flows = 0
        self.flows_per_table: dict[int, int] = {}
        self.last_pass_at = 0.0  # Unix time it ended; 0: none yet
        self.last_pass_ms = 0.0
        # Ports whose flows the last pass installed (by id): the compute side resumes a VM
        # started paused once all its ports are in here (Nova's network-vif-plugged).
        self.wired: frozenset[str] = frozenset()
        self._compiled: tuple[t.HostState | None, Pipeline] = (None, Pipeline((), ()))

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        steps = _Steps()
        outcomes: dict[Key, Outcome] = {}
        values = self._parse(desired, outcomes)
        tunnel_ofport = self._switch.ensure_bridge()
        work.progress()
        plugging = self._plug(values["port"])
        plugged, waiting = self._plugged(values["port"], plugging)
        steps.done("plug")
        work.progress()
        tenants = {v.tenant_id for kind in ("network", "port", "security_group", "rate_limit")
                   for v in values[kind].values()}  # fmt: skip
        tags_before = self._numbers.assigned("tenant_tags")  # what installed flows carry
        state = t.HostState(
            networks=values["network"],
            ports=values["port"],
            security_groups=values["security_group"],
            tunnel_endpoints=values["tunnel_endpoint"],
            l2_entries=values["l2_entry"],
            rate_limits=values["rate_limit"],
            plugged=plugged,
            tenant_tags=self._numbers.assign("tenant_tags", tenants),
            ct_zones=self._numbers.assign("ct_zones", values["network"]),
            tunnel_ofport=tunnel_ofport,
        )
        # What OVS has is read while the flows are compiled: the dump is ovs-vswitchd's and
        # ovs-ofctl's work, not this process's, and takes as long as the compile.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dump-flows") as pool:
            dump = pool.submit(self._switch.installed)
            pipeline = self._compile(state)
            steps.done("compile")
            want = self._switch.canonical(pipeline.flows)
            steps.done("canonical")
            installed = dump.result()
            steps.done("installed")
        if plugging:
            # Compiled with the ofports asked for, while ovs-vswitchd opened the interfaces;
            # if it could not give one of them, compile again with what it gave.
            self._switch.settle()
            observed, waiting = self._plugged(values["port"])
            if observed != plugged:
                log.warning("network.ofport_not_granted", ports=len(plugging))
                pipeline = self._compile(dataclasses.replace(state, plugged=observed))
                want = self._switch.canonical(pipeline.flows)
            steps.done("settle")
        outcomes.update(waiting)
        add, delete = diff(want, installed)
        work.progress()
        first = unreachable(add, installed)
        with (nullcontext() if self._changes is None else self._changes.changing(
                add, delete, pipeline.meters, {**state.tenant_tags, **tags_before})):  # fmt: skip
            self._switch.apply(add, delete, pipeline.meters, first=first)
        steps.done("apply")
        if add or delete:
            log.info("network.flows_changed", added=len(add), deleted=len(delete), flows=len(want),
                     **steps.ms)  # fmt: skip
        self.last_flows = len(want)
        self.wired = frozenset(state.plugged if not plugging else observed)
        self.flows_per_table = dict(Counter(f.table for f in want))
        self.last_pass_at = time.time()
        self.last_pass_ms = steps.total_ms()
        work.progress()
        for kind in KINDS:
            for id in values[kind]:
                outcomes.setdefault((kind, id), Outcome("installed"))
        return outcomes

    @property
    def state(self) -> t.HostState | None:
        """The host's state as the last pass compiled it (the same object until it changes)."""
        return self._compiled[0]

    def _compile(self, state: t.HostState) -> Pipeline:
        """compile_host(state), again only when the state changed (compiling is pure)."""
        if state != self._compiled[0]:
            self._compiled = (state, compile_host(state))
        return self._compiled[1]

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        """Take out of br-int the interfaces the agent plugged whose port is gone (flows of
        deleted objects went with the diff in `ensure`). One the compute side plugged stays:
        its port may not have reached the agent yet, and without flows it carries nothing."""
        gone = {i.name: i.port_id for i in self._switch.interfaces()
                if i.port_id not in desired["port"] and i.plugged_by == AGENT}  # fmt: skip
        if gone:
            self._switch.unplug(list(gone))  # one transaction
            work.progress()
        return {("port", port_id): Outcome(f"unplugged {name}") for name, port_id in gone.items()}

    def _parse(self, desired: Desired, outcomes: dict[Key, Outcome]) -> dict[str, dict]:
        return parse_specs(desired, self._host, outcomes)

    def _plug(self, ports: Mapping[str, t.Port]) -> dict[str, int]:
        """Plug the missing `tap` ports, all in one OVSDB transaction, each with an ofport of
        our choosing (the lowest free from OFPORT_BASE, above those OVS picks itself), so the
        flows can be compiled while ovs-vswitchd opens the interfaces: seconds for a
        thousand. The ofport asked for each port plugged (by port id); `settle` waits."""
        on_bridge = self._switch.interfaces()
        have = {i.port_id for i in on_bridge}
        missing = sorted(
            (id, port.binding.interface_name) for id, port in ports.items()
            if id not in have and isinstance(port.binding, t.TapBinding)
            and self._switch.interface_exists(port.binding.interface_name)
        )  # fmt: skip
        if not missing:
            return {}
        used = {i.ofport for i in on_bridge}
        free = (n for n in itertools.count(OFPORT_BASE) if n not in used)
        ofports = {id: next(free) for id, _ in missing}
        self._switch.plug({name: id for id, name in missing}, {name: ofports[id] for id, name in missing})
        return ofports

    def _plugged(self, ports: Mapping[str, t.Port], asked: Mapping[str, int] | None = None
                 ) -> tuple[dict[str, t.Plugged], dict[Key, Outcome]]:  # fmt: skip
        """Where each desired port is plugged (by iface-id): its ofport, or the one `asked`
        for it while ovs-vswitchd is still opening it; and the others, waiting for what."""
        on_bridge = {i.port_id: i for i in self._switch.interfaces()}
        asked = asked or {}
        plugged, waiting = {}, {}
        for id, port in sorted(ports.items()):
            interface, binding = on_bridge.get(id), port.binding
            if interface is not None and (interface.ofport or 0) > 0:
                plugged[id] = t.Plugged(interface.ofport)
            elif id in asked:
                plugged[id] = t.Plugged(asked[id])
            else:
                waiting[("port", id)] = Outcome.waiting(_waits_for(binding, interface))
        return plugged, waiting


class _Steps:
    """Milliseconds per step of a pass, for the log line that says where a slow pass went."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.ms[f"{step}_ms"] = round((now - self._last) * 1000, 1)
        self._last = now

    def total_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


def _waits_for(binding: t.VmNicBinding | t.TapBinding | None, interface: Interface | None) -> str:
    if interface is not None:
        why = f": {interface.error}" if interface.error else " yet"
        return f"interface {interface.name} is on br-int but OVS has not opened it{why}"
    if isinstance(binding, t.TapBinding):
        return f"waiting for interface {binding.interface_name} to exist"
    if isinstance(binding, t.VmNicBinding):
        return f"waiting for the tap of VM {binding.vm_id} NIC {binding.nic_id}"
    return "not bound: the port has no binding"
