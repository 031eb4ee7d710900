"""The compute reconciler's promise that a VM runs only once its ports are wired, as Nova waits
for network-vif-plugged: started paused, FAILED with a clear message past the wire timeout
(never stuck in "starting"), and resumed as soon as the network side wires its port.

Real QEMU (the test guest) and a real tap, in a network namespace this test makes and removes;
br-int is a recording double (tests/compute_wiring.py), so the test decides when the port is
wired.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import netns

from agent.lab.guest import build

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def test_a_vm_waits_paused_for_its_ports_fails_past_the_timeout_and_resumes_once_wired(
    tmp_path: Path,
) -> None:
    guest = build()
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(guest.kernel, images / "vmlinuz")
    shutil.copy(guest.initrd, images / "initrd.gz")
    name = f"an{secrets.token_hex(3)}-wire"
    netns.create(name)
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, str(REPO / "tests" / "compute_wiring.py"),
             str(tmp_path), str(images)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        netns.remove(name)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = {s["step"]: s for s in map(json.loads, done.stdout.splitlines())}
    waiting = steps["not wired"]
    assert waiting["status"] == "FAILED" and waiting["code"] == 4  # DEADLINE_EXCEEDED
    assert "port(s) p1 not wired 1 s after the VM started" in waiting["message"]
    assert waiting["qemu_status"] == "prelaunch"  # paused since its start: the guest never ran
    assert list(waiting["plugged"].values()) == ["p1"]  # its tap on br-int, with the port's id
    running = steps["wired"]
    assert running["status"] == "APPLIED" and running["qemu_status"] == "running"
    assert running["pid"] == waiting["pid"]  # the same QEMU, resumed
    gone = steps["deleted"]
    assert gone["pid"] == 0 and gone["plugged"] == {}
