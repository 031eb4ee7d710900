"""The metering poller: reads every usage source every `poll_interval_s` and checkpoints what
they counted (Ledger.collect), so that a crash or a source's restart costs at most one interval
of counts. A thread of its own; the first read is at once (a new state directory's baseline)."""

from __future__ import annotations

import threading

import structlog

from agent.metering.ledger import Ledger

log = structlog.get_logger(__name__)


class Poller:
    def __init__(self, ledger: Ledger, interval_s: float) -> None:
        self._ledger = ledger
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metering-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                self._ledger.collect()
            except Exception:  # the store failed: the next round tries again
                log.exception("metering.poll_failed")
            if self._stop.wait(self._interval):
                return
