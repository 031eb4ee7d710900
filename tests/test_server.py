"""The agent's gRPC edge and Node service, proved against a real server: a real port on
127.0.0.1, real certificates made by agent/pki.py, a real store on disk, real TLS handshakes.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from structlog.testing import capture_logs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from agent import pki
from agent.config import LOCAL, NODE, ConfigError, ServerConfig, TlsFiles
from agent.network.specs import Host
from agent.server import AgentServer, start
from agent.store import FILENAME, Put, Store
from andromede.v1 import (
    common_pb2,
    compute_pb2,
    compute_pb2_grpc,
    events_pb2,
    network_pb2,
    network_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)

pytestmark = pytest.mark.integration

TIMEOUT = 10  # seconds, for every call that should answer at once


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pki.LabPki:
    return pki.lab_pki(
        tmp_path_factory.mktemp("pki"), clients=("control-plane", "operator", "intruder")
    )


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> pki.LabPki:
    """Another CA, whose "control-plane" certificate the agent must not trust."""
    return pki.lab_pki(tmp_path_factory.mktemp("foreign-pki"), clients=("control-plane",))


@dataclass
class Agent:
    store: Store
    port: int
    certs: pki.LabPki
    channels: list[grpc.Channel]
    server: AgentServer

    def channel(
        self, identity: str | None = "control-plane", ca: pki.LabPki | None = None
    ) -> grpc.Channel:
        """A mutual-TLS channel as `identity` (None: no client certificate), with a
        certificate from `ca`'s PKI (default: the agent's own)."""
        root = self.certs.ca.cert.read_bytes()
        if identity is None:
            creds = grpc.ssl_channel_credentials(root_certificates=root)
        else:
            cert, key = (ca or self.certs).clients[identity].read()
            creds = grpc.ssl_channel_credentials(root, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(f"127.0.0.1:{self.port}", creds)
        self.channels.append(channel)
        return channel

    def node(self, identity: str = "control-plane") -> node_pb2_grpc.NodeStub:
        return node_pb2_grpc.NodeStub(self.channel(identity))


def started(
    tmp_path: Path,
    certs: pki.LabPki,
    store: Store,
    *,
    reconciled_kinds: frozenset[str] = frozenset(),
    host: Host = Host(),
    **settings: object,
) -> Agent:
    """A serving agent on a free port of 127.0.0.1; `settings` are ServerConfig's."""
    tls = TlsFiles(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
    server = start(ServerConfig(listen=("127.0.0.1:0",), tls=tls, **settings), store,
                   reconciled_kinds=reconciled_kinds, host=host)  # fmt: skip
    server.set_serving()  # the daemon does this after its first reconcile pass
    return Agent(store, server.ports["127.0.0.1:0"], certs, [], server)


def stopped(agent: Agent) -> None:
    for channel in agent.channels:
        channel.close()
    agent.server.stop(grace=None)


@pytest.fixture
def agent(tmp_path: Path, certs: pki.LabPki) -> Iterator[Agent]:
    with Store(tmp_path / FILENAME) as store:
        running = started(tmp_path, certs, store)
        try:
            yield running
        finally:
            stopped(running)


def maintenance(
    request_id: str, enabled: bool = True, reason: str = "disk swap"
) -> node_pb2.SetMaintenanceRequest:
    return node_pb2.SetMaintenanceRequest(request_id=request_id, enabled=enabled, reason=reason)


def code_and_details(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def error_of(method: Callable[..., object], request: object) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a unary call that must fail."""
    return code_and_details(lambda: method(request, timeout=TIMEOUT))


INFO = node_pb2.GetNodeInfoRequest()


# --- the door --------------------------------------------------------------------------------


def test_health_is_not_serving_until_the_daemon_says_so(tmp_path: Path, certs: pki.LabPki) -> None:
    tls = TlsFiles(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
    with Store(tmp_path / FILENAME) as store:
        server = start(ServerConfig(listen=("127.0.0.1:0",), tls=tls), store)
        running = Agent(store, server.ports["127.0.0.1:0"], certs, [], server)
        try:
            health = health_pb2_grpc.HealthStub(running.channel("operator"))
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            answer = health.Check(health_pb2.HealthCheckRequest(service=NODE), timeout=TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            server.set_serving()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
        finally:
            for channel in running.channels:
                channel.close()
            server.stop(grace=None)


def test_health_is_serving_over_mutual_tls(agent: Agent) -> None:
    health = health_pb2_grpc.HealthStub(agent.channel("operator"))
    for service in ("", "andromede.v1.Node"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_client_without_certificate_fails_the_handshake(agent: Agent) -> None:
    health = health_pb2_grpc.HealthStub(agent.channel(None))
    code, _ = error_of(health.Check, health_pb2.HealthCheckRequest())
    assert code == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_fails_the_handshake(agent: Agent, foreign: pki.LabPki) -> None:
    node = node_pb2_grpc.NodeStub(agent.channel("control-plane", ca=foreign))
    code, _ = error_of(node.GetNodeInfo, INFO)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_server_certificate_cannot_act_as_a_client(agent: Agent) -> None:
    """Its extended key usage is serverAuth only: the handshake fails."""
    cert, key = agent.certs.server.read()
    creds = grpc.ssl_channel_credentials(
        agent.certs.ca.cert.read_bytes(), private_key=key, certificate_chain=cert
    )
    with grpc.secure_channel(f"127.0.0.1:{agent.port}", creds) as channel:
        node = node_pb2_grpc.NodeStub(channel)
        code, _ = error_of(node.GetNodeInfo, INFO)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_lab_keys_are_private_and_certificates_public(certs: pki.LabPki) -> None:
    for files in (certs.ca, certs.server, *certs.clients.values()):
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644


def test_second_server_on_the_same_port_fails_loudly(agent: Agent, tmp_path: Path) -> None:
    tls = TlsFiles(agent.certs.server.cert, agent.certs.server.key, agent.certs.ca.cert)
    address = f"127.0.0.1:{agent.port}"
    with pytest.raises(ConfigError, match=rf"^server\.listen\[0\]: cannot listen on '{address}'"):
        start(ServerConfig(listen=(address,), tls=tls), agent.store)


def test_unusable_tls_files_fail_the_start_naming_their_key(
    agent: Agent, tmp_path: Path
) -> None:
    certs = agent.certs
    missing = tmp_path / "missing.pem"
    cases = [
        (TlsFiles(missing, certs.server.key, certs.ca.cert), "server.tls.cert", "cannot read"),
        (TlsFiles(certs.server.cert, certs.server.cert, certs.ca.cert), "server.tls.key", "is not"),
        (TlsFiles(certs.server.cert, certs.ca.key, certs.ca.cert), "server.tls.key",
         "is not the key of the certificate"),
        (TlsFiles(certs.server.cert, certs.server.key, certs.server.key), "server.tls.ca",
         "holds no PEM certificate"),
    ]  # fmt: skip
    for tls, key, message in cases:
        with pytest.raises(ConfigError) as e:
            start(ServerConfig(listen=("127.0.0.1:0",), tls=tls), agent.store)
        assert e.value.key == key and message in e.value.message


def test_identity_not_on_the_allow_list_is_denied_but_may_check_health(agent: Agent) -> None:
    code, details = error_of(agent.node("intruder").GetNodeInfo, INFO)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'intruder'" in details and "andromede.v1.Node" in details
    health = health_pb2_grpc.HealthStub(agent.channel("intruder"))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_operator_may_read_node_but_not_compute(agent: Agent) -> None:
    agent.node("operator").GetNodeInfo(INFO, timeout=TIMEOUT)
    compute = compute_pb2_grpc.ComputeStub(agent.channel("operator"))
    code, details = error_of(compute.ListVms, compute_pb2.ListVmsRequest())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'operator'" in details and "andromede.v1.Compute" in details


def test_plaintext_tcp_listener_is_refused() -> None:
    refused = r"^server\.listen\[0\]: plaintext TCP listener '127.0.0.1:0' refused"
    with pytest.raises(ConfigError, match=refused):
        ServerConfig(listen=("127.0.0.1:0",))
    with pytest.raises(ConfigError, match=r"listen\[0\]: plaintext TCP listener"):
        ServerConfig(listen=("127.0.0.1:0",), insecure_unix=True)
    with pytest.raises(ConfigError, match=r"listen\[0\]: 'unix:/run/x.sock' needs TLS files"):
        ServerConfig(listen=("unix:/run/x.sock",))
    unknown = r"server\.allow\.'andromede\.v1\.Nodes': unknown service"
    with pytest.raises(ConfigError, match=unknown):
        ServerConfig(
            listen=("unix:/run/x.sock",), insecure_unix=True, allow={"andromede.v1.Nodes": ("x",)}
        )


def test_plaintext_unix_socket_works_with_insecure_unix(tmp_path: Path) -> None:
    store = Store(tmp_path / FILENAME)
    path = tmp_path / "agent.sock"
    server = start(ServerConfig(listen=(f"unix:{path}",), insecure_unix=True), store)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with grpc.insecure_channel(f"unix:{path}") as channel:
            node = node_pb2_grpc.NodeStub(channel)
            with capture_logs() as logs:
                info = node.GetNodeInfo(INFO, timeout=TIMEOUT).info
            assert info.store_id == store.store_id()
            line = next(e for e in logs if e["event"] == "rpc.handled")
            assert line["identity"] == LOCAL
            compute = compute_pb2_grpc.ComputeStub(channel)
            code, _ = error_of(compute.ListVms, compute_pb2.ListVmsRequest())
            assert code == grpc.StatusCode.PERMISSION_DENIED  # LOCAL is on Node's list only
    finally:
        server.stop(grace=None)
        store.close()


def test_messages_over_the_size_limit_are_refused(agent: Agent) -> None:
    big = maintenance("r-big", reason="x" * (5 * 1024 * 1024))
    code, _ = error_of(agent.node().SetMaintenance, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert agent.store.generation() == 0


def test_a_message_limit_below_grpcs_default_is_enforced(tmp_path: Path, certs: pki.LabPki) -> None:
    tls = TlsFiles(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
    with Store(tmp_path / FILENAME) as store:
        config = ServerConfig(listen=("127.0.0.1:0",), tls=tls, max_message_bytes=64 * 1024)
        server = start(config, store)
        running = Agent(store, server.ports["127.0.0.1:0"], certs, [], server)
        try:
            node = running.node()
            # WatchEvents' request is small; pad a field that is read before validation fails.
            over = events_pb2.WatchEventsRequest(object_ids=["x" * 100] * 700)  # ~72 KiB
            code, _ = code_and_details(lambda: next(node.WatchEvents(over, timeout=TIMEOUT)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            under = events_pb2.WatchEventsRequest(object_ids=["x" * 100] * 500)  # ~51 KiB
            stream = node.WatchEvents(under, timeout=TIMEOUT)
            next(stream)  # accepted: the first (empty) response arrives
            stream.cancel()
        finally:
            for channel in running.channels:
                channel.close()
            server.stop(grace=None)


def test_reflection_lists_the_api(agent: Agent) -> None:
    services = set(ProtoReflectionDescriptorDatabase(agent.channel("intruder")).get_services())
    assert {
        "andromede.v1.Node",
        "andromede.v1.Compute",
        "andromede.v1.Network",
        "andromede.v1.Metering",
        "grpc.health.v1.Health",
    } <= services


def test_services_off_on_this_host_say_which_setting_turns_them_on(agent: Agent) -> None:
    compute = compute_pb2_grpc.ComputeStub(agent.channel())
    code, details = error_of(compute.PutVms, compute_pb2.PutVmsRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert details == ("andromede.v1.Compute.PutVms: Compute is off on this host: set [qemu] "
                       "images_dir in the agent's config")  # fmt: skip
    network = network_pb2_grpc.NetworkStub(agent.channel())
    code, details = error_of(network.ListPorts, network_pb2.ListPortsRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED and "[ovs] tunnel_ip" in details


def test_every_call_writes_one_access_log_line(agent: Agent) -> None:
    node = agent.node()
    with capture_logs() as logs:
        node.SetMaintenance(maintenance("r-log"), timeout=TIMEOUT)
        error_of(agent.node("intruder").GetNodeInfo, INFO)
    lines = [e for e in logs if e["event"] == "rpc.handled"]
    assert len(lines) == 2
    ok, denied = lines
    assert ok["method"] == "/andromede.v1.Node/SetMaintenance"
    assert (ok["identity"], ok["request_id"], ok["code"], ok["log_level"]) == (
        "control-plane", "r-log", "OK", "info"
    )
    assert isinstance(ok["ms"], float) and 0 <= ok["ms"] < 10_000
    assert ok["peer"].startswith("ipv4:127.0.0.1:")
    assert (denied["identity"], denied["code"], denied["log_level"]) == (
        "intruder", "PERMISSION_DENIED", "warning"
    )
    assert "request_id" not in denied


# --- Node: reads -------------------------------------------------------------------------------


def test_node_info_describes_this_host(agent: Agent) -> None:
    agent.node().SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
    info = agent.node().GetNodeInfo(INFO, timeout=TIMEOUT).info
    assert info.hostname == socket.gethostname()
    assert info.agent_version == importlib.metadata.version("andromede")
    assert list(info.api_versions) == ["v1"]
    assert info.store_id == agent.store.store_id()
    assert (info.desired_generation, info.applied_generation) == (1, 0)
    assert abs(info.started_at.seconds - time.time()) < 60
    assert info.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    caps = info.capabilities
    assert caps.datapath_type == node_pb2.DATAPATH_TYPE_NETDEV
    assert not caps.kvm_usable and "not probed with a guest" in caps.kvm_detail  # compute off
    if shutil.which("ovs-vswitchd"):
        version = subprocess.run(
            ["ovs-vswitchd", "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert caps.ovs_version and caps.ovs_version in version
    assert (info.maintenance.enabled, info.maintenance.reason) == (True, "disk swap")
    kinds = {c.kind for c in info.resource_counts}
    assert common_pb2.RESOURCE_KIND_VM in kinds and common_pb2.RESOURCE_KIND_NODE not in kinds


def test_inventory_matches_what_the_kernel_says(agent: Agent) -> None:
    inv = agent.node().GetInventory(node_pb2.GetInventoryRequest(), timeout=TIMEOUT).inventory
    assert inv.cpu.logical_cpus == psutil.cpu_count()
    assert 1 <= inv.cpu.physical_cores <= inv.cpu.logical_cpus and inv.cpu.sockets >= 1
    assert list(inv.cpu.flags) == sorted(inv.cpu.flags)
    assert inv.memory.total_bytes == psutil.virtual_memory().total
    assert 0 < inv.memory.available_bytes <= inv.memory.total_bytes
    assert inv.numa_nodes and [n.id for n in inv.numa_nodes] == sorted(n.id for n in inv.numa_nodes)
    cpus = sorted(c for n in inv.numa_nodes for c in n.cpus)
    assert len(cpus) >= inv.cpu.logical_cpus
    assert sum(n.memory_total_bytes for n in inv.numa_nodes) <= inv.memory.total_bytes * 1.01
    sizes = [h.page_size_bytes for h in inv.hugepages]
    assert sizes == sorted(sizes) and all(h.free_pages <= h.total_pages for h in inv.hugepages)
    storage = [d for d in inv.disks if d.holds_vm_storage]
    assert len(storage) == 1
    assert os.stat(storage[0].mountpoint).st_dev == os.stat(agent.store.path.parent).st_dev
    assert storage[0].total_bytes >= storage[0].free_bytes > 0
    assert inv.load.load1 >= 0 and inv.load.load15 >= 0
    assert abs(inv.collected_at.seconds - time.time()) < 60
    assert inv.boot_time.seconds == int(psutil.boot_time())
    assert inv.allocated.vms == 0


# --- Node: SetMaintenance ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (maintenance(""), "request_id"),
        (maintenance("r" * 129), "request_id"),
        (maintenance("-starts-with-a-dash"), "request_id"),
        (maintenance("has space"), "request_id"),
        (maintenance("r-2", reason="x" * 1025), "reason"),
        (maintenance("r-3", reason="bell\x07"), "reason"),
    ],
)
def test_bad_maintenance_request_names_the_field_and_changes_nothing(
    agent: Agent, request_: node_pb2.SetMaintenanceRequest, field: str
) -> None:
    code, details = error_of(agent.node().SetMaintenance, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")
    assert agent.store.generation() == 0 and agent.store.last_cursor() == 0
    assert agent.store.get("node", "maintenance") is None


def test_replayed_maintenance_request_returns_the_first_answer_and_changes_nothing(
    agent: Agent,
) -> None:
    node = agent.node()
    first = node.SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
    assert first.generation == 1 and first.maintenance.enabled
    node.SetMaintenance(maintenance("r-2", enabled=False), timeout=TIMEOUT)  # generation 2
    cursor = agent.store.last_cursor()
    again = node.SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
    # The first answer, byte for byte (the mode as r-1 left it, and when), not today's mode.
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(
        deterministic=True
    )
    assert again.maintenance.since.ToNanoseconds() > 0
    assert agent.store.generation() == 2 and agent.store.last_cursor() == cursor
    info = node.GetNodeInfo(INFO, timeout=TIMEOUT).info
    assert not info.maintenance.enabled


def test_reused_request_id_with_another_payload_is_already_exists(agent: Agent) -> None:
    node = agent.node()
    node.SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
    code, details = error_of(node.SetMaintenance, maintenance("r-1", reason="something else"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and details.startswith("request_id: ")
    assert agent.store.generation() == 1
    info = node.GetNodeInfo(INFO, timeout=TIMEOUT).info
    assert info.maintenance.reason == "disk swap"


# --- Node: WatchEvents -------------------------------------------------------------------------


def test_watch_events_resumes_from_a_cursor_after_a_disconnect(agent: Agent) -> None:
    node = agent.node()
    stream = node.WatchEvents(events_pb2.WatchEventsRequest(), timeout=TIMEOUT)
    start = next(stream)  # the stream is up: nothing before this point will be sent
    assert not start.events and start.cursor
    accepted = node.SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
    got = next(stream)
    [event] = got.events
    assert (event.type, event.kind, event.object_id) == (
        events_pb2.EVENT_TYPE_CREATED, common_pb2.RESOURCE_KIND_NODE, ""
    )
    assert event.generation == accepted.generation and event.state == common_pb2.APPLY_STATE_PENDING
    stream.cancel()  # the disconnect

    node.SetMaintenance(maintenance("r-2", enabled=False), timeout=TIMEOUT)
    resumed = node.WatchEvents(events_pb2.WatchEventsRequest(cursor=got.cursor), timeout=TIMEOUT)
    [newer] = next(resumed).events
    assert (newer.type, newer.generation) == (events_pb2.EVENT_TYPE_UPDATED, 2)
    assert newer.sequence > event.sequence
    resumed.cancel()

    replay = node.WatchEvents(events_pb2.WatchEventsRequest(cursor=start.cursor), timeout=TIMEOUT)
    assert [e.generation for e in next(replay).events] == [1, 2]
    replay.cancel()


def test_watch_events_filters_by_kind_and_moves_the_cursor_with_heartbeats(agent: Agent) -> None:
    node = agent.node()
    request = events_pb2.WatchEventsRequest(
        kinds=[common_pb2.RESOURCE_KIND_VM], heartbeat_interval_s=1
    )
    stream = node.WatchEvents(request, timeout=TIMEOUT)
    first = next(stream)
    node.SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
    beat = next(stream)  # a heartbeat, about a second later, past the filtered-out event
    assert not beat.events and beat.cursor != first.cursor
    stream.cancel()


def test_watch_events_refuses_bad_and_foreign_cursors(agent: Agent) -> None:
    node = agent.node()

    def watch(**fields: object) -> tuple[grpc.StatusCode, str]:
        request = events_pb2.WatchEventsRequest(**fields)
        return code_and_details(lambda: next(node.WatchEvents(request, timeout=TIMEOUT)))

    code, details = watch(cursor="not-a-cursor")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("cursor: ")
    code, details = watch(cursor="v1:" + "0" * 32 + ":0")
    assert code == grpc.StatusCode.OUT_OF_RANGE and details.startswith("cursor: ")
    code, details = watch(cursor=f"v1:{agent.store.store_id()}:99")
    assert code == grpc.StatusCode.OUT_OF_RANGE and details.startswith("cursor: ")
    code, details = watch(heartbeat_interval_s=301)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("heartbeat_interval_s: ")
    code, details = watch(kinds=[0])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("kinds[0]: ")
    code, details = watch(object_ids=["ok", "not ok"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("object_ids[1]: ")
    code, details = watch(object_ids=["ok", ""])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("object_ids[1]: ")
    code, details = watch(from_oldest=True, cursor=f"v1:{agent.store.store_id()}:0")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("from_oldest: ")


def test_watch_events_from_oldest_starts_with_the_oldest_kept_event(tmp_path: Path) -> None:
    """However many old events were trimmed: no cursor to forge, no OUT_OF_RANGE."""
    store = Store(tmp_path / FILENAME, event_retention=10)
    for i in range(40):
        store.put("vm", f"vm-{i}", b"spec", f"r-{i}")
    assert store.oldest_cursor() > 0  # events were trimmed
    kept = [e.cursor for e in store.events_since(store.oldest_cursor())]
    path = tmp_path / "agent.sock"
    server = start(ServerConfig(listen=(f"unix:{path}",), insecure_unix=True), store)
    try:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            node = node_pb2_grpc.NodeStub(channel)
            request = events_pb2.WatchEventsRequest(from_oldest=True)
            stream = node.WatchEvents(request, timeout=TIMEOUT)
            events = next(stream).events
            stream.cancel()
    finally:
        server.stop(grace=None)
        store.close()
    assert [e.sequence for e in events] == kept
    assert events[-1].object_id == "vm-39"


def test_watch_events_stops_at_the_deadline(agent: Agent) -> None:
    node = agent.node()
    with capture_logs() as logs:
        stream = node.WatchEvents(events_pb2.WatchEventsRequest(), timeout=0.5)
        next(stream)
        code, _ = code_and_details(lambda: next(stream))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(
            e["event"] == "rpc.handled" and e["method"].endswith("/WatchEvents") for e in logs
        ):
            time.sleep(0.05)
    [line] = [e for e in logs if e["event"] == "rpc.handled"]
    assert line["code"] in ("DEADLINE_EXCEEDED", "CANCELLED") and line["ms"] < 3_000
    # The stream's worker thread is free again: the server still answers.
    node.GetNodeInfo(INFO, timeout=TIMEOUT)


# --- streams cannot starve the server; deadlines; storage errors ---------------------------------


def test_256_open_health_watches_from_one_client_cannot_starve_unary_calls(agent: Agent) -> None:
    flooder = health_pb2_grpc.HealthStub(agent.channel("intruder"))  # any identity may watch
    watches, refused, held = [], 0, 0
    for _ in range(256):
        watch = flooder.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        watches.append(watch)
    try:
        for watch in watches:
            try:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                held += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                assert "max_streams_per_identity" in e.details()
                refused += 1
        assert (held, refused) == (4, 252)  # the default per-identity cap
        # Another client's unary calls still answer within their deadline (before the caps,
        # 32 watches made them DEADLINE_EXCEEDED), and it can open streams of its own.
        node = agent.node("control-plane")
        for _ in range(20):
            node.GetNodeInfo(INFO, timeout=2)
        events = node.WatchEvents(events_pb2.WatchEventsRequest(), timeout=TIMEOUT)
        next(events)
        events.cancel()
    finally:
        for watch in watches:
            watch.cancel()


def test_streams_are_capped_in_total(tmp_path: Path, certs: pki.LabPki) -> None:
    with Store(tmp_path / FILENAME) as store:
        agent = started(tmp_path, certs, store, max_streams=3, max_streams_per_identity=2)
        streams = []
        try:
            for identity in ("control-plane", "control-plane", "operator"):
                stream = agent.node(identity).WatchEvents(events_pb2.WatchEventsRequest(),
                                                          timeout=TIMEOUT)  # fmt: skip
                next(stream)
                streams.append(stream)
            code, details = code_and_details(lambda: next(agent.node("operator").WatchEvents(
                events_pb2.WatchEventsRequest(), timeout=TIMEOUT)))  # fmt: skip
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "server.max_streams" in details
            streams.pop().cancel()  # a slot comes back when a stream ends
            deadline = time.monotonic() + 5
            while True:
                try:
                    next(agent.node("operator").WatchEvents(events_pb2.WatchEventsRequest(),
                                                            timeout=TIMEOUT))  # fmt: skip
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "the cancelled stream's slot never came back"
                    time.sleep(0.05)
        finally:
            for stream in streams:
                stream.cancel()
            stopped(agent)


def test_unary_calls_give_up_at_the_clients_deadline(agent: Agent) -> None:
    inside, release = threading.Event(), threading.Event()

    def hold(results):  # runs inside the store's transaction, holding its lock
        inside.set()
        release.wait(30)
        return b""

    holder = threading.Thread(
        target=lambda: agent.store.commit([Put("node", "x", b"")], "hold", reply=hold)
    )
    holder.start()
    try:
        assert inside.wait(5)
        node = agent.node()
        # More calls than the server has threads: each gives up its thread at its deadline.
        for _ in range(24):
            code, _ = error_of(lambda r, timeout: node.GetNodeInfo(r, timeout=0.3), INFO)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        health = health_pb2_grpc.HealthStub(agent.channel("operator"))
        health.Check(health_pb2.HealthCheckRequest(), timeout=2)  # threads are free
    finally:
        release.set()
        holder.join(10)
    node.GetNodeInfo(INFO, timeout=TIMEOUT)


@pytest.mark.integration
def test_a_full_disk_answers_resource_exhausted_and_changes_nothing(
    tmp_path: Path, certs: pki.LabPki
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700",
                    f"andromede-test-{os.getpid()}", str(disk)], check=True)  # fmt: skip
    try:
        with Store(disk / FILENAME) as store:
            agent = started(tmp_path, certs, store)
            try:
                node = agent.node()
                node.SetMaintenance(maintenance("r-1"), timeout=TIMEOUT)
                filler = disk / "filler"
                with filler.open("wb", buffering=0) as f:  # take every free byte
                    try:
                        while True:
                            f.write(b"\0" * 4096)
                    except OSError:
                        pass
                code, details = error_of(node.SetMaintenance, maintenance("r-2", enabled=False))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                assert "is full" in details and "free space" in details
                filler.unlink()
                assert node.GetNodeInfo(INFO, timeout=TIMEOUT).info.maintenance.enabled
                assert node.SetMaintenance(maintenance("r-2", enabled=False),
                                           timeout=TIMEOUT).generation == 2  # fmt: skip
            finally:
                stopped(agent)
        with closing(sqlite3.connect(disk / FILENAME)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
