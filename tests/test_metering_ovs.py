"""The OVS source's reading of br-int and its hook around the reconciler's changes
(agent/metering/ovs.py), over a recording double of the switch and a real store; real OVS
proves the same in tests/test_metering.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.metering.ledger import Counters, Ledger
from agent.metering.ovs import OvsUsage, flow_key, meter_owner
from agent.store import FILENAME, Store
from dataplane.compile.flows import Flow, FlowDirection, cookie
from dataplane.compile.openflow import CLASSIFY, DELIVER, EGRESS, FORWARD, Meter, meter_id
from dataplane.topology import Direction

TAGS = {"blue": 7}


def flow(table: int, match: str, direction: FlowDirection, tag: int = 7) -> Flow:
    return Flow(table, 100, match, "drop", cookie(tag, direction))


FWD = flow(FORWARD, "reg7=0x3e9,dl_dst=fa:16:3e:00:00:02", FlowDirection.EGRESS)
DLV = flow(DELIVER, "reg5=0x4000", FlowDirection.INGRESS)
INFRA = flow(FORWARD, "reg7=0x3e9", FlowDirection.EGRESS, tag=0)
SG = flow(EGRESS, "in_port=16384,ip", FlowDirection.EGRESS)
IN_METER = meter_id(7, Direction.INGRESS)


class Switch:
    """br-int's counters as the test sets them; records what it was asked."""

    def __init__(self) -> None:
        self.flows: dict[Flow, tuple[int, int]] = {FWD: (0, 0), DLV: (0, 0), INFRA: (0, 0)}
        self.drops: dict[int, tuple[int, int]] = {IN_METER: (0, 0)}
        self.epoch = "100@1"
        self.reads = 0
        self.plan: tuple[list, list, list[int]] = ([], [], [])
        self.broken = False

    def counters(self, table: int | None = None) -> list[tuple[Flow, int, int]]:
        if self.broken:
            raise ConnectionError("ovs-vswitchd does not answer")
        self.reads += 1
        return [(f, *c) for f, c in self.flows.items() if f.table == table]

    def meter_stats(self) -> dict[int, tuple[int, int]]:
        return dict(self.drops)

    def meter_plan(self, meters):
        return self.plan

    def instance(self) -> str:
        return self.epoch


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Switch, Ledger, OvsUsage]]:
    with Store(tmp_path / FILENAME) as store:
        switch, ledger = Switch(), Ledger(store)
        usage = OvsUsage(switch, ledger, lambda: TAGS)
        ledger.attach(usage)
        ledger.collect()  # the baseline
        yield switch, ledger, usage


def blue(ledger: Ledger) -> tuple[Counters, Counters]:
    [u] = ledger.usage(["blue"])
    return u.ingress, u.egress


def test_egress_is_forward_and_ingress_is_deliver_less_the_meters_drops(setup) -> None:
    switch, ledger, _ = setup
    switch.flows.update({FWD: (10, 1000), DLV: (8, 800), INFRA: (99, 9900)})
    switch.drops[IN_METER] = (3, 300)
    ledger.collect()
    assert blue(ledger) == (Counters(5, 500, 3, 300), Counters(10, 1000))


def test_a_deleted_flow_is_folded_before_and_counts_from_zero_if_it_comes_back(setup) -> None:
    switch, ledger, usage = setup
    switch.flows[FWD] = (10, 1000)
    with usage.changing(add=[], delete=[FWD], meters=(), tenant_tags=TAGS):
        del switch.flows[FWD]
    assert blue(ledger)[1] == Counters(10, 1000)
    switch.flows[FWD] = (2, 200)  # added again later, counting from zero
    ledger.collect()
    assert blue(ledger)[1] == Counters(12, 1200) and ledger.lost_windows == 0


def test_a_replaced_flow_keeps_its_counters_in_ovs_and_is_not_counted_again(setup) -> None:
    switch, ledger, usage = setup
    switch.flows[DLV] = (10, 1000)
    with usage.changing(add=[DLV], delete=[], meters=(), tenant_tags=TAGS):
        pass  # OVS forwards the counters of a flow an add replaces
    switch.flows[DLV] = (11, 1100)
    ledger.collect()
    assert blue(ledger)[0] == Counters(11, 1100) and ledger.lost_windows == 0


def test_a_modified_meter_is_folded_before_and_forgotten_after(setup) -> None:
    switch, ledger, usage = setup
    switch.drops[IN_METER] = (4, 400)
    switch.plan = ([], [type("M", (), {"id": IN_METER})()], [])
    meter = Meter(IN_METER, 1000, 100)
    with usage.changing(add=[], delete=[], meters=[meter], tenant_tags=TAGS):
        switch.drops[IN_METER] = (0, 0)  # mod-meter resets the statistics
    switch.drops[IN_METER] = (6, 600)
    ledger.collect()
    assert blue(ledger)[0].meter_dropped_packets == 10 and ledger.lost_windows == 0


def test_changes_to_flows_that_count_nothing_read_nothing(setup) -> None:
    switch, ledger, usage = setup
    reads = switch.reads
    with usage.changing(add=[SG], delete=[flow(CLASSIFY, "in_port=1", FlowDirection.EGRESS)],
                        meters=(), tenant_tags=TAGS):  # fmt: skip
        pass
    with usage.changing(add=[SG], delete=[], meters=(), tenant_tags=TAGS):
        pass
    assert switch.reads == reads + 2  # the first saw new meters (none) once; then nothing
    with usage.changing(add=[SG], delete=[], meters=(), tenant_tags=TAGS):
        pass
    assert switch.reads == reads + 2


def test_a_failed_read_before_a_change_does_not_stop_the_change(setup) -> None:
    switch, _, usage = setup
    switch.broken = True
    changed = []
    with usage.changing(add=[], delete=[FWD], meters=(), tenant_tags=TAGS):
        changed.append(True)
    assert changed == [True]


def test_a_new_ovs_vswitchd_is_a_new_epoch(setup) -> None:
    switch, ledger, _ = setup
    switch.flows[FWD] = (10, 1000)
    ledger.collect()
    switch.epoch, switch.flows[FWD] = "200@5", (12, 1200)  # restarted; flows back, 12 new
    ledger.collect()
    assert blue(ledger)[1] == Counters(22, 2200) and ledger.lost_windows == 1


def test_meter_ids_map_back_to_their_tenant_and_direction() -> None:
    for tag in (1, 7, (1 << 24) - 1):
        for direction in Direction:
            assert meter_owner(meter_id(tag, direction)) == (tag, direction)
    assert flow_key(FWD) == f"flow:{FORWARD}/100/{FWD.match}"
