"""`python -m bench compute`: how long the agent takes to boot N VMs, beside QEMU started by hand.

One simulated host (agent/lab/hosts.py: a namespace with its own Open vSwitch) runs a real
`andromede-agent` (agent/lab/agents.py), reached only over gRPC with mutual TLS, as a control
plane would. The bench puts, through the API, one tenant network (VNI 1001) and a default
security group (agent/lab/scenario.py's: ICMP and TCP 22 from its members, everything out),
and the test guest (agent/lab/guest.py, put in the lab's image directory by
agent/lab/vms.py's `install_guest`). For each N of `--vms` (default 1, 4, 8):

- N ports with vm_nic bindings, in one PutPorts, once per N (198.51.100.10 up, distinct MACs);
  the bench waits until the agent has seen them (PENDING: waiting for their VM's tap);
- an **agent run**: PutVms with N VMs in one call (the test guest, 1 vCPU, 128 MiB, one NIC
  each, on its port). From the PutVms answer: `boot_s`, until every guest's serial log (in the
  agent's state directory) shows `ANDROMEDE-GUEST-READY` (the slowest VM; `boot_median_s` is
  the median VM), and `ready_s`, until NodeInfo.applied_generation reaches the PutVms
  generation (every VM running with its port wired). The agent starts each QEMU paused (-S),
  puts its tap on br-int, and resumes it (QMP `cont`) once the network side has installed the
  port's flows; the agent's log says when (`vm.started`, `vm.resumed`, the network passes), and
  those times, relative to the PutVms answer, are kept in each sample's `agent_log`. Then
  DeleteVms (an ACPI power-down, which the guest obeys) and a wait until every VM is gone: its
  QEMU pid, its record in the state directory and its tap (`delete_s`). Its port goes back to
  PENDING, which holds the host's ack, so that wait does not use the ack;
- right after it, a **raw run** of the same N: N `qemu-system-x86_64` processes started
  together by hand inside the host's namespace, with what the agent gives QEMU that matters
  for a boot: the same kernel, initrd, command line, memory, vCPUs and CPU model (`-cpu max`,
  the agent's under TCG), `-accel tcg -M pc -nodefaults -nographic -no-reboot`, the serial
  port to a file, and a virtio NIC on a tap of its own (`-netdev tap,ifname=...,script=no,
  downscript=no`; not on br-int) so the guest's eth0 exists as with the agent; not paused.
  `raw_boot_s`: from just before the first start until every serial file shows the marker
  (the slowest). Then the QEMUs are killed by their pids and their taps removed.

Figures per N (medians of `--runs`, default 3; every measurement under `samples`): `boot_s`,
`boot_median_s`, `ready_s`, `raw_boot_s`, `agent_overhead_s` = boot_s - raw_boot_s, and
`wired_before_marker` = ready_s <= boot_s (the ports were wired no later than the guests
said they were up). Beside them, to read them by: `agent_overhead_paired_median_s`, the
median of each run's own difference (its agent run against the raw run right after it), the
ranges of both boots, and `last_started_s` / `last_resumed_s`, when the agent had started its
last QEMU and sent its last `cont` (from its log): the time the guests were not running yet
because of the agent. `other_qemus` counts the QEMU processes not the bench's running on the
machine when a run began (another lab, a test): they take CPU from the guests measured here,
and the table says so. While the largest N runs, after its first agent run has booted (idle
guests): the agent process's CPU (percent of one core) and RSS over IDLE_SAMPLE_S, measured with
psutil, and the QEMU processes' total RSS and CPU and ovs-vswitchd's CPU then (`idle`).
Each run also counts the CPU seconds the QEMUs, the agent and the OVS daemons used while the
guests booted (`cpu_during_boot`, and `raw_cpu_during_boot` for the raw run): on a machine
with fewer cores than guests, what the agent's side burns is taken from the guests.

Targets: the agent adds at most OVERHEAD_MAX_S (0.5 s) to a raw QEMU boot, for every N; and
the ports are wired no later than the guests' boot marker, for every N.

These machines have no usable KVM (../shared/lab-notes.md): every guest runs under TCG, so N
guests share the machine's cores and a boot takes seconds, longer with N; the raw run is there
so that what the agent adds is read against the same machine under the same load.

Everything is made under the lab's random prefix and removed afterwards, also after a failure,
Ctrl-C or SIGTERM: the QEMUs started here are killed by their pids, the agent is stopped and
the VMs it leaves (they outlive it, by design) ended by the pids in its records, then the lab
goes. A table goes to stdout, progress to stderr, every figure to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import psutil
import structlog

from agent.compute.taps import tap_name
from agent.lab.agents import LabAgent, lab_pki
from agent.lab.hosts import Lab, missing_tools, pid_running, stop_pid
from agent.lab.scenario import _default_group
from agent.lab.vms import READY, GuestImages, LabGuest, install_guest
from andromede.v1 import common_pb2, compute_pb2, network_pb2, node_pb2
from bench.harness import BenchError, median, sigterm_unwinds

DEFAULT_VMS = (1, 4, 8)
MAX_VMS = 64  # addresses .10 up of one /24, and far more than TCG guests these cores can boot
TENANT = "bench"
NETWORK = "net-bench"
GROUP = f"sg-{TENANT}"  # _default_group's id
VNI = 1001
SUBNET = "198.51.100"
MTU = 1450  # the network's (network.proto's default; the guest is told so too)
MEMORY_MB = 128
OVERHEAD_MAX_S = 0.5
BOOT_TIMEOUT_S = 300.0  # TCG guests on two cores: eight together take tens of seconds
DELETE_TIMEOUT_S = 90.0  # an ACPI power-down each, then QEMU ended (shutdown_timeout_s 10)
SETTLE_TIMEOUT_S = 30.0
IDLE_SAMPLE_S = 5.0
POLL_S = 0.01
QEMU = "qemu-system-x86_64"
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _progress(message: str) -> None:
    print(f"bench compute: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class BenchVm:
    """VM i of the bench: its id, port, MAC, address, and its raw run's tap and files."""

    index: int

    @property
    def id(self) -> str:
        return f"vm{self.index:02d}"

    @property
    def port_id(self) -> str:
        return f"port-{self.id}"

    @property
    def mac(self) -> str:
        return f"fa:16:3e:cb:00:{self.index + 1:02x}"

    @property
    def ip_cidr(self) -> str:
        return f"{SUBNET}.{10 + self.index}/24"

    @property
    def raw_tap(self) -> str:
        return f"rawtap{self.index}"

    def port(self) -> network_pb2.Port:
        return network_pb2.Port(
            id=self.port_id, tenant_id=TENANT, network_id=NETWORK, mac=self.mac,
            fixed_ips=[self.ip_cidr.split("/")[0]], security_group_ids=[GROUP],
            vm_nic=network_pb2.VmNicBinding(vm_id=self.id, nic_id="nic0"),
        )  # fmt: skip


class BenchHost:
    """The simulated host, its agent, and the raw QEMUs of the bench; every figure is
    measured here. `close()` removes everything, whatever state it is in."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.host = lab.add_host("h1")
        self.images: GuestImages = install_guest(lab.root / "images")
        self.agent = LabAgent(self.host, lab_pki(lab.root))
        self.raw_dir = lab.root / "raw"
        self._raw: list[subprocess.Popen] = []
        self._raw_taps: list[str] = []
        self._requests = iter(range(1, 1 << 30))

    def _request_id(self) -> str:
        return f"bench-{next(self._requests)}"

    def guest(self, vm: BenchVm) -> LabGuest:
        return LabGuest(vm.id, vm.mac, vm.ip_cidr, self.agent.dir / "run", self.agent.dir / "state")

    def spec(self, vm: BenchVm) -> compute_pb2.Vm:
        spec = self.guest(vm).spec(self.images, vm.port_id, TENANT)
        spec.memory_mb = MEMORY_MB
        return spec

    # --- the control plane's part ----------------------------------------------------------

    def start(self) -> float:
        """Start the agent; put the network and the security group; seconds until applied."""
        self.agent.start()
        api = self.agent.network()
        api.PutNetworks(network_pb2.PutNetworksRequest(
            request_id=self._request_id(),
            networks=[network_pb2.TenantNetwork(id=NETWORK, tenant_id=TENANT, vni=VNI)]),
            timeout=30)  # fmt: skip
        answer = api.PutSecurityGroups(network_pb2.PutSecurityGroupsRequest(
            request_id=self._request_id(), security_groups=[_default_group(TENANT, [])]),
            timeout=30)  # fmt: skip
        return self.agent.wait_applied(answer.generation, timeout=SETTLE_TIMEOUT_S)

    def put_ports(self, vms: Sequence[BenchVm]) -> float:
        """PutPorts of the VMs' ports; seconds until the agent has seen every one of them (a
        vm_nic port without its VM's tap is PENDING, with what it waits for)."""
        api = self.agent.network()
        api.PutPorts(network_pb2.PutPortsRequest(request_id=self._request_id(),
                                                 ports=[v.port() for v in vms]), timeout=30)  # fmt: skip
        began = time.monotonic()
        while True:
            states = [api.GetPort(network_pb2.GetPortRequest(id=v.port_id), timeout=10).port.status
                      for v in vms]  # fmt: skip
            if all(s.state != common_pb2.APPLY_STATE_UNSPECIFIED and s.message for s in states):
                return time.monotonic() - began
            if time.monotonic() - began > SETTLE_TIMEOUT_S:
                raise BenchError(f"the agent did not take up {len(vms)} ports within "
                                 f"{SETTLE_TIMEOUT_S} s: {[str(s) for s in states][:2]}")  # fmt: skip
            time.sleep(0.05)

    def delete_ports(self, vms: Sequence[BenchVm]) -> None:
        answer = self.agent.network().DeletePorts(network_pb2.DeletePortsRequest(
            request_id=self._request_id(), ids=[v.port_id for v in vms]), timeout=30)  # fmt: skip
        self.agent.wait_applied(answer.generation, timeout=SETTLE_TIMEOUT_S)

    # --- the agent's run -------------------------------------------------------------------

    def agent_run(self, vms: Sequence[BenchVm], sample_idle: bool) -> dict:
        """PutVms of `vms` in one call; from its answer until every guest booted and until
        the host applied it; then (with `sample_idle`) the idle figures; then DeleteVms and
        a wait until the VMs are gone."""
        guests = [self.guest(v) for v in vms]
        before = [g.boots() for g in guests]
        others = other_qemus()  # none of ours runs now: the previous run's are gone
        offset = self.agent.log_path.stat().st_size
        compute, node = self.agent.compute(), self.agent.node()
        cpu = self._daemons_cpu()
        answer = compute.PutVms(compute_pb2.PutVmsRequest(
            request_id=self._request_id(), vms=[self.spec(v) for v in vms]), timeout=60)  # fmt: skip
        answered, answered_wall = time.monotonic(), time.time()
        boot: list[float | None] = [None] * len(vms)
        ready: float | None = None
        deadline = answered + BOOT_TIMEOUT_S
        next_look = answered + 2.0
        while ready is None or None in boot:
            now = time.monotonic()
            for i, g in enumerate(guests):
                if boot[i] is None and g.boots() > before[i]:
                    boot[i] = now - answered
            if ready is None:
                info = node.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=10).info
                if info.applied_generation >= answer.generation:
                    ready = time.monotonic() - answered
            if now > deadline:
                raise BenchError(f"{len(vms)} VMs: {sum(b is not None for b in boot)} booted and "
                                 f"the host {'applied' if ready else 'did not apply'} generation "
                                 f"{answer.generation} within {BOOT_TIMEOUT_S:.0f} s; "
                                 f"{self._vm_states(vms)}")  # fmt: skip
            if now > next_look:
                next_look = now + 2.0
                self._fail_fast(vms)
            time.sleep(POLL_S)
        cpu = {k: round(v - cpu[k], 2) for k, v in self._daemons_cpu().items()}
        records = self._records(vms)
        pids = [r.runtime.pid for r in records]
        cpu["qemus_s"] = round(sum(_cpu_s(pid) for pid in pids), 2)
        idle = self._idle(pids) if sample_idle else None
        events = self._events(offset, answered_wall)
        delete_s = self.delete_vms(vms, pids)
        boots = [round(b, 3) for b in boot if b is not None]
        return {
            "vms": len(vms),
            "boot_s": max(boots),
            "boot_median_s": median(boots),
            "ready_s": round(ready, 3),
            "per_vm_boot_s": boots,
            "wired_before_marker": ready <= max(boots),
            "delete_s": round(delete_s, 3),
            "agent_log": events,
            "cpu_during_boot": cpu,
            "other_qemus": others,
            "loadavg_1m": round(os.getloadavg()[0], 2),
            **({"idle": idle} if idle is not None else {}),
        }

    def _daemons_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the agent and by the host's OVS daemons."""
        return {
            "agent_s": _cpu_s(self.agent.proc.pid),
            "ovs_vswitchd_s": _cpu_s(self.host.pid("ovs-vswitchd")),
            "ovsdb_server_s": _cpu_s(self.host.pid("ovsdb-server")),
        }

    def _records(self, vms: Sequence[BenchVm]) -> list[compute_pb2.VmRecord]:
        compute = self.agent.compute()
        return [compute.GetVm(compute_pb2.GetVmRequest(id=v.id), timeout=10).vm for v in vms]

    def _vm_states(self, vms: Sequence[BenchVm]) -> str:
        try:
            records = self._records(vms)
        except grpc.RpcError as e:
            return f"GetVm failed: {e}"
        lines = [f"{r.spec.id}: {common_pb2.ApplyState.Name(r.status.state)} "
                 f"{compute_pb2.RunState.Name(r.runtime.run_state)} {r.status.message}"
                 for r in records]  # fmt: skip
        return "VMs: " + "; ".join(lines) + f"; the agent's log ends with:\n{self.agent.log_tail()}"

    def _fail_fast(self, vms: Sequence[BenchVm]) -> None:
        """BenchError as soon as a VM has FAILED twice: waiting longer would measure nothing."""
        for record in self._records(vms):
            status = record.status
            if status.state == common_pb2.APPLY_STATE_FAILED and status.attempts >= 2:
                raise BenchError(f"the agent failed to start VM {record.spec.id} {status.attempts} "
                                 f"times ({_CODE_NAMES.get(status.code, status.code)}): "
                                 f"{status.message}")  # fmt: skip

    def _idle(self, pids: Sequence[int]) -> dict:
        """The agent's and the QEMUs' CPU (percent of one core) and RSS over IDLE_SAMPLE_S."""
        agent = psutil.Process(self.agent.proc.pid)
        if "agent.main" not in " ".join(agent.cmdline()):
            raise BenchError(f"pid {agent.pid} is not the agent: {agent.cmdline()}")
        qemus = [psutil.Process(pid) for pid in pids]
        vswitchd = psutil.Process(self.host.pid("ovs-vswitchd"))
        for p in (agent, vswitchd, *qemus):
            p.cpu_percent(None)
        time.sleep(IDLE_SAMPLE_S)
        qemu_cpu = sum(p.cpu_percent(None) for p in qemus)
        agent_cpu = agent.cpu_percent(None)
        vswitchd_cpu = vswitchd.cpu_percent(None)
        mb = 1024 * 1024
        return {
            "vms": len(pids),
            "sample_s": IDLE_SAMPLE_S,
            "agent_cpu_percent": round(agent_cpu, 1),
            "agent_rss_mb": round(agent.memory_info().rss / mb, 1),
            "qemu_rss_mb_total": round(sum(p.memory_info().rss for p in qemus) / mb, 1),
            "qemu_cpu_percent_total": round(qemu_cpu, 1),
            "ovs_vswitchd_cpu_percent": round(vswitchd_cpu, 1),
        }

    def _events(self, offset: int, answered_wall: float) -> dict:
        """What the agent's log says of this run, as seconds after the PutVms answer: each
        VM's start and resume (and the agent's own after_s between them), the passes, and the
        network passes that changed flows."""
        started, resumed, waits, passes, flows = [], [], [], [], []
        with self.agent.log_path.open("rb") as log_file:
            log_file.seek(offset)
            lines = log_file.read().splitlines()
        for line in lines:
            try:
                event = json.loads(line)
                at = datetime.fromisoformat(event["timestamp"]).timestamp() - answered_wall
            except (ValueError, KeyError, TypeError):
                continue
            name = event.get("event")
            if name == "vm.started":
                started.append(round(at, 3))
            elif name == "vm.resumed":
                resumed.append(round(at, 3))
                waits.append(float(event.get("after_s", 0.0)))
            elif name in ("reconcile.pass", "reconcile.first_pass_done"):
                passes.append({"at_s": round(at, 3), "ms": event.get("ms"),
                               "waiting": event.get("waiting")})  # fmt: skip
            elif name == "network.flows_changed":
                flows.append({"at_s": round(at, 3), "added": event.get("added"),
                              "deleted": event.get("deleted")})  # fmt: skip
        return {
            "started_s": started,
            "resumed_s": resumed,
            "paused_for_s": waits,  # vm.resumed's after_s: from its QEMU's start until `cont`
            "passes": passes[:40],
            "flows_changed": flows,
        }

    def delete_vms(self, vms: Sequence[BenchVm], pids: Sequence[int]) -> float:
        """DeleteVms; seconds until every VM's QEMU, record and tap are gone."""
        self.agent.compute().DeleteVms(compute_pb2.DeleteVmsRequest(
            request_id=self._request_id(), ids=[v.id for v in vms]), timeout=30)  # fmt: skip
        began = time.monotonic()
        records = self.agent.dir / "state" / "vms"
        taps = {tap_name(v.id, "nic0") for v in vms}
        while True:
            left = [pid for pid in pids if pid and pid_running(pid)]
            dirs = [v.id for v in vms if (records / v.id).exists()]
            names = {link.get_attr("IFLA_IFNAME") for link in self.host.ns.ipr.get_links()}
            if not left and not dirs and not taps & names:
                return time.monotonic() - began
            if time.monotonic() - began > DELETE_TIMEOUT_S:
                raise BenchError(f"{len(vms)} VMs deleted, but {DELETE_TIMEOUT_S:.0f} s later "
                                 f"QEMU pids {left} run, records {dirs} and taps "
                                 f"{sorted(taps & names)} are left; the agent's log ends with:\n"
                                 f"{self.agent.log_tail()}")  # fmt: skip
            time.sleep(0.05)

    # --- the raw run -----------------------------------------------------------------------

    def raw_argv(self, vm: BenchVm, serial: Path) -> list[str]:
        spec = self.spec(vm)
        images = self.lab.root / "images"
        return [
            QEMU, "-name", f"raw-{vm.id}", "-M", "pc", "-accel", "tcg", "-cpu", "max",
            "-smp", str(spec.vcpus), "-m", str(spec.memory_mb),
            "-nodefaults", "-nographic", "-no-reboot", "-serial", f"file:{serial}",
            "-kernel", str(images / spec.kernel.path), "-initrd", str(images / spec.initrd.path),
            "-append", spec.kernel_cmdline,
            "-netdev", f"tap,id=n0,ifname={vm.raw_tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={vm.mac},romfile=",
        ]  # fmt: skip

    def raw_run(self, vms: Sequence[BenchVm]) -> dict:
        """N QEMUs started together by hand; from just before the first until every serial
        file shows the marker. They are killed, and their taps removed, before it returns."""
        self.raw_dir.mkdir(exist_ok=True)
        ipr = self.host.ns.ipr
        for vm in vms:
            ipr.link("add", ifname=vm.raw_tap, kind="tuntap", mode="tap")
            self._raw_taps.append(vm.raw_tap)
            ipr.link("set", index=self.host.ns.index(vm.raw_tap), mtu=MTU, state="up")
        serials = [self.raw_dir / f"{vm.id}.serial" for vm in vms]
        argvs = [self.raw_argv(vm, serial) for vm, serial in zip(vms, serials)]
        for serial in serials:
            serial.unlink(missing_ok=True)
        cpu = self._daemons_cpu()
        try:
            began = time.monotonic()
            for vm, argv in zip(vms, argvs):
                with (self.raw_dir / f"{vm.id}.qemu.log").open("ab") as out:
                    self._raw.append(self.host.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                        stderr=subprocess.STDOUT,
                                                        start_new_session=True))  # fmt: skip
            boot: list[float | None] = [None] * len(vms)
            while None in boot:
                now = time.monotonic()
                for i, serial in enumerate(serials):
                    if boot[i] is None and _has_marker(serial):
                        boot[i] = now - began
                exited = [(vm.id, p.returncode) for vm, p in zip(vms, self._raw) if p.poll() is not None]
                if exited or now - began > BOOT_TIMEOUT_S:
                    log = (self.raw_dir / f"{vms[0].id}.qemu.log").read_text(errors="replace")
                    raise BenchError(f"raw QEMU: {sum(b is not None for b in boot)} of {len(vms)} "
                                     f"booted in {now - began:.0f} s; exited: {exited}; the first "
                                     f"one's messages: {log.strip()[-500:]}")  # fmt: skip
                time.sleep(POLL_S)
            cpu = {k: round(v - cpu[k], 2) for k, v in self._daemons_cpu().items()}
            pids = [p.pid for p in self._raw]
            if not all(QEMU in " ".join(_cmdline(pid)) for pid in pids):
                raise BenchError(f"the raw QEMU pids {pids} are not QEMU's (ip netns exec did not "
                                 f"exec it?)")  # fmt: skip
            cpu["qemus_s"] = round(sum(_cpu_s(pid) for pid in pids), 2)
        finally:
            self.end_raw()
        boots = [round(b, 3) for b in boot if b is not None]
        return {"raw_boot_s": max(boots), "raw_boot_median_s": median(boots),
                "per_vm_raw_boot_s": boots, "raw_cpu_during_boot": cpu}  # fmt: skip

    def end_raw(self) -> None:
        """Kill the raw QEMUs by their pids, then remove their taps (idempotent)."""
        while self._raw:
            process = self._raw.pop()
            if process.poll() is None:
                stop_pid(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        ipr = self.host.ns.ipr
        while self._raw_taps:
            name = self._raw_taps.pop()
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])

    # --- teardown ---------------------------------------------------------------------------

    def keep_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.agent.log_path.exists():
            shutil.copy(self.agent.log_path, directory / "agent.log")

    def close(self) -> None:
        """The raw QEMUs, the agent, the VMs it left running, then the lab: each even if one
        before it fails."""
        try:
            self.end_raw()
        finally:
            try:
                self.agent.stop()
            finally:
                try:
                    self.agent.end_vms()  # VMs outlive their agent, by design; not the bench
                finally:
                    self.lab.close()


def other_qemus() -> int:
    """QEMU processes on the machine now that are not this bench's (another lab's, a test's):
    each takes CPU from the guests measured here."""
    count = 0
    for process in psutil.process_iter(["name", "status"]):
        if process.info["name"] == QEMU and process.info["status"] != psutil.STATUS_ZOMBIE:
            count += 1
    return count


def _has_marker(path: Path) -> bool:
    try:
        return READY in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process `pid` has used; 0 if there is none."""
    if not pid:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def measure(counts: Sequence[int], runs: int, logs: Path | None = None) -> dict:
    """Every figure on a fresh lab, removed afterwards whatever happens."""
    began = time.monotonic()
    lab = Lab()
    _progress(f"lab {lab.prefix} in {lab.root}")
    try:
        host = BenchHost(lab)
    except BaseException:
        lab.close()
        raise
    samples: list[dict] = []
    idle: dict | None = None
    try:
        applied = host.start()
        _progress(f"agent up (pid {host.agent.proc.pid}); network and security group applied in "
                  f"{applied:.2f} s")  # fmt: skip
        for n in counts:
            vms = [BenchVm(i) for i in range(n)]
            seen = host.put_ports(vms)
            _progress(f"{n} VMs: {n} ports put, taken up by the agent in {seen:.2f} s")
            for run in range(runs):
                sample_idle = n == max(counts) and run == 0
                agent = host.agent_run(vms, sample_idle)
                if sample_idle:
                    idle = agent.pop("idle")
                    _progress(f"{n} VMs idle over {IDLE_SAMPLE_S:.0f} s: agent "
                              f"{idle['agent_cpu_percent']:.1f}% CPU, {idle['agent_rss_mb']:.0f} MB; "
                              f"QEMUs {idle['qemu_cpu_percent_total']:.0f}% CPU, "
                              f"{idle['qemu_rss_mb_total']:.0f} MB")  # fmt: skip
                raw = host.raw_run(vms)
                sample = {"run": run + 1, **agent, **raw,
                          "agent_overhead_s": round(agent["boot_s"] - raw["raw_boot_s"], 3)}  # fmt: skip
                samples.append(sample)
                log = agent["agent_log"]
                _progress(f"{n} VMs, run {run + 1}/{runs}: agent boot {agent['boot_s']:.2f} s "
                          f"(median VM {agent['boot_median_s']:.2f}), ready {agent['ready_s']:.2f} s, "
                          f"raw boot {raw['raw_boot_s']:.2f} s, overhead "
                          f"{sample['agent_overhead_s']:+.2f} s; QEMUs started by "
                          f"{max(log['started_s'], default=float('nan')):.2f} s, resumed by "
                          f"{max(log['resumed_s'], default=float('nan')):.2f} s; deleted in "
                          f"{agent['delete_s']:.2f} s")  # fmt: skip
            host.delete_ports(vms)
    except BaseException:
        _progress(f"failed; the agent's log ends with:\n{host.agent.log_tail(2000)}")
        raise
    finally:
        if logs is not None:
            host.keep_logs(logs)
        host.close()
    return _report(counts, runs, samples, idle, time.monotonic() - began)


def _report(counts: Sequence[int], runs: int, samples: list[dict], idle: dict | None,
            wall_s: float) -> dict:  # fmt: skip
    rows = []
    for n in counts:
        mine = [s for s in samples if s["vms"] == n]
        boot = median([s["boot_s"] for s in mine])
        ready = median([s["ready_s"] for s in mine])
        raw = median([s["raw_boot_s"] for s in mine])
        rows.append({
            "vms": n,
            "boot_s": boot,
            "ready_s": ready,
            "raw_boot_s": raw,
            "boot_median_s": median([s["boot_median_s"] for s in mine]),
            "raw_boot_median_s": median([s["raw_boot_median_s"] for s in mine]),
            "agent_overhead_s": round(boot - raw, 3),
            "wired_before_marker": ready <= boot,
            # The same difference run by run (each agent run beside the raw run after it),
            # and the spread of both: on a loaded machine they say how far to trust the above.
            "agent_overhead_paired_median_s": median([s["agent_overhead_s"] for s in mine]),
            "boot_range_s": [min(s["boot_s"] for s in mine), max(s["boot_s"] for s in mine)],
            "raw_boot_range_s": [min(s["raw_boot_s"] for s in mine),
                                 max(s["raw_boot_s"] for s in mine)],
            # What the agent itself adds before a guest runs at all: from the PutVms answer
            # until its last QEMU was started, and until its last `cont` (ports wired).
            "last_started_s": median([max(s["agent_log"]["started_s"], default=0.0) for s in mine]),
            "last_resumed_s": median([max(s["agent_log"]["resumed_s"], default=0.0) for s in mine]),
            "delete_s": median([s["delete_s"] for s in mine]),
            "other_qemus_max": max(s["other_qemus"] for s in mine),
            # CPU seconds during the boot (medians): the agent's run, then the raw one.
            "cpu_during_boot_s": {k: median([s["cpu_during_boot"][k] for s in mine])
                                  for k in mine[0]["cpu_during_boot"]},
            "raw_cpu_during_boot_s": {k: median([s["raw_cpu_during_boot"][k] for s in mine])
                                      for k in mine[0]["raw_cpu_during_boot"]},
        })  # fmt: skip
    worst = max(rows, key=lambda r: r["agent_overhead_s"])
    overhead_met = all(r["agent_overhead_s"] <= OVERHEAD_MAX_S for r in rows)
    wired_met = all(r["wired_before_marker"] for r in rows)
    return {
        "runs": rows,
        "samples": samples,
        "agent_cpu_percent": idle["agent_cpu_percent"] if idle else None,
        "agent_rss_mb": idle["agent_rss_mb"] if idle else None,
        "qemu_rss_mb_total": idle["qemu_rss_mb_total"] if idle else None,
        "idle": idle,
        "targets": {
            "agent_overhead_s_max": OVERHEAD_MAX_S,
            "agent_overhead_s_worst": worst["agent_overhead_s"],
            "agent_overhead_worst_vms": worst["vms"],
            "agent_overhead_met": overhead_met,
            "wired_before_marker_met": wired_met,
            "met": overhead_met and wired_met,
        },
        "repeats": runs,
        "memory_mb": MEMORY_MB,
        "accel": "tcg",
        "cpu_count": os.cpu_count(),
        "other_qemus_max": max(s["other_qemus"] for s in samples),
        "loadavg_1m_max": max(s["loadavg_1m"] for s in samples),
        "wall_s": round(wall_s, 1),
    }


# --- command line, table ----------------------------------------------------------------------


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of VM counts") from None
    if not counts or any(not 1 <= n <= MAX_VMS for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: each count 1..{MAX_VMS}")
    return counts


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compute", help="boot N VMs through the agent, beside raw QEMU")
    p.add_argument("--vms", type=_counts, default=DEFAULT_VMS,
                   help=f"VM counts, comma-separated, default {','.join(map(str, DEFAULT_VMS))}")  # fmt: skip
    p.add_argument("--runs", type=int, default=3, help="runs per count (median), default 3")
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument("--logs", type=Path, help="copy the agent's log here")
    p.set_defaults(run=main)


def _check_args(args: argparse.Namespace) -> str | None:
    if args.runs < 1:
        return "--runs must be >= 1"
    if os.geteuid() != 0:
        return "needs root (network namespaces, Open vSwitch, taps)"
    missing = missing_tools() + ([QEMU] if shutil.which(QEMU) is None else [])
    if missing:
        return f"missing {', '.join(missing)} (run scripts/setup.sh)"
    return None


def main(args: argparse.Namespace) -> int:
    error = _check_args(args)
    if error:
        print(f"bench compute: error: {error}", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    try:
        with sigterm_unwinds():
            report = measure(args.vms, args.runs, args.logs)
    except BenchError as e:
        print(f"bench compute: error: {e}", file=sys.stderr)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"error": str(e)}, indent=2) + "\n")
        return 1
    _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _print(report: dict) -> None:
    print()
    print(f"{'VMs':>4} {'boot (s)':>9} {'median VM':>10} {'raw boot':>9} {'overhead':>9} "
          f"{'paired':>7} {'ready (s)':>10} {'last cont':>10} {'wired before marker':>20}")  # fmt: skip
    for r in report["runs"]:
        print(f"{r['vms']:>4} {r['boot_s']:>9.2f} {r['boot_median_s']:>10.2f} {r['raw_boot_s']:>9.2f} "
              f"{r['agent_overhead_s']:>+9.2f} {r['agent_overhead_paired_median_s']:>+7.2f} "
              f"{r['ready_s']:>10.2f} {r['last_resumed_s']:>10.2f} "
              f"{'yes' if r['wired_before_marker'] else 'NO':>20}")  # fmt: skip
    print("(overhead: boot - raw boot, of the medians; paired: the median of each run's own "
          "difference; last cont: when the agent resumed its last VM, after the PutVms answer)")
    idle = report["idle"]
    if idle:
        print(f"idle with {idle['vms']} VMs: agent {idle['agent_cpu_percent']:.1f}% of a core, "
              f"{idle['agent_rss_mb']:.0f} MB RSS; QEMUs {idle['qemu_rss_mb_total']:.0f} MB RSS, "
              f"{idle['qemu_cpu_percent_total']:.0f}% CPU in all; ovs-vswitchd "
              f"{idle['ovs_vswitchd_cpu_percent']:.0f}%")  # fmt: skip
    for r in report["runs"]:
        a, raw = r["cpu_during_boot_s"], r["raw_cpu_during_boot_s"]
        print(f"CPU seconds while {r['vms']} VMs boot: agent run: QEMUs {a['qemus_s']:.1f}, agent "
              f"{a['agent_s']:.2f}, ovs-vswitchd {a['ovs_vswitchd_s']:.2f}; raw run: QEMUs "
              f"{raw['qemus_s']:.1f}, ovs-vswitchd {raw['ovs_vswitchd_s']:.2f}")  # fmt: skip
    if report["other_qemus_max"]:
        print(f"note: up to {report['other_qemus_max']} QEMU processes not the bench's ran on this "
              f"machine ({report['cpu_count']} cores, load average up to "
              f"{report['loadavg_1m_max']:.1f}): boot times are noisy, see the ranges in the JSON")  # fmt: skip
    t = report["targets"]
    print(f"target agent overhead <= {t['agent_overhead_s_max']} s over raw QEMU: worst "
          f"{t['agent_overhead_s_worst']:+.2f} s ({t['agent_overhead_worst_vms']} VMs), "
          f"{'met' if t['agent_overhead_met'] else 'MISSED'}")  # fmt: skip
    late = [r["vms"] for r in report["runs"] if not r["wired_before_marker"]]
    print(f"target ports wired no later than the boot marker: "
          f"{'met' if not late else 'MISSED (' + ', '.join(f'{n} VMs' for n in late) + ')'}")  # fmt: skip
