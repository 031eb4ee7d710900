"""`python -m bench classify` run for real: our classifier and dpdk-test-acl on acl1_1k."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.dpdk import best_simd_alg
from dataplane.classbench import read_rules, read_trace
from dataplane.compile.classifier import brute_force

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"rules", "packets", "mismatches", "build_ms", "mpps", "table_bytes", "peer"}

pytestmark = pytest.mark.integration


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "classify", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_bench_matches_brute_force_and_reports_ours_beside_dpdk(tmp_path, classbench_dir):
    figures, dump = tmp_path / "figures.json", tmp_path / "dump.txt"
    rules, trace = classbench_dir / "acl1_1k", classbench_dir / "acl1_1k_trace"
    run = bench("--rules", str(rules), "--trace", str(trace), "--peer", "dpdk",
                "--json", str(figures), "--dump", str(dump))
    assert run.returncode == 0, run.stderr

    result = json.loads(figures.read_text())
    assert REQUIRED <= result.keys()
    assert result["mismatches"] == 0
    assert result["rules"] == 878 and result["mpps"] > 0 and result["table_bytes"] > 0
    for alg in ("scalar", best_simd_alg()):
        assert result["peer"][alg]["mpps"] > 0
        assert result["peer"][alg]["mismatches"] == 0  # DPDK agrees: same rules, same semantics

    table, headers = read_rules(rules), read_trace(trace).headers
    dumped = np.array(dump.read_text().split(), dtype=np.int32)
    np.testing.assert_array_equal(dumped, brute_force(table, headers))
    assert "ours" in run.stdout and f"dpdk {best_simd_alg()}" in run.stdout


def test_missing_rules_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_rules"
    run = bench("--rules", str(missing), "--trace", str(missing))
    assert run.returncode == 2
    assert f"rules file {missing} not found" in run.stderr
    assert "Traceback" not in run.stderr
