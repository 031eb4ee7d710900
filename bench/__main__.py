"""`python -m bench <name> ...`: run one benchmark; each bench module adds its own subcommand."""

from __future__ import annotations

import argparse
import sys

from bench import classify, compute, core, engine, network

BENCHES = (classify, core, network, compute, engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Andromède benchmarks")
    commands = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for bench in BENCHES:
        bench.register(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
