"""`andromede-agent`: the daemon. Reads its config, locks its state directory, opens the
store, starts the reconcile engine and the gRPC server, and tells systemd how it goes.

    andromede-agent --config /etc/andromede/agent.toml      # under systemd (the unit's ExecStart)
    andromede-agent --lab ./lab                              # the local lab: certs, config, state

Start-up, in order (each step's failure exits non-zero with a message that says what to do):
config -> logging -> exclusive flock on <state dir>/agent.lock (a second agent on the same
state exits 1) -> Store -> with [ovs] tunnel_ip, the OVS switch (IDL connection, ovs-ofctl)
-> with [qemu] images_dir, the KVM probe (cached per boot) and the compute side ->
Engine([MaintenanceReconciler(), NetworkReconciler(...), ComputeReconciler(...)]) -> server
(health NOT_SERVING; Network and Compute served only when their kinds are reconciled), after the
Prometheus endpoint ([metrics] listen, agent/metrics.py; stopped last, before the store closes)
-> the metering poller ([metering] poll_interval_s; the usage ledger is made with the store)
-> the OVS restart watch -> engine thread. The VMs' QEMU processes are not the agent's to stop:
they run on when it exits (and the next agent re-adopts them).
sd_notify: STATUS=starting, STATUS=reconciling, EXTEND_TIMEOUT_USEC while the first pass makes
progress, then READY=1 and health SERVING once the engine's first full pass is done, with
STATUS="serving N listeners; generation G applied" (updated as G moves); WATCHDOG=1 from the
engine's progress (after each object, and while idle), at most once per half watchdog period,
so a reconciler stuck in a driver call gets the agent restarted. SIGTERM/SIGINT: STOPPING=1,
stop the server (calls in flight get a grace period), stop the engine and the watch, close
the OVS connection and the store, exit 0. If the engine thread dies (a broken store)
the agent exits 1, and systemd restarts it.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import faulthandler
import ipaddress
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from agent import config as agent_config
from agent import logs, server
from agent import metrics
from agent.config import Config, ConfigError
from agent.compute import kvm as kvm_probe
from agent.compute import specs as compute_specs
from agent.compute.reconcile import ComputeReconciler
from agent.compute.service import Compute
from agent.inventory import read_numa_nodes
from agent.engine.runner import EngineRunner
from agent.metering.engine import EngineUsage
from agent.metering.ledger import Ledger
from agent.metering.ovs import OvsUsage
from agent.metering.poller import Poller
from agent.metering.service import MeteringService, tenants_with_ports
from agent.network.numbers import Numbers
from agent.network.ovs import OvsSwitch, RestartWatch
from agent.network.readback import Readback
from agent.network.reconcile import NetworkReconciler
from agent.network.specs import Host
from agent.node_service import QEMU_VERSION, tool_version
from agent.reconcile import Engine, MaintenanceReconciler
from agent.sdnotify import Notifier
from agent.store import FILENAME, Store, StoreError

log = structlog.get_logger(__name__)

LOCK_FILE = "agent.lock"
STOP_GRACE_S = 5.0


class AlreadyRunning(RuntimeError):
    pass


def lock_state_dir(state_dir: Path) -> int:
    """Hold an exclusive flock on `state_dir`/agent.lock for the life of the process; the file
    descriptor (never closed: the kernel drops the lock when the process exits, kill -9 too).
    Raises AlreadyRunning if another process holds it."""
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another andromede-agent (pid {holder}) already uses the state directory "
            f"{state_dir} (lock {path} is held); stop it first, or give this one its own "
            f"--state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="andromede-agent", description="The Andromede node agent (gRPC API, reconciler)."
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="the agent's TOML config file")
    source.add_argument(
        "--lab",
        metavar="DIR",
        nargs="?",
        const="lab",
        help="local lab: make (or reuse) certificates, config and state in DIR (default ./lab)",
    )
    parser.add_argument(
        "--lab-port",
        type=int,
        default=agent_config.LAB_PORT,
        help="with --lab, the TCP port written into a new lab config (default %(default)s)",
    )
    parser.add_argument("--state-dir", metavar="DIR", help="override [state] dir")
    parser.add_argument(
        "--listen", metavar="ADDR", action="append", help="override [server] listen (repeatable)"
    )
    parser.add_argument("--log-mode", choices=logs.MODES, help="override [log] mode")
    args = parser.parse_args(argv)
    if args.config is None and args.lab is None:
        parser.error("one of --config FILE or --lab [DIR] is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notifier = Notifier.from_environ(unset=True)
    faulthandler.enable()  # a watchdog SIGABRT prints every thread's stack
    try:
        if args.lab is not None:
            config = agent_config.lab_config(args.lab, port=args.lab_port)
        else:
            config = agent_config.load(args.config)
        config = agent_config.with_overrides(
            config, state_dir=args.state_dir, listen=args.listen, log_mode=args.log_mode
        )
    except (ConfigError, ValueError, OSError) as e:
        print(f"andromede-agent: bad configuration: {e}", file=sys.stderr)
        return 2
    logs.configure(mode=config.log.mode, level=config.log.level)
    notifier.status("starting")
    try:
        return _run(config, notifier, lab=args.lab is not None)
    except AlreadyRunning as e:
        print(f"andromede-agent: {e}", file=sys.stderr)
        log.error("agent.already_running", error=str(e))
        return 1
    except (ConfigError, StoreError, OSError) as e:
        print(f"andromede-agent: cannot start: {e}", file=sys.stderr)
        log.error("agent.start_failed", error=str(e))
        return 1
    finally:
        notifier.close()


def _run(config: Config, notifier: Notifier, *, lab: bool) -> int:
    state_dir = config.state_dir
    if not state_dir.is_dir():
        raise ConfigError(
            "state.dir", f"{state_dir} does not exist; create it (systemd's StateDirectory= does)"
        )
    lock_state_dir(state_dir)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    store = Store(state_dir / FILENAME)
    network = _network(config)
    compute = None
    agent_metrics = metrics.AgentMetrics()
    metrics_server = None
    try:
        reconcilers: list = [MaintenanceReconciler()]
        ledger, usage = _metering(store, network, state_dir)
        if network is not None:
            reconciler = NetworkReconciler(network.switch, Numbers(state_dir), network.host,
                                           changes=usage)  # fmt: skip
            reconcilers.append(reconciler)
        if config.qemu.images_dir is not None:
            compute = _compute(config, network, reconciler if network is not None else None)
            reconcilers.append(compute.reconciler)
        engine = Engine(
            store, reconcilers, resync_interval=config.reconcile.resync_interval_s,
            on_pass=agent_metrics.observe_pass,
        )
        if compute is not None:
            compute.reconciler.kick = engine.kick
        watch = readback = None
        runner = None
        if config.engine.ports:
            if network is None:
                raise ConfigError("engine.ports", "the engine runs this host's network policy: configure "
                                  "[ovs] tunnel_ip too")  # fmt: skip
            runner = EngineRunner(config.engine.ports, lambda: reconciler.state)
            ledger.attach(EngineUsage(runner))
            runner.start()
        if network is not None:
            watch = RestartWatch(network.switch, engine.kick)
            readback = Readback(network.switch, reconciler, watch, store,
                                lambda: Numbers(state_dir))  # fmt: skip
            agent_metrics.collect_ovs(watch)
        agent_metrics.collect_store(store)
        agent_metrics.collect_usage(lambda: usage_rows(ledger))
        metrics_server = metrics.serve(config.metrics, agent_metrics.registry, config.server.tls)
        agent_server = server.start(
            config.server, store, reconciled_kinds=engine.kinds,
            host=network.host if network else Host(), ovs=config.ovs, readback=readback,
            compute=compute.api if compute is not None else None,
            observe_rpc=agent_metrics.observe_rpc,
            metering=MeteringService(ledger, tenants_with_ports(store)),
        )  # fmt: skip
        poller = Poller(ledger, config.metering.poll_interval_s)
        poller.start()
        if watch is not None:
            watch.start()
        try:
            return _serve(config, notifier, store, engine, agent_server, stop, lab=lab,
                          metrics_server=metrics_server)
        except BaseException:
            agent_server.stop(STOP_GRACE_S)  # _serve stops it itself on the normal path
            raise
        finally:
            if watch is not None:
                watch.stop()
            if runner is not None:
                runner.stop()
            poller.stop()  # before the store closes: it checkpoints there
    finally:
        if metrics_server is not None:
            metrics_server.stop()  # before the store closes: its scrapes read the store
        if compute is not None:
            compute.reconciler.close()
        if network is not None:
            network.switch.close()
        store.close()
        log.info("agent.stopped")


def usage_rows(ledger: Ledger) -> list[metrics.UsageRow]:
    """The ledger's totals as of its last read, as /metrics shows them (a scrape reads no OVS)."""
    return [(u.tenant_id, direction, c.packets, c.bytes, c.meter_dropped_packets, c.meter_dropped_bytes)
            for u in ledger.usage(ledger.tenants())
            for direction, c in (("ingress", u.ingress), ("egress", u.egress))]  # fmt: skip


def _metering(store: Store, network: _Network | None, state_dir: Path
              ) -> tuple[Ledger, OvsUsage | None]:  # fmt: skip
    """The usage ledger over the store, reading br-int's counters when there is OVS (the
    network reconciler calls the OVS source around its changes)."""
    ledger = Ledger(store)
    if network is None:
        return ledger, None
    usage = OvsUsage(network.switch, ledger, lambda: Numbers(state_dir).assigned("tenant_tags"))
    ledger.attach(usage)
    return ledger, usage


@dataclass(frozen=True, slots=True)
class _Compute:
    reconciler: ComputeReconciler
    api: Compute


def _compute(config: Config, network: _Network | None,
             network_reconciler: NetworkReconciler | None) -> _Compute:  # fmt: skip
    """The VM side, when [qemu] images_dir says this host runs VMs: the KVM probe (once per
    boot of the host), the reconciler, and what the Compute service checks requests against."""
    qemu = config.qemu
    version = tool_version([qemu.binary, "--version"], QEMU_VERSION)
    if not version:
        raise ConfigError("qemu.binary", f"{qemu.binary} --version does not answer: install "
                          f"qemu-system-x86 (scripts/setup.sh does)")  # fmt: skip
    kvm = kvm_probe.probe(qemu.binary, config.state_dir, version)
    try:
        reconciler = ComputeReconciler(
            qemu, config.state_dir, kvm,
            switch=network.switch if network is not None else None,
            wired=(lambda: network_reconciler.wired) if network_reconciler is not None else frozenset,
        )  # fmt: skip
    except LookupError as e:  # the VM user is missing
        raise ConfigError("qemu.user", str(e)) from None
    memory = psutil.virtual_memory().total >> 20
    host = compute_specs.Host(
        cpus=os.cpu_count() or 1,
        memory_mb=memory,
        numa_nodes=frozenset(node.id for node in read_numa_nodes()),
        hugepage_mb=max(1, _hugepage_kb() >> 10),
        images_dir=qemu.images_dir,
    )
    return _Compute(reconciler, Compute(host, reconciler.runtimes, kvm))


def _hugepage_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Hugepagesize:"):
            return int(line.split()[1])
    return 2048


@dataclass(frozen=True, slots=True)
class _Network:
    switch: OvsSwitch
    host: Host


def _network(config: Config) -> _Network | None:
    """The OVS side, when [ovs] tunnel_ip says this host carries tenant networks."""
    ovs = config.ovs
    if ovs.tunnel_ip is None:
        return None
    host = Host(max_network_mtu=ovs.max_network_mtu, tunnel_ip=ipaddress.ip_address(ovs.tunnel_ip))
    return _Network(OvsSwitch(ovs), host)


def _serve(
    config: Config,
    notifier: Notifier,
    store: Store,
    engine: Engine,
    agent_server: server.AgentServer,
    stop: threading.Event,
    *,
    lab: bool,
    metrics_server: metrics.MetricsServer | None = None,
) -> int:
    heartbeat = Heartbeat(notifier)
    engine_stop = threading.Event()
    crashed: list[BaseException] = []

    def run_engine() -> None:
        try:
            engine.run_forever(engine_stop, progress=heartbeat)
        except BaseException as e:  # a broken store: the agent must exit and be restarted
            crashed.append(e)
            log.exception("agent.engine_crashed")
            stop.set()

    thread = threading.Thread(target=run_engine, name="reconcile", daemon=True)
    notifier.status("reconciling")
    thread.start()
    listeners = len(agent_server.ports)
    if lab:
        _print_lab_help(config, agent_server, metrics_server)

    shown = -1
    while not stop.is_set():
        if not heartbeat.ready and engine.first_pass_done.is_set():
            agent_server.set_serving()
            shown = store.applied_generation()
            heartbeat.ready = True
            notifier.ready(f"serving {listeners} listeners; generation {shown} applied")
            log.info("agent.ready", listeners=listeners, applied_generation=shown,
                     first_pass=_pass_fields(engine))  # fmt: skip
        elif heartbeat.ready:
            generation = store.applied_generation()
            if generation != shown:
                shown = generation
                notifier.status(f"serving {listeners} listeners; generation {shown} applied")
        stop.wait(0.05 if not heartbeat.ready else 0.5)

    notifier.stopping("stopping")
    log.info("agent.stopping")
    agent_server.stop(STOP_GRACE_S)
    engine_stop.set()
    thread.join(timeout=10)
    if crashed:
        return 1
    return 0


class Heartbeat:
    """The engine's progress, turned into what systemd watches: WATCHDOG=1 at most once per
    `notifier.watchdog_interval` (half of WatchdogSec), and, until READY=1, EXTEND_TIMEOUT_USEC
    every EXTEND_EVERY_S so that a long first pass over many objects is not taken for a hung
    start. A reconciler stuck in a driver call stops the progress, so both stop, and systemd
    restarts the agent."""

    EXTEND_EVERY_S = 5.0
    EXTEND_BY_S = 30.0

    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._clock = clock
        self._last_ping = self._last_extend = float("-inf")
        self.ready = False  # set by the daemon once READY=1 is sent

    def __call__(self) -> None:
        now = self._clock()
        interval = self._notifier.watchdog_interval
        if interval is not None and now - self._last_ping >= interval:
            self._last_ping = now
            self._notifier.watchdog()
        if not self.ready and now - self._last_extend >= self.EXTEND_EVERY_S:
            self._last_extend = now
            self._notifier.extend_timeout(self.EXTEND_BY_S)


def _pass_fields(engine: Engine) -> dict[str, object]:
    summary = engine.last_pass
    return {} if summary is None else {"objects": summary.objects, "ms": summary.ms,
                                       "acked": summary.acked}  # fmt: skip


def _print_lab_help(config: Config, agent_server: server.AgentServer,
                    metrics_server: metrics.MetricsServer | None = None) -> None:  # fmt: skip
    """How to talk to the lab agent with the CLI (stderr, so stdout stays clean)."""
    lab_dir = config.source.parent if config.source else Path.cwd()
    tls = config.server.tls
    lines = ["", "Andromede agent (lab) is up. Talk to it with the CLI:"]
    unix = agent_config.lab_unix_socket(config)
    if unix and config.server.insecure_unix:
        lines.append(f"  andromede --unix {unix} node info")
    target = agent_config.lab_tcp_target(config)
    if target and tls is not None:
        pki_dir = tls.client_ca.parent
        lines.append(
            f"  andromede --target {target} --ca {tls.client_ca} "
            f"--cert {pki_dir / 'operator.pem'} --key {pki_dir / 'operator.key'} node info"
        )
    lines.append(f"  andromede --lab {lab_dir} node info   (also: node inventory, events --follow)")
    if metrics_server is not None and metrics_server.tls and tls is not None:
        pki_dir = tls.client_ca.parent
        lines.append(f"  curl --cacert {tls.client_ca} --cert {pki_dir / 'operator.pem'} "
                     f"--key {pki_dir / 'operator.key'} https://{metrics_server.address}/metrics")
    elif metrics_server is not None:
        lines.append(f"  curl http://{metrics_server.address}/metrics   (Prometheus)")
    lines.append("(before `pip install -e .`: python -m agent.cli instead of andromede)")
    lines.append("")
    print("\n".join(lines), file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
