"""The usage ledger: per-tenant traffic totals that only grow, folded from sources' counters and
checkpointed in the store, so that billing can trust them across crashes and restarts.

Where data comes from and where it goes: a `Source` (OVS flow and meter statistics,
agent/metering/ovs.py; later the userspace engine) reports a `Snapshot`: every counter it
has, each cumulative, with the source's `epoch` (an id of its instance: it changes when the
source restarts and its counters start again from zero). `fold` turns a snapshot into deltas
and adds them to the totals of each counter's `Account` (tenant, direction, measure); the
totals and the last value of every counter are written to the store in one transaction
(`Store.save_usage`). `usage()` turns the totals into what the Metering service reports.

Accounting, per counter key of a source:

    delta = value - last value folded         same epoch, and the value did not go back
    delta = value                             a new key, a new epoch, or the value went back
                                              (the counter was reset or replaced)

A source's first snapshot ever (a new state directory, or a new source) is a baseline: its
values are remembered, not counted, since they count from before `counting_since`. A key
the source no longer reports is dropped; if it comes back it counts from zero.

What can be lost, and how it shows (the guarantee written in proto/andromede/v1/metering.proto):

- A crash between a read and its checkpoint loses nothing while the counters survive (the
  agent alone restarted): the checkpointed totals and last values are older together, and the
  next read counts the difference once.
- Counts a source made after its last read and then lost itself are lost: an OVS restart
  (new epoch), a flow deleted or a counter reset by someone else (a key vanished or went back
  without `forget`). The agent's own deletions are folded first (`forget`, after a read right
  before they are applied), so what it loses there is the read-to-apply window (milliseconds)
  and packets not yet in the flow statistics at the read (OVS pushes datapath statistics to
  flows about every 0.5 s; they go to whatever flow the packet matches afterwards). So a loss
  is bounded by the poll interval plus about half a second. Each one is logged
  (`metering.counts_lost`, with the source, why, the keys and the seconds since their last
  read) and counted in `lost_windows`, checkpointed with the totals.
- Nothing is counted twice: a delta is taken only against the value it was last folded from,
  and the totals and those values are always written together.

Passed packets of a direction are PASSED + (OFFERED - OFFERED_DROPPED): OVS counts ingress
at the flow whose action is the tenant's meter, so those flows see the dropped packets too,
and the meter's drops are read after the flows (so the difference never overshoots). Flow
statistics lag the meter's, so that difference can dip for a moment; what is reported never
goes down (`_reported`, checkpointed too).

Threads: one lock around every fold and read of the totals. The reconciler holds it (through
`holding`) from the read right before it changes flows to the end of the change, so no other
read can fall between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import structlog

from agent.store import UsageCheckpoint
from dataplane.topology import Direction

log = structlog.get_logger(__name__)

COLLECT_WAIT_S = 2.0  # a fresh read waits this long for a change in progress, then answers older


class Measure(Enum):
    """What a counter counts, for one tenant and direction."""

    PASSED = "passed"  # packets that passed (after the groups and the rate limit)
    OFFERED = "offered"  # packets that reached the rate limit: passed + OFFERED_DROPPED
    OFFERED_DROPPED = "offered_dropped"  # the rate limit's drops among OFFERED
    DROPPED = "dropped"  # the rate limit's drops of packets that PASSED counts after it


REPORTED = "reported"  # the measure of the floors of reported passed counts, in the store


@dataclass(frozen=True, slots=True)
class Account:
    tenant_id: str
    direction: Direction
    measure: Measure


@dataclass(frozen=True, slots=True)
class Reading:
    """One cumulative counter of a source. `account` None: the source no longer knows whose it
    is (the ledger keeps the account it was last folded into)."""

    key: str
    account: Account | None
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every counter of a source at one read, and the source's instance then."""

    epoch: str
    readings: Sequence[Reading]
    read_at: float  # Unix time of the read


class Source(Protocol):
    """Something that counts traffic per tenant (agent/metering/ovs.py)."""

    name: str  # stored with its counters: never change it

    def read(self) -> Snapshot:
        """Every counter, now. Raises if the source cannot be read (it is retried later)."""
        ...


class Checkpoints(Protocol):
    """Where the ledger keeps its state (agent/store.py's Store)."""

    def usage_checkpoint(self) -> UsageCheckpoint: ...

    def save_usage(self, *, totals: Sequence = (), seen: Sequence = (), forgotten: Sequence = (),
                   sources: Sequence = (), lost_windows: int | None = None) -> None: ...  # fmt: skip


@dataclass(frozen=True, slots=True)
class Counters:
    """One tenant's traffic in one direction, as reported."""

    packets: int = 0
    bytes: int = 0
    meter_dropped_packets: int = 0
    meter_dropped_bytes: int = 0


@dataclass(frozen=True, slots=True)
class TenantUsage:
    tenant_id: str
    ingress: Counters
    egress: Counters


@dataclass(frozen=True, slots=True)
class _Seen:
    account: Account
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class _SourceState:
    epoch: str
    read_at: float


class Ledger:
    """The totals of one host, over the store `checkpoints`. Thread-safe."""

    def __init__(self, checkpoints: Checkpoints, *, clock: Callable[[], float] = time.time) -> None:
        self._store = checkpoints
        self._clock = clock
        self._lock = threading.RLock()
        self._sources: list[Source] = []
        stored = checkpoints.usage_checkpoint()
        self.counting_since = stored.counting_since
        self.lost_windows = stored.lost_windows
        self._totals: dict[Account, list[int]] = {}
        self._reported: dict[tuple[str, Direction], list[int]] = {}
        for tenant, direction, measure, packets, nbytes in stored.totals:
            if measure == REPORTED:
                self._reported[(tenant, Direction(direction))] = [packets, nbytes]
            else:
                self._totals[Account(tenant, Direction(direction), Measure(measure))] = [packets, nbytes]
        self._seen: dict[str, dict[str, _Seen]] = {}
        for source, key, tenant, direction, measure, packets, nbytes in stored.seen:
            account = Account(tenant, Direction(direction), Measure(measure))
            self._seen.setdefault(source, {})[key] = _Seen(account, packets, nbytes)
        self._state = {name: _SourceState(epoch, read_at) for name, epoch, read_at in stored.sources}

    def attach(self, source: Source) -> None:
        """Read `source` from now on (its name must be new to this ledger's process)."""
        with self._lock:
            if any(s.name == source.name for s in self._sources):
                raise ValueError(f"source {source.name!r} is attached already")
            self._sources.append(source)

    # --- reading the sources -------------------------------------------------------------

    @contextmanager
    def holding(self) -> Iterator[None]:
        """The ledger's lock: no fold or report happens while it is held (a reconciler holds it
        from its last read of a source to the end of the change it makes)."""
        with self._lock:
            yield

    def collect(self, *, fresh: bool = False, wait: float | None = None) -> float:
        """Read every source and fold what it reports. `fresh`: a source read after this call
        began (by a concurrent caller) is not read again. Waits at most `wait` seconds (None:
        as long as it takes) for a change in progress, then answers without reading. A source
        that cannot be read keeps its older counts (logged). Returns when the counters were
        read: the oldest of the sources' last reads (now if there is no source)."""
        called_at = self._clock()
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            return self.collected_at()
        try:
            for source in self._sources:
                state = self._state.get(source.name)
                if fresh and state is not None and state.read_at >= called_at:
                    continue
                try:
                    snapshot = source.read()
                except Exception as e:  # the source is down: its counts wait for it
                    log.warning("metering.read_failed", source=source.name, error=str(e))
                    continue
                self.fold(source.name, snapshot)
            return self.collected_at()
        finally:
            self._lock.release()

    def collected_at(self) -> float:
        """The oldest of the attached sources' last reads (now when none was read yet)."""
        with self._lock:
            reads = [self._state[s.name].read_at for s in self._sources if s.name in self._state]
            return min(reads) if reads else self._clock()

    # --- accounting ----------------------------------------------------------------------

    def fold(self, source: str, snapshot: Snapshot) -> None:
        """Add what `snapshot` counted since the last fold of `source` to the totals and
        checkpoint, in one transaction (see the module docstring for the rules)."""
        with self._lock:
            previous = self._state.get(source)
            seen = self._seen.get(source, {})
            baseline = previous is None
            new_epoch = previous is not None and previous.epoch != snapshot.epoch
            now_seen: dict[str, _Seen] = {}
            changed: dict[Account, list[int]] = {}
            went_back: list[str] = []
            unowned = 0
            for reading in snapshot.readings:
                last = seen.get(reading.key)
                account = reading.account or (last.account if last is not None else None)
                if account is None:
                    unowned += 1
                    continue
                now_seen[reading.key] = _Seen(account, reading.packets, reading.bytes)
                if baseline:
                    continue
                if last is None or new_epoch:
                    delta = (reading.packets, reading.bytes)
                elif reading.packets < last.packets or reading.bytes < last.bytes:
                    delta = (reading.packets, reading.bytes)
                    went_back.append(reading.key)
                else:
                    delta = (reading.packets - last.packets, reading.bytes - last.bytes)
                if delta != (0, 0):
                    total = changed.get(account) or list(self._totals.get(account, (0, 0)))
                    changed[account] = [total[0] + delta[0], total[1] + delta[1]]
            vanished = [] if new_epoch else [k for k in seen if k not in now_seen]
            lost = 0
            since = 0.0 if previous is None else round(snapshot.read_at - previous.read_at, 3)
            if new_epoch and seen:
                lost += self._lost(source, "new epoch (the source restarted)", sorted(seen), since,
                                   epoch=snapshot.epoch, was=previous.epoch)  # fmt: skip
            if vanished:
                lost += self._lost(source, "counters gone without the agent deleting them",
                                   sorted(vanished), since)  # fmt: skip
            if went_back:
                lost += self._lost(source, "counters went back (reset or replaced)",
                                   sorted(went_back), since)  # fmt: skip
            if baseline:
                log.info("metering.baseline", source=source, counters=len(now_seen),
                         epoch=snapshot.epoch)  # fmt: skip
            if unowned:
                log.warning("metering.unowned", source=source, counters=unowned,
                            why="no tenant known for these counters; they are not billed")  # fmt: skip
            floors = self._floors({a.tenant_id for a in changed}, {**self._totals, **changed})
            put = [(source, k, s.account.tenant_id, s.account.direction.value, s.account.measure.value,
                    s.packets, s.bytes) for k, s in now_seen.items() if seen.get(k) != s]  # fmt: skip
            forgotten = [(source, k) for k in seen if k not in now_seen]
            state = _SourceState(snapshot.epoch, snapshot.read_at)
            self._store.save_usage(
                totals=[_total_row(a, t) for a, t in changed.items()]
                + [(t, d.value, REPORTED, *floor) for (t, d), floor in floors.items()],
                seen=put, forgotten=forgotten, sources=[(source, state.epoch, state.read_at)],
                lost_windows=self.lost_windows + lost if lost else None,
            )  # fmt: skip
            # Only once it is durable does memory move on (a failed write is retried whole).
            self._totals.update(changed)
            self._reported.update(floors)
            self._seen[source] = now_seen
            self._state[source] = state
            self.lost_windows += lost

    def forget(self, source: str, keys: Iterable[str]) -> None:
        """The counters `keys` of `source` are gone or start again from zero (the agent deleted
        or reset them, after folding them): if they come back, they count from zero."""
        with self._lock:
            seen = self._seen.get(source, {})
            gone = [k for k in keys if k in seen]
            if not gone:
                return
            self._store.save_usage(forgotten=[(source, k) for k in gone])
            for k in gone:
                del seen[k]

    def _lost(self, source: str, why: str, keys: Sequence[str], since_s: float, **fields: str) -> int:
        """Log one window of lost counts: what OVS (or another source) counted on `keys` in
        the `since_s` seconds since their last read. Returns 1 (one more window)."""
        log.warning("metering.counts_lost", source=source, why=why, counters=len(keys),
                    keys=list(keys[:20]), unread_s=since_s, **fields)  # fmt: skip
        return 1

    def _floors(self, tenants: Iterable[str], totals: Mapping[Account, Sequence[int]]
                ) -> dict[tuple[str, Direction], list[int]]:  # fmt: skip
        """The reported floors of `tenants` that `totals` raise, raised."""
        raised = {}
        for tenant in tenants:
            for direction in Direction:
                packets, nbytes = _passed(totals, tenant, direction)
                floor = self._reported.get((tenant, direction), [0, 0])
                if packets > floor[0] or nbytes > floor[1]:
                    raised[(tenant, direction)] = [max(floor[0], packets), max(floor[1], nbytes)]
        return raised

    # --- reporting -----------------------------------------------------------------------

    def tenants(self) -> set[str]:
        """Tenants with any traffic counted."""
        with self._lock:
            return {a.tenant_id for a, t in self._totals.items() if t != [0, 0]}

    def usage(self, tenant_ids: Iterable[str]) -> list[TenantUsage]:
        """The counters of each tenant (zero for one never seen), in tenant id order."""
        with self._lock:
            return [TenantUsage(t, self._counters(t, Direction.INGRESS), self._counters(t, Direction.EGRESS))
                    for t in sorted(set(tenant_ids))]  # fmt: skip

    def _counters(self, tenant: str, direction: Direction) -> Counters:
        floor = self._reported.get((tenant, direction), [0, 0])
        packets, nbytes = _passed(self._totals, tenant, direction)
        dropped = [a + b for a, b in zip(
            self._totals.get(Account(tenant, direction, Measure.DROPPED), [0, 0]),
            self._totals.get(Account(tenant, direction, Measure.OFFERED_DROPPED), [0, 0]))]  # fmt: skip
        return Counters(max(packets, floor[0]), max(nbytes, floor[1]), dropped[0], dropped[1])


def _passed(totals: Mapping[Account, Sequence[int]], tenant: str, direction: Direction
            ) -> tuple[int, int]:  # fmt: skip
    """PASSED + (OFFERED - OFFERED_DROPPED), packets and bytes."""

    def total(measure: Measure) -> Sequence[int]:
        return totals.get(Account(tenant, direction, measure), (0, 0))

    passed, offered = total(Measure.PASSED), total(Measure.OFFERED)
    dropped = total(Measure.OFFERED_DROPPED)
    return (passed[0] + max(0, offered[0] - dropped[0]), passed[1] + max(0, offered[1] - dropped[1]))


def _total_row(account: Account, total: Sequence[int]) -> tuple[str, str, str, int, int]:
    return (account.tenant_id, account.direction.value, account.measure.value, total[0], total[1])


def owners(tenant_tags: Mapping[str, int]) -> dict[int, str]:
    """tenant id -> tag, turned into tag -> tenant id."""
    return {tag: tenant for tenant, tag in tenant_tags.items()}
