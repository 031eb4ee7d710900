"""The agent's packet engine: reads the `[engine] ports` interfaces through AF_PACKET rings,
runs their frames through the engine with the host's policy, and keeps the per-tenant
counters the Metering service reads (`usage`).

Level-triggered like the reconcilers: each turn of its loop it looks at the network
reconciler's last compiled state and, when it changed, compiles the engine's tables and opens
or closes rings to match; a ring that cannot open (the interface is not there yet) is tried
again on the next change or every RETRY_S. It never forwards: the engine meters beside the
interfaces' own datapath.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import structlog

from agent.engine.policy import engine_state
from dataplane.compile.engine import compile_engine
from dataplane.engine import Engine
from dataplane.io.afpacket import RxRing
from dataplane.topology import HostState

log = structlog.get_logger(__name__)

POLL_S = 0.05  # per ring and turn: how long a quiet ring holds the loop
RETRY_S = 5.0


class EngineRunner:
    def __init__(self, ports: Mapping[str, str], state: Callable[[], HostState | None], *,
                 capacity: int = 8192) -> None:  # fmt: skip
        self._ports = dict(ports)
        self._state = state
        self._capacity = capacity
        self._engine: Engine | None = None
        self._rings: dict[str, tuple[RxRing, int]] = {}
        self._seen: HostState | None = None
        self._ofports: dict[str, int] = {}
        self._tried_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.problems: list[str] = []
        self.epoch = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for ring, _ in self._rings.values():
            ring.close()
        self._rings.clear()

    def usage(self) -> dict[str, np.ndarray]:
        """Per tenant id, the engine's counters since `epoch` (dataplane.engine.Engine.usage)."""
        return {} if self._engine is None else self._engine.usage()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_policy()
                if not self._rings:
                    self._stop.wait(POLL_S)
                for ring, ofport in list(self._rings.values()):
                    frames = ring.poll(POLL_S)
                    try:
                        self._engine.meter(frames, ofport)
                    finally:
                        ring.release()
            except Exception as e:  # keep metering: one bad turn must not end the thread
                log.exception("engine.turn_failed", error=str(e))
                self._stop.wait(RETRY_S)

    def _follow_policy(self) -> None:
        state = self._state()
        retry = time.monotonic() - self._tried_at > RETRY_S and len(self._rings) < len(self._ports)
        if state is None or (state is self._seen and not retry):
            return
        self._tried_at = time.monotonic()
        if state is not self._seen:
            with_ports, ofports, problems = engine_state(state, self._ports)
            tables = compile_engine(with_ports)
            if self._engine is None:
                self._engine = Engine(tables, capacity=self._capacity, write_frames=False)
                self.epoch = self._engine.epoch
            else:
                self._engine.load(tables)
            if problems != self.problems:
                for problem in problems:
                    log.error("engine.port_refused", problem=problem)
            self.problems, self._ofports, self._seen = problems, ofports, state
            log.info("engine.policy_loaded", tenants=len(tables.tenants), interfaces=len(ofports))
        for interface in set(self._rings) - set(self._ofports):
            self._rings.pop(interface)[0].close()
        for interface, ofport in self._ofports.items():
            if interface in self._rings:
                self._rings[interface] = (self._rings[interface][0], ofport)
            else:
                try:
                    self._rings[interface] = (RxRing(interface), ofport)
                    log.info("engine.ring_opened", interface=interface, ofport=ofport)
                except OSError as e:
                    log.warning("engine.ring_failed", interface=interface, error=str(e),
                                retry_s=RETRY_S)  # fmt: skip
