"""compute.proto's Vm -> checked domain values, with what the store must enforce.

Where data comes from and where it goes: the Compute servicer (agent/compute/service.py) hands
each Vm of a request to `vm` here and stores the message with the references and unique values
it returns; the reconciler later reads the same stored bytes back into the same values with
`parse` (no host checks then: the host may have changed, and the reconciler reports that as
the VM's status, not as a refusal).

Faults are the store's `Invalid` (INVALID_ARGUMENT: the value itself is wrong) or `Precondition`
(FAILED_PRECONDITION: this host cannot take it: more vCPUs or memory than it has, a NUMA node it
lacks, a port that is missing or bound to something else, maintenance mode), each naming the
field as compute.proto spells it (`nics[1].port_id`, `disks[0].image.path`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from agent.store import Invalid, Precondition, Ref, Unique, check_id
from andromede.v1 import compute_pb2, network_pb2

MAX_VCPUS = 255
MEMORY_MB = (64, 16_777_216)
MAX_CMDLINE = 4_096
MAX_DISKS = MAX_NICS = 16
MAX_SHUTDOWN_S = 3_600
DEFAULT_SHUTDOWN_S = 60
MAX_DISK_GIB = 65_536
MAX_DISK_ID, MAX_NIC_ID = 20, 32  # characters; the disk's id is the guest's disk serial
_SHA256 = re.compile(r"[0-9a-f]{64}")
_POWER = {
    compute_pb2.POWER_STATE_UNSPECIFIED: "running",
    compute_pb2.POWER_STATE_RUNNING: "running",
    compute_pb2.POWER_STATE_STOPPED: "stopped",
    compute_pb2.POWER_STATE_PAUSED: "paused",
}
_ACCEL = {compute_pb2.ACCEL_UNSPECIFIED: None, compute_pb2.ACCEL_KVM: "kvm",
          compute_pb2.ACCEL_TCG: "tcg"}  # fmt: skip
_FORMATS = {compute_pb2.IMAGE_FORMAT_RAW: "raw", compute_pb2.IMAGE_FORMAT_QCOW2: "qcow2"}
_MODELS = {compute_pb2.NIC_MODEL_UNSPECIFIED: "virtio-net-pci",
           compute_pb2.NIC_MODEL_VIRTIO: "virtio-net-pci",
           compute_pb2.NIC_MODEL_E1000E: "e1000e"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Host:
    """What the checks need to know about this host: its logical CPUs, memory, NUMA nodes,
    default hugepage size, and the image directory (None: not configured)."""

    cpus: int = 1
    memory_mb: int = 1_024
    numa_nodes: frozenset[int] = frozenset({0})
    hugepage_mb: int = 2
    images_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class Image:
    path: str  # relative to the image directory, checked: no "/" in front, no ".."
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class Disk:
    id: str
    image: Image
    format: str  # "raw" or "qcow2"
    read_only: bool
    size_gib: int  # 0: the image's own size


@dataclass(frozen=True, slots=True)
class Nic:
    id: str
    port_id: str
    model: str  # QEMU's device name


@dataclass(frozen=True, slots=True)
class VmSpec:
    """A checked Vm. `power` is "running", "stopped" or "paused"; `accel` None means KVM when
    it is usable, else TCG."""

    id: str
    tenant_id: str
    vcpus: int
    memory_mb: int
    kernel: Image | None
    initrd: Image | None
    cmdline: str
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    power: str
    shutdown_timeout_s: int
    accel: str | None
    numa_node: int | None
    hugepages: bool

    def machine(self) -> VmSpec:
        """The spec without what can change on a running VM (its NICs are hot-plugged, its
        power state is an action): two specs whose `machine()` differ need a restart."""
        return replace(self, nics=(), power="running")


@dataclass(frozen=True, slots=True)
class Checked:
    value: VmSpec
    refs: tuple[Ref, ...] = ()
    unique: tuple[Unique, ...] = ()


PortLookup = Callable[[str], network_pb2.Port | None]


def vm(message: compute_pb2.Vm, host: Host, port: PortLookup | None = None) -> Checked:
    """Check one Vm against the proto's rules and this host. `port` reads a stored port by id
    (None: the ports' bindings are not checked, only that they exist, by the store)."""
    value = parse(message)
    if value.vcpus > host.cpus:
        raise Precondition("vcpus", f"{value.vcpus} is more than this host's {host.cpus} "
                           f"logical CPUs")  # fmt: skip
    if value.memory_mb > host.memory_mb:
        raise Precondition("memory_mb", f"{value.memory_mb} MiB is more than this host's "
                           f"{host.memory_mb} MiB of memory")  # fmt: skip
    if value.hugepages and value.memory_mb % host.hugepage_mb:
        raise Invalid("memory_mb", f"must be a multiple of the hugepage size "
                      f"({host.hugepage_mb} MiB) with hugepages, got {value.memory_mb}")  # fmt: skip
    if value.numa_node is not None and value.numa_node not in host.numa_nodes:
        raise Precondition("numa_node", f"this host has no NUMA node {value.numa_node} "
                           f"(it has {sorted(host.numa_nodes)})")  # fmt: skip
    if host.images_dir is not None:
        for field, image in _images(value):
            no_links(host.images_dir, image.path, field)
    for i, nic in enumerate(value.nics):
        stored = port(nic.port_id) if port is not None else None
        if stored is not None:
            _bound_here(stored, value.id, nic, f"nics[{i}].port_id")
    return Checked(
        value,
        refs=tuple(Ref(f"nics[{i}].port_id", "port", n.port_id) for i, n in enumerate(value.nics)),
        unique=tuple(Unique(f"nics[{i}].port_id", "vm_nic.port", n.port_id)
                     for i, n in enumerate(value.nics)),
    )  # fmt: skip


def parse(message: compute_pb2.Vm) -> VmSpec:
    """A stored or requested Vm as a VmSpec; raises Invalid naming the field."""
    check_id("id", message.id)
    check_id("tenant_id", message.tenant_id)
    if not 1 <= message.vcpus <= MAX_VCPUS:
        raise Invalid("vcpus", f"must be 1..{MAX_VCPUS}, got {message.vcpus}")
    low, high = MEMORY_MB
    if not low <= message.memory_mb <= high:
        raise Invalid("memory_mb", f"must be {low:,}..{high:,} MiB, got {message.memory_mb:,}")
    kernel = _image("kernel", message.kernel) if message.HasField("kernel") else None
    initrd = _image("initrd", message.initrd) if message.HasField("initrd") else None
    if kernel is None and (initrd is not None or message.kernel_cmdline):
        raise Invalid("initrd" if initrd else "kernel_cmdline", "only with kernel")
    if len(message.kernel_cmdline) > MAX_CMDLINE:
        raise Invalid("kernel_cmdline", f"must be at most {MAX_CMDLINE:,} characters, got "
                      f"{len(message.kernel_cmdline):,}")  # fmt: skip
    if message.power_state not in _POWER:
        raise Invalid("power_state", f"unknown value {message.power_state}")
    if message.accel not in _ACCEL:
        raise Invalid("accel", f"unknown value {message.accel}")
    if message.shutdown_timeout_s > MAX_SHUTDOWN_S:
        raise Invalid("shutdown_timeout_s", f"must be 0..{MAX_SHUTDOWN_S:,}, got "
                      f"{message.shutdown_timeout_s:,}")  # fmt: skip
    return VmSpec(
        id=message.id,
        tenant_id=message.tenant_id,
        vcpus=message.vcpus,
        memory_mb=message.memory_mb,
        kernel=kernel,
        initrd=initrd,
        cmdline=message.kernel_cmdline,
        disks=_distinct("disks", MAX_DISKS, [_disk(i, d) for i, d in enumerate(message.disks)]),
        nics=_nics(message),
        power=_POWER[message.power_state],
        shutdown_timeout_s=message.shutdown_timeout_s or DEFAULT_SHUTDOWN_S,
        accel=_ACCEL[message.accel],
        numa_node=message.numa_node if message.HasField("numa_node") else None,
        hugepages=message.hugepages,
    )


def check_image_path(field: str, path: str) -> None:
    """An ImageRef path: relative to the image directory and inside it."""
    pure = PurePosixPath(path)
    if not path:
        raise Invalid(field, "required: a path relative to the image directory")
    if path.startswith("/") or ".." in pure.parts or "\0" in path:
        raise Invalid(field, f"must be relative to the image directory, with no leading '/' and "
                      f"no '..', got {path!r}")  # fmt: skip


def no_links(images_dir: Path, path: str, field: str) -> None:
    """Refuse a path that, as the host has it now, passes through a symlink (or is one): the
    image directory's contents are the only files a VM may be given."""
    current = images_dir
    for part in PurePosixPath(path).parts:
        current = current / part
        if current.is_symlink():
            raise Invalid(field, f"{path!r} passes through the symlink {current}: give the path "
                          f"of the file itself, inside the image directory")  # fmt: skip


# --- parts -------------------------------------------------------------------------------------


def _image(field: str, ref: compute_pb2.ImageRef) -> Image:
    check_image_path(f"{field}.path", ref.path)
    if ref.sha256 and not _SHA256.fullmatch(ref.sha256):
        raise Invalid(f"{field}.sha256", "must be 64 lowercase hex characters, or empty")
    return Image(ref.path, ref.sha256)


def _disk(i: int, disk: compute_pb2.VmDisk) -> Disk:
    field = f"disks[{i}]"
    _part_id(f"{field}.id", disk.id, MAX_DISK_ID)
    if not disk.HasField("image"):
        raise Invalid(f"{field}.image", "required")
    if disk.format not in _FORMATS:
        raise Invalid(f"{field}.format", "required: IMAGE_FORMAT_RAW or IMAGE_FORMAT_QCOW2")
    if disk.size_gib > MAX_DISK_GIB:
        raise Invalid(f"{field}.size_gib", f"must be 0..{MAX_DISK_GIB:,}, got {disk.size_gib:,}")
    if disk.read_only and disk.size_gib:
        raise Invalid(f"{field}.size_gib", "must be 0 when read_only")
    return Disk(disk.id, _image(f"{field}.image", disk.image), _FORMATS[disk.format],
                disk.read_only, disk.size_gib)  # fmt: skip


def _nics(message: compute_pb2.Vm) -> tuple[Nic, ...]:
    nics = []
    for i, nic in enumerate(message.nics):
        field = f"nics[{i}]"
        _part_id(f"{field}.id", nic.id, MAX_NIC_ID)
        check_id(f"{field}.port_id", nic.port_id)
        if nic.model not in _MODELS:
            raise Invalid(f"{field}.model", f"unknown value {nic.model}")
        nics.append(Nic(nic.id, nic.port_id, _MODELS[nic.model]))
    _unique("nics", [n.port_id for n in nics], "port_id", "each NIC needs a port of its own")
    return _distinct("nics", MAX_NICS, nics)


def _part_id(field: str, value: str, most: int) -> None:
    """A disk's or NIC's id: the id rule (common.proto), and at most `most` characters."""
    if not value or len(value) > most:
        raise Invalid(field, f"must be 1..{most} characters, got {value!r}")
    check_id(field, value)


def _distinct(field: str, most: int, items: list) -> tuple:
    """Disks or NICs: at most `most`, with distinct ids."""
    if len(items) > most:
        raise Invalid(field, f"at most {most}, got {len(items)}")
    _unique(field, [item.id for item in items], "id", "ids must be distinct within the VM")
    return tuple(items)


def _unique(field: str, values: list[str], name: str, why: str) -> None:
    """Refuse the second of two equal values, naming both places."""
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        at = first.setdefault(value, i)
        if at != i:
            raise Invalid(f"{field}[{i}].{name}", f"{value!r} is also {field}[{at}]'s {name}: {why}")


def _images(value: VmSpec) -> list[tuple[str, Image]]:
    images = [("kernel.path", value.kernel), ("initrd.path", value.initrd)]
    images += [(f"disks[{i}].image.path", d.image) for i, d in enumerate(value.disks)]
    return [(field, image) for field, image in images if image is not None]


def _bound_here(port: network_pb2.Port, vm_id: str, nic: Nic, field: str) -> None:
    binding = port.vm_nic if port.WhichOneof("binding") == "vm_nic" else None
    if binding is None or (binding.vm_id, binding.nic_id) != (vm_id, nic.id):
        bound = (f"bound to VM {binding.vm_id} NIC {binding.nic_id}" if binding is not None
                 else f"bound to {port.WhichOneof('binding') or 'nothing'}")  # fmt: skip
        raise Precondition(field, f"port {port.id} is {bound}, not to this VM's NIC: set its "
                           f"binding to vm_nic {{vm_id: {vm_id}, nic_id: {nic.id}}} first")  # fmt: skip

