"""The agent's Prometheus endpoint, scraped for real: a real `python -m agent.main` process over a
simulated host's real Open vSwitch, real gRPC calls over mutual TLS, real HTTPS scrapes with
urllib; and the endpoint alone in this process (a real store, real certificates, real sockets),
where the usage ledger's rows come from a small fake function: the one input faked here, since
the ledger is not wired into the daemon yet.

Every process a test starts is killed by its pid in the fixtures' cleanup (Agents, Lab); every
endpoint started here is stopped in a `finally`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import config, metrics, pki
from agent.config import ConfigError, MetricsConfig, TlsFiles
from agent.metrics import AgentMetrics, MetricsServer
from agent.network.ovs import WATCH_INTERVAL_S
from agent.reconcile import Engine, MaintenanceReconciler, PassSummary
from agent.store import FILENAME, Store
from andromede.v1 import network_pb2, network_pb2_grpc, node_pb2, node_pb2_grpc
from tests.test_agent_daemon import Agents, agents  # noqa: F401  (agents: the fixture)
from tests.test_ovs_lab import lab  # noqa: F401  (the fixture: a lab torn down and checked)
from tests.test_server import certs, foreign  # noqa: F401  (module-scoped PKIs)

TIMEOUT = 10  # seconds, for every call and scrape that should answer at once
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- scraping ----------------------------------------------------------------------------------


def tls_context(pki_files: pki.LabPki, identity: str | None) -> ssl.SSLContext:
    """A client context trusting the agent's CA, with `identity`'s certificate (None: none)."""
    context = ssl.create_default_context(cafile=str(pki_files.ca.cert))
    if identity is not None:
        files = pki_files.clients[identity]
        context.load_cert_chain(files.cert, files.key)
    return context


def scrape(url: str, context: ssl.SSLContext | None = None) -> Samples:
    """GET `url`; every sample, by name and labels."""
    with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no {name}{labels}; the scrape has {sorted({k[0] for k in samples})}"
    return samples[key]


def eventually(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --- the daemon --------------------------------------------------------------------------------


def metrics_address(agents: Agents) -> str:
    """Where the last agent's endpoint listens, from its log (the lab asks for a free port)."""
    found: list[str] = []

    def logged() -> bool:
        for line in agents.logs[-1].read_text().splitlines():
            if line.startswith("{") and json.loads(line)["event"] == "metrics.started":
                found.append(json.loads(line)["listen"])
        return bool(found)

    eventually(logged, "the agent's metrics.started log line")
    return found[0]


@pytest.mark.integration
def test_a_scrape_of_the_agent_shows_its_calls_passes_ovs_restarts_and_lag_over_mutual_tls(
    agents: Agents, lab  # noqa: F811
) -> None:
    host = lab.add_host("h1")
    # The lab's agent config, with this host's Open vSwitch and the endpoint on HTTPS.
    lab_pki = pki.lab_pki(agents.lab / "pki", hostnames=["localhost"], ips=["127.0.0.1"])
    (agents.lab / "state").mkdir(mode=0o700)
    q = json.dumps
    unix = "unix:" + str(agents.lab / "agent.sock")
    (agents.lab / config.LAB_CONFIG).write_text(
        "[server]\n"
        f"listen = [{q(f'127.0.0.1:{agents.port}')}, {q(unix)}]\n"
        "insecure_unix = true\n"
        "[server.tls]\n"
        f"cert = {q(str(lab_pki.server.cert))}\nkey = {q(str(lab_pki.server.key))}\n"
        f"ca = {q(str(lab_pki.ca.cert))}\n"
        f"[state]\ndir = {q(str(agents.lab / 'state'))}\n"
        f"[ovs]\nrundir = {q(str(host.rundir))}\ntunnel_ip = {q(host.underlay_ip)}\n"
        '[metrics]\nlisten = "127.0.0.1:0"\ntls = true\n'
    )  # fmt: skip
    proc = agents.start()
    agents.messages("READY=1")
    url = f"https://{metrics_address(agents)}/metrics"
    operator = tls_context(lab_pki, "operator")

    def channel(identity: str) -> grpc.Channel:
        cert, key = lab_pki.clients[identity].read()
        creds = grpc.ssl_channel_credentials(lab_pki.ca.cert.read_bytes(), key, cert)
        return grpc.secure_channel(f"127.0.0.1:{agents.port}", creds)

    with channel("control-plane") as control, channel("operator") as other:
        node = node_pb2_grpc.NodeStub(control)
        accepted = node.SetMaintenance(
            node_pb2.SetMaintenanceRequest(request_id="m-1", enabled=True, reason="metrics"),
            timeout=TIMEOUT,
        ).generation
        infos = 0

        def applied() -> bool:
            nonlocal infos
            infos += 1
            info = node.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=TIMEOUT).info
            return info.applied_generation >= accepted

        eventually(applied, "the maintenance object applied")
        with pytest.raises(grpc.RpcError) as denied:  # operator may not call Network
            network_pb2_grpc.NetworkStub(other).ListNetworks(network_pb2.ListNetworksRequest(),
                                                             timeout=TIMEOUT)  # fmt: skip
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    before = scrape(url, operator)
    rpc = "andromede_rpc_duration_seconds_count"
    assert value(before, rpc, method="/andromede.v1.Node/GetNodeInfo", code="OK") == infos
    assert value(before, rpc, method="/andromede.v1.Node/SetMaintenance", code="OK") == 1
    assert value(before, rpc, method="/andromede.v1.Network/ListNetworks",
                 code="PERMISSION_DENIED") == 1  # fmt: skip
    assert value(before, "andromede_rpc_duration_seconds_bucket", le="+Inf",
                 method="/andromede.v1.Node/GetNodeInfo", code="OK") == infos  # fmt: skip
    assert value(before, "andromede_reconcile_pass_seconds_count") >= 2  # the first, and m-1's
    network_passes = value(before, "andromede_reconciler_pass_seconds_count", reconciler="network")
    assert network_passes >= 2
    assert value(before, "andromede_reconciler_pass_seconds_count", reconciler="maintenance") >= 2
    assert value(before, "andromede_ovs_restarts_total") == 0
    desired = value(before, "andromede_generation_desired")
    assert desired == accepted
    assert value(before, "andromede_generation_applied") == desired
    assert value(before, "andromede_generation_lag") == 0

    # ovs-vswitchd dies and comes back: the watch counts it, and its kick brings a network pass.
    # (The watch counts only a canary it saw before it went: let it poll a few times first.)
    time.sleep(3 * WATCH_INTERVAL_S)
    host.stop_vswitchd(signal.SIGKILL)
    host.start_vswitchd()
    eventually(lambda: value(scrape(url, operator), "andromede_ovs_restarts_total") == 1,
               "andromede_ovs_restarts_total at 1 after kill -9 of ovs-vswitchd")  # fmt: skip
    eventually(lambda: value(scrape(url, operator), "andromede_reconciler_pass_seconds_count",
                             reconciler="network") > network_passes,
               "a network pass after the restart (the watch's kick)")  # fmt: skip

    # The endpoint wants a client certificate from the agent's CA, over TLS only.
    with pytest.raises(OSError):
        scrape(url, tls_context(lab_pki, None))
    with pytest.raises((OSError, http.client.HTTPException)):
        scrape(url.replace("https:", "http:"))

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert refused(port), "the metrics port is still open after the agent exited"


# --- the endpoint alone ------------------------------------------------------------------------


def fake_usage() -> list[metrics.UsageRow]:
    """Two tenants, as the usage ledger will give them: (tenant, direction, packets, bytes,
    meter-dropped packets, meter-dropped bytes)."""
    return [
        ("blue", "egress", 10, 1500, 2, 300),
        ("blue", "ingress", 7, 900, 0, 0),
        ("red", "egress", 1, 64, 0, 0),
    ]


def endpoint_threads() -> list[threading.Thread]:
    """The endpoint's threads in this process: its accept loop and its request threads."""
    return [t for t in threading.enumerate()
            if t.name == "metrics" or "process_request_thread" in t.name]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / FILENAME) as s:
        yield s


def serving(agent_metrics: AgentMetrics, listen: str = "127.0.0.1:0", *,
            tls: TlsFiles | None = None) -> MetricsServer:  # fmt: skip
    started = metrics.serve(MetricsConfig(listen, tls=tls is not None), agent_metrics.registry, tls)
    assert started is not None
    return started


def test_usage_is_served_per_tenant_and_direction_beside_the_generations(store: Store) -> None:
    agent_metrics = AgentMetrics()
    agent_metrics.collect_store(store)
    agent_metrics.collect_usage(fake_usage)
    server = serving(agent_metrics)
    try:
        samples = scrape(f"http://{server.address}/metrics")
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            urllib.request.urlopen(f"http://{server.address}/", timeout=TIMEOUT)
        assert elsewhere.value.code == 404
    finally:
        server.stop()
    blue_out = {"tenant": "blue", "direction": "egress"}
    assert value(samples, "andromede_tenant_packets_total", **blue_out) == 10
    assert value(samples, "andromede_tenant_bytes_total", **blue_out) == 1500
    assert value(samples, "andromede_tenant_meter_dropped_packets_total", **blue_out) == 2
    assert value(samples, "andromede_tenant_meter_dropped_bytes_total", **blue_out) == 300
    assert value(samples, "andromede_tenant_bytes_total", tenant="blue", direction="ingress") == 900
    assert value(samples, "andromede_tenant_packets_total", tenant="red", direction="egress") == 1
    assert value(samples, "andromede_usage_up") == 1
    assert value(samples, "andromede_generation_desired") == 0
    assert value(samples, "andromede_generation_lag") == 0
    # Stopped means gone: no thread left, the port closed.
    assert endpoint_threads() == []
    assert refused(server.port)


def test_a_failing_usage_source_leaves_the_rest_of_the_scrape(store: Store) -> None:
    def broken() -> list[metrics.UsageRow]:
        raise RuntimeError("the ledger is not open")

    agent_metrics = AgentMetrics()
    agent_metrics.collect_store(store)
    agent_metrics.collect_usage(broken)
    server = serving(agent_metrics)
    try:
        samples = scrape(f"http://{server.address}/metrics")
    finally:
        server.stop()
    assert value(samples, "andromede_usage_up") == 0
    assert not any(name.startswith("andromede_tenant_") for name, _ in samples)
    assert value(samples, "andromede_generation_applied") == 0


def test_with_tls_only_a_client_certificate_of_the_agents_ca_gets_a_scrape(
    certs: pki.LabPki, foreign: pki.LabPki  # noqa: F811
) -> None:
    tls = TlsFiles(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
    agent_metrics = AgentMetrics()
    agent_metrics.collect_usage(fake_usage)
    server = serving(agent_metrics, tls=tls)
    url = f"https://{server.address}/metrics"
    try:
        # A client that connects and says nothing holds only its own thread.
        with socket.create_connection(("127.0.0.1", server.port)):
            started = time.monotonic()
            samples = scrape(url, tls_context(certs, "operator"))
            assert time.monotonic() - started < 2
        red_out = {"tenant": "red", "direction": "egress"}
        assert value(samples, "andromede_tenant_bytes_total", **red_out) == 64
        with pytest.raises(OSError):
            scrape(url, tls_context(certs, None))  # no client certificate
        foreign_cert = ssl.create_default_context(cafile=str(certs.ca.cert))
        foreign_cert.load_cert_chain(foreign.clients["control-plane"].cert,
                                     foreign.clients["control-plane"].key)  # fmt: skip
        with pytest.raises(OSError):
            scrape(url, foreign_cert)  # a certificate from another CA
    finally:
        server.stop()
    assert endpoint_threads() == []


def test_an_address_in_use_fails_the_start_naming_metrics_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"^metrics\.listen: cannot listen") as e:
            serving(AgentMetrics(), f"127.0.0.1:{port}")
    assert e.value.key == "metrics.listen"
    assert endpoint_threads() == []


def test_the_engine_reports_each_pass_and_a_failing_observer_stops_nothing(store: Store) -> None:
    heard: list[tuple[PassSummary, dict[str, float]]] = []
    engine = Engine(store, [MaintenanceReconciler()],
                    on_pass=lambda summary, seconds: heard.append((summary, dict(seconds))))
    engine.run_pass()
    assert [set(seconds) for _, seconds in heard] == [{"maintenance"}]
    assert heard[0][1]["maintenance"] >= 0 and heard[0][0].acked

    def broken(summary: PassSummary, seconds: object) -> None:
        raise RuntimeError("a bug in the observer")

    engine = Engine(store, [MaintenanceReconciler()], on_pass=broken)
    assert engine.run_pass().acked and engine.run_pass().acked


# --- the config --------------------------------------------------------------------------------

SERVER = {"listen": ["unix:/run/andromede/agent.sock"], "insecure_unix": True}
SERVER_TLS = {**SERVER, "tls": {"cert": "server.pem", "key": "server.key", "ca": "ca.pem"}}


def test_the_endpoint_is_on_loopback_in_plain_http_by_default_and_empty_turns_it_off() -> None:
    assert config.parse({"server": SERVER}).metrics == MetricsConfig("127.0.0.1:9464", tls=False)
    ipv6 = config.parse({"server": SERVER, "metrics": {"listen": "[::1]:9100"}}).metrics
    assert ipv6.address == ("::1", 9100)
    off = config.parse({"server": SERVER, "metrics": {"listen": ""}}).metrics
    assert metrics.serve(off, AgentMetrics().registry, None) is None
    anywhere = config.parse({"server": SERVER_TLS,
                             "metrics": {"listen": "0.0.0.0:9464", "tls": True}})  # fmt: skip
    assert anywhere.metrics.address == ("0.0.0.0", 9464)


@pytest.mark.parametrize(
    "table, key, message",
    [
        ({"listen": "9464"}, "metrics.listen", "must be 'ip:port'"),
        ({"listen": "127.0.0.1:99999"}, "metrics.listen", "must be 'ip:port'"),
        ({"listen": "127.0.0.1:http"}, "metrics.listen", "must be 'ip:port'"),
        ({"listen": "metrics.example:9464"}, "metrics.listen", "not a host name"),
        ({"listen": "::1:9464"}, "metrics.listen", "in brackets"),
        ({"listen": 9464}, "metrics.listen", "expected a string"),
        ({"tls": "yes"}, "metrics.tls", "expected true or false"),
        ({"port": 9464}, "", "unknown key 'metrics.port'"),
        ({"tls": True}, "metrics.tls", "set [server.tls] cert, key and ca"),
    ],
)
def test_bad_metrics_settings_name_their_key(table: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"server": SERVER, "metrics": table})
    assert e.value.key == key
    assert message in str(e.value)


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "198.18.0.1:9464", "[::]:9464"])
def test_plain_http_off_loopback_is_refused_saying_what_to_do(listen: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"server": SERVER_TLS, "metrics": {"listen": listen}})
    assert e.value.key == "metrics.listen"
    assert "not a loopback address" in e.value.message
    assert "set metrics.tls = true" in e.value.message
