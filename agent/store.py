"""Desired state, generations and events, durable in SQLite: what the agent has promised to do.

Where data comes from and where it goes (API -> store -> reconciler -> drivers):

- gRPC servicers validate a request, then call `put` or `delete` with the object's desired spec
  as bytes (serialized protobuf; the store never looks inside) and the client's `request_id`.
  The call returns only after the change is committed to disk, with the generation it was
  accepted at.
- Reconcilers read `snapshot()` (every object at one generation), bring the host to it, and
  report per object with `set_applied` and for the whole host with `set_applied_generation`
  (the applied-generation ack, like OVN's `nb_cfg` / `hv_cfg`).
- Every change appends an event; `events_since(cursor)` serves WatchEvents streams, which resume
  from the last cursor they saw after a disconnect; `wait_for_event` wakes them up.

Promises, and how they are kept:

- **Durable before acknowledged.** Each mutation is one SQLite transaction in WAL mode with
  `synchronous=FULL`; the method returns after COMMIT, and COMMIT returns after the WAL is
  fsynced. Killing the agent (or the machine) after that cannot lose it.
- **One generation per change.** A store-wide counter goes up by exactly one per accepted
  change, in commit order, without gaps. Each object remembers the generation at which its spec
  last changed. A `put` of the spec an object already has changes nothing: it takes no new
  generation, appends no event, and answers with the object's current generation (the
  generation at which that desired state took effect).
- **Replays change nothing.** The first answer to each request_id is stored in the same
  transaction as the change, so a replay (even after a restart) returns that answer, flagged
  `replayed`, and changes nothing. See "Request ids" below for how long they are kept.
- **Bad input changes nothing.** Arguments are checked before the transaction starts; errors are
  `StoreError` subclasses whose message starts with the field's name.

Request ids are remembered for at least `request_window_s` (7 days) or the last
`request_window_count` (100,000) mutating requests, whichever is reached first. A control plane
retries within seconds to minutes, and replays its unanswered requests after its own restart
within hours; a week also covers a long control-plane outage. The count bounds the table
(about 100 bytes a row, so about 10 MB) under heavy churn. A replay older than that is treated
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
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import structlog

log = structlog.get_logger(__name__)

FILENAME = "desired-state.sqlite3"
"""The database's name inside the agent's state directory: `Store(state_dir / FILENAME)`."""

REQUEST_WINDOW_S = 7 * 24 * 3600
REQUEST_WINDOW_COUNT = 100_000
EVENT_RETENTION = 100_000
TRIM_EVERY = 1_000  # old request ids and events are deleted in batches, once per this many rows

MAX_ID_CHARS = 128
MAX_SPEC_BYTES = 1 << 20  # a VM or port spec is a few KB; gRPC's default message limit is 4 MiB
MAX_MESSAGE_CHARS = 1_024  # longer status messages are cut, not refused: they come from errors
MAX_EVENTS_PER_CALL = 10_000

_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}" % (MAX_ID_CHARS - 1))


# --- errors --------------------------------------------------------------------------------
# The gRPC layer maps each to one status code, in one place; the code is named on each class.


class StoreError(Exception):
    """Base of every error the store raises on purpose (a closed store, an unusable file)."""


class Invalid(StoreError, ValueError):
    """A bad argument; `field` names it. gRPC: INVALID_ARGUMENT. Nothing was changed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class NotFound(StoreError):
    """No object of that kind and id. gRPC: NOT_FOUND. Nothing was changed."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"id: no {kind} with id {id!r}")
        self.field = "id"
        self.kind = kind
        self.id = id


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


class CursorExpired(StoreError):
    """An event cursor that cannot be resumed from. gRPC: OUT_OF_RANGE (as etcd answers a watch
    on a compacted revision). The client resyncs: `snapshot()`, then
    `events_since(snapshot.cursor)`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"cursor: {message}")
        self.field = "cursor"


class SchemaTooNew(StoreError):
    """The database was written by a newer agent (its schema version is above `LATEST`).

    Raised when the store opens, so the agent refuses to start rather than misread the data.
    """


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
class Accepted:
    """The answer to a mutation: the generation it was accepted at; `replayed` if it was a
    replay of an earlier request, answered as the first time."""

    generation: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class Object:
    kind: str
    id: str
    spec: bytes  # as the caller gave it
    generation: int  # the store generation at which this spec was last changed
    status: Status  # about the spec at `generation`
    message: str  # why, when FAILED; otherwise usually ""
    applied_generation: int  # the newest generation of this object the host reached; 0: never


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
        event_retention: int = EVENT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        if not request_window_s > 0:
            raise Invalid("request_window_s", f"must be > 0, got {request_window_s}")
        _check_count("request_window_count", request_window_count)
        _check_count("event_retention", event_retention)
        self._request_window_s = request_window_s
        self._request_window_count = request_window_count
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

    def put(self, kind: str, id: str, spec: bytes, request_id: str) -> Accepted:
        """Make `spec` the desired state of object kind/id (create or replace it).

        Returns once committed durably. An unchanged spec takes no new generation (see the
        module's docstring). Raises Invalid, or RequestConflict for a reused request_id.
        """
        _check_kind(kind)
        check_id("id", id)
        spec = _check_spec(spec)
        check_id("request_id", request_id)
        digest = _digest("put", kind, id, spec)
        changed = False
        with self._write() as db:
            answer = self._first_answer(db, request_id, digest)
            if answer is None:
                row = db.execute(
                    "SELECT spec, generation FROM objects WHERE kind = ? AND id = ?", (kind, id)
                ).fetchone()
                if row is not None and row[0] == spec:
                    answer = Accepted(row[1], replayed=False)
                else:
                    changed = True
                    generation = self._next_generation(db)
                    db.execute(
                        "INSERT INTO objects (kind, id, spec, generation, status, message,"
                        " applied_generation) VALUES (?, ?, ?, ?, ?, '', 0)"
                        " ON CONFLICT (kind, id) DO UPDATE SET spec = excluded.spec,"
                        " generation = excluded.generation, status = excluded.status,"
                        " message = ''",
                        (kind, id, spec, generation, Status.PENDING.value),
                    )
                    event = EventType.CREATED if row is None else EventType.UPDATED
                    self._append_event(db, kind, id, generation, event, Status.PENDING, "")
                    answer = Accepted(generation, replayed=False)
                self._remember(db, request_id, digest, "put", kind, id, answer.generation)
        log.info(
            "store.put",
            kind=kind,
            id=id,
            generation=answer.generation,
            request_id=request_id,
            replayed=answer.replayed,
            changed=changed,
            bytes=len(spec),
        )
        return answer

    def delete(self, kind: str, id: str, request_id: str) -> Accepted:
        """Remove object kind/id from the desired state; returns once committed durably.

        Raises Invalid, NotFound (if there is no such object: nothing is changed or remembered,
        so the same request_id may be used again), or RequestConflict.
        """
        _check_kind(kind)
        check_id("id", id)
        check_id("request_id", request_id)
        digest = _digest("delete", kind, id, b"")
        with self._write() as db:
            answer = self._first_answer(db, request_id, digest)
            if answer is None:
                gone = db.execute("DELETE FROM objects WHERE kind = ? AND id = ?", (kind, id))
                if gone.rowcount == 0:
                    raise NotFound(kind, id)
                generation = self._next_generation(db)
                self._append_event(db, kind, id, generation, EventType.DELETED, "", "")
                answer = Accepted(generation, replayed=False)
                self._remember(db, request_id, digest, "delete", kind, id, generation)
        log.info(
            "store.deleted",
            kind=kind,
            id=id,
            generation=answer.generation,
            request_id=request_id,
            replayed=answer.replayed,
        )
        return answer

    def set_applied(
        self, kind: str, id: str, generation: int, status: Status | str, message: str = ""
    ) -> None:
        """Record the reconciler's result for object kind/id at `generation`.

        `generation` is the object's generation the reconciler worked from. APPLIED raises the
        object's applied_generation to it. The status and message are recorded only if
        `generation` is still the object's current one; a report about an older spec (the
        object changed meanwhile) is stale and keeps the newer PENDING status. An event is
        appended only when something changed, so repeating the same failure costs nothing.
        Raises NotFound if the object is gone (deleted meanwhile: ignore it), Invalid if
        `generation` is ahead of the object's.
        """
        _check_kind(kind)
        check_id("id", id)
        _check_generation(generation)
        try:
            status = Status(status)
        except ValueError:
            raise Invalid(
                "status", f"must be one of {', '.join(s.value for s in Status)}, got {status!r}"
            ) from None
        if not isinstance(message, str):
            raise Invalid("message", f"must be a string, got {type(message).__name__}")
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        with self._write() as db:
            row = db.execute(
                "SELECT generation, status, message, applied_generation FROM objects"
                " WHERE kind = ? AND id = ?",
                (kind, id),
            ).fetchone()
            if row is None:
                raise NotFound(kind, id)
            current, old_status, old_message, old_applied = row
            if generation > current:
                raise Invalid(
                    "generation",
                    f"{kind} {id!r} is at generation {current}; cannot report on {generation}",
                )
            applied = max(old_applied, generation) if status is Status.APPLIED else old_applied
            if generation == current:
                new_status, new_message = status.value, message
            else:
                new_status, new_message = old_status, old_message
            changed = (new_status, new_message, applied) != (old_status, old_message, old_applied)
            if changed:
                db.execute(
                    "UPDATE objects SET status = ?, message = ?, applied_generation = ?"
                    " WHERE kind = ? AND id = ?",
                    (new_status, new_message, applied, kind, id),
                )
                self._append_event(db, kind, id, generation, EventType.STATUS, status, message)
        if changed:
            log.info(
                "store.status",
                kind=kind,
                id=id,
                generation=generation,
                status=status.value,
                message=message,
                stale=generation != current,
            )

    def set_applied_generation(self, generation: int) -> None:
        """Record that the whole host matches the desired state at `generation` (deletions
        included): the applied-generation ack reported in GetNodeInfo and WatchEvents.

        It only moves forward (an older report is ignored) and cannot pass `generation()`.
        """
        _check_generation(generation, allow_zero=True)
        with self._write() as db:
            current = self._meta_int(db, "applied_generation")
            newest = self._meta_int(db, "generation")
            if generation > newest:
                raise Invalid(
                    "generation", f"the store is at generation {newest}; cannot report {generation}"
                )
            if generation <= current:
                return
            db.execute("UPDATE meta SET value = ? WHERE key = 'applied_generation'", (generation,))
            self._append_event(db, "", "", generation, EventType.NODE_APPLIED, Status.APPLIED, "")
        log.info("store.node_applied", generation=generation)

    # --- reads ---------------------------------------------------------------------------

    def get(self, kind: str, id: str) -> Object | None:
        """Object kind/id, or None if there is none."""
        _check_kind(kind)
        check_id("id", id)
        with self._lock:
            row = self._conn().execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND id = ?", (kind, id)
            ).fetchone()
        return None if row is None else _object(row)

    def objects(self, kind: str) -> list[Object]:
        """Every object of one kind, ordered by id."""
        _check_kind(kind)
        with self._lock:
            rows = self._conn().execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? ORDER BY id", (kind,)
            ).fetchall()
        return [_object(row) for row in rows]

    def generation(self) -> int:
        """The store's generation: the number of changes it has accepted."""
        with self._lock:
            return self._meta_int(self._conn(), "generation")

    def applied_generation(self) -> int:
        """The generation the whole host last reported reaching (0: never)."""
        with self._lock:
            return self._meta_int(self._conn(), "applied_generation")

    def store_id(self) -> str:
        """A random id made with the database: generations and cursors mean something only
        together with it (a wiped and recreated store starts again from 0)."""
        with self._lock:
            return str(
                self._conn().execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
            )

    def snapshot(self) -> Snapshot:
        """Every object, the generation and the newest event cursor, read in one transaction."""
        with self._lock:
            db = self._conn()
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
        with self._lock:
            db = self._conn()
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
                "SELECT cursor, kind, id, generation, type, status, message, at FROM events"
                " WHERE cursor > ? ORDER BY cursor LIMIT ?",
                (cursor, limit),
            ).fetchall()
        return [
            Event(c, k, i, g, EventType(t), s, m, at) for (c, k, i, g, t, s, m, at) in rows
        ]

    def oldest_cursor(self) -> int:
        """The cursor just before the oldest event still kept: `events_since(oldest_cursor())`
        starts with the oldest event there is and never raises CursorExpired for age."""
        with self._lock:
            return self._meta_int(self._conn(), "events_trimmed_through")

    def last_cursor(self) -> int:
        """The newest event's cursor (0 before the first event)."""
        with self._lock:
            self._conn()
            return self._last_cursor

    def wait_for_event(self, after: int, timeout: float) -> bool:
        """Block until an event newer than cursor `after` is committed, or `timeout` seconds
        pass; True if there is one. WatchEvents loops on this and `events_since`, with a short
        timeout so it notices a cancelled stream."""
        with self._changed:
            self._conn()
            return self._changed.wait_for(lambda: self._last_cursor > after, timeout)

    # --- inside a transaction ------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, under the lock: committed if the block returns, rolled back
        if it raises. Waiters are woken after the commit."""
        with self._lock:
            db = self._conn()
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
    ) -> Accepted | None:
        row = db.execute(
            "SELECT digest, op, kind, id, generation FROM requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        first_digest, op, kind, id, generation = row
        if first_digest != digest:
            raise RequestConflict(
                request_id,
                f"{request_id!r} was already used for a different request ({op} {kind} {id!r}, "
                f"accepted at generation {generation}); send a new request with a new request_id",
            )
        return Accepted(generation, replayed=True)

    def _remember(
        self,
        db: sqlite3.Connection,
        request_id: str,
        digest: bytes,
        op: str,
        kind: str,
        id: str,
        generation: int,
    ) -> None:
        seq = db.execute(
            "INSERT INTO requests (request_id, digest, op, kind, id, generation, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, digest, op, kind, id, generation, self._clock()),
        ).lastrowid
        if seq % self._trim_requests_every == 0:
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
    ) -> None:
        cursor = db.execute(
            "INSERT INTO events (kind, id, generation, type, status, message, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, id, generation, event_type.value, str(status), message, self._clock()),
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
        dropped = db.execute(
            "DELETE FROM requests WHERE seq <= ? OR at < ?",
            (newest - self._request_window_count, self._clock() - self._request_window_s),
        ).rowcount
        if dropped:
            log.debug("store.requests_trimmed", dropped=dropped)

    @staticmethod
    def _newest_cursor(db: sqlite3.Connection) -> int:
        return db.execute("SELECT max(cursor) FROM events").fetchone()[0] or 0

    @staticmethod
    def _meta_int(db: sqlite3.Connection, key: str) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


_OBJECT_COLUMNS = "kind, id, spec, generation, status, message, applied_generation"


def _object(row: tuple) -> Object:
    kind, id, spec, generation, status, message, applied = row
    return Object(kind, id, bytes(spec), generation, Status(status), message, applied)


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
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise Invalid(
            field_name,
            f"must be 1-{MAX_ID_CHARS} characters A-Z, a-z, 0-9, '.', '_', ':' or '-', starting "
            f"with a letter or digit, got {_show(value)}",
        )


def _check_spec(spec: object) -> bytes:
    if not isinstance(spec, (bytes, bytearray, memoryview)):
        raise Invalid("spec", f"must be bytes (a serialized message), got {type(spec).__name__}")
    spec = bytes(spec)
    if len(spec) > MAX_SPEC_BYTES:
        raise Invalid("spec", f"must be at most {MAX_SPEC_BYTES} bytes, got {len(spec)}")
    return spec


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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
