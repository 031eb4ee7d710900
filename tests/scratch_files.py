"""A reconciler over a real resource a test can observe: files in a scratch directory.

Kind "scratch_file": object id = file name, spec = the file's contents. It observes the
directory on every pass (never what it did last time), writes what is missing or different and
removes what is there but not desired: the level-triggered contract of agent/reconcile.py,
until the network and compute reconcilers exist. `prune_delay_s` holds each removal back, so a
test can watch the ack while a deletion is under way.

Run as a program it is a small host process over a real store file (tests/test_reconcile.py):

    python -m tests.scratch_files STATE_DIR SCRATCH_DIR [put ID TEXT | delete ID]... [hold]

It commits each change (printing `COMMITTED <generation>`); then with `hold` it prints `HELD`
and waits to be killed, without reconciling; otherwise it runs passes until one acks, prints
`ACKED <generation>` and exits 0.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from agent.reconcile import Desired, Engine, Key, Outcome, Work
from agent.store import FILENAME, Store

KIND = "scratch_file"


class ScratchFiles:
    kinds = (KIND,)

    def __init__(self, directory: Path, prune_delay_s: float = 0.0) -> None:
        self.directory = directory
        self.prune_delay_s = prune_delay_s

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        outcomes = {}
        for id, obj in desired[KIND].items():
            path = self.directory / id
            if path.exists() and path.read_bytes() == obj.spec:
                outcomes[(KIND, id)] = Outcome("up to date")
            else:
                tmp = path.with_name(f".{id}.tmp")
                tmp.write_bytes(obj.spec)
                tmp.replace(path)
                outcomes[(KIND, id)] = Outcome("written")
            work.progress()
        return outcomes

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        outcomes = {}
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or path.name in desired[KIND]:
                continue
            time.sleep(self.prune_delay_s)
            path.unlink()
            outcomes[(KIND, path.name)] = Outcome("removed")
            work.progress()
        return outcomes


def main(argv: list[str]) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: protocol
    state_dir, scratch, *ops = argv
    store = Store(Path(state_dir) / FILENAME)
    n = 0
    while n < len(ops):
        op = ops[n]
        if op == "put":
            accepted = store.put(KIND, ops[n + 1], ops[n + 2].encode(), f"put-{os.getpid()}-{n}")
            n += 3
        elif op == "delete":
            accepted = store.delete(KIND, ops[n + 1], f"delete-{os.getpid()}-{n}")
            n += 2
        elif op == "hold":
            print("HELD", flush=True)
            time.sleep(3600)
            return 1
        else:
            raise SystemExit(f"unknown op {op!r}")
        print(f"COMMITTED {accepted.generation}", flush=True)
    delay = float(os.environ.get("SCRATCH_PRUNE_DELAY_S", "0"))
    engine = Engine(store, [ScratchFiles(Path(scratch), delay)])
    while not (summary := engine.run_pass()).acked:
        time.sleep(0.05)
    print(f"ACKED {summary.generation}", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
