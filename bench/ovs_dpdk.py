"""The engine benchmark's peers: Open vSwitch's DPDK datapath, and DPDK's testpmd as the floor.

Both are fed a pcap through DPDK's pcap driver, looping the file in memory
(`net_pcap0,rx_pcap=<file>,infinite_rx=1`: the driver loads every frame into mbufs once and
copies each out on every receive), and send to DPDK's null driver (`net_null0,no-rx=1`), on
one pinned core. No NIC, no hugepages: DPDK runs with `--no-huge --legacy-mem -m <MB>
--no-pci` (ordinary memory, the same speed, ../shared/lab-notes.md).

`run_ovs_dpdk(pcap, flows, meters, ...)`: Debian's `ovs-vswitchd-dpdk` (package
openvswitch-switch-dpdk, run directly: the system's ovs-vswitchd alternative stays on the plain
binary) with its own ovsdb-server, db, sockets and logs in a fresh temporary directory, inside
a network namespace of its own (the netdev bridge's local port is a tap device: it must not
appear among the machine's interfaces). One bridge, `datapath_type=netdev`, `fail_mode=secure`;
the pcap port at ofport 1 and the null port at ofport 2, as `bench.engine_policy` plugs the
sender and the receiver; one PMD thread on `core`. The null port, then the meters and flows
(through agent/network/ofctl.py, as the agent installs them), then the pcap port: traffic starts
only once the pipeline is complete. `ofproto/trace` of the pcap's first frame says where it
went (`trace_outputs`: the OpenFlow ports it was output to; `trace_datapath_actions`). After a
warm-up, `dpif-netdev/pmd-stats-clear`, `seconds` of traffic, then the PMD's own counters from
`dpif-netdev/pmd-perf-show` and `pmd-stats-show` (never the interface statistics, refreshed
every 5 s).

`run_testpmd(pcap, ...)`: `dpdk-testpmd` forwarding (mode io) the same pcap to a null port on
one core: the cost of DPDK's I/O alone, the floor under both engines. Its rate is testpmd's
own `Rx-pps` between two `show port stats all`, `seconds` apart, after a warm-up.

Everything a run makes is named after one random prefix (temporary directory, namespace, DPDK
`--file-prefix` whose /var/run/dpdk/<prefix> directory is removed) and removed afterwards,
also when the run fails; only the pids these functions started (from the daemons' pidfiles
and Popen) are signalled. Anything that does not work as expected raises `PeerError` with what
happened, the command, and the end of the log.

The pcap must fit in the mbuf pool (the pcap driver holds every frame of it in an mbuf): at
most MAX_PCAP_FRAMES frames, OVS's shared pool less its rings. Write one pass over the
distinct tuples (the driver loops the file). Always report the distinct 5-tuples and the EMC/SMC settings
with OVS's figures: with few tuples OVS measures its exact-match cache, not its classifier.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.lab.hosts import pid_running, stop_pid
from agent.network import ofctl
from dataplane.compile.flows import Flow
from dataplane.compile.openflow import Meter
from dataplane.io.pcap import read_pcap

log = structlog.get_logger(__name__)

OVS_VSWITCHD_DPDK = Path("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")
TESTPMD = "dpdk-testpmd"
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DPDK_RUNDIR = Path("/var/run/dpdk")
BRIDGE = "br-bench"
IN_PORT, OUT_PORT = 1, 2  # bench.engine_policy's SENDER_OFPORT and RECEIVER_OFPORT
MEMORY_MB = 1024
MAX_PCAP_FRAMES = 120_000  # 150,000 did not fit OVS's pool ("Not enough mbufs")
WARMUP_S = 1.0
MAX_WARMUP_S = 60.0
UPCALL_SETTLED = 0.002  # warm: under 0.2% of packets go up to the OpenFlow tables
WARM_WINDOW_S = 0.5
DAEMON_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0
_UNSAFE = re.compile(r"[,\"'\s=]")  # what cannot go into a DPDK devargs value


class PeerError(RuntimeError):
    """A peer is missing, did not start, or printed something we cannot read."""


# --- OVS-DPDK ------------------------------------------------------------------------------


def run_ovs_dpdk(pcap: Path, flows: Sequence[Flow], meters: Sequence[Meter], seconds: float,
                 core: int, emc: bool = True, smc: bool = False, *,
                 distinct_tuples: int | None = None, warmup_s: float = WARMUP_S,
                 max_warmup_s: float = MAX_WARMUP_S, trace_frames: int = 1) -> dict:  # fmt: skip
    """OVS-DPDK forwarding `pcap` (in at ofport 1) through `flows` and `meters` (from
    `compile_host`) to a null port (ofport 2), one PMD on `core`, for `seconds`. EMC on or off
    (`emc-insert-inv-prob` 100, OVS's default, or 0), SMC on or off (`smc-enable`).

    Warm-up: at least `warmup_s`, then until the megaflow cache stops growing and almost no
    packet misses every cache and goes up to the OpenFlow tables (`_warm_up`; with 65,536
    tuples and 1,000 rules that takes some 10-20 s here), at most `max_warmup_s`; `warmup_s`
    in the result is the time it took, and `upcall_pct` says what was left.

    Returns: mpps, tx_mpps, rx_packets, measured_s, cycles_per_packet, emc_hit_pct,
    smc_hit_pct, megaflow_hit_pct, upcall_pct, subtable_lookups_per_hit, megaflows (datapath
    flows at the end), flows (OpenFlow flows installed), meters, distinct_tuples (as given),
    pcap_frames, emc, smc, core, trace_outputs and trace_datapath_actions (of the pcap's first
    frame), trace_verdicts (how many of its first `trace_frames` frames went where:
    {"output:2": n, "drop": m}), setup_s, flows_install_s, warmup_s, version."""
    pcap = _checked_pcap(pcap)
    frames = read_pcap(pcap)
    _check_frames(pcap, len(frames))
    _check_seconds(seconds, warmup_s)
    if trace_frames < 1:
        raise PeerError(f"trace_frames must be at least 1, got {trace_frames}")
    if not OVS_VSWITCHD_DPDK.is_file():
        raise PeerError(f"{OVS_VSWITCHD_DPDK} not found: install the Debian package "
                        f"openvswitch-switch-dpdk (scripts/setup.sh does)")  # fmt: skip
    started = time.perf_counter()
    with _Ovs(core) as ovs:
        ovs.set_dpdk(emc=emc, smc=smc)
        ovs.start_vswitchd()
        ovs.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev",
                  "fail_mode=secure")  # fmt: skip
        ovs.add_dpdk_port("pout", OUT_PORT, "net_null0,no-rx=1")
        installing = time.perf_counter()
        openflow = ofctl.OpenFlow(ovs.dir)
        try:
            openflow.apply_meters(BRIDGE, add=[ofctl.Meter.drop(m.id, kbps=m.rate_kbps, burst=m.burst_kb)
                                               for m in meters])  # fmt: skip
            openflow.apply(BRIDGE, add=list(flows))
        except Exception as e:
            raise PeerError(f"installing {len(flows)} flows and {len(meters)} meters: {e}") from e
        install_s = time.perf_counter() - installing
        ovs.add_dpdk_port("pin", IN_PORT, f"net_pcap0,rx_pcap={pcap},infinite_rx=1")
        setup_s = time.perf_counter() - started
        verdicts: dict[str, int] = {}
        for i in range(min(trace_frames, len(frames))):
            trace = ovs.appctl("ofproto/trace", BRIDGE, f"in_port={IN_PORT}", frames.frame(i).hex())
            got, actions = _trace_verdict(trace)
            if i == 0:
                outputs, datapath_actions = got, actions
            verdict = ",".join(f"output:{p}" for p in got) or "drop"
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
        warmed_s = _warm_up(ovs, core, warmup_s, max_warmup_s)
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        time.sleep(seconds)
        perf = ovs.appctl("dpif-netdev/pmd-perf-show")
        stats = ovs.appctl("dpif-netdev/pmd-stats-show")
        megaflows = _megaflows(ovs)
        version = _first_line(_run([str(OVS_VSWITCHD_DPDK), "--version"]).stdout)
        dpdk_version = ovs.vsctl("get", "Open_vSwitch", ".", "dpdk_version").strip('"')
        result = _pmd_figures(perf, stats, core)
    result.update(
        megaflows=megaflows,
        flows=len(flows), meters=len(meters), distinct_tuples=distinct_tuples,
        pcap_frames=len(frames), emc=emc, smc=smc, core=core, trace_outputs=outputs,
        trace_datapath_actions=datapath_actions, trace_verdicts=verdicts, setup_s=round(setup_s, 3),
        flows_install_s=round(install_s, 3), warmup_s=round(warmed_s, 3), version=f"{version}, {dpdk_version}",
    )  # fmt: skip
    log.info("peer.ovs_dpdk", mpps=result["mpps"], emc_hit_pct=result["emc_hit_pct"],
             flows=len(flows), distinct_tuples=distinct_tuples, emc=emc, smc=smc)  # fmt: skip
    return result


class _Ovs:
    """ovsdb-server and ovs-vswitchd-dpdk of one run: a temporary directory (db, sockets,
    pidfiles, logs), a namespace, a DPDK file prefix, all named `andr-peer-<random>`;
    `__exit__` stops the daemons it started and removes all of it."""

    def __init__(self, core: int) -> None:
        self.core = core
        self.prefix = f"andr-peer-{secrets.token_hex(4)}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.ns = self.prefix
        self.pids: dict[str, int] = {}
        self._ns_made = False

    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d}

    def ctl(self, daemon: str) -> str:
        return str(self.dir / f"{daemon}.ctl")

    def __enter__(self) -> _Ovs:
        try:
            _run(["ip", "netns", "add", self.ns])
            self._ns_made = True
            _run(["ovsdb-tool", "create", str(self.dir / "conf.db"), str(SCHEMA)])
            self._start("ovsdb-server", ["ovsdb-server", str(self.dir / "conf.db"),
                                         f"--remote=punix:{self.dir}/db.sock"])  # fmt: skip
            self.vsctl("--no-wait", "init")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_dpdk(self, emc: bool, smc: bool) -> None:
        extra = f"--no-huge --legacy-mem -m {MEMORY_MB} --no-pci --no-telemetry --file-prefix={self.prefix}"
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
                   f"other_config:pmd-cpu-mask={1 << self.core:#x}", f'other_config:dpdk-extra="{extra}"',
                   "other_config:pmd-perf-metrics=true",
                   f"other_config:emc-insert-inv-prob={100 if emc else 0}",
                   f"other_config:smc-enable={'true' if smc else 'false'}")  # fmt: skip

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd-dpdk in the namespace; it detaches once DPDK is up."""
        self._start("ovs-vswitchd", ["ip", "netns", "exec", self.ns, str(OVS_VSWITCHD_DPDK),
                                     f"unix:{self.dir}/db.sock"], timeout=DAEMON_TIMEOUT_S)  # fmt: skip
        log.debug("peer.vswitchd_started", pid=self.pids["ovs-vswitchd"], dir=str(self.dir))

    def add_dpdk_port(self, name: str, ofport: int, devargs: str) -> None:
        self.vsctl("add-port", BRIDGE, name, "--", "set", "Interface", name, "type=dpdk",
                   f"ofport_request={ofport}", f'options:dpdk-devargs="{devargs}"')  # fmt: skip
        got = self.vsctl("get", "Interface", name, "ofport")
        error = self.vsctl("get", "Interface", name, "error")
        if got != str(ofport):
            raise PeerError(f"port {name} ({devargs}) got ofport {got}, not {ofport}: {error}; "
                            f"from the log:\n{self.log_about(name, 'dpdk', 'pcap', 'mbuf', 'mempool')}")  # fmt: skip

    def _start(self, daemon: str, argv: list[str], timeout: float = 10.0) -> None:
        pidfile = self.dir / f"{daemon}.pid"
        _run([*argv, f"--pidfile={pidfile}", f"--unixctl={self.ctl(daemon)}",
              f"--log-file={self.dir / daemon}.log", "-vconsole:off", "--detach"],
             timeout=timeout, env=self.env, log_file=self.dir / f"{daemon}.log")  # fmt: skip
        self.pids[daemon] = int(pidfile.read_text().split()[0])

    def vsctl(self, *args: str) -> str:
        return _run(["ovs-vsctl", f"--db=unix:{self.dir}/db.sock", f"--timeout={int(COMMAND_TIMEOUT_S)}",
                     *args], log_file=self.dir / "ovs-vswitchd.log").stdout.strip()  # fmt: skip

    def appctl(self, *args: str) -> str:
        return _run(["ovs-appctl", "-t", self.ctl("ovs-vswitchd"), f"--timeout={int(COMMAND_TIMEOUT_S)}",
                     *args], log_file=self.dir / "ovs-vswitchd.log").stdout  # fmt: skip

    def log_about(self, *words: str, lines: int = 15) -> str:
        """The last `lines` lines of ovs-vswitchd's log that mention one of `words` (it
        writes its log from a thread of its own: give it a moment)."""
        time.sleep(0.3)
        try:
            text = (self.dir / "ovs-vswitchd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if any(w in line for w in words)][-lines:])

    def close(self) -> None:
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pid = self.pids.pop(daemon, None)
            pidfile = self.dir / f"{daemon}.pid"
            if pid is None and pidfile.is_file():  # detached, but _start failed after that
                text = pidfile.read_text().split()
                pid = int(text[0]) if text else None
                if pid is not None and str(self.dir) not in _cmdline(pid):
                    pid = None  # not ours
            if pid is not None and pid_running(pid):
                stop_pid(pid, signal.SIGTERM, timeout=10.0)
        if self._ns_made:
            _run(["ip", "netns", "del", self.ns], check=False)
            self._ns_made = False
        shutil.rmtree(DPDK_RUNDIR / self.prefix, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _warm_up(ovs: _Ovs, core: int, least_s: float, most_s: float) -> float:
    """Let traffic run `least_s`, then until the megaflow cache holds the pcap's flows (see
    run_ovs_dpdk); the seconds it took. Settled: two windows of WARM_WINDOW_S in a row with
    under UPCALL_SETTLED of their packets upcalled and the megaflows grown by under 1%
    (OVS admits megaflows gradually: its flow limit starts at 10,000 and grows by 1,000 per
    revalidation round, every 0.5 s)."""
    started = time.perf_counter()
    time.sleep(least_s)
    settled, megaflows = 0, _megaflows(ovs)
    while settled < 2:
        if time.perf_counter() - started > most_s:
            log.warning("peer.ovs_dpdk_still_warming", after_s=most_s, megaflows=megaflows)
            break
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        time.sleep(WARM_WINDOW_S)
        section = _pmd_section(ovs.appctl("dpif-netdev/pmd-stats-show"), core)
        received = re.search(r"packets received:\s*(\d+)", section)
        upcalls = re.search(r"miss with success upcall:\s*(\d+)", section)
        if received is None or upcalls is None:
            raise PeerError(f"pmd-stats-show has no packets received or upcalls:\n{section}")
        now = _megaflows(ovs)
        quiet = int(upcalls.group(1)) < UPCALL_SETTLED * int(received.group(1))
        settled = settled + 1 if quiet and now <= megaflows * 1.01 + 1 else 0
        megaflows = now
    return time.perf_counter() - started


def _megaflows(ovs: _Ovs) -> int:
    found = re.search(r"^\s*flows:\s*(\d+)", ovs.appctl("dpctl/show"), re.M)
    if found is None:
        raise PeerError("dpctl/show printed no flow count")
    return int(found.group(1))


def _trace_verdict(trace: str) -> tuple[list[int], str]:
    """The OpenFlow ports `ofproto/trace` output the packet to, and its datapath actions."""
    outputs = [int(p) for p in re.findall(r"^\s*output:(\d+)\s*$", trace, re.M)]
    actions = re.search(r"^Datapath actions: (.*)$", trace, re.M)
    if actions is None:
        raise PeerError(f"ofproto/trace printed no datapath actions:\n{trace[-2000:]}")
    return outputs, actions.group(1).strip()


def _pmd_figures(perf: str, stats: str, core: int) -> dict:
    """The figures of the PMD thread on `core` from pmd-perf-show and pmd-stats-show."""
    section = _pmd_section(perf, core)
    duration = re.search(r"Measurement duration:\s*([\d.]+)\s*s", perf)

    def count(name: str) -> tuple[int, float]:
        found = re.search(rf"{name}:\s+(\d+)\s+\(\s*([\d.]+)", section)
        if found is None:
            raise PeerError(f"no '{name}' for the PMD on core {core} in pmd-perf-show:\n{perf[-2000:]}")
        return int(found.group(1)), float(found.group(2))

    if duration is None:
        raise PeerError(f"pmd-perf-show has no measurement duration:\n{perf[-2000:]}")
    rx, _ = count("Rx packets")
    tx, _ = count("Tx packets")
    seconds = float(duration.group(1))
    cycles = re.search(r"Rx packets:.*?(\d+) cycles/pkt", section)
    lookups = re.search(r"subtable lookups per megaflow hit:\s*([\d.]+)", _pmd_section(stats, core))
    return {
        "mpps": round(rx / seconds / 1e6, 3),
        "tx_mpps": round(tx / seconds / 1e6, 3),
        "rx_packets": rx,
        "measured_s": seconds,
        "cycles_per_packet": int(cycles.group(1)) if cycles else None,
        "emc_hit_pct": count("EMC hits")[1],
        "smc_hit_pct": count("SMC hits")[1],
        "megaflow_hit_pct": count("Megaflow hits")[1],
        "upcall_pct": count("Upcalls")[1],
        "subtable_lookups_per_hit": float(lookups.group(1)) if lookups else None,
    }


def _pmd_section(text: str, core: int) -> str:
    found = re.search(rf"pmd thread numa_id \d+ core_id {core}:\n(.*?)(?=\n\S|\Z)", text, re.S)
    if found is None:
        raise PeerError(f"no PMD thread on core {core} (check pmd-cpu-mask and the cores this "
                        f"process may use):\n{text[-2000:]}")  # fmt: skip
    return found.group(1)


# --- testpmd -------------------------------------------------------------------------------


def run_testpmd(pcap: Path, seconds: float, core: int, *, warmup_s: float = WARMUP_S) -> dict:
    """dpdk-testpmd forwarding `pcap` to a null port (mode io) on `core` (its main lcore on
    another CPU this process may use), for `seconds` after `warmup_s`.

    Returns: mpps (testpmd's Rx-pps over the window), tx_mpps, rx_packets (in the window),
    measured_s (the window by our clock), pcap_frames, core, main_core."""
    pcap = _checked_pcap(pcap)
    frames = len(read_pcap(pcap))
    _check_frames(pcap, frames)
    _check_seconds(seconds, warmup_s)
    if shutil.which(TESTPMD) is None:
        raise PeerError(f"{TESTPMD} not found: install the Debian package dpdk (openvswitch-switch-dpdk "
                        f"pulls it in; scripts/setup.sh does)")  # fmt: skip
    others = sorted(os.sched_getaffinity(0) - {core})
    if core not in os.sched_getaffinity(0) or not others:
        raise PeerError(f"testpmd needs core {core} and one more core for its main thread; "
                        f"this process may use {sorted(os.sched_getaffinity(0))}")  # fmt: skip
    main = others[0]
    prefix = f"andr-testpmd-{secrets.token_hex(4)}"
    mbufs = frames + 16_384
    memory = max(MEMORY_MB, mbufs * 4 // 1024 + 256)  # about 2.3 KB an mbuf, with room
    argv = ["stdbuf", "-o0", "-e0", TESTPMD, "--no-huge", "--legacy-mem", "-m", str(memory), "--no-pci",
            "--no-shconf", "--no-telemetry", f"--file-prefix={prefix}", f"--lcores=0@{main},1@{core}",
            f"--vdev=net_pcap0,rx_pcap={pcap},infinite_rx=1", "--vdev=net_null0,no-rx=1", "--",
            "-i", "--forward-mode=io", "--nb-cores=1", f"--total-num-mbufs={mbufs}"]  # fmt: skip
    console = _Console(argv)
    try:
        console.command("start")
        time.sleep(warmup_s)
        before, t0 = console.command("show port stats all"), time.perf_counter()
        time.sleep(seconds)
        after, t1 = console.command("show port stats all"), time.perf_counter()
        console.command("stop")
        console.quit()
    finally:
        console.close()
        shutil.rmtree(DPDK_RUNDIR / prefix, ignore_errors=True)
    rx0, rx1 = _port_stat(before, 0, "RX-packets"), _port_stat(after, 0, "RX-packets")
    result = {
        "mpps": round(_port_stat(after, 0, "Rx-pps") / 1e6, 3),
        "tx_mpps": round(_port_stat(after, 1, "Tx-pps") / 1e6, 3),
        "rx_packets": rx1 - rx0,
        "measured_s": round(t1 - t0, 3),
        "pcap_frames": frames,
        "core": core,
        "main_core": main,
    }
    log.info("peer.testpmd", mpps=result["mpps"], core=core)
    return result


class _Console:
    """testpmd's interactive prompt over pipes (stdbuf unbuffers its stdout, so each answer
    arrives as it is printed): send a command, get what it printed up to the next prompt."""

    PROMPT = "testpmd> "

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self._out = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._seen = 0
        self._wait_prompt(1, DAEMON_TIMEOUT_S)

    def _read(self) -> None:
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self._lock:
                self._out.extend(chunk)

    def _text(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    def _wait_prompt(self, count: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (text := self._text()).count(self.PROMPT) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited {self.proc.returncode}" if self.proc.poll() is not None else "no prompt"
                raise PeerError(f"{' '.join(self.argv)}: {why} after {timeout:g} s:\n{text[-3000:]}")
            time.sleep(0.005)
        return text

    def command(self, line: str) -> str:
        """Send `line`; what testpmd printed for it."""
        start = len(self._text())
        self._seen += 1
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()
        text = self._wait_prompt(self._seen + 1, COMMAND_TIMEOUT_S)
        return text[start:]

    def quit(self) -> None:
        self.proc.stdin.write(b"quit\n")
        self.proc.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):  # close() ends it
            self.proc.wait(COMMAND_TIMEOUT_S)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self.proc.stdin.close()
        self.proc.stdout.close()


def _port_stat(text: str, port: int, name: str) -> int:
    block = re.search(rf"NIC statistics for port {port}\s+#+[ \t]*\n(.*?)^\s*#{{20,}}", text, re.S | re.M)
    found = re.search(rf"{name}:\s*(\d+)", block.group(1)) if block else None
    if found is None:
        raise PeerError(f"no {name} for port {port} in testpmd's stats:\n{text[-2000:]}")
    return int(found.group(1))


# --- helpers -------------------------------------------------------------------------------


def _checked_pcap(pcap: Path) -> Path:
    pcap = Path(pcap).resolve()
    if not pcap.is_file():
        raise PeerError(f"{pcap}: no such file")
    if _UNSAFE.search(str(pcap)):
        raise PeerError(f"{pcap}: DPDK devargs cannot hold a path with commas, quotes, '=' or "
                        f"spaces; copy the file to a plain path")  # fmt: skip
    return pcap


def _check_frames(pcap: Path, frames: int) -> None:
    if frames == 0:
        raise PeerError(f"{pcap} holds no frames")
    if frames > MAX_PCAP_FRAMES:
        raise PeerError(f"{pcap} holds {frames:,} frames; the pcap driver loads them all into "
                        f"mbufs, at most {MAX_PCAP_FRAMES:,}: write one pass over the distinct "
                        f"tuples (the driver loops the file)")  # fmt: skip


def _check_seconds(seconds: float, warmup_s: float) -> None:
    if not 0.5 <= seconds <= 600 or not 0 <= warmup_s <= 60:
        raise PeerError(f"seconds must be 0.5..600 and warmup_s 0..60, got {seconds} and {warmup_s}")


def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT_S, check: bool = True,
         env: dict[str, str] | None = None, log_file: Path | None = None
         ) -> subprocess.CompletedProcess:  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise PeerError(f"{' '.join(argv)}: no answer within {timeout:g} s"
                        f"{_log_note(log_file)}") from e  # fmt: skip
    except FileNotFoundError as e:
        raise PeerError(f"{argv[0]} not found: install openvswitch-switch and "
                        f"openvswitch-switch-dpdk (scripts/setup.sh)") from e  # fmt: skip
    if check and done.returncode != 0:
        raise PeerError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
                        f"{_log_note(log_file)}")  # fmt: skip
    return done


def _log_note(log_file: Path | None) -> str:
    return f"\nend of {log_file}:\n{_tail(log_file)}" if log_file is not None and log_file.is_file() else ""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
