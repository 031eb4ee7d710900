"""`andromede-engine`: run the packet engine on live traffic or a pcap file, with this host's
policy as the agent stored it, and report per tenant.

    andromede-engine --iface tap-1234 [--port PORT_ID]        # live, until Ctrl-C or --duration
    andromede-engine --pcap in.pcap --port PORT_ID --write out.pcap

The policy is read from the agent's state directory (`--state-dir`, or `[state] dir` of
`--config`), read-only: the tool changes nothing the agent owns. The frames are those the
port `--port` sends (by default the port whose tap binding is the interface). Reports go
to stdout every `--interval` seconds and at the end: a table, or JSON lines with `--json`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from agent.config import DEFAULT_STATE_DIR, ConfigError, load
from agent.engine.policy import engine_state, stored_state
from agent.store import FILENAME, Store
from dataplane.compile.engine import compile_engine
from dataplane.engine import Engine
from dataplane.frames import Frames
from dataplane.io.afpacket import RxRing
from dataplane.io.pcap import read_pcap, write_pcap
from dataplane.kernels import engine as k
from dataplane.policy import Invalid
from dataplane.topology import HostState, TapBinding

PCAP_PORT = "input"  # the name the frames' port goes by in engine_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="andromede-engine", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--iface", help="meter this interface's incoming traffic live (AF_PACKET, TPACKET_V3)")
    source.add_argument("--pcap", type=Path, help="meter the frames of this pcap file")
    parser.add_argument("--port", help="the port whose traffic the frames are (default: the port whose tap binding is --iface)")
    parser.add_argument("--config", type=Path, help="the agent's config file, for its state directory")
    parser.add_argument("--state-dir", type=Path, help=f"the agent's state directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--write", type=Path, help="with --pcap: write the frames that leave (output and encap) here")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between live reports (default 5)")
    parser.add_argument("--duration", type=float, help="live: stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)
    try:
        state = _policy(args)
        port = _port(args, state)
        # Beside the agent, nothing is plugged: every stored port gets an engine ofport, so
        # frames to them are forwarded (and counted) as the host would.
        others = {f"port:{p}": p for p in state.ports if p != port}
        with_port, ofports, problems = engine_state(state, {PCAP_PORT: port, **others})
        if problems:
            raise Invalid("port", problems[0].split(": ", 1)[1])
        tables = compile_engine(with_port)
        if args.pcap:
            return _from_pcap(args, tables, ofports[PCAP_PORT])
        return _live(args, tables, ofports[PCAP_PORT])
    except (ConfigError, Invalid, OSError) as e:
        print(f"andromede-engine: error: {e}", file=sys.stderr)
        return 2


def _policy(args: argparse.Namespace) -> HostState:
    state_dir = args.state_dir or (load(args.config).state_dir if args.config else DEFAULT_STATE_DIR)
    path = Path(state_dir) / FILENAME
    if not path.exists():
        raise Invalid("state-dir", f"no agent store at {path}: give the agent's --state-dir or --config")
    store = Store(path)
    try:
        return stored_state(store)
    finally:
        store.close()


def _port(args: argparse.Namespace, state: HostState) -> str:
    if args.port:
        if args.port not in state.ports:
            raise Invalid("port", f"no port {args.port!r} in the agent's store")
        return args.port
    bound = [p.id for p in state.ports.values()
             if isinstance(p.binding, TapBinding) and p.binding.interface_name == args.iface]  # fmt: skip
    if not bound:
        raise Invalid("port", f"no port has a tap binding to {args.iface!r}: name the port with --port")
    return bound[0]


def _from_pcap(args: argparse.Namespace, tables, ofport: int) -> int:
    frames = read_pcap(args.pcap)
    start = int(frames.times_ns[0]) if len(frames) else None
    engine = Engine(tables, write_frames=bool(args.write), now_ns=start)
    leaving: list[bytes] = []
    times: list[int] = []
    for first in range(0, len(frames), engine.capacity):
        batch = frames.batch(first, min(first + engine.capacity, len(frames)))
        out = engine.process(batch, ofport)
        if args.write:
            for i in np.flatnonzero((out.verdict == k.OUTPUT) | (out.verdict == k.ENCAP)):
                at = int(out.out_offsets[i])
                leaving.append(out.out_buf[at : at + int(out.out_lengths[i])].tobytes())
                times.append(int(batch.times_ns[i]))
    if args.write:
        write_pcap(args.write, Frames.of(leaving, times))
    _report(engine, args.json, final=True)
    return 0


def _live(args: argparse.Namespace, tables, ofport: int) -> int:
    engine = Engine(tables, write_frames=False)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    ends = time.monotonic() + args.duration if args.duration else float("inf")
    next_report = time.monotonic() + args.interval
    with RxRing(args.iface) as ring:
        print(f"andromede-engine: metering {args.iface} as port {args.port or 'of its tap binding'}",
              file=sys.stderr, flush=True)  # fmt: skip
        while not done.is_set() and time.monotonic() < ends:
            frames = ring.poll(min(0.2, max(0.0, ends - time.monotonic())))
            try:
                engine.meter(frames, ofport)
            finally:
                ring.release()
            if time.monotonic() >= next_report:
                _report(engine, args.json, final=False)
                next_report += args.interval
        stats = ring.stats()
    _report(engine, args.json, final=True, kernel_drops=stats.drops)
    return 0


_COLUMNS = (("packets", k.PASSED_PACKETS), ("bytes", k.PASSED_BYTES), ("dropped_packets", k.DROPPED_PACKETS),
            ("meter_dropped_packets", k.METER_DROPPED_PACKETS), ("meter_dropped_bytes", k.METER_DROPPED_BYTES),
            ("slow_packets", k.SLOW_PACKETS))  # fmt: skip


def _report(engine: Engine, as_json: bool, final: bool, kernel_drops: int | None = None) -> None:
    usage = engine.usage()
    rows = [{"tenant_id": tenant, "direction": direction,
             **{name: int(counters[d, column]) for name, column in _COLUMNS}}
            for tenant, counters in sorted(usage.items())
            for d, direction in ((k.METER_EGRESS, "egress"), (k.METER_INGRESS, "ingress"))]  # fmt: skip
    if as_json:
        line = {"final": final, "collected_at": time.time(), "tenants": rows}
        if kernel_drops is not None:
            line["kernel_drops"] = kernel_drops
        print(json.dumps(line), flush=True)
        return
    print(f"{'tenant':24} {'direction':9} " + " ".join(f"{name:>22}" for name, _ in _COLUMNS))
    for row in rows:
        print(f"{row['tenant_id']:24} {row['direction']:9} " + " ".join(f"{row[name]:>22,}" for name, _ in _COLUMNS))
    if kernel_drops is not None:
        print(f"frames the kernel dropped before the engine saw them: {kernel_drops:,}")
    sys.stdout.flush()
