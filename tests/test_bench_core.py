"""`python -m bench core` run for real: every figure the agent-core issue asks for, with its peer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_bench_core_prints_and_writes_every_figure_beside_its_peer(tmp_path: Path) -> None:
    figures = tmp_path / "core.json"
    done = subprocess.run([sys.executable, "-m", "bench", "core", "--runs", "1", "--json",
                           str(figures)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("one batch vs one by one", "steady vs snapshot", "256 watches vs none"):
        assert row in done.stdout
    result = json.loads(figures.read_text())
    batch, passes, streams = result["batch"], result["pass"], result["streams"]
    assert batch["objects"] == 1_000 and batch["batch_ms"] > 0 and batch["one_by_one_ms"] > 0
    assert passes["objects"] == 10_000 and passes["steady_pass_ms"] > 0
    assert (streams["streams_held"], streams["streams_refused"]) == (4, 252)
    assert streams["flooded_median_ms"] > 0 and streams["quiet_median_ms"] > 0
