"""Real VMs in the lab: the test guest (agent/lab/guest.py) put in the lab's image directory,
and `LabGuest`, one VM that an agent runs, seen from outside as a stand-in VM is (its MAC and
address; ping from it; read a file in it), through its console (GuestConsole on ttyS1).

Where data comes from and where it goes: the lab makes nothing here itself; the agent on the
VM's host starts QEMU from the spec the lab put (`spec()`), and this module only reads what
that agent made: the console socket in the agent's run directory and the serial log in its
state directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.compute.reconcile import sockets
from agent.lab.guest import GuestConsole, build
from agent.lab.probes import PingResult, parse_ping
from andromede.v1 import compute_pb2

READY = "ANDROMEDE-GUEST-READY"
GUEST_DIR = "guest"  # inside the lab's image directory


@dataclass(frozen=True, slots=True)
class GuestImages:
    """The test guest in an image directory: paths relative to it, and their SHA-256."""

    kernel: compute_pb2.ImageRef
    initrd: compute_pb2.ImageRef


def install_guest(images_dir: Path) -> GuestImages:
    """Put the (cached, built once) test guest into `images_dir`/guest/."""
    guest = build()
    target = images_dir / GUEST_DIR
    target.mkdir(parents=True, exist_ok=True)
    refs = []
    for source in (guest.kernel, guest.initrd):
        dest = target / source.name
        if not dest.exists():
            try:
                os.link(source, dest)
            except OSError:  # another filesystem
                shutil.copyfile(source, dest)
        digest = hashlib.sha256(dest.read_bytes()).hexdigest()
        refs.append(compute_pb2.ImageRef(path=f"{GUEST_DIR}/{source.name}", sha256=digest))
    return GuestImages(*refs)


@dataclass(slots=True)
class LabGuest:
    """One real VM: its id, MAC and address (CIDR), where its agent keeps its console socket
    and serial log."""

    id: str
    mac: str
    ip_cidr: str
    run_dir: Path  # the agent's [qemu] run_dir
    state_dir: Path  # the agent's state directory
    hotplug_ip_cidr: str = ""  # what the guest gives a second NIC (eth1) once one is plugged
    _console: GuestConsole | None = field(default=None, repr=False)

    @property
    def ip(self) -> str:
        return self.ip_cidr.split("/")[0]

    @property
    def serial_log(self) -> Path:
        return self.state_dir / "vms" / self.id / "serial.log"

    def spec(self, images: GuestImages, port_id: str, tenant: str, **fields: object) -> compute_pb2.Vm:
        """The VM as the lab puts it: the test guest with one NIC on `port_id`."""
        ips = f"eth0={self.ip_cidr}" + (f",eth1={self.hotplug_ip_cidr}" if self.hotplug_ip_cidr else "")
        cmdline = f"console=ttyS0 quiet panic=-1 andromede.ip={ips} andromede.mtu=1450"
        return compute_pb2.Vm(
            id=self.id, tenant_id=tenant, vcpus=1, memory_mb=128, kernel=images.kernel,
            initrd=images.initrd, kernel_cmdline=cmdline, shutdown_timeout_s=10,
            nics=[compute_pb2.VmNic(id="nic0", port_id=port_id)], **fields,
        )  # fmt: skip

    def boots(self) -> int:
        """How many times the guest has reached its boot marker (its serial log is kept
        across restarts and reboots of the VM)."""
        try:
            return self.serial_log.read_text(errors="replace").count(READY)
        except FileNotFoundError:
            return 0

    def wait_booted(self, boots: int = 1, timeout: float = 60.0) -> float:
        """Seconds until the guest has booted `boots` times."""
        started = time.monotonic()
        while self.boots() < boots:
            if time.monotonic() - started > timeout:
                tail = self.serial_log.read_text(errors="replace")[-800:] if self.serial_log.exists() else ""
                raise TimeoutError(f"VM {self.id} booted {self.boots()} time(s), not {boots}, "
                                   f"within {timeout} s; its serial log ends with:\n{tail}")  # fmt: skip
            time.sleep(0.05)
        return time.monotonic() - started

    def run(self, command: str, timeout: float = 20.0) -> tuple[int, str]:
        """A shell command inside the guest: (exit status, output)."""
        if self._console is None:
            self._console = GuestConsole(sockets(self.run_dir, self.id)[1])
        return self._console.run(command, timeout)

    def ping(self, destination: str, *, count: int = 3, interval: float = 0.2,
             wait: float = 1.0) -> PingResult:  # fmt: skip
        _, output = self.run(f"ping -c {count} -i {interval} -W {wait:g} {destination}",
                             timeout=count * interval + wait + 10)  # fmt: skip
        return parse_ping(output)

    def read(self, path: str) -> str:
        status, output = self.run(f"cat {path}")
        if status != 0:
            raise OSError(f"cat {path} in VM {self.id}: {output.strip()}")
        return output

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
