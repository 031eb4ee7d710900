"""A tiny Linux test guest (Debian's cloud kernel + a busybox initramfs), built once and cached,
and `GuestConsole`, a command channel into it over its second serial port.

Why: the compute tests and the lab need a real guest that boots in a few seconds under TCG
(KVM is unusable on these machines, see ../shared/lab-notes.md), answers ping on the
addresses the test gives it, follows hot-plugged NICs, powers off on the ACPI power button,
and lets a test run shell commands inside it. No pytest here; tests/test_guest.py checks it.

    guest = build()                   # ~/.cache/andromede/guest/<kernel>_<pkg version>_<hash>/
    guest.kernel, guest.initrd        # for qemu -kernel / -initrd
    python -m agent.lab.guest         # builds it (progress on stderr), prints both paths

Building: `apt-cache depends linux-image-cloud-amd64` names the kernel package
(linux-image-6.1.0-NN-cloud-amd64); `apt-get download` fetches it into a temporary directory and
`dpkg -x` unpacks it there (it is never installed); the kernel image and the modules listed in
MODULES are taken from it. The initramfs (a gzip'ed newc cpio written here in Python, so no
root and no mknod) holds Debian's static busybox (`busybox-static`) with a symlink per applet
in /bin, those modules in /lib/modules (decompressed: busybox insmod reads plain .ko files),
the power-button handler and INIT_SCRIPT as /init.

The cache: one sub-directory per (kernel package, its version, hash of the init script, the
module list and busybox), holding `vmlinuz` and `initrd.gz` (and build.json, for people). A
cached build is found without any download; the apt-cache answer itself is remembered until
apt's package lists change (apt-cache takes about a second per call here). A build runs in a
temporary directory beside the final one and is renamed into place, under an flock, so two
processes building at once neither collide nor see a half-written guest.

The guest's /init contract (the agent's tests rely on it):

    kernel command line  console=ttyS0 quiet panic=-1
                         andromede.ip=eth0=198.51.100.11/24,eth1=203.0.113.11/24  (optional)
                         andromede.mtu=1450                                       (optional)
                         andromede.acpi=off       (optional: no acpid, power button ignored)
    on /dev/ttyS0        ANDROMEDE-NIC-UP <dev> <addr/len>   each time it configures a NIC
                         ANDROMEDE-NIC-FAILED <dev> <addr/len> it gave up on one (5 tries)
                         ANDROMEDE-GUEST-READY   once per boot, when every NIC named in
                                                 andromede.ip that existed at boot is up
                         ANDROMEDE-POWER-BUTTON  acpid got the power button; poweroff -f next
    /dev/ttyS1           when a UART is there (QEMU's second isa-serial): a root shell
                         (stty -echo, empty PS1/PS2), restarted when it exits;
                         GuestConsole talks to it

Order: proc, sysfs, devtmpfs; insmod MODULES; lo up; acpid (unless andromede.acpi=off); the
NICs named in andromede.ip that exist at boot, each configured (MTU, address, up) with its
NIC-UP line; READY; then the ttyS1 shell, which PID 1 runs in its foreground for ever (a
background process would have SIGINT ignored for good, and ^C must reach the console's
commands). A background loop keeps looking at the named NICs every 0.15 s, so one hot-plugged
later, or unplugged and plugged again (a new ifindex), is configured again. Lines starting
`andromede-init:` on ttyS0 explain what /init skipped. PID 1 never exits.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

META_PACKAGE = "linux-image-cloud-amd64"
# Loaded in this order (dependencies first). evdev + button give acpid the power button.
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "virtio_mmio", "failover", "net_failover", "virtio_net", "evdev", "button",
)  # fmt: skip
BUSYBOX = Path("/bin/busybox")
READY_MARKER = "ANDROMEDE-GUEST-READY"
NIC_UP_MARKER = "ANDROMEDE-NIC-UP"
NIC_FAILED_MARKER = "ANDROMEDE-NIC-FAILED"
POWER_BUTTON_MARKER = "ANDROMEDE-POWER-BUTTON"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.gz"
_LAYOUT = "1"  # bump when the initramfs layout changes in a way the hashed texts do not show
_APT_LISTS = Path("/var/lib/apt/lists")
_LOCK_WAIT_S = 900.0
_REPO = Path(__file__).resolve().parents[2]

# /init, run by busybox sh as PID 1. Plain POSIX sh + busybox applets; no `set -e` (PID 1 must
# never exit). Device names are checked before they reach `eval`.
INIT_SCRIPT = r"""#!/bin/sh
# /init of Andromede's test guest, written by agent/lab/guest.py (the contract is there).
export PATH=/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
cd /
say() { echo "$*" >/dev/ttyS0; }

set -f
IPS= MTU= ACPI=on
for arg in $(cat /proc/cmdline); do
  case $arg in
    andromede.ip=*) IPS=${arg#andromede.ip=} ;;
    andromede.mtu=*) MTU=${arg#andromede.mtu=} ;;
    andromede.acpi=off) ACPI=off ;;
  esac
done
NICS=
OLD_IFS=$IFS; IFS=,
for spec in $IPS; do
  dev=${spec%%=*}; addr=${spec#*=}
  case $dev in
    ''|*[!a-zA-Z0-9_]*) echo "andromede-init: ignoring andromede.ip entry '$spec'"; continue ;;
  esac
  if [ "$dev" = "$spec" ] || [ -z "$addr" ]; then
    echo "andromede-init: ignoring andromede.ip entry '$spec' (want DEV=ADDR/LEN)"; continue
  fi
  NICS="$NICS $dev=$addr"
done
IFS=$OLD_IFS
set +f

while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m.ko" || echo "andromede-init: insmod $m failed"
done </lib/modules/order
ip link set lo up

if [ "$ACPI" = off ]; then
  echo "andromede-init: andromede.acpi=off: no acpid, the power button is ignored"
else
  n=0
  until grep -qs '^Power Button$' /sys/class/input/event*/device/name || [ $n -ge 30 ]; do
    sleep 0.1; n=$((n + 1))
  done
  [ $n -ge 30 ] && echo "andromede-init: no ACPI power button found"
  acpid -d >/dev/ttyS0 2>&1 &
  # READY promises that the power button works: wait until acpid holds every event device
  # open (an event sent before that is lost).
  acpid_pid=$! want=$(ls /dev/input | grep -c '^event') n=0
  while [ "$(ls -l /proc/$acpid_pid/fd 2>/dev/null | grep -c ' /dev/input/event')" -lt "$want" ]
  do
    [ $n -ge 100 ] && { echo "andromede-init: acpid did not open /dev/input/event*"; break; }
    sleep 0.05; n=$((n + 1))
  done
fi

configure() {
  if [ -n "$MTU" ]; then ip link set dev "$1" mtu "$MTU" || return 1; fi
  ip addr replace "$2" dev "$1" || return 1
  ip link set dev "$1" up || return 1
}

# One look at every NIC named in andromede.ip: configure those that appeared (a NIC seen
# with a new ifindex is a new device: plugged again), forget those that went.
nic_pass() {
  for spec in $NICS; do
    dev=${spec%%=*}; addr=${spec#*=}; idx=
    { read -r idx <"/sys/class/net/$dev/ifindex"; } 2>/dev/null
    eval "seen=\$seen_$dev bad=\$bad_$dev tries=\${tries_$dev:-0}"
    if [ -z "$idx" ]; then
      eval "seen_$dev= bad_$dev= tries_$dev=0"
    elif [ "$idx" != "$seen" ] && [ "$idx" != "$bad" ]; then
      if configure "$dev" "$addr"; then
        eval "seen_$dev=$idx tries_$dev=0"
        say "ANDROMEDE-NIC-UP $dev $addr"
      elif [ $tries -ge 4 ]; then
        eval "bad_$dev=$idx"
        say "ANDROMEDE-NIC-FAILED $dev $addr"
      else
        eval "tries_$dev=$((tries + 1))"
      fi
    fi
  done
}

BOOT_NICS=
for spec in $NICS; do
  dev=${spec%%=*}
  [ -e "/sys/class/net/$dev" ] && BOOT_NICS="$BOOT_NICS $dev"
done
while :; do
  nic_pass
  pending=
  for dev in $BOOT_NICS; do
    eval "seen=\$seen_$dev"
    [ -z "$seen" ] && [ -e "/sys/class/net/$dev" ] && pending=$dev
  done
  [ -z "$pending" ] && break
  sleep 0.1
done
# Background lists get SIGINT ignored for good (no job control here), so the watcher goes
# there and the console shell, which ^C must reach, stays in PID 1's foreground.
if [ -n "$NICS" ]; then
  ( while :; do sleep 0.15; nic_pass; done ) &
fi
say ANDROMEDE-GUEST-READY

# The command channel: a root shell on ttyS1 when a UART is there (type 0: a port the 8250
# driver knows of but found no UART at; its device node exists anyway), restarted when it
# exits. PID 1 stays in this loop for ever, and reaps orphans while it waits.
export PS1= PS2=
case $(cat /sys/class/tty/ttyS1/type 2>/dev/null) in
  ''|0)
    echo "andromede-init: no UART on ttyS1, so no console shell"
    while :; do sleep 3600; done
    ;;
esac
while :; do
  setsid -c sh -c 'stty -echo; exec sh -i' </dev/ttyS1 >/dev/ttyS1 2>&1
  sleep 0.2
done
"""

# busybox acpid (built-in tables) runs <confdir>/PWRF/00000080 for the power button.
POWER_BUTTON_SCRIPT = f"""#!/bin/sh
echo {POWER_BUTTON_MARKER} >/dev/ttyS0
sync
poweroff -f
"""


class GuestBuildError(RuntimeError):
    """The guest could not be built; the message says what is missing or which step failed."""


@dataclass(frozen=True, slots=True)
class Guest:
    """A built guest: what `qemu-system-x86_64 -kernel ... -initrd ...` needs."""

    kernel: Path
    initrd: Path
    kernel_version: str  # uname -r inside the guest, e.g. 6.1.0-57-cloud-amd64


@dataclass(frozen=True, slots=True)
class KernelPackage:
    """The Debian kernel package the guest is built from."""

    name: str  # linux-image-6.1.0-57-cloud-amd64
    version: str  # 6.1.192-3

    @property
    def kernel_version(self) -> str:
        return self.name.removeprefix("linux-image-")


Progress = Callable[[str], None]


def cache_root(cache: Path | None = None) -> Path:
    """The argument, else $ANDROMEDE_GUEST_CACHE, else $XDG_CACHE_HOME/andromede/guest, else
    ~/.cache/andromede/guest. Refused inside the repository (a 100 MB unpacked kernel package
    passes through it, and nothing built belongs in git)."""
    if cache is None:
        env = os.environ.get("ANDROMEDE_GUEST_CACHE")
        xdg = os.environ.get("XDG_CACHE_HOME")
        if env:
            cache = Path(env)
        elif xdg:
            cache = Path(xdg) / "andromede" / "guest"
        else:
            cache = Path.home() / ".cache" / "andromede" / "guest"
    root = Path(cache).expanduser().resolve()
    if root == _REPO or _REPO in root.parents:
        raise GuestBuildError(
            f"the guest cache {root} is inside the repository {_REPO}; point "
            f"ANDROMEDE_GUEST_CACHE (or the cache argument) somewhere else"
        )
    return root


def build(cache: Path | None = None, *, progress: Progress | None = None) -> Guest:
    """Build the guest into the cache, or find it there (no download, no lock) when built.

    Raises GuestBuildError (what to install, or which step failed)."""
    say = progress or (lambda line: None)
    root = cache_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    busybox = _busybox()
    pkg = _kernel_package(root)
    final = root / _build_name(pkg, busybox)
    guest = _cached(final, pkg)
    if guest is not None:
        log.debug("guest.cached", dir=str(final))
        return guest
    with _locked(root / f".{final.name}.lock", say):
        guest = _cached(final, pkg)  # another process built it while we waited
        if guest is not None:
            return guest
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by a build that died
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete (a file removed by hand): rebuild it whole
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            started = time.monotonic()
            out = _build_into(work, pkg, busybox, say)
            out.rename(final)  # atomic: the guest appears whole or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("guest.built", dir=str(final), s=round(time.monotonic() - started, 1))
        say(f"built in {time.monotonic() - started:.1f} s: {final}")
    guest = _cached(final, pkg)
    assert guest is not None
    return guest


def is_built(cache: Path | None = None) -> bool:
    """Whether build() would find the guest in the cache (it may still query apt-cache)."""
    root = cache_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    pkg = _kernel_package(root)
    return _cached(root / _build_name(pkg, _busybox()), pkg) is not None


def _cached(final: Path, pkg: KernelPackage) -> Guest | None:
    kernel, initrd = final / KERNEL_FILE, final / INITRD_FILE
    if kernel.is_file() and initrd.is_file():
        return Guest(kernel=kernel, initrd=initrd, kernel_version=pkg.kernel_version)
    return None


def _build_name(pkg: KernelPackage, busybox: Path) -> str:
    """<kernel>_<package version>_<hash>: a new kernel upload or a changed init rebuilds."""
    h = hashlib.sha256()
    for part in (_LAYOUT, INIT_SCRIPT, POWER_BUTTON_SCRIPT, "\n".join(MODULES)):
        h.update(part.encode() + b"\0")
    h.update(hashlib.sha256(busybox.read_bytes()).digest())
    version = re.sub(r"[^A-Za-z0-9.+~-]", "_", pkg.version)
    return f"{pkg.kernel_version}_{version}_{h.hexdigest()[:12]}"


@contextmanager
def _locked(path: Path, say: Progress) -> Iterator[None]:
    """An exclusive flock on `path` (waits for another process's build, up to 15 min)."""
    with open(path, "a+b") as f:
        deadline = time.monotonic() + _LOCK_WAIT_S
        waited = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    say(f"waiting for another process building the guest ({path})")
                    log.info("guest.lock_wait", lock=str(path))
                    waited = True
                if time.monotonic() > deadline:
                    raise GuestBuildError(
                        f"another process held {path} for {_LOCK_WAIT_S:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- finding the parts -----------------------------------------------------------------------


def _busybox() -> Path:
    """Debian's static busybox; a dynamic one would not run in an initramfs without libc."""
    if not BUSYBOX.is_file():
        raise GuestBuildError(
            f"{BUSYBOX} not found: install Debian's static busybox "
            f"(apt-get install busybox-static, or scripts/setup.sh)"
        )
    if _elf_has_interpreter(BUSYBOX):
        raise GuestBuildError(
            f"{BUSYBOX} is dynamically linked (Debian's `busybox` package): install "
            f"`busybox-static` instead (apt-get install busybox-static)"
        )
    return BUSYBOX


def _elf_has_interpreter(path: Path) -> bool:
    """Whether a 64-bit little-endian ELF has a PT_INTERP header (dynamically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise GuestBuildError(f"{path} is not a 64-bit little-endian ELF executable")
        phoff = int.from_bytes(head[0x20:0x28], "little")
        phentsize = int.from_bytes(head[0x36:0x38], "little")
        phnum = int.from_bytes(head[0x38:0x3A], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(
        int.from_bytes(table[i : i + 4], "little") == 3  # PT_INTERP
        for i in range(0, len(table), phentsize)
    )


def _need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise GuestBuildError(
            f"{', '.join(missing)} not found: building the test guest needs apt and dpkg "
            f"(a Debian or Ubuntu machine; apt-get install apt dpkg)"
        )


def _run(argv: Sequence[str], what: str, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise GuestBuildError(f"{what}: `{' '.join(argv)}` took over {timeout:.0f} s") from None
    if done.returncode != 0:
        raise GuestBuildError(
            f"{what}: `{' '.join(argv)}` exited with {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-800:]}"
        )
    return done.stdout


def _lists_signature() -> list[list[object]]:
    """What changes when `apt-get update` brings new package lists."""
    try:
        entries = sorted(os.scandir(_APT_LISTS), key=lambda e: e.name)
    except OSError:
        return []
    return [
        [e.name, e.stat().st_size, e.stat().st_mtime_ns]
        for e in entries
        if e.is_file() and e.name != "lock"
    ]


def _kernel_package(root: Path) -> KernelPackage:
    """The package linux-image-cloud-amd64 depends on, and its version; remembered in
    <root>/kernel-package.json until apt's lists change."""
    memo = root / "kernel-package.json"
    signature = _lists_signature()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # nothing remembered
        saved = json.loads(memo.read_text())
        if saved["lists"] == signature and saved["meta"] == META_PACKAGE:
            return KernelPackage(saved["name"], saved["version"])
    _need_tools("apt-cache", "apt-get", "dpkg")
    out = _run(["apt-cache", "depends", META_PACKAGE], f"finding the kernel behind {META_PACKAGE}")
    names = re.findall(r"^\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", out, re.MULTILINE)
    if not names:
        raise GuestBuildError(
            f"`apt-cache depends {META_PACKAGE}` names no linux-image-*-cloud-amd64 package "
            f"(is apt's list up to date? run apt-get update): {out.strip()[:400]}"
        )
    name = names[0]
    shown = _run(["apt-cache", "show", "--no-all-versions", name], f"the version of {name}")
    versions = re.findall(r"^Version:\s*(\S+)", shown, re.MULTILINE)
    if not versions:
        raise GuestBuildError(f"`apt-cache show {name}` gives no Version")
    pkg = KernelPackage(name, versions[0])
    log.info("guest.kernel_package", package=pkg.name, version=pkg.version)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    data = {"meta": META_PACKAGE, "name": pkg.name, "version": pkg.version, "lists": signature}
    tmp.write_text(json.dumps(data))
    tmp.replace(memo)
    return pkg


# --- building --------------------------------------------------------------------------------


def _build_into(work: Path, pkg: KernelPackage, busybox: Path, say: Progress) -> Path:
    """Download and unpack the kernel package in `work`; return `work`/out, the finished dir."""
    _need_tools("apt-get", "dpkg")
    download = work / "download"
    download.mkdir()
    say(f"downloading {pkg.name} {pkg.version}")
    argv = ["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"]
    if os.geteuid() == 0:  # root: apt would drop to _apt, who cannot write our 0700 temp dir
        argv[2:2] = ["-o", "APT::Sandbox::User=root"]
    _run(argv, f"downloading {pkg.name}", cwd=download)
    debs = sorted(download.glob("*.deb"))
    if len(debs) != 1:
        raise GuestBuildError(f"apt-get download left {len(debs)} .deb files in {download}")
    say(f"unpacking {debs[0].name} (dpkg -x, not installed)")
    tree = work / "tree"
    _run(["dpkg", "-x", str(debs[0]), str(tree)], f"unpacking {debs[0].name}", timeout=300)
    debs[0].unlink()

    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"{pkg.name} holds {len(kernels)} boot/vmlinuz-* files")
    moddirs = sorted(p for p in (tree / "lib" / "modules").glob("*") if p.is_dir())
    if not moddirs:
        raise GuestBuildError(f"{pkg.name} holds no lib/modules/<version> directory")
    moddir = moddirs[0]
    modules, skipped = _modules(moddir)
    say(
        f"modules: {' '.join(modules)}"
        + (f"; built into the kernel: {' '.join(skipped)}" if skipped else "")
    )

    out = work / "out"
    out.mkdir()
    shutil.copyfile(kernels[0], out / KERNEL_FILE)
    applets = _run([str(busybox), "--list"], "listing busybox's applets").split()
    cpio = _initramfs(busybox, applets, modules)
    (out / INITRD_FILE).write_bytes(cpio)
    info = {
        "package": pkg.name,
        "version": pkg.version,
        "kernel_version": moddir.name,
        "modules": list(modules),
        "built_in": skipped,
        "busybox": str(busybox),
        "initrd_bytes": len(cpio),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    say(f"initramfs: {len(cpio) / 1e6:.2f} MB ({len(modules)} modules, {len(applets)} applets)")
    if moddir.name != pkg.kernel_version:
        raise GuestBuildError(f"{pkg.name} holds modules for {moddir.name}, not its own version")
    return out


def _modules(moddir: Path) -> tuple[dict[str, bytes], list[str]]:
    """MODULES' contents in load order, decompressed, and those built into the kernel."""
    found: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        stem = path.name.split(".ko", 1)[0].replace("-", "_")
        if stem in MODULES and path.name.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz")):
            found.setdefault(stem, path)
    builtin_file = moddir / "modules.builtin"
    builtin = {
        Path(line.strip()).name.split(".ko", 1)[0].replace("-", "_")
        for line in (builtin_file.read_text().splitlines() if builtin_file.exists() else [])
        if line.strip()
    }
    modules: dict[str, bytes] = {}
    skipped: list[str] = []
    for name in MODULES:
        source = found.get(name)
        if source is None:
            if name in builtin:
                skipped.append(name)
                log.info("guest.module_built_in", module=name, kernel=moddir.name)
                continue
            raise GuestBuildError(
                f"module {name} is neither under {moddir} nor in its modules.builtin"
            )
        modules[name] = _decompress(source)
    return modules, skipped


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise GuestBuildError(f"{path.name} is zstd-compressed: apt-get install zstd")
        return subprocess.run(
            ["zstd", "-dc", str(path)], capture_output=True, check=True, timeout=60
        ).stdout
    return data


def _initramfs(busybox: Path, applets: Sequence[str], modules: dict[str, bytes]) -> bytes:
    """The gzip'ed newc cpio: /init, /bin/busybox + applet links, the modules, acpid's handler."""
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "root", "etc", "etc/acpi", "etc/acpi/PWRF",
              "lib", "lib/modules", "var", "var/run", "run"):  # fmt: skip
        cpio.add(d, 0o040755 if d != "tmp" else 0o041777)
    cpio.add("dev/console", 0o020600, rdev=(5, 1))  # stdio of /init before devtmpfs
    cpio.add("bin/busybox", 0o100755, busybox.read_bytes())
    for applet in sorted(set(applets) - {"busybox"}):
        if re.fullmatch(r"[A-Za-z0-9_.\[\]+-]+", applet):
            cpio.add(f"bin/{applet}", 0o120777, b"busybox")
    cpio.add("init", 0o100755, INIT_SCRIPT.encode())
    cpio.add("etc/acpi/PWRF/00000080", 0o100755, POWER_BUTTON_SCRIPT.encode())
    cpio.add("lib/modules/order", 0o100644, "".join(f"{m}\n" for m in modules).encode())
    for name, data in modules.items():
        cpio.add(f"lib/modules/{name}.ko", 0o100644, data)
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


class _Cpio:
    """A newc ("070701") cpio archive, every entry owned by root, mtime 0 (reproducible)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0)  # fmt: skip
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._parts += [header, name.encode() + b"\0", _pad(len(header) + len(name) + 1)]
        self._parts += [data, _pad(len(data))]

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self._parts)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


# --- the command channel ---------------------------------------------------------------------


class GuestConsoleError(ConnectionError):
    """The console connection went away while a command ran (it may or may not have run)."""


class GuestConsole:
    """A shell on the guest's ttyS1, through QEMU's unix-socket chardev (server=on).

    Why this shape: a serial line has no framing, and the guest may be booting (nobody reads
    ttyS1 yet: input is dropped), have rebooted (a new shell), or QEMU may have been restarted
    on the same socket path (our connection hit EOF). So every run() first syncs: it
    (re)connects if needed and sends a probe echo, again every 0.5 s, until the shell answers
    one; only then is the command sent, once, between a begin and an end marker, the end
    marker carrying `$?`. Output before the begin marker (late answers, the shell's banner) is
    dropped. The command runs in a subshell with stdin from /dev/null, like `ssh -n`: `exit 3`
    gives status 3 and leaves the shell, `cat` does not eat the end marker, and nothing (cd,
    variables) carries over from one run() to the next. On a timeout ^C then ^D is sent: the
    command gets SIGINT, the shell EOF (also one stuck in an open quote), and /init starts a
    fresh shell that the next run() syncs with. One user at a time (no locking); QEMU serves
    one connection per chardev. Lines over 4,000 bytes are refused (the tty's line buffer in
    canonical mode holds 4,095).
    """

    PROBE_INTERVAL_S = 0.5
    MAX_LINE = 4000

    def __init__(self, socket_path: Path | str, connect_timeout: float = 30.0) -> None:
        self.path = Path(socket_path)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._connect(time.monotonic() + connect_timeout)

    def __enter__(self) -> GuestConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the connection (run() would connect again)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def run(self, command: str, timeout: float = 10.0) -> tuple[int, str]:
        """Run `command` in the guest's root shell: (exit status, its stdout and stderr, with
        CR LF turned into LF). `timeout` covers reconnecting and syncing too. Raises
        TimeoutError (after ^C ^D) or GuestConsoleError (the connection went away after the
        command was sent: it may or may not have run)."""
        lines = command.split("\n")
        if any(len(line.encode()) > self.MAX_LINE for line in lines):
            raise ValueError(f"a line of the command is over {self.MAX_LINE} bytes")
        deadline = time.monotonic() + timeout
        self._sync(deadline)
        tag = secrets.token_hex(6)
        begin, end = f"__ANDROMEDE_B_{tag}__", f"__ANDROMEDE_E_{tag}__"
        typed = f"echo {_split(begin)}\n( {command}\n) </dev/null\necho {_split(end)} $?\n"
        try:
            self._send(typed.encode())
            text, groups = self._read_until(
                re.compile(re.escape(end.encode()) + rb" (\d+)\r?\n"), deadline
            )
        except TimeoutError:
            self._interrupt()
            raise TimeoutError(f"guest command took over {timeout} s: {command[:200]!r}") from None
        except OSError as exc:
            self.close()
            raise GuestConsoleError(
                f"console {self.path} lost during {command[:200]!r}: {exc}"
            ) from exc
        start = text.find(begin.encode())
        if start < 0:
            raise GuestConsoleError(f"no begin marker before the output of {command[:200]!r}")
        body = text[start + len(begin) :]
        body = body[body.find(b"\n") + 1 :] if b"\n" in body else b""
        raw = body[: body.rfind(end.encode())] if end.encode() in body else body
        return int(groups[0]), raw.replace(b"\r\n", b"\n").decode(errors="replace")

    def _connect(self, deadline: float) -> None:
        """Connect, retrying while the socket is not there yet or not listening."""
        last: OSError | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                last = exc
            except OSError:
                sock.close()
                raise
            else:
                self._sock, self._buf = sock, bytearray()
                log.debug("guest.console_connected", socket=str(self.path))
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"console socket {self.path} not connectable: {last}")
            time.sleep(0.05)

    def _sync(self, deadline: float) -> None:
        """Make sure a shell is reading ttyS1 now: probe until one probe comes back."""
        probes: list[bytes] = []
        while True:
            if self._sock is None:
                self._connect(deadline)
                probes.clear()
            tag = f"__ANDROMEDE_S_{secrets.token_hex(6)}__"
            probes.append(tag.encode())
            pattern = re.compile(b"|".join(re.escape(p) for p in probes) + rb"\r?\n")
            try:
                self._send(f"echo {_split(tag)}\n".encode())
                self._read_until(pattern, min(deadline, time.monotonic() + self.PROBE_INTERVAL_S))
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    self._interrupt()  # whatever holds the shell, leave a fresh one next time
                    raise TimeoutError(
                        f"no shell answered on the guest console {self.path}"
                    ) from None
            except OSError as exc:  # EOF or reset: QEMU went away; a new one may come
                log.debug("guest.console_reconnect", socket=str(self.path), error=str(exc))
                self.close()

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def _read_until(
        self, pattern: re.Pattern[bytes], deadline: float
    ) -> tuple[bytes, tuple[bytes, ...]]:
        """Read until `pattern` matches; return everything up to and including the match (the
        rest stays buffered) and the match's groups. Raises TimeoutError, or OSError
        (ConnectionResetError at EOF)."""
        assert self._sock is not None
        while True:
            match = pattern.search(self._buf)
            if match:
                data, groups = bytes(self._buf[: match.end()]), match.groups()
                del self._buf[: match.end()]
                return data, groups
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError from None
            if not chunk:
                raise ConnectionResetError("EOF from QEMU's chardev")
            self._buf += chunk

    def _interrupt(self) -> None:
        """^C: the tty sends SIGINT to the running command and drops the pending input; then ^D:
        EOF for the shell (also one stuck in an unclosed quote), which exits, and /init starts
        a fresh one; the next run() syncs with it."""
        if self._sock is None:
            return
        try:
            self._send(b"\x03\x04")
        except OSError:
            self.close()
        self._buf.clear()


def _split(marker: str) -> str:
    """The marker as typed: `__AN\\DROMEDE...` prints it whole, but an echo of the typed line
    never matches it. A backslash, not quotes: a line cut short (characters that reach a UART
    while the shell is being restarted are lost) must not leave the shell in an open quote."""
    return marker[:4] + "\\" + marker[4:]


# --- python -m agent.lab.guest ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or find) the guest: progress on stderr, the kernel and initrd paths on stdout."""
    from agent import logs

    p = argparse.ArgumentParser(prog="python -m agent.lab.guest", description=main.__doc__)
    p.add_argument("--cache", type=Path, help="cache root (default: see agent/lab/guest.py)")
    p.add_argument("--is-built", action="store_true", help="exit 0 if built, 1 if not; no build")
    p.add_argument("--verbose", action="store_true", help="info logs on stderr")
    args = p.parse_args(argv)
    logs.configure("json", "info" if args.verbose else "warning", stream=sys.stderr)

    def say(line: str) -> None:
        print(f"guest: {line}", file=sys.stderr, flush=True)

    try:
        if args.is_built:
            return 0 if is_built(args.cache) else 1
        guest = build(args.cache, progress=say)
    except GuestBuildError as exc:
        say(f"error: {exc}")
        return 1
    print(f"kernel {guest.kernel}")
    print(f"initrd {guest.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
