"""`python -m bench compute` run for real on one VM: one simulated host, real OVS, a real agent
over gRPC booting the test guest under QEMU (TCG), beside the same QEMU started by hand; every
figure the bench promises is there and positive, and nothing of the lab is left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.lab.hosts import missing_tools

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration

RUN_KEYS = ("vms", "boot_s", "ready_s", "raw_boot_s", "boot_median_s", "agent_overhead_s",
            "wired_before_marker")  # fmt: skip
POSITIVE = ("boot_s", "ready_s", "raw_boot_s", "boot_median_s")
SAMPLE_KEYS = ("run", "vms", "boot_s", "ready_s", "raw_boot_s", "per_vm_boot_s",
               "per_vm_raw_boot_s", "delete_s", "agent_log", "agent_overhead_s")  # fmt: skip


def _qemu_pids() -> set[int]:
    done = subprocess.run(["pgrep", "-f", "qemu-system-x86_64 .*-name (guest=vm|raw-vm)"],
                          capture_output=True, text=True)  # fmt: skip
    return {int(p) for p in done.stdout.split()}


def test_bench_compute_boots_one_vm_through_the_agent_and_by_hand(tmp_path: Path) -> None:
    missing = missing_tools() + [t for t in ("qemu-system-x86_64",) if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the bench needs {missing}: run scripts/setup.sh", pytrace=False)
    before = _qemu_pids()
    figures = tmp_path / "compute.json"
    try:
        done = subprocess.run([sys.executable, "-m", "bench", "compute", "--vms", "1", "--runs",
                               "1", "--json", str(figures)], cwd=REPO, capture_output=True,
                              text=True, timeout=180)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"python -m bench compute took over 180 s; stderr: {(e.stderr or '')[-3000:]}",
                    pytrace=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"python -m bench compute exited {done.returncode}:\n{done.stderr[-3000:]}",
                    pytrace=False)  # fmt: skip
    assert "wired before marker" in done.stdout, done.stdout
    assert "target agent overhead <= 0.5 s" in done.stdout
    assert "target ports wired no later than the boot marker" in done.stdout
    result = json.loads(figures.read_text())

    assert len(result["runs"]) == 1, result["runs"]
    run = result["runs"][0]
    assert all(key in run for key in RUN_KEYS), sorted(set(RUN_KEYS) - set(run))
    assert run["vms"] == 1
    for key in POSITIVE:
        assert run[key] > 0, (key, run)
    assert run["agent_overhead_s"] == pytest.approx(run["boot_s"] - run["raw_boot_s"], abs=0.002)
    assert run["wired_before_marker"] == (run["ready_s"] <= run["boot_s"])

    assert len(result["samples"]) == 1
    sample = result["samples"][0]
    assert all(key in sample for key in SAMPLE_KEYS), sorted(set(SAMPLE_KEYS) - set(sample))
    assert len(sample["per_vm_boot_s"]) == 1 and len(sample["per_vm_raw_boot_s"]) == 1
    events = sample["agent_log"]
    assert len(events["started_s"]) == 1 and len(events["resumed_s"]) == 1, events
    # The agent resumes a VM only once its port is wired, and is ready once it has.
    assert 0 < events["started_s"][0] <= events["resumed_s"][0] <= run["ready_s"] + 0.05, events

    assert result["agent_cpu_percent"] is not None and result["agent_cpu_percent"] >= 0
    assert result["agent_rss_mb"] > 0
    assert result["qemu_rss_mb_total"] > 0
    assert result["idle"]["vms"] == 1

    targets = result["targets"]
    assert targets["agent_overhead_s_max"] == 0.5
    assert isinstance(targets["met"], bool)
    assert targets["met"] == (targets["agent_overhead_met"] and targets["wired_before_marker_met"])

    # Every QEMU of the bench (the agent's and the raw one) is gone.
    assert not (_qemu_pids() - before), f"QEMU left running: {_qemu_pids() - before}"
