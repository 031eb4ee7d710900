"""Usage from br-int: a ledger `Source` over OVS flow and meter statistics, and the hook that
folds them right before the network reconciler changes what carries them.

Where each packet is counted once (dataplane/compile/openflow.py's pipeline, checked with
real OVS in tests/test_metering.py):

    egress   FORWARD (40): every packet of a VM that passed anti-spoofing, the egress groups
             and the egress meter (in CLASSIFY) goes through it once, to a local port, the
             tunnel or the flood list. ARP and neighbour solicitations answered by the
             responder never leave the host and are not counted.
    ingress  DELIVER (70): every packet to a VM that passed the ingress groups, once per
             port it is delivered to; its flow applies the tenant's ingress meter before the
             output, so it counts the meter's drops too (Measure.OFFERED).
    drops    the meters' band statistics: the egress meter's drops happen before FORWARD
             (Measure.DROPPED), the ingress meter's inside DELIVER (OFFERED_DROPPED).

Flows of tenant tag 0 (the drop defaults) belong to nobody and are not read. A flow's key is
its table, priority and match, which is what OVS identifies it by: an add with the same key
replaces it and keeps its counters (even with another cookie: measured on OVS 3.1), so the
cookie says whose a count is at the read, not which counter it is. A meter's key is its id.

The epoch is the ovs-vswitchd instance (`OvsSwitch.instance`, read before and after the
dumps: a restart in between is read again). Counters change outside a pass only by traffic;
a pass changes them three ways, which `changing` handles around `Switch.apply`:

    a counted flow deleted          read and folded before, forgotten after
    a counted flow replaced (add)   read and folded before (its counts so far belong to the
                                    old cookie's tenant); OVS keeps its counters: remembered
    a meter modified or deleted     read and folded before, forgotten after (mod-meter
                                    resets a meter's statistics: measured on OVS 3.1)

Passes that change neither counted flows nor meters (security groups, ARP responder, most
of a pass) do not read anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import structlog

from agent.metering.ledger import Account, Ledger, Measure, Reading, Snapshot, owners
from dataplane.compile.flows import Flow, FlowDirection, cookie_direction, cookie_tenant
from dataplane.compile.openflow import DELIVER, FORWARD, Meter, meter_id
from dataplane.topology import Direction

log = structlog.get_logger(__name__)

NAME = "ovs"
COUNTED = {FORWARD: (FlowDirection.EGRESS, Direction.EGRESS, Measure.PASSED),
           DELIVER: (FlowDirection.INGRESS, Direction.INGRESS, Measure.OFFERED)}  # fmt: skip
_METER_DROPS = {Direction.EGRESS: Measure.DROPPED, Direction.INGRESS: Measure.OFFERED_DROPPED}


class Counted(Protocol):
    """What this source needs of br-int (agent/network/ovs.py's OvsSwitch)."""

    def counters(self, table: int | None = None) -> list[tuple[Flow, int, int]]: ...

    def meter_stats(self) -> dict[int, tuple[int, int]]: ...

    def meter_plan(self, meters: Sequence[Meter]) -> tuple[list, list, list[int]]: ...

    def instance(self) -> str: ...


def flow_key(flow: Flow) -> str:
    return f"flow:{flow.table}/{flow.priority}/{flow.match}"


def meter_key(meter: int) -> str:
    return f"meter:{meter}"


def meter_owner(meter: int) -> tuple[int, Direction]:
    """The tenant tag and direction of a meter id (the inverse of openflow.meter_id)."""
    tag, direction = (meter - 1) // 2, Direction.EGRESS if meter % 2 else Direction.INGRESS
    if meter_id(tag, direction) != meter:
        raise ValueError(f"meter {meter} is not a tenant's meter")
    return tag, direction


class OvsUsage:
    """The OVS source of `ledger` (attached by the caller) and the network reconciler's
    `Changes`. `tenant_tags` gives the tags in use now (read fresh for each poll)."""

    name = NAME

    def __init__(self, switch: Counted, ledger: Ledger,
                 tenant_tags: Callable[[], Mapping[str, int]]) -> None:  # fmt: skip
        self._switch = switch
        self._ledger = ledger
        self._tenant_tags = tenant_tags
        self._meters: tuple[Meter, ...] | None = None  # what the last pass wanted

    def read(self, tenant_tags: Mapping[str, int] | None = None) -> Snapshot:
        """The counted flows and the meters of br-int, now."""
        tags = owners(self._tenant_tags() if tenant_tags is None else tenant_tags)
        for _ in range(3):
            epoch = self._switch.instance()
            flows = [c for table in COUNTED for c in self._switch.counters(table)]
            drops = self._switch.meter_stats()  # after the flows: see Measure.OFFERED
            if self._switch.instance() == epoch:
                break
        else:
            raise RuntimeError("ovs-vswitchd restarted during each of three reads")
        readings = []
        for flow, packets, nbytes in flows:
            fdir, direction, measure = COUNTED[flow.table]
            tag = cookie_tenant(flow.cookie)
            if tag == 0 or cookie_direction(flow.cookie) is not fdir:
                continue
            tenant = tags.get(tag)
            account = Account(tenant, direction, measure) if tenant is not None else None
            readings.append(Reading(flow_key(flow), account, packets, nbytes))
        for meter, (packets, nbytes) in sorted(drops.items()):
            try:
                tag, direction = meter_owner(meter)
            except ValueError:
                continue
            tenant = tags.get(tag)
            account = Account(tenant, direction, _METER_DROPS[direction]) if tenant is not None else None
            readings.append(Reading(meter_key(meter), account, packets, nbytes))
        return Snapshot(epoch, tuple(readings), time.time())

    @contextmanager
    def changing(self, add: Sequence[Flow], delete: Sequence[Flow], meters: Sequence[Meter],
                 tenant_tags: Mapping[str, int]) -> Iterator[None]:  # fmt: skip
        """Around a pass's `Switch.apply`: see the module docstring."""
        counted = [f for f in (*add, *delete) if f.table in COUNTED]
        meters = tuple(meters)
        if not counted and meters == self._meters:
            yield
            return
        with self._ledger.holding():
            try:
                modified, deleted = [], []
                if meters != self._meters:
                    _, modified, deleted = self._switch.meter_plan(meters)
                self._ledger.fold(self.name, self.read(tenant_tags))
            except Exception as e:  # metering never holds up the network: the change goes on
                log.warning("metering.fold_before_change_failed", error=str(e),
                            flows=len(counted), why="the counts of what changes now since "
                            "the last read may be lost")  # fmt: skip
                self._meters = None
                yield
                return
            gone = [flow_key(f) for f in delete if f.table in COUNTED]
            gone += [meter_key(m.id) for m in modified] + [meter_key(i) for i in deleted]
            try:
                yield
            except BaseException:
                # Maybe nothing changed (a bundle is atomic): keep every counter; the next read
                # tells what is there.
                self._meters = None
                raise
            self._ledger.forget(self.name, gone)
            self._meters = meters

