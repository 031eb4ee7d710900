"""One VM's QEMU process: its command line (a pure function of the spec and what the host
prepared), its start, and how a later agent knows it again.

QEMU is started without a shell, in a session of its own (not in the agent's process group, so
a signal to the agent or its group does not reach it), as the unprivileged VM user, with
`-sandbox on` (seccomp: no spawning, no privilege changes, no obsolete calls). It opens nothing
that needs a privilege: the agent hands it every file descriptor it needs, as libvirt does:

- the QMP socket, already listening (`-chardev socket,fd=N,server=on`): the socket file is the
  agent's, so the agent can always connect to it, and a later agent reconnects by its path;
- the console socket (a second serial port, ttyS1, for an interactive console), the same way;
- the serial log (ttyS0), opened by the agent for appending (`-add-fd` + `/dev/fdset/N`);
- each NIC's tap (`-netdev tap,fd=N`), opened by the agent (agent/compute/taps.py);
- each disk: the base image, opened read-only through the confined walk
  (agent/compute/images.py), and the VM's overlay read-write (`-blockdev` nodes on
  `/dev/fdset/N`, the overlay's backing given explicitly, never read from its header);
- the kernel and initrd as `/proc/self/fd/N` of the descriptors the walk proved.

`-S`: the VM starts paused and the reconciler resumes it (QMP `cont`) once its ports are wired;
`-no-shutdown`: a guest that powers off leaves QEMU in status "shutdown", so a soft reboot is
`system_powerdown`, then `system_reset` and `cont`, in the same process.

Identity: `-name guest=<vm id>` is in the command line; with the process's start time (psutil)
it tells a re-adopting agent that a pid from the VM's state file is still that VM's QEMU.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.compute.specs import VmSpec

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True, slots=True)
class DiskFds:
    id: str
    format: str  # of the base image
    base_fd: int
    overlay_fd: int | None  # None: the base image is attached read-only


@dataclass(frozen=True, slots=True)
class NicFd:
    id: str
    mac: str
    model: str
    fd: int


@dataclass(frozen=True, slots=True)
class Launch:
    """What the host prepared for one start of a VM: its accelerator and descriptors."""

    accel: str  # "kvm" or "tcg"
    qmp_fd: int
    console_fd: int
    serial_fd: int
    kernel_fd: int | None
    initrd_fd: int | None
    disks: tuple[DiskFds, ...]
    nics: tuple[NicFd, ...]

    def fds(self) -> tuple[int, ...]:
        fds = [self.qmp_fd, self.console_fd, self.serial_fd, self.kernel_fd, self.initrd_fd]
        fds += [fd for d in self.disks for fd in (d.base_fd, d.overlay_fd)]
        fds += [n.fd for n in self.nics]
        return tuple(fd for fd in fds if fd is not None)


def argv(binary: str, spec: VmSpec, launch: Launch) -> list[str]:
    """QEMU's command line for `spec` with what `launch` holds. Pure."""
    args = [
        binary, "-name", f"guest={spec.id},debug-threads=on",
        "-M", "pc", "-accel", launch.accel, "-cpu", "host" if launch.accel == "kvm" else "max",
        "-smp", str(spec.vcpus), "-m", str(spec.memory_mb),
        "-nodefaults", "-nographic", "-no-user-config", "-S", "-no-shutdown",
        # A guest kernel that panics (pvpanic driver) stops in "guest-panicked", for the agent
        # to report and restart, rather than rebooting unseen.
        "-device", "pvpanic", "-action", "panic=pause",
        "-sandbox", SANDBOX,
        "-chardev", f"socket,id=qmp,fd={launch.qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-add-fd", f"fd={launch.serial_fd},set=1",
        "-chardev", "file,id=serial,path=/dev/fdset/1,append=on", "-serial", "chardev:serial",
        "-chardev", f"socket,id=console,fd={launch.console_fd},server=on,wait=off",
        "-device", "isa-serial,chardev=console",
    ]  # fmt: skip
    if spec.hugepages:
        args += ["-mem-prealloc", "-mem-path", "/dev/hugepages"]
    if spec.numa_node is not None:
        args += ["-object", f"memory-backend-ram,id=mem0,size={spec.memory_mb}M,"
                 f"host-nodes={spec.numa_node},policy=bind", "-numa", "node,memdev=mem0"]  # fmt: skip
    if launch.kernel_fd is not None:
        args += ["-kernel", f"/proc/self/fd/{launch.kernel_fd}"]
        if launch.initrd_fd is not None:
            args += ["-initrd", f"/proc/self/fd/{launch.initrd_fd}"]
        if spec.cmdline:
            args += ["-append", spec.cmdline]
    for i, disk in enumerate(launch.disks):
        args += _disk(i, disk)
    for nic in launch.nics:
        args += ["-netdev", f"tap,id=net-{nic.id},fd={nic.fd}", "-device", device_arg(nic.model, nic.id, nic.mac)]
    return args


def device_arg(model: str, nic_id: str, mac: str) -> str:
    """The -device value of a NIC (also what QMP device_add gets, as a dict)."""
    return ",".join(f"{k}={v}" for k, v in nic_device(model, nic_id, mac).items())


def nic_device(model: str, nic_id: str, mac: str) -> dict[str, str]:
    # romfile="": no iPXE option ROM (the VMs boot their kernel directly or from disk).
    return {"driver": model, "id": f"nic-{nic_id}", "netdev": f"net-{nic_id}", "mac": mac,
            "romfile": ""}  # fmt: skip


def _disk(index: int, disk: DiskFds) -> list[str]:
    base_set, overlay_set = 10 + 2 * index, 11 + 2 * index
    args = ["-add-fd", f"fd={disk.base_fd},set={base_set}",
            "-blockdev", f"driver=file,filename=/dev/fdset/{base_set},node-name=base-{disk.id}-file,read-only=on",
            "-blockdev", f"driver={disk.format},file=base-{disk.id}-file,node-name=base-{disk.id},read-only=on"]  # fmt: skip
    top = f"base-{disk.id}"
    if disk.overlay_fd is not None:
        args += ["-add-fd", f"fd={disk.overlay_fd},set={overlay_set}",
                 "-blockdev", f"driver=file,filename=/dev/fdset/{overlay_set},node-name=disk-{disk.id}-file",
                 "-blockdev", f"driver=qcow2,file=disk-{disk.id}-file,backing=base-{disk.id},node-name=disk-{disk.id}"]  # fmt: skip
        top = f"disk-{disk.id}"
    return args + ["-device", f"virtio-blk-pci,drive={top},serial={disk.id},id=blk-{disk.id}"]


def spawn(args: Sequence[str], fds: Sequence[int], user: str | None, log: Path) -> subprocess.Popen:
    """Start QEMU: no shell, its own session, the VM user, only `fds` inherited; its own
    messages (not the guest's) appended to `log`."""
    ids = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with open(log, "ab") as out:
        return subprocess.Popen(list(args), pass_fds=tuple(fds), start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                **ids)  # fmt: skip


def start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None if there is no such process
    or it is a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def is_vm(pid: int, vm_id: str, started: float) -> bool:
    """True if `pid` is still the QEMU process started for `vm_id` at `started`."""
    if start_time(pid) != started:
        return False
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return any(a.startswith(f"guest={vm_id},") for a in args)


def user_or_none(user: str) -> str | None:
    """The VM user to switch to, or None when the agent itself is not root (a developer's
    run: QEMU then runs as the agent's own user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"the VM user {user!r} does not exist: create it with "
                          f"`systemd-sysusers systemd/andromede.sysusers`, or set [qemu] user") from None  # fmt: skip
    return user
