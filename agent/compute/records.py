"""What the agent keeps about each VM on disk, so that a later agent (after a crash, an upgrade,
a kill -9) finds its VMs again: `<state dir>/vms/<vm id>/vm.json`, beside the VM's overlays
and serial log.

The record is written before the step it describes takes effect where that is possible (the
taps it is about to make) and right after otherwise (the pid of a QEMU just started), always
atomically (a temporary file, fsync, rename): a crash leaves the old record or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

VM_DIR = "vms"
RECORD = "vm.json"


@dataclass(slots=True)
class NicRecord:
    port_id: str
    tap: str
    mac: str
    model: str
    mtu: int


@dataclass(slots=True)
class VmRecord:
    id: str
    pid: int = 0  # 0: no QEMU
    started: float = 0.0  # the process's start time (psutil create_time), its identity
    started_wall: float = 0.0
    machine: str = ""  # digest of the spec QEMU was started with (VmSpec.machine())
    accel: str = ""
    nics: dict[str, NicRecord] = field(default_factory=dict)  # by NIC id, as plugged
    reboot_generation: int = 0  # the vm_reboot generation last done
    crash_restarts: int = 0
    shutdown_timeout_s: int = 60  # kept for a deletion, when the spec is gone


class Records:
    """The VM directories under the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / VM_DIR
        self.root.mkdir(parents=True, exist_ok=True, mode=0o750)

    def dir(self, vm_id: str) -> Path:
        return self.root / vm_id

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def load(self, vm_id: str) -> VmRecord:
        """The VM's record; a fresh one if it has none (or an unreadable one: then the VM is
        treated as new, and what it had is found again from the host by its names)."""
        try:
            data = json.loads((self.dir(vm_id) / RECORD).read_text())
            nics = {k: NicRecord(**v) for k, v in data.pop("nics", {}).items()}
            return VmRecord(**data, nics=nics)
        except (OSError, ValueError, TypeError):
            return VmRecord(vm_id)

    def save(self, record: VmRecord) -> None:
        directory = self.dir(record.id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = directory / (RECORD + ".tmp")
        with open(tmp, "w") as out:
            json.dump(asdict(record), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / RECORD)

    def remove(self, vm_id: str) -> None:
        shutil.rmtree(self.dir(vm_id), ignore_errors=True)
