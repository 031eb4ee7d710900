"""The Network service as a control plane meets it: a real server on 127.0.0.1 with mutual TLS
(tests/test_server.py's PKI), a real store on disk, calls through the generated stubs. No
reconciler runs here, so stored objects stay PENDING unless a test records a report."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from test_server import TIMEOUT, Agent, certs, started, stopped  # noqa: F401 (certs: a fixture)

from agent import pki
from agent.network.service import KINDS
from agent.network.specs import Host
from agent.store import FILENAME, Report, Status, Store
from andromede.v1 import common_pb2, network_pb2, network_pb2_grpc

pytestmark = pytest.mark.integration

NETWORK = network_pb2.DESCRIPTOR.services_by_name["Network"]
Stub = network_pb2_grpc.NetworkStub
ObjectErrors = list[tuple[int, str, int, str, str]]  # (index, id, code, field, message)
HOST = Host(max_network_mtu=8950, tunnel_ip=ipaddress.ip_address("192.0.2.1"))


def mac(n: int) -> str:
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big"))


@pytest.fixture
def agent(tmp_path: Path, certs: pki.LabPki) -> Iterator[Agent]:  # noqa: F811
    with Store(tmp_path / FILENAME) as store:
        running = started(tmp_path, certs, store, reconciled_kinds=KINDS, host=HOST)
        try:
            yield running
        finally:
            stopped(running)


@pytest.fixture
def net(agent: Agent) -> Stub:
    return network_pb2_grpc.NetworkStub(agent.channel())


def call(net: Stub, method: str, **fields: Any) -> Any:
    """One call, its request made of `fields`: call(net, "PutPorts", request_id=..., ports=...)."""
    request = GetMessageClass(NETWORK.methods_by_name[method].input_type)(**fields)
    return getattr(net, method)(request, timeout=TIMEOUT)


def failure(net: Stub, method: str, **fields: Any) -> tuple[grpc.StatusCode, str, ObjectErrors]:
    """A call that must fail: its code, its message and the ObjectErrors of its trailer."""
    with pytest.raises(grpc.RpcError) as caught:
        call(net, method, **fields)
    return caught.value.code(), caught.value.details(), object_errors(caught.value)


def object_errors(error: grpc.RpcError) -> ObjectErrors:
    """The ObjectErrors in `grpc-status-details-bin` ([] if the call has none)."""
    trailer = dict(error.trailing_metadata() or ())
    if "grpc-status-details-bin" not in trailer:
        return []
    status = common_pb2.Status.FromString(trailer["grpc-status-details-bin"])
    assert (status.code, status.message) == (error.code().value[0], error.details())
    [detail] = status.details
    errors = common_pb2.ObjectErrors()
    assert detail.Unpack(errors)
    return [(e.index, e.id, e.code, e.field, e.message) for e in errors.errors]


def network(id: str = "n1", vni: int = 100, **fields: Any) -> network_pb2.TenantNetwork:
    return network_pb2.TenantNetwork(id=id, tenant_id="t1", vni=vni, **fields)


def port(id: str, address: str, network_id: str = "n1", **fields: Any) -> network_pb2.Port:
    return network_pb2.Port(id=id, tenant_id="t1", network_id=network_id, mac=address, **fields)


def ssh_group(id: str = "g1", **fields: Any) -> network_pb2.SecurityGroup:
    """TCP 22 in from 203.0.113.0/24, unless `fields` has other rules."""
    rule = network_pb2.SecurityGroupRule(
        direction=common_pb2.DIRECTION_INGRESS, ethertype=network_pb2.ETHERTYPE_IPV4, protocol=6,
        port_range_min=22, port_range_max=22, remote_cidr="203.0.113.0/24",
    )  # fmt: skip
    return network_pb2.SecurityGroup(**{"id": id, "tenant_id": "t1", "rules": [rule], **fields})


def endpoint(id: str = "host-b", ip: str = "192.0.2.2") -> network_pb2.TunnelEndpoint:
    return network_pb2.TunnelEndpoint(id=id, ip=ip)


def base(net: Stub) -> None:
    """What ports and L2 entries need, put in network.proto's order."""
    call(net, "PutNetworks", request_id="base-n", networks=[network()])
    call(net, "PutSecurityGroups", request_id="base-g", security_groups=[ssh_group()])
    call(net, "PutTunnelEndpoints", request_id="base-e", tunnel_endpoints=[endpoint()])


def unchanged(agent: Agent) -> Callable[[], bool]:
    """A check that the store is as it is now: same generation, same newest event."""
    before = (agent.store.generation(), agent.store.last_cursor())
    return lambda: (agent.store.generation(), agent.store.last_cursor()) == before


# --- each kind: put, get, list, delete ---------------------------------------------------------

KINDS_AND_SPECS = [
    # (singular, plural, the store's kind = the Get response's field, the list field, a spec)
    ("Network", "Networks", "network", "networks", network("n2", 200, mtu=8950)),
    ("SecurityGroup", "SecurityGroups", "security_group", "security_groups",
     ssh_group("g2", stateful=False, member_ips=["2001:db8::7"])),
    ("TunnelEndpoint", "TunnelEndpoints", "tunnel_endpoint", "tunnel_endpoints",
     endpoint("host-c", "2001:db8::c")),
    ("Port", "Ports", "port", "ports",
     port("p1", mac(1), fixed_ips=["2001:db8::10"], security_group_ids=["g1"],
          tap=network_pb2.TapBinding(interface_name="tap-p1"))),
    ("L2Entry", "L2Entries", "l2_entry", "l2_entries",
     network_pb2.L2Entry(id="e1", network_id="n1", mac=mac(2), ip_addresses=["2001:db8::20"],
                         tunnel_endpoint_id="host-b")),
    ("RateLimit", "RateLimits", "rate_limit", "rate_limits",
     network_pb2.RateLimit(id="r1", tenant_id="t1", direction=common_pb2.DIRECTION_EGRESS,
                           cir_bytes_per_s=125_000, cbs_bytes=1518)),
]  # fmt: skip


@pytest.mark.parametrize(("singular", "plural", "kind", "items", "spec"), KINDS_AND_SPECS,
                         ids=[k[0] for k in KINDS_AND_SPECS])  # fmt: skip
def test_each_kind_is_put_got_listed_and_deleted(
    agent: Agent, net: Stub, singular: str, plural: str, kind: str, items: str, spec: Any
) -> None:
    base(net)
    put = call(net, f"Put{plural}", request_id="put-1", **{items: [spec]})
    generation = agent.store.generation()
    assert (put.generation, [(r.id, r.generation, r.changed) for r in put.results]) == (
        generation, [(spec.id, generation, True)]
    )
    record = getattr(call(net, f"Get{singular}", id=spec.id), kind)
    assert record.spec == spec  # as put: defaults are not filled in
    assert (record.meta.generation, record.meta.request_id) == (generation, "put-1")
    assert record.meta.created_at == record.meta.updated_at and record.meta.created_at.seconds > 0
    assert (record.status.state, record.status.applied_generation, record.status.attempts) == (
        common_pb2.APPLY_STATE_PENDING, 0, 0
    )
    listed = call(net, f"List{plural}")
    assert [r.spec.id for r in getattr(listed, items)][-1:] == [spec.id]
    assert listed.next_page_token == ""
    assert listed.cursor == f"v1:{agent.store.store_id()}:{agent.store.last_cursor()}"
    # A put of the same spec changes nothing and answers the object's generation.
    again = call(net, f"Put{plural}", request_id="put-2", **{items: [spec]})
    assert [(r.generation, r.changed) for r in again.results] == [(generation, False)]
    deleted = call(net, f"Delete{plural}", request_id="del-1", ids=[spec.id])
    assert [(r.id, r.generation, r.changed) for r in deleted.results] == [
        (spec.id, generation + 1, True)
    ]
    code, message, _ = failure(net, f"Get{singular}", id=spec.id)
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"id: no {kind} with id '{spec.id}'")


def test_status_shows_what_the_reconciler_recorded(agent: Agent, net: Stub) -> None:
    call(net, "PutNetworks", request_id="r1", networks=[network(), network("n2", 200)])
    agent.store.record([
        Report("network", "n1", 1, Status.APPLIED),
        Report("network", "n2", 2, Status.FAILED, "OVS is down", code=14),
    ])
    n1, n2 = call(net, "ListNetworks").networks
    assert (n1.status.state, n1.status.applied_generation, n1.status.code) == (
        common_pb2.APPLY_STATE_APPLIED, 1, 0
    )
    assert (n2.status.state, n2.status.code, n2.status.message, n2.status.attempts) == (
        common_pb2.APPLY_STATE_FAILED, 14, "OVS is down", 1
    )
    assert n2.status.since.ToNanoseconds() >= n2.meta.updated_at.ToNanoseconds()


# --- batches: all or nothing, every fault listed -----------------------------------------------


def test_a_1000_port_put_with_bad_ports_fails_whole_and_lists_each(
    agent: Agent, net: Stub
) -> None:
    base(net)
    ports = [port(f"p{i}", mac(i), fixed_ips=[f"2001:db8::{i:x}"]) for i in range(1000)]
    ports[3].fixed_ips.append("198.51.100.300")
    ports[917].mac = "ff:ff:ff:ff:ff:ff"
    same = unchanged(agent)
    code, message, errors = failure(net, "PutPorts", request_id="big-1", ports=ports)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("ports[3].fixed_ips[1]: must be an IPv4 or IPv6 address")
    assert message.endswith("(and 1 more objects at fault)")
    assert [(i, id, c, f) for i, id, c, f, _ in errors] == [
        (3, "p3", grpc.StatusCode.INVALID_ARGUMENT.value[0], "fixed_ips[1]"),
        (917, "p917", grpc.StatusCode.INVALID_ARGUMENT.value[0], "mac"),
    ]
    assert errors[1][4].startswith("mac: must be a unicast MAC")
    assert same() and call(net, "ListPorts").ports == []
    # Fixed, the same request_id goes through: a failed call is not remembered.
    ports[3].fixed_ips.pop()
    ports[917].mac = mac(917)
    answer = call(net, "PutPorts", request_id="big-1", ports=ports)
    assert len(answer.results) == 1000 and answer.generation == agent.store.generation()


BAD_REQUESTS = [
    # (the Put method, its list, the objects, the code, the message's start)
    ("PutNetworks", "networks", [network("n2", 0)], "INVALID_ARGUMENT",
     "networks[0].vni: must be 1..16,777,215, got 0"),
    ("PutNetworks", "networks", [network("n2", 2**24)], "INVALID_ARGUMENT",
     "networks[0].vni: must be 1..16,777,215, got 16777216"),
    ("PutNetworks", "networks", [network("n2", 101), network("n3", 100)], "ALREADY_EXISTS",
     "networks[1].vni: 100 is already used by network 'n1'"),
    ("PutNetworks", "networks", [network("n2", 200, mtu=9000)], "FAILED_PRECONDITION",
     "networks[0].mtu: 9000 is above this host's max_network_mtu 8950"),
    ("PutPorts", "ports", [port("p2", "01:00:5e:00:00:01")], "INVALID_ARGUMENT",
     "ports[0].mac: must be a unicast MAC"),
    ("PutSecurityGroups", "security_groups",
     [network_pb2.SecurityGroup(id="g2", tenant_id="t1", rules=[network_pb2.SecurityGroupRule(
         direction=common_pb2.DIRECTION_EGRESS, ethertype=network_pb2.ETHERTYPE_IPV4,
         protocol=17, port_range_min=5000, port_range_max=4000)])],
     "INVALID_ARGUMENT", "security_groups[0].rules[0].port_range_min: 5000 is above"),
    ("PutPorts", "ports", [port("p2", mac(2), network_id="nowhere")], "FAILED_PRECONDITION",
     "ports[0].network_id: network 'nowhere' does not exist"),
    ("PutPorts", "ports", [port("p2", mac(1))], "ALREADY_EXISTS",
     "ports[0].mac: fa:16:3e:00:00:01 is already used by port 'p1'"),
    ("PutL2Entries", "l2_entries", [network_pb2.L2Entry(id="e1", network_id="n1", mac=mac(1),
                                                        tunnel_endpoint_id="host-b")],
     "ALREADY_EXISTS", "l2_entries[0].mac: fa:16:3e:00:00:01 is already used by port 'p1'"),
    ("PutPorts", "ports", [port("p2", mac(2), fixed_ips=["2001:db8::10"])], "ALREADY_EXISTS",
     "ports[0].fixed_ips[0]: 2001:db8::10 is already used by port 'p1'"),
    ("PutTunnelEndpoints", "tunnel_endpoints", [endpoint("host-c", "192.0.2.2")],
     "ALREADY_EXISTS", "tunnel_endpoints[0].ip: 192.0.2.2 is already used by tunnel_endpoint"),
    ("PutTunnelEndpoints", "tunnel_endpoints", [endpoint("host-c", "192.0.2.1")],
     "INVALID_ARGUMENT", "tunnel_endpoints[0].ip: 192.0.2.1 is this host's own tunnel_ip"),
    ("PutPorts", "ports", [port("p2", mac(2)), port("p2", mac(3))], "INVALID_ARGUMENT",
     "ports[1].id: 'p2' is also at ports[0]: ids must be distinct"),
    ("PutPorts", "ports", [], "INVALID_ARGUMENT", "ports: must hold 1..4,096 objects, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "items", "objects", "code", "says"), BAD_REQUESTS,
    ids=[f"{says.split(':')[0]}-{code}" for *_, code, says in BAD_REQUESTS],
)  # fmt: skip
def test_a_bad_request_answers_the_protos_code_naming_the_field_and_stores_nothing(
    agent: Agent, net: Stub, method: str, items: str, objects: list[Any], code: str, says: str
) -> None:
    base(net)
    call(net, "PutPorts", request_id="p1", ports=[port("p1", mac(1), fixed_ips=["2001:db8::10"])])
    same = unchanged(agent)
    got, message, errors = failure(net, method, request_id="bad-1", **{items: objects})
    assert (got.name, message[: len(says)]) == (code, says)
    at_fault = re.match(r"\w+\[(\d+)\]\.(\S+): ", says)
    if at_fault:  # an object's fault: the trailer names it, with the path inside it
        index, field = int(at_fault[1]), at_fault[2]
        assert [e[:4] for e in errors] == [
            (index, objects[index].id, getattr(grpc.StatusCode, code).value[0], field)
        ]
    assert same()


def test_one_batch_may_swap_two_macs(net: Stub) -> None:
    base(net)
    call(net, "PutPorts", request_id="r1", ports=[port("p1", mac(1)), port("p2", mac(2))])
    call(net, "PutPorts", request_id="r2", ports=[port("p1", mac(2)), port("p2", mac(1))])
    assert [p.spec.mac for p in call(net, "ListPorts").ports] == [mac(2), mac(1)]


# --- references, in the documented order -------------------------------------------------------


def test_references_are_put_in_order_and_deleted_in_reverse(agent: Agent, net: Stub) -> None:
    call(net, "PutNetworks", request_id="r1", networks=[network()])
    guarded = port("p1", mac(1), security_group_ids=["g1"])
    code, message, errors = failure(net, "PutPorts", request_id="r2", ports=[guarded])
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message.startswith("ports[0].security_group_ids[0]: security_group 'g1' does not exist")
    assert [e[3] for e in errors] == ["security_group_ids[0]"]
    call(net, "PutSecurityGroups", request_id="r3", security_groups=[
        ssh_group("g1"), ssh_group("g2", rules=[network_pb2.SecurityGroupRule(
            direction=common_pb2.DIRECTION_INGRESS, ethertype=network_pb2.ETHERTYPE_IPV4,
            remote_group_id="g1")])])  # fmt: skip
    call(net, "PutTunnelEndpoints", request_id="r4", tunnel_endpoints=[endpoint()])
    call(net, "PutPorts", request_id="r5", ports=[guarded])
    call(net, "PutL2Entries", request_id="r6", l2_entries=[network_pb2.L2Entry(
        id="e1", network_id="n1", mac=mac(2), tunnel_endpoint_id="host-b")])  # fmt: skip

    same = unchanged(agent)
    for method, used, users in (
        ("DeleteNetworks", "network 'n1'", "l2_entry 'e1', port 'p1'"),
        ("DeleteSecurityGroups", "security_group 'g1'", "port 'p1', security_group 'g2'"),
        ("DeleteTunnelEndpoints", "tunnel_endpoint 'host-b'", "l2_entry 'e1'"),
    ):
        id = used.split("'")[1]
        code, message, errors = failure(net, method, request_id=f"del-{id}", ids=[id])
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert message.startswith(f"ids[0]: {used} is still used by {users}; delete or change")
        assert [(e[0], e[1], e[3]) for e in errors] == [(0, id, "")]
    assert same()
    for method, ids in (
        ("DeletePorts", ["p1"]), ("DeleteL2Entries", ["e1"]), ("DeleteTunnelEndpoints", ["host-b"]),
        ("DeleteSecurityGroups", ["g2", "g1"]), ("DeleteNetworks", ["n1"]),
    ):  # fmt: skip
        call(net, method, request_id=f"rev-{ids[0]}", ids=ids)
    assert agent.store.snapshot().objects == {}


def test_deletes_need_distinct_ids_and_allow_missing_ones_only_when_asked(
    agent: Agent, net: Stub
) -> None:
    call(net, "PutNetworks", request_id="r1", networks=[network()])
    same = unchanged(agent)
    code, message, errors = failure(net, "DeleteNetworks", request_id="d1",
                                    ids=["n1", "bad id", "n1"])  # fmt: skip
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "ids[1]: must be 1-128 characters A-Z, a-z, 0-9, '.', '_', ':' or "
                               "'-', starting with a letter or digit, got 'bad id' (and 1 more "
                               "objects at fault)")  # fmt: skip
    assert [(e[0], e[3], e[4]) for e in errors][1] == (
        2, "", "'n1' is also at ids[0]: ids must be distinct"
    )
    code, message, errors = failure(net, "DeleteNetworks", request_id="d2", ids=["n1", "n9"])
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "ids[1]: no network with id 'n9'")
    assert same()
    answer = call(net, "DeleteNetworks", request_id="d3", ids=["n1", "n9"], allow_missing=True)
    assert [(r.id, r.generation, r.changed) for r in answer.results] == [
        ("n1", 2, True), ("n9", 0, False)
    ]
    assert answer.generation == 2


# --- List: pages, filters, cursors -------------------------------------------------------------


def test_a_filtered_listing_pages_through_every_match_once(agent: Agent, net: Stub) -> None:
    call(net, "PutNetworks", request_id="r1", networks=[network(), network("n2", 200)])
    call(net, "PutPorts", request_id="r2", ports=[port(f"p{i:02}", mac(i), f"n{i % 2 + 1}")
                                               for i in range(25)])  # fmt: skip
    cursor = f"v1:{agent.store.store_id()}:{agent.store.last_cursor()}"
    seen, token, pages = [], "", 0
    while True:
        page = call(net, "ListPorts", network_id="n2", page_size=4, page_token=token)
        assert len(page.ports) <= 4 and page.cursor == cursor
        seen += [p.spec.id for p in page.ports]
        pages, token = pages + 1, page.next_page_token
        if not token:
            break
    assert seen == [f"p{i:02}" for i in range(1, 25, 2)] and pages == 3
    assert [p.spec.id for p in call(net, "ListPorts", tenant_id="t1", network_id="n1").ports] == [
        f"p{i:02}" for i in range(0, 25, 2)
    ]
    assert call(net, "ListPorts", tenant_id="t2").ports == []
    of_networks = call(net, "ListNetworks", page_size=1).next_page_token
    wiped = base64.urlsafe_b64encode(b"v1:0123abcd:port:p01").decode()  # as before a wipe
    for bad, says in (("nonsense!", "malformed"), (of_networks, "comes from a listing of network"),
                      (wiped, "comes from another store")):  # fmt: skip
        code, message, _ = failure(net, "ListPorts", page_token=bad)
        assert (code, message[: 12 + len(says)]) == (
            grpc.StatusCode.INVALID_ARGUMENT, f"page_token: {says}"
        )


def test_page_size_0_is_1000_and_sizes_above_10000_are_10000(net: Stub) -> None:
    endpoints = [endpoint(f"e{i:05}", f"198.18.{i // 256}.{i % 256}") for i in range(10_001)]
    for start in range(0, len(endpoints), 4096):
        call(net, "PutTunnelEndpoints", request_id=f"r{start}",
             tunnel_endpoints=endpoints[start:start + 4096])  # fmt: skip
    first = call(net, "ListTunnelEndpoints")
    assert len(first.tunnel_endpoints) == 1000 and first.next_page_token
    big = call(net, "ListTunnelEndpoints", page_size=50_000)
    assert len(big.tunnel_endpoints) == 10_000
    last = call(net, "ListTunnelEndpoints", page_size=50_000, page_token=big.next_page_token)
    assert [e.spec.id for e in last.tunnel_endpoints] == ["e10000"] and not last.next_page_token


# --- replays -----------------------------------------------------------------------------------


def test_a_replay_answers_the_first_answers_bytes(agent: Agent, net: Stub) -> None:
    base(net)
    channel = agent.channel()
    raw = {name: channel.unary_unary(f"/andromede.v1.Network/{name}",
                                     request_serializer=lambda m: m.SerializeToString())
           for name in ("PutPorts", "DeletePorts")}  # fmt: skip
    put = network_pb2.PutPortsRequest(request_id="r1", ports=[port("p1", mac(1)),
                                                              port("p2", mac(2))])  # fmt: skip
    first = raw["PutPorts"](put, timeout=TIMEOUT)
    call(net, "PutPorts", request_id="r2", ports=[port("p1", mac(3))])  # changes p1 since
    delete = network_pb2.DeletePortsRequest(request_id="r3", ids=["p2", "p9"], allow_missing=True)
    first_delete = raw["DeletePorts"](delete, timeout=TIMEOUT)
    same = unchanged(agent)
    assert raw["PutPorts"](put, timeout=TIMEOUT) == first
    assert raw["DeletePorts"](delete, timeout=TIMEOUT) == first_delete
    assert network_pb2.PutPortsResponse.FromString(first).generation == 5
    assert same() and call(net, "GetPort", id="p1").port.spec.mac == mac(3)
    # The same request_id with other contents is another request: refused.
    put.ports[1].mac = mac(4)
    code, message, _ = failure(net, "PutPorts", request_id="r1", ports=put.ports)
    assert code == grpc.StatusCode.ALREADY_EXISTS and message.startswith("request_id: 'r1'")


# --- wiring ------------------------------------------------------------------------------------


def test_network_is_unimplemented_until_every_kind_has_a_reconciler(
    tmp_path: Path, certs: pki.LabPki  # noqa: F811
) -> None:
    with Store(tmp_path / FILENAME) as store:
        running = started(tmp_path, certs, store, reconciled_kinds=KINDS - {"rate_limit"})
        try:
            net = network_pb2_grpc.NetworkStub(running.channel())
            code, message, _ = failure(net, "PutNetworks", request_id="r1", networks=[network()])
            assert code == grpc.StatusCode.UNIMPLEMENTED and "[ovs] tunnel_ip" in message
            assert store.generation() == 0
        finally:
            stopped(running)
