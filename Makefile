# The two commands of the README. Each first makes the machine ready (scripts/setup.sh).
.PHONY: setup run run-agent test bench-classify bench-core bench-network bench-compute bench-engine bench-all

setup:
	@scripts/setup.sh

# The lab (python -m agent.lab, as root): HOSTS simulated hosts (network namespaces, each with
# its own Open vSwitch and andromede-agent, and stand-in VMs of two tenants), set up over gRPC
# as a control plane would, then pings across hosts. It prints a summary and how to explore the
# lab with `andromede`, stays up until Ctrl-C, and removes everything on the way out.
# `make run HOSTS=3`; `make run ARGS=--once` exits after the summary (0 only if every check
# passed); ARGS=--verbose shows the lab's logs.
HOSTS ?= 2
run: setup
	.venv/bin/python -m agent.lab --hosts $(HOSTS) $(ARGS)

# One agent alone, without OVS (its Node service): certificates, config and state in ./lab
# (made once, reused after). It prints how to talk to it with `andromede`; Ctrl-C stops it.
run-agent: setup
	.venv/bin/andromede-agent --lab lab

# The classifier on a ClassBench set, side by side with DPDK's ACL library.
bench-classify: setup
	.venv/bin/python -m bench classify --rules acl1_10k --peer dpdk

# The agent core: batch commits, reconcile passes, stream floods (about 5 s).
bench-core: setup
	.venv/bin/python -m bench core

# Tenant networks on one simulated host (root): 1,000 ports bound through the gRPC API with
# Neutron-like security groups on real OVS, then kill -9 of the agent under a flood ping and of
# ovs-vswitchd. NETWORK_ARGS="--scale --png out/network-scale.png" for 100..2,000 ports;
# add --preplug to put the interfaces on br-int before PutPorts (os-vif style).
NETWORK_ARGS ?= --ports 1000
bench-network: setup
	mkdir -p out
	.venv/bin/python -m bench network $(NETWORK_ARGS) --json out/network.json

# VMs on one simulated host (root): 1, 4 and 8 test guests (TCG) booted through the agent's
# gRPC API, each beside the same QEMUs started by hand; the agent's overhead, when the ports
# are wired, its idle CPU and memory (a few minutes). COMPUTE_ARGS="--vms 1,2 --runs 1".
COMPUTE_ARGS ?= --vms 1,4,8 --runs 3
bench-compute: setup
	mkdir -p out
	.venv/bin/python -m bench compute $(COMPUTE_ARGS) --json out/compute.json

# The packet engine per stage and end to end, beside OVS-DPDK and dpdk-testpmd (about 5 minutes).
bench-engine: setup
	mkdir -p out
	.venv/bin/python -m bench engine --peer ovs-dpdk --json out/engine.json --png out/engine.png

test: setup
	.venv/bin/python -m pytest

bench-all: setup
	mkdir -p out
	.venv/bin/python -m bench classify --all --peer dpdk --json out/classify-all.json --png out/classify-all.png
	.venv/bin/python -m bench compute --json out/compute.json
