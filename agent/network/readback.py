"""What operators read back of br-int: the dataplane status in GetNodeInfo, a packet trace,
and the installed flows with their counters. Read-only: nothing here changes OVS or the store.

Where data comes from: the network reconciler's last pass (flows per table, when, how long),
the OVS restart watch (restarts seen), the switch (ofproto/trace, flow counters, interfaces),
the store (which MAC owns an address) and the tenant tags (whose flow a cookie marks). It is
called from gRPC threads; the switch's reads are single ovs-ofctl / ovs-appctl runs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from agent.network.numbers import Numbers
from agent.network.ovs import OvsSwitch, RestartWatch
from agent.network.reconcile import NetworkReconciler
from agent.store import Invalid, NotFound, Precondition, Store
from andromede.v1 import common_pb2, network_pb2, node_pb2
from dataplane.compile.flows import FlowDirection, cookie_direction, cookie_tenant
from dataplane.compile.openflow import TABLES

_TABLE_NAMES = {number: name for name, number in TABLES.items()}
_TABLE_LINE = re.compile(r"^\s*(\d+)\. ")
_OUTPUT = re.compile(r"^\s+output:(\d+)")
_TUNNEL_DST = re.compile(r"-> tunneling to (\S+) via")
_DIRECTIONS = {FlowDirection.INGRESS: common_pb2.DIRECTION_INGRESS,
               FlowDirection.EGRESS: common_pb2.DIRECTION_EGRESS}  # fmt: skip
_PROTOCOLS = {0: "icmp", 1: "icmp", 58: "icmp", 6: "tcp", 17: "udp"}


class Readback:
    def __init__(self, switch: OvsSwitch, reconciler: NetworkReconciler, watch: RestartWatch,
                 store: Store, numbers: Callable[[], Numbers]) -> None:  # fmt: skip
        self._switch = switch
        self._reconciler = reconciler
        self._watch = watch
        self._store = store
        self._numbers = numbers  # read fresh: the reconciler's thread owns the live one

    def status(self) -> node_pb2.DataplaneStatus:
        r = self._reconciler
        status = node_pb2.DataplaneStatus(
            ovs_connected=self._switch.connected(), flows=r.last_flows,
            last_pass_ms=r.last_pass_ms, ovs_restarts=self._watch.restarts,
            tables=[node_pb2.TableFlows(table_id=t, name=_TABLE_NAMES.get(t, ""), flows=n)
                    for t, n in sorted(r.flows_per_table.items())],
        )  # fmt: skip
        if r.last_pass_at:
            status.last_pass_at.FromNanoseconds(int(r.last_pass_at * 1e9))
        return status

    def runtimes(self) -> dict[str, network_pb2.PortRuntime]:
        """What is plugged for each port on br-int now (PortRecord.runtime), by port id."""
        return {
            i.port_id: network_pb2.PortRuntime(interface_name=i.name, ofport=max(i.ofport or 0, 0),
                                               link_up=i.link_state == "up")
            for i in self._switch.interfaces()
        }  # fmt: skip

    # --- a packet trace -------------------------------------------------------------------------

    def trace(self, request: network_pb2.GetPacketTraceRequest) -> network_pb2.GetPacketTraceResponse:
        port = self._port(request.port_id)
        ofport = self._ofport(request.port_id)
        dst = _address("dst_ip", request.dst_ip)
        src = (_address("src_ip", request.src_ip) if request.src_ip
               else _first_of_version(port, dst.version))  # fmt: skip
        if request.protocol not in _PROTOCOLS:
            raise Invalid("protocol", f"must be 0, 1 or 58 (ICMP echo), 6 (TCP) or 17 (UDP), got "
                                      f"{request.protocol}")  # fmt: skip
        dst_mac = request.dst_mac or self._owner_mac(port.network_id, dst)
        flow = _flow_text(ofport, port.mac, dst_mac, src, dst, request.protocol,
                          request.dst_port or 80)  # fmt: skip
        text = self._switch.trace(flow)
        return _verdict(text)

    def _port(self, port_id: str) -> network_pb2.Port:
        stored = self._store.get("port", port_id) if port_id else None
        if stored is None:
            raise NotFound("port", port_id, field_name="port_id")
        return network_pb2.Port.FromString(stored.spec)

    def _ofport(self, port_id: str) -> int:
        for interface in self._switch.interfaces():
            if interface.port_id == port_id and (interface.ofport or 0) > 0:
                return interface.ofport
        raise Precondition("port_id", f"port {port_id!r} is not plugged on {self._switch.bridge}")

    def _owner_mac(self, network_id: str, ip: ipaddress._BaseAddress) -> str:
        for kind, message, addresses in (("port", network_pb2.Port, "fixed_ips"),
                                         ("l2_entry", network_pb2.L2Entry, "ip_addresses")):  # fmt: skip
            for obj in self._store.objects(kind):
                spec = message.FromString(obj.spec)
                if spec.network_id == network_id and str(ip) in getattr(spec, addresses):
                    return spec.mac
        return "ff:ff:ff:ff:ff:ff"

    # --- flows ------------------------------------------------------------------------------------

    def flows(self, request: network_pb2.ListFlowsRequest) -> network_pb2.ListFlowsResponse:
        tags = self._numbers().assigned("tenant_tags")
        tenant_of = {tag: tenant for tenant, tag in tags.items()}
        if request.tenant_id and request.tenant_id not in tags:
            raise NotFound("tenant", request.tenant_id, field_name="tenant_id")
        terms = ()
        if request.port_id:
            self._port(request.port_id)
            ofport = self._ofport(request.port_id)
            terms = (f"in_port={ofport}", f"reg5={ofport:#x}", f"reg5={ofport}")
        entries = []
        for flow, packets, octets in self._switch.counters():
            tenant = tenant_of.get(cookie_tenant(flow.cookie), "")
            if request.tenant_id and tenant != request.tenant_id:
                continue
            if terms and not any(re.search(rf"(^|,){re.escape(t)}(,|$)", flow.match) for t in terms):
                continue
            entries.append(network_pb2.FlowEntry(
                table_id=flow.table, table=_TABLE_NAMES.get(flow.table, ""),
                priority=flow.priority, match=flow.match, actions=flow.actions,
                cookie=flow.cookie, tenant_id=tenant,
                direction=_DIRECTIONS.get(cookie_direction(flow.cookie), 0),
                packets=packets, bytes=octets))  # fmt: skip
        entries.sort(key=lambda e: (e.table_id, -e.priority, e.match))
        return network_pb2.ListFlowsResponse(flows=entries)


def _address(name: str, text: str) -> ipaddress._BaseAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(name, f"required: an IPv4 or IPv6 address, got {text!r}") from None


def _first_of_version(port: network_pb2.Port, version: int) -> ipaddress._BaseAddress:
    for ip in port.fixed_ips:
        if ipaddress.ip_address(ip).version == version:
            return ipaddress.ip_address(ip)
    raise Invalid("src_ip", f"port {port.id!r} has no IPv{version} address: give src_ip")


def _flow_text(ofport: int, src_mac: str, dst_mac: str, src, dst, protocol: int, dst_port: int) -> str:
    """The packet as ofproto/trace's flow syntax."""
    six = src.version == 6
    ip = f"ipv6_src={src},ipv6_dst={dst}" if six else f"nw_src={src},nw_dst={dst},nw_ttl=64"
    base = f"in_port={ofport},dl_src={src_mac},dl_dst={dst_mac},{ip}"
    if _PROTOCOLS[protocol] == "icmp":
        return f"icmp6,{base},icmp_type=128,icmp_code=0" if six else f"icmp,{base},icmp_type=8,icmp_code=0"
    proto = _PROTOCOLS[protocol] + ("6" if six else "")
    flags = ",tcp_flags=0x002" if protocol == 6 else ""  # a SYN
    return f"{proto},{base},tp_src=40000,tp_dst={dst_port}{flags}"


def _verdict(text: str) -> network_pb2.GetPacketTraceResponse:
    """ofproto/trace's output -> the verdict, the tables crossed, where it went."""
    tables, ofports = [], []
    for line in text.splitlines():
        if m := _TABLE_LINE.match(line):
            name = _TABLE_NAMES.get(int(m.group(1)), m.group(1))
            if not tables or tables[-1] != name:
                tables.append(name)
        elif (m := _OUTPUT.match(line)) and "br-phy" not in line:
            ofports.append(int(m.group(1)))
    actions = [line for line in text.splitlines() if line.startswith("Datapath actions:")]
    last = actions[-1] if actions else ""
    tunnel = _TUNNEL_DST.search(text)
    response = network_pb2.GetPacketTraceResponse(tables=tables, trace=text)
    if tunnel:
        response.verdict = network_pb2.TRACE_VERDICT_TUNNELLED
        response.tunnel_dst = tunnel.group(1)
    elif ofports and not last.endswith("drop") and last.strip() != "Datapath actions:":
        response.verdict = network_pb2.TRACE_VERDICT_DELIVERED
        response.ofports.extend(sorted(set(ofports)))
    else:
        response.verdict = network_pb2.TRACE_VERDICT_DROPPED
    return response
