"""`python -m bench classify`: the compiled classifier on ClassBench sets, optionally beside DPDK.

For one set (or `--all` 24, each on its trace and on 1M uniformly random headers): build
time, table memory, Numba compile time (cold and cached), one-rule update time and
throughput on one core and with two threads (each on its own core, half the batch each),
every result checked against the brute-force reference. With `--peer dpdk`, dpdk-test-acl classifies the same files on
the same core in the same run, its runs alternating with ours. Files are read, and the
reference computed, outside every timed region. Exit 1 on any mismatch, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import dpdk
from dataplane.classbench import ClassBenchError, read_rules, read_trace, write_trace
from dataplane.compile.classifier import Classifier, brute_force
from dataplane.policy import Field, Masked, Table

REPO = Path(__file__).resolve().parents[1]
LOOKUPS = 1_000_000  # per timed run: the trace is tiled (DPDK: iterated) up to at least this
PROBE_TIMEOUT_S = 300  # a cold compile takes seconds; far longer means something hangs
UPDATES = 25  # add/remove pairs timed; each is cheap, the median wants many
SET_NAME = re.compile(r"^(acl|fw|ipc)(\d+)_(1k|10k)$")
RANDOM_WITH_ALL = 1_000_000  # random headers per set with --all, beside its trace


class BenchError(Exception):
    """Bad input or a failed measurement: the message says what and where."""


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("classify", help="classifier throughput, build, memory and updates, beside DPDK")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--rules", help="rule file, or a set name (acl1_1k) in the ClassBench directory")
    what.add_argument("--all", action="store_true", help="every ClassBench set found, with a summary")
    packets = p.add_mutually_exclusive_group()
    packets.add_argument("--trace", help="trace file (default: the rules argument + '_trace')")
    packets.add_argument("--random", type=int, metavar="N", help="N uniformly random headers instead of a trace")
    p.add_argument("--seed", type=int, default=0, help="seed for --random")
    p.add_argument("--peer", choices=["dpdk"], help="also run dpdk-test-acl, scalar and best SIMD alg")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side, median reported (default 5)")
    p.add_argument("--core", type=int, default=1, help="CPU both sides are pinned to (default 1)")
    p.add_argument("--dump", type=Path, help="write our result per header: first matching rule or -1")
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument("--png", type=Path, help="bar chart of Mpps per set")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
        # The second thread's core, found before this process is pinned to args.core.
        args.other_core = next((c for c in sorted(os.sched_getaffinity(0)) if c != args.core), None)
        os.sched_setaffinity(0, {args.core})
        sets = _all_sets() if args.all else [_one_set(args)]
        algs = ["scalar", dpdk.best_simd_alg()] if args.peer else []
        compile_ms = compile_times(sets[0][1])
        results = {}
        for name, rules, trace in sets:
            results[name] = _run_set(name, rules, trace, algs, args)
            if args.all:
                results[f"{name}_random"] = _run_set(f"{name}_random", rules, RANDOM_WITH_ALL, algs, args)
    except (BenchError, ClassBenchError, dpdk.DpdkError) as e:
        print(f"bench classify: error: {e}", file=sys.stderr)
        return 2
    _report(results, compile_ms, args)
    bad = {name: r["mismatches"] for name, r in results.items() if r["mismatches"]}
    if bad:
        print(f"bench classify: FAILED: results differ from brute force: {bad} (headers wrong per set)",
              file=sys.stderr)
        return 1
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.runs < 1:
        raise BenchError(f"--runs must be at least 1, got {args.runs}")
    if args.random is not None and args.random < 1:
        raise BenchError(f"--random must be at least 1, got {args.random}")
    if args.all and (args.trace or args.random or args.dump):
        raise BenchError("--all takes no --trace, --random or --dump")
    if args.core not in os.sched_getaffinity(0):
        raise BenchError(f"--core {args.core} is not one of the CPUs this process may use: "
                         f"{sorted(os.sched_getaffinity(0))}")


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- inputs ------------------------------------------------------------------------------

def classbench_dir() -> Path:
    return Path(os.environ.get("ANDROMEDE_CLASSBENCH", REPO.parent / "shared" / "classbench"))


def _resolve(given: str, what: str) -> Path:
    """A path as given, or else a bare name inside the ClassBench directory."""
    path = Path(given)
    if path.is_file():
        return path
    if path.name != given:
        raise BenchError(f"{what} {given} not found")
    if (classbench_dir() / given).is_file():
        return classbench_dir() / given
    raise BenchError(f"{what} {given!r} not found, neither here nor in the ClassBench directory "
                     f"{classbench_dir()} (ANDROMEDE_CLASSBENCH overrides it)")


def _one_set(args: argparse.Namespace) -> tuple[str, Path, Path | int]:
    rules = _resolve(args.rules, "rules file")
    if args.random is not None:
        return f"{rules.name}_random{args.random}", rules, args.random
    return rules.name, rules, _resolve(args.trace or f"{args.rules}_trace", "trace file")


def _all_sets() -> list[tuple[str, Path, Path]]:
    root = classbench_dir()
    found = [p for p in root.glob("*") if SET_NAME.match(p.name) and Path(f"{p}_trace").is_file()]
    if not found:
        raise BenchError(f"no ClassBench sets (acl1_1k + acl1_1k_trace, ...) in {root}; "
                         "set ANDROMEDE_CLASSBENCH to the directory that has them")

    def order(p: Path) -> tuple:
        family, number, size = SET_NAME.match(p.name).groups()
        return ("acl", "fw", "ipc").index(family), int(number), size == "10k"

    return [(p.name, p, Path(f"{p}_trace")) for p in sorted(found, key=order)]


def random_headers(table: Table, n: int, seed: int) -> np.ndarray:
    """Uniform addresses and ports; half the protocols are ones the rules name, so
    protocol-specific rules get a fair chance, half are any byte."""
    rng = np.random.default_rng(seed)
    named = sorted({m.value for r in table.rules
                    if isinstance(m := r.match(Field.IP_PROTO), Masked) and m.mask == 0xFF}) or [0]
    proto = np.where(rng.random(n) < 0.5, rng.choice(named, n), rng.integers(0, 256, n))
    cols = (rng.integers(0, 2**32, n), rng.integers(0, 2**32, n),
            rng.integers(0, 2**16, n), rng.integers(0, 2**16, n), proto)
    return np.stack(cols, axis=1).astype(np.uint32)


# --- measurements ------------------------------------------------------------------------

_PROBE = """
import json, sys, time
import numba, numpy as np  # numba's own import is not our compile time: done before timing
from dataplane.classbench import read_rules
from dataplane.policy import Table
tiny = Table(read_rules(sys.argv[1]).rules[:16])
headers = np.zeros((64, 5), dtype=np.uint32)
def once():
    start = time.perf_counter()
    from dataplane.compile.classifier import Classifier
    Classifier.build(tiny).classify(headers)
    return time.perf_counter() - start
first = once()
print(json.dumps({"first": first, "warm": once()}))
"""


def compile_times(rules: Path) -> dict:
    """Numba compile cost: import of the classifier + build + first classify of a tiny table,
    minus the same warm, in a fresh process with an empty cache (cold), then with that cache."""
    _progress("numba compile time, cold and cached (subprocesses)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("cold", "cached"):
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            try:
                proc = subprocess.run([sys.executable, "-c", _PROBE, str(rules)], cwd=REPO, env=env,
                                      capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BenchError(f"compile-time probe ({kind}) ran over {PROBE_TIMEOUT_S} s") from None
            if proc.returncode != 0:
                raise BenchError(f"compile-time probe failed:\n{proc.stderr[-2000:]}")
            t = json.loads(proc.stdout.splitlines()[-1])
            out[kind] = (t["first"] - t["warm"]) * 1e3
    return out


def _updates(clf: Classifier, table: Table, headers: np.ndarray, truth: np.ndarray) -> tuple[dict, np.ndarray]:
    """One-rule updates on the full table, in us: adding a rule and removing it again (a
    copy of the middle rule), and removing rules the table was built with (spread over
    the table, each put back untimed). Medians, and the worst, which shows the cost of
    any rebuild an update triggers; `rebuilds` counts those. Also which headers the
    updated classifier then gets wrong."""
    rule = table.rules[len(table) // 2]
    clf.remove(clf.add(rule))  # warm-up: the first call may compile
    adds, removes, removes_built = [], [], []
    renamed = {}
    rebuilds = clf.rebuilds
    for k in range(UPDATES):
        start = time.perf_counter()
        rule_id = clf.add(rule)
        added = time.perf_counter()
        clf.remove(rule_id)
        adds.append(added - start)
        removes.append(time.perf_counter() - added)
        victim = (k * len(table)) // UPDATES
        start = time.perf_counter()
        clf.remove(victim)
        removes_built.append(time.perf_counter() - start)
        renamed[clf.add(table.rules[victim])] = victim  # back, under a new id, same place in the order
    got = clf.classify(headers)
    got = np.array([renamed.get(int(i), int(i)) for i in got], dtype=np.int32)
    us = 1e6
    return {"add": statistics.median(adds) * us, "remove": statistics.median(removes) * us,
            "remove_built": statistics.median(removes_built) * us,
            "add_max": max(adds) * us, "remove_max": max(removes) * us, "remove_built_max": max(removes_built) * us,
            "rebuilds": clf.rebuilds - rebuilds}, got != truth


def _run_set(name: str, rules: Path, trace: Path | int, algs: list[str], args: argparse.Namespace) -> dict:
    table = read_rules(rules)
    if not len(table):
        raise BenchError(f"{rules} holds no rules")
    with tempfile.TemporaryDirectory() as tmp:
        random = isinstance(trace, int)
        if random:
            headers = random_headers(table, trace, args.seed)
            trace = Path(tmp) / f"{name}_trace"
            write_trace(trace, headers)  # the peer reads files
        else:
            headers = read_trace(trace).headers
        if not len(headers):
            raise BenchError(f"{trace} holds no headers")
        result, ours = measure(name, rules, trace, table, headers, algs, args.runs, args.core, args.other_core)
    result.update(rules_file=str(rules), trace_file=None if random else str(trace),
                  random_seed=args.seed if random else None)
    if args.dump:
        args.dump.write_text("".join(f"{v}\n" for v in ours))
    return result


def measure(name: str, rules: Path, trace: Path, table: Table, headers: np.ndarray,
            algs: list[str], runs: int, core: int, other_core: int | None) -> tuple[dict, np.ndarray]:
    """Every figure for one set, and our result per header."""
    n = len(headers)
    reps = -(-LOOKUPS // n)
    _progress(f"{name}: {len(table)} rules, {n} headers; building")
    Classifier.build(table)  # the first build may pay for JIT compiling, timed apart
    builds = []
    for _ in range(runs):
        start = time.perf_counter()
        clf = Classifier.build(table)
        builds.append(time.perf_counter() - start)

    _progress(f"{name}: brute-force reference")
    truth = brute_force(table, headers)
    ours = clf.classify(headers)
    wrong = ours != truth  # per header, wrong in any run below
    _progress(f"{name}: one-rule updates")
    updates, wrong_after_updates = _updates(Classifier.build(table), table, headers, truth)
    wrong |= wrong_after_updates

    tiled, tiled_truth = np.tile(headers, (reps, 1)), np.tile(truth, reps)
    seconds, searches = [], {alg: [] for alg in algs}
    for i in range(runs):  # alternate sides so drift in machine state hits all alike
        _progress(f"{name}: throughput run {i + 1}/{runs}")
        start = time.perf_counter()
        out = clf.classify(tiled)
        seconds.append(time.perf_counter() - start)
        wrong |= (out != tiled_truth).reshape(reps, n).any(axis=0)
        for alg in algs:
            searches[alg].append(dpdk.search(rules, trace, n, reps, alg, core))

    mpps = n * reps / statistics.median(seconds) / 1e6
    two_threads = None if other_core is None else _two_threads(clf, tiled, runs, (core, other_core))
    peer = {}
    for alg in algs:
        _progress(f"{name}: dpdk {alg} build time and results")
        peer[alg] = _peer(alg, searches[alg], rules, trace, truth, core, runs)
        peer[alg]["ours_over_peer"] = mpps / peer[alg]["mpps"]
    return {
        "set": name, "rules": len(table), "packets": n, "lookups_per_run": n * reps,
        "runs": runs, "core": core,
        "mismatches": int(wrong.sum()),
        "build_ms": statistics.median(builds) * 1e3, "build_ms_runs": [s * 1e3 for s in builds],
        "table_bytes": int(clf.table_bytes),
        "update_us": updates,
        "mpps": mpps, "ns_per_pkt": 1e3 / mpps, "mpps_runs": [n * reps / s / 1e6 for s in seconds],
        "mpps_2_threads": two_threads,
        "peer": peer,
    }, ours


def _two_threads(clf: Classifier, headers: np.ndarray, runs: int, cores: tuple[int, int]) -> float:
    """Mpps of the batch split in halves, each classified by a thread on its own core (the
    kernels release the GIL): median of `runs`."""
    halves = np.array_split(headers, 2)
    table = clf.table
    started = threading.Barrier(3)

    def half(i: int) -> None:
        os.sched_setaffinity(0, {cores[i]})  # this thread only
        started.wait()
        table.classify(halves[i])

    seconds = []
    for _ in range(runs):
        threads = [threading.Thread(target=half, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        started.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        seconds.append(time.perf_counter() - start)
        started.reset()
    return len(headers) / statistics.median(seconds) / 1e6


def _peer(alg: str, searches: list[dpdk.Search], rules: Path, trace: Path, truth: np.ndarray,
          core: int, runs: int) -> dict:
    """DPDK's figures for one alg: throughput from the alternating runs, then build time,
    memory, and its results checked against the same reference as ours."""
    rates = [s.pkt_per_sec / 1e6 for s in searches]
    mpps = statistics.median(rates)
    return {
        "mpps": mpps, "ns_per_pkt": 1e3 / mpps, "mpps_runs": rates,
        "cycles_per_pkt": statistics.median(s.cycles_per_pkt for s in searches),
        **dpdk.build(rules, trace, alg, core, runs),
        "build_method": dpdk.BUILD_METHOD,
        "mismatches": int((dpdk.results(rules, trace, len(truth), alg, core) != truth).sum()),
    }


# --- output ------------------------------------------------------------------------------

def _report(results: dict, compile_ms: dict, args: argparse.Namespace) -> None:
    for r in results.values():
        _print_set(r)
    if len(results) > 1:
        _print_summary(results)
    print(f"numba compile: cold {compile_ms['cold']:.0f} ms, cached {compile_ms['cached']:.0f} ms")
    if args.json:
        body = {"sets": results} if args.all else next(iter(results.values()))
        args.json.write_text(json.dumps({**body, "compile_ms": compile_ms}, indent=2))
    if args.png:
        _chart(results, args.png)


def _print_set(r: dict) -> None:
    print(f"\n{r['set']}: {r['rules']} rules, {r['packets']} headers x{r['lookups_per_run'] // r['packets']}"
          f" = {r['lookups_per_run']:,} lookups/run, median of {r['runs']} on core {r['core']};"
          f" {r['mismatches']} mismatches")
    print(f"{'':16}{'Mpps':>9}{'ns/pkt':>9}{'build ms':>10}{'memory KiB':>12}{'ours/peer':>11}{'wrong':>7}")
    print(f"{'ours':16}{r['mpps']:9.2f}{r['ns_per_pkt']:9.2f}{r['build_ms']:10.2f}"
          f"{r['table_bytes'] / 1024:12.1f}{'-':>11}{r['mismatches']:7d}")
    for alg, p in r["peer"].items():
        print(f"{'dpdk ' + alg:16}{p['mpps']:9.2f}{p['ns_per_pkt']:9.2f}{p['build_ms']:10.2f}"
              f"{p['table_bytes'] / 1024:12.1f}{p['ours_over_peer']:11.2f}{p['mismatches']:7d}")
    if r["mpps_2_threads"] is not None:
        print(f"ours with 2 threads (half the batch each, one per core): {r['mpps_2_threads']:.2f} Mpps, "
              f"{r['mpps_2_threads'] / r['mpps']:.2f}x one thread")
    u = r["update_us"]
    print(f"one-rule update, median (worst) of {UPDATES}: add {u['add']:.1f} ({u['add_max']:.0f}) us, "
          f"remove it {u['remove']:.1f} ({u['remove_max']:.0f}) us, remove a built rule "
          f"{u['remove_built']:.1f} ({u['remove_built_max']:.0f}) us; {u['rebuilds']} rebuilds")


def _print_summary(results: dict) -> None:
    algs = list(next(iter(results.values()))["peer"])
    head = "".join(f"{a + ' Mpps':>16}{'ours/' + a:>16}" for a in algs)
    dpdk_build = f"{'dpdk build ms':>15}" if algs else ""  # the first alg's; all are in the JSON
    print(f"\n{'set':17}{'rules':>7}{'ours Mpps':>11}{'2 threads':>11}{head}{'build ms':>10}{dpdk_build}"
          f"{'update us':>11}{'wrong':>7}")
    for name, r in results.items():
        cols = "".join(f"{r['peer'][a]['mpps']:16.2f}{r['peer'][a]['ours_over_peer']:16.2f}" for a in algs)
        build = f"{r['peer'][algs[0]]['build_ms']:15.1f}" if algs else ""
        update = r["update_us"]["add"] + r["update_us"]["remove"]
        two = f"{r['mpps_2_threads']:11.2f}" if r["mpps_2_threads"] is not None else f"{'-':>11}"
        print(f"{name:17}{r['rules']:7d}{r['mpps']:11.2f}{two}{cols}{r['build_ms']:10.2f}{build}{update:11.1f}"
              f"{r['mismatches']:7d}")


def _chart(results: dict, path: Path) -> None:
    """Bars of Mpps per set: one panel for the traces, one for random headers (where run)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = {"on the ClassBench traces": [n for n in results if not n.endswith("_random")]}
    if random := [n for n in results if n.endswith("_random")]:
        panels[f"on {RANDOM_WITH_ALL:,} uniformly random headers"] = random
    if not panels["on the ClassBench traces"]:  # one set run with --random
        panels = {"on uniformly random headers": list(results)}
    algs = list(next(iter(results.values()))["peer"])
    width = 0.8 / (1 + len(algs))
    size = max(len(names) for names in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, size * 0.6), 4.5 * len(panels)), squeeze=False)
    for ax, (title, names) in zip(axes[:, 0], panels.items()):
        series = {"ours": [results[s]["mpps"] for s in names]}
        for alg in algs:
            series[f"dpdk {alg}"] = [results[s]["peer"][alg]["mpps"] for s in names]
        for i, (label, values) in enumerate(series.items()):
            ax.bar(np.arange(len(names)) + (i - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(np.arange(len(names)), [n.removesuffix("_random") for n in names], rotation=60, ha="right")
        ax.set_ylabel("Mpps (one core, higher is better)")
        ax.set_title(f"ClassBench classification throughput {title}")
        ax.set_ylim(top=max(max(v) for v in series.values()) * 1.2)  # headroom for the legend
        ax.legend(ncol=len(series), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
