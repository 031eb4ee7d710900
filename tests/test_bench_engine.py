"""`python -m bench engine` run for real, small: every stage measured, every e2e frame allowed
and delivered, the table, the JSON and the PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = {"parse", "classify_classbench_1k", "classify_security_groups", "trtcm_64k", "counters_64k"}

pytestmark = pytest.mark.integration


def test_bench_reports_every_stage_end_to_end_and_by_frame_size(tmp_path: Path) -> None:
    figures, chart = tmp_path / "engine.json", tmp_path / "engine.png"
    run = subprocess.run([sys.executable, "-m", "bench", "engine", "--frames", "16384", "--runs", "1",
                          "--tenants", "64", "--no-live", "--json", str(figures), "--png", str(chart)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(figures.read_text())
    assert set(result["stages"]) == STAGES and all(v > 0 for v in result["stages"].values())
    assert result["e2e_mpps"] > 0 and result["peer"] == {}
    assert result["e2e_verdicts"] == {"output": 16384}  # the policy allows every frame
    assert set(result["by_size_mpps"]) == {"64", "128", "256", "512", "1024", "1518"}
    assert result["line_rate_mpps"]["10GbE"]["64"] == pytest.approx(14.88, abs=0.01)
    assert chart.stat().st_size > 10_000
    assert "e2e (64 tenants, 1k rules)" in run.stdout and "targets:" in run.stdout


def test_bad_arguments_are_a_clear_error() -> None:
    run = subprocess.run([sys.executable, "-m", "bench", "engine", "--runs", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "--runs and --tenants must be >= 1" in run.stderr
    assert "Traceback" not in run.stderr
