"""The network reconciler's logic with a recording switch (the unit side of its seam): one diff
per pass, nothing sent when nothing changed, stale flows and ports removed, pending ports.
Real OVS is proved in the network integration tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.network.numbers import Numbers
from agent.network.ovsdb import AGENT, Interface
from agent.network.reconcile import OFPORT_BASE, NetworkReconciler
from agent.network.specs import Host
from agent.reconcile import Engine
from agent.store import Delete, Put, Ref, Status, Store
from andromede.v1 import network_pb2
from dataplane.compile.flows import Flow


class RecordingSwitch:
    """br-int in memory: interfaces that exist on the "host", what is plugged, the flows."""

    def __init__(self) -> None:
        self.host_interfaces = {"tap-a", "tap-b"}
        self.bridge: dict[str, Interface] = {}
        self.flows: dict[tuple, Flow] = {}
        self.meters: list = []
        self.bundles: list[tuple[int, int]] = []  # (added, deleted) per apply
        self.first: list[int] = []  # per apply: flows sent ahead of the bundle
        self._asked: dict[str, int] = {}  # ofport_request of what settle() opens
        self.taken: dict[int, int] = {}  # ofports OVS will not grant -> the one it gives
        self.transactions = 0  # plug calls: one per pass however many ports

    def ensure_bridge(self) -> int:
        return 1

    def interfaces(self) -> list[Interface]:
        return list(self.bridge.values())

    def interface_exists(self, name: str) -> bool:
        return name in self.host_interfaces

    def plug(self, interfaces, ofports) -> None:
        self.transactions += 1
        for name, iface_id in interfaces.items():
            self.bridge[name] = Interface(name, iface_id, None, "", "", "", AGENT)  # not opened yet
            self._asked[name] = ofports[name]

    def settle(self) -> None:
        for name, ofport in self._asked.items():  # as OVS grants an ofport_request
            granted = self.taken.get(ofport, ofport)  # or, if it is taken, another one
            self.bridge[name] = dataclasses.replace(self.bridge[name], ofport=granted, link_state="up")
        self._asked.clear()

    def unplug(self, names) -> None:
        for name in names:
            del self.bridge[name]

    def installed(self) -> list[Flow]:
        return list(self.flows.values())

    def canonical(self, flows: Sequence[Flow]) -> list[Flow]:
        return list(flows)

    def apply(self, add: Sequence[Flow], delete: Sequence[Flow], meters, *, first: Sequence[Flow] = ()) -> None:
        self.meters = list(meters)
        self.first.append(len(first))
        if not add and not delete:
            return
        for flow in delete:
            self.flows.pop(flow.key, None)
        for flow in add:
            self.flows[flow.key] = flow
        self.bundles.append((len(add), len(delete)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.sqlite3") as s:
        yield s


def spec(message) -> bytes:
    return message.SerializeToString(deterministic=True)


def network_objects(*, with_second_port: bool = True) -> list[Put]:
    net = network_pb2.TenantNetwork(id="n1", tenant_id="t1", vni=100)
    ports = [network_pb2.Port(id="p1", tenant_id="t1", network_id="n1", mac="fa:16:3e:00:00:01",
                              fixed_ips=["198.51.100.10"], port_security_enabled=False,
                              tap=network_pb2.TapBinding(interface_name="tap-a"))]  # fmt: skip
    if with_second_port:
        ports.append(network_pb2.Port(id="p2", tenant_id="t1", network_id="n1",
                                      mac="fa:16:3e:00:00:02", fixed_ips=["198.51.100.11"],
                                      port_security_enabled=False,
                                      tap=network_pb2.TapBinding(interface_name="tap-b")))  # fmt: skip
    return [Put("network", "n1", spec(net))] + [
        Put("port", p.id, spec(p), (Ref("network_id", "network", "n1"),)) for p in ports
    ]


def reconciler(tmp_path: Path, switch: RecordingSwitch) -> NetworkReconciler:
    return NetworkReconciler(switch, Numbers(tmp_path), Host())


def test_the_first_pass_installs_everything_and_the_next_sends_nothing(
    store: Store, tmp_path: Path
) -> None:
    switch = RecordingSwitch()
    store.commit(network_objects(), "r1")
    engine = Engine(store, [reconciler(tmp_path, switch)])
    assert engine.run_pass().acked
    assert {i.port_id for i in switch.interfaces()} == {"p1", "p2"}
    assert switch.transactions == 1  # both ports in one OVSDB transaction
    assert len(switch.bundles) == 1 and switch.bundles[0][1] == 0
    # Nothing in table 0 yet: no packet reaches the other tables, which may go ahead.
    assert switch.first == [sum(f.table != 0 for f in switch.flows.values())]
    installed = dict(switch.flows)
    # A restarted agent (a new reconciler and engine) finds everything right: no bundle.
    engine = Engine(store, [reconciler(tmp_path, switch)])
    assert engine.run_pass().acked
    assert len(switch.bundles) == 1 and switch.flows == installed


def test_ports_are_plugged_at_ofports_the_agent_asks_for_and_ovs_has_the_last_word(
    store: Store, tmp_path: Path
) -> None:
    switch = RecordingSwitch()
    switch.taken = {OFPORT_BASE + 1: 7}  # say a foreign interface holds it
    store.commit(network_objects(), "r1")
    engine = Engine(store, [reconciler(tmp_path, switch)])
    assert engine.run_pass().acked
    assert sorted(i.ofport for i in switch.interfaces()) == [7, OFPORT_BASE]
    ports = {f.match for f in switch.flows.values() if f.table == 0 and f.match.startswith("in_port=")}
    assert ports == {"in_port=7", f"in_port={OFPORT_BASE}"}  # compiled again with the one given


def test_a_deleted_port_loses_its_flows_and_its_place_on_the_bridge(
    store: Store, tmp_path: Path
) -> None:
    switch = RecordingSwitch()
    store.commit(network_objects(), "r1")
    engine = Engine(store, [reconciler(tmp_path, switch)])
    engine.run_pass()
    ofport = switch.bridge["tap-b"].ofport
    store.commit([Delete("port", "p2")], "r2")
    summary = engine.run_pass()
    assert summary.acked and summary.pruned == 1
    assert "tap-b" not in switch.bridge
    assert not any(f"reg5={ofport}" in f.match or f"in_port={ofport}" in f.match
                   for f in switch.flows.values())  # fmt: skip
    added, deleted = switch.bundles[-1]
    assert deleted > 0 and switch.first[-1] == 0


def test_an_interface_the_compute_side_plugged_before_its_port_arrived_is_left_alone(
    store: Store, tmp_path: Path
) -> None:
    switch = RecordingSwitch()
    switch.bridge["tap-c"] = Interface("tap-c", "p3", 99, "up", "", "")  # os-vif's, no port yet
    store.commit(network_objects(), "r1")
    engine = Engine(store, [reconciler(tmp_path, switch)])
    summary = engine.run_pass()
    assert summary.acked and summary.pruned == 0 and "tap-c" in switch.bridge
    assert not any("in_port=99" in f.match for f in switch.flows.values())  # it carries nothing


def test_a_port_whose_interface_is_missing_is_pending_and_holds_the_ack(
    store: Store, tmp_path: Path
) -> None:
    switch = RecordingSwitch()
    switch.host_interfaces = {"tap-a"}
    store.commit(network_objects(), "r1")
    engine = Engine(store, [reconciler(tmp_path, switch)])
    summary = engine.run_pass()
    assert not summary.acked and summary.waiting == 1
    p2 = store.get("port", "p2")
    assert (p2.status, p2.message) == (Status.PENDING, "waiting for interface tap-b to exist")
    switch.host_interfaces.add("tap-b")  # the interface appears
    assert engine.run_pass().acked
    assert store.get("port", "p2").status is Status.APPLIED
