"""`andromede`: the operator's and control plane's command line; it speaks the agent's gRPC API.

    andromede --lab ./lab node info                      # the lab's files (mutual TLS, operator)
    andromede --unix ./lab/agent.sock node inventory     # plaintext unix socket (insecure_unix)
    andromede --target host:50051 --ca ca.pem --cert operator.pem --key operator.key \\
        node maintenance on --reason "disk swap"
    andromede --lab ./lab events --follow --json
    andromede --lab /tmp/an1f2e-x/h1/agent port list     # a host of the multi-host lab (make run)
    andromede --lab ./lab vm create web.toml --wait      # VMs: agent/cli_vm.py
    andromede --unix /tmp/an1f2e-x/h1/agent/agent.sock --ca ca.pem --cert operator.pem \\
        --key operator.key network get net-blue          # mutual TLS over a unix socket

`--lab DIR` reads DIR/agent.toml: the TCP listener of `andromede-agent --lab DIR`, or, for a
host of `python -m agent.lab` (no TCP listener), its unix socket with mutual TLS; the client
certificate is `--identity`'s from the directory of the config's CA. TLS over a unix socket
checks the server's certificate against the name "localhost" (the lab's server certificate).

Output: short human-readable lines (tables for the network kinds, agent/cli_network.py), or
with --json each response as JSON (google.protobuf.json_format, one object per line for events
and lists). Errors print the gRPC status code and message on stderr and exit 1 (2 for bad
usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from agent import cli_network, cli_vm
from agent import config as agent_config
from andromede.v1 import events_pb2, node_pb2, node_pb2_grpc

TIMEOUT_S = 10.0
UNIX_TLS_NAME = "localhost"  # the name a server certificate must carry for TLS over a unix socket


class UsageError(Exception):
    pass


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="andromede", description="Talk to an Andromede agent.")
    conn = p.add_argument_group("connection (one of --target, --unix, --lab)")
    conn.add_argument("--target", metavar="HOST:PORT", help="the agent's TLS address")
    conn.add_argument("--ca", metavar="PEM", help="the CA that signed the agent's certificate")
    conn.add_argument("--cert", metavar="PEM", help="this client's certificate")
    conn.add_argument("--key", metavar="PEM", help="this client's private key")
    conn.add_argument(
        "--unix", metavar="PATH",
        help="the agent's unix socket: plaintext, or mutual TLS with --ca, --cert and --key",
    )  # fmt: skip
    conn.add_argument(
        "--lab", metavar="DIR",
        help="a lab made by andromede-agent --lab DIR, or a lab host's agent directory "
             "(<lab root>/<host>/agent, printed by make run)",
    )  # fmt: skip
    conn.add_argument(
        "--identity", default="operator", help="with --lab, the client certificate to use"
    )
    p.add_argument("--json", action="store_true", help="print responses as JSON")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per unary call")
    sub = p.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="this host")
    node = node.add_subparsers(dest="node_command", required=True)
    node.add_parser("info", help="GetNodeInfo")
    node.add_parser("inventory", help="GetInventory")
    maint = node.add_parser("maintenance", help="SetMaintenance")
    maint.add_argument("mode", choices=("on", "off"))
    maint.add_argument("--reason", default="")
    maint.add_argument("--request-id", help="default: a new UUID (reuse one to retry safely)")

    ev = sub.add_parser("events", help="WatchEvents")
    ev.add_argument("--follow", "-f", action="store_true", help="keep watching")
    start = ev.add_mutually_exclusive_group()
    start.add_argument(
        "--cursor", help="resume after this cursor (default: the oldest kept event)"
    )
    start.add_argument("--now", action="store_true", help="start from now, not the oldest event")
    cli_network.add_parsers(sub)
    cli_vm.add_parsers(sub)
    return p.parse_args(argv)


def channel(args: argparse.Namespace) -> grpc.Channel:
    chosen = [name for name in ("target", "unix", "lab") if getattr(args, name)]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --target HOST:PORT, --unix PATH or --lab DIR")
    if args.unix and not (args.ca or args.cert or args.key):
        return grpc.insecure_channel(f"unix:{os.path.abspath(args.unix)}")
    if args.lab:
        target, ca, cert, key = _lab_files(Path(args.lab), args.identity)
    else:
        if not (args.ca and args.cert and args.key):
            raise UsageError(
                f"--{'unix' if args.unix else 'target'} with TLS needs --ca, --cert and --key "
                f"(mutual TLS)"
            )
        target = args.target or f"unix:{os.path.abspath(args.unix)}"
        ca, cert, key = Path(args.ca), Path(args.cert), Path(args.key)
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes(),
            certificate_chain=Path(cert).read_bytes(),
        )
    except OSError as e:
        raise UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    unix = target.startswith("unix:")
    options = [("grpc.ssl_target_name_override", UNIX_TLS_NAME)] if unix else []
    return grpc.secure_channel(target, credentials, options=options)


def _lab_files(lab: Path, identity: str) -> tuple[str, Path, Path, Path]:
    """Target, CA, client certificate and key from `lab`/agent.toml: its TCP listener, else
    (a host of the multi-host lab) its unix socket; the client files beside the CA."""
    path = lab / agent_config.LAB_CONFIG
    if not path.exists():
        raise UsageError(
            f"{path} does not exist: start the lab with andromede-agent --lab {lab}, or give a "
            f"host's agent directory of a running `make run` lab (<lab root>/<host>/agent)"
        )
    config = agent_config.load(path)
    tls = config.server.tls
    target = agent_config.lab_tcp_target(config)
    unix = agent_config.lab_unix_socket(config)
    if target is None and unix is not None and not config.server.insecure_unix:
        target = f"unix:{unix}"
    if target is None or tls is None:
        raise UsageError(f"{path} has no TLS listener to connect to")
    pki_dir = tls.client_ca.parent
    return target, tls.client_ca, pki_dir / f"{identity}.pem", pki_dir / f"{identity}.key"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with channel(args) as ch:
            if args.command in cli_network.KINDS or args.command in cli_network.READBACK:
                return cli_network.run(ch, args)
            if args.command == "vm":
                return cli_vm.run(ch, args)
            stub = node_pb2_grpc.NodeStub(ch)
            if args.command == "node":
                return _node(stub, args)
            return _events(stub, args)
    except UsageError as e:
        print(f"andromede: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = e.details() if hasattr(e, "details") else str(e)
        print(f"andromede: {name}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _node(stub: node_pb2_grpc.NodeStub, args: argparse.Namespace) -> int:
    if args.node_command == "info":
        info = stub.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=args.timeout).info
        if args.json:
            return _print_json(info)
        caps = info.capabilities
        print(f"host:        {info.hostname} (agent {info.agent_version})")
        print(f"store:       {info.store_id}")
        print(f"generation:  desired {info.desired_generation}, applied {info.applied_generation}")
        m = info.maintenance
        print(f"maintenance: {'on' if m.enabled else 'off'}{f' ({m.reason})' if m.reason else ''}")
        print(f"kvm:         {'usable' if caps.kvm_usable else 'not usable'}: {caps.kvm_detail}")
        print(f"ovs:         {caps.ovs_version or '-'}; qemu: {caps.qemu_version or '-'}")
        return 0
    if args.node_command == "inventory":
        inv = stub.GetInventory(node_pb2.GetInventoryRequest(), timeout=args.timeout).inventory
        if args.json:
            return _print_json(inv)
        gib = 1024**3
        cpu = inv.cpu
        print(f"cpu:    {cpu.logical_cpus} logical, {cpu.physical_cores} cores, {cpu.model}")
        print(f"numa:   {len(inv.numa_nodes)} node(s)")
        print(
            f"memory: {inv.memory.total_bytes / gib:.1f} GiB total, "
            f"{inv.memory.available_bytes / gib:.1f} GiB available"
        )
        for d in inv.disks:
            print(f"disk:   {d.mountpoint} ({d.device}, {d.fstype}) {d.total_bytes / gib:.1f} GiB")
        print(f"load:   {inv.load}".replace("\n", " ").strip())
        return 0
    # maintenance on|off
    request = node_pb2.SetMaintenanceRequest(
        request_id=args.request_id or str(uuid.uuid4()),
        enabled=args.mode == "on",
        reason=args.reason,
    )
    reply = stub.SetMaintenance(request, timeout=args.timeout)
    if args.json:
        return _print_json(reply)
    print(
        f"maintenance {args.mode}: accepted at generation {reply.generation} "
        f"(request_id {request.request_id})"
    )
    return 0


def _events(stub: node_pb2_grpc.NodeStub, args: argparse.Namespace) -> int:
    request = events_pb2.WatchEventsRequest(
        cursor=args.cursor or "",
        from_oldest=not args.cursor and not args.now,
        heartbeat_interval_s=0 if args.follow else 1,
    )
    stream = stub.WatchEvents(request, timeout=None if args.follow else args.timeout)
    try:
        for response in stream:
            for event in response.events:
                _print_event(event, args.json)
            sys.stdout.flush()
            if not args.follow and not response.events:
                break  # caught up: a heartbeat (or the empty first batch)
    finally:
        stream.cancel()
    return 0


def _print_event(event: events_pb2.Event, as_json: bool) -> None:
    if as_json:
        print(json.dumps(json_format.MessageToDict(event), sort_keys=True))
        return
    kind = _enum_name(event, "kind").removeprefix("RESOURCE_KIND_").lower()
    etype = _enum_name(event, "type").removeprefix("EVENT_TYPE_").lower()
    state = _enum_name(event, "state").removeprefix("APPLY_STATE_").lower()
    when = event.time.ToDatetime().isoformat(timespec="milliseconds") + "Z"
    obj = f"{kind}/{event.object_id}" if event.object_id else kind
    parts = [f"#{event.sequence}", when, etype, obj, f"generation {event.generation}"]
    if event.state:
        parts.append(state)
    if event.message:
        parts.append(f"- {event.message}")
    print(" ".join(parts))


def _enum_name(message, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = getattr(message, field)
    number = descriptor.values_by_number.get(value)
    return number.name if number is not None else str(value)


def _print_json(message) -> int:
    print(json.dumps(json_format.MessageToDict(message), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
