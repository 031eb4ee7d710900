"""The engine benchmark's peer side: its shared inputs (bench/engine_policy.py) and a short
real run of each peer (bench/ovs_dpdk.py): OVS's DPDK datapath and dpdk-testpmd, fed a pcap
of those frames, on one core. No timing thresholds: a run must forward packets, and OVS's
verdict on the frames must be the one the policy gives (output to the receiver, ofport 2)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import engine_policy
from bench.engine_policy import RECEIVER_OFPORT, SENDER_OFPORT, frames, security_group_state
from bench.ovs_dpdk import DPDK_RUNDIR, run_ovs_dpdk, run_testpmd
from dataplane.compile.openflow import compile_host
from dataplane.io.pcap import read_pcap, write_pcap
from dataplane.policy import Invalid

pytestmark = pytest.mark.integration

TUPLES = 64


@pytest.fixture(scope="module")
def state():
    return security_group_state(rules=1000)


@pytest.fixture(scope="module")
def pcap(state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("peer") / "frames.pcap"
    write_pcap(path, frames(state, TUPLES * 4, TUPLES))
    return path


def core() -> int:
    """The PMD's core: the highest this process may use (testpmd's main thread takes another)."""
    return max(os.sched_getaffinity(0))


def leftovers() -> list[str]:
    """Whatever a peer run names after its prefix and failed to remove."""
    found = [str(p) for p in Path("/tmp").glob("andr-peer-*")]
    found += [str(p) for p in DPDK_RUNDIR.glob("andr-*")] if DPDK_RUNDIR.is_dir() else []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return found + [n.split()[0] for n in names.splitlines() if n.startswith("andr-peer-")]


# --- the shared inputs ---------------------------------------------------------------------


def test_the_policy_is_stateless_metered_and_as_large_as_asked(state) -> None:
    pipeline = compile_host(state)
    assert not [f for f in pipeline.flows if "ct(" in f.actions], "a stateless group must not call conntrack"
    assert len(pipeline.meters) == 1 and any("meter:" in f.actions for f in pipeline.flows)
    receiver = state.ports[engine_policy.RECEIVER]
    rules = [r for g in receiver.security_group_ids for r in state.security_groups[g].rules]
    assert len(rules) == 1000 and len(set(rules)) == 1000
    assert all(not state.security_groups[g].stateful for g in state.security_groups)
    assert {state.plugged[engine_policy.SENDER].ofport, state.plugged[engine_policy.RECEIVER].ofport} == {1, 2}
    ranges = [r for r in rules if r.port_range_min is not None and r.port_range_min != r.port_range_max
              and not r.is_icmp]  # fmt: skip
    assert any((r.port_range_max - r.port_range_min + 1) & (r.port_range_max - r.port_range_min) for r in ranges)
    assert {r.remote_cidr.prefixlen for r in rules if r.remote_cidr} >= {16, 24, 32}
    assert any(r.remote_group_id for r in rules)
    test_nets = [ipaddress.ip_network(n) for n in ("198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24")]
    assert all(any(r.remote_cidr.subnet_of(n) for n in test_nets) for r in rules if r.remote_cidr)
    assert security_group_state(rules=1000) == state  # deterministic
    big = security_group_state(rules=2500, tenants=3)
    assert len(big.ports[engine_policy.RECEIVER].security_group_ids) == 3 and len(big.rate_limits) == 3


def test_frames_have_exactly_the_distinct_tuples_asked_and_pass_anti_spoofing(state) -> None:
    batch = frames(state, 10_000, 1024, size=64)
    assert len(batch) == 10_000 and set(batch.lengths.tolist()) == {60}  # 64 on the wire, FCS off
    rows = batch.buf.reshape(len(batch), 60)
    assert (rows[:, 0:6] == [0xFA, 0x16, 0x3E, 0, 0, 2]).all()  # to the receiver's MAC
    assert (rows[:, 6:12] == [0xFA, 0x16, 0x3E, 0, 0, 1]).all()  # from the sender's
    assert (rows[:, 26:28] == [198, 18]).all()  # the sender's /16
    assert (rows[:, 30:34] == [198, 19, 0, 2]).all()  # the receiver's fixed IP
    five = {bytes(r[23:24]) + bytes(r[26:38]) for r in rows}
    assert len(five) == 1024
    assert np.array_equal(frames(state, 10_000, 1024).buf, batch.buf)  # deterministic
    assert len(set(frames(state, 300, 300, size=1518).lengths.tolist())) == 1
    with pytest.raises(Invalid, match="size"):
        frames(state, 10, 10, size=63)


# --- the peers, for real -------------------------------------------------------------------


def test_ovs_dpdk_forwards_the_pcap_through_the_compiled_flows(state, pcap) -> None:
    pipeline = compile_host(state)
    result = run_ovs_dpdk(pcap, pipeline.flows, pipeline.meters, seconds=2, core=core(),
                          distinct_tuples=TUPLES, trace_frames=TUPLES)  # fmt: skip
    assert result["trace_outputs"] == [RECEIVER_OFPORT]
    assert "meter(" in result["trace_datapath_actions"]
    assert result["trace_verdicts"] == {f"output:{RECEIVER_OFPORT}": TUPLES}  # every distinct tuple
    assert result["mpps"] > 0 and result["tx_mpps"] > 0 and result["rx_packets"] > 0
    assert result["flows"] == len(pipeline.flows) and result["megaflows"] > 0
    assert result["distinct_tuples"] == TUPLES and result["pcap_frames"] == len(read_pcap(pcap))
    assert SENDER_OFPORT == 1
    assert not leftovers()


def test_testpmd_forwards_the_pcap_to_the_null_port(pcap) -> None:
    result = run_testpmd(pcap, seconds=2, core=core())
    assert result["mpps"] > 0 and result["rx_packets"] > 0
    assert not leftovers()
