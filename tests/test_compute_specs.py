"""compute.proto's rules for a Vm, as agent/compute/specs.py checks them: each fault names its
field and says why, with the code the proto gives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.compute import specs
from agent.store import Invalid, Precondition
from andromede.v1 import compute_pb2, network_pb2

HOST = specs.Host(cpus=2, memory_mb=4096, numa_nodes=frozenset({0}), hugepage_mb=2)


def a_vm(**fields) -> compute_pb2.Vm:
    good = {"id": "vm-1", "tenant_id": "blue", "vcpus": 1, "memory_mb": 128,
            "kernel": compute_pb2.ImageRef(path="guest/vmlinuz"),
            "nics": [compute_pb2.VmNic(id="nic0", port_id="p1")]}  # fmt: skip
    return compute_pb2.Vm(**{**good, **fields})


def bound(vm_id: str = "vm-1", nic_id: str = "nic0") -> network_pb2.Port:
    return network_pb2.Port(id="p1", vm_nic=network_pb2.VmNicBinding(vm_id=vm_id, nic_id=nic_id))


def test_a_good_vm_is_checked_with_its_defaults_and_holds_its_ports() -> None:
    checked = specs.vm(a_vm(), HOST, lambda port_id: bound())
    value = checked.value
    assert (value.power, value.shutdown_timeout_s, value.accel) == ("running", 60, None)
    assert value.nics == (specs.Nic("nic0", "p1", "virtio-net-pci"),)
    assert [(r.field, r.kind, r.id) for r in checked.refs] == [("nics[0].port_id", "port", "p1")]
    assert [(u.scope, u.value) for u in checked.unique] == [("vm_nic.port", "p1")]


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"memory_mb": 0}, Invalid, "memory_mb"),
        ({"memory_mb": 8192}, Precondition, "memory_mb"),  # more than the host has
        ({"vcpus": 0}, Invalid, "vcpus"),
        ({"vcpus": 256}, Invalid, "vcpus"),
        ({"vcpus": 3}, Precondition, "vcpus"),  # more than the host's 2
        ({"numa_node": 3}, Precondition, "numa_node"),
        ({"kernel": compute_pb2.ImageRef(path="/boot/vmlinuz")}, Invalid, "kernel.path"),
        ({"kernel": compute_pb2.ImageRef(path="guest/../../etc/shadow")}, Invalid, "kernel.path"),
        ({"kernel": compute_pb2.ImageRef(path="k", sha256="ABC")}, Invalid, "kernel.sha256"),
        ({"shutdown_timeout_s": 3601}, Invalid, "shutdown_timeout_s"),
        ({"nics": [compute_pb2.VmNic(id="a", port_id="p1"), compute_pb2.VmNic(id="b", port_id="p1")]},
         Invalid, "nics[1].port_id"),
        ({"nics": [compute_pb2.VmNic(id="a", port_id="p1"), compute_pb2.VmNic(id="a", port_id="p2")]},
         Invalid, "nics[1].id"),
        ({"disks": [compute_pb2.VmDisk(id="d0", image=compute_pb2.ImageRef(path="x"))]},
         Invalid, "disks[0].format"),
        ({"disks": [compute_pb2.VmDisk(id="d0", image=compute_pb2.ImageRef(path="x"), read_only=True,
                                       size_gib=1, format=compute_pb2.IMAGE_FORMAT_RAW)]},
         Invalid, "disks[0].size_gib"),
        ({"kernel_cmdline": "x" * 4097}, Invalid, "kernel_cmdline"),
        ({"hugepages": True, "memory_mb": 129}, Invalid, "memory_mb"),
    ],
)
def test_a_bad_vm_is_refused_naming_the_field(fields: dict, error: type, field: str) -> None:
    with pytest.raises(error) as caught:
        specs.vm(a_vm(**fields), HOST, lambda port_id: bound())
    assert caught.value.field == field, caught.value
    assert type(caught.value) is error


def test_a_nic_on_a_port_bound_elsewhere_is_a_failed_precondition() -> None:
    with pytest.raises(Precondition, match="bound to VM other NIC nic0") as caught:
        specs.vm(a_vm(), HOST, lambda port_id: bound(vm_id="other"))
    assert caught.value.field == "nics[0].port_id"
    tap = network_pb2.Port(id="p1", tap=network_pb2.TapBinding(interface_name="veth1"))
    with pytest.raises(Precondition, match="bound to tap"):
        specs.vm(a_vm(), HOST, lambda port_id: tap)


def test_an_image_path_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "vmlinuz").write_bytes(b"k")
    (tmp_path / "guest").symlink_to(tmp_path / "real")
    host = specs.Host(cpus=2, memory_mb=4096, images_dir=tmp_path)
    with pytest.raises(Invalid, match="symlink") as caught:
        specs.vm(a_vm(), host, lambda port_id: bound())
    assert caught.value.field == "kernel.path"
    ok = a_vm(kernel=compute_pb2.ImageRef(path="real/vmlinuz"))
    assert specs.vm(ok, host, lambda port_id: bound()).value.kernel.path == "real/vmlinuz"


def test_only_what_a_running_vm_cannot_change_needs_a_restart() -> None:
    one = specs.parse(a_vm())
    more_nics = specs.parse(a_vm(nics=[compute_pb2.VmNic(id="nic0", port_id="p1"),
                                       compute_pb2.VmNic(id="nic1", port_id="p2")]))  # fmt: skip
    paused = specs.parse(a_vm(power_state=compute_pb2.POWER_STATE_PAUSED))
    bigger = specs.parse(a_vm(memory_mb=256))
    assert one.machine() == more_nics.machine() == paused.machine()
    assert one.machine() != bigger.machine()
