"""Does KVM really run guests here? Asked once per boot of the host, with a probe guest.

A /dev/kvm that opens and answers KVM_GET_API_VERSION proves little: nested or paravirtual
KVM (this lab's machines) passes that and then runs guests slower than emulation, or fails
them with "KVM internal error ... emulation failure" minutes later. So the probe boots a real
guest both ways: a 512-byte boot sector that SeaBIOS loads and that leaves through QEMU's
isa-debug-exit device with a known code, under `-accel tcg` and then under `-accel kvm`. KVM is
usable when the KVM run exits with that code and is not much slower than the TCG run.

The answer is kept in the state directory with the host's boot id and QEMU's version, so an
agent restart does not pay for the probe again; a reboot or a QEMU upgrade asks again.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from agent.node_service import probe_kvm

log = structlog.get_logger(__name__)

EXIT_PORT = 0xF4
EXIT_VALUE = 0x31
EXIT_CODE = (EXIT_VALUE << 1) | 1  # what isa-debug-exit makes of the value written
# mov al, 0x31; out 0xf4, al; hlt; jmp $ -- then the boot signature.
BOOT_SECTOR = bytes([0xB0, EXIT_VALUE, 0xE6, EXIT_PORT, 0xF4, 0xEB, 0xFE]).ljust(510, b"\0") + b"\x55\xaa"
SLOWER_THAN_TCG = 3.0  # a KVM run this many times slower than TCG (and over MIN_SLOW_S) is not usable
MIN_SLOW_S = 1.0
TCG_TIMEOUT_S = 20.0
KVM_TIMEOUT_MIN_S = 2.0
CACHE = "kvm-probe.json"  # in the state directory


@dataclass(frozen=True, slots=True)
class KvmResult:
    usable: bool
    detail: str  # why not, for people; empty when usable
    kvm_s: float = 0.0
    tcg_s: float = 0.0


def probe(qemu: str, state_dir: Path, qemu_version: str) -> KvmResult:
    """The cached answer for this boot and QEMU version, or a new probe."""
    key = {"boot_id": _boot_id(), "qemu": qemu_version}
    cache = state_dir / CACHE
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):  # no usable answer kept
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return KvmResult(**stored["result"])
    result = _probe(qemu, state_dir)
    log.info("kvm.probed", usable=result.usable, detail=result.detail, kvm_s=result.kvm_s,
             tcg_s=result.tcg_s)  # fmt: skip
    cache.write_text(json.dumps({"key": key, "result": asdict(result)}))
    return result


def _probe(qemu: str, state_dir: Path) -> KvmResult:
    device = probe_kvm()
    if not device.device_ok:
        return KvmResult(False, device.detail)
    image = state_dir / "kvm-probe.img"
    image.write_bytes(BOOT_SECTOR)
    tcg = _run(qemu, "tcg", image, TCG_TIMEOUT_S)
    if tcg.error:
        return KvmResult(False, f"the probe guest fails even under TCG ({tcg.error}); KVM not tried")
    timeout = max(KVM_TIMEOUT_MIN_S, 20 * tcg.seconds)
    kvm = _run(qemu, "kvm", image, timeout)
    if kvm.error:
        return KvmResult(False, f"{device.detail}, but a probe guest under -accel kvm {kvm.error} "
                         f"(under TCG: {tcg.seconds:.2f} s); VMs run under TCG", tcg_s=tcg.seconds)  # fmt: skip
    if kvm.seconds > MIN_SLOW_S and kvm.seconds > SLOWER_THAN_TCG * tcg.seconds:
        return KvmResult(False, (
            f"{device.detail}, but a probe guest took {kvm.seconds:.2f} s under KVM and "
            f"{tcg.seconds:.2f} s under TCG: hardware virtualization here is slower than "
            f"emulation (nested or paravirtual KVM); VMs run under TCG"
        ), kvm.seconds, tcg.seconds)  # fmt: skip
    return KvmResult(True, "", kvm.seconds, tcg.seconds)


@dataclass(frozen=True, slots=True)
class _Run:
    seconds: float
    error: str  # empty: exited with EXIT_CODE in time


def _run(qemu: str, accel: str, image: Path, timeout: float) -> _Run:
    argv = [qemu, "-accel", accel, "-M", "pc", "-nodefaults", "-nographic", "-m", "16",
            "-no-reboot", "-serial", "none", "-monitor", "none", "-sandbox", "on",
            "-device", f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1",
            "-drive", f"file={image},format=raw,if=ide,snapshot=on"]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return _Run(timeout, f"did not finish within {timeout:.1f} s")
    except OSError as e:
        return _Run(0.0, f"could not start {qemu}: {e.strerror}")
    seconds = round(time.monotonic() - started, 3)
    if done.returncode != EXIT_CODE:
        stderr = " ".join(done.stderr.split())[-300:]
        return _Run(seconds, f"exited with {done.returncode}, not {EXIT_CODE}: {stderr}")
    return _Run(seconds, "")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
