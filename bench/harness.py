"""What the lab benchmarks (network, compute) share: their error, their median, and a SIGTERM
that unwinds through every clean-up like Ctrl-C."""

from __future__ import annotations

import signal
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from agent.lab.hosts import in_this_process_only


class BenchError(RuntimeError):
    """The bench could not measure what it promises; the message says what and why."""


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in this process, so the lab's
    clean-ups run; a fork (pyroute2 forks to enter namespaces) dies of it plainly instead of
    unwinding a copy of the bench's stack."""

    def interrupt(signum: int) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, in_this_process_only(interrupt))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
