"""The reconciler framework: bring the host to the desired state in the store, one object at a time.

Where data comes from and where it goes (API -> store -> reconciler -> drivers):

- The `Engine` reads desired state from the `Store` (a full `snapshot()` on start, then the
  store's events), keeps a work queue keyed by (kind, id), and hands each object's current spec
  to the `Reconciler` of its kind. Reconcilers are the drivers' side of the seam: they alone
  touch OVS, QEMU or the kernel.
- Each result goes back to the store: `set_applied(kind, id, generation, APPLIED | FAILED,
  message)` per object, and `set_applied_generation(G)` for the whole host once every change up
  to G is applied (OVN's `nb_cfg` ack). WatchEvents and GetNodeInfo report both.

Promises, and how they are kept:

- **Full resync on start.** `run_forever` first enqueues every object of every kind that has a
  reconciler, from one snapshot; `first_pass_done` is set once each of them has been tried once
  (applied, or its failure recorded). The daemon sends READY=1 then.
- **Newest generation wins.** The queue holds one item per (kind, id); a newer change replaces
  an older one (and restarts its backoff). The spec handed to the reconciler is always read
  from the store when the item runs, so a burst of puts costs one apply. A deleted object is
  applied with spec None.
- **Failures are retried with backoff.** After the n-th failure in a row an item waits
  `min(backoff_max, backoff_base * 2**(n-1))` seconds (times 1..1+jitter). Its status becomes
  FAILED with the exception's message, written again only when the message changes.
- **The ack never lies.** `set_applied_generation(G)` is called only when the queue is empty
  (nothing pending, nothing failing) and G is the newest change the engine has seen, so one
  failing object holds the host's applied generation back until it succeeds.
- **Events of our own making are not work.** Only CREATED, UPDATED and DELETED events enqueue;
  STATUS and NODE_APPLIED events (written by the engine itself) do not. A change whose
  generation was already applied (the engine read it early) is not applied twice.

Kinds without a reconciler are left alone (logged once per kind); they do not hold back the
applied generation. Threads: one thread runs the engine (`run_forever`, or `resync` and
`run_pending` in tests); only `first_pass_done` is meant to be read from other threads.
Errors from the store itself (a closed or broken store) are not caught: the loop stops and the
daemon exits, so systemd restarts it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.store import CursorExpired, EventType, NotFound, Status, Store
from andromede.v1 import node_pb2

log = structlog.get_logger(__name__)

EVENT_BATCH = 1_000  # events read per events_since call
STOP_POLL_S = 0.1  # how soon run_forever notices `stop` while it waits
_CHANGES = frozenset({EventType.CREATED, EventType.UPDATED, EventType.DELETED})


class Reconciler(Protocol):
    """Brings one kind of object to its desired spec; the drivers' side of the seam."""

    kind: str  # e.g. "node", "network", "port", "vm"

    def apply(self, kind: str, id: str, spec: bytes | None) -> str:
        """Bring the world to `spec` (None: the object was deleted); return a short message.
        Must be idempotent. Raise an exception for a failure: it is recorded and retried."""
        ...


@dataclass(slots=True)
class _Item:
    generation: int  # the newest change of this object the engine has seen
    due: float  # engine clock time at which it may run
    attempts: int = 0  # failures in a row at this generation
    reported: tuple[int, str] | None = None  # (generation, message) of the last FAILED recorded


class Engine:
    """The work queue and loop that call reconcilers and report their results to the store."""

    def __init__(
        self,
        store: Store,
        reconcilers: Sequence[Reconciler],
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: float = 0.1,
    ) -> None:
        if not 0 < backoff_base <= backoff_max:
            raise ValueError(
                f"backoff_base: must be > 0 and <= backoff_max, got {backoff_base}, {backoff_max}"
            )
        if jitter < 0:
            raise ValueError(f"jitter: must be >= 0, got {jitter}")
        self._store = store
        self._reconcilers: dict[str, Reconciler] = {}
        for r in reconcilers:
            if r.kind in self._reconcilers:
                raise ValueError(f"reconcilers: two reconcilers for kind {r.kind!r}")
            self._reconcilers[r.kind] = r
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._random = random.Random()
        self._clock = clock
        self._queue: dict[tuple[str, str], _Item] = {}
        self._done: dict[tuple[str, str], int] = {}  # existing objects: generation applied
        self._gone: dict[tuple[str, str], int] = {}  # deletions applied since the last resync
        self._cursor = 0  # the newest store event taken into account
        self._seen_generation = 0  # every change up to this one is in the queue or done
        self._acked = 0
        self._resynced = False
        self._unhandled: set[str] = set()
        self.first_pass_done = threading.Event()

    # --- filling the queue ---------------------------------------------------------------

    def resync(self) -> None:
        """Enqueue every object of every kind known to a reconciler, from one snapshot, and
        watch the store's events from that snapshot's cursor. Objects the engine applied before
        but which are gone from the snapshot (deleted while its cursor expired) are enqueued as
        deletions."""
        snap = self._store.snapshot()
        present: set[tuple[str, str]] = set()
        for kind, objects in snap.objects.items():
            if kind not in self._reconcilers:
                self._note_unhandled(kind)
                continue
            for id, obj in objects.items():
                present.add((kind, id))
                self._enqueue(kind, id, obj.generation, force=True)
        for key in [key for key in self._done if key not in present]:
            del self._done[key]
            self._enqueue(*key, snap.generation, force=True)
        self._gone.clear()  # events before the snapshot's cursor are never read again
        self._cursor = snap.cursor
        self._seen_generation = max(self._seen_generation, snap.generation)
        self._resynced = True
        log.info(
            "reconcile.resync",
            generation=snap.generation,
            cursor=snap.cursor,
            queued=len(self._queue),
        )

    def poll_events(self) -> None:
        """Enqueue the objects named by store events after the engine's cursor (a full resync
        if the cursor expired). run_forever calls it after each wait; tests call it directly."""
        while True:
            try:
                events = self._store.events_since(self._cursor, EVENT_BATCH)
            except CursorExpired as e:
                log.warning("reconcile.cursor_expired", cursor=self._cursor, error=str(e))
                self.resync()
                return
            for event in events:
                self._cursor = event.cursor
                if event.type not in _CHANGES:
                    continue
                self._seen_generation = max(self._seen_generation, event.generation)
                if event.kind not in self._reconcilers:
                    self._note_unhandled(event.kind)
                    continue
                self._enqueue(event.kind, event.id, event.generation, force=False)
            if len(events) < EVENT_BATCH:
                return

    def _enqueue(self, kind: str, id: str, generation: int, *, force: bool) -> None:
        key = (kind, id)
        if not force and max(self._done.get(key, 0), self._gone.get(key, 0)) >= generation:
            return  # already applied (read from the store before its event arrived)
        item = self._queue.get(key)
        if item is None:
            self._queue[key] = _Item(generation, self._clock())
        elif generation > item.generation:
            # A newer spec: try it now, with a fresh backoff.
            item.generation, item.due, item.attempts = generation, self._clock(), 0

    def _note_unhandled(self, kind: str) -> None:
        if kind not in self._unhandled:
            self._unhandled.add(kind)
            log.info("reconcile.unhandled_kind", kind=kind)

    # --- working the queue ---------------------------------------------------------------

    def run_pending(self) -> int:
        """Process every work item that is due, once; return how many were processed. Then,
        if nothing is pending or failing, ack the newest generation seen."""
        now = self._clock()
        due = [key for key, item in self._queue.items() if item.due <= now]
        for key in due:
            self._process(key)
        if self._resynced and not self.first_pass_done.is_set():
            self.first_pass_done.set()
            log.info("reconcile.first_pass_done", failing=len(self._queue))
        if not self._queue and self._seen_generation > self._acked:
            self._store.set_applied_generation(self._seen_generation)
            self._acked = self._seen_generation
        return len(due)

    def _process(self, key: tuple[str, str]) -> None:
        kind, id = key
        item = self._queue[key]
        obj = self._store.get(kind, id)
        spec = None if obj is None else obj.spec
        generation = item.generation if obj is None else max(obj.generation, item.generation)
        started = time.perf_counter()
        try:
            message = self._reconcilers[kind].apply(kind, id, spec)
        except Exception as e:
            ms = round((time.perf_counter() - started) * 1000, 3)
            self._failed(key, item, obj is not None, generation, e, ms)
            return
        ms = round((time.perf_counter() - started) * 1000, 3)
        del self._queue[key]
        if obj is None:
            self._done.pop(key, None)
            self._gone[key] = generation
        else:
            self._gone.pop(key, None)
            self._done[key] = generation
            self._report(kind, id, generation, Status.APPLIED, str(message or ""))
        log.info(
            "reconcile.applied",
            kind=kind,
            id=id,
            generation=generation,
            attempts=item.attempts + 1,
            ms=ms,
            deleted=obj is None,
            message=message,
        )

    def _failed(
        self,
        key: tuple[str, str],
        item: _Item,
        exists: bool,
        generation: int,
        error: Exception,
        ms: float,
    ) -> None:
        kind, id = key
        item.attempts += 1
        # The exponent is capped so a failure that lasts for days cannot overflow a float.
        delay = min(self._backoff_max, self._backoff_base * 2 ** min(item.attempts - 1, 60))
        if self._jitter:
            delay = min(self._backoff_max, delay * (1 + self._random.uniform(0, self._jitter)))
        item.due = self._clock() + delay
        item.generation = generation
        message = str(error) or type(error).__name__
        if exists and item.reported != (generation, message):
            self._report(kind, id, generation, Status.FAILED, message)
            item.reported = (generation, message)
        log.warning(
            "reconcile.failed",
            kind=kind,
            id=id,
            generation=generation,
            attempts=item.attempts,
            ms=ms,
            retry_in_s=round(delay, 3),
            error=message,
            deleted=not exists,
        )

    def _report(self, kind: str, id: str, generation: int, status: Status, message: str) -> None:
        try:
            self._store.set_applied(kind, id, generation, status, message)
        except NotFound:
            pass  # deleted meanwhile: its DELETED event brings it back as a deletion

    def next_due(self) -> float | None:
        """Engine clock time at which the next queued item may run (None: the queue is empty)."""
        return min((item.due for item in self._queue.values()), default=None)

    # --- the loop --------------------------------------------------------------------------

    def run_forever(
        self,
        stop: threading.Event,
        on_pass: Callable[[], None] | None = None,
        idle_wait: float = 1.0,
    ) -> None:
        """Resync, then until `stop` is set: run what is due, call `on_pass` (the daemon sends
        WATCHDOG=1 there), wait for a store event, the next retry or `idle_wait` seconds,
        whichever comes first, and enqueue what the new events name."""
        self.resync()
        while not stop.is_set():
            self.run_pending()
            if on_pass is not None:
                on_pass()
            timeout = idle_wait
            next_due = self.next_due()
            if next_due is not None:
                timeout = max(0.0, min(timeout, next_due - self._clock()))
            self._wait(stop, timeout)
            self.poll_events()
        log.info("reconcile.stopped", queued=len(self._queue))

    def _wait(self, stop: threading.Event, timeout: float) -> None:
        """Wait for a store event for up to `timeout` seconds, in slices of STOP_POLL_S so a
        set `stop` is noticed promptly (the store's wait cannot be woken by it)."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._store.wait_for_event(self._cursor, min(left, STOP_POLL_S)):
                return


class MaintenanceReconciler:
    """Kind "node": applies the "maintenance" object, the mode SetMaintenance stores (a
    serialized andromede.v1.Maintenance). There is nothing on the host to change: the mode only
    gates new VMs, which the compute side reads from the store. `enabled` is the mode last
    applied, for the daemon and tests. Other "node" objects are accepted as they are."""

    kind = "node"

    def __init__(self) -> None:
        self.enabled = False

    def apply(self, kind: str, id: str, spec: bytes | None) -> str:
        if id != "maintenance":
            return "accepted"
        self.enabled = spec is not None and node_pb2.Maintenance.FromString(spec).enabled
        return "maintenance on" if self.enabled else "maintenance off"
