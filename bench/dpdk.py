"""The peer: DPDK's ACL library, driven through its `dpdk-test-acl` tool.

Each function runs the tool as a process pinned to one core, reads ClassBench files
directly (the same files we read), and parses what it prints. Anything the tool does
not print as expected raises `DpdkError` with the command and the end of its output.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BINARY = "dpdk-test-acl"
TIMEOUT_S = 300  # the slowest build seen (fw5_10k) takes about 4 s

BUILD_METHOD = (
    "median wall time of dpdk-test-acl with the rules and --tracenum=1 --iter=1, minus the "
    "median wall time of the same with only the first rule (process start-up cancels out; "
    "rule-file parsing is included)"
)


class DpdkError(RuntimeError):
    """dpdk-test-acl is missing, failed, or printed something we cannot read."""


@dataclass(frozen=True, slots=True)
class Search:
    """One timed search loop as dpdk-test-acl reports it."""

    packets: int
    cycles_per_pkt: float
    pkt_per_sec: float


def best_simd_alg(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The fastest --alg this CPU runs (DPDK's own choice when it may use 512-bit SIMD)."""
    flags = set()
    for line in Path(cpuinfo).read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512x32"
    return "avx2" if "avx2" in flags else "sse"


def _command(rules: Path, trace: Path, tracenum: int, iters: int, alg: str, core: int,
             verbose: int = 0, acl_debug: bool = False) -> list[str]:
    binary = shutil.which(BINARY)
    if binary is None:
        raise DpdkError(f"{BINARY} not found on PATH; install the Debian package dpdk-dev")
    # lib.acl's debug log is the only place the table's memory footprint is printed.
    log = ["--log-level=*:3", "--log-level=lib.acl:8"] if acl_debug else ["--log-level=3"]
    # DPDK caps SIMD at 256 bits unless told otherwise, and then refuses the avx512 algs.
    simd = ["--force-max-simd-bitwidth=512"] if alg.startswith("avx512") else []
    # --no-shconf: without it a second DPDK process on the machine (another bench, a test) aborts.
    return [binary, "--no-huge", "-m", "1024", "--no-pci", "--no-shconf", "-l", str(core), *log, *simd, "--",
            f"--rulesf={rules}", f"--tracef={trace}", f"--tracenum={tracenum}", f"--iter={iters}",
            f"--verbose={verbose}", f"--alg={alg}"]


def _run(cmd: list[str]) -> tuple[str, float]:
    """Output and wall seconds; a failed run is an error, never a silent zero."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DpdkError(f"{' '.join(cmd)} ran over {TIMEOUT_S} s") from None
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise DpdkError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-2000:]}")
    return out, wall


def _number(pattern: str, out: str, cmd: list[str]) -> float:
    m = re.search(pattern, out)
    if not m:
        raise DpdkError(f"cannot find /{pattern}/ in the output of {' '.join(cmd)}:\n{out[-2000:]}")
    return float(m.group(1))


def search(rules: Path, trace: Path, tracenum: int, iters: int, alg: str, core: int) -> Search:
    """Classify the first `tracenum` trace lines `iters` times; the tool times only that loop."""
    cmd = _command(rules, trace, tracenum, iters, alg, core)
    out, _ = _run(cmd)
    result = Search(
        packets=int(_number(r"(\d+)\s+pkts", out, cmd)),
        cycles_per_pkt=_number(r"([\d.]+)\s+cycles/pkt", out, cmd),
        pkt_per_sec=_number(r"([\d.]+)\s+pkt/sec", out, cmd),
    )
    if result.packets < tracenum * iters:
        raise DpdkError(f"{BINARY} classified {result.packets} packets, expected {tracenum * iters}")
    return result


def results(rules: Path, trace: Path, tracenum: int, alg: str, core: int) -> np.ndarray:
    """The rule index DPDK picks for each trace line (-1: no match), to check it agrees."""
    cmd = _command(rules, trace, tracenum, 1, alg, core, verbose=2)
    out, _ = _run(cmd)
    # One line per packet, in trace order: "ipv4_5tuple: 1, category: 0, result: 261".
    found = re.findall(r"ipv4_5tuple:\s*\d+,\s*category:\s*0,\s*result:\s*(\d+)", out)
    if len(found) != tracenum:
        raise DpdkError(f"{BINARY} printed {len(found)} results, expected {tracenum}")
    picked = np.array(found, dtype=np.int64)
    picked[picked == 0xFFFFFFFF] = -1
    return picked.astype(np.int32)


def build(rules: Path, trace: Path, alg: str, core: int, runs: int) -> dict:
    """Build time (see BUILD_METHOD) and the memory rte_acl reports for the table."""
    with tempfile.TemporaryDirectory() as tmp:
        one_rule = Path(tmp) / "one_rule"
        first = next(ln for ln in rules.read_text().splitlines() if ln.strip())
        one_rule.write_text(first + "\n")
        full = _command(rules, trace, 1, 1, alg, core, acl_debug=True)
        base = _command(one_rule, trace, 1, 1, alg, core, acl_debug=True)
        full_walls, base_walls = [], []
        for _ in range(runs):  # interleaved, so drift in machine load hits both sides
            out, wall = _run(full)
            full_walls.append(wall)
            base_walls.append(_run(base)[1])
    ms = (statistics.median(full_walls) - statistics.median(base_walls)) * 1e3
    return {
        "build_ms": ms,  # can come out below zero for tiny tables: that is the noise
        "table_bytes": int(_number(r"runtime memory footprint[\s\S]*?total:\s*(\d+)\s*bytes", out, full)),
        "build_temp_bytes": int(_number(r"memory consumed:\s*(\d+)", out, full)),
    }
