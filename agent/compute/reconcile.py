"""The compute reconciler: every desired VM as a QEMU process in the state it should be in.

Where data comes from and where it goes (API -> store -> reconciler -> drivers): each pass
hands it the stored VMs (kind "vm"), their last reboot and forced stop ("vm_reboot",
"vm_stop"), and, to read only, the ports and networks their NICs use. It observes each VM on
the host (its record in the state directory, whether that pid is still its QEMU, QEMU's own
status over QMP) and does the one next step towards the spec, never waiting in a pass for a
guest: a start, a `cont`, a `stop`, an ACPI power-down, a reset, a NIC plugged or unplugged.
What takes time (a guest shutting down, a port being wired) ends the VM's part of the pass as
PENDING; QEMU's own events, and timers at the deadlines, start the next pass early.

A start, like Nova's: taps made and put on br-int with the ports' iface-ids, QEMU started
paused (-S) with every descriptor it needs, and `cont` only once the network side has wired
every port (`wired()`: flows installed); past `wire_timeout_s` the VM is FAILED
(DEADLINE_EXCEEDED) with the ports it waits for named, and resumes whenever they are wired.

VMs outlive the agent: each QEMU runs in its own session, and its record (pid, start time)
lets a later agent re-adopt it through its QMP socket. A QEMU that died, or a guest that
powered off or panicked while the VM should run, is reported (the VM's status and an event,
`vm.crashed` in the log), and started again after a backoff that doubles with each crash in a
row (RunState CRASHED meanwhile).

Deletion (prune): a VM in the state directory that is no longer desired is shut down (ACPI,
then by force after its shutdown timeout), its taps are taken off br-int and deleted, its
overlays and directory removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Set
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import psutil
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from agent.compute import qemu, specs
from agent.compute.images import Images
from agent.compute.kvm import KvmResult
from agent.compute.qmp import GONE, Loop, Monitor, QmpError
from agent.compute.records import NicRecord, Records, VmRecord
from agent.compute.taps import Taps, tap_name
from agent.compute.taps import counters as tap_counters
from agent.config import QemuConfig
from agent.reconcile import ApplyError, Desired, Key, Outcome, Work
from andromede.v1 import compute_pb2, network_pb2

log = structlog.get_logger(__name__)

KINDS = ("vm", "vm_reboot", "vm_stop")
CRASH_BACKOFF_S = (1.0, 60.0)  # first delay, most
STABLE_S = 60.0  # a VM up this long has its crash count in a row forgotten
KILL_WAIT_S = 5.0
DEFAULT_MTU = 1450  # network.proto's default network MTU
_RUN_STATES = {
    "stopped": compute_pb2.RUN_STATE_STOPPED, "starting": compute_pb2.RUN_STATE_STARTING,
    "running": compute_pb2.RUN_STATE_RUNNING, "paused": compute_pb2.RUN_STATE_PAUSED,
    "stopping": compute_pb2.RUN_STATE_STOPPING, "crashed": compute_pb2.RUN_STATE_CRASHED,
}  # fmt: skip
_ACCELS = {"kvm": compute_pb2.ACCEL_KVM, "tcg": compute_pb2.ACCEL_TCG}


class VmSwitch(Protocol):
    """br-int, as the compute side needs it (agent/network/ovs.py is the real one)."""

    def plug_vm_taps(self, interfaces: Mapping[str, str]) -> None: ...

    def unplug(self, names: Sequence[str]) -> None: ...


@dataclass(slots=True)
class _Vm:
    """A VM's QEMU as this agent knows it now."""

    record: VmRecord
    monitor: Monitor | None = None
    process: subprocess.Popen | None = None  # None when re-adopted (not our child)
    status: str = ""  # QEMU's, from the last query-status
    resumed: bool = False  # cont was sent since this QEMU started (else it is STARTING)
    wire_deadline: float = 0.0
    stopping_since: float | None = None  # monotonic time of the power-down
    rebooting: int = 0  # the vm_reboot generation under way (soft: waits for the power-off)
    unplugging: set[str] = field(default_factory=set)  # NIC ids with a device_del sent


@dataclass(slots=True)
class _Crash:
    message: str
    in_a_row: int
    restart_at: float  # monotonic


class ComputeReconciler:
    """Reconciles the VMs of this host."""

    kinds = KINDS
    reads = ("port", "network")

    def __init__(self, config: QemuConfig, state_dir: Path, kvm: KvmResult, *,
                 switch: VmSwitch | None, wired: Callable[[], Set[str]],
                 kick: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self._config = config
        self._records = Records(state_dir)
        self._images = Images(config.images_dir)
        self._kvm = kvm
        self._switch = switch
        self._wired = wired
        self._taps = Taps()
        self._user = qemu.user_or_none(config.user)
        self._loop = Loop()
        self._vms: dict[str, _Vm] = {}
        self._crashes: dict[str, _Crash] = {}
        self._lock = threading.Lock()  # the runtimes the API reads, swapped whole
        self._runtimes: Mapping[str, compute_pb2.VmRuntime] = {}
        self.kick = kick
        config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o750)

    # --- the reconciler ------------------------------------------------------------------

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        outcomes: dict[Key, Outcome] = {}
        ports = {id: network_pb2.Port.FromString(o.spec) for id, o in desired["port"].items()}
        networks = {id: network_pb2.TenantNetwork.FromString(o.spec)
                    for id, o in desired["network"].items()}  # fmt: skip
        for id, obj in sorted(desired["vm"].items()):
            if not work.due("vm", id):
                continue
            reboot = desired["vm_reboot"].get(id)
            forced = desired["vm_stop"].get(id)
            try:
                spec = specs.parse(compute_pb2.Vm.FromString(obj.spec))
                outcomes[("vm", id)] = self._ensure(
                    spec, ports, networks,
                    reboot=(reboot.generation, compute_pb2.RebootVmRequest.FromString(reboot.spec).kind)
                    if reboot is not None else None,
                    force=forced is not None and forced.generation >= obj.generation,
                )  # fmt: skip
            except Exception as e:
                if not isinstance(e, ApplyError):
                    log.exception("vm.ensure_failed", vm=id, generation=obj.generation)
                outcomes[("vm", id)] = Outcome.failed(e)
            work.progress()
        for id in [id for id, vm in self._vms.items() if vm.monitor is None]:
            outcomes[("vm", id)] = self._connect(self._vms[id])
            work.progress()
        for id, obj in desired["vm_reboot"].items():
            done = id not in desired["vm"] or self._records.load(id).reboot_generation >= obj.generation
            outcomes[("vm_reboot", id)] = Outcome("done") if done else Outcome.waiting("reboot under way")
        for id, obj in desired["vm_stop"].items():
            vm = self._vms.get(id)
            stopped = id not in desired["vm"] or vm is None or obj.generation < desired["vm"][id].generation
            outcomes[("vm_stop", id)] = Outcome("done") if stopped else Outcome.waiting("stopping")
        return outcomes

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        outcomes: dict[Key, Outcome] = {}
        for id in self._records.ids():
            if id in desired["vm"]:
                continue
            try:
                outcomes[("vm", id)] = self._delete(id)
            except Exception as e:
                outcomes[("vm", id)] = Outcome.failed(e)
            work.progress()
        self._publish()  # prune is a pass's last step: what runs now, after both
        return outcomes

    def runtimes(self) -> Mapping[str, compute_pb2.VmRuntime]:
        """What runs for each VM, as the last pass saw it, with its QEMU's CPU time and
        memory and its NICs' counters read now (for GetVm and ListVms, from any thread)."""
        with self._lock:
            published = self._runtimes
        return {vm_id: _with_usage(runtime) for vm_id, runtime in published.items()}

    def close(self) -> None:
        """Let go of the VMs (they keep running) and of the QMP loop."""
        for vm in self._vms.values():
            if vm.monitor is not None:
                vm.monitor.close()
        self._loop.close()

    # --- one VM --------------------------------------------------------------------------

    def _ensure(self, spec: specs.VmSpec, ports: Mapping[str, network_pb2.Port],
                networks: Mapping[str, network_pb2.TenantNetwork], *,
                reboot: tuple[int, int] | None, force: bool) -> Outcome:  # fmt: skip
        vm = self._observe(spec.id, expected=spec.power != "stopped")
        if spec.power == "stopped":
            if vm is None:
                self._crashes.pop(spec.id, None)
                return Outcome("stopped")
            return self._stop(vm, spec.shutdown_timeout_s, force, "stop")
        machine = _digest(spec.machine())
        if vm is not None and vm.record.machine != machine:
            return self._stop(vm, spec.shutdown_timeout_s, False, "restart to apply a new spec")
        if vm is not None and vm.status in ("shutdown", "guest-panicked") and not vm.rebooting:
            why = "the guest powered off" if vm.status == "shutdown" else "the guest panicked"
            self._end(vm)
            self._crashed(spec.id, why)
            vm = None
        if vm is None:
            crash = self._crashes.get(spec.id)
            now = time.monotonic()
            if crash is not None and now < crash.restart_at:
                self._wake_at(crash.restart_at)
                return Outcome.waiting(f"{crash.message}; starting it again in "
                                       f"{crash.restart_at - now:.1f} s (crash {crash.in_a_row} in a row)")  # fmt: skip
            self._start(spec, machine, self._nics(spec, ports, networks))
            return Outcome.waiting("starting")  # connected at the end of the pass
        self._sync_nics(vm, spec, self._nics(spec, ports, networks))
        if reboot is not None and reboot[0] > vm.record.reboot_generation:
            outcome = self._reboot(vm, spec, *reboot)
            if outcome is not None:
                return outcome
        if vm.unplugging:
            return Outcome.waiting(f"waiting for the guest to release NIC(s) {sorted(vm.unplugging)}")
        if spec.power == "paused":
            if vm.status == "running":
                vm.monitor.execute("stop")
                vm.status = "paused"
                log.info("vm.paused", vm=spec.id)
            return Outcome("paused")
        unwired = [n.port_id for n in spec.nics if n.port_id not in self._wired()]
        if unwired:
            # The network side wires a port in the pass after its tap appears, before this
            # reconciler runs: only the deadline of a VM still paused needs a pass of its own.
            if vm.status == "running" or time.monotonic() < vm.wire_deadline:
                if vm.status != "running":
                    self._wake_at(vm.wire_deadline)
                return Outcome.waiting(f"waiting for port(s) {', '.join(unwired)} to be wired"
                                       + ("" if vm.resumed else " before the VM is resumed"))  # fmt: skip
            raise ApplyError(
                f"port(s) {', '.join(unwired)} not wired {self._config.wire_timeout_s:.0f} s after "
                f"the VM started (it stays paused and resumes once they are): see the ports' "
                f"status (andromede port get ID)", grpc.StatusCode.DEADLINE_EXCEEDED)  # fmt: skip
        if vm.status in ("paused", "prelaunch"):
            vm.monitor.execute("cont")
            vm.status, vm.resumed = "running", True
            log.info("vm.resumed", vm=spec.id, accel=vm.record.accel,
                     after_s=round(time.time() - vm.record.started_wall, 3))  # fmt: skip
        return Outcome("running")

    def _observe(self, vm_id: str, expected: bool) -> _Vm | None:
        """The VM's QEMU if it runs (re-adopted from its record if this agent does not know
        it yet), with its status fresh from QMP; None if there is none. A QEMU that was
        running and is gone counts as a crash when `expected`."""
        vm = self._vms.get(vm_id)
        if vm is None:
            record = self._records.load(vm_id)
            if record.pid and qemu.is_vm(record.pid, vm_id, record.started):
                vm = self._adopt(record)
            elif record.pid:
                record.pid = 0
                self._records.save(record)
                if expected:
                    self._crashed(vm_id, "QEMU was gone when the agent started", record)
            if vm is None:
                return None
        if not self._alive(vm):
            why = self._exit_reason(vm)
            self._forget(vm)
            if vm.stopping_since is None and expected:
                self._crashed(vm_id, why, vm.record)
            return None
        try:
            vm.status = vm.monitor.status()
        except QmpError as e:
            if self._alive(vm):
                raise ApplyError(f"QEMU (pid {vm.record.pid}) does not answer on QMP: {e}") from None
            return self._observe(vm_id, expected)
        return vm

    def _adopt(self, record: VmRecord) -> _Vm | None:
        vm = _Vm(record)
        vm.monitor = Monitor(self._loop, record.id, self._on_event)
        try:
            vm.monitor.connect(self._qmp_path(record.id))
        except QmpError as e:
            log.warning("vm.adopt_failed", vm=record.id, pid=record.pid, error=str(e))
            self._kill(record.pid)
            record.pid = 0
            self._records.save(record)
            return None
        vm.resumed = True  # whatever it is, it is past its start
        self._vms[record.id] = vm
        log.info("vm.adopted", vm=record.id, pid=record.pid, qemu=vm.monitor.version)
        return vm

    def _start(self, spec: specs.VmSpec, machine: str, nics: list[NicRecord]) -> _Vm:
        accel = self._accel(spec)
        record = self._records.load(spec.id)
        directory = self._records.dir(spec.id)
        # The taps go into the record before they exist: a crash from here on leaves nothing
        # the next agent does not know to remove.
        record.nics = {nic.id: n for nic, n in zip(spec.nics, nics)}
        record.shutdown_timeout_s = spec.shutdown_timeout_s
        self._records.save(record)
        with ExitStack() as fds:
            launch = self._prepare(spec, accel, nics, directory, fds)
            args = qemu.argv(self._config.binary, spec, launch)
            process = qemu.spawn(args, launch.fds(), self._user, directory / "qemu.log")
        started = _wait_start_time(process.pid)
        record.pid, record.started, record.started_wall = process.pid, started, time.time()
        record.machine, record.accel = machine, accel
        self._records.save(record)
        vm = _Vm(record, process=process, wire_deadline=time.monotonic() + self._config.wire_timeout_s)
        self._vms[spec.id] = vm
        log.info("vm.started", vm=spec.id, pid=process.pid, accel=accel, vcpus=spec.vcpus,
                 memory_mb=spec.memory_mb, nics=len(nics))  # fmt: skip
        return vm

    def _connect(self, vm: _Vm) -> Outcome:
        """Connect to a QEMU started in this pass (after every start of the pass: each QEMU
        takes a while to open its socket, and they all do it at once)."""
        vm.monitor = Monitor(self._loop, vm.record.id, self._on_event)
        try:
            vm.monitor.connect(self._qmp_path(vm.record.id))
            vm.status = vm.monitor.status()
        except QmpError as e:
            self._end(vm)
            return Outcome.failed(ApplyError(f"QEMU exited at start: {self._exit_reason(vm)} ({e})",
                                             grpc.StatusCode.FAILED_PRECONDITION))  # fmt: skip
        self.kick()  # the network side wires the new taps, and the VM is resumed, next pass
        return Outcome.waiting("started paused: waiting for its ports to be wired")

    def _prepare(self, spec: specs.VmSpec, accel: str, nics: list[NicRecord], directory: Path,
                 fds: ExitStack) -> qemu.Launch:  # fmt: skip
        """Everything QEMU gets, as descriptors closed when `fds` closes (QEMU has its own)."""

        def keep(fd: int) -> int:
            fds.callback(os.close, fd)
            return fd

        def image_fd(image: specs.Image, field: str) -> int:
            resolved = self._images.resolve(image, field)
            return keep(os.open(resolved.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))

        kernel = image_fd(spec.kernel, "kernel") if spec.kernel else None
        initrd = image_fd(spec.initrd, "initrd") if spec.initrd else None
        disks = []
        for i, disk in enumerate(spec.disks):
            field = f"disks[{i}].image"
            base = self._images.resolve(disk.image, field)
            base_fd = keep(os.open(base.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
            overlay_fd = None
            if not disk.read_only:
                overlay = directory / f"disk-{disk.id}.qcow2"
                self._images.ensure_overlay(overlay, base, disk.format, disk.size_gib, f"disks[{i}]")
                overlay_fd = keep(os.open(overlay, os.O_RDWR | os.O_CLOEXEC))
            disks.append(qemu.DiskFds(disk.id, disk.format, base_fd, overlay_fd))
        nic_fds = []
        if nics:
            self._plug(nics)
        for nic, plugged in zip(spec.nics, nics):
            nic_fds.append(qemu.NicFd(nic.id, plugged.mac, plugged.model, keep(self._taps.open(plugged.tap))))
        serial = keep(os.open(self._serial_log(spec.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640))
        return qemu.Launch(
            accel=accel,
            qmp_fd=keep(_listen(self._qmp_path(spec.id))),
            console_fd=keep(_listen(self._console_path(spec.id))),
            serial_fd=serial, kernel_fd=kernel, initrd_fd=initrd,
            disks=tuple(disks), nics=tuple(nic_fds),
        )  # fmt: skip

    def _nics(self, spec: specs.VmSpec, ports: Mapping[str, network_pb2.Port],
              networks: Mapping[str, network_pb2.TenantNetwork]) -> list[NicRecord]:  # fmt: skip
        """Each NIC's port, checked as the host has it now: it must exist and be bound to this
        NIC; its MAC and its network's MTU."""
        nics = []
        for i, nic in enumerate(spec.nics):
            port = ports.get(nic.port_id)
            if port is None:
                raise ApplyError(f"nics[{i}].port_id: no port {nic.port_id!r}",
                                 grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
            binding = port.vm_nic if port.WhichOneof("binding") == "vm_nic" else None
            if binding is None or (binding.vm_id, binding.nic_id) != (spec.id, nic.id):
                raise ApplyError(f"nics[{i}].port_id: port {nic.port_id} is not bound to this "
                                 f"VM's NIC {nic.id}", grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
            if self._switch is None:
                raise ApplyError("this host has no OVS configured ([ovs] tunnel_ip): VMs with "
                                 "NICs cannot run here", grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
            network = networks.get(port.network_id)
            mtu = network.mtu if network is not None and network.mtu else DEFAULT_MTU
            nics.append(NicRecord(nic.port_id, tap_name(spec.id, nic.id), port.mac, nic.model, mtu))
        return nics

    def _plug(self, nics: Sequence[NicRecord]) -> None:
        """Make the taps and put them on br-int with their ports' iface-ids."""
        assert self._switch is not None
        for nic in nics:
            self._taps.ensure(nic.tap, nic.mtu)
        self._switch.plug_vm_taps({n.tap: n.port_id for n in nics})

    def _sync_nics(self, vm: _Vm, spec: specs.VmSpec, nics: list[NicRecord]) -> None:
        """Hot-plug the NICs the spec added, unplug those it removed or changed (device_del,
        which the guest acknowledges; the netdev and the tap go once QEMU reports the device
        gone)."""
        want = {nic.id: n for nic, n in zip(spec.nics, nics)}
        have = vm.record.nics
        # A NIC leaves when the spec drops it or changes it (another port or model: it comes
        # back as a new device once the old one is gone), and finishes leaving once begun.
        leaving = [n for n in have if n not in want or n in vm.unplugging
                   or (want[n].port_id, want[n].model) != (have[n].port_id, have[n].model)]  # fmt: skip
        present = self._devices(vm) if leaving else set()
        for nic_id in leaving:
            if f"nic-{nic_id}" in present:
                if nic_id not in vm.unplugging:
                    vm.monitor.execute("device_del", {"id": f"nic-{nic_id}"})
                    vm.unplugging.add(nic_id)
                    log.info("vm.nic_unplugging", vm=vm.record.id, nic=nic_id)
                continue
            vm.unplugging.discard(nic_id)
            with contextlib.suppress(QmpError):  # already gone with its device
                vm.monitor.execute("netdev_del", {"id": f"net-{nic_id}"})
            gone = have.pop(nic_id)
            self._records.save(vm.record)
            self._remove_taps([gone.tap])
            log.info("vm.nic_unplugged", vm=vm.record.id, nic=nic_id, port=gone.port_id)
        added = [(nic_id, n) for nic_id, n in want.items() if nic_id not in have]
        if not added:
            return
        for nic_id, n in added:
            have[nic_id] = n
        self._records.save(vm.record)
        self._plug([n for _, n in added])
        for nic_id, n in added:
            fd = self._taps.open(n.tap)
            try:
                vm.monitor.send_fd(fd, f"tap-{nic_id}")
            finally:
                os.close(fd)
            vm.monitor.execute("netdev_add", {"type": "tap", "id": f"net-{nic_id}", "fd": f"tap-{nic_id}"})
            vm.monitor.execute("device_add", qemu.nic_device(n.model, nic_id, n.mac))
            log.info("vm.nic_plugged", vm=vm.record.id, nic=nic_id, port=n.port_id, tap=n.tap)
        self.kick()

    def _devices(self, vm: _Vm) -> set[str]:
        """The qdev ids of the VM's PCI devices now."""
        ids = set()
        for bus in vm.monitor.execute("query-pci"):
            for device in bus.get("devices", []):
                ids.add(device.get("qdev_id", ""))
        return ids

    def _reboot(self, vm: _Vm, spec: specs.VmSpec, generation: int, kind: int) -> Outcome | None:
        """Reboot once per stored RebootVm: HARD at once; SOFT by ACPI power-down, then a reset
        and `cont` when the guest has powered off (or HARD after the shutdown timeout). None
        once done, else what it waits for."""
        now = time.monotonic()
        hard = kind == compute_pb2.REBOOT_KIND_HARD
        if not hard and vm.status != "shutdown":
            if vm.rebooting != generation:
                vm.monitor.execute("system_powerdown")
                vm.rebooting, vm.stopping_since = generation, now
                log.info("vm.rebooting", vm=spec.id, kind="soft")
            deadline = (vm.stopping_since or now) + spec.shutdown_timeout_s
            if now < deadline:
                self._wake_at(deadline)
                return Outcome.waiting("rebooting: waiting for the guest to power off")
            log.warning("vm.reboot_forced", vm=spec.id, after_s=spec.shutdown_timeout_s)
        vm.monitor.execute("system_reset")
        if vm.status == "shutdown" or spec.power == "running":
            vm.monitor.execute("cont")
            vm.status = "running"
        vm.rebooting, vm.stopping_since = 0, None
        vm.record.reboot_generation = generation
        self._records.save(vm.record)
        log.info("vm.rebooted", vm=spec.id, kind="hard" if hard else "soft", generation=generation)
        return None

    def _stop(self, vm: _Vm, timeout_s: int, force: bool, why: str) -> Outcome:
        """One step of a stop: ACPI power-down first, QEMU ended once the guest is off or
        after `timeout_s`, or at once with `force`. PENDING until QEMU is gone."""
        now = time.monotonic()
        if not force and vm.status != "shutdown":
            if vm.stopping_since is None:
                vm.monitor.execute("system_powerdown")
                vm.stopping_since = now
                log.info("vm.stopping", vm=vm.record.id, why=why, timeout_s=timeout_s)
            deadline = vm.stopping_since + timeout_s
            if now < deadline:
                self._wake_at(deadline)
                return Outcome.waiting(f"{why}: waiting up to {deadline - now:.0f} s more for the "
                                       f"guest to power off (ACPI)")  # fmt: skip
            log.warning("vm.stop_forced", vm=vm.record.id, after_s=timeout_s)
        self._end(vm)
        log.info("vm.stopped", vm=vm.record.id, forced=force or vm.status != "shutdown")
        self.kick()  # a restart starts it again in the next pass
        return Outcome.waiting(f"{why}: QEMU ended") if why.startswith("restart") else Outcome("stopped")

    def _delete(self, vm_id: str) -> Outcome:
        record = self._records.load(vm_id)
        vm = self._observe(vm_id, expected=False)
        if vm is not None:
            outcome = self._stop(vm, record.shutdown_timeout_s, False, "delete")
            if outcome.pending:
                return outcome
        self._remove_taps([n.tap for n in record.nics.values()])
        for path in (self._qmp_path(vm_id), self._console_path(vm_id)):
            path.unlink(missing_ok=True)
        self._records.remove(vm_id)
        self._crashes.pop(vm_id, None)
        log.info("vm.deleted", vm=vm_id)
        return Outcome(f"deleted VM {vm_id}")

    def _remove_taps(self, taps: Sequence[str]) -> None:
        if taps and self._switch is not None:
            self._switch.unplug(list(taps))
        for tap in taps:
            self._taps.remove(tap)

    # --- processes -----------------------------------------------------------------------

    def _alive(self, vm: _Vm) -> bool:
        if vm.process is not None:
            return vm.process.poll() is None
        return qemu.is_vm(vm.record.pid, vm.record.id, vm.record.started)

    def _end(self, vm: _Vm) -> None:
        """End this VM's QEMU (quit, then SIGKILL by its pid) and forget it."""
        if vm.monitor is not None:
            with contextlib.suppress(QmpError):  # it may be gone already
                vm.monitor.execute("quit", timeout=2.0)
        deadline = time.monotonic() + KILL_WAIT_S
        while self._alive(vm) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._alive(vm):
            self._kill(vm.record.pid)
        if vm.process is not None:
            vm.process.wait(timeout=KILL_WAIT_S)
        self._forget(vm)

    def _kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _forget(self, vm: _Vm) -> None:
        if vm.monitor is not None:
            vm.monitor.close()
        self._vms.pop(vm.record.id, None)
        vm.record.pid = 0
        self._records.save(vm.record)

    def _exit_reason(self, vm: _Vm) -> str:
        code = vm.process.poll() if vm.process is not None else None
        if code is None:  # re-adopted: not this agent's child, so its exit status is unknown
            return f"QEMU (pid {vm.record.pid}) is gone"
        if code < 0:
            return f"QEMU (pid {vm.record.pid}) was killed by {signal.Signals(-code).name}"
        tail = _tail(self._records.dir(vm.record.id) / "qemu.log", 300)
        return f"QEMU (pid {vm.record.pid}) exited with {code}" + (f": {tail}" if tail else "")

    def _crashed(self, vm_id: str, why: str, record: VmRecord | None = None) -> None:
        record = record or self._records.load(vm_id)
        record.crash_restarts += 1
        self._records.save(record)
        before = self._crashes.get(vm_id)
        stable = record.started_wall and time.time() - record.started_wall > STABLE_S
        in_a_row = 1 if before is None or stable else before.in_a_row + 1
        first, most = CRASH_BACKOFF_S
        delay = min(most, first * 2 ** (in_a_row - 1))
        self._crashes[vm_id] = _Crash(why, in_a_row, time.monotonic() + delay)
        log.warning("vm.crashed", vm=vm_id, why=why, crash_restarts=record.crash_restarts,
                    restart_in_s=delay)  # fmt: skip

    def _accel(self, spec: specs.VmSpec) -> str:
        if spec.accel == "kvm" and not self._kvm.usable:
            raise ApplyError(f"accel: KVM is not usable on this host ({self._kvm.detail}); ask "
                             f"for ACCEL_TCG or leave it unset", grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
        if spec.accel is not None:
            return spec.accel
        return "kvm" if self._kvm.usable else "tcg"

    # --- events, timers, runtimes -----------------------------------------------------------

    def _on_event(self, vm_id: str, event: str, data: dict) -> None:
        """From the QMP thread: something changed in a VM; look at it soon."""
        if event != GONE:
            log.info("vm.qmp_event", vm=vm_id, qmp_event=event, **{k: str(v) for k, v in data.items()})
        self.kick()

    def _wake_at(self, when: float) -> None:
        delay = max(0.0, when - time.monotonic()) + 0.05
        timer = threading.Timer(delay, self.kick)
        timer.daemon = True
        timer.start()

    def _publish(self) -> None:
        runtimes = {}
        for vm_id in self._records.ids():
            runtimes[vm_id] = self._runtime(vm_id)
        with self._lock:
            self._runtimes = runtimes

    def _runtime(self, vm_id: str) -> compute_pb2.VmRuntime:
        vm = self._vms.get(vm_id)
        record = vm.record if vm is not None else self._records.load(vm_id)
        if vm is None:
            state = "crashed" if vm_id in self._crashes else "stopped"
        elif vm.stopping_since is not None:
            state = "stopping"
        elif not vm.resumed and vm.status in ("prelaunch", "paused"):
            state = "starting"
        else:
            state = {"running": "running", "paused": "paused"}.get(vm.status, "running")
        runtime = compute_pb2.VmRuntime(
            run_state=_RUN_STATES[state],
            qemu_status=vm.status if vm is not None else "",
            pid=record.pid if vm is not None else 0,
            accel=_ACCELS.get(record.accel, compute_pb2.ACCEL_UNSPECIFIED),
            crash_restarts=record.crash_restarts,
            serial_log_path=str(self._serial_log(vm_id)),
            nics=[compute_pb2.VmNicRuntime(nic_id=k, port_id=n.port_id, interface_name=n.tap, mac=n.mac)
                  for k, n in record.nics.items()],
        )  # fmt: skip
        if vm is not None:
            stamp = Timestamp()
            stamp.FromNanoseconds(int(record.started_wall * 1e9))
            runtime.started_at.CopyFrom(stamp)
        return runtime

    # --- paths ---------------------------------------------------------------------------

    def _serial_log(self, vm_id: str) -> Path:
        return self._records.dir(vm_id) / "serial.log"

    def _qmp_path(self, vm_id: str) -> Path:
        return sockets(self._config.run_dir, vm_id)[0]

    def _console_path(self, vm_id: str) -> Path:
        return sockets(self._config.run_dir, vm_id)[1]


def sockets(run_dir: Path, vm_id: str) -> tuple[Path, Path]:
    """A VM's QMP socket and its interactive console (the second serial port, ttyS1), named
    short because ids can be 128 characters and a unix socket path holds 108 bytes."""
    short = hashlib.blake2b(vm_id.encode(), digest_size=8).hexdigest()
    return run_dir / f"{short}.qmp", run_dir / f"{short}.console"


def _with_usage(published: compute_pb2.VmRuntime) -> compute_pb2.VmRuntime:
    runtime = compute_pb2.VmRuntime()
    runtime.CopyFrom(published)
    if runtime.pid:
        with contextlib.suppress(psutil.Error):  # it just ended: the next pass reports it
            process = psutil.Process(runtime.pid)
            times = process.cpu_times()
            runtime.cpu_seconds = round(times.user + times.system, 3)
            runtime.memory_rss_bytes = process.memory_info().rss
    for nic in runtime.nics:
        counters = tap_counters(nic.interface_name)
        # The tap's transmit side is what the guest receives, and the other way round.
        nic.rx_packets, nic.rx_bytes = counters.get("tx_packets", 0), counters.get("tx_bytes", 0)
        nic.tx_packets, nic.tx_bytes = counters.get("rx_packets", 0), counters.get("rx_bytes", 0)
    return runtime


def _digest(spec: specs.VmSpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:32]


def _listen(path: Path) -> int:
    """A listening unix socket at `path` (replacing a stale one), as a descriptor for QEMU."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(8)
        return sock.detach()
    except BaseException:
        sock.close()
        raise


def _wait_start_time(pid: int) -> float:
    for _ in range(100):
        started = qemu.start_time(pid)
        if started is not None:
            return started
        time.sleep(0.01)
    raise ApplyError(f"QEMU (pid {pid}) exited at once", grpc.StatusCode.FAILED_PRECONDITION)


def _tail(path: Path, chars: int) -> str:
    try:
        return " ".join(path.read_text(errors="replace").split())[-chars:]
    except OSError:
        return ""
