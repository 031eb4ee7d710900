"""The Compute service: VMs through the one Put/Delete/Get/List implementation
(agent/objects_service.py), and the Nova-style actions as small changes of the stored spec.

Where data comes from and where it goes (API -> store -> reconciler -> drivers):
- PutVms: each Vm checked by agent/compute/specs.py against this host (CPUs, memory, NUMA
  nodes, the image directory, and each NIC's port: it must exist, be bound to this VM's NIC,
  and be named by no other NIC), then stored. In maintenance mode a new VM is refused.
- StartVm, StopVm, PauseVm, ResumeVm, AttachNic, DetachNic: read the stored Vm, change it,
  check it again and store it at a new generation (the current one if nothing changed). A
  replay of the request_id answers what the first call did, whatever was stored since.
- RebootVm: stored as its own object (kind "vm_reboot", the VM's id), whose generation the
  reconciler compares with the last reboot it did for the VM: each accepted reboot happens
  once, after an agent restart too, and a replay stores nothing new. DeleteVms removes it with
  the VM.
- StopVm with `force`: also stored as its own object (kind "vm_stop"), in the same commit (so
  at the generation right after the VM's change); while the VM has not changed since, the
  reconciler ends QEMU at once instead of asking the guest to shut down.

Nothing here calls a driver (style.md): the reconciler (agent/compute/reconcile.py) applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from google.protobuf.message import Message

from agent import objects_service
from agent.compute import specs
from agent.compute.kvm import KvmResult
from agent.node_service import MAINTENANCE
from agent.objects_service import Kind
from agent.store import Conflict, NotFound, Precondition, Put, Store, check_id
from andromede.v1 import compute_pb2, compute_pb2_grpc, network_pb2, node_pb2

KINDS = frozenset({"vm", "vm_reboot", "vm_stop"})
"""The store's kinds of the Compute service: the VMs, their last reboot and last forced stop."""

_RUNNING, _STOPPED, _PAUSED = (compute_pb2.POWER_STATE_RUNNING, compute_pb2.POWER_STATE_STOPPED,
                               compute_pb2.POWER_STATE_PAUSED)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Compute:
    """This host's VM side, as the server needs it: what the checks know of the host, what
    runs for each VM now (the reconciler's view), and the KVM probe's answer."""

    host: specs.Host
    runtimes: Callable[[], Mapping[str, compute_pb2.VmRuntime]]
    kvm: KvmResult


def servicer(store: Store, host: specs.Host,
             runtimes: Callable[[], Mapping[str, compute_pb2.VmRuntime]] | None = None
             ) -> compute_pb2_grpc.ComputeServicer:  # fmt: skip
    """The Compute servicer over `store`; `runtimes`: what runs for each VM now (the
    reconciler's view), for GetVm and ListVms."""
    check = partial(_check, store, host)
    actions = _Actions(store, check)
    return objects_service.servicer(
        compute_pb2_grpc.ComputeServicer,
        compute_pb2.DESCRIPTOR.services_by_name["Compute"],
        [Kind("Vm", "Vms", check, ("tenant_id",), runtimes, companions=("vm_reboot", "vm_stop"))],
        store,
        {
            "StartVm": actions.start,
            "StopVm": actions.stop,
            "PauseVm": actions.pause,
            "ResumeVm": actions.resume,
            "RebootVm": actions.reboot,
            "AttachNic": actions.attach,
            "DetachNic": actions.detach,
        },
    )


def _check(store: Store, host: specs.Host, message: compute_pb2.Vm) -> specs.Checked:
    checked = specs.vm(message, host, partial(_stored_port, store))
    if _maintenance(store) and store.get("vm", message.id) is None:
        raise Precondition("", "this host is in maintenance mode: it takes no new VMs "
                           "(SetMaintenance enabled=false ends it)")  # fmt: skip
    return checked


class _Actions:
    """The one-VM actions: each a change of the stored Vm, stored like a Put."""

    def __init__(self, store: Store, check: Callable[[compute_pb2.Vm], specs.Checked]) -> None:
        self._store = store
        self._check = check

    def start(self, request: compute_pb2.StartVmRequest) -> Message:
        return compute_pb2.StartVmResponse(generation=self._power(request, _RUNNING))

    def stop(self, request: compute_pb2.StopVmRequest) -> Message:
        return compute_pb2.StopVmResponse(generation=self._power(request, _STOPPED, request.force))

    def pause(self, request: compute_pb2.PauseVmRequest) -> Message:
        return compute_pb2.PauseVmResponse(generation=self._power(request, _PAUSED))

    def resume(self, request: compute_pb2.ResumeVmRequest) -> Message:
        def change(vm: compute_pb2.Vm) -> None:
            if _power_of(vm) == _STOPPED:
                raise Precondition("vm_id", f"VM {vm.id} is stopped, not paused: use StartVm")
            vm.power_state = _RUNNING

        return compute_pb2.ResumeVmResponse(generation=self._change(request, change))

    def reboot(self, request: compute_pb2.RebootVmRequest) -> Message:
        kind = request.kind or compute_pb2.REBOOT_KIND_SOFT

        def extra(vm: compute_pb2.Vm) -> list[Put]:
            if _power_of(vm) != _RUNNING:
                raise Precondition("vm_id", f"VM {vm.id} should be {_name(vm)}, not running: "
                                   f"only a running VM reboots")  # fmt: skip
            # The request id makes each accepted reboot a change of its own.
            reboot = compute_pb2.RebootVmRequest(request_id=request.request_id, vm_id=vm.id,
                                                 kind=kind)  # fmt: skip
            return [Put("vm_reboot", vm.id, reboot.SerializeToString(deterministic=True))]

        return compute_pb2.RebootVmResponse(generation=self._change(request, None, extra))

    def attach(self, request: compute_pb2.AttachNicRequest) -> Message:
        def change(vm: compute_pb2.Vm) -> None:
            if any(nic.id == request.nic.id for nic in vm.nics):
                raise Conflict("nic.id", f"VM {vm.id} already has a NIC {request.nic.id!r}")
            vm.nics.append(request.nic)

        return compute_pb2.AttachNicResponse(generation=self._change(request, change))

    def detach(self, request: compute_pb2.DetachNicRequest) -> Message:
        def change(vm: compute_pb2.Vm) -> None:
            kept = [nic for nic in vm.nics if nic.id != request.nic_id]
            if len(kept) == len(vm.nics):
                raise NotFound(f"NIC of VM {vm.id}", request.nic_id, "nic_id")
            del vm.nics[:]
            vm.nics.extend(kept)

        return compute_pb2.DetachNicResponse(generation=self._change(request, change))

    def _power(self, request: Message, state: int, force: bool = False) -> int:
        def change(vm: compute_pb2.Vm) -> None:
            vm.power_state = state

        def extra(vm: compute_pb2.Vm) -> list[Put]:
            if not force:
                return []
            stop = compute_pb2.StopVmRequest(request_id=request.request_id, vm_id=vm.id, force=True)
            return [Put("vm_stop", vm.id, stop.SerializeToString(deterministic=True))]

        return self._change(request, change, extra)

    def _change(self, request: Message, change: Callable[[compute_pb2.Vm], None] | None,
                extra: Callable[[compute_pb2.Vm], list[Put]] | None = None) -> int:  # fmt: skip
        check_id("request_id", request.request_id)
        check_id("vm_id", request.vm_id)
        stored = self._store.get("vm", request.vm_id)
        if stored is None:
            raise NotFound("vm", request.vm_id, "vm_id")
        vm = compute_pb2.Vm.FromString(stored.spec)
        if change is not None:
            change(vm)
        checked = self._check(vm)
        changes = [Put("vm", vm.id, vm.SerializeToString(deterministic=True), checked.refs,
                       checked.unique)]  # fmt: skip
        changes += extra(vm) if extra is not None else []
        committed = self._store.commit(changes, request.request_id,
                                       request=request.SerializeToString(deterministic=True))
        return max(r.generation for r in committed.results)


def _power_of(vm: compute_pb2.Vm) -> int:
    return vm.power_state or _RUNNING


def _name(vm: compute_pb2.Vm) -> str:
    return compute_pb2.PowerState.Name(_power_of(vm)).removeprefix("POWER_STATE_").lower()


def _stored_port(store: Store, port_id: str) -> network_pb2.Port | None:
    stored = store.get("port", port_id)
    return None if stored is None else network_pb2.Port.FromString(stored.spec)


def _maintenance(store: Store) -> bool:
    stored = store.get(*MAINTENANCE)
    return stored is not None and node_pb2.Maintenance.FromString(stored.spec).enabled
