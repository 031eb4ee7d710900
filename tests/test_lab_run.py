"""The lab as `make run` starts it (`python -m agent.lab`), and the `andromede` CLI against it.

What is proved, on real OVS daemons in network namespaces with real packets: `--once` builds
two hosts, applies the two tenants over gRPC, sees every ping as expected with no leak, exits
0, and leaves no namespace, directory or process of its lab behind; run twice in a row, it
works twice (with two different prefixes). Then, on a lab built in this process, the real CLI
(`python -m agent.cli` as a subprocess) reads a host back: `port list --json` prints one
record per line with the ports the control plane put, `network get` a human listing, `l2 list`
over `--unix` with explicit TLS files a table, and an unknown id the gRPC code. Last, run in
this process with a part broken on purpose: a leaking ping makes it print FAIL and exit 1, an
agent that does not come up fails the run; either way nothing of the lab is left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from agent.lab.agents import LabAgent
from agent.lab.hosts import Lab, missing_tools
from agent.lab.scenario import Scenario

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
_HEADER = re.compile(r"^lab (an[0-9a-f]{4}): 2 hosts on the underlay \S+, state in (\S+)$")
_PING = re.compile(r"^(blue|red)\s+(h\d)\s+(h\d)\s+reply\s+(\d)/3\s+\S+\s+(\d+)\s+(yes|NO)$")


def _need_the_real_parts() -> None:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces, veths, OVS)", pytrace=False)
    if missing_tools():
        pytest.fail(f"the lab needs {missing_tools()}: run scripts/setup.sh", pytrace=False)


def _left_behind(prefix: str, root: str) -> list[str]:
    """Whatever of the lab `prefix` (state in `root`) is still on the machine."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
    left = [line for line in namespaces.splitlines() if line.startswith(f"{prefix}-")]
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        try:  # a VM's QEMU names no lab path: it holds its serial log open instead
            files = " ".join(f.path for f in proc.open_files())
        except psutil.Error:
            files = ""
        ours = root in cmdline or f"{prefix}-" in cmdline or root in files
        if ours and proc.info["status"] != psutil.STATUS_ZOMBIE:
            left.append(f"process {proc.pid}: {cmdline}")
    return left + ([f"directory {root}"] if Path(root).exists() else [])


def test_lab_once_passes_every_check_and_leaves_nothing_twice_in_a_row():
    _need_the_real_parts()
    prefixes = []
    for run in (1, 2):
        done = subprocess.run([sys.executable, "-m", "agent.lab", "--once", "--hosts", "2"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"run {run}:\n{done.stdout}\n{done.stderr}"
        lines = done.stdout.splitlines()
        header = _HEADER.match(lines[0])
        assert header, done.stdout
        prefix, root = header.groups()
        pings = [m.groups() for line in lines if (m := _PING.match(line))]
        assert sorted((t, a, b) for t, a, b, *_ in pings) == [
            ("blue", "h1", "h2"), ("blue", "h2", "h1"), ("red", "h1", "h2"), ("red", "h2", "h1")]
        assert all(int(seen) > 0 and leaked == "0" and ok == "yes"
                   for *_, seen, leaked, ok in pings), done.stdout  # fmt: skip
        assert lines[-1].startswith("PASS: 4 of 4 pings"), done.stdout
        assert "22 of 22 objects applied" in lines[-1]
        assert f"lab {prefix} removed" in done.stderr
        assert _left_behind(prefix, root) == []
        prefixes.append(prefix)
    assert prefixes[0] != prefixes[1]


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    _need_the_real_parts()
    built = Scenario.build(Lab(), hosts=2)  # removes what it made if it fails
    try:
        built.apply()
        yield built
    finally:
        built.close()
    assert _left_behind(built.lab.prefix, str(built.lab.root)) == []


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_cli_lists_a_lab_hosts_ports_as_json_lines(scenario):
    done = cli("--lab", str(scenario.agents["h1"].dir), "--json", "port", "list")
    assert done.returncode == 0, done.stderr
    ports = {p["spec"]["id"]: p for p in map(json.loads, done.stdout.splitlines())}
    local = {v.port_id: v.vm for v in scenario.vms if v.host == "h1"}
    assert set(ports) == set(local) == {"blue-h1", "red-h1"}
    for port_id, vm in local.items():
        spec = ports[port_id]["spec"]
        assert (spec["mac"], spec["fixedIps"], spec["tap"]["interfaceName"]) == (
            vm.mac, [vm.ip], vm.host_ifname)
        assert ports[port_id]["status"]["state"] == "APPLY_STATE_APPLIED"


def test_cli_gets_a_network_and_lists_l2_entries_over_a_tls_unix_socket(scenario):
    h1 = scenario.agents["h1"]
    done = cli("--lab", str(h1.dir), "network", "get", "net-blue")
    assert done.returncode == 0, done.stderr
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in done.stdout.splitlines())
    assert (fields["id"], fields["tenant"], fields["vni"], fields["mtu"], fields["state"]) == (
        "net-blue", "blue", "1001", "1450", "applied")

    pki = scenario.lab.root / "pki"
    tls = ["--ca", str(pki / "ca.pem"), "--cert", str(pki / "operator.pem"),
           "--key", str(pki / "operator.key")]  # fmt: skip
    done = cli("--unix", str(h1.socket), *tls, "l2", "list")
    assert done.returncode == 0, done.stderr
    header, *rows = (line.split() for line in done.stdout.splitlines())
    assert header == ["id", "network", "mac", "ips", "endpoint", "state", "message"]
    assert [(r[0], r[1], r[4], r[5]) for r in rows] == [
        ("blue-h2", "net-blue", "h2", "applied"), ("red-h2", "net-red", "h2", "applied")]


def test_cli_traces_a_packet_and_lists_a_ports_flows(scenario):
    h1 = str(scenario.agents["h1"].dir)
    target = next(v.vm for v in scenario.vms if v.host == "h2" and v.tenant == "blue")
    done = cli("--lab", h1, "trace", "blue-h1", target.ip, "--protocol", "tcp", "--port", "22")
    assert done.returncode == 0, done.stderr
    verdict, tables = done.stdout.splitlines()[:2]
    assert verdict == f"tunnelled to {scenario.lab.hosts['h2'].underlay_ip}"
    assert tables.startswith("tables: classify -> spoof -> arp -> egress")
    done = cli("--lab", h1, "trace", "blue-h1", target.ip, "--src-ip", "198.51.100.99")
    assert done.stdout.splitlines()[:2] == ["dropped", "tables: classify -> spoof"]
    done = cli("--lab", h1, "--json", "flows", "--tenant", "red")
    assert done.returncode == 0, done.stderr
    flows = [json.loads(line) for line in done.stdout.splitlines()]
    assert flows and {f["tenantId"] for f in flows} == {"red"}
    done = cli("--lab", h1, "flows", "--port", "blue-h1")
    assert done.stdout.splitlines()[0].split() == ["table", "prio", "tenant", "packets", "match",
                                                   "actions"]  # fmt: skip
    assert len(done.stdout.splitlines()) > 10


def test_cli_prints_the_grpc_code_for_an_unknown_port(scenario):
    done = cli("--lab", str(scenario.agents["h2"].dir), "port", "get", "nope")
    assert done.returncode == 1
    assert done.stderr.startswith("andromede: NOT_FOUND:") and "nope" in done.stderr
    assert done.stdout == ""


def _verdicts(out: str) -> list[str]:
    """The summary's last line (this process's structlog, left as it is, prints here too)."""
    return [line for line in out.splitlines() if line.startswith(("PASS:", "FAIL:"))]


def _run_in_process(monkeypatch, capsys, break_it) -> tuple[int, str, str, list[Lab]]:
    """`python -m agent.lab --once` in this process, with `break_it(monkeypatch)` applied;
    returns its exit status, stdout, stderr and the Lab it made."""
    from agent.lab import __main__ as lab_main

    made: list[Lab] = []

    def new_lab() -> Lab:
        made.append(Lab())
        return made[-1]

    monkeypatch.setattr(lab_main, "Lab", new_lab)
    # Leave this process's logging as the other tests expect it (the run would set warning).
    monkeypatch.setattr(lab_main.logs, "configure", lambda *args, **kwargs: "json")
    break_it(monkeypatch)
    code = lab_main.main(["--once", "--hosts", "2"])
    out, err = capsys.readouterr()
    return code, out, err, made


def test_a_failed_check_exits_1_and_still_removes_the_lab(monkeypatch, capsys):
    _need_the_real_parts()
    real_pings = Scenario.pings

    def leaking_pings(self, count: int = 3):  # as if one ping had reached the other tenant
        first, *rest = real_pings(self, count)
        return [replace(first, leaked=1), *rest]

    code, out, err, (lab,) = _run_in_process(
        monkeypatch, capsys, lambda m: m.setattr(Scenario, "pings", leaking_pings))
    assert code == 1, err
    assert _verdicts(out) == ["FAIL: 3 of 4 pings as expected (no leak between tenants), "
                              "22 of 22 objects applied"], out  # fmt: skip
    assert _left_behind(lab.prefix, str(lab.root)) == []


def test_an_agent_that_does_not_come_up_fails_the_run_and_leaves_nothing(monkeypatch, capsys):
    _need_the_real_parts()
    real_start = LabAgent.start

    def start(self, timeout: float = 30.0) -> None:
        real_start(self, timeout)  # h1's agent keeps running: the teardown must stop it
        if self.host.name == "h2":
            raise RuntimeError("the agent on h2 did not come up (a test's stand-in failure)")

    code, out, err, (lab,) = _run_in_process(
        monkeypatch, capsys, lambda m: m.setattr(LabAgent, "start", start))
    assert code == 1
    assert "failed: the agent on h2 did not come up" in err
    assert _verdicts(out) == []  # no summary
    assert _left_behind(lab.prefix, str(lab.root)) == []
