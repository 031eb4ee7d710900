# The two commands of the README. Each first makes the machine ready (scripts/setup.sh).
.PHONY: setup run test bench-classify bench-core bench-all

setup:
	@scripts/setup.sh

# The agent on a local default: lab certificates, config and state in ./lab (made once,
# reused after). It prints how to talk to it with `andromede`; Ctrl-C stops it.
run: setup
	.venv/bin/andromede-agent --lab lab

# The classifier on a ClassBench set, side by side with DPDK's ACL library.
bench-classify: setup
	.venv/bin/python -m bench classify --rules acl1_10k --peer dpdk

# The agent core: batch commits, reconcile passes, stream floods (about 5 s).
bench-core: setup
	.venv/bin/python -m bench core

test: setup
	.venv/bin/python -m pytest

bench-all: setup
	mkdir -p out
	.venv/bin/python -m bench classify --all --peer dpdk --json out/classify-all.json --png out/classify-all.png
