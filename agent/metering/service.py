"""The Metering service (proto/andromede/v1/metering.proto): the ledger's counters per tenant,
read fresh at each call, once (GetUsage) or every interval (WatchUsage).

Where data comes from: the ledger (agent/metering/ledger.py), which reads its sources at the
call (calls at the same moment share a read; a change in progress that holds them longer than
COLLECT_WAIT_S gives an older report, whose collected_at says so), and the
store's ports (the tenants "with ports on this host"). Bad requests raise `Invalid`, which the
server's edge turns into INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc

from agent.metering.ledger import COLLECT_WAIT_S, Counters, Ledger
from agent.store import Invalid, Store, check_id
from andromede.v1 import metering_pb2, metering_pb2_grpc, network_pb2

MAX_TENANT_IDS = 10_000
DEFAULT_INTERVAL_S = 10
MAX_INTERVAL_S = 3_600
POLL_S = 1.0  # a waiting WatchUsage is woken when it ends; this is only a safety net


def tenants_with_ports(store: Store) -> Callable[[], set[str]]:
    """The tenants of the ports stored on this host."""

    def tenants() -> set[str]:
        return {network_pb2.Port.FromString(o.spec).tenant_id for o in store.objects("port")}

    return tenants


class MeteringService(metering_pb2_grpc.MeteringServicer):
    """The servicer; `stop()` ends open watches (the server calls it first when it stops)."""

    def __init__(self, ledger: Ledger, tenants: Callable[[], Iterable[str]]) -> None:
        self._ledger = ledger
        self._tenants = tenants
        self._stopping = False
        self._lock = threading.Lock()
        self._watches: set[threading.Event] = set()  # one per open watch: set to end it

    def stop(self) -> None:
        """End every open watch now, and any that opens after (the server stops)."""
        with self._lock:
            self._stopping = True
            for woken in self._watches:
                woken.set()

    def GetUsage(self, request: metering_pb2.GetUsageRequest, context: grpc.ServicerContext
                 ) -> metering_pb2.GetUsageResponse:  # fmt: skip
        ids = _check_tenants(request.tenant_ids)
        return metering_pb2.GetUsageResponse(report=self._report(ids))

    def WatchUsage(self, request: metering_pb2.WatchUsageRequest, context: grpc.ServicerContext
                   ) -> Iterator[metering_pb2.WatchUsageResponse]:  # fmt: skip
        ids = _check_tenants(request.tenant_ids)
        interval = _check_interval(request.interval_s)
        ended = threading.Event()  # the client cancelled, the deadline passed, the server stops
        context.add_callback(ended.set)
        with self._lock:
            if self._stopping:
                ended.set()
            self._watches.add(ended)
        try:
            due = time.monotonic()
            while context.is_active() and not ended.is_set():
                yield metering_pb2.WatchUsageResponse(report=self._report(ids))
                due += interval
                while not ended.is_set() and (left := due - time.monotonic()) > 0:
                    ended.wait(min(POLL_S, left))
        finally:
            with self._lock:
                self._watches.discard(ended)

    def _report(self, ids: Sequence[str]) -> metering_pb2.UsageReport:
        collected_at = self._ledger.collect(fresh=True, wait=COLLECT_WAIT_S)
        tenants = ids or (self._ledger.tenants() | set(self._tenants()))
        report = metering_pb2.UsageReport()
        report.collected_at.FromNanoseconds(int(collected_at * 1e9))
        since = int(self._ledger.counting_since * 1e9)
        for usage in self._ledger.usage(tenants):
            entry = report.tenants.add(tenant_id=usage.tenant_id, ingress=_counters(usage.ingress),
                                       egress=_counters(usage.egress))  # fmt: skip
            entry.counting_since.FromNanoseconds(since)
        return report


def _counters(c: Counters) -> metering_pb2.TrafficCounters:
    return metering_pb2.TrafficCounters(packets=c.packets, bytes=c.bytes,
                                        meter_dropped_packets=c.meter_dropped_packets,
                                        meter_dropped_bytes=c.meter_dropped_bytes)  # fmt: skip


def _check_tenants(ids: Sequence[str]) -> list[str]:
    if len(ids) > MAX_TENANT_IDS:
        raise Invalid("tenant_ids", f"at most {MAX_TENANT_IDS} ids per call, got {len(ids)}; "
                      f"ask for the rest in another call")  # fmt: skip
    for i, id in enumerate(ids):
        check_id(f"tenant_ids[{i}]", id)
    return list(ids)


def _check_interval(interval_s: int) -> int:
    if interval_s == 0:
        return DEFAULT_INTERVAL_S
    if not 1 <= interval_s <= MAX_INTERVAL_S:
        raise Invalid("interval_s", f"must be 1..{MAX_INTERVAL_S} seconds (0 means "
                      f"{DEFAULT_INTERVAL_S}), got {interval_s}")  # fmt: skip
    return interval_s
