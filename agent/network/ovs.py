"""br-int on this host's real Open vSwitch: the network reconciler's `Switch`, made of the
OVSDB driver (bridges, ports) and the OpenFlow driver (flows, meters), and the watch that
notices an ovs-vswitchd restart.

Where data comes from and where it goes: the network reconciler (agent/network/reconcile.py)
calls this once per pass; it talks to ovsdb-server over one long-lived IDL connection
(agent/network/ovsdb.py) and to ovs-vswitchd with one ovs-ofctl per operation on the whole
flow set (agent/network/ofctl.py). `RestartWatch` polls the canary flow and kicks the reconcile
engine when it is gone (every 50 ms while ovs-vswitchd does not answer), so a restarted
ovs-vswitchd gets its flows back as soon as it takes them.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
import structlog

from agent.config import OvsConfig
from agent.network import ofctl
from agent.network.ovsdb import AGENT, COMPUTE, VXLAN_OFPORT, Interface, Ovsdb
from agent.reconcile import ApplyError
from dataplane.compile.flows import Flow
from dataplane.compile.openflow import Meter

log = structlog.get_logger(__name__)

WATCH_INTERVAL_S = 0.5
WATCH_DOWN_INTERVAL_S = 0.05  # while ovs-vswitchd does not answer: catch it as it comes back
# A dying ovs-vswitchd can take a connection and never answer (with a thousand ports its exit
# takes seconds): the watch gives up on a check after this, not after ovs-ofctl's 30 s.
WATCH_TIMEOUT_S = 2.0


class OvsSwitch:
    """The Switch of agent/network/reconcile.py on real OVS."""

    def __init__(self, config: OvsConfig) -> None:
        if config.tunnel_ip is None:
            raise ValueError("ovs.tunnel_ip: required to program OVS")
        self._config = config
        self._db = Ovsdb(f"unix:{Path(config.rundir) / 'db.sock'}")
        self._flows = ofctl.OpenFlow(config.rundir)
        self.bridge = config.bridge

    def close(self) -> None:
        self._db.close()

    def connected(self) -> bool:
        """Connected to ovsdb-server now (NodeInfo's ovs_connected)."""
        return self._db.connected

    def ensure_bridge(self) -> int:
        self._db.ensure_bridge(self.bridge, datapath_type=self._config.datapath_type)
        self._db.ensure_vxlan_port(self.bridge, self._config.tunnel_ip)
        return VXLAN_OFPORT

    def interfaces(self) -> list[Interface]:
        return [i for i in self._db.interfaces(self.bridge) if i.port_id]

    def interface_exists(self, name: str) -> bool:
        return Path("/sys/class/net", name).exists()

    def plug(self, interfaces: Mapping[str, str], ofports: Mapping[str, int]) -> None:
        self._db.add_ports(self.bridge, interfaces, ofports=ofports, plugged_by=AGENT, settle_later=True)

    def plug_vm_taps(self, interfaces: Mapping[str, str]) -> None:
        """Put VM taps ({name: port id}) on br-int, marked as the compute side's, and wait
        until ovs-vswitchd has them (the network side wires them in its next pass)."""
        self._db.add_ports(self.bridge, interfaces, plugged_by=COMPUTE, wait=True)

    def settle(self) -> None:
        self._db.settle()

    def unplug(self, names: Sequence[str]) -> None:
        self._db.remove_ports(self.bridge, names)

    def installed(self) -> list[Flow]:
        return self._flows.installed(self.bridge)

    def canonical(self, flows: Sequence[Flow]) -> list[Flow]:
        return self._flows.canonical(flows)

    def meter_plan(self, meters: Sequence[Meter]) -> tuple[list[ofctl.Meter], list[ofctl.Meter], list[int]]:
        """(to add, to modify, ids to delete) that make br-int's meters `meters`."""
        want = [ofctl.Meter.drop(m.id, kbps=m.rate_kbps, burst=m.burst_kb) for m in meters]
        return ofctl.meter_diff(want, self._flows.meters(self.bridge))

    def apply(self, add: Sequence[Flow], delete: Sequence[Flow], meters: Sequence[Meter], *,
              first: Sequence[Flow] = ()) -> None:  # fmt: skip
        new, changed, gone = self.meter_plan(meters)
        if new or changed:
            self._flows.apply_meters(self.bridge, add=new, modify=changed)
        # The canary goes with every bundle; after a restart there is at least the canary.
        self._flows.apply(self.bridge, add, delete, canary=self._flows.restarted(self.bridge),
                          first=first)  # fmt: skip
        if gone:
            self._flows.apply_meters(self.bridge, delete=gone)

    def counters(self, table: int | None = None) -> list[tuple[Flow, int, int]]:
        return self._flows.counters(self.bridge, table)

    def meter_stats(self) -> dict[int, tuple[int, int]]:
        """Each meter's drops (packets, bytes), by id."""
        return self._flows.meter_stats(self.bridge)

    def instance(self) -> str:
        """Which ovs-vswitchd runs now: "<pid>@<start time>" from its pidfile and /proc (only
        the pid if /proc hides it; "" without a pidfile). A restart changes it."""
        try:
            pid = int((Path(self._config.rundir) / "ovs-vswitchd.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return ""
        try:
            # Field 22 is the start time; the command name (2) may hold spaces, so after ")".
            started = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
        except (OSError, IndexError):
            return str(pid)
        return f"{pid}@{started}"

    def trace(self, flow: str) -> str:
        """ofproto/trace of `flow` through the bridge (conntrack sees a new connection)."""
        ctl = _vswitchd_ctl(Path(self._config.rundir))
        done = subprocess.run(["ovs-appctl", "-t", str(ctl), "ofproto/trace", self.bridge, flow],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        if done.returncode != 0:
            raise ApplyError(f"ofproto/trace failed: {done.stderr.strip() or done.stdout.strip()}",
                             grpc.StatusCode.UNAVAILABLE)  # fmt: skip
        return done.stdout

    def restarted(self, timeout: float | None = None) -> bool:
        """True when ovs-vswitchd lost the flows (restarted, or someone flushed br-int)."""
        return self._flows.restarted(self.bridge, timeout)


def _vswitchd_ctl(rundir: Path) -> Path:
    """ovs-vswitchd's unixctl socket: <rundir>/ovs-vswitchd.ctl when started with --unixctl
    (the lab), else <rundir>/ovs-vswitchd.<pid>.ctl (the packaged daemon)."""
    named = rundir / "ovs-vswitchd.ctl"
    if named.exists():
        return named
    pid = (rundir / "ovs-vswitchd.pid").read_text().strip()
    return rundir / f"ovs-vswitchd.{pid}.ctl"


class RestartWatch:
    """Polls the switch's canary every WATCH_INTERVAL_S (WATCH_DOWN_INTERVAL_S while the
    switch does not answer) and calls `kick` (the engine's) once per restart seen; `restarts`
    counts them for NodeInfo. A thread of its own, daemonic."""

    def __init__(self, switch: OvsSwitch, kick: Callable[[], None]) -> None:
        self._switch = switch
        self._kick = kick
        self._stop = threading.Event()
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name="ovs-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        seen_ready = False  # only a canary that was there and went away is a restart
        interval = WATCH_INTERVAL_S
        while not self._stop.wait(interval):
            try:
                gone = self._switch.restarted(WATCH_TIMEOUT_S)
            except Exception as e:  # ovs-vswitchd down: the reconciler reports it
                log.debug("ovs.watch_failed", error=str(e))
                interval = WATCH_DOWN_INTERVAL_S
                continue
            interval = WATCH_INTERVAL_S
            if gone and seen_ready:
                self.restarts += 1
                log.warning("ovs.restarted", bridge=self._switch.bridge, restarts=self.restarts)
                self._kick()
            seen_ready = not gone
