"""What the lab benchmarks (network, compute) share: their error, their median, and a SIGTERM
that unwinds through every clean-up like Ctrl-C."""

from __future__ import annotations

import os
import signal
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class BenchError(RuntimeError):
    """The bench could not measure what it promises; the message says what and why."""


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in this process, so the lab's
    clean-ups run; a fork (pyroute2 forks to enter namespaces) dies of it plainly instead of
    unwinding a copy of the bench's stack."""
    owner = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
