"""The userspace packet engine: one host's policy, its meters and its per-tenant counters,
and batches of frames through the jitted pipeline (kernels/engine.py).

    engine = Engine(compile_engine(state))
    out = engine.process(frames, in_ports)     # verdict, out_port, colour (and frames out)
    engine.load(compile_engine(new_state))      # a new policy; meters and counters carry over
    engine.usage()                              # {tenant id: counters (2 directions, 8)}

Threads: `process` runs in one thread at a time (the one reading frames); `load` and `usage`
may come from any other. The policy is swapped between batches under a lock that `process`
takes once per batch, so a batch sees one policy from its first frame to its last.

Counters are cumulative from the engine's start (`epoch` names that start: a new engine,
a new epoch). A tenant that leaves the policy keeps its counts; one that comes back goes on
from them. Meters keep their buckets across loads unless their parameters change.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from dataplane.compile.engine import EngineTables
from dataplane.frames import Frames
from dataplane.kernels import engine as k
from dataplane.kernels.parse import PARSED_COLS, VXLAN_PORT
from dataplane.meters import meter_arrays, set_meter
from dataplane.policy import Invalid


@dataclass(frozen=True, slots=True)
class Underlay:
    """What VXLAN encapsulation writes in the outer headers."""

    ip: int  # this host's IPv4 address
    mac: int
    gateway_mac: int  # the next hop's MAC on the underlay


class Engine:
    def __init__(self, tables: EngineTables, *, capacity: int = 1024, write_frames: bool = True,
                 max_frame: int = 9216, vxlan_port: int = VXLAN_PORT, underlay: Underlay | None = None,
                 now_ns: int | None = None, cache_rows: int = 1 << 17) -> None:  # fmt: skip
        if not 1 <= capacity <= 1 << 20:
            raise Invalid("capacity", f"must be 1..{1 << 20} frames per batch, got {capacity}")
        self.capacity = capacity
        self.max_frame = max_frame
        self.vxlan_port = vxlan_port
        self.epoch = uuid.uuid4().hex
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._underlay = np.zeros(3, np.int64)
        if underlay is not None:
            self._underlay[:] = (underlay.ip, underlay.mac, underlay.gateway_mac)
        if cache_rows & (cache_rows - 1):
            raise Invalid("cache_rows", f"must be 0 (no cache) or a power of two, got {cache_rows}")
        self._scratch = k.Scratch(np.zeros(PARSED_COLS, np.uint32), np.zeros(5, np.uint32), np.zeros(8, np.uint32),
                                  np.zeros((cache_rows, k.CACHE_COLS), np.uint32))  # fmt: skip
        self._generation = 0  # of the policy, for the verdict cache
        out_bytes = capacity * (max_frame + k.VXLAN_OVERHEAD) if write_frames else 0
        self._out = k.Outputs(np.zeros(capacity, np.int8), np.zeros(capacity, np.int64), np.zeros(capacity, np.int8),
                              np.zeros(out_bytes, np.uint8), np.zeros(capacity, np.int64), np.zeros(capacity, np.int64))  # fmt: skip
        self._retired: dict[str, np.ndarray] = {}  # counts of tenants no longer in the policy
        self._tables: EngineTables | None = None
        self._counters = np.zeros((0, 2, k.COUNTER_COLS), np.uint64)
        self._meters = meter_arrays([])
        self.load(tables, now_ns)

    @property
    def tables(self) -> EngineTables:
        return self._tables

    def load(self, tables: EngineTables, now_ns: int | None = None) -> None:
        """Use `tables` from the next batch on, carrying each tenant's counters and meter
        buckets over by tenant id. Times are on the frames' clock (`Frames.times_ns`: the
        real-time clock for live rings, the capture's for pcap files), now by default."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            old = self._tables
            counters = np.zeros((len(tables.tenants), 2, k.COUNTER_COLS), np.uint64)
            meters = meter_arrays(tables.meters, now_ns)
            before = {} if old is None else {t: i for i, t in enumerate(old.tenants)}
            for i, tenant in enumerate(tables.tenants):
                if tenant in before:
                    j = before[tenant]
                    counters[i] = self._counters[j]
                    for d in range(2):
                        meters.state[2 * i + d] = self._meters.state[2 * j + d]
                        meters.config[2 * i + d] = self._meters.config[2 * j + d]
                        set_meter(meters, 2 * i + d, tables.meters[2 * i + d], now_ns)
                elif tenant in self._retired:
                    counters[i] = self._retired.pop(tenant)
            for tenant, j in before.items():
                if tenant not in tables.tenants:
                    self._retired[tenant] = self._counters[j].copy()
            self._tables, self._counters, self._meters = tables, counters, meters
            self._generation += 1
            if self._generation >= 1 << 28:  # the stamp's bits: start the cache afresh
                self._scratch.cache[:] = 0
                self._generation = 1

    def process(self, frames: Frames, in_ports: np.ndarray | int) -> k.Outputs:
        """Run a batch (at most `capacity` frames) through the pipeline. `in_ports` is the
        ofport each frame came in on (one for all, or one per frame). The outputs are views
        of the engine's own arrays: valid until the next call."""
        n = len(frames)
        if n > self.capacity:
            raise Invalid("frames", f"a batch holds at most {self.capacity} frames, got {n}")
        if n and int(frames.lengths.max()) > self.max_frame:
            raise Invalid("frames", f"a frame is longer than max_frame ({self.max_frame} bytes)")
        ports = np.full(n, in_ports, np.int64) if np.isscalar(in_ports) else np.asarray(in_ports, np.int64)
        if len(ports) != n:
            raise Invalid("in_ports", f"one per frame ({n}) or one for all, got {len(ports)}")
        with self._lock:
            written = k.process(self._tables.arrays, self._meters, self._counters, frames.buf, frames.offsets,
                                frames.lengths, frames.times_ns, ports, self.vxlan_port, self._underlay,
                                self._scratch, self._generation, self._out)  # fmt: skip
        out = self._out
        return k.Outputs(out.verdict[:n], out.out_port[:n], out.colour[:n], out.out_buf[:written],
                         out.out_offsets[:n], out.out_lengths[:n])  # fmt: skip

    def meter(self, frames: Frames, in_ports: np.ndarray | int) -> None:
        """`process` for any number of frames, `capacity` at a time, for their counters only."""
        ports = np.full(len(frames), in_ports, np.int64) if np.isscalar(in_ports) else np.asarray(in_ports, np.int64)
        for start in range(0, len(frames), self.capacity):
            stop = min(start + self.capacity, len(frames))
            self.process(frames.batch(start, stop), ports[start:stop])

    def usage(self) -> dict[str, np.ndarray]:
        """Counters per tenant id (uint64 (2, COUNTER_COLS): METER_EGRESS/METER_INGRESS rows,
        kernels.engine's counter columns), for every tenant seen since the engine started."""
        with self._lock:
            usage = {t: c.copy() for t, c in self._retired.items()}
            usage.update({t: self._counters[i].copy() for i, t in enumerate(self._tables.tenants)})
        return usage
