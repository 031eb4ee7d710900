"""Simulated hosts: network namespaces that each run their own Open vSwitch, joined by an
underlay, with stand-in VMs (a namespace and a veth) to plug into them.

Used by the integration tests' fixtures and by `make run`; no pytest here. The recipe and its
pitfalls are ../shared/lab-notes.md's, measured on these machines:

    Lab(prefix)                       owns everything below; close() removes it all
      <prefix>-wire                   namespace with a Linux bridge `wire0`: the underlay
      <prefix>-<host>                 one per SimulatedHost, running its own ovsdb-server and
        phy0                          ovs-vswitchd (state in <root>/<host>: db, sockets, logs);
        br-phy (netdev, NORMAL)       phy0 is a veth to wire0, put into br-phy, whose internal
                                      port holds the underlay IP (198.18.0.N/24, MTU 1500)
      <prefix>-<host>-<vm>            one per StandInVM: eth0 (given MAC, IP, MTU 1450, tx
                                      offload off), its peer left in the host namespace for
                                      the agent to plug into br-int

Where data goes: nothing outside the namespaces and the state directory is touched (no
interface, address or route of the machine itself). Addresses are the caller's, from TEST-NET
ranges (198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15). Every namespace, the wire's veth
ends and the state directory are named with the lab's prefix (a random one by default), and
every other device lives inside a lab namespace and goes with it, so two labs can run side
by side. `close()` stops the daemons by the pids their pidfiles gave (a zombie counts as
gone) and removes what was made, even after a partial set-up; it may be called again.

Namespaces, veths, addresses and links are made with pyroute2; `ip netns exec` only starts
processes inside a namespace (the OVS daemons, ethtool, and whatever `run` is given).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from pyroute2 import NetNS, netns

log = structlog.get_logger(__name__)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
TOOLS = ("ip", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl",
         "ovs-appctl", "ethtool")  # fmt: skip
UNDERLAY_NET = ipaddress.ip_network("198.18.0.0/24")
UNDERLAY_MTU = 1500
VM_MTU = 1450
PHY = "phy0"  # the underlay veth inside a host namespace
BR_PHY = "br-phy"
WIRE_BRIDGE = "wire0"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")  # host and VM names: short, so ifnames fit 15 chars
_NAME_RULE = "1-6 lowercase letters or digits, starting with a letter"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")
DAEMON_TIMEOUT_S = 10.0
# How long a SIGKILLed process may take to be gone: ovs-vswitchd on the userspace datapath
# holds a packet socket per port, and the kernel closes them one by one (12-15 s for 1,000).
KILL_WAIT_S = 90.0


class LabError(RuntimeError):
    """A lab step failed; the message says which command or device and what to check."""


def new_prefix() -> str:
    """A fresh random prefix for a lab ("an" + 4 hex digits)."""
    return "an" + secrets.token_hex(2)


def missing_tools() -> list[str]:
    """The tools the lab needs that are not on PATH (install them with scripts/setup.sh)."""
    return [t for t in TOOLS if shutil.which(t) is None] + (
        [] if SCHEMA.is_file() else [str(SCHEMA)]
    )


def pid_running(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (detached daemons can linger as
    zombies nobody reaps: those count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def in_this_process_only(handler: Callable[[int], None]) -> Callable[[int, object], None]:
    """A signal handler that calls `handler` in this process only: pyroute2 forks helpers
    (to make and enter namespaces) that inherit it, and those must die of the signal as by
    default, not unwind a copy of the caller's stack and tear the lab down from the fork."""
    owner = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        handler(signum)

    return on_signal


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Send `sig` to `pid` and wait until it is gone; SIGKILL after `timeout`, and then wait
    up to KILL_WAIT_S."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_running(pid):
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise LabError(f"process {pid} survived SIGKILL for {timeout} s")
            log.warning("lab.process_kill", pid=pid, after_s=timeout)
            stop_pid(pid, signal.SIGKILL, KILL_WAIT_S)
            return
        time.sleep(0.005)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _exec(argv: Sequence[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout} s") from e
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]}: not installed (run scripts/setup.sh)") from e
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


class _Namespace:
    """A named network namespace we made, with a pyroute2 handle opened on demand."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ipr: NetNS | None = None
        self._made = False  # only a namespace we made is ours to remove

    def create(self) -> None:
        if self.name in netns.listnetns():
            raise LabError(f"namespace {self.name} exists already: another lab with this "
                           f"prefix is running, or a crashed one left it (ip netns del {self.name})")  # fmt: skip
        netns.create(self.name)
        self._made = True
        self.ipr.link("set", index=self.index("lo"), state="up")

    @property
    def ipr(self) -> NetNS:
        if self._ipr is None:
            self._ipr = NetNS(self.name)
        return self._ipr

    def index(self, ifname: str, timeout: float = 0.0) -> int:
        """The ifindex of `ifname` here, waiting up to `timeout` for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.ipr.link_lookup(ifname=ifname)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise LabError(f"no device {ifname} in namespace {self.name}")
            time.sleep(0.01)

    def exec(self, argv: Sequence[str], timeout: float = 10.0, check: bool = True,
             env: Sequence[str] = ()) -> subprocess.CompletedProcess:  # fmt: skip
        return _exec(["ip", "netns", "exec", self.name, "env", *env, *argv], timeout, check)

    def popen(self, argv: Sequence[str], env: Sequence[str] = (), **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, "env", *env, *argv], **kwargs)

    def tx_off(self, ifname: str) -> None:
        """Transmit offloads off: OVS's netdev datapath reads veths with AF_PACKET and no vnet
        header, so a partial checksum would stay wrong (lab-notes)."""
        self.exec(["ethtool", "-K", ifname, "tx", "off"])

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._made:
            _remove_netns(self.name)
            self._made = False


class Wire:
    """The underlay: one namespace holding a Linux bridge that every host's phy0 is cabled to."""

    def __init__(self, prefix: str) -> None:
        self.ns = _Namespace(f"{prefix}-wire")
        self.bridge = WIRE_BRIDGE

    def create(self) -> None:
        self.ns.create()
        self.ns.ipr.link("add", ifname=self.bridge, kind="bridge")
        self.ns.ipr.link("set", index=self.ns.index(self.bridge), mtu=UNDERLAY_MTU, state="up")

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `argv` in the wire's namespace (a capture, say); the caller ends it."""
        return self.ns.popen(argv, **kwargs)

    def cable(self, host_ns: str, wire_end: str, host_end: str) -> None:
        """A veth from the wire bridge (`wire_end`) into `host_ns` (`host_end`, left down)."""
        ipr = self.ns.ipr
        peer = {"ifname": host_end, "net_ns_fd": host_ns}
        ipr.link("add", ifname=wire_end, kind="veth", peer=peer)
        bridge = self.ns.index(self.bridge)
        ipr.link("set", index=self.ns.index(wire_end), mtu=UNDERLAY_MTU, master=bridge, state="up")
        self.ns.tx_off(wire_end)

    def close(self) -> None:
        self.ns.close()


class StandInVM:
    """A namespace standing in for a VM: eth0 with the VM's MAC, IP and MTU; its peer
    (`host_ifname`) waits in the host namespace to be plugged into br-int by the agent."""

    def __init__(self, host: SimulatedHost, name: str, mac: str, ip: str, host_ifname: str) -> None:
        self.host = host
        self.name = name
        self.mac = mac
        self.interface = ipaddress.ip_interface(ip)
        self.host_ifname = host_ifname
        self.ifname = "eth0"
        self.ns = _Namespace(f"{host.ns.name}-{name}")

    @property
    def ip(self) -> str:
        return str(self.interface.ip)

    def create(self, mtu: int) -> None:
        self.ns.create()
        ipr = self.ns.ipr
        ipr.link("add", ifname=self.ifname, kind="veth",
                 peer={"ifname": self.host_ifname, "net_ns_fd": self.host.ns.name})  # fmt: skip
        index = self.ns.index(self.ifname)
        ipr.link("set", index=index, address=self.mac, mtu=mtu)
        ipr.addr("add", index=index, address=self.ip, prefixlen=self.interface.network.prefixlen)
        ipr.link("set", index=index, state="up")
        self.ns.tx_off(self.ifname)
        host = self.host.ns
        host.ipr.link("set", index=host.index(self.host_ifname), mtu=mtu, state="up")

    def run(self, argv: Sequence[str], timeout: float = 10.0, check: bool = True
            ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run `argv` inside the VM's namespace; LabError if it fails and `check`."""
        return self.ns.exec(argv, timeout, check)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `argv` inside the VM's namespace (the caller ends it, by its pid)."""
        return self.ns.popen(argv, **kwargs)

    def close(self) -> None:
        self.ns.close()  # the veth pair goes with it


class SimulatedHost:
    """One compute host: a namespace with its own ovsdb-server and ovs-vswitchd (state in
    `dir`), cabled to the wire, the underlay IP on br-phy."""

    def __init__(self, lab: Lab, name: str, underlay_ip: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = _Namespace(f"{lab.prefix}-{name}")
        self.dir = lab.root / name
        self.underlay = ipaddress.ip_interface(underlay_ip)
        self.phy_mac = ""
        self.vms: dict[str, StandInVM] = {}
        self._pids: dict[str, int] = {}

    # --- where things are ----------------------------------------------------------------

    @property
    def rundir(self) -> Path:
        return self.dir

    @property
    def db(self) -> str:
        """The OVSDB remote for clients: unix:<dir>/db.sock."""
        return f"unix:{self.dir}/db.sock"

    @property
    def underlay_ip(self) -> str:
        return str(self.underlay.ip)

    @property
    def env(self) -> list[str]:
        d = str(self.dir)
        return [f"OVS_RUNDIR={d}", f"OVS_DBDIR={d}", f"OVS_LOGDIR={d}"]

    def ctl(self, daemon: str) -> str:
        """The absolute path of a daemon's unixctl socket (ovs-appctl -t needs it)."""
        return str(self.dir / f"{daemon}.ctl")

    # --- life cycle --------------------------------------------------------------------

    def create(self) -> None:
        started = time.perf_counter()
        self.dir.mkdir(parents=True)
        self.ns.create()
        _exec(["ovsdb-tool", "create", str(self.dir / "conf.db"), str(SCHEMA)], 10)
        self.start_ovsdb()
        self.vsctl("--no-wait", "init")
        self.start_vswitchd()
        self.phy_mac = self._cable()
        self.vsctl("add-br", BR_PHY, "--", "set", "bridge", BR_PHY, "datapath_type=netdev",
                   f"other_config:hwaddr={self.phy_mac}", "--", "add-port", BR_PHY, PHY)  # fmt: skip
        ipr = self.ns.ipr
        index = self.ns.index(BR_PHY, timeout=DAEMON_TIMEOUT_S)
        ipr.link("set", index=index, mtu=UNDERLAY_MTU, state="up")
        ipr.addr("add", index=index, address=self.underlay_ip,
                 prefixlen=self.underlay.network.prefixlen)  # fmt: skip
        log.info("lab.host_up", host=self.name, ns=self.ns.name, underlay=str(self.underlay),
                 ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip

    def _cable(self) -> str:
        self.lab.wire.cable(self.ns.name, f"{self.lab.prefix}-{self.name}", PHY)
        index = self.ns.index(PHY)
        self.ns.ipr.link("set", index=index, mtu=UNDERLAY_MTU, state="up")
        return self.ns.ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")

    def _start(self, daemon: str, argv: list[str], timeout: float = DAEMON_TIMEOUT_S) -> int:
        pidfile = self.dir / f"{daemon}.pid"
        self.ns.exec(
            [daemon, *argv, f"--pidfile={pidfile}", f"--unixctl={self.ctl(daemon)}",
             f"--log-file={self.dir / daemon}.log", "-vconsole:off", "--detach"],
            timeout=timeout, env=self.env,
        )  # fmt: skip
        pid = int(pidfile.read_text().split()[0])
        self._pids[daemon] = pid
        log.info("lab.daemon_started", host=self.name, daemon=daemon, pid=pid)
        return pid

    def _stop(self, daemon: str, sig: int) -> None:
        pid = self._pids.pop(daemon, None)
        pidfile = self.dir / f"{daemon}.pid"
        if pid is None and pidfile.is_file():  # started, but set-up failed before we knew it
            pid = int((pidfile.read_text().split() or ["0"])[0]) or None
            if pid is not None and str(self.dir) not in _cmdline(pid):
                pid = None  # a stale pidfile (after a SIGKILL): that pid is not ours any more
        if pid is not None:
            stop_pid(pid, sig)
            log.info("lab.daemon_stopped", host=self.name, daemon=daemon, pid=pid,
                     signal=signal.Signals(sig).name)  # fmt: skip

    def start_ovsdb(self) -> int:
        """Start ovsdb-server on the host's db (which must exist); returns its pid."""
        return self._start("ovsdb-server", [str(self.dir / "conf.db"),
                                            f"--remote=punix:{self.dir}/db.sock"])  # fmt: skip

    def stop_ovsdb(self, sig: int = signal.SIGTERM) -> None:
        self._stop("ovsdb-server", sig)

    def start_vswitchd(self, timeout: float = DAEMON_TIMEOUT_S) -> int:
        """Start ovs-vswitchd on the host's db; returns its pid once it has detached (ready:
        it detaches after configuring every bridge and port in the db, which takes seconds
        with a thousand ports, hence `timeout`)."""
        return self._start("ovs-vswitchd", [self.db], timeout)

    def stop_vswitchd(self, sig: int = signal.SIGTERM) -> None:
        """Stop ovs-vswitchd (SIGKILL: as in a crash) and wait until it is gone."""
        self._stop("ovs-vswitchd", sig)

    def pid(self, daemon: str) -> int | None:
        return self._pids.get(daemon)

    def close(self) -> None:
        """Remove the VMs, stop the daemons, delete the namespace and the state directory."""
        for vm in list(self.vms.values()):
            vm.close()
        self.vms.clear()
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            if self.dir.is_dir():
                self._stop(daemon, signal.SIGTERM)
        self.ns.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- commands ----------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float = 10.0, check: bool = True
            ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run `argv` inside the host's namespace with its OVS_RUNDIR/DBDIR/LOGDIR."""
        return self.ns.exec(argv, timeout, check, env=self.env)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return self.ns.popen(argv, env=self.env, **kwargs)

    def vsctl(self, *args: str, timeout: float = 10.0) -> str:
        """ovs-vsctl against this host's db (for set-up and for tests to check results)."""
        return _exec(["ovs-vsctl", f"--db={self.db}", f"--timeout={int(timeout)}", *args],
                     timeout + 1).stdout.strip()  # fmt: skip

    def appctl(self, *args: str, daemon: str = "ovs-vswitchd", timeout: float = 10.0) -> str:
        return _exec(["ovs-appctl", "-t", self.ctl(daemon), f"--timeout={int(timeout)}", *args],
                     timeout + 1).stdout.strip()  # fmt: skip

    def add_vm(self, name: str, mac: str, ip: str, *, mtu: int = VM_MTU,
               host_ifname: str | None = None) -> StandInVM:  # fmt: skip
        """A stand-in VM `name` with `mac` and `ip` ("198.51.100.11/24") whose other veth end,
        `host_ifname` (default "vm-<name>"), is left in this host's namespace, up, unplugged."""
        if not _NAME.match(name):
            raise LabError(f"vm name {name!r}: {_NAME_RULE}")
        if name in self.vms:
            raise LabError(f"vm {name} exists already on host {self.name}")
        vm = StandInVM(self, name, mac, ip, host_ifname or f"vm-{name}")
        self.vms[name] = vm
        vm.create(mtu)
        log.info("lab.vm_up", host=self.name, vm=name, ns=vm.ns.name, mac=mac, ip=ip,
                 ifname=vm.host_ifname)  # fmt: skip
        return vm


class Lab:
    """Simulated hosts on one underlay, all named `<prefix>-...`, state under `root` (default a
    fresh /tmp/<prefix>-XXXX: short, since unix socket paths are limited to 108 bytes).
    A context manager; `close()` is idempotent and safe after a partial set-up."""

    def __init__(self, prefix: str | None = None, root: Path | None = None) -> None:
        self.prefix = prefix or new_prefix()
        if not _PREFIX.match(self.prefix):
            raise LabError(f"prefix {self.prefix!r}: 2-8 lowercase letters or digits, "
                           f"starting with a letter")
        missing = missing_tools()
        if missing:
            raise LabError(f"missing for the lab: {', '.join(missing)} (run scripts/setup.sh)")
        if self.namespaces():
            raise LabError(f"namespaces named {self.prefix}-* exist already ({self.namespaces()}): "
                           f"another lab uses this prefix, or a crashed one left them")  # fmt: skip
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.wire = Wire(self.prefix)
        self.hosts: dict[str, SimulatedHost] = {}
        self._closed = False
        try:
            self.wire.create()
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str, underlay_ip: str | None = None) -> SimulatedHost:
        """A started host `name` (OVS up, br-phy holding `underlay_ip`, default 198.18.0.N/24
        for the Nth host)."""
        if not _NAME.match(name):
            raise LabError(f"host name {name!r}: {_NAME_RULE}")
        if name in self.hosts:
            raise LabError(f"host {name} exists already")
        if underlay_ip is None:
            underlay_ip = f"{UNDERLAY_NET[len(self.hosts) + 1]}/{UNDERLAY_NET.prefixlen}"
        host = SimulatedHost(self, name, underlay_ip)
        self.hosts[name] = host
        host.create()
        return host

    def namespaces(self) -> list[str]:
        """Every namespace on the machine whose name carries this lab's prefix."""
        return [n for n in netns.listnetns() if n.startswith(f"{self.prefix}-")]

    def close(self) -> None:
        if self._closed:
            return
        errors: list[str] = []
        for host in reversed(list(self.hosts.values())):
            try:
                host.close()
            except Exception as e:  # keep going: remove everything that can be removed
                errors.append(f"host {host.name}: {e}")
        try:
            self.wire.close()
        except Exception as e:
            errors.append(f"wire: {e}")
        for name in self.namespaces():  # made under our prefix, none existed before us
            _remove_netns(name)
        shutil.rmtree(self.root, ignore_errors=True)
        self._closed = True
        log.info("lab.closed", prefix=self.prefix, errors=len(errors))
        if errors:
            raise LabError("lab teardown was incomplete: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
