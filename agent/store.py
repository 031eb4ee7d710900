"""Desired state, generations and events, durable in SQLite: what the agent has promised to do.

Where data comes from and where it goes (API -> store -> reconciler -> drivers):

- gRPC servicers validate a request, then `commit` a batch of `Put`s and `Delete`s (each
  object's desired spec as bytes: serialized protobuf; the store never looks inside) with the
  client's `request_id`. The call returns only after the batch is committed to disk, with one
  `Result` per object (`put` and `delete` are the one-object forms).
- Reconcilers read `snapshot()` (every object at one generation), bring the host to it, and
  report what they found with `record(reports, applied_generation)`: per-object status
  (APPLIED, PENDING or FAILED with a gRPC code, a message, the failed attempts and since when)
  and the host-wide applied generation (OVN's `nb_cfg` / `hv_cfg`), in one transaction.
- Every change appends an event; `events_since(cursor)` serves WatchEvents streams, which resume
  from the last cursor they saw after a disconnect; `wait_for_event` wakes them up.
- The usage ledger (agent/metering/ledger.py) checkpoints its per-tenant traffic totals and
  the counter values they were folded from (`save_usage`, one transaction each) and reads them
  back at start (`usage_checkpoint`); `counting_since` is made with the database.

Promises, and how they are kept:

- **Durable before acknowledged, one fsync per call.** Each `commit` (a whole batch, up to
  `MAX_BATCH` objects) and each `record` is one SQLite transaction in WAL mode with
  `synchronous=FULL`; the method returns after COMMIT, and COMMIT returns after the WAL is
  fsynced. Killing the agent (or the machine) after that cannot lose it.
- **Batches are all-or-nothing.** Every object of a batch is checked first (kind, id, spec,
  duplicates), then applied inside the transaction together with the reference checks
  (`Put.refs` must exist once the batch is applied; a `Delete` of an object that a remaining
  object still refers to is refused) and the uniqueness checks (`Put.unique`: no other object
  may hold the same value in the same scope once the batch is applied, so one batch may swap
  two values). Any fault rolls the whole batch back and raises `BatchRejected` listing every
  faulty object with its index.
- **One generation per change.** A store-wide counter goes up by exactly one per changed
  object, in commit order, without gaps. Each object remembers the generation at which its spec
  last changed, when it was created and updated, and the request_id that changed it. A put of
  the spec an object already has changes nothing: it takes no new generation, appends no
  event, and answers with the object's current generation.
- **Replays change nothing and answer exactly as the first time.** The first answer to each
  request_id (its results, and the caller's serialized reply when given) is stored in the same
  transaction as the change, so a replay (even after a restart) returns those same bytes,
  flagged `replayed`, and changes nothing.
- **Bad input changes nothing.** Arguments are checked before the transaction starts; errors are
  `StoreError` subclasses whose message starts with the field's name.
- **A storage failure says what to do and changes nothing.** A full disk raises `StorageFull`
  (RESOURCE_EXHAUSTED), a locked or failing database `StorageUnavailable` (UNAVAILABLE); the
  transaction is rolled back and the file stays intact. A caller's deadline (`deadline_scope`)
  bounds the wait for the store's lock (`DeadlineExceeded`).

Request ids are remembered for at least `request_window_s` (7 days) or the last
`request_window_count` (100,000) mutating requests, or the newest `request_window_bytes`
(64 MiB) of first answers, whichever is reached first. A control plane retries within seconds
to minutes, and replays its unanswered requests after its own restart within hours; a week also
covers a long control-plane outage. The count bounds the table under heavy churn of small
requests (about 150 bytes a row, so about 15 MB), the bytes under a flood of large batches (a
4,096-object batch keeps about 200 KB of results). A replay older than that is treated
as a new request, which is harmless for the declarative `put` (an unchanged spec changes
nothing) and gives NOT_FOUND for a `delete` of an object already gone.

Events are kept for at least the last `event_retention` (100,000) of them: at 1,000 objects
that is many full rounds of changes and status updates, enough for a watcher that was
disconnected for minutes or hours. A cursor that points before the retained events raises
`CursorExpired`; so does a cursor beyond the newest event (it came from another store, or one
that was wiped). Either way the client resyncs: `snapshot()`, then `events_since(snapshot.cursor)`,
which misses nothing because the snapshot and its cursor are read in one transaction.

Threads: the gRPC server calls the store from a thread pool. The store holds one connection,
and one lock around every use of it. SQLite runs one write transaction at a time anyway, and a
write's cost is its fsync, which no amount of read concurrency shortens; reads are short
(a snapshot of thousands of objects takes milliseconds). One connection under one lock is
simple to reason about, and makes every method atomic with respect to the others. Only this
process writes the database: `wait_for_event` is woken by commits made through this object.

Schema: versioned with `PRAGMA user_version` and `MIGRATIONS`, applied in order, all in one
transaction, when the store opens. Never edit a released migration; append a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import structlog

from dataplane.topology import ID, MAX_ID_CHARS

log = structlog.get_logger(__name__)

FILENAME = "desired-state.sqlite3"
"""The database's name inside the agent's state directory: `Store(state_dir / FILENAME)`."""

REQUEST_WINDOW_S = 7 * 24 * 3600
REQUEST_WINDOW_COUNT = 100_000
REQUEST_WINDOW_BYTES = 64 * 1024 * 1024
EVENT_RETENTION = 100_000
TRIM_EVERY = 1_000  # old request ids and events are deleted in batches, once per this many rows

MAX_SPEC_BYTES = 1 << 20  # a VM or port spec is a few KB; gRPC's default message limit is 4 MiB
MAX_MESSAGE_CHARS = 1_024  # longer status messages are cut, not refused: they come from errors
MAX_EVENTS_PER_CALL = 10_000
MAX_BATCH = 4_096  # objects per commit (common.proto's batch limit)

_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")


# --- errors --------------------------------------------------------------------------------
# The gRPC layer maps each to one status code, in one place; the code is named on each class.


class StoreError(Exception):
    """Base of every error the store raises on purpose (a closed store, an unusable file)."""


class Invalid(StoreError, ValueError):
    """A bad argument; `field` names it ("" for an object of a batch that is itself the value,
    such as an id to delete). gRPC: INVALID_ARGUMENT. Nothing was changed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name


class NotFound(StoreError):
    """No object of that kind and id. gRPC: NOT_FOUND. Nothing was changed. `field` is "id"
    where the id was an argument, "" for an object of a batch (the object as a whole)."""

    def __init__(self, kind: str, id: str, field_name: str = "id") -> None:
        reason = f"no {kind} with id {id!r}"
        super().__init__(f"{field_name}: {reason}" if field_name else reason)
        self.field = field_name
        self.kind = kind
        self.id = id


class Precondition(StoreError):
    """The stored state forbids the change: a reference to an object that does not exist, or
    the deletion of an object that another one still refers to. gRPC: FAILED_PRECONDITION.
    `field` names the reference ("" when the object as a whole is in use)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name


class Conflict(StoreError):
    """A value that must be unique in its scope (`Put.unique`: a network's VNI, a MAC within a
    network) is held by another object. gRPC: ALREADY_EXISTS. `field` names it inside the
    object. Nothing was changed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class RequestConflict(StoreError):
    """A request_id seen before, sent again with a different request.

    gRPC: ALREADY_EXISTS, because the request id names a request that already exists; retrying
    the same call can never succeed, and the fix is on the client's side: a new request needs a
    new request_id. (Not INVALID_ARGUMENT: the same request is valid on another store. Not
    FAILED_PRECONDITION: no change of the system's state will make it succeed.) Nothing was
    changed.
    """

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(f"request_id: {message}")
        self.field = "request_id"
        self.request_id = request_id


class BatchRejected(StoreError):
    """One or more objects of a batch are at fault; nothing of the batch was stored.

    `faults` lists (index in the batch, the object's id, the error: Invalid, NotFound,
    Precondition or Conflict with its `field` inside the object), in batch order. `items`
    names the list in the message, as the caller's request does: `ports[3].mac: ...`, or
    `ids[0]: ...` for a fault of the object as a whole (an empty `field`). gRPC: the code of the
    first fault, with every fault in the status details (common.proto's ObjectErrors)."""

    def __init__(
        self, faults: Sequence[tuple[int, str, StoreError]], items: str = "changes"
    ) -> None:
        self.faults = tuple(faults)
        index, _, first = self.faults[0]
        more = len(self.faults) - 1
        within = "." if getattr(first, "field", "") else ": "
        super().__init__(
            f"{items}[{index}]{within}{first}"
            + (f" (and {more} more objects at fault)" if more else "")
        )


class CursorExpired(StoreError):
    """An event cursor that cannot be resumed from. gRPC: OUT_OF_RANGE (as etcd answers a watch
    on a compacted revision). The client resyncs: `snapshot()`, then
    `events_since(snapshot.cursor)`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"cursor: {message}")
        self.field = "cursor"


class StorageFull(StoreError):
    """The disk (or quota) under the state directory is full. gRPC: RESOURCE_EXHAUSTED. The
    transaction was rolled back; the database is intact."""


class StorageUnavailable(StoreError):
    """The database is locked by another process or failing (I/O error). gRPC: UNAVAILABLE:
    retry with backoff. The transaction was rolled back."""


class DeadlineExceeded(StoreError):
    """The caller's deadline passed while waiting for the store. gRPC: DEADLINE_EXCEEDED.
    Nothing was changed; a retry with the same request_id is safe."""


class SchemaTooNew(StoreError):
    """The database was written by a newer agent (its schema version is above `LATEST`).

    Raised when the store opens, so the agent refuses to start rather than misread the data.
    """


# --- deadlines -----------------------------------------------------------------------------

_deadline: ContextVar[float | None] = ContextVar("store_deadline", default=None)
_NO_DEADLINE_S = 10 * 365 * 86400.0


@contextmanager
def deadline_scope(seconds: float | None) -> Iterator[None]:
    """Within the block, store calls of this thread give up with DeadlineExceeded rather than
    wait for the store's lock past `seconds` from now (None: no limit). The gRPC edge wraps each
    unary call in it with the client's remaining time (gRPC gives a call without a deadline
    an enormous one, which the lock's wait cannot take: that is no limit too)."""
    limited = seconds is not None and seconds < _NO_DEADLINE_S
    token = _deadline.set(time.monotonic() + seconds if limited else None)
    try:
        yield
    finally:
        _deadline.reset(token)


# --- values --------------------------------------------------------------------------------


class Status(StrEnum):
    """Where the host stands with an object's desired spec (the one at `Object.generation`)."""

    PENDING = "pending"  # the spec changed; the reconciler has not applied it yet
    APPLIED = "applied"  # the host matches the spec
    FAILED = "failed"  # the last attempt failed (`message` says why); the reconciler retries


class EventType(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    STATUS = "status"  # an object's status, message or applied generation changed
    NODE_APPLIED = "node_applied"  # the whole host reached a generation (kind and id are "")


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference from one object to another, e.g. a port's `network_id`. `field` is the
    referring field's name inside the object, for the error message."""

    field: str
    kind: str
    id: str


@dataclass(frozen=True, slots=True)
class Unique:
    """A value that only one object may hold in `scope` at a time, across kinds: a network's
    VNI (scope "network.vni"), a MAC within a network (f"mac@{network_id}", shared by ports
    and L2 entries). `field` is the holding field's name inside the object, for the error."""

    field: str
    scope: str
    value: str


@dataclass(frozen=True, slots=True)
class Put:
    """Make `spec` the desired state of kind/id. `refs`: the objects it needs, which must exist
    once the batch is applied, and which cannot be deleted while it refers to them. `unique`:
    the values it holds, which no other object may hold once the batch is applied."""

    kind: str
    id: str
    spec: bytes
    refs: tuple[Ref, ...] = ()
    unique: tuple[Unique, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove kind/id from the desired state; with `allow_missing`, an absent id is no fault."""

    kind: str
    id: str
    allow_missing: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """One object's answer (common.proto's ObjectResult): for a put, the generation of its
    current spec; for a delete, the deletion's generation (0: allowed missing); `changed` if
    this request changed it."""

    id: str
    generation: int
    changed: bool


@dataclass(frozen=True, slots=True)
class Committed:
    """The answer to a commit, or to its replay (`replayed`): the results in batch order and
    the caller's serialized reply as stored with the first answer (b"" if it gave none, or if
    the request is older than migration 2)."""

    results: tuple[Result, ...]
    replayed: bool
    reply: bytes

    @property
    def generation(self) -> int:
        """The generation the request was accepted at: the highest of its results."""
        return max(r.generation for r in self.results)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to a one-object `put` or `delete`."""

    generation: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class Report:
    """A reconciler's finding about one object at `generation` (the object's generation it
    worked from). `code` is the gRPC status code of a failure (0 unless FAILED)."""

    kind: str
    id: str
    generation: int
    status: Status
    message: str = ""
    code: int = 0


@dataclass(frozen=True, slots=True)
class Object:
    kind: str
    id: str
    spec: bytes  # as the caller gave it
    generation: int  # the store generation at which this spec was last changed
    status: Status  # about the spec at `generation`
    message: str  # why, when FAILED or PENDING; otherwise usually ""
    applied_generation: int  # the newest generation of this object the host reached; 0: never
    code: int  # the gRPC code of the last failure; 0 unless FAILED
    attempts: int  # failed attempts since the last success (or since the spec changed)
    since: float  # Unix time at which `status` last changed
    created_at: float  # Unix time of the first put (since its last deletion)
    updated_at: float  # Unix time of `generation`
    request_id: str  # of the request that last changed the spec


@dataclass(frozen=True, slots=True)
class Event:
    cursor: int  # strictly increasing, never reused; resume with events_since(cursor)
    kind: str
    id: str
    generation: int  # of the change; for STATUS, the generation the report is about
    type: EventType
    # "pending" for CREATED/UPDATED, the status reported for STATUS, "applied" for NODE_APPLIED,
    # "" for DELETED
    status: str
    message: str
    at: float  # Unix time, seconds
    code: int = 0  # for a FAILED STATUS: the gRPC code of the failure


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything, read in one transaction: the reconciler's input."""

    store_id: str  # random, made when the database was created: cursors belong to one store
    generation: int
    cursor: int  # the newest event at this generation: watch from here to miss nothing
    applied_generation: int
    objects: Mapping[str, Mapping[str, Object]]  # kind -> id -> object

    def of(self, kind: str) -> Mapping[str, Object]:
        """The objects of one kind, by id (empty if there are none)."""
        return self.objects.get(kind, MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class UsageCheckpoint:
    """The usage ledger's durable state (agent/metering/ledger.py owns its meaning): rows as
    stored, read in one transaction."""

    counting_since: float  # Unix time
    lost_windows: int
    totals: tuple[tuple[str, str, str, int, int], ...]  # tenant, direction, measure, packets, bytes
    # source, key, tenant, direction, measure, packets, bytes
    seen: tuple[tuple[str, str, str, str, str, int, int], ...]
    sources: tuple[tuple[str, str, float], ...]  # source, epoch, read_at


# --- schema --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: int  # the user_version after this migration; 1, 2, 3, ... in order
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "objects, generation counter, request ids, events",
        (
            # Small store-wide values: the generation counter, the host's applied generation,
            # the newest event cursor trimmed away, and this store's random id.
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
            "INSERT INTO meta (key, value) VALUES ('generation', 0), ('applied_generation', 0),"
            " ('events_trimmed_through', 0), ('store_id', lower(hex(randomblob(16))))",
            """CREATE TABLE objects (
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                spec BLOB NOT NULL,
                generation INTEGER NOT NULL,
                status TEXT NOT NULL,
                message TEXT NOT NULL,
                applied_generation INTEGER NOT NULL,
                PRIMARY KEY (kind, id)
            )""",
            # seq orders the rows for trimming; digest is SHA-256 of the request (op, kind, id,
            # spec), enough to tell a replay from a different request without keeping the spec.
            """CREATE TABLE requests (
                seq INTEGER PRIMARY KEY,
                request_id TEXT NOT NULL UNIQUE,
                digest BLOB NOT NULL,
                op TEXT NOT NULL,
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                generation INTEGER NOT NULL,
                at REAL NOT NULL
            )""",
            # AUTOINCREMENT: a cursor is never reused, even if every event were trimmed.
            """CREATE TABLE events (
                cursor INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                generation INTEGER NOT NULL,
                type TEXT NOT NULL,
                status TEXT NOT NULL,
                message TEXT NOT NULL,
                at REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "per-object times, request id and durable status; event codes; stored first answers;"
        " references; unique values",
        (
            "ALTER TABLE objects ADD COLUMN code INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE objects ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE objects ADD COLUMN since REAL NOT NULL DEFAULT 0",
            "ALTER TABLE objects ADD COLUMN created_at REAL NOT NULL DEFAULT 0",
            "ALTER TABLE objects ADD COLUMN updated_at REAL NOT NULL DEFAULT 0",
            "ALTER TABLE objects ADD COLUMN request_id TEXT NOT NULL DEFAULT ''",
            # Schema 1 kept no times per object: take them from the events that are still kept
            # (the change at the object's generation, its newest creation), else the time of
            # this migration; the request id from the remembered requests, else "".
            """UPDATE objects SET
                updated_at = coalesce((SELECT max(at) FROM events e WHERE e.kind = objects.kind
                    AND e.id = objects.id AND e.generation = objects.generation
                    AND e.type IN ('created', 'updated')),
                    (julianday('now') - 2440587.5) * 86400.0),
                request_id = coalesce((SELECT request_id FROM requests r
                    WHERE r.kind = objects.kind AND r.id = objects.id
                    AND r.generation = objects.generation AND r.op = 'put'
                    ORDER BY seq LIMIT 1), '')""",
            """UPDATE objects SET
                created_at = coalesce((SELECT max(at) FROM events e WHERE e.kind = objects.kind
                    AND e.id = objects.id AND e.type = 'created'
                    AND e.generation <= objects.generation), updated_at),
                since = updated_at""",
            "ALTER TABLE events ADD COLUMN code INTEGER NOT NULL DEFAULT 0",
            # The first answer: `results` (JSON [[id, generation, changed], ...]) and the
            # caller's serialized reply (NULL: none, as for every schema-1 request). A schema-1
            # request changed what it named unless its object's spec was already as asked;
            # that was not recorded, so its replay says changed = true.
            "ALTER TABLE requests ADD COLUMN results TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE requests ADD COLUMN reply BLOB",
            "UPDATE requests SET results = json_array(json_array(id, generation, json('true')))",
            # Who refers to whom (Put.refs), checked inside each batch's transaction.
            """CREATE TABLE refs (
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                ref_kind TEXT NOT NULL,
                ref_id TEXT NOT NULL,
                PRIMARY KEY (kind, id, ref_kind, ref_id)
            )""",
            "CREATE INDEX refs_by_target ON refs (ref_kind, ref_id)",
            # Who holds which unique value (Put.unique), checked inside each batch's
            # transaction. Not UNIQUE on (scope, value): within a batch two objects may hold a
            # value for a moment (a swap), and the check runs once the batch is applied.
            """CREATE TABLE uniques (
                scope TEXT NOT NULL,
                value TEXT NOT NULL,
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                PRIMARY KEY (scope, value, kind, id)
            )""",
            "CREATE INDEX uniques_by_holder ON uniques (kind, id)",
        ),
    ),
    Migration(
        3,
        "usage counters for billing (agent/metering): totals, last readings, sources",
        (
            # The instant the usage counters count from: made once with the state (never
            # changed after), and how many times counts were lost (agent/metering/ledger.py).
            "INSERT INTO meta (key, value) VALUES"
            " ('counting_since', (julianday('now') - 2440587.5) * 86400.0),"
            " ('usage_lost_windows', 0)",
            # Cumulative counts per tenant, direction and measure (see Measure there).
            """CREATE TABLE usage_totals (
                tenant_id TEXT NOT NULL,
                direction TEXT NOT NULL,
                measure TEXT NOT NULL,
                packets INTEGER NOT NULL,
                bytes INTEGER NOT NULL,
                PRIMARY KEY (tenant_id, direction, measure)
            )""",
            # The last value folded into the totals of each counter of each source.
            """CREATE TABLE usage_seen (
                source TEXT NOT NULL,
                key TEXT NOT NULL,
                tenant_id TEXT NOT NULL,
                direction TEXT NOT NULL,
                measure TEXT NOT NULL,
                packets INTEGER NOT NULL,
                bytes INTEGER NOT NULL,
                PRIMARY KEY (source, key)
            )""",
            # Each source's instance (epoch) at its last read, and when that was.
            """CREATE TABLE usage_sources (
                source TEXT PRIMARY KEY,
                epoch TEXT NOT NULL,
                read_at REAL NOT NULL
            )""",
        ),
    ),
)
LATEST = MIGRATIONS[-1].version


# --- the store -----------------------------------------------------------------------------


class Store:
    """The durable desired state of one host. Open it once per process; share it among threads.

    `path` is the database file, normally `state_dir / FILENAME`; its directory must exist.
    The keyword arguments are the retention windows described in the module's docstring, and
    the clock that timestamps events and request ids (tests move it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        request_window_s: float = REQUEST_WINDOW_S,
        request_window_count: int = REQUEST_WINDOW_COUNT,
        request_window_bytes: int = REQUEST_WINDOW_BYTES,
        event_retention: int = EVENT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        if not request_window_s > 0:
            raise Invalid("request_window_s", f"must be > 0, got {request_window_s}")
        _check_count("request_window_count", request_window_count)
        _check_count("request_window_bytes", request_window_bytes)
        _check_count("event_retention", event_retention)
        self._request_window_s = request_window_s
        self._request_window_count = request_window_count
        self._request_window_bytes = request_window_bytes
        self._request_bytes_since_trim = 0
        self._event_retention = event_retention
        self._trim_requests_every = max(1, min(TRIM_EVERY, request_window_count // 10))
        self._trim_events_every = max(1, min(TRIM_EVERY, event_retention // 10))
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified after each commit

        directory = self.path.parent
        if not directory.is_dir():
            raise StoreError(
                f"cannot open the store {self.path}: directory {directory} does not exist; "
                f"create it (systemd's StateDirectory= does) or point state_dir elsewhere"
            )
        created = not self.path.exists()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from e
        try:
            self._configure(self._db)
            migrated_from = self._migrate(self._db)
            self._last_cursor = self._newest_cursor(self._db)
            with self._write() as db:
                self._trim_events(db)
                self._trim_requests(db)
            generation = self._meta_int(self._db, "generation")
            objects = self._db.execute("SELECT count(*) FROM objects").fetchone()[0]
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(
                f"cannot open the store {self.path}: {e}. If the file is damaged, move it "
                f"aside: the agent then starts empty, with a new store id, and the control "
                f"plane must send the desired state again"
            ) from e
        except BaseException:
            self._db.close()
            raise
        if created:
            _fsync_directory(directory)  # make the new file's name itself durable
        log.info(
            "store.opened",
            path=str(self.path),
            schema=LATEST,
            migrated_from=migrated_from,
            generation=generation,
            objects=objects,
        )

    # --- opening -------------------------------------------------------------------------

    def _configure(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(
                f"cannot open the store {self.path}: SQLite would not use WAL mode there "
                f"(journal_mode={mode}); put the state directory on a local filesystem"
            )
        # FULL, not NORMAL: in WAL mode NORMAL already survives a crash of the agent (kill -9),
        # but fsyncs the WAL only at checkpoints, so a power loss or kernel panic can roll back
        # transactions that had committed. We tell the control plane "accepted at generation g"
        # as soon as COMMIT returns, so COMMIT must fsync the WAL: FULL does. The cost is one
        # fsync per mutation, paid by writes only.
        db.execute("PRAGMA synchronous=FULL")
        # Keep the WAL file from staying large after a burst of writes.
        db.execute("PRAGMA journal_size_limit=67108864")

    def _migrate(self, db: sqlite3.Connection) -> int:
        """Bring the schema to LATEST in one transaction; return the version found."""
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found > LATEST:
                raise SchemaTooNew(
                    f"the store {self.path} has schema version {found}, but this agent knows "
                    f"versions up to {LATEST}: a newer agent wrote it. Run that agent version "
                    f"or newer, or move the file aside to start from empty desired state"
                )
            for migration in MIGRATIONS:
                if migration.version > found:
                    for statement in migration.statements:
                        db.execute(statement)
            if found != LATEST:
                db.execute(f"PRAGMA user_version = {LATEST:d}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if found != LATEST:
            log.info("store.migrated", path=str(self.path), from_version=found, to_version=LATEST)
        return found

    def close(self) -> None:
        """Close the database (it checkpoints its WAL). Further calls raise StoreError."""
        with self._lock:
            if self._db is None:
                return
            self._db.close()
            self._db = None
        log.info("store.closed", path=str(self.path))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- mutations -----------------------------------------------------------------------

    def commit(
        self,
        changes: Sequence[Put | Delete],
        request_id: str,
        *,
        reply: Callable[[tuple[Result, ...]], bytes] | None = None,
        request: bytes | None = None,
    ) -> Committed:
        """Apply a batch of puts and deletes atomically, in order, in one durable transaction.

        `reply`, if given, turns the results into the caller's serialized answer; it is stored
        with them (same transaction), so a replay returns exactly those bytes. `request`, if
        given, is the caller's serialized request, for changes made from what is stored (an
        action such as StartVm): a replay is recognised by it rather than by the changes, which
        may differ by then. Raises Invalid
        (request_id, or the batch's size), BatchRejected (objects at fault: nothing stored), or
        RequestConflict (request_id reused for another request).
        """
        check_id("request_id", request_id)
        changes = tuple(changes)
        if not 1 <= len(changes) <= MAX_BATCH:
            raise Invalid("changes", f"must hold 1..{MAX_BATCH} objects, got {len(changes)}")
        faults: list[tuple[int, str, StoreError]] = []
        first_at: dict[tuple[str, str], int] = {}
        for i, change in enumerate(changes):
            try:
                _check_change(change)
                key = (change.kind, change.id)
                if key in first_at:
                    raise Invalid("id", f"{change.kind} {change.id!r} is also at index {first_at[key]}: "
                                  f"each object may appear once per batch")
                first_at[key] = i
            except Invalid as e:
                faults.append((i, str(getattr(change, "id", "")), e))
        if faults:
            raise BatchRejected(faults)
        digest = _batch_digest(changes) if request is None else hashlib.sha256(request).digest()
        with self._write() as db:
            answer = self._first_answer(db, request_id, digest)
            if answer is None:
                results = self._apply(db, changes, request_id)
                stored_reply = reply(results) if reply is not None else b""
                self._remember(db, request_id, digest, changes, results, stored_reply)
                answer = Committed(results, replayed=False, reply=stored_reply)
        log.info(
            "store.committed",
            request_id=request_id,
            objects=len(changes),
            changed=sum(r.changed for r in answer.results),
            generation=answer.generation,
            replayed=answer.replayed,
            kinds=sorted({c.kind for c in changes}),
        )
        return answer

    def put(self, kind: str, id: str, spec: bytes, request_id: str) -> Accepted:
        """`commit` of one Put (create or replace kind/id); raises the object's own error."""
        return self._one(Put(kind, id, spec), request_id)

    def delete(self, kind: str, id: str, request_id: str) -> Accepted:
        """`commit` of one Delete. NotFound if there is no such object (nothing is changed or
        remembered, so the same request_id may be used again)."""
        return self._one(Delete(kind, id), request_id)

    def _one(self, change: Put | Delete, request_id: str) -> Accepted:
        try:
            answer = self.commit([change], request_id)
        except BatchRejected as e:
            fault = e.faults[0][2]
            if isinstance(fault, NotFound):
                fault = NotFound(change.kind, change.id)  # here the id is an argument: name it
            raise fault from None
        return Accepted(answer.generation, answer.replayed)

    def record(self, reports: Sequence[Report], applied_generation: int | None = None) -> int:
        """Record reconcilers' findings, and the host-wide applied generation, in one
        transaction; return how many objects' status changed.

        A report is about the object's spec at `report.generation`. APPLIED raises the object's
        applied_generation to it. Status, message, code and attempts are recorded only if that
        is still the object's current generation (a report about an older spec keeps the newer
        PENDING); FAILED counts one more attempt, APPLIED resets the count; `since` moves when
        the status changes. A STATUS event is appended when status, message, code or applied
        generation changed, so repeating the same failure costs no event. Reports about
        objects deleted meanwhile are ignored. `applied_generation` only moves forward (an
        older one is ignored) and cannot pass the store's generation: the caller passes the
        generation of the snapshot whose every change, deletions included, the host matches.
        """
        checked = [_checked_report(r) for r in reports]
        if applied_generation is not None:
            _check_generation(applied_generation, allow_zero=True)
        changed = 0
        with self._write() as db:
            now = self._clock()
            for r in checked:
                row = db.execute(
                    "SELECT generation, status, message, code, applied_generation, attempts"
                    " FROM objects WHERE kind = ? AND id = ?",
                    (r.kind, r.id),
                ).fetchone()
                if row is None:
                    continue  # deleted meanwhile: the deletion is the reconciler's next work
                current, *old = row
                if r.generation > current:
                    raise Invalid(
                        "generation",
                        f"{r.kind} {r.id!r} is at generation {current}; cannot report on "
                        f"{r.generation}",
                    )
                new = list(old)  # status, message, code, applied_generation, attempts
                if r.status is Status.APPLIED:
                    new[3] = max(old[3], r.generation)
                if r.generation == current:
                    new[:3] = [r.status.value, r.message, r.code]
                    if r.status is Status.APPLIED:
                        new[4] = 0
                    elif r.status is Status.FAILED:
                        new[4] = old[4] + 1
                if new == old:
                    continue
                db.execute(
                    "UPDATE objects SET status = ?, message = ?, code = ?, applied_generation = ?,"
                    " attempts = ?, since = CASE WHEN status = ? THEN since ELSE ? END"
                    " WHERE kind = ? AND id = ?",
                    (*new, new[0], now, r.kind, r.id),
                )
                if new[:4] != old[:4]:
                    changed += 1
                    self._append_event(
                        db, r.kind, r.id, r.generation, EventType.STATUS, r.status, r.message,
                        r.code,
                    )
            if applied_generation is not None:
                self._advance_applied(db, applied_generation)
        if changed:
            log.info("store.recorded", reports=len(checked), changed=changed)
        return changed

    def _advance_applied(self, db: sqlite3.Connection, generation: int) -> None:
        current = self._meta_int(db, "applied_generation")
        newest = self._meta_int(db, "generation")
        if generation > newest:
            raise Invalid(
                "applied_generation",
                f"the store is at generation {newest}; cannot report {generation}",
            )
        if generation <= current:
            return
        db.execute("UPDATE meta SET value = ? WHERE key = 'applied_generation'", (generation,))
        self._append_event(db, "", "", generation, EventType.NODE_APPLIED, Status.APPLIED, "")
        log.info("store.node_applied", generation=generation)

    def _apply(
        self, db: sqlite3.Connection, changes: tuple[Put | Delete, ...], request_id: str
    ) -> tuple[Result, ...]:
        """Apply checked changes inside the transaction; BatchRejected (rolled back by
        `_write`) if any object is at fault, references included."""
        now = self._clock()
        results: list[Result] = []
        faults: list[tuple[int, str, StoreError]] = []
        for i, change in enumerate(changes):
            kind, id = change.kind, change.id
            row = db.execute(
                "SELECT spec, generation FROM objects WHERE kind = ? AND id = ?", (kind, id)
            ).fetchone()
            if isinstance(change, Put):
                if row is not None and row[0] == change.spec:
                    results.append(Result(id, row[1], changed=False))
                    continue
                generation = self._next_generation(db)
                db.execute(
                    "INSERT INTO objects (kind, id, spec, generation, status, message,"
                    " applied_generation, code, attempts, since, created_at, updated_at,"
                    " request_id) VALUES (?, ?, ?, ?, ?, '', 0, 0, 0, ?, ?, ?, ?)"
                    " ON CONFLICT (kind, id) DO UPDATE SET spec = excluded.spec,"
                    " generation = excluded.generation, status = excluded.status, message = '',"
                    " code = 0, attempts = 0, since = excluded.since,"
                    " updated_at = excluded.updated_at, request_id = excluded.request_id",
                    (kind, id, change.spec, generation, Status.PENDING.value, now, now, now,
                     request_id),
                )  # fmt: skip
                self._forget_links(db, kind, id)
                db.executemany(
                    "INSERT OR IGNORE INTO refs (kind, id, ref_kind, ref_id) VALUES (?, ?, ?, ?)",
                    [(kind, id, ref.kind, ref.id) for ref in change.refs],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO uniques (scope, value, kind, id) VALUES (?, ?, ?, ?)",
                    [(u.scope, u.value, kind, id) for u in change.unique],
                )
                event = EventType.CREATED if row is None else EventType.UPDATED
                self._append_event(db, kind, id, generation, event, Status.PENDING, "")
                results.append(Result(id, generation, changed=True))
            elif row is None:
                if not change.allow_missing:
                    faults.append((i, id, NotFound(kind, id, field_name="")))
                results.append(Result(id, 0, changed=False))
            else:
                db.execute("DELETE FROM objects WHERE kind = ? AND id = ?", (kind, id))
                self._forget_links(db, kind, id)
                generation = self._next_generation(db)
                self._append_event(db, kind, id, generation, EventType.DELETED, "", "")
                results.append(Result(id, generation, changed=True))
        # References and unique values are checked once the whole batch is in place, so one
        # batch may create a network and its ports, or delete ports and their network, in any
        # order, or swap two MACs.
        for i, change in enumerate(changes):
            if isinstance(change, Put):
                if results[i].changed:
                    faults.extend((i, change.id, c) for c in _conflicts(db, change))
                for ref in change.refs:
                    if not _exists(db, ref.kind, ref.id):
                        faults.append((i, change.id, Precondition(
                            ref.field, f"{ref.kind} {ref.id!r} does not exist; put it first "
                            f"(in this batch or an earlier one)")))  # fmt: skip
            elif results[i].changed:
                users = db.execute(
                    "SELECT kind, id FROM refs WHERE ref_kind = ? AND ref_id = ?"
                    " ORDER BY kind, id LIMIT 4",
                    (change.kind, change.id),
                ).fetchall()
                if users:
                    named = ", ".join(f"{k} {u!r}" for k, u in users[:3])
                    faults.append((i, change.id, Precondition("", (
                        f"{change.kind} {change.id!r} is still used by {named}"
                        f"{' and more' if len(users) > 3 else ''}; delete or change those first"
                    ))))  # fmt: skip
        if faults:
            raise BatchRejected(sorted(faults, key=lambda f: f[0]))
        return tuple(results)

    # --- reads ---------------------------------------------------------------------------

    def get(self, kind: str, id: str) -> Object | None:
        """Object kind/id, or None if there is none."""
        _check_kind(kind)
        check_id("id", id)
        with self._locked() as db:
            row = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND id = ?", (kind, id)
            ).fetchone()
        return None if row is None else _object(row)

    def objects(self, kind: str) -> list[Object]:
        """Every object of one kind, ordered by id."""
        _check_kind(kind)
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? ORDER BY id", (kind,)
            ).fetchall()
        return [_object(row) for row in rows]

    def generation(self) -> int:
        """The store's generation: the number of changes it has accepted."""
        with self._locked() as db:
            return self._meta_int(db, "generation")

    def applied_generation(self) -> int:
        """The generation the whole host last reported reaching (0: never)."""
        with self._locked() as db:
            return self._meta_int(db, "applied_generation")

    def store_id(self) -> str:
        """A random id made with the database: generations and cursors mean something only
        together with it (a wiped and recreated store starts again from 0)."""
        with self._locked() as db:
            return str(db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])

    def snapshot(self) -> Snapshot:
        """Every object, the generation and the newest event cursor, read in one transaction."""
        with self._locked() as db:
            db.execute("BEGIN")
            try:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                cursor = self._newest_cursor(db)
                rows = db.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects ORDER BY kind, id"
                ).fetchall()
            finally:
                db.execute("COMMIT")
        by_kind: dict[str, dict[str, Object]] = {}
        for row in rows:
            obj = _object(row)
            by_kind.setdefault(obj.kind, {})[obj.id] = obj
        return Snapshot(
            store_id=meta["store_id"],
            generation=meta["generation"],
            cursor=cursor,
            applied_generation=meta["applied_generation"],
            objects=MappingProxyType({k: MappingProxyType(v) for k, v in by_kind.items()}),
        )

    def events_since(self, cursor: int, limit: int = 1_000) -> list[Event]:
        """Up to `limit` events after `cursor`, oldest first (cursor 0: from the beginning).

        Raises CursorExpired if events after `cursor` were already trimmed, or if `cursor` is
        beyond the newest event (see the module's docstring: the client resyncs).
        """
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise Invalid("cursor", f"must be an integer >= 0, got {cursor!r}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise Invalid("limit", f"must be an integer, got {limit!r}")
        if not 1 <= limit <= MAX_EVENTS_PER_CALL:
            raise Invalid("limit", f"must be 1..{MAX_EVENTS_PER_CALL}, got {limit}")
        with self._locked() as db:
            trimmed = self._meta_int(db, "events_trimmed_through")
            if cursor < trimmed:
                raise CursorExpired(
                    f"{cursor} is too old: events up to {trimmed} were dropped (the store "
                    f"keeps the last {self._event_retention}); resync with a snapshot, then "
                    f"watch from its cursor"
                )
            if cursor > self._last_cursor:
                raise CursorExpired(
                    f"{cursor} is beyond the newest event {self._last_cursor}: it comes from "
                    f"another or a recreated store; resync with a snapshot, then watch from "
                    f"its cursor"
                )
            rows = db.execute(
                "SELECT cursor, kind, id, generation, type, status, message, at, code FROM events"
                " WHERE cursor > ? ORDER BY cursor LIMIT ?",
                (cursor, limit),
            ).fetchall()
        return [
            Event(c, k, i, g, EventType(t), s, m, at, code)
            for (c, k, i, g, t, s, m, at, code) in rows
        ]

    def oldest_cursor(self) -> int:
        """The cursor just before the oldest event still kept: `events_since(oldest_cursor())`
        starts with the oldest event there is and never raises CursorExpired for age."""
        with self._locked() as db:
            return self._meta_int(db, "events_trimmed_through")

    def last_cursor(self) -> int:
        """The newest event's cursor (0 before the first event)."""
        with self._locked():
            return self._last_cursor

    def wait_for_event(self, after: int, timeout: float) -> bool:
        """Block until an event newer than cursor `after` is committed, or `timeout` seconds
        pass; True if there is one. WatchEvents loops on this and `events_since`, with a short
        timeout so it notices a cancelled stream."""
        with self._changed:
            self._conn()
            return self._changed.wait_for(lambda: self._last_cursor > after, timeout)

    # --- usage counters (agent/metering) ---------------------------------------------------

    def usage_checkpoint(self) -> UsageCheckpoint:
        """The usage ledger's last checkpoint, read in one transaction."""
        with self._locked() as db:
            db.execute("BEGIN")
            try:
                meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN"
                                       " ('counting_since', 'usage_lost_windows')").fetchall())  # fmt: skip
                totals = db.execute("SELECT tenant_id, direction, measure, packets, bytes"
                                    " FROM usage_totals").fetchall()  # fmt: skip
                seen = db.execute("SELECT source, key, tenant_id, direction, measure, packets,"
                                  " bytes FROM usage_seen").fetchall()  # fmt: skip
                sources = db.execute("SELECT source, epoch, read_at FROM usage_sources").fetchall()
            finally:
                db.execute("COMMIT")
        return UsageCheckpoint(float(meta["counting_since"]), int(meta["usage_lost_windows"]),
                               tuple(totals), tuple(seen), tuple(sources))  # fmt: skip

    def save_usage(
        self,
        *,
        totals: Sequence[tuple[str, str, str, int, int]] = (),
        seen: Sequence[tuple[str, str, str, str, str, int, int]] = (),
        forgotten: Sequence[tuple[str, str]] = (),
        sources: Sequence[tuple[str, str, float]] = (),
        lost_windows: int | None = None,
    ) -> None:
        """Write the ledger's changed rows in one transaction (durable when it returns):
        `totals` and `seen` replace the rows with their keys, `forgotten` (source, key) rows of
        `seen` are deleted, `sources` replace theirs."""
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO usage_totals (tenant_id, direction, measure,"
                           " packets, bytes) VALUES (?, ?, ?, ?, ?)", totals)  # fmt: skip
            db.executemany("DELETE FROM usage_seen WHERE source = ? AND key = ?", forgotten)
            db.executemany("INSERT OR REPLACE INTO usage_seen (source, key, tenant_id, direction,"
                           " measure, packets, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)", seen)  # fmt: skip
            db.executemany("INSERT OR REPLACE INTO usage_sources (source, epoch, read_at)"
                           " VALUES (?, ?, ?)", sources)  # fmt: skip
            if lost_windows is not None:
                db.execute("UPDATE meta SET value = ? WHERE key = 'usage_lost_windows'",
                           (lost_windows,))  # fmt: skip

    # --- inside a transaction ------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock (waiting no longer than the caller's deadline), with
        SQLite's errors turned into the store's own (`_storage_error`)."""
        deadline = _deadline.get()
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise DeadlineExceeded(
                "the call's deadline passed while it waited for the store; retry with the same "
                "request_id (a replay is safe), or with a longer deadline"
            )
        try:
            yield self._conn()
        except sqlite3.Error as e:
            raise _storage_error(self.path, e) from e
        finally:
            self._lock.release()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, under the lock: committed if the block returns, rolled back
        if it raises. Waiters are woken after the commit."""
        with self._locked() as db:
            newest_before = self._last_cursor
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._last_cursor = newest_before
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if self._last_cursor != newest_before:
                self._changed.notify_all()

    def _first_answer(
        self, db: sqlite3.Connection, request_id: str, digest: bytes
    ) -> Committed | None:
        row = db.execute(
            "SELECT digest, op, kind, id, generation, results, reply FROM requests"
            " WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        first_digest, op, kind, id, generation, results, reply = row
        if first_digest != digest:
            raise RequestConflict(
                request_id,
                f"{request_id!r} was already used for a different request ({op} {kind} {id!r}, "
                f"accepted at generation {generation}); send a new request with a new request_id",
            )
        return Committed(
            tuple(Result(i, g, bool(c)) for i, g, c in json.loads(results)),
            replayed=True,
            reply=bytes(reply or b""),
        )

    def _remember(
        self,
        db: sqlite3.Connection,
        request_id: str,
        digest: bytes,
        changes: tuple[Put | Delete, ...],
        results: tuple[Result, ...],
        reply: bytes,
    ) -> None:
        first = changes[0]
        op = "batch" if len(changes) > 1 else "put" if isinstance(first, Put) else "delete"
        answer = json.dumps([[r.id, r.generation, r.changed] for r in results],
                            separators=(",", ":"))  # fmt: skip
        seq = db.execute(
            "INSERT INTO requests (request_id, digest, op, kind, id, generation, at, results,"
            " reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (request_id, digest, op, first.kind, first.id, max(r.generation for r in results),
             self._clock(), answer, reply or None),
        ).lastrowid  # fmt: skip
        self._request_bytes_since_trim += len(answer) + len(reply)
        if (
            seq % self._trim_requests_every == 0
            or self._request_bytes_since_trim > self._request_window_bytes // 10
        ):
            self._trim_requests(db)

    def _next_generation(self, db: sqlite3.Connection) -> int:
        generation = self._meta_int(db, "generation") + 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (generation,))
        return generation

    def _append_event(
        self,
        db: sqlite3.Connection,
        kind: str,
        id: str,
        generation: int,
        event_type: EventType,
        status: str,
        message: str,
        code: int = 0,
    ) -> None:
        cursor = db.execute(
            "INSERT INTO events (kind, id, generation, type, status, message, at, code)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, id, generation, event_type.value, str(status), message, self._clock(), code),
        ).lastrowid
        assert cursor is not None
        self._last_cursor = cursor
        if cursor % self._trim_events_every == 0:
            self._trim_events(db)

    def _trim_events(self, db: sqlite3.Connection) -> None:
        through = self._newest_cursor(db) - self._event_retention
        if through <= self._meta_int(db, "events_trimmed_through"):
            return
        dropped = db.execute("DELETE FROM events WHERE cursor <= ?", (through,)).rowcount
        db.execute("UPDATE meta SET value = ? WHERE key = 'events_trimmed_through'", (through,))
        log.debug("store.events_trimmed", through=through, dropped=dropped)

    def _trim_requests(self, db: sqlite3.Connection) -> None:
        newest = db.execute("SELECT max(seq) FROM requests").fetchone()[0] or 0
        # The oldest request that falls outside the byte budget, counting from the newest.
        over_bytes = db.execute(
            "SELECT coalesce(max(seq), 0) FROM (SELECT seq, sum(length(results)"
            " + coalesce(length(reply), 0)) OVER (ORDER BY seq DESC) AS newer FROM requests)"
            " WHERE newer > ?",
            (self._request_window_bytes,),
        ).fetchone()[0]
        dropped = db.execute(
            "DELETE FROM requests WHERE seq <= ? OR seq <= ? OR at < ?",
            (newest - self._request_window_count, over_bytes,
             self._clock() - self._request_window_s),
        ).rowcount  # fmt: skip
        self._request_bytes_since_trim = 0
        if dropped:
            log.debug("store.requests_trimmed", dropped=dropped)

    @staticmethod
    def _forget_links(db: sqlite3.Connection, kind: str, id: str) -> None:
        """Drop what kind/id refers to and the unique values it holds (before a replace or a
        delete)."""
        db.execute("DELETE FROM refs WHERE kind = ? AND id = ?", (kind, id))
        db.execute("DELETE FROM uniques WHERE kind = ? AND id = ?", (kind, id))

    @staticmethod
    def _newest_cursor(db: sqlite3.Connection) -> int:
        return db.execute("SELECT max(cursor) FROM events").fetchone()[0] or 0

    @staticmethod
    def _meta_int(db: sqlite3.Connection, key: str) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


_OBJECT_COLUMNS = (
    "kind, id, spec, generation, status, message, applied_generation, code, attempts, since,"
    " created_at, updated_at, request_id"
)


def _object(row: tuple) -> Object:
    kind, id, spec, generation, status, *rest = row
    return Object(kind, id, bytes(spec), generation, Status(status), *rest)


def _exists(db: sqlite3.Connection, kind: str, id: str) -> bool:
    found = db.execute("SELECT 1 FROM objects WHERE kind = ? AND id = ?", (kind, id)).fetchone()
    return found is not None


def _conflicts(db: sqlite3.Connection, put: Put) -> Iterator[Conflict]:
    """One Conflict per unique value of `put` that another object holds too."""
    for unique in put.unique:
        other = db.execute(
            "SELECT kind, id FROM uniques WHERE scope = ? AND value = ?"
            " AND NOT (kind = ? AND id = ?) ORDER BY kind, id LIMIT 1",
            (unique.scope, unique.value, put.kind, put.id),
        ).fetchone()
        if other is not None:
            yield Conflict(unique.field, (
                f"{unique.value} is already used by {other[0]} {other[1]!r}; choose another, "
                f"or change or delete that {other[0]} first (in this batch or an earlier one)"
            ))  # fmt: skip


def _storage_error(path: Path, error: sqlite3.Error) -> StoreError:
    """SQLite's error as the store's own, with what to do about it."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(
            f"the disk under {path.parent} is full ({error}); nothing was changed: free space "
            f"there (or raise its quota), then retry"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StorageUnavailable(
            f"the store {path} is locked by another process ({error}); retry with backoff, "
            f"and make sure only one agent uses this state directory"
        )
    return StorageUnavailable(
        f"the store {path} failed: {error}; retry with backoff, and check the disk and the "
        f"agent's log"
    )


# --- checks --------------------------------------------------------------------------------


def _check_kind(kind: object) -> None:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise Invalid(
            "kind",
            f"must be 1-32 characters a-z, 0-9 or _, starting with a letter, got {_show(kind)}",
        )


def check_id(field_name: str, value: object) -> None:
    """The one id rule of the API (common.proto), for object ids, tenant ids and request ids:
    1..128 characters A-Z a-z 0-9 . _ : -, starting with a letter or a digit."""
    if value == "":
        raise Invalid(field_name, f"required: 1-{MAX_ID_CHARS} characters (a UUID is the usual choice)")
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise Invalid(
            field_name,
            f"must be 1-{MAX_ID_CHARS} characters A-Z, a-z, 0-9, '.', '_', ':' or '-', starting "
            f"with a letter or digit, got {_show(value)}",
        )


def _check_spec(spec: object) -> None:
    if not isinstance(spec, bytes):
        raise Invalid("spec", f"must be bytes (a serialized message), got {type(spec).__name__}")
    if len(spec) > MAX_SPEC_BYTES:
        raise Invalid("spec", f"must be at most {MAX_SPEC_BYTES} bytes, got {len(spec)}")


def _check_change(change: object) -> None:
    if not isinstance(change, (Put, Delete)):
        raise Invalid("change", f"must be a Put or a Delete, got {type(change).__name__}")
    _check_kind(change.kind)
    check_id("id", change.id)
    if isinstance(change, Put):
        _check_spec(change.spec)
        for i, ref in enumerate(change.refs):
            if not isinstance(ref, Ref):
                raise Invalid(f"refs[{i}]", f"must be a Ref, got {type(ref).__name__}")
            _check_kind(ref.kind)
            check_id(ref.field or f"refs[{i}]", ref.id)
        for i, unique in enumerate(change.unique):
            if not isinstance(unique, Unique):
                raise Invalid(f"unique[{i}]", f"must be a Unique, got {type(unique).__name__}")
            for part in ("field", "scope", "value"):
                if not isinstance(getattr(unique, part), str) or not getattr(unique, part):
                    raise Invalid(f"unique[{i}].{part}", "must be a non-empty string")


def _checked_report(report: object) -> Report:
    if not isinstance(report, Report):
        raise Invalid("report", f"must be a Report, got {type(report).__name__}")
    _check_kind(report.kind)
    check_id("id", report.id)
    _check_generation(report.generation)
    try:
        status = Status(report.status)
    except ValueError:
        raise Invalid(
            "status", f"must be one of {', '.join(s.value for s in Status)}, got {report.status!r}"
        ) from None
    if not isinstance(report.message, str):
        raise Invalid("message", f"must be a string, got {type(report.message).__name__}")
    if isinstance(report.code, bool) or not isinstance(report.code, int) or not 0 <= report.code <= 16:
        raise Invalid("code", f"must be a gRPC status code 0..16, got {report.code!r}")
    message = report.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return Report(report.kind, report.id, report.generation, status, message, report.code)


def _check_generation(generation: object, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < low:
        raise Invalid("generation", f"must be an integer >= {low}, got {generation!r}")


def _check_count(field_name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(field_name, f"must be an integer >= 1, got {value!r}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _digest(op: str, kind: str, id: str, spec: bytes) -> bytes:
    """SHA-256 over the request's parts, each prefixed with its length (so no two requests
    share an encoding)."""
    h = hashlib.sha256()
    for part in (op.encode(), kind.encode(), id.encode(), spec):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _batch_digest(changes: tuple[Put | Delete, ...]) -> bytes:
    """What tells a replay from another request. A one-object batch has the digest schema 1
    gave a put or delete, so requests remembered before migration 2 still replay."""
    parts = [
        _digest("put", c.kind, c.id, c.spec) if isinstance(c, Put)
        else _digest("delete?" if c.allow_missing else "delete", c.kind, c.id, b"")
        for c in changes
    ]  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    return hashlib.sha256(b"batch" + b"".join(parts)).digest()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
