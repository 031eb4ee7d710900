"""`python -m bench core`: the agent core's figures, each beside a peer run in the same process.

- **batch**: one 1,000-object `Store.commit` (PutPorts-sized specs, about 300 bytes each: one
  transaction, one fsync) beside the same 1,000 objects as 1,000 one-object commits.
- **pass**: `Engine.run_pass` over 10,000 stored objects with a no-op reconciler: the first pass
  (writes 10,000 APPLIED statuses in one transaction) and steady-state passes (nothing to
  write), beside a bare `Store.snapshot()` of the same store (the floor of a pass).
- **streams**: unary GetNodeInfo latency over real mutual TLS from one client while another
  holds 256 Health/Watch streams open (all but the per-identity cap answered RESOURCE_EXHAUSTED),
  beside the same calls with no streams.

Medians of `--runs` runs (default 5); a table on stdout, every figure in `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent import pki, server
from agent.config import ServerConfig, TlsFiles
from agent.reconcile import Desired, Engine, Key, Outcome, Work
from agent.store import FILENAME, Put, Store
from andromede.v1 import node_pb2, node_pb2_grpc

BATCH = 1_000
PASS_OBJECTS = 10_000
STREAMS = 256
UNARY_CALLS = 200
SPEC_BYTES = 300


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("core", help="store batches, reconcile passes, stream floods")
    p.add_argument("--runs", type=int, default=5, help="runs per figure (median), default 5")
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    if args.runs < 1:
        print("bench core: error: --runs must be >= 1", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    with tempfile.TemporaryDirectory(prefix="andromede-bench-core-") as tmp:
        results = {
            "batch": bench_batch(Path(tmp) / "batch", args.runs),
            "pass": bench_pass(Path(tmp) / "pass", args.runs),
            "streams": bench_streams(Path(tmp) / "streams", args.runs),
        }
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _median_ms(run: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), [round(t, 3) for t in times]


def bench_batch(directory: Path, runs: int) -> dict:
    _progress(f"batch: {runs} x {BATCH}-object commit, and {BATCH} one-object commits")
    directory.mkdir()
    rounds = iter(range(1_000_000))
    with Store(directory / FILENAME) as store:

        def changes() -> list[Put]:  # new specs every run, so every object changes
            return [Put("port", f"port-{i:04d}", os.urandom(SPEC_BYTES)) for i in range(BATCH)]

        def batch() -> None:
            store.commit(changes(), f"batch-{next(rounds)}")

        def singles() -> None:
            for change in changes():
                store.commit([change], f"single-{next(rounds)}-{change.id}")

        batch_ms, batch_runs = _median_ms(batch, runs)
        singles_ms, singles_runs = _median_ms(singles, runs)
    return {
        "objects": BATCH,
        "spec_bytes": SPEC_BYTES,
        "batch_ms": round(batch_ms, 3),
        "batch_runs_ms": batch_runs,
        "one_by_one_ms": round(singles_ms, 3),
        "one_by_one_runs_ms": singles_runs,
        "speedup": round(singles_ms / batch_ms, 1),
    }


class NoOp:
    """A reconciler whose driver has nothing to do: the engine's own cost."""

    def __init__(self, kind: str) -> None:
        self.kinds = (kind,)

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        done = Outcome("up to date")
        return {(kind, id): done for kind, objects in desired.items() for id in objects}

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        return {}


def bench_pass(directory: Path, runs: int) -> dict:
    _progress(f"pass: {PASS_OBJECTS} objects, a no-op reconciler, {runs} steady passes")
    directory.mkdir()
    with Store(directory / FILENAME) as store:
        kinds = ("network", "port", "vm")
        for start in range(0, PASS_OBJECTS, 4_096):
            store.commit(
                [Put(kinds[i % 3], f"obj-{i:05d}", os.urandom(SPEC_BYTES))
                 for i in range(start, min(start + 4_096, PASS_OBJECTS))],
                f"fill-{start}",
            )  # fmt: skip
        engine = Engine(store, [NoOp(kind) for kind in kinds])
        first_ms, _ = _median_ms(lambda: _acked(engine), 1)
        steady_ms, steady_runs = _median_ms(lambda: _acked(engine), runs)
        snapshot_ms, _ = _median_ms(store.snapshot, runs)
    return {
        "objects": PASS_OBJECTS,
        "first_pass_ms": round(first_ms, 3),
        "steady_pass_ms": round(steady_ms, 3),
        "steady_runs_ms": steady_runs,
        "snapshot_ms": round(snapshot_ms, 3),
        "pass_over_snapshot": round(steady_ms / snapshot_ms, 2),
    }


def _acked(engine: Engine) -> None:
    if not engine.run_pass().acked:
        raise RuntimeError("a no-op pass did not ack: the benchmark measures the wrong thing")


def bench_streams(directory: Path, runs: int) -> dict:
    _progress(f"streams: {UNARY_CALLS} GetNodeInfo calls, without and with {STREAMS} open watches")
    directory.mkdir()
    certs = pki.lab_pki(directory / "pki", clients=("control-plane", "flooder"))
    tls = TlsFiles(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
    with Store(directory / FILENAME) as store:
        agent = server.start(ServerConfig(listen=("127.0.0.1:0",), tls=tls), store)
        agent.set_serving()
        target = f"127.0.0.1:{agent.ports['127.0.0.1:0']}"
        channels = []

        def channel(identity: str) -> grpc.Channel:
            cert, key = certs.clients[identity].read()
            creds = grpc.ssl_channel_credentials(certs.ca.cert.read_bytes(), key, cert)
            channels.append(grpc.secure_channel(target, creds))
            return channels[-1]

        try:
            node = node_pb2_grpc.NodeStub(channel("control-plane"))
            quiet = [_unary_latencies(node) for _ in range(runs)]
            flooder = health_pb2_grpc.HealthStub(channel("flooder"))
            watches = [flooder.Watch(health_pb2.HealthCheckRequest(), timeout=600)
                       for _ in range(STREAMS)]  # fmt: skip
            held = refused = 0
            for watch in watches:
                try:
                    next(watch)
                    held += 1
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    refused += 1
            flooded = [_unary_latencies(node) for _ in range(runs)]
            for watch in watches:
                watch.cancel()
        finally:
            for c in channels:
                c.close()
            agent.stop(grace=None)
    quiet_median = statistics.median(statistics.median(r) for r in quiet)
    flood_median = statistics.median(statistics.median(r) for r in flooded)
    return {
        "streams_opened": STREAMS,
        "streams_held": held,
        "streams_refused": refused,
        "unary_calls_per_run": UNARY_CALLS,
        "quiet_median_ms": round(quiet_median, 3),
        "quiet_p99_ms": round(statistics.median(_p99(r) for r in quiet), 3),
        "flooded_median_ms": round(flood_median, 3),
        "flooded_p99_ms": round(statistics.median(_p99(r) for r in flooded), 3),
        "flooded_over_quiet": round(flood_median / quiet_median, 2),
    }


def _unary_latencies(node: node_pb2_grpc.NodeStub) -> list[float]:
    latencies = []
    for _ in range(UNARY_CALLS):
        began = time.perf_counter()
        node.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=10)
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


def _print(results: dict) -> None:
    b, p, s = results["batch"], results["pass"], results["streams"]
    rows = [
        (f"commit {b['objects']} objects (ms): one batch vs one by one",
         b["batch_ms"], b["one_by_one_ms"], b["speedup"]),
        (f"pass over {p['objects']} objects (ms): steady vs snapshot",
         p["steady_pass_ms"], p["snapshot_ms"], p["pass_over_snapshot"]),
        ("first pass, writes every status (ms)", p["first_pass_ms"], None, None),
        (f"GetNodeInfo median (ms): {s['streams_opened']} watches vs none",
         s["flooded_median_ms"], s["quiet_median_ms"], s["flooded_over_quiet"]),
        ("GetNodeInfo p99 (ms): flooded vs none", s["flooded_p99_ms"], s["quiet_p99_ms"], None),
    ]  # fmt: skip
    print(f"\n{'figure':56}{'ours':>10}{'peer':>10}{'ratio':>8}")
    for name, ours, peer, ratio in rows:
        print(f"{name:56}{ours:10.2f}" + (f"{peer:10.2f}" if peer is not None else " " * 10)
              + (f"{ratio:7.2f}x" if ratio is not None else ""))  # fmt: skip
    print(f"watches held {s['streams_held']}, refused RESOURCE_EXHAUSTED {s['streams_refused']}")
