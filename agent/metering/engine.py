"""Usage from the userspace packet engine: a ledger `Source` over its per-tenant counters.

The engine (agent/engine/runner.py) counts, per tenant and direction, the packets that
passed (after the groups and the rate limit) and the rate limit's drops; its counters are
cumulative from its start, which its epoch names, so the ledger's accounting of restarts
(a new epoch counts from zero) is the same as for OVS.
"""

from __future__ import annotations

import time

from agent.engine.runner import EngineRunner
from agent.metering.ledger import Account, Measure, Reading, Snapshot
from dataplane.kernels import engine as k
from dataplane.topology import Direction

_DIRECTIONS = ((k.METER_EGRESS, Direction.EGRESS), (k.METER_INGRESS, Direction.INGRESS))
_MEASURES = ((Measure.PASSED, k.PASSED_PACKETS, k.PASSED_BYTES),
             (Measure.DROPPED, k.METER_DROPPED_PACKETS, k.METER_DROPPED_BYTES))  # fmt: skip


NOT_STARTED = "not-started"


class EngineUsage:
    name = "engine"

    def __init__(self, runner: EngineRunner) -> None:
        self._runner = runner

    def read(self) -> Snapshot:
        if not self._runner.epoch:
            # Nothing counted yet: an empty first read, so that a ledger new to the engine
            # takes it as its baseline rather than the engine's first real counts.
            return Snapshot(NOT_STARTED, [], time.time())
        readings = [
            Reading(f"{tenant}/{direction.value}/{measure.value}", Account(tenant, direction, measure),
                    int(counters[row, packets]), int(counters[row, bytes_]))
            for tenant, counters in sorted(self._runner.usage().items())
            for row, direction in _DIRECTIONS
            for measure, packets, bytes_ in _MEASURES
        ]  # fmt: skip
        return Snapshot(self._runner.epoch, readings, time.time())
