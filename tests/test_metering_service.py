"""The Metering service as billing meets it: a real server on 127.0.0.1 with mutual TLS
(tests/test_server.py's PKI), a real store on disk, a real ledger over it, calls through the
generated stubs. The ledger's source here is tests/test_metering_ledger.py's double; the
counts from real OVS are tests/test_metering.py's."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_metering_ledger import Recorded
from test_server import TIMEOUT, Agent, certs, stopped  # noqa: F401 (certs: a fixture)

from agent import pki
from agent.config import ServerConfig, TlsFiles
from agent.metering.ledger import Ledger, Measure
from agent.metering.service import MeteringService, tenants_with_ports
from agent.server import start
from agent.store import FILENAME, Store
from andromede.v1 import metering_pb2, metering_pb2_grpc, network_pb2
from dataplane.topology import Direction

pytestmark = pytest.mark.integration


class Metered(Agent):
    source: Recorded
    ledger: Ledger

    def metering(self) -> metering_pb2_grpc.MeteringStub:
        return metering_pb2_grpc.MeteringStub(self.channel())


@pytest.fixture
def agent(tmp_path: Path, certs: pki.LabPki) -> Iterator[Metered]:  # noqa: F811
    with Store(tmp_path / FILENAME) as store:
        source = Recorded()
        source.set("f1", "t-blue", Direction.EGRESS, Measure.PASSED, 0)
        ledger = Ledger(store)
        ledger.attach(source)
        tls = TlsFiles(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
        server = start(ServerConfig(listen=("127.0.0.1:0",), tls=tls), store,
                       metering=MeteringService(ledger, tenants_with_ports(store)))  # fmt: skip
        server.set_serving()
        running = Metered(store, server.ports["127.0.0.1:0"], certs, [], server)
        running.source, running.ledger = source, ledger
        try:
            yield running
        finally:
            stopped(running)


def usage(agent: Metered, *tenant_ids: str) -> metering_pb2.UsageReport:
    return agent.metering().GetUsage(metering_pb2.GetUsageRequest(tenant_ids=tenant_ids),
                                     timeout=TIMEOUT).report  # fmt: skip


def error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=TIMEOUT)
        for _ in result if not hasattr(result, "report") else ():
            pass
    return caught.value.code(), caught.value.details()


def test_get_usage_reads_the_sources_at_the_call(agent: Metered) -> None:
    first = usage(agent, "t-blue")  # the first read ever: the baseline
    agent.source.set("f1", "t-blue", Direction.EGRESS, Measure.PASSED, 7, 700)
    report = usage(agent, "t-blue")
    [blue] = report.tenants
    assert (blue.egress.packets, blue.egress.bytes) == (7, 700)
    assert blue.ingress == metering_pb2.TrafficCounters()
    assert report.collected_at.ToNanoseconds() > first.collected_at.ToNanoseconds()
    assert abs(report.collected_at.ToSeconds() - time.time()) < 60
    assert blue.counting_since.ToNanoseconds() == int(agent.ledger.counting_since * 1e9)


def test_unknown_tenants_are_zero_and_every_tenant_comes_once_in_id_order(agent: Metered) -> None:
    report = usage(agent, "zeta", "t-blue", "alpha", "zeta")
    assert [t.tenant_id for t in report.tenants] == ["alpha", "t-blue", "zeta"]
    assert report.tenants[0].egress == metering_pb2.TrafficCounters()
    assert report.tenants[0].counting_since == report.tenants[2].counting_since


def test_no_ids_means_every_tenant_with_traffic_or_ports_here(agent: Metered) -> None:
    port = network_pb2.Port(id="p1", tenant_id="t-red", network_id="n1", mac="fa:16:3e:00:00:01")
    agent.store.put("port", "p1", port.SerializeToString(), "req-1")
    usage(agent)  # the baseline
    assert [t.tenant_id for t in usage(agent).tenants] == ["t-red"]
    agent.source.set("f1", "t-blue", Direction.EGRESS, Measure.PASSED, 1)
    assert [t.tenant_id for t in usage(agent).tenants] == ["t-blue", "t-red"]


@pytest.mark.parametrize(("ids", "field"), [
    (["ok", "not an id"], "tenant_ids[1]"),
    (["", "ok"], "tenant_ids[0]"),
    ([f"t{i}" for i in range(10_001)], "tenant_ids"),
])  # fmt: skip
def test_bad_tenant_ids_are_invalid_argument_naming_the_field(agent: Metered, ids: list[str],
                                                              field: str) -> None:  # fmt: skip
    stub = agent.metering()
    for call, request in ((stub.GetUsage, metering_pb2.GetUsageRequest(tenant_ids=ids)),
                          (stub.WatchUsage, metering_pb2.WatchUsageRequest(tenant_ids=ids))):  # fmt: skip
        code, details = error(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(f"{field}: "), details


@pytest.mark.parametrize("interval", [3601, 100_000])
def test_a_watch_interval_out_of_range_is_invalid_argument(agent: Metered, interval: int) -> None:
    code, details = error(agent.metering().WatchUsage, metering_pb2.WatchUsageRequest(interval_s=interval))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"interval_s: must be 1..3600 seconds (0 means 10), got {interval}"


def test_watch_usage_reports_at_once_then_every_interval(agent: Metered) -> None:
    usage(agent, "t-blue")  # the baseline
    started = time.monotonic()
    stream = agent.metering().WatchUsage(metering_pb2.WatchUsageRequest(tenant_ids=["t-blue"],
                                                                        interval_s=1))  # fmt: skip
    try:
        first = next(stream)
        at_once = time.monotonic() - started
        agent.source.set("f1", "t-blue", Direction.EGRESS, Measure.PASSED, 3)
        second = next(stream)
        between = time.monotonic() - started - at_once
    finally:
        stream.cancel()
    assert at_once < 0.9, f"the first report came after {at_once:.2f} s"
    assert 0.7 < between < 2.0, f"the second report came {between:.2f} s after the first"
    assert first.report.tenants[0].egress.packets == 0
    assert second.report.tenants[0].egress.packets == 3


def test_cancelled_watches_end_and_give_their_slots_back(agent: Metered) -> None:
    stub = agent.metering()
    for _ in range(3):  # 4 at a time: the most one identity may hold, so a leaked one shows
        streams = [stub.WatchUsage(metering_pb2.WatchUsageRequest(interval_s=3600)) for _ in range(4)]
        for stream in streams:
            next(stream)  # each is open, and has its first report
        for stream in streams:
            stream.cancel()
        deadline = time.monotonic() + 0.5
        while _watching() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _watching(), "a WatchUsage handler still runs 0.5 s after its client cancelled"


def test_a_stopping_server_ends_open_watches_at_once(tmp_path: Path, agent: Metered) -> None:
    stream = agent.metering().WatchUsage(metering_pb2.WatchUsageRequest(interval_s=3600))
    next(stream)
    started = time.monotonic()
    agent.server.stop(grace=5.0)
    took = time.monotonic() - started
    with pytest.raises((grpc.RpcError, StopIteration)):
        next(stream)
    assert took < 2.0, f"the server took {took:.2f} s to stop with a watch open"
    assert not _watching()


def _watching() -> bool:
    """Some thread runs a WatchUsage handler now, or the server's edge around one (which gives
    the stream's slot back after the handler returns)."""
    return any(_in_a_call(frame) for frame in sys._current_frames().values())


def _in_a_call(frame) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "WatchUsage" or (code.co_name == "call"
                                            and code.co_filename.endswith("agent/server.py")):  # fmt: skip
            return True
        frame = frame.f_back
    return False
