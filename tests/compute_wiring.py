"""Run inside a test's own network namespace by tests/test_compute_reconcile.py: the compute
reconciler over a real store, a real QEMU (the test guest) and a real tap, with a recording
double for br-int whose ports get wired only when the test says so.

    python tests/compute_wiring.py STATE_DIR IMAGES_DIR

Prints one JSON line per step to stdout; everything it started is ended before it exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from agent import logs
from agent.compute import qemu
from agent.compute.kvm import KvmResult
from agent.compute.reconcile import ComputeReconciler
from agent.config import QemuConfig
from agent.reconcile import Engine
from agent.store import Delete, Put, Status, Store
from andromede.v1 import compute_pb2, network_pb2


class Switch:
    """br-int as a recording double: what was plugged and unplugged."""

    def __init__(self) -> None:
        self.plugged: dict[str, str] = {}

    def plug_vm_taps(self, interfaces: dict[str, str]) -> None:
        self.plugged.update(interfaces)

    def unplug(self, names: list[str]) -> None:
        for name in names:
            self.plugged.pop(name, None)


def main(state_dir: Path, images: Path) -> None:
    logs.configure("json", "info", stream=sys.stderr)  # stdout is for the steps
    wired: set[str] = set()
    switch = Switch()
    config = QemuConfig(images_dir=images, run_dir=state_dir / "run", wire_timeout_s=1.0)
    store = Store(state_dir / "state.sqlite3")
    reconciler = ComputeReconciler(config, state_dir, KvmResult(False, "test"), switch=switch,
                                   wired=lambda: frozenset(wired))  # fmt: skip
    engine = Engine(store, [reconciler], backoff_base=0.2, backoff_max=0.5, jitter=0)
    port = network_pb2.Port(id="p1", tenant_id="t", network_id="n1", mac="fa:16:3e:00:00:01",
                            vm_nic=network_pb2.VmNicBinding(vm_id="vm1", nic_id="nic0"))  # fmt: skip
    vm = compute_pb2.Vm(id="vm1", tenant_id="t", vcpus=1, memory_mb=128,
                        kernel=compute_pb2.ImageRef(path="vmlinuz"),
                        initrd=compute_pb2.ImageRef(path="initrd.gz"),
                        kernel_cmdline="console=ttyS0 quiet panic=-1", shutdown_timeout_s=1,
                        nics=[compute_pb2.VmNic(id="nic0", port_id="p1")])  # fmt: skip
    store.commit([Put("network", "n1", network_pb2.TenantNetwork(id="n1", tenant_id="t", vni=7,
                                                                 mtu=1400).SerializeToString()),
                  Put("port", "p1", port.SerializeToString()),
                  Put("vm", "vm1", vm.SerializeToString())], "r1")  # fmt: skip

    def step(name: str) -> None:
        obj = store.get("vm", "vm1")
        runtime = reconciler.runtimes().get("vm1", compute_pb2.VmRuntime())
        print(json.dumps({"step": name, "status": obj.status.name if obj else None,
                          "code": obj.code if obj else 0, "message": obj.message if obj else "",
                          "qemu_status": runtime.qemu_status, "pid": runtime.pid,
                          "plugged": switch.plugged}), flush=True)  # fmt: skip

    def passes_until(done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the reconciler did not get there")
            engine.run_pass()
            time.sleep(0.1)

    try:
        passes_until(lambda: store.get("vm", "vm1").status == Status.FAILED, 20)
        step("not wired")
        wired.add("p1")
        passes_until(lambda: store.get("vm", "vm1").status == Status.APPLIED, 20)
        step("wired")
    finally:
        pid = reconciler.runtimes().get("vm1", compute_pb2.VmRuntime()).pid
        store.commit([Delete("vm", "vm1")], "r2")
        for _ in range(100):  # the guest may still be booting: the power button, then 1 s
            if engine.run_pass().acked:
                break
            time.sleep(0.1)
        step("deleted")
        if pid and qemu.is_vm(pid, "vm1", qemu.start_time(pid) or 0):  # a test failed: end it
            os.kill(pid, signal.SIGKILL)
        reconciler.close()
        store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
