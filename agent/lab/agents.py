"""An `andromede-agent` per simulated host, and a gRPC client for each, as a control plane
would have: the lab's agents run as real processes inside their host's namespace, over that
host's own Open vSwitch, and are reached only over gRPC with mutual TLS.

Where things are: every agent has `<lab root>/<host>/agent/` with its config (agent.toml), its
state directory and its socket (agent.sock: gRPC with mutual TLS over a unix socket, which
crosses namespaces where TCP would need a route). All agents share one lab CA
(`<lab root>/pki`): a server certificate for "localhost" and the "control-plane" and
"operator" client certificates. Unlike the agent's defaults, the lab lets "operator" call the
Network service too, so a person can read the lab back with `andromede --lab <agent dir>`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import structlog

from agent import pki
from agent.compute import qemu
from agent.compute.kvm import CACHE as KVM_PROBE
from agent.lab.hosts import SimulatedHost, pid_running, stop_pid
from andromede.v1 import compute_pb2_grpc, metering_pb2_grpc, network_pb2_grpc, node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0


class LabAgent:
    """One agent on one simulated host. `start()` returns once it answers over gRPC."""

    def __init__(self, host: SimulatedHost, certs: pki.LabPki, config_extra: str = "") -> None:
        self.host = host
        self.certs = certs
        self.config_extra = config_extra  # TOML tables appended to the config (tests' settings)
        self.dir = host.dir / "agent"
        self.socket = self.dir / "agent.sock"
        self.log_path = self.dir / "agent.log"
        self.proc: subprocess.Popen | None = None
        self._channels: dict[str, grpc.Channel] = {}

    def _write_config(self) -> Path:
        (self.dir / "state").mkdir(parents=True, exist_ok=True, mode=0o700)
        q = json.dumps
        config = self.dir / "agent.toml"
        config.write_text(
            "[server]\n"
            f"listen = [{q('unix:' + str(self.socket))}]\n"
            "[server.tls]\n"
            f"cert = {q(str(self.certs.server.cert))}\n"
            f"key = {q(str(self.certs.server.key))}\n"
            f"ca = {q(str(self.certs.ca.cert))}\n"
            "[server.allow]\n"
            '"andromede.v1.Network" = ["control-plane", "operator"]\n'
            '"andromede.v1.Compute" = ["control-plane", "operator"]\n'
            "[state]\n"
            f"dir = {q(str(self.dir / 'state'))}\n"
            "[ovs]\n"
            f"rundir = {q(str(self.host.rundir))}\n"
            f"tunnel_ip = {q(self.host.underlay_ip)}\n"
            "[qemu]\n"
            f"images_dir = {q(str(self.host.lab.root / 'images'))}\n"
            f"run_dir = {q(str(self.dir / 'run'))}\n"
            "[log]\n"
            'mode = "json"\n'
            + self.config_extra
        )
        return config

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        config = self._write_config()
        # The lab's hosts share one machine: the first agent's KVM probe answers for all.
        shared_probe = self.host.lab.root / KVM_PROBE
        if shared_probe.exists() and not (self.dir / "state" / KVM_PROBE).exists():
            shutil.copy(shared_probe, self.dir / "state" / KVM_PROBE)
        with self.log_path.open("ab") as out:
            self.proc = self.host.ns.popen(
                [sys.executable, "-m", "agent.main", "--config", str(config)],
                env=[f"PYTHONPATH={REPO}:{REPO / 'proto'}"], cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=1)
                break
            except grpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the agent on {self.host.name} did not come up (exit code "
                        f"{self.proc.poll()}); its log {self.log_path} ends with:\n"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
        if not shared_probe.exists() and (self.dir / "state" / KVM_PROBE).exists():
            shutil.copy(self.dir / "state" / KVM_PROBE, shared_probe)
        log.info("lab.agent_up", host=self.host.name, pid=self.proc.pid, socket=str(self.socket))

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the agent's log, without the access log (which would bury the rest)."""
        if not self.log_path.exists():
            return ""
        lines = [line for line in self.log_path.read_text().splitlines()
                 if '"rpc.handled"' not in line]  # fmt: skip
        return "\n".join(lines)[-chars:]

    def kill(self) -> None:
        """kill -9, as a crash would: the agent leaves everything as it was."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.close_channels()

    def stop(self) -> None:
        if self.proc is not None and pid_running(self.proc.pid):
            stop_pid(self.proc.pid, signal.SIGTERM, timeout=15)
        if self.proc is not None:
            self.proc.wait(timeout=5)
        self.close_channels()

    def end_vms(self) -> list[int]:
        """Kill -9 the QEMU processes this host's agent started and left running (VMs outlive
        their agent), by the pids in its VM records, each checked to be still that VM's; the
        pids ended. For the lab's teardown, after the agent stopped."""
        ended = []
        for path in (self.dir / "state" / "vms").glob("*/vm.json"):
            record = json.loads(path.read_text())
            pid = record.get("pid", 0)
            if pid and qemu.is_vm(pid, record["id"], record["started"]):
                stop_pid(pid, signal.SIGKILL)
                ended.append(pid)
        return ended

    def close_channels(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def channel(self, identity: str = "control-plane") -> grpc.Channel:
        if identity not in self._channels:
            cert, key = self.certs.clients[identity].read()
            creds = grpc.ssl_channel_credentials(self.certs.ca.cert.read_bytes(), key, cert)
            self._channels[identity] = grpc.secure_channel(
                f"unix:{self.socket}", creds,
                options=[("grpc.ssl_target_name_override", "localhost")],
            )  # fmt: skip
        return self._channels[identity]

    def metering(self) -> metering_pb2_grpc.MeteringStub:
        return metering_pb2_grpc.MeteringStub(self.channel())

    def node(self) -> node_pb2_grpc.NodeStub:
        return node_pb2_grpc.NodeStub(self.channel())

    def network(self) -> network_pb2_grpc.NetworkStub:
        return network_pb2_grpc.NetworkStub(self.channel())

    def compute(self) -> compute_pb2_grpc.ComputeStub:
        return compute_pb2_grpc.ComputeStub(self.channel())

    def wait_applied(self, generation: int, timeout: float = 30.0) -> float:
        """Seconds until the host's applied generation reaches `generation`."""
        started = time.monotonic()
        while True:
            info = self.node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=5).info
            if info.applied_generation >= generation:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"host {self.host.name} applied generation {info.applied_generation}, not "
                    f"{generation}, within {timeout} s; its log ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)


def lab_pki(root: Path) -> pki.LabPki:
    """The lab's CA, a server certificate for localhost, control-plane and operator clients."""
    return pki.lab_pki(root / "pki", hostnames=["localhost"], ips=["127.0.0.1"])
