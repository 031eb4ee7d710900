"""`python -m bench engine`: the packet engine's throughput per stage and end to end, on one
core, beside what a user would run instead.

Ours (median of `--runs` runs over `--frames` frames, after a warm-up run):
- **parse**: 64-byte IPv4 frames -> header rows (kernels/parse.py).
- **classify_classbench_1k**: the acl1_1k ClassBench set on its trace's headers.
- **classify_security_groups**: the benchmark's 1,000-rule security-group policy
  (bench/engine_policy.py), compiled to the engine's ingress classifier, on the frames'
  headers.
- **trtcm_64k** and **counters_64k**: RFC 2698 trTCM and the per-tenant counters over 65,536
  tenants, a random tenant per packet.
- **e2e**: everything at once (Engine.process): parse, port, egress meter, anti-spoofing,
  egress and ingress groups, forwarding, ingress trTCM and counters, over a host of 65,536
  tenants (each with its own network and ports, all in the 1,000-rule groups), a random
  tenant per frame; and e2e by frame size 64..1518 B against the 10 and 25 GbE line rates.
- **live**: AF_PACKET (TPACKET_V3) on a veth pair, frames sent from the other core.

Peers (`--peer ovs-dpdk`, same frames, same core): Open vSwitch's DPDK datapath fed the
same pcap through DPDK's pcap driver, with the same policy compiled to flows by the network
compiler and an OpenFlow meter, with few distinct 5-tuples (its exact-match cache answers)
and with 65,536 (its classifier answers); and dpdk-testpmd pcap -> null, the I/O floor.

A table on stdout; `--json` writes `e2e_mpps`, `stages` {name: Mpps}, `by_size`, `live` and
`peer` {name: {mpps, ...}}; `--png` draws Mpps per stage and e2e against frame size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

from bench import afpacket, engine_policy, ovs_dpdk
from bench.ovs_dpdk import PeerError
from bench.classify import classbench_dir
from dataplane.classbench import FIVE_TUPLE, read_rules, read_trace
from dataplane.compile.classifier import Classifier
from dataplane.compile.engine import SG_FIELDS, compile_engine
from dataplane.compile.openflow import compile_host
from dataplane.engine import Engine
from dataplane.frames import Frames
from dataplane.io.pcap import write_pcap
from dataplane.kernels import engine as k
from dataplane.kernels.classify import classify_batch
from dataplane.kernels.stale import drop_stale_cache
from dataplane.kernels.parse import IP_PROTO, L4_DST, L4_SRC, PARSED_COLS, SRC0, parse_batch
from dataplane.kernels.meter import mark_batch
from dataplane.meters import MeterSpec, meter_arrays
from dataplane.topology import Direction, HostState, Plugged, Port, TenantNetwork

TENANTS = 65_536
SIZES = (64, 128, 256, 512, 1024, 1518)
LINE_RATES_GBPS = (10, 25)
BATCH = 8192  # frames per Engine.process call
FEW_TUPLES, MANY_TUPLES = 1024, 65_536


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("engine", help="packet engine per stage and end to end, beside OVS-DPDK")
    p.add_argument("--runs", type=int, default=5, help="timed runs per figure, median reported (default 5)")
    p.add_argument("--frames", type=int, default=1_000_000, help="frames per run (default 1,000,000)")
    p.add_argument("--core", type=int, default=1, help="CPU everything is pinned to (default 1)")
    p.add_argument("--tenants", type=int, default=TENANTS, help=f"tenants of the e2e host (default {TENANTS:,})")
    p.add_argument("--peer", choices=["ovs-dpdk"], help="also run OVS-DPDK and dpdk-testpmd on the same core")
    p.add_argument("--peer-seconds", type=float, default=10.0, help="seconds per peer run (default 10)")
    p.add_argument("--no-live", action="store_true", help="skip the AF_PACKET veth figure")
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument("--png", type=Path, help="Mpps per stage, and e2e against frame size")
    p.set_defaults(run=main)


class BenchError(Exception):
    """Bad arguments, said to the user as such (exit 2)."""


def main(args: argparse.Namespace) -> int:
    try:
        if args.runs < 1 or args.frames < BATCH or args.tenants < 1:
            raise BenchError(f"--runs and --tenants must be >= 1, --frames >= {BATCH}")
        if args.core not in os.sched_getaffinity(0):
            raise BenchError(f"--core {args.core} is not one of this process's CPUs: {sorted(os.sched_getaffinity(0))}")
        args.cpus = os.sched_getaffinity(0)  # the peers' other threads go back to these
        os.sched_setaffinity(0, {args.core})
        results = run(args)
    except (BenchError, PeerError) as e:
        print(f"bench engine: error: {e}", file=sys.stderr)
        return 2
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.png:
        _chart(results, args.png)
    return 0


def _progress(message: str) -> None:
    print(f"bench engine: {message}", file=sys.stderr, flush=True)


def _mpps(work: Callable[[], object], frames: int, runs: int) -> tuple[float, list[float]]:
    """Median Mpps of `runs` timed calls of `work` (each handling `frames` frames), after one
    untimed call (compiling, warming caches)."""
    work()
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        rates.append(frames / (time.perf_counter() - began) / 1e6)
    return statistics.median(rates), [round(r, 2) for r in rates]


def run(args: argparse.Namespace) -> dict:
    n, runs = args.frames, args.runs
    rng = np.random.default_rng(7)
    _progress(f"building the policy of {args.tenants:,} tenants and 1,000 rules")
    base = engine_policy.security_group_state(rules=1000)
    wide = wide_state(base, args.tenants)
    frames = engine_policy.frames(base, n, min(MANY_TUPLES, n), 64)
    tenants = rng.integers(0, args.tenants, n)
    in_ports = (2 * tenants + 1).astype(np.int64)
    stages: dict[str, float] = {}
    runs_of: dict[str, list[float]] = {}

    _progress("parse")
    rows = np.zeros((n, PARSED_COLS), np.uint32)
    stages["parse"], runs_of["parse"] = _mpps(lambda: parse_batch(frames.buf, frames.offsets, frames.lengths, 0, rows), n, runs)

    _progress("classify: ClassBench acl1_1k")
    table = read_rules(classbench_dir() / "acl1_1k")
    trace = read_trace(classbench_dir() / "acl1_1k_trace")
    headers = np.ascontiguousarray(np.resize(trace.headers, (n, len(FIVE_TUPLE))))
    clf = Classifier.build(table)
    found = np.empty(n, np.int32)
    stages["classify_classbench_1k"], runs_of["classify_classbench_1k"] = _mpps(
        lambda: classify_batch(clf.arrays, headers, found), n, runs)

    _progress("classify: security groups")
    sg = compile_engine(base).classifiers[(Direction.INGRESS, 4)]
    sg_headers = np.zeros((n, len(SG_FIELDS[(Direction.INGRESS, 4)])), np.uint32)
    sg_headers[:, 1], sg_headers[:, 2] = rows[:, SRC0], rows[:, IP_PROTO]
    sg_headers[:, 3], sg_headers[:, 4] = rows[:, L4_SRC], rows[:, L4_DST]
    stages["classify_security_groups"], runs_of["classify_security_groups"] = _mpps(
        lambda: classify_batch(sg.arrays, sg_headers, found), n, runs)
    sg_allowed = float(np.mean(found >= 0))

    _progress("trTCM and counters over 65,536 tenants")
    spec = MeterSpec.trtcm(cir=10**9, cbs=1 << 20, pir=2 * 10**9, pbs=1 << 21)
    meters = meter_arrays([spec] * (2 * TENANTS), int(frames.times_ns[0]))
    meter_ids = (2 * tenants + 1).astype(np.int64)
    colours_in, colours = np.zeros(n, np.int8), np.zeros(n, np.int8)
    stages["trtcm_64k"], runs_of["trtcm_64k"] = _mpps(
        lambda: mark_batch(meters, meter_ids, frames.times_ns, frames.lengths, colours_in, colours), n, runs)
    counters = np.zeros((TENANTS, 2, k.COUNTER_COLS), np.uint64)
    stages["counters_64k"], runs_of["counters_64k"] = _mpps(
        lambda: count_batch(counters, tenants, frames.lengths), n, runs)

    _progress("end to end, 64-byte frames, 65,536 tenants")
    engine = Engine(compile_engine(wide), capacity=BATCH, write_frames=False, now_ns=int(frames.times_ns[0]))
    e2e, runs_of["e2e"] = _mpps(lambda: engine.meter(frames, in_ports), n, runs)
    verdicts = _verdicts(engine, frames, in_ports)
    by_tenants = {}
    for count in (1, 64, 4096):
        _progress(f"end to end, 64-byte frames, {count:,} tenants")
        fewer = Engine(compile_engine(wide_state(base, count)), capacity=BATCH, write_frames=False,
                       now_ns=int(frames.times_ns[0]))  # fmt: skip
        ports = (2 * (tenants % count) + 1).astype(np.int64)
        by_tenants[count] = _mpps(lambda: fewer.meter(frames, ports), n, runs)[0]
    by_tenants[args.tenants] = e2e
    # What the peers are given: the benchmark's host as it is (one tenant), the same frames.
    like_peers = {}
    single = Engine(compile_engine(base), capacity=BATCH, write_frames=False, now_ns=int(frames.times_ns[0]))
    for tuples in (FEW_TUPLES, MANY_TUPLES):
        _progress(f"end to end as the peers run: one tenant, {tuples:,} distinct 5-tuples")
        same = engine_policy.frames(base, n, min(tuples, n), 64)
        like_peers[tuples] = _mpps(lambda: single.meter(same, engine_policy.SENDER_OFPORT), n, runs)[0]
    by_size = {}
    for size in SIZES:
        _progress(f"end to end, {size}-byte frames")
        sized = engine_policy.frames(base, n // 4, min(MANY_TUPLES, n // 4), size)
        by_size[size] = _mpps(lambda: engine.meter(sized, in_ports[: n // 4]), n // 4, runs)[0]
    results = {
        "frames": n, "runs": runs, "core": args.core, "tenants": args.tenants, "rules": 1000,
        "e2e_mpps": e2e, "stages": stages, "stage_runs": runs_of, "by_size_mpps": by_size,
        "e2e_by_tenants_mpps": by_tenants, "e2e_like_peers_mpps": like_peers,
        "e2e_verdicts": verdicts, "security_group_allowed": sg_allowed,
        "line_rate_mpps": {f"{g}GbE": {s: line_rate_mpps(g, s) for s in SIZES} for g in LINE_RATES_GBPS},
        "peer": {},
    }  # fmt: skip
    if not args.no_live:
        _progress("live AF_PACKET on a veth pair")
        results["live"] = live(base, args)
    if args.peer:
        results["peer"] = peers(base, args)
    return results


def wide_state(base: HostState, tenants: int) -> HostState:
    """`base`'s sender and receiver copied into `tenants` tenants, each on its own network
    (the same MACs and addresses in every one: networks keep them apart), the sender of tenant
    t at ofport 2t+1 and its receiver at 2t+2, all in base's groups and rate limits."""
    sender = base.ports[engine_policy.SENDER]
    receiver = base.ports[engine_policy.RECEIVER]
    limit = next(iter(base.rate_limits.values()))
    networks, ports, plugged, limits, tags = {}, {}, {}, {}, {}
    for t in range(tenants):
        tenant, network = f"t{t}", f"n{t}"
        networks[network] = TenantNetwork(network, tenant, 1 + t)
        for port, ofport in ((sender, 2 * t + 1), (receiver, 2 * t + 2)):
            copy = Port(f"{port.id}-{t}", tenant, network, port.mac, port.fixed_ips, port.allowed_address_pairs,
                        port.security_group_ids)  # fmt: skip
            ports[copy.id] = copy
            plugged[copy.id] = Plugged(ofport)
        limits[f"rl{t}"] = type(limit)(f"rl{t}", tenant, limit.direction, limit.cir_bytes_per_s, limit.cbs_bytes)
        tags[tenant] = t + 1
    return HostState(networks=networks, ports=ports, security_groups=base.security_groups, rate_limits=limits,
                     plugged=plugged, tenant_tags=tags)  # fmt: skip


def _verdicts(engine: Engine, frames: Frames, in_ports: np.ndarray) -> dict[str, int]:
    """What the e2e frames came to (all should be output: the policy allows every one)."""
    seen = np.zeros(len(k.VERDICTS), np.int64)
    for start in range(0, len(frames), engine.capacity):
        stop = min(start + engine.capacity, len(frames))
        out = engine.process(frames.batch(start, stop), in_ports[start:stop])
        seen += np.bincount(out.verdict, minlength=len(k.VERDICTS))
    return {name: int(c) for name, c in zip(k.VERDICTS, seen) if c}


drop_stale_cache(__file__, k)


@njit(cache=True, nogil=True)
def count_batch(counters: np.ndarray, tenants: np.ndarray, lengths: np.ndarray) -> None:
    """The pipeline's counter update for each packet (kernels.engine._count), alone."""
    for i in range(tenants.shape[0]):
        k._count(counters, tenants[i], k.METER_INGRESS, k.PASSED_PACKETS, lengths[i])


def line_rate_mpps(gbps: float, size: int) -> float:
    """Frames per second of `size` bytes (FCS included) on the wire, with preamble and gap."""
    return gbps * 1e9 / ((size + 20) * 8) / 1e6


def live(base: HostState, args: argparse.Namespace) -> dict:
    """The engine behind a TPACKET_V3 ring on one core, the sender on another (live_rate pins
    them to the first two CPUs this process may use, so its own pinning is undone for it)."""
    frames = engine_policy.frames(base, 4096, FEW_TUPLES, 64)
    engine = Engine(compile_engine(base), capacity=BATCH, write_frames=False)
    os.sched_setaffinity(0, args.cpus)
    try:
        return afpacket.live_rate(frames, seconds=3.0,
                                  handle=lambda batch: engine.meter(batch, engine_policy.SENDER_OFPORT))  # fmt: skip
    finally:
        os.sched_setaffinity(0, {args.core})


def peers(base: HostState, args: argparse.Namespace) -> dict:
    """The peers on the same core as ours (OVS's PMD thread, testpmd's forwarding lcore); their
    other threads (OVS's main and revalidator threads, testpmd's main lcore) on the others, as
    a user would run them, so this process's pinning is undone for them."""
    os.sched_setaffinity(0, args.cpus)
    try:
        return _peers(base, args)
    finally:
        os.sched_setaffinity(0, {args.core})


def _peers(base: HostState, args: argparse.Namespace) -> dict:
    pipeline = compile_host(base)
    out = {}
    with tempfile.TemporaryDirectory(prefix="andromede-bench-engine-") as tmp:
        pcaps = {}
        for tuples in (FEW_TUPLES, MANY_TUPLES):
            # One frame per tuple: DPDK's pcap driver holds every frame in an mbuf, and a pcap
            # larger than the cache would lower both peers (bench/ovs_dpdk.py's notes).
            pcap = pcaps[tuples] = Path(tmp) / f"{tuples}.pcap"
            write_pcap(pcap, engine_policy.frames(base, tuples, tuples, 64))
            _progress(f"peer: OVS-DPDK, {tuples:,} distinct 5-tuples")
            out[f"ovs-dpdk_{tuples}_tuples"] = _median_peer(
                lambda: ovs_dpdk.run_ovs_dpdk(pcap, pipeline.flows, pipeline.meters, args.peer_seconds, args.core,
                                              distinct_tuples=tuples), args.runs)  # fmt: skip
        _progress("peer: dpdk-testpmd pcap -> null")
        out["testpmd"] = _median_peer(lambda: ovs_dpdk.run_testpmd(pcaps[FEW_TUPLES], args.peer_seconds, args.core),
                                      args.runs)  # fmt: skip
    return out


def _median_peer(run: Callable[[], dict], runs: int) -> dict:
    done = [run() for _ in range(runs)]
    best = dict(done[len(done) // 2])
    best["mpps"] = statistics.median(d["mpps"] for d in done)
    best["runs_mpps"] = [round(d["mpps"], 2) for d in done]
    return best


def _print(r: dict) -> None:
    print(f"\nPacket engine, one core (CPU {r['core']}), {r['frames']:,} 64-byte frames, median of {r['runs']}:")
    print(f"  {'stage':32} {'Mpps':>8}")
    for name, mpps in r["stages"].items():
        print(f"  {name:32} {mpps:8.1f}")
    e2e = f"e2e ({r['tenants']:,} tenants, 1k rules)"
    print(f"  {e2e:32} {r['e2e_mpps']:8.1f}   verdicts: {r['e2e_verdicts']}")
    print("  e2e by tenants (random per frame): "
          + ", ".join(f"{int(t):,}: {m:.1f}" for t, m in r["e2e_by_tenants_mpps"].items()))
    print("  e2e as the peers run (one tenant), by distinct 5-tuples: "
          + ", ".join(f"{int(t):,}: {m:.1f}" for t, m in r["e2e_like_peers_mpps"].items()))
    print(f"\n  {'frame bytes':>12} {'e2e Mpps':>9} {'10GbE':>7} {'25GbE':>7}")
    for size, mpps in r["by_size_mpps"].items():
        print(f"  {size:>12} {mpps:9.1f} {line_rate_mpps(10, int(size)):7.2f} {line_rate_mpps(25, int(size)):7.2f}")
    if "live" in r:
        live = r["live"]
        print(f"\n  live AF_PACKET on a veth pair: {live.get('rx_mpps', 0):.2f} Mpps received and metered "
              f"({live.get('tx_mpps', 0):.2f} sent, {live.get('drops', 0)} dropped by the kernel)")  # fmt: skip
    for name, p in r["peer"].items():
        extra = {k_: v for k_, v in p.items() if k_ not in ("mpps", "runs_mpps")}
        print(f"  peer {name:28} {p['mpps']:8.2f} Mpps  {extra}")
    targets = (f"targets: 25GbE line rate (37.2 Mpps) end to end at 64 B: {'met' if r['e2e_mpps'] >= 37.2 else 'NOT met'}; "
               f"never below 10GbE (14.88): {'met' if min(r['by_size_mpps'].values()) >= 14.88 else 'NOT met'}")
    print(f"\n  {targets}")


def _chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(r["stages"]) + [f"e2e, {r['tenants']:,} tenants"]
    values = list(r["stages"].values()) + [r["e2e_mpps"]]
    names += [f"e2e, 1 tenant, {int(t):,} tuples" for t in r["e2e_like_peers_mpps"]]
    values += list(r["e2e_like_peers_mpps"].values())
    names += [f"peer {n}" for n in r["peer"]]
    values += [p["mpps"] for p in r["peer"].values()]
    left.barh(names[::-1], values[::-1], color=["tab:gray" if n.startswith("peer") else "tab:blue" for n in names[::-1]])
    left.axvline(line_rate_mpps(25, 64), color="tab:red", ls="--", label="25GbE at 64 B")
    left.axvline(line_rate_mpps(10, 64), color="tab:orange", ls="--", label="10GbE at 64 B")
    left.set_xlabel("Mpps, one core (higher is better)")
    left.set_title("Per stage, 64-byte frames")
    left.legend(loc="lower right")
    sizes = [int(s) for s in r["by_size_mpps"]]
    right.plot(sizes, list(r["by_size_mpps"].values()), "o-", label="engine e2e")
    fine = np.linspace(64, 1518, 200)
    for gbps in LINE_RATES_GBPS:
        right.plot(fine, [line_rate_mpps(gbps, s) for s in fine], "--", label=f"{gbps}GbE line rate")
    right.set_xlabel("frame size, bytes (FCS included)")
    right.set_ylabel("Mpps")
    right.set_yscale("log")
    right.set_title("End to end against frame size")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
