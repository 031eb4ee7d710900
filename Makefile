# The two commands of the README. Each first makes the machine ready (scripts/setup.sh).
.PHONY: setup run test bench-all

setup:
	@scripts/setup.sh

# The agent's main job on a local default. Until the agent lands (issue 3), that is the
# classifier on a ClassBench set, side by side with DPDK's ACL library.
run: setup
	.venv/bin/python -m bench classify --rules acl1_10k --peer dpdk

test: setup
	.venv/bin/python -m pytest

bench-all: setup
	mkdir -p out
	.venv/bin/python -m bench classify --all --peer dpdk --json out/classify-all.json --png out/classify-all.png
