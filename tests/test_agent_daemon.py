"""The daemon as systemd and an operator meet it: a real `python -m agent.main --lab` process,
a real NOTIFY_SOCKET the test binds, the real CLI over mutual TLS and over the unix socket.

Every process a test starts is killed by its pid in the fixture's cleanup.
"""

from __future__ import annotations

import json
import os
import sqlite3
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from agent.store import FILENAME, Put, Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agents:
    """Starts agents on one lab dir with one NOTIFY_SOCKET; kills them all at the end."""

    def __init__(self, tmp: Path) -> None:
        self.lab = tmp / "lab"
        self.port = free_port()
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "WATCHDOG_USEC": "2000000"}
        log = self.lab.parent / f"agent-{len(self.procs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.main", "--lab", str(self.lab),
                 "--lab-port", str(self.port), "--log-mode", "json"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def messages(self, until: str, timeout: float = READY_TIMEOUT_S) -> list[str]:
        """Notification lines received until one equal to `until` (fails on timeout)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                break
            seen += data.decode().splitlines()
            if until in seen:
                return seen
        logs = "\n".join(p.read_text()[-3000:] for p in self.logs if p.exists())
        pytest.fail(f"no {until!r} within {timeout}s; got {seen}\nagent output:\n{logs}")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if check and done.returncode != 0:
            pytest.fail(f"andromede {' '.join(args)} -> {done.returncode}: {done.stderr}")
        return done

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.notify.close()


@pytest.fixture
def agents(tmp_path):
    a = Agents(tmp_path)
    try:
        yield a
    finally:
        a.close()


def node_info(agents: Agents, *connection: str) -> dict:
    return json.loads(agents.cli(*connection, "--json", "node", "info").stdout)


def test_agent_is_ready_after_first_pass_and_serves_mtls_and_unix(agents):
    agents.start()
    seen = agents.messages("READY=1")
    assert "STATUS=starting" in seen and "STATUS=reconciling" in seen
    assert seen.index("STATUS=reconciling") < seen.index("READY=1")
    assert any(s.startswith("STATUS=serving 2 listeners; generation 0 applied") for s in seen)
    # WATCHDOG=1 comes from the reconcile loop (WATCHDOG_USEC=2 s: at least every 0.5 s).
    agents.messages("WATCHDOG=1", timeout=3)

    pki = agents.lab / "pki"
    over_tls = node_info(
        agents,
        "--target", f"127.0.0.1:{agents.port}", "--ca", str(pki / "ca.pem"),
        "--cert", str(pki / "operator.pem"), "--key", str(pki / "operator.key"),
    )  # fmt: skip
    over_lab = node_info(agents, "--lab", str(agents.lab))
    over_unix = node_info(agents, "--unix", str(agents.lab / "agent.sock"))
    assert over_tls["storeId"] == over_lab["storeId"] == over_unix["storeId"]
    assert over_tls["agentVersion"]


def test_ready_and_serving_only_after_a_first_pass_over_the_stored_objects(agents):
    # A store with many objects, so that the first pass takes a while.
    state = agents.lab / "state"
    state.mkdir(parents=True, mode=0o700)
    with Store(state / FILENAME) as store:
        for start in range(0, 20_000, 4_096):
            store.commit([Put("node", f"n{i}", b"x") for i in range(start, min(start + 4_096, 20_000))],
                         f"fill-{start}")  # fmt: skip
        generation = store.generation()
    agents.start()
    seen = agents.messages("READY=1")
    # Read the store the moment READY arrives: every object is applied, the whole host acked.
    with closing(sqlite3.connect(f"file:{state / FILENAME}?mode=ro", uri=True)) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM objects GROUP BY status"))
        applied = db.execute("SELECT value FROM meta WHERE key = 'applied_generation'").fetchone()
    assert statuses == {"applied": 20_000}
    assert int(applied[0]) == generation
    assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in seen[: seen.index("READY=1")])
    deadline = time.monotonic() + 5
    while True:  # the log line follows the notification
        log = agents.logs[-1].read_text().splitlines()
        events = [json.loads(line)["event"] for line in log if line.startswith("{")]
        if "agent.ready" in events or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert events.index("reconcile.first_pass_done") < events.index("agent.ready")


def test_acknowledged_maintenance_survives_kill_9(agents):
    first = agents.start()
    agents.messages("READY=1")
    done = agents.cli("--unix", str(agents.lab / "agent.sock"), "node", "maintenance", "on",
                      "--reason", "disk swap")  # fmt: skip
    assert "accepted at generation" in done.stdout
    acked = int(done.stdout.split("accepted at generation ")[1].split()[0])
    assert acked >= 1
    # systemd's status line follows the applied generation.
    agents.messages(f"STATUS=serving 2 listeners; generation {acked} applied", timeout=5)

    # A second agent on the same state directory refuses to start.
    second = agents.start()
    assert second.wait(timeout=20) != 0
    assert "already uses the state directory" in agents.logs[-1].read_text()
    assert first.poll() is None

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    agents.start()
    agents.messages("READY=1")

    info = node_info(agents, "--lab", str(agents.lab))
    assert int(info["desiredGeneration"]) >= acked
    assert info["maintenance"]["enabled"] is True
    assert info["maintenance"]["reason"] == "disk swap"
    events = agents.cli("--lab", str(agents.lab), "--json", "events").stdout.splitlines()
    parsed = [json.loads(line) for line in events]
    assert any(
        e["type"] == "EVENT_TYPE_CREATED" and e["kind"] == "RESOURCE_KIND_NODE"
        and int(e["generation"]) == acked
        for e in parsed
    ), parsed  # fmt: skip
    human = agents.cli("--lab", str(agents.lab), "events").stdout
    assert f"created node generation {acked}" in human


def test_sigterm_sends_stopping_and_exits_zero(agents):
    proc = agents.start()
    agents.messages("READY=1")
    os.kill(proc.pid, signal.SIGTERM)
    agents.messages("STOPPING=1", timeout=10)
    assert proc.wait(timeout=15) == 0
