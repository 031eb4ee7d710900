"""The test guest (agent/lab/guest.py), against the real thing: built into the default cache
(a real `apt-get download` of Debian's cloud kernel the first time), booted by a real
`qemu-system-x86_64 -accel tcg` (KVM is unusable on these machines: ../shared/lab-notes.md).

What is proved: build() is idempotent, quick when cached, and its initramfs holds what /init
needs; the guest reaches ANDROMEDE-GUEST-READY within 30 s (printed once per boot, again after
a reset); the second isa-serial is the guest's ttyS1 and GuestConsole runs commands there
(exit status, output, many times, after a timeout, after a reboot, and after QEMU was
restarted on the same socket); QMP system_powerdown makes QEMU exit within 15 s, and with
andromede.acpi=off it does not; NICs named in andromede.ip are configured (address, MTU) at
boot and again when hot-plugged, unplugged and plugged again. The NICs use `-netdev hubport`
(no host network, no `-netdev user`). Every QEMU started here is stopped by its pid and its
temporary directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from agent.lab.guest import (
    MODULES,
    NIC_UP_MARKER,
    POWER_BUTTON_MARKER,
    READY_MARKER,
    Guest,
    GuestConsole,
    build,
    cache_root,
)

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"
BASE_CMDLINE = "console=ttyS0 quiet panic=-1"
BOOT_TIMEOUT_S = 30.0
IP0, IP1 = "198.51.100.11/24", "203.0.113.11/24"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The guest, built (or found) in the default cache; a missing part fails, never skips."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} not found: install qemu-system-x86 (scripts/setup.sh)", pytrace=False)
    return build()


class Vm:
    """One QEMU process running the guest, in its own temporary directory."""

    def __init__(self, guest: Guest, workdir: Path, append: str, extra: Sequence[str],
                 *, no_reboot: bool = True, second_serial: bool = True) -> None:  # fmt: skip
        self.dir = workdir
        self.serial = workdir / "serial.log"
        self.console_sock = workdir / "console.sock"
        self.qmp_sock = workdir / "qmp.sock"
        self.cmdline = f"{BASE_CMDLINE} {append}".strip()
        self.serial.unlink(missing_ok=True)  # a QEMU started again here must not see old marks
        argv = [
            QEMU, "-M", "pc", "-accel", "tcg", "-m", "128", "-nodefaults", "-nographic",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", self.cmdline,
            "-chardev", f"file,id=ser0,path={self.serial}", "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.qmp_sock},server=on,wait=off",
        ]  # fmt: skip
        if no_reboot:
            argv.append("-no-reboot")
        if second_serial:
            argv += ["-chardev", f"socket,id=con1,path={self.console_sock},server=on,wait=off",
                     "-device", "isa-serial,chardev=con1"]  # fmt: skip
        argv += list(extra)
        self.started = time.monotonic()
        with open(workdir / "qemu.out", "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def log(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count(self, marker: str) -> int:
        return self.log().count(marker)

    def wait_for(self, marker: str, times: int = 1, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Seconds from QEMU's start until `marker` is in the serial log `times` times."""
        deadline = time.monotonic() + timeout
        while self.count(marker) < times:
            if self.proc.poll() is not None:
                out = (self.dir / "qemu.out").read_text(errors="replace")
                pytest.fail(f"QEMU exited with {self.proc.returncode} before {marker} "
                            f"x{times}:\n{out}\nserial log:\n{self.log()[-2000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"{marker} not seen {times} time(s) within {timeout} s; serial "
                            f"log:\n{self.log()[-2000:]}")  # fmt: skip
            time.sleep(0.05)
        return time.monotonic() - self.started

    def qmp(self, *commands: tuple[str, dict[str, Any] | None]) -> list[Any]:
        """Run QMP commands in order over one fresh connection (qemu.qmp, asyncio)."""

        async def go() -> list[Any]:
            client = QMPClient("andromede-test")
            deadline = time.monotonic() + 10
            while True:
                try:
                    await client.connect(str(self.qmp_sock))
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            try:
                return [await client.execute(name, args) for name, args in commands]
            finally:
                with contextlib.suppress(EOFError):  # QEMU exited first (system_powerdown)
                    await client.disconnect()

        return asyncio.run(go())

    def stop(self) -> None:
        """Stop this QEMU by its pid (TERM, then KILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temporary directory (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="andromede-guest-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start(guest: Guest, workdir: Path) -> Iterator[Any]:
    """start(append="", extra=(), **options) -> Vm; every Vm started is stopped at teardown."""
    vms: list[Vm] = []

    def _start(append: str = "", extra: Sequence[str] = (), **options: bool) -> Vm:
        vm = Vm(guest, workdir, append, extra, **options)
        vms.append(vm)
        return vm

    try:
        yield _start
    finally:
        for vm in vms:
            vm.stop()


def _nic(netdev: str, mac: str, hub: int) -> list[str]:
    return ["-netdev", f"hubport,id={netdev},hubid={hub}",
            "-device", f"virtio-net-pci,netdev={netdev},mac={mac},romfile="]  # fmt: skip


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.1)


def test_build_is_cached_idempotent_and_complete(guest: Guest) -> None:
    root = cache_root()
    assert REPO not in root.parents and root != REPO
    assert guest.kernel.parent.parent == root
    assert guest.kernel_version in guest.kernel.parent.name
    started = time.monotonic()
    again = build()
    assert again == guest
    assert time.monotonic() - started < 1.0, "a cached build must not download or unpack"

    archive = gzip.decompress(guest.initrd.read_bytes())
    names = _cpio_names(archive)
    for name in ("init", "bin/busybox", "bin/sh", "bin/acpid", "bin/ip", "dev/console",
                 "etc/acpi/PWRF/00000080", "lib/modules/order"):  # fmt: skip
        assert name in names, name
    order = _cpio_file(archive, "lib/modules/order").decode().split()
    assert order == [m for m in MODULES if m in order] and "virtio_net" in order
    assert all(f"lib/modules/{m}.ko" in names for m in order)
    assert guest.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage


def test_boots_to_ready_and_console_runs_commands(start: Any) -> None:
    vm = start()
    boot_s = vm.wait_for(READY_MARKER)
    print(f"\nboot to {READY_MARKER}: {boot_s:.2f} s")
    assert boot_s < BOOT_TIMEOUT_S

    with GuestConsole(vm.console_sock) as console:
        assert console.run("cat /proc/cmdline") == (0, vm.cmdline + "\n")
        assert console.run("false") == (1, "")
        # The isa-serial is the guest's ttyS1 (the command's own stdin is /dev/null).
        assert console.run("readlink /proc/$$/fd/0") == (0, "/dev/ttyS1\n")
        assert console.run("exit 7") == (7, "")
        status, output = console.run("echo out; echo err >&2; printf 'no newline'")
        assert (status, output) == (0, "out\nerr\nno newline")
        assert console.run("cat") == (0, "")  # stdin is /dev/null, not the console
        for i in range(20):
            assert console.run(f"echo $(({i} * 3))") == (0, f"{i * 3}\n")
        with pytest.raises(TimeoutError):
            console.run("sleep 30", timeout=1)
        assert console.run("echo after the timeout") == (0, "after the timeout\n")
        with pytest.raises(TimeoutError):
            console.run('echo "an open quote', timeout=1)
        assert console.run("echo recovered") == (0, "recovered\n")
        status, output = console.run("cat /sys/class/tty/ttyS1/type; ls /dev/input")
        assert status == 0 and output.split()[0] != "0" and "event0" in output
    time.sleep(0.5)
    assert vm.count(READY_MARKER) == 1
    assert vm.proc.poll() is None


def test_system_powerdown_makes_qemu_exit(start: Any) -> None:
    vm = start()
    vm.wait_for(READY_MARKER)
    pressed = time.monotonic()
    vm.qmp(("system_powerdown", None))
    try:
        vm.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"QEMU still running 15 s after system_powerdown; serial log:\n{vm.log()}")
    print(f"\nsystem_powerdown to QEMU exit: {time.monotonic() - pressed:.2f} s")
    assert vm.proc.returncode == 0
    assert POWER_BUTTON_MARKER in vm.log()


def test_acpi_off_ignores_the_power_button(start: Any) -> None:
    vm = start("andromede.acpi=off")
    vm.wait_for(READY_MARKER)
    vm.qmp(("system_powerdown", None))
    time.sleep(5)
    assert vm.proc.poll() is None, "andromede.acpi=off: the guest must ignore the power button"
    assert POWER_BUTTON_MARKER not in vm.log()
    with GuestConsole(vm.console_sock) as console:
        assert console.run("pidof acpid") == (1, "")


def test_ready_once_per_boot_and_console_survives_reboot_and_restart(start: Any) -> None:
    vm = start(no_reboot=False)
    vm.wait_for(READY_MARKER)
    with GuestConsole(vm.console_sock) as console:
        assert console.run("echo first boot") == (0, "first boot\n")
        vm.qmp(("system_reset", None))
        vm.wait_for(READY_MARKER, times=2)  # the file chardev keeps both boots
        assert console.run("echo second boot", timeout=20) == (0, "second boot\n")
        assert vm.count(READY_MARKER) == 2

        vm.stop()  # QEMU restarted on the same sockets: the console reconnects
        again = start(no_reboot=False)
        again.wait_for(READY_MARKER)
        assert console.run("echo new qemu", timeout=20) == (0, "new qemu\n")


def test_nics_configured_at_boot_and_on_hotplug(start: Any) -> None:
    vm = start(f"andromede.ip=eth0={IP0},eth1={IP1} andromede.mtu=1450",
               _nic("n0", "52:54:00:00:00:01", 0))  # fmt: skip
    vm.wait_for(READY_MARKER)
    log = vm.log()
    assert log.index(f"{NIC_UP_MARKER} eth0 {IP0}") < log.index(READY_MARKER)
    with GuestConsole(vm.console_sock) as console:
        status, output = console.run("ip -o addr show dev eth0; cat /sys/class/net/eth0/mtu")
        assert status == 0 and f"inet {IP0}" in output and output.split()[-1] == "1450"
        assert console.run("ping -c 1 -W 2 198.51.100.11")[0] == 0

        plug = (("netdev_add", {"type": "hubport", "id": "n1", "hubid": 1}),
                ("device_add", {"driver": "virtio-net-pci", "netdev": "n1", "id": "nic1",
                                "mac": "52:54:00:00:00:02", "romfile": ""}))  # fmt: skip
        vm.qmp(*plug)
        vm.wait_for(f"{NIC_UP_MARKER} eth1 {IP1}", timeout=15)
        status, output = console.run("ip -o addr show dev eth1; cat /sys/class/net/eth1/mtu")
        assert status == 0 and f"inet {IP1}" in output and output.split()[-1] == "1450"

        vm.qmp(("device_del", {"id": "nic1"}))  # done when the guest has ejected it
        _wait(lambda: console.run("test -e /sys/class/net/eth1")[0] == 1, 20, "eth1 unplugged")
        _wait(lambda: "nic1" not in _pci_ids(vm), 20, "nic1 gone from QEMU")
        vm.qmp(("netdev_del", {"id": "n1"}))
        vm.qmp(*plug)
        vm.wait_for(f"{NIC_UP_MARKER} eth1 {IP1}", times=2, timeout=15)
        status, output = console.run("ip -o addr show dev eth1")
        assert status == 0 and f"inet {IP1}" in output
    assert vm.count(READY_MARKER) == 1


def test_boots_without_a_second_serial_port(start: Any) -> None:
    vm = start(second_serial=False)
    vm.wait_for(READY_MARKER)
    vm.qmp(("system_powerdown", None))  # acpid runs, so the guest is alive past READY
    vm.proc.wait(15)
    assert vm.proc.returncode == 0


def _pci_ids(vm: Vm) -> set[str]:
    [buses] = vm.qmp(("query-pci", None))
    return {d["qdev_id"] for bus in buses for d in bus["devices"]}


def _cpio_entries(archive: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each entry of a newc cpio archive."""
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return
        yield name, archive[data_start : data_start + size]
        pos = (data_start + size + 3) & ~3


def _cpio_names(archive: bytes) -> set[str]:
    return {name for name, _ in _cpio_entries(archive)}


def _cpio_file(archive: bytes, wanted: str) -> bytes:
    return next(data for name, data in _cpio_entries(archive) if name == wanted)
