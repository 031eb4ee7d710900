"""The engine where an SRE and billing meet it: `andromede-engine` over a pcap file and over a
live interface, with the policy an agent stored, and the agent's own engine (`[engine] ports`)
whose counts reach the Metering service over real gRPC, packet for packet."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.scenario import Scenario, wait_for
from agent.store import FILENAME, Store
from andromede.v1 import common_pb2, metering_pb2, network_pb2
from bench.afpacket import RX, TX, veth_netns
from dataplane.frames import Frames
from dataplane.io.afpacket import TxRing
from dataplane.io.pcap import read_pcap, write_pcap
from tests import packets
from tests.test_metering import counting_lab
from tests.test_network_e2e import tenant_vm

pytestmark = pytest.mark.integration

ENGINE = ".venv/bin/andromede-engine"
P1_MAC, P2_MAC = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"


def _put(store: Store, kind: str, message) -> None:
    store.put(kind, message.id, message.SerializeToString(), f"r-{kind}-{message.id}")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An agent's store: tenant t1's network, p1 and p2 on it, p2 taking TCP 1000-1999 only."""
    store = Store(tmp_path / FILENAME)
    try:
        _put(store, "network", network_pb2.TenantNetwork(id="n1", tenant_id="t1", vni=100))
        rule = network_pb2.SecurityGroupRule(direction=common_pb2.DIRECTION_INGRESS, ethertype=network_pb2.ETHERTYPE_IPV4,
                                             protocol=6, port_range_min=1000, port_range_max=1999)  # fmt: skip
        out = network_pb2.SecurityGroupRule(direction=common_pb2.DIRECTION_EGRESS, ethertype=network_pb2.ETHERTYPE_IPV4)
        _put(store, "security_group", network_pb2.SecurityGroup(id="web", tenant_id="t1", rules=[rule, out]))
        for port_id, mac, ip in (("p1", P1_MAC, "198.51.100.10"), ("p2", P2_MAC, "198.51.100.11")):
            _put(store, "port", network_pb2.Port(id=port_id, tenant_id="t1", network_id="n1", mac=mac,
                                                 fixed_ips=[ip], security_group_ids=["web"]))  # fmt: skip
    finally:
        store.close()
    return tmp_path


def _frames(allowed: int, denied: int) -> Frames:
    frame = [packets.ip_frame(P2_MAC, P1_MAC, "198.51.100.10", "198.51.100.11", 6, 40000, port)
             for port in [1500] * allowed + [22] * denied]  # fmt: skip
    return Frames.of(frame, list(range(len(frame))))


def _one(report: dict, tenant: str, direction: str) -> dict:
    return next(r for r in report["tenants"] if r["tenant_id"] == tenant and r["direction"] == direction)


def test_the_tool_meters_a_pcap_with_the_stored_policy_and_writes_what_leaves(state_dir: Path, tmp_path: Path) -> None:
    write_pcap(tmp_path / "in.pcap", _frames(5, 2))
    done = subprocess.run([ENGINE, "--pcap", str(tmp_path / "in.pcap"), "--port", "p1", "--state-dir", str(state_dir),
                           "--json", "--write", str(tmp_path / "out.pcap")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["final"]
    egress, ingress = _one(report, "t1", "egress"), _one(report, "t1", "ingress")
    assert (egress["packets"], egress["bytes"]) == (7, 7 * 60)
    assert (ingress["packets"], ingress["dropped_packets"]) == (5, 2)
    written = read_pcap(tmp_path / "out.pcap")
    assert [written.frame(i) for i in range(len(written))] == [_frames(5, 0).frame(i) for i in range(5)]


def test_the_tool_says_what_is_wrong(state_dir: Path, tmp_path: Path) -> None:
    write_pcap(tmp_path / "in.pcap", _frames(1, 0))
    for argv, message in (
        (["--port", "nope", "--state-dir", str(state_dir)], "port: no port 'nope'"),
        (["--port", "p1", "--state-dir", str(tmp_path / "empty")], "state-dir: no agent store"),
        (["--state-dir", str(state_dir)], "no port has a tap binding"),
    ):
        done = subprocess.run([ENGINE, "--pcap", str(tmp_path / "in.pcap"), *argv], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_tool_meters_a_live_interface(state_dir: Path) -> None:
    with veth_netns("eng") as space:
        tool = space.popen([str(Path(ENGINE).resolve()), "--iface", RX, "--port", "p1", "--state-dir", str(state_dir),
                            "--json", "--duration", "60", "--interval", "3600"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert "metering rx0" in tool.stderr.readline()
            with TxRing(TX, netns=space.name) as tx:
                tx.send(_frames(300, 100))
            time.sleep(0.5)
            tool.terminate()
            out, err = tool.communicate(timeout=30)
        finally:
            if tool.poll() is None:
                tool.kill()
    assert tool.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["kernel_drops"] == 0
    assert _one(report, "t1", "egress")["packets"] == 400
    ingress = _one(report, "t1", "ingress")
    assert (ingress["packets"], ingress["dropped_packets"]) == (300, 100)


# --- the agent's own engine ---------------------------------------------------------------------

ENGINE_PORT, ENGINE_MAC = "eng-blue", "fa:16:3e:0e:00:01"
AGENT_CONFIG = f'[metering]\npoll_interval_s = 3600\n[engine]\nports = {{ eng0 = "{ENGINE_PORT}" }}\n'


@pytest.fixture(scope="module")
def lab() -> Iterator[Scenario]:
    scenario = counting_lab(AGENT_CONFIG)
    try:
        host = scenario.lab.hosts["h1"]
        host.run(["ip", "link", "add", "eng0", "type", "veth", "peer", "name", "engpeer"])
        for name in ("eng0", "engpeer"):
            host.run(["ip", "link", "set", name, "up"])
        yield scenario
    finally:
        scenario.close()


def _egress(lab: Scenario) -> tuple[int, int]:
    report = lab.agents["h1"].metering().GetUsage(metering_pb2.GetUsageRequest(tenant_ids=["blue"]), timeout=10).report
    return report.tenants[0].egress.packets, report.tenants[0].egress.bytes


def test_the_agents_engine_counts_reach_the_metering_service(lab: Scenario) -> None:
    # A port that OVS does not carry (no binding: it stays PENDING for OVS): its traffic enters
    # the host on eng0, which the engine meters.
    lab.agents["h1"].network().PutPorts(network_pb2.PutPortsRequest(request_id=lab.request_id(), ports=[
        network_pb2.Port(id=ENGINE_PORT, tenant_id="blue", network_id="net-blue", mac=ENGINE_MAC,
                         fixed_ips=["198.51.100.99"], port_security_enabled=False)]), timeout=10)  # fmt: skip
    remote = tenant_vm(lab, "blue", "h2").vm  # an L2 entry on h1: the engine encapsulates to h2
    before = _egress(lab)
    frame = packets.ip_frame(remote.mac, ENGINE_MAC, "198.51.100.99", remote.ip.split("/")[0], 17, 4000, 5000, pad_to=100)
    host = lab.lab.hosts["h1"]
    log = lab.agents["h1"].log_path
    wait_for(lambda: "engine.ring_opened" in log.read_text(), timeout=30, what="the engine's ring on eng0")
    with TxRing("engpeer", netns=host.ns.name) as tx:
        tx.send(Frames.of([frame] * 250))
    wait_for(lambda: _egress(lab) == (before[0] + 250, before[1] + 250 * 100), timeout=15, what="the engine's counts")
    time.sleep(1)
    assert _egress(lab) == (before[0] + 250, before[1] + 250 * 100)
