"""`andromede` (python -m agent.cli) against a real server on a real unix socket and a real
closed TCP port: errors carry the gRPC code, --json prints JSON."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent import pki, server
from agent.config import ServerConfig
from agent.store import FILENAME, Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@contextmanager
def serving(store: Store, path: Path) -> Iterator[str]:
    """A real server over `store`, plaintext on the unix socket `path` (the lab's local door)."""
    agent = server.start(ServerConfig(listen=(f"unix:{path}",), insecure_unix=True), store)
    try:
        yield str(path)
    finally:
        agent.stop(0)
        store.close()


@pytest.fixture
def unix_agent(tmp_path):
    (tmp_path / "state").mkdir()
    with serving(Store(tmp_path / "state" / FILENAME), tmp_path / "agent.sock") as path:
        yield path


def test_closed_port_exits_nonzero_with_the_code(tmp_path):
    certs = pki.lab_pki(tmp_path / "pki")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: nobody listens there
    done = cli(
        "--target", f"127.0.0.1:{port}", "--ca", str(certs.ca.cert),
        "--cert", str(certs.clients["operator"].cert), "--key", str(certs.clients["operator"].key),
        "--timeout", "5", "node", "info",
    )  # fmt: skip
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr
    assert done.stdout == ""


def test_bad_request_prints_invalid_argument_naming_the_field(unix_agent):
    done = cli("--unix", unix_agent, "node", "maintenance", "on", "--request-id", "-bad id")
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "request_id" in done.stderr


def test_usage_errors_exit_2():
    done = cli("--target", "127.0.0.1:1", "node", "info")
    assert done.returncode == 2
    assert "--ca" in done.stderr


def test_json_output_parses(unix_agent):
    info = json.loads(cli("--unix", unix_agent, "--json", "node", "info").stdout)
    assert info["storeId"] and info["hostname"]
    inventory = json.loads(cli("--unix", unix_agent, "--json", "node", "inventory").stdout)
    assert int(inventory["cpu"]["logicalCpus"]) >= 1
    reply = json.loads(
        cli("--unix", unix_agent, "--json", "node", "maintenance", "on", "--reason", "r").stdout
    )
    assert int(reply["generation"]) == 1 and reply["maintenance"]["enabled"] is True
    lines = cli("--unix", unix_agent, "--json", "events").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events and events[0]["type"] == "EVENT_TYPE_CREATED"


def test_events_prints_the_kept_events_after_old_ones_were_trimmed(tmp_path):
    """Without --cursor the CLI starts from the oldest event the agent keeps, however many
    were dropped before it: no OUT_OF_RANGE."""
    (tmp_path / "state").mkdir()
    store = Store(tmp_path / "state" / FILENAME, event_retention=10)
    for i in range(40):
        store.put("vm", f"vm-{i}", b"spec", f"r-{i}")
    assert store.oldest_cursor() > 0  # the first events are gone
    kept = [e.cursor for e in store.events_since(store.oldest_cursor())]
    with serving(store, tmp_path / "agent.sock") as path:
        done = cli("--unix", path, "--json", "events")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [int(e["sequence"]) for e in events] == kept
    assert events[-1]["objectId"] == "vm-39"


def test_events_follow_prints_new_events_as_they_come(unix_agent):
    follow = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--unix", unix_agent, "--json", "events", "--follow",
         "--now"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Keep setting the mode until the stream (started "from now") has seen one change.
        first = None
        for attempt in range(20):
            cli("--unix", unix_agent, "node", "maintenance", "on" if attempt % 2 else "off")
            ready, _, _ = select.select([follow.stdout], [], [], 0.5)
            if ready:
                first = json.loads(follow.stdout.readline())
                break
        assert first is not None, follow.stderr.read() if follow.poll() is not None else ""
        assert first["kind"] == "RESOURCE_KIND_NODE" and int(first["generation"]) >= 1
        assert follow.poll() is None  # --follow keeps going
    finally:
        if follow.poll() is None:
            os.kill(follow.pid, signal.SIGKILL)
        follow.wait(timeout=10)
