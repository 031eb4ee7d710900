"""The Network service: its six kinds described for the one Put/Delete/Get/List implementation
(agent/objects_service.py), each checked by agent/network/specs.py against this host.

The server serves it only when every one of `KINDS` has a reconciler (`server.start`'s
`reconciled_kinds`): an accepted object of a kind nobody applies would hold the ack forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Protocol

from agent import objects_service
from agent.network import specs
from agent.objects_service import Kind
from agent.store import Store
from andromede.v1 import network_pb2, network_pb2_grpc


class Readback(Protocol):
    """The operators' read-only views of br-int (agent/network/readback.py)."""

    def trace(self, request: network_pb2.GetPacketTraceRequest) -> network_pb2.GetPacketTraceResponse: ...

    def flows(self, request: network_pb2.ListFlowsRequest) -> network_pb2.ListFlowsResponse: ...

    def runtimes(self) -> Mapping[str, network_pb2.PortRuntime]: ...


def kinds(host: specs.Host, readback: Readback | None = None) -> tuple[Kind, ...]:
    """The Network service's kinds, in the order network.proto says to put them."""
    return (
        Kind("Network", "Networks", partial(specs.network, host=host), ("tenant_id",)),
        Kind("SecurityGroup", "SecurityGroups", partial(specs.security_group, host=host),
             ("tenant_id",)),
        Kind("TunnelEndpoint", "TunnelEndpoints", partial(specs.tunnel_endpoint, host=host)),
        Kind("Port", "Ports", partial(specs.port, host=host), ("tenant_id", "network_id"),
             readback.runtimes if readback is not None else None),
        Kind("L2Entry", "L2Entries", partial(specs.l2_entry, host=host),
             ("network_id", "tunnel_endpoint_id")),
        Kind("RateLimit", "RateLimits", partial(specs.rate_limit, host=host), ("tenant_id",)),
    )  # fmt: skip


KINDS = frozenset(kind.name for kind in kinds(specs.Host()))
"""The store's kinds of the Network service: network, port, security_group, tunnel_endpoint,
l2_entry, rate_limit."""


def servicer(store: Store, host: specs.Host, readback: Readback | None = None
             ) -> network_pb2_grpc.NetworkServicer:  # fmt: skip
    """The Network servicer; without `readback` (no OVS here), GetPacketTrace and ListFlows
    answer UNIMPLEMENTED."""
    extra = {} if readback is None else {"GetPacketTrace": readback.trace,
                                         "ListFlows": readback.flows}  # fmt: skip
    return objects_service.servicer(
        network_pb2_grpc.NetworkServicer,
        network_pb2.DESCRIPTOR.services_by_name["Network"],
        kinds(host, readback),
        store,
        extra,
    )
