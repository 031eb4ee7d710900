"""The host's resources, read now: what a scheduler needs to place a VM (Nova's resource tracker).

Read-only, from the kernel: psutil for CPUs, memory, disks and load; /proc/cpuinfo for the CPU
model, sockets and flags; /sys/devices/system/node for NUMA nodes; /sys/kernel/mm/hugepages for
hugepage pools of every size (/proc/meminfo only knows the default size, and is the fallback).
`read_inventory` returns the `andromede.v1.Inventory` message; the Node servicer
(agent/node_service.py) answers GetInventory with it. Nothing here writes anything.

Every read is cheap (a few files, a few syscalls; no subprocess, no sleep), so it is done on
each call rather than cached: a scheduler wants the figures of now. The only state is psutil's
CPU-time baseline behind `Cpu.utilization_percent` ("since the previous inventory read").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from andromede.v1 import compute_pb2, node_pb2

SYS_NODE = Path("/sys/devices/system/node")
SYS_HUGEPAGES = Path("/sys/kernel/mm/hugepages")
PROC_CPUINFO = Path("/proc/cpuinfo")
PROC_MEMINFO = Path("/proc/meminfo")

# The CPU flags that matter when placing a VM (virtualisation, vector units, crypto, 1 GiB
# pages), reported when present; the rest of /proc/cpuinfo's long list is noise to a scheduler.
PLACEMENT_FLAGS = frozenset(
    {
        "vmx", "svm", "hypervisor", "sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl",
        "avx512dq", "avx512cd", "avx512_vnni", "amx_tile", "aes", "vaes", "sha_ni", "pclmulqdq",
        "rdrand", "pdpe1gb", "x2apic", "tsc_deadline_timer", "invtsc", "constant_tsc",
    }
)  # fmt: skip

# Filesystems that are not local disks: a VM's disk cannot live there, and statvfs on a hung
# network mount would block the call.
NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre"}
)

_HUGEPAGES_DIR = re.compile(r"hugepages-(\d+)kB")


def read_inventory(
    state_dir: str | os.PathLike[str], vm_specs: Iterable[bytes] = ()
) -> node_pb2.Inventory:
    """The host's resources now. `state_dir` marks the disk that holds VM storage; `vm_specs`
    are the desired VMs (serialized `andromede.v1.Vm`), summed into `allocated`."""
    inventory = node_pb2.Inventory()
    inventory.collected_at.GetCurrentTime()
    inventory.boot_time.CopyFrom(_timestamp(psutil.boot_time()))
    inventory.cpu.CopyFrom(read_cpu())
    inventory.numa_nodes.extend(read_numa_nodes())
    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    inventory.memory.CopyFrom(
        node_pb2.Memory(
            total_bytes=vm.total,
            available_bytes=vm.available,
            used_bytes=vm.used,
            swap_total_bytes=swap.total,
            swap_used_bytes=swap.used,
        )
    )
    inventory.hugepages.extend(read_hugepages())
    inventory.disks.extend(read_disks(Path(state_dir)))
    load1, load5, load15 = os.getloadavg()
    inventory.load.CopyFrom(node_pb2.LoadAverage(load1=load1, load5=load5, load15=load15))
    inventory.allocated.CopyFrom(allocation(vm_specs))
    return inventory


def read_cpu() -> node_pb2.Cpu:
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    model, sockets, flags = _cpuinfo()
    freq = psutil.cpu_freq()
    return node_pb2.Cpu(
        model=model,
        logical_cpus=logical,
        physical_cores=physical,
        sockets=max(sockets, 1),
        max_frequency_mhz=float(freq.max) if freq is not None and freq.max else 0.0,
        flags=sorted(flags & PLACEMENT_FLAGS),
        utilization_percent=psutil.cpu_percent(interval=None),
    )


def read_numa_nodes() -> list[node_pb2.NumaNode]:
    """NUMA nodes in id order; one node holding everything on a host without NUMA in /sys."""
    nodes = []
    dirs = sorted(
        (int(p.name[4:]), p) for p in _listdir(SYS_NODE) if re.fullmatch(r"node\d+", p.name)
    )
    for node_id, path in dirs:
        meminfo = _meminfo(path / "meminfo", prefix=f"Node {node_id} ")
        nodes.append(
            node_pb2.NumaNode(
                id=node_id,
                cpus=_cpulist(_read(path / "cpulist")),
                memory_total_bytes=meminfo.get("MemTotal", 0),
                memory_free_bytes=meminfo.get("MemFree", 0),
                hugepages=_hugepage_pools(path / "hugepages"),
            )
        )
    if not nodes:
        vm = psutil.virtual_memory()
        nodes.append(
            node_pb2.NumaNode(
                id=0,
                cpus=range(psutil.cpu_count(logical=True) or 1),
                memory_total_bytes=vm.total,
                memory_free_bytes=vm.free,
                hugepages=read_hugepages(),
            )
        )
    return nodes


def read_hugepages() -> list[node_pb2.HugePages]:
    """Host-wide pools, smallest page size first: every size from /sys, else the default
    size from /proc/meminfo."""
    pools = _hugepage_pools(SYS_HUGEPAGES)
    if pools:
        return pools
    meminfo = _meminfo(PROC_MEMINFO)
    size = meminfo.get("Hugepagesize", 0)
    if not size:
        return []
    return [
        node_pb2.HugePages(
            page_size_bytes=size,
            total_pages=meminfo.get("HugePages_Total", 0),
            free_pages=meminfo.get("HugePages_Free", 0),
        )
    ]


def read_disks(state_dir: Path) -> list[node_pb2.Disk]:
    """Mounted local filesystems, one entry per filesystem (bind mounts of the same one are
    folded into its shortest mount point), by mount point. The filesystem that holds
    `state_dir` is always listed, even when psutil calls it virtual (overlay in a container),
    and is marked `holds_vm_storage`."""
    try:
        state_dev = os.stat(state_dir).st_dev
    except OSError:
        state_dev = None
    by_dev: dict[int, tuple[str, object]] = {}
    for part in psutil.disk_partitions(all=False):
        _consider(by_dev, part)
    if state_dev is not None and state_dev not in by_dev:
        # The state directory's filesystem is one psutil calls virtual: take the mount that
        # holds it (the longest mount point that is a prefix of the directory).
        resolved = str(state_dir.resolve())
        holders = [
            p for p in psutil.disk_partitions(all=True)
            if resolved == p.mountpoint
            or resolved.startswith(p.mountpoint.rstrip("/") + "/")
        ]  # fmt: skip
        for part in sorted(holders, key=lambda p: len(p.mountpoint), reverse=True)[:1]:
            _consider(by_dev, part, require_dev=state_dev)
    disks = []
    for dev, (mountpoint, part) in sorted(by_dev.items(), key=lambda item: item[1][0]):
        try:
            usage = psutil.disk_usage(mountpoint)
        except OSError:
            continue
        disks.append(
            node_pb2.Disk(
                device=part.device,  # type: ignore[attr-defined]
                mountpoint=mountpoint,
                fstype=part.fstype,  # type: ignore[attr-defined]
                total_bytes=usage.total,
                used_bytes=usage.used,
                free_bytes=usage.free,
                holds_vm_storage=dev == state_dev,
            )
        )
    return disks


def allocation(vm_specs: Iterable[bytes]) -> node_pb2.Allocation:
    """What the desired VMs ask for. A spec that does not parse as a Vm still counts as a VM."""
    out = node_pb2.Allocation()
    for spec in vm_specs:
        out.vms += 1
        try:
            vm = compute_pb2.Vm.FromString(spec)
        except Exception:  # DecodeError: a spec a newer agent wrote; the VM still counts
            continue
        out.vcpus += vm.vcpus
        out.memory_mb += vm.memory_mb
    return out


# --- inside ----------------------------------------------------------------------------------


def _consider(by_dev: dict, part: object, require_dev: int | None = None) -> None:
    mountpoint = part.mountpoint  # type: ignore[attr-defined]
    if part.fstype in NETWORK_FSTYPES:  # type: ignore[attr-defined]
        return
    try:
        st = os.stat(mountpoint)
    except OSError:
        return
    if not os.path.isdir(mountpoint):  # a bind-mounted file (/etc/hosts in a container)
        return
    if require_dev is not None and st.st_dev != require_dev:
        return
    known = by_dev.get(st.st_dev)
    if known is None or len(mountpoint) < len(known[0]):
        by_dev[st.st_dev] = (mountpoint, part)


def _cpuinfo() -> tuple[str, int, set[str]]:
    model, packages, flags = "", set(), set()
    for line in _read(PROC_CPUINFO).splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "physical id":
            packages.add(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, len(packages), flags


def _hugepage_pools(directory: Path) -> list[node_pb2.HugePages]:
    pools = []
    for path in _listdir(directory):
        match = _HUGEPAGES_DIR.fullmatch(path.name)
        if not match:
            continue
        pools.append(
            node_pb2.HugePages(
                page_size_bytes=int(match.group(1)) * 1024,
                total_pages=_read_int(path / "nr_hugepages"),
                free_pages=_read_int(path / "free_hugepages"),
            )
        )
    return sorted(pools, key=lambda p: p.page_size_bytes)


def _meminfo(path: Path, prefix: str = "") -> dict[str, int]:
    """A meminfo file as {name: bytes} ("kB" values converted; page counts kept as counts)."""
    out = {}
    for line in _read(path).splitlines():
        if prefix:
            if not line.startswith(prefix):
                continue
            line = line[len(prefix):]
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        value = int(parts[0])
        out[name.strip()] = value * 1024 if parts[1:] == ["kB"] else value
    return out


def _cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for chunk in text.strip().split(","):
        if not chunk:
            continue
        low, _, high = chunk.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return sorted(cpus)


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _listdir(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _read_int(path: Path) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


psutil.cpu_percent(interval=None)  # start the baseline, so the first inventory read means something
