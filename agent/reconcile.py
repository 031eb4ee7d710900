"""The reconciler framework: level-triggered passes that bring the host to the desired state.

Where data comes from and where it goes (API -> store -> reconciler -> drivers):

- Each pass reads one `Store.snapshot()` (every object at generation G) and hands each
  `Reconciler` the desired objects of its kinds (one kind, or several that compile together,
  as the network's). The reconciler *observes* what exists on the
  host through its driver, and applies the difference: `ensure` creates or updates what is
  missing or wrong, `prune` removes what exists on the host but is not desired. Deletions are
  found on the host, never only from remembered events, so a crash at any point (even between
  a delete's commit and its first pass) is repaired by the next pass.
- The results go back to the store in one transaction (`Store.record`): per-object status
  (APPLIED, or FAILED with a gRPC code, a message and the attempts), and the applied
  generation G for the whole host when, and only when, every object of the snapshot is applied
  and every prune succeeded (OVN's `nb_cfg` ack). The ack never runs ahead of the host.

When a pass runs (`run_forever`): at start; soon after a store event that changes desired state
(events only make a pass happen sooner, they are not the work); when a failed object's retry
is due; when a driver calls `kick()` (it saw the host change: OVS restarted); and every
`resync_interval` seconds anyway, which repairs drift made behind the
agent's back (a file removed, a tap deleted, OVS restarted).

Order: reconcilers are given in dependency order (networks before ports). `ensure` runs in that
order, `prune` in the reverse one (ports are removed before their network).

Failures: an object whose `ensure` failed is retried after `min(backoff_max, backoff_base *
2**(attempts-1))` seconds (plus jitter); `Work.due(id)` tells the reconciler whether to try it
in this pass. An object the reconciler did not report on keeps its status and holds the ack.
Objects of a kind with no reconciler are reported FAILED (UNIMPLEMENTED) and hold the ack: the
API refuses such kinds, so they only appear in a store written by another agent version.

The watchdog: reconcilers call `Work.progress()` after each object (or bounded slice of work),
and the engine calls it between steps and while idle; the daemon turns it into WATCHDOG=1. A
driver call that never returns stops the calls, so systemd restarts the agent: drivers must put
timeouts on everything they wait for.

Threads: one thread runs the engine (`run_forever`, or `run_pass` in tests); `first_pass_done`
and `last_pass` may be read from other threads. `on_pass`, if given, is called on the engine's
thread after each pass with its summary and the seconds each reconciler spent in it (ensure and
prune, by `reconciler_name`); agent/metrics.py turns them into histograms. Errors from the
store itself are not caught: the loop stops and the daemon exits, so systemd restarts it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import structlog

from agent.store import CursorExpired, EventType, Object, Report, Snapshot, Status, Store
from andromede.v1 import node_pb2

log = structlog.get_logger(__name__)

EVENT_BATCH = 1_000  # events read per events_since call
IDLE_SLICE_S = 0.25  # the longest the loop waits without calling progress or checking `stop`
DEBOUNCE_S = 0.02  # a burst of changes (one per RPC) becomes one pass
_CHANGES = frozenset({EventType.CREATED, EventType.UPDATED, EventType.DELETED})
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class ApplyError(Exception):
    """A failure with the gRPC code that says what kind it is (common.proto's ObjectStatus.code):
    UNAVAILABLE when a daemon is down, FAILED_PRECONDITION when something the spec needs is
    missing, RESOURCE_EXHAUSTED when the host lacks room. Other exceptions count as INTERNAL
    (OSError and TimeoutError as UNAVAILABLE)."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one object in a pass: done (`code` 0), failed with a gRPC code, or
    `pending` on something outside the agent's hands (a port waits for its VM's tap): PENDING
    with the message, no retry backoff, and the ack held until it is done."""

    message: str = ""
    code: int = 0
    pending: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.pending

    @staticmethod
    def waiting(message: str) -> Outcome:
        return Outcome(message, pending=True)

    @staticmethod
    def failed(error: BaseException) -> Outcome:
        if isinstance(error, ApplyError):
            code = error.code
        elif isinstance(error, (OSError, TimeoutError)):
            code = grpc.StatusCode.UNAVAILABLE
        else:
            code = grpc.StatusCode.INTERNAL
        return Outcome(str(error) or type(error).__name__, code.value[0])


Key = tuple[str, str]  # (kind, id)
Desired = Mapping[str, Mapping[str, Object]]  # kind -> id -> object, for a reconciler's kinds


class Work(Protocol):
    """What a pass offers a reconciler."""

    def progress(self) -> None:
        """Call after each object or bounded slice of work: it feeds the watchdog."""
        ...

    def due(self, kind: str, id: str) -> bool:
        """False while the object waits out the backoff of its last failure."""
        ...


class Reconciler(Protocol):
    """Brings its kinds of object on the host to their desired state; the drivers' side of the
    seam. One kind (a VM's QEMU process) or several that only make sense together (the network
    kinds compile into one flow table, once per pass). Both methods observe the host
    themselves (never trust what they did last time), must be idempotent, and return an
    Outcome per object they worked on."""

    kinds: tuple[str, ...]  # e.g. ("vm",); desired is given for these, and it reports on them
    # Optional `reads`: other kinds it reads but another reconciler applies (a VM's ports and
    # their networks); also in `desired`, never reported on.

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        """Create or update on the host every desired object that is missing or differs; an
        Outcome per (kind, id) it tried (skip what is not `work.due`)."""
        ...

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        """Remove from the host what its kinds have there but `desired` lacks; an Outcome per
        (kind, id) removed, failed, or pending (a removal under way that the reconciler
        itself gets a pass for when it can go on: it holds the ack, with no backoff)."""
        ...


@dataclass(frozen=True, slots=True)
class PassSummary:
    generation: int  # of the snapshot the pass worked from
    objects: int  # desired objects in it
    applied: int  # of those, done in this pass
    failed: int  # objects (desired or to prune) that failed, or that nobody reconciles
    waiting: int  # desired objects not tried in this pass (their retry is not due yet)
    pruned: int  # things removed from the host
    acked: bool  # the applied generation reached `generation`
    ms: float


@dataclass(slots=True)
class _Tally:
    """What one pass found, as it goes."""

    applied: int = 0
    failed: int = 0
    waiting: int = 0
    pruned: int = 0
    reports: list[Report] = field(default_factory=list)


@dataclass(slots=True)
class _Retry:
    generation: int  # the object's generation that failed
    due: float  # engine clock time of the next attempt


class Engine:
    """Runs level-triggered passes over the reconcilers and reports them to the store."""

    def __init__(
        self,
        store: Store,
        reconcilers: Sequence[Reconciler],
        *,
        resync_interval: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        jitter: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        on_pass: Callable[[PassSummary, Mapping[str, float]], None] | None = None,
    ) -> None:
        if not 0 < backoff_base <= backoff_max:
            raise ValueError(
                f"backoff_base: must be > 0 and <= backoff_max, got {backoff_base}, {backoff_max}"
            )
        if jitter < 0:
            raise ValueError(f"jitter: must be >= 0, got {jitter}")
        if not resync_interval > 0:
            raise ValueError(f"resync_interval: must be > 0, got {resync_interval}")
        kinds = [kind for r in reconcilers for kind in r.kinds]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"reconcilers: one reconciler per kind, got {kinds}")
        self._store = store
        self._reconcilers = tuple(reconcilers)
        self.kinds = frozenset(kinds)
        self._resync_interval = resync_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._random = random.Random()
        self._clock = clock
        self._retries: dict[tuple[str, str], _Retry] = {}
        self._prune_failures = 0  # passes in a row in which a removal failed
        self._prune_retry_at: float | None = None  # engine clock time of the next pass for them
        self._cursor = store.last_cursor()
        self._progress: Callable[[], None] = lambda: None
        self._kicked = threading.Event()
        self.first_pass_done = threading.Event()
        self.last_pass: PassSummary | None = None
        self._on_pass = on_pass
        self._seconds: dict[str, float] = {}  # reconciler name -> seconds in this pass

    # --- one pass ------------------------------------------------------------------------

    def run_pass(self) -> PassSummary:
        """Observe and repair every kind once, from one snapshot; record the results."""
        started = time.perf_counter()
        self._seconds = {reconciler_name(r): 0.0 for r in self._reconcilers}
        self._cursor = self._store.last_cursor()  # a pass covers every change committed so far
        snap = self._store.snapshot()
        work = _PassWork(self, self._progress)
        tally = _Tally()
        for reconciler in self._reconcilers:
            self._ensure(reconciler, _desired(snap, reconciler), work, tally)
        failed_before_prune = tally.failed
        for reconciler in reversed(self._reconcilers):
            self._prune(reconciler, _desired(snap, reconciler), work, tally)
        if tally.failed > failed_before_prune:
            self._prune_failures += 1
            self._prune_retry_at = self._clock() + self._delay(self._prune_failures)
        else:
            self._prune_failures, self._prune_retry_at = 0, None
        for kind, objects in snap.objects.items():
            if kind not in self.kinds:
                tally.failed += len(objects)
                tally.reports += _unreconciled(kind, objects)
        acked = tally.failed == 0 and tally.waiting == 0
        self._store.record(tally.reports, snap.generation if acked else None)
        summary = PassSummary(
            generation=snap.generation,
            objects=sum(len(o) for o in snap.objects.values()),
            applied=tally.applied,
            failed=tally.failed,
            waiting=tally.waiting,
            pruned=tally.pruned,
            acked=acked,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        self.last_pass = summary
        if not self.first_pass_done.is_set():
            self.first_pass_done.set()
            log.info("reconcile.first_pass_done", **_fields(summary))
        elif tally.reports or tally.pruned or tally.failed or tally.waiting:
            log.info("reconcile.pass", **_fields(summary))
        if self._on_pass is not None:
            try:
                self._on_pass(summary, self._seconds)
            except Exception:  # an observer's bug must not stop reconciliation
                log.exception("reconcile.on_pass_failed")
        self._progress()
        return summary

    def _ensure(
        self, reconciler: Reconciler, desired: Desired, work: _PassWork, tally: _Tally
    ) -> None:
        self._forget_retries(reconciler, desired)
        outcomes = self._step(reconciler, "ensure", desired, work)
        if isinstance(outcomes, Outcome):  # the whole step failed: so did each due object
            outcomes = {(k, id): outcomes for k in reconciler.kinds for id in desired[k]
                        if work.due(k, id)}  # fmt: skip
        for kind in reconciler.kinds:
            for id, obj in desired[kind].items():
                self._tally(obj, outcomes.get((kind, id)), tally)

    def _tally(self, obj: Object, outcome: Outcome | None, tally: _Tally) -> None:
        key = (obj.kind, obj.id)
        if outcome is None:
            tally.waiting += 1  # not tried (backoff): keeps its status, holds the ack
        elif outcome.pending:
            tally.waiting += 1
            if (obj.status, obj.message) != (Status.PENDING, outcome.message):
                tally.reports.append(Report(obj.kind, obj.id, obj.generation, Status.PENDING,
                                            outcome.message))  # fmt: skip
        elif outcome.ok:
            tally.applied += 1
            self._retries.pop(key, None)
            if (obj.status, obj.message, obj.applied_generation) != (
                Status.APPLIED, outcome.message, obj.generation
            ):
                tally.reports.append(Report(obj.kind, obj.id, obj.generation, Status.APPLIED,
                                            outcome.message))  # fmt: skip
        else:
            tally.failed += 1
            self._retries[key] = _Retry(obj.generation, self._clock() + self._delay(obj.attempts + 1))
            tally.reports.append(Report(obj.kind, obj.id, obj.generation, Status.FAILED,
                                        outcome.message, outcome.code))  # fmt: skip
            log.warning("reconcile.failed", kind=obj.kind, id=obj.id, generation=obj.generation,
                        attempts=obj.attempts + 1, code=_CODE_NAMES.get(outcome.code),
                        error=outcome.message)  # fmt: skip

    def _prune(
        self, reconciler: Reconciler, desired: Desired, work: _PassWork, tally: _Tally
    ) -> None:
        outcomes = self._step(reconciler, "prune", desired, work)
        if isinstance(outcomes, Outcome):
            outcomes = {(",".join(reconciler.kinds), ""): outcomes}  # what it would have removed is unknown
        for (kind, id), outcome in outcomes.items():
            if outcome.ok:
                tally.pruned += 1
                log.info("reconcile.pruned", kind=kind, id=id, message=outcome.message)
            elif outcome.pending:  # under way (a guest shutting down): holds the ack, no backoff
                tally.waiting += 1
                log.info("reconcile.prune_waiting", kind=kind, id=id, message=outcome.message)
            else:
                tally.failed += 1  # a deletion not done on the host holds the ack
                log.warning("reconcile.prune_failed", kind=kind, id=id,
                            code=_CODE_NAMES.get(outcome.code), error=outcome.message)  # fmt: skip

    def _step(
        self, reconciler: Reconciler, step: str, desired: Desired, work: _PassWork
    ) -> Mapping[Key, Outcome] | Outcome:
        """One reconciler step: its outcomes, or one Outcome if the step itself raised."""
        self._progress()
        started = time.perf_counter()
        try:
            return getattr(reconciler, step)(desired, work)
        except Exception as e:
            log.exception("reconcile.step_crashed", kinds=list(reconciler.kinds), step=step)
            return Outcome.failed(e)
        finally:
            name = reconciler_name(reconciler)
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started

    def _delay(self, attempts: int) -> float:
        # The exponent is capped so a failure that lasts for days cannot overflow a float.
        delay = min(self._backoff_max, self._backoff_base * 2 ** min(attempts - 1, 60))
        if self._jitter:
            delay = min(self._backoff_max, delay * (1 + self._random.uniform(0, self._jitter)))
        return delay

    def _forget_retries(self, reconciler: Reconciler, desired: Desired) -> None:
        """Drop the backoff of objects deleted, or changed since they failed (a new spec is
        tried at once)."""
        for key in [k for k in self._retries if k[0] in reconciler.kinds]:
            obj = desired[key[0]].get(key[1])
            if obj is None or obj.generation != self._retries[key].generation:
                del self._retries[key]

    def is_due(self, kind: str, id: str) -> bool:
        retry = self._retries.get((kind, id))
        return retry is None or retry.due <= self._clock()

    def next_retry(self) -> float | None:
        """Engine clock time of the earliest retry (None: nothing is waiting to be retried)."""
        times = [r.due for r in self._retries.values()]
        if self._prune_retry_at is not None:
            times.append(self._prune_retry_at)
        return min(times, default=None)

    # --- the loop --------------------------------------------------------------------------

    def kick(self) -> None:
        """Ask for a pass as soon as possible, from any thread: a driver that saw the host
        change under it (OVS restarted, a tap appeared) calls it."""
        self._kicked.set()

    def changes_pending(self) -> bool:
        """True if desired state changed since the last pass began (CREATED, UPDATED or
        DELETED events after its cursor; an expired cursor counts as a change)."""
        while True:
            try:
                events = self._store.events_since(self._cursor, EVENT_BATCH)
            except CursorExpired:
                return True
            if any(e.type in _CHANGES for e in events):
                return True
            if events:
                self._cursor = events[-1].cursor  # only our own STATUS / NODE_APPLIED events
            if len(events) < EVENT_BATCH:
                return False

    def run_forever(
        self, stop: threading.Event, progress: Callable[[], None] | None = None
    ) -> None:
        """Pass, then until `stop` is set: wait for a change, a due retry or the resync
        interval, and pass again. `progress` is called often while the loop is healthy (the
        daemon sends WATCHDOG=1 from it), and never while a reconciler is stuck."""
        if progress is not None:
            self._progress = progress
        self.run_pass()
        next_resync = self._clock() + self._resync_interval
        while not stop.is_set():
            if self._wait_for_work(stop, next_resync):
                if self._clock() >= next_resync:
                    log.info("reconcile.resync")
                self.run_pass()
                next_resync = self._clock() + self._resync_interval
        log.info("reconcile.stopped")

    def _wait_for_work(self, stop: threading.Event, next_resync: float) -> bool:
        """Wait in short slices, feeding the watchdog; True when a pass is due."""
        while not stop.is_set():
            self._progress()
            if self._kicked.is_set() or self.changes_pending():
                self._kicked.clear()
                stop.wait(DEBOUNCE_S)
                return True
            now = self._clock()
            retry = self.next_retry()
            if now >= next_resync or (retry is not None and now >= retry):
                return True
            wake = min(next_resync, retry if retry is not None else next_resync)
            timeout = max(0.0, min(IDLE_SLICE_S, wake - now))
            self._store.wait_for_event(self._cursor, timeout)
        return False


class _PassWork:
    """The Work a pass hands to reconcilers."""

    __slots__ = ("due", "progress")

    def __init__(self, engine: Engine, progress: Callable[[], None]) -> None:
        self.due = engine.is_due
        self.progress = progress


def reconciler_name(reconciler: Reconciler) -> str:
    """What metrics call a reconciler: its `name` attribute if it has one, else its class's
    name less "Reconciler", in lower case (NetworkReconciler: "network")."""
    name = getattr(reconciler, "name", None)
    if isinstance(name, str) and name:
        return name
    named = type(reconciler).__name__.removesuffix("Reconciler").lower()
    return named or "+".join(reconciler.kinds)


def _desired(snap: Snapshot, reconciler: Reconciler) -> Desired:
    kinds = (*reconciler.kinds, *getattr(reconciler, "reads", ()))
    return {kind: snap.of(kind) for kind in kinds}


def _unreconciled(kind: str, objects: Mapping[str, Object]) -> list[Report]:
    """FAILED reports for objects of a kind no reconciler handles (once: no attempts counted)."""
    message = f"this agent version has no reconciler for kind {kind!r}"
    code = grpc.StatusCode.UNIMPLEMENTED.value[0]
    return [
        Report(kind, obj.id, obj.generation, Status.FAILED, message, code)
        for obj in objects.values()
        if (obj.status, obj.message, obj.code) != (Status.FAILED, message, code)
    ]


def _fields(summary: PassSummary) -> dict[str, object]:
    return {f: getattr(summary, f) for f in summary.__slots__}


class MaintenanceReconciler:
    """Kind "node": applies the "maintenance" object, the mode SetMaintenance stores (a
    serialized andromede.v1.Maintenance). There is nothing on the host to change or remove: the
    mode only gates new VMs, which the compute side reads from the store. `enabled` is the mode
    last applied, for the daemon and tests. Other "node" objects are accepted as they are."""

    kinds = ("node",)

    def __init__(self) -> None:
        self.enabled = False

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        nodes = desired["node"]
        maintenance = nodes.get("maintenance")
        self.enabled = (
            maintenance is not None and node_pb2.Maintenance.FromString(maintenance.spec).enabled
        )
        mode = Outcome("maintenance on" if self.enabled else "maintenance off")
        return {("node", id): mode if id == "maintenance" else Outcome("accepted") for id in nodes}

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        return {}
