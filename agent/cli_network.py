"""`andromede network|port|sg|endpoint|l2 list|get`: the Network service's objects, read back;
`andromede trace` and `andromede flows`: where a packet would go, and br-int's flows.

    andromede --lab /tmp/an1f2e-x/h1/agent port list             # a table for people
    andromede --lab /tmp/an1f2e-x/h1/agent --json port list      # one JSON object per line
    andromede --lab /tmp/an1f2e-x/h1/agent network get net-blue
    andromede --lab /tmp/an1f2e-x/h1/agent trace blue-h1 198.51.100.12 --protocol tcp --port 22
    andromede --lab /tmp/an1f2e-x/h1/agent flows --port blue-h1

Where data comes from: the agent's Network service, over the channel agent/cli.py opened:
List<Kinds> page after page (following next_page_token to the last page), Get<Kind> for one
id. Where it goes: stdout, as a table (one row per object: its spec's main fields and where
the host stands with it, APPLIED, PENDING or FAILED with the reason) or, with --json, each
record as google.protobuf.json_format prints it, one per line, as `events` does. The lab
(agent/lab/scenario.py, report.py) counts what it created on each host with `list_records`
and prints its summary with `table`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from dataplane.topology import DEFAULT_MTU
from andromede.v1 import common_pb2, network_pb2, network_pb2_grpc

Cell = Callable[[Any], str]  # a record -> the text of one column
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind as the CLI shows it. `singular` and `plural` are the method suffixes, as the
    servicer names them (GetL2Entry, ListL2Entries: agent/objects_service.py); `filters` are
    (option, List request field) pairs; `columns` are the table's (header, cell) pairs and
    `details` the lines `get` prints after them."""

    command: str
    singular: str
    plural: str
    help: str
    columns: tuple[tuple[str, Cell], ...]
    filters: tuple[tuple[str, str], ...] = ()
    details: tuple[tuple[str, Cell], ...] = ()

    @property
    def items(self) -> str:
        """The List response's field: "L2Entries" -> "l2_entries"."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.plural).lower()

    @property
    def item(self) -> str:
        """The Get response's field: "SecurityGroup" -> "security_group"."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.singular).lower()


# --- cells -----------------------------------------------------------------------------------


def _state(record: Any) -> str:
    status = record.status
    state = common_pb2.ApplyState.Name(status.state).removeprefix("APPLY_STATE_").lower()
    if status.state == common_pb2.APPLY_STATE_FAILED:
        state += f" ({_CODES.get(status.code, status.code)})"
    return state


def _message(record: Any) -> str:
    return record.status.message or "-"


def _spec(field: str) -> Cell:
    return lambda record: str(getattr(record.spec, field)) or "-"


def _joined(field: str) -> Cell:
    return lambda record: ",".join(getattr(record.spec, field)) or "-"


def _count(field: str) -> Cell:
    return lambda record: str(len(getattr(record.spec, field)))


def _binding(record: Any) -> str:
    spec = record.spec
    if spec.HasField("tap"):
        return f"tap {spec.tap.interface_name}"
    if spec.HasField("vm_nic"):
        return f"vm {spec.vm_nic.vm_id} nic {spec.vm_nic.nic_id}"
    return "none (not plugged)"


def _plugged(record: Any) -> str:
    runtime = record.runtime
    if not runtime.interface_name:
        return "-"
    link = "up" if runtime.link_up else "down"
    return f"{runtime.interface_name}, ofport {runtime.ofport}, link {link}"


def _flag(field: str) -> Cell:
    """An optional bool whose unset value means true (the proto's defaults)."""

    def cell(record: Any) -> str:
        off = record.spec.HasField(field) and not getattr(record.spec, field)
        return "no" if off else "yes"

    return cell


def _rules(record: Any) -> str:
    return "".join(f"\n  {_rule(rule)}" for rule in record.spec.rules) or "-"


def _rule(rule: network_pb2.SecurityGroupRule) -> str:
    """ "ingress ipv4 tcp 22-22 from group sg-blue", "egress ipv4 any to any"."""
    ingress = rule.direction == common_pb2.DIRECTION_INGRESS
    ethertype = network_pb2.Ethertype.Name(rule.ethertype).removeprefix("ETHERTYPE_").lower()
    words = ["ingress" if ingress else "egress", ethertype]
    if rule.HasField("protocol"):
        words.append(_PROTOCOLS.get(rule.protocol, f"protocol {rule.protocol}"))
        if rule.protocol in (1, 58) and rule.HasField("port_range_min"):
            code = f" code {rule.port_range_max}" if rule.HasField("port_range_max") else ""
            words.append(f"type {rule.port_range_min}{code}")
        elif rule.HasField("port_range_min"):
            words.append(f"{rule.port_range_min}-{rule.port_range_max}")
    else:
        words.append("any")
    remote = rule.WhichOneof("remote")
    where = {"remote_cidr": rule.remote_cidr, "remote_group_id": f"group {rule.remote_group_id}"}
    words += ["from" if ingress else "to", where.get(remote, "any")]
    return " ".join(words)


def _status(record: Any) -> str:
    status, meta = record.status, record.meta
    since = status.since.ToDatetime().isoformat(timespec="seconds") + "Z"
    failed = f", {status.attempts} failed attempts" if status.attempts else ""
    return (f"generation {meta.generation} (request {meta.request_id or '-'}), applied "
            f"{status.applied_generation}, {_state(record)} since {since}{failed}")  # fmt: skip


_ID, _TENANT = ("id", _spec("id")), ("tenant", _spec("tenant_id"))
_STATE, _MESSAGE = ("state", _state), ("message", _message)

KINDS: dict[str, Kind] = {k.command: k for k in (
    Kind("network", "Network", "Networks", "tenant networks (VXLAN segments)",
         (_ID, _TENANT, ("vni", _spec("vni")),
          ("mtu", lambda r: str(r.spec.mtu or DEFAULT_MTU)), _STATE, _MESSAGE),
         filters=(("--tenant", "tenant_id"),)),
    Kind("port", "Port", "Ports", "tenant NICs on this host",
         (_ID, _TENANT, ("network", _spec("network_id")), ("mac", _spec("mac")),
          ("ips", _joined("fixed_ips")), _STATE, _MESSAGE),
         filters=(("--tenant", "tenant_id"), ("--network", "network_id")),
         details=(("groups", _joined("security_group_ids")), ("binding", _binding),
                  ("plugged", _plugged), ("port security", _flag("port_security_enabled")),
                  ("admin up", _flag("admin_state_up")))),
    Kind("sg", "SecurityGroup", "SecurityGroups", "security groups",
         (_ID, _TENANT, ("rules", _count("rules")), ("stateful", _flag("stateful")),
          ("member ips", _count("member_ips")), _STATE, _MESSAGE),
         filters=(("--tenant", "tenant_id"),),
         details=(("members", _joined("member_ips")), ("rule list", _rules))),
    Kind("endpoint", "TunnelEndpoint", "TunnelEndpoints", "the other hosts' tunnel endpoints",
         (_ID, ("ip", _spec("ip")), _STATE, _MESSAGE)),
    Kind("l2", "L2Entry", "L2Entries", "L2 entries: ports on other hosts",
         (_ID, ("network", _spec("network_id")), ("mac", _spec("mac")),
          ("ips", _joined("ip_addresses")), ("endpoint", _spec("tunnel_endpoint_id")),
          _STATE, _MESSAGE),
         filters=(("--network", "network_id"), ("--endpoint", "tunnel_endpoint_id"))),
)}  # fmt: skip


# --- commands --------------------------------------------------------------------------------


READBACK = ("trace", "flows")  # the operators' read-backs of br-int, besides the kinds


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`<kind> list [filters]` and `<kind> get ID` for every kind in KINDS; `trace` and
    `flows`."""
    trace = sub.add_parser("trace", help="GetPacketTrace: where a port's packet would go")
    trace.add_argument("port_id", help="the port the packet enters br-int from")
    trace.add_argument("dst_ip", help="its destination address")
    trace.add_argument("--src-ip", default="", help="its source (default: the port's own)")
    trace.add_argument("--dst-mac", default="", help="default: the owner of dst_ip")
    trace.add_argument("--protocol", choices=("icmp", "tcp", "udp"), default="icmp")
    trace.add_argument("--port", type=int, default=0, help="TCP or UDP destination port")
    trace.add_argument("--full", action="store_true", help="also print OVS's own trace")
    flows = sub.add_parser("flows", help="ListFlows: br-int's flows with their counters")
    flows.add_argument("--port", dest="port_id", default="", help="only this port's flows")
    flows.add_argument("--tenant", dest="tenant_id", default="", help="only this tenant's")
    for kind in KINDS.values():
        parser = sub.add_parser(kind.command, help=f"{kind.help} (List/Get{kind.singular})")
        verbs = parser.add_subparsers(dest="verb", required=True)
        listing = verbs.add_parser("list", help=f"List{kind.plural}, every page")
        for option, field in kind.filters:
            listing.add_argument(option, dest=field, default="", help=f"only this {field}")
        verbs.add_parser("get", help=f"Get{kind.singular}").add_argument("id")


def run(channel: grpc.Channel, args: argparse.Namespace) -> int:
    """Run `args.command` (a key of KINDS with `args.verb`, or one of READBACK) against the
    agent behind `channel`."""
    stub = network_pb2_grpc.NetworkStub(channel)
    if args.command == "trace":
        return _trace(stub, args)
    if args.command == "flows":
        return _flows(stub, args)
    kind = KINDS[args.command]
    if args.verb == "get":
        request = getattr(network_pb2, f"Get{kind.singular}Request")(id=args.id)
        reply = getattr(stub, f"Get{kind.singular}")(request, timeout=args.timeout)
        record = getattr(reply, kind.item)
        if args.json:
            _print_json_line(record)
        else:
            _print_record(kind, record)
        return 0
    filters = {field: getattr(args, field) for _, field in kind.filters}
    records = list_records(stub, kind, timeout=args.timeout, **filters)
    if args.json:
        for record in records:
            _print_json_line(record)
    else:
        _print_table(kind, records)
    return 0


def list_records(stub: network_pb2_grpc.NetworkStub, kind: Kind, timeout: float = 10.0,
                 **filters: str) -> list[Any]:  # fmt: skip
    """Every record of `kind` the agent holds (matching `filters`, List request fields), in
    id order: List<Kinds> until a page comes back without a next_page_token."""
    return list(_pages(stub, kind, timeout, filters))


def _pages(stub: Any, kind: Kind, timeout: float, filters: dict[str, str],
           messages: Any = network_pb2) -> Iterator[Any]:  # fmt: skip
    """Every record of a List method, page after page; `messages`: the service's _pb2 module."""
    make = getattr(messages, f"List{kind.plural}Request")
    call = getattr(stub, f"List{kind.plural}")
    token = ""
    while True:
        page = call(make(page_token=token, **filters), timeout=timeout)
        yield from getattr(page, kind.items)
        token = page.next_page_token
        if not token:
            return


_TRACE_PROTOCOLS = {"icmp": 0, "tcp": 6, "udp": 17}


def _trace(stub: network_pb2_grpc.NetworkStub, args: argparse.Namespace) -> int:
    reply = stub.GetPacketTrace(network_pb2.GetPacketTraceRequest(
        port_id=args.port_id, dst_ip=args.dst_ip, src_ip=args.src_ip, dst_mac=args.dst_mac,
        protocol=_TRACE_PROTOCOLS[args.protocol], dst_port=args.port), timeout=args.timeout)  # fmt: skip
    if args.json:
        _print_json_line(reply)
        return 0
    verdict = network_pb2.TraceVerdict.Name(reply.verdict).removeprefix("TRACE_VERDICT_")
    where = {"DELIVERED": f" to ofport {', '.join(map(str, reply.ofports))}",
             "TUNNELLED": f" to {reply.tunnel_dst}"}.get(verdict, "")  # fmt: skip
    print(f"{verdict.lower()}{where}")
    print(f"tables: {' -> '.join(reply.tables)}")
    if args.full:
        print(reply.trace)
    return 0


def _flows(stub: network_pb2_grpc.NetworkStub, args: argparse.Namespace) -> int:
    reply = stub.ListFlows(network_pb2.ListFlowsRequest(
        port_id=args.port_id, tenant_id=args.tenant_id), timeout=args.timeout)  # fmt: skip
    if args.json:
        for flow in reply.flows:
            _print_json_line(flow)
        return 0
    rows = [["table", "prio", "tenant", "packets", "match", "actions"]]
    rows += [[f"{f.table_id} {f.table}", str(f.priority), f.tenant_id or "-", str(f.packets),
              f.match or "*", f.actions] for f in reply.flows]  # fmt: skip
    print(table(rows) if reply.flows else "no flows")
    return 0


def _print_json_line(record: Any) -> None:
    print(json.dumps(json_format.MessageToDict(record), sort_keys=True))


def table(rows: list[list[str]]) -> str:
    """`rows` (the first is the header) as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip()
                     for row in rows)  # fmt: skip


def _print_table(kind: Kind, records: list[Any]) -> None:
    if not records:
        print(f"no {kind.command} objects")
        return
    rows = [[header for header, _ in kind.columns]]
    print(table(rows + [[cell(record) for _, cell in kind.columns] for record in records]))


def _print_record(kind: Kind, record: Any) -> None:
    lines = [*kind.columns, *kind.details, ("status", _status)]
    width = max(len(header) for header, _ in lines) + 1
    for header, cell in lines:
        text = f"{header + ':':{width}} {cell(record)}"  # a cell may span lines (rules)
        print("\n".join(line.rstrip() for line in text.splitlines()))
